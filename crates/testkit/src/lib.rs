//! Test helpers for Sluice.
//!
//! This crate is a dev-dependency only. It provides:
//!
//! * [`TempSqlite`]: a temporary directory holding the path of a SQLite
//!   database file that has not been created yet.
//! * [`PgCluster`]: a throwaway PostgreSQL cluster (initdb + pg_ctl) on a free
//!   loopback port, stopped and deleted on drop.
//! * [`pg_or_skip`] / [`require_postgres`]: the convention for tests that need
//!   PostgreSQL — skip with a `SKIPPED` line on stderr when it is unavailable,
//!   unless `SLUICE_REQUIRE_POSTGRES` is set (as in CI), in which case panic.
//! * [`NatsServer`]: a throwaway `nats-server -js` on a free loopback port with its store in a
//!   temporary directory, killed on drop; [`nats_or_skip`] / [`require_nats`] follow the same
//!   convention with `SLUICE_REQUIRE_NATS`.
//! * [`process`]: signals to child processes (`kill(2)`), waiting with a timeout, and
//!   [`process::LoggedChild`] (output in a log file, killed on drop).
//! * [`crash`]: crash loops, a child SIGKILLed at seeded random moments
//!   ([`crash::Schedule`], [`crash::CrashLoop`]).
//!
//! ```
//! use sluice_testkit::{TempSqlite, pg_or_skip};
//!
//! let file = TempSqlite::new(); // a path in a fresh directory, removed on drop
//! assert!(!file.path().exists());
//! // A throwaway PostgreSQL 15 cluster, or a SKIPPED line when there is none (unless
//! // SLUICE_REQUIRE_POSTGRES is set, which makes that a failure).
//! if let Some(cluster) = pg_or_skip("testkit example") {
//!     let url = cluster.create_database("example").unwrap();
//!     assert!(url.starts_with("postgres://"));
//!     assert_eq!(cluster.psql_in("example", "SELECT 1 + 1").unwrap(), "2");
//! }
//! ```
#![warn(missing_docs)]

pub mod crash;
mod nats;
mod pg;
pub mod process;
mod sqlite;
mod sys;

pub use nats::{NatsServer, NatsUnavailable, nats_or_skip, require_nats};
pub use pg::{
    PgCluster, PgError, PgUnavailable, TlsFiles, pg_or_skip, pg_tls_or_skip, require_postgres,
};
pub use sqlite::TempSqlite;
