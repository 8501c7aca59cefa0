//! Metrics through the `metrics` facade (no exporter here), emitted per write call and per
//! batch, never per row. Names follow `sluice_sink_<name>_<unit>`, counters end in `_total`;
//! every series carries the labels `table` and `backend`. The list is in `docs/specs/metrics.md`.

use std::time::Duration;

/// What kind of series a metric is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Monotonic count.
    Counter,
    /// Current level.
    Gauge,
    /// Distribution of observations.
    Histogram,
}

/// Every metric the sink emits. Code refers to names only through this enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricName {
    /// Rows handed to `write`.
    RowsReceivedTotal,
    /// Rows durably applied (including rows superseded within their batch).
    RowsWrittenTotal,
    /// Rows durably recorded as dead letters.
    RowsDeadLetteredTotal,
    /// Rows superseded by a later row of the same key in their batch (a subset of written).
    RowsCoalescedTotal,
    /// Rows neither written nor dead-lettered because the sink failed.
    RowsFailedTotal,
    /// Batches flushed (successfully or not).
    BatchesTotal,
    /// Retries of transient backend errors.
    RetriesTotal,
    /// Time to flush one batch, including retries, bisection and dead letters.
    FlushDurationSeconds,
    /// Rows per flushed batch.
    BatchRows,
    /// Bytes accepted and not yet durable.
    BufferBytes,
    /// Lanes allowed to write at the same time (adaptive flush concurrency).
    FlushConcurrency,
    /// Bytes accepted into the buffer (with the released total, shows spikes a gauge misses).
    BufferBytesAcceptedTotal,
    /// Bytes released from the buffer after their batch finished.
    BufferBytesReleasedTotal,
    /// Rows dropped as a replay of checkpoints the database already holds.
    RowsSkippedTotal,
    /// Checkpoints pre-committed.
    CheckpointsTotal,
    /// Time of one `pre_commit`: the barrier through every lane plus making the rows durable.
    CheckpointDurationSeconds,
    /// Time of one `commit` (two-phase: `COMMIT PREPARED` of each lane's transaction).
    CommitDurationSeconds,
    /// Prepared transactions of this writer older than two checkpoints (emitted by backends
    /// with two-phase commit).
    OrphanedPreparedTransactions,
    /// Pooled connections in use (emitted by pooled backends).
    PoolConnectionsActive,
    /// Pooled connections open and idle (emitted by pooled backends).
    PoolConnectionsIdle,
    /// Time to get a connection from the pool (emitted by pooled backends).
    PoolAcquireDurationSeconds,
}

impl MetricName {
    /// Every metric.
    pub const ALL: [MetricName; 21] = [
        MetricName::RowsReceivedTotal,
        MetricName::RowsWrittenTotal,
        MetricName::RowsDeadLetteredTotal,
        MetricName::RowsCoalescedTotal,
        MetricName::RowsFailedTotal,
        MetricName::BatchesTotal,
        MetricName::RetriesTotal,
        MetricName::FlushDurationSeconds,
        MetricName::BatchRows,
        MetricName::BufferBytes,
        MetricName::FlushConcurrency,
        MetricName::BufferBytesAcceptedTotal,
        MetricName::BufferBytesReleasedTotal,
        MetricName::RowsSkippedTotal,
        MetricName::CheckpointsTotal,
        MetricName::CheckpointDurationSeconds,
        MetricName::CommitDurationSeconds,
        MetricName::OrphanedPreparedTransactions,
        MetricName::PoolConnectionsActive,
        MetricName::PoolConnectionsIdle,
        MetricName::PoolAcquireDurationSeconds,
    ];

    /// The exported name.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricName::RowsReceivedTotal => "sluice_sink_rows_received_total",
            MetricName::RowsWrittenTotal => "sluice_sink_rows_written_total",
            MetricName::RowsDeadLetteredTotal => "sluice_sink_rows_dead_lettered_total",
            MetricName::RowsCoalescedTotal => "sluice_sink_rows_coalesced_total",
            MetricName::RowsFailedTotal => "sluice_sink_rows_failed_total",
            MetricName::BatchesTotal => "sluice_sink_batches_total",
            MetricName::RetriesTotal => "sluice_sink_retries_total",
            MetricName::FlushDurationSeconds => "sluice_sink_flush_duration_seconds",
            MetricName::BatchRows => "sluice_sink_batch_rows",
            MetricName::BufferBytes => "sluice_sink_buffer_bytes",
            MetricName::FlushConcurrency => "sluice_sink_flush_concurrency",
            MetricName::BufferBytesAcceptedTotal => "sluice_sink_buffer_bytes_accepted_total",
            MetricName::BufferBytesReleasedTotal => "sluice_sink_buffer_bytes_released_total",
            MetricName::RowsSkippedTotal => "sluice_sink_rows_skipped_total",
            MetricName::CheckpointsTotal => "sluice_sink_checkpoints_total",
            MetricName::CheckpointDurationSeconds => "sluice_sink_checkpoint_duration_seconds",
            MetricName::CommitDurationSeconds => "sluice_sink_commit_duration_seconds",
            MetricName::OrphanedPreparedTransactions => {
                "sluice_sink_orphaned_prepared_transactions"
            }
            MetricName::PoolConnectionsActive => "sluice_sink_pool_connections_active",
            MetricName::PoolConnectionsIdle => "sluice_sink_pool_connections_idle",
            MetricName::PoolAcquireDurationSeconds => "sluice_sink_pool_acquire_duration_seconds",
        }
    }

    /// The series kind.
    pub fn kind(self) -> MetricKind {
        match self {
            MetricName::FlushDurationSeconds
            | MetricName::BatchRows
            | MetricName::CheckpointDurationSeconds
            | MetricName::CommitDurationSeconds
            | MetricName::PoolAcquireDurationSeconds => MetricKind::Histogram,
            MetricName::BufferBytes
            | MetricName::FlushConcurrency
            | MetricName::OrphanedPreparedTransactions
            | MetricName::PoolConnectionsActive
            | MetricName::PoolConnectionsIdle => MetricKind::Gauge,
            _ => MetricKind::Counter,
        }
    }

    /// Whether a backend emits it (pool and prepared-transaction metrics, through the same
    /// names and labels) rather than the engine.
    pub fn backend_emitted(self) -> bool {
        matches!(
            self,
            MetricName::OrphanedPreparedTransactions
                | MetricName::PoolConnectionsActive
                | MetricName::PoolConnectionsIdle
                | MetricName::PoolAcquireDurationSeconds
        )
    }

    /// One-line description (also the `# HELP` text an exporter shows).
    pub fn description(self) -> &'static str {
        match self {
            MetricName::RowsReceivedTotal => "Rows handed to the sink by writers.",
            MetricName::RowsWrittenTotal => {
                "Rows durably applied to the target table, including rows superseded by a later row of the same key in their batch."
            }
            MetricName::RowsDeadLetteredTotal => {
                "Rows durably recorded in the dead-letter destination."
            }
            MetricName::RowsCoalescedTotal => {
                "Rows superseded by a later row of the same key within their batch."
            }
            MetricName::RowsFailedTotal => {
                "Rows neither written nor dead-lettered because the sink failed."
            }
            MetricName::BatchesTotal => "Batches flushed.",
            MetricName::RetriesTotal => "Retries of transient backend errors.",
            MetricName::FlushDurationSeconds => {
                "Time to flush one batch, including retries, bisection and dead letters."
            }
            MetricName::BatchRows => "Rows per flushed batch.",
            MetricName::BufferBytes => "Bytes accepted by the sink and not yet durable.",
            MetricName::FlushConcurrency => {
                "Lanes allowed to write at the same time (follows the load with adaptive flush concurrency)."
            }
            MetricName::BufferBytesAcceptedTotal => "Bytes accepted into the write buffer.",
            MetricName::BufferBytesReleasedTotal => {
                "Bytes released from the write buffer after their batch finished."
            }
            MetricName::RowsSkippedTotal => {
                "Rows dropped as a replay of checkpoints the database already holds."
            }
            MetricName::CheckpointsTotal => "Checkpoints pre-committed.",
            MetricName::CheckpointDurationSeconds => {
                "Time of one pre-commit: the barrier through every lane plus making the checkpoint's rows durable."
            }
            MetricName::CommitDurationSeconds => {
                "Time of one checkpoint commit (two-phase: COMMIT PREPARED of each lane's transaction)."
            }
            MetricName::OrphanedPreparedTransactions => {
                "Prepared transactions of this writer older than two checkpoints."
            }
            MetricName::PoolConnectionsActive => "Pooled database connections in use.",
            MetricName::PoolConnectionsIdle => "Pooled database connections open and idle.",
            MetricName::PoolAcquireDurationSeconds => "Time to get a connection from the pool.",
        }
    }
}

/// Registered handles, so emitting does no name lookup.
pub(crate) struct SinkMetrics {
    rows_received: metrics::Counter,
    rows_written: metrics::Counter,
    rows_dead_lettered: metrics::Counter,
    rows_coalesced: metrics::Counter,
    rows_failed: metrics::Counter,
    batches: metrics::Counter,
    retries: metrics::Counter,
    flush_duration: metrics::Histogram,
    batch_rows: metrics::Histogram,
    buffer_bytes: metrics::Gauge,
    flush_concurrency: metrics::Gauge,
    buffer_accepted: metrics::Counter,
    buffer_released: metrics::Counter,
    rows_skipped: metrics::Counter,
    checkpoints: metrics::Counter,
    checkpoint_duration: metrics::Histogram,
    commit_duration: metrics::Histogram,
}

/// What one flushed batch did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct BatchReport {
    pub(crate) rows: u64,
    pub(crate) written: u64,
    pub(crate) dead_lettered: u64,
    pub(crate) coalesced: u64,
    pub(crate) failed: u64,
    pub(crate) retries: u64,
}

impl SinkMetrics {
    pub(crate) fn register(table: &str, backend: &'static str) -> SinkMetrics {
        for name in MetricName::ALL {
            match name.kind() {
                MetricKind::Counter => {
                    metrics::describe_counter!(name.as_str(), name.description())
                }
                MetricKind::Gauge => metrics::describe_gauge!(name.as_str(), name.description()),
                MetricKind::Histogram => {
                    metrics::describe_histogram!(name.as_str(), name.description())
                }
            }
        }
        let labels = [
            ("table", table.to_string()),
            ("backend", backend.to_string()),
        ];
        let counter = |name: MetricName| metrics::counter!(name.as_str(), &labels);
        let histogram = |name: MetricName| metrics::histogram!(name.as_str(), &labels);
        SinkMetrics {
            rows_received: counter(MetricName::RowsReceivedTotal),
            rows_written: counter(MetricName::RowsWrittenTotal),
            rows_dead_lettered: counter(MetricName::RowsDeadLetteredTotal),
            rows_coalesced: counter(MetricName::RowsCoalescedTotal),
            rows_failed: counter(MetricName::RowsFailedTotal),
            batches: counter(MetricName::BatchesTotal),
            retries: counter(MetricName::RetriesTotal),
            flush_duration: histogram(MetricName::FlushDurationSeconds),
            batch_rows: histogram(MetricName::BatchRows),
            buffer_bytes: metrics::gauge!(MetricName::BufferBytes.as_str(), &labels),
            flush_concurrency: metrics::gauge!(MetricName::FlushConcurrency.as_str(), &labels),
            buffer_accepted: counter(MetricName::BufferBytesAcceptedTotal),
            buffer_released: counter(MetricName::BufferBytesReleasedTotal),
            rows_skipped: counter(MetricName::RowsSkippedTotal),
            checkpoints: counter(MetricName::CheckpointsTotal),
            checkpoint_duration: histogram(MetricName::CheckpointDurationSeconds),
            commit_duration: histogram(MetricName::CommitDurationSeconds),
        }
    }

    pub(crate) fn accepted(&self, rows: u64, bytes: u64, buffered_bytes: u64) {
        self.rows_received.increment(rows);
        self.buffer_accepted.increment(bytes);
        self.buffer_bytes.set(buffered_bytes as f64);
    }

    pub(crate) fn flush_concurrency(&self, lanes: usize) {
        self.flush_concurrency.set(lanes as f64);
    }

    pub(crate) fn batch(&self, report: &BatchReport, duration: Duration) {
        self.batches.increment(1);
        self.rows_written.increment(report.written);
        self.rows_dead_lettered.increment(report.dead_lettered);
        self.rows_coalesced.increment(report.coalesced);
        self.rows_failed.increment(report.failed);
        self.retries.increment(report.retries);
        self.flush_duration.record(duration.as_secs_f64());
        self.batch_rows.record(report.rows as f64);
    }

    pub(crate) fn skipped(&self, rows: u64) {
        self.rows_received.increment(rows);
        self.rows_skipped.increment(rows);
    }

    pub(crate) fn checkpoint(&self, duration: Duration) {
        self.checkpoints.increment(1);
        self.checkpoint_duration.record(duration.as_secs_f64());
    }

    pub(crate) fn commit(&self, duration: Duration) {
        self.commit_duration.record(duration.as_secs_f64());
    }

    pub(crate) fn released(&self, bytes: u64, buffered_bytes: u64) {
        self.buffer_released.increment(bytes);
        self.buffer_bytes.set(buffered_bytes as f64);
    }
}
