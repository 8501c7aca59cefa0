use serde::{Deserialize, Serialize};
use sluice_history::{
    Event, Failure, InstanceStatus, Message, ParentLink, RetryPolicy, TimestampMs,
};

/// A new instance and its start message.
#[derive(Clone, Debug, PartialEq)]
pub struct NewInstance {
    /// Its id.
    pub instance_id: String,
    /// Orchestration name.
    pub name: String,
    /// Input.
    pub input: String,
    /// The awaiting parent, for sub-orchestrations.
    pub parent: Option<ParentLink>,
    /// The version of the orchestration's code to run; `None`: the newest registered in the
    /// process that takes the start.
    pub version: Option<u32>,
}

impl NewInstance {
    /// The message that starts it.
    pub fn start_message(&self) -> Message {
        Message::Start {
            name: self.name.clone(),
            input: self.input.clone(),
            parent: self.parent.clone(),
            carried_events: Vec::new(),
            version: self.version,
        }
    }
}

/// An instance locked for one turn.
#[derive(Clone, Debug, PartialEq)]
pub struct LockedTurn {
    /// The instance.
    pub instance_id: String,
    /// Orchestration name.
    pub name: String,
    /// Current status.
    pub status: InstanceStatus,
    /// Current execution.
    pub execution_id: u64,
    /// Events in the current execution's history.
    pub history_len: u64,
    /// The lock token to commit with.
    pub lock_token: u64,
    /// Visible messages, oldest first, with their ids (only the decodable ones when
    /// `unreadable` is set).
    pub messages: Vec<(u64, Message)>,
    /// How many times these messages have been handed out without being consumed, this fetch
    /// included: the highest count among them, 1 for a turn without messages. Every fetch
    /// counts, and the count survives restarts, so errors, lost leases and process crashes all
    /// add up; [`Store::release_turn`](crate::Store::release_turn) takes a fetch's count back.
    pub delivery: u32,
    /// Set when a stored row of this instance (a message, its status) cannot be decoded, for
    /// example one written by a newer build: what and why, naming the row. Such a turn must not
    /// run; it is locked like any other so that its caller can back off or quarantine it.
    pub unreadable: Option<String>,
}

/// What a turn writes, atomically.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TurnCommit {
    /// The instance.
    pub instance_id: String,
    /// The lock token from [`LockedTurn`].
    pub lock_token: u64,
    /// The execution the history belongs to.
    pub execution_id: u64,
    /// Position of the first appended event; must equal the stored history length.
    pub history_from: u64,
    /// Events to append.
    pub append: Vec<Event>,
    /// Ids of the messages this turn consumed (deleted).
    pub consumed: Vec<u64>,
    /// New status; `None` leaves it as it is.
    pub status: Option<InstanceStatus>,
    /// Output of a completed instance.
    pub output: Option<String>,
    /// Failure of a failed or cancelled instance.
    pub failure: Option<Failure>,
    /// New custom status; `None` leaves it as it is.
    pub custom_status: Option<String>,
    /// Activity work items to create.
    pub activities: Vec<NewActivity>,
    /// Messages to this instance that become visible at a time (fired timers).
    pub timers: Vec<(TimestampMs, Message)>,
    /// Messages to other instances. Messages to instances that do not exist are dropped, except
    /// starts (see [`Outbound`]).
    pub outbound: Vec<Outbound>,
    /// Start the next execution with this start message (continue-as-new): the execution id
    /// goes up by one and its history starts empty.
    pub continue_as_new: Option<Message>,
    /// Activity work items whose results this turn records (in `append`): deleted with the
    /// commit, if `(item_id, lock_token)` still holds the item's lease; an item whose lease was
    /// lost is left to its new holder.
    pub completed_activities: Vec<(u64, u64)>,
    /// Activities of this execution (by command id) the code cancelled: their work items are
    /// deleted with the commit, held or not; a holder's next renewal or completion then finds
    /// its lease lost and records nothing.
    pub cancelled_activities: Vec<u64>,
    /// The execution ends with activities still unresolved (a cancel, a failure, a select that
    /// stopped waiting): their work items that nobody holds are deleted with the commit.
    pub outstanding_activities: bool,
    /// Lease up to this many of the new `activities` to the caller, for this long, and return
    /// them from the commit, so the caller runs them without fetching.
    pub claim_activities: Option<(usize, std::time::Duration)>,
}

/// A message for another instance.
#[derive(Clone, Debug, PartialEq)]
pub enum Outbound {
    /// Create the instance and send its start message. If the id exists, nothing is created; if
    /// the new instance has a parent link, the parent receives a `SubOrchestrationFailed` with
    /// code `instance_exists` instead.
    Start(NewInstance),
    /// Deliver a message to an existing, unfinished instance; dropped otherwise.
    Message {
        /// Target instance.
        instance_id: String,
        /// The message.
        message: Message,
    },
}

/// An activity to schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewActivity {
    /// Owning instance.
    pub instance_id: String,
    /// Its execution.
    pub execution_id: u64,
    /// Command id.
    pub activity_id: u64,
    /// Activity name.
    pub name: String,
    /// Input.
    pub input: String,
    /// Retry policy.
    pub retry: Option<RetryPolicy>,
    /// Task queue (`None`: the default one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_queue: Option<String>,
}

/// A locked activity work item.
#[derive(Clone, Debug, PartialEq)]
pub struct ActivityWorkItem {
    /// Work item id.
    pub item_id: u64,
    /// The lock token to complete with.
    pub lock_token: u64,
    /// Which attempt this is (1 for the first delivery; crashes count too).
    pub attempt: u32,
    /// The activity (with `retry: None` when `unreadable` is set).
    pub activity: NewActivity,
    /// Set when a stored field of the work item (its retry policy) cannot be decoded, naming
    /// the row. Such an item must not run: its holder retries it later or fails it.
    pub unreadable: Option<String>,
    /// The orchestration of the instance the item belongs to, as the fetch read it; `None`
    /// for items claimed by a turn commit (the committer runs that orchestration). A runtime
    /// that does not host it sends the result through the store instead of keeping it for the
    /// instance's next turn.
    pub orchestration: Option<String>,
}

/// How an activity ended.
#[derive(Clone, Debug, PartialEq)]
pub enum ActivityResult {
    /// It returned a value.
    Completed(String),
    /// It failed for good.
    Failed(Failure),
}

/// An instance's row as clients see it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InstanceInfo {
    /// Its id.
    pub instance_id: String,
    /// Orchestration name.
    pub name: String,
    /// Status.
    pub status: InstanceStatus,
    /// Current execution.
    pub execution_id: u64,
    /// Input of the current execution.
    pub input: String,
    /// Output, when completed.
    pub output: Option<String>,
    /// Failure, when failed or cancelled.
    pub failure: Option<Failure>,
    /// Custom status set by the code.
    pub custom_status: Option<String>,
    /// The parent instance, for sub-orchestrations.
    pub parent_id: Option<String>,
    /// Creation time.
    pub created_at_ms: TimestampMs,
    /// When the current execution started running (`None` while pending).
    pub started_at_ms: Option<TimestampMs>,
    /// Last change of what the row shows (status, output, failure, custom status, execution).
    pub updated_at_ms: TimestampMs,
    /// When it finished (completed, failed or cancelled).
    pub finished_at_ms: Option<TimestampMs>,
}

/// The two kinds of work a dispatcher fetches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Work {
    /// Orchestration turns (inbox messages, instance leases).
    Turns,
    /// Activity work items (and their leases).
    Activities,
}

/// Which orchestrations or activities a fetch hands out, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Names {
    /// Every name.
    #[default]
    All,
    /// Only these (sorted, without duplicates).
    Only(std::sync::Arc<[String]>),
}

impl Names {
    /// Only `names`.
    pub fn only<I, S>(names: I) -> Names
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut names: Vec<String> = names.into_iter().map(Into::into).collect();
        names.sort_unstable();
        names.dedup();
        Names::Only(names.into())
    }

    /// Whether `name` is among them.
    pub fn contains(&self, name: &str) -> bool {
        match self {
            Names::All => true,
            Names::Only(names) => names.binary_search_by(|n| n.as_str().cmp(name)).is_ok(),
        }
    }

    /// The names, or `None` for all.
    pub fn as_slice(&self) -> Option<&[String]> {
        match self {
            Names::All => None,
            Names::Only(names) => Some(names),
        }
    }
}

/// One instance with everything a store holds for it, in the stored text forms
/// ([`crate::stored`]), as moved between stores (`sluice store copy`). Leases are not part of
/// it: an exported instance is taken from a store no runtime is using.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportedInstance {
    /// Its id.
    pub instance_id: String,
    /// Orchestration name.
    pub name: String,
    /// Status, as stored (`running`, ...).
    pub status: String,
    /// Current execution.
    pub execution_id: u64,
    /// Input of the current execution.
    pub input: String,
    /// Output, as stored.
    pub output: Option<String>,
    /// Failure, as stored.
    pub failure: Option<String>,
    /// Custom status.
    pub custom_status: Option<String>,
    /// Creation time.
    pub created_at_ms: sluice_history::TimestampMs,
    /// Last change.
    pub updated_at_ms: sluice_history::TimestampMs,
    /// History events of every execution: `(execution_id, position, event)`, in order.
    pub history: Vec<(u64, u64, String)>,
    /// Unconsumed messages (timers among them), oldest first.
    pub inbox: Vec<ExportedMessage>,
    /// Activity work items not yet recorded.
    pub activities: Vec<ExportedActivity>,
}

/// An inbox message of an [`ExportedInstance`].
#[derive(Clone, Debug, PartialEq)]
pub struct ExportedMessage {
    /// When it becomes visible.
    pub visible_at_ms: sluice_history::TimestampMs,
    /// The message, as stored.
    pub message: String,
}

/// An activity work item of an [`ExportedInstance`].
#[derive(Clone, Debug, PartialEq)]
pub struct ExportedActivity {
    /// The execution that scheduled it.
    pub execution_id: u64,
    /// Its id in that execution.
    pub activity_id: u64,
    /// Activity name.
    pub name: String,
    /// Input.
    pub input: String,
    /// Retry policy, as stored.
    pub retry: Option<String>,
    /// Attempts made so far.
    pub attempt: u32,
    /// When it may next be handed out.
    pub visible_at_ms: sluice_history::TimestampMs,
    /// Task queue (`None`: the default one).
    pub task_queue: Option<String>,
}

/// An operator's request about one instance, recorded in its history with the event it causes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorRequest {
    /// The instance.
    pub instance_id: String,
    /// Why (recorded).
    pub reason: String,
    /// Who or what asks (recorded): a user, a tool, a policy.
    pub requested_by: String,
}

/// What becomes of a terminated instance's unfinished sub-orchestrations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildPolicy {
    /// Terminated with it, and theirs with them. The default.
    #[default]
    Terminate,
    /// Sent a cancel: their code runs its compensation.
    Cancel,
    /// Left running; what they send their parent is dropped.
    Abandon,
}
