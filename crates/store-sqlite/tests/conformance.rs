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

/// A database file belongs to one store at a time: leases live in that store's memory.
#[test]
fn a_second_store_on_the_same_file_is_refused() {
    let temp = TempSqlite::new();
    let options = SqliteStoreOptions::new(Location::File(temp.path().to_path_buf()));
    let first = SqliteStore::open(options.clone()).expect("first open");
    let error = SqliteStore::open(options.clone())
        .err()
        .expect("second open refused");
    assert!(error.to_string().contains("in use"), "{error}");
    drop(first);
    SqliteStore::open(options).expect("open again after the first closed");
}
