//! `sluice replay-check`: would this build's code break running instances?

use crate::instances::{StoreArgs, open, print};
use anyhow::Result;
use sluice_runtime::{InstanceFilter, ReplayCheckFailure, replay_check};
use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

/// Exit codes of `sluice replay-check`.
pub(crate) const EXIT_CODES: &str = "Exit codes: 0 every instance replays, 1 failed (the error is \
     printed on standard error), 2 bad usage, 3 some instance would fail (or has no code here).";

/// Options of `sluice replay-check`.
#[derive(clap::Args, Debug)]
pub(crate) struct ReplayCheckArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Only instances of this orchestration.
    #[arg(long)]
    name: Option<String>,
    /// Only instances whose id starts with this.
    #[arg(long)]
    id_prefix: Option<String>,
    /// Pass even when instances run an orchestration (or a version of one) that this binary
    /// does not register: other builds may host it.
    #[arg(long)]
    allow_unregistered: bool,
}

pub(crate) async fn run(args: ReplayCheckArgs) -> Result<ExitCode> {
    let store = open(&args.store).await?;
    // The code this binary runs: the demo's and the benchmark's orchestrations.
    let registry =
        sluice_bench::register(crate::workflows::registry(), 0, Arc::new(AtomicU64::new(0)));
    let filter = InstanceFilter {
        name: args.name.clone(),
        id_prefix: args.id_prefix.clone(),
        ..InstanceFilter::default()
    };
    let report = replay_check(store.as_ref(), &registry, &filter).await?;
    let failed = !report.failures.is_empty()
        || (!args.allow_unregistered && !report.unregistered.is_empty());
    if args.store.json {
        print(&serde_json::to_string_pretty(&report)?)?;
    } else {
        let mut text = format!(
            "replayed {} unfinished instance(s): {} would fail, {} have no code in this binary",
            report.checked,
            report.failures.len(),
            report.unregistered.len()
        );
        for (heading, list) in [
            ("would fail", &report.failures),
            ("no code here", &report.unregistered),
        ] {
            for problem in list.iter() {
                let _ = write!(text, "\n{heading}: {}", describe(problem));
            }
        }
        print(&text)?;
    }
    Ok(if failed {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

fn describe(problem: &ReplayCheckFailure) -> String {
    format!(
        "{} ({} v{}, execution {}): {}",
        problem.instance_id, problem.name, problem.version, problem.execution_id, problem.failure
    )
}
