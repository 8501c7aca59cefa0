use sluice_history::Failure;
use sluice_store::StoreError;

/// Errors of [`Client`](crate::Client) calls.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The store failed or refused the call.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No instance has this id.
    #[error("instance '{0}' does not exist")]
    NotFound(String),
    /// The wait ended before the instance finished.
    #[error("instance '{0}' did not finish within the timeout")]
    Timeout(String),
    /// Input or output could not be (de)serialised.
    #[error("serialisation: {0}")]
    Serde(String),
    /// The instance failed (typed helpers only).
    #[error("instance failed: {0}")]
    Failed(Failure),
}

impl ClientError {
    /// A stable code for the error.
    pub fn code(&self) -> &'static str {
        match self {
            ClientError::Store(error) => error.code(),
            ClientError::NotFound(_) => "client.not_found",
            ClientError::Timeout(_) => "client.timeout",
            ClientError::Serde(_) => "client.serde",
            ClientError::Failed(_) => "client.failed",
        }
    }
}

/// Why [`Runtime::start`](crate::Runtime::start) refused to start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A [`RuntimeOptions`](crate::RuntimeOptions) field is out of its range.
    #[error("runtime option {option}: {why}")]
    InvalidOption {
        /// The field.
        option: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// A name was registered twice in the [`Registry`](crate::Registry).
    #[error("{kind} '{name}' is registered twice")]
    DuplicateName {
        /// `orchestration` or `activity`.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// A registration cannot work (an orchestration version 0).
    #[error("{0}")]
    InvalidRegistration(String),
}

impl StartError {
    /// A stable code for the error.
    pub fn code(&self) -> &'static str {
        match self {
            StartError::InvalidOption { .. } => "runtime.invalid_option",
            StartError::DuplicateName { .. } => "runtime.duplicate_name",
            StartError::InvalidRegistration(_) => "runtime.invalid_registration",
        }
    }
}
