//! End-to-end tests of orchestration versions and of `replay_check`, on a real SQLite file
//! holding histories recorded by an older build's code.

use sluice_runtime::{
    ActivityContext, Event, Failure, InstanceFilter, OrchestrationContext, Registry, Runtime,
    RuntimeOptions, StartError, codes, replay_check,
};
use sluice_store::Store;
use sluice_store_sqlite::{Location, SqliteStore, SqliteStoreOptions};
use sluice_testkit::TempSqlite;
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn open(temp: &TempSqlite) -> Arc<SqliteStore> {
    let options = SqliteStoreOptions::new(Location::File(temp.path().to_path_buf()));
    Arc::new(SqliteStore::open(options).expect("open store"))
}

/// Version 1 as the old build had it: charge, wait for "go", ship.
async fn checkout_v1(ctx: OrchestrationContext, _: ()) -> Result<String, Failure> {
    let charged: String = ctx.activity("step", "charge").await?;
    ctx.event::<String>("go").await?;
    let shipped: String = ctx.activity("step", "ship").await?;
    Ok(format!("v1 {charged} {shipped}"))
}

/// Version 1 edited in place, incompatibly: the first activity is renamed.
async fn checkout_v1_edited(ctx: OrchestrationContext, _: ()) -> Result<String, Failure> {
    let charged: String = ctx.activity("charge_card", "charge").await?;
    ctx.event::<String>("go").await?;
    Ok(format!("edited {charged}"))
}

/// Version 2: a different shape, for new instances.
async fn checkout_v2(ctx: OrchestrationContext, _: ()) -> Result<String, Failure> {
    ctx.event::<String>("go").await?;
    let (charged, reserved) = ctx
        .join2(
            ctx.activity::<String>("step", "charge"),
            ctx.activity::<String>("step", "reserve"),
        )
        .await;
    Ok(format!("v2 {} {}", charged?, reserved?))
}

/// Loops through executions by continue-as-new; each execution reports its version.
async fn looping_v1(ctx: OrchestrationContext, round: u32) -> Result<String, Failure> {
    ctx.event::<String>("next").await?;
    ctx.continue_as_new_with(&(round + 1)).await
}

async fn looping_v2(_ctx: OrchestrationContext, round: u32) -> Result<String, Failure> {
    Ok(format!("v2 at round {round}"))
}

async fn step(_ctx: ActivityContext, what: String) -> Result<String, Failure> {
    Ok(what)
}

fn old_build() -> Registry {
    Registry::new()
        .orchestration_typed("checkout", checkout_v1)
        .orchestration_typed("looping", looping_v1)
        .activity_typed("step", step)
}

fn new_build() -> Registry {
    Registry::new()
        .orchestration_typed("checkout", checkout_v1)
        .orchestration_typed_version("checkout", 2, checkout_v2)
        .orchestration_typed("looping", looping_v1)
        .orchestration_typed_version("looping", 2, looping_v2)
        .activity_typed("step", step)
}

async fn wait_for_event_wait(store: &SqliteStore, id: &str) {
    // Each instance is parked on its event once its first activity completed (or, for those
    // waiting first thing, once it has run a turn).
    for _ in 0..3000 {
        let history = store.read_history(id, 1, 0).await.unwrap();
        let started = history
            .iter()
            .any(|e| matches!(e, Event::OrchestrationStarted { .. }));
        let charged = history
            .iter()
            .any(|e| matches!(e, Event::ActivityCompleted { .. }));
        if started && (charged || id.starts_with("loop")) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{id} did not reach its wait");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_keep_running_instances_on_their_code_and_replay_check_finds_breaks() {
    let temp = TempSqlite::new();
    let store = open(&temp);
    let runtime = Runtime::start(store.clone(), old_build(), RuntimeOptions::default()).unwrap();
    let client = runtime.client();
    client.start_typed("checkout", "old-1", &()).await.unwrap();
    client
        .start_typed("looping", "loop-1", &0u32)
        .await
        .unwrap();
    wait_for_event_wait(&store, "old-1").await;
    wait_for_event_wait(&store, "loop-1").await;
    runtime.shutdown(WAIT).await;

    // The check, before deploying: the new build keeps version 1 and passes; an in-place edit
    // of version 1 would break the waiting instance; a build without version 1 has no code.
    let all = InstanceFilter::default();
    let report = replay_check(store.as_ref(), &new_build(), &all)
        .await
        .unwrap();
    assert!(report.passed(), "{report:?}");
    assert_eq!(report.checked, 2);
    let edited = Registry::new()
        .orchestration_typed("checkout", checkout_v1_edited)
        .orchestration_typed("looping", looping_v1);
    let report = replay_check(store.as_ref(), &edited, &all).await.unwrap();
    assert!(!report.passed());
    assert_eq!(report.failures.len(), 1, "{report:?}");
    let broken = &report.failures[0];
    assert_eq!(broken.instance_id, "old-1");
    assert_eq!(broken.version, 1);
    assert_eq!(broken.failure.code, codes::NONDETERMINISM_COMMAND_MISMATCH);
    assert!(
        broken.failure.message.contains("charge_card"),
        "{}",
        broken.failure
    );
    let only_v2 = Registry::new()
        .orchestration_typed_version("checkout", 2, checkout_v2)
        .orchestration_typed("looping", looping_v1);
    let report = replay_check(store.as_ref(), &only_v2, &all).await.unwrap();
    assert_eq!(report.unregistered.len(), 1, "{report:?}");
    assert_eq!(
        report.unregistered[0].failure.code,
        codes::ORCHESTRATION_NOT_REGISTERED
    );
    // The check wrote nothing.
    assert_eq!(
        store.read_history("old-1", 1, 0).await.unwrap().len(),
        client.history("old-1").await.unwrap().len()
    );

    // The new build: the old instance finishes on version 1, a new start takes version 2, a
    // start can name version 1, and continue-as-new moves to the newest.
    let runtime = Runtime::start(store.clone(), new_build(), RuntimeOptions::default()).unwrap();
    let client = runtime.client();
    client.start_typed("checkout", "new-1", &()).await.unwrap();
    client
        .start_version("checkout", 1, "pinned-1", "null")
        .await
        .unwrap();
    for id in ["old-1", "new-1", "pinned-1"] {
        client.raise_event_typed(id, "go", "now").await.unwrap();
    }
    client
        .raise_event_typed("loop-1", "next", "now")
        .await
        .unwrap();
    let old: String = client.wait_for_output("old-1", WAIT).await.unwrap();
    assert_eq!(old, "v1 charge ship");
    let new: String = client.wait_for_output("new-1", WAIT).await.unwrap();
    assert_eq!(new, "v2 charge reserve");
    let pinned: String = client.wait_for_output("pinned-1", WAIT).await.unwrap();
    assert_eq!(pinned, "v1 charge ship");
    let looped: String = client.wait_for_output("loop-1", WAIT).await.unwrap();
    assert_eq!(looped, "v2 at round 1");
    let started_as = client.history("new-1").await.unwrap();
    assert!(started_as.iter().any(|e| matches!(
        e,
        Event::OrchestrationStarted {
            version: Some(2),
            ..
        }
    )));
    runtime.shutdown(WAIT).await;
}

#[test]
fn version_zero_and_a_version_registered_twice_are_refused() {
    let zero = Registry::new().orchestration_typed_version("checkout", 0, checkout_v2);
    let error = zero.validate().unwrap_err();
    assert_eq!(error.code(), "runtime.invalid_registration");
    let twice = Registry::new()
        .orchestration_typed("checkout", checkout_v1)
        .orchestration_typed_version("checkout", 2, checkout_v2)
        .orchestration_typed_version("checkout", 2, checkout_v1);
    assert_eq!(
        twice.validate(),
        Err(StartError::DuplicateName {
            kind: "orchestration",
            name: "checkout v2".into()
        })
    );
    assert_eq!(new_build().validate(), Ok(()));
    assert_eq!(new_build().newest_version("checkout"), Some(2));
}
