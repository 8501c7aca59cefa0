//! The backend: prepares tables and writes batches through the group-commit writer.

use crate::checkpoints::{ProgressSql, SqliteCheckpoints};
use crate::error::{classify, from_write_error};
use crate::statements::{Statements, write_rows};
use crate::table::{dead_letter_insert_sql, prepare_table};
use async_trait::async_trait;
use rusqlite::Connection;
use rusqlite::limits::Limit;
use sluice_sink::{
    BackendError, Batch, BatchOutcome, CheckpointWriter, DeadLetter, Delivery, DescribedColumn,
    Ident, PrepareRequest, Prepared, SinkBackend, TableWriter,
};
use sluice_sqlite::{GroupCommitWriter, Location, OpenOptions, SqliteError};
use std::sync::Arc;

/// How to open a SQLite database for the sink.
#[derive(Clone, Debug)]
pub struct SqliteSinkOptions {
    /// Location and durability (`synchronous = FULL` by default), and the journal: the WAL
    /// by default; `open.journal = Journal::Rollback` makes a 10 s exactly-once checkpoint
    /// several times cheaper (no copy of the held transaction after its commit; see
    /// bench/results/README.md, sink round 5) for a database that nothing reads while the
    /// sink fills it, since readers wait for each commit.
    pub open: OpenOptions,
    /// Write requests queued for the writer thread, at most. Default: 1,024 requests.
    pub queue_requests_max: usize,
    /// Requests committed in one transaction, at most. Default: 64 requests.
    pub batch_requests_max: usize,
    /// The writer connection's page cache, in bytes at most (`PRAGMA cache_size`). An
    /// exactly-once checkpoint is one long transaction; once its changed pages outgrow the
    /// cache SQLite spills them to the WAL mid-transaction and rewrites the busiest ones (the
    /// table's right edge) again and again. Default: 8 MiB (SQLite's own default is 2 MiB).
    pub page_cache_bytes_max: usize,
}

impl SqliteSinkOptions {
    /// Defaults for a location.
    pub fn new(location: Location) -> SqliteSinkOptions {
        SqliteSinkOptions {
            open: OpenOptions::new(location),
            queue_requests_max: 1_024,
            batch_requests_max: 64,
            page_cache_bytes_max: 8 << 20,
        }
    }
}

/// A SQLite database as a sink target. Every batch is one closure on the group-commit writer
/// thread: its statements run in a savepoint of a shared transaction and the write is
/// acknowledged after `COMMIT`. With `delivery = "transactional_marker"` batches go into the
/// writer's held transaction instead, committed with the progress row at each checkpoint (see
/// the crate docs). Cheap to clone.
#[derive(Clone)]
pub struct SqliteBackend {
    writer: GroupCommitWriter,
}

impl SqliteBackend {
    /// Opens the database and starts its own writer thread.
    pub fn open(options: &SqliteSinkOptions) -> Result<SqliteBackend, SqliteError> {
        let kib = i64::try_from(options.page_cache_bytes_max / 1024)
            .unwrap_or(i64::MAX)
            .max(1);
        let writer = GroupCommitWriter::open(
            &options.open,
            options.queue_requests_max,
            options.batch_requests_max,
            move |connection| {
                // A negative cache_size is in KiB.
                connection.pragma_update(None, "cache_size", -kib)?;
                // Each batch's savepoint inside a long held transaction journals the pages it
                // changes that existed before it (the table's right edge) to the statement
                // journal: in memory, not a temporary file. Emptied when the savepoint is
                // released.
                connection.pragma_update(None, "temp_store", "MEMORY")?;
                Ok(())
            },
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

    // How declared types map to the sink's: `describe::describe_table`.
    async fn describe_table(
        &self,
        table: &Ident,
    ) -> Result<Option<Vec<DescribedColumn>>, BackendError> {
        let table = table.clone();
        self.writer
            .write(move |connection| crate::describe::describe_table(connection, &table))
            .await
            .map_err(from_write_error)
    }

    fn create_table_sql(&self, schema: &sluice_sink::Schema) -> Option<String> {
        Some(crate::table::create_table_sql(schema))
    }

    async fn prepare(&self, request: &PrepareRequest) -> Result<Prepared, BackendError> {
        let spec = match &request.checkpoints {
            None => None,
            Some(spec) => match spec.delivery {
                Delivery::TransactionalMarker => Some(spec.clone()),
                Delivery::TwoPhase => {
                    return Err(BackendError::Fatal {
                        code: "sqlite.delivery_unsupported",
                        message: "delivery = \"two_phase\" needs prepared transactions \
                                  (PostgreSQL's PREPARE TRANSACTION), which SQLite does not \
                                  have: use delivery = \"transactional_marker\" for exactly-once \
                                  delivery into SQLite"
                            .into(),
                    });
                }
                Delivery::AtLeastOnce => {
                    return Err(BackendError::Fatal {
                        code: "sqlite.delivery_unsupported",
                        message: "checkpoints were requested for at_least_once delivery".into(),
                    });
                }
            },
        };
        // Taken before touching the database, so a second exactly-once sink on this writer is
        // refused without waiting for the first one's checkpoint.
        let claim =
            match &spec {
                None => None,
                Some(spec) => Some(self.writer.claim_held().ok_or_else(|| {
                    BackendError::Fatal {
                        code: "sqlite.writer_held",
                        message: format!(
                            "sink {}: another exactly-once sink holds transactions on this SQLite \
                     writer; a writer (one database file) serves one exactly-once sink at a \
                     time, so close the other sink first or write into another database",
                            spec.sink_id
                        ),
                    }
                })?),
            };
        let progress = spec
            .as_ref()
            .map(|spec| Arc::new(ProgressSql::new(&spec.progress_table)));
        let owned = request.clone();
        let owned_progress = progress.clone();
        let (report, statements) = self
            .writer
            .write(move |connection| {
                let limit = connection
                    .limit(Limit::SQLITE_LIMIT_VARIABLE_NUMBER)
                    .map_err(classify)?;
                let statements =
                    Statements::new(&owned.schema, usize::try_from(limit).unwrap_or(1));
                let report = prepare_table(connection, &owned, &statements)?;
                if let Some(progress) = &owned_progress {
                    progress.prepare(connection)?;
                }
                Ok((report, statements))
            })
            .await
            .map_err(from_write_error)?;
        let statements = Arc::new(statements);
        let dead_letter_sql: Option<Arc<str>> = request
            .dead_letter_table
            .as_ref()
            .map(|table| Arc::from(dead_letter_insert_sql(table)));
        let checkpoints = match (spec, claim, progress) {
            (Some(spec), Some(claim), Some(progress)) => Some(Arc::new(SqliteCheckpoints {
                writer: self.writer.clone(),
                _claim: claim,
                statements: statements.clone(),
                dead_letter_sql: dead_letter_sql.clone(),
                progress,
                spec,
                lanes: request.flush_concurrency,
            })
                as Arc<dyn CheckpointWriter>),
            _ => None,
        };
        Ok(Prepared {
            writer: Arc::new(SqliteTableWriter {
                writer: self.writer.clone(),
                statements,
                dead_letter_sql,
            }),
            report,
            checkpoints,
        })
    }
}

struct SqliteTableWriter {
    writer: GroupCommitWriter,
    statements: Arc<Statements>,
    dead_letter_sql: Option<Arc<str>>,
}

/// The closure writing one batch (in the caller's savepoint).
pub(crate) fn batch_job(
    statements: &Arc<Statements>,
    batch: &Batch,
) -> impl FnOnce(&Connection) -> Result<(), BackendError> + Send + 'static {
    let (rows, range) = batch.shared_rows();
    let rows = rows.clone();
    let schema = batch.schema_arc().clone();
    let statements = statements.clone();
    move |connection| write_rows(connection, &statements, &schema, &rows[range])
}

/// The closure recording dead letters (in the caller's savepoint).
pub(crate) fn dead_letters_job(
    sql: Arc<str>,
    letters: Vec<DeadLetter>,
) -> impl FnOnce(&Connection) -> Result<(), BackendError> + Send + 'static {
    move |connection| {
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
    }
}

#[async_trait]
impl TableWriter for SqliteTableWriter {
    async fn write_batch(&self, batch: &Batch) -> Result<BatchOutcome, BackendError> {
        self.writer
            .write(batch_job(&self.statements, batch))
            .await
            .map_err(from_write_error)?;
        Ok(BatchOutcome {
            applied: batch.len(),
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
        self.writer
            .write(dead_letters_job(sql, letters.to_vec()))
            .await
            .map_err(from_write_error)
    }
}
