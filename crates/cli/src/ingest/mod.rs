//! `sluice ingest`: moves records from files, standard input or a NATS JetStream stream into a
//! database table through the sink, exactly once by default.
//!
//! Pipeline: a reader (a thread for files, a task for JetStream) frames records (`format`),
//! maps them to rows or refusals (`mapping`) and hands chunks to the async loop, which writes
//! rows (`Sink::write`), sends refused records to the dead letters (`Sink::reject`) and
//! checkpoints every `checkpoint_interval_ms`: `pre_commit(id, position)` then `commit(id)`,
//! where the position (`source::SourcePosition`: file and byte offset of the next record, or
//! the stream sequence of the last record read) commits in the same transaction as the rows and
//! dead letters before it (`delivery = "transactional_marker"`). A restart recovers with
//! `Resume::Committed` and seeks the source to the committed position, so a record is never
//! written twice nor skipped. With `[sink] delivery = "two_phase"` (PostgreSQL) each lane
//! prepares its part of a checkpoint with the position, and `commit` makes them visible; a
//! restart recovers to the highest checkpoint a lane committed (see `two_phase_restored`), which
//! completes that checkpoint and rolls back later prepared ones. JetStream messages are
//! acknowledged after the checkpoint that contains them committed (`jetstream`).
//!
//! Before anything is written the columns are settled (`mapping`): declared, read from the
//! existing table (`describe_table` of the backend), or inferred from the first record.
//!
//! `--follow` keeps reading: at the end of the last file (plain, not gzip), the reader polls
//! every [`FOLLOW_POLL`] for more bytes, and hands over only records whose terminating newline
//! arrived (a partial last line, or a CSV record whose quoted field is still open, is not a
//! record yet; `source::complete_records_end`); a JetStream reader keeps pulling. Checkpoints go on at their
//! interval meanwhile; SIGINT or SIGTERM stops the run at a checkpoint (exit 130). Only the
//! last file of a glob is followed, files the glob matches later are not picked up, and a
//! followed file that shrinks (truncated or replaced) fails the run.
//!
//! Standard input cannot be re-read after a restart, so it is ingested at least once (a note
//! says so). `--at-least-once` stores no position: a restarted run starts from the beginning
//! (JetStream: from the consumer's acknowledgement floor).

mod format;
mod jetstream;
mod mapping;
mod progress;
mod source;

use anyhow::{Context, Result, anyhow};
use format::{Frame, Framer, Payload};
use mapping::{ColumnConfig, Mapper, TableColumn};
use progress::Progress;
use sluice_sink::{
    BackendError, CreateTable, Delivery, Mode, Op, Rejected, Resume, Row, Sink, SinkBackend,
    SinkConfigBuilder, SinkError, SinkId,
};
use source::{Format, Input, Position, SourcePosition};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Records per chunk handed from the reader to the sink, at most.
const CHUNK_RECORDS_MAX: usize = 2_048;
/// Raw bytes per chunk, at most (under the sink's default 16 MiB buffer, which counts a row as
/// its allocations: a chunk must fit the buffer in one write).
const CHUNK_BYTES_MAX: usize = 4 << 20;
/// A chunk is handed over at the latest this long after its first record.
const CHUNK_INTERVAL: Duration = Duration::from_millis(50);
/// Examples shown by `sluice ingest --help`.
pub(crate) const EXAMPLES: &str = "\
Examples:
  sluice ingest --from 'logs/*.ndjson.gz' --into sqlite://logs.db --table logs
  sluice ingest --from app.ndjson --into sqlite://app.db --table events --follow
  sluice ingest --from nats://127.0.0.1:4222 --stream ORDERS --subject 'orders.>' \\
      --consumer orders-to-db --into postgres://app@localhost/app --table orders --follow

JetStream: each message is one JSON object. The durable pull consumer is created when missing
(ack policy \"all\"); messages are acknowledged after the checkpoint that holds them committed,
and a restart resumes after the committed stream sequence. Without --follow the run ends when
the consumer has nothing pending.";

/// How often a followed file is checked for new bytes when its end was reached.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// Exit code of a bad usage or configuration.
const EXIT_USAGE: u8 = 2;
/// Exit code of a run stopped by SIGINT or SIGTERM at a checkpoint (128 + SIGINT).
const EXIT_INTERRUPTED: u8 = 130;

/// The write mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum IngestMode {
    /// Append every record.
    Insert,
    /// Insert or replace by `--key`.
    Upsert,
    /// Delete by `--key`.
    Delete,
}

/// `sluice ingest` arguments; each overrides the same key of `--config`.
#[derive(clap::Args, Debug)]
pub(crate) struct IngestArgs {
    /// A file, a glob (`data/*.ndjson.gz`), `-` for standard input, or a NATS server
    /// (`nats://HOST:PORT`, with --stream, --consumer and optionally --subject): each message
    /// one JSON object.
    #[arg(long)]
    from: Option<String>,
    /// JetStream: the stream to read.
    #[arg(long)]
    stream: Option<String>,
    /// JetStream: a subject filter (`orders.>`); by default every subject of the stream.
    #[arg(long)]
    subject: Option<String>,
    /// JetStream: the durable pull consumer's name (created when missing, ack policy "all").
    #[arg(long)]
    consumer: Option<String>,
    /// Keep reading: wait for the last file to grow (like `tail -f`; not gzip) or for new
    /// messages, until SIGINT or SIGTERM, which stop at a checkpoint.
    #[arg(long)]
    follow: bool,
    /// `sqlite://PATH` or `postgres://user@host/db`.
    #[arg(long)]
    into: Option<String>,
    /// The target table.
    #[arg(long)]
    table: Option<String>,
    /// Key columns, comma-separated (required by upsert and delete).
    #[arg(long, value_delimiter = ',')]
    key: Option<Vec<String>>,
    /// How records change the table.
    #[arg(long, value_enum)]
    mode: Option<IngestMode>,
    /// Record format; by default from the file extension.
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// CSV field delimiter: one ASCII character, or `tab`.
    #[arg(long)]
    delimiter: Option<String>,
    /// A pipeline file (TOML): these keys, `[sink]` (the sink's configuration) and
    /// `[columns]` (the mapping).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Plain batches instead of exactly-once delivery; no position is stored, so a restart
    /// starts from the beginning (JetStream: acknowledged after each flush, a restart resumes
    /// from the consumer's position).
    #[arg(long)]
    at_least_once: bool,
    /// Checkpoint interval in milliseconds, 1 to 3,600,000. Default: 1,000.
    #[arg(long)]
    checkpoint_interval_ms: Option<u64>,
    /// Serve Prometheus metrics on this address (for example 127.0.0.1:9187).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Keep the fields no column reads, as one JSON object, in this column (the pipeline
    /// key `unmapped = { column = "..." }`). Default: they are ignored.
    #[arg(long, value_name = "COLUMN")]
    unmapped_into: Option<String>,
    /// Read, frame and map the records but write nothing (no database is opened): prints the
    /// records, rows and refusals counted, the time and the CPU time. Needs `[columns]` or
    /// a first record to infer from.
    #[arg(long, hide = true)]
    parse_only: bool,
}

/// The pipeline file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineFile {
    from: Option<String>,
    stream: Option<String>,
    subject: Option<String>,
    consumer: Option<String>,
    follow: Option<bool>,
    into: Option<String>,
    table: Option<String>,
    key: Option<Vec<String>>,
    mode: Option<IngestMode>,
    format: Option<Format>,
    delimiter: Option<String>,
    at_least_once: Option<bool>,
    checkpoint_interval_ms: Option<u64>,
    metrics_listen: Option<String>,
    /// `"ignore"` or `{ column = "NAME" }`.
    unmapped: Option<toml::Value>,
    sink: Option<SinkConfigBuilder>,
    columns: Option<BTreeMap<String, ColumnConfig>>,
}

/// The pipeline key `unmapped`: `"ignore"` (`None`) or `{ column = "NAME" }`.
fn unmapped_column(value: &toml::Value) -> Result<Option<String>, UsageError> {
    let problem = || {
        UsageError::new(
            "unmapped",
            match value {
                toml::Value::String(text) => {
                    format!("{text:?} must be \"ignore\" or {{ column = \"NAME\" }}")
                }
                other => format!(
                    "a {} must be \"ignore\" or {{ column = \"NAME\" }}",
                    other.type_str()
                ),
            },
        )
    };
    match value {
        toml::Value::String(text) if text == "ignore" => Ok(None),
        toml::Value::Table(table) if table.len() == 1 => match table.get("column") {
            Some(toml::Value::String(name)) => {
                sluice_sink::Ident::new(name)
                    .map_err(|error| UsageError::new("unmapped.column", error.to_string()))?;
                Ok(Some(name.clone()))
            }
            _ => Err(problem()),
        },
        _ => Err(problem()),
    }
}

/// A bad usage or configuration: the key and the problem. Exit code 2.
#[derive(Debug)]
pub(crate) struct UsageError {
    key: String,
    problem: String,
}

impl UsageError {
    pub(crate) fn new(key: &str, problem: impl Into<String>) -> UsageError {
        UsageError {
            key: key.to_string(),
            problem: problem.into(),
        }
    }
}

impl std::fmt::Display for UsageError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}: {}", self.key, self.problem)
    }
}

enum Target {
    Sqlite(PathBuf),
    Postgres(String),
}

/// Everything resolved and validated before anything is opened.
struct Plan {
    /// The source as printed (no credentials); a file position stores it.
    source: String,
    /// The files, or standard input; empty for a JetStream source.
    inputs: Vec<Input>,
    /// A JetStream source.
    jetstream: Option<jetstream::JetStreamPlan>,
    follow: bool,
    format: Format,
    delimiter: u8,
    target: Target,
    table: String,
    key: Vec<String>,
    op: Op,
    columns: Option<BTreeMap<String, ColumnConfig>>,
    unmapped: Option<String>,
    sink: SinkConfigBuilder,
    checkpoint_interval: Duration,
    metrics_listen: Option<std::net::SocketAddr>,
    stdin: bool,
    parse_only: bool,
}

fn required(value: Option<String>, key: &str, flag: &str) -> Result<String, UsageError> {
    value.ok_or_else(|| {
        UsageError::new(
            key,
            format!("missing: pass {flag} or set {key} in --config"),
        )
    })
}

fn plan(args: IngestArgs) -> Result<Plan, UsageError> {
    let file = match &args.config {
        None => PipelineFile::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|error| {
                UsageError::new("config", format!("cannot read {}: {error}", path.display()))
            })?;
            toml::from_str(&text).map_err(|error| {
                UsageError::new(
                    "config",
                    format!("{}: {}", path.display(), error.to_string().trim_end()),
                )
            })?
        }
    };
    let source = required(args.from.or(file.from), "from", "--from")?;
    let into = required(args.into.or(file.into), "into", "--into")?;
    let table = required(args.table.or(file.table), "table", "--table")?;
    sluice_sink::Ident::new(&table).map_err(|error| UsageError::new("table", error.to_string()))?;
    let key = args.key.or(file.key).unwrap_or_default();
    let mode = args.mode.or(file.mode).unwrap_or(IngestMode::Insert);
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
    let delimiter = match args.delimiter.or(file.delimiter).as_deref() {
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
        Target::Sqlite(PathBuf::from(path))
    } else if into.starts_with("postgres://") || into.starts_with("postgresql://") {
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
    let checkpoint_interval_ms = args
        .checkpoint_interval_ms
        .or(file.checkpoint_interval_ms)
        .unwrap_or(1_000);
    if !(1..=3_600_000).contains(&checkpoint_interval_ms) {
        return Err(UsageError::new(
            "checkpoint_interval_ms",
            format!("{checkpoint_interval_ms} is out of range: allowed 1 to 3600000"),
        ));
    }
    let metrics_listen = match args.metrics_listen.or(file.metrics_listen.clone()) {
        None => None,
        Some(text) => Some(text.parse().map_err(|error| {
            UsageError::new(
                "metrics_listen",
                format!("{text:?} is not host:port: {error}"),
            )
        })?),
    };
    let unmapped = match (args.unmapped_into, &file.unmapped) {
        (Some(name), _) => {
            sluice_sink::Ident::new(&name)
                .map_err(|error| UsageError::new("unmapped.column", error.to_string()))?;
            Some(name)
        }
        (None, Some(value)) => unmapped_column(value)?,
        (None, None) => None,
    };
    let follow = args.follow || file.follow.unwrap_or(false);
    let stream = args.stream.or(file.stream);
    let subject = args.subject.or(file.subject);
    let consumer = args.consumer.or(file.consumer);
    let format = args.format.or(file.format);
    let (source, inputs, format, jetstream) = if source.starts_with("nats://") {
        if format == Some(Format::Csv) {
            return Err(UsageError::new(
                "format",
                "a JetStream message is one JSON object (NDJSON); CSV messages are not supported",
            ));
        }
        if args.parse_only {
            return Err(UsageError::new(
                "parse_only",
                "measures a file source, not JetStream",
            ));
        }
        let plan = jetstream::JetStreamPlan::new(&source, stream, subject, consumer)?;
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
    let at_least_once = args.at_least_once || file.at_least_once.unwrap_or(false) || stdin;
    let mut sink = file.sink.unwrap_or_default();
    if sink.mode.is_some_and(|configured| configured != sink_mode)
        && args.mode.is_none()
        && file.mode.is_none()
    {
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
    Ok(Plan {
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
        columns: file.columns,
        unmapped,
        sink,
        checkpoint_interval: Duration::from_millis(checkpoint_interval_ms),
        metrics_listen,
        stdin,
        parse_only: args.parse_only,
    })
}

/// What the reader thread hands over.
pub(crate) struct Chunk {
    rows: Vec<Row>,
    rejected: Vec<Rejected>,
    records: u64,
    /// Where the record after this chunk starts.
    position: SourcePosition,
    /// Bytes of the input read so far (decompressed for gzip).
    bytes_done: u64,
    /// JetStream: acknowledges the chunk's messages, once committed.
    ack: Option<jetstream::Ack>,
}

/// The reader's state: the inputs, the current one, frames read ahead during inference.
struct Reader {
    source: String,
    inputs: Vec<Input>,
    format: Format,
    delimiter: u8,
    index: usize,
    framer: Option<Framer>,
    pending: VecDeque<Frame>,
    mapper: Mapper,
    /// Bytes of the inputs before the current one.
    bytes_before: u64,
    position: Position,
    /// `--follow`: the last input is read as it grows.
    follow: bool,
    /// Set by `next_frame` when a followed file has no complete line after its position yet.
    idle: bool,
}

/// Reads the first input far enough to build the mapper (inference and the table's filled
/// columns need a first record, CSV needs the header). Returns the mapper, the framer of the
/// first input and the frames already read.
fn prepare_mapper(plan: &MapperSpec) -> Result<(Mapper, Framer, VecDeque<Frame>), PrepareError> {
    let input = plan.input.as_ref().expect("a file source has inputs");
    // A followed file is read only up to its last complete record.
    let csv_delimiter = (plan.format == Format::Csv).then_some(plan.delimiter);
    let end = if plan.follow {
        Some(
            source::complete_records_end(input, 0, csv_delimiter)
                .with_context(|| format!("reading {}", input.name()))?,
        )
    } else {
        None
    };
    let (header, mut framer) = match plan.format {
        Format::Csv => format::open_csv(input, 0, plan.delimiter, end)
            .with_context(|| format!("reading {}", input.name()))?,
        Format::Ndjson if let Some(end) = end => (
            Vec::new(),
            format::open_lines_until(input, 0, end)
                .with_context(|| format!("reading {}", input.name()))?,
        ),
        Format::Ndjson => (
            Vec::new(),
            format::open_lines(input, 0).with_context(|| format!("reading {}", input.name()))?,
        ),
    };
    let mut pending = VecDeque::new();
    // The first record that parses as an object, unless the columns are declared.
    let mut first = None;
    if plan.columns.is_none() {
        while let Some(frame) = framer
            .next_frame()
            .with_context(|| format!("reading {}", input.name()))?
        {
            let usable = mapping::can_infer_from(&frame.payload);
            pending.push_back(frame);
            if usable {
                first = Some(pending.len() - 1);
                break;
            }
        }
    }
    let first = first.map(|index| &pending[index].payload);
    let mapper = build_mapper(plan, first, &header, &input.name())?;
    Ok((mapper, framer, pending))
}

/// The mapper from `[columns]`, the existing table, or the first record (`first`, of the source
/// named `name`), with the CSV `header`.
fn build_mapper(
    plan: &MapperSpec,
    first: Option<&Payload>,
    header: &[String],
    name: &str,
) -> Result<Mapper, PrepareError> {
    let mut mapper = match (&plan.columns, &plan.table_columns) {
        (Some(columns), table) => Mapper::declared(
            columns,
            &plan.key,
            plan.op,
            plan.delimiter,
            table.as_deref(),
        )?,
        (None, Some(table)) => {
            let (mapper, left_out) = Mapper::from_table(
                table,
                first,
                header,
                &plan.key,
                plan.op,
                plan.delimiter,
                plan.unmapped.as_deref(),
            )?;
            eprintln!(
                "note: table {} exists: records are cast to its columns ({})",
                plan.table,
                mapper.describe()
            );
            if !left_out.is_empty() {
                eprintln!("note: columns left to the table: {}", left_out.join(", "));
            }
            mapper
        }
        (None, None) => match first {
            Some(first) => Mapper::inferred(first, header, &plan.key, plan.op, plan.delimiter)?,
            None => {
                return Err(UsageError::new(
                    "columns",
                    format!(
                        "{name} holds no record to infer the columns from: declare them in a [columns] table",
                    ),
                )
                .into());
            }
        },
    };
    if let Some(column) = &plan.unmapped {
        mapper.add_unmapped(column)?;
    }
    if plan.format == Format::Csv {
        mapper.set_header(header)?;
    }
    Ok(mapper)
}

pub(crate) enum PrepareError {
    Usage(UsageError),
    Failed(anyhow::Error),
}

impl From<UsageError> for PrepareError {
    fn from(error: UsageError) -> Self {
        PrepareError::Usage(error)
    }
}

impl From<anyhow::Error> for PrepareError {
    fn from(error: anyhow::Error) -> Self {
        PrepareError::Failed(error)
    }
}

impl Reader {
    /// Positions the reader after `committed` (or at the start).
    fn seek(
        &mut self,
        committed: Option<&Position>,
        reuse: Option<(Framer, VecDeque<Frame>)>,
    ) -> Result<()> {
        let Some(committed) = committed else {
            let (framer, pending) = reuse.expect("the first input was opened to build the mapper");
            self.framer = Some(framer);
            self.pending = pending;
            return Ok(());
        };
        let names: Vec<String> = self.inputs.iter().map(Input::name).collect();
        let index = match names.iter().position(|name| *name == committed.path) {
            Some(index) => index,
            None => {
                let next = names.iter().position(|name| *name > committed.path);
                tracing::warn!(committed = %committed, "The committed file is not among the inputs; resuming at the next file in order.");
                match next {
                    Some(index) => {
                        self.skip_to(index);
                        self.open_current(0)?;
                        return Ok(());
                    }
                    None => {
                        self.index = self.inputs.len();
                        self.position = committed.clone();
                        return Ok(());
                    }
                }
            }
        };
        self.skip_to(index);
        self.position = committed.clone();
        self.open_current(committed.offset)
    }

    fn skip_to(&mut self, index: usize) {
        for input in &self.inputs[..index] {
            if let Input::File {
                size, gzip: false, ..
            } = input
            {
                self.bytes_before += size;
            }
        }
        self.index = index;
    }

    fn open_current(&mut self, offset: u64) -> Result<()> {
        let end = if self.follows_current() {
            Some(self.complete_records_end(offset)?)
        } else {
            None
        };
        self.open_current_until(offset, end)
    }

    /// Opens the current input at `offset`, reading nothing past `end` when given.
    fn open_current_until(&mut self, offset: u64, end: Option<u64>) -> Result<()> {
        let input = &self.inputs[self.index];
        let framer = match self.format {
            Format::Csv => {
                let (header, framer) = format::open_csv(input, offset, self.delimiter, end)
                    .with_context(|| format!("reading {}", input.name()))?;
                self.mapper
                    .set_header(&header)
                    .map_err(|error| anyhow!("{}: {error}", input.name()))?;
                framer
            }
            Format::Ndjson => match end {
                Some(end) => format::open_lines_until(input, offset, end),
                None => format::open_lines(input, offset),
            }
            .with_context(|| format!("reading {}", input.name()))?,
        };
        self.framer = Some(framer);
        Ok(())
    }

    /// The end of the current (followed) input's last complete record after `offset`.
    fn complete_records_end(&self, offset: u64) -> Result<u64> {
        let input = &self.inputs[self.index];
        let csv_delimiter = (self.format == Format::Csv).then_some(self.delimiter);
        source::complete_records_end(input, offset, csv_delimiter)
            .with_context(|| format!("reading {}", input.name()))
    }

    /// Whether the current input is followed: `--follow` and the last input, a plain file.
    fn follows_current(&self) -> bool {
        self.follow
            && self.index + 1 == self.inputs.len()
            && matches!(self.inputs[self.index], Input::File { gzip: false, .. })
    }

    /// The next frame of any input, or `None` when every input is done.
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        if let Some(frame) = self.pending.pop_front() {
            return Ok(Some(frame));
        }
        loop {
            if self.index >= self.inputs.len() {
                return Ok(None);
            }
            let follows = self.follows_current();
            if let Some(framer) = &mut self.framer {
                let input = &self.inputs[self.index];
                if let Some(frame) = framer
                    .next_frame()
                    .with_context(|| format!("reading {}", input.name()))?
                {
                    return Ok(Some(frame));
                }
                if follows {
                    // The framer read every complete record it was given: look for more.
                    let offset = framer.offset();
                    let end = self.complete_records_end(offset)?;
                    if end == offset {
                        self.idle = true;
                        return Ok(None);
                    }
                    self.open_current_until(offset, Some(end))?;
                    continue;
                }
                // Plain files count their size (what the progress bar's total counts); gzip
                // and standard input their decompressed bytes.
                self.bytes_before += match input {
                    Input::File {
                        size, gzip: false, ..
                    } => *size,
                    _ => self.position.offset,
                };
                self.framer = None;
                self.index += 1;
                if self.index >= self.inputs.len() {
                    return Ok(None);
                }
            }
            self.open_current(0)?;
            self.position = Position {
                source: self.source.clone(),
                path: self.inputs[self.index].name(),
                offset: 0,
            };
        }
    }

    /// Reads, maps and hands over chunks until the inputs end or the receiver is gone.
    fn run(mut self, sender: mpsc::Sender<Result<Chunk>>) {
        loop {
            let mut chunk = Chunk {
                rows: Vec::new(),
                rejected: Vec::new(),
                records: 0,
                position: self.position.clone().into(),
                bytes_done: 0,
                ack: None,
            };
            let mut bytes = 0usize;
            let started = Instant::now();
            let mut end = false;
            let mut idle = false;
            while chunk.records < CHUNK_RECORDS_MAX as u64
                && bytes < CHUNK_BYTES_MAX
                && started.elapsed() < CHUNK_INTERVAL
            {
                let frame = match self.next_frame() {
                    Ok(Some(frame)) => frame,
                    Ok(None) if self.idle => {
                        self.idle = false;
                        idle = true;
                        break;
                    }
                    Ok(None) => {
                        end = true;
                        break;
                    }
                    Err(error) => {
                        if chunk.records > 0 {
                            chunk.position = self.position.clone().into();
                            let _ = sender.blocking_send(Ok(chunk));
                        }
                        let _ = sender.blocking_send(Err(error));
                        return;
                    }
                };
                bytes += (frame.end - frame.start) as usize;
                chunk.records += 1;
                let path = self.inputs[self.index].name();
                match self.mapper.map(&frame.payload) {
                    Ok(row) => chunk.rows.push(row),
                    Err(refusal) => chunk.rejected.push(Rejected {
                        record: self.mapper.raw(&frame.payload),
                        position: format!("{path}:{}", frame.start),
                        code: refusal.code.to_string(),
                        reason: refusal.reason,
                    }),
                }
                self.position = Position {
                    source: self.source.clone(),
                    path,
                    offset: frame.end,
                };
            }
            chunk.position = self.position.clone().into();
            // Past the last input, `bytes_before` already counts the file of the position.
            chunk.bytes_done = if self.index >= self.inputs.len() {
                self.bytes_before
            } else {
                self.bytes_before + self.position.offset
            };
            if (chunk.records > 0 || end) && sender.blocking_send(Ok(chunk)).is_err() {
                return;
            }
            if end {
                return;
            }
            if idle {
                std::thread::sleep(FOLLOW_POLL);
                if sender.is_closed() {
                    return;
                }
            }
        }
    }
}

fn is_configuration_error(error: &SinkError) -> bool {
    matches!(
        error,
        SinkError::Config(_)
            | SinkError::Schema(_)
            | SinkError::Ident(_)
            | SinkError::KeyRequired { .. }
            | SinkError::DeadLetterFile { .. }
            | SinkError::Backend(BackendError::SchemaMismatch { .. })
    )
}

fn usage(error: impl std::fmt::Display) -> Result<ExitCode> {
    eprintln!("error: bad configuration: {error}");
    Ok(ExitCode::from(EXIT_USAGE))
}

/// Runs `sluice ingest`.
pub(crate) async fn run(args: IngestArgs) -> Result<ExitCode> {
    let plan = match plan(args) {
        Ok(plan) => plan,
        Err(error) => return usage(error),
    };
    let config = plan.sink.clone().build().expect("validated by plan");
    if plan.stdin {
        eprintln!(
            "note: reading standard input, which cannot be re-read after a restart: this run is at least once, and a restart does not resume where it stopped"
        );
    }
    if let Some(address) = plan.metrics_listen {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(address)
            .install()
            .with_context(|| format!("serving metrics on {address}"))?;
    }
    if plan.parse_only {
        return parse_only(plan).await;
    }
    let (backend, target_name): (Box<dyn SinkBackend>, String) = match &plan.target {
        Target::Sqlite(path) => {
            let options = sluice_sink_sqlite::SqliteSinkOptions::new(
                sluice_sink_sqlite::Location::File(path.clone()),
            );
            let backend = sluice_sink_sqlite::SqliteBackend::open(&options)
                .map_err(|error| anyhow!("opening {}: {error}", path.display()))?;
            (Box::new(backend), format!("sqlite://{}", path.display()))
        }
        Target::Postgres(url) => {
            let options = match sluice_sink_postgres::PostgresSinkOptions::for_sink(url, &config) {
                Ok(options) => options,
                Err(error) => return usage(UsageError::new("into", error.to_string())),
            };
            let target = options.target().to_string();
            let backend = sluice_sink_postgres::PostgresBackend::connect(options)
                .await
                .map_err(|error| anyhow!("connecting to {target}: {error}"))?;
            (Box::new(backend), format!("postgres {target}"))
        }
    };
    let ident = sluice_sink::Ident::new(&plan.table).expect("validated by plan");
    let table_columns = backend
        .describe_table(&ident)
        .await
        .with_context(|| format!("reading table {} in {target_name}", plan.table))?
        .map(|columns| {
            columns
                .into_iter()
                .map(|column| TableColumn {
                    name: column.name,
                    column_type: column.column_type,
                    type_name: column.type_name,
                    nullable: column.nullable,
                    filled_by_table: column.filled_by_table,
                    read_only: column.read_only,
                })
                .collect()
        });
    let prepared = match &plan.jetstream {
        None => prepare(&plan, table_columns)
            .await?
            .map(|(mapper, framer, pending)| (mapper, Some((framer, pending)), None)),
        Some(source) => prepare_stream(&plan, source, table_columns)
            .await
            .map(|(mapper, connection)| (mapper, None, Some(connection))),
    };
    let (mapper, first_frames, connection) = match prepared {
        Ok(prepared) => prepared,
        Err(PrepareError::Usage(error)) => return usage(error),
        Err(PrepareError::Failed(error)) => return Err(error),
    };
    let schema = match mapper.schema(&plan.table, &plan.key) {
        Ok(schema) => schema,
        Err(error) => return usage(error),
    };
    let sink = match Sink::open(backend.as_ref(), schema, config).await {
        Ok(sink) => sink,
        Err(error) if is_configuration_error(&error) => {
            return usage(format!("table {} in {target_name}: {error}", plan.table));
        }
        Err(error) => {
            return Err(anyhow!(
                "opening table {} in {target_name}: {error}",
                plan.table
            ));
        }
    };
    let recovery = sink
        .recover(None, Resume::Committed)
        .await
        .context("recovering the sink's committed position")?;
    let mut next_checkpoint = recovery.checkpoint_id.map_or(1, |id| id + 1);
    let committed = recovery
        .state
        .as_deref()
        .and_then(SourcePosition::from_state);
    let committed = match (committed, &plan.jetstream) {
        (Some(SourcePosition::File(position)), None) if position.source == plan.source => {
            Some(SourcePosition::File(position))
        }
        (Some(SourcePosition::Stream(position)), Some(source))
            if position.stream == source.stream && position.subject == source.subject =>
        {
            Some(SourcePosition::Stream(position))
        }
        (Some(position), _) => {
            eprintln!(
                "note: table {} last committed a position of another source ({position}); reading {} from the start",
                plan.table, plan.source
            );
            None
        }
        (None, _) => None,
    };
    if let Some(position) = &committed {
        eprintln!("resuming after the committed position: {position}");
    }
    let (sender, mut receiver) = mpsc::channel(4);
    let (mut position, mut acks) = match connection {
        None => {
            let committed = match committed {
                Some(SourcePosition::File(position)) => Some(position),
                _ => None,
            };
            let mut reader = Reader {
                source: plan.source.clone(),
                inputs: plan.inputs.clone(),
                format: plan.format,
                delimiter: plan.delimiter,
                index: 0,
                framer: None,
                pending: VecDeque::new(),
                mapper,
                bytes_before: 0,
                position: Position {
                    source: plan.source.clone(),
                    path: plan.inputs[0].name(),
                    offset: 0,
                },
                follow: plan.follow,
                idle: false,
            };
            let reuse = if committed.is_none() {
                first_frames
            } else {
                None
            };
            let seek = tokio::task::spawn_blocking(move || {
                reader.seek(committed.as_ref(), reuse).map(|()| reader)
            })
            .await
            .context("the reader task")?;
            let reader = match seek {
                Ok(reader) => reader,
                Err(error) => {
                    let _ = sink.close().await;
                    return Err(error);
                }
            };
            let position = SourcePosition::File(reader.position.clone());
            std::thread::Builder::new()
                .name("sluice-ingest-reader".into())
                .spawn(move || reader.run(sender))
                .context("starting the reader thread")?;
            (position, jetstream::Acks::none())
        }
        Some(connection) => {
            // Exactly once resumes after the committed sequence (0: the stream's start); at
            // least once trusts the consumer's own cursor.
            let sequence = match committed {
                Some(SourcePosition::Stream(position)) => position.sequence,
                _ => 0,
            };
            let committed = config_delivery_exactly_once(&sink).then_some(sequence);
            let opened = connection
                .reader(committed, mapper, plan.follow, plan.checkpoint_interval)
                .await;
            let (reader, acks) = match opened {
                Ok(opened) => opened,
                Err(error) => {
                    let _ = sink.close().await;
                    return match error {
                        PrepareError::Usage(error) => usage(error),
                        PrepareError::Failed(error) => Err(error),
                    };
                }
            };
            let position = SourcePosition::Stream(reader.position());
            tokio::spawn(reader.run(sender));
            (position, acks)
        }
    };

    let (stop_sender, mut stop) = watch::channel(None::<&'static str>);
    tokio::spawn(async move {
        let name = wait_for_signal().await;
        let _ = stop_sender.send(Some(name));
    });
    let total_bytes = if plan.follow || plan.jetstream.is_some() {
        None
    } else {
        plan.inputs
            .iter()
            .map(|input| match input {
                Input::File {
                    size, gzip: false, ..
                } => Some(*size),
                _ => None,
            })
            .sum::<Option<u64>>()
    };
    let mut progress = Progress::new(total_bytes);
    let started = Instant::now();
    let mut records: u64 = 0;
    let mut bytes_done: u64 = 0;
    let mut dirty = false;
    let mut committed_position: Option<SourcePosition> = None;
    let mut ticker = tokio::time::interval(plan.checkpoint_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let records_counter =
        metrics::counter!("sluice_ingest_records_read_total", "table" => plan.table.clone());
    let bytes_counter =
        metrics::counter!("sluice_ingest_bytes_read_total", "table" => plan.table.clone());
    let rejected_counter =
        metrics::counter!("sluice_ingest_records_rejected_total", "table" => plan.table.clone());
    let mut outcome: Result<Option<&'static str>> = Ok(None);
    // At most one checkpoint is under way; reading and writing go on meanwhile (its barrier
    // was placed when it started, so what is written now belongs to the next one).
    let mut in_flight: Option<InFlight> = None;
    // A checkpoint is due (on the interval, or early when many JetStream messages wait for
    // their acknowledgement) and starts once the one under way finished.
    let mut wanted = false;
    loop {
        tokio::select! {
            biased;
            changed = stop.changed() => {
                if changed.is_ok() {
                    outcome = Ok(*stop.borrow());
                    break;
                }
            }
            finished = async { InFlight::outcome(&mut in_flight.as_mut().expect("guarded").done).await }, if in_flight.is_some() => {
                match in_flight.take().expect("guarded").settle(finished).await {
                    Ok(position) => committed_position = Some(position),
                    Err(error) => {
                        outcome = Err(error);
                        break;
                    }
                }
            }
            _ = ticker.tick() => wanted |= dirty,
            chunk = receiver.recv() => match chunk {
                None => break,
                Some(Err(error)) => {
                    outcome = Err(error);
                    break;
                }
                Some(Ok(chunk)) => {
                    records += chunk.records;
                    records_counter.increment(chunk.records);
                    bytes_counter.increment(chunk.bytes_done.saturating_sub(bytes_done));
                    rejected_counter.increment(chunk.rejected.len() as u64);
                    bytes_done = chunk.bytes_done.max(bytes_done);
                    let written = async {
                        sink.write(chunk.rows).await?;
                        sink.reject(chunk.rejected).await
                    };
                    if let Err(error) = written.await {
                        outcome = Err(anyhow!(error).context("writing rows"));
                        break;
                    }
                    acks.add(chunk.ack, chunk.records);
                    if chunk.position != position {
                        position = chunk.position;
                        dirty = true;
                    }
                    wanted |= dirty && acks.due();
                    let stats = sink.stats();
                    progress.update(records, bytes_done, stats.rows_written, stats.rows_dead_lettered);
                }
            }
        }
        if wanted && dirty && in_flight.is_none() {
            match InFlight::start(&sink, next_checkpoint, &position, &mut acks) {
                Ok(started) => {
                    in_flight = Some(started);
                    next_checkpoint += 1;
                    dirty = false;
                    wanted = false;
                }
                Err(error) => {
                    outcome = Err(error);
                    break;
                }
            }
        }
    }
    drop(receiver);
    // What was read before a failure of the source (or a signal) is still committed: the
    // checkpoint under way, then one for the rest.
    let source_failed = outcome.is_err();
    let mut checkpoint_failed = false;
    if let Some(checkpoint) = in_flight.take() {
        match checkpoint.finish().await {
            Ok(position) => committed_position = Some(position),
            Err(error) => {
                checkpoint_failed = true;
                if source_failed {
                    tracing::error!(error = %format!("{error:#}"), "A checkpoint failed.");
                } else {
                    outcome = Err(error);
                }
            }
        }
    }
    let sink_failed = sink.stats().rows_failed > 0 || checkpoint_failed;
    if dirty && !sink_failed {
        let finished = match InFlight::start(&sink, next_checkpoint, &position, &mut acks) {
            Ok(checkpoint) => checkpoint.finish().await,
            Err(error) => Err(error),
        };
        match finished {
            Ok(checkpoint) => committed_position = Some(checkpoint),
            Err(error) if outcome.is_ok() => outcome = Err(error),
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), "The final checkpoint failed.")
            }
        }
    }
    acks.finish().await;
    let closed = sink.close().await;
    progress.finish();
    let stats = sink.stats();
    let elapsed = started.elapsed();
    let status = match (&outcome, &closed) {
        (Ok(None), Ok(())) => "done",
        (Ok(Some(_)), Ok(())) => "stopped",
        _ => "failed",
    };
    println!(
        "ingest {status}: {} into table {} of {target_name}",
        plan.source, plan.table
    );
    println!("  records read:   {records} ({bytes_done} bytes)");
    println!("  rows written:   {}", stats.rows_written);
    println!("  dead-lettered:  {}", stats.rows_dead_lettered);
    println!(
        "  duration:       {:.3} s ({:.0} records/s)",
        elapsed.as_secs_f64(),
        records as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    match (&committed_position, config_delivery_exactly_once(&sink)) {
        (Some(position), true) => println!("  committed:      {position}"),
        (None, true) => println!("  committed:      nothing new"),
        (_, false) => println!("  committed:      no position (at least once)"),
    }
    let signal = outcome?;
    closed.context("closing the sink")?;
    match signal {
        None => Ok(ExitCode::SUCCESS),
        Some(name) => {
            eprintln!("stopped by {name} at a checkpoint; run the same command again to resume");
            Ok(ExitCode::from(EXIT_INTERRUPTED))
        }
    }
}

/// Builds the mapper on a blocking task (it reads the first input).
async fn prepare(
    plan: &Plan,
    table_columns: Option<Vec<TableColumn>>,
) -> Result<Result<(Mapper, Framer, VecDeque<Frame>), PrepareError>> {
    let spec = mapper_spec(plan, table_columns);
    tokio::task::spawn_blocking(move || prepare_mapper(&spec))
        .await
        .context("the reader task")
}

/// Connects to the JetStream server and builds the mapper (reading the stream's first record
/// unless the columns are declared).
async fn prepare_stream(
    plan: &Plan,
    source: &jetstream::JetStreamPlan,
    table_columns: Option<Vec<TableColumn>>,
) -> Result<(Mapper, jetstream::Connection), PrepareError> {
    let spec = mapper_spec(plan, table_columns);
    let connection = jetstream::connect(source).await?;
    let first = if spec.columns.is_none() {
        connection.first_record().await?
    } else {
        None
    };
    let mapper = build_mapper(&spec, first.as_ref(), &[], &connection.describe_records())?;
    Ok((mapper, connection))
}

fn mapper_spec(plan: &Plan, table_columns: Option<Vec<TableColumn>>) -> MapperSpec {
    MapperSpec {
        input: plan.inputs.first().cloned(),
        follow: plan.follow
            && plan.inputs.len() == 1
            && matches!(plan.inputs[0], Input::File { gzip: false, .. }),
        format: plan.format,
        delimiter: plan.delimiter,
        key: plan.key.clone(),
        op: plan.op,
        columns: plan.columns.clone(),
        unmapped: plan.unmapped.clone(),
        table: plan.table.clone(),
        table_columns,
    }
}

/// `--parse-only`: the reader, framer and mapper without a sink (for `sluice bench ingest`).
async fn parse_only(plan: Plan) -> Result<ExitCode> {
    let prepared = prepare(&plan, None).await?;
    let (mapper, framer, pending) = match prepared {
        Ok(prepared) => prepared,
        Err(PrepareError::Usage(error)) => return usage(error),
        Err(PrepareError::Failed(error)) => return Err(error),
    };
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    let reader = Reader {
        source: plan.source.clone(),
        inputs: plan.inputs.clone(),
        format: plan.format,
        delimiter: plan.delimiter,
        index: 0,
        framer: Some(framer),
        pending,
        mapper,
        bytes_before: 0,
        position: Position {
            source: plan.source.clone(),
            path: plan.inputs[0].name(),
            offset: 0,
        },
        follow: false,
        idle: false,
    };
    let (sender, mut receiver) = mpsc::channel(4);
    let thread = std::thread::Builder::new()
        .name("sluice-ingest-reader".into())
        .spawn(move || reader.run(sender))
        .context("starting the reader thread")?;
    let (mut records, mut rows, mut rejected, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    while let Some(chunk) = receiver.recv().await {
        let chunk = chunk?;
        records += chunk.records;
        rows += chunk.rows.len() as u64;
        rejected += chunk.rejected.len() as u64;
        bytes = bytes.max(chunk.bytes_done);
    }
    thread
        .join()
        .map_err(|_| anyhow!("the reader thread panicked"))?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    println!(
        "parse only: {}: {rows} rows, {rejected} refused",
        plan.source
    );
    println!("  records read:   {records} ({bytes} bytes)");
    println!(
        "  duration:       {elapsed:.3} s ({:.0} records/s)",
        records as f64 / elapsed.max(1e-9)
    );
    println!("  cpu:            {cpu:.3} s");
    Ok(ExitCode::SUCCESS)
}

/// User plus system CPU time of this process so far, in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes only the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn config_delivery_exactly_once(sink: &Sink) -> bool {
    sink.config().delivery().is_exactly_once()
}

/// A checkpoint under way: its barrier is placed; `done` pre-commits and commits it.
///
/// `done` is a task of its own: the loop may wait in `Sink::write` for buffer space that only
/// this checkpoint's end frees (lanes write nothing after a barrier until it is pre-committed),
/// so the loop must not be what drives it.
struct InFlight {
    position: SourcePosition,
    ack: jetstream::AckCut,
    done: tokio::task::JoinHandle<Result<()>>,
}

impl InFlight {
    /// Places checkpoint `id`'s barrier behind everything written so far (at `position`).
    fn start(
        sink: &Sink,
        id: u64,
        position: &SourcePosition,
        acks: &mut jetstream::Acks,
    ) -> Result<InFlight> {
        let pre_commit = sink
            .start_pre_commit(id, &position.to_state())
            .with_context(|| format!("checkpoint {id} at {position}"))?;
        let sink = sink.clone();
        let described = position.to_string();
        let done = tokio::spawn(async move {
            pre_commit
                .await
                .with_context(|| format!("checkpoint {id} at {described}"))?;
            sink.commit(id)
                .await
                .with_context(|| format!("committing checkpoint {id}"))?;
            Ok(())
        });
        Ok(InFlight {
            position: position.clone(),
            ack: acks.cut(),
            done,
        })
    }

    /// The checkpoint task's result (a panic in it is a failure too).
    async fn outcome(done: &mut tokio::task::JoinHandle<Result<()>>) -> Result<()> {
        done.await
            .map_err(|error| anyhow!("the checkpoint task failed: {error}"))?
    }

    /// Waits for the checkpoint, then settles it.
    async fn finish(mut self) -> Result<SourcePosition> {
        let finished = InFlight::outcome(&mut self.done).await;
        self.settle(finished).await
    }

    /// With the checkpoint's result: once it committed, acknowledges its messages and returns
    /// its position.
    async fn settle(self, finished: Result<()>) -> Result<SourcePosition> {
        finished?;
        self.ack.acknowledge().await;
        Ok(self.position)
    }
}

async fn wait_for_signal() -> &'static str {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "Cannot watch SIGTERM.");
                let _ = tokio::signal::ctrl_c().await;
                return "SIGINT";
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}

/// What building the mapper needs, owned, for the blocking task.
struct MapperSpec {
    /// The first input (`None` for a JetStream source).
    input: Option<Input>,
    /// The input is followed: read only its complete lines.
    follow: bool,
    format: Format,
    delimiter: u8,
    key: Vec<String>,
    op: Op,
    columns: Option<BTreeMap<String, ColumnConfig>>,
    unmapped: Option<String>,
    table: String,
    /// The existing target table's columns.
    table_columns: Option<Vec<TableColumn>>,
}
