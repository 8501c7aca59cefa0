//! Durable futures: what the context's methods return, and the combinators over them.

use crate::context::OrchestrationContext;
use crate::state::{CompletionValue, Slot, State};
use serde::de::DeserializeOwned;
use sluice_history::{Failure, codes};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// The value of any untyped durable future, for selects and joins over futures of different
/// kinds (see [`Durable::into_any`]; the typed [`OrchestrationContext::select2`] and
/// [`OrchestrationContext::join2`] need no such common type).
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

/// Turns a resolved slot into a future's output.
pub(crate) type Decode<T> = fn(CompletionValue) -> T;

/// What resolves a future early with a failure: the timer of an activity's total timeout.
struct Deadline {
    slot: Slot,
    failure: Failure,
}

/// A future that resolves when history records its result, with a value of type `T`.
///
/// Every kind of durable work gives one: activities and sub-orchestrations
/// (`Durable<Result<Out, Failure>>`), timers (`Durable<()>`), events (`Durable<Result<T,
/// Failure>>` typed, `Durable<String>` as text). Await it, or combine several with
/// [`OrchestrationContext::join`], [`OrchestrationContext::select`] (same type) or
/// [`OrchestrationContext::join2`], [`OrchestrationContext::select2`] and their 3-ary forms
/// (different types). Decoding a typed result is part of resolving: a value that does not
/// decode resolves as a [`Failure`] with code `serde`, never a panic.
#[must_use = "durable futures do nothing visible unless awaited, joined or selected"]
pub struct Durable<T> {
    ctx: OrchestrationContext,
    slot: Slot,
    deadline: Option<Deadline>,
    /// Resolved before it was issued (its input did not serialise): resolves at once, first in
    /// any select.
    ready: Option<T>,
    decode: Decode<T>,
    finished: bool,
}

/// An activity's result, as text.
pub type ActivityFuture = Durable<Result<String, Failure>>;
/// A durable timer.
pub type TimerFuture = Durable<()>;
/// The next external event (or queued message) of a name, as text.
pub type EventFuture = Durable<String>;
/// A sub-orchestration's result, as text.
pub type SubOrchestrationFuture = Durable<Result<String, Failure>>;

pub(crate) fn decode_text_result(value: CompletionValue) -> Result<String, Failure> {
    match value {
        CompletionValue::Activity(result) | CompletionValue::SubOrchestration(result) => result,
        other => unreachable!("a result slot resolved as {other:?}"),
    }
}

pub(crate) fn decode_timer(_value: CompletionValue) {}

pub(crate) fn decode_text_event(value: CompletionValue) -> String {
    match value {
        CompletionValue::Event(data) => data,
        other => unreachable!("an event slot resolved as {other:?}"),
    }
}

fn decode_any(value: CompletionValue) -> DurableOutput {
    match value {
        CompletionValue::Activity(result) => DurableOutput::Activity(result),
        CompletionValue::Timer => DurableOutput::Timer,
        CompletionValue::Event(data) => DurableOutput::Event(data),
        CompletionValue::SubOrchestration(result) => DurableOutput::SubOrchestration(result),
    }
}

/// Decodes a result or an event payload from JSON.
pub(crate) fn decode_json<O: DeserializeOwned>(value: CompletionValue) -> Result<O, Failure> {
    let (what, text) = match value {
        CompletionValue::Activity(result) => ("activity output", result?),
        CompletionValue::SubOrchestration(result) => ("sub-orchestration output", result?),
        CompletionValue::Event(data) => ("event payload", data),
        CompletionValue::Timer => unreachable!("a typed result slot resolved as a timer"),
    };
    serde_json::from_str(&text)
        .map_err(|error| Failure::new(codes::SERDE, format!("{what}: {error}")))
}

impl<T> Durable<T> {
    pub(crate) fn new(ctx: OrchestrationContext, slot: Slot, decode: Decode<T>) -> Self {
        Self {
            ctx,
            slot,
            deadline: None,
            ready: None,
            decode,
            finished: false,
        }
    }

    /// A future that resolves at once with `value`, issuing nothing.
    pub(crate) fn ready(ctx: OrchestrationContext, value: T, decode: Decode<T>) -> Self {
        let mut future = Self::new(ctx, Slot::Dead, decode);
        future.ready = Some(value);
        future
    }

    /// Resolves this future with `failure` (decoded as an activity's failure) when the timer
    /// `slot` fires first.
    pub(crate) fn with_deadline(mut self, slot: Slot, failure: Failure) -> Self {
        self.deadline = Some(Deadline { slot, failure });
        self
    }

    /// Gives up this future's slot to another future (which then owns its wakers).
    pub(crate) fn release_slot(mut self) -> Slot {
        self.finished = true;
        self.slot
    }

    /// Where in history this future's value was recorded, if it has one yet; a ready future
    /// sorts before everything.
    fn position_locked(&self, state: &State) -> Option<usize> {
        if self.ready.is_some() {
            return Some(0);
        }
        let own = state.completion_position(self.slot);
        let deadline = self
            .deadline
            .as_ref()
            .and_then(|deadline| state.completion_position(deadline.slot));
        match (own, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes the value if the future has resolved, with the state already locked (joins and
    /// selects lock once per poll, not once per future).
    fn take_locked(&mut self, state: &mut State) -> Option<T> {
        if let Some(value) = self.ready.take() {
            self.finished = true;
            return Some(value);
        }
        let own = state.completion_position(self.slot);
        let deadline = self
            .deadline
            .as_ref()
            .and_then(|deadline| state.completion_position(deadline.slot));
        let value = match (own, deadline) {
            (None, None) => return None,
            (Some(own), deadline) if deadline.is_none_or(|fired| own < fired) => {
                state.take_completion(self.slot).expect("a resolved slot")
            }
            _ => {
                let deadline = self.deadline.as_ref().expect("a deadline fired");
                state.take_completion(deadline.slot);
                state.wakers.remove(&self.slot);
                CompletionValue::Activity(Err(deadline.failure.clone()))
            }
        };
        if let Slot::Wait(wait_id) = self.slot {
            state.finish_wait(wait_id);
        }
        if let Some(deadline) = &self.deadline {
            state.wakers.remove(&deadline.slot);
        }
        self.finished = true;
        Some((self.decode)(value))
    }

    fn register_locked(&self, state: &mut State, waker: &Waker) {
        state.register_waker(self.slot, waker);
        if let Some(deadline) = &self.deadline {
            state.register_waker(deadline.slot, waker);
        }
    }

    fn assert_unfinished(&self) {
        assert!(
            !self.finished,
            "a durable future was polled after it completed"
        );
    }
}

macro_rules! into_any {
    ($($output:ty),*) => {$(
        impl Durable<$output> {
            /// Turns this future into one yielding [`DurableOutput`], to select or join it with
            /// futures of other kinds in one list.
            pub fn into_any(mut self) -> Durable<DurableOutput> {
                let mut any = Durable::new(self.ctx.clone(), self.slot, decode_any);
                any.deadline = self.deadline.take();
                // The new future owns the slot now; this one must not release it on drop.
                self.finished = true;
                any
            }
        }
    )*};
}

into_any!(Result<String, Failure>, (), String);

impl<T> Unpin for Durable<T> {}

impl<T> Future for Durable<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = self.get_mut();
        this.assert_unfinished();
        let ctx = this.ctx.clone();
        ctx.with_state(|state| match this.take_locked(state) {
            Some(value) => Poll::Ready(value),
            None => {
                this.register_locked(state, cx.waker());
                Poll::Pending
            }
        })
    }
}

impl<T> Drop for Durable<T> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let slot = self.slot;
        let deadline = self.deadline.as_ref().map(|deadline| deadline.slot);
        self.ctx.with_state(|state| {
            match slot {
                Slot::Wait(wait_id) => state.drop_wait(wait_id),
                other => {
                    state.wakers.remove(&other);
                }
            }
            if let Some(deadline) = deadline {
                state.wakers.remove(&deadline);
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

impl<T> SelectFuture<T> {
    /// Over no futures it stays pending: the context has failed the orchestration.
    pub(crate) fn new(futures: Vec<Durable<T>>) -> Self {
        Self { futures }
    }
}

impl<T> Future for SelectFuture<T> {
    /// The index of the winner in the list, and its value.
    type Output = (usize, T);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<(usize, T)> {
        let this = self.get_mut();
        let Some(first) = this.futures.first() else {
            return Poll::Pending;
        };
        let ctx = first.ctx.clone();
        ctx.with_state(|state| {
            let winner = this
                .futures
                .iter()
                .enumerate()
                .filter_map(|(index, future)| {
                    future
                        .position_locked(state)
                        .map(|position| (position, index))
                })
                .min()
                .map(|(_, index)| index);
            if let Some(index) = winner {
                let value = this.futures[index]
                    .take_locked(state)
                    .expect("a resolved future has a value");
                return Poll::Ready((index, value));
            }
            for future in &this.futures {
                future.register_locked(state, cx.waker());
            }
            Poll::Pending
        })
    }
}

/// Resolves when all of its futures have resolved, with their values in list order.
#[must_use = "futures do nothing unless awaited"]
pub struct JoinFuture<T> {
    futures: Vec<Durable<T>>,
    values: Vec<Option<T>>,
    remaining: usize,
}

impl<T> JoinFuture<T> {
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

impl<T> Future for JoinFuture<T> {
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
                            None => future.register_locked(state, cx.waker()),
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

/// The winner of [`OrchestrationContext::select2`]: which future resolved first in history,
/// and its value. The loser is dropped (see [`OrchestrationContext::select`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Either<A, B> {
    /// The first future won.
    Left(A),
    /// The second future won.
    Right(B),
}

/// The winner of [`OrchestrationContext::select3`].
#[derive(Clone, Debug, PartialEq)]
pub enum Either3<A, B, C> {
    /// The first future won.
    First(A),
    /// The second future won.
    Second(B),
    /// The third future won.
    Third(C),
}

/// Declares a join and a select over futures of different output types.
macro_rules! tuple_combinators {
    (
        $join:ident, $select:ident, $either:ident,
        $(($field:ident, $value:ident, $type:ident, $variant:ident)),+
    ) => {
        /// Resolves when all of its futures have, with their values in argument order.
        #[must_use = "futures do nothing unless awaited"]
        pub struct $join<$($type),+> {
            $($field: Durable<$type>, $value: Option<$type>,)+
        }

        impl<$($type),+> $join<$($type),+> {
            pub(crate) fn new($($field: Durable<$type>),+) -> Self {
                Self { $($field, $value: None,)+ }
            }
        }

        impl<$($type),+> Unpin for $join<$($type),+> {}

        impl<$($type),+> Future for $join<$($type),+> {
            type Output = ($($type),+);

            fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
                let this = self.get_mut();
                let ctx = tuple_combinators!(@first $(this.$field),+).ctx.clone();
                ctx.with_state(|state| {
                    $(
                        if this.$value.is_none() {
                            this.$value = this.$field.take_locked(state);
                            if this.$value.is_none() {
                                this.$field.register_locked(state, cx.waker());
                            }
                        }
                    )+
                });
                if $(this.$value.is_some())&&+ {
                    return Poll::Ready(($(this.$value.take().expect("resolved")),+));
                }
                Poll::Pending
            }
        }

        /// Resolves with the future whose result history recorded first; ties go to the
        /// earlier argument.
        #[must_use = "futures do nothing unless awaited"]
        pub struct $select<$($type),+> {
            $($field: Durable<$type>,)+
        }

        impl<$($type),+> $select<$($type),+> {
            pub(crate) fn new($($field: Durable<$type>),+) -> Self {
                Self { $($field,)+ }
            }
        }

        impl<$($type),+> Unpin for $select<$($type),+> {}

        impl<$($type),+> Future for $select<$($type),+> {
            type Output = $either<$($type),+>;

            fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
                let this = self.get_mut();
                let ctx = tuple_combinators!(@first $(this.$field),+).ctx.clone();
                ctx.with_state(|state| {
                    let mut best: Option<usize> = None;
                    $(
                        if let Some(position) = this.$field.position_locked(state)
                            && best.is_none_or(|best| position < best)
                        {
                            best = Some(position);
                        }
                    )+
                    if let Some(best) = best {
                        $(
                            if this.$field.position_locked(state) == Some(best) {
                                let value = this.$field.take_locked(state).expect("resolved");
                                return Poll::Ready($either::$variant(value));
                            }
                        )+
                    }
                    $(this.$field.register_locked(state, cx.waker());)+
                    Poll::Pending
                })
            }
        }
    };
    (@first $first:expr $(, $rest:expr)*) => { $first };
}

tuple_combinators!(
    Join2Future,
    Select2Future,
    Either,
    (a, a_value, A, Left),
    (b, b_value, B, Right)
);
tuple_combinators!(
    Join3Future,
    Select3Future,
    Either3,
    (a, a_value, A, First),
    (b, b_value, B, Second),
    (c, c_value, C, Third)
);
