//! The metrics the PostgreSQL backend emits itself, through the `metrics` facade with the
//! labels `table` and `backend = "postgres"`: the pool's (acquire time, active and idle
//! connections) and, with two-phase delivery, the prepared transactions left waiting for their
//! commit more than two checkpoints. One test: the recorder is global to the binary.

mod common;

use common::TestDb;
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use sluice_sink::{
    Column, ColumnType, CreateTable, Delivery, MetricName, Resume, Row, Schema, Sink, SinkConfig,
    SinkId,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Series {
    gauge: Mutex<f64>,
    observations: Mutex<Vec<f64>>,
}

impl CounterFn for Series {
    fn increment(&self, _: u64) {}
    fn absolute(&self, _: u64) {}
}

impl GaugeFn for Series {
    fn increment(&self, value: f64) {
        *self.gauge.lock().unwrap() += value;
    }
    fn decrement(&self, value: f64) {
        *self.gauge.lock().unwrap() -= value;
    }
    fn set(&self, value: f64) {
        *self.gauge.lock().unwrap() = value;
    }
}

impl HistogramFn for Series {
    fn record(&self, value: f64) {
        self.observations.lock().unwrap().push(value);
    }
}

type Labels = Vec<(String, String)>;
type Registry = BTreeMap<(String, Labels), Arc<Series>>;

/// Series by name and labels.
#[derive(Clone, Default)]
struct TestRecorder {
    series: Arc<Mutex<Registry>>,
}

impl TestRecorder {
    fn series(&self, key: &Key) -> Arc<Series> {
        let labels = key
            .labels()
            .map(|l| (l.key().to_string(), l.value().to_string()))
            .collect();
        self.series
            .lock()
            .unwrap()
            .entry((key.name().to_string(), labels))
            .or_default()
            .clone()
    }

    fn get(&self, name: MetricName, table: &str) -> Arc<Series> {
        let labels = vec![
            ("table".to_string(), table.to_string()),
            ("backend".to_string(), "postgres".to_string()),
        ];
        self.series
            .lock()
            .unwrap()
            .get(&(name.as_str().to_string(), labels))
            .cloned()
            .unwrap_or_else(|| panic!("{} was not registered for {table}", name.as_str()))
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.series(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.series(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.series(key))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_and_orphaned_prepared_transaction_metrics() {
    let recorder = TestRecorder::default();
    metrics::set_global_recorder(recorder.clone()).expect("the only recorder in this binary");
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
    let orphaned = || {
        *recorder
            .get(MetricName::OrphanedPreparedTransactions, "metered")
            .gauge
            .lock()
            .unwrap()
    };
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

    let acquired = recorder
        .get(MetricName::PoolAcquireDurationSeconds, "metered")
        .observations
        .lock()
        .unwrap()
        .clone();
    // At least prepare, recovery, one lane transaction per checkpoint and the commits.
    assert!(acquired.len() >= 9, "{acquired:?}");
    assert!(acquired.iter().all(|seconds| *seconds >= 0.0));
    let max = db.backend.pool().status().max_size as f64;
    let active = *recorder
        .get(MetricName::PoolConnectionsActive, "metered")
        .gauge
        .lock()
        .unwrap();
    let idle = *recorder
        .get(MetricName::PoolConnectionsIdle, "metered")
        .gauge
        .lock()
        .unwrap();
    // Set right after an acquire: the acquired connection is active.
    assert!(
        active >= 1.0 && active + idle <= max,
        "{active} + {idle} of {max}"
    );
}
