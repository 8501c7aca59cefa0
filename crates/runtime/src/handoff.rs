//! Activity results handed from the worker to the dispatcher in memory.
//!
//! A finished activity's result does not go through the store's inbox: the worker parks it
//! here and wakes the dispatcher, whose next turn for the instance records it in history and
//! deletes the work item in the same commit. That saves a durable write per result. Until that
//! commit the work item stays in the store, leased (and renewed) by this process: if the process
//! dies first, the activity runs again after restart, and its result is still recorded once.

use crate::task::AbortOnDrop;
use sluice_history::Message;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use tokio::sync::OwnedSemaphorePermit;

/// A result waiting for its instance's next turn.
pub(crate) struct LocalResult {
    pub(crate) item_id: u64,
    pub(crate) lock_token: u64,
    pub(crate) instance_id: String,
    /// `ActivityCompleted` or `ActivityFailed`.
    pub(crate) message: Message,
    /// Holds one of the runtime's held-item slots until the result is committed.
    pub(crate) _slot: OwnedSemaphorePermit,
    /// Keeps the work item's lease renewed until the result is committed.
    pub(crate) _renewer: AbortOnDrop,
}

/// Results by instance, and the instances whose turn this runtime is processing.
#[derive(Default)]
pub(crate) struct Handoff {
    results: Mutex<HashMap<String, Vec<LocalResult>>>,
    in_turn: Mutex<HashSet<String>>,
}

impl Handoff {
    fn results(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<LocalResult>>> {
        self.results
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn in_turn(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.in_turn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn push(&self, result: LocalResult) {
        self.results()
            .entry(result.instance_id.clone())
            .or_default()
            .push(result);
    }

    /// Puts results back (after a failed commit), ahead of any that arrived meanwhile.
    pub(crate) fn restore(&self, instance_id: &str, mut results: Vec<LocalResult>) {
        if results.is_empty() {
            return;
        }
        let mut all = self.results();
        let entry = all.entry(instance_id.to_string()).or_default();
        results.append(entry);
        *entry = results;
    }

    pub(crate) fn take(&self, instance_id: &str) -> Vec<LocalResult> {
        self.results().remove(instance_id).unwrap_or_default()
    }

    /// True when some instance has parked results and no turn of ours is processing it.
    pub(crate) fn has_ready(&self) -> bool {
        let in_turn = self.in_turn();
        self.results().keys().any(|id| !in_turn.contains(id))
    }

    /// Up to `max` instances with parked results that no turn of ours is processing and that
    /// `wait` does not hold back.
    pub(crate) fn ready_instances(&self, max: usize, wait: impl Fn(&str) -> bool) -> Vec<String> {
        let in_turn = self.in_turn();
        self.results()
            .keys()
            .filter(|id| !in_turn.contains(*id) && !wait(id))
            .take(max)
            .cloned()
            .collect()
    }

    /// Marks a turn as running.
    pub(crate) fn begin_turn(&self, instance_id: &str) {
        self.in_turn().insert(instance_id.to_string());
    }

    pub(crate) fn end_turn(&self, instance_id: &str) {
        self.in_turn().remove(instance_id);
    }

    /// Everything parked, for the final flush at shutdown.
    pub(crate) fn drain_all(&self) -> Vec<LocalResult> {
        self.results()
            .drain()
            .flat_map(|(_, results)| results)
            .collect()
    }
}
