//! The PostgreSQL implementation of Sluice's [`Store`](sluice_store::Store): many worker
//! processes, on many machines, share one database.
//!
//! Work is claimed with `FOR UPDATE SKIP LOCKED` under leases judged by the database's clock
//! (`statement_timestamp()`, through the schema's `now_ms` function), never a worker's. Every
//! claim takes a fresh token from a sequence, and every later write of that claim (commit,
//! completion, renewal, release) matches it and the lease's end in the same statement, so a
//! process whose lease was taken over (paused, partitioned, slow) can never write.
//!
//! Processes wake each other with LISTEN/NOTIFY, coalesced (see `wake.rs`); the runtime's
//! slow poll is only the fallback.
//!
//! Where this store stands: it passes the store conformance suite and its multi-process
//! checks. Turn commits are grouped: what a process has ready goes in one transaction
//! (`commit.rs`). Connections (pool and listener) use TLS as the URL says
//! (`sluice_postgres::tls`). A process can fetch only the orchestration and activity names it
//! has code for (`fetch_turns_named`, `fetch_activities_named`), so builds with different code
//! share one database.
//!
//! ```no_run
//! use sluice_store_postgres::{PostgresStore, PostgresStoreOptions};
//! use std::sync::Arc;
//!
//! # async fn example() -> Result<(), sluice_store_postgres::PostgresStoreError> {
//! // Every worker process connects to the same database; the schema is migrated on connect.
//! let options = PostgresStoreOptions::new("postgres://sluice@db.internal/sluice?sslmode=require")?;
//! let store = Arc::new(PostgresStore::connect(options).await?);
//! // Hand `store` to `sluice_runtime::Runtime::start` as any other store.
//! # let _ = store;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod commit;
mod operator;
mod read;
mod schema;
mod store;
mod wake;

pub use schema::MigrateError;
pub use store::{APPLICATION_NAME, PostgresStore, PostgresStoreError, PostgresStoreOptions};
