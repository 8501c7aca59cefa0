//! Schema and migrations. `PRAGMA user_version` holds the schema version.

use rusqlite::Connection;
use sluice_sqlite::SqliteError;

/// The schema version this code writes.
pub(crate) const SCHEMA_VERSION: i64 = 3;

const V1: &str = "
-- The history length is not stored: it is the history's largest position + 1 (a primary-key
-- seek), so a turn that changes no status does not rewrite the instance row.
CREATE TABLE instances (
    instance_id     TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    status          TEXT NOT NULL,
    execution_id    INTEGER NOT NULL,
    input           TEXT NOT NULL,
    output          TEXT,
    failure         TEXT,
    custom_status   TEXT,
    created_at_ms   INTEGER NOT NULL,
    updated_at_ms   INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE history (
    instance_id  TEXT NOT NULL,
    execution_id INTEGER NOT NULL,
    position     INTEGER NOT NULL,
    event        TEXT NOT NULL,
    PRIMARY KEY (instance_id, execution_id, position)
) WITHOUT ROWID;

CREATE TABLE inbox (
    message_id    INTEGER PRIMARY KEY,
    instance_id   TEXT NOT NULL,
    visible_at_ms INTEGER NOT NULL,
    message       TEXT NOT NULL
);
CREATE INDEX inbox_instance ON inbox (instance_id, message_id);
CREATE INDEX inbox_visible ON inbox (visible_at_ms);

-- Holds only work in flight (rows are deleted when their result is recorded), so scans are
-- short; an index would cost a page write per change. Finishing an instance scans it only
-- when the instance leaves activities unresolved (TurnCommit::outstanding_activities).
CREATE TABLE activities (
    item_id         INTEGER PRIMARY KEY,
    instance_id     TEXT NOT NULL,
    execution_id    INTEGER NOT NULL,
    activity_id     INTEGER NOT NULL,
    name            TEXT NOT NULL,
    input           TEXT NOT NULL,
    retry           TEXT,
    attempt         INTEGER NOT NULL DEFAULT 0,
    visible_at_ms   INTEGER NOT NULL
);
";

/// Version 2: deliveries are counted per inbox message, durably, so that a turn that keeps
/// failing or crashing its process is recognised after restarts. Counting on the message rows
/// costs no extra write at commit: the commit deletes them anyway.
const V2: &str = "
ALTER TABLE inbox ADD COLUMN deliveries INTEGER NOT NULL DEFAULT 0;
";

/// Version 3: activities carry their task queue (`NULL`: the default queue).
const V3: &str = "
ALTER TABLE activities ADD COLUMN task_queue TEXT;
";

/// Brings the schema to [`SCHEMA_VERSION`]; refuses a database from a newer version.
pub(crate) fn migrate(connection: &Connection) -> Result<(), SqliteError> {
    let version: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(SqliteError::Sqlite(rusqlite::Error::InvalidParameterName(
            format!(
                "database schema version {version} is newer than this build supports ({SCHEMA_VERSION})"
            ),
        )));
    }
    if version < SCHEMA_VERSION {
        let mut steps = String::new();
        if version < 1 {
            steps.push_str(V1);
        }
        if version < 2 {
            steps.push_str(V2);
        }
        if version < 3 {
            steps.push_str(V3);
        }
        connection.execute_batch(&format!(
            "BEGIN IMMEDIATE; {steps} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        ))?;
    }
    Ok(())
}
