//! The ingest's errors: each with a stable code, usage errors apart (a caller shows them as a
//! bad configuration and changes nothing).

use sluice_sink::SinkError;
use std::fmt::Display;

/// A bad usage or configuration: the key (`from`, `sink.delivery`, `columns.price`, ...) and
/// the problem.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct UsageError {
    key: String,
    problem: String,
}

impl UsageError {
    /// A problem with the setting `key`.
    pub fn new(key: &str, problem: impl Into<String>) -> UsageError {
        UsageError {
            key: key.to_string(),
            problem: problem.into(),
        }
    }

    /// The setting at fault.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// What is wrong with it.
    pub fn problem(&self) -> &str {
        &self.problem
    }
}

/// Why a pipeline could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The settings are wrong, or the target table does not fit them; nothing was written.
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// Reading the source failed (a file, standard input).
    #[error("{0}")]
    Source(String),
    /// The NATS server or the JetStream stream failed.
    #[error("{0}")]
    JetStream(String),
    /// The sink failed: opening the target, writing, or a checkpoint.
    #[error("{message}")]
    Sink {
        /// What was being done, and the sink's error.
        message: String,
        /// The sink error's stable code (`sink.*`, `postgres.*`, `sqlite.*`).
        sink_code: &'static str,
    },
    /// A task or thread of the pipeline ended without an answer (a panic).
    #[error("{0}")]
    Internal(String),
}

impl IngestError {
    /// A stable code: `ingest.usage`, `ingest.source`, `ingest.jetstream`, `ingest.sink`,
    /// `ingest.internal`.
    pub fn code(&self) -> &'static str {
        match self {
            IngestError::Usage(_) => "ingest.usage",
            IngestError::Source(_) => "ingest.source",
            IngestError::JetStream(_) => "ingest.jetstream",
            IngestError::Sink { .. } => "ingest.sink",
            IngestError::Internal(_) => "ingest.internal",
        }
    }

    /// Whether this is a bad usage or configuration (the binary's exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, IngestError::Usage(_))
    }

    pub(crate) fn sink(what: impl Display, error: &SinkError) -> IngestError {
        IngestError::Sink {
            message: format!("{what}: {error}"),
            sink_code: error.code(),
        }
    }

    /// The same error, its message prefixed by `what`.
    pub(crate) fn within(self, what: impl Display) -> IngestError {
        match self {
            IngestError::Usage(usage) => IngestError::Usage(usage),
            IngestError::Source(message) => IngestError::Source(format!("{what}: {message}")),
            IngestError::JetStream(message) => IngestError::JetStream(format!("{what}: {message}")),
            IngestError::Sink { message, sink_code } => IngestError::Sink {
                message: format!("{what}: {message}"),
                sink_code,
            },
            IngestError::Internal(message) => IngestError::Internal(format!("{what}: {message}")),
        }
    }
}

/// `Result` with an [`IngestError`].
pub type Result<T, E = IngestError> = std::result::Result<T, E>;

/// Adds what was being done to an error, turning it into an [`IngestError`] of its kind.
pub(crate) trait Context<T> {
    fn context(self, what: impl Display) -> Result<T>;
    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, std::io::Error> {
    fn context(self, what: impl Display) -> Result<T> {
        self.map_err(|error| IngestError::Source(format!("{what}: {error}")))
    }
    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|error| IngestError::Source(format!("{}: {error}", what())))
    }
}

impl<T> Context<T> for std::result::Result<T, SinkError> {
    fn context(self, what: impl Display) -> Result<T> {
        self.map_err(|error| IngestError::sink(what, &error))
    }
    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|error| IngestError::sink(what(), &error))
    }
}

impl<T> Context<T> for Result<T> {
    fn context(self, what: impl Display) -> Result<T> {
        self.map_err(|error| error.within(what))
    }
    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|error| error.within(what()))
    }
}

impl<T> Context<T> for std::result::Result<T, tokio::task::JoinError> {
    fn context(self, what: impl Display) -> Result<T> {
        self.map_err(|error| IngestError::Internal(format!("{what}: {error}")))
    }
    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|error| IngestError::Internal(format!("{}: {error}", what())))
    }
}
