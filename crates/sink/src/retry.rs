//! Backoff between retries of a transient failure: exponential, capped, with jitter.

use std::time::Duration;

/// Delays for retry 1, 2, 3, ...: `initial * 2^(n-1)`, capped at `max`, of which the upper
/// half is random ("equal jitter"). The fixed half keeps a retry from coming at once; the
/// random half spreads lanes and processes that failed together so they do not retry in step.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Backoff {
    pub(crate) initial: Duration,
    pub(crate) max: Duration,
}

impl Backoff {
    /// The ceiling of the delay before retry `retry` (1-based), before jitter.
    pub(crate) fn ceiling(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(32);
        self.initial
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.max)
    }

    /// The delay before retry `retry` (1-based), jittered.
    pub(crate) fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        let micros = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
        let fixed = micros / 2;
        Duration::from_micros(fixed + fastrand::u64(0..=micros - fixed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_bounded_jitter() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1_000),
        };
        assert_eq!(backoff.ceiling(1), Duration::from_millis(100));
        assert_eq!(backoff.ceiling(2), Duration::from_millis(200));
        assert_eq!(backoff.ceiling(4), Duration::from_millis(800));
        assert_eq!(backoff.ceiling(5), Duration::from_millis(1_000));
        assert_eq!(backoff.ceiling(100), Duration::from_millis(1_000));
        let mut distinct = std::collections::BTreeSet::new();
        for retry in 1..=40 {
            let delay = backoff.delay(retry);
            let ceiling = backoff.ceiling(retry);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} vs {ceiling:?}"
            );
            distinct.insert(delay);
        }
        assert!(distinct.len() > 10, "jitter varies the delays");
    }
}
