use crate::schema::{self, MigrateError};
use crate::wake::{self, AbortOnDrop, Announcer, ListenerState};
use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use deadpool_postgres::{Object, Pool};
use sluice_history::{Event, Failure, InstanceStatus, Message, TimestampMs, codes};
use sluice_postgres::{ConnectError, ConnectOptions, PoolOptions};
use sluice_store::{
    ActivityResult, ActivityWorkItem, Clock, InstanceInfo, LockedTurn, NewActivity, NewInstance,
    Outbound, Signals, Store, StoreError, StoreResult, TurnCommit, Work,
};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
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

fn encode<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("history types always serialise")
}

/// Decodes a stored value; `row` names it in the error (the stored text stays out of it).
fn decode<T: serde::de::DeserializeOwned>(
    text: &str,
    row: impl FnOnce() -> String,
) -> StoreResult<T> {
    serde_json::from_str(text)
        .map_err(|error| StoreError::Corrupt(format!("{} cannot be decoded: {error}", row())))
}

fn parse_status(text: &str) -> StoreResult<InstanceStatus> {
    InstanceStatus::parse(text).ok_or_else(|| StoreError::Corrupt(format!("status {text}")))
}

/// The store's statements, with the schema name in place.
struct Sql {
    create_instance: String,
    instance_status: String,
    insert_message: String,
    insert_message_if_live: String,
    fetch_turns: String,
    read_history: String,
    lock_for_commit: String,
    insert_history: String,
    delete_consumed: String,
    insert_activities: String,
    delete_completed: String,
    insert_timers: String,
    insert_child_with_start: String,
    update_instance: String,
    delete_unheld_activities: String,
    delete_future_messages: String,
    has_visible: String,
    unlock_turn: String,
    renew_turn: String,
    quarantine: String,
    fetch_activities: String,
    delete_items: String,
    renew_activity: String,
    complete_activity: String,
    unlock_activity: String,
    instance: String,
    next_wake_turns: String,
    next_wake_activities: String,
    now: String,
    count_by_status: String,
}

impl Sql {
    fn new(s: &str) -> Self {
        let held = "lock_token = $2 AND locked_until_ms > {s}.now_ms($1)";
        let sql = |text: &str| text.replace("{held}", held).replace("{s}", s);
        Sql {
            create_instance: sql(
                "WITH created AS (
                    INSERT INTO {s}.instances (instance_id, name, status, execution_id, input, created_at_ms, updated_at_ms)
                    VALUES ($2, $3, 'pending', 1, $4, {s}.now_ms($1), {s}.now_ms($1))
                    ON CONFLICT (instance_id) DO NOTHING RETURNING instance_id)
                 INSERT INTO {s}.inbox (instance_id, visible_at_ms, message)
                 SELECT instance_id, {s}.now_ms($1), $5 FROM created RETURNING instance_id",
            ),
            instance_status: sql("SELECT status FROM {s}.instances WHERE instance_id = $1"),
            insert_message: sql(
                "INSERT INTO {s}.inbox (instance_id, visible_at_ms, message)
                 VALUES ($2, {s}.now_ms($1), $3)",
            ),
            insert_message_if_live: sql(
                "INSERT INTO {s}.inbox (instance_id, visible_at_ms, message)
                 SELECT $2, {s}.now_ms($1), $3 FROM {s}.instances
                 WHERE instance_id = $2 AND status IN ('pending', 'running', 'quarantined')
                 RETURNING instance_id",
            ),
            // Candidates come from the inbox (small: unconsumed messages only), oldest message
            // first, leaving out locked and quarantined instances before the limit; the
            // instance rows are then locked with SKIP LOCKED (a concurrent fetcher takes
            // others) and their lease conditions checked again on the locked version.
            fetch_turns: sql(
                "WITH token AS (SELECT nextval('{s}.lock_tokens') AS value),
                 wanted AS (
                    SELECT i.instance_id, 0::bigint AS rank FROM {s}.instances i
                    WHERE i.instance_id = ANY($3)
                      AND (i.locked_until_ms IS NULL OR i.locked_until_ms <= {s}.now_ms($1))
                    FOR UPDATE SKIP LOCKED),
                 candidates AS (
                    SELECT m.instance_id, min(m.message_id) AS first FROM {s}.inbox m
                    JOIN {s}.instances j ON j.instance_id = m.instance_id
                    WHERE m.visible_at_ms <= {s}.now_ms($1) AND j.status <> 'quarantined'
                      AND (j.locked_until_ms IS NULL OR j.locked_until_ms <= {s}.now_ms($1))
                      AND NOT (m.instance_id = ANY($3))
                    GROUP BY m.instance_id ORDER BY first LIMIT $2),
                 queued AS (
                    SELECT i.instance_id, c.first AS rank FROM candidates c
                    JOIN {s}.instances i ON i.instance_id = c.instance_id
                    WHERE i.status <> 'quarantined'
                      AND (i.locked_until_ms IS NULL OR i.locked_until_ms <= {s}.now_ms($1))
                    FOR UPDATE OF i SKIP LOCKED),
                 picked AS (
                    SELECT instance_id FROM (SELECT * FROM wanted UNION ALL SELECT * FROM queued) p
                    ORDER BY rank LIMIT $2),
                 locked AS (
                    UPDATE {s}.instances i SET lock_token = token.value,
                        locked_until_ms = {s}.now_ms($1) + $4
                    FROM picked, token WHERE i.instance_id = picked.instance_id
                    RETURNING i.instance_id, i.name, i.status, i.execution_id, i.history_len, i.lock_token),
                 delivered AS (
                    UPDATE {s}.inbox m SET deliveries = m.deliveries + 1 FROM locked
                    WHERE m.instance_id = locked.instance_id AND m.visible_at_ms <= {s}.now_ms($1)
                    RETURNING m.instance_id, m.message_id, m.message, m.deliveries)
                 SELECT l.instance_id, l.name, l.status, l.execution_id, l.history_len, l.lock_token,
                        d.message_id, d.message, d.deliveries
                 FROM locked l LEFT JOIN delivered d ON d.instance_id = l.instance_id
                 ORDER BY l.instance_id, d.message_id",
            ),
            read_history: sql(
                "SELECT position, event FROM {s}.history
                 WHERE instance_id = $1 AND execution_id = $2 AND position >= $3 ORDER BY position",
            ),
            lock_for_commit: sql(
                "SELECT execution_id, history_len,
                        COALESCE(lock_token = $3 AND locked_until_ms > {s}.now_ms($1), false)
                 FROM {s}.instances WHERE instance_id = $2 FOR UPDATE",
            ),
            insert_history: sql(
                "INSERT INTO {s}.history (instance_id, execution_id, position, event)
                 SELECT $1, $2, $3 + ordinality - 1, event FROM unnest($4::text[]) WITH ORDINALITY AS e(event, ordinality)",
            ),
            delete_consumed: sql(
                "DELETE FROM {s}.inbox WHERE instance_id = $1 AND message_id = ANY($2)",
            ),
            insert_activities: sql(
                "INSERT INTO {s}.activities (instance_id, execution_id, activity_id, name, input, retry, visible_at_ms, attempt, lock_token)
                 SELECT $2, $3, a.activity_id, a.name, a.input, a.retry,
                        CASE WHEN a.ordinality <= $8 THEN {s}.now_ms($1) + $9 ELSE {s}.now_ms($1) END,
                        CASE WHEN a.ordinality <= $8 THEN 1 ELSE 0 END,
                        CASE WHEN a.ordinality <= $8 THEN $10::bigint END
                 FROM unnest($4::bigint[], $5::text[], $6::text[], $7::text[]) WITH ORDINALITY
                      AS a(activity_id, name, input, retry, ordinality)
                 RETURNING item_id, activity_id, lock_token IS NOT NULL",
            ),
            delete_completed: sql(
                "DELETE FROM {s}.activities a USING unnest($2::bigint[], $3::bigint[]) AS c(item_id, token)
                 WHERE a.item_id = c.item_id AND a.lock_token = c.token AND a.visible_at_ms > {s}.now_ms($1)",
            ),
            insert_timers: sql(
                "INSERT INTO {s}.inbox (instance_id, visible_at_ms, message)
                 SELECT $1, t.at, t.message FROM unnest($2::bigint[], $3::text[]) AS t(at, message)",
            ),
            // A child's start: created with its start message, or, when the id is taken and
            // the start has a parent, a failure for the parent (if it is alive).
            insert_child_with_start: sql(
                "WITH created AS (
                    INSERT INTO {s}.instances (instance_id, name, status, execution_id, input, created_at_ms, updated_at_ms)
                    VALUES ($2, $3, 'pending', 1, $4, {s}.now_ms($1), {s}.now_ms($1))
                    ON CONFLICT (instance_id) DO NOTHING RETURNING instance_id),
                 started AS (
                    INSERT INTO {s}.inbox (instance_id, visible_at_ms, message)
                    SELECT instance_id, {s}.now_ms($1), $5 FROM created RETURNING instance_id),
                 refused AS (
                    INSERT INTO {s}.inbox (instance_id, visible_at_ms, message)
                    SELECT $6::text, {s}.now_ms($1), $7::text
                    WHERE $6::text IS NOT NULL AND NOT EXISTS (SELECT 1 FROM created)
                      AND EXISTS (SELECT 1 FROM {s}.instances
                                  WHERE instance_id = $6::text AND status IN ('pending', 'running', 'quarantined'))
                    RETURNING instance_id)
                 SELECT instance_id FROM started UNION ALL SELECT instance_id FROM refused",
            ),
            update_instance: sql(
                "UPDATE {s}.instances SET
                    status = COALESCE($3, status),
                    output = COALESCE($4, output),
                    failure = COALESCE($5, failure),
                    custom_status = COALESCE($6, custom_status),
                    execution_id = $7,
                    input = COALESCE($8, input),
                    history_len = $9,
                    locked_until_ms = NULL,
                    updated_at_ms = CASE WHEN status IS DISTINCT FROM COALESCE($3, status)
                        OR $4 IS NOT NULL OR $5 IS NOT NULL
                        OR custom_status IS DISTINCT FROM COALESCE($6, custom_status)
                        OR execution_id <> $7 THEN {s}.now_ms($1) ELSE updated_at_ms END
                 WHERE instance_id = $2",
            ),
            delete_unheld_activities: sql(
                "DELETE FROM {s}.activities WHERE instance_id = $2
                 AND (lock_token IS NULL OR visible_at_ms <= {s}.now_ms($1))",
            ),
            delete_future_messages: sql(
                "DELETE FROM {s}.inbox WHERE instance_id = $2 AND visible_at_ms > {s}.now_ms($1)",
            ),
            has_visible: sql(
                "SELECT EXISTS (SELECT 1 FROM {s}.inbox WHERE instance_id = $2 AND visible_at_ms <= {s}.now_ms($1))",
            ),
            unlock_turn: sql(
                "WITH unlocked AS (
                    UPDATE {s}.instances SET locked_until_ms = NULL
                    WHERE instance_id = $3 AND {held} RETURNING instance_id),
                 moved AS (
                    UPDATE {s}.inbox m SET
                        visible_at_ms = GREATEST(m.visible_at_ms, {s}.now_ms($1) + $4),
                        deliveries = CASE WHEN $5 THEN GREATEST(m.deliveries - 1, 0) ELSE m.deliveries END
                    FROM unlocked WHERE m.instance_id = unlocked.instance_id
                      AND m.visible_at_ms <= {s}.now_ms($1)
                    RETURNING 1)
                 SELECT (SELECT count(*) FROM unlocked), (SELECT count(*) FROM moved)",
            ),
            renew_turn: sql(
                "UPDATE {s}.instances SET locked_until_ms = {s}.now_ms($1) + $4
                 WHERE instance_id = $3 AND {held}",
            ),
            quarantine: sql(
                "UPDATE {s}.instances SET status = 'quarantined', failure = $4,
                    updated_at_ms = {s}.now_ms($1), locked_until_ms = NULL
                 WHERE instance_id = $3 AND {held}",
            ),
            fetch_activities: sql(
                "WITH token AS (SELECT nextval('{s}.lock_tokens') AS value),
                 picked AS (
                    SELECT item_id FROM {s}.activities WHERE visible_at_ms <= {s}.now_ms($1)
                    ORDER BY visible_at_ms, item_id LIMIT $2 FOR UPDATE SKIP LOCKED)
                 UPDATE {s}.activities a SET attempt = a.attempt + 1, lock_token = token.value,
                     visible_at_ms = {s}.now_ms($1) + $3
                 FROM picked, token WHERE a.item_id = picked.item_id
                 RETURNING a.item_id, a.lock_token, a.attempt, a.instance_id, a.execution_id,
                     a.activity_id, a.name, a.input, a.retry,
                     (SELECT i.status FROM {s}.instances i WHERE i.instance_id = a.instance_id)",
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
            instance: sql(
                "SELECT name, status, execution_id, input, output, failure, custom_status,
                        created_at_ms, updated_at_ms
                 FROM {s}.instances WHERE instance_id = $1",
            ),
            next_wake_turns: sql(
                "SELECT LEAST(
                    (SELECT min(visible_at_ms) FROM {s}.inbox WHERE visible_at_ms > $2),
                    (SELECT min(locked_until_ms) FROM {s}.instances WHERE locked_until_ms > {s}.now_ms($1)))",
            ),
            // A work item's lease is its visibility: one minimum covers both.
            next_wake_activities: sql(
                "SELECT min(visible_at_ms) FROM {s}.activities WHERE visible_at_ms > $1",
            ),
            now: sql("SELECT {s}.now_ms($1)"),
            count_by_status: sql(
                "SELECT status, count(*) FROM {s}.instances GROUP BY status ORDER BY status",
            ),
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

    fn db_error(&self, error: tokio_postgres::Error) -> StoreError {
        self.db_error_ref(&error)
    }

    fn db_error_ref(&self, error: &tokio_postgres::Error) -> StoreError {
        StoreError::Database(self.connect.describe_error(error))
    }
}

/// Runs `INSERT ... SELECT` of a message to an unfinished instance; whether it was delivered.
async fn insert_if_live(
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
async fn prepared(
    client: &impl GenericClient,
    sql: &str,
) -> Result<tokio_postgres::Statement, tokio_postgres::Error> {
    client.prepare_cached(sql).await
}

/// What a commit changed, for the wake-ups sent after it.
struct CommitEffects {
    inbox_changed: bool,
    activities_added: bool,
    finished: bool,
    claimed: Vec<ActivityWorkItem>,
}

impl PostgresStore {
    /// One turn commit in one transaction: `BEGIN`, every statement pipelined (sent without
    /// waiting for the answers, in order, on one connection), `COMMIT`: three round trips
    /// whatever the turn holds. The lease check is the first statement; when it fails, or any
    /// statement does, the transaction is rolled back, so nothing of a refused commit remains.
    async fn commit_turn_in(&self, commit: &TurnCommit) -> StoreResult<CommitEffects> {
        let now = self.now();
        let sql = &self.sql;
        let e = |error| self.db_error(error);
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(e)?;
        let tx = &transaction;
        let id = commit.instance_id.as_str();
        let token = to_i64(commit.lock_token);
        let execution_id = to_i64(commit.execution_id);
        let history_from = to_i64(commit.history_from);
        let appended = i64::try_from(commit.append.len()).unwrap_or(i64::MAX);

        // Everything a statement binds, owned here so that the pipelined futures can borrow it.
        let events: Vec<String> = commit.append.iter().map(encode).collect();
        let consumed: Vec<i64> = commit.consumed.iter().map(|id| to_i64(*id)).collect();
        let (claim_max, claim_lease_ms) = commit
            .claim_activities
            .map_or((0, 0), |(max, lease)| (max, duration_ms(lease)));
        let claim_max = i64::try_from(claim_max).unwrap_or(i64::MAX);
        let activity_ids: Vec<i64> = commit
            .activities
            .iter()
            .map(|a| to_i64(a.activity_id))
            .collect();
        let activity_names: Vec<&str> = commit.activities.iter().map(|a| a.name.as_str()).collect();
        let activity_inputs: Vec<&str> =
            commit.activities.iter().map(|a| a.input.as_str()).collect();
        let activity_retries: Vec<Option<String>> = commit
            .activities
            .iter()
            .map(|a| a.retry.as_ref().map(encode))
            .collect();
        let (completed_items, completed_tokens): (Vec<i64>, Vec<i64>) = commit
            .completed_activities
            .iter()
            .map(|(item, token)| (to_i64(*item), to_i64(*token)))
            .unzip();
        let (timer_ats, timer_messages): (Vec<i64>, Vec<String>) = commit
            .timers
            .iter()
            .map(|(at, message)| (*at, encode(message)))
            .unzip();
        // Starts of other instances: (child id, name, input, its start message, the message
        // for the parent if the id is taken).
        let mut starts = Vec::new();
        let mut messages: Vec<(&str, String)> = Vec::new();
        for outbound in &commit.outbound {
            match outbound {
                Outbound::Start(start) => {
                    let taken = start.parent.as_ref().map(|parent| {
                        let message = Message::SubOrchestrationFailed {
                            execution_id: parent.execution_id,
                            id: parent.id,
                            failure: Failure::new(
                                codes::INSTANCE_EXISTS,
                                format!("instance '{}' already exists", start.instance_id),
                            ),
                        };
                        (parent.instance_id.as_str(), encode(&message))
                    });
                    let (parent, refused) = match taken {
                        Some((parent, message)) => (Some(parent), Some(message)),
                        None => (None, None),
                    };
                    starts.push((start, encode(&start.start_message()), parent, refused));
                }
                Outbound::Message {
                    instance_id,
                    message,
                } => messages.push((instance_id.as_str(), encode(message))),
            }
        }
        let mut new_execution = execution_id;
        let mut new_input: Option<&str> = None;
        let mut new_history_len = history_from.saturating_add(appended);
        let restart = commit.continue_as_new.as_ref().map(|start| {
            new_execution += 1;
            new_history_len = 0;
            if let Message::Start { input, .. } = start {
                new_input = Some(input.as_str());
            }
            encode(start)
        });
        let finished = commit.status.is_some_and(InstanceStatus::is_terminal);
        let status = commit.status.map(InstanceStatus::as_str);
        let failure = commit.failure.as_ref().map(encode);

        let lock = prepared(tx, &sql.lock_for_commit).await.map_err(e)?;
        let insert_history = prepared(tx, &sql.insert_history).await.map_err(e)?;
        let delete_consumed = prepared(tx, &sql.delete_consumed).await.map_err(e)?;
        let insert_activities = prepared(tx, &sql.insert_activities).await.map_err(e)?;
        let delete_completed = prepared(tx, &sql.delete_completed).await.map_err(e)?;
        let insert_timers = prepared(tx, &sql.insert_timers).await.map_err(e)?;
        let insert_child = prepared(tx, &sql.insert_child_with_start)
            .await
            .map_err(e)?;
        let message_if_live = prepared(tx, &sql.insert_message_if_live).await.map_err(e)?;
        let insert_message = prepared(tx, &sql.insert_message).await.map_err(e)?;
        let update_instance = prepared(tx, &sql.update_instance).await.map_err(e)?;
        let delete_unheld = prepared(tx, &sql.delete_unheld_activities)
            .await
            .map_err(e)?;
        let delete_future = prepared(tx, &sql.delete_future_messages).await.map_err(e)?;
        let has_visible = prepared(tx, &sql.has_visible).await.map_err(e)?;

        type Rows = Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>;
        type Pending<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Rows> + Send + 'a>>;
        let mut pipeline: Vec<Pending<'_>> = Vec::new();
        // Each statement's future owns its parameter list (the values stay borrowed).
        macro_rules! push {
            ($statement:ident, [$($param:expr),*]) => {{
                let statement = $statement.clone();
                let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![$($param),*];
                pipeline.push(Box::pin(async move { tx.query(&statement, &params).await }));
            }};
        }
        push!(lock, [&now, &id, &token]);
        if !events.is_empty() {
            push!(insert_history, [&id, &execution_id, &history_from, &events]);
        }
        if !consumed.is_empty() {
            push!(delete_consumed, [&id, &consumed]);
        }
        let activities_at = pipeline.len();
        if !activity_ids.is_empty() {
            push!(
                insert_activities,
                [
                    &now,
                    &id,
                    &execution_id,
                    &activity_ids,
                    &activity_names,
                    &activity_inputs,
                    &activity_retries,
                    &claim_max,
                    &claim_lease_ms,
                    &token
                ]
            );
        }
        if !completed_items.is_empty() {
            push!(
                delete_completed,
                [&now, &completed_items, &completed_tokens]
            );
        }
        if !timer_ats.is_empty() {
            push!(insert_timers, [&id, &timer_ats, &timer_messages]);
        }
        let outbound_at = pipeline.len();
        for (start, start_message, parent, refused) in &starts {
            push!(
                insert_child,
                [
                    &now,
                    &start.instance_id,
                    &start.name,
                    &start.input,
                    start_message,
                    parent,
                    refused
                ]
            );
        }
        for (target, message) in &messages {
            push!(message_if_live, [&now, target, message]);
        }
        let outbound_end = pipeline.len();
        if let Some(restart) = &restart {
            push!(insert_message, [&now, &id, restart]);
        }
        push!(
            update_instance,
            [
                &now,
                &id,
                &status,
                &commit.output,
                &failure,
                &commit.custom_status,
                &new_execution,
                &new_input,
                &new_history_len
            ]
        );
        if finished && commit.outstanding_activities {
            // Work that can no longer matter, unless someone holds it: its holder's completion
            // then finds the instance finished.
            push!(delete_unheld, [&now, &id]);
        }
        if finished {
            push!(delete_future, [&now, &id]);
        }
        push!(has_visible, [&now, &id]);
        let results = futures_util::future::join_all(pipeline).await;

        // The lease check decides first: a refused commit is refused whatever else failed.
        let check = match &results[0] {
            Ok(rows) => rows.first(),
            Err(error) => return Err(self.db_error_ref(error)),
        };
        let Some(check) = check else {
            return Err(StoreError::InstanceNotFound(commit.instance_id.clone()));
        };
        let (stored_execution, stored_len, held): (i64, i64, bool) =
            (check.get(0), check.get(1), check.get(2));
        if !held {
            return Err(StoreError::LeaseLost("instance"));
        }
        if stored_execution != execution_id {
            return Err(StoreError::Contract(format!(
                "commit for execution {} but the instance is at execution {stored_execution}",
                commit.execution_id
            )));
        }
        if stored_len != history_from {
            return Err(StoreError::Contract(format!(
                "history append at position {} but the history has {stored_len} events",
                commit.history_from
            )));
        }
        if let Some(Err(error)) = results.iter().find(|result| result.is_err()) {
            return Err(self.db_error_ref(error));
        }
        let rows = |index: usize| results[index].as_ref().map(Vec::as_slice).unwrap_or(&[]);
        let mut claimed = Vec::new();
        if !activity_ids.is_empty() {
            let by_id: HashMap<u64, &NewActivity> = commit
                .activities
                .iter()
                .map(|a| (a.activity_id, a))
                .collect();
            for row in rows(activities_at) {
                let (item_id, activity_id, is_claimed): (i64, i64, bool) =
                    (row.get(0), row.get(1), row.get(2));
                if is_claimed && let Some(activity) = by_id.get(&to_u64(activity_id)) {
                    claimed.push(ActivityWorkItem {
                        item_id: to_u64(item_id),
                        lock_token: commit.lock_token,
                        attempt: 1,
                        activity: (*activity).clone(),
                        unreadable: None,
                    });
                }
            }
            claimed.sort_by_key(|item| item.item_id);
        }
        let delivered = (outbound_at..outbound_end).any(|index| !rows(index).is_empty());
        let pending: bool = rows(results.len() - 1)
            .first()
            .is_some_and(|row| row.get(0));
        transaction.commit().await.map_err(e)?;
        Ok(CommitEffects {
            inbox_changed: !commit.timers.is_empty() || delivered || restart.is_some() || pending,
            activities_added: commit.activities.len() > claimed.len(),
            finished,
            claimed,
        })
    }

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
            return Err(StoreError::LeaseLost("instance"));
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
            return Err(StoreError::LeaseLost("activity"));
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
        let client = self.client().await?;
        let created = client
            .query_opt(
                &prepared(&client, &self.sql.create_instance)
                    .await
                    .map_err(|error| self.db_error(error))?,
                &[
                    &self.now(),
                    &start.instance_id,
                    &start.name,
                    &start.input,
                    &encode(&start.start_message()),
                ],
            )
            .await
            .map_err(|error| self.db_error(error))?
            .is_some();
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
                    ],
                )
                .await
                .map_err(e)?;
        }
        // Locked, so a finishing commit cannot slip in between the check and the insert.
        let status: Option<String> = transaction
            .query_opt(
                &format!("{} FOR SHARE", self.sql.instance_status),
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

    async fn fetch_turns(
        &self,
        max: usize,
        lease: Duration,
        also: &[String],
    ) -> StoreResult<Vec<LockedTurn>> {
        let client = self.client().await?;
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let now = self.now();
        let lease_ms = duration_ms(lease);
        // Pipelined: the time is read by the statement sent first, so it is no later than the
        // fetch's own (`next_wake_at` counts from it).
        let now_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&now];
        let fetch_params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&now, &max, &also, &lease_ms];
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
                    delivery: 1,
                    unreadable,
                });
            }
            let turn = turns.last_mut().expect("pushed above");
            let Some(message_id) = row.get::<_, Option<i64>>(6) else {
                continue;
            };
            let text: String = row.get(7);
            let deliveries: i32 = row.get(8);
            turn.delivery = turn
                .delivery
                .max(u32::try_from(deliveries).unwrap_or(u32::MAX));
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
        let client = self.client().await?;
        let execution = to_i64(execution_id);
        let rows = client
            .query(
                &prepared(&client, &self.sql.read_history)
                    .await
                    .map_err(|error| self.db_error(error))?,
                &[&instance_id, &execution, &to_i64(from)],
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

    async fn commit_turn(&self, commit: TurnCommit) -> StoreResult<Vec<ActivityWorkItem>> {
        let effects = self.commit_turn_in(&commit).await?;
        if effects.inbox_changed {
            self.wake_orchestrations();
        }
        if effects.activities_added {
            self.wake_activities();
        }
        if effects.finished {
            self.wake_finished(&commit.instance_id);
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
            return Err(StoreError::LeaseLost("instance"));
        }
        Ok(())
    }

    async fn quarantine_turn(
        &self,
        instance_id: &str,
        lock_token: u64,
        reason: Failure,
    ) -> StoreResult<()> {
        let client = self.client().await?;
        let updated = client
            .execute(
                &prepared(&client, &self.sql.quarantine)
                    .await
                    .map_err(|error| self.db_error(error))?,
                &[
                    &self.now(),
                    &to_i64(lock_token),
                    &instance_id,
                    &encode(&reason),
                ],
            )
            .await
            .map_err(|error| self.db_error(error))?;
        if updated == 0 {
            return Err(StoreError::LeaseLost("instance"));
        }
        Ok(())
    }

    async fn fetch_activities(
        &self,
        max: usize,
        lease: Duration,
    ) -> StoreResult<Vec<ActivityWorkItem>> {
        let client = self.client().await?;
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let now = self.now();
        let lease_ms = duration_ms(lease);
        let now_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&now];
        let fetch_params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&now, &max, &lease_ms];
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
                },
                unreadable,
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
            return Err(StoreError::LeaseLost("activity"));
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
            return Err(StoreError::LeaseLost("activity"));
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
        let client = self.client().await?;
        let row = client
            .query_opt(
                &prepared(&client, &self.sql.instance)
                    .await
                    .map_err(|error| self.db_error(error))?,
                &[&instance_id],
            )
            .await
            .map_err(|error| self.db_error(error))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let failure: Option<String> = row.get(5);
        let failure = failure
            .as_deref()
            .map(|text| decode::<Failure>(text, || format!("failure of instance '{instance_id}'")))
            .transpose()?;
        let status: String = row.get(1);
        Ok(Some(InstanceInfo {
            instance_id: instance_id.to_string(),
            name: row.get(0),
            status: parse_status(&status)?,
            execution_id: to_u64(row.get(2)),
            input: row.get(3),
            output: row.get(4),
            failure,
            custom_status: row.get(6),
            created_at_ms: row.get(7),
            updated_at_ms: row.get(8),
        }))
    }

    async fn next_wake_at(&self, work: Work) -> StoreResult<Option<TimestampMs>> {
        let client = self.client().await?;
        let now = self.now();
        let row = match work {
            Work::Turns => {
                let since = self
                    .fetched_turns_at
                    .load(std::sync::atomic::Ordering::SeqCst);
                client
                    .query_one(
                        &prepared(&client, &self.sql.next_wake_turns)
                            .await
                            .map_err(|error| self.db_error(error))?,
                        &[&now, &since],
                    )
                    .await
            }
            Work::Activities => {
                let since = self
                    .fetched_activities_at
                    .load(std::sync::atomic::Ordering::SeqCst);
                client
                    .query_one(
                        &prepared(&client, &self.sql.next_wake_activities)
                            .await
                            .map_err(|error| self.db_error(error))?,
                        &[&since],
                    )
                    .await
            }
        }
        .map_err(|error| self.db_error(error))?;
        Ok(row.get(0))
    }

    async fn count_by_status(&self) -> StoreResult<Vec<(InstanceStatus, u64)>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &prepared(&client, &self.sql.count_by_status)
                    .await
                    .map_err(|error| self.db_error(error))?,
                &[],
            )
            .await
            .map_err(|error| self.db_error(error))?;
        rows.iter()
            .map(|row| {
                let status: String = row.get(0);
                let count: i64 = row.get(1);
                Ok((parse_status(&status)?, to_u64(count)))
            })
            .collect()
    }
}
