//! `sluice replay-check`: histories recorded by other code, checked against the binary's.

mod common;

use common::{show, sluice};
use serde_json::Value;
use sluice_runtime::{Event, Failure, OrchestrationContext, Registry, Runtime, RuntimeOptions};
use sluice_store::Store;
use sluice_store_sqlite::{Location, SqliteStore, SqliteStoreOptions};
use std::sync::Arc;
use std::time::Duration;

/// The demo's `reserve_line` as the binary has it: its commands match.
async fn reserve_line(ctx: OrchestrationContext, line: String) -> Result<String, Failure> {
    let reserved = ctx.schedule_activity("reserve_stock", line).await?;
    ctx.schedule_activity("pick", reserved).await
}

/// An older `order` that checked for fraud before validating: the binary's code would not
/// replay it.
async fn old_order(ctx: OrchestrationContext, order: String) -> Result<String, Failure> {
    ctx.schedule_activity("check_fraud", order.clone()).await?;
    ctx.schedule_activity("validate", order).await
}

async fn mystery(ctx: OrchestrationContext, input: String) -> Result<String, Failure> {
    ctx.schedule_activity("unknown", input).await
}

fn check(store: &str, extra: &[&str]) -> (i32, Value) {
    let output = sluice()
        .args(["replay-check", "--store", store, "--json"])
        .args(extra)
        .output()
        .unwrap();
    show(&format!("sluice replay-check {extra:?}"), &output);
    let report = serde_json::from_slice(&output.stdout).expect("a JSON report");
    (output.status.code().unwrap_or(-1), report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_check_reports_instances_the_binary_would_break() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store =
        Arc::new(SqliteStore::open(SqliteStoreOptions::new(Location::File(path.clone()))).unwrap());
    let registry = Registry::new()
        .orchestration("reserve_line", reserve_line)
        .orchestration("order", old_order)
        .orchestration("mystery", mystery);
    // No activity is registered: every instance stays where its first turn left it.
    let runtime = Runtime::start(store.clone(), registry, RuntimeOptions::default()).unwrap();
    let client = runtime.client();
    let order = r#"{"lines":[{"sku":"a","quantity":1}],"total_cents":100,"card_accepts":true,"approval_timeout_ms":1000}"#;
    client
        .start("reserve_line", "ok-1", r#"{"sku":"a","quantity":1}"#)
        .await
        .unwrap();
    client.start("order", "bad-1", order).await.unwrap();
    client.start("mystery", "gone-1", "x").await.unwrap();
    for id in ["ok-1", "bad-1", "gone-1"] {
        loop {
            let history = store.read_history(id, 1, 0).await.unwrap();
            if history
                .iter()
                .any(|e| matches!(e, Event::ActivityScheduled { .. }))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    runtime.shutdown(Duration::from_secs(10)).await;
    drop((client, store));

    let url = format!("sqlite://{}", path.display());
    let (code, report) = check(&url, &[]);
    assert_eq!(code, 3, "{report}");
    assert_eq!(report["checked"], 2, "{report}");
    let failures = report["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{report}");
    assert_eq!(failures[0]["instance_id"], "bad-1");
    assert_eq!(
        failures[0]["failure"]["code"],
        "nondeterminism.command_mismatch"
    );
    let message = failures[0]["failure"]["message"].as_str().unwrap();
    assert!(
        message.contains("check_fraud") && message.contains("validate"),
        "{message}"
    );
    let unregistered = report["unregistered"].as_array().unwrap();
    assert_eq!(unregistered.len(), 1);
    assert_eq!(unregistered[0]["instance_id"], "gone-1");

    // Narrowed to what the binary replays, the check passes; other builds may host `mystery`.
    let (code, report) = check(&url, &["--name", "reserve_line"]);
    assert_eq!((code, report["checked"].as_u64()), (0, Some(1)), "{report}");
    let (code, _) = check(&url, &["--id-prefix", "gone", "--allow-unregistered"]);
    assert_eq!(code, 0);
    // The text report names the broken instance and its mismatch.
    let output = sluice()
        .args(["replay-check", "--store", &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("would fail: bad-1 (order v1, execution 1)"),
        "{text}"
    );
}
