//! Orchestration code whose histories the tests and benchmarks replay, and a generator of
//! canned histories for sizes no fixture file should hold.
//!
//! `fan_out` is the code of `sluice bench orchestrations`: `histories/fan_out_5.json` was
//! recorded from a real run of it (`sluice bench orchestrations --db rec.db --count 3`, then
//! `sluice inspect --db rec.db bench-1`), so replaying the fixture against this copy is what a
//! worker does after a restart.

use sluice_history::{Event, Failure};
use sluice_replay::{OrchestrationContext, TurnOutcome, run_turn};
use std::sync::Arc;

/// Fans out `n` activities (5 unless the input says `n=...`) and joins them.
pub(crate) async fn fan_out(ctx: OrchestrationContext, input: String) -> Result<String, Failure> {
    let n: usize = input
        .strip_prefix("n=")
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    let calls = (0..n)
        .map(|i| ctx.schedule_activity("work", format!("{input}-{i}")))
        .collect();
    let mut total = 0;
    for result in ctx.join(calls).await {
        total += result?.len();
    }
    Ok(total.to_string())
}

/// Runs `n` activities one after another.
pub(crate) async fn chain(ctx: OrchestrationContext, input: String) -> Result<String, Failure> {
    let n: usize = input.parse().unwrap_or(10);
    let mut value = String::new();
    for i in 0..n {
        value = ctx
            .schedule_activity("work", format!("{i}:{}", value.len()))
            .await?;
    }
    Ok(value)
}

/// A complete history of `code` on `input`, as a runtime would record it when every activity
/// returns `done <input>` and `per_turn` results arrive per turn.
pub(crate) fn canned<F, Fut>(code: F, input: &str, per_turn: usize) -> Vec<Event>
where
    F: Fn(OrchestrationContext, String) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<String, Failure>> + Send + 'static,
{
    let mut history: Vec<Event> = Vec::new();
    let mut now_ms = 1_700_000_000_000;
    let mut new_events = vec![
        Event::TurnStarted { now_ms },
        Event::OrchestrationStarted {
            name: "canned".into(),
            input: input.into(),
            parent: None,
            guid_seed: 7,
            version: None,
        },
    ];
    loop {
        let result = run_turn(&code, "canned-1", 1, Arc::new(history.clone()), new_events);
        history.extend(result.appended.iter().cloned());
        if result.outcome != TurnOutcome::Waiting {
            return history;
        }
        let resolved: std::collections::HashSet<u64> = history
            .iter()
            .filter(|e| e.is_completion())
            .filter_map(Event::command_id)
            .collect();
        let pending: Vec<Event> = history
            .iter()
            .filter_map(|event| match event {
                Event::ActivityScheduled { id, input, .. } if !resolved.contains(id) => {
                    Some(Event::ActivityCompleted {
                        id: *id,
                        output: format!("done {input}"),
                    })
                }
                _ => None,
            })
            .take(per_turn)
            .collect();
        assert!(
            !pending.is_empty(),
            "the code waits for something the generator cannot give"
        );
        now_ms += 3;
        new_events = std::iter::once(Event::TurnStarted { now_ms })
            .chain(pending)
            .collect();
    }
}

/// The recorded history without its terminal event, and that terminal event.
pub(crate) fn split_terminal(mut history: Vec<Event>) -> (Vec<Event>, Event) {
    let terminal = history.pop().expect("a finished history");
    assert!(terminal.is_terminal(), "{terminal:?}");
    (history, terminal)
}
