//! Exactly-once delivery against a real PostgreSQL: the sink's exactly-once compliance checks
//! for both mechanisms, and what only a real server shows: visibility from another session,
//! a sink dropped mid-checkpoint (its connection must not go back to the pool inside a
//! transaction), prepared transactions across a server crash, other applications' and other
//! writers' prepared transactions, the `max_prepared_transactions` check, bisection inside a
//! checkpoint against a CHECK constraint, and a `COMMIT PREPARED` someone else already ran.

mod common;

use common::{PgHarness, TestDb, backend, connect, fresh_database, prepared};
use sluice_sink::{
    Column, ColumnType, CreateTable, Delivery, Mode, Resume, Row, Schema, Sink, SinkBackend,
    SinkConfig, SinkConfigBuilder, SinkError, SinkId, Value,
};
use sluice_testkit::pg_or_skip;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const SUITE: &str = "sink-postgres exactly-once";

mod transactional_marker {
    use super::PgHarness;
    sluice_sink::exactly_once_compliance_tests!(
        match PgHarness::start(super::SUITE).await {
            Some(harness) => harness,
            None => return,
        },
        sluice_sink::Delivery::TransactionalMarker
    );
}

mod two_phase {
    use super::PgHarness;
    sluice_sink::exactly_once_compliance_tests!(
        match PgHarness::start(super::SUITE).await {
            Some(harness) => harness,
            None => return,
        },
        sluice_sink::Delivery::TwoPhase
    );
}

fn config(delivery: Delivery, sink_id: &str) -> SinkConfigBuilder {
    SinkConfig::builder()
        .delivery(delivery)
        .sink_id(SinkId::new(sink_id).unwrap())
        .create_table(CreateTable::IfMissing)
        .flush_interval_ms(5)
        .retry_backoff_initial_ms(1)
        .retry_backoff_max_ms(20)
}

async fn open(backend: &dyn SinkBackend, schema: &Schema, config: SinkConfigBuilder) -> Sink {
    Sink::open(backend, schema.clone(), config.build().unwrap())
        .await
        .expect("the sink opens")
}

fn column(name: &str, column_type: ColumnType) -> Column {
    Column::new(name, column_type).unwrap()
}

/// `(id bigint NOT NULL, v text)`, without a key (a duplicate shows as a second row) or with
/// `id` as the key.
fn events_schema(table: &str, keyed: bool) -> Schema {
    let key: &[&str] = if keyed { &["id"] } else { &[] };
    Schema::new(
        table,
        vec![
            column("id", ColumnType::I64).not_null(),
            column("v", ColumnType::Text),
        ],
        key,
    )
    .unwrap()
}

fn inserts(range: std::ops::Range<i64>) -> Vec<Row> {
    range
        .map(|id| Row::insert(vec![id.into(), format!("e{id}").into()]))
        .collect()
}

fn upserts(range: std::ops::Range<i64>, v: &str) -> Vec<Row> {
    range
        .map(|id| Row::upsert(vec![id.into(), v.into()]))
        .collect()
}

/// Global ids of the prepared transactions of the current database.
/// Rows of `table`, as another session sees them.
async fn count(client: &sluice_sink_postgres::tokio_postgres::Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM \"{table}\""), &[])
        .await
        .expect("count rows")
        .get(0)
}

/// How many times each id is in the table.
async fn id_counts(db: &TestDb, schema: &Schema) -> BTreeMap<i64, usize> {
    let mut counts = BTreeMap::new();
    for row in db.rows(schema).await {
        match row[0] {
            Value::I64(id) => *counts.entry(id).or_insert(0) += 1,
            ref other => panic!("unexpected id {other:?}"),
        }
    }
    counts
}

fn assert_each_once(counts: &BTreeMap<i64, usize>, range: std::ops::Range<i64>) {
    let expected: BTreeMap<i64, usize> = range.map(|id| (id, 1)).collect();
    assert_eq!(counts, &expected);
}

fn backend_code(error: &SinkError) -> &'static str {
    match error {
        SinkError::Backend(error) | SinkError::CheckpointLost(error) => error.code(),
        other => panic!("expected a backend error, got {other}"),
    }
}

/// Waits until no sink connection of the current database is inside a transaction.
async fn no_sink_transaction_open(admin: &sluice_sink_postgres::tokio_postgres::Client) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let open: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name = 'sluice-sink' \
                   AND xact_start IS NOT NULL",
                &[],
            )
            .await
            .expect("query pg_stat_activity")
            .get(0);
        if open == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{open} sink connections stayed inside a transaction"
        );
        // Polling the server for the end of sessions the dropped sink's tasks are closing.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The marker: rows appear at `pre_commit`. A sink dropped mid-checkpoint (a crash without
/// `close`) leaves nothing of its open transaction, and its connection never returns to the
/// pool inside it; a new process recovers and replays, and every id is there once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marker_commits_at_pre_commit_and_a_dropped_sink_leaves_nothing() {
    let Some(db) = TestDb::start(SUITE).await else {
        return;
    };
    let schema = events_schema("marker_events", false);
    let sink = open(
        &db.backend,
        &schema,
        config(Delivery::TransactionalMarker, "m1"),
    )
    .await;
    sink.recover(None, Resume::Committed).await.unwrap();
    sink.write(inserts(0..100)).await.unwrap();
    sink.flush().await.unwrap();
    assert_eq!(count(&db.admin, "marker_events").await, 0);
    let first = sink.pre_commit(1, "100").await.unwrap();
    assert_eq!(count(&db.admin, "marker_events").await, 100);
    sink.commit(1).await.unwrap();
    // Half of the next checkpoint is in the open transaction when the process "dies".
    sink.write(inserts(100..150)).await.unwrap();
    sink.flush().await.unwrap();
    assert_eq!(count(&db.admin, "marker_events").await, 100);
    drop(sink);
    no_sink_transaction_open(&db.admin).await;
    // Every connection left in the old pool is outside any transaction.
    let pool = db.backend.pool();
    let mut held = Vec::new();
    for _ in 0..pool.status().max_size {
        let client = pool.get().await.unwrap();
        let xid: Option<i64> = client
            .query_one("SELECT txid_current_if_assigned()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(xid, None, "a pooled connection is inside a transaction");
        // SAVEPOINT fails outside a transaction block.
        let error = client.batch_execute("SAVEPOINT probe").await.unwrap_err();
        assert_eq!(
            error.code(),
            Some(&sluice_sink_postgres::tokio_postgres::error::SqlState::NO_ACTIVE_SQL_TRANSACTION),
            "a pooled connection is inside a transaction"
        );
        held.push(client);
    }
    drop(held);

    // A new process: a new backend, recovery from the recorded checkpoint, replay.
    let backend = backend(&db.url, 4).await;
    let sink = open(
        &backend,
        &schema,
        config(Delivery::TransactionalMarker, "m1"),
    )
    .await;
    let recovery = sink.recover(Some(&first), Resume::Restored).await.unwrap();
    assert_eq!(recovery.checkpoint_id, Some(1));
    assert_eq!(recovery.skipping_through, None);
    sink.write(inserts(100..200)).await.unwrap();
    sink.pre_commit(2, "200").await.unwrap();
    sink.commit(2).await.unwrap();
    sink.close().await.unwrap();
    assert_each_once(&id_counts(&db, &schema).await, 0..200);
    // One progress row per lane, each committed with its lane's transaction, recording the
    // cut and the checkpoint before it.
    let lanes = sink.config().flush_concurrency();
    let progress = db
        .admin
        .query(
            "SELECT writer_id, lane, checkpoint_id, state, lanes, rows, previous_checkpoint_id, \
             previous_state FROM sluice_sink_progress WHERE sink_id = 'm1' ORDER BY lane",
            &[],
        )
        .await
        .unwrap();
    let found: Vec<_> = progress
        .iter()
        .map(|row| {
            (
                row.get::<_, i32>(0),
                row.get::<_, i32>(1),
                row.get::<_, i64>(2),
                row.get::<_, String>(3),
                row.get::<_, i32>(4),
                row.get::<_, i64>(5),
                row.get::<_, Option<i64>>(6),
                row.get::<_, Option<String>>(7),
            )
        })
        .collect();
    let expected: Vec<_> = (0..lanes as i32)
        .map(|lane| {
            (
                0,
                lane,
                2,
                "200".to_string(),
                lanes as i32,
                100,
                Some(1),
                Some(first.state.clone()),
            )
        })
        .collect();
    assert_eq!(found, expected);
}

/// Two-phase: rows are prepared at `pre_commit` (invisible, one prepared transaction per lane
/// that wrote, named after the sink, writer, checkpoint and lane) and appear at `commit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_phase_commits_at_commit() {
    let Some(db) = TestDb::start(SUITE).await else {
        return;
    };
    let schema = events_schema("tp_events", true);
    let sink = open(
        &db.backend,
        &schema,
        config(Delivery::TwoPhase, "tp1").mode(Mode::Changelog),
    )
    .await;
    sink.recover(None, Resume::Committed).await.unwrap();
    sink.write(upserts(0..100, "a")).await.unwrap();
    sink.flush().await.unwrap();
    assert_eq!(count(&db.admin, "tp_events").await, 0);
    sink.pre_commit(1, "100").await.unwrap();
    assert_eq!(count(&db.admin, "tp_events").await, 0);
    let gids = prepared(&db.admin).await;
    // Keys spread over both lanes.
    assert_eq!(gids, ["sluice:tp1:0:1:0", "sluice:tp1:0:1:1"]);
    sink.commit(1).await.unwrap();
    assert_eq!(count(&db.admin, "tp_events").await, 100);
    assert!(prepared(&db.admin).await.is_empty());
    sink.commit(1).await.unwrap();
    // Updates and deletes of the same keys in the next checkpoint.
    let mut rows = upserts(0..50, "b");
    rows.extend((50..100).map(|id| Row::delete(vec![id.into(), Value::Null])));
    sink.write(rows).await.unwrap();
    sink.pre_commit(2, "200").await.unwrap();
    assert_eq!(count(&db.admin, "tp_events").await, 100);
    sink.commit(2).await.unwrap();
    sink.close().await.unwrap();
    let rows = db.rows(&schema).await;
    assert_eq!(rows.len(), 50);
    assert!(rows.iter().all(|row| row[1].same_as(&"b".into())));
    let lanes: Vec<(i32, i64)> = db
        .admin
        .query(
            "SELECT lane, checkpoint_id FROM sluice_sink_progress WHERE sink_id = 'tp1' ORDER BY lane",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(lanes, [(0, 2), (1, 2)]);
}

/// Two-phase checkpoints may overlap: the next checkpoint is pre-committed while the previous
/// one still awaits its commit. The prepared transaction keeps its progress row locked, so the
/// lane records the next checkpoint in its second row instead of waiting; `commit` of the later
/// checkpoint commits both in order, and recovery reads the highest of the lane's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_phase_checkpoints_may_overlap() {
    let Some(db) = TestDb::start(SUITE).await else {
        return;
    };
    let schema = events_schema("overlap_events", false);
    let config = || config(Delivery::TwoPhase, "ov").flush_concurrency(1);
    let sink = open(&db.backend, &schema, config()).await;
    sink.recover(None, Resume::Committed).await.unwrap();
    sink.write(inserts(0..10)).await.unwrap();
    sink.pre_commit(1, "10").await.unwrap();
    sink.write(inserts(10..20)).await.unwrap();
    sink.pre_commit(2, "20").await.unwrap();
    sink.write(inserts(20..30)).await.unwrap();
    let third = sink.pre_commit(3, "30").await.unwrap();
    assert_eq!(
        prepared(&db.admin).await,
        ["sluice:ov:0:1:0", "sluice:ov:0:2:0", "sluice:ov:0:3:0"]
    );
    assert_eq!(count(&db.admin, "overlap_events").await, 0);
    sink.commit(2).await.unwrap();
    assert_eq!(count(&db.admin, "overlap_events").await, 20);
    assert_eq!(prepared(&db.admin).await, ["sluice:ov:0:3:0"]);
    // Checkpoint 3 is left prepared, as by a crash before its commit.
    drop(sink);
    let rows: Vec<(i32, i64)> = db
        .admin
        .query(
            "SELECT lane, checkpoint_id FROM sluice_sink_progress WHERE sink_id = 'ov' ORDER BY lane",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(rows, [(0, 1), (64, 2)]);
    let sink = open(&db.backend, &schema, config()).await;
    let recovery = sink.recover(Some(&third), Resume::Committed).await.unwrap();
    assert_eq!(recovery.checkpoint_id, Some(3));
    sink.close().await.unwrap();
    assert!(prepared(&db.admin).await.is_empty());
    assert_each_once(&id_counts(&db, &schema).await, 0..30);
}

/// PostgreSQL crashes between `pre_commit` and `commit`: the prepared transactions survive the
/// restart, and a new process's `recover` commits them (and rolls nothing else back); no
/// `sluice:` prepared transaction is left. Runs on a cluster of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_transactions_survive_a_server_crash() {
    let Some(cluster) = pg_or_skip("sink-postgres exactly-once crash") else {
        return;
    };
    let db = TestDb::on(Arc::new(cluster)).await;
    let schema = events_schema("crash_events", true);
    let sink = open(
        &db.backend,
        &schema,
        config(Delivery::TwoPhase, "crash").mode(Mode::Upsert),
    )
    .await;
    sink.recover(None, Resume::Committed).await.unwrap();
    sink.write(upserts(0..200, "a")).await.unwrap();
    let first = sink.pre_commit(1, "200").await.unwrap();
    // The next checkpoint's rows are in open transactions when the server dies.
    sink.write(upserts(200..300, "a")).await.unwrap();
    sink.flush().await.unwrap();
    let cluster = db.cluster.clone();
    tokio::task::spawn_blocking(move || cluster.crash_and_restart())
        .await
        .unwrap()
        .expect("crash and restart the server");
    drop(sink);
    let admin = connect(&db.url).await;
    assert_eq!(
        prepared(&admin).await,
        ["sluice:crash:0:1:0", "sluice:crash:0:1:1"]
    );
    assert_eq!(count(&admin, "crash_events").await, 0);

    let backend = backend(&db.url, 4).await;
    let sink = open(
        &backend,
        &schema,
        config(Delivery::TwoPhase, "crash").mode(Mode::Upsert),
    )
    .await;
    let recovery = sink.recover(Some(&first), Resume::Committed).await.unwrap();
    assert_eq!(recovery.checkpoint_id, Some(1));
    assert!(prepared(&admin).await.is_empty());
    assert_eq!(count(&admin, "crash_events").await, 200);
    // The replay of the lost half.
    sink.write(upserts(200..300, "a")).await.unwrap();
    sink.pre_commit(2, "300").await.unwrap();
    sink.commit(2).await.unwrap();
    sink.close().await.unwrap();
    let rows = {
        let client = backend.pool().get().await.unwrap();
        sluice_sink_postgres::read_rows(&client, &schema)
            .await
            .unwrap()
    };
    let ids: Vec<i64> = rows
        .iter()
        .map(|row| match row[0] {
            Value::I64(id) => id,
            ref other => panic!("unexpected id {other:?}"),
        })
        .collect();
    assert_eq!(ids, (0..300).collect::<Vec<_>>());
    assert!(prepared(&admin).await.is_empty());
}

/// Prepared transactions that are not this writer's — another application's, another sink's,
/// another writer's of the same sink, one that only a LIKE pattern would match (`_` in the sink
/// id), one with this writer's prefix but no checkpoint, and one with this writer's exact name
/// in another database — survive `recover`, `commit` and `abort`. One this writer left behind
/// (checkpoint 7, nothing restored) is rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_prepared_transactions_are_not_touched() {
    let Some(db) = TestDb::start(SUITE).await else {
        return;
    };
    db.admin
        .batch_execute("CREATE TABLE foreign_rows (id bigint); CREATE TABLE own_events (id bigint NOT NULL, v text)")
        .await
        .unwrap();
    let foreign = [
        "other-app:1",
        "sluice:othersink:0:5:0",
        "sluice:s_1:1:5:0",
        "sluice:sX1:0:5:0",
        "sluice:s_1:0:x:0",
        "sluice:s_1:0:05:0",
    ];
    for (n, gid) in foreign.iter().enumerate() {
        db.admin
            .batch_execute(&format!(
                "BEGIN; INSERT INTO foreign_rows VALUES ({n}); PREPARE TRANSACTION '{gid}'"
            ))
            .await
            .unwrap();
    }
    // An earlier run of this very writer left checkpoint 7 prepared.
    db.admin
        .batch_execute(
            "BEGIN; INSERT INTO own_events VALUES (9999, 'left behind'); \
             PREPARE TRANSACTION 'sluice:s_1:0:7:0'",
        )
        .await
        .unwrap();
    let other_db = fresh_database(&db.cluster);
    let other = connect(&other_db).await;
    other
        .batch_execute("BEGIN; CREATE TABLE t (id bigint); PREPARE TRANSACTION 'sluice:s_1:0:9:0'")
        .await
        .unwrap();

    let schema = events_schema("own_events", false);
    let sink = open(&db.backend, &schema, config(Delivery::TwoPhase, "s_1")).await;
    sink.recover(None, Resume::Committed).await.unwrap();
    let mut expected: Vec<String> = foreign.iter().map(|gid| gid.to_string()).collect();
    expected.sort();
    assert_eq!(prepared(&db.admin).await, expected);
    assert_eq!(count(&db.admin, "own_events").await, 0);
    sink.write(inserts(0..50)).await.unwrap();
    let first = sink.pre_commit(1, "50").await.unwrap();
    sink.commit(1).await.unwrap();
    sink.write(inserts(50..80)).await.unwrap();
    sink.pre_commit(2, "80").await.unwrap();
    sink.abort(2).await.unwrap();
    assert_eq!(prepared(&db.admin).await, expected);
    let sink = open(&db.backend, &schema, config(Delivery::TwoPhase, "s_1")).await;
    sink.recover(Some(&first), Resume::Committed).await.unwrap();
    sink.close().await.unwrap();
    assert_eq!(prepared(&db.admin).await, expected);
    assert_eq!(prepared(&other).await, ["sluice:s_1:0:9:0"]);
    assert_each_once(&id_counts(&db, &schema).await, 0..50);

    for gid in foreign {
        db.admin
            .batch_execute(&format!("ROLLBACK PREPARED '{gid}'"))
            .await
            .unwrap();
    }
    other
        .batch_execute("ROLLBACK PREPARED 'sluice:s_1:0:9:0'")
        .await
        .unwrap();
}

/// Two-phase with more lanes than `max_prepared_transactions` can carry (two checkpoints'
/// worth) is refused before anything is created, naming the setting, its value and the
/// minimum; so is a pool without a connection to spare for `COMMIT PREPARED`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_phase_refused_when_the_server_or_pool_cannot_carry_it() {
    let Some(db) = TestDb::start(SUITE).await else {
        return;
    };
    let schema = events_schema("refused_events", false);
    let wide = backend(&db.url, 40).await;
    let error = Sink::open(
        &wide,
        schema.clone(),
        config(Delivery::TwoPhase, "wide")
            .flush_concurrency(33)
            .batch_bytes_max(1 << 20)
            .buffer_bytes_max(64 << 20)
            .build()
            .unwrap(),
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(backend_code(&error), "postgres.max_prepared_transactions");
    let message = error.to_string();
    for part in [
        "max_prepared_transactions",
        "at least 66",
        "flush_concurrency 33",
        "max_prepared_transactions = 64",
    ] {
        assert!(message.contains(part), "{part:?} missing from {message}");
    }
    let narrow = backend(&db.url, 2).await;
    let error = Sink::open(
        &narrow,
        schema.clone(),
        config(Delivery::TwoPhase, "narrow").build().unwrap(),
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(backend_code(&error), "postgres.pool_too_small");
    // The marker's lanes hold a connection each too.
    let error = Sink::open(
        &narrow,
        schema.clone(),
        config(Delivery::TransactionalMarker, "narrow_marker")
            .flush_concurrency(3)
            .build()
            .unwrap(),
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(backend_code(&error), "postgres.pool_too_small");
    assert!(
        error.to_string().contains("transactional_marker"),
        "{error}"
    );
    let created: (Option<String>, Option<String>) = {
        let row = db
            .admin
            .query_one(
                "SELECT to_regclass('refused_events')::text, to_regclass('sluice_sink_progress')::text",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(created, (None, None), "nothing was created");
    // The marker needs no prepared transactions.
    let sink = open(
        &narrow,
        &schema,
        config(Delivery::TransactionalMarker, "narrow"),
    )
    .await;
    sink.close().await.unwrap();
}

/// Rows a CHECK constraint refuses are isolated by bisection inside the checkpoint's
/// transaction (savepoints): the good rows and the dead letters become visible together with
/// the checkpoint, once, and nothing is left open or prepared. Keyed rows go through the
/// array form of the upsert; both mechanisms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_bisected_inside_the_checkpoint() {
    let Some(db) = TestDb::start(SUITE).await else {
        return;
    };
    for (delivery, table) in [
        (Delivery::TransactionalMarker, "guarded_marker"),
        (Delivery::TwoPhase, "guarded_two_phase"),
    ] {
        db.admin
            .batch_execute(&format!(
                "CREATE TABLE \"{table}\" (id bigint PRIMARY KEY, v text CHECK (v <> 'bad'))"
            ))
            .await
            .unwrap();
        let schema = events_schema(table, true);
        let sink = open(
            &db.backend,
            &schema,
            config(delivery, table)
                .mode(Mode::Upsert)
                .batch_rows_max(64),
        )
        .await;
        sink.recover(None, Resume::Committed).await.unwrap();
        let bad = [7_i64, 100, 150];
        let rows: Vec<Row> = (0..200)
            .map(|id| {
                let v = if bad.contains(&id) { "bad" } else { "good" };
                Row::upsert(vec![id.into(), v.into()])
            })
            .collect();
        sink.write(rows).await.unwrap();
        sink.pre_commit(1, "200").await.unwrap();
        let dead_letter_table = format!("{table}_dead_letters");
        if delivery == Delivery::TwoPhase {
            assert_eq!(count(&db.admin, table).await, 0);
            assert_eq!(count(&db.admin, &dead_letter_table).await, 0);
            sink.commit(1).await.unwrap();
        }
        sink.close().await.unwrap();
        let counts = id_counts(&db, &schema).await;
        let expected: BTreeMap<i64, usize> = (0..200)
            .filter(|id| !bad.contains(id))
            .map(|id| (id, 1))
            .collect();
        assert_eq!(counts, expected, "{delivery:?}");
        let letters = db.dead_letters(&dead_letter_table).await;
        assert_eq!(letters.len(), 3, "{delivery:?}: {letters:?}");
        assert!(letters.iter().all(|l| l.error_code == "postgres.23514"));
        let stats = sink.stats();
        assert_eq!((stats.rows_written, stats.rows_dead_lettered), (197, 3));
    }
    assert!(prepared(&db.admin).await.is_empty());
    no_sink_transaction_open(&db.admin).await;
}

/// Someone commits a prepared transaction by hand (psql) before the sink's `commit`: the sink
/// finds it gone and reads the progress table, which says it was committed, so `commit`
/// succeeds. One rolled back by hand is a lost checkpoint: `commit` fails with
/// `postgres.prepared_vanished`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_prepared_done_by_hand_is_resolved_from_the_progress_table() {
    let Some(db) = TestDb::start(SUITE).await else {
        return;
    };
    let database = db.url.rsplit('/').next().unwrap().to_string();
    let psql = |sql: &'static str| {
        let cluster = db.cluster.clone();
        let database = database.clone();
        async move {
            tokio::task::spawn_blocking(move || cluster.psql_in(&database, sql))
                .await
                .unwrap()
                .expect("psql")
        }
    };
    let schema = events_schema("by_hand", false);
    let sink = open(
        &db.backend,
        &schema,
        config(Delivery::TwoPhase, "g1").flush_concurrency(1),
    )
    .await;
    sink.recover(None, Resume::Committed).await.unwrap();
    sink.write(inserts(0..50)).await.unwrap();
    sink.pre_commit(1, "50").await.unwrap();
    psql("COMMIT PREPARED 'sluice:g1:0:1:0'").await;
    sink.commit(1).await.unwrap();
    assert_eq!(count(&db.admin, "by_hand").await, 50);

    sink.write(inserts(50..80)).await.unwrap();
    sink.pre_commit(2, "80").await.unwrap();
    psql("ROLLBACK PREPARED 'sluice:g1:0:2:0'").await;
    let error = sink.commit(2).await.unwrap_err();
    assert_eq!(backend_code(&error), "postgres.prepared_vanished");
    assert!(error.to_string().contains("sluice:g1:0:2:0"), "{error}");
    assert_eq!(count(&db.admin, "by_hand").await, 50);
    assert!(prepared(&db.admin).await.is_empty());
}

/// Checkpoint 1 (rows 0..10) committed by a first run of `sink_id`, then an earlier run's
/// transaction of checkpoint 2 (rows 10..20; two-phase: lane 0's progress row, marker: every
/// lane's) left open on the returned
/// connection as the writer would leave it (the writer lock shared): the caller commits or
/// prepares it.
async fn checkpoint_2_in_flight(
    db: &TestDb,
    schema: &Schema,
    delivery: Delivery,
    sink_id: &str,
) -> sluice_sink_postgres::tokio_postgres::Client {
    let sink = open(&db.backend, schema, config(delivery, sink_id)).await;
    sink.recover(None, Resume::Committed).await.unwrap();
    sink.write(inserts(0..10)).await.unwrap();
    sink.pre_commit(1, "10").await.unwrap();
    sink.commit(1).await.unwrap();
    sink.close().await.unwrap();
    let earlier_run = connect(&db.url).await;
    earlier_run
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock_shared({}, {}); \
             INSERT INTO {} SELECT g, 'e' || g FROM generate_series(10, 19) g; \
             UPDATE sluice_sink_progress SET checkpoint_id = 2, state = '20', \
               previous_checkpoint_id = 1, previous_state = '10' \
             WHERE sink_id = '{sink_id}' AND writer_id = 0 AND {lanes}",
            sluice_sink_postgres::WRITER_LOCK_CLASS,
            sluice_sink_postgres::writer_lock_key(sink_id, 0),
            schema.table().quoted(),
            // The marker commits every lane's row (one transaction here plays them all); a
            // two-phase lane 0 prepares its own.
            lanes = if delivery == Delivery::TwoPhase {
                "lane = 0"
            } else {
                "true"
            },
        ))
        .await
        .unwrap();
    earlier_run
}

/// Marker: a process killed just after sending `COMMIT` leaves the server finishing its
/// transaction. A restarted writer's recovery must wait for it and read the progress it
/// commits; reading the progress from before it would make the new run write the same rows
/// again. The earlier run's in-flight transaction is played by a plain connection doing what
/// the writer does (the writer lock shared, rows, the progress row), left open while the new
/// sink recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marker_recovery_waits_for_a_commit_still_in_flight() {
    let Some(db) = TestDb::start(SUITE).await else {
        return;
    };
    let schema = events_schema("race_events", false);
    let earlier_run =
        checkpoint_2_in_flight(&db, &schema, Delivery::TransactionalMarker, "race").await;

    let backend = backend(&db.url, 4).await;
    let sink = open(
        &backend,
        &schema,
        config(Delivery::TransactionalMarker, "race"),
    )
    .await;
    let recovering = tokio::spawn({
        let sink = sink.clone();
        async move { sink.recover(None, Resume::Committed).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !recovering.is_finished(),
        "recovery read the progress while an earlier run's transaction was still open"
    );
    earlier_run.batch_execute("COMMIT").await.unwrap();
    let recovery = recovering.await.unwrap().unwrap();
    assert_eq!(recovery.checkpoint_id, Some(2));
    assert_eq!(recovery.state.as_deref(), Some("20"));
    // The new run goes on after the earlier run's rows: each once.
    sink.write(inserts(20..30)).await.unwrap();
    sink.pre_commit(3, "30").await.unwrap();
    sink.commit(3).await.unwrap();
    sink.close().await.unwrap();
    assert_each_once(&id_counts(&db, &schema).await, 0..30);
}

/// Two-phase: a `PREPARE TRANSACTION` the server is still running for a killed process lands
/// after recovery began. Recovery waits for the earlier run's transaction to end and resolves
/// the prepared transaction it left (here committed: its checkpoint is the restored one), so
/// no orphan is left to be committed later behind the new run's back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_phase_recovery_waits_for_a_prepare_still_in_flight() {
    let Some(db) = TestDb::start(SUITE).await else {
        return;
    };
    let schema = events_schema("tp_race_events", false);
    let earlier_run = checkpoint_2_in_flight(&db, &schema, Delivery::TwoPhase, "tprace").await;

    let backend = backend(&db.url, 4).await;
    let sink = open(&backend, &schema, config(Delivery::TwoPhase, "tprace")).await;
    let restored = sluice_sink::CheckpointState {
        sink_id: Some(SinkId::new("tprace").unwrap()),
        writer_id: 0,
        checkpoint_id: 2,
        state: "20".into(),
    };
    let recovering = tokio::spawn({
        let sink = sink.clone();
        async move { sink.recover(Some(&restored), Resume::Restored).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !recovering.is_finished(),
        "recovery finished while an earlier run's transaction was still open"
    );
    earlier_run
        .batch_execute("PREPARE TRANSACTION 'sluice:tprace:0:2:0'")
        .await
        .unwrap();
    let recovery = recovering.await.unwrap().unwrap();
    assert_eq!(recovery.checkpoint_id, Some(2));
    assert!(
        prepared(&db.admin).await.is_empty(),
        "the late prepared transaction was left behind"
    );
    sink.write(inserts(20..30)).await.unwrap();
    sink.pre_commit(3, "30").await.unwrap();
    sink.commit(3).await.unwrap();
    sink.close().await.unwrap();
    assert_each_once(&id_counts(&db, &schema).await, 0..30);
}
