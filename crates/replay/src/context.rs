//! The orchestration context: the only door from orchestration code to the outside world.

use crate::durable::{
    ActivityFuture, Decode, Durable, DurableWork, EventFuture, Join2Future, Join3Future,
    JoinFuture, Select2Future, Select3Future, SelectFuture, SubOrchestrationFuture, TimerFuture,
    decode_json, decode_text_event, decode_text_result, decode_timer,
};
use crate::options::ActivityOptions;
use crate::state::{Slot, State};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_history::{Event, Failure, RetryPolicy, codes, guid_from_seed};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The future an orchestration function returns.
pub type OrchestrationFuture = Pin<Box<dyn Future<Output = Result<String, Failure>> + Send>>;

/// An orchestration: code that is started with a context and an input.
///
/// Implemented for every `Fn(OrchestrationContext, String) -> impl Future<Output =
/// Result<String, Failure>>`, so plain `async fn`s and closures register directly.
pub trait Orchestration: Send + Sync + 'static {
    /// Starts the code.
    fn start(&self, ctx: OrchestrationContext, input: String) -> OrchestrationFuture;
}

impl<F, Fut> Orchestration for F
where
    F: Fn(OrchestrationContext, String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, Failure>> + Send + 'static,
{
    fn start(&self, ctx: OrchestrationContext, input: String) -> OrchestrationFuture {
        Box::pin(self(ctx, input))
    }
}

/// The handle orchestration code uses to schedule work and read deterministic values.
///
/// Everything it returns is recorded in, or derived from, the history, so the code behaves the
/// same on every replay. Orchestration code must not read clocks, draw random numbers, do I/O or
/// spawn tasks by itself: use activities for that.
#[derive(Clone)]
pub struct OrchestrationContext {
    state: Arc<Mutex<State>>,
}

impl OrchestrationContext {
    pub(crate) fn new(state: Arc<Mutex<State>>) -> Self {
        Self { state }
    }

    pub(crate) fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut guard = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }

    /// This instance's id.
    pub fn instance_id(&self) -> String {
        self.with_state(|state| state.instance_id.clone())
    }

    /// The current execution (1 for the first, +1 per continue-as-new).
    pub fn execution_id(&self) -> u64 {
        self.with_state(|state| state.execution_id)
    }

    /// The time of the current turn in milliseconds since the Unix epoch, as recorded in history.
    pub fn now_ms(&self) -> i64 {
        self.with_state(|state| state.now_ms)
    }

    /// The time of the current turn, as recorded in history.
    pub fn now(&self) -> SystemTime {
        let ms = u64::try_from(self.now_ms()).unwrap_or(0);
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    /// A new GUID, the same on every replay (derived from a seed recorded in history).
    pub fn new_guid(&self) -> String {
        self.with_state(|state| {
            let counter = state.guid_counter;
            state.guid_counter += 1;
            guid_from_seed(state.guid_seed, counter)
        })
    }

    /// True while the code re-runs through events an earlier turn already processed.
    pub fn is_replaying(&self) -> bool {
        self.with_state(|state| state.is_replaying())
    }

    /// Logs at info level, only when not replaying (so each line appears once).
    pub fn log_info(&self, message: impl AsRef<str>) {
        if !self.is_replaying() {
            tracing::info!(instance_id = %self.instance_id(), "{}", message.as_ref());
        }
    }

    /// Logs at warn level, only when not replaying.
    pub fn log_warn(&self, message: impl AsRef<str>) {
        if !self.is_replaying() {
            tracing::warn!(instance_id = %self.instance_id(), "{}", message.as_ref());
        }
    }

    /// Sets the custom status that clients read with the instance's status.
    pub fn set_custom_status(&self, status: impl Into<String>) {
        let status = status.into();
        self.with_state(|state| state.custom_status = Some(status));
    }

    fn issue<T>(&self, build: impl FnOnce(u64) -> Event, decode: Decode<T>) -> Durable<T> {
        self.issue_with(build, false, decode)
    }

    /// [`Self::issue`], saying whether the command's instance id was derived (see
    /// `State::issue_with`).
    fn issue_with<T>(
        &self,
        build: impl FnOnce(u64) -> Event,
        derived_id: bool,
        decode: Decode<T>,
    ) -> Durable<T> {
        let slot = self.with_state(|state| {
            let command = build(state.next_command_id);
            match state.issue_with(command, derived_id) {
                Some((id, _recorded)) => Slot::Command(id),
                None => Slot::Dead,
            }
        });
        Durable::new(self.clone(), slot, decode)
    }

    /// Fails the orchestration with `failure` and returns a future that never resolves.
    fn fail_with<T>(&self, failure: Failure, decode: Decode<T>) -> Durable<T> {
        self.with_state(|state| state.fail(failure));
        Durable::new(self.clone(), Slot::Dead, decode)
    }

    /// Schedules an activity with text input; resolves to its output or its failure.
    pub fn schedule_activity(
        &self,
        name: impl Into<String>,
        input: impl Into<String>,
    ) -> ActivityFuture {
        self.schedule(
            name.into(),
            input.into(),
            &ActivityOptions::default(),
            decode_text_result,
        )
    }

    /// Schedules an activity that is retried by `retry` when an attempt fails or times out.
    pub fn schedule_activity_with_retry(
        &self,
        name: impl Into<String>,
        input: impl Into<String>,
        retry: RetryPolicy,
    ) -> ActivityFuture {
        self.schedule_activity_with(name, input, &ActivityOptions::new().retry(retry))
    }

    /// Schedules an activity on the task queue `queue`: only runtimes that serve that queue
    /// (`RuntimeOptions::task_queues`) run it; `retry` as in
    /// [`OrchestrationContext::schedule_activity_with_retry`].
    pub fn schedule_activity_on(
        &self,
        queue: impl Into<String>,
        name: impl Into<String>,
        input: impl Into<String>,
        retry: Option<RetryPolicy>,
    ) -> ActivityFuture {
        let mut options = ActivityOptions::new().queue(queue);
        if let Some(retry) = retry {
            options = options.retry(retry);
        }
        self.schedule_activity_with(name, input, &options)
    }

    /// Schedules an activity with text input under `options` (retry policy, timeouts, task
    /// queue).
    pub fn schedule_activity_with(
        &self,
        name: impl Into<String>,
        input: impl Into<String>,
        options: &ActivityOptions,
    ) -> ActivityFuture {
        self.schedule(name.into(), input.into(), options, decode_text_result)
    }

    /// Schedules an activity with a serde-typed input and output (JSON on the wire) and the
    /// default options: no retry, no timeout, the default task queue.
    ///
    /// An input that does not serialise resolves the future at once with a [`Failure`] of code
    /// `serde` (nothing is scheduled); an output that does not decode resolves it with one.
    pub fn activity<O: DeserializeOwned>(
        &self,
        name: impl Into<String>,
        input: &(impl Serialize + ?Sized),
    ) -> Durable<Result<O, Failure>> {
        self.activity_with(name, input, &ActivityOptions::default())
    }

    /// [`OrchestrationContext::activity`] under `options`.
    pub fn activity_with<O: DeserializeOwned>(
        &self,
        name: impl Into<String>,
        input: &(impl Serialize + ?Sized),
        options: &ActivityOptions,
    ) -> Durable<Result<O, Failure>> {
        self.with_json_input(input, "activity input", |input| {
            self.schedule(name.into(), input, options, decode_json::<O>)
        })
    }

    /// Issues typed work with `input` as JSON; an input that does not serialise resolves the
    /// future at once with a `serde` failure, issuing nothing.
    fn with_json_input<O: DeserializeOwned>(
        &self,
        input: &(impl Serialize + ?Sized),
        what: &str,
        issue: impl FnOnce(String) -> Durable<Result<O, Failure>>,
    ) -> Durable<Result<O, Failure>> {
        match to_json(input, what) {
            Ok(input) => issue(input),
            Err(failure) => Durable::ready(self.clone(), Err(failure), decode_json::<O>),
        }
    }

    /// Schedules an activity with serde-typed input and output (JSON on the wire): the older
    /// spelling of [`OrchestrationContext::activity_with`] with only a retry policy.
    pub fn schedule_activity_typed<I: Serialize, O: DeserializeOwned>(
        &self,
        name: impl Into<String>,
        input: &I,
        retry: Option<RetryPolicy>,
    ) -> Durable<Result<O, Failure>> {
        let options = match retry {
            Some(retry) => ActivityOptions::new().retry(retry),
            None => ActivityOptions::new(),
        };
        self.activity_with(name, input, &options)
    }

    fn schedule<T>(
        &self,
        name: String,
        input: String,
        options: &ActivityOptions,
        decode: Decode<T>,
    ) -> Durable<T> {
        let retry = match options.effective_retry() {
            Ok(retry) => retry,
            Err(error) => {
                let failure = Failure::new(
                    codes::ORCHESTRATION_FAILED,
                    format!("bad activity options for '{name}': {error}"),
                );
                return self.fail_with(failure, decode);
            }
        };
        let total_timeout = options.total_timeout_value();
        let activity_name = name.clone();
        let future = self.issue(
            |id| Event::ActivityScheduled {
                id,
                name,
                input,
                retry,
                queue: options.queue_name().map(str::to_string),
            },
            decode,
        );
        match total_timeout {
            None => future,
            Some(total) => {
                // The total timeout is a durable timer of its own, issued right after the
                // activity: replay sees both commands and the same winner.
                let timer = self.create_timer(total);
                let failure = Failure::new(
                    codes::ACTIVITY_TOTAL_TIMED_OUT,
                    format!("activity '{activity_name}' did not finish within {total:?}"),
                );
                let slot = timer.release_slot();
                future.with_deadline(slot, failure)
            }
        }
    }

    /// A durable timer that fires `delay` after the current turn's time.
    pub fn create_timer(&self, delay: Duration) -> TimerFuture {
        let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        let fire_at_ms = self.now_ms().saturating_add(delay_ms);
        self.issue(|id| Event::TimerCreated { id, fire_at_ms }, decode_timer)
    }

    /// A durable timer: the same as [`OrchestrationContext::create_timer`].
    pub fn timer(&self, delay: Duration) -> TimerFuture {
        self.create_timer(delay)
    }

    /// Waits for the next external event called `name`, as text.
    ///
    /// Events are buffered durably: one raised before anybody waits is delivered to the first
    /// wait for its name; several are delivered one per wait, first in, first out. A wait that
    /// is dropped unresolved (a losing select branch) gives its event back.
    pub fn wait_for_event(&self, name: impl AsRef<str>) -> EventFuture {
        let slot = self.with_state(|state| state.add_wait(name.as_ref()));
        Durable::new(self.clone(), slot, decode_text_event)
    }

    /// Waits for the next external event called `name` and decodes its payload from JSON
    /// (a payload that does not decode resolves as a [`Failure`] of code `serde`, and the
    /// event is consumed). Buffering as in [`OrchestrationContext::wait_for_event`].
    pub fn event<T: DeserializeOwned>(&self, name: impl AsRef<str>) -> Durable<Result<T, Failure>> {
        let slot = self.with_state(|state| state.add_wait(name.as_ref()));
        Durable::new(self.clone(), slot, decode_json::<T>)
    }

    /// Takes the next message of the durable FIFO queue `queue` (filled by a client's
    /// `enqueue_event`), waiting if it is empty. Unconsumed messages survive continue-as-new.
    pub fn dequeue_event(&self, queue: impl AsRef<str>) -> EventFuture {
        self.wait_for_event(queue_event_name(queue.as_ref()))
    }

    /// [`OrchestrationContext::dequeue_event`], decoding the message from JSON.
    pub fn dequeue<T: DeserializeOwned>(
        &self,
        queue: impl AsRef<str>,
    ) -> Durable<Result<T, Failure>> {
        self.event(queue_event_name(queue.as_ref()))
    }

    /// Starts a sub-orchestration with a derived instance id and awaits its result.
    pub fn call_sub_orchestration(
        &self,
        name: impl Into<String>,
        input: impl Into<String>,
    ) -> SubOrchestrationFuture {
        self.sub_orchestration_derived(name.into(), input.into(), decode_text_result)
    }

    fn sub_orchestration_derived<T>(
        &self,
        name: String,
        input: String,
        decode: Decode<T>,
    ) -> Durable<T> {
        let (instance_id, execution_id, next_id) = self.with_state(|state| {
            (
                state.instance_id.clone(),
                state.execution_id,
                state.next_command_id,
            )
        });
        let instance_id = format!("{instance_id}::{execution_id}::{next_id}");
        self.issue_with(
            |id| Event::SubOrchestrationScheduled {
                id,
                name,
                instance_id,
                input,
            },
            true,
            decode,
        )
    }

    /// Starts a sub-orchestration under a chosen instance id and awaits its result. If the id
    /// is already taken, the result is a failure with code `instance_exists`.
    pub fn call_sub_orchestration_with_id(
        &self,
        name: impl Into<String>,
        instance_id: impl Into<String>,
        input: impl Into<String>,
    ) -> SubOrchestrationFuture {
        let (name, instance_id, input) = (name.into(), instance_id.into(), input.into());
        self.issue(
            |id| Event::SubOrchestrationScheduled {
                id,
                name,
                instance_id,
                input,
            },
            decode_text_result,
        )
    }

    /// Starts a sub-orchestration with a derived instance id, a serde-typed input and output
    /// (JSON), and awaits its result. Serde errors as in [`OrchestrationContext::activity`].
    pub fn sub_orchestration<O: DeserializeOwned>(
        &self,
        name: impl Into<String>,
        input: &(impl Serialize + ?Sized),
    ) -> Durable<Result<O, Failure>> {
        self.with_json_input(input, "sub-orchestration input", |input| {
            self.sub_orchestration_derived(name.into(), input, decode_json::<O>)
        })
    }

    /// [`OrchestrationContext::sub_orchestration`] under a chosen instance id.
    pub fn sub_orchestration_with_id<O: DeserializeOwned>(
        &self,
        name: impl Into<String>,
        instance_id: impl Into<String>,
        input: &(impl Serialize + ?Sized),
    ) -> Durable<Result<O, Failure>> {
        let (name, instance_id) = (name.into(), instance_id.into());
        self.with_json_input(input, "sub-orchestration input", |input| {
            self.issue(
                |id| Event::SubOrchestrationScheduled {
                    id,
                    name,
                    instance_id,
                    input,
                },
                decode_json::<O>,
            )
        })
    }

    /// Starts an orchestration that lives on independently (not awaited, not cancelled with this
    /// one). Starting an id that exists already does nothing.
    pub fn start_orchestration(
        &self,
        name: impl Into<String>,
        instance_id: impl Into<String>,
        input: impl Into<String>,
    ) {
        let (name, instance_id, input) = (name.into(), instance_id.into(), input.into());
        let future = self.issue(
            |id| Event::DetachedStarted {
                id,
                name,
                instance_id,
                input,
            },
            decode_timer,
        );
        // Nothing ever resolves a detached start; drop the handle without waiting.
        drop(future);
    }

    /// Ends this execution and starts a fresh one of the same instance with `input` and an
    /// empty history. Unconsumed events are carried over. The returned future never resolves:
    /// await it as the last statement.
    pub fn continue_as_new(
        &self,
        input: impl Into<String>,
    ) -> impl Future<Output = Result<String, Failure>> + Send + 'static {
        self.continue_as_new_text(input.into())
    }

    fn continue_as_new_text<O: Send + 'static>(
        &self,
        input: String,
    ) -> impl Future<Output = Result<O, Failure>> + Send + 'static {
        self.with_state(|state| {
            if state.continue_as_new.is_none() {
                state.continue_as_new = Some(input);
            }
        });
        std::future::pending()
    }

    /// [`OrchestrationContext::continue_as_new`] with a serde-typed input, from an
    /// orchestration of any output type: `return ctx.continue_as_new_with(&next).await;`. An
    /// input that does not serialise fails the orchestration (code `serde`).
    pub fn continue_as_new_with<O: Send + 'static>(
        &self,
        input: &(impl Serialize + ?Sized),
    ) -> impl Future<Output = Result<O, Failure>> + Send + 'static {
        let input = match to_json(input, "continue-as-new input") {
            Ok(input) => input,
            Err(failure) => {
                self.with_state(|state| state.fail(failure));
                String::new()
            }
        };
        self.continue_as_new_text(input)
    }

    /// Whether this execution takes the patched branch at the patch point `patch`:
    ///
    /// ```
    /// use sluice_history::Failure;
    /// use sluice_replay::OrchestrationContext;
    ///
    /// async fn checkout(ctx: OrchestrationContext, order: String) -> Result<String, Failure> {
    ///     let price = if ctx.is_patched("use-new-pricing") {
    ///         ctx.schedule_activity("price_v2", order.clone()).await?
    ///     } else {
    ///         ctx.schedule_activity("price", order.clone()).await?
    ///     };
    ///     ctx.schedule_activity("charge", price).await
    /// }
    /// ```
    ///
    /// True the first time the code passes the point (the answer is recorded in history as a
    /// `patch_marker`) and on every replay of such a history; false when replaying a history
    /// that an older build recorded past this point without the patch, so that instances
    /// started by the old code keep replaying its commands. Once no instance that ran the old
    /// code remains, replace the check with [`OrchestrationContext::deprecate_patch`], then,
    /// once no instance that recorded the marker remains, remove it.
    pub fn is_patched(&self, patch: &str) -> bool {
        self.with_state(|state| state.patch(patch, false))
    }

    /// The cleanup step of a patch: the code has only the new branch. Replays of histories
    /// that recorded the patch's marker consume it; nothing new is recorded.
    pub fn deprecate_patch(&self, patch: &str) {
        self.with_state(|state| state.patch(patch, true));
    }

    /// Resolves when all `futures` have, with their values in list order. The members are
    /// any durable work of one type: futures, or joins and selects of them.
    pub fn join<W: DurableWork>(&self, futures: Vec<W>) -> JoinFuture<W> {
        JoinFuture::new(futures)
    }

    /// Resolves when both have, with both values: `let (a, b) = ctx.join2(x, y).await;`.
    pub fn join2<A: DurableWork, B: DurableWork>(&self, a: A, b: B) -> Join2Future<A, B> {
        Join2Future::new(a, b)
    }

    /// Resolves when all three have, with their values.
    pub fn join3<A: DurableWork, B: DurableWork, C: DurableWork>(
        &self,
        a: A,
        b: B,
        c: C,
    ) -> Join3Future<A, B, C> {
        Join3Future::new(a, b, c)
    }

    /// Resolves with the index and value of the member whose result history recorded first.
    /// The others are dropped: their activities and sub-orchestrations are cancelled (recorded
    /// as `cancel_requested` in history), and event waits give back their events.
    ///
    /// A select over no futures could never resolve: it fails the orchestration with code
    /// `orchestration_failed` and never resolves.
    pub fn select<W: DurableWork>(&self, futures: Vec<W>) -> SelectFuture<W> {
        if futures.is_empty() {
            let failure = Failure::new(codes::ORCHESTRATION_FAILED, "select over no futures");
            self.with_state(|state| state.fail(failure));
        }
        SelectFuture::new(futures)
    }

    /// Resolves with whichever of two pieces of work of any types history resolved first
    /// (ties to `a`); the loser is dropped as in [`OrchestrationContext::select`]. Either side
    /// may be a join: `ctx.select2(ctx.join2(a, b), ctx.timer(d))`.
    pub fn select2<A: DurableWork, B: DurableWork>(&self, a: A, b: B) -> Select2Future<A, B> {
        Select2Future::new(a, b)
    }

    /// [`OrchestrationContext::select2`] over three.
    pub fn select3<A: DurableWork, B: DurableWork, C: DurableWork>(
        &self,
        a: A,
        b: B,
        c: C,
    ) -> Select3Future<A, B, C> {
        Select3Future::new(a, b, c)
    }
}

fn to_json(value: &(impl Serialize + ?Sized), what: &str) -> Result<String, Failure> {
    serde_json::to_string(value)
        .map_err(|error| Failure::new(codes::SERDE, format!("{what}: {error}")))
}

/// The event name under which queue messages travel.
pub fn queue_event_name(queue: &str) -> String {
    format!("queue:{queue}")
}
