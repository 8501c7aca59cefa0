//! Typed values and column types.
//!
//! Every value the sink accepts has one exact meaning, so backends can store it without
//! guessing: decimals are exact text, JSON is the caller's text, times are integers of a fixed
//! unit with a fixed epoch. Conversions from text (`parse`) are strict and never round.

use std::fmt;

/// The most significant digits a [`Decimal`] may have (before and after the point together).
pub const DECIMAL_DIGITS_MAX: usize = 1000;

/// Microseconds in a day.
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Why a text could not be turned into a value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    /// Not a canonical decimal.
    #[error("invalid decimal {text:?}: {reason}")]
    Decimal {
        /// The input, truncated to 80 characters.
        text: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Not valid JSON.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// Not a UUID.
    #[error("invalid UUID {0:?}")]
    Uuid(String),
    /// Not a valid date, timestamp or offset, or out of range.
    #[error("invalid {kind} {text:?}: {reason}")]
    Time {
        /// `date`, `timestamp` or `timestamp with time zone`.
        kind: &'static str,
        /// The input, truncated to 80 characters.
        text: String,
        /// What is wrong.
        reason: &'static str,
    },
}

impl ValueError {
    /// A stable code for the error.
    pub fn code(&self) -> &'static str {
        match self {
            ValueError::Decimal { .. } => "sink.value.decimal",
            ValueError::Json(_) => "sink.value.json",
            ValueError::Uuid(_) => "sink.value.uuid",
            ValueError::Time { .. } => "sink.value.time",
        }
    }
}

fn shown(text: &str) -> String {
    text.chars().take(80).collect()
}

/// The type of a column, independent of any database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// `true` or `false`.
    Bool,
    /// A signed 64-bit integer (smaller integers widen to it).
    I64,
    /// An IEEE-754 double, including NaN and the infinities.
    F64,
    /// An exact decimal number, see [`Decimal`].
    Decimal,
    /// UTF-8 text.
    Text,
    /// Binary data.
    Bytes,
    /// A JSON document, see [`Json`].
    Json,
    /// A 16-byte UUID.
    Uuid,
    /// A calendar date without time zone.
    Date,
    /// A date and time of day without time zone, in microseconds.
    Timestamp,
    /// An instant, in UTC microseconds.
    TimestampTz,
}

impl ColumnType {
    /// Every column type, for exhaustive tests.
    pub const ALL: [ColumnType; 11] = [
        ColumnType::Bool,
        ColumnType::I64,
        ColumnType::F64,
        ColumnType::Decimal,
        ColumnType::Text,
        ColumnType::Bytes,
        ColumnType::Json,
        ColumnType::Uuid,
        ColumnType::Date,
        ColumnType::Timestamp,
        ColumnType::TimestampTz,
    ];

    /// The configuration name (`timestamp_tz`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Bool => "bool",
            ColumnType::I64 => "i64",
            ColumnType::F64 => "f64",
            ColumnType::Decimal => "decimal",
            ColumnType::Text => "text",
            ColumnType::Bytes => "bytes",
            ColumnType::Json => "json",
            ColumnType::Uuid => "uuid",
            ColumnType::Date => "date",
            ColumnType::Timestamp => "timestamp",
            ColumnType::TimestampTz => "timestamp_tz",
        }
    }

    /// Whether the type may be part of a key. Floats (NaN, -0.0), JSON (no equality in
    /// PostgreSQL) and decimals (`1.0` and `1.00` are different text but the same number) are
    /// refused, because the in-batch reduction compares keys exactly and the database would
    /// not agree with it.
    pub fn can_be_key(self) -> bool {
        !matches!(
            self,
            ColumnType::F64 | ColumnType::Json | ColumnType::Decimal
        )
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// An exact decimal number kept as its canonical text: `-?(0|[1-9][0-9]*)(\.[0-9]+)?`, not
/// negative zero, at most [`DECIMAL_DIGITS_MAX`] digits.
///
/// Trailing zeros after the point are kept (they are the scale: `1.10` stays `1.10`). Forms a
/// numeric database type would rewrite (`007`, `-0`, `+1`, `1e3`, `.5`) are refused, so what is
/// written is exactly what is read back.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Decimal(String);

impl Decimal {
    /// Validates `text`.
    pub fn parse(text: &str) -> Result<Decimal, ValueError> {
        let fail = |reason| ValueError::Decimal {
            text: shown(text),
            reason,
        };
        let unsigned = text.strip_prefix('-').unwrap_or(text);
        let (integer, fraction) = match unsigned.split_once('.') {
            Some((integer, fraction)) => (integer, Some(fraction)),
            None => (unsigned, None),
        };
        if integer.is_empty() || !integer.bytes().all(|b| b.is_ascii_digit()) {
            return Err(fail("the integer part must be one or more digits"));
        }
        if integer.len() > 1 && integer.starts_with('0') {
            return Err(fail("leading zeros are not canonical"));
        }
        if let Some(fraction) = fraction
            && (fraction.is_empty() || !fraction.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(fail("the fraction must be one or more digits"));
        }
        let digits = integer.len() + fraction.map_or(0, str::len);
        if digits > DECIMAL_DIGITS_MAX {
            return Err(fail("more than DECIMAL_DIGITS_MAX (1000) digits"));
        }
        let all_zero = integer == "0" && fraction.is_none_or(|f| f.bytes().all(|b| b == b'0'));
        if text.starts_with('-') && all_zero {
            return Err(fail("negative zero is not canonical"));
        }
        Ok(Decimal(text.to_string()))
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// A JSON document kept as the caller's text (validated), so key order and number spelling
/// survive backends that store text. Backends with a binary JSON type (PostgreSQL `jsonb`) may
/// normalise it; compare documents with [`Json::to_value`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Json(String);

impl Json {
    /// Validates `text` as one JSON document.
    pub fn parse(text: &str) -> Result<Json, ValueError> {
        serde_json::from_str::<serde::de::IgnoredAny>(text)
            .map_err(|error| ValueError::Json(error.to_string()))?;
        Ok(Json(text.to_string()))
    }

    /// Serialises a document.
    pub fn from_value(value: &serde_json::Value) -> Json {
        Json(value.to_string())
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The parsed document.
    pub fn to_value(&self) -> serde_json::Value {
        // Validated at construction, so parsing cannot fail.
        serde_json::from_str(&self.0).expect("Json holds validated JSON")
    }
}

/// A UUID as its 16 bytes (big-endian, as in RFC 9562).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// Parses a UUID's text as PostgreSQL reads it: 32 hexadecimal digits in either case, plain
    /// or in the 8-4-4-4-12 form with hyphens, also braced (`{...}`) or as a URN
    /// (`urn:uuid:...`). The `uuid` crate does the parsing.
    pub fn parse(text: &str) -> Result<Uuid, ValueError> {
        uuid::Uuid::try_parse(text)
            .map(|parsed| Uuid(parsed.into_bytes()))
            .map_err(|_| ValueError::Uuid(shown(text)))
    }
}

impl fmt::Display for Uuid {
    /// The lowercase 8-4-4-4-12 form.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&uuid::Uuid::from_bytes(self.0).hyphenated(), formatter)
    }
}

/// A calendar date (proleptic Gregorian), as days since 1970-01-01.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Date(pub i32);

impl Date {
    /// The date `year-month-day`; fails for impossible dates (Feb 30) or years out of range.
    pub fn from_ymd(year: i32, month: u32, day: u32) -> Result<Date, ValueError> {
        let fail = |reason| ValueError::Time {
            kind: "date",
            text: format!("{year}-{month}-{day}"),
            reason,
        };
        if !(1..=12).contains(&month) || day < 1 || day > days_in_month(i64::from(year), month) {
            return Err(fail("no such day"));
        }
        let days = days_from_civil(i64::from(year), month, day);
        i32::try_from(days)
            .map(Date)
            .map_err(|_| fail("out of range"))
    }

    /// Year, month (1-12) and day (1-31).
    pub fn to_ymd(self) -> (i64, u32, u32) {
        civil_from_days(i64::from(self.0))
    }

    /// Parses `YYYY-MM-DD` (years outside 0000-9999 written with a sign, as ISO 8601 allows).
    pub fn parse(text: &str) -> Result<Date, ValueError> {
        let (days, rest) = parse_date_prefix(text, "date")?;
        if !rest.is_empty() {
            return Err(time_error("date", text, "unexpected text after the date"));
        }
        i32::try_from(days)
            .map(Date)
            .map_err(|_| time_error("date", text, "out of range"))
    }
}

impl fmt::Display for Date {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_date(formatter, i64::from(self.0))
    }
}

/// A date and time of day without time zone: microseconds since 1970-01-01T00:00:00, as the
/// wall clock reads, never shifted by any zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Parses `YYYY-MM-DDTHH:MM:SS[.ffffff]` (a space may replace the `T`; at most six
    /// fractional digits, because more would be rounded).
    pub fn parse(text: &str) -> Result<Timestamp, ValueError> {
        let (micros, rest) = parse_timestamp_prefix(text, "timestamp")?;
        if !rest.is_empty() {
            return Err(time_error(
                "timestamp",
                text,
                "unexpected text after the time (a timestamp without time zone takes no offset)",
            ));
        }
        Ok(Timestamp(micros))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_timestamp(formatter, self.0)
    }
}

/// An instant: microseconds since 1970-01-01T00:00:00Z. Offsets given at parse time are applied
/// and not kept (as PostgreSQL's `timestamptz` does).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimestampTz(pub i64);

impl TimestampTz {
    /// Parses RFC 3339: `YYYY-MM-DDTHH:MM:SS[.ffffff]` followed by `Z` or `+HH:MM` / `-HH:MM`.
    pub fn parse(text: &str) -> Result<TimestampTz, ValueError> {
        const KIND: &str = "timestamp with time zone";
        let (local, rest) = parse_timestamp_prefix(text, KIND)?;
        let offset_seconds: i64 = match rest.as_bytes() {
            [b'Z' | b'z'] => 0,
            [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
                let hours = two_digits(*h1, *h2)
                    .filter(|h| *h <= 23)
                    .ok_or_else(|| time_error(KIND, text, "bad offset hours"))?;
                let minutes = two_digits(*m1, *m2)
                    .filter(|m| *m <= 59)
                    .ok_or_else(|| time_error(KIND, text, "bad offset minutes"))?;
                let magnitude = i64::from(hours * 3600 + minutes * 60);
                if *sign == b'-' { -magnitude } else { magnitude }
            }
            _ => {
                return Err(time_error(
                    KIND,
                    text,
                    "expected Z or an offset like +05:30 after the time",
                ));
            }
        };
        local
            .checked_sub(offset_seconds * 1_000_000)
            .map(TimestampTz)
            .ok_or_else(|| time_error(KIND, text, "out of range"))
    }
}

impl fmt::Display for TimestampTz {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_timestamp(formatter, self.0)?;
        formatter.write_str("Z")
    }
}

/// One value of a row.
///
/// `PartialEq` follows IEEE-754 for floats (NaN is not equal to itself); use
/// [`Value::same_as`] to compare exactly.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A boolean.
    Bool(bool),
    /// A 64-bit signed integer.
    I64(i64),
    /// A double, any bit pattern.
    F64(f64),
    /// An exact decimal.
    Decimal(Decimal),
    /// Text.
    Text(String),
    /// Binary data.
    Bytes(Vec<u8>),
    /// A JSON document.
    Json(Json),
    /// A UUID.
    Uuid(Uuid),
    /// A date.
    Date(Date),
    /// A timestamp without time zone.
    Timestamp(Timestamp),
    /// An instant.
    TimestampTz(TimestampTz),
}

/// As a person reads it, for previews and messages: `NULL`, `true`, numbers and text as they
/// are, bytes as `\x` and hex, the others in their ISO or JSON text. Not a SQL literal.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Bool(value) => write!(f, "{value}"),
            Value::I64(value) => write!(f, "{value}"),
            Value::F64(value) => write!(f, "{value}"),
            Value::Decimal(value) => write!(f, "{value}"),
            Value::Text(value) => f.write_str(value),
            Value::Bytes(bytes) => {
                f.write_str("\\x")?;
                bytes.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
            }
            Value::Json(value) => f.write_str(value.as_str()),
            Value::Uuid(value) => write!(f, "{value}"),
            Value::Date(value) => write!(f, "{value}"),
            Value::Timestamp(value) => write!(f, "{value}"),
            Value::TimestampTz(value) => write!(f, "{value}"),
        }
    }
}

impl Value {
    /// The type of the value; `None` for NULL, which fits every nullable column.
    pub fn column_type(&self) -> Option<ColumnType> {
        Some(match self {
            Value::Null => return None,
            Value::Bool(_) => ColumnType::Bool,
            Value::I64(_) => ColumnType::I64,
            Value::F64(_) => ColumnType::F64,
            Value::Decimal(_) => ColumnType::Decimal,
            Value::Text(_) => ColumnType::Text,
            Value::Bytes(_) => ColumnType::Bytes,
            Value::Json(_) => ColumnType::Json,
            Value::Uuid(_) => ColumnType::Uuid,
            Value::Date(_) => ColumnType::Date,
            Value::Timestamp(_) => ColumnType::Timestamp,
            Value::TimestampTz(_) => ColumnType::TimestampTz,
        })
    }

    /// Exact equality: floats compare by bits, except that every NaN equals every NaN (backends
    /// are not required to keep NaN payloads). JSON compares as text.
    pub fn same_as(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::F64(a), Value::F64(b)) => {
                (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
            }
            _ => self == other,
        }
    }

    /// Bytes the value holds on the heap (text, binary, decimal and JSON payloads), counted as
    /// the allocator hands them out (see [`allocated_bytes`]). Together with the fixed size of
    /// the `Value` itself this is what holding the value costs.
    pub fn heap_bytes(&self) -> usize {
        allocated_bytes(match self {
            Value::Decimal(decimal) => decimal.0.capacity(),
            Value::Text(text) => text.capacity(),
            Value::Bytes(bytes) => bytes.capacity(),
            Value::Json(json) => json.0.capacity(),
            _ => 0,
        })
    }
}

/// What an allocation of `requested` bytes costs the process, as glibc's malloc hands it out:
/// a word of bookkeeping, rounded up to 16 bytes, at least 32. Buffer limits count this, so a
/// limit of N bytes holds about N bytes of memory; allocators without a per-block header
/// (jemalloc, which the `sluice` binary uses, or mimalloc) hand out a little less, so the
/// limit errs on the safe side.
pub fn allocated_bytes(requested: usize) -> usize {
    if requested == 0 {
        0
    } else {
        (requested.saturating_add(8).div_ceil(16) * 16).max(32)
    }
}

macro_rules! widen_to_i64 {
    ($($from:ty),*) => {$(
        impl From<$from> for Value {
            fn from(value: $from) -> Value {
                Value::I64(i64::from(value))
            }
        }
    )*};
}
widen_to_i64!(i8, i16, i32, i64, u8, u16, u32);

impl From<bool> for Value {
    fn from(value: bool) -> Value {
        Value::Bool(value)
    }
}
impl From<f64> for Value {
    fn from(value: f64) -> Value {
        Value::F64(value)
    }
}
impl From<f32> for Value {
    fn from(value: f32) -> Value {
        Value::F64(f64::from(value))
    }
}
impl From<&str> for Value {
    fn from(value: &str) -> Value {
        Value::Text(value.to_string())
    }
}
impl From<String> for Value {
    fn from(value: String) -> Value {
        Value::Text(value)
    }
}
impl From<Vec<u8>> for Value {
    fn from(value: Vec<u8>) -> Value {
        Value::Bytes(value)
    }
}
impl From<Decimal> for Value {
    fn from(value: Decimal) -> Value {
        Value::Decimal(value)
    }
}
impl From<Json> for Value {
    fn from(value: Json) -> Value {
        Value::Json(value)
    }
}
impl From<Uuid> for Value {
    fn from(value: Uuid) -> Value {
        Value::Uuid(value)
    }
}
impl From<Date> for Value {
    fn from(value: Date) -> Value {
        Value::Date(value)
    }
}
impl From<Timestamp> for Value {
    fn from(value: Timestamp) -> Value {
        Value::Timestamp(value)
    }
}
impl From<TimestampTz> for Value {
    fn from(value: TimestampTz) -> Value {
        Value::TimestampTz(value)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(value: Option<T>) -> Value {
        value.map_or(Value::Null, Into::into)
    }
}

fn time_error(kind: &'static str, text: &str, reason: &'static str) -> ValueError {
    ValueError::Time {
        kind,
        text: shown(text),
        reason,
    }
}

fn two_digits(a: u8, b: u8) -> Option<u32> {
    (a.is_ascii_digit() && b.is_ascii_digit())
        .then(|| u32::from(a - b'0') * 10 + u32::from(b - b'0'))
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(year) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // Both are small by construction (1..=31 and 1..=12).
    (year, month as u32, day as u32)
}

fn write_date(formatter: &mut fmt::Formatter<'_>, days: i64) -> fmt::Result {
    let (year, month, day) = civil_from_days(days);
    if (0..=9999).contains(&year) {
        write!(formatter, "{year:04}-{month:02}-{day:02}")
    } else {
        write!(formatter, "{year:+05}-{month:02}-{day:02}")
    }
}

fn write_timestamp(formatter: &mut fmt::Formatter<'_>, micros: i64) -> fmt::Result {
    let days = micros.div_euclid(MICROS_PER_DAY);
    let of_day = micros.rem_euclid(MICROS_PER_DAY);
    write_date(formatter, days)?;
    let seconds = of_day / 1_000_000;
    write!(
        formatter,
        "T{:02}:{:02}:{:02}.{:06}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60,
        of_day % 1_000_000
    )
}

/// Parses `[+-]YYYY-MM-DD` at the start of `text`; returns days since the epoch and the rest.
fn parse_date_prefix<'a>(text: &'a str, kind: &'static str) -> Result<(i64, &'a str), ValueError> {
    let bytes = text.as_bytes();
    let (negative, start) = match bytes.first() {
        Some(b'-') => (true, 1),
        Some(b'+') => (false, 1),
        _ => (false, 0),
    };
    let year_digits = bytes[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if !(4..=7).contains(&year_digits) || (start == 1 && year_digits < 4) {
        return Err(time_error(kind, text, "expected a year of 4 to 7 digits"));
    }
    let year_end = start + year_digits;
    // At most 7 ASCII digits: fits an i64.
    let magnitude: i64 = text[start..year_end]
        .parse()
        .map_err(|_| time_error(kind, text, "bad year"))?;
    let year = if negative { -magnitude } else { magnitude };
    let rest = &bytes[year_end..];
    let (month, day) = match rest {
        [b'-', m1, m2, b'-', d1, d2, ..] => (
            two_digits(*m1, *m2).ok_or_else(|| time_error(kind, text, "bad month"))?,
            two_digits(*d1, *d2).ok_or_else(|| time_error(kind, text, "bad day"))?,
        ),
        _ => return Err(time_error(kind, text, "expected YYYY-MM-DD")),
    };
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(time_error(kind, text, "no such day"));
    }
    Ok((days_from_civil(year, month, day), &text[year_end + 6..]))
}

/// Parses a date, `T` or space, `HH:MM:SS[.ffffff]`; returns microseconds and the rest.
fn parse_timestamp_prefix<'a>(
    text: &'a str,
    kind: &'static str,
) -> Result<(i64, &'a str), ValueError> {
    let (days, rest) = parse_date_prefix(text, kind)?;
    let bytes = rest.as_bytes();
    let (hours, minutes, seconds) = match bytes {
        [b'T' | b't' | b' ', h1, h2, b':', m1, m2, b':', s1, s2, ..] => (
            two_digits(*h1, *h2)
                .filter(|h| *h <= 23)
                .ok_or_else(|| time_error(kind, text, "bad hour"))?,
            two_digits(*m1, *m2)
                .filter(|m| *m <= 59)
                .ok_or_else(|| time_error(kind, text, "bad minute"))?,
            // Leap seconds (:60) are refused: neither target database keeps them.
            two_digits(*s1, *s2)
                .filter(|s| *s <= 59)
                .ok_or_else(|| time_error(kind, text, "bad second"))?,
        ),
        _ => return Err(time_error(kind, text, "expected THH:MM:SS after the date")),
    };
    let mut rest = &rest[9..];
    let mut fraction_micros = 0i64;
    if let Some(after_point) = rest.strip_prefix('.') {
        let digits = after_point.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 6 {
            return Err(time_error(
                kind,
                text,
                "the fraction must have 1 to 6 digits (microseconds)",
            ));
        }
        let value: i64 = after_point[..digits]
            .parse()
            .map_err(|_| time_error(kind, text, "bad fraction"))?;
        fraction_micros = value * 10i64.pow(6 - digits as u32);
        rest = &after_point[digits..];
    }
    let of_day = i64::from(hours * 3600 + minutes * 60 + seconds) * 1_000_000 + fraction_micros;
    days.checked_mul(MICROS_PER_DAY)
        .and_then(|micros| micros.checked_add(of_day))
        .map(|micros| (micros, rest))
        .ok_or_else(|| time_error(kind, text, "out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written calendar (kept for PostgreSQL's range of years, which reaches past
    /// 9999, and for speed on the ingest's path) agrees with jiff's wherever jiff's reaches
    /// (years -9999 to 9999): days to dates and back, and the text of timestamps.
    mod against_jiff {
        use super::*;
        use proptest::prelude::*;

        fn jiff_date(days: i64) -> jiff::civil::Date {
            jiff::civil::date(1970, 1, 1)
                .checked_add(jiff::Span::new().days(days))
                .unwrap()
        }

        proptest! {
            #[test]
            fn days_and_dates(days in days_from_civil(-9999, 1, 1)..=days_from_civil(9999, 12, 31)) {
                let expected = jiff_date(days);
                let ours = civil_from_days(days);
                prop_assert_eq!(
                    ours,
                    (i64::from(expected.year()), expected.month() as u32, expected.day() as u32)
                );
                prop_assert_eq!(days_from_civil(ours.0, ours.1, ours.2), days);
                if expected.year() >= 0 {
                    let text = expected.strftime("%Y-%m-%d").to_string();
                    prop_assert_eq!(Date::parse(&text).unwrap().0 as i64, days);
                    prop_assert_eq!(Date(days as i32).to_string(), text);
                }
            }

            #[test]
            fn timestamps(
                days in days_from_civil(0, 1, 1)..=days_from_civil(9999, 12, 31),
                of_day in 0..MICROS_PER_DAY,
            ) {
                let micros = days * MICROS_PER_DAY + of_day;
                let expected = jiff_date(days)
                    .to_datetime(jiff::civil::Time::midnight())
                    .checked_add(jiff::Span::new().microseconds(of_day))
                    .unwrap()
                    .strftime("%Y-%m-%dT%H:%M:%S%.6f")
                    .to_string();
                prop_assert_eq!(Timestamp(micros).to_string(), expected.clone());
                prop_assert_eq!(Timestamp::parse(&expected).unwrap().0, micros);
                prop_assert_eq!(TimestampTz::parse(&format!("{expected}Z")).unwrap().0, micros);
            }
        }
    }

    #[test]
    fn values_display_as_a_person_reads_them() {
        let shown = [
            (Value::Null, "NULL"),
            (Value::Bool(false), "false"),
            (Value::I64(-7), "-7"),
            (Value::F64(0.5), "0.5"),
            (Value::Text("NA".into()), "NA"),
            (Value::Bytes(vec![0, 255]), "\\x00ff"),
            (Value::Json(Json::parse("{\"a\":1}").unwrap()), "{\"a\":1}"),
            (
                Value::Date(Date::parse("2013-01-01").unwrap()),
                "2013-01-01",
            ),
            (
                Value::TimestampTz(TimestampTz::parse("2013-01-01T10:00:00+01:00").unwrap()),
                "2013-01-01T09:00:00.000000Z",
            ),
        ];
        for (value, text) in shown {
            assert_eq!(value.to_string(), text);
        }
    }

    #[test]
    fn decimals_are_canonical_text() {
        for good in [
            "0",
            "1.10",
            "-12.5",
            "0.000",
            "123456789012345678901234567890.1",
        ] {
            assert_eq!(Decimal::parse(good).unwrap().as_str(), good);
        }
        for bad in [
            "", "-", "01", "-0", "-0.00", "+1", "1e3", ".5", "5.", "1.2.3", "NaN", " 1",
        ] {
            assert!(Decimal::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Decimal::parse(&"9".repeat(DECIMAL_DIGITS_MAX)).is_ok());
        assert!(Decimal::parse(&"9".repeat(DECIMAL_DIGITS_MAX + 1)).is_err());
    }

    #[test]
    fn uuids_parse_and_print() {
        let text = "0192f3a4-5b6c-7d8e-9fa0-b1c2d3e4f5a6";
        let uuid = Uuid::parse(text).unwrap();
        assert_eq!(uuid.to_string(), text);
        assert_eq!(Uuid::parse(&text.replace('-', "")).unwrap(), uuid);
        assert_eq!(Uuid::parse(&text.to_uppercase()).unwrap(), uuid);
        assert_eq!(Uuid::parse(&format!("{{{text}}}")).unwrap(), uuid);
        assert_eq!(Uuid::parse(&format!("urn:uuid:{text}")).unwrap(), uuid);
        for bad in [
            "",
            "0192f3a4-5b6c-7d8e-9fa0-b1c2d3e4f5a",
            "0192f3a45b6c-7d8e-9fa0-b1c2d3e4f5a6-",
            "g".repeat(32).as_str(),
        ] {
            assert!(Uuid::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dates_round_trip_through_the_calendar() {
        for days in [-800_000, -719_528, -1, 0, 1, 10_957, 2_932_896, 3_000_000] {
            let (year, month, day) = civil_from_days(days);
            assert_eq!(days_from_civil(year, month, day), days);
        }
        assert_eq!(Date::from_ymd(1970, 1, 1).unwrap(), Date(0));
        assert_eq!(Date::from_ymd(2000, 3, 1).unwrap(), Date(11_017));
        assert_eq!(Date::parse("2024-02-29").unwrap().to_string(), "2024-02-29");
        assert_eq!(Date::parse("0001-01-01").unwrap().to_ymd(), (1, 1, 1));
        assert_eq!(
            Date::parse("-0044-03-15").unwrap().to_string(),
            "-0044-03-15"
        );
        assert_eq!(
            Date::parse("+12345-01-01").unwrap().to_string(),
            "+12345-01-01"
        );
        for bad in [
            "2023-02-29",
            "2024-13-01",
            "2024-1-1",
            "24-01-01",
            "2024-01-01x",
        ] {
            assert!(Date::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn timestamps_parse_print_and_apply_offsets() {
        let ts = Timestamp::parse("1969-12-31T23:59:59.999999").unwrap();
        assert_eq!(ts, Timestamp(-1));
        assert_eq!(ts.to_string(), "1969-12-31T23:59:59.999999");
        assert_eq!(
            Timestamp::parse("1970-01-01 00:00:01.5").unwrap(),
            Timestamp(1_500_000)
        );
        assert!(Timestamp::parse("1970-01-01T00:00:00Z").is_err());
        assert!(Timestamp::parse("1970-01-01T00:00:00.1234567").is_err());
        assert!(Timestamp::parse("1970-01-01T24:00:00").is_err());

        let utc = TimestampTz::parse("2024-03-10T21:00:00Z").unwrap();
        let india = TimestampTz::parse("2024-03-11T02:30:00+05:30").unwrap();
        let newfoundland = TimestampTz::parse("2024-03-10T17:30:00-03:30").unwrap();
        assert_eq!(utc, india);
        assert_eq!(utc, newfoundland);
        assert_eq!(india.to_string(), "2024-03-10T21:00:00.000000Z");
        assert!(TimestampTz::parse("2024-03-10T21:00:00").is_err());
        assert!(TimestampTz::parse("2024-03-10T21:00:00+24:00").is_err());
    }

    #[test]
    fn json_is_validated_and_kept_verbatim() {
        let text = r#"{"b": 1.50, "a": [true, null]}"#;
        assert_eq!(Json::parse(text).unwrap().as_str(), text);
        assert!(Json::parse("{").is_err());
        assert!(Json::parse("1 2").is_err());
    }

    #[test]
    fn exact_comparison_of_floats() {
        assert!(Value::F64(f64::NAN).same_as(&Value::F64(-f64::NAN)));
        assert!(!Value::F64(0.0).same_as(&Value::F64(-0.0)));
        assert!(Value::F64(f64::INFINITY).same_as(&Value::F64(f64::INFINITY)));
        assert_eq!(Value::from(7u8), Value::I64(7));
        assert_eq!(Value::from(None::<i32>), Value::Null);
    }
}
