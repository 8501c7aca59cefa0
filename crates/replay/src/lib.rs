//! The deterministic replay engine.
//!
//! An orchestration is an async function over an [`OrchestrationContext`]. A *turn* runs it
//! from the start against the execution's history plus the events that arrived since the last
//! turn ([`run_turn`]). Events are applied one at a time, in history order, and the code is
//! polled after each one that resolves something it waits for, so every join and select sees
//! results in history order and replays identically.
//!
//! Commands the code issues (activities, timers, sub-orchestrations) get sequential ids. On
//! replay each command must match the one history recorded under its id; a mismatch, a command
//! history lacks, or a recorded command the code no longer issues fails the instance with a
//! coded nondeterminism [`Failure`](sluice_history::Failure), never a panic.
//!
//! Architecture invariant: this crate does no I/O, reads no clock and draws no randomness. Time
//! comes from `TurnStarted` events and GUIDs from the seed in `OrchestrationStarted`.
//!
//! A turn is a pure function of the code and the history: the first turn schedules the
//! activity, the second, given its result, completes.
//!
//! ```
//! use sluice_history::{Event, Failure};
//! use sluice_replay::{OrchestrationContext, TurnOutcome, run_turn};
//! use std::sync::Arc;
//!
//! async fn shout(ctx: OrchestrationContext, input: String) -> Result<String, Failure> {
//!     let upper = ctx.schedule_activity("upper", input).await?;
//!     Ok(format!("{upper}!"))
//! }
//!
//! let start = vec![
//!     Event::TurnStarted { now_ms: 1_000 },
//!     Event::OrchestrationStarted {
//!         name: "shout".into(),
//!         input: "hi".into(),
//!         parent: None,
//!         guid_seed: 7,
//!         version: None,
//!     },
//! ];
//! let first = run_turn(&shout, "i1", 1, Arc::new(Vec::new()), start);
//! assert!(matches!(first.outcome, TurnOutcome::Waiting));
//! let scheduled: Vec<&Event> = first.new_commands().collect();
//! assert!(matches!(scheduled[..], [Event::ActivityScheduled { id: 0, .. }]));
//!
//! let result = vec![
//!     Event::TurnStarted { now_ms: 2_000 },
//!     Event::ActivityCompleted { id: 0, output: "HI".into() },
//! ];
//! let second = run_turn(&shout, "i1", 1, Arc::new(first.appended), result);
//! assert!(matches!(second.outcome, TurnOutcome::Completed(ref output) if output == "HI!"));
//! ```
#![warn(missing_docs)]

mod context;
mod durable;
mod engine;
mod options;
mod state;

pub use context::{Orchestration, OrchestrationContext, OrchestrationFuture, queue_event_name};
pub use durable::{
    ActivityFuture, Durable, DurableOutput, DurableWork, Either, Either3, EventFuture, Join2Future,
    Join3Future, JoinFuture, Select2Future, Select3Future, SelectFuture, SubOrchestrationFuture,
    TimerFuture,
};
pub use engine::{TurnOutcome, TurnResult, run_turn};
pub use options::{ActivityOptions, ActivityOptionsError};
