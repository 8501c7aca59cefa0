//! Adaptive flush concurrency (at-least-once): how many lanes may write at the same time.
//!
//! Every lane keeps its own queue (rows of one key stay on one lane, in order), but a batch
//! waits for a *slot* before it is written, and the number of slots follows the load between 1
//! and `flush_concurrency`, so a pooled backend keeps only the connections the load needs open
//! and busy (the pool closes the ones left idle):
//!
//! - **Up at once under pressure.** A window (`ADJUST_WINDOW`) in which writers waited for
//!   buffer space for more than `BLOCKED_SHARE` of it (the sink is behind) or a batch waited
//!   for a slot longer than the flush interval raises the limit by one.
//! - **Down when one slot fewer would have done.** After `CALM_WINDOWS` windows without
//!   pressure in which the slots were in use for less than `limit - 1` slots' worth of time (at
//!   most `SHRINK_USE` of it), the limit drops by one. If that was too few, the next window's
//!   pressure raises it again.
//!
//! The limit starts at `flush_concurrency`: a sink at full rate never waits for the policy.
//! Exactly-once lanes hold a transaction (and its connection) each for the whole checkpoint,
//! so they take no slots.

use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Length of one observation window.
pub(crate) const ADJUST_WINDOW: Duration = Duration::from_secs(1);
/// Windows without pressure before the limit may drop.
pub(crate) const CALM_WINDOWS: u32 = 2;
/// The limit drops when slot use stayed within this share of one slot fewer.
const SHRINK_USE: f64 = 0.95;
/// Writers waiting for buffer space longer than this share of a window is pressure (a short
/// wait at a burst is not worth another connection).
const BLOCKED_SHARE: f64 = 0.02;

struct SlotState {
    limit: usize,
    in_use: usize,
    /// Slot-time used in the current window (in-use slots integrated over time).
    used: Duration,
    last_change: Instant,
    window_start: Instant,
    /// Time writers waited for buffer space in the current window.
    blocked: Duration,
    pressure: bool,
    calm_windows: u32,
}

/// The slots: a counting limit that moves with the load.
pub(crate) struct FlushSlots {
    max: usize,
    /// A batch waiting longer than this for a slot is pressure (the flush interval).
    patience: Duration,
    state: Mutex<SlotState>,
    freed: Notify,
}

/// A slot held for one batch; dropping it frees the slot.
pub(crate) struct Slot<'a> {
    slots: &'a FlushSlots,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.slots.update(Instant::now(), |state| state.in_use -= 1);
        self.slots.freed.notify_waiters();
    }
}

impl FlushSlots {
    pub(crate) fn new(max: usize, patience: Duration) -> FlushSlots {
        let now = Instant::now();
        FlushSlots {
            max,
            patience,
            state: Mutex::new(SlotState {
                limit: max,
                in_use: 0,
                used: Duration::ZERO,
                last_change: now,
                window_start: now,
                blocked: Duration::ZERO,
                pressure: false,
                calm_windows: 0,
            }),
            freed: Notify::new(),
        }
    }

    /// The current limit.
    pub(crate) fn limit(&self) -> usize {
        self.lock().limit
    }

    /// Waits for a free slot.
    pub(crate) async fn acquire(&self) -> Slot<'_> {
        let asked = Instant::now();
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a slot freed in between wakes this waiter.
            freed.as_mut().enable();
            let now = Instant::now();
            let patience = self.patience;
            let taken = self.update(now, |state| {
                if now.duration_since(asked) > patience {
                    state.pressure = true;
                }
                let free = state.in_use < state.limit;
                if free {
                    state.in_use += 1;
                }
                free
            });
            if taken {
                return Slot { slots: self };
            }
            freed.await;
        }
    }

    /// A writer waited `waited` for buffer space: the sink is behind its producers.
    pub(crate) fn note_backpressure(&self, waited: Duration) {
        self.update(Instant::now(), |state| state.blocked += waited);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies `change` at `now`, accounting slot use and closing the window when it is over.
    fn update<T>(&self, now: Instant, change: impl FnOnce(&mut SlotState) -> T) -> T {
        let (result, raised) = {
            let mut state = self.lock();
            let elapsed = now.saturating_duration_since(state.last_change);
            let in_use = u32::try_from(state.in_use).unwrap_or(u32::MAX);
            state.used += elapsed * in_use;
            state.last_change = now;
            let before = state.limit;
            if now.saturating_duration_since(state.window_start) >= ADJUST_WINDOW {
                adjust(&mut state, self.max, now);
            }
            let result = change(&mut state);
            (result, state.limit > before)
        };
        if raised {
            self.freed.notify_waiters();
        }
        result
    }
}

/// Closes the window: moves the limit by the policy in the module docs.
fn adjust(state: &mut SlotState, max: usize, now: Instant) {
    let window = now.saturating_duration_since(state.window_start);
    // Average slots in use over the window.
    let use_slots = state.used.as_secs_f64() / window.as_secs_f64().max(1e-9);
    if state.pressure || state.blocked.as_secs_f64() > window.as_secs_f64() * BLOCKED_SHARE {
        state.calm_windows = 0;
        if state.limit < max {
            state.limit += 1;
            tracing::debug!(limit = state.limit, "Flush concurrency raised.");
        }
    } else {
        state.calm_windows += 1;
        if state.calm_windows >= CALM_WINDOWS
            && state.limit > 1
            && use_slots <= (state.limit - 1) as f64 * SHRINK_USE
        {
            state.limit -= 1;
            state.calm_windows = 0;
            tracing::debug!(limit = state.limit, use_slots, "Flush concurrency lowered.");
        }
    }
    state.pressure = false;
    state.blocked = Duration::ZERO;
    state.used = Duration::ZERO;
    state.window_start = now;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(limit: usize, used_ms: u64, pressure: bool, calm_windows: u32) -> SlotState {
        let start = Instant::now();
        SlotState {
            limit,
            in_use: 0,
            used: Duration::from_millis(used_ms),
            last_change: start,
            window_start: start,
            blocked: Duration::ZERO,
            pressure,
            calm_windows,
        }
    }

    fn after_window(mut state: SlotState, max: usize) -> SlotState {
        let end = state.window_start + Duration::from_secs(1);
        adjust(&mut state, max, end);
        state
    }

    #[test]
    fn pressure_raises_the_limit_up_to_the_maximum() {
        assert_eq!(after_window(state(1, 900, true, 5), 2).limit, 2);
        let raised = after_window(state(2, 1_900, true, 0), 2);
        assert_eq!((raised.limit, raised.calm_windows), (2, 0));
    }

    #[test]
    fn writers_blocked_for_more_than_a_short_wait_is_pressure() {
        let mut short = state(1, 900, false, 0);
        short.blocked = Duration::from_millis(5);
        assert_eq!(after_window(short, 2).limit, 1);
        let mut long = state(1, 900, false, 0);
        long.blocked = Duration::from_millis(50);
        assert_eq!(after_window(long, 2).limit, 2);
    }

    #[test]
    fn calm_windows_lower_the_limit_when_one_slot_fewer_would_have_done() {
        // Two slots used for 0.9 slot-seconds in one second: one would have done.
        let first = after_window(state(2, 900, false, 0), 2);
        assert_eq!((first.limit, first.calm_windows), (2, 1));
        let second = after_window(state(2, 900, false, first.calm_windows), 2);
        assert_eq!((second.limit, second.calm_windows), (1, 0));
        // Busy beyond one slot's worth: keep two.
        assert_eq!(after_window(state(2, 1_200, false, 9), 2).limit, 2);
        // Never below one.
        assert_eq!(after_window(state(1, 0, false, 9), 2).limit, 1);
    }

    #[tokio::test]
    async fn a_batch_waits_for_a_slot_and_a_long_wait_is_pressure() {
        let slots = FlushSlots::new(2, Duration::from_millis(5));
        slots.lock().limit = 1;
        let held = slots.acquire().await;
        let waiting = tokio::time::timeout(Duration::from_millis(20), slots.acquire()).await;
        assert!(waiting.is_err(), "the only slot is taken");
        let release = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(held);
        };
        let (second, ()) = tokio::join!(slots.acquire(), release);
        assert!(slots.lock().pressure, "waited longer than the patience");
        drop(second);
        assert_eq!(slots.lock().in_use, 0);
    }
}
