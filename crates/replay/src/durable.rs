//! Durable futures: what the context's methods return, and the combinators over them.

use crate::context::OrchestrationContext;
use crate::state::{CompletionValue, Slot, State};
use sealed::Work as _;
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
                // The activity lost its race against its total timeout: it is cancelled.
                state.drop_command(self.slot);
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
        poll_work(this, cx)
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
                other => state.drop_command(other),
            }
            if let Some(deadline) = deadline {
                state.wakers.remove(&deadline);
            }
        });
    }
}

pub(crate) mod sealed {
    use super::{OrchestrationContext, State, Waker};

    /// What the combinators need of durable work, with the state locked once per poll.
    pub trait Work {
        /// The value the work resolves to.
        type Output;
        /// The context the work belongs to.
        fn context(&self) -> &OrchestrationContext;
        /// Where in history the work's value was completed (for a join, its last member), if
        /// it has been.
        fn position(&self, state: &State) -> Option<usize>;
        /// Takes the value; `None` unless [`Work::position`] is `Some`.
        fn take(&mut self, state: &mut State) -> Option<Self::Output>;
        /// Asks to be woken when any unresolved part resolves.
        fn register(&self, state: &mut State, waker: &Waker);
    }
}

/// Durable work that joins and selects combine: every [`Durable`] future, and the joins and
/// selects over them, so `ctx.select2(ctx.join2(a, b), ctx.timer(d))` waits for both or the
/// timer. Implemented by this crate's types only.
pub trait DurableWork: sealed::Work {}

impl<W: sealed::Work> DurableWork for W {}

/// Polls work as a future: takes its value if resolved, else registers the waker.
fn poll_work<W: sealed::Work>(work: &mut W, cx: &mut Context<'_>) -> Poll<W::Output> {
    let ctx = work.context().clone();
    ctx.with_state(|state| {
        if work.position(state).is_some()
            && let Some(value) = work.take(state)
        {
            return Poll::Ready(value);
        }
        work.register(state, cx.waker());
        Poll::Pending
    })
}

impl<T> sealed::Work for Durable<T> {
    type Output = T;

    fn context(&self) -> &OrchestrationContext {
        &self.ctx
    }

    fn position(&self, state: &State) -> Option<usize> {
        self.position_locked(state)
    }

    fn take(&mut self, state: &mut State) -> Option<T> {
        self.assert_unfinished();
        self.take_locked(state)
    }

    fn register(&self, state: &mut State, waker: &Waker) {
        self.register_locked(state, waker);
    }
}

/// Resolves with the first of its members to resolve, choosing by history order: the one
/// whose result history recorded first wins, whatever the order of the list.
#[must_use = "futures do nothing unless awaited"]
pub struct SelectFuture<W> {
    members: Vec<W>,
}

impl<W: DurableWork> SelectFuture<W> {
    /// Over no members it stays pending: the context has failed the orchestration.
    pub(crate) fn new(members: Vec<W>) -> Self {
        Self { members }
    }

    fn winner(&self, state: &State) -> Option<(usize, usize)> {
        self.members
            .iter()
            .enumerate()
            .filter_map(|(index, member)| member.position(state).map(|position| (position, index)))
            .min()
    }
}

impl<W: DurableWork> sealed::Work for SelectFuture<W> {
    /// The index of the winner in the list, and its value.
    type Output = (usize, W::Output);

    fn context(&self) -> &OrchestrationContext {
        self.members
            .first()
            .expect("a select over no members is never polled as work")
            .context()
    }

    fn position(&self, state: &State) -> Option<usize> {
        self.winner(state).map(|(position, _)| position)
    }

    fn take(&mut self, state: &mut State) -> Option<Self::Output> {
        let (_, index) = self.winner(state)?;
        let value = self.members[index].take(state)?;
        Some((index, value))
    }

    fn register(&self, state: &mut State, waker: &Waker) {
        for member in &self.members {
            member.register(state, waker);
        }
    }
}

impl<W: DurableWork> Unpin for SelectFuture<W> {}

impl<W: DurableWork> Future for SelectFuture<W> {
    type Output = (usize, W::Output);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.members.is_empty() {
            return Poll::Pending;
        }
        poll_work(this, cx)
    }
}

/// Resolves when all of its members have resolved, with their values in list order.
#[must_use = "futures do nothing unless awaited"]
pub struct JoinFuture<W: DurableWork> {
    members: Vec<W>,
    /// Values taken so far, with the history position each was recorded at.
    values: Vec<Option<(usize, W::Output)>>,
}

impl<W: DurableWork> JoinFuture<W> {
    pub(crate) fn new(members: Vec<W>) -> Self {
        let values = members.iter().map(|_| None).collect();
        Self { members, values }
    }
}

impl<W: DurableWork> sealed::Work for JoinFuture<W> {
    type Output = Vec<W::Output>;

    fn context(&self) -> &OrchestrationContext {
        self.members
            .first()
            .expect("a join over no members resolves at once")
            .context()
    }

    fn position(&self, state: &State) -> Option<usize> {
        let mut last = 0;
        for (member, value) in self.members.iter().zip(&self.values) {
            let position = match value {
                Some((position, _)) => *position,
                None => member.position(state)?,
            };
            last = last.max(position);
        }
        Some(last)
    }

    fn take(&mut self, state: &mut State) -> Option<Self::Output> {
        for (member, value) in self.members.iter_mut().zip(self.values.iter_mut()) {
            if value.is_none() {
                let position = member.position(state)?;
                *value = Some((position, member.take(state)?));
            }
        }
        let values = std::mem::take(&mut self.values);
        Some(
            values
                .into_iter()
                .map(|value| value.expect("all resolved").1)
                .collect(),
        )
    }

    fn register(&self, state: &mut State, waker: &Waker) {
        for (member, value) in self.members.iter().zip(&self.values) {
            if value.is_none() {
                member.register(state, waker);
            }
        }
    }
}

impl<W: DurableWork> Unpin for JoinFuture<W> {}

impl<W: DurableWork> Future for JoinFuture<W> {
    type Output = Vec<W::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.members.is_empty() {
            return Poll::Ready(Vec::new());
        }
        // Take members as they resolve (their order of resolution does not matter to a join).
        let ctx = this.context().clone();
        ctx.with_state(|state| {
            for (member, value) in this.members.iter_mut().zip(this.values.iter_mut()) {
                if value.is_none() {
                    match member.position(state) {
                        Some(position) => {
                            *value = member.take(state).map(|taken| (position, taken));
                        }
                        None => member.register(state, cx.waker()),
                    }
                }
            }
        });
        if this.values.iter().all(Option::is_some) {
            let ctx = this.context().clone();
            return match ctx.with_state(|state| sealed::Work::take(this, state)) {
                Some(values) => Poll::Ready(values),
                None => Poll::Pending,
            };
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

/// Declares a join and a select over work of different output types.
macro_rules! tuple_combinators {
    (
        $join:ident, $select:ident, $either:ident,
        $(($field:ident, $value:ident, $type:ident, $variant:ident)),+
    ) => {
        /// Resolves when all of its members have, with their values in argument order.
        #[must_use = "futures do nothing unless awaited"]
        pub struct $join<$($type: DurableWork),+> {
            $($field: $type, $value: Option<(usize, $type::Output)>,)+
        }

        impl<$($type: DurableWork),+> $join<$($type),+> {
            pub(crate) fn new($($field: $type),+) -> Self {
                Self { $($field, $value: None,)+ }
            }
        }

        impl<$($type: DurableWork),+> sealed::Work for $join<$($type),+> {
            type Output = ($($type::Output),+);

            fn context(&self) -> &OrchestrationContext {
                tuple_combinators!(@first $(self.$field),+).context()
            }

            fn position(&self, state: &State) -> Option<usize> {
                let mut last = 0;
                $(
                    let position = match &self.$value {
                        Some((position, _)) => *position,
                        None => self.$field.position(state)?,
                    };
                    last = last.max(position);
                )+
                Some(last)
            }

            fn take(&mut self, state: &mut State) -> Option<Self::Output> {
                $(
                    if self.$value.is_none() {
                        let position = self.$field.position(state)?;
                        self.$value = Some((position, self.$field.take(state)?));
                    }
                )+
                Some(($(self.$value.take().expect("resolved").1),+))
            }

            fn register(&self, state: &mut State, waker: &Waker) {
                $(
                    if self.$value.is_none() {
                        self.$field.register(state, waker);
                    }
                )+
            }
        }

        impl<$($type: DurableWork),+> Unpin for $join<$($type),+> {}

        impl<$($type: DurableWork),+> Future for $join<$($type),+> {
            type Output = ($($type::Output),+);

            fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
                let this = self.get_mut();
                let ctx = sealed::Work::context(this).clone();
                ctx.with_state(|state| {
                    $(
                        if this.$value.is_none() {
                            match this.$field.position(state) {
                                Some(position) => {
                                    this.$value =
                                        this.$field.take(state).map(|taken| (position, taken));
                                }
                                None => this.$field.register(state, cx.waker()),
                            }
                        }
                    )+
                    if $(this.$value.is_some())&&+ {
                        return Poll::Ready(($(this.$value.take().expect("resolved").1),+));
                    }
                    Poll::Pending
                })
            }
        }

        /// Resolves with the member whose result history recorded first; ties go to the
        /// earlier argument. The losers are dropped (see [`OrchestrationContext::select`]).
        #[must_use = "futures do nothing unless awaited"]
        pub struct $select<$($type: DurableWork),+> {
            $($field: $type,)+
        }

        impl<$($type: DurableWork),+> $select<$($type),+> {
            pub(crate) fn new($($field: $type),+) -> Self {
                Self { $($field,)+ }
            }

            fn best(&self, state: &State) -> Option<usize> {
                let mut best: Option<usize> = None;
                $(
                    if let Some(position) = self.$field.position(state)
                        && best.is_none_or(|best| position < best)
                    {
                        best = Some(position);
                    }
                )+
                best
            }
        }

        impl<$($type: DurableWork),+> sealed::Work for $select<$($type),+> {
            type Output = $either<$($type::Output),+>;

            fn context(&self) -> &OrchestrationContext {
                tuple_combinators!(@first $(self.$field),+).context()
            }

            fn position(&self, state: &State) -> Option<usize> {
                self.best(state)
            }

            fn take(&mut self, state: &mut State) -> Option<Self::Output> {
                let best = self.best(state)?;
                $(
                    if self.$field.position(state) == Some(best) {
                        return self.$field.take(state).map($either::$variant);
                    }
                )+
                None
            }

            fn register(&self, state: &mut State, waker: &Waker) {
                $(self.$field.register(state, waker);)+
            }
        }

        impl<$($type: DurableWork),+> Unpin for $select<$($type),+> {}

        impl<$($type: DurableWork),+> Future for $select<$($type),+> {
            type Output = $either<$($type::Output),+>;

            fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
                poll_work(self.get_mut(), cx)
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
