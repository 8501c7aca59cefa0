//! The storage conformance suite on PostgreSQL: a throwaway cluster per check (skipped, with a
//! `SKIPPED` line, where PostgreSQL is not installed; CI requires it).

use sluice_store::ManualClock;
use sluice_store::conformance::Harness;
use sluice_store_postgres::{PostgresStore, PostgresStoreOptions};
use sluice_testkit::pg_or_skip;
use std::sync::Arc;

async fn harness() -> Option<Harness<PostgresStore>> {
    let cluster = pg_or_skip("store-postgres conformance")?;
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let options = PostgresStoreOptions::new(&cluster.url()).expect("options");
    let store = PostgresStore::connect_with_clock(options, clock.clone())
        .await
        .expect("connect");
    Some(Harness {
        store,
        clock,
        guard: Box::new(cluster),
    })
}

macro_rules! or_skip {
    () => {
        match harness().await {
            Some(harness) => harness,
            None => return,
        }
    };
}

sluice_store::conformance_tests!(or_skip!());

/// What a store shared by many processes must also do: fence stale holders, judge leases by
/// the database's clock, and never hand the same work to two fetchers.
mod shared {
    use sluice_history::{Event, InstanceStatus, Message};
    use sluice_store::{NewActivity, NewInstance, Store, StoreError, TurnCommit};
    use sluice_store_postgres::{PostgresStore, PostgresStoreOptions};
    use sluice_testkit::{PgCluster, pg_or_skip};
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::time::Duration;

    /// Two stores on one database, as two processes would have, on the database's clock.
    async fn two_stores(
        suite: &str,
    ) -> Option<(PgCluster, Arc<PostgresStore>, Arc<PostgresStore>)> {
        let cluster = pg_or_skip(suite)?;
        let connect = || async {
            let options = PostgresStoreOptions::new(&cluster.url()).unwrap();
            Arc::new(PostgresStore::connect(options).await.unwrap())
        };
        let (a, b) = (connect().await, connect().await);
        Some((cluster, a, b))
    }

    fn new_instance(id: &str) -> NewInstance {
        NewInstance {
            instance_id: id.into(),
            name: "orders".into(),
            input: String::new(),
            parent: None,
            version: None,
        }
    }

    /// A lease ends by the database's clock: the other process takes the turn over once it
    /// has, and the first holder's late commit changes nothing.
    #[tokio::test]
    async fn a_lease_expires_by_the_database_clock_and_fences_the_old_holder() {
        let Some((_cluster, a, b)) = two_stores("store-postgres lease expiry").await else {
            return;
        };
        a.create_instance(new_instance("x")).await.unwrap();
        let lease = Duration::from_millis(300);
        let first = a.fetch_turns(1, lease, &[]).await.unwrap().pop().unwrap();
        assert!(
            b.fetch_turns(1, lease, &[]).await.unwrap().is_empty(),
            "held"
        );
        tokio::time::sleep(lease + Duration::from_millis(100)).await;
        let second = b
            .fetch_turns(1, lease * 10, &[])
            .await
            .unwrap()
            .pop()
            .expect("taken over");
        assert_eq!(second.delivery, 2);
        let commit = |turn: &sluice_store::LockedTurn| TurnCommit {
            instance_id: "x".into(),
            lock_token: turn.lock_token,
            execution_id: 1,
            history_from: 0,
            append: vec![Event::TurnStarted { now_ms: 0 }],
            consumed: turn.messages.iter().map(|(id, _)| *id).collect(),
            status: Some(InstanceStatus::Running),
            ..TurnCommit::default()
        };
        let stale = a.commit_turn(commit(&first)).await.unwrap_err();
        assert!(matches!(stale, StoreError::LeaseLost(_)), "{stale}");
        let renew = a.renew_turn_lease("x", first.lock_token, lease).await;
        assert!(matches!(renew, Err(StoreError::LeaseLost(_))), "{renew:?}");
        let abandon = a.abandon_turn("x", first.lock_token, Duration::ZERO).await;
        assert!(
            matches!(abandon, Err(StoreError::LeaseLost(_))),
            "{abandon:?}"
        );
        b.commit_turn(commit(&second)).await.unwrap();
        assert_eq!(b.read_history("x", 1, 0).await.unwrap().len(), 1);
    }

    /// Concurrent fetches from two stores never hand out the same instance or work item.
    #[tokio::test]
    async fn concurrent_fetchers_never_share_work() {
        let Some((_cluster, a, b)) = two_stores("store-postgres concurrent fetch").await else {
            return;
        };
        const INSTANCES: usize = 200;
        for i in 0..INSTANCES {
            a.create_instance(new_instance(&format!("i{i}")))
                .await
                .unwrap();
        }
        let lease = Duration::from_secs(60);
        let fetch_all = |store: Arc<PostgresStore>| async move {
            let mut turns = Vec::new();
            loop {
                let batch = store.fetch_turns(7, lease, &[]).await.unwrap();
                if batch.is_empty() {
                    return turns;
                }
                turns.extend(batch);
            }
        };
        let (from_a, from_b) = tokio::join!(
            tokio::spawn(fetch_all(a.clone())),
            tokio::spawn(fetch_all(b.clone()))
        );
        let (from_a, from_b) = (from_a.unwrap(), from_b.unwrap());
        let mut seen = HashSet::new();
        for turn in from_a.iter().chain(&from_b) {
            assert!(
                seen.insert(turn.instance_id.clone()),
                "{} twice",
                turn.instance_id
            );
        }
        assert_eq!(seen.len(), INSTANCES, "every instance handed out once");
        // Each commits its turns with one activity each; then both fetch the work items.
        for (store, turns) in [(&a, &from_a), (&b, &from_b)] {
            for turn in turns {
                store
                    .commit_turn(TurnCommit {
                        instance_id: turn.instance_id.clone(),
                        lock_token: turn.lock_token,
                        execution_id: 1,
                        history_from: 0,
                        append: vec![Event::TurnStarted { now_ms: 0 }],
                        consumed: turn.messages.iter().map(|(id, _)| *id).collect(),
                        status: Some(InstanceStatus::Running),
                        activities: vec![NewActivity {
                            instance_id: turn.instance_id.clone(),
                            execution_id: 1,
                            activity_id: 0,
                            name: "charge".into(),
                            input: String::new(),
                            retry: None,
                            task_queue: None,
                        }],
                        ..TurnCommit::default()
                    })
                    .await
                    .unwrap();
            }
        }
        let fetch_items = |store: Arc<PostgresStore>| async move {
            let mut items = Vec::new();
            loop {
                let batch = store.fetch_activities(5, lease).await.unwrap();
                if batch.is_empty() {
                    return items;
                }
                items.extend(batch);
            }
        };
        let (items_a, items_b) = tokio::join!(
            tokio::spawn(fetch_items(a.clone())),
            tokio::spawn(fetch_items(b.clone()))
        );
        let mut items = HashSet::new();
        for item in items_a.unwrap().iter().chain(&items_b.unwrap()) {
            assert!(items.insert(item.item_id), "item {} twice", item.item_id);
            assert_eq!(item.attempt, 1);
        }
        assert_eq!(items.len(), INSTANCES);
        // Messages raised meanwhile are visible to either store.
        a.enqueue_message(
            "i0",
            Message::Event {
                name: "go".into(),
                data: String::new(),
            },
            None,
        )
        .await
        .unwrap();
        let turn = b.fetch_turns(1, lease, &[]).await.unwrap().pop().unwrap();
        assert_eq!(turn.instance_id, "i0");
    }

    /// Over TLS with `sslmode=verify-full`: the pool's connections and the LISTEN connection
    /// are encrypted, and a wake-up crosses from one store to the other.
    #[tokio::test]
    async fn stores_connect_over_verified_tls() {
        let Some((cluster, files)) = sluice_testkit::pg_tls_or_skip("store-postgres tls") else {
            return;
        };
        let url = format!(
            "postgres://postgres@{}:{}/postgres?sslmode=verify-full&sslrootcert={}",
            files.host_name,
            cluster.port(),
            files.ca.display()
        );
        let connect = || async {
            let options = PostgresStoreOptions::new(&url).unwrap();
            Arc::new(PostgresStore::connect(options).await.unwrap())
        };
        let (a, b) = (connect().await, connect().await);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !(a.listening() && b.listening()) {
            assert!(
                std::time::Instant::now() < deadline,
                "listeners never started"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        a.create_instance(new_instance("over-tls")).await.unwrap();
        let turns = b
            .fetch_turns(1, Duration::from_secs(60), &[])
            .await
            .unwrap();
        assert_eq!(turns[0].instance_id, "over-tls");
        let connections = cluster
            .psql(
                "SELECT count(*) || ' ' || bool_and(ssl) FROM pg_stat_ssl JOIN pg_stat_activity \
                 USING (pid) WHERE application_name LIKE 'sluice%'",
            )
            .unwrap();
        let (count, all_encrypted) = connections.trim().split_once(' ').unwrap();
        assert!(
            count.parse::<u32>().unwrap() >= 4,
            "pools and listeners: {count}"
        );
        assert_eq!(all_encrypted, "true", "every connection is encrypted");
        // The wrong CA: a clear error, no store.
        let wrong = url.replace(
            &files.ca.display().to_string(),
            &files.other_ca.display().to_string(),
        );
        let error = PostgresStore::connect(PostgresStoreOptions::new(&wrong).unwrap())
            .await
            .unwrap_err();
        assert!(error.to_string().contains("not signed by a CA"), "{error}");
    }

    /// A database migrated by a newer build is refused with a clear message; concurrent starts
    /// of many processes migrate once.
    #[tokio::test]
    async fn migrations_serialise_and_a_newer_schema_is_refused() {
        let Some(cluster) = pg_or_skip("store-postgres migrations") else {
            return;
        };
        let url = cluster.url();
        let starts = (0..4).map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut options = PostgresStoreOptions::new(&url).unwrap();
                options.schema = "many".into();
                PostgresStore::connect(options).await.map(|_| ())
            })
        });
        for start in starts {
            start.await.unwrap().expect("concurrent start");
        }
        cluster
            .psql("INSERT INTO many.schema_migrations (version) VALUES (99)")
            .unwrap();
        let mut options = PostgresStoreOptions::new(&url).unwrap();
        options.schema = "many".into();
        let error = PostgresStore::connect(options).await.unwrap_err();
        assert_eq!(error.code(), "store.schema_too_new");
        assert!(error.to_string().contains("version 99"), "{error}");
        let mut options = PostgresStoreOptions::new(&url).unwrap();
        options.schema = "Bad-Name".into();
        let error = PostgresStore::connect(options).await.unwrap_err();
        assert_eq!(error.code(), "store.invalid_schema");
    }
}
