//! Operator actions through the client, on a running runtime: terminating an instance that has
//! a pending timer, activities in flight and a child; suspending one while events arrive, then
//! resuming it. On SQLite, and on PostgreSQL when a cluster can be started.

use sluice_runtime::{
    ActivityContext, ChildPolicy, Client, Event, Failure, InstanceStatus, OrchestrationContext,
    Registry, Runtime, RuntimeOptions, codes,
};
use sluice_store::Store;
use sluice_store_postgres::{PostgresStore, PostgresStoreOptions};
use sluice_store_sqlite::{Location, SqliteStore, SqliteStoreOptions};
use sluice_testkit::{TempSqlite, pg_or_skip};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

const WAIT: Duration = Duration::from_secs(60);

struct Gates {
    started: AtomicU32,
    release: Notify,
}

fn registry(gates: Arc<Gates>) -> Registry {
    Registry::new()
        .orchestration(
            "order",
            |ctx: OrchestrationContext, input: String| async move {
                let timer = ctx.create_timer(Duration::from_secs(3_600)).into_any();
                let work = ctx.schedule_activity("block", input.clone()).into_any();
                let child = ctx.call_sub_orchestration("waiter", input).into_any();
                let all = ctx.join(vec![timer, work, child]).await;
                Ok::<_, Failure>(format!("{} results", all.len()))
            },
        )
        .orchestration(
            "waiter",
            |ctx: OrchestrationContext, _input: String| async move {
                Ok::<_, Failure>(ctx.wait_for_event("never").await)
            },
        )
        .orchestration(
            "pair",
            |ctx: OrchestrationContext, _input: String| async move {
                let a = ctx.wait_for_event("a").await;
                let b = ctx.wait_for_event("b").await;
                Ok::<_, Failure>(format!("{a}+{b}"))
            },
        )
        .activity("block", move |_ctx: ActivityContext, input: String| {
            let gates = gates.clone();
            async move {
                gates.started.fetch_add(1, Ordering::SeqCst);
                gates.release.notified().await;
                Ok(input)
            }
        })
}

fn options() -> RuntimeOptions {
    RuntimeOptions {
        orchestration_concurrency: 4,
        activity_concurrency: 4,
        poll_interval: Duration::from_millis(50),
        ..RuntimeOptions::default()
    }
}

async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done().await {
        assert!(Instant::now() < deadline, "waited too long for {what}");
        // Test-only observation of another component's progress.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn status(client: &Client, id: &str) -> InstanceStatus {
    client.status(id).await.unwrap().expect("exists").status
}

async fn terminate_with_timer_activity_and_child(store: Arc<dyn Store>) {
    let gates = Arc::new(Gates {
        started: AtomicU32::new(0),
        release: Notify::new(),
    });
    let runtime = Runtime::start(store.clone(), registry(gates.clone()), options())
        .expect("the runtime starts");
    let client = runtime.client();
    client.start("order", "o-1", "x").await.unwrap();
    until("the activity and the child to start", async || {
        gates.started.load(Ordering::SeqCst) == 1
            && client.status("o-1::1::2").await.unwrap().map(|i| i.status)
                == Some(InstanceStatus::Running)
    })
    .await;

    let terminated = client
        .terminate(
            "o-1",
            "customer asked",
            "ops@example",
            ChildPolicy::Terminate,
        )
        .await
        .unwrap();
    assert_eq!(terminated, ["o-1", "o-1::1::2"]);
    let info = client.wait_for_completion("o-1", WAIT).await.unwrap();
    assert_eq!(info.status, InstanceStatus::Terminated);
    assert_eq!(info.failure.unwrap().code, codes::TERMINATED);
    let child = client.wait_for_completion("o-1::1::2", WAIT).await.unwrap();
    assert_eq!(child.status, InstanceStatus::Terminated);
    let history = client.history("o-1").await.unwrap();
    assert_eq!(
        history.last(),
        Some(&Event::Terminated {
            reason: "customer asked".into(),
            requested_by: "ops@example".into(),
        })
    );

    // The activity in flight finishes afterwards: its result changes nothing.
    gates.release.notify_waiters();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(client.history("o-1").await.unwrap(), history);
    assert_eq!(status(&client, "o-1").await, InstanceStatus::Terminated);
    let error = client
        .terminate("o-1", "again", "ops", ChildPolicy::Terminate)
        .await
        .unwrap_err();
    assert_eq!(error.code(), "store.instance_finished");
    runtime.shutdown(Duration::from_secs(5)).await;
}

async fn suspend_while_events_arrive(store: Arc<dyn Store>) {
    let gates = Arc::new(Gates {
        started: AtomicU32::new(0),
        release: Notify::new(),
    });
    let runtime =
        Runtime::start(store.clone(), registry(gates), options()).expect("the runtime starts");
    let client = runtime.client();
    client.start("pair", "p-1", "").await.unwrap();
    until("p-1 to run", async || {
        status(&client, "p-1").await == InstanceStatus::Running
    })
    .await;
    assert!(client.suspend("p-1", "checking", "ops").await.unwrap());
    client.raise_event("p-1", "a", "1").await.unwrap();
    client.raise_event("p-1", "b", "2").await.unwrap();
    // Nothing runs while suspended: the events wait in its inbox, not in its history.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(status(&client, "p-1").await, InstanceStatus::Suspended);
    let history = client.history("p-1").await.unwrap();
    assert!(
        !history
            .iter()
            .any(|event| matches!(event, Event::EventRaised { .. })),
        "{history:?}"
    );
    assert!(client.resume("p-1", "checked", "ops").await.unwrap());
    let info = client.wait_for_completion("p-1", WAIT).await.unwrap();
    assert_eq!(info.status, InstanceStatus::Completed);
    assert_eq!(info.output.as_deref(), Some("1+2"));
    let kinds: Vec<&str> = client
        .history("p-1")
        .await
        .unwrap()
        .iter()
        .map(Event::kind)
        .filter(|kind| ["suspended", "resumed", "event_raised"].contains(kind))
        .collect();
    assert_eq!(
        kinds,
        ["suspended", "resumed", "event_raised", "event_raised"]
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}

fn sqlite(temp: &TempSqlite) -> Arc<dyn Store> {
    let options = SqliteStoreOptions::new(Location::File(temp.path().to_path_buf()));
    Arc::new(SqliteStore::open(options).expect("open store"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_terminate_with_a_timer_activities_and_a_child() {
    let temp = TempSqlite::new();
    terminate_with_timer_activity_and_child(sqlite(&temp)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_suspend_while_events_arrive_then_resume() {
    let temp = TempSqlite::new();
    suspend_while_events_arrive(sqlite(&temp)).await;
}

async fn postgres(cluster: &sluice_testkit::PgCluster) -> Arc<dyn Store> {
    let options = PostgresStoreOptions::new(&cluster.url()).unwrap();
    Arc::new(PostgresStore::connect(options).await.expect("connect"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_terminate_with_a_timer_activities_and_a_child() {
    let Some(cluster) = pg_or_skip("runtime lifecycle (terminate)") else {
        return;
    };
    terminate_with_timer_activity_and_child(postgres(&cluster).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_suspend_while_events_arrive_then_resume() {
    let Some(cluster) = pg_or_skip("runtime lifecycle (suspend)") else {
        return;
    };
    suspend_while_events_arrive(postgres(&cluster).await).await;
}

/// A message this build cannot decode (a newer build's, after a rollback) quarantines its
/// instance; once the row is fixed, a retry puts it back in service and it completes. Another
/// is discarded and fails with `discarded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_instance_is_retried_after_the_fix_or_discarded() {
    let temp = TempSqlite::new();
    let store = sqlite(&temp);
    let registry = Registry::new().orchestration(
        "waits",
        |ctx: OrchestrationContext, _input: String| async move {
            Ok::<_, Failure>(ctx.wait_for_event("go").await)
        },
    );
    let options = RuntimeOptions {
        turn_deliveries_max: 3,
        turn_retry_delay_min: Duration::from_millis(10),
        turn_retry_delay_max: Duration::from_millis(20),
        ..options()
    };
    let runtime = Runtime::start(store, registry, options).expect("the runtime starts");
    let client = runtime.client();
    let raw = rusqlite::Connection::open(temp.path()).unwrap();
    raw.busy_timeout(Duration::from_secs(10)).unwrap();
    for id in ["f-1", "f-2"] {
        client.start("waits", id, "").await.unwrap();
        until("it runs", async || {
            status(&client, id).await == InstanceStatus::Running
        })
        .await;
        raw.execute(
            "INSERT INTO inbox (instance_id, visible_at_ms, message)
             VALUES (?1, 0, '{\"type\":\"event\",\"name\":\"go\",\"data\":\"1\",\"priority\":9}')",
            [id],
        )
        .unwrap();
        client.raise_event(id, "wake", "").await.unwrap();
    }
    for id in ["f-1", "f-2"] {
        until("quarantine", async || {
            status(&client, id).await == InstanceStatus::Quarantined
        })
        .await;
    }
    raw.execute(
        "UPDATE inbox SET message = '{\"type\":\"event\",\"name\":\"go\",\"data\":\"fixed\"}'
         WHERE instance_id = 'f-1' AND message LIKE '%priority%'",
        [],
    )
    .unwrap();
    assert!(client.retry("f-1", "row fixed", "ops").await.unwrap());
    let info = client.wait_for_completion("f-1", WAIT).await.unwrap();
    assert_eq!(info.status, InstanceStatus::Completed);
    assert_eq!(info.output.as_deref(), Some("fixed"));
    client
        .discard("f-2", "its input cannot be processed", "ops")
        .await
        .unwrap();
    let info = client.wait_for_completion("f-2", WAIT).await.unwrap();
    assert_eq!(info.status, InstanceStatus::Failed);
    assert_eq!(info.failure.unwrap().code, codes::DISCARDED);
    runtime.shutdown(Duration::from_secs(5)).await;
}

fn counting() -> Registry {
    Registry::new()
        .orchestration(
            "count_to",
            |ctx: OrchestrationContext, input: String| async move {
                let n: u32 = input.parse().unwrap_or(0);
                for i in 0..n {
                    ctx.schedule_activity("echo", i.to_string()).await?;
                }
                Ok::<_, Failure>(n.to_string())
            },
        )
        .orchestration(
            "count_in_rounds",
            |ctx: OrchestrationContext, input: String| async move {
                // "done/total": ten activities per execution, then continue as new.
                let (done, total) = input.split_once('/').unwrap_or(("0", "0"));
                let (done, total): (u32, u32) =
                    (done.parse().unwrap_or(0), total.parse().unwrap_or(0));
                let round_end = (done + 10).min(total);
                for i in done..round_end {
                    ctx.schedule_activity("echo", i.to_string()).await?;
                }
                if round_end < total {
                    return ctx.continue_as_new(format!("{round_end}/{total}")).await;
                }
                Ok::<_, Failure>(total.to_string())
            },
        )
        .orchestration(
            "waits",
            |ctx: OrchestrationContext, _input: String| async move {
                Ok::<_, Failure>(ctx.wait_for_event("go").await)
            },
        )
        .activity("echo", |_ctx: ActivityContext, input: String| async move {
            Ok(input)
        })
}

/// An execution whose history passes `history_events_max` fails with `history_too_large`
/// (and a message that says to continue as new) instead of growing on; one that continues as
/// new runs as long as it likes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_past_its_limit_fails_the_instance_with_a_hint() {
    let temp = TempSqlite::new();
    let store = sqlite(&temp);
    let options = RuntimeOptions {
        history_events_warn: 20,
        history_events_max: 40,
        ..options()
    };
    let runtime = Runtime::start(store.clone(), counting(), options).expect("the runtime starts");
    let client = runtime.client();
    client.start("count_to", "long", "100").await.unwrap();
    client
        .start("count_in_rounds", "rolling", "0/100")
        .await
        .unwrap();
    let info = client.wait_for_completion("long", WAIT).await.unwrap();
    assert_eq!(info.status, InstanceStatus::Failed);
    let failure = info.failure.unwrap();
    assert_eq!(failure.code, codes::HISTORY_TOO_LARGE);
    assert!(failure.message.contains("continue as new"), "{failure}");
    let history = store
        .read_history("long", info.execution_id, 0)
        .await
        .unwrap();
    assert!(history.len() <= 44, "{} events", history.len());
    assert!(matches!(
        history.last(),
        Some(Event::OrchestrationFailed { .. })
    ));
    // The failing turn started no work: every scheduled activity has its result.
    let scheduled = history
        .iter()
        .filter(|event| matches!(event, Event::ActivityScheduled { .. }))
        .count();
    let completed = history
        .iter()
        .filter(|event| matches!(event, Event::ActivityCompleted { .. }))
        .count();
    assert_eq!(scheduled, completed);
    let info = client.wait_for_completion("rolling", WAIT).await.unwrap();
    assert_eq!(info.status, InstanceStatus::Completed, "{:?}", info.failure);
    assert_eq!(info.output.as_deref(), Some("100"));
    runtime.shutdown(Duration::from_secs(5)).await;
}

/// A runtime with a retention policy purges finished instances once they are older than its
/// age, and leaves the unfinished ones.
async fn retention_purges_what_finished_long_enough_ago(store: Arc<dyn Store>) {
    let options = RuntimeOptions {
        retention: Some(sluice_runtime::RetentionPolicy {
            sweep_interval: Duration::from_millis(50),
            batch_instances_max: 2,
            ..sluice_runtime::RetentionPolicy::older_than(Duration::from_millis(300))
        }),
        ..options()
    };
    let runtime = Runtime::start(store.clone(), counting(), options).expect("the runtime starts");
    let client = runtime.client();
    client.start("waits", "stays", "").await.unwrap();
    for i in 0..5 {
        let id = format!("done-{i}");
        client.start("count_to", &id, "1").await.unwrap();
        let info = client.wait_for_completion(&id, WAIT).await.unwrap();
        assert_eq!(info.status, InstanceStatus::Completed);
    }
    until("the finished instances are purged", async || {
        let mut left = 0;
        for i in 0..5 {
            left += usize::from(client.status(&format!("done-{i}")).await.unwrap().is_some());
        }
        left == 0
    })
    .await;
    assert_eq!(status(&client, "stays").await, InstanceStatus::Running);
    assert!(store.executions("done-0").await.unwrap().is_empty());
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_retention_purges_what_finished_long_enough_ago() {
    let temp = TempSqlite::new();
    retention_purges_what_finished_long_enough_ago(sqlite(&temp)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_retention_purges_what_finished_long_enough_ago() {
    let Some(cluster) = pg_or_skip("runtime retention") else {
        return;
    };
    retention_purges_what_finished_long_enough_ago(postgres(&cluster).await).await;
}

/// An instance that failed restarts from its input once the cause is fixed, under its id as a
/// new execution (the first one's history records the restart) or as a new instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_instance_restarts_from_its_input() {
    let temp = TempSqlite::new();
    let store = sqlite(&temp);
    let fixed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gate = fixed.clone();
    let registry = Registry::new()
        .orchestration(
            "checked",
            |ctx: OrchestrationContext, input: String| async move {
                ctx.schedule_activity("check", input).await
            },
        )
        .activity("check", move |_ctx: ActivityContext, input: String| {
            let fixed = gate.clone();
            async move {
                if fixed.load(Ordering::SeqCst) {
                    Ok(format!("{input} ok"))
                } else {
                    Err(Failure::new("broken", "the checker is broken"))
                }
            }
        });
    let runtime = Runtime::start(store.clone(), registry, options()).expect("the runtime starts");
    let client = runtime.client();
    client.start("checked", "c-1", "order 7").await.unwrap();
    let info = client.wait_for_completion("c-1", WAIT).await.unwrap();
    assert_eq!(info.status, InstanceStatus::Failed);
    fixed.store(true, Ordering::SeqCst);
    let (id, execution) = client
        .restart("c-1", "checker fixed", "ops", None, None)
        .await
        .unwrap();
    assert_eq!((id.as_str(), execution), ("c-1", 2));
    let info = client.wait_for_completion("c-1", WAIT).await.unwrap();
    assert_eq!(info.status, InstanceStatus::Completed, "{:?}", info.failure);
    assert_eq!(info.output.as_deref(), Some("order 7 ok"));
    assert_eq!(info.execution_id, 2);
    let first = store.read_history("c-1", 1, 0).await.unwrap();
    assert!(matches!(first.last(), Some(Event::Restarted { .. })));
    let (copy, _) = client
        .restart("c-1", "once more", "ops", Some("c-1-copy"), Some("order 8"))
        .await
        .unwrap();
    let info = client.wait_for_completion(&copy, WAIT).await.unwrap();
    assert_eq!(info.output.as_deref(), Some("order 8 ok"));
    runtime.shutdown(Duration::from_secs(5)).await;
}

/// A failed activity runs again after a rewind while the activity before it keeps its result;
/// a parent whose child failed is rewound with the child.
async fn rewind_runs_the_failure_again_and_keeps_the_rest(store: Arc<dyn Store>) {
    let fixed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let firsts = Arc::new(AtomicU32::new(0));
    let (gate, count) = (fixed.clone(), firsts.clone());
    let registry = Registry::new()
        .orchestration(
            "two_steps",
            |ctx: OrchestrationContext, input: String| async move {
                let first = ctx.schedule_activity("first", input).await?;
                ctx.schedule_activity("flaky", first).await
            },
        )
        .orchestration(
            "parent",
            |ctx: OrchestrationContext, input: String| async move {
                let output = ctx.call_sub_orchestration("two_steps", input).await?;
                Ok::<_, Failure>(format!("parent got {output}"))
            },
        )
        .activity("first", move |_ctx: ActivityContext, input: String| {
            let count = count.clone();
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                Ok(format!("{input}+first"))
            }
        })
        .activity("flaky", move |_ctx: ActivityContext, input: String| {
            let fixed = gate.clone();
            async move {
                if fixed.load(Ordering::SeqCst) {
                    Ok(format!("{input}+flaky"))
                } else {
                    Err(Failure::new("broken", "flaky is broken"))
                }
            }
        });
    let runtime = Runtime::start(store.clone(), registry, options()).expect("the runtime starts");
    let client = runtime.client();
    client.start("two_steps", "rw-1", "x").await.unwrap();
    client.start("parent", "rw-2", "y").await.unwrap();
    for id in ["rw-1", "rw-2"] {
        let info = client.wait_for_completion(id, WAIT).await.unwrap();
        assert_eq!(info.status, InstanceStatus::Failed, "{id}");
    }
    assert_eq!(firsts.load(Ordering::SeqCst), 2);
    let child = store
        .list_instances(&sluice_store::InstanceQuery {
            filter: sluice_store::InstanceFilter {
                parent: Some("rw-2".into()),
                ..Default::default()
            },
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .instances[0]
        .instance_id
        .clone();
    fixed.store(true, Ordering::SeqCst);
    let (execution, ids) = client.rewind("rw-1", "flaky fixed", "ops").await.unwrap();
    assert_eq!((execution, ids), (2, vec!["rw-1".to_string()]));
    let info = client.wait_for_completion("rw-1", WAIT).await.unwrap();
    assert_eq!(info.status, InstanceStatus::Completed, "{:?}", info.failure);
    assert_eq!(info.output.as_deref(), Some("x+first+flaky"));
    let (_, ids) = client.rewind("rw-2", "flaky fixed", "ops").await.unwrap();
    assert_eq!(ids, ["rw-2".to_string(), child]);
    let info = client.wait_for_completion("rw-2", WAIT).await.unwrap();
    assert_eq!(info.status, InstanceStatus::Completed, "{:?}", info.failure);
    assert_eq!(info.output.as_deref(), Some("parent got y+first+flaky"));
    assert_eq!(
        firsts.load(Ordering::SeqCst),
        2,
        "no first activity ran again"
    );
    // The failed execution stays as it was, its rewind recorded after its end.
    let failed = store.read_history("rw-1", 1, 0).await.unwrap();
    assert!(matches!(
        failed.last(),
        Some(Event::Rewound {
            from_execution: 1,
            ..
        })
    ));
    assert!(matches!(
        failed[failed.len() - 2],
        Event::OrchestrationFailed { .. }
    ));
    let refused = client
        .rewind("rw-1", "again", "ops")
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("only a failed instance"), "{refused}");
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rewind_runs_the_failure_again_and_keeps_the_rest() {
    let temp = TempSqlite::new();
    rewind_runs_the_failure_again_and_keeps_the_rest(sqlite(&temp)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rewind_runs_the_failure_again_and_keeps_the_rest() {
    let Some(cluster) = pg_or_skip("runtime rewind") else {
        return;
    };
    rewind_runs_the_failure_again_and_keeps_the_rest(postgres(&cluster).await).await;
}

/// A cancellation records who asked, in the cancelled instance's history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_records_who_asked() {
    let temp = TempSqlite::new();
    let store = sqlite(&temp);
    let runtime = Runtime::start(store.clone(), counting(), options()).expect("the runtime starts");
    let client = runtime.client();
    client.start("waits", "to-cancel", "").await.unwrap();
    until("it runs", async || {
        status(&client, "to-cancel").await == InstanceStatus::Running
    })
    .await;
    client
        .cancel_as("to-cancel", "order withdrawn", "support desk")
        .await
        .unwrap();
    let info = client.wait_for_completion("to-cancel", WAIT).await.unwrap();
    assert_eq!(info.status, InstanceStatus::Cancelled);
    let history = store.read_history("to-cancel", 1, 0).await.unwrap();
    assert_eq!(
        history.last(),
        Some(&Event::Cancelled {
            reason: "order withdrawn".into(),
            requested_by: Some("support desk".into()),
        })
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}
