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

use crate::error::{Context, IngestError, Result, UsageError};
use crate::format::{self, Frame, Framer, Payload};
use crate::jetstream;
use crate::mapping::{self, ColumnConfig, Mapper, TableColumn};
use crate::settings::{Pipeline, Target};
use crate::source::{self, Format, Input, Position, SourcePosition};
use sluice_sink::{
    BackendError, CheckpointDriver, Op, Rejected, Resume, Row, Sink, SinkBackend, SinkError,
};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Records per chunk handed from the reader to the sink, at most.
pub(crate) const CHUNK_RECORDS_MAX: usize = 2_048;
/// Raw bytes per chunk, at most (under the sink's default 16 MiB buffer, which counts a row as
/// its allocations: a chunk must fit the buffer in one write).
pub(crate) const CHUNK_BYTES_MAX: usize = 4 << 20;
/// A chunk is handed over at the latest this long after its first record.
pub(crate) const CHUNK_INTERVAL: Duration = Duration::from_millis(50);
/// How often a followed file is checked for new bytes when its end was reached.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// What the reader thread hands over.
pub(crate) struct Chunk {
    pub(crate) rows: Vec<Row>,
    pub(crate) rejected: Vec<Rejected>,
    pub(crate) records: u64,
    /// Where the record after this chunk starts.
    pub(crate) position: SourcePosition,
    /// Bytes of the input read so far (decompressed for gzip).
    pub(crate) bytes_done: u64,
    /// JetStream: acknowledges the chunk's messages, once committed.
    pub(crate) ack: Option<jetstream::Ack>,
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
    /// Replaying a checkpoint only some of the sink's lanes committed: a chunk ends exactly
    /// at this position (its state), so the pipeline can place that checkpoint's barrier
    /// there.
    until: Option<Position>,
}

/// Reads the first input far enough to build the mapper (inference and the table's filled
/// columns need a first record, CSV needs the header). Returns the mapper, the framer of the
/// first input and the frames already read.
fn prepare_mapper(
    plan: &MapperSpec,
    notes: &mut Vec<String>,
) -> Result<(Mapper, Framer, VecDeque<Frame>)> {
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
    // Unless the columns are declared: the first record that parses as an object (NDJSON; it
    // also tells which columns the table fills itself are written), or the records CSV type
    // inference samples (a new table only).
    let mut first = None;
    if plan.columns.is_none() {
        let samples_max = match plan.format {
            Format::Csv if plan.table_columns.is_none() => plan.infer_rows_max.max(1),
            _ => 1,
        };
        while let Some(frame) = framer
            .next_frame()
            .with_context(|| format!("reading {}", input.name()))?
        {
            let usable = mapping::can_infer_from(&frame.payload);
            pending.push_back(frame);
            if usable {
                first.get_or_insert(pending.len() - 1);
            }
            if usable && pending.len() >= samples_max {
                break;
            }
        }
    }
    let samples: Vec<&Payload> = match first {
        Some(first) => pending.range(first..).map(|frame| &frame.payload).collect(),
        None => Vec::new(),
    };
    let mapper = build_mapper(plan, &samples, &header, &input.name(), notes)?;
    Ok((mapper, framer, pending))
}

/// The mapper from `[columns]`, the existing table, or the first records (`samples`, from the
/// first that parses, of the source named `name`), with the CSV `header`.
fn build_mapper(
    plan: &MapperSpec,
    samples: &[&Payload],
    header: &[String],
    name: &str,
    notes: &mut Vec<String>,
) -> Result<Mapper> {
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
                samples.first().copied(),
                header,
                &plan.key,
                plan.op,
                plan.delimiter,
                plan.unmapped.as_deref(),
            )?;
            notes.push(format!(
                "table {} exists: records are cast to its columns ({})",
                plan.table,
                mapper.describe()
            ));
            if !left_out.is_empty() {
                notes.push(format!(
                    "columns left to the table: {}",
                    left_out.join(", ")
                ));
            }
            mapper
        }
        (None, None) if samples.is_empty() => {
            return Err(UsageError::new(
                "columns",
                format!(
                    "{name} holds no record to infer the columns from: declare them in a [columns] table",
                ),
            )
            .into());
        }
        (None, None) => {
            // infer_rows_max = 0: CSV columns are text (the samples are read all the same).
            let samples = if plan.format == Format::Csv && plan.infer_rows_max == 0 {
                &[]
            } else {
                samples
            };
            let mapper = Mapper::inferred(
                samples,
                header,
                &plan.nulls,
                &plan.key,
                plan.op,
                plan.delimiter,
            )?;
            if plan.format == Format::Csv {
                notes.push(format!(
                    "table {} is new: its columns are inferred from {} records ({})",
                    plan.table,
                    samples.len(),
                    mapper.describe()
                ));
            }
            mapper
        }
    };
    mapper.set_nulls(&plan.nulls);
    if let Some(column) = &plan.unmapped {
        mapper.add_unmapped(column)?;
    }
    if plan.format == Format::Csv {
        mapper.set_header(header)?;
    }
    Ok(mapper)
}

impl Reader {
    /// A reader of `plan`'s inputs at their start; `first`: the first input's framer and the
    /// frames read ahead while building the mapper.
    fn new(plan: &Pipeline, mapper: Mapper, first: Option<(Framer, VecDeque<Frame>)>) -> Reader {
        let (framer, pending) = match first {
            Some((framer, pending)) => (Some(framer), pending),
            None => (None, VecDeque::new()),
        };
        Reader {
            source: plan.source.clone(),
            inputs: plan.inputs.clone(),
            format: plan.format,
            delimiter: plan.delimiter,
            index: 0,
            framer,
            pending,
            mapper,
            bytes_before: 0,
            position: Position {
                source: plan.source.clone(),
                path: plan.inputs[0].name(),
                offset: 0,
            },
            follow: plan.follow && !plan.parse_only,
            idle: false,
            until: None,
        }
    }

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
                self.mapper.set_header(&header).map_err(|error| {
                    IngestError::Usage(UsageError::new(
                        error.key(),
                        format!("{}: {}", input.name(), error.problem()),
                    ))
                })?;
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

    /// Maps the frame just read to its row or its refusal, and moves the position past it.
    fn map_frame(&mut self, frame: &Frame) -> std::result::Result<Row, Rejected> {
        let path = self.inputs[self.index].name();
        let mapped = self.mapper.map(&frame.payload).map_err(|refusal| Rejected {
            record: self.mapper.raw(&frame.payload),
            position: format!("{path}:{}", frame.start),
            code: refusal.code.to_string(),
            reason: refusal.reason,
        });
        self.position = Position {
            source: self.source.clone(),
            path,
            offset: frame.end,
        };
        mapped
    }

    /// Maps the first `records_max` records for a preview (nothing is handed over).
    fn preview(mut self, records_max: usize) -> Result<(Vec<Row>, Vec<Rejected>)> {
        let (mut rows, mut rejected) = (Vec::new(), Vec::new());
        while rows.len() + rejected.len() < records_max
            && let Some(frame) = self.next_frame()?
        {
            match self.map_frame(&frame) {
                Ok(row) => rows.push(row),
                Err(refusal) => rejected.push(refusal),
            }
        }
        Ok((rows, rejected))
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
                match self.map_frame(&frame) {
                    Ok(row) => chunk.rows.push(row),
                    Err(rejected) => chunk.rejected.push(rejected),
                }
                if self.until.as_ref() == Some(&self.position) {
                    self.until = None;
                    break;
                }
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

/// What a pipeline tells the program running it. Every method has a default that does
/// nothing; the binary draws a progress bar and prints the notes and the summary.
pub trait Observer: Send + Sync {
    /// Something the user should know (the table exists and records are cast to it, the run
    /// resumes after a committed position, standard input is read at least once).
    fn note(&self, message: &str) {
        let _ = message;
    }

    /// Called once before the first record, with the source's size when it is known (plain
    /// files, not followed).
    fn started(&self, total_bytes: Option<u64>) {
        let _ = total_bytes;
    }

    /// Called after each chunk of records is handed to the sink.
    fn progress(&self, progress: &Progress) {
        let _ = progress;
    }

    /// Called once when a run that started ends, whatever the outcome (the report also
    /// comes back from [`Pipeline::run`] when it succeeded).
    fn finished(&self, report: &Report) {
        let _ = report;
    }
}

/// An observer that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct Quiet;

impl Observer for Quiet {}

/// Counts so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Records read.
    pub records: u64,
    /// Bytes of the source read (decompressed for gzip).
    pub bytes: u64,
    /// Rows the sink made durable.
    pub rows_written: u64,
    /// Records and rows sent to the dead letters.
    pub dead_lettered: u64,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The source ended and everything read is committed.
    Done,
    /// Stopped on request at a checkpoint; running the same pipeline again resumes.
    Stopped,
    /// It failed; what was committed before the failure stays, and a restart resumes there.
    Failed,
}

impl Status {
    /// `done`, `stopped` or `failed`.
    pub fn name(self) -> &'static str {
        match self {
            Status::Done => "done",
            Status::Stopped => "stopped",
            Status::Failed => "failed",
        }
    }
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Report {
    /// How it ended.
    pub status: Status,
    /// The source as shown (no credentials).
    pub source: String,
    /// The target table.
    pub table: String,
    /// The target database as shown (no password).
    pub target: String,
    /// The counts.
    pub progress: Progress,
    /// From start to end of reading.
    pub elapsed: Duration,
    /// Whether a position is stored with each checkpoint (exactly-once delivery).
    pub exactly_once: bool,
    /// The last position committed by this run, as shown (`None`: nothing new).
    pub committed: Option<String>,
    /// What stopped it, when [`Status::Stopped`]: the stop future's answer.
    pub stopped_by: Option<String>,
}

impl Report {
    /// Records read per second.
    pub fn records_per_second(&self) -> f64 {
        self.progress.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A sink error that is the settings' or the table's fault, not the database's.
fn usage_from_sink(what: impl std::fmt::Display, error: &SinkError) -> Option<IngestError> {
    is_configuration_error(error)
        .then(|| IngestError::Usage(UsageError::new("sink", format!("{what}: {error}"))))
}

impl Pipeline {
    /// Runs the pipeline until the source ends, `stop` resolves (the run stops at a
    /// checkpoint and [`Report::stopped_by`] holds its answer) or something fails. Recovers
    /// the sink first and seeks the source to the committed position, so running the same
    /// pipeline again after a crash or a stop writes every record exactly once (standard
    /// input and `at_least_once`: at least once).
    pub async fn run(
        self,
        observer: &dyn Observer,
        stop: impl Future<Output = String> + Send,
    ) -> Result<Report> {
        let plan = self;
        if plan.stdin {
            observer.note(
                "reading standard input, which cannot be re-read after a restart: this run is at least once, and a restart does not resume where it stopped",
            );
        }
        if plan.parse_only {
            return parse_only(plan, observer).await;
        }
        let config = plan
            .sink
            .clone()
            .build()
            .expect("validated by Pipeline::new");
        let (backend, target_name, table_columns) = open_backend(&plan, false).await?;
        let (mapper, first_frames, connection) = match &plan.jetstream {
            None => {
                let (mapper, framer, pending) = prepare(&plan, table_columns, observer).await?;
                (mapper, Some((framer, pending)), None)
            }
            Some(source) => {
                let (mapper, connection) =
                    prepare_stream(&plan, source, table_columns, observer).await?;
                (mapper, None, Some(connection))
            }
        };
        let schema = mapper.schema(&plan.table, &plan.key)?;
        let what = || format!("table {} in {target_name}", plan.table);
        let sink = match Sink::open(backend.as_ref(), schema, config).await {
            Ok(sink) => sink,
            Err(error) => {
                return Err(usage_from_sink(what(), &error)
                    .unwrap_or_else(|| IngestError::sink(format!("opening {}", what()), &error)));
            }
        };
        let recovery = sink
            .recover(None, Resume::Committed)
            .await
            .context("recovering the sink's committed position")?;
        let checkpoints = CheckpointDriver::new(&sink, &recovery);
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
                observer.note(&format!(
                    "table {} last committed a position of another source ({position}); reading {} from the start",
                    plan.table, plan.source
                ));
                None
            }
            (None, _) => None,
        };
        if let Some(position) = &committed {
            observer.note(&format!(
                "resuming after the committed position: {position}"
            ));
        }
        // A checkpoint only some of the sink's lanes committed (the last run died between
        // their commits) is read again up to its position exactly, where its barrier goes;
        // the sink writes only the lanes' part that was lost.
        let replay = recovery
            .partial
            .as_ref()
            .and_then(|partial| SourcePosition::from_state(&partial.state));
        if let Some(position) = &replay {
            observer.note(&format!(
                "the last run committed its last checkpoint in part; replaying it up to {position}"
            ));
        }
        let (sender, receiver) = mpsc::channel(4);
        let exactly_once = sink.config().delivery().is_exactly_once();
        let (position, acks) = match connection {
            None => {
                let committed = match committed {
                    Some(SourcePosition::File(position)) => Some(position),
                    _ => None,
                };
                let mut reader = Reader::new(&plan, mapper, None);
                reader.until = match &replay {
                    Some(SourcePosition::File(position)) => Some(position.clone()),
                    _ => None,
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
                // Exactly once resumes after the committed sequence (0: the stream's start);
                // at least once trusts the consumer's own cursor.
                let sequence = match committed {
                    Some(SourcePosition::Stream(position)) => position.sequence,
                    _ => 0,
                };
                let committed = exactly_once.then_some(sequence);
                let opened = connection
                    .reader(committed, mapper, plan.follow, plan.checkpoint_interval)
                    .await;
                let (mut reader, acks) = match opened {
                    Ok(opened) => opened,
                    Err(error) => {
                        let _ = sink.close().await;
                        return Err(error);
                    }
                };
                if let Some(SourcePosition::Stream(position)) = &replay {
                    reader.replay_until(position.sequence);
                }
                let position = SourcePosition::Stream(reader.position());
                tokio::spawn(reader.run(sender));
                (position, acks)
            }
        };
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
        observer.started(total_bytes);
        let running = Running {
            plan: &plan,
            sink: &sink,
            observer,
            checkpoints,
            position,
            acks,
            replay,
        };
        let (outcome, progress, committed_position, elapsed) = running.drive(receiver, stop).await;
        let closed = sink.close().await;
        let status = match (&outcome, &closed) {
            (Ok(None), Ok(())) => Status::Done,
            (Ok(Some(_)), Ok(())) => Status::Stopped,
            _ => Status::Failed,
        };
        let stats = sink.stats();
        let report = Report {
            status,
            source: plan.source.clone(),
            table: plan.table.clone(),
            target: target_name,
            progress: Progress {
                rows_written: stats.rows_written,
                dead_lettered: stats.rows_dead_lettered,
                ..progress
            },
            elapsed,
            exactly_once,
            committed: committed_position.map(|position| position.to_string()),
            stopped_by: outcome.as_ref().ok().cloned().flatten(),
        };
        observer.finished(&report);
        outcome?;
        closed.context("closing the sink")?;
        Ok(report)
    }
}

/// The checkpoint under way, beside the driver: its position and the JetStream messages it
/// acknowledges once committed.
struct Pending {
    position: SourcePosition,
    ack: jetstream::AckCut,
}

/// The loop's state while records flow.
struct Running<'a> {
    plan: &'a Pipeline,
    sink: &'a Sink,
    observer: &'a dyn Observer,
    checkpoints: CheckpointDriver,
    /// Where the record after the last one handed to the sink starts.
    position: SourcePosition,
    acks: jetstream::Acks,
    /// The position of a partial checkpoint being replayed: no checkpoint starts before the
    /// source reaches it, and the first one starts there.
    replay: Option<SourcePosition>,
}

impl Running<'_> {
    /// Places the next checkpoint's barrier at the current position.
    fn start_checkpoint(&mut self) -> Result<Pending> {
        let position = self.position.clone();
        self.checkpoints
            .start(&position.to_state())
            .with_context(|| format!("checkpoint {} at {position}", self.checkpoints.next_id()))?;
        Ok(Pending {
            position,
            ack: self.acks.cut(),
        })
    }

    /// Waits for the checkpoint under way and settles it: once committed, its messages are
    /// acknowledged and its position returned.
    async fn finish_checkpoint(&mut self, pending: Pending) -> Result<SourcePosition> {
        let id = self.checkpoints.in_flight();
        self.checkpoints
            .finish()
            .await
            .with_context(|| format!("checkpoint {id:?} at {}", pending.position))?;
        pending.ack.acknowledge().await;
        Ok(pending.position)
    }

    /// Reads chunks, writes them, checkpoints on the interval; returns the outcome (the stop
    /// answer when stopped), the counts, the last committed position and the time taken.
    async fn drive(
        mut self,
        mut receiver: mpsc::Receiver<Result<Chunk>>,
        stop: impl Future<Output = String> + Send,
    ) -> (
        Result<Option<String>>,
        Progress,
        Option<SourcePosition>,
        Duration,
    ) {
        let plan = self.plan;
        let sink = self.sink;
        let started = Instant::now();
        let mut progress = Progress::default();
        let mut dirty = false;
        let mut committed_position: Option<SourcePosition> = None;
        let mut ticker = tokio::time::interval(plan.checkpoint_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        describe_metrics();
        let records_counter =
            metrics::counter!("sluice_ingest_records_read_total", "table" => plan.table.clone());
        let bytes_counter =
            metrics::counter!("sluice_ingest_bytes_read_total", "table" => plan.table.clone());
        let rejected_counter = metrics::counter!("sluice_ingest_records_rejected_total", "table" => plan.table.clone());
        let mut outcome: Result<Option<String>> = Ok(None);
        // At most one checkpoint is under way; reading and writing go on meanwhile (its
        // barrier was placed when it started, so what is written now belongs to the next).
        let mut pending: Option<Pending> = None;
        // A checkpoint is due (on the interval, or early when many JetStream messages wait
        // for their acknowledgement) and starts once the one under way finished.
        let mut wanted = false;
        let mut stop = std::pin::pin!(stop);
        if self.replay.as_ref() == Some(&self.position) {
            // The partial checkpoint holds no record after the complete one: cut it at once.
            self.replay = None;
            wanted = true;
            dirty = true;
        }
        loop {
            tokio::select! {
                biased;
                reason = &mut stop => {
                    outcome = Ok(Some(reason));
                    break;
                }
                finished = self.checkpoints.finished(), if pending.is_some() => {
                    let settled = pending.take().expect("guarded");
                    match finished {
                        Ok(_) => {
                            settled.ack.acknowledge().await;
                            committed_position = Some(settled.position);
                        }
                        Err(error) => {
                            outcome = Err(IngestError::sink(
                                format!("checkpoint at {}", settled.position),
                                &error,
                            ));
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
                        progress.records += chunk.records;
                        records_counter.increment(chunk.records);
                        bytes_counter.increment(chunk.bytes_done.saturating_sub(progress.bytes));
                        rejected_counter.increment(chunk.rejected.len() as u64);
                        progress.bytes = chunk.bytes_done.max(progress.bytes);
                        let written = async {
                            sink.write(chunk.rows).await?;
                            sink.reject(chunk.rejected).await
                        };
                        if let Err(error) = written.await {
                            outcome = Err(IngestError::sink("writing rows", &error));
                            break;
                        }
                        self.acks.add(chunk.ack, chunk.records);
                        if chunk.position != self.position {
                            self.position = chunk.position;
                            dirty = true;
                        }
                        wanted |= dirty && self.acks.due();
                        if self.replay.as_ref() == Some(&self.position) {
                            self.replay = None;
                            wanted = true;
                        }
                        let stats = sink.stats();
                        progress.rows_written = stats.rows_written;
                        progress.dead_lettered = stats.rows_dead_lettered;
                        self.observer.progress(&progress);
                    }
                }
            }
            if wanted && dirty && pending.is_none() && self.replay.is_none() {
                match self.start_checkpoint() {
                    Ok(started) => {
                        pending = Some(started);
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
        // What was read before a failure of the source (or a stop) is still committed: the
        // checkpoint under way, then one for the rest.
        let source_failed = outcome.is_err();
        let mut checkpoint_failed = false;
        if let Some(settled) = pending.take() {
            match self.finish_checkpoint(settled).await {
                Ok(position) => committed_position = Some(position),
                Err(error) => {
                    checkpoint_failed = true;
                    if source_failed {
                        tracing::error!(%error, "A checkpoint failed.");
                    } else {
                        outcome = Err(error);
                    }
                }
            }
        }
        let sink_failed = sink.stats().rows_failed > 0 || checkpoint_failed;
        if dirty && !sink_failed {
            let finished = match self.start_checkpoint() {
                Ok(last) => self.finish_checkpoint(last).await,
                Err(error) => Err(error),
            };
            match finished {
                Ok(position) => committed_position = Some(position),
                Err(error) if outcome.is_ok() => outcome = Err(error),
                Err(error) => tracing::error!(%error, "The final checkpoint failed."),
            }
        }
        self.acks.finish().await;
        (outcome, progress, committed_position, started.elapsed())
    }
}

/// What a pipeline would do, settled before anything is written ([`Pipeline::preview`],
/// `sluice ingest --dry-run`).
#[derive(Clone, Debug)]
pub struct Preview {
    /// The target database as shown (no password).
    pub target: String,
    /// The table's schema as the run would write it: the columns, their types, the key.
    pub schema: sluice_sink::Schema,
    /// Whether the table exists (records are cast to its columns); else the run creates it.
    pub table_exists: bool,
    /// The statement that creates the table, when it is missing and the database speaks SQL.
    pub create_table_sql: Option<String>,
    /// The first records' rows, as they would be written.
    pub rows: Vec<Row>,
    /// The first records that would go to the dead letters, with their reasons.
    pub rejected: Vec<Rejected>,
}

impl Pipeline {
    /// Settles the table as [`Pipeline::run`] would (declared, read from the existing table,
    /// or inferred from the first records) and maps the first `records_max` records, writing
    /// nothing: the database is only read (a JetStream source shows its first message and
    /// acknowledges nothing).
    pub async fn preview(self, records_max: usize, observer: &dyn Observer) -> Result<Preview> {
        let plan = self;
        if plan.parse_only {
            return Err(UsageError::new("parse_only", "a preview writes nothing already").into());
        }
        let (backend, target, table_columns) = open_backend(&plan, true).await?;
        let table_exists = table_columns.is_some();
        let (schema, rows, rejected) = match &plan.jetstream {
            None => {
                let (mapper, framer, pending) = prepare(&plan, table_columns, observer).await?;
                let schema = mapper.schema(&plan.table, &plan.key)?;
                let reader = Reader::new(&plan, mapper, Some((framer, pending)));
                let (rows, rejected) =
                    tokio::task::spawn_blocking(move || reader.preview(records_max))
                        .await
                        .context("the reader task")??;
                (schema, rows, rejected)
            }
            Some(source) => {
                let (mapper, connection) =
                    prepare_stream(&plan, source, table_columns, observer).await?;
                let (mut rows, mut rejected) = (Vec::new(), Vec::new());
                if records_max > 0
                    && let Some(first) = connection.first_record().await?
                {
                    match mapper.map(&first) {
                        Ok(row) => rows.push(row),
                        Err(refusal) => rejected.push(Rejected {
                            record: mapper.raw(&first),
                            position: connection.describe_records(),
                            code: refusal.code.to_string(),
                            reason: refusal.reason,
                        }),
                    }
                }
                (mapper.schema(&plan.table, &plan.key)?, rows, rejected)
            }
        };
        let create_table_sql = if table_exists {
            None
        } else {
            backend.create_table_sql(&schema)
        };
        Ok(Preview {
            target,
            schema,
            table_exists,
            create_table_sql,
            rows,
            rejected,
        })
    }
}

/// Opens the target database and reads the target table's columns (`None`: no such table).
/// For a preview (`read_only`), a SQLite file that does not exist is not created: an empty
/// database in memory stands for it.
async fn open_backend(
    plan: &Pipeline,
    read_only: bool,
) -> Result<(Box<dyn SinkBackend>, String, Option<Vec<TableColumn>>)> {
    let config = plan
        .sink
        .clone()
        .build()
        .expect("validated by Pipeline::new");
    let (backend, target_name): (Box<dyn SinkBackend>, String) = match &plan.target {
        Target::Sqlite { path, journal } => {
            let location = if read_only && !path.exists() {
                sluice_sink_sqlite::Location::Memory
            } else {
                sluice_sink_sqlite::Location::File(path.clone())
            };
            let mut options = sluice_sink_sqlite::SqliteSinkOptions::new(location);
            options.open.journal = *journal;
            let backend = sluice_sink_sqlite::SqliteBackend::open(&options).map_err(|error| {
                IngestError::Sink {
                    message: format!("opening {}: {error}", path.display()),
                    sink_code: "sqlite.open",
                }
            })?;
            (Box::new(backend), format!("sqlite://{}", path.display()))
        }
        Target::Postgres(url) => {
            let options = sluice_sink_postgres::PostgresSinkOptions::for_sink(url, &config)
                .map_err(|error| UsageError::new("into", error.to_string()))?;
            let target = options.target().to_string();
            let backend = sluice_sink_postgres::PostgresBackend::connect(options)
                .await
                .map_err(|error| IngestError::Sink {
                    message: format!("connecting to {target}: {error}"),
                    sink_code: "postgres.connect",
                })?;
            (Box::new(backend), format!("postgres {target}"))
        }
    };
    let ident = sluice_sink::Ident::new(&plan.table).expect("validated by Pipeline::new");
    let table_columns =
        backend
            .describe_table(&ident)
            .await
            .map_err(|error| IngestError::Sink {
                message: format!("reading table {} in {target_name}: {error}", plan.table),
                sink_code: error.code(),
            })?;
    Ok((backend, target_name, table_columns))
}

/// Builds the mapper on a blocking task (it reads the first input).
async fn prepare(
    plan: &Pipeline,
    table_columns: Option<Vec<TableColumn>>,
    observer: &dyn Observer,
) -> Result<(Mapper, Framer, VecDeque<Frame>)> {
    let spec = mapper_spec(plan, table_columns);
    let (prepared, notes) = tokio::task::spawn_blocking(move || {
        let mut notes = Vec::new();
        let prepared = prepare_mapper(&spec, &mut notes);
        (prepared, notes)
    })
    .await
    .context("the reader task")?;
    for note in notes {
        observer.note(&note);
    }
    prepared
}

/// Connects to the JetStream server and builds the mapper (reading the stream's first record
/// unless the columns are declared).
async fn prepare_stream(
    plan: &Pipeline,
    source: &jetstream::JetStreamPlan,
    table_columns: Option<Vec<TableColumn>>,
    observer: &dyn Observer,
) -> Result<(Mapper, jetstream::Connection)> {
    let spec = mapper_spec(plan, table_columns);
    let connection = jetstream::connect(source).await?;
    let first = if spec.columns.is_none() {
        connection.first_record().await?
    } else {
        None
    };
    let mut notes = Vec::new();
    let samples: Vec<&Payload> = first.iter().collect();
    let mapper = build_mapper(
        &spec,
        &samples,
        &[],
        &connection.describe_records(),
        &mut notes,
    );
    for note in notes {
        observer.note(&note);
    }
    Ok((mapper?, connection))
}

fn mapper_spec(plan: &Pipeline, table_columns: Option<Vec<TableColumn>>) -> MapperSpec {
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
        nulls: plan.nulls.clone(),
        infer_rows_max: plan.infer_rows_max,
        table: plan.table.clone(),
        table_columns,
    }
}

/// `parse_only`: the reader, framer and mapper without a sink (for `sluice bench ingest`).
/// The report counts rows mapped as written and refusals as dead-lettered.
async fn parse_only(plan: Pipeline, observer: &dyn Observer) -> Result<Report> {
    let (mapper, framer, pending) = prepare(&plan, None, observer).await?;
    let started = Instant::now();
    let reader = Reader::new(&plan, mapper, Some((framer, pending)));
    let (sender, mut receiver) = mpsc::channel(4);
    let thread = std::thread::Builder::new()
        .name("sluice-ingest-reader".into())
        .spawn(move || reader.run(sender))
        .context("starting the reader thread")?;
    let mut progress = Progress::default();
    while let Some(chunk) = receiver.recv().await {
        let chunk = chunk?;
        progress.records += chunk.records;
        progress.rows_written += chunk.rows.len() as u64;
        progress.dead_lettered += chunk.rejected.len() as u64;
        progress.bytes = progress.bytes.max(chunk.bytes_done);
    }
    thread
        .join()
        .map_err(|_| IngestError::Internal("the reader thread panicked".into()))?;
    let report = Report {
        status: Status::Done,
        source: plan.source.clone(),
        table: plan.table.clone(),
        target: "nothing (parse only)".into(),
        progress,
        elapsed: started.elapsed(),
        exactly_once: false,
        committed: None,
        stopped_by: None,
    };
    observer.finished(&report);
    Ok(report)
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
    nulls: Vec<String>,
    /// Records CSV type inference samples (0: every column is text).
    infer_rows_max: usize,
    table: String,
    /// The existing target table's columns.
    table_columns: Option<Vec<TableColumn>>,
}

/// The ingest's own metrics, beside the sink's (docs/specs/metrics.md), labelled by `table`.
const METRICS: [(&str, &str); 3] = [
    (
        "sluice_ingest_records_read_total",
        "Records read from the source (parsed or not).",
    ),
    (
        "sluice_ingest_bytes_read_total",
        "Bytes read from the source (decompressed).",
    ),
    (
        "sluice_ingest_records_rejected_total",
        "Records that could not be parsed or converted (sent to the dead letters).",
    ),
];

fn describe_metrics() {
    for (name, help) in METRICS {
        metrics::describe_counter!(name, help);
    }
}
