//! Batched reads of instance rows: the lookups waiting when the reader is free go to the
//! database as one `SELECT ... WHERE instance_id = ANY(...)`, so a process with many clients
//! waiting for their instances (each reads its instance when woken) costs one statement and one
//! transaction per batch, not per waiter.

use crate::store::prepared;
use sluice_history::Failure;
use sluice_store::stored::{decode, parse_status};
use sluice_store::{InstanceInfo, InstanceSummary, StoreError, StoreResult};
use std::collections::HashMap;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Row;

/// Lookups answered by one statement at most.
pub(crate) const BATCH_LOOKUPS_MAX: usize = 256;
/// Lookups waiting for the reader at most (callers wait beyond).
pub(crate) const QUEUE_LOOKUPS_MAX: usize = 1_024;

/// One caller's lookup.
pub(crate) struct Lookup {
    pub(crate) instance_id: String,
    pub(crate) reply: oneshot::Sender<StoreResult<Option<InstanceInfo>>>,
}

type Describe = dyn Fn(&tokio_postgres::Error) -> StoreError + Send + Sync;
type PoolDescribe = dyn Fn(deadpool_postgres::PoolError) -> StoreError + Send + Sync;

/// The columns of [`sluice_store::listing::COLUMNS`] as the store's type.
pub(crate) fn summary(row: &Row) -> StoreResult<InstanceSummary> {
    let instance_id: String = row.get(0);
    let failure: Option<String> = row.get(4);
    let failure = failure
        .as_deref()
        .map(|text| decode::<Failure>(text, || format!("failure of instance '{instance_id}'")))
        .transpose()?;
    let status: String = row.get(2);
    Ok(InstanceSummary {
        name: row.get(1),
        status: parse_status(&status)?,
        execution_id: u64::try_from(row.get::<_, i64>(3)).unwrap_or(0),
        failure,
        custom_status: row.get(5),
        parent_id: row.get(6),
        created_at_ms: row.get(7),
        started_at_ms: row.get(8),
        updated_at_ms: row.get(9),
        finished_at_ms: row.get(10),
        instance_id,
    })
}

/// An instance row (the listing's columns, then `input, output`) as the store's type.
fn info(row: &Row) -> StoreResult<InstanceInfo> {
    let summary = summary(row)?;
    Ok(InstanceInfo {
        instance_id: summary.instance_id,
        name: summary.name,
        status: summary.status,
        execution_id: summary.execution_id,
        input: row.get(11),
        output: row.get(12),
        failure: summary.failure,
        custom_status: summary.custom_status,
        parent_id: summary.parent_id,
        created_at_ms: summary.created_at_ms,
        started_at_ms: summary.started_at_ms,
        updated_at_ms: summary.updated_at_ms,
        finished_at_ms: summary.finished_at_ms,
    })
}

/// The reader task.
pub(crate) async fn reader(
    pool: deadpool_postgres::Pool,
    sql: String,
    mut queue: mpsc::Receiver<Lookup>,
    describe: Box<Describe>,
    pool_error: Box<PoolDescribe>,
) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH_LOOKUPS_MAX {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let mut ids: Vec<&str> = batch.iter().map(|l| l.instance_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let rows = match pool.get().await {
            Ok(client) => match prepared(&client, &sql).await {
                Ok(statement) => client
                    .query(&statement, &[&ids])
                    .await
                    .map_err(|e| describe(&e)),
                Err(error) => Err(describe(&error)),
            },
            Err(error) => Err(pool_error(error)),
        };
        match rows {
            Ok(rows) => {
                // Errors are kept as text: a corrupt row may be asked for twice in a batch.
                let found: HashMap<String, Result<InstanceInfo, String>> = rows
                    .iter()
                    .map(|row| {
                        let info = info(row).map_err(|error| match error {
                            StoreError::Corrupt(text) => text,
                            other => other.to_string(),
                        });
                        (row.get::<_, String>(0), info)
                    })
                    .collect();
                for lookup in batch {
                    let answer = match found.get(&lookup.instance_id) {
                        None => Ok(None),
                        Some(Ok(info)) => Ok(Some(info.clone())),
                        Some(Err(text)) => Err(StoreError::Corrupt(text.clone())),
                    };
                    let _ = lookup.reply.send(answer);
                }
            }
            Err(error) => {
                let text = error.to_string();
                for lookup in batch {
                    let _ = lookup.reply.send(Err(StoreError::Database(text.clone())));
                }
            }
        }
    }
}
