//! The sink emits every metric of `MetricName` through the `metrics` facade, labelled with the
//! table and the backend, with values that match the sink's own counters.

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use sluice_sink::{
    Column, ColumnType, CreateTable, MemoryBackend, MetricKind, MetricName, Mode, Row, Schema,
    Sink, SinkConfig, Value,
};
use std::collections::BTreeMap;

type Labels = Vec<(String, String)>;

/// One metric as the recorder saw it: labels, description, value.
struct Seen {
    labels: Labels,
    described: bool,
    value: DebugValue,
}

/// Every metric recorded so far, by name (the test's sink is the only one emitting).
fn snapshot(snapshotter: &Snapshotter) -> BTreeMap<String, Seen> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, description, value)| {
            let key = key.key();
            let labels = key
                .labels()
                .map(|label| (label.key().to_string(), label.value().to_string()))
                .collect();
            let seen = Seen {
                labels,
                described: description.is_some(),
                value,
            };
            (key.name().to_string(), seen)
        })
        .collect()
}

#[tokio::test]
async fn every_metric_is_emitted_with_labels_and_matches_the_counters() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder in this binary");

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

    let seen = snapshot(&snapshotter);
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
        let metric = seen
            .get(name.as_str())
            .unwrap_or_else(|| panic!("{} is emitted", name.as_str()));
        assert!(metric.described, "{} is described", name.as_str());
        assert_eq!(
            metric.labels,
            [
                ("table".to_string(), "orders".to_string()),
                ("backend".to_string(), "memory".to_string())
            ],
            "{}",
            name.as_str()
        );
    }
    let value = |name: MetricName| &seen[name.as_str()].value;
    let counter = |name| match value(name) {
        DebugValue::Counter(count) => *count,
        other => panic!("{other:?} is not a counter"),
    };
    let observations = |name| match value(name) {
        DebugValue::Histogram(values) => values.iter().map(|v| v.into_inner()).collect::<Vec<_>>(),
        other => panic!("{other:?} is not a histogram"),
    };
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
        value(MetricName::BufferBytes),
        &DebugValue::Gauge(0.0.into())
    );
    let durations = observations(MetricName::FlushDurationSeconds);
    assert_eq!(
        durations.len() as u64,
        stats.batches,
        "one observation per batch, not per row"
    );
    assert!(durations.iter().all(|d| *d >= 0.0));
    let sizes = observations(MetricName::BatchRows);
    assert_eq!(sizes.iter().sum::<f64>() as u64, stats.rows_received);
    assert_eq!(
        (
            stats.rows_received,
            stats.rows_written + stats.rows_dead_lettered
        ),
        (11, 11)
    );
}
