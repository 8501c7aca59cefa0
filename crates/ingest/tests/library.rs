//! The ingest as a library: a pipeline built from settings, run with an observer and a stop
//! future, into a SQLite file; a second run of the same pipeline resumes and writes nothing
//! twice.

use sluice_ingest::{
    IngestError, Observer, Pipeline, PipelineSettings, Progress, Quiet, Report, SqliteJournal,
    Status,
};
use std::io::Write;
use std::sync::Mutex;

#[derive(Default)]
struct Recorder {
    notes: Mutex<Vec<String>>,
    last: Mutex<Option<Progress>>,
    finished: Mutex<Option<Report>>,
}

impl Observer for Recorder {
    fn note(&self, message: &str) {
        self.notes.lock().unwrap().push(message.to_string());
    }
    fn progress(&self, progress: &Progress) {
        *self.last.lock().unwrap() = Some(*progress);
    }
    fn finished(&self, report: &Report) {
        *self.finished.lock().unwrap() = Some(report.clone());
    }
}

fn settings(from: &std::path::Path, db: &std::path::Path) -> PipelineSettings {
    PipelineSettings {
        from: Some(from.display().to_string()),
        into: Some(format!("sqlite://{}", db.display())),
        table: Some("events".into()),
        ..PipelineSettings::default()
    }
}

fn count(db: &std::path::Path, sql: &str) -> i64 {
    let connection = rusqlite::Connection::open(db).unwrap();
    connection.query_row(sql, [], |row| row.get(0)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_runs_resumes_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("events.ndjson");
    let db = dir.path().join("target.db");
    let mut file = std::fs::File::create(&source).unwrap();
    for id in 0..500 {
        writeln!(file, r#"{{"id": {id}, "name": "n{id}"}}"#).unwrap();
    }
    writeln!(file, r#"{{"id": "not a number", "name": "bad"}}"#).unwrap();
    drop(file);

    let recorder = Recorder::default();
    let pipeline = Pipeline::new(settings(&source, &db)).unwrap();
    assert_eq!(pipeline.table(), "events");
    let report = pipeline
        .run(&recorder, std::future::pending())
        .await
        .unwrap();
    assert_eq!(report.status, Status::Done);
    assert_eq!(report.progress.records, 501);
    assert_eq!(report.progress.rows_written, 500);
    assert_eq!(report.progress.dead_lettered, 1);
    assert!(report.exactly_once);
    assert!(
        report
            .committed
            .as_deref()
            .unwrap()
            .contains("events.ndjson")
    );
    assert_eq!(
        recorder.finished.lock().unwrap().as_ref().unwrap().status,
        Status::Done
    );
    assert_eq!(recorder.last.lock().unwrap().unwrap().records, 501);
    assert_eq!(count(&db, "SELECT count(*) FROM events"), 500);

    // More records arrive; the same pipeline again reads only them.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&source)
        .unwrap();
    for id in 500..600 {
        writeln!(file, r#"{{"id": {id}, "name": "n{id}"}}"#).unwrap();
    }
    drop(file);
    let recorder = Recorder::default();
    let report = Pipeline::new(settings(&source, &db))
        .unwrap()
        .run(&recorder, std::future::pending())
        .await
        .unwrap();
    assert_eq!(report.progress.records, 100);
    let notes = recorder.notes.lock().unwrap().join("\n");
    assert!(
        notes.contains("resuming after the committed position"),
        "{notes}"
    );
    assert!(notes.contains("table events exists"), "{notes}");
    assert_eq!(count(&db, "SELECT count(*) FROM events"), 600);
    assert_eq!(count(&db, "SELECT count(DISTINCT id) FROM events"), 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_run_stops_at_a_checkpoint_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("tail.ndjson");
    let db = dir.path().join("target.db");
    std::fs::write(&source, "{\"id\": 1}\n{\"id\": 2}\n").unwrap();
    let mut followed = settings(&source, &db);
    followed.follow = Some(true);
    followed.checkpoint_interval_ms = Some(20);
    let stop = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        "test".to_string()
    };
    let report = Pipeline::new(followed)
        .unwrap()
        .run(&Quiet, stop)
        .await
        .unwrap();
    assert_eq!(report.status, Status::Stopped);
    assert_eq!(report.stopped_by.as_deref(), Some("test"));
    assert_eq!(count(&db, "SELECT count(*) FROM events"), 2);
}

#[test]
fn settings_from_the_file_and_the_command_line_overlay_and_validate() {
    let file = PipelineSettings::from_toml(
        "from = \"a.ndjson\"\ninto = \"sqlite://x.db\"\ntable = \"t\"\ncheckpoint_interval_ms = 50\n",
    )
    .unwrap();
    let flags = PipelineSettings {
        table: Some("u".into()),
        ..PipelineSettings::default()
    };
    let merged = file.overlay(flags);
    assert_eq!(merged.table.as_deref(), Some("u"));
    assert_eq!(merged.checkpoint_interval_ms, Some(50));

    let unknown = PipelineSettings::from_toml("fro = \"x\"\n").unwrap_err();
    assert_eq!(unknown.key(), "config");
    assert!(unknown.problem().contains("fro"), "{unknown}");

    let missing = Pipeline::new(PipelineSettings::default()).unwrap_err();
    assert_eq!(missing.key(), "from");
    let error = IngestError::from(missing);
    assert!(error.is_usage());
    assert_eq!(error.code(), "ingest.usage");

    let bad_scheme = Pipeline::new(PipelineSettings {
        from: Some("-".into()),
        into: Some("mysql://root:secret@host/db".into()),
        table: Some("t".into()),
        ..PipelineSettings::default()
    })
    .unwrap_err();
    assert_eq!(bad_scheme.key(), "into");
    assert!(!bad_scheme.to_string().contains("secret"), "{bad_scheme}");

    let journal = PipelineSettings::from_toml("sqlite_journal = \"rollback\"\n").unwrap();
    assert_eq!(journal.sqlite_journal, Some(SqliteJournal::Rollback));
    let not_sqlite = Pipeline::new(PipelineSettings {
        from: Some("-".into()),
        into: Some("postgres://root:secret@host/db".into()),
        table: Some("t".into()),
        sqlite_journal: Some(SqliteJournal::Rollback),
        ..PipelineSettings::default()
    })
    .unwrap_err();
    assert_eq!(not_sqlite.key(), "sqlite_journal");
    assert!(!not_sqlite.to_string().contains("secret"), "{not_sqlite}");
}

/// `sqlite_journal = "rollback"` gives the database a rollback journal; a second run resumes
/// from the position committed with the rows, as under the WAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_journal_target_ingests_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("events.ndjson");
    let db = dir.path().join("target.db");
    let write = |from: usize, to: usize| {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&source)
            .unwrap();
        for id in from..to {
            writeln!(file, r#"{{"id": {id}, "name": "n{id}"}}"#).unwrap();
        }
    };
    write(0, 300);
    let rollback = || PipelineSettings {
        sqlite_journal: Some(SqliteJournal::Rollback),
        ..settings(&source, &db)
    };
    let first = Pipeline::new(rollback())
        .unwrap()
        .run(&Quiet, std::future::pending())
        .await
        .unwrap();
    assert_eq!(first.progress.rows_written, 300);
    let connection = rusqlite::Connection::open(&db).unwrap();
    let mode: String = connection
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    // WAL mode is a property of the file; the rollback modes are per connection, so a new
    // connection starts in the default rollback mode, `delete`: not `wal` is what counts.
    assert_eq!(mode, "delete");
    drop(connection);
    assert!(!dir.path().join("target.db-wal").exists());
    write(300, 350);
    let second = Pipeline::new(rollback())
        .unwrap()
        .run(&Quiet, std::future::pending())
        .await
        .unwrap();
    assert_eq!(second.progress.rows_written, 50);
    assert_eq!(count(&db, "SELECT count(*) FROM events"), 350);
    assert_eq!(count(&db, "SELECT count(DISTINCT id) FROM events"), 350);
}
