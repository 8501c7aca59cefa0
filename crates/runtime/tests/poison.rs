//! Regression tests for work that stalls or misleads the runtime: turns slower than their lease,
//! stored rows this build cannot decode, activities of ended instances, and work whose code this
//! process lacks. Each failed before its fix (see the test's comment for how).

use sluice_runtime::{
    ActivityContext, Client, Event, Failure, InstanceInfo, InstanceStatus, OrchestrationContext,
    Registry, Runtime, RuntimeOptions, codes,
};
use sluice_store_sqlite::{Location, SqliteStore, SqliteStoreOptions};
use sluice_testkit::TempSqlite;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

fn open(temp: &TempSqlite) -> Arc<SqliteStore> {
    let options = SqliteStoreOptions::new(Location::File(temp.path().to_path_buf()));
    Arc::new(SqliteStore::open(options).expect("open store"))
}

/// Options that make poison show up within a test's patience: three deliveries, short backoff.
fn quick_options() -> RuntimeOptions {
    RuntimeOptions {
        orchestration_concurrency: 4,
        activity_concurrency: 4,
        turn_deliveries_max: 3,
        turn_retry_delay_min: Duration::from_millis(10),
        turn_retry_delay_max: Duration::from_millis(50),
        poll_interval: Duration::from_millis(50),
        ..RuntimeOptions::default()
    }
}

/// A second connection to the store's file, for writing rows a newer build could have written.
fn raw(temp: &TempSqlite) -> rusqlite::Connection {
    let connection = rusqlite::Connection::open(temp.path()).expect("raw connection");
    connection
        .busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    connection
}

async fn wait_status(client: &Client, id: &str, status: InstanceStatus) -> InstanceInfo {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(info) = client.status(id).await.unwrap()
            && info.status == status
        {
            return info;
        }
        assert!(Instant::now() < deadline, "{id} never reached {status:?}");
        // Test-only observation of another component's progress; the runtime itself never polls.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn max_deliveries(temp: &TempSqlite, id: &str) -> i64 {
    raw(temp)
        .query_row(
            "SELECT COALESCE(MAX(deliveries), 0) FROM inbox WHERE instance_id = ?1",
            [id],
            |row| row.get(0),
        )
        .unwrap()
}

async fn wait_for_event(ctx: OrchestrationContext, _input: String) -> Result<String, Failure> {
    Ok(ctx.wait_for_event("go").await)
}

/// Defect 1. Before: nothing renewed a turn's lease, so a turn of 1.5 s under a 1 s lease was
/// refused at commit and fetched again, forever (this test timed out with the code run again
/// and again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_slower_than_its_lease_commits_once() {
    static RUNS: AtomicU32 = AtomicU32::new(0);
    async fn slow(_ctx: OrchestrationContext, _input: String) -> Result<String, Failure> {
        RUNS.fetch_add(1, Ordering::SeqCst);
        // A long replay or a slow code path: the turn holds its thread for longer than a lease.
        std::thread::sleep(Duration::from_millis(1_500));
        Ok("done".into())
    }
    let temp = TempSqlite::new();
    let store = open(&temp);
    let options = RuntimeOptions {
        turn_lease: Duration::from_secs(1),
        ..RuntimeOptions::default()
    };
    let runtime = Runtime::start(store, Registry::new().orchestration("slow", slow), options)
        .expect("the runtime starts");
    let client = runtime.client();
    client.start("slow", "s", "").await.unwrap();
    let info = client.wait_for_completion("s", WAIT).await.unwrap();
    assert_eq!(info.status, InstanceStatus::Completed, "{info:?}");
    assert_eq!(RUNS.load(Ordering::SeqCst), 1, "the turn ran once");
    runtime.shutdown(WAIT).await;
}

/// Defect 2. Before: `read_history` failed with `Corrupt` on every delivery and the turn was
/// retried every second forever (the instance stayed Running; this test timed out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_history_event_quarantines_its_instance() {
    let temp = TempSqlite::new();
    let store = open(&temp);
    let registry = Registry::new().orchestration("wait", wait_for_event);
    let runtime = Runtime::start(store.clone(), registry.clone(), quick_options())
        .expect("the runtime starts");
    let client = runtime.client();
    client.start("wait", "h", "").await.unwrap();
    wait_status(&client, "h", InstanceStatus::Running).await;
    runtime.shutdown(WAIT).await;
    // A newer build wrote an event variant this one does not know, then was rolled back.
    raw(&temp)
        .execute(
            "UPDATE history SET event = '{\"type\":\"activity_paused\",\"id\":0}'
             WHERE instance_id = 'h' AND position = 1",
            [],
        )
        .unwrap();
    // A fresh runtime (nothing cached) gets an event that needs a turn.
    let runtime = Runtime::start(store, registry, quick_options()).expect("the runtime starts");
    let client = runtime.client();
    client.raise_event("h", "go", "now").await.unwrap();
    let info = wait_status(&client, "h", InstanceStatus::Quarantined).await;
    let failure = info.failure.expect("the reason");
    assert_eq!(failure.code, codes::TURN_POISONED);
    assert!(
        failure.message.contains("delivered 3 times")
            && failure.message.contains("store.corrupt")
            && failure.message.contains("history event 1 of instance 'h'")
            && failure
                .message
                .contains("unknown variant `activity_paused`"),
        "{failure}"
    );
    // Nothing loops: no more deliveries, the event is kept for when an operator acts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(max_deliveries(&temp, "h"), 3);
    client.raise_event("h", "go", "again").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(max_deliveries(&temp, "h"), 3, "quarantined: not fetched");
    runtime.shutdown(WAIT).await;
}

/// Defect 3. Before: `fetch_turns` decoded with `?` inside its loop, so one bad message failed
/// every fetch and no instance in the store ran (this test timed out with 0 of 100 done).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_undecodable_inbox_message_stops_only_its_instance() {
    async fn one(ctx: OrchestrationContext, input: String) -> Result<String, Failure> {
        ctx.schedule_activity("echo", input).await
    }
    async fn echo(_ctx: ActivityContext, input: String) -> Result<String, Failure> {
        Ok(input)
    }
    let temp = TempSqlite::new();
    let store = open(&temp);
    let client = Client::new(store.clone(), Duration::from_millis(50));
    // The bad instance heads the queue.
    client.start("one", "bad", "x").await.unwrap();
    raw(&temp)
        .execute(
            "INSERT INTO inbox (instance_id, visible_at_ms, message)
             VALUES ('bad', 0, '{\"type\":\"event\",\"name\":\"go\",\"data\":\"1\",\"priority\":9}')",
            [],
        )
        .unwrap();
    for i in 0..100 {
        client.start("one", &format!("ok-{i}"), "x").await.unwrap();
    }
    let registry = Registry::new()
        .orchestration("one", one)
        .activity("echo", echo);
    let runtime = Runtime::start(store, registry, quick_options()).expect("the runtime starts");
    for i in 0..100 {
        let info = client
            .wait_for_completion(&format!("ok-{i}"), WAIT)
            .await
            .unwrap();
        assert_eq!(info.status, InstanceStatus::Completed, "{info:?}");
    }
    let info = wait_status(&client, "bad", InstanceStatus::Quarantined).await;
    let failure = info.failure.expect("the reason");
    assert_eq!(failure.code, codes::TURN_POISONED);
    assert!(
        failure.message.contains("inbox message")
            && failure.message.contains("of instance 'bad'")
            && failure.message.contains("unknown field `priority`"),
        "{failure}"
    );
    let history = client.history("bad").await.unwrap();
    assert!(
        matches!(history.as_slice(), [Event::Quarantined { reason }] if *reason == failure),
        "its start did not run without the message after it, only the quarantine is recorded: \
         {history:?}"
    );
    runtime.shutdown(WAIT).await;
}

/// Crash loops count: a turn whose earlier deliveries never answered (each crashed its process)
/// is quarantined at the next fetch, without running the code again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_that_kept_crashing_its_process_is_quarantined_without_running() {
    static RUNS: AtomicU32 = AtomicU32::new(0);
    async fn crashy(_ctx: OrchestrationContext, _input: String) -> Result<String, Failure> {
        RUNS.fetch_add(1, Ordering::SeqCst);
        Ok("done".into())
    }
    let temp = TempSqlite::new();
    let store = open(&temp);
    let client = Client::new(store.clone(), Duration::from_millis(50));
    client.start("crashy", "c", "").await.unwrap();
    client.start("crashy", "fine", "").await.unwrap();
    // Three processes took the turn and died in it (what the store counted).
    raw(&temp)
        .execute(
            "UPDATE inbox SET deliveries = 3 WHERE instance_id = 'c'",
            [],
        )
        .unwrap();
    let runtime = Runtime::start(
        store,
        Registry::new().orchestration("crashy", crashy),
        quick_options(),
    )
    .expect("the runtime starts");
    let info = wait_status(&client, "c", InstanceStatus::Quarantined).await;
    let failure = info.failure.unwrap();
    assert_eq!(failure.code, codes::TURN_POISONED);
    assert!(failure.message.contains("delivered 4 times"), "{failure}");
    let fine = client.wait_for_completion("fine", WAIT).await.unwrap();
    assert_eq!(fine.status, InstanceStatus::Completed);
    assert_eq!(
        RUNS.load(Ordering::SeqCst),
        1,
        "only the healthy instance ran"
    );
    runtime.shutdown(WAIT).await;
}

/// Defect 4. Before: an activity claimed by this process and waiting for a run slot started
/// with a fresh cancellation token once a slot freed, after its instance was cancelled (this
/// test saw 2 starts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activity_of_a_cancelled_instance_does_not_start() {
    static STARTS: AtomicU32 = AtomicU32::new(0);
    async fn two(ctx: OrchestrationContext, _input: String) -> Result<String, Failure> {
        let calls = vec![
            ctx.schedule_activity("block", "a"),
            ctx.schedule_activity("block", "b"),
        ];
        ctx.join(calls).await;
        Ok("both".into())
    }
    async fn block(ctx: ActivityContext, _input: String) -> Result<String, Failure> {
        STARTS.fetch_add(1, Ordering::SeqCst);
        ctx.cancelled().await;
        Ok("stopped".into())
    }
    let temp = TempSqlite::new();
    let store = open(&temp);
    let options = RuntimeOptions {
        activity_concurrency: 1,
        ..RuntimeOptions::default()
    };
    let registry = Registry::new()
        .orchestration("two", two)
        .activity("block", block);
    let runtime = Runtime::start(store, registry, options).expect("the runtime starts");
    let client = runtime.client();
    client.start("two", "t", "").await.unwrap();
    let deadline = Instant::now() + WAIT;
    while STARTS.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the first activity never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    client.cancel("t", "stop").await.unwrap();
    let info = client.wait_for_completion("t", WAIT).await.unwrap();
    assert_eq!(info.status, InstanceStatus::Cancelled);
    // The first activity stops and frees its slot; the second must not take it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        STARTS.load(Ordering::SeqCst),
        1,
        "the waiting activity started"
    );
    runtime.shutdown(WAIT).await;
}

/// A process without an orchestration's or an activity's code leaves the work for one that has
/// it (a rolling deploy), without counting deliveries: by default it never fetches it
/// (`fetch_registered_only`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_without_a_handler_waits_for_a_process_that_has_it() {
    waits_for_a_process_with_the_code(true).await;
}

/// The same when every process fetches everything: the work is handed back, uncounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_without_a_handler_is_handed_back_when_fetching_everything() {
    waits_for_a_process_with_the_code(false).await;
}

async fn waits_for_a_process_with_the_code(fetch_registered_only: bool) {
    let quick_options = || RuntimeOptions {
        fetch_registered_only,
        ..quick_options()
    };
    async fn new_code(ctx: OrchestrationContext, input: String) -> Result<String, Failure> {
        ctx.schedule_activity("new_activity", input).await
    }
    async fn old_code(ctx: OrchestrationContext, input: String) -> Result<String, Failure> {
        ctx.schedule_activity("new_activity", input).await
    }
    async fn new_activity(_ctx: ActivityContext, input: String) -> Result<String, Failure> {
        Ok(format!("new {input}"))
    }
    let temp = TempSqlite::new();
    let store = open(&temp);
    // An old process knows neither "new_code" nor "new_activity".
    let old = Runtime::start(
        store.clone(),
        Registry::new().orchestration("old_code", old_code),
        quick_options(),
    )
    .expect("the runtime starts");
    let client = old.client();
    client.start("new_code", "n", "x").await.unwrap();
    client.start("old_code", "o", "y").await.unwrap();
    wait_status(&client, "o", InstanceStatus::Running).await;
    // Many releases at the 50 ms poll interval, more than `turn_deliveries_max` (3): nothing
    // fails, nothing is quarantined.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        client.status("n").await.unwrap().unwrap().status,
        InstanceStatus::Pending
    );
    assert_eq!(
        client.status("o").await.unwrap().unwrap().status,
        InstanceStatus::Running
    );
    // Read the counts once the old process is gone: while it runs, a fetch counts a delivery
    // that its release takes back a moment later, and a read between the two sees it.
    old.shutdown(WAIT).await;
    assert_eq!(max_deliveries(&temp, "n"), 0, "releases are not deliveries");
    // The new build arrives.
    let new = Runtime::start(
        store,
        Registry::new()
            .orchestration("new_code", new_code)
            .orchestration("old_code", old_code)
            .activity("new_activity", new_activity),
        quick_options(),
    )
    .expect("the runtime starts");
    let client = new.client();
    for (id, output) in [("n", "new x"), ("o", "new y")] {
        let info = client.wait_for_completion(id, WAIT).await.unwrap();
        assert_eq!(info.status, InstanceStatus::Completed, "{info:?}");
        assert_eq!(info.output.as_deref(), Some(output));
    }
    new.shutdown(WAIT).await;
}

/// Past `handler_wait_max` the work fails with the code it always had, naming the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_without_a_handler_fails_after_handler_wait_max() {
    async fn calls_missing(ctx: OrchestrationContext, input: String) -> Result<String, Failure> {
        match ctx.schedule_activity("missing", input).await {
            Ok(output) => Ok(output),
            Err(failure) => Ok(format!("activity failed: {}", failure.code)),
        }
    }
    let temp = TempSqlite::new();
    let store = open(&temp);
    let options = RuntimeOptions {
        handler_wait_max: Duration::from_millis(300),
        fetch_registered_only: false,
        ..quick_options()
    };
    let runtime = Runtime::start(
        store,
        Registry::new().orchestration("calls_missing", calls_missing),
        options,
    )
    .expect("the runtime starts");
    let client = runtime.client();
    client.start("nobody_has_this", "x", "").await.unwrap();
    client.start("calls_missing", "y", "").await.unwrap();
    let started = Instant::now();
    let info = client.wait_for_completion("x", WAIT).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(info.status, InstanceStatus::Failed);
    let failure = info.failure.unwrap();
    assert_eq!(failure.code, codes::ORCHESTRATION_NOT_REGISTERED);
    assert!(failure.message.contains("handler_wait_max"), "{failure}");
    let info = client.wait_for_completion("y", WAIT).await.unwrap();
    assert_eq!(info.status, InstanceStatus::Completed);
    assert_eq!(
        info.output.as_deref(),
        Some("activity failed: activity_not_registered")
    );
    runtime.shutdown(WAIT).await;
}

/// Where the crash loop's child processes find the store (set only for them).
const CRASH_CHILD_STORE: &str = "SLUICE_TEST_CRASH_CHILD_STORE";

/// The poison limit of the crash loop: three deliveries without a result.
fn crash_loop_options() -> RuntimeOptions {
    RuntimeOptions {
        activity_deliveries_max: 3,
        ..quick_options()
    }
}

async fn call_it(ctx: OrchestrationContext, input: String) -> Result<String, Failure> {
    ctx.schedule_activity("fragile", input).await
}

/// One process of the crash loop below, run by it as a child (as a plain test it returns at
/// once). Its activity kills its own process with SIGKILL, as the OOM killer or a segfault in
/// native code would; the child ends by itself only once the runtime has quarantined both
/// instances instead of running the activity again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_child() {
    let Some(path) = std::env::var_os(CRASH_CHILD_STORE) else {
        return;
    };
    async fn fragile(_ctx: ActivityContext, _input: String) -> Result<String, Failure> {
        let pid = std::process::id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status();
        std::future::pending().await
    }
    let options = SqliteStoreOptions::new(Location::File(path.into()));
    let store = Arc::new(SqliteStore::open(options).expect("open store"));
    let registry = Registry::new()
        .orchestration("call_it", call_it)
        .activity("fragile", fragile);
    let runtime =
        Runtime::start(store, registry, crash_loop_options()).expect("the runtime starts");
    let client = runtime.client();
    for id in ["r", "d"] {
        wait_status(&client, id, InstanceStatus::Quarantined).await;
    }
    runtime.shutdown(WAIT).await;
}

/// An activity that crashes its process on every delivery does not loop forever: after
/// `activity_deliveries_max` deliveries that never answered (real processes, killed in the
/// activity), the next process quarantines its instance without running the code, with the
/// reason in its status and history; an operator then retries one (it completes with fixed
/// code) and discards the other (failed, code `discarded`, its activity never run again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activity_that_keeps_crashing_its_process_quarantines_its_instance() {
    use std::os::unix::process::ExitStatusExt;
    let temp = TempSqlite::new();
    {
        let store = open(&temp);
        let client = Client::new(store, Duration::from_millis(50));
        client.start("call_it", "r", "r").await.unwrap();
        client.start("call_it", "d", "d").await.unwrap();
    }
    let mut killed = 0;
    let mut children = 0;
    loop {
        children += 1;
        assert!(
            children <= 12,
            "no quarantine after {killed} crashed processes"
        );
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_loop_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_CHILD_STORE, temp.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        match status.signal() {
            Some(9) => killed += 1,
            _ => {
                assert!(status.success(), "the child failed: {status:?}");
                break;
            }
        }
    }
    eprintln!("{killed} of {children} child processes were killed in the activity");
    assert!(
        (3..=6).contains(&killed),
        "each instance's item was delivered three times before the quarantine ({killed} kills)"
    );

    static RUNS_OF_D: AtomicU32 = AtomicU32::new(0);
    async fn fixed(_ctx: ActivityContext, input: String) -> Result<String, Failure> {
        if input == "d" {
            RUNS_OF_D.fetch_add(1, Ordering::SeqCst);
        }
        Ok(format!("{input} done"))
    }
    let store = open(&temp);
    let registry = Registry::new()
        .orchestration("call_it", call_it)
        .activity("fragile", fixed);
    let runtime =
        Runtime::start(store, registry, crash_loop_options()).expect("the runtime starts");
    let client = runtime.client();
    for id in ["r", "d"] {
        let info = client.status(id).await.unwrap().unwrap();
        assert_eq!(info.status, InstanceStatus::Quarantined, "{id}: {info:?}");
        let failure = info.failure.unwrap();
        assert_eq!(failure.code, codes::ACTIVITY_POISONED);
        assert!(
            failure.message.contains("activity 'fragile'")
                && failure.message.contains("delivered 4 times (limit 3)"),
            "{failure}"
        );
        let history = client.history(id).await.unwrap();
        assert!(
            history
                .iter()
                .any(|event| matches!(event, Event::Quarantined { reason } if *reason == failure)),
            "{history:?}"
        );
    }
    // Nothing runs while quarantined, even with healthy code.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(RUNS_OF_D.load(Ordering::SeqCst), 0);

    assert!(client.retry("r", "deployed the fix", "ops").await.unwrap());
    let info = client.wait_for_completion("r", WAIT).await.unwrap();
    assert_eq!(info.status, InstanceStatus::Completed, "{info:?}");
    assert_eq!(info.output.as_deref(), Some("r done"));
    client.discard("d", "bad input", "ops").await.unwrap();
    let info = client.status("d").await.unwrap().unwrap();
    assert_eq!(info.status, InstanceStatus::Failed);
    assert_eq!(info.failure.unwrap().code, codes::DISCARDED);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        RUNS_OF_D.load(Ordering::SeqCst),
        0,
        "a discarded instance runs nothing"
    );
    runtime.shutdown(WAIT).await;
}
