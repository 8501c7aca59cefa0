//! The orchestration context: the only door from orchestration code to the outside world.

use crate::durable::{
    ActivityFuture, Durable, EventFuture, FromCompletion, JoinFuture, SelectFuture,
    SubOrchestrationFuture, TimerFuture,
};
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

    fn issue<T: FromCompletion>(&self, build: impl FnOnce(u64) -> Event) -> (Durable<T>, Event) {
        self.issue_with(build, false)
    }

    /// [`Self::issue`], saying whether the command's instance id was derived (see
    /// `State::issue_with`).
    fn issue_with<T: FromCompletion>(
        &self,
        build: impl FnOnce(u64) -> Event,
        derived_id: bool,
    ) -> (Durable<T>, Event) {
        let (slot, event) = self.with_state(|state| {
            let command = build(state.next_command_id);
            match state.issue_with(command.clone(), derived_id) {
                Some((id, recorded)) => (Slot::Command(id), recorded),
                None => (Slot::Dead, command),
            }
        });
        (Durable::new(self.clone(), slot), event)
    }

    /// Schedules an activity with text input; resolves to its output or its failure.
    pub fn schedule_activity(
        &self,
        name: impl Into<String>,
        input: impl Into<String>,
    ) -> ActivityFuture {
        self.schedule(name.into(), input.into(), None, None)
    }

    /// Schedules an activity that is retried by `retry` when an attempt fails or times out.
    pub fn schedule_activity_with_retry(
        &self,
        name: impl Into<String>,
        input: impl Into<String>,
        retry: RetryPolicy,
    ) -> ActivityFuture {
        if let Err(error) = retry.validate() {
            let failure = Failure::new(
                codes::ORCHESTRATION_FAILED,
                format!("bad retry policy: {error}"),
            );
            self.with_state(|state| state.fail(failure));
            return Durable::new(self.clone(), Slot::Dead);
        }
        self.schedule(name.into(), input.into(), Some(retry), None)
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
        if let Some(Err(error)) = retry.as_ref().map(RetryPolicy::validate) {
            let failure = Failure::new(
                codes::ORCHESTRATION_FAILED,
                format!("bad retry policy: {error}"),
            );
            self.with_state(|state| state.fail(failure));
            return Durable::new(self.clone(), Slot::Dead);
        }
        self.schedule(name.into(), input.into(), retry, Some(queue.into()))
    }

    fn schedule(
        &self,
        name: String,
        input: String,
        retry: Option<RetryPolicy>,
        queue: Option<String>,
    ) -> ActivityFuture {
        self.issue(|id| Event::ActivityScheduled {
            id,
            name,
            input,
            retry,
            queue,
        })
        .0
    }

    /// Schedules an activity with serde-typed input and output (JSON on the wire).
    pub fn schedule_activity_typed<I: Serialize, O: DeserializeOwned>(
        &self,
        name: impl Into<String>,
        input: &I,
        retry: Option<RetryPolicy>,
    ) -> impl Future<Output = Result<O, Failure>> + Send + 'static {
        let scheduled = serde_json::to_string(input)
            .map_err(|error| Failure::new(codes::SERDE, format!("activity input: {error}")))
            .map(|input| match retry {
                Some(retry) => self.schedule_activity_with_retry(name, input, retry),
                None => self.schedule_activity(name, input),
            });
        async move {
            let output = scheduled?.await?;
            serde_json::from_str(&output)
                .map_err(|error| Failure::new(codes::SERDE, format!("activity output: {error}")))
        }
    }

    /// A durable timer that fires `delay` after the current turn's time.
    pub fn create_timer(&self, delay: Duration) -> TimerFuture {
        let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        let fire_at_ms = self.now_ms().saturating_add(delay_ms);
        self.issue(|id| Event::TimerCreated { id, fire_at_ms }).0
    }

    /// Waits for the next external event called `name`.
    ///
    /// Events are buffered durably: one raised before anybody waits is delivered to the first
    /// wait for its name; several are delivered one per wait, first in, first out. A wait that
    /// is dropped unresolved (a losing select branch) gives its event back.
    pub fn wait_for_event(&self, name: impl AsRef<str>) -> EventFuture {
        let slot = self.with_state(|state| state.add_wait(name.as_ref()));
        Durable::new(self.clone(), slot)
    }

    /// Takes the next message of the durable FIFO queue `queue` (filled by a client's
    /// `enqueue_event`), waiting if it is empty. Unconsumed messages survive continue-as-new.
    pub fn dequeue_event(&self, queue: impl AsRef<str>) -> EventFuture {
        self.wait_for_event(queue_event_name(queue.as_ref()))
    }

    /// Starts a sub-orchestration with a derived instance id and awaits its result.
    pub fn call_sub_orchestration(
        &self,
        name: impl Into<String>,
        input: impl Into<String>,
    ) -> SubOrchestrationFuture {
        let (instance_id, execution_id, next_id) = self.with_state(|state| {
            (
                state.instance_id.clone(),
                state.execution_id,
                state.next_command_id,
            )
        });
        let instance_id = format!("{instance_id}::{execution_id}::{next_id}");
        let (name, input) = (name.into(), input.into());
        self.issue_with(
            |id| Event::SubOrchestrationScheduled {
                id,
                name,
                instance_id,
                input,
            },
            true,
        )
        .0
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
        self.issue(|id| Event::SubOrchestrationScheduled {
            id,
            name,
            instance_id,
            input,
        })
        .0
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
        let (future, _) = self.issue::<()>(|id| Event::DetachedStarted {
            id,
            name,
            instance_id,
            input,
        });
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
        let input = input.into();
        self.with_state(|state| {
            if state.continue_as_new.is_none() {
                state.continue_as_new = Some(input);
            }
        });
        std::future::pending()
    }

    /// Resolves when all `futures` have, with their values in list order.
    pub fn join<T: FromCompletion>(&self, futures: Vec<Durable<T>>) -> JoinFuture<T> {
        JoinFuture::new(futures)
    }

    /// Resolves with the index and value of the future whose result history recorded first.
    /// The others are dropped: their commands stay scheduled, but event waits give back their
    /// events.
    ///
    /// A select over no futures could never resolve: it fails the orchestration with code
    /// `orchestration_failed` and never resolves.
    pub fn select<T: FromCompletion>(&self, futures: Vec<Durable<T>>) -> SelectFuture<T> {
        if futures.is_empty() {
            let failure = Failure::new(codes::ORCHESTRATION_FAILED, "select over no futures");
            self.with_state(|state| state.fail(failure));
        }
        SelectFuture::new(futures)
    }
}

/// The event name under which queue messages travel.
pub fn queue_event_name(queue: &str) -> String {
    format!("queue:{queue}")
}
