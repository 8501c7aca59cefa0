//! SQLite-specific behaviour beyond the compliance suite: tables created by hand (unique
//! indexes, partial indexes, affinities, STRICT tables) and sharing a group-commit writer.

use sluice_sink::{
    Column, ColumnType, CreateTable, Ident, Mode, Row, Schema, Sink, SinkConfig, Value,
};
use sluice_sink_sqlite::{Location, OpenOptions, SqliteBackend, read_dead_letters, read_rows};
use sluice_sqlite::GroupCommitWriter;
use sluice_testkit::TempSqlite;

fn setup(sql: &'static str) -> (TempSqlite, SqliteBackend) {
    let temp = TempSqlite::new();
    let options = OpenOptions::new(Location::File(temp.path().to_path_buf()));
    let writer = GroupCommitWriter::open(&options, 64, 16, move |connection| {
        connection.execute_batch(sql)?;
        Ok(())
    })
    .unwrap();
    (temp, SqliteBackend::with_writer(writer))
}

fn reader(temp: &TempSqlite) -> rusqlite::Connection {
    sluice_sqlite::open_connection(
        &OpenOptions::new(Location::File(temp.path().to_path_buf())),
        true,
    )
    .unwrap()
}

fn upsert_config() -> SinkConfig {
    SinkConfig::builder()
        .mode(Mode::Upsert)
        .flush_interval_ms(5)
        .build()
        .unwrap()
}

fn by_code() -> Schema {
    Schema::new(
        "items",
        vec![
            Column::new("code", ColumnType::Text).unwrap().not_null(),
            Column::new("qty", ColumnType::I64).unwrap(),
        ],
        &["code"],
    )
    .unwrap()
}

/// A unique index (not the primary key) can be the key; the rowid primary key not in the
/// schema is filled by SQLite.
#[tokio::test]
async fn unique_index_serves_as_key() {
    let (temp, backend) = setup(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, code TEXT NOT NULL, qty INTEGER);
         CREATE UNIQUE INDEX items_code ON items (code);",
    );
    let sink = Sink::open(&backend, by_code(), upsert_config())
        .await
        .unwrap();
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
        read_rows(&reader(&temp), &by_code()).unwrap(),
        vec![vec![Value::from("a"), 3.into()], vec!["b".into(), 2.into()]]
    );
}

/// A partial unique index cannot be an ON CONFLICT target: refused at open.
#[tokio::test]
async fn partial_unique_index_is_not_a_key() {
    let (_temp, backend) = setup(
        "CREATE TABLE items (code TEXT NOT NULL, qty INTEGER);
         CREATE UNIQUE INDEX items_code ON items (code) WHERE qty > 0;",
    );
    let error = Sink::open(&backend, by_code(), upsert_config())
        .await
        .err()
        .unwrap();
    assert_eq!(error.code(), "sink.schema_mismatch");
    assert!(
        error.to_string().contains("unique, non-partial index"),
        "{error}"
    );
}

/// A NUMERIC column would turn exact decimal text into a float: refused, suggesting TEXT.
#[tokio::test]
async fn numeric_affinity_refused_for_decimals() {
    let (_temp, backend) =
        setup("CREATE TABLE prices (id INTEGER PRIMARY KEY, price DECIMAL(10,2))");
    let schema = Schema::new(
        "prices",
        vec![
            Column::new("id", ColumnType::I64).unwrap().not_null(),
            Column::new("price", ColumnType::Decimal).unwrap(),
        ],
        &["id"],
    )
    .unwrap();
    let error = Sink::open(&backend, schema, SinkConfig::default())
        .await
        .err()
        .unwrap();
    assert!(error.to_string().contains("declare it TEXT"), "{error}");
}

/// In a STRICT table a REAL column refuses the 8-byte BLOB that keeps NaN: that row is
/// dead-lettered with SQLite's constraint error and its batch-mates are written.
#[tokio::test]
async fn strict_table_dead_letters_nan() {
    let (temp, backend) =
        setup("CREATE TABLE readings (id INTEGER PRIMARY KEY, value REAL) STRICT");
    let schema = Schema::new(
        "readings",
        vec![
            Column::new("id", ColumnType::I64).unwrap().not_null(),
            Column::new("value", ColumnType::F64).unwrap(),
        ],
        &["id"],
    )
    .unwrap();
    let sink = Sink::open(
        &backend,
        schema.clone(),
        SinkConfig::builder().flush_interval_ms(5).build().unwrap(),
    )
    .await
    .unwrap();
    sink.write(vec![
        Row::insert(vec![1.into(), 1.5.into()]),
        Row::insert(vec![2.into(), f64::NAN.into()]),
        Row::insert(vec![3.into(), f64::INFINITY.into()]),
    ])
    .await
    .unwrap();
    sink.close().await.unwrap();
    let connection = reader(&temp);
    assert_eq!(
        read_rows(&connection, &schema).unwrap(),
        vec![
            vec![Value::I64(1), 1.5.into()],
            vec![3.into(), f64::INFINITY.into()]
        ]
    );
    let letters =
        read_dead_letters(&connection, &Ident::new("readings_dead_letters").unwrap()).unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].error_code, "sqlite.constraint");
    assert!(letters[0].row.contains("NaN"), "{:?}", letters[0]);
}

/// The backend shares a writer with other users of the file; their writes and the sink's
/// commit in the same group transactions without interfering.
#[tokio::test]
async fn shares_a_writer() {
    let (temp, backend) = setup("CREATE TABLE other (n INTEGER)");
    let schema = by_code();
    let config = SinkConfig::builder()
        .mode(Mode::Upsert)
        .create_table(CreateTable::IfMissing)
        .flush_interval_ms(5)
        .build()
        .unwrap();
    let sink = Sink::open(&backend, schema.clone(), config).await.unwrap();
    let writer = backend.writer().clone();
    let others = tokio::spawn(async move {
        for n in 0..50i64 {
            writer
                .write(move |connection| {
                    connection.execute("INSERT INTO other (n) VALUES (?1)", [n])
                })
                .await
                .unwrap();
        }
    });
    for i in 0..50i64 {
        sink.write(vec![Row::upsert(vec![
            format!("k{}", i % 10).into(),
            i.into(),
        ])])
        .await
        .unwrap();
    }
    others.await.unwrap();
    sink.close().await.unwrap();
    let connection = reader(&temp);
    let count: i64 = connection
        .query_row("SELECT count(*) FROM other", [], |row| row.get(0))
        .unwrap();
    assert_eq!(count, 50);
    let rows = read_rows(&connection, &schema).unwrap();
    assert_eq!(rows.len(), 10);
    assert!(
        rows.iter()
            .all(|row| matches!(row[1], Value::I64(v) if v >= 40)),
        "{rows:?}"
    );
}
