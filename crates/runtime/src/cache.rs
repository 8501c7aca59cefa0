//! A bounded cache of histories, so a turn usually need not read history back from the store.

use sluice_history::Event;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Histories by instance, valid for one execution and length. Entries are checked against the
/// store's length on every turn, so a stale entry (another process advanced the instance) is
/// never used.
/// Cached history of an instance: its execution id and events.
type Entries = HashMap<String, (u64, Arc<Vec<Event>>)>;

pub(crate) struct HistoryCache {
    entries: Mutex<Entries>,
    instances_max: usize,
}

impl HistoryCache {
    pub(crate) fn new(instances_max: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            instances_max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn get(
        &self,
        instance_id: &str,
        execution_id: u64,
        len: u64,
    ) -> Option<Arc<Vec<Event>>> {
        let entries = self.lock();
        let (cached_execution, history) = entries.get(instance_id)?;
        (*cached_execution == execution_id && history.len() as u64 == len).then(|| history.clone())
    }

    pub(crate) fn put(&self, instance_id: &str, execution_id: u64, history: Arc<Vec<Event>>) {
        if self.instances_max == 0 {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= self.instances_max && !entries.contains_key(instance_id) {
            // Cheap bounded eviction: drop an arbitrary half. Misses only cost a read.
            let victims: Vec<String> = entries
                .keys()
                .take(entries.len() / 2 + 1)
                .cloned()
                .collect();
            for victim in victims {
                entries.remove(&victim);
            }
        }
        entries.insert(instance_id.to_string(), (execution_id, history));
    }

    pub(crate) fn remove(&self, instance_id: &str) {
        self.lock().remove(instance_id);
    }
}
