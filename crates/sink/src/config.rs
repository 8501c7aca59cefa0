//! Sink configuration: a TOML file or a Rust builder, validated into [`SinkConfig`].
//!
//! Both paths go through [`SinkConfigBuilder`]: TOML deserialises into it (unknown keys are
//! errors), Rust code calls its setters, and [`SinkConfigBuilder::build`] fills in the defaults
//! and checks every limit and the relationships between limits once, naming the offending key.
//!
//! ```toml
//! mode = "upsert"
//! batch_rows_max = 1000
//! flush_interval_ms = 100
//! create_table = "if_missing"
//!
//! [dead_letter]
//! kind = "file"
//! path = "/var/lib/sluice/orders.dead.jsonl"
//! ```

use crate::ident::Ident;
use std::path::PathBuf;
use std::time::Duration;

/// Upper bound of `batch_rows_max`, in rows.
pub const BATCH_ROWS_MAX_LIMIT: usize = 1_000_000;
/// Upper bound of `batch_bytes_max`, in bytes (1 GiB).
pub const BATCH_BYTES_MAX_LIMIT: usize = 1 << 30;
/// Upper bound of `flush_interval_ms`, in milliseconds (one hour).
pub const FLUSH_INTERVAL_MS_LIMIT: u64 = 3_600_000;
/// Upper bound of `flush_concurrency`, in concurrent flushes.
pub const FLUSH_CONCURRENCY_LIMIT: usize = 64;
/// Upper bound of `buffer_bytes_max`, in bytes: one write reserves its bytes in one step, and
/// tokio's semaphore takes at most `u32::MAX` permits at once.
pub const BUFFER_BYTES_MAX_LIMIT: usize = u32::MAX as usize;
/// Upper bound of `retry_attempts_max`, in retries.
pub const RETRY_ATTEMPTS_MAX_LIMIT: u32 = 100;
/// Upper bound of `writer_id`.
pub const WRITER_ID_LIMIT: u32 = 65_535;
/// Upper bound of `retry_backoff_max_ms`, in milliseconds (one hour).
pub const RETRY_BACKOFF_MS_LIMIT: u64 = 3_600_000;

/// How rows change the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Append every row (`Op::Insert` only). The default. A key is optional.
    #[default]
    Insert,
    /// Insert or replace by key (`Op::Upsert`; `Op::Insert` counts as an upsert). Within a batch
    /// the last row of a key wins.
    Upsert,
    /// Delete by key (`Op::Delete` only).
    Delete,
    /// A change stream mixing upserts and deletes; the order of changes per key is kept.
    Changelog,
}

impl Mode {
    /// The configuration name.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Insert => "insert",
            Mode::Upsert => "upsert",
            Mode::Delete => "delete",
            Mode::Changelog => "changelog",
        }
    }

    /// Whether the mode addresses rows by key (and so needs one, and reduces batches by it).
    pub fn is_keyed(self) -> bool {
        self != Mode::Insert
    }
}

/// What a writer experiences when the buffer holds `buffer_bytes_max`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backpressure {
    /// `write` waits until flushes free enough space. The default.
    #[default]
    Block,
    /// `write` fails at once with `SinkError::BufferFull`.
    Error,
}

/// Whether the sink may create the target table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CreateTable {
    /// The table must exist. The default.
    #[default]
    Never,
    /// Create it from the schema when it does not exist.
    IfMissing,
}

/// Whether the sink may change an existing table. It never drops or alters a column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Evolve {
    /// Every schema column must exist. The default.
    #[default]
    None,
    /// Add schema columns the table lacks, when they are nullable.
    AddColumns,
}

/// How rows become visible, and what a crash may do to them.
///
/// | Delivery | Databases | Rows visible | After a crash |
/// |---|---|---|---|
/// | `at_least_once` | all | when their batch commits | rows since the caller's last `flush` may be written twice |
/// | `transactional_marker` | SQLite, PostgreSQL | at `pre_commit` (SQLite: one transaction of the checkpoint's rows plus the writer's progress row; PostgreSQL: one per lane, each with its lane's progress row) | exactly once: the progress rows name the last checkpoint in the table; one only some PostgreSQL lanes committed is replayed into the others (`Recovery::partial`) |
/// | `two_phase` | PostgreSQL | at `commit` (`COMMIT PREPARED`) | exactly once: prepared transactions after the restored checkpoint are rolled back |
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Plain flushes; each batch commits on its own. The default.
    #[default]
    AtLeastOnce,
    /// Checkpoint-aligned transactions whose progress row commits with the rows.
    TransactionalMarker,
    /// Checkpoint-aligned prepared transactions (PostgreSQL `PREPARE TRANSACTION`).
    TwoPhase,
}

impl Delivery {
    /// The configuration name.
    pub fn name(self) -> &'static str {
        match self {
            Delivery::AtLeastOnce => "at_least_once",
            Delivery::TransactionalMarker => "transactional_marker",
            Delivery::TwoPhase => "two_phase",
        }
    }

    /// Whether rows are written in checkpoint-aligned transactions.
    pub fn is_exactly_once(self) -> bool {
        self != Delivery::AtLeastOnce
    }
}

/// The longest `sink_id`, in bytes (it goes into PostgreSQL transaction ids, at most 200 bytes).
pub const SINK_ID_BYTES_MAX: usize = 63;

/// A sink's stable identity: `[A-Za-z0-9_-]`, 1 to 63 bytes. It names the sink's progress rows
/// and prepared transactions, so it must stay the same across restarts and differ between sinks
/// sharing a database.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct SinkId(String);

impl SinkId {
    /// Validates a sink id.
    pub fn new(id: &str) -> Result<SinkId, ConfigError> {
        let valid = !id.is_empty()
            && id.len() <= SINK_ID_BYTES_MAX
            && id
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
        if valid {
            Ok(SinkId(id.to_string()))
        } else {
            Err(ConfigError::Invalid {
                key: "sink_id",
                rule: format!(
                    "{:?} must be 1 to {SINK_ID_BYTES_MAX} bytes of [A-Za-z0-9_-]",
                    id.chars().take(80).collect::<String>()
                ),
            })
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SinkId {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for SinkId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<SinkId, D::Error> {
        let text = String::deserialize(deserializer)?;
        SinkId::new(&text).map_err(serde::de::Error::custom)
    }
}

/// Where rows that cannot be written go, with their error and the time.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DeadLetterConfig {
    /// A table in the target database, created when missing. The default, named
    /// `<table>_dead_letters`.
    Table {
        /// The table name. Default: `<table>_dead_letters`.
        #[serde(default)]
        table: Option<Ident>,
    },
    /// A JSON-lines file, appended to and synced after each batch's dead letters.
    File {
        /// The file path.
        path: PathBuf,
    },
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig::Table { table: None }
    }
}

/// Why a configuration is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The TOML text is malformed, has an unknown key or a value of the wrong type.
    #[error("invalid sink configuration: {0}")]
    Parse(String),
    /// A number is outside its allowed range.
    #[error("{key} = {value} is out of range: {rule}")]
    OutOfRange {
        /// The configuration key.
        key: &'static str,
        /// The value given.
        value: u64,
        /// The allowed range or relationship.
        rule: String,
    },
    /// A value or a combination of settings is not allowed.
    #[error("{key}: {rule}")]
    Invalid {
        /// The configuration key.
        key: &'static str,
        /// What is required.
        rule: String,
    },
}

impl ConfigError {
    /// A stable code for the error.
    pub fn code(&self) -> &'static str {
        match self {
            ConfigError::Parse(_) => "sink.config.parse",
            ConfigError::OutOfRange { .. } => "sink.config.out_of_range",
            ConfigError::Invalid { .. } => "sink.config.invalid",
        }
    }
}

/// A validated sink configuration. Build one with [`SinkConfig::builder`] or
/// [`SinkConfig::from_toml`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkConfig {
    batch_rows_max: usize,
    batch_bytes_max: usize,
    flush_interval_ms: u64,
    flush_concurrency: usize,
    flush_concurrency_adaptive: bool,
    buffer_bytes_max: usize,
    backpressure: Backpressure,
    retry_attempts_max: u32,
    retry_backoff_initial_ms: u64,
    retry_backoff_max_ms: u64,
    mode: Mode,
    create_table: CreateTable,
    evolve: Evolve,
    dead_letter: DeadLetterConfig,
    delivery: Delivery,
    sink_id: Option<SinkId>,
    writer_id: u32,
    progress_table: Ident,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfigBuilder::default()
            .build()
            .expect("the defaults are valid")
    }
}

impl SinkConfig {
    /// A builder with every field at its default.
    pub fn builder() -> SinkConfigBuilder {
        SinkConfigBuilder::default()
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<SinkConfig, ConfigError> {
        toml::from_str::<SinkConfigBuilder>(text)
            .map_err(|error| ConfigError::Parse(error.to_string()))?
            .build()
    }

    /// A batch is flushed when it holds this many rows.
    pub fn batch_rows_max(&self) -> usize {
        self.batch_rows_max
    }
    /// A batch is flushed when its rows take this many bytes (see `Row::size_bytes`); a single
    /// larger row forms a batch of its own.
    pub fn batch_bytes_max(&self) -> usize {
        self.batch_bytes_max
    }
    /// A non-empty batch is flushed at the latest this long after its first row arrived.
    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }
    /// Flushes running at the same time (one per lane).
    pub fn flush_concurrency(&self) -> usize {
        self.flush_concurrency
    }

    /// Whether at-least-once flushes adapt their concurrency to the load (up to
    /// `flush_concurrency`).
    pub fn flush_concurrency_adaptive(&self) -> bool {
        self.flush_concurrency_adaptive
    }
    /// Bytes of rows accepted but not yet durable, at most.
    pub fn buffer_bytes_max(&self) -> usize {
        self.buffer_bytes_max
    }
    /// What `write` does when the buffer is full.
    pub fn backpressure(&self) -> Backpressure {
        self.backpressure
    }
    /// Retries of a transient failure before the sink gives up.
    pub fn retry_attempts_max(&self) -> u32 {
        self.retry_attempts_max
    }
    /// Delay before the first retry (doubled each retry, with jitter).
    pub fn retry_backoff_initial(&self) -> Duration {
        Duration::from_millis(self.retry_backoff_initial_ms)
    }
    /// The longest delay between retries.
    pub fn retry_backoff_max(&self) -> Duration {
        Duration::from_millis(self.retry_backoff_max_ms)
    }
    /// The write mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }
    /// Whether the table may be created.
    pub fn create_table(&self) -> CreateTable {
        self.create_table
    }
    /// Whether columns may be added.
    pub fn evolve(&self) -> Evolve {
        self.evolve
    }
    /// The dead-letter destination.
    pub fn dead_letter(&self) -> &DeadLetterConfig {
        &self.dead_letter
    }
    /// How rows become visible.
    pub fn delivery(&self) -> Delivery {
        self.delivery
    }
    /// The sink's identity (required for exactly-once delivery).
    pub fn sink_id(&self) -> Option<&SinkId> {
        self.sink_id.as_ref()
    }
    /// This writer's number among the parallel writers of one sink.
    pub fn writer_id(&self) -> u32 {
        self.writer_id
    }
    /// The table holding each writer's last checkpoint (exactly-once delivery).
    pub fn progress_table(&self) -> &Ident {
        &self.progress_table
    }
}

/// Every setting, optional; [`SinkConfigBuilder::build`] applies the defaults documented on
/// each field. This is also the TOML format (unknown keys are refused).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfigBuilder {
    /// Rows per batch, 1 to 1,000,000. Default: 5,000 (a PostgreSQL COPY or statement costs
    /// the server a fixed setup per batch, about a fifth of a 1,000-row COPY's time; much larger
    /// batches hold an upsert's row locks longer and gain little).
    pub batch_rows_max: Option<usize>,
    /// Bytes per batch, 1 to 1 GiB. Default: 4 MiB.
    pub batch_bytes_max: Option<usize>,
    /// Longest wait before a non-empty batch is flushed, 1 to 3,600,000 ms. Default: 100 ms.
    pub flush_interval_ms: Option<u64>,
    /// Concurrent flushes, 1 to 64. Rows with the same key always take the same lane, so their
    /// order is kept. Default: 2.
    pub flush_concurrency: Option<usize>,
    /// At-least-once: whether the lanes writing at the same time follow the load, from 1 up to
    /// `flush_concurrency` (a pooled backend then keeps only the connections the load needs
    /// busy, and closes the idle ones): one more at once when writers wait for buffer space or
    /// a batch waits for its turn longer than `flush_interval_ms`, one fewer after two calm
    /// seconds in which one fewer would have done. Exactly-once lanes each hold their
    /// checkpoint's transaction, so this does not apply to them. Default: `true`.
    pub flush_concurrency_adaptive: Option<bool>,
    /// Bytes accepted but not yet durable, at least `batch_bytes_max * flush_concurrency` and at
    /// most 4 GiB - 1. Default: 16 MiB, or `2 * batch_bytes_max * flush_concurrency` when that
    /// is larger (room for every lane's batch in flight and the next one forming).
    pub buffer_bytes_max: Option<usize>,
    /// `"block"` or `"error"` when the buffer is full. Default: `"block"`.
    pub backpressure: Option<Backpressure>,
    /// Retries of a transient error, 0 to 100. Default: 5.
    pub retry_attempts_max: Option<u32>,
    /// First retry delay, 1 ms to `retry_backoff_max_ms`. Default: 100 ms.
    pub retry_backoff_initial_ms: Option<u64>,
    /// Longest retry delay, up to 3,600,000 ms. Default: 10,000 ms.
    pub retry_backoff_max_ms: Option<u64>,
    /// `"insert"`, `"upsert"`, `"delete"` or `"changelog"`. Default: `"insert"`.
    pub mode: Option<Mode>,
    /// `"never"` or `"if_missing"`. Default: `"never"`.
    pub create_table: Option<CreateTable>,
    /// `"none"` or `"add_columns"`. Default: `"none"`.
    pub evolve: Option<Evolve>,
    /// Dead-letter destination. Default: table `<table>_dead_letters`. With exactly-once
    /// delivery a dead-letter table is written in the checkpoint's transaction (exactly once); a
    /// dead-letter file is appended at once (at least once).
    pub dead_letter: Option<DeadLetterConfig>,
    /// `"at_least_once"`, `"transactional_marker"` or `"two_phase"`. Default:
    /// `"at_least_once"`.
    pub delivery: Option<Delivery>,
    /// The sink's stable identity, `[A-Za-z0-9_-]{1,63}`. Required for exactly-once delivery.
    pub sink_id: Option<SinkId>,
    /// This writer's number among the sink's parallel writers (subtasks), 0 to 65,535. Default:
    /// 0. Exactly-once holds per writer.
    pub writer_id: Option<u32>,
    /// The progress table for exactly-once delivery, created when missing. Default:
    /// `sluice_sink_progress`.
    pub progress_table: Option<Ident>,
}

macro_rules! setter {
    ($name:ident: $type:ty) => {
        #[doc = concat!("Sets `", stringify!($name), "` (see the field for its range and default).")]
        pub fn $name(mut self, value: $type) -> Self {
            self.$name = Some(value);
            self
        }
    };
}

impl SinkConfigBuilder {
    setter!(batch_rows_max: usize);
    setter!(batch_bytes_max: usize);
    setter!(flush_interval_ms: u64);
    setter!(flush_concurrency: usize);
    setter!(flush_concurrency_adaptive: bool);
    setter!(buffer_bytes_max: usize);
    setter!(backpressure: Backpressure);
    setter!(retry_attempts_max: u32);
    setter!(retry_backoff_initial_ms: u64);
    setter!(retry_backoff_max_ms: u64);
    setter!(mode: Mode);
    setter!(create_table: CreateTable);
    setter!(evolve: Evolve);
    setter!(dead_letter: DeadLetterConfig);
    setter!(delivery: Delivery);
    setter!(sink_id: SinkId);
    setter!(writer_id: u32);
    setter!(progress_table: Ident);

    /// Applies defaults and validates.
    pub fn build(self) -> Result<SinkConfig, ConfigError> {
        let batch_bytes_max = self.batch_bytes_max.unwrap_or(4 << 20);
        let flush_concurrency = self.flush_concurrency.unwrap_or(2);
        let config = SinkConfig {
            batch_rows_max: self.batch_rows_max.unwrap_or(5_000),
            batch_bytes_max,
            flush_interval_ms: self.flush_interval_ms.unwrap_or(100),
            flush_concurrency,
            flush_concurrency_adaptive: self.flush_concurrency_adaptive.unwrap_or(true),
            buffer_bytes_max: self.buffer_bytes_max.unwrap_or_else(|| {
                batch_bytes_max
                    .saturating_mul(flush_concurrency)
                    .saturating_mul(2)
                    .clamp(16 << 20, BUFFER_BYTES_MAX_LIMIT)
            }),
            backpressure: self.backpressure.unwrap_or_default(),
            retry_attempts_max: self.retry_attempts_max.unwrap_or(5),
            retry_backoff_initial_ms: self.retry_backoff_initial_ms.unwrap_or(100),
            retry_backoff_max_ms: self.retry_backoff_max_ms.unwrap_or(10_000),
            mode: self.mode.unwrap_or_default(),
            create_table: self.create_table.unwrap_or_default(),
            evolve: self.evolve.unwrap_or_default(),
            dead_letter: self.dead_letter.unwrap_or_default(),
            delivery: self.delivery.unwrap_or_default(),
            sink_id: self.sink_id,
            writer_id: self.writer_id.unwrap_or(0),
            progress_table: match self.progress_table {
                Some(table) => table,
                None => Ident::new("sluice_sink_progress").expect("a valid name"),
            },
        };
        if config.delivery.is_exactly_once() && config.sink_id.is_none() {
            return Err(ConfigError::Invalid {
                key: "sink_id",
                rule: format!(
                    "delivery = \"{}\" needs a sink_id naming this sink's progress",
                    config.delivery.name()
                ),
            });
        }
        check_range(
            "writer_id",
            u64::from(config.writer_id),
            0,
            u64::from(WRITER_ID_LIMIT),
        )?;
        check_range(
            "batch_rows_max",
            config.batch_rows_max as u64,
            1,
            BATCH_ROWS_MAX_LIMIT as u64,
        )?;
        check_range(
            "batch_bytes_max",
            config.batch_bytes_max as u64,
            1,
            BATCH_BYTES_MAX_LIMIT as u64,
        )?;
        check_range(
            "flush_interval_ms",
            config.flush_interval_ms,
            1,
            FLUSH_INTERVAL_MS_LIMIT,
        )?;
        check_range(
            "flush_concurrency",
            config.flush_concurrency as u64,
            1,
            FLUSH_CONCURRENCY_LIMIT as u64,
        )?;
        check_range(
            "retry_attempts_max",
            u64::from(config.retry_attempts_max),
            0,
            u64::from(RETRY_ATTEMPTS_MAX_LIMIT),
        )?;
        check_range(
            "retry_backoff_max_ms",
            config.retry_backoff_max_ms,
            1,
            RETRY_BACKOFF_MS_LIMIT,
        )?;
        check_range(
            "retry_backoff_initial_ms",
            config.retry_backoff_initial_ms,
            1,
            config.retry_backoff_max_ms,
        )?;
        // Below this the lanes could never fill their batches by size at the same time, and
        // flushes would only ever be triggered by the interval.
        let buffer_floor = config.batch_bytes_max as u64 * config.flush_concurrency as u64;
        if (config.buffer_bytes_max as u64) < buffer_floor {
            return Err(ConfigError::OutOfRange {
                key: "buffer_bytes_max",
                value: config.buffer_bytes_max as u64,
                rule: format!(
                    "must be at least batch_bytes_max * flush_concurrency = {buffer_floor} bytes"
                ),
            });
        }
        check_range(
            "buffer_bytes_max",
            config.buffer_bytes_max as u64,
            1,
            BUFFER_BYTES_MAX_LIMIT as u64,
        )?;
        Ok(config)
    }
}

fn check_range(key: &'static str, value: u64, low: u64, high: u64) -> Result<(), ConfigError> {
    if (low..=high).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            key,
            value,
            rule: format!("allowed {low} to {high}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let config = SinkConfig::default();
        assert_eq!(config.batch_rows_max(), 5_000);
        assert_eq!(config.batch_bytes_max(), 4 << 20);
        assert_eq!(config.flush_interval(), Duration::from_millis(100));
        assert_eq!(config.flush_concurrency(), 2);
        assert!(config.flush_concurrency_adaptive());
        assert_eq!(config.buffer_bytes_max(), 16 << 20);
        assert_eq!(config.backpressure(), Backpressure::Block);
        assert_eq!(config.retry_attempts_max(), 5);
        assert_eq!(config.mode(), Mode::Insert);
        assert_eq!(config.create_table(), CreateTable::Never);
        assert_eq!(config.evolve(), Evolve::None);
        assert_eq!(
            config.dead_letter(),
            &DeadLetterConfig::Table { table: None }
        );
        assert_eq!(SinkConfig::from_toml("").unwrap(), config);
    }

    #[test]
    fn the_default_buffer_grows_with_the_lanes_and_the_batch_size() {
        let config = SinkConfig::builder().flush_concurrency(8).build().unwrap();
        assert_eq!(config.buffer_bytes_max(), 2 * 8 * (4 << 20));
        let config = SinkConfig::builder()
            .batch_bytes_max(1 << 20)
            .build()
            .unwrap();
        assert_eq!(config.buffer_bytes_max(), 16 << 20);
        let config = SinkConfig::builder()
            .flush_concurrency(8)
            .buffer_bytes_max(40 << 20)
            .build();
        assert!(
            config.is_ok(),
            "an explicit buffer is kept when it is large enough"
        );
    }

    #[test]
    fn toml_with_every_key() {
        let config = SinkConfig::from_toml(
            r#"
            batch_rows_max = 500
            batch_bytes_max = 1048576
            flush_interval_ms = 250
            flush_concurrency = 4
            buffer_bytes_max = 16777216
            backpressure = "error"
            retry_attempts_max = 3
            retry_backoff_initial_ms = 10
            retry_backoff_max_ms = 1000
            mode = "changelog"
            create_table = "if_missing"
            evolve = "add_columns"
            [dead_letter]
            kind = "file"
            path = "/tmp/bad.jsonl"
            "#,
        )
        .unwrap();
        assert_eq!(config.batch_rows_max(), 500);
        assert_eq!(config.flush_concurrency(), 4);
        assert_eq!(config.backpressure(), Backpressure::Error);
        assert_eq!(config.mode(), Mode::Changelog);
        assert_eq!(config.create_table(), CreateTable::IfMissing);
        assert_eq!(config.evolve(), Evolve::AddColumns);
        assert_eq!(
            config.dead_letter(),
            &DeadLetterConfig::File {
                path: "/tmp/bad.jsonl".into()
            }
        );
        let table =
            SinkConfig::from_toml("[dead_letter]\nkind = \"table\"\ntable = \"bad_rows\"").unwrap();
        assert_eq!(
            table.dead_letter(),
            &DeadLetterConfig::Table {
                table: Some(Ident::new("bad_rows").unwrap())
            }
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_by_name() {
        for (text, needle) in [
            ("batch_rows = 5", "batch_rows"),
            ("mode = \"merge\"", "merge"),
            (
                "[dead_letter]\nkind = \"file\"\npath = \"x\"\ntable = \"y\"",
                "table",
            ),
            (
                "[dead_letter]\nkind = \"table\"\ntable = \"a b\"",
                "identifier",
            ),
            ("flush_interval_ms = -1", "flush_interval_ms"),
        ] {
            let error = SinkConfig::from_toml(text).unwrap_err();
            assert_eq!(error.code(), "sink.config.parse");
            assert!(error.to_string().contains(needle), "{text}: {error}");
        }
        for (builder, key) in [
            (SinkConfig::builder().batch_rows_max(0), "batch_rows_max"),
            (
                SinkConfig::builder().flush_concurrency(65),
                "flush_concurrency",
            ),
            (
                SinkConfig::builder().flush_interval_ms(0),
                "flush_interval_ms",
            ),
            (
                SinkConfig::builder().retry_backoff_initial_ms(20_000),
                "retry_backoff_initial_ms",
            ),
            (
                SinkConfig::builder()
                    .batch_bytes_max(1 << 20)
                    .flush_concurrency(4)
                    .buffer_bytes_max(1 << 21),
                "buffer_bytes_max",
            ),
            (
                SinkConfig::builder().buffer_bytes_max(usize::MAX),
                "buffer_bytes_max",
            ),
        ] {
            match builder.build().unwrap_err() {
                ConfigError::OutOfRange { key: found, .. } => assert_eq!(found, key),
                other => panic!("{other}"),
            }
        }
    }
}
