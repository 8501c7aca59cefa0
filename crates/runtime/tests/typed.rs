//! End-to-end tests of the typed API on a real SQLite file: typed orchestrations, activities,
//! events and client calls; tuple selects and joins; activity options (retries, heartbeat and
//! total timeouts); a patch deployed while an instance waits.

use serde::{Deserialize, Serialize};
use sluice_runtime::{
    ActivityContext, ActivityOptions, ClientError, Either, Event, Failure, InstanceStatus,
    OrchestrationContext, Registry, RetryPolicy, Runtime, RuntimeOptions, codes,
};
use sluice_store::Store;
use sluice_store_sqlite::{Location, SqliteStore, SqliteStoreOptions};
use sluice_testkit::TempSqlite;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn open(temp: &TempSqlite) -> Arc<SqliteStore> {
    let options = SqliteStoreOptions::new(Location::File(temp.path().to_path_buf()));
    Arc::new(SqliteStore::open(options).expect("open store"))
}

fn start(store: Arc<SqliteStore>, registry: Registry) -> Runtime {
    Runtime::start(store, registry, RuntimeOptions::default()).expect("the runtime starts")
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Request {
    amount: u32,
    timeout_ms: u64,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Decision {
    approved: bool,
    by: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
enum Outcome {
    Approved { by: String, receipt: String },
    Rejected { by: String },
    TimedOut,
}

async fn approval(ctx: OrchestrationContext, request: Request) -> Result<Outcome, Failure> {
    let timeout = ctx.timer(Duration::from_millis(request.timeout_ms));
    match ctx
        .select2(timeout, ctx.event::<Decision>("decision"))
        .await
    {
        Either::Left(()) => Ok(Outcome::TimedOut),
        Either::Right(decision) => {
            let decision = decision?;
            if !decision.approved {
                return Ok(Outcome::Rejected { by: decision.by });
            }
            let receipt: String = ctx.activity("pay", &request.amount).await?;
            Ok(Outcome::Approved {
                by: decision.by,
                receipt,
            })
        }
    }
}

async fn pay(_ctx: ActivityContext, amount: u32) -> Result<String, Failure> {
    Ok(format!("paid {amount}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_approval_with_a_timer_and_an_event() {
    let temp = TempSqlite::new();
    let store = open(&temp);
    let runtime = start(
        store.clone(),
        Registry::new()
            .orchestration_typed("approval", approval)
            .activity_typed("pay", pay),
    );
    let client = runtime.client();
    let long = Request {
        amount: 42,
        timeout_ms: 60_000,
    };
    client.start_typed("approval", "yes", &long).await.unwrap();
    client.start_typed("approval", "no", &long).await.unwrap();
    client
        .start_typed(
            "approval",
            "late",
            &Request {
                amount: 1,
                timeout_ms: 50,
            },
        )
        .await
        .unwrap();
    let by = |name: &str| Decision {
        approved: name == "ada",
        by: name.into(),
    };
    client
        .raise_event_typed("yes", "decision", &by("ada"))
        .await
        .unwrap();
    client
        .raise_event_typed("no", "decision", &by("bob"))
        .await
        .unwrap();
    let yes: Outcome = client.wait_for_output("yes", WAIT).await.unwrap();
    assert_eq!(
        yes,
        Outcome::Approved {
            by: "ada".into(),
            receipt: "paid 42".into()
        }
    );
    let no: Outcome = client.wait_for_output("no", WAIT).await.unwrap();
    assert_eq!(no, Outcome::Rejected { by: "bob".into() });
    let late: Outcome = client.wait_for_output("late", WAIT).await.unwrap();
    assert_eq!(late, Outcome::TimedOut);
    // A payload of the wrong shape fails the instance with a coded failure, not a panic.
    client.start_typed("approval", "bad", &long).await.unwrap();
    client
        .raise_event("bad", "decision", "{\"approved\":\"maybe\"}")
        .await
        .unwrap();
    match client.wait_for_output::<Outcome>("bad", WAIT).await {
        Err(ClientError::Failed(failure)) => assert_eq!(failure.code, codes::SERDE),
        other => panic!("expected a serde failure, got {other:?}"),
    }
    runtime.shutdown(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_fan_out_with_retries_and_a_heartbeat_timeout() {
    static FLAKY_CALLS: AtomicU32 = AtomicU32::new(0);
    static SILENT_CALLS: AtomicU32 = AtomicU32::new(0);
    async fn fan_out(ctx: OrchestrationContext, sizes: Vec<u32>) -> Result<(u32, u32), Failure> {
        let retry = ActivityOptions::new().retry(RetryPolicy::attempts(3));
        let squares = sizes
            .iter()
            .map(|n| ctx.activity_with::<u32>("square", n, &retry))
            .collect();
        let mut total = 0;
        for square in ctx.join(squares).await {
            total += square?;
        }
        // Its first attempt hangs without heartbeats and is cut off after 200 ms; the second
        // heartbeats while it works and finishes.
        let watched = ActivityOptions::new()
            .retry(RetryPolicy::attempts(2))
            .heartbeat_timeout(Duration::from_millis(200));
        let (flaky, beaten) = ctx
            .join2(
                ctx.activity_with::<u32>("flaky", &(), &retry),
                ctx.activity_with::<u32>("silent_once", &(), &watched),
            )
            .await;
        Ok((total + flaky?, beaten?))
    }
    async fn square(_ctx: ActivityContext, n: u32) -> Result<u32, Failure> {
        Ok(n * n)
    }
    async fn flaky(_ctx: ActivityContext, _: ()) -> Result<u32, Failure> {
        match FLAKY_CALLS.fetch_add(1, Ordering::SeqCst) {
            0 => Err(Failure::new("flaky", "first attempt fails")),
            _ => Ok(1000),
        }
    }
    async fn silent_once(ctx: ActivityContext, _: ()) -> Result<u32, Failure> {
        if SILENT_CALLS.fetch_add(1, Ordering::SeqCst) == 0 {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(30)) => {}
                () = ctx.cancelled() => {}
            }
            return Err(Failure::new("hung", "cancelled"));
        }
        for _ in 0..5 {
            ctx.heartbeat();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(ctx.attempt())
    }
    let temp = TempSqlite::new();
    let store = open(&temp);
    let runtime = start(
        store.clone(),
        Registry::new()
            .orchestration_typed("fan_out", fan_out)
            .activity_typed("square", square)
            .activity_typed("flaky", flaky)
            .activity_typed("silent_once", silent_once),
    );
    let client = runtime.client();
    client
        .start_typed("fan_out", "f", &vec![1u32, 2, 3])
        .await
        .unwrap();
    let (total, attempt): (u32, u32) = client.wait_for_output("f", WAIT).await.unwrap();
    assert_eq!(total, 1 + 4 + 9 + 1000);
    assert_eq!(attempt, 2, "the hung attempt was cut off and retried");
    assert_eq!(FLAKY_CALLS.load(Ordering::SeqCst), 2);
    assert_eq!(SILENT_CALLS.load(Ordering::SeqCst), 2);
    runtime.shutdown(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_total_timeout_fails_the_call_while_the_activity_retries() {
    async fn bounded(ctx: OrchestrationContext, _: ()) -> Result<String, Failure> {
        let options = ActivityOptions::new()
            .retry(RetryPolicy::attempts(1000))
            .total_timeout(Duration::from_millis(300));
        match ctx.activity_with::<String>("never", &(), &options).await {
            Ok(output) => Ok(output),
            Err(failure) => Ok(failure.code),
        }
    }
    async fn never(_ctx: ActivityContext, _: ()) -> Result<String, Failure> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Err(Failure::new("down", "the service is down"))
    }
    let temp = TempSqlite::new();
    let store = open(&temp);
    let runtime = start(
        store.clone(),
        Registry::new()
            .orchestration_typed("bounded", bounded)
            .activity_typed("never", never),
    );
    let client = runtime.client();
    client.start_typed("bounded", "b", &()).await.unwrap();
    let code: String = client.wait_for_output("b", WAIT).await.unwrap();
    assert_eq!(code, codes::ACTIVITY_TOTAL_TIMED_OUT);
    runtime.shutdown(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_deployed_while_instances_wait() {
    async fn old(ctx: OrchestrationContext, _: ()) -> Result<Vec<String>, Failure> {
        let mut done = vec![ctx.activity::<String>("step", "charge").await?];
        done.push(ctx.event::<String>("go").await?);
        done.push(ctx.activity::<String>("step", "ship").await?);
        Ok(done)
    }
    async fn new(ctx: OrchestrationContext, _: ()) -> Result<Vec<String>, Failure> {
        let mut done = vec![ctx.activity::<String>("step", "charge").await?];
        done.push(ctx.event::<String>("go").await?);
        if ctx.is_patched("fraud-check") {
            done.push(ctx.activity::<String>("step", "fraud check").await?);
        }
        done.push(ctx.activity::<String>("step", "ship").await?);
        Ok(done)
    }
    async fn step(_ctx: ActivityContext, what: String) -> Result<String, Failure> {
        Ok(what)
    }
    let temp = TempSqlite::new();
    // The old build starts an instance, which waits for its event past the charge.
    let store = open(&temp);
    let runtime = start(
        store.clone(),
        Registry::new()
            .orchestration_typed("checkout", old)
            .activity_typed("step", step),
    );
    let client = runtime.client();
    client.start_typed("checkout", "c1", &()).await.unwrap();
    loop {
        let history = client.history("c1").await.unwrap();
        if history
            .iter()
            .any(|event| matches!(event, Event::ActivityCompleted { .. }))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    runtime.shutdown(WAIT).await;
    drop((client, store));
    // The new build takes over the store: the waiting instance passes the patch point now,
    // so it takes the new branch.
    let store = open(&temp);
    let runtime = start(
        store.clone(),
        Registry::new()
            .orchestration_typed("checkout", new)
            .activity_typed("step", step),
    );
    let client = runtime.client();
    client
        .raise_event_typed("c1", "go", "approved")
        .await
        .unwrap();
    let done: Vec<String> = client.wait_for_output("c1", WAIT).await.unwrap();
    assert_eq!(done, vec!["charge", "approved", "fraud check", "ship"]);
    let history = client.history("c1").await.unwrap();
    assert!(
        history.iter().any(
            |event| matches!(event, Event::PatchMarker { patch, .. } if patch == "fraud-check")
        )
    );
    let info = store.instance("c1").await.unwrap().unwrap();
    assert_eq!(info.status, InstanceStatus::Completed);
    runtime.shutdown(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_whose_future_is_dropped_is_cancelled() {
    static SAW_CANCEL: AtomicU32 = AtomicU32::new(0);
    async fn racing(ctx: OrchestrationContext, _: ()) -> Result<Vec<String>, Failure> {
        let mut seen = Vec::new();
        // A running activity loses to a timer: it gets its cancellation signal.
        match ctx
            .select2(
                ctx.activity::<String>("hang", &()),
                ctx.timer(Duration::from_millis(300)),
            )
            .await
        {
            Either::Left(_) => seen.push("activity won".to_string()),
            Either::Right(()) => seen.push("timer beat the activity".to_string()),
        }
        // A sub-orchestration loses to a timer: it is cancelled.
        match ctx
            .select2(
                ctx.sub_orchestration_with_id::<String>("child", "child-1", &()),
                ctx.timer(Duration::from_millis(100)),
            )
            .await
        {
            Either::Left(_) => seen.push("child won".to_string()),
            Either::Right(()) => seen.push("timer beat the child".to_string()),
        }
        // An activity nobody runs yet is dropped: its work item goes.
        let parked =
            ctx.activity_with::<String>("later", &(), &ActivityOptions::new().queue("nowhere"));
        ctx.event::<String>("drop").await?;
        drop(parked);
        ctx.event::<String>("finish").await?;
        Ok(seen)
    }
    async fn child(ctx: OrchestrationContext, _: ()) -> Result<String, Failure> {
        ctx.event::<String>("never").await
    }
    /// Counts the attempt's cancellation: the runtime drops a cancelled attempt's future.
    struct OnDrop;
    impl Drop for OnDrop {
        fn drop(&mut self) {
            SAW_CANCEL.fetch_add(1, Ordering::SeqCst);
        }
    }
    async fn hang(_ctx: ActivityContext, _: ()) -> Result<String, Failure> {
        let _guard = OnDrop;
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok("slept".into())
    }
    let temp = TempSqlite::new();
    let store = open(&temp);
    let runtime = start(
        store.clone(),
        Registry::new()
            .orchestration_typed("racing", racing)
            .orchestration_typed("child", child)
            .activity_typed("hang", hang),
    );
    let client = runtime.client();
    client.start_typed("racing", "r", &()).await.unwrap();
    let queue = sluice_store::Names::only(["nowhere"]);
    let lease = Duration::from_millis(50);
    // The parked activity's work item exists while the instance waits for "drop".
    loop {
        let items = store
            .fetch_activities_named(10, lease, &sluice_store::Names::All, &queue)
            .await
            .unwrap();
        if !items.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let child = client.wait_for_completion("child-1", WAIT).await.unwrap();
    assert_eq!(child.status, InstanceStatus::Cancelled, "{child:?}");
    assert_eq!(SAW_CANCEL.load(Ordering::SeqCst), 1);
    client.raise_event_typed("r", "drop", "now").await.unwrap();
    loop {
        let history = client.history("r").await.unwrap();
        if history
            .iter()
            .filter(|event| matches!(event, Event::CancelRequested { .. }))
            .count()
            == 3
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(lease * 2).await;
    let items = store
        .fetch_activities_named(10, lease, &sluice_store::Names::All, &queue)
        .await
        .unwrap();
    assert!(
        items.is_empty(),
        "the cancelled activity's work item is gone: {items:?}"
    );
    client
        .raise_event_typed("r", "finish", "now")
        .await
        .unwrap();
    let seen: Vec<String> = client.wait_for_output("r", WAIT).await.unwrap();
    assert_eq!(
        seen,
        vec!["timer beat the activity", "timer beat the child"]
    );
    runtime.shutdown(WAIT).await;
}
