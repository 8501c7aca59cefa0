//! Schema and migrations. `PRAGMA user_version` holds the schema version.

use rusqlite::Connection;
use sluice_sqlite::SqliteError;

/// The schema version this code writes.
pub(crate) const SCHEMA_VERSION: i64 = 4;

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

/// Version 4: what operators list and count instances by.
///
/// - The parent, when the current execution started running and when the instance finished
///   are columns, filled for existing rows from their histories and start messages.
/// - Listings walk an index in the listing's order (`instances_status_created` and
///   `instances_status_updated` serve every status filter, one range per status, merged), so a
///   page reads about a page of rows however many instances there are. The instance row is
///   rewritten only when what it shows changes (a few times in an instance's life), so the
///   indexes cost nothing on turns that change nothing.
/// - `instance_counts` holds the number of instances per status and name, kept by triggers on
///   every insert, status change and delete (one writer: no contention), so counts read a few
///   rows instead of counting the table.
/// - `executions` keeps the times of executions that continued as new (written at the
///   continue-as-new, a rare event); the current execution is described by the instance row.
const V4: &str = "
ALTER TABLE instances ADD COLUMN parent_id TEXT;
ALTER TABLE instances ADD COLUMN started_at_ms INTEGER;
ALTER TABLE instances ADD COLUMN finished_at_ms INTEGER;
UPDATE instances SET finished_at_ms = updated_at_ms
    WHERE status IN ('completed', 'failed', 'cancelled');
UPDATE instances SET started_at_ms = COALESCE(
        (SELECT json_extract(h.event, '$.now_ms') FROM history h
          WHERE h.instance_id = instances.instance_id AND h.execution_id = instances.execution_id
            AND json_extract(h.event, '$.type') = 'turn_started'
          ORDER BY h.position LIMIT 1),
        created_at_ms)
    WHERE status <> 'pending';
UPDATE instances SET parent_id = COALESCE(
        (SELECT json_extract(h.event, '$.parent.instance_id') FROM history h
          WHERE h.instance_id = instances.instance_id
            AND json_extract(h.event, '$.type') = 'orchestration_started'
          ORDER BY h.execution_id, h.position LIMIT 1),
        (SELECT json_extract(m.message, '$.parent.instance_id') FROM inbox m
          WHERE m.instance_id = instances.instance_id AND json_extract(m.message, '$.type') = 'start'
          ORDER BY m.message_id LIMIT 1));
CREATE INDEX instances_status_created ON instances (status, created_at_ms);
CREATE INDEX instances_status_updated ON instances (status, updated_at_ms);
CREATE INDEX instances_name_created ON instances (name, created_at_ms);
CREATE INDEX instances_parent ON instances (parent_id) WHERE parent_id IS NOT NULL;

CREATE TABLE executions (
    instance_id    TEXT NOT NULL,
    execution_id   INTEGER NOT NULL,
    started_at_ms  INTEGER,
    finished_at_ms INTEGER NOT NULL,
    history_len    INTEGER NOT NULL,
    PRIMARY KEY (instance_id, execution_id)
) WITHOUT ROWID;
INSERT INTO executions (instance_id, execution_id, started_at_ms, finished_at_ms, history_len)
    SELECT h.instance_id, h.execution_id,
           MIN(CASE WHEN json_extract(h.event, '$.type') = 'turn_started' THEN json_extract(h.event, '$.now_ms') END),
           COALESCE(MAX(CASE WHEN json_extract(h.event, '$.type') = 'turn_started' THEN json_extract(h.event, '$.now_ms') END), 0),
           MAX(h.position) + 1
    FROM history h JOIN instances i ON i.instance_id = h.instance_id
    WHERE h.execution_id < i.execution_id
    GROUP BY h.instance_id, h.execution_id;

CREATE TABLE instance_counts (
    status TEXT NOT NULL,
    name   TEXT NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (status, name)
) WITHOUT ROWID;
INSERT INTO instance_counts (status, name, n)
    SELECT status, name, COUNT(*) FROM instances GROUP BY status, name;
CREATE TRIGGER instance_counts_insert AFTER INSERT ON instances BEGIN
    INSERT INTO instance_counts (status, name, n) VALUES (new.status, new.name, 1)
        ON CONFLICT (status, name) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER instance_counts_update AFTER UPDATE OF status ON instances
    WHEN old.status IS NOT new.status BEGIN
    UPDATE instance_counts SET n = n - 1 WHERE status = old.status AND name = old.name;
    INSERT INTO instance_counts (status, name, n) VALUES (new.status, new.name, 1)
        ON CONFLICT (status, name) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER instance_counts_delete AFTER DELETE ON instances BEGIN
    UPDATE instance_counts SET n = n - 1 WHERE status = old.status AND name = old.name;
END;
";

/// Accepts a database at exactly [`SCHEMA_VERSION`], without changing it (a client's open of a
/// store another process may be running: migrating is that process's business).
pub(crate) fn check_current(connection: &Connection) -> Result<(), SqliteError> {
    let version: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version != SCHEMA_VERSION {
        return Err(SqliteError::Schema(format!(
            "the store is at schema version {version} and this build reads version \
             {SCHEMA_VERSION}: open it once with a runtime of this build (which migrates it), \
             or use a build of its version"
        )));
    }
    Ok(())
}

/// Brings the schema to [`SCHEMA_VERSION`]; refuses a database from a newer version.
pub(crate) fn migrate(connection: &Connection) -> Result<(), SqliteError> {
    let version: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(SqliteError::Schema(format!(
            "version {version} is newer than this build supports ({SCHEMA_VERSION})"
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
        if version < 4 {
            steps.push_str(V4);
        }
        connection.execute_batch(&format!(
            "BEGIN IMMEDIATE; {steps} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        ))?;
    }
    Ok(())
}
