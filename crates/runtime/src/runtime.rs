use crate::cache::HistoryCache;
use crate::client::Client;
use crate::error::StartError;
use crate::handoff::Handoff;
use crate::poison::{HandlerWait, RunningTurns, TurnFailures};
use crate::registry::Registry;
use crate::retention::RetentionPolicy;
use crate::{dispatcher, worker};
use sluice_store::{Clock, Names, Store, SystemClock, Work};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Limits and timings of a [`Runtime`]. Every limit is named with its unit.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// Orchestration turns processed at the same time (default 128). Each holds its
    /// instance's history and, on PostgreSQL, waits for a pooled connection: more turns than
    /// connections only queue. Fewer turns mean fewer commits per group commit.
    pub orchestration_concurrency: usize,
    /// Activities run at the same time (default 128). An activity that waits on I/O costs a
    /// future and its lease renewal; CPU-heavy activities want about one per core (and a
    /// `spawn_blocking` of their own).
    pub activity_concurrency: usize,
    /// How long a fetched turn stays locked to this runtime; renewed every third of it while
    /// the turn runs, so a turn of any length commits once.
    pub turn_lease: Duration,
    /// How long a fetched activity stays locked; renewed every third of it while running.
    pub activity_lease: Duration,
    /// Fallback wake-up for work committed by other processes (in-process work wakes at once).
    pub poll_interval: Duration,
    /// Deliveries of one activity work item without a result (each crashed or hung its
    /// process) before its instance is quarantined with code `activity_poisoned`. A retry
    /// policy's attempts count as deliveries too, so keep this above the largest
    /// `max_attempts` of your policies.
    pub activity_deliveries_max: u32,
    /// Histories kept in memory.
    pub history_cache_instances_max: usize,
    /// Activity work items this runtime holds at once: waiting to run, running, or with a
    /// result waiting for its turn. Bounds memory and what a crash makes run again.
    pub activity_held_max: usize,
    /// Deliveries of one turn without a commit (stored data this build cannot decode, a store
    /// error, a panic, a crash of the process) before the instance is quarantined with
    /// `turn_poisoned`. Deliveries are counted by the store, so crashes count too.
    pub turn_deliveries_max: u32,
    /// Backoff after a failed turn: this before the second delivery, doubled for each further
    /// one, up to `turn_retry_delay_max`. Also the backoff of undecodable activity work items.
    pub turn_retry_delay_min: Duration,
    /// The longest backoff after a failed turn.
    pub turn_retry_delay_max: Duration,
    /// How long work whose orchestration or activity this process does not have waits for a
    /// process that has it (a rolling deploy) before it fails as `orchestration_not_registered`
    /// or `activity_not_registered`. Meanwhile it is given back every `poll_interval`, counted
    /// in `sluice_runtime_handler_missing_total`, and not counted as a delivery. Applies only
    /// with `fetch_registered_only` off: otherwise such work is never handed to this process.
    pub handler_wait_max: Duration,
    /// Fetch only instances of the orchestrations and work items of the activities registered
    /// here (default), so that processes with different code (old and new versions during a
    /// rolling deploy, or processes that host different activities) share one store and each
    /// takes only what it can run. Work whose code no process has then waits in the store
    /// (by name) instead of failing after `handler_wait_max`. Off: every process takes
    /// everything, and work it has no code for is handed back and, past `handler_wait_max`,
    /// failed.
    pub fetch_registered_only: bool,
    /// The task queues whose activities this runtime runs; `""` is the default queue (of
    /// activities scheduled without one). Default: only `""`. A process that serves `gpu`
    /// alone never takes an activity of the default queue, and the reverse.
    pub task_queues: Vec<String>,
    /// History events of one execution past which a turn logs a warning and counts
    /// `sluice_runtime_history_limit_total{limit="warn"}` (once, as the history crosses it).
    pub history_events_warn: usize,
    /// History events of one execution a turn may not go past: the turn that would is not
    /// run on, and the instance fails with `history_too_large`, whose message suggests
    /// continue-as-new. A finishing turn (completed, failed, continued as new) is never
    /// refused.
    pub history_events_max: usize,
    /// Purge finished instances in the background (off by default: a store keeps everything
    /// until told otherwise). See [`RetentionPolicy`].
    pub retention: Option<RetentionPolicy>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            // 128 and 128: at least 80% of the best pair measured on the storage-bound and the
            // seed workloads (bench/results/defaults-round1), at about 60-80 MB peak RSS.
            orchestration_concurrency: 128,
            activity_concurrency: 128,
            // Short leases: after a crash, locked work is retaken within seconds. Running
            // activities renew theirs every third of it, so long activities are not affected.
            turn_lease: Duration::from_secs(5),
            activity_lease: Duration::from_secs(5),
            poll_interval: Duration::from_secs(1),
            activity_deliveries_max: 100,
            history_cache_instances_max: 10_000,
            activity_held_max: 4_096,
            // A crash loop or a persistent error quarantines after 20 deliveries; with the
            // backoff below a persistent error takes about 12 minutes to get there, so a store
            // outage of a few minutes quarantines nothing.
            turn_deliveries_max: 20,
            turn_retry_delay_min: Duration::from_millis(100),
            turn_retry_delay_max: Duration::from_secs(60),
            handler_wait_max: Duration::from_secs(300),
            fetch_registered_only: true,
            task_queues: vec![String::new()],
            // Temporal's limits, in events: a warning at 10,240, the end at 51,200.
            history_events_warn: 10_240,
            history_events_max: 51_200,
            retention: None,
        }
    }
}

impl RuntimeOptions {
    /// Whether these options can start a runtime: every count at least 1, every lease and
    /// interval above zero, the backoff's bounds in order, and a valid retention policy; the first field out of range otherwise.
    pub fn validate(&self) -> Result<(), StartError> {
        let invalid =
            |option: &'static str, why: String| Err(StartError::InvalidOption { option, why });
        let positive = [
            ("orchestration_concurrency", self.orchestration_concurrency),
            ("activity_concurrency", self.activity_concurrency),
            ("activity_held_max", self.activity_held_max),
            (
                "history_cache_instances_max",
                self.history_cache_instances_max,
            ),
            ("history_events_max", self.history_events_max),
            ("turn_deliveries_max", self.turn_deliveries_max as usize),
            (
                "activity_deliveries_max",
                self.activity_deliveries_max as usize,
            ),
        ];
        if let Some((option, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return invalid(option, "must be at least 1".into());
        }
        let durations = [
            ("turn_lease", self.turn_lease),
            ("activity_lease", self.activity_lease),
            ("poll_interval", self.poll_interval),
            ("turn_retry_delay_max", self.turn_retry_delay_max),
        ];
        if let Some((option, _)) = durations.iter().find(|(_, value)| value.is_zero()) {
            return invalid(option, "must be longer than zero".into());
        }
        if self.activity_held_max < self.activity_concurrency {
            return invalid(
                "activity_held_max",
                format!(
                    "{} is below activity_concurrency ({}): held items are what runs",
                    self.activity_held_max, self.activity_concurrency
                ),
            );
        }
        if self.turn_retry_delay_min > self.turn_retry_delay_max {
            return invalid(
                "turn_retry_delay_min",
                format!(
                    "{:?} is above turn_retry_delay_max ({:?})",
                    self.turn_retry_delay_min, self.turn_retry_delay_max
                ),
            );
        }
        if let Some(why) = self.retention.as_ref().and_then(RetentionPolicy::invalid) {
            return invalid("retention", why);
        }
        Ok(())
    }
}

pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) registry: Registry,
    pub(crate) options: RuntimeOptions,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) cache: HistoryCache,
    /// Cancellation tokens of running activities, by instance, to stop them when their
    /// instance ends.
    pub(crate) running_activities: Mutex<HashMap<String, Vec<RunningActivity>>>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) seed_counter: std::sync::atomic::AtomicU64,
    /// Activity results waiting for their instance's next turn.
    pub(crate) handoff: Handoff,
    /// Activities running at once (`activity_concurrency`).
    pub(crate) run_slots: Arc<Semaphore>,
    /// Work items held at once (`activity_held_max`).
    pub(crate) held_slots: Arc<Semaphore>,
    /// Turns that failed in this process, and their backoff.
    pub(crate) turn_failures: TurnFailures,
    /// Work this process lacks the code for, since when.
    pub(crate) handler_wait: HandlerWait,
    /// Turns running now, for their lease renewal (one task renews them all).
    pub(crate) running_turns: RunningTurns,
    /// What this process fetches: the registered names, or all (`fetch_registered_only`).
    pub(crate) orchestration_names: Names,
    pub(crate) activity_names: Names,
    pub(crate) task_queues: Names,
}

/// An activity attempt running in this process.
pub(crate) struct RunningActivity {
    pub(crate) item_id: u64,
    pub(crate) execution_id: u64,
    pub(crate) activity_id: u64,
    pub(crate) token: CancellationToken,
}

impl Shared {
    pub(crate) fn cancel_activities_of(&self, instance_id: &str) {
        let running = self
            .running_activities
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(instance_id);
        for activity in running.into_iter().flatten() {
            activity.token.cancel();
        }
    }

    /// Signals the running attempts of these activities (the code cancelled them).
    pub(crate) fn cancel_activities(&self, instance_id: &str, execution_id: u64, ids: &[u64]) {
        let running = self
            .running_activities
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for activity in running.get(instance_id).into_iter().flatten() {
            if activity.execution_id == execution_id && ids.contains(&activity.activity_id) {
                activity.token.cancel();
            }
        }
    }
}

/// A running host of orchestrations and activities. Dropping it does not stop it: call
/// [`Runtime::shutdown`].
pub struct Runtime {
    shared: Arc<Shared>,
    tracker: TaskTracker,
}

impl Runtime {
    /// Starts the dispatchers on the current tokio runtime.
    ///
    /// Refused with a [`StartError`] when `options` are out of range
    /// ([`RuntimeOptions::validate`]) or `registry` has a name twice ([`Registry::validate`]).
    pub fn start(
        store: Arc<dyn Store>,
        registry: Registry,
        options: RuntimeOptions,
    ) -> Result<Self, StartError> {
        Self::start_with_clock(store, registry, options, Arc::new(SystemClock))
    }

    /// Starts with a custom clock (the same one the store uses).
    pub fn start_with_clock(
        store: Arc<dyn Store>,
        registry: Registry,
        options: RuntimeOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StartError> {
        options.validate()?;
        registry.validate()?;
        let (orchestration_names, activity_names) = if options.fetch_registered_only {
            (
                Names::only(registry.orchestrations.keys().cloned()),
                Names::only(registry.activities.keys().cloned()),
            )
        } else {
            (Names::All, Names::All)
        };
        let task_queues = Names::only(options.task_queues.iter().cloned());
        let shared = Arc::new(Shared {
            task_queues,
            orchestration_names,
            activity_names,
            cache: HistoryCache::new(options.history_cache_instances_max),
            store,
            registry,
            clock,
            running_activities: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            seed_counter: std::sync::atomic::AtomicU64::new(0),
            handoff: Handoff::default(),
            run_slots: Arc::new(Semaphore::new(options.activity_concurrency)),
            held_slots: Arc::new(Semaphore::new(options.activity_held_max)),
            turn_failures: TurnFailures::default(),
            handler_wait: HandlerWait::new(options.handler_wait_max),
            running_turns: RunningTurns::default(),
            options,
        });
        let tracker = TaskTracker::new();
        let turns = Arc::new(Semaphore::new(shared.options.orchestration_concurrency));
        tracker.spawn(fetch_loop(
            shared.clone(),
            tracker.clone(),
            turns,
            Kind::Turns,
        ));
        let held = shared.held_slots.clone();
        tracker.spawn(fetch_loop(
            shared.clone(),
            tracker.clone(),
            held,
            Kind::Activities,
        ));
        // In the tracker: `shutdown` waits for it, so that no task holds the store after.
        tracker.spawn(dispatcher::renew_turn_leases(shared.clone()));
        if let Some(policy) = shared.options.retention.clone() {
            tracker.spawn(crate::retention::run_retention(
                shared.store.clone(),
                shared.clock.clone(),
                policy,
                shared.shutdown.clone(),
            ));
        }
        Ok(Self { shared, tracker })
    }

    /// A client on the same store.
    pub fn client(&self) -> Client {
        Client::new(self.shared.store.clone(), self.shared.options.poll_interval)
    }

    /// Stops fetching work and waits up to `grace` for running turns and activities. Activities
    /// still running after that are cancelled and released for another attempt.
    pub async fn shutdown(self, grace: Duration) {
        self.shared.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            let all: Vec<String> = self
                .shared
                .running_activities
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .keys()
                .cloned()
                .collect();
            for instance_id in all {
                self.shared.cancel_activities_of(&instance_id);
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), self.tracker.wait()).await;
        }
        // Results that no turn recorded yet go to the store's inbox, durably.
        dispatcher::flush_results(&self.shared, self.shared.handoff.drain_all()).await;
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Turns,
    Activities,
}

fn signal(shared: &Shared, kind: Kind) -> &Notify {
    let signals = shared.store.signals();
    match kind {
        Kind::Turns => &signals.orchestrations,
        Kind::Activities => &signals.activities,
    }
}

/// Fetches as much work as there are free slots, hands each item to its own task, and sleeps
/// when there is none until a signal, the next due time, or the fallback poll interval.
async fn fetch_loop(shared: Arc<Shared>, tracker: TaskTracker, slots: Arc<Semaphore>, kind: Kind) {
    let mut error_backoff = Duration::from_millis(10);
    loop {
        let first = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("semaphore never closes"),
            () = shared.shutdown.cancelled() => return,
        };
        // Fetch at most one concurrency's worth at a time, so that turn commits can still
        // claim held-item slots for their new activities meanwhile.
        let batch_max = match kind {
            Kind::Turns => shared.options.orchestration_concurrency,
            Kind::Activities => shared.options.activity_concurrency,
        };
        let mut permits = vec![first];
        while permits.len() < batch_max {
            match slots.clone().try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        let fetched = match kind {
            Kind::Turns => {
                // Instances backing off after a failed turn wait, even with results parked.
                let now = shared.clock.now_ms();
                let also = shared.handoff.ready_instances(permits.len(), |id| {
                    shared.turn_failures.backing_off(id, now)
                });
                shared
                    .store
                    .fetch_turns_named(
                        permits.len(),
                        shared.options.turn_lease,
                        &also,
                        &shared.orchestration_names,
                    )
                    .await
                    .map(|turns| {
                        let count = turns.len();
                        for turn in turns {
                            let permit = permits.pop().expect("one permit per turn");
                            let shared = shared.clone();
                            let task_tracker = tracker.clone();
                            // Marked before the task starts, so that the next fetch does not
                            // offer this instance's parked results while we hold its lock.
                            shared.handoff.begin_turn(&turn.instance_id);
                            tracker.spawn(async move {
                                let instance_id = turn.instance_id.clone();
                                dispatcher::process_turn(&shared, &task_tracker, turn).await;
                                shared.handoff.end_turn(&instance_id);
                                // Parked results (of this or any instance skipped meanwhile)
                                // need a turn: wake the fetch loop (backing-off instances are
                                // left out of its fetch, and their time is in its sleep).
                                if shared.handoff.has_ready() {
                                    shared.store.signals().orchestrations.notify_one();
                                }
                                drop(permit);
                            });
                        }
                        count
                    })
            }
            Kind::Activities => shared
                .store
                .fetch_activities_named(
                    permits.len(),
                    shared.options.activity_lease,
                    &shared.activity_names,
                    &shared.task_queues,
                )
                .await
                .map(|items| {
                    let count = items.len();
                    for item in items {
                        let permit = permits.pop().expect("one permit per item");
                        let shared = shared.clone();
                        tracker.spawn(async move {
                            worker::process_activity(&shared, item, permit).await;
                        });
                    }
                    count
                }),
        };
        let had_free_slots = !permits.is_empty();
        drop(permits);
        match fetched {
            Ok(count) if count > 0 || !had_free_slots => {
                error_backoff = Duration::from_millis(10);
                continue;
            }
            Ok(_) => error_backoff = Duration::from_millis(10),
            Err(error) => {
                tracing::error!(%error, ?kind, "fetching work failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(error_backoff) => {}
                    () = shared.shutdown.cancelled() => return,
                }
                error_backoff = (error_backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        }
        // Nothing visible: sleep until woken, the next due time, or the fallback interval.
        let now = shared.clock.now_ms();
        let poll_ms = i64::try_from(shared.options.poll_interval.as_millis()).unwrap_or(i64::MAX);
        let work = match kind {
            Kind::Turns => Work::Turns,
            Kind::Activities => Work::Activities,
        };
        let mut wake_at = match shared.store.next_wake_at(work).await {
            Ok(Some(at)) => at.min(now.saturating_add(poll_ms)),
            Ok(None) => now.saturating_add(poll_ms),
            Err(error) => {
                tracing::warn!(%error, "reading the next wake-up time failed");
                now.saturating_add(poll_ms)
            }
        };
        if let (Kind::Turns, Some(retry_at)) = (kind, shared.turn_failures.next_retry_at(now)) {
            wake_at = wake_at.min(retry_at);
        }
        let sleep_ms = u64::try_from(wake_at.saturating_sub(now).max(0)).unwrap_or(0);
        tokio::select! {
            () = signal(&shared, kind).notified() => {}
            () = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {}
            () = shared.shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_each_range_is_checked() {
        assert_eq!(RuntimeOptions::default().validate(), Ok(()));
        let refused = |options: RuntimeOptions| match options.validate() {
            Err(StartError::InvalidOption { option, .. }) => option,
            other => panic!("accepted: {other:?}"),
        };
        let defaults = RuntimeOptions::default;
        assert_eq!(
            refused(RuntimeOptions {
                activity_concurrency: 0,
                ..defaults()
            }),
            "activity_concurrency"
        );
        assert_eq!(
            refused(RuntimeOptions {
                activity_deliveries_max: 0,
                ..defaults()
            }),
            "activity_deliveries_max"
        );
        assert_eq!(
            refused(RuntimeOptions {
                poll_interval: Duration::ZERO,
                ..defaults()
            }),
            "poll_interval"
        );
        assert_eq!(
            refused(RuntimeOptions {
                activity_held_max: 1,
                activity_concurrency: 2,
                ..defaults()
            }),
            "activity_held_max"
        );
        assert_eq!(
            refused(RuntimeOptions {
                turn_retry_delay_min: Duration::from_secs(2),
                turn_retry_delay_max: Duration::from_secs(1),
                ..defaults()
            }),
            "turn_retry_delay_min"
        );
        let retention = RetentionPolicy {
            batch_instances_max: 0,
            ..RetentionPolicy::older_than(Duration::from_secs(60))
        };
        let error = RuntimeOptions {
            retention: Some(retention),
            ..defaults()
        }
        .validate()
        .unwrap_err();
        assert_eq!(error.code(), "runtime.invalid_option");
        assert!(error.to_string().contains("retention"), "{error}");
    }
}
