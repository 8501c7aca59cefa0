//! `sluice instances`: listing, counting and reading instances through the binary, on a SQLite
//! file while the demo runs on it, and on PostgreSQL.

mod common;

use common::{query, show, sluice};
use serde_json::Value;
use sluice_testkit::pg_or_skip;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn instances(args: &[&str]) -> Output {
    let output = sluice().arg("instances").args(args).output().unwrap();
    show(&format!("sluice instances {args:?}"), &output);
    output
}

fn json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let output = instances(&all);
    assert!(output.status.success(), "{args:?}");
    serde_json::from_slice(&output.stdout).expect("JSON output")
}

/// Pages through `list` with `filter` to the end; returns the ids in order.
fn list_all(store: &str, filter: &[&str]) -> Vec<String> {
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut args = vec!["list", "--store", store, "--limit", "7"];
        args.extend_from_slice(filter);
        if let Some(cursor) = &after {
            args.extend(["--after", cursor.as_str()]);
        }
        let page = json(&args);
        for instance in page["instances"].as_array().unwrap() {
            ids.push(instance["instance_id"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => return ids,
        }
    }
}

fn total(counts: &Value) -> u64 {
    counts
        .as_array()
        .unwrap()
        .iter()
        .map(|count| count["count"].as_u64().unwrap())
        .sum()
}

/// The commands read a SQLite store while the demo holds it (as a client), and what they say
/// matches the file once the demo has stopped.
#[test]
fn a_running_demo_is_listed_counted_and_read() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    let store = format!("sqlite://{}", db.display());
    let mut demo = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["demo", "--db", db.to_str().unwrap(), "--orders", "100000"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut finished = 0;
    while finished < 50 {
        assert!(Instant::now() < deadline, "the demo finished nothing");
        std::thread::sleep(Duration::from_millis(200));
        if !db.exists() {
            continue;
        }
        let output = instances(&["counts", "--store", &store, "--json"]);
        if output.status.success() {
            let counts: Value = serde_json::from_slice(&output.stdout).unwrap();
            finished = counts
                .as_array()
                .unwrap()
                .iter()
                .filter(|count| count["status"] == "completed" || count["status"] == "failed")
                .map(|count| count["count"].as_u64().unwrap())
                .sum();
        }
    }
    assert!(
        demo.try_wait().unwrap().is_none(),
        "the demo is still running"
    );
    let page = json(&[
        "list",
        "--store",
        &store,
        "--status",
        "completed,failed",
        "--limit",
        "10",
    ]);
    let listed = page["instances"].as_array().unwrap();
    assert_eq!(listed.len(), 10);
    for instance in listed {
        assert!(instance["finished_at_ms"].is_i64(), "{instance}");
        assert!(["completed", "failed"].contains(&instance["status"].as_str().unwrap()));
    }
    let created: Vec<i64> = listed
        .iter()
        .map(|instance| instance["created_at_ms"].as_i64().unwrap())
        .collect();
    assert!(
        created.windows(2).all(|pair| pair[0] >= pair[1]),
        "newest first"
    );
    let id = listed[0]["instance_id"].as_str().unwrap();
    let shown = json(&["show", id, "--store", &store]);
    assert_eq!(shown["instance"]["instance_id"], id);
    assert_eq!(shown["executions"][0]["execution_id"], 1);
    let history = json(&["history", id, "--store", &store, "--limit", "3"]);
    assert_eq!(history["events"].as_array().unwrap().len(), 3);
    assert_eq!(history["events"][0]["event"]["type"], "turn_started");
    let table = instances(&["list", "--store", &store, "--limit", "3", "--utc"]);
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.starts_with("ID "), "{text}");
    assert!(text.contains("next: --after '"), "{text}");

    demo.kill().unwrap();
    demo.wait().unwrap();
    // Stopped: every count, listing and filter agrees with the file itself.
    let counts = json(&["counts", "--store", &store]);
    let rows = query(
        &db,
        "SELECT status, name, COUNT(*) FROM instances GROUP BY 1, 2",
    );
    assert_eq!(counts.as_array().unwrap().len(), rows.len());
    for row in &rows {
        let found = counts
            .as_array()
            .unwrap()
            .iter()
            .find(|count| count["status"] == row[0].as_str() && count["name"] == row[1].as_str())
            .unwrap_or_else(|| panic!("no count for {row:?}: {counts}"));
        assert_eq!(found["count"].as_u64().unwrap().to_string(), row[2]);
    }
    let failed = list_all(&store, &["--status", "failed", "--asc"]);
    let expected: Vec<String> = query(
        &db,
        "SELECT instance_id FROM instances WHERE status = 'failed'
         ORDER BY created_at_ms, instance_id",
    )
    .into_iter()
    .map(|row| row[0].clone())
    .collect();
    assert_eq!(failed, expected);
    let parent = query(
        &db,
        "SELECT parent_id, COUNT(*) FROM instances WHERE parent_id IS NOT NULL GROUP BY 1 LIMIT 1",
    );
    let children = list_all(&store, &["--parent", &parent[0][0]]);
    assert_eq!(children.len().to_string(), parent[0][1]);

    let missing = instances(&["show", "nope", "--store", &store]);
    assert_eq!(missing.status.code(), Some(3));
    let bad = instances(&["list", "--store", &store, "--status", "lost"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown status 'lost'"));
    let not_a_store = instances(&["counts", "--store", "mysql://x"]);
    assert_eq!(not_a_store.status.code(), Some(1));
}

/// The same commands on a PostgreSQL store the demo ran on.
#[test]
fn a_postgres_store_is_listed_and_counted() {
    let Some(cluster) = pg_or_skip("cli instances") else {
        return;
    };
    let store = cluster.url();
    let demo = sluice()
        .args(["demo", "--store", &store, "--orders", "30"])
        .output()
        .unwrap();
    show("demo", &demo);
    assert!(demo.status.success());
    let counts = json(&["counts", "--store", &store]);
    let rows = cluster
        .psql("SELECT count(*) FROM sluice.instances")
        .unwrap();
    assert_eq!(total(&counts).to_string(), rows.trim());
    let all = list_all(&store, &[]);
    assert_eq!(all.len().to_string(), rows.trim());
    let orders = list_all(&store, &["--name", "order", "--prefix", "order-1", "--asc"]);
    let mut expected: Vec<String> = (0..30)
        .map(|n| format!("order-{n}"))
        .filter(|id| id.starts_with("order-1"))
        .collect();
    expected.sort();
    let mut sorted = orders.clone();
    sorted.sort();
    assert_eq!(sorted, expected);
    let finished = list_all(&store, &["--finished-after", "1h", "--order", "updated"]);
    assert_eq!(
        finished.len().to_string(),
        rows.trim(),
        "all finished within the hour"
    );
    let none = json(&[
        "list",
        "--store",
        &store,
        "--created-before",
        "1970-01-02T00:00:00Z",
    ]);
    assert!(none["instances"].as_array().unwrap().is_empty());
}

/// Suspend, resume and terminate through the binary while the demo owns the SQLite file: the
/// owner runs no turn of the suspended order, runs it again once resumed, and the terminated
/// one ends with the operator's reason in its history.
#[test]
fn operators_act_on_a_running_demo() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    let store = format!("sqlite://{}", db.display());
    // Few turns at once, so that orders stay pending long enough to be acted on.
    let mut demo = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["demo", "--db", db.to_str().unwrap(), "--orders", "100000"])
        .args(["--orch-concurrency", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let pending = |store: &str| -> Vec<String> {
        let output = sluice()
            .args(["instances", "list", "--store", store, "--json"])
            .args([
                "--status", "pending", "--name", "order", "--asc", "--limit", "2",
            ])
            .output()
            .unwrap();
        if !output.status.success() {
            return Vec::new();
        }
        let page: Value = serde_json::from_slice(&output.stdout).unwrap();
        page["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|instance| instance["instance_id"].as_str().unwrap().to_string())
            .collect()
    };
    let ids = loop {
        assert!(Instant::now() < deadline, "no pending orders appeared");
        std::thread::sleep(Duration::from_millis(100));
        if db.exists() {
            let ids = pending(&store);
            if ids.len() == 2 {
                break ids;
            }
        }
    };
    let (held, ended) = (&ids[0], &ids[1]);
    let status = |id: &str| -> String {
        json(&["show", id, "--store", &store])["instance"]["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let suspended = json(&[
        "suspend",
        held,
        "--store",
        &store,
        "--reason",
        "checking stock",
        "--by",
        "tester",
    ]);
    assert_eq!(suspended["changed"], true);
    let terminated = json(&["terminate", ended, "--store", &store, "--reason", "fraud"]);
    assert_eq!(terminated["terminated"][0], ended.as_str());
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(status(held), "suspended", "the owner ran no turn of it");
    assert_eq!(status(ended), "terminated");
    let history = json(&["history", ended, "--store", &store]);
    let last = history["events"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["event"]["type"], "terminated");
    assert_eq!(last["event"]["reason"], "fraud");
    let resumed = json(&[
        "resume",
        held,
        "--store",
        &store,
        "--reason",
        "stock is fine",
    ]);
    assert_eq!(resumed["changed"], true);
    let again = json(&["resume", held, "--store", &store, "--reason", "twice"]);
    assert_eq!(again["changed"], false);
    // The owner runs the resumed order again: a turn of it starts after the resume. (Not
    // waited to completion: under a loaded host the demo's backlog of orders comes first.)
    let kinds_of = |id: &str| -> Vec<String> {
        json(&["history", id, "--store", &store])["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|event| event["event"]["type"].as_str().unwrap().to_string())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let kinds = loop {
        let kinds = kinds_of(held);
        let resumed_at = kinds.iter().position(|kind| kind == "resumed");
        if resumed_at.is_some_and(|at| kinds[at + 1..].iter().any(|kind| kind == "turn_started")) {
            break kinds;
        }
        assert!(
            Instant::now() < deadline,
            "the resumed order never ran a turn: {kinds:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let suspended_at = kinds.iter().position(|kind| kind == "suspended").unwrap();
    assert_eq!(kinds[suspended_at + 1], "resumed", "{kinds:?}");
    demo.kill().unwrap();
    demo.wait().unwrap();
}

/// A bulk purge's dry run (the default without `--yes`) says how many match and removes
/// nothing; with `--yes` it removes exactly those; one instance goes with its finished
/// sub-orchestrations.
#[test]
fn a_purge_dry_run_matches_what_it_then_purges() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    let store = format!("sqlite://{}", db.display());
    let demo = sluice()
        .args(["demo", "--db", db.to_str().unwrap(), "--orders", "40"])
        .output()
        .unwrap();
    assert!(demo.status.success());
    let before = total(&json(&["counts", "--store", &store]));
    let failed: u64 = query(
        &db,
        "SELECT COUNT(*) FROM instances WHERE status = 'failed'",
    )[0][0]
        .parse()
        .unwrap();
    assert!(failed > 0, "the demo fails some orders");
    let filter = ["--finished-before", "0s", "--status", "failed"];
    let mut args = vec!["purge", "--store", store.as_str()];
    args.extend(filter);
    let dry = json(&args);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["matching"].as_u64().unwrap(), failed);
    assert!(!dry["sample"].as_array().unwrap().is_empty());
    assert_eq!(
        total(&json(&["counts", "--store", &store])),
        before,
        "nothing removed"
    );
    args.push("--yes");
    let done = json(&args);
    assert_eq!(done["purged"].as_u64().unwrap(), failed);
    assert_eq!(
        total(&json(&["counts", "--store", &store])),
        before - failed
    );
    assert_eq!(
        query(
            &db,
            "SELECT COUNT(*) FROM instances WHERE status = 'failed'"
        )[0][0],
        "0"
    );

    let parent = &query(
        &db,
        "SELECT parent_id FROM instances WHERE parent_id IS NOT NULL LIMIT 1",
    )[0][0];
    let children: u64 = query(
        &db,
        &format!("SELECT COUNT(*) FROM instances WHERE parent_id = '{parent}'"),
    )[0][0]
        .parse()
        .unwrap();
    let one = json(&["purge", parent, "--store", &store]);
    assert_eq!(
        one["purged"].as_array().unwrap().len() as u64,
        1 + children,
        "{one}"
    );
    assert_eq!(
        query(
            &db,
            &format!("SELECT COUNT(*) FROM history WHERE instance_id = '{parent}'")
        )[0][0],
        "0"
    );
    let missing = instances(&["purge", "nope", "--store", &store]);
    assert_eq!(missing.status.code(), Some(3));
}

/// A bulk terminate selected by filter options answers with the count and a sample and changes
/// nothing; with `--yes` it terminates exactly those, recording the reason in each history.
#[test]
fn a_bulk_terminate_shows_then_terminates_what_matches() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    let store = format!("sqlite://{}", db.display());
    let mut demo = Command::new(env!("CARGO_BIN_EXE_sluice"))
        // Few turns at once, so that many orders are still pending when it is killed.
        .args(["demo", "--db", db.to_str().unwrap(), "--orders", "100000"])
        .args(["--orch-concurrency", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let count_pending = || -> u64 {
        query(
            &db,
            "SELECT COUNT(*) FROM instances WHERE status = 'pending' AND name = 'order'",
        )[0][0]
            .parse()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !db.exists() || count_pending() < 20 {
        assert!(Instant::now() < deadline, "no pending orders appeared");
        std::thread::sleep(Duration::from_millis(100));
    }
    demo.kill().unwrap();
    demo.wait().unwrap();
    let pending = count_pending();
    let base = [
        "terminate",
        "--store",
        store.as_str(),
        "--status",
        "pending",
        "--name",
        "order",
        "--reason",
        "bad batch",
    ];
    let dry = json(&base);
    assert_eq!(dry["outcome"], "dry_run");
    assert_eq!(dry["matching"].as_u64().unwrap(), pending);
    let sample = dry["sample"].as_array().unwrap();
    assert_eq!(sample.len() as u64, pending.min(10));
    assert_eq!(count_pending(), pending, "a dry run changes nothing");
    let mut confirmed = base.to_vec();
    confirmed.push("--yes");
    let done = json(&confirmed);
    assert_eq!(done["outcome"], "done");
    assert_eq!(done["acted"].as_u64().unwrap(), pending, "{done}");
    assert_eq!(count_pending(), 0);
    let first = sample[0]["instance_id"].as_str().unwrap();
    let history = json(&["history", first, "--store", &store]);
    let last = history["events"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["event"]["type"], "terminated");
    assert_eq!(last["event"]["reason"], "bad batch");
    // Rewinding needs a failed instance.
    let refused = instances(&["rewind", first, "--store", &store, "--reason", "no"]);
    assert_eq!(refused.status.code(), Some(1));
    let failed = query(
        &db,
        "SELECT instance_id FROM instances WHERE status = 'failed' LIMIT 1",
    );
    if let Some(row) = failed.first() {
        let rewound = json(&["rewind", &row[0], "--store", &store, "--reason", "retry it"]);
        assert_eq!(rewound["changed"], true);
        assert_eq!(rewound["rewound"][0], row[0].as_str());
        let shown = json(&["show", &row[0], "--store", &store]);
        assert_eq!(shown["instance"]["status"], "running");
    }
    // A terminated order restarts under its id (a new execution, pending: no runtime runs
    // here) and as another instance.
    let again = json(&["restart", first, "--store", &store, "--reason", "a mistake"]);
    assert_eq!(again["execution_id"], 2);
    let copy = json(&[
        "restart", first, "--store", &store, "--reason", "a copy", "--as", "copied",
    ]);
    assert_eq!(copy["instance_id"], "copied");
    let shown = json(&["show", "copied", "--store", &store]);
    assert_eq!(shown["instance"]["status"], "pending");
    let refused = instances(&["restart", first, "--store", &store, "--reason", "twice"]);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "a pending instance does not restart"
    );
    // An id and filter options at once, or neither, is bad usage.
    let both = instances(&[
        "terminate",
        first,
        "--store",
        &store,
        "--status",
        "running",
        "--reason",
        "x",
    ]);
    assert_eq!(both.status.code(), Some(2));
    let neither = instances(&["terminate", "--store", &store, "--reason", "x"]);
    assert_eq!(neither.status.code(), Some(2));
    // Start, raise and cancel go to the store's inbox for its runtime.
    let started = json(&[
        "start", "order", "by-hand", "--store", &store, "--input", "{}",
    ]);
    assert_eq!(started["created"], true);
    let again = json(&["start", "order", "by-hand", "--store", &store]);
    assert_eq!(again["created"], false);
    json(&[
        "raise", "by-hand", "approved", "--store", &store, "--data", "yes",
    ]);
    json(&[
        "cancel",
        "by-hand",
        "--store",
        &store,
        "--reason",
        "changed my mind",
        "--by",
        "tester",
    ]);
    assert_eq!(
        query(
            &db,
            "SELECT json_extract(message, '$.requested_by') FROM inbox
             WHERE instance_id = 'by-hand' AND json_extract(message, '$.type') = 'cancel'",
        )[0][0],
        "tester"
    );
    let kinds = query(
        &db,
        "SELECT json_extract(message, '$.type') FROM inbox WHERE instance_id = 'by-hand'
         ORDER BY message_id",
    );
    let kinds: Vec<&str> = kinds.iter().map(|row| row[0].as_str()).collect();
    assert_eq!(kinds, ["start", "event", "cancel"]);
    let missing = instances(&["raise", "nobody", "x", "--store", &store]);
    assert_eq!(missing.status.code(), Some(3));
}
