//! The sink compliance suite on real SQLite files, through the group-commit writer.

use async_trait::async_trait;
use sluice_sink::compliance::Harness;
use sluice_sink::{DeadLetter, Ident, Schema, SinkBackend, Value};
use sluice_sink_sqlite::{
    Journal, Location, OpenOptions, SqliteBackend, SqliteSinkOptions, read_dead_letters, read_rows,
};
use sluice_testkit::TempSqlite;
use std::path::PathBuf;

struct SqliteHarness {
    temp: TempSqlite,
    backend: SqliteBackend,
}

impl SqliteHarness {
    fn new() -> SqliteHarness {
        SqliteHarness::with(Journal::Wal)
    }

    /// The database with a rollback journal instead of the WAL.
    fn rollback() -> SqliteHarness {
        SqliteHarness::with(Journal::Rollback)
    }

    fn with(journal: Journal) -> SqliteHarness {
        let temp = TempSqlite::new();
        let mut options = SqliteSinkOptions::new(Location::File(temp.path().to_path_buf()));
        options.open.journal = journal;
        let backend = SqliteBackend::open(&options).expect("open the database");
        SqliteHarness { temp, backend }
    }

    fn reader(&self) -> rusqlite::Connection {
        let options = OpenOptions::new(Location::File(self.temp.path().to_path_buf()));
        sluice_sqlite::open_connection(&options, true).expect("open a reader")
    }
}

#[async_trait]
impl Harness for SqliteHarness {
    fn backend(&self) -> &dyn SinkBackend {
        &self.backend
    }

    async fn read_rows(&self, schema: &Schema) -> Vec<Vec<Value>> {
        read_rows(&self.reader(), schema).expect("read the table")
    }

    async fn read_dead_letters(&self, table: &Ident) -> Vec<DeadLetter> {
        read_dead_letters(&self.reader(), table).expect("read the dead letters")
    }

    fn scratch_dir(&self) -> PathBuf {
        self.temp.dir().to_path_buf()
    }
}

sluice_sink::compliance_tests!(SqliteHarness::new());

mod exactly_once {
    use super::SqliteHarness;
    sluice_sink::exactly_once_compliance_tests!(
        SqliteHarness::new(),
        sluice_sink::Delivery::TransactionalMarker
    );
}

/// The same suites with a rollback journal (`Journal::Rollback`).
mod rollback_journal {
    use super::SqliteHarness;
    sluice_sink::compliance_tests!(SqliteHarness::rollback());

    mod exactly_once {
        use super::super::SqliteHarness;
        sluice_sink::exactly_once_compliance_tests!(
            SqliteHarness::rollback(),
            sluice_sink::Delivery::TransactionalMarker
        );
    }
}
