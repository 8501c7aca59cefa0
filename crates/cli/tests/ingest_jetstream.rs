//! `sluice ingest` from NATS JetStream end to end: the built binary reads a durable pull
//! consumer into SQLite and PostgreSQL; malformed messages land in the dead letters with their
//! stream sequence; a rerun resumes after the committed sequence; messages are acknowledged
//! once committed; bad configuration exits 2 naming the key; and a crash loop kills the ingest
//! with SIGKILL at random moments and checks every record is in the table exactly once.

mod common;

use async_nats::jetstream::{self, stream};
use common::{check_crash_letters, query, sluice};
use sluice_testkit::crash::{CrashLoop, Ended, Schedule};
use sluice_testkit::{NatsServer, TempSqlite, nats_or_skip, pg_or_skip};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

/// Messages in the crash loop's stream (what the issue asks for).
const CRASH_RECORDS: u64 = 500_000;
/// SIGKILLs in the crash loop.
const CRASH_KILLS: usize = 25;
/// Every this many messages, one is malformed.
const CRASH_BAD_EVERY: u64 = 9_973;
/// Publishes in flight before their acknowledgements are awaited.
const PUBLISH_WINDOW: usize = 2_000;

fn run(args: &[&str]) -> Output {
    common::run(args, None)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Creates stream `name` on `subjects` and publishes `messages` (subject, payload) with
/// acknowledged publishes; returns each message's stream sequence.
fn publish(
    server: &NatsServer,
    name: &str,
    subjects: &[&str],
    messages: &[(String, String)],
) -> Vec<u64> {
    runtime().block_on(async {
        let client = async_nats::connect(server.url()).await.unwrap();
        let context = jetstream::new(client);
        context
            .get_or_create_stream(stream::Config {
                name: name.to_string(),
                subjects: subjects.iter().map(|subject| subject.to_string()).collect(),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut sequences = Vec::with_capacity(messages.len());
        for window in messages.chunks(PUBLISH_WINDOW) {
            let mut pending = Vec::with_capacity(window.len());
            for (subject, payload) in window {
                pending.push(
                    context
                        .publish(subject.clone(), payload.clone().into())
                        .await
                        .unwrap(),
                );
            }
            for ack in pending {
                sequences.push(ack.await.unwrap().sequence);
            }
        }
        sequences
    })
}

/// The consumer's acknowledgement floor (stream sequence) and messages awaiting their ack.
fn consumer_state(server: &NatsServer, stream: &str, consumer: &str) -> (u64, usize) {
    runtime().block_on(async {
        let client = async_nats::connect(server.url()).await.unwrap();
        let context = jetstream::new(client);
        let stream = context.get_stream(stream).await.unwrap();
        let info = stream.consumer_info(consumer).await.unwrap();
        (info.ack_floor.stream_sequence, info.num_ack_pending)
    })
}

fn messages(subject: &str, payloads: &[&str]) -> Vec<(String, String)> {
    payloads
        .iter()
        .map(|payload| (subject.to_string(), payload.to_string()))
        .collect()
}

#[test]
fn jetstream_into_sqlite_resumes_after_the_committed_sequence_and_dead_letters_malformed_messages()
{
    let Some(server) = nats_or_skip("ingest_jetstream") else {
        return;
    };
    let db = TempSqlite::new();
    let url = server.url();
    let into = format!("sqlite://{}", db.path().display());
    let first = [
        r#"{"id": 1, "name": "a", "score": 1.5}"#,
        r#"{"id": 2, "name": "b"}"#,
        r#"{"id": 3, "name": "trunc"#,
        r#"{"id": "four"}"#,
        r#"{"id": 5, "name": "e", "score": 2}"#,
    ];
    // Interleave messages the filter excludes.
    let mut batch = Vec::new();
    for (index, payload) in first.iter().enumerate() {
        batch.push(("events.a".to_string(), payload.to_string()));
        batch.push((
            "events.b".to_string(),
            format!(r#"{{"id": {}, "name": "other"}}"#, 100 + index),
        ));
    }
    let sequences = publish(&server, "EVENTS", &["events.>"], &batch);
    let sequence_of = |index: usize| sequences[index * 2];
    let args = [
        "--from",
        &url,
        "--stream",
        "EVENTS",
        "--subject",
        "events.a",
        "--consumer",
        "ingest-events",
        "--into",
        &into,
        "--table",
        "events",
    ];
    let output = run(&args);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        query(db.path(), "SELECT id, name, score FROM events ORDER BY id"),
        vec![
            vec!["1", "a", "1.5"],
            vec!["2", "b", "NULL"],
            vec!["5", "e", "2"],
        ]
    );
    let letters = query(
        db.path(),
        "SELECT error_code, error, row_json FROM events_dead_letters ORDER BY id",
    );
    assert_eq!(letters.len(), 2, "{letters:?}");
    for (letter, (index, code)) in letters
        .iter()
        .zip([(2, "ingest.json.parse"), (3, "ingest.cast")])
    {
        assert_eq!(letter[0], code);
        assert!(!letter[1].is_empty());
        let row: serde_json::Value = serde_json::from_str(&letter[2]).unwrap();
        assert_eq!(row["record"], first[index]);
        assert_eq!(row["position"], format!("EVENTS:{}", sequence_of(index)));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("rows written:   3"), "{stdout}");
    assert!(stdout.contains("dead-lettered:  2"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "committed:      stream EVENTS at sequence {}",
            sequence_of(4)
        )),
        "{stdout}"
    );
    // Acknowledged once committed: nothing pending, the floor at the last record read.
    assert_eq!(
        consumer_state(&server, "EVENTS", "ingest-events"),
        (sequence_of(4), 0)
    );

    // Nothing new: nothing written again.
    let output = run(&args);
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("records read:   0"), "{stdout}");
    assert_eq!(query(db.path(), "SELECT count(*) FROM events"), [["3"]]);

    // New messages: only they are read.
    let more = publish(
        &server,
        "EVENTS",
        &["events.>"],
        &messages("events.a", &[r#"{"id": 6, "name": "f"}"#, "not json"]),
    );
    let output = run(&args);
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("records read:   2"), "{stdout}");
    assert_eq!(
        query(
            db.path(),
            "SELECT count(*), count(DISTINCT id), max(id) FROM events"
        ),
        [["4", "4", "6"]]
    );
    let letters = query(
        db.path(),
        "SELECT row_json FROM events_dead_letters ORDER BY id",
    );
    assert_eq!(letters.len(), 3);
    let row: serde_json::Value = serde_json::from_str(&letters[2][0]).unwrap();
    assert_eq!(row["position"], format!("EVENTS:{}", more[1]));
    assert_eq!(
        consumer_state(&server, "EVENTS", "ingest-events"),
        (more[1], 0)
    );

    // A consumer deleted meanwhile is created again from the committed sequence: nothing read twice.
    runtime().block_on(async {
        let context = jetstream::new(async_nats::connect(server.url()).await.unwrap());
        let stream = context.get_stream("EVENTS").await.unwrap();
        stream.delete_consumer("ingest-events").await.unwrap();
    });
    publish(
        &server,
        "EVENTS",
        &["events.>"],
        &messages("events.a", &[r#"{"id": 7, "name": "g"}"#]),
    );
    let output = run(&args);
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("records read:   1"), "{stdout}");
    assert_eq!(
        query(
            db.path(),
            "SELECT count(*), count(DISTINCT id), max(id) FROM events"
        ),
        [["5", "5", "7"]]
    );
}

#[test]
fn jetstream_into_postgres() {
    let Some(server) = nats_or_skip("ingest_jetstream") else {
        return;
    };
    let Some(cluster) = pg_or_skip("ingest_jetstream") else {
        return;
    };
    let database = cluster.create_database("ingest").unwrap();
    let url = server.url();
    let sequences = publish(
        &server,
        "DOCS",
        &["docs"],
        &messages(
            "docs",
            &[
                r#"{"id": 1, "doc": {"k": "v"}}"#,
                "not json",
                r#"{"id": 2, "doc": [1]}"#,
                r#"{"id": 1, "doc": {"k": "w"}}"#,
            ],
        ),
    );
    let output = run(&[
        "--from",
        &url,
        "--stream",
        "DOCS",
        "--consumer",
        "ingest-docs",
        "--into",
        &database,
        "--table",
        "docs",
        "--mode",
        "upsert",
        "--key",
        "id",
    ]);
    assert_eq!(output.status.code(), Some(0));
    let psql = |sql: &str| cluster.psql_in("ingest", sql).unwrap().trim().to_string();
    assert_eq!(psql("SELECT count(*) FROM docs"), "2");
    assert_eq!(
        psql("SELECT doc::text FROM docs WHERE id = 1"),
        r#"{"k": "w"}"#
    );
    assert_eq!(
        psql("SELECT row_json::json->>'position' FROM docs_dead_letters"),
        format!("DOCS:{}", sequences[1])
    );
    assert_eq!(
        consumer_state(&server, "DOCS", "ingest-docs"),
        (sequences[3], 0)
    );
}

#[test]
fn bad_jetstream_configuration_exits_2_naming_the_key() {
    let Some(server) = nats_or_skip("ingest_jetstream") else {
        return;
    };
    publish(
        &server,
        "CONF",
        &["conf"],
        &messages("conf", &[r#"{"id": 1}"#]),
    );
    let db = TempSqlite::new();
    let into = format!("sqlite://{}", db.path().display());
    let url = server.url();
    let cases: [(&[&str], &str); 5] = [
        (&["--from", &url, "--consumer", "c"], "stream: missing"),
        (&["--from", &url, "--stream", "CONF"], "consumer: missing"),
        (
            &["--from", &url, "--stream", "NOPE", "--consumer", "c"],
            "stream: the server has no stream",
        ),
        (
            &[
                "--from",
                &url,
                "--stream",
                "CONF",
                "--consumer",
                "c",
                "--format",
                "csv",
            ],
            "format:",
        ),
        (
            &["--from", &url, "--stream", "CONF", "--consumer", "a.b"],
            "consumer:",
        ),
    ];
    for (args, expected) in cases {
        let mut all = args.to_vec();
        all.extend(["--into", &into, "--table", "t"]);
        let output = run(&all);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert_eq!(
        query(
            db.path(),
            "SELECT count(*) FROM sqlite_master WHERE name = 't'"
        ),
        [["0"]],
        "nothing is created before the configuration is checked"
    );
    // Credentials in the URL never reach the output.
    let secret = format!("nats://user:s3cret-pw@127.0.0.1:{}", server.port());
    let output = run(&[
        "--from",
        &secret,
        "--stream",
        "CONF",
        "--consumer",
        "c",
        "--into",
        &into,
        "--table",
        "t",
    ]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!all.contains("s3cret-pw"), "{all}");
}

/// Kills `sluice ingest` from JetStream with SIGKILL at random moments and restarts it; at the
/// end every good record is in the table exactly once and every malformed one in the dead
/// letters exactly once.
#[test]
fn crash_loop_ingests_every_jetstream_record_exactly_once() {
    let Some(server) = nats_or_skip("ingest_jetstream") else {
        return;
    };
    let published = Instant::now();
    let mut batch = Vec::with_capacity(CRASH_RECORDS as usize);
    let mut bad = 0u64;
    for id in 0..CRASH_RECORDS {
        let payload = if id % CRASH_BAD_EVERY == CRASH_BAD_EVERY - 1 {
            bad += 1;
            format!("{{\"id\": {id}, \"payload\": broken")
        } else {
            format!(
                r#"{{"id": {id}, "payload": "event {id}", "n": {}}}"#,
                id * 3
            )
        };
        batch.push(("crash.events".to_string(), payload));
    }
    publish(&server, "CRASH", &["crash.>"], &batch);
    drop(batch);
    eprintln!(
        "published {CRASH_RECORDS} messages in {:?}",
        published.elapsed()
    );
    let db = TempSqlite::new();
    let into = format!("sqlite://{}", db.path().display());
    let url = server.url();
    let args = [
        "ingest",
        "--from",
        &url,
        "--stream",
        "CRASH",
        "--subject",
        "crash.events",
        "--consumer",
        "crash",
        "--into",
        &into,
        "--table",
        "events",
        "--checkpoint-interval-ms",
        "100",
    ];
    let mut crashes = CrashLoop::new(
        CRASH_KILLS,
        Schedule::from_env("SLUICE_INGEST_CRASH_SEED", 0x5eed_7e57),
    );
    while crashes.more() {
        let delay = Duration::from_millis(crashes.schedule().in_range(50..=449));
        let mut child = sluice()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if let Ended::Exited(status) = crashes.kill_after(&mut child, delay) {
            assert!(status.success(), "the ingest failed: {status:?}");
        }
    }
    let partial = query(db.path(), "SELECT count(*) FROM events")
        .first()
        .map(|row| row[0].clone());
    eprintln!("{crashes}, rows committed by then: {partial:?}");
    let kills = crashes.kills();
    assert!(kills >= 10, "too few kills landed: {kills}");
    let last = Instant::now();
    let output = sluice().args(args).stdin(Stdio::null()).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!(
        "the last run took {:?}:\n{}",
        last.elapsed(),
        String::from_utf8_lossy(&output.stdout)
    );
    let good = CRASH_RECORDS - bad;
    assert_eq!(
        query(
            db.path(),
            "SELECT count(*), count(DISTINCT id), sum(n) FROM events"
        ),
        [[
            good.to_string(),
            good.to_string(),
            ((0..CRASH_RECORDS)
                .filter(|id| id % CRASH_BAD_EVERY != CRASH_BAD_EVERY - 1)
                .map(|id| id * 3)
                .sum::<u64>())
            .to_string()
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
    // Every message acknowledged once committed.
    assert_eq!(consumer_state(&server, "CRASH", "crash").1, 0);
}

#[test]
fn at_least_once_acknowledges_after_each_flush_and_resumes_from_the_consumer() {
    let Some(server) = nats_or_skip("ingest_jetstream") else {
        return;
    };
    let db = TempSqlite::new();
    let into = format!("sqlite://{}", db.path().display());
    let url = server.url();
    let first = publish(
        &server,
        "ALO",
        &["alo"],
        &messages("alo", &[r#"{"id": 1}"#, r#"{"id": 2}"#, r#"{"id": 3}"#]),
    );
    let args = [
        "--from",
        &url,
        "--stream",
        "ALO",
        "--consumer",
        "alo",
        "--into",
        &into,
        "--table",
        "alo",
        "--at-least-once",
    ];
    let output = run(&args);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(consumer_state(&server, "ALO", "alo"), (first[2], 0));
    // No position is stored: the next run starts at the consumer's acknowledgement floor.
    publish(
        &server,
        "ALO",
        &["alo"],
        &messages("alo", &[r#"{"id": 4}"#]),
    );
    let output = run(&args);
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("records read:   1"), "{stdout}");
    assert!(stdout.contains("no position (at least once)"), "{stdout}");
    assert_eq!(
        query(db.path(), "SELECT count(*), count(DISTINCT id) FROM alo"),
        [["4", "4"]]
    );
}
