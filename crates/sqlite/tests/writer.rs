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
