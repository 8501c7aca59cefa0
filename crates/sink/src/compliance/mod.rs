//! The compliance suite every sink backend passes.
//!
//! A backend crate implements [`Harness`] over a fresh, empty database and instantiates the
//! suite with [`compliance_tests!`](crate::compliance_tests); each check becomes its own
//! `#[tokio::test]`. The checks go through the public [`Sink`] API only, against the real
//! database, and read the results back through the harness.

use crate::{
    Column, ColumnType, CreateTable, Date, DeadLetter, DeadLetterConfig, Decimal, Evolve, Ident,
    Json, Mode, Row, Schema, Sink, SinkBackend, SinkConfig, SinkConfigBuilder, Timestamp,
    TimestampTz, Uuid, Value,
};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::path::PathBuf;

pub mod exactly_once;
pub mod faults;

/// A backend under test over one fresh, empty database, and the means to look inside it.
#[async_trait]
pub trait Harness: Send + Sync {
    /// The backend (every call returns one over the same database).
    fn backend(&self) -> &dyn SinkBackend;
    /// Every row of `schema`'s table decoded by the schema's types: ordered by key when the
    /// schema has one, by insertion otherwise.
    async fn read_rows(&self, schema: &Schema) -> Vec<Vec<Value>>;
    /// The dead letters in `table`, oldest first.
    async fn read_dead_letters(&self, table: &Ident) -> Vec<DeadLetter>;
    /// A directory that lives as long as the harness (for dead-letter files).
    fn scratch_dir(&self) -> PathBuf;
    /// Global ids of prepared (two-phase) transactions in the database; none where the
    /// database has no such thing.
    async fn prepared_transactions(&self) -> Vec<String> {
        Vec::new()
    }
    /// Commits one prepared transaction by its global id (`COMMIT PREPARED`), as a process
    /// that died between two lanes' commits leaves it; returns whether it was there. Needed
    /// by the two-phase checks only.
    async fn commit_prepared(&self, gid: &str) -> bool {
        let _ = gid;
        false
    }
    /// Makes the next `transactional_marker` pre-commit (of the default progress table,
    /// `sluice_sink_progress`) commit only lanes below `lanes_committed` and fail the others,
    /// as a process that died between the lanes' commits leaves the database; returns
    /// whether it can. A backend that commits every lane in one transaction cannot (it has
    /// no partial checkpoints), and the check that needs it passes trivially.
    async fn fail_next_marker_commit(&self, lanes_committed: usize) -> bool {
        let _ = lanes_committed;
        false
    }
}

fn base() -> SinkConfigBuilder {
    SinkConfig::builder()
        .create_table(CreateTable::IfMissing)
        .flush_interval_ms(5)
        .retry_backoff_initial_ms(1)
        .retry_backoff_max_ms(10)
}

fn column(name: &str, column_type: ColumnType) -> Column {
    Column::new(name, column_type).expect("valid test name")
}

fn key_value_schema(table: &str) -> Schema {
    Schema::new(
        table,
        vec![
            column("id", ColumnType::I64).not_null(),
            column("v", ColumnType::Text),
        ],
        &["id"],
    )
    .expect("valid schema")
}

fn kv(id: i64, v: &str) -> Vec<Value> {
    vec![id.into(), v.into()]
}

async fn open<H: Harness>(harness: &H, schema: &Schema, config: SinkConfigBuilder) -> Sink {
    Sink::open(
        harness.backend(),
        schema.clone(),
        config.build().expect("valid config"),
    )
    .await
    .expect("the sink opens")
}

fn assert_rows_same(actual: &[Vec<Value>], expected: &[Vec<Value>]) {
    assert_eq!(
        actual.len(),
        expected.len(),
        "row count\nactual: {actual:?}\nexpected: {expected:?}"
    );
    for (index, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert_eq!(a.len(), e.len(), "row {index} width");
        for (position, (a, e)) in a.iter().zip(e).enumerate() {
            let same = match (a, e) {
                // Backends with a binary JSON type may normalise the text.
                (Value::Json(a), Value::Json(e)) => a.to_value() == e.to_value(),
                _ => a.same_as(e),
            };
            assert!(
                same,
                "row {index} value {position}: read {a:?}, wrote {e:?}"
            );
        }
    }
}

/// Insert mode appends every row, across several batches, in order (one lane).
pub async fn insert_mode_appends<H: Harness>(harness: H) {
    let schema = key_value_schema("appended");
    let sink = open(
        &harness,
        &schema,
        base().batch_rows_max(100).flush_concurrency(1),
    )
    .await;
    let mut expected = Vec::new();
    for chunk in 0..5 {
        let rows: Vec<Row> = (0..70)
            .map(|i| {
                let id = chunk * 70 + i;
                expected.push(kv(id, &format!("row {id}")));
                Row::insert(kv(id, &format!("row {id}")))
            })
            .collect();
        sink.write(rows).await.unwrap();
    }
    sink.flush().await.unwrap();
    assert_rows_same(&harness.read_rows(&schema).await, &expected);
    let stats = sink.stats();
    assert_eq!(
        (
            stats.rows_received,
            stats.rows_written,
            stats.rows_dead_lettered
        ),
        (350, 350, 0)
    );
    assert!(
        stats.batches >= 4,
        "350 rows in batches of at most 100: {stats:?}"
    );
    sink.close().await.unwrap();
}

/// Upsert mode: the last write of a key wins, within a batch and across batches and lanes.
pub async fn upsert_mode_last_write_wins<H: Harness>(harness: H) {
    let schema = key_value_schema("upserted");
    let sink = open(
        &harness,
        &schema,
        base()
            .mode(Mode::Upsert)
            .batch_rows_max(7)
            .flush_concurrency(3),
    )
    .await;
    let mut model = BTreeMap::new();
    for round in 0..6 {
        // Each write repeats keys, so batches contain duplicates.
        let rows: Vec<Row> = (0..40)
            .map(|i| {
                let id = (i * 7 + round) % 13;
                let v = format!("{round}-{i}");
                model.insert(id, v.clone());
                Row::upsert(kv(id, &v))
            })
            .collect();
        sink.write(rows).await.unwrap();
        if round == 2 {
            sink.flush().await.unwrap();
        }
    }
    // Plain inserts count as upserts in this mode.
    sink.write(vec![Row::insert(kv(100, "inserted"))])
        .await
        .unwrap();
    model.insert(100, "inserted".into());
    sink.flush().await.unwrap();
    let expected: Vec<Vec<Value>> = model.iter().map(|(id, v)| kv(*id, v)).collect();
    assert_rows_same(&harness.read_rows(&schema).await, &expected);
    let stats = sink.stats();
    assert_eq!(stats.rows_written, 241);
    assert!(
        stats.rows_coalesced > 0,
        "duplicates were reduced: {stats:?}"
    );
    sink.close().await.unwrap();
}

/// Delete mode removes the keys given (absent keys are not an error); other columns of a
/// delete are ignored.
pub async fn delete_mode_removes_keys<H: Harness>(harness: H) {
    let schema = key_value_schema("deleted");
    let upserts = open(&harness, &schema, base().mode(Mode::Upsert)).await;
    upserts
        .write((0..20).map(|id| Row::upsert(kv(id, "x"))).collect())
        .await
        .unwrap();
    upserts.close().await.unwrap();
    let deletes = open(
        &harness,
        &schema,
        base().mode(Mode::Delete).create_table(CreateTable::Never),
    )
    .await;
    let mut rows: Vec<Row> = (0..20)
        .filter(|id| id % 3 == 0)
        .map(|id| Row::delete(vec![id.into(), Value::Null]))
        .collect();
    rows.push(Row::delete(vec![500.into(), Value::Null]));
    deletes.write(rows).await.unwrap();
    deletes.flush().await.unwrap();
    let expected: Vec<Vec<Value>> = (0..20)
        .filter(|id| id % 3 != 0)
        .map(|id| kv(id, "x"))
        .collect();
    assert_rows_same(&harness.read_rows(&schema).await, &expected);
    assert_eq!(deletes.stats().rows_dead_lettered, 0);
    deletes.close().await.unwrap();
}

/// A changelog mixing upserts and deletes keeps each key's order: a delete after an upsert in
/// the same batch leaves the row absent, an upsert after a delete leaves it present, and the
/// result equals applying every change one by one.
pub async fn changelog_keeps_order_per_key<H: Harness>(harness: H) {
    let schema = key_value_schema("changes");
    let sink = open(
        &harness,
        &schema,
        base()
            .mode(Mode::Changelog)
            .batch_rows_max(5)
            .flush_concurrency(3),
    )
    .await;
    sink.write(vec![
        Row::upsert(kv(1, "a")),
        Row::delete(vec![1.into(), Value::Null]),
        Row::delete(vec![2.into(), Value::Null]),
        Row::upsert(kv(2, "b")),
    ])
    .await
    .unwrap();
    sink.flush().await.unwrap();
    assert_rows_same(&harness.read_rows(&schema).await, &[kv(2, "b")]);

    let mut model: BTreeMap<i64, String> = BTreeMap::from([(2, "b".to_string())]);
    // A deterministic pseudo-random stream over few keys, written in uneven pieces.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..30 {
        let count = (next() % 9) as usize + 1;
        let mut rows = Vec::with_capacity(count);
        for _ in 0..count {
            let id = (next() % 6) as i64;
            if next() % 3 == 0 {
                model.remove(&id);
                rows.push(Row::delete(vec![id.into(), Value::Null]));
            } else {
                let v = format!("v{}", next() % 1000);
                model.insert(id, v.clone());
                rows.push(Row::upsert(kv(id, &v)));
            }
        }
        sink.write(rows).await.unwrap();
    }
    sink.flush().await.unwrap();
    let expected: Vec<Vec<Value>> = model.iter().map(|(id, v)| kv(*id, v)).collect();
    assert_rows_same(&harness.read_rows(&schema).await, &expected);
    sink.close().await.unwrap();
}

/// Upserts and deletes by a two-column key.
pub async fn composite_key<H: Harness>(harness: H) {
    let schema = Schema::new(
        "composite",
        vec![
            column("tenant", ColumnType::Text).not_null(),
            column("id", ColumnType::I64).not_null(),
            column("v", ColumnType::I64),
        ],
        &["tenant", "id"],
    )
    .unwrap();
    let sink = open(&harness, &schema, base().mode(Mode::Changelog)).await;
    let row = |tenant: &str, id: i64, v: i64| vec![tenant.into(), id.into(), v.into()];
    sink.write(vec![
        Row::upsert(row("a", 1, 1)),
        Row::upsert(row("b", 1, 2)),
        Row::upsert(row("a", 2, 3)),
        Row::upsert(row("a", 1, 4)),
    ])
    .await
    .unwrap();
    sink.flush().await.unwrap();
    sink.write(vec![Row::delete(vec!["b".into(), 1.into(), Value::Null])])
        .await
        .unwrap();
    sink.flush().await.unwrap();
    assert_rows_same(
        &harness.read_rows(&schema).await,
        &[row("a", 1, 4), row("a", 2, 3)],
    );
    sink.close().await.unwrap();
}

/// A schema with one nullable column of every type.
pub fn all_types_schema(table: &str) -> Schema {
    let mut columns = vec![column("id", ColumnType::I64).not_null()];
    for column_type in ColumnType::ALL {
        columns.push(column(&format!("c_{}", column_type.name()), column_type));
    }
    Schema::new(table, columns, &["id"]).expect("valid schema")
}

/// Rows exercising the edges of every type, aligned to [`all_types_schema`].
pub fn edge_rows() -> Vec<Vec<Value>> {
    let decimal = |text: &str| Value::Decimal(Decimal::parse(text).unwrap());
    let json = |text: &str| Value::Json(Json::parse(text).unwrap());
    let date = |text: &str| Value::Date(Date::parse(text).unwrap());
    let timestamp = |text: &str| Value::Timestamp(Timestamp::parse(text).unwrap());
    let instant = |text: &str| Value::TimestampTz(TimestampTz::parse(text).unwrap());
    let floats = [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        -0.0,
        0.0,
        f64::MIN_POSITIVE,
        5e-324,
        f64::MAX,
        f64::MIN,
        0.1 + 0.2,
        9_007_199_254_740_993.0,
        3.0,
    ];
    let mut rows = Vec::new();
    for (index, float) in floats.into_iter().enumerate() {
        let id = index as i64 + 1;
        let row = match index % 3 {
            0 => vec![
                Value::Bool(true),
                Value::I64(i64::MIN),
                Value::F64(float),
                decimal("0"),
                Value::Text(String::new()),
                Value::Bytes(Vec::new()),
                json("{}"),
                Value::Uuid(Uuid([0; 16])),
                date("0001-01-01"),
                timestamp("0001-01-01T00:00:00"),
                instant("0001-01-01T00:00:00Z"),
            ],
            1 => vec![
                Value::Bool(false),
                Value::I64(i64::MAX),
                Value::F64(float),
                decimal("-123456789012345678901234567890.000100"),
                Value::Text(
                    "héllo wörld ✓ 🌊 中文 \u{202e}rtl 'quote' \"double\" ; DROP TABLE x; --"
                        .into(),
                ),
                Value::Bytes((0..=255).collect()),
                json(r#"{"b": [1, 2.5, "x", null], "a": {"nested": true}}"#),
                Value::Uuid(Uuid([0xff; 16])),
                date("9999-12-31"),
                timestamp("9999-12-31T23:59:59.999999"),
                instant("9999-12-31T23:59:59.999999Z"),
            ],
            _ => vec![
                Value::Bool(true),
                Value::I64(0),
                Value::F64(float),
                decimal("0.10"),
                Value::Text(" ".into()),
                Value::Bytes(vec![0]),
                json("[]"),
                Value::Uuid(Uuid::parse("0192f3a4-5b6c-7d8e-9fa0-b1c2d3e4f5a6").unwrap()),
                date("1969-12-31"),
                // A wall-clock time that does not exist in many zones (a DST gap): stored as is.
                timestamp("2024-03-10T02:30:00"),
                // Given with an offset, stored as the UTC instant.
                instant("2024-03-11T02:30:00.000001+05:30"),
            ],
        };
        let mut values = vec![Value::I64(id)];
        values.extend(row);
        rows.push(values);
    }
    let mut nulls = vec![Value::I64(100)];
    nulls.extend(std::iter::repeat_n(Value::Null, ColumnType::ALL.len()));
    rows.push(nulls);
    rows
}

/// Every type round-trips exactly: NaN, ±infinity, -0.0 and subnormals, 64-bit extremes,
/// decimals with their scale, unicode, empty text and bytes distinct from NULL, time zones
/// applied to instants and never to wall-clock timestamps, the ends of the date range.
pub async fn every_type_round_trips<H: Harness>(harness: H) {
    let schema = all_types_schema("all_types");
    let sink = open(&harness, &schema, base().mode(Mode::Upsert)).await;
    let rows = edge_rows();
    sink.write(rows.iter().cloned().map(Row::upsert).collect())
        .await
        .unwrap();
    sink.flush().await.unwrap();
    assert_eq!(
        sink.stats().rows_dead_lettered,
        0,
        "no edge value is refused"
    );
    let read = harness.read_rows(&schema).await;
    assert_rows_same(&read, &rows);
    // The offset was applied: the instant equals its UTC spelling.
    let utc = TimestampTz::parse("2024-03-10T21:00:00.000001Z").unwrap();
    assert_eq!(read[2][11], Value::TimestampTz(utc));
    // Empty is not NULL.
    assert_eq!(read[0][5], Value::Text(String::new()));
    assert_eq!(read[0][6], Value::Bytes(Vec::new()));
    assert_eq!(read.last().unwrap()[5], Value::Null);
    sink.close().await.unwrap();
}

/// One batch larger than any statement parameter limit (40 columns x 2,000 rows = 80,000
/// values) is written whole, for inserts and upserts.
pub async fn batch_larger_than_parameter_limit<H: Harness>(harness: H) {
    let mut columns = vec![column("id", ColumnType::I64).not_null()];
    columns.extend((1..40).map(|i| column(&format!("c{i}"), ColumnType::I64)));
    let schema = Schema::new("wide", columns, &["id"]).unwrap();
    let wide_row = |id: i64, salt: i64| -> Vec<Value> {
        std::iter::once(Value::I64(id))
            .chain((1..40).map(|i| Value::I64(id * 100 + i + salt)))
            .collect()
    };
    let config = base()
        .mode(Mode::Upsert)
        .batch_rows_max(2_000)
        .flush_interval_ms(60_000)
        .flush_concurrency(1);
    let sink = open(&harness, &schema, config).await;
    sink.write((0..2_000).map(|id| Row::upsert(wide_row(id, 0))).collect())
        .await
        .unwrap();
    sink.flush().await.unwrap();
    sink.write((0..2_000).map(|id| Row::upsert(wide_row(id, 7))).collect())
        .await
        .unwrap();
    sink.flush().await.unwrap();
    let expected: Vec<Vec<Value>> = (0..2_000).map(|id| wide_row(id, 7)).collect();
    assert_rows_same(&harness.read_rows(&schema).await, &expected);
    let stats = sink.stats();
    assert_eq!((stats.batches, stats.rows_written), (2, 4_000), "{stats:?}");
    sink.close().await.unwrap();

    let appended = schema.with_table(Ident::new("wide_appended").unwrap());
    let sink = open(
        &harness,
        &appended,
        base().batch_rows_max(2_000).flush_concurrency(1),
    )
    .await;
    sink.write((0..2_000).map(|id| Row::insert(wide_row(id, 1))).collect())
        .await
        .unwrap();
    sink.flush().await.unwrap();
    let expected: Vec<Vec<Value>> = (0..2_000).map(|id| wide_row(id, 1)).collect();
    assert_rows_same(&harness.read_rows(&appended).await, &expected);
    sink.close().await.unwrap();
}

async fn refused<H: Harness>(harness: &H, schema: Schema, config: SinkConfigBuilder, needle: &str) {
    let result = Sink::open(harness.backend(), schema, config.build().unwrap()).await;
    let error = match result {
        Ok(_) => {
            panic!("a schema that does not fit was accepted (expected a problem with {needle})")
        }
        Err(error) => error,
    };
    assert_eq!(error.code(), "sink.schema_mismatch", "{error}");
    assert!(
        error.to_string().contains(needle),
        "the message names {needle}: {error}"
    );
}

/// A schema that does not fit the table is refused at open, naming the problem, and nothing
/// is changed: a missing table, a missing column, an incompatible type, NULLs the table
/// forbids, a NOT NULL column the rows cannot fill, a key that is not unique.
pub async fn schema_mismatch_refused<H: Harness>(harness: H) {
    let existing = Schema::new(
        "fixed",
        vec![
            column("id", ColumnType::I64).not_null(),
            column("code", ColumnType::Text).not_null(),
            column("label", ColumnType::Text),
        ],
        &["id"],
    )
    .unwrap();
    open(&harness, &existing, base())
        .await
        .close()
        .await
        .unwrap();
    let never = || base().create_table(CreateTable::Never);

    refused(
        &harness,
        key_value_schema("nowhere"),
        never(),
        "does not exist",
    )
    .await;
    let mut extra = existing.columns().to_vec();
    extra.push(column("qty", ColumnType::I64));
    refused(
        &harness,
        Schema::new("fixed", extra, &["id"]).unwrap(),
        never(),
        "qty",
    )
    .await;
    let mut retyped = existing.columns().to_vec();
    retyped[2] = column("label", ColumnType::I64);
    refused(
        &harness,
        Schema::new("fixed", retyped, &["id"]).unwrap(),
        never(),
        "label",
    )
    .await;
    let mut nullable = existing.columns().to_vec();
    nullable[1] = column("code", ColumnType::Text);
    refused(
        &harness,
        Schema::new("fixed", nullable, &["id"]).unwrap(),
        never(),
        "code",
    )
    .await;
    let without_code = Schema::new(
        "fixed",
        vec![
            column("id", ColumnType::I64).not_null(),
            column("label", ColumnType::Text),
        ],
        &["id"],
    )
    .unwrap();
    refused(&harness, without_code, never(), "code").await;
    let by_code = Schema::new("fixed", existing.columns().to_vec(), &["code"]).unwrap();
    refused(&harness, by_code, never().mode(Mode::Upsert), "key").await;
    // Adding a NOT NULL column is refused even with evolve.
    let mut required = existing.columns().to_vec();
    required.push(column("qty", ColumnType::I64).not_null());
    let required = Schema::new("fixed", required, &["id"]).unwrap();
    refused(
        &harness,
        required,
        never().evolve(Evolve::AddColumns),
        "qty",
    )
    .await;

    // Nothing changed: the original schema still opens and reads.
    let sink = open(&harness, &existing, never()).await;
    sink.write(vec![Row::insert(vec![1.into(), "c".into(), Value::Null])])
        .await
        .unwrap();
    sink.close().await.unwrap();
    assert_rows_same(
        &harness.read_rows(&existing).await,
        &[vec![1.into(), "c".into(), Value::Null]],
    );
}

/// With `evolve = "add_columns"` a new nullable column is added; old rows read it as NULL.
pub async fn evolve_adds_nullable_columns<H: Harness>(harness: H) {
    let before = key_value_schema("evolving");
    let sink = open(&harness, &before, base()).await;
    sink.write(vec![Row::insert(kv(1, "old"))]).await.unwrap();
    sink.close().await.unwrap();
    let mut columns = before.columns().to_vec();
    columns.push(column("note", ColumnType::Json));
    let after = Schema::new("evolving", columns, &["id"]).unwrap();
    let sink = open(
        &harness,
        &after,
        base()
            .create_table(CreateTable::Never)
            .evolve(Evolve::AddColumns),
    )
    .await;
    assert_eq!(
        sink.prepare_report().added_columns,
        vec![Ident::new("note").unwrap()]
    );
    assert!(!sink.prepare_report().created_table);
    let note = Value::Json(Json::parse("{\"k\": 1}").unwrap());
    sink.write(vec![Row::insert(vec![
        2.into(),
        "new".into(),
        note.clone(),
    ])])
    .await
    .unwrap();
    sink.close().await.unwrap();
    assert_rows_same(
        &harness.read_rows(&after).await,
        &[
            vec![1.into(), "old".into(), Value::Null],
            vec![2.into(), "new".into(), note],
        ],
    );
}

/// Hostile or oversized names never reach the database; keywords and the longest valid names
/// work because every name is quoted.
pub async fn identifiers_are_validated_and_quoted<H: Harness>(harness: H) {
    for hostile in [
        "a\"; DROP TABLE x; --",
        "x; DELETE FROM t",
        "",
        "1a",
        "a b",
        "naïve",
    ] {
        assert!(Ident::new(hostile).is_err(), "{hostile:?}");
        assert!(Schema::new(hostile, vec![column("id", ColumnType::I64)], &[]).is_err());
        assert!(Column::new(hostile, ColumnType::I64).is_err());
    }
    assert_eq!(
        Ident::new(&"a".repeat(64)).unwrap_err().code(),
        "sink.ident.too_long"
    );
    let error = SinkConfig::from_toml(
        "[dead_letter]\nkind = \"table\"\ntable = \"t\\\"; DROP TABLE x; --\"",
    )
    .unwrap_err();
    assert_eq!(error.code(), "sink.config.parse");

    // SQL keywords as names.
    let keywords = Schema::new(
        "order",
        vec![
            column("select", ColumnType::I64).not_null(),
            column("from", ColumnType::Text),
        ],
        &["select"],
    )
    .unwrap();
    let sink = open(&harness, &keywords, base().mode(Mode::Changelog)).await;
    sink.write(vec![
        Row::upsert(vec![1.into(), "where".into()]),
        Row::upsert(vec![2.into(), "group".into()]),
    ])
    .await
    .unwrap();
    sink.write(vec![Row::delete(vec![2.into(), Value::Null])])
        .await
        .unwrap();
    sink.close().await.unwrap();
    assert_rows_same(
        &harness.read_rows(&keywords).await,
        &[vec![1.into(), "where".into()]],
    );

    // 63-byte names (the dead-letter table name is given, since the derived one would be too
    // long; the derived one is refused with a clear error).
    let long = "t".repeat(63);
    let schema = Schema::new(
        &long,
        vec![
            column(&"k".repeat(63), ColumnType::I64).not_null(),
            column(&"v".repeat(63), ColumnType::Text),
        ],
        &[&"k".repeat(63)],
    )
    .unwrap();
    let derived = Sink::open(harness.backend(), schema.clone(), base().build().unwrap()).await;
    assert_eq!(derived.err().map(|e| e.code()), Some("sink.ident.too_long"));
    let config = base()
        .mode(Mode::Upsert)
        .dead_letter(DeadLetterConfig::Table {
            table: Some(Ident::new("long_dead_letters").unwrap()),
        });
    let sink = open(&harness, &schema, config).await;
    sink.write(vec![Row::upsert(kv(1, "x"))]).await.unwrap();
    sink.close().await.unwrap();
    assert_rows_same(&harness.read_rows(&schema).await, &[kv(1, "x")]);
}

fn check_letter(letter: &DeadLetter, table: &str, code_prefix: &str, row_contains: &str) {
    assert_eq!(letter.table, table);
    assert!(letter.error_code.starts_with(code_prefix), "{letter:?}");
    assert!(!letter.error.is_empty());
    assert!(letter.row.contains(row_contains), "{letter:?}");
    let now = crate::dead_letter::now_utc().0;
    let hour_us = 3_600_000_000;
    assert!(
        (now - hour_us..=now + hour_us).contains(&letter.failed_at.0),
        "{letter:?}"
    );
}

/// A row the database refuses (duplicate key) and rows that do not fit the schema go to the
/// dead-letter table with their error and time, while their batch-mates are written.
pub async fn bad_rows_dead_lettered<H: Harness>(harness: H) {
    let schema = key_value_schema("guarded");
    let sink = open(
        &harness,
        &schema,
        base().batch_rows_max(100).flush_concurrency(1),
    )
    .await;
    sink.write(vec![Row::insert(kv(5, "first"))]).await.unwrap();
    sink.flush().await.unwrap();
    let mut rows: Vec<Row> = (1..=7)
        .map(|id| Row::insert(kv(id, &format!("v{id}"))))
        .collect();
    rows.push(Row::insert(vec![8.into(), 8.into()]));
    rows.push(Row::insert(vec![9.into()]));
    rows.push(Row::upsert(kv(10, "wrong op")));
    sink.write(rows).await.unwrap();
    sink.flush().await.unwrap();
    let expected: Vec<Vec<Value>> = (1..=7)
        .map(|id| {
            kv(
                id,
                &if id == 5 {
                    "first".to_string()
                } else {
                    format!("v{id}")
                },
            )
        })
        .collect();
    assert_rows_same(&harness.read_rows(&schema).await, &expected);
    let letters = harness
        .read_dead_letters(&Ident::new("guarded_dead_letters").unwrap())
        .await;
    assert_eq!(letters.len(), 4, "{letters:?}");
    let find = |needle: &str| {
        letters
            .iter()
            .find(|l| l.row.contains(needle))
            .unwrap_or_else(|| panic!("a dead letter containing {needle} in {letters:?}"))
    };
    // The backend's own code for a unique violation (not one of the engine's).
    let duplicate = find("\"v5\"");
    assert!(!duplicate.error_code.starts_with("sink."), "{duplicate:?}");
    check_letter(duplicate, "guarded", "", "\"id\":5");
    check_letter(
        find("\"v\":8"),
        "guarded",
        "sink.row.type_mismatch",
        "\"id\":8",
    );
    check_letter(
        find("\"id\":9"),
        "guarded",
        "sink.row.arity",
        "\"op\":\"insert\"",
    );
    check_letter(
        find("wrong op"),
        "guarded",
        "sink.row.op_not_allowed",
        "\"op\":\"upsert\"",
    );
    let stats = sink.stats();
    assert_eq!(
        (
            stats.rows_received,
            stats.rows_written,
            stats.rows_dead_lettered,
            stats.rows_failed
        ),
        (11, 7, 4, 0),
        "{stats:?}"
    );
    sink.close().await.unwrap();
}

/// With a file destination, dead letters are JSON lines with the row, the error and the time.
pub async fn dead_letters_to_file<H: Harness>(harness: H) {
    let schema = key_value_schema("filed");
    let path = harness.scratch_dir().join("filed.dead.jsonl");
    let config = base().dead_letter(DeadLetterConfig::File { path: path.clone() });
    let sink = open(&harness, &schema, config).await;
    sink.write(vec![
        Row::insert(kv(1, "a")),
        Row::insert(kv(1, "duplicate")),
        Row::insert(kv(2, "b")),
    ])
    .await
    .unwrap();
    sink.flush().await.unwrap();
    sink.close().await.unwrap();
    assert_rows_same(&harness.read_rows(&schema).await, &[kv(1, "a"), kv(2, "b")]);
    let text = std::fs::read_to_string(&path).expect("the dead-letter file exists");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(lines[0]["table"], "filed");
    assert!(lines[0]["row"].as_str().unwrap().contains("duplicate"));
    assert!(lines[0]["failed_at"].as_str().unwrap().ends_with('Z'));
    assert!(!lines[0]["error_code"].as_str().unwrap().is_empty());
}

/// Keyed modes refuse a schema without a key; closing refuses further writes; rows written
/// before `close` are durable after it.
pub async fn lifecycle<H: Harness>(harness: H) {
    let unkeyed = Schema::new("unkeyed", vec![column("v", ColumnType::Text)], &[]).unwrap();
    let error = Sink::open(
        harness.backend(),
        unkeyed,
        base().mode(Mode::Upsert).build().unwrap(),
    )
    .await;
    assert_eq!(error.err().map(|e| e.code()), Some("sink.key_required"));

    let schema = key_value_schema("closing");
    let sink = open(&harness, &schema, base().flush_interval_ms(60_000)).await;
    let writer = sink.clone();
    writer
        .write((0..10).map(|id| Row::insert(kv(id, "x"))).collect())
        .await
        .unwrap();
    sink.close().await.unwrap();
    assert_eq!(
        writer
            .write(vec![Row::insert(kv(99, "late"))])
            .await
            .unwrap_err()
            .code(),
        "sink.closed"
    );
    assert_eq!(harness.read_rows(&schema).await.len(), 10);
    assert_eq!(sink.stats().buffer_bytes, 0);
}

/// `describe_table` reads what `prepare` created, column by column and in order, and a
/// missing table is `None`.
pub async fn describe_reads_existing_tables<H: Harness>(harness: H) {
    let missing = Ident::new("never_created").unwrap();
    assert_eq!(
        harness.backend().describe_table(&missing).await.unwrap(),
        None
    );
    let schema = Schema::new(
        "described",
        vec![
            column("id", ColumnType::I64).not_null(),
            column("name", ColumnType::Text),
            column("flag", ColumnType::Bool).not_null(),
        ],
        &["id"],
    )
    .unwrap();
    let sink = open(&harness, &schema, base()).await;
    sink.close().await.unwrap();
    let described = harness
        .backend()
        .describe_table(schema.table())
        .await
        .unwrap()
        .expect("the table exists");
    let found: Vec<(&str, Option<ColumnType>, bool)> = described
        .iter()
        .map(|column| (column.name.as_str(), column.column_type, column.nullable))
        .collect();
    assert_eq!(
        found,
        vec![
            ("id", Some(ColumnType::I64), false),
            ("name", Some(ColumnType::Text), true),
            ("flag", Some(ColumnType::Bool), false),
        ]
    );
    assert!(described.iter().all(|column| !column.read_only));
    assert!(described.iter().all(|column| !column.type_name.is_empty()));
}

/// Instantiates every check for a backend: `compliance_tests!(async { make_harness() }.await)`.
#[macro_export]
macro_rules! compliance_tests {
    ($factory:expr) => {
        $crate::compliance_tests!(@each $factory;
            insert_mode_appends,
            upsert_mode_last_write_wins,
            delete_mode_removes_keys,
            changelog_keeps_order_per_key,
            composite_key,
            every_type_round_trips,
            batch_larger_than_parameter_limit,
            schema_mismatch_refused,
            evolve_adds_nullable_columns,
            identifiers_are_validated_and_quoted,
            bad_rows_dead_lettered,
            dead_letters_to_file,
            lifecycle,
            describe_reads_existing_tables
        );
    };
    (@each $factory:expr; $($check:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                $crate::compliance::$check($factory).await;
            }
        )*
    };
}
