//! Dead letters: rows that could not be written, recorded with their error and the time, in a
//! table of the target database or in a JSON-lines file.
//!
//! A row is encoded as `{"op": "upsert", "values": {"id": 7, "price": "NaN", ...}}` with one
//! key per schema column (values beyond the schema's columns are keyed `#<position>`):
//! booleans and integers as JSON, finite floats as numbers and NaN/infinities as the strings
//! `"NaN"`, `"Infinity"`, `"-Infinity"`, decimals, text, UUIDs and times as strings (times in
//! ISO 8601, UTC with `Z`), bytes as `"\\x"` followed by hex digits, JSON documents embedded.
//! A source record that never became a row ([`crate::Rejected`]) is encoded as
//! `{"record": "<the raw text>", "position": "<where it is in its source>"}`.

use crate::backend::{BackendError, DeadLetter};
use crate::schema::{Row, Schema};
use crate::sink::Rejected;
use crate::value::{TimestampTz, Value};
use serde_json::{Map, Value as JsonValue, json};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// The current time, for `failed_at`.
pub(crate) fn now_utc() -> TimestampTz {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
        });
    TimestampTz(micros)
}

/// Builds the dead letter of `row`.
pub(crate) fn dead_letter(schema: &Schema, row: &Row, code: &str, error: &str) -> DeadLetter {
    DeadLetter {
        table: schema.table().to_string(),
        failed_at: now_utc(),
        error_code: code.to_string(),
        error: error.to_string(),
        row: row_to_json(schema, row),
    }
}

/// Builds the dead letter of a source record that never became a row: its `row` is
/// `{"record": ..., "position": ...}`.
pub(crate) fn rejected_letter(schema: &Schema, record: &Rejected) -> DeadLetter {
    DeadLetter {
        table: schema.table().to_string(),
        failed_at: now_utc(),
        error_code: record.code.clone(),
        error: record.reason.clone(),
        row: json!({ "record": record.record, "position": record.position }).to_string(),
    }
}

/// The JSON text of a row (see the module docs).
pub fn row_to_json(schema: &Schema, row: &Row) -> String {
    let mut values = Map::new();
    for (position, value) in row.values.iter().enumerate() {
        let name = schema
            .columns()
            .get(position)
            .map_or_else(|| format!("#{position}"), |column| column.name.to_string());
        values.insert(name, value_to_json(value));
    }
    json!({ "op": row.op.name(), "values": values }).to_string()
}

fn value_to_json(value: &Value) -> JsonValue {
    match value {
        Value::Null => JsonValue::Null,
        Value::Bool(value) => JsonValue::Bool(*value),
        Value::I64(value) => JsonValue::from(*value),
        Value::F64(value) if value.is_nan() => JsonValue::from("NaN"),
        Value::F64(value) if value.is_infinite() => JsonValue::from(if *value > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        }),
        Value::F64(value) => JsonValue::from(*value),
        Value::Decimal(value) => JsonValue::from(value.as_str()),
        Value::Text(value) => JsonValue::from(value.as_str()),
        Value::Bytes(bytes) => {
            let mut text = String::with_capacity(2 + bytes.len() * 2);
            text.push_str("\\x");
            for byte in bytes {
                text.push_str(&format!("{byte:02x}"));
            }
            JsonValue::from(text)
        }
        Value::Json(json) => json.to_value(),
        Value::Uuid(uuid) => JsonValue::from(uuid.to_string()),
        Value::Date(date) => JsonValue::from(date.to_string()),
        Value::Timestamp(timestamp) => JsonValue::from(timestamp.to_string()),
        Value::TimestampTz(timestamp) => JsonValue::from(timestamp.to_string()),
    }
}

/// An append-only JSON-lines dead-letter file. Each call appends whole lines and syncs them;
/// on failure the file is cut back to its previous length, so a retry neither duplicates nor
/// tears lines.
#[derive(Clone)]
pub(crate) struct DeadLetterFile {
    path: PathBuf,
    // Dead letters are rare and several lanes may write at once; the lock keeps their lines
    // whole. It is never held on the row path.
    file: Arc<Mutex<File>>,
}

impl DeadLetterFile {
    pub(crate) fn open(path: &Path) -> std::io::Result<DeadLetterFile> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(DeadLetterFile {
            path: path.to_path_buf(),
            file: Arc::new(Mutex::new(file)),
        })
    }

    pub(crate) async fn append(&self, letters: &[DeadLetter]) -> Result<(), BackendError> {
        let mut text = Vec::new();
        for letter in letters {
            serde_json::to_writer(&mut text, letter).map_err(|error| BackendError::Fatal {
                code: "sink.dead_letter.encode",
                message: error.to_string(),
            })?;
            text.push(b'\n');
        }
        let file = self.file.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let file = file
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let length = file.metadata()?.len();
            let written = (&*file).write_all(&text).and_then(|()| file.sync_data());
            if written.is_err() {
                // Best effort: the error below is what the caller acts on.
                let _ = file.set_len(length);
            }
            written
        })
        .await
        .map_err(|error| BackendError::Fatal {
            code: "sink.dead_letter.task",
            message: error.to_string(),
        })?
        .map_err(|error| BackendError::Transient {
            code: "sink.dead_letter.io",
            message: format!("{}: {error}", path.display()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Column;
    use crate::value::{ColumnType, Date, Json};

    #[test]
    fn rows_encode_every_type_readably() {
        let schema = Schema::new(
            "t",
            vec![
                Column::new("f", ColumnType::F64).unwrap(),
                Column::new("b", ColumnType::Bytes).unwrap(),
                Column::new("j", ColumnType::Json).unwrap(),
                Column::new("d", ColumnType::Date).unwrap(),
            ],
            &[],
        )
        .unwrap();
        let row = Row::insert(vec![
            Value::F64(f64::NEG_INFINITY),
            Value::Bytes(vec![0, 255]),
            Value::Json(Json::parse("[1]").unwrap()),
            Value::Date(Date(0)),
            Value::I64(9),
        ]);
        let encoded: JsonValue = serde_json::from_str(&row_to_json(&schema, &row)).unwrap();
        assert_eq!(
            encoded,
            json!({"op": "insert", "values": {"f": "-Infinity", "b": "\\x00ff", "j": [1], "d": "1970-01-01", "#4": 9}})
        );
    }

    #[tokio::test]
    async fn file_appends_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.jsonl");
        let file = DeadLetterFile::open(&path).unwrap();
        let letter = DeadLetter {
            table: "t".into(),
            failed_at: TimestampTz(0),
            error_code: "x".into(),
            error: "bad\nrow".into(),
            row: "{}".into(),
        };
        file.append(&[letter.clone(), letter.clone()])
            .await
            .unwrap();
        file.append(&[letter]).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<JsonValue> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["failed_at"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(lines[0]["error"], "bad\nrow");
    }
}
