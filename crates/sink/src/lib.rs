//! The Sluice database sink engine: takes a stream of typed rows and writes them into a
//! database table in batches, without losing or mangling any.
//!
//! - [`Value`], [`ColumnType`], [`Schema`], [`Row`]: the row model. Names are [`Ident`]s,
//!   validated and always quoted; values are always bound parameters.
//! - [`SinkConfig`]: limits and behaviour, from TOML or a builder, validated once.
//! - [`Sink`]: the handle writers call. `write` measures rows, reserves their bytes from a
//!   bounded buffer (blocking or failing by policy), and routes them by key to
//!   `flush_concurrency` lanes; each lane batches by rows, bytes and time and flushes one batch
//!   at a time, so changes to a key keep their order. `flush` returns when everything written
//!   before it is durable.
//! - [`SinkBackend`] / [`TableWriter`]: what a database provides (SQL and error
//!   classification). The engine does the rest: reduction of keyed batches to the last change
//!   per key, retries of transient errors with backoff and jitter, bisection of a batch around
//!   rows the database refuses, dead letters (a table or a JSON-lines file), counters and
//!   metrics ([`MetricName`]).
//! - [`MemoryBackend`]: an in-memory reference backend with fault injection, for tests.
//! - `compliance` (feature `compliance`): the checks every backend must pass.
//!
//! This crate does not depend on the orchestration half of Sluice.
//!
//! ```
//! use sluice_sink::{
//!     Column, ColumnType, CreateTable, MemoryBackend, Mode, Row, Schema, Sink, SinkConfig, Value,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let schema = Schema::new(
//!     "prices",
//!     vec![
//!         Column::new("sku", ColumnType::Text).unwrap().not_null(),
//!         Column::new("cents", ColumnType::I64).unwrap(),
//!     ],
//!     &["sku"],
//! )
//! .unwrap();
//! let config = SinkConfig::builder()
//!     .mode(Mode::Upsert)
//!     .create_table(CreateTable::IfMissing)
//!     .batch_rows_max(1_000)
//!     .build()
//!     .unwrap();
//! // Any backend: MemoryBackend here, sluice-sink-sqlite or sluice-sink-postgres for real.
//! let backend = MemoryBackend::new();
//! let sink = Sink::open(&backend, schema, config).await.unwrap();
//! sink.write(vec![
//!     Row::upsert(vec!["apple".into(), 120.into()]),
//!     Row::upsert(vec!["pear".into(), 90.into()]),
//!     Row::upsert(vec!["apple".into(), 125.into()]), // the last change per key wins
//!     Row::upsert(vec![Value::Null, 1.into()]),      // no key: to the dead letters
//! ])
//! .await
//! .unwrap();
//! sink.close().await.unwrap(); // flushes: everything written is durable
//! let rows = backend.rows("prices").unwrap(); // by key
//! assert_eq!(rows, vec![vec!["apple".into(), 125.into()], vec!["pear".into(), 90.into()]]);
//! assert_eq!(backend.dead_letters("prices_dead_letters").len(), 1);
//! # }
//! ```
#![warn(missing_docs)]

mod backend;
mod batcher;
mod checkpoint;
mod concurrency;
mod config;
mod dead_letter;
mod error;
mod ident;
mod memory;
mod metrics;
mod reduce;
mod retry;
mod route;
mod schema;
mod sink;
mod value;

#[cfg(feature = "compliance")]
pub mod compliance;

pub use backend::{
    BackendError, Batch, BatchOutcome, CheckpointSpec, CheckpointWriter, Committed, Cut,
    DEAD_LETTER_COLUMNS, DeadLetter, DescribedColumn, ErrorClass, LaneProgress, MESSAGE_BYTES_MAX,
    PartialCheckpoint, PrepareReport, PrepareRequest, Prepared, Recovered, SinkBackend,
    TableWriter, shortened_message,
};
pub use checkpoint::{CheckpointDriver, CheckpointState, PreCommit, Recovery, ReplayCut, Resume};
pub use config::{
    BATCH_BYTES_MAX_LIMIT, BATCH_ROWS_MAX_LIMIT, BUFFER_BYTES_MAX_LIMIT, Backpressure, ConfigError,
    CreateTable, DeadLetterConfig, Delivery, Evolve, FLUSH_CONCURRENCY_LIMIT,
    FLUSH_INTERVAL_MS_LIMIT, Mode, RETRY_ATTEMPTS_MAX_LIMIT, RETRY_BACKOFF_MS_LIMIT,
    SINK_ID_BYTES_MAX, SinkConfig, SinkConfigBuilder, SinkId, WRITER_ID_LIMIT,
};
pub use dead_letter::row_to_json;
pub use error::SinkError;
pub use ident::{IDENT_BYTES_MAX, Ident, IdentError};
pub use memory::MemoryBackend;
pub use metrics::{MetricKind, MetricName};
pub use schema::{COLUMNS_MAX, Column, Op, Row, RowError, Schema, SchemaError};
pub use sink::{Rejected, Sink, SinkStats};
pub use value::{
    ColumnType, DECIMAL_DIGITS_MAX, Date, Decimal, Json, Timestamp, TimestampTz, Uuid, Value,
    ValueError, allocated_bytes,
};
