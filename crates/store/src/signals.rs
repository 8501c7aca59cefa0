use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// In-process wake-ups: a store fires them after a commit makes work visible or finishes an
/// instance, so dispatchers and waiters react at once instead of polling.
#[derive(Debug, Default)]
pub struct Signals {
    /// New or earlier-due orchestration messages.
    pub orchestrations: Notify,
    /// New activity work items.
    pub activities: Notify,
    finished: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Signals {
    /// The notifier fired when `instance_id` finishes. Enable the `notified()` future before
    /// checking the status, then await it, so a finish between the two is not missed.
    pub fn finished_notifier(&self, instance_id: &str) -> Arc<Notify> {
        let mut map = self
            .finished
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(instance_id.to_string()).or_default().clone()
    }

    /// Wakes everybody waiting for any instance to finish (each re-reads its status): for a
    /// store that learns of finishes elsewhere without knowing which.
    pub fn notify_all_finished(&self) {
        let all: Vec<Arc<Notify>> = self
            .finished
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain()
            .map(|(_, notify)| notify)
            .collect();
        for notify in all {
            notify.notify_waiters();
        }
    }

    /// Wakes everybody waiting for `instance_id` to finish.
    pub fn notify_finished(&self, instance_id: &str) {
        let notify = self
            .finished
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(instance_id);
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
    }
}
