//! `PgCluster` lifecycle against a real PostgreSQL. Skips (with a `SKIPPED`
//! line) where PostgreSQL is missing, unless `SLUICE_REQUIRE_POSTGRES=1`.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use sluice_testkit::{PgError, pg_or_skip};

fn accepts_tcp(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

#[test]
fn pg_cluster_lifecycle() {
    let t0 = Instant::now();
    let Some(pg) = pg_or_skip("testkit::pg_cluster_lifecycle") else {
        return;
    };
    eprintln!(
        "cluster started in {:?} on port {}",
        t0.elapsed(),
        pg.port()
    );

    assert_eq!(pg.host(), "127.0.0.1");
    assert_eq!(
        pg.url(),
        format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port())
    );
    assert!(accepts_tcp(pg.port()));

    assert_eq!(pg.psql("SHOW max_prepared_transactions").unwrap(), "64");
    assert_eq!(pg.psql("SHOW fsync").unwrap(), "on");
    assert_eq!(pg.psql("SHOW listen_addresses").unwrap(), "127.0.0.1");

    let url = pg.create_database("sluice_test").unwrap();
    assert_eq!(
        url,
        format!("postgres://postgres@127.0.0.1:{}/sluice_test", pg.port())
    );
    // Multi-statement scripts, run in the new database; tags are suppressed.
    let out = pg
        .psql_in(
            "sluice_test",
            "CREATE TABLE t (id int PRIMARY KEY, v text);\n\
             INSERT INTO t VALUES (1, 'a'), (2, 'b');\n\
             SELECT id, v FROM t ORDER BY id;",
        )
        .unwrap();
    assert_eq!(out, "1|a\n2|b");
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_database WHERE datname = 'sluice_test'")
            .unwrap(),
        "1"
    );

    // Errors are reported, not swallowed.
    let err = pg.psql("SELECT * FROM no_such_table").unwrap_err();
    assert!(
        matches!(&err, PgError::Failed { output, .. } if output.contains("no_such_table")),
        "{err}"
    );
    assert!(matches!(
        pg.create_database("bad name; DROP"),
        Err(PgError::InvalidDatabaseName(_))
    ));

    let port = pg.port();
    let dir = pg.dir().to_path_buf();
    let t1 = Instant::now();
    drop(pg);
    eprintln!("cluster stopped and removed in {:?}", t1.elapsed());
    assert!(!accepts_tcp(port), "port {port} still accepts connections");
    assert!(!dir.exists(), "{} still exists", dir.display());
    eprintln!("total {:?}", t0.elapsed());
}

#[test]
fn pg_cluster_survives_crash_restart() {
    let Some(pg) = pg_or_skip("testkit::pg_cluster_survives_crash_restart") else {
        return;
    };
    pg.psql(
        "CREATE TABLE d (v int);\n\
         INSERT INTO d VALUES (42);\n\
         BEGIN; INSERT INTO d VALUES (7); PREPARE TRANSACTION 'tx1';",
    )
    .unwrap();
    pg.crash_and_restart().unwrap();
    assert_eq!(pg.psql("SELECT v FROM d").unwrap(), "42");
    assert_eq!(pg.psql("SELECT gid FROM pg_prepared_xacts").unwrap(), "tx1");
    pg.psql("COMMIT PREPARED 'tx1'").unwrap();
    assert_eq!(pg.psql("SELECT sum(v) FROM d").unwrap(), "49");
}

#[test]
fn pg_cluster_is_stopped_when_a_test_panics() {
    let Some(pg) = pg_or_skip("testkit::pg_cluster_is_stopped_when_a_test_panics") else {
        return;
    };
    let port = pg.port();
    let dir = pg.dir().to_path_buf();
    let result = std::panic::catch_unwind(move || {
        let _pg = pg;
        // Unwinds like a failing assertion, without the panic hook's noise.
        std::panic::resume_unwind(Box::new("simulated test failure"));
    });
    assert!(result.is_err());
    assert!(!accepts_tcp(port), "port {port} still accepts connections");
    assert!(!dir.exists(), "{} still exists", dir.display());
}
