//! Running one activity attempt: lease renewal, timeout, retry, completion.

use crate::activity::{ActivityContext, Heartbeat};
use crate::handoff::LocalResult;
use crate::metrics;
use crate::poison::backoff;
use crate::runtime::{RunningActivity, Shared};
use crate::task::{AbortOnDrop, CatchUnwind};
use sluice_history::Message;
use sluice_history::{Failure, codes};
use sluice_store::{ActivityResult, ActivityWorkItem, StoreError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

enum Attempt {
    Completed(String),
    Failed(Failure),
    /// Stopped because the instance ended, the lease was lost, or the runtime shuts down.
    Cancelled,
}

/// Runs one held work item: waits for a run slot, runs the attempt, then hands the result to
/// the dispatcher (or schedules the retry). `slot` is the item's held-item slot, kept until its
/// result is committed.
pub(crate) async fn process_activity(
    shared: &Arc<Shared>,
    item: ActivityWorkItem,
    slot: OwnedSemaphorePermit,
) {
    // Registered before anything waits, so that the end of its instance stops the item
    // wherever it is (waiting for a run slot included), not only once it runs.
    let cancellation = CancellationToken::new();
    let lease_lost = Arc::new(AtomicBool::new(false));
    let renewer = AbortOnDrop(
        tokio::spawn(renew_lease(
            shared.clone(),
            item.clone(),
            cancellation.clone(),
            lease_lost.clone(),
        ))
        .abort_handle(),
    );
    let activity = &item.activity;
    let item_key = item.item_id.to_string();
    register(shared, &item, &cancellation);
    let _registration = Registration {
        shared,
        instance_id: &activity.instance_id,
        item_id: item.item_id,
    };
    let deliveries_max = shared.options.activity_deliveries_max;
    if item.attempt > deliveries_max {
        // Its earlier deliveries never answered: each crashed or hung its process. Running it
        // again would do the same, so its instance leaves service until an operator acts.
        return quarantine(shared, &item, deliveries_max).await;
    }
    let outcome = if let Some(unreadable) = &item.unreadable {
        // A newer build may read it: back off like a failed turn, count the attempt.
        let options = &shared.options;
        let delay = backoff(
            item.attempt,
            options.turn_retry_delay_min,
            options.turn_retry_delay_max,
        );
        tracing::error!(
            instance_id = %activity.instance_id,
            activity = %activity.name,
            attempt = item.attempt,
            ?delay,
            %unreadable,
            "activity work item cannot be decoded; it is tried again after a backoff"
        );
        retry(shared, &item, delay).await;
        return;
    } else {
        match shared.registry.activities.get(&activity.name) {
            None => match shared
                .handler_wait
                .missing(&item_key, shared.clock.now_ms())
            {
                Some(true) => {
                    shared.handler_wait.clear(&item_key);
                    Attempt::Failed(Failure::new(
                        codes::ACTIVITY_NOT_REGISTERED,
                        format!(
                            "no activity named '{}' is registered, and no process took the work \
                             item within handler_wait_max ({:?})",
                            activity.name, shared.options.handler_wait_max
                        ),
                    ))
                }
                first_or_waiting => {
                    if first_or_waiting.is_none() {
                        tracing::warn!(
                            instance_id = %activity.instance_id,
                            activity = %activity.name,
                            wait_max = ?shared.options.handler_wait_max,
                            "no activity of this name is registered here; waiting for a process that has it"
                        );
                    }
                    metrics::handler_missing("activity");
                    release(shared, &item, shared.options.poll_interval).await;
                    return;
                }
            },
            Some(code) => {
                let run_slot = match shared.run_slots.clone().try_acquire_owned() {
                    Ok(permit) => permit,
                    Err(_) => {
                        // An end of its instance while it waited cancels its token (in this
                        // process directly, from another one through the lease renewal, which
                        // asks the store every third of the lease whether it is still wanted).
                        // Biased: when the slot frees in the same instant as the cancellation
                        // (the activity that held it stopped for the same cancel), the
                        // cancellation wins.
                        tokio::select! {
                            biased;
                            () = cancellation.cancelled() => return stopped_before_start(shared, &item).await,
                            () = shared.shutdown.cancelled() => {
                                release(shared, &item, Duration::ZERO).await;
                                return;
                            }
                            permit = shared.run_slots.clone().acquire_owned() => permit.expect("never closed"),
                        }
                    }
                };
                if cancellation.is_cancelled() {
                    // Cancelled between the slot's grant and this poll: the code never starts.
                    drop(run_slot);
                    return stopped_before_start(shared, &item).await;
                }
                let outcome = run_attempt(shared, &item, code.clone(), &cancellation).await;
                // The slot is for running code; bookkeeping below does not hold it.
                drop(run_slot);
                outcome
            }
        }
    };
    shared.handler_wait.clear(&item_key);
    if lease_lost.load(Ordering::SeqCst) {
        // Another delivery owns the item now; whatever this one produced is not recorded.
        log_store_error(&item, &StoreError::LeaseLost("activity"));
        return;
    }
    let final_result = match outcome {
        Attempt::Cancelled if shared.shutdown.is_cancelled() => {
            release(shared, &item, Duration::ZERO).await;
            return;
        }
        Attempt::Cancelled => Err(Failure::new(
            codes::CANCELLED,
            "the instance ended before the activity did",
        )),
        Attempt::Completed(output) => Ok(output),
        Attempt::Failed(failure) => match &activity.retry {
            Some(policy) if policy.allows_retry_after(item.attempt) && !failure.non_retryable => {
                let delay = policy.delay_before(item.attempt + 1);
                tracing::debug!(
                    instance_id = %activity.instance_id,
                    activity = %activity.name,
                    attempt = item.attempt,
                    ?delay,
                    %failure,
                    "activity attempt failed; retrying"
                );
                retry(shared, &item, delay).await;
                return;
            }
            _ => Err(failure),
        },
    };
    match &item.orchestration {
        // Another process runs this instance's turns: the result goes through its inbox.
        Some(orchestration) if !shared.orchestration_names.contains(orchestration) => {
            let result = match final_result {
                Ok(output) => ActivityResult::Completed(output),
                Err(failure) => ActivityResult::Failed(failure),
            };
            if let Err(error) = shared
                .store
                .complete_activity(item.item_id, item.lock_token, result)
                .await
            {
                tracing::warn!(
                    instance_id = %activity.instance_id,
                    activity = %activity.name,
                    %error,
                    "the activity's result could not be recorded; it runs again when its lease ends"
                );
            }
            drop((slot, renewer));
        }
        _ => park(shared, item.clone(), final_result, slot, renewer),
    }
}

/// Quarantines the instance of an item delivered more than `deliveries_max` times without a
/// result (code `activity_poisoned`); the item is given back for an operator's retry.
async fn quarantine(shared: &Shared, item: &ActivityWorkItem, deliveries_max: u32) {
    let activity = &item.activity;
    let reason = Failure::new(
        codes::ACTIVITY_POISONED,
        format!(
            "activity '{}' (work item {}) was delivered {} times (limit {deliveries_max}) without \
             a result: its attempts crashed or hung their processes, or its retry policy allows \
             more attempts than the limit{}",
            activity.name,
            item.item_id,
            item.attempt,
            item.unreadable
                .as_deref()
                .map(|why| format!("; its work item is unreadable: {why}"))
                .unwrap_or_default()
        ),
    );
    tracing::error!(
        instance_id = %activity.instance_id,
        activity = %activity.name,
        attempt = item.attempt,
        %reason,
        "instance quarantined: an activity kept crashing its process; nothing of it runs until an operator acts"
    );
    match shared
        .store
        .quarantine_activity(item.item_id, item.lock_token, reason)
        .await
    {
        Ok(()) => {
            metrics::activity_quarantined();
            shared.cache.remove(&activity.instance_id);
            shared.handler_wait.clear(&item.item_id.to_string());
        }
        Err(error) => log_store_error(item, &error),
    }
}

/// Hands a final result to the dispatcher: the instance's next turn records it.
fn park(
    shared: &Shared,
    item: ActivityWorkItem,
    result: Result<String, Failure>,
    slot: OwnedSemaphorePermit,
    renewer: AbortOnDrop,
) {
    let (execution_id, id) = (item.activity.execution_id, item.activity.activity_id);
    let message = match result {
        Ok(output) => Message::ActivityCompleted {
            execution_id,
            id,
            output,
        },
        Err(failure) => Message::ActivityFailed {
            execution_id,
            id,
            failure,
        },
    };
    shared.handoff.push(LocalResult {
        item_id: item.item_id,
        lock_token: item.lock_token,
        instance_id: item.activity.instance_id,
        message,
        _slot: slot,
        _renewer: renewer,
    });
    shared.store.signals().orchestrations.notify_one();
}

/// The instance ended while the item waited to run: it never starts. Its work item is
/// released uncounted; the store deletes it (work of a finished instance is never handed out).
async fn stopped_before_start(shared: &Shared, item: &ActivityWorkItem) {
    tracing::debug!(
        instance_id = %item.activity.instance_id,
        activity = %item.activity.name,
        "activity not started: its instance ended"
    );
    release(shared, item, Duration::ZERO).await;
}

/// Unregisters a held item's cancellation token when its processing ends, however it ends.
struct Registration<'a> {
    shared: &'a Shared,
    instance_id: &'a str,
    item_id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        unregister(self.shared, self.instance_id, self.item_id);
    }
}

/// Gives a work item back for another attempt after `delay` (counted).
async fn retry(shared: &Shared, item: &ActivityWorkItem, delay: Duration) {
    if let Err(error) = shared
        .store
        .retry_activity(item.item_id, item.lock_token, delay)
        .await
    {
        log_store_error(item, &error);
    }
}

/// Gives a work item back uncounted (it did not run): at shutdown, visible at once, so a
/// restart takes it without waiting for its lease; without a handler, after `delay`.
async fn release(shared: &Shared, item: &ActivityWorkItem, delay: Duration) {
    if let Err(error) = shared
        .store
        .release_activity(item.item_id, item.lock_token, delay)
        .await
    {
        log_store_error(item, &error);
    }
}

fn log_store_error(item: &ActivityWorkItem, error: &StoreError) {
    let activity = &item.activity;
    match error {
        StoreError::LeaseLost(_) => tracing::warn!(
            instance_id = %activity.instance_id,
            activity = %activity.name,
            "activity result discarded: its lease was lost (another attempt owns it)"
        ),
        error => tracing::error!(
            instance_id = %activity.instance_id,
            activity = %activity.name,
            %error,
            "recording an activity result failed; it will run again"
        ),
    }
}

async fn run_attempt(
    shared: &Arc<Shared>,
    item: &ActivityWorkItem,
    code: Arc<dyn crate::registry::Activity>,
    cancellation: &CancellationToken,
) -> Attempt {
    let activity = &item.activity;
    let lease = shared.options.activity_lease;
    let heartbeat = Arc::new(Heartbeat::new());
    let ctx = ActivityContext {
        instance_id: activity.instance_id.clone(),
        activity_id: activity.activity_id,
        name: activity.name.clone(),
        attempt: item.attempt,
        cancellation: cancellation.clone(),
        store: shared.store.clone(),
        item_id: item.item_id,
        lock_token: item.lock_token,
        lease,
        heartbeat: heartbeat.clone(),
    };
    // The activity runs in place (no task of its own: one wake-up less per activity); a panic
    // is caught at each poll and reported, and dropping the future cancels it.
    let running = CatchUnwind(code.run(ctx, activity.input.clone()));
    let timeout = activity
        .retry
        .as_ref()
        .and_then(|policy| policy.attempt_timeout_ms)
        .map(Duration::from_millis);
    let heartbeat_limit = activity
        .retry
        .as_ref()
        .and_then(|policy| policy.heartbeat_timeout_ms)
        .map(Duration::from_millis);
    let silent = async {
        match heartbeat_limit {
            Some(limit) => heartbeat.expired(limit).await,
            None => std::future::pending().await,
        }
    };
    let finished = async {
        match timeout {
            Some(limit) => tokio::time::timeout(limit, running)
                .await
                .map_err(|_| limit),
            None => Ok(running.await),
        }
    };
    let outcome = tokio::select! {
        finished = finished => match finished {
            Ok(Ok(Ok(output))) => Attempt::Completed(output),
            Ok(Ok(Err(failure))) => Attempt::Failed(failure),
            Ok(Err(panic)) => Attempt::Failed(Failure::new(
                codes::ACTIVITY_PANICKED,
                format!("activity '{}' panicked: {panic}", activity.name),
            )),
            Err(limit) => {
                cancellation.cancel();
                Attempt::Failed(Failure::new(
                    codes::ACTIVITY_TIMED_OUT,
                    format!("activity '{}' attempt {} exceeded {limit:?}", activity.name, item.attempt),
                ))
            }
        },
        () = silent => {
            cancellation.cancel();
            Attempt::Failed(Failure::new(
                codes::ACTIVITY_HEARTBEAT_TIMED_OUT,
                format!(
                    "activity '{}' attempt {} sent no heartbeat for {:?}",
                    activity.name,
                    item.attempt,
                    heartbeat_limit.unwrap_or_default()
                ),
            ))
        }
        () = cancellation.cancelled() => Attempt::Cancelled,
    };
    outcome
}

/// Renews the item's lease every third of it, from the moment it is held until its result is
/// committed; cancels the running attempt when the lease is lost or the instance no longer
/// wants the result.
async fn renew_lease(
    shared: Arc<Shared>,
    item: ActivityWorkItem,
    cancellation: CancellationToken,
    lease_lost: Arc<AtomicBool>,
) {
    let lease = shared.options.activity_lease;
    loop {
        tokio::time::sleep(lease / 3).await;
        match shared
            .store
            .renew_activity_lease(item.item_id, item.lock_token, lease)
            .await
        {
            Ok(true) => {}
            Ok(false) => shared.cancel_activities_of(&item.activity.instance_id),
            Err(StoreError::LeaseLost(_)) => {
                // Only this item stops (its siblings hold leases of their own), and it records
                // nothing: the item's next holder will.
                tracing::warn!(instance_id = %item.activity.instance_id, activity = %item.activity.name, "activity lease lost");
                lease_lost.store(true, Ordering::SeqCst);
                cancellation.cancel();
                return;
            }
            Err(error) => {
                tracing::warn!(instance_id = %item.activity.instance_id, %error, "activity lease renewal failed");
            }
        }
    }
}

fn register(shared: &Shared, item: &ActivityWorkItem, token: &CancellationToken) {
    shared
        .running_activities
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(item.activity.instance_id.clone())
        .or_default()
        .push(RunningActivity {
            item_id: item.item_id,
            execution_id: item.activity.execution_id,
            activity_id: item.activity.activity_id,
            token: token.clone(),
        });
}

fn unregister(shared: &Shared, instance_id: &str, item_id: u64) {
    let mut running = shared
        .running_activities
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(list) = running.get_mut(instance_id) {
        list.retain(|running| running.item_id != item_id);
        if list.is_empty() {
            running.remove(instance_id);
        }
    }
}
