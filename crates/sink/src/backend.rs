//! The contract between the engine and a database: [`SinkBackend`] checks (and optionally
//! creates or widens) the target table once and hands back a [`TableWriter`], which writes
//! batches.
//!
//! The engine owns everything that is the same for every database: buffering, batching, the
//! in-batch reduction by key, retries with backoff, bisecting a batch to isolate bad rows, dead
//! letters, counters and metrics. A backend owns the SQL and the classification of its errors.
//!
//! Contract for [`TableWriter::write_batch`]:
//! - **All or nothing on error.** When it returns `Err`, nothing of the batch is written (the
//!   engine retries or bisects the same rows, so a partial write would duplicate or lose rows).
//! - **Everything accounted for on success.** `Ok(outcome)` means every row of the batch is
//!   durable except those listed in `outcome.rejected`, which were not written at all. The
//!   engine checks `applied + rejected == rows` and fails the sink otherwise.
//! - **No statement limit leaks out.** A backend splits a batch into as many statements as its
//!   database needs (SQLite's 32,766 bound parameters, PostgreSQL's 65,535), inside one
//!   transaction.
//! - **Keys are unique within a keyed batch.** In modes other than `insert` the engine has
//!   reduced the batch to at most one row per key, so upserts never touch a row twice and the
//!   order of statements within a batch does not matter.
//! - **Calls may overlap.** Up to `flush_concurrency` batches are written at the same time
//!   (never two with the same key); a pooled backend uses one connection per call.
//!
//! Errors are classified by [`BackendError`]: transient ones are retried with backoff, row
//! errors make the engine bisect the batch, fatal ones stop the sink.

use crate::checkpoint::Resume;
use crate::config::{CreateTable, Delivery, Evolve, Mode, SinkId};
use crate::ident::Ident;
use crate::schema::{Row, Schema};
use crate::value::{ColumnType, TimestampTz};
use async_trait::async_trait;
use std::ops::Range;
use std::sync::Arc;

/// What the engine asks of the target table at start.
#[derive(Clone, Debug)]
pub struct PrepareRequest {
    /// The stream's schema (its table is the target).
    pub schema: Arc<Schema>,
    /// The write mode: keyed modes need the key to be unique in the table.
    pub mode: Mode,
    /// Whether to create a missing table.
    pub create_table: CreateTable,
    /// Whether to add missing nullable columns.
    pub evolve: Evolve,
    /// The dead-letter table to create or check, when dead letters go to a table.
    pub dead_letter_table: Option<Ident>,
    /// Batches written at the same time, at most (one per lane): a pooled backend sizes its
    /// pool from it.
    pub flush_concurrency: usize,
    /// Exactly-once delivery: the mechanism and the writer's identity. `None` for
    /// at-least-once.
    pub checkpoints: Option<CheckpointSpec>,
}

/// What an exactly-once sink asks of the backend.
#[derive(Clone, Debug)]
pub struct CheckpointSpec {
    /// `TransactionalMarker` or `TwoPhase`.
    pub delivery: Delivery,
    /// The sink's stable identity.
    pub sink_id: SinkId,
    /// This writer's number.
    pub writer_id: u32,
    /// The progress table, created when missing: `(sink_id, writer_id, lane)` ->
    /// `(checkpoint_id, state, committed_at)`.
    pub progress_table: Ident,
}

/// What `prepare` did to the database.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrepareReport {
    /// The target table was created.
    pub created_table: bool,
    /// Columns added to the target table (`evolve = "add_columns"`).
    pub added_columns: Vec<Ident>,
}

/// A checked target and its writer.
pub struct Prepared {
    /// Writes batches into the target table.
    pub writer: Arc<dyn TableWriter>,
    /// What was changed to make the table fit.
    pub report: PrepareReport,
    /// Exactly-once delivery: the checkpoint-aligned writer. Present exactly when the request
    /// had `checkpoints`; a backend that does not support the mechanism refuses in `prepare`.
    pub checkpoints: Option<Arc<dyn CheckpointWriter>>,
}

/// A database the sink can write into.
///
/// A PostgreSQL backend would hold its pool here; `prepare` reads `information_schema` and the
/// key's unique index on one connection and returns a writer holding the pool and the statement
/// texts.
#[async_trait]
pub trait SinkBackend: Send + Sync {
    /// A short name for logs and metrics (`sqlite`, `postgres`, `memory`).
    fn name(&self) -> &'static str;

    /// Reads the target table's columns and refuses, with every problem listed in
    /// [`BackendError::SchemaMismatch`], when the schema does not fit: a missing column, a type
    /// that would not round-trip, NULLs where the table forbids them, a table column the rows
    /// cannot fill, or (keyed modes) a key that is not the primary key or a unique index.
    /// Creates the table or adds nullable columns when allowed, and creates the dead-letter
    /// table.
    async fn prepare(&self, request: &PrepareRequest) -> Result<Prepared, BackendError>;

    /// The columns of an existing table `table`, in their order, or `None` when no table of
    /// that name exists (a view or another kind of relation is `None` too: the sink does not
    /// write into them). Read-only: nothing is created. For tools that build a schema from the
    /// table (`sluice ingest` without declared columns).
    async fn describe_table(
        &self,
        table: &Ident,
    ) -> Result<Option<Vec<DescribedColumn>>, BackendError>;

    /// The statement [`SinkBackend::prepare`] runs to create `schema`'s table when it is
    /// missing, for previews (`sluice ingest --dry-run`); `None` for a backend without SQL.
    fn create_table_sql(&self, schema: &Schema) -> Option<String> {
        let _ = schema;
        None
    }
}

/// One column of an existing table, as [`SinkBackend::describe_table`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescribedColumn {
    /// The column's name, exactly as stored.
    pub name: String,
    /// The sink's column type whose values the column holds exactly, or `None` when the sink
    /// does not write the column's type or the declared type is ambiguous (each backend's docs
    /// say which).
    pub column_type: Option<ColumnType>,
    /// The type as the database shows it, for messages.
    pub type_name: String,
    /// Whether NULL is allowed.
    pub nullable: bool,
    /// Whether the table fills the column when a row leaves it out: a default, an identity,
    /// a generated column or a rowid alias.
    pub filled_by_table: bool,
    /// Whether nothing may be written to it: a generated column, a hidden column or
    /// `GENERATED ALWAYS AS IDENTITY`.
    pub read_only: bool,
}

/// The columns of a dead-letter table besides its `id`, in every backend: `failed_at_us`
/// (microseconds since the Unix epoch, UTC), `table_name`, `error_code`, `error` and
/// `row_json` (see [`DeadLetter`]).
pub const DEAD_LETTER_COLUMNS: [&str; 5] = [
    "failed_at_us",
    "table_name",
    "error_code",
    "error",
    "row_json",
];

/// The longest database error message a backend keeps, in bytes: databases quote whole
/// statements in some messages, and a multi-row statement can be megabytes long.
pub const MESSAGE_BYTES_MAX: usize = 1024;

/// Cuts `message` to [`MESSAGE_BYTES_MAX`] bytes on a character boundary, marking the cut
/// with `...`.
pub fn shortened_message(mut message: String) -> String {
    if message.len() > MESSAGE_BYTES_MAX {
        let mut end = MESSAGE_BYTES_MAX;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    message
}

/// Writes batches into one prepared table (at-least-once delivery: each call commits).
#[async_trait]
pub trait TableWriter: Send + Sync {
    /// Writes one batch, in one transaction. See the module docs for the contract.
    async fn write_batch(&self, batch: &Batch) -> Result<BatchOutcome, BackendError>;

    /// Durably records rows that could not be written (dead-letter destination `table`).
    /// All or nothing, like `write_batch`.
    async fn write_dead_letters(&self, letters: &[DeadLetter]) -> Result<(), BackendError>;
}

/// The highest checkpoint whose rows a writer has made durable, as its progress row says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The checkpoint id.
    pub checkpoint_id: u64,
    /// The caller's state given to that checkpoint's `pre_commit` (for example a source
    /// position).
    pub state: String,
}

/// A checkpoint's cut, handed to [`CheckpointWriter::pre_commit`]: its id, the caller's state,
/// and how its entries were routed (see [`Sink`](crate::Sink)'s routing rule), which a
/// backend that commits lane by lane records with each lane's progress so that a replay can
/// tell which lane already holds what.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cut<'a> {
    /// The checkpoint id.
    pub checkpoint_id: u64,
    /// The caller's state (for example a source position).
    pub state: &'a str,
    /// The lanes the checkpoint's entries were routed over (`flush_concurrency`).
    pub lanes: usize,
    /// The stripe of its unkeyed entries (`batch_rows_max`, at most 256): that many consecutive ones went
    /// to one lane.
    pub stripe_rows: u64,
    /// Rows the checkpoint received (written or refused), over all lanes.
    pub rows: u64,
    /// Rejected source records ([`Sink::reject`](crate::Sink::reject)) it received.
    pub rejected: u64,
    /// The checkpoint before it, the last one whose rows are all visible (`None` before the
    /// first): recorded with each lane's progress, so recovery knows where to resume when
    /// only some lanes commit this one.
    pub previous: Option<&'a Committed>,
}

/// One lane's progress row, as a backend that commits lane by lane records it at
/// `pre_commit` in that lane's transaction: the lane and its [`Cut`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaneProgress {
    /// The lane.
    pub lane: usize,
    /// [`Cut::checkpoint_id`].
    pub checkpoint_id: u64,
    /// [`Cut::state`].
    pub state: String,
    /// [`Cut::lanes`].
    pub lanes: usize,
    /// [`Cut::stripe_rows`].
    pub stripe_rows: u64,
    /// [`Cut::rows`].
    pub rows: u64,
    /// [`Cut::rejected`].
    pub rejected: u64,
    /// [`Cut::previous`].
    pub previous: Option<Committed>,
}

impl LaneProgress {
    /// The row `lane` records for `cut`.
    pub fn new(lane: usize, cut: &Cut<'_>) -> LaneProgress {
        LaneProgress {
            lane,
            checkpoint_id: cut.checkpoint_id,
            state: cut.state.to_string(),
            lanes: cut.lanes,
            stripe_rows: cut.stripe_rows,
            rows: cut.rows,
            rejected: cut.rejected,
            previous: cut.previous.cloned(),
        }
    }
}

/// A checkpoint that some lanes committed and others did not: the process died between
/// the lanes' commits of a backend that commits lane by lane (the PostgreSQL marker). Its
/// rows in the lanes that hold it are visible; the others' are lost with their
/// transactions. The sink replays it from the complete checkpoint before it, writing only
/// the entries routed to the lanes in `missing`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartialCheckpoint {
    /// The checkpoint id.
    pub checkpoint_id: u64,
    /// Its state.
    pub state: String,
    /// The lanes its entries were routed over ([`Cut::lanes`]).
    pub lanes: usize,
    /// [`Cut::stripe_rows`].
    pub stripe_rows: u64,
    /// The lanes (below `lanes`) whose transaction of it did not commit.
    pub missing: Vec<usize>,
    /// [`Cut::rows`], for checking the replay.
    pub rows: u64,
    /// [`Cut::rejected`].
    pub rejected: u64,
}

/// What [`CheckpointWriter::recover`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The highest checkpoint whose rows are all visible.
    pub committed: Option<Committed>,
    /// The checkpoint after it, when only some lanes committed it.
    pub partial: Option<PartialCheckpoint>,
}

impl Recovered {
    /// A backend that commits every lane in one transaction, or none.
    pub fn whole(committed: Option<Committed>) -> Recovered {
        Recovered {
            committed,
            partial: None,
        }
    }

    /// What the progress rows of a backend that commits lane by lane say (every row of one
    /// writer, any lanes). The highest checkpoint is complete when every lane it was routed
    /// over holds it; otherwise it is partial and the complete one is the `previous` its rows
    /// recorded. Rows of lanes beyond it (an earlier run with more lanes) do not count. An
    /// error says which rows disagree.
    pub fn from_lanes(rows: &[LaneProgress]) -> Result<Recovered, String> {
        let Some(highest) = rows.iter().max_by_key(|row| row.checkpoint_id) else {
            return Ok(Recovered::default());
        };
        let at_highest: Vec<&LaneProgress> = rows
            .iter()
            .filter(|row| row.checkpoint_id == highest.checkpoint_id)
            .collect();
        let disagree = at_highest.iter().find(|row| {
            (
                &row.state,
                row.lanes,
                row.stripe_rows,
                row.rows,
                row.rejected,
                &row.previous,
            ) != (
                &highest.state,
                highest.lanes,
                highest.stripe_rows,
                highest.rows,
                highest.rejected,
                &highest.previous,
            )
        });
        if let Some(row) = disagree {
            return Err(format!(
                "lanes {} and {} recorded checkpoint {} differently: {highest:?} and {row:?}",
                highest.lane, row.lane, highest.checkpoint_id
            ));
        }
        if highest.lanes == 0 || highest.stripe_rows == 0 {
            return Err(format!(
                "lane {} recorded checkpoint {} over {} lanes in stripes of {} rows",
                highest.lane, highest.checkpoint_id, highest.lanes, highest.stripe_rows
            ));
        }
        let missing: Vec<usize> = (0..highest.lanes)
            .filter(|lane| !at_highest.iter().any(|row| row.lane == *lane))
            .collect();
        let this = Committed {
            checkpoint_id: highest.checkpoint_id,
            state: highest.state.clone(),
        };
        if missing.is_empty() {
            return Ok(Recovered::whole(Some(this)));
        }
        if let Some(previous) = &highest.previous
            && previous.checkpoint_id >= highest.checkpoint_id
        {
            return Err(format!(
                "checkpoint {} recorded the later checkpoint {} as its previous one",
                highest.checkpoint_id, previous.checkpoint_id
            ));
        }
        Ok(Recovered {
            committed: highest.previous.clone(),
            partial: Some(PartialCheckpoint {
                checkpoint_id: this.checkpoint_id,
                state: this.state,
                lanes: highest.lanes,
                stripe_rows: highest.stripe_rows,
                missing,
                rows: highest.rows,
                rejected: highest.rejected,
            }),
        })
    }
}

/// Exactly-once writes: each lane's batches go into a transaction that stays open until the
/// checkpoint barrier, so a crash before the barrier leaves nothing of them.
///
/// The engine guarantees the order of calls: between two barriers each lane calls
/// `write_batch`/`write_dead_letters` one at a time (lanes run concurrently); `pre_commit(c)`
/// comes after every lane finished its calls for `c` and before any lane writes for the next
/// checkpoint; checkpoint ids are increasing; `recover` comes first, before any write.
///
/// Contract:
/// - `write_batch` runs inside a savepoint of the lane's transaction: on `Err(Row)` nothing of
///   the call is kept and the transaction stays usable (the engine bisects, as for
///   `TableWriter`). Any other error means the transaction may be lost; the engine fails the
///   sink (it cannot retry only the last batch) and the caller recovers.
/// - `pre_commit(cut)` makes every lane's rows durable together with the writer's progress
///   (`cut.checkpoint_id`, `cut.state`): `TransactionalMarker` commits them (visible now; in
///   one transaction, or one per lane, each with that lane's progress and the cut's routing),
///   `TwoPhase` prepares one transaction per lane that wrote (visible at `commit`).
/// - `commit(c)` makes every checkpoint up to `c` visible; calling it again, or after a
///   restart for a checkpoint recovery already committed, is not an error.
/// - `recover(restored, resume)` resolves what an earlier run of this writer left behind: open
///   transactions are gone; prepared ones up to the completed checkpoint are committed, later
///   ones rolled back; transactions of other writers and applications are not touched. The
///   completed checkpoint is `restored` with `Resume::Restored`; with `Resume::Committed` it is
///   the higher of `restored` and the highest checkpoint any lane committed (a lane commits
///   only after every lane prepared, so the other lanes' prepared transactions of that
///   checkpoint are committed too). Returns the highest checkpoint whose rows are all
///   visible, and a later one that only some lanes committed (a marker committed lane by
///   lane: see [`PartialCheckpoint`]).
#[async_trait]
pub trait CheckpointWriter: Send + Sync {
    /// Writes one batch into `lane`'s open transaction (opening it if needed).
    async fn write_batch(&self, lane: usize, batch: &Batch) -> Result<BatchOutcome, BackendError>;

    /// Records dead letters in `lane`'s open transaction (dead-letter table destination).
    async fn write_dead_letters(
        &self,
        lane: usize,
        letters: &[DeadLetter],
    ) -> Result<(), BackendError>;

    /// Makes the checkpoint's rows durable with the writer's progress (see the trait docs).
    async fn pre_commit(&self, cut: &Cut<'_>) -> Result<(), BackendError>;

    /// Makes every pre-committed checkpoint up to `checkpoint_id` visible. Idempotent.
    async fn commit(&self, checkpoint_id: u64) -> Result<(), BackendError>;

    /// Rolls back the open transactions and the prepared ones of checkpoints from
    /// `checkpoint_id` on (`TransactionalMarker`: committed rows stay; only the open
    /// transaction is rolled back).
    async fn abort(&self, checkpoint_id: u64) -> Result<(), BackendError>;

    /// Resolves what an earlier run left (see the trait docs).
    async fn recover(
        &self,
        restored: Option<u64>,
        resume: Resume,
    ) -> Result<Recovered, BackendError>;
}

/// Rows for one `write_batch` call: a range of a shared, reduced row list (bisection hands out
/// sub-ranges without copying rows).
#[derive(Clone, Debug)]
pub struct Batch {
    schema: Arc<Schema>,
    mode: Mode,
    rows: Arc<[Row]>,
    range: Range<usize>,
}

impl Batch {
    /// A batch of all of `rows`.
    pub fn new(schema: Arc<Schema>, mode: Mode, rows: Arc<[Row]>) -> Batch {
        let range = 0..rows.len();
        Batch {
            schema,
            mode,
            rows,
            range,
        }
    }

    /// The same rows, restricted to `range` (relative to this batch).
    pub fn slice(&self, range: Range<usize>) -> Batch {
        assert!(
            range.start <= range.end && range.end <= self.len(),
            "range within the batch"
        );
        Batch {
            range: self.range.start + range.start..self.range.start + range.end,
            ..self.clone()
        }
    }

    /// The schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The schema, shared (for work moved to another thread).
    pub fn schema_arc(&self) -> &Arc<Schema> {
        &self.schema
    }

    /// The mode. In `insert` every row is `Op::Insert`; otherwise `Op::Upsert` or `Op::Delete`
    /// with at most one row per key.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The rows.
    pub fn rows(&self) -> &[Row] {
        &self.rows[self.range.clone()]
    }

    /// The shared row list and this batch's range in it (for work moved to another thread).
    pub fn shared_rows(&self) -> (&Arc<[Row]>, Range<usize>) {
        (&self.rows, self.range.clone())
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.range.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }
}

/// The result of a successful `write_batch`.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Rows written.
    pub applied: usize,
    /// Rows the backend refused individually (by position in the batch) without failing the
    /// batch; they were not written and go to the dead letters.
    pub rejected: Vec<(usize, BackendError)>,
}

/// A row that could not be written, as recorded in the dead-letter destination.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    /// The target table.
    pub table: String,
    /// When the row was given up on.
    #[serde(serialize_with = "serialize_time")]
    pub failed_at: TimestampTz,
    /// The error's stable code.
    pub error_code: String,
    /// The error message.
    pub error: String,
    /// The row, as JSON: `{"op": ..., "values": {column: value, ...}}` (see
    /// `dead_letter::row_to_json`).
    pub row: String,
}

fn serialize_time<S: serde::Serializer>(
    time: &TimestampTz,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(time)
}

/// How an error should be handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Worth retrying the same batch after a pause (connection lost, busy, deadlock,
    /// serialization failure, pool timeout).
    Transient,
    /// Caused by one or more rows' data (constraint violation, bad value): retrying the same
    /// rows fails again, so the batch is bisected and the bad rows are dead-lettered.
    Row,
    /// Neither: the sink stops and reports it (table dropped, disk corrupt, a broken
    /// contract).
    Fatal,
}

/// A backend failure, classified.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// See [`ErrorClass::Transient`].
    #[error("transient database error [{code}]: {message}")]
    Transient {
        /// A stable code (`sqlite.busy`, `postgres.40001`, ...).
        code: &'static str,
        /// The database's message.
        message: String,
    },
    /// See [`ErrorClass::Row`].
    #[error("row refused by the database [{code}]: {message}")]
    Row {
        /// A stable code (`sqlite.constraint`, `postgres.23505`, ...).
        code: &'static str,
        /// The database's message.
        message: String,
    },
    /// See [`ErrorClass::Fatal`].
    #[error("database error [{code}]: {message}")]
    Fatal {
        /// A stable code.
        code: &'static str,
        /// The database's message.
        message: String,
    },
    /// The target table does not fit the schema; nothing was changed.
    #[error("table {table} does not fit the sink's schema: {}", problems.join("; "))]
    SchemaMismatch {
        /// The table.
        table: String,
        /// Each problem, one sentence each.
        problems: Vec<String>,
    },
}

impl BackendError {
    /// The error's class.
    pub fn class(&self) -> ErrorClass {
        match self {
            BackendError::Transient { .. } => ErrorClass::Transient,
            BackendError::Row { .. } => ErrorClass::Row,
            BackendError::Fatal { .. } | BackendError::SchemaMismatch { .. } => ErrorClass::Fatal,
        }
    }

    /// A stable code.
    pub fn code(&self) -> &'static str {
        match self {
            BackendError::Transient { code, .. }
            | BackendError::Row { code, .. }
            | BackendError::Fatal { code, .. } => code,
            BackendError::SchemaMismatch { .. } => "sink.schema_mismatch",
        }
    }
}
