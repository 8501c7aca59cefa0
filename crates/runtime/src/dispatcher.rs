//! One orchestration turn: messages in, replay, commit out.

use crate::handoff::LocalResult;
use crate::metrics;
use crate::poison::backoff;
use crate::runtime::Shared;
use crate::task::CatchUnwind;
use crate::worker;
use sluice_history::{
    Event, Failure, InstanceStatus, Message, ParentLink, codes, pending_children,
};
use sluice_replay::{TurnOutcome, run_turn};
use sluice_store::{
    ActivityResult, LockedTurn, NewActivity, NewInstance, Outbound, StoreError, TurnCommit,
};
use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::task::TaskTracker;

/// Why a turn was not built.
enum TurnError {
    /// This process lacks the orchestration's code (and the wait for one that has it is not
    /// over): the turn is given back, not counted.
    NoHandler,
    /// Anything else: counted, retried with backoff, quarantined past the limit.
    Failed { code: &'static str, message: String },
}

impl From<StoreError> for TurnError {
    fn from(error: StoreError) -> Self {
        TurnError::Failed {
            code: error.code(),
            message: error.to_string(),
        }
    }
}

/// Stable codes of turn failures that are not store errors.
const PANICKED: &str = "runtime.panicked";

pub(crate) async fn process_turn(shared: &Arc<Shared>, tracker: &TaskTracker, turn: LockedTurn) {
    let instance_id = turn.instance_id.clone();
    let lock_token = turn.lock_token;
    let local = shared.handoff.take(&instance_id);
    if matches!(
        turn.status,
        InstanceStatus::Quarantined | InstanceStatus::Suspended
    ) {
        // Fetched only for results parked here: they go to its inbox, durably, and wait there
        // with the rest of its messages.
        flush_results(shared, local).await;
        release(shared, &instance_id, lock_token, Duration::ZERO).await;
        return;
    }
    // The store counts deliveries of stored messages; a turn of results held in memory has
    // none, so failures here count too.
    let delivery = turn
        .delivery
        .max(shared.turn_failures.count(&instance_id).saturating_add(1));
    let deliveries_max = shared.options.turn_deliveries_max;
    let _running = shared.running_turns.hold(&instance_id, lock_token);
    let attempt = TurnAttempt {
        instance_id: &instance_id,
        lock_token,
        delivery,
    };
    if let Some(unreadable) = turn.unreadable.clone() {
        let failure = StoreError::Corrupt(unreadable).into();
        attempt.fail(shared, local, failure).await;
        return;
    }
    if delivery > deliveries_max {
        // Earlier deliveries ended without an answer: each crashed its process or lost its
        // lease (a failure seen by the runtime quarantines at the limit itself).
        let reason = Failure::new(
            codes::TURN_POISONED,
            format!(
                "the turn was delivered {delivery} times without a commit (limit \
                 {deliveries_max}); the earlier deliveries ended without an answer: the process \
                 crashed or lost the lease during the turn"
            ),
        );
        attempt.quarantine(shared, local, reason).await;
        return;
    }
    let local_messages: Vec<Message> = local.iter().map(|result| result.message.clone()).collect();
    let built = CatchUnwind(Box::pin(build_commit(shared, turn, local_messages))).await;
    let (mut commit, history) = match built {
        Ok(Ok(built)) => built,
        Ok(Err(TurnError::NoHandler)) => {
            shared.cache.remove(&instance_id);
            shared.handoff.restore(&instance_id, local);
            metrics::handler_missing("orchestration");
            let delay = shared.options.poll_interval;
            shared.turn_failures.defer(
                &instance_id,
                shared.clock.now_ms().saturating_add(millis(delay)),
            );
            release(shared, &instance_id, lock_token, delay).await;
            return;
        }
        Ok(Err(failure)) => {
            attempt.fail(shared, local, failure).await;
            return;
        }
        Err(panic) => {
            let failure = TurnError::Failed {
                code: PANICKED,
                message: format!("building the turn panicked: {panic}"),
            };
            attempt.fail(shared, local, failure).await;
            return;
        }
    };
    commit.completed_activities = local
        .iter()
        .map(|result| (result.item_id, result.lock_token))
        .collect();
    // Claim the new activities this runtime has room to hold, so they run without a fetch:
    // the ones it has code for, put first (the store claims the first ones).
    let runs_here = |activity: &NewActivity| {
        shared.activity_names.contains(&activity.name)
            && shared
                .task_queues
                .contains(activity.task_queue.as_deref().unwrap_or(""))
    };
    commit
        .activities
        .sort_by_key(|activity| !runs_here(activity));
    let runnable = commit.activities.iter().filter(|a| runs_here(a)).count();
    let mut slots = Vec::new();
    while slots.len() < runnable {
        match shared.held_slots.clone().try_acquire_owned() {
            Ok(slot) => slots.push(slot),
            Err(_) => break,
        }
    }
    if !slots.is_empty() {
        commit.claim_activities = Some((slots.len(), shared.options.activity_lease));
    }
    let finished = commit.status.is_some_and(InstanceStatus::is_terminal);
    let continued = commit.continue_as_new.is_some();
    let execution_id = commit.execution_id;
    let cancelled = commit.cancelled_activities.clone();
    match shared.store.commit_turn(commit).await {
        Ok(claimed) => {
            // Committed: the parked results are recorded; their slots and renewals end here.
            drop(local);
            shared.turn_failures.clear(&instance_id);
            shared.handler_wait.clear(&instance_id);
            for item in claimed {
                let slot = slots
                    .pop()
                    .expect("the store claims at most the slots offered");
                let shared = shared.clone();
                tracker.spawn(async move { worker::process_activity(&shared, item, slot).await });
            }
            if finished || continued {
                shared.cache.remove(&instance_id);
            } else if let Some(history) = history {
                shared.cache.put(&instance_id, execution_id, history);
            }
            if finished {
                shared.cancel_activities_of(&instance_id);
            } else if !cancelled.is_empty() {
                shared.cancel_activities(&instance_id, execution_id, &cancelled);
            }
        }
        Err(StoreError::LeaseLost(_)) => {
            shared.cache.remove(&instance_id);
            shared.handoff.restore(&instance_id, local);
            metrics::turn_lease_lost();
            tracing::warn!(%instance_id, "turn discarded: its lease was lost");
        }
        Err(error) => attempt.fail(shared, local, error.into()).await,
    }
}

/// The delivery of a turn being processed, for its unhappy endings.
struct TurnAttempt<'a> {
    instance_id: &'a str,
    lock_token: u64,
    delivery: u32,
}

impl TurnAttempt<'_> {
    /// A failed delivery: given back with backoff, or past the limit quarantined.
    async fn fail(&self, shared: &Shared, local: Vec<LocalResult>, failure: TurnError) {
        let TurnError::Failed { code, message } = failure else {
            unreachable!("a missing handler is not a failure");
        };
        let instance_id = self.instance_id;
        shared.cache.remove(instance_id);
        metrics::turn_failed(code);
        let (delivery, limit) = (self.delivery, shared.options.turn_deliveries_max);
        if delivery >= limit {
            let reason = Failure::new(
                codes::TURN_POISONED,
                format!(
                    "the turn was delivered {delivery} times without a commit (limit {limit}); \
                     the last delivery failed with {code}: {message}"
                ),
            );
            self.quarantine(shared, local, reason).await;
            return;
        }
        let options = &shared.options;
        let delay = backoff(
            delivery,
            options.turn_retry_delay_min,
            options.turn_retry_delay_max,
        );
        tracing::error!(
            %instance_id,
            delivery,
            limit,
            ?delay,
            code,
            %message,
            "turn failed; it is tried again after a backoff"
        );
        shared.handoff.restore(instance_id, local);
        shared.turn_failures.record(
            instance_id,
            shared.clock.now_ms().saturating_add(millis(delay)),
        );
        if let Err(error) = shared
            .store
            .abandon_turn(instance_id, self.lock_token, delay)
            .await
        {
            tracing::warn!(%instance_id, %error, "abandoning a turn failed; its lease will expire");
        }
    }

    /// Takes the instance out of service with `reason`. Results held for it go to its inbox
    /// first, so nothing waits in memory for a turn that will not come.
    async fn quarantine(&self, shared: &Shared, local: Vec<LocalResult>, reason: Failure) {
        let instance_id = self.instance_id;
        shared.cache.remove(instance_id);
        tracing::error!(%instance_id, %reason, "instance quarantined: it runs no turn until an operator acts");
        flush_results(shared, local).await;
        match shared
            .store
            .quarantine_turn(instance_id, self.lock_token, reason)
            .await
        {
            Ok(()) => {
                metrics::turn_quarantined();
                shared.turn_failures.clear(instance_id);
                shared.handler_wait.clear(instance_id);
            }
            Err(error) => {
                tracing::warn!(%instance_id, %error, "quarantining failed; the turn is delivered again when its lease expires");
            }
        }
    }
}

/// Records parked activity results in their instances' inboxes (durably), releasing what they
/// hold. A result whose work item lease was lost is dropped: the item runs again elsewhere.
pub(crate) async fn flush_results(shared: &Shared, results: Vec<LocalResult>) {
    for result in results {
        let outcome = match result.message.clone() {
            Message::ActivityCompleted { output, .. } => ActivityResult::Completed(output),
            Message::ActivityFailed { failure, .. } => ActivityResult::Failed(failure),
            _ => continue,
        };
        if let Err(error) = shared
            .store
            .complete_activity(result.item_id, result.lock_token, outcome)
            .await
        {
            tracing::warn!(%error, instance_id = %result.instance_id, "recording a held activity result failed; it will run again");
        }
    }
}

/// Gives a turn back uncounted (it did not run).
async fn release(shared: &Shared, instance_id: &str, lock_token: u64, delay: Duration) {
    if let Err(error) = shared
        .store
        .release_turn(instance_id, lock_token, delay)
        .await
    {
        tracing::warn!(%instance_id, %error, "releasing a turn failed; its lease will expire");
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Renews the leases of turns running longer than a third of the lease, every sixth of it:
/// one task for all of them (most turns end before their first renewal). Ends once the runtime
/// is shut down and no turn runs any more.
pub(crate) async fn renew_turn_leases(shared: Arc<Shared>) {
    let lease = shared.options.turn_lease;
    loop {
        if shared.shutdown.is_cancelled() {
            // Shutting down: renew until the last turn ends, then let go of the store.
            if shared.running_turns.is_empty() {
                return;
            }
            tokio::time::sleep((lease / 6).min(Duration::from_millis(50))).await;
        } else {
            tokio::select! {
                () = tokio::time::sleep(lease / 6) => {}
                () = shared.shutdown.cancelled() => continue,
            }
        }
        for (instance_id, lock_token) in shared.running_turns.due(lease / 3) {
            match shared
                .store
                .renew_turn_lease(&instance_id, lock_token, lease)
                .await
            {
                Ok(()) => metrics::turn_lease_renewed(),
                Err(StoreError::LeaseLost(_)) => {
                    tracing::warn!(%instance_id, "turn lease lost while the turn ran; its commit will be refused");
                }
                Err(error) => {
                    tracing::warn!(%instance_id, %error, "turn lease renewal failed; trying again");
                }
            }
        }
    }
}

fn guid_seed(shared: &Shared, instance_id: &str, now_ms: i64) -> u64 {
    let counter = shared.seed_counter.fetch_add(1, Ordering::Relaxed);

    std::collections::hash_map::RandomState::new().hash_one((instance_id, now_ms, counter))
}

/// Loads history (cache first), turns messages into events, replays, and builds the commit.
/// Returns the history after the turn, for the cache.
async fn build_commit(
    shared: &Shared,
    turn: LockedTurn,
    local: Vec<Message>,
) -> Result<(TurnCommit, Option<Arc<Vec<Event>>>), TurnError> {
    let consumed: Vec<u64> = turn.messages.iter().map(|(id, _)| *id).collect();
    let mut commit = TurnCommit {
        instance_id: turn.instance_id.clone(),
        lock_token: turn.lock_token,
        execution_id: turn.execution_id,
        history_from: turn.history_len,
        consumed,
        ..TurnCommit::default()
    };
    let messages: Vec<Message> = turn
        .messages
        .into_iter()
        .map(|(_, message)| message)
        .chain(local)
        .collect();
    if turn.status.is_terminal() {
        for message in &messages {
            // Timers and results that come due as an instance finishes are expected; an event a
            // client raised is worth a warning (clients get an error once the status is final).
            if matches!(message, Message::Event { .. }) {
                tracing::warn!(
                    instance_id = %turn.instance_id,
                    status = turn.status.as_str(),
                    ?message,
                    "event for a finished instance dropped"
                );
            } else {
                tracing::debug!(instance_id = %turn.instance_id, ?message, "late message dropped");
            }
        }
        return Ok((commit, None));
    }
    let history = match shared
        .cache
        .get(&turn.instance_id, turn.execution_id, turn.history_len)
    {
        Some(history) => history,
        // A new execution: nothing to read.
        None if turn.history_len == 0 => Arc::new(Vec::new()),
        None => Arc::new(
            shared
                .store
                .read_history(&turn.instance_id, turn.execution_id, 0)
                .await?,
        ),
    };
    if history.len() as u64 != turn.history_len {
        return Err(TurnError::from(StoreError::Corrupt(format!(
            "instance '{}' has {} history events, its row says {}",
            turn.instance_id,
            history.len(),
            turn.history_len
        ))));
    }
    let now_ms = shared.clock.now_ms();
    let mut new_events = vec![Event::TurnStarted { now_ms }];
    let mut started = history.iter().find_map(|event| match event {
        Event::OrchestrationStarted { parent, .. } => Some(parent.clone()),
        _ => None,
    });
    let mut cancel: Option<(String, Option<String>)> = None;
    let mut scheduled: HashSet<u64> = HashSet::new();
    let mut resolved: HashSet<u64> = HashSet::new();
    // After a rewind, results that the failed execution's work still sends for the commands
    // carried over belong to this execution too.
    let mut carried: Option<(u64, HashSet<u64>)> = None;
    for event in history.iter() {
        if let Some(id) = event.command_id() {
            if event.is_command() {
                scheduled.insert(id);
            } else if event.is_completion() {
                resolved.insert(id);
            }
        } else if let Event::CancelRequested { id } = event {
            // The code stopped waiting: a result that still comes is dropped.
            resolved.insert(*id);
        } else if let Event::Rewound {
            from_execution,
            carried: ids,
            ..
        } = event
        {
            carried = Some((*from_execution, ids.iter().copied().collect()));
        }
    }
    for message in &messages {
        if let Message::Rewound {
            from_execution,
            carried: ids,
            ..
        } = message
        {
            carried = Some((*from_execution, ids.iter().copied().collect()));
        }
    }
    for message in messages {
        match message {
            Message::Start {
                name,
                input,
                parent,
                carried_events,
                version,
            } => {
                if started.is_some() {
                    tracing::debug!(instance_id = %turn.instance_id, "duplicate start ignored");
                    continue;
                }
                started = Some(parent.clone());
                let guid_seed = guid_seed(shared, &turn.instance_id, now_ms);
                // The version is fixed here for the whole execution; 1 is recorded as absent.
                let version = version
                    .or_else(|| shared.registry.newest_version(&name))
                    .filter(|version| *version != 1);
                new_events.push(Event::OrchestrationStarted {
                    name,
                    input,
                    parent,
                    guid_seed,
                    version,
                });
                new_events.extend(
                    carried_events
                        .into_iter()
                        .map(|(name, data)| Event::EventRaised { name, data }),
                );
            }
            Message::Cancel {
                reason,
                requested_by,
            } => {
                cancel.get_or_insert((reason, requested_by));
            }
            message => {
                if let Some(execution_id) = message.execution_id() {
                    let event = message.to_event().expect("results become events");
                    let id = event.command_id().expect("results carry ids");
                    // Results of earlier executions, unknown commands and duplicates are
                    // dropped, so each result is recorded once.
                    let this_execution = execution_id == turn.execution_id
                        || carried
                            .as_ref()
                            .is_some_and(|(from, ids)| execution_id == *from && ids.contains(&id));
                    if !this_execution || !scheduled.contains(&id) || !resolved.insert(id) {
                        tracing::debug!(instance_id = %turn.instance_id, ?message, "stale result dropped");
                        continue;
                    }
                    new_events.push(event);
                } else if let Some(event) = message.to_event() {
                    new_events.push(event);
                }
            }
        }
    }
    let Some(parent) = started else {
        // Nothing can run before the start message; leave the messages for later.
        return Err(TurnError::from(StoreError::Contract(format!(
            "instance '{}' has messages but no start",
            turn.instance_id
        ))));
    };

    if let Some((reason, requested_by)) = cancel {
        let failure = Failure::new(codes::CANCELLED, reason.clone());
        commit.append = new_events;
        commit.append.push(Event::Cancelled {
            reason,
            requested_by,
        });
        let mut all = history.as_ref().clone();
        all.extend(commit.append.iter().cloned());
        for child in pending_children(&all) {
            commit.outbound.push(Outbound::Message {
                instance_id: child,
                message: Message::Cancel {
                    reason: format!("parent '{}' was cancelled", turn.instance_id),
                    requested_by: Some(format!("parent '{}'", turn.instance_id)),
                },
            });
        }
        notify_parent(&mut commit, parent.as_ref(), Err(failure.clone()));
        commit.outstanding_activities = has_unresolved_activities(&all);
        commit.status = Some(InstanceStatus::Cancelled);
        commit.failure = Some(failure);
        return Ok((commit, None));
    }

    let version = sluice_history::execution_version(history.iter().chain(&new_events));
    let Some(orchestration) = shared.registry.code(&turn.name, version) else {
        // A rolling deploy: another process may have the code. Wait for it, up to
        // `handler_wait_max`, then fail the instance.
        match shared
            .handler_wait
            .missing(&turn.instance_id, shared.clock.now_ms())
        {
            None => {
                tracing::warn!(
                    instance_id = %turn.instance_id,
                    orchestration = %turn.name,
                    wait_max = ?shared.options.handler_wait_max,
                    "no orchestration of this name is registered here; waiting for a process that has it"
                );
                return Err(TurnError::NoHandler);
            }
            Some(false) => return Err(TurnError::NoHandler),
            Some(true) => {}
        }
        shared.handler_wait.clear(&turn.instance_id);
        let failure = Failure::new(
            codes::ORCHESTRATION_NOT_REGISTERED,
            format!(
                "no orchestration named '{}' is registered at version {version}, and no process \
                 took the instance within handler_wait_max ({:?})",
                turn.name, shared.options.handler_wait_max
            ),
        );
        commit.append = new_events;
        commit.append.push(Event::OrchestrationFailed {
            failure: failure.clone(),
        });
        notify_parent(&mut commit, parent.as_ref(), Err(failure.clone()));
        commit.status = Some(InstanceStatus::Failed);
        commit.failure = Some(failure);
        return Ok((commit, None));
    };

    let result = run_turn(
        orchestration.as_ref(),
        &turn.instance_id,
        turn.execution_id,
        history.clone(),
        new_events,
    );
    let length = history.len() + result.appended.len();
    let warn = shared.options.history_events_warn;
    if history.len() < warn && length >= warn {
        metrics::history_limit("warn");
        tracing::warn!(
            instance_id = %turn.instance_id,
            events = length,
            history_events_warn = warn,
            history_events_max = shared.options.history_events_max,
            "the instance's history is growing large: continue as new before it reaches \
             history_events_max, which fails the instance"
        );
    }
    if length > shared.options.history_events_max && result.outcome == TurnOutcome::Waiting {
        // The turn's work is not started: what arrived is recorded, and the failure.
        metrics::history_limit("max");
        let failure = Failure::new(
            codes::HISTORY_TOO_LARGE,
            format!(
                "the history would reach {length} events, more than history_events_max ({}); \
                 an orchestration that runs for long should continue as new now and then \
                 (ctx.continue_as_new), which starts a fresh history",
                shared.options.history_events_max
            ),
        );
        tracing::error!(instance_id = %turn.instance_id, %failure, "history too large");
        commit.custom_status = result.custom_status;
        commit.append = result
            .appended
            .into_iter()
            .filter(|event| !event.is_command())
            .collect();
        commit.append.push(Event::OrchestrationFailed {
            failure: failure.clone(),
        });
        notify_parent(&mut commit, parent.as_ref(), Err(failure.clone()));
        commit.status = Some(InstanceStatus::Failed);
        commit.failure = Some(failure);
        let mut after = history.as_ref().clone();
        after.extend(commit.append.iter().cloned());
        commit.outstanding_activities = has_unresolved_activities(&after);
        return Ok((commit, None));
    }
    for command in result.new_commands() {
        add_command(&mut commit, &turn.instance_id, turn.execution_id, command);
    }
    for event in &result.appended {
        if let Event::CancelRequested { id } = event {
            let command = history
                .iter()
                .chain(&result.appended)
                .find(|command| command.is_command() && command.command_id() == Some(*id));
            cancel_command(&mut commit, &turn.instance_id, command);
        }
    }
    commit.custom_status = result.custom_status;
    commit.append = result.appended;
    match result.outcome {
        TurnOutcome::Waiting => {
            if turn.status == InstanceStatus::Pending {
                commit.status = Some(InstanceStatus::Running);
            }
        }
        TurnOutcome::Completed(output) => {
            notify_parent(&mut commit, parent.as_ref(), Ok(output.clone()));
            commit.status = Some(InstanceStatus::Completed);
            commit.output = Some(output);
        }
        TurnOutcome::Failed(failure) => {
            if failure.code.starts_with(codes::NONDETERMINISM_PREFIX) {
                tracing::error!(instance_id = %turn.instance_id, %failure, "nondeterminism detected");
            }
            notify_parent(&mut commit, parent.as_ref(), Err(failure.clone()));
            commit.status = Some(InstanceStatus::Failed);
            commit.failure = Some(failure);
        }
        TurnOutcome::ContinuedAsNew {
            input,
            carried_events,
        } => {
            commit.status = Some(InstanceStatus::Running);
            // The next execution starts on the newest version registered where it starts.
            commit.continue_as_new = Some(Message::Start {
                name: turn.name.clone(),
                input,
                parent,
                carried_events,
                version: None,
            });
        }
    }
    let mut after = history.as_ref().clone();
    after.extend(commit.append.iter().cloned());
    if commit.status.is_some_and(InstanceStatus::is_terminal) {
        commit.outstanding_activities = has_unresolved_activities(&after);
    }
    Ok((commit, Some(Arc::new(after))))
}

/// True when history schedules an activity it never records a result for.
fn has_unresolved_activities(history: &[Event]) -> bool {
    let mut open = HashSet::new();
    for event in history {
        match event {
            Event::ActivityScheduled { id, .. } => {
                open.insert(*id);
            }
            Event::ActivityCompleted { id, .. } | Event::ActivityFailed { id, .. } => {
                open.remove(id);
            }
            _ => {}
        }
    }
    !open.is_empty()
}

fn add_command(commit: &mut TurnCommit, instance_id: &str, execution_id: u64, command: &Event) {
    match command {
        Event::ActivityScheduled {
            id,
            name,
            input,
            retry,
            queue,
        } => commit.activities.push(NewActivity {
            instance_id: instance_id.to_string(),
            execution_id,
            activity_id: *id,
            name: name.clone(),
            input: input.clone(),
            retry: retry.clone(),
            task_queue: queue.clone(),
        }),
        Event::TimerCreated { id, fire_at_ms } => commit.timers.push((
            *fire_at_ms,
            Message::TimerFired {
                execution_id,
                id: *id,
            },
        )),
        Event::SubOrchestrationScheduled {
            id,
            name,
            instance_id: child,
            input,
        } => commit.outbound.push(Outbound::Start(NewInstance {
            instance_id: child.clone(),
            name: name.clone(),
            input: input.clone(),
            parent: Some(ParentLink {
                instance_id: instance_id.to_string(),
                execution_id,
                id: *id,
            }),
            version: None,
        })),
        Event::DetachedStarted {
            name,
            instance_id: child,
            input,
            ..
        } => commit.outbound.push(Outbound::Start(NewInstance {
            instance_id: child.clone(),
            name: name.clone(),
            input: input.clone(),
            parent: None,
            version: None,
        })),
        _ => {}
    }
}

/// Cancels the work of a command whose future the code dropped: an activity scheduled in the
/// same turn is not created at all, one scheduled before has its work item deleted, and a
/// sub-orchestration is sent a cancel.
fn cancel_command(commit: &mut TurnCommit, instance_id: &str, command: Option<&Event>) {
    match command {
        Some(Event::ActivityScheduled { id, .. }) => {
            let before = commit.activities.len();
            commit
                .activities
                .retain(|activity| activity.activity_id != *id);
            if commit.activities.len() == before {
                commit.cancelled_activities.push(*id);
            }
        }
        Some(Event::SubOrchestrationScheduled {
            instance_id: child, ..
        }) => commit.outbound.push(Outbound::Message {
            instance_id: child.clone(),
            message: Message::Cancel {
                reason: format!("parent '{instance_id}' stopped waiting for it"),
                requested_by: Some(format!("parent '{instance_id}'")),
            },
        }),
        _ => {}
    }
}

fn notify_parent(
    commit: &mut TurnCommit,
    parent: Option<&ParentLink>,
    result: Result<String, Failure>,
) {
    let Some(parent) = parent else { return };
    let message = match result {
        Ok(output) => Message::SubOrchestrationCompleted {
            execution_id: parent.execution_id,
            id: parent.id,
            output,
        },
        Err(failure) => Message::SubOrchestrationFailed {
            execution_id: parent.execution_id,
            id: parent.id,
            failure,
        },
    };
    commit.outbound.push(Outbound::Message {
        instance_id: parent.instance_id.clone(),
        message,
    });
}
