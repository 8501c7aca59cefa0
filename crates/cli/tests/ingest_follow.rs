//! `sluice ingest --follow` end to end: NDJSON and CSV files appended to while the ingest runs
//! (a partial last line, or a CSV record with an open quoted field, becomes a record only when
//! its newline arrives) and a JetStream stream published to
//! while it runs; checkpoints commit while the reader waits; SIGTERM stops at a checkpoint with
//! exit 130 and everything written exactly once; a restart continues where it stopped.

mod common;

use async_nats::jetstream::{self, stream};
use common::try_query as query;
use sluice_testkit::process::{Signal, signal};
use sluice_testkit::{TempSqlite, nats_or_skip};
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a test waits for the ingest to commit what it expects.
const WAIT_COMMITTED: Duration = Duration::from_secs(30);

fn spawn(args: &[&str], dir: &Path) -> Child {
    common::spawn(args, Some(dir))
}

fn finish(child: Child) -> Output {
    common::finish(child, "sluice ingest --follow")
}

fn run(args: &[&str], dir: &Path) -> Output {
    common::run(args, Some(dir))
}

fn terminate(child: &Child) {
    signal(child, Signal::TERM).expect("SIGTERM the ingest");
}

fn wait_for_rows(db: &Path, table: &str, rows: usize, child: &mut Child) {
    let started = Instant::now();
    loop {
        let count = query(db, &format!("SELECT count(*) FROM {table}"))
            .map_or(0, |result| result[0][0].parse::<usize>().unwrap());
        if count == rows {
            return;
        }
        assert!(count < rows, "more rows than expected: {count} > {rows}");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the ingest exited while following"
        );
        assert!(
            started.elapsed() < WAIT_COMMITTED,
            "{count} of {rows} rows committed after {WAIT_COMMITTED:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn append(path: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file.flush().unwrap();
}

#[test]
fn follow_reads_a_growing_file_and_stops_at_a_checkpoint_on_sigterm() {
    let db = TempSqlite::new();
    let dir = db.dir();
    let file = dir.join("events.ndjson");
    std::fs::write(
        &file,
        "{\"id\": 1, \"name\": \"a\"}\n{\"id\": 2, \"name\": \"b\"}\n\n{\"id\": 3, \"name\": \"c\"}\n{\"id\": 4, \"na",
    )
    .unwrap();
    let into = format!("sqlite://{}", db.path().display());
    let args = [
        "--from",
        "events.ndjson",
        "--into",
        &into,
        "--table",
        "events",
        "--checkpoint-interval-ms",
        "50",
    ];
    let mut follow = args.to_vec();
    follow.push("--follow");
    let mut child = spawn(&follow, dir);
    // The three complete lines are committed while the reader waits on the partial fourth.
    wait_for_rows(db.path(), "events", 3, &mut child);
    std::thread::sleep(Duration::from_millis(300));
    wait_for_rows(db.path(), "events", 3, &mut child);
    // The fourth line completes; more lines arrive, one malformed, and a partial one again.
    append(&file, "me\": \"d\"}\n");
    wait_for_rows(db.path(), "events", 4, &mut child);
    append(
        &file,
        "{\"id\": 5, \"name\": \"e\"}\nnot json\n{\"id\": 6, \"name\": \"f\"}\n{\"id\": 7,",
    );
    wait_for_rows(db.path(), "events", 6, &mut child);
    terminate(&child);
    let output = finish(child);
    assert_eq!(output.status.code(), Some(130));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("ingest stopped"), "{stdout}");
    assert!(stdout.contains("rows written:   6"), "{stdout}");
    assert!(stdout.contains("dead-lettered:  1"), "{stdout}");
    assert_eq!(
        query(db.path(), "SELECT id, name FROM events ORDER BY id").unwrap(),
        vec![
            vec!["1", "a"],
            vec!["2", "b"],
            vec!["3", "c"],
            vec!["4", "d"],
            vec!["5", "e"],
            vec!["6", "f"],
        ]
    );
    // The partial seventh line is completed after the stop: a restart (without --follow)
    // continues after the committed position and reads it once.
    append(&file, " \"name\": \"g\"}\n{\"id\": 8, \"name\": \"h\"}\n");
    let output = run(&args, dir);
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("records read:   2"), "{stdout}");
    assert_eq!(
        query(
            db.path(),
            "SELECT count(*), count(DISTINCT id), max(id) FROM events"
        )
        .unwrap(),
        [["8", "8", "8"]]
    );
    assert_eq!(
        query(db.path(), "SELECT count(*) FROM events_dead_letters").unwrap(),
        [["1"]]
    );
}

#[test]
fn follow_reads_a_growing_csv_file_a_quoted_newline_waits_for_its_record() {
    let db = TempSqlite::new();
    let dir = db.dir();
    let file = dir.join("notes.csv");
    // The second record's quoted field is still open: its newline does not end a record.
    std::fs::write(&file, "id,note\n1,plain\n2,\"multi\n").unwrap();
    let into = format!("sqlite://{}", db.path().display());
    let args = [
        "--from",
        "notes.csv",
        "--into",
        &into,
        "--table",
        "notes",
        "--checkpoint-interval-ms",
        "50",
    ];
    let mut follow = args.to_vec();
    follow.push("--follow");
    let mut child = spawn(&follow, dir);
    wait_for_rows(db.path(), "notes", 1, &mut child);
    std::thread::sleep(Duration::from_millis(300));
    wait_for_rows(db.path(), "notes", 1, &mut child);
    append(&file, "line, \"\"quoted\"\"\"\n3,\"a,b\"\n4,par");
    wait_for_rows(db.path(), "notes", 3, &mut child);
    append(&file, "tial\n");
    wait_for_rows(db.path(), "notes", 4, &mut child);
    terminate(&child);
    let output = finish(child);
    assert_eq!(output.status.code(), Some(130));
    assert_eq!(
        query(db.path(), "SELECT id, note FROM notes ORDER BY id").unwrap(),
        vec![
            vec!["1", "plain"],
            vec!["2", "multi\nline, \"quoted\""],
            vec!["3", "a,b"],
            vec!["4", "partial"],
        ]
    );
    let output = run(&args, dir);
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("records read:   0"), "{stdout}");
}

#[test]
fn follow_refuses_a_gzip_file() {
    let db = TempSqlite::new();
    let dir = db.dir();
    std::fs::write(dir.join("in.ndjson.gz"), []).unwrap();
    let into = format!("sqlite://{}", db.path().display());
    let output = run(
        &[
            "--from",
            "in.ndjson.gz",
            "--into",
            &into,
            "--table",
            "t",
            "--follow",
        ],
        dir,
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("follow:"), "{stderr}");
}

#[test]
fn follow_reads_jetstream_until_sigterm_and_a_restart_continues() {
    let Some(server) = nats_or_skip("ingest_follow") else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let context = runtime.block_on(async {
        let context = jetstream::new(async_nats::connect(server.url()).await.unwrap());
        context
            .create_stream(stream::Config {
                name: "LIVE".to_string(),
                subjects: vec!["live".to_string()],
                ..Default::default()
            })
            .await
            .unwrap();
        context
    });
    let publish = |ids: std::ops::Range<u64>| {
        runtime.block_on(async {
            for id in ids {
                context
                    .publish("live", format!(r#"{{"id": {id}}}"#).into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        })
    };
    publish(0..10);
    let db = TempSqlite::new();
    let dir = db.dir();
    let into = format!("sqlite://{}", db.path().display());
    let url = server.url();
    let args = [
        "--from",
        &url,
        "--stream",
        "LIVE",
        "--consumer",
        "live",
        "--into",
        &into,
        "--table",
        "live",
        "--checkpoint-interval-ms",
        "50",
    ];
    let mut follow = args.to_vec();
    follow.push("--follow");
    let mut child = spawn(&follow, dir);
    wait_for_rows(db.path(), "live", 10, &mut child);
    // Still running with nothing to read; new messages arrive and are committed.
    std::thread::sleep(Duration::from_millis(1_500));
    publish(10..25);
    wait_for_rows(db.path(), "live", 25, &mut child);
    terminate(&child);
    let output = finish(child);
    assert_eq!(output.status.code(), Some(130));
    let (floor, pending) = runtime.block_on(async {
        let info = context
            .get_stream("LIVE")
            .await
            .unwrap()
            .consumer_info("live")
            .await
            .unwrap();
        (info.ack_floor.stream_sequence, info.num_ack_pending)
    });
    assert_eq!(
        (floor, pending),
        (25, 0),
        "acknowledged up to what was committed"
    );
    publish(25..30);
    let output = run(&args, dir);
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("records read:   5"), "{stdout}");
    assert_eq!(
        query(
            db.path(),
            "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM live"
        )
        .unwrap(),
        [["30", "30", "0", "29"]]
    );
}

/// A consumer whose `ack_wait` is shorter than the checkpoint interval gets its messages
/// redelivered while the ingest still holds them unacknowledged: the redeliveries are skipped,
/// never written again.
#[test]
fn jetstream_redeliveries_during_a_run_are_skipped() {
    let Some(server) = nats_or_skip("ingest_follow") else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let context = runtime.block_on(async {
        let context = jetstream::new(async_nats::connect(server.url()).await.unwrap());
        let stream = context
            .create_stream(stream::Config {
                name: "AGAIN".to_string(),
                subjects: vec!["again".to_string()],
                ..Default::default()
            })
            .await
            .unwrap();
        // The ingest keeps an existing consumer that suits it (durable, ack policy all, the
        // same filter), with this one's short ack_wait.
        stream
            .create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some("again".to_string()),
                ack_policy: jetstream::consumer::AckPolicy::All,
                ack_wait: Duration::from_millis(500),
                ..Default::default()
            })
            .await
            .unwrap();
        for id in 0..100 {
            context
                .publish("again", format!(r#"{{"id": {id}}}"#).into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        context
    });
    let db = TempSqlite::new();
    let dir = db.dir();
    let into = format!("sqlite://{}", db.path().display());
    let url = server.url();
    let mut child = spawn(
        &[
            "--from",
            &url,
            "--stream",
            "AGAIN",
            "--consumer",
            "again",
            "--into",
            &into,
            "--table",
            "again",
            "--checkpoint-interval-ms",
            "2500",
            "--follow",
        ],
        dir,
    );
    wait_for_rows(db.path(), "again", 100, &mut child);
    terminate(&child);
    let output = finish(child);
    assert_eq!(output.status.code(), Some(130));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("records read:   100"), "{stdout}");
    let (deliveries, floor, pending) = runtime.block_on(async {
        let info = context
            .get_stream("AGAIN")
            .await
            .unwrap()
            .consumer_info("again")
            .await
            .unwrap();
        (
            info.delivered.consumer_sequence,
            info.ack_floor.stream_sequence,
            info.num_ack_pending,
        )
    });
    assert!(deliveries > 100, "no redelivery happened: {deliveries}");
    assert_eq!((floor, pending), (100, 0));
    assert_eq!(
        query(db.path(), "SELECT count(*), count(DISTINCT id) FROM again").unwrap(),
        [["100", "100"]]
    );
}

/// `--metrics-listen` serves the sink's and the ingest's metrics in Prometheus text format,
/// each with its HELP text, valid for `promtool check metrics` (Debian's `prometheus` package;
/// `SLUICE_REQUIRE_PROMTOOL=1` makes its absence a failure).
#[test]
fn metrics_listen_serves_valid_prometheus_text() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    std::fs::write(dir.join("in.ndjson"), "{\"id\":1}\n{\"id\":2}\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let args = [
        "--from",
        "in.ndjson",
        "--into",
        "sqlite://out.db",
        "--table",
        "events",
        "--follow",
        "--metrics-listen",
        &listen,
    ];
    let mut child = spawn(&args, dir);
    wait_for_rows(&dir.join("out.db"), "events", 2, &mut child);
    let body = scrape(&listen);
    terminate(&child);
    let output = finish(child);
    assert_eq!(output.status.code(), Some(130));
    for name in [
        "sluice_ingest_records_read_total",
        "sluice_ingest_bytes_read_total",
        "sluice_sink_rows_written_total",
    ] {
        assert!(body.contains(&format!("# HELP {name} ")), "{name}:\n{body}");
    }
    let promtool = std::path::Path::new("/usr/bin/promtool");
    if !promtool.exists() {
        assert!(
            std::env::var("SLUICE_REQUIRE_PROMTOOL").as_deref() != Ok("1"),
            "SLUICE_REQUIRE_PROMTOOL=1 but /usr/bin/promtool is missing"
        );
        eprintln!("skipped: promtool check metrics (no /usr/bin/promtool)");
        return;
    }
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let checked = check.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

/// The body of `GET /metrics` at `address`.
fn scrape(address: &str) -> String {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}
