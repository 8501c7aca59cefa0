//! Exactly-once delivery (`transactional_marker`) on real SQLite files: rows stay in the
//! writer's held transaction until the checkpoint commits them with the progress row, a crash
//! before that leaves nothing, and recovery resumes without duplicates or gaps. (A real process
//! crash is exercised elsewhere; here a sink dropped without `close` stands in for it.)

use sluice_sink::{
    CheckpointState, Column, ColumnType, CreateTable, Delivery, Ident, Mode, Recovery, Resume, Row,
    Schema, Sink, SinkConfig, SinkId, Value,
};
use sluice_sink_sqlite::{
    Location, OpenOptions, SqliteBackend, SqliteSinkOptions, read_dead_letters, read_rows,
};
use sluice_sqlite::GroupCommitWriter;
use sluice_testkit::TempSqlite;
use std::sync::atomic::Ordering;

/// An append-only table without a key: a row written twice would show twice.
fn schema() -> Schema {
    Schema::new(
        "events",
        vec![
            Column::new("id", ColumnType::I64).unwrap().not_null(),
            Column::new("v", ColumnType::Text).unwrap(),
        ],
        &[],
    )
    .unwrap()
}

fn config(delivery: Delivery, sink_id: &str) -> SinkConfig {
    SinkConfig::builder()
        .delivery(delivery)
        .sink_id(SinkId::new(sink_id).unwrap())
        .create_table(CreateTable::IfMissing)
        .batch_rows_max(16)
        .flush_interval_ms(5)
        .build()
        .unwrap()
}

fn exactly_once() -> SinkConfig {
    config(Delivery::TransactionalMarker, "s1")
}

fn backend(temp: &TempSqlite) -> SqliteBackend {
    SqliteBackend::open(&SqliteSinkOptions::new(Location::File(
        temp.path().to_path_buf(),
    )))
    .unwrap()
}

fn reader(temp: &TempSqlite) -> rusqlite::Connection {
    sluice_sqlite::open_connection(
        &OpenOptions::new(Location::File(temp.path().to_path_buf())),
        true,
    )
    .unwrap()
}

fn rows(ids: std::ops::Range<i64>) -> Vec<Row> {
    ids.map(|id| Row::insert(vec![id.into(), format!("v{id}").into()]))
        .collect()
}

/// The committed ids, sorted (duplicates kept).
fn ids(temp: &TempSqlite) -> Vec<i64> {
    let mut ids: Vec<i64> = read_rows(&reader(temp), &schema())
        .unwrap()
        .into_iter()
        .map(|row| match row[0] {
            Value::I64(id) => id,
            ref other => panic!("{other:?}"),
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// The committed progress rows: (sink_id, writer_id, lane, checkpoint_id, state).
fn progress(temp: &TempSqlite) -> Vec<(String, i64, i64, i64, String)> {
    let connection = reader(temp);
    let mut statement = connection
        .prepare(
            "SELECT sink_id, writer_id, lane, checkpoint_id, state FROM sluice_sink_progress \
             ORDER BY sink_id, writer_id, lane",
        )
        .unwrap();
    statement
        .query_map([], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// A sink that wrote `0..committed` and checkpointed them (one checkpoint per `step` rows),
/// then wrote `committed..open` into the open transaction. Returns the sink and each
/// checkpoint's state.
async fn run_until(
    backend: &SqliteBackend,
    step: i64,
    committed: i64,
    open: i64,
) -> (Sink, Vec<CheckpointState>) {
    let sink = Sink::open(backend, schema(), exactly_once()).await.unwrap();
    sink.recover(None, Resume::Committed).await.unwrap();
    let mut states = Vec::new();
    let mut next = 0;
    while next < committed {
        let end = (next + step).min(committed);
        sink.write(rows(next..end)).await.unwrap();
        let checkpoint = states.len() as u64 + 1;
        states.push(
            sink.pre_commit(checkpoint, &format!("next={end}"))
                .await
                .unwrap(),
        );
        sink.commit(checkpoint).await.unwrap();
        next = end;
    }
    sink.write(rows(committed..open)).await.unwrap();
    // In the open transaction now, not just buffered.
    sink.flush().await.unwrap();
    (sink, states)
}

#[tokio::test]
async fn rows_are_invisible_until_pre_commit() {
    let temp = TempSqlite::new();
    let backend = backend(&temp);
    let sink = Sink::open(&backend, schema(), exactly_once())
        .await
        .unwrap();
    let recovery = sink.recover(None, Resume::Committed).await.unwrap();
    assert_eq!(recovery.checkpoint_id, None);
    sink.write(rows(0..100)).await.unwrap();
    sink.flush().await.unwrap();
    assert_eq!(ids(&temp), Vec::<i64>::new());
    assert_eq!(progress(&temp), Vec::new());
    let commits_before = backend
        .writer()
        .stats()
        .transactions
        .load(Ordering::Relaxed);
    let state = sink.pre_commit(1, "next=100").await.unwrap();
    assert_eq!(state.checkpoint_id, 1);
    // Visible as soon as pre_commit returns, all in one COMMIT with the progress row.
    assert_eq!(ids(&temp), (0..100).collect::<Vec<_>>());
    assert_eq!(
        progress(&temp),
        vec![("s1".into(), 0, 0, 1, "next=100".into())]
    );
    assert_eq!(
        backend
            .writer()
            .stats()
            .transactions
            .load(Ordering::Relaxed),
        commits_before + 1
    );
    sink.commit(1).await.unwrap();
    sink.write(rows(100..150)).await.unwrap();
    sink.flush().await.unwrap();
    assert_eq!(ids(&temp).len(), 100);
    // Rows after the last checkpoint are rolled back at close: the caller replays them.
    sink.close().await.unwrap();
    assert_eq!(ids(&temp), (0..100).collect::<Vec<_>>());
    assert_eq!(
        progress(&temp),
        vec![("s1".into(), 0, 0, 1, "next=100".into())]
    );
}

/// A crash between checkpoints: the open transaction is gone, the restored checkpoint matches
/// the database, and the replay from it writes every id exactly once.
#[tokio::test]
async fn a_crash_loses_only_the_open_transaction_and_replay_is_exactly_once() {
    let temp = TempSqlite::new();
    let crashed = backend(&temp);
    let (sink, states) = run_until(&crashed, 60, 120, 170).await;
    // The crash: no close, no abort. The new backend's writer waits for the old one's write
    // lock, which goes when the old sink's lanes and writer are gone.
    drop(sink);
    drop(crashed);

    let backend = backend(&temp);
    let sink = Sink::open(&backend, schema(), exactly_once())
        .await
        .unwrap();
    let restored = states.last().unwrap();
    let recovery = sink
        .recover(Some(restored), Resume::Restored)
        .await
        .unwrap();
    assert_eq!(
        recovery,
        Recovery {
            checkpoint_id: Some(2),
            state: Some("next=120".into()),
            committed_ahead: None,
            skipping_through: None,
            partial: None,
        }
    );
    assert_eq!(ids(&temp), (0..120).collect::<Vec<_>>());
    sink.write(rows(120..200)).await.unwrap();
    sink.pre_commit(3, "next=200").await.unwrap();
    sink.commit(3).await.unwrap();
    sink.close().await.unwrap();
    assert_eq!(ids(&temp), (0..200).collect::<Vec<_>>());
    assert_eq!(
        progress(&temp),
        vec![("s1".into(), 0, 0, 3, "next=200".into())]
    );
}

/// The processor died after `pre_commit(2)` but before recording checkpoint 2, so it restores
/// checkpoint 1 while the database holds 2. `Resume::Committed` hands back the database's
/// position; the caller seeks there.
#[tokio::test]
async fn database_ahead_resume_committed_returns_the_database_state() {
    let temp = TempSqlite::new();
    let crashed = backend(&temp);
    let (sink, states) = run_until(&crashed, 100, 200, 230).await;
    drop(sink);
    drop(crashed);

    let backend = backend(&temp);
    let sink = Sink::open(&backend, schema(), exactly_once())
        .await
        .unwrap();
    let recovery = sink
        .recover(Some(&states[0]), Resume::Committed)
        .await
        .unwrap();
    assert_eq!(
        recovery,
        Recovery {
            checkpoint_id: Some(2),
            state: Some("next=200".into()),
            committed_ahead: Some(2),
            skipping_through: None,
            partial: None,
        }
    );
    // The next checkpoint id must be past the database's.
    assert_eq!(
        sink.pre_commit(2, "next=200").await.unwrap_err().code(),
        "sink.checkpoint_order"
    );
    sink.write(rows(200..300)).await.unwrap();
    sink.pre_commit(3, "next=300").await.unwrap();
    sink.close().await.unwrap();
    assert_eq!(ids(&temp), (0..300).collect::<Vec<_>>());
}

/// The same situation with `Resume::Restored`: the caller replays from checkpoint 1 and the
/// sink drops the replayed rows up to the database's checkpoint 2.
#[tokio::test]
async fn database_ahead_resume_restored_skips_what_the_database_holds() {
    let temp = TempSqlite::new();
    let crashed = backend(&temp);
    let (sink, states) = run_until(&crashed, 100, 200, 230).await;
    drop(sink);
    drop(crashed);

    let backend = backend(&temp);
    let sink = Sink::open(&backend, schema(), exactly_once())
        .await
        .unwrap();
    let recovery = sink
        .recover(Some(&states[0]), Resume::Restored)
        .await
        .unwrap();
    assert_eq!(recovery.checkpoint_id, Some(1));
    assert_eq!(recovery.state.as_deref(), Some("next=100"));
    assert_eq!(recovery.committed_ahead, Some(2));
    assert_eq!(recovery.skipping_through, Some(2));
    // The replay of checkpoint 2: dropped.
    sink.write(rows(100..200)).await.unwrap();
    sink.pre_commit(2, "next=200").await.unwrap();
    sink.write(rows(200..300)).await.unwrap();
    sink.pre_commit(3, "next=300").await.unwrap();
    sink.close().await.unwrap();
    assert_eq!(sink.stats().rows_skipped, 100);
    assert_eq!(ids(&temp), (0..300).collect::<Vec<_>>());
    assert_eq!(
        progress(&temp),
        vec![("s1".into(), 0, 0, 3, "next=300".into())]
    );
}

/// Rows refused by a CHECK constraint: the engine bisects inside the held transaction (each
/// attempt in its own savepoint), and the good rows and the dead letters commit once, with the
/// checkpoint.
#[tokio::test]
async fn a_bad_row_is_bisected_inside_the_held_transaction() {
    let temp = TempSqlite::new();
    let options = OpenOptions::new(Location::File(temp.path().to_path_buf()));
    let writer = GroupCommitWriter::open(&options, 64, 16, |connection| {
        connection.execute_batch(
            "CREATE TABLE events (id INTEGER NOT NULL, v TEXT CHECK (v <> 'bad'))",
        )?;
        Ok(())
    })
    .unwrap();
    let backend = SqliteBackend::with_writer(writer);
    let config = SinkConfig::builder()
        .delivery(Delivery::TransactionalMarker)
        .sink_id(SinkId::new("s1").unwrap())
        .batch_rows_max(64)
        .build()
        .unwrap();
    let sink = Sink::open(&backend, schema(), config).await.unwrap();
    sink.recover(None, Resume::Committed).await.unwrap();
    let batch: Vec<Row> = (0..50i64)
        .map(|id| {
            let v = if id == 17 || id == 33 {
                "bad".to_string()
            } else {
                format!("v{id}")
            };
            Row::insert(vec![id.into(), v.into()])
        })
        .collect();
    sink.write(batch).await.unwrap();
    sink.flush().await.unwrap();
    let dead_letters = Ident::new("events_dead_letters").unwrap();
    assert_eq!(ids(&temp), Vec::<i64>::new());
    assert!(
        read_dead_letters(&reader(&temp), &dead_letters)
            .unwrap()
            .is_empty()
    );
    let stats = backend.writer().stats();
    let commits_before = stats.transactions.load(Ordering::Relaxed);
    sink.pre_commit(1, "next=50").await.unwrap();
    assert_eq!(
        stats.transactions.load(Ordering::Relaxed),
        commits_before + 1
    );
    let expected: Vec<i64> = (0..50).filter(|id| *id != 17 && *id != 33).collect();
    assert_eq!(ids(&temp), expected);
    let letters = read_dead_letters(&reader(&temp), &dead_letters).unwrap();
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(
        letters
            .iter()
            .all(|letter| letter.error_code == "sqlite.constraint")
    );
    assert!(letters[0].row.contains("17") && letters[1].row.contains("33"));
    sink.close().await.unwrap();
    let stats = sink.stats();
    assert_eq!((stats.rows_written, stats.rows_dead_lettered), (48, 2));
    assert_eq!(ids(&temp), expected);
}

/// SQLite has no prepared transactions: `two_phase` is refused at open, pointing to the marker.
#[tokio::test]
async fn two_phase_is_refused() {
    let temp = TempSqlite::new();
    let backend = backend(&temp);
    let error = Sink::open(&backend, schema(), config(Delivery::TwoPhase, "s1"))
        .await
        .err()
        .expect("refused");
    assert_eq!(error.code(), "sqlite.delivery_unsupported");
    let message = error.to_string();
    assert!(
        message.contains("two_phase") && message.contains("transactional_marker"),
        "{message}"
    );
}

/// One exactly-once sink per writer: a second would share (and commit) the first one's held
/// transaction. At-least-once sinks may share the writer; once the first sink is closed, the
/// writer is free again.
#[tokio::test]
async fn one_exactly_once_sink_per_writer() {
    let temp = TempSqlite::new();
    let backend = backend(&temp);
    let first = Sink::open(&backend, schema(), exactly_once())
        .await
        .unwrap();
    first.recover(None, Resume::Committed).await.unwrap();
    let other = Schema::new(
        "other",
        vec![Column::new("n", ColumnType::I64).unwrap()],
        &[],
    )
    .unwrap();
    let error = Sink::open(
        &backend,
        other.clone(),
        config(Delivery::TransactionalMarker, "s2"),
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(error.code(), "sqlite.writer_held");
    let plain = Sink::open(
        &backend,
        other.clone(),
        SinkConfig::builder()
            .create_table(CreateTable::IfMissing)
            .mode(Mode::Insert)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    plain.close().await.unwrap();
    first.write(rows(0..10)).await.unwrap();
    first.pre_commit(1, "next=10").await.unwrap();
    first.close().await.unwrap();
    drop(first);
    let second = Sink::open(&backend, other, config(Delivery::TransactionalMarker, "s2"))
        .await
        .unwrap();
    assert_eq!(
        second
            .recover(None, Resume::Committed)
            .await
            .unwrap()
            .checkpoint_id,
        None
    );
    second.close().await.unwrap();
    assert_eq!(ids(&temp), (0..10).collect::<Vec<_>>());
}

/// Another writer with the same identity moved the progress row past this one's checkpoint:
/// the checkpoint is refused and nothing of it is committed.
#[tokio::test]
async fn a_progress_row_moved_by_another_writer_refuses_the_checkpoint() {
    let temp = TempSqlite::new();
    let backend = backend(&temp);
    let sink = Sink::open(&backend, schema(), exactly_once())
        .await
        .unwrap();
    sink.recover(None, Resume::Committed).await.unwrap();
    let options = OpenOptions::new(Location::File(temp.path().to_path_buf()));
    let intruder = GroupCommitWriter::open(&options, 8, 8, |_| Ok(())).unwrap();
    intruder
        .write(|connection| {
            connection.execute(
                "INSERT INTO sluice_sink_progress VALUES ('s1', 0, 0, 7, 'elsewhere', 0)",
                [],
            )
        })
        .await
        .unwrap();
    drop(intruder);
    sink.write(rows(0..20)).await.unwrap();
    let error = sink.pre_commit(1, "next=20").await.unwrap_err();
    assert_eq!(error.code(), "sink.checkpoint_lost");
    assert!(
        error.to_string().contains("sqlite.progress_ahead"),
        "{error}"
    );
    assert!(sink.close().await.is_err());
    assert_eq!(ids(&temp), Vec::<i64>::new());
    assert_eq!(
        progress(&temp),
        vec![("s1".into(), 0, 0, 7, "elsewhere".into())]
    );
}
