//! Recorded and canned histories replay to the same outcome without new commands: the
//! engine is deterministic against real histories, and the fixtures the benchmarks use are
//! valid.

#[path = "common/workloads.rs"]
mod workloads;

use sluice_history::Event;
use sluice_replay::{TurnOutcome, run_turn};
use std::sync::Arc;
use workloads::{canned, chain, fan_out, split_terminal};

fn replays_to_its_end(history: Vec<Event>, code: impl sluice_replay::Orchestration) {
    let (prefix, terminal) = split_terminal(history);
    // The last turn's new events are everything after its TurnStarted.
    let last_turn = prefix
        .iter()
        .rposition(|e| matches!(e, Event::TurnStarted { .. }))
        .unwrap();
    let new_events = prefix[last_turn..]
        .iter()
        .filter(|e| !e.is_command())
        .cloned()
        .collect();
    let replayed = run_turn(
        &code,
        "r",
        1,
        Arc::new(prefix[..last_turn].to_vec()),
        new_events,
    );
    let Event::OrchestrationCompleted { output } = terminal else {
        panic!("{terminal:?}")
    };
    assert_eq!(replayed.outcome, TurnOutcome::Completed(output));
    assert_eq!(
        replayed.new_commands().count(),
        0,
        "replay issued no new commands"
    );
}

#[test]
fn the_recorded_fan_out_replays_deterministically() {
    let text = include_str!("histories/fan_out_5.json");
    let history: Vec<Event> = serde_json::from_str(text).unwrap();
    assert_eq!(history.len(), 16);
    replays_to_its_end(history, fan_out);
}

#[test]
fn canned_histories_replay_deterministically() {
    replays_to_its_end(canned(fan_out, "n=300", 64), fan_out);
    replays_to_its_end(canned(chain, "50", 1), chain);
}
