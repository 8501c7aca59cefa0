//! Replay engine tests: history in, appended events and outcome out. No I/O, no runtime.

use sluice_history::{Event, Failure, codes};
use sluice_replay::{DurableOutput, OrchestrationContext, TurnOutcome, TurnResult, run_turn};
use std::sync::Arc;
use std::time::Duration;

fn started(input: &str) -> Vec<Event> {
    vec![
        Event::TurnStarted { now_ms: 1_000 },
        Event::OrchestrationStarted {
            name: "test".into(),
            input: input.into(),
            parent: None,
            guid_seed: 9,
            version: None,
        },
    ]
}

/// Runs turns one after another, feeding each turn's new events; returns the last result and
/// the full history.
fn run_turns<F, Fut>(code: F, turns: Vec<Vec<Event>>) -> (TurnResult, Vec<Event>)
where
    F: Fn(OrchestrationContext, String) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<String, Failure>> + Send + 'static,
{
    let mut history = Vec::new();
    let mut last = None;
    for new_events in turns {
        let result = run_turn(&code, "i1", 1, Arc::new(history.clone()), new_events);
        history.extend(result.appended.iter().cloned());
        last = Some(result);
    }
    (last.expect("at least one turn"), history)
}

async fn two_activities(ctx: OrchestrationContext, input: String) -> Result<String, Failure> {
    let first = ctx.schedule_activity("greet", input).await?;
    let second = ctx.schedule_activity("greet", first).await?;
    Ok(second)
}

#[test]
fn chained_activities_complete_in_three_turns() {
    let (result, history) = run_turns(
        two_activities,
        vec![
            started("x"),
            vec![
                Event::TurnStarted { now_ms: 2_000 },
                Event::ActivityCompleted {
                    id: 0,
                    output: "hello x".into(),
                },
            ],
            vec![
                Event::TurnStarted { now_ms: 3_000 },
                Event::ActivityCompleted {
                    id: 1,
                    output: "hello hello x".into(),
                },
            ],
        ],
    );
    assert_eq!(
        result.outcome,
        TurnOutcome::Completed("hello hello x".into())
    );
    let kinds: Vec<&str> = history.iter().map(Event::kind).collect();
    assert_eq!(
        kinds,
        vec![
            "turn_started",
            "orchestration_started",
            "activity_scheduled",
            "turn_started",
            "activity_completed",
            "activity_scheduled",
            "turn_started",
            "activity_completed",
            "orchestration_completed"
        ]
    );
}

#[test]
fn a_select_over_no_futures_fails_the_orchestration_with_a_code() {
    async fn empty(ctx: OrchestrationContext, _input: String) -> Result<String, Failure> {
        let none: Vec<sluice_replay::ActivityFuture> = Vec::new();
        let (index, _) = ctx.select(none).await;
        Ok(index.to_string())
    }
    let (result, _) = run_turns(empty, vec![started("")]);
    match result.outcome {
        TurnOutcome::Failed(failure) => {
            assert_eq!(failure.code, codes::ORCHESTRATION_FAILED);
            assert!(failure.message.contains("select over no futures"));
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn select_picks_the_result_history_recorded_first() {
    async fn race(ctx: OrchestrationContext, _input: String) -> Result<String, Failure> {
        let a = ctx.schedule_activity("a", "").into_any();
        let b = ctx.schedule_activity("b", "").into_any();
        // Wait for something else first, so that both results are visible at select time.
        ctx.create_timer(Duration::from_secs(1)).await;
        let (index, value) = ctx.select(vec![a, b]).await;
        match value {
            DurableOutput::Activity(Ok(output)) => Ok(format!("{index}:{output}")),
            other => Err(Failure::new("test", format!("{other:?}"))),
        }
    }
    let (result, _) = run_turns(
        race,
        vec![
            started(""),
            vec![
                Event::TurnStarted { now_ms: 2_000 },
                Event::ActivityCompleted {
                    id: 1,
                    output: "B".into(),
                },
                Event::ActivityCompleted {
                    id: 0,
                    output: "A".into(),
                },
                Event::TimerFired { id: 2 },
            ],
        ],
    );
    assert_eq!(result.outcome, TurnOutcome::Completed("1:B".into()));
}

#[test]
fn timer_fire_time_comes_from_history_time() {
    async fn sleeper(ctx: OrchestrationContext, _input: String) -> Result<String, Failure> {
        ctx.create_timer(Duration::from_millis(250)).await;
        Ok(ctx.now_ms().to_string())
    }
    let (result, history) = run_turns(
        sleeper,
        vec![
            started(""),
            vec![
                Event::TurnStarted { now_ms: 1_300 },
                Event::TimerFired { id: 0 },
            ],
        ],
    );
    assert!(history.contains(&Event::TimerCreated {
        id: 0,
        fire_at_ms: 1_250
    }));
    assert_eq!(result.outcome, TurnOutcome::Completed("1300".into()));
}

#[test]
fn an_event_raised_before_the_wait_is_delivered() {
    async fn waits(ctx: OrchestrationContext, _input: String) -> Result<String, Failure> {
        ctx.create_timer(Duration::from_secs(1)).await;
        let first = ctx.wait_for_event("go").await;
        let second = ctx.wait_for_event("go").await;
        Ok(format!("{first},{second}"))
    }
    let (result, _) = run_turns(
        waits,
        vec![
            started(""),
            vec![
                Event::TurnStarted { now_ms: 1_100 },
                Event::EventRaised {
                    name: "go".into(),
                    data: "1".into(),
                },
            ],
            vec![
                Event::TurnStarted { now_ms: 1_200 },
                Event::EventRaised {
                    name: "go".into(),
                    data: "2".into(),
                },
            ],
            vec![
                Event::TurnStarted { now_ms: 2_000 },
                Event::TimerFired { id: 0 },
            ],
        ],
    );
    assert_eq!(result.outcome, TurnOutcome::Completed("1,2".into()));
}

#[test]
fn a_losing_event_wait_gives_its_event_back() {
    async fn waits(ctx: OrchestrationContext, _input: String) -> Result<String, Failure> {
        let timer = ctx.create_timer(Duration::from_secs(1)).into_any();
        // Both are resolved when the select runs; the timer fired first in history.
        ctx.create_timer(Duration::from_secs(5)).await;
        let event = ctx.wait_for_event("go").into_any();
        let (index, _) = ctx.select(vec![timer, event]).await;
        let again = ctx.wait_for_event("go").await;
        Ok(format!("{index}:{again}"))
    }
    let (result, _) = run_turns(
        waits,
        vec![
            started(""),
            vec![
                Event::TurnStarted { now_ms: 2_000 },
                Event::TimerFired { id: 0 },
                Event::EventRaised {
                    name: "go".into(),
                    data: "kept".into(),
                },
                Event::TimerFired { id: 1 },
            ],
        ],
    );
    assert_eq!(result.outcome, TurnOutcome::Completed("0:kept".into()));
}

#[test]
fn a_renamed_activity_is_a_coded_nondeterminism_failure() {
    let history = {
        let (_, history) = run_turns(two_activities, vec![started("x")]);
        history
    };
    async fn renamed(ctx: OrchestrationContext, input: String) -> Result<String, Failure> {
        ctx.schedule_activity("welcome", input).await
    }
    let result = run_turn(
        &renamed,
        "i1",
        1,
        Arc::new(history),
        vec![
            Event::TurnStarted { now_ms: 2_000 },
            Event::ActivityCompleted {
                id: 0,
                output: "y".into(),
            },
        ],
    );
    let TurnOutcome::Failed(failure) = result.outcome else {
        panic!("{:?}", result.outcome)
    };
    assert_eq!(failure.code, codes::NONDETERMINISM_COMMAND_MISMATCH);
    assert!(
        failure.message.contains("'greet'") && failure.message.contains("'welcome'"),
        "{failure}"
    );
    assert!(matches!(
        result.appended.last(),
        Some(Event::OrchestrationFailed { .. })
    ));
}

#[test]
fn an_extra_command_during_replay_is_unexpected() {
    let (_, history) = run_turns(two_activities, vec![started("x")]);
    async fn extra(ctx: OrchestrationContext, input: String) -> Result<String, Failure> {
        let (a, b) = (
            ctx.schedule_activity("greet", input.clone()),
            ctx.schedule_activity("audit", input),
        );
        let _ = b.await;
        a.await
    }
    let result = run_turn(
        &extra,
        "i1",
        1,
        Arc::new(history),
        vec![Event::TurnStarted { now_ms: 2_000 }],
    );
    let TurnOutcome::Failed(failure) = result.outcome else {
        panic!("{:?}", result.outcome)
    };
    assert_eq!(failure.code, codes::NONDETERMINISM_UNEXPECTED_COMMAND);
}

#[test]
fn a_dropped_command_is_missing() {
    let (_, history) = run_turns(two_activities, vec![started("x")]);
    async fn waits_only(ctx: OrchestrationContext, _input: String) -> Result<String, Failure> {
        Ok(ctx.wait_for_event("never").await)
    }
    let result = run_turn(
        &waits_only,
        "i1",
        1,
        Arc::new(history),
        vec![Event::TurnStarted { now_ms: 2_000 }],
    );
    let TurnOutcome::Failed(failure) = result.outcome else {
        panic!("{:?}", result.outcome)
    };
    assert_eq!(failure.code, codes::NONDETERMINISM_MISSING_COMMAND);
}

#[test]
fn a_panic_fails_the_instance_with_a_code() {
    async fn panics(_ctx: OrchestrationContext, _input: String) -> Result<String, Failure> {
        panic!("boom")
    }
    let result = run_turn(&panics, "i1", 1, Arc::new(Vec::new()), started(""));
    assert_eq!(
        result.outcome,
        TurnOutcome::Failed(Failure::new(codes::ORCHESTRATION_PANICKED, "boom"))
    );
}

#[test]
fn guids_and_time_are_the_same_on_replay() {
    async fn ids(ctx: OrchestrationContext, _input: String) -> Result<String, Failure> {
        let guid = ctx.new_guid();
        let now = ctx.now_ms();
        ctx.create_timer(Duration::from_millis(1)).await;
        Ok(format!("{guid}@{now}"))
    }
    let (first, history) = run_turns(ids, vec![started("")]);
    assert_eq!(first.outcome, TurnOutcome::Waiting);
    let second = run_turn(
        &ids,
        "i1",
        1,
        Arc::new(history.clone()),
        vec![
            Event::TurnStarted { now_ms: 5_000 },
            Event::TimerFired { id: 0 },
        ],
    );
    let third = run_turn(
        &ids,
        "i1",
        1,
        Arc::new(history),
        vec![
            Event::TurnStarted { now_ms: 9_000 },
            Event::TimerFired { id: 0 },
        ],
    );
    assert_eq!(second.outcome, third.outcome);
    let TurnOutcome::Completed(text) = second.outcome else {
        panic!()
    };
    assert!(text.ends_with("@1000"), "{text}");
}

#[test]
fn continue_as_new_carries_unconsumed_events() {
    async fn generation(ctx: OrchestrationContext, input: String) -> Result<String, Failure> {
        let n: u32 = input.parse().unwrap();
        ctx.create_timer(Duration::from_millis(1)).await;
        ctx.continue_as_new((n + 1).to_string()).await
    }
    let (result, _) = run_turns(
        generation,
        vec![
            started("1"),
            vec![
                Event::TurnStarted { now_ms: 1_100 },
                Event::EventRaised {
                    name: "later".into(),
                    data: "d".into(),
                },
                Event::TimerFired { id: 0 },
            ],
        ],
    );
    assert_eq!(
        result.outcome,
        TurnOutcome::ContinuedAsNew {
            input: "2".into(),
            carried_events: vec![("later".into(), "d".into())]
        }
    );
}
