//! The async host of durable orchestrations.
//!
//! A [`Runtime`] runs two dispatchers over a [`Store`](sluice_store::Store): one takes
//! orchestration turns (replaying the code with `sluice-replay` and committing what it did),
//! the other runs activities. Both wake on the store's in-process signals and otherwise sleep
//! until the next timer or lease expiry; polling is only a slow fallback for work committed by
//! other processes. A [`Client`] starts, signals, cancels, waits for and inspects instances.
//!
//! Architecture invariant: the runtime knows only the `Store` trait, never a concrete store.
#![warn(missing_docs)]

mod activity;
mod cache;
mod client;
mod dispatcher;
mod error;
mod handoff;
mod metrics;
mod poison;
mod registry;
mod runtime;
mod task;
mod worker;

pub use activity::ActivityContext;
pub use client::{Client, StartOutcome};
pub use error::ClientError;
pub use metrics::{MetricKind, MetricName};
pub use registry::{Activity, BoxedActivityFuture, Registry};
pub use runtime::{Runtime, RuntimeOptions};

pub use sluice_history::{Backoff, Event, Failure, InstanceStatus, RetryPolicy, codes};
pub use sluice_replay::{
    ActivityFuture, Durable, DurableOutput, EventFuture, OrchestrationContext,
    SubOrchestrationFuture, TimerFuture,
};
pub use sluice_store::InstanceInfo;
