//! The engine's write path on the in-memory reference backend: retries, failure, bisection and
//! fallback, back-pressure, and a model-based property test of buffer, lanes and batcher.

use proptest::prelude::*;
use sluice_sink::{
    Backpressure, Column, ColumnType, CreateTable, MemoryBackend, Mode, Op, Row, Schema, Sink,
    SinkConfig, SinkConfigBuilder, Value,
};
use std::collections::BTreeMap;
use std::time::Duration;

fn schema() -> Schema {
    Schema::new(
        "t",
        vec![
            Column::new("id", ColumnType::I64).unwrap().not_null(),
            Column::new("v", ColumnType::I64).unwrap(),
        ],
        &["id"],
    )
    .unwrap()
}

fn config() -> SinkConfigBuilder {
    SinkConfig::builder()
        .create_table(CreateTable::IfMissing)
        .flush_interval_ms(5)
        .retry_backoff_initial_ms(1)
        .retry_backoff_max_ms(4)
}

fn row(op: Op, id: i64, v: i64) -> Row {
    Row {
        op,
        values: vec![id.into(), v.into()],
    }
}

fn table(backend: &MemoryBackend) -> Vec<(i64, i64)> {
    backend
        .rows("t")
        .unwrap()
        .into_iter()
        .map(|values| match (&values[0], &values[1]) {
            (Value::I64(id), Value::I64(v)) => (*id, *v),
            other => panic!("unexpected row {other:?}"),
        })
        .collect()
}

/// Transient failures are retried with backoff; nothing is lost or duplicated.
#[tokio::test]
async fn transient_failures_are_retried_without_loss_or_duplicates() {
    let backend = MemoryBackend::new();
    backend.fail_transiently_on_calls([1, 2, 4]);
    let sink = Sink::open(
        &backend,
        schema(),
        config()
            .batch_rows_max(10)
            .flush_concurrency(1)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    sink.write((0..25).map(|id| row(Op::Insert, id, id)).collect())
        .await
        .unwrap();
    sink.flush().await.unwrap();
    assert_eq!(
        table(&backend),
        (0..25).map(|id| (id, id)).collect::<Vec<_>>()
    );
    let stats = sink.stats();
    assert_eq!(
        (stats.retries, stats.rows_written, stats.rows_failed),
        (3, 25, 0),
        "{stats:?}"
    );
    assert_eq!(backend.write_calls(), 6, "3 batches + 3 retries");
    sink.close().await.unwrap();
}

/// When transient errors outlast the retry budget, the sink fails loudly: flush and later
/// writes report it, and the lost rows are counted.
#[tokio::test]
async fn exhausted_retries_fail_the_sink() {
    let backend = MemoryBackend::new();
    backend.fail_transiently_on_calls(1..=3);
    let sink = Sink::open(
        &backend,
        schema(),
        config()
            .retry_attempts_max(2)
            .flush_concurrency(1)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    sink.write(vec![row(Op::Insert, 1, 1), row(Op::Insert, 2, 2)])
        .await
        .unwrap();
    let error = sink.flush().await.unwrap_err();
    assert_eq!(error.code(), "sink.failed");
    assert!(
        error.to_string().contains("gave up after 3 attempts"),
        "{error}"
    );
    assert_eq!(
        sink.write(vec![row(Op::Insert, 3, 3)])
            .await
            .unwrap_err()
            .code(),
        "sink.failed"
    );
    let stats = sink.stats();
    assert_eq!(
        (stats.rows_received, stats.rows_failed, stats.retries),
        (2, 2, 2),
        "{stats:?}"
    );
    assert_eq!(sink.close().await.unwrap_err().code(), "sink.failed");
    assert!(table(&backend).is_empty());
}

/// A refused row is isolated by bisection; when it superseded earlier changes of its key in
/// the batch, the latest acceptable one is written instead (as if applied one by one).
#[tokio::test]
async fn refused_row_falls_back_to_the_earlier_change_of_its_key() {
    let backend = MemoryBackend::new();
    backend.refuse_rows(|row| row.values[1] == Value::I64(-1));
    let sink = Sink::open(
        &backend,
        schema(),
        config()
            .mode(Mode::Changelog)
            .batch_rows_max(100)
            .flush_concurrency(1)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    sink.write(vec![
        row(Op::Upsert, 1, 10),
        row(Op::Upsert, 2, 20),
        row(Op::Upsert, 1, 11),
        row(Op::Upsert, 1, -1),
        row(Op::Upsert, 3, -1),
        row(Op::Upsert, 4, 40),
    ])
    .await
    .unwrap();
    sink.flush().await.unwrap();
    assert_eq!(table(&backend), [(1, 11), (2, 20), (4, 40)]);
    let letters = backend.dead_letters("t_dead_letters");
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(letters.iter().all(|l| l.error_code == "memory.refused"));
    let stats = sink.stats();
    assert_eq!(
        (
            stats.rows_written,
            stats.rows_dead_lettered,
            stats.rows_coalesced
        ),
        (4, 2, 1),
        "{stats:?}"
    );
    sink.close().await.unwrap();
}

/// With `backpressure = "error"` a write that does not fit the buffer is refused at once and
/// accepted again once flushes free space; one write larger than the buffer is always refused.
#[tokio::test]
async fn backpressure_error_refuses_and_recovers() {
    let backend = MemoryBackend::new();
    let row_bytes = row(Op::Insert, 0, 0).size_bytes();
    let config = config()
        .backpressure(Backpressure::Error)
        .batch_bytes_max(row_bytes)
        .batch_rows_max(1)
        .flush_concurrency(1)
        .buffer_bytes_max(row_bytes * 4)
        .flush_interval_ms(60_000)
        // The first batch waits out its retries while the test runs.
        .retry_attempts_max(100)
        .retry_backoff_initial_ms(10_000)
        .retry_backoff_max_ms(10_000)
        .build()
        .unwrap();
    backend.fail_transiently_on_calls(1..=1_000);
    let sink = Sink::open(&backend, schema(), config).await.unwrap();
    // The backend keeps failing (and the sink retrying), so nothing is released yet.
    sink.write((0..4).map(|id| row(Op::Insert, id, id)).collect())
        .await
        .unwrap();
    let error = sink.write(vec![row(Op::Insert, 9, 9)]).await.unwrap_err();
    assert_eq!(error.code(), "sink.buffer_full", "{error}");
    let too_large = sink
        .write((0..5).map(|id| row(Op::Insert, id, id)).collect())
        .await
        .unwrap_err();
    assert_eq!(too_large.code(), "sink.write_too_large");
    assert_eq!(sink.stats().buffer_bytes as usize, row_bytes * 4);
}

/// With `backpressure = "block"` a writer waits for space instead of failing, then goes on.
#[tokio::test]
async fn backpressure_block_waits_for_space() {
    let backend = MemoryBackend::new();
    let row_bytes = row(Op::Insert, 0, 0).size_bytes();
    let config = config()
        .batch_bytes_max(row_bytes)
        .batch_rows_max(1)
        .flush_concurrency(1)
        .buffer_bytes_max(row_bytes * 2)
        .build()
        .unwrap();
    let sink = Sink::open(&backend, schema(), config).await.unwrap();
    for id in 0..50 {
        sink.write(vec![row(Op::Insert, id, id)]).await.unwrap();
        assert!(sink.stats().buffer_bytes as usize <= row_bytes * 2);
    }
    sink.close().await.unwrap();
    assert_eq!(table(&backend).len(), 50);
}

/// `close` wakes writers blocked on a full buffer with `Closed`, and flushes what was accepted.
#[tokio::test]
async fn close_releases_blocked_writers() {
    let backend = MemoryBackend::new();
    backend.fail_transiently_on_calls(1..=3);
    let row_bytes = row(Op::Insert, 0, 0).size_bytes();
    let config = config()
        .batch_bytes_max(row_bytes)
        .flush_concurrency(1)
        .buffer_bytes_max(row_bytes)
        .retry_backoff_initial_ms(50)
        .retry_backoff_max_ms(50)
        .build()
        .unwrap();
    let sink = Sink::open(&backend, schema(), config).await.unwrap();
    sink.write(vec![row(Op::Insert, 1, 1)]).await.unwrap();
    let blocked = {
        let sink = sink.clone();
        tokio::spawn(async move { sink.write(vec![row(Op::Insert, 2, 2)]).await })
    };
    // The blocked writer is parked on the semaphore until close wakes it.
    tokio::task::yield_now().await;
    sink.close().await.unwrap();
    let outcome = blocked.await.unwrap();
    match outcome {
        // It either got in before close (and was flushed) or was refused: never lost.
        Ok(()) => assert_eq!(table(&backend), [(1, 1), (2, 2)]),
        Err(error) => {
            assert_eq!(error.code(), "sink.closed");
            assert_eq!(table(&backend), [(1, 1)]);
        }
    }
}

#[derive(Clone, Debug)]
enum Step {
    Write(Vec<(bool, i64, i64)>),
    Flush,
    Wait(u64),
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            6 => prop::collection::vec((prop::bool::weighted(0.3), 0..8i64, 0..100i64), 1..12).prop_map(Step::Write),
            1 => Just(Step::Flush),
            1 => (0u64..15).prop_map(Step::Wait),
        ],
        1..25,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever the limits, lanes and timing, after each flush the table equals applying
    /// every change in order, and the counters account for every row.
    #[test]
    fn write_path_matches_sequential_model(
        rows_max in 1usize..6,
        lanes in 1usize..4,
        interval_ms in 1u64..10,
        transient in prop::collection::btree_set(1u64..30, 0..4),
        steps in steps(),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().unwrap();
        runtime.block_on(async {
            let backend = MemoryBackend::new();
            backend.fail_transiently_on_calls(transient);
            let config = config()
                .mode(Mode::Changelog)
                .batch_rows_max(rows_max)
                .flush_concurrency(lanes)
                .flush_interval_ms(interval_ms)
                .build()
                .unwrap();
            let sink = Sink::open(&backend, schema(), config).await.unwrap();
            let mut model: BTreeMap<i64, i64> = BTreeMap::new();
            let mut sent = 0u64;
            for step in steps {
                match step {
                    Step::Write(changes) => {
                        let rows: Vec<Row> = changes.iter().map(|(delete, id, v)| {
                            if *delete {
                                model.remove(id);
                                row(Op::Delete, *id, 0)
                            } else {
                                model.insert(*id, *v);
                                row(Op::Upsert, *id, *v)
                            }
                        }).collect();
                        sent += rows.len() as u64;
                        sink.write(rows).await.unwrap();
                    }
                    Step::Flush => {
                        sink.flush().await.unwrap();
                        let expected: Vec<(i64, i64)> = model.iter().map(|(k, v)| (*k, *v)).collect();
                        prop_assert_eq!(table(&backend), expected);
                    }
                    Step::Wait(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                }
            }
            sink.close().await.unwrap();
            let expected: Vec<(i64, i64)> = model.iter().map(|(k, v)| (*k, *v)).collect();
            prop_assert_eq!(table(&backend), expected);
            let stats = sink.stats();
            prop_assert_eq!(stats.rows_received, sent);
            prop_assert_eq!(stats.rows_written + stats.rows_dead_lettered + stats.rows_failed, sent);
            prop_assert_eq!(stats.rows_dead_lettered + stats.rows_failed, 0);
            prop_assert_eq!(stats.buffer_bytes, 0);
            Ok(())
        })?;
    }
}

/// Records that never became rows (`Sink::reject`) go to the dead letters through the lanes,
/// with their raw text and position, and the counters balance; with exactly-once delivery they
/// become visible with the checkpoint that follows them, not before.
#[tokio::test]
async fn rejected_records_are_dead_lettered_and_counted() {
    use sluice_sink::{Delivery, Rejected, Resume, SinkId};
    for delivery in [Delivery::AtLeastOnce, Delivery::TransactionalMarker] {
        let backend = MemoryBackend::new();
        let mut builder = config().mode(Mode::Upsert).delivery(delivery);
        if delivery.is_exactly_once() {
            builder = builder.sink_id(SinkId::new("reject").unwrap());
        }
        let sink = Sink::open(&backend, schema(), builder.build().unwrap())
            .await
            .unwrap();
        sink.recover(None, Resume::Committed).await.unwrap();
        sink.write(vec![row(Op::Upsert, 1, 10), row(Op::Upsert, 2, 20)])
            .await
            .unwrap();
        sink.reject(vec![Rejected {
            record: "{\"id\": oops".into(),
            position: "in.ndjson:42".into(),
            code: "ingest.json.parse".into(),
            reason: "expected value at line 1 column 8".into(),
        }])
        .await
        .unwrap();
        sink.flush().await.unwrap();
        if delivery.is_exactly_once() {
            assert!(
                backend.dead_letters("t_dead_letters").is_empty(),
                "visible before the checkpoint"
            );
            sink.pre_commit(1, "in.ndjson:60").await.unwrap();
            sink.commit(1).await.unwrap();
        }
        let letters = backend.dead_letters("t_dead_letters");
        assert_eq!(letters.len(), 1, "{delivery:?}");
        assert_eq!(letters[0].error_code, "ingest.json.parse");
        assert_eq!(letters[0].error, "expected value at line 1 column 8");
        let row: serde_json::Value = serde_json::from_str(&letters[0].row).unwrap();
        assert_eq!(
            row,
            serde_json::json!({"record": "{\"id\": oops", "position": "in.ndjson:42"})
        );
        assert_eq!(table(&backend), vec![(1, 10), (2, 20)]);
        let stats = sink.stats();
        assert_eq!(
            (
                stats.rows_received,
                stats.rows_written,
                stats.rows_dead_lettered,
                stats.rows_failed
            ),
            (3, 2, 1, 0),
            "{stats:?}"
        );
        sink.close().await.unwrap();
    }
}

/// `wait_durable` answers once the rows before it are durable, but leaves the open batch to
/// its flush interval (where `flush` seals it at once).
#[tokio::test]
async fn wait_durable_observes_without_hurrying_the_batch() {
    let backend = MemoryBackend::new();
    let config = config()
        .flush_interval_ms(400)
        .batch_rows_max(10)
        .flush_concurrency(2)
        .mode(Mode::Insert)
        .build()
        .unwrap();
    let sink = Sink::open(&backend, schema(), config).await.unwrap();
    // 25 rows per lane: two full batches of 10 leave at once, 5 rows wait for the interval.
    for lane_share in 0..2 {
        let first = lane_share * 25;
        sink.write(
            (first..first + 25)
                .map(|id| row(Op::Insert, id, id))
                .collect(),
        )
        .await
        .unwrap();
    }
    let started = std::time::Instant::now();
    sink.wait_durable().await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "answered after {waited:?}: the open batches were hurried"
    );
    assert_eq!(
        table(&backend).len(),
        50,
        "every row before the call is durable"
    );

    // The same situation with `flush`: the open batches leave at once.
    for lane_share in 2..4 {
        let first = lane_share * 25;
        sink.write(
            (first..first + 25)
                .map(|id| row(Op::Insert, id, id))
                .collect(),
        )
        .await
        .unwrap();
    }
    let started = std::time::Instant::now();
    sink.flush().await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(300));
    assert_eq!(table(&backend).len(), 100);

    // Nothing buffered: answered at once.
    let started = std::time::Instant::now();
    sink.wait_durable().await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(300));
    sink.close().await.unwrap();
}

/// At least once, the lanes writing at the same time follow the load: a trickle brings the
/// limit down to one, writers waiting for buffer space bring it back up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_concurrency_follows_the_load() {
    let backend = MemoryBackend::new();
    let sink = Sink::open(
        &backend,
        schema(),
        config()
            .flush_concurrency(3)
            .flush_interval_ms(5)
            .batch_bytes_max(4096)
            .buffer_bytes_max(3 * 4096)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(sink.stats().flush_concurrency, 3, "starts at the maximum");
    // A trickle: one row every 20 ms, for up to 10 s (two calm windows per step down).
    let mut id = 0;
    let started = std::time::Instant::now();
    while sink.stats().flush_concurrency > 1 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "still at {} lanes",
            sink.stats().flush_concurrency
        );
        sink.write(vec![row(Op::Insert, id, id)]).await.unwrap();
        id += 1;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // A flood: writes as large as a third of the buffer, as fast as they are accepted.
    let started = std::time::Instant::now();
    while sink.stats().flush_concurrency < 2 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "did not rise under pressure"
        );
        let rows: Vec<Row> = (id..id + 20).map(|id| row(Op::Insert, id, id)).collect();
        id += 20;
        sink.write(rows).await.unwrap();
    }
    sink.close().await.unwrap();
    assert_eq!(table(&backend).len() as i64, id, "every row written once");
}

/// Without `flush_concurrency_adaptive` the limit stays at `flush_concurrency`.
#[tokio::test]
async fn fixed_flush_concurrency_stays() {
    let backend = MemoryBackend::new();
    let sink = Sink::open(
        &backend,
        schema(),
        config()
            .flush_concurrency(3)
            .flush_concurrency_adaptive(false)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    sink.write(vec![row(Op::Insert, 1, 1)]).await.unwrap();
    sink.flush().await.unwrap();
    assert_eq!(sink.stats().flush_concurrency, 3);
    sink.close().await.unwrap();
}
