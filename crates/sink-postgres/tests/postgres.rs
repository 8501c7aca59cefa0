//! PostgreSQL-specific behaviour beyond the compliance suite: encodings checked against
//! PostgreSQL's own text output, narrower and constrained column types, upserts into a populated
//! table, connections cut mid-batch, a COMMIT whose answer is lost, a server crash, schema
//! checks against hand-made tables, and secrets kept out of errors.

mod common;

use common::{TestDb, backend, connect, sink_backend_waiting};
use sluice_sink::compliance::{all_types_schema, edge_rows};
use sluice_sink::{
    BackendError, Column, ColumnType, CreateTable, Date, DeadLetterConfig, Decimal, Ident, Mode,
    Row, Schema, Sink, SinkConfig, SinkConfigBuilder, SinkError, Timestamp, TimestampTz, Value,
};
use sluice_sink_postgres::{PostgresBackend, PostgresSinkOptions};
use sluice_testkit::pg_or_skip;
use std::sync::Arc;

const SUITE: &str = "sink-postgres";

fn config() -> SinkConfigBuilder {
    SinkConfig::builder()
        .flush_interval_ms(5)
        .retry_backoff_initial_ms(1)
        .retry_backoff_max_ms(20)
}

fn column(name: &str, column_type: ColumnType) -> Column {
    Column::new(name, column_type).unwrap()
}

fn decimal(text: &str) -> Value {
    Value::Decimal(Decimal::parse(text).unwrap())
}

async fn open(db: &TestDb, schema: &Schema, config: SinkConfigBuilder) -> Sink {
    Sink::open(&db.backend, schema.clone(), config.build().unwrap())
        .await
        .expect("the sink opens")
}

fn mismatch_problems(error: SinkError) -> Vec<String> {
    match error {
        SinkError::Backend(BackendError::SchemaMismatch { problems, .. }) => problems,
        other => panic!("expected a schema mismatch, got {other}"),
    }
}

/// Every edge value, read back through PostgreSQL's own text output (not through this crate's
/// decoder), is what was written: the binary encodings agree with the server on epochs, byte
/// order, numeric digits and scale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encodings_agree_with_postgres_text_output() {
    let Some(db) = TestDb::start(SUITE).await else {
        return;
    };
    let schema = all_types_schema("all_types");
    let sink = open(
        &db,
        &schema,
        config()
            .mode(Mode::Upsert)
            .create_table(CreateTable::IfMissing),
    )
    .await;
    let rows = edge_rows();
    sink.write(rows.iter().cloned().map(Row::upsert).collect())
        .await
        .unwrap();
    sink.close().await.unwrap();
    db.admin
        .batch_execute("SET TimeZone = 'UTC'")
        .await
        .unwrap();
    let texts = db
        .admin
        .query(
            "SELECT id, c_bool::text, c_i64::text, c_f64::text, c_decimal::text, c_text, \
                    encode(c_bytes, 'hex'), c_json::text, c_uuid::text, c_date::text, \
                    c_timestamp::text, c_timestamp_tz::text \
             FROM all_types ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(texts.len(), rows.len());
    for (row, text) in rows.iter().zip(&texts) {
        let get = |index: usize| text.get::<_, Option<String>>(index);
        assert_eq!(Value::I64(text.get(0)), row[0]);
        for (position, value) in row.iter().enumerate().skip(1) {
            let shown = get(position);
            let Some(shown) = shown else {
                assert_eq!(value, &Value::Null, "column {position}");
                continue;
            };
            let same = match value {
                Value::Bool(v) => shown == if *v { "true" } else { "false" },
                Value::I64(v) => shown == v.to_string(),
                Value::F64(v) => {
                    let parsed: f64 = shown.parse().unwrap();
                    (v.is_nan() && parsed.is_nan()) || parsed.to_bits() == v.to_bits()
                }
                Value::Decimal(v) => shown == v.as_str(),
                Value::Text(v) => &shown == v,
                Value::Bytes(v) => {
                    shown == v.iter().map(|b| format!("{b:02x}")).collect::<String>()
                }
                Value::Json(v) => {
                    serde_json::from_str::<serde_json::Value>(&shown).unwrap() == v.to_value()
                }
                Value::Uuid(v) => shown == v.to_string(),
                Value::Date(v) => shown == v.to_string(),
                Value::Timestamp(v) => Timestamp::parse(&shown).unwrap() == *v,
                Value::TimestampTz(v) => {
                    let iso = shown.strip_suffix("+00").expect("shown in UTC");
                    TimestampTz::parse(&format!("{iso}Z")).unwrap() == *v
                }
                Value::Null => false,
            };
            assert!(
                same,
                "row {:?} column {position}: wrote {value:?}, PostgreSQL shows {shown:?}",
                row[0]
            );
        }
    }
}

/// Decimals keep every digit and their scale in an unconstrained numeric column, and print in
/// PostgreSQL exactly as written, up to 1,000 digits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numeric_edge_cases_round_trip() {
    let Some(db) = TestDb::start(SUITE).await else {
        return;
    };
    let mut texts: Vec<String> = [
        "0",
        "0.000",
        "1",
        "-1",
        "0.5",
        "-0.5",
        "0.0001",
        "0.00001",
        "9999.9999",
        "10000",
        "-10000.00010",
        "100000000",
        "12345678.9",
        "1.10",
        "-123456789012345678901234567890.000100",
        "99999999999999999999999999999999999999.99999999999999999999",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    texts.push("9".repeat(1000));
    texts.push(format!("-{}", "1234567890".repeat(100)));
    texts.push(format!("0.{}7", "0".repeat(998)));
    texts.push(format!("{}.{}", "5".repeat(500), "0".repeat(500)));
    let schema = Schema::new(
        "numbers",
        vec![
            column("id", ColumnType::I64).not_null(),
            column("v", ColumnType::Decimal),
        ],
        &["id"],
    )
    .unwrap();
    let sink = open(&db, &schema, config().create_table(CreateTable::IfMissing)).await;
    let rows: Vec<Vec<Value>> = texts
        .iter()
        .enumerate()
        .map(|(id, text)| vec![Value::I64(id as i64), decimal(text)])
        .collect();
    sink.write(rows.iter().cloned().map(Row::insert).collect())
        .await
        .unwrap();
    sink.close().await.unwrap();
    assert_eq!(sink.stats().rows_written, texts.len() as u64);
    let read = db.rows(&schema).await;
    assert_eq!(read.len(), rows.len());
    for (read, written) in read.iter().zip(&rows) {
        assert_eq!(read, written);
    }
    let shown = db
        .admin
        .query("SELECT v::text FROM numbers ORDER BY id", &[])
        .await
        .unwrap();
    for (row, text) in shown.iter().zip(&texts) {
        assert_eq!(&row.get::<_, String>(0), text);
    }
}

/// Narrower and constrained columns take the values they can hold exactly; the others are
/// dead-lettered with a clear code instead of being rounded, truncated or made infinite, and
/// a value PostgreSQL itself refuses (NUL in text) is isolated by bisection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constrained_columns_refuse_what_they_would_change() {
    let Some(db) = TestDb::start(SUITE).await else {
        return;
    };
    db.admin
        .batch_execute(
            "CREATE TABLE typed (id bigint PRIMARY KEY, small smallint, medium integer, \
             price numeric(6,2), name varchar(5), at timestamp(0), at_ms timestamptz(3), \
             doc json, born date)",
        )
        .await
        .unwrap();
    let schema = Schema::new(
        "typed",
        vec![
            column("id", ColumnType::I64).not_null(),
            column("small", ColumnType::I64),
            column("medium", ColumnType::I64),
            column("price", ColumnType::Decimal),
            column("name", ColumnType::Text),
            column("at", ColumnType::Timestamp),
            column("at_ms", ColumnType::TimestampTz),
            column("doc", ColumnType::Json),
            column("born", ColumnType::Date),
        ],
        &["id"],
    )
    .unwrap();
    let json = |text: &str| Value::Json(sluice_sink::Json::parse(text).unwrap());
    let base = |id: i64| {
        vec![
            Value::I64(id),
            Value::I64(-32_768),
            Value::I64(2_147_483_647),
            decimal("1234.50"),
            Value::Text("héllo".into()),
            Value::Timestamp(Timestamp::parse("2024-01-01T00:00:01").unwrap()),
            Value::TimestampTz(TimestampTz::parse("2024-01-01T00:00:01.123Z").unwrap()),
            json(r#"{"b": 1,  "a": 2}"#),
            Value::Date(Date::parse("0001-01-01").unwrap()),
        ]
    };
    let with = |id: i64, position: usize, value: Value| {
        let mut row = base(id);
        row[position] = value;
        row
    };
    let rows = vec![
        base(1),
        with(2, 1, Value::I64(32_768)),
        with(3, 3, decimal("1.234")),
        with(4, 4, Value::Text("toolong".into())),
        with(
            5,
            5,
            Value::Timestamp(Timestamp::parse("2024-01-01T00:00:01.5").unwrap()),
        ),
        with(6, 3, decimal("12345.6")),
        with(7, 4, Value::Text("a\0b".into())),
        with(8, 8, Value::Date(Date(i32::MAX))),
        with(9, 3, decimal("1.230")),
        with(10, 2, Value::I64(-2_147_483_649)),
    ];
    let sink = open(&db, &schema, config()).await;
    sink.write(rows.iter().cloned().map(Row::insert).collect())
        .await
        .unwrap();
    sink.close().await.unwrap();
    let stats = sink.stats();
    assert_eq!(
        (stats.rows_written, stats.rows_dead_lettered),
        (2, 8),
        "{stats:?}"
    );
    let mut stored_1 = base(1);
    stored_1[3] = decimal("1234.50");
    let mut stored_9 = base(9);
    // numeric(6,2) shows two fractional digits.
    stored_9[3] = decimal("1.23");
    assert_eq!(db.rows(&schema).await, vec![stored_1, stored_9]);
    // json keeps the text verbatim.
    let doc: String = db
        .admin
        .query_one("SELECT doc::text FROM typed WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(doc, r#"{"b": 1,  "a": 2}"#);
    let letters = db.dead_letters("typed_dead_letters").await;
    let code_of = |id: i64| {
        letters
            .iter()
            .find(|l| l.row.contains(&format!("\"id\":{id},")))
            .unwrap_or_else(|| panic!("no dead letter for {id}: {letters:?}"))
            .error_code
            .clone()
    };
    assert_eq!(code_of(2), "postgres.value_out_of_range");
    assert_eq!(code_of(3), "postgres.value_would_round");
    assert_eq!(code_of(4), "postgres.value_too_long");
    assert_eq!(code_of(5), "postgres.value_would_round");
    assert_eq!(code_of(6), "postgres.numeric_overflow");
    assert_eq!(code_of(7), "postgres.22021");
    assert_eq!(code_of(8), "postgres.value_out_of_range");
    assert_eq!(code_of(10), "postgres.value_out_of_range");
}

/// Upserts into a table where half the keys exist: existing rows are updated, missing ones
/// inserted, and table columns outside the schema keep their values (or take their defaults).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_with_half_the_keys_existing() {
    let Some(db) = TestDb::start(SUITE).await else {
        return;
    };
    db.admin
        .batch_execute(
            "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint, note text, \
               created_by text NOT NULL DEFAULT 'sink', touched integer DEFAULT 0);
             INSERT INTO accounts SELECT g, 0, 'old', 'seed', 7 FROM generate_series(0, 1998, 2) g;",
        )
        .await
        .unwrap();
    let schema = Schema::new(
        "accounts",
        vec![
            column("id", ColumnType::I64).not_null(),
            column("balance", ColumnType::I64),
            column("note", ColumnType::Text),
        ],
        &["id"],
    )
    .unwrap();
    let sink = open(
        &db,
        &schema,
        config()
            .mode(Mode::Upsert)
            .batch_rows_max(256)
            .flush_concurrency(2),
    )
    .await;
    let row = |id: i64| vec![Value::I64(id), Value::I64(id * 10), "new".into()];
    sink.write((0..2_000).map(|id| Row::upsert(row(id))).collect())
        .await
        .unwrap();
    sink.close().await.unwrap();
    assert_eq!(sink.stats().rows_written, 2_000);
    let expected: Vec<Vec<Value>> = (0..2_000).map(row).collect();
    assert_eq!(db.rows(&schema).await, expected);
    let others = db
        .admin
        .query(
            "SELECT id % 2, created_by, touched, count(*) FROM accounts GROUP BY 1, 2, 3 ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let summary: Vec<(i64, String, i32, i64)> = others
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        summary,
        vec![(0, "seed".into(), 7, 1_000), (1, "sink".into(), 0, 1_000)]
    );
}

/// A changelog batch with a row the table refuses (CHECK constraint): the batch's delete is
/// applied once, the good upserts are written, the bad one is dead-lettered with its SQLSTATE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changelog_batch_with_a_refused_row() {
    let Some(db) = TestDb::start(SUITE).await else {
        return;
    };
    db.admin
        .batch_execute(
            "CREATE TABLE items (id bigint PRIMARY KEY, v text CHECK (v <> 'bad'));
             INSERT INTO items VALUES (1, 'x'), (2, 'x'), (3, 'x');",
        )
        .await
        .unwrap();
    let schema = Schema::new(
        "items",
        vec![
            column("id", ColumnType::I64).not_null(),
            column("v", ColumnType::Text),
        ],
        &["id"],
    )
    .unwrap();
    let sink = open(
        &db,
        &schema,
        config().mode(Mode::Changelog).flush_concurrency(1),
    )
    .await;
    sink.write(vec![
        Row::delete(vec![1.into(), Value::Null]),
        Row::upsert(vec![2.into(), "bad".into()]),
        Row::upsert(vec![4.into(), "new".into()]),
        Row::upsert(vec![3.into(), "y".into()]),
    ])
    .await
    .unwrap();
    sink.close().await.unwrap();
    assert_eq!(
        db.rows(&schema).await,
        vec![
            vec![Value::I64(2), "x".into()],
            vec![3.into(), "y".into()],
            vec![4.into(), "new".into()],
        ]
    );
    let letters = db.dead_letters("items_dead_letters").await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].error_code, "postgres.23514");
    assert!(letters[0].row.contains("\"bad\""));
}

/// The sink's connection is terminated while its batch waits for a lock (mid-batch, after
/// BEGIN and the start of the COPY): nothing of the batch was committed, the retry writes it
/// once. Once for insert mode (a table without a key, where a duplicate would show) and once
/// for a changelog through the staging table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_terminated_mid_batch_is_retried_without_loss_or_duplicates() {
    let Some(db) = TestDb::start(SUITE).await else {
        return;
    };
    db.admin
        .batch_execute(
            "CREATE TABLE events (id bigint NOT NULL, v text);
             CREATE TABLE state (id bigint PRIMARY KEY, v text);
             INSERT INTO state SELECT g, 'old' FROM generate_series(0, 99) g;",
        )
        .await
        .unwrap();
    let events = Schema::new(
        "events",
        vec![
            column("id", ColumnType::I64).not_null(),
            column("v", ColumnType::Text),
        ],
        &[],
    )
    .unwrap();
    let state = events.with_table(Ident::new("state").unwrap());
    let keyed = Schema::new("state", events.columns().to_vec(), &["id"]).unwrap();

    for (schema, mode) in [(&events, Mode::Insert), (&keyed, Mode::Changelog)] {
        let sink = open(
            &db,
            schema,
            config()
                .mode(mode)
                .flush_concurrency(1)
                .batch_rows_max(10_000)
                .flush_interval_ms(60_000),
        )
        .await;
        let blocker = connect(&db.url).await;
        blocker
            .batch_execute(&format!(
                "BEGIN; LOCK TABLE {} IN SHARE MODE",
                schema.table().quoted()
            ))
            .await
            .unwrap();
        let rows: Vec<Row> = (0..100)
            .map(|id| {
                if mode == Mode::Changelog && id % 4 == 0 {
                    Row::delete(vec![Value::I64(id), Value::Null])
                } else {
                    Row::upsert(vec![Value::I64(id), format!("new {id}").into()])
                }
            })
            .map(|row| {
                if mode == Mode::Insert {
                    Row::insert(row.values)
                } else {
                    row
                }
            })
            .collect();
        sink.write(rows).await.unwrap();
        let flushing = tokio::spawn({
            let sink = sink.clone();
            async move { sink.flush().await }
        });
        let pid = sink_backend_waiting(&db.admin, "Lock").await;
        let terminated: bool = db
            .admin
            .query_one("SELECT pg_terminate_backend($1, 10000)", &[&pid])
            .await
            .unwrap()
            .get(0);
        assert!(terminated);
        blocker.batch_execute("ROLLBACK").await.unwrap();
        flushing
            .await
            .unwrap()
            .expect("the batch is retried and written");
        let stats = sink.stats();
        assert!(stats.retries >= 1, "{stats:?}");
        assert_eq!(
            (stats.rows_written, stats.rows_failed),
            (100, 0),
            "{stats:?}"
        );
        sink.close().await.unwrap();
        let expected: Vec<Vec<Value>> = (0..100)
            .filter(|id| mode == Mode::Insert || id % 4 != 0)
            .map(|id| vec![Value::I64(id), format!("new {id}").into()])
            .collect();
        let read = if mode == Mode::Insert {
            db.rows(&events).await
        } else {
            db.rows(&state).await
        };
        let mut read = read;
        read.sort_by_key(|row| match row[0] {
            Value::I64(id) => id,
            _ => unreachable!(),
        });
        assert_eq!(read, expected, "{mode:?}");
    }
}

/// The connection breaks while COMMIT waits for a synchronous standby that does not exist: the
/// transaction is committed on the server but the client never hears so. The writer asks the
/// server (`txid_status`), learns it committed, and reports success: no retry, so no duplicate
/// in a table without a key. Runs on a cluster of its own (it changes a server setting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_commit_answer_is_checked_not_retried() {
    let Some(cluster) = pg_or_skip("sink-postgres lost commit answer") else {
        return;
    };
    let db = TestDb::on(Arc::new(cluster)).await;
    db.admin
        .batch_execute("CREATE TABLE events (id bigint NOT NULL, v text)")
        .await
        .unwrap();
    // ALTER SYSTEM cannot share a multi-statement query (an implicit transaction).
    for sql in [
        "ALTER SYSTEM SET synchronous_standby_names = 'sluice_missing_standby'",
        "SELECT pg_reload_conf()",
    ] {
        db.admin.batch_execute(sql).await.unwrap();
    }
    // New sessions see the setting once the postmaster has reloaded it.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let probe = connect(&db.url).await;
        let value: String = probe
            .query_one("SHOW synchronous_standby_names", &[])
            .await
            .unwrap()
            .get(0);
        if value == "sluice_missing_standby" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the setting was not reloaded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // A backend whose connections all start after the reload. Preparing an existing table in
    // insert mode with a dead-letter file writes nothing, so it does not wait for the standby.
    let waiting_backend = backend(&db.url, 3).await;
    let schema = Schema::new(
        "events",
        vec![
            column("id", ColumnType::I64).not_null(),
            column("v", ColumnType::Text),
        ],
        &[],
    )
    .unwrap();
    let sink = Sink::open(
        &waiting_backend,
        schema.clone(),
        config()
            .flush_concurrency(1)
            .flush_interval_ms(60_000)
            .dead_letter(DeadLetterConfig::File {
                path: db.scratch.path().join("events.dead.jsonl"),
            })
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    sink.write(
        (0..50)
            .map(|id| Row::insert(vec![Value::I64(id), "x".into()]))
            .collect(),
    )
    .await
    .unwrap();
    let flushing = tokio::spawn({
        let sink = sink.clone();
        async move { sink.flush().await }
    });
    let pid = sink_backend_waiting(&db.admin, "SyncRep").await;
    db.admin
        .query_one("SELECT pg_terminate_backend($1, 10000)", &[&pid])
        .await
        .unwrap();
    // Commits stop waiting for the standby (waiting ones are released), so a blind retry of
    // the batch would commit a second copy rather than hang.
    for sql in [
        "ALTER SYSTEM RESET synchronous_standby_names",
        "SELECT pg_reload_conf()",
    ] {
        db.admin.batch_execute(sql).await.unwrap();
    }
    tokio::time::timeout(std::time::Duration::from_secs(60), flushing)
        .await
        .expect("the flush ends")
        .unwrap()
        .expect("the committed batch counts as written");
    let stats = sink.stats();
    assert_eq!(
        (stats.rows_written, stats.retries, stats.rows_failed),
        (50, 0, 0),
        "{stats:?}"
    );
    sink.close().await.unwrap();
    let count: i64 = db
        .admin
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 50, "written once, not retried");
}

/// The server crashes (immediate stop, WAL replay on restart) while a batch is in flight: the
/// pool drops its dead connections, retries reconnect once the server is back, and every row
/// is there once. Runs on a cluster of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_crash_mid_batch_is_retried() {
    let Some(cluster) = pg_or_skip("sink-postgres crash") else {
        return;
    };
    let db = TestDb::on(Arc::new(cluster)).await;
    db.admin
        .batch_execute("CREATE TABLE events (id bigint NOT NULL, v text)")
        .await
        .unwrap();
    let schema = Schema::new(
        "events",
        vec![
            column("id", ColumnType::I64).not_null(),
            column("v", ColumnType::Text),
        ],
        &[],
    )
    .unwrap();
    let sink = open(
        &db,
        &schema,
        config()
            .flush_concurrency(1)
            .flush_interval_ms(60_000)
            .retry_attempts_max(100)
            .retry_backoff_initial_ms(10)
            .retry_backoff_max_ms(200),
    )
    .await;
    let row = |id: i64| Row::insert(vec![Value::I64(id), format!("v{id}").into()]);
    sink.write((0..300).map(row).collect()).await.unwrap();
    sink.flush().await.unwrap();
    let blocker = connect(&db.url).await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE events IN SHARE MODE")
        .await
        .unwrap();
    sink.write((300..600).map(row).collect()).await.unwrap();
    let flushing = tokio::spawn({
        let sink = sink.clone();
        async move { sink.flush().await }
    });
    sink_backend_waiting(&db.admin, "Lock").await;
    let cluster = db.cluster.clone();
    tokio::task::spawn_blocking(move || cluster.crash_and_restart())
        .await
        .unwrap()
        .expect("crash and restart the server");
    flushing
        .await
        .unwrap()
        .expect("the batch is retried after the restart");
    let stats = sink.stats();
    assert!(stats.retries >= 1, "{stats:?}");
    assert_eq!(
        (stats.rows_written, stats.rows_failed),
        (600, 0),
        "{stats:?}"
    );
    sink.close().await.unwrap();
    let admin = connect(&db.url).await;
    let (count, distinct): (i64, i64) = {
        let row = admin
            .query_one("SELECT count(*), count(DISTINCT id) FROM events", &[])
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((count, distinct), (600, 600));
}

/// A hand-made table that fits in no way: every problem is listed at once, nothing is changed,
/// and views, case mismatches and unusable unique indexes are named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_mismatch_lists_every_problem() {
    let Some(db) = TestDb::start(SUITE).await else {
        return;
    };
    db.admin
        .batch_execute(
            "CREATE TABLE wide (
               id bigint PRIMARY KEY,
               f real,
               c character(4),
               n numeric(5,-2),
               t text,
               g bigint GENERATED ALWAYS AS (id * 2) STORED,
               a bigint GENERATED ALWAYS AS IDENTITY,
               required text NOT NULL,
               code text NOT NULL,
               \"Upper\" text
             );
             CREATE UNIQUE INDEX wide_code_partial ON wide (code) WHERE code <> '';
             ALTER TABLE wide ADD CONSTRAINT wide_t_deferred UNIQUE (t) DEFERRABLE;
             CREATE VIEW wide_view AS SELECT * FROM wide;",
        )
        .await
        .unwrap();
    let schema = |table: &str, key: &[&str]| {
        Schema::new(
            table,
            vec![
                column("t", ColumnType::Text).not_null(),
                column("f", ColumnType::F64),
                column("c", ColumnType::Text),
                column("n", ColumnType::Decimal),
                column("g", ColumnType::I64),
                column("a", ColumnType::I64),
                column("extra", ColumnType::I64),
                column("code", ColumnType::Text),
                column("upper", ColumnType::Text),
            ],
            key,
        )
        .unwrap()
    };
    let error = Sink::open(
        &db.backend,
        schema("wide", &["t"]),
        config()
            .mode(Mode::Upsert)
            .evolve(sluice_sink::Evolve::AddColumns)
            .build()
            .unwrap(),
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(error.code(), "sink.schema_mismatch");
    let problems = mismatch_problems(error);
    let needles = [
        "column f has type real (real rounds",
        "column c has type character(4)",
        "column n has type numeric(5,-2), whose negative scale",
        "column g is a generated column",
        "column a is GENERATED ALWAYS AS IDENTITY",
        // Identity columns are NOT NULL.
        "column a is NOT NULL in the table but nullable",
        "column code is NOT NULL in the table but nullable",
        "column upper is missing",
        "the table has \"Upper\"",
        "table column required is NOT NULL without a default",
        "table column id is NOT NULL without a default",
        "the key (t) is neither the primary key nor a unique",
    ];
    for needle in needles {
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "no problem mentions {needle:?}: {problems:#?}"
        );
    }
    // `extra` would be added (evolve), so it is not a problem; the case mismatch is one
    // problem (two needles) and is not added.
    assert_eq!(problems.len(), needles.len() - 1, "{problems:#?}");
    // Nothing changed: no column was added.
    let columns: i64 = db
        .admin
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'wide'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(columns, 10);

    let view = Sink::open(&db.backend, schema("wide_view", &[]), SinkConfig::default())
        .await
        .err()
        .expect("a view is refused");
    let problems = mismatch_problems(view);
    assert_eq!(
        problems,
        vec!["wide_view is a view, not a table".to_string()]
    );
}

/// A unique index (not the primary key) serves as the key, with the primary key filled by its
/// default; names that differ only in case are different tables (they are always quoted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_index_keys_and_case_sensitive_names() {
    let Some(db) = TestDb::start(SUITE).await else {
        return;
    };
    db.admin
        .batch_execute(
            "CREATE TABLE items (id bigserial PRIMARY KEY, code text NOT NULL, qty integer);
             CREATE UNIQUE INDEX items_code ON items (code);
             CREATE TABLE \"mixedcase\" (other text NOT NULL);",
        )
        .await
        .unwrap();
    let by_code = Schema::new(
        "items",
        vec![
            column("code", ColumnType::Text).not_null(),
            column("qty", ColumnType::I64),
        ],
        &["code"],
    )
    .unwrap();
    let sink = open(&db, &by_code, config().mode(Mode::Upsert)).await;
    sink.write(vec![
        Row::upsert(vec!["a".into(), 1.into()]),
        Row::upsert(vec!["b".into(), 2.into()]),
    ])
    .await
    .unwrap();
    sink.flush().await.unwrap();
    sink.write(vec![Row::upsert(vec!["a".into(), 3.into()])])
        .await
        .unwrap();
    sink.close().await.unwrap();
    assert_eq!(
        db.rows(&by_code).await,
        vec![vec![Value::from("a"), 3.into()], vec!["b".into(), 2.into()]]
    );

    let mixed = Schema::new(
        "MixedCase",
        vec![
            column("Id", ColumnType::I64).not_null(),
            column("Value", ColumnType::Text),
        ],
        &["Id"],
    )
    .unwrap();
    let sink = open(
        &db,
        &mixed,
        config()
            .mode(Mode::Upsert)
            .create_table(CreateTable::IfMissing),
    )
    .await;
    assert!(
        sink.prepare_report().created_table,
        "\"MixedCase\" is not \"mixedcase\""
    );
    sink.write(vec![Row::upsert(vec![1.into(), "one".into()])])
        .await
        .unwrap();
    sink.close().await.unwrap();
    let count: i64 = db
        .admin
        .query_one(
            "SELECT count(*) FROM \"MixedCase\" WHERE \"Value\" = 'one'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1);
    let untouched: i64 = db
        .admin
        .query_one("SELECT count(*) FROM mixedcase", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(untouched, 0);
}

/// Hostile names never reach PostgreSQL: they are refused when the schema or configuration is
/// built, and the database still has only the tables it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_identifiers_never_reach_the_database() {
    let Some(db) = TestDb::start(SUITE).await else {
        return;
    };
    db.admin
        .batch_execute("CREATE TABLE victim (id bigint)")
        .await
        .unwrap();
    for hostile in [
        "victim\"; DROP TABLE victim; --",
        "victim; DROP TABLE victim",
        "pg_temp.victim",
        "\"victim\"",
        "victim$1",
        &"v".repeat(64),
    ] {
        assert!(Ident::new(hostile).is_err(), "{hostile:?}");
        assert!(Schema::new(hostile, vec![column("id", ColumnType::I64)], &[]).is_err());
        assert!(Column::new(hostile, ColumnType::I64).is_err());
    }
    let exists: bool = db
        .admin
        .query_one("SELECT to_regclass('victim') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(exists);
}

/// A URL's password appears in no error or debug output, whether the URL is malformed or the
/// server cannot be reached. Needs no PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_stay_out_of_errors() {
    let secret = "Pa55-w0rd-never-shown";
    let bad = format!("postgres://writer:{secret}@127.0.0.1:notaport/db");
    let error = PostgresSinkOptions::new(&bad).unwrap_err();
    assert!(!format!("{error} {error:?}").contains(secret), "{error:?}");

    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let mut options =
        PostgresSinkOptions::new(&format!("postgres://writer:{secret}@127.0.0.1:1/db")).unwrap();
    options.connect_timeout_ms = 2_000;
    options.pool_acquire_timeout_ms = 2_000;
    assert!(!format!("{options:?}").contains(secret));
    let error = PostgresBackend::connect(options).await.unwrap_err();
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains(secret), "{shown}");
    assert!(shown.contains("writer@127.0.0.1:1/db"), "{shown}");
    assert_eq!(error.code(), "postgres.connection");
}

/// Connections the load does not need are closed: after a burst opened several, a trickle of
/// writes keeps one busy (the pool hands out the most recently used one first) and the others
/// are closed once idle for `pool_idle_ms_max`; the last idle one stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pooled_connections_are_closed() {
    let Some(db) = TestDb::start(SUITE).await else {
        return;
    };
    let mut options =
        PostgresSinkOptions::new(&format!("{}?application_name=trickle", db.url)).unwrap();
    options.pool_connections_max = 4;
    options.pool_idle_ms_max = 100;
    let backend = PostgresBackend::connect(options).await.unwrap();
    let schema = Schema::new("trickle", vec![column("id", ColumnType::I64)], &[]).unwrap();
    let sink = Sink::open(
        &backend,
        schema.clone(),
        config()
            .create_table(CreateTable::IfMissing)
            .flush_concurrency(3)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    {
        let pool = backend.pool();
        let held = tokio::join!(pool.get(), pool.get(), pool.get(), pool.get());
        drop((
            held.0.unwrap(),
            held.1.unwrap(),
            held.2.unwrap(),
            held.3.unwrap(),
        ));
    }
    assert_eq!(backend.pool().status().size, 4);
    let started = std::time::Instant::now();
    let mut id = 0_i64;
    while backend.pool().status().size > 1 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "still {} connections open",
            backend.pool().status().size
        );
        sink.write(vec![Row::insert(vec![id.into()])])
            .await
            .unwrap();
        id += 1;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    sink.flush().await.unwrap();
    let open: i64 = db
        .admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'trickle'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, 1, "the server sees one sink connection");
    sink.close().await.unwrap();
    assert_eq!(db.rows(&schema).await.len() as i64, id);
}

/// The sink over TLS (`sslmode=verify-full`): rows land through encrypted connections; a host
/// name the certificate does not list is refused with `postgres.tls`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_writes_over_verified_tls() {
    let Some((cluster, files)) = sluice_testkit::pg_tls_or_skip(SUITE) else {
        return;
    };
    let url = |host: &str| {
        format!(
            "postgres://postgres@{host}:{}/postgres?sslmode=verify-full&sslrootcert={}",
            cluster.port(),
            files.ca.display()
        )
    };
    let backend =
        PostgresBackend::connect(PostgresSinkOptions::new(&url(files.host_name)).unwrap())
            .await
            .unwrap();
    let schema = Schema::new("secured", vec![column("id", ColumnType::I64)], &[]).unwrap();
    let sink = Sink::open(
        &backend,
        schema,
        config()
            .create_table(CreateTable::IfMissing)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    sink.write(
        (0..100_i64)
            .map(|id| Row::insert(vec![id.into()]))
            .collect(),
    )
    .await
    .unwrap();
    sink.flush().await.unwrap();
    let client = backend.pool().get().await.unwrap();
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM secured), \
             (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 100);
    assert!(row.get::<_, bool>(1), "the connection is encrypted");

    let error = PostgresBackend::connect(PostgresSinkOptions::new(&url("127.0.0.1")).unwrap())
        .await
        .unwrap_err();
    assert_eq!(error.code(), "postgres.tls", "{error}");
    assert!(
        error.to_string().contains("does not name the host"),
        "{error}"
    );
}
