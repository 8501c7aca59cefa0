//! `sluice worker` and `sluice migrate`: a process that hosts the demo's and the benchmark's
//! orchestrations and activities on a store that many such processes share.

use crate::{SyncMode, open_sqlite, workflows};
use anyhow::{Context, Result, bail};
use sluice_runtime::{Runtime, RuntimeOptions};
use sluice_store::Store;
use sluice_store_postgres::{PostgresStore, PostgresStoreOptions};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// Options of `sluice worker`.
#[derive(clap::Args, Debug)]
pub(crate) struct WorkerArgs {
    /// The store: `postgres://user:password@host/database` (shared by any number of workers on
    /// any number of machines) or `sqlite://PATH` (one process only).
    #[arg(long)]
    store: String,
    /// The PostgreSQL schema holding the store's tables.
    #[arg(long, default_value = "sluice")]
    schema: String,
    /// Orchestration turns processed at the same time (default: the runtime's).
    #[arg(long, default_value_t = sluice_runtime::RuntimeOptions::default().orchestration_concurrency)]
    orch_concurrency: usize,
    /// Activities run at the same time (default: the runtime's).
    #[arg(long, default_value_t = sluice_runtime::RuntimeOptions::default().activity_concurrency)]
    activity_concurrency: usize,
    /// How long the benchmark's activity sleeps, in milliseconds (as `bench orchestrations
    /// --activity-ms`).
    #[arg(long, default_value_t = 0)]
    activity_ms: u64,
    /// Pooled PostgreSQL connections (plus one for the wake-up listener).
    #[arg(long, default_value_t = 5)]
    pg_connections: usize,
    /// Lease of a claimed turn or work item, in milliseconds (renewed while it runs): how long
    /// a dead worker's work waits before another takes it over.
    #[arg(long, default_value_t = 5_000)]
    lease_ms: u64,
    /// A task queue whose activities this worker runs (repeat for several); `default` is the
    /// queue of activities scheduled without one. Default: only `default`.
    #[arg(long = "task-queue", value_name = "QUEUE")]
    task_queues: Vec<String>,
    /// Fallback poll interval in milliseconds (wake-ups normally come by LISTEN/NOTIFY).
    #[arg(long, default_value_t = 1_000)]
    poll_ms: u64,
    /// How long to keep trying to reach the store at start (PostgreSQL restarting, say), in
    /// seconds, before giving up.
    #[arg(long, default_value_t = 60)]
    startup_wait_secs: u64,
    /// How long running turns and activities get to finish after SIGTERM or Ctrl-C.
    #[arg(long, default_value_t = 10)]
    grace_secs: u64,
    /// When stopped, write what this worker ran (JSON: pid, activity executions) to this file
    /// (used by `sluice bench orchestrations --processes`).
    #[arg(long)]
    report: Option<std::path::PathBuf>,
    /// Purge finished instances older than this age (`30d`, `12h`) in the background, in small
    /// paced batches (any number of workers may do so on one PostgreSQL store). Default: keep
    /// everything.
    #[arg(long, value_name = "AGE", value_parser = crate::instances::parse_age)]
    retention: Option<Duration>,
}

/// Options of `sluice migrate`.
#[derive(clap::Args, Debug)]
pub(crate) struct MigrateArgs {
    /// The PostgreSQL store: `postgres://user:password@host/database`.
    #[arg(long)]
    store: String,
    /// The schema holding the store's tables.
    #[arg(long, default_value = "sluice")]
    schema: String,
}

/// Opens the store a URL names.
pub(crate) async fn open_store(
    url: &str,
    schema: &str,
    pg_connections: usize,
) -> Result<(Arc<dyn Store>, String, Option<Arc<PostgresStore>>)> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let mut options = PostgresStoreOptions::new(url)?;
        options.schema = schema.to_string();
        options.pool_connections_max = pg_connections;
        let target = options.target().to_string();
        let store = PostgresStore::connect(options)
            .await
            .with_context(|| format!("opening the PostgreSQL store on {target}"))?;
        let store = Arc::new(store);
        Ok((
            store.clone(),
            format!("postgres {target} schema {schema}"),
            Some(store),
        ))
    } else if let Some(path) = url.strip_prefix("sqlite://") {
        let store = open_sqlite(std::path::Path::new(path), SyncMode::Full)?;
        Ok((store, format!("sqlite {path}"), None))
    } else {
        bail!("--store must start with postgres://, postgresql:// or sqlite://")
    }
}

pub(crate) async fn run(args: WorkerArgs) -> Result<ExitCode> {
    // A database that is restarting or not up yet is waited for, with backoff.
    let deadline = std::time::Instant::now() + Duration::from_secs(args.startup_wait_secs);
    let mut backoff = Duration::from_millis(100);
    let (store, described, postgres) = loop {
        match open_store(&args.store, &args.schema, args.pg_connections).await {
            Ok(opened) => break opened,
            Err(error) if may_pass(&error) && std::time::Instant::now() + backoff < deadline => {
                eprintln!(
                    "sluice worker {}: {error:#}; retrying in {backoff:?}",
                    std::process::id()
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(error) => return Err(error),
        }
    };
    let executions = Arc::new(AtomicU64::new(0));
    let registry =
        sluice_bench::register(workflows::registry(), args.activity_ms, executions.clone());
    let runtime = Runtime::start(
        store,
        registry,
        RuntimeOptions {
            orchestration_concurrency: args.orch_concurrency,
            activity_concurrency: args.activity_concurrency,
            turn_lease: Duration::from_millis(args.lease_ms.max(1)),
            activity_lease: Duration::from_millis(args.lease_ms.max(1)),
            poll_interval: Duration::from_millis(args.poll_ms.max(1)),
            task_queues: if args.task_queues.is_empty() {
                vec![String::new()]
            } else {
                args.task_queues
                    .iter()
                    .map(|queue| {
                        if queue == "default" {
                            String::new()
                        } else {
                            queue.clone()
                        }
                    })
                    .collect()
            },
            retention: args
                .retention
                .map(sluice_runtime::RetentionPolicy::older_than),
            ..RuntimeOptions::default()
        },
    )?;
    eprintln!(
        "sluice worker {} on {described}: running (SIGTERM or Ctrl-C stops it)",
        std::process::id()
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("sluice worker {}: stopping", std::process::id());
    runtime.shutdown(Duration::from_secs(args.grace_secs)).await;
    if let Some(path) = &args.report {
        sluice_bench::write_report(
            path,
            &sluice_bench::WorkerReport {
                pid: std::process::id(),
                activity_executions: executions.load(std::sync::atomic::Ordering::Relaxed),
                refused_writes: postgres.as_ref().map(|store| store.refused_writes()),
            },
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether an error opening the store may go away by itself (the server unreachable or
/// restarting), unlike a bad URL, a refused password, TLS or a schema from a newer build.
fn may_pass(error: &anyhow::Error) -> bool {
    let Some(store) = error.downcast_ref::<sluice_store_postgres::PostgresStoreError>() else {
        return false;
    };
    let text = store.to_string();
    matches!(
        store.code(),
        "postgres.connect" | "postgres.pool" | "store.migrate"
    ) && !text.contains("password authentication failed")
        && !text.contains("does not exist")
}

pub(crate) async fn migrate(args: MigrateArgs) -> Result<ExitCode> {
    let (_, described, _) = open_store(&args.store, &args.schema, 1).await?;
    println!("{described}: schema up to date");
    Ok(ExitCode::SUCCESS)
}
