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
//!
//! ```
//! use sluice_store::{NewInstance, Store};
//! use sluice_store_sqlite::{Location, SqliteStore, SqliteStoreOptions};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let file = sluice_testkit::TempSqlite::new();
//! let options = SqliteStoreOptions::new(Location::File(file.path().to_path_buf()));
//! let store = SqliteStore::open(options).unwrap();
//! let start = NewInstance {
//!     instance_id: "order-1".into(),
//!     name: "checkout".into(),
//!     input: "{}".into(),
//!     parent: None,
//!     version: None,
//! };
//! assert!(store.create_instance(start.clone()).await.unwrap());
//! assert!(!store.create_instance(start).await.unwrap(), "starting is idempotent");
//! let info = store.instance("order-1").await.unwrap().unwrap();
//! assert_eq!(info.name, "checkout");
//! # }
//! ```
#![warn(missing_docs)]

mod operator;
mod purge;
mod schema;
mod store;

pub use sluice_sqlite::{Location, Synchronous};
pub use store::{SqliteStore, SqliteStoreOptions};
