//! The vocabulary of durable orchestrations: history events, inbox messages, retry policies and
//! failures.
//!
//! Everything here is plain data with a stable serde encoding, because it is written to the store
//! and read back by later versions of the code. This crate does no I/O, reads no clock and draws
//! no randomness.
//!
//! Glossary (also in ARCHITECTURE.md):
//! - *history*: the ordered list of [`Event`]s of one execution of an instance. Replaying the
//!   orchestration's code against it rebuilds its state.
//! - *message*: a [`Message`] in an instance's inbox (a start, an activity result, a fired timer,
//!   an external event, a cancel). A *turn* consumes messages and appends them to history as
//!   events.
//! - *command*: something the code asks for (schedule an activity, create a timer, start a
//!   sub-orchestration); recorded in history as a `*Scheduled`/`*Created` event with a sequence
//!   `id` and matched by that id on replay.
//!
//! ```
//! use sluice_history::{Backoff, Failure, RetryPolicy, codes};
//!
//! // A failure carries a stable code; the runtime's own codes are in `codes`.
//! let failure = Failure::new("payment.declined", "card expired");
//! assert_eq!(failure.code, "payment.declined");
//! assert_eq!(codes::CANCELLED, "cancelled");
//!
//! // Retry policies are validated, and encode as they are stored.
//! let policy = RetryPolicy::attempts(5).with_backoff(Backoff::Fixed { delay_ms: 250 });
//! policy.validate().unwrap();
//! assert_eq!(policy.delay_before(2).as_millis(), 250);
//! let stored = serde_json::to_string(&policy).unwrap();
//! assert_eq!(serde_json::from_str::<RetryPolicy>(&stored).unwrap(), policy);
//! ```
#![warn(missing_docs)]

mod event;
mod failure;
mod guid;
mod message;
mod retry;

pub use event::{Event, ParentLink, execution_version, pending_children};
pub use failure::{Failure, codes};
pub use guid::guid_from_seed;
pub use message::Message;
pub use retry::{Backoff, RetryPolicy, RetryPolicyError};

/// An orchestration instance's id, chosen by the caller who starts it (or derived
/// deterministically for sub-orchestrations).
pub type InstanceId = String;

/// Milliseconds since the Unix epoch. All durable timestamps use this unit.
pub type TimestampMs = i64;

/// The lifecycle state of an instance, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceStatus {
    /// Created; its start message has not been processed yet.
    Pending,
    /// Started and not finished (including between continue-as-new generations).
    Running,
    /// Finished with an output.
    Completed,
    /// Finished with a failure.
    Failed,
    /// Cancelled by a client or a cancelled parent.
    Cancelled,
    /// Taken out of service: its turns failed more often than the runtime's limit (see
    /// [`codes::TURN_POISONED`]; the reason is the instance's failure). Not final: it keeps
    /// receiving messages, but no turn runs until an operator acts.
    Quarantined,
    /// Suspended by an operator: it keeps receiving messages and activity results, but no turn
    /// runs until it is resumed. Not final.
    Suspended,
    /// Terminated by an operator (final; the failure has code [`codes::TERMINATED`]).
    Terminated,
}

impl InstanceStatus {
    /// True for the four final states.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Cancelled | Self::Terminated
        )
    }

    /// The stable text form used in stores.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Quarantined => "quarantined",
            Self::Suspended => "suspended",
            Self::Terminated => "terminated",
        }
    }

    /// Parses [`InstanceStatus::as_str`] output.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => Self::Pending,
            "running" => Self::Running,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            "quarantined" => Self::Quarantined,
            "suspended" => Self::Suspended,
            "terminated" => Self::Terminated,
            _ => return None,
        })
    }
}
