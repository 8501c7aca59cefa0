//! Faults against several `sluice worker` processes sharing one PostgreSQL store: workers killed
//! with SIGKILL at random and restarted, and PostgreSQL itself crashed and restarted
//! (`pg_ctl stop -m immediate`), while orders with activities, sub-orchestrations, timers and
//! approval events run. Every instance completes with its exact output, histories have no gaps
//! and no duplicates, every activity completion is recorded once, and no worker exits on its
//! own. Skipped without PostgreSQL (CI requires it).
//!
//! `SLUICE_FAULT_INSTANCES` (default 2,000) and `SLUICE_FAULT_KILLS` (default 30) size it.

mod common;

use common::sluice;
use sluice_runtime::{Client, Event, InstanceStatus};
use sluice_store_postgres::{PostgresStore, PostgresStoreOptions};
use sluice_testkit::crash::Schedule;
use sluice_testkit::pg_or_skip;
use sluice_testkit::process::{LoggedChild, Signal, signal};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WORKERS: usize = 4;
/// Short leases, so that a killed worker's work is taken over quickly.
const LEASE_MS: u64 = 1_000;
const POLL_MS: u64 = 200;
/// Orders above this total wait for an approval event (the demo's `APPROVAL_LIMIT_CENTS`).
const APPROVAL_LIMIT_CENTS: u64 = 50_000;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn start_worker(url: &str, log: &Path) -> LoggedChild {
    LoggedChild::spawn(
        sluice()
            .args(["worker", "--store", url, "--activity-ms", "0"])
            .args(["--orch-concurrency", "8", "--activity-concurrency", "16"])
            .args(["--lease-ms", &LEASE_MS.to_string()])
            .args(["--poll-ms", &POLL_MS.to_string()]),
        log,
    )
}

fn order_input(i: usize) -> (String, u64) {
    let total_cents = if i.is_multiple_of(2) {
        1_000 + i as u64
    } else {
        APPROVAL_LIMIT_CENTS + 1 + i as u64
    };
    let input = serde_json::json!({
        "lines": [{"sku": format!("sku-{i}"), "quantity": 1}, {"sku": "bolt", "quantity": 2}],
        "total_cents": total_cents,
        "card_accepts": true,
        "approval_timeout_ms": 600_000,
    });
    (input.to_string(), total_cents)
}

/// Panics if a worker has exited: none may exit on its own.
fn assert_all_running(workers: &mut [LoggedChild]) {
    for worker in workers {
        if let Some(status) = worker.child().try_wait().expect("try_wait") {
            panic!(
                "worker {} exited on its own: {status}; its log:\n{}",
                worker.child().id(),
                worker.log()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_and_postgres_restarted_lose_and_duplicate_nothing() {
    let Some(cluster) = pg_or_skip("cli faults") else {
        return;
    };
    let instances = setting("SLUICE_FAULT_INSTANCES", 2_000);
    let kills = setting("SLUICE_FAULT_KILLS", 30);
    let url = cluster.url();
    let logs = tempfile::tempdir().unwrap();
    let store = Arc::new(
        PostgresStore::connect(PostgresStoreOptions::new(&url).unwrap())
            .await
            .unwrap(),
    );
    let client = Client::new(store.clone(), Duration::from_millis(POLL_MS));
    let log_of = |slot: usize| logs.path().join(format!("worker-{slot}.log"));
    let mut workers: Vec<LoggedChild> = (0..WORKERS)
        .map(|slot| start_worker(&url, &log_of(slot)))
        .collect();
    let began = Instant::now();
    let mut expected = HashMap::new();
    for i in 0..instances {
        let id = format!("order-{i}");
        let (input, cents) = order_input(i);
        client.start("order", &id, input).await.unwrap();
        expected.insert(id.clone(), format!("receipt-{cents} track-{id}"));
    }
    eprintln!("started {instances} orders in {:?}", began.elapsed());

    // Faults, with approvals sent meanwhile.
    let mut random = Schedule::new(0x5eed);
    let restarts_at = [kills / 3, 2 * kills / 3];
    let mut approvals: Vec<usize> = (0..instances).filter(|i| i % 2 == 1).collect();
    let per_fault = approvals.len().div_ceil(kills.max(1));
    for fault in 0..kills {
        tokio::time::sleep(Duration::from_millis(100 + random.below(400))).await;
        assert_all_running(&mut workers);
        let slot = random.below(WORKERS as u64) as usize;
        let worker = workers[slot].child();
        worker.kill().expect("SIGKILL a worker");
        worker.wait().expect("reap the worker");
        workers[slot] = start_worker(&url, &log_of(slot));
        if restarts_at.contains(&fault) {
            tokio::task::block_in_place(|| cluster.crash_and_restart())
                .expect("restart PostgreSQL");
            eprintln!("fault {fault}: PostgreSQL restarted");
        }
        for i in approvals.drain(..per_fault.min(approvals.len())) {
            raise_with_retry(&client, &format!("order-{i}")).await;
        }
    }
    for i in approvals {
        raise_with_retry(&client, &format!("order-{i}")).await;
    }
    let last_fault = Instant::now();
    eprintln!(
        "{kills} kills and 2 PostgreSQL restarts done after {:?}",
        began.elapsed()
    );

    // Everything completes, exactly as it would have without faults.
    for i in 0..instances {
        let id = format!("order-{i}");
        let info = client
            .wait_for_completion(&id, Duration::from_secs(300))
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(info.status, InstanceStatus::Completed, "{id}: {info:?}");
        let output = info.output.unwrap_or_default();
        assert!(output.contains(&expected[&id]), "{id}: {output}");
    }
    eprintln!(
        "all {instances} orders completed {:?} after the last fault ({:?} in all)",
        last_fault.elapsed(),
        began.elapsed()
    );
    assert_all_running(&mut workers);

    // Histories: positions without gaps, each activity completed once and as scheduled.
    let gaps = cluster
        .psql(
            "SELECT count(*) FROM (SELECT instance_id, execution_id, count(*) AS events,
                    max(position) AS last FROM sluice.history GROUP BY 1, 2) h
             WHERE events <> last + 1",
        )
        .unwrap();
    assert_eq!(
        gaps.trim(),
        "0",
        "histories with gaps or duplicate positions"
    );
    let children = cluster
        .psql("SELECT instance_id FROM sluice.instances WHERE name = 'reserve_line'")
        .unwrap();
    let all: Vec<String> = expected
        .keys()
        .cloned()
        .chain(children.lines().map(str::to_string))
        .collect();
    assert_eq!(all.len(), instances * 3, "two lines per order");
    for id in &all {
        let history = client.history(id).await.unwrap();
        let mut scheduled = BTreeSet::new();
        let mut completed = BTreeSet::new();
        for event in &history {
            match event {
                Event::ActivityScheduled { id: activity, .. } => {
                    assert!(
                        scheduled.insert(*activity),
                        "{id}: activity {activity} scheduled twice"
                    );
                }
                Event::ActivityCompleted { id: activity, .. }
                | Event::ActivityFailed { id: activity, .. } => {
                    assert!(
                        completed.insert(*activity),
                        "{id}: activity {activity} completed twice"
                    );
                }
                _ => {}
            }
        }
        assert_eq!(
            scheduled, completed,
            "{id}: every scheduled activity completed once"
        );
    }
    // Nothing left in flight.
    let left = cluster
        .psql("SELECT (SELECT count(*) FROM sluice.activities) || ' ' || (SELECT count(*) FROM sluice.inbox)")
        .unwrap();
    assert_eq!(left.trim(), "0 0", "work items and messages left behind");

    for worker in &mut workers {
        signal(worker.child(), Signal::TERM).expect("SIGTERM a worker");
    }
    for worker in &mut workers {
        let status = worker.child().wait().unwrap();
        assert!(status.success(), "a worker stopped badly: {status}");
    }
    drop(store);
}

/// Raises the approval, retrying while PostgreSQL restarts.
async fn raise_with_retry(client: &Client, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.raise_event(id, "approval", "approve").await {
            Ok(()) => return,
            Err(error) if Instant::now() < deadline => {
                eprintln!("approval of {id}: {error}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => panic!("approval of {id}: {error}"),
        }
    }
}

/// A worker paused with SIGSTOP for twice its lease while another takes its work over, then
/// resumed, 20 times: the store refuses its late writes (counted by the store, reported by the
/// worker), and every activity is recorded once in its instance's history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_worker_can_never_write_over_the_one_that_took_its_work() {
    let Some(cluster) = pg_or_skip("cli faults: paused worker") else {
        return;
    };
    const LEASE_MS: u64 = 500;
    let pauses = setting("SLUICE_FAULT_PAUSES", 20);
    let url = cluster.url();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        PostgresStore::connect(PostgresStoreOptions::new(&url).unwrap())
            .await
            .unwrap(),
    );
    let client = Client::new(store.clone(), Duration::from_millis(100));
    let start = |slot: usize| {
        LoggedChild::spawn(
            sluice()
                .args(["worker", "--store", &url, "--activity-ms", "300"])
                .args(["--orch-concurrency", "4", "--activity-concurrency", "8"])
                .args(["--lease-ms", &LEASE_MS.to_string(), "--poll-ms", "100"])
                .arg("--report")
                .arg(dir.path().join(format!("paused-{slot}.json"))),
            dir.path().join(format!("paused-{slot}.log")),
        )
    };
    let mut workers = [start(0), start(1)];
    let mut ids = Vec::new();
    for round in 0..pauses {
        for j in 0..3 {
            let id = format!("p{round}-{j}");
            client.start("fan_out", &id, id.clone()).await.unwrap();
            ids.push(id);
        }
        // Long enough for both workers to hold activities, then worker 0 stops mid-work.
        tokio::time::sleep(Duration::from_millis(150)).await;
        signal(workers[0].child(), Signal::STOP).expect("SIGSTOP worker 0");
        tokio::time::sleep(Duration::from_millis(2 * LEASE_MS)).await;
        signal(workers[0].child(), Signal::CONT).expect("SIGCONT worker 0");
    }
    for id in &ids {
        let info = client
            .wait_for_completion(id, Duration::from_secs(120))
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(info.status, InstanceStatus::Completed, "{id}: {info:?}");
        // `fan_out` sums the lengths of its five "done {input}-{i}" results.
        let expected = (0..5)
            .map(|i| format!("done {id}-{i}").len())
            .sum::<usize>();
        assert_eq!(
            info.output.as_deref(),
            Some(expected.to_string().as_str()),
            "{id}"
        );
        let mut completed = BTreeSet::new();
        for event in client.history(id).await.unwrap() {
            if let Event::ActivityCompleted { id: activity, .. } = event {
                assert!(
                    completed.insert(activity),
                    "{id}: activity {activity} recorded twice"
                );
            }
        }
        assert_eq!(completed.len(), 5, "{id}");
    }
    assert_all_running(&mut workers);
    for worker in &mut workers {
        signal(worker.child(), Signal::TERM).expect("SIGTERM a worker");
    }
    let mut refused = Vec::new();
    for (slot, worker) in workers.iter_mut().enumerate() {
        assert!(worker.child().wait().unwrap().success());
        let report: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(format!("paused-{slot}.json"))).unwrap(),
        )
        .unwrap();
        refused.push(report["refused_writes"].as_u64().unwrap());
    }
    eprintln!(
        "{pauses} pauses of {} ms: late writes refused: paused worker {}, other worker {}",
        2 * LEASE_MS,
        refused[0],
        refused[1]
    );
    assert!(
        refused[0] > 0,
        "the paused worker tried late writes, and they were refused"
    );
}
