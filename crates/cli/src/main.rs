//! The `sluice` binary: argument parsing and glue over the library crates (the demo, the
//! ingest, the workers, the benchmarks, inspection).
//! `anyhow` and exit codes live here only.

mod demo;
mod ingest;
mod ingest_progress;
mod instances;
mod replay_check;
mod store_copy;
mod worker;
mod workflows;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sluice_store_sqlite::{Location, SqliteStore, SqliteStoreOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// jemalloc instead of the system allocator: rows are allocated by one thread (an ingest
/// reader, a benchmark's generator) and freed by another (a flush lane once its batch is
/// durable), and glibc's malloc takes the allocating thread's arena lock for every such free.
/// The profile of `sluice ingest --parse-only` had a quarter of its samples in that lock's
/// futex waits and wakes; with jemalloc the same run takes 1.4-2.1 CPU s instead of 2.9-3.2,
/// at the same peak RSS (bench/results/README.md, ingest-round4). mimalloc was as fast but
/// kept 2-3x the memory resident.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Durable orchestrations and an exactly-once database sink",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More log output on standard error: -v info, -vv debug, -vvv trace (`RUST_LOG` or
    /// `SLUICE_LOG`, as `tracing` filter directives, take precedence).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Errors only in the log; progress bars and summaries are unaffected.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// The log's format: `text` for people, `json` (one object per line) for collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Printed after every command's help (the ingest's has its own, with codes 2 and 130).
const EXIT_CODES: &str =
    "Exit codes: 0 done, 1 failed (the error is printed on standard error), 2 bad usage.";

/// The log filter: `RUST_LOG`, else `SLUICE_LOG`, else the level -v/-q ask for.
fn log_filter(verbose: u8, quiet: bool) -> tracing_subscriber::EnvFilter {
    use tracing_subscriber::EnvFilter;
    for variable in ["RUST_LOG", "SLUICE_LOG"] {
        if let Ok(filter) = EnvFilter::try_from_env(variable) {
            return filter;
        }
    }
    EnvFilter::new(match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    })
}

fn init_logging(cli: &Cli) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(log_filter(cli.verbose, cli.quiet))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the sample order workflows on an embedded SQLite file; interrupt and re-run to resume.
    #[command(after_help = EXIT_CODES)]
    Demo(demo::DemoArgs),
    /// Benchmarks; each prints figures against a baseline measured in the same run, and can
    /// write JSON.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Move records from files, standard input or NATS JetStream into a database table,
    /// exactly once.
    #[command(after_long_help = ingest::EXAMPLES)]
    Ingest(Box<ingest::IngestArgs>),
    /// Host the demo's and the benchmark's orchestrations on a store shared with other
    /// workers (PostgreSQL), until SIGTERM or Ctrl-C.
    #[command(after_help = EXIT_CODES)]
    Worker(worker::WorkerArgs),
    /// Bring a PostgreSQL store's schema up to date (every process also does at start).
    #[command(after_help = EXIT_CODES)]
    Migrate(worker::MigrateArgs),
    /// Work with stores as a whole.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Find and read orchestration instances (also while a runtime runs on the store).
    #[command(subcommand)]
    Instances(instances::InstancesCommand),
    /// Replay every unfinished instance's history against the code in this binary, without
    /// taking work or writing anything, and report each that would fail (nondeterminism) with
    /// the mismatch: run it before deploying a build.
    #[command(name = "replay-check", after_help = replay_check::EXIT_CODES)]
    ReplayCheck(replay_check::ReplayCheckArgs),
    /// Print a shell completion script (for example `sluice completions bash >
    /// /etc/bash_completion.d/sluice`, or `source <(sluice completions zsh)`).
    #[command(after_help = EXIT_CODES)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) on standard output, or with --out-dir write one page per
    /// command (`sluice.1`, `sluice-ingest.1`, `sluice-bench-sink.1`, ...) into a directory.
    #[command(after_help = EXIT_CODES)]
    Man {
        /// Write every command's page into this existing directory.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Print an instance's status and history as JSON.
    #[command(after_help = EXIT_CODES)]
    Inspect {
        /// The SQLite database.
        #[arg(long, default_value = "sluice-demo.db")]
        db: PathBuf,
        /// The instance id.
        instance_id: String,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Move every instance of a stopped SQLite store (histories, messages, timers, activity
    /// work) into a PostgreSQL store, where runtimes carry on with them.
    #[command(after_help = EXIT_CODES)]
    Copy(store_copy::CopyArgs),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The orchestration stress workload (fan-out of five activities, closed loop).
    #[command(after_help = EXIT_CODES)]
    Orchestrations(sluice_bench::OrchestrationBenchArgs),
    /// The database sink against the raw limit of its database on the same rows.
    #[command(after_help = EXIT_CODES)]
    Sink(sluice_bench::SinkBenchArgs),
    /// `sluice ingest` of NDJSON into PostgreSQL against psql's COPY of the same rows.
    #[command(after_help = EXIT_CODES)]
    Ingest(sluice_bench::IngestBenchArgs),
    /// Listing and counting instances over a large store while it serves the orchestration
    /// workload.
    #[command(after_help = EXIT_CODES)]
    ControlPlane(sluice_bench::ControlPlaneBenchArgs),
}

pub(crate) use sluice_bench::SyncMode;

pub(crate) fn open_sqlite(db: &std::path::Path, sync: SyncMode) -> Result<Arc<SqliteStore>> {
    let mut options = SqliteStoreOptions::new(Location::File(db.to_path_buf()));
    options.synchronous = sync.synchronous();
    let store = SqliteStore::open(options).with_context(|| format!("opening {}", db.display()))?;
    Ok(Arc::new(store))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo(args) => demo::run(args).await,
            Command::Bench(BenchCommand::Orchestrations(args)) => {
                sluice_bench::run_orchestrations(args).await
            }
            Command::Bench(BenchCommand::Sink(args)) => sluice_bench::run_sink(args).await,
            Command::Bench(BenchCommand::Ingest(args)) => sluice_bench::run_ingest(args).await,
            Command::Bench(BenchCommand::ControlPlane(args)) => {
                sluice_bench::run_control_plane(args).await
            }
            Command::Ingest(args) => ingest::run(*args).await,
            Command::Worker(args) => worker::run(args).await,
            Command::Migrate(args) => worker::migrate(args).await,
            Command::Store(StoreCommand::Copy(args)) => store_copy::run(args).await,
            Command::Instances(command) => instances::run(command).await,
            Command::ReplayCheck(args) => replay_check::run(args).await,
            Command::Completions { shell } => completions(shell),
            Command::Man { out_dir } => man(out_dir.as_deref()),
            Command::Inspect { db, instance_id } => inspect(&db, &instance_id).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The completion script of `shell`, generated from the same definitions as the parser.
fn completions(shell: clap_complete::Shell) -> Result<ExitCode> {
    use clap::CommandFactory;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "sluice", &mut script);
    print_quietly_on_closed_pipe(std::str::from_utf8(&script)?.trim_end())?;
    Ok(ExitCode::SUCCESS)
}

/// The manual pages, generated from the same definitions as the parser.
fn man(out_dir: Option<&std::path::Path>) -> Result<ExitCode> {
    use clap::CommandFactory;
    let command = Cli::command();
    match out_dir {
        Some(dir) => {
            anyhow::ensure!(dir.is_dir(), "{} is not a directory", dir.display());
            clap_mangen::generate_to(command, dir)
                .with_context(|| format!("writing the manual pages into {}", dir.display()))?;
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command).render(&mut page)?;
            print_quietly_on_closed_pipe(std::str::from_utf8(&page)?.trim_end())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn inspect(db: &std::path::Path, instance_id: &str) -> Result<ExitCode> {
    anyhow::ensure!(db.exists(), "{} does not exist", db.display());
    let store = open_sqlite(db, SyncMode::Full)?;
    let client = sluice_runtime::Client::new(store, Duration::from_secs(1));
    let Some(info) = client.status(instance_id).await? else {
        anyhow::bail!("no instance '{instance_id}' in {}", db.display());
    };
    let history = client.history(instance_id).await?;
    let report = serde_json::json!({ "instance": info, "history": history });
    print_quietly_on_closed_pipe(&serde_json::to_string_pretty(&report)?)?;
    Ok(ExitCode::SUCCESS)
}

/// Writes `text` and a newline to standard output; a reader that went away (`sluice inspect
/// ID | head`) ends the output quietly instead of failing.
fn print_quietly_on_closed_pipe(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
