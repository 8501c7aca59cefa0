//! Reading the target table's definition, checking the schema against it, and the DDL the sink
//! may run (create the table, add nullable columns, create the dead-letter table).
//!
//! Table names reach the introspection queries as bound parameters of the `pragma_*`
//! table-valued functions, and DDL text only ever contains validated, quoted identifiers.

use crate::error::classify;
use crate::statements::{Kind, Statements};
use rusqlite::{Connection, OptionalExtension};
use sluice_sink::{
    BackendError, ColumnType, CreateTable, Evolve, Ident, PrepareReport, PrepareRequest, Schema,
};
use std::collections::BTreeSet;

pub(crate) use sluice_sink::DEAD_LETTER_COLUMNS;

/// SQLite's type affinity of a declared column type (section 3.1 of "Datatypes In SQLite").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Affinity {
    Integer,
    Text,
    Blob,
    Real,
    Numeric,
}

impl Affinity {
    pub(crate) fn of(declared: &str) -> Affinity {
        let upper = declared.to_ascii_uppercase();
        if upper.contains("INT") {
            Affinity::Integer
        } else if ["CHAR", "CLOB", "TEXT"].iter().any(|t| upper.contains(t)) {
            Affinity::Text
        } else if upper.contains("BLOB") || upper.trim().is_empty() {
            Affinity::Blob
        } else if ["REAL", "FLOA", "DOUB"].iter().any(|t| upper.contains(t)) {
            Affinity::Real
        } else {
            Affinity::Numeric
        }
    }
}

/// Affinities that store a column type's values unchanged. Text in a numeric column may be
/// converted to a number ('007' becomes 7), and integers in a REAL column become floats, so
/// those pairs are refused.
fn keeps_values(column_type: ColumnType, affinity: Affinity) -> bool {
    use Affinity::*;
    match column_type {
        ColumnType::Bool
        | ColumnType::I64
        | ColumnType::Date
        | ColumnType::Timestamp
        | ColumnType::TimestampTz => matches!(affinity, Integer | Numeric | Blob),
        ColumnType::F64 => matches!(affinity, Real | Numeric | Blob),
        ColumnType::Decimal | ColumnType::Text | ColumnType::Json => {
            matches!(affinity, Text | Blob)
        }
        ColumnType::Bytes | ColumnType::Uuid => affinity == Blob,
    }
}

/// The declared type used when the sink creates a column (see the crate docs).
pub(crate) fn declared_type(column_type: ColumnType) -> &'static str {
    match column_type {
        ColumnType::Bool => "BOOLEAN",
        ColumnType::I64 | ColumnType::Date | ColumnType::Timestamp | ColumnType::TimestampTz => {
            "INTEGER"
        }
        ColumnType::F64 => "REAL",
        ColumnType::Decimal | ColumnType::Text | ColumnType::Json => "TEXT",
        ColumnType::Bytes | ColumnType::Uuid => "BLOB",
    }
}

#[derive(Debug)]
struct TableColumn {
    name: String,
    declared: String,
    not_null: bool,
    has_default: bool,
    /// Position in the primary key (1-based), 0 when not part of it.
    primary_key: i64,
    /// 0 normal, 1 hidden (virtual tables), 2 and 3 generated.
    hidden: i64,
}

/// Whether `name` is a table, a view, or nothing.
fn object_type(connection: &Connection, name: &str) -> rusqlite::Result<Option<String>> {
    connection
        .query_row(
            "SELECT type FROM sqlite_schema WHERE name = ?1 COLLATE NOCASE AND type IN ('table', 'view')",
            [name],
            |row| row.get(0),
        )
        .optional()
}

fn table_columns(connection: &Connection, table: &str) -> rusqlite::Result<Vec<TableColumn>> {
    let mut statement = connection.prepare_cached(
        "SELECT name, type, \"notnull\", dflt_value IS NOT NULL, pk, hidden \
         FROM pragma_table_xinfo(?1)",
    )?;
    statement
        .query_map([table], |row| {
            Ok(TableColumn {
                name: row.get(0)?,
                declared: row.get(1)?,
                not_null: row.get(2)?,
                has_default: row.get(3)?,
                primary_key: row.get(4)?,
                hidden: row.get(5)?,
            })
        })?
        .collect()
}

/// Sets of column names (lower case) that are unique: the primary key and every unique,
/// non-partial index on plain columns. `ON CONFLICT` needs one of them to match the key.
fn unique_sets(
    connection: &Connection,
    table: &str,
    columns: &[TableColumn],
) -> rusqlite::Result<Vec<BTreeSet<String>>> {
    let mut sets = Vec::new();
    let primary: BTreeSet<String> = columns
        .iter()
        .filter(|c| c.primary_key > 0)
        .map(|c| c.name.to_ascii_lowercase())
        .collect();
    if !primary.is_empty() {
        sets.push(primary);
    }
    let indexes: Vec<String> = connection
        .prepare_cached(
            "SELECT name FROM pragma_index_list(?1) WHERE \"unique\" = 1 AND partial = 0",
        )?
        .query_map([table], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for index in indexes {
        let names: Vec<Option<String>> = connection
            .prepare_cached("SELECT name FROM pragma_index_info(?1)")?
            .query_map([&index], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        // A NULL name is an expression column: it cannot match a list of plain columns.
        if let Some(names) = names.into_iter().collect::<Option<Vec<String>>>() {
            sets.push(names.iter().map(|n| n.to_ascii_lowercase()).collect());
        }
    }
    Ok(sets)
}

pub(crate) fn create_table_sql(schema: &Schema) -> String {
    let mut parts: Vec<String> = schema
        .columns()
        .iter()
        .map(|column| {
            let not_null = if column.nullable { "" } else { " NOT NULL" };
            format!(
                "{} {}{not_null}",
                column.name.quoted(),
                declared_type(column.column_type)
            )
        })
        .collect();
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

fn mismatch(table: &Ident, problems: Vec<String>) -> BackendError {
    BackendError::SchemaMismatch {
        table: table.to_string(),
        problems,
    }
}

/// Checks (and, where allowed, creates or widens) the target table and the dead-letter table,
/// and compiles the statements once so that SQLite itself confirms them. Runs in one savepoint:
/// on error nothing is changed.
pub(crate) fn prepare_table(
    connection: &Connection,
    request: &PrepareRequest,
    statements: &Statements,
) -> Result<PrepareReport, BackendError> {
    let schema = &request.schema;
    let table = schema.table();
    let mut report = PrepareReport::default();
    match object_type(connection, table.as_str())
        .map_err(classify)?
        .as_deref()
    {
        Some("table") => {}
        Some(other) => {
            return Err(mismatch(
                table,
                vec![format!("{table} is a {other}, not a table")],
            ));
        }
        None if request.create_table == CreateTable::IfMissing => {
            connection
                .execute_batch(&create_table_sql(schema))
                .map_err(classify)?;
            report.created_table = true;
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
    }
    let columns = table_columns(connection, table.as_str()).map_err(classify)?;
    let mut problems = Vec::new();
    let mut to_add = Vec::new();
    for column in schema.columns() {
        let found = columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(column.name.as_str()));
        match found {
            Some(found) if found.hidden != 0 => problems.push(format!(
                "column {} is a generated or hidden column and cannot be written",
                column.name
            )),
            Some(found) => {
                let affinity = Affinity::of(&found.declared);
                if !keeps_values(column.column_type, affinity) {
                    problems.push(format!(
                        "column {} is declared {:?} ({affinity:?} affinity), which would not keep {} values exactly (declare it {})",
                        column.name,
                        found.declared,
                        column.column_type,
                        declared_type(column.column_type)
                    ));
                }
                if column.nullable && found.not_null {
                    problems.push(format!(
                        "column {} is NOT NULL in the table but nullable in the schema",
                        column.name
                    ));
                }
            }
            None if request.evolve == Evolve::AddColumns && column.nullable => to_add.push(column),
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
    let single_primary_key = columns.iter().filter(|c| c.primary_key > 0).count() == 1;
    for found in &columns {
        let in_schema = schema
            .columns()
            .iter()
            .any(|c| c.name.as_str().eq_ignore_ascii_case(&found.name));
        let rowid_alias = single_primary_key
            && found.primary_key == 1
            && found.declared.eq_ignore_ascii_case("INTEGER");
        if !in_schema && found.hidden == 0 && found.not_null && !found.has_default && !rowid_alias {
            problems.push(format!(
                "table column {} is NOT NULL without a default and not in the schema",
                found.name
            ));
        }
    }
    if request.mode.is_keyed() {
        let key: BTreeSet<String> = schema
            .key_columns()
            .map(|c| c.name.as_str().to_ascii_lowercase())
            .collect();
        let unique = unique_sets(connection, table.as_str(), &columns).map_err(classify)?;
        if !unique.contains(&key) {
            let names: Vec<&str> = schema.key_columns().map(|c| c.name.as_str()).collect();
            problems.push(format!(
                "the key ({}) is neither the primary key nor a unique, non-partial index, so rows cannot be upserted or deleted by it",
                names.join(", ")
            ));
        }
    }
    if !problems.is_empty() {
        return Err(mismatch(table, problems));
    }
    for column in to_add {
        connection
            .execute_batch(&format!(
                "ALTER TABLE {} ADD COLUMN {} {}",
                table.quoted(),
                column.name.quoted(),
                declared_type(column.column_type)
            ))
            .map_err(classify)?;
        report.added_columns.push(column.name.clone());
    }
    if let Some(dead_letters) = &request.dead_letter_table {
        prepare_dead_letter_table(connection, dead_letters)?;
    }
    let kinds: &[Kind] = if request.mode.is_keyed() {
        &[Kind::Upsert, Kind::Delete]
    } else {
        &[Kind::Insert]
    };
    for kind in kinds {
        if let Err(error) = connection.prepare(statements.text(*kind, 1)) {
            return Err(mismatch(
                table,
                vec![format!("SQLite refuses the {kind:?} statement: {error}")],
            ));
        }
    }
    Ok(report)
}

fn prepare_dead_letter_table(connection: &Connection, table: &Ident) -> Result<(), BackendError> {
    connection
        .execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {} (\"id\" INTEGER PRIMARY KEY, \"failed_at_us\" INTEGER NOT NULL, \
             \"table_name\" TEXT NOT NULL, \"error_code\" TEXT NOT NULL, \"error\" TEXT NOT NULL, \
             \"row_json\" TEXT NOT NULL)",
            table.quoted()
        ))
        .map_err(classify)?;
    let columns = table_columns(connection, table.as_str()).map_err(classify)?;
    let missing: Vec<&str> = DEAD_LETTER_COLUMNS
        .into_iter()
        .filter(|name| !columns.iter().any(|c| c.name.eq_ignore_ascii_case(name)))
        .collect();
    if !missing.is_empty() {
        return Err(mismatch(
            table,
            vec![format!(
                "the dead-letter table lacks the columns {}",
                missing.join(", ")
            )],
        ));
    }
    Ok(())
}

/// The statement recording one dead letter.
pub(crate) fn dead_letter_insert_sql(table: &Ident) -> String {
    let columns: Vec<String> = DEAD_LETTER_COLUMNS
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect();
    format!(
        "INSERT INTO {} ({}) VALUES (?1, ?2, ?3, ?4, ?5)",
        table.quoted(),
        columns.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_rules() {
        assert_eq!(Affinity::of("BIGINT"), Affinity::Integer);
        assert_eq!(Affinity::of("varchar(20)"), Affinity::Text);
        assert_eq!(Affinity::of(""), Affinity::Blob);
        assert_eq!(Affinity::of("DOUBLE PRECISION"), Affinity::Real);
        assert_eq!(Affinity::of("DECIMAL(10,2)"), Affinity::Numeric);
        assert_eq!(Affinity::of("JSON"), Affinity::Numeric);
        // The documented surprise: "FLOATING POINT" contains INT.
        assert_eq!(Affinity::of("FLOATING POINT"), Affinity::Integer);
        for column_type in ColumnType::ALL {
            assert!(
                keeps_values(column_type, Affinity::of(declared_type(column_type))),
                "{column_type}"
            );
        }
        assert!(!keeps_values(ColumnType::Decimal, Affinity::Numeric));
        assert!(!keeps_values(ColumnType::Text, Affinity::Integer));
        assert!(!keeps_values(ColumnType::I64, Affinity::Real));
    }
}
