//! A run that dies between the lanes' commits of its PostgreSQL marker checkpoint leaves the
//! checkpoint in part: the next run reads it again up to its position exactly, the sink writes
//! only the lanes' part that was lost, and every record lands once (rows and dead letters).
//! The "death" is a deferred trigger that refuses the COMMIT of lane 1's transaction, once;
//! the progress table is created beforehand in its older form (without the lane columns), so
//! the sink's adding of them is exercised too.

use sluice_ingest::{Pipeline, PipelineSettings, Quiet, Status};
use sluice_sink::SinkConfig;
use sluice_testkit::pg_or_skip;
use std::io::Write;

const REFUSE_LANE_1_ONCE: &str = "
CREATE TABLE sluice_sink_progress (sink_id text, writer_id integer, lane integer,
  checkpoint_id bigint NOT NULL, state text NOT NULL, committed_at timestamptz NOT NULL,
  PRIMARY KEY (sink_id, writer_id, lane));
CREATE SEQUENCE refusals;
CREATE FUNCTION refuse_lane_1() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.lane = 1 THEN
    IF nextval('refusals') = 1 THEN
      RAISE EXCEPTION 'injected: lane 1 does not commit checkpoint %', NEW.checkpoint_id;
    END IF;
  END IF;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER refuse AFTER INSERT OR UPDATE ON sluice_sink_progress
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_lane_1();
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_committed_in_part_is_replayed_by_the_next_run() {
    let Some(cluster) = pg_or_skip("ingest partial checkpoint") else {
        return;
    };
    let url = cluster.create_database("partial").unwrap();
    cluster.psql_in("partial", REFUSE_LANE_1_ONCE).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("events.ndjson");
    let mut file = std::fs::File::create(&source).unwrap();
    for id in 0..1_000 {
        writeln!(file, r#"{{"id": {id}, "name": "n{id}"}}"#).unwrap();
        if id % 400 == 7 {
            writeln!(file, "not json {id}").unwrap();
        }
    }
    drop(file);
    let settings = || PipelineSettings {
        from: Some(source.display().to_string()),
        into: Some(url.clone()),
        table: Some("events".into()),
        // One checkpoint, at the end of the file.
        checkpoint_interval_ms: Some(600_000),
        // Two lanes taking stripes of 100 rows: each holds half of the checkpoint.
        sink: Some(
            SinkConfig::builder()
                .flush_concurrency(2)
                .batch_rows_max(100),
        ),
        ..PipelineSettings::default()
    };
    let count = |sql: &str| cluster.psql_in("partial", sql).unwrap();

    let failed = Pipeline::new(settings())
        .unwrap()
        .run(&Quiet, std::future::pending())
        .await;
    let error = failed.expect_err("lane 1's commit was refused");
    assert!(error.to_string().contains("injected"), "{error}");
    assert_eq!(
        count("SELECT count(*) FROM events"),
        "500",
        "lane 0's stripes are committed, lane 1's are not"
    );
    assert_eq!(count("SELECT count(*) FROM events_dead_letters"), "3");

    let report = Pipeline::new(settings())
        .unwrap()
        .run(&Quiet, std::future::pending())
        .await
        .unwrap();
    assert_eq!(report.status, Status::Done);
    assert_eq!(
        count("SELECT count(*), count(DISTINCT id), min(id), max(id) FROM events"),
        "1000|1000|0|999"
    );
    assert_eq!(
        count("SELECT count(*), count(DISTINCT row_json) FROM events_dead_letters"),
        "3|3"
    );
    assert_eq!(
        count(
            "SELECT string_agg(lane || ':' || checkpoint_id || ':' || lanes || ':' || rows, ',' ORDER BY lane) FROM sluice_sink_progress"
        ),
        "0:1:2:1000,1:1:2:1000"
    );
}
