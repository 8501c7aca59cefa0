//! The sink compliance suite against a real PostgreSQL: a database of its own per check, on a
//! cluster shared by the checks running at the same time. The exactly-once checks run in
//! `exactly_once.rs`.

mod common;

use common::PgHarness;

sluice_sink::compliance_tests!(match PgHarness::start("sink-postgres compliance").await {
    Some(harness) => harness,
    None => return,
});
