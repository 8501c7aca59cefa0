//! Exactly-once under SIGKILL: a driver process streams 200,000 numbered events through the
//! sink with a checkpoint every 200 ms and is killed 40 times at random moments — during
//! writes, during `pre_commit`, between `pre_commit` and recording the checkpoint, between
//! recording and `commit`, during `commit`, and at random times. Each restart recovers from the
//! last recorded checkpoint and resumes from the position recovery returns. At the end every
//! event id is in the table exactly once and no prepared transaction of the sink is left; for
//! the transactional marker on SQLite and PostgreSQL and two-phase commit on PostgreSQL.
//!
//! The driver is this test binary re-executed with `--exact sink_crash_driver` and the
//! `SLUICE_SINK_CRASH_*` environment variables; without them `sink_crash_driver` is a no-op.
//! `SLUICE_SINK_CRASH_SEED` replays a failed run's kill schedule (the seed is printed).

use sluice_sink::{
    CheckpointState, Column, ColumnType, CreateTable, Delivery, Resume, Row, Schema, Sink,
    SinkBackend, SinkConfig, SinkId,
};
use sluice_sink_postgres::{PostgresBackend, PostgresSinkOptions};
use sluice_sink_sqlite::{Journal, Location, SqliteBackend, SqliteSinkOptions};
use sluice_testkit::crash::{CrashLoop, Ended, Schedule, kill_self_after};
use sluice_testkit::process::LoggedChild;
use sluice_testkit::{PgCluster, TempSqlite, pg_or_skip};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const EVENTS: i64 = 200_000;
const KILLS: usize = 40;
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(200);
/// Events per write call.
const CHUNK: i64 = 250;
/// The driver writes a chunk at most this often, so the stream lasts long enough (about 20 s
/// of writing) for 40 kills to land all over it.
const CHUNK_INTERVAL: Duration = Duration::from_millis(25);
const SINK_ID: &str = "crash";
const DEFAULT_SEED: u64 = 0x5eed_51c4_0000_0040;

const ENV_DRIVER: &str = "SLUICE_SINK_CRASH_DRIVER";
const ENV_TARGET: &str = "SLUICE_SINK_CRASH_TARGET";
const ENV_DELIVERY: &str = "SLUICE_SINK_CRASH_DELIVERY";
const ENV_RECORD: &str = "SLUICE_SINK_CRASH_RECORD";
const ENV_KILL_AT: &str = "SLUICE_SINK_CRASH_KILL_AT";
const ENV_KILL_CHECKPOINT: &str = "SLUICE_SINK_CRASH_KILL_CHECKPOINT";
const ENV_SEED: &str = "SLUICE_SINK_CRASH_SEED";

/// Where the driver kills itself (the other kills come from the parent at random times).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KillAt {
    /// While writing rows after the n-th checkpoint of the run.
    Write,
    /// While `pre_commit` of the n-th checkpoint runs.
    PreCommit,
    /// After `pre_commit` returned, before the checkpoint is recorded.
    Between,
    /// After the checkpoint is recorded, before `commit`.
    Recorded,
    /// While `commit` runs.
    Commit,
}

impl KillAt {
    const ALL: [KillAt; 5] = [
        KillAt::Write,
        KillAt::PreCommit,
        KillAt::Between,
        KillAt::Recorded,
        KillAt::Commit,
    ];

    fn name(self) -> &'static str {
        match self {
            KillAt::Write => "write",
            KillAt::PreCommit => "pre_commit",
            KillAt::Between => "between",
            KillAt::Recorded => "recorded",
            KillAt::Commit => "commit",
        }
    }

    fn parse(text: &str) -> Option<KillAt> {
        KillAt::ALL.into_iter().find(|kill| kill.name() == text)
    }
}

// ---------------------------------------------------------------------------------------------
// The driver process.
// ---------------------------------------------------------------------------------------------

fn schema() -> Schema {
    // No key: a duplicate would be a second row, not a refused insert.
    Schema::new(
        "events",
        vec![
            Column::new("id", ColumnType::I64).unwrap().not_null(),
            Column::new("payload", ColumnType::Text).unwrap(),
        ],
        &[],
    )
    .unwrap()
}

fn event(id: i64) -> Row {
    Row::insert(vec![id.into(), format!("event {id}").into()])
}

/// How long after `kill_self_soon` the SIGKILL is sent: the caller goes on meanwhile, into the
/// phase it is meant to land in.
const KILL_SOON: Duration = Duration::from_millis(2);

fn kill_self_soon() {
    kill_self_after(KILL_SOON);
}

/// Kills this process and waits for the signal.
fn kill_self_now() -> ! {
    kill_self_after(Duration::ZERO);
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Records a completed checkpoint the way a processor would: written, synced, renamed.
fn record(path: &Path, state: &CheckpointState) {
    let temporary = path.with_extension("tmp");
    let mut file = File::create(&temporary).expect("create the record");
    file.write_all(&serde_json::to_vec(state).unwrap()).unwrap();
    file.sync_all().unwrap();
    std::fs::rename(&temporary, path).unwrap();
    File::open(path.parent().unwrap())
        .and_then(|dir| dir.sync_all())
        .unwrap();
}

fn recorded(path: &Path) -> Option<CheckpointState> {
    let bytes = std::fs::read(path).ok()?;
    Some(serde_json::from_slice(&bytes).expect("a valid record"))
}

#[test]
fn sink_crash_driver() {
    let Ok(target) = std::env::var(ENV_DRIVER).and(std::env::var(ENV_TARGET)) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(drive(&target));
}

async fn drive(target: &str) {
    let delivery = match std::env::var(ENV_DELIVERY).unwrap().as_str() {
        "two_phase" => Delivery::TwoPhase,
        _ => Delivery::TransactionalMarker,
    };
    let record_path = PathBuf::from(std::env::var(ENV_RECORD).unwrap());
    let kill_at = std::env::var(ENV_KILL_AT)
        .ok()
        .and_then(|text| KillAt::parse(&text));
    let kill_checkpoint: u64 = std::env::var(ENV_KILL_CHECKPOINT)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(1);
    let config = SinkConfig::builder()
        .create_table(CreateTable::IfMissing)
        .delivery(delivery)
        .sink_id(SinkId::new(SINK_ID).unwrap())
        .flush_concurrency(2)
        .flush_interval_ms(20)
        .build()
        .unwrap();
    let sqlite = match target.split_once(':') {
        Some(("sqlite", path)) => Some((path, Journal::Wal)),
        Some(("sqlite-rollback", path)) => Some((path, Journal::Rollback)),
        _ => None,
    };
    let backend: Box<dyn SinkBackend> = if let Some((path, journal)) = sqlite {
        let mut options = SqliteSinkOptions::new(Location::File(path.into()));
        options.open.journal = journal;
        Box::new(SqliteBackend::open(&options).expect("open SQLite"))
    } else {
        let options = PostgresSinkOptions::for_sink(target, &config).expect("a valid URL");
        Box::new(
            PostgresBackend::connect(options)
                .await
                .expect("connect PostgreSQL"),
        )
    };
    let sink = Sink::open(backend.as_ref(), schema(), config)
        .await
        .expect("open the sink");
    let restored = recorded(&record_path);
    let recovery = sink
        .recover(restored.as_ref(), Resume::Committed)
        .await
        .expect("recover");
    let mut position: i64 = recovery
        .state
        .as_deref()
        .map_or(0, |state| state.parse().expect("a position"));
    let mut next_id = recovery.checkpoint_id.map_or(1, |id| id + 1);
    // A checkpoint only some lanes committed: replay up to its position exactly and cut it
    // there, as a stream processor replays its source to the checkpoint's barrier.
    let mut replay_until: Option<i64> = recovery.partial.as_ref().map(|partial| {
        assert_eq!(
            partial.checkpoint_id, next_id,
            "the partial checkpoint is the next one"
        );
        partial.state.parse().expect("a position")
    });
    println!("resuming at {position}, next checkpoint {next_id}, partial up to {replay_until:?}");
    let mut checkpoints_this_run = 0;
    let mut last_checkpoint = Instant::now();
    loop {
        let done = position >= EVENTS;
        if !done {
            let end = (position + CHUNK)
                .min(EVENTS)
                .min(replay_until.unwrap_or(i64::MAX));
            sink.write((position..end).map(event).collect())
                .await
                .expect("write");
            position = end;
            tokio::time::sleep(CHUNK_INTERVAL).await;
        }
        match replay_until {
            Some(until) if position < until => continue,
            Some(_) => replay_until = None,
            None if !done && last_checkpoint.elapsed() < CHECKPOINT_INTERVAL => continue,
            None => {}
        }
        last_checkpoint = Instant::now();
        checkpoints_this_run += 1;
        let armed = |at: KillAt| kill_at == Some(at) && checkpoints_this_run == kill_checkpoint;
        if armed(KillAt::Write) {
            kill_self_soon();
            continue;
        }
        if armed(KillAt::PreCommit) {
            kill_self_soon();
        }
        let state = sink
            .pre_commit(next_id, &position.to_string())
            .await
            .expect("pre_commit");
        if armed(KillAt::Between) {
            kill_self_now();
        }
        record(&record_path, &state);
        if armed(KillAt::Recorded) {
            kill_self_now();
        }
        if armed(KillAt::Commit) {
            kill_self_soon();
        }
        sink.commit(next_id).await.expect("commit");
        next_id += 1;
        if done {
            break;
        }
    }
    sink.close().await.expect("close");
    println!("finished at {position}");
}

// ---------------------------------------------------------------------------------------------
// The parent: kill schedule and verification.
// ---------------------------------------------------------------------------------------------

/// Starts the driver (this binary re-executed), its output in `log`.
fn spawn_driver(
    target: &str,
    delivery: &str,
    record: &Path,
    log: PathBuf,
    kill: Option<(KillAt, u64)>,
) -> LoggedChild {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "sink_crash_driver",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_DRIVER, "1")
        .env(ENV_TARGET, target)
        .env(ENV_DELIVERY, delivery)
        .env(ENV_RECORD, record)
        .env_remove(ENV_KILL_AT);
    if let Some((at, checkpoint)) = kill {
        command
            .env(ENV_KILL_AT, at.name())
            .env(ENV_KILL_CHECKPOINT, checkpoint.to_string());
    }
    LoggedChild::spawn(&mut command, log)
}

/// Runs the kill loop against one target and returns the kind of each kill.
fn run_loop(name: &str, target: &str, delivery: &str, dir: &Path) -> Vec<String> {
    let mut crashes = CrashLoop::new(KILLS, Schedule::from_env(ENV_SEED, DEFAULT_SEED));
    let record = dir.join(format!("{name}.checkpoint.json"));
    let mut kills = Vec::new();
    while crashes.more() {
        let run = crashes.runs() + 1;
        let log = dir.join(format!("{name}-{run}.log"));
        // Three kills in five land on a phase boundary, chosen by the driver itself; the rest at
        // a random time chosen here.
        let schedule = crashes.schedule();
        let phase = if schedule.below(5) < 3 {
            let at = KillAt::ALL[schedule.below(KillAt::ALL.len() as u64) as usize];
            Some((at, 1 + schedule.below(3)))
        } else {
            None
        };
        let mut driver = spawn_driver(target, delivery, &record, log, phase);
        let ended = match phase {
            None => {
                let delay = Duration::from_millis(crashes.schedule().in_range(100..=999));
                crashes.kill_after(driver.child(), delay)
            }
            Some(_) => crashes
                .wait(driver.child(), Duration::from_secs(60))
                .unwrap_or_else(|| panic!("{name}: driver run {run} hung; log:\n{}", driver.log())),
        };
        match ended {
            Ended::Killed => {
                kills.push(phase.map_or("random".to_string(), |(at, _)| at.name().to_string()));
            }
            Ended::Exited(status) => assert!(
                status.success(),
                "{name}: driver run {run} failed ({status}); log:\n{}",
                driver.log()
            ),
        }
    }
    if crashes.exited().is_some() {
        // The stream finished before this kill: nothing left to kill.
        println!(
            "{name}: stream finished in run {} after {} kills",
            crashes.runs(),
            crashes.kills()
        );
    }
    let mut driver = spawn_driver(
        target,
        delivery,
        &record,
        dir.join(format!("{name}-final.log")),
        None,
    );
    let status = driver
        .wait_timeout(Duration::from_secs(180))
        .unwrap_or_else(|| panic!("{name}: the final run hung; log:\n{}", driver.log()));
    assert!(
        status.success(),
        "{name}: the final run failed ({status}); log:\n{}",
        driver.log()
    );
    kills
}

fn check_kills(name: &str, kills: &[String]) {
    println!("{name}: kills {kills:?}");
    assert_eq!(
        kills.len(),
        KILLS,
        "{name}: the stream ended before {KILLS} kills"
    );
    for kind in KillAt::ALL {
        assert!(
            kills.iter().any(|kill| kill == kind.name()),
            "{name}: no kill at {kind:?}"
        );
    }
}

fn verify_counts(name: &str, counts: (i64, i64, i64, i64)) {
    assert_eq!(
        counts,
        (EVENTS, EVENTS, 0, EVENTS - 1),
        "{name}: (rows, distinct ids, min id, max id)"
    );
}

#[test]
fn sqlite_marker_survives_sigkill() {
    sqlite_loop("sqlite_marker", "sqlite");
}

/// The same with a rollback journal: a kill leaves a hot journal, which the next open rolls
/// back.
#[test]
fn sqlite_rollback_journal_marker_survives_sigkill() {
    sqlite_loop("sqlite_rollback_marker", "sqlite-rollback");
}

fn sqlite_loop(name: &str, scheme: &str) {
    if std::env::var_os(ENV_DRIVER).is_some() {
        return;
    }
    let temp = TempSqlite::new();
    let target = format!("{scheme}:{}", temp.path().display());
    let kills = run_loop(name, &target, "transactional_marker", temp.dir());
    check_kills(name, &kills);
    let connection = rusqlite::Connection::open(temp.path()).unwrap();
    let counts = connection
        .query_row(
            "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM events",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .unwrap();
    verify_counts(name, counts);
    let integrity: String = connection
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
}

fn postgres_loop(delivery: &str) {
    if std::env::var_os(ENV_DRIVER).is_some() {
        return;
    }
    let suite = format!("sink_crash postgres {delivery}");
    let Some(cluster) = pg_or_skip(&suite) else {
        return;
    };
    let url = cluster.create_database("crash").expect("create a database");
    let dir = tempfile::tempdir().unwrap();
    let name = format!("postgres_{delivery}");
    let kills = run_loop(&name, &url, delivery, dir.path());
    check_kills(&name, &kills);
    verify_postgres(&cluster, &name);
}

fn verify_postgres(cluster: &PgCluster, name: &str) {
    let output = cluster
        .psql_in(
            "crash",
            "SELECT count(*) || ',' || count(DISTINCT id) || ',' || min(id) || ',' || max(id) FROM events",
        )
        .unwrap();
    let numbers: Vec<i64> = output
        .trim()
        .split(',')
        .map(|part| part.trim().parse().expect("a number"))
        .collect();
    verify_counts(name, (numbers[0], numbers[1], numbers[2], numbers[3]));
    let prepared = cluster
        .psql("SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'sluice:%'")
        .unwrap();
    assert_eq!(prepared.trim(), "0", "{name}: prepared transactions left");
}

#[test]
fn postgres_marker_survives_sigkill() {
    postgres_loop("transactional_marker");
}

#[test]
fn postgres_two_phase_survives_sigkill() {
    postgres_loop("two_phase");
}
