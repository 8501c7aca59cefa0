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

use tokio_postgres::Client;

/// The schema version this build writes.
pub(crate) const SCHEMA_VERSION: i32 = 1;

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
    let steps = [V1];
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
