//! Reading a sink's table back as typed rows (for tests, tools and verification).

use crate::error::classify;
use crate::table::DEAD_LETTER_COLUMNS;
use crate::values::{Raw, ReadError, decode};
use sluice_sink::{DeadLetter, Ident, Schema, TimestampTz, Value};
use tokio_postgres::Client;

/// Every row of `schema`'s table, decoded by the schema's column types: ordered by the key
/// when there is one, otherwise in physical order (`ctid`), which is insertion order for a
/// table that only ever received inserts.
pub async fn read_rows(client: &Client, schema: &Schema) -> Result<Vec<Vec<Value>>, ReadError> {
    let columns: Vec<String> = schema.columns().iter().map(|c| c.name.quoted()).collect();
    let order: Vec<String> = if schema.key().is_empty() {
        vec!["ctid".to_string()]
    } else {
        schema.key_columns().map(|c| c.name.quoted()).collect()
    };
    let sql = format!(
        "SELECT {} FROM {} ORDER BY {}",
        columns.join(", "),
        schema.table().quoted(),
        order.join(", ")
    );
    let rows = client
        .query(&sql, &[])
        .await
        .map_err(|e| ReadError::Database(classify(&e)))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut values = Vec::with_capacity(columns.len());
        for (index, column) in schema.columns().iter().enumerate() {
            let raw: Raw<'_> = row
                .try_get(index)
                .map_err(|e| ReadError::Database(classify(&e)))?;
            values.push(decode(
                column.name.as_str(),
                column.column_type,
                row.columns()[index].type_(),
                raw.0,
            )?);
        }
        out.push(values);
    }
    Ok(out)
}

/// The dead letters recorded in `table`, oldest first.
pub async fn read_dead_letters(
    client: &Client,
    table: &Ident,
) -> Result<Vec<DeadLetter>, ReadError> {
    let columns: Vec<String> = DEAD_LETTER_COLUMNS
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect();
    let sql = format!(
        "SELECT {} FROM {} ORDER BY \"id\"",
        columns.join(", "),
        table.quoted()
    );
    let rows = client
        .query(&sql, &[])
        .await
        .map_err(|e| ReadError::Database(classify(&e)))?;
    rows.iter()
        .map(|row| {
            Ok(DeadLetter {
                failed_at: TimestampTz(row.try_get(0)?),
                table: row.try_get(1)?,
                error_code: row.try_get(2)?,
                error: row.try_get(3)?,
                row: row.try_get(4)?,
            })
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()
        .map_err(|e| ReadError::Database(classify(&e)))
}
