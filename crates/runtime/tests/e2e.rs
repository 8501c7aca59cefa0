//! End-to-end tests of the runtime on a real SQLite file: every user-facing feature.

use sluice_runtime::{
    ActivityContext, Backoff, Client, DurableOutput, Event, Failure, InstanceStatus,
    OrchestrationContext, Registry, RetryPolicy, Runtime, RuntimeOptions, StartOutcome, codes,
};
use sluice_store::Store;
use sluice_store_sqlite::{Location, SqliteStore, SqliteStoreOptions};
use sluice_testkit::TempSqlite;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

struct Setup {
    runtime: Runtime,
    client: Client,
    store: Arc<SqliteStore>,
    _temp: TempSqlite,
}

fn open(temp: &TempSqlite) -> Arc<SqliteStore> {
    let options = SqliteStoreOptions::new(Location::File(temp.path().to_path_buf()));
    Arc::new(SqliteStore::open(options).expect("open store"))
}

fn setup(registry: Registry) -> Setup {
    let temp = TempSqlite::new();
    let store = open(&temp);
    let options = RuntimeOptions {
        orchestration_concurrency: 4,
        activity_concurrency: 16,
        ..RuntimeOptions::default()
    };
    let runtime = Runtime::start(store.clone(), registry, options).expect("the runtime starts");
    let client = runtime.client();
    Setup {
        runtime,
        client,
        store,
        _temp: temp,
    }
}

async fn echo(_ctx: ActivityContext, input: String) -> Result<String, Failure> {
    Ok(format!("<{input}>"))
}

async fn completed(client: &Client, id: &str) -> String {
    let info = client
        .wait_for_completion(id, WAIT)
        .await
        .expect("finishes");
    assert_eq!(info.status, InstanceStatus::Completed, "{info:?}");
    info.output.expect("output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_activities() {
    async fn chain(ctx: OrchestrationContext, input: String) -> Result<String, Failure> {
        let mut value = input;
        for _ in 0..5 {
            value = ctx.schedule_activity("echo", value).await?;
        }
        Ok(value)
    }
    let s = setup(
        Registry::new()
            .orchestration("chain", chain)
            .activity("echo", echo),
    );
    s.client.start("chain", "c1", "x").await.unwrap();
    assert_eq!(completed(&s.client, "c1").await, "<<<<<x>>>>>");
    let history = s.client.history("c1").await.unwrap();
    let scheduled = history
        .iter()
        .filter(|e| matches!(e, Event::ActivityScheduled { .. }))
        .count();
    let done = history
        .iter()
        .filter(|e| matches!(e, Event::ActivityCompleted { .. }))
        .count();
    assert_eq!((scheduled, done), (5, 5));
    s.runtime.shutdown(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_fan_in_of_1000_activities() {
    async fn fan(ctx: OrchestrationContext, _input: String) -> Result<String, Failure> {
        let calls = (0..1000)
            .map(|i| ctx.schedule_activity("echo", i.to_string()))
            .collect();
        let results = ctx.join(calls).await;
        let mut total = 0u64;
        for (i, result) in results.into_iter().enumerate() {
            assert_eq!(result?, format!("<{i}>"), "join keeps list order");
            total += i as u64;
        }
        Ok(total.to_string())
    }
    let s = setup(
        Registry::new()
            .orchestration("fan", fan)
            .activity("echo", echo),
    );
    s.client.start("fan", "f1", "").await.unwrap();
    assert_eq!(
        completed(&s.client, "f1").await,
        (0..1000u64).sum::<u64>().to_string()
    );
    s.runtime.shutdown(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_timers_in_one_orchestration() {
    async fn timers(ctx: OrchestrationContext, _input: String) -> Result<String, Failure> {
        let start = ctx.now_ms();
        let all = (0..1000)
            .map(|i| ctx.create_timer(Duration::from_millis(50 + (i % 50))))
            .collect();
        let fired = ctx.join(all).await;
        Ok(format!("{} {}", fired.len(), ctx.now_ms() - start >= 50))
    }
    let s = setup(Registry::new().orchestration("timers", timers));
    s.client.start("timers", "t1", "").await.unwrap();
    assert_eq!(completed(&s.client, "t1").await, "1000 true");
    let history = s.client.history("t1").await.unwrap();
    assert_eq!(
        history
            .iter()
            .filter(|e| matches!(e, Event::TimerFired { .. }))
            .count(),
        1000
    );
    s.runtime.shutdown(WAIT).await;
}

async fn approval(ctx: OrchestrationContext, timeout_ms: String) -> Result<String, Failure> {
    let timeout = Duration::from_millis(timeout_ms.parse().unwrap());
    let timer = ctx.create_timer(timeout).into_any();
    let approved = ctx.wait_for_event("approval").into_any();
    match ctx.select(vec![timer, approved]).await {
        (_, DurableOutput::Event(by)) => Ok(format!("approved by {by}")),
        (_, DurableOutput::Timer) => Ok("timed out".to_string()),
        (_, other) => Err(Failure::new("unexpected", format!("{other:?}"))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_with_timeout_event_wins_and_timer_wins() {
    let s = setup(Registry::new().orchestration("approval", approval));
    s.client.start("approval", "fast", "60000").await.unwrap();
    s.client.start("approval", "slow", "100").await.unwrap();
    // Let "fast" reach its wait, then approve it.
    s.client
        .raise_event("fast", "approval", "alice")
        .await
        .unwrap();
    assert_eq!(completed(&s.client, "fast").await, "approved by alice");
    assert_eq!(completed(&s.client, "slow").await, "timed out");
    // An event for a finished instance is an error, not silently dropped.
    let late = s
        .client
        .raise_event("slow", "approval", "bob")
        .await
        .unwrap_err();
    assert!(late.to_string().contains("takes no more events"), "{late}");
    s.runtime.shutdown(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_raised_before_its_wait_is_kept() {
    async fn late_waiter(ctx: OrchestrationContext, _input: String) -> Result<String, Failure> {
        ctx.create_timer(Duration::from_millis(200)).await;
        let first = ctx.wait_for_event("data").await;
        let second = ctx.dequeue_event("jobs").await;
        Ok(format!("{first}/{second}"))
    }
    let s = setup(Registry::new().orchestration("late", late_waiter));
    s.client.start("late", "e1", "").await.unwrap();
    s.client.raise_event("e1", "data", "early").await.unwrap();
    s.client.enqueue_event("e1", "jobs", "job-1").await.unwrap();
    assert_eq!(completed(&s.client, "e1").await, "early/job-1");
    let missing = s
        .client
        .raise_event("nobody", "data", "x")
        .await
        .unwrap_err();
    assert_eq!(missing.code(), "client.not_found");
    s.runtime.shutdown(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_with_start_starts_a_missing_instance() {
    async fn waiter(ctx: OrchestrationContext, input: String) -> Result<String, Failure> {
        Ok(format!("{input}:{}", ctx.wait_for_event("go").await))
    }
    let s = setup(Registry::new().orchestration("waiter", waiter));
    s.client
        .signal_with_start("waiter", "w1", "in", "go", "now")
        .await
        .unwrap();
    assert_eq!(completed(&s.client, "w1").await, "in:now");
    s.runtime.shutdown(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_is_idempotent_on_the_instance_id() {
    let runs = Arc::new(AtomicU32::new(0));
    let counter = runs.clone();
    let s = setup(Registry::new().orchestration(
        "once",
        move |ctx: OrchestrationContext, _input: String| {
            let counter = counter.clone();
            async move {
                if !ctx.is_replaying() {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                Ok("done".to_string())
            }
        },
    ));
    assert_eq!(
        s.client.start("once", "o1", "").await.unwrap(),
        StartOutcome::Created
    );
    assert_eq!(
        s.client.start("once", "o1", "").await.unwrap(),
        StartOutcome::AlreadyExists
    );
    completed(&s.client, "o1").await;
    assert_eq!(
        s.client.start("once", "o1", "").await.unwrap(),
        StartOutcome::AlreadyExists
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let history = s.client.history("o1").await.unwrap();
    assert_eq!(
        history
            .iter()
            .filter(|e| matches!(e, Event::OrchestrationStarted { .. }))
            .count(),
        1
    );
    s.runtime.shutdown(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_compensates_when_payment_is_refused() {
    async fn saga(ctx: OrchestrationContext, amount: String) -> Result<String, Failure> {
        let reservation = ctx.schedule_activity("reserve", amount.clone()).await?;
        match ctx.schedule_activity("pay", amount).await {
            Ok(receipt) => Ok(format!("{reservation} {receipt}")),
            Err(refused) => {
                ctx.schedule_activity("release", reservation).await?;
                ctx.set_custom_status("compensated");
                Err(Failure::new("payment_refused", refused.message))
            }
        }
    }
    let released = Arc::new(AtomicU32::new(0));
    let released_count = released.clone();
    let s = setup(
        Registry::new()
            .orchestration("saga", saga)
            .activity(
                "reserve",
                |_ctx: ActivityContext, amount: String| async move { Ok(format!("res-{amount}")) },
            )
            .activity("pay", |_ctx: ActivityContext, amount: String| async move {
                let amount: u32 = amount.parse().unwrap();
                if amount > 100 {
                    Err(Failure::new("card_declined", "limit exceeded"))
                } else {
                    Ok("paid".into())
                }
            })
            .activity(
                "release",
                move |_ctx: ActivityContext, _reservation: String| {
                    let released = released_count.clone();
                    async move {
                        released.fetch_add(1, Ordering::SeqCst);
                        Ok("released".to_string())
                    }
                },
            ),
    );
    s.client.start("saga", "ok", "50").await.unwrap();
    s.client.start("saga", "refused", "500").await.unwrap();
    assert_eq!(completed(&s.client, "ok").await, "res-50 paid");
    let info = s.client.wait_for_completion("refused", WAIT).await.unwrap();
    assert_eq!(info.status, InstanceStatus::Failed);
    assert_eq!(
        info.failure.unwrap(),
        Failure::new("payment_refused", "limit exceeded")
    );
    assert_eq!(info.custom_status.as_deref(), Some("compensated"));
    assert_eq!(released.load(Ordering::SeqCst), 1);
    s.runtime.shutdown(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_as_new_for_1000_generations() {
    async fn counter(ctx: OrchestrationContext, input: String) -> Result<String, Failure> {
        let generation: u32 = input.parse().unwrap();
        if generation == 1000 {
            let carried = ctx.wait_for_event("final").await;
            return Ok(format!("{generation} {carried} {}", ctx.execution_id()));
        }
        ctx.continue_as_new((generation + 1).to_string()).await
    }
    let s = setup(Registry::new().orchestration("counter", counter));
    s.client.start("counter", "g", "1").await.unwrap();
    // Raised while some generation runs: carried across continue-as-new until consumed.
    s.client.raise_event("g", "final", "kept").await.unwrap();
    assert_eq!(completed(&s.client, "g").await, "1000 kept 1000");
    // History restarts each generation: the last one holds at most a start turn (with the
    // carried event) and an event turn, not 1000 generations of events.
    let last = s.client.history("g").await.unwrap();
    assert!(last.len() <= 5, "{last:?}");
    // The first generation: its start turn (with the event, if it had arrived) and the end.
    let first = s.client.execution_history("g", 1).await.unwrap();
    assert!(
        matches!(first.last(), Some(Event::ContinuedAsNew { .. })),
        "{first:?}"
    );
    assert!(first.len() <= 4, "{first:?}");
    s.runtime.shutdown(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_cascades_to_sub_orchestrations() {
    async fn parent(ctx: OrchestrationContext, _input: String) -> Result<String, Failure> {
        let children: Vec<_> = (0..3)
            .map(|i| ctx.call_sub_orchestration("child", i.to_string()))
            .collect();
        ctx.start_orchestration("child", "detached-child", "d");
        let results = ctx.join(children).await;
        Ok(format!("{}", results.len()))
    }
    async fn child(ctx: OrchestrationContext, _input: String) -> Result<String, Failure> {
        Ok(ctx.wait_for_event("never").await)
    }
    let s = setup(
        Registry::new()
            .orchestration("parent", parent)
            .orchestration("child", child),
    );
    s.client.start("parent", "p", "").await.unwrap();
    // Wait until the children run.
    let child_ids: Vec<String> = (0..3).map(|i| format!("p::1::{i}")).collect();
    for id in &child_ids {
        wait_status(&s.client, id, InstanceStatus::Running).await;
    }
    s.client.cancel("p", "user asked").await.unwrap();
    let info = s.client.wait_for_completion("p", WAIT).await.unwrap();
    assert_eq!(info.status, InstanceStatus::Cancelled);
    assert_eq!(info.failure.unwrap().code, codes::CANCELLED);
    for id in &child_ids {
        let info = s.client.wait_for_completion(id, WAIT).await.unwrap();
        assert_eq!(info.status, InstanceStatus::Cancelled, "{id}");
    }
    // The detached child is not cancelled with its starter.
    let detached = s.client.status("detached-child").await.unwrap().unwrap();
    assert!(!detached.status.is_terminal());
    s.runtime.shutdown(WAIT).await;
}

async fn wait_status(client: &Client, id: &str, status: InstanceStatus) {
    let deadline = Instant::now() + WAIT;
    loop {
        if client
            .status(id)
            .await
            .unwrap()
            .is_some_and(|info| info.status == status)
        {
            return;
        }
        assert!(Instant::now() < deadline, "{id} never reached {status:?}");
        // Test-only observation of another component's progress; the runtime itself never polls.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_orchestration_results_and_typed_apis() {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Order {
        items: Vec<u32>,
    }
    async fn order(ctx: OrchestrationContext, order: Order) -> Result<u32, Failure> {
        let lines: Vec<_> = order
            .items
            .iter()
            .map(|n| ctx.call_sub_orchestration("line", n.to_string()))
            .collect();
        let mut total = 0;
        for line in ctx.join(lines).await {
            total += line?.parse::<u32>().unwrap();
        }
        let doubled: u32 = ctx.schedule_activity_typed("double", &total, None).await?;
        Ok(doubled)
    }
    async fn line(ctx: OrchestrationContext, n: String) -> Result<String, Failure> {
        ctx.schedule_activity("echo", n.clone()).await?;
        Ok(n)
    }
    let s = setup(
        Registry::new()
            .orchestration_typed("order", order)
            .orchestration("line", line)
            .activity("echo", echo)
            .activity_typed("double", |_ctx: ActivityContext, n: u32| async move {
                Ok(n * 2)
            }),
    );
    s.client
        .start_typed(
            "order",
            "o",
            &Order {
                items: vec![1, 2, 3],
            },
        )
        .await
        .unwrap();
    let total: u32 = s.client.wait_for_output("o", WAIT).await.unwrap();
    assert_eq!(total, 12);
    s.runtime.shutdown(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_with_backoff_and_attempt_timeouts() {
    async fn flaky(ctx: OrchestrationContext, _input: String) -> Result<String, Failure> {
        let policy = RetryPolicy::attempts(4).with_backoff(Backoff::Exponential {
            initial_ms: 20,
            multiplier: 2.0,
            max_ms: 1000,
        });
        let ok = ctx
            .schedule_activity_with_retry("flaky", "", policy.clone())
            .await?;
        let slow = RetryPolicy::attempts(2)
            .with_backoff(Backoff::Fixed { delay_ms: 10 })
            .with_attempt_timeout(Duration::from_millis(50));
        let timed_out = ctx
            .schedule_activity_with_retry("slow", "", slow)
            .await
            .unwrap_err();
        let exhausted = ctx
            .schedule_activity_with_retry("always_fails", "", RetryPolicy::attempts(3))
            .await
            .unwrap_err();
        let panicked = ctx.schedule_activity("panics", "").await.unwrap_err();
        Ok(format!(
            "{ok} {} {} {}",
            timed_out.code, exhausted.message, panicked.code
        ))
    }
    let attempts = Arc::new(AtomicU32::new(0));
    let seen = attempts.clone();
    let s = setup(
        Registry::new()
            .orchestration("flaky", flaky)
            .activity("flaky", move |ctx: ActivityContext, _input: String| {
                let seen = seen.clone();
                async move {
                    seen.fetch_add(1, Ordering::SeqCst);
                    if ctx.attempt() < 3 {
                        Err(Failure::new("transient", "try again"))
                    } else {
                        Ok(format!("attempt {}", ctx.attempt()))
                    }
                }
            })
            .activity("slow", |_ctx: ActivityContext, _input: String| async move {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok("never".to_string())
            })
            .activity(
                "panics",
                |_ctx: ActivityContext, _input: String| async move {
                    if true {
                        panic!("activity code panicked");
                    }
                    Ok(String::new())
                },
            )
            .activity(
                "always_fails",
                |ctx: ActivityContext, _input: String| async move {
                    Err(Failure::new(
                        "broken",
                        format!("failed at attempt {}", ctx.attempt()),
                    ))
                },
            ),
    );
    let started = Instant::now();
    s.client.start("flaky", "r", "").await.unwrap();
    assert_eq!(
        completed(&s.client, "r").await,
        "attempt 3 activity_timed_out failed at attempt 3 activity_panicked"
    );
    // Backoffs before attempts 2 and 3 were 20 ms and 40 ms.
    assert!(started.elapsed() >= Duration::from_millis(60));
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    s.runtime.shutdown(WAIT).await;
}

/// A non-retryable failure ends the activity at once, whatever attempts its retry policy has
/// left; its details reach the orchestration and the instance's failure intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_retryable_failure_is_not_retried() {
    async fn charge(ctx: OrchestrationContext, _input: String) -> Result<String, Failure> {
        ctx.schedule_activity_with_retry("charge", "", RetryPolicy::attempts(5))
            .await
    }
    let attempts = Arc::new(AtomicU32::new(0));
    let seen = attempts.clone();
    let s = setup(Registry::new().orchestration("charge", charge).activity(
        "charge",
        move |_ctx: ActivityContext, _input: String| {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                Err(
                    Failure::non_retryable("card_declined", "insufficient funds")
                        .with_details(&serde_json::json!({"decline_code": "51"})),
                )
            }
        },
    ));
    s.client.start("charge", "c", "").await.unwrap();
    let info = s.client.wait_for_completion("c", WAIT).await.unwrap();
    assert_eq!(info.status, InstanceStatus::Failed, "{info:?}");
    let failure = info.failure.unwrap();
    assert_eq!(failure.code, "card_declined");
    assert!(failure.non_retryable);
    let details: serde_json::Value = failure.details_as().unwrap().unwrap();
    assert_eq!(details["decline_code"], "51");
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "no retry");
    s.runtime.shutdown(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_status_guid_and_replay_safe_values() {
    async fn values(ctx: OrchestrationContext, _input: String) -> Result<String, Failure> {
        let guid = ctx.new_guid();
        ctx.set_custom_status("waiting");
        ctx.log_info("waiting for the go event");
        let _ = ctx.wait_for_event("go").await;
        ctx.set_custom_status("done");
        Ok(guid)
    }
    let s = setup(Registry::new().orchestration("values", values));
    s.client.start("values", "v", "").await.unwrap();
    wait_status(&s.client, "v", InstanceStatus::Running).await;
    let status = s.client.status("v").await.unwrap().unwrap();
    assert_eq!(status.custom_status.as_deref(), Some("waiting"));
    s.client.raise_event("v", "go", "").await.unwrap();
    let guid = completed(&s.client, "v").await;
    assert_eq!(guid.len(), 36);
    assert_eq!(
        s.client
            .status("v")
            .await
            .unwrap()
            .unwrap()
            .custom_status
            .as_deref(),
        Some("done")
    );
    s.runtime.shutdown(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_code_is_detected_as_nondeterminism_on_replay() {
    async fn v1(ctx: OrchestrationContext, _input: String) -> Result<String, Failure> {
        ctx.schedule_activity("echo", "a").await?;
        ctx.wait_for_event("continue").await;
        ctx.schedule_activity("echo", "b").await
    }
    async fn v2(ctx: OrchestrationContext, _input: String) -> Result<String, Failure> {
        ctx.schedule_activity("charge", "a").await?;
        ctx.wait_for_event("continue").await;
        ctx.schedule_activity("echo", "b").await
    }
    let temp = TempSqlite::new();
    let store = open(&temp);
    let runtime = Runtime::start(
        store.clone(),
        Registry::new()
            .orchestration("flow", v1)
            .activity("echo", echo),
        RuntimeOptions::default(),
    )
    .expect("the runtime starts");
    let client = runtime.client();
    client.start("flow", "n", "").await.unwrap();
    // Wait until the first activity's result is in history.
    let deadline = Instant::now() + WAIT;
    while !client
        .history("n")
        .await
        .unwrap()
        .iter()
        .any(|e| matches!(e, Event::ActivityCompleted { .. }))
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    runtime.shutdown(WAIT).await;

    // Deploy v2 (renamed activity) and let the instance replay.
    let runtime = Runtime::start(
        store.clone() as Arc<dyn Store>,
        Registry::new()
            .orchestration("flow", v2)
            .activity("echo", echo)
            .activity("charge", echo),
        RuntimeOptions::default(),
    )
    .expect("the runtime starts");
    let client = runtime.client();
    client.raise_event("n", "continue", "").await.unwrap();
    let info = client.wait_for_completion("n", WAIT).await.unwrap();
    assert_eq!(info.status, InstanceStatus::Failed);
    let failure = info.failure.unwrap();
    assert_eq!(failure.code, codes::NONDETERMINISM_COMMAND_MISMATCH);
    assert!(
        failure.message.contains("'echo'") && failure.message.contains("'charge'"),
        "{failure}"
    );
    runtime.shutdown(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_woken_not_polled_and_writes_are_grouped() {
    async fn quick(ctx: OrchestrationContext, input: String) -> Result<String, Failure> {
        ctx.schedule_activity("echo", input).await
    }
    let s = setup(
        Registry::new()
            .orchestration("quick", quick)
            .activity("echo", echo),
    );
    // Warm up, then time one instance: far below the 1 s fallback poll interval.
    s.client.start("quick", "warm", "").await.unwrap();
    completed(&s.client, "warm").await;
    let started = Instant::now();
    s.client.start("quick", "q", "").await.unwrap();
    completed(&s.client, "q").await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "took {:?}",
        started.elapsed()
    );

    // 200 concurrent instances: the writer commits many requests per transaction.
    let before = (
        s.store.writer_stats().transactions.load(Ordering::Relaxed),
        s.store.writer_stats().requests.load(Ordering::Relaxed),
    );
    let starts = (0..200).map(|i| {
        let client = s.client.clone();
        async move {
            client
                .start("quick", &format!("many-{i}"), "")
                .await
                .unwrap()
        }
    });
    futures_join_all(starts).await;
    for i in 0..200 {
        completed(&s.client, &format!("many-{i}")).await;
    }
    let transactions = s.store.writer_stats().transactions.load(Ordering::Relaxed) - before.0;
    let requests = s.store.writer_stats().requests.load(Ordering::Relaxed) - before.1;
    assert!(
        requests > transactions,
        "group commit: {requests} requests in {transactions} transactions"
    );
    s.runtime.shutdown(WAIT).await;
}

async fn futures_join_all<
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<T> {
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}
