//! Exactly-once delivery: checkpoints driven by a stream processor.
//!
//! ```text
//! recover(restored) ─► write ... write ─► pre_commit(c) ─► write ... ─► commit(c) ...
//!                                          │ barrier through every lane: batches before it are
//!                                          │ written into the lanes' open transactions, batches
//!                                          │ after it wait (rows keep being accepted/batched)
//!                                          └ backend pre_commit: marker commit / PREPARE
//! ```
//!
//! Invariants:
//! - **Nothing after a failure becomes durable.** `pre_commit` checks the sink's failure after
//!   the barrier and before the backend makes anything durable, so a checkpoint never misses a
//!   batch that failed.
//! - **Barriers split rows exactly.** A barrier enters each lane's queue behind the rows sent
//!   before it (the lane seals its open batch), and a lane writes nothing after a barrier until
//!   the gate says the checkpoint was pre-committed.
//! - **Checkpoint ids increase.** `pre_commit` refuses an id not greater than the last one (or
//!   than the database's, after `Resume::Committed`).
//! - **Recovery first.** An exactly-once sink refuses rows and checkpoints until `recover`.
//!
//! With `at_least_once` the same calls work as a plain checkpoint protocol: `pre_commit` is a
//! `flush`, `commit` and `abort` do nothing, `recover` hands back the restored state.

use crate::backend::{Committed, Cut, PartialCheckpoint};
use crate::config::{Delivery, SinkId};
use crate::error::SinkError;
use crate::sink::{LaneMessage, Sink};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Instant;
use tokio::sync::{OwnedMutexGuard, oneshot};

/// What a checkpoint stores for this sink: hand it back to [`Sink::recover`] after a restart.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointState {
    /// The sink's identity (`None` for at-least-once sinks without one).
    pub sink_id: Option<SinkId>,
    /// The writer's number.
    pub writer_id: u32,
    /// The checkpoint id.
    pub checkpoint_id: u64,
    /// The caller's state given to `pre_commit` (for example a source position).
    pub state: String,
}

/// A pre-commit whose barrier is placed ([`Sink::start_pre_commit`]): await it to finish the
/// checkpoint. Dropping it unfinished fails the sink.
pub type PreCommit =
    Pin<Box<dyn Future<Output = Result<CheckpointState, SinkError>> + Send + 'static>>;

/// How the caller replays its source after [`Sink::recover`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// From the checkpoint it restored. Rows of checkpoints the database already holds (the
    /// marker can be ahead of the restored checkpoint when the processor died between
    /// `pre_commit` and recording its checkpoint) are dropped until the barrier of the
    /// database's checkpoint. Correct only when the replay repeats the same rows between the
    /// same barriers with the same ids; otherwise the sink fails with
    /// [`SinkError::ReplayMismatch`] rather than guess.
    Restored,
    /// From [`Recovery::state`], the position the database holds; nothing is skipped and the
    /// next checkpoint id must be greater than [`Recovery::checkpoint_id`]. The robust choice
    /// when the source can seek (files, message brokers).
    Committed,
}

/// What [`Sink::recover`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// The checkpoint the caller resumes after: the restored one, or the database's when it is
    /// ahead and `Resume::Committed` was asked for. `None`: start from the beginning.
    pub checkpoint_id: Option<u64>,
    /// That checkpoint's state.
    pub state: Option<String>,
    /// The database's checkpoint, when it is ahead of the restored one.
    pub committed_ahead: Option<u64>,
    /// `Resume::Restored` with the database ahead: rows are dropped until the barrier of this
    /// checkpoint.
    pub skipping_through: Option<u64>,
    /// The checkpoint after [`Recovery::checkpoint_id`], when only some of its lanes
    /// committed it (the process died between the lanes' commits; see
    /// [`PartialCheckpoint`]). The caller must replay it exactly: from [`Recovery::state`]
    /// up to this state, then place this checkpoint's barrier, with this id (the
    /// [`CheckpointDriver`]'s next one). The sink writes only the entries of the lanes that
    /// lost it and checks that the replay adds up to what was written (the same rows and
    /// rejected records, the same state), failing with [`SinkError::PartialReplayMismatch`]
    /// before anything is committed when it does not.
    pub partial: Option<ReplayCut>,
}

/// A checkpoint that must be replayed exactly (see [`Recovery::partial`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayCut {
    /// Its id.
    pub checkpoint_id: u64,
    /// Its state: place its barrier when the source reaches this position.
    pub state: String,
}

/// Whether writes are accepted, dropped or refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Running = 0,
    Skipping = 1,
    NeedsRecovery = 2,
}

struct ControlState {
    recovered: bool,
    last: Option<u64>,
    skipping_through: Option<u64>,
    /// A partial checkpoint to replay once the skipping ends.
    partial: Option<PartialCheckpoint>,
    /// The last checkpoint known complete, with its state ([`Cut::previous`]).
    complete: Option<Committed>,
}

/// Fails the sink when a pre-commit is dropped between its barrier and its end: the lanes
/// wait at the barrier for a gate nobody will open, so nothing after it could be written.
struct Unfinished(Option<Sink>);

impl Unfinished {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(sink) = self.0.take() {
            sink.inner.shared.fail(SinkError::Contract(
                "a pre_commit was dropped before it finished; recover with a new sink".into(),
            ));
        }
    }
}

/// The checkpoint protocol's state; calls are serialised by the mutex.
pub(crate) struct CheckpointControl {
    delivery: Delivery,
    phase: AtomicU8,
    /// The last pre-committed checkpoint plus one (0: none), readable by `commit` without the
    /// mutex: `commit(c)` may come while `pre_commit(c + 1)` waits at its barrier (and a
    /// two-phase lane may wait there for `commit(c)` to release a key).
    last_plus_one: AtomicU64,
    state: Arc<tokio::sync::Mutex<ControlState>>,
}

impl CheckpointControl {
    pub(crate) fn new(delivery: Delivery) -> CheckpointControl {
        let phase = if delivery.is_exactly_once() {
            Phase::NeedsRecovery
        } else {
            Phase::Running
        };
        CheckpointControl {
            delivery,
            phase: AtomicU8::new(phase as u8),
            last_plus_one: AtomicU64::new(0),
            state: Arc::new(tokio::sync::Mutex::new(ControlState {
                recovered: false,
                last: None,
                skipping_through: None,
                partial: None,
                complete: None,
            })),
        }
    }

    pub(crate) fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            0 => Phase::Running,
            1 => Phase::Skipping,
            _ => Phase::NeedsRecovery,
        }
    }

    fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::SeqCst);
    }

    fn set_last(&self, state: &mut ControlState, last: Option<u64>) {
        state.last = last;
        self.last_plus_one.store(
            last.map_or(0, |last| last.saturating_add(1)),
            Ordering::SeqCst,
        );
    }

    fn last(&self) -> Option<u64> {
        self.last_plus_one.load(Ordering::SeqCst).checked_sub(1)
    }

    /// The checkpoint after the last pre-committed one (for rolling back what follows it).
    pub(crate) async fn next_id(&self) -> u64 {
        self.state.lock().await.last.map_or(0, |last| last + 1)
    }
}

impl Sink {
    /// At start, before any row: resolves what an earlier run of this writer left in the
    /// database and says where to resume. `restored` is the sink's state from the checkpoint
    /// the processor restored (`None` on a first start).
    ///
    /// - `two_phase`: prepared transactions of this writer up to the completed checkpoint are
    ///   committed, later ones rolled back; others' are not touched. The completed checkpoint
    ///   is `restored` with `Resume::Restored`; with `Resume::Committed` it is the highest one
    ///   the database shows committed when that is ahead (a crash between two lanes'
    ///   `COMMIT PREPARED`, or a processor that keeps no checkpoint store of its own), and the
    ///   recovery hands back its state.
    /// - `transactional_marker`: the progress row may be ahead of `restored` (the processor
    ///   died after `pre_commit`); `resume` says whether the caller seeks to the database's
    ///   position or replays and lets the sink drop what the database has. A backend that
    ///   commits lane by lane (PostgreSQL) may hold the next checkpoint in part (the process
    ///   died between the lanes' commits): [`Recovery::partial`] says so, and the caller
    ///   replays it exactly.
    /// - `at_least_once`: hands back `restored`.
    pub async fn recover(
        &self,
        restored: Option<&CheckpointState>,
        resume: Resume,
    ) -> Result<Recovery, SinkError> {
        let inner = &*self.inner;
        let shared = &*inner.shared;
        let control = &inner.control;
        let mut state = control.state.lock().await;
        shared.check_failed()?;
        if state.recovered {
            return Err(SinkError::Recovery("recover was already called".into()));
        }
        if let Some(restored) = restored
            && (restored.sink_id.as_ref() != shared.config.sink_id()
                || restored.writer_id != shared.config.writer_id())
        {
            return Err(SinkError::Recovery(format!(
                "the restored state belongs to sink {:?} writer {}, not to sink {:?} writer {}",
                restored.sink_id.as_ref().map(SinkId::as_str),
                restored.writer_id,
                shared.config.sink_id().map(SinkId::as_str),
                shared.config.writer_id()
            )));
        }
        let restored_id = restored.map(|restored| restored.checkpoint_id);
        let restored_state = restored.map(|restored| restored.state.clone());
        let mut recovery = Recovery {
            checkpoint_id: restored_id,
            state: restored_state,
            committed_ahead: None,
            skipping_through: None,
            partial: None,
        };
        let Some(checkpoints) = shared.checkpoint_writer()? else {
            state.recovered = true;
            control.set_last(&mut state, restored_id);
            return Ok(recovery);
        };
        let recovered = checkpoints
            .recover(restored_id, resume)
            .await
            .map_err(SinkError::Backend)?;
        let committed = recovered.committed;
        let mut phase = Phase::Running;
        control.set_last(&mut state, restored_id);
        if control.delivery == Delivery::TwoPhase
            && resume == Resume::Committed
            && let Some(committed) = committed.as_ref()
            && restored_id.is_none_or(|restored_id| committed.checkpoint_id > restored_id)
        {
            // The backend completed the highest checkpoint a lane committed.
            recovery.committed_ahead = Some(committed.checkpoint_id);
            control.set_last(&mut state, Some(committed.checkpoint_id));
            recovery.checkpoint_id = Some(committed.checkpoint_id);
            recovery.state = Some(committed.state.clone());
        } else if control.delivery == Delivery::TransactionalMarker {
            let committed_id = committed.as_ref().map(|committed| committed.checkpoint_id);
            if let Some(restored_id) = restored_id
                && committed_id.is_none_or(|committed_id| committed_id < restored_id)
            {
                return Err(SinkError::CheckpointAhead {
                    restored: restored_id,
                    committed: committed_id.map_or("none".into(), |id| id.to_string()),
                });
            }
            if let Some(committed) = committed
                && restored_id.is_none_or(|restored_id| committed.checkpoint_id > restored_id)
            {
                recovery.committed_ahead = Some(committed.checkpoint_id);
                match resume {
                    Resume::Restored => {
                        state.skipping_through = Some(committed.checkpoint_id);
                        recovery.skipping_through = Some(committed.checkpoint_id);
                        phase = Phase::Skipping;
                    }
                    Resume::Committed => {
                        control.set_last(&mut state, Some(committed.checkpoint_id));
                        recovery.checkpoint_id = Some(committed.checkpoint_id);
                        recovery.state = Some(committed.state);
                    }
                }
            }
            if let Some(partial) = recovered.partial {
                let follows = match committed_id {
                    Some(id) => partial.checkpoint_id == id + 1,
                    None => true,
                };
                if !follows || partial.missing.iter().any(|&lane| lane >= partial.lanes) {
                    return Err(SinkError::Recovery(format!(
                        "the backend reports checkpoint {} partially committed (lanes {:?} of {} missing) after the complete checkpoint {committed_id:?}",
                        partial.checkpoint_id, partial.missing, partial.lanes
                    )));
                }
                tracing::warn!(
                    checkpoint_id = partial.checkpoint_id,
                    missing_lanes = ?partial.missing,
                    lanes = partial.lanes,
                    "Only some lanes committed the last checkpoint; its replay writes the other lanes' rows."
                );
                recovery.partial = Some(ReplayCut {
                    checkpoint_id: partial.checkpoint_id,
                    state: partial.state.clone(),
                });
                if phase == Phase::Skipping {
                    state.partial = Some(partial);
                } else {
                    inner
                        .router
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .replay(partial);
                }
            }
        }
        tracing::info!(
            sink_id = ?shared.config.sink_id().map(SinkId::as_str),
            writer_id = shared.config.writer_id(),
            restored = ?restored_id,
            resume_after = ?recovery.checkpoint_id,
            skipping_through = ?recovery.skipping_through,
            partial = ?recovery.partial.as_ref().map(|partial| partial.checkpoint_id),
            "Sink recovered."
        );
        state.complete =
            recovery
                .checkpoint_id
                .zip(recovery.state.clone())
                .map(|(checkpoint_id, state)| Committed {
                    checkpoint_id,
                    state,
                });
        state.recovered = true;
        control.set_phase(phase);
        Ok(recovery)
    }

    /// At a checkpoint barrier: everything written before this call becomes durable with the
    /// writer's progress (`checkpoint_id`, `state`); rows written after it belong to the next
    /// checkpoint. Writing may go on meanwhile (rows are buffered and batched; lanes write them
    /// after this returns). Returns what the checkpoint must store for [`Sink::recover`].
    ///
    /// `transactional_marker`: the rows are visible when this returns. `two_phase`: they are
    /// prepared, visible after [`Sink::commit`]. `at_least_once`: a [`Sink::flush`].
    ///
    /// Waits for a checkpoint call in progress; the barrier is placed when that one is done,
    /// so a caller that keeps writing from the same task while this runs must use
    /// [`Sink::start_pre_commit`] instead.
    pub async fn pre_commit(
        &self,
        checkpoint_id: u64,
        state: &str,
    ) -> Result<CheckpointState, SinkError> {
        let control_state = self.inner.control.state.clone().lock_owned().await;
        self.place_barrier(control_state, checkpoint_id, state)?
            .await
    }

    /// [`Sink::pre_commit`] split at its barrier: the barrier is placed before this returns, so
    /// rows written after the call (from the same task, while the returned future runs)
    /// belong to the next checkpoint. The caller keeps reading its source and writing while
    /// the lanes finish the checkpoint's batches and the backend makes them durable; the rows
    /// written meanwhile wait in the buffer (bounded by `buffer_bytes_max`) and go out the
    /// moment the checkpoint is pre-committed.
    ///
    /// Errors at once with [`SinkError::CheckpointBusy`] while another checkpoint call is in
    /// progress, and as `pre_commit` for the rest. Dropping the future before it finishes
    /// fails the sink (the lanes would wait at the barrier forever): recover with a new one.
    pub fn start_pre_commit(
        &self,
        checkpoint_id: u64,
        state: &str,
    ) -> Result<PreCommit, SinkError> {
        let control_state = self
            .inner
            .control
            .state
            .clone()
            .try_lock_owned()
            .map_err(|_| SinkError::CheckpointBusy)?;
        self.place_barrier(control_state, checkpoint_id, state)
    }

    /// Checks the checkpoint and sends its barrier into every lane, holding the protocol's
    /// lock; the returned future finishes it (and releases the lock).
    fn place_barrier(
        &self,
        mut control_state: OwnedMutexGuard<ControlState>,
        checkpoint_id: u64,
        state: &str,
    ) -> Result<PreCommit, SinkError> {
        let started = Instant::now();
        let inner = &*self.inner;
        let shared = &*inner.shared;
        let control = &inner.control;
        shared.check_failed()?;
        if control.delivery.is_exactly_once() && !control_state.recovered {
            return Err(SinkError::Recovery(
                "an exactly-once sink must be recovered (Sink::recover) before a checkpoint".into(),
            ));
        }
        if let Some(last) = control_state.last
            && checkpoint_id <= last
        {
            return Err(SinkError::CheckpointOrder {
                checkpoint_id,
                reason: format!("must be greater than the last checkpoint, {last}"),
            });
        }
        let mut replies = Vec::with_capacity(inner.lanes.len());
        let counted = {
            // Under the router's lock: no write call is split by the barrier.
            let mut router = inner
                .router
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for lane in &inner.lanes {
                let (reply, answer) = oneshot::channel();
                lane.send(LaneMessage::Barrier(checkpoint_id, reply))
                    .map_err(|_| SinkError::Closed)?;
                replies.push(answer);
            }
            let skipped = control_state
                .skipping_through
                .is_some_and(|through| checkpoint_id <= through);
            if skipped && control_state.skipping_through == Some(checkpoint_id) {
                // The last checkpoint the database holds: what follows is written (the phase
                // changes now, not when the pre-commit ends, as the next rows may come first).
                control.set_phase(Phase::Running);
                if let Some(partial) = control_state.partial.take() {
                    router.replay(partial);
                }
            }
            // A skipped checkpoint routed nothing (its rows were dropped before the router).
            (!skipped).then(|| router.cut())
        };
        if let Some(counted) = &counted
            && let Some(partial) = &counted.replay
        {
            let mut problems = Vec::new();
            if checkpoint_id != partial.checkpoint_id {
                problems.push(format!("the barrier's id is {checkpoint_id}"));
            }
            if state != partial.state {
                problems.push(format!("its state is {state:?}, not {:?}", partial.state));
            }
            if (counted.rows, counted.rejected) != (partial.rows, partial.rejected) {
                problems.push(format!(
                    "it holds {} rows and {} rejected records, not {} and {}",
                    counted.rows, counted.rejected, partial.rows, partial.rejected
                ));
            }
            if !problems.is_empty() {
                let error = SinkError::PartialReplayMismatch {
                    checkpoint_id: partial.checkpoint_id,
                    problems: problems.join("; "),
                };
                shared.fail(error.clone());
                return Err(error);
            }
        }
        let (rows, rejected) = counted.map_or((0, 0), |counted| (counted.rows, counted.rejected));
        let sink = self.clone();
        let state = state.to_string();
        let mut unfinished = Unfinished(Some(sink.clone()));
        Ok(Box::pin(async move {
            let inner = &*sink.inner;
            let shared = &*inner.shared;
            let control = &inner.control;
            let finished = async {
                for answer in replies {
                    answer.await.map_err(|_| SinkError::Closed)?;
                }
                // A batch before the barrier failed: this checkpoint must not become durable.
                shared.check_failed()?;
                if let Some(checkpoints) = shared.checkpoint_writer()? {
                    match control_state.skipping_through {
                        Some(through) if checkpoint_id <= through => {
                            if checkpoint_id == through {
                                control_state.skipping_through = None;
                            }
                        }
                        Some(through) => {
                            let error = SinkError::ReplayMismatch {
                                skipping_through: through,
                                checkpoint_id,
                            };
                            shared.fail(error.clone());
                            return Err(error);
                        }
                        None => {
                            let cut = Cut {
                                checkpoint_id,
                                state: &state,
                                lanes: inner.lanes.len(),
                                stripe_rows: crate::route::stripe_rows(
                                    shared.config.batch_rows_max(),
                                ),
                                rows,
                                rejected,
                                previous: control_state.complete.as_ref(),
                            };
                            if let Err(error) = checkpoints.pre_commit(&cut).await {
                                let error = SinkError::CheckpointLost(error);
                                shared.fail(error.clone());
                                return Err(error);
                            }
                        }
                    }
                }
                control.set_last(&mut control_state, Some(checkpoint_id));
                control_state.complete = Some(Committed {
                    checkpoint_id,
                    state: state.clone(),
                });
                shared.gate.send_replace(checkpoint_id);
                shared.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
                shared.metrics.checkpoint(started.elapsed());
                Ok(CheckpointState {
                    sink_id: shared.config.sink_id().cloned(),
                    writer_id: shared.config.writer_id(),
                    checkpoint_id,
                    state,
                })
            }
            .await;
            unfinished.disarm();
            finished
        }))
    }

    /// When the processor reports the checkpoint complete: makes every pre-committed
    /// checkpoint up to `checkpoint_id` visible (`two_phase`: `COMMIT PREPARED`). Idempotent.
    pub async fn commit(&self, checkpoint_id: u64) -> Result<(), SinkError> {
        let started = Instant::now();
        let inner = &*self.inner;
        let shared = &*inner.shared;
        let Some(checkpoints) = shared.checkpoint_writer()? else {
            return Ok(());
        };
        // Not under the protocol's mutex: see `CheckpointControl::last_plus_one`.
        let last = inner.control.last();
        if last.is_none_or(|last| checkpoint_id > last) {
            return Err(SinkError::CheckpointOrder {
                checkpoint_id,
                reason: format!("it was not pre-committed (last pre-committed: {last:?})"),
            });
        }
        checkpoints
            .commit(checkpoint_id)
            .await
            .map_err(SinkError::Backend)?;
        shared.metrics.commit(started.elapsed());
        Ok(())
    }

    /// When the processor gives up on a checkpoint: rolls back its prepared transactions
    /// (`two_phase`) and the open ones, and stops the sink with [`SinkError::Aborted`]; open a
    /// new sink and `recover` from the last completed checkpoint. A marker checkpoint that was
    /// pre-committed stays committed (recovery accounts for it).
    pub async fn abort(&self, checkpoint_id: u64) -> Result<(), SinkError> {
        let inner = &*self.inner;
        let shared = &*inner.shared;
        let _control_state = inner.control.state.lock().await;
        shared.fail(SinkError::Aborted(checkpoint_id));
        // Wait for writes in progress: after the failure no lane starts another, so nothing
        // reaches the database after the rollback below.
        let mut replies = Vec::with_capacity(inner.lanes.len());
        for lane in &inner.lanes {
            let (reply, answer) = oneshot::channel();
            if lane.send(LaneMessage::Flush(reply)).is_ok() {
                replies.push(answer);
            }
        }
        for answer in replies {
            let _ = answer.await;
        }
        if let Some(checkpoints) = shared.take_checkpoint_writer() {
            checkpoints
                .abort(checkpoint_id)
                .await
                .map_err(SinkError::Backend)?;
        }
        Ok(())
    }
}

/// Runs checkpoints for a caller that owns its source position and keeps no checkpoint store
/// of its own (a file reader, a broker consumer): one checkpoint at a time, pre-committed and
/// then committed on a task of its own, while the caller goes on reading and writing.
///
/// Why a task of its own: between a barrier and its pre-commit the lanes write nothing of the
/// next checkpoint, so a [`Sink::write`] waiting for buffer space can only be released by that
/// pre-commit finishing. A caller that drove the pre-commit from the task that also writes
/// would wait for itself once the buffer filled; with the driver that cannot be written.
///
/// ```
/// # async fn example(sink: sluice_sink::Sink) -> Result<(), sluice_sink::SinkError> {
/// use sluice_sink::{CheckpointDriver, Resume, Row, Value};
/// let recovery = sink.recover(None, Resume::Committed).await?;
/// // Seek the source to `recovery.state` (`None`: from the beginning).
/// let mut checkpoints = CheckpointDriver::new(&sink, &recovery);
/// sink.write(vec![Row::insert(vec![Value::I64(1)])]).await?;
/// checkpoints.start("offset=1")?; // the barrier is behind the row above
/// sink.write(vec![Row::insert(vec![Value::I64(2)])]).await?; // the next checkpoint's
/// let done = checkpoints.finished().await?; // or in a `select!` beside the source
/// assert_eq!(done.state, "offset=1");
/// checkpoints.start("offset=2")?;
/// checkpoints.finish().await?;
/// # Ok(()) }
/// ```
pub struct CheckpointDriver {
    sink: Sink,
    next_id: u64,
    in_flight: Option<(
        u64,
        tokio::task::JoinHandle<Result<CheckpointState, SinkError>>,
    )>,
}

impl CheckpointDriver {
    /// After [`Sink::recover`]: checkpoint ids continue after the recovered one.
    pub fn new(sink: &Sink, recovery: &Recovery) -> CheckpointDriver {
        CheckpointDriver {
            sink: sink.clone(),
            next_id: recovery.checkpoint_id.map_or(1, |id| id + 1),
            in_flight: None,
        }
    }

    /// The id the next [`CheckpointDriver::start`] uses.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// The checkpoint under way, if any.
    pub fn in_flight(&self) -> Option<u64> {
        self.in_flight.as_ref().map(|(id, _)| *id)
    }

    /// Places the next checkpoint's barrier behind everything written so far, with the
    /// caller's `state` (its source position after those rows), and starts finishing it:
    /// pre-commit, then commit. Rows written after this call belong to the next checkpoint.
    /// Returns the checkpoint's id. Refused with [`SinkError::CheckpointBusy`] while one is
    /// under way: wait for it with [`CheckpointDriver::finished`] first.
    pub fn start(&mut self, state: &str) -> Result<u64, SinkError> {
        if self.in_flight.is_some() {
            return Err(SinkError::CheckpointBusy);
        }
        let id = self.next_id;
        let pre_commit = self.sink.start_pre_commit(id, state)?;
        let sink = self.sink.clone();
        let task = tokio::spawn(async move {
            let state = pre_commit.await?;
            sink.commit(id).await?;
            Ok(state)
        });
        self.in_flight = Some((id, task));
        self.next_id += 1;
        Ok(id)
    }

    /// Waits for the checkpoint under way to be committed and returns what it stored; never
    /// returns while none is under way (for a `select!` branch guarded by
    /// [`CheckpointDriver::in_flight`]). Cancel-safe: dropping the future leaves the
    /// checkpoint running.
    pub async fn finished(&mut self) -> Result<CheckpointState, SinkError> {
        let Some((_, task)) = &mut self.in_flight else {
            return std::future::pending().await;
        };
        let outcome = task.await;
        self.in_flight = None;
        match outcome {
            Ok(result) => result,
            Err(error) => Err(SinkError::Contract(format!(
                "the checkpoint task ended without an answer: {error}"
            ))),
        }
    }

    /// Waits for the checkpoint under way, if any.
    pub async fn finish(&mut self) -> Result<Option<CheckpointState>, SinkError> {
        if self.in_flight.is_none() {
            return Ok(None);
        }
        self.finished().await.map(Some)
    }
}
