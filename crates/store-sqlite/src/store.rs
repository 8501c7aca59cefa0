use crate::{operator, purge, schema};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use sluice_history::{Event, Failure, InstanceStatus, Message, TimestampMs, codes};
use sluice_sqlite::{
    GroupCommitWriter, Location, OpenOptions, ReaderPool, SqliteError, Synchronous, WriteError,
};
use sluice_store::stored::{decode, encode, parse_status};
use sluice_store::{
    ActivityResult, ActivityWorkItem, ChildPolicy, Clock, ExecutionInfo, ExecutionStatus,
    ExportedActivity, ExportedInstance, ExportedMessage, InstanceCount, InstanceFilter,
    InstanceInfo, InstancePage, InstanceQuery, InstanceSummary, LockedTurn, Names, NewActivity,
    NewInstance, OperatorRequest, Outbound, PurgeFilter, Signals, Store, StoreError, StoreResult,
    SystemClock, TurnCommit, Work, listing,
};
use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Options of [`SqliteStore::open`].
#[derive(Clone, Debug)]
pub struct SqliteStoreOptions {
    /// File or memory.
    pub location: Location,
    /// Commit durability; `Full` by default.
    pub synchronous: Synchronous,
    /// Requests the writer queue holds before senders wait (back-pressure).
    pub queue_requests_max: usize,
    /// Requests one group transaction runs at most.
    pub batch_requests_max: usize,
    /// Idle reader connections kept open.
    pub readers_idle_max: usize,
    /// Page size of a new database file.
    pub page_size_bytes: u32,
    /// Open the file of a store that another process may be running, as a client: without
    /// its lock, without migrating it (a file at another schema version is refused), and
    /// without handing out work (fetches fail: the leases live in the owner's memory). Reads,
    /// starts and messages work; the owner finds what a client wrote when it next polls.
    pub client_only: bool,
}

impl SqliteStoreOptions {
    /// Defaults for a location: `synchronous=FULL`, a queue of 8,192 requests, batches of at most
    /// 512, four idle readers, 1 KiB pages.
    pub fn new(location: Location) -> Self {
        Self {
            location,
            synchronous: Synchronous::Full,
            queue_requests_max: 8_192,
            batch_requests_max: 512,
            readers_idle_max: 4,
            // Each commit writes every page it touched in full; orchestration rows are small,
            // so 1 KiB pages write a third of what 4 KiB pages do (measured with `sluice bench
            // orchestrations`: 112 KB -> 36 KB per orchestration one at a time).
            page_size_bytes: 1024,
            client_only: false,
        }
    }
}

/// The SQLite implementation of [`Store`].
///
/// A database file belongs to one process at a time: opening takes an exclusive lock on
/// `<file>.lock` (released by the kernel when the process dies), so leases can live in memory.
/// Fetching therefore writes nothing, and after a crash a new process retakes all work at once
/// instead of waiting for leases to expire.
pub struct SqliteStore {
    writer: GroupCommitWriter,
    readers: Option<ReaderPool>,
    signals: Arc<Signals>,
    clock: Arc<dyn Clock>,
    tokens: Arc<TokenSource>,
    leases: Arc<Mutex<Leases>>,
    /// When the last fetch of each kind began (store clock), for `next_wake_at`.
    fetched_turns_at: Arc<AtomicI64>,
    fetched_activities_at: Arc<AtomicI64>,
    /// The names the last fetch of each kind asked for (JSON arrays; `None`: all), for
    /// `next_wake_at`.
    fetched_turn_names: Mutex<Option<String>>,
    fetched_activity_names: Mutex<(Option<String>, Option<String>)>,
    /// Opened with [`SqliteStoreOptions::client_only`]: hands out no work.
    client_only: bool,
    _lock_file: Option<std::fs::File>,
}

/// A lease held in memory: the token that holds it and when it ends.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lease {
    token: i64,
    until_ms: TimestampMs,
}

/// Leases of instances (by id) and activity work items (by item id).
#[derive(Default)]
pub(crate) struct Leases {
    pub(crate) instances: HashMap<String, Lease>,
    pub(crate) activities: HashMap<i64, Lease>,
}

fn holds<K: std::hash::Hash + Eq + ?Sized>(
    map: &HashMap<impl std::borrow::Borrow<K> + std::hash::Hash + Eq, Lease>,
    key: &K,
    token: i64,
    now: TimestampMs,
) -> bool {
    map.get(key)
        .is_some_and(|lease| lease.token == token && lease.until_ms > now)
}

pub(crate) fn is_free<K: std::hash::Hash + Eq + ?Sized>(
    map: &HashMap<impl std::borrow::Borrow<K> + std::hash::Hash + Eq, Lease>,
    key: &K,
    now: TimestampMs,
) -> bool {
    map.get(key).is_none_or(|lease| lease.until_ms <= now)
}

pub(crate) fn lock_leases(leases: &Mutex<Leases>) -> std::sync::MutexGuard<'_, Leases> {
    lock(leases)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Takes the exclusive lock that makes this process the database's only user.
fn lock_database(path: &std::path::Path) -> Result<std::fs::File, SqliteError> {
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|error| {
            SqliteError::InUse(format!("cannot open {}: {error}", lock_path.display()))
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(SqliteError::InUse(format!(
            "{} is in use by another process or store (lock file {})",
            path.display(),
            lock_path.display()
        ))),
        Err(std::fs::TryLockError::Error(error)) => Err(SqliteError::InUse(format!(
            "cannot lock {}: {error}",
            lock_path.display()
        ))),
    }
}

struct TokenSource {
    base: u64,
    counter: AtomicU64,
}

impl TokenSource {
    fn new() -> Self {
        Self {
            base: RandomState::new().hash_one(std::process::id()),
            counter: AtomicU64::new(1),
        }
    }

    /// A fresh lock token, positive so it fits SQLite's signed integers.
    fn next(&self) -> i64 {
        let counter = self.counter.fetch_add(1, Ordering::Relaxed);
        let mixed = self.base ^ counter.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        i64::try_from(mixed >> 1).expect("63 bits fit")
    }
}

fn export_in(
    connection: &Connection,
    after: Option<&str>,
    limit: i64,
) -> rusqlite::Result<Vec<ExportedInstance>> {
    let to_u64 = |value: i64| u64::try_from(value).unwrap_or(0);
    let mut instances = connection
        .prepare_cached(
            "SELECT instance_id, name, status, execution_id, input, output, failure,
                    custom_status, created_at_ms, updated_at_ms
             FROM instances WHERE ?1 IS NULL OR instance_id > ?1
             ORDER BY instance_id LIMIT ?2",
        )?
        .query_map(params![after, limit], |row| {
            Ok(ExportedInstance {
                instance_id: row.get(0)?,
                name: row.get(1)?,
                status: row.get(2)?,
                execution_id: to_u64(row.get(3)?),
                input: row.get(4)?,
                output: row.get(5)?,
                failure: row.get(6)?,
                custom_status: row.get(7)?,
                created_at_ms: row.get(8)?,
                updated_at_ms: row.get(9)?,
                history: Vec::new(),
                inbox: Vec::new(),
                activities: Vec::new(),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for instance in &mut instances {
        let id = &instance.instance_id;
        instance.history = connection
            .prepare_cached(
                "SELECT execution_id, position, event FROM history WHERE instance_id = ?1
                 ORDER BY execution_id, position",
            )?
            .query_map(params![id], |row| {
                Ok((to_u64(row.get(0)?), to_u64(row.get(1)?), row.get(2)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        instance.inbox = connection
            .prepare_cached(
                "SELECT visible_at_ms, message FROM inbox WHERE instance_id = ?1
                 ORDER BY message_id",
            )?
            .query_map(params![id], |row| {
                Ok(ExportedMessage {
                    visible_at_ms: row.get(0)?,
                    message: row.get(1)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        instance.activities = connection
            .prepare_cached(
                "SELECT execution_id, activity_id, name, input, retry, attempt, visible_at_ms,
                        task_queue
                 FROM activities WHERE instance_id = ?1 ORDER BY item_id",
            )?
            .query_map(params![id], |row| {
                Ok(ExportedActivity {
                    execution_id: to_u64(row.get(0)?),
                    activity_id: to_u64(row.get(1)?),
                    name: row.get(2)?,
                    input: row.get(3)?,
                    retry: row.get(4)?,
                    attempt: u32::try_from(row.get::<_, i64>(5)?).unwrap_or(0),
                    visible_at_ms: row.get(6)?,
                    task_queue: row.get(7)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
    }
    Ok(instances)
}

pub(crate) fn db_error(error: rusqlite::Error) -> StoreError {
    StoreError::Database(error.to_string())
}

fn flatten<T>(result: Result<T, WriteError<StoreError>>) -> StoreResult<T> {
    result.map_err(|error| match error {
        WriteError::Job(error) => error,
        other => StoreError::Database(other.to_string()),
    })
}

fn token_of(token: u64) -> i64 {
    i64::try_from(token).unwrap_or(-1)
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl SqliteStore {
    /// Up to `max` instances whose id sorts after `after` (all of them from `None` on), each
    /// with its history, unconsumed messages and activity work items, for moving them to another
    /// store (`sluice store copy`). Delivery counts are not carried over.
    pub async fn export_instances(
        &self,
        after: Option<String>,
        max: usize,
    ) -> StoreResult<Vec<ExportedInstance>> {
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        self.read(move |connection, _now| {
            export_in(connection, after.as_deref(), limit).map_err(db_error)
        })
        .await
    }

    /// Opens (creating if needed) a store with the system clock.
    pub fn open(options: SqliteStoreOptions) -> Result<Self, SqliteError> {
        Self::open_with_clock(options, Arc::new(SystemClock))
    }

    /// Opens a store that reads time from `clock`.
    pub fn open_with_clock(
        options: SqliteStoreOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, SqliteError> {
        let lock_file = match (&options.location, options.client_only) {
            (Location::File(path), false) => Some(lock_database(path)?),
            (Location::File(path), true) if !path.exists() => {
                return Err(SqliteError::Schema(format!(
                    "{} does not exist (a client opens an existing store)",
                    path.display()
                )));
            }
            (Location::File(_), true) => None,
            (Location::Memory, false) => None,
            (Location::Memory, true) => {
                return Err(SqliteError::Schema(
                    "a client-only store needs a file: nobody else can reach memory".into(),
                ));
            }
        };
        let open_options = OpenOptions {
            synchronous: options.synchronous,
            page_size_bytes: options.page_size_bytes,
            ..OpenOptions::new(options.location.clone())
        };
        let writer = GroupCommitWriter::open(
            &open_options,
            options.queue_requests_max,
            options.batch_requests_max,
            if options.client_only {
                schema::check_current
            } else {
                schema::migrate
            },
        )?;
        let readers = match options.location {
            Location::File(_) => Some(ReaderPool::new(open_options, options.readers_idle_max)),
            Location::Memory => None,
        };
        Ok(Self {
            writer,
            readers,
            signals: Arc::new(Signals::default()),
            clock,
            tokens: Arc::new(TokenSource::new()),
            leases: Arc::new(Mutex::new(Leases::default())),
            fetched_turns_at: Arc::new(AtomicI64::new(i64::MIN)),
            fetched_activities_at: Arc::new(AtomicI64::new(i64::MIN)),
            fetched_turn_names: Mutex::new(None),
            fetched_activity_names: Mutex::new((None, None)),
            client_only: options.client_only,
            _lock_file: lock_file,
        })
    }

    /// Releases a turn's lock; its visible messages become visible again after `delay`. With
    /// `uncount`, the delivery the fetch counted on them is taken back (messages that arrived
    /// after the fetch have no count yet and keep it).
    async fn unlock_turn(
        &self,
        instance_id: &str,
        lock_token: u64,
        delay: Duration,
        uncount: bool,
    ) -> StoreResult<()> {
        let instance_id = instance_id.to_string();
        let delay_ms = duration_ms(delay);
        let leases = self.leases.clone();
        self.write(move |connection, now| {
            let mut held = lock_leases(&leases);
            if !holds(&held.instances, instance_id.as_str(), token_of(lock_token), now) {
                return Err(StoreError::LeaseLost("instance"));
            }
            held.instances.remove(instance_id.as_str());
            drop(held);
            if delay_ms > 0 || uncount {
                connection
                    .prepare_cached(
                        "UPDATE inbox SET visible_at_ms = MAX(visible_at_ms, ?2),
                            deliveries = CASE WHEN ?4 THEN MAX(deliveries - 1, 0) ELSE deliveries END
                         WHERE instance_id = ?1 AND visible_at_ms <= ?3",
                    )
                    .and_then(|mut statement| {
                        statement.execute(params![instance_id, now + delay_ms, now, uncount])
                    })
                    .map_err(db_error)?;
            }
            Ok(())
        })
        .await?;
        self.signals.orchestrations.notify_one();
        Ok(())
    }

    /// Releases a work item's lock, invisible for `delay`; with `uncount` the fetch's attempt
    /// is taken back.
    async fn unlock_activity(
        &self,
        item_id: u64,
        lock_token: u64,
        delay: Duration,
        uncount: bool,
    ) -> StoreResult<()> {
        let delay_ms = duration_ms(delay);
        let leases = self.leases.clone();
        self.write(move |connection, now| {
            let item_id = i64::try_from(item_id).unwrap_or(-1);
            if !holds(
                &lock_leases(&leases).activities,
                &item_id,
                token_of(lock_token),
                now,
            ) {
                return Err(StoreError::LeaseLost("activity"));
            }
            connection
                .prepare_cached(
                    "UPDATE activities SET visible_at_ms = ?2,
                        attempt = CASE WHEN ?3 THEN MAX(attempt - 1, 0) ELSE attempt END
                     WHERE item_id = ?1",
                )
                .and_then(|mut statement| {
                    statement.execute(params![item_id, now + delay_ms, uncount])
                })
                .map_err(db_error)?;
            lock_leases(&leases).activities.remove(&item_id);
            Ok(())
        })
        .await?;
        self.signals.activities.notify_one();
        Ok(())
    }

    /// The group-commit writer's counters.
    pub fn writer_stats(&self) -> &sluice_sqlite::WriterStats {
        self.writer.stats()
    }

    async fn write<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Connection, TimestampMs) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let clock = self.clock.clone();
        flatten(
            self.writer
                .write(move |connection| job(connection, clock.now_ms()))
                .await,
        )
    }

    async fn read<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Connection, TimestampMs) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let now = self.clock.now_ms();
        match &self.readers {
            Some(readers) => readers
                .read(move |connection| job(connection, now))
                .await
                .map_err(|error| StoreError::Database(error.to_string()))?,
            None => self.write(job).await,
        }
    }

    fn refuse_work_if_client(&self) -> StoreResult<()> {
        if self.client_only {
            return Err(StoreError::Contract(
                "a client-only SQLite store hands out no work (its owner's process runs it)".into(),
            ));
        }
        Ok(())
    }

    /// An execution's history from `from` on, at most `max` events.
    async fn history_range(
        &self,
        instance_id: &str,
        execution_id: u64,
        from: u64,
        max: Option<usize>,
    ) -> StoreResult<Vec<Event>> {
        let instance_id = instance_id.to_string();
        let execution = i64::try_from(execution_id).unwrap_or(i64::MAX);
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        let limit = max.map_or(-1, |max| i64::try_from(max).unwrap_or(i64::MAX));
        self.read(move |connection, _now| {
            let rows = connection
                .prepare_cached(
                    "SELECT position, event FROM history
                     WHERE instance_id = ?1 AND execution_id = ?2 AND position >= ?3
                     ORDER BY position LIMIT ?4",
                )
                .and_then(|mut statement| {
                    statement
                        .query_map(params![instance_id, execution, from, limit], |row| {
                            Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
                        })?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(db_error)?;
            rows.iter()
                .map(|(position, text)| {
                    decode(text, || {
                        format!(
                            "history event {position} of instance '{instance_id}' execution {execution}"
                        )
                    })
                })
                .collect()
        })
        .await
    }
}

/// The columns of [`listing::COLUMNS`] as read, before decoding.
struct SummaryRow {
    instance_id: String,
    name: String,
    status: String,
    execution_id: i64,
    failure: Option<String>,
    custom_status: Option<String>,
    parent_id: Option<String>,
    created_at_ms: i64,
    started_at_ms: Option<i64>,
    updated_at_ms: i64,
    finished_at_ms: Option<i64>,
}

impl SummaryRow {
    fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(SummaryRow {
            instance_id: row.get(0)?,
            name: row.get(1)?,
            status: row.get(2)?,
            execution_id: row.get(3)?,
            failure: row.get(4)?,
            custom_status: row.get(5)?,
            parent_id: row.get(6)?,
            created_at_ms: row.get(7)?,
            started_at_ms: row.get(8)?,
            updated_at_ms: row.get(9)?,
            finished_at_ms: row.get(10)?,
        })
    }

    fn decode(self) -> StoreResult<InstanceSummary> {
        let instance_id = self.instance_id;
        let failure = self
            .failure
            .as_deref()
            .map(|text| decode::<Failure>(text, || format!("failure of instance '{instance_id}'")))
            .transpose()?;
        Ok(InstanceSummary {
            name: self.name,
            status: parse_status(&self.status)?,
            execution_id: u64::try_from(self.execution_id).unwrap_or(0),
            failure,
            custom_status: self.custom_status,
            parent_id: self.parent_id,
            created_at_ms: self.created_at_ms,
            started_at_ms: self.started_at_ms,
            updated_at_ms: self.updated_at_ms,
            finished_at_ms: self.finished_at_ms,
            instance_id,
        })
    }
}

fn insert_message(
    connection: &Connection,
    instance_id: &str,
    visible_at_ms: TimestampMs,
    message: &Message,
) -> StoreResult<()> {
    connection
        .prepare_cached(
            "INSERT INTO inbox (instance_id, visible_at_ms, message) VALUES (?1, ?2, ?3)",
        )
        .and_then(|mut statement| {
            statement.execute(params![instance_id, visible_at_ms, encode(message)])
        })
        .map_err(db_error)?;
    Ok(())
}

/// Delivers to an existing, unfinished instance; returns whether it was delivered.
pub(crate) fn insert_message_if_live(
    connection: &Connection,
    instance_id: &str,
    visible_at_ms: TimestampMs,
    message: &Message,
) -> StoreResult<bool> {
    let inserted = connection
        .prepare_cached(
            "INSERT INTO inbox (instance_id, visible_at_ms, message)
             SELECT ?1, ?2, ?3 WHERE EXISTS (
                 SELECT 1 FROM instances WHERE instance_id = ?1
                 AND status IN ('pending', 'running', 'quarantined', 'suspended'))",
        )
        .and_then(|mut statement| {
            statement.execute(params![instance_id, visible_at_ms, encode(message)])
        })
        .map_err(db_error)?;
    Ok(inserted == 1)
}

/// Creates the instance row and its start message; returns false if the id exists.
pub(crate) fn insert_instance(
    connection: &Connection,
    start: &NewInstance,
    now: TimestampMs,
) -> StoreResult<bool> {
    let inserted = connection
        .prepare_cached(
            "INSERT INTO instances (instance_id, name, status, execution_id, input, created_at_ms, updated_at_ms, parent_id)
             VALUES (?1, ?2, 'pending', 1, ?3, ?4, ?4, ?5) ON CONFLICT (instance_id) DO NOTHING",
        )
        .and_then(|mut statement| {
            statement.execute(params![
                start.instance_id,
                start.name,
                start.input,
                now,
                start.parent.as_ref().map(|parent| parent.instance_id.as_str())
            ])
        })
        .map_err(db_error)?;
    if inserted == 1 {
        insert_message(connection, &start.instance_id, now, &start.start_message())?;
    }
    Ok(inserted == 1)
}

fn status_of(connection: &Connection, instance_id: &str) -> StoreResult<Option<InstanceStatus>> {
    let text: Option<String> = connection
        .prepare_cached("SELECT status FROM instances WHERE instance_id = ?1")
        .and_then(|mut statement| {
            statement
                .query_row(params![instance_id], |row| row.get(0))
                .optional()
        })
        .map_err(db_error)?;
    text.as_deref().map(parse_status).transpose()
}

/// The number of events in an execution's history: its largest position + 1.
pub(crate) fn history_len_of(
    connection: &Connection,
    instance_id: &str,
    execution_id: i64,
) -> StoreResult<i64> {
    connection
        .prepare_cached(
            "SELECT COALESCE(MAX(position) + 1, 0) FROM history WHERE instance_id = ?1 AND execution_id = ?2",
        )
        .and_then(|mut statement| statement.query_row(params![instance_id, execution_id], |row| row.get(0)))
        .map_err(db_error)
}

/// What a commit changed, for the wake-ups sent after it.
struct CommitEffects {
    inbox_changed: bool,
    activities_added: bool,
    finished: bool,
    claimed: Vec<ActivityWorkItem>,
}

fn commit_turn_in(
    connection: &Connection,
    commit: &TurnCommit,
    now: TimestampMs,
    leases: &Mutex<Leases>,
) -> StoreResult<CommitEffects> {
    let token = token_of(commit.lock_token);
    if !holds(
        &lock_leases(leases).instances,
        commit.instance_id.as_str(),
        token,
        now,
    ) {
        return Err(StoreError::LeaseLost("instance"));
    }
    let row: Option<(i64, String)> = connection
        .prepare_cached("SELECT execution_id, status FROM instances WHERE instance_id = ?1")
        .and_then(|mut statement| {
            statement
                .query_row(params![commit.instance_id], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()
        })
        .map_err(db_error)?;
    let Some((execution_id, status)) = row else {
        return Err(StoreError::InstanceNotFound(commit.instance_id.clone()));
    };
    // An operator of another process suspended or terminated it while this turn ran (an
    // operator of this store drops the lease itself, see `operator.rs`).
    if status == "suspended" || status == "terminated" {
        return Err(StoreError::LeaseLost("instance"));
    }
    let history_len = history_len_of(connection, &commit.instance_id, execution_id)?;
    if u64::try_from(execution_id).ok() != Some(commit.execution_id) {
        return Err(StoreError::Contract(format!(
            "commit for execution {} but the instance is at execution {execution_id}",
            commit.execution_id
        )));
    }
    if u64::try_from(history_len).ok() != Some(commit.history_from) {
        return Err(StoreError::Contract(format!(
            "history append at position {} but the history has {history_len} events",
            commit.history_from
        )));
    }
    let execution = i64::try_from(commit.execution_id).unwrap_or(i64::MAX);
    {
        let mut insert = connection
            .prepare_cached(
                "INSERT INTO history (instance_id, execution_id, position, event) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(db_error)?;
        for (offset, event) in commit.append.iter().enumerate() {
            let position = history_len + i64::try_from(offset).unwrap_or(i64::MAX);
            insert
                .execute(params![
                    commit.instance_id,
                    execution,
                    position,
                    encode(event)
                ])
                .map_err(db_error)?;
        }
    }
    {
        let mut delete = connection
            .prepare_cached("DELETE FROM inbox WHERE message_id = ?1 AND instance_id = ?2")
            .map_err(db_error)?;
        for message_id in &commit.consumed {
            let message_id = i64::try_from(*message_id).unwrap_or(-1);
            delete
                .execute(params![message_id, commit.instance_id])
                .map_err(db_error)?;
        }
    }
    let (claim_max, claim_lease_ms) = commit
        .claim_activities
        .map_or((0, 0), |(max, lease)| (max, duration_ms(lease)));
    let mut claimed = Vec::new();
    {
        let mut insert = connection
            .prepare_cached(
                "INSERT INTO activities (instance_id, execution_id, activity_id, name, input, retry, visible_at_ms, attempt, task_queue)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) RETURNING item_id",
            )
            .map_err(db_error)?;
        for activity in &commit.activities {
            let retry = activity.retry.as_ref().map(encode);
            let activity_id = i64::try_from(activity.activity_id).unwrap_or(i64::MAX);
            let activity_execution = i64::try_from(activity.execution_id).unwrap_or(i64::MAX);
            let claim = claimed.len() < claim_max;
            let item_id: i64 = insert
                .query_row(
                    params![
                        activity.instance_id,
                        activity_execution,
                        activity_id,
                        activity.name,
                        activity.input,
                        retry,
                        now,
                        i64::from(claim),
                        activity.task_queue
                    ],
                    |row| row.get(0),
                )
                .map_err(db_error)?;
            if claim {
                claimed.push((item_id, activity.clone()));
            }
        }
    }
    {
        let mut delete = connection
            .prepare_cached("DELETE FROM activities WHERE item_id = ?1")
            .map_err(db_error)?;
        let mut held = lock_leases(leases);
        for (item_id, item_token) in &commit.completed_activities {
            let item_id = i64::try_from(*item_id).unwrap_or(-1);
            if holds(&held.activities, &item_id, token_of(*item_token), now) {
                delete.execute(params![item_id]).map_err(db_error)?;
                held.activities.remove(&item_id);
            }
        }
    }
    let mut inbox_changed = !commit.timers.is_empty();
    for (visible_at_ms, message) in &commit.timers {
        insert_message(connection, &commit.instance_id, *visible_at_ms, message)?;
    }
    for outbound in &commit.outbound {
        match outbound {
            Outbound::Start(start) => {
                if insert_instance(connection, start, now)? {
                    inbox_changed = true;
                } else if let Some(parent) = &start.parent {
                    let failure = Failure::new(
                        codes::INSTANCE_EXISTS,
                        format!("instance '{}' already exists", start.instance_id),
                    );
                    let message = Message::SubOrchestrationFailed {
                        execution_id: parent.execution_id,
                        id: parent.id,
                        failure,
                    };
                    inbox_changed |= if parent.instance_id == commit.instance_id {
                        insert_message(connection, &parent.instance_id, now, &message)?;
                        true
                    } else {
                        insert_message_if_live(connection, &parent.instance_id, now, &message)?
                    };
                }
            }
            Outbound::Message {
                instance_id,
                message,
            } => {
                inbox_changed |= insert_message_if_live(connection, instance_id, now, message)?;
            }
        }
    }
    let mut new_execution = execution;
    let mut new_input: Option<String> = None;
    if let Some(start) = &commit.continue_as_new {
        // The execution that ends keeps its times; the instance row describes the next one.
        let ended_len = commit.history_from + commit.append.len() as u64;
        connection
            .prepare_cached(
                "INSERT INTO executions (instance_id, execution_id, started_at_ms, finished_at_ms, history_len)
                 SELECT instance_id, execution_id, started_at_ms, ?2, ?3 FROM instances WHERE instance_id = ?1",
            )
            .and_then(|mut statement| {
                statement.execute(params![
                    commit.instance_id,
                    now,
                    i64::try_from(ended_len).unwrap_or(i64::MAX)
                ])
            })
            .map_err(db_error)?;
        new_execution += 1;
        if let Message::Start { input, .. } = start {
            new_input = Some(input.clone());
        }
        insert_message(connection, &commit.instance_id, now, start)?;
        inbox_changed = true;
    }
    let finished = commit.status.is_some_and(InstanceStatus::is_terminal);
    // Only turns that change what the row holds rewrite it (a page write per turn otherwise).
    let changes_row = commit.status.is_some()
        || commit.output.is_some()
        || commit.failure.is_some()
        || commit.custom_status.is_some()
        || new_execution != execution;
    if changes_row {
        connection
            .prepare_cached(
                "UPDATE instances SET
                    status = COALESCE(?2, status),
                    output = COALESCE(?3, output),
                    failure = COALESCE(?4, failure),
                    custom_status = COALESCE(?5, custom_status),
                    execution_id = ?6,
                    input = COALESCE(?7, input),
                    updated_at_ms = ?8,
                    started_at_ms = CASE
                        WHEN execution_id != ?6 THEN ?8
                        WHEN started_at_ms IS NULL AND COALESCE(?2, status) != 'pending' THEN ?8
                        ELSE started_at_ms END,
                    finished_at_ms = CASE
                        WHEN COALESCE(?2, status) IN ('completed', 'failed', 'cancelled', 'terminated')
                        THEN COALESCE(finished_at_ms, ?8) END
                 WHERE instance_id = ?1 AND (
                    status IS NOT COALESCE(?2, status)
                    OR ?3 IS NOT NULL OR ?4 IS NOT NULL
                    OR custom_status IS NOT COALESCE(?5, custom_status)
                    OR execution_id != ?6)",
            )
            .and_then(|mut statement| {
                statement.execute(params![
                    commit.instance_id,
                    commit.status.map(InstanceStatus::as_str),
                    commit.output,
                    commit.failure.as_ref().map(encode),
                    commit.custom_status,
                    new_execution,
                    new_input,
                    now
                ])
            })
            .map_err(db_error)?;
    }
    if !commit.cancelled_activities.is_empty() {
        let mut delete = connection
            .prepare_cached(
                "DELETE FROM activities
                 WHERE instance_id = ?1 AND execution_id = ?2 AND activity_id = ?3",
            )
            .map_err(db_error)?;
        for activity_id in &commit.cancelled_activities {
            delete
                .execute(params![
                    commit.instance_id,
                    i64::try_from(commit.execution_id).unwrap_or(i64::MAX),
                    i64::try_from(*activity_id).unwrap_or(i64::MAX)
                ])
                .map_err(db_error)?;
        }
    }
    if finished && commit.outstanding_activities {
        // Work that can no longer matter: unresolved activities nobody holds.
        // Work items still leased are left to their holders, whose completions then find the
        // instance finished and delete them.
        let pending: Vec<i64> = connection
            .prepare_cached("SELECT item_id FROM activities WHERE instance_id = ?1")
            .and_then(|mut statement| {
                statement
                    .query_map(params![commit.instance_id], |row| row.get(0))?
                    .collect()
            })
            .map_err(db_error)?;
        let held = lock_leases(leases);
        let mut delete = connection
            .prepare_cached("DELETE FROM activities WHERE item_id = ?1")
            .map_err(db_error)?;
        for item_id in pending
            .into_iter()
            .filter(|id| is_free(&held.activities, id, now))
        {
            delete.execute(params![item_id]).map_err(db_error)?;
        }
    }
    if finished {
        // Timers that can no longer matter.
        connection
            .prepare_cached("DELETE FROM inbox WHERE instance_id = ?1 AND visible_at_ms > ?2")
            .and_then(|mut statement| statement.execute(params![commit.instance_id, now]))
            .map_err(db_error)?;
    }
    let claim_token = tokens_next_for_claims(&claimed, leases, now, claim_lease_ms, commit);
    lock_leases(leases)
        .instances
        .remove(commit.instance_id.as_str());
    // Messages that arrived during the turn need another turn: wake a dispatcher.
    let pending: bool = connection
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM inbox WHERE instance_id = ?1 AND visible_at_ms <= ?2)",
        )
        .and_then(|mut statement| {
            statement.query_row(params![commit.instance_id, now], |row| row.get(0))
        })
        .map_err(db_error)?;
    let claimed = claimed
        .into_iter()
        .map(|(item_id, activity)| ActivityWorkItem {
            item_id: u64::try_from(item_id).unwrap_or(0),
            lock_token: u64::try_from(claim_token).unwrap_or(0),
            attempt: 1,
            activity,
            unreadable: None,
            orchestration: None,
        })
        .collect::<Vec<_>>();
    Ok(CommitEffects {
        inbox_changed: inbox_changed || pending,
        activities_added: commit.activities.len() > claimed.len(),
        finished,
        claimed,
    })
}

/// Leases the claimed work items to the committing caller; the token is the instance lock
/// token (unique per fetch), so one value serves both.
fn tokens_next_for_claims(
    claimed: &[(i64, NewActivity)],
    leases: &Mutex<Leases>,
    now: TimestampMs,
    lease_ms: i64,
    commit: &TurnCommit,
) -> i64 {
    let token = token_of(commit.lock_token);
    let mut held = lock_leases(leases);
    for (item_id, _) in claimed {
        held.activities.insert(
            *item_id,
            Lease {
                token,
                until_ms: now + lease_ms,
            },
        );
    }
    token
}

/// `names` as the JSON array the statements take (`None`: all).
fn names_json(names: &Names) -> Option<String> {
    names
        .as_slice()
        .map(|names| serde_json::to_string(names).expect("strings serialize"))
}

#[allow(clippy::too_many_arguments)]
fn fetch_turns_in(
    connection: &Connection,
    max: usize,
    lease_ms: i64,
    now: TimestampMs,
    also: &[String],
    names: &Names,
    token: i64,
    leases: &Mutex<Leases>,
) -> StoreResult<Vec<LockedTurn>> {
    // Leased instances may head the queue: ask for enough candidates to skip them.
    let leased = lock_leases(leases).instances.len();
    let limit = i64::try_from(max.saturating_add(leased)).unwrap_or(i64::MAX);
    // Quarantined instances keep their messages but are not candidates (they would otherwise
    // head the queue forever and starve the rest).
    let queued: Vec<String> = connection
        .prepare_cached(
            "SELECT m.instance_id FROM inbox m JOIN instances i ON i.instance_id = m.instance_id
             WHERE m.visible_at_ms <= ?1 AND i.status NOT IN ('quarantined', 'suspended')
               AND (?3 IS NULL OR i.name IN (SELECT value FROM json_each(?3)))
             GROUP BY m.instance_id ORDER BY MIN(m.message_id) LIMIT ?2",
        )
        .and_then(|mut statement| {
            statement
                .query_map(params![now, limit, names_json(names)], |row| row.get(0))?
                .collect::<Result<Vec<String>, _>>()
        })
        .map_err(db_error)?;
    let mut turns = Vec::with_capacity(max.min(queued.len() + also.len()));
    let mut seen = std::collections::HashSet::new();
    // Instances with results held in memory first: they are work in progress holding the
    // caller's resources; new starts queued behind them wait their turn.
    for instance_id in also.iter().cloned().chain(queued) {
        if turns.len() >= max {
            break;
        }
        if !seen.insert(instance_id.clone())
            || !is_free(&lock_leases(leases).instances, instance_id.as_str(), now)
        {
            continue;
        }
        let row = connection
            .prepare_cached(
                "SELECT name, status, execution_id FROM instances WHERE instance_id = ?1",
            )
            .and_then(|mut statement| {
                statement
                    .query_row(params![instance_id], |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, i64>(2)?,
                        ))
                    })
                    .optional()
            })
            .map_err(db_error)?;
        let Some((name, status, execution_id)) = row else {
            continue;
        };
        if !names.contains(&name) {
            continue;
        }
        // Each fetch counts a delivery on what it hands out; the commit that consumes the
        // messages deletes their counts with them.
        let mut rows = connection
            .prepare_cached(
                "UPDATE inbox SET deliveries = deliveries + 1
                 WHERE instance_id = ?1 AND visible_at_ms <= ?2
                 RETURNING message_id, message, deliveries",
            )
            .and_then(|mut statement| {
                statement
                    .query_map(params![instance_id, now], |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, i64>(2)?,
                        ))
                    })?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(db_error)?;
        rows.sort_unstable_by_key(|(id, _, _)| *id);
        let delivery = rows.iter().map(|(_, _, count)| *count).max().unwrap_or(1);
        let mut unreadable = None;
        let mut messages = Vec::with_capacity(rows.len());
        for (id, text, _) in rows {
            let row = || format!("inbox message {id} of instance '{instance_id}'");
            match decode::<Message>(&text, row) {
                Ok(message) => messages.push((u64::try_from(id).unwrap_or(0), message)),
                Err(error) => {
                    unreadable.get_or_insert_with(|| error.to_string());
                }
            }
        }
        let status = match parse_status(&status) {
            Ok(status) => status,
            Err(error) => {
                unreadable.get_or_insert_with(|| format!("instance '{instance_id}': {error}"));
                InstanceStatus::Running
            }
        };
        let history_len = history_len_of(connection, &instance_id, execution_id)?;
        lock_leases(leases).instances.insert(
            instance_id.clone(),
            Lease {
                token,
                until_ms: now + lease_ms,
            },
        );
        turns.push(LockedTurn {
            instance_id,
            name,
            status,
            execution_id: u64::try_from(execution_id).unwrap_or(0),
            history_len: u64::try_from(history_len).unwrap_or(0),
            lock_token: u64::try_from(token).unwrap_or(0),
            messages,
            delivery: u32::try_from(delivery).unwrap_or(u32::MAX).max(1),
            unreadable,
        });
    }
    Ok(turns)
}

#[allow(clippy::too_many_arguments)]
fn fetch_activities_in(
    connection: &Connection,
    max: usize,
    lease_ms: i64,
    now: TimestampMs,
    names: &Names,
    queues: &Names,
    token: i64,
    leases: &Mutex<Leases>,
) -> StoreResult<Vec<ActivityWorkItem>> {
    let leased = lock_leases(leases).activities.len();
    let limit = i64::try_from(max.saturating_add(leased)).unwrap_or(i64::MAX);
    let candidates: Vec<(i64, Option<String>, Option<String>)> = connection
        .prepare_cached(
            "SELECT a.item_id, i.status, i.name FROM activities a
             LEFT JOIN instances i ON i.instance_id = a.instance_id
             WHERE a.visible_at_ms <= ?1 AND (i.status IS NULL OR i.status <> 'quarantined')
               AND (?3 IS NULL OR a.name IN (SELECT value FROM json_each(?3)))
               AND (?4 IS NULL OR COALESCE(a.task_queue, '') IN (SELECT value FROM json_each(?4)))
             ORDER BY a.item_id LIMIT ?2",
        )
        .and_then(|mut statement| {
            statement
                .query_map(
                    params![now, limit, names_json(names), names_json(queues)],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )?
                .collect()
        })
        .map_err(db_error)?;
    let mut items = Vec::new();
    for (item_id, status, orchestration) in candidates {
        if items.len() >= max {
            break;
        }
        if !is_free(&lock_leases(leases).activities, &item_id, now) {
            continue;
        }
        // Work of a finished (or vanished) instance can no longer matter: it is deleted, never
        // run (a crash may have left it after its instance was cancelled).
        let finished = status.as_deref().is_none_or(|status| {
            InstanceStatus::parse(status).is_some_and(InstanceStatus::is_terminal)
        });
        if finished {
            connection
                .prepare_cached("DELETE FROM activities WHERE item_id = ?1")
                .and_then(|mut statement| statement.execute(params![item_id]))
                .map_err(db_error)?;
            continue;
        }
        // The attempt count is stored, so that a work item that keeps crashing its process is
        // eventually failed as poisoned.
        let row = connection
            .prepare_cached(
                "UPDATE activities SET attempt = attempt + 1 WHERE item_id = ?1
                 RETURNING instance_id, execution_id, activity_id, name, input, retry, attempt,
                     task_queue",
            )
            .and_then(|mut statement| {
                statement.query_row(params![item_id], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, String>(4)?,
                        row.get::<_, Option<String>>(5)?,
                        row.get::<_, i64>(6)?,
                        row.get::<_, Option<String>>(7)?,
                    ))
                })
            })
            .map_err(db_error)?;
        let (instance_id, execution_id, activity_id, name, input, retry, attempt, task_queue) = row;
        lock_leases(leases).activities.insert(
            item_id,
            Lease {
                token,
                until_ms: now + lease_ms,
            },
        );
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
        items.push(ActivityWorkItem {
            item_id: u64::try_from(item_id).unwrap_or(0),
            lock_token: u64::try_from(token).unwrap_or(0),
            attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
            activity: NewActivity {
                instance_id,
                execution_id: u64::try_from(execution_id).unwrap_or(0),
                activity_id: u64::try_from(activity_id).unwrap_or(0),
                name,
                input,
                retry,
                task_queue,
            },
            unreadable,
            orchestration,
        });
    }
    Ok(items)
}

#[async_trait]
impl Store for SqliteStore {
    fn signals(&self) -> &Arc<Signals> {
        &self.signals
    }

    async fn create_instance(&self, start: NewInstance) -> StoreResult<bool> {
        let created = self
            .write(move |connection, now| insert_instance(connection, &start, now))
            .await?;
        if created {
            self.signals.orchestrations.notify_one();
        }
        Ok(created)
    }

    async fn enqueue_message(
        &self,
        instance_id: &str,
        message: Message,
        start_if_missing: Option<NewInstance>,
    ) -> StoreResult<()> {
        let instance_id = instance_id.to_string();
        self.write(move |connection, now| {
            if let Some(start) = &start_if_missing {
                insert_instance(connection, start, now)?;
            }
            match status_of(connection, &instance_id)? {
                None => Err(StoreError::InstanceNotFound(instance_id)),
                Some(status) if status.is_terminal() => Err(StoreError::InstanceFinished {
                    instance_id,
                    status: status.as_str(),
                }),
                Some(_) => insert_message(connection, &instance_id, now, &message),
            }
        })
        .await?;
        self.signals.orchestrations.notify_one();
        Ok(())
    }

    async fn fetch_turns_named(
        &self,
        max: usize,
        lease: Duration,
        also: &[String],
        names: &Names,
    ) -> StoreResult<Vec<LockedTurn>> {
        self.refuse_work_if_client()?;
        let token = self.tokens.next();
        let lease_ms = duration_ms(lease);
        let leases = self.leases.clone();
        let also = also.to_vec();
        let fetched_at = self.fetched_turns_at.clone();
        *lock(&self.fetched_turn_names) = names_json(names);
        let names = names.clone();
        // On the writer thread, so that fetches are ordered with commits.
        self.write(move |connection, now| {
            fetched_at.store(now, Ordering::SeqCst);
            fetch_turns_in(
                connection, max, lease_ms, now, &also, &names, token, &leases,
            )
        })
        .await
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

    async fn commit_turn(&self, commit: TurnCommit) -> StoreResult<Vec<ActivityWorkItem>> {
        let instance_id = commit.instance_id.clone();
        let leases = self.leases.clone();
        let effects = self
            .write(move |connection, now| commit_turn_in(connection, &commit, now, &leases))
            .await?;
        if effects.inbox_changed {
            self.signals.orchestrations.notify_one();
        }
        if effects.activities_added {
            self.signals.activities.notify_one();
        }
        if effects.finished {
            self.signals.notify_finished(&instance_id);
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
        let now = self.clock.now_ms();
        let mut held = lock_leases(&self.leases);
        let token = token_of(lock_token);
        if !holds(&held.instances, instance_id, token, now) {
            return Err(StoreError::LeaseLost("instance"));
        }
        held.instances.insert(
            instance_id.to_string(),
            Lease {
                token,
                until_ms: now + duration_ms(lease),
            },
        );
        Ok(())
    }

    async fn terminate_instance(
        &self,
        request: &OperatorRequest,
        children: ChildPolicy,
    ) -> StoreResult<Vec<String>> {
        let request = request.clone();
        let leases = self.leases.clone();
        let acted = self
            .write(move |connection, now| {
                let mut acted = operator::Acted::default();
                operator::terminate(connection, &leases, now, &request, children, &mut acted)?;
                Ok(acted)
            })
            .await?;
        for id in &acted.finished {
            self.signals.notify_finished(id);
        }
        if acted.inbox_changed {
            self.signals.orchestrations.notify_one();
        }
        Ok(acted.finished)
    }

    async fn suspend_instance(&self, request: &OperatorRequest) -> StoreResult<bool> {
        let request = request.clone();
        let leases = self.leases.clone();
        self.write(move |connection, now| operator::suspend(connection, &leases, now, &request))
            .await
    }

    async fn resume_instance(&self, request: &OperatorRequest) -> StoreResult<bool> {
        let request = request.clone();
        let resumed = self
            .write(move |connection, now| operator::resume(connection, now, &request))
            .await?;
        if resumed {
            self.signals.orchestrations.notify_one();
        }
        Ok(resumed)
    }

    async fn retry_instance(&self, request: &OperatorRequest) -> StoreResult<bool> {
        let request = request.clone();
        let retried = self
            .write(move |connection, now| operator::retry(connection, now, &request))
            .await?;
        if retried {
            self.signals.orchestrations.notify_one();
        }
        Ok(retried)
    }

    async fn discard_instance(&self, request: &OperatorRequest) -> StoreResult<()> {
        let id = request.instance_id.clone();
        let request = request.clone();
        let leases = self.leases.clone();
        self.write(move |connection, now| operator::discard(connection, &leases, now, &request))
            .await?;
        self.signals.notify_finished(&id);
        Ok(())
    }

    async fn restart_instance(
        &self,
        request: &OperatorRequest,
        as_instance: Option<&str>,
        input: Option<&str>,
    ) -> StoreResult<(String, u64)> {
        let request = request.clone();
        let as_instance = as_instance.map(str::to_string);
        let input = input.map(str::to_string);
        let restarted = self
            .write(move |connection, now| {
                operator::restart(
                    connection,
                    now,
                    &request,
                    as_instance.as_deref(),
                    input.as_deref(),
                )
            })
            .await?;
        self.signals.orchestrations.notify_one();
        Ok(restarted)
    }

    async fn rewind_instance(&self, request: &OperatorRequest) -> StoreResult<(u64, Vec<String>)> {
        let request = request.clone();
        let rewound = self
            .write(move |connection, now| operator::rewind(connection, now, &request))
            .await?;
        self.signals.orchestrations.notify_one();
        self.signals.activities.notify_one();
        Ok(rewound)
    }

    async fn purge_instance(&self, instance_id: &str) -> StoreResult<Vec<String>> {
        let instance_id = instance_id.to_string();
        self.write(move |connection, _now| purge::purge_instance(connection, &instance_id))
            .await
    }

    async fn count_purgeable(&self, filter: &PurgeFilter) -> StoreResult<u64> {
        let filter = filter.clone();
        self.read(move |connection, _now| purge::count(connection, &filter))
            .await
    }

    async fn purge_batch(&self, filter: &PurgeFilter, max: usize) -> StoreResult<usize> {
        let filter = filter.clone();
        self.write(move |connection, _now| purge::batch(connection, &filter, max))
            .await
    }

    async fn quarantine_turn(
        &self,
        instance_id: &str,
        lock_token: u64,
        reason: Failure,
    ) -> StoreResult<()> {
        let instance_id = instance_id.to_string();
        let leases = self.leases.clone();
        self.write(move |connection, now| {
            let mut held = lock_leases(&leases);
            if !holds(
                &held.instances,
                instance_id.as_str(),
                token_of(lock_token),
                now,
            ) {
                return Err(StoreError::LeaseLost("instance"));
            }
            operator::quarantine(connection, now, &instance_id, &reason)?;
            held.instances.remove(instance_id.as_str());
            Ok(())
        })
        .await
    }

    async fn quarantine_activity(
        &self,
        item_id: u64,
        lock_token: u64,
        reason: Failure,
    ) -> StoreResult<()> {
        let leases = self.leases.clone();
        self.write(move |connection, now| {
            let item_id = i64::try_from(item_id).unwrap_or(-1);
            let mut held = lock_leases(&leases);
            if !holds(&held.activities, &item_id, token_of(lock_token), now) {
                return Err(StoreError::LeaseLost("activity"));
            }
            let instance_id: Option<String> = connection
                .prepare_cached(
                    "UPDATE activities SET visible_at_ms = ?2, attempt = MAX(attempt - 1, 0)
                     WHERE item_id = ?1 RETURNING instance_id",
                )
                .and_then(|mut statement| {
                    statement
                        .query_row(params![item_id, now], |row| row.get(0))
                        .optional()
                })
                .map_err(db_error)?;
            held.activities.remove(&item_id);
            let Some(instance_id) = instance_id else {
                return Err(StoreError::LeaseLost("activity"));
            };
            // Whoever runs the instance's turn is fenced: its lease ends here, so its commit is
            // refused as a lost lease.
            if operator::quarantine(connection, now, &instance_id, &reason)? {
                held.instances.remove(instance_id.as_str());
            }
            Ok(())
        })
        .await
    }

    async fn fetch_activities_named(
        &self,
        max: usize,
        lease: Duration,
        names: &Names,
        queues: &Names,
    ) -> StoreResult<Vec<ActivityWorkItem>> {
        self.refuse_work_if_client()?;
        let token = self.tokens.next();
        let lease_ms = duration_ms(lease);
        let leases = self.leases.clone();
        let fetched_at = self.fetched_activities_at.clone();
        *lock(&self.fetched_activity_names) = (names_json(names), names_json(queues));
        let (names, queues) = (names.clone(), queues.clone());
        self.write(move |connection, now| {
            fetched_at.store(now, Ordering::SeqCst);
            fetch_activities_in(
                connection, max, lease_ms, now, &names, &queues, token, &leases,
            )
        })
        .await
    }

    async fn renew_activity_lease(
        &self,
        item_id: u64,
        lock_token: u64,
        lease: Duration,
    ) -> StoreResult<bool> {
        let item_id = i64::try_from(item_id).unwrap_or(-1);
        let now = self.clock.now_ms();
        {
            let mut held = lock_leases(&self.leases);
            if !holds(&held.activities, &item_id, token_of(lock_token), now) {
                return Err(StoreError::LeaseLost("activity"));
            }
            held.activities.insert(
                item_id,
                Lease {
                    token: token_of(lock_token),
                    until_ms: now + duration_ms(lease),
                },
            );
        }
        self.read(move |connection, _now| {
            let status: Option<String> = connection
                .prepare_cached(
                    "SELECT i.status FROM activities a JOIN instances i ON i.instance_id = a.instance_id
                     WHERE a.item_id = ?1",
                )
                .and_then(|mut statement| statement.query_row(params![item_id], |row| row.get(0)).optional())
                .map_err(db_error)?;
            // Gone: cancelled (or taken over); still wanted while the owning instance has not
            // finished.
            let Some(status) = status else {
                return Err(StoreError::LeaseLost("activity"));
            };
            Ok(!parse_status(&status)?.is_terminal())
        })
        .await
    }

    async fn complete_activity(
        &self,
        item_id: u64,
        lock_token: u64,
        result: ActivityResult,
    ) -> StoreResult<()> {
        let leases = self.leases.clone();
        let delivered = self
            .write(move |connection, now| {
                let item_id = i64::try_from(item_id).unwrap_or(-1);
                if !holds(&lock_leases(&leases).activities, &item_id, token_of(lock_token), now) {
                    return Err(StoreError::LeaseLost("activity"));
                }
                let row: Option<(String, i64, i64)> = connection
                    .prepare_cached(
                        "DELETE FROM activities WHERE item_id = ?1 RETURNING instance_id, execution_id, activity_id",
                    )
                    .and_then(|mut statement| {
                        statement.query_row(params![item_id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?))).optional()
                    })
                    .map_err(db_error)?;
                lock_leases(&leases).activities.remove(&item_id);
                let Some((instance_id, execution_id, activity_id)) = row else {
                    return Err(StoreError::LeaseLost("activity"));
                };
                let (execution_id, id) =
                    (u64::try_from(execution_id).unwrap_or(0), u64::try_from(activity_id).unwrap_or(0));
                let message = match result {
                    ActivityResult::Completed(output) => Message::ActivityCompleted { execution_id, id, output },
                    ActivityResult::Failed(failure) => Message::ActivityFailed { execution_id, id, failure },
                };
                insert_message_if_live(connection, &instance_id, now, &message)
            })
            .await?;
        if delivered {
            self.signals.orchestrations.notify_one();
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
        let instance_id = instance_id.to_string();
        self.read(move |connection, _now| {
            let row = connection
                .prepare_cached(&format!(
                    "SELECT {}, input, output FROM instances WHERE instance_id = ?1",
                    listing::COLUMNS
                ))
                .and_then(|mut statement| {
                    statement
                        .query_row(params![instance_id], |row| {
                            Ok((
                                SummaryRow::read(row)?,
                                row.get::<_, String>(11)?,
                                row.get::<_, Option<String>>(12)?,
                            ))
                        })
                        .optional()
                })
                .map_err(db_error)?;
            let Some((summary, input, output)) = row else {
                return Ok(None);
            };
            let summary = summary.decode()?;
            Ok(Some(InstanceInfo {
                instance_id: summary.instance_id,
                name: summary.name,
                status: summary.status,
                execution_id: summary.execution_id,
                input,
                output,
                failure: summary.failure,
                custom_status: summary.custom_status,
                parent_id: summary.parent_id,
                created_at_ms: summary.created_at_ms,
                started_at_ms: summary.started_at_ms,
                updated_at_ms: summary.updated_at_ms,
                finished_at_ms: summary.finished_at_ms,
            }))
        })
        .await
    }

    async fn count_instances(&self, filter: &InstanceFilter) -> StoreResult<u64> {
        let counting = listing::count_sql(filter, "instances", &SQLITE_DIALECT);
        self.read(move |connection, _now| {
            let params = sqlite_params(counting.params);
            let count: i64 = connection
                .query_row(&counting.sql, rusqlite::params_from_iter(params), |row| {
                    row.get(0)
                })
                .map_err(db_error)?;
            Ok(u64::try_from(count).unwrap_or(0))
        })
        .await
    }

    async fn list_instances(&self, query: &InstanceQuery) -> StoreResult<InstancePage> {
        if query.limit() == 0 {
            return Ok(InstancePage::default());
        }
        let probe = listing::prefix_probe_sql(query, "instances", &SQLITE_DIALECT);
        let planned = query.clone();
        let rows = self
            .read(move |connection, _now| {
                let plan = match probe {
                    None => listing::PrefixPlan::Walk,
                    Some(probe) => {
                        let params = sqlite_params(probe.params);
                        let (count, bound) = connection
                            .prepare_cached(&probe.sql)
                            .and_then(|mut statement| {
                                statement.query_row(rusqlite::params_from_iter(params), |row| {
                                    Ok((row.get::<_, i64>(0)?, row.get::<_, Option<i64>>(1)?))
                                })
                            })
                            .map_err(db_error)?;
                        listing::PrefixPlan::from_probe(count, bound)
                    }
                };
                let listing =
                    listing::planned_listing_sql(&planned, "instances", &SQLITE_DIALECT, plan);
                let params = sqlite_params(listing.params);
                let rows = connection
                    .prepare(&listing.sql)
                    .and_then(|mut statement| {
                        statement
                            .query_map(rusqlite::params_from_iter(params), SummaryRow::read)?
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .map_err(db_error)?;
                rows.into_iter().map(SummaryRow::decode).collect()
            })
            .await?;
        Ok(listing::into_page(query, rows))
    }

    async fn instance_counts(&self) -> StoreResult<Vec<InstanceCount>> {
        self.read(move |connection, _now| {
            let rows = connection
                .prepare_cached(
                    "SELECT status, name, n FROM instance_counts WHERE n > 0 ORDER BY status, name",
                )
                .and_then(|mut statement| {
                    statement
                        .query_map([], |row| {
                            Ok((
                                row.get::<_, String>(0)?,
                                row.get::<_, String>(1)?,
                                row.get::<_, i64>(2)?,
                            ))
                        })?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(db_error)?;
            rows.into_iter()
                .map(|(status, name, count)| {
                    Ok(InstanceCount {
                        status: parse_status(&status)?,
                        name,
                        count: u64::try_from(count).unwrap_or(0),
                    })
                })
                .collect()
        })
        .await
    }

    async fn executions(&self, instance_id: &str) -> StoreResult<Vec<ExecutionInfo>> {
        let instance_id = instance_id.to_string();
        self.read(move |connection, _now| {
            let ended = connection
                .prepare_cached(
                    "SELECT execution_id, started_at_ms, finished_at_ms, history_len FROM executions
                     WHERE instance_id = ?1 ORDER BY execution_id",
                )
                .and_then(|mut statement| {
                    statement
                        .query_map(params![instance_id], |row| {
                            Ok(ExecutionInfo {
                                execution_id: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
                                status: ExecutionStatus::ContinuedAsNew,
                                started_at_ms: row.get(1)?,
                                finished_at_ms: Some(row.get(2)?),
                                history_len: u64::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
                            })
                        })?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(db_error)?;
            let current = connection
                .prepare_cached(
                    "SELECT status, execution_id, started_at_ms, finished_at_ms FROM instances
                     WHERE instance_id = ?1",
                )
                .and_then(|mut statement| {
                    statement
                        .query_row(params![instance_id], |row| {
                            Ok((
                                row.get::<_, String>(0)?,
                                row.get::<_, i64>(1)?,
                                row.get::<_, Option<i64>>(2)?,
                                row.get::<_, Option<i64>>(3)?,
                            ))
                        })
                        .optional()
                })
                .map_err(db_error)?;
            let Some((status, execution_id, started, finished)) = current else {
                return Ok(Vec::new());
            };
            // How each ended: the last two events of each (a restart or a rewind is recorded
            // after the end).
            let tails: Vec<(i64, String)> = connection
                .prepare_cached(
                    "SELECT h.execution_id, h.event FROM executions e JOIN history h
                       ON h.instance_id = e.instance_id AND h.execution_id = e.execution_id
                      AND h.position >= e.history_len - 2
                     WHERE e.instance_id = ?1 ORDER BY h.execution_id, h.position",
                )
                .and_then(|mut statement| {
                    statement
                        .query_map(params![instance_id], |row| Ok((row.get(0)?, row.get(1)?)))?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(db_error)?;
            let mut executions = ended;
            for execution in &mut executions {
                let tail: Vec<Event> = tails
                    .iter()
                    .filter(|(id, _)| u64::try_from(*id).ok() == Some(execution.execution_id))
                    .map(|(_, text)| {
                        decode(text, || format!("the history of instance '{instance_id}'"))
                    })
                    .collect::<StoreResult<_>>()?;
                execution.status = ExecutionStatus::of_ended(&tail);
            }
            executions.push(ExecutionInfo {
                execution_id: u64::try_from(execution_id).unwrap_or(0),
                status: ExecutionStatus::Current(parse_status(&status)?),
                started_at_ms: started,
                finished_at_ms: finished,
                history_len: u64::try_from(history_len_of(connection, &instance_id, execution_id)?)
                    .unwrap_or(0),
            });
            Ok(executions)
        })
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

    async fn next_wake_at(&self, work: Work) -> StoreResult<Option<TimestampMs>> {
        let (since, filter, sql) = match work {
            Work::Turns => (
                &self.fetched_turns_at,
                (lock(&self.fetched_turn_names).clone(), None),
                "SELECT MIN(m.visible_at_ms) FROM inbox m WHERE m.visible_at_ms > ?1
                   AND (?2 IS NULL OR (SELECT i.name FROM instances i WHERE i.instance_id = m.instance_id)
                                      IN (SELECT value FROM json_each(?2)))
                   AND ?3 IS NULL",
            ),
            Work::Activities => (
                &self.fetched_activities_at,
                lock(&self.fetched_activity_names).clone(),
                "SELECT MIN(visible_at_ms) FROM activities WHERE visible_at_ms > ?1
                   AND (?2 IS NULL OR name IN (SELECT value FROM json_each(?2)))
                   AND (?3 IS NULL OR COALESCE(task_queue, '') IN (SELECT value FROM json_each(?3)))",
            ),
        };
        let since = since.load(Ordering::SeqCst);
        let (names, queues) = filter;
        let stored: Option<TimestampMs> = self
            .read(move |connection, _now| {
                connection
                    .prepare_cached(sql)
                    .and_then(|mut statement| {
                        statement.query_row(params![since, names, queues], |row| row.get(0))
                    })
                    .map_err(db_error)
            })
            .await?;
        let now = self.clock.now_ms();
        let held = lock_leases(&self.leases);
        let leases: Box<dyn Iterator<Item = &Lease>> = match work {
            Work::Turns => Box::new(held.instances.values()),
            Work::Activities => Box::new(held.activities.values()),
        };
        let lease_end = leases
            .map(|lease| lease.until_ms)
            .filter(|until| *until > now)
            .min();
        Ok(match (stored, lease_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }
}

/// How a listing's SQL is spelled for SQLite.
const SQLITE_DIALECT: listing::Dialect<'static> = listing::Dialect {
    placeholder: &|n| format!("?{n}"),
    starts_with: &|column, at| format!("substr({column}, 1, length({at})) = {at}"),
    code_point_id: Some("instance_id"),
};

fn sqlite_params(params: Vec<listing::Param>) -> Vec<rusqlite::types::Value> {
    params
        .into_iter()
        .map(|param| match param {
            listing::Param::Text(text) => rusqlite::types::Value::Text(text),
            listing::Param::Int(value) => rusqlite::types::Value::Integer(value),
        })
        .collect()
}
