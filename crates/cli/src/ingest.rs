//! `sluice ingest`: the command line of [`sluice_ingest`]: flags over the pipeline file, a
//! progress bar, the summary, signals and exit codes.

use crate::ingest_progress::ProgressBar;
use anyhow::{Context, Result};
use sluice_ingest::{Observer, Pipeline, PipelineSettings, Preview, Progress, Report, Status};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;

/// Examples shown by `sluice ingest --help`.
pub(crate) const EXAMPLES: &str = "\
Examples:
  sluice ingest --from 'logs/*.ndjson.gz' --into sqlite://logs.db --table logs
  sluice ingest --from app.ndjson --into sqlite://app.db --table events --follow
  sluice ingest --from nats://127.0.0.1:4222 --stream ORDERS --subject 'orders.>' \\
      --consumer orders-to-db --into postgres://app@localhost/app --table orders --follow

JetStream: each message is one JSON object. The durable pull consumer is created when missing
(ack policy \"all\"); messages are acknowledged after the checkpoint that holds them committed,
and a restart resumes after the committed stream sequence. Without --follow the run ends when
the consumer has nothing pending.

Exit codes: 0 done, 1 failed (what was committed stays; run again to resume), 2 bad usage or
configuration (nothing written), 130 stopped by SIGINT or SIGTERM at a checkpoint.";

/// Exit code of a bad usage or configuration.
const EXIT_USAGE: u8 = 2;
/// Exit code of a run stopped by SIGINT or SIGTERM at a checkpoint (128 + SIGINT).
const EXIT_INTERRUPTED: u8 = 130;

/// `sluice ingest` arguments; each overrides the same key of `--config`.
#[derive(clap::Args, Debug)]
pub(crate) struct IngestArgs {
    #[command(flatten)]
    settings: PipelineSettings,
    /// A pipeline file (TOML): these keys, `[sink]` (the sink's configuration) and
    /// `[columns]` (the mapping).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Write nothing: show the table (the one that would be created, with its inferred or
    /// declared types, or the existing one's columns) and the first rows that would be
    /// written or refused, then exit.
    #[arg(long)]
    dry_run: bool,
}

/// Records a dry run maps and shows.
const DRY_RUN_RECORDS: usize = 10;
/// Characters of a value a dry run shows.
const DRY_RUN_VALUE_CHARS: usize = 40;

/// Notes and progress on stderr, the summary on stdout.
struct Terminal {
    bar: Mutex<Option<ProgressBar>>,
}

impl Observer for Terminal {
    fn note(&self, message: &str) {
        eprintln!("note: {message}");
    }

    fn started(&self, total_bytes: Option<u64>) {
        *lock(&self.bar) = Some(ProgressBar::new(total_bytes));
    }

    fn progress(&self, progress: &Progress) {
        if let Some(bar) = lock(&self.bar).as_mut() {
            bar.update(progress);
        }
    }

    fn finished(&self, report: &Report) {
        if let Some(bar) = lock(&self.bar).take() {
            bar.finish();
        }
        print_report(report);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn print_report(report: &Report) {
    let progress = &report.progress;
    if report.target == "nothing (parse only)" {
        println!(
            "parse only: {}: {} rows, {} refused",
            report.source, progress.rows_written, progress.dead_lettered
        );
        println!(
            "  records read:   {} ({} bytes)",
            progress.records, progress.bytes
        );
        println!(
            "  duration:       {:.3} s ({:.0} records/s)",
            report.elapsed.as_secs_f64(),
            report.records_per_second()
        );
        return;
    }
    println!(
        "ingest {}: {} into table {} of {}",
        report.status.name(),
        report.source,
        report.table,
        report.target
    );
    println!(
        "  records read:   {} ({} bytes)",
        progress.records, progress.bytes
    );
    println!("  rows written:   {}", progress.rows_written);
    println!("  dead-lettered:  {}", progress.dead_lettered);
    println!(
        "  duration:       {:.3} s ({:.0} records/s)",
        report.elapsed.as_secs_f64(),
        report.records_per_second()
    );
    match (&report.committed, report.exactly_once) {
        (Some(position), true) => println!("  committed:      {position}"),
        (None, true) => println!("  committed:      nothing new"),
        (_, false) => println!("  committed:      no position (at least once)"),
    }
}

fn print_preview(preview: &Preview) {
    let schema = &preview.schema;
    let table = schema.table();
    if preview.table_exists {
        println!(
            "table {table} exists in {}; rows are cast to its columns:",
            preview.target
        );
    } else {
        println!(
            "table {table} does not exist in {}; it would be created:",
            preview.target
        );
    }
    match &preview.create_table_sql {
        Some(sql) => println!("  {sql}"),
        None => {
            for column in schema.columns() {
                let null = if column.nullable { "" } else { " not null" };
                println!("  {} {}{null}", column.name, column.column_type);
            }
        }
    }
    println!(
        "the rows it would write from the first {} records:",
        preview.rows.len() + preview.rejected.len()
    );
    let names: Vec<&str> = schema.columns().iter().map(|c| c.name.as_str()).collect();
    println!("  {}", names.join(" | "));
    for row in &preview.rows {
        let values: Vec<String> = row
            .values
            .iter()
            .map(|value| {
                let text = value.to_string();
                if text.chars().count() > DRY_RUN_VALUE_CHARS {
                    let short: String = text.chars().take(DRY_RUN_VALUE_CHARS - 1).collect();
                    format!("{short}…")
                } else {
                    text
                }
            })
            .collect();
        println!("  {}", values.join(" | "));
    }
    if !preview.rejected.is_empty() {
        println!("records among them that would go to the dead letters:");
        for rejected in &preview.rejected {
            println!(
                "  {} {}: {}",
                rejected.position, rejected.code, rejected.reason
            );
        }
    }
    println!("nothing was written (dry run)");
}

fn usage(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: bad configuration: {error}");
    ExitCode::from(EXIT_USAGE)
}

/// Runs `sluice ingest`.
pub(crate) async fn run(args: IngestArgs) -> Result<ExitCode> {
    let file = match &args.config {
        None => PipelineSettings::default(),
        Some(path) => match PipelineSettings::from_toml_file(path) {
            Ok(file) => file,
            Err(error) => return Ok(usage(error)),
        },
    };
    let pipeline = match Pipeline::new(file.overlay(args.settings)) {
        Ok(pipeline) => pipeline,
        Err(error) => return Ok(usage(error)),
    };
    if let Some(address) = pipeline.metrics_listen() {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(address)
            .install()
            .with_context(|| format!("serving metrics on {address}"))?;
    }
    let terminal = Terminal {
        bar: Mutex::new(None),
    };
    if args.dry_run {
        return match pipeline.preview(DRY_RUN_RECORDS, &terminal).await {
            Ok(preview) => {
                print_preview(&preview);
                Ok(ExitCode::SUCCESS)
            }
            Err(error) if error.is_usage() => Ok(usage(error)),
            Err(error) => {
                eprintln!("error: {error}");
                Ok(ExitCode::FAILURE)
            }
        };
    }
    match pipeline.run(&terminal, wait_for_signal()).await {
        Ok(report) if report.status == Status::Stopped => {
            eprintln!(
                "stopped by {} at a checkpoint; run the same command again to resume",
                report.stopped_by.as_deref().unwrap_or("a signal")
            );
            Ok(ExitCode::from(EXIT_INTERRUPTED))
        }
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(error) if error.is_usage() => Ok(usage(error)),
        Err(error) => {
            eprintln!("error: {error}");
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn wait_for_signal() -> String {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "Cannot watch SIGTERM.");
                let _ = tokio::signal::ctrl_c().await;
                return "SIGINT".into();
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT".into(),
        _ = terminate.recv() => "SIGTERM".into(),
    }
}
