//! Sluice's benchmarks, as `sluice bench ...` runs them: users compare on their own hardware,
//! as they do with pgbench.
//!
//! - [`run_orchestrations`]: the reference runtime's stress workload (fan-out of five
//!   activities, closed loop) on SQLite or PostgreSQL, against the activity ceiling and the
//!   disk's raw commit rate measured in the same run.
//! - [`run_sink`]: the database sink against the raw limit of its database (binary `COPY` on
//!   PostgreSQL, one prepared statement in large transactions on SQLite) on the same rows.
//! - [`run_ingest`]: `sluice ingest` of a generated NDJSON file against `psql`'s COPY of the
//!   same rows.
//! - [`run_control_plane`]: listing and counting pages over a store of a million instances
//!   while it serves the orchestration workload.
//!
//! Every benchmark prints its figures with the machine's conditions (cores, load, server
//! settings) and the target each figure is held to, and writes them as JSON with `--json`.
//! One HDR histogram implementation gives every percentile, one `/proc` reader every
//! process figure, one seeded generator every data set, and raw limits encode values with the
//! sink backends' own encoders.
//!
//! PostgreSQL is the server `--pg-url` names; with the `throwaway-postgres` feature, a
//! throwaway cluster (initdb + pg_ctl) when it is not given.
//!
//! Errors are `anyhow`: a benchmark's failure is printed and ends the command, nothing
//! matches on it.
//!
//! Each benchmark's options are a `clap::Args` value, so another binary can offer the same
//! command:
//!
//! ```no_run
//! use clap::Parser;
//!
//! #[derive(Parser)]
//! struct Bench {
//!     #[command(flatten)]
//!     sink: sluice_bench::SinkBenchArgs,
//! }
//!
//! # async fn example() -> anyhow::Result<()> {
//! let args = Bench::parse_from(["bench", "--target", "sqlite", "--json", "sink.json"]);
//! let exit = sluice_bench::run_sink(args.sink).await?; // prints the figures, writes the JSON
//! # let _ = exit;
//! # Ok(()) }
//! ```

mod control_plane;
mod generate;
mod host;
mod ingest;
mod orchestrations;
mod postgres;
mod processes;
mod sink;
mod stats;

pub use control_plane::{ControlPlaneBenchArgs, run as run_control_plane};
pub use ingest::{IngestBenchArgs, run as run_ingest};
pub use orchestrations::{OrchestrationBenchArgs, register, run as run_orchestrations};
pub use processes::{WorkerReport, write_report};
pub use sink::{SinkBenchArgs, run as run_sink};
pub use stats::LatencyMs;

/// Commit durability on SQLite, as the orchestration benchmark (and the binary's SQLite
/// commands) take it on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncMode {
    /// Every commit is on disk before it is acknowledged.
    Full,
    /// Faster; a power loss may lose the last commits (a process crash does not).
    Normal,
}

impl SyncMode {
    /// The store's setting.
    pub fn synchronous(self) -> sluice_store_sqlite::Synchronous {
        match self {
            SyncMode::Full => sluice_store_sqlite::Synchronous::Full,
            SyncMode::Normal => sluice_store_sqlite::Synchronous::Normal,
        }
    }
}
