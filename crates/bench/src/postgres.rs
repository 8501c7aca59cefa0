//! The PostgreSQL server a benchmark runs against: the one `--pg-url` names, or (with the
//! `throwaway-postgres` feature) a throwaway cluster started for the run.

use anyhow::{Context, Result};
use sluice_sink_postgres::tokio_postgres::{self, NoTls};

/// A server for one run; a throwaway cluster stops when this is dropped.
pub(crate) struct Server {
    pub(crate) url: String,
    #[cfg(feature = "throwaway-postgres")]
    _cluster: Option<Box<sluice_testkit::PgCluster>>,
}

impl Server {
    /// The server at `url`, or a throwaway one when `url` is `None`.
    pub(crate) async fn open(url: Option<&str>) -> Result<Server> {
        if let Some(url) = url {
            return Ok(Server {
                url: url.to_owned(),
                #[cfg(feature = "throwaway-postgres")]
                _cluster: None,
            });
        }
        Self::throwaway()
    }

    #[cfg(feature = "throwaway-postgres")]
    fn throwaway() -> Result<Server> {
        let cluster = tokio::task::block_in_place(sluice_testkit::PgCluster::start)
            .map_err(|e| anyhow::anyhow!("cannot start a throwaway PostgreSQL: {e}"))?;
        let url = tokio::task::block_in_place(|| cluster.create_database("sluice_bench"))?;
        Ok(Server {
            url,
            _cluster: Some(Box::new(cluster)),
        })
    }

    #[cfg(not(feature = "throwaway-postgres"))]
    fn throwaway() -> Result<Server> {
        anyhow::bail!(
            "give the server with --pg-url postgres://USER@HOST/DB (this build cannot start a \
             throwaway PostgreSQL: build with `--features throwaway-postgres`)"
        )
    }
}

/// A plain connection for a benchmark's own statements (setup, raw limits, sampling).
pub(crate) async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "a benchmark connection ended");
        }
    });
    Ok(client)
}

/// The server settings that decide its figures, `name=value` each, printed beside every run.
pub(crate) async fn settings(client: &tokio_postgres::Client) -> Result<String> {
    let rows = client
        .query(
            "SELECT name, setting FROM pg_settings WHERE name IN ('server_version', \
             'synchronous_commit', 'fsync', 'full_page_writes', 'shared_buffers', \
             'max_wal_size', 'wal_level', 'max_prepared_transactions') ORDER BY name",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| format!("{}={}", row.get::<_, String>(0), row.get::<_, String>(1)))
        .collect::<Vec<_>>()
        .join(" "))
}
