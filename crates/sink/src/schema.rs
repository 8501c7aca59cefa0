//! The shape of the stream: the target table, its columns and key, and rows aligned to it.

use crate::ident::{Ident, IdentError};
use crate::value::{ColumnType, Value};
use std::hash::{Hash, Hasher};

/// The most columns a schema may have (PostgreSQL's limit per table).
pub const COLUMNS_MAX: usize = 1600;

/// Fixed bytes a row costs besides its values' heap payloads: the row header plus one `Value`
/// slot per column. Used by [`Row::size_bytes`].
const ROW_HEADER_BYTES: usize = std::mem::size_of::<Row>();

/// One column of the target table as the stream sees it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    /// The column name.
    pub name: Ident,
    /// Its type.
    #[serde(rename = "type")]
    pub column_type: ColumnType,
    /// Whether rows may carry NULL in it. Default: true.
    #[serde(default = "default_nullable")]
    pub nullable: bool,
}

fn default_nullable() -> bool {
    true
}

impl Column {
    /// A nullable column.
    pub fn new(name: &str, column_type: ColumnType) -> Result<Column, IdentError> {
        Ok(Column {
            name: Ident::new(name)?,
            column_type,
            nullable: true,
        })
    }

    /// The same column, NOT NULL.
    pub fn not_null(mut self) -> Column {
        self.nullable = false;
        self
    }
}

/// Why a schema is not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// A name is not a valid identifier.
    #[error("invalid name: {0}")]
    Ident(#[from] IdentError),
    /// No columns.
    #[error("the schema has no columns")]
    NoColumns,
    /// More than [`COLUMNS_MAX`] columns.
    #[error("the schema has {0} columns; the limit is {COLUMNS_MAX}")]
    TooManyColumns(usize),
    /// Two columns share a name (compared ignoring ASCII case, as SQLite does).
    #[error("column {0} appears twice (names are compared ignoring case)")]
    DuplicateColumn(String),
    /// A key column is not among the columns.
    #[error("key column {0} is not a column of the schema")]
    UnknownKeyColumn(String),
    /// A key column is listed twice.
    #[error("key column {0} is listed twice")]
    DuplicateKeyColumn(String),
    /// A key column is nullable.
    #[error("key column {0} must not be nullable")]
    NullableKeyColumn(String),
    /// A key column has a type that cannot be compared exactly.
    #[error(
        "key column {column} has type {column_type}, which cannot be a key (floats, decimals and JSON compare inexactly)"
    )]
    KeyType {
        /// The column.
        column: String,
        /// Its type.
        column_type: ColumnType,
    },
}

impl SchemaError {
    /// A stable code for the error.
    pub fn code(&self) -> &'static str {
        match self {
            SchemaError::Ident(error) => error.code(),
            SchemaError::NoColumns => "sink.schema.no_columns",
            SchemaError::TooManyColumns(_) => "sink.schema.too_many_columns",
            SchemaError::DuplicateColumn(_) => "sink.schema.duplicate_column",
            SchemaError::UnknownKeyColumn(_) => "sink.schema.unknown_key_column",
            SchemaError::DuplicateKeyColumn(_) => "sink.schema.duplicate_key_column",
            SchemaError::NullableKeyColumn(_) => "sink.schema.nullable_key_column",
            SchemaError::KeyType { .. } => "sink.schema.key_type",
        }
    }
}

/// The target table, its columns in row order, and its key (possibly empty for append-only
/// streams). Validated at construction.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Schema {
    table: Ident,
    columns: Vec<Column>,
    key: Vec<usize>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchema {
    table: Ident,
    columns: Vec<Column>,
    #[serde(default)]
    key: Vec<Ident>,
}

impl<'de> serde::Deserialize<'de> for Schema {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawSchema::deserialize(deserializer)?;
        let key: Vec<&str> = raw.key.iter().map(Ident::as_str).collect();
        Schema::from_parts(raw.table, raw.columns, &key).map_err(serde::de::Error::custom)
    }
}

impl Schema {
    /// Validates a schema: column names unique, key columns present, not nullable and of a
    /// type that compares exactly.
    pub fn new(table: &str, columns: Vec<Column>, key: &[&str]) -> Result<Schema, SchemaError> {
        Schema::from_parts(Ident::new(table)?, columns, key)
    }

    fn from_parts(table: Ident, columns: Vec<Column>, key: &[&str]) -> Result<Schema, SchemaError> {
        if columns.is_empty() {
            return Err(SchemaError::NoColumns);
        }
        if columns.len() > COLUMNS_MAX {
            return Err(SchemaError::TooManyColumns(columns.len()));
        }
        for (index, column) in columns.iter().enumerate() {
            if columns[..index].iter().any(|earlier| {
                earlier
                    .name
                    .as_str()
                    .eq_ignore_ascii_case(column.name.as_str())
            }) {
                return Err(SchemaError::DuplicateColumn(column.name.to_string()));
            }
        }
        let mut key_indices = Vec::with_capacity(key.len());
        for name in key {
            let index = columns
                .iter()
                .position(|column| column.name.as_str().eq_ignore_ascii_case(name))
                .ok_or_else(|| SchemaError::UnknownKeyColumn((*name).to_string()))?;
            if key_indices.contains(&index) {
                return Err(SchemaError::DuplicateKeyColumn((*name).to_string()));
            }
            let column = &columns[index];
            if column.nullable {
                return Err(SchemaError::NullableKeyColumn(column.name.to_string()));
            }
            if !column.column_type.can_be_key() {
                return Err(SchemaError::KeyType {
                    column: column.name.to_string(),
                    column_type: column.column_type,
                });
            }
            key_indices.push(index);
        }
        Ok(Schema {
            table,
            columns,
            key: key_indices,
        })
    }

    /// The target table.
    pub fn table(&self) -> &Ident {
        &self.table
    }

    /// The columns, in row order.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// Positions of the key columns in the row, in key order.
    pub fn key(&self) -> &[usize] {
        &self.key
    }

    /// The key columns.
    pub fn key_columns(&self) -> impl Iterator<Item = &Column> {
        self.key.iter().map(|&index| &self.columns[index])
    }

    /// Whether column `index` is part of the key.
    pub fn is_key(&self, index: usize) -> bool {
        self.key.contains(&index)
    }

    /// The same schema with another table name (used for derived tables in tests and tools).
    pub fn with_table(&self, table: Ident) -> Schema {
        Schema {
            table,
            ..self.clone()
        }
    }

    /// Checks `row` against the schema. Deletes need only their key values; the other values of
    /// a delete are ignored and may be anything.
    pub fn check_row(&self, row: &Row) -> Result<(), RowError> {
        if row.values.len() != self.columns.len() {
            return Err(RowError::Arity {
                expected: self.columns.len(),
                found: row.values.len(),
            });
        }
        for (index, (column, value)) in self.columns.iter().zip(&row.values).enumerate() {
            if row.op == Op::Delete && !self.is_key(index) {
                continue;
            }
            match value.column_type() {
                None if !column.nullable => {
                    return Err(RowError::NullInNotNull(column.name.to_string()));
                }
                Some(found) if found != column.column_type => {
                    return Err(RowError::TypeMismatch {
                        column: column.name.to_string(),
                        expected: column.column_type,
                        found,
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// What a row does to the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Append the row (mode `insert`); in keyed modes the same as [`Op::Upsert`].
    Insert,
    /// Insert the row, or replace every non-key column of the row with the same key.
    Upsert,
    /// Remove the row with this key (absent keys are not an error).
    Delete,
}

impl Op {
    /// The lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Upsert => "upsert",
            Op::Delete => "delete",
        }
    }
}

/// One change to the table: an operation and one value per schema column, in schema order.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The operation.
    pub op: Op,
    /// The values, aligned to [`Schema::columns`].
    pub values: Vec<Value>,
}

impl Row {
    /// An insert.
    pub fn insert(values: Vec<Value>) -> Row {
        Row {
            op: Op::Insert,
            values,
        }
    }

    /// An upsert.
    pub fn upsert(values: Vec<Value>) -> Row {
        Row {
            op: Op::Upsert,
            values,
        }
    }

    /// A delete; only the key positions matter.
    pub fn delete(values: Vec<Value>) -> Row {
        Row {
            op: Op::Delete,
            values,
        }
    }

    /// What holding the row in memory costs, in bytes: the row header, the allocation of its
    /// `Value` slots, and the heap payload of each value, as the allocator hands them out (see
    /// [`crate::allocated_bytes`]). This is what the buffer and batch byte limits count.
    pub fn size_bytes(&self) -> usize {
        ROW_HEADER_BYTES
            + crate::value::allocated_bytes(self.values.capacity() * std::mem::size_of::<Value>())
            + self.values.iter().map(Value::heap_bytes).sum::<usize>()
    }

    /// Exact comparison (see [`Value::same_as`]).
    pub fn same_as(&self, other: &Row) -> bool {
        self.op == other.op
            && self.values.len() == other.values.len()
            && self
                .values
                .iter()
                .zip(&other.values)
                .all(|(a, b)| a.same_as(b))
    }
}

/// Why a row does not fit the schema or the mode. Such a row is dead-lettered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RowError {
    /// Wrong number of values.
    #[error("the row has {found} values; the schema has {expected} columns")]
    Arity {
        /// Columns in the schema.
        expected: usize,
        /// Values in the row.
        found: usize,
    },
    /// NULL in a NOT NULL column (or in a key column).
    #[error("column {0} is not nullable but the row has NULL")]
    NullInNotNull(String),
    /// A value of the wrong type.
    #[error("column {column} has type {expected} but the row has a {found} value")]
    TypeMismatch {
        /// The column.
        column: String,
        /// Its type.
        expected: ColumnType,
        /// The value's type.
        found: ColumnType,
    },
    /// The operation is not allowed in the sink's mode.
    #[error("a {op} row is not allowed in mode {mode}")]
    OpNotAllowed {
        /// The row's operation.
        op: &'static str,
        /// The sink's mode.
        mode: &'static str,
    },
}

impl RowError {
    /// A stable code for the error.
    pub fn code(&self) -> &'static str {
        match self {
            RowError::Arity { .. } => "sink.row.arity",
            RowError::NullInNotNull(_) => "sink.row.null_in_not_null",
            RowError::TypeMismatch { .. } => "sink.row.type_mismatch",
            RowError::OpNotAllowed { .. } => "sink.row.op_not_allowed",
        }
    }
}

/// A value compared and hashed exactly (floats by bits), for key maps.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyValue<'a>(pub(crate) &'a Value);

impl PartialEq for KeyValue<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self.0, other.0) {
            (Value::F64(a), Value::F64(b)) => a.to_bits() == b.to_bits(),
            (a, b) => a == b,
        }
    }
}

impl Eq for KeyValue<'_> {}

impl Hash for KeyValue<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self.0).hash(state);
        match self.0 {
            Value::Null => {}
            Value::Bool(value) => value.hash(state),
            Value::I64(value) => value.hash(state),
            Value::F64(value) => value.to_bits().hash(state),
            Value::Decimal(value) => value.hash(state),
            Value::Text(value) => value.hash(state),
            Value::Bytes(value) => value.hash(state),
            Value::Json(value) => value.hash(state),
            Value::Uuid(value) => value.hash(state),
            Value::Date(value) => value.hash(state),
            Value::Timestamp(value) => value.hash(state),
            Value::TimestampTz(value) => value.hash(state),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns() -> Vec<Column> {
        vec![
            Column::new("id", ColumnType::I64).unwrap().not_null(),
            Column::new("name", ColumnType::Text).unwrap(),
        ]
    }

    #[test]
    fn validates_keys_and_names() {
        assert!(Schema::new("t", columns(), &["id"]).is_ok());
        assert_eq!(
            Schema::new("t", columns(), &["name"]).unwrap_err().code(),
            "sink.schema.nullable_key_column"
        );
        assert_eq!(
            Schema::new("t", columns(), &["nope"]).unwrap_err().code(),
            "sink.schema.unknown_key_column"
        );
        let mut twice = columns();
        twice.push(Column::new("ID", ColumnType::I64).unwrap());
        assert_eq!(
            Schema::new("t", twice, &[]).unwrap_err().code(),
            "sink.schema.duplicate_column"
        );
        let float_key = vec![Column::new("f", ColumnType::F64).unwrap().not_null()];
        assert_eq!(
            Schema::new("t", float_key, &["f"]).unwrap_err().code(),
            "sink.schema.key_type"
        );
        assert_eq!(
            Schema::new("a\"; DROP TABLE x; --", columns(), &[])
                .unwrap_err()
                .code(),
            "sink.ident.invalid_character"
        );
    }

    #[test]
    fn checks_rows() {
        let schema = Schema::new("t", columns(), &["id"]).unwrap();
        assert!(
            schema
                .check_row(&Row::upsert(vec![1.into(), Value::Null]))
                .is_ok()
        );
        assert_eq!(
            schema
                .check_row(&Row::upsert(vec![1.into()]))
                .unwrap_err()
                .code(),
            "sink.row.arity"
        );
        assert_eq!(
            schema
                .check_row(&Row::upsert(vec![Value::Null, "x".into()]))
                .unwrap_err()
                .code(),
            "sink.row.null_in_not_null"
        );
        assert_eq!(
            schema
                .check_row(&Row::upsert(vec!["1".into(), "x".into()]))
                .unwrap_err()
                .code(),
            "sink.row.type_mismatch"
        );
        // A delete only needs its key.
        assert!(
            schema
                .check_row(&Row::delete(vec![1.into(), 5.into()]))
                .is_ok()
        );
    }

    #[test]
    fn row_size_counts_payloads() {
        let small = Row::insert(vec![1.into(), "".into()]);
        let large = Row::insert(vec![1.into(), "x".repeat(1000).into()]);
        // 1,000 bytes plus the allocator's word, rounded up to 16.
        assert_eq!(large.size_bytes() - small.size_bytes(), 1008);
        assert!(small.size_bytes() >= 2 * std::mem::size_of::<Value>());
        let one_byte = Row::insert(vec![1.into(), "x".into()]);
        assert_eq!(
            one_byte.size_bytes() - small.size_bytes(),
            32,
            "the smallest chunk"
        );
    }

    #[test]
    fn schema_from_toml() {
        let schema: Schema = toml::from_str(
            r#"
            table = "orders"
            key = ["id"]
            columns = [
              { name = "id", type = "i64", nullable = false },
              { name = "at", type = "timestamp_tz" },
            ]
            "#,
        )
        .unwrap();
        assert_eq!(schema.key(), &[0]);
        assert_eq!(schema.columns()[1].column_type, ColumnType::TimestampTz);
        let error = toml::from_str::<Schema>(
            r#"table = "x;y"
            columns = [{ name = "id", type = "i64" }]"#,
        )
        .unwrap_err();
        assert!(error.to_string().contains("identifier"), "{error}");
    }
}
