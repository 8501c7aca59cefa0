//! `sluice bench orchestrations`: the reference's stress workload, closed loop.
//!
//! Each orchestration fans out five activities in parallel and joins them; each activity
//! sleeps `--activity-ms` and returns a short string. `--in-flight` client tasks each start an
//! instance, wait for it (woken by the finishing commit), and start the next, until the
//! duration (or `--count`) is reached.

use anyhow::{Context, Result};
use serde::Serialize;
use sluice_runtime::{
    ActivityContext, Client, Failure, InstanceStatus, OrchestrationContext, Registry, Runtime,
    RuntimeOptions,
};
use sluice_sink_postgres::tokio_postgres;
use sluice_store::Store;
use sluice_store_postgres::{PostgresStore, PostgresStoreOptions};
use sluice_store_sqlite::{Location, SqliteStore, SqliteStoreOptions, Synchronous};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::stats::{Latencies, LatencyMs};
use crate::{SyncMode, host, postgres};

/// Where the benchmark keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum StoreKind {
    /// A SQLite file in a fresh temporary directory (or `--db`).
    SqliteFile,
    /// An in-memory SQLite database.
    SqliteMemory,
    /// PostgreSQL: `--pg-url`, or (feature `throwaway-postgres`) a throwaway cluster.
    Postgres,
}

/// Options of `sluice bench orchestrations`.
#[derive(clap::Args, Debug, Clone)]
pub struct OrchestrationBenchArgs {
    /// The store.
    #[arg(long, value_enum, default_value = "sqlite-file")]
    store: StoreKind,
    /// Orchestration turns processed at the same time (default: the runtime's).
    #[arg(long, default_value_t = sluice_runtime::RuntimeOptions::default().orchestration_concurrency)]
    orch_concurrency: usize,
    /// Activities run at the same time (default: the runtime's).
    #[arg(long, default_value_t = sluice_runtime::RuntimeOptions::default().activity_concurrency)]
    activity_concurrency: usize,
    /// How long each activity sleeps, in milliseconds.
    #[arg(long, default_value_t = 10)]
    activity_ms: u64,
    /// Instances kept running at once (closed loop).
    #[arg(long, default_value_t = 20)]
    in_flight: usize,
    /// Run length in seconds (ignored with --count).
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Stop after this many completed instances instead of after --duration.
    #[arg(long)]
    count: Option<u64>,
    /// Commit durability.
    #[arg(long, value_enum, default_value = "full")]
    synchronous: SyncMode,
    /// Run the reference's four configurations (memory and file, 1/1 and 2/2) as one table.
    #[arg(long)]
    seed_table: bool,
    /// Database file for --store sqlite-file (default: a fresh temporary file).
    #[arg(long)]
    db: Option<PathBuf>,
    /// PostgreSQL URL for --store postgres; required unless the binary was built with the
    /// `throwaway-postgres` feature, which then starts a throwaway cluster of the machine's
    /// PostgreSQL. The store's tables go to a fresh schema.
    #[arg(long)]
    pg_url: Option<String>,
    /// Pooled connections of the PostgreSQL store (plus one for its listener).
    #[arg(long, default_value_t = 5)]
    pg_connections: usize,
    /// PostgreSQL: run the orchestrations and activities in this many `sluice worker`
    /// processes (each with --orch-concurrency, --activity-concurrency and --pg-connections);
    /// this process then only starts instances (--in-flight in all) and observes their
    /// completions. 0: in this process.
    #[arg(long, default_value_t = 0)]
    processes: usize,
    /// Also run the same configuration on a SQLite file in this process, after the first, for
    /// a baseline measured in the same run.
    #[arg(long)]
    with_sqlite: bool,
    /// The orchestration each instance runs: `fan-out` (five activities, joined) or `ping`
    /// (no activity: one turn; with `--processes 1 --in-flight 1` its latency is a round
    /// trip between processes: the start's wake-up, the turn, the completion's wake-up).
    #[arg(long, value_enum, default_value = "fan-out")]
    orchestration: BenchOrchestration,
    /// Pause of each client task between an instance's completion and its next start, in
    /// milliseconds (0: none). With `--processes 1 --in-flight 1 --orchestration ping`, 20 ms
    /// measures an idle pickup: no process has sent a wake-up within NOTIFY's 10 ms
    /// coalescing window when the next start is announced.
    #[arg(long, default_value_t = 0)]
    think_ms: u64,
    /// Write the results as JSON (an array of one object per configuration).
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The benchmark's orchestrations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum BenchOrchestration {
    /// Five activities in parallel, joined.
    FanOut,
    /// Returns its input in its first turn.
    Ping,
}

impl BenchOrchestration {
    fn name(self) -> &'static str {
        match self {
            BenchOrchestration::FanOut => "fan_out",
            BenchOrchestration::Ping => "ping",
        }
    }

    fn activities(self) -> usize {
        match self {
            BenchOrchestration::FanOut => FAN_OUT,
            BenchOrchestration::Ping => 0,
        }
    }
}

/// One configuration's figures; the JSON keys are part of the benchmark's contract.
#[derive(Debug, Serialize)]
pub(crate) struct BenchResult {
    config: serde_json::Value,
    orchestrations_per_sec: f64,
    activities_per_sec: f64,
    activity_executions: u64,
    logical_activities: u64,
    latency_ms: LatencyMs,
    success_rate: f64,
    failures: BTreeMap<String, u64>,
    lock_errors: u64,
    db_bytes_per_orchestration: Option<f64>,
    ceiling_orchestrations_per_sec: Option<f64>,
    share_of_ceiling: Option<f64>,
    peak_rss_mb: Option<f64>,
    /// The raw limit of the disk under the database, measured just before the run: single-row
    /// transactions per second with the same durability (file stores only).
    raw_commits_per_sec: Option<f64>,
    /// Orchestrations per raw commit: how much group commit and batching multiply the disk.
    orchestrations_per_raw_commit: Option<f64>,
    /// PostgreSQL: committed transactions of the database per completed orchestration
    /// (`pg_stat_database.xact_commit`, the benchmark's own few included).
    pg_commits_per_orchestration: Option<f64>,
    /// PostgreSQL: WAL bytes per completed orchestration (`pg_current_wal_lsn` before and
    /// after).
    pg_wal_bytes_per_orchestration: Option<f64>,
    /// With `--processes`: each worker process's part of the activity executions.
    process_shares: Option<Vec<crate::processes::ProcessShare>>,
    completed: u64,
    elapsed_sec: f64,
}

const FAN_OUT: usize = 5;

async fn fan_out(ctx: OrchestrationContext, input: String) -> Result<String, Failure> {
    let calls = (0..FAN_OUT)
        .map(|i| ctx.schedule_activity("work", format!("{input}-{i}")))
        .collect();
    let mut total = 0;
    for result in ctx.join(calls).await {
        total += result?.len();
    }
    Ok(total.to_string())
}

fn registry(activity_ms: u64, executions: Arc<AtomicU64>) -> Registry {
    register(Registry::new(), activity_ms, executions)
}

/// Adds the benchmark's orchestration (`fan_out`) and activity (`work`) to `registry`.
pub fn register(registry: Registry, activity_ms: u64, executions: Arc<AtomicU64>) -> Registry {
    registry
        .orchestration("fan_out", fan_out)
        .orchestration(
            "ping",
            |_ctx: OrchestrationContext, input: String| async move { Ok::<_, Failure>(input) },
        )
        .activity("work", move |_ctx: ActivityContext, input: String| {
            let executions = executions.clone();
            async move {
                executions.fetch_add(1, Ordering::Relaxed);
                if activity_ms > 0 {
                    // tokio's timer rounds sleeps up to the next millisecond tick (a 10 ms sleep
                    // takes 10-11 ms), which alone would cap any runtime near 93% of the
                    // ceiling; a thread sleep on the blocking pool is accurate to ~0.1 ms.
                    let pause = Duration::from_millis(activity_ms);
                    tokio::task::spawn_blocking(move || std::thread::sleep(pause))
                        .await
                        .map_err(|e| Failure::new("bench", e.to_string()))?;
                }
                Ok(format!("done {input}"))
            }
        })
}

pub async fn run(args: OrchestrationBenchArgs) -> Result<std::process::ExitCode> {
    let configs: Vec<OrchestrationBenchArgs> = if args.seed_table {
        [
            (StoreKind::SqliteMemory, 1),
            (StoreKind::SqliteMemory, 2),
            (StoreKind::SqliteFile, 1),
            (StoreKind::SqliteFile, 2),
        ]
        .into_iter()
        .map(|(store, concurrency)| OrchestrationBenchArgs {
            store,
            orch_concurrency: concurrency,
            activity_concurrency: concurrency,
            activity_ms: 10,
            in_flight: 20,
            seed_table: false,
            ..args.clone()
        })
        .collect()
    } else if args.with_sqlite {
        vec![
            args.clone(),
            OrchestrationBenchArgs {
                store: StoreKind::SqliteFile,
                processes: 0,
                ..args.clone()
            },
        ]
    } else {
        vec![args.clone()]
    };
    if args.processes > 0 && args.store != StoreKind::Postgres {
        anyhow::bail!("--processes needs --store postgres (a SQLite store has one process)");
    }
    let mut results = Vec::new();
    for config in configs {
        let result = run_one(&config).await?;
        print_result(&result);
        results.push(result);
    }
    if results.len() > 1 {
        print_table(&results);
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// The store under test and what measures it.
enum BenchStore {
    Sqlite(Arc<SqliteStore>),
    Postgres {
        store: Arc<PostgresStore>,
        admin: Box<tokio_postgres::Client>,
        url: String,
        schema: String,
        _server: postgres::Server,
    },
}

impl BenchStore {
    fn store(&self) -> Arc<dyn Store> {
        match self {
            BenchStore::Sqlite(store) => store.clone(),
            BenchStore::Postgres { store, .. } => store.clone(),
        }
    }
}

/// PostgreSQL counters read before and after a run.
#[derive(Clone, Copy)]
struct PgCounters {
    commits: i64,
    wal_lsn_bytes: f64,
}

async fn pg_counters(admin: &tokio_postgres::Client) -> Result<PgCounters> {
    // Other sessions' statistics reach the view when they go idle, at most a second late.
    let row = admin
        .query_one(
            "SELECT xact_commit, pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8
             FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await?;
    Ok(PgCounters {
        commits: row.get(0),
        wal_lsn_bytes: row.get(1),
    })
}

/// Single-row transactions per second on one connection: what the server's commit path allows
/// without group commit.
async fn pg_raw_commits_per_sec(admin: &tokio_postgres::Client) -> Result<f64> {
    admin
        .batch_execute("CREATE TABLE IF NOT EXISTS sluice_bench_raw (v integer)")
        .await?;
    let commits = 500;
    let began = Instant::now();
    for v in 0..commits {
        admin
            .execute("INSERT INTO sluice_bench_raw (v) VALUES ($1)", &[&v])
            .await?;
    }
    admin.batch_execute("DROP TABLE sluice_bench_raw").await?;
    Ok(f64::from(commits) / began.elapsed().as_secs_f64())
}

async fn open_postgres(args: &OrchestrationBenchArgs) -> Result<BenchStore> {
    let server = postgres::Server::open(args.pg_url.as_deref()).await?;
    let url = server.url.clone();
    let admin = postgres::connect(&url).await?;
    let mut options = PostgresStoreOptions::new(&url)?;
    // A fresh schema per run, so runs against one database do not see each other's instances.
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    options.schema = format!("sluice_bench_{millis}");
    options.pool_connections_max = args.pg_connections;
    let schema = options.schema.clone();
    let store = PostgresStore::connect(options).await?;
    Ok(BenchStore::Postgres {
        store: Arc::new(store),
        admin: Box::new(admin),
        url,
        schema,
        _server: server,
    })
}

async fn run_one(args: &OrchestrationBenchArgs) -> Result<BenchResult> {
    let temp = tempfile::tempdir()?;
    let mut raw_limit = None;
    let bench_store = match args.store {
        StoreKind::Postgres => {
            let opened = open_postgres(args).await?;
            if let BenchStore::Postgres { admin, .. } = &opened {
                raw_limit = Some(pg_raw_commits_per_sec(admin).await?);
            }
            opened
        }
        StoreKind::SqliteFile | StoreKind::SqliteMemory => {
            let location = match args.store {
                StoreKind::SqliteFile => Location::File(
                    args.db
                        .clone()
                        .unwrap_or_else(|| temp.path().join("bench.db")),
                ),
                _ => Location::Memory,
            };
            let mut options = SqliteStoreOptions::new(location);
            options.synchronous = args.synchronous.synchronous();
            if let Location::File(path) = &options.location {
                let scratch = path.with_extension("raw-limit.db");
                let raw = raw_commits_per_sec(&scratch, options.synchronous);
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", scratch.display()));
                }
                raw_limit = Some(raw?);
            }
            BenchStore::Sqlite(Arc::new(SqliteStore::open(options)?))
        }
    };
    let store = bench_store.store();
    let pg_before = match &bench_store {
        BenchStore::Postgres { admin, .. } => {
            tokio::time::sleep(Duration::from_millis(1_100)).await;
            Some(pg_counters(admin).await?)
        }
        BenchStore::Sqlite(_) => None,
    };
    let executions = Arc::new(AtomicU64::new(0));
    let (runtime, workers, client) = match &bench_store {
        BenchStore::Postgres { url, schema, .. } if args.processes > 0 => {
            let spec = crate::processes::WorkerSpec {
                url,
                schema,
                orch_concurrency: args.orch_concurrency,
                activity_concurrency: args.activity_concurrency,
                activity_ms: args.activity_ms,
                pg_connections: args.pg_connections,
            };
            let workers = tokio::task::block_in_place(|| {
                crate::processes::Workers::start(args.processes, &spec)
            })?;
            let client = Client::new(store.clone(), RuntimeOptions::default().poll_interval);
            (None, Some(workers), client)
        }
        _ => {
            let runtime = Runtime::start(
                store.clone(),
                registry(args.activity_ms, executions.clone()),
                RuntimeOptions {
                    orchestration_concurrency: args.orch_concurrency,
                    activity_concurrency: args.activity_concurrency,
                    ..RuntimeOptions::default()
                },
            )?;
            let client = runtime.client();
            (Some(runtime), None, client)
        }
    };

    let started = Instant::now();
    let bytes_before = host::bytes_written();
    let deadline = started + Duration::from_secs(args.duration);
    let issued = Arc::new(AtomicU64::new(0));
    let rss_peak = Arc::new(std::sync::Mutex::new(
        host::status_mib("VmRSS").unwrap_or(0.0),
    ));
    let sampler = {
        let rss_peak = rss_peak.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Some(rss) = host::status_mib("VmRSS") {
                    let mut peak = rss_peak
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    *peak = peak.max(rss);
                }
            }
        })
    };
    let orchestration = args.orchestration.name();
    let think = Duration::from_millis(args.think_ms);
    let mut loops = Vec::new();
    for _ in 0..args.in_flight {
        let client = client.clone();
        let issued = issued.clone();
        let count = args.count;
        loops.push(tokio::spawn(async move {
            closed_loop(client, orchestration, think, issued, count, deadline).await
        }));
    }
    let mut latencies = Latencies::new();
    let mut completed = 0u64;
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    for handle in loops {
        let (lat, fails) = handle.await?;
        completed += lat.len() as u64;
        for ms in lat {
            latencies.record_ms(ms, 1);
        }
        for (kind, n) in fails {
            *failures.entry(kind).or_default() += n;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    sampler.abort();
    let bytes = match (bytes_before, host::bytes_written()) {
        (Some(before), Some(after)) if args.store == StoreKind::SqliteFile => Some(after - before),
        _ => None,
    };
    if let Some(runtime) = runtime {
        runtime.shutdown(Duration::from_secs(10)).await;
    }
    let process_shares = match workers {
        Some(workers) => {
            let shares = tokio::task::block_in_place(|| workers.stop())?;
            executions.store(
                shares.iter().map(|share| share.activity_executions).sum(),
                Ordering::Relaxed,
            );
            Some(shares)
        }
        None => None,
    };
    let busy_retries = match &bench_store {
        BenchStore::Sqlite(store) => store.writer_stats().busy_retries.load(Ordering::Relaxed),
        BenchStore::Postgres { .. } => 0,
    };
    let lock_errors = busy_retries
        + failures
            .iter()
            .filter(|(kind, _)| kind.contains("locked"))
            .map(|(_, n)| n)
            .sum::<u64>();
    let pg_delta = match (&bench_store, pg_before) {
        (BenchStore::Postgres { admin, .. }, Some(before)) => {
            tokio::time::sleep(Duration::from_millis(1_100)).await;
            let after = pg_counters(admin).await?;
            Some((
                (after.commits - before.commits) as f64,
                after.wal_lsn_bytes - before.wal_lsn_bytes,
            ))
        }
        _ => None,
    };
    drop(client);
    if let BenchStore::Postgres { admin, schema, .. } = &bench_store {
        // The run's tables: a later run must not pay for their autovacuum.
        admin
            .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .await
            .with_context(|| format!("dropping the run's schema {schema}"))?;
    }
    drop(store);
    drop(bench_store);

    let failed: u64 = failures.values().sum();
    let ceiling = (args.activity_ms > 0 && args.orchestration.activities() > 0).then(|| {
        (args.activity_concurrency * args.processes.max(1)) as f64 * 1000.0
            / args.activity_ms as f64
            / args.orchestration.activities().max(1) as f64
    });
    let per_sec = completed as f64 / elapsed;
    let peak_rss = *rss_peak
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Ok(BenchResult {
        config: serde_json::json!({
            "store": args.store,
            "orch_concurrency": args.orch_concurrency,
            "activity_concurrency": args.activity_concurrency,
            "activity_ms": args.activity_ms,
            "in_flight": args.in_flight,
            "duration_sec": args.duration,
            "count": args.count,
            "synchronous": format!("{:?}", args.synchronous).to_lowercase(),
            "processes": args.processes,
            "orchestration": args.orchestration,
            "think_ms": args.think_ms,
        }),
        orchestrations_per_sec: per_sec,
        activities_per_sec: per_sec * args.orchestration.activities() as f64,
        activity_executions: executions.load(Ordering::Relaxed),
        logical_activities: completed * args.orchestration.activities() as u64,
        latency_ms: latencies.summary().unwrap_or(LatencyMs {
            p50: 0.0,
            p90: 0.0,
            p99: 0.0,
            max: 0.0,
        }),
        success_rate: if completed + failed == 0 {
            0.0
        } else {
            completed as f64 / (completed + failed) as f64
        },
        failures,
        lock_errors,
        db_bytes_per_orchestration: bytes
            .filter(|_| completed > 0)
            .map(|b| b as f64 / completed as f64),
        ceiling_orchestrations_per_sec: ceiling,
        share_of_ceiling: ceiling.map(|c| per_sec / c),
        peak_rss_mb: (peak_rss > 0.0).then_some(peak_rss),
        raw_commits_per_sec: raw_limit,
        orchestrations_per_raw_commit: raw_limit.map(|raw| per_sec / raw),
        pg_commits_per_orchestration: pg_delta
            .filter(|_| completed > 0)
            .map(|(commits, _)| commits / completed as f64),
        pg_wal_bytes_per_orchestration: pg_delta
            .filter(|_| completed > 0)
            .map(|(_, wal)| wal / completed as f64),
        process_shares,
        completed,
        elapsed_sec: elapsed,
    })
}

/// Single-row write transactions per second on a scratch database beside the store, with the
/// same durability: what the disk allows without group commit.
fn raw_commits_per_sec(path: &std::path::Path, synchronous: Synchronous) -> Result<f64> {
    let options = sluice_sqlite::OpenOptions {
        synchronous,
        ..sluice_sqlite::OpenOptions::new(Location::File(path.to_path_buf()))
    };
    let connection = sluice_sqlite::open_connection(&options, false)?;
    connection.execute_batch("CREATE TABLE IF NOT EXISTS raw (v INTEGER)")?;
    let commits = 500;
    let began = Instant::now();
    for v in 0..commits {
        connection.execute_batch("BEGIN IMMEDIATE")?;
        connection.execute("INSERT INTO raw (v) VALUES (?1)", [v])?;
        connection.execute_batch("COMMIT")?;
    }
    Ok(f64::from(commits) / began.elapsed().as_secs_f64())
}

/// One client task: start, wait, repeat. Returns latencies (ms) of completed instances and
/// failures by kind.
async fn closed_loop(
    client: Client,
    orchestration: &'static str,
    think: Duration,
    issued: Arc<AtomicU64>,
    count: Option<u64>,
    deadline: Instant,
) -> (Vec<f64>, BTreeMap<String, u64>) {
    let mut latencies = Vec::new();
    let mut failures = BTreeMap::new();
    loop {
        let n = issued.fetch_add(1, Ordering::Relaxed);
        match count {
            Some(count) if n >= count => break,
            None if Instant::now() >= deadline => break,
            _ => {}
        }
        if !think.is_zero() {
            tokio::time::sleep(think).await;
        }
        let id = format!("bench-{n}");
        let began = Instant::now();
        let outcome = async {
            client.start(orchestration, &id, "x").await?;
            client
                .wait_for_completion(&id, Duration::from_secs(120))
                .await
        }
        .await;
        match outcome {
            Ok(info) if info.status == InstanceStatus::Completed => {
                latencies.push(began.elapsed().as_secs_f64() * 1e3)
            }
            Ok(info) => {
                let code = info
                    .failure
                    .map(|f| f.code)
                    .unwrap_or_else(|| info.status.as_str().to_string());
                *failures.entry(code).or_default() += 1;
            }
            Err(error) => *failures.entry(error.code().to_string()).or_default() += 1,
        }
    }
    (latencies, failures)
}

fn print_result(r: &BenchResult) {
    println!("config: {}", r.config);
    println!(
        "  {:.1} orchestrations/s, {:.1} activities/s, {} activity executions for {} logical, {} completed in {:.1} s",
        r.orchestrations_per_sec,
        r.activities_per_sec,
        r.activity_executions,
        r.logical_activities,
        r.completed,
        r.elapsed_sec
    );
    println!(
        "  latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        r.latency_ms.p50, r.latency_ms.p90, r.latency_ms.p99, r.latency_ms.max
    );
    println!(
        "  success {:.2}%  failures {:?}  lock errors {}  bytes/orchestration {}  peak RSS {} MB",
        r.success_rate * 100.0,
        r.failures,
        r.lock_errors,
        r.db_bytes_per_orchestration
            .map_or("n/a".to_string(), |b| format!("{b:.0}")),
        r.peak_rss_mb
            .map_or("n/a".to_string(), |m| format!("{m:.0}")),
    );
    if let (Some(raw), Some(ratio)) = (r.raw_commits_per_sec, r.orchestrations_per_raw_commit) {
        println!(
            "  raw limit {raw:.0} single-row commits/s on this disk; {ratio:.2} orchestrations per raw commit"
        );
    }
    if let (Some(commits), Some(wal)) = (
        r.pg_commits_per_orchestration,
        r.pg_wal_bytes_per_orchestration,
    ) {
        println!("  PostgreSQL: {commits:.2} commits and {wal:.0} WAL bytes per orchestration");
    }
    if let Some(shares) = &r.process_shares {
        crate::processes::print_shares(shares);
    }
    if let (Some(ceiling), Some(share)) = (r.ceiling_orchestrations_per_sec, r.share_of_ceiling) {
        println!(
            "  ceiling {ceiling:.1} orchestrations/s, achieved {:.1}%",
            share * 100.0
        );
    }
}

fn print_table(results: &[BenchResult]) {
    println!();
    println!(
        "| store | conc | orch/s | act/s | ceiling | share | p50 ms | p99 ms | success | lock errors | reference orch/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in results {
        let store = r.config["store"].as_str().unwrap_or("?");
        let conc = r.config["activity_concurrency"].as_u64().unwrap_or(0);
        let reference = match (store, conc) {
            ("sqlite-file", 1) => "15.9",
            ("sqlite-file", 2) => "23.3",
            ("sqlite-memory", 2) => "28.5",
            _ => "-",
        };
        println!(
            "| {store} | {conc}/{conc} | {:.1} | {:.1} | {:.1} | {:.1}% | {:.2} | {:.2} | {:.1}% | {} | {reference} |",
            r.orchestrations_per_sec,
            r.activities_per_sec,
            r.ceiling_orchestrations_per_sec.unwrap_or(0.0),
            r.share_of_ceiling.unwrap_or(0.0) * 100.0,
            r.latency_ms.p50,
            r.latency_ms.p99,
            r.success_rate * 100.0,
            r.lock_errors,
        );
    }
}
