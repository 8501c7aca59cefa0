//! Shared helpers of the PostgreSQL test binaries: one throwaway cluster shared by the tests
//! that run at the same time, and a fresh database per test.
//!
//! The cluster is held by `Arc`s in the tests; the static keeps only a `Weak`, so the cluster
//! is stopped (by `PgCluster`'s drop) when the last test holding it finishes, and nothing is
//! left running when the process exits. A test starting after that starts a new cluster.
#![allow(dead_code, unreachable_pub)]

use async_trait::async_trait;
use sluice_sink::compliance::Harness;
use sluice_sink::{DeadLetter, Ident, Schema, SinkBackend, Value};
use sluice_sink_postgres::{
    PostgresBackend, PostgresSinkOptions, read_dead_letters, read_rows, tokio_postgres,
};
use sluice_testkit::{PgCluster, pg_or_skip};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

static CLUSTER: Mutex<Weak<PgCluster>> = Mutex::new(Weak::new());
static DATABASES: AtomicUsize = AtomicUsize::new(0);

/// The cluster shared by the tests running now, started if there is none; `None` (after a
/// SKIPPED line) when PostgreSQL is unavailable.
pub fn shared_cluster(suite: &str) -> Option<Arc<PgCluster>> {
    let mut slot = CLUSTER.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(cluster) = slot.upgrade() {
        return Some(cluster);
    }
    let cluster = Arc::new(pg_or_skip(suite)?);
    *slot = Arc::downgrade(&cluster);
    Some(cluster)
}

/// Creates a database of its own for one test and returns its URL.
pub fn fresh_database(cluster: &PgCluster) -> String {
    let name = format!(
        "test_{}_{}",
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::Relaxed)
    );
    cluster
        .create_database(&name)
        .expect("create a test database")
}

/// A plain client (its connection runs on the current runtime).
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(async move {
        // The connection ends when the client is dropped or the server goes away.
        let _ = connection.await;
    });
    client
}

/// A backend over `url` with small retry-friendly timeouts.
pub async fn backend(url: &str, pool_connections_max: usize) -> PostgresBackend {
    let mut options = PostgresSinkOptions::new(url).expect("valid URL");
    options.pool_connections_max = pool_connections_max;
    options.pool_acquire_timeout_ms = 5_000;
    options.connect_timeout_ms = 5_000;
    PostgresBackend::connect(options)
        .await
        .expect("connect the backend")
}

/// A test database: its backend, an admin client and the cluster (dropped last).
pub struct TestDb {
    pub backend: PostgresBackend,
    pub admin: tokio_postgres::Client,
    pub url: String,
    pub scratch: tempfile::TempDir,
    pub cluster: Arc<PgCluster>,
}

impl TestDb {
    /// A fresh database on the shared cluster, or `None` when PostgreSQL is unavailable.
    pub async fn start(suite: &str) -> Option<TestDb> {
        let cluster = shared_cluster(suite)?;
        Some(TestDb::on(cluster).await)
    }

    /// A fresh database on `cluster`.
    pub async fn on(cluster: Arc<PgCluster>) -> TestDb {
        let url = fresh_database(&cluster);
        TestDb {
            backend: backend(&url, 4).await,
            admin: connect(&url).await,
            url,
            scratch: tempfile::tempdir().expect("a scratch directory"),
            cluster,
        }
    }

    pub async fn rows(&self, schema: &Schema) -> Vec<Vec<Value>> {
        let client = self
            .backend
            .pool()
            .get()
            .await
            .expect("a pooled connection");
        read_rows(&client, schema).await.expect("read the table")
    }

    pub async fn dead_letters(&self, table: &str) -> Vec<DeadLetter> {
        let client = self
            .backend
            .pool()
            .get()
            .await
            .expect("a pooled connection");
        read_dead_letters(&client, &Ident::new(table).unwrap())
            .await
            .expect("read the dead letters")
    }

    pub fn sink_backend(&self) -> &dyn SinkBackend {
        &self.backend
    }
}

/// Waits until a sink connection of the current database waits on `wait_event` (for example
/// `Lock` types or `SyncRep`), and returns its server process id.
pub async fn sink_backend_waiting(admin: &tokio_postgres::Client, wait_event: &str) -> i32 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let row = admin
            .query_opt(
                "SELECT pid FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name = 'sluice-sink' \
                   AND (wait_event_type = $1 OR wait_event = $1)",
                &[&wait_event],
            )
            .await
            .expect("query pg_stat_activity");
        if let Some(row) = row {
            return row.get(0);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no sink connection started waiting on {wait_event}"
        );
        // Polling the server for a state another task is driving towards.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The compliance harness over a database of its own.
pub struct PgHarness(pub TestDb);

impl PgHarness {
    /// `None` (after a SKIPPED line) when PostgreSQL is unavailable.
    pub async fn start(suite: &str) -> Option<PgHarness> {
        TestDb::start(suite).await.map(PgHarness)
    }
}

#[async_trait]
impl Harness for PgHarness {
    fn backend(&self) -> &dyn SinkBackend {
        self.0.sink_backend()
    }

    async fn read_rows(&self, schema: &Schema) -> Vec<Vec<Value>> {
        self.0.rows(schema).await
    }

    async fn read_dead_letters(&self, table: &Ident) -> Vec<DeadLetter> {
        self.0.dead_letters(table.as_str()).await
    }

    fn scratch_dir(&self) -> std::path::PathBuf {
        self.0.scratch.path().to_path_buf()
    }

    async fn prepared_transactions(&self) -> Vec<String> {
        prepared(&self.0.admin).await
    }

    async fn commit_prepared(&self, gid: &str) -> bool {
        // A gid of the sink is `sluice:` and `[A-Za-z0-9_:-]`: nothing to escape.
        assert!(!gid.contains('\''), "a sink gid");
        self.0
            .admin
            .batch_execute(&format!("COMMIT PREPARED '{gid}'"))
            .await
            .is_ok()
    }

    async fn fail_next_marker_commit(&self, lanes_committed: usize) -> bool {
        // A deferred trigger refuses the COMMIT of the next transactions whose progress row
        // is of a lane at or above `lanes_committed`, once per such lane: a sequence counts
        // the refusals, as its increments survive the rollbacks.
        self.0
            .admin
            .batch_execute(&format!(
                "CREATE SEQUENCE IF NOT EXISTS sluice_test_refusals;
                 SELECT setval('sluice_test_refusals', 1, false);
                 CREATE OR REPLACE FUNCTION sluice_test_refuse_lane() RETURNS trigger
                 LANGUAGE plpgsql AS $$
                 BEGIN
                   IF NEW.lane >= {lanes_committed} AND NEW.lane < coalesce(NEW.lanes, 0) THEN
                     IF nextval('sluice_test_refusals') <= NEW.lanes - {lanes_committed} THEN
                       RAISE EXCEPTION 'injected: lane % of checkpoint % does not commit',
                         NEW.lane, NEW.checkpoint_id;
                     END IF;
                   END IF;
                   RETURN NULL;
                 END $$;
                 DROP TRIGGER IF EXISTS sluice_test_refuse ON sluice_sink_progress;
                 CREATE CONSTRAINT TRIGGER sluice_test_refuse
                   AFTER INSERT OR UPDATE ON sluice_sink_progress
                   DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
                   EXECUTE FUNCTION sluice_test_refuse_lane();"
            ))
            .await
            .expect("install the commit fault");
        true
    }
}

/// The global ids of the database's prepared transactions, in order.
pub async fn prepared(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() ORDER BY gid",
            &[],
        )
        .await
        .expect("list prepared transactions")
        .iter()
        .map(|row| row.get(0))
        .collect()
}
