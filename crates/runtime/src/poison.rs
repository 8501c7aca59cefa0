//! Bookkeeping for work that does not go through: turns that failed (their backoff and how
//! often they failed in this process) and work whose code this process lacks (since when).
//!
//! The store counts deliveries durably (that is what survives crashes); this counts what the
//! store cannot see: failures of turns that carry no stored message (results held in memory)
//! and when each such turn may be tried again, so that the fetch loop does not offer it again at
//! once.

use sluice_history::TimestampMs;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The delay before delivery `delivery + 1` of something that failed on delivery `delivery`:
/// `min` doubled per delivery, capped at `max`.
pub(crate) fn backoff(delivery: u32, min: Duration, max: Duration) -> Duration {
    let doublings = delivery.saturating_sub(1).min(30);
    min.saturating_mul(1 << doublings).min(max)
}

#[derive(Clone, Copy, Debug)]
struct Failed {
    /// Failed deliveries in a row, in this process.
    count: u32,
    /// Not offered again before this time (store clock).
    retry_at_ms: TimestampMs,
}

/// Failed turns by instance.
#[derive(Default)]
pub(crate) struct TurnFailures(Mutex<HashMap<String, Failed>>);

impl TurnFailures {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Failed>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Failed deliveries of the instance's turn in a row, in this process.
    pub(crate) fn count(&self, instance_id: &str) -> u32 {
        self.map().get(instance_id).map_or(0, |failed| failed.count)
    }

    /// Records a failed delivery, to be tried again from `retry_at_ms` on.
    pub(crate) fn record(&self, instance_id: &str, retry_at_ms: TimestampMs) {
        let mut map = self.map();
        let entry = map.entry(instance_id.to_string()).or_insert(Failed {
            count: 0,
            retry_at_ms,
        });
        entry.count = entry.count.saturating_add(1);
        entry.retry_at_ms = retry_at_ms;
    }

    /// Holds the instance back until `retry_at_ms` without counting a failure (its turn did not
    /// run: no handler in this process).
    pub(crate) fn defer(&self, instance_id: &str, retry_at_ms: TimestampMs) {
        self.map()
            .entry(instance_id.to_string())
            .or_insert(Failed {
                count: 0,
                retry_at_ms,
            })
            .retry_at_ms = retry_at_ms;
    }

    /// Forgets the instance (its turn committed, or it was quarantined).
    pub(crate) fn clear(&self, instance_id: &str) {
        self.map().remove(instance_id);
    }

    /// Whether the instance is backing off at `now_ms`.
    pub(crate) fn backing_off(&self, instance_id: &str, now_ms: TimestampMs) -> bool {
        self.map()
            .get(instance_id)
            .is_some_and(|failed| failed.retry_at_ms > now_ms)
    }

    /// The earliest retry time after `now_ms`, for the fetch loop's sleep.
    pub(crate) fn next_retry_at(&self, now_ms: TimestampMs) -> Option<TimestampMs> {
        self.map()
            .values()
            .map(|failed| failed.retry_at_ms)
            .filter(|at| *at > now_ms)
            .min()
    }
}

/// Since when this process has been lacking the code for a piece of work (a turn, by instance
/// id; an activity, by work item id).
pub(crate) struct HandlerWait {
    since: Mutex<HashMap<String, TimestampMs>>,
    wait_max_ms: i64,
}

impl HandlerWait {
    pub(crate) fn new(wait_max: Duration) -> Self {
        Self {
            since: Mutex::new(HashMap::new()),
            wait_max_ms: i64::try_from(wait_max.as_millis()).unwrap_or(i64::MAX),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, TimestampMs>> {
        self.since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notes that the code for `key` is missing at `now_ms`. Returns `None` the first time, and
    /// then whether the wait is over.
    pub(crate) fn missing(&self, key: &str, now_ms: TimestampMs) -> Option<bool> {
        let mut map = self.map();
        // Entries of work that another process took over are never cleared by this one: drop
        // them once they are well past any use, so the map stays bounded by recent work.
        let stale = now_ms.saturating_sub(self.wait_max_ms.saturating_mul(2));
        if map.len() > 1_024 {
            map.retain(|_, since| *since > stale);
        }
        match map.get(key) {
            None => {
                map.insert(key.to_string(), now_ms);
                None
            }
            Some(since) => Some(now_ms.saturating_sub(*since) >= self.wait_max_ms),
        }
    }

    /// Forgets `key` (its code was found, or the work was failed).
    pub(crate) fn clear(&self, key: &str) {
        self.map().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(60));
        assert_eq!(backoff(1, min, max), Duration::from_millis(100));
        assert_eq!(backoff(2, min, max), Duration::from_millis(200));
        assert_eq!(backoff(4, min, max), Duration::from_millis(800));
        assert_eq!(backoff(11, min, max), Duration::from_secs(60));
        assert_eq!(backoff(u32::MAX, min, max), Duration::from_secs(60));
        assert_eq!(backoff(0, min, max), Duration::from_millis(100));
    }

    #[test]
    fn handler_wait_is_measured_from_the_first_miss() {
        let wait = HandlerWait::new(Duration::from_millis(500));
        assert_eq!(wait.missing("a", 1_000), None);
        assert_eq!(wait.missing("a", 1_499), Some(false));
        assert_eq!(wait.missing("a", 1_500), Some(true));
        wait.clear("a");
        assert_eq!(wait.missing("a", 2_000), None);
    }

    #[test]
    fn failures_count_and_back_off() {
        let failures = TurnFailures::default();
        failures.record("a", 200);
        failures.record("a", 400);
        assert_eq!(failures.count("a"), 2);
        assert!(failures.backing_off("a", 399));
        assert!(!failures.backing_off("a", 400));
        assert_eq!(failures.next_retry_at(100), Some(400));
        failures.clear("a");
        assert_eq!(failures.count("a"), 0);
        assert_eq!(failures.next_retry_at(100), None);
    }
}

/// The turns this runtime is running, for one renewal task that extends the leases of those
/// running longer than a third of it (most turns finish long before; no task per turn).
#[derive(Default)]
pub(crate) struct RunningTurns(Mutex<HashMap<String, (u64, std::time::Instant)>>);

impl RunningTurns {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, std::time::Instant)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a turn until the guard is dropped.
    pub(crate) fn hold<'a>(&'a self, instance_id: &str, lock_token: u64) -> RunningTurn<'a> {
        self.map().insert(
            instance_id.to_string(),
            (lock_token, std::time::Instant::now()),
        );
        RunningTurn {
            turns: self,
            instance_id: instance_id.to_string(),
        }
    }

    /// Whether no turn is running.
    pub(crate) fn is_empty(&self) -> bool {
        self.map().is_empty()
    }

    /// Turns whose lease was last taken or renewed at least `age` ago, marked as renewed now.
    pub(crate) fn due(&self, age: Duration) -> Vec<(String, u64)> {
        let now = std::time::Instant::now();
        self.map()
            .iter_mut()
            .filter(|(_, (_, since))| now.duration_since(*since) >= age)
            .map(|(id, (token, since))| {
                *since = now;
                (id.clone(), *token)
            })
            .collect()
    }
}

/// A running turn's registration.
pub(crate) struct RunningTurn<'a> {
    turns: &'a RunningTurns,
    instance_id: String,
}

impl Drop for RunningTurn<'_> {
    fn drop(&mut self) {
        self.turns.map().remove(&self.instance_id);
    }
}
