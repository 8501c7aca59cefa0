//! Rewinding a failed execution, planned from its history alone (the stores carry the plan
//! out in one transaction each).
//!
//! A rewind never edits history: the failed execution `e` stays as it was (with
//! [`Event::Rewound`] after its end), and a new execution `e + 1` begins with a copy of its
//! history up to the last failure: the last failed activity or sub-orchestration, or, when the
//! code itself failed, the failure. What was open at that point runs again in the new
//! execution: activities get fresh work items (the failed one among them, with fresh
//! attempts), timers fire when they were due, and sub-orchestrations are looked at by the
//! store (a failed child is rewound too, a finished one's result delivered). Results that came
//! after the cut for commands open at it are delivered again, and so are the external events
//! that arrived after it, in their order. Because everything belongs to a new execution,
//! results that the failed execution's work still sends are told apart: only those of
//! commands open at the cut (the `carried` ones) are taken, once.

use crate::NewActivity;
use sluice_history::{Event, Message, TimestampMs};
use std::collections::{BTreeMap, HashSet};

/// What a rewind of one execution does.
#[derive(Clone, Debug, PartialEq)]
pub struct RewindPlan {
    /// Events of the failed execution the new one starts with (a prefix of its history).
    pub kept: usize,
    /// Messages for the new execution's inbox, in order, each visible at its time (the first
    /// is [`Message::Rewound`], which gives the new execution its first turn).
    pub messages: Vec<(TimestampMs, Message)>,
    /// Activity work items to create for the new execution.
    pub activities: Vec<NewActivity>,
    /// Sub-orchestrations open at the cut with no result in the history: (command id, child
    /// instance id). The store looks at each child.
    pub children: Vec<(u64, String)>,
}

/// Why an execution cannot be rewound.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RewindRefused {
    /// The history does not end in a failure of the code or of its work.
    #[error("its history does not end with a failure (it ends with {0})")]
    NotFailed(&'static str),
}

/// Plans the rewind of execution `execution_id` of `instance_id`, whose history is `history`,
/// into execution `execution_id + 1`, at time `now_ms`.
pub fn plan_rewind(
    instance_id: &str,
    execution_id: u64,
    history: &[Event],
    now_ms: TimestampMs,
    reason: &str,
    requested_by: &str,
) -> Result<RewindPlan, RewindRefused> {
    let end = history
        .iter()
        .rposition(Event::is_terminal)
        .ok_or(RewindRefused::NotFailed("no end"))?;
    if !matches!(history[end], Event::OrchestrationFailed { .. }) {
        return Err(RewindRefused::NotFailed(history[end].kind()));
    }
    let cut = history[..end]
        .iter()
        .rposition(|event| {
            matches!(
                event,
                Event::ActivityFailed { .. } | Event::SubOrchestrationFailed { .. }
            )
        })
        .unwrap_or(end);
    let failed_id = history[cut].command_id();
    let kept = &history[..cut];
    // Commands open at the cut, in the order they were issued.
    let mut open: BTreeMap<u64, &Event> = BTreeMap::new();
    let mut order = Vec::new();
    for event in kept {
        if let Some(id) = event.command_id() {
            if event.is_command() && !event.is_fire_and_forget() {
                open.insert(id, event);
                order.push(id);
            } else if event.is_completion() {
                open.remove(&id);
            }
        }
    }
    let carried: Vec<u64> = order
        .iter()
        .copied()
        .filter(|id| open.contains_key(id))
        .collect();
    let next = execution_id + 1;
    let mut messages = vec![(
        now_ms,
        Message::Rewound {
            reason: reason.to_string(),
            requested_by: requested_by.to_string(),
            from_execution: execution_id,
            carried: carried.clone(),
        },
    )];
    // After the cut: results of open commands (but the failure rewound), and external events.
    let mut resolved = HashSet::new();
    for event in &history[cut..end] {
        let message = match event {
            Event::EventRaised { name, data } => Message::Event {
                name: name.clone(),
                data: data.clone(),
            },
            Event::ActivityCompleted { id, output } if open.contains_key(id) => {
                Message::ActivityCompleted {
                    execution_id: next,
                    id: *id,
                    output: output.clone(),
                }
            }
            Event::ActivityFailed { id, failure }
                if open.contains_key(id) && Some(*id) != failed_id =>
            {
                Message::ActivityFailed {
                    execution_id: next,
                    id: *id,
                    failure: failure.clone(),
                }
            }
            Event::TimerFired { id } if open.contains_key(id) => Message::TimerFired {
                execution_id: next,
                id: *id,
            },
            Event::SubOrchestrationCompleted { id, output } if open.contains_key(id) => {
                Message::SubOrchestrationCompleted {
                    execution_id: next,
                    id: *id,
                    output: output.clone(),
                }
            }
            Event::SubOrchestrationFailed { id, failure }
                if open.contains_key(id) && Some(*id) != failed_id =>
            {
                Message::SubOrchestrationFailed {
                    execution_id: next,
                    id: *id,
                    failure: failure.clone(),
                }
            }
            _ => continue,
        };
        if let Some(id) = event.command_id() {
            resolved.insert(id);
        }
        messages.push((now_ms, message));
    }
    let mut activities = Vec::new();
    let mut children = Vec::new();
    for id in &carried {
        if resolved.contains(id) {
            continue;
        }
        match open[id] {
            Event::ActivityScheduled {
                name,
                input,
                retry,
                queue,
                ..
            } => activities.push(NewActivity {
                instance_id: instance_id.to_string(),
                execution_id: next,
                activity_id: *id,
                name: name.clone(),
                input: input.clone(),
                retry: retry.clone(),
                task_queue: queue.clone(),
            }),
            Event::TimerCreated { fire_at_ms, .. } => messages.push((
                (*fire_at_ms).max(now_ms),
                Message::TimerFired {
                    execution_id: next,
                    id: *id,
                },
            )),
            Event::SubOrchestrationScheduled {
                instance_id: child, ..
            } => children.push((*id, child.clone())),
            _ => {}
        }
    }
    Ok(RewindPlan {
        kept: cut,
        messages,
        activities,
        children,
    })
}

/// The result a rewound parent gets for a sub-orchestration that ended without success and
/// does not run again (cancelled, terminated, or failed for good).
pub fn failed_child(
    execution_id: u64,
    id: u64,
    failure: Option<sluice_history::Failure>,
) -> Message {
    Message::SubOrchestrationFailed {
        execution_id,
        id,
        failure: failure.unwrap_or_else(|| {
            sluice_history::Failure::new(sluice_history::codes::ORCHESTRATION_FAILED, "it failed")
        }),
    }
}

/// The result a rewound parent gets for a sub-orchestration that no longer exists (purged).
pub fn missing_child(execution_id: u64, id: u64, child: &str) -> Message {
    Message::SubOrchestrationFailed {
        execution_id,
        id,
        failure: sluice_history::Failure::new(
            sluice_history::codes::ORCHESTRATION_FAILED,
            format!("sub-orchestration '{child}' no longer exists (purged?)"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_history::Failure;

    fn scheduled(id: u64, name: &str) -> Event {
        Event::ActivityScheduled {
            id,
            name: name.into(),
            input: format!("in-{id}"),
            retry: None,
            queue: None,
        }
    }

    fn failed() -> Event {
        Event::OrchestrationFailed {
            failure: Failure::new("activity_failed", "b failed"),
        }
    }

    #[test]
    fn the_failed_activity_runs_again_and_the_rest_is_kept() {
        let history = vec![
            Event::TurnStarted { now_ms: 1 },
            scheduled(1, "a"),
            scheduled(2, "b"),
            Event::TimerCreated {
                id: 3,
                fire_at_ms: 500,
            },
            Event::TurnStarted { now_ms: 2 },
            Event::ActivityCompleted {
                id: 1,
                output: "A".into(),
            },
            Event::ActivityFailed {
                id: 2,
                failure: Failure::new("boom", "b failed"),
            },
            Event::EventRaised {
                name: "go".into(),
                data: "1".into(),
            },
            failed(),
        ];
        let plan = plan_rewind("i", 1, &history, 100, "fixed", "ops").unwrap();
        assert_eq!(plan.kept, 6, "up to the failure of b");
        let names: Vec<&str> = plan.activities.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["b"], "a's result is kept; b runs again");
        assert_eq!(plan.activities[0].execution_id, 2);
        assert_eq!(
            plan.messages,
            [
                (
                    100,
                    Message::Rewound {
                        reason: "fixed".into(),
                        requested_by: "ops".into(),
                        from_execution: 1,
                        carried: vec![2, 3],
                    }
                ),
                (
                    100,
                    Message::Event {
                        name: "go".into(),
                        data: "1".into()
                    }
                ),
                (
                    500,
                    Message::TimerFired {
                        execution_id: 2,
                        id: 3
                    }
                ),
            ]
        );
    }

    #[test]
    fn a_failure_of_the_code_itself_reruns_its_turn() {
        let history = vec![
            Event::TurnStarted { now_ms: 1 },
            scheduled(1, "a"),
            Event::TurnStarted { now_ms: 2 },
            Event::ActivityCompleted {
                id: 1,
                output: "A".into(),
            },
            failed(),
        ];
        let plan = plan_rewind("i", 3, &history, 100, "fixed", "ops").unwrap();
        assert_eq!(plan.kept, 4);
        assert!(plan.activities.is_empty());
        assert_eq!(plan.messages.len(), 1, "only the rewind message: a turn");
    }

    #[test]
    fn only_failures_are_rewound() {
        let completed = vec![
            Event::TurnStarted { now_ms: 1 },
            Event::OrchestrationCompleted { output: "x".into() },
        ];
        assert_eq!(
            plan_rewind("i", 1, &completed, 0, "", ""),
            Err(RewindRefused::NotFailed("orchestration_completed"))
        );
        assert!(plan_rewind("i", 1, &[], 0, "", "").is_err());
    }
}
