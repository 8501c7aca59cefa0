//! The group-commit writer thread and its held-transaction mode.
//!
//! Plain [`GroupCommitWriter::write`] requests are grouped: the thread begins a transaction at
//! the first one, runs every request already queued (up to `batch_requests_max`) in a savepoint
//! each, commits once and answers them all.
//!
//! The held-transaction mode keeps one transaction open across many requests, for a caller
//! that decides itself when its writes become durable (the sink's exactly-once delivery):
//! [`GroupCommitWriter::write_uncommitted`] runs a request in a savepoint and answers at once,
//! leaving the transaction open ("held"); [`GroupCommitWriter::commit_held`] commits it and
//! [`GroupCommitWriter::rollback_held`] discards it. While a transaction is held, plain writes
//! join it and are answered when it ends, because only then are they durable (or gone). The
//! thread answers no request before its outcome is settled, and never lets a "database is
//! locked" reach a caller.

use crate::checkpointer::Checkpointer;
use crate::{Journal, Location, OpenOptions, SqliteError, open_connection};
use rusqlite::{Connection, ErrorCode};
use std::convert::Infallible;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError<E> {
    /// The closure returned an error; its savepoint was rolled back, the other requests of its
    /// transaction are not affected.
    #[error(transparent)]
    Job(E),
    /// The closure panicked; its savepoint was rolled back.
    #[error("write closure panicked: {0}")]
    Panicked(String),
    /// The transaction could not begin or commit, or it was rolled back (by
    /// [`GroupCommitWriter::rollback_held`], or by SQLite itself after an error such as a full
    /// disk): nothing of the request was written. For held-transaction requests it also means
    /// the held transaction is gone.
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
    /// Held transactions rolled back ([`GroupCommitWriter::rollback_held`], a dropped
    /// [`HeldClaim`], or the writer stopping while one was held).
    pub held_rollbacks: AtomicU64,
}

type Deliver = Box<dyn FnOnce(Option<String>) + Send>;
/// A request's closure: run on the connection (or told why it could not run); returns whether
/// it succeeded and how to answer, given the transaction's failure if there is one.
type Job = Box<dyn FnOnce(Result<&Connection, String>) -> (bool, Deliver) + Send>;

/// What the thread is asked to do.
enum Request {
    /// Run in the group transaction; answered when that transaction ends.
    Write(Job),
    /// Run in the held transaction (begun if needed); answered when its savepoint ends.
    Uncommitted(Job),
    /// Run in the held transaction, then commit it if the job succeeded.
    CommitHeld(Job),
    /// Roll the held transaction back; the answer says whether one was open. `None` when
    /// nobody waits for the answer (a dropped [`HeldClaim`]).
    RollbackHeld(Option<oneshot::Sender<Result<bool, String>>>),
}

/// The handle to the writer thread. Cheap to clone; the thread stops when the last handle is
/// dropped and its queue is drained (rolling back a held transaction: nobody is left to commit
/// it).
#[derive(Clone)]
pub struct GroupCommitWriter {
    sender: mpsc::Sender<Request>,
    stats: Arc<WriterStats>,
    held_claimed: Arc<AtomicBool>,
}

/// The right to use a writer's held-transaction mode, for one user among those sharing the
/// writer (see [`GroupCommitWriter::claim_held`]). Dropping it rolls back a transaction still
/// held: its owner is gone, so nobody can commit it.
pub struct HeldClaim {
    sender: mpsc::Sender<Request>,
    held_claimed: Arc<AtomicBool>,
}

impl Drop for HeldClaim {
    fn drop(&mut self) {
        // The claim is given up only once the rollback is queued, so that a next claimer's
        // requests come after it.
        match self.sender.try_send(Request::RollbackHeld(None)) {
            Ok(()) | Err(TrySendError::Closed(_)) => {
                self.held_claimed.store(false, Ordering::SeqCst)
            }
            Err(TrySendError::Full(request)) => {
                // The queue is full and this may run inside an async runtime, where a blocking
                // send is not allowed: hand the wait to a short-lived thread.
                let sender = self.sender.clone();
                let claimed = self.held_claimed.clone();
                let spawned = std::thread::Builder::new()
                    .name("sluice-sqlite-release".into())
                    .spawn(move || {
                        let _ = sender.blocking_send(request);
                        claimed.store(false, Ordering::SeqCst);
                    });
                if let Err(error) = spawned {
                    // The claim stays taken: a rollback that was not queued must not let a
                    // next claimer inherit the transaction.
                    tracing::error!(%error, "cannot queue the rollback of a released held transaction");
                }
            }
        }
    }
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
        let mut connection = open_connection(options, false)?;
        init(&connection)?;
        let checkpointer = match (&options.location, options.journal) {
            (Location::File(_), Journal::Wal) => {
                Some(Checkpointer::start(options, &mut connection)?)
            }
            // A rollback journal has nothing to copy after a commit.
            (Location::File(_), Journal::Rollback) | (Location::Memory, _) => None,
        };
        let (sender, receiver) = mpsc::channel(queue_requests_max);
        let stats = Arc::new(WriterStats::default());
        let thread = WriterThread {
            connection,
            _checkpointer: checkpointer,
            stats: stats.clone(),
            batch_requests_max,
            open: false,
            group: 0,
            held: false,
            lost: None,
            pending: Vec::with_capacity(batch_requests_max),
        };
        std::thread::Builder::new()
            .name("sluice-sqlite-writer".into())
            .spawn(move || thread.run(receiver))
            .map_err(SqliteError::Spawn)?;
        Ok(Self {
            sender,
            stats,
            held_claimed: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Runs `job` in the next group transaction, in its own savepoint, and answers after the
    /// transaction committed. While a transaction is held (see
    /// [`GroupCommitWriter::write_uncommitted`]) the job runs in it and is answered when it
    /// ends: after [`GroupCommitWriter::commit_held`], or with [`WriteError::Transaction`] after
    /// a rollback. `job` must not begin or end transactions itself.
    pub async fn write<T, E>(
        &self,
        job: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, WriteError<E>>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        self.request(job, Request::Write).await
    }

    /// Runs `job` in its own savepoint inside the writer's current transaction (`BEGIN
    /// IMMEDIATE` if none is open) and answers as soon as the savepoint is released, or rolled
    /// back when `job` fails or panics (the transaction stays usable). The transaction is then
    /// held: it stays open, unseen by other connections, until
    /// [`GroupCommitWriter::commit_held`] or [`GroupCommitWriter::rollback_held`], and it keeps
    /// SQLite's write lock meanwhile (other processes' writers wait). If SQLite ends the
    /// transaction itself (some errors, like a full disk, roll back the whole transaction) the
    /// answer is [`WriteError::Transaction`], and every later held-transaction request is
    /// refused the same way until `rollback_held` acknowledges the loss, so that a commit never
    /// makes only part of the held writes durable.
    ///
    /// Held transactions are one caller's: users sharing the writer agree on who with
    /// [`GroupCommitWriter::claim_held`].
    pub async fn write_uncommitted<T, E>(
        &self,
        job: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, WriteError<E>>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        self.request(job, Request::Uncommitted).await
    }

    /// Runs `job` in a savepoint of the held transaction (or of a new one), then commits the
    /// transaction and answers after the `COMMIT`; the plain writes that ran inside the held
    /// transaction are answered at the same time. When `job` fails or panics, its savepoint is
    /// rolled back and nothing is committed: the transaction stays held.
    pub async fn commit_held<T, E>(
        &self,
        job: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, WriteError<E>>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        self.request(job, Request::CommitHeld).await
    }

    /// Rolls back the held transaction: its uncommitted writes are discarded and the plain
    /// writes that ran in it are answered with [`WriteError::Transaction`]. Returns whether a
    /// transaction was held. Also acknowledges a held transaction that SQLite ended by itself,
    /// so that held-transaction requests are accepted again.
    pub async fn rollback_held(&self) -> Result<bool, WriteError<Infallible>> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Request::RollbackHeld(Some(reply)))
            .await
            .map_err(|_| WriteError::Closed)?;
        answer
            .await
            .map_err(|_| WriteError::Closed)?
            .map_err(WriteError::Transaction)
    }

    /// Claims the held-transaction mode for one user of this writer (all clones share the
    /// claim): `None` when another user holds it. Two users holding transactions at once would
    /// commit each other's writes, so each takes the claim first. The held-transaction methods
    /// do not check it; the claim is how users sharing a writer agree. Dropping the claim rolls
    /// back whatever is still held.
    pub fn claim_held(&self) -> Option<HeldClaim> {
        self.held_claimed
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .ok()
            .map(|_| HeldClaim {
                sender: self.sender.clone(),
                held_claimed: self.held_claimed.clone(),
            })
    }

    /// The writer's counters.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    async fn request<T, E>(
        &self,
        job: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        kind: fn(Job) -> Request,
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
            .send(kind(wrapped))
            .await
            .map_err(|_| WriteError::Closed)?;
        answer.await.map_err(|_| WriteError::Closed)?
    }
}

/// The thread's side: the only write connection and the state of its transaction.
struct WriterThread {
    connection: Connection,
    /// Checkpoints the WAL of a file database in the background; stopped with this thread.
    _checkpointer: Option<Checkpointer>,
    stats: Arc<WriterStats>,
    batch_requests_max: usize,
    /// A transaction begun by this thread is open.
    open: bool,
    /// Requests run in the open transaction.
    group: usize,
    /// The open transaction is held: it ends only by `commit_held` or `rollback_held`.
    held: bool,
    /// Why a held transaction ended without being asked to (SQLite rolled it back, or its
    /// `COMMIT` failed). Held-transaction requests are refused until `rollback_held`.
    lost: Option<String>,
    /// Answers due when the open transaction ends.
    pending: Vec<Deliver>,
}

impl WriterThread {
    fn run(mut self, mut receiver: mpsc::Receiver<Request>) {
        loop {
            let request = if self.open && !self.held {
                // A group: take what is already queued, up to the limit, then commit.
                let next = if self.group < self.batch_requests_max {
                    receiver.try_recv().ok()
                } else {
                    None
                };
                match next {
                    Some(request) => request,
                    None => {
                        self.commit();
                        continue;
                    }
                }
            } else {
                match receiver.blocking_recv() {
                    Some(request) => request,
                    None => break,
                }
            };
            self.handle(request);
        }
        if self.open {
            // Only a held transaction stays open while the queue is empty; every handle is
            // gone, so nobody can commit it.
            self.stats.held_rollbacks.fetch_add(1, Ordering::Relaxed);
            let _ = self.rollback("the writer stopped while the transaction was held");
        }
    }

    fn handle(&mut self, request: Request) {
        match request {
            Request::Write(job) => {
                if let Err(reason) = self.begin() {
                    return refuse(job, reason);
                }
                let (_, deliver) = self.run_job(job);
                match self.ended_by_sqlite() {
                    Some(reason) => deliver(Some(reason)),
                    None => self.pending.push(deliver),
                }
            }
            Request::Uncommitted(job) => {
                if let Some(reason) = self.refusal() {
                    return refuse(job, reason);
                }
                if let Err(reason) = self.begin() {
                    return refuse(job, reason);
                }
                self.held = true;
                let (_, deliver) = self.run_job(job);
                deliver(self.ended_by_sqlite());
            }
            Request::CommitHeld(job) => {
                if let Some(reason) = self.refusal() {
                    return refuse(job, reason);
                }
                if let Err(reason) = self.begin() {
                    return refuse(job, reason);
                }
                let (ok, deliver) = self.run_job(job);
                if let Some(reason) = self.ended_by_sqlite() {
                    deliver(Some(reason));
                } else if ok {
                    self.pending.push(deliver);
                    self.commit();
                } else {
                    deliver(None);
                }
            }
            Request::RollbackHeld(reply) => {
                let result = if self.held {
                    self.stats.held_rollbacks.fetch_add(1, Ordering::Relaxed);
                    self.rollback("rolled back with the held transaction")
                        .map(|()| true)
                } else {
                    if let Some(reason) = self.lost.take() {
                        tracing::info!(%reason, "Lost held transaction acknowledged.");
                    }
                    Ok(false)
                };
                if let Some(reply) = reply {
                    // The caller may have gone away; the rollback stands either way.
                    let _ = reply.send(result);
                }
            }
        }
    }

    /// Why held-transaction requests are refused now, if they are.
    fn refusal(&self) -> Option<String> {
        self.lost.as_ref().map(|reason| {
            format!("the held transaction was lost ({reason}); roll it back before writing again")
        })
    }

    /// Opens a transaction unless one is open.
    fn begin(&mut self) -> Result<(), String> {
        if self.open {
            return Ok(());
        }
        if !self.connection.is_autocommit() {
            // A transaction this thread does not count as open (a failed ROLLBACK left it):
            // it cannot be trusted, so end it before beginning a fresh one.
            let _ = self.connection.execute_batch("ROLLBACK");
        }
        match begin_immediate(&self.connection, &self.stats) {
            Ok(()) => {
                self.open = true;
                self.group = 0;
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "SQLite writer cannot begin a transaction");
                Err(format!("cannot begin a transaction: {error}"))
            }
        }
    }

    fn run_job(&mut self, job: Job) -> (bool, Deliver) {
        self.group += 1;
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        run_in_savepoint(&self.connection, job)
    }

    /// After a job: whether SQLite ended the transaction by itself. Errors such as
    /// `SQLITE_FULL`, `SQLITE_IOERR` or an `ON CONFLICT ROLLBACK` constraint roll back the whole
    /// transaction, not just the statement; a job that ends it breaks its contract. Either way
    /// the transaction's writes are not durable: the answers waiting for it are told so.
    fn ended_by_sqlite(&mut self) -> Option<String> {
        if !self.connection.is_autocommit() {
            return None;
        }
        let reason = "SQLite ended the transaction during a request (an error such as a full \
                      disk, an I/O error or an ON CONFLICT ROLLBACK constraint rolls back the \
                      whole transaction)"
            .to_string();
        tracing::error!(held = self.held, "{reason}");
        if self.held {
            self.lost = Some(reason.clone());
        }
        self.close(Some(&reason));
        Some(reason)
    }

    fn commit(&mut self) {
        match self
            .connection
            .prepare_cached("COMMIT")
            .and_then(|mut s| s.execute([]))
        {
            Ok(_) => {
                self.stats.transactions.fetch_add(1, Ordering::Relaxed);
                self.close(None);
            }
            Err(error) => {
                let _ = self.connection.execute_batch("ROLLBACK");
                tracing::error!(%error, held = self.held, "SQLite commit failed");
                if self.held {
                    self.lost = Some(format!("COMMIT failed: {error}"));
                }
                self.close(Some(&error.to_string()));
            }
        }
    }

    /// Rolls back the open transaction; its waiting answers are told `reason`.
    fn rollback(&mut self, reason: &str) -> Result<(), String> {
        let result = self.connection.execute_batch("ROLLBACK");
        if let Err(error) = &result {
            tracing::error!(%error, "SQLite rollback failed");
            if !self.connection.is_autocommit() {
                // Still open: keep it held (and its answers waiting) so a later rollback can
                // end it; nothing in it can have been committed.
                return Err(format!("cannot roll back: {error}"));
            }
        }
        self.close(Some(reason));
        Ok(())
    }

    /// Records that the open transaction ended and answers everyone waiting for it.
    fn close(&mut self, transaction_error: Option<&str>) {
        self.open = false;
        self.held = false;
        self.group = 0;
        for deliver in self.pending.drain(..) {
            deliver(transaction_error.map(str::to_string));
        }
    }
}

/// Answers a job that could not run.
fn refuse(job: Job, reason: String) {
    let (_, deliver) = job(Err(reason));
    // The answer of a job that did not run carries its reason already.
    deliver(None);
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

fn run_in_savepoint(connection: &Connection, job: Job) -> (bool, Deliver) {
    if let Err(error) = connection
        .prepare_cached("SAVEPOINT job")
        .and_then(|mut s| s.execute([]))
    {
        tracing::error!(%error, "SQLite savepoint failed");
        return job(Err(format!("cannot open a savepoint: {error}")));
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
    (ok, deliver)
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic payload".to_string())
}
