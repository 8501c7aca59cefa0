//! Reading a sink's table back as typed rows (for tests, tools and verification).

use crate::table::DEAD_LETTER_COLUMNS;
use crate::values::{ReadError, decode};
use rusqlite::Connection;
use sluice_sink::{DeadLetter, Ident, Schema, TimestampTz, Value};

/// Every row of `schema`'s table, decoded by the schema's column types: ordered by the key
/// when there is one, by insertion (rowid) otherwise.
pub fn read_rows(connection: &Connection, schema: &Schema) -> Result<Vec<Vec<Value>>, ReadError> {
    let columns: Vec<String> = schema.columns().iter().map(|c| c.name.quoted()).collect();
    let order: Vec<String> = if schema.key().is_empty() {
        vec!["rowid".to_string()]
    } else {
        schema.key_columns().map(|c| c.name.quoted()).collect()
    };
    let mut statement = connection.prepare(&format!(
        "SELECT {} FROM {} ORDER BY {}",
        columns.join(", "),
        schema.table().quoted(),
        order.join(", ")
    ))?;
    let mut rows = statement.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let mut values = Vec::with_capacity(columns.len());
        for (index, column) in schema.columns().iter().enumerate() {
            values.push(decode(
                column.name.as_str(),
                column.column_type,
                row.get_ref(index)?,
            )?);
        }
        out.push(values);
    }
    Ok(out)
}

/// The dead letters recorded in `table`, oldest first.
pub fn read_dead_letters(
    connection: &Connection,
    table: &Ident,
) -> Result<Vec<DeadLetter>, ReadError> {
    let columns: Vec<String> = DEAD_LETTER_COLUMNS
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect();
    let mut statement = connection.prepare(&format!(
        "SELECT {} FROM {} ORDER BY \"id\"",
        columns.join(", "),
        table.quoted()
    ))?;
    let letters = statement
        .query_map([], |row| {
            Ok(DeadLetter {
                failed_at: TimestampTz(row.get(0)?),
                table: row.get(1)?,
                error_code: row.get(2)?,
                error: row.get(3)?,
                row: row.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(letters)
}
