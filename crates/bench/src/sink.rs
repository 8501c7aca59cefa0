//! `sluice bench sink`: the database sink against the raw limit of its database (issue 6).
//!
//! Every scenario writes the same event row (id `bigint`, event time `timestamptz`, a 16-byte
//! UUID key, four `numeric`, a 40-byte text, a 200-byte JSON document), generated
//! deterministically from `--seed`: 4,096 template rows are built from the seed, and row `i` is
//! a clone of template `hash(seed, i) % 4096` with its own id and event time. Row-count
//! scenarios pre-generate all their rows before the clock starts; time-based scenarios
//! (`latency_under_load`, `checkpoint_overhead`, `memory`, `pool`) take them from a generator
//! thread ahead of the writer, so the writer only receives ready chunks (the thread still uses
//! CPU on this 2-core machine; its cost per row is printed at start).
//!
//! The raw limit is measured just before each row-count scenario on the same rows: PostgreSQL
//! binary `COPY` in one transaction on one connection (upserts: `COPY` into a temporary table
//! plus `INSERT ... ON CONFLICT` per transaction), SQLite one prepared statement in
//! transactions of 100,000 rows on a connection with the sink's settings (WAL,
//! `synchronous = FULL`, the sink's page size).
//!
//! Latency is per row, from the start of the `write` call that handed it over to the moment
//! the program learnt it was durable; how that moment is observed is printed per scenario
//! (`measured`): the return of the covering `flush()` in closed loops, the return of the
//! covering `pre_commit` + `commit` with exactly-once delivery, for at-least-once with one
//! flush lane a thread polling the sink's `rows_written` counter every 250 us (one lane writes
//! its batches in order, so row `n` is durable once the counter passes `n`), and with several
//! lanes the return of `Sink::wait_durable` called as each write returned (it does not hurry
//! the batches).

use crate::generate::EventRows;
use crate::stats::{Latencies, LatencyMs, median};
use crate::{host, postgres};
use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use sluice_sink::{
    Column, ColumnType, CreateTable, Delivery, Mode, Resume, Row, Schema, Sink, SinkBackend,
    SinkConfig, SinkConfigBuilder, SinkId, SinkStats, Value,
};
use sluice_sink_postgres::tokio_postgres::binary_copy::BinaryCopyInWriter;
use sluice_sink_postgres::tokio_postgres::{self, types::Type};
use sluice_sink_postgres::{APPLICATION_NAME, BinaryValue, PostgresBackend, PostgresSinkOptions};
use sluice_sink_sqlite::{Bind, Journal, SqliteBackend, SqliteSinkOptions};
use sluice_sqlite::Location;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// The database under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Target {
    /// A SQLite file per run in a temporary directory.
    Sqlite,
    /// PostgreSQL (`--pg-url`, or a throwaway cluster).
    Postgres,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Sqlite => "sqlite",
            Target::Postgres => "postgres",
        }
    }
}

/// A scenario of issue 6, or `all`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ScenarioArg {
    /// Every scenario that applies to the target.
    #[value(name = "all")]
    All,
    /// One writer, batches of 1,000, one flush lane.
    #[value(name = "single")]
    Single,
    /// Four writer tasks, four flush lanes.
    #[value(name = "multi4")]
    Multi4,
    /// Exactly-once with prepared transactions, a checkpoint every second (PostgreSQL).
    #[value(name = "two_phase")]
    TwoPhase,
    /// Exactly-once with the transactional marker, a checkpoint every second.
    #[value(name = "marker")]
    Marker,
    /// Upsert by id, half of the keys already in the table.
    #[value(name = "upsert")]
    Upsert,
    /// Closed loop: write one row, flush.
    #[value(name = "latency_single_row")]
    LatencySingleRow,
    /// Closed loop: write 1,000 rows, flush.
    #[value(name = "latency_batch_1000")]
    LatencyBatch1000,
    /// 80,000 events/s paced, at-least-once, 10 ms flush interval; one lane, then two.
    #[value(name = "latency_under_load")]
    LatencyUnderLoad,
    /// Maximum rate without checkpoints, with one every 10 s, with one every second.
    #[value(name = "checkpoint_overhead")]
    CheckpointOverhead,
    /// Peak resident memory at the maximum rate with default limits (in a child process).
    #[value(name = "memory")]
    Memory,
    /// Connection utilisation at 50,000 and 100,000 events/s (PostgreSQL).
    #[value(name = "pool")]
    Pool,
}

const ALL_SCENARIOS: [ScenarioArg; 11] = [
    ScenarioArg::Memory,
    ScenarioArg::Single,
    ScenarioArg::Multi4,
    ScenarioArg::Marker,
    ScenarioArg::TwoPhase,
    ScenarioArg::Upsert,
    ScenarioArg::LatencySingleRow,
    ScenarioArg::LatencyBatch1000,
    ScenarioArg::LatencyUnderLoad,
    ScenarioArg::CheckpointOverhead,
    ScenarioArg::Pool,
];

/// Options of `sluice bench sink`.
#[derive(clap::Args, Debug, Clone)]
pub struct SinkBenchArgs {
    /// The database.
    #[arg(long, value_enum)]
    target: Target,
    /// PostgreSQL to use. Required, unless the binary was built with the `throwaway-postgres`
    /// feature, which then starts a throwaway cluster (initdb + pg_ctl).
    #[arg(long)]
    pg_url: Option<String>,
    /// Scenarios, comma-separated, or `all`.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    scenario: Vec<ScenarioArg>,
    /// Rows of each row-count scenario (and of its raw-limit measurement).
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// Write the results as JSON (an array of one object per scenario).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Seed of the row generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Length of each time-based run (latency under load, checkpoint overhead, memory, pool).
    #[arg(long, default_value_t = 30)]
    duration_s: u64,
    /// Rounds of `checkpoint_overhead`: each runs at-least-once, the checkpointed runs (in an
    /// order rotated by one each round) and at-least-once again, and is judged against its own
    /// two baselines; the figures reported are the medians over the rounds (per-round figures
    /// in `detail.rounds`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// Rows per `write` call at the maximum rate.
    #[arg(long, default_value_t = 1_000)]
    chunk_rows: usize,
    /// Flush lanes of the scenarios that do not fix them (marker, two_phase, upsert,
    /// checkpoint_overhead).
    #[arg(long, default_value_t = 2)]
    flush_concurrency: usize,
    /// Operations of `latency_single_row`.
    #[arg(long, default_value_t = 2_000)]
    latency_ops: usize,
    /// `buffer_bytes_max` of the `memory` scenario (default: the sink's default, 16 MiB).
    #[arg(long)]
    memory_buffer_bytes: Option<usize>,
    /// Run `memory` in this process (used by the child process the benchmark starts).
    #[arg(long, hide = true)]
    in_process: bool,
    /// The journal of the SQLite databases (and of the raw limit's connection).
    #[arg(long, value_enum, default_value = "wal")]
    sqlite_journal: JournalArg,
}

/// `--sqlite-journal`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum JournalArg {
    /// Write-ahead log (the default).
    Wal,
    /// Rollback journal (`journal_mode = TRUNCATE`).
    Rollback,
}

impl JournalArg {
    fn journal(self) -> Journal {
        match self {
            JournalArg::Wal => Journal::Wal,
            JournalArg::Rollback => Journal::Rollback,
        }
    }
}

/// The sink's options for a SQLite file of a run.
fn sqlite_options(path: &Path, journal: Journal) -> SqliteSinkOptions {
    let mut options = SqliteSinkOptions::new(Location::File(path.into()));
    options.open.journal = journal;
    options
}

/// Rows per `write` call in paced runs.
const PACED_CHUNK_ROWS: usize = 100;
/// Rows per transaction of the raw SQLite limit.
const SQLITE_RAW_TXN_ROWS: usize = 100_000;
/// Rows per transaction and connections of the raw PostgreSQL upsert limit: each is tried, the
/// fastest counts.
const PG_RAW_UPSERT: [(usize, usize); 4] = [(10_000, 1), (100_000, 1), (10_000, 2), (100_000, 2)];
const COLUMNS: [&str; 9] = [
    "id",
    "event_time",
    "event_key",
    "amount",
    "price",
    "quantity",
    "fee",
    "label",
    "payload",
];
const PG_TYPES: [Type; 9] = [
    Type::INT8,
    Type::TIMESTAMPTZ,
    Type::UUID,
    Type::NUMERIC,
    Type::NUMERIC,
    Type::NUMERIC,
    Type::NUMERIC,
    Type::TEXT,
    Type::JSONB,
];

/// One scenario's figures; the first ten keys are the contract of issue 6.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ScenarioResult {
    scenario: String,
    target: String,
    rows: u64,
    events_per_sec: f64,
    limit_events_per_sec: Option<f64>,
    share_of_limit: Option<f64>,
    latency_ms: Option<LatencyMs>,
    peak_rss_mb: Option<f64>,
    checkpoint_overhead_pct: Option<f64>,
    pool_utilisation_pct: Option<f64>,
    /// This machine's target (issue 6) met: `yes`, `NO`, `unclear (...)`; null without one.
    #[serde(default)]
    target_met: Option<String>,
    elapsed_sec: f64,
    /// What the figures measure, in words.
    measured: String,
    config: serde_json::Value,
    detail: serde_json::Value,
}

// ---------------------------------------------------------------------------------------------
// Rows

fn schema(table: &str, keyed: bool) -> Result<Schema> {
    let column = |name: &str, column_type| Column::new(name, column_type);
    let columns = vec![
        column("id", ColumnType::I64)?.not_null(),
        column("event_time", ColumnType::TimestampTz)?.not_null(),
        column("event_key", ColumnType::Uuid)?.not_null(),
        column("amount", ColumnType::Decimal)?,
        column("price", ColumnType::Decimal)?,
        column("quantity", ColumnType::Decimal)?,
        column("fee", ColumnType::Decimal)?,
        column("label", ColumnType::Text)?,
        column("payload", ColumnType::Json)?,
    ];
    let key: &[&str] = if keyed { &["id"] } else { &[] };
    Ok(Schema::new(table, columns, key)?)
}

fn into_chunks(rows: Vec<Row>, chunk_rows: usize) -> Vec<Vec<Row>> {
    let mut chunks = Vec::with_capacity(rows.len().div_ceil(chunk_rows));
    let mut rows = rows.into_iter();
    loop {
        let chunk: Vec<Row> = rows.by_ref().take(chunk_rows).collect();
        if chunk.is_empty() {
            return chunks;
        }
        chunks.push(chunk);
    }
}

// ---------------------------------------------------------------------------------------------
// Raw limits

fn quoted_columns() -> String {
    COLUMNS
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn update_list(excluded: &str) -> String {
    COLUMNS[1..]
        .iter()
        .map(|c| format!("\"{c}\" = {excluded}.\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Binary COPY of `rows` into `table` on `client`'s current transaction.
async fn pg_copy_into(
    transaction: &tokio_postgres::Transaction<'_>,
    table: &str,
    rows: &[Row],
) -> Result<()> {
    let sql = format!(
        "COPY {table} ({}) FROM STDIN (FORMAT binary)",
        quoted_columns()
    );
    let sink = transaction.copy_in::<_, bytes::Bytes>(&sql).await?;
    let mut writer = std::pin::pin!(BinaryCopyInWriter::new(sink, &PG_TYPES));
    for row in rows {
        writer
            .as_mut()
            .write_raw(PgFields(row.values.iter()))
            .await?;
    }
    writer.as_mut().finish().await?;
    Ok(())
}

/// A row's values as COPY fields (a named iterator: `map(BinaryValue)` defeats the `Send` check of
/// a spawned caller through its higher-ranked lifetimes).
struct PgFields<'a>(std::slice::Iter<'a, Value>);

impl<'a> Iterator for PgFields<'a> {
    type Item = BinaryValue<'a>;

    fn next(&mut self) -> Option<BinaryValue<'a>> {
        self.0.next().map(BinaryValue)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl ExactSizeIterator for PgFields<'_> {}

/// The insert limit: one binary COPY of every row, one connection, one transaction.
async fn pg_raw_copy(url: &str, table: &str, rows: &[Row]) -> Result<Duration> {
    let mut client = postgres::connect(url).await?;
    let started = Instant::now();
    let transaction = client.transaction().await?;
    pg_copy_into(&transaction, &format!("\"{table}\""), rows).await?;
    transaction.commit().await?;
    Ok(started.elapsed())
}

/// The upsert limit: `connections` connections, each taking a contiguous share of the ids; per
/// transaction of `txn_rows`, COPY into a temporary table, then one `INSERT ... SELECT ... ON
/// CONFLICT (id) DO UPDATE`. Connecting and preparing happen before the clock starts.
async fn pg_raw_upsert(
    url: &str,
    table: &str,
    rows: &[Row],
    txn_rows: usize,
    connections: usize,
) -> Result<Duration> {
    let share = rows.len().div_ceil(connections);
    let ready = Arc::new(tokio::sync::Barrier::new(connections + 1));
    let mut tasks = Vec::new();
    for part in rows.chunks(share) {
        let (url, table, part, ready) = (
            url.to_string(),
            table.to_string(),
            part.to_vec(),
            ready.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut client = postgres::connect(&url).await?;
            let staging = format!("\"stage_{table}\"");
            client
                .batch_execute(&format!(
                    "CREATE TEMPORARY TABLE {staging} (LIKE \"{table}\") ON COMMIT DELETE ROWS"
                ))
                .await?;
            let merge = client
                .prepare(&format!(
                    "INSERT INTO \"{table}\" ({columns}) SELECT {columns} FROM {staging} \
                     ON CONFLICT (\"id\") DO UPDATE SET {updates}",
                    columns = quoted_columns(),
                    updates = update_list("EXCLUDED"),
                ))
                .await?;
            ready.wait().await;
            for part in part.chunks(txn_rows) {
                let transaction = client.transaction().await?;
                pg_copy_into(&transaction, &staging, part).await?;
                transaction.execute(&merge, &[]).await?;
                transaction.commit().await?;
            }
            anyhow::Ok(Instant::now())
        }));
    }
    ready.wait().await;
    let started = Instant::now();
    let mut finished = started;
    for task in tasks {
        finished = finished.max(task.await??);
    }
    Ok(finished.duration_since(started))
}

/// The SQLite limit: one prepared single-row statement, transactions of `txn_rows`, on a
/// connection opened with the sink's settings.
fn sqlite_raw(
    path: &Path,
    journal: Journal,
    rows: &[Row],
    txn_rows: usize,
    upsert: bool,
) -> Result<Duration> {
    let connection = sluice_sqlite::open_connection(&sqlite_options(path, journal).open, false)?;
    let placeholders = vec!["?"; COLUMNS.len()].join(", ");
    let mut sql = format!(
        "INSERT INTO \"events\" ({}) VALUES ({placeholders})",
        quoted_columns()
    );
    if upsert {
        sql.push_str(&format!(
            " ON CONFLICT (\"id\") DO UPDATE SET {}",
            update_list("excluded")
        ));
    }
    let mut statement = connection.prepare(&sql)?;
    let started = Instant::now();
    for part in rows.chunks(txn_rows) {
        connection.execute_batch("BEGIN IMMEDIATE")?;
        for row in part {
            statement.execute(rusqlite::params_from_iter(row.values.iter().map(Bind)))?;
        }
        connection.execute_batch("COMMIT")?;
    }
    Ok(started.elapsed())
}

// ---------------------------------------------------------------------------------------------
// Observation helpers

/// `(latency in ms, rows)` pairs.
/// Latency samples: when the write call started, its latency in milliseconds, and how many rows
/// the sample stands for.
type Weighted = Vec<(Instant, f64, u64)>;

/// One `write` call.
#[derive(Clone, Copy)]
struct ChunkRecord {
    start: Instant,
    end: Instant,
    rows: u64,
    /// When `Sink::wait_durable` called right after the write returned (observed runs).
    durable: Option<Instant>,
    /// How late the paced generator started this write (zero at the maximum rate).
    lag: Duration,
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn summarize(samples: &Weighted) -> Option<LatencyMs> {
    samples
        .iter()
        .map(|&(_, ms, rows)| (ms, rows))
        .collect::<Latencies>()
        .summary()
}

/// Per second of the run (by each write's start): the rows, their latency's p99 and maximum,
/// and the generator's largest pacing lag, so a spike can be put beside what the host and the
/// server were doing at that second (the PostgreSQL log, `uptime`).
fn timeline(samples: &Weighted, chunks: &[ChunkRecord], started: Instant) -> serde_json::Value {
    let second = |at: Instant| at.saturating_duration_since(started).as_secs() as usize;
    let seconds = chunks.last().map_or(0, |chunk| second(chunk.start) + 1);
    let mut latencies: Vec<Latencies> = (0..seconds).map(|_| Latencies::new()).collect();
    let mut lag = vec![Duration::ZERO; seconds];
    for &(at, ms, rows) in samples {
        if let Some(bucket) = latencies.get_mut(second(at)) {
            bucket.record_ms(ms, rows);
        }
    }
    for chunk in chunks {
        let slot = &mut lag[second(chunk.start)];
        *slot = (*slot).max(chunk.lag);
    }
    latencies
        .into_iter()
        .zip(lag)
        .enumerate()
        .map(|(second, (latencies, lag))| {
            let summary = latencies.summary();
            serde_json::json!({
                "second": second,
                "rows": latencies.count(),
                "p99_ms": summary.map(|s| s.p99),
                "max_ms": summary.map(|s| s.max),
                "pacing_lag_max_ms": ms(lag),
            })
        })
        .collect()
}

/// A chunk is covered by the first checkpoint (or final flush) called after its `write`
/// returned; a chunk whose `write` overlapped a checkpoint's call is counted in the next one,
/// so the figure is an upper bound.
fn latency_by_checkpoints(chunks: &[ChunkRecord], checkpoints: &[(Instant, Instant)]) -> Weighted {
    chunks
        .iter()
        .filter_map(|chunk| {
            let covering = checkpoints.partition_point(|(call, _)| *call < chunk.end);
            checkpoints.get(covering).map(|(_, done)| {
                (
                    chunk.start,
                    ms(done.duration_since(chunk.start)),
                    chunk.rows,
                )
            })
        })
        .collect()
}

/// Each chunk's rows are durable when the `wait_durable` called after its write returned.
fn latency_by_observers(chunks: &[ChunkRecord]) -> Weighted {
    chunks
        .iter()
        .filter_map(|chunk| {
            chunk.durable.map(|durable| {
                (
                    chunk.start,
                    ms(durable.duration_since(chunk.start)),
                    chunk.rows,
                )
            })
        })
        .collect()
}

/// With one writer and one lane, rows become durable in write order: row `n` is durable at the
/// first observation of `rows_written > n`.
fn latency_by_watch(chunks: &[ChunkRecord], observations: &[(Instant, u64)]) -> Weighted {
    let mut out = Vec::new();
    let (mut position, mut next) = (0u64, 0usize);
    for chunk in chunks {
        let end = position + chunk.rows;
        let mut at = position;
        while at < end {
            while next < observations.len() && observations[next].1 <= at {
                next += 1;
            }
            let Some((time, count)) = observations.get(next) else {
                break;
            };
            let upto = (*count).min(end);
            out.push((chunk.start, ms(time.duration_since(chunk.start)), upto - at));
            at = upto;
        }
        position = end;
    }
    out
}

/// Polls `rows_written + rows_dead_lettered` and keeps each change with its time.
struct Watcher {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(Instant, u64)>>,
}

impl Watcher {
    fn start(sink: Sink) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut observations = Vec::new();
            let mut last = 0;
            loop {
                let last_round = stopping.load(Ordering::SeqCst);
                let stats = sink.stats();
                let durable = stats.rows_written + stats.rows_dead_lettered;
                if durable != last {
                    observations.push((Instant::now(), durable));
                    last = durable;
                }
                if last_round {
                    return observations;
                }
                std::thread::sleep(Duration::from_micros(250));
            }
        });
        Watcher { stop, thread }
    }

    fn finish(self) -> Vec<(Instant, u64)> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap_or_default()
    }
}

/// Sums of samples of the sink's connections: executing a statement (`pg_stat_activity.state =
/// 'active'`, which includes a COMMIT waiting for its WAL flush), inside a transaction but
/// idle, open at all (server side), and checked out of the pool (client side); and of the lanes
/// the sink allowed to write at the same time (`SinkStats::flush_concurrency`).
#[derive(Debug, Default, Clone, Copy, Serialize)]
struct PoolSample {
    samples: u64,
    executing: u64,
    idle_in_transaction: u64,
    open: u64,
    checked_out: u64,
    flush_concurrency: u64,
}

/// The pool's samples over the whole run, and from `POOL_WARMUP` on (the steady state, once an
/// adaptive sink has settled on the connections the load needs).
#[derive(Debug, Default, Clone, Copy)]
struct PoolSamples {
    whole: PoolSample,
    steady: PoolSample,
}

/// Samples before this are left out of the steady-state pool utilisation: adaptive flush
/// concurrency starts at `flush_concurrency` and lowers it after two calm seconds, and the pool
/// closes a connection idle for `pool_idle_ms_max` (1 s).
const POOL_WARMUP: Duration = Duration::from_secs(5);

async fn sample_pool(
    url: String,
    pool: sluice_sink_postgres::deadpool_postgres::Pool,
    sink: Sink,
    mut stop: watch::Receiver<bool>,
) -> Result<PoolSamples> {
    let client = postgres::connect(&url).await?;
    let query = client
        .prepare(
            "SELECT count(*) FILTER (WHERE state = 'active'), \
                    count(*) FILTER (WHERE state LIKE 'idle in transaction%'), \
                    count(*) \
             FROM pg_stat_activity \
             WHERE application_name = $1 AND datname = current_database() \
               AND pid <> pg_backend_pid()",
        )
        .await?;
    let mut sums = PoolSamples::default();
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(5));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return Ok(sums),
        }
        let status = pool.status();
        let row = client.query_one(&query, &[&APPLICATION_NAME]).await?;
        let count = |i: usize| row.get::<_, i64>(i) as u64;
        let sample = PoolSample {
            samples: 1,
            executing: count(0),
            idle_in_transaction: count(1),
            open: count(2),
            checked_out: (status.size - status.available) as u64,
            flush_concurrency: sink.stats().flush_concurrency,
        };
        sums.whole.add(&sample);
        if started.elapsed() >= POOL_WARMUP {
            sums.steady.add(&sample);
        }
    }
}

/// `part` of `whole` in percent; none of nothing.
fn pct(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 * 100.0 / whole as f64)
}

impl PoolSample {
    fn add(&mut self, other: &PoolSample) {
        self.samples += other.samples;
        self.executing += other.executing;
        self.idle_in_transaction += other.idle_in_transaction;
        self.open += other.open;
        self.checked_out += other.checked_out;
        self.flush_concurrency += other.flush_concurrency;
    }

    /// Connections executing over connections open, in percent (`pool_utilisation_pct`).
    fn utilisation_pct(&self) -> Option<f64> {
        pct(self.executing, self.open)
    }

    /// The figures of `detail.pool`.
    fn describe(&self) -> serde_json::Value {
        let mean = |sum: u64| sum as f64 / self.samples.max(1) as f64;
        serde_json::json!({
            "samples": self.samples,
            "utilisation_pct": self.utilisation_pct(),
            "mean_open_connections": mean(self.open),
            "mean_executing": mean(self.executing),
            "mean_idle_in_transaction": mean(self.idle_in_transaction),
            "mean_checked_out": mean(self.checked_out),
            "mean_flush_concurrency": mean(self.flush_concurrency),
            "executing_pct_of_checked_out": pct(self.executing, self.checked_out),
            "in_transaction_pct_of_open": pct(self.executing + self.idle_in_transaction, self.open),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Runs

enum Backend {
    Sqlite(SqliteBackend),
    Postgres(PostgresBackend),
}

impl Backend {
    fn as_dyn(&self) -> &dyn SinkBackend {
        match self {
            Backend::Sqlite(backend) => backend,
            Backend::Postgres(backend) => backend,
        }
    }
}

// One value per run of the benchmark: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Db {
    Sqlite {
        dir: tempfile::TempDir,
        journal: Journal,
    },
    Postgres {
        url: String,
        admin: tokio_postgres::Client,
        _server: postgres::Server,
    },
}

/// Where a run's rows come from.
enum Feed {
    /// Ready chunks, split round-robin over the writers.
    Pre(Vec<Vec<Row>>),
    /// A generator thread, for `duration`, at the maximum rate or paced at `rate` rows/s.
    Generated {
        chunk_rows: usize,
        duration: Duration,
        rate: Option<f64>,
    },
}

struct RunPlan {
    table: String,
    keyed: bool,
    config: SinkConfig,
    writers: usize,
    feed: Feed,
    checkpoint_every: Option<Duration>,
    watch: bool,
    /// Call `flush` in a loop (at most one call per millisecond) to observe durability with
    /// several lanes.
    observe_writes: bool,
    sample_pool: bool,
    /// Checkpoints taken after the run with nothing buffered.
    empty_checkpoints: usize,
}

struct RunOutcome {
    rows: u64,
    elapsed: Duration,
    latency: Option<LatencyMs>,
    checkpoint_ms: Vec<f64>,
    empty_checkpoint_ms: Vec<f64>,
    pool: Option<PoolSamples>,
    stats: SinkStats,
    pacing_lag_max_ms: Option<f64>,
    /// PostgreSQL checkpoints (timed or requested by WAL volume) that started during the run.
    server_checkpoints: Option<i64>,
    /// Per second of the run: latency and pacing lag (see `timeline`); empty without latency.
    timeline: serde_json::Value,
}

/// A raw limit and how it was measured.
struct Limit {
    per_sec: f64,
    detail: serde_json::Value,
}

struct WriterReport {
    chunks: Vec<ChunkRecord>,
    lag_max: Option<Duration>,
}

async fn write_chunks(sink: Sink, chunks: Vec<Vec<Row>>) -> Result<WriterReport> {
    let mut records = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        let rows = chunk.len() as u64;
        let start = Instant::now();
        sink.write(chunk).await?;
        records.push(ChunkRecord {
            start,
            end: Instant::now(),
            rows,
            durable: None,
            lag: Duration::ZERO,
        });
    }
    Ok(WriterReport {
        chunks: records,
        lag_max: None,
    })
}

async fn write_generated(
    sink: Sink,
    generator: Arc<EventRows>,
    first_id: i64,
    (chunk_rows, duration, rate, observe): (usize, Duration, Option<f64>, bool),
    started: Instant,
) -> Result<WriterReport> {
    let mut observers = Vec::new();
    let (sender, mut receiver) = mpsc::channel::<Vec<Row>>(8);
    let thread = std::thread::spawn(move || {
        let mut id = first_id;
        loop {
            let chunk = generator.rows(id, chunk_rows, 1);
            id += chunk_rows as i64;
            if sender.blocking_send(chunk).is_err() {
                return;
            }
        }
    });
    let deadline = started + duration;
    let mut records = Vec::new();
    for k in 0u64.. {
        let due = match rate {
            Some(rate) => {
                let due = started + Duration::from_secs_f64((k * chunk_rows as u64) as f64 / rate);
                if due >= deadline {
                    break;
                }
                tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
                Some(due)
            }
            None if Instant::now() >= deadline => break,
            None => None,
        };
        let chunk = receiver
            .recv()
            .await
            .ok_or_else(|| anyhow!("the row generator stopped"))?;
        let start = Instant::now();
        let lag = due.map_or(Duration::ZERO, |due| start.saturating_duration_since(due));
        let rows = chunk.len() as u64;
        sink.write(chunk).await?;
        if observe {
            let sink = sink.clone();
            observers.push(tokio::spawn(async move {
                sink.wait_durable().await.map(|()| Instant::now())
            }));
        }
        records.push(ChunkRecord {
            start,
            end: Instant::now(),
            rows,
            durable: None,
            lag,
        });
    }
    drop(receiver);
    let _ = thread.join();
    for (record, observer) in records.iter_mut().zip(observers) {
        record.durable = Some(observer.await??);
    }
    // Paced runs only: the largest lag of any write (each record keeps its own).
    let lag_max = rate.map(|_| {
        records
            .iter()
            .map(|record| record.lag)
            .max()
            .unwrap_or_default()
    });
    Ok(WriterReport {
        chunks: records,
        lag_max,
    })
}

async fn checkpointer(
    sink: Sink,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> Result<(Vec<(Instant, Instant)>, u64)> {
    let mut records = Vec::new();
    let mut id = 1u64;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return Ok((records, id)),
        }
        let call = Instant::now();
        sink.pre_commit(id, &id.to_string()).await?;
        sink.commit(id).await?;
        records.push((call, Instant::now()));
        id += 1;
    }
}

struct Bench {
    args: SinkBenchArgs,
    db: Db,
    generator: Arc<EventRows>,
    /// Rows of the tables upserts find already there (other values than the generator's).
    preload_generator: EventRows,
    tables: AtomicUsize,
    /// The most recent raw insert limit, for scenarios that do not measure their own.
    last_limit: std::sync::Mutex<Option<f64>>,
}

impl Bench {
    fn table(&self, label: &str) -> String {
        let n = self.tables.fetch_add(1, Ordering::Relaxed);
        format!("bench_{n}_{label}")
    }

    fn sqlite_path(&self, table: &str) -> Option<PathBuf> {
        match &self.db {
            Db::Sqlite { dir, .. } => Some(dir.path().join(format!("{table}.db"))),
            Db::Postgres { .. } => None,
        }
    }

    /// SQLite keeps one table per file, named `events`; PostgreSQL names the table.
    fn table_in_db<'a>(&self, table: &'a str) -> &'a str {
        match self.db {
            Db::Sqlite { .. } => "events",
            Db::Postgres { .. } => table,
        }
    }

    async fn open_backend(&self, table: &str, config: &SinkConfig) -> Result<Backend> {
        Ok(match &self.db {
            Db::Sqlite { dir, journal } => {
                let path = dir.path().join(format!("{table}.db"));
                Backend::Sqlite(SqliteBackend::open(&sqlite_options(&path, *journal))?)
            }
            Db::Postgres { url, .. } => Backend::Postgres(
                PostgresBackend::connect(PostgresSinkOptions::for_sink(url, config)?).await?,
            ),
        })
    }

    /// Creates a table as the sink would, through a sink that writes nothing.
    async fn create_table(&self, table: &str, keyed: bool) -> Result<()> {
        let mode = if keyed { Mode::Upsert } else { Mode::Insert };
        let config = base_config().mode(mode).build()?;
        let backend = self.open_backend(table, &config).await?;
        let sink = Sink::open(
            backend.as_dyn(),
            schema(self.table_in_db(table), keyed)?,
            config,
        )
        .await?;
        sink.close().await?;
        Ok(())
    }

    async fn drop_table(&self, table: &str) -> Result<()> {
        match &self.db {
            Db::Sqlite { dir, .. } => {
                for suffix in ["", "-wal", "-shm", "-journal"] {
                    let _ = std::fs::remove_file(dir.path().join(format!("{table}.db{suffix}")));
                }
            }
            Db::Postgres { admin, .. } => {
                // The run's sink id is its table's name: its progress rows go too, or a run on
                // a database an earlier invocation used would resume that one's checkpoints.
                admin
                    .batch_execute(&format!(
                        "DROP TABLE IF EXISTS \"{table}\"; \
                         DO $$ BEGIN IF to_regclass('sluice_sink_progress') IS NOT NULL THEN \
                         DELETE FROM sluice_sink_progress WHERE sink_id = '{table}'; END IF; END $$"
                    ))
                    .await?;
            }
        }
        Ok(())
    }

    /// Before a run: PostgreSQL writes out the dirty pages of earlier runs, and the kernel the
    /// dirty page cache (`sync`), now rather than in the middle of this run.
    async fn settle(&self) {
        if let Db::Postgres { admin, .. } = &self.db
            && let Err(error) = admin.batch_execute("CHECKPOINT").await
        {
            tracing::warn!(%error, "CHECKPOINT before a run failed");
        }
        if let Err(error) =
            tokio::task::block_in_place(|| std::process::Command::new("sync").status())
        {
            tracing::warn!(%error, "sync before a run failed");
        }
    }

    /// Loads `rows` into a table created as the sink creates it, by the raw method.
    async fn raw_load(
        &self,
        table: &str,
        rows: &[Row],
        upsert: bool,
        (txn_rows, connections): (usize, usize),
    ) -> Result<Duration> {
        match &self.db {
            Db::Sqlite { journal, .. } => {
                let path = self.sqlite_path(table).expect("a SQLite path");
                let txn_rows = txn_rows.min(SQLITE_RAW_TXN_ROWS);
                tokio::task::block_in_place(|| sqlite_raw(&path, *journal, rows, txn_rows, upsert))
            }
            Db::Postgres { url, .. } if upsert => {
                pg_raw_upsert(url, table, rows, txn_rows, connections).await
            }
            Db::Postgres { url, .. } => pg_raw_copy(url, table, rows).await,
        }
    }

    /// Rows the upsert scenarios find in the table: every even id below `count`.
    fn preload_rows(&self, count: usize) -> Vec<Row> {
        self.preload_generator.rows(0, count.div_ceil(2), 2)
    }

    /// The raw limit on `rows`: insert, or upsert into a table holding the even ids. PostgreSQL
    /// upserts try several transaction sizes and keep the fastest.
    async fn measure_limit(&self, rows: &[Row], upsert: bool) -> Result<Limit> {
        let candidates: &[(usize, usize)] = match (&self.db, upsert) {
            (Db::Postgres { .. }, true) => &PG_RAW_UPSERT,
            (Db::Postgres { .. }, false) => &[(usize::MAX, 1)],
            (Db::Sqlite { .. }, _) => &[(SQLITE_RAW_TXN_ROWS, 1)],
        };
        let mut tried = Vec::new();
        for &(txn_rows, connections) in candidates {
            let table = self.table(if upsert { "raw_upsert" } else { "raw_insert" });
            self.create_table(&table, upsert).await?;
            if upsert {
                self.raw_load(
                    &table,
                    &self.preload_rows(rows.len()),
                    false,
                    (usize::MAX, 1),
                )
                .await?;
            }
            self.settle().await;
            let elapsed = self
                .raw_load(&table, rows, upsert, (txn_rows, connections))
                .await?;
            self.drop_table(&table).await?;
            let per_sec = rows.len() as f64 / elapsed.as_secs_f64();
            let method = match (&self.db, upsert) {
                (Db::Postgres { .. }, false) => {
                    "binary COPY, one transaction, one connection".to_string()
                }
                (Db::Postgres { .. }, true) => format!(
                    "{connections} connection(s), each a contiguous share of the ids; per {txn_rows} rows: binary COPY into a temporary table + INSERT ... ON CONFLICT DO UPDATE in one transaction"
                ),
                (Db::Sqlite { journal, .. }, false) => format!(
                    "one prepared INSERT, {txn_rows} rows per transaction, {journal:?} journal, synchronous=FULL"
                ),
                (Db::Sqlite { journal, .. }, true) => format!(
                    "one prepared INSERT ... ON CONFLICT DO UPDATE, {txn_rows} rows per transaction, {journal:?} journal, synchronous=FULL"
                ),
            };
            println!(
                "  raw {} limit: {per_sec:.0} rows/s ({} rows in {:.2} s; {method})",
                if upsert { "upsert" } else { "insert" },
                rows.len(),
                elapsed.as_secs_f64()
            );
            tried.push((method, per_sec));
        }
        let (method, per_sec) = tried
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .cloned()
            .expect("at least one candidate");
        if !upsert {
            *self
                .last_limit
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(per_sec);
        }
        Ok(Limit {
            per_sec,
            detail: serde_json::json!({
                "method": method,
                "rows": rows.len(),
                "measured": "just before the scenario, on the same rows",
                "candidates": tried
                    .iter()
                    .map(|(method, per_sec)| serde_json::json!({"method": method, "rows_per_sec": per_sec}))
                    .collect::<Vec<_>>(),
            }),
        })
    }

    /// Checkpoints PostgreSQL has run (`pg_stat_bgwriter`); `None` on SQLite.
    async fn server_checkpoints(&self) -> Option<i64> {
        let Db::Postgres { admin, .. } = &self.db else {
            return None;
        };
        admin
            .query_one(
                "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter",
                &[],
            )
            .await
            .ok()
            .map(|row| row.get(0))
    }

    fn last_limit(&self) -> Option<f64> {
        *self
            .last_limit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn run_sink(&self, plan: RunPlan) -> Result<RunOutcome> {
        let backend = self.open_backend(&plan.table, &plan.config).await?;
        let exactly_once = plan.config.delivery().is_exactly_once();
        let sink = Sink::open(
            backend.as_dyn(),
            schema(self.table_in_db(&plan.table), plan.keyed)?,
            plan.config.clone(),
        )
        .await?;
        if exactly_once {
            sink.recover(None, Resume::Committed).await?;
        }
        let (stop, stopped) = watch::channel(false);
        let pool_sampler = match (&backend, &self.db, plan.sample_pool) {
            (Backend::Postgres(backend), Db::Postgres { url, .. }, true) => {
                Some(tokio::spawn(sample_pool(
                    url.clone(),
                    backend.pool().clone(),
                    sink.clone(),
                    stopped.clone(),
                )))
            }
            _ => None,
        };
        let watcher = plan.watch.then(|| Watcher::start(sink.clone()));
        let checkpoints_before = self.server_checkpoints().await;
        let started = Instant::now();
        let checkpoints = plan
            .checkpoint_every
            .map(|every| tokio::spawn(checkpointer(sink.clone(), every, stopped.clone())));
        let writers: Vec<_> = match plan.feed {
            Feed::Pre(chunks) => {
                let mut shares: Vec<Vec<Vec<Row>>> =
                    (0..plan.writers).map(|_| Vec::new()).collect();
                for (i, chunk) in chunks.into_iter().enumerate() {
                    shares[i % plan.writers].push(chunk);
                }
                shares
                    .into_iter()
                    .map(|share| tokio::spawn(write_chunks(sink.clone(), share)))
                    .collect()
            }
            Feed::Generated {
                chunk_rows,
                duration,
                rate,
            } => vec![tokio::spawn(write_generated(
                sink.clone(),
                self.generator.clone(),
                0,
                (chunk_rows, duration, rate, plan.observe_writes),
                started,
            ))],
        };
        let mut chunks = Vec::new();
        let mut lag_max = None;
        for writer in writers {
            let report = writer.await??;
            chunks.extend(report.chunks);
            lag_max = lag_max.max(report.lag_max);
        }
        let _ = stop.send(true);
        let (mut covering, next_id) = match checkpoints {
            Some(task) => task.await??,
            None => (Vec::new(), 1),
        };
        let checkpoint_ms: Vec<f64> = covering
            .iter()
            .map(|(call, done)| ms(done.duration_since(*call)))
            .collect();
        let call = Instant::now();
        if exactly_once {
            sink.pre_commit(next_id, "end").await?;
            sink.commit(next_id).await?;
        } else {
            sink.flush().await?;
        }
        let done = Instant::now();
        covering.push((call, done));
        let elapsed = done.duration_since(started);
        let observations = watcher.map(Watcher::finish);
        let pool = match pool_sampler {
            Some(task) => Some(task.await??),
            None => None,
        };
        let mut empty_checkpoint_ms = Vec::new();
        for i in 1..=plan.empty_checkpoints as u64 {
            let call = Instant::now();
            sink.pre_commit(next_id + i, "empty").await?;
            sink.commit(next_id + i).await?;
            empty_checkpoint_ms.push(ms(call.elapsed()));
        }
        let stats = sink.stats();
        sink.close().await?;
        drop(backend);
        chunks.sort_by_key(|chunk| chunk.start);
        let samples = if plan.observe_writes {
            latency_by_observers(&chunks)
        } else if exactly_once {
            latency_by_checkpoints(&chunks, &covering)
        } else if let Some(observations) = observations {
            latency_by_watch(&chunks, &observations)
        } else {
            Vec::new()
        };
        let latency = summarize(&samples);
        Ok(RunOutcome {
            rows: chunks.iter().map(|chunk| chunk.rows).sum(),
            elapsed,
            latency,
            checkpoint_ms,
            empty_checkpoint_ms,
            pool,
            stats,
            pacing_lag_max_ms: lag_max.map(ms),
            server_checkpoints: match (checkpoints_before, self.server_checkpoints().await) {
                (Some(before), Some(after)) => Some(after - before),
                _ => None,
            },
            timeline: if samples.is_empty() {
                serde_json::Value::Array(Vec::new())
            } else {
                timeline(&samples, &chunks, started)
            },
        })
    }

    fn result(
        &self,
        scenario: &str,
        outcome: &RunOutcome,
        limit: Option<f64>,
        config: serde_json::Value,
        measured: &str,
    ) -> ScenarioResult {
        let events_per_sec = outcome.rows as f64 / outcome.elapsed.as_secs_f64();
        let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        let mut sorted = outcome.checkpoint_ms.clone();
        sorted.sort_by(f64::total_cmp);
        ScenarioResult {
            scenario: scenario.to_string(),
            target: self.args.target.name().to_string(),
            rows: outcome.rows,
            events_per_sec,
            limit_events_per_sec: limit,
            share_of_limit: limit.map(|limit| events_per_sec / limit),
            latency_ms: outcome.latency,
            peak_rss_mb: None,
            checkpoint_overhead_pct: None,
            pool_utilisation_pct: None,
            target_met: None,
            elapsed_sec: outcome.elapsed.as_secs_f64(),
            measured: measured.to_string(),
            config,
            detail: serde_json::json!({
                "sink_stats": {
                    "rows_received": outcome.stats.rows_received,
                    "rows_written": outcome.stats.rows_written,
                    "rows_dead_lettered": outcome.stats.rows_dead_lettered,
                    "rows_failed": outcome.stats.rows_failed,
                    "batches": outcome.stats.batches,
                    "retries": outcome.stats.retries,
                    "checkpoints": outcome.stats.checkpoints,
                },
                "checkpoints_during_run": outcome.checkpoint_ms.len(),
                "checkpoint_ms_mean": mean(&outcome.checkpoint_ms),
                "checkpoint_ms_max": sorted.last(),
                "empty_checkpoint_ms_mean": mean(&outcome.empty_checkpoint_ms),
                "pacing_lag_max_ms": outcome.pacing_lag_max_ms,
                "postgres_checkpoints_during_run": outcome.server_checkpoints,
                "timeline": outcome.timeline,
            }),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Scenarios

    /// A row-count scenario at the maximum rate: limit on the same rows first, then the sink.
    async fn throughput(
        &self,
        scenario: &str,
        config: SinkConfigBuilder,
        writers: usize,
        checkpoint_every: Option<Duration>,
    ) -> Result<ScenarioResult> {
        let keyed = config.mode == Some(Mode::Upsert);
        let rows = self.generator.rows(0, self.args.rows, 1);
        let limit = self.measure_limit(&rows, keyed).await?;
        let table = self.table(scenario);
        let config = if config.delivery.is_some_and(Delivery::is_exactly_once) {
            config.sink_id(SinkId::new(&table)?)
        } else {
            config
        }
        .build()?;
        if keyed {
            self.create_table(&table, true).await?;
            self.raw_load(
                &table,
                &self.preload_rows(rows.len()),
                false,
                (usize::MAX, 1),
            )
            .await?;
        }
        self.settle().await;
        let flush_concurrency = config.flush_concurrency();
        let watch = !config.delivery().is_exactly_once() && flush_concurrency == 1 && writers == 1;
        let outcome = self
            .run_sink(RunPlan {
                table: table.clone(),
                keyed,
                config: config.clone(),
                writers,
                feed: Feed::Pre(into_chunks(rows, self.args.chunk_rows)),
                checkpoint_every,
                watch,
                observe_writes: false,
                sample_pool: false,
                empty_checkpoints: 0,
            })
            .await?;
        self.drop_table(&table).await?;
        let measured = if config.delivery().is_exactly_once() {
            "rows from the first write to the return of the final pre_commit+commit; latency: write call start -> return of the covering pre_commit+commit (a write overlapping a checkpoint call counts in the next one)"
        } else if watch {
            "rows from the first write to the return of the final flush; latency: write call start -> first observation (polled every 250 us) of rows_written passing the row (one lane: batches commit in order)"
        } else {
            "rows from the first write to the return of the final flush; latency not observable per row with several lanes (null)"
        };
        let mut result = self.result(
            scenario,
            &outcome,
            Some(limit.per_sec),
            describe(&config, writers, checkpoint_every, self.args.chunk_rows),
            measured,
        );
        result.detail["limit"] = limit.detail;
        Ok(result)
    }

    /// Closed loop: write `rows_per_op` rows, `flush`, repeat.
    async fn closed_loop(
        &self,
        scenario: &str,
        rows_per_op: usize,
        ops: usize,
    ) -> Result<ScenarioResult> {
        let table = self.table(scenario);
        let config = base_config().flush_concurrency(1).build()?;
        let mut chunks = into_chunks(self.generator.rows(0, rows_per_op * ops, 1), rows_per_op);
        self.settle().await;
        let backend = self.open_backend(&table, &config).await?;
        let sink = Sink::open(
            backend.as_dyn(),
            schema(self.table_in_db(&table), false)?,
            config.clone(),
        )
        .await?;
        let mut samples = Vec::with_capacity(ops);
        let started = Instant::now();
        for chunk in chunks.drain(..) {
            let begun = Instant::now();
            sink.write(chunk).await?;
            sink.flush().await?;
            samples.push((begun, ms(begun.elapsed()), rows_per_op as u64));
        }
        let elapsed = started.elapsed();
        let stats = sink.stats();
        sink.close().await?;
        drop(backend);
        self.drop_table(&table).await?;
        let outcome = RunOutcome {
            rows: (rows_per_op * ops) as u64,
            elapsed,
            latency: summarize(&samples),
            checkpoint_ms: Vec::new(),
            empty_checkpoint_ms: Vec::new(),
            pool: None,
            stats,
            pacing_lag_max_ms: None,
            server_checkpoints: None,
            timeline: serde_json::Value::Array(Vec::new()),
        };
        let mut result = self.result(
            scenario,
            &outcome,
            self.last_limit(),
            describe(&config, 1, None, rows_per_op),
            "closed loop of write(rows) then flush(); latency: write call start -> flush return (every row of an operation gets its latency); events_per_sec is the loop's rate",
        );
        result.detail["operations"] = ops.into();
        Ok(result)
    }

    /// Paced or maximum-rate run fed by the generator thread for `--duration-s`.
    async fn timed(
        &self,
        scenario: &str,
        config: SinkConfigBuilder,
        rate: Option<f64>,
        checkpoint_every: Option<Duration>,
        sample_pool: bool,
        observe_writes: bool,
    ) -> Result<(ScenarioResult, RunOutcome)> {
        let table = self.table(scenario);
        let config = if config.delivery.is_some_and(Delivery::is_exactly_once) {
            config.sink_id(SinkId::new(&table)?)
        } else {
            config
        }
        .build()?;
        let chunk_rows = if rate.is_some() {
            PACED_CHUNK_ROWS
        } else {
            self.args.chunk_rows
        };
        let watch = !config.delivery().is_exactly_once()
            && config.flush_concurrency() == 1
            && !observe_writes;
        let exactly_once = config.delivery().is_exactly_once();
        self.settle().await;
        let outcome = self
            .run_sink(RunPlan {
                table: table.clone(),
                keyed: false,
                config: config.clone(),
                writers: 1,
                feed: Feed::Generated {
                    chunk_rows,
                    duration: Duration::from_secs(self.args.duration_s),
                    rate,
                },
                checkpoint_every,
                watch,
                observe_writes,
                sample_pool,
                empty_checkpoints: if exactly_once { 10 } else { 0 },
            })
            .await?;
        self.drop_table(&table).await?;
        let measured = match (rate, exactly_once, watch) {
            (Some(_), false, false) if observe_writes => {
                "paced open loop (chunks of 100 rows written when due, from a generator thread); latency: write call start -> return of Sink::wait_durable called as the write returned (one task per write; it does not seal open batches, so the batches are cut by the 10 ms interval alone)"
            }
            (Some(_), _, true) => {
                "paced open loop (chunks of 100 rows written when due, from a generator thread); latency: write call start -> first observation (polled every 250 us) of rows_written passing the row (one lane: batches commit in order)"
            }
            (Some(_), _, false) => {
                "paced open loop (chunks of 100 rows written when due, from a generator thread); latency not observable per row with several lanes (null)"
            }
            (None, true, _) => {
                "maximum rate for the duration, rows from a generator thread; throughput counts rows up to the return of the final pre_commit+commit; latency: write call start -> return of the covering pre_commit+commit"
            }
            (None, false, true) => {
                "maximum rate for the duration, rows from a generator thread; latency: write call start -> observed rows_written (one lane)"
            }
            (None, false, false) => {
                "maximum rate for the duration, rows from a generator thread; throughput counts rows up to the return of the final flush"
            }
        };
        let mut result = self.result(
            scenario,
            &outcome,
            self.last_limit(),
            describe(&config, 1, checkpoint_every, chunk_rows),
            measured,
        );
        result.config["paced_events_per_sec"] = rate.into();
        result.config["duration_s"] = self.args.duration_s.into();
        Ok((result, outcome))
    }

    async fn latency_under_load(&self) -> Result<ScenarioResult> {
        let config = base_config().flush_concurrency(1).flush_interval_ms(10);
        Ok(self
            .timed(
                "latency_under_load",
                config,
                Some(80_000.0),
                None,
                false,
                false,
            )
            .await?
            .0)
    }

    /// The same load with two lanes, each write observed with `Sink::wait_durable`.
    async fn latency_under_load_2lanes(&self) -> Result<ScenarioResult> {
        let config = base_config().flush_concurrency(2).flush_interval_ms(10);
        Ok(self
            .timed(
                "latency_under_load_2lanes",
                config,
                Some(80_000.0),
                None,
                false,
                true,
            )
            .await?
            .0)
    }

    /// At-least-once without checkpoints, then exactly-once (two-phase on PostgreSQL, the marker
    /// on SQLite) with one checkpoint at the end, every 10 s and every second (PostgreSQL: the
    /// marker every 10 s and every second too), then at-least-once again: the baseline is the
    /// mean of the two at-least-once runs, which brackets the others against the machine's
    /// drift. With `--rounds N` this runs N times (the checkpointed runs rotated by one place
    /// each round, so none always runs next to a baseline) and reports the medians.
    async fn checkpoint_overhead(&self) -> Result<Vec<ScenarioResult>> {
        let lanes = self.args.flush_concurrency;
        // PostgreSQL: two-phase commit, whose lanes write in parallel as at-least-once lanes do
        // (the marker's single transaction is one connection, one server process: its figures
        // follow, without a target). SQLite: the marker, its only mechanism.
        let postgres = matches!(self.db, Db::Postgres { .. });
        let main = if postgres {
            Delivery::TwoPhase
        } else {
            Delivery::TransactionalMarker
        };
        let ten = Some(Duration::from_secs(10));
        let second = Some(Duration::from_secs(1));
        let mut checkpointed = vec![
            ("checkpoint_overhead_end_only", Some(main), None),
            ("checkpoint_overhead_10s", Some(main), ten),
            ("checkpoint_overhead_1s", Some(main), second),
        ];
        if postgres {
            checkpointed.push((
                "checkpoint_overhead_marker_10s",
                Some(Delivery::TransactionalMarker),
                ten,
            ));
            checkpointed.push((
                "checkpoint_overhead_marker_1s",
                Some(Delivery::TransactionalMarker),
                second,
            ));
        }
        let order: Vec<&str> = std::iter::once("checkpoint_overhead_off")
            .chain(checkpointed.iter().map(|(name, _, _)| *name))
            .chain(std::iter::once("checkpoint_overhead_off_again"))
            .collect();
        let mut rounds = Vec::new();
        for round in 0..self.args.rounds as usize {
            if self.args.rounds > 1 {
                println!("  round {} of {}", round + 1, self.args.rounds);
            }
            let mut runs = vec![("checkpoint_overhead_off", None, None)];
            let mut rotated = checkpointed.clone();
            rotated.rotate_left(round % checkpointed.len());
            runs.extend(rotated);
            runs.push(("checkpoint_overhead_off_again", None, None));
            let mut results = Vec::new();
            for (name, delivery, every) in runs {
                let mut config = base_config().flush_concurrency(lanes);
                if let Some(delivery) = delivery {
                    config = config.delivery(delivery);
                }
                let (result, _) = self.timed(name, config, None, every, false, false).await?;
                print_result(&result);
                results.push(result);
            }
            fill_overheads(&mut results);
            // Report in the canonical order, whatever order the round ran in.
            results.sort_by_key(|result| order.iter().position(|name| *name == result.scenario));
            rounds.push(results);
        }
        println!("  (the figures above are repeated with the overheads filled in)");
        Ok(if rounds.len() == 1 {
            rounds.pop().expect("one round")
        } else {
            medians_of_rounds(rounds)
        })
    }

    async fn pool(&self) -> Result<Vec<ScenarioResult>> {
        let mut results = Vec::new();
        for (name, rate) in [("pool_50k", 50_000.0), ("pool_100k", 100_000.0)] {
            let (mut result, outcome) = self
                .timed(name, base_config(), Some(rate), None, true, false)
                .await?;
            let samples = outcome.pool.unwrap_or_default();
            let steady = &samples.steady;
            result.pool_utilisation_pct = steady.utilisation_pct();
            result.detail["pool"] = steady.describe();
            result.detail["pool_whole_run"] = samples.whole.describe();
            result.measured = format!(
                "{}; pool_utilisation_pct = sum over 5 ms samples from {} s into the run (the steady state: adaptive flush concurrency starts at flush_concurrency and settles within seconds; detail.pool_whole_run has the whole run) of the sink's connections executing a statement (pg_stat_activity.state = 'active', including COMMIT waiting for the WAL flush) / sum of the sink's open connections (held by the pool); detail.pool also gives executing / checked out of the pool (deadpool status) and the mean lanes allowed to write at once",
                result.measured,
                POOL_WARMUP.as_secs()
            );
            results.push(result);
        }
        Ok(results)
    }

    /// In this process: peak RSS at the maximum rate with the default configuration.
    async fn memory_in_process(&self) -> Result<ScenarioResult> {
        let baseline_hwm = host::status_mib("VmHWM");
        let baseline_rss = host::status_mib("VmRSS");
        let mut config = base_config();
        if let Some(bytes) = self.args.memory_buffer_bytes {
            config = config.buffer_bytes_max(bytes);
        }
        let (mut result, _) = self
            .timed("memory", config, None, None, false, false)
            .await?;
        result.peak_rss_mb = host::status_mib("VmHWM");
        result.detail["baseline_rss_mb"] = baseline_rss.into();
        result.detail["baseline_hwm_mb"] = baseline_hwm.into();
        result.measured = format!(
            "{}; peak_rss_mb = VmHWM of a child process that ran only this scenario (default sink limits unless --memory-buffer-bytes: buffer_bytes_max 16 MiB, 2 lanes, batches of up to 5,000 rows / 4 MiB), including the runtime, the database client and the generator's queue of up to 8 chunks",
            result.measured
        );
        Ok(result)
    }

    /// Runs `memory` in a child process, so the peak is not the parent's pre-generated rows.
    async fn memory(&self) -> Result<ScenarioResult> {
        let dir = tempfile::tempdir()?;
        let json = dir.path().join("memory.json");
        let exe = std::env::current_exe()?;
        let mut command = std::process::Command::new(exe);
        command.args([
            "bench",
            "sink",
            "--in-process",
            "--scenario",
            "memory",
            "--target",
            self.args.target.name(),
            "--seed",
            &self.args.seed.to_string(),
            "--duration-s",
            &self.args.duration_s.to_string(),
            "--chunk-rows",
            &self.args.chunk_rows.to_string(),
        ]);
        if let Some(bytes) = self.args.memory_buffer_bytes {
            command.args(["--memory-buffer-bytes", &bytes.to_string()]);
        }
        if self.args.sqlite_journal == JournalArg::Rollback {
            command.args(["--sqlite-journal", "rollback"]);
        }
        command.arg("--json").arg(&json);
        if let Db::Postgres { url, .. } = &self.db {
            command.args(["--pg-url", url]);
        }
        let output = tokio::task::block_in_place(|| command.output())?;
        if !output.status.success() {
            bail!(
                "the memory child process failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let mut results: Vec<ScenarioResult> = serde_json::from_slice(&std::fs::read(&json)?)?;
        let mut result = results
            .pop()
            .ok_or_else(|| anyhow!("the memory child wrote no result"))?;
        result.limit_events_per_sec = self.last_limit();
        result.share_of_limit = self.last_limit().map(|l| result.events_per_sec / l);
        Ok(result)
    }

    async fn run_scenario(&self, scenario: ScenarioArg) -> Result<Vec<ScenarioResult>> {
        let lanes = self.args.flush_concurrency;
        let second = Some(Duration::from_secs(1));
        Ok(match scenario {
            ScenarioArg::All => Vec::new(),
            ScenarioArg::Single => vec![
                self.throughput(
                    "single",
                    base_config().flush_concurrency(1).batch_rows_max(1_000),
                    1,
                    None,
                )
                .await?,
            ],
            ScenarioArg::Multi4 => vec![
                self.throughput("multi4", base_config().flush_concurrency(4), 4, None)
                    .await?,
            ],
            ScenarioArg::Marker => vec![
                self.throughput(
                    "marker",
                    base_config()
                        .flush_concurrency(lanes)
                        .delivery(Delivery::TransactionalMarker),
                    1,
                    second,
                )
                .await?,
            ],
            ScenarioArg::TwoPhase => vec![
                self.throughput(
                    "two_phase",
                    base_config()
                        .flush_concurrency(lanes)
                        .delivery(Delivery::TwoPhase),
                    1,
                    second,
                )
                .await?,
            ],
            ScenarioArg::Upsert => vec![
                self.throughput(
                    "upsert",
                    base_config().flush_concurrency(lanes).mode(Mode::Upsert),
                    1,
                    None,
                )
                .await?,
            ],
            ScenarioArg::LatencySingleRow => vec![
                self.closed_loop("latency_single_row", 1, self.args.latency_ops)
                    .await?,
            ],
            ScenarioArg::LatencyBatch1000 => vec![
                self.closed_loop(
                    "latency_batch_1000",
                    1_000,
                    (self.args.rows / 1_000).clamp(1, 1_000),
                )
                .await?,
            ],
            ScenarioArg::LatencyUnderLoad => vec![
                self.latency_under_load().await?,
                self.latency_under_load_2lanes().await?,
            ],
            ScenarioArg::CheckpointOverhead => self.checkpoint_overhead().await?,
            ScenarioArg::Memory if self.args.in_process => vec![self.memory_in_process().await?],
            ScenarioArg::Memory => vec![self.memory().await?],
            ScenarioArg::Pool => self.pool().await?,
        })
    }
}

fn base_config() -> SinkConfigBuilder {
    SinkConfig::builder().create_table(CreateTable::IfMissing)
}

fn describe(
    config: &SinkConfig,
    writers: usize,
    checkpoint_every: Option<Duration>,
    rows_per_write: usize,
) -> serde_json::Value {
    serde_json::json!({
        "delivery": config.delivery().name(),
        "mode": config.mode().name(),
        "writers": writers,
        "rows_per_write": rows_per_write,
        "flush_concurrency": config.flush_concurrency(),
        "batch_rows_max": config.batch_rows_max(),
        "flush_interval_ms": config.flush_interval().as_millis() as u64,
        "buffer_bytes_max": config.buffer_bytes_max(),
        "checkpoint_every_ms": checkpoint_every.map(|every| every.as_millis() as u64),
    })
}

// ---------------------------------------------------------------------------------------------
// Targets and the table

/// The reference's figure and this machine's target (issue 6) for a scenario.
fn targets(scenario: &str, target: &str) -> (&'static str, &'static str) {
    let postgres = target == "postgres";
    match scenario {
        "single" => ("> 50K/s (single writer, batches of 1,000)", "-"),
        "multi4" => ("> 100K/s (4 writers)", "-"),
        "two_phase" => ("> 80K/s (two-phase commit)", ">= 85% of COPY"),
        "marker" if postgres => ("> 100K/s", ">= 85% of COPY"),
        "marker" => ("> 100K/s", ">= 80% of raw SQLite"),
        "upsert" if postgres => ("> 60K/s (upsert)", ">= 90% of raw upsert"),
        "upsert" => ("> 60K/s (upsert)", "-"),
        "latency_single_row" if postgres => ("~15 ms (projected)", "p99 < 5 ms"),
        "latency_single_row" => ("~15 ms (projected)", "-"),
        "latency_batch_1000" => ("~130 ms (projected)", "-"),
        "latency_under_load" | "latency_under_load_2lanes" if postgres => {
            ("p99 < 100 ms", "p99 < 25 ms")
        }
        "latency_under_load" | "latency_under_load_2lanes" => ("p99 < 100 ms", "-"),
        "checkpoint_overhead_off" | "checkpoint_overhead_off_again" => ("(baseline)", "(baseline)"),
        "checkpoint_overhead_end_only" => ("-", "-"),
        "checkpoint_overhead_10s" => ("< 5% (projected 8-12% at 10 s)", "< 2%"),
        "checkpoint_overhead_1s" => ("< 5%", "< 5%"),
        "memory" => ("< 100 MB per sink", "< 64 MB"),
        "pool_50k" => ("50-80%", "-"),
        "pool_100k" if postgres => ("50-80%", "60-90%"),
        "pool_100k" => ("50-80%", "-"),
        _ => ("-", "-"),
    }
}

/// Whether this machine's target (issue 6) is met: `yes`, `NO`, or `unclear` with the reason;
/// `None` where there is no target.
fn verdict(result: &ScenarioResult) -> Option<String> {
    let postgres = result.target == "postgres";
    let share = result.share_of_limit;
    let p99 = result.latency_ms.map(|l| l.p99);
    // A paced run that fell behind did not measure the load it names.
    let paced = result.config["paced_events_per_sec"].as_f64();
    if let Some(rate) = paced
        && result.events_per_sec < 0.95 * rate
    {
        let held = result.events_per_sec / rate * 100.0;
        return targets(&result.scenario, &result.target)
            .1
            .ne("-")
            .then(|| format!("NO (pace not held: {held:.0}% of the rate)"));
    }
    if result.scenario.starts_with("checkpoint_overhead_")
        && targets(&result.scenario, &result.target).1 != "-"
        && let Some(spread) = result.detail["baseline_spread_pct"].as_f64()
        && spread > 10.0
        && result.checkpoint_overhead_pct.is_some()
    {
        return Some(format!(
            "unclear (the two baselines differ by {spread:.0}%)"
        ));
    }
    let met = match result.scenario.as_str() {
        "two_phase" | "marker" if postgres => share.map(|s| s >= 0.85),
        "marker" => share.map(|s| s >= 0.80),
        "upsert" if postgres => share.map(|s| s >= 0.90),
        "latency_single_row" if postgres => p99.map(|p| p < 5.0),
        "latency_under_load" | "latency_under_load_2lanes" if postgres => p99.map(|p| p < 25.0),
        "checkpoint_overhead_10s" => result.checkpoint_overhead_pct.map(|o| o < 2.0),
        "checkpoint_overhead_1s" => result.checkpoint_overhead_pct.map(|o| o < 5.0),
        "memory" => result.peak_rss_mb.map(|m| m < 64.0),
        "pool_100k" if postgres => result
            .pool_utilisation_pct
            .map(|u| (60.0..=90.0).contains(&u)),
        _ => None,
    }?;
    Some(if met { "yes" } else { "NO" }.to_string())
}

/// Fills in the overheads of one round of `checkpoint_overhead` (its first and last results are
/// the at-least-once baselines).
fn fill_overheads(results: &mut [ScenarioResult]) {
    let last = results.len() - 1;
    let base = (results[0].events_per_sec + results[last].events_per_sec) / 2.0;
    let spread = (results[0].events_per_sec - results[last].events_per_sec).abs() / base * 100.0;
    let end_only = results
        .iter()
        .find(|result| result.scenario == "checkpoint_overhead_end_only")
        .map(|result| (result.events_per_sec, result.config["delivery"].clone()));
    for result in results.iter_mut() {
        if result.scenario.starts_with("checkpoint_overhead_off") {
            result.measured = format!(
                "{}; a baseline: at-least-once, no checkpoints (each batch commits on its own); the baseline of the others is the mean of checkpoint_overhead_off and checkpoint_overhead_off_again ({base:.0} events/s)",
                result.measured
            );
            continue;
        }
        result.checkpoint_overhead_pct = Some((1.0 - result.events_per_sec / base) * 100.0);
        result.detail["baseline_events_per_sec"] = base.into();
        result.detail["baseline_spread_pct"] = spread.into();
        if let Some((end_only, delivery)) = &end_only
            && result.scenario != "checkpoint_overhead_end_only"
            && &result.config["delivery"] == delivery
        {
            result.detail["overhead_vs_end_only_pct"] =
                ((1.0 - result.events_per_sec / end_only) * 100.0).into();
        }
        result.measured = format!(
            "{}; checkpoint_overhead_pct = 1 - events_per_sec / baseline (mean of the two at-least-once runs without checkpoints); detail.overhead_vs_end_only_pct compares with checkpoint_overhead_end_only (the same delivery, one checkpoint at the end of the run; not given for the marker runs on PostgreSQL); the delivery is two_phase on PostgreSQL (checkpoint_overhead_marker_* give the transactional marker, without a target) and transactional_marker on SQLite; checkpoints during the run find a partial buffer, detail.empty_checkpoint_ms_mean is 10 checkpoints with an empty buffer after the run",
            result.measured
        );
    }
}

/// One result per scenario from several rounds of `checkpoint_overhead`: the round whose figure
/// is the median (the overhead; events/s for the baselines) stands for the scenario, with the
/// medians of the overhead and of the baseline spread, and every round's figures in
/// `detail.rounds`.
fn medians_of_rounds(rounds: Vec<Vec<ScenarioResult>>) -> Vec<ScenarioResult> {
    let count = rounds.len();
    let mut by_scenario: Vec<Vec<ScenarioResult>> = Vec::new();
    for round in rounds {
        for (i, result) in round.into_iter().enumerate() {
            if by_scenario.len() <= i {
                by_scenario.push(Vec::new());
            }
            by_scenario[i].push(result);
        }
    }
    by_scenario
        .into_iter()
        .map(|mut runs| {
            let key = |result: &ScenarioResult| {
                result
                    .checkpoint_overhead_pct
                    .unwrap_or(-result.events_per_sec)
            };
            let figures: Vec<serde_json::Value> = runs
                .iter()
                .enumerate()
                .map(|(round, result)| {
                    serde_json::json!({
                        "round": round + 1,
                        "events_per_sec": result.events_per_sec,
                        "checkpoint_overhead_pct": result.checkpoint_overhead_pct,
                        "baseline_events_per_sec": result.detail["baseline_events_per_sec"],
                        "baseline_spread_pct": result.detail["baseline_spread_pct"],
                        "checkpoint_ms_mean": result.detail["checkpoint_ms_mean"],
                    })
                })
                .collect();
            let overhead = runs
                .iter()
                .map(|result| result.checkpoint_overhead_pct)
                .collect::<Option<Vec<f64>>>()
                .map(|mut all| median(&mut all));
            let spread = runs
                .iter()
                .map(|result| result.detail["baseline_spread_pct"].as_f64())
                .collect::<Option<Vec<f64>>>()
                .map(|mut all| median(&mut all));
            runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
            let mut chosen = runs.swap_remove(runs.len() / 2);
            chosen.checkpoint_overhead_pct = overhead;
            if let Some(spread) = spread {
                chosen.detail["baseline_spread_pct"] = spread.into();
            }
            chosen.detail["rounds"] = figures.into();
            chosen.measured = format!(
                "median of {count} rounds (each judged against its own two baselines; every round in detail.rounds; the other fields are those of the median round); {}",
                chosen.measured
            );
            chosen
        })
        .collect()
}

fn print_result(result: &ScenarioResult) {
    let opt =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    println!(
        "{} [{}]: {} rows, {:.0} events/s, limit {} ({}), latency ms {}, peak RSS {} MB, checkpoint overhead {}%, pool {}% in {:.1} s",
        result.scenario,
        result.target,
        result.rows,
        result.events_per_sec,
        opt(result.limit_events_per_sec, 0),
        result
            .share_of_limit
            .map_or("-".to_string(), |s| format!("{:.1}%", s * 100.0)),
        result.latency_ms.map_or("-".to_string(), |l| format!(
            "p50 {:.2} p99 {:.2} max {:.2}",
            l.p50, l.p99, l.max
        )),
        opt(result.peak_rss_mb, 1),
        opt(result.checkpoint_overhead_pct, 2),
        opt(result.pool_utilisation_pct, 1),
        result.elapsed_sec,
    );
    if let Some(met) = &result.target_met {
        println!(
            "  target here: {} -> {met}",
            targets(&result.scenario, &result.target).1
        );
    }
    println!("  measured: {}", result.measured);
    println!("  config: {}", result.config);
    println!("  detail: {}", result.detail);
}

fn print_table(results: &[ScenarioResult]) {
    println!();
    println!(
        "| scenario | target | events/s | raw limit/s | share | p50 ms | p99 ms | max ms | peak RSS MB | ckpt overhead | pool util | reference | target here | met |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let opt =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    for r in results {
        let (reference, here) = targets(&r.scenario, &r.target);
        let met = r.target_met.as_deref().unwrap_or("-");
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {reference} | {here} | {met} |",
            r.scenario,
            r.target,
            r.events_per_sec,
            opt(r.limit_events_per_sec, 0),
            r.share_of_limit
                .map_or("-".to_string(), |s| format!("{:.1}%", s * 100.0)),
            opt(r.latency_ms.map(|l| l.p50), 2),
            opt(r.latency_ms.map(|l| l.p99), 2),
            opt(r.latency_ms.map(|l| l.max), 2),
            opt(r.peak_rss_mb, 1),
            r.checkpoint_overhead_pct
                .map_or("-".to_string(), |o| format!("{o:.2}%")),
            r.pool_utilisation_pct
                .map_or("-".to_string(), |u| format!("{u:.1}%")),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Entry

async fn open_db(args: &SinkBenchArgs) -> Result<Db> {
    Ok(match args.target {
        Target::Sqlite => Db::Sqlite {
            dir: tempfile::tempdir()?,
            journal: args.sqlite_journal.journal(),
        },
        Target::Postgres => {
            let server = postgres::Server::open(args.pg_url.as_deref()).await?;
            let admin = postgres::connect(&server.url).await?;
            Db::Postgres {
                url: server.url.clone(),
                admin,
                _server: server,
            }
        }
    })
}

async fn print_conditions(db: &Db) -> Result<()> {
    println!("machine: {}", host::machine());
    match db {
        Db::Sqlite { dir, journal } => println!(
            "SQLite {} in {} ({:?} journal, synchronous=FULL, {} KiB pages, one file per run)",
            rusqlite::version(),
            dir.path().display(),
            journal,
            SqliteSinkOptions::new(Location::Memory)
                .open
                .page_size_bytes
                / 1024
        ),
        Db::Postgres { admin, .. } => {
            println!("PostgreSQL: {}", postgres::settings(admin).await?);
        }
    }
    Ok(())
}

pub async fn run(args: SinkBenchArgs) -> Result<ExitCode> {
    anyhow::ensure!(args.rows > 0, "--rows must be positive");
    anyhow::ensure!(args.chunk_rows > 0, "--chunk-rows must be positive");
    let mut scenarios: Vec<ScenarioArg> = if args.scenario.contains(&ScenarioArg::All) {
        ALL_SCENARIOS.to_vec()
    } else {
        args.scenario.clone()
    };
    scenarios.dedup();
    let generator = Arc::new(EventRows::new(args.seed)?);
    let bench = Bench {
        db: open_db(&args).await?,
        preload_generator: EventRows::new(args.seed ^ 0x5eed_5eed)?,
        generator,
        args,
        tables: AtomicUsize::new(0),
        last_limit: std::sync::Mutex::new(None),
    };
    let child = bench.args.in_process;
    if !child {
        print_conditions(&bench.db).await?;
        let began = Instant::now();
        let sample = bench.generator.rows(0, 200_000, 1);
        let per_row = began.elapsed().as_secs_f64() * 1e9 / sample.len() as f64;
        drop(sample);
        println!(
            "row generator: {per_row:.0} ns/row (row-count scenarios pre-generate their rows before the clock starts; time-based ones use a generator thread)"
        );
        let needs_limit = scenarios.iter().any(|s| {
            matches!(
                s,
                ScenarioArg::Memory
                    | ScenarioArg::LatencySingleRow
                    | ScenarioArg::LatencyBatch1000
                    | ScenarioArg::LatencyUnderLoad
                    | ScenarioArg::CheckpointOverhead
                    | ScenarioArg::Pool
            )
        });
        if needs_limit {
            println!("raw insert limit for the time-based scenarios:");
            let rows = bench.generator.rows(0, bench.args.rows, 1);
            bench.measure_limit(&rows, false).await?;
        }
    }
    let mut results = Vec::new();
    let mut failed = Vec::new();
    for scenario in scenarios {
        let postgres_only = matches!(scenario, ScenarioArg::TwoPhase | ScenarioArg::Pool);
        if postgres_only && bench.args.target != Target::Postgres {
            println!("{scenario:?}: skipped (PostgreSQL only)");
            continue;
        }
        if !child {
            println!("== {scenario:?}");
        }
        match bench.run_scenario(scenario).await {
            Ok(scenario_results) => {
                for mut result in scenario_results {
                    result.target_met = verdict(&result);
                    print_result(&result);
                    results.push(result);
                }
            }
            Err(error) => {
                eprintln!("{scenario:?} failed: {error:#}");
                failed.push(format!("{scenario:?}"));
            }
        }
    }
    if !child {
        print_table(&results);
    }
    if let Some(path) = &bench.args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;
        if !child {
            println!("wrote {}", path.display());
        }
    }
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("failed scenarios: {}", failed.join(", "));
        Ok(ExitCode::FAILURE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(scenario: &str, events_per_sec: f64) -> ScenarioResult {
        ScenarioResult {
            scenario: scenario.to_string(),
            target: "postgres".to_string(),
            rows: 0,
            events_per_sec,
            limit_events_per_sec: None,
            share_of_limit: None,
            latency_ms: None,
            peak_rss_mb: None,
            checkpoint_overhead_pct: None,
            pool_utilisation_pct: None,
            target_met: None,
            elapsed_sec: 30.0,
            measured: String::new(),
            config: serde_json::json!({"delivery": "two_phase"}),
            detail: serde_json::json!({}),
        }
    }

    #[test]
    fn rounds_are_judged_against_their_own_baselines_and_reported_by_median() {
        // Three rounds on a drifting host: each round's baselines move, the overhead does not.
        let rounds: Vec<Vec<ScenarioResult>> = [
            (100.0, 110.0, 105.0),
            (200.0, 190.0, 190.0),
            (150.0, 150.0, 120.0),
        ]
        .into_iter()
        .map(|(off, checkpointed, off_again)| {
            let mut round = vec![
                run("checkpoint_overhead_off", off),
                run("checkpoint_overhead_1s", checkpointed),
                run("checkpoint_overhead_off_again", off_again),
            ];
            fill_overheads(&mut round);
            round
        })
        .collect();
        // Overheads: 1 - 110/102.5, 1 - 190/195, 1 - 150/135 (percent).
        let overheads: Vec<f64> = rounds
            .iter()
            .map(|round| round[1].checkpoint_overhead_pct.unwrap())
            .collect();
        assert!((overheads[0] + 7.317).abs() < 0.01, "{overheads:?}");
        assert!((overheads[1] - 2.564).abs() < 0.01, "{overheads:?}");
        assert!((overheads[2] + 11.111).abs() < 0.01, "{overheads:?}");
        let merged = medians_of_rounds(rounds);
        assert_eq!(merged.len(), 3);
        let checkpointed = &merged[1];
        assert_eq!(checkpointed.scenario, "checkpoint_overhead_1s");
        assert!((checkpointed.checkpoint_overhead_pct.unwrap() + 7.317).abs() < 0.01);
        // The median round stands for the scenario: its own figures come along.
        assert_eq!(checkpointed.events_per_sec, 110.0);
        assert_eq!(checkpointed.detail["rounds"].as_array().unwrap().len(), 3);
        // Spreads 4.9%, 5.1%, 22.2%: the median of the spreads, whichever round it is.
        let spread = checkpointed.detail["baseline_spread_pct"].as_f64().unwrap();
        assert!((spread - 5.128).abs() < 0.01, "{spread}");
        // A baseline's median is by events/s.
        assert_eq!(merged[0].events_per_sec, 150.0);
        assert_eq!(merged[0].checkpoint_overhead_pct, None);
    }

    #[test]
    fn rows_are_deterministic_and_sized() {
        let a = EventRows::new(7).unwrap();
        let b = EventRows::new(7).unwrap();
        assert_eq!(a.row(12_345), b.row(12_345));
        assert_ne!(a.row(1), EventRows::new(8).unwrap().row(1));
        let row = a.row(3);
        assert_eq!(row.values[0], Value::I64(3));
        let Value::Text(label) = &row.values[7] else {
            panic!("label")
        };
        assert_eq!(label.len(), 40);
        let Value::Json(payload) = &row.values[8] else {
            panic!("payload")
        };
        assert_eq!(payload.as_str().len(), 200);
        schema("t", true)
            .unwrap()
            .check_row(&row)
            .expect("the row fits the schema");
    }

    #[test]
    fn latency_attribution() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let chunks = [
            ChunkRecord {
                start: at(0),
                end: at(1),
                rows: 10,
                durable: Some(at(12)),
                lag: Duration::ZERO,
            },
            ChunkRecord {
                start: at(5),
                end: at(6),
                rows: 10,
                durable: None,
                lag: Duration::ZERO,
            },
        ];
        let untimed = |samples: Weighted| -> Vec<(f64, u64)> {
            samples
                .into_iter()
                .map(|(_, ms, rows)| (ms, rows))
                .collect()
        };
        // Rows 0-4 durable at 3 ms, 5-14 at 8 ms, 15-19 at 20 ms.
        let watched = untimed(latency_by_watch(
            &chunks,
            &[(at(3), 5), (at(8), 15), (at(20), 20)],
        ));
        assert_eq!(watched, vec![(3.0, 5), (8.0, 5), (3.0, 5), (15.0, 5)]);
        // A checkpoint called at 5.5 ms covers the first chunk only.
        let covered = untimed(latency_by_checkpoints(
            &chunks,
            &[(t0 + Duration::from_micros(5_500), at(7)), (at(9), at(13))],
        ));
        assert_eq!(covered, vec![(7.0, 10), (8.0, 10)]);
        // Observed chunks only.
        assert_eq!(untimed(latency_by_observers(&chunks)), vec![(12.0, 10)]);
    }
}
