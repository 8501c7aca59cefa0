//! What the `sluice ingest` test files share: running the binary, reading a SQLite table as
//! text, and checking the crash loops' dead letters.
#![allow(dead_code)] // each test file uses its part

use rusqlite::Connection;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

/// The `sluice` binary under test.
pub(crate) fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

/// Starts `sluice ingest ARGS` (in `dir`, if given) with its output captured.
pub(crate) fn spawn(args: &[&str], dir: Option<&Path>) -> Child {
    let mut command = sluice();
    command
        .arg("ingest")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    command.spawn().expect("run sluice")
}

/// Waits for a child from [`spawn`] to exit and prints what it said, under `what`.
pub(crate) fn finish(child: Child, what: &str) -> Output {
    let output = child.wait_with_output().expect("wait for sluice");
    show(what, &output);
    output
}

/// Runs `sluice ingest ARGS` (in `dir`, if given) to its end and prints what it said.
pub(crate) fn run(args: &[&str], dir: Option<&Path>) -> Output {
    finish(spawn(args, dir), &format!("sluice ingest {args:?}"))
}

/// Prints what a finished `sluice` run said, under `what`.
pub(crate) fn show(what: &str, output: &Output) {
    eprintln!(
        "{what}: {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Rows of `sql` on the SQLite file `db`, each value as text (`NULL` for NULL).
pub(crate) fn query(db: &Path, sql: &str) -> Vec<Vec<String>> {
    try_query(db, sql).unwrap_or_else(|| panic!("{} cannot run {sql}", db.display()))
}

/// As [`query`], or `None` while the file or the statement's table does not exist yet.
pub(crate) fn try_query(db: &Path, sql: &str) -> Option<Vec<Vec<String>>> {
    if !db.exists() {
        return None;
    }
    let connection = Connection::open(db).unwrap();
    let mut statement = connection.prepare(sql).ok()?;
    let columns = statement.column_count();
    Some(
        statement
            .query_map([], |row| {
                (0..columns)
                    .map(|index| {
                        let value: rusqlite::types::Value = row.get(index)?;
                        Ok(match value {
                            rusqlite::types::Value::Null => "NULL".to_string(),
                            rusqlite::types::Value::Integer(value) => value.to_string(),
                            rusqlite::types::Value::Real(value) => value.to_string(),
                            rusqlite::types::Value::Text(value) => value,
                            rusqlite::types::Value::Blob(value) => format!("{value:?}"),
                        })
                    })
                    .collect()
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap(),
    )
}

/// Checks the dead letters' `row_json` values: exactly the malformed records, each once.
pub(crate) fn check_crash_letters(letters: &[String], bad: u64) {
    assert_eq!(letters.len() as u64, bad);
    let mut positions: Vec<String> = letters
        .iter()
        .map(|letter| {
            let row: serde_json::Value = serde_json::from_str(letter).unwrap();
            assert!(row["record"].as_str().unwrap().ends_with("broken"));
            row["position"].as_str().unwrap().to_string()
        })
        .collect();
    positions.sort();
    positions.dedup();
    assert_eq!(positions.len() as u64, bad, "a dead letter was duplicated");
}
