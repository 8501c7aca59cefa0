//! Which lane each entry goes to: a rule that gives the same lanes for the same entries in
//! every run, so that a checkpoint only some lanes committed (see
//! [`PartialCheckpoint`](crate::PartialCheckpoint)) can be replayed into exactly the lanes
//! that lost it.
//!
//! The rule, counted from each checkpoint's barrier, over `lanes` lanes:
//! - a row that passed the checks in a keyed mode goes to `key_hash(row) % lanes`, so every
//!   row of a key is in one lane and keeps its order;
//! - every other row (mode `insert`, or refused by the checks) goes to
//!   `(i / stripe_rows) % lanes`, where `i` counts the checkpoint's rows before it (all of
//!   them, keyed ones included) and `stripe_rows` is [`stripe_rows`] of `batch_rows_max`
//!   (at most 256): short stripes keep the lanes' queues even, so that at a barrier no lane
//!   waits long for another (stripes of a whole batch left one lane a batch behind: the 1 s
//!   checkpoint cost 8.8% against at-least-once, bench/results "Sink round 6"). The stripe is
//!   recorded with each checkpoint, so a replay uses the one its checkpoint was written with;
//! - a rejected source record ([`Sink::reject`](crate::Sink::reject)) goes to lane 0, so the
//!   dead letters of bad input keep the source's order (they are few); they are counted apart
//!   from the rows, as a source may hand its rows and its rejects over in different groupings
//!   when it replays.
//!
//! Only the PostgreSQL marker's replay needs the rule, so only `transactional_marker` sinks
//! follow it for unkeyed entries; the other deliveries send each write call's unkeyed entries
//! to the next lane in turn (spreading a paced load over the lanes at once, where a stripe would
//! keep one lane busy for a whole batch while the others idle).
//!
//! `key_hash` is FNV-1a 64 over a fixed encoding of the key's values (a tag byte, then
//! integers little-endian and text and bytes length-prefixed), mixed by the `splitmix64`
//! finaliser: no Rust hasher promises the same output in another release, and a replay may
//! run a newer build. Changing the rule breaks the replay of a partial checkpoint written by
//! an older build: don't.

use crate::backend::PartialCheckpoint;
use crate::schema::{Row, Schema};
use crate::sink::Entry;
use crate::value::Value;
use std::hash::Hasher;

/// Longest stripe of unkeyed rows (see the module docs).
pub(crate) const STRIPE_ROWS_MAX: u64 = 256;

/// The stripe of unkeyed rows of a sink whose batches hold `batch_rows_max` rows.
pub(crate) fn stripe_rows(batch_rows_max: usize) -> u64 {
    (batch_rows_max as u64).clamp(1, STRIPE_ROWS_MAX)
}

/// The stable hash of a row's key (see the module docs).
pub(crate) fn key_hash(schema: &Schema, row: &Row) -> u64 {
    let mut hasher = fnv::FnvHasher::default();
    for &index in schema.key() {
        hash_value(&mut hasher, &row.values[index]);
    }
    splitmix64(hasher.finish())
}

fn hash_value(hasher: &mut fnv::FnvHasher, value: &Value) {
    let mut bytes = |tag: u8, bytes: &[u8]| {
        hasher.write(&[tag]);
        hasher.write(&(bytes.len() as u64).to_le_bytes());
        hasher.write(bytes);
    };
    match value {
        Value::Null => bytes(0, &[]),
        Value::Bool(value) => bytes(1, &[u8::from(*value)]),
        Value::I64(value) => bytes(2, &value.to_le_bytes()),
        Value::F64(value) => bytes(3, &value.to_bits().to_le_bytes()),
        Value::Decimal(value) => bytes(4, value.as_str().as_bytes()),
        Value::Text(value) => bytes(5, value.as_bytes()),
        Value::Bytes(value) => bytes(6, value),
        Value::Json(value) => bytes(7, value.as_str().as_bytes()),
        Value::Uuid(value) => bytes(8, &value.0),
        Value::Date(value) => bytes(9, &value.0.to_le_bytes()),
        Value::Timestamp(value) => bytes(10, &value.0.to_le_bytes()),
        Value::TimestampTz(value) => bytes(11, &value.0.to_le_bytes()),
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The key hash the rule uses for `entry` in a sink of a keyed (`keyed`) mode, if any:
/// computed before the router is locked, so writers hash in parallel.
pub(crate) fn hash_of(keyed: bool, schema: &Schema, entry: &Entry) -> Option<u64> {
    match entry {
        Entry::Row {
            row,
            rejection: None,
        } if keyed => Some(key_hash(schema, row)),
        _ => None,
    }
}

/// The replay of a partial checkpoint: which of its lanes still need their entries, and
/// what the replayed checkpoint must add up to.
#[derive(Debug)]
pub(crate) struct Replay {
    pub(crate) checkpoint: PartialCheckpoint,
    missing: Vec<bool>,
}

/// What a barrier cut: the counts of the checkpoint it ends, and the replay it ends, if any.
#[derive(Debug)]
pub(crate) struct Counted {
    pub(crate) rows: u64,
    pub(crate) rejected: u64,
    pub(crate) replay: Option<PartialCheckpoint>,
}

/// The routing state of the current checkpoint (the sink holds it locked while it routes a
/// write call and sends it to the lanes, and while it places a barrier, so a call is never
/// split by a barrier and the counts are exact).
#[derive(Debug)]
pub(crate) struct Router {
    lanes: usize,
    stripe_rows: u64,
    keyed: bool,
    /// Unkeyed entries go by write call instead of by stripe (see the module docs).
    per_call: bool,
    /// Write calls routed so far (`per_call`).
    calls: usize,
    rows: u64,
    rejected: u64,
    replay: Option<Replay>,
}

impl Router {
    pub(crate) fn new(lanes: usize, stripe_rows: u64, keyed: bool, per_call: bool) -> Router {
        assert!(lanes > 0 && stripe_rows > 0, "a sink has lanes and batches");
        Router {
            lanes,
            stripe_rows,
            keyed,
            per_call,
            calls: 0,
            rows: 0,
            rejected: 0,
            replay: None,
        }
    }

    /// From the next entry on, replays `checkpoint`: entries of the lanes that hold it are
    /// dropped.
    pub(crate) fn replay(&mut self, checkpoint: PartialCheckpoint) {
        let mut missing = vec![false; checkpoint.lanes];
        for &lane in &checkpoint.missing {
            if let Some(slot) = missing.get_mut(lane) {
                *slot = true;
            }
        }
        self.replay = Some(Replay {
            checkpoint,
            missing,
        });
    }

    /// The lane of the next entry, or `None` when it is replayed into a lane that holds it
    /// already (drop it).
    #[cfg(test)]
    pub(crate) fn route(&mut self, schema: &Schema, entry: &Entry) -> Option<usize> {
        let hash = hash_of(self.keyed, schema, entry);
        self.route_hashed(entry, hash)
    }

    /// Before the entries of a write call.
    pub(crate) fn begin_call(&mut self) {
        self.calls = self.calls.wrapping_add(1);
    }

    /// [`Router::route`] with the entry's [`hash_of`].
    pub(crate) fn route_hashed(&mut self, entry: &Entry, hash: Option<u64>) -> Option<usize> {
        debug_assert!(hash.is_none() || self.keyed, "only keyed modes hash");
        let (lanes, stripe_rows) = self
            .replay
            .as_ref()
            .map_or((self.lanes, self.stripe_rows), |replay| {
                (replay.checkpoint.lanes, replay.checkpoint.stripe_rows)
            });
        let per_call = (self.per_call && self.replay.is_none()).then_some(self.calls % lanes);
        let stripe = |index: u64| {
            per_call.unwrap_or_else(|| ((index / stripe_rows) % lanes as u64) as usize)
        };
        let lane = match (entry, hash) {
            (Entry::Row { .. }, Some(hash)) => {
                self.rows += 1;
                (hash % lanes as u64) as usize
            }
            (Entry::Row { .. }, None) => {
                self.rows += 1;
                stripe(self.rows - 1)
            }
            (Entry::Rejected(_), _) => {
                self.rejected += 1;
                0
            }
        };
        match &self.replay {
            None => Some(lane),
            Some(replay) if replay.missing[lane] => Some(lane % self.lanes),
            Some(_) => None,
        }
    }

    /// At a barrier: the counts of the checkpoint it ends (and the replay that ends with
    /// it); the next checkpoint counts from zero.
    pub(crate) fn cut(&mut self) -> Counted {
        let counted = Counted {
            rows: self.rows,
            rejected: self.rejected,
            replay: self.replay.take().map(|replay| replay.checkpoint),
        };
        self.rows = 0;
        self.rejected = 0;
        counted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Column;
    use crate::value::ColumnType;

    fn schema() -> Schema {
        Schema::new(
            "t",
            vec![
                Column::new("id", ColumnType::I64).unwrap().not_null(),
                Column::new("name", ColumnType::Text).unwrap(),
            ],
            &["id"],
        )
        .unwrap()
    }

    fn row(id: i64) -> Entry {
        Entry::Row {
            row: Row::upsert(vec![Value::I64(id), Value::Text(format!("n{id}"))]),
            rejection: None,
        }
    }

    /// The hash is part of the replay contract: these values must never change (they were
    /// computed independently of this code, from the definition in the module docs).
    #[test]
    fn the_key_hash_is_fixed() {
        let schema = schema();
        let hash = |id| match row(id) {
            Entry::Row { row, .. } => key_hash(&schema, &row),
            Entry::Rejected(_) => unreachable!(),
        };
        assert_eq!(
            [hash(0), hash(1), hash(-7)],
            [
                0xa98f_2072_e752_11a8,
                0xba1a_32b5_7026_b8dc,
                0x2512_bf7e_b64e_742e
            ]
        );
    }

    #[test]
    fn without_the_marker_each_write_call_takes_the_next_lane() {
        let schema = schema();
        let mut router = Router::new(3, 10, false, true);
        let mut lanes = Vec::new();
        for call in 0..4 {
            router.begin_call();
            for id in 0..25 {
                lanes.push((call, router.route(&schema, &row(id)).unwrap()));
            }
        }
        for (call, lane) in lanes {
            assert_eq!(lane, (call + 1) % 3);
        }
    }

    #[test]
    fn unkeyed_rows_go_in_stripes_counted_from_the_barrier() {
        let schema = schema();
        let mut router = Router::new(3, 10, false, false);
        let lanes: Vec<usize> = (0..31)
            .map(|id| router.route(&schema, &row(id)).unwrap())
            .collect();
        assert_eq!(lanes[..10], [0; 10]);
        assert_eq!(lanes[10..20], [1; 10]);
        assert_eq!(lanes[20..30], [2; 10]);
        assert_eq!(lanes[30], 0);
        let counted = router.cut();
        assert_eq!((counted.rows, counted.rejected), (31, 0));
        assert_eq!(router.route(&schema, &row(9)), Some(0));
    }

    #[test]
    fn a_replay_drops_what_the_lanes_that_hold_it_have_and_maps_the_rest() {
        let schema = schema();
        // Written over 4 lanes; lanes 1 and 3 lost their transaction.
        let mut original = Router::new(4, 7, true, false);
        let lanes: Vec<usize> = (0..200)
            .map(|id| original.route(&schema, &row(id)).unwrap())
            .collect();
        let mut replay = Router::new(2, 100, true, false);
        replay.replay(PartialCheckpoint {
            checkpoint_id: 5,
            state: "s".into(),
            lanes: 4,
            stripe_rows: 7,
            missing: vec![1, 3],
            rows: 200,
            rejected: 0,
        });
        for (id, lane) in lanes.iter().enumerate() {
            let routed = replay.route(&schema, &row(id as i64));
            if *lane == 1 || *lane == 3 {
                assert_eq!(routed, Some(lane % 2), "row {id}");
            } else {
                assert_eq!(routed, None, "row {id}");
            }
        }
        let counted = replay.cut();
        assert_eq!(counted.rows, 200);
        assert_eq!(counted.replay.unwrap().checkpoint_id, 5);
        // After the replay's barrier: the sink's own lanes again.
        assert!(replay.route(&schema, &row(1)).is_some_and(|lane| lane < 2));
    }
}
