//! Durable futures: what the context's methods return.

use crate::context::OrchestrationContext;
use crate::state::{CompletionValue, Slot};
use sluice_history::Failure;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The value of any durable future, for selects and joins over futures of different kinds.
#[derive(Clone, Debug, PartialEq)]
pub enum DurableOutput {
    /// An activity's result.
    Activity(Result<String, Failure>),
    /// A timer fired.
    Timer,
    /// An external event's payload.
    Event(String),
    /// A sub-orchestration's result.
    SubOrchestration(Result<String, Failure>),
}

/// Conversion from a resolved slot to a future's output type.
pub trait FromCompletion: Sized + private::Sealed {
    #[doc(hidden)]
    fn from_completion(value: CompletionValueHandle) -> Self;
}

/// Opaque wrapper so the trait can stay sealed.
#[doc(hidden)]
pub struct CompletionValueHandle(pub(crate) CompletionValue);

mod private {
    pub trait Sealed {}
    impl Sealed for Result<String, sluice_history::Failure> {}
    impl Sealed for () {}
    impl Sealed for String {}
    impl Sealed for super::DurableOutput {}
}

impl FromCompletion for Result<String, Failure> {
    fn from_completion(value: CompletionValueHandle) -> Self {
        match value.0 {
            CompletionValue::Activity(result) | CompletionValue::SubOrchestration(result) => result,
            other => unreachable!("a result slot resolved as {other:?}"),
        }
    }
}

impl FromCompletion for () {
    fn from_completion(_value: CompletionValueHandle) -> Self {}
}

impl FromCompletion for String {
    fn from_completion(value: CompletionValueHandle) -> Self {
        match value.0 {
            CompletionValue::Event(data) => data,
            other => unreachable!("an event slot resolved as {other:?}"),
        }
    }
}

impl FromCompletion for DurableOutput {
    fn from_completion(value: CompletionValueHandle) -> Self {
        match value.0 {
            CompletionValue::Activity(result) => DurableOutput::Activity(result),
            CompletionValue::Timer => DurableOutput::Timer,
            CompletionValue::Event(data) => DurableOutput::Event(data),
            CompletionValue::SubOrchestration(result) => DurableOutput::SubOrchestration(result),
        }
    }
}

/// A future that resolves when history records its result. Await it, or combine several with
/// [`OrchestrationContext::join`] and [`OrchestrationContext::select`].
#[must_use = "durable futures do nothing visible unless awaited, joined or selected"]
pub struct Durable<T> {
    ctx: OrchestrationContext,
    slot: Slot,
    finished: bool,
    _output: PhantomData<fn() -> T>,
}

/// An activity's result.
pub type ActivityFuture = Durable<Result<String, Failure>>;
/// A durable timer.
pub type TimerFuture = Durable<()>;
/// The next external event (or queued message) of a name.
pub type EventFuture = Durable<String>;
/// A sub-orchestration's result.
pub type SubOrchestrationFuture = Durable<Result<String, Failure>>;

impl<T: FromCompletion> Durable<T> {
    pub(crate) fn new(ctx: OrchestrationContext, slot: Slot) -> Self {
        Self {
            ctx,
            slot,
            finished: false,
            _output: PhantomData,
        }
    }

    /// Turns this future into one yielding [`DurableOutput`], to select or join it with
    /// futures of other kinds.
    pub fn into_any(mut self) -> Durable<DurableOutput> {
        let any = Durable::new(self.ctx.clone(), self.slot);
        // The new future owns the slot now; this one must not release it on drop.
        self.finished = true;
        any
    }

    fn take(&mut self) -> Option<T> {
        let ctx = self.ctx.clone();
        ctx.with_state(|state| self.take_locked(state))
    }

    /// [`Durable::take`] with the state already locked (joins lock once per poll, not once
    /// per future).
    fn take_locked(&mut self, state: &mut crate::state::State) -> Option<T> {
        let value = state.take_completion(self.slot)?;
        if let Slot::Wait(wait_id) = self.slot {
            state.finish_wait(wait_id);
        }
        self.finished = true;
        Some(T::from_completion(CompletionValueHandle(value)))
    }
}

impl<T: FromCompletion> Future for Durable<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = self.get_mut();
        assert!(
            !this.finished,
            "a durable future was polled after it completed"
        );
        if let Some(value) = this.take() {
            return Poll::Ready(value);
        }
        let slot = this.slot;
        this.ctx
            .with_state(|state| state.register_waker(slot, cx.waker()));
        Poll::Pending
    }
}

impl<T> Drop for Durable<T> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let slot = self.slot;
        self.ctx.with_state(|state| match slot {
            Slot::Wait(wait_id) => state.drop_wait(wait_id),
            other => {
                state.wakers.remove(&other);
            }
        });
    }
}

/// Resolves when the first of its futures resolves, choosing by history order: the future
/// whose result history recorded first wins, whatever the order of the list.
#[must_use = "futures do nothing unless awaited"]
pub struct SelectFuture<T> {
    futures: Vec<Durable<T>>,
}

impl<T: FromCompletion> SelectFuture<T> {
    /// Over no futures it stays pending: the context has failed the orchestration.
    pub(crate) fn new(futures: Vec<Durable<T>>) -> Self {
        Self { futures }
    }
}

impl<T: FromCompletion> Future for SelectFuture<T> {
    /// The index of the winner in the list, and its value.
    type Output = (usize, T);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<(usize, T)> {
        let this = self.get_mut();
        let Some(first) = this.futures.first() else {
            return Poll::Pending;
        };
        let ctx = first.ctx.clone();
        let winner = ctx.with_state(|state| {
            this.futures
                .iter()
                .enumerate()
                .filter_map(|(index, future)| {
                    state
                        .completion_position(future.slot)
                        .map(|position| (position, index))
                })
                .min()
                .map(|(_, index)| index)
        });
        if let Some(index) = winner {
            let value = this.futures[index]
                .take()
                .expect("a resolved slot has a value");
            return Poll::Ready((index, value));
        }
        ctx.with_state(|state| {
            for future in &this.futures {
                state.register_waker(future.slot, cx.waker());
            }
        });
        Poll::Pending
    }
}

/// Resolves when all of its futures have resolved, with their values in list order.
#[must_use = "futures do nothing unless awaited"]
pub struct JoinFuture<T> {
    futures: Vec<Durable<T>>,
    values: Vec<Option<T>>,
    remaining: usize,
}

impl<T: FromCompletion> JoinFuture<T> {
    pub(crate) fn new(futures: Vec<Durable<T>>) -> Self {
        let remaining = futures.len();
        let values = futures.iter().map(|_| None).collect();
        Self {
            futures,
            values,
            remaining,
        }
    }
}

impl<T> Unpin for JoinFuture<T> {}

impl<T: FromCompletion> Future for JoinFuture<T> {
    type Output = Vec<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Vec<T>> {
        let this = self.get_mut();
        if let Some(first) = this.futures.first() {
            let ctx = first.ctx.clone();
            ctx.with_state(|state| {
                for (future, value) in this.futures.iter_mut().zip(this.values.iter_mut()) {
                    if value.is_none() {
                        match future.take_locked(state) {
                            Some(taken) => {
                                *value = Some(taken);
                                this.remaining -= 1;
                            }
                            None => state.register_waker(future.slot, cx.waker()),
                        }
                    }
                }
            });
        }
        if this.remaining == 0 {
            let values = std::mem::take(&mut this.values);
            return Poll::Ready(
                values
                    .into_iter()
                    .map(|v| v.expect("all resolved"))
                    .collect(),
            );
        }
        Poll::Pending
    }
}
