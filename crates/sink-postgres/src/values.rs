//! How each value is written to PostgreSQL (binary COPY format) and read back (see the crate
//! docs for the table).
//!
//! Every value is checked against its column before a COPY starts ([`check`]): a value the
//! column cannot hold exactly (an integer outside `smallint`/`integer`, a decimal with more
//! digits than `numeric(p,s)` keeps, text longer than `varchar(n)`, a time finer than
//! `timestamp(p)`, a date or time outside PostgreSQL's range) is refused as a row error instead
//! of being rounded, truncated or turned into `infinity`. The encoders then write PostgreSQL's
//! binary wire format directly.

use crate::error::EncodeError;
use bytes::{BufMut, BytesMut};
use sluice_sink::{
    BackendError, ColumnType, Date, Decimal, Json, Row, Timestamp, TimestampTz, Uuid, Value,
};
use std::fmt;
use std::fmt::Write as _;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

/// Days from 1970-01-01 (the sink's epoch) to 2000-01-01 (PostgreSQL's).
const PG_EPOCH_DAYS: i64 = 10_957;
/// Microseconds from 1970-01-01T00:00:00 to 2000-01-01T00:00:00.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// PostgreSQL's date range in days since 2000-01-01: Julian day 0 (4714-11-24 BC) up to, not
/// including, `DATE_END_JULIAN` (5874898-01-01). The two ends of `i32` mean ±infinity.
const PG_DATE_RANGE: std::ops::Range<i64> = -2_451_545..2_145_031_949;
/// PostgreSQL's timestamp range in microseconds since 2000-01-01 (`MIN_TIMESTAMP` up to, not
/// including, `END_TIMESTAMP`, 294277-01-01). The two ends of `i64` mean ±infinity.
const PG_TIMESTAMP_RANGE: std::ops::Range<i64> =
    -211_813_488_000_000_000..9_223_371_331_200_000_000;

/// The numeric sign words of PostgreSQL's binary format.
const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
/// Base of a numeric digit (each holds four decimal digits).
const NBASE: i16 = 10_000;

/// The PostgreSQL column types the sink writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum PgType {
    Bool,
    Int2,
    Int4,
    Int8,
    Float8,
    Numeric,
    Text,
    Varchar,
    Bytea,
    Json,
    Jsonb,
    Uuid,
    Date,
    Timestamp,
    Timestamptz,
}

impl PgType {
    /// The type of a built-in type OID, if the sink writes it.
    pub(crate) fn from_oid(oid: u32) -> Option<PgType> {
        let types = [
            (Type::BOOL, PgType::Bool),
            (Type::INT2, PgType::Int2),
            (Type::INT4, PgType::Int4),
            (Type::INT8, PgType::Int8),
            (Type::FLOAT8, PgType::Float8),
            (Type::NUMERIC, PgType::Numeric),
            (Type::TEXT, PgType::Text),
            (Type::VARCHAR, PgType::Varchar),
            (Type::BYTEA, PgType::Bytea),
            (Type::JSON, PgType::Json),
            (Type::JSONB, PgType::Jsonb),
            (Type::UUID, PgType::Uuid),
            (Type::DATE, PgType::Date),
            (Type::TIMESTAMP, PgType::Timestamp),
            (Type::TIMESTAMPTZ, PgType::Timestamptz),
        ];
        types
            .into_iter()
            .find(|(ty, _)| ty.oid() == oid)
            .map(|(_, pg)| pg)
    }

    /// The SQL name, without modifiers (used for created columns and staging tables).
    pub(crate) fn sql_name(self) -> &'static str {
        match self {
            PgType::Bool => "boolean",
            PgType::Int2 => "smallint",
            PgType::Int4 => "integer",
            PgType::Int8 => "bigint",
            PgType::Float8 => "double precision",
            PgType::Numeric => "numeric",
            PgType::Text => "text",
            PgType::Varchar => "varchar",
            PgType::Bytea => "bytea",
            PgType::Json => "json",
            PgType::Jsonb => "jsonb",
            PgType::Uuid => "uuid",
            PgType::Date => "date",
            PgType::Timestamp => "timestamp without time zone",
            PgType::Timestamptz => "timestamp with time zone",
        }
    }

    /// The client library's type (passed to the COPY writer).
    pub(crate) fn wire_type(self) -> Type {
        match self {
            PgType::Bool => Type::BOOL,
            PgType::Int2 => Type::INT2,
            PgType::Int4 => Type::INT4,
            PgType::Int8 => Type::INT8,
            PgType::Float8 => Type::FLOAT8,
            PgType::Numeric => Type::NUMERIC,
            PgType::Text => Type::TEXT,
            PgType::Varchar => Type::VARCHAR,
            PgType::Bytea => Type::BYTEA,
            PgType::Json => Type::JSON,
            PgType::Jsonb => Type::JSONB,
            PgType::Uuid => Type::UUID,
            PgType::Date => Type::DATE,
            PgType::Timestamp => Type::TIMESTAMP,
            PgType::Timestamptz => Type::TIMESTAMPTZ,
        }
    }

    /// The type the sink creates for a column type.
    pub(crate) fn default_for(column_type: ColumnType) -> PgType {
        match column_type {
            ColumnType::Bool => PgType::Bool,
            ColumnType::I64 => PgType::Int8,
            ColumnType::F64 => PgType::Float8,
            ColumnType::Decimal => PgType::Numeric,
            ColumnType::Text => PgType::Text,
            ColumnType::Bytes => PgType::Bytea,
            ColumnType::Json => PgType::Jsonb,
            ColumnType::Uuid => PgType::Uuid,
            ColumnType::Date => PgType::Date,
            ColumnType::Timestamp => PgType::Timestamp,
            ColumnType::TimestampTz => PgType::Timestamptz,
        }
    }

    /// Whether a column of this type holds values of `column_type` (subject to [`check`]).
    pub(crate) fn holds(self, column_type: ColumnType) -> bool {
        matches!(
            (column_type, self),
            (ColumnType::Bool, PgType::Bool)
                | (ColumnType::I64, PgType::Int2 | PgType::Int4 | PgType::Int8)
                | (ColumnType::F64, PgType::Float8)
                | (ColumnType::Decimal, PgType::Numeric)
                | (ColumnType::Text, PgType::Text | PgType::Varchar)
                | (ColumnType::Bytes, PgType::Bytea)
                | (ColumnType::Json, PgType::Json | PgType::Jsonb)
                | (ColumnType::Uuid, PgType::Uuid)
                | (ColumnType::Date, PgType::Date)
                | (ColumnType::Timestamp, PgType::Timestamp)
                | (ColumnType::TimestampTz, PgType::Timestamptz)
        )
    }
}

/// A column's type modifier, where it limits values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Limit {
    None,
    /// `numeric(precision, scale)`.
    Numeric {
        precision: usize,
        scale: usize,
    },
    /// `varchar(n)`: characters.
    Length(usize),
    /// `timestamp(p)`: fractional digits of the second, 0 to 5 (6 is no limit).
    Precision(u32),
}

/// Where one schema column's values go: the column's type and its modifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) pg: PgType,
    pub(crate) limit: Limit,
}

impl Target {
    /// A column of `pg` without a modifier.
    #[cfg(test)]
    pub(crate) fn plain(pg: PgType) -> Target {
        Target {
            pg,
            limit: Limit::None,
        }
    }

    /// The target for a table column of type `oid` and modifier `typmod` holding
    /// `column_type` values, or why it cannot hold them.
    pub(crate) fn of_column(
        column_type: ColumnType,
        oid: u32,
        typmod: i32,
        type_name: &str,
    ) -> Result<Target, String> {
        let suggestion = PgType::default_for(column_type).sql_name();
        let Some(pg) = PgType::from_oid(oid) else {
            let why = if oid == Type::FLOAT4.oid() {
                " (real rounds 64-bit floats)".to_string()
            } else if oid == Type::BPCHAR.oid() {
                " (character(n) pads values with spaces)".to_string()
            } else {
                String::new()
            };
            return Err(format!(
                "has type {type_name}{why}, which does not hold {column_type} values (use {suggestion})"
            ));
        };
        if !pg.holds(column_type) {
            return Err(format!(
                "has type {type_name}, which does not hold {column_type} values (use {suggestion})"
            ));
        }
        let limit = match pg {
            PgType::Numeric if typmod >= 4 => {
                let modifier = typmod - 4;
                let precision = (modifier >> 16) & 0xffff;
                let scale = ((modifier & 0x7ff) ^ 1024) - 1024;
                if scale < 0 {
                    return Err(format!(
                        "has type {type_name}, whose negative scale rounds to tens or more (use numeric or numeric(p,s) with s >= 0)"
                    ));
                }
                Limit::Numeric {
                    precision: precision as usize,
                    scale: scale as usize,
                }
            }
            PgType::Varchar if typmod >= 4 => Limit::Length((typmod - 4) as usize),
            PgType::Timestamp | PgType::Timestamptz if (0..6).contains(&typmod) => {
                Limit::Precision(typmod as u32)
            }
            _ => Limit::None,
        };
        Ok(Target { pg, limit })
    }
}

fn refuse(code: &'static str, message: String) -> BackendError {
    BackendError::Row { code, message }
}

/// Checks that `value` can be written into `target` exactly (see the module docs). NULL always
/// passes here: NOT NULL is the schema's and the database's business.
pub(crate) fn check(column: &str, value: &Value, target: Target) -> Result<(), BackendError> {
    match (value, target.pg) {
        (Value::Null, _) => Ok(()),
        (Value::I64(v), PgType::Int2) if i16::try_from(*v).is_err() => Err(refuse(
            "postgres.value_out_of_range",
            format!("{v} is out of range for column {column} (smallint)"),
        )),
        (Value::I64(v), PgType::Int4) if i32::try_from(*v).is_err() => Err(refuse(
            "postgres.value_out_of_range",
            format!("{v} is out of range for column {column} (integer)"),
        )),
        (Value::Decimal(decimal), PgType::Numeric) => check_decimal(column, decimal, target.limit),
        (Value::Text(text), PgType::Varchar) => match target.limit {
            Limit::Length(max) if text.chars().count() > max => Err(refuse(
                "postgres.value_too_long",
                format!(
                    "a text of {} characters does not fit column {column} (varchar({max}))",
                    text.chars().count()
                ),
            )),
            _ => Ok(()),
        },
        (Value::Date(date), PgType::Date) => pg_date(*date).map(|_| ()).map_err(|message| {
            refuse(
                "postgres.value_out_of_range",
                format!("column {column}: {message}"),
            )
        }),
        (Value::Timestamp(Timestamp(micros)), PgType::Timestamp)
        | (Value::TimestampTz(TimestampTz(micros)), PgType::Timestamptz) => {
            pg_micros(*micros).map_err(|message| {
                refuse(
                    "postgres.value_out_of_range",
                    format!("column {column}: {message}"),
                )
            })?;
            if let Limit::Precision(digits) = target.limit {
                let unit = 10i64.pow(6 - digits);
                if micros.rem_euclid(unit) != 0 {
                    return Err(refuse(
                        "postgres.value_would_round",
                        format!(
                            "column {column} keeps {digits} fractional digits of a second; the value has more and would be rounded"
                        ),
                    ));
                }
            }
            Ok(())
        }
        (value, pg) => match value.column_type() {
            Some(column_type) if pg.holds(column_type) => Ok(()),
            _ => Err(refuse(
                "postgres.value_type",
                format!(
                    "column {column} ({}) cannot hold a {} value",
                    pg.sql_name(),
                    value.column_type().map_or("null", ColumnType::name)
                ),
            )),
        },
    }
}

fn check_decimal(column: &str, decimal: &Decimal, limit: Limit) -> Result<(), BackendError> {
    let Limit::Numeric { precision, scale } = limit else {
        return Ok(());
    };
    let text = decimal.as_str();
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (integer, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    if fraction.len() > scale && fraction.as_bytes()[scale..].iter().any(|&b| b != b'0') {
        return Err(refuse(
            "postgres.value_would_round",
            format!(
                "column {column} (numeric({precision},{scale})) keeps {scale} fractional digits; {text} would be rounded"
            ),
        ));
    }
    let integer_digits = if integer == "0" { 0 } else { integer.len() };
    if integer_digits > precision.saturating_sub(scale) {
        return Err(refuse(
            "postgres.numeric_overflow",
            format!(
                "column {column} (numeric({precision},{scale})) holds at most {} digits before the point; {text} has {integer_digits}",
                precision.saturating_sub(scale)
            ),
        ));
    }
    Ok(())
}

/// A date as PostgreSQL's days since 2000-01-01, if PostgreSQL can hold it.
fn pg_date(date: Date) -> Result<i32, String> {
    let days = i64::from(date.0) - PG_EPOCH_DAYS;
    if !PG_DATE_RANGE.contains(&days) {
        return Err(format!(
            "{date} is outside PostgreSQL's date range (4714-11-24 BC to 5874897-12-31)"
        ));
    }
    // The range is inside i32.
    Ok(days as i32)
}

/// Microseconds since 1970 as PostgreSQL's microseconds since 2000, if PostgreSQL can hold
/// them.
fn pg_micros(micros: i64) -> Result<i64, String> {
    match micros.checked_sub(PG_EPOCH_MICROS) {
        Some(pg) if PG_TIMESTAMP_RANGE.contains(&pg) => Ok(pg),
        _ => Err(format!(
            "{} is outside PostgreSQL's timestamp range (4714-11-24 BC to 294276-12-31)",
            Timestamp(micros)
        )),
    }
}

/// Appends PostgreSQL's binary `numeric` form of canonical decimal text.
///
/// The format: `ndigits: i16, weight: i16, sign: u16, dscale: u16`, then `ndigits` base-10000
/// digits as `i16`, most significant first. Digit `k` is worth `10000^(weight - k)`; `dscale`
/// is the number of decimal digits after the point (the display scale, which keeps trailing
/// zeros). Leading and trailing zero digits are stripped, and zero has no digits, as
/// PostgreSQL itself stores them.
pub(crate) fn encode_numeric(text: &str, out: &mut BytesMut) -> Result<(), EncodeError> {
    let fail = || EncodeError(format!("not a canonical decimal: {text:.80}"));
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (integer, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    if integer.is_empty()
        || !integer.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(fail());
    }
    let dscale = u16::try_from(fraction.len()).map_err(|_| fail())?;
    // Pad both parts to whole base-10000 digits, aligned on the decimal point.
    let lead = (4 - integer.len() % 4) % 4;
    let trail = (4 - fraction.len() % 4) % 4;
    let decimal_digits = std::iter::repeat_n(b'0', lead)
        .chain(integer.bytes())
        .chain(fraction.bytes())
        .chain(std::iter::repeat_n(b'0', trail))
        .collect::<Vec<u8>>();
    let mut digits: Vec<i16> = decimal_digits
        .chunks_exact(4)
        .map(|group| {
            group
                .iter()
                .fold(0i16, |value, &b| value * 10 + i16::from(b - b'0'))
        })
        .collect();
    let integer_digits = (lead + integer.len()) / 4;
    let mut weight = i32::try_from(integer_digits).map_err(|_| fail())? - 1;
    let leading_zeros = digits.iter().take_while(|&&d| d == 0).count();
    let sign = if leading_zeros == digits.len() {
        digits.clear();
        weight = 0;
        NUMERIC_POS
    } else {
        digits.drain(..leading_zeros);
        weight -= i32::try_from(leading_zeros).map_err(|_| fail())?;
        while digits.last() == Some(&0) {
            digits.pop();
        }
        if negative { NUMERIC_NEG } else { NUMERIC_POS }
    };
    out.reserve(8 + 2 * digits.len());
    out.put_i16(i16::try_from(digits.len()).map_err(|_| fail())?);
    out.put_i16(i16::try_from(weight).map_err(|_| fail())?);
    out.put_u16(sign);
    out.put_u16(dscale);
    for digit in digits {
        out.put_i16(digit);
    }
    Ok(())
}

/// Canonical decimal text of PostgreSQL's binary `numeric` form (the inverse of
/// [`encode_numeric`]); NaN and the infinities have no decimal form.
pub(crate) fn decode_numeric(raw: &[u8]) -> Result<String, String> {
    let word = |index: usize| -> Result<u16, String> {
        raw.get(index * 2..index * 2 + 2)
            .map(|bytes| u16::from_be_bytes([bytes[0], bytes[1]]))
            .ok_or_else(|| "a truncated numeric".to_string())
    };
    let ndigits = usize::from(word(0)?);
    let weight = i64::from(word(1)? as i16);
    let sign = word(2)?;
    let dscale = usize::from(word(3)?);
    if raw.len() != 8 + 2 * ndigits {
        return Err("a numeric of the wrong length".into());
    }
    let negative = match sign {
        NUMERIC_POS => false,
        NUMERIC_NEG => true,
        0xC000 => return Err("numeric NaN".into()),
        0xD000 => return Err("numeric Infinity".into()),
        0xF000 => return Err("numeric -Infinity".into()),
        other => return Err(format!("a numeric with sign word {other:#06x}")),
    };
    let mut digits = Vec::with_capacity(ndigits);
    for index in 0..ndigits {
        let digit = word(4 + index)? as i16;
        if !(0..NBASE).contains(&digit) {
            return Err(format!("a numeric digit {digit}"));
        }
        digits.push(digit);
    }
    // Digit k is worth 10000^(weight - k); positions outside the stored digits are zero.
    let digit_at = |k: i64| -> i16 {
        usize::try_from(k)
            .ok()
            .and_then(|k| digits.get(k).copied())
            .unwrap_or(0)
    };
    let mut integer = String::new();
    for k in 0..=weight {
        // Writing to a String cannot fail.
        let _ = write!(integer, "{:04}", digit_at(k));
    }
    let integer = integer.trim_start_matches('0');
    let mut text = String::with_capacity(integer.len() + dscale + 3);
    if negative && digits.iter().any(|&d| d != 0) {
        text.push('-');
    }
    text.push_str(if integer.is_empty() { "0" } else { integer });
    if dscale > 0 {
        text.push('.');
        let mut fraction = String::with_capacity(dscale + 4);
        let mut k = weight + 1;
        while fraction.len() < dscale {
            let _ = write!(fraction, "{:04}", digit_at(k));
            k += 1;
        }
        text.push_str(&fraction[..dscale]);
    }
    Ok(text)
}

/// One field of a COPY row: a value for its column, NULL, or the staging table's delete flag.
#[derive(Debug)]
pub(crate) enum Field<'a> {
    Null,
    Flag(bool),
    Value(&'a Value, PgType),
}

/// Rows in PostgreSQL's binary COPY format (the signature and header, one tuple per row, the
/// trailer), encoded before a connection is taken: a batch's encoding then overlaps the server's
/// work on the batch before it, instead of holding the connection while the client encodes.
pub(crate) struct CopyStream {
    out: BytesMut,
}

/// The binary COPY signature, then the flags field and the header extension length (both 0).
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

impl CopyStream {
    /// An empty stream with room for about `bytes` bytes.
    pub(crate) fn with_capacity(bytes: usize) -> CopyStream {
        let mut out = BytesMut::with_capacity(bytes + COPY_HEADER.len() + 2);
        out.put_slice(COPY_HEADER);
        CopyStream { out }
    }

    /// Appends one tuple.
    pub(crate) fn push<'a>(
        &mut self,
        fields: impl ExactSizeIterator<Item = Field<'a>>,
    ) -> Result<(), EncodeError> {
        let count = i16::try_from(fields.len())
            .map_err(|_| EncodeError(format!("{} fields do not fit a COPY row", fields.len())))?;
        self.out.put_i16(count);
        for field in fields {
            match field {
                Field::Null | Field::Value(Value::Null, _) => self.out.put_i32(-1),
                Field::Flag(flag) => {
                    self.out.put_i32(1);
                    self.out.put_u8(u8::from(flag));
                }
                Field::Value(value, pg) => {
                    let start = self.out.len();
                    self.out.put_i32(0);
                    encode(value, pg, &mut self.out)?;
                    let size = i32::try_from(self.out.len() - start - 4)
                        .map_err(|_| EncodeError("a value is larger than 2 GiB".into()))?;
                    self.out[start..start + 4].copy_from_slice(&size.to_be_bytes());
                }
            }
        }
        Ok(())
    }

    /// The stream with its trailer.
    pub(crate) fn finish(mut self) -> bytes::Bytes {
        self.out.put_i16(-1);
        self.out.freeze()
    }
}

/// One column of some rows as a one-dimensional PostgreSQL array, in binary form: the
/// parameter of `unnest($1::<type>[], ...)`, the exactly-once writes' source of keyed rows (a
/// transaction that will be prepared cannot use a temporary staging table).
pub(crate) struct ColumnArray<'a> {
    rows: &'a [Row],
    positions: &'a [usize],
    column: usize,
    pg: PgType,
}

impl<'a> ColumnArray<'a> {
    /// Column `column` of the rows at `positions` of `rows`, written as `pg` values.
    pub(crate) fn new(
        rows: &'a [Row],
        positions: &'a [usize],
        column: usize,
        pg: PgType,
    ) -> ColumnArray<'a> {
        ColumnArray {
            rows,
            positions,
            column,
            pg,
        }
    }
}

impl fmt::Debug for ColumnArray<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("ColumnArray")
            .field("column", &self.column)
            .field("pg", &self.pg)
            .field("len", &self.positions.len())
            .finish()
    }
}

impl ToSql for ColumnArray<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let values = self
            .positions
            .iter()
            .map(|&position| &self.rows[position].values[self.column]);
        let len = i32::try_from(self.positions.len()).map_err(|_| {
            EncodeError(format!("{} rows do not fit an array", self.positions.len()))
        })?;
        // array_recv's layout: dimensions, a has-NULLs flag, the element type, then each
        // dimension's length and lower bound, then the elements with their lengths.
        out.put_i32(1);
        out.put_i32(i32::from(values.clone().any(|v| matches!(v, Value::Null))));
        out.put_u32(self.pg.wire_type().oid());
        out.put_i32(len);
        out.put_i32(1);
        for value in values {
            if matches!(value, Value::Null) {
                out.put_i32(-1);
                continue;
            }
            let start = out.len();
            out.put_i32(0);
            encode(value, self.pg, out)?;
            let size = i32::try_from(out.len() - start - 4)
                .map_err(|_| EncodeError("a value is larger than 2 GiB".into()))?;
            out[start..start + 4].copy_from_slice(&size.to_be_bytes());
        }
        Ok(IsNull::No)
    }

    fn accepts(_ty: &Type) -> bool {
        // As for `Field`: the statement's array types come from the same checked targets.
        true
    }

    to_sql_checked!();
}

/// A value in PostgreSQL's binary format, encoded exactly as the sink encodes it for a column of
/// the statement's type: for callers that run their own statements or `COPY` beside the sink
/// (the benchmarks measure the raw limit with the sink's own encoding).
#[derive(Debug)]
pub struct BinaryValue<'a>(pub &'a Value);

impl ToSql for BinaryValue<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        if matches!(self.0, Value::Null) {
            return Ok(IsNull::Yes);
        }
        let pg = PgType::from_oid(ty.oid())
            .ok_or_else(|| EncodeError(format!("the sink does not write {ty} columns")))?;
        encode(self.0, pg, out)?;
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        PgType::from_oid(ty.oid()).is_some()
    }

    to_sql_checked!();
}

/// Appends the binary form of a non-NULL `value` for a column of type `pg`.
fn encode(value: &Value, pg: PgType, out: &mut BytesMut) -> Result<(), EncodeError> {
    let narrow = |v: i64, ty: &str| EncodeError(format!("{v} is out of range for {ty}"));
    match (value, pg) {
        (Value::Bool(v), PgType::Bool) => out.put_u8(u8::from(*v)),
        (Value::I64(v), PgType::Int8) => out.put_i64(*v),
        (Value::I64(v), PgType::Int4) => {
            out.put_i32(i32::try_from(*v).map_err(|_| narrow(*v, "integer"))?);
        }
        (Value::I64(v), PgType::Int2) => {
            out.put_i16(i16::try_from(*v).map_err(|_| narrow(*v, "smallint"))?);
        }
        (Value::F64(v), PgType::Float8) => out.put_f64(*v),
        (Value::Decimal(v), PgType::Numeric) => encode_numeric(v.as_str(), out)?,
        (Value::Text(v), PgType::Text | PgType::Varchar) => out.put_slice(v.as_bytes()),
        (Value::Bytes(v), PgType::Bytea) => out.put_slice(v),
        (Value::Json(v), PgType::Jsonb) => {
            // jsonb's binary input: a version byte (1), then the JSON text.
            out.put_u8(1);
            out.put_slice(v.as_str().as_bytes());
        }
        (Value::Json(v), PgType::Json) => out.put_slice(v.as_str().as_bytes()),
        (Value::Uuid(v), PgType::Uuid) => out.put_slice(&v.0),
        (Value::Date(v), PgType::Date) => out.put_i32(pg_date(*v).map_err(EncodeError)?),
        (Value::Timestamp(Timestamp(v)), PgType::Timestamp)
        | (Value::TimestampTz(TimestampTz(v)), PgType::Timestamptz) => {
            out.put_i64(pg_micros(*v).map_err(EncodeError)?);
        }
        (value, pg) => {
            return Err(EncodeError(format!(
                "a {} value cannot be written to a {} column",
                value.column_type().map_or("null", ColumnType::name),
                pg.sql_name()
            )));
        }
    }
    Ok(())
}

/// Why a stored value could not be read back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The database or the pool failed.
    #[error(transparent)]
    Database(#[from] BackendError),
    /// A stored value does not decode as its column's schema type.
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

/// A column's raw binary value, whatever its type (decoded by [`decode`]).
pub(crate) struct Raw<'a>(pub(crate) Option<&'a [u8]>);

impl<'a> tokio_postgres::types::FromSql<'a> for Raw<'a> {
    fn from_sql(
        _ty: &Type,
        raw: &'a [u8],
    ) -> Result<Raw<'a>, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw)))
    }

    fn from_sql_null(_ty: &Type) -> Result<Raw<'a>, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }
}

/// Decodes a column's binary value as `column_type`.
pub(crate) fn decode(
    column: &str,
    column_type: ColumnType,
    ty: &Type,
    raw: Option<&[u8]>,
) -> Result<Value, ReadError> {
    let fail = |found: String| ReadError::Decode {
        column: column.to_string(),
        column_type,
        found,
    };
    let Some(raw) = raw else {
        return Ok(Value::Null);
    };
    let pg = PgType::from_oid(ty.oid())
        .filter(|pg| pg.holds(column_type))
        .ok_or_else(|| fail(format!("a value of type {}", ty.name())))?;
    let fixed = |len: usize| -> Result<&[u8], ReadError> {
        if raw.len() == len {
            Ok(raw)
        } else {
            Err(fail(format!("{} bytes for a {}", raw.len(), ty.name())))
        }
    };
    let text = |bytes: &[u8]| {
        std::str::from_utf8(bytes)
            .map(str::to_string)
            .map_err(|_| fail("text that is not UTF-8".into()))
    };
    let be8 = |bytes: &[u8]| -> [u8; 8] { bytes.try_into().expect("length checked") };
    let value = match pg {
        PgType::Bool => Value::Bool(fixed(1)?[0] != 0),
        PgType::Int2 => Value::I64(i64::from(i16::from_be_bytes([fixed(2)?[0], raw[1]]))),
        PgType::Int4 => Value::I64(i64::from(i32::from_be_bytes(
            fixed(4)?.try_into().expect("length checked"),
        ))),
        PgType::Int8 => Value::I64(i64::from_be_bytes(be8(fixed(8)?))),
        PgType::Float8 => Value::F64(f64::from_bits(u64::from_be_bytes(be8(fixed(8)?)))),
        PgType::Numeric => {
            let text = decode_numeric(raw).map_err(fail)?;
            Value::Decimal(Decimal::parse(&text).map_err(|error| fail(error.to_string()))?)
        }
        PgType::Text | PgType::Varchar => Value::Text(text(raw)?),
        PgType::Bytea => Value::Bytes(raw.to_vec()),
        PgType::Jsonb => match raw.split_first() {
            Some((1, document)) => {
                Value::Json(Json::parse(&text(document)?).map_err(|e| fail(e.to_string()))?)
            }
            _ => return Err(fail("a jsonb of an unknown version".into())),
        },
        PgType::Json => Value::Json(Json::parse(&text(raw)?).map_err(|e| fail(e.to_string()))?),
        PgType::Uuid => Value::Uuid(Uuid(fixed(16)?.try_into().expect("length checked"))),
        PgType::Date => {
            let days = i32::from_be_bytes(fixed(4)?.try_into().expect("length checked"));
            if days == i32::MIN || days == i32::MAX {
                return Err(fail("an infinite date".into()));
            }
            let days = i64::from(days) + PG_EPOCH_DAYS;
            Value::Date(Date(
                i32::try_from(days).map_err(|_| fail(format!("day {days}")))?,
            ))
        }
        PgType::Timestamp | PgType::Timestamptz => {
            let pg_micros = i64::from_be_bytes(be8(fixed(8)?));
            if pg_micros == i64::MIN || pg_micros == i64::MAX {
                return Err(fail("an infinite timestamp".into()));
            }
            let micros = pg_micros
                .checked_add(PG_EPOCH_MICROS)
                .ok_or_else(|| fail("a timestamp beyond the sink's range".into()))?;
            if pg == PgType::Timestamp {
                Value::Timestamp(Timestamp(micros))
            } else {
                Value::TimestampTz(TimestampTz(micros))
            }
        }
    };
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric_bytes(text: &str) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_numeric(text, &mut out).unwrap();
        out.to_vec()
    }

    fn words(words: &[i16]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_be_bytes()).collect()
    }

    #[test]
    fn numeric_binary_layout_matches_postgres() {
        // ndigits, weight, sign, dscale, digits: as PostgreSQL's numeric_send writes them.
        assert_eq!(numeric_bytes("0"), words(&[0, 0, 0, 0]));
        assert_eq!(numeric_bytes("0.000"), words(&[0, 0, 0, 3]));
        assert_eq!(numeric_bytes("1"), words(&[1, 0, 0, 0, 1]));
        assert_eq!(numeric_bytes("-1"), words(&[1, 0, 0x4000, 0, 1]));
        assert_eq!(numeric_bytes("10000"), words(&[1, 1, 0, 0, 1]));
        assert_eq!(
            numeric_bytes("12345.678"),
            words(&[3, 1, 0, 3, 1, 2345, 6780])
        );
        assert_eq!(numeric_bytes("0.0001"), words(&[1, -1, 0, 4, 1]));
        assert_eq!(numeric_bytes("0.00001"), words(&[1, -2, 0, 5, 1000]));
        assert_eq!(numeric_bytes("1.10"), words(&[2, 0, 0, 2, 1, 1000]));
        assert_eq!(
            numeric_bytes("-123456789.000100"),
            words(&[4, 2, 0x4000, 6, 1, 2345, 6789, 1])
        );
        assert_eq!(numeric_bytes("100000000"), words(&[1, 2, 0, 0, 1]));
    }

    #[test]
    fn numeric_round_trips_through_its_binary_form() {
        let mut cases: Vec<String> = [
            "0",
            "0.0",
            "0.10",
            "1",
            "-1",
            "9999",
            "10000",
            "-10000.0001",
            "0.00000001",
            "-0.5",
            "12345678901234567890.123456789012345678",
            "-123456789012345678901234567890.000100",
            "100000000000000000000",
            "0.000000000000000000000000000001000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        cases.push("9".repeat(1000));
        cases.push(format!("0.{}1", "0".repeat(998)));
        cases.push(format!("-{}.{}", "1".repeat(500), "2".repeat(500)));
        for text in cases {
            let decimal = Decimal::parse(&text).unwrap();
            let bytes = numeric_bytes(decimal.as_str());
            assert_eq!(decode_numeric(&bytes).unwrap(), text, "{text}");
        }
    }

    #[test]
    fn numeric_decoding_refuses_malformed_and_special_values() {
        assert!(decode_numeric(&words(&[0, 0, 0xC000u16 as i16, 0])).is_err());
        assert!(decode_numeric(&words(&[0, 0, 0xD000u16 as i16, 0])).is_err());
        assert!(decode_numeric(&words(&[1, 0, 0, 0])).is_err());
        assert!(decode_numeric(&words(&[1, 0, 0, 0, 10_000])).is_err());
        assert!(decode_numeric(&[0, 0]).is_err());
        // Digits beyond the stored ones are zero; a negative zero prints as zero.
        assert_eq!(
            decode_numeric(&words(&[1, 1, 0, 2, 5])).unwrap(),
            "50000.00"
        );
        assert_eq!(decode_numeric(&words(&[0, 0, 0x4000, 1])).unwrap(), "0.0");
    }

    #[test]
    fn dates_and_times_use_postgres_epoch_and_range() {
        assert_eq!(pg_date(Date::parse("2000-01-01").unwrap()), Ok(0));
        assert_eq!(pg_date(Date(0)), Ok(-10_957));
        assert!(pg_date(Date::parse("-4713-11-24").unwrap()).is_ok());
        assert!(pg_date(Date::parse("-4713-11-23").unwrap()).is_err());
        assert!(pg_date(Date(i32::MAX)).is_err());
        assert!(pg_date(Date(i32::MIN)).is_err());
        assert_eq!(pg_micros(PG_EPOCH_MICROS), Ok(0));
        assert!(pg_micros(i64::MIN).is_err());
        assert!(pg_micros(i64::MAX).is_ok(), "year 294247 fits PostgreSQL");
        let first = Timestamp::parse("-4713-11-24T00:00:00").unwrap().0;
        assert!(pg_micros(first).is_ok());
        assert!(pg_micros(first - 1).is_err());
    }

    #[test]
    fn checks_refuse_values_the_column_would_change() {
        let numeric = Target::of_column(
            ColumnType::Decimal,
            Type::NUMERIC.oid(),
            (6 << 16 | 2) + 4,
            "numeric(6,2)",
        )
        .unwrap();
        assert_eq!(
            numeric.limit,
            Limit::Numeric {
                precision: 6,
                scale: 2
            }
        );
        let d = |text: &str| Value::Decimal(Decimal::parse(text).unwrap());
        for good in ["0", "1234.56", "-1234.5", "0.100", "9999.99"] {
            assert!(check("c", &d(good), numeric).is_ok(), "{good}");
        }
        let code = |value: &Value, target| check("c", value, target).unwrap_err().code();
        assert_eq!(code(&d("1.234"), numeric), "postgres.value_would_round");
        assert_eq!(code(&d("12345.6"), numeric), "postgres.numeric_overflow");

        let int2 = Target::plain(PgType::Int2);
        assert!(check("c", &Value::I64(-32_768), int2).is_ok());
        assert_eq!(
            code(&Value::I64(32_768), int2),
            "postgres.value_out_of_range"
        );
        let int4 = Target::plain(PgType::Int4);
        assert_eq!(
            code(&Value::I64(i64::MAX), int4),
            "postgres.value_out_of_range"
        );

        let varchar =
            Target::of_column(ColumnType::Text, Type::VARCHAR.oid(), 3 + 4, "varchar(3)").unwrap();
        assert!(check("c", &Value::Text("ééé".into()), varchar).is_ok());
        assert_eq!(
            code(&Value::Text("abcd".into()), varchar),
            "postgres.value_too_long"
        );

        let seconds = Target::of_column(
            ColumnType::Timestamp,
            Type::TIMESTAMP.oid(),
            0,
            "timestamp(0)",
        )
        .unwrap();
        assert!(check("c", &Value::Timestamp(Timestamp(-3_000_000)), seconds).is_ok());
        assert_eq!(
            code(&Value::Timestamp(Timestamp(1_500_000)), seconds),
            "postgres.value_would_round"
        );
        let micros = Target::of_column(
            ColumnType::TimestampTz,
            Type::TIMESTAMPTZ.oid(),
            6,
            "timestamptz(6)",
        )
        .unwrap();
        assert_eq!(micros.limit, Limit::None);
        assert_eq!(
            code(&Value::TimestampTz(TimestampTz(i64::MIN)), micros),
            "postgres.value_out_of_range"
        );
        assert!(check("c", &Value::Null, int2).is_ok());
    }

    #[test]
    fn column_types_are_matched_strictly() {
        let oid = |ty: Type| ty.oid();
        assert!(
            Target::of_column(ColumnType::F64, oid(Type::FLOAT4), -1, "real")
                .unwrap_err()
                .contains("real rounds")
        );
        assert!(
            Target::of_column(ColumnType::Text, oid(Type::BPCHAR), 14, "character(10)")
                .unwrap_err()
                .contains("pads")
        );
        assert!(Target::of_column(ColumnType::I64, oid(Type::TEXT), -1, "text").is_err());
        assert!(
            Target::of_column(
                ColumnType::Decimal,
                oid(Type::NUMERIC),
                ((2 << 16) | (0x7ff & -3)) + 4,
                "numeric(2,-3)"
            )
            .unwrap_err()
            .contains("negative scale")
        );
        for column_type in ColumnType::ALL {
            let pg = PgType::default_for(column_type);
            assert!(pg.holds(column_type));
            assert_eq!(
                Target::of_column(column_type, pg.wire_type().oid(), -1, pg.sql_name()),
                Ok(Target::plain(pg))
            );
        }
    }

    #[test]
    fn encoded_values_decode_to_themselves() {
        let values = [
            (Value::Bool(true), PgType::Bool),
            (Value::I64(-7), PgType::Int2),
            (Value::I64(i64::MIN), PgType::Int8),
            (Value::F64(-0.0), PgType::Float8),
            (Value::Text("ü".into()), PgType::Varchar),
            (Value::Json(Json::parse("[1]").unwrap()), PgType::Jsonb),
            (Value::Json(Json::parse("{ }").unwrap()), PgType::Json),
            (Value::Uuid(Uuid([7; 16])), PgType::Uuid),
            (Value::Date(Date(-1)), PgType::Date),
            (Value::TimestampTz(TimestampTz(-1)), PgType::Timestamptz),
        ];
        for (value, pg) in values {
            let mut out = BytesMut::new();
            encode(&value, pg, &mut out).unwrap();
            let column_type = value.column_type().unwrap();
            let back = decode("c", column_type, &pg.wire_type(), Some(&out)).unwrap();
            assert!(back.same_as(&value), "{value:?} -> {back:?}");
        }
        assert!(encode(&Value::I64(1), PgType::Text, &mut BytesMut::new()).is_err());
    }
}
