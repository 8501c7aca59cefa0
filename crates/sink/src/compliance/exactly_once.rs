//! Exactly-once checks: every backend passes them for each mechanism it supports, through
//! [`exactly_once_compliance_tests!`](crate::exactly_once_compliance_tests).
//!
//! A simulated stream processor drives the sink: it writes numbered events, checkpoints,
//! records completed checkpoints, commits, and "crashes" at fail points on every phase
//! boundary (the sink is aborted and dropped, as a dead process's would be, and a new one
//! recovers from the last recorded checkpoint). At the end every event is in the table exactly
//! once.

use super::faults::{FailPoint, FaultyBackend};
use super::{Harness, base, column, kv};
use crate::{
    CheckpointDriver, CheckpointState, ColumnType, Delivery, Ident, Mode, Rejected, ReplayCut,
    Resume, Row, Schema, Sink, SinkConfigBuilder, SinkId, Value,
};
use std::collections::BTreeMap;

fn events_schema(table: &str) -> Schema {
    // No key: a duplicate shows up as a second row instead of a refused insert.
    Schema::new(
        table,
        vec![
            column("id", ColumnType::I64).not_null(),
            column("v", ColumnType::Text),
        ],
        &[],
    )
    .expect("valid schema")
}

fn config(delivery: Delivery, sink_id: &str) -> SinkConfigBuilder {
    base()
        .delivery(delivery)
        .sink_id(SinkId::new(sink_id).expect("valid sink id"))
}

async fn open_with(
    backend: &dyn crate::SinkBackend,
    schema: &Schema,
    config: SinkConfigBuilder,
) -> Sink {
    Sink::open(
        backend,
        schema.clone(),
        config.build().expect("valid config"),
    )
    .await
    .expect("the sink opens")
}

fn events(range: std::ops::Range<i64>) -> Vec<Row> {
    range
        .map(|id| Row::insert(kv(id, &format!("e{id}"))))
        .collect()
}

/// Counts of each id in the table.
async fn id_counts<H: Harness>(harness: &H, schema: &Schema) -> BTreeMap<i64, usize> {
    let mut counts = BTreeMap::new();
    for row in harness.read_rows(schema).await {
        match row[0] {
            Value::I64(id) => *counts.entry(id).or_insert(0) += 1,
            ref other => panic!("unexpected id {other:?}"),
        }
    }
    counts
}

fn assert_exactly(counts: &BTreeMap<i64, usize>, range: std::ops::Range<i64>) {
    let missing: Vec<i64> = range
        .clone()
        .filter(|id| !counts.contains_key(id))
        .collect();
    let duplicated: Vec<(i64, usize)> = counts
        .iter()
        .filter(|(_, count)| **count != 1)
        .map(|(id, count)| (*id, *count))
        .collect();
    let strays: Vec<i64> = counts
        .keys()
        .filter(|id| !range.contains(id))
        .copied()
        .collect();
    assert!(
        missing.is_empty() && duplicated.is_empty() && strays.is_empty(),
        "missing {} ids (first {:?}), duplicated {:?}, strays {:?}",
        missing.len(),
        missing.iter().take(10).collect::<Vec<_>>(),
        duplicated.iter().take(10).collect::<Vec<_>>(),
        strays.iter().take(10).collect::<Vec<_>>()
    );
}

/// Rows are invisible until the checkpoint makes them so: at `pre_commit` for the marker, at
/// `commit` for two-phase. Rows after a barrier belong to the next checkpoint.
pub async fn checkpoint_makes_rows_visible<H: Harness>(harness: H, delivery: Delivery) {
    let schema = events_schema("visible");
    let sink = open_with(harness.backend(), &schema, config(delivery, "visible")).await;
    let recovery = sink.recover(None, Resume::Committed).await.unwrap();
    assert_eq!(recovery.checkpoint_id, None);
    sink.write(events(0..100)).await.unwrap();
    sink.flush().await.unwrap();
    assert!(
        harness.read_rows(&schema).await.is_empty(),
        "rows are invisible before the checkpoint"
    );
    let state = sink.pre_commit(1, "100").await.unwrap();
    assert_eq!(state.checkpoint_id, 1);
    assert_eq!(state.state, "100");
    sink.write(events(100..150)).await.unwrap();
    sink.flush().await.unwrap();
    let visible = harness.read_rows(&schema).await.len();
    match delivery {
        Delivery::TwoPhase => {
            assert_eq!(visible, 0, "prepared rows are invisible until commit");
            assert!(!harness.prepared_transactions().await.is_empty());
        }
        _ => assert_eq!(visible, 100, "the marker commits at pre_commit"),
    }
    sink.commit(1).await.unwrap();
    sink.commit(1).await.unwrap();
    assert_exactly(&id_counts(&harness, &schema).await, 0..100);
    sink.pre_commit(2, "150").await.unwrap();
    sink.commit(2).await.unwrap();
    // Rows after the last checkpoint are rolled back by close.
    sink.write(events(150..160)).await.unwrap();
    sink.close().await.unwrap();
    assert_exactly(&id_counts(&harness, &schema).await, 0..150);
    assert!(harness.prepared_transactions().await.is_empty());
    let stats = sink.stats();
    assert_eq!(stats.checkpoints, 2);
}

/// The protocol refuses misuse with clear errors and writes nothing for it.
pub async fn protocol_misuse_refused<H: Harness>(harness: H, delivery: Delivery) {
    let schema = events_schema("misuse");
    let sink = open_with(harness.backend(), &schema, config(delivery, "misuse")).await;
    let code = |result: Result<(), crate::SinkError>| result.unwrap_err().code();
    assert_eq!(code(sink.write(events(0..1)).await), "sink.recovery");
    assert_eq!(
        sink.pre_commit(1, "").await.unwrap_err().code(),
        "sink.recovery"
    );
    let other = CheckpointState {
        sink_id: Some(SinkId::new("another").unwrap()),
        writer_id: 0,
        checkpoint_id: 1,
        state: String::new(),
    };
    assert_eq!(
        sink.recover(Some(&other), Resume::Committed)
            .await
            .unwrap_err()
            .code(),
        "sink.recovery"
    );
    sink.recover(None, Resume::Committed).await.unwrap();
    assert_eq!(
        sink.recover(None, Resume::Committed)
            .await
            .unwrap_err()
            .code(),
        "sink.recovery"
    );
    sink.write(events(0..10)).await.unwrap();
    sink.pre_commit(5, "10").await.unwrap();
    assert_eq!(
        sink.pre_commit(5, "10").await.unwrap_err().code(),
        "sink.checkpoint_order"
    );
    assert_eq!(
        sink.pre_commit(4, "10").await.unwrap_err().code(),
        "sink.checkpoint_order"
    );
    assert_eq!(code(sink.commit(6).await), "sink.checkpoint_order");
    sink.commit(5).await.unwrap();
    sink.close().await.unwrap();
    assert_exactly(&id_counts(&harness, &schema).await, 0..10);

    // A restored checkpoint the database never saw is refused by the marker (rows lost).
    if delivery == Delivery::TransactionalMarker {
        let sink = open_with(harness.backend(), &schema, config(delivery, "misuse")).await;
        let ahead = CheckpointState {
            sink_id: Some(SinkId::new("misuse").unwrap()),
            writer_id: 0,
            checkpoint_id: 9,
            state: "90".into(),
        };
        assert_eq!(
            sink.recover(Some(&ahead), Resume::Committed)
                .await
                .unwrap_err()
                .code(),
            "sink.checkpoint_ahead"
        );
    }
}

/// A refused row inside a checkpoint is isolated with savepoints: its batch-mates and its dead
/// letter commit with the checkpoint, once.
pub async fn bad_rows_inside_checkpoint<H: Harness>(harness: H, delivery: Delivery) {
    let schema = Schema::new(
        "guarded_eo",
        vec![
            column("id", ColumnType::I64).not_null(),
            column("v", ColumnType::Text),
        ],
        &["id"],
    )
    .unwrap();
    let sink = open_with(
        harness.backend(),
        &schema,
        config(delivery, "guarded")
            .mode(Mode::Insert)
            .batch_rows_max(64)
            .flush_concurrency(1),
    )
    .await;
    sink.recover(None, Resume::Committed).await.unwrap();
    let mut rows = events(0..40);
    // A duplicate key inside the same transaction: the database refuses it.
    rows.insert(17, Row::insert(kv(3, "duplicate")));
    sink.write(rows).await.unwrap();
    sink.pre_commit(1, "41").await.unwrap();
    sink.commit(1).await.unwrap();
    sink.close().await.unwrap();
    let read = harness.read_rows(&schema).await;
    assert_eq!(read.len(), 40);
    assert!(read.iter().all(|row| !row[1].same_as(&"duplicate".into())));
    let letters = harness
        .read_dead_letters(&Ident::new("guarded_eo_dead_letters").unwrap())
        .await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(letters[0].row.contains("duplicate"));
    let stats = sink.stats();
    assert_eq!((stats.rows_written, stats.rows_dead_lettered), (40, 1));
}

/// After a crash between `pre_commit` and the processor recording the checkpoint, the marker's
/// database is ahead: replaying from the restored checkpoint with the same barriers skips what
/// the database has (`Resume::Restored`), and seeking to the database's position
/// (`Resume::Committed`) needs no skipping. Two-phase rolls the unrecorded checkpoint back.
pub async fn recovery_after_unrecorded_checkpoint<H: Harness>(harness: H, delivery: Delivery) {
    let schema = events_schema("unrecorded");
    let batches: Vec<std::ops::Range<i64>> = vec![0..30, 30..70, 70..100, 100..130];
    for resume in [Resume::Restored, Resume::Committed] {
        let sink_id = match resume {
            Resume::Restored => "restored",
            Resume::Committed => "committed",
        };
        let table = format!("unrecorded_{sink_id}");
        let schema = events_schema(&table);
        let run = |sink: Sink, from: usize| {
            let batches = batches.clone();
            async move {
                let mut states = Vec::new();
                for (index, range) in batches.iter().enumerate().skip(from) {
                    sink.write(events(range.clone())).await.unwrap();
                    let id = index as u64 + 1;
                    states.push(sink.pre_commit(id, &range.end.to_string()).await.unwrap());
                    sink.commit(id).await.unwrap();
                }
                sink.close().await.unwrap();
                states
            }
        };
        // First run: checkpoints 1 and 2 recorded, 3 pre-committed but never recorded.
        let sink = open_with(harness.backend(), &schema, config(delivery, sink_id)).await;
        sink.recover(None, resume).await.unwrap();
        let mut recorded = None;
        for (index, range) in batches.iter().take(3).enumerate() {
            sink.write(events(range.clone())).await.unwrap();
            let state = sink
                .pre_commit(index as u64 + 1, &range.end.to_string())
                .await
                .unwrap();
            if index < 2 {
                sink.commit(index as u64 + 1).await.unwrap();
                recorded = Some(state);
            }
        }
        crash(&sink).await;
        let restored = recorded.expect("checkpoint 2 recorded");
        let sink = open_with(harness.backend(), &schema, config(delivery, sink_id)).await;
        let recovery = sink.recover(Some(&restored), resume).await.unwrap();
        let from = match (delivery, resume) {
            (Delivery::TransactionalMarker, Resume::Restored) => {
                assert_eq!(recovery.skipping_through, Some(3));
                assert_eq!(recovery.checkpoint_id, Some(2));
                2
            }
            (Delivery::TransactionalMarker, Resume::Committed) => {
                assert_eq!(recovery.checkpoint_id, Some(3));
                assert_eq!(recovery.state.as_deref(), Some("100"));
                3
            }
            _ => {
                assert_eq!(recovery.checkpoint_id, Some(2));
                assert_eq!(recovery.state.as_deref(), Some("70"));
                2
            }
        };
        let probe = sink.clone();
        run(sink, from).await;
        assert_exactly(&id_counts(&harness, &schema).await, 0..130);
        if recovery.skipping_through.is_some() {
            assert_eq!(probe.stats().rows_skipped, 30);
        }
    }
    assert!(harness.prepared_transactions().await.is_empty());
    let _ = schema;
}

/// A processor that keeps no checkpoint store of its own (it resumes where the database says,
/// `recover(None, Resume::Committed)`) through the [`CheckpointDriver`]: after a crash the
/// next run resumes at the last checkpoint the database holds, even when the crash fell
/// between two lanes' `COMMIT PREPARED` (two-phase: the other lanes' prepared transactions
/// of that checkpoint are committed, later ones rolled back), and every event lands once.
pub async fn stateless_processor_resumes_where_the_database_says<H: Harness>(
    harness: H,
    delivery: Delivery,
) {
    let schema = events_schema("stateless");
    let open = || async {
        open_with(
            harness.backend(),
            &schema,
            config(delivery, "stateless")
                .flush_concurrency(3)
                .batch_rows_max(7),
        )
        .await
    };
    // First run: checkpoints 1 and 2 complete, 3 pre-committed (two-phase: prepared in every
    // lane, then the process dies having committed one lane's part).
    let sink = open().await;
    let recovery = sink.recover(None, Resume::Committed).await.unwrap();
    assert_eq!(recovery.checkpoint_id, None);
    let mut checkpoints = CheckpointDriver::new(&sink, &recovery);
    for end in [40, 80] {
        sink.write(events(end - 40..end)).await.unwrap();
        checkpoints.start(&end.to_string()).unwrap();
        // The next checkpoint's rows go in while this one finishes.
        checkpoints.finished().await.unwrap();
    }
    // Unkeyed rows go to one lane per write call: several calls spread over the lanes.
    for start in (80..120).step_by(10) {
        sink.write(events(start..start + 10)).await.unwrap();
    }
    let third = sink.pre_commit(3, "120").await.unwrap();
    assert_eq!(third.checkpoint_id, 3);
    let mut half_committed = false;
    if delivery == Delivery::TwoPhase {
        let prepared = harness.prepared_transactions().await;
        assert!(
            prepared.len() >= 2,
            "checkpoint 3 prepared in several lanes: {prepared:?}"
        );
        half_committed = harness.commit_prepared(&prepared[0]).await;
        assert!(half_committed, "the harness commits a prepared transaction");
    }
    sink.write(events(120..130)).await.unwrap();
    crash(&sink).await;
    // Second run: resumes after checkpoint 3 (the marker committed it; two-phase completes
    // it because one lane committed), writes the rest.
    let sink = open().await;
    let recovery = sink.recover(None, Resume::Committed).await.unwrap();
    assert_eq!(
        recovery.checkpoint_id,
        Some(3),
        "half committed: {half_committed}"
    );
    assert_eq!(recovery.state.as_deref(), Some("120"));
    let mut checkpoints = CheckpointDriver::new(&sink, &recovery);
    assert_eq!(checkpoints.next_id(), 4);
    sink.write(events(120..150)).await.unwrap();
    assert_eq!(checkpoints.start("150").unwrap(), 4);
    assert!(matches!(
        checkpoints.start("150"),
        Err(crate::SinkError::CheckpointBusy)
    ));
    let done = checkpoints.finish().await.unwrap().expect("one under way");
    assert_eq!((done.checkpoint_id, done.state.as_str()), (4, "150"));
    assert_eq!(checkpoints.finish().await.unwrap(), None);
    sink.close().await.unwrap();
    assert_exactly(&id_counts(&harness, &schema).await, 0..150);
    assert!(harness.prepared_transactions().await.is_empty());
}

/// What a dying process leaves: no more writes from this sink, open transactions gone,
/// prepared ones kept.
/// The marker committed lane by lane (PostgreSQL): a process that dies between the lanes'
/// commits of a checkpoint leaves some lanes with it and the others without. A processor that
/// resumes where the database says learns of the partial checkpoint (`Recovery::partial`),
/// replays from the complete one before it up to the partial one's state, and every event and
/// dead letter (a refused row, rejected records) lands once, whatever the grouping of the
/// replay's write calls. A replay that does not repeat the checkpoint fails before anything of
/// it commits. A backend that commits every lane in one transaction has no partial
/// checkpoints: nothing to check.
pub async fn partial_checkpoint_replayed_into_the_lanes_that_lost_it<H: Harness>(
    harness: H,
    delivery: Delivery,
) {
    if delivery != Delivery::TransactionalMarker {
        return;
    }
    let schema = events_schema("partial");
    let open = || async {
        open_with(
            harness.backend(),
            &schema,
            config(delivery, "partial")
                .flush_concurrency(3)
                .batch_rows_max(7),
        )
        .await
    };
    let mut third = events(80..120);
    // A row the schema refuses (a NULL id): a dead letter, counted among the rows.
    third.insert(
        15,
        Row::insert(vec![Value::Null, Value::Text("refused".into())]),
    );
    let rejects: Vec<Rejected> = (0..9)
        .map(|n| Rejected {
            record: format!("garbage {n}"),
            position: format!("input:{n}"),
            code: "test.garbage".into(),
            reason: "not an event".into(),
        })
        .collect();
    let letters_table = Ident::new("partial_dead_letters").unwrap();

    // First run: checkpoints 1 and 2 complete; checkpoint 3 commits in lane 0 only.
    let sink = open().await;
    let recovery = sink.recover(None, Resume::Committed).await.unwrap();
    let mut checkpoints = CheckpointDriver::new(&sink, &recovery);
    for end in [40, 80] {
        sink.write(events(end - 40..end)).await.unwrap();
        checkpoints.start(&end.to_string()).unwrap();
        checkpoints.finished().await.unwrap();
    }
    for chunk in third.chunks(10) {
        sink.write(chunk.to_vec()).await.unwrap();
    }
    sink.reject(rejects.clone()).await.unwrap();
    if !harness.fail_next_marker_commit(1).await {
        sink.close().await.unwrap();
        return;
    }
    checkpoints.start("120").unwrap();
    assert!(
        checkpoints.finished().await.is_err(),
        "lanes 1 and 2 failed"
    );
    crash(&sink).await;
    let counts = id_counts(&harness, &schema).await;
    let visible = (80..120).filter(|id| counts.contains_key(id)).count();
    assert!(
        visible > 0 && visible < 40,
        "lane 0's part of checkpoint 3 is visible, the rest is not: {visible} of 40"
    );
    let partial = Some(ReplayCut {
        checkpoint_id: 3,
        state: "120".into(),
    });

    // Second run: a replay that stops short of checkpoint 3's state is refused at its
    // barrier, and nothing of it commits.
    let sink = open().await;
    let recovery = sink.recover(None, Resume::Committed).await.unwrap();
    assert_eq!(
        (recovery.checkpoint_id, recovery.state.as_deref()),
        (Some(2), Some("80"))
    );
    assert_eq!(recovery.partial, partial);
    let mut checkpoints = CheckpointDriver::new(&sink, &recovery);
    assert_eq!(checkpoints.next_id(), 3);
    sink.write(third[..30].to_vec()).await.unwrap();
    let refused = checkpoints.start("110").unwrap_err();
    assert_eq!(refused.code(), "sink.partial_replay_mismatch", "{refused}");
    crash(&sink).await;
    assert_eq!(id_counts(&harness, &schema).await, counts);

    // Third run: the exact replay, grouped differently, then the rest.
    let sink = open().await;
    let recovery = sink.recover(None, Resume::Committed).await.unwrap();
    assert_eq!(recovery.partial, partial);
    let mut checkpoints = CheckpointDriver::new(&sink, &recovery);
    sink.write(third.clone()).await.unwrap();
    sink.reject(rejects[..4].to_vec()).await.unwrap();
    sink.reject(rejects[4..].to_vec()).await.unwrap();
    assert_eq!(checkpoints.start("120").unwrap(), 3);
    checkpoints.finished().await.unwrap();
    let skipped = sink.stats().rows_skipped;
    assert!(skipped > 0, "lane 0's entries were not written again");
    sink.write(events(120..150)).await.unwrap();
    checkpoints.start("150").unwrap();
    checkpoints.finished().await.unwrap();
    sink.close().await.unwrap();
    assert_exactly(&id_counts(&harness, &schema).await, 0..150);
    let letters = harness.read_dead_letters(&letters_table).await;
    let mut seen: Vec<String> = letters.iter().map(|letter| letter.row.clone()).collect();
    seen.sort();
    let before = seen.len();
    seen.dedup();
    assert_eq!(
        (before, seen.len()),
        (10, 10),
        "the refused row and 9 rejected records, once each: {letters:?}"
    );
}

async fn crash(sink: &Sink) {
    // Abort rolls back the open transaction and stops every lane; checkpoint u64::MAX keeps
    // every prepared transaction, as a crash would.
    let _ = sink.abort(u64::MAX).await;
}

/// A processor streams numbered events, checkpointing every few dozen rows, and crashes at
/// every fail point (and between pre-commit and recording, and mid-checkpoint) many times; each
/// restart recovers from the last recorded checkpoint and seeks to the position recovery
/// returns. At the end every event is in the table exactly once.
pub async fn crash_replay_exactly_once<H: Harness>(harness: H, delivery: Delivery) {
    let schema = events_schema("crashing");
    let total: i64 = 3_000;
    let mut rng = fastrand::Rng::with_seed(0x5eed_0005);
    let mut recorded: Option<CheckpointState> = None;
    let mut crashes = 0;
    let mut fired = Vec::new();
    loop {
        let faulty = FaultyBackend::new(harness.backend());
        if crashes < 24 {
            let point = FailPoint::ALL[rng.usize(..FailPoint::ALL.len())];
            faulty.points().arm(point, rng.u64(0..4));
        }
        let sink = open_with(
            &faulty,
            &schema,
            config(delivery, "crashing")
                .batch_rows_max(rng.usize(5..60))
                .flush_concurrency(rng.usize(1..4)),
        )
        .await;
        let recovery = match sink.recover(recorded.as_ref(), Resume::Committed).await {
            Ok(recovery) => recovery,
            Err(_) => {
                crashes += 1;
                crash(&sink).await;
                fired.extend(faulty.points().fired());
                continue;
            }
        };
        let mut position: i64 = recovery
            .state
            .as_deref()
            .map_or(0, |state| state.parse().expect("a position"));
        let mut next_id = recovery.checkpoint_id.map_or(1, |id| id + 1);
        let mut crashed = false;
        while position < total && !crashed {
            let end = (position + rng.i64(1..40)).min(total);
            if sink.write(events(position..end)).await.is_err() {
                crashed = true;
                break;
            }
            position = end;
            if crashes < 24 && rng.u32(0..100) == 0 {
                crashed = true; // dies mid-checkpoint
                break;
            }
            if rng.u32(0..4) != 0 && position < total {
                continue;
            }
            let state = match sink.pre_commit(next_id, &position.to_string()).await {
                Ok(state) => state,
                Err(_) => {
                    crashed = true;
                    break;
                }
            };
            if crashes < 24 && rng.u32(0..25) == 0 {
                crashed = true; // dies before recording the checkpoint
                break;
            }
            recorded = Some(state);
            if crashes < 24 && rng.u32(0..25) == 0 {
                crashed = true; // dies before committing it
                break;
            }
            if sink.commit(next_id).await.is_err() {
                crashed = true;
                break;
            }
            next_id += 1;
        }
        if crashed {
            crashes += 1;
            crash(&sink).await;
            fired.extend(faulty.points().fired());
            continue;
        }
        sink.close().await.unwrap();
        break;
    }
    assert!(crashes >= 10, "only {crashes} crashes");
    for point in [
        FailPoint::BeforePreCommit,
        FailPoint::AfterPreCommit,
        FailPoint::AfterCommit,
    ] {
        assert!(fired.contains(&point), "{point:?} never fired: {fired:?}");
    }
    // A last recovery resolves whatever the final run left prepared.
    let sink = open_with(harness.backend(), &schema, config(delivery, "crashing")).await;
    sink.recover(recorded.as_ref(), Resume::Committed)
        .await
        .unwrap();
    sink.close().await.unwrap();
    assert_exactly(&id_counts(&harness, &schema).await, 0..total);
    assert!(harness.prepared_transactions().await.is_empty());
}

/// Instantiates the exactly-once checks for one mechanism:
/// `exactly_once_compliance_tests!(make_harness(), Delivery::TransactionalMarker)`.
#[macro_export]
macro_rules! exactly_once_compliance_tests {
    ($factory:expr, $delivery:expr) => {
        $crate::exactly_once_compliance_tests!(@each $factory, $delivery;
            checkpoint_makes_rows_visible,
            protocol_misuse_refused,
            bad_rows_inside_checkpoint,
            recovery_after_unrecorded_checkpoint,
            stateless_processor_resumes_where_the_database_says,
            partial_checkpoint_replayed_into_the_lanes_that_lost_it,
            crash_replay_exactly_once
        );
    };
    (@each $factory:expr, $delivery:expr; $($check:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                $crate::compliance::exactly_once::$check($factory, $delivery).await;
            }
        )*
    };
}
