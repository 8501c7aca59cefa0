//! Mapping: a record's fields to the table's columns.
//!
//! The columns come from the pipeline file's `[columns]` table when it has one:
//!
//! ```toml
//! [columns]
//! id = { type = "i64", nullable = false }       # field "id", cast to i64
//! name = { source = "full_name" }               # renamed; type text by default
//! city = { path = "address.city", default = "unknown" }  # nested JSON path, default
//! ```
//!
//! A declared column without a `type` takes the type of the existing table's column of that
//! name, else `text`.
//!
//! Without `[columns]`, when the target table exists, its columns are read (names, types,
//! NOT NULL) and each is filled from the record field of the same name, cast to the column's
//! type. Columns the table fills itself (a default, an identity, SQLite's rowid) are written
//! only when the first record (CSV: the header) has their field, and left to the table
//! otherwise; generated columns are never written; a column of a type the sink does not write
//! (PostgreSQL `real`, arrays, ...; SQLite NUMERIC affinity such as `DECIMAL` or `DATE`) is
//! left out when it is nullable or filled by the table, and stops the run otherwise (declare
//! it in `[columns]`).
//!
//! Without `[columns]` and without a table they are inferred. NDJSON: from the first record
//! that parses, each field by its JSON type (integer `i64`, other numbers `f64`, `bool`,
//! string and null `text`, object and array `json`). CSV: each header field from its values in
//! the first `infer_rows_max` records (default 1,000; 0 makes every column `text`), ignoring
//! empty fields and null markers: `i64` when every value is an integer (without leading zeros,
//! which codes such as ZIP codes have), `f64` when every value is a number, `bool` for
//! `true/false/t/f/yes/no` in any case, `date` for `YYYY-MM-DD`, `timestamp_tz` for RFC 3339
//! times with a zone, `timestamp` for times without one, else (and when no value was seen)
//! `text`. A later record whose value does not cast goes to the dead letters like any other;
//! `--dry-run` shows the inferred table before anything is written.
//!
//! Fields without a column are ignored by default (`unmapped = "ignore"`). With `unmapped = {
//! column = "extra" }` (or `--unmapped-into extra`) they go, as one JSON object, into that
//! column (type `json`: `jsonb` when the sink creates it on PostgreSQL, TEXT on SQLite): an
//! NDJSON record's top-level fields that no column reads (a nested `path` claims its whole
//! top-level field), a CSV record's header fields that no column reads (as strings). A record
//! without such fields has NULL there.
//!
//! A field missing from a record, or null, takes the column's default, else NULL; a column that
//! is not nullable (and every key column) then refuses the record. In CSV an empty field is the
//! empty string in a `text` column and NULL in the others. Null markers (`null = ["NA", ""]`
//! in the pipeline, `--null NA`; a column's own `null = [...]` replaces the pipeline's list for
//! it) are field texts read as NULL, like a missing field: CSV fields and NDJSON string values
//! equal to one of them. `""` among them makes the empty field NULL in `text` columns too.
//!
//! Casts (JSON value or CSV text to the column type): `i64` from integers and integer text;
//! `f64` from numbers and number text (`NaN`, `inf`); `bool` from booleans and
//! `true/false/t/f/1/0/yes/no`; `decimal` from numbers and decimal text; `text` from strings,
//! other JSON values as their JSON text; `json` from any JSON value (CSV: parsed text); `bytes`
//! from `\x`-prefixed hex text, else the text's UTF-8 bytes; `uuid`, `date`, `timestamp`,
//! `timestamp_tz` from their ISO text. A value that does not cast refuses its record, which
//! goes to the dead letters with its position and the reason.

use super::format::Payload;
use crate::error::UsageError;
use serde_json::Value as JsonValue;
use serde_json::value::RawValue;
use sluice_sink::{
    Column, ColumnType, Date, Decimal, Ident, Json, Op, Row, Schema, Timestamp, TimestampTz, Uuid,
    Value,
};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

/// One `[columns]` entry.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnConfig {
    /// The column type. Default: `text`.
    #[serde(rename = "type")]
    column_type: Option<ColumnType>,
    /// The record field it comes from. Default: the column's name.
    source: Option<String>,
    /// A dotted path into nested JSON objects (`a.b.c`), instead of `source`.
    path: Option<String>,
    /// The value when the field is missing or null.
    default: Option<toml::Value>,
    /// Whether NULL is allowed. Default: true (false for key columns).
    nullable: Option<bool>,
    /// Field texts read as NULL in this column, replacing the pipeline's `null` list.
    null: Option<Vec<String>>,
}

/// Why a record was refused: a stable code and a reason.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) code: &'static str,
    pub(crate) reason: String,
}

impl Refusal {
    fn new(code: &'static str, reason: impl Into<String>) -> Refusal {
        Refusal {
            code,
            reason: reason.into(),
        }
    }
}

struct ColumnMap {
    name: Ident,
    column_type: ColumnType,
    nullable: bool,
    /// The field, then nested keys; empty for the unmapped-fields column.
    path: Vec<String>,
    default: Option<Value>,
    /// Field texts read as NULL: the column's own list, else the pipeline's.
    nulls: Option<Vec<String>>,
}

impl ColumnMap {
    fn is_null_marker(&self, text: &str) -> bool {
        self.nulls
            .as_ref()
            .is_some_and(|nulls| nulls.iter().any(|null| null == text))
    }
}

/// A column of the existing target table, as the backend describes it.
pub(crate) use sluice_sink::DescribedColumn as TableColumn;

/// Turns payloads into rows of the schema.
pub(crate) struct Mapper {
    columns: Vec<ColumnMap>,
    op: Op,
    /// CSV: each column's field index in the header.
    csv_index: Vec<Option<usize>>,
    csv_fields: usize,
    delimiter: u8,
    /// With an unmapped-fields column (always the last column): the top-level fields the
    /// other columns read.
    mapped_fields: Option<HashSet<String>>,
    /// CSV: the header fields no column reads, with their index.
    csv_unmapped: Vec<(usize, String)>,
}

impl Mapper {
    /// From `[columns]`.
    pub(crate) fn declared(
        columns: &BTreeMap<String, ColumnConfig>,
        key: &[String],
        op: Op,
        delimiter: u8,
        table: Option<&[TableColumn]>,
    ) -> Result<Mapper, UsageError> {
        let mut maps = Vec::with_capacity(columns.len());
        for (name, config) in columns {
            let key_name = format!("columns.{name}");
            let ident =
                Ident::new(name).map_err(|error| UsageError::new(&key_name, error.to_string()))?;
            let from_table = table
                .and_then(|table| table.iter().find(|column| column.name == *name))
                .and_then(|column| column.column_type);
            let column_type = config
                .column_type
                .or(from_table)
                .unwrap_or(ColumnType::Text);
            let path = match (&config.source, &config.path) {
                (Some(_), Some(_)) => {
                    return Err(UsageError::new(
                        &key_name,
                        "set either source or path, not both",
                    ));
                }
                (Some(source), None) => vec![source.clone()],
                (None, Some(path)) => {
                    let parts: Vec<String> = path.split('.').map(str::to_string).collect();
                    if parts.iter().any(String::is_empty) {
                        return Err(UsageError::new(
                            &format!("{key_name}.path"),
                            format!("{path:?} has an empty segment"),
                        ));
                    }
                    parts
                }
                (None, None) => vec![name.clone()],
            };
            let default = match &config.default {
                None => None,
                Some(default) => {
                    let json = serde_json::to_value(default).map_err(|error| {
                        UsageError::new(&format!("{key_name}.default"), error.to_string())
                    })?;
                    Some(convert_json(&json, column_type).map_err(|refusal| {
                        UsageError::new(&format!("{key_name}.default"), refusal.reason)
                    })?)
                }
            };
            let is_key = key.iter().any(|key| key == name);
            maps.push(ColumnMap {
                name: ident,
                column_type,
                nullable: config.nullable.unwrap_or(!is_key) && !is_key,
                path,
                default,
                nulls: config.null.clone(),
            });
        }
        Ok(Mapper::new(maps, op, delimiter))
    }

    /// Inferred from the first records (see the module docs): `samples` are the records read
    /// ahead (NDJSON: the first one that parses as an object is used; CSV: all of them), and
    /// `nulls` the pipeline's null markers.
    pub(crate) fn inferred(
        samples: &[&Payload],
        header: &[String],
        nulls: &[String],
        key: &[String],
        op: Op,
        delimiter: u8,
    ) -> Result<Mapper, UsageError> {
        let fields: Vec<(String, ColumnType)> = if samples
            .iter()
            .all(|payload| matches!(payload, Payload::Csv(_)))
        {
            let records: Vec<&csv::ByteRecord> = samples
                .iter()
                .filter_map(|payload| match payload {
                    Payload::Csv(record) => Some(record),
                    _ => None,
                })
                .collect();
            header
                .iter()
                .cloned()
                .zip(infer_csv_types(&records, header.len(), nulls))
                .collect()
        } else {
            let object = samples
                .iter()
                .find_map(|payload| match payload {
                    Payload::Json(line) => match serde_json::from_slice::<JsonValue>(line) {
                        Ok(JsonValue::Object(object)) => Some(object),
                        _ => None,
                    },
                    _ => None,
                })
                .expect("inferred only with a record that parses as an object");
            object
                .iter()
                .map(|(name, value)| (name.clone(), infer_type(value)))
                .collect()
        };
        let mut maps = Vec::with_capacity(fields.len());
        for (name, column_type) in fields {
            let ident = Ident::new(&name).map_err(|error| {
                UsageError::new(
                    "columns",
                    format!(
                        "the first record's field {name:?} cannot be a column name ({error}); declare the columns in a [columns] table"
                    ),
                )
            })?;
            let is_key = key.contains(&name);
            maps.push(ColumnMap {
                name: ident,
                column_type,
                nullable: !is_key,
                path: vec![name],
                default: None,
                nulls: None,
            });
        }
        Ok(Mapper::new(maps, op, delimiter))
    }

    /// From the existing table's columns (see the module docs). `first` is the first record
    /// that parses (NDJSON) and `header` the CSV header: they decide whether columns the table
    /// fills itself are written. `unmapped` names the unmapped-fields column, which is not
    /// filled from a field. Returns notes on the columns left out.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_table(
        table: &[TableColumn],
        first: Option<&Payload>,
        header: &[String],
        key: &[String],
        op: Op,
        delimiter: u8,
        unmapped: Option<&str>,
    ) -> Result<(Mapper, Vec<String>), UsageError> {
        let first_fields: HashSet<String> = match first {
            Some(Payload::Json(line)) => match serde_json::from_slice::<JsonValue>(line) {
                Ok(JsonValue::Object(object)) => object.into_iter().map(|(name, _)| name).collect(),
                _ => HashSet::new(),
            },
            Some(Payload::Csv(_) | Payload::Oversized { .. }) | None => {
                header.iter().cloned().collect()
            }
        };
        let mut maps = Vec::with_capacity(table.len());
        let mut notes = Vec::new();
        for column in table {
            if Some(column.name.as_str()) == unmapped {
                continue;
            }
            let is_key = key.contains(&column.name);
            if column.read_only && !is_key {
                notes.push(format!("{} (generated)", column.name));
                continue;
            }
            let Some(column_type) = column.column_type else {
                if (column.nullable || column.filled_by_table) && !is_key {
                    notes.push(format!(
                        "{} (type {} is not one ingest writes)",
                        column.name, column.type_name
                    ));
                    continue;
                }
                return Err(UsageError::new(
                    "columns",
                    format!(
                        "table column {} has type {}, which ingest cannot fill from records, and is NOT NULL: declare the columns in a [columns] table",
                        column.name, column.type_name
                    ),
                ));
            };
            if column.filled_by_table && !is_key && !first_fields.contains(&column.name) {
                notes.push(format!(
                    "{} (filled by the table; the first record has no such field)",
                    column.name
                ));
                continue;
            }
            let ident = Ident::new(&column.name).map_err(|error| {
                UsageError::new(
                    "columns",
                    format!(
                        "table column {:?} cannot be written by name ({error}); declare the columns in a [columns] table",
                        column.name
                    ),
                )
            })?;
            maps.push(ColumnMap {
                name: ident,
                column_type,
                nullable: column.nullable && !is_key,
                path: vec![column.name.clone()],
                default: None,
                nulls: None,
            });
        }
        if maps.is_empty() {
            return Err(UsageError::new(
                "columns",
                "the table has no column ingest can fill from records: declare them in a [columns] table",
            ));
        }
        Ok((Mapper::new(maps, op, delimiter), notes))
    }

    fn new(columns: Vec<ColumnMap>, op: Op, delimiter: u8) -> Mapper {
        Mapper {
            csv_index: vec![None; columns.len()],
            columns,
            op,
            csv_fields: 0,
            delimiter,
            mapped_fields: None,
            csv_unmapped: Vec::new(),
        }
    }

    /// The pipeline's null markers, for every column without its own list.
    pub(crate) fn set_nulls(&mut self, nulls: &[String]) {
        for column in &mut self.columns {
            if column.nulls.is_none() && !nulls.is_empty() {
                column.nulls = Some(nulls.to_vec());
            }
        }
    }

    /// Adds the unmapped-fields column `name` (type `json`, nullable) after the others.
    pub(crate) fn add_unmapped(&mut self, name: &str) -> Result<(), UsageError> {
        let ident = Ident::new(name)
            .map_err(|error| UsageError::new("unmapped.column", error.to_string()))?;
        if self.columns.iter().any(|column| column.name == ident) {
            return Err(UsageError::new(
                "unmapped.column",
                format!(
                    "{name:?} is also a mapped column (a declared column, a field of the first record, or a column of the table filled from a field)"
                ),
            ));
        }
        self.mapped_fields = Some(
            self.columns
                .iter()
                .map(|column| column.path[0].clone())
                .collect(),
        );
        self.columns.push(ColumnMap {
            name: ident,
            column_type: ColumnType::Json,
            nullable: true,
            path: Vec::new(),
            default: None,
            nulls: None,
        });
        self.csv_index.push(None);
        Ok(())
    }

    /// The columns and their types, for a note.
    pub(crate) fn describe(&self) -> String {
        self.columns
            .iter()
            .map(|column| format!("{} {}", column.name, column.column_type))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The schema of the target table.
    pub(crate) fn schema(&self, table: &str, key: &[String]) -> Result<Schema, UsageError> {
        for name in key {
            if !self
                .columns
                .iter()
                .any(|column| column.name.as_str() == name)
            {
                return Err(UsageError::new(
                    "key",
                    format!("{name:?} is not one of the columns"),
                ));
            }
        }
        let columns = self
            .columns
            .iter()
            .map(|map| Column {
                name: map.name.clone(),
                column_type: map.column_type,
                nullable: map.nullable,
            })
            .collect();
        let key: Vec<&str> = key.iter().map(String::as_str).collect();
        Schema::new(table, columns, &key).map_err(|error| {
            let config_key = match error {
                sluice_sink::SchemaError::Ident(_) => "table",
                sluice_sink::SchemaError::UnknownKeyColumn(_)
                | sluice_sink::SchemaError::DuplicateKeyColumn(_)
                | sluice_sink::SchemaError::NullableKeyColumn(_)
                | sluice_sink::SchemaError::KeyType { .. } => "key",
                _ => "columns",
            };
            UsageError::new(config_key, error.to_string())
        })
    }

    /// Binds the columns to a CSV header. Columns whose field is not in the header are NULL
    /// (or their default) in every record; nested paths apply to JSON only.
    pub(crate) fn set_header(&mut self, header: &[String]) -> Result<(), UsageError> {
        self.csv_fields = header.len();
        for (index, column) in self.columns.iter().enumerate() {
            if column.path.len() > 1 {
                return Err(UsageError::new(
                    &format!("columns.{}.path", column.name),
                    "nested paths apply to NDJSON records only",
                ));
            }
            if let Some(field) = column.path.first() {
                self.csv_index[index] = header.iter().position(|name| name == field);
            }
        }
        if self.mapped_fields.is_some() {
            self.csv_unmapped = header
                .iter()
                .enumerate()
                .filter(|(index, _)| !self.csv_index.contains(&Some(*index)))
                .map(|(index, name)| (index, name.clone()))
                .collect();
        }
        Ok(())
    }

    /// The row of a record, or why it is refused.
    pub(crate) fn map(&self, payload: &Payload) -> Result<Row, Refusal> {
        let mut values = Vec::with_capacity(self.columns.len());
        match payload {
            Payload::Oversized { bytes, .. } => {
                return Err(Refusal::new(
                    "ingest.record_too_large",
                    format!(
                        "the line has {bytes} bytes; lines of at most {} bytes are read",
                        super::format::LINE_BYTES_MAX
                    ),
                ));
            }
            Payload::Json(line) => {
                let text = std::str::from_utf8(line).map_err(|error| {
                    Refusal::new(
                        "ingest.utf8",
                        format!("the line is not valid UTF-8: {error}"),
                    )
                })?;
                let fields = match serde_json::from_str::<Fields<'_>>(text) {
                    Ok(fields) => fields,
                    // Any object parses (its values are kept raw): a data error is a line
                    // that is valid JSON of another kind.
                    Err(error) if error.classify() == serde_json::error::Category::Data => {
                        return Err(Refusal::new(
                            "ingest.json.not_object",
                            format!("the line is a JSON {}, not an object", raw_kind(text)),
                        ));
                    }
                    Err(error) => {
                        return Err(Refusal::new(
                            "ingest.json.parse",
                            format!("invalid JSON: {error}"),
                        ));
                    }
                };
                for column in &self.columns {
                    let Some((field, nested)) = column.path.split_first() else {
                        // The unmapped-fields column, always the last one.
                        let mapped = self.mapped_fields.as_ref().expect("set with the column");
                        let mut rest = serde_json::Map::new();
                        for (name, raw) in &fields.0 {
                            if !mapped.contains(name.0.as_ref()) {
                                rest.insert(name.0.to_string(), parse_raw(raw)?);
                            }
                        }
                        values.push(if rest.is_empty() {
                            Value::Null
                        } else {
                            Value::Json(Json::from_value(&JsonValue::Object(rest)))
                        });
                        continue;
                    };
                    let converted = match fields.get(field) {
                        None => Ok(None),
                        Some(raw)
                            if nested.is_empty()
                                && column.nulls.is_some()
                                && raw.get().starts_with('"')
                                && serde_json::from_str::<Name<'_>>(raw.get())
                                    .is_ok_and(|name| column.is_null_marker(&name.0)) =>
                        {
                            Ok(None)
                        }
                        Some(raw) if nested.is_empty() => convert_raw(raw, column.column_type),
                        Some(raw) => parse_raw(raw).and_then(|value| {
                            let mut found = Some(&value);
                            for part in nested {
                                found = found.and_then(|value| value.get(part));
                            }
                            match found {
                                None | Some(JsonValue::Null) => Ok(None),
                                Some(value) => convert_json(value, column.column_type).map(Some),
                            }
                        }),
                    };
                    let value = converted.map_err(|refusal| Refusal {
                        code: refusal.code,
                        reason: format!("column {}: {}", column.name, refusal.reason),
                    })?;
                    values.push(self.finish(column, value)?);
                }
            }
            Payload::Csv(record) => {
                if record.len() != self.csv_fields {
                    return Err(Refusal::new(
                        "ingest.csv.field_count",
                        format!(
                            "the record has {} fields; the header has {}",
                            record.len(),
                            self.csv_fields
                        ),
                    ));
                }
                for (column, index) in self.columns.iter().zip(&self.csv_index) {
                    let value = match index.and_then(|index| record.get(index)) {
                        None => None,
                        Some(bytes) => {
                            let text = std::str::from_utf8(bytes).map_err(|error| {
                                Refusal::new(
                                    "ingest.utf8",
                                    format!("column {}: not valid UTF-8: {error}", column.name),
                                )
                            })?;
                            if column.is_null_marker(text) {
                                values.push(self.finish(column, None)?);
                                continue;
                            }
                            convert_text(text, column.column_type).map_err(|refusal| Refusal {
                                code: refusal.code,
                                reason: format!("column {}: {}", column.name, refusal.reason),
                            })?
                        }
                    };
                    values.push(self.finish(column, value)?);
                }
                if self.mapped_fields.is_some() {
                    let mut rest = serde_json::Map::new();
                    for (index, name) in &self.csv_unmapped {
                        let bytes = record.get(*index).unwrap_or_default();
                        let text = std::str::from_utf8(bytes).map_err(|error| {
                            Refusal::new(
                                "ingest.utf8",
                                format!("field {name}: not valid UTF-8: {error}"),
                            )
                        })?;
                        rest.insert(name.clone(), JsonValue::String(text.to_string()));
                    }
                    // The unmapped-fields column is the last one; its placeholder is replaced.
                    let last = values.last_mut().expect("the unmapped-fields column");
                    *last = if rest.is_empty() {
                        Value::Null
                    } else {
                        Value::Json(Json::from_value(&JsonValue::Object(rest)))
                    };
                }
            }
        }
        Ok(Row {
            op: self.op,
            values,
        })
    }

    fn finish(&self, column: &ColumnMap, value: Option<Value>) -> Result<Value, Refusal> {
        match value.or_else(|| column.default.clone()) {
            Some(value) => Ok(value),
            None if column.nullable => Ok(Value::Null),
            None => Err(Refusal::new(
                "ingest.missing",
                format!(
                    "column {} is not nullable but the record has no value for it",
                    column.name
                ),
            )),
        }
    }

    /// The record's text for a dead letter: the line, or the CSV record re-encoded.
    pub(crate) fn raw(&self, payload: &Payload) -> String {
        match payload {
            Payload::Json(line) => String::from_utf8_lossy(line).into_owned(),
            Payload::Oversized { prefix, bytes } => {
                format!("{}... ({bytes} bytes)", String::from_utf8_lossy(prefix))
            }
            Payload::Csv(record) => {
                let mut writer = csv::WriterBuilder::new()
                    .delimiter(self.delimiter)
                    .flexible(true)
                    .terminator(csv::Terminator::Any(b'\n'))
                    .from_writer(Vec::new());
                let encoded = writer
                    .write_byte_record(record)
                    .ok()
                    .and_then(|()| writer.into_inner().ok());
                match encoded {
                    Some(mut bytes) => {
                        if bytes.last() == Some(&b'\n') {
                            bytes.pop();
                        }
                        String::from_utf8_lossy(&bytes).into_owned()
                    }
                    None => format!("{record:?}"),
                }
            }
        }
    }
}

/// Whether a payload can seed inference: a JSON object, or any CSV record.
pub(crate) fn can_infer_from(payload: &Payload) -> bool {
    match payload {
        Payload::Csv(_) => true,
        Payload::Oversized { .. } => false,
        Payload::Json(line) => matches!(
            serde_json::from_slice::<JsonValue>(line),
            Ok(JsonValue::Object(_))
        ),
    }
}

/// A field name, borrowed from the line when it has no escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Name<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Name<'de>;
            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(text)))
            }
            fn visit_str<E>(self, text: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(text.to_string())))
            }
            fn visit_string<E>(self, text: String) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// An object's top-level fields in order, their values unparsed: mapping parses only what
/// the columns read (a DOM of every line cost more than half of the parsing time).
struct Fields<'a>(Vec<(Name<'a>, &'a RawValue)>);

impl<'a> Fields<'a> {
    /// The field's value; the last one when the name repeats (as a JSON object map keeps it).
    fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0
            .iter()
            .rev()
            .find(|(field, _)| field.0 == name)
            .map(|(_, raw)| *raw)
    }
}

impl<'de> serde::Deserialize<'de> for Fields<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Fields<'de>;
            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Fields<'de>, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(entry) = map.next_entry::<Name<'de>, &'de RawValue>()? {
                    fields.push(entry);
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// The kind of a valid JSON text, from its first character.
fn raw_kind(text: &str) -> &'static str {
    match text.trim_start().as_bytes().first() {
        Some(b'[') => "array",
        Some(b'"') => "string",
        Some(b't' | b'f') => "boolean",
        Some(b'n') => "null",
        _ => "number",
    }
}

/// A raw value, parsed. The line's syntax was checked, but a number out of range only fails
/// here, as it failed the line's parse before mapping read raw values.
fn parse_raw(raw: &RawValue) -> Result<JsonValue, Refusal> {
    serde_json::from_str(raw.get())
        .map_err(|error| Refusal::new("ingest.json.parse", format!("invalid JSON: {error}")))
}

/// A raw value as a column type: strings, integers, floats and booleans straight from the
/// text, everything else through [`convert_json`]. `None`: JSON null.
fn convert_raw(raw: &RawValue, column_type: ColumnType) -> Result<Option<Value>, Refusal> {
    let text = raw.get();
    match (text.as_bytes().first(), column_type) {
        (Some(b'n'), _) => return Ok(None),
        (Some(b'"'), column_type) if column_type != ColumnType::Json => {
            if let Ok(name) = serde_json::from_str::<Name<'_>>(text) {
                return convert_text_exact(&name.0, column_type).map(Some);
            }
        }
        // serde_json reads `-0` as a float, which an i64 column refuses.
        (Some(b'-' | b'0'..=b'9'), ColumnType::I64) if text != "-0" => {
            if let Ok(number) = text.parse::<i64>() {
                return Ok(Some(Value::I64(number)));
            }
        }
        (Some(b'-' | b'0'..=b'9'), ColumnType::F64) => {
            if let Ok(number) = text.parse::<f64>()
                && number.is_finite()
            {
                return Ok(Some(Value::F64(number)));
            }
        }
        (Some(b't'), ColumnType::Bool) => return Ok(Some(Value::Bool(true))),
        (Some(b'f'), ColumnType::Bool) => return Ok(Some(Value::Bool(false))),
        _ => {}
    }
    let value = parse_raw(raw)?;
    if value.is_null() {
        return Ok(None);
    }
    convert_json(&value, column_type).map(Some)
}

fn infer_type(value: &JsonValue) -> ColumnType {
    match value {
        JsonValue::Bool(_) => ColumnType::Bool,
        JsonValue::Number(number) if number.is_i64() => ColumnType::I64,
        JsonValue::Number(_) => ColumnType::F64,
        JsonValue::Null | JsonValue::String(_) => ColumnType::Text,
        JsonValue::Array(_) | JsonValue::Object(_) => ColumnType::Json,
    }
}

/// The column types that CSV inference chooses from, narrowest first (see the module docs).
const INFERRED: [ColumnType; 6] = [
    ColumnType::I64,
    ColumnType::F64,
    ColumnType::Bool,
    ColumnType::Date,
    ColumnType::TimestampTz,
    ColumnType::Timestamp,
];

/// The types of [`INFERRED`] that `text` reads as, one bit each.
fn text_types(text: &str) -> u8 {
    let text = text.trim();
    let mut types = 0u8;
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    let leading_zero = digits.len() > 1 && digits.starts_with('0');
    if !leading_zero && text.parse::<i64>().is_ok() {
        types |= 1 << 0;
    }
    // A number with at least one digit ("inf" or "nan" alone is a word, not a measurement).
    if !leading_zero_integer_part(digits)
        && text.bytes().any(|b| b.is_ascii_digit())
        && text.parse::<f64>().is_ok()
    {
        types |= 1 << 1;
    }
    if matches!(
        text.to_ascii_lowercase().as_str(),
        "true" | "false" | "t" | "f" | "yes" | "no"
    ) {
        types |= 1 << 2;
    }
    if text.len() == 10 && Date::parse(text).is_ok() {
        types |= 1 << 3;
    }
    if TimestampTz::parse(text).is_ok() {
        types |= 1 << 4;
    }
    if Timestamp::parse(text).is_ok() {
        types |= 1 << 5;
    }
    types
}

/// `0123` or `00.5`: digits after a leading zero before any point (a code, not a number).
fn leading_zero_integer_part(digits: &str) -> bool {
    let integer = digits.split(['.', 'e', 'E']).next().unwrap_or_default();
    integer.len() > 1 && integer.starts_with('0')
}

/// Each of `width` CSV columns' type from its values in `records` (see the module docs).
fn infer_csv_types(
    records: &[&csv::ByteRecord],
    width: usize,
    nulls: &[String],
) -> Vec<ColumnType> {
    (0..width)
        .map(|index| {
            let mut possible = u8::MAX;
            let mut seen = false;
            for record in records {
                let Some(text) = record
                    .get(index)
                    .and_then(|bytes| std::str::from_utf8(bytes).ok())
                else {
                    continue;
                };
                if text.is_empty() || nulls.iter().any(|null| null == text) {
                    continue;
                }
                seen = true;
                possible &= text_types(text);
                if possible == 0 {
                    break;
                }
            }
            INFERRED
                .iter()
                .enumerate()
                .find(|(bit, _)| seen && possible & (1 << bit) != 0)
                .map_or(ColumnType::Text, |(_, column_type)| *column_type)
        })
        .collect()
}

fn json_kind(value: &JsonValue) -> &'static str {
    match value {
        JsonValue::Null => "null",
        JsonValue::Bool(_) => "boolean",
        JsonValue::Number(_) => "number",
        JsonValue::String(_) => "string",
        JsonValue::Array(_) => "array",
        JsonValue::Object(_) => "object",
    }
}

fn cast_error(found: &str, column_type: ColumnType, detail: impl std::fmt::Display) -> Refusal {
    Refusal::new(
        "ingest.cast",
        format!("cannot cast {found} to {column_type}: {detail}"),
    )
}

/// A JSON value as a column type.
fn convert_json(value: &JsonValue, column_type: ColumnType) -> Result<Value, Refusal> {
    match (value, column_type) {
        (JsonValue::String(text), _) => convert_text_exact(text, column_type),
        (_, ColumnType::Json) => Ok(Value::Json(Json::from_value(value))),
        (_, ColumnType::Text) => Ok(Value::Text(value.to_string())),
        (JsonValue::Bool(flag), ColumnType::Bool) => Ok(Value::Bool(*flag)),
        (JsonValue::Number(number), ColumnType::I64) => number
            .as_i64()
            .map(Value::I64)
            .ok_or_else(|| cast_error(&number.to_string(), column_type, "not a 64-bit integer")),
        (JsonValue::Number(number), ColumnType::F64) => number
            .as_f64()
            .map(Value::F64)
            .ok_or_else(|| cast_error(&number.to_string(), column_type, "out of range")),
        (JsonValue::Number(number), ColumnType::Decimal) => Decimal::parse(&number.to_string())
            .map(Value::Decimal)
            .map_err(|error| cast_error(&number.to_string(), column_type, error)),
        (other, _) => Err(cast_error(
            &format!("a JSON {}", json_kind(other)),
            column_type,
            "no such cast",
        )),
    }
}

/// CSV text as a column type: the empty field is NULL except in text columns.
fn convert_text(text: &str, column_type: ColumnType) -> Result<Option<Value>, Refusal> {
    if text.is_empty() && column_type != ColumnType::Text {
        return Ok(None);
    }
    if column_type == ColumnType::Json {
        return Json::parse(text)
            .map(|json| Some(Value::Json(json)))
            .map_err(|error| cast_error("the text", column_type, error));
    }
    convert_text_exact(text, column_type).map(Some)
}

/// A string as a column type (a JSON string is a JSON document for json columns).
fn convert_text_exact(text: &str, column_type: ColumnType) -> Result<Value, Refusal> {
    let shown = || {
        let short: String = text.chars().take(40).collect();
        format!("{short:?}")
    };
    Ok(match column_type {
        ColumnType::Text => Value::Text(text.to_string()),
        ColumnType::Json => Value::Json(Json::from_value(&JsonValue::String(text.to_string()))),
        ColumnType::I64 => Value::I64(
            text.trim()
                .parse()
                .map_err(|error| cast_error(&shown(), column_type, error))?,
        ),
        ColumnType::F64 => Value::F64(
            text.trim()
                .parse()
                .map_err(|error| cast_error(&shown(), column_type, error))?,
        ),
        ColumnType::Bool => match text.trim().to_ascii_lowercase().as_str() {
            "true" | "t" | "1" | "yes" | "y" => Value::Bool(true),
            "false" | "f" | "0" | "no" | "n" => Value::Bool(false),
            _ => return Err(cast_error(&shown(), column_type, "not a boolean")),
        },
        ColumnType::Decimal => Value::Decimal(
            Decimal::parse(text.trim())
                .map_err(|error| cast_error(&shown(), column_type, error))?,
        ),
        ColumnType::Bytes => match text.strip_prefix("\\x") {
            Some(hex) => Value::Bytes(
                decode_hex(hex).ok_or_else(|| cast_error(&shown(), column_type, "invalid hex"))?,
            ),
            None => Value::Bytes(text.as_bytes().to_vec()),
        },
        ColumnType::Uuid => Value::Uuid(
            Uuid::parse(text.trim()).map_err(|error| cast_error(&shown(), column_type, error))?,
        ),
        ColumnType::Date => Value::Date(
            Date::parse(text.trim()).map_err(|error| cast_error(&shown(), column_type, error))?,
        ),
        ColumnType::Timestamp => Value::Timestamp(
            Timestamp::parse(text.trim())
                .map_err(|error| cast_error(&shown(), column_type, error))?,
        ),
        ColumnType::TimestampTz => Value::TimestampTz(
            TimestampTz::parse(text.trim())
                .map_err(|error| cast_error(&shown(), column_type, error))?,
        ),
    })
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(hex.get(index..index + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_conversion_agrees_with_the_parsed_value() {
        let texts = [
            "null",
            "true",
            "false",
            "0",
            "-0",
            "7",
            "-12",
            "9223372036854775807",
            "9223372036854775808",
            "7.0",
            "1.5",
            "-2.25e3",
            "\"\"",
            "\"12\"",
            "\" 3.5 \"",
            "\"yes\"",
            "\"a\\\"b\\u00e9\"",
            "\"2026-01-02T03:04:05Z\"",
            "\"2026-01-02\"",
            "[1, 2]",
            "{\"a\": {\"b\": null}}",
        ];
        let types = ColumnType::ALL;
        for text in texts {
            let raw: Box<RawValue> = serde_json::from_str(text).unwrap();
            let value: JsonValue = serde_json::from_str(text).unwrap();
            for column_type in types {
                let fast = convert_raw(&raw, column_type);
                let slow = if value.is_null() {
                    Ok(None)
                } else {
                    convert_json(&value, column_type).map(Some)
                };
                match (fast, slow) {
                    (Ok(fast), Ok(slow)) => assert_eq!(fast, slow, "{text} as {column_type}"),
                    (Err(fast), Err(slow)) => {
                        assert_eq!(fast.code, slow.code, "{text} as {column_type}")
                    }
                    (fast, slow) => panic!(
                        "{text} as {column_type}: {:?} against {:?}",
                        fast.map_err(|r| r.reason),
                        slow.map_err(|r| r.reason)
                    ),
                }
            }
        }
    }

    #[test]
    fn a_number_out_of_range_is_refused_as_before() {
        let raw: Box<RawValue> = serde_json::from_str("1e400").unwrap();
        for column_type in [ColumnType::F64, ColumnType::Text, ColumnType::Json] {
            assert_eq!(
                convert_raw(&raw, column_type).err().map(|r| r.code),
                Some("ingest.json.parse")
            );
        }
    }

    #[test]
    fn fields_keep_the_last_of_a_repeated_name_and_classify_other_json() {
        let fields: Fields<'_> =
            serde_json::from_str(r#"{"a": 1, "b\u0041": "x", "a": 2}"#).unwrap();
        assert_eq!(fields.get("a").unwrap().get(), "2");
        assert_eq!(fields.get("bA").unwrap().get(), "\"x\"");
        let error = serde_json::from_str::<Fields<'_>>("[1]").err().unwrap();
        assert_eq!(error.classify(), serde_json::error::Category::Data);
        let error = serde_json::from_str::<Fields<'_>>("{\"a\": ")
            .err()
            .unwrap();
        assert_eq!(error.classify(), serde_json::error::Category::Eof);
    }

    #[test]
    fn casts_refuse_rather_than_guess() {
        assert_eq!(
            convert_json(&serde_json::json!(7), ColumnType::F64).ok(),
            Some(Value::F64(7.0))
        );
        assert!(convert_json(&serde_json::json!(7.5), ColumnType::I64).is_err());
        assert!(convert_json(&serde_json::json!("x"), ColumnType::I64).is_err());
        assert_eq!(
            convert_text("", ColumnType::I64).ok(),
            Some(None),
            "empty CSV field is NULL"
        );
        assert_eq!(
            convert_text("", ColumnType::Text).ok(),
            Some(Some(Value::Text(String::new())))
        );
        assert_eq!(
            convert_text("\\x00ff", ColumnType::Bytes).ok(),
            Some(Some(Value::Bytes(vec![0, 255])))
        );
        assert!(convert_text("maybe", ColumnType::Bool).is_err());
        assert_eq!(
            convert_json(&serde_json::json!({"a": 1}), ColumnType::Text).ok(),
            Some(Value::Text("{\"a\":1}".into()))
        );
    }

    fn csv(fields: &[&str]) -> Payload {
        Payload::Csv(csv::ByteRecord::from(fields.to_vec()))
    }

    fn inferred(rows: &[&[&str]], nulls: &[&str]) -> Vec<ColumnType> {
        let records: Vec<csv::ByteRecord> = rows
            .iter()
            .map(|row| csv::ByteRecord::from(row.to_vec()))
            .collect();
        let records: Vec<&csv::ByteRecord> = records.iter().collect();
        let nulls: Vec<String> = nulls.iter().map(|null| null.to_string()).collect();
        infer_csv_types(&records, rows[0].len(), &nulls)
    }

    #[test]
    fn csv_types_are_inferred_as_a_person_would_choose_them() {
        use ColumnType::*;
        let rows: &[&[&str]] = &[
            &[
                "1",
                "1.5",
                "t",
                "2013-01-01",
                "2013-01-01T10:00:00Z",
                "2013-01-01 10:00:00",
                "02134",
                "x",
                "",
            ],
            &[
                "-20",
                "2",
                "FALSE",
                "1999-12-31",
                "2013-01-01T10:00:00+05:30",
                "2013-01-01T10:00:00.5",
                "10001",
                "7",
                "",
            ],
            &["", "1e3", "yes", "", "", "", "", "", ""],
        ];
        assert_eq!(
            inferred(rows, &[]),
            [
                I64,
                F64,
                Bool,
                Date,
                TimestampTz,
                Timestamp,
                Text,
                Text,
                Text
            ]
        );
        // 1 and 0 are integers, not booleans; a word that parses as a float is not a number.
        let rows: &[&[&str]] = &[&["1", "nan", "0.5"], &["0", "inf", "007.5"]];
        assert_eq!(inferred(rows, &[]), [I64, Text, Text]);
        // A value outside every type, anywhere in the sample, makes the column text.
        let rows: &[&[&str]] = &[
            &["1", "2013-01-01"],
            &["2", "2013-01-01T10:00:00"],
            &["x", "y"],
        ];
        assert_eq!(inferred(rows, &[]), [Text, Text]);
        // Null markers are skipped like empty fields.
        let rows: &[&[&str]] = &[&["517", "NA"], &["NA", "NA"], &["1", "N14228"]];
        assert_eq!(inferred(rows, &["NA"]), [I64, Text]);
        assert_eq!(inferred(rows, &[]), [Text, Text]);
    }

    #[test]
    fn null_markers_read_as_null_for_the_pipeline_and_per_column() {
        let columns: BTreeMap<String, ColumnConfig> = toml::from_str(
            r#"
            # (in name order, as [columns] is read)
            a_n = { type = "i64", source = "n" }
            b_t = { source = "t" }
            c_own = { null = ["-"], source = "own" }
            "#,
        )
        .unwrap();
        let header = ["n", "t", "own"].map(String::from);
        let mut mapper = Mapper::declared(&columns, &[], Op::Insert, b',', None).unwrap();
        mapper.set_nulls(&["NA".to_string(), String::new()]);
        mapper.set_header(&header).unwrap();
        let row = mapper.map(&csv(&["NA", "", "-"])).unwrap();
        assert_eq!(row.values, [Value::Null, Value::Null, Value::Null]);
        // The column's own list replaces the pipeline's: NA is text there.
        let row = mapper.map(&csv(&["7", "NA", "NA"])).unwrap();
        assert_eq!(
            row.values,
            [Value::I64(7), Value::Null, Value::Text("NA".into())]
        );
        // NDJSON: string values equal to a marker, not other JSON values.
        let line = |text: &str| Payload::Json(text.as_bytes().to_vec());
        let row = mapper
            .map(&line(r#"{"n": "NA", "t": "NA", "own": "-"}"#))
            .unwrap();
        assert_eq!(row.values, [Value::Null, Value::Null, Value::Null]);
        let row = mapper
            .map(&line(r#"{"n": 3, "t": "NAN", "own": "NA"}"#))
            .unwrap();
        assert_eq!(
            row.values,
            [
                Value::I64(3),
                Value::Text("NAN".into()),
                Value::Text("NA".into())
            ]
        );
        // Without markers an empty CSV field stays the empty string in a text column.
        let mut plain = Mapper::declared(&columns, &[], Op::Insert, b',', None).unwrap();
        plain.set_header(&header).unwrap();
        let row = plain.map(&csv(&["", "", "NA"])).unwrap();
        assert_eq!(
            row.values,
            [
                Value::Null,
                Value::Text(String::new()),
                Value::Text("NA".into())
            ]
        );
        assert!(
            plain.map(&csv(&["NA", "", ""])).is_err(),
            "NA is no integer"
        );
    }
}
