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

    async fn commit_prepared(&self, gid: &str) -> bool {
        self.backend.commit_prepared(gid)
    }

    async fn fail_next_marker_commit(&self, lanes_committed: usize) -> bool {
        self.backend.crash_next_marker_commit_after(lanes_committed);
        true
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

/// Engine behaviour around a barrier, on the memory backend with a pre-commit the test holds
/// open: writers are not paused by a checkpoint, and rows written after the barrier belong to
/// the next checkpoint.
mod barrier {
    use async_trait::async_trait;
    use sluice_sink::{
        BackendError, Batch, BatchOutcome, CheckpointWriter, Column, ColumnType, CreateTable, Cut,
        DeadLetter, Delivery, DescribedColumn, Ident, MemoryBackend, PrepareRequest, Prepared,
        Recovered, Resume, Row, Schema, Sink, SinkBackend, SinkConfig, SinkId, Value,
    };
    use std::sync::Arc;
    use tokio::sync::Semaphore;

    /// The memory backend, with `pre_commit` waiting for a permit the test hands out.
    struct Held {
        inner: MemoryBackend,
        gate: Arc<Semaphore>,
        entered: Arc<Semaphore>,
        dropped: Arc<Semaphore>,
    }

    impl Held {
        fn new(inner: MemoryBackend) -> Held {
            Held {
                inner,
                gate: Arc::new(Semaphore::new(0)),
                entered: Arc::new(Semaphore::new(0)),
                dropped: Arc::new(Semaphore::new(0)),
            }
        }
    }

    struct HeldWriter {
        inner: Arc<dyn CheckpointWriter>,
        gate: Arc<Semaphore>,
        entered: Arc<Semaphore>,
        dropped: Arc<Semaphore>,
    }

    impl Drop for HeldWriter {
        fn drop(&mut self) {
            self.dropped.add_permits(1);
        }
    }

    #[async_trait]
    impl SinkBackend for Held {
        fn name(&self) -> &'static str {
            "memory"
        }

        async fn describe_table(
            &self,
            table: &Ident,
        ) -> Result<Option<Vec<DescribedColumn>>, BackendError> {
            self.inner.describe_table(table).await
        }

        async fn prepare(&self, request: &PrepareRequest) -> Result<Prepared, BackendError> {
            let mut prepared = self.inner.prepare(request).await?;
            prepared.checkpoints = prepared.checkpoints.map(|inner| {
                Arc::new(HeldWriter {
                    inner,
                    gate: self.gate.clone(),
                    entered: self.entered.clone(),
                    dropped: self.dropped.clone(),
                }) as Arc<dyn CheckpointWriter>
            });
            Ok(prepared)
        }
    }

    #[async_trait]
    impl CheckpointWriter for HeldWriter {
        async fn write_batch(
            &self,
            lane: usize,
            batch: &Batch,
        ) -> Result<BatchOutcome, BackendError> {
            self.inner.write_batch(lane, batch).await
        }
        async fn write_dead_letters(
            &self,
            lane: usize,
            letters: &[DeadLetter],
        ) -> Result<(), BackendError> {
            self.inner.write_dead_letters(lane, letters).await
        }
        async fn pre_commit(&self, cut: &Cut<'_>) -> Result<(), BackendError> {
            self.entered.add_permits(1);
            self.gate.acquire().await.expect("open").forget();
            self.inner.pre_commit(cut).await
        }
        async fn commit(&self, checkpoint_id: u64) -> Result<(), BackendError> {
            self.inner.commit(checkpoint_id).await
        }
        async fn abort(&self, checkpoint_id: u64) -> Result<(), BackendError> {
            self.inner.abort(checkpoint_id).await
        }
        async fn recover(
            &self,
            restored: Option<u64>,
            resume: Resume,
        ) -> Result<Recovered, BackendError> {
            self.inner.recover(restored, resume).await
        }
    }

    fn ids(backend: &MemoryBackend) -> Vec<i64> {
        let mut ids: Vec<i64> = backend
            .rows("t")
            .unwrap_or_default()
            .into_iter()
            .map(|row| match row[0] {
                Value::I64(id) => id,
                ref other => panic!("{other:?}"),
            })
            .collect();
        ids.sort_unstable();
        ids
    }

    fn rows(range: std::ops::Range<i64>) -> Vec<Row> {
        range.map(|id| Row::insert(vec![id.into()])).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_go_on_during_a_pre_commit_and_belong_to_the_next_checkpoint() {
        let memory = MemoryBackend::new();
        let held = Held::new(memory.clone());
        let schema = Schema::new(
            "t",
            vec![Column::new("id", ColumnType::I64).unwrap().not_null()],
            &[],
        )
        .unwrap();
        let config = SinkConfig::builder()
            .create_table(CreateTable::IfMissing)
            .delivery(Delivery::TransactionalMarker)
            .sink_id(SinkId::new("barrier").unwrap())
            .batch_rows_max(10)
            .flush_interval_ms(1)
            .flush_concurrency(3)
            .build()
            .unwrap();
        let sink = Sink::open(&held, schema, config).await.unwrap();
        sink.recover(None, Resume::Committed).await.unwrap();
        sink.write(rows(0..100)).await.unwrap();
        let checkpointing = {
            let sink = sink.clone();
            tokio::spawn(async move { sink.pre_commit(1, "100").await })
        };
        // The barrier passed every lane and the backend's pre-commit is running (held).
        held.entered.acquire().await.unwrap().forget();
        // Writers are not paused: these return while the pre-commit is held.
        for start in (100..200).step_by(10) {
            sink.write(rows(start..start + 10)).await.unwrap();
        }
        assert!(ids(&memory).is_empty(), "nothing visible before the commit");
        held.gate.add_permits(1);
        checkpointing.await.unwrap().unwrap();
        assert_eq!(
            ids(&memory),
            (0..100).collect::<Vec<_>>(),
            "only rows before the barrier"
        );
        held.gate.add_permits(1);
        sink.pre_commit(2, "200").await.unwrap();
        assert_eq!(ids(&memory), (0..200).collect::<Vec<_>>());
        sink.close().await.unwrap();
    }

    /// A sink dropped without `close` while its lanes wait at a barrier (the caller died
    /// between `pre_commit` calls) lets its lanes stop, so the backend's checkpoint writer is
    /// released (on SQLite, with it the held transaction and the write lock).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropped_sink_at_a_barrier_releases_the_checkpoint_writer() {
        let held = Held::new(MemoryBackend::new());
        let schema = Schema::new(
            "t",
            vec![Column::new("id", ColumnType::I64).unwrap().not_null()],
            &[],
        )
        .unwrap();
        let config = SinkConfig::builder()
            .create_table(CreateTable::IfMissing)
            .delivery(Delivery::TransactionalMarker)
            .sink_id(SinkId::new("dropped").unwrap())
            .build()
            .unwrap();
        let sink = Sink::open(&held, schema, config).await.unwrap();
        sink.recover(None, Resume::Committed).await.unwrap();
        sink.write(rows(0..10)).await.unwrap();
        // The barrier passes the lanes; the backend's pre-commit never finishes (the caller
        // dies in it).
        let call = {
            let sink = sink.clone();
            tokio::spawn(async move { sink.pre_commit(1, "10").await })
        };
        held.entered.acquire().await.unwrap().forget();
        call.abort();
        let _ = call.await;
        drop(sink);
        tokio::time::timeout(std::time::Duration::from_secs(10), held.dropped.acquire())
            .await
            .expect("the checkpoint writer is dropped once the lanes stop")
            .unwrap()
            .forget();
    }

    /// `commit(c)` does not wait for a `pre_commit(c + 1)` in progress: a two-phase lane may
    /// be waiting for that very commit to release a key.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commit_goes_through_while_the_next_pre_commit_waits() {
        let memory = MemoryBackend::new();
        let held = Held::new(memory.clone());
        let schema = Schema::new(
            "t",
            vec![Column::new("id", ColumnType::I64).unwrap().not_null()],
            &[],
        )
        .unwrap();
        let config = SinkConfig::builder()
            .create_table(CreateTable::IfMissing)
            .delivery(Delivery::TwoPhase)
            .sink_id(SinkId::new("overlap").unwrap())
            .build()
            .unwrap();
        let sink = Sink::open(&held, schema, config).await.unwrap();
        sink.recover(None, Resume::Committed).await.unwrap();
        sink.write(rows(0..10)).await.unwrap();
        held.gate.add_permits(1);
        sink.pre_commit(1, "10").await.unwrap();
        sink.write(rows(10..20)).await.unwrap();
        let next = {
            let sink = sink.clone();
            tokio::spawn(async move { sink.pre_commit(2, "20").await })
        };
        held.entered.acquire_many(2).await.unwrap().forget();
        tokio::time::timeout(std::time::Duration::from_secs(10), sink.commit(1))
            .await
            .expect("commit(1) is not held up by pre_commit(2)")
            .unwrap();
        assert_eq!(ids(&memory), (0..10).collect::<Vec<_>>());
        held.gate.add_permits(1);
        next.await.unwrap().unwrap();
        sink.commit(2).await.unwrap();
        assert_eq!(ids(&memory), (0..20).collect::<Vec<_>>());
        sink.close().await.unwrap();
    }

    fn one_column_sink_config(name: &str) -> SinkConfig {
        SinkConfig::builder()
            .create_table(CreateTable::IfMissing)
            .delivery(Delivery::TransactionalMarker)
            .sink_id(SinkId::new(name).unwrap())
            .batch_rows_max(10)
            .flush_interval_ms(1)
            .flush_concurrency(3)
            .build()
            .unwrap()
    }

    fn one_column_schema() -> Schema {
        Schema::new(
            "t",
            vec![Column::new("id", ColumnType::I64).unwrap().not_null()],
            &[],
        )
        .unwrap()
    }

    /// `start_pre_commit` places the barrier before it returns: rows written right after it,
    /// from the same task and before its future is first polled, belong to the next
    /// checkpoint; a second checkpoint call meanwhile is refused, not queued.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn start_pre_commit_places_the_barrier_before_it_returns() {
        let memory = MemoryBackend::new();
        let held = Held::new(memory.clone());
        let sink = Sink::open(
            &held,
            one_column_schema(),
            one_column_sink_config("started"),
        )
        .await
        .unwrap();
        sink.recover(None, Resume::Committed).await.unwrap();
        sink.write(rows(0..100)).await.unwrap();
        let first = sink.start_pre_commit(1, "100").unwrap();
        for start in (100..200).step_by(10) {
            sink.write(rows(start..start + 10)).await.unwrap();
        }
        let busy = sink.start_pre_commit(2, "200").map(|_| ()).unwrap_err();
        assert_eq!(busy.code(), "sink.checkpoint_busy");
        held.gate.add_permits(1);
        let state = first.await.unwrap();
        assert_eq!((state.checkpoint_id, state.state.as_str()), (1, "100"));
        assert_eq!(
            ids(&memory),
            (0..100).collect::<Vec<_>>(),
            "only rows written before the call"
        );
        held.gate.add_permits(1);
        sink.start_pre_commit(2, "200").unwrap().await.unwrap();
        assert_eq!(ids(&memory), (0..200).collect::<Vec<_>>());
        sink.close().await.unwrap();
    }

    /// A started pre-commit dropped before it finishes fails the sink instead of leaving its
    /// lanes waiting at the barrier.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_pre_commit_fails_the_sink() {
        let memory = MemoryBackend::new();
        let held = Held::new(memory.clone());
        let sink = Sink::open(
            &held,
            one_column_schema(),
            one_column_sink_config("dropped_pc"),
        )
        .await
        .unwrap();
        sink.recover(None, Resume::Committed).await.unwrap();
        sink.write(rows(0..10)).await.unwrap();
        drop(sink.start_pre_commit(1, "10").unwrap());
        let error = sink.write(rows(10..20)).await.unwrap_err();
        assert_eq!(error.code(), "sink.failed", "{error}");
        assert!(
            error.to_string().contains("dropped before it finished"),
            "{error}"
        );
        assert!(ids(&memory).is_empty());
    }
}
