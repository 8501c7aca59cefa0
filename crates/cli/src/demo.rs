//! `sluice demo`: starts sample orders on an embedded SQLite file and reports how they ended.
//! Interrupted (Ctrl-C, or a kill) and run again, it resumes: instances are started by id, so a
//! re-run never duplicates one, and unfinished ones continue from their history.

use crate::workflows::{APPROVAL_LIMIT_CENTS, Line, Order, registry};
use crate::{SyncMode, open_sqlite};
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sluice_runtime::{Client, InstanceStatus, Runtime, RuntimeOptions};
use sluice_store::Store;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Options of `sluice demo`.
#[derive(clap::Args, Debug)]
pub(crate) struct DemoArgs {
    /// The SQLite database file (created if missing), unless --store is given.
    #[arg(long, default_value = "sluice-demo.db")]
    db: PathBuf,
    /// A store by URL instead: `postgres://user:password@host/database` (shared with any
    /// `sluice worker` processes on it, which then take part of the work) or `sqlite://PATH`.
    #[arg(long)]
    store: Option<String>,
    /// The PostgreSQL schema, with --store postgres://.
    #[arg(long, default_value = "sluice")]
    schema: String,
    /// Orders to run (ids order-0 .. order-N-1; existing ones are resumed, not restarted).
    #[arg(long, default_value_t = 200)]
    orders: u32,
    /// Orchestration turns processed at the same time (default: the runtime's).
    #[arg(long, default_value_t = sluice_runtime::RuntimeOptions::default().orchestration_concurrency)]
    orch_concurrency: usize,
    /// Activities run at the same time (default: the runtime's).
    #[arg(long, default_value_t = sluice_runtime::RuntimeOptions::default().activity_concurrency)]
    activity_concurrency: usize,
    /// How long large orders wait for an approval before they are rejected.
    #[arg(long, default_value_t = 500)]
    approval_timeout_ms: u64,
    /// Commit durability.
    #[arg(long, value_enum, default_value = "full")]
    synchronous: SyncMode,
    /// Delete the database first.
    #[arg(long)]
    fresh: bool,
}

/// A deterministic order for id `k`: a mix of small, large (approval needed), and refused ones.
fn order_for(k: u32, approval_timeout_ms: u64) -> Order {
    let lines = (0..1 + k % 3)
        .map(|i| Line {
            sku: format!("sku-{}", (k * 7 + i) % 50),
            quantity: 1 + (k + i) % 4,
        })
        .collect();
    Order {
        lines,
        total_cents: u64::from((k.wrapping_mul(7919)) % 1000) * 60,
        card_accepts: k % 10 != 7,
        approval_timeout_ms,
    }
}

/// What the demo's approver decides for a large order: most are approved, some rejected, and
/// some never answered (they time out).
fn approval_for(k: u32) -> Option<&'static str> {
    match k % 5 {
        0 => None,
        1 => Some("reject"),
        _ => Some("approve"),
    }
}

struct Finished {
    status: InstanceStatus,
    failure_code: Option<String>,
    latency: Option<Duration>,
}

pub(crate) async fn run(args: DemoArgs) -> Result<ExitCode> {
    if args.fresh && args.store.is_none() {
        for suffix in ["", "-wal", "-shm"] {
            let path = PathBuf::from(format!("{}{suffix}", args.db.display()));
            if path.exists() {
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
    }
    let (store, described) = match &args.store {
        Some(url) => {
            let (store, described, _) = crate::worker::open_store(url, &args.schema, 5).await?;
            (store, described)
        }
        None => (
            open_sqlite(&args.db, args.synchronous)? as std::sync::Arc<dyn Store>,
            format!("{} (synchronous={:?})", args.db.display(), args.synchronous),
        ),
    };
    let options = RuntimeOptions {
        orchestration_concurrency: args.orch_concurrency,
        activity_concurrency: args.activity_concurrency,
        ..RuntimeOptions::default()
    };
    let runtime = Runtime::start(store.clone(), registry(), options)?;
    let client = runtime.client();
    println!(
        "sluice demo: {} orders on {described}; Ctrl-C to interrupt, run again to resume",
        args.orders,
    );

    let began = Instant::now();
    let progress = ProgressBar::new(u64::from(args.orders));
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} orders finished ({per_sec}) {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    // On a terminal the bar redraws itself; otherwise print a plain line every two seconds.
    let plain_progress = (!std::io::stderr().is_terminal()).then(|| {
        let progress = progress.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                eprintln!(
                    "progress: {}/{} orders finished",
                    progress.position(),
                    progress.length().unwrap_or(0)
                );
            }
        })
    });
    let (started, resumed, waiters) = start_orders(&client, &args, &progress).await?;

    let work = async {
        let mut finished = Vec::with_capacity(waiters.len());
        for waiter in waiters {
            finished.push(waiter.await.context("waiter task")??);
        }
        anyhow::Ok(finished)
    };
    let finished = tokio::select! {
        finished = work => finished?,
        _ = tokio::signal::ctrl_c() => {
            progress.abandon_with_message("interrupted");
            runtime.shutdown(Duration::from_secs(5)).await;
            println!("\ninterrupted after {:.1} s; run `sluice demo` again to resume", began.elapsed().as_secs_f64());
            print_totals(store.as_ref()).await?;
            return Ok(ExitCode::from(130));
        }
    };
    progress.finish_and_clear();
    if let Some(task) = plain_progress {
        task.abort();
    }
    let elapsed = began.elapsed();
    runtime.shutdown(Duration::from_secs(5)).await;
    summarise(&finished, started, resumed, elapsed);
    print_totals(store.as_ref()).await?;
    Ok(ExitCode::SUCCESS)
}

type Waiter = tokio::task::JoinHandle<Result<Finished>>;

/// Starts the orders that do not exist yet (signal-with-start delivers an approval decision
/// atomically with the start), and returns one waiter per order.
async fn start_orders(
    client: &Client,
    args: &DemoArgs,
    progress: &ProgressBar,
) -> Result<(u32, u32, Vec<Waiter>)> {
    let (mut started, mut resumed) = (0, 0);
    let mut waiters = Vec::with_capacity(args.orders as usize);
    for k in 0..args.orders {
        let id = format!("order-{k}");
        let existing = client.status(&id).await?;
        let start_time = Instant::now();
        let fresh = match existing {
            Some(info) if info.status.is_terminal() => {
                progress.inc(1);
                waiters.push(tokio::spawn(async move {
                    Ok(Finished {
                        status: info.status,
                        failure_code: info.failure.map(|f| f.code),
                        latency: None,
                    })
                }));
                continue;
            }
            Some(_) => {
                resumed += 1;
                false
            }
            None => {
                let order = order_for(k, args.approval_timeout_ms);
                let input = serde_json::to_string(&order)?;
                match approval_for(k).filter(|_| order.total_cents > APPROVAL_LIMIT_CENTS) {
                    Some(decision) => {
                        client
                            .signal_with_start("order", &id, input, "approval", decision)
                            .await?
                    }
                    None => {
                        client.start("order", &id, input).await?;
                    }
                }
                started += 1;
                true
            }
        };
        let client = client.clone();
        let progress = progress.clone();
        waiters.push(tokio::spawn(async move {
            let info = client
                .wait_for_completion(&id, Duration::from_secs(3600))
                .await?;
            progress.inc(1);
            Ok(Finished {
                status: info.status,
                failure_code: info.failure.map(|f| f.code),
                latency: fresh.then(|| start_time.elapsed()),
            })
        }));
    }
    Ok((started, resumed, waiters))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn summarise(finished: &[Finished], started: u32, resumed: u32, elapsed: Duration) {
    let completed = finished
        .iter()
        .filter(|f| f.status == InstanceStatus::Completed)
        .count();
    let failed = finished
        .iter()
        .filter(|f| f.status == InstanceStatus::Failed)
        .count();
    let mut codes: BTreeMap<&str, usize> = BTreeMap::new();
    for code in finished.iter().filter_map(|f| f.failure_code.as_deref()) {
        *codes.entry(code).or_default() += 1;
    }
    let mut latencies: Vec<Duration> = finished.iter().filter_map(|f| f.latency).collect();
    latencies.sort();
    let this_run = latencies.len();
    println!(
        "orders: {} ({started} started now, {resumed} resumed, {} finished earlier)",
        finished.len(),
        finished.len() - started as usize - resumed as usize
    );
    println!("completed: {completed}   failed: {failed}   failures by code: {codes:?}");
    println!(
        "throughput: {:.1} orders/s over {:.2} s (each order runs 1 + lines sub-orchestrations)",
        (this_run as f64 + resumed as f64) / elapsed.as_secs_f64().max(1e-9),
        elapsed.as_secs_f64()
    );
    if this_run > 0 {
        println!(
            "latency from start to observed completion (orders started now): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            percentile(&latencies, 50.0).as_secs_f64() * 1e3,
            percentile(&latencies, 99.0).as_secs_f64() * 1e3,
            latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        );
    }
}

async fn print_totals(store: &dyn Store) -> Result<()> {
    let counts = store.count_by_status().await?;
    let text: Vec<String> = counts
        .iter()
        .map(|(status, n)| format!("{} {n}", status.as_str()))
        .collect();
    println!(
        "database totals (orders and sub-orchestrations): {}",
        text.join(", ")
    );
    Ok(())
}
