//! `sluice store copy`: moves every instance of a SQLite store (its histories, unconsumed
//! messages and timers, and activity work items) into a PostgreSQL store, where a runtime
//! carries on as if nothing had happened.

use anyhow::{Context, Result, bail};
use sluice_store_postgres::{PostgresStore, PostgresStoreOptions};
use std::process::ExitCode;

/// Instances per PostgreSQL transaction.
const BATCH_INSTANCES_MAX: usize = 500;

/// Options of `sluice store copy`.
#[derive(clap::Args, Debug)]
pub(crate) struct CopyArgs {
    /// The store to copy from: `sqlite://PATH`. No runtime may be using it (its lock file is
    /// taken for the copy).
    #[arg(long)]
    from: String,
    /// The store to copy to: `postgres://user:password@host/database`. None of the instances
    /// may exist there.
    #[arg(long)]
    to: String,
    /// The PostgreSQL schema holding the store's tables.
    #[arg(long, default_value = "sluice")]
    schema: String,
}

pub(crate) async fn run(args: CopyArgs) -> Result<ExitCode> {
    let Some(path) = args.from.strip_prefix("sqlite://") else {
        bail!("--from must be sqlite://PATH (copying from PostgreSQL is not built)");
    };
    if !(args.to.starts_with("postgres://") || args.to.starts_with("postgresql://")) {
        bail!("--to must be a postgres:// URL");
    }
    let path = std::path::Path::new(path);
    if !path.exists() {
        bail!("{} does not exist", path.display());
    }
    let source = crate::open_sqlite(path, crate::SyncMode::Full)
        .with_context(|| format!("opening {} (is a runtime still using it?)", path.display()))?;
    let mut options = PostgresStoreOptions::new(&args.to)?;
    options.schema = args.schema.clone();
    let target_name = options.target().to_string();
    let target = PostgresStore::connect(options)
        .await
        .with_context(|| format!("opening the PostgreSQL store on {target_name}"))?;
    let (mut instances, mut events, mut messages, mut items) = (0, 0, 0, 0);
    let mut after = None;
    loop {
        let batch = source
            .export_instances(after.clone(), BATCH_INSTANCES_MAX)
            .await
            .context("reading the SQLite store")?;
        let Some(last) = batch.last() else {
            break;
        };
        after = Some(last.instance_id.clone());
        target
            .import_instances(&batch)
            .await
            .context("writing to the PostgreSQL store")?;
        instances += batch.len();
        events += batch.iter().map(|i| i.history.len()).sum::<usize>();
        messages += batch.iter().map(|i| i.inbox.len()).sum::<usize>();
        items += batch.iter().map(|i| i.activities.len()).sum::<usize>();
    }
    println!(
        "copied {instances} instances ({events} history events, {messages} messages and timers, \
         {items} activity work items) from {} to {target_name} schema {}",
        path.display(),
        args.schema
    );
    Ok(ExitCode::SUCCESS)
}
