//! How each value is stored in SQLite and read back (see the crate docs for the table).

use rusqlite::types::{ToSql, ToSqlOutput, Value as SqlValue, ValueRef};
use sluice_sink::{ColumnType, Date, Decimal, Json, Timestamp, TimestampTz, Uuid, Value};

/// A value bound as a statement parameter, stored exactly as the sink stores it, without
/// copying text or blobs: for callers that run their own statements beside the sink (the
/// benchmarks measure the raw limit with the sink's own encoding).
#[derive(Debug)]
pub struct Bind<'a>(pub &'a Value);

impl ToSql for Bind<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self.0 {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Bool(value) => ToSqlOutput::Owned(SqlValue::Integer(i64::from(*value))),
            Value::I64(value) => ToSqlOutput::Owned(SqlValue::Integer(*value)),
            Value::F64(value) if stored_as_bits(*value) => {
                ToSqlOutput::Owned(SqlValue::Blob(value.to_bits().to_be_bytes().to_vec()))
            }
            Value::F64(value) => ToSqlOutput::Owned(SqlValue::Real(*value)),
            Value::Decimal(value) => {
                ToSqlOutput::Borrowed(ValueRef::Text(value.as_str().as_bytes()))
            }
            Value::Text(value) => ToSqlOutput::Borrowed(ValueRef::Text(value.as_bytes())),
            Value::Bytes(value) => ToSqlOutput::Borrowed(ValueRef::Blob(value)),
            Value::Json(value) => ToSqlOutput::Borrowed(ValueRef::Text(value.as_str().as_bytes())),
            Value::Uuid(value) => ToSqlOutput::Borrowed(ValueRef::Blob(&value.0)),
            Value::Date(value) => ToSqlOutput::Owned(SqlValue::Integer(i64::from(value.0))),
            Value::Timestamp(value) => ToSqlOutput::Owned(SqlValue::Integer(value.0)),
            Value::TimestampTz(value) => ToSqlOutput::Owned(SqlValue::Integer(value.0)),
        })
    }
}

/// Floats a REAL column cannot keep: SQLite stores NaN as NULL, and writes -0.0 as the integer
/// 0 (its on-disk form for integral reals), losing the sign.
fn stored_as_bits(value: f64) -> bool {
    value.is_nan() || (value == 0.0 && value.is_sign_negative())
}

/// Why a stored value does not decode as its column's type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored value has the wrong storage class or content for the column's type.
    #[error("column {column} ({column_type}) holds {found}, which is not a stored {column_type}")]
    Decode {
        /// The column.
        column: String,
        /// Its type in the schema.
        column_type: ColumnType,
        /// What was found.
        found: String,
    },
}

/// Decodes a stored value as `column_type`.
pub(crate) fn decode(
    column: &str,
    column_type: ColumnType,
    stored: ValueRef<'_>,
) -> Result<Value, ReadError> {
    let fail = |found: String| ReadError::Decode {
        column: column.to_string(),
        column_type,
        found,
    };
    let text = |bytes: &[u8]| {
        std::str::from_utf8(bytes)
            .map(str::to_string)
            .map_err(|_| fail("text that is not UTF-8".into()))
    };
    let value = match (column_type, stored) {
        (_, ValueRef::Null) => Value::Null,
        (ColumnType::Bool, ValueRef::Integer(0)) => Value::Bool(false),
        (ColumnType::Bool, ValueRef::Integer(1)) => Value::Bool(true),
        (ColumnType::I64, ValueRef::Integer(value)) => Value::I64(value),
        (ColumnType::F64, ValueRef::Real(value)) => Value::F64(value),
        // A REAL written into a NUMERIC column may come back as an exact integer.
        (ColumnType::F64, ValueRef::Integer(value)) => Value::F64(value as f64),
        (ColumnType::F64, ValueRef::Blob(bytes)) if bytes.len() == 8 => {
            let bits: [u8; 8] = bytes.try_into().expect("length checked");
            Value::F64(f64::from_bits(u64::from_be_bytes(bits)))
        }
        (ColumnType::Decimal, ValueRef::Text(bytes)) => {
            Value::Decimal(Decimal::parse(&text(bytes)?).map_err(|error| fail(error.to_string()))?)
        }
        (ColumnType::Text, ValueRef::Text(bytes)) => Value::Text(text(bytes)?),
        (ColumnType::Bytes, ValueRef::Blob(bytes)) => Value::Bytes(bytes.to_vec()),
        (ColumnType::Json, ValueRef::Text(bytes)) => {
            Value::Json(Json::parse(&text(bytes)?).map_err(|error| fail(error.to_string()))?)
        }
        (ColumnType::Uuid, ValueRef::Blob(bytes)) if bytes.len() == 16 => {
            Value::Uuid(Uuid(bytes.try_into().expect("length checked")))
        }
        (ColumnType::Date, ValueRef::Integer(days)) => Value::Date(Date(
            i32::try_from(days).map_err(|_| fail(format!("day number {days}")))?,
        )),
        (ColumnType::Timestamp, ValueRef::Integer(micros)) => Value::Timestamp(Timestamp(micros)),
        (ColumnType::TimestampTz, ValueRef::Integer(micros)) => {
            Value::TimestampTz(TimestampTz(micros))
        }
        (_, other) => return Err(fail(format!("a {:?} value", other.data_type()))),
    };
    Ok(value)
}
