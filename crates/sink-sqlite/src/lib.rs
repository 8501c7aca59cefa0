//! The SQLite backend of the Sluice sink, on the group-commit writer of `sluice-sqlite`.
//!
//! Each batch is one closure on the writer thread: multi-row prepared statements (deletes,
//! upserts as `INSERT ... ON CONFLICT (key) DO UPDATE SET ...`, inserts) inside the writer's
//! savepoint, acknowledged after the shared transaction commits. A batch larger than SQLite's
//! bound-parameter limit (read from the connection; 32,766 by default) is cut into several
//! statements inside that same savepoint, so it is written whole or not at all.
//!
//! At start the backend reads the table with `pragma_table_xinfo`, `pragma_index_list` and
//! `pragma_index_info` and refuses a schema that does not fit (missing columns, an affinity that
//! would change values, NULLs the table forbids, NOT NULL columns the rows cannot fill, a key
//! that is not the primary key or a unique non-partial index), listing every problem.
//!
//! # How values are stored
//!
//! | Value | Storage class | Created as | Notes |
//! |---|---|---|---|
//! | Bool | INTEGER 0/1 | `BOOLEAN` | |
//! | I64 | INTEGER | `INTEGER` | full 64-bit range |
//! | F64 | REAL | `REAL` | ±infinity as REAL. NaN and -0.0 as an 8-byte BLOB of the IEEE-754 bits (big-endian), because SQLite stores NaN as NULL and -0.0 as 0. In a STRICT table's REAL column those two are refused and dead-lettered. |
//! | Decimal | TEXT | `TEXT` | the canonical text, exact; a NUMERIC column would turn it into a float, so it is refused |
//! | Text | TEXT | `TEXT` | empty text and NULL stay distinct |
//! | Bytes | BLOB | `BLOB` | |
//! | Json | TEXT | `TEXT` | the caller's text, verbatim |
//! | Uuid | BLOB (16 bytes) | `BLOB` | |
//! | Date | INTEGER days since 1970-01-01 | `INTEGER` | `date(col * 86400, 'unixepoch')` shows it |
//! | Timestamp | INTEGER microseconds since 1970-01-01T00:00:00 (wall clock, no zone) | `INTEGER` | |
//! | TimestampTz | INTEGER microseconds since the Unix epoch (UTC) | `INTEGER` | `datetime(col / 1000000, 'unixepoch')` shows it |
//!
//! Columns created by the sink use these declared types; existing columns are accepted when
//! their affinity keeps the values unchanged (for example I64 in INTEGER or NUMERIC, text in
//! TEXT or untyped columns).
//!
//! # Exactly-once delivery
//!
//! `delivery = "transactional_marker"` is supported; `"two_phase"` is refused at open (SQLite
//! has no prepared transactions). SQLite has a single writer, so all lanes write into one
//! transaction that the group-commit writer holds open between checkpoints
//! (`GroupCommitWriter::write_uncommitted`): each batch and each set of dead letters runs in its
//! own savepoint, so a refused row rolls back only that call and the engine bisects inside the
//! open transaction. Nothing of it is visible to other connections. `pre_commit(c, state)`
//! upserts this writer's progress row and commits it with every row of the checkpoint in one
//! `COMMIT` (`commit_held`); `commit` has nothing left to do. `abort`, `close` and `recover`
//! roll the open transaction back; `recover` then returns the progress row. A crash before the
//! `COMMIT` leaves nothing of the checkpoint behind.
//!
//! The progress table (`progress_table`, default `sluice_sink_progress`) is created when
//! missing: `CREATE TABLE IF NOT EXISTS <progress_table> (sink_id TEXT NOT NULL, writer_id
//! INTEGER NOT NULL, lane INTEGER NOT NULL, checkpoint_id INTEGER NOT NULL, state TEXT NOT NULL,
//! committed_at_us INTEGER NOT NULL, PRIMARY KEY (sink_id, writer_id, lane))`; each writer keeps
//! one row, `lane = 0`. A progress row found ahead of a checkpoint being committed means another
//! writer uses the same `sink_id` and `writer_id`: the checkpoint is refused
//! (`sqlite.progress_ahead`).
//!
//! Costs of holding the transaction: the open transaction keeps SQLite's write lock from the
//! first batch after a checkpoint until the next checkpoint, so writers of other processes and
//! other connections to the file wait that long, and plain writes on the same group-commit
//! writer (a SQLite store sharing it) run inside it and are answered only when it commits. One
//! exactly-once sink at a time per writer: a second one is refused at open
//! (`sqlite.writer_held`), because sharing the held transaction would commit its rows with the
//! other sink's checkpoint. Two exactly-once sinks on separate writers of the same file would
//! each wait for the other's checkpoint (and deadlock when a checkpoint of one waits for rows of
//! the other): give each its own database file.
//!
//! # Dead-letter table
//!
//! `CREATE TABLE IF NOT EXISTS <table>_dead_letters (id INTEGER PRIMARY KEY, failed_at_us
//! INTEGER NOT NULL, table_name TEXT NOT NULL, error_code TEXT NOT NULL, error TEXT NOT NULL,
//! row_json TEXT NOT NULL)`.
//!
//! ```
//! use sluice_sink::{Column, ColumnType, CreateTable, Row, Schema, Sink, SinkConfig};
//! use sluice_sink_sqlite::{Location, SqliteBackend, SqliteSinkOptions};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let file = sluice_testkit::TempSqlite::new();
//! let backend =
//!     SqliteBackend::open(&SqliteSinkOptions::new(Location::File(file.path().into()))).unwrap();
//! let schema = Schema::new(
//!     "events",
//!     vec![
//!         Column::new("id", ColumnType::I64).unwrap().not_null(),
//!         Column::new("at", ColumnType::TimestampTz).unwrap(),
//!     ],
//!     &[],
//! )
//! .unwrap();
//! let config = SinkConfig::builder()
//!     .create_table(CreateTable::IfMissing)
//!     .build()
//!     .unwrap();
//! let sink = Sink::open(&backend, schema, config).await.unwrap();
//! let at = sluice_sink::TimestampTz::parse("2026-01-02T10:00:00+01:00").unwrap();
//! sink.write((0..100).map(|id| Row::insert(vec![id.into(), at.into()])).collect())
//!     .await
//!     .unwrap();
//! sink.close().await.unwrap();
//! let connection = rusqlite::Connection::open(file.path()).unwrap();
//! let count: i64 = connection
//!     .query_row("SELECT count(*) FROM events", [], |row| row.get(0))
//!     .unwrap();
//! assert_eq!(count, 100);
//! # }
//! ```
#![warn(missing_docs)]

mod backend;
mod checkpoints;
mod describe;
mod error;
mod read;
mod statements;
mod table;
mod values;

pub use backend::{SqliteBackend, SqliteSinkOptions};
pub use read::{read_dead_letters, read_rows};
pub use sluice_sqlite::{Journal, Location, OpenOptions, Synchronous};
pub use statements::ROWS_PER_STATEMENT_MAX;
pub use values::{Bind, ReadError};
