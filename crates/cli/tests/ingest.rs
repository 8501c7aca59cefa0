//! `sluice ingest` end to end: the built binary reads NDJSON and CSV (plain, gzip, stdin) into
//! SQLite and PostgreSQL; malformed records land in the dead letters with position and reason;
//! bad configuration exits 2 naming the key; unmapped fields go into a JSON column by choice;
//! an existing table's column types drive the casts; and crash loops (SQLite and PostgreSQL)
//! kill the ingest with SIGKILL at random moments and check that every good record is in the
//! table exactly once and every malformed one in the dead letters exactly once.

mod common;

use common::{check_crash_letters, query, sluice};
use rusqlite::Connection;
use sluice_testkit::crash::{CrashLoop, Ended, Schedule};
use sluice_testkit::process::wait_timeout;
use sluice_testkit::{TempSqlite, pg_or_skip};
use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

/// Records in the crash-loop file, as the issue asks.
const CRASH_RECORDS: u64 = 500_000;
/// SIGKILLs in the crash loop.
const CRASH_KILLS: usize = 25;
/// Every this many records, one is malformed.
const CRASH_BAD_EVERY: u64 = 997;
/// The first run is killed after 5 ms plus up to this many milliseconds; later delays follow
/// the measured rate (see `crash_loop`).
const CRASH_FIRST_DELAY_SPREAD_MS: u64 = 100;

fn run(args: &[&str], dir: &Path) -> Output {
    common::run(args, Some(dir))
}

#[test]
fn ndjson_into_sqlite_dead_letters_malformed_lines_with_position_and_reason() {
    let db = TempSqlite::new();
    let dir = db.dir();
    let lines = [
        r#"{"id": 1, "name": "ä😀", "score": 1.5, "tags": {"a": [1]}}"#,
        r#"{"id": 2, "name": null, "extra": "ignored"}"#,
        "{\"id\": 3, \"name\": \"truncated",
        "",
        r#"{"id": "four"}"#,
        "[1, 2]",
        r#"{"id": 5, "name": "e", "score": 2}"#,
    ];
    std::fs::write(dir.join("in.ndjson"), lines.join("\n") + "\n").unwrap();
    let into = format!("sqlite://{}", db.path().display());
    let output = run(
        &["--from", "in.ndjson", "--into", &into, "--table", "people"],
        dir,
    );
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        query(
            db.path(),
            "SELECT id, name, score, tags FROM people ORDER BY id"
        ),
        vec![
            vec!["1", "ä😀", "1.5", r#"{"a":[1]}"#],
            vec!["2", "NULL", "NULL", "NULL"],
            vec!["5", "e", "2", "NULL"],
        ]
    );
    let letters = query(
        db.path(),
        "SELECT error_code, error, row_json FROM people_dead_letters ORDER BY id",
    );
    assert_eq!(letters.len(), 3, "{letters:?}");
    let offset = |index: usize| -> usize { lines[..index].iter().map(|line| line.len() + 1).sum() };
    let expected = [
        (2, "ingest.json.parse"),
        (4, "ingest.cast"),
        (5, "ingest.json.not_object"),
    ];
    for (letter, (line, code)) in letters.iter().zip(expected) {
        assert_eq!(letter[0], code);
        assert!(!letter[1].is_empty());
        let row: serde_json::Value = serde_json::from_str(&letter[2]).unwrap();
        assert_eq!(row["record"], lines[line]);
        assert_eq!(row["position"], format!("in.ndjson:{}", offset(line)));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("dead-lettered:  3"), "{stdout}");
    assert!(stdout.contains("rows written:   3"), "{stdout}");

    // Run again: the committed position says everything is in; nothing is written twice.
    let again = run(
        &["--from", "in.ndjson", "--into", &into, "--table", "people"],
        dir,
    );
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(query(db.path(), "SELECT count(*) FROM people"), [["3"]]);
    assert_eq!(
        query(db.path(), "SELECT count(*) FROM people_dead_letters"),
        [["3"]]
    );
}

#[test]
fn hostile_csv_into_sqlite_with_declared_columns() {
    let db = TempSqlite::new();
    let dir = db.dir();
    // BOM, a semicolon delimiter, quotes, embedded newlines and delimiters, unicode, empty
    // lines, a record with a missing field, one with an extra field, and one that does not
    // cast.
    let csv = "\u{feff}id;name;note;amount\r\n\
               1;\"Smith; John\";\"said \"\"hi\"\"\nthen left\";1.25\r\n\
               \r\n\
               2;Ünïcödé ✓;;\n\
               3;missing\n\
               4;extra;x;1;surplus\n\
               \n\
               5;bad amount;y;abc\n\
               6;\"\";\"\";-0.5\n";
    std::fs::write(dir.join("in.csv"), csv).unwrap();
    std::fs::write(
        dir.join("pipeline.toml"),
        r#"
from = "in.csv"
table = "ledger"
delimiter = ";"
mode = "upsert"
key = ["id"]

[sink]
batch_rows_max = 2

[columns]
id = { type = "i64" }
name = { type = "text" }
memo = { source = "note" }
amount = { type = "f64", default = 0 }
"#,
    )
    .unwrap();
    let into = format!("sqlite://{}", db.path().display());
    let output = run(&["--config", "pipeline.toml", "--into", &into], dir);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        query(
            db.path(),
            "SELECT id, name, memo, amount FROM ledger ORDER BY id"
        ),
        vec![
            vec!["1", "Smith; John", "said \"hi\"\nthen left", "1.25"],
            vec!["2", "Ünïcödé ✓", "", "0"],
            vec!["6", "", "", "-0.5"],
        ]
    );
    let letters = query(
        db.path(),
        "SELECT error_code, row_json FROM ledger_dead_letters ORDER BY id",
    );
    let codes: Vec<&str> = letters.iter().map(|letter| letter[0].as_str()).collect();
    assert_eq!(
        codes,
        [
            "ingest.csv.field_count",
            "ingest.csv.field_count",
            "ingest.cast"
        ]
    );
    let records: Vec<String> = letters
        .iter()
        .map(|letter| {
            let row: serde_json::Value = serde_json::from_str(&letter[1]).unwrap();
            row["record"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        records,
        ["3;missing", "4;extra;x;1;surplus", "5;bad amount;y;abc"]
    );
}

#[test]
fn gzip_and_stdin_are_sources() {
    let db = TempSqlite::new();
    let dir = db.dir();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for id in 0..500 {
        writeln!(encoder, r#"{{"id": {id}, "v": "value {id}"}}"#).unwrap();
    }
    std::fs::write(dir.join("in.ndjson.gz"), encoder.finish().unwrap()).unwrap();
    let into = format!("sqlite://{}", db.path().display());
    let output = run(
        &[
            "--from",
            "in.ndjson.gz",
            "--into",
            &into,
            "--table",
            "zipped",
        ],
        dir,
    );
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        query(db.path(), "SELECT count(*), count(DISTINCT id) FROM zipped"),
        [["500", "500"]]
    );

    let mut child = sluice()
        .args([
            "ingest", "--from", "-", "--format", "csv", "--into", &into, "--table", "piped",
        ])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"a,b\n1,x\n2,\"y,z\"\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("at least once"), "{stderr}");
    assert_eq!(
        query(db.path(), "SELECT a, b FROM piped ORDER BY a"),
        [["1", "x"], ["2", "y,z"]]
    );
}

#[test]
fn bad_configuration_exits_2_naming_the_key_before_writing() {
    let db = TempSqlite::new();
    let dir = db.dir();
    std::fs::write(dir.join("in.ndjson"), "{\"id\": 1}\n").unwrap();
    let into = format!("sqlite://{}", db.path().display());
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (
            vec![
                "--from",
                "in.ndjson",
                "--into",
                &into,
                "--table",
                "t",
                "--mode",
                "upsert",
            ],
            "",
            "key:",
        ),
        (
            vec![
                "--from",
                "in.ndjson",
                "--into",
                "mysql://u:secret@h/db",
                "--table",
                "t",
            ],
            "",
            "into:",
        ),
        (
            vec!["--from", "missing.ndjson", "--into", &into, "--table", "t"],
            "",
            "from:",
        ),
        (
            vec![
                "--from",
                "in.ndjson",
                "--into",
                &into,
                "--table",
                "bad name;",
            ],
            "",
            "table:",
        ),
        (
            vec![
                "--config",
                "pipeline.toml",
                "--from",
                "in.ndjson",
                "--into",
                &into,
                "--table",
                "t",
            ],
            "[sink]\nbatch_rows = 5\n",
            "batch_rows",
        ),
        (
            vec![
                "--config",
                "pipeline.toml",
                "--from",
                "in.ndjson",
                "--into",
                &into,
                "--table",
                "t",
            ],
            "[sink]\nbatch_rows_max = 0\n",
            "batch_rows_max",
        ),
        (
            vec![
                "--config",
                "pipeline.toml",
                "--from",
                "in.ndjson",
                "--into",
                &into,
                "--table",
                "t",
            ],
            "[columns]\nid = { type = \"i64\", default = \"x\" }\n",
            "columns.id.default",
        ),
    ];
    for (args, toml, key) in cases {
        std::fs::write(dir.join("pipeline.toml"), toml).unwrap();
        let output = run(&args, dir);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(key), "{args:?}: {stderr} should name {key}");
        assert!(!stderr.contains("secret"), "{stderr}");
    }
    // Nothing was created.
    assert!(
        query(db.path(), "SELECT name FROM sqlite_master").is_empty(),
        "a refused configuration wrote something"
    );
}

#[test]
fn ndjson_and_csv_into_postgres() {
    let Some(cluster) = pg_or_skip("ingest") else {
        return;
    };
    let url = cluster.create_database("ingest").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.ndjson"),
        "{\"id\": 1, \"doc\": {\"k\": \"v\"}}\nnot json\n{\"id\": 2, \"doc\": [1]}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("in.csv"),
        "id,name\n1,\"a,b\"\n2,\"multi\nline\"\n3\n",
    )
    .unwrap();
    let output = run(
        &["--from", "in.ndjson", "--into", &url, "--table", "docs"],
        dir.path(),
    );
    assert_eq!(output.status.code(), Some(0));
    let output = run(
        &[
            "--from", "in.csv", "--into", &url, "--table", "names", "--mode", "upsert", "--key",
            "name",
        ],
        dir.path(),
    );
    assert_eq!(output.status.code(), Some(0));
    let psql = |sql: &str| cluster.psql_in("ingest", sql).unwrap().trim().to_string();
    assert_eq!(psql("SELECT count(*) FROM docs"), "2");
    assert_eq!(
        psql("SELECT doc::text FROM docs WHERE id = 1"),
        r#"{"k": "v"}"#
    );
    assert_eq!(psql("SELECT count(*) FROM docs_dead_letters"), "1");
    assert_eq!(psql("SELECT count(*) FROM names"), "2");
    assert_eq!(
        psql("SELECT error_code FROM names_dead_letters"),
        "ingest.csv.field_count"
    );
}

/// The crash-loop file: returns how many records are malformed (every `CRASH_BAD_EVERY`th).
fn write_crash_file(path: &Path) -> u64 {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut bad = 0u64;
    for id in 0..CRASH_RECORDS {
        if is_bad(id) {
            writeln!(file, "{{\"id\": {id}, \"payload\": broken").unwrap();
            bad += 1;
        } else {
            writeln!(
                file,
                r#"{{"id": {id}, "payload": "event {id}", "n": {}}}"#,
                id * 3
            )
            .unwrap();
        }
    }
    file.flush().unwrap();
    bad
}

fn is_bad(id: u64) -> bool {
    id % CRASH_BAD_EVERY == CRASH_BAD_EVERY - 1
}

/// The sum of `n` over the good records.
fn crash_good_sum() -> u64 {
    (0..CRASH_RECORDS)
        .filter(|id| !is_bad(*id))
        .map(|id| id * 3)
        .sum()
}

/// Kills `sluice ingest --into <into>` (plus `extra` arguments) with SIGKILL at random moments
/// (`CRASH_KILLS` times) and restarts it, then runs it to the end. `committed` counts the rows
/// in the table between runs: each delay is drawn uniformly up to twice the time the measured
/// rate needs for an equal share of what is left, so the kills spread over the whole file
/// whatever the machine's speed and a run rarely finishes before its kill.
fn crash_loop(dir: &Path, into: &str, extra: &[&str], committed: impl Fn() -> u64) {
    let mut args = vec![
        "ingest",
        "--from",
        "events.ndjson",
        "--into",
        into,
        "--table",
        "events",
        "--checkpoint-interval-ms",
        "20",
    ];
    args.extend_from_slice(extra);
    let seed = Schedule::from_env("SLUICE_INGEST_CRASH_SEED", 0x1_9e57_c4a5);
    let mut crashes = CrashLoop::new(CRASH_KILLS, seed);
    let mut delay_spread_ms = CRASH_FIRST_DELAY_SPREAD_MS;
    let mut done_before = 0u64;
    // The fastest rate a run showed, rows per millisecond of its delay (start-up included).
    let mut rate_max = 0.0f64;
    while crashes.more() {
        let delay_ms = 5 + crashes.schedule().below(delay_spread_ms);
        let mut child = sluice()
            .args(&args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // A run that finishes before its kill ends the loop: later runs would find nothing.
        if let Ended::Exited(status) =
            crashes.kill_after(&mut child, Duration::from_millis(delay_ms))
        {
            assert!(status.success(), "the ingest failed: {status:?}");
            break;
        }
        let done = committed();
        rate_max = rate_max.max(done.saturating_sub(done_before) as f64 / delay_ms as f64);
        done_before = done;
        if rate_max == 0.0 {
            // Nothing committed yet: the runs die while starting.
            delay_spread_ms *= 2;
        } else {
            let share = CRASH_RECORDS.saturating_sub(done) as f64
                / (CRASH_KILLS - crashes.kills() + 3) as f64;
            delay_spread_ms = ((2.0 * share / rate_max) as u64).max(10);
        }
    }
    eprintln!("{crashes}");
    let kills = crashes.kills();
    assert!(kills >= 20, "too few kills landed: {kills}");
    let left = CRASH_RECORDS.saturating_sub(committed());
    let output = sluice()
        .args(&args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!(
        "crash loop with the final run ({left} records, malformed ones included, were left to it): {:.1} s",
        crashes.elapsed().as_secs_f64()
    );
}

/// Kills `sluice ingest` with SIGKILL at random moments and restarts it; at the end every good
/// record is in the table exactly once and every malformed one in the dead letters exactly once.
#[test]
fn crash_loop_ingests_every_record_exactly_once() {
    let db = TempSqlite::new();
    let dir = db.dir();
    let bad = write_crash_file(&dir.join("events.ndjson"));
    let into = format!("sqlite://{}", db.path().display());
    crash_loop(dir, &into, &[], || {
        let connection = Connection::open(db.path()).unwrap();
        connection
            .query_row("SELECT count(*) FROM events", [], |row| {
                row.get::<_, i64>(0)
            })
            .map_or(0, |count| count as u64)
    });
    let good = CRASH_RECORDS - bad;
    assert_eq!(
        query(
            db.path(),
            "SELECT count(*), count(DISTINCT id), sum(n) FROM events"
        ),
        [[
            good.to_string(),
            good.to_string(),
            crash_good_sum().to_string()
        ]]
    );
    let letters: Vec<String> = query(
        db.path(),
        "SELECT row_json FROM events_dead_letters ORDER BY id",
    )
    .into_iter()
    .map(|mut row| row.remove(0))
    .collect();
    check_crash_letters(&letters, bad);
}

/// The same crash loop into PostgreSQL, with `delivery` (a sink setting).
fn crash_loop_into_postgres(delivery: &str) {
    let Some(cluster) = pg_or_skip("ingest") else {
        return;
    };
    let database = format!("crash_{delivery}");
    let url = cluster.create_database(&database).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bad = write_crash_file(&dir.path().join("events.ndjson"));
    std::fs::write(
        dir.path().join("pipeline.toml"),
        format!("[sink]\ndelivery = \"{delivery}\"\n"),
    )
    .unwrap();
    let psql = |sql: &str| {
        cluster
            .psql_in(&database, sql)
            .map(|out| out.trim().to_string())
    };
    crash_loop(dir.path(), &url, &["--config", "pipeline.toml"], || {
        psql("SELECT count(*) FROM events")
            .ok()
            .and_then(|count| count.parse().ok())
            .unwrap_or(0)
    });
    let psql = |sql: &str| psql(sql).unwrap();
    let good = CRASH_RECORDS - bad;
    assert_eq!(
        psql("SELECT count(*) || ',' || count(DISTINCT id) || ',' || sum(n) FROM events"),
        format!("{good},{good},{}", crash_good_sum())
    );
    let letters: Vec<String> = psql("SELECT row_json FROM events_dead_letters ORDER BY id")
        .lines()
        .map(str::to_string)
        .collect();
    check_crash_letters(&letters, bad);
    assert_eq!(
        psql("SELECT count(*) FROM pg_prepared_xacts"),
        "0",
        "a prepared transaction was left behind"
    );
}

#[test]
fn crash_loop_into_postgres_ingests_every_record_exactly_once() {
    crash_loop_into_postgres("transactional_marker");
}

#[test]
fn crash_loop_into_postgres_with_two_phase_ingests_every_record_exactly_once() {
    crash_loop_into_postgres("two_phase");
}

#[test]
fn unmapped_fields_go_into_a_json_column_by_choice() {
    let db = TempSqlite::new();
    let dir = db.dir();
    std::fs::write(
        dir.join("in.ndjson"),
        concat!(
            r#"{"id": 1, "name": "a", "address": {"city": "Oslo", "zip": "0150"}, "tags": [1, 2], "vip": true}"#,
            "\n",
            r#"{"id": 2, "name": "b"}"#,
            "\n",
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("pipeline.toml"),
        r#"
from = "in.ndjson"
table = "people"
unmapped = { column = "extra" }

[columns]
id = { type = "i64" }
name = {}
city = { path = "address.city" }
"#,
    )
    .unwrap();
    let into = format!("sqlite://{}", db.path().display());
    let output = run(&["--config", "pipeline.toml", "--into", &into], dir);
    assert_eq!(output.status.code(), Some(0));
    // `address` is claimed by the nested path; the rest of the record is kept; a record
    // without other fields has NULL.
    assert_eq!(
        query(
            db.path(),
            "SELECT id, name, city, extra FROM people ORDER BY id"
        ),
        [
            ["1", "a", "Oslo", r#"{"tags":[1,2],"vip":true}"#],
            ["2", "b", "NULL", "NULL"],
        ]
    );

    // CSV: the header fields no column reads, as strings; with --unmapped-into.
    std::fs::write(
        dir.join("in.csv"),
        "id,name,color,size\n1,a,red,\n2,b,\"blue, dark\",XL\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("pipeline.toml"),
        "[columns]\nid = { type = \"i64\" }\nname = {}\n",
    )
    .unwrap();
    let output = run(
        &[
            "--config",
            "pipeline.toml",
            "--from",
            "in.csv",
            "--into",
            &into,
            "--table",
            "items",
            "--unmapped-into",
            "rest",
        ],
        dir,
    );
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        query(db.path(), "SELECT id, name, rest FROM items ORDER BY id"),
        [
            ["1", "a", r#"{"color":"red","size":""}"#],
            ["2", "b", r#"{"color":"blue, dark","size":"XL"}"#],
        ]
    );

    // Bad choices exit 2 naming the key.
    for (toml, key) in [
        ("unmapped = \"keep\"\n", "unmapped:"),
        (
            "unmapped = { column = \"bad name;\" }\n",
            "unmapped.column:",
        ),
        (
            "unmapped = { column = \"name\" }\n[columns]\nname = {}\n",
            "unmapped.column:",
        ),
    ] {
        std::fs::write(dir.join("pipeline.toml"), toml).unwrap();
        let output = run(
            &[
                "--config",
                "pipeline.toml",
                "--from",
                "in.ndjson",
                "--into",
                &into,
                "--table",
                "other",
            ],
            dir,
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{toml}: {stderr}");
        assert!(stderr.contains(key), "{toml}: {stderr} should name {key}");
    }
}

#[test]
fn an_existing_sqlite_table_drives_the_casts() {
    let db = TempSqlite::new();
    let dir = db.dir();
    Connection::open(db.path())
        .unwrap()
        .execute_batch(
            "CREATE TABLE readings (id INTEGER PRIMARY KEY, label TEXT NOT NULL, score REAL, \
             ok BOOLEAN, note TEXT DEFAULT 'none', amount DECIMAL(10, 2))",
        )
        .unwrap();
    // Strings that the table's types parse, a number into a text column, a record that does
    // not convert, one missing a NOT NULL column; `note` is filled by the table (the first
    // record has no such field) and `amount` (NUMERIC affinity) is left out.
    let lines = [
        r#"{"id": "1", "label": "a", "score": "1.5", "ok": "yes", "amount": 3}"#,
        r#"{"id": 2, "label": 7, "score": 2, "ok": false, "note": "x"}"#,
        r#"{"id": 3, "label": "c", "score": "high"}"#,
        r#"{"id": 4, "score": 1}"#,
    ];
    std::fs::write(dir.join("in.ndjson"), lines.join("\n") + "\n").unwrap();
    let into = format!("sqlite://{}", db.path().display());
    let output = run(
        &[
            "--from",
            "in.ndjson",
            "--into",
            &into,
            "--table",
            "readings",
            // A rollback journal: the file is not switched to WAL (which would persist).
            "--sqlite-journal",
            "rollback",
        ],
        dir,
    );
    assert_eq!(output.status.code(), Some(0));
    let mode: String = Connection::open(db.path())
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("id i64, label text, score f64, ok bool"),
        "{stderr}"
    );
    assert!(stderr.contains("note (filled by the table"), "{stderr}");
    assert!(stderr.contains("amount (type DECIMAL(10, 2)"), "{stderr}");
    assert_eq!(
        query(
            db.path(),
            "SELECT id, label, score, ok, note, amount FROM readings ORDER BY id"
        ),
        [
            ["1", "a", "1.5", "1", "none", "NULL"],
            ["2", "7", "2", "0", "none", "NULL"],
        ]
    );
    let letters = query(
        db.path(),
        "SELECT error_code, error FROM readings_dead_letters ORDER BY id",
    );
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert_eq!(letters[0][0], "ingest.cast");
    assert!(letters[0][1].contains("column score"), "{letters:?}");
    assert_eq!(letters[1][0], "ingest.missing");
    assert!(letters[1][1].contains("column label"), "{letters:?}");

    // CSV into the same table: the header decides the filled columns; text is cast.
    std::fs::write(
        dir.join("more.csv"),
        "id,label,score,ok,note\n10,j,0.5,no,given\n11,k,x,yes,\n",
    )
    .unwrap();
    let output = run(
        &["--from", "more.csv", "--into", &into, "--table", "readings"],
        dir,
    );
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        query(
            db.path(),
            "SELECT id, label, score, ok, note FROM readings WHERE id >= 10 ORDER BY id"
        ),
        [["10", "j", "0.5", "0", "given"]]
    );
    let letters = query(
        db.path(),
        "SELECT error_code, error FROM readings_dead_letters WHERE error LIKE '%score%' ORDER BY id",
    );
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(letters[1][1].contains("\"x\""), "{letters:?}");
}

#[test]
fn an_existing_postgres_table_drives_the_casts_and_keeps_unmapped_fields_in_jsonb() {
    let Some(cluster) = pg_or_skip("ingest") else {
        return;
    };
    let url = cluster.create_database("typed").unwrap();
    cluster
        .psql_in(
            "typed",
            "CREATE TABLE events (id int4 PRIMARY KEY, seen timestamptz NOT NULL, \
             amount numeric(8, 2), label varchar(5), doc jsonb, serial_no bigserial, \
             extra jsonb)",
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        r#"{"id": 1, "seen": "2026-01-02T03:04:05.5Z", "amount": 12.5, "label": "ab", "doc": {"k": [1]}, "source": "s1"}"#,
        r#"{"id": "2", "seen": "2026-01-02T03:04:05+02:00", "amount": "0.25", "label": 42}"#,
        r#"{"id": 3, "seen": "yesterday"}"#,
        r#"{"id": 4, "seen": "2026-01-02T00:00:00Z", "label": "too long"}"#,
        r#"{"id": 5, "seen": "2026-01-02T00:00:00Z", "amount": 1.234}"#,
    ];
    std::fs::write(dir.path().join("in.ndjson"), lines.join("\n") + "\n").unwrap();
    let output = run(
        &[
            "--from",
            "in.ndjson",
            "--into",
            &url,
            "--table",
            "events",
            "--unmapped-into",
            "extra",
        ],
        dir.path(),
    );
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("id i64, seen timestamp_tz, amount decimal, label text, doc json"),
        "{stderr}"
    );
    assert!(
        stderr.contains("serial_no (filled by the table"),
        "{stderr}"
    );
    let psql = |sql: &str| cluster.psql_in("typed", sql).unwrap().trim().to_string();
    assert_eq!(
        psql(
            "SET timezone = 'UTC'; SELECT id, seen, amount, label, doc::text, serial_no > 0, extra::text \
             FROM events ORDER BY id"
        ),
        "1|2026-01-02 03:04:05.5+00|12.50|ab|{\"k\": [1]}|t|{\"source\": \"s1\"}\n\
         2|2026-01-02 01:04:05+00|0.25|42||t|"
    );
    // The unparsable time is refused by the mapping; the value too long and the one with too
    // many decimals by the sink's checks against the column: all three with their reason.
    assert_eq!(
        psql("SELECT error_code FROM events_dead_letters ORDER BY error_code"),
        "ingest.cast\npostgres.value_too_long\npostgres.value_would_round"
    );
}

#[test]
fn an_oversized_line_is_dead_lettered_without_being_buffered() {
    let db = TempSqlite::new();
    let dir = db.dir();
    let huge = format!("{{\"id\": 2, \"blob\": \"{}\"}}", "x".repeat(9 << 20));
    let text = format!("{{\"id\": 1}}\n{huge}\n{{\"id\": 3}}\n");
    std::fs::write(dir.join("in.ndjson"), text).unwrap();
    let into = format!("sqlite://{}", db.path().display());
    let output = run(
        &["--from", "in.ndjson", "--into", &into, "--table", "big"],
        dir,
    );
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        query(db.path(), "SELECT id FROM big ORDER BY id"),
        [["1"], ["3"]]
    );
    let letters = query(
        db.path(),
        "SELECT error_code, length(row_json) < 4096, row_json FROM big_dead_letters",
    );
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0][0], "ingest.record_too_large");
    assert_eq!(
        letters[0][1], "1",
        "the dead letter keeps only the line's start"
    );
    let row: serde_json::Value = serde_json::from_str(&letters[0][2]).unwrap();
    assert_eq!(row["position"], "in.ndjson:10");
}

/// Reading goes on while a checkpoint is under way, into a buffer that only that checkpoint's
/// end can free: with a buffer of a few chunks and a checkpoint due every millisecond, the
/// writer regularly waits for space while a checkpoint runs. The checkpoint must still finish
/// (it is driven apart from the loop that waits) and the run must end with every record.
#[test]
fn a_full_buffer_during_a_checkpoint_does_not_stall_the_run() {
    const RECORDS: u64 = 300_000;
    // The stall this guards against depends on timing: several runs make it near certain.
    const RUNS: usize = 4;
    let db = TempSqlite::new();
    let dir = db.dir();
    let mut file =
        std::io::BufWriter::new(std::fs::File::create(dir.join("small.ndjson")).unwrap());
    for id in 0..RECORDS {
        writeln!(file, "{{\"id\":{id},\"name\":\"n{id}\"}}").unwrap();
    }
    file.into_inner().unwrap().sync_all().unwrap();
    std::fs::write(
        dir.join("pipeline.toml"),
        "checkpoint_interval_ms = 1\n\n[sink]\nbuffer_bytes_max = 524288\nbatch_bytes_max = 65536\n",
    )
    .unwrap();
    let into = format!("sqlite://{}", db.path().display());
    for run in 0..RUNS {
        let table = format!("small{run}");
        let mut child = common::spawn(
            &[
                "--from",
                "small.ndjson",
                "--into",
                &into,
                "--table",
                &table,
                "--config",
                "pipeline.toml",
            ],
            Some(dir),
        );
        if wait_timeout(&mut child, Duration::from_secs(120))
            .unwrap()
            .is_none()
        {
            child.kill().unwrap();
            let output = child.wait_with_output().unwrap();
            panic!(
                "run {run}: the ingest stalled; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{:?}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            query(
                db.path(),
                &format!("SELECT count(*), count(DISTINCT id) FROM {table}")
            ),
            [[RECORDS.to_string(), RECORDS.to_string()]]
        );
    }
}

#[test]
fn a_dry_run_shows_the_inferred_table_and_first_rows_and_writes_nothing() {
    let db = TempSqlite::new();
    let dir = db.dir();
    std::fs::write(
        dir.join("in.csv"),
        "id,zip,score,seen,at,note\n1,02134,1.5,t,2024-03-01,NA\n2,10001,2,f,NA,\"a, b\"\nx,1,1,yes,2024-03-02,c\n",
    )
    .unwrap();
    let into = format!("sqlite://{}", db.path().display());
    let args = [
        "--from",
        "in.csv",
        "--into",
        &into,
        "--table",
        "t",
        "--null",
        "NA",
        "--dry-run",
    ];
    let output = run(&args, dir);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.contains(
            "CREATE TABLE \"t\" (\"id\" TEXT, \"zip\" TEXT, \"score\" REAL, \"seen\" BOOLEAN, \"at\" INTEGER, \"note\" TEXT)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("  id | zip | score | seen | at | note\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  1 | 02134 | 1.5 | true | 2024-03-01 | NULL\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  2 | 10001 | 2 | false | NULL | a, b\n"),
        "{stdout}"
    );
    assert!(
        stdout.ends_with("nothing was written (dry run)\n"),
        "{stdout}"
    );
    assert!(!db.path().exists(), "no database file is created");
    // The id column holds "x" once the sample does, so it is text; with only the first two
    // records sampled it is an integer and "x" goes to the dead letters.
    let mut sampled = args.to_vec();
    sampled.extend(["--infer-rows-max", "2"]);
    let stdout = String::from_utf8(run(&sampled, dir).stdout).unwrap();
    assert!(stdout.contains("(\"id\" INTEGER,"), "{stdout}");
    assert!(
        stdout.contains("records among them that would go to the dead letters:\n  in.csv:"),
        "{stdout}"
    );
}
