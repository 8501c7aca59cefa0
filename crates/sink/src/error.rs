//! The engine's error type.

use crate::backend::BackendError;
use crate::config::ConfigError;
use crate::ident::IdentError;
use crate::schema::SchemaError;
use std::sync::Arc;

/// Why a sink call failed. Every variant has a stable [`SinkError::code`].
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The schema is invalid.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// A derived name (the dead-letter table) is invalid.
    #[error("invalid derived name: {0}")]
    Ident(#[from] IdentError),
    /// A keyed mode was configured for a schema without a key.
    #[error("mode {mode} needs a key, but the schema of table {table} has none")]
    KeyRequired {
        /// The mode.
        mode: &'static str,
        /// The table.
        table: String,
    },
    /// The dead-letter file could not be opened.
    #[error("cannot open the dead-letter file {path}: {message}")]
    DeadLetterFile {
        /// The path.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// The backend refused to prepare the table, or failed fatally.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A transient error persisted through every retry.
    #[error("gave up after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// Attempts made (the first plus `retry_attempts_max` retries).
        attempts: u32,
        /// The last error.
        last: BackendError,
    },
    /// The backend broke the `TableWriter` contract (for example reported fewer rows than it
    /// was given); the sink stops rather than guess what was written.
    #[error("backend contract violated: {0}")]
    Contract(String),
    /// The buffer is full and `backpressure = "error"`.
    #[error(
        "the write buffer holds {buffered_bytes} of {buffer_bytes_max} bytes; {bytes} more do not fit"
    )]
    BufferFull {
        /// The bytes of the refused write.
        bytes: usize,
        /// Bytes buffered when it was refused.
        buffered_bytes: usize,
        /// The limit.
        buffer_bytes_max: usize,
    },
    /// One write is larger than the whole buffer; split it.
    #[error("one write of {bytes} bytes exceeds buffer_bytes_max = {buffer_bytes_max} bytes")]
    WriteTooLarge {
        /// The bytes of the write.
        bytes: usize,
        /// The limit.
        buffer_bytes_max: usize,
    },
    /// The sink is closed (or closing).
    #[error("the sink is closed")]
    Closed,
    /// An exactly-once sink was written to, or checkpointed, before `recover`; or `recover`
    /// was called twice.
    #[error("{0}")]
    Recovery(String),
    /// A checkpoint id is not greater than the last one, or names no pre-committed checkpoint.
    #[error("checkpoint {checkpoint_id} is out of order: {reason}")]
    CheckpointOrder {
        /// The id given.
        checkpoint_id: u64,
        /// What was expected.
        reason: String,
    },
    /// [`Sink::start_pre_commit`](crate::Sink::start_pre_commit) found another checkpoint call
    /// (`pre_commit`, `recover`, `abort`) in progress; let it finish first.
    #[error("another checkpoint call is in progress")]
    CheckpointBusy,
    /// The restored checkpoint is newer than the database's progress row: the database lost
    /// committed rows (or is not the database this sink wrote to). Nothing was written.
    #[error(
        "the restored checkpoint {restored} is newer than the last checkpoint the database holds \
         ({committed}); refusing to continue"
    )]
    CheckpointAhead {
        /// The restored checkpoint id.
        restored: u64,
        /// The database's, as text (`none` when it has no progress row).
        committed: String,
    },
    /// Rows were skipped as a replay of checkpoints the database already holds, but the barrier
    /// that closed them has a greater id: the replay did not repeat the original barriers.
    #[error(
        "rows since the last barrier were skipped as a replay of checkpoints up to \
         {skipping_through}, but checkpoint {checkpoint_id} closes them; replay from the \
         database's position instead (Resume::Committed)"
    )]
    ReplayMismatch {
        /// The database's checkpoint.
        skipping_through: u64,
        /// The barrier's id.
        checkpoint_id: u64,
    },
    /// The replay of a checkpoint only some lanes committed did not repeat it: another id or
    /// state at its barrier, or other counts of rows. Nothing of the replay was committed;
    /// the source no longer holds what was written (a changed file, a trimmed stream).
    #[error(
        "the replay of checkpoint {checkpoint_id}, which only some lanes committed, does not repeat it: {problems}; nothing of it was committed (did the source change?)"
    )]
    PartialReplayMismatch {
        /// The partial checkpoint.
        checkpoint_id: u64,
        /// What differs.
        problems: String,
    },
    /// A checkpoint's open transaction was lost (connection lost, database restarted, or any
    /// error other than a refused row): rows since the last checkpoint must be replayed after
    /// `recover`.
    #[error("the open checkpoint transaction was lost: {0}")]
    CheckpointLost(BackendError),
    /// `abort` was called: the sink stops; open a new one and `recover`.
    #[error("checkpoint {0} was aborted; recover from the last completed checkpoint")]
    Aborted(u64),
    /// An earlier batch failed; the sink accepts and flushes nothing more. Rows not flushed
    /// before the failure must be replayed by the caller (from its last successful `flush`).
    #[error("the sink has failed: {0}")]
    Failed(Arc<SinkError>),
}

impl SinkError {
    /// A stable code for the error.
    pub fn code(&self) -> &'static str {
        match self {
            SinkError::Config(error) => error.code(),
            SinkError::Schema(error) => error.code(),
            SinkError::Ident(error) => error.code(),
            SinkError::KeyRequired { .. } => "sink.key_required",
            SinkError::DeadLetterFile { .. } => "sink.dead_letter.open",
            SinkError::Backend(error) => error.code(),
            SinkError::RetriesExhausted { .. } => "sink.retries_exhausted",
            SinkError::Contract(_) => "sink.backend_contract",
            SinkError::BufferFull { .. } => "sink.buffer_full",
            SinkError::WriteTooLarge { .. } => "sink.write_too_large",
            SinkError::Closed => "sink.closed",
            SinkError::Failed(_) => "sink.failed",
            SinkError::Recovery(_) => "sink.recovery",
            SinkError::CheckpointOrder { .. } => "sink.checkpoint_order",
            SinkError::CheckpointBusy => "sink.checkpoint_busy",
            SinkError::CheckpointAhead { .. } => "sink.checkpoint_ahead",
            SinkError::ReplayMismatch { .. } => "sink.replay_mismatch",
            SinkError::PartialReplayMismatch { .. } => "sink.partial_replay_mismatch",
            SinkError::CheckpointLost(_) => "sink.checkpoint_lost",
            SinkError::Aborted(_) => "sink.aborted",
        }
    }
}
