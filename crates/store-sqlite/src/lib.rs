//! The SQLite store: the embedded default, in a file or in memory.
//!
//! Every write goes through the group-commit writer of `sluice-sqlite`, so concurrent turns,
//! fetches and completions share one transaction and one fsync, and no caller ever sees
//! "database is locked". File databases read through separate WAL reader connections;
//! in-memory databases have a single connection and read through the writer too.
//!
//! Commits are durable when acknowledged (`synchronous=FULL`) unless the store was opened with
//! [`Synchronous::Normal`], which may lose the last commits on power loss (not on a process
//! crash).
#![warn(missing_docs)]

mod schema;
mod store;

pub use sluice_sqlite::{Location, Synchronous};
pub use store::{SqliteStore, SqliteStoreOptions};
