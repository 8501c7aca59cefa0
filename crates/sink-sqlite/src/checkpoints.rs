//! Exactly-once delivery (`transactional_marker`) on the group-commit writer's held
//! transaction.
//!
//! SQLite has one writer, so every lane writes into the same transaction: each batch is a
//! `write_uncommitted` request (its own savepoint, so a refused row undoes only its batch and
//! the engine can bisect), and `pre_commit` is a `commit_held` request that upserts this
//! writer's progress row and commits it with every batch of the checkpoint. A crash before
//! that `COMMIT` leaves nothing of the checkpoint; after it, the rows and the progress row are
//! durable together, and `recover` reads the progress row back.

use crate::backend::{batch_job, dead_letters_job};
use crate::error::{classify, from_write_error};
use crate::statements::Statements;
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension};
use sluice_sink::{
    BackendError, Batch, BatchOutcome, CheckpointSpec, CheckpointWriter, Committed, Cut,
    DeadLetter, Ident, Recovered, Resume,
};
use sluice_sqlite::{GroupCommitWriter, HeldClaim, WriteError};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The progress table's statements.
#[derive(Debug)]
pub(crate) struct ProgressSql {
    table: Ident,
    create: String,
    select: String,
    upsert: String,
}

impl ProgressSql {
    pub(crate) fn new(table: &Ident) -> ProgressSql {
        let quoted = table.quoted();
        ProgressSql {
            table: table.clone(),
            create: format!(
                "CREATE TABLE IF NOT EXISTS {quoted} (\"sink_id\" TEXT NOT NULL, \
                 \"writer_id\" INTEGER NOT NULL, \"lane\" INTEGER NOT NULL, \
                 \"checkpoint_id\" INTEGER NOT NULL, \"state\" TEXT NOT NULL, \
                 \"committed_at_us\" INTEGER NOT NULL, \
                 PRIMARY KEY (\"sink_id\", \"writer_id\", \"lane\"))"
            ),
            select: format!(
                "SELECT \"checkpoint_id\", \"state\" FROM {quoted} \
                 WHERE \"sink_id\" = ?1 AND \"writer_id\" = ?2 \
                 ORDER BY \"checkpoint_id\" DESC LIMIT 1"
            ),
            upsert: format!(
                "INSERT INTO {quoted} (\"sink_id\", \"writer_id\", \"lane\", \"checkpoint_id\", \
                 \"state\", \"committed_at_us\") VALUES (?1, ?2, 0, ?3, ?4, ?5) \
                 ON CONFLICT (\"sink_id\", \"writer_id\", \"lane\") DO UPDATE SET \
                 \"checkpoint_id\" = excluded.\"checkpoint_id\", \"state\" = excluded.\"state\", \
                 \"committed_at_us\" = excluded.\"committed_at_us\""
            ),
        }
    }

    /// Creates the table when missing and compiles the statements, so that a table of that
    /// name with another shape is refused at start.
    pub(crate) fn prepare(&self, connection: &Connection) -> Result<(), BackendError> {
        connection.execute_batch(&self.create).map_err(classify)?;
        for sql in [&self.select, &self.upsert] {
            if let Err(error) = connection.prepare(sql) {
                return Err(BackendError::SchemaMismatch {
                    table: self.table.to_string(),
                    problems: vec![format!(
                        "the progress table does not fit: {error} (expected the columns \
                         sink_id, writer_id, lane, checkpoint_id, state, committed_at_us with \
                         the primary key (sink_id, writer_id, lane))"
                    )],
                });
            }
        }
        Ok(())
    }

    /// The writer's highest checkpoint in the table.
    fn read(
        &self,
        connection: &Connection,
        sink_id: &str,
        writer_id: u32,
    ) -> Result<Option<Committed>, BackendError> {
        let found: Option<(i64, String)> = connection
            .prepare_cached(&self.select)
            .and_then(|mut statement| {
                statement
                    .query_row(rusqlite::params![sink_id, writer_id], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })
                    .optional()
            })
            .map_err(classify)?;
        found
            .map(|(checkpoint_id, state)| {
                let checkpoint_id =
                    u64::try_from(checkpoint_id).map_err(|_| BackendError::Fatal {
                        code: "sqlite.progress_invalid",
                        message: format!(
                            "the progress row of sink {sink_id} writer {writer_id} in {} holds \
                             the negative checkpoint id {checkpoint_id}",
                            self.table
                        ),
                    })?;
                Ok(Committed {
                    checkpoint_id,
                    state,
                })
            })
            .transpose()
    }

    /// Moves the writer's progress row to `checkpoint_id`, which must be ahead of it.
    fn record(
        &self,
        connection: &Connection,
        sink_id: &str,
        writer_id: u32,
        checkpoint_id: i64,
        state: &str,
    ) -> Result<(), BackendError> {
        if let Some(current) = self.read(connection, sink_id, writer_id)?
            && i64::try_from(current.checkpoint_id).is_ok_and(|current| current >= checkpoint_id)
        {
            // The engine's checkpoint ids increase past what recovery found, so someone else
            // moved the row: another writer with this sink_id and writer_id.
            return Err(BackendError::Fatal {
                code: "sqlite.progress_ahead",
                message: format!(
                    "the progress row of sink {sink_id} writer {writer_id} in {} is at \
                     checkpoint {}, not below {checkpoint_id}: is another writer running with \
                     the same sink_id and writer_id?",
                    self.table, current.checkpoint_id
                ),
            });
        }
        let committed_at_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
            });
        connection
            .prepare_cached(&self.upsert)
            .and_then(|mut statement| {
                statement.execute(rusqlite::params![
                    sink_id,
                    writer_id,
                    checkpoint_id,
                    state,
                    committed_at_us
                ])
            })
            .map_err(classify)?;
        Ok(())
    }
}

/// The checkpoint writer of one exactly-once sink.
pub(crate) struct SqliteCheckpoints {
    pub(crate) writer: GroupCommitWriter,
    /// This sink's right to hold the writer's transaction; dropping it (the sink is gone)
    /// rolls back what is still held.
    pub(crate) _claim: HeldClaim,
    pub(crate) statements: Arc<Statements>,
    pub(crate) dead_letter_sql: Option<Arc<str>>,
    pub(crate) progress: Arc<ProgressSql>,
    pub(crate) spec: CheckpointSpec,
    pub(crate) lanes: usize,
}

impl SqliteCheckpoints {
    fn check_lane(&self, lane: usize) -> Result<(), BackendError> {
        if lane < self.lanes {
            Ok(())
        } else {
            Err(BackendError::Fatal {
                code: "sqlite.no_lane",
                message: format!("lane {lane} is beyond flush_concurrency ({})", self.lanes),
            })
        }
    }

    async fn rollback(&self) -> Result<(), BackendError> {
        match self.writer.rollback_held().await {
            Ok(rolled_back) => {
                if rolled_back {
                    tracing::info!(
                        sink_id = %self.spec.sink_id,
                        writer_id = self.spec.writer_id,
                        "Rolled back the rows written after the last checkpoint."
                    );
                }
                Ok(())
            }
            Err(error) => Err(from_rollback_error(error)),
        }
    }
}

/// Classifies the outcome of a held-transaction request: a failed transaction means the held
/// transaction, with every batch of the checkpoint so far, is gone.
fn from_held_error(error: WriteError<BackendError>) -> BackendError {
    match error {
        WriteError::Transaction(message) => BackendError::Fatal {
            code: "sqlite.transaction_lost",
            message,
        },
        other => from_write_error(other),
    }
}

fn from_rollback_error(error: WriteError<Infallible>) -> BackendError {
    match error {
        WriteError::Job(never) => match never {},
        WriteError::Transaction(message) => BackendError::Fatal {
            code: "sqlite.rollback_failed",
            message,
        },
        WriteError::Panicked(message) => from_write_error(WriteError::Panicked(message)),
        WriteError::Closed => from_write_error(WriteError::Closed),
    }
}

#[async_trait]
impl CheckpointWriter for SqliteCheckpoints {
    async fn write_batch(&self, lane: usize, batch: &Batch) -> Result<BatchOutcome, BackendError> {
        self.check_lane(lane)?;
        self.writer
            .write_uncommitted(batch_job(&self.statements, batch))
            .await
            .map_err(from_held_error)?;
        Ok(BatchOutcome {
            applied: batch.len(),
            rejected: Vec::new(),
        })
    }

    async fn write_dead_letters(
        &self,
        lane: usize,
        letters: &[DeadLetter],
    ) -> Result<(), BackendError> {
        self.check_lane(lane)?;
        let sql = self
            .dead_letter_sql
            .clone()
            .ok_or_else(|| BackendError::Fatal {
                code: "sqlite.no_dead_letter_table",
                message: "dead letters go to a table, but none was prepared".into(),
            })?;
        self.writer
            .write_uncommitted(dead_letters_job(sql, letters.to_vec()))
            .await
            .map_err(from_held_error)
    }

    async fn pre_commit(&self, cut: &Cut<'_>) -> Result<(), BackendError> {
        // One transaction for every lane: the cut's routing does not need recording.
        let (checkpoint_id, state) = (cut.checkpoint_id, cut.state);
        let checkpoint = i64::try_from(checkpoint_id).map_err(|_| BackendError::Fatal {
            code: "sqlite.checkpoint_id_range",
            message: format!(
                "checkpoint id {checkpoint_id} does not fit SQLite's 64-bit signed integers"
            ),
        })?;
        let progress = self.progress.clone();
        let sink_id = self.spec.sink_id.to_string();
        let writer_id = self.spec.writer_id;
        let state = state.to_string();
        self.writer
            .commit_held(move |connection| {
                progress.record(connection, &sink_id, writer_id, checkpoint, &state)
            })
            .await
            .map_err(from_held_error)
    }

    async fn commit(&self, _checkpoint_id: u64) -> Result<(), BackendError> {
        // The marker's checkpoint is visible once pre-committed.
        Ok(())
    }

    async fn abort(&self, _checkpoint_id: u64) -> Result<(), BackendError> {
        // Pre-committed checkpoints are committed; only the open transaction goes.
        self.rollback().await
    }

    async fn recover(
        &self,
        _restored: Option<u64>,
        _resume: Resume,
    ) -> Result<Recovered, BackendError> {
        // An earlier run's open transaction is gone already (a crashed process's died with its
        // connection; a dropped sink's claim rolled it back). This also acknowledges a held
        // transaction SQLite reported lost, so that writing can start again.
        self.rollback().await?;
        let progress = self.progress.clone();
        let sink_id = self.spec.sink_id.to_string();
        let writer_id = self.spec.writer_id;
        self.writer
            .write(move |connection| progress.read(connection, &sink_id, writer_id))
            .await
            .map(Recovered::whole)
            .map_err(from_write_error)
    }
}
