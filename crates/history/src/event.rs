use crate::{Failure, RetryPolicy, TimestampMs};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Where a sub-orchestration reports its result: the parent's instance, execution and the
/// command id under which the parent scheduled it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParentLink {
    /// The parent instance.
    pub instance_id: String,
    /// The parent's execution that scheduled the child.
    pub execution_id: u64,
    /// The parent's command id for the child.
    pub id: u64,
}

/// One entry of an execution's history. The serde encoding is the stored format: variants and
/// fields may be added (with defaults) but never renamed or given another meaning.
///
/// Decoding is strict: a variant or a field this build does not know (a row written by a newer
/// build, read after a rollback) is an error, never silently ignored, because the older code
/// cannot tell whether what it would drop matters. Stores report it as corrupt data naming the
/// row; the runtime retries the turn with backoff (a newer process may take it) and quarantines
/// the instance past its delivery limit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    /// A turn began at this time; `now()` in the code returns it until the next turn.
    TurnStarted {
        /// Wall-clock time of the turn, taken by the runtime.
        now_ms: TimestampMs,
    },
    /// The execution began.
    OrchestrationStarted {
        /// Registered orchestration name.
        name: String,
        /// Input, as text (JSON for typed orchestrations).
        input: String,
        /// The parent, for sub-orchestrations.
        parent: Option<ParentLink>,
        /// Seed for `new_guid()`, drawn by the runtime when the execution started.
        guid_seed: u64,
        /// The version of the orchestration's code this execution runs (see
        /// `Registry::orchestration_version`); absent for version 1.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u32>,
    },
    /// The code scheduled an activity.
    ActivityScheduled {
        /// Command id.
        id: u64,
        /// Activity name.
        name: String,
        /// Input.
        input: String,
        /// Retry policy, if any.
        retry: Option<RetryPolicy>,
        /// The task queue it runs on (`None`: the default queue), served only by the
        /// processes that name it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        queue: Option<String>,
    },
    /// An activity returned a value.
    ActivityCompleted {
        /// Command id.
        id: u64,
        /// Output.
        output: String,
    },
    /// An activity failed for good (after retries).
    ActivityFailed {
        /// Command id.
        id: u64,
        /// Why.
        failure: Failure,
    },
    /// The code created a durable timer.
    TimerCreated {
        /// Command id.
        id: u64,
        /// When it fires.
        fire_at_ms: TimestampMs,
    },
    /// A durable timer fired.
    TimerFired {
        /// Command id.
        id: u64,
    },
    /// An external event (or queued message) was delivered to the instance.
    EventRaised {
        /// Event or queue name.
        name: String,
        /// Payload.
        data: String,
    },
    /// The code started a sub-orchestration it awaits.
    SubOrchestrationScheduled {
        /// Command id.
        id: u64,
        /// Orchestration name.
        name: String,
        /// The child's instance id.
        instance_id: String,
        /// Input.
        input: String,
    },
    /// An awaited sub-orchestration completed.
    SubOrchestrationCompleted {
        /// Command id.
        id: u64,
        /// Output.
        output: String,
    },
    /// An awaited sub-orchestration failed or was cancelled.
    SubOrchestrationFailed {
        /// Command id.
        id: u64,
        /// Why.
        failure: Failure,
    },
    /// The code started an orchestration it does not await.
    DetachedStarted {
        /// Command id.
        id: u64,
        /// Orchestration name.
        name: String,
        /// The new instance id.
        instance_id: String,
        /// Input.
        input: String,
    },
    /// The code passed the patch point `patch` and took the patched branch
    /// (`OrchestrationContext::is_patched`): every replay of this history takes it too. It
    /// takes a command id, so it is matched like a command, but nothing runs for it.
    PatchMarker {
        /// Command id.
        id: u64,
        /// The patch's name.
        patch: String,
    },
    /// The code dropped the future of command `id` (an activity or a sub-orchestration) before
    /// it resolved: the select it lost ended, or it was never awaited. The runtime cancels
    /// the work: an activity that has not started does not, a running one gets its
    /// cancellation signal, a sub-orchestration is cancelled. A result that still arrives is
    /// dropped.
    CancelRequested {
        /// Command id.
        id: u64,
    },
    /// Terminal: a cancel request ended the execution.
    Cancelled {
        /// The reason given by the canceller.
        reason: String,
        /// Who or what asked (an operator, a tool, the parent whose cancel reached this).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        requested_by: Option<String>,
    },
    /// Terminal for this execution: the code continued as new with this input.
    ContinuedAsNew {
        /// Input of the next execution.
        input: String,
    },
    /// Terminal: the code returned a value.
    OrchestrationCompleted {
        /// Output.
        output: String,
    },
    /// Terminal: the code failed (or the runtime failed it, e.g. for nondeterminism).
    OrchestrationFailed {
        /// Why.
        failure: Failure,
    },
    /// Terminal: an operator terminated the instance (no compensation ran).
    Terminated {
        /// The reason given.
        reason: String,
        /// Who or what asked.
        requested_by: String,
    },
    /// An operator suspended the instance: it stores what arrives but runs no turn until
    /// resumed. Replay ignores it.
    Suspended {
        /// The reason given.
        reason: String,
        /// Who or what asked.
        requested_by: String,
    },
    /// An operator resumed a suspended instance. Replay ignores it.
    Resumed {
        /// The reason given.
        reason: String,
        /// Who or what asked.
        requested_by: String,
    },
    /// An operator put a quarantined instance back in service: its messages are delivered
    /// again with fresh delivery counts. Replay ignores it.
    Retried {
        /// The reason given.
        reason: String,
        /// Who or what asked.
        requested_by: String,
    },
    /// The runtime took the instance out of service (code `turn_poisoned` or
    /// `activity_poisoned`): its turns or one of its activities kept failing or crashing past
    /// the runtime's delivery limit. The reason says what was delivered how often and the last
    /// error seen. Nothing of it runs until an operator retries or discards it. Replay ignores
    /// it.
    Quarantined {
        /// What kept failing.
        reason: Failure,
    },
    /// Terminal: an operator discarded a quarantined instance, failing it (code `discarded`).
    Discarded {
        /// The reason given.
        reason: String,
        /// Who or what asked.
        requested_by: String,
    },
    /// An operator restarted the finished instance from its input: appended to the execution
    /// that had ended, after its end. Under the same id a new execution follows; otherwise
    /// `as_instance` names the new instance. Replay ignores it.
    Restarted {
        /// The reason given.
        reason: String,
        /// Who or what asked.
        requested_by: String,
        /// The new instance, when the restart took another id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        as_instance: Option<String>,
    },
    /// An operator rewound the failed execution `from_execution`: a new execution took over
    /// its history up to its last failure, and runs again what was open there (the failed
    /// activity or sub-orchestration among them). Appended to the execution that failed,
    /// after its end, and recorded by the first turn of the new one. Replay ignores it.
    Rewound {
        /// The reason given.
        reason: String,
        /// Who or what asked.
        requested_by: String,
        /// The execution that failed.
        from_execution: u64,
        /// The commands open where the history was cut: results that the failed execution's
        /// work still delivers for them are taken by the new execution.
        carried: Vec<u64>,
    },
}

impl Event {
    /// The command id for events that carry one.
    pub fn command_id(&self) -> Option<u64> {
        match self {
            Event::ActivityScheduled { id, .. }
            | Event::ActivityCompleted { id, .. }
            | Event::ActivityFailed { id, .. }
            | Event::TimerCreated { id, .. }
            | Event::TimerFired { id }
            | Event::SubOrchestrationScheduled { id, .. }
            | Event::SubOrchestrationCompleted { id, .. }
            | Event::SubOrchestrationFailed { id, .. }
            | Event::DetachedStarted { id, .. }
            | Event::PatchMarker { id, .. } => Some(*id),
            _ => None,
        }
    }

    /// True for events that record a command issued by the code.
    pub fn is_command(&self) -> bool {
        matches!(
            self,
            Event::ActivityScheduled { .. }
                | Event::TimerCreated { .. }
                | Event::SubOrchestrationScheduled { .. }
                | Event::DetachedStarted { .. }
                | Event::PatchMarker { .. }
        )
    }

    /// True for commands that never get a result (detached starts, patch markers).
    pub fn is_fire_and_forget(&self) -> bool {
        matches!(
            self,
            Event::DetachedStarted { .. } | Event::PatchMarker { .. }
        )
    }

    /// True for events that resolve a command (its result).
    pub fn is_completion(&self) -> bool {
        matches!(
            self,
            Event::ActivityCompleted { .. }
                | Event::ActivityFailed { .. }
                | Event::TimerFired { .. }
                | Event::SubOrchestrationCompleted { .. }
                | Event::SubOrchestrationFailed { .. }
        )
    }

    /// True for events that end an execution.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Event::Cancelled { .. }
                | Event::ContinuedAsNew { .. }
                | Event::OrchestrationCompleted { .. }
                | Event::OrchestrationFailed { .. }
                | Event::Terminated { .. }
                | Event::Discarded { .. }
        )
    }

    /// A short name of the event kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::TurnStarted { .. } => "turn_started",
            Event::OrchestrationStarted { .. } => "orchestration_started",
            Event::ActivityScheduled { .. } => "activity_scheduled",
            Event::ActivityCompleted { .. } => "activity_completed",
            Event::ActivityFailed { .. } => "activity_failed",
            Event::TimerCreated { .. } => "timer_created",
            Event::TimerFired { .. } => "timer_fired",
            Event::EventRaised { .. } => "event_raised",
            Event::SubOrchestrationScheduled { .. } => "sub_orchestration_scheduled",
            Event::SubOrchestrationCompleted { .. } => "sub_orchestration_completed",
            Event::SubOrchestrationFailed { .. } => "sub_orchestration_failed",
            Event::DetachedStarted { .. } => "detached_started",
            Event::PatchMarker { .. } => "patch_marker",
            Event::CancelRequested { .. } => "cancel_requested",
            Event::Cancelled { .. } => "cancelled",
            Event::ContinuedAsNew { .. } => "continued_as_new",
            Event::OrchestrationCompleted { .. } => "orchestration_completed",
            Event::OrchestrationFailed { .. } => "orchestration_failed",
            Event::Terminated { .. } => "terminated",
            Event::Suspended { .. } => "suspended",
            Event::Resumed { .. } => "resumed",
            Event::Retried { .. } => "retried",
            Event::Quarantined { .. } => "quarantined",
            Event::Discarded { .. } => "discarded",
            Event::Restarted { .. } => "restarted",
            Event::Rewound { .. } => "rewound",
        }
    }
}

/// The version of the orchestration's code an execution runs, from its `OrchestrationStarted`
/// among `events` (1 when it is absent or names none).
pub fn execution_version<'a>(events: impl IntoIterator<Item = &'a Event>) -> u32 {
    events
        .into_iter()
        .find_map(|event| match event {
            Event::OrchestrationStarted { version, .. } => Some(version.unwrap_or(1)),
            _ => None,
        })
        .unwrap_or(1)
}

/// Instance ids of awaited sub-orchestrations that history shows scheduled but not finished:
/// the children a cancel must cascade to.
pub fn pending_children(history: &[Event]) -> Vec<String> {
    let finished: HashSet<u64> = history
        .iter()
        .filter_map(|event| match event {
            Event::SubOrchestrationCompleted { id, .. }
            | Event::SubOrchestrationFailed { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    history
        .iter()
        .filter_map(|event| match event {
            Event::SubOrchestrationScheduled {
                id, instance_id, ..
            } if !finished.contains(id) => Some(instance_id.clone()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_encoding_is_stable() {
        let event = Event::ActivityCompleted {
            id: 3,
            output: "ok".into(),
        };
        let text = serde_json::to_string(&event).unwrap();
        assert_eq!(
            text,
            r#"{"type":"activity_completed","id":3,"output":"ok"}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), event);
    }

    /// Rows of a newer build are refused, never half-read: an unknown variant, an unknown
    /// field at the top or nested.
    #[test]
    fn unknown_variants_and_fields_are_errors() {
        for text in [
            r#"{"type":"activity_paused","id":3}"#,
            r#"{"type":"activity_completed","id":3,"output":"ok","task_queue":"q"}"#,
            r#"{"type":"activity_failed","id":3,"failure":{"code":"x","message":"y","retryable":false}}"#,
            r#"{"type":"activity_scheduled","id":0,"name":"a","input":"","retry":{"max_attempts":2,"backoff":{"kind":"fixed","delay_ms":1,"jitter":true}}}"#,
        ] {
            let error = serde_json::from_str::<Event>(text)
                .expect_err(text)
                .to_string();
            assert!(error.contains("unknown"), "{text}: {error}");
        }
        let text = r#"{"type":"event","name":"a","data":"b","priority":1}"#;
        assert!(serde_json::from_str::<crate::Message>(text).is_err());
    }

    #[test]
    fn pending_children_ignores_finished_ones() {
        let history = vec![
            Event::SubOrchestrationScheduled {
                id: 0,
                name: "a".into(),
                instance_id: "c0".into(),
                input: String::new(),
            },
            Event::SubOrchestrationScheduled {
                id: 1,
                name: "a".into(),
                instance_id: "c1".into(),
                input: String::new(),
            },
            Event::SubOrchestrationCompleted {
                id: 0,
                output: String::new(),
            },
        ];
        assert_eq!(pending_children(&history), vec!["c1".to_string()]);
    }
}
