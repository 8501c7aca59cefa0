//! Running one activity attempt: lease renewal, timeout, retry, completion.

use crate::activity::ActivityContext;
use crate::handoff::{AbortOnDrop, LocalResult};
use crate::runtime::Shared;
use sluice_history::Message;
use sluice_history::{Failure, codes};
use sluice_store::{ActivityWorkItem, StoreError};
use std::sync::Arc;
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
    let renewer =
        AbortOnDrop(tokio::spawn(renew_lease(shared.clone(), item.clone())).abort_handle());
    let activity = &item.activity;
    let outcome = if item.attempt > shared.options.activity_deliveries_max {
        Attempt::Failed(Failure::new(
            codes::POISONED,
            format!(
                "activity '{}' was delivered {} times (limit {}); the work item is poisoned",
                activity.name, item.attempt, shared.options.activity_deliveries_max
            ),
        ))
    } else {
        match shared.registry.activities.get(&activity.name) {
            None => Attempt::Failed(Failure::new(
                codes::ACTIVITY_NOT_REGISTERED,
                format!("no activity named '{}' is registered", activity.name),
            )),
            Some(code) => {
                let run_slot = tokio::select! {
                    permit = shared.run_slots.clone().acquire_owned() => permit.expect("never closed"),
                    () = shared.shutdown.cancelled() => {
                        release(shared, &item).await;
                        return;
                    }
                };
                let outcome = run_attempt(shared, &item, code.clone()).await;
                // The slot is for running code; bookkeeping below does not hold it.
                drop(run_slot);
                outcome
            }
        }
    };
    let message = |result: Result<String, Failure>| {
        let (execution_id, id) = (activity.execution_id, activity.activity_id);
        match result {
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
        }
    };
    let final_result = match outcome {
        Attempt::Cancelled if shared.shutdown.is_cancelled() => {
            release(shared, &item).await;
            return;
        }
        Attempt::Cancelled => Err(Failure::new(
            codes::CANCELLED,
            "the instance ended before the activity did",
        )),
        Attempt::Completed(output) => Ok(output),
        Attempt::Failed(failure) => match &activity.retry {
            Some(policy)
                if policy.allows_retry_after(item.attempt) && failure.code != codes::POISONED =>
            {
                let delay = policy.delay_before(item.attempt + 1);
                tracing::debug!(
                    instance_id = %activity.instance_id,
                    activity = %activity.name,
                    attempt = item.attempt,
                    ?delay,
                    %failure,
                    "activity attempt failed; retrying"
                );
                if let Err(error) = shared
                    .store
                    .retry_activity(item.item_id, item.lock_token, delay)
                    .await
                {
                    log_store_error(&item, &error);
                }
                return;
            }
            _ => Err(failure),
        },
    };
    shared.handoff.push(LocalResult {
        item_id: item.item_id,
        lock_token: item.lock_token,
        instance_id: activity.instance_id.clone(),
        message: message(final_result),
        _slot: slot,
        _renewer: renewer,
    });
    shared.store.signals().orchestrations.notify_one();
}

/// Gives a work item back at shutdown, visible at once, so a restart takes it without waiting
/// for its lease.
async fn release(shared: &Shared, item: &ActivityWorkItem) {
    if let Err(error) = shared
        .store
        .retry_activity(item.item_id, item.lock_token, Duration::ZERO)
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
) -> Attempt {
    let activity = &item.activity;
    let cancellation = CancellationToken::new();
    register(shared, &activity.instance_id, item.item_id, &cancellation);
    let lease = shared.options.activity_lease;
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
    };
    // The activity runs in place (no task of its own: one wake-up less per activity); a panic
    // is caught at each poll and reported, and dropping the future cancels it.
    let running = CatchUnwind(code.run(ctx, activity.input.clone()));
    let timeout = activity
        .retry
        .as_ref()
        .and_then(|policy| policy.attempt_timeout_ms)
        .map(Duration::from_millis);
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
                format!("activity '{}' panicked: {}", activity.name, panic_text(panic.as_ref())),
            )),
            Err(limit) => {
                cancellation.cancel();
                Attempt::Failed(Failure::new(
                    codes::ACTIVITY_TIMED_OUT,
                    format!("activity '{}' attempt {} exceeded {limit:?}", activity.name, item.attempt),
                ))
            }
        },
        () = cancellation.cancelled() => Attempt::Cancelled,
    };
    unregister(shared, &activity.instance_id, item.item_id);
    outcome
}

/// Polls an activity future, turning a panic into an error value.
struct CatchUnwind(crate::registry::BoxedActivityFuture);

impl std::future::Future for CatchUnwind {
    type Output = Result<Result<String, Failure>, Box<dyn std::any::Any + Send>>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let future = &mut self.0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(std::task::Poll::Ready(result)) => std::task::Poll::Ready(Ok(result)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic payload".to_string())
}

/// Renews the item's lease every third of it, from the moment it is held until its result is
/// committed; cancels the running attempt when the lease is lost or the instance no longer
/// wants the result.
async fn renew_lease(shared: Arc<Shared>, item: ActivityWorkItem) {
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
            Err(error) => {
                tracing::warn!(instance_id = %item.activity.instance_id, %error, "activity lease renewal failed");
                if matches!(error, StoreError::LeaseLost(_)) {
                    shared.cancel_activities_of(&item.activity.instance_id);
                    return;
                }
            }
        }
    }
}

fn register(shared: &Shared, instance_id: &str, item_id: u64, token: &CancellationToken) {
    shared
        .running_activities
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(instance_id.to_string())
        .or_default()
        .push((item_id, token.clone()));
}

fn unregister(shared: &Shared, instance_id: &str, item_id: u64) {
    let mut running = shared
        .running_activities
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(list) = running.get_mut(instance_id) {
        list.retain(|(id, _)| *id != item_id);
        if list.is_empty() {
            running.remove(instance_id);
        }
    }
}
