//! `sluice store copy`: a runtime on SQLite is stopped mid-flight (timers pending, activities
//! scheduled, events waiting), its store copied to PostgreSQL, and a runtime there finishes
//! every instance with the exact output. Skipped without PostgreSQL (CI requires it).

mod common;

use common::{query, sluice};
use sluice_runtime::{
    ActivityContext, Failure, InstanceStatus, OrchestrationContext, Registry, Runtime,
    RuntimeOptions,
};
use sluice_store_postgres::{PostgresStore, PostgresStoreOptions};
use sluice_store_sqlite::{Location, SqliteStore, SqliteStoreOptions};
use sluice_testkit::pg_or_skip;
use std::sync::Arc;
use std::time::Duration;

const INSTANCES: usize = 30;

async fn journey(ctx: OrchestrationContext, input: String) -> Result<String, Failure> {
    let first = ctx.schedule_activity("slow", format!("{input}-a")).await?;
    ctx.create_timer(Duration::from_millis(1_500)).await;
    let approval = ctx.wait_for_event("go").await;
    let second = ctx.schedule_activity("slow", format!("{input}-b")).await?;
    Ok(format!("{first}|{approval}|{second}"))
}

async fn slow(_ctx: ActivityContext, input: String) -> Result<String, Failure> {
    tokio::time::sleep(Duration::from_millis(40)).await;
    Ok(input.to_uppercase())
}

fn registry() -> Registry {
    Registry::new()
        .orchestration("journey", journey)
        .activity("slow", slow)
}

fn options() -> RuntimeOptions {
    RuntimeOptions {
        orchestration_concurrency: 2,
        activity_concurrency: 2,
        poll_interval: Duration::from_millis(50),
        ..RuntimeOptions::default()
    }
}

fn count(db: &std::path::Path, sql: &str) -> usize {
    query(db, sql)[0][0].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_store_stopped_mid_flight_finishes_on_postgres() {
    let Some(cluster) = pg_or_skip("cli store copy") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("graduate.db");
    {
        let store = Arc::new(
            SqliteStore::open(SqliteStoreOptions::new(Location::File(db.clone()))).unwrap(),
        );
        let runtime =
            Runtime::start(store.clone(), registry(), options()).expect("the runtime starts");
        let client = runtime.client();
        for i in 0..INSTANCES {
            client
                .start("journey", &format!("j{i}"), format!("j{i}"))
                .await
                .unwrap();
        }
        // Approvals for a third of them now: some arrive before their instance waits.
        for i in (0..INSTANCES).filter(|i| i % 3 == 0) {
            client
                .raise_event(&format!("j{i}"), "go", "yes")
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        runtime.shutdown(Duration::from_secs(5)).await;
        drop(client);
        // Tasks the runtime aborted drop their references when the executor next runs them.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&store) > 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "the stopped runtime still holds its store"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // Stopped mid-flight: activities still scheduled, timers pending, events waiting.
    assert!(
        count(&db, "SELECT count(*) FROM activities") > 0,
        "activities scheduled"
    );
    assert!(
        count(
            &db,
            "SELECT count(*) FROM inbox WHERE message LIKE '%timer%'"
        ) > 0,
        "timers pending: {:?}",
        query(&db, "SELECT message FROM inbox LIMIT 3")
    );
    // The early approvals are recorded (turns take events into history as they come); the
    // rest are raised on PostgreSQL, to instances waiting there.
    assert!(
        count(
            &db,
            "SELECT count(*) FROM history WHERE event LIKE '%\"go\"%'"
        ) > 0
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM instances WHERE status = 'completed'"
        ),
        0
    );

    let url = cluster.url();
    let copy = sluice()
        .args(["store", "copy", "--from"])
        .arg(format!("sqlite://{}", db.display()))
        .args(["--to", &url])
        .output()
        .unwrap();
    common::show("sluice store copy", &copy);
    assert!(copy.status.success());
    assert!(
        String::from_utf8_lossy(&copy.stdout).contains(&format!("copied {INSTANCES} instances"))
    );
    // A second copy would duplicate: refused, nothing written.
    let again = sluice()
        .args(["store", "copy", "--from"])
        .arg(format!("sqlite://{}", db.display()))
        .args(["--to", &url])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists in the target store already"));

    let store = Arc::new(
        PostgresStore::connect(PostgresStoreOptions::new(&url).unwrap())
            .await
            .unwrap(),
    );
    let runtime = Runtime::start(store, registry(), options()).expect("the runtime starts");
    let client = runtime.client();
    for i in (0..INSTANCES).filter(|i| i % 3 != 0) {
        client
            .raise_event(&format!("j{i}"), "go", "yes")
            .await
            .unwrap();
    }
    for i in 0..INSTANCES {
        let id = format!("j{i}");
        let info = client
            .wait_for_completion(&id, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(info.status, InstanceStatus::Completed, "{id}: {info:?}");
        assert_eq!(
            info.output.as_deref(),
            Some(format!("J{i}-A|yes|J{i}-B").as_str()),
            "{id}"
        );
    }
    runtime.shutdown(Duration::from_secs(5)).await;
}
