//! Schema and migrations, versioned in `<schema>.schema_migrations`.
//!
//! Every process applies what is missing at start; concurrent starts serialise on a
//! transaction-level advisory lock keyed by the schema's name, and every step waits at most a
//! second for a table lock (`lock_timeout`), so a migration never stalls a busy table for long.
//! A database migrated by a newer build is refused with a clear message.
//!
//! Hot tables stay small: `inbox` holds only unconsumed messages and `activities` only work in
//! flight (the commit that records a result deletes its row), so claims scan short indexes.
//! Leases are columns judged against the database clock (`now_ms`): an instance's
//! `locked_until_ms`, and for work items `visible_at_ms` itself (a claim pushes it to the end
//! of the lease, pgmq-style), so the claim query is one range scan of `activities_visible`.
//!
//! Turns are claimed from the instance rows, not the inbox: `instances.due_at_ms` says when an
//! instance next needs a turn (its earliest unconsumed message while unlocked, its lease's end
//! while locked, `NULL` when it waits for nothing, is quarantined or has finished), so a claim
//! walks the partial index `instances_due` in time order and stops at its limit, however many
//! messages wait for instances that are busy. Every write keeps it true: a message for another
//! instance updates that instance's row in the same transaction (which also takes its row
//! lock, so a message can never slip in unseen beside the holder's commit), a commit sets it
//! from what is left in the inbox, a claim and a renewal set it to the lease's end. A turn's
//! delivery count is the instance's `deliveries` (counted at claim, reset by the commit that
//! consumes the messages), so a claim reads the inbox rows and writes none.
//!
//! Version 1 has not been released; it is changed in place until the first release.
//!
//! Version 2 adds what operators list and count instances by (see [`V2`]).
//!
//! Version 3 orders instance ids by code point beside their creation (see [`V3`]).

use tokio_postgres::Client;

/// The schema version this build writes.
pub(crate) const SCHEMA_VERSION: i32 = 3;

/// Version 1. `{s}` is the quoted schema name.
const V1: &str = r#"
CREATE FUNCTION {s}.now_ms(forced bigint) RETURNS bigint LANGUAGE sql STABLE AS
    $$ SELECT COALESCE(forced, (extract(epoch FROM statement_timestamp()) * 1000)::bigint) $$;
CREATE SEQUENCE {s}.lock_tokens;
CREATE TABLE {s}.instances (
    instance_id     text PRIMARY KEY,
    name            text NOT NULL,
    status          text NOT NULL,
    execution_id    bigint NOT NULL,
    input           text NOT NULL,
    output          text,
    failure         text,
    custom_status   text,
    history_len     bigint NOT NULL DEFAULT 0,
    created_at_ms   bigint NOT NULL,
    updated_at_ms   bigint NOT NULL,
    lock_token      bigint,
    locked_until_ms bigint,
    due_at_ms       bigint,
    deliveries      integer NOT NULL DEFAULT 0
);
CREATE INDEX instances_due ON {s}.instances (due_at_ms) WHERE due_at_ms IS NOT NULL;
CREATE TABLE {s}.history (
    instance_id  text NOT NULL,
    execution_id bigint NOT NULL,
    position     bigint NOT NULL,
    event        text NOT NULL,
    PRIMARY KEY (instance_id, execution_id, position)
);
CREATE TABLE {s}.inbox (
    message_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id   text NOT NULL,
    visible_at_ms bigint NOT NULL,
    message       text NOT NULL
);
CREATE INDEX inbox_instance ON {s}.inbox (instance_id, message_id);
CREATE TABLE {s}.activities (
    item_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id   text NOT NULL,
    execution_id  bigint NOT NULL,
    activity_id   bigint NOT NULL,
    name          text NOT NULL,
    input         text NOT NULL,
    retry         text,
    attempt       integer NOT NULL DEFAULT 0,
    visible_at_ms bigint NOT NULL,
    lock_token    bigint,
    task_queue    text
);
CREATE INDEX activities_visible ON {s}.activities (visible_at_ms, item_id);
CREATE INDEX activities_instance ON {s}.activities (instance_id);
"#;

/// Version 2: listing and counting instances.
///
/// - The parent, when the current execution started running and when the instance finished
///   are columns; `derive_listing(ids)` fills them from the histories and start messages (for
///   every row here, for the imported ones after a `sluice store copy`).
/// - Listings walk `instances_status_created` or `instances_status_updated`, one range per
///   status, merged (see `sluice_store::listing`); `instances_name_created` serves a name
///   filter, `instances_parent` the children of one parent.
/// - Counts are kept, not counted: a trigger appends a row to `instance_count_deltas` on every
///   insert, status change and delete of an instance (appends take no lock another writer
///   waits for, where one counter row per status would serialise every commit), and
///   `compact_instance_counts()` folds the deltas into `instance_counts` (the store does it
///   every few seconds and before it reads them). A count is the sum of both tables.
/// - `executions` keeps the times of executions that continued as new.
const V2: &str = r#"
ALTER TABLE {s}.instances ADD COLUMN parent_id text, ADD COLUMN started_at_ms bigint,
    ADD COLUMN finished_at_ms bigint;
CREATE TABLE {s}.executions (
    instance_id    text NOT NULL,
    execution_id   bigint NOT NULL,
    started_at_ms  bigint,
    finished_at_ms bigint NOT NULL,
    history_len    bigint NOT NULL,
    PRIMARY KEY (instance_id, execution_id)
);
CREATE FUNCTION {s}.derive_listing(ids text[]) RETURNS void LANGUAGE sql AS $$
    UPDATE {s}.instances i SET
        finished_at_ms = CASE WHEN i.status IN ('completed', 'failed', 'cancelled') THEN i.updated_at_ms END,
        started_at_ms = CASE WHEN i.status = 'pending' THEN NULL ELSE COALESCE(
            (SELECT (h.event::jsonb ->> 'now_ms')::bigint FROM {s}.history h
              WHERE h.instance_id = i.instance_id AND h.execution_id = i.execution_id
                AND h.event::jsonb ->> 'type' = 'turn_started'
              ORDER BY h.position LIMIT 1),
            i.created_at_ms) END,
        parent_id = COALESCE(
            (SELECT h.event::jsonb -> 'parent' ->> 'instance_id' FROM {s}.history h
              WHERE h.instance_id = i.instance_id
                AND h.event::jsonb ->> 'type' = 'orchestration_started'
              ORDER BY h.execution_id, h.position LIMIT 1),
            (SELECT m.message::jsonb -> 'parent' ->> 'instance_id' FROM {s}.inbox m
              WHERE m.instance_id = i.instance_id AND m.message::jsonb ->> 'type' = 'start'
              ORDER BY m.message_id LIMIT 1))
    WHERE ids IS NULL OR i.instance_id = ANY(ids);
    INSERT INTO {s}.executions (instance_id, execution_id, started_at_ms, finished_at_ms, history_len)
    SELECT h.instance_id, h.execution_id,
           min((h.event::jsonb ->> 'now_ms')::bigint) FILTER (WHERE h.event::jsonb ->> 'type' = 'turn_started'),
           COALESCE(max((h.event::jsonb ->> 'now_ms')::bigint) FILTER (WHERE h.event::jsonb ->> 'type' = 'turn_started'), 0),
           max(h.position) + 1
    FROM {s}.history h JOIN {s}.instances i ON i.instance_id = h.instance_id
    WHERE h.execution_id < i.execution_id AND (ids IS NULL OR h.instance_id = ANY(ids))
    GROUP BY h.instance_id, h.execution_id
    ON CONFLICT DO NOTHING;
$$;
SELECT {s}.derive_listing(NULL);
CREATE INDEX instances_status_created ON {s}.instances (status, created_at_ms, instance_id);
CREATE INDEX instances_status_updated ON {s}.instances (status, updated_at_ms, instance_id);
CREATE INDEX instances_name_created ON {s}.instances (name, created_at_ms, instance_id);
CREATE INDEX instances_parent ON {s}.instances (parent_id) WHERE parent_id IS NOT NULL;

CREATE TABLE {s}.instance_counts (
    status text NOT NULL,
    name   text NOT NULL,
    n      bigint NOT NULL,
    PRIMARY KEY (status, name)
);
-- Every fold deletes what it moved: vacuumed after every few thousand dead rows, not after a
-- fifth of the table, so a count (which reads what is left) does not wade through them.
CREATE TABLE {s}.instance_count_deltas (
    status text NOT NULL,
    name   text NOT NULL,
    delta  bigint NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000);
INSERT INTO {s}.instance_counts (status, name, n)
    SELECT status, name, count(*) FROM {s}.instances GROUP BY status, name;
CREATE FUNCTION {s}.count_instance_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO {s}.instance_count_deltas VALUES (NEW.status, NEW.name, 1);
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO {s}.instance_count_deltas VALUES (OLD.status, OLD.name, -1);
    ELSE
        INSERT INTO {s}.instance_count_deltas VALUES (OLD.status, OLD.name, -1), (NEW.status, NEW.name, 1);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER instance_counts_insert AFTER INSERT ON {s}.instances
    FOR EACH ROW EXECUTE FUNCTION {s}.count_instance_change();
CREATE TRIGGER instance_counts_update AFTER UPDATE OF status ON {s}.instances
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION {s}.count_instance_change();
CREATE TRIGGER instance_counts_delete AFTER DELETE ON {s}.instances
    FOR EACH ROW EXECUTE FUNCTION {s}.count_instance_change();
CREATE FUNCTION {s}.compact_instance_counts() RETURNS void LANGUAGE sql AS $$
    WITH moved AS (DELETE FROM {s}.instance_count_deltas RETURNING status, name, delta)
    INSERT INTO {s}.instance_counts AS c (status, name, n)
    SELECT status, name, sum(delta) FROM moved GROUP BY status, name
    ON CONFLICT (status, name) DO UPDATE SET n = c.n + EXCLUDED.n;
$$;
"#;

/// Why the schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A newer build migrated this database.
    #[error(
        "the schema {schema} is at version {found}, newer than this build supports ({supported}); \
         run a build at least as new"
    )]
    Newer {
        /// The schema.
        schema: String,
        /// Its version.
        found: i32,
        /// This build's.
        supported: i32,
    },
    /// The database refused a step.
    #[error("migrating {schema} failed: {message}")]
    Database {
        /// The schema.
        schema: String,
        /// Why.
        message: String,
    },
}

/// Version 3. An id prefix is a range of `(instance_id COLLATE "C")` whatever the database's
/// collation, so a listing by prefix counts and bounds its instances from this index (an
/// index-only scan of the range) instead of reading the table (see `sluice_store::listing`).
const V3: &str = r#"
CREATE INDEX instances_id_created ON {s}.instances ((instance_id COLLATE "C"), created_at_ms);
"#;

/// Brings `schema` (already validated; `quoted` is its quoted form) to [`SCHEMA_VERSION`].
pub(crate) async fn migrate(
    client: &mut Client,
    schema: &str,
    quoted: &str,
) -> Result<i32, MigrateError> {
    let failed = |error: tokio_postgres::Error| MigrateError::Database {
        schema: schema.to_string(),
        message: error.to_string(),
    };
    let transaction = client.transaction().await.map_err(failed)?;
    transaction
        .batch_execute("SET LOCAL lock_timeout = '1s'")
        .await
        .map_err(failed)?;
    transaction
        .execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('sluice.migrate.' || $1, 0))",
            &[&schema],
        )
        .await
        .map_err(failed)?;
    transaction
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {quoted};
             CREATE TABLE IF NOT EXISTS {quoted}.schema_migrations (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now())"
        ))
        .await
        .map_err(failed)?;
    let found: i32 = transaction
        .query_one(
            &format!("SELECT COALESCE(max(version), 0) FROM {quoted}.schema_migrations"),
            &[],
        )
        .await
        .map_err(failed)?
        .get(0);
    if found > SCHEMA_VERSION {
        return Err(MigrateError::Newer {
            schema: schema.to_string(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    let steps = [V1, V2, V3];
    for (index, step) in steps.iter().enumerate() {
        let version = i32::try_from(index + 1).expect("few steps");
        if version <= found {
            continue;
        }
        transaction
            .batch_execute(&step.replace("{s}", quoted))
            .await
            .map_err(failed)?;
        transaction
            .execute(
                &format!("INSERT INTO {quoted}.schema_migrations (version) VALUES ($1)"),
                &[&version],
            )
            .await
            .map_err(failed)?;
    }
    transaction.commit().await.map_err(failed)?;
    Ok(found)
}
