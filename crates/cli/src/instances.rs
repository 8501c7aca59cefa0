//! `sluice instances`: find, read, terminate, suspend and resume orchestration instances on any
//! store, also while a runtime runs on it (a SQLite file is opened as a client: see
//! `SqliteStoreOptions::client_only`; the owner sees an action at its next poll at the latest,
//! and a turn it was running when the action came is refused at its commit).

use anyhow::{Context, Result, bail};
use sluice_runtime::{Client, ClientError, InstanceStatus, StartOutcome};
use sluice_store::bulk::{BulkAction, BulkOutcome, BulkRequest, run_bulk};
use sluice_store::{
    ChildPolicy, ExecutionInfo, InstanceFilter, InstanceOrder, InstanceQuery, InstanceSummary,
    OperatorRequest, PageCursor, PurgeFilter, Store, StoreError, TimeRange,
};
use sluice_store_postgres::{PostgresStore, PostgresStoreOptions};
use sluice_store_sqlite::{Location, SqliteStore, SqliteStoreOptions};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

/// Exit codes of `sluice instances`.
pub(crate) const EXIT_CODES: &str = "Exit codes: 0 done, 1 failed (the error is printed on \
     standard error), 2 bad usage, 3 no such instance (show, history and the actions).";

/// The exit code of a lookup of an instance that does not exist.
const NOT_FOUND: u8 = 3;

/// Where the store is, for every `sluice instances` command.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct StoreArgs {
    /// The store: `sqlite://PATH` (opened as a client, so a runtime may be running on it),
    /// or `postgres://user:password@host/database`.
    #[arg(long)]
    pub(crate) store: String,
    /// The PostgreSQL schema holding the store's tables.
    #[arg(long, default_value = "sluice")]
    pub(crate) schema: String,
    /// Print JSON (one document) instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Show times in UTC instead of the local time zone.
    #[arg(long)]
    utc: bool,
}

/// `sluice instances` commands.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum InstancesCommand {
    /// List instances, newest first, a page at a time.
    #[command(after_help = EXIT_CODES)]
    List(ListArgs),
    /// Show one instance: its row, its input and output, and its executions.
    #[command(after_help = EXIT_CODES)]
    Show {
        #[command(flatten)]
        store: StoreArgs,
        /// The instance id.
        instance_id: String,
    },
    /// Print an execution's history, a page at a time.
    #[command(after_help = EXIT_CODES)]
    History(HistoryArgs),
    /// Count instances by status and orchestration name.
    #[command(after_help = EXIT_CODES)]
    Counts {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Start an orchestration instance (nothing changes when the id exists).
    #[command(after_help = EXIT_CODES)]
    Start {
        #[command(flatten)]
        store: StoreArgs,
        /// The orchestration's name.
        name: String,
        /// The instance id.
        instance_id: String,
        /// Its input (the orchestration's own format, usually JSON).
        #[arg(long, default_value = "")]
        input: String,
    },
    /// Raise an event on an unfinished instance (kept until its code waits for it).
    #[command(after_help = EXIT_CODES)]
    Raise {
        #[command(flatten)]
        store: StoreArgs,
        /// The instance id.
        instance_id: String,
        /// The event's name.
        event: String,
        /// Its data.
        #[arg(long, default_value = "")]
        data: String,
    },
    /// Ask an instance to cancel: its code sees the cancellation and compensates, and its
    /// awaited sub-orchestrations are cancelled too (`terminate` ends it without its code).
    #[command(after_help = EXIT_CODES)]
    Cancel {
        #[command(flatten)]
        store: StoreArgs,
        /// The instance id.
        instance_id: String,
        /// Why (recorded in its history).
        #[arg(long)]
        reason: String,
        /// Who asks (recorded); default: `$USER via sluice instances`.
        #[arg(long)]
        by: Option<String>,
    },
    /// End an unfinished instance now, without running its code (no compensation).
    #[command(after_help = EXIT_CODES)]
    Terminate {
        #[command(flatten)]
        action: ActionArgs,
        /// What becomes of its unfinished sub-orchestrations.
        #[arg(long, value_enum, default_value_t = Children::Terminate)]
        children: Children,
    },
    /// Stop running turns of an instance; it keeps receiving events and results.
    #[command(after_help = EXIT_CODES)]
    Suspend {
        #[command(flatten)]
        action: ActionArgs,
    },
    /// Run a suspended instance again, with everything that arrived meanwhile.
    #[command(after_help = EXIT_CODES)]
    Resume {
        #[command(flatten)]
        action: ActionArgs,
    },
    /// Put a quarantined instance back in service (its messages again, fresh delivery counts).
    #[command(after_help = EXIT_CODES)]
    Retry {
        #[command(flatten)]
        action: ActionArgs,
    },
    /// Fail a quarantined instance for good (code `discarded`).
    #[command(after_help = EXIT_CODES)]
    Discard {
        #[command(flatten)]
        action: ActionArgs,
    },
    /// Run a failed instance again from before its last failure: the failed activity or
    /// sub-orchestration (rewound too) runs again, the rest of its history is kept.
    #[command(after_help = EXIT_CODES)]
    Rewind {
        #[command(flatten)]
        action: ActionArgs,
    },
    /// Start a finished instance again from its input: as a new execution under its id, or
    /// with `--as` as a new instance (then the original may be in any status).
    #[command(after_help = EXIT_CODES)]
    Restart(RestartArgs),
    /// Remove finished instances and everything stored for them: one by id (with its finished
    /// sub-orchestrations), or all that finished before a time (`--finished-before`), which
    /// shows how many match and a sample and removes them only with `--yes`.
    #[command(after_help = EXIT_CODES)]
    Purge(PurgeArgs),
}

/// Options of `sluice instances purge`.
#[derive(clap::Args, Debug)]
pub(crate) struct PurgeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The instance to remove (with its finished sub-orchestrations).
    #[arg(conflicts_with_all = ["finished_before", "status", "name"])]
    instance_id: Option<String>,
    /// Remove the instances that finished before this: an RFC 3339 time or an age (`30d`).
    #[arg(long, value_parser = parse_time, required_unless_present = "instance_id")]
    finished_before: Option<i64>,
    /// Only these final statuses, comma-separated (completed, failed, cancelled, terminated).
    #[arg(long, value_delimiter = ',', value_parser = parse_status)]
    status: Vec<InstanceStatus>,
    /// Only this orchestration.
    #[arg(long)]
    name: Option<String>,
    /// Show how many match and a sample, and remove nothing (the default without `--yes`).
    #[arg(long, conflicts_with = "yes")]
    dry_run: bool,
    /// Remove them.
    #[arg(long)]
    yes: bool,
    /// Instances removed per transaction.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch: u32,
}

/// What every operator action takes: one instance by id, or every instance the filter options
/// select (a bulk action: a dry run with the count and a sample unless `--yes`). The reason and
/// the operator go into each instance's history.
#[derive(clap::Args, Debug)]
pub(crate) struct ActionArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The instance id; without it, the filter options select the instances.
    instance_id: Option<String>,
    #[command(flatten)]
    filter: FilterArgs,
    /// Why (recorded in the instance's history).
    #[arg(long)]
    reason: String,
    /// Who asks (recorded); default: `$USER via sluice instances`.
    #[arg(long)]
    by: Option<String>,
    /// A bulk action: show how many match and a sample, and change nothing (the default
    /// without `--yes`).
    #[arg(long, conflicts_with = "yes")]
    dry_run: bool,
    /// A bulk action: act on every instance that matches.
    #[arg(long)]
    yes: bool,
}

impl ActionArgs {
    fn requested_by(&self) -> String {
        self.by.clone().unwrap_or_else(default_requested_by)
    }
}

/// Options of `sluice instances restart`.
#[derive(clap::Args, Debug)]
pub(crate) struct RestartArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The instance id.
    instance_id: String,
    /// Start a new instance of this id instead (same orchestration, same input).
    #[arg(long = "as", value_name = "ID")]
    as_instance: Option<String>,
    /// Start from this input instead of the instance's.
    #[arg(long)]
    input: Option<String>,
    /// Why (recorded in the ended execution's history).
    #[arg(long)]
    reason: String,
    /// Who asks (recorded); default: `$USER via sluice instances`.
    #[arg(long)]
    by: Option<String>,
}

/// `--children` of `terminate`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub(crate) enum Children {
    /// Terminate them too, and theirs.
    Terminate,
    /// Send them a cancel: their code compensates.
    Cancel,
    /// Leave them running.
    Abandon,
}

/// Which instances: the filter of `list` and of the bulk actions.
#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct FilterArgs {
    /// Only these statuses, comma-separated (pending, running, suspended, quarantined,
    /// completed, failed, cancelled, terminated).
    #[arg(long, value_delimiter = ',', value_parser = parse_status)]
    status: Vec<InstanceStatus>,
    /// Only this orchestration.
    #[arg(long)]
    name: Option<String>,
    /// Only ids that start with this.
    #[arg(long)]
    prefix: Option<String>,
    /// Only sub-orchestrations of this instance.
    #[arg(long)]
    parent: Option<String>,
    /// Created at or after: an RFC 3339 time (`2026-12-03T10:00:00Z`) or an age (`90s`,
    /// `15m`, `2h`, `7d` ago).
    #[arg(long, value_parser = parse_time)]
    created_after: Option<i64>,
    /// Created before (same forms).
    #[arg(long, value_parser = parse_time)]
    created_before: Option<i64>,
    /// Finished at or after (same forms); leaves out unfinished instances.
    #[arg(long, value_parser = parse_time)]
    finished_after: Option<i64>,
    /// Finished before (same forms); leaves out unfinished instances.
    #[arg(long, value_parser = parse_time)]
    finished_before: Option<i64>,
}

impl FilterArgs {
    fn filter(&self) -> InstanceFilter {
        InstanceFilter {
            statuses: self.status.clone(),
            name: self.name.clone(),
            created: TimeRange {
                from_ms: self.created_after,
                to_ms: self.created_before,
            },
            finished: TimeRange {
                from_ms: self.finished_after,
                to_ms: self.finished_before,
            },
            id_prefix: self.prefix.clone(),
            parent: self.parent.clone(),
        }
    }

    fn is_empty(&self) -> bool {
        self.filter() == InstanceFilter::default()
    }
}

/// Options of `sluice instances list`.
#[derive(clap::Args, Debug)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    filter: FilterArgs,
    /// Order by creation or by last update.
    #[arg(long, value_enum, default_value_t = OrderBy::Created)]
    order: OrderBy,
    /// Oldest first.
    #[arg(long)]
    asc: bool,
    /// Instances per page (at most 1,000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    limit: u32,
    /// Continue after this cursor (printed as `next` under a full page).
    #[arg(long)]
    after: Option<String>,
}

/// What `list` orders by.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum OrderBy {
    /// Creation time.
    Created,
    /// Last update.
    Updated,
}

/// Options of `sluice instances history`.
#[derive(clap::Args, Debug)]
pub(crate) struct HistoryArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The instance id.
    instance_id: String,
    /// The execution (default: the current one).
    #[arg(long)]
    execution: Option<u64>,
    /// The first position to print.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Events to print at most.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    limit: u32,
}

fn parse_status(text: &str) -> Result<InstanceStatus, String> {
    InstanceStatus::parse(text.trim()).ok_or_else(|| {
        format!(
            "unknown status '{text}' (pending, running, completed, failed, cancelled, quarantined)"
        )
    })
}

/// A time as milliseconds since the epoch: RFC 3339, or an age (`15m`) before now.
fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(timestamp) = text.parse::<jiff::Timestamp>() {
        return Ok(timestamp.as_millisecond());
    }
    let age = parse_age(text).map_err(|_| {
        format!(
            "'{text}' is neither an RFC 3339 time (2026-12-03T10:00:00Z) nor an age (90s, 15m, \
             2h, 7d)"
        )
    })?;
    let now = jiff::Timestamp::now().as_millisecond();
    i64::try_from(age.as_millis())
        .ok()
        .and_then(|age| now.checked_sub(age))
        .ok_or_else(|| format!("'{text}' is too far back"))
}

/// An age: a whole number with a unit, `90s`, `15m`, `2h` or `7d`.
pub(crate) fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit_s: u64 = match &text[digits.len()..] {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(format!("'{text}' is not an age (90s, 15m, 2h, 7d)")),
    };
    let count: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}': the age needs a whole number before its unit"))?;
    count
        .checked_mul(unit_s)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("'{text}' is too long an age"))
}

/// Opens the store for an operator: a SQLite file as a client, PostgreSQL with a small pool.
pub(crate) async fn open(args: &StoreArgs) -> Result<Arc<dyn Store>> {
    let url = args.store.as_str();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let mut options = PostgresStoreOptions::new(url)?;
        options.schema = args.schema.clone();
        options.pool_connections_max = 2;
        options.listen = false;
        let target = options.target().to_string();
        let store = PostgresStore::connect(options)
            .await
            .with_context(|| format!("opening the PostgreSQL store on {target}"))?;
        Ok(Arc::new(store))
    } else if let Some(path) = url.strip_prefix("sqlite://") {
        let options = SqliteStoreOptions {
            client_only: true,
            ..SqliteStoreOptions::new(Location::File(path.into()))
        };
        let store = SqliteStore::open(options).with_context(|| format!("opening {path}"))?;
        Ok(Arc::new(store))
    } else if url.starts_with("sqlite::memory:") {
        bail!(
            "--store sqlite::memory: names a store that lives inside one process: this command \
             would see an empty one, gone when it exits. Give the file of a SQLite store \
             (sqlite://PATH) or a PostgreSQL URL"
        )
    } else {
        bail!("--store must start with sqlite://, postgres:// or postgresql://")
    }
}

pub(crate) async fn run(command: InstancesCommand) -> Result<ExitCode> {
    let (action, bulk_action) = match command {
        InstancesCommand::List(args) => return list(args).await,
        InstancesCommand::Show { store, instance_id } => return show(&store, &instance_id).await,
        InstancesCommand::History(args) => return history(args).await,
        InstancesCommand::Counts { store } => return counts(&store).await,
        InstancesCommand::Purge(args) => return purge(args).await,
        InstancesCommand::Restart(args) => return restart(args).await,
        InstancesCommand::Start {
            store,
            name,
            instance_id,
            input,
        } => return start(&store, &name, &instance_id, input).await,
        InstancesCommand::Raise {
            store,
            instance_id,
            event,
            data,
        } => {
            return message(&store, &instance_id, "raised", async |client| {
                client.raise_event(&instance_id, &event, data).await
            })
            .await;
        }
        InstancesCommand::Cancel {
            store,
            instance_id,
            reason,
            by,
        } => {
            let by = by.unwrap_or_else(default_requested_by);
            return message(&store, &instance_id, "asked to cancel", async |client| {
                client.cancel_as(&instance_id, &reason, &by).await
            })
            .await;
        }
        InstancesCommand::Terminate { action, children } => {
            let children = match children {
                Children::Terminate => ChildPolicy::Terminate,
                Children::Cancel => ChildPolicy::Cancel,
                Children::Abandon => ChildPolicy::Abandon,
            };
            (action, BulkAction::Terminate(children))
        }
        InstancesCommand::Suspend { action } => (action, BulkAction::Suspend),
        InstancesCommand::Resume { action } => (action, BulkAction::Resume),
        InstancesCommand::Retry { action } => (action, BulkAction::Retry),
        InstancesCommand::Discard { action } => (action, BulkAction::Discard),
        InstancesCommand::Rewind { action } => (action, BulkAction::Rewind),
    };
    match (&action.instance_id, action.filter.is_empty()) {
        (Some(_), false) => {
            eprintln!("give an instance id or filter options (--status, --name, ...), not both");
            return Ok(ExitCode::from(2));
        }
        (None, true) => {
            eprintln!(
                "give an instance id, or filter options (--status, --name, --prefix, \
                 --created-before, ...) to act on every instance they select"
            );
            return Ok(ExitCode::from(2));
        }
        (None, false) => return bulk(&action, bulk_action).await,
        (Some(_), true) => {}
    }
    match bulk_action {
        BulkAction::Terminate(children) => {
            act(&action, "terminated", async |store, request| {
                let ids = store.terminate_instance(request, children).await?;
                Ok((true, ids))
            })
            .await
        }
        BulkAction::Suspend => {
            act(&action, "suspended", async |store, request| {
                Ok((store.suspend_instance(request).await?, Vec::new()))
            })
            .await
        }
        BulkAction::Resume => {
            act(&action, "resumed", async |store, request| {
                Ok((store.resume_instance(request).await?, Vec::new()))
            })
            .await
        }
        BulkAction::Retry => {
            act(&action, "put back in service", async |store, request| {
                Ok((store.retry_instance(request).await?, Vec::new()))
            })
            .await
        }
        BulkAction::Rewind => {
            act(&action, "rewound", async |store, request| {
                Ok((true, store.rewind_instance(request).await?.1))
            })
            .await
        }
        BulkAction::Discard => {
            act(&action, "discarded", async |store, request| {
                store.discard_instance(request).await?;
                Ok((true, Vec::new()))
            })
            .await
        }
    }
}

async fn start(args: &StoreArgs, name: &str, instance_id: &str, input: String) -> Result<ExitCode> {
    let client = Client::new(open(args).await?, std::time::Duration::from_secs(1));
    let created = client.start(name, instance_id, input).await? == StartOutcome::Created;
    if args.json {
        let report = serde_json::json!({ "instance_id": instance_id, "created": created });
        return print(&serde_json::to_string_pretty(&report)?);
    }
    print(&if created {
        format!("{instance_id} started ({name})")
    } else {
        format!("{instance_id} exists already: nothing changed")
    })
}

/// Sends an instance a message through a client; reports it (`verb`) or that it is missing.
async fn message(
    args: &StoreArgs,
    instance_id: &str,
    verb: &str,
    send: impl AsyncFnOnce(&Client) -> Result<(), ClientError>,
) -> Result<ExitCode> {
    let client = Client::new(open(args).await?, std::time::Duration::from_secs(1));
    match send(&client).await {
        Ok(()) => {}
        Err(ClientError::NotFound(id)) => {
            eprintln!("no instance '{id}' in the store");
            return Ok(ExitCode::from(NOT_FOUND));
        }
        Err(error) => return Err(error.into()),
    }
    if args.json {
        let report = serde_json::json!({ "instance_id": instance_id, "sent": true });
        return print(&serde_json::to_string_pretty(&report)?);
    }
    print(&format!("{instance_id}: {verb}"))
}

fn default_requested_by() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "someone".into());
    format!("{user} via sluice instances")
}

async fn restart(args: RestartArgs) -> Result<ExitCode> {
    let store = open(&args.store).await?;
    let request = OperatorRequest {
        instance_id: args.instance_id.clone(),
        reason: args.reason.clone(),
        requested_by: args.by.clone().unwrap_or_else(default_requested_by),
    };
    let (id, execution) = match store
        .restart_instance(&request, args.as_instance.as_deref(), args.input.as_deref())
        .await
    {
        Ok(restarted) => restarted,
        Err(StoreError::InstanceNotFound(id)) => {
            eprintln!("no instance '{id}' in the store");
            return Ok(ExitCode::from(NOT_FOUND));
        }
        Err(error) => return Err(error.into()),
    };
    if args.store.json {
        let report = serde_json::json!({ "instance_id": id, "execution_id": execution });
        return print(&serde_json::to_string_pretty(&report)?);
    }
    print(&format!("{id} restarted: execution {execution} is pending"))
}

/// An action on every instance the filter selects: a dry run unless `--yes`.
async fn bulk(args: &ActionArgs, action: BulkAction) -> Result<ExitCode> {
    let store = open(&args.store).await?;
    let mut request = BulkRequest::new(
        action,
        args.filter.filter(),
        args.reason.clone(),
        args.requested_by(),
    );
    request.confirmed = args.yes;
    let bar = if args.yes && std::io::stderr().is_terminal() && !args.store.json {
        let matching = store.count_instances(&request.filter).await?;
        let bar = indicatif::ProgressBar::new(matching);
        bar.set_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{{bar:40}} {{pos}}/{{len}} instances {} ({{per_sec}}, {{eta}} left)",
                action.done_verb()
            ))
            .expect("a valid template"),
        );
        Some(bar)
    } else {
        None
    };
    let outcome = run_bulk(store.as_ref(), &request, |done| {
        if let Some(bar) = &bar {
            bar.set_position(done);
        }
    })
    .await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if args.store.json {
        return print(&serde_json::to_string_pretty(&outcome)?);
    }
    match outcome {
        BulkOutcome::DryRun { matching, sample } => {
            let clock = Clock::new(args.store.utc);
            let mut text = format!("{matching} instances match; the first (oldest first):\n");
            let mut table = Table::new(&["ID", "NAME", "STATUS", "CREATED", "DETAIL"]);
            for instance in &sample {
                table.row(vec![
                    instance.instance_id.clone(),
                    instance.name.clone(),
                    instance.status.as_str().to_string(),
                    clock.format(Some(instance.created_at_ms)),
                    detail(instance),
                ]);
            }
            text.push_str(&table.render(&[40, 24, 11, 23, 60]));
            text.push_str(&format!(
                "nothing was changed: run again with --yes to have them {}",
                action.done_verb()
            ));
            print(&text)
        }
        BulkOutcome::Done { acted, unchanged } => print(&format!(
            "{} {acted} instances; {unchanged} matched but were left as they were (already so, \
             or no longer in a state for it)",
            action.done_verb()
        )),
    }
}

async fn purge(args: PurgeArgs) -> Result<ExitCode> {
    let store = open(&args.store).await?;
    if let Some(id) = &args.instance_id {
        let removed = match store.purge_instance(id).await {
            Ok(removed) => removed,
            Err(StoreError::InstanceNotFound(id)) => {
                eprintln!("no instance '{id}' in the store");
                return Ok(ExitCode::from(NOT_FOUND));
            }
            Err(error) => return Err(error.into()),
        };
        if args.store.json {
            return print(&serde_json::to_string_pretty(
                &serde_json::json!({ "purged": removed }),
            )?);
        }
        return print(&format!("purged {}", removed.join(", ")));
    }
    if let Some(refused) = args.status.iter().find(|status| !status.is_terminal()) {
        bail!(
            "--status {}: only finished instances (completed, failed, cancelled, terminated) \
             are purged",
            refused.as_str()
        );
    }
    let filter = PurgeFilter {
        statuses: args.status.clone(),
        finished_before_ms: args
            .finished_before
            .expect("clap requires it without an id"),
        name: args.name.clone(),
    };
    if !args.yes {
        let matching = store.count_purgeable(&filter).await?;
        let sample = store
            .list_instances(&InstanceQuery {
                filter: filter.as_listing(),
                order: InstanceOrder::UpdatedAsc,
                page_size: 10,
                after: None,
            })
            .await?;
        if args.store.json {
            let report = serde_json::json!({
                "dry_run": true,
                "matching": matching,
                "sample": sample.instances,
            });
            return print(&serde_json::to_string_pretty(&report)?);
        }
        let clock = Clock::new(args.store.utc);
        let mut text = format!("{matching} instances match; the first to go:\n");
        let mut table = Table::new(&["ID", "NAME", "STATUS", "FINISHED"]);
        for instance in &sample.instances {
            table.row(vec![
                instance.instance_id.clone(),
                instance.name.clone(),
                instance.status.as_str().to_string(),
                clock.format(instance.finished_at_ms),
            ]);
        }
        text.push_str(&table.render(&[40, 24, 11, 23]));
        text.push_str("nothing was removed: run again with --yes to purge them");
        return print(&text);
    }
    let matching = store.count_purgeable(&filter).await?;
    let bar = if std::io::stderr().is_terminal() && !args.store.json {
        let bar = indicatif::ProgressBar::new(matching);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} instances purged ({per_sec}, {eta} left)",
            )
            .expect("a valid template"),
        );
        Some(bar)
    } else {
        None
    };
    let began = std::time::Instant::now();
    let mut purged: u64 = 0;
    loop {
        let removed = store.purge_batch(&filter, args.batch as usize).await?;
        if removed == 0 {
            break;
        }
        purged += removed as u64;
        if let Some(bar) = &bar {
            bar.set_position(purged.min(matching));
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let seconds = began.elapsed().as_secs_f64();
    if args.store.json {
        let report = serde_json::json!({ "dry_run": false, "purged": purged, "seconds": seconds });
        return print(&serde_json::to_string_pretty(&report)?);
    }
    print(&format!("purged {purged} instances in {seconds:.1} s"))
}

/// Runs one operator action and reports it: `done` says whether it changed anything, the
/// ids are what it terminated.
async fn act(
    args: &ActionArgs,
    verb: &str,
    action: impl AsyncFnOnce(&dyn Store, &OperatorRequest) -> Result<(bool, Vec<String>), StoreError>,
) -> Result<ExitCode> {
    let store = open(&args.store).await?;
    let request = OperatorRequest {
        instance_id: args.instance_id.clone().unwrap_or_default(),
        reason: args.reason.clone(),
        requested_by: args.requested_by(),
    };
    let (changed, ids) = match action(store.as_ref(), &request).await {
        Ok(done) => done,
        Err(StoreError::InstanceNotFound(id)) => {
            eprintln!("no instance '{id}' in the store");
            return Ok(ExitCode::from(NOT_FOUND));
        }
        Err(error) => return Err(error.into()),
    };
    if args.store.json {
        // The ids the action took along: `terminated` (with children) or `rewound`.
        let mut report = serde_json::json!({
            "instance_id": request.instance_id,
            "changed": changed,
        });
        if !ids.is_empty() {
            report[verb] = serde_json::json!(ids);
        }
        return print(&serde_json::to_string_pretty(&report)?);
    }
    let text = match (changed, ids.len()) {
        (false, _) => format!("{}: nothing to do (already so)", request.instance_id),
        (true, 0 | 1) => format!("{} {verb}", request.instance_id),
        (true, n) => format!(
            "{} {verb}, with {} sub-orchestrations: {}",
            request.instance_id,
            n - 1,
            ids[1..].join(", ")
        ),
    };
    print(&text)
}

async fn list(args: ListArgs) -> Result<ExitCode> {
    let store = open(&args.store).await?;
    let order = match (args.order, args.asc) {
        (OrderBy::Created, false) => InstanceOrder::CreatedDesc,
        (OrderBy::Created, true) => InstanceOrder::CreatedAsc,
        (OrderBy::Updated, false) => InstanceOrder::UpdatedDesc,
        (OrderBy::Updated, true) => InstanceOrder::UpdatedAsc,
    };
    let after = args
        .after
        .as_deref()
        .map(str::parse::<PageCursor>)
        .transpose()?;
    let query = InstanceQuery {
        filter: args.filter.filter(),
        order,
        page_size: args.limit as usize,
        after,
    };
    let page = store.list_instances(&query).await?;
    if args.store.json {
        return print(&serde_json::to_string_pretty(&page)?);
    }
    let clock = Clock::new(args.store.utc);
    let mut table = Table::new(&[
        "ID", "NAME", "STATUS", "CREATED", "UPDATED", "FINISHED", "DETAIL",
    ]);
    for instance in &page.instances {
        table.row(vec![
            instance.instance_id.clone(),
            instance.name.clone(),
            instance.status.as_str().to_string(),
            clock.format(Some(instance.created_at_ms)),
            clock.format(Some(instance.updated_at_ms)),
            clock.format(instance.finished_at_ms),
            detail(instance),
        ]);
    }
    let mut text = table.render(&[40, 24, 11, 23, 23, 23, 60]);
    if page.instances.is_empty() {
        text.push_str("(no instances match)\n");
    }
    if let Some(next) = &page.next {
        text.push_str(&format!("next: --after '{next}'\n"));
    }
    print(text.trim_end())
}

/// The failure (code: message), else the custom status.
fn detail(instance: &InstanceSummary) -> String {
    match (&instance.failure, &instance.custom_status) {
        (Some(failure), _) => format!("{}: {}", failure.code, failure.message),
        (None, Some(custom)) => custom.clone(),
        (None, None) => String::new(),
    }
}

async fn show(args: &StoreArgs, instance_id: &str) -> Result<ExitCode> {
    let store = open(args).await?;
    let Some(info) = store.instance(instance_id).await? else {
        eprintln!("no instance '{instance_id}' in the store");
        return Ok(ExitCode::from(NOT_FOUND));
    };
    let executions = store.executions(instance_id).await?;
    if args.json {
        let report = serde_json::json!({ "instance": info, "executions": executions });
        return print(&serde_json::to_string_pretty(&report)?);
    }
    let clock = Clock::new(args.utc);
    let mut lines = vec![
        ("id", info.instance_id.clone()),
        ("name", info.name.clone()),
        ("status", info.status.as_str().to_string()),
        ("execution", info.execution_id.to_string()),
        (
            "parent",
            info.parent_id.clone().unwrap_or_else(|| "-".into()),
        ),
        ("created", clock.format(Some(info.created_at_ms))),
        ("started", clock.format(info.started_at_ms)),
        ("updated", clock.format(Some(info.updated_at_ms))),
        ("finished", clock.format(info.finished_at_ms)),
        (
            "custom status",
            info.custom_status.clone().unwrap_or_else(|| "-".into()),
        ),
        ("input", truncate(&info.input, 200)),
        (
            "output",
            info.output
                .as_deref()
                .map_or("-".into(), |o| truncate(o, 200)),
        ),
    ];
    if let Some(failure) = &info.failure {
        lines.push((
            "failure",
            format!("{}: {}", failure.code, truncate(&failure.message, 200)),
        ));
    }
    let mut text = String::new();
    for (label, value) in lines {
        text.push_str(&format!("{label:<14} {value}\n"));
    }
    text.push('\n');
    let mut table = Table::new(&["EXECUTION", "STATUS", "STARTED", "FINISHED", "EVENTS"]);
    for execution in &executions {
        table.row(execution_row(execution, &clock));
    }
    text.push_str(&table.render(&[9, 16, 23, 23, 10]));
    print(text.trim_end())
}

fn execution_row(execution: &ExecutionInfo, clock: &Clock) -> Vec<String> {
    vec![
        execution.execution_id.to_string(),
        execution.status.as_str().to_string(),
        clock.format(execution.started_at_ms),
        clock.format(execution.finished_at_ms),
        execution.history_len.to_string(),
    ]
}

async fn history(args: HistoryArgs) -> Result<ExitCode> {
    let store = open(&args.store).await?;
    let Some(info) = store.instance(&args.instance_id).await? else {
        eprintln!("no instance '{}' in the store", args.instance_id);
        return Ok(ExitCode::from(NOT_FOUND));
    };
    let execution = args.execution.unwrap_or(info.execution_id);
    let events = store
        .read_history_page(&args.instance_id, execution, args.from, args.limit as usize)
        .await?;
    let positions = (args.from..).zip(&events);
    if args.store.json {
        let events: Vec<serde_json::Value> = positions
            .map(|(position, event)| serde_json::json!({ "position": position, "event": event }))
            .collect();
        let report = serde_json::json!({
            "instance_id": info.instance_id,
            "execution_id": execution,
            "from": args.from,
            "events": events,
        });
        return print(&serde_json::to_string_pretty(&report)?);
    }
    let mut table = Table::new(&["POS", "EVENT", "DETAIL"]);
    for (position, event) in positions {
        let mut value = serde_json::to_value(event)?;
        let kind = value
            .as_object_mut()
            .and_then(|fields| fields.remove("type"))
            .and_then(|kind| kind.as_str().map(str::to_string))
            .unwrap_or_default();
        table.row(vec![position.to_string(), kind, value.to_string()]);
    }
    let mut text = table.render(&[8, 28, 100]);
    if events.len() == args.limit as usize {
        text.push_str(&format!(
            "more: --from {}\n",
            args.from + events.len() as u64
        ));
    }
    print(text.trim_end())
}

async fn counts(args: &StoreArgs) -> Result<ExitCode> {
    let store = open(args).await?;
    let counts = store.instance_counts().await?;
    if args.json {
        return print(&serde_json::to_string_pretty(&counts)?);
    }
    let by_status = store.count_by_status().await?;
    let mut table = Table::new(&["STATUS", "COUNT"]);
    let mut total = 0;
    for (status, count) in &by_status {
        total += count;
        table.row(vec![status.as_str().to_string(), count.to_string()]);
    }
    table.row(vec!["total".into(), total.to_string()]);
    let mut text = table.render(&[12, 12]);
    text.push('\n');
    let mut table = Table::new(&["NAME", "STATUS", "COUNT"]);
    let mut by_name = counts.clone();
    by_name.sort_by(|a, b| (&a.name, a.status.as_str()).cmp(&(&b.name, b.status.as_str())));
    for count in &by_name {
        table.row(vec![
            count.name.clone(),
            count.status.as_str().to_string(),
            count.count.to_string(),
        ]);
    }
    text.push_str(&table.render(&[40, 12, 12]));
    print(text.trim_end())
}

/// Formats times in the local zone (or UTC), to the millisecond.
struct Clock {
    zone: jiff::tz::TimeZone,
}

impl Clock {
    fn new(utc: bool) -> Self {
        let zone = if utc {
            jiff::tz::TimeZone::UTC
        } else {
            jiff::tz::TimeZone::system()
        };
        Clock { zone }
    }

    fn format(&self, at_ms: Option<i64>) -> String {
        let Some(at_ms) = at_ms else {
            return "-".into();
        };
        match jiff::Timestamp::from_millisecond(at_ms) {
            Ok(at) => at
                .to_zoned_datetime(self.zone.clone())
                .strftime("%Y-%m-%d %H:%M:%S%.3f")
                .to_string(),
            Err(_) => at_ms.to_string(),
        }
    }
}

/// Cuts `text` to `max` characters, marking the cut; newlines become spaces.
fn truncate(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let kept: String = flat.chars().take(max.saturating_sub(1)).collect();
    format!("{kept}…")
}

/// Left-aligned columns, each as wide as its widest cell up to a limit.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|cell| cell.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self, widths_max: &[usize]) -> String {
        let cut: Vec<Vec<String>> = std::iter::once(&self.header)
            .chain(&self.rows)
            .map(|row| {
                row.iter()
                    .zip(widths_max)
                    .map(|(cell, max)| truncate(cell, *max))
                    .collect()
            })
            .collect();
        let widths: Vec<usize> = (0..self.header.len())
            .map(|column| {
                cut.iter()
                    .map(|row| row[column].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut text = String::new();
        for row in &cut {
            let mut line = String::new();
            for (column, cell) in row.iter().enumerate() {
                if column + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let pad = widths[column] - cell.chars().count();
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad + 2));
                }
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }
}

/// Writes `text` and a newline; a reader that went away (`| head`) ends the output quietly.
pub(crate) fn print(text: &str) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other?,
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_ages() {
        assert_eq!(parse_time("1970-01-01T00:00:01Z").unwrap(), 1_000);
        let now = jiff::Timestamp::now().as_millisecond();
        let an_hour_ago = parse_time("1h").unwrap();
        assert!((now - 3_600_000 - an_hour_ago).abs() < 60_000);
        assert!(parse_time("1w").is_err());
        assert!(parse_time("h").is_err());
        assert!(parse_time("yesterday").is_err());
        assert_eq!(
            parse_age("30d").unwrap(),
            std::time::Duration::from_secs(30 * 86_400)
        );
        assert!(parse_age("30").is_err());
    }

    #[test]
    fn tables_align_and_cut_long_cells() {
        let mut table = Table::new(&["A", "B"]);
        table.row(vec!["long value".into(), "x\ny".into()]);
        table.row(vec!["s".into(), "z".into()]);
        assert_eq!(
            table.render(&[6, 10]),
            "A       B\nlong …  x y\ns       z\n"
        );
    }
}
