use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A failure as recorded in history and reported to callers: a stable machine-readable `code`,
/// a human-readable `message`, optional structured `details` for programs, and whether it is
/// final (`non_retryable`: retry policies do not retry it).
///
/// In activities and orchestrations, `?` turns common errors into failures (I/O, JSON, number
/// and text parsing, boxed errors); each keeps the error's text as the message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(deny_unknown_fields)]
#[error("{code}: {message}")]
pub struct Failure {
    /// A stable code from [`codes`] (or an application-defined one).
    pub code: String,
    /// What happened, for humans.
    pub message: String,
    /// Details for programs, as JSON text ([`Failure::with_details`], [`Failure::details_as`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    /// The failure is final: an activity's retry policy does not retry it (a declined card,
    /// an input that can never be valid), whatever attempts it has left.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub non_retryable: bool,
}

impl Failure {
    /// Builds a failure from a code and a message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            details: None,
            non_retryable: false,
        }
    }

    /// A failure that retry policies do not retry.
    pub fn non_retryable(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            non_retryable: true,
            ..Self::new(code, message)
        }
    }

    /// The same failure with `details` attached (serialised as JSON). Details that cannot be
    /// serialised are left out and named in the message.
    pub fn with_details(mut self, details: &impl Serialize) -> Self {
        match serde_json::to_string(details) {
            Ok(json) => self.details = Some(json),
            Err(error) => {
                self.message = format!("{} (details not serialisable: {error})", self.message);
            }
        }
        self
    }

    /// The details read as `T`: `None` without details, an error when they are not a `T`.
    pub fn details_as<T: DeserializeOwned>(&self) -> Option<Result<T, serde_json::Error>> {
        self.details.as_deref().map(serde_json::from_str)
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Self {
        Failure::new(codes::IO, format!("{:?}: {error}", error.kind()))
    }
}

impl From<serde_json::Error> for Failure {
    fn from(error: serde_json::Error) -> Self {
        Failure::new(codes::SERDE, error.to_string())
    }
}

/// Parse errors of numbers and text become [`codes::PARSE`] failures.
macro_rules! parse_failures {
    ($($error:ty),*) => {
        $(
            impl From<$error> for Failure {
                fn from(error: $error) -> Self {
                    Failure::new(codes::PARSE, error.to_string())
                }
            }
        )*
    };
}

parse_failures!(
    std::num::ParseIntError,
    std::num::ParseFloatError,
    std::str::ParseBoolError,
    std::str::Utf8Error,
    std::string::FromUtf8Error
);

impl From<Box<dyn std::error::Error + Send + Sync>> for Failure {
    fn from(error: Box<dyn std::error::Error + Send + Sync>) -> Self {
        Failure::new(codes::APPLICATION, error.to_string())
    }
}

/// Stable failure codes. Codes are never reused for another meaning.
pub mod codes {
    /// An activity returned an error (after its retries, if any).
    pub const ACTIVITY_FAILED: &str = "activity_failed";
    /// An activity attempt exceeded its per-attempt timeout (after its retries, if any).
    pub const ACTIVITY_TIMED_OUT: &str = "activity_timed_out";
    /// An activity attempt went longer than its heartbeat timeout without a heartbeat.
    pub const ACTIVITY_HEARTBEAT_TIMED_OUT: &str = "activity_heartbeat_timed_out";
    /// An activity's total timeout (all attempts and retry waits) passed before it finished.
    pub const ACTIVITY_TOTAL_TIMED_OUT: &str = "activity_total_timed_out";
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
    /// An I/O error reached `?` in application code (the message starts with its kind).
    pub const IO: &str = "io";
    /// A number or text failed to parse and reached `?` in application code.
    pub const PARSE: &str = "parse";
    /// A boxed error without a code of its own reached `?` in application code.
    pub const APPLICATION: &str = "application_error";
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_failures_are_stored_as_before_and_the_new_fields_round_trip() {
        let plain = Failure::new("boom", "it broke");
        let json = serde_json::to_string(&plain).unwrap();
        assert_eq!(json, r#"{"code":"boom","message":"it broke"}"#);
        assert_eq!(serde_json::from_str::<Failure>(&json).unwrap(), plain);

        let rich = Failure::non_retryable("card_declined", "insufficient funds")
            .with_details(&serde_json::json!({"decline_code": "51"}));
        let json = serde_json::to_string(&rich).unwrap();
        assert_eq!(
            json,
            r#"{"code":"card_declined","message":"insufficient funds","details":"{\"decline_code\":\"51\"}","non_retryable":true}"#
        );
        let back: Failure = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rich);
        let details: serde_json::Value = back.details_as().unwrap().unwrap();
        assert_eq!(details["decline_code"], "51");
        assert!(plain.details_as::<serde_json::Value>().is_none());
    }

    #[test]
    fn question_mark_turns_common_errors_into_coded_failures() {
        fn parse(text: &str) -> Result<u32, Failure> {
            Ok(text.parse::<u32>()?)
        }
        fn open() -> Result<std::fs::File, Failure> {
            Ok(std::fs::File::open("/nonexistent/sluice/failure")?)
        }
        fn boxed() -> Result<(), Failure> {
            let error: Box<dyn std::error::Error + Send + Sync> = "no stock".into();
            Err(error)?
        }
        assert_eq!(parse("x").unwrap_err().code, codes::PARSE);
        let io = open().unwrap_err();
        assert_eq!(io.code, codes::IO);
        assert!(io.message.starts_with("NotFound"), "{io}");
        assert_eq!(
            boxed().unwrap_err(),
            Failure::new(codes::APPLICATION, "no stock")
        );
        assert!(!parse("x").unwrap_err().non_retryable);
    }
}
