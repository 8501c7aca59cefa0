//! The exactly-once compliance checks on the in-memory reference backend, for both mechanisms.

use async_trait::async_trait;
use sluice_sink::compliance::Harness;
use sluice_sink::{DeadLetter, Ident, MemoryBackend, Schema, SinkBackend, Value};
use std::path::PathBuf;

struct MemoryHarness {
    backend: MemoryBackend,
    dir: tempfile::TempDir,
}

impl MemoryHarness {
    fn new() -> MemoryHarness {
        MemoryHarness {
            backend: MemoryBackend::new(),
            dir: tempfile::tempdir().expect("a temp dir"),
        }
    }
}

#[async_trait]
impl Harness for MemoryHarness {
    fn backend(&self) -> &dyn SinkBackend {
        &self.backend
    }

    async fn read_rows(&self, schema: &Schema) -> Vec<Vec<Value>> {
        self.backend
            .rows(schema.table().as_str())
            .unwrap_or_default()
    }

    async fn read_dead_letters(&self, table: &Ident) -> Vec<DeadLetter> {
        self.backend.dead_letters(table.as_str())
    }

    fn scratch_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    async fn prepared_transactions(&self) -> Vec<String> {
        self.backend.prepared_transactions()
    }
}

mod transactional_marker {
    use super::MemoryHarness;
    sluice_sink::exactly_once_compliance_tests!(
        MemoryHarness::new(),
        sluice_sink::Delivery::TransactionalMarker
    );
}

mod two_phase {
    use super::MemoryHarness;
    sluice_sink::exactly_once_compliance_tests!(
        MemoryHarness::new(),
        sluice_sink::Delivery::TwoPhase
    );
}
