use crate::{OpenOptions, SqliteError, open_connection};
use rusqlite::{Connection, ErrorCode};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError<E> {
    /// The closure returned an error; its savepoint was rolled back, the rest of the batch was
    /// committed.
    #[error(transparent)]
    Job(E),
    /// The closure panicked; its savepoint was rolled back.
    #[error("write closure panicked: {0}")]
    Panicked(String),
    /// The batch's transaction could not begin or commit; nothing of it was written.
    #[error("transaction failed: {0}")]
    Transaction(String),
    /// The writer thread has stopped.
    #[error("the SQLite writer has stopped")]
    Closed,
}

/// Counters of the writer's work, for tests and benchmarks.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Transactions committed.
    pub transactions: AtomicU64,
    /// Requests run (each in a savepoint).
    pub requests: AtomicU64,
    /// Times `BEGIN IMMEDIATE` found another process holding the lock and was retried.
    pub busy_retries: AtomicU64,
}

type Deliver = Box<dyn FnOnce(Option<String>) + Send>;
/// A queued request: run on the connection, or told why it could not run.
type Job = Box<dyn FnOnce(Result<&Connection, String>) -> (bool, Deliver) + Send>;

/// The handle to the writer thread. Cheap to clone; the thread stops when the last handle is
/// dropped and its queue is drained.
#[derive(Clone)]
pub struct GroupCommitWriter {
    sender: mpsc::Sender<Job>,
    stats: Arc<WriterStats>,
}

impl GroupCommitWriter {
    /// Opens the write connection, runs `init` on it (schema migrations) and starts the thread.
    pub fn open(
        options: &OpenOptions,
        queue_requests_max: usize,
        batch_requests_max: usize,
        init: impl FnOnce(&Connection) -> Result<(), SqliteError> + Send + 'static,
    ) -> Result<Self, SqliteError> {
        assert!(
            queue_requests_max > 0 && batch_requests_max > 0,
            "limits must be positive"
        );
        let connection = open_connection(options, false)?;
        init(&connection)?;
        let (sender, receiver) = mpsc::channel(queue_requests_max);
        let stats = Arc::new(WriterStats::default());
        let thread_stats = stats.clone();
        std::thread::Builder::new()
            .name("sluice-sqlite-writer".into())
            .spawn(move || run(connection, receiver, batch_requests_max, &thread_stats))
            .map_err(SqliteError::Spawn)?;
        Ok(Self { sender, stats })
    }

    /// Runs `job` in the next group transaction, in its own savepoint, and answers after the
    /// transaction committed. `job` must not begin or end transactions itself.
    pub async fn write<T, E>(
        &self,
        job: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, WriteError<E>>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<T, WriteError<E>>>();
        let wrapped: Job = Box::new(move |connection| {
            let connection = match connection {
                Ok(connection) => connection,
                Err(reason) => {
                    let deliver: Deliver = Box::new(move |_| {
                        let _ = reply.send(Err(WriteError::Transaction(reason)));
                    });
                    return (false, deliver);
                }
            };
            let outcome = catch_unwind(AssertUnwindSafe(|| job(connection)));
            let ok = matches!(outcome, Ok(Ok(_)));
            let deliver: Deliver = Box::new(move |transaction_error| {
                let result = match (transaction_error, outcome) {
                    (Some(message), _) => Err(WriteError::Transaction(message)),
                    (None, Ok(Ok(value))) => Ok(value),
                    (None, Ok(Err(error))) => Err(WriteError::Job(error)),
                    (None, Err(panic)) => Err(WriteError::Panicked(panic_text(panic.as_ref()))),
                };
                // The caller may have gone away; the write stands either way.
                let _ = reply.send(result);
            });
            (ok, deliver)
        });
        self.sender
            .send(wrapped)
            .await
            .map_err(|_| WriteError::Closed)?;
        answer.await.map_err(|_| WriteError::Closed)?
    }

    /// The writer's counters.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }
}

fn run(
    connection: Connection,
    mut receiver: mpsc::Receiver<Job>,
    batch_requests_max: usize,
    stats: &WriterStats,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(batch_requests_max);
    let mut delivers: Vec<Deliver> = Vec::with_capacity(batch_requests_max);
    while let Some(first) = receiver.blocking_recv() {
        batch.push(first);
        while batch.len() < batch_requests_max {
            match receiver.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let transaction_error = match begin_immediate(&connection, stats) {
            Ok(()) => {
                for job in batch.drain(..) {
                    delivers.push(run_in_savepoint(&connection, job));
                }
                stats
                    .requests
                    .fetch_add(delivers.len() as u64, Ordering::Relaxed);
                match connection
                    .prepare_cached("COMMIT")
                    .and_then(|mut s| s.execute([]))
                {
                    Ok(_) => {
                        stats.transactions.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                    Err(error) => {
                        let _ = connection.execute_batch("ROLLBACK");
                        tracing::error!(%error, "SQLite group commit failed");
                        Some(error.to_string())
                    }
                }
            }
            Err(error) => {
                tracing::error!(%error, "SQLite writer cannot begin a transaction");
                let reason = format!("cannot begin a transaction: {error}");
                delivers.extend(batch.drain(..).map(|job| job(Err(reason.clone())).1));
                Some(error.to_string())
            }
        };
        for deliver in delivers.drain(..) {
            deliver(transaction_error.clone());
        }
    }
}

fn begin_immediate(connection: &Connection, stats: &WriterStats) -> rusqlite::Result<()> {
    loop {
        match connection
            .prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut s| s.execute([]))
        {
            Ok(_) => return Ok(()),
            // Another process holds the write lock beyond the busy timeout: keep waiting
            // here, so that no caller ever sees "database is locked".
            Err(rusqlite::Error::SqliteFailure(error, _))
                if matches!(
                    error.code,
                    ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked
                ) =>
            {
                stats.busy_retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("SQLite database is locked by another process; waiting");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(error) => return Err(error),
        }
    }
}

fn run_in_savepoint(connection: &Connection, job: Job) -> Deliver {
    if let Err(error) = connection
        .prepare_cached("SAVEPOINT job")
        .and_then(|mut s| s.execute([]))
    {
        tracing::error!(%error, "SQLite savepoint failed");
        return job(Err(format!("cannot open a savepoint: {error}"))).1;
    }
    let (ok, deliver) = job(Ok(connection));
    let end = if ok { "RELEASE job" } else { "ROLLBACK TO job" };
    let ended = connection
        .prepare_cached(end)
        .and_then(|mut s| s.execute([]));
    if !ok && ended.is_ok() {
        let _ = connection
            .prepare_cached("RELEASE job")
            .and_then(|mut s| s.execute([]));
    }
    if let Err(error) = ended {
        tracing::error!(%error, "SQLite savepoint could not be ended");
    }
    deliver
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic payload".to_string())
}
