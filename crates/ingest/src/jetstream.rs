//! NATS JetStream as a source: a durable pull consumer on a stream, optionally filtered by
//! subject; each message's payload is one NDJSON record (a JSON object). CSV payloads are not
//! supported.
//!
//! Exactly once: the checkpoint state is the stream sequence of the last record included
//! ([`StreamPosition`]), committed with the rows. Messages are acknowledged only after the
//! checkpoint containing them committed; a restart resumes after the committed sequence, and a
//! message redelivered at or below a sequence already read is skipped (acknowledged when it is
//! at or below the committed sequence), never written again.
//!
//! The consumer is a cursor; the sink's committed sequence is the truth. At start (exactly
//! once) the consumer is deleted and created again, delivering from the committed sequence + 1,
//! when it holds messages delivered to an earlier run and never acknowledged (the run was
//! killed: the server would redeliver them only after `ack_wait`), or when its acknowledgement
//! floor is past the committed sequence (its messages went into another table). Otherwise it
//! is kept and resumes where it is. With `--at-least-once` no sequence is committed, so the
//! consumer is always kept: a killed run's unacknowledged messages come again after
//! `ack_wait`.
//!
//! Without `--follow` the ingest ends when the stream holds nothing more for the consumer: a
//! pull that waited [`FETCH_WAIT`] returned no message and the consumer's `num_pending` (messages
//! not yet delivered) is 0.

use super::format::Payload;
use super::mapping::{self, Mapper};
use crate::error::{IngestError, Result, UsageError};
macro_rules! jetstream_error {
    ($($format:tt)*) => {
        IngestError::JetStream(format!($($format)*))
    };
}

use crate::pipeline::{CHUNK_BYTES_MAX, CHUNK_INTERVAL, CHUNK_RECORDS_MAX, Chunk};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::stream::Stream;
use futures_util::StreamExt as _;
use sluice_sink::Rejected;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Messages asked for by one pull, at most.
const FETCH_MESSAGES_MAX: usize = 1_000;
/// How long one pull waits for messages before it returns with fewer (or none).
pub(crate) const FETCH_WAIT: Duration = Duration::from_millis(500);
/// The consumer's `max_ack_pending`: messages delivered and not yet acknowledged, at most.
const ACK_PENDING_MESSAGES_MAX: i64 = 65_536;
/// Added to the checkpoint interval to make the consumer's `ack_wait`: a message is
/// acknowledged by the first checkpoint after it is read, so it waits about one interval plus
/// the checkpoint's own time; the margin covers a slow commit.
const ACK_WAIT_MARGIN: Duration = Duration::from_secs(120);
/// How long connecting to the server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages the column inference reads, at most, looking for a JSON object.
const PROBE_MESSAGES_MAX: usize = 10_000;
/// The inference consumer is deleted when done; if the process dies first, the server deletes
/// it after this long.
const PROBE_INACTIVE_THRESHOLD: Duration = Duration::from_secs(60);

/// What `--from nats://...`, `--stream`, `--subject` and `--consumer` resolve to.
#[derive(Clone, Debug)]
pub(crate) struct JetStreamPlan {
    /// The server URL as given: it may hold credentials, so it is never printed (see
    /// [`JetStreamPlan::describe`]).
    url: String,
    pub(crate) stream: String,
    /// The subject filter; empty for every subject of the stream.
    pub(crate) subject: String,
    pub(crate) consumer: String,
}

impl JetStreamPlan {
    /// Validates the names (before anything is opened).
    pub(crate) fn new(
        url: &str,
        stream: Option<String>,
        subject: Option<String>,
        consumer: Option<String>,
    ) -> Result<JetStreamPlan, UsageError> {
        let stream = stream.ok_or_else(|| {
            UsageError::new(
                "stream",
                "missing: a nats:// source needs --stream NAME (or stream in --config)",
            )
        })?;
        valid_name("stream", &stream)?;
        let consumer = consumer.ok_or_else(|| {
            UsageError::new(
                "consumer",
                "missing: a nats:// source needs --consumer DURABLE_NAME (or consumer in --config)",
            )
        })?;
        valid_name("consumer", &consumer)?;
        let subject = subject.unwrap_or_default();
        if subject.chars().any(char::is_whitespace)
            || subject.split('.').any(str::is_empty) && !subject.is_empty()
        {
            return Err(UsageError::new(
                "subject",
                format!("{subject:?} is not a subject filter (tokens separated by '.', no spaces)"),
            ));
        }
        let rest = url.strip_prefix("nats://").unwrap_or_default();
        if rest.is_empty() {
            return Err(UsageError::new(
                "from",
                "nats:// needs a server: nats://HOST:PORT",
            ));
        }
        Ok(JetStreamPlan {
            url: url.to_string(),
            stream,
            subject,
            consumer,
        })
    }

    /// The source as printed: the server without credentials, the stream and the filter.
    pub(crate) fn describe(&self) -> String {
        let rest = self.url.strip_prefix("nats://").unwrap_or(&self.url);
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        let subject = if self.subject.is_empty() {
            "every subject"
        } else {
            &self.subject
        };
        format!(
            "nats://{host} stream {} ({subject}) consumer {}",
            self.stream, self.consumer
        )
    }
}

fn valid_name(key: &str, name: &str) -> Result<(), UsageError> {
    if name.is_empty()
        || name.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\')
        })
    {
        return Err(UsageError::new(
            key,
            format!("{name:?} is not a JetStream name (no spaces, '.', '*', '>', '/' or '\\')"),
        ));
    }
    Ok(())
}

/// Where the next record is in a stream: what the checkpoint stores.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct StreamPosition {
    pub(crate) stream: String,
    /// The subject filter (empty: every subject); a position of another filter does not apply.
    pub(crate) subject: String,
    /// Stream sequence of the last record included (0: none yet).
    pub(crate) sequence: u64,
}

impl std::fmt::Display for StreamPosition {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "stream {} at sequence {}",
            self.stream, self.sequence
        )
    }
}

/// A connected server and its stream.
pub(crate) struct Connection {
    client: async_nats::Client,
    stream: Stream,
    plan: JetStreamPlan,
}

/// Connects and looks the stream up. A missing stream is a usage error.
pub(crate) async fn connect(plan: &JetStreamPlan) -> Result<Connection> {
    let described = plan.describe();
    let client = async_nats::ConnectOptions::new()
        .name("sluice-ingest")
        .connection_timeout(CONNECT_TIMEOUT)
        .connect(plan.url.as_str())
        .await
        // The error names no credentials; the URL is printed without them.
        .map_err(|error| jetstream_error!("connecting to {described}: {error}"))?;
    let context = async_nats::jetstream::new(client.clone());
    let stream = match context.get_stream(&plan.stream).await {
        Ok(stream) => stream,
        Err(error) => {
            if let async_nats::jetstream::context::GetStreamErrorKind::JetStream(inner) =
                error.kind()
                && inner.code() == 404
            {
                return Err(UsageError::new(
                    "stream",
                    format!("the server has no stream {:?}", plan.stream),
                )
                .into());
            }
            return Err(jetstream_error!(
                "looking up stream {}: {error}",
                plan.stream
            ));
        }
    };
    Ok(Connection {
        client,
        stream,
        plan: plan.clone(),
    })
}

impl Connection {
    /// How the records are named in messages: the stream and the filter.
    pub(crate) fn describe_records(&self) -> String {
        if self.plan.subject.is_empty() {
            format!("stream {}", self.plan.stream)
        } else {
            format!(
                "stream {} (subject {})",
                self.plan.stream, self.plan.subject
            )
        }
    }

    /// The first message on the subject that holds a JSON object (what column inference and
    /// a table's filled columns look at), read by a short-lived consumer that acknowledges
    /// nothing. `None` when there is none among the first [`PROBE_MESSAGES_MAX`].
    pub(crate) async fn first_record(&self) -> Result<Option<Payload>> {
        let probe: PullConsumer = self
            .stream
            .create_consumer(pull::Config {
                filter_subject: self.plan.subject.clone(),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::None,
                inactive_threshold: PROBE_INACTIVE_THRESHOLD,
                ..Default::default()
            })
            .await
            .map_err(|error| {
                jetstream_error!("creating a consumer to read the first record: {error}")
            })?;
        let probe_name = probe.cached_info().name.clone();
        let first = self.probe(&probe).await;
        if let Err(error) = self.stream.delete_consumer(&probe_name).await {
            tracing::warn!(%error, "Cannot delete the probing consumer; the server deletes it when inactive.");
        }
        first
    }

    async fn probe(&self, probe: &PullConsumer) -> Result<Option<Payload>> {
        let mut read = 0;
        while read < PROBE_MESSAGES_MAX {
            let mut batch = probe
                .fetch()
                .max_messages(FETCH_MESSAGES_MAX)
                .messages()
                .await
                .map_err(|error| jetstream_error!("reading {}: {error}", self.plan.stream))?;
            let mut got = 0;
            while let Some(message) = batch.next().await {
                let message = message
                    .map_err(|error| jetstream_error!("reading {}: {error}", self.plan.stream))?;
                got += 1;
                let payload = payload(&message.payload);
                if mapping::can_infer_from(&payload) {
                    return Ok(Some(payload));
                }
            }
            if got == 0 {
                break;
            }
            read += got;
        }
        Ok(None)
    }

    /// Opens the durable consumer for a run that resumes after `committed` (exactly once) or
    /// trusts the consumer's own cursor (`None`, at least once). See the module docs.
    pub(crate) async fn reader(
        self,
        committed: Option<u64>,
        mapper: Mapper,
        follow: bool,
        checkpoint_interval: Duration,
    ) -> Result<(StreamReader, Acks)> {
        let plan = &self.plan;
        let name = plan.consumer.as_str();
        let config = |start: u64| pull::Config {
            durable_name: Some(plan.consumer.clone()),
            description: Some("sluice ingest".to_string()),
            filter_subject: plan.subject.clone(),
            deliver_policy: if start <= 1 {
                DeliverPolicy::All
            } else {
                DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                }
            },
            ack_policy: AckPolicy::All,
            ack_wait: checkpoint_interval + ACK_WAIT_MARGIN,
            max_ack_pending: ACK_PENDING_MESSAGES_MAX,
            ..Default::default()
        };
        let start = committed.unwrap_or(0) + 1;
        let existing = match self.stream.consumer_info(name).await {
            Ok(info) => Some(info),
            Err(error) if error.kind() == ConsumerInfoErrorKind::NotFound => None,
            Err(error) => {
                return Err(jetstream_error!(
                    "looking up consumer {name} of {}: {error}",
                    plan.stream
                ));
            }
        };
        let recreate = match &existing {
            None => false,
            Some(info) => {
                if info.config.filter_subject != plan.subject {
                    return Err(UsageError::new(
                        "consumer",
                        format!(
                            "consumer {name} of stream {} exists with the subject filter {:?}, not {:?}: pick another --consumer",
                            plan.stream, info.config.filter_subject, plan.subject
                        ),
                    )
                    .into());
                }
                if info.config.ack_policy != AckPolicy::All
                    || info.config.durable_name.as_deref() != Some(name)
                {
                    return Err(UsageError::new(
                        "consumer",
                        format!(
                            "consumer {name} of stream {} is not a durable consumer with ack policy \"all\": pick another --consumer",
                            plan.stream
                        ),
                    )
                    .into());
                }
                committed.is_some()
                    && (info.num_ack_pending > 0
                        || info.ack_floor.stream_sequence > committed.unwrap_or(0))
            }
        };
        if recreate {
            eprintln!(
                "note: consumer {name} holds messages of an earlier run that were never acknowledged, or is past the committed position: creating it again from sequence {start}"
            );
            self.stream
                .delete_consumer(name)
                .await
                .map_err(|error| jetstream_error!("deleting consumer {name}: {error}"))?;
        }
        let consumer: PullConsumer = if existing.is_none() || recreate {
            self.stream
                .create_consumer(config(start))
                .await
                .map_err(|error| jetstream_error!("creating consumer {name}: {error}"))?
        } else {
            self.stream
                .get_consumer(name)
                .await
                .map_err(|error| jetstream_error!("opening consumer {name}: {error}"))?
        };
        let max_ack_pending = consumer.cached_info().config.max_ack_pending;
        // Checkpoint early when half the server's allowance is waiting for its ack, so the
        // server never stops delivering for long.
        let due_at = if max_ack_pending > 0 {
            (max_ack_pending as u64 / 2).max(1)
        } else {
            ACK_PENDING_MESSAGES_MAX as u64 / 2
        };
        let reader = StreamReader {
            consumer,
            mapper,
            stream: plan.stream.clone(),
            subject: plan.subject.clone(),
            last: committed.unwrap_or(0),
            committed: committed.unwrap_or(0),
            follow,
            bytes_done: 0,
            until: None,
            held: std::collections::VecDeque::new(),
        };
        let acks = Acks {
            client: Some(self.client),
            last: None,
            unacked: 0,
            due_at,
        };
        Ok((reader, acks))
    }
}

fn payload(bytes: &[u8]) -> Payload {
    let mut end = bytes.len();
    while end > 0 && matches!(bytes[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    Payload::Json(bytes[..end].to_vec())
}

/// The acknowledgement of everything up to a message (ack policy "all").
pub(crate) struct Ack(async_nats::jetstream::Message);

/// The acknowledgement of one checkpoint's messages, sent once it committed.
pub(crate) struct AckCut(Option<Ack>);

impl AckCut {
    /// Acknowledges the checkpoint's messages: call after it committed.
    pub(crate) async fn acknowledge(self) {
        if let Some(Ack(message)) = self.0
            && let Err(error) = message.ack().await
        {
            tracing::warn!(%error, "Cannot acknowledge; the messages will be redelivered and skipped.");
        }
    }
}

/// Acknowledgements held until the checkpoint containing their messages committed.
///
/// Ack policy "all": acknowledging the last message of a checkpoint acknowledges every message
/// before it, and a checkpoint always covers a prefix of what was read, so one acknowledgement
/// per checkpoint is exact and cheap. A lost acknowledgement only means a redelivery, which the
/// reader skips.
pub(crate) struct Acks {
    client: Option<async_nats::Client>,
    last: Option<Ack>,
    unacked: u64,
    due_at: u64,
}

impl Acks {
    /// No acknowledgements (a file source).
    pub(crate) fn none() -> Acks {
        Acks {
            client: None,
            last: None,
            unacked: 0,
            due_at: u64::MAX,
        }
    }

    /// Records a chunk of `records` messages handed to the sink, the last one `ack`.
    pub(crate) fn add(&mut self, ack: Option<Ack>, records: u64) {
        if let Some(ack) = ack {
            self.last = Some(ack);
            self.unacked += records;
        }
    }

    /// Whether enough messages wait for their acknowledgement to checkpoint now.
    pub(crate) fn due(&self) -> bool {
        self.unacked >= self.due_at
    }

    /// Takes the acknowledgement of everything handed over so far, for the checkpoint that
    /// starts now (it covers exactly those messages).
    pub(crate) fn cut(&mut self) -> AckCut {
        self.unacked = 0;
        AckCut(self.last.take())
    }

    /// Sends the acknowledgements still buffered by the client.
    pub(crate) async fn finish(&self) {
        if let Some(client) = &self.client
            && let Err(error) = client.flush().await
        {
            tracing::warn!(%error, "Cannot flush the acknowledgements; the messages will be redelivered and skipped.");
        }
    }
}

/// Pulls messages, maps them and hands chunks to the pipeline.
pub(crate) struct StreamReader {
    consumer: PullConsumer,
    mapper: Mapper,
    stream: String,
    subject: String,
    /// Stream sequence of the last record read (at start: the committed one).
    last: u64,
    /// The committed sequence at start: redeliveries at or below it are acknowledged.
    committed: u64,
    follow: bool,
    bytes_done: u64,
    /// Replaying a checkpoint only some of the sink's lanes committed: a chunk ends exactly
    /// after this sequence (its state), so the pipeline can place that checkpoint's barrier
    /// there.
    until: Option<u64>,
    /// Messages pulled past `until`, read first by the next chunk.
    held: std::collections::VecDeque<async_nats::jetstream::Message>,
}

impl StreamReader {
    /// Ends a chunk exactly after `sequence` (see `Recovery::partial` of the sink).
    pub(crate) fn replay_until(&mut self, sequence: u64) {
        self.until = Some(sequence);
    }

    /// Where the next record is.
    pub(crate) fn position(&self) -> StreamPosition {
        StreamPosition {
            stream: self.stream.clone(),
            subject: self.subject.clone(),
            sequence: self.last,
        }
    }

    /// Reads until the stream holds nothing more (without `--follow`), the receiver is gone,
    /// or an error (handed over).
    pub(crate) async fn run(mut self, sender: mpsc::Sender<Result<Chunk>>) {
        loop {
            match self.next_chunk(&sender).await {
                Ok(Some(chunk)) => {
                    if sender.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(error) => {
                    let _ = sender.send(Err(error)).await;
                    return;
                }
            }
        }
    }

    /// The next chunk, or `None` at the end.
    async fn next_chunk(&mut self, sender: &mpsc::Sender<Result<Chunk>>) -> Result<Option<Chunk>> {
        let mut chunk = Building::default();
        let started = Instant::now();
        // Messages held back by the last chunk's replay end come first.
        while let Some(message) = self.held.pop_front() {
            if self.take(message, &mut chunk).await? {
                return Ok(Some(self.finish(chunk)));
            }
        }
        loop {
            if sender.is_closed() {
                return Ok(None);
            }
            let want = FETCH_MESSAGES_MAX.min(CHUNK_RECORDS_MAX - chunk.records as usize);
            let mut batch = self
                .consumer
                .batch()
                .max_messages(want)
                .expires(FETCH_WAIT)
                .messages()
                .await
                .map_err(|error| {
                    jetstream_error!("pulling from stream {}: {error}", self.stream)
                })?;
            let mut got = 0;
            let mut replay_end = false;
            while let Some(message) = batch.next().await {
                let message = message.map_err(|error| {
                    jetstream_error!("pulling from stream {}: {error}", self.stream)
                })?;
                got += 1;
                if replay_end {
                    self.held.push_back(message);
                } else {
                    replay_end = self.take(message, &mut chunk).await?;
                }
            }
            if replay_end {
                break;
            }
            let full = chunk.records as usize >= CHUNK_RECORDS_MAX
                || chunk.bytes >= CHUNK_BYTES_MAX
                || started.elapsed() >= CHUNK_INTERVAL;
            if chunk.records > 0 && (got == 0 || full) {
                break;
            }
            if got == 0 && !self.follow {
                let info = self.consumer.info().await.map_err(|error| {
                    jetstream_error!("reading consumer info of {}: {error}", self.stream)
                })?;
                if info.num_pending == 0 {
                    return Ok(None);
                }
            }
        }
        Ok(Some(self.finish(chunk)))
    }

    /// Adds one message to the chunk (a redelivery of one already read is skipped); returns
    /// whether it is the replay's last, which ends the chunk.
    async fn take(
        &mut self,
        message: async_nats::jetstream::Message,
        chunk: &mut Building,
    ) -> Result<bool> {
        let sequence = message
            .info()
            .map_err(|error| jetstream_error!("a message without JetStream metadata: {error}"))?
            .stream_sequence;
        if sequence <= self.last {
            // A redelivery of a message already read: never written again.
            if sequence <= self.committed
                && let Err(error) = message.ack().await
            {
                tracing::warn!(%error, sequence, "Cannot acknowledge a committed message.");
            }
            return Ok(false);
        }
        if self.until.is_some_and(|until| sequence > until) {
            // Past the replay's end without meeting it (the stream lost messages): the
            // checkpoint cannot be repeated; the sink refuses the barrier placed here.
            self.until = None;
        }
        self.last = sequence;
        chunk.records += 1;
        chunk.bytes += message.payload.len();
        self.bytes_done += message.payload.len() as u64;
        let payload = payload(&message.payload);
        match self.mapper.map(&payload) {
            Ok(row) => chunk.rows.push(row),
            Err(refusal) => chunk.rejected.push(Rejected {
                record: self.mapper.raw(&payload),
                position: format!("{}:{sequence}", self.stream),
                code: refusal.code.to_string(),
                reason: refusal.reason,
            }),
        }
        chunk.ack = Some(Ack(message));
        if self.until == Some(sequence) {
            self.until = None;
            return Ok(true);
        }
        Ok(false)
    }

    fn finish(&self, chunk: Building) -> Chunk {
        let Building {
            rows,
            rejected,
            records,
            ack,
            ..
        } = chunk;
        Chunk {
            rows,
            rejected,
            records,
            position: crate::source::SourcePosition::Stream(self.position()),
            bytes_done: self.bytes_done,
            ack,
        }
    }
}

/// A chunk being filled.
#[derive(Default)]
struct Building {
    rows: Vec<sluice_sink::Row>,
    rejected: Vec<Rejected>,
    records: u64,
    bytes: usize,
    ack: Option<Ack>,
}
