//! `sluice bench ingest`: `sluice ingest` of an NDJSON file into PostgreSQL, exactly once,
//! against `psql`'s COPY of the same rows pre-converted to TSV, in the same run.
//!
//! The file is generated deterministically from `--seed`: `--rows` lines of an id, a short
//! text, a float, a timestamp and a small nested object
//! (`{"id":1,"name":"k3xq9abz","score":512.375,"ts":"2026-01-01T00:00:00.050Z","meta":{"source":"web","n":7}}`),
//! and the same rows as TSV. Both load into the same table definition (`id bigint PRIMARY
//! KEY, name text NOT NULL, score double precision, ts timestamptz, meta jsonb`), created
//! fresh before each measurement after a server `CHECKPOINT` and a `sync`:
//!
//! - `copy`: `psql -c "\copy ... FROM file.tsv"` (PostgreSQL 15's psql), wall time from start
//!   to exit;
//! - `ingest`: this binary's `sluice ingest` as a child process (default settings: exactly
//!   once with the transactional marker, a checkpoint every second; the table's columns
//!   drive the casts), wall time from start to exit, peak resident memory and CPU time from
//!   `wait4`; then the same with `delivery = "two_phase"` when the server allows prepared
//!   transactions (each lane prepares its own transaction on its own connection, where the
//!   marker's lanes take turns on one);
//! - `parse_only`: the same file through the ingest reader, framer and mapper without a sink
//!   (`sluice ingest --parse-only`, the same column types declared), rows/s and CPU time: if
//!   it is much faster than `ingest`, parsing is not the bottleneck.
//!
//! Each measurement runs `--runs` times, interleaved (copy, ingest, parse, copy, ...). Rates
//! are the best run of each; the share of COPY that meets or misses the target is the median
//! over the rounds of each ingest against the COPY run just before it (the machine is shared
//! and a run can be twice as fast as the one before it); every run is in the JSON. After each
//! ingest the table is compared with the COPY's (same row count, same sum of
//! `hashtext(row::text)`) and no prepared transaction may be left.

use crate::generate::{INGEST_TS_STEP_MS, IngestRow};
use crate::host::{self, Finished};
use crate::postgres;
use crate::stats::median;
use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use sluice_sink_postgres::tokio_postgres;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Instant;

/// PostgreSQL 15's psql.
const PSQL: &str = "/usr/lib/postgresql/15/bin/psql";
/// Share of the COPY rate ingest should reach.
const TARGET_SHARE_OF_COPY: f64 = 0.85;
/// Peak resident memory ingest should stay under, in MiB.
const TARGET_PEAK_RSS_MIB: f64 = 64.0;
/// The table definition both loads use (`{}` is the table name).
const TABLE_DDL: &str = "CREATE TABLE {} (id bigint PRIMARY KEY, name text NOT NULL, \
                         score double precision, ts timestamptz, meta jsonb)";
/// The same columns declared for `--parse-only`, which opens no database.
const PARSE_COLUMNS: &str = "[columns]\nid = { type = \"i64\" }\nname = { type = \"text\", nullable = false }\n\
                             score = { type = \"f64\" }\nts = { type = \"timestamp_tz\" }\nmeta = { type = \"json\" }\n";
const COPY_TABLE: &str = "bench_copy";
const INGEST_TABLE: &str = "bench_ingest";

/// Options of `sluice bench ingest`.
#[derive(clap::Args, Debug, Clone)]
pub struct IngestBenchArgs {
    /// PostgreSQL to use. Required, unless the binary was built with the `throwaway-postgres`
    /// feature, which then starts a throwaway cluster (initdb + pg_ctl).
    #[arg(long)]
    pg_url: Option<String>,
    /// Lines of the generated file.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Runs of each measurement; the best counts.
    #[arg(long, default_value_t = 2)]
    runs: usize,
    /// Seed of the generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Directory for the generated files (default: a temporary directory, removed after).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// One run of one measurement.
#[derive(Clone, Debug, Serialize)]
struct Sample {
    measurement: &'static str,
    round: usize,
    rows: u64,
    wall_sec: f64,
    rows_per_sec: f64,
    /// User + system CPU of the child process (the database server's work is not in it).
    cpu_sec: Option<f64>,
    /// `ru_maxrss` of the child process.
    peak_rss_mib: Option<f64>,
}

/// One way of ingesting against COPY.
#[derive(Debug, Serialize)]
struct IngestResult {
    measurement: &'static str,
    /// The best run.
    rows_per_sec: f64,
    /// Best ingest run against the best COPY run.
    share_best_of_copy_best: f64,
    /// Each round's ingest against the COPY run just before it.
    share_per_round: Vec<f64>,
    /// The median of `share_per_round`: what the verdict uses (the machine is shared).
    share_median: f64,
    /// The highest of the runs.
    peak_rss_mib: f64,
    /// CPU of the best run.
    cpu_sec: f64,
    target_share_met: bool,
    target_rss_met: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    rows: u64,
    ndjson_bytes: u64,
    tsv_bytes: u64,
    runs: usize,
    conditions: String,
    samples: Vec<Sample>,
    /// The best COPY run.
    copy_rows_per_sec: f64,
    ingest: Vec<IngestResult>,
    parse_rows_per_sec: f64,
    parse_cpu_sec: f64,
    /// Parse-only CPU seconds over the best default ingest's wall seconds: the share of one
    /// core parsing takes during an ingest.
    parse_cpu_share_of_ingest_wall: f64,
    /// Parsing bounds the rate when it cannot run clearly faster than the ingest itself.
    parsing_is_bottleneck: bool,
}

/// Writes the NDJSON and TSV files; returns their sizes in bytes.
fn generate(dir: &Path, rows: u64, seed: u64) -> Result<(u64, u64)> {
    anyhow::ensure!(
        rows * INGEST_TS_STEP_MS < 86_400_000,
        "--rows {rows} is more than the generator's timestamps cover in a day"
    );
    let mut ndjson = std::io::BufWriter::new(std::fs::File::create(dir.join("rows.ndjson"))?);
    let mut tsv = std::io::BufWriter::new(std::fs::File::create(dir.join("rows.tsv"))?);
    for id in 0..rows {
        let row = IngestRow::new(seed, id);
        writeln!(ndjson, "{}", row.ndjson())?;
        writeln!(tsv, "{}", row.tsv())?;
    }
    ndjson.flush()?;
    tsv.flush()?;
    Ok((
        std::fs::metadata(dir.join("rows.ndjson"))?.len(),
        std::fs::metadata(dir.join("rows.tsv"))?.len(),
    ))
}

/// Drops and creates `table` (and the ingest's dead letters and progress), then lets the
/// server write its dirty pages and the kernel its page cache, so runs start alike.
async fn fresh_table(client: &tokio_postgres::Client, table: &str) -> Result<()> {
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; DROP TABLE IF EXISTS {table}_dead_letters; \
             DROP TABLE IF EXISTS sluice_sink_progress; {}; CHECKPOINT",
            TABLE_DDL.replace("{}", table)
        ))
        .await
        .with_context(|| format!("creating {table}"))?;
    host::sync_disks();
    Ok(())
}

/// Runs `command` to its end with its output in `log`, and reads its resource use.
async fn run_child(mut command: std::process::Command, log: &Path) -> Result<Finished> {
    let out = std::fs::File::create(log)?;
    command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let started = Instant::now();
    let child = command.spawn().context("starting the child process")?;
    let finished = tokio::task::spawn_blocking(move || host::wait_with_usage(child, started))
        .await?
        .context("waiting for the child process")?;
    Ok(finished)
}

fn check_success(finished: &Finished, what: &str, log: &Path) -> Result<()> {
    if !finished.success {
        bail!(
            "{what} failed: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
    Ok(())
}

/// Row count and content hash of a table.
async fn fingerprint(client: &tokio_postgres::Client, table: &str) -> Result<(i64, i64)> {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), coalesce(sum(hashtext(t::text)::bigint), 0)::int8 FROM {table} t"
            ),
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

fn sample(
    measurement: &'static str,
    round: usize,
    rows: u64,
    finished: &Finished,
    with_usage: bool,
) -> Sample {
    let wall_sec = finished.wall.as_secs_f64();
    Sample {
        measurement,
        round,
        rows,
        wall_sec,
        rows_per_sec: rows as f64 / wall_sec,
        cpu_sec: with_usage.then_some(finished.cpu_sec),
        peak_rss_mib: with_usage.then_some(finished.peak_rss_mib),
    }
}

fn best<'a>(samples: &'a [Sample], measurement: &str) -> Result<&'a Sample> {
    samples
        .iter()
        .filter(|sample| sample.measurement == measurement)
        .max_by(|a, b| a.rows_per_sec.total_cmp(&b.rows_per_sec))
        .ok_or_else(|| anyhow!("no {measurement} run"))
}

async fn conditions(client: &tokio_postgres::Client) -> Result<String> {
    Ok(format!(
        "{}; PostgreSQL: {}",
        host::machine(),
        postgres::settings(client).await?
    ))
}

/// Runs `sluice ingest` of the NDJSON file into a fresh table (with `config`, a pipeline file,
/// if any) and checks the table against the COPY's fingerprint.
#[allow(clippy::too_many_arguments)]
async fn ingest_once(
    client: &tokio_postgres::Client,
    exe: &Path,
    dir: &Path,
    url: &str,
    config: Option<&Path>,
    measurement: &'static str,
    round: usize,
    rows: u64,
    expected: (i64, i64),
) -> Result<(Sample, Finished)> {
    fresh_table(client, INGEST_TABLE).await?;
    let mut command = std::process::Command::new(exe);
    command
        .args(["ingest", "--from"])
        .arg(dir.join("rows.ndjson"))
        .args(["--into", url, "--table", INGEST_TABLE]);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    let log = dir.join(format!("{measurement}.log"));
    let finished = run_child(command, &log).await?;
    check_success(&finished, measurement, &log)?;
    let found = fingerprint(client, INGEST_TABLE).await?;
    anyhow::ensure!(
        found == expected,
        "{measurement}: the ingested table differs from the COPY's: (rows, hash) {found:?} against {expected:?}"
    );
    let prepared: i64 = client
        .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
        .await?
        .get(0);
    anyhow::ensure!(
        prepared == 0,
        "{measurement} left {prepared} prepared transactions"
    );
    client
        .batch_execute(&format!("DROP TABLE {INGEST_TABLE}"))
        .await?;
    Ok((sample(measurement, round, rows, &finished, true), finished))
}

pub async fn run(args: IngestBenchArgs) -> Result<ExitCode> {
    anyhow::ensure!(args.rows > 0, "--rows must be positive");
    anyhow::ensure!(args.runs > 0, "--runs must be positive");
    anyhow::ensure!(
        Path::new(PSQL).exists(),
        "{PSQL} is missing (PostgreSQL 15's client)"
    );
    let server = postgres::Server::open(args.pg_url.as_deref()).await?;
    let url = server.url.clone();
    let client = postgres::connect(&url).await?;
    let conditions = conditions(&client).await?;
    println!("machine: {conditions}");
    let prepared_max: i64 = client
        .query_one(
            "SELECT setting::int8 FROM pg_settings WHERE name = 'max_prepared_transactions'",
            &[],
        )
        .await?
        .get(0);
    // Two lanes, each with a transaction prepared and the next one open.
    let two_phase = prepared_max >= 4;
    if !two_phase {
        println!(
            "ingest with delivery = \"two_phase\": skipped (max_prepared_transactions = {prepared_max}, needs 4)"
        );
    }
    let temp;
    let dir = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let began = Instant::now();
    let (rows, seed) = (args.rows, args.seed);
    let generate_dir = dir.clone();
    let (ndjson_bytes, tsv_bytes) =
        tokio::task::spawn_blocking(move || generate(&generate_dir, rows, seed)).await??;
    println!(
        "generated {rows} rows: {} ({ndjson_bytes} bytes) and {} ({tsv_bytes} bytes) in {:.1} s",
        dir.join("rows.ndjson").display(),
        dir.join("rows.tsv").display(),
        began.elapsed().as_secs_f64()
    );
    std::fs::write(dir.join("parse.toml"), PARSE_COLUMNS)?;
    std::fs::write(
        dir.join("two_phase.toml"),
        "[sink]\ndelivery = \"two_phase\"\n",
    )?;
    let exe = std::env::current_exe()?;
    let mut samples = Vec::new();
    for round in 1..=args.runs {
        // (a) psql COPY of the TSV.
        fresh_table(&client, COPY_TABLE).await?;
        let mut command = std::process::Command::new(PSQL);
        command.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &url, "-c"]);
        command.arg(format!(
            "\\copy {COPY_TABLE} FROM '{}'",
            dir.join("rows.tsv").display()
        ));
        let log = dir.join("copy.log");
        let finished = run_child(command, &log).await?;
        check_success(&finished, "psql COPY", &log)?;
        let copy = sample("copy", round, rows, &finished, false);
        println!(
            "round {round}: psql COPY                 {:>9.0} rows/s  ({:.2} s)",
            copy.rows_per_sec, copy.wall_sec
        );
        let copy_rate = copy.rows_per_sec;
        samples.push(copy);
        let expected = fingerprint(&client, COPY_TABLE).await?;
        anyhow::ensure!(
            expected.0 == rows as i64,
            "COPY loaded {} rows of {rows}",
            expected.0
        );
        client
            .batch_execute(&format!("DROP TABLE {COPY_TABLE}"))
            .await?;

        // (b) sluice ingest, exactly once: the default (transactional marker), then two-phase.
        let mut ways: Vec<(&'static str, Option<PathBuf>)> = vec![("ingest_marker", None)];
        if two_phase {
            ways.push(("ingest_two_phase", Some(dir.join("two_phase.toml"))));
        }
        for (measurement, config) in ways {
            let (ingest, finished) = ingest_once(
                &client,
                &exe,
                &dir,
                &url,
                config.as_deref(),
                measurement,
                round,
                rows,
                expected,
            )
            .await?;
            println!(
                "round {round}: sluice {:<18} {:>9.0} rows/s  ({:.2} s, {:.0}% of COPY, peak RSS {:.1} MiB, CPU {:.2} s)",
                measurement,
                ingest.rows_per_sec,
                ingest.wall_sec,
                100.0 * ingest.rows_per_sec / copy_rate,
                finished.peak_rss_mib,
                finished.cpu_sec
            );
            samples.push(ingest);
        }

        // (c) parsing alone.
        let mut command = std::process::Command::new(&exe);
        command
            .args(["ingest", "--parse-only", "--from"])
            .arg(dir.join("rows.ndjson"))
            .args(["--into", &url, "--table", INGEST_TABLE, "--config"])
            .arg(dir.join("parse.toml"));
        let log = dir.join("parse.log");
        let finished = run_child(command, &log).await?;
        check_success(&finished, "sluice ingest --parse-only", &log)?;
        let parse = sample("parse_only", round, rows, &finished, true);
        println!(
            "round {round}: parse only                {:>9.0} rows/s  ({:.2} s, CPU {:.2} s)",
            parse.rows_per_sec, parse.wall_sec, finished.cpu_sec
        );
        samples.push(parse);
    }
    let copy = best(&samples, "copy")?.clone();
    let parse = best(&samples, "parse_only")?.clone();
    let mut ingest = Vec::new();
    for measurement in ["ingest_marker", "ingest_two_phase"] {
        let Ok(best_run) = best(&samples, measurement) else {
            continue;
        };
        let mut shares: Vec<f64> = (1..=args.runs)
            .filter_map(|round| {
                let of = |name: &str| {
                    samples
                        .iter()
                        .find(|sample| sample.round == round && sample.measurement == name)
                        .map(|sample| sample.rows_per_sec)
                };
                Some(of(measurement)? / of("copy")?)
            })
            .collect();
        let share_per_round = shares.clone();
        let share_median = median(&mut shares);
        let peak_rss_mib = samples
            .iter()
            .filter(|sample| sample.measurement == measurement)
            .filter_map(|sample| sample.peak_rss_mib)
            .fold(0.0, f64::max);
        ingest.push(IngestResult {
            measurement,
            rows_per_sec: best_run.rows_per_sec,
            share_best_of_copy_best: best_run.rows_per_sec / copy.rows_per_sec,
            share_per_round,
            share_median,
            peak_rss_mib,
            cpu_sec: best_run.cpu_sec.unwrap_or(f64::NAN),
            target_share_met: share_median >= TARGET_SHARE_OF_COPY,
            target_rss_met: peak_rss_mib < TARGET_PEAK_RSS_MIB,
        });
    }
    let marker = ingest.first().ok_or_else(|| anyhow!("no ingest result"))?;
    let marker_wall = rows as f64 / marker.rows_per_sec;
    let parse_cpu = parse.cpu_sec.unwrap_or(f64::NAN);
    let report = Report {
        rows,
        ndjson_bytes,
        tsv_bytes,
        runs: args.runs,
        conditions,
        copy_rows_per_sec: copy.rows_per_sec,
        parse_rows_per_sec: parse.rows_per_sec,
        parse_cpu_sec: parse_cpu,
        parse_cpu_share_of_ingest_wall: parse_cpu / marker_wall,
        parsing_is_bottleneck: parse.rows_per_sec < 1.2 * marker.rows_per_sec,
        ingest,
        samples,
    };
    let yes_no = |met: bool| if met { "yes" } else { "no" };
    println!();
    println!(
        "{rows} rows ({} MB NDJSON), {} rounds; rows/s of the best run; share: median of each round's ingest over that round's COPY (best over best in brackets):",
        ndjson_bytes / 1_000_000,
        args.runs,
    );
    println!("| measurement | rows/s | share of COPY | peak RSS MiB | CPU s | target here | met |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| psql COPY of the TSV | {:.0} | 100% | - | - | (the baseline) | - |",
        copy.rows_per_sec
    );
    for result in &report.ingest {
        let name = match result.measurement {
            "ingest_marker" => "sluice ingest, exactly once (default: transactional marker)",
            _ => "sluice ingest, exactly once, delivery = \"two_phase\"",
        };
        println!(
            "| {name} | {:.0} | {:.1}% ({:.1}%) | {:.1} | {:.2} | >= {:.0}% of COPY, < {TARGET_PEAK_RSS_MIB:.0} MiB | {} / {} |",
            result.rows_per_sec,
            result.share_median * 100.0,
            result.share_best_of_copy_best * 100.0,
            result.peak_rss_mib,
            result.cpu_sec,
            TARGET_SHARE_OF_COPY * 100.0,
            yes_no(result.target_share_met),
            yes_no(result.target_rss_met)
        );
    }
    println!(
        "| parse only (reader, framer, mapper; no database) | {:.0} | {:.1}% | {:.1} | {:.2} | faster than ingest: not the bottleneck | {} |",
        parse.rows_per_sec,
        100.0 * parse.rows_per_sec / copy.rows_per_sec,
        parse.peak_rss_mib.unwrap_or(f64::NAN),
        parse_cpu,
        yes_no(!report.parsing_is_bottleneck)
    );
    println!(
        "parsing takes {parse_cpu:.2} CPU s, {:.0}% of one core over the best default ingest's {marker_wall:.2} s",
        report.parse_cpu_share_of_ingest_wall * 100.0,
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_deterministic_and_the_two_files_agree() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), 1_000, 7).unwrap();
        let ndjson = std::fs::read_to_string(dir.path().join("rows.ndjson")).unwrap();
        let tsv = std::fs::read_to_string(dir.path().join("rows.tsv")).unwrap();
        for (line, fields) in ndjson.lines().zip(tsv.lines()) {
            let json: serde_json::Value = serde_json::from_str(line).unwrap();
            let fields: Vec<&str> = fields.split('\t').collect();
            assert_eq!(json["id"].to_string(), fields[0]);
            assert_eq!(json["name"], fields[1]);
            assert_eq!(
                json["score"].as_f64().unwrap(),
                fields[2].parse::<f64>().unwrap()
            );
            assert_eq!(json["ts"], fields[3]);
            let meta: serde_json::Value = serde_json::from_str(fields[4]).unwrap();
            assert_eq!(json["meta"], meta);
        }
        assert_eq!(ndjson.lines().count(), 1_000);
        assert!(
            ndjson
                .lines()
                .last()
                .unwrap()
                .contains("\"ts\":\"2026-01-01T00:00:49.950Z\"")
        );
    }
}
