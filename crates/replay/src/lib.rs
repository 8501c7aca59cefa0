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
#![warn(missing_docs)]

mod context;
mod durable;
mod engine;
mod state;

pub use context::{Orchestration, OrchestrationContext, OrchestrationFuture, queue_event_name};
pub use durable::{
    ActivityFuture, Durable, DurableOutput, EventFuture, JoinFuture, SelectFuture,
    SubOrchestrationFuture, TimerFuture,
};
pub use engine::{TurnOutcome, TurnResult, run_turn};
