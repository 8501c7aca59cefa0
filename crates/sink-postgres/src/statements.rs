//! The SQL of one table's writes, and running a batch through it in one transaction.
//!
//! - **Insert mode:** one binary `COPY "t" (...) FROM STDIN (FORMAT binary)` straight into the
//!   table.
//! - **Keyed modes (upsert, delete, changelog):** a binary COPY of the whole batch into this
//!   connection's staging table, then `DELETE FROM t USING staging ...` for the deletes and
//!   `INSERT INTO t SELECT ... FROM staging ... ON CONFLICT (key) DO UPDATE SET ...` for the
//!   upserts. The engine hands over at most one row per key, so the two statements touch
//!   disjoint keys and their order does not matter, and no row is affected twice.
//!
//! Every batch is one transaction: `BEGIN`, `SELECT txid_current(), pg_backend_pid()` (so a
//! `COMMIT` whose answer is lost can be checked afterwards), the COPY, the statements,
//! `COMMIT`. A COPY has no parameter limit, so a batch is never split.
//!
//! The staging table is a temporary table per connection, created the first time a connection
//! writes the table (`ON COMMIT DELETE ROWS`, so it is empty at the start of every batch; rows
//! of a rolled-back batch vanish with the rollback). Its name is `sluice$stage$<table oid>$<hash
//! of the columns>`: the `$` cannot occur in a sink identifier, so it never collides with a
//! user's table, and two schemas of one table get two staging tables. Its columns are the
//! schema's columns with the target columns' types without modifiers (so values are checked
//! against `numeric(p,s)`, `varchar(n)` and `timestamp(p)` before the COPY, see
//! [`crate::values::check`]), plus a `"sluice$delete"` flag.
//!
//! Statements are prepared once per connection and kept in deadpool's statement cache.

use crate::error::{classify, commit_outcome_unknown};
use crate::values::{Field, Target, check};
use deadpool_postgres::Object;
use sluice_sink::{BackendError, Mode, Op, Row, Schema};
use tokio_postgres::Statement;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

/// Records the transaction id and the server process of a batch's transaction.
pub(crate) const XACT_SQL: &str = "SELECT txid_current(), pg_backend_pid()";

/// The name of the staging table's delete flag (not a valid sink identifier, so never a
/// schema column).
const DELETE_FLAG: &str = "\"sluice$delete\"";

/// FNV-1a, 64 bits: a stable hash of the staging table's shape (not for security).
fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// Statement texts and value targets for one table, schema and mode.
#[derive(Debug)]
pub(crate) struct WritePlan {
    mode: Mode,
    /// Per schema column: its name (for messages), where its values go, and whether it is part
    /// of the key.
    names: Vec<String>,
    targets: Vec<Target>,
    is_key: Vec<bool>,
    /// Column types of the COPY, in COPY order.
    copy_types: Vec<Type>,
    copy_sql: String,
    staging_ddl: Option<String>,
    delete_sql: Option<String>,
    merge_sql: Option<String>,
}

/// A plan's statements, prepared on one connection.
struct Statements {
    xact: Statement,
    copy: Statement,
    delete: Option<Statement>,
    merge: Option<Statement>,
}

/// How a batch failed.
pub(crate) enum WriteFailure {
    /// Nothing of the batch was written.
    Failed(BackendError),
    /// `COMMIT` failed in a way that leaves open whether it took effect.
    CommitUnknown {
        /// `txid_current()` of the batch's transaction.
        txid: i64,
        /// The server process that ran it.
        pid: i32,
        /// What the client saw.
        error: BackendError,
    },
}

impl From<BackendError> for WriteFailure {
    fn from(error: BackendError) -> Self {
        WriteFailure::Failed(error)
    }
}

fn failed(error: tokio_postgres::Error) -> WriteFailure {
    WriteFailure::Failed(classify(&error))
}

impl WritePlan {
    /// The plan for `schema` in `mode`, writing into the table with OID `oid`, whose columns
    /// take the schema's values as `targets` (one per schema column).
    pub(crate) fn new(schema: &Schema, mode: Mode, oid: u32, targets: Vec<Target>) -> WritePlan {
        assert_eq!(
            targets.len(),
            schema.columns().len(),
            "one target per column"
        );
        let table = schema.table().quoted();
        let quoted: Vec<String> = schema.columns().iter().map(|c| c.name.quoted()).collect();
        let column_list = quoted.join(", ");
        let is_key: Vec<bool> = (0..quoted.len()).map(|i| schema.is_key(i)).collect();
        let names = schema
            .columns()
            .iter()
            .map(|c| c.name.to_string())
            .collect();
        if !mode.is_keyed() {
            return WritePlan {
                mode,
                names,
                copy_types: targets.iter().map(|t| t.pg.wire_type()).collect(),
                targets,
                is_key,
                copy_sql: format!("COPY {table} ({column_list}) FROM STDIN (FORMAT binary)"),
                staging_ddl: None,
                delete_sql: None,
                merge_sql: None,
            };
        }
        let mut shape: Vec<&str> = Vec::with_capacity(quoted.len() * 2);
        for (name, target) in quoted.iter().zip(&targets) {
            shape.push(name);
            shape.push(target.pg.sql_name());
        }
        let staging = format!("\"sluice$stage${oid}${:016x}\"", fnv1a(&shape));
        let definitions: Vec<String> = quoted
            .iter()
            .zip(&targets)
            .map(|(name, target)| format!("{name} {}", target.pg.sql_name()))
            .collect();
        let staging_ddl = format!(
            "CREATE TEMPORARY TABLE IF NOT EXISTS {staging} ({DELETE_FLAG} boolean NOT NULL, {}) \
             ON COMMIT DELETE ROWS",
            definitions.join(", ")
        );
        let key: Vec<&String> = quoted
            .iter()
            .zip(&is_key)
            .filter_map(|(name, key)| key.then_some(name))
            .collect();
        let key_list = key
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let updates: Vec<String> = quoted
            .iter()
            .zip(&is_key)
            .filter(|(_, key)| !**key)
            .map(|(name, _)| format!("{name} = EXCLUDED.{name}"))
            .collect();
        let action = if updates.is_empty() {
            "DO NOTHING".to_string()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        let matches: Vec<String> = key
            .iter()
            .map(|name| format!("\"sluice$target\".{name} = \"sluice$staged\".{name}"))
            .collect();
        let mut copy_types = vec![Type::BOOL];
        copy_types.extend(targets.iter().map(|t| t.pg.wire_type()));
        WritePlan {
            mode,
            names,
            targets,
            is_key,
            copy_types,
            copy_sql: format!(
                "COPY pg_temp.{staging} ({DELETE_FLAG}, {column_list}) FROM STDIN (FORMAT binary)"
            ),
            staging_ddl: Some(staging_ddl),
            delete_sql: Some(format!(
                "DELETE FROM {table} AS \"sluice$target\" USING pg_temp.{staging} AS \"sluice$staged\" \
                 WHERE \"sluice$staged\".{DELETE_FLAG} AND {}",
                matches.join(" AND ")
            )),
            merge_sql: Some(format!(
                "INSERT INTO {table} ({column_list}) SELECT {column_list} FROM pg_temp.{staging} \
                 WHERE NOT {DELETE_FLAG} ON CONFLICT ({key_list}) {action}"
            )),
        }
    }

    /// The DDL creating this plan's staging table (keyed modes).
    pub(crate) fn staging_ddl(&self) -> Option<&str> {
        self.staging_ddl.as_deref()
    }

    /// The statements reading the staging table (keyed modes).
    pub(crate) fn staged_statements(&self) -> impl Iterator<Item = &str> {
        self.delete_sql
            .iter()
            .chain(self.merge_sql.iter())
            .map(String::as_str)
    }

    fn keyed(&self) -> bool {
        self.mode.is_keyed()
    }

    /// Splits `rows` into the positions of rows every column can hold exactly and the rows
    /// refused (see [`check`]). A delete is checked on its key only.
    pub(crate) fn check_rows(&self, rows: &[Row]) -> (Vec<usize>, Vec<(usize, BackendError)>) {
        let mut good = Vec::with_capacity(rows.len());
        let mut refused = Vec::new();
        'rows: for (index, row) in rows.iter().enumerate() {
            let delete = self.keyed() && row.op == Op::Delete;
            for (column, value) in row.values.iter().enumerate() {
                if delete && !self.is_key[column] {
                    continue;
                }
                if let Err(error) = check(&self.names[column], value, self.targets[column]) {
                    refused.push((index, error));
                    continue 'rows;
                }
            }
            good.push(index);
        }
        (good, refused)
    }

    /// The COPY fields of `row`: its values (keyed modes: the delete flag first, and NULL for
    /// the non-key columns of a delete).
    fn fields<'a>(&'a self, row: &'a Row) -> impl ExactSizeIterator<Item = Field<'a>> + 'a {
        let keyed = self.keyed();
        let delete = keyed && row.op == Op::Delete;
        let offset = usize::from(keyed);
        (0..self.copy_types.len()).map(move |position| {
            if keyed && position == 0 {
                return Field::Flag(delete);
            }
            let column = position - offset;
            if delete && !self.is_key[column] {
                Field::Null
            } else {
                Field::Value(&row.values[column], self.targets[column].pg)
            }
        })
    }

    /// Prepares (or takes from the connection's cache) the statements, creating the
    /// connection's staging table the first time.
    async fn statements(&self, client: &Object) -> Result<Statements, BackendError> {
        let xact = client
            .prepare_cached(XACT_SQL)
            .await
            .map_err(|e| classify(&e))?;
        let (Some(delete_sql), Some(merge_sql), Some(staging_ddl)) =
            (&self.delete_sql, &self.merge_sql, &self.staging_ddl)
        else {
            let copy = client
                .prepare_cached(&self.copy_sql)
                .await
                .map_err(|e| classify(&e))?;
            return Ok(Statements {
                xact,
                copy,
                delete: None,
                merge: None,
            });
        };
        // The staging table lives as long as the connection, like its statement cache: if the
        // cache lacks the statement, the table may be missing too. Parsing a COPY does not look
        // the table up, so the DELETE (which does) comes first.
        let delete = match client.prepare_cached(delete_sql).await {
            Ok(statement) => statement,
            Err(error)
                if error.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) =>
            {
                client
                    .batch_execute(staging_ddl)
                    .await
                    .map_err(|e| classify(&e))?;
                client
                    .prepare_cached(delete_sql)
                    .await
                    .map_err(|e| classify(&e))?
            }
            Err(error) => return Err(classify(&error)),
        };
        let merge = client
            .prepare_cached(merge_sql)
            .await
            .map_err(|e| classify(&e))?;
        let copy = client
            .prepare_cached(&self.copy_sql)
            .await
            .map_err(|e| classify(&e))?;
        Ok(Statements {
            xact,
            copy,
            delete: Some(delete),
            merge: Some(merge),
        })
    }
}

/// Writes the rows of `rows` at positions `good` in one transaction on `client`.
pub(crate) async fn write_rows(
    client: &mut Object,
    plan: &WritePlan,
    rows: &[Row],
    good: &[usize],
) -> Result<(), WriteFailure> {
    let statements = plan.statements(client).await?;
    let transaction = client.transaction().await.map_err(failed)?;
    let xact = transaction
        .query_one(&statements.xact, &[])
        .await
        .map_err(failed)?;
    let txid: i64 = xact.get(0);
    let pid: i32 = xact.get(1);
    let sink = transaction
        .copy_in::<_, bytes::Bytes>(&statements.copy)
        .await
        .map_err(failed)?;
    let mut writer = std::pin::pin!(BinaryCopyInWriter::new(sink, &plan.copy_types));
    let (mut deletes, mut upserts) = (false, false);
    for &index in good {
        let row = &rows[index];
        if row.op == Op::Delete {
            deletes = true;
        } else {
            upserts = true;
        }
        writer
            .as_mut()
            .write_raw(plan.fields(row))
            .await
            .map_err(failed)?;
    }
    writer.as_mut().finish().await.map_err(failed)?;
    if deletes && let Some(delete) = &statements.delete {
        transaction.execute(delete, &[]).await.map_err(failed)?;
    }
    if upserts && let Some(merge) = &statements.merge {
        transaction.execute(merge, &[]).await.map_err(failed)?;
    }
    match transaction.commit().await {
        Ok(()) => Ok(()),
        Err(error) if commit_outcome_unknown(&error) => Err(WriteFailure::CommitUnknown {
            txid,
            pid,
            error: classify(&error),
        }),
        Err(error) => Err(failed(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::PgType;
    use sluice_sink::{Column, ColumnType, Value};

    fn schema() -> Schema {
        Schema::new(
            "order",
            vec![
                Column::new("tenant", ColumnType::Text).unwrap().not_null(),
                Column::new("id", ColumnType::I64).unwrap().not_null(),
                Column::new("qty", ColumnType::I64).unwrap(),
            ],
            &["tenant", "id"],
        )
        .unwrap()
    }

    fn targets() -> Vec<Target> {
        vec![
            Target::plain(PgType::Text),
            Target::plain(PgType::Int8),
            Target::plain(PgType::Int2),
        ]
    }

    #[test]
    fn keyed_plan_stages_and_merges() {
        let plan = WritePlan::new(&schema(), Mode::Changelog, 16_384, targets());
        let ddl = plan.staging_ddl().unwrap();
        assert!(
            ddl.starts_with("CREATE TEMPORARY TABLE IF NOT EXISTS \"sluice$stage$16384$"),
            "{ddl}"
        );
        assert!(ddl.ends_with(
            "(\"sluice$delete\" boolean NOT NULL, \"tenant\" text, \"id\" bigint, \"qty\" smallint) ON COMMIT DELETE ROWS"
        ));
        let merge = plan.merge_sql.as_deref().unwrap();
        assert!(merge.starts_with("INSERT INTO \"order\" (\"tenant\", \"id\", \"qty\") SELECT"));
        assert!(merge.ends_with(
            "WHERE NOT \"sluice$delete\" ON CONFLICT (\"tenant\", \"id\") DO UPDATE SET \"qty\" = EXCLUDED.\"qty\""
        ));
        let delete = plan.delete_sql.as_deref().unwrap();
        assert!(delete.ends_with(
            "WHERE \"sluice$staged\".\"sluice$delete\" AND \"sluice$target\".\"tenant\" = \"sluice$staged\".\"tenant\" \
             AND \"sluice$target\".\"id\" = \"sluice$staged\".\"id\""
        ));
        assert!(
            plan.copy_sql
                .starts_with("COPY pg_temp.\"sluice$stage$16384$")
        );
        // Another shape of the same table gets another staging table.
        let mut other = targets();
        other[2] = Target::plain(PgType::Int8);
        let other = WritePlan::new(&schema(), Mode::Upsert, 16_384, other);
        assert_ne!(other.staging_ddl(), plan.staging_ddl());
    }

    #[test]
    fn insert_plan_copies_into_the_table() {
        let plan = WritePlan::new(&schema(), Mode::Insert, 1, targets());
        assert_eq!(
            plan.copy_sql,
            "COPY \"order\" (\"tenant\", \"id\", \"qty\") FROM STDIN (FORMAT binary)"
        );
        assert!(plan.staging_ddl().is_none());
        assert_eq!(plan.staged_statements().count(), 0);
    }

    #[test]
    fn all_key_columns_do_nothing_on_conflict() {
        let schema = Schema::new(
            "tags",
            vec![Column::new("tag", ColumnType::Text).unwrap().not_null()],
            &["tag"],
        )
        .unwrap();
        let plan = WritePlan::new(&schema, Mode::Upsert, 7, vec![Target::plain(PgType::Text)]);
        assert!(
            plan.merge_sql
                .unwrap()
                .ends_with("ON CONFLICT (\"tag\") DO NOTHING")
        );
    }

    #[test]
    fn rows_are_checked_and_deletes_only_by_key() {
        let plan = WritePlan::new(&schema(), Mode::Changelog, 1, targets());
        let rows = vec![
            Row::upsert(vec!["a".into(), 1.into(), 5.into()]),
            Row::upsert(vec!["a".into(), 2.into(), 100_000.into()]),
            // A delete's non-key values are ignored, even when they would not fit.
            Row::delete(vec!["a".into(), 3.into(), 100_000.into()]),
        ];
        let (good, refused) = plan.check_rows(&rows);
        assert_eq!(good, vec![0, 2]);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, 1);
        assert_eq!(refused[0].1.code(), "postgres.value_out_of_range");
        let fields: Vec<String> = plan.fields(&rows[2]).map(|f| format!("{f:?}")).collect();
        assert_eq!(fields.len(), 4);
        assert_eq!(fields[0], "Flag(true)");
        assert_eq!(fields[3], "Null");
        let upsert: Vec<String> = plan.fields(&rows[0]).map(|f| format!("{f:?}")).collect();
        assert_eq!(upsert[0], "Flag(false)");
        assert_eq!(upsert[3], format!("Value({:?}, Int2)", Value::I64(5)));
    }
}
