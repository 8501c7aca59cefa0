//! Reading the target table's definition from the catalog, checking the schema against it, and
//! the DDL the sink may run (create the table, add nullable columns, create the dead-letter
//! table).
//!
//! Everything runs in the caller's transaction, after an advisory lock on the table's name, so
//! two sinks preparing the same table one after the other see each other's changes, and a
//! refused schema changes nothing. Names reach the catalog queries as bound parameters
//! (`to_regclass($1)` with the quoted name); DDL text only ever contains validated, quoted
//! identifiers and the fixed type names of [`PgType::sql_name`].

use crate::error::classify;
use crate::statements::{Source, WritePlan};
use crate::values::{PgType, Target};
use sluice_sink::{
    BackendError, CreateTable, DeadLetter, Evolve, Ident, PrepareReport, PrepareRequest, Schema,
};
use std::collections::BTreeSet;
use tokio_postgres::Transaction;
use tokio_postgres::types::ToSql;

pub(crate) use sluice_sink::DEAD_LETTER_COLUMNS;

/// The first half of the advisory-lock key the sink takes while preparing a table ("sluc").
const ADVISORY_LOCK_CLASS: i32 = 0x736c_7563;

#[derive(Debug)]
struct TableColumn {
    name: String,
    attnum: i16,
    type_oid: u32,
    typmod: i32,
    /// `format_type(atttypid, atttypmod)`, for messages.
    type_name: String,
    not_null: bool,
    has_default: bool,
    /// `a` (always), `d` (by default) or empty.
    identity: String,
    /// `s` (stored generated column) or empty.
    generated: String,
}

/// The result of preparing a table: what changed, the table's OID and where each schema
/// column's values go.
pub(crate) struct PreparedTable {
    pub(crate) report: PrepareReport,
    pub(crate) oid: u32,
    pub(crate) targets: Vec<Target>,
}

fn mismatch(table: &Ident, problems: Vec<String>) -> BackendError {
    BackendError::SchemaMismatch {
        table: table.to_string(),
        problems,
    }
}

pub(crate) async fn lock_name(
    transaction: &Transaction<'_>,
    name: &Ident,
) -> Result<(), BackendError> {
    transaction
        .execute(
            "SELECT pg_advisory_xact_lock($1::int4, hashtext($2::text))",
            &[&ADVISORY_LOCK_CLASS, &name.quoted()],
        )
        .await
        .map_err(|e| classify(&e))?;
    Ok(())
}

/// The OID and kind (`r`, `p`, `v`, ...) of the relation `name` resolves to on the search
/// path, if any.
pub(crate) async fn relation(
    transaction: &Transaction<'_>,
    name: &Ident,
) -> Result<Option<(u32, String)>, BackendError> {
    let row = transaction
        .query_opt(
            "SELECT c.oid, c.relkind::text FROM pg_catalog.pg_class c \
             WHERE c.oid = to_regclass($1::text)",
            &[&name.quoted()],
        )
        .await
        .map_err(|e| classify(&e))?;
    Ok(row.map(|row| (row.get(0), row.get(1))))
}

async fn table_columns(
    transaction: &Transaction<'_>,
    oid: u32,
) -> Result<Vec<TableColumn>, BackendError> {
    let rows = transaction
        .query(
            "SELECT a.attname::text, a.attnum, a.atttypid, a.atttypmod, \
                    format_type(a.atttypid, a.atttypmod), a.attnotnull, a.atthasdef, \
                    a.attidentity::text, a.attgenerated::text \
             FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(|e| classify(&e))?;
    Ok(rows
        .into_iter()
        .map(|row| TableColumn {
            name: row.get(0),
            attnum: row.get(1),
            type_oid: row.get(2),
            typmod: row.get(3),
            type_name: row.get(4),
            not_null: row.get(5),
            has_default: row.get(6),
            identity: row.get(7),
            generated: row.get(8),
        })
        .collect())
}

/// Sets of column names that `ON CONFLICT` can use as an arbiter: the key columns of the
/// primary key and of every unique index that is valid, immediate (not deferrable), without a
/// predicate and without expressions (`INCLUDE` columns are not part of the key).
async fn unique_sets(
    transaction: &Transaction<'_>,
    oid: u32,
    columns: &[TableColumn],
) -> Result<Vec<BTreeSet<String>>, BackendError> {
    let rows = transaction
        .query(
            "SELECT i.indkey::int2[], i.indnkeyatts FROM pg_catalog.pg_index i \
             WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid AND i.indimmediate \
               AND i.indpred IS NULL AND i.indexprs IS NULL \
             ORDER BY i.indisprimary DESC, i.indexrelid",
            &[&oid],
        )
        .await
        .map_err(|e| classify(&e))?;
    let mut sets = Vec::new();
    for row in rows {
        let attnums: Vec<i16> = row.get(0);
        let key_count = usize::try_from(row.get::<_, i16>(1)).unwrap_or(0);
        let names: Option<BTreeSet<String>> = attnums
            .iter()
            .take(key_count)
            .map(|attnum| {
                columns
                    .iter()
                    .find(|c| c.attnum == *attnum)
                    .map(|c| c.name.clone())
            })
            .collect();
        if let Some(names) = names {
            sets.push(names);
        }
    }
    Ok(sets)
}

fn column_definitions(schema: &Schema) -> Vec<String> {
    schema
        .columns()
        .iter()
        .map(|column| {
            let not_null = if column.nullable { "" } else { " NOT NULL" };
            format!(
                "{} {}{not_null}",
                column.name.quoted(),
                PgType::default_for(column.column_type).sql_name()
            )
        })
        .collect()
}

/// `CREATE TABLE` for a schema: the types of [`PgType::default_for`], NOT NULL where the schema
/// says so, and the key as the primary key.
pub(crate) fn create_table_sql(schema: &Schema) -> String {
    let mut parts = column_definitions(schema);
    if !schema.key().is_empty() {
        let key: Vec<String> = schema.key_columns().map(|c| c.name.quoted()).collect();
        parts.push(format!("PRIMARY KEY ({})", key.join(", ")));
    }
    format!(
        "CREATE TABLE {} ({})",
        schema.table().quoted(),
        parts.join(", ")
    )
}

fn add_columns_sql(table: &Ident, columns: &[&sluice_sink::Column]) -> String {
    let additions: Vec<String> = columns
        .iter()
        .map(|column| {
            format!(
                "ADD COLUMN {} {}",
                column.name.quoted(),
                PgType::default_for(column.column_type).sql_name()
            )
        })
        .collect();
    format!("ALTER TABLE {} {}", table.quoted(), additions.join(", "))
}

pub(crate) fn relation_kind_name(kind: &str) -> &'static str {
    match kind {
        "v" => "view",
        "m" => "materialized view",
        "f" => "foreign table",
        "S" => "sequence",
        "i" | "I" => "index",
        "c" => "composite type",
        "t" => "TOAST table",
        _ => "relation that is not a table",
    }
}

/// Checks (and, where allowed, creates or widens) the target table and the dead-letter table.
/// On error the caller rolls the transaction back, so nothing is changed.
pub(crate) async fn prepare_table(
    transaction: &Transaction<'_>,
    request: &PrepareRequest,
) -> Result<PreparedTable, BackendError> {
    let schema = &request.schema;
    let table = schema.table();
    let mut report = PrepareReport::default();
    lock_name(transaction, table).await?;
    let oid = match relation(transaction, table).await? {
        Some((oid, kind)) if kind == "r" || kind == "p" => oid,
        Some((_, kind)) => {
            return Err(mismatch(
                table,
                vec![format!(
                    "{table} is a {}, not a table",
                    relation_kind_name(&kind)
                )],
            ));
        }
        None if request.create_table == CreateTable::IfMissing => {
            transaction
                .batch_execute(&create_table_sql(schema))
                .await
                .map_err(|e| classify(&e))?;
            report.created_table = true;
            relation(transaction, table)
                .await?
                .map(|(oid, _)| oid)
                .ok_or_else(|| BackendError::Fatal {
                    code: "postgres.create_table",
                    message: format!("table {table} was created but cannot be found"),
                })?
        }
        None => {
            return Err(mismatch(
                table,
                vec![
                    "the table does not exist (set create_table = \"if_missing\" to create it)"
                        .into(),
                ],
            ));
        }
    };
    let columns = table_columns(transaction, oid).await?;
    let mut problems = Vec::new();
    let mut to_add = Vec::new();
    for column in schema.columns() {
        // Names are quoted, so they match exactly; a match ignoring case is only a hint.
        match columns.iter().find(|c| c.name == column.name.as_str()) {
            Some(found) => {
                if found.generated == "s" {
                    problems.push(format!(
                        "column {} is a generated column and cannot be written",
                        column.name
                    ));
                } else if found.identity == "a" {
                    problems.push(format!(
                        "column {} is GENERATED ALWAYS AS IDENTITY and cannot be written (use GENERATED BY DEFAULT, or leave it out of the schema)",
                        column.name
                    ));
                }
                if let Err(reason) = Target::of_column(
                    column.column_type,
                    found.type_oid,
                    found.typmod,
                    &found.type_name,
                ) {
                    problems.push(format!("column {} {reason}", column.name));
                }
                if column.nullable && found.not_null {
                    problems.push(format!(
                        "column {} is NOT NULL in the table but nullable in the schema",
                        column.name
                    ));
                }
            }
            None => {
                let other_case = columns
                    .iter()
                    .find(|c| c.name.eq_ignore_ascii_case(column.name.as_str()));
                match other_case {
                    // Adding "Id" next to "id" would be legal and almost surely wrong.
                    Some(found) => problems.push(format!(
                        "column {} is missing; the table has {:?} (quoted names are case-sensitive, so it is neither used nor added)",
                        column.name, found.name
                    )),
                    None if request.evolve == Evolve::AddColumns && column.nullable => {
                        to_add.push(column);
                    }
                    None if request.evolve == Evolve::AddColumns => problems.push(format!(
                        "column {} is missing and cannot be added because it is not nullable",
                        column.name
                    )),
                    None => problems.push(format!(
                        "column {} is missing (evolve = \"add_columns\" adds nullable columns)",
                        column.name
                    )),
                }
            }
        }
    }
    for found in &columns {
        let in_schema = schema
            .columns()
            .iter()
            .any(|c| c.name.as_str() == found.name);
        let filled_by_table =
            found.has_default || !found.identity.is_empty() || !found.generated.is_empty();
        if !in_schema && found.not_null && !filled_by_table {
            problems.push(format!(
                "table column {} is NOT NULL without a default and not in the schema",
                found.name
            ));
        }
    }
    if request.mode.is_keyed() {
        let key: BTreeSet<String> = schema
            .key_columns()
            .map(|c| c.name.as_str().to_string())
            .collect();
        let unique = unique_sets(transaction, oid, &columns).await?;
        if !unique.contains(&key) {
            let names: Vec<&str> = schema.key_columns().map(|c| c.name.as_str()).collect();
            let existing: Vec<String> = unique
                .iter()
                .map(|set| format!("({})", set.iter().cloned().collect::<Vec<_>>().join(", ")))
                .collect();
            problems.push(format!(
                "the key ({}) is neither the primary key nor a unique, valid, non-deferrable, non-partial index, so rows cannot be upserted or deleted by it (unique keys of the table: {})",
                names.join(", "),
                if existing.is_empty() { "none".to_string() } else { existing.join(", ") }
            ));
        }
    }
    if !problems.is_empty() {
        return Err(mismatch(table, problems));
    }
    if !to_add.is_empty() {
        transaction
            .batch_execute(&add_columns_sql(table, &to_add))
            .await
            .map_err(|e| classify(&e))?;
        report.added_columns = to_add.iter().map(|c| c.name.clone()).collect();
    }
    let columns = if to_add.is_empty() {
        columns
    } else {
        table_columns(transaction, oid).await?
    };
    let mut targets = Vec::with_capacity(schema.columns().len());
    for column in schema.columns() {
        let found = columns
            .iter()
            .find(|c| c.name == column.name.as_str())
            .ok_or_else(|| BackendError::Fatal {
                code: "postgres.add_column",
                message: format!("column {} was added but cannot be found", column.name),
            })?;
        let target = Target::of_column(
            column.column_type,
            found.type_oid,
            found.typmod,
            &found.type_name,
        )
        .map_err(|reason| mismatch(table, vec![format!("column {} {reason}", column.name)]))?;
        targets.push(target);
    }
    if let Some(dead_letters) = &request.dead_letter_table {
        prepare_dead_letter_table(transaction, dead_letters).await?;
    }
    if request.mode.is_keyed() {
        // Let PostgreSQL confirm the statements (ON CONFLICT arbiter inference, types): create
        // this connection's staging table and parse them (and, for exactly-once delivery,
        // their form reading arrays).
        let plan = WritePlan::new(schema, request.mode, oid, targets.clone());
        transaction
            .batch_execute(plan.staging_ddl().expect("keyed plans stage"))
            .await
            .map_err(|e| classify(&e))?;
        let arrays = request
            .checkpoints
            .is_some()
            .then(|| plan.keyed_statements(Source::Arrays));
        for sql in plan
            .keyed_statements(Source::Staging)
            .chain(arrays.into_iter().flatten())
        {
            if let Err(error) = transaction.prepare(sql).await {
                return Err(mismatch(
                    table,
                    vec![format!(
                        "PostgreSQL refuses the sink's statement: {}",
                        classify(&error)
                    )],
                ));
            }
        }
    }
    Ok(PreparedTable {
        report,
        oid,
        targets,
    })
}

async fn prepare_dead_letter_table(
    transaction: &Transaction<'_>,
    table: &Ident,
) -> Result<(), BackendError> {
    lock_name(transaction, table).await?;
    transaction
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {} (\
             \"id\" bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, \
             \"failed_at_us\" bigint NOT NULL, \"table_name\" text NOT NULL, \
             \"error_code\" text NOT NULL, \"error\" text NOT NULL, \"row_json\" text NOT NULL)",
            table.quoted()
        ))
        .await
        .map_err(|e| classify(&e))?;
    let Some((oid, kind)) = relation(transaction, table).await? else {
        return Err(mismatch(
            table,
            vec!["the dead-letter table cannot be found after creating it (is another schema first on the search path?)".into()],
        ));
    };
    if kind != "r" && kind != "p" {
        return Err(mismatch(
            table,
            vec![format!(
                "the dead-letter table is a {}, not a table",
                relation_kind_name(&kind)
            )],
        ));
    }
    let columns = table_columns(transaction, oid).await?;
    let mut problems = Vec::new();
    for (name, wanted) in
        std::iter::once(("id", PgType::Int8)).chain(DEAD_LETTER_COLUMNS.iter().map(|name| {
            let pg = if *name == "failed_at_us" {
                PgType::Int8
            } else {
                PgType::Text
            };
            (*name, pg)
        }))
    {
        match columns.iter().find(|c| c.name == name) {
            None => problems.push(format!("the dead-letter table lacks the column {name}")),
            Some(found) => {
                let fits = match PgType::from_oid(found.type_oid) {
                    Some(PgType::Int8) => wanted == PgType::Int8,
                    Some(PgType::Text | PgType::Varchar) => wanted == PgType::Text,
                    _ => false,
                };
                if !fits {
                    problems.push(format!(
                        "the dead-letter column {name} has type {} (expected {})",
                        found.type_name,
                        wanted.sql_name()
                    ));
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(mismatch(table, problems));
    }
    Ok(())
}

/// The statement recording dead letters: one row per element of five parallel arrays.
pub(crate) fn dead_letter_insert_sql(table: &Ident) -> String {
    let columns: Vec<String> = DEAD_LETTER_COLUMNS
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect();
    format!(
        "INSERT INTO {} ({}) SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[])",
        table.quoted(),
        columns.join(", ")
    )
}

/// Dead letters as the five arrays of [`dead_letter_insert_sql`].
pub(crate) struct DeadLetterColumns {
    failed_at: Vec<i64>,
    tables: Vec<String>,
    codes: Vec<String>,
    errors: Vec<String>,
    rows: Vec<String>,
}

impl DeadLetterColumns {
    pub(crate) fn new(letters: &[DeadLetter]) -> DeadLetterColumns {
        // PostgreSQL text cannot hold NUL; JSON rows escape it, messages might not.
        let clean = |text: &str| text.replace('\0', "\u{fffd}");
        DeadLetterColumns {
            failed_at: letters.iter().map(|l| l.failed_at.0).collect(),
            tables: letters.iter().map(|l| clean(&l.table)).collect(),
            codes: letters.iter().map(|l| clean(&l.error_code)).collect(),
            errors: letters.iter().map(|l| clean(&l.error)).collect(),
            rows: letters.iter().map(|l| clean(&l.row)).collect(),
        }
    }

    /// The statement's parameters.
    pub(crate) fn params(&self) -> [&(dyn ToSql + Sync); 5] {
        [
            &self.failed_at,
            &self.tables,
            &self.codes,
            &self.errors,
            &self.rows,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sink::{Column, ColumnType};

    #[test]
    fn ddl_quotes_names_and_uses_the_default_types() {
        let schema = Schema::new(
            "order",
            vec![
                Column::new("select", ColumnType::I64).unwrap().not_null(),
                Column::new("Mixed", ColumnType::TimestampTz).unwrap(),
                Column::new("doc", ColumnType::Json).unwrap(),
            ],
            &["select"],
        )
        .unwrap();
        assert_eq!(
            create_table_sql(&schema),
            "CREATE TABLE \"order\" (\"select\" bigint NOT NULL, \"Mixed\" timestamp with time zone, \
             \"doc\" jsonb, PRIMARY KEY (\"select\"))"
        );
        let doc = &schema.columns()[2];
        assert_eq!(
            add_columns_sql(schema.table(), &[doc]),
            "ALTER TABLE \"order\" ADD COLUMN \"doc\" jsonb"
        );
        assert!(
            dead_letter_insert_sql(&Ident::new("order_dead_letters").unwrap())
                .starts_with("INSERT INTO \"order_dead_letters\" (\"failed_at_us\", ")
        );
    }
}
