//! The group-commit writer: one failing or panicking request does not undo the others, many
//! concurrent requests share transactions, and PRAGMAs are what was asked for.

use rusqlite::Connection;
use sluice_sqlite::{GroupCommitWriter, Location, OpenOptions, WriteError, open_connection};
use sluice_testkit::TempSqlite;
use std::sync::atomic::Ordering;

fn writer(temp: &TempSqlite) -> GroupCommitWriter {
    let options = OpenOptions::new(Location::File(temp.path().to_path_buf()));
    GroupCommitWriter::open(&options, 1024, 256, |connection: &Connection| {
        connection.execute_batch("CREATE TABLE t (v INTEGER PRIMARY KEY)")?;
        Ok(())
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_request_does_not_sink_its_batch() {
    let temp = TempSqlite::new();
    let writer = writer(&temp);
    let mut tasks = Vec::new();
    for v in 0..500i64 {
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move {
            writer
                .write(move |connection| -> Result<(), String> {
                    connection
                        .execute("INSERT INTO t (v) VALUES (?1)", [v])
                        .map_err(|e| e.to_string())?;
                    if v % 10 == 3 {
                        // Written, then refused: its savepoint must be rolled back.
                        return Err(format!("refused {v}"));
                    }
                    if v % 10 == 7 {
                        panic!("panicked {v}");
                    }
                    Ok(())
                })
                .await
        }));
    }
    let mut refused = 0;
    let mut panicked = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => {}
            Err(WriteError::Job(_)) => refused += 1,
            Err(WriteError::Panicked(message)) => {
                assert!(message.starts_with("panicked"));
                panicked += 1
            }
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!((refused, panicked), (50, 50));
    let stats = writer.stats();
    let (transactions, requests) = (
        stats.transactions.load(Ordering::Relaxed),
        stats.requests.load(Ordering::Relaxed),
    );
    assert_eq!(requests, 500);
    assert!(
        transactions < requests,
        "{requests} requests took {transactions} transactions"
    );

    let reader = open_connection(
        &OpenOptions::new(Location::File(temp.path().to_path_buf())),
        true,
    )
    .unwrap();
    let (count, bad): (i64, i64) = reader
        .query_row("SELECT COUNT(*), SUM(v % 10 IN (3, 7)) FROM t", [], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .unwrap();
    assert_eq!((count, bad), (400, 0));
}

#[test]
fn pragmas_are_read_back() {
    let temp = TempSqlite::new();
    let connection = open_connection(
        &OpenOptions::new(Location::File(temp.path().to_path_buf())),
        false,
    )
    .unwrap();
    let mode: String = connection
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    let synchronous: i64 = connection
        .query_row("PRAGMA synchronous", [], |row| row.get(0))
        .unwrap();
    assert_eq!((mode.as_str(), synchronous), ("wal", 2));
    assert!(
        rusqlite::version_number() >= sluice_sqlite::SQLITE_VERSION_MIN,
        "{}",
        rusqlite::version()
    );
}

/// The bundled SQLite is built without memory statistics (`.cargo/config.toml`): with them,
/// every `sqlite3_malloc`/`sqlite3_free` locks a global mutex, 12% of the sink's SQLite writer
/// thread in its profile.
#[test]
fn sqlite_is_built_without_memory_statistics() {
    let connection = open_connection(&OpenOptions::new(Location::Memory), false).unwrap();
    let mut statement = connection.prepare("PRAGMA compile_options").unwrap();
    let options: Vec<String> = statement
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        options.iter().any(|option| option == "DEFAULT_MEMSTATUS=0"),
        "{options:?}"
    );
}

/// Regression: without the query planner stability guarantee every cached statement with a
/// bound `LIMIT ?` or range was re-prepared on each use (rusqlite clears bindings when it
/// returns a statement to its cache), costing 11% of CPU in the orchestration benchmark.
#[test]
fn cached_statements_are_not_re_prepared() {
    let connection = open_connection(&OpenOptions::new(Location::Memory), false).unwrap();
    connection
        .execute_batch(
            "CREATE TABLE inbox (id INTEGER PRIMARY KEY, owner TEXT, due INTEGER);
             CREATE INDEX inbox_due ON inbox (due);
             INSERT INTO inbox (owner, due) VALUES ('a', 1), ('b', 2), ('c', 3);",
        )
        .unwrap();
    let sql = "SELECT owner FROM inbox WHERE due <= ?1 ORDER BY id LIMIT ?2";
    for due in 0..20i64 {
        let mut statement = connection.prepare_cached(sql).unwrap();
        let owners: Vec<String> = statement
            .query_map([due, 2], |row| row.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(owners.len(), due.clamp(0, 2) as usize);
        assert_eq!(
            statement.get_status(rusqlite::StatementStatus::RePrepare),
            0,
            "use {due}"
        );
    }
}

fn reader(temp: &TempSqlite) -> Connection {
    open_connection(
        &OpenOptions::new(Location::File(temp.path().to_path_buf())),
        true,
    )
    .unwrap()
}

fn values(connection: &Connection) -> Vec<i64> {
    connection
        .prepare("SELECT v FROM t ORDER BY v")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn insert(v: i64) -> impl FnOnce(&Connection) -> Result<(), rusqlite::Error> + Send + 'static {
    move |connection| {
        connection.execute("INSERT INTO t (v) VALUES (?1)", [v])?;
        Ok(())
    }
}

/// `future`'s output if it is ready when polled once now.
async fn ready_now<F: std::future::Future + Unpin>(future: &mut F) -> Option<F::Output> {
    tokio::select! {
        biased;
        output = future => Some(output),
        () = std::future::ready(()) => None,
    }
}

/// Held writes are answered before they commit and stay invisible to other connections until
/// `commit_held`, which commits them together with its own job.
#[tokio::test]
async fn uncommitted_writes_are_invisible_until_commit_held() {
    let temp = TempSqlite::new();
    let writer = writer(&temp);
    for v in 1..=3 {
        writer.write_uncommitted(insert(v)).await.unwrap();
    }
    let reader = reader(&temp);
    assert_eq!(values(&reader), Vec::<i64>::new());
    assert_eq!(writer.stats().transactions.load(Ordering::Relaxed), 0);
    writer.commit_held(insert(4)).await.unwrap();
    assert_eq!(values(&reader), vec![1, 2, 3, 4]);
    assert_eq!(writer.stats().transactions.load(Ordering::Relaxed), 1);
    // Without a held transaction, commit_held commits its job on its own.
    writer.commit_held(insert(5)).await.unwrap();
    assert_eq!(values(&reader), vec![1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn rollback_held_discards_uncommitted_writes() {
    let temp = TempSqlite::new();
    let writer = writer(&temp);
    writer.write(insert(1)).await.unwrap();
    writer.write_uncommitted(insert(2)).await.unwrap();
    writer.write_uncommitted(insert(3)).await.unwrap();
    assert!(writer.rollback_held().await.unwrap());
    // Nothing is held any more.
    assert!(!writer.rollback_held().await.unwrap());
    assert_eq!(values(&reader(&temp)), vec![1]);
    writer.write(insert(2)).await.unwrap();
    assert_eq!(values(&reader(&temp)), vec![1, 2]);
    assert_eq!(writer.stats().held_rollbacks.load(Ordering::Relaxed), 1);
}

/// A plain write that runs inside a held transaction is durable only when that transaction
/// commits, so it is answered then (and told of a rollback).
#[tokio::test]
async fn plain_write_inside_a_held_transaction_is_answered_at_its_end() {
    let temp = TempSqlite::new();
    let writer = writer(&temp);
    for (v, commit) in [(10, true), (20, false)] {
        writer.write_uncommitted(insert(v)).await.unwrap();
        let (ran, has_run) = tokio::sync::oneshot::channel();
        let mut plain = Box::pin(writer.write(move |connection| {
            connection.execute("INSERT INTO t (v) VALUES (?1)", [v + 1])?;
            let _ = ran.send(());
            Ok::<_, rusqlite::Error>(())
        }));
        tokio::select! {
            biased;
            _ = &mut plain => panic!("a plain write in a held transaction was answered early"),
            _ = has_run => {}
        }
        // A round trip through the thread: an answer to the plain write would have been sent
        // before this one.
        writer.write_uncommitted(insert(v + 2)).await.unwrap();
        assert!(ready_now(&mut plain).await.is_none());
        assert_eq!(values(&reader(&temp)).len(), if v == 10 { 0 } else { 4 });
        if commit {
            writer.commit_held(insert(v + 3)).await.unwrap();
            let answer = ready_now(&mut plain)
                .await
                .expect("answered with the commit");
            answer.unwrap();
        } else {
            assert!(writer.rollback_held().await.unwrap());
            match plain.await {
                Err(WriteError::Transaction(message)) => {
                    assert!(message.contains("rolled back"), "{message}")
                }
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(values(&reader(&temp)), vec![10, 11, 12, 13]);
}

/// A failing request in a held transaction undoes only its own savepoint.
#[tokio::test]
async fn a_failing_uncommitted_write_rolls_back_only_its_savepoint() {
    let temp = TempSqlite::new();
    let writer = writer(&temp);
    writer.write_uncommitted(insert(1)).await.unwrap();
    let refused = writer
        .write_uncommitted(|connection| {
            connection
                .execute("INSERT INTO t (v) VALUES (2)", [])
                .map_err(|e| e.to_string())?;
            Err::<(), _>("refused after writing".to_string())
        })
        .await;
    assert!(matches!(refused, Err(WriteError::Job(_))), "{refused:?}");
    // A constraint violation (the key 1 exists in the held transaction).
    let duplicate = writer.write_uncommitted(insert(1)).await;
    assert!(
        matches!(duplicate, Err(WriteError::Job(_))),
        "{duplicate:?}"
    );
    let panicked = writer
        .write_uncommitted(|connection| -> Result<(), rusqlite::Error> {
            connection.execute("INSERT INTO t (v) VALUES (4)", [])?;
            panic!("panicked after writing")
        })
        .await;
    assert!(
        matches!(panicked, Err(WriteError::Panicked(_))),
        "{panicked:?}"
    );
    writer.write_uncommitted(insert(3)).await.unwrap();
    assert_eq!(values(&reader(&temp)), Vec::<i64>::new());
    // A failing commit job commits nothing and keeps the transaction held.
    let failed_commit = writer.commit_held(insert(3)).await;
    assert!(matches!(failed_commit, Err(WriteError::Job(_))));
    assert_eq!(values(&reader(&temp)), Vec::<i64>::new());
    writer.commit_held(insert(5)).await.unwrap();
    assert_eq!(values(&reader(&temp)), vec![1, 3, 5]);
}

/// Dropping every handle while a transaction is held: nobody can commit it, so the thread
/// rolls it back.
#[tokio::test]
async fn dropping_the_writer_with_a_held_transaction_commits_nothing() {
    let temp = TempSqlite::new();
    let writer = writer(&temp);
    writer.write(insert(1)).await.unwrap();
    writer.write_uncommitted(insert(2)).await.unwrap();
    drop(writer);
    // A new writer on the file: its BEGIN IMMEDIATE waits until the old thread let go of the
    // write lock, so this reads the database after the old transaction ended.
    let options = OpenOptions::new(Location::File(temp.path().to_path_buf()));
    let reopened = GroupCommitWriter::open(&options, 8, 8, |_| Ok(())).unwrap();
    let found = reopened
        .write(|connection| Ok::<_, rusqlite::Error>(values(connection)))
        .await
        .unwrap();
    assert_eq!(found, vec![1]);
}

/// Only one user holds transactions on a writer; dropping the claim rolls back what it held.
#[tokio::test]
async fn the_held_claim_is_exclusive_and_rolls_back_when_dropped() {
    let temp = TempSqlite::new();
    let writer = writer(&temp);
    let claim = writer.claim_held().expect("unclaimed");
    assert!(writer.clone().claim_held().is_none());
    writer.write_uncommitted(insert(1)).await.unwrap();
    drop(claim);
    // Queued after the claim's rollback: runs in a fresh transaction.
    writer.write(insert(2)).await.unwrap();
    assert_eq!(values(&reader(&temp)), vec![2]);
    assert_eq!(writer.stats().held_rollbacks.load(Ordering::Relaxed), 1);
    assert!(writer.claim_held().is_some());
}

/// When SQLite rolls back the whole held transaction by itself (here an `ON CONFLICT
/// ROLLBACK` constraint), every request waiting on it is told, and held requests are refused
/// until `rollback_held`: a later commit must not make only part of the held writes durable.
#[tokio::test]
async fn a_held_transaction_lost_to_sqlite_refuses_until_rolled_back() {
    let temp = TempSqlite::new();
    let options = OpenOptions::new(Location::File(temp.path().to_path_buf()));
    let writer = GroupCommitWriter::open(&options, 64, 16, |connection| {
        connection.execute_batch("CREATE TABLE t (v INTEGER PRIMARY KEY ON CONFLICT ROLLBACK)")?;
        Ok(())
    })
    .unwrap();
    writer.write_uncommitted(insert(1)).await.unwrap();
    let (ran, has_run) = tokio::sync::oneshot::channel();
    let plain = tokio::spawn({
        let writer = writer.clone();
        async move {
            writer
                .write(move |connection| {
                    connection.execute("INSERT INTO t (v) VALUES (2)", [])?;
                    let _ = ran.send(());
                    Ok::<_, rusqlite::Error>(())
                })
                .await
        }
    });
    has_run.await.unwrap();
    let lost = writer.write_uncommitted(insert(1)).await;
    assert!(matches!(lost, Err(WriteError::Transaction(_))), "{lost:?}");
    assert!(matches!(
        plain.await.unwrap(),
        Err(WriteError::Transaction(_))
    ));
    match writer.write_uncommitted(insert(3)).await {
        Err(WriteError::Transaction(message)) => assert!(message.contains("lost"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        writer.commit_held(insert(4)).await,
        Err(WriteError::Transaction(_))
    ));
    // Plain writes are not affected.
    writer.write(insert(5)).await.unwrap();
    assert!(!writer.rollback_held().await.unwrap());
    writer.write_uncommitted(insert(6)).await.unwrap();
    writer.commit_held(insert(7)).await.unwrap();
    assert_eq!(values(&reader(&temp)), vec![5, 6, 7]);
}
