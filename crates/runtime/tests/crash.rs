//! Crash recovery: a worker process running 500 instances is killed with SIGKILL at random
//! moments and restarted; at the end every instance must have completed, every history must be
//! free of gaps and duplicates, and every activity completion must be recorded once.
//!
//! The worker is this test binary re-executed with `--exact crash_worker` and the
//! `SLUICE_CRASH_*` environment variables; without them `crash_worker` is a no-op that passes.
//! Set `SLUICE_CRASH_SEED` to replay the kill schedule of a failed run (the seed is printed).

use sluice_runtime::{
    ActivityContext, Event, Failure, InstanceStatus, OrchestrationContext, Registry, Runtime,
    RuntimeOptions,
};
use sluice_store::Store;
use sluice_store_sqlite::{Location, SqliteStore, SqliteStoreOptions};
use sluice_testkit::TempSqlite;
use sluice_testkit::crash::{CrashLoop, Ended, Schedule};
use sluice_testkit::process::LoggedChild;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Instances started by every worker (idempotently).
const INSTANCES: usize = 500;
/// Workers killed with SIGKILL before the final one runs to the end.
const KILLS: usize = 12;
/// A worker is killed this long after it was spawned (uniformly drawn).
const KILL_AFTER_MS: std::ops::RangeInclusive<u64> = 100..=700;
/// The first worker is killed sooner, while it is still starting instances (500 starts take
/// about 300 ms here), so that acknowledged starts are put to the test.
const FIRST_KILL_AFTER_MS: std::ops::RangeInclusive<u64> = 100..=250;
/// How long the final worker may take to finish every instance.
const FINAL_TIMEOUT: Duration = Duration::from_secs(120);
/// Activities one worker runs at the same time: bounds the re-executions one kill can cause.
const ACTIVITY_CONCURRENCY: usize = 8;
/// Work items a worker holds at once (running, waiting to run, or with a result waiting for its
/// turn's commit): the most activities one kill can make run again.
const ACTIVITY_HELD_MAX: usize = 32;
/// Starts a worker has in flight at once.
const STARTS_IN_FLIGHT: usize = 4;
/// Activities each instance runs: three fanned out, one after the timer.
const ACTIVITIES_PER_INSTANCE: usize = 4;
const DEFAULT_SEED: u64 = 0x5EED_C0FF_EE15_2024;

const ENV_WORKER: &str = "SLUICE_CRASH_WORKER";
const ENV_DB: &str = "SLUICE_CRASH_DB";
const ENV_ACKED: &str = "SLUICE_CRASH_ACKED";
const ENV_EXECUTIONS: &str = "SLUICE_CRASH_EXECUTIONS";
const ENV_FINAL: &str = "SLUICE_CRASH_FINAL";
const ENV_SEED: &str = "SLUICE_CRASH_SEED";

const ORCHESTRATION: &str = "crash_flow";
const ACTIVITY: &str = "step";

fn instance_id(index: usize) -> String {
    format!("crash-{index}")
}

fn expected_output(index: usize) -> String {
    format!("{index}.0!,{index}.1!,{index}.2!,{index}.final!")
}

// ---------------------------------------------------------------------------------------------
// The worker process.
// ---------------------------------------------------------------------------------------------

async fn crash_flow(ctx: OrchestrationContext, input: String) -> Result<String, Failure> {
    let calls = (0..3)
        .map(|k| ctx.schedule_activity(ACTIVITY, format!("{input}.{k}")))
        .collect();
    let mut parts = Vec::new();
    for result in ctx.join(calls).await {
        parts.push(result?);
    }
    ctx.create_timer(Duration::from_millis(5)).await;
    parts.push(
        ctx.schedule_activity(ACTIVITY, format!("{input}.final"))
            .await?,
    );
    Ok(parts.join(","))
}

/// Log lines are written as `"\n<fields> .\n"` in one `write`: a line torn by a kill in the
/// middle of the write lacks the final `.` and stays on its own line, so readers skip it.
fn append_record(file: &File, lines: &[String]) {
    let mut text = String::from("\n");
    for line in lines {
        text.push_str(line);
        text.push_str(" .\n");
    }
    let mut file = file;
    file.write_all(text.as_bytes())
        .expect("append a log record");
}

/// Reads the complete records (fields without the trailing `.`) and counts torn ones.
fn read_records(path: &Path, fields: usize) -> (Vec<Vec<String>>, usize) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut records = Vec::new();
    let mut torn = 0;
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.split('\n').collect();
    for (index, line) in lines.iter().enumerate() {
        if line.is_empty() {
            continue;
        }
        let is_last = index + 1 == lines.len();
        let parts: Vec<&str> = line.split(' ').collect();
        if (is_last && !complete) || parts.len() != fields + 1 || parts[fields] != "." {
            torn += 1;
            continue;
        }
        records.push(parts[..fields].iter().map(|s| s.to_string()).collect());
    }
    (records, torn)
}

fn env_path(name: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(name).unwrap_or_else(|| panic!("{name} is not set")))
}

/// The worker: runs only when re-executed by [`crash_recovery_of_500_instances`].
#[test]
fn crash_worker() {
    let Ok(worker) = std::env::var(ENV_WORKER) else {
        return;
    };
    let worker: usize = worker.parse().expect("worker index");
    let is_final = std::env::var_os(ENV_FINAL).is_some();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run_worker(worker, is_final));
}

async fn run_worker(worker: usize, is_final: bool) {
    let db = env_path(ENV_DB);
    let executions = Arc::new(
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(env_path(ENV_EXECUTIONS))
            .expect("open the execution log"),
    );
    let mut acked = OpenOptions::new()
        .create(true)
        .append(true)
        .open(env_path(ENV_ACKED))
        .expect("open the acked-starts log");

    let step = move |ctx: ActivityContext, input: String| {
        let executions = executions.clone();
        async move {
            // Recorded before any work: a line means "this attempt started".
            append_record(
                &executions,
                &[format!(
                    "{} {} {} {worker}",
                    ctx.instance_id(),
                    ctx.activity_id(),
                    ctx.attempt()
                )],
            );
            let jitter = BuildHasherDefault::<DefaultHasher>::default().hash_one((
                ctx.instance_id(),
                ctx.activity_id(),
                ctx.attempt(),
            ));
            tokio::time::sleep(Duration::from_millis(1 + jitter % 8)).await;
            Ok::<_, Failure>(format!("{input}!"))
        }
    };
    let registry = Registry::new()
        .orchestration(ORCHESTRATION, crash_flow)
        .activity(ACTIVITY, step);
    let store = Arc::new(
        SqliteStore::open(SqliteStoreOptions::new(Location::File(db))).expect("open the store"),
    );
    let options = RuntimeOptions {
        orchestration_concurrency: 8,
        activity_concurrency: ACTIVITY_CONCURRENCY,
        activity_held_max: ACTIVITY_HELD_MAX,
        turn_lease: Duration::from_secs(2),
        activity_lease: Duration::from_secs(2),
        poll_interval: Duration::from_millis(250),
        ..RuntimeOptions::default()
    };
    let began = Instant::now();
    let runtime = Runtime::start(store.clone(), registry, options).expect("the runtime starts");
    let client = runtime.client();
    println!("worker {worker}: started (pid {})", std::process::id());

    // Idempotent starts, a few at a time so that kills also land while starting; each is
    // acknowledged (logged, fsync'd) only after `start` returned Ok.
    let mut starts = tokio::task::JoinSet::new();
    let mut next = 0;
    loop {
        while starts.len() < STARTS_IN_FLIGHT && next < INSTANCES {
            let client = client.clone();
            let index = next;
            next += 1;
            starts.spawn(async move {
                let id = instance_id(index);
                client
                    .start(ORCHESTRATION, &id, index.to_string())
                    .await
                    .map(|_| id)
            });
        }
        let Some(first) = starts.join_next().await else {
            break;
        };
        let mut done = vec![first];
        while let Some(more) = starts.try_join_next() {
            done.push(more);
        }
        let ids: Vec<String> = done
            .into_iter()
            .map(|joined| joined.expect("start task").expect("start"))
            .collect();
        append_record(&acked, &ids);
        acked.sync_data().expect("fsync the acked-starts log");
    }
    acked.flush().expect("flush");
    println!(
        "worker {worker}: all {INSTANCES} starts acknowledged after {} ms",
        began.elapsed().as_millis()
    );

    loop {
        let counts = store.count_by_status().await.expect("count instances");
        let terminal: u64 = counts
            .iter()
            .filter(|(status, _)| status.is_terminal())
            .map(|(_, count)| count)
            .sum();
        if terminal == INSTANCES as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "worker {worker}: all {INSTANCES} instances terminal after {} ms",
        began.elapsed().as_millis()
    );
    if !is_final {
        // Killed workers never exit on their own, so every kill is a real one.
        std::future::pending::<()>().await;
    }
    runtime.shutdown(Duration::from_secs(10)).await;
    println!("worker {worker}: shut down");
}

// ---------------------------------------------------------------------------------------------
// The parent test.
// ---------------------------------------------------------------------------------------------

struct Paths {
    db: PathBuf,
    acked: PathBuf,
    executions: PathBuf,
    dir: PathBuf,
}

/// Starts worker `index` (this binary re-executed), its output in `worker-<index>.log`.
fn spawn_worker(paths: &Paths, index: usize, is_final: bool) -> LoggedChild {
    let mut command = Command::new(std::env::current_exe().expect("current test binary"));
    command
        .args(["crash_worker", "--exact", "--nocapture", "--test-threads=1"])
        .env(ENV_WORKER, index.to_string())
        .env(ENV_DB, &paths.db)
        .env(ENV_ACKED, &paths.acked)
        .env(ENV_EXECUTIONS, &paths.executions);
    if is_final {
        command.env(ENV_FINAL, "1");
    } else {
        command.env_remove(ENV_FINAL);
    }
    LoggedChild::spawn(&mut command, paths.dir.join(format!("worker-{index}.log")))
}

fn connect(db: &Path) -> rusqlite::Connection {
    let connection = rusqlite::Connection::open(db).expect("open the database file");
    connection
        .busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    connection
}

/// Status of every instance in the file, read while no worker runs.
fn statuses(db: &Path) -> BTreeMap<String, String> {
    if !db.exists() {
        return BTreeMap::new();
    }
    let connection = connect(db);
    let table: i64 = connection
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'instances'",
            [],
            |row| row.get(0),
        )
        .expect("look for the schema");
    if table == 0 {
        return BTreeMap::new();
    }
    let mut statement = connection
        .prepare("SELECT instance_id, status FROM instances")
        .expect("prepare");
    statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("query instances")
        .collect::<Result<_, _>>()
        .expect("read instances")
}

fn acked_starts(path: &Path) -> (BTreeSet<String>, usize) {
    let (records, torn) = read_records(path, 1);
    (records.into_iter().map(|mut r| r.remove(0)).collect(), torn)
}

#[test]
fn crash_recovery_of_500_instances() {
    if std::env::var_os(ENV_WORKER).is_some() {
        return;
    }
    let mut crashes = CrashLoop::new(KILLS, Schedule::from_env(ENV_SEED, DEFAULT_SEED));
    println!("crash test: {KILLS} kills, {INSTANCES} instances");
    let temp = TempSqlite::new();
    let paths = Paths {
        db: temp.path().to_path_buf(),
        acked: temp.dir().join("acked.log"),
        executions: temp.dir().join("executions.log"),
        dir: temp.dir().to_path_buf(),
    };
    let began = Instant::now();

    // Kill cycles. After each kill, with no worker running, every acknowledged start must be
    // in the file: checked here because the next worker starts every id again.
    while crashes.more() {
        let index = crashes.kills();
        let mut worker = spawn_worker(&paths, index, false);
        let delay = crashes.schedule().in_range(if index == 0 {
            FIRST_KILL_AFTER_MS
        } else {
            KILL_AFTER_MS
        });
        if let Ended::Exited(status) =
            crashes.kill_after(worker.child(), Duration::from_millis(delay))
        {
            panic!(
                "worker {index} exited on its own ({status}) before it was killed; its log:\n{}",
                worker.log_tail(40)
            );
        }
        let statuses = statuses(&paths.db);
        let (acked, torn) = acked_starts(&paths.acked);
        let lost: Vec<&String> = acked
            .iter()
            .filter(|id| !statuses.contains_key(*id))
            .collect();
        assert!(
            lost.is_empty(),
            "after kill {index}: {} acknowledged starts are missing from the store: {:?}",
            lost.len(),
            &lost[..lost.len().min(20)]
        );
        let completed = statuses.values().filter(|s| *s == "completed").count();
        println!(
            "kill {index}: after {delay} ms; instances {} (completed {completed}), acked starts {} (torn ack records {torn})",
            statuses.len(),
            acked.len()
        );
    }

    // The final worker runs until every instance is terminal, then exits by itself.
    let mut last = spawn_worker(&paths, KILLS, true);
    let Some(status) = last.wait_timeout(FINAL_TIMEOUT) else {
        let tail = last.log_tail(40);
        drop(last);
        let statuses = statuses(&paths.db);
        let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
        for status in statuses.values() {
            *by_status.entry(status.as_str()).or_default() += 1;
        }
        let stuck: Vec<&String> = statuses
            .iter()
            .filter(|(_, s)| !matches!(s.as_str(), "completed" | "failed" | "cancelled"))
            .map(|(id, _)| id)
            .take(20)
            .collect();
        panic!(
            "the final worker did not finish all {INSTANCES} instances within {FINAL_TIMEOUT:?}: \
             {by_status:?}; some unfinished: {stuck:?}; its log:\n{tail}"
        );
    };
    assert!(
        status.success(),
        "the final worker failed ({status}); its log:\n{}",
        last.log_tail(40)
    );
    drop(last);
    let elapsed = began.elapsed();

    let executions = verify(&paths);
    println!(
        "crash test summary: seed {}, kills {KILLS}, instances {INSTANCES}, activity executions {}, \
         logical activities {}, re-executions {} (bound {}), elapsed {:.1} s",
        crashes.schedule().seed(),
        executions.total,
        executions.logical,
        executions.total - executions.logical,
        KILLS * ACTIVITY_HELD_MAX,
        elapsed.as_secs_f64()
    );
}

struct Executions {
    total: usize,
    logical: usize,
}

/// Checks everything once no worker runs any more.
fn verify(paths: &Paths) -> Executions {
    let mut problems: Vec<String> = Vec::new();

    // 1. Every start acknowledged and every instance completed with the expected output, and
    // 2. every history well formed: one start, one terminal event last, each command id used
    //    once, each activity and timer resolved exactly once and after it was issued.
    let (acked, torn_acks) = acked_starts(&paths.acked);
    let all: BTreeSet<String> = (0..INSTANCES).map(instance_id).collect();
    assert!(acked.is_subset(&all), "unknown ids in the acked-starts log");
    assert_eq!(
        acked.len(),
        INSTANCES,
        "the final worker acknowledges every start"
    );
    let scheduled_activities = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(async {
            let store = Arc::new(
                SqliteStore::open(SqliteStoreOptions::new(Location::File(paths.db.clone())))
                    .expect("open the store"),
            );
            let client = sluice_runtime::Client::new(store, Duration::from_millis(100));
            let mut scheduled: HashSet<(String, u64)> = HashSet::new();
            for index in 0..INSTANCES {
                let id = instance_id(index);
                let info = match client.status(&id).await.expect("status") {
                    Some(info) => info,
                    None => {
                        problems.push(format!("{id}: missing"));
                        continue;
                    }
                };
                if info.status != InstanceStatus::Completed
                    || info.output.as_deref() != Some(expected_output(index).as_str())
                    || info.execution_id != 1
                {
                    problems.push(format!(
                        "{id}: {:?} execution {} output {:?} failure {:?}",
                        info.status, info.execution_id, info.output, info.failure
                    ));
                }
                let history = client.history(&id).await.expect("history");
                check_history(&id, &history, &expected_output(index), &mut problems);
                for event in &history {
                    if let Event::ActivityScheduled { id: command, .. } = event {
                        scheduled.insert((id.clone(), *command));
                    }
                }
            }
            scheduled
        });

    // Storage level: positions contiguous from 0 and matching the row's history length,
    // nothing left in the queues, a sound file.
    let connection = connect(&paths.db);
    let mut groups: HashMap<(String, i64), (i64, i64, i64)> = HashMap::new();
    {
        let mut statement = connection
            .prepare(
                "SELECT instance_id, execution_id, COUNT(*), MIN(position), MAX(position)
                 FROM history GROUP BY instance_id, execution_id",
            )
            .expect("prepare");
        let rows = statement
            .query_map([], |row| {
                Ok((
                    (row.get::<_, String>(0)?, row.get::<_, i64>(1)?),
                    (row.get(2)?, row.get(3)?, row.get(4)?),
                ))
            })
            .expect("query history");
        for row in rows {
            let (key, value) = row.expect("history row");
            groups.insert(key, value);
        }
    }
    for ((id, execution), (count, min, max)) in &groups {
        if *min != 0 || *count != max + 1 {
            problems.push(format!(
                "{id} execution {execution}: {count} rows at positions {min}..={max}"
            ));
        }
    }
    {
        let mut statement = connection
            .prepare("SELECT instance_id, execution_id, status FROM instances")
            .expect("prepare");
        let rows: Vec<(String, i64, String)> = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .expect("query instances")
            .collect::<Result<_, _>>()
            .expect("read instances");
        if rows.len() != INSTANCES {
            problems.push(format!(
                "{} instance rows, expected {INSTANCES}",
                rows.len()
            ));
        }
        // The current execution of every instance has a (contiguous, checked above) history.
        for (id, execution, status) in rows {
            let count = groups.get(&(id.clone(), execution)).map_or(0, |g| g.0);
            if count == 0 {
                problems.push(format!(
                    "{id}: execution {execution} ({status}) has no history"
                ));
            }
        }
    }
    for table in ["activities", "inbox"] {
        let left: i64 = connection
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
                row.get(0)
            })
            .expect("count leftovers");
        if left != 0 {
            problems.push(format!(
                "{left} rows left in {table} after every instance completed"
            ));
        }
    }
    let integrity: String = connection
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("integrity check");
    if integrity != "ok" {
        problems.push(format!("integrity_check: {integrity}"));
    }
    drop(connection);

    // 3. Executions: every logical activity ran, and a re-run happened only in a worker that
    // was then killed before committing the earlier run's completion: one run per worker, all
    // runs but the last in killed workers, at most ACTIVITY_HELD_MAX held per kill.
    let (records, torn_executions) = read_records(&paths.executions, 4);
    let mut runs: HashMap<(String, u64), Vec<usize>> = HashMap::new();
    for record in &records {
        let command: u64 = record[1].parse().expect("activity id");
        let worker: usize = record[3].parse().expect("worker index");
        runs.entry((record[0].clone(), command))
            .or_default()
            .push(worker);
    }
    let ran: HashSet<(String, u64)> = runs.keys().cloned().collect();
    let never_ran: Vec<_> = scheduled_activities.difference(&ran).take(20).collect();
    if !never_ran.is_empty() {
        problems.push(format!(
            "completed activities with no recorded run: {never_ran:?}"
        ));
    }
    let unknown: Vec<_> = ran.difference(&scheduled_activities).take(20).collect();
    if !unknown.is_empty() {
        problems.push(format!(
            "runs of activities no history scheduled: {unknown:?}"
        ));
    }
    let logical = INSTANCES * ACTIVITIES_PER_INSTANCE;
    if scheduled_activities.len() != logical {
        problems.push(format!(
            "{} activities scheduled, expected {logical}",
            scheduled_activities.len()
        ));
    }
    for ((id, command), workers) in &runs {
        let distinct: HashSet<&usize> = workers.iter().collect();
        if distinct.len() != workers.len() {
            problems.push(format!(
                "{id}/{command} ran more than once in one worker: workers {workers:?}"
            ));
        }
        if workers[..workers.len() - 1].iter().any(|w| *w >= KILLS) {
            problems.push(format!(
                "{id}/{command} ran again after a run in the final worker: workers {workers:?}"
            ));
        }
    }
    let total = records.len();
    let reruns = total.saturating_sub(ran.len());
    if reruns > KILLS * ACTIVITY_HELD_MAX {
        problems.push(format!(
            "{reruns} re-executions exceed {KILLS} kills x {ACTIVITY_HELD_MAX} held"
        ));
    }
    let mut reruns_by_worker: BTreeMap<usize, usize> = BTreeMap::new();
    for workers in runs.values() {
        for worker in &workers[..workers.len() - 1] {
            *reruns_by_worker.entry(*worker).or_default() += 1;
        }
    }
    for (worker, count) in &reruns_by_worker {
        if *count > ACTIVITY_HELD_MAX {
            problems.push(format!(
                "worker {worker} left {count} runs uncommitted, more than the {ACTIVITY_HELD_MAX} it may hold"
            ));
        }
    }
    println!(
        "runs left uncommitted by each killed worker: {reruns_by_worker:?}; torn records: {torn_acks} acks, {torn_executions} runs"
    );

    assert!(
        problems.is_empty(),
        "{} problems after crash recovery; the first ones:\n{}",
        problems.len(),
        problems
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    Executions {
        total,
        logical: ran.len(),
    }
}

fn check_history(id: &str, history: &[Event], expected: &str, problems: &mut Vec<String>) {
    let mut complain = |what: String| problems.push(format!("{id}: {what}"));
    let started = history
        .iter()
        .filter(|e| matches!(e, Event::OrchestrationStarted { .. }))
        .count();
    if started != 1 {
        complain(format!("{started} orchestration_started events"));
    }
    let terminals: Vec<usize> = history
        .iter()
        .enumerate()
        .filter(|(_, e)| e.is_terminal())
        .map(|(i, _)| i)
        .collect();
    if terminals != [history.len().saturating_sub(1)] {
        complain(format!(
            "terminal events at {terminals:?} in {} events",
            history.len()
        ));
    }
    match history.last() {
        Some(Event::OrchestrationCompleted { output }) if output == expected => {}
        other => complain(format!("last event {other:?}")),
    }
    // Command id -> (kind, position issued); results must follow their command, once each.
    let mut commands: HashMap<u64, (&'static str, usize)> = HashMap::new();
    let mut resolved: HashSet<u64> = HashSet::new();
    for (position, event) in history.iter().enumerate() {
        let Some(command) = event.command_id() else {
            continue;
        };
        if event.is_command() {
            if started != 1
                || !history[..position]
                    .iter()
                    .any(|e| matches!(e, Event::OrchestrationStarted { .. }))
            {
                complain(format!("{} {command} before the start", event.kind()));
            }
            if commands.insert(command, (event.kind(), position)).is_some() {
                complain(format!("command id {command} issued twice"));
            }
        } else if event.is_completion() {
            let expected_kind = match event {
                Event::ActivityCompleted { .. } => "activity_scheduled",
                Event::TimerFired { .. } => "timer_created",
                other => {
                    complain(format!("unexpected result {other:?}"));
                    continue;
                }
            };
            match commands.get(&command) {
                Some((kind, _)) if *kind == expected_kind => {}
                other => complain(format!(
                    "{} {command} without its command (found {other:?})",
                    event.kind()
                )),
            }
            if !resolved.insert(command) {
                complain(format!("{} {command} recorded twice", event.kind()));
            }
        }
    }
    let activities = commands
        .values()
        .filter(|(kind, _)| *kind == "activity_scheduled")
        .count();
    let timers = commands
        .values()
        .filter(|(kind, _)| *kind == "timer_created")
        .count();
    if (activities, timers) != (ACTIVITIES_PER_INSTANCE, 1) || commands.len() != 5 {
        complain(format!(
            "{activities} activities and {timers} timers scheduled, {} commands",
            commands.len()
        ));
    }
    let unresolved: Vec<&u64> = commands.keys().filter(|c| !resolved.contains(c)).collect();
    if !unresolved.is_empty() {
        complain(format!("commands never resolved: {unresolved:?}"));
    }
}

/// The history checks above are not vacuous: they pass a well-formed history and flag a
/// duplicated completion, a missing timer result and a second terminal event.
#[test]
fn history_check_flags_broken_histories() {
    let expected = expected_output(7);
    let mut good = vec![
        Event::TurnStarted { now_ms: 1 },
        Event::OrchestrationStarted {
            name: ORCHESTRATION.into(),
            input: "7".into(),
            parent: None,
            guid_seed: 0,
            version: None,
        },
    ];
    for id in 0..3 {
        good.push(Event::ActivityScheduled {
            id,
            name: ACTIVITY.into(),
            input: format!("7.{id}"),
            retry: None,
            queue: None,
        });
    }
    for id in 0..3 {
        good.push(Event::ActivityCompleted {
            id,
            output: format!("7.{id}!"),
        });
    }
    good.push(Event::TimerCreated {
        id: 3,
        fire_at_ms: 6,
    });
    good.push(Event::TimerFired { id: 3 });
    good.push(Event::ActivityScheduled {
        id: 4,
        name: ACTIVITY.into(),
        input: "7.final".into(),
        retry: None,
        queue: None,
    });
    good.push(Event::ActivityCompleted {
        id: 4,
        output: "7.final!".into(),
    });
    good.push(Event::OrchestrationCompleted {
        output: expected.clone(),
    });
    let problems_of = |history: &[Event]| {
        let mut problems = Vec::new();
        check_history("crash-7", history, &expected, &mut problems);
        problems
    };
    assert_eq!(problems_of(&good), Vec::<String>::new());

    let mut duplicated = good.clone();
    duplicated.insert(
        6,
        Event::ActivityCompleted {
            id: 1,
            output: "7.1!".into(),
        },
    );
    assert!(
        problems_of(&duplicated)
            .iter()
            .any(|p| p.contains("recorded twice")),
        "{:?}",
        problems_of(&duplicated)
    );

    let mut unfired = good.clone();
    unfired.retain(|e| !matches!(e, Event::TimerFired { .. }));
    assert!(
        problems_of(&unfired)
            .iter()
            .any(|p| p.contains("never resolved")),
        "{:?}",
        problems_of(&unfired)
    );

    let mut twice_ended = good.clone();
    twice_ended.insert(
        3,
        Event::OrchestrationCompleted {
            output: expected.clone(),
        },
    );
    assert!(!problems_of(&twice_ended).is_empty());
}
