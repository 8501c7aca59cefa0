//! Pipelines that move records from files, standard input or a NATS JetStream stream into a
//! database table through the Sluice sink, exactly once by default: what `sluice ingest` runs,
//! as a library.
//!
//! - [`PipelineSettings`]: every setting, optional; the TOML pipeline file's keys and (feature
//!   `cli`) the command line's flags, declared once. [`PipelineSettings::overlay`] puts one
//!   set over another (flags over the file).
//! - [`Pipeline::new`] validates the settings and resolves the source (files listed, formats
//!   known) without opening anything; [`Pipeline::run`] runs it until the source ends or the
//!   stop future resolves, telling an [`Observer`] what happens, and returns a [`Report`];
//!   [`Pipeline::preview`] settles the table and maps the first records without writing (a
//!   dry run).
//! - [`IngestError`]: typed, with stable codes; [`IngestError::is_usage`] tells a bad
//!   configuration from a failure.
//!
//! How it works: a reader (a thread for files, a task for JetStream) frames records (NDJSON
//! lines or CSV records, gzip or plain, bounded in size), maps them to rows of the table or
//! refusals (declared `[columns]`, the existing table's columns, or inferred: NDJSON from the
//! first record's JSON types, CSV from the first `infer_rows_max` records' values) and hands chunks to the loop, which writes rows (`Sink::write`), sends refused
//! records to the dead letters (`Sink::reject`) and checkpoints every
//! `checkpoint_interval_ms` through the sink's [`sluice_sink::CheckpointDriver`]: the source
//! position (file and byte offset of the next record, or the stream sequence of the last
//! record read) commits in the same transaction as the rows and dead letters before it
//! (`delivery = "transactional_marker"`, the default) or with each lane's prepared part
//! (`"two_phase"`, PostgreSQL). A restart recovers with `Resume::Committed` and seeks the
//! source to the committed position, so a record is never written twice nor skipped.
//! JetStream messages are acknowledged after the checkpoint that holds them committed.
//!
//! `follow` keeps reading: at the end of the last file (plain, not gzip) the reader polls for
//! more bytes and hands over only records whose terminating newline arrived (a partial last
//! line, or a CSV record whose quoted field is still open, is not a record yet); a JetStream
//! reader keeps pulling. Only the last file of a glob is followed, and a followed file that
//! shrinks fails the run. Standard input cannot be re-read after a restart, so it is ingested
//! at least once; `at_least_once` stores no position.
//!
//! ```no_run
//! # async fn example() -> Result<(), sluice_ingest::IngestError> {
//! use sluice_ingest::{Pipeline, PipelineSettings, Quiet};
//! let settings = PipelineSettings {
//!     from: Some("logs/*.ndjson.gz".into()),
//!     into: Some("sqlite://logs.db".into()),
//!     table: Some("logs".into()),
//!     ..PipelineSettings::default()
//! };
//! let pipeline = Pipeline::new(settings)?;
//! // Runs until the files end; a stop future that resolves stops it at a checkpoint.
//! let report = pipeline.run(&Quiet, std::future::pending()).await?;
//! println!("{} rows written", report.progress.rows_written);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod error;
mod format;
mod jetstream;
mod mapping;
mod pipeline;
mod settings;
mod source;

pub use error::{IngestError, Result, UsageError};
pub use mapping::ColumnConfig;
pub use pipeline::{Observer, Preview, Progress, Quiet, Report, Status};
pub use settings::{Format, IngestMode, Pipeline, PipelineSettings, SqliteJournal, Unmapped};
