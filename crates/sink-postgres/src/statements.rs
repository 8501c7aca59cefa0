//! The SQL of one table's writes, and running a batch through it.
//!
//! - **Insert mode:** one binary `COPY "t" (...) FROM STDIN (FORMAT binary)` straight into the
//!   table.
//! - **Keyed modes (upsert, delete, changelog):** `DELETE FROM t USING <rows> ...` for the
//!   deletes and `INSERT INTO t SELECT ... FROM <rows> ... ON CONFLICT (key) DO UPDATE SET ...`
//!   for the upserts, where `<rows>` is one of two [`Source`]s:
//!   - [`Source::Staging`] (at-least-once): a binary COPY of the whole batch into this
//!     connection's temporary staging table;
//!   - [`Source::Arrays`] (exactly-once): one array parameter per column, read back with
//!     `unnest($1::<type>[], ...)`. A transaction that touched a temporary table cannot be
//!     prepared (`PREPARE TRANSACTION`), and one staging table filled by many batches of a
//!     long transaction would need emptying after each.
//!
//!   The engine hands over at most one row per key, so the two statements touch disjoint keys
//!   and their order does not matter, and no row is affected twice.
//!
//! [`apply_rows`] runs a batch's statements inside whatever transaction the caller opened;
//! [`write_rows`] is the at-least-once caller: `BEGIN`, `SELECT txid_current(),
//! pg_backend_pid()` (so a `COMMIT` whose answer is lost can be checked afterwards), the
//! statements, `COMMIT`. A COPY has no parameter limit and an array parameter holds the whole
//! column, so a batch is never split.
//!
//! The staging table is a temporary table per connection, created the first time a connection
//! writes the table (`ON COMMIT DELETE ROWS`, so it is empty at the start of every batch; rows
//! of a rolled-back batch vanish with the rollback). Its name is `sluice$stage$<table oid>$<hash
//! of the columns>`: the `$` cannot occur in a sink identifier, so it never collides with a
//! user's table, and two schemas of one table get two staging tables. Its columns (and the
//! arrays' element types) are the schema's columns with the target columns' types without
//! modifiers (so values are checked against `numeric(p,s)`, `varchar(n)` and `timestamp(p)`
//! before they are sent, see [`crate::values::check`]), plus a `"sluice$delete"` flag.
//!
//! Statements are prepared once per connection and kept in deadpool's statement cache.

use crate::error::{classify, commit_outcome_unknown};
use crate::session::Session;
use crate::values::{ColumnArray, CopyStream, Field, Target, check};
use deadpool_postgres::Object;
use futures_util::SinkExt;
use sluice_sink::{BackendError, Mode, Op, Row, Schema};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Statement};

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

/// Where a keyed batch's rows come from (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// COPY into the connection's temporary staging table; one batch per transaction.
    Staging,
    /// Arrays bound to `unnest(...)`; any number of batches per transaction, which may be
    /// prepared.
    Arrays,
}

/// The DELETE and the INSERT ... ON CONFLICT of a keyed mode, for one [`Source`].
#[derive(Debug)]
struct Keyed {
    delete_sql: String,
    merge_sql: String,
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
    /// Positions of the key columns.
    key: Vec<usize>,
    /// Column types of the COPY, in COPY order.
    copy_types: Vec<Type>,
    /// Insert mode: into the table; keyed modes: into the staging table.
    copy_sql: String,
    staging_ddl: Option<String>,
    staged: Option<Keyed>,
    arrays: Option<Keyed>,
}

/// A plan's statements for one [`Source`], prepared on one connection.
pub(crate) struct Statements {
    source: Source,
    /// Insert mode, and keyed modes from the staging table.
    copy: Option<Statement>,
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

fn classified(error: tokio_postgres::Error) -> BackendError {
    classify(&error)
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
        let key: Vec<usize> = (0..quoted.len()).filter(|&i| is_key[i]).collect();
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
                key,
                copy_sql: format!("COPY {table} ({column_list}) FROM STDIN (FORMAT binary)"),
                staging_ddl: None,
                staged: None,
                arrays: None,
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
        let key_names: Vec<&str> = key.iter().map(|&i| quoted[i].as_str()).collect();
        let key_list = key_names.join(", ");
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
        let matches = key_names
            .iter()
            .map(|name| format!("\"sluice$target\".{name} = \"sluice$staged\".{name}"))
            .collect::<Vec<_>>()
            .join(" AND ");
        // The same two statements over either source of rows.
        let keyed =
            |deletes: &str, upserts: &str, delete_filter: &str, upsert_filter: &str| Keyed {
                delete_sql: format!(
                    "DELETE FROM {table} AS \"sluice$target\" USING {deletes} \
                     WHERE {delete_filter}{matches}"
                ),
                merge_sql: format!(
                    "INSERT INTO {table} ({column_list}) SELECT {column_list} FROM {upserts}\
                     {upsert_filter} ON CONFLICT ({key_list}) {action}"
                ),
            };
        let staged = keyed(
            &format!("pg_temp.{staging} AS \"sluice$staged\""),
            &format!("pg_temp.{staging}"),
            &format!("\"sluice$staged\".{DELETE_FLAG} AND "),
            &format!(" WHERE NOT {DELETE_FLAG}"),
        );
        let unnest = |columns: &[usize]| {
            let arrays: Vec<String> = columns
                .iter()
                .enumerate()
                .map(|(n, &i)| format!("${}::{}[]", n + 1, targets[i].pg.sql_name()))
                .collect();
            let names: Vec<&str> = columns.iter().map(|&i| quoted[i].as_str()).collect();
            format!(
                "unnest({}) AS \"sluice$staged\"({})",
                arrays.join(", "),
                names.join(", ")
            )
        };
        let all: Vec<usize> = (0..quoted.len()).collect();
        let arrays = keyed(&unnest(&key), &unnest(&all), "", "");
        let mut copy_types = vec![Type::BOOL];
        copy_types.extend(targets.iter().map(|t| t.pg.wire_type()));
        WritePlan {
            mode,
            names,
            targets,
            is_key,
            key,
            copy_types,
            copy_sql: format!(
                "COPY pg_temp.{staging} ({DELETE_FLAG}, {column_list}) FROM STDIN (FORMAT binary)"
            ),
            staging_ddl: Some(staging_ddl),
            staged: Some(staged),
            arrays: Some(arrays),
        }
    }

    /// The DDL creating this plan's staging table (keyed modes).
    pub(crate) fn staging_ddl(&self) -> Option<&str> {
        self.staging_ddl.as_deref()
    }

    /// The keyed statements reading `source` (none in insert mode).
    pub(crate) fn keyed_statements(&self, source: Source) -> impl Iterator<Item = &str> {
        let keyed = match source {
            Source::Staging => &self.staged,
            Source::Arrays => &self.arrays,
        };
        keyed
            .iter()
            .flat_map(|keyed| [keyed.delete_sql.as_str(), keyed.merge_sql.as_str()])
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

    /// Prepares (or takes from the connection's cache) the statements reading `source`,
    /// creating the connection's staging table the first time it is needed. Call it outside
    /// a transaction: the staging table must outlive the transaction.
    pub(crate) async fn statements(
        &self,
        client: &Object,
        source: Source,
    ) -> Result<Statements, BackendError> {
        match (source, &self.staged, &self.arrays, &self.staging_ddl) {
            (Source::Staging, Some(staged), _, Some(staging_ddl)) => {
                // The staging table lives as long as the connection, like its statement
                // cache: if the cache lacks the statement, the table may be missing too.
                // Parsing a COPY does not look the table up, so the DELETE (which does) comes
                // first.
                let delete = match client.prepare_cached(&staged.delete_sql).await {
                    Ok(statement) => statement,
                    Err(error)
                        if error.code()
                            == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) =>
                    {
                        client
                            .batch_execute(staging_ddl)
                            .await
                            .map_err(|e| classify(&e))?;
                        prepare(client, &staged.delete_sql).await?
                    }
                    Err(error) => return Err(classify(&error)),
                };
                Ok(Statements {
                    source,
                    delete: Some(delete),
                    merge: Some(prepare(client, &staged.merge_sql).await?),
                    copy: Some(prepare(client, &self.copy_sql).await?),
                })
            }
            (Source::Arrays, _, Some(arrays), _) => Ok(Statements {
                source,
                copy: None,
                delete: Some(prepare(client, &arrays.delete_sql).await?),
                merge: Some(prepare(client, &arrays.merge_sql).await?),
            }),
            _ => Ok(Statements {
                source,
                copy: Some(prepare(client, &self.copy_sql).await?),
                delete: None,
                merge: None,
            }),
        }
    }
}

/// Prepares `sql` on `client`, or takes it from the connection's statement cache.
async fn prepare(client: &Object, sql: &str) -> Result<Statement, BackendError> {
    client.prepare_cached(sql).await.map_err(|e| classify(&e))
}

/// A batch made ready before a connection is taken (see [`WritePlan::encode`]).
pub(crate) struct Encoded {
    /// The binary COPY stream (insert mode, and keyed modes from the staging table).
    copy: Option<bytes::Bytes>,
}

impl WritePlan {
    /// Encodes the rows at `good` for `source`: the COPY stream when the batch goes through a
    /// COPY. Done outside any connection, so one lane's encoding overlaps another's round
    /// trips and the server's work.
    pub(crate) fn encode(
        &self,
        source: Source,
        rows: &[Row],
        good: &[usize],
    ) -> Result<Encoded, BackendError> {
        if self.keyed() && source == Source::Arrays {
            return Ok(Encoded { copy: None });
        }
        let bytes = good.iter().map(|&index| rows[index].size_bytes()).sum();
        let mut stream = CopyStream::with_capacity(bytes);
        for &index in good {
            stream
                .push(self.fields(&rows[index]))
                .map_err(|error| BackendError::Row {
                    code: "postgres.encode",
                    message: error.to_string(),
                })?;
        }
        Ok(Encoded {
            copy: Some(stream.finish()),
        })
    }
}

/// Writes the rows of `rows` at positions `good` with `statements`, inside the transaction the
/// caller opened on `client`. `preamble` (simple statements, for example a savepoint) is sent
/// in the same round trip as the COPY; `encoded` is the batch from [`WritePlan::encode`].
pub(crate) async fn apply_rows(
    client: &Client,
    plan: &WritePlan,
    statements: &Statements,
    rows: &[Row],
    good: &[usize],
    encoded: Encoded,
    preamble: Option<&str>,
) -> Result<(), BackendError> {
    let preamble = async {
        match preamble {
            Some(sql) => client.batch_execute(sql).await.map_err(classified),
            None => Ok(()),
        }
    };
    if let (Some(copy), Some(stream)) = (&statements.copy, encoded.copy) {
        // Pipelined: the preamble, the COPY and its data go out before any answer is awaited
        // (requests are sent in the order they are first polled).
        let load = async {
            let mut sink = std::pin::pin!(
                client
                    .copy_in::<_, bytes::Bytes>(copy)
                    .await
                    .map_err(classified)?
            );
            sink.as_mut().send(stream).await.map_err(classified)?;
            sink.as_mut().finish().await.map_err(classified)?;
            Ok::<_, BackendError>(())
        };
        let (preamble, load) = tokio::join!(preamble, load);
        preamble?;
        load?;
    } else {
        preamble.await?;
    }
    if !plan.keyed() {
        return Ok(());
    }
    let (deletes, upserts): (Vec<usize>, Vec<usize>) = good
        .iter()
        .partition(|&&index| rows[index].op == Op::Delete);
    match statements.source {
        Source::Staging => {
            if !deletes.is_empty()
                && let Some(delete) = &statements.delete
            {
                client.execute(delete, &[]).await.map_err(classified)?;
            }
            if !upserts.is_empty()
                && let Some(merge) = &statements.merge
            {
                client.execute(merge, &[]).await.map_err(classified)?;
            }
        }
        Source::Arrays => {
            let all: Vec<usize> = (0..plan.targets.len()).collect();
            for (positions, columns, statement) in [
                (&deletes, &plan.key, &statements.delete),
                (&upserts, &all, &statements.merge),
            ] {
                let Some(statement) = statement else {
                    continue;
                };
                if positions.is_empty() {
                    continue;
                }
                let arrays: Vec<ColumnArray<'_>> = columns
                    .iter()
                    .map(|&column| {
                        ColumnArray::new(rows, positions, column, plan.targets[column].pg)
                    })
                    .collect();
                let params: Vec<&(dyn ToSql + Sync)> = arrays
                    .iter()
                    .map(|array| array as &(dyn ToSql + Sync))
                    .collect();
                client
                    .execute(statement, &params)
                    .await
                    .map_err(classified)?;
            }
        }
    }
    Ok(())
}

/// Writes the rows of `rows` at positions `good` (encoded as `encoded`) in one transaction of
/// its own on `session` (at-least-once delivery). `BEGIN`, the transaction id query and the
/// batch's statements are pipelined: one round trip before the COPY data streams.
pub(crate) async fn write_rows(
    session: &mut Session,
    plan: &WritePlan,
    rows: &[Row],
    good: &[usize],
    encoded: Encoded,
) -> Result<(), WriteFailure> {
    let statements = plan.statements(session.client(), Source::Staging).await?;
    let xact = session
        .client()
        .prepare_cached(XACT_SQL)
        .await
        .map_err(classified)?;
    let client = session.opening();
    let (begun, xact, applied) = tokio::join!(
        client.batch_execute("BEGIN"),
        client.query_one(&xact, &[]),
        apply_rows(client, plan, &statements, rows, good, encoded, None),
    );
    let written = begun
        .map_err(classified)
        .and_then(|()| xact.map_err(classified))
        .and_then(|xact| {
            applied?;
            Ok::<_, BackendError>((xact.get::<_, i64>(0), xact.get::<_, i32>(1)))
        });
    let (txid, pid) = match written {
        Ok(xact) => xact,
        Err(error) => {
            session.rollback().await;
            return Err(WriteFailure::Failed(error));
        }
    };
    match session.commit().await {
        Ok(()) => Ok(()),
        Err(error) if commit_outcome_unknown(&error) => Err(WriteFailure::CommitUnknown {
            txid,
            pid,
            error: classify(&error),
        }),
        Err(error) => Err(WriteFailure::Failed(classify(&error))),
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
        let staged = plan.staged.as_ref().unwrap();
        let merge = &staged.merge_sql;
        assert!(merge.starts_with("INSERT INTO \"order\" (\"tenant\", \"id\", \"qty\") SELECT"));
        assert!(merge.ends_with(
            "WHERE NOT \"sluice$delete\" ON CONFLICT (\"tenant\", \"id\") DO UPDATE SET \"qty\" = EXCLUDED.\"qty\""
        ));
        let delete = &staged.delete_sql;
        assert!(delete.ends_with(
            "WHERE \"sluice$staged\".\"sluice$delete\" AND \"sluice$target\".\"tenant\" = \"sluice$staged\".\"tenant\" \
             AND \"sluice$target\".\"id\" = \"sluice$staged\".\"id\""
        ));
        // The exactly-once form reads the same rows from arrays: only the key for deletes.
        let arrays: Vec<&str> = plan.keyed_statements(Source::Arrays).collect();
        assert_eq!(
            arrays[0],
            "DELETE FROM \"order\" AS \"sluice$target\" USING unnest($1::text[], $2::bigint[]) \
             AS \"sluice$staged\"(\"tenant\", \"id\") WHERE \"sluice$target\".\"tenant\" = \"sluice$staged\".\"tenant\" \
             AND \"sluice$target\".\"id\" = \"sluice$staged\".\"id\""
        );
        assert_eq!(
            arrays[1],
            "INSERT INTO \"order\" (\"tenant\", \"id\", \"qty\") SELECT \"tenant\", \"id\", \"qty\" FROM \
             unnest($1::text[], $2::bigint[], $3::smallint[]) AS \"sluice$staged\"(\"tenant\", \"id\", \"qty\") \
             ON CONFLICT (\"tenant\", \"id\") DO UPDATE SET \"qty\" = EXCLUDED.\"qty\""
        );
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
        assert_eq!(plan.keyed_statements(Source::Staging).count(), 0);
        assert_eq!(plan.keyed_statements(Source::Arrays).count(), 0);
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
        for source in [Source::Staging, Source::Arrays] {
            let merge = plan.keyed_statements(source).nth(1).unwrap();
            assert!(
                merge.ends_with("ON CONFLICT (\"tag\") DO NOTHING"),
                "{merge}"
            );
        }
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
