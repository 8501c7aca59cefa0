//! TLS and authentication against throwaway clusters: one started with `ssl=on` and a
//! certificate for `localhost` signed by a CA the test kit makes, one without TLS.

use sluice_postgres::{ConnectError, ConnectOptions, PoolOptions, connect_pool};
use sluice_testkit::{PgCluster, TlsFiles, pg_or_skip, pg_tls_or_skip};
use std::path::Path;
use std::time::Duration;

fn pool_options() -> PoolOptions {
    PoolOptions {
        connections_max: 2,
        acquire_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(10),
        application_name: "sluice-tls-test",
        session_settings: &[],
    }
}

fn url(cluster: &PgCluster, host: &str, settings: &str) -> String {
    format!(
        "postgres://postgres@{host}:{}/postgres?{settings}",
        cluster.port()
    )
}

fn rootcert(path: &Path) -> String {
    format!("sslrootcert={}", path.display())
}

/// Connects through a pool and says whether the session is encrypted.
async fn encrypted(url: &str) -> Result<bool, ConnectError> {
    let options = ConnectOptions::parse(url)?;
    let pool = connect_pool(&options, &pool_options()).await?;
    let client = pool
        .get()
        .await
        .expect("a second checkout of a working pool");
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl");
    Ok(row.get(0))
}

fn expect_tls_error(result: Result<bool, ConnectError>, says: &str) -> String {
    let error = result.expect_err("must not connect");
    assert_eq!(error.code(), "postgres.tls", "{error}");
    let text = error.to_string();
    assert!(text.contains(says), "{text:?} should say {says:?}");
    text
}

#[tokio::test]
async fn tls_modes_against_a_cluster_with_a_certificate() {
    let Some((cluster, files)) = pg_tls_or_skip("tls_modes_against_a_cluster_with_a_certificate")
    else {
        return;
    };
    let TlsFiles {
        ca,
        other_ca,
        host_name,
    } = &files;

    // verify-full against the right CA and the name on the certificate.
    let full = format!("sslmode=verify-full&{}", rootcert(ca));
    assert!(encrypted(&url(&cluster, host_name, &full)).await.unwrap());
    // sslrootcert alone asks for TLS: verify-full.
    assert!(
        encrypted(&url(&cluster, host_name, &rootcert(ca)))
            .await
            .unwrap()
    );
    // The key=value form reads the same settings.
    let keyword = format!(
        "host={host_name} port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert='{}'",
        cluster.port(),
        ca.display()
    );
    assert!(encrypted(&keyword).await.unwrap());

    // A host name the certificate does not list.
    expect_tls_error(
        encrypted(&url(&cluster, "127.0.0.1", &full)).await,
        "does not name the host",
    );
    expect_tls_error(
        encrypted(&url(&cluster, "127.0.0.1", &rootcert(ca))).await,
        "does not name the host",
    );
    // verify-ca checks the chain only.
    let ca_only = format!("sslmode=verify-ca&{}", rootcert(ca));
    assert!(
        encrypted(&url(&cluster, "127.0.0.1", &ca_only))
            .await
            .unwrap()
    );
    // The wrong CA fails in both checking modes, and require with a CA checks the chain.
    for mode in ["verify-full", "verify-ca", "require"] {
        let wrong = format!("sslmode={mode}&{}", rootcert(other_ca));
        expect_tls_error(
            encrypted(&url(&cluster, host_name, &wrong)).await,
            "not signed by a CA in sslrootcert",
        );
    }

    // require and prefer without a CA encrypt without checking; disable does not encrypt.
    assert!(
        encrypted(&url(&cluster, "127.0.0.1", "sslmode=require"))
            .await
            .unwrap()
    );
    assert!(
        encrypted(&url(&cluster, "127.0.0.1", "sslmode=prefer"))
            .await
            .unwrap()
    );
    assert!(encrypted(&url(&cluster, "127.0.0.1", "")).await.unwrap());
    assert!(
        !encrypted(&url(&cluster, "127.0.0.1", "sslmode=disable"))
            .await
            .unwrap()
    );

    // A CA file that is not there is reported before anything connects.
    let missing = ConnectOptions::parse(&url(
        &cluster,
        host_name,
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    ))
    .unwrap_err();
    assert_eq!(missing.code(), "postgres.tls_setup");
}

#[tokio::test]
async fn plain_cluster_refuses_required_tls_and_bad_credentials_say_so_without_the_password() {
    let Some(cluster) = pg_or_skip("plain_cluster_refuses_required_tls") else {
        return;
    };
    expect_tls_error(
        encrypted(&url(&cluster, "127.0.0.1", "sslmode=require")).await,
        "does not offer TLS",
    );
    // prefer falls back to plain TCP.
    assert!(!encrypted(&url(&cluster, "127.0.0.1", "")).await.unwrap());

    cluster
        .add_password_role("ann", "right-horse-battery")
        .unwrap();
    let good = format!(
        "postgres://ann:right-horse-battery@127.0.0.1:{}/postgres",
        cluster.port()
    );
    assert!(!encrypted(&good).await.unwrap());
    let secret = "Wr0ng-Pa55w0rd";
    let bad = format!(
        "postgres://ann:{secret}@127.0.0.1:{}/postgres",
        cluster.port()
    );
    let error = encrypted(&bad).await.unwrap_err();
    assert_eq!(error.code(), "postgres.connect", "{error}");
    let text = error.to_string();
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(text.contains("ann@127.0.0.1"), "names the server: {text}");
    assert!(!text.contains(secret), "{text}");
    assert!(!format!("{error:?}").contains(secret));

    // Nothing listens on port 1.
    let unreachable = format!("postgres://ann:{secret}@127.0.0.1:1/postgres?connect_timeout=2");
    let error = encrypted(&unreachable).await.unwrap_err();
    assert_eq!(error.code(), "postgres.connect", "{error}");
    let text = error.to_string();
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(!text.contains(secret), "{text}");
}
