//! The backend: a deadpool-postgres pool, `prepare` on one pooled connection, and a writer
//! that runs each batch as one transaction on one pooled connection.
//!
//! See [`PostgresBackend`] for what happens when a `COMMIT`'s answer is lost.

use crate::checkpoints::{PostgresCheckpoints, Shared};
use crate::error::{PostgresError, classify, from_pool, shortened};
use crate::progress::{ProgressSql, prepare_progress_table};
use crate::session::Pooled;
use crate::statements::{Source, WriteFailure, WritePlan, write_rows};
use crate::table::{DeadLetterColumns, dead_letter_insert_sql, prepare_table};
use async_trait::async_trait;
use deadpool_postgres::{Pool, PoolError, WeakPool};
use sluice_postgres::{ConnectError, ConnectOptions, PoolOptions, SERVER_VERSION_MIN};
use sluice_sink::{
    BackendError, Batch, BatchOutcome, CheckpointSpec, CheckpointWriter, DeadLetter, Delivery,
    DescribedColumn, ErrorClass, Ident, PrepareRequest, Prepared, SinkBackend, SinkConfig,
    TableWriter,
};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The `application_name` the sink's connections use unless the URL sets one.
pub const APPLICATION_NAME: &str = "sluice-sink";

/// Upper bound of `pool_connections_max`, in connections.
pub const POOL_CONNECTIONS_MAX_LIMIT: usize = 1_000;
/// Upper bound of every `*_ms` option, in milliseconds (one hour).
pub const TIMEOUT_MS_LIMIT: u64 = 3_600_000;

/// How to reach a PostgreSQL database for the sink.
///
/// The URL (`postgres://user:password@host:port/database?options`, or the `key=value` form) is
/// parsed once by `sluice-postgres`, which also reads the TLS settings (`sslmode`,
/// `sslrootcert`); the password is kept only inside the client library's configuration, whose
/// `Debug` output redacts it. [`PostgresSinkOptions::target`] names the server in messages.
#[derive(Clone)]
pub struct PostgresSinkOptions {
    connect: ConnectOptions,
    /// Connections in the pool, at most, 1 to 1,000. Default: 3, which is right for the
    /// default `flush_concurrency` of 2: one connection per flush lane plus one for `prepare`,
    /// dead letters and commit checks. Use [`PostgresSinkOptions::for_sink`] to derive it from
    /// a sink configuration (`flush_concurrency + 1`).
    pub pool_connections_max: usize,
    /// Longest wait for a pooled connection, including opening one, in milliseconds, 1 to
    /// 3,600,000. A timeout is a transient error (retried by the sink). Default: 30,000.
    pub pool_acquire_timeout_ms: u64,
    /// A pooled connection left idle this long is closed, except the last idle one, in
    /// milliseconds, 1 to 3,600,000. With adaptive flush concurrency (the sink's default at
    /// least once) the lanes share the connections the load needs, the most recently used
    /// first, and the others go idle and are closed. Default: 1,000.
    pub pool_idle_ms_max: u64,
    /// Longest wait to open one connection, in milliseconds, 1 to 3,600,000; a
    /// `connect_timeout` in the URL takes precedence. Default: 10,000.
    pub connect_timeout_ms: u64,
    /// Longest time spent finding out whether a `COMMIT` whose answer was lost took effect, in
    /// milliseconds, 1 to 3,600,000 (see the module docs). Default: 60,000.
    pub commit_check_timeout_ms: u64,
}

impl PostgresSinkOptions {
    /// Parses a connection URL. Errors never repeat the URL or its password.
    pub fn new(url: &str) -> Result<PostgresSinkOptions, PostgresError> {
        let connect = ConnectOptions::parse(url).map_err(|error| match error {
            ConnectError::InvalidUrl { message } => PostgresError::InvalidUrl { message },
            other => PostgresError::Connection(other),
        })?;
        Ok(PostgresSinkOptions {
            connect,
            pool_connections_max: 3,
            pool_acquire_timeout_ms: 30_000,
            pool_idle_ms_max: 1_000,
            connect_timeout_ms: 10_000,
            commit_check_timeout_ms: 60_000,
        })
    }

    /// Options for a sink with `config`: the pool holds `flush_concurrency + 1` connections.
    pub fn for_sink(url: &str, config: &SinkConfig) -> Result<PostgresSinkOptions, PostgresError> {
        let mut options = PostgresSinkOptions::new(url)?;
        options.pool_connections_max = config.flush_concurrency() + 1;
        Ok(options)
    }

    /// The server as `user@host:port/database`, without the password.
    pub fn target(&self) -> &str {
        self.connect.target()
    }

    fn validate(&self) -> Result<(), PostgresError> {
        let check = |option, value: u64, max: u64, rule| {
            if (1..=max).contains(&value) {
                Ok(())
            } else {
                Err(PostgresError::InvalidOption {
                    option,
                    value,
                    rule,
                })
            }
        };
        check(
            "pool_connections_max",
            self.pool_connections_max as u64,
            POOL_CONNECTIONS_MAX_LIMIT as u64,
            "1 to 1,000",
        )?;
        for (option, value) in [
            ("pool_acquire_timeout_ms", self.pool_acquire_timeout_ms),
            ("pool_idle_ms_max", self.pool_idle_ms_max),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("commit_check_timeout_ms", self.commit_check_timeout_ms),
        ] {
            check(option, value, TIMEOUT_MS_LIMIT, "1 to 3,600,000")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PostgresSinkOptions {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("PostgresSinkOptions")
            .field("target", &self.connect.target())
            .field("tls_mode", &self.connect.tls_mode())
            .field("pool_connections_max", &self.pool_connections_max)
            .field("pool_acquire_timeout_ms", &self.pool_acquire_timeout_ms)
            .field("pool_idle_ms_max", &self.pool_idle_ms_max)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("commit_check_timeout_ms", &self.commit_check_timeout_ms)
            .finish()
    }
}

/// Closes pooled connections idle for longer than `idle_max`, except the last idle one, until
/// the pool is dropped.
async fn close_idle(pool: WeakPool, idle_max: Duration) {
    let every = (idle_max / 4).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        if pool.is_closed() {
            return;
        }
        let mut closable = pool.status().available.saturating_sub(1);
        let closed = pool.retain(|_, metrics| {
            let close = closable > 0 && metrics.last_used() >= idle_max;
            closable -= usize::from(close);
            !close
        });
        if !closed.removed.is_empty() {
            tracing::debug!(
                closed = closed.removed.len(),
                "Closed idle pooled connections."
            );
        }
    }
}

/// A PostgreSQL database as a sink target. Cheap to clone; clones share the pool.
///
/// Every batch runs on one pooled connection in one transaction (see the crate docs). Connections
/// are checked out per batch, so up to `flush_concurrency` batches run at once; prepared
/// statements and the staging table are kept per connection.
///
/// # When a COMMIT's answer is lost
///
/// Each batch's transaction first records `txid_current()` and `pg_backend_pid()`. If the
/// connection breaks while `COMMIT` is in flight, the writer asks the server on another
/// connection (`txid_status`) instead of guessing: `committed` means the batch is durable and
/// the write succeeds (no retry, so no duplicate); `aborted` means nothing was written and the
/// error is returned as transient (retried); `in progress` means the old session is still alive,
/// so it is terminated (only if it still runs that transaction) and asked again. While the
/// server is unreachable the question is repeated with backoff for up to
/// [`PostgresSinkOptions::commit_check_timeout_ms`]; without an answer by then the write fails
/// with the fatal code `postgres.commit_unknown` and the sink stops.
#[derive(Clone)]
pub struct PostgresBackend {
    pool: Pool,
    options: Arc<PostgresSinkOptions>,
}

impl fmt::Debug for PostgresBackend {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("PostgresBackend")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl PostgresBackend {
    /// Builds the pool and opens one connection to check the server (PostgreSQL 12 or later).
    pub async fn connect(options: PostgresSinkOptions) -> Result<PostgresBackend, PostgresError> {
        options.validate()?;
        // A LIFO pool (the most recently returned connection first, so connections the load
        // does not need stay idle and `close_idle` closes them) whose recycling only checks
        // that a connection is open: a broken one fails its batch with a transient error and
        // is dropped. It does not check for an open transaction: connections come back only
        // outside one (`Session`).
        let pool = sluice_postgres::build_pool(
            &options.connect,
            &PoolOptions {
                connections_max: options.pool_connections_max,
                acquire_timeout: Duration::from_millis(options.pool_acquire_timeout_ms),
                connect_timeout: Duration::from_millis(options.connect_timeout_ms),
                application_name: APPLICATION_NAME,
                session_settings: &[],
            },
        )
        .map_err(|error| match error {
            ConnectError::Pool { target, message } => PostgresError::Pool { target, message },
            other => PostgresError::Connection(other),
        })?;
        let target = options.target().to_string();
        let connect_error = |error: BackendError| PostgresError::Connect {
            target: target.clone(),
            error,
        };
        let client = pool.get().await.map_err(|error| match error {
            PoolError::Backend(backend) => match options.connect.connect_failure(&backend) {
                tls @ ConnectError::Tls { .. } => PostgresError::Connection(tls),
                _ => connect_error(classify(&backend)),
            },
            other => connect_error(from_pool(other)),
        })?;
        let version: i32 = client
            .query_one("SELECT current_setting('server_version_num')::int4", &[])
            .await
            .map_err(|e| connect_error(classify(&e)))?
            .get(0);
        if version < SERVER_VERSION_MIN {
            return Err(PostgresError::UnsupportedServer { target, version });
        }
        tokio::spawn(close_idle(
            pool.weak(),
            Duration::from_millis(options.pool_idle_ms_max),
        ));
        Ok(PostgresBackend {
            pool,
            options: Arc::new(options),
        })
    }

    /// The connection pool (for reading back, health checks and tools).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The server as `user@host:port/database`, without the password.
    pub fn target(&self) -> &str {
        self.options.target()
    }
}

#[async_trait]
impl SinkBackend for PostgresBackend {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn describe_table(
        &self,
        table: &Ident,
    ) -> Result<Option<Vec<DescribedColumn>>, BackendError> {
        let client = Pooled::new(self.pool.clone(), table).get().await?;
        crate::describe::describe_table(&client, table).await
    }

    fn create_table_sql(&self, schema: &sluice_sink::Schema) -> Option<String> {
        Some(crate::table::create_table_sql(schema))
    }

    async fn prepare(&self, request: &PrepareRequest) -> Result<Prepared, BackendError> {
        let pool = Arc::new(Pooled::new(self.pool.clone(), request.schema.table()));
        if let Some(spec) = &request.checkpoints {
            // Before anything is created: a refused delivery changes nothing.
            self.check_delivery(&pool, spec, request.flush_concurrency)
                .await?;
        }
        let mut client = pool.get().await?;
        let transaction = client.transaction().await.map_err(|e| classify(&e))?;
        // On error the transaction is dropped, which rolls it back.
        let prepared = prepare_table(&transaction, request).await?;
        let progress = match &request.checkpoints {
            Some(spec) => {
                let sql = ProgressSql::new(&spec.progress_table);
                prepare_progress_table(&transaction, &spec.progress_table, &sql).await?;
                Some(sql)
            }
            None => None,
        };
        transaction.commit().await.map_err(|e| classify(&e))?;
        drop(client);
        let plan = Arc::new(WritePlan::new(
            &request.schema,
            request.mode,
            prepared.oid,
            prepared.targets,
        ));
        let table = request.schema.table().clone();
        let dead_letter_sql = request
            .dead_letter_table
            .as_ref()
            .map(dead_letter_insert_sql);
        let checkpoints = match (&request.checkpoints, progress) {
            (Some(spec), Some(progress)) => Some(Arc::new(PostgresCheckpoints::new(
                Shared {
                    pool: pool.clone(),
                    plan: plan.clone(),
                    table: table.clone(),
                    dead_letter_sql: dead_letter_sql.clone(),
                },
                spec,
                progress,
                request.flush_concurrency,
            )?) as Arc<dyn CheckpointWriter>),
            _ => None,
        };
        Ok(Prepared {
            writer: Arc::new(PostgresTableWriter {
                pool,
                table,
                plan,
                dead_letter_sql,
                commit_check_timeout: Duration::from_millis(self.options.commit_check_timeout_ms),
            }),
            report: prepared.report,
            checkpoints,
        })
    }
}

impl PostgresBackend {
    /// Refuses an exactly-once delivery this server or pool cannot carry out.
    async fn check_delivery(
        &self,
        pool: &Pooled,
        spec: &CheckpointSpec,
        flush_concurrency: usize,
    ) -> Result<(), BackendError> {
        match spec.delivery {
            Delivery::TransactionalMarker => {
                // Each lane holds a connection for its open transaction until the barrier: a
                // lane left without one would wait for a checkpoint that waits for it.
                if self.options.pool_connections_max < flush_concurrency {
                    return Err(BackendError::Fatal {
                        code: "postgres.pool_too_small",
                        message: format!(
                            "delivery = \"transactional_marker\" needs pool_connections_max of at least flush_concurrency = {flush_concurrency}, not {} (each lane holds a connection for its checkpoint transaction; PostgresSinkOptions::for_sink sets it)",
                            self.options.pool_connections_max
                        ),
                    });
                }
                Ok(())
            }
            Delivery::TwoPhase => {
                // A checkpoint's lanes may be prepared while the previous checkpoint's still
                // await their COMMIT PREPARED.
                let required = 2 * flush_concurrency;
                let client = pool.get().await?;
                let setting: i32 = client
                    .query_one(
                        "SELECT current_setting('max_prepared_transactions')::int4",
                        &[],
                    )
                    .await
                    .map_err(|e| classify(&e))?
                    .get(0);
                if usize::try_from(setting).unwrap_or(0) < required {
                    return Err(BackendError::Fatal {
                        code: "postgres.max_prepared_transactions",
                        message: format!(
                            "delivery = \"two_phase\" needs the server setting max_prepared_transactions to be at least {required} (2 x flush_concurrency {flush_concurrency}: one checkpoint's transactions may be prepared while the previous one's await their commit), but {} has max_prepared_transactions = {setting}; raise it in postgresql.conf (a server restart is needed) or lower flush_concurrency",
                            self.options.target()
                        ),
                    });
                }
                // Lanes hold their connections across a checkpoint; COMMIT PREPARED needs one
                // more, or it may wait for a lane that waits for it (a row lock of the
                // prepared transaction).
                if self.options.pool_connections_max < flush_concurrency + 1 {
                    return Err(BackendError::Fatal {
                        code: "postgres.pool_too_small",
                        message: format!(
                            "delivery = \"two_phase\" needs pool_connections_max of at least flush_concurrency + 1 = {}, not {} (one connection per lane plus one for COMMIT PREPARED; PostgresSinkOptions::for_sink sets it)",
                            flush_concurrency + 1,
                            self.options.pool_connections_max
                        ),
                    });
                }
                Ok(())
            }
            other => Err(BackendError::Fatal {
                code: "postgres.delivery_unsupported",
                message: format!(
                    "delivery = \"{}\" is not an exactly-once delivery",
                    other.name()
                ),
            }),
        }
    }
}

struct PostgresTableWriter {
    pool: Arc<Pooled>,
    table: Ident,
    plan: Arc<WritePlan>,
    dead_letter_sql: Option<String>,
    commit_check_timeout: Duration,
}

/// What the server says about a transaction.
#[derive(Debug, PartialEq, Eq)]
enum XactStatus {
    Committed,
    Aborted,
    InProgress,
}

impl PostgresTableWriter {
    /// Finds out whether the transaction `txid` (run by server process `pid`) committed after
    /// its `COMMIT` failed with `error` (see the module docs).
    async fn check_commit(
        &self,
        txid: i64,
        pid: i32,
        error: BackendError,
    ) -> Result<(), BackendError> {
        let deadline = Instant::now() + self.commit_check_timeout;
        let mut delay = Duration::from_millis(10);
        let mut last: String;
        loop {
            match xact_status(&self.pool, txid, pid).await {
                Ok(XactStatus::Committed) => {
                    tracing::warn!(
                        table = %self.table,
                        txid,
                        code = error.code(),
                        "The connection broke during COMMIT; the batch was committed."
                    );
                    return Ok(());
                }
                Ok(XactStatus::Aborted) => {
                    return Err(BackendError::Transient {
                        code: error.code(),
                        message: format!(
                            "{}; the server rolled the batch back (transaction {txid})",
                            error_message(&error)
                        ),
                    });
                }
                Ok(XactStatus::InProgress) => {
                    last = format!("transaction {txid} was still in progress");
                }
                Err(check_error) if check_error.class() == ErrorClass::Transient => {
                    last = check_error.to_string();
                }
                Err(check_error) => {
                    return Err(BackendError::Fatal {
                        code: "postgres.commit_unknown",
                        message: shortened(format!(
                            "COMMIT failed ({}) and its outcome cannot be checked: {check_error}",
                            error_message(&error)
                        )),
                    });
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(BackendError::Fatal {
                    code: "postgres.commit_unknown",
                    message: shortened(format!(
                        "COMMIT failed ({}) and whether transaction {txid} committed is still unknown after {} ms: {last}",
                        error_message(&error),
                        self.commit_check_timeout.as_millis()
                    )),
                });
            }
            // Waiting for the server to come back (or the old session to end), not for work.
            tokio::time::sleep(delay.min(deadline - now)).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }
}

fn error_message(error: &BackendError) -> &str {
    match error {
        BackendError::Transient { message, .. }
        | BackendError::Row { message, .. }
        | BackendError::Fatal { message, .. } => message,
        _ => "",
    }
}

/// Asks the server about `txid`; when it is still in progress, terminates the server process
/// `pid` if that process still runs it (its client is gone), so the next question gets a final
/// answer.
async fn xact_status(pool: &Pooled, txid: i64, pid: i32) -> Result<XactStatus, BackendError> {
    let client = pool.get().await?;
    let status: Option<String> = client
        .query_one("SELECT txid_status($1)", &[&txid])
        .await
        .map_err(|e| classify(&e))?
        .get(0);
    match status.as_deref() {
        Some("committed") => Ok(XactStatus::Committed),
        Some("aborted") => Ok(XactStatus::Aborted),
        Some("in progress") => {
            // backend_xid is the 32-bit part of the 64-bit txid.
            let xid = (txid & 0xffff_ffff).to_string();
            client
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity \
                     WHERE pid = $1 AND backend_xid::text = $2",
                    &[&pid, &xid],
                )
                .await
                .map_err(|e| classify(&e))?;
            Ok(XactStatus::InProgress)
        }
        other => Err(BackendError::Fatal {
            code: "postgres.commit_unknown",
            message: format!("txid_status({txid}) answered {other:?}"),
        }),
    }
}

#[async_trait]
impl TableWriter for PostgresTableWriter {
    async fn write_batch(&self, batch: &Batch) -> Result<BatchOutcome, BackendError> {
        let rows = batch.rows();
        let (good, rejected) = self.plan.check_rows(rows);
        if !good.is_empty() {
            let encoded = self.plan.encode(Source::Staging, rows, &good)?;
            let mut session = self.pool.session().await?;
            match write_rows(&mut session, &self.plan, rows, &good, encoded).await {
                Ok(()) => {}
                Err(WriteFailure::Failed(error)) => return Err(error),
                Err(WriteFailure::CommitUnknown { txid, pid, error }) => {
                    drop(session);
                    self.check_commit(txid, pid, error).await?;
                }
            }
        }
        Ok(BatchOutcome {
            applied: good.len(),
            rejected,
        })
    }

    async fn write_dead_letters(&self, letters: &[DeadLetter]) -> Result<(), BackendError> {
        let sql = self
            .dead_letter_sql
            .as_deref()
            .ok_or_else(|| BackendError::Fatal {
                code: "postgres.no_dead_letter_table",
                message: "dead letters go to a table, but none was prepared".into(),
            })?;
        let columns = DeadLetterColumns::new(letters);
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(sql).await.map_err(|e| classify(&e))?;
        // One statement in autocommit: all letters or none. A lost answer here may record
        // letters twice, never lose them.
        client
            .execute(&statement, &columns.params())
            .await
            .map_err(|e| classify(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_secrets_stay_out_of_messages() {
        let options =
            PostgresSinkOptions::new("postgres://writer:s3cr3t%21@db.example:6543/sales").unwrap();
        assert_eq!(options.target(), "writer@db.example:6543/sales");
        let debug = format!("{options:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");

        let options = PostgresSinkOptions::new("host=h user=u password=hunter2 dbname=d").unwrap();
        assert_eq!(options.target(), "u@h:5432/d");
        assert!(!format!("{options:?}").contains("hunter2"));

        for bad in [
            "postgres://writer:s3cr3t@db.example:notaport/sales",
            "postgres://writer:s3cr3t@db.example/sales?sslmode=sometimes",
            "host=h password='hunter2 dbname=d",
        ] {
            let error = PostgresSinkOptions::new(bad).unwrap_err();
            assert_eq!(error.code(), "postgres.invalid_url");
            let text = error.to_string();
            assert!(
                !text.contains("s3cr3t") && !text.contains("hunter2"),
                "{text}"
            );
        }
        assert_eq!(
            sluice_postgres::redact("failed near s3cr3t", "postgres://u:s3cr3t@h/d"),
            "failed near <redacted>"
        );
        assert_eq!(
            sluice_postgres::redact("bad hunter2", "host=h password=hunter2"),
            "bad <redacted>"
        );
    }

    #[test]
    fn options_are_validated() {
        let mut options = PostgresSinkOptions::new("postgres://u@h/d").unwrap();
        assert!(options.validate().is_ok());
        options.pool_connections_max = 0;
        assert_eq!(
            options.validate().unwrap_err().code(),
            "postgres.invalid_option"
        );
        options.pool_connections_max = 3;
        options.commit_check_timeout_ms = TIMEOUT_MS_LIMIT + 1;
        assert!(options.validate().is_err());
        let config = SinkConfig::builder().flush_concurrency(7).build().unwrap();
        let options = PostgresSinkOptions::for_sink("postgres://u@h/d", &config).unwrap();
        assert_eq!(options.pool_connections_max, 8);
    }
}
