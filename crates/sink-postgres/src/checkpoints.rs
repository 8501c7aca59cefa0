//! Exactly-once delivery: the [`CheckpointWriter`] of the PostgreSQL backend.
//!
//! - **`transactional_marker`:** each lane holds a pooled connection with a transaction of
//!   its own, opened at the lane's first write of the checkpoint, as at-least-once lanes write
//!   in parallel. `pre_commit(cut)` upserts every lane's progress row `(sink_id, writer_id,
//!   lane)` with the cut (its id and state, the lanes its entries were routed over, their
//!   counts, and the previous complete checkpoint) in that lane's transaction and commits all
//!   lanes at once; a lane that wrote nothing commits just its row. A process that dies
//!   between the lanes' commits leaves some lanes at the new checkpoint and the others
//!   before it: recovery reads every row ([`Recovered::from_lanes`]) and reports the
//!   checkpoint as partial, and the sink replays it into the lanes that lost it (its routing
//!   sends the same entries to the same lanes; see `sluice_sink`'s `Recovery::partial`).
//! - **`two_phase`:** each lane holds a pooled connection with a transaction of its own, opened
//!   at the lane's first write of the checkpoint. `pre_commit(c, state)` upserts each writing
//!   lane's progress row `(sink_id, writer_id, lane)` in its transaction and runs `PREPARE
//!   TRANSACTION 'sluice:<sink_id>:<writer_id>:<c>:<lane>'`; `commit(c)` runs `COMMIT PREPARED`
//!   for every pending gid up to `c`. While a lane's earlier checkpoint is still prepared, its
//!   row is locked, so the next checkpoint writes the row `lane + 64` (then `+ 128`, ...)
//!   instead of waiting for a commit that may only come after this `pre_commit` (see
//!   [`progress_row`]). A prepared transaction survives crashes of the writer and
//!   of the server; `recover(restored, resume)` commits this writer's up to the completed
//!   checkpoint (`restored`, or with `Resume::Committed` the highest one a lane committed when
//!   that is higher) and rolls back the later ones.
//!
//! Every `write_batch` runs in a savepoint of its lane's transaction: a row error (SQLSTATE
//! classes 22 and 23, a value the encoder refuses) rolls back to the savepoint and is returned
//! as a row error, so the engine can bisect inside the transaction. Any other error loses the
//! transaction: its connection is detached from the pool and closed (see [`crate::session`]),
//! and the engine fails the sink. A dropped writer closes its open transactions' connections the
//! same way, so the server rolls them back.
//!
//! Lane transactions never touch a temporary table, so keyed rows go through arrays
//! ([`Source::Arrays`]); see [`crate::statements`].

use crate::error::{classify, commit_outcome_unknown, shortened};
use crate::progress::{
    ProgressSql, WRITER_LOCK_CLASS, gid, gid_prefix, literal, parse_gid, writer_lock_key,
};
use crate::session::{Pooled, Session};
use crate::statements::{Encoded, Source, Statements, WritePlan, apply_rows};
use crate::table::DeadLetterColumns;
use async_trait::async_trait;
use deadpool_postgres::Object;
use metrics::Gauge;
use sluice_sink::{
    BackendError, Batch, BatchOutcome, CheckpointSpec, CheckpointWriter, Committed, Cut,
    DeadLetter, Delivery, ErrorClass, FLUSH_CONCURRENCY_LIMIT, Ident, LaneProgress, MetricName,
    Recovered, Resume,
};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use tokio::sync::Mutex;
use tokio_postgres::error::SqlState;

/// The savepoint around each batch.
const SAVEPOINT: &str = "sluice_batch";

/// This writer's prepared transactions: `(checkpoint, lane)` -> the `lane` value of the
/// progress row it holds (see [`progress_row`]).
type Pending = BTreeMap<(u64, u32), u32>;

/// The progress row `lane`'s transaction of a new checkpoint writes: `lane` itself, or `lane +
/// 64 k` for the first `k` whose row no pending prepared transaction holds. A prepared
/// transaction keeps the row it upserted locked until `COMMIT PREPARED`, so the next
/// checkpoint's upsert of the same row would wait for the commit, which the caller may send only
/// after this `pre_commit` returns.
fn progress_row(pending: &Pending, lane: u32) -> u32 {
    let stride = FLUSH_CONCURRENCY_LIMIT as u32;
    (0..)
        .map(|k| lane + stride * k)
        .find(|row| {
            !pending
                .iter()
                .any(|(&(_, pending_lane), held)| pending_lane == lane && held == row)
        })
        .expect("fewer pending transactions than rows")
}

/// What the writer shares with the at-least-once writer of the same table.
pub(crate) struct Shared {
    pub(crate) pool: Arc<Pooled>,
    pub(crate) plan: Arc<WritePlan>,
    pub(crate) table: Ident,
    pub(crate) dead_letter_sql: Option<String>,
}

/// A lane's open transaction.
struct LaneTx {
    session: Session,
    statements: Statements,
    /// Whether the savepoint is established (from the previous batch).
    savepoint: bool,
}

/// How a batch failed in a lane transaction.
enum Failure {
    /// Rolled back to the savepoint; the transaction is usable.
    Refused(BackendError),
    /// The transaction is lost.
    Lost(BackendError),
}

impl LaneTx {
    /// Writes the rows at `good` (encoded as `encoded`) in a savepoint: the previous batch's
    /// savepoint is released and a new one set in the same round trip as the batch's first
    /// statement.
    async fn write(
        &mut self,
        plan: &WritePlan,
        rows: &[sluice_sink::Row],
        good: &[usize],
        encoded: Encoded,
    ) -> Result<(), Failure> {
        let client = self.session.client();
        let set = if self.savepoint {
            format!("RELEASE SAVEPOINT {SAVEPOINT}; SAVEPOINT {SAVEPOINT}")
        } else {
            format!("SAVEPOINT {SAVEPOINT}")
        };
        let result = apply_rows(
            client,
            plan,
            &self.statements,
            rows,
            good,
            encoded,
            Some(&set),
        )
        .await;
        match result {
            Ok(()) => {
                self.savepoint = true;
                Ok(())
            }
            Err(error) if error.class() == ErrorClass::Row => {
                // The savepoint was set (a row error comes from a statement after it) and
                // stays set, empty, so the next batch releases it as usual.
                self.savepoint = true;
                client
                    .batch_execute(&format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}"))
                    .await
                    .map_err(|e| Failure::Lost(classify(&e)))?;
                Err(Failure::Refused(error))
            }
            Err(error) => Err(Failure::Lost(error)),
        }
    }
}

/// The exactly-once writer (see the module docs).
pub(crate) struct PostgresCheckpoints {
    shared: Shared,
    progress: ProgressSql,
    sink_id: String,
    writer_id: i32,
    /// `sluice:<sink_id>:<writer_id>:`.
    prefix: String,
    lanes: usize,
    /// `two_phase`; otherwise `transactional_marker`.
    two_phase: bool,
    /// The open transactions, one per lane.
    slots: Vec<Mutex<Option<LaneTx>>>,
    /// Two-phase: the prepared transactions awaiting `commit`.
    pending: Mutex<Pending>,
    orphaned: Gauge,
    /// `pg_advisory_xact_lock_shared` of this writer, run at `BEGIN` (see
    /// [`writer_lock_key`]).
    lock_shared: String,
    /// The exclusive try-lock recovery takes.
    try_lock_exclusive: String,
}

/// How long recovery waits for an earlier run's transactions to end before it fails.
const RECOVERY_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// Recovery's pause between attempts at the writer lock (another process holds it: polling is
/// the only way to learn when a dead client's transaction ended or a prepared one appeared).
const RECOVERY_LOCK_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// `COMMIT PREPARED` or `ROLLBACK PREPARED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Finish {
    Commit,
    Rollback,
}

impl PostgresCheckpoints {
    pub(crate) fn new(
        shared: Shared,
        spec: &CheckpointSpec,
        progress: ProgressSql,
        lanes: usize,
    ) -> Result<PostgresCheckpoints, BackendError> {
        let writer_id = i32::try_from(spec.writer_id).map_err(|_| BackendError::Fatal {
            code: "postgres.writer_id_range",
            message: format!(
                "writer_id {} does not fit an integer column",
                spec.writer_id
            ),
        })?;
        let two_phase = spec.delivery == Delivery::TwoPhase;
        let labels = [
            ("table", shared.table.to_string()),
            ("backend", "postgres".to_string()),
        ];
        let key = writer_lock_key(spec.sink_id.as_str(), spec.writer_id);
        Ok(PostgresCheckpoints {
            lock_shared: format!("SELECT pg_advisory_xact_lock_shared({WRITER_LOCK_CLASS}, {key})"),
            try_lock_exclusive: format!(
                "SELECT pg_try_advisory_xact_lock({WRITER_LOCK_CLASS}, {key})"
            ),
            orphaned: metrics::gauge!(MetricName::OrphanedPreparedTransactions.as_str(), &labels),
            progress,
            sink_id: spec.sink_id.to_string(),
            writer_id,
            prefix: gid_prefix(&spec.sink_id, spec.writer_id),
            lanes,
            two_phase,
            slots: (0..lanes).map(|_| Mutex::new(None)).collect(),
            pending: Mutex::new(Pending::new()),
            shared,
        })
    }

    /// The transaction slot of `lane`.
    fn slot(&self, lane: usize) -> Result<&Mutex<Option<LaneTx>>, BackendError> {
        if lane >= self.lanes {
            return Err(BackendError::Fatal {
                code: "postgres.no_lane",
                message: format!("lane {lane} is beyond flush_concurrency ({})", self.lanes),
            });
        }
        Ok(&self.slots[lane])
    }

    /// The slot's transaction, opened (connection, statements, `BEGIN`) if there is none.
    async fn open<'a>(&self, slot: &'a mut Option<LaneTx>) -> Result<&'a mut LaneTx, BackendError> {
        if slot.is_none() {
            let mut session = self.shared.pool.session().await?;
            // Prepared outside the transaction: nothing of it may touch a temporary table.
            let statements = self
                .shared
                .plan
                .statements(session.client(), Source::Arrays)
                .await?;
            // The writer lock, shared (see `recover`); a prepared transaction keeps it until
            // COMMIT PREPARED.
            session.begin_with(Some(&self.lock_shared)).await?;
            *slot = Some(LaneTx {
                session,
                statements,
                savepoint: false,
            });
        }
        Ok(slot.as_mut().expect("opened above"))
    }

    /// Upserts the progress row `row` (a lane, see [`progress_row`]) in the transaction on
    /// `client`.
    async fn record_progress(
        &self,
        client: &Object,
        row: u32,
        checkpoint_id: u64,
        state: &str,
    ) -> Result<(), BackendError> {
        let checkpoint = checkpoint_param(checkpoint_id)?;
        let lane = i32::try_from(row).map_err(|_| BackendError::Fatal {
            code: "postgres.no_lane",
            message: format!("progress row {row} does not fit an integer column"),
        })?;
        let statement = client
            .prepare_cached(&self.progress.upsert)
            .await
            .map_err(|e| classify(&e))?;
        client
            .execute(
                &statement,
                &[&self.sink_id, &self.writer_id, &lane, &checkpoint, &state],
            )
            .await
            .map_err(|e| classify(&e))?;
        Ok(())
    }

    /// The highest checkpoint of `lane`'s progress rows.
    async fn lane_checkpoint(
        &self,
        client: &Object,
        lane: u32,
    ) -> Result<Option<u64>, BackendError> {
        let lane = i32::try_from(lane).unwrap_or(i32::MAX);
        let checkpoint: Option<i64> = client
            .query_one(
                &self.progress.lane,
                &[&self.sink_id, &self.writer_id, &lane],
            )
            .await
            .map_err(|e| classify(&e))?
            .get(0);
        Ok(checkpoint.and_then(|checkpoint| u64::try_from(checkpoint).ok()))
    }

    /// Commits or rolls back the prepared transaction `gid` (of `checkpoint_id`, `lane`). One
    /// that no longer exists was finished by someone else: the lane's progress row says how.
    async fn finish(
        &self,
        client: &Object,
        finish: Finish,
        gid: &str,
        checkpoint_id: u64,
        lane: u32,
    ) -> Result<(), BackendError> {
        let verb = match finish {
            Finish::Commit => "COMMIT",
            Finish::Rollback => "ROLLBACK",
        };
        let error = match client
            .batch_execute(&format!("{verb} PREPARED {}", literal(gid)))
            .await
        {
            Ok(()) => return Ok(()),
            Err(error) if error.code() == Some(&SqlState::UNDEFINED_OBJECT) => error,
            Err(error) => return Err(classify(&error)),
        };
        let progress = self.lane_checkpoint(client, lane).await?;
        let committed = progress.is_some_and(|progress| progress >= checkpoint_id);
        let shown = progress.map_or("none".to_string(), |p| p.to_string());
        match (finish, committed) {
            (Finish::Commit, true) => {
                tracing::info!(
                    table = %self.shared.table,
                    gid,
                    "The prepared transaction was already committed."
                );
                Ok(())
            }
            (Finish::Rollback, false) => Ok(()),
            (Finish::Commit, false) => Err(BackendError::Fatal {
                code: "postgres.prepared_vanished",
                message: shortened(format!(
                    "the prepared transaction {gid} vanished before COMMIT PREPARED and its rows were not committed (the progress row of lane {lane} is at checkpoint {shown}): it was rolled back by someone else, so checkpoint {checkpoint_id} is lost ({})",
                    classify(&error)
                )),
            }),
            (Finish::Rollback, true) => Err(BackendError::Fatal {
                code: "postgres.prepared_committed",
                message: format!(
                    "the prepared transaction {gid} was committed by someone else (the progress row of lane {lane} is at checkpoint {shown}), so checkpoint {checkpoint_id} cannot be rolled back"
                ),
            }),
        }
    }

    /// Sets the orphan gauge and warns about this writer's prepared transactions older than
    /// two checkpoints before `checkpoint_id`.
    fn report_orphans(&self, pending: &Pending, checkpoint_id: u64) {
        let threshold = checkpoint_id.saturating_sub(2);
        let orphans: Vec<String> = pending
            .keys()
            .filter(|(checkpoint, _)| *checkpoint < threshold)
            .map(|&(checkpoint, lane)| gid(&self.prefix, checkpoint, lane))
            .collect();
        self.orphaned.set(orphans.len() as f64);
        if !orphans.is_empty() {
            tracing::warn!(
                table = %self.shared.table,
                count = orphans.len(),
                gids = ?orphans,
                "Prepared transactions are waiting for COMMIT PREPARED more than two checkpoints later: is the checkpoint completion calling Sink::commit?"
            );
        }
    }

    /// Two-phase: upserts `lane`'s progress and prepares its transaction. The error says
    /// whether the transaction may nevertheless have been prepared (the answer was lost).
    async fn prepare_lane(
        &self,
        lane: u32,
        row: u32,
        mut tx: LaneTx,
        checkpoint_id: u64,
        state: &str,
    ) -> Result<(), (BackendError, bool)> {
        self.record_progress(tx.session.client(), row, checkpoint_id, state)
            .await
            .map_err(|error| (error, false))?;
        let gid = gid(&self.prefix, checkpoint_id, lane);
        tx.session
            .prepare_transaction(&literal(&gid))
            .await
            .map_err(|error| (classify(&error), commit_outcome_unknown(&error)))
    }

    /// Rolls back every open transaction (a connection that cannot roll back is closed).
    async fn roll_back_open(&self) {
        for slot in &self.slots {
            if let Some(mut tx) = slot.lock().await.take() {
                tx.session.rollback().await;
            }
        }
    }
}

impl PostgresCheckpoints {
    /// The marker's pre-commit: every lane's transaction (a new one for a lane that wrote
    /// nothing) upserts the lane's progress row with the cut and commits, all lanes at once.
    /// When one fails, the others may have committed: the sink fails, and recovery finds the
    /// checkpoint partial.
    async fn commit_lanes(&self, cut: &Cut<'_>) -> Result<(), BackendError> {
        let mut open = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            open.push(slot.lock().await.take());
        }
        let results = join_all(
            open.into_iter()
                .enumerate()
                .map(|(lane, tx)| self.commit_lane(lane, tx, cut))
                .collect(),
        )
        .await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        Ok(())
    }

    async fn commit_lane(
        &self,
        lane: usize,
        tx: Option<LaneTx>,
        cut: &Cut<'_>,
    ) -> Result<(), BackendError> {
        let mut session = match tx {
            Some(tx) => tx.session,
            None => {
                let mut session = self.shared.pool.session().await?;
                session.begin_with(Some(&self.lock_shared)).await?;
                session
            }
        };
        let checkpoint = checkpoint_param(cut.checkpoint_id)?;
        let numbers = (
            i32::try_from(lane).ok(),
            i32::try_from(cut.lanes).ok(),
            i64::try_from(cut.stripe_rows).ok(),
            i64::try_from(cut.rows).ok(),
            i64::try_from(cut.rejected).ok(),
        );
        let (Some(lane_param), Some(lanes), Some(stripe_rows), Some(rows), Some(rejected)) =
            numbers
        else {
            return Err(BackendError::Fatal {
                code: "postgres.progress_range",
                message: format!(
                    "checkpoint {} counts do not fit the progress table",
                    cut.checkpoint_id
                ),
            });
        };
        let previous_id = cut
            .previous
            .map(|previous| checkpoint_param(previous.checkpoint_id))
            .transpose()?;
        let previous_state = cut.previous.map(|previous| previous.state.as_str());
        let client = session.client();
        let upserted = async {
            let statement = client.prepare_cached(&self.progress.marker_upsert).await?;
            client
                .execute(
                    &statement,
                    &[
                        &self.sink_id,
                        &self.writer_id,
                        &lane_param,
                        &checkpoint,
                        &cut.state,
                        &lanes,
                        &stripe_rows,
                        &rows,
                        &rejected,
                        &previous_id,
                        &previous_state,
                    ],
                )
                .await
        }
        .await;
        if let Err(error) = upserted {
            // Dropping the session closes its connection: the server rolls back.
            return Err(classify(&error));
        }
        match session.commit().await {
            Ok(()) => Ok(()),
            Err(error) if commit_outcome_unknown(&error) => Err(BackendError::Fatal {
                code: "postgres.checkpoint_commit_unknown",
                message: shortened(format!(
                    "COMMIT of lane {lane} of checkpoint {} failed ({}); whether it took effect is known at recovery, from the progress table",
                    cut.checkpoint_id,
                    classify(&error)
                )),
            }),
            Err(error) => Err(classify(&error)),
        }
    }

    /// One row of [`ProgressSql::marker_rows`]. A row from before the lane rows (no
    /// `lanes`) was written by the marker's single transaction: one lane, complete.
    fn lane_progress(&self, row: &tokio_postgres::Row) -> Result<LaneProgress, BackendError> {
        let corrupt = |what: String| BackendError::Fatal {
            code: "postgres.progress_corrupt",
            message: format!(
                "a progress row of sink {} writer {} {what}",
                self.sink_id, self.writer_id
            ),
        };
        let lane: i32 = row.get(0);
        let checkpoint: i64 = row.get(1);
        let lanes: Option<i32> = row.get(3);
        let stripe_rows: Option<i64> = row.get(4);
        let rows: Option<i64> = row.get(5);
        let rejected: Option<i64> = row.get(6);
        let previous_id: Option<i64> = row.get(7);
        let previous_state: Option<String> = row.get(8);
        let unsigned = |value: i64, what: &str| {
            u64::try_from(value).map_err(|_| corrupt(format!("has the negative {what} {value}")))
        };
        let previous = match (previous_id, previous_state) {
            (Some(id), Some(state)) => Some(Committed {
                checkpoint_id: unsigned(id, "previous checkpoint")?,
                state,
            }),
            _ => None,
        };
        Ok(LaneProgress {
            lane: usize::try_from(lane).map_err(|_| corrupt(format!("has the lane {lane}")))?,
            checkpoint_id: unsigned(checkpoint, "checkpoint")?,
            state: row.get(2),
            lanes: usize::try_from(lanes.unwrap_or(1))
                .map_err(|_| corrupt(format!("has {lanes:?} lanes")))?,
            stripe_rows: unsigned(stripe_rows.unwrap_or(1), "stripe")?,
            rows: unsigned(rows.unwrap_or(0), "row count")?,
            rejected: unsigned(rejected.unwrap_or(0), "rejected count")?,
            previous,
        })
    }
}

/// A checkpoint id as a `bigint`.
fn checkpoint_param(checkpoint_id: u64) -> Result<i64, BackendError> {
    i64::try_from(checkpoint_id).map_err(|_| BackendError::Fatal {
        code: "postgres.checkpoint_id_range",
        message: format!("checkpoint id {checkpoint_id} does not fit a bigint column"),
    })
}

/// Runs `futures` concurrently and returns their outputs in order (the lanes' statements run
/// on their own connections at the same time).
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|context| {
        let mut waiting = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(context) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => waiting = true,
                }
            }
        }
        if waiting {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|output| output.expect("every future finished"))
        .collect()
}

#[async_trait]
impl CheckpointWriter for PostgresCheckpoints {
    async fn write_batch(&self, lane: usize, batch: &Batch) -> Result<BatchOutcome, BackendError> {
        let rows = batch.rows();
        let (good, rejected) = self.shared.plan.check_rows(rows);
        if !good.is_empty() {
            let encoded = self.shared.plan.encode(Source::Arrays, rows, &good)?;
            let mut slot = self.slot(lane)?.lock().await;
            let tx = self.open(&mut slot).await?;
            match tx.write(&self.shared.plan, rows, &good, encoded).await {
                Ok(()) => {}
                Err(Failure::Refused(error)) => return Err(error),
                Err(Failure::Lost(error)) => {
                    // Closes the connection: the server rolls the transaction back.
                    *slot = None;
                    return Err(error);
                }
            }
        }
        Ok(BatchOutcome {
            applied: good.len(),
            rejected,
        })
    }

    async fn write_dead_letters(
        &self,
        lane: usize,
        letters: &[DeadLetter],
    ) -> Result<(), BackendError> {
        let sql = self
            .shared
            .dead_letter_sql
            .as_deref()
            .ok_or_else(|| BackendError::Fatal {
                code: "postgres.no_dead_letter_table",
                message: "dead letters go to a table, but none was prepared".into(),
            })?;
        let columns = DeadLetterColumns::new(letters);
        let mut slot = self.slot(lane)?.lock().await;
        let tx = self.open(&mut slot).await?;
        let client = tx.session.client();
        let result = async {
            let statement = client.prepare_cached(sql).await?;
            client.execute(&statement, &columns.params()).await
        }
        .await;
        if let Err(error) = result {
            *slot = None;
            return Err(classify(&error));
        }
        Ok(())
    }

    async fn pre_commit(&self, cut: &Cut<'_>) -> Result<(), BackendError> {
        let (checkpoint_id, state) = (cut.checkpoint_id, cut.state);
        if state.contains('\0')
            || cut
                .previous
                .is_some_and(|previous| previous.state.contains('\0'))
        {
            return Err(BackendError::Fatal {
                code: "postgres.state_nul",
                message: "the checkpoint state contains a NUL character, which PostgreSQL text cannot hold".into(),
            });
        }
        checkpoint_param(checkpoint_id)?;
        if !self.two_phase {
            return self.commit_lanes(cut).await;
        }
        let mut pending = self.pending.lock().await;
        let mut open = Vec::new();
        for (lane, slot) in self.slots.iter().enumerate() {
            if let Some(tx) = slot.lock().await.take() {
                open.push((u32::try_from(lane).expect("lanes are few"), tx));
            }
        }
        let lanes: Vec<(u32, u32)> = open
            .iter()
            .map(|(lane, _)| (*lane, progress_row(&pending, *lane)))
            .collect();
        let results = join_all(
            open.into_iter()
                .zip(&lanes)
                .map(|((lane, tx), &(_, row))| {
                    self.prepare_lane(lane, row, tx, checkpoint_id, state)
                })
                .collect(),
        )
        .await;
        let mut first_error = None;
        for ((lane, row), result) in lanes.into_iter().zip(results) {
            match result {
                Ok(()) => {
                    pending.insert((checkpoint_id, lane), row);
                }
                Err((error, maybe_prepared)) => {
                    if maybe_prepared {
                        // Rolled back by `abort`, or resolved by `recover`.
                        pending.insert((checkpoint_id, lane), row);
                    }
                    first_error.get_or_insert(error);
                }
            }
        }
        self.report_orphans(&pending, checkpoint_id);
        first_error.map_or(Ok(()), Err)
    }

    async fn commit(&self, checkpoint_id: u64) -> Result<(), BackendError> {
        if !self.two_phase {
            return Ok(());
        }
        let mut pending = self.pending.lock().await;
        let due: Vec<(u64, u32)> = pending
            .keys()
            .copied()
            .filter(|(checkpoint, _)| *checkpoint <= checkpoint_id)
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let client = self.shared.pool.get().await?;
        for (checkpoint, lane) in due {
            let gid = gid(&self.prefix, checkpoint, lane);
            self.finish(&client, Finish::Commit, &gid, checkpoint, lane)
                .await?;
            pending.remove(&(checkpoint, lane));
        }
        Ok(())
    }

    async fn abort(&self, checkpoint_id: u64) -> Result<(), BackendError> {
        // Marker: committed checkpoints stay; only the open transaction goes.
        self.roll_back_open().await;
        let mut pending = self.pending.lock().await;
        let due: Vec<(u64, u32)> = pending
            .keys()
            .copied()
            .filter(|(checkpoint, _)| *checkpoint >= checkpoint_id)
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let client = self.shared.pool.get().await?;
        for (checkpoint, lane) in due {
            let gid = gid(&self.prefix, checkpoint, lane);
            self.finish(&client, Finish::Rollback, &gid, checkpoint, lane)
                .await?;
            pending.remove(&(checkpoint, lane));
        }
        Ok(())
    }

    async fn recover(
        &self,
        restored: Option<u64>,
        resume: Resume,
    ) -> Result<Recovered, BackendError> {
        self.roll_back_open().await;
        if self.two_phase {
            self.pending.lock().await.clear();
        }
        // Every transaction of this writer holds the writer lock shared (prepared ones until
        // they are finished). Once it is ours exclusively, no transaction of an earlier run can
        // still commit or prepare behind our back: one the server was still finishing when its
        // process died (a `COMMIT` or `PREPARE` sent just before) is waited for, and a
        // `PREPARE` that lands meanwhile is found by the next round of resolving.
        let started = std::time::Instant::now();
        loop {
            if self.two_phase {
                self.resolve_prepared(restored, resume).await?;
            }
            let mut session = self.shared.pool.session().await?;
            session.begin_with(None).await?;
            let locked: bool = session
                .client()
                .query_one(&self.try_lock_exclusive, &[])
                .await
                .map_err(|e| classify(&e))?
                .get(0);
            if locked {
                let recovered = if self.two_phase {
                    let latest = session
                        .client()
                        .query_opt(&self.progress.latest, &[&self.sink_id, &self.writer_id])
                        .await
                        .map_err(|e| classify(&e))?;
                    Recovered::whole(latest.map(|row| self.committed(&row)).transpose()?)
                } else {
                    let rows = session
                        .client()
                        .query(
                            &self.progress.marker_rows,
                            &[&self.sink_id, &self.writer_id],
                        )
                        .await
                        .map_err(|e| classify(&e))?;
                    let rows = rows
                        .iter()
                        .map(|row| self.lane_progress(row))
                        .collect::<Result<Vec<_>, _>>()?;
                    Recovered::from_lanes(&rows).map_err(|problem| BackendError::Fatal {
                        code: "postgres.progress_corrupt",
                        message: format!(
                            "the progress rows of sink {} writer {} disagree: {problem}",
                            self.sink_id, self.writer_id
                        ),
                    })?
                };
                session.commit().await.map_err(|e| classify(&e))?;
                return Ok(recovered);
            }
            session.rollback().await;
            drop(session);
            if started.elapsed() >= RECOVERY_LOCK_WAIT {
                return Err(BackendError::Fatal {
                    code: "postgres.writer_busy",
                    message: format!(
                        "a transaction of sink {} writer {} did not end within {} s: another process runs this writer, or an earlier run's transaction is still open on the server",
                        self.sink_id,
                        self.writer_id,
                        RECOVERY_LOCK_WAIT.as_secs()
                    ),
                });
            }
            tokio::time::sleep(RECOVERY_LOCK_POLL).await;
        }
    }
}

impl PostgresCheckpoints {
    /// Commits this writer's prepared transactions up to the completed checkpoint and rolls
    /// back the later ones (two-phase recovery). The completed checkpoint is `restored`, or
    /// with `Resume::Committed` the higher of it and the highest one a lane committed (a lane
    /// commits only after every lane prepared). Before reading that, waits until no
    /// `COMMIT PREPARED` of this writer is still running on the server (one an earlier run
    /// sent just before it died): its lane's progress row must be seen before the other
    /// lanes' transactions of that checkpoint are judged.
    async fn resolve_prepared(
        &self,
        restored: Option<u64>,
        resume: Resume,
    ) -> Result<(), BackendError> {
        let client = self.shared.pool.get().await?;
        let restored = match resume {
            Resume::Restored => restored,
            Resume::Committed => {
                self.wait_for_commits_in_flight(&client).await?;
                let latest = client
                    .query_opt(&self.progress.latest, &[&self.sink_id, &self.writer_id])
                    .await
                    .map_err(|e| classify(&e))?;
                let latest = latest
                    .map(|row| self.committed(&row))
                    .transpose()?
                    .map(|committed| committed.checkpoint_id);
                restored.max(latest)
            }
        };
        let rows = client
            .query(
                "SELECT gid FROM pg_catalog.pg_prepared_xacts \
                 WHERE database = current_database() AND starts_with(gid, $1)",
                &[&self.prefix],
            )
            .await
            .map_err(|e| classify(&e))?;
        let mut found: Vec<(u64, u32, String)> = rows
            .into_iter()
            .filter_map(|row| {
                let gid: String = row.get(0);
                let (checkpoint, lane) = parse_gid(&self.prefix, &gid)?;
                Some((checkpoint, lane, gid))
            })
            .collect();
        found.sort();
        let (mut committed, mut rolled_back) = (0, 0);
        for (checkpoint, lane, gid) in found {
            if restored.is_some_and(|restored| checkpoint <= restored) {
                self.finish(&client, Finish::Commit, &gid, checkpoint, lane)
                    .await?;
                committed += 1;
            } else {
                self.finish(&client, Finish::Rollback, &gid, checkpoint, lane)
                    .await?;
                rolled_back += 1;
            }
        }
        if committed + rolled_back > 0 {
            tracing::info!(
                table = %self.shared.table,
                restored = ?restored,
                committed,
                rolled_back,
                "Resolved the prepared transactions an earlier run left."
            );
        }
        self.orphaned.set(0.0);
        Ok(())
    }

    /// Waits (up to [`RECOVERY_LOCK_WAIT`]) until no session runs a `COMMIT PREPARED` of this
    /// writer's transactions.
    async fn wait_for_commits_in_flight(&self, client: &Object) -> Result<(), BackendError> {
        let statement = format!("COMMIT PREPARED {}", literal(&self.prefix));
        // The literal's closing quote is not part of the prefix of a whole gid's literal.
        let statement = statement.trim_end_matches('\'').to_string();
        let started = std::time::Instant::now();
        loop {
            let running: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_catalog.pg_stat_activity \
                     WHERE pid <> pg_backend_pid() AND state = 'active' \
                       AND starts_with(query, $1)",
                    &[&statement],
                )
                .await
                .map_err(|e| classify(&e))?
                .get(0);
            if running == 0 {
                return Ok(());
            }
            if started.elapsed() >= RECOVERY_LOCK_WAIT {
                return Err(BackendError::Fatal {
                    code: "postgres.writer_busy",
                    message: format!(
                        "a COMMIT PREPARED of sink {} writer {} did not end within {} s",
                        self.sink_id,
                        self.writer_id,
                        RECOVERY_LOCK_WAIT.as_secs()
                    ),
                });
            }
            tokio::time::sleep(RECOVERY_LOCK_POLL).await;
        }
    }

    /// The progress row read at recovery.
    fn committed(&self, row: &tokio_postgres::Row) -> Result<Committed, BackendError> {
        let checkpoint: i64 = row.get(0);
        Ok(Committed {
            checkpoint_id: u64::try_from(checkpoint).map_err(|_| BackendError::Fatal {
                code: "postgres.progress_corrupt",
                message: format!(
                    "the progress row of sink {} writer {} has the negative checkpoint {checkpoint}",
                    self.sink_id, self.writer_id
                ),
            })?,
            state: row.get(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_with_a_pending_checkpoint_writes_the_next_free_progress_row() {
        let mut pending = Pending::new();
        assert_eq!(progress_row(&pending, 0), 0);
        assert_eq!(progress_row(&pending, 3), 3);
        pending.insert((1, 0), 0);
        pending.insert((1, 3), 3);
        assert_eq!(progress_row(&pending, 0), 64);
        assert_eq!(progress_row(&pending, 1), 1);
        pending.insert((2, 0), 64);
        assert_eq!(progress_row(&pending, 0), 128);
        // Committing checkpoint 1 frees its row.
        pending.remove(&(1, 0));
        assert_eq!(progress_row(&pending, 0), 0);
    }

    #[tokio::test]
    async fn join_all_keeps_the_order() {
        let futures: Vec<_> = (0..5_u64)
            .map(|n| async move {
                tokio::task::yield_now().await;
                n * 2
            })
            .collect();
        assert_eq!(join_all(futures).await, [0, 2, 4, 6, 8]);
    }
}
