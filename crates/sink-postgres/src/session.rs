//! Pooled connections: getting one (with the pool metrics), and holding one with a transaction
//! open.
//!
//! The pool checks a returned connection only for being open (`RecyclingMethod::Fast`, see
//! [`crate::PostgresBackend`]), so a connection handed back in the middle of a transaction would
//! give its next user that transaction: a later `COMMIT` would commit someone else's half-done
//! writes. [`Session`] is the one place that opens transactions, and it hands its connection
//! back only when no transaction is open; otherwise (an error, a dropped writer, a cancelled
//! call) it detaches the connection from the pool and drops it, and the server rolls the
//! transaction back when the connection closes.

use crate::error::{classify, from_pool};
use deadpool_postgres::{Object, Pool};
use metrics::{Gauge, Histogram};
use sluice_sink::{BackendError, Ident, MetricName};
use std::time::Instant;

/// The pool and its metrics for one table: `PoolAcquireDurationSeconds` around every
/// `pool.get()`, and the `PoolConnectionsActive` / `PoolConnectionsIdle` gauges after it (once
/// per acquire, so once per batch or checkpoint step, never per row).
pub(crate) struct Pooled {
    pool: Pool,
    acquire: Histogram,
    active: Gauge,
    idle: Gauge,
}

impl Pooled {
    /// The pool, with its metrics labelled `table` and `backend = "postgres"`.
    pub(crate) fn new(pool: Pool, table: &Ident) -> Pooled {
        let labels = [
            ("table", table.to_string()),
            ("backend", "postgres".to_string()),
        ];
        Pooled {
            pool,
            acquire: metrics::histogram!(MetricName::PoolAcquireDurationSeconds.as_str(), &labels),
            active: metrics::gauge!(MetricName::PoolConnectionsActive.as_str(), &labels),
            idle: metrics::gauge!(MetricName::PoolConnectionsIdle.as_str(), &labels),
        }
    }

    /// A pooled connection (never inside a transaction: see the module docs).
    pub(crate) async fn get(&self) -> Result<Object, BackendError> {
        let started = Instant::now();
        let result = self.pool.get().await;
        self.acquire.record(started.elapsed().as_secs_f64());
        let status = self.pool.status();
        self.active
            .set(status.size.saturating_sub(status.available) as f64);
        self.idle.set(status.available as f64);
        result.map_err(from_pool)
    }

    /// A connection wrapped in a [`Session`].
    pub(crate) async fn session(&self) -> Result<Session, BackendError> {
        Ok(Session::new(self.get().await?))
    }
}

/// A pooled connection that may hold an open transaction. Dropped with a transaction open, it
/// never returns to the pool (see the module docs).
pub(crate) struct Session {
    /// Always `Some` until dropped.
    object: Option<Object>,
    /// A transaction may be open: set before `BEGIN` is sent, cleared only once the server
    /// confirmed `COMMIT`, `ROLLBACK` or `PREPARE TRANSACTION`.
    open: bool,
}

impl Session {
    pub(crate) fn new(object: Object) -> Session {
        Session {
            object: Some(object),
            open: false,
        }
    }

    /// The connection.
    pub(crate) fn client(&self) -> &Object {
        self.object.as_ref().expect("present until dropped")
    }

    /// Opens a transaction and runs `first` (simple statements without parameters) in it, in
    /// the same round trip.
    pub(crate) async fn begin_with(&mut self, first: Option<&str>) -> Result<(), BackendError> {
        self.open = true;
        let sql = match first {
            Some(first) => format!("BEGIN; {first}"),
            None => "BEGIN".to_string(),
        };
        self.client()
            .batch_execute(&sql)
            .await
            .map_err(|e| classify(&e))
    }

    /// Marks a transaction open and hands out the connection, for a caller that sends `BEGIN`
    /// pipelined with the transaction's first statements (so the server may hold an open
    /// transaction from the moment anything is sent).
    pub(crate) fn opening(&mut self) -> &Object {
        self.open = true;
        self.client()
    }

    /// Commits the open transaction. On error the transaction counts as still open (the
    /// connection is dropped with the session, not reused).
    pub(crate) async fn commit(&mut self) -> Result<(), tokio_postgres::Error> {
        self.client().batch_execute("COMMIT").await?;
        self.open = false;
        Ok(())
    }

    /// Runs `PREPARE TRANSACTION <gid>` (`gid` already a quoted literal). Afterwards the
    /// prepared transaction belongs to the server, not to this connection.
    pub(crate) async fn prepare_transaction(
        &mut self,
        gid_literal: &str,
    ) -> Result<(), tokio_postgres::Error> {
        self.client()
            .batch_execute(&format!("PREPARE TRANSACTION {gid_literal}"))
            .await?;
        self.open = false;
        Ok(())
    }

    /// Rolls the open transaction back, so the connection can go back to the pool; when that
    /// fails the connection is dropped instead (which rolls back too).
    pub(crate) async fn rollback(&mut self) {
        if !self.open {
            return;
        }
        match self.client().batch_execute("ROLLBACK").await {
            Ok(()) => self.open = false,
            Err(error) => tracing::debug!(
                error = %classify(&error),
                "ROLLBACK failed; the connection is closed instead."
            ),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.open
            && let Some(object) = self.object.take()
        {
            // Detached from the pool, then dropped: the connection closes and the server rolls
            // its transaction back.
            drop(Object::take(object));
        }
    }
}
