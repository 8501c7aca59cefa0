//! A real public data set as a user brings it: an excerpt of the nycflights13 `flights` table
//! (tests/data/README.md), missing values written `NA`. Every row lands, `NA` reads as NULL, and
//! a new table gets the types a person would choose; into an existing typed table nothing goes
//! to the dead letters; a dry run shows the table and writes nothing.

use sluice_ingest::{Pipeline, PipelineSettings, Quiet, Status};
use sluice_testkit::{PgCluster, pg_or_skip};
use std::path::{Path, PathBuf};

fn excerpt() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/flights-excerpt.csv")
}

/// The excerpt's header, and per column the values that are not `NA`, as text.
fn present_values() -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::Reader::from_path(excerpt()).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let mut columns = vec![Vec::new(); header.len()];
    for record in reader.records() {
        for (index, field) in record.unwrap().iter().enumerate() {
            if field != "NA" {
                columns[index].push(field.to_string());
            }
        }
    }
    (header, columns)
}

fn settings(into: String) -> PipelineSettings {
    PipelineSettings {
        from: Some(excerpt().display().to_string()),
        into: Some(into),
        table: Some("flights".into()),
        null: Some(vec!["NA".into()]),
        ..PipelineSettings::default()
    }
}

/// Runs the excerpt into `into` to its end: every row written, none dead-lettered.
async fn ingest_every_row(into: String) {
    let report = Pipeline::new(settings(into))
        .unwrap()
        .run(&Quiet, std::future::pending())
        .await
        .unwrap();
    assert_eq!(report.status, Status::Done);
    assert_eq!(report.progress.rows_written, 2000);
    assert_eq!(report.progress.dead_lettered, 0);
}

/// The types inferred for a new table, as PostgreSQL names them.
const INFERRED: [(&str, &str); 19] = [
    ("year", "bigint"),
    ("month", "bigint"),
    ("day", "bigint"),
    ("dep_time", "bigint"),
    ("sched_dep_time", "bigint"),
    ("dep_delay", "bigint"),
    ("arr_time", "bigint"),
    ("sched_arr_time", "bigint"),
    ("arr_delay", "bigint"),
    ("carrier", "text"),
    ("flight", "bigint"),
    ("tailnum", "text"),
    ("origin", "text"),
    ("dest", "text"),
    ("air_time", "bigint"),
    ("distance", "bigint"),
    ("hour", "bigint"),
    ("minute", "bigint"),
    ("time_hour", "timestamp with time zone"),
];

/// Every column holds exactly the excerpt's values that are not `NA` (NULL where it had `NA`).
fn check_contents(cluster: &PgCluster, database: &str) {
    let (header, present) = present_values();
    let rows = cluster
        .psql_in(database, "SELECT count(*) FROM flights")
        .unwrap();
    assert_eq!(rows, "2000");
    for (name, values) in header.iter().zip(&present) {
        let nulls = 2000 - values.len();
        let counted = cluster
            .psql_in(
                database,
                &format!("SELECT count(*) FILTER (WHERE \"{name}\" IS NULL) FROM flights"),
            )
            .unwrap();
        assert_eq!(counted, nulls.to_string(), "NULLs in {name}");
    }
    // The values themselves: integer sums, and the texts in order of the flights' position.
    let (sum, tails) = (
        cluster
            .psql_in(database, "SELECT sum(dep_delay) FROM flights")
            .unwrap(),
        cluster
            .psql_in(
                database,
                "SELECT string_agg(tailnum, ',' ORDER BY tailnum) FROM flights",
            )
            .unwrap(),
    );
    let delay = header.iter().position(|name| name == "dep_delay").unwrap();
    let expected: i64 = present[delay]
        .iter()
        .map(|v| v.parse::<i64>().unwrap())
        .sum();
    assert_eq!(sum, expected.to_string());
    let tail = header.iter().position(|name| name == "tailnum").unwrap();
    let mut expected = present[tail].clone();
    expected.sort();
    assert_eq!(tails, expected.join(","));
    let hours = cluster
        .psql_in(
            database,
            "SET TIME ZONE 'UTC'; SELECT min(time_hour)::text || ' ' || max(time_hour)::text FROM flights",
        )
        .unwrap();
    let hour = header.iter().position(|name| name == "time_hour").unwrap();
    let mut times = present[hour].clone();
    times.sort();
    let shown = |time: &String| time.replace('T', " ").replace('Z', "+00");
    let expected = format!("{} {}", shown(&times[0]), shown(times.last().unwrap()));
    assert_eq!(hours, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flights_into_a_new_postgres_table_get_inferred_types_and_na_as_null() {
    let Some(cluster) = pg_or_skip("ingest flights") else {
        return;
    };
    let url = cluster.create_database("flights_new").unwrap();

    // A dry run first: the table it would create, the first rows, and nothing written.
    let preview = Pipeline::new(settings(url.clone()))
        .unwrap()
        .preview(10, &Quiet)
        .await
        .unwrap();
    assert!(!preview.table_exists);
    assert_eq!(preview.rows.len(), 10);
    assert!(preview.rejected.is_empty());
    let sql = preview.create_table_sql.expect("PostgreSQL speaks SQL");
    assert!(
        sql.starts_with("CREATE TABLE \"flights\" (\"year\" bigint, \"month\" bigint"),
        "{sql}"
    );
    assert!(
        sql.contains("\"time_hour\" timestamp with time zone"),
        "{sql}"
    );
    assert_eq!(preview.rows[0].values[11].to_string(), "N14228");
    let tables = cluster
        .psql_in(
            "flights_new",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
        )
        .unwrap();
    assert_eq!(tables, "0", "a dry run creates nothing");

    ingest_every_row(url.clone()).await;
    let types = cluster
        .psql_in(
            "flights_new",
            "SELECT string_agg(column_name || ' ' || data_type, ',' ORDER BY ordinal_position) \
             FROM information_schema.columns WHERE table_name = 'flights'",
        )
        .unwrap();
    let expected: Vec<String> = INFERRED
        .iter()
        .map(|(name, type_name)| format!("{name} {type_name}"))
        .collect();
    assert_eq!(types, expected.join(","));
    check_contents(&cluster, "flights_new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flights_into_an_existing_typed_table_lose_no_row_to_na() {
    let Some(cluster) = pg_or_skip("ingest flights") else {
        return;
    };
    let url = cluster.create_database("flights_typed").unwrap();
    cluster
        .psql_in(
            "flights_typed",
            "CREATE TABLE flights (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
             year smallint NOT NULL, month smallint NOT NULL, day smallint NOT NULL, \
             dep_time integer, sched_dep_time integer, dep_delay double precision, \
             arr_time integer, sched_arr_time integer, arr_delay double precision, \
             carrier text NOT NULL, flight integer, tailnum varchar(8), origin text, dest text, \
             air_time double precision, distance double precision, hour smallint, \
             minute smallint, time_hour timestamptz)",
        )
        .unwrap();
    // Without the marker, NA cannot be cast to a number: those records are refused.
    let report = Pipeline::new(PipelineSettings {
        null: None,
        ..settings(url.clone())
    })
    .unwrap()
    .preview(2000, &Quiet)
    .await
    .unwrap();
    assert!(report.table_exists);
    assert!(!report.rejected.is_empty());
    assert!(
        report.rejected[0].reason.contains("\"NA\""),
        "{}",
        report.rejected[0].reason
    );

    ingest_every_row(url).await;
    check_contents(&cluster, "flights_typed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flights_into_a_new_sqlite_table() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("flights.db");
    let into = format!("sqlite://{}", db.display());
    let preview = Pipeline::new(settings(into.clone()))
        .unwrap()
        .preview(3, &Quiet)
        .await
        .unwrap();
    assert_eq!(preview.rows.len(), 3);
    assert!(
        preview
            .create_table_sql
            .unwrap()
            .contains("\"dep_time\" INTEGER")
    );
    assert!(!db.exists(), "a dry run does not create the database file");
    ingest_every_row(into).await;
    let connection = rusqlite::Connection::open(&db).unwrap();
    let (rows, departures, types): (i64, i64, String) = connection
        .query_row(
            "SELECT count(*), count(dep_time), \
             (SELECT group_concat(type, ',') FROM pragma_table_info('flights')) FROM flights",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .unwrap();
    let (_, present) = present_values();
    assert_eq!(rows, 2000);
    assert_eq!(departures, present[3].len() as i64);
    assert!(types.starts_with("INTEGER,INTEGER,INTEGER"), "{types}");
}
