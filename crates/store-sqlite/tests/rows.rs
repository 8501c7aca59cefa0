//! What the SQLite store does with rows it cannot decode, and with delivery counts across
//! restarts and schema upgrades: things the generic conformance suite cannot set up.

use sluice_history::{Event, InstanceStatus, Message, RetryPolicy};
use sluice_store::{NewActivity, NewInstance, Store, StoreError, TurnCommit};
use sluice_store_sqlite::{Location, SqliteStore, SqliteStoreOptions};
use sluice_testkit::TempSqlite;
use std::time::Duration;

const LEASE: Duration = Duration::from_secs(30);

fn open(temp: &TempSqlite) -> SqliteStore {
    SqliteStore::open(SqliteStoreOptions::new(Location::File(
        temp.path().to_path_buf(),
    )))
    .expect("open store")
}

fn raw(temp: &TempSqlite) -> rusqlite::Connection {
    let connection = rusqlite::Connection::open(temp.path()).expect("raw connection");
    connection
        .busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    connection
}

fn new_instance(id: &str) -> NewInstance {
    NewInstance {
        instance_id: id.into(),
        name: "orders".into(),
        input: String::new(),
        parent: None,
    }
}

/// Starts `id` as running with one activity per entry of `activities` (no retry policy).
async fn start_with_activities(store: &SqliteStore, id: &str, activities: u64) {
    store.create_instance(new_instance(id)).await.unwrap();
    let turn = store
        .fetch_turns(1, LEASE, &[id.to_string()])
        .await
        .unwrap()
        .pop()
        .unwrap();
    store
        .commit_turn(TurnCommit {
            instance_id: id.into(),
            lock_token: turn.lock_token,
            execution_id: 1,
            history_from: 0,
            append: vec![Event::TurnStarted { now_ms: 0 }],
            consumed: turn.messages.iter().map(|(id, _)| *id).collect(),
            status: Some(InstanceStatus::Running),
            activities: (0..activities)
                .map(|activity_id| NewActivity {
                    instance_id: id.into(),
                    execution_id: 1,
                    activity_id,
                    name: "charge".into(),
                    input: String::new(),
                    retry: Some(RetryPolicy::attempts(2)),
                    task_queue: None,
                })
                .collect(),
            ..TurnCommit::default()
        })
        .await
        .unwrap();
}

/// One undecodable message affects its own instance only: the fetch hands out the others, and
/// the bad instance locked, with the reason naming the row (and not its content).
#[tokio::test]
async fn an_undecodable_message_is_reported_with_its_instance() {
    let temp = TempSqlite::new();
    let store = open(&temp);
    for id in ["a", "bad", "c"] {
        store.create_instance(new_instance(id)).await.unwrap();
    }
    raw(&temp)
        .execute(
            "INSERT INTO inbox (instance_id, visible_at_ms, message)
             VALUES ('bad', 0, '{\"type\":\"secret_variant\",\"token\":\"hunter2\"}')",
            [],
        )
        .unwrap();
    let turns = store.fetch_turns(10, LEASE, &[]).await.unwrap();
    assert_eq!(turns.len(), 3);
    for turn in &turns {
        if turn.instance_id == "bad" {
            let why = turn.unreadable.as_deref().expect("reported");
            assert!(
                why.contains("inbox message") && why.contains("of instance 'bad'"),
                "{why}"
            );
            assert!(why.contains("unknown variant `secret_variant`"), "{why}");
            assert!(
                !why.contains("hunter2"),
                "the row's content stays out: {why}"
            );
            assert_eq!(turn.messages.len(), 1, "the decodable start");
        } else {
            assert_eq!(turn.unreadable, None);
            assert!(matches!(turn.messages[0].1, Message::Start { .. }));
        }
    }
}

/// The same for activity work items: a retry policy this build cannot decode.
#[tokio::test]
async fn an_undecodable_work_item_is_reported_alone() {
    let temp = TempSqlite::new();
    let store = open(&temp);
    start_with_activities(&store, "a", 3).await;
    raw(&temp)
        .execute(
            "UPDATE activities SET retry = '{\"max_attempts\":2,\"backoff\":{\"kind\":\"quantum\"}}'
             WHERE activity_id = 1",
            [],
        )
        .unwrap();
    let items = store.fetch_activities(10, LEASE).await.unwrap();
    assert_eq!(items.len(), 3);
    for item in &items {
        if item.activity.activity_id == 1 {
            let why = item.unreadable.as_deref().expect("reported");
            assert!(
                why.contains(&format!("activity work item {}", item.item_id)),
                "{why}"
            );
            assert_eq!(item.activity.retry, None);
        } else {
            assert_eq!(item.unreadable, None);
            assert_eq!(item.activity.retry, Some(RetryPolicy::attempts(2)));
        }
    }
}

/// Reading a history with an event of a newer build names the event.
#[tokio::test]
async fn an_undecodable_history_event_is_named() {
    let temp = TempSqlite::new();
    let store = open(&temp);
    start_with_activities(&store, "a", 0).await;
    raw(&temp)
        .execute(
            "UPDATE history SET event = '{\"type\":\"turn_started\",\"now_ms\":0,\"zone\":\"x\"}'",
            [],
        )
        .unwrap();
    let error = store.read_history("a", 1, 0).await.unwrap_err();
    assert!(matches!(error, StoreError::Corrupt(_)), "{error}");
    assert_eq!(error.code(), "store.corrupt");
    let text = error.to_string();
    assert!(
        text.contains("history event 0 of instance 'a' execution 1")
            && text.contains("unknown field `zone`"),
        "{text}"
    );
}

/// Delivery counts live in the database: a process that dies in a turn leaves its count for
/// the next one.
#[tokio::test]
async fn deliveries_survive_a_restart() {
    let temp = TempSqlite::new();
    let store = open(&temp);
    store.create_instance(new_instance("a")).await.unwrap();
    let first = store.fetch_turns(1, LEASE, &[]).await.unwrap();
    assert_eq!(first[0].delivery, 1);
    drop(store); // the process dies mid-turn
    let store = open(&temp);
    let second = store.fetch_turns(1, LEASE, &[]).await.unwrap();
    assert_eq!(second[0].delivery, 2);
}

/// A version-1 database (no delivery counts, no task queues) is upgraded in place; its
/// messages start at zero.
#[tokio::test]
async fn a_version_1_database_is_upgraded() {
    let temp = TempSqlite::new();
    let store = open(&temp);
    store.create_instance(new_instance("a")).await.unwrap();
    drop(store);
    raw(&temp)
        .execute_batch(
            "ALTER TABLE inbox DROP COLUMN deliveries; ALTER TABLE activities DROP COLUMN task_queue;
             PRAGMA user_version = 1;",
        )
        .unwrap();
    let store = open(&temp);
    let version: i64 = raw(&temp)
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(version, 3);
    let turn = store.fetch_turns(1, LEASE, &[]).await.unwrap();
    assert_eq!(turn[0].delivery, 1);
    assert!(matches!(turn[0].messages[0].1, Message::Start { .. }));
}
