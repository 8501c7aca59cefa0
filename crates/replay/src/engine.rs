//! The turn driver: applies events in order and polls the code between them.

use crate::context::{Orchestration, OrchestrationContext, OrchestrationFuture};
use crate::state::State;
use sluice_history::{Event, Failure, codes};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// How a turn left the execution.
#[derive(Clone, Debug, PartialEq)]
pub enum TurnOutcome {
    /// The code waits for more results.
    Waiting,
    /// The code returned a value.
    Completed(String),
    /// The code failed, or the engine failed it (nondeterminism, panic).
    Failed(Failure),
    /// The code continued as new with this input, carrying these unconsumed events.
    ContinuedAsNew {
        /// Input of the next execution.
        input: String,
        /// Unconsumed `(name, data)` events, in history order.
        carried_events: Vec<(String, String)>,
    },
}

/// What a turn produced.
#[derive(Debug)]
pub struct TurnResult {
    /// Events to append to history: the new events, the commands issued after each, and a
    /// terminal event when the execution ended.
    pub appended: Vec<Event>,
    /// How the execution stands.
    pub outcome: TurnOutcome,
    /// The custom status the code set, if it set one.
    pub custom_status: Option<String>,
}

impl TurnResult {
    /// The commands issued this turn (new work for the runtime to persist).
    pub fn new_commands(&self) -> impl Iterator<Item = &Event> {
        self.appended.iter().filter(|event| event.is_command())
    }
}

struct FlagWaker(AtomicBool);

impl Wake for FlagWaker {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

/// Runs one turn.
///
/// `history` is what earlier turns recorded for this execution; `new_events` are the events
/// this turn adds (a `TurnStarted`, then messages turned into events; the first turn also
/// carries `OrchestrationStarted`). The function is pure: same inputs, same result.
pub fn run_turn(
    orchestration: &dyn Orchestration,
    instance_id: &str,
    execution_id: u64,
    history: Arc<Vec<Event>>,
    new_events: Vec<Event>,
) -> TurnResult {
    let replay_len = history.len();
    let state = Arc::new(Mutex::new(State::new(
        instance_id.to_string(),
        execution_id,
        history.clone(),
    )));
    let ctx = OrchestrationContext::new(state.clone());
    let flag = Arc::new(FlagWaker(AtomicBool::new(false)));
    let waker = Waker::from(flag.clone());
    let mut task_context = Context::from_waker(&waker);
    let mut future: Option<OrchestrationFuture> = None;
    let mut finished: Option<Result<String, Failure>> = None;
    let total = replay_len + new_events.len();

    for position in 0..total {
        let event = if position < replay_len {
            &history[position]
        } else {
            &new_events[position - replay_len]
        };
        ctx.with_state(|state| {
            state.cursor = position + 1;
            if position >= replay_len {
                state.appended.push(event.clone());
            }
            state.apply(position, event);
        });
        if finished.is_some() || ctx.with_state(|state| state.failure.is_some()) {
            // Keep recording the remaining new events (nothing is dropped from history),
            // without running the code again.
            continue;
        }
        let mut must_poll = flag.0.swap(false, Ordering::AcqRel);
        if let Event::OrchestrationStarted { input, .. } = event
            && future.is_none()
        {
            let started = catch_unwind(AssertUnwindSafe(|| {
                orchestration.start(ctx.clone(), input.clone())
            }));
            match started {
                Ok(started) => future = Some(started),
                Err(panic) => {
                    finished = Some(Err(panic_failure(panic.as_ref())));
                    continue;
                }
            }
            must_poll = true;
        }
        let Some(running) = future.as_mut() else {
            continue;
        };
        if !must_poll {
            continue;
        }
        match catch_unwind(AssertUnwindSafe(|| {
            running.as_mut().poll(&mut task_context)
        })) {
            Ok(Poll::Ready(result)) => finished = Some(result),
            Ok(Poll::Pending) => {}
            Err(panic) => finished = Some(Err(panic_failure(panic.as_ref()))),
        }
        let (replaying, continued) =
            ctx.with_state(|state| (state.is_replaying(), state.continue_as_new.is_some()));
        if (finished.is_some() || continued) && replaying {
            ctx.with_state(|state| {
                state.fail(Failure::new(
                    codes::NONDETERMINISM_EARLY_FINISH,
                    format!(
                        "the code finished at history position {position}, but history \
                         continues to position {}",
                        replay_len - 1
                    ),
                ))
            });
        }
        if continued {
            finished.get_or_insert(Ok(String::new()));
        }
    }
    // Drop the code before reading the state: dropping it may give back buffered events. The
    // futures it still holds are waited for, not cancelled.
    ctx.with_state(|state| state.tearing_down = true);
    drop(future);

    let mut state = state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if state.failure.is_none()
        && let Some(missing) = state.missing_command()
    {
        state.fail(missing);
    }
    let outcome = match (state.failure.take(), finished) {
        (Some(failure), _) => TurnOutcome::Failed(failure),
        (None, None) => TurnOutcome::Waiting,
        (None, Some(result)) => match state.continue_as_new.take() {
            Some(input) => TurnOutcome::ContinuedAsNew {
                input,
                carried_events: state.unconsumed_events(),
            },
            None => match result {
                Ok(output) => TurnOutcome::Completed(output),
                Err(failure) => TurnOutcome::Failed(failure),
            },
        },
    };
    let mut appended = std::mem::take(&mut state.appended);
    match &outcome {
        TurnOutcome::Waiting => {}
        TurnOutcome::Completed(output) => appended.push(Event::OrchestrationCompleted {
            output: output.clone(),
        }),
        TurnOutcome::Failed(failure) => appended.push(Event::OrchestrationFailed {
            failure: failure.clone(),
        }),
        TurnOutcome::ContinuedAsNew { input, .. } => appended.push(Event::ContinuedAsNew {
            input: input.clone(),
        }),
    }
    TurnResult {
        appended,
        outcome,
        custom_status: state.custom_status.take(),
    }
}

fn panic_failure(panic: &(dyn std::any::Any + Send)) -> Failure {
    let message = panic
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic payload".to_string());
    Failure::new(codes::ORCHESTRATION_PANICKED, message)
}
