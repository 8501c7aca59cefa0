//! The in-batch reduction of keyed batches: at most one row per key, the last one.
//!
//! An upsert replaces the whole row and a delete removes it, so applying a key's changes in
//! order has the same effect as applying only its last change. Reducing first means a
//! multi-row upsert never touches one row twice (PostgreSQL refuses that with SQLSTATE 21000)
//! and the statements of a batch can run in any order.
//!
//! The superseded rows are kept, newest first, beside their survivor: when the database refuses
//! the survivor, the engine writes the previous change instead, so the table ends as if the
//! changes had been applied one by one with the bad one skipped.

use crate::schema::{KeyValue, Row, Schema};
use crate::value::Value;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// A reduced batch.
#[derive(Debug, Default)]
pub(crate) struct Reduced {
    /// One row per key: each key's last row, ordered by that row's position in the input.
    pub(crate) rows: Vec<Row>,
    /// For each row of `rows`, the earlier rows of its key, newest first.
    pub(crate) earlier: Vec<Vec<Row>>,
}

#[cfg(test)]
impl Reduced {
    /// Input rows that were superseded within the batch.
    pub(crate) fn coalesced(&self) -> usize {
        self.earlier.iter().map(Vec::len).sum()
    }
}

/// A row's key, borrowed, compared and hashed exactly.
struct KeyOf<'a> {
    values: &'a [Value],
    key: &'a [usize],
}

impl PartialEq for KeyOf<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.key
            .iter()
            .all(|&index| KeyValue(&self.values[index]) == KeyValue(&other.values[index]))
    }
}

impl Eq for KeyOf<'_> {}

impl Hash for KeyOf<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for &index in self.key {
            KeyValue(&self.values[index]).hash(state);
        }
    }
}

/// Reduces `rows` (already checked against `schema`, whose key is not empty) to the last row
/// per key.
pub(crate) fn reduce(schema: &Schema, rows: Vec<Row>) -> Reduced {
    let key = schema.key();
    assert!(!key.is_empty(), "reduction needs a key");
    let count = rows.len();
    // previous[i]: the position of the row with the same key before i.
    let mut previous: Vec<Option<usize>> = vec![None; count];
    let mut superseded = vec![false; count];
    {
        let mut last: HashMap<KeyOf<'_>, usize> = HashMap::with_capacity(count);
        for (index, row) in rows.iter().enumerate() {
            let row_key = KeyOf {
                values: &row.values,
                key,
            };
            if let Some(earlier) = last.insert(row_key, index) {
                previous[index] = Some(earlier);
                superseded[earlier] = true;
            }
        }
    }
    let mut slots: Vec<Option<Row>> = rows.into_iter().map(Some).collect();
    let survivors = superseded.iter().filter(|s| !**s).count();
    let mut reduced = Reduced {
        rows: Vec::with_capacity(survivors),
        earlier: Vec::with_capacity(survivors),
    };
    for index in 0..count {
        if superseded[index] {
            continue;
        }
        let row = slots[index].take().expect("each position is taken once");
        let mut chain = Vec::new();
        let mut cursor = previous[index];
        while let Some(position) = cursor {
            chain.push(slots[position].take().expect("each position is taken once"));
            cursor = previous[position];
        }
        reduced.rows.push(row);
        reduced.earlier.push(chain);
    }
    debug_assert!(
        slots.iter().all(Option::is_none),
        "every row is kept or chained"
    );
    reduced
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Column, Op};
    use crate::value::ColumnType;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn schema() -> Schema {
        Schema::new(
            "t",
            vec![
                Column::new("k", ColumnType::I64).unwrap().not_null(),
                Column::new("v", ColumnType::I64).unwrap(),
            ],
            &["k"],
        )
        .unwrap()
    }

    /// The model: apply changes one at a time to a map.
    fn apply(table: &mut BTreeMap<i64, i64>, rows: &[Row]) {
        for row in rows {
            let (Value::I64(k), Value::I64(v)) = (&row.values[0], &row.values[1]) else {
                panic!("test rows are integers")
            };
            match row.op {
                Op::Delete => {
                    table.remove(k);
                }
                _ => {
                    table.insert(*k, *v);
                }
            }
        }
    }

    fn arbitrary_rows() -> impl Strategy<Value = Vec<Row>> {
        prop::collection::vec((0..6i64, 0..1000i64, prop::bool::ANY), 0..60).prop_map(|items| {
            items
                .into_iter()
                .map(|(k, v, delete)| Row {
                    op: if delete { Op::Delete } else { Op::Upsert },
                    values: vec![k.into(), v.into()],
                })
                .collect()
        })
    }

    #[test]
    fn delete_after_upsert_and_upsert_after_delete() {
        let rows = vec![
            Row::upsert(vec![1.into(), 10.into()]),
            Row::delete(vec![1.into(), Value::Null]),
            Row::delete(vec![2.into(), Value::Null]),
            Row::upsert(vec![2.into(), 20.into()]),
        ];
        let reduced = reduce(&schema(), rows);
        assert_eq!(reduced.rows.len(), 2);
        assert_eq!(reduced.rows[0].op, Op::Delete);
        assert_eq!(reduced.rows[0].values[0], Value::I64(1));
        assert_eq!(reduced.rows[1].op, Op::Upsert);
        assert_eq!(reduced.earlier[1][0].op, Op::Delete);
        assert_eq!(reduced.coalesced(), 2);
    }

    proptest! {
        /// Applying the reduced batch equals applying every change in order, from any start.
        #[test]
        fn reduction_matches_sequential_application(
            start in prop::collection::btree_map(0..6i64, 0..1000i64, 0..6),
            rows in arbitrary_rows(),
        ) {
            let mut expected = start.clone();
            apply(&mut expected, &rows);
            let input_count = rows.len();
            let reduced = reduce(&schema(), rows.clone());
            let mut actual = start;
            apply(&mut actual, &reduced.rows);
            prop_assert_eq!(&actual, &expected);

            // One row per key, and nothing lost: survivors plus chains are the input.
            let mut keys: Vec<&Value> = reduced.rows.iter().map(|r| &r.values[0]).collect();
            let before = keys.len();
            keys.dedup();
            prop_assert_eq!(keys.len(), before);
            prop_assert_eq!(reduced.rows.len() + reduced.coalesced(), input_count);

            // Each chain, oldest first and followed by its survivor, is the key's subsequence.
            for (row, chain) in reduced.rows.iter().zip(&reduced.earlier) {
                let mut sequence: Vec<&Row> = chain.iter().rev().collect();
                sequence.push(row);
                let of_key: Vec<&Row> = rows.iter().filter(|r| r.values[0] == row.values[0]).collect();
                prop_assert_eq!(sequence, of_key);
            }
        }

        /// Falling back to the previous change when a survivor is refused equals skipping the
        /// refused change in sequential application.
        #[test]
        fn fallback_to_earlier_change_matches_skipping(
            rows in arbitrary_rows(),
            refused_value in 0..1000i64,
        ) {
            let refused = |row: &Row| row.op == Op::Upsert && row.values[1] == Value::I64(refused_value);
            let mut expected = BTreeMap::new();
            let accepted: Vec<Row> = rows.iter().filter(|r| !refused(r)).cloned().collect();
            apply(&mut expected, &accepted);

            let mut actual = BTreeMap::new();
            let reduced = reduce(&schema(), rows);
            for (row, chain) in reduced.rows.into_iter().zip(reduced.earlier) {
                let first_accepted = std::iter::once(row).chain(chain).find(|r| !refused(r));
                if let Some(row) = first_accepted {
                    apply(&mut actual, &[row]);
                }
            }
            prop_assert_eq!(actual, expected);
        }
    }
}
