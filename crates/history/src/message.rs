use crate::{Event, Failure, ParentLink};
use serde::{Deserialize, Serialize};

/// A message in an instance's inbox. A turn turns messages into history events.
///
/// Results carry the `execution_id` they belong to, so that a result arriving after a
/// continue-as-new is dropped instead of being matched against the new execution's commands.
///
/// Decoding is strict, as for [`Event`]: unknown variants and fields are errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    /// Start (or, after continue-as-new, restart) the instance.
    Start {
        /// Orchestration name.
        name: String,
        /// Input.
        input: String,
        /// Parent, for sub-orchestrations.
        parent: Option<ParentLink>,
        /// Events carried over from the previous execution (unconsumed external events).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        carried_events: Vec<(String, String)>,
        /// The version of the orchestration's code to run; `None`: the newest registered in
        /// the process that takes the start.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u32>,
    },
    /// An activity returned.
    ActivityCompleted {
        /// Execution the activity belongs to.
        execution_id: u64,
        /// Command id.
        id: u64,
        /// Output.
        output: String,
    },
    /// An activity failed for good.
    ActivityFailed {
        /// Execution the activity belongs to.
        execution_id: u64,
        /// Command id.
        id: u64,
        /// Why.
        failure: Failure,
    },
    /// A durable timer is due.
    TimerFired {
        /// Execution the timer belongs to.
        execution_id: u64,
        /// Command id.
        id: u64,
    },
    /// An external event or queued message.
    Event {
        /// Name.
        name: String,
        /// Payload.
        data: String,
    },
    /// A sub-orchestration finished.
    SubOrchestrationCompleted {
        /// Parent execution.
        execution_id: u64,
        /// Command id in the parent.
        id: u64,
        /// Output.
        output: String,
    },
    /// A sub-orchestration failed or was cancelled.
    SubOrchestrationFailed {
        /// Parent execution.
        execution_id: u64,
        /// Command id in the parent.
        id: u64,
        /// Why.
        failure: Failure,
    },
    /// Cancel the instance (and its awaited sub-orchestrations).
    Cancel {
        /// Why.
        reason: String,
        /// Who or what asks (recorded with the cancellation).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        requested_by: Option<String>,
    },
    /// The first message of an execution an operator's rewind began (it becomes
    /// [`Event::Rewound`] in its first turn).
    Rewound {
        /// The reason given.
        reason: String,
        /// Who or what asked.
        requested_by: String,
        /// The execution that failed.
        from_execution: u64,
        /// The commands open where the history was cut.
        carried: Vec<u64>,
    },
}

impl Message {
    /// The execution a result message belongs to, if it is a result.
    pub fn execution_id(&self) -> Option<u64> {
        match self {
            Message::ActivityCompleted { execution_id, .. }
            | Message::ActivityFailed { execution_id, .. }
            | Message::TimerFired { execution_id, .. }
            | Message::SubOrchestrationCompleted { execution_id, .. }
            | Message::SubOrchestrationFailed { execution_id, .. } => Some(*execution_id),
            _ => None,
        }
    }

    /// The history event a result or external-event message becomes. `Start` and `Cancel` are
    /// handled by the runtime and return `None`.
    pub fn to_event(&self) -> Option<Event> {
        Some(match self {
            Message::ActivityCompleted { id, output, .. } => Event::ActivityCompleted {
                id: *id,
                output: output.clone(),
            },
            Message::ActivityFailed { id, failure, .. } => Event::ActivityFailed {
                id: *id,
                failure: failure.clone(),
            },
            Message::TimerFired { id, .. } => Event::TimerFired { id: *id },
            Message::Event { name, data } => Event::EventRaised {
                name: name.clone(),
                data: data.clone(),
            },
            Message::SubOrchestrationCompleted { id, output, .. } => {
                Event::SubOrchestrationCompleted {
                    id: *id,
                    output: output.clone(),
                }
            }
            Message::SubOrchestrationFailed { id, failure, .. } => Event::SubOrchestrationFailed {
                id: *id,
                failure: failure.clone(),
            },
            Message::Rewound {
                reason,
                requested_by,
                from_execution,
                carried,
            } => Event::Rewound {
                reason: reason.clone(),
                requested_by: requested_by.clone(),
                from_execution: *from_execution,
                carried: carried.clone(),
            },
            Message::Start { .. } | Message::Cancel { .. } => return None,
        })
    }
}
