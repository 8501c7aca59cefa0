//! `sluice bench control-plane`: what an operator's listing and counting cost over a large
//! store while the store serves the orchestration workload.
//!
//! The store is filled with `--instances` instances written by SQL in the store's own tables
//! (the columns its code writes; the count triggers fire as for any insert), spread over 30
//! days with a fixed mix of statuses, ten orchestration names and a fifth of them children of
//! another instance: driving a million instances through turns would take this machine an hour.
//! On PostgreSQL the fill is followed by a fold of the count deltas and `VACUUM ANALYZE`, the
//! state autovacuum leaves within a minute or so of such a burst. Then a runtime runs the
//! orchestration benchmark's fan-out workload (closed loop) on the same store, and while it
//! runs each query below is timed, a page at a time.

use crate::postgres;
use crate::stats::{Latencies, LatencyMs};
use anyhow::{Context, Result};
use serde::Serialize;
use sluice_runtime::{Client, InstanceStatus, Runtime, RuntimeOptions};
use sluice_store::{InstanceFilter, InstanceOrder, InstanceQuery, Store, TimeRange};
use sluice_store_postgres::{PostgresStore, PostgresStoreOptions};
use sluice_store_sqlite::{Location, SqliteStore, SqliteStoreOptions};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Options of `sluice bench control-plane`.
#[derive(clap::Args, Debug, Clone)]
pub struct ControlPlaneBenchArgs {
    /// The store.
    #[arg(long, value_enum)]
    target: Target,
    /// PostgreSQL to use (a fresh schema per run); required for `--target postgres` unless the
    /// binary was built with the `throwaway-postgres` feature.
    #[arg(long)]
    pg_url: Option<String>,
    /// Instances in the store before the queries.
    #[arg(long, default_value_t = 1_000_000)]
    instances: u64,
    /// Pages timed per query.
    #[arg(long, default_value_t = 40)]
    samples: usize,
    /// Instances of the fan-out workload kept running while the queries run (0: none).
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
    /// History events written per instance by the fill (what a purge must remove too).
    #[arg(long, default_value_t = 4)]
    history_events: u32,
    /// After the queries, purge every finished instance of the fill (in batches of 1,000)
    /// while the workload runs, and report its pace before and during.
    #[arg(long)]
    purge: bool,
    /// After the queries (and the purge), alternate windows of 10 s without and with the
    /// runtime's background retention purging the fill's finished instances, three of each,
    /// and report the workload's pace in each.
    #[arg(long)]
    retention: bool,
    /// The retention's `busy_percent_max` (the share of time its batches may take).
    #[arg(long, default_value_t = 5)]
    retention_busy_percent: u32,
    /// The retention's `batch_instances_max`.
    #[arg(long, default_value_t = 100)]
    retention_batch: usize,
    /// Write the results as JSON.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Which store.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Target {
    /// A SQLite file in a temporary directory.
    Sqlite,
    /// PostgreSQL (`--pg-url`).
    Postgres,
}

/// Pages of 100 by the issue's target; counts have their own.
const PAGE: usize = 100;
const PAGE_P95_TARGET_MS: f64 = 50.0;
const COUNTS_P95_TARGET_MS: f64 = 20.0;
const SPAN_MS: i64 = 30 * 86_400_000;
const NAMES: u64 = 10;

#[derive(Serialize)]
struct QueryResult {
    query: &'static str,
    samples: u64,
    latency_ms: LatencyMs,
    p95_ms: f64,
    rows_per_page_mean: f64,
    target_p95_ms: f64,
    met: bool,
}

#[derive(Serialize)]
struct Report {
    target: Target,
    instances: u64,
    fill_s: f64,
    in_flight: usize,
    workload_completed_per_sec: f64,
    workload_failures: u64,
    queries: Vec<QueryResult>,
    purge: Option<PurgeResult>,
    retention: Option<RetentionResult>,
    machine: String,
}

#[derive(Serialize)]
struct RetentionWindow {
    retention: bool,
    seconds: f64,
    workload_per_sec: f64,
    purged: u64,
}

#[derive(Serialize)]
struct RetentionResult {
    batch_instances_max: usize,
    busy_percent_max: u32,
    windows: Vec<RetentionWindow>,
    workload_without_per_sec: f64,
    workload_with_per_sec: f64,
    workload_change_pct: f64,
    purged: u64,
    purged_per_sec_while_on: f64,
}

/// Seconds of each window of the retention phase, and windows of each kind.
const RETENTION_WINDOW_S: u64 = 10;
const RETENTION_ROUNDS: usize = 3;

/// Alternates windows without and with a background retention (the runtime's, purging every
/// instance that finished more than a day ago: the fill's, not the workload's).
async fn retention_phase(
    store: &Arc<dyn Store>,
    done: &AtomicU64,
    batch: usize,
    busy_percent: u32,
) -> Result<RetentionResult> {
    let policy = sluice_runtime::RetentionPolicy {
        batch_instances_max: batch,
        busy_percent_max: busy_percent,
        ..sluice_runtime::RetentionPolicy::older_than(Duration::from_secs(86_400))
    };
    if let Some(why) = policy.invalid() {
        anyhow::bail!(why);
    }
    let mut windows = Vec::new();
    for _ in 0..RETENTION_ROUNDS {
        for on in [false, true] {
            let stop = tokio_util::sync::CancellationToken::new();
            let purger = on.then(|| {
                tokio::spawn(sluice_runtime::run_retention(
                    store.clone(),
                    Arc::new(sluice_store::SystemClock),
                    policy.clone(),
                    stop.clone(),
                ))
            });
            let began = Instant::now();
            let at_start = done.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(RETENTION_WINDOW_S)).await;
            let completed = done.load(Ordering::Relaxed) - at_start;
            let seconds = began.elapsed().as_secs_f64();
            stop.cancel();
            let purged = match purger {
                Some(task) => task.await?,
                None => 0,
            };
            windows.push(RetentionWindow {
                retention: on,
                seconds,
                workload_per_sec: completed as f64 / seconds,
                purged,
            });
        }
    }
    let pace = |on: bool| {
        let picked: Vec<&RetentionWindow> = windows.iter().filter(|w| w.retention == on).collect();
        picked.iter().map(|w| w.workload_per_sec).sum::<f64>() / picked.len() as f64
    };
    let (without, with) = (pace(false), pace(true));
    let purged: u64 = windows.iter().map(|w| w.purged).sum();
    let on_seconds: f64 = windows
        .iter()
        .filter(|w| w.retention)
        .map(|w| w.seconds)
        .sum();
    Ok(RetentionResult {
        batch_instances_max: batch,
        busy_percent_max: busy_percent,
        workload_without_per_sec: without,
        workload_with_per_sec: with,
        workload_change_pct: (with / without - 1.0) * 100.0,
        purged,
        purged_per_sec_while_on: purged as f64 / on_seconds,
        windows,
    })
}

#[derive(Serialize)]
struct PurgeResult {
    purged: u64,
    seconds: f64,
    instances_per_sec: f64,
    batch: usize,
    workload_before_per_sec: f64,
    workload_during_per_sec: f64,
    workload_change_pct: f64,
    /// What the tables take right after the purge, and a while later (autovacuum's turn).
    storage: Vec<StorageReport>,
}

/// How long after the purge the storage is looked at again, in seconds (PostgreSQL's
/// autovacuum wakes every minute by default).
const STORAGE_AGAIN_S: u64 = 70;

/// Instances one purge transaction removes.
const PURGE_BATCH: usize = 1_000;
/// How long the workload's pace is measured before the purge, in seconds.
const BEFORE_PURGE_S: u64 = 10;

/// Purges every filled instance that finished (all of them, in batches) while the workload
/// runs, and the workload's pace before and during.
async fn purge_phase(
    store: &dyn Store,
    storage: &Storage,
    done: &AtomicU64,
    base_ms: i64,
) -> Result<PurgeResult> {
    let window_began = Instant::now();
    let before = done.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(BEFORE_PURGE_S)).await;
    let at_purge = done.load(Ordering::Relaxed);
    let workload_before_per_sec = (at_purge - before) as f64 / window_began.elapsed().as_secs_f64();
    let mut reports = vec![storage_report(storage, "before the purge".into()).await?];
    // Only the filled instances: the workload's own finish in real time, long after these.
    let filter = sluice_store::PurgeFilter {
        statuses: Vec::new(),
        finished_before_ms: base_ms + SPAN_MS + 86_400_000,
        name: None,
    };
    let began = Instant::now();
    let mut purged = 0u64;
    loop {
        let removed = store.purge_batch(&filter, PURGE_BATCH).await?;
        if removed == 0 {
            break;
        }
        purged += removed as u64;
    }
    let seconds = began.elapsed().as_secs_f64();
    let workload_during_per_sec = (done.load(Ordering::Relaxed) - at_purge) as f64 / seconds;
    reports.push(storage_report(storage, "right after the purge".into()).await?);
    tokio::time::sleep(Duration::from_secs(STORAGE_AGAIN_S)).await;
    reports.push(storage_report(storage, format!("{STORAGE_AGAIN_S} s after the purge")).await?);
    Ok(PurgeResult {
        storage: reports,
        purged,
        seconds,
        instances_per_sec: purged as f64 / seconds,
        batch: PURGE_BATCH,
        workload_before_per_sec,
        workload_during_per_sec,
        workload_change_pct: (workload_during_per_sec / workload_before_per_sec - 1.0) * 100.0,
    })
}

/// The SQL that fills the instances table: `{series}` yields `i` from 0 to n-1, `{id}` formats
/// an id from an integer expression; the rest is plain SQL both databases take.
fn fill_sql(
    series: &str,
    id: &dyn Fn(&str) -> String,
    table: &str,
    n: u64,
    base_ms: i64,
) -> String {
    let step = (SPAN_MS / i64::try_from(n.max(1)).unwrap_or(1)).max(1);
    let h = "((i * 2654435761) % 100)";
    let status = format!(
        "CASE WHEN {h} < 70 THEN 'completed' WHEN {h} < 80 THEN 'failed' \
         WHEN {h} < 82 THEN 'cancelled' WHEN {h} < 92 THEN 'running' \
         WHEN {h} < 99 THEN 'pending' ELSE 'quarantined' END"
    );
    let created = format!("({base_ms} + i * {step})");
    let finished = format!("CASE WHEN {h} < 82 THEN {created} + 5 + ((i * 37) % 3600000) END");
    let started = format!("CASE WHEN {h} BETWEEN 92 AND 98 THEN NULL ELSE {created} + 5 END");
    format!(
        "INSERT INTO {table} (instance_id, name, status, execution_id, input, output, failure,
             custom_status, created_at_ms, updated_at_ms, parent_id, started_at_ms, finished_at_ms)
         SELECT {id_i}, 'flow-' || (i % {NAMES}), {status}, 1, '{{}}',
             CASE WHEN {h} < 70 THEN '\"ok\"' END,
             CASE WHEN {h} BETWEEN 70 AND 81 OR {h} = 99
                  THEN '{{\"code\":\"boom\",\"message\":\"it failed\"}}' END,
             NULL, {created}, COALESCE({finished}, {started}, {created}),
             CASE WHEN i % 5 = 1 THEN {id_parent} END, {started}, {finished}
         FROM {series}",
        id_i = id("i"),
        id_parent = id("(i - 1)"),
    )
}

struct Opened {
    store: Arc<dyn Store>,
    fill_s: f64,
    storage: Storage,
    _keep: Box<dyn std::any::Any + Send>,
}

/// Where the store's tables are, to read what they take on disk.
enum Storage {
    Sqlite(std::path::PathBuf),
    Postgres { url: String, schema: String },
}

/// What the store's tables take: SQLite's pages (used and free), PostgreSQL's rows (live and
/// dead, as its statistics say) and bytes per table.
#[derive(Serialize)]
struct StorageReport {
    when: String,
    tables: Vec<TableStorage>,
}

#[derive(Serialize)]
struct TableStorage {
    table: String,
    live_rows: i64,
    dead_rows: i64,
    bytes: i64,
}

async fn storage_report(storage: &Storage, when: String) -> Result<StorageReport> {
    let tables = match storage {
        Storage::Sqlite(path) => {
            let connection = rusqlite::Connection::open(path)?;
            let pragma = |name: &str| -> Result<i64> {
                Ok(connection.query_row(&format!("PRAGMA {name}"), [], |row| row.get(0))?)
            };
            let (pages, free, page_size) = (
                pragma("page_count")?,
                pragma("freelist_count")?,
                pragma("page_size")?,
            );
            // SQLite keeps no dead rows: deleted rows' pages go to the free list, reused by
            // later writes; the file shrinks only by VACUUM (or incremental auto-vacuum).
            vec![
                TableStorage {
                    table: "(file: pages in use)".into(),
                    live_rows: pages - free,
                    dead_rows: 0,
                    bytes: (pages - free) * page_size,
                },
                TableStorage {
                    table: "(file: free pages)".into(),
                    live_rows: free,
                    dead_rows: 0,
                    bytes: free * page_size,
                },
            ]
        }
        Storage::Postgres { url, schema } => {
            let client = postgres::connect(url).await?;
            client
                .query(
                    "SELECT relname::text, n_live_tup, n_dead_tup,
                            pg_total_relation_size(relid)
                     FROM pg_stat_user_tables WHERE schemaname = $1 ORDER BY relname",
                    &[schema],
                )
                .await?
                .iter()
                .map(|row| TableStorage {
                    table: row.get(0),
                    live_rows: row.get(1),
                    dead_rows: row.get(2),
                    bytes: row.get(3),
                })
                .collect()
        }
    };
    Ok(StorageReport { when, tables })
}

/// The stored form of the filled history events.
const FILL_EVENT: &str = r#"{"type":"turn_started","now_ms":0}"#;

async fn open_sqlite(n: u64, events: u32, base_ms: i64) -> Result<Opened> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("control-plane.db");
    let store = SqliteStore::open(SqliteStoreOptions::new(Location::File(path.clone())))?;
    let began = Instant::now();
    let path_for_fill = path.clone();
    tokio::task::spawn_blocking(move || -> Result<()> {
        let connection = rusqlite::Connection::open(&path_for_fill)?;
        connection.busy_timeout(Duration::from_secs(30))?;
        let sql = fill_sql(
            "(WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < ?1)
               SELECT i FROM s)",
            &|expr| format!("printf('inst-%09d', {expr})"),
            "instances",
            n,
            base_ms,
        );
        connection.execute_batch("BEGIN")?;
        connection.execute(&sql, [i64::try_from(n)?])?;
        connection.execute(
            "WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < ?1),
                  e(p) AS (SELECT 0 UNION ALL SELECT p + 1 FROM e WHERE p + 1 < ?2)
             INSERT INTO history (instance_id, execution_id, position, event)
             SELECT printf('inst-%09d', i), 1, p, ?3 FROM s, e WHERE ?2 > 0",
            rusqlite::params![i64::try_from(n)?, events, FILL_EVENT],
        )?;
        connection.execute_batch("COMMIT")?;
        Ok(())
    })
    .await??;
    Ok(Opened {
        store: Arc::new(store),
        fill_s: began.elapsed().as_secs_f64(),
        storage: Storage::Sqlite(path),
        _keep: Box::new(dir),
    })
}

async fn open_postgres(url: Option<&str>, n: u64, events: u32, base_ms: i64) -> Result<Opened> {
    let server = postgres::Server::open(url).await?;
    let admin = postgres::connect(&server.url).await?;
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let schema = format!("sluice_cp_{millis}");
    let mut options = PostgresStoreOptions::new(&server.url)?;
    options.schema = schema.clone();
    options.pool_connections_max = 6;
    let store = PostgresStore::connect(options).await?;
    let began = Instant::now();
    let sql = fill_sql(
        &format!("generate_series(0::bigint, {n} - 1) AS s(i)"),
        &|expr| format!("'inst-' || lpad(({expr})::text, 9, '0')"),
        &format!("\"{schema}\".instances"),
        n,
        base_ms,
    );
    admin
        .batch_execute(&sql)
        .await
        .context("filling the store")?;
    admin
        .execute(
            &format!(
                "INSERT INTO \"{schema}\".history (instance_id, execution_id, position, event)
                 SELECT 'inst-' || lpad(i::text, 9, '0'), 1, p, $1
                 FROM generate_series(0::bigint, {n} - 1) AS s(i),
                      generate_series(0::bigint, {events}::bigint - 1) AS e(p)"
            ),
            &[&FILL_EVENT],
        )
        .await
        .context("filling the histories")?;
    // What autovacuum does within a minute or so of such a burst (the deltas table is
    // vacuumed after every 5,000 dead rows): folded deltas and fresh statistics.
    admin
        .batch_execute(&format!("SELECT \"{schema}\".compact_instance_counts()"))
        .await?;
    for table in ["instance_count_deltas", "instances", "history"] {
        admin
            .batch_execute(&format!("VACUUM ANALYZE \"{schema}\".{table}"))
            .await?;
    }
    Ok(Opened {
        store: Arc::new(store),
        fill_s: began.elapsed().as_secs_f64(),
        storage: Storage::Postgres {
            url: server.url.clone(),
            schema,
        },
        _keep: Box::new((server, admin)),
    })
}

/// The queries timed; each sample is one page (a cursor carries on to the next page, from the
/// start again at the end) or one count.
fn queries(base_ms: i64) -> Vec<(&'static str, InstanceFilter, InstanceOrder)> {
    let day = 86_400_000;
    let status = |statuses: &[InstanceStatus]| InstanceFilter {
        statuses: statuses.to_vec(),
        ..InstanceFilter::default()
    };
    vec![
        (
            "all_newest_first",
            InstanceFilter::default(),
            InstanceOrder::CreatedDesc,
        ),
        (
            "failed_newest_first",
            status(&[InstanceStatus::Failed]),
            InstanceOrder::CreatedDesc,
        ),
        (
            "running_or_pending_by_update",
            status(&[InstanceStatus::Running, InstanceStatus::Pending]),
            InstanceOrder::UpdatedDesc,
        ),
        (
            "quarantined_oldest_first",
            status(&[InstanceStatus::Quarantined]),
            InstanceOrder::CreatedAsc,
        ),
        (
            "one_name",
            InstanceFilter {
                name: Some("flow-3".into()),
                ..InstanceFilter::default()
            },
            InstanceOrder::CreatedDesc,
        ),
        (
            "one_name_failed",
            InstanceFilter {
                name: Some("flow-3".into()),
                statuses: vec![InstanceStatus::Failed],
                ..InstanceFilter::default()
            },
            InstanceOrder::CreatedDesc,
        ),
        (
            "created_in_one_day",
            InstanceFilter {
                created: TimeRange {
                    from_ms: Some(base_ms + 15 * day),
                    to_ms: Some(base_ms + 16 * day),
                },
                ..InstanceFilter::default()
            },
            InstanceOrder::CreatedDesc,
        ),
        (
            "finished_in_one_hour_by_update",
            InstanceFilter {
                finished: TimeRange {
                    from_ms: Some(base_ms + 20 * day),
                    to_ms: Some(base_ms + 20 * day + 3_600_000),
                },
                ..InstanceFilter::default()
            },
            InstanceOrder::UpdatedDesc,
        ),
        (
            "id_prefix",
            InstanceFilter {
                id_prefix: Some("inst-0001".into()),
                ..InstanceFilter::default()
            },
            InstanceOrder::CreatedDesc,
        ),
        (
            "children_of_one_parent",
            InstanceFilter {
                parent: Some("inst-000500000".into()),
                ..InstanceFilter::default()
            },
            InstanceOrder::CreatedDesc,
        ),
    ]
}

/// Keeps `in_flight` fan-out instances running until `stop`.
async fn workload(
    client: Client,
    in_flight: usize,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> (u64, u64) {
    let issued = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..in_flight)
        .map(|_| {
            let client = client.clone();
            let stop = stop.clone();
            let issued = issued.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let (mut completed, mut failed) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("load-{}", issued.fetch_add(1, Ordering::Relaxed));
                    let outcome = async {
                        client.start("fan_out", &id, "x").await?;
                        client
                            .wait_for_completion(&id, Duration::from_secs(60))
                            .await
                    }
                    .await;
                    match outcome {
                        Ok(info) if info.status == InstanceStatus::Completed => {
                            completed += 1;
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => failed += 1,
                    }
                }
                (completed, failed)
            })
        })
        .collect();
    let mut totals = (0, 0);
    for task in tasks {
        if let Ok((completed, failed)) = task.await {
            totals.0 += completed;
            totals.1 += failed;
        }
    }
    totals
}

pub async fn run(args: ControlPlaneBenchArgs) -> Result<std::process::ExitCode> {
    let base_ms = 1_700_000_000_000;
    eprintln!(
        "filling a {:?} store with {} instances...",
        args.target, args.instances
    );
    let opened = match args.target {
        Target::Sqlite => open_sqlite(args.instances, args.history_events, base_ms).await?,
        Target::Postgres => {
            open_postgres(
                args.pg_url.as_deref(),
                args.instances,
                args.history_events,
                base_ms,
            )
            .await?
        }
    };
    eprintln!("filled in {:.1} s", opened.fill_s);
    let store = opened.store.clone();
    let counted: u64 = store.count_by_status().await?.iter().map(|(_, n)| n).sum();
    anyhow::ensure!(
        counted == args.instances,
        "the counts say {counted} instances after filling {}",
        args.instances
    );
    let executions = Arc::new(AtomicU64::new(0));
    let registry = crate::register(sluice_runtime::Registry::new(), 0, executions);
    let runtime = Runtime::start(store.clone(), registry, RuntimeOptions::default())?;
    let stop = Arc::new(AtomicBool::new(false));
    let load_began = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let load = tokio::spawn(workload(
        runtime.client(),
        args.in_flight,
        stop.clone(),
        done.clone(),
    ));
    // Let the workload reach its pace before timing.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut results = Vec::new();
    for (name, filter, order) in queries(base_ms) {
        let mut latencies = Latencies::new();
        let mut rows = 0usize;
        let mut after = None;
        for _ in 0..args.samples {
            let query = InstanceQuery {
                filter: filter.clone(),
                order,
                page_size: PAGE,
                after: after.take(),
            };
            let began = Instant::now();
            let page = store.list_instances(&query).await?;
            latencies.record_ms(began.elapsed().as_secs_f64() * 1e3, 1);
            rows += page.instances.len();
            after = page.next;
        }
        results.push(summarise(
            name,
            &latencies,
            rows as f64 / args.samples.max(1) as f64,
            PAGE_P95_TARGET_MS,
        ));
    }
    let mut latencies = Latencies::new();
    for _ in 0..args.samples {
        let began = Instant::now();
        let counts = store.instance_counts().await?;
        latencies.record_ms(began.elapsed().as_secs_f64() * 1e3, 1);
        std::hint::black_box(counts);
    }
    results.push(summarise(
        "counts_by_status_and_name",
        &latencies,
        0.0,
        COUNTS_P95_TARGET_MS,
    ));
    let purge = if args.purge {
        Some(purge_phase(store.as_ref(), &opened.storage, &done, base_ms).await?)
    } else {
        None
    };
    let retention = if args.retention {
        Some(
            retention_phase(
                &store,
                &done,
                args.retention_batch,
                args.retention_busy_percent,
            )
            .await?,
        )
    } else {
        None
    };
    stop.store(true, Ordering::Relaxed);
    let (completed, failures) = load.await?;
    let load_s = load_began.elapsed().as_secs_f64();
    runtime.shutdown(Duration::from_secs(5)).await;

    let report = Report {
        target: args.target,
        instances: args.instances,
        fill_s: opened.fill_s,
        in_flight: args.in_flight,
        workload_completed_per_sec: completed as f64 / load_s,
        workload_failures: failures,
        queries: results,
        purge,
        retention,
        machine: crate::host::machine(),
    };
    print_report(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn summarise(query: &'static str, latencies: &Latencies, rows: f64, target: f64) -> QueryResult {
    let latency_ms = latencies.summary().unwrap_or(LatencyMs {
        p50: 0.0,
        p90: 0.0,
        p99: 0.0,
        max: 0.0,
    });
    let p95_ms = latencies.quantile_ms(0.95).unwrap_or(0.0);
    QueryResult {
        query,
        samples: latencies.count(),
        latency_ms,
        p95_ms,
        rows_per_page_mean: rows,
        target_p95_ms: target,
        met: p95_ms < target,
    }
}

fn print_storage(report: &StorageReport) {
    println!("  storage {}:", report.when);
    for table in &report.tables {
        println!(
            "    {:<28} {:>10} live {:>10} dead {:>8.1} MB",
            table.table,
            table.live_rows,
            table.dead_rows,
            table.bytes as f64 / 1e6
        );
    }
}

fn print_purge(purge: &PurgeResult) {
    println!(
        "purge: {} finished instances in {:.1} s ({:.0}/s, batches of {}); the workload ran at \
         {:.1}/s before and {:.1}/s during ({:+.1}%)",
        purge.purged,
        purge.seconds,
        purge.instances_per_sec,
        purge.batch,
        purge.workload_before_per_sec,
        purge.workload_during_per_sec,
        purge.workload_change_pct
    );
    for report in &purge.storage {
        print_storage(report);
    }
}

fn print_retention(retention: &RetentionResult) {
    let paces: Vec<String> = retention
        .windows
        .iter()
        .map(|w| {
            format!(
                "{} {:.1}/s",
                if w.retention { "on" } else { "off" },
                w.workload_per_sec
            )
        })
        .collect();
    println!(
        "retention (batches of {}, at most {}% busy): purged {} ({:.0}/s while on); the workload \
         ran at {:.1}/s without and {:.1}/s with it ({:+.1}%); windows of {} s: {}",
        retention.batch_instances_max,
        retention.busy_percent_max,
        retention.purged,
        retention.purged_per_sec_while_on,
        retention.workload_without_per_sec,
        retention.workload_with_per_sec,
        retention.workload_change_pct,
        RETENTION_WINDOW_S,
        paces.join(", ")
    );
}

fn print_report(report: &Report) {
    if let Some(retention) = &report.retention {
        print_retention(retention);
    }
    if let Some(purge) = &report.purge {
        print_purge(purge);
    }
    println!(
        "control plane [{:?}]: {} instances (filled in {:.1} s), while {} fan-out instances ran \
         ({:.1} completed/s, {} failed)",
        report.target,
        report.instances,
        report.fill_s,
        report.in_flight,
        report.workload_completed_per_sec,
        report.workload_failures
    );
    println!("  {}", report.machine);
    println!(
        "| query | samples | rows/page | p50 ms | p95 ms | p99 ms | max ms | target p95 | met |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for q in &report.queries {
        println!(
            "| {} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | < {} ms | {} |",
            q.query,
            q.samples,
            q.rows_per_page_mean,
            q.latency_ms.p50,
            q.p95_ms,
            q.latency_ms.p99,
            q.latency_ms.max,
            q.target_p95_ms,
            if q.met { "yes" } else { "no" }
        );
    }
}
