//! What the `sluice ingest` test files share: running the binary, and reading a SQLite table as
//! text.
#![allow(dead_code)] // each test file uses its part

use rusqlite::Connection;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The `sluice` binary under test.
pub(crate) fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

/// Runs `sluice ingest ARGS` (in `dir`, if given) to its end and prints what it said.
pub(crate) fn run(args: &[&str], dir: Option<&Path>) -> Output {
    let mut command = sluice();
    command.arg("ingest").args(args).stdin(Stdio::null());
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let output = command.output().expect("run sluice");
    show(&format!("sluice ingest {args:?}"), &output);
    output
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
