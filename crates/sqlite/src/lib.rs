//! SQLite access for Sluice: connections opened and verified the same way everywhere, and the
//! group-commit writer.
//!
//! SQLite allows one writer at a time. Instead of letting many connections fight for the write
//! lock (and surface "database is locked"), one thread owns the only write connection. Callers
//! send it closures; it drains its queue, runs the closures in one transaction with a savepoint
//! each (so one failing closure does not undo the others), commits once (one fsync for the whole
//! batch) and only then answers every caller. Reads use separate WAL connections
//! ([`ReaderPool`]).
//!
//! A caller that decides itself when its writes become durable (the sink's exactly-once
//! delivery) holds the transaction open instead: [`GroupCommitWriter::write_uncommitted`] runs a
//! closure in its savepoint and answers at once, [`GroupCommitWriter::commit_held`] commits
//! everything held, [`GroupCommitWriter::rollback_held`] discards it. Plain writes that arrive
//! meanwhile run in the held transaction and are answered when it ends.
//!
//! The WAL of a file database is checkpointed by a thread of its own, so copying pages into the
//! database file does not hold up the writer (see `checkpointer`).
//!
//! Limits: the request queue holds at most `queue_requests_max` requests (senders wait when it
//! is full: back-pressure) and one group transaction runs at most `batch_requests_max` of them
//! (a held transaction runs every request until its owner ends it).
//!
//! ```
//! use sluice_sqlite::{GroupCommitWriter, Location, OpenOptions};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let dir = tempfile::tempdir().unwrap();
//! let options = OpenOptions::new(Location::File(dir.path().join("app.db")));
//! // Queue at most 1,024 requests; one transaction takes at most 256 of them.
//! let writer = GroupCommitWriter::open(&options, 1_024, 256, |connection| {
//!     connection.execute_batch("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT)")?;
//!     Ok(())
//! })
//! .unwrap();
//! // Concurrent writes share one transaction and one fsync; each is answered once durable.
//! let insert = |key: &'static str| {
//!     writer.write(move |connection| connection.execute("INSERT INTO kv VALUES (?1, 'v')", [key]))
//! };
//! let (a, b) = tokio::join!(insert("a"), insert("b"));
//! assert_eq!((a.unwrap(), b.unwrap()), (1, 1));
//! // A failing write rolls back its own savepoint only.
//! assert!(insert("a").await.is_err(), "the key exists");
//! let count: i64 = writer
//!     .write(|connection| connection.query_row("SELECT count(*) FROM kv", [], |row| row.get(0)))
//!     .await
//!     .unwrap();
//! assert_eq!(count, 2);
//! # }
//! ```
#![warn(missing_docs)]

mod checkpointer;
mod connection;
mod reader;
mod writer;

pub use checkpointer::WAL_CHECKPOINT_PAGES;
pub use connection::{
    Journal, Location, OpenOptions, SQLITE_VERSION_MIN, Synchronous, check_library_version,
    open_connection,
};
pub use reader::ReaderPool;
pub use writer::{GroupCommitWriter, HeldClaim, WriteError, WriterStats};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    /// The linked SQLite is older than [`SQLITE_VERSION_MIN`].
    #[error(
        "SQLite {found} is linked, but {required} or newer is required (older versions can corrupt \
         WAL databases)"
    )]
    VersionTooOld {
        /// The linked version.
        found: String,
        /// The minimum.
        required: String,
    },
    /// A PRAGMA did not take the value that was set.
    #[error("PRAGMA {pragma} is {actual} after setting it to {wanted}")]
    PragmaNotApplied {
        /// Which pragma.
        pragma: &'static str,
        /// The value set.
        wanted: String,
        /// The value read back.
        actual: String,
    },
    /// An error from SQLite.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The writer thread could not be started.
    #[error("cannot start the writer thread: {0}")]
    Spawn(std::io::Error),
    /// The database is used by another process (or another store in this process).
    #[error("database in use: {0}")]
    InUse(String),
    /// The database's schema is not one this build can open this way.
    #[error("database schema: {0}")]
    Schema(String),
    /// A reader task failed to run.
    #[error("reader task failed: {0}")]
    ReaderTask(String),
}
