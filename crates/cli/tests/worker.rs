//! `sluice migrate` and several `sluice worker` processes sharing one PostgreSQL store: the
//! work started by a client is shared between them, all of it completes once, and SIGTERM
//! stops each worker cleanly. Skipped without PostgreSQL (CI requires it).

mod common;

use common::sluice;
use sluice_runtime::{Client, Event, InstanceStatus};
use sluice_store_postgres::{PostgresStore, PostgresStoreOptions};
use sluice_testkit::pg_or_skip;
use sluice_testkit::process::{Signal, signal};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_one_postgres_store() {
    let Some(cluster) = pg_or_skip("cli worker") else {
        return;
    };
    let url = cluster.url();
    let migrate = sluice()
        .args(["migrate", "--store", &url, "--schema", "shared"])
        .output()
        .expect("run sluice migrate");
    common::show("sluice migrate", &migrate);
    assert!(migrate.status.success());
    assert!(String::from_utf8_lossy(&migrate.stdout).contains("schema up to date"));

    let workers: Vec<_> = (0..2)
        .map(|_| {
            sluice()
                .args([
                    "worker",
                    "--store",
                    &url,
                    "--schema",
                    "shared",
                    "--activity-ms",
                    "5",
                ])
                .stdin(Stdio::null())
                .spawn()
                .expect("start sluice worker")
        })
        .collect();
    let mut options = PostgresStoreOptions::new(&url).unwrap();
    options.schema = "shared".into();
    let store = Arc::new(PostgresStore::connect(options).await.unwrap());
    let client = Client::new(store, Duration::from_millis(200));
    const INSTANCES: usize = 40;
    for i in 0..INSTANCES {
        client
            .start("fan_out", &format!("f{i}"), format!("x{i}"))
            .await
            .unwrap();
    }
    for i in 0..INSTANCES {
        let id = format!("f{i}");
        let info = client
            .wait_for_completion(&id, Duration::from_secs(120))
            .await
            .unwrap();
        assert_eq!(info.status, InstanceStatus::Completed, "{info:?}");
        let history = client.history(&id).await.unwrap();
        let completions = history
            .iter()
            .filter(|e| matches!(e, Event::ActivityCompleted { .. }))
            .count();
        assert_eq!(completions, 5, "{id}: each activity recorded once");
    }
    for mut worker in workers {
        let pid = worker.id();
        signal(&worker, Signal::TERM).expect("SIGTERM the worker");
        let exit = worker.wait().unwrap();
        assert!(exit.success(), "worker {pid} exited with {exit:?}");
    }
    let bad = sluice()
        .args([
            "migrate",
            "--store",
            "postgres://u:hunter2@127.0.0.1:1/none",
        ])
        .output()
        .unwrap();
    common::show("sluice migrate (unreachable)", &bad);
    assert!(!bad.status.success());
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(
        said.contains("cannot connect to u@127.0.0.1:1/none"),
        "{said}"
    );
    assert!(!said.contains("hunter2"), "the password stays out: {said}");
}

/// `sluice bench orchestrations --processes 2`: the work runs in two worker processes, each
/// reports its share, and the JSON says so.
#[test]
fn the_benchmark_runs_its_work_in_worker_processes() {
    let Some(cluster) = pg_or_skip("cli bench --processes") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let output = sluice()
        .args(["bench", "orchestrations", "--store", "postgres", "--pg-url"])
        .arg(cluster.url())
        .args(["--processes", "2", "--count", "60", "--in-flight", "6"])
        .args(["--activity-ms", "1", "--orch-concurrency", "2"])
        .args(["--activity-concurrency", "4", "--json"])
        .arg(&json)
        .output()
        .expect("run sluice bench");
    common::show("sluice bench --processes 2", &output);
    assert!(output.status.success());
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let result = &results[0];
    assert_eq!(result["completed"], 60);
    assert_eq!(result["activity_executions"], 300);
    let shares = result["process_shares"].as_array().unwrap();
    assert_eq!(shares.len(), 2);
    let executions: u64 = shares
        .iter()
        .map(|share| share["activity_executions"].as_u64().unwrap())
        .sum();
    assert_eq!(executions, 300, "every activity ran in a worker, once");
    // The run's schema is dropped.
    let left = cluster
        .psql("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'sluice_bench%'")
        .unwrap();
    assert_eq!(left.trim(), "0");
}

/// `sluice demo --store postgres://...` runs its orders on PostgreSQL, with a `sluice worker`
/// on the same store taking part, and every order finishes.
#[test]
fn the_demo_runs_on_postgres_beside_a_worker() {
    let Some(cluster) = pg_or_skip("cli demo on postgres") else {
        return;
    };
    let url = cluster.url();
    let mut worker = sluice()
        .args(["worker", "--store", &url])
        .stdin(Stdio::null())
        .spawn()
        .expect("start sluice worker");
    let demo = sluice()
        .args(["demo", "--store", &url, "--orders", "30"])
        .args(["--approval-timeout-ms", "200"])
        .stdin(Stdio::null())
        .output()
        .expect("run sluice demo");
    common::show("sluice demo --store postgres", &demo);
    assert!(demo.status.success());
    let finished = cluster
        .psql(
            "SELECT count(*) FROM sluice.instances WHERE name = 'order'
             AND status IN ('completed', 'failed')",
        )
        .unwrap();
    assert_eq!(finished.trim(), "30", "every order finished");
    assert!(
        worker.try_wait().unwrap().is_none(),
        "the worker still runs"
    );
    worker.kill().unwrap();
    worker.wait().unwrap();
}
