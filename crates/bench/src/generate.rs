//! The benchmarks' one data generator: deterministic rows from a seed (`fastrand`'s wyrand
//! streams), the sink's event rows and the ingest's NDJSON lines.

use anyhow::Result;
use sluice_sink::{Decimal, Json, Row, TimestampTz, Uuid, Value};

/// Template rows the event generator clones.
const TEMPLATES: usize = 4_096;
/// 2026-01-01T00:00:00Z in microseconds since the Unix epoch.
const BASE_TIME_US: i64 = 1_767_225_600_000_000;

/// The stream of item `index` of the data set `seed`: the same pair gives the same values,
/// whatever was drawn before.
fn stream(seed: u64, index: u64) -> fastrand::Rng {
    // An odd multiplier spreads consecutive indexes over the seed space.
    fastrand::Rng::with_seed(seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// `len` characters drawn from `alphabet`.
fn text(rng: &mut fastrand::Rng, alphabet: &[u8], len: usize) -> String {
    (0..len)
        .map(|_| char::from(alphabet[rng.usize(..alphabet.len())]))
        .collect()
}

const ALPHANUMERIC: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// The sink benchmark's event rows: id `bigint`, event time `timestamptz`, a 16-byte UUID key,
/// four `numeric`, a 40-byte text, a 200-byte JSON document. 4,096 template rows are built
/// from the seed, and row `i` is a clone of template `hash(seed, i) % 4096` with its own id and
/// event time.
pub(crate) struct EventRows {
    seed: u64,
    templates: Vec<Vec<Value>>,
}

impl EventRows {
    pub(crate) fn new(seed: u64) -> Result<EventRows> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut templates = Vec::with_capacity(TEMPLATES);
        for _ in 0..TEMPLATES {
            let key = rng.u128(..).to_be_bytes();
            let decimal = |text: String| Decimal::parse(&text).map(Value::Decimal);
            let amount = decimal(format!("{}.{:02}", rng.u32(..100_000), rng.u32(..100)))?;
            let price = decimal(format!("{}.{:04}", rng.u32(..1_000), rng.u32(..10_000)))?;
            let quantity = decimal(format!("{}", rng.u32(1..=500)))?;
            let fee = decimal(format!("0.{:02}", rng.u32(..100)))?;
            let label = Value::Text(text(&mut rng, ALPHANUMERIC, 40));
            let mut doc = format!(
                r#"{{"user":"u{:06}","country":"{}","device":"{}","score":{},"tags":["{}","{}"],"pad":""#,
                rng.u32(..1_000_000),
                text(&mut rng, ALPHANUMERIC, 2).to_uppercase(),
                text(&mut rng, ALPHANUMERIC, 12),
                rng.u32(..10_000),
                text(&mut rng, ALPHANUMERIC, 6),
                text(&mut rng, ALPHANUMERIC, 6),
            );
            let pad = 200 - 2 - doc.len();
            doc.push_str(&text(&mut rng, ALPHANUMERIC, pad));
            doc.push_str("\"}");
            let payload = Value::Json(Json::parse(&doc)?);
            templates.push(vec![
                Value::I64(0),
                Value::TimestampTz(TimestampTz(0)),
                Value::Uuid(Uuid(key)),
                amount,
                price,
                quantity,
                fee,
                label,
                payload,
            ]);
        }
        Ok(EventRows { seed, templates })
    }

    pub(crate) fn row(&self, id: i64) -> Row {
        let template = &self.templates[stream(self.seed, id as u64).usize(..TEMPLATES)];
        let mut values = template.clone();
        values[0] = Value::I64(id);
        values[1] = Value::TimestampTz(TimestampTz(BASE_TIME_US + id * 10));
        Row::insert(values)
    }

    /// Rows with ids `first, first + step, ...` (`count` of them).
    pub(crate) fn rows(&self, first: i64, count: usize, step: i64) -> Vec<Row> {
        (0..count as i64)
            .map(|i| self.row(first + i * step))
            .collect()
    }
}

/// Milliseconds between two ingest rows' timestamps (1,000,000 rows stay within one day).
pub(crate) const INGEST_TS_STEP_MS: u64 = 50;
const SOURCES: [&str; 4] = ["web", "app", "api", "batch"];

/// One row of the ingest benchmark: an id, an 8-character name, a float, a timestamp and a
/// small nested object.
#[derive(Debug, PartialEq)]
pub(crate) struct IngestRow {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) score: f64,
    pub(crate) ts: String,
    pub(crate) source: &'static str,
    pub(crate) n: u64,
}

impl IngestRow {
    pub(crate) fn new(seed: u64, id: u64) -> IngestRow {
        let mut rng = stream(seed, id);
        let name = text(&mut rng, b"abcdefghijklmnopqrstuvwxyz0123456789", 8);
        let score = rng.u32(..1 << 24) as f64 / 1_000.0;
        let ms = id * INGEST_TS_STEP_MS;
        let ts = format!(
            "2026-01-01T{:02}:{:02}:{:02}.{:03}Z",
            ms / 3_600_000,
            ms / 60_000 % 60,
            ms / 1_000 % 60,
            ms % 1_000
        );
        IngestRow {
            id,
            name,
            score,
            ts,
            source: SOURCES[rng.usize(..SOURCES.len())],
            n: rng.u64(..100),
        }
    }

    /// `{"id":1,"name":"k3xq9abz","score":512.375,"ts":"...","meta":{"source":"web","n":7}}`
    pub(crate) fn ndjson(&self) -> String {
        let IngestRow {
            id,
            name,
            score,
            ts,
            source,
            n,
        } = self;
        format!(
            r#"{{"id":{id},"name":"{name}","score":{score},"ts":"{ts}","meta":{{"source":"{source}","n":{n}}}}}"#
        )
    }

    /// The same fields as one line of PostgreSQL's text COPY format.
    pub(crate) fn tsv(&self) -> String {
        let IngestRow {
            id,
            name,
            score,
            ts,
            source,
            n,
        } = self;
        format!("{id}\t{name}\t{score}\t{ts}\t{{\"source\":\"{source}\",\"n\":{n}}}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_rows_are_deterministic_per_seed() {
        assert_eq!(IngestRow::new(7, 999), IngestRow::new(7, 999));
        assert_ne!(IngestRow::new(7, 1).name, IngestRow::new(8, 1).name);
    }
}
