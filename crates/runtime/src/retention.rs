//! Retention: finished instances older than an age are purged in the background, in small
//! batches paced so that the store's foreground work barely notices.
//!
//! Pacing is by measured cost, not by a fixed rate: after each batch the purger pauses for as
//! long as the batch took, times `(100 - busy_percent_max) / busy_percent_max`, so that its
//! transactions occupy at most that share of the time. A store that is slow because it is busy
//! (SQLite's one writer, a loaded PostgreSQL) makes batches take longer, and so the pauses too.
//! When nothing is left to purge it sleeps `sweep_interval` and looks again. Several processes
//! may run it on one PostgreSQL store: each batch takes rows the others do not hold.

use sluice_history::InstanceStatus;
use sluice_store::{Clock, PurgeFilter, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What a background retention purges, and how fast.
#[derive(Clone, Debug, PartialEq)]
pub struct RetentionPolicy {
    /// Finished instances (completed, failed, cancelled, terminated) whose finish is older
    /// than this are purged, with everything stored for them.
    pub finished_older_than: Duration,
    /// Only these final statuses (empty: all four).
    pub statuses: Vec<InstanceStatus>,
    /// Instances purged per transaction.
    pub batch_instances_max: usize,
    /// The share of time, in percent (1 to 100), the purge transactions may take.
    pub busy_percent_max: u32,
    /// How long to wait before looking again once nothing is left to purge.
    pub sweep_interval: Duration,
}

impl RetentionPolicy {
    /// Purge every finished instance older than `age`, 100 per transaction, at most 5% of the
    /// time, looking again every minute.
    pub fn older_than(age: Duration) -> Self {
        Self {
            finished_older_than: age,
            statuses: Vec::new(),
            batch_instances_max: 100,
            busy_percent_max: 5,
            sweep_interval: Duration::from_secs(60),
        }
    }

    /// Why the policy cannot run, if it cannot.
    pub fn invalid(&self) -> Option<String> {
        if self.batch_instances_max == 0 {
            return Some("retention batch_instances_max must be at least 1".into());
        }
        if !(1..=100).contains(&self.busy_percent_max) {
            return Some(format!(
                "retention busy_percent_max must be 1 to 100, not {}",
                self.busy_percent_max
            ));
        }
        if let Some(status) = self.statuses.iter().find(|status| !status.is_terminal()) {
            return Some(format!(
                "retention purges finished instances only, and {} is not a final status",
                status.as_str()
            ));
        }
        None
    }

    /// The pause after a batch that took `took`.
    fn pause_after(&self, took: Duration) -> Duration {
        let busy = f64::from(self.busy_percent_max.clamp(1, 100));
        took.mul_f64((100.0 - busy) / busy)
            .max(Duration::from_millis(1))
    }
}

/// Runs `policy` on `store` until `stop` is cancelled, judging ages by `clock` (the store's).
/// Store errors are logged and retried after `sweep_interval`; they never end the loop.
/// Returns how many instances it purged.
pub async fn run_retention(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    policy: RetentionPolicy,
    stop: CancellationToken,
) -> u64 {
    let age_ms = i64::try_from(policy.finished_older_than.as_millis()).unwrap_or(i64::MAX);
    let mut purged_total = 0u64;
    let mut sweep_purged = 0u64;
    loop {
        let filter = PurgeFilter {
            statuses: policy.statuses.clone(),
            finished_before_ms: clock.now_ms().saturating_sub(age_ms),
            name: None,
        };
        let began = Instant::now();
        let pause = match store.purge_batch(&filter, policy.batch_instances_max).await {
            Ok(0) => {
                if sweep_purged > 0 {
                    tracing::info!(
                        purged = sweep_purged,
                        finished_before_ms = filter.finished_before_ms,
                        "retention purged the finished instances past their age"
                    );
                    sweep_purged = 0;
                }
                policy.sweep_interval
            }
            Ok(removed) => {
                let removed = removed as u64;
                crate::metrics::instances_purged(removed);
                purged_total += removed;
                sweep_purged += removed;
                policy.pause_after(began.elapsed())
            }
            Err(error) => {
                tracing::warn!(%error, "retention could not purge; trying again later");
                policy.sweep_interval
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stop.cancelled() => return purged_total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_keep_the_busy_share() {
        let policy = RetentionPolicy::older_than(Duration::from_secs(1));
        // 5%: a batch of 10 ms is followed by 190 ms of rest.
        assert_eq!(
            policy.pause_after(Duration::from_millis(10)),
            Duration::from_millis(190)
        );
        let all_the_time = RetentionPolicy {
            busy_percent_max: 100,
            ..policy.clone()
        };
        assert_eq!(
            all_the_time.pause_after(Duration::from_millis(10)),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn bad_policies_say_why() {
        let policy = RetentionPolicy::older_than(Duration::from_secs(1));
        assert_eq!(policy.invalid(), None);
        let zero = RetentionPolicy {
            busy_percent_max: 0,
            ..policy.clone()
        };
        assert!(zero.invalid().unwrap().contains("busy_percent_max"));
        let running = RetentionPolicy {
            statuses: vec![InstanceStatus::Running],
            ..policy
        };
        assert!(running.invalid().unwrap().contains("running"));
    }
}
