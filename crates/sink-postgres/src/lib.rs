//! The PostgreSQL backend of the Sluice sink: binary COPY for inserts, COPY into a per-connection
//! staging table plus one `DELETE ... USING` / `INSERT ... ON CONFLICT` for keyed modes, every
//! batch one transaction on one connection of a deadpool-postgres pool; or, for exactly-once
//! delivery, checkpoint-aligned transactions (see [Exactly-once delivery](#exactly-once-delivery)).
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use sluice_sink::{Column, ColumnType, Mode, Row, Schema, Sink, SinkConfig};
//! use sluice_sink_postgres::{PostgresBackend, PostgresSinkOptions};
//!
//! let config = SinkConfig::builder().mode(Mode::Upsert).build()?;
//! let options = PostgresSinkOptions::for_sink("postgres://writer@db/sales", &config)?;
//! let backend = PostgresBackend::connect(options).await?;
//! let schema = Schema::new(
//!     "orders",
//!     vec![
//!         Column::new("id", ColumnType::I64)?.not_null(),
//!         Column::new("status", ColumnType::Text)?,
//!     ],
//!     &["id"],
//! )?;
//! let sink = Sink::open(&backend, schema, config).await?;
//! sink.write(vec![Row::upsert(vec![1.into(), "paid".into()])]).await?;
//! sink.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Writes
//!
//! - **insert**: `COPY "t" (...) FROM STDIN (FORMAT binary)`, straight into the table.
//! - **upsert, delete, changelog**: the batch (at most one row per key, reduced by the engine)
//!   is copied into a temporary staging table of the connection, then `DELETE FROM t USING
//!   staging WHERE <key matches> AND <row is a delete>` and `INSERT INTO t SELECT ... FROM
//!   staging WHERE <row is an upsert> ON CONFLICT (key) DO UPDATE SET <every non-key schema
//!   column> = EXCLUDED...` (`DO NOTHING` when every column is part of the key). Table columns
//!   outside the schema keep their values on update and take their defaults on insert.
//!
//! At-least-once, each batch is one transaction (`BEGIN`, record `txid_current()`, COPY,
//! statements, `COMMIT`), so it is written whole or not at all, which the engine's retries and
//! bisection rely on. COPY has no parameter limit: a batch is never split. When the connection breaks
//! during `COMMIT`, the writer asks the server whether that transaction committed before
//! reporting anything (see [`PostgresBackend`]), so a retry never duplicates a batch that did
//! commit.
//!
//! # Exactly-once delivery
//!
//! With `delivery = "transactional_marker"` or `"two_phase"` (and a `sink_id`), batches go into
//! transactions that stay open until the checkpoint barrier, next to a progress table
//! (`progress_table`, default `sluice_sink_progress`, created if missing at `prepare`):
//! `(sink_id text, writer_id integer, lane integer, checkpoint_id bigint, state text,
//! committed_at timestamptz, lanes integer, stripe_rows bigint, rows bigint, rejected bigint,
//! previous_checkpoint_id bigint, previous_state text)`, primary key `(sink_id, writer_id,
//! lane)` (the last six are the marker's record of the cut, added to an older table).
//!
//! | | `transactional_marker` | `two_phase` |
//! |---|---|---|
//! | Transactions | one per lane and checkpoint, each on a pooled connection the lane holds, opened at its first write | the same |
//! | `pre_commit(c, state)` | upserts every lane's progress row with the cut and `COMMIT`s every lane at once (a lane that wrote nothing commits just its row): rows visible; a crash between the commits leaves a partial checkpoint, which recovery reports and the sink replays into the lanes that lost it | upserts each writing lane's progress row and runs `PREPARE TRANSACTION 'sluice:<sink_id>:<writer_id>:<c>:<lane>'`: rows durable, invisible |
//! | `commit(c)` | nothing | `COMMIT PREPARED` of every pending transaction up to `c` |
//! | `abort(c)` | rolls back the open transaction (committed checkpoints stay) | rolls back the open transactions and `ROLLBACK PREPARED` from `c` on |
//! | `recover(restored)` | drops any open transactions; returns the complete checkpoint and a partial one, from every lane's row | commits this writer's prepared transactions up to `restored`, rolls back the later ones (all of them without `restored`); returns the highest progress row |
//! | Needs | `pool_connections_max >= flush_concurrency` | `max_prepared_transactions >= 2 x flush_concurrency` and `pool_connections_max >= flush_concurrency + 1`, checked before anything is created |
//!
//! Common to both:
//!
//! - **Savepoints.** Each batch runs inside `SAVEPOINT sluice_batch`: a row error (SQLSTATE
//!   classes 22 and 23) rolls back to it and is returned as a row error, so the engine bisects
//!   inside the open transaction; the good rows and the dead letters (which go into the same
//!   lane transaction) commit with the checkpoint. Values refused before sending are reported
//!   in the batch outcome, as in at-least-once mode. Each batch is a subtransaction: past 64 of
//!   them in one open transaction, PostgreSQL's snapshot checks get slower for every session
//!   until it ends (the subtransaction cache overflows), so keep checkpoints to a few dozen
//!   batches per lane.
//! - **Keyed rows go through arrays.** `PREPARE TRANSACTION` refuses a transaction that
//!   touched a temporary table, so exactly-once writes do not use the staging table: the same
//!   `DELETE ... USING` and `INSERT ... ON CONFLICT` read the batch from `unnest($1::<type>[],
//!   ...)`, one array parameter per column. Insert mode COPYs straight into the table, as
//!   always.
//! - **Lost transactions.** Any error other than a row error loses the open transaction: its
//!   connection is closed (the server rolls back) and the engine fails the sink; the caller
//!   recovers. A connection inside a transaction never goes back to the pool: it is detached
//!   and closed when its writer is dropped, a call is cancelled or an error leaves it unsure.
//!   The pool's recycling checks only that a connection is open, so this is what keeps a later
//!   batch from committing someone else's half-written transaction.
//! - **Only this writer's prepared transactions are touched.** Recovery lists
//!   `pg_prepared_xacts` of the current database whose gid starts with exactly
//!   `sluice:<sink_id>:<writer_id>:` (`starts_with`, not `LIKE`: `_` in a sink id is a
//!   wildcard there) and whose rest is `<checkpoint>:<lane>` in canonical decimal; anything
//!   else is left alone.
//! - **A gid that is gone.** When `COMMIT PREPARED` finds no such transaction (someone finished
//!   it by hand, or an earlier answer was lost), the lane's progress rows say what happened:
//!   at or past the checkpoint, it was committed and `commit` succeeds; otherwise the checkpoint
//!   was rolled back behind the sink's back and `commit` fails with `postgres.prepared_vanished`.
//! - **Overlapping checkpoints (two-phase).** A prepared transaction keeps the progress row it
//!   upserted locked until it commits, so while a lane's checkpoint awaits `COMMIT PREPARED`,
//!   the lane's next checkpoint upserts the row `lane + 64` (then `+ 128`, ...) instead of
//!   waiting; a lane's progress is the highest checkpoint of its rows. Prepared transactions
//!   more than two checkpoints old are logged and counted in
//!   `sluice_sink_orphaned_prepared_transactions`. Rows (not the progress) of a keyed table
//!   that a prepared checkpoint changed stay locked until its commit too: a later checkpoint
//!   changing the same keys waits for that `commit`.
//!
//! Exactly-once error codes: `postgres.max_prepared_transactions`, `postgres.pool_too_small`
//! (refused at `prepare`), `postgres.prepared_vanished`, `postgres.prepared_committed` (a
//! prepared transaction to roll back was committed by someone else),
//! `postgres.checkpoint_commit_unknown` (the marker's `COMMIT` lost its answer; recovery reads
//! the progress row), `postgres.state_nul`, `postgres.checkpoint_id_range`.
//!
//! # Pool metrics
//!
//! Every connection taken from the pool records `sluice_sink_pool_acquire_duration_seconds`
//! and sets `sluice_sink_pool_connections_active` / `_idle`, labelled with the table and
//! `backend = "postgres"` (per batch or checkpoint step, never per row).
//!
//! # How values are stored
//!
//! | Value | Created as | Also accepted | Binary form written |
//! |---|---|---|---|
//! | Bool | `boolean` | | 1 byte |
//! | I64 | `bigint` | `integer`, `smallint` (a value out of range is refused) | big-endian integer of the column's width |
//! | F64 | `double precision` | | IEEE-754 bits: NaN, ±infinity and -0.0 are kept (`real` is refused: it rounds) |
//! | Decimal | `numeric` | `numeric(p,s)` with `s >= 0`: a value with non-zero digits beyond `s` or more than `p - s` digits before the point is refused, never rounded; stored values read back with `s` fractional digits | PostgreSQL's base-10000 numeric, with the value's scale as display scale (`1.10` stays `1.10`) |
//! | Text | `text` | `varchar(n)` (longer text is refused, never truncated) | UTF-8; a NUL character is refused by PostgreSQL (SQLSTATE 22021, dead-lettered) |
//! | Bytes | `bytea` | | raw bytes |
//! | Json | `jsonb` | `json` (keeps the text verbatim) | jsonb: version byte 1 + text; jsonb normalises the document (key order, spacing, duplicate keys), `\u0000` is refused by PostgreSQL |
//! | Uuid | `uuid` | | 16 bytes |
//! | Date | `date` | | days since 2000-01-01; dates outside 4714-11-24 BC .. 5874897-12-31 are refused (they would be ±infinity or out of range) |
//! | Timestamp | `timestamp` | `timestamp(p)` (a value finer than `p` digits is refused, never rounded) | microseconds since 2000-01-01, wall clock, no zone applied |
//! | TimestampTz | `timestamptz` | `timestamptz(p)`, as above | UTC microseconds since 2000-01-01 (the session's `TimeZone` plays no part) |
//!
//! Values are checked against their column before the COPY; a refused value makes its row a
//! row error (codes `postgres.value_out_of_range`, `postgres.value_would_round`,
//! `postgres.value_too_long`, `postgres.numeric_overflow`) reported in the batch outcome, so
//! the rest of the batch is written without bisection. Errors PostgreSQL raises for a row
//! (SQLSTATE classes 22 and 23) fail the batch; the engine bisects it to the bad rows.
//!
//! # Checking the table
//!
//! `prepare` resolves the table name on the search path (`to_regclass`), reads its columns from
//! `pg_attribute` and its unique indexes from `pg_index`, and refuses a schema that does not
//! fit, listing every problem: a missing column (with a hint when only the case differs:
//! quoted names are case-sensitive), a type from the table above that does not hold the
//! column's values, NULLs where the table forbids them, a generated or `GENERATED ALWAYS`
//! identity column in the schema, a NOT NULL table column without a default that the rows
//! cannot fill, and, in keyed modes, a key that is not the primary key or a unique index
//! usable by `ON CONFLICT` (valid, not deferrable, no predicate, no expressions). It may create
//! the table (`create_table = "if_missing"`: the types above, the key as primary key) and add
//! nullable columns (`evolve = "add_columns"`), all in one transaction under an advisory lock on
//! the table's name, so a refused schema changes nothing.
//!
//! # Dead-letter table
//!
//! `CREATE TABLE IF NOT EXISTS <table>_dead_letters ("id" bigint GENERATED BY DEFAULT AS
//! IDENTITY PRIMARY KEY, "failed_at_us" bigint NOT NULL, "table_name" text NOT NULL,
//! "error_code" text NOT NULL, "error" text NOT NULL, "row_json" text NOT NULL)`: the columns of
//! the SQLite backend ([`sluice_sink::DEAD_LETTER_COLUMNS`]). `failed_at_us` is microseconds since the Unix
//! epoch; `to_timestamp(failed_at_us / 1e6)` shows it.
//!
//! # Errors
//!
//! Classified by SQLSTATE: connection errors (class 08, I/O errors, closed connections),
//! 40001 serialization failure, 40P01 deadlock, class 53 (insufficient resources), 57P01-57P03
//! (admin shutdown, crash shutdown, cannot connect now) and pool timeouts are transient; classes
//! 22 (data exception) and 23 (integrity constraint violation) are row errors; everything else
//! is fatal (a closed pool, `postgres.commit_unknown`, undefined table, permission denied, ...).
//! Codes are `postgres.<SQLSTATE>` (for example `postgres.23505`), the class's code for
//! SQLSTATEs PostgreSQL 15 does not define (`postgres.22xxx`), or a named client-side code
//! (`postgres.connection`, `postgres.pool_timeout`, the value checks above). Messages carry the
//! server's message, SQLSTATE and DETAIL, cut to 1 KiB, and never the connection URL or its
//! password (servers are named by [`PostgresSinkOptions::target`]: user, host, port, database).
//!
//! Connections use TLS as the URL's `sslmode` and `sslrootcert` say (rustls, through
//! `sluice-postgres`: `disable`, `prefer` (the default), `require`, `verify-ca`,
//! `verify-full`; `sslrootcert` alone means `verify-full`). PostgreSQL 12 or later is required
//! (tested on 15).
#![warn(missing_docs)]

mod backend;
mod checkpoints;
mod describe;
mod error;
mod progress;
mod read;
mod session;
mod statements;
mod table;
mod values;

pub use backend::{
    APPLICATION_NAME, POOL_CONNECTIONS_MAX_LIMIT, PostgresBackend, PostgresSinkOptions,
    TIMEOUT_MS_LIMIT,
};
pub use deadpool_postgres;
pub use error::PostgresError;
pub use progress::{WRITER_LOCK_CLASS, writer_lock_key};
pub use read::{read_dead_letters, read_rows};
pub use tokio_postgres;
pub use values::{BinaryValue, ReadError};
