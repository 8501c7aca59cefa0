//! Removing finished instances: one with its finished descendants, or batches of those a
//! filter selects. Each is one write on the writer; a batch walks `instances_status_updated`
//! per status (a finished instance's last update is its finish), oldest first.

use crate::store::db_error;
use rusqlite::{Connection, OptionalExtension, params};
use sluice_store::stored::parse_status;
use sluice_store::{PurgeFilter, StoreError, StoreResult};

/// Deletes everything stored for `ids` (the count triggers follow the instance rows).
fn delete(connection: &Connection, ids: &[String]) -> StoreResult<()> {
    for table in ["history", "executions", "inbox", "activities", "instances"] {
        let mut statement = connection
            .prepare_cached(&format!("DELETE FROM {table} WHERE instance_id = ?1"))
            .map_err(db_error)?;
        for id in ids {
            statement.execute(params![id]).map_err(db_error)?;
        }
    }
    Ok(())
}

/// Removes a finished instance with its finished descendants; returns the ids removed.
pub(crate) fn purge_instance(
    connection: &Connection,
    instance_id: &str,
) -> StoreResult<Vec<String>> {
    let status: Option<String> = connection
        .prepare_cached("SELECT status FROM instances WHERE instance_id = ?1")
        .and_then(|mut statement| {
            statement
                .query_row(params![instance_id], |row| row.get(0))
                .optional()
        })
        .map_err(db_error)?;
    let Some(status) = status else {
        return Err(StoreError::InstanceNotFound(instance_id.to_string()));
    };
    let status = parse_status(&status)?;
    if !status.is_terminal() {
        return Err(StoreError::NotAllowed {
            instance_id: instance_id.to_string(),
            status: status.as_str(),
            why: "only a finished instance is purged; terminate it first",
        });
    }
    let mut removed = vec![instance_id.to_string()];
    let mut next = 0;
    let mut children = connection
        .prepare_cached(
            "SELECT instance_id FROM instances WHERE parent_id = ?1
             AND status IN ('completed', 'failed', 'cancelled', 'terminated')
             ORDER BY instance_id",
        )
        .map_err(db_error)?;
    while next < removed.len() {
        let found: Vec<String> = children
            .query_map(params![removed[next]], |row| row.get(0))
            .and_then(Iterator::collect)
            .map_err(db_error)?;
        removed.extend(found);
        next += 1;
    }
    delete(connection, &removed)?;
    Ok(removed)
}

/// How many instances `filter` selects.
pub(crate) fn count(connection: &Connection, filter: &PurgeFilter) -> StoreResult<u64> {
    let mut statement = connection
        .prepare_cached(
            "SELECT COUNT(*) FROM instances WHERE status = ?1 AND updated_at_ms < ?2
             AND finished_at_ms < ?2 AND (?3 IS NULL OR name = ?3)",
        )
        .map_err(db_error)?;
    let mut total = 0;
    for status in filter.final_statuses() {
        let n: i64 = statement
            .query_row(
                params![status.as_str(), filter.finished_before_ms, filter.name],
                |row| row.get(0),
            )
            .map_err(db_error)?;
        total += u64::try_from(n).unwrap_or(0);
    }
    Ok(total)
}

/// Removes up to `max` of the instances `filter` selects, the earliest finished first.
pub(crate) fn batch(
    connection: &Connection,
    filter: &PurgeFilter,
    max: usize,
) -> StoreResult<usize> {
    let limit = i64::try_from(max).unwrap_or(i64::MAX);
    let mut statement = connection
        .prepare_cached(
            "SELECT updated_at_ms, instance_id FROM instances WHERE status = ?1
             AND updated_at_ms < ?2 AND finished_at_ms < ?2 AND (?3 IS NULL OR name = ?3)
             ORDER BY updated_at_ms LIMIT ?4",
        )
        .map_err(db_error)?;
    let mut candidates: Vec<(i64, String)> = Vec::new();
    for status in filter.final_statuses() {
        let rows = statement
            .query_map(
                params![
                    status.as_str(),
                    filter.finished_before_ms,
                    filter.name,
                    limit
                ],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(db_error)?;
        candidates.extend(rows);
    }
    candidates.sort();
    candidates.truncate(max);
    let ids: Vec<String> = candidates.into_iter().map(|(_, id)| id).collect();
    delete(connection, &ids)?;
    Ok(ids.len())
}
