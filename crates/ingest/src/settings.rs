//! A pipeline's settings: one declaration for the TOML file and the command line
//! ([`PipelineSettings`]), validated into a [`Pipeline`] before anything is opened.

use crate::error::UsageError;
use crate::jetstream::JetStreamPlan;
use crate::mapping::ColumnConfig;
use crate::source::{self, Input};
use sluice_sink::{CreateTable, Delivery, Mode, Op, SinkConfigBuilder, SinkId};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::source::Format;

/// How records change the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum IngestMode {
    /// Append every record.
    Insert,
    /// Insert or replace by the key.
    Upsert,
    /// Delete by the key.
    Delete,
}

/// The journal of a SQLite target (`--sqlite-journal`, the pipeline key `sqlite_journal`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum SqliteJournal {
    /// Write-ahead log, the default: other processes read the last committed state at any
    /// time, while a checkpoint's transaction is open.
    #[default]
    Wal,
    /// Rollback journal (`journal_mode = TRUNCATE`): a checkpoint's rows go to the database file
    /// once, with no copy from the WAL after the commit, so long checkpoint intervals cost far
    /// less (bench/results/README.md, "Sink round 5": a 10 s checkpoint's commit 6.6 s -> 1.0
    /// s). But a reader waits while a commit (or a large held transaction spilling to the file)
    /// holds the database's exclusive lock: for loads nothing reads until they finish.
    Rollback,
}

impl SqliteJournal {
    fn journal(self) -> sluice_sink_sqlite::Journal {
        match self {
            SqliteJournal::Wal => sluice_sink_sqlite::Journal::Wal,
            SqliteJournal::Rollback => sluice_sink_sqlite::Journal::Rollback,
        }
    }
}

/// What happens to the record fields no column reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unmapped {
    /// They are ignored (`unmapped = "ignore"`, the default).
    Ignore,
    /// They are kept, as one JSON object, in this column (`unmapped = { column = "NAME" }`,
    /// `--unmapped-into NAME`).
    Column(String),
}

impl Unmapped {
    /// `--unmapped-into NAME`: the column, validated.
    pub fn column(name: &str) -> Result<Unmapped, UsageError> {
        sluice_sink::Ident::new(name)
            .map_err(|error| UsageError::new("unmapped.column", error.to_string()))?;
        Ok(Unmapped::Column(name.to_string()))
    }
}

impl<'de> serde::Deserialize<'de> for Unmapped {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Unmapped, D::Error> {
        use serde::de::Error as _;
        let value = toml::Value::deserialize(deserializer)?;
        let problem = |shown: String| {
            D::Error::custom(format!(
                "unmapped: {shown} must be \"ignore\" or {{ column = \"NAME\" }}"
            ))
        };
        match &value {
            toml::Value::String(text) if text == "ignore" => Ok(Unmapped::Ignore),
            toml::Value::String(text) => Err(problem(format!("{text:?}"))),
            toml::Value::Table(table) if table.len() == 1 => match table.get("column") {
                Some(toml::Value::String(name)) => {
                    Unmapped::column(name).map_err(|error| D::Error::custom(error.to_string()))
                }
                _ => Err(problem("this table".into())),
            },
            other => Err(problem(format!("a {}", other.type_str()))),
        }
    }
}

/// Declares the settings once: the struct (TOML keys and, with the `cli` feature, the
/// command-line flags of the same names) and [`PipelineSettings::overlay`].
macro_rules! pipeline_settings {
    (
        $(#[$struct_meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* pub $field:ident : Option<$type:ty>, )*
        }
    ) => {
        $(#[$struct_meta])*
        pub struct $name {
            $( $(#[$field_meta])* pub $field: Option<$type>, )*
        }

        impl $name {
            /// These settings, with every one that `over` sets replaced by its value (the
            /// command line over the file).
            pub fn overlay(self, over: $name) -> $name {
                $name { $( $field: over.$field.or(self.$field), )* }
            }
        }
    };
}

pipeline_settings! {
    /// Every setting of a pipeline, each optional: the pipeline file's keys (TOML, unknown
    /// keys refused) and, with the `cli` feature, the flags of `sluice ingest` (`--from`,
    /// `--checkpoint-interval-ms`, ...). [`Pipeline::new`] validates them and applies the
    /// defaults.
    #[derive(Clone, Debug, Default, serde::Deserialize)]
    #[cfg_attr(feature = "cli", derive(clap::Args))]
    #[serde(deny_unknown_fields)]
    pub struct PipelineSettings {
        /// A file, a glob (`data/*.ndjson.gz`), `-` for standard input, or a NATS server
        /// (`nats://HOST:PORT`, with --stream, --consumer and optionally --subject): each message
        /// one JSON object.
        #[cfg_attr(feature = "cli", arg(long))]
        pub from: Option<String>,
        /// JetStream: the stream to read.
        #[cfg_attr(feature = "cli", arg(long))]
        pub stream: Option<String>,
        /// JetStream: a subject filter (`orders.>`); by default every subject of the stream.
        #[cfg_attr(feature = "cli", arg(long))]
        pub subject: Option<String>,
        /// JetStream: the durable pull consumer's name (created when missing, ack policy "all").
        #[cfg_attr(feature = "cli", arg(long))]
        pub consumer: Option<String>,
        /// Keep reading: wait for the last file to grow (like `tail -f`; not gzip) or for new
        /// messages, until stopped (SIGINT or SIGTERM), which stops at a checkpoint.
        #[cfg_attr(feature = "cli", arg(long, num_args = 0, default_missing_value = "true"))]
        pub follow: Option<bool>,
        /// `sqlite://PATH` or `postgres://user@host/db`.
        #[cfg_attr(feature = "cli", arg(long))]
        pub into: Option<String>,
        /// SQLite targets: the database's journal. `wal` (the default) lets other processes
        /// read while a checkpoint is open; `rollback` makes long checkpoint intervals much
        /// cheaper, but readers wait for each commit.
        #[cfg_attr(feature = "cli", arg(long, value_enum))]
        pub sqlite_journal: Option<SqliteJournal>,
        /// The target table.
        #[cfg_attr(feature = "cli", arg(long))]
        pub table: Option<String>,
        /// Key columns, comma-separated (required by upsert and delete).
        #[cfg_attr(feature = "cli", arg(long, value_delimiter = ','))]
        pub key: Option<Vec<String>>,
        /// How records change the table. Default: insert.
        #[cfg_attr(feature = "cli", arg(long, value_enum))]
        pub mode: Option<IngestMode>,
        /// Record format; by default from the file extension.
        #[cfg_attr(feature = "cli", arg(long, value_enum))]
        pub format: Option<Format>,
        /// CSV field delimiter: one ASCII character, or `tab`.
        #[cfg_attr(feature = "cli", arg(long))]
        pub delimiter: Option<String>,
        /// Plain batches instead of exactly-once delivery; no position is stored, so a restart
        /// starts from the beginning (JetStream: acknowledged after each flush, a restart resumes
        /// from the consumer's position).
        #[cfg_attr(feature = "cli", arg(long, num_args = 0, default_missing_value = "true"))]
        pub at_least_once: Option<bool>,
        /// Checkpoint interval in milliseconds, 1 to 3,600,000. Default: 1,000.
        #[cfg_attr(feature = "cli", arg(long))]
        pub checkpoint_interval_ms: Option<u64>,
        /// Serve Prometheus metrics on this address (for example 127.0.0.1:9187); the binary
        /// serves them, a library user installs its own recorder.
        #[cfg_attr(feature = "cli", arg(long))]
        pub metrics_listen: Option<String>,
        /// Keep the fields no column reads, as one JSON object, in this column (the pipeline
        /// key `unmapped = { column = "..." }`). Default: they are ignored.
        #[cfg_attr(feature = "cli", arg(long = "unmapped-into", value_name = "COLUMN", value_parser = parse_unmapped))]
        pub unmapped: Option<Unmapped>,
        /// A field whose text is one of these is NULL (repeatable: `--null NA --null ""`; the
        /// pipeline key `null = ["NA", ""]`; a column's own `null` list replaces it). CSV fields
        /// and NDJSON string values. Default: none (an empty CSV field stays the empty string in a
        /// `text` column and NULL in the others).
        #[cfg_attr(feature = "cli", arg(long, value_name = "TEXT"))]
        pub null: Option<Vec<String>>,
        /// CSV into a new table without `[columns]`: the records whose values decide each
        /// column's type (integers, floats, booleans, dates, timestamps with and without zone,
        /// else text), 0 to 100,000; 0 makes every column text. Default: 1,000.
        #[cfg_attr(feature = "cli", arg(long))]
        pub infer_rows_max: Option<u64>,
        /// The sink's configuration (`[sink]`; see the sink's documentation).
        #[cfg_attr(feature = "cli", arg(skip))]
        pub sink: Option<SinkConfigBuilder>,
        /// The mapping (`[columns]`): column name -> `{ type, source, path, default, nullable }`.
        #[cfg_attr(feature = "cli", arg(skip))]
        pub columns: Option<BTreeMap<String, ColumnConfig>>,
        /// Read, frame and map the records but write nothing (no database is opened): prints the
        /// records, rows and refusals counted, the time and the CPU time. Needs `[columns]` or
        /// a first record to infer from.
        #[cfg_attr(feature = "cli", arg(long, hide = true, num_args = 0, default_missing_value = "true"))]
        #[serde(skip)]
        pub parse_only: Option<bool>,
    }
}

#[cfg(feature = "cli")]
fn parse_unmapped(name: &str) -> Result<Unmapped, UsageError> {
    Unmapped::column(name)
}

impl PipelineSettings {
    /// Reads a pipeline file (TOML).
    pub fn from_toml_file(path: &Path) -> Result<PipelineSettings, UsageError> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            UsageError::new("config", format!("cannot read {}: {error}", path.display()))
        })?;
        toml::from_str(&text).map_err(|error| {
            UsageError::new(
                "config",
                format!("{}: {}", path.display(), error.to_string().trim_end()),
            )
        })
    }

    /// Parses pipeline settings from TOML text.
    pub fn from_toml(text: &str) -> Result<PipelineSettings, UsageError> {
        toml::from_str(text)
            .map_err(|error| UsageError::new("config", error.to_string().trim_end().to_string()))
    }
}

/// Records CSV type inference samples by default.
const INFER_ROWS_DEFAULT: usize = 1_000;
/// At most (they are held in memory until the table is settled).
const INFER_ROWS_MAX: usize = 100_000;

/// Where rows go.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    Sqlite {
        path: PathBuf,
        journal: sluice_sink_sqlite::Journal,
    },
    Postgres(String),
}

/// A pipeline's settings, validated and resolved (files listed, formats known), before
/// anything is opened. [`Pipeline::run`](crate::Pipeline::run) runs it.
#[derive(Clone, Debug)]
pub struct Pipeline {
    /// The source as printed (no credentials); a file position stores it.
    pub(crate) source: String,
    /// The files, or standard input; empty for a JetStream source.
    pub(crate) inputs: Vec<Input>,
    /// A JetStream source.
    pub(crate) jetstream: Option<JetStreamPlan>,
    pub(crate) follow: bool,
    pub(crate) format: Format,
    pub(crate) delimiter: u8,
    pub(crate) target: Target,
    pub(crate) table: String,
    pub(crate) key: Vec<String>,
    pub(crate) op: Op,
    pub(crate) columns: Option<BTreeMap<String, ColumnConfig>>,
    pub(crate) unmapped: Option<String>,
    pub(crate) nulls: Vec<String>,
    pub(crate) infer_rows_max: usize,
    pub(crate) sink: SinkConfigBuilder,
    pub(crate) checkpoint_interval: Duration,
    pub(crate) metrics_listen: Option<std::net::SocketAddr>,
    pub(crate) stdin: bool,
    pub(crate) parse_only: bool,
}

fn required(value: Option<String>, key: &str, flag: &str) -> Result<String, UsageError> {
    value.ok_or_else(|| {
        UsageError::new(
            key,
            format!("missing: pass {flag} or set {key} in --config"),
        )
    })
}

impl Pipeline {
    /// Validates `settings` and applies the defaults; lists the files a glob matches. Opens
    /// nothing.
    pub fn new(settings: PipelineSettings) -> Result<Pipeline, UsageError> {
        let source = required(settings.from, "from", "--from")?;
        let into = required(settings.into, "into", "--into")?;
        let table = required(settings.table, "table", "--table")?;
        sluice_sink::Ident::new(&table)
            .map_err(|error| UsageError::new("table", error.to_string()))?;
        let key = settings.key.unwrap_or_default();
        let mode_set = settings.mode.is_some();
        let mode = settings.mode.unwrap_or(IngestMode::Insert);
        let (op, sink_mode) = match mode {
            IngestMode::Insert => (Op::Insert, Mode::Insert),
            IngestMode::Upsert => (Op::Upsert, Mode::Upsert),
            IngestMode::Delete => (Op::Delete, Mode::Delete),
        };
        if sink_mode.is_keyed() && key.is_empty() {
            return Err(UsageError::new(
                "key",
                format!("mode {} needs key columns (--key a,b)", sink_mode.name()),
            ));
        }
        let delimiter = match settings.delimiter.as_deref() {
            None => b',',
            Some("tab" | "\\t" | "\t") => b'\t',
            Some(text) if text.len() == 1 && text.is_ascii() && text != "\"" && text != "\n" => {
                text.as_bytes()[0]
            }
            Some(text) => {
                return Err(UsageError::new(
                    "delimiter",
                    format!(
                        "{text:?} must be one ASCII character other than a quote or newline, or \"tab\""
                    ),
                ));
            }
        };
        let target = if let Some(path) = into.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(UsageError::new(
                    "into",
                    "sqlite:// needs a path: sqlite://PATH",
                ));
            }
            Target::Sqlite {
                path: PathBuf::from(path),
                journal: settings.sqlite_journal.unwrap_or_default().journal(),
            }
        } else if into.starts_with("postgres://") || into.starts_with("postgresql://") {
            if settings.sqlite_journal.is_some() {
                return Err(UsageError::new(
                    "sqlite_journal",
                    "applies to a sqlite:// target only",
                ));
            }
            Target::Postgres(into)
        } else {
            // The URL may hold a password: name only its scheme.
            let scheme = into
                .split_once("://")
                .map_or("(none)", |(scheme, _)| scheme);
            return Err(UsageError::new(
                "into",
                format!("unsupported scheme {scheme:?}: use sqlite://PATH or postgres://..."),
            ));
        };
        let checkpoint_interval_ms = settings.checkpoint_interval_ms.unwrap_or(1_000);
        if !(1..=3_600_000).contains(&checkpoint_interval_ms) {
            return Err(UsageError::new(
                "checkpoint_interval_ms",
                format!("{checkpoint_interval_ms} is out of range: allowed 1 to 3600000"),
            ));
        }
        let metrics_listen = match settings.metrics_listen {
            None => None,
            Some(text) => Some(text.parse().map_err(|error| {
                UsageError::new(
                    "metrics_listen",
                    format!("{text:?} is not host:port: {error}"),
                )
            })?),
        };
        let unmapped = match settings.unmapped {
            Some(Unmapped::Column(name)) => Some(name),
            Some(Unmapped::Ignore) | None => None,
        };
        let follow = settings.follow.unwrap_or(false);
        let parse_only = settings.parse_only.unwrap_or(false);
        let (stream, subject, consumer) = (settings.stream, settings.subject, settings.consumer);
        let format = settings.format;
        let (source, inputs, format, jetstream) = if source.starts_with("nats://") {
            if format == Some(Format::Csv) {
                return Err(UsageError::new(
                    "format",
                    "a JetStream message is one JSON object (NDJSON); CSV messages are not supported",
                ));
            }
            if parse_only {
                return Err(UsageError::new(
                    "parse_only",
                    "measures a file source, not JetStream",
                ));
            }
            let plan = JetStreamPlan::new(&source, stream, subject, consumer)?;
            (plan.describe(), Vec::new(), Format::Ndjson, Some(plan))
        } else {
            for (key, value) in [
                ("stream", &stream),
                ("subject", &subject),
                ("consumer", &consumer),
            ] {
                if value.is_some() {
                    return Err(UsageError::new(
                        key,
                        "applies only to a JetStream source (--from nats://HOST:PORT)",
                    ));
                }
            }
            let (inputs, format) = source::resolve(&source, format)?;
            if follow
                && let Some(Input::File {
                    gzip: true, path, ..
                }) = inputs.last()
            {
                return Err(UsageError::new(
                    "follow",
                    format!(
                        "{} is gzip-compressed: only a plain file can be followed",
                        path.display()
                    ),
                ));
            }
            (source, inputs, format, None)
        };
        let stdin = matches!(inputs.first(), Some(Input::Stdin));
        let infer_rows_max = match settings.infer_rows_max {
            None => INFER_ROWS_DEFAULT,
            Some(rows) if rows <= INFER_ROWS_MAX as u64 => rows as usize,
            Some(rows) => {
                return Err(UsageError::new(
                    "infer_rows_max",
                    format!("{rows} is more than {INFER_ROWS_MAX}"),
                ));
            }
        };
        let at_least_once = settings.at_least_once.unwrap_or(false) || stdin;
        let mut sink = settings.sink.unwrap_or_default();
        if sink.mode.is_some_and(|configured| configured != sink_mode) && !mode_set {
            return Err(UsageError::new(
                "sink.mode",
                "set the mode with --mode or the top-level mode key",
            ));
        }
        sink.mode = Some(sink_mode);
        if sink.create_table.is_none() {
            sink.create_table = Some(CreateTable::IfMissing);
        }
        if at_least_once {
            sink.delivery = Some(Delivery::AtLeastOnce);
        } else if sink
            .delivery
            .is_none_or(|delivery| !delivery.is_exactly_once())
        {
            sink.delivery = Some(Delivery::TransactionalMarker);
        }
        if sink.sink_id.is_none() {
            let derived: String = format!("ingest-{table}")
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .take(sluice_sink::SINK_ID_BYTES_MAX)
                .collect();
            sink.sink_id = Some(
                SinkId::new(&derived)
                    .map_err(|error| UsageError::new("sink.sink_id", error.to_string()))?,
            );
        }
        // Validate the whole sink configuration now, before anything is opened.
        sink.clone()
            .build()
            .map_err(|error| UsageError::new("sink", error.to_string()))?;
        Ok(Pipeline {
            source,
            inputs,
            jetstream,
            follow,
            format,
            delimiter,
            target,
            table,
            key,
            op,
            columns: settings.columns,
            unmapped,
            nulls: settings.null.unwrap_or_default(),
            infer_rows_max,
            sink,
            checkpoint_interval: Duration::from_millis(checkpoint_interval_ms),
            metrics_listen,
            stdin,
            parse_only,
        })
    }

    /// The source as shown in messages (a JetStream URL without credentials).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The target table.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The address to serve Prometheus metrics on, when set.
    pub fn metrics_listen(&self) -> Option<std::net::SocketAddr> {
        self.metrics_listen
    }

    /// Whether the source is standard input (which cannot be re-read after a restart, so the
    /// pipeline runs at least once).
    pub fn reads_stdin(&self) -> bool {
        self.stdin
    }

    /// Whether the run only reads, frames and maps (no database is opened).
    pub fn parse_only(&self) -> bool {
        self.parse_only
    }
}
