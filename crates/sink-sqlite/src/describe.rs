//! Reading an existing table's columns, for tools that build a schema from the table (for
//! example `sluice ingest` without a `[columns]` table). Read-only: `pragma_table_xinfo` with
//! the table's name bound as a parameter.

use crate::error::classify;
use crate::table::Affinity;
use rusqlite::{Connection, OptionalExtension};
use sluice_sink::{BackendError, ColumnType, DescribedColumn, Ident};

/// The columns of table `table` in their order, or `None` when no table of that name exists
/// (a view is `None` too).
///
/// A column's type is the sink's column type the declared type stands for, or `None` when it
/// is ambiguous (NUMERIC affinity: `NUMERIC`, `DECIMAL`, `DATE`, `JSON`, ...; declare those
/// columns). `BOOL...` is a boolean; otherwise by affinity: INTEGER an `i64`, TEXT `text`,
/// REAL `f64`, `BLOB` `bytes`, no declared type `text`. The sink stores dates, timestamps and
/// UUIDs in INTEGER and BLOB columns, so those read back as `i64` and `bytes`. A default, a
/// generated column or an `INTEGER PRIMARY KEY` (the rowid) is filled by the table; a
/// generated or hidden column is read-only.
pub(crate) fn describe_table(
    connection: &Connection,
    table: &Ident,
) -> Result<Option<Vec<DescribedColumn>>, BackendError> {
    let kind: Option<String> = connection
        .query_row(
            "SELECT type FROM sqlite_schema WHERE name = ?1 COLLATE NOCASE AND type = 'table'",
            [table.as_str()],
            |row| row.get(0),
        )
        .optional()
        .map_err(classify)?;
    if kind.is_none() {
        return Ok(None);
    }
    let mut statement = connection
        .prepare(
            "SELECT name, type, \"notnull\", dflt_value IS NOT NULL, pk, hidden \
             FROM pragma_table_xinfo(?1)",
        )
        .map_err(classify)?;
    let rows = statement
        .query_map([table.as_str()], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, bool>(2)?,
                row.get::<_, bool>(3)?,
                row.get::<_, i64>(4)?,
                row.get::<_, i64>(5)?,
            ))
        })
        .map_err(classify)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(classify)?;
    let primary_key_columns = rows.iter().filter(|row| row.4 > 0).count();
    Ok(Some(
        rows.into_iter()
            .map(
                |(name, declared, not_null, has_default, primary_key, hidden)| {
                    let rowid = primary_key_columns == 1
                        && primary_key == 1
                        && declared.eq_ignore_ascii_case("INTEGER");
                    DescribedColumn {
                        name,
                        column_type: column_type_of(&declared),
                        nullable: !not_null && primary_key == 0,
                        filled_by_table: has_default || rowid || hidden != 0,
                        read_only: hidden != 0,
                        type_name: declared,
                    }
                },
            )
            .collect(),
    ))
}

fn column_type_of(declared: &str) -> Option<ColumnType> {
    if declared.to_ascii_uppercase().contains("BOOL") {
        // BOOLEAN has NUMERIC affinity, which keeps 0 and 1.
        return Some(ColumnType::Bool);
    }
    match Affinity::of(declared) {
        Affinity::Integer => Some(ColumnType::I64),
        Affinity::Text => Some(ColumnType::Text),
        Affinity::Real => Some(ColumnType::F64),
        Affinity::Blob if declared.trim().is_empty() => Some(ColumnType::Text),
        Affinity::Blob => Some(ColumnType::Bytes),
        Affinity::Numeric => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_types() {
        let connection = Connection::open_in_memory().unwrap();
        connection
            .execute_batch(
                "CREATE TABLE t (id INTEGER PRIMARY KEY, flag BOOLEAN NOT NULL, n BIGINT DEFAULT 3, \
                 name VARCHAR(20), score DOUBLE, data BLOB, anything, amount DECIMAL(10,2), \
                 twice INTEGER GENERATED ALWAYS AS (n * 2))",
            )
            .unwrap();
        let columns = describe_table(&connection, &Ident::new("t").unwrap())
            .unwrap()
            .unwrap();
        let summary: Vec<(&str, Option<ColumnType>, bool, bool, bool)> = columns
            .iter()
            .map(|c| {
                (
                    c.name.as_str(),
                    c.column_type,
                    c.nullable,
                    c.filled_by_table,
                    c.read_only,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("id", Some(ColumnType::I64), false, true, false),
                ("flag", Some(ColumnType::Bool), false, false, false),
                ("n", Some(ColumnType::I64), true, true, false),
                ("name", Some(ColumnType::Text), true, false, false),
                ("score", Some(ColumnType::F64), true, false, false),
                ("data", Some(ColumnType::Bytes), true, false, false),
                ("anything", Some(ColumnType::Text), true, false, false),
                ("amount", None, true, false, false),
                ("twice", Some(ColumnType::I64), true, true, true),
            ]
        );
        assert_eq!(
            describe_table(&connection, &Ident::new("missing").unwrap()).unwrap(),
            None
        );
    }
}
