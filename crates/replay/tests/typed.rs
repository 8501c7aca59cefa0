//! Engine tests of the typed API (typed futures, tuple joins and selects, activity options)
//! and of patches, on histories recorded by running the code (old and new) through turns.

use sluice_history::{Event, Failure, codes};
use sluice_replay::{
    ActivityOptions, Either, Either3, OrchestrationContext, TurnOutcome, TurnResult, run_turn,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

fn started() -> Vec<Event> {
    vec![
        Event::TurnStarted { now_ms: 1_000 },
        Event::OrchestrationStarted {
            name: "test".into(),
            input: String::new(),
            parent: None,
            guid_seed: 9,
            version: None,
        },
    ]
}

fn turn(now_ms: i64, mut events: Vec<Event>) -> Vec<Event> {
    events.insert(0, Event::TurnStarted { now_ms });
    events
}

fn completed(id: u64, output: &str) -> Event {
    Event::ActivityCompleted {
        id,
        output: output.into(),
    }
}

fn raised(name: &str, data: &str) -> Event {
    Event::EventRaised {
        name: name.into(),
        data: data.into(),
    }
}

/// The code under test, boxed so that old and new versions share one type.
type Code = fn(OrchestrationContext, String) -> Running;
type Running = std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, Failure>> + Send>>;

/// Runs `turns` one after another over a growing history, starting from `history`; returns the
/// last turn's result and the whole history. Then checks that replaying the whole history in
/// one turn with no new events reaches the same state (replay agrees with the live run).
fn run(code: Code, history: Vec<Event>, turns: Vec<Vec<Event>>) -> (TurnResult, Vec<Event>) {
    let mut history = history;
    let mut last = None;
    for new_events in turns {
        let result = run_turn(&code, "i1", 1, Arc::new(history.clone()), new_events);
        history.extend(result.appended.iter().cloned());
        last = Some(result);
    }
    let last = last.expect("at least one turn");
    if matches!(last.outcome, TurnOutcome::Waiting) {
        let replayed = run_turn(&code, "i1", 1, Arc::new(history.clone()), Vec::new());
        assert_eq!(replayed.outcome, TurnOutcome::Waiting, "replay disagrees");
        assert!(
            replayed.appended.is_empty(),
            "replay appended {:?}",
            replayed.appended
        );
    }
    (last, history)
}

fn commands(history: &[Event]) -> Vec<String> {
    history
        .iter()
        .filter(|event| event.is_command())
        .map(|event| match event {
            Event::ActivityScheduled { id, name, .. } => format!("{id}:activity:{name}"),
            Event::TimerCreated { id, .. } => format!("{id}:timer"),
            Event::PatchMarker { id, patch } => format!("{id}:patch:{patch}"),
            other => format!("{other:?}"),
        })
        .collect()
}

fn output(result: &TurnResult) -> &str {
    match &result.outcome {
        TurnOutcome::Completed(output) => output,
        other => panic!("expected completion, got {other:?}"),
    }
}

#[test]
fn typed_activities_join_in_schedule_order_and_bad_output_is_a_serde_failure() {
    fn code(ctx: OrchestrationContext, _: String) -> Running {
        Box::pin(async move {
            let futures = (1u32..=3)
                .map(|n| ctx.activity::<u32>("double", &n))
                .collect();
            let results = ctx.join(futures).await;
            Ok(results
                .into_iter()
                .map(|result| match result {
                    Ok(n) => n.to_string(),
                    Err(failure) => failure.code,
                })
                .collect::<Vec<_>>()
                .join(","))
        })
    }
    let (first, _) = run(code, Vec::new(), vec![started()]);
    let inputs: Vec<&str> = first
        .new_commands()
        .map(|event| match event {
            Event::ActivityScheduled { input, .. } => input.as_str(),
            _ => "",
        })
        .collect();
    assert_eq!(inputs, vec!["1", "2", "3"]);
    let (result, _) = run(
        code,
        Vec::new(),
        vec![
            started(),
            // Out of order, and one output that is not a number.
            turn(
                2_000,
                vec![completed(2, "6"), completed(0, "2"), completed(1, "\"x\"")],
            ),
        ],
    );
    assert_eq!(output(&result), "2,serde,6");
}

#[test]
fn join2_and_join3_combine_futures_of_different_types() {
    fn code(ctx: OrchestrationContext, _: String) -> Running {
        Box::pin(async move {
            let (count, name) = ctx
                .join2(
                    ctx.activity::<u64>("count", "all"),
                    ctx.event::<String>("name"),
                )
                .await;
            let ((), flag, words) = ctx
                .join3(
                    ctx.timer(Duration::from_secs(1)),
                    ctx.event::<bool>("flag"),
                    ctx.activity::<Vec<String>>("words", &count.clone()?),
                )
                .await;
            Ok(format!(
                "{}:{}:{}:{}",
                count?,
                name?,
                flag?,
                words?.join("+")
            ))
        })
    }
    let (result, history) = run(
        code,
        Vec::new(),
        vec![
            started(),
            turn(
                2_000,
                vec![raised("name", "\"ada\""), raised("flag", "true")],
            ),
            turn(3_000, vec![completed(0, "2")]),
            turn(4_000, vec![completed(2, "[\"a\",\"b\"]")]),
            turn(5_000, vec![Event::TimerFired { id: 1 }]),
        ],
    );
    assert_eq!(output(&result), "2:ada:true:a+b");
    assert_eq!(
        commands(&history),
        vec!["0:activity:count", "1:timer", "2:activity:words"]
    );
}

/// A timer races an approval event; an activity races both in `select3`.
fn race(ctx: OrchestrationContext, _: String) -> Running {
    Box::pin(async move {
        let first = match ctx
            .select2(
                ctx.timer(Duration::from_secs(60)),
                ctx.event::<u32>("approve"),
            )
            .await
        {
            Either::Left(()) => "timeout".to_string(),
            Either::Right(amount) => format!("approved {}", amount?),
        };
        let second = match ctx
            .select3(
                ctx.activity::<String>("slow", "x"),
                ctx.event::<String>("approve"),
                ctx.timer(Duration::from_secs(5)),
            )
            .await
        {
            Either3::First(out) => format!("slow {}", out?),
            Either3::Second(text) => format!("event {}", text?),
            Either3::Third(()) => "timer".to_string(),
        };
        Ok(format!("{first}; {second}"))
    })
}

#[test]
fn select2_and_select3_pick_what_history_recorded_first() {
    // The event comes first: the timer loses (and still fires later, unnoticed).
    let (result, history) = run(
        race,
        Vec::new(),
        vec![
            started(),
            turn(2_000, vec![raised("approve", "7")]),
            turn(
                3_000,
                vec![Event::TimerFired { id: 2 }, completed(1, "\"done\"")],
            ),
        ],
    );
    assert_eq!(output(&result), "approved 7; timer");
    assert_eq!(
        commands(&history),
        vec!["0:timer", "1:activity:slow", "2:timer"]
    );
    // The timer comes first; then the event wins the second race over the activity.
    let (result, _) = run(
        race,
        Vec::new(),
        vec![
            started(),
            turn(61_000, vec![Event::TimerFired { id: 0 }]),
            turn(
                62_000,
                vec![raised("approve", "\"yes\""), completed(1, "\"done\"")],
            ),
        ],
    );
    assert_eq!(output(&result), "timeout; event yes");
    // Both resolved in one turn: the earlier history position wins, not the argument order.
    let (result, _) = run(
        race,
        Vec::new(),
        vec![
            started(),
            turn(2_000, vec![raised("approve", "1")]),
            turn(
                3_000,
                vec![completed(1, "\"done\""), raised("approve", "\"late\"")],
            ),
        ],
    );
    assert_eq!(output(&result), "approved 1; slow done");
}

#[test]
fn an_event_that_does_not_decode_is_a_coded_failure() {
    let (result, _) = run(
        race,
        Vec::new(),
        vec![started(), turn(2_000, vec![raised("approve", "not json")])],
    );
    match result.outcome {
        TurnOutcome::Failed(failure) => {
            assert_eq!(failure.code, codes::SERDE);
            assert!(
                failure.message.contains("event payload"),
                "{}",
                failure.message
            );
        }
        other => panic!("expected a serde failure, got {other:?}"),
    }
}

#[test]
fn an_input_that_does_not_serialise_resolves_at_once_and_schedules_nothing() {
    fn code(ctx: OrchestrationContext, _: String) -> Running {
        Box::pin(async move {
            // JSON object keys must be strings.
            let bad: HashMap<(u8, u8), u8> = HashMap::from([((1, 2), 3)]);
            let refused = ctx.activity::<u32>("a", &bad);
            let after = ctx.activity::<u32>("b", &5u32);
            match ctx.select2(after, refused).await {
                Either::Right(Err(failure)) => Ok(format!("{}: {}", failure.code, failure.message)),
                other => Err(Failure::new("test", format!("{other:?}"))),
            }
        })
    }
    let (result, history) = run(code, Vec::new(), vec![started()]);
    assert!(
        output(&result).starts_with("serde: activity input:"),
        "{}",
        output(&result)
    );
    assert_eq!(commands(&history), vec!["0:activity:b"]);
}

fn with_total_timeout(ctx: OrchestrationContext, _: String) -> Running {
    Box::pin(async move {
        let options = ActivityOptions::new().total_timeout(Duration::from_secs(30));
        match ctx
            .activity_with::<String>("charge", "card", &options)
            .await
        {
            Ok(out) => Ok(out),
            Err(failure) => Ok(failure.code),
        }
    })
}

#[test]
fn a_total_timeout_is_a_recorded_timer_that_fails_the_activity_when_it_fires_first() {
    let (first, _) = run(with_total_timeout, Vec::new(), vec![started()]);
    let fire_at: Vec<i64> = first
        .new_commands()
        .filter_map(|event| match event {
            Event::TimerCreated { fire_at_ms, .. } => Some(*fire_at_ms),
            _ => None,
        })
        .collect();
    assert_eq!(fire_at, vec![31_000]);
    let (result, history) = run(
        with_total_timeout,
        Vec::new(),
        vec![started(), turn(31_000, vec![Event::TimerFired { id: 1 }])],
    );
    assert_eq!(output(&result), codes::ACTIVITY_TOTAL_TIMED_OUT);
    assert_eq!(commands(&history), vec!["0:activity:charge", "1:timer"]);
    let (result, _) = run(
        with_total_timeout,
        Vec::new(),
        vec![started(), turn(2_000, vec![completed(0, "\"ok\"")])],
    );
    assert_eq!(output(&result), "ok");
    // Activity and timer in one turn: history order decides.
    let (result, _) = run(
        with_total_timeout,
        Vec::new(),
        vec![
            started(),
            turn(
                31_000,
                vec![Event::TimerFired { id: 1 }, completed(0, "\"late\"")],
            ),
        ],
    );
    assert_eq!(output(&result), codes::ACTIVITY_TOTAL_TIMED_OUT);
}

// Patches. The old code charges then ships; the new code adds a fraud check between them.

fn old_checkout(ctx: OrchestrationContext, _: String) -> Running {
    Box::pin(async move {
        ctx.schedule_activity("charge", "").await?;
        ctx.schedule_activity("ship", "").await
    })
}

fn patched_checkout(ctx: OrchestrationContext, _: String) -> Running {
    Box::pin(async move {
        ctx.schedule_activity("charge", "").await?;
        if ctx.is_patched("fraud-check") {
            ctx.schedule_activity("fraud_check", "").await?;
        }
        ctx.schedule_activity("ship", "").await
    })
}

fn deprecated_checkout(ctx: OrchestrationContext, _: String) -> Running {
    Box::pin(async move {
        ctx.schedule_activity("charge", "").await?;
        ctx.deprecate_patch("fraud-check");
        ctx.schedule_activity("fraud_check", "").await?;
        ctx.schedule_activity("ship", "").await
    })
}

#[test]
fn an_instance_the_old_code_took_past_the_patch_point_keeps_the_old_branch() {
    // Recorded by the old code: charged, waiting for ship.
    let (_, old) = run(
        old_checkout,
        Vec::new(),
        vec![started(), turn(2_000, vec![completed(0, "charged")])],
    );
    assert_eq!(commands(&old), vec!["0:activity:charge", "1:activity:ship"]);
    // The new code replays it without nondeterminism and finishes on the old branch.
    let (result, history) = run(
        patched_checkout,
        old,
        vec![turn(3_000, vec![completed(1, "shipped")])],
    );
    assert_eq!(output(&result), "shipped");
    assert_eq!(
        commands(&history),
        vec!["0:activity:charge", "1:activity:ship"]
    );
}

#[test]
fn an_instance_the_old_code_left_before_the_patch_point_takes_the_new_branch() {
    // Recorded by the old code: waiting for charge.
    let (_, old) = run(old_checkout, Vec::new(), vec![started()]);
    let (result, history) = run(
        patched_checkout,
        old,
        vec![
            turn(2_000, vec![completed(0, "charged")]),
            turn(3_000, vec![completed(2, "clean")]),
            turn(4_000, vec![completed(3, "shipped")]),
        ],
    );
    assert_eq!(output(&result), "shipped");
    assert_eq!(
        commands(&history),
        vec![
            "0:activity:charge",
            "1:patch:fraud-check",
            "2:activity:fraud_check",
            "3:activity:ship"
        ]
    );
}

#[test]
fn deprecating_a_patch_replays_histories_with_its_marker_and_records_none() {
    // Recorded by the patched code, waiting for the fraud check.
    let (_, patched) = run(
        patched_checkout,
        Vec::new(),
        vec![started(), turn(2_000, vec![completed(0, "charged")])],
    );
    let (result, history) = run(
        deprecated_checkout,
        patched,
        vec![
            turn(3_000, vec![completed(2, "clean")]),
            turn(4_000, vec![completed(3, "shipped")]),
        ],
    );
    assert_eq!(output(&result), "shipped");
    assert_eq!(commands(&history)[1], "1:patch:fraud-check");
    // A new instance under the deprecated code records no marker.
    let (_, fresh) = run(
        deprecated_checkout,
        Vec::new(),
        vec![started(), turn(2_000, vec![completed(0, "charged")])],
    );
    assert_eq!(
        commands(&fresh),
        vec!["0:activity:charge", "1:activity:fraud_check"]
    );
}

#[test]
fn removing_a_patch_while_histories_hold_its_marker_is_nondeterminism() {
    let (_, patched) = run(
        patched_checkout,
        Vec::new(),
        vec![started(), turn(2_000, vec![completed(0, "charged")])],
    );
    // The patch check is gone: the code issues fraud_check at id 1, where the marker is.
    fn removed(ctx: OrchestrationContext, _: String) -> Running {
        Box::pin(async move {
            ctx.schedule_activity("charge", "").await?;
            ctx.schedule_activity("fraud_check", "").await?;
            ctx.schedule_activity("ship", "").await
        })
    }
    let result = run_turn(
        &(removed as Code),
        "i1",
        1,
        Arc::new(patched),
        turn(3_000, vec![]),
    );
    match result.outcome {
        TurnOutcome::Failed(failure) => {
            assert_eq!(failure.code, codes::NONDETERMINISM_COMMAND_MISMATCH);
            assert!(
                failure.message.contains("patch 'fraud-check'"),
                "{}",
                failure.message
            );
        }
        other => panic!("expected nondeterminism, got {other:?}"),
    }
}

// Cancellation of dropped futures.

fn cancels(history: &[Event]) -> Vec<u64> {
    history
        .iter()
        .filter_map(|event| match event {
            Event::CancelRequested { id } => Some(*id),
            _ => None,
        })
        .collect()
}

fn racing(ctx: OrchestrationContext, _: String) -> Running {
    Box::pin(async move {
        let work = ctx.activity::<String>("slow", "x");
        let child = ctx.sub_orchestration::<String>("child", "y");
        let unawaited = ctx.activity::<String>("forgotten", "z");
        drop(unawaited);
        let (a, b) = match ctx
            .select2(ctx.join2(work, child), ctx.timer(Duration::from_secs(1)))
            .await
        {
            Either::Left(_) => ("done", "done"),
            Either::Right(()) => ("timeout", "timeout"),
        };
        Ok(format!("{a}/{b}"))
    })
}

#[test]
fn a_dropped_future_is_cancelled_once_in_history_and_replay_agrees() {
    // The activity that was never awaited is cancelled in the turn that dropped it.
    let (first, history) = run(racing, Vec::new(), vec![started()]);
    assert_eq!(cancels(&history), vec![2]);
    assert!(matches!(first.outcome, TurnOutcome::Waiting));
    // The timer wins: the join's activity and sub-orchestration are cancelled; waiting for
    // them at the end of a turn cancelled nothing.
    let (result, history) = run(
        racing,
        Vec::new(),
        vec![started(), turn(3_000, vec![Event::TimerFired { id: 3 }])],
    );
    assert_eq!(output(&result), "timeout/timeout");
    assert_eq!(cancels(&history), vec![2, 0, 1]);
    // A loser whose result came first in the same turn needs no cancel.
    let (result, history) = run(
        racing,
        Vec::new(),
        vec![
            started(),
            turn(
                3_000,
                vec![
                    completed(0, "\"a\""),
                    Event::TimerFired { id: 3 },
                    Event::SubOrchestrationCompleted {
                        id: 1,
                        output: "\"b\"".into(),
                    },
                ],
            ),
        ],
    );
    assert_eq!(output(&result), "timeout/timeout");
    assert_eq!(cancels(&history), vec![2, 1]);
}

#[test]
fn a_total_timeout_that_fires_cancels_its_activity() {
    let (_, history) = run(
        with_total_timeout,
        Vec::new(),
        vec![started(), turn(31_000, vec![Event::TimerFired { id: 1 }])],
    );
    assert_eq!(cancels(&history), vec![0]);
}
