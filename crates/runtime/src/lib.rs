//! The async host of durable orchestrations.
//!
//! A [`Runtime`] runs two dispatchers over a [`Store`](sluice_store::Store): one takes
//! orchestration turns (replaying the code with `sluice-replay` and committing what it did),
//! the other runs activities. Both wake on the store's in-process signals and otherwise sleep
//! until the next timer or lease expiry; polling is only a slow fallback for work committed by
//! other processes. A [`Client`] starts, signals, cancels, waits for and inspects instances.
//!
//! Architecture invariant: the runtime knows only the `Store` trait, never a concrete store.
//!
//! ```
//! use sluice_runtime::{
//!     ActivityContext, ActivityOptions, Either, Failure, OrchestrationContext, Registry,
//!     RetryPolicy, Runtime, RuntimeOptions,
//! };
//! use sluice_store_sqlite::{Location, SqliteStore, SqliteStoreOptions};
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! /// An orchestration: replayed from its history, so it only asks for work through `ctx`.
//! async fn greet(ctx: OrchestrationContext, names: Vec<String>) -> Result<String, Failure> {
//!     let retry = ActivityOptions::new().retry(RetryPolicy::attempts(3));
//!     let greetings = names
//!         .iter()
//!         .map(|name| ctx.activity_with::<String>("hello", name, &retry))
//!         .collect();
//!     // All greetings, or a timeout: whichever history records first.
//!     match ctx.select2(ctx.join(greetings), ctx.timer(Duration::from_secs(60))).await {
//!         Either::Left(greetings) => Ok(greetings.into_iter().collect::<Result<Vec<_>, _>>()?.join("; ")),
//!         Either::Right(()) => Err(Failure::new("timed_out", "no greeting within a minute")),
//!     }
//! }
//!
//! /// An activity: ordinary code, run at least once, its result recorded.
//! async fn hello(_ctx: ActivityContext, name: String) -> Result<String, Failure> {
//!     Ok(format!("hello, {name}"))
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let store = Arc::new(SqliteStore::open(SqliteStoreOptions::new(Location::Memory)).unwrap());
//! let registry = Registry::new()
//!     .orchestration_typed("greet", greet)
//!     .activity_typed("hello", hello);
//! let runtime = Runtime::start(store, registry, RuntimeOptions::default()).unwrap();
//! let client = runtime.client();
//! let names = vec!["Ada".to_string(), "Alan".to_string()];
//! client.start_typed("greet", "greet-1", &names).await.unwrap();
//! let greeting: String = client
//!     .wait_for_output("greet-1", Duration::from_secs(30))
//!     .await
//!     .unwrap();
//! assert_eq!(greeting, "hello, Ada; hello, Alan");
//! runtime.shutdown(Duration::from_secs(5)).await;
//! # }
//! ```
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
mod replay_check;
mod retention;
mod runtime;
mod task;
mod worker;

pub use activity::ActivityContext;
pub use client::{Client, StartOutcome};
pub use error::{ClientError, StartError};
pub use metrics::{MetricKind, MetricName};
pub use registry::{Activity, BoxedActivityFuture, Registry};
pub use replay_check::{ReplayCheckFailure, ReplayCheckReport, UNFINISHED, replay_check};
pub use retention::{RetentionPolicy, run_retention};
pub use runtime::{Runtime, RuntimeOptions};

pub use sluice_history::{Backoff, Event, Failure, InstanceStatus, RetryPolicy, codes};
pub use sluice_replay::{
    ActivityFuture, ActivityOptions, ActivityOptionsError, Durable, DurableOutput, Either, Either3,
    EventFuture, OrchestrationContext, SubOrchestrationFuture, TimerFuture,
};
pub use sluice_store::bulk::{BulkAction, BulkOutcome, BulkRequest};
pub use sluice_store::{ChildPolicy, InstanceFilter, InstanceInfo};
