//! The backend: prepares tables and writes batches through the group-commit writer.

use crate::error::{classify, from_write_error};
use crate::statements::{Statements, write_rows};
use crate::table::{dead_letter_insert_sql, prepare_table};
use async_trait::async_trait;
use rusqlite::limits::Limit;
use sluice_sink::{
    BackendError, Batch, BatchOutcome, DeadLetter, PrepareRequest, Prepared, SinkBackend,
    TableWriter,
};
use sluice_sqlite::{GroupCommitWriter, Location, OpenOptions, SqliteError};
use std::sync::Arc;

/// How to open a SQLite database for the sink.
#[derive(Clone, Debug)]
pub struct SqliteSinkOptions {
    /// Location and durability (`synchronous = FULL` by default).
    pub open: OpenOptions,
    /// Write requests queued for the writer thread, at most. Default: 1,024 requests.
    pub queue_requests_max: usize,
    /// Requests committed in one transaction, at most. Default: 64 requests.
    pub batch_requests_max: usize,
}

impl SqliteSinkOptions {
    /// Defaults for a location.
    pub fn new(location: Location) -> SqliteSinkOptions {
        SqliteSinkOptions {
            open: OpenOptions::new(location),
            queue_requests_max: 1_024,
            batch_requests_max: 64,
        }
    }
}

/// A SQLite database as a sink target. Every batch is one closure on the group-commit writer
/// thread: its statements run in a savepoint of a shared transaction and the write is
/// acknowledged after `COMMIT`. Cheap to clone.
#[derive(Clone)]
pub struct SqliteBackend {
    writer: GroupCommitWriter,
}

impl SqliteBackend {
    /// Opens the database and starts its own writer thread.
    pub fn open(options: &SqliteSinkOptions) -> Result<SqliteBackend, SqliteError> {
        let writer = GroupCommitWriter::open(
            &options.open,
            options.queue_requests_max,
            options.batch_requests_max,
            |_| Ok(()),
        )?;
        Ok(SqliteBackend { writer })
    }

    /// Uses an existing writer (for example the one a SQLite store already runs on the same
    /// file: SQLite allows one writer at a time).
    pub fn with_writer(writer: GroupCommitWriter) -> SqliteBackend {
        SqliteBackend { writer }
    }

    /// The writer.
    pub fn writer(&self) -> &GroupCommitWriter {
        &self.writer
    }
}

#[async_trait]
impl SinkBackend for SqliteBackend {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    async fn prepare(&self, request: &PrepareRequest) -> Result<Prepared, BackendError> {
        if let Some(spec) = &request.checkpoints {
            return Err(BackendError::Fatal {
                code: "sqlite.delivery_unsupported",
                message: format!(
                    "delivery = \"{}\" is not supported by this backend yet",
                    spec.delivery.name()
                ),
            });
        }
        let owned = request.clone();
        let (report, statements) = self
            .writer
            .write(move |connection| {
                let limit = connection
                    .limit(Limit::SQLITE_LIMIT_VARIABLE_NUMBER)
                    .map_err(classify)?;
                let statements =
                    Statements::new(&owned.schema, usize::try_from(limit).unwrap_or(1));
                let report = prepare_table(connection, &owned, &statements)?;
                Ok((report, statements))
            })
            .await
            .map_err(from_write_error)?;
        Ok(Prepared {
            writer: Arc::new(SqliteTableWriter {
                writer: self.writer.clone(),
                statements: Arc::new(statements),
                dead_letter_sql: request
                    .dead_letter_table
                    .as_ref()
                    .map(|table| Arc::from(dead_letter_insert_sql(table))),
            }),
            report,
            checkpoints: None,
        })
    }
}

struct SqliteTableWriter {
    writer: GroupCommitWriter,
    statements: Arc<Statements>,
    dead_letter_sql: Option<Arc<str>>,
}

#[async_trait]
impl TableWriter for SqliteTableWriter {
    async fn write_batch(&self, batch: &Batch) -> Result<BatchOutcome, BackendError> {
        let (rows, range) = batch.shared_rows();
        let rows = rows.clone();
        let schema = batch.schema_arc().clone();
        let statements = self.statements.clone();
        let count = batch.len();
        self.writer
            .write(move |connection| write_rows(connection, &statements, &schema, &rows[range]))
            .await
            .map_err(from_write_error)?;
        Ok(BatchOutcome {
            applied: count,
            rejected: Vec::new(),
        })
    }

    async fn write_dead_letters(&self, letters: &[DeadLetter]) -> Result<(), BackendError> {
        let sql = self
            .dead_letter_sql
            .clone()
            .ok_or_else(|| BackendError::Fatal {
                code: "sqlite.no_dead_letter_table",
                message: "dead letters go to a table, but none was prepared".into(),
            })?;
        let letters = letters.to_vec();
        self.writer
            .write(move |connection| {
                let mut statement = connection.prepare_cached(&sql).map_err(classify)?;
                for letter in &letters {
                    statement
                        .execute(rusqlite::params![
                            letter.failed_at.0,
                            letter.table,
                            letter.error_code,
                            letter.error,
                            letter.row
                        ])
                        .map_err(classify)?;
                }
                Ok(())
            })
            .await
            .map_err(from_write_error)
    }
}
