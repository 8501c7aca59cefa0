use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How an activity is retried when an attempt fails or times out. A failure marked
/// [`non_retryable`](crate::Failure::non_retryable) is never retried.
///
/// Retries are durable: a failed attempt puts the work item back in the store, invisible until
/// the backoff has passed, so a crash during the wait does not forget the retry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in total, the first included. 1 means no retry.
    pub max_attempts: u32,
    /// The wait before each retry.
    pub backoff: Backoff,
    /// Each attempt is cancelled and counted as failed after this long; `None` means no limit.
    pub attempt_timeout_ms: Option<u64>,
    /// An attempt that goes this long without calling its context's `heartbeat` is cancelled
    /// and counted as failed (code `activity_heartbeat_timed_out`); `None` means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout_ms: Option<u64>,
}

/// The wait before a retry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Backoff {
    /// The same delay before every retry.
    Fixed {
        /// The delay.
        delay_ms: u64,
    },
    /// `initial_ms + step_ms * (retry - 1)`, capped at `max_ms`.
    Linear {
        /// Delay before the first retry.
        initial_ms: u64,
        /// Added for each further retry.
        step_ms: u64,
        /// Upper bound.
        max_ms: u64,
    },
    /// `initial_ms * multiplier^(retry - 1)`, capped at `max_ms`.
    Exponential {
        /// Delay before the first retry.
        initial_ms: u64,
        /// Growth factor, at least 1.
        multiplier: f64,
        /// Upper bound.
        max_ms: u64,
    },
}

/// A retry policy that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RetryPolicyError {
    /// `max_attempts` was 0.
    #[error("max_attempts must be at least 1")]
    ZeroAttempts,
    /// An exponential multiplier below 1 or not finite.
    #[error("multiplier must be a finite number >= 1, got {0}")]
    BadMultiplier(String),
    /// A cap below the initial delay.
    #[error("max_ms ({max_ms}) is below initial_ms ({initial_ms})")]
    CapBelowInitial {
        /// The initial delay.
        initial_ms: u64,
        /// The cap.
        max_ms: u64,
    },
    /// A per-attempt timeout of zero.
    #[error("attempt_timeout_ms must be above 0")]
    ZeroTimeout,
    /// A heartbeat timeout of zero.
    #[error("heartbeat_timeout_ms must be above 0")]
    ZeroHeartbeatTimeout,
}

impl RetryPolicy {
    /// A policy of `max_attempts` with no delay between attempts and no timeout.
    pub fn attempts(max_attempts: u32) -> Self {
        Self {
            max_attempts,
            backoff: Backoff::Fixed { delay_ms: 0 },
            attempt_timeout_ms: None,
            heartbeat_timeout_ms: None,
        }
    }

    /// Sets the backoff.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets the per-attempt timeout.
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout_ms = Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// Sets the heartbeat timeout.
    pub fn with_heartbeat_timeout(mut self, timeout: Duration) -> Self {
        self.heartbeat_timeout_ms = Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// Checks that the policy can work.
    pub fn validate(&self) -> Result<(), RetryPolicyError> {
        if self.max_attempts == 0 {
            return Err(RetryPolicyError::ZeroAttempts);
        }
        if self.attempt_timeout_ms == Some(0) {
            return Err(RetryPolicyError::ZeroTimeout);
        }
        if self.heartbeat_timeout_ms == Some(0) {
            return Err(RetryPolicyError::ZeroHeartbeatTimeout);
        }
        match self.backoff {
            Backoff::Fixed { .. } => Ok(()),
            Backoff::Linear {
                initial_ms, max_ms, ..
            } if max_ms < initial_ms => {
                Err(RetryPolicyError::CapBelowInitial { initial_ms, max_ms })
            }
            Backoff::Exponential {
                initial_ms, max_ms, ..
            } if max_ms < initial_ms => {
                Err(RetryPolicyError::CapBelowInitial { initial_ms, max_ms })
            }
            Backoff::Exponential { multiplier, .. }
                if !multiplier.is_finite() || multiplier < 1.0 =>
            {
                Err(RetryPolicyError::BadMultiplier(multiplier.to_string()))
            }
            _ => Ok(()),
        }
    }

    /// The wait before attempt number `next_attempt` (2 for the first retry).
    pub fn delay_before(&self, next_attempt: u32) -> Duration {
        let retry = u64::from(next_attempt.saturating_sub(1).max(1));
        let ms = match self.backoff {
            Backoff::Fixed { delay_ms } => delay_ms,
            Backoff::Linear {
                initial_ms,
                step_ms,
                max_ms,
            } => initial_ms
                .saturating_add(step_ms.saturating_mul(retry - 1))
                .min(max_ms),
            Backoff::Exponential {
                initial_ms,
                multiplier,
                max_ms,
            } => {
                let exponent = i32::try_from(retry - 1).unwrap_or(i32::MAX);
                let delay = initial_ms as f64 * multiplier.powi(exponent);
                if delay.is_finite() && delay < max_ms as f64 {
                    delay as u64
                } else {
                    max_ms
                }
            }
        };
        Duration::from_millis(ms)
    }

    /// True when an attempt numbered `attempt` (1-based) that failed may be retried.
    pub fn allows_retry_after(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_shapes() {
        let fixed = RetryPolicy::attempts(3).with_backoff(Backoff::Fixed { delay_ms: 5 });
        assert_eq!(fixed.delay_before(2), Duration::from_millis(5));
        assert_eq!(fixed.delay_before(3), Duration::from_millis(5));

        let linear = RetryPolicy::attempts(9).with_backoff(Backoff::Linear {
            initial_ms: 10,
            step_ms: 5,
            max_ms: 22,
        });
        let delays: Vec<u128> = (2..=5)
            .map(|a| linear.delay_before(a).as_millis())
            .collect();
        assert_eq!(delays, vec![10, 15, 20, 22]);

        let exponential = RetryPolicy::attempts(9).with_backoff(Backoff::Exponential {
            initial_ms: 10,
            multiplier: 2.0,
            max_ms: 50,
        });
        let delays: Vec<u128> = (2..=6)
            .map(|a| exponential.delay_before(a).as_millis())
            .collect();
        assert_eq!(delays, vec![10, 20, 40, 50, 50]);
        assert!(exponential.allows_retry_after(8));
        assert!(!exponential.allows_retry_after(9));
    }

    #[test]
    fn invalid_policies_are_rejected() {
        assert_eq!(
            RetryPolicy::attempts(0).validate(),
            Err(RetryPolicyError::ZeroAttempts)
        );
        let bad = RetryPolicy::attempts(2).with_backoff(Backoff::Exponential {
            initial_ms: 10,
            multiplier: 0.5,
            max_ms: 50,
        });
        assert!(matches!(
            bad.validate(),
            Err(RetryPolicyError::BadMultiplier(_))
        ));
        let capped = RetryPolicy::attempts(2).with_backoff(Backoff::Linear {
            initial_ms: 10,
            step_ms: 1,
            max_ms: 5,
        });
        assert!(matches!(
            capped.validate(),
            Err(RetryPolicyError::CapBelowInitial { .. })
        ));
    }
}
