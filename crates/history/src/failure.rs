use serde::{Deserialize, Serialize};

/// A failure as recorded in history and reported to callers: a stable machine-readable `code`
/// and a human-readable `message`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(deny_unknown_fields)]
#[error("{code}: {message}")]
pub struct Failure {
    /// A stable code from [`codes`] (or an application-defined one).
    pub code: String,
    /// What happened, for humans.
    pub message: String,
}

impl Failure {
    /// Builds a failure from a code and a message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// Stable failure codes. Codes are never reused for another meaning.
pub mod codes {
    /// An activity returned an error (after its retries, if any).
    pub const ACTIVITY_FAILED: &str = "activity_failed";
    /// An activity attempt exceeded its per-attempt timeout (after its retries, if any).
    pub const ACTIVITY_TIMED_OUT: &str = "activity_timed_out";
    /// An activity panicked.
    pub const ACTIVITY_PANICKED: &str = "activity_panicked";
    /// No activity with that name was registered in the processes that took the work item
    /// during the runtime's `handler_wait_max`.
    pub const ACTIVITY_NOT_REGISTERED: &str = "activity_not_registered";
    /// An activity work item of the instance was delivered more often than the runtime's
    /// `activity_deliveries_max` without a result (its attempts crashed or hung their
    /// processes, or a retry policy allowed more attempts than the limit): the instance is
    /// quarantined with this code, and none of its turns or activities runs until an operator
    /// retries or discards it.
    pub const ACTIVITY_POISONED: &str = "activity_poisoned";
    /// The orchestration's code returned an error.
    pub const ORCHESTRATION_FAILED: &str = "orchestration_failed";
    /// The orchestration's code panicked.
    pub const ORCHESTRATION_PANICKED: &str = "orchestration_panicked";
    /// No orchestration with that name was registered in the processes that took its turns
    /// during the runtime's `handler_wait_max`.
    pub const ORCHESTRATION_NOT_REGISTERED: &str = "orchestration_not_registered";
    /// The history no longer matches the code (see the `nondeterminism.*` codes).
    pub const NONDETERMINISM_PREFIX: &str = "nondeterminism";
    /// A command was issued whose kind or name differs from the one recorded under its id.
    pub const NONDETERMINISM_COMMAND_MISMATCH: &str = "nondeterminism.command_mismatch";
    /// The code issued a command during replay that history does not contain.
    pub const NONDETERMINISM_UNEXPECTED_COMMAND: &str = "nondeterminism.unexpected_command";
    /// History contains a command that the code no longer issues.
    pub const NONDETERMINISM_MISSING_COMMAND: &str = "nondeterminism.missing_command";
    /// The code finished (or continued as new) at a point where history shows it kept running.
    pub const NONDETERMINISM_EARLY_FINISH: &str = "nondeterminism.early_finish";
    /// A sub-orchestration's instance id was already taken by another instance.
    pub const INSTANCE_EXISTS: &str = "instance_exists";
    /// The instance was cancelled.
    pub const CANCELLED: &str = "cancelled";
    /// Input or output could not be (de)serialised.
    pub const SERDE: &str = "serde";
    /// A turn of the instance was delivered more often than the runtime's limit without being
    /// committed (stored data it cannot decode, a store error, a panic, a process crash): the
    /// instance is quarantined with this code and runs no turn until an operator acts.
    pub const TURN_POISONED: &str = "turn_poisoned";
    /// An operator terminated the instance (the reason is the failure's message).
    pub const TERMINATED: &str = "terminated";
    /// An operator discarded the quarantined instance (the reason is the failure's message).
    pub const DISCARDED: &str = "discarded";
    /// The instance's history grew past `history_events_max`; an orchestration that runs for
    /// long should continue as new now and then, which starts a fresh history.
    pub const HISTORY_TOO_LARGE: &str = "history_too_large";
}
