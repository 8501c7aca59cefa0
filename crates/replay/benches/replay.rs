//! Replay cost of whole histories: what a turn costs when the history is not cached in a
//! running future (every turn replays from the start).
//!
//! `cargo bench -p sluice-replay --bench replay`

#[path = "../tests/common/workloads.rs"]
mod workloads;

use criterion::{Criterion, criterion_group, criterion_main};
use sluice_history::Event;
use sluice_replay::{Orchestration, run_turn};
use std::hint::black_box;
use std::sync::Arc;
use workloads::{canned, chain, fan_out, split_terminal};

fn last_turn(history: Vec<Event>) -> (Arc<Vec<Event>>, Vec<Event>) {
    let (prefix, _) = split_terminal(history);
    let last = prefix
        .iter()
        .rposition(|e| matches!(e, Event::TurnStarted { .. }))
        .unwrap();
    let new_events = prefix[last..]
        .iter()
        .filter(|e| !e.is_command())
        .cloned()
        .collect();
    (Arc::new(prefix[..last].to_vec()), new_events)
}

fn replay(c: &mut Criterion) {
    let recorded: Vec<Event> =
        serde_json::from_str(include_str!("../tests/histories/fan_out_5.json")).unwrap();
    let cases: Vec<(&str, Vec<Event>, &dyn Orchestration)> = vec![
        ("recorded_fan_out_5", recorded, &fan_out),
        (
            "canned_fan_out_1000",
            canned(fan_out, "n=1000", 100),
            &fan_out,
        ),
        ("canned_chain_200", canned(chain, "200", 1), &chain),
    ];
    let mut group = c.benchmark_group("replay_to_completion");
    for (name, history, code) in cases {
        let (history, new_events) = last_turn(history);
        group.bench_function(name, |b| {
            b.iter(|| run_turn(code, "r", 1, black_box(history.clone()), new_events.clone()))
        });
    }
    group.finish();
}

criterion_group!(benches, replay);
criterion_main!(benches);
