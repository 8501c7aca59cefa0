use crate::commit;
use crate::operator;
use crate::read;
use crate::schema::{self, MigrateError};
use crate::wake::{self, AbortOnDrop, Announcer, ListenerState};
use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use deadpool_postgres::{Object, Pool};
use sluice_history::{Event, Failure, InstanceStatus, Message, TimestampMs};
use sluice_postgres::{ConnectError, ConnectOptions, PoolOptions};
use sluice_store::stored::{decode, encode, parse_status};
use sluice_store::{
    ActivityResult, ActivityWorkItem, ChildPolicy, Clock, ExecutionInfo, ExecutionStatus,
    ExportedInstance, InstanceCount, InstanceInfo, InstancePage, InstanceQuery, LockedTurn, Names,
    NewActivity, NewInstance, OperatorRequest, PurgeFilter, Signals, Store, StoreError,
    StoreResult, TurnCommit, Work,
};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::Duration;

/// The `application_name` of the store's connections unless the URL sets one.
pub const APPLICATION_NAME: &str = "sluice-store";

/// Errors of [`PostgresStore::connect`], with stable codes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresStoreError {
    /// The URL or connecting failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The schema name is not a plain lower-case identifier.
    #[error(
        "invalid schema name '{0}': use 1 to 63 lower-case letters, digits and underscores, not starting with a digit"
    )]
    InvalidSchema(String),
    /// The schema could not be migrated.
    #[error(transparent)]
    Migrate(#[from] MigrateError),
}

impl PostgresStoreError {
    /// A stable code for the error.
    pub fn code(&self) -> &'static str {
        match self {
            PostgresStoreError::Connect(error) => error.code(),
            PostgresStoreError::InvalidSchema(_) => "store.invalid_schema",
            PostgresStoreError::Migrate(MigrateError::Newer { .. }) => "store.schema_too_new",
            PostgresStoreError::Migrate(MigrateError::Database { .. }) => "store.migrate",
        }
    }
}

/// How to reach the database and what to use in it.
#[derive(Clone, Debug)]
pub struct PostgresStoreOptions {
    connect: ConnectOptions,
    /// The schema holding the store's tables (created if missing). Default: `sluice`.
    pub schema: String,
    /// Pooled connections at most. Default: 4.
    pub pool_connections_max: usize,
    /// Longest wait for a pooled connection. Default: 30 s.
    pub pool_acquire_timeout: Duration,
    /// Longest wait to open one connection, unless the URL says. Default: 10 s.
    pub connect_timeout: Duration,
    /// Wake other processes with NOTIFY and listen for theirs (one more connection). Turn it
    /// off behind a pooler in transaction mode (PgBouncer), where LISTEN does not work: the
    /// runtime's poll interval then bounds how late other processes' work is noticed.
    /// Default: on.
    pub listen: bool,
}

impl PostgresStoreOptions {
    /// Options for a URL (`postgres://user:password@host:port/database`), with the defaults.
    pub fn new(url: &str) -> Result<Self, PostgresStoreError> {
        Ok(Self {
            connect: ConnectOptions::parse(url)?,
            schema: "sluice".to_string(),
            pool_connections_max: 4,
            pool_acquire_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            listen: true,
        })
    }

    /// The server, without the password.
    pub fn target(&self) -> &str {
        self.connect.target()
    }
}

fn valid_schema(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && name.len() <= 63
}

/// The PostgreSQL store. Cheap to share behind an `Arc`; every call takes a pooled connection.
pub struct PostgresStore {
    pool: Pool,
    connect: ConnectOptions,
    sql: Sql,
    signals: Arc<Signals>,
    /// `None`: the database's clock. A test clock is passed to every statement instead.
    clock: Option<Arc<dyn Clock>>,
    announcer: Option<Arc<Announcer>>,
    listener: Arc<ListenerState>,
    /// When the last fetch of each kind began (database clock), for `next_wake_at`.
    fetched_turns_at: AtomicI64,
    fetched_activities_at: AtomicI64,
    /// The names the last fetch of each kind asked for (`None`: all), for `next_wake_at`.
    fetched_turn_names: std::sync::Mutex<Option<Vec<String>>>,
    fetched_activity_names: std::sync::Mutex<(NameList, NameList)>,
    /// Turn commits and starts for the committer (`commit.rs`).
    commits: tokio::sync::mpsc::Sender<commit::Request>,
    /// Instance lookups for the reader (`read.rs`).
    lookups: tokio::sync::mpsc::Sender<read::Lookup>,
    /// Writes refused because their lease was lost (stale token or lease ended).
    refused_writes: AtomicU64,
    _tasks: Vec<AbortOnDrop>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("PostgresStore")
            .field("target", &self.connect.target())
            .finish_non_exhaustive()
    }
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Settings of the store's pooled connections. `plan_cache_mode`: every statement is prepared
/// once per connection, and PostgreSQL switches a prepared statement to a generic plan after
/// five executions when it costs no more than the custom ones did. A new store's tables are
/// nearly empty then, and the plan chosen for them stayed cached as the tables grew: runs of
/// `sluice bench orchestrations --store postgres` (0 ms activities, 500 in flight) split
/// between about 1,150 and 2,500 orchestrations/s; planned each time, three of three ran at
/// 2,500-2,800 (bench/results/pg-round2). Planning costs less than the bad plans did.
const SESSION_SETTINGS: &[(&str, &str)] = &[("plan_cache_mode", "force_custom_plan")];

/// A message arrived for instance `t`: due now unless its lease runs (then it is due when the
/// lease ends, and the holder's commit sets it from what is left in the inbox).
pub(crate) const DUE_NOW: &str = "CASE WHEN t.locked_until_ms > {s}.now_ms($1) THEN t.due_at_ms
    ELSE LEAST(t.due_at_ms, {s}.now_ms($1)) END";

/// The store's statements, with the schema name in place.
pub(crate) struct Sql {
    /// The quoted schema.
    pub(crate) schema: String,
    pub(crate) create_instance: String,
    instance_status: String,
    insert_message_if_live: String,
    fetch_turns: String,
    read_history: String,
    unlock_turn: String,
    renew_turn: String,
    fetch_activities: String,
    delete_items: String,
    renew_activity: String,
    complete_activity: String,
    unlock_activity: String,
    instance: String,
    next_wake_turns: String,
    next_wake_activities: String,
    now: String,
    instance_counts: String,
    compact_counts: String,
    executions: String,
    derive_listing: String,
    import_exists: String,
    import_instances: String,
    import_history: String,
    import_inbox: String,
    import_activities: String,
}

impl Sql {
    fn new(s: &str) -> Self {
        let held = "lock_token = $2 AND locked_until_ms > {s}.now_ms($1)";
        let sql = |text: &str| {
            text.replace("{held}", held)
                .replace("{due_now}", DUE_NOW)
                .replace("{s}", s)
        };
        Sql {
            schema: s.to_string(),
            create_instance: sql(
                "WITH created AS (
                    INSERT INTO {s}.instances (instance_id, name, status, execution_id, input, created_at_ms, updated_at_ms, due_at_ms, parent_id)
                    VALUES ($2, $3, 'pending', 1, $4, {s}.now_ms($1), {s}.now_ms($1), {s}.now_ms($1), $6)
                    ON CONFLICT (instance_id) DO NOTHING RETURNING instance_id)
                 INSERT INTO {s}.inbox (instance_id, visible_at_ms, message)
                 SELECT instance_id, {s}.now_ms($1), $5 FROM created RETURNING instance_id",
            ),
            instance_status: sql("SELECT status FROM {s}.instances WHERE instance_id = $1"),
            // The instance row is updated in the same transaction (see `schema.rs`).
            insert_message_if_live: sql(
                "WITH sent AS (
                    INSERT INTO {s}.inbox (instance_id, visible_at_ms, message)
                    SELECT $2, {s}.now_ms($1), $3 FROM {s}.instances
                    WHERE instance_id = $2 AND status IN ('pending', 'running', 'quarantined', 'suspended')
                    RETURNING instance_id),
                 due AS (
                    UPDATE {s}.instances t SET due_at_ms = {due_now}
                    FROM sent WHERE t.instance_id = sent.instance_id AND t.status NOT IN ('quarantined', 'suspended'))
                 SELECT instance_id FROM sent",
            ),
            // Due instances in time order (the partial index `instances_due`), locked with SKIP
            // LOCKED (a concurrent fetcher takes others) and their conditions checked again on
            // the locked version; a due row without a visible message (a lease that ran out on
            // a turn that had none, say) is set right instead of handed out. The inbox is read,
            // not written: the delivery is counted on the instance row.
            fetch_turns: sql(
                "WITH token AS (SELECT nextval('{s}.lock_tokens') AS value),
                 wanted AS MATERIALIZED (
                    SELECT i.instance_id FROM {s}.instances i
                    WHERE i.instance_id = ANY($3)
                      AND (i.locked_until_ms IS NULL OR i.locked_until_ms <= {s}.now_ms($1))
                      AND ($5::text[] IS NULL OR i.name = ANY($5::text[]))
                    FOR UPDATE SKIP LOCKED),
                 due AS MATERIALIZED (
                    SELECT i.instance_id, i.due_at_ms FROM {s}.instances i
                    WHERE i.due_at_ms <= {s}.now_ms($1) AND NOT (i.instance_id = ANY($3))
                      AND i.status NOT IN ('quarantined', 'suspended')
                      AND ($5::text[] IS NULL OR i.name = ANY($5::text[]))
                      AND (i.locked_until_ms IS NULL OR i.locked_until_ms <= {s}.now_ms($1))
                    ORDER BY i.due_at_ms LIMIT $2
                    FOR UPDATE SKIP LOCKED),
                 ready AS MATERIALIZED (
                    SELECT d.instance_id, d.due_at_ms FROM due d
                    WHERE EXISTS (SELECT 1 FROM {s}.inbox m WHERE m.instance_id = d.instance_id
                                  AND m.visible_at_ms <= {s}.now_ms($1))),
                 idle AS (
                    UPDATE {s}.instances i SET due_at_ms =
                        (SELECT min(m.visible_at_ms) FROM {s}.inbox m WHERE m.instance_id = i.instance_id)
                    FROM due d WHERE i.instance_id = d.instance_id
                      AND NOT EXISTS (SELECT 1 FROM ready r WHERE r.instance_id = d.instance_id)),
                 picked AS MATERIALIZED (
                    SELECT p.instance_id FROM (
                        SELECT instance_id, 0 AS pass, 0::bigint AS due FROM wanted
                        UNION ALL
                        SELECT instance_id, 1, due_at_ms FROM ready) p
                    ORDER BY p.pass, p.due LIMIT $2),
                 locked AS (
                    UPDATE {s}.instances i SET lock_token = (SELECT value FROM token),
                        locked_until_ms = {s}.now_ms($1) + $4, due_at_ms = {s}.now_ms($1) + $4,
                        deliveries = i.deliveries + 1
                    WHERE i.instance_id = ANY (ARRAY(SELECT instance_id FROM picked))
                    RETURNING i.instance_id, i.name, i.status, i.execution_id, i.history_len,
                        i.lock_token, i.deliveries)
                 SELECT l.instance_id, l.name, l.status, l.execution_id, l.history_len, l.lock_token,
                        l.deliveries, m.message_id, m.message
                 FROM locked l LEFT JOIN {s}.inbox m
                   ON m.instance_id = l.instance_id AND m.visible_at_ms <= {s}.now_ms($1)
                 ORDER BY l.instance_id, m.message_id",
            ),
            read_history: sql(
                "SELECT position, event FROM {s}.history
                 WHERE instance_id = $1 AND execution_id = $2 AND position >= $3 ORDER BY position
                 LIMIT $4",
            ),
            // Visible messages wait `$4` more; the instance is due when the first of them or
            // of its later messages is visible.
            unlock_turn: sql(
                "WITH unlocked AS (
                    UPDATE {s}.instances i SET locked_until_ms = NULL,
                        deliveries = CASE WHEN $5 THEN GREATEST(i.deliveries - 1, 0) ELSE i.deliveries END,
                        due_at_ms = CASE WHEN i.status IN ('quarantined', 'suspended') THEN NULL ELSE
                            (SELECT min(CASE WHEN m.visible_at_ms <= {s}.now_ms($1)
                                             THEN {s}.now_ms($1) + $4 ELSE m.visible_at_ms END)
                             FROM {s}.inbox m WHERE m.instance_id = i.instance_id) END
                    WHERE instance_id = $3 AND {held} RETURNING instance_id),
                 moved AS (
                    UPDATE {s}.inbox m SET visible_at_ms = {s}.now_ms($1) + $4
                    FROM unlocked WHERE $4 > 0 AND m.instance_id = unlocked.instance_id
                      AND m.visible_at_ms <= {s}.now_ms($1)
                    RETURNING 1)
                 SELECT (SELECT count(*) FROM unlocked), (SELECT count(*) FROM moved)",
            ),
            renew_turn: sql(
                "UPDATE {s}.instances SET locked_until_ms = {s}.now_ms($1) + $4,
                    due_at_ms = {s}.now_ms($1) + $4
                 WHERE instance_id = $3 AND {held}",
            ),
            fetch_activities: sql(
                "WITH token AS (SELECT nextval('{s}.lock_tokens') AS value),
                 picked AS (
                    SELECT item_id, instance_id FROM {s}.activities WHERE visible_at_ms <= {s}.now_ms($1)
                      AND NOT EXISTS (SELECT 1 FROM {s}.instances q
                                      WHERE q.instance_id = activities.instance_id
                                        AND q.status = 'quarantined')
                      AND ($4::text[] IS NULL OR name = ANY($4::text[]))
                      AND ($5::text[] IS NULL OR COALESCE(task_queue, '') = ANY($5::text[]))
                    ORDER BY visible_at_ms, item_id LIMIT $2 FOR UPDATE SKIP LOCKED)
                 UPDATE {s}.activities a SET attempt = a.attempt + 1, lock_token = token.value,
                     visible_at_ms = {s}.now_ms($1) + $3
                 FROM picked CROSS JOIN token
                      LEFT JOIN {s}.instances i ON i.instance_id = picked.instance_id
                 WHERE a.item_id = picked.item_id
                 RETURNING a.item_id, a.lock_token, a.attempt, a.instance_id, a.execution_id,
                     a.activity_id, a.name, a.input, a.retry, i.status, i.name, a.task_queue",
            ),
            delete_items: sql(
                "DELETE FROM {s}.activities WHERE item_id = ANY($1) AND lock_token = $2",
            ),
            renew_activity: sql(
                "UPDATE {s}.activities a SET visible_at_ms = {s}.now_ms($1) + $4
                 WHERE a.item_id = $3 AND a.lock_token = $2 AND a.visible_at_ms > {s}.now_ms($1)
                 RETURNING (SELECT i.status FROM {s}.instances i WHERE i.instance_id = a.instance_id)",
            ),
            complete_activity: sql(
                "DELETE FROM {s}.activities
                 WHERE item_id = $3 AND lock_token = $2 AND visible_at_ms > {s}.now_ms($1)
                 RETURNING instance_id, execution_id, activity_id",
            ),
            unlock_activity: sql(
                "UPDATE {s}.activities SET visible_at_ms = {s}.now_ms($1) + $4, lock_token = NULL,
                    attempt = CASE WHEN $5 THEN GREATEST(attempt - 1, 0) ELSE attempt END
                 WHERE item_id = $3 AND lock_token = $2 AND visible_at_ms > {s}.now_ms($1)",
            ),
            instance: sql(&format!(
                "SELECT {}, input, output FROM {{s}}.instances WHERE instance_id = ANY($1::text[])",
                sluice_store::listing::COLUMNS
            )),
            // A locked instance is due when its lease ends: one minimum covers both.
            next_wake_turns: sql(
                "SELECT min(due_at_ms) FROM {s}.instances WHERE due_at_ms > $1
                 AND ($2::text[] IS NULL OR name = ANY($2::text[]))",
            ),
            // A work item's lease is its visibility: one minimum covers both.
            next_wake_activities: sql(
                "SELECT min(visible_at_ms) FROM {s}.activities WHERE visible_at_ms > $1
                 AND ($2::text[] IS NULL OR name = ANY($2::text[]))
                 AND ($3::text[] IS NULL OR COALESCE(task_queue, '') = ANY($3::text[]))",
            ),
            import_exists: sql("SELECT instance_id FROM {s}.instances WHERE instance_id"),
            import_instances: sql(
                "INSERT INTO {s}.instances (instance_id, name, status, execution_id, input, output,
                    failure, custom_status, history_len, created_at_ms, updated_at_ms, due_at_ms)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[],
                    $6::text[], $7::text[], $8::text[], $9::bigint[], $10::bigint[], $11::bigint[],
                    $12::bigint[])",
            ),
            import_history: sql(
                "INSERT INTO {s}.history (instance_id, execution_id, position, event)
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[])",
            ),
            import_inbox: sql(
                "INSERT INTO {s}.inbox (instance_id, visible_at_ms, message)
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[])",
            ),
            import_activities: sql(
                "INSERT INTO {s}.activities (instance_id, execution_id, activity_id, name, input,
                    retry, attempt, visible_at_ms, task_queue)
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[],
                    $6::text[], $7::int4[], $8::bigint[], $9::text[])",
            ),
            now: sql("SELECT {s}.now_ms($1)"),
            instance_counts: sql(
                "SELECT status, name, sum(n)::bigint FROM (
                    SELECT status, name, n FROM {s}.instance_counts
                    UNION ALL SELECT status, name, delta FROM {s}.instance_count_deltas) AS c
                 GROUP BY status, name HAVING sum(n) > 0 ORDER BY status, name",
            ),
            compact_counts: sql("SELECT {s}.compact_instance_counts()"),
            executions: sql(
                "SELECT execution_id, started_at_ms, finished_at_ms, history_len, NULL::text
                 FROM {s}.executions WHERE instance_id = $1
                 UNION ALL
                 SELECT execution_id, started_at_ms, finished_at_ms, history_len, status
                 FROM {s}.instances WHERE instance_id = $1
                 ORDER BY 1",
            ),
            derive_listing: sql("SELECT {s}.derive_listing($1::text[])"),
        }
    }
}

impl PostgresStore {
    /// Connects, migrates the schema and leaves leases to the database's clock.
    pub async fn connect(options: PostgresStoreOptions) -> Result<Self, PostgresStoreError> {
        Self::open(options, None).await
    }

    /// Connects with a clock of the caller's whose time every statement uses instead of the
    /// database's (tests with a manual clock; never several processes).
    pub async fn connect_with_clock(
        options: PostgresStoreOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, PostgresStoreError> {
        Self::open(options, Some(clock)).await
    }

    async fn open(
        options: PostgresStoreOptions,
        clock: Option<Arc<dyn Clock>>,
    ) -> Result<Self, PostgresStoreError> {
        if !valid_schema(&options.schema) {
            return Err(PostgresStoreError::InvalidSchema(options.schema));
        }
        let pool = sluice_postgres::connect_pool(
            &options.connect,
            &PoolOptions {
                connections_max: options.pool_connections_max.max(1),
                acquire_timeout: options.pool_acquire_timeout,
                connect_timeout: options.connect_timeout,
                application_name: APPLICATION_NAME,
                session_settings: SESSION_SETTINGS,
            },
        )
        .await?;
        let quoted = format!("\"{}\"", options.schema);
        let mut client = pool.get().await.map_err(|error| {
            PostgresStoreError::Connect(ConnectError::Connect {
                target: options.connect.target().to_string(),
                message: options
                    .connect
                    .redact(&sluice_postgres::pool_error_chain(&error)),
            })
        })?;
        schema::migrate(&mut client, &options.schema, &quoted).await?;
        drop(client);
        let signals = Arc::new(Signals::default());
        let listener = Arc::new(ListenerState::default());
        let mut tasks = Vec::new();
        let (commits, queue) = tokio::sync::mpsc::channel(commit::QUEUE_REQUESTS_MAX);
        let describe_connect = options.connect.clone();
        let pool_connect = options.connect.clone();
        tasks.push(AbortOnDrop(
            tokio::spawn(commit::committer(
                pool.clone(),
                Arc::new(commit::GroupSql::new(&quoted)),
                queue,
                Box::new(move |error| StoreError::Database(describe_connect.describe_error(error))),
                Box::new(move |error| {
                    StoreError::Database(
                        pool_connect.redact(&sluice_postgres::pool_error_chain(&error)),
                    )
                }),
            ))
            .abort_handle(),
        ));
        let (lookups, lookup_queue) = tokio::sync::mpsc::channel(read::QUEUE_LOOKUPS_MAX);
        let describe_read = options.connect.clone();
        let pool_read = options.connect.clone();
        tasks.push(AbortOnDrop(
            tokio::spawn(read::reader(
                pool.clone(),
                Sql::new(&quoted).instance,
                lookup_queue,
                Box::new(move |error| StoreError::Database(describe_read.describe_error(error))),
                Box::new(move |error| {
                    StoreError::Database(
                        pool_read.redact(&sluice_postgres::pool_error_chain(&error)),
                    )
                }),
            ))
            .abort_handle(),
        ));
        tasks.push(AbortOnDrop(
            tokio::spawn(fold_counts(pool.clone(), Sql::new(&quoted).compact_counts))
                .abort_handle(),
        ));
        let mut announcer = None;
        if options.listen {
            let origin = wake::origin();
            let channel = options.schema.clone();
            let announcing = wake::announcer();
            tasks.push(AbortOnDrop(
                tokio::spawn(wake::announce(
                    pool.clone(),
                    channel.clone(),
                    origin.clone(),
                    announcing.clone(),
                ))
                .abort_handle(),
            ));
            let mut config = options.connect.config().clone();
            if config.get_application_name().is_none() {
                config.application_name(APPLICATION_NAME);
            }
            if config.get_connect_timeout().is_none() {
                config.connect_timeout(options.connect_timeout);
            }
            tasks.push(AbortOnDrop(
                tokio::spawn(wake::listen(
                    options.connect.clone(),
                    config,
                    channel,
                    origin,
                    signals.clone(),
                    listener.clone(),
                ))
                .abort_handle(),
            ));
            announcer = Some(announcing);
        }
        Ok(Self {
            pool,
            sql: Sql::new(&quoted),
            connect: options.connect,
            signals,
            clock,
            announcer,
            listener,
            fetched_turns_at: AtomicI64::new(i64::MIN),
            fetched_activities_at: AtomicI64::new(i64::MIN),
            refused_writes: AtomicU64::new(0),
            fetched_turn_names: std::sync::Mutex::new(None),
            fetched_activity_names: std::sync::Mutex::new((None, None)),
            commits,
            lookups,
            _tasks: tasks,
        })
    }

    /// Whether the wake-up listener is connected and listening.
    pub fn listening(&self) -> bool {
        self.listener
            .listening
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Work for turns appeared: wake local dispatchers now, other processes soon.
    fn wake_orchestrations(&self) {
        self.signals.orchestrations.notify_one();
        if let Some(announcer) = &self.announcer {
            announcer.orchestrations();
        }
    }

    /// Activity work appeared.
    fn wake_activities(&self) {
        self.signals.activities.notify_one();
        if let Some(announcer) = &self.announcer {
            announcer.activities();
        }
    }

    /// An instance finished.
    fn wake_finished(&self, instance_id: &str) {
        self.signals.notify_finished(instance_id);
        if let Some(announcer) = &self.announcer {
            announcer.finished(instance_id);
        }
    }

    /// Adds instances taken from another store (`sluice store copy`), with their histories,
    /// messages and work items, in one transaction: all of `batch` or nothing. An id that
    /// exists here already refuses the batch. Returns how many were added.
    pub async fn import_instances(&self, batch: &[ExportedInstance]) -> StoreResult<usize> {
        let e = |error| self.db_error(error);
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(e)?;
        let ids: Vec<&str> = batch.iter().map(|i| i.instance_id.as_str()).collect();
        let taken = transaction
            .query(
                &format!("{} = ANY($1) LIMIT 1", self.sql.import_exists),
                &[&ids],
            )
            .await
            .map_err(e)?;
        if let Some(row) = taken.first() {
            let id: String = row.get(0);
            return Err(StoreError::Contract(format!(
                "instance '{id}' exists in the target store already"
            )));
        }
        let mut c = ImportColumns::default();
        for instance in batch {
            c.add(instance);
        }
        transaction
            .execute(
                &self.sql.import_instances,
                &[
                    &c.ids,
                    &c.names,
                    &c.statuses,
                    &c.executions,
                    &c.inputs,
                    &c.outputs,
                    &c.failures,
                    &c.custom_statuses,
                    &c.history_lens,
                    &c.created,
                    &c.updated,
                    &c.due,
                ],
            )
            .await
            .map_err(e)?;
        transaction
            .execute(
                &self.sql.import_history,
                &[&c.h_ids, &c.h_executions, &c.h_positions, &c.h_events],
            )
            .await
            .map_err(e)?;
        transaction
            .execute(
                &self.sql.import_inbox,
                &[&c.m_ids, &c.m_visible, &c.m_messages],
            )
            .await
            .map_err(e)?;
        transaction
            .execute(
                &self.sql.import_activities,
                &[
                    &c.a_ids,
                    &c.a_executions,
                    &c.a_activity_ids,
                    &c.a_names,
                    &c.a_inputs,
                    &c.a_retries,
                    &c.a_attempts,
                    &c.a_visible,
                    &c.a_queues,
                ],
            )
            .await
            .map_err(e)?;
        // What listings filter by, from the histories just written.
        transaction
            .execute(&self.sql.derive_listing, &[&ids])
            .await
            .map_err(e)?;
        transaction.commit().await.map_err(e)?;
        self.wake_orchestrations();
        self.wake_activities();
        Ok(batch.len())
    }

    /// An execution's history from `from` on, at most `max` events.
    async fn history_range(
        &self,
        instance_id: &str,
        execution_id: u64,
        from: u64,
        max: Option<usize>,
    ) -> StoreResult<Vec<Event>> {
        let client = self.client().await?;
        let execution = to_i64(execution_id);
        let limit = max.map(|max| i64::try_from(max).unwrap_or(i64::MAX));
        let rows = client
            .query(
                &prepared(&client, &self.sql.read_history)
                    .await
                    .map_err(|error| self.db_error(error))?,
                &[&instance_id, &execution, &to_i64(from), &limit],
            )
            .await
            .map_err(|error| self.db_error(error))?;
        rows.iter()
            .map(|row| {
                let position: i64 = row.get(0);
                decode(row.get(1), || {
                    format!(
                        "history event {position} of instance '{instance_id}' execution {execution}"
                    )
                })
            })
            .collect()
    }

    /// Writes of this store refused so far because their claim's lease was lost (a stale
    /// token, or a lease that ended by the database's clock): turn commits, completions,
    /// renewals, releases.
    pub fn refused_writes(&self) -> u64 {
        self.refused_writes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lease_lost(&self, what: &'static str) -> StoreError {
        self.refused_writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        StoreError::LeaseLost(what)
    }

    /// The connection pool (for tools and tests).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The time to pass as `$1` to `now_ms`: `None` lets the database decide.
    fn now(&self) -> Option<i64> {
        self.clock.as_ref().map(|clock| clock.now_ms())
    }

    async fn client(&self) -> StoreResult<Object> {
        self.pool.get().await.map_err(|error| {
            StoreError::Database(
                self.connect
                    .redact(&sluice_postgres::pool_error_chain(&error)),
            )
        })
    }

    async fn send(&self, request: commit::Request) -> StoreResult<()> {
        self.commits
            .send(request)
            .await
            .map_err(|_| committer_stopped())
    }

    fn db_error(&self, error: tokio_postgres::Error) -> StoreError {
        self.db_error_ref(&error)
    }

    fn db_error_ref(&self, error: &tokio_postgres::Error) -> StoreError {
        StoreError::Database(self.connect.describe_error(error))
    }
}

/// Names a fetch asked for, as bound (`None`: all).
type NameList = Option<Vec<String>>;

/// The arrays `import_instances` binds.
#[derive(Default)]
struct ImportColumns<'a> {
    ids: Vec<&'a str>,
    names: Vec<&'a str>,
    statuses: Vec<&'a str>,
    executions: Vec<i64>,
    inputs: Vec<&'a str>,
    outputs: Vec<Option<&'a str>>,
    failures: Vec<Option<&'a str>>,
    custom_statuses: Vec<Option<&'a str>>,
    history_lens: Vec<i64>,
    created: Vec<i64>,
    updated: Vec<i64>,
    due: Vec<Option<i64>>,
    h_ids: Vec<&'a str>,
    h_executions: Vec<i64>,
    h_positions: Vec<i64>,
    h_events: Vec<&'a str>,
    m_ids: Vec<&'a str>,
    m_visible: Vec<i64>,
    m_messages: Vec<&'a str>,
    a_ids: Vec<&'a str>,
    a_executions: Vec<i64>,
    a_activity_ids: Vec<i64>,
    a_names: Vec<&'a str>,
    a_inputs: Vec<&'a str>,
    a_retries: Vec<Option<&'a str>>,
    a_attempts: Vec<i32>,
    a_visible: Vec<i64>,
    a_queues: Vec<Option<&'a str>>,
}

impl<'a> ImportColumns<'a> {
    fn add(&mut self, instance: &'a ExportedInstance) {
        let id = instance.instance_id.as_str();
        let history_len = instance
            .history
            .iter()
            .filter(|(execution, _, _)| *execution == instance.execution_id)
            .count();
        // Due at its first message unless it waits for nothing (see `schema.rs`).
        let waits = InstanceStatus::parse(&instance.status)
            .is_some_and(|status| !status.is_terminal() && status != InstanceStatus::Quarantined);
        let due = instance
            .inbox
            .iter()
            .map(|message| message.visible_at_ms)
            .min()
            .filter(|_| waits);
        self.ids.push(id);
        self.names.push(&instance.name);
        self.statuses.push(&instance.status);
        self.executions.push(to_i64(instance.execution_id));
        self.inputs.push(&instance.input);
        self.outputs.push(instance.output.as_deref());
        self.failures.push(instance.failure.as_deref());
        self.custom_statuses.push(instance.custom_status.as_deref());
        self.history_lens
            .push(i64::try_from(history_len).unwrap_or(i64::MAX));
        self.created.push(instance.created_at_ms);
        self.updated.push(instance.updated_at_ms);
        self.due.push(due);
        for (execution, position, event) in &instance.history {
            self.h_ids.push(id);
            self.h_executions.push(to_i64(*execution));
            self.h_positions.push(to_i64(*position));
            self.h_events.push(event);
        }
        for message in &instance.inbox {
            self.m_ids.push(id);
            self.m_visible.push(message.visible_at_ms);
            self.m_messages.push(&message.message);
        }
        for activity in &instance.activities {
            self.a_ids.push(id);
            self.a_executions.push(to_i64(activity.execution_id));
            self.a_activity_ids.push(to_i64(activity.activity_id));
            self.a_names.push(&activity.name);
            self.a_inputs.push(&activity.input);
            self.a_retries.push(activity.retry.as_deref());
            self.a_attempts
                .push(i32::try_from(activity.attempt).unwrap_or(i32::MAX));
            self.a_visible.push(activity.visible_at_ms);
            self.a_queues.push(activity.task_queue.as_deref());
        }
    }
}

/// How often a store folds the instance count deltas into the counts, in milliseconds.
pub(crate) const COUNTS_FOLD_INTERVAL_MS: u64 = 5_000;

/// Folds the count deltas every [`COUNTS_FOLD_INTERVAL_MS`], so that they stay few however long
/// nobody reads the counts. Every process does; concurrent folds are safe (each moves the
/// deltas it deletes, and a row deleted by one is skipped by the others).
async fn fold_counts(pool: Pool, sql: String) {
    let mut tick = tokio::time::interval(Duration::from_millis(COUNTS_FOLD_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Ok(client) = pool.get().await else {
            continue;
        };
        if let Err(error) = client.execute(&sql, &[]).await {
            tracing::debug!(%error, "folding the instance count deltas failed");
        }
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn committer_stopped() -> StoreError {
    StoreError::Database("the store's committer has stopped".into())
}

/// Runs `INSERT ... SELECT` of a message to an unfinished instance; whether it was delivered.
pub(crate) async fn insert_if_live(
    client: &impl GenericClient,
    sql: &Sql,
    now: Option<i64>,
    instance_id: &str,
    message: &Message,
) -> Result<bool, tokio_postgres::Error> {
    let statement = prepared(client, &sql.insert_message_if_live).await?;
    let inserted = client
        .execute(&statement, &[&now, &instance_id, &encode(message)])
        .await?;
    Ok(inserted == 1)
}

/// A statement prepared once per connection (the pool's connections keep a cache), so the
/// server parses and plans it once and each use is one message.
pub(crate) async fn prepared(
    client: &impl GenericClient,
    sql: &str,
) -> Result<tokio_postgres::Statement, tokio_postgres::Error> {
    client.prepare_cached(sql).await
}

impl PostgresStore {
    async fn unlock_turn(
        &self,
        instance_id: &str,
        lock_token: u64,
        delay: Duration,
        uncount: bool,
    ) -> StoreResult<()> {
        let client = self.client().await?;
        let row = client
            .query_one(
                &prepared(&client, &self.sql.unlock_turn)
                    .await
                    .map_err(|error| self.db_error(error))?,
                &[
                    &self.now(),
                    &to_i64(lock_token),
                    &instance_id,
                    &duration_ms(delay),
                    &uncount,
                ],
            )
            .await
            .map_err(|error| self.db_error(error))?;
        let unlocked: i64 = row.get(0);
        if unlocked == 0 {
            return Err(self.lease_lost("instance"));
        }
        self.wake_orchestrations();
        Ok(())
    }

    async fn unlock_activity(
        &self,
        item_id: u64,
        lock_token: u64,
        delay: Duration,
        uncount: bool,
    ) -> StoreResult<()> {
        let client = self.client().await?;
        let updated = client
            .execute(
                &prepared(&client, &self.sql.unlock_activity)
                    .await
                    .map_err(|error| self.db_error(error))?,
                &[
                    &self.now(),
                    &to_i64(lock_token),
                    &to_i64(item_id),
                    &duration_ms(delay),
                    &uncount,
                ],
            )
            .await
            .map_err(|error| self.db_error(error))?;
        if updated == 0 {
            return Err(self.lease_lost("activity"));
        }
        self.wake_activities();
        Ok(())
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn signals(&self) -> &Arc<Signals> {
        &self.signals
    }

    async fn create_instance(&self, start: NewInstance) -> StoreResult<bool> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send(commit::Request::Create {
            start,
            now: self.now(),
            reply,
        })
        .await?;
        let created = answer.await.map_err(|_| committer_stopped())??;
        if created {
            self.wake_orchestrations();
        }
        Ok(created)
    }

    async fn enqueue_message(
        &self,
        instance_id: &str,
        message: Message,
        start_if_missing: Option<NewInstance>,
    ) -> StoreResult<()> {
        let now = self.now();
        let e = |error| self.db_error(error);
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(e)?;
        if let Some(start) = &start_if_missing {
            transaction
                .query_opt(
                    &prepared(&transaction, &self.sql.create_instance)
                        .await
                        .map_err(|error| self.db_error(error))?,
                    &[
                        &now,
                        &start.instance_id,
                        &start.name,
                        &start.input,
                        &encode(&start.start_message()),
                        &start
                            .parent
                            .as_ref()
                            .map(|parent| parent.instance_id.as_str()),
                    ],
                )
                .await
                .map_err(e)?;
        }
        // Locked, so a finishing commit cannot slip in between the check and the insert; FOR
        // UPDATE, not FOR SHARE: the insert then updates the row (`due_at_ms`), and two
        // senders holding shared locks would deadlock upgrading them.
        let status: Option<String> = transaction
            .query_opt(
                &format!("{} FOR UPDATE", self.sql.instance_status),
                &[&instance_id],
            )
            .await
            .map_err(e)?
            .map(|row| row.get(0));
        match status.as_deref().map(parse_status).transpose()? {
            None => return Err(StoreError::InstanceNotFound(instance_id.to_string())),
            Some(status) if status.is_terminal() => {
                return Err(StoreError::InstanceFinished {
                    instance_id: instance_id.to_string(),
                    status: status.as_str(),
                });
            }
            Some(_) => {
                insert_if_live(&transaction, &self.sql, now, instance_id, &message)
                    .await
                    .map_err(e)?;
            }
        }
        transaction.commit().await.map_err(e)?;
        self.wake_orchestrations();
        Ok(())
    }

    async fn fetch_turns_named(
        &self,
        max: usize,
        lease: Duration,
        also: &[String],
        names: &Names,
    ) -> StoreResult<Vec<LockedTurn>> {
        let names = names.as_slice().map(<[String]>::to_vec);
        *lock(&self.fetched_turn_names) = names.clone();
        let client = self.client().await?;
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let now = self.now();
        let lease_ms = duration_ms(lease);
        // Pipelined: the time is read by the statement sent first, so it is no later than the
        // fetch's own (`next_wake_at` counts from it).
        let now_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&now];
        let fetch_params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
            [&now, &max, &also, &lease_ms, &names];
        let e = |error| self.db_error(error);
        let clock = prepared(&client, &self.sql.now).await.map_err(e)?;
        let fetch = prepared(&client, &self.sql.fetch_turns).await.map_err(e)?;
        let (started, rows) = tokio::try_join!(
            client.query_one(&clock, &now_params),
            client.query(&fetch, &fetch_params),
        )
        .map_err(|error| self.db_error(error))?;
        self.fetched_turns_at
            .store(started.get(0), std::sync::atomic::Ordering::SeqCst);
        let mut turns: Vec<LockedTurn> = Vec::new();
        for row in rows {
            let instance_id: String = row.get(0);
            if turns
                .last()
                .is_none_or(|turn| turn.instance_id != instance_id)
            {
                let status: String = row.get(2);
                let (status, unreadable) = match parse_status(&status) {
                    Ok(status) => (status, None),
                    Err(error) => (
                        InstanceStatus::Running,
                        Some(format!("instance '{instance_id}': {error}")),
                    ),
                };
                turns.push(LockedTurn {
                    instance_id: instance_id.clone(),
                    name: row.get(1),
                    status,
                    execution_id: to_u64(row.get(3)),
                    history_len: to_u64(row.get(4)),
                    lock_token: to_u64(row.get(5)),
                    messages: Vec::new(),
                    delivery: u32::try_from(row.get::<_, i32>(6)).unwrap_or(1).max(1),
                    unreadable,
                });
            }
            let turn = turns.last_mut().expect("pushed above");
            let Some(message_id) = row.get::<_, Option<i64>>(7) else {
                continue;
            };
            let text: String = row.get(8);
            let named = || format!("inbox message {message_id} of instance '{instance_id}'");
            match decode::<Message>(&text, named) {
                Ok(message) => turn.messages.push((to_u64(message_id), message)),
                Err(error) => {
                    turn.unreadable.get_or_insert_with(|| error.to_string());
                }
            }
        }
        Ok(turns)
    }

    async fn read_history(
        &self,
        instance_id: &str,
        execution_id: u64,
        from: u64,
    ) -> StoreResult<Vec<Event>> {
        self.history_range(instance_id, execution_id, from, None)
            .await
    }

    async fn read_history_page(
        &self,
        instance_id: &str,
        execution_id: u64,
        from: u64,
        max: usize,
    ) -> StoreResult<Vec<Event>> {
        self.history_range(instance_id, execution_id, from, Some(max))
            .await
    }

    async fn commit_turn(&self, commit: TurnCommit) -> StoreResult<Vec<ActivityWorkItem>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let instance_id = commit.instance_id.clone();
        self.send(commit::Request::Turn {
            commit: Box::new(commit),
            now: self.now(),
            reply,
        })
        .await?;
        let effects = match answer.await.map_err(|_| committer_stopped())? {
            Err(StoreError::LeaseLost(what)) => return Err(self.lease_lost(what)),
            other => other?,
        };
        if effects.inbox_changed {
            self.wake_orchestrations();
        }
        if effects.activities_added {
            self.wake_activities();
        }
        if effects.finished {
            self.wake_finished(&instance_id);
        }
        Ok(effects.claimed)
    }

    async fn abandon_turn(
        &self,
        instance_id: &str,
        lock_token: u64,
        delay: Duration,
    ) -> StoreResult<()> {
        self.unlock_turn(instance_id, lock_token, delay, false)
            .await
    }

    async fn release_turn(
        &self,
        instance_id: &str,
        lock_token: u64,
        delay: Duration,
    ) -> StoreResult<()> {
        self.unlock_turn(instance_id, lock_token, delay, true).await
    }

    async fn renew_turn_lease(
        &self,
        instance_id: &str,
        lock_token: u64,
        lease: Duration,
    ) -> StoreResult<()> {
        let client = self.client().await?;
        let renewed = client
            .execute(
                &prepared(&client, &self.sql.renew_turn)
                    .await
                    .map_err(|error| self.db_error(error))?,
                &[
                    &self.now(),
                    &to_i64(lock_token),
                    &instance_id,
                    &duration_ms(lease),
                ],
            )
            .await
            .map_err(|error| self.db_error(error))?;
        if renewed == 0 {
            return Err(self.lease_lost("instance"));
        }
        Ok(())
    }

    async fn quarantine_turn(
        &self,
        instance_id: &str,
        lock_token: u64,
        reason: Failure,
    ) -> StoreResult<()> {
        let db = |error| self.db_error(error);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let s = self.sql.schema.as_str();
        let holder = Some(to_i64(lock_token));
        operator::quarantine(&tx, s, self.now(), instance_id, holder, &reason, &db).await?;
        tx.commit().await.map_err(db)
    }

    async fn quarantine_activity(
        &self,
        item_id: u64,
        lock_token: u64,
        reason: Failure,
    ) -> StoreResult<()> {
        let db = |error| self.db_error(error);
        let now = self.now();
        let (item, token) = (to_i64(item_id), to_i64(lock_token));
        let s = self.sql.schema.as_str();
        let held = format!("item_id = $1 AND lock_token = $2 AND visible_at_ms > {s}.now_ms($3)");
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        // The instance row is locked before the item's, in the order a turn's commit takes them.
        let Some(row) = tx
            .query_opt(
                &format!("SELECT instance_id FROM {s}.activities WHERE {held}"),
                &[&item, &token, &now],
            )
            .await
            .map_err(db)?
        else {
            return Err(self.lease_lost("activity"));
        };
        let instance_id: String = row.get(0);
        operator::quarantine(&tx, s, now, &instance_id, None, &reason, &db).await?;
        // Given back uncounted: this delivery did not run the code.
        let given_back = tx
            .execute(
                &format!(
                    "UPDATE {s}.activities SET visible_at_ms = {s}.now_ms($3), lock_token = NULL,
                         attempt = GREATEST(attempt - 1, 0)
                     WHERE {held}"
                ),
                &[&item, &token, &now],
            )
            .await
            .map_err(db)?;
        if given_back == 0 {
            return Err(self.lease_lost("activity"));
        }
        tx.commit().await.map_err(db)
    }

    async fn fetch_activities_named(
        &self,
        max: usize,
        lease: Duration,
        names: &Names,
        queues: &Names,
    ) -> StoreResult<Vec<ActivityWorkItem>> {
        let names = names.as_slice().map(<[String]>::to_vec);
        let queues = queues.as_slice().map(<[String]>::to_vec);
        *lock(&self.fetched_activity_names) = (names.clone(), queues.clone());
        let client = self.client().await?;
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let now = self.now();
        let lease_ms = duration_ms(lease);
        let now_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&now];
        let fetch_params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
            [&now, &max, &lease_ms, &names, &queues];
        let e = |error| self.db_error(error);
        let clock = prepared(&client, &self.sql.now).await.map_err(e)?;
        let fetch = prepared(&client, &self.sql.fetch_activities)
            .await
            .map_err(e)?;
        let (started, rows) = tokio::try_join!(
            client.query_one(&clock, &now_params),
            client.query(&fetch, &fetch_params),
        )
        .map_err(|error| self.db_error(error))?;
        self.fetched_activities_at
            .store(started.get(0), std::sync::atomic::Ordering::SeqCst);
        let mut items = Vec::with_capacity(rows.len());
        let mut finished = Vec::new();
        let mut token = 0;
        for row in rows {
            let item_id: i64 = row.get(0);
            token = row.get(1);
            let status: Option<String> = row.get(9);
            // Work of a finished (or vanished) instance can no longer matter: deleted, not run.
            if status
                .as_deref()
                .is_none_or(|s| InstanceStatus::parse(s).is_some_and(InstanceStatus::is_terminal))
            {
                finished.push(item_id);
                continue;
            }
            let retry: Option<String> = row.get(8);
            let (retry, unreadable) = match retry
                .as_deref()
                .map(|text| {
                    decode(text, || {
                        format!("retry policy of activity work item {item_id}")
                    })
                })
                .transpose()
            {
                Ok(retry) => (retry, None),
                Err(error) => (None, Some(error.to_string())),
            };
            let attempt: i32 = row.get(2);
            items.push(ActivityWorkItem {
                item_id: to_u64(item_id),
                lock_token: to_u64(token),
                attempt: u32::try_from(attempt).unwrap_or(0),
                activity: NewActivity {
                    instance_id: row.get(3),
                    execution_id: to_u64(row.get(4)),
                    activity_id: to_u64(row.get(5)),
                    name: row.get(6),
                    input: row.get(7),
                    retry,
                    task_queue: row.get(11),
                },
                unreadable,
                orchestration: row.get(10),
            });
        }
        if !finished.is_empty() {
            client
                .execute(
                    &prepared(&client, &self.sql.delete_items)
                        .await
                        .map_err(|error| self.db_error(error))?,
                    &[&finished, &token],
                )
                .await
                .map_err(|error| self.db_error(error))?;
        }
        items.sort_by_key(|item| item.item_id);
        Ok(items)
    }

    async fn renew_activity_lease(
        &self,
        item_id: u64,
        lock_token: u64,
        lease: Duration,
    ) -> StoreResult<bool> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &prepared(&client, &self.sql.renew_activity)
                    .await
                    .map_err(|error| self.db_error(error))?,
                &[
                    &self.now(),
                    &to_i64(lock_token),
                    &to_i64(item_id),
                    &duration_ms(lease),
                ],
            )
            .await
            .map_err(|error| self.db_error(error))?;
        let Some(row) = row else {
            return Err(self.lease_lost("activity"));
        };
        let status: Option<String> = row.get(0);
        Ok(status
            .as_deref()
            .map(parse_status)
            .transpose()?
            .is_some_and(|status| !status.is_terminal()))
    }

    async fn complete_activity(
        &self,
        item_id: u64,
        lock_token: u64,
        result: ActivityResult,
    ) -> StoreResult<()> {
        let now = self.now();
        let e = |error| self.db_error(error);
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(e)?;
        let row = transaction
            .query_opt(
                &prepared(&transaction, &self.sql.complete_activity)
                    .await
                    .map_err(|error| self.db_error(error))?,
                &[&now, &to_i64(lock_token), &to_i64(item_id)],
            )
            .await
            .map_err(e)?;
        let Some(row) = row else {
            return Err(self.lease_lost("activity"));
        };
        let instance_id: String = row.get(0);
        let (execution_id, id) = (to_u64(row.get(1)), to_u64(row.get(2)));
        let message = match result {
            ActivityResult::Completed(output) => Message::ActivityCompleted {
                execution_id,
                id,
                output,
            },
            ActivityResult::Failed(failure) => Message::ActivityFailed {
                execution_id,
                id,
                failure,
            },
        };
        let delivered = insert_if_live(&transaction, &self.sql, now, &instance_id, &message)
            .await
            .map_err(e)?;
        transaction.commit().await.map_err(e)?;
        if delivered {
            self.wake_orchestrations();
        }
        Ok(())
    }

    async fn retry_activity(
        &self,
        item_id: u64,
        lock_token: u64,
        delay: Duration,
    ) -> StoreResult<()> {
        self.unlock_activity(item_id, lock_token, delay, false)
            .await
    }

    async fn release_activity(
        &self,
        item_id: u64,
        lock_token: u64,
        delay: Duration,
    ) -> StoreResult<()> {
        self.unlock_activity(item_id, lock_token, delay, true).await
    }

    async fn instance(&self, instance_id: &str) -> StoreResult<Option<InstanceInfo>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.lookups
            .send(read::Lookup {
                instance_id: instance_id.to_string(),
                reply,
            })
            .await
            .map_err(|_| committer_stopped())?;
        answer.await.map_err(|_| committer_stopped())?
    }

    async fn next_wake_at(&self, work: Work) -> StoreResult<Option<TimestampMs>> {
        let client = self.client().await?;
        let row = match work {
            Work::Turns => {
                let since = self
                    .fetched_turns_at
                    .load(std::sync::atomic::Ordering::SeqCst);
                let names = lock(&self.fetched_turn_names).clone();
                client
                    .query_one(
                        &prepared(&client, &self.sql.next_wake_turns)
                            .await
                            .map_err(|error| self.db_error(error))?,
                        &[&since, &names],
                    )
                    .await
            }
            Work::Activities => {
                let since = self
                    .fetched_activities_at
                    .load(std::sync::atomic::Ordering::SeqCst);
                let (names, queues) = lock(&self.fetched_activity_names).clone();
                client
                    .query_one(
                        &prepared(&client, &self.sql.next_wake_activities)
                            .await
                            .map_err(|error| self.db_error(error))?,
                        &[&since, &names, &queues],
                    )
                    .await
            }
        }
        .map_err(|error| self.db_error(error))?;
        Ok(row.get(0))
    }

    async fn terminate_instance(
        &self,
        request: &OperatorRequest,
        children: ChildPolicy,
    ) -> StoreResult<Vec<String>> {
        let db = |error| self.db_error(error);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let acted = operator::terminate(&tx, &self.sql, self.now(), request, children, &db).await?;
        tx.commit().await.map_err(db)?;
        for id in &acted.finished {
            self.wake_finished(id);
        }
        if acted.inbox_changed {
            self.wake_orchestrations();
        }
        Ok(acted.finished)
    }

    async fn suspend_instance(&self, request: &OperatorRequest) -> StoreResult<bool> {
        let db = |error| self.db_error(error);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let suspended = operator::suspend(&tx, &self.sql, self.now(), request, &db).await?;
        tx.commit().await.map_err(db)?;
        Ok(suspended)
    }

    async fn resume_instance(&self, request: &OperatorRequest) -> StoreResult<bool> {
        let db = |error| self.db_error(error);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let resumed = operator::resume(&tx, &self.sql, self.now(), request, &db).await?;
        tx.commit().await.map_err(db)?;
        if resumed {
            self.wake_orchestrations();
        }
        Ok(resumed)
    }

    async fn retry_instance(&self, request: &OperatorRequest) -> StoreResult<bool> {
        let db = |error| self.db_error(error);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let retried = operator::retry(&tx, &self.sql, self.now(), request, &db).await?;
        tx.commit().await.map_err(db)?;
        if retried {
            self.wake_orchestrations();
        }
        Ok(retried)
    }

    async fn discard_instance(&self, request: &OperatorRequest) -> StoreResult<()> {
        let db = |error| self.db_error(error);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        operator::discard(&tx, &self.sql, self.now(), request, &db).await?;
        tx.commit().await.map_err(db)?;
        self.wake_finished(&request.instance_id);
        Ok(())
    }

    async fn restart_instance(
        &self,
        request: &OperatorRequest,
        as_instance: Option<&str>,
        input: Option<&str>,
    ) -> StoreResult<(String, u64)> {
        let db = |error| self.db_error(error);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let restarted =
            operator::restart(&tx, &self.sql, self.now(), request, as_instance, input, &db).await?;
        tx.commit().await.map_err(db)?;
        self.wake_orchestrations();
        Ok(restarted)
    }

    async fn rewind_instance(&self, request: &OperatorRequest) -> StoreResult<(u64, Vec<String>)> {
        let db = |error| self.db_error(error);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let rewound = operator::rewind(&tx, &self.sql, self.now(), request, &db).await?;
        tx.commit().await.map_err(db)?;
        self.wake_orchestrations();
        self.wake_activities();
        Ok(rewound)
    }

    async fn purge_instance(&self, instance_id: &str) -> StoreResult<Vec<String>> {
        let db = |error| self.db_error(error);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let removed = operator::purge_instance(&tx, &self.sql, instance_id, &db).await?;
        tx.commit().await.map_err(db)?;
        Ok(removed)
    }

    async fn count_purgeable(&self, filter: &PurgeFilter) -> StoreResult<u64> {
        let s = &self.sql.schema;
        let statuses: Vec<&str> = filter
            .final_statuses()
            .iter()
            .map(|status| status.as_str())
            .collect();
        let client = self.client().await?;
        let row = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {s}.instances WHERE status = ANY($1)
                     AND updated_at_ms < $2 AND finished_at_ms < $2
                     AND ($3::text IS NULL OR name = $3)"
                ),
                &[&statuses, &filter.finished_before_ms, &filter.name],
            )
            .await
            .map_err(|error| self.db_error(error))?;
        Ok(to_u64(row.get(0)))
    }

    async fn purge_batch(&self, filter: &PurgeFilter, max: usize) -> StoreResult<usize> {
        let s = &self.sql.schema;
        // One range of `instances_status_updated` per status, merged, earliest finished first
        // (a finished instance's last update is its finish).
        let arms: Vec<String> = filter
            .final_statuses()
            .iter()
            .map(|status| {
                format!(
                    "(SELECT updated_at_ms, instance_id FROM {s}.instances
                      WHERE status = '{}' AND updated_at_ms < $1 AND finished_at_ms < $1
                        AND ($2::text IS NULL OR name = $2)
                      ORDER BY updated_at_ms LIMIT $3)",
                    status.as_str()
                )
            })
            .collect();
        if arms.is_empty() {
            return Ok(0);
        }
        // Rows another purge (another process's retention) holds are skipped, not waited on.
        let picked = format!(
            "SELECT instance_id FROM {s}.instances WHERE instance_id IN
               (SELECT instance_id FROM ({}) AS arms ORDER BY updated_at_ms LIMIT $3)
             FOR UPDATE SKIP LOCKED",
            arms.join(" UNION ALL ")
        );
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let row = client
            .query_one(
                &operator::delete_sql(s, &picked),
                &[&filter.finished_before_ms, &filter.name, &limit],
            )
            .await
            .map_err(|error| self.db_error(error))?;
        Ok(usize::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    async fn count_instances(&self, filter: &sluice_store::InstanceFilter) -> StoreResult<u64> {
        let counting = sluice_store::listing::count_sql(
            filter,
            &format!("{}.instances", self.sql.schema),
            &PG_DIALECT,
        );
        let params = pg_params(counting.params);
        let client = self.client().await?;
        let row = client
            .query_one(&counting.sql, &param_refs(&params))
            .await
            .map_err(|error| self.db_error(error))?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    async fn list_instances(&self, query: &InstanceQuery) -> StoreResult<InstancePage> {
        if query.limit() == 0 {
            return Ok(InstancePage::default());
        }
        let table = format!("{}.instances", self.sql.schema);
        let client = self.client().await?;
        let plan = match sluice_store::listing::prefix_probe_sql(query, &table, &PG_DIALECT) {
            None => sluice_store::listing::PrefixPlan::Walk,
            Some(probe) => {
                let params = pg_params(probe.params);
                let row = client
                    .query_one(&probe.sql, &param_refs(&params))
                    .await
                    .map_err(|error| self.db_error(error))?;
                sluice_store::listing::PrefixPlan::from_probe(row.get(0), row.get(1))
            }
        };
        let listing = sluice_store::listing::planned_listing_sql(query, &table, &PG_DIALECT, plan);
        let params = pg_params(listing.params);
        let rows = client
            .query(&listing.sql, &param_refs(&params))
            .await
            .map_err(|error| self.db_error(error))?;
        let instances = rows
            .iter()
            .map(read::summary)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(sluice_store::listing::into_page(query, instances))
    }

    async fn instance_counts(&self) -> StoreResult<Vec<InstanceCount>> {
        let client = self.client().await?;
        // Folding the deltas first keeps the read short; it is correct without (the sum covers
        // both tables), so a failed fold only costs time.
        if let Err(error) = client.execute(&self.sql.compact_counts, &[]).await {
            tracing::debug!(error = %self.db_error(error), "folding the instance count deltas failed");
        }
        let rows = client
            .query(
                &prepared(&client, &self.sql.instance_counts)
                    .await
                    .map_err(|error| self.db_error(error))?,
                &[],
            )
            .await
            .map_err(|error| self.db_error(error))?;
        rows.iter()
            .map(|row| {
                let status: String = row.get(0);
                Ok(InstanceCount {
                    status: parse_status(&status)?,
                    name: row.get(1),
                    count: to_u64(row.get(2)),
                })
            })
            .collect()
    }

    async fn executions(&self, instance_id: &str) -> StoreResult<Vec<ExecutionInfo>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &prepared(&client, &self.sql.executions)
                    .await
                    .map_err(|error| self.db_error(error))?,
                &[&instance_id],
            )
            .await
            .map_err(|error| self.db_error(error))?;
        // How each earlier one ended: the last two events of each (a restart or a rewind is
        // recorded after the end).
        let s = &self.sql.schema;
        let tails = if rows.len() > 1 {
            client
                .query(
                    &format!(
                        "SELECT h.execution_id, h.event FROM {s}.executions e JOIN {s}.history h
                           ON h.instance_id = e.instance_id AND h.execution_id = e.execution_id
                          AND h.position >= e.history_len - 2
                         WHERE e.instance_id = $1 ORDER BY h.execution_id, h.position"
                    ),
                    &[&instance_id],
                )
                .await
                .map_err(|error| self.db_error(error))?
        } else {
            Vec::new()
        };
        rows.iter()
            .map(|row| {
                let status: Option<String> = row.get(4);
                let execution_id: i64 = row.get(0);
                Ok(ExecutionInfo {
                    execution_id: to_u64(execution_id),
                    status: match status {
                        None => {
                            let tail: Vec<Event> = tails
                                .iter()
                                .filter(|tail| tail.get::<_, i64>(0) == execution_id)
                                .map(|tail| {
                                    sluice_store::stored::decode(tail.get::<_, &str>(1), || {
                                        format!("the history of instance '{instance_id}'")
                                    })
                                })
                                .collect::<StoreResult<_>>()?;
                            ExecutionStatus::of_ended(&tail)
                        }
                        Some(status) => ExecutionStatus::Current(parse_status(&status)?),
                    },
                    started_at_ms: row.get(1),
                    finished_at_ms: row.get(2),
                    history_len: to_u64(row.get(3)),
                })
            })
            .collect()
    }
}

/// How a listing's SQL is spelled for PostgreSQL.
const PG_DIALECT: sluice_store::listing::Dialect<'static> = sluice_store::listing::Dialect {
    placeholder: &|n| format!("${n}"),
    starts_with: &|column, at| format!("starts_with({column}, {at})"),
    // The database's collation orders the key, not necessarily by code point; the index
    // `instances_id_created` (schema version 3) orders by code point.
    code_point_id: Some(r#"(instance_id COLLATE "C")"#),
};

type BoxedParam = Box<dyn tokio_postgres::types::ToSql + Sync + Send>;

fn pg_params(params: Vec<sluice_store::listing::Param>) -> Vec<BoxedParam> {
    params
        .into_iter()
        .map(|param| -> BoxedParam {
            match param {
                sluice_store::listing::Param::Text(text) => Box::new(text),
                sluice_store::listing::Param::Int(value) => Box::new(value),
            }
        })
        .collect()
}

fn param_refs(params: &[BoxedParam]) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    params
        .iter()
        .map(|param| param.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect()
}
