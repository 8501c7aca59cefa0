//! The write path: the [`Sink`] handle, its lanes and the flush of one batch.
//!
//! ```text
//! writers ──write(rows)──► byte semaphore ──► lane 0: batcher ─► sealed ─► flush (one at a time)
//!    (measure, check,        (buffer_bytes_max;   lane 1: ...
//!     route by key hash)      block or error)     lane N-1 (N = flush_concurrency)
//! ```
//!
//! Invariants:
//! - **No global lock.** A write measures and checks its rows on the caller's task, reserves
//!   their bytes from a semaphore and sends them to lanes over unbounded channels (bounded in
//!   bytes by the semaphore). Nothing is shared but atomics, the semaphore and the channels.
//! - **Per-key order.** Every row of a key goes to the same lane (hash of the key), and a lane
//!   flushes its batches one after another, so changes to a key are applied in the order they
//!   were written. Append-only writes spread over lanes per write call.
//! - **Bytes are released only when durable.** A batch's bytes return to the semaphore after
//!   its rows are written or dead-lettered (or the sink failed), so `buffer_bytes_max` bounds
//!   everything not yet durable, including batches being flushed.
//! - **Flush covers everything before it.** `flush` puts a marker behind the rows already sent
//!   to each lane and waits until each lane has finished every batch up to that marker.
//! - **Nothing is dropped silently.** Each received row ends written, dead-lettered, or counted
//!   as failed with the sink stopped and the error returned by `flush`/`close`.

use crate::backend::BackendError;
use crate::backend::{
    Batch, BatchOutcome, CheckpointSpec, CheckpointWriter, DeadLetter, ErrorClass, PrepareReport,
    PrepareRequest, SinkBackend, TableWriter,
};
use crate::batcher::{BatchLimits, Batcher, Sealed};
use crate::checkpoint::{CheckpointControl, Phase};
use crate::concurrency::FlushSlots;
use crate::config::{Backpressure, DeadLetterConfig, Delivery, Mode, SinkConfig};
use crate::dead_letter::{DeadLetterFile, dead_letter, rejected_letter};
use crate::error::SinkError;
use crate::metrics::{BatchReport, SinkMetrics};
use crate::reduce::reduce;
use crate::retry::Backoff;
use crate::route::{self, Router};
use crate::schema::{Op, Row, RowError, Schema};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::{Notify, Semaphore, TryAcquireError, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Counters of a sink since it was opened. At rest (after `flush`),
/// `rows_received = rows_written + rows_dead_lettered + rows_failed`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Rows accepted by `write`.
    pub rows_received: u64,
    /// Rows durably applied (including rows superseded within their batch).
    pub rows_written: u64,
    /// Rows durably dead-lettered.
    pub rows_dead_lettered: u64,
    /// Rows superseded within their batch by a later row of the same key.
    pub rows_coalesced: u64,
    /// Rows lost to a sink failure (to be replayed by the caller).
    pub rows_failed: u64,
    /// Rows dropped as a replay of checkpoints the database already holds (exactly-once,
    /// `Resume::Restored`).
    pub rows_skipped: u64,
    /// Checkpoints pre-committed.
    pub checkpoints: u64,
    /// Batches flushed.
    pub batches: u64,
    /// Retries of transient errors.
    pub retries: u64,
    /// Bytes accepted and not yet durable.
    pub buffer_bytes: u64,
    /// Lanes allowed to write at the same time now: `flush_concurrency`, or with adaptive
    /// flush concurrency what the load needs.
    pub flush_concurrency: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    rows_received: AtomicU64,
    rows_written: AtomicU64,
    rows_dead_lettered: AtomicU64,
    rows_coalesced: AtomicU64,
    rows_failed: AtomicU64,
    pub(crate) rows_skipped: AtomicU64,
    pub(crate) checkpoints: AtomicU64,
    batches: AtomicU64,
    retries: AtomicU64,
    buffer_bytes: AtomicU64,
}

/// A row on its way to a lane, with its measured size and, when it failed the checks, why;
/// or a source record that never became a row, on its way to the dead letters.
#[derive(Debug)]
pub(crate) enum Entry {
    Row {
        row: Row,
        rejection: Option<RowError>,
    },
    Rejected(Rejected),
}

/// A source record that could not be parsed or converted into a [`Row`]: handed to
/// [`Sink::reject`], it becomes a dead letter like a row that failed the schema check, in the
/// same lanes, batches and (with exactly-once delivery) checkpoint transactions as the rows.
/// Its dead letter's `row` is `{"record": <record>, "position": <position>}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// The record as read (raw text; invalid UTF-8 replaced).
    pub record: String,
    /// Where the record is in its source (for example `path:byte offset`).
    pub position: String,
    /// A stable code for why it was rejected (for example `ingest.json.parse`).
    pub code: String,
    /// Why it was rejected, for a person.
    pub reason: String,
}

impl Rejected {
    /// What holding it costs in the buffer, in bytes.
    fn size_bytes(&self) -> usize {
        std::mem::size_of::<Rejected>()
            + [&self.record, &self.position, &self.code, &self.reason]
                .into_iter()
                .map(|text| crate::allocated_bytes(text.capacity()))
                .sum::<usize>()
    }
}

pub(crate) enum LaneMessage {
    Rows(Vec<(Entry, usize)>),
    Flush(oneshot::Sender<()>),
    /// Answer once every row before it is durable, without sealing the open batch early.
    Observe(oneshot::Sender<()>),
    /// A checkpoint barrier: answer once every batch before it is written, then write nothing
    /// more until the gate reaches the checkpoint (it was pre-committed, or the sink failed).
    Barrier(u64, oneshot::Sender<()>),
    Close,
}

/// A lane's queue: sealed batches and the barriers between them.
enum Work {
    Batch(Sealed<Entry>),
    Barrier(u64, oneshot::Sender<()>),
}

enum DeadLetterTarget {
    Table,
    File(DeadLetterFile),
}

/// State shared by the handle and the lanes.
pub(crate) struct Shared {
    pub(crate) schema: Arc<Schema>,
    pub(crate) config: SinkConfig,
    writer: Arc<dyn TableWriter>,
    /// Exactly-once delivery: batches go into checkpoint transactions instead.
    /// Taken (dropped) by `close` and `abort`, as a dead process's would be, which releases
    /// what the backend holds for it.
    checkpoints: Mutex<Option<Arc<dyn CheckpointWriter>>>,
    exactly_once: bool,
    /// The last pre-committed checkpoint; lanes past a barrier wait for it. `u64::MAX` once
    /// the sink failed.
    pub(crate) gate: watch::Sender<u64>,
    dead_letters: DeadLetterTarget,
    buffer: Semaphore,
    /// Adaptive flush concurrency (at-least-once, `flush_concurrency_adaptive`): a batch
    /// waits for a slot before it is written.
    slots: Option<FlushSlots>,
    pub(crate) counters: Counters,
    pub(crate) metrics: SinkMetrics,
    failure: OnceLock<Arc<SinkError>>,
    backoff: Backoff,
}

pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
    pub(crate) lanes: Vec<mpsc::UnboundedSender<LaneMessage>>,
    pub(crate) control: CheckpointControl,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
    writers_active: AtomicUsize,
    writers_idle: Notify,
    /// Routes entries to lanes (see [`crate::route`]); held while a write call is sent and
    /// while a barrier is placed.
    pub(crate) router: Mutex<Router>,
    report: PrepareReport,
}

/// A running sink into one table. Cheap to clone; every clone writes into the same buffer.
///
/// Lifecycle: [`Sink::open`] checks the table and starts the lanes; writers call
/// [`Sink::write`]; [`Sink::flush`] returns once everything written before it is durable;
/// [`Sink::close`] flushes and stops. Dropping every handle without `close` lets the lanes
/// finish in the background, but nobody learns whether that worked.
#[derive(Clone)]
pub struct Sink {
    pub(crate) inner: Arc<Inner>,
}

impl Sink {
    /// Prepares the target table through `backend` (refusing a schema that does not fit) and
    /// starts `flush_concurrency` lanes on the current tokio runtime.
    pub async fn open<B: SinkBackend + ?Sized>(
        backend: &B,
        schema: Schema,
        config: SinkConfig,
    ) -> Result<Sink, SinkError> {
        let mode = config.mode();
        if mode.is_keyed() && schema.key().is_empty() {
            return Err(SinkError::KeyRequired {
                mode: mode.name(),
                table: schema.table().to_string(),
            });
        }
        let schema = Arc::new(schema);
        let (dead_letter_table, dead_letters) = match config.dead_letter() {
            DeadLetterConfig::Table { table } => {
                let table = match table {
                    Some(table) => table.clone(),
                    None => schema.table().with_suffix("_dead_letters")?,
                };
                (Some(table), DeadLetterTarget::Table)
            }
            DeadLetterConfig::File { path } => {
                let file =
                    DeadLetterFile::open(path).map_err(|error| SinkError::DeadLetterFile {
                        path: path.display().to_string(),
                        message: error.to_string(),
                    })?;
                (None, DeadLetterTarget::File(file))
            }
        };
        let checkpoints = match (config.delivery().is_exactly_once(), config.sink_id()) {
            (true, Some(sink_id)) => Some(CheckpointSpec {
                delivery: config.delivery(),
                sink_id: sink_id.clone(),
                writer_id: config.writer_id(),
                progress_table: config.progress_table().clone(),
            }),
            // The configuration refuses exactly-once delivery without a sink id.
            _ => None,
        };
        let request = PrepareRequest {
            schema: schema.clone(),
            mode,
            create_table: config.create_table(),
            evolve: config.evolve(),
            dead_letter_table,
            flush_concurrency: config.flush_concurrency(),
            checkpoints,
        };
        let prepared = backend.prepare(&request).await?;
        if prepared.checkpoints.is_some() != request.checkpoints.is_some() {
            return Err(SinkError::Contract(format!(
                "backend {} answered a request for {} delivery {} a checkpoint writer",
                backend.name(),
                config.delivery().name(),
                if prepared.checkpoints.is_some() {
                    "with"
                } else {
                    "without"
                }
            )));
        }
        tracing::info!(
            table = %schema.table(),
            backend = backend.name(),
            created = prepared.report.created_table,
            added_columns = prepared.report.added_columns.len(),
            "Sink opened."
        );
        let exactly_once = prepared.checkpoints.is_some();
        let slots = (!exactly_once
            && config.flush_concurrency_adaptive()
            && config.flush_concurrency() > 1)
            .then(|| FlushSlots::new(config.flush_concurrency(), config.flush_interval()));
        let metrics = SinkMetrics::register(schema.table().as_str(), backend.name());
        metrics.flush_concurrency(config.flush_concurrency());
        let shared = Arc::new(Shared {
            metrics,
            slots,
            schema,
            writer: prepared.writer,
            exactly_once,
            checkpoints: Mutex::new(prepared.checkpoints),
            gate: watch::Sender::new(0),
            dead_letters,
            buffer: Semaphore::new(config.buffer_bytes_max()),
            counters: Counters::default(),
            failure: OnceLock::new(),
            backoff: Backoff {
                initial: config.retry_backoff_initial(),
                max: config.retry_backoff_max(),
            },
            config,
        });
        let mut lanes = Vec::with_capacity(shared.config.flush_concurrency());
        let mut tasks = Vec::with_capacity(shared.config.flush_concurrency());
        for lane in 0..shared.config.flush_concurrency() {
            let (sender, receiver) = mpsc::unbounded_channel();
            lanes.push(sender);
            tasks.push(tokio::spawn(run_lane(shared.clone(), lane, receiver)));
        }
        let control = CheckpointControl::new(shared.config.delivery());
        let router = Router::new(
            lanes.len(),
            crate::route::stripe_rows(shared.config.batch_rows_max()),
            shared.config.mode().is_keyed(),
            shared.config.delivery() != Delivery::TransactionalMarker,
        );
        Ok(Sink {
            inner: Arc::new(Inner {
                shared,
                lanes,
                control,
                tasks: Mutex::new(tasks),
                closed: AtomicBool::new(false),
                writers_active: AtomicUsize::new(0),
                writers_idle: Notify::new(),
                router: Mutex::new(router),
                report: prepared.report,
            }),
        })
    }

    /// Hands rows to the sink. Returns once they are buffered (not yet durable: see
    /// [`Sink::flush`]). Rows that do not fit the schema or the mode are not an error here:
    /// they go to the dead letters with the next batch.
    ///
    /// Errors: [`SinkError::BufferFull`] (policy `error`), [`SinkError::WriteTooLarge`],
    /// [`SinkError::Closed`], [`SinkError::Failed`]. On error no row of the call was accepted.
    pub async fn write(&self, rows: Vec<Row>) -> Result<(), SinkError> {
        if rows.is_empty() {
            return Ok(());
        }
        let inner = &*self.inner;
        let shared = &*inner.shared;
        let _active = WriterGuard::enter(inner)?;
        if !shared.admits(inner, rows.len())? {
            return Ok(());
        }
        let sizes: Vec<usize> = rows.iter().map(Row::size_bytes).collect();
        let mode = shared.config.mode();
        let entries = rows
            .into_iter()
            .zip(sizes)
            .map(|(row, size)| (admit(&shared.schema, mode, row), size))
            .collect();
        self.send(entries).await
    }

    /// Hands source records that never became rows to the dead letters, through the same
    /// lanes as rows: they are counted in `rows_received` and, once durable, in
    /// `rows_dead_lettered`; with exactly-once delivery they commit with the checkpoint that
    /// follows. Returns once they are buffered. Errors as [`Sink::write`].
    pub async fn reject(&self, records: Vec<Rejected>) -> Result<(), SinkError> {
        if records.is_empty() {
            return Ok(());
        }
        let inner = &*self.inner;
        let shared = &*inner.shared;
        let _active = WriterGuard::enter(inner)?;
        if !shared.admits(inner, records.len())? {
            return Ok(());
        }
        let entries = records
            .into_iter()
            .map(|record| {
                let size = record.size_bytes();
                (Entry::Rejected(record), size)
            })
            .collect();
        self.send(entries).await
    }

    /// Reserves the entries' bytes and sends them to the lanes (the caller holds a
    /// `WriterGuard` and checked the phase).
    async fn send(&self, entries: Vec<(Entry, usize)>) -> Result<(), SinkError> {
        let inner = &*self.inner;
        let shared = &*inner.shared;
        let bytes: usize = entries.iter().map(|(_, size)| size).sum();
        let buffer_bytes_max = shared.config.buffer_bytes_max();
        if bytes > buffer_bytes_max {
            return Err(SinkError::WriteTooLarge {
                bytes,
                buffer_bytes_max,
            });
        }
        // buffer_bytes_max <= u32::MAX is checked by the configuration.
        let permits = u32::try_from(bytes).expect("a write fits the buffer");
        let reserved = match shared.config.backpressure() {
            Backpressure::Block => match shared.buffer.try_acquire_many(permits) {
                Ok(reserved) => reserved,
                Err(TryAcquireError::Closed) => return Err(SinkError::Closed),
                Err(TryAcquireError::NoPermits) => {
                    let waiting = Instant::now();
                    let reserved = shared
                        .buffer
                        .acquire_many(permits)
                        .await
                        .map_err(|_| SinkError::Closed)?;
                    // The sink is behind its writers.
                    if let Some(slots) = &shared.slots {
                        slots.note_backpressure(waiting.elapsed());
                    }
                    reserved
                }
            },
            Backpressure::Error => {
                shared
                    .buffer
                    .try_acquire_many(permits)
                    .map_err(|error| match error {
                        TryAcquireError::Closed => SinkError::Closed,
                        TryAcquireError::NoPermits => SinkError::BufferFull {
                            bytes,
                            buffered_bytes: shared.counters.buffer_bytes.load(Ordering::Relaxed)
                                as usize,
                            buffer_bytes_max,
                        },
                    })?
            }
        };
        // The lanes give the bytes back with `add_permits` once their batch is durable.
        reserved.forget();
        let buffered = shared
            .counters
            .buffer_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed)
            + bytes as u64;
        let row_count = entries.len() as u64;

        let lane_count = inner.lanes.len();
        let mut per_lane: Vec<Vec<(Entry, usize)>> = (0..lane_count).map(|_| Vec::new()).collect();
        // Key hashes before the lock, so writers hash in parallel (none in unkeyed modes).
        let keyed = shared.config.mode().is_keyed();
        let hashes: Vec<Option<u64>> = if keyed {
            entries
                .iter()
                .map(|(entry, _)| route::hash_of(keyed, &shared.schema, entry))
                .collect()
        } else {
            Vec::new()
        };
        let mut hashes = hashes.into_iter();
        // Routed and sent under the router's lock: a barrier comes before or after the whole
        // call, and the checkpoint's counts are exact.
        let mut router = inner
            .router
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        router.begin_call();
        let (mut held, mut held_bytes) = (0_u64, 0_usize);
        for (entry, size) in entries {
            match router.route_hashed(&entry, hashes.next().flatten()) {
                Some(lane) => per_lane[lane].push((entry, size)),
                None => {
                    held += 1;
                    held_bytes += size;
                }
            }
        }
        shared
            .counters
            .rows_received
            .fetch_add(row_count, Ordering::Relaxed);
        shared.metrics.accepted(row_count, bytes as u64, buffered);
        if held > 0 {
            // Replaying a checkpoint that these entries' lanes committed already.
            shared.count_skipped(held);
            shared.release(held_bytes);
        }
        for (lane, entries) in per_lane.into_iter().enumerate() {
            if entries.is_empty() {
                continue;
            }
            if let Err(mpsc::error::SendError(LaneMessage::Rows(entries))) =
                inner.lanes[lane].send(LaneMessage::Rows(entries))
            {
                // Only a lane that panicked drops its receiver while writers are active.
                let lost: usize = entries.iter().map(|(_, size)| size).sum();
                shared
                    .counters
                    .rows_failed
                    .fetch_add(entries.len() as u64, Ordering::Relaxed);
                shared.release(lost);
                let error = SinkError::Contract(format!("flush lane {lane} stopped unexpectedly"));
                shared.fail(error.clone());
                return Err(error);
            }
        }
        Ok(())
    }

    /// Returns once every row written before this call is durable (written or dead-lettered),
    /// or with [`SinkError::Failed`] if any batch failed. With exactly-once delivery the rows
    /// are in the checkpoint's open transaction, durable at the next `pre_commit`.
    pub async fn flush(&self) -> Result<(), SinkError> {
        self.wait_for_lanes(LaneMessage::Flush).await
    }

    /// Returns once every row written before this call is durable (written or dead-lettered),
    /// or with [`SinkError::Failed`] if any batch failed, like [`Sink::flush`], but without
    /// hurrying anything: a batch still filling leaves when it is full or its flush interval
    /// ends, as it would without the call. For observing durability (acknowledging a source,
    /// measuring latency) without changing the batches. With exactly-once delivery the rows
    /// are in the checkpoint's open transaction, durable at the next `pre_commit`.
    pub async fn wait_durable(&self) -> Result<(), SinkError> {
        self.wait_for_lanes(LaneMessage::Observe).await
    }

    /// Sends every lane the marker `message` makes and waits for all answers, then reports a
    /// failure of the sink.
    async fn wait_for_lanes(
        &self,
        message: fn(oneshot::Sender<()>) -> LaneMessage,
    ) -> Result<(), SinkError> {
        let inner = &*self.inner;
        if inner.closed.load(Ordering::SeqCst) {
            return Err(SinkError::Closed);
        }
        let mut replies = Vec::with_capacity(inner.lanes.len());
        for lane in &inner.lanes {
            let (reply, answer) = oneshot::channel();
            lane.send(message(reply)).map_err(|_| SinkError::Closed)?;
            replies.push(answer);
        }
        for answer in replies {
            answer.await.map_err(|_| SinkError::Closed)?;
        }
        inner.shared.check_failed()
    }

    /// Stops accepting rows, flushes everything buffered and stops the lanes. Returns the
    /// failure, if the sink failed. With exactly-once delivery, rows after the last
    /// `pre_commit` are rolled back (a final `pre_commit` and `commit` come before `close`). Writers blocked on a full buffer get [`SinkError::Closed`].
    pub async fn close(&self) -> Result<(), SinkError> {
        let inner = &*self.inner;
        if !inner.closed.swap(true, Ordering::SeqCst) {
            inner.shared.buffer.close();
            // Writers that passed the closed check finish sending first, so no row is sent
            // after a lane's Close marker.
            loop {
                let idle = inner.writers_idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if inner.writers_active.load(Ordering::SeqCst) == 0 {
                    break;
                }
                idle.await;
            }
            for lane in &inner.lanes {
                // A lane that already stopped has nothing left to flush.
                let _ = lane.send(LaneMessage::Close);
            }
        }
        let tasks = std::mem::take(
            &mut *inner
                .tasks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for task in tasks {
            if let Err(error) = task.await {
                inner.shared.fail(SinkError::Contract(format!(
                    "a flush lane panicked: {error}"
                )));
            }
        }
        if let Some(checkpoints) = inner.shared.take_checkpoint_writer() {
            // Rows after the last checkpoint are not committed: the caller replays them.
            let next = inner.control.next_id().await;
            checkpoints.abort(next).await.map_err(SinkError::Backend)?;
        }
        inner.shared.check_failed()
    }

    /// The counters.
    pub fn stats(&self) -> SinkStats {
        let counters = &self.inner.shared.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        SinkStats {
            rows_received: load(&counters.rows_received),
            rows_written: load(&counters.rows_written),
            rows_dead_lettered: load(&counters.rows_dead_lettered),
            rows_coalesced: load(&counters.rows_coalesced),
            rows_failed: load(&counters.rows_failed),
            rows_skipped: load(&counters.rows_skipped),
            checkpoints: load(&counters.checkpoints),
            batches: load(&counters.batches),
            retries: load(&counters.retries),
            buffer_bytes: load(&counters.buffer_bytes),
            flush_concurrency: self.inner.shared.slots.as_ref().map_or(
                self.inner.shared.config.flush_concurrency(),
                FlushSlots::limit,
            ) as u64,
        }
    }

    /// The schema.
    pub fn schema(&self) -> &Schema {
        &self.inner.shared.schema
    }

    /// The configuration.
    pub fn config(&self) -> &SinkConfig {
        &self.inner.shared.config
    }

    /// What opening changed in the database.
    pub fn prepare_report(&self) -> &PrepareReport {
        &self.inner.report
    }
}

/// Counts a writer between its closed check and its last send, so `close` can wait for it.
struct WriterGuard<'a>(&'a Inner);

impl<'a> WriterGuard<'a> {
    fn enter(inner: &'a Inner) -> Result<WriterGuard<'a>, SinkError> {
        // Paired with `close`: it sets `closed` then reads the count; we add to the count then
        // read `closed` (both SeqCst), so either we see closed or close sees us.
        inner.writers_active.fetch_add(1, Ordering::SeqCst);
        let guard = WriterGuard(inner);
        if inner.closed.load(Ordering::SeqCst) {
            return Err(SinkError::Closed);
        }
        Ok(guard)
    }
}

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        if self.0.writers_active.fetch_sub(1, Ordering::SeqCst) == 1
            && self.0.closed.load(Ordering::SeqCst)
        {
            self.0.writers_idle.notify_waiters();
        }
    }
}

/// Checks a row against the mode and the schema; keyed modes write inserts as upserts.
fn admit(schema: &Schema, mode: Mode, mut row: Row) -> Entry {
    let allowed = match (mode, row.op) {
        (Mode::Insert, Op::Insert) | (Mode::Delete, Op::Delete) => true,
        (Mode::Upsert | Mode::Changelog, Op::Insert | Op::Upsert) => {
            row.op = Op::Upsert;
            true
        }
        (Mode::Changelog, Op::Delete) => true,
        _ => false,
    };
    let rejection = if allowed {
        schema.check_row(&row).err()
    } else {
        Some(RowError::OpNotAllowed {
            op: row.op.name(),
            mode: mode.name(),
        })
    };
    Entry::Row { row, rejection }
}

impl Shared {
    /// The checkpoint writer: `None` with at-least-once delivery, `Closed` once it was taken.
    pub(crate) fn checkpoint_writer(&self) -> Result<Option<Arc<dyn CheckpointWriter>>, SinkError> {
        if !self.exactly_once {
            return Ok(None);
        }
        self.checkpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .map(Some)
            .ok_or(SinkError::Closed)
    }

    /// Takes the checkpoint writer out, so it is dropped when its last call ends.
    pub(crate) fn take_checkpoint_writer(&self) -> Option<Arc<dyn CheckpointWriter>> {
        self.checkpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Whether `count` rows (or rejected records) of a write call go on to the lanes: not when
    /// they replay checkpoints the database holds (counted as skipped), an error when the sink
    /// failed or an exactly-once sink was not recovered yet.
    fn admits(&self, inner: &Inner, count: usize) -> Result<bool, SinkError> {
        self.check_failed()?;
        match inner.control.phase() {
            Phase::Running => Ok(true),
            Phase::Skipping => {
                // A replay of rows the database already holds (see `Sink::recover`).
                let count = count as u64;
                self.counters
                    .rows_received
                    .fetch_add(count, Ordering::Relaxed);
                self.count_skipped(count);
                Ok(false)
            }
            Phase::NeedsRecovery => Err(SinkError::Recovery(
                "an exactly-once sink must be recovered (Sink::recover) before rows are written"
                    .into(),
            )),
        }
    }

    /// Rows dropped because the database holds them already (a replay).
    fn count_skipped(&self, count: u64) {
        self.counters
            .rows_skipped
            .fetch_add(count, Ordering::Relaxed);
        self.metrics.skipped(count);
    }

    pub(crate) fn check_failed(&self) -> Result<(), SinkError> {
        match self.failure.get() {
            Some(error) => Err(SinkError::Failed(error.clone())),
            None => Ok(()),
        }
    }

    pub(crate) fn fail(&self, error: SinkError) {
        tracing::error!(table = %self.schema.table(), code = error.code(), %error, "Sink failed.");
        // The first failure is the one reported; later ones are consequences.
        let _ = self.failure.set(Arc::new(error));
        // Lanes waiting behind a barrier go on, and find the failure.
        self.gate.send_replace(u64::MAX);
    }

    fn release(&self, bytes: usize) {
        self.buffer.add_permits(bytes);
        let buffered = self
            .counters
            .buffer_bytes
            .fetch_sub(bytes as u64, Ordering::Relaxed)
            - bytes as u64;
        self.metrics.released(bytes as u64, buffered);
    }

    fn limits(&self) -> BatchLimits {
        BatchLimits {
            rows_max: self.config.batch_rows_max(),
            bytes_max: self.config.batch_bytes_max(),
            interval: self.config.flush_interval(),
        }
    }
}

type Flushing = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One lane: batches its rows and flushes them one batch at a time, while the next batch fills.
/// A barrier is answered when every batch before it is written; the lane then writes nothing
/// until the checkpoint's gate opens.
async fn run_lane(
    shared: Arc<Shared>,
    lane: usize,
    mut receiver: mpsc::UnboundedReceiver<LaneMessage>,
) {
    let mut batcher: Batcher<Entry> = Batcher::new(shared.limits());
    let mut sealed: VecDeque<Sealed<Entry>> = VecDeque::new();
    let mut work: VecDeque<Work> = VecDeque::new();
    let mut in_flight: Option<Flushing> = None;
    // Work items (batches and barriers) finished.
    let mut done: u64 = 0;
    // Each waiter waits until `done` reaches its target.
    let mut waiters: Vec<(u64, oneshot::Sender<()>)> = Vec::new();
    let mut receiving = true;
    // The in-flight item is a barrier waiting for its checkpoint's gate.
    let mut at_barrier = false;
    loop {
        work.extend(sealed.drain(..).map(Work::Batch));
        if in_flight.is_none()
            && let Some(next) = work.pop_front()
        {
            in_flight = Some(match next {
                Work::Batch(batch) => Box::pin(flush_sealed(shared.clone(), lane, batch)),
                Work::Barrier(checkpoint, reply) => {
                    at_barrier = true;
                    let mut gate = shared.gate.subscribe();
                    Box::pin(async move {
                        // The caller may have given up waiting; the barrier stands either way.
                        let _ = reply.send(());
                        // Only a dropped sender ends this early, and then nothing is written.
                        let _ = gate.wait_for(|passed| *passed >= checkpoint).await;
                    })
                }
            });
        }
        if waiters.iter().any(|(target, _)| *target <= done) {
            let (ready, waiting): (Vec<_>, Vec<_>) =
                waiters.into_iter().partition(|(target, _)| *target <= done);
            waiters = waiting;
            for (_, reply) in ready {
                // The flusher may have given up waiting; nothing to tell it then.
                let _ = reply.send(());
            }
        }
        if !receiving && in_flight.is_none() && work.is_empty() && batcher.is_empty() {
            break;
        }
        // Evaluated even when the branch is disabled, so it needs a value.
        let deadline = batcher
            .deadline()
            .unwrap_or_else(|| Instant::now() + shared.config.flush_interval());
        let timed = !batcher.is_empty();
        tokio::select! {
            () = async { in_flight.as_mut().expect("guarded by the precondition").await }, if in_flight.is_some() => {
                in_flight = None;
                at_barrier = false;
                done += 1;
            }
            message = receiver.recv(), if receiving => match message {
                Some(LaneMessage::Rows(entries)) => {
                    let now = Instant::now();
                    for (entry, bytes) in entries {
                        batcher.push(entry, bytes, now, &mut sealed);
                    }
                }
                Some(LaneMessage::Flush(reply)) => {
                    sealed.extend(batcher.seal());
                    let target = done + u64::from(in_flight.is_some()) + (work.len() + sealed.len()) as u64;
                    waiters.push((target, reply));
                }
                Some(LaneMessage::Observe(reply)) => {
                    // The open batch, if any, is the next item sealed after the queued ones.
                    let target = done
                        + u64::from(in_flight.is_some())
                        + (work.len() + sealed.len()) as u64
                        + u64::from(!batcher.is_empty());
                    waiters.push((target, reply));
                }
                Some(LaneMessage::Barrier(checkpoint, reply)) => {
                    sealed.extend(batcher.seal());
                    work.extend(sealed.drain(..).map(Work::Batch));
                    work.push_back(Work::Barrier(checkpoint, reply));
                }
                // Closing the receiver refuses later sends; what is queued is still received.
                Some(LaneMessage::Close) => receiver.close(),
                None if at_barrier => {
                    // Every handle is gone, so no `pre_commit` can open the gate: the rows
                    // after the barrier could never become durable. Stop, and let the
                    // backend's checkpoint writer (dropped with the shared state) roll back.
                    tracing::debug!(lane, "Sink dropped at a barrier; abandoning the rows after it.");
                    break;
                }
                None => {
                    receiving = false;
                    sealed.extend(batcher.seal());
                }
            },
            () = tokio::time::sleep_until(deadline), if timed => {
                sealed.extend(batcher.seal_if_due(Instant::now()));
            }
        }
    }
    for (_, reply) in waiters {
        let _ = reply.send(());
    }
}

/// Flushes one sealed batch and accounts for every row of it.
async fn flush_sealed(shared: Arc<Shared>, lane: usize, batch: Sealed<Entry>) {
    let _slot = match &shared.slots {
        Some(slots) => {
            let slot = slots.acquire().await;
            shared.metrics.flush_concurrency(slots.limit());
            Some(slot)
        }
        None => None,
    };
    let started = std::time::Instant::now();
    let mut report = BatchReport {
        rows: batch.items.len() as u64,
        ..BatchReport::default()
    };
    if shared.failure.get().is_none()
        && let Err(error) = write_entries(&shared, lane, batch.items, &mut report).await
    {
        shared.fail(error);
    }
    report.failed = report.rows - report.written - report.dead_lettered;
    let counters = &shared.counters;
    counters
        .rows_written
        .fetch_add(report.written, Ordering::Relaxed);
    counters
        .rows_dead_lettered
        .fetch_add(report.dead_lettered, Ordering::Relaxed);
    counters
        .rows_coalesced
        .fetch_add(report.coalesced, Ordering::Relaxed);
    counters
        .rows_failed
        .fetch_add(report.failed, Ordering::Relaxed);
    counters
        .retries
        .fetch_add(report.retries, Ordering::Relaxed);
    counters.batches.fetch_add(1, Ordering::Relaxed);
    shared.metrics.batch(&report, started.elapsed());
    shared.release(batch.bytes);
}

/// Writes a batch: reduce by key, write with retries, bisect around bad rows, fall back to a
/// refused row's earlier change, then record the dead letters.
async fn write_entries(
    shared: &Shared,
    lane: usize,
    entries: Vec<Entry>,
    report: &mut BatchReport,
) -> Result<(), SinkError> {
    let schema = &shared.schema;
    let mode = shared.config.mode();
    let mut letters: Vec<DeadLetter> = Vec::new();
    let mut rows = Vec::with_capacity(entries.len());
    for entry in entries {
        match entry {
            Entry::Row {
                row,
                rejection: Some(error),
            } => letters.push(dead_letter(schema, &row, error.code(), &error.to_string())),
            Entry::Row {
                row,
                rejection: None,
            } => rows.push(row),
            Entry::Rejected(record) => letters.push(rejected_letter(schema, &record)),
        }
    }
    let (mut pending, mut earlier) = if mode.is_keyed() {
        let reduced = reduce(schema, rows);
        (reduced.rows, reduced.earlier)
    } else {
        let count = rows.len();
        (rows, vec![Vec::new(); count])
    };
    while !pending.is_empty() {
        let rows: Arc<[Row]> = pending.into();
        let batch = Batch::new(schema.clone(), mode, rows.clone());
        let rejected = write_isolating(shared, lane, &batch, &earlier, report).await?;
        let mut next_rows = Vec::new();
        let mut next_earlier = Vec::new();
        for (index, chain) in earlier.into_iter().enumerate() {
            let Some(error) = rejected.get(&index) else {
                continue;
            };
            letters.push(dead_letter(
                schema,
                &rows[index],
                error.code(),
                &error.to_string(),
            ));
            // Its key's previous change, if any, is what sequential application would leave.
            let mut chain = chain.into_iter();
            if let Some(previous) = chain.next() {
                next_rows.push(previous);
                next_earlier.push(chain.collect());
            }
        }
        pending = next_rows;
        earlier = next_earlier;
    }
    if !letters.is_empty() {
        write_dead_letters(shared, lane, &letters, report).await?;
        report.dead_lettered = letters.len() as u64;
    }
    Ok(())
}

/// Writes `batch`, splitting it in halves around row errors until each bad row stands alone.
/// Counts written rows (with the rows each one superseded) as parts succeed; returns the
/// refused rows by position.
async fn write_isolating(
    shared: &Shared,
    lane: usize,
    batch: &Batch,
    earlier: &[Vec<Row>],
    report: &mut BatchReport,
) -> Result<BTreeMap<usize, BackendError>, SinkError> {
    let mut rejected = BTreeMap::new();
    // Left halves first, so an append-only batch keeps its order.
    let mut stack: Vec<std::ops::Range<usize>> = Vec::with_capacity(16);
    stack.push(0..batch.len());
    while let Some(range) = stack.pop() {
        // After a failure (or `abort`) no lane starts another write.
        shared.check_failed()?;
        let part = batch.slice(range.clone());
        match write_with_retry(shared, lane, &part, report).await? {
            Ok(outcome) => {
                check_outcome(&outcome, part.len())?;
                let mut refused_here = vec![false; part.len()];
                for (position, error) in outcome.rejected {
                    refused_here[position] = true;
                    rejected.insert(range.start + position, error);
                }
                for (offset, refused) in refused_here.into_iter().enumerate() {
                    if !refused {
                        let superseded = earlier[range.start + offset].len() as u64;
                        report.written += 1 + superseded;
                        report.coalesced += superseded;
                    }
                }
            }
            Err(error) if range.len() == 1 => {
                rejected.insert(range.start, error);
            }
            Err(error) => {
                tracing::debug!(
                    rows = range.len(),
                    code = error.code(),
                    "Bisecting a batch around a refused row."
                );
                let middle = range.start + range.len() / 2;
                stack.push(middle..range.end);
                stack.push(range.start..middle);
            }
        }
    }
    Ok(rejected)
}

fn check_outcome(outcome: &BatchOutcome, rows: usize) -> Result<(), SinkError> {
    let mut seen = vec![false; rows];
    for (position, _) in &outcome.rejected {
        if *position >= rows || std::mem::replace(&mut seen[*position], true) {
            return Err(SinkError::Contract(format!(
                "rejected row position {position} is out of range or repeated in a batch of {rows}"
            )));
        }
    }
    if outcome.applied + outcome.rejected.len() != rows {
        return Err(SinkError::Contract(format!(
            "a batch of {rows} rows reported {} applied and {} rejected",
            outcome.applied,
            outcome.rejected.len()
        )));
    }
    Ok(())
}

/// One write with retries of transient errors. The inner error is a row error (for bisection);
/// the outer one stops the sink. Exactly-once writes are not retried: the checkpoint's open
/// transaction may be gone with the error, and with it the batches before this one.
async fn write_with_retry(
    shared: &Shared,
    lane: usize,
    batch: &Batch,
    report: &mut BatchReport,
) -> Result<Result<BatchOutcome, BackendError>, SinkError> {
    if let Some(checkpoints) = shared.checkpoint_writer()? {
        return match checkpoints.write_batch(lane, batch).await {
            Ok(outcome) => Ok(Ok(outcome)),
            Err(error) if error.class() == ErrorClass::Row => Ok(Err(error)),
            Err(error) => Err(SinkError::CheckpointLost(error)),
        };
    }
    let mut retry = 0;
    loop {
        let error = match shared.writer.write_batch(batch).await {
            Ok(outcome) => return Ok(Ok(outcome)),
            Err(error) => error,
        };
        match error.class() {
            ErrorClass::Row => return Ok(Err(error)),
            ErrorClass::Fatal => return Err(SinkError::Backend(error)),
            ErrorClass::Transient => {
                retry = next_retry(shared, retry, error, report).await?;
            }
        }
    }
}

/// Records the dead letters with retries of transient errors.
async fn write_dead_letters(
    shared: &Shared,
    lane: usize,
    letters: &[DeadLetter],
    report: &mut BatchReport,
) -> Result<(), SinkError> {
    if let (Some(checkpoints), DeadLetterTarget::Table) =
        (shared.checkpoint_writer()?, &shared.dead_letters)
    {
        return checkpoints
            .write_dead_letters(lane, letters)
            .await
            .map_err(SinkError::CheckpointLost);
    }
    let mut retry = 0;
    loop {
        let result = match &shared.dead_letters {
            DeadLetterTarget::Table => shared.writer.write_dead_letters(letters).await,
            DeadLetterTarget::File(file) => file.append(letters).await,
        };
        let error = match result {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        match error.class() {
            // A dead letter that cannot be recorded cannot be dead-lettered in turn.
            ErrorClass::Row | ErrorClass::Fatal => return Err(SinkError::Backend(error)),
            ErrorClass::Transient => {
                retry = next_retry(shared, retry, error, report).await?;
            }
        }
    }
}

/// Waits before the next retry, or gives up when the budget is spent.
async fn next_retry(
    shared: &Shared,
    retry: u32,
    error: BackendError,
    report: &mut BatchReport,
) -> Result<u32, SinkError> {
    if retry >= shared.config.retry_attempts_max() {
        return Err(SinkError::RetriesExhausted {
            attempts: retry + 1,
            last: error,
        });
    }
    let retry = retry + 1;
    report.retries += 1;
    let delay = shared.backoff.delay(retry);
    tracing::warn!(
        table = %shared.schema.table(),
        code = error.code(),
        %error,
        retry,
        delay_ms = delay.as_millis() as u64,
        "Transient sink error; retrying."
    );
    tokio::time::sleep(delay).await;
    Ok(retry)
}
