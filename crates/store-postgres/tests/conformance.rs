//! The storage conformance suite on PostgreSQL: a throwaway cluster per check (skipped, with a
//! `SKIPPED` line, where PostgreSQL is not installed; CI requires it).

use sluice_store::ManualClock;
use sluice_store::conformance::Harness;
use sluice_store_postgres::{PostgresStore, PostgresStoreOptions};
use sluice_testkit::pg_or_skip;
use std::sync::Arc;

async fn harness() -> Option<Harness<PostgresStore>> {
    let cluster = pg_or_skip("store-postgres conformance")?;
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let options = PostgresStoreOptions::new(&cluster.url()).expect("options");
    let store = PostgresStore::connect_with_clock(options, clock.clone())
        .await
        .expect("connect");
    Some(Harness {
        store,
        clock,
        guard: Box::new(cluster),
    })
}

macro_rules! or_skip {
    () => {
        match harness().await {
            Some(harness) => harness,
            None => return,
        }
    };
}

sluice_store::conformance_tests!(or_skip!());
