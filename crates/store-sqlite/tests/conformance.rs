//! The storage conformance suite on a SQLite file and on an in-memory SQLite database.

use sluice_store::ManualClock;
use sluice_store::conformance::Harness;
use sluice_store_sqlite::{Location, SqliteStore, SqliteStoreOptions};
use sluice_testkit::TempSqlite;
use std::sync::Arc;

fn harness(location: Option<TempSqlite>) -> Harness<SqliteStore> {
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let options = match &location {
        Some(temp) => SqliteStoreOptions::new(Location::File(temp.path().to_path_buf())),
        None => SqliteStoreOptions::new(Location::Memory),
    };
    let store = SqliteStore::open_with_clock(options, clock.clone()).expect("open store");
    Harness {
        store,
        clock,
        guard: Box::new(location),
    }
}

mod file {
    use super::*;
    sluice_store::conformance_tests!(async { harness(Some(TempSqlite::new())) }.await);
}

mod memory {
    use super::*;
    sluice_store::conformance_tests!(async { harness(None) }.await);
}
