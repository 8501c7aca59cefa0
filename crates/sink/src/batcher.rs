//! Cutting a lane's stream of rows into batches: a batch is sealed when it reaches
//! `batch_rows_max` rows or `batch_bytes_max` bytes, or `flush_interval_ms` after its first row,
//! whichever comes first. Pure logic (time is passed in), so it is tested against a model.

use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// The three limits of a batch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchLimits {
    /// Rows per batch, at least 1.
    pub(crate) rows_max: usize,
    /// Bytes per batch, at least 1; a single larger item forms a batch of its own.
    pub(crate) bytes_max: usize,
    /// Longest time between a batch's first item and its sealing.
    pub(crate) interval: Duration,
}

/// A sealed batch.
#[derive(Debug)]
pub(crate) struct Sealed<T> {
    /// The items in arrival order.
    pub(crate) items: Vec<T>,
    /// Their total size in bytes.
    pub(crate) bytes: usize,
}

/// The batch being filled.
#[derive(Debug)]
pub(crate) struct Batcher<T> {
    limits: BatchLimits,
    items: Vec<T>,
    bytes: usize,
    opened_at: Option<Instant>,
}

impl<T> Batcher<T> {
    pub(crate) fn new(limits: BatchLimits) -> Self {
        assert!(
            limits.rows_max > 0 && limits.bytes_max > 0,
            "limits are positive"
        );
        Batcher {
            limits,
            items: Vec::new(),
            bytes: 0,
            opened_at: None,
        }
    }

    /// Adds an item of `bytes` at time `now`, sealing batches into `sealed` as the limits
    /// require: the open batch first when the item would not fit, then the new batch when it is
    /// full.
    pub(crate) fn push(
        &mut self,
        item: T,
        bytes: usize,
        now: Instant,
        sealed: &mut VecDeque<Sealed<T>>,
    ) {
        if !self.items.is_empty()
            && (self.items.len() + 1 > self.limits.rows_max
                || self.bytes.saturating_add(bytes) > self.limits.bytes_max)
        {
            sealed.extend(self.seal());
        }
        if self.items.is_empty() {
            self.opened_at = Some(now);
        }
        self.items.push(item);
        self.bytes = self.bytes.saturating_add(bytes);
        if self.items.len() >= self.limits.rows_max || self.bytes >= self.limits.bytes_max {
            sealed.extend(self.seal());
        }
    }

    /// When the open batch must be sealed by time; `None` when it is empty.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.opened_at.map(|opened| opened + self.limits.interval)
    }

    /// Seals the open batch if it is due at `now`.
    pub(crate) fn seal_if_due(&mut self, now: Instant) -> Option<Sealed<T>> {
        match self.deadline() {
            Some(deadline) if deadline <= now => self.seal(),
            _ => None,
        }
    }

    /// Seals the open batch, if it has items.
    pub(crate) fn seal(&mut self) -> Option<Sealed<T>> {
        if self.items.is_empty() {
            return None;
        }
        self.opened_at = None;
        let bytes = std::mem::take(&mut self.bytes);
        Some(Sealed {
            items: std::mem::take(&mut self.items),
            bytes,
        })
    }

    /// Whether no batch is open.
    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Action {
        Push(usize),
        Advance(u64),
        Flush,
    }

    fn actions() -> impl Strategy<Value = Vec<Action>> {
        prop::collection::vec(
            prop_oneof![
                6 => (1usize..40).prop_map(Action::Push),
                2 => (0u64..80).prop_map(Action::Advance),
                1 => Just(Action::Flush),
            ],
            0..200,
        )
    }

    /// The model: a list, greedy cuts, one timestamp.
    #[derive(Default)]
    struct Model {
        open: Vec<(usize, usize)>,
        opened_at_ms: u64,
        batches: Vec<Vec<usize>>,
    }

    impl Model {
        fn cut(&mut self) {
            if !self.open.is_empty() {
                self.batches
                    .push(self.open.drain(..).map(|(id, _)| id).collect());
            }
        }
        fn bytes(&self) -> usize {
            self.open.iter().map(|(_, b)| b).sum()
        }
    }

    proptest! {
        #[test]
        fn batcher_matches_the_model(
            rows_max in 1usize..8,
            bytes_max in 1usize..120,
            interval_ms in 1u64..100,
            actions in actions(),
        ) {
            tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
                let limits = BatchLimits { rows_max, bytes_max, interval: Duration::from_millis(interval_ms) };
                let mut batcher = Batcher::new(limits);
                let mut sealed = VecDeque::new();
                let start = Instant::now();
                let mut now_ms = 0u64;
                let mut model = Model::default();
                let mut sizes = Vec::new();
                for action in actions {
                    match action {
                        Action::Push(bytes) => {
                            let id = sizes.len();
                            sizes.push(bytes);
                            batcher.push(id, bytes, start + Duration::from_millis(now_ms), &mut sealed);
                            if !model.open.is_empty() && (model.open.len() + 1 > rows_max || model.bytes() + bytes > bytes_max) {
                                model.cut();
                            }
                            if model.open.is_empty() { model.opened_at_ms = now_ms; }
                            model.open.push((id, bytes));
                            if model.open.len() >= rows_max || model.bytes() >= bytes_max { model.cut(); }
                        }
                        Action::Advance(ms) => {
                            // The lane wakes at the deadline, not later: seal at each deadline passed.
                            let target = now_ms + ms;
                            if !model.open.is_empty() && model.opened_at_ms + interval_ms <= target {
                                model.cut();
                            }
                            now_ms = target;
                            sealed.extend(batcher.seal_if_due(start + Duration::from_millis(now_ms)));
                        }
                        Action::Flush => {
                            model.cut();
                            sealed.extend(batcher.seal());
                        }
                    }
                    let got: Vec<Vec<usize>> = sealed.iter().map(|s| s.items.clone()).collect();
                    prop_assert_eq!(&got, &model.batches);
                    prop_assert_eq!(batcher.is_empty(), model.open.is_empty());
                }
                for batch in &sealed {
                    let bytes: usize = batch.items.iter().map(|id| sizes[*id]).sum();
                    prop_assert_eq!(bytes, batch.bytes);
                    prop_assert!(!batch.items.is_empty());
                    prop_assert!(batch.items.len() <= rows_max);
                    prop_assert!(bytes <= bytes_max || batch.items.len() == 1);
                }
                let order: Vec<usize> = sealed.iter().flat_map(|s| s.items.iter().copied()).chain(batcher.seal().into_iter().flat_map(|s| s.items)).collect();
                prop_assert_eq!(order, (0..sizes.len()).collect::<Vec<_>>());
                Ok(())
            })?;
        }
    }
}
