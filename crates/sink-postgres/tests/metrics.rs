//! The metrics the PostgreSQL backend emits itself, through the `metrics` facade with the
//! labels `table` and `backend = "postgres"`: the pool's (acquire time, active and idle
//! connections) and, with two-phase delivery, the prepared transactions left waiting for their
//! commit more than two checkpoints. One test: the recorder is global to the binary.

mod common;

use common::TestDb;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use sluice_sink::{
    Column, ColumnType, CreateTable, Delivery, MetricName, Resume, Row, Schema, Sink, SinkConfig,
    SinkId,
};
use std::collections::BTreeMap;

/// Reads the recorder. A snapshot resets counters and gauges and drains histograms, so the
/// histograms' values are gathered across snapshots; a gauge reads what was set since the last
/// snapshot (the backend sets each of its gauges anew wherever it changes).
struct Recorded {
    snapshotter: Snapshotter,
    observations: BTreeMap<&'static str, Vec<f64>>,
}

impl Recorded {
    /// The gauges of this test's table now, by name; every metric must be described.
    fn gauges(&mut self) -> BTreeMap<String, f64> {
        let labels = [("table", "metered"), ("backend", "postgres")];
        let mut gauges = BTreeMap::new();
        for (key, _, description, value) in self.snapshotter.snapshot().into_vec() {
            let key = key.key();
            if !key
                .labels()
                .map(|label| (label.key(), label.value()))
                .eq(labels.iter().copied())
            {
                continue;
            }
            assert!(description.is_some(), "{} is described", key.name());
            match value {
                DebugValue::Gauge(value) => {
                    gauges.insert(key.name().to_string(), value.into_inner());
                }
                DebugValue::Histogram(values) => {
                    let name = MetricName::ALL
                        .into_iter()
                        .find(|name| name.as_str() == key.name())
                        .expect("a sink metric");
                    self.observations
                        .entry(name.as_str())
                        .or_default()
                        .extend(values.into_iter().map(|v| v.into_inner()));
                }
                DebugValue::Counter(_) => {}
            }
        }
        gauges
    }

    fn gauge(&mut self, name: MetricName) -> f64 {
        *self
            .gauges()
            .get(name.as_str())
            .unwrap_or_else(|| panic!("{} was not registered", name.as_str()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_and_orphaned_prepared_transaction_metrics() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder in this binary");
    let Some(db) = TestDb::start("sink-postgres metrics").await else {
        return;
    };
    let schema = Schema::new(
        "metered",
        vec![
            Column::new("id", ColumnType::I64).unwrap().not_null(),
            Column::new("v", ColumnType::Text).unwrap(),
        ],
        &[],
    )
    .unwrap();
    let config = SinkConfig::builder()
        .delivery(Delivery::TwoPhase)
        .sink_id(SinkId::new("metered").unwrap())
        .create_table(CreateTable::IfMissing)
        .flush_concurrency(1)
        .flush_interval_ms(5)
        .build()
        .unwrap();
    let sink = Sink::open(&db.backend, schema, config).await.unwrap();
    sink.recover(None, Resume::Committed).await.unwrap();
    let mut recorded = Recorded {
        snapshotter,
        observations: BTreeMap::new(),
    };
    // Each pre-commit sets the gauge anew.
    let mut orphaned = || recorded.gauge(MetricName::OrphanedPreparedTransactions);
    // Checkpoints 1 to 5 pre-committed, none committed: at 5, checkpoints 1 and 2 are more
    // than two checkpoints old.
    for checkpoint in 1..=5_i64 {
        sink.write(vec![Row::insert(vec![checkpoint.into(), "x".into()])])
            .await
            .unwrap();
        sink.pre_commit(checkpoint as u64, "").await.unwrap();
        let expected = (checkpoint - 3).max(0) as f64;
        assert_eq!(orphaned(), expected, "after checkpoint {checkpoint}");
    }
    sink.commit(5).await.unwrap();
    sink.write(vec![Row::insert(vec![6.into(), "x".into()])])
        .await
        .unwrap();
    sink.pre_commit(6, "").await.unwrap();
    assert_eq!(orphaned(), 0.0);
    sink.commit(6).await.unwrap();
    sink.close().await.unwrap();

    let gauges = recorded.gauges();
    let acquired = &recorded.observations[MetricName::PoolAcquireDurationSeconds.as_str()];
    // At least prepare, recovery, one lane transaction per checkpoint and the commits.
    assert!(acquired.len() >= 9, "{acquired:?}");
    assert!(acquired.iter().all(|seconds| *seconds >= 0.0));
    let max = db.backend.pool().status().max_size as f64;
    // Set right after the last acquire (the last commit's): the acquired connection is active.
    let active = gauges[MetricName::PoolConnectionsActive.as_str()];
    let idle = gauges[MetricName::PoolConnectionsIdle.as_str()];
    assert!(
        active >= 1.0 && active + idle <= max,
        "{active} + {idle} of {max}"
    );
}
