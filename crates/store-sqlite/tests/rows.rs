//! What the SQLite store does with rows it cannot decode, and with delivery counts across
//! restarts and schema upgrades: things the generic conformance suite cannot set up.

use sluice_history::{Event, InstanceStatus, Message, RetryPolicy};
use sluice_store::{NewActivity, NewInstance, Store, StoreError, TurnCommit};
use sluice_store_sqlite::{Location, SqliteStore, SqliteStoreOptions};
use sluice_testkit::TempSqlite;
use std::time::Duration;

const LEASE: Duration = Duration::from_secs(30);

/// Takes a database of this build back to schema version 3 (before the listing columns).
const UNDO_V4: &str = "
    DROP TRIGGER instance_counts_insert; DROP TRIGGER instance_counts_update;
    DROP TRIGGER instance_counts_delete; DROP TABLE instance_counts; DROP TABLE executions;
    DROP INDEX instances_status_created; DROP INDEX instances_status_updated;
    DROP INDEX instances_name_created; DROP INDEX instances_parent;
    ALTER TABLE instances DROP COLUMN parent_id; ALTER TABLE instances DROP COLUMN started_at_ms;
    ALTER TABLE instances DROP COLUMN finished_at_ms;
    PRAGMA user_version = 3;";

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
        version: None,
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
    raw(&temp).execute_batch(UNDO_V4).unwrap();
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
    assert_eq!(version, 4);
    let turn = store.fetch_turns(1, LEASE, &[]).await.unwrap();
    assert_eq!(turn[0].delivery, 1);
    assert!(matches!(turn[0].messages[0].1, Message::Start { .. }));
}

/// Schema 4 fills what listings show for the instances a version-3 database holds: parents
/// (from the start event or the pending start message), start and finish times, counts, and
/// the executions that continued as new.
#[tokio::test]
async fn a_version_3_database_gains_what_listings_show() {
    use sluice_history::ParentLink;
    use sluice_store::{ExecutionStatus, InstanceQuery};
    let temp = TempSqlite::new();
    let store = open(&temp);
    let child = |id: &str| NewInstance {
        parent: Some(ParentLink {
            instance_id: "p".into(),
            execution_id: 1,
            id: 3,
        }),
        ..new_instance(id)
    };
    store.create_instance(new_instance("p")).await.unwrap();
    store.create_instance(child("done")).await.unwrap();
    store.create_instance(child("waiting")).await.unwrap();
    let mut turns = store.fetch_turns(10, LEASE, &[]).await.unwrap();
    turns.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    for turn in turns {
        let id = turn.instance_id.clone();
        if id == "waiting" {
            store
                .release_turn(&id, turn.lock_token, Duration::ZERO)
                .await
                .unwrap();
            continue;
        }
        let parent = (id == "done").then(|| ParentLink {
            instance_id: "p".into(),
            execution_id: 1,
            id: 3,
        });
        let (status, restart) = if id == "done" {
            (Some(InstanceStatus::Completed), None)
        } else {
            (
                Some(InstanceStatus::Running),
                Some(Message::Start {
                    name: "orders".into(),
                    input: "again".into(),
                    parent: None,
                    carried_events: Vec::new(),
                    version: None,
                }),
            )
        };
        store
            .commit_turn(TurnCommit {
                instance_id: id.clone(),
                lock_token: turn.lock_token,
                execution_id: 1,
                history_from: 0,
                append: vec![
                    Event::TurnStarted { now_ms: 1_234 },
                    Event::OrchestrationStarted {
                        name: "orders".into(),
                        input: String::new(),
                        parent,
                        guid_seed: 1,
                        version: None,
                    },
                ],
                consumed: turn.messages.iter().map(|(id, _)| *id).collect(),
                status,
                output: (id == "done").then(|| "ok".to_string()),
                continue_as_new: restart,
                ..TurnCommit::default()
            })
            .await
            .unwrap();
    }
    let before = |id: &str| {
        let store = &store;
        let id = id.to_string();
        async move { store.instance(&id).await.unwrap().unwrap() }
    };
    let done_before = before("done").await;
    drop(store);
    raw(&temp).execute_batch(UNDO_V4).unwrap();
    let store = open(&temp);
    let done = store.instance("done").await.unwrap().unwrap();
    assert_eq!(done.parent_id.as_deref(), Some("p"));
    assert_eq!(
        done.started_at_ms,
        Some(1_234),
        "from the first turn's time"
    );
    assert_eq!(done.finished_at_ms, done_before.finished_at_ms);
    let waiting = store.instance("waiting").await.unwrap().unwrap();
    assert_eq!(
        waiting.parent_id.as_deref(),
        Some("p"),
        "from the start message"
    );
    assert_eq!(
        (waiting.started_at_ms, waiting.finished_at_ms),
        (None, None)
    );
    let executions = store.executions("p").await.unwrap();
    assert_eq!(executions.len(), 2);
    assert_eq!(executions[0].status, ExecutionStatus::ContinuedAsNew);
    assert_eq!(executions[0].started_at_ms, Some(1_234));
    assert_eq!(executions[0].history_len, 2);
    assert_eq!(
        store.count_by_status().await.unwrap(),
        [
            (InstanceStatus::Completed, 1),
            (InstanceStatus::Pending, 1),
            (InstanceStatus::Running, 1)
        ]
    );
    let children = store
        .list_instances(&InstanceQuery {
            filter: sluice_store::InstanceFilter {
                parent: Some("p".into()),
                ..Default::default()
            },
            page_size: 10,
            ..InstanceQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(children.instances.len(), 2);
}

/// A client-only open reads a store another process holds, refuses to hand out work, and
/// refuses a file at another schema version rather than migrating it.
#[tokio::test]
async fn a_client_reads_a_store_its_owner_holds() {
    let temp = TempSqlite::new();
    let owner = open(&temp);
    owner.create_instance(new_instance("a")).await.unwrap();
    let client_options = SqliteStoreOptions {
        client_only: true,
        ..SqliteStoreOptions::new(Location::File(temp.path().to_path_buf()))
    };
    let client =
        SqliteStore::open(client_options.clone()).expect("a client opens beside the owner");
    assert_eq!(
        client.instance("a").await.unwrap().unwrap().status,
        InstanceStatus::Pending
    );
    client.create_instance(new_instance("b")).await.unwrap();
    let error = client.fetch_turns(1, LEASE, &[]).await.unwrap_err();
    assert_eq!(error.code(), "store.contract");
    let ids: Vec<String> = owner
        .fetch_turns(10, LEASE, &[])
        .await
        .unwrap()
        .into_iter()
        .map(|turn| turn.instance_id)
        .collect();
    assert_eq!(
        ids.len(),
        2,
        "the owner finds what the client started: {ids:?}"
    );
    drop(client);
    drop(owner);
    raw(&temp).execute_batch("PRAGMA user_version = 3").unwrap();
    let error = SqliteStore::open(client_options).err().expect("refused");
    assert!(error.to_string().contains("schema version 3"), "{error}");
}
