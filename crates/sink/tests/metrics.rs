//! The sink emits every metric of `MetricName` through the `metrics` facade, labelled with the
//! table and the backend, with values that match the sink's own counters.

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use sluice_sink::{
    Column, ColumnType, CreateTable, MemoryBackend, MetricKind, MetricName, Mode, Row, Schema,
    Sink, SinkConfig, Value,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Series {
    counter: AtomicU64,
    gauge: Mutex<f64>,
    observations: Mutex<Vec<f64>>,
}

impl CounterFn for Series {
    fn increment(&self, value: u64) {
        self.counter.fetch_add(value, Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.counter.store(value, Ordering::SeqCst);
    }
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
type Registry = BTreeMap<String, (Labels, Arc<Series>)>;

/// Series by name, with the labels they were registered with.
#[derive(Clone, Default)]
struct TestRecorder {
    series: Arc<Mutex<Registry>>,
    described: Arc<Mutex<Vec<String>>>,
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
            .entry(key.name().to_string())
            .or_insert_with(|| (labels, Arc::new(Series::default())))
            .1
            .clone()
    }
    fn get(&self, name: MetricName) -> (Labels, Arc<Series>) {
        self.series
            .lock()
            .unwrap()
            .get(name.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("{} was not registered", name.as_str()))
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.described
            .lock()
            .unwrap()
            .push(key.as_str().to_string());
    }
    fn describe_gauge(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.described
            .lock()
            .unwrap()
            .push(key.as_str().to_string());
    }
    fn describe_histogram(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.described
            .lock()
            .unwrap()
            .push(key.as_str().to_string());
    }
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

#[tokio::test]
async fn every_metric_is_emitted_with_labels_and_matches_the_counters() {
    let recorder = TestRecorder::default();
    metrics::set_global_recorder(recorder.clone()).expect("the only recorder in this binary");

    let schema = Schema::new(
        "orders",
        vec![
            Column::new("id", ColumnType::I64).unwrap().not_null(),
            Column::new("v", ColumnType::Text).unwrap(),
        ],
        &["id"],
    )
    .unwrap();
    let backend = MemoryBackend::new();
    backend.fail_transiently_on_calls([1]);
    let config = SinkConfig::builder()
        .mode(Mode::Upsert)
        .create_table(CreateTable::IfMissing)
        .batch_rows_max(4)
        .flush_concurrency(1)
        .retry_backoff_initial_ms(1)
        .build()
        .unwrap();
    let sink = Sink::open(&backend, schema, config).await.unwrap();
    let mut rows: Vec<Row> = (0..10)
        .map(|id| Row::upsert(vec![(id % 7).into(), "x".into()]))
        .collect();
    rows.push(Row::upsert(vec![Value::Null, "no key".into()]));
    sink.write(rows).await.unwrap();
    sink.close().await.unwrap();
    let stats = sink.stats();

    let mut described = recorder.described.lock().unwrap().clone();
    described.sort();
    let mut all: Vec<String> = MetricName::ALL
        .iter()
        .map(|n| n.as_str().to_string())
        .collect();
    all.sort();
    assert_eq!(described, all, "every metric is described");
    for name in MetricName::ALL {
        assert!(name.as_str().starts_with("sluice_sink_"));
        assert_eq!(
            name.kind() == MetricKind::Counter,
            name.as_str().ends_with("_total"),
            "{}",
            name.as_str()
        );
        if name.backend_emitted() {
            continue;
        }
        let (labels, _) = recorder.get(name);
        assert_eq!(
            labels,
            [
                ("table".to_string(), "orders".to_string()),
                ("backend".to_string(), "memory".to_string())
            ],
            "{}",
            name.as_str()
        );
    }
    let counter = |name| recorder.get(name).1.counter.load(Ordering::SeqCst);
    assert_eq!(counter(MetricName::RowsReceivedTotal), stats.rows_received);
    assert_eq!(counter(MetricName::RowsWrittenTotal), stats.rows_written);
    assert_eq!(counter(MetricName::RowsDeadLetteredTotal), 1);
    assert_eq!(
        counter(MetricName::RowsCoalescedTotal),
        stats.rows_coalesced
    );
    assert_eq!(counter(MetricName::RowsFailedTotal), 0);
    assert_eq!(counter(MetricName::BatchesTotal), stats.batches);
    assert_eq!(counter(MetricName::RetriesTotal), 1);
    assert_eq!(
        counter(MetricName::BufferBytesAcceptedTotal),
        counter(MetricName::BufferBytesReleasedTotal)
    );
    assert!(counter(MetricName::BufferBytesAcceptedTotal) > 0);
    assert_eq!(
        *recorder
            .get(MetricName::BufferBytes)
            .1
            .gauge
            .lock()
            .unwrap(),
        0.0
    );
    let durations = recorder
        .get(MetricName::FlushDurationSeconds)
        .1
        .observations
        .lock()
        .unwrap()
        .clone();
    assert_eq!(
        durations.len() as u64,
        stats.batches,
        "one observation per batch, not per row"
    );
    assert!(durations.iter().all(|d| *d >= 0.0));
    let sizes = recorder
        .get(MetricName::BatchRows)
        .1
        .observations
        .lock()
        .unwrap()
        .clone();
    assert_eq!(sizes.iter().sum::<f64>() as u64, stats.rows_received);
    assert_eq!(
        (
            stats.rows_received,
            stats.rows_written + stats.rows_dead_lettered
        ),
        (11, 11)
    );
}
