//! Exactly-once bookkeeping in the database: the progress table and the global ids of prepared
//! transactions.
//!
//! The progress table holds one row per `(sink_id, writer_id, lane)`: the last checkpoint whose
//! rows that lane committed, with the caller's state. `transactional_marker` writes every
//! lane's row in that lane's transaction, with the cut (`lanes`, `stripe_rows`, `rows`,
//! `rejected`, `previous_checkpoint_id`, `previous_state`; columns a table created before them
//! gets added, and rows written before them read as one complete lane); `two_phase` writes each
//! lane's row in that lane's prepared transaction, so the row becomes visible exactly when the lane's rows do. A prepared
//! transaction holds its row locked until it commits, so while a lane's checkpoint awaits its
//! commit, the lane's next checkpoint writes the row `lane + 64` (64 being the most lanes a
//! sink has), and so on: a lane's progress is the highest checkpoint of its rows. Its name is
//! always quoted and every value is a bound parameter.
//!
//! A prepared transaction's global id is `sluice:<sink_id>:<writer_id>:<checkpoint>:<lane>`.
//! Sink ids are `[A-Za-z0-9_-]` and the numbers are digits, so the `:` separators are
//! unambiguous; a gid is recognised as this writer's only when it starts with exactly
//! `sluice:<sink_id>:<writer_id>:` and the rest is `<u64>:<u32>` in canonical decimal, so
//! other applications' and other writers' prepared transactions are never touched.

use crate::error::classify;
use crate::table::{lock_name, relation, relation_kind_name};
use sluice_sink::{BackendError, FLUSH_CONCURRENCY_LIMIT, Ident, SinkId};
use tokio_postgres::Transaction;
use tokio_postgres::types::Type;

/// The SQL of one progress table.
#[derive(Debug)]
pub(crate) struct ProgressSql {
    /// Creates the table when missing.
    pub(crate) create: String,
    /// `$1` sink id, `$2` writer id, `$3` lane, `$4` checkpoint id, `$5` state.
    pub(crate) upsert: String,
    /// `$1` sink id, `$2` writer id: the highest checkpoint and its state.
    pub(crate) latest: String,
    /// `$1` sink id, `$2` writer id, `$3` lane: the highest checkpoint of that lane's rows
    /// (`lane`, `lane + 64`, ...), NULL when there is none.
    pub(crate) lane: String,
    /// The marker's upsert of one lane's row with its cut: `$1`-`$5` as [`Self::upsert`],
    /// `$6` lanes, `$7` stripe rows, `$8` rows, `$9` rejected, `$10` previous checkpoint id,
    /// `$11` its state.
    pub(crate) marker_upsert: String,
    /// `$1` sink id, `$2` writer id: every row, for [`sluice_sink::Recovered::from_lanes`].
    pub(crate) marker_rows: String,
    /// Adds the columns of the marker's lane rows to a table created before them.
    pub(crate) add_lane_columns: String,
}

/// The columns the marker's lane rows add (name, type), after the first six.
const LANE_COLUMNS: [(&str, &str); 6] = [
    ("lanes", "integer"),
    ("stripe_rows", "bigint"),
    ("rows", "bigint"),
    ("rejected", "bigint"),
    ("previous_checkpoint_id", "bigint"),
    ("previous_state", "text"),
];

/// The parameter types of [`ProgressSql::upsert`], as the code binds them.
const UPSERT_TYPES: [Type; 5] = [Type::TEXT, Type::INT4, Type::INT4, Type::INT8, Type::TEXT];

impl ProgressSql {
    pub(crate) fn new(table: &Ident) -> ProgressSql {
        let table = table.quoted();
        ProgressSql {
            create: format!(
                "CREATE TABLE IF NOT EXISTS {table} (\"sink_id\" text, \"writer_id\" integer, \
                 \"lane\" integer, \"checkpoint_id\" bigint NOT NULL, \"state\" text NOT NULL, \
                 \"committed_at\" timestamptz NOT NULL, {}, \
                 PRIMARY KEY (\"sink_id\", \"writer_id\", \"lane\"))",
                LANE_COLUMNS
                    .iter()
                    .map(|(name, kind)| format!("\"{name}\" {kind}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            marker_upsert: format!(
                "INSERT INTO {table} (\"sink_id\", \"writer_id\", \"lane\", \"checkpoint_id\", \
                 \"state\", \"committed_at\", \"lanes\", \"stripe_rows\", \"rows\", \"rejected\", \
                 \"previous_checkpoint_id\", \"previous_state\") \
                 VALUES ($1, $2, $3, $4, $5, now(), $6, $7, $8, $9, $10, $11) \
                 ON CONFLICT (\"sink_id\", \"writer_id\", \"lane\") DO UPDATE SET \
                 \"checkpoint_id\" = EXCLUDED.\"checkpoint_id\", \"state\" = EXCLUDED.\"state\", \
                 \"committed_at\" = EXCLUDED.\"committed_at\", \"lanes\" = EXCLUDED.\"lanes\", \
                 \"stripe_rows\" = EXCLUDED.\"stripe_rows\", \
                 \"rows\" = EXCLUDED.\"rows\", \"rejected\" = EXCLUDED.\"rejected\", \
                 \"previous_checkpoint_id\" = EXCLUDED.\"previous_checkpoint_id\", \
                 \"previous_state\" = EXCLUDED.\"previous_state\""
            ),
            marker_rows: format!(
                "SELECT \"lane\", \"checkpoint_id\", \"state\", \"lanes\", \"stripe_rows\", \"rows\", \"rejected\", \
                 \"previous_checkpoint_id\", \"previous_state\" FROM {table} \
                 WHERE \"sink_id\" = $1 AND \"writer_id\" = $2"
            ),
            add_lane_columns: format!(
                "ALTER TABLE {table} {}",
                LANE_COLUMNS
                    .iter()
                    .map(|(name, kind)| format!("ADD COLUMN IF NOT EXISTS \"{name}\" {kind}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            upsert: format!(
                "INSERT INTO {table} (\"sink_id\", \"writer_id\", \"lane\", \"checkpoint_id\", \
                 \"state\", \"committed_at\") VALUES ($1, $2, $3, $4, $5, now()) \
                 ON CONFLICT (\"sink_id\", \"writer_id\", \"lane\") DO UPDATE SET \
                 \"checkpoint_id\" = EXCLUDED.\"checkpoint_id\", \"state\" = EXCLUDED.\"state\", \
                 \"committed_at\" = EXCLUDED.\"committed_at\""
            ),
            latest: format!(
                "SELECT \"checkpoint_id\", \"state\" FROM {table} \
                 WHERE \"sink_id\" = $1 AND \"writer_id\" = $2 \
                 ORDER BY \"checkpoint_id\" DESC, \"lane\" LIMIT 1"
            ),
            lane: format!(
                "SELECT max(\"checkpoint_id\") FROM {table} \
                 WHERE \"sink_id\" = $1 AND \"writer_id\" = $2 AND \"lane\" % {} = $3",
                FLUSH_CONCURRENCY_LIMIT
            ),
        }
    }
}

/// Creates the progress table if missing (under an advisory lock on its name) and checks that
/// the statements fit it, in the caller's transaction.
pub(crate) async fn prepare_progress_table(
    transaction: &Transaction<'_>,
    table: &Ident,
    sql: &ProgressSql,
) -> Result<(), BackendError> {
    let mismatch = |problems: Vec<String>| BackendError::SchemaMismatch {
        table: table.to_string(),
        problems,
    };
    lock_name(transaction, table).await?;
    transaction
        .batch_execute(&sql.create)
        .await
        .map_err(|e| classify(&e))?;
    match relation(transaction, table).await? {
        Some((_, kind)) if kind == "r" || kind == "p" => {}
        Some((_, kind)) => {
            return Err(mismatch(vec![format!(
                "the progress table is a {}, not a table",
                relation_kind_name(&kind)
            )]));
        }
        None => {
            return Err(mismatch(vec![
                "the progress table cannot be found after creating it (is another schema first on the search path?)".into(),
            ]));
        }
    }
    // A table from before the marker's lane rows: add their columns (only when missing, as
    // ALTER TABLE waits for every open transaction on the table).
    let missing: i64 = transaction
        .query_one(
            "SELECT count(*) FROM unnest($2::text[]) AS wanted(name) \
             WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute \
               WHERE attrelid = to_regclass($1::text) AND attname = wanted.name AND NOT attisdropped)",
            &[
                &table.quoted(),
                &LANE_COLUMNS.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
            ],
        )
        .await
        .map_err(|e| classify(&e))?
        .get(0);
    if missing > 0 {
        transaction
            .batch_execute(&sql.add_lane_columns)
            .await
            .map_err(|e| classify(&e))?;
    }
    let mut problems = Vec::new();
    for text in [
        &sql.upsert,
        &sql.latest,
        &sql.lane,
        &sql.marker_upsert,
        &sql.marker_rows,
    ] {
        match transaction.prepare(text).await {
            Ok(statement) if text == &sql.upsert && statement.params() != UPSERT_TYPES => {
                let found: Vec<String> =
                    statement.params().iter().map(ToString::to_string).collect();
                problems.push(format!(
                    "the progress table's columns (sink_id, writer_id, lane, checkpoint_id, state) have types ({}), expected (text, integer, integer, bigint, text)",
                    found.join(", ")
                ));
            }
            Ok(_) => {}
            Err(error) => problems.push(format!(
                "PostgreSQL refuses the sink's progress statement: {}",
                classify(&error)
            )),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(mismatch(problems))
    }
}

/// The first key of the advisory locks of this crate (`pg_advisory_xact_lock(class, key)`;
/// the two-key form has a lock space of its own, apart from single-`bigint` keys): "SLUC".
pub const WRITER_LOCK_CLASS: i32 = 0x534c_5543;

/// The second key of the advisory lock of `writer_id` of `sink_id` (FNV-1a of both, folded to
/// 32 bits). Every `transactional_marker` checkpoint transaction holds it shared; recovery
/// takes it exclusively before reading the progress row, so it waits for any transaction of an
/// earlier run that the server is still finishing (a `COMMIT` sent just before the process was
/// killed) instead of reading the progress from before it and writing its rows again.
/// A collision with another writer's key only makes one recovery wait for the other's
/// transaction.
pub fn writer_lock_key(sink_id: &str, writer_id: u32) -> i32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in sink_id
        .bytes()
        .chain(std::iter::once(0))
        .chain(writer_id.to_le_bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    ((hash >> 32) ^ hash) as u32 as i32
}

/// The prefix of every global id of `writer_id` of `sink_id`.
pub(crate) fn gid_prefix(sink_id: &SinkId, writer_id: u32) -> String {
    format!("sluice:{sink_id}:{writer_id}:")
}

/// The global id of `lane`'s transaction of `checkpoint_id`, given the writer's prefix.
pub(crate) fn gid(prefix: &str, checkpoint_id: u64, lane: u32) -> String {
    format!("{prefix}{checkpoint_id}:{lane}")
}

/// `(checkpoint, lane)` of a global id of this writer (`prefix` from [`gid_prefix`]), or
/// `None` for anything else, including non-canonical numbers (`+1`, `01`).
pub(crate) fn parse_gid(prefix: &str, gid: &str) -> Option<(u64, u32)> {
    fn number<T: std::str::FromStr + ToString>(text: &str) -> Option<T> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let value: T = text.parse().ok()?;
        (value.to_string() == text).then_some(value)
    }
    let (checkpoint, lane) = gid.strip_prefix(prefix)?.split_once(':')?;
    Some((number(checkpoint)?, number(lane)?))
}

/// `text` as a SQL string literal, for the utility commands that take no parameters
/// (`PREPARE TRANSACTION`, `COMMIT PREPARED`, `ROLLBACK PREPARED`). Sink ids cannot contain
/// quotes or backslashes; quotes are doubled anyway.
pub(crate) fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gids_round_trip_and_foreign_ones_are_ignored() {
        let sink = SinkId::new("orders_v2-eu").unwrap();
        let prefix = gid_prefix(&sink, 3);
        assert_eq!(prefix, "sluice:orders_v2-eu:3:");
        let gid = gid(&prefix, 18_446_744_073_709_551_615, 63);
        assert_eq!(gid, "sluice:orders_v2-eu:3:18446744073709551615:63");
        assert_eq!(parse_gid(&prefix, &gid), Some((u64::MAX, 63)));
        for foreign in [
            "other-app:1",
            "sluice:orders_v2-eu:31:5:0",
            "sluice:orders_v2-eu:4:5:0",
            "sluice:orders_v2-eux:3:5:0",
            "sluice:orders_v2-eu:3:5",
            "sluice:orders_v2-eu:3:5:0:1",
            "sluice:orders_v2-eu:3:+5:0",
            "sluice:orders_v2-eu:3:05:0",
            "sluice:orders_v2-eu:3:5:-0",
            "sluice:orders_v2-eu:3::0",
            "sluice:orders_v2-eu:3:5:",
            "sluice:orders_v2-eu:3:18446744073709551616:0",
            "sluice:orders_v2-eu:3:5:4294967296",
            "sluice:orders_v2-eu:3: 5:0",
            "SLUICE:orders_v2-eu:3:5:0",
        ] {
            assert_eq!(parse_gid(&prefix, foreign), None, "{foreign}");
        }
        assert_eq!(
            parse_gid(&prefix, "sluice:orders_v2-eu:3:0:0"),
            Some((0, 0))
        );
    }

    #[test]
    fn literals_double_quotes() {
        assert_eq!(literal("sluice:a:0:1:2"), "'sluice:a:0:1:2'");
        assert_eq!(literal("it's"), "'it''s'");
    }

    #[test]
    fn progress_statements_quote_the_table() {
        let sql = ProgressSql::new(&Ident::new("sluice_progress").unwrap());
        assert!(
            sql.create
                .starts_with("CREATE TABLE IF NOT EXISTS \"sluice_progress\" (\"sink_id\" text")
        );
        assert!(
            sql.create
                .ends_with("PRIMARY KEY (\"sink_id\", \"writer_id\", \"lane\"))")
        );
        assert!(sql.upsert.contains("VALUES ($1, $2, $3, $4, $5, now())"));
        assert!(sql.latest.contains("ORDER BY \"checkpoint_id\" DESC"));
        assert!(sql.lane.ends_with("AND \"lane\" % 64 = $3"), "{}", sql.lane);
    }
}
