//! The sink compliance suite against a real PostgreSQL: a database of its own per check, on a
//! cluster shared by the checks running at the same time.

mod common;

use async_trait::async_trait;
use common::TestDb;
use sluice_sink::compliance::Harness;
use sluice_sink::{DeadLetter, Ident, Schema, SinkBackend, Value};
use std::path::PathBuf;

struct PgHarness(TestDb);

impl PgHarness {
    async fn start() -> Option<PgHarness> {
        TestDb::start("sink-postgres compliance")
            .await
            .map(PgHarness)
    }
}

#[async_trait]
impl Harness for PgHarness {
    fn backend(&self) -> &dyn SinkBackend {
        self.0.sink_backend()
    }

    async fn read_rows(&self, schema: &Schema) -> Vec<Vec<Value>> {
        self.0.rows(schema).await
    }

    async fn read_dead_letters(&self, table: &Ident) -> Vec<DeadLetter> {
        self.0.dead_letters(table.as_str()).await
    }

    fn scratch_dir(&self) -> PathBuf {
        self.0.scratch.path().to_path_buf()
    }

    async fn prepared_transactions(&self) -> Vec<String> {
        self.0
            .admin
            .query(
                "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()",
                &[],
            )
            .await
            .expect("list prepared transactions")
            .iter()
            .map(|row| row.get(0))
            .collect()
    }
}

sluice_sink::compliance_tests!(match PgHarness::start().await {
    Some(harness) => harness,
    None => return,
});

mod transactional_marker {
    use super::PgHarness;
    sluice_sink::exactly_once_compliance_tests!(
        match PgHarness::start().await {
            Some(harness) => harness,
            None => return,
        },
        sluice_sink::Delivery::TransactionalMarker
    );
}

mod two_phase {
    use super::PgHarness;
    sluice_sink::exactly_once_compliance_tests!(
        match PgHarness::start().await {
            Some(harness) => harness,
            None => return,
        },
        sluice_sink::Delivery::TwoPhase
    );
}
