//! The conformance suite every store passes.
//!
//! A store crate instantiates it with [`conformance_tests!`](crate::conformance_tests), giving
//! an async factory that builds a fresh, empty store over a [`ManualClock`]; each check becomes
//! its own `#[tokio::test]`.

use crate::{
    ActivityResult, ManualClock, NewActivity, NewInstance, Outbound, Store, StoreError, TurnCommit,
    Work,
};
use sluice_history::{Event, Failure, InstanceStatus, Message, ParentLink, codes};
use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

/// A store under test, its clock, and whatever must live as long as it (temp dirs).
pub struct Harness<S> {
    /// The store.
    pub store: S,
    /// Its clock.
    pub clock: Arc<ManualClock>,
    /// Kept alive for the test.
    pub guard: Box<dyn Any + Send>,
}

const LEASE: Duration = Duration::from_secs(30);
const LEASE_MS: i64 = 30_000;

fn new_instance(id: &str) -> NewInstance {
    NewInstance {
        instance_id: id.into(),
        name: "orders".into(),
        input: "in".into(),
        parent: None,
        version: None,
    }
}

fn activity(id: &str, activity_id: u64) -> NewActivity {
    NewActivity {
        instance_id: id.into(),
        execution_id: 1,
        activity_id,
        name: "charge".into(),
        input: "x".into(),
        retry: None,
        task_queue: None,
    }
}

/// Starts `id`, takes its first turn and commits it as running with the given extras.
async fn started<S: Store>(store: &S, id: &str, extra: TurnCommit) -> TurnCommit {
    assert!(store.create_instance(new_instance(id)).await.unwrap());
    let turn = store
        .fetch_turns(1, LEASE, &[])
        .await
        .unwrap()
        .pop()
        .expect("a start turn");
    let commit = TurnCommit {
        instance_id: id.into(),
        lock_token: turn.lock_token,
        execution_id: turn.execution_id,
        history_from: 0,
        append: vec![Event::TurnStarted { now_ms: 0 }],
        consumed: turn
            .messages
            .iter()
            .map(|(message_id, _)| *message_id)
            .collect(),
        status: Some(InstanceStatus::Running),
        ..extra
    };
    store.commit_turn(commit.clone()).await.unwrap();
    commit
}

/// Starts "a" with one activity and fetches that activity's work item.
async fn started_with_one_activity<S: Store>(store: &S) -> crate::ActivityWorkItem {
    let extra = TurnCommit {
        activities: vec![activity("a", 0)],
        ..TurnCommit::default()
    };
    started(store, "a", extra).await;
    store
        .fetch_activities(1, LEASE)
        .await
        .unwrap()
        .pop()
        .expect("the activity is visible")
}

/// A second start of the same id creates nothing and enqueues nothing.
pub async fn start_is_idempotent<S: Store>(h: Harness<S>) {
    let store = &h.store;
    assert!(store.create_instance(new_instance("a")).await.unwrap());
    assert!(!store.create_instance(new_instance("a")).await.unwrap());
    let turns = store.fetch_turns(10, LEASE, &[]).await.unwrap();
    assert_eq!(turns.len(), 1);
    assert_eq!(turns[0].messages.len(), 1, "exactly one start message");
    assert_eq!(turns[0].status, InstanceStatus::Pending);
    assert_eq!(turns[0].execution_id, 1);
    let info = store.instance("a").await.unwrap().unwrap();
    assert_eq!(info.status, InstanceStatus::Pending);
    assert_eq!(info.input, "in");
}

/// A locked instance is not handed out twice; after the lease expires it is, with a new token,
/// and a commit with the old token is rejected without effect.
pub async fn peek_lock_and_lost_lease<S: Store>(h: Harness<S>) {
    let store = &h.store;
    store.create_instance(new_instance("a")).await.unwrap();
    let first = store
        .fetch_turns(1, LEASE, &[])
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert!(
        store.fetch_turns(1, LEASE, &[]).await.unwrap().is_empty(),
        "locked instances are skipped"
    );
    h.clock.advance_ms(LEASE_MS + 1);
    let second = store
        .fetch_turns(1, LEASE, &[])
        .await
        .unwrap()
        .pop()
        .expect("lease expired");
    assert_ne!(first.lock_token, second.lock_token);
    let stale = TurnCommit {
        instance_id: "a".into(),
        lock_token: first.lock_token,
        execution_id: 1,
        history_from: 0,
        append: vec![Event::TurnStarted { now_ms: 1 }],
        consumed: first.messages.iter().map(|(id, _)| *id).collect(),
        status: Some(InstanceStatus::Running),
        ..TurnCommit::default()
    };
    let error = store.commit_turn(stale).await.unwrap_err();
    assert!(matches!(error, StoreError::LeaseLost(_)), "{error}");
    assert!(
        store.read_history("a", 1, 0).await.unwrap().is_empty(),
        "nothing written"
    );
    assert_eq!(
        store.instance("a").await.unwrap().unwrap().status,
        InstanceStatus::Pending
    );
}

/// A turn commit writes history, consumes messages, schedules work and timers, sends messages
/// and sets the status, all at once; a commit that breaks the contract writes nothing.
pub async fn turn_commit_is_atomic<S: Store>(h: Harness<S>) {
    let store = &h.store;
    store.create_instance(new_instance("peer")).await.unwrap();
    let peer_turn = store
        .fetch_turns(1, LEASE, &[])
        .await
        .unwrap()
        .pop()
        .unwrap();
    store
        .abandon_turn("peer", peer_turn.lock_token, Duration::ZERO)
        .await
        .unwrap();

    store.create_instance(new_instance("a")).await.unwrap();
    let turns = store.fetch_turns(10, LEASE, &[]).await.unwrap();
    // Release the peer again if it was fetched alongside.
    for peer in turns.iter().filter(|t| t.instance_id == "peer") {
        store
            .abandon_turn("peer", peer.lock_token, Duration::ZERO)
            .await
            .unwrap();
    }
    let turn = turns.into_iter().find(|t| t.instance_id == "a").unwrap();
    let now = h.clock.now_ms_for_tests();
    let good = TurnCommit {
        instance_id: "a".into(),
        lock_token: turn.lock_token,
        execution_id: 1,
        history_from: 0,
        append: vec![
            Event::TurnStarted { now_ms: now },
            Event::ActivityScheduled {
                id: 0,
                name: "charge".into(),
                input: "x".into(),
                retry: None,
                queue: None,
            },
            Event::TimerCreated {
                id: 1,
                fire_at_ms: now + 5_000,
            },
        ],
        consumed: turn.messages.iter().map(|(id, _)| *id).collect(),
        status: Some(InstanceStatus::Running),
        custom_status: Some("step 1".into()),
        activities: vec![activity("a", 0)],
        timers: vec![(
            now + 5_000,
            Message::TimerFired {
                execution_id: 1,
                id: 1,
            },
        )],
        outbound: vec![Outbound::Message {
            instance_id: "peer".into(),
            message: Message::Event {
                name: "hello".into(),
                data: "from a".into(),
            },
        }],
        ..TurnCommit::default()
    };
    // Wrong history position: rejected, nothing written, the lock still held.
    let bad = TurnCommit {
        history_from: 7,
        ..good.clone()
    };
    assert!(matches!(
        store.commit_turn(bad).await,
        Err(StoreError::Contract(_))
    ));
    assert!(store.read_history("a", 1, 0).await.unwrap().is_empty());
    assert!(store.fetch_activities(10, LEASE).await.unwrap().is_empty());

    store.commit_turn(good.clone()).await.unwrap();
    assert_eq!(store.read_history("a", 1, 0).await.unwrap(), good.append);
    assert_eq!(
        store.read_history("a", 1, 1).await.unwrap(),
        good.append[1..].to_vec()
    );
    let info = store.instance("a").await.unwrap().unwrap();
    assert_eq!(info.status, InstanceStatus::Running);
    assert_eq!(info.custom_status.as_deref(), Some("step 1"));
    let items = store.fetch_activities(10, LEASE).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].activity, activity("a", 0));
    assert_eq!(items[0].attempt, 1);
    // The peer got its message; "a" has nothing visible (its timer is in the future).
    let turns = store.fetch_turns(10, LEASE, &[]).await.unwrap();
    assert_eq!(turns.len(), 1);
    assert_eq!(turns[0].instance_id, "peer");
    assert!(
        turns[0]
            .messages
            .iter()
            .any(|(_, m)| matches!(m, Message::Event { name, .. } if name == "hello"))
    );
    // A second commit with the same (released) token is rejected.
    let again = TurnCommit {
        history_from: 3,
        append: vec![],
        ..good
    };
    assert!(matches!(
        store.commit_turn(again).await,
        Err(StoreError::LeaseLost(_))
    ));
}

/// A timer message stays invisible until due; `next_wake_at` names the time.
pub async fn timers_become_due<S: Store>(h: Harness<S>) {
    let store = &h.store;
    let now = h.clock.now_ms_for_tests();
    started(
        store,
        "a",
        TurnCommit {
            timers: vec![(
                now + 1_000,
                Message::TimerFired {
                    execution_id: 1,
                    id: 0,
                },
            )],
            ..TurnCommit::default()
        },
    )
    .await;
    assert!(store.fetch_turns(1, LEASE, &[]).await.unwrap().is_empty());
    assert_eq!(
        store.next_wake_at(Work::Turns).await.unwrap(),
        Some(now + 1_000)
    );
    h.clock.advance_ms(999);
    assert!(store.fetch_turns(1, LEASE, &[]).await.unwrap().is_empty());
    h.clock.advance_ms(1);
    let turn = store
        .fetch_turns(1, LEASE, &[])
        .await
        .unwrap()
        .pop()
        .expect("timer due");
    assert_eq!(turn.messages.len(), 1);
    assert_eq!(
        turn.messages[0].1,
        Message::TimerFired {
            execution_id: 1,
            id: 0
        }
    );
}

/// Renewing an activity's lease keeps it from being handed out again.
pub async fn activity_lease_renewal<S: Store>(h: Harness<S>) {
    let store = &h.store;
    let item = started_with_one_activity(store).await;
    h.clock.advance_ms(LEASE_MS / 2);
    assert!(
        store
            .renew_activity_lease(item.item_id, item.lock_token, LEASE)
            .await
            .unwrap()
    );
    h.clock.advance_ms(LEASE_MS / 2 + 1);
    assert!(
        store.fetch_activities(1, LEASE).await.unwrap().is_empty(),
        "renewed lease holds"
    );
    store
        .complete_activity(
            item.item_id,
            item.lock_token,
            ActivityResult::Completed("ok".into()),
        )
        .await
        .unwrap();
    let turn = store
        .fetch_turns(1, LEASE, &[])
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(
        turn.messages[0].1,
        Message::ActivityCompleted {
            execution_id: 1,
            id: 0,
            output: "ok".into()
        }
    );
}

/// A completion whose lease was lost is rejected; the new holder's completion is recorded once.
pub async fn lost_activity_lease_rejects_completion<S: Store>(h: Harness<S>) {
    let store = &h.store;
    let first = started_with_one_activity(store).await;
    h.clock.advance_ms(LEASE_MS + 1);
    assert!(matches!(
        store
            .renew_activity_lease(first.item_id, first.lock_token, LEASE)
            .await,
        Err(StoreError::LeaseLost(_))
    ));
    let second = store
        .fetch_activities(1, LEASE)
        .await
        .unwrap()
        .pop()
        .expect("expired lease");
    assert_eq!(second.attempt, 2, "the redelivery counts as an attempt");
    let stale = store
        .complete_activity(
            first.item_id,
            first.lock_token,
            ActivityResult::Completed("old".into()),
        )
        .await;
    assert!(matches!(stale, Err(StoreError::LeaseLost(_))));
    store
        .complete_activity(
            second.item_id,
            second.lock_token,
            ActivityResult::Completed("new".into()),
        )
        .await
        .unwrap();
    let again = store
        .complete_activity(
            second.item_id,
            second.lock_token,
            ActivityResult::Completed("dup".into()),
        )
        .await;
    assert!(
        matches!(again, Err(StoreError::LeaseLost(_))),
        "a work item completes once"
    );
    let turn = store
        .fetch_turns(1, LEASE, &[])
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(turn.messages.len(), 1);
    assert_eq!(
        turn.messages[0].1,
        Message::ActivityCompleted {
            execution_id: 1,
            id: 0,
            output: "new".into()
        }
    );
}

/// A retried work item is invisible for its backoff, then delivered with the next attempt.
pub async fn attempts_are_counted<S: Store>(h: Harness<S>) {
    let store = &h.store;
    let first = started_with_one_activity(store).await;
    assert_eq!(first.attempt, 1);
    store
        .retry_activity(first.item_id, first.lock_token, Duration::from_millis(500))
        .await
        .unwrap();
    assert!(
        store.fetch_activities(1, LEASE).await.unwrap().is_empty(),
        "backing off"
    );
    h.clock.advance_ms(500);
    let second = store
        .fetch_activities(1, LEASE)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(second.attempt, 2);
    store
        .complete_activity(
            second.item_id,
            second.lock_token,
            ActivityResult::Failed(Failure::new("x", "y")),
        )
        .await
        .unwrap();
}

/// Events for missing instances are errors, or start them (signal-with-start); events for
/// finished instances are errors.
pub async fn events_are_never_dropped_silently<S: Store>(h: Harness<S>) {
    let store = &h.store;
    let event = Message::Event {
        name: "go".into(),
        data: "1".into(),
    };
    let missing = store
        .enqueue_message("nobody", event.clone(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(missing, StoreError::InstanceNotFound(_)),
        "{missing}"
    );
    // The start names a version of the code, which the start message carries.
    let versioned = NewInstance {
        version: Some(3),
        ..new_instance("b")
    };
    store
        .enqueue_message("b", event.clone(), Some(versioned))
        .await
        .unwrap();
    let turn = store
        .fetch_turns(1, LEASE, &[])
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(turn.instance_id, "b");
    assert!(matches!(
        turn.messages[0].1,
        Message::Start {
            version: Some(3),
            ..
        }
    ));
    assert_eq!(turn.messages[1].1, event);
    store
        .commit_turn(TurnCommit {
            instance_id: "b".into(),
            lock_token: turn.lock_token,
            execution_id: 1,
            history_from: 0,
            append: vec![Event::OrchestrationCompleted {
                output: "done".into(),
            }],
            consumed: turn.messages.iter().map(|(id, _)| *id).collect(),
            status: Some(InstanceStatus::Completed),
            output: Some("done".into()),
            ..TurnCommit::default()
        })
        .await
        .unwrap();
    let finished = store.enqueue_message("b", event, None).await.unwrap_err();
    assert!(
        matches!(finished, StoreError::InstanceFinished { .. }),
        "{finished}"
    );
    let info = store.instance("b").await.unwrap().unwrap();
    assert_eq!(info.output.as_deref(), Some("done"));
}

/// Continue-as-new starts a new execution with an empty history and a start message.
pub async fn continue_as_new_starts_a_new_execution<S: Store>(h: Harness<S>) {
    let store = &h.store;
    store.create_instance(new_instance("a")).await.unwrap();
    let turn = store
        .fetch_turns(1, LEASE, &[])
        .await
        .unwrap()
        .pop()
        .unwrap();
    let restart = Message::Start {
        name: "orders".into(),
        input: "gen 2".into(),
        parent: None,
        carried_events: vec![("go".into(), "kept".into())],
        version: None,
    };
    store
        .commit_turn(TurnCommit {
            instance_id: "a".into(),
            lock_token: turn.lock_token,
            execution_id: 1,
            history_from: 0,
            append: vec![Event::ContinuedAsNew {
                input: "gen 2".into(),
            }],
            consumed: turn.messages.iter().map(|(id, _)| *id).collect(),
            status: Some(InstanceStatus::Running),
            continue_as_new: Some(restart.clone()),
            ..TurnCommit::default()
        })
        .await
        .unwrap();
    let turn = store
        .fetch_turns(1, LEASE, &[])
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(turn.execution_id, 2);
    assert_eq!(turn.history_len, 0);
    assert_eq!(turn.messages.len(), 1);
    assert_eq!(turn.messages[0].1, restart);
    assert_eq!(
        store.read_history("a", 1, 0).await.unwrap().len(),
        1,
        "old history kept"
    );
    assert!(store.read_history("a", 2, 0).await.unwrap().is_empty());
}

/// A sub-orchestration start under a taken id tells the parent instead of creating anything.
pub async fn child_start_with_taken_id_fails_the_parent_command<S: Store>(h: Harness<S>) {
    let store = &h.store;
    store.create_instance(new_instance("taken")).await.unwrap();
    let taken_turn = store
        .fetch_turns(1, LEASE, &[])
        .await
        .unwrap()
        .pop()
        .unwrap();
    store
        .abandon_turn("taken", taken_turn.lock_token, Duration::from_secs(3600))
        .await
        .unwrap();
    let child = NewInstance {
        instance_id: "taken".into(),
        name: "child".into(),
        input: String::new(),
        parent: Some(ParentLink {
            instance_id: "p".into(),
            execution_id: 1,
            id: 0,
        }),
        version: None,
    };
    let fresh = NewInstance {
        instance_id: "fresh".into(),
        ..child.clone()
    };
    started(
        store,
        "p",
        TurnCommit {
            outbound: vec![Outbound::Start(child), Outbound::Start(fresh)],
            ..TurnCommit::default()
        },
    )
    .await;
    let turns = store.fetch_turns(10, LEASE, &[]).await.unwrap();
    let parent = turns
        .iter()
        .find(|t| t.instance_id == "p")
        .expect("parent told");
    match &parent.messages[0].1 {
        Message::SubOrchestrationFailed {
            id: 0,
            execution_id: 1,
            failure,
        } => {
            assert_eq!(failure.code, codes::INSTANCE_EXISTS)
        }
        other => panic!("unexpected {other:?}"),
    }
    let fresh = turns
        .iter()
        .find(|t| t.instance_id == "fresh")
        .expect("child created");
    assert!(matches!(fresh.messages[0].1, Message::Start { .. }));
    assert_eq!(
        store.instance("taken").await.unwrap().unwrap().name,
        "orders",
        "untouched"
    );
}

/// A commit can claim its new activities for the caller (no fetch needed) and can record
/// results of claimed activities, deleting their work items in the same transaction.
pub async fn commits_claim_and_complete_activities<S: Store>(h: Harness<S>) {
    let store = &h.store;
    assert!(store.create_instance(new_instance("a")).await.unwrap());
    let turn = store
        .fetch_turns(1, LEASE, &[])
        .await
        .unwrap()
        .pop()
        .unwrap();
    let claimed = store
        .commit_turn(TurnCommit {
            instance_id: "a".into(),
            lock_token: turn.lock_token,
            execution_id: 1,
            history_from: 0,
            append: vec![Event::TurnStarted { now_ms: 0 }],
            consumed: turn.messages.iter().map(|(id, _)| *id).collect(),
            status: Some(InstanceStatus::Running),
            activities: vec![activity("a", 0), activity("a", 1), activity("a", 2)],
            claim_activities: Some((2, LEASE)),
            ..TurnCommit::default()
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2, "claims at most the requested number");
    assert_eq!(claimed[0].activity, activity("a", 0));
    assert!(claimed.iter().all(|item| item.attempt == 1));
    // Only the unclaimed one can be fetched.
    let fetched = store.fetch_activities(10, LEASE).await.unwrap();
    assert_eq!(fetched.len(), 1);
    assert_eq!(fetched[0].activity.activity_id, 2);

    // Results held in memory are committed with the next turn; `also` locks the instance
    // although it has no visible message.
    let turn = store
        .fetch_turns(1, LEASE, &["a".to_string()])
        .await
        .unwrap()
        .pop()
        .expect("also");
    assert!(turn.messages.is_empty());
    let mut completed: Vec<(u64, u64)> = claimed
        .iter()
        .map(|item| (item.item_id, item.lock_token))
        .collect();
    completed.push((fetched[0].item_id, fetched[0].lock_token.wrapping_add(1)));
    store
        .commit_turn(TurnCommit {
            instance_id: "a".into(),
            lock_token: turn.lock_token,
            execution_id: 1,
            history_from: 1,
            append: vec![
                Event::ActivityCompleted {
                    id: 0,
                    output: "x".into(),
                },
                Event::ActivityCompleted {
                    id: 1,
                    output: "y".into(),
                },
            ],
            completed_activities: completed,
            ..TurnCommit::default()
        })
        .await
        .unwrap();
    // The claimed items are gone (even after their leases would have expired); the item given
    // with a wrong token is untouched and still held by its fetcher.
    h.clock.advance_ms(LEASE_MS + 1);
    let left = store.fetch_activities(10, LEASE).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].activity.activity_id, 2);
    assert_eq!(left[0].attempt, 2);
    assert_eq!(store.read_history("a", 1, 0).await.unwrap().len(), 3);
}

/// A renewed turn lease outlives its first term: the instance is not handed out again and the
/// holder's commit goes through; a lost or released lease cannot be renewed.
pub async fn turn_lease_renewal<S: Store>(h: Harness<S>) {
    let store = &h.store;
    store.create_instance(new_instance("a")).await.unwrap();
    let turn = store
        .fetch_turns(1, LEASE, &[])
        .await
        .unwrap()
        .pop()
        .unwrap();
    for _ in 0..3 {
        h.clock.advance_ms(LEASE_MS / 2);
        store
            .renew_turn_lease("a", turn.lock_token, LEASE)
            .await
            .unwrap();
    }
    // One and a half leases after the fetch: still held.
    h.clock.advance_ms(LEASE_MS / 2);
    assert!(
        store.fetch_turns(1, LEASE, &[]).await.unwrap().is_empty(),
        "a renewed lease holds"
    );
    let wrong = store
        .renew_turn_lease("a", turn.lock_token.wrapping_add(1), LEASE)
        .await;
    assert!(matches!(wrong, Err(StoreError::LeaseLost(_))), "{wrong:?}");
    store
        .commit_turn(TurnCommit {
            instance_id: "a".into(),
            lock_token: turn.lock_token,
            execution_id: 1,
            history_from: 0,
            append: vec![Event::TurnStarted { now_ms: 0 }],
            consumed: turn.messages.iter().map(|(id, _)| *id).collect(),
            status: Some(InstanceStatus::Running),
            ..TurnCommit::default()
        })
        .await
        .unwrap();
    let released = store.renew_turn_lease("a", turn.lock_token, LEASE).await;
    assert!(
        matches!(released, Err(StoreError::LeaseLost(_))),
        "{released:?}"
    );
    // An expired lease cannot be renewed either.
    store.enqueue_message("a", go_event(), None).await.unwrap();
    let turn = store
        .fetch_turns(1, LEASE, &[])
        .await
        .unwrap()
        .pop()
        .unwrap();
    h.clock.advance_ms(LEASE_MS + 1);
    let expired = store.renew_turn_lease("a", turn.lock_token, LEASE).await;
    assert!(
        matches!(expired, Err(StoreError::LeaseLost(_))),
        "{expired:?}"
    );
}

fn go_event() -> Message {
    Message::Event {
        name: "go".into(),
        data: "1".into(),
    }
}

/// Every fetch counts a delivery on what it hands out, whether the turn then fails, loses its
/// lease or is released; a release takes its count back; consumed messages take their counts
/// with them.
pub async fn turn_deliveries_are_counted<S: Store>(h: Harness<S>) {
    let store = &h.store;
    store.create_instance(new_instance("a")).await.unwrap();
    let fetch = || async {
        store
            .fetch_turns(1, LEASE, &[])
            .await
            .unwrap()
            .pop()
            .expect("a turn")
    };
    let first = fetch().await;
    assert_eq!(first.delivery, 1);
    assert_eq!(first.unreadable, None);
    store
        .abandon_turn("a", first.lock_token, Duration::ZERO)
        .await
        .unwrap();
    let second = fetch().await;
    assert_eq!(second.delivery, 2, "an abandoned turn counts");
    h.clock.advance_ms(LEASE_MS + 1);
    let third = fetch().await;
    assert_eq!(third.delivery, 3, "a lost lease counts");
    store
        .release_turn("a", third.lock_token, Duration::from_millis(100))
        .await
        .unwrap();
    assert!(
        store.fetch_turns(1, LEASE, &[]).await.unwrap().is_empty(),
        "released with a delay"
    );
    h.clock.advance_ms(100);
    // A message that arrives meanwhile starts its own count; the turn reports the highest.
    store.enqueue_message("a", go_event(), None).await.unwrap();
    let fourth = fetch().await;
    assert_eq!(fourth.delivery, 3, "a release takes its delivery back");
    assert_eq!(fourth.messages.len(), 2);
    store
        .commit_turn(TurnCommit {
            instance_id: "a".into(),
            lock_token: fourth.lock_token,
            execution_id: 1,
            history_from: 0,
            append: vec![Event::TurnStarted { now_ms: 0 }],
            consumed: fourth.messages.iter().map(|(id, _)| *id).collect(),
            status: Some(InstanceStatus::Running),
            ..TurnCommit::default()
        })
        .await
        .unwrap();
    store.enqueue_message("a", go_event(), None).await.unwrap();
    assert_eq!(fetch().await.delivery, 1, "a new message starts at one");
}

/// A quarantined instance keeps its messages and takes new ones, is handed out only when its
/// caller asks for it by id, and shows its reason; only the lease holder can quarantine.
pub async fn quarantine_takes_an_instance_out_of_service<S: Store>(h: Harness<S>) {
    let store = &h.store;
    started(store, "a", TurnCommit::default()).await;
    store.enqueue_message("a", go_event(), None).await.unwrap();
    store.create_instance(new_instance("b")).await.unwrap();
    let turns = store.fetch_turns(10, LEASE, &[]).await.unwrap();
    assert_eq!(turns.len(), 2);
    let turn = turns.iter().find(|t| t.instance_id == "a").unwrap();
    let other = turns.iter().find(|t| t.instance_id == "b").unwrap();
    let reason = Failure::new(codes::TURN_POISONED, "delivered 3 times");
    let stale = store
        .quarantine_turn("a", turn.lock_token.wrapping_add(1), reason.clone())
        .await;
    assert!(matches!(stale, Err(StoreError::LeaseLost(_))), "{stale:?}");
    store
        .quarantine_turn("a", turn.lock_token, reason.clone())
        .await
        .unwrap();
    store
        .abandon_turn("b", other.lock_token, Duration::ZERO)
        .await
        .unwrap();
    let info = store.instance("a").await.unwrap().unwrap();
    assert_eq!(info.status, InstanceStatus::Quarantined);
    assert_eq!(info.failure, Some(reason));
    assert!(!info.status.is_terminal());
    store.enqueue_message("a", go_event(), None).await.unwrap();
    let turns = store.fetch_turns(10, LEASE, &[]).await.unwrap();
    assert_eq!(turns.len(), 1, "only the healthy instance");
    assert_eq!(turns[0].instance_id, "b");
    let held = store
        .fetch_turns(1, LEASE, &["a".to_string()])
        .await
        .unwrap()
        .pop()
        .expect("asked for by id");
    assert_eq!(held.instance_id, "a");
    assert_eq!(held.status, InstanceStatus::Quarantined);
    assert_eq!(held.messages.len(), 2, "messages kept, new ones taken");
}

/// An activity work item delivered too often takes its instance out of service: only the
/// item's holder can do it; the reason is the instance's failure and is recorded in its
/// history; the holder of its turn is fenced; none of its activities or turns is handed out;
/// an operator's retry hands the item out again with a fresh count.
pub async fn activity_quarantine_takes_an_instance_out_of_service<S: Store>(h: Harness<S>) {
    let store = &h.store;
    let item = started_with_one_activity(store).await;
    assert_eq!(item.attempt, 1);
    store.enqueue_message("a", go_event(), None).await.unwrap();
    let turn = store
        .fetch_turns(1, LEASE, &[])
        .await
        .unwrap()
        .pop()
        .expect("a turn for the event");
    let reason = Failure::new(codes::ACTIVITY_POISONED, "delivered 4 times");
    let stale = store
        .quarantine_activity(
            item.item_id,
            item.lock_token.wrapping_add(1),
            reason.clone(),
        )
        .await;
    assert!(matches!(stale, Err(StoreError::LeaseLost(_))), "{stale:?}");
    store
        .quarantine_activity(item.item_id, item.lock_token, reason.clone())
        .await
        .unwrap();
    let again = store
        .quarantine_activity(item.item_id, item.lock_token, reason.clone())
        .await;
    assert!(
        matches!(again, Err(StoreError::LeaseLost(_))),
        "the item was given back: {again:?}"
    );
    let info = store.instance("a").await.unwrap().unwrap();
    assert_eq!(info.status, InstanceStatus::Quarantined);
    assert_eq!(info.failure, Some(reason.clone()));
    let history = store.read_history("a", 1, 0).await.unwrap();
    assert_eq!(
        history.last(),
        Some(&Event::Quarantined {
            reason: reason.clone()
        })
    );
    let late = store
        .commit_turn(TurnCommit {
            instance_id: "a".into(),
            lock_token: turn.lock_token,
            execution_id: 1,
            history_from: turn.history_len,
            append: vec![Event::TurnStarted { now_ms: 0 }],
            consumed: turn.messages.iter().map(|(id, _)| *id).collect(),
            ..TurnCommit::default()
        })
        .await;
    assert!(
        matches!(late, Err(StoreError::LeaseLost(_))),
        "the turn's holder is fenced: {late:?}"
    );
    h.clock.advance_ms(LEASE_MS * 2);
    assert!(
        store.fetch_activities(10, LEASE).await.unwrap().is_empty(),
        "no activity of a quarantined instance is handed out"
    );
    assert!(store.fetch_turns(10, LEASE, &[]).await.unwrap().is_empty());

    assert!(
        store
            .retry_instance(&operator("a", "fixed the crash"))
            .await
            .unwrap()
    );
    let info = store.instance("a").await.unwrap().unwrap();
    assert_eq!((info.status, info.failure), (InstanceStatus::Running, None));
    let back = store
        .fetch_activities(10, LEASE)
        .await
        .unwrap()
        .pop()
        .expect("in service again");
    assert_eq!(back.item_id, item.item_id);
    assert_eq!(back.attempt, 1, "the count starts afresh");
    let turn = store
        .fetch_turns(10, LEASE, &[])
        .await
        .unwrap()
        .pop()
        .expect("its turn too");
    assert_eq!(turn.messages.len(), 1, "the event was kept");
}

/// Work of a finished instance is never handed out, even when a holder left it behind (a crash
/// after the instance was cancelled): the fetch deletes it.
pub async fn activities_of_finished_instances_are_not_handed_out<S: Store>(h: Harness<S>) {
    let store = &h.store;
    let held = started_with_one_activity(store).await;
    store
        .enqueue_message(
            "a",
            Message::Cancel {
                reason: "stop".into(),
                requested_by: None,
            },
            None,
        )
        .await
        .unwrap();
    let turn = store
        .fetch_turns(1, LEASE, &[])
        .await
        .unwrap()
        .pop()
        .unwrap();
    store
        .commit_turn(TurnCommit {
            instance_id: "a".into(),
            lock_token: turn.lock_token,
            execution_id: 1,
            history_from: 1,
            append: vec![Event::Cancelled {
                reason: "stop".into(),
                requested_by: None,
            }],
            consumed: turn.messages.iter().map(|(id, _)| *id).collect(),
            status: Some(InstanceStatus::Cancelled),
            failure: Some(Failure::new(codes::CANCELLED, "stop")),
            outstanding_activities: true,
            ..TurnCommit::default()
        })
        .await
        .unwrap();
    assert!(
        !store
            .renew_activity_lease(held.item_id, held.lock_token, LEASE)
            .await
            .unwrap(),
        "the holder learns that the result is not wanted"
    );
    // The holder dies; its lease runs out.
    h.clock.advance_ms(LEASE_MS + 1);
    assert!(store.fetch_activities(10, LEASE).await.unwrap().is_empty());
    for work in [Work::Turns, Work::Activities] {
        assert_eq!(
            store.next_wake_at(work).await.unwrap(),
            None,
            "nothing left"
        );
    }
}

/// Activities the code cancelled lose their work items with the commit, the held one too: its
/// holder's renewal and completion find the lease lost, and nothing is handed out again.
pub async fn cancelled_activities_lose_their_work_items<S: Store>(h: Harness<S>) {
    let store = &h.store;
    let extra = TurnCommit {
        activities: vec![activity("a", 0), activity("a", 1), activity("a", 2)],
        ..TurnCommit::default()
    };
    started(store, "a", extra).await;
    let held = store
        .fetch_activities(1, LEASE)
        .await
        .unwrap()
        .pop()
        .expect("an activity is visible");
    let event = Message::Event {
        name: "e".into(),
        data: String::new(),
    };
    store.enqueue_message("a", event, None).await.unwrap();
    let turn = store
        .fetch_turns(1, LEASE, &[])
        .await
        .unwrap()
        .pop()
        .unwrap();
    let kept = (0..3)
        .find(|id| *id != held.activity.activity_id)
        .expect("another activity");
    let cancelled: Vec<u64> = (0..3).filter(|id| *id != kept).collect();
    store
        .commit_turn(TurnCommit {
            instance_id: "a".into(),
            lock_token: turn.lock_token,
            execution_id: 1,
            history_from: 1,
            append: cancelled
                .iter()
                .map(|id| Event::CancelRequested { id: *id })
                .collect(),
            consumed: turn.messages.iter().map(|(id, _)| *id).collect(),
            cancelled_activities: cancelled,
            ..TurnCommit::default()
        })
        .await
        .unwrap();
    assert!(matches!(
        store
            .renew_activity_lease(held.item_id, held.lock_token, LEASE)
            .await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        store
            .complete_activity(
                held.item_id,
                held.lock_token,
                ActivityResult::Completed("late".into())
            )
            .await,
        Err(StoreError::LeaseLost(_))
    ));
    h.clock.advance_ms(LEASE_MS + 1);
    let left: Vec<u64> = store
        .fetch_activities(10, LEASE)
        .await
        .unwrap()
        .iter()
        .map(|item| item.activity.activity_id)
        .collect();
    assert_eq!(left, vec![kept], "only the activity not cancelled is left");
    let info = store.instance("a").await.unwrap().unwrap();
    assert_eq!(info.status, InstanceStatus::Running);
}

/// A released work item (it did not run) keeps its attempt count; a retried one counts.
pub async fn released_activities_keep_their_attempt<S: Store>(h: Harness<S>) {
    let store = &h.store;
    let first = started_with_one_activity(store).await;
    assert_eq!(first.attempt, 1);
    assert_eq!(first.unreadable, None);
    store
        .release_activity(first.item_id, first.lock_token, Duration::from_millis(200))
        .await
        .unwrap();
    assert!(store.fetch_activities(1, LEASE).await.unwrap().is_empty());
    h.clock.advance_ms(200);
    let again = store
        .fetch_activities(1, LEASE)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(again.attempt, 1, "a release takes its attempt back");
    let stale = store
        .release_activity(first.item_id, first.lock_token, Duration::ZERO)
        .await;
    assert!(matches!(stale, Err(StoreError::LeaseLost(_))), "{stale:?}");
    store
        .retry_activity(again.item_id, again.lock_token, Duration::ZERO)
        .await
        .unwrap();
    let retried = store
        .fetch_activities(1, LEASE)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(retried.attempt, 2);
}

/// What became due after the last fetch began is not skipped: the next wake-up is then in the
/// past (fetch at once), for timers and for retried work items alike.
pub async fn what_became_due_since_the_last_fetch_wakes_at_once<S: Store>(h: Harness<S>) {
    let store = &h.store;
    let now = h.clock.now_ms_for_tests();
    let item = started_with_one_activity(store).await;
    started(
        store,
        "t",
        TurnCommit {
            timers: vec![(
                now + 10,
                Message::TimerFired {
                    execution_id: 1,
                    id: 0,
                },
            )],
            ..TurnCommit::default()
        },
    )
    .await;
    store
        .retry_activity(item.item_id, item.lock_token, Duration::from_millis(10))
        .await
        .unwrap();
    assert!(store.fetch_turns(10, LEASE, &[]).await.unwrap().is_empty());
    assert!(store.fetch_activities(10, LEASE).await.unwrap().is_empty());
    // Both become due before the dispatchers ask when to wake up.
    h.clock.advance_ms(20);
    let turns = store.next_wake_at(Work::Turns).await.unwrap();
    assert_eq!(turns, Some(now + 10), "the timer is due: wake at once");
    let activities = store.next_wake_at(Work::Activities).await.unwrap();
    assert_eq!(activities, Some(now + 10), "the retry is due: wake at once");
    assert_eq!(store.fetch_turns(10, LEASE, &[]).await.unwrap().len(), 1);
    assert_eq!(store.fetch_activities(10, LEASE).await.unwrap().len(), 1);
}

/// A fetch for some names hands out only instances and work items of those names (the ones
/// the caller holds results for included) and, for work items, of the task queues it names;
/// its next wake-up counts only them, so a process never takes work it has no code for (or
/// does not serve) and never spins on work it cannot take.
pub async fn fetches_hand_out_only_the_names_asked_for<S: Store>(h: Harness<S>) {
    let store = &h.store;
    let billing = crate::Names::only(["billing"]);
    store.create_instance(new_instance("a")).await.unwrap();
    let b = NewInstance {
        name: "billing".into(),
        ..new_instance("b")
    };
    store.create_instance(b).await.unwrap();
    let ids = |turns: Vec<crate::LockedTurn>| -> Vec<String> {
        turns.into_iter().map(|turn| turn.instance_id).collect()
    };
    let turn = store
        .fetch_turns_named(10, LEASE, &["a".to_string()], &billing)
        .await
        .unwrap();
    assert_eq!(
        turn.len(),
        1,
        "only billing, even when 'a' is asked for by id"
    );
    assert_eq!(turn[0].instance_id, "b");
    let fetched = store
        .fetch_turns_named(10, LEASE, &[], &billing)
        .await
        .unwrap();
    assert!(fetched.is_empty(), "'a' is not billing: {:?}", ids(fetched));
    // 'c' becomes due after that fetch, but not for this fetcher: only b's lease counts.
    let fetched_at = h.clock.now_ms_for_tests();
    h.clock.advance_ms(5);
    store.create_instance(new_instance("c")).await.unwrap();
    let wake = store.next_wake_at(Work::Turns).await.unwrap();
    assert_eq!(
        wake,
        Some(fetched_at + LEASE_MS),
        "b's lease end, not c's start"
    );
    // The commit schedules two activities of different names.
    store
        .commit_turn(TurnCommit {
            instance_id: "b".into(),
            lock_token: turn[0].lock_token,
            execution_id: 1,
            history_from: 0,
            append: vec![Event::TurnStarted { now_ms: 0 }],
            consumed: turn[0].messages.iter().map(|(id, _)| *id).collect(),
            status: Some(InstanceStatus::Running),
            activities: vec![
                activity("b", 0),
                NewActivity {
                    name: "mail".into(),
                    task_queue: Some("email".into()),
                    ..activity("b", 1)
                },
            ],
            ..TurnCommit::default()
        })
        .await
        .unwrap();
    let mail = crate::Names::only(["mail"]);
    let default_queue = crate::Names::only([""]);
    let email_queue = crate::Names::only(["email"]);
    let fetch = |names, queues| store.fetch_activities_named(10, LEASE, names, queues);
    assert!(
        fetch(&mail, &default_queue).await.unwrap().is_empty(),
        "mail runs on the email queue"
    );
    let gpu_queue = crate::Names::only(["gpu"]);
    assert!(
        fetch(&crate::Names::All, &gpu_queue)
            .await
            .unwrap()
            .is_empty()
    );
    let items = fetch(&mail, &email_queue).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].activity.name, "mail");
    assert_eq!(items[0].activity.task_queue.as_deref(), Some("email"));
    assert!(fetch(&mail, &email_queue).await.unwrap().is_empty());
    let items = store.fetch_activities(10, LEASE).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].activity.name, "charge");
    let mut rest = ids(store.fetch_turns(10, LEASE, &[]).await.unwrap());
    rest.sort();
    assert_eq!(rest, ["a", "c"]);
}

/// Creates `id` and takes its first turn to `status` (a pending instance is only created).
async fn run_to<S: Store>(
    store: &S,
    start: NewInstance,
    status: InstanceStatus,
    clock: &ManualClock,
) {
    let id = start.instance_id.clone();
    assert!(store.create_instance(start).await.unwrap());
    if status == InstanceStatus::Pending {
        return;
    }
    clock.advance_ms(3);
    // Instances left pending are handed out too: take this one's turn, put theirs back.
    let mut turn = None;
    for fetched in store.fetch_turns(100, LEASE, &[]).await.unwrap() {
        if fetched.instance_id == id {
            turn = Some(fetched);
        } else {
            store
                .release_turn(&fetched.instance_id, fetched.lock_token, Duration::ZERO)
                .await
                .unwrap();
        }
    }
    let turn = turn.expect("the start turn");
    let consumed = turn.messages.iter().map(|(message_id, _)| *message_id);
    let commit = TurnCommit {
        instance_id: id.clone(),
        lock_token: turn.lock_token,
        execution_id: 1,
        history_from: 0,
        append: match status {
            // What the runtime records as a turn ends an execution.
            InstanceStatus::Completed => vec![
                Event::TurnStarted { now_ms: 0 },
                Event::OrchestrationCompleted {
                    output: "done".into(),
                },
            ],
            InstanceStatus::Failed => vec![
                Event::TurnStarted { now_ms: 0 },
                Event::OrchestrationFailed {
                    failure: Failure::new("boom", "it failed"),
                },
            ],
            InstanceStatus::Cancelled => vec![
                Event::TurnStarted { now_ms: 0 },
                Event::Cancelled {
                    reason: "it failed".into(),
                    requested_by: Some("conformance".into()),
                },
            ],
            _ => vec![Event::TurnStarted { now_ms: 0 }],
        },
        consumed: consumed.collect(),
        status: Some(status),
        output: (status == InstanceStatus::Completed).then(|| "done".to_string()),
        failure: matches!(status, InstanceStatus::Failed | InstanceStatus::Cancelled)
            .then(|| Failure::new("boom", "it failed")),
        custom_status: Some(format!("at {id}")),
        ..TurnCommit::default()
    };
    store.commit_turn(commit).await.unwrap();
}

/// What a listing should return, computed from the instances' own rows.
async fn expected_page<S: Store>(
    store: &S,
    ids: &[String],
    query: &crate::InstanceQuery,
) -> Vec<String> {
    let mut all = Vec::new();
    for id in ids {
        let info = store.instance(id).await.unwrap().expect("listed ids exist");
        all.push(crate::InstanceSummary {
            instance_id: info.instance_id,
            name: info.name,
            status: info.status,
            execution_id: info.execution_id,
            failure: info.failure,
            custom_status: info.custom_status,
            parent_id: info.parent_id,
            created_at_ms: info.created_at_ms,
            started_at_ms: info.started_at_ms,
            updated_at_ms: info.updated_at_ms,
            finished_at_ms: info.finished_at_ms,
        });
    }
    all.retain(|summary| query.filter.matches(summary) && query.after_cursor(summary));
    all.sort_by(|a, b| {
        let key = |s: &crate::InstanceSummary| (query.order.key_of(s), s.instance_id.clone());
        if query.order.descending() {
            key(b).cmp(&key(a))
        } else {
            key(a).cmp(&key(b))
        }
    });
    all.into_iter().map(|summary| summary.instance_id).collect()
}

/// Pages through `query` to its end, checking every page against the rows.
async fn page_through<S: Store>(
    store: &S,
    ids: &[String],
    mut query: crate::InstanceQuery,
) -> Vec<String> {
    let all = crate::InstanceQuery {
        after: None,
        ..query.clone()
    };
    let matching = expected_page(store, ids, &all).await.len() as u64;
    assert_eq!(
        store.count_instances(&query.filter).await.unwrap(),
        matching,
        "{:?}",
        query.filter
    );
    let mut seen = Vec::new();
    for _ in 0..100 {
        let page = store.list_instances(&query).await.unwrap();
        let mut expected = expected_page(store, ids, &query).await;
        expected.truncate(query.page_size);
        let got: Vec<String> = page
            .instances
            .iter()
            .map(|instance| instance.instance_id.clone())
            .collect();
        assert_eq!(got, expected, "{query:?}");
        for instance in &page.instances {
            let info = store
                .instance(&instance.instance_id)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(instance.status, info.status);
            assert_eq!(instance.failure, info.failure);
            assert_eq!(instance.custom_status, info.custom_status);
            assert_eq!(instance.started_at_ms, info.started_at_ms);
        }
        seen.extend(got);
        match page.next {
            Some(next) => query.after = Some(next.to_string().parse().unwrap()),
            None => return seen,
        }
    }
    panic!("a listing of a few instances did not end");
}

/// Listings filter by status (several at once), name, times, id prefix and parent, in either
/// order by creation or update, paged with a cursor that new instances do not disturb; every
/// page matches what the instances' own rows say.
pub async fn listings_filter_order_and_page<S: Store>(h: Harness<S>) {
    use crate::{InstanceFilter, InstanceOrder, InstanceQuery, TimeRange};
    let store = &h.store;
    let plan = [
        ("order-1", "orders", InstanceStatus::Completed, None),
        ("order-2", "orders", InstanceStatus::Running, None),
        ("order-3", "orders", InstanceStatus::Failed, None),
        (
            "ship-1",
            "shipping",
            InstanceStatus::Pending,
            Some("order-2"),
        ),
        (
            "ship-2",
            "shipping",
            InstanceStatus::Completed,
            Some("order-2"),
        ),
        ("order-4", "orders", InstanceStatus::Cancelled, None),
        ("order-5", "orders", InstanceStatus::Pending, None),
        (
            "ship-3",
            "shipping",
            InstanceStatus::Running,
            Some("order-1"),
        ),
    ];
    let mut ids = Vec::new();
    let mut created = Vec::new();
    for (index, (id, name, status, parent)) in plan.into_iter().enumerate() {
        // Two instances share each creation time: ties are broken by id.
        if index % 2 == 0 {
            h.clock.advance_ms(10);
        }
        created.push(h.clock.now_ms_for_tests());
        let start = NewInstance {
            instance_id: id.into(),
            name: name.into(),
            input: "in".into(),
            parent: parent.map(|parent: &str| ParentLink {
                instance_id: parent.into(),
                execution_id: 1,
                id: 7,
            }),
            version: None,
        };
        run_to(store, start, status, &h.clock).await;
        ids.push(id.to_string());
    }
    let info = store.instance("ship-2").await.unwrap().unwrap();
    assert_eq!(info.parent_id.as_deref(), Some("order-2"));
    assert!(info.started_at_ms.is_some() && info.finished_at_ms.is_some());
    let pending = store.instance("order-5").await.unwrap().unwrap();
    assert_eq!(
        (pending.started_at_ms, pending.finished_at_ms),
        (None, None)
    );
    let running = store.instance("order-2").await.unwrap().unwrap();
    assert!(running.started_at_ms.is_some() && running.finished_at_ms.is_none());

    let filters = [
        InstanceFilter::default(),
        InstanceFilter {
            statuses: vec![InstanceStatus::Completed, InstanceStatus::Failed],
            ..InstanceFilter::default()
        },
        InstanceFilter {
            statuses: vec![InstanceStatus::Pending],
            name: Some("shipping".into()),
            ..InstanceFilter::default()
        },
        InstanceFilter {
            id_prefix: Some("order-".into()),
            created: TimeRange {
                from_ms: Some(created[2]),
                to_ms: Some(created[6]),
            },
            ..InstanceFilter::default()
        },
        InstanceFilter {
            finished: TimeRange {
                from_ms: Some(0),
                to_ms: None,
            },
            ..InstanceFilter::default()
        },
        InstanceFilter {
            parent: Some("order-2".into()),
            ..InstanceFilter::default()
        },
        InstanceFilter {
            name: Some("nothing".into()),
            ..InstanceFilter::default()
        },
    ];
    let orders = [
        InstanceOrder::CreatedDesc,
        InstanceOrder::CreatedAsc,
        InstanceOrder::UpdatedDesc,
        InstanceOrder::UpdatedAsc,
    ];
    for filter in &filters {
        for order in orders {
            for page_size in [1, 3, 100] {
                let query = InstanceQuery {
                    filter: filter.clone(),
                    order,
                    page_size,
                    after: None,
                };
                let all = page_through(store, &ids, query.clone()).await;
                let whole = InstanceQuery {
                    page_size: 1_000,
                    ..query
                };
                assert_eq!(all, expected_page(store, &ids, &whole).await);
            }
        }
    }
    assert!(
        store
            .list_instances(&InstanceQuery::default())
            .await
            .unwrap()
            .instances
            .is_empty(),
        "a page of 0"
    );

    // New instances do not move a cursor of the newest-first order.
    let first = store
        .list_instances(&InstanceQuery {
            page_size: 3,
            ..InstanceQuery::default()
        })
        .await
        .unwrap();
    for n in 0..3 {
        h.clock.advance_ms(1);
        let id = format!("late-{n}");
        store.create_instance(new_instance(&id)).await.unwrap();
        ids.push(id);
    }
    let rest = page_through(
        store,
        &ids,
        InstanceQuery {
            page_size: 2,
            after: first.next.clone(),
            ..InstanceQuery::default()
        },
    )
    .await;
    let mut listed: Vec<String> = first
        .instances
        .iter()
        .map(|instance| instance.instance_id.clone())
        .collect();
    listed.extend(rest);
    let mut original: Vec<String> = plan.iter().map(|(id, ..)| id.to_string()).collect();
    original.sort();
    listed.sort();
    assert_eq!(
        listed, original,
        "every instance once, none of the new ones"
    );
}

/// A listing by id prefix agrees with the rows in every order and across pages whatever plan
/// its size picks: a few old instances of a prefix (read from its id range and sorted) and
/// more than [`PREFIX_SORTED_ROWS_MAX`](crate::listing::PREFIX_SORTED_ROWS_MAX) old ones
/// (walked from their newest creation), both behind newer instances of other prefixes.
pub async fn listings_by_id_prefix_agree_with_the_rows<S: Store>(h: Harness<S>) {
    use crate::listing::PREFIX_SORTED_ROWS_MAX;
    use crate::{InstanceFilter, InstanceOrder, InstanceQuery};
    let store = &h.store;
    let many = usize::try_from(PREFIX_SORTED_ROWS_MAX).unwrap() + 20;
    // (creation time, id) of every instance, all pending: last update = creation.
    let mut rows: Vec<(i64, String)> = Vec::new();
    let create = async |id: String, rows: &mut Vec<(i64, String)>| {
        store.create_instance(new_instance(&id)).await.unwrap();
        rows.push((h.clock.now_ms_for_tests(), id));
    };
    for n in 0..many {
        if n % 3 == 0 {
            h.clock.advance_ms(1);
        }
        create(format!("old-{n:05}"), &mut rows).await;
    }
    for n in 0..7 {
        h.clock.advance_ms(1);
        create(format!("few-{n}"), &mut rows).await;
    }
    for n in 0..300 {
        h.clock.advance_ms(1);
        create(format!("new-{n:03}"), &mut rows).await;
    }
    for prefix in ["old-", "few-", "old-0000", "none-"] {
        for order in [
            InstanceOrder::CreatedDesc,
            InstanceOrder::CreatedAsc,
            InstanceOrder::UpdatedDesc,
            InstanceOrder::UpdatedAsc,
        ] {
            let mut expected: Vec<&(i64, String)> = rows
                .iter()
                .filter(|(_, id)| id.starts_with(prefix))
                .collect();
            expected.sort();
            if order.descending() {
                expected.reverse();
            }
            let expected: Vec<String> = expected.into_iter().map(|(_, id)| id.clone()).collect();
            let mut query = InstanceQuery {
                filter: InstanceFilter {
                    id_prefix: Some(prefix.into()),
                    ..InstanceFilter::default()
                },
                order,
                page_size: 100,
                after: None,
            };
            // The first pages and the last, through the cursor.
            let mut seen = Vec::new();
            loop {
                let page = store.list_instances(&query).await.unwrap();
                seen.extend(page.instances.iter().map(|i| i.instance_id.clone()));
                match page.next {
                    Some(next) if seen.len() < 300 => query.after = Some(next),
                    _ => break,
                }
            }
            let shown = seen.len();
            assert_eq!(seen, expected[..shown], "{prefix} {order:?}");
            assert_eq!(shown, expected.len().min(300), "{prefix} {order:?}");
        }
    }
}

/// Counts by status and name follow creation, status changes and quarantine, and agree with
/// `count_by_status`.
pub async fn counts_follow_every_change<S: Store>(h: Harness<S>) {
    use crate::InstanceCount;
    let store = &h.store;
    assert!(store.instance_counts().await.unwrap().is_empty());
    let named = |id: &str, name: &str| NewInstance {
        name: name.into(),
        ..new_instance(id)
    };
    run_to(
        store,
        named("a", "orders"),
        InstanceStatus::Completed,
        &h.clock,
    )
    .await;
    run_to(
        store,
        named("b", "orders"),
        InstanceStatus::Running,
        &h.clock,
    )
    .await;
    run_to(store, named("c", "mail"), InstanceStatus::Running, &h.clock).await;
    run_to(store, named("d", "mail"), InstanceStatus::Pending, &h.clock).await;
    store
        .enqueue_message(
            "b",
            Message::Event {
                name: "go".into(),
                data: "x".into(),
            },
            None,
        )
        .await
        .unwrap();
    let turn = store
        .fetch_turns(10, LEASE, &[])
        .await
        .unwrap()
        .into_iter()
        .find(|turn| turn.instance_id == "b")
        .expect("b has a message");
    store
        .quarantine_turn(
            "b",
            turn.lock_token,
            Failure::new(codes::TURN_POISONED, "x"),
        )
        .await
        .unwrap();
    let count = |status, name: &str, count| InstanceCount {
        status,
        name: name.into(),
        count,
    };
    let mut got = store.instance_counts().await.unwrap();
    got.sort_by(|a, b| (a.status.as_str(), &a.name).cmp(&(b.status.as_str(), &b.name)));
    assert_eq!(
        got,
        [
            count(InstanceStatus::Completed, "orders", 1),
            count(InstanceStatus::Pending, "mail", 1),
            count(InstanceStatus::Quarantined, "orders", 1),
            count(InstanceStatus::Running, "mail", 1),
        ]
    );
    assert_eq!(
        store.count_by_status().await.unwrap(),
        [
            (InstanceStatus::Completed, 1),
            (InstanceStatus::Pending, 1),
            (InstanceStatus::Quarantined, 1),
            (InstanceStatus::Running, 1),
        ]
    );
}

/// An instance's executions: the ones that continued as new with their times and lengths,
/// then the current one; a history is read in pages.
pub async fn executions_and_history_pages<S: Store>(h: Harness<S>) {
    use crate::{ExecutionInfo, ExecutionStatus};
    let store = &h.store;
    assert!(store.executions("a").await.unwrap().is_empty());
    store.create_instance(new_instance("a")).await.unwrap();
    assert_eq!(
        store.executions("a").await.unwrap(),
        [ExecutionInfo {
            execution_id: 1,
            status: ExecutionStatus::Current(InstanceStatus::Pending),
            started_at_ms: None,
            finished_at_ms: None,
            history_len: 0,
        }]
    );
    h.clock.advance_ms(5);
    let first_turn_at = h.clock.now_ms_for_tests();
    let turn = store
        .fetch_turns(1, LEASE, &[])
        .await
        .unwrap()
        .pop()
        .unwrap();
    let events: Vec<Event> = (0..5).map(|id| Event::TimerFired { id }).collect();
    store
        .commit_turn(TurnCommit {
            instance_id: "a".into(),
            lock_token: turn.lock_token,
            execution_id: 1,
            history_from: 0,
            append: events.clone(),
            consumed: turn.messages.iter().map(|(id, _)| *id).collect(),
            status: Some(InstanceStatus::Running),
            ..TurnCommit::default()
        })
        .await
        .unwrap();
    store
        .enqueue_message(
            "a",
            Message::Event {
                name: "go".into(),
                data: "x".into(),
            },
            None,
        )
        .await
        .unwrap();
    h.clock.advance_ms(5);
    let restarted_at = h.clock.now_ms_for_tests();
    let turn = store
        .fetch_turns(1, LEASE, &[])
        .await
        .unwrap()
        .pop()
        .unwrap();
    store
        .commit_turn(TurnCommit {
            instance_id: "a".into(),
            lock_token: turn.lock_token,
            execution_id: 1,
            history_from: 5,
            append: vec![Event::ContinuedAsNew {
                input: "gen 2".into(),
            }],
            consumed: turn.messages.iter().map(|(id, _)| *id).collect(),
            continue_as_new: Some(Message::Start {
                name: "orders".into(),
                input: "gen 2".into(),
                parent: None,
                carried_events: Vec::new(),
                version: None,
            }),
            ..TurnCommit::default()
        })
        .await
        .unwrap();
    let executions = store.executions("a").await.unwrap();
    assert_eq!(
        executions,
        [
            ExecutionInfo {
                execution_id: 1,
                status: ExecutionStatus::ContinuedAsNew,
                started_at_ms: Some(first_turn_at),
                finished_at_ms: Some(restarted_at),
                history_len: 6,
            },
            ExecutionInfo {
                execution_id: 2,
                status: ExecutionStatus::Current(InstanceStatus::Running),
                started_at_ms: Some(restarted_at),
                finished_at_ms: None,
                history_len: 0,
            }
        ]
    );
    let mut paged = Vec::new();
    loop {
        let page = store
            .read_history_page("a", 1, paged.len() as u64, 4)
            .await
            .unwrap();
        assert!(page.len() <= 4);
        if page.is_empty() {
            break;
        }
        paged.extend(page);
    }
    assert_eq!(paged, store.read_history("a", 1, 0).await.unwrap());
    assert_eq!(paged.len(), 6);
    assert!(
        store
            .read_history_page("a", 1, 2, 0)
            .await
            .unwrap()
            .is_empty()
    );
}

fn operator(id: &str, reason: &str) -> crate::OperatorRequest {
    crate::OperatorRequest {
        instance_id: id.into(),
        reason: reason.into(),
        requested_by: "ops@test".into(),
    }
}

fn event(name: &str) -> Message {
    Message::Event {
        name: name.into(),
        data: "x".into(),
    }
}

/// Starts `id` (with `parent`) and takes its first turn to running, scheduling `extra`.
async fn running_child<S: Store>(
    store: &S,
    id: &str,
    parent: Option<&str>,
    extra: TurnCommit,
    clock: &ManualClock,
) {
    let start = NewInstance {
        parent: parent.map(|parent| ParentLink {
            instance_id: parent.into(),
            execution_id: 1,
            id: 1,
        }),
        ..new_instance(id)
    };
    assert!(store.create_instance(start).await.unwrap());
    clock.advance_ms(1);
    let turn = store
        .fetch_turns(10, LEASE, &[])
        .await
        .unwrap()
        .into_iter()
        .find(|turn| turn.instance_id == id)
        .expect("its start turn");
    store
        .commit_turn(TurnCommit {
            instance_id: id.into(),
            lock_token: turn.lock_token,
            execution_id: 1,
            history_from: 0,
            append: vec![Event::TurnStarted { now_ms: 0 }],
            consumed: turn
                .messages
                .iter()
                .map(|(message_id, _)| *message_id)
                .collect(),
            status: Some(InstanceStatus::Running),
            ..extra
        })
        .await
        .unwrap();
}

/// A terminate ends an instance at once: the holder of its turn is fenced off, its messages,
/// timers and unheld work go, the event records who asked and why, and its descendants are
/// terminated with it.
pub async fn terminate_fences_the_holder_and_takes_the_children<S: Store>(h: Harness<S>) {
    use crate::ChildPolicy;
    let store = &h.store;
    let now = h.clock.now_ms_for_tests();
    let extra = TurnCommit {
        activities: vec![activity("p", 0)],
        timers: vec![(
            now + 60_000,
            Message::TimerFired {
                execution_id: 1,
                id: 1,
            },
        )],
        ..TurnCommit::default()
    };
    running_child(store, "p", None, extra, &h.clock).await;
    running_child(store, "c", Some("p"), TurnCommit::default(), &h.clock).await;
    store
        .create_instance(NewInstance {
            parent: Some(ParentLink {
                instance_id: "c".into(),
                execution_id: 1,
                id: 1,
            }),
            ..new_instance("g")
        })
        .await
        .unwrap();
    store.create_instance(new_instance("other")).await.unwrap();
    store.enqueue_message("p", event("go"), None).await.unwrap();
    let held = store
        .fetch_turns(10, LEASE, &[])
        .await
        .unwrap()
        .into_iter()
        .find(|turn| turn.instance_id == "p")
        .expect("p's turn");
    let before = store.read_history("p", 1, 0).await.unwrap().len() as u64;

    let terminated = store
        .terminate_instance(&operator("p", "stuck order"), ChildPolicy::Terminate)
        .await
        .unwrap();
    assert_eq!(terminated[0], "p");
    let mut rest = terminated[1..].to_vec();
    rest.sort();
    assert_eq!(rest, ["c", "g"]);

    let late = store
        .commit_turn(TurnCommit {
            instance_id: "p".into(),
            lock_token: held.lock_token,
            execution_id: 1,
            history_from: before,
            append: vec![Event::TurnStarted { now_ms: 1 }],
            consumed: held.messages.iter().map(|(id, _)| *id).collect(),
            status: Some(InstanceStatus::Completed),
            output: Some("late".into()),
            ..TurnCommit::default()
        })
        .await;
    assert!(
        matches!(late, Err(StoreError::LeaseLost(_))),
        "the holder's late commit is refused: {late:?}"
    );
    assert!(matches!(
        store.renew_turn_lease("p", held.lock_token, LEASE).await,
        Err(StoreError::LeaseLost(_))
    ));
    let info = store.instance("p").await.unwrap().unwrap();
    assert_eq!(info.status, InstanceStatus::Terminated);
    assert_eq!(info.output, None);
    let failure = info.failure.expect("a failure");
    assert_eq!(
        (failure.code.as_str(), failure.message.as_str()),
        (codes::TERMINATED, "stuck order")
    );
    assert!(info.finished_at_ms.is_some());
    let history = store.read_history("p", 1, 0).await.unwrap();
    assert_eq!(history.len() as u64, before + 1);
    assert_eq!(
        history.last(),
        Some(&Event::Terminated {
            reason: "stuck order".into(),
            requested_by: "ops@test".into(),
        })
    );
    let g = store.instance("g").await.unwrap().unwrap();
    assert_eq!(g.status, InstanceStatus::Terminated);
    assert!(g.failure.unwrap().message.contains("'c' was terminated"));

    h.clock.advance_ms(120_000);
    let turns: Vec<String> = store
        .fetch_turns(10, LEASE, &[])
        .await
        .unwrap()
        .into_iter()
        .map(|turn| turn.instance_id)
        .collect();
    assert_eq!(
        turns,
        ["other"],
        "no timer or message of the terminated is handed out"
    );
    assert!(store.fetch_activities(10, LEASE).await.unwrap().is_empty());
    assert!(matches!(
        store
            .terminate_instance(&operator("p", "again"), ChildPolicy::Terminate)
            .await,
        Err(StoreError::InstanceFinished { .. })
    ));
    assert!(matches!(
        store
            .terminate_instance(&operator("nobody", "x"), ChildPolicy::Terminate)
            .await,
        Err(StoreError::InstanceNotFound(_))
    ));
    assert!(
        store
            .enqueue_message("p", event("late"), None)
            .await
            .is_err()
    );
    let counts = store.count_by_status().await.unwrap();
    assert!(
        counts.contains(&(InstanceStatus::Terminated, 3)),
        "{counts:?}"
    );
}

/// A terminate may cancel its children (they run their compensation) or abandon them.
pub async fn terminate_cancels_or_abandons_children<S: Store>(h: Harness<S>) {
    use crate::ChildPolicy;
    let store = &h.store;
    for (parent, child) in [("p1", "c1"), ("p2", "c2")] {
        running_child(store, parent, None, TurnCommit::default(), &h.clock).await;
        running_child(store, child, Some(parent), TurnCommit::default(), &h.clock).await;
    }
    let cancelled = store
        .terminate_instance(&operator("p1", "wrong customer"), ChildPolicy::Cancel)
        .await
        .unwrap();
    assert_eq!(cancelled, ["p1"]);
    let abandoned = store
        .terminate_instance(&operator("p2", "duplicate"), ChildPolicy::Abandon)
        .await
        .unwrap();
    assert_eq!(abandoned, ["p2"]);
    let turns = store.fetch_turns(10, LEASE, &[]).await.unwrap();
    assert_eq!(turns.len(), 1, "only the cancelled child has a message");
    assert_eq!(turns[0].instance_id, "c1");
    assert!(matches!(
        &turns[0].messages[0].1,
        Message::Cancel { reason, .. } if reason.contains("'p1' was terminated: wrong customer")
    ));
    for child in ["c1", "c2"] {
        let info = store.instance(child).await.unwrap().unwrap();
        assert_eq!(info.status, InstanceStatus::Running);
    }
}

/// A suspended instance fences the holder of its turn, keeps receiving messages and results
/// (its activities run on, timers fall due) but runs no turn; resumed, all of it is its next
/// turn. The history records both actions.
pub async fn suspend_stores_everything_and_runs_nothing_until_resumed<S: Store>(h: Harness<S>) {
    let store = &h.store;
    let now = h.clock.now_ms_for_tests();
    let extra = TurnCommit {
        activities: vec![activity("a", 0)],
        timers: vec![(
            now + 5_000,
            Message::TimerFired {
                execution_id: 1,
                id: 1,
            },
        )],
        ..TurnCommit::default()
    };
    running_child(store, "a", None, extra, &h.clock).await;
    store
        .enqueue_message("a", event("first"), None)
        .await
        .unwrap();
    let held = store
        .fetch_turns(1, LEASE, &[])
        .await
        .unwrap()
        .pop()
        .unwrap();
    let before = store.read_history("a", 1, 0).await.unwrap().len() as u64;

    assert!(
        store
            .suspend_instance(&operator("a", "investigating"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .suspend_instance(&operator("a", "again"))
            .await
            .unwrap()
    );
    let late = store
        .commit_turn(TurnCommit {
            instance_id: "a".into(),
            lock_token: held.lock_token,
            execution_id: 1,
            history_from: before,
            append: vec![Event::TurnStarted { now_ms: 1 }],
            consumed: held.messages.iter().map(|(id, _)| *id).collect(),
            ..TurnCommit::default()
        })
        .await;
    assert!(matches!(late, Err(StoreError::LeaseLost(_))), "{late:?}");
    assert_eq!(
        store.instance("a").await.unwrap().unwrap().status,
        InstanceStatus::Suspended
    );
    store
        .enqueue_message("a", event("second"), None)
        .await
        .unwrap();
    let item = store
        .fetch_activities(1, LEASE)
        .await
        .unwrap()
        .pop()
        .expect("activities run on");
    store
        .complete_activity(
            item.item_id,
            item.lock_token,
            ActivityResult::Completed("ok".into()),
        )
        .await
        .unwrap();
    h.clock.advance_ms(10_000);
    assert!(
        store.fetch_turns(10, LEASE, &[]).await.unwrap().is_empty(),
        "no turn while suspended"
    );

    assert!(
        store
            .resume_instance(&operator("a", "fixed"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .resume_instance(&operator("a", "again"))
            .await
            .unwrap()
    );
    assert_eq!(
        store.instance("a").await.unwrap().unwrap().status,
        InstanceStatus::Running
    );
    let turn = store
        .fetch_turns(1, LEASE, &[])
        .await
        .unwrap()
        .pop()
        .expect("resumed");
    let mut kinds: Vec<&str> = turn
        .messages
        .iter()
        .map(|(_, message)| match message {
            Message::Event { name, .. } => name.as_str(),
            Message::TimerFired { .. } => "timer",
            Message::ActivityCompleted { .. } => "activity",
            _ => "other",
        })
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["activity", "first", "second", "timer"]);
    let history = store.read_history("a", 1, 0).await.unwrap();
    assert_eq!(
        &history[history.len() - 2..],
        [
            Event::Suspended {
                reason: "investigating".into(),
                requested_by: "ops@test".into(),
            },
            Event::Resumed {
                reason: "fixed".into(),
                requested_by: "ops@test".into(),
            },
        ]
    );
    assert_eq!(
        turn.history_len,
        history.len() as u64,
        "the next turn appends after them"
    );
    store
        .release_turn("a", turn.lock_token, Duration::ZERO)
        .await
        .unwrap();

    // A pending instance resumes to pending; finished, quarantined and missing ones refuse.
    store.create_instance(new_instance("b")).await.unwrap();
    assert!(
        store
            .suspend_instance(&operator("b", "hold"))
            .await
            .unwrap()
    );
    assert!(store.resume_instance(&operator("b", "go")).await.unwrap());
    assert_eq!(
        store.instance("b").await.unwrap().unwrap().status,
        InstanceStatus::Pending
    );
    store
        .terminate_instance(&operator("b", "done"), crate::ChildPolicy::Terminate)
        .await
        .unwrap();
    assert!(matches!(
        store.suspend_instance(&operator("b", "x")).await,
        Err(StoreError::InstanceFinished { .. })
    ));
    assert!(matches!(
        store.suspend_instance(&operator("nobody", "x")).await,
        Err(StoreError::InstanceNotFound(_))
    ));
    store
        .enqueue_message("a", event("poison"), None)
        .await
        .unwrap();
    let turn = store
        .fetch_turns(1, LEASE, &["a".to_string()])
        .await
        .unwrap()
        .pop()
        .unwrap();
    store
        .quarantine_turn(
            "a",
            turn.lock_token,
            Failure::new(codes::TURN_POISONED, "x"),
        )
        .await
        .unwrap();
    let refused = store.suspend_instance(&operator("a", "x")).await;
    assert_eq!(refused.unwrap_err().code(), "store.not_allowed");
}

/// A quarantined instance is retried (back in service with fresh delivery counts, its
/// messages kept) or discarded (failed with code `discarded`), each recorded in its history.
pub async fn quarantined_instances_are_retried_or_discarded<S: Store>(h: Harness<S>) {
    let store = &h.store;
    let quarantine = async |id: &str| {
        store.enqueue_message(id, event("bad"), None).await.unwrap();
        let turn = store
            .fetch_turns(10, LEASE, &[])
            .await
            .unwrap()
            .into_iter()
            .find(|turn| turn.instance_id == id)
            .expect("its turn");
        store
            .quarantine_turn(
                id,
                turn.lock_token,
                Failure::new(codes::TURN_POISONED, "boom"),
            )
            .await
            .unwrap();
    };
    running_child(store, "a", None, TurnCommit::default(), &h.clock).await;
    quarantine("a").await;
    assert!(store.fetch_turns(10, LEASE, &[]).await.unwrap().is_empty());
    assert!(matches!(
        store.retry_instance(&operator("missing", "x")).await,
        Err(StoreError::InstanceNotFound(_))
    ));

    assert!(
        store
            .retry_instance(&operator("a", "fixed the bug"))
            .await
            .unwrap()
    );
    let info = store.instance("a").await.unwrap().unwrap();
    assert_eq!((info.status, info.failure), (InstanceStatus::Running, None));
    let turn = store
        .fetch_turns(10, LEASE, &[])
        .await
        .unwrap()
        .pop()
        .expect("in service");
    assert_eq!(turn.delivery, 1, "delivery counts start afresh");
    assert!(matches!(&turn.messages[0].1, Message::Event { name, .. } if name == "bad"));
    assert_eq!(
        store.read_history("a", 1, 0).await.unwrap().last(),
        Some(&Event::Retried {
            reason: "fixed the bug".into(),
            requested_by: "ops@test".into(),
        })
    );
    assert!(!store.retry_instance(&operator("a", "again")).await.unwrap());
    store
        .release_turn("a", turn.lock_token, Duration::ZERO)
        .await
        .unwrap();
    let refused = store
        .discard_instance(&operator("a", "x"))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        "store.not_allowed",
        "a running instance is not discarded"
    );

    quarantine("a").await;
    store
        .discard_instance(&operator("a", "bad input, customer refunded"))
        .await
        .unwrap();
    let info = store.instance("a").await.unwrap().unwrap();
    assert_eq!(info.status, InstanceStatus::Failed);
    assert_eq!(info.failure.unwrap().code, codes::DISCARDED);
    assert!(info.finished_at_ms.is_some());
    assert!(matches!(
        store.read_history("a", 1, 0).await.unwrap().last(),
        Some(Event::Discarded { .. })
    ));
    assert!(store.fetch_turns(10, LEASE, &[]).await.unwrap().is_empty());
    assert!(matches!(
        store.discard_instance(&operator("a", "x")).await,
        Err(StoreError::InstanceFinished { .. })
    ));
}

/// A purge removes a finished instance with everything stored for it and its finished
/// descendants; a bulk purge counts first, then removes batches, earliest finished first,
/// until nothing it selects is left.
pub async fn purges_remove_finished_instances_and_nothing_else<S: Store>(h: Harness<S>) {
    use crate::PurgeFilter;
    let store = &h.store;
    let child = |id: &str, parent: &str, name: &str| NewInstance {
        name: name.into(),
        parent: Some(ParentLink {
            instance_id: parent.into(),
            execution_id: 1,
            id: 1,
        }),
        ..new_instance(id)
    };
    run_to(
        store,
        new_instance("p"),
        InstanceStatus::Completed,
        &h.clock,
    )
    .await;
    run_to(
        store,
        child("c", "p", "orders"),
        InstanceStatus::Completed,
        &h.clock,
    )
    .await;
    run_to(
        store,
        child("r", "p", "orders"),
        InstanceStatus::Running,
        &h.clock,
    )
    .await;
    run_to(
        store,
        child("gc", "c", "orders"),
        InstanceStatus::Failed,
        &h.clock,
    )
    .await;
    run_to(
        store,
        child("rc", "r", "orders"),
        InstanceStatus::Completed,
        &h.clock,
    )
    .await;
    let removed = store.purge_instance("p").await.unwrap();
    assert_eq!(
        removed,
        ["p", "c", "gc"],
        "the running child and its subtree stay"
    );
    for id in ["p", "c", "gc"] {
        assert_eq!(store.instance(id).await.unwrap(), None);
        assert!(store.read_history(id, 1, 0).await.unwrap().is_empty());
        assert!(store.executions(id).await.unwrap().is_empty());
    }
    assert!(store.instance("rc").await.unwrap().is_some());
    assert_eq!(
        store.purge_instance("r").await.unwrap_err().code(),
        "store.not_allowed"
    );
    assert!(matches!(
        store.purge_instance("p").await,
        Err(StoreError::InstanceNotFound(_))
    ));

    let named = |id: &str, name: &str| NewInstance {
        name: name.into(),
        ..new_instance(id)
    };
    let mut finish_order = Vec::new();
    for (index, (id, name, status)) in [
        ("old-1", "orders", InstanceStatus::Completed),
        ("old-2", "mail", InstanceStatus::Failed),
        ("old-3", "orders", InstanceStatus::Cancelled),
        ("old-4", "orders", InstanceStatus::Completed),
    ]
    .into_iter()
    .enumerate()
    {
        h.clock.advance_ms(10 + index as i64);
        run_to(store, named(id, name), status, &h.clock).await;
        finish_order.push(id.to_string());
    }
    h.clock.advance_ms(10);
    let cutoff = h.clock.now_ms_for_tests();
    h.clock.advance_ms(10);
    run_to(
        store,
        named("new-1", "orders"),
        InstanceStatus::Completed,
        &h.clock,
    )
    .await;
    run_to(
        store,
        named("live", "orders"),
        InstanceStatus::Running,
        &h.clock,
    )
    .await;
    let orders = PurgeFilter {
        statuses: Vec::new(),
        finished_before_ms: cutoff,
        name: Some("orders".into()),
    };
    // rc finished before the cutoff too.
    assert_eq!(store.count_purgeable(&orders).await.unwrap(), 4);
    let completed = PurgeFilter {
        statuses: vec![InstanceStatus::Completed, InstanceStatus::Running],
        name: None,
        ..orders.clone()
    };
    assert_eq!(store.count_purgeable(&completed).await.unwrap(), 3);
    assert_eq!(store.purge_batch(&orders, 2).await.unwrap(), 2);
    assert_eq!(
        store.instance("rc").await.unwrap(),
        None,
        "earliest finished first"
    );
    assert_eq!(store.instance("old-1").await.unwrap(), None);
    assert!(store.instance("old-3").await.unwrap().is_some());
    assert_eq!(store.purge_batch(&orders, 2).await.unwrap(), 2);
    assert_eq!(store.purge_batch(&orders, 2).await.unwrap(), 0);
    assert_eq!(store.count_purgeable(&orders).await.unwrap(), 0);
    for id in ["old-2", "new-1", "live", "r"] {
        assert!(store.instance(id).await.unwrap().is_some(), "{id} stays");
    }
    let mut counts = store.count_by_status().await.unwrap();
    counts.sort_by_key(|(status, _)| status.as_str());
    assert_eq!(
        counts,
        [
            (InstanceStatus::Completed, 1),
            (InstanceStatus::Failed, 1),
            (InstanceStatus::Running, 2),
        ]
    );
}

/// A bulk action first answers how many instances match and a sample, changing nothing; then,
/// confirmed, acts on each of them (recorded in each history) and on nothing else.
pub async fn bulk_actions_show_then_act<S: Store>(h: Harness<S>) {
    use crate::bulk::{BulkAction, BulkOutcome, BulkRequest, run_bulk};
    use crate::{ChildPolicy, InstanceFilter};
    let store = &h.store;
    let named = |id: &str, name: &str| NewInstance {
        name: name.into(),
        ..new_instance(id)
    };
    for (id, name, status) in [
        ("b-1", "orders", InstanceStatus::Running),
        ("b-2", "orders", InstanceStatus::Running),
        ("b-3", "mail", InstanceStatus::Running),
        ("b-4", "orders", InstanceStatus::Completed),
        ("b-5", "orders", InstanceStatus::Pending),
    ] {
        h.clock.advance_ms(5);
        run_to(store, named(id, name), status, &h.clock).await;
    }
    let filter = InstanceFilter {
        statuses: vec![InstanceStatus::Running, InstanceStatus::Pending],
        name: Some("orders".into()),
        ..InstanceFilter::default()
    };
    let mut request = BulkRequest::new(
        BulkAction::Terminate(ChildPolicy::Abandon),
        filter.clone(),
        "a bad release",
        "conformance",
    );
    let BulkOutcome::DryRun { matching, sample } = run_bulk(store, &request, |_| {}).await.unwrap()
    else {
        panic!("an unconfirmed request is a dry run");
    };
    assert_eq!(matching, 3);
    let sampled: Vec<&str> = sample.iter().map(|s| s.instance_id.as_str()).collect();
    assert_eq!(sampled, ["b-1", "b-2", "b-5"], "oldest first");
    for id in ["b-1", "b-2"] {
        let status = store.instance(id).await.unwrap().unwrap().status;
        assert_eq!(status, InstanceStatus::Running, "a dry run changes nothing");
    }
    request.confirmed = true;
    let mut progress = Vec::new();
    let done = run_bulk(store, &request, |n| progress.push(n))
        .await
        .unwrap();
    assert_eq!(
        done,
        BulkOutcome::Done {
            acted: 3,
            unchanged: 0
        }
    );
    assert_eq!(progress.last(), Some(&3));
    for id in ["b-1", "b-2", "b-5"] {
        let info = store.instance(id).await.unwrap().unwrap();
        assert_eq!(info.status, InstanceStatus::Terminated, "{id}");
        let history = store.read_history(id, 1, 0).await.unwrap();
        assert!(
            history.iter().any(|event| matches!(
                event,
                Event::Terminated { reason, requested_by }
                    if reason == "a bad release" && requested_by == "conformance"
            )),
            "{id}: {history:?}"
        );
    }
    assert_eq!(
        store.instance("b-3").await.unwrap().unwrap().status,
        InstanceStatus::Running
    );
    assert_eq!(
        store.instance("b-4").await.unwrap().unwrap().status,
        InstanceStatus::Completed
    );
    // Again: nothing matches any more.
    assert_eq!(
        run_bulk(store, &request, |_| {}).await.unwrap(),
        BulkOutcome::Done {
            acted: 0,
            unchanged: 0
        }
    );
    let suspend = BulkRequest {
        confirmed: true,
        ..BulkRequest::new(
            BulkAction::Suspend,
            InstanceFilter::default(),
            "maintenance",
            "conformance",
        )
    };
    // Every instance is tried; only the running one can be suspended.
    assert_eq!(
        run_bulk(store, &suspend, |_| {}).await.unwrap(),
        BulkOutcome::Done {
            acted: 1,
            unchanged: 4
        }
    );
    assert_eq!(
        store.instance("b-3").await.unwrap().unwrap().status,
        InstanceStatus::Suspended
    );
    let no_reason = BulkRequest::new(BulkAction::Resume, filter, " ", "conformance");
    assert_eq!(
        run_bulk(store, &no_reason, |_| {})
            .await
            .unwrap_err()
            .code(),
        "store.contract"
    );
}

/// A finished instance restarts from its input as a new execution under its id (the ended one
/// records the request after its end), or as a new instance; an unfinished one only as a new
/// instance.
pub async fn restarts_begin_a_new_execution_or_instance<S: Store>(h: Harness<S>) {
    use crate::OperatorRequest;
    let store = &h.store;
    let request = |id: &str| OperatorRequest {
        instance_id: id.into(),
        reason: "fixed the bug".into(),
        requested_by: "conformance".into(),
    };
    run_to(store, new_instance("r-1"), InstanceStatus::Failed, &h.clock).await;
    run_to(
        store,
        new_instance("r-2"),
        InstanceStatus::Running,
        &h.clock,
    )
    .await;
    run_to(
        store,
        new_instance("r-3"),
        InstanceStatus::Completed,
        &h.clock,
    )
    .await;
    h.clock.advance_ms(7);
    assert_eq!(
        store
            .restart_instance(&request("r-1"), None, None)
            .await
            .unwrap(),
        ("r-1".to_string(), 2)
    );
    let info = store.instance("r-1").await.unwrap().unwrap();
    assert_eq!(info.status, InstanceStatus::Pending);
    assert_eq!(info.execution_id, 2);
    assert_eq!((info.failure, info.output), (None, None));
    assert_eq!(info.finished_at_ms, None);
    assert_eq!(info.input, "in");
    let ended = store.read_history("r-1", 1, 0).await.unwrap();
    assert_eq!(
        ended.last(),
        Some(&Event::Restarted {
            reason: "fixed the bug".into(),
            requested_by: "conformance".into(),
            as_instance: None,
        })
    );
    let executions = store.executions("r-1").await.unwrap();
    assert_eq!(executions.len(), 2, "{executions:?}");
    assert_eq!(executions[0].history_len, ended.len() as u64);
    assert_eq!(
        executions[0].status,
        crate::ExecutionStatus::Ended(InstanceStatus::Failed)
    );
    assert_eq!(executions[1].execution_id, 2);
    // The new execution's turn: empty history, the start message with the input.
    let turns = store.fetch_turns(10, LEASE, &[]).await.unwrap();
    let turn = turns
        .iter()
        .find(|turn| turn.instance_id == "r-1")
        .expect("the restarted instance has a turn");
    assert_eq!((turn.execution_id, turn.history_len), (2, 0));
    assert!(matches!(
        turn.messages.as_slice(),
        [(_, Message::Start { input, parent: None, .. })] if input == "in"
    ));
    for turn in &turns {
        store
            .release_turn(&turn.instance_id, turn.lock_token, Duration::ZERO)
            .await
            .unwrap();
    }
    // Unfinished: only as another instance.
    assert_eq!(
        store
            .restart_instance(&request("r-2"), None, None)
            .await
            .unwrap_err()
            .code(),
        "store.not_allowed"
    );
    assert_eq!(
        store
            .restart_instance(&request("r-2"), Some("r-2-again"), Some("new input"))
            .await
            .unwrap(),
        ("r-2-again".to_string(), 1)
    );
    let copy = store.instance("r-2-again").await.unwrap().unwrap();
    assert_eq!(
        (copy.status, copy.name.as_str(), copy.input.as_str()),
        (InstanceStatus::Pending, "orders", "new input")
    );
    assert_eq!(
        store.instance("r-2").await.unwrap().unwrap().status,
        InstanceStatus::Running
    );
    let history = store.read_history("r-2", 1, 0).await.unwrap();
    assert!(matches!(
        history.last(),
        Some(Event::Restarted { as_instance: Some(id), .. }) if id == "r-2-again"
    ));
    assert_eq!(
        store
            .restart_instance(&request("r-3"), Some("r-1"), None)
            .await
            .unwrap_err()
            .code(),
        "store.not_allowed",
        "a taken id"
    );
    assert!(matches!(
        store.restart_instance(&request("nope"), None, None).await,
        Err(StoreError::InstanceNotFound(_))
    ));
    let mut counts = store.count_by_status().await.unwrap();
    counts.sort_by_key(|(status, _)| status.as_str());
    assert_eq!(
        counts,
        [
            (InstanceStatus::Completed, 1),
            (InstanceStatus::Pending, 2),
            (InstanceStatus::Running, 1),
        ]
    );
}

/// A rewind starts a new execution with the failed one's history up to its last failure, the
/// failed activity's work again, and a first message for its turn; the failed execution stays,
/// its rewind recorded after its end. Only a failure is rewound.
pub async fn rewind_cuts_at_the_last_failure_into_a_new_execution<S: Store>(h: Harness<S>) {
    use crate::OperatorRequest;
    let store = &h.store;
    let scheduled = |id: u64| Event::ActivityScheduled {
        id,
        name: "charge".into(),
        input: format!("in-{id}"),
        retry: None,
        queue: None,
    };
    assert!(store.create_instance(new_instance("w")).await.unwrap());
    let turn = store.fetch_turns(1, LEASE, &[]).await.unwrap().remove(0);
    let history = vec![
        Event::TurnStarted { now_ms: 1 },
        Event::OrchestrationStarted {
            name: "orders".into(),
            input: "in".into(),
            parent: None,
            guid_seed: 7,
            version: None,
        },
        scheduled(1),
        Event::ActivityCompleted {
            id: 1,
            output: "one".into(),
        },
        scheduled(2),
        Event::ActivityFailed {
            id: 2,
            failure: Failure::new("boom", "two failed"),
        },
        Event::OrchestrationFailed {
            failure: Failure::new("boom", "two failed"),
        },
    ];
    store
        .commit_turn(TurnCommit {
            instance_id: "w".into(),
            lock_token: turn.lock_token,
            execution_id: 1,
            history_from: 0,
            append: history.clone(),
            consumed: turn.messages.iter().map(|(id, _)| *id).collect(),
            status: Some(InstanceStatus::Failed),
            failure: Some(Failure::new("boom", "two failed")),
            ..TurnCommit::default()
        })
        .await
        .unwrap();
    let request = |id: &str| OperatorRequest {
        instance_id: id.into(),
        reason: "two is fixed".into(),
        requested_by: "conformance".into(),
    };
    h.clock.advance_ms(5);
    assert_eq!(
        store.rewind_instance(&request("w")).await.unwrap(),
        (2, vec!["w".to_string()])
    );
    let info = store.instance("w").await.unwrap().unwrap();
    assert_eq!(
        (
            info.status,
            info.execution_id,
            info.failure,
            info.finished_at_ms
        ),
        (InstanceStatus::Running, 2, None, None)
    );
    assert_eq!(store.read_history("w", 2, 0).await.unwrap(), history[..5]);
    let failed = store.read_history("w", 1, 0).await.unwrap();
    assert_eq!(failed[..7], history[..]);
    let rewound = Event::Rewound {
        reason: "two is fixed".into(),
        requested_by: "conformance".into(),
        from_execution: 1,
        carried: vec![2],
    };
    assert_eq!(failed.get(7), Some(&rewound));
    let executions = store.executions("w").await.unwrap();
    assert_eq!(executions.len(), 2);
    assert_eq!(executions[0].history_len, 8);
    assert_eq!(
        executions[0].status,
        crate::ExecutionStatus::Ended(InstanceStatus::Failed)
    );
    let items = store.fetch_activities(10, LEASE).await.unwrap();
    assert_eq!(items.len(), 1, "only the failed activity runs again");
    assert_eq!(
        (
            items[0].activity.execution_id,
            items[0].activity.activity_id,
            items[0].activity.input.as_str(),
            items[0].attempt
        ),
        (2, 2, "in-2", 1)
    );
    let turns = store.fetch_turns(10, LEASE, &[]).await.unwrap();
    assert_eq!(turns.len(), 1);
    assert_eq!((turns[0].execution_id, turns[0].history_len), (2, 5));
    assert!(matches!(
        turns[0].messages.as_slice(),
        [(_, Message::Rewound { from_execution: 1, carried, .. })] if carried == &[2]
    ));
    assert_eq!(
        store
            .rewind_instance(&request("w"))
            .await
            .unwrap_err()
            .code(),
        "store.not_allowed",
        "a running instance"
    );
    run_to(
        store,
        new_instance("done"),
        InstanceStatus::Completed,
        &h.clock,
    )
    .await;
    assert_eq!(
        store
            .rewind_instance(&request("done"))
            .await
            .unwrap_err()
            .code(),
        "store.not_allowed"
    );
    assert!(matches!(
        store.rewind_instance(&request("nope")).await,
        Err(StoreError::InstanceNotFound(_))
    ));
}

/// Declares one `#[tokio::test]` per conformance check. `$factory` is an async expression
/// evaluating to a [`Harness`].
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@each $factory;
            start_is_idempotent,
            peek_lock_and_lost_lease,
            turn_commit_is_atomic,
            timers_become_due,
            activity_lease_renewal,
            lost_activity_lease_rejects_completion,
            attempts_are_counted,
            events_are_never_dropped_silently,
            continue_as_new_starts_a_new_execution,
            child_start_with_taken_id_fails_the_parent_command,
            commits_claim_and_complete_activities,
            turn_lease_renewal,
            turn_deliveries_are_counted,
            quarantine_takes_an_instance_out_of_service,
            activity_quarantine_takes_an_instance_out_of_service,
            activities_of_finished_instances_are_not_handed_out,
            cancelled_activities_lose_their_work_items,
            released_activities_keep_their_attempt,
            what_became_due_since_the_last_fetch_wakes_at_once,
            fetches_hand_out_only_the_names_asked_for,
            listings_filter_order_and_page,
            listings_by_id_prefix_agree_with_the_rows,
            counts_follow_every_change,
            executions_and_history_pages,
            terminate_fences_the_holder_and_takes_the_children,
            terminate_cancels_or_abandons_children,
            suspend_stores_everything_and_runs_nothing_until_resumed,
            quarantined_instances_are_retried_or_discarded,
            purges_remove_finished_instances_and_nothing_else,
            bulk_actions_show_then_act,
            restarts_begin_a_new_execution_or_instance,
            rewind_cuts_at_the_last_failure_into_a_new_execution
        );
    };
    (@each $factory:expr; $($check:ident),*) => {
        $(
            #[tokio::test]
            async fn $check() {
                $crate::conformance::$check($factory).await;
            }
        )*
    };
}

trait NowForTests {
    fn now_ms_for_tests(&self) -> i64;
}

impl NowForTests for ManualClock {
    fn now_ms_for_tests(&self) -> i64 {
        crate::Clock::now_ms(self)
    }
}
