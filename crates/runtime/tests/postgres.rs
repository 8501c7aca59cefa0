//! The runtime on the PostgreSQL store: several runtimes (as separate processes would) share
//! one database; work started in one is picked up by another at once (LISTEN/NOTIFY), and
//! everything completes exactly once. Skipped without PostgreSQL (CI requires it).

use sluice_runtime::{
    ActivityContext, Client, Event, Failure, InstanceStatus, OrchestrationContext, Registry,
    Runtime, RuntimeOptions,
};
use sluice_store_postgres::{PostgresStore, PostgresStoreOptions};
use sluice_testkit::pg_or_skip;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

async fn store(url: &str) -> Arc<PostgresStore> {
    let options = PostgresStoreOptions::new(url).expect("options");
    Arc::new(PostgresStore::connect(options).await.expect("connect"))
}

async fn order(ctx: OrchestrationContext, input: String) -> Result<String, Failure> {
    let calls = (0..3)
        .map(|i| ctx.schedule_activity("echo", format!("{input}.{i}")))
        .collect();
    let mut parts = Vec::new();
    for result in ctx.join(calls).await {
        parts.push(result?);
    }
    ctx.create_timer(Duration::from_millis(20)).await;
    let approval = ctx.wait_for_event("approve").await;
    Ok(format!("{}+{approval}", parts.join(",")))
}

async fn echo(_ctx: ActivityContext, input: String) -> Result<String, Failure> {
    Ok(input.to_uppercase())
}

fn registry() -> Registry {
    Registry::new()
        .orchestration("order", order)
        .activity("echo", echo)
}

/// The fallback poll is 30 s here, so only a notification explains a quick pickup and a quick
/// answer to a waiter in the other process.
fn slow_poll() -> RuntimeOptions {
    RuntimeOptions {
        orchestration_concurrency: 4,
        activity_concurrency: 8,
        poll_interval: Duration::from_secs(30),
        ..RuntimeOptions::default()
    }
}

async fn wait_listening(store: &PostgresStore) {
    let deadline = Instant::now() + WAIT;
    while !store.listening() {
        assert!(Instant::now() < deadline, "the listener never connected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_picks_up_work_at_once() {
    let Some(cluster) = pg_or_skip("runtime on postgres: cross-process pickup") else {
        return;
    };
    let url = cluster.url();
    let starter = store(&url).await;
    let worker = store(&url).await;
    wait_listening(&starter).await;
    wait_listening(&worker).await;
    let runtime = Runtime::start(worker, registry(), slow_poll()).expect("the runtime starts");
    // A client of its own store (another process): no runtime there.
    let client = Client::new(starter.clone(), Duration::from_secs(30));
    for round in 0..5 {
        let id = format!("o{round}");
        let started = Instant::now();
        client.start("order", &id, "x").await.unwrap();
        // Wait until the activities ran (the instance waits for its event).
        let deadline = Instant::now() + WAIT;
        loop {
            let history = client.history(&id).await.unwrap();
            if history
                .iter()
                .any(|e| matches!(e, Event::TimerFired { .. }))
            {
                break;
            }
            assert!(Instant::now() < deadline, "{id} never ran");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        client.raise_event(&id, "approve", "yes").await.unwrap();
        let info = client.wait_for_completion(&id, WAIT).await.unwrap();
        assert_eq!(info.status, InstanceStatus::Completed);
        assert_eq!(info.output.as_deref(), Some("X.0,X.1,X.2+yes"));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{id} took {:?}: notifications did not arrive (the fallback poll is 30 s)",
            started.elapsed()
        );
    }
    runtime.shutdown(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_runtimes_share_one_database_and_finish_everything_once() {
    let Some(cluster) = pg_or_skip("runtime on postgres: three runtimes") else {
        return;
    };
    let url = cluster.url();
    let mut runtimes = Vec::new();
    for _ in 0..3 {
        let options = RuntimeOptions {
            poll_interval: Duration::from_millis(200),
            ..slow_poll()
        };
        runtimes.push(
            Runtime::start(store(&url).await, registry(), options).expect("the runtime starts"),
        );
    }
    let client = runtimes[0].client();
    const INSTANCES: usize = 60;
    for i in 0..INSTANCES {
        client
            .start("order", &format!("i{i}"), format!("v{i}"))
            .await
            .unwrap();
    }
    for i in 0..INSTANCES {
        let id = format!("i{i}");
        // The event may arrive before the code waits for it: it is kept.
        client.raise_event(&id, "approve", "ok").await.unwrap();
    }
    for i in 0..INSTANCES {
        let id = format!("i{i}");
        let info = client.wait_for_completion(&id, WAIT).await.unwrap();
        assert_eq!(info.status, InstanceStatus::Completed, "{info:?}");
        assert_eq!(
            info.output.as_deref(),
            Some(format!("V{i}.0,V{i}.1,V{i}.2+ok").as_str())
        );
        // Each result recorded once, no gaps: every scheduled activity completed once.
        let history = client.history(&id).await.unwrap();
        let mut completions: HashMap<u64, usize> = HashMap::new();
        for event in &history {
            if let Event::ActivityCompleted { id, .. } = event {
                *completions.entry(*id).or_default() += 1;
            }
        }
        assert_eq!(completions.len(), 3, "{id}: {history:?}");
        assert!(completions.values().all(|n| *n == 1), "{id}: {history:?}");
    }
    for runtime in runtimes {
        runtime.shutdown(WAIT).await;
    }
}

/// Processes with different code share one database: each fetches only the orchestrations and
/// activities it registered, so an activity only one process hosts runs there, orchestrations
/// only another hosts run there, and nothing fails for want of code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_take_only_the_work_they_have_code_for() {
    let Some(cluster) = pg_or_skip("runtime postgres registered names") else {
        return;
    };
    async fn invoice(ctx: OrchestrationContext, input: String) -> Result<String, Failure> {
        let total = ctx.schedule_activity("price", input).await?;
        ctx.schedule_activity("render", total).await
    }
    async fn price(ctx: ActivityContext, input: String) -> Result<String, Failure> {
        Ok(format!("{input}=42@{}", ctx.instance_id()))
    }
    async fn render(_ctx: ActivityContext, input: String) -> Result<String, Failure> {
        Ok(format!("pdf({input})"))
    }
    let url = cluster.url();
    let (orchestrator_store, pricing_store) = (store(&url).await, store(&url).await);
    wait_listening(&orchestrator_store).await;
    wait_listening(&pricing_store).await;
    let quick = || RuntimeOptions {
        poll_interval: Duration::from_millis(50),
        // Would fail work that reached the wrong process; it must never get there.
        handler_wait_max: Duration::from_millis(1),
        ..RuntimeOptions::default()
    };
    // One process hosts the orchestration and rendering, the other only pricing.
    let orchestrator = Runtime::start(
        orchestrator_store,
        Registry::new()
            .orchestration("invoice", invoice)
            .activity("render", render),
        quick(),
    )
    .expect("the runtime starts");
    let pricing = Runtime::start(
        pricing_store.clone(),
        Registry::new().activity("price", price),
        quick(),
    )
    .expect("the runtime starts");
    let client = Client::new(pricing_store, Duration::from_millis(50));
    for i in 0..20 {
        client
            .start("invoice", &format!("inv-{i}"), format!("order{i}"))
            .await
            .unwrap();
    }
    for i in 0..20 {
        let id = format!("inv-{i}");
        let info = client.wait_for_completion(&id, WAIT).await.unwrap();
        assert_eq!(info.status, InstanceStatus::Completed, "{info:?}");
        assert_eq!(
            info.output.as_deref(),
            Some(format!("pdf(order{i}=42@{id})").as_str())
        );
    }
    orchestrator.shutdown(WAIT).await;
    pricing.shutdown(WAIT).await;
}

/// An activity scheduled on a task queue runs only in a process that serves that queue, even
/// where other processes have its code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activities_on_a_task_queue_run_only_where_it_is_served() {
    let Some(cluster) = pg_or_skip("runtime postgres task queues") else {
        return;
    };
    async fn render(ctx: OrchestrationContext, input: String) -> Result<String, Failure> {
        let frame = ctx
            .schedule_activity_on("gpu", "encode", input, None)
            .await?;
        let note = ctx.schedule_activity("encode", "note").await?;
        Ok(format!("{frame}+{note}"))
    }
    let registry = |host: &'static str| {
        Registry::new().orchestration("render", render).activity(
            "encode",
            move |_ctx: ActivityContext, input: String| async move {
                Ok::<_, Failure>(format!("{input}@{host}"))
            },
        )
    };
    let url = cluster.url();
    let (cpu_store, gpu_store) = (store(&url).await, store(&url).await);
    wait_listening(&cpu_store).await;
    wait_listening(&gpu_store).await;
    let options = |queues: &[&str]| RuntimeOptions {
        poll_interval: Duration::from_millis(50),
        task_queues: queues.iter().map(|q| q.to_string()).collect(),
        ..RuntimeOptions::default()
    };
    let cpu = Runtime::start(cpu_store.clone(), registry("cpu"), options(&[""]))
        .expect("the runtime starts");
    let gpu =
        Runtime::start(gpu_store, registry("gpu"), options(&["gpu"])).expect("the runtime starts");
    let client = Client::new(cpu_store, Duration::from_millis(50));
    for i in 0..10 {
        client
            .start("render", &format!("r{i}"), format!("f{i}"))
            .await
            .unwrap();
    }
    for i in 0..10 {
        let info = client
            .wait_for_completion(&format!("r{i}"), WAIT)
            .await
            .unwrap();
        assert_eq!(info.status, InstanceStatus::Completed, "{info:?}");
        assert_eq!(
            info.output.as_deref(),
            Some(format!("f{i}@gpu+note@cpu").as_str())
        );
    }
    cpu.shutdown(WAIT).await;
    gpu.shutdown(WAIT).await;
}
