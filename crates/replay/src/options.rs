//! How an activity is run: one value instead of method variants.

use sluice_history::{RetryPolicy, RetryPolicyError};
use std::time::Duration;

/// The options of one activity call: retry policy, timeouts and task queue.
///
/// ```
/// use sluice_history::{Backoff, RetryPolicy};
/// use sluice_replay::ActivityOptions;
/// use std::time::Duration;
///
/// let options = ActivityOptions::new()
///     .retry(RetryPolicy::attempts(5).with_backoff(Backoff::Exponential {
///         initial_ms: 100,
///         multiplier: 2.0,
///         max_ms: 10_000,
///     }))
///     .attempt_timeout(Duration::from_secs(30))
///     .total_timeout(Duration::from_secs(300))
///     .heartbeat_timeout(Duration::from_secs(10))
///     .queue("gpu");
/// assert_eq!(options.queue_name(), Some("gpu"));
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ActivityOptions {
    retry: Option<RetryPolicy>,
    attempt_timeout: Option<Duration>,
    total_timeout: Option<Duration>,
    heartbeat_timeout: Option<Duration>,
    queue: Option<String>,
}

/// Options that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ActivityOptionsError {
    /// The retry policy cannot work.
    #[error(transparent)]
    Retry(#[from] RetryPolicyError),
    /// A total timeout of zero.
    #[error("the total timeout must be above 0")]
    ZeroTotalTimeout,
}

impl ActivityOptions {
    /// No retry, no timeout, the default task queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Retries failed attempts by `policy` (a failure marked `non_retryable` is never
    /// retried). The policy's own `attempt_timeout_ms`, if set, stands unless
    /// [`ActivityOptions::attempt_timeout`] is set too.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Each attempt is cancelled and counted as failed (code `activity_timed_out`) after this.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// The orchestration sees the activity fail with code `activity_total_timed_out` when it
    /// has not finished this long after it was scheduled, whatever its attempts and retry
    /// waits. It is a durable timer recorded in history beside the activity (so it takes a
    /// command id). The activity is then cancelled like a dropped future (see
    /// `Event::CancelRequested`).
    pub fn total_timeout(mut self, timeout: Duration) -> Self {
        self.total_timeout = Some(timeout);
        self
    }

    /// An attempt that goes this long without calling `ActivityContext::heartbeat` is
    /// cancelled and counted as failed (code `activity_heartbeat_timed_out`), then retried by
    /// the retry policy.
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> Self {
        self.heartbeat_timeout = Some(timeout);
        self
    }

    /// Runs the activity on the task queue `queue`: only runtimes that serve that queue
    /// (`RuntimeOptions::task_queues`) run it.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// The task queue, if one was set.
    pub fn queue_name(&self) -> Option<&str> {
        self.queue.as_deref()
    }

    /// The total timeout, if one was set.
    pub fn total_timeout_value(&self) -> Option<Duration> {
        self.total_timeout
    }

    /// The retry policy as history records it: the per-attempt settings (timeouts) travel in
    /// it, so options with a timeout and no retry give a policy of one attempt.
    pub fn effective_retry(&self) -> Result<Option<RetryPolicy>, ActivityOptionsError> {
        if self.total_timeout == Some(Duration::ZERO) {
            return Err(ActivityOptionsError::ZeroTotalTimeout);
        }
        let needs_policy = self.attempt_timeout.is_some() || self.heartbeat_timeout.is_some();
        let mut policy = match (&self.retry, needs_policy) {
            (Some(policy), _) => policy.clone(),
            (None, true) => RetryPolicy::attempts(1),
            (None, false) => return Ok(None),
        };
        if let Some(timeout) = self.attempt_timeout {
            policy = policy.with_attempt_timeout(timeout);
        }
        if let Some(timeout) = self.heartbeat_timeout {
            policy = policy.with_heartbeat_timeout(timeout);
        }
        policy.validate()?;
        Ok(Some(policy))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_travel_in_the_recorded_policy() {
        assert_eq!(ActivityOptions::new().effective_retry(), Ok(None));
        let policy = ActivityOptions::new()
            .attempt_timeout(Duration::from_millis(1500))
            .heartbeat_timeout(Duration::from_secs(2))
            .effective_retry()
            .unwrap()
            .unwrap();
        assert_eq!(policy.max_attempts, 1);
        assert_eq!(policy.attempt_timeout_ms, Some(1500));
        assert_eq!(policy.heartbeat_timeout_ms, Some(2000));
        let kept = ActivityOptions::new()
            .retry(RetryPolicy::attempts(3).with_attempt_timeout(Duration::from_secs(1)))
            .effective_retry()
            .unwrap()
            .unwrap();
        assert_eq!(
            (kept.max_attempts, kept.attempt_timeout_ms),
            (3, Some(1000))
        );
        assert_eq!(
            ActivityOptions::new()
                .retry(RetryPolicy::attempts(0))
                .effective_retry(),
            Err(ActivityOptionsError::Retry(RetryPolicyError::ZeroAttempts))
        );
        assert_eq!(
            ActivityOptions::new()
                .total_timeout(Duration::ZERO)
                .effective_retry(),
            Err(ActivityOptionsError::ZeroTotalTimeout)
        );
    }
}
