//! Complete programs on Sluice's typed orchestration API, one per file in `src/bin`:
//!
//! - `approval`: an approval with a timeout (a durable timer raced against a typed event),
//!   a reminder, and the decision from a client.
//! - `fan_out`: a typed fan-out over many activities with retries and timeouts, joined.
//! - `saga`: a booking saga whose failed step (a non-retryable failure) triggers compensation
//!   of the steps done, in reverse.
//!
//! Each runs on a SQLite file in a temporary directory, prints what happened and exits
//! non-zero if the outcome is not the expected one. `cargo run -p sluice-examples --bin
//! approval` runs one; `cargo test -p sluice-examples` runs all three.

use sluice_runtime::{Registry, Runtime, RuntimeOptions};
use sluice_store_sqlite::{Location, SqliteStore, SqliteStoreOptions};
use std::sync::Arc;

/// A runtime over a fresh SQLite file; keep the directory alive while it runs.
pub fn start(registry: Registry) -> (Runtime, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let options = SqliteStoreOptions::new(Location::File(dir.path().join("example.db")));
    let store = Arc::new(SqliteStore::open(options).expect("the store opens"));
    let runtime = Runtime::start(store, registry, RuntimeOptions::default()).expect("it starts");
    (runtime, dir)
}

/// Every `rust` block of the README, compiled (and those with a `main`, run) as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
