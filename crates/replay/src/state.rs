//! The mutable state one turn's replay shares between the driver and the futures.

use sluice_history::{Event, Failure, codes};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::task::Waker;

/// What a durable future waits on: a command (by id) or an event wait (by wait number).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Slot {
    Command(u64),
    Wait(u64),
    /// The command could not be issued (nondeterminism or serde); never resolves.
    Dead,
}

/// A resolved slot: its history position (for ordering selects) and value.
#[derive(Debug)]
pub(crate) struct Completion {
    pub(crate) position: usize,
    pub(crate) value: CompletionValue,
}

#[derive(Debug)]
pub(crate) enum CompletionValue {
    Activity(Result<String, Failure>),
    Timer,
    Event(String),
    SubOrchestration(Result<String, Failure>),
}

#[doc(hidden)]
/// One turn's replay state (internal; unnameable outside the crate: its module is private).
pub struct State {
    pub(crate) instance_id: String,
    pub(crate) execution_id: u64,
    pub(crate) history: Arc<Vec<Event>>,
    /// Length of the history recorded by earlier turns.
    pub(crate) replay_len: usize,
    /// Number of events applied so far.
    pub(crate) cursor: usize,
    /// Events this turn adds to history, in order.
    pub(crate) appended: Vec<Event>,
    pub(crate) now_ms: i64,
    pub(crate) guid_seed: u64,
    pub(crate) guid_counter: u64,
    pub(crate) next_command_id: u64,
    pub(crate) next_wait_id: u64,
    /// Command events of earlier turns by id, as positions into `history`.
    pub(crate) recorded_commands: HashMap<u64, usize>,
    /// Kinds of all commands known (recorded or issued this turn), to validate completions.
    pub(crate) command_kinds: HashMap<u64, &'static str>,
    pub(crate) completions: HashMap<Slot, Completion>,
    pub(crate) wakers: HashMap<Slot, Waker>,
    /// Raised events nobody has waited for yet, per name, in history order.
    pub(crate) buffered_events: HashMap<String, VecDeque<(usize, String)>>,
    /// Event waits not yet matched, per name, in creation order.
    pub(crate) waiting: HashMap<String, VecDeque<u64>>,
    pub(crate) wait_names: HashMap<u64, String>,
    pub(crate) custom_status: Option<String>,
    pub(crate) continue_as_new: Option<String>,
    pub(crate) failure: Option<Failure>,
    /// Commands whose cancellation history records (or this turn appended).
    pub(crate) cancelled: std::collections::HashSet<u64>,
    /// The engine is dropping the code at the end of the turn: the futures it drops are not
    /// cancelled (the code still waits for them).
    pub(crate) tearing_down: bool,
}

impl State {
    pub(crate) fn new(instance_id: String, execution_id: u64, history: Arc<Vec<Event>>) -> Self {
        let mut recorded_commands = HashMap::new();
        let mut command_kinds = HashMap::new();
        let mut cancelled = std::collections::HashSet::new();
        for (position, event) in history.iter().enumerate() {
            if let Event::CancelRequested { id } = event {
                cancelled.insert(*id);
            }
            if event.is_command()
                && let Some(id) = event.command_id()
            {
                recorded_commands.insert(id, position);
                command_kinds.insert(id, event.kind());
            }
        }
        let replay_len = history.len();
        Self {
            instance_id,
            execution_id,
            history,
            replay_len,
            cursor: 0,
            appended: Vec::new(),
            now_ms: 0,
            guid_seed: 0,
            guid_counter: 0,
            next_command_id: 0,
            next_wait_id: 0,
            recorded_commands,
            command_kinds,
            completions: HashMap::new(),
            wakers: HashMap::new(),
            buffered_events: HashMap::new(),
            waiting: HashMap::new(),
            wait_names: HashMap::new(),
            custom_status: None,
            continue_as_new: None,
            failure: None,
            cancelled,
            tearing_down: false,
        }
    }

    /// True while the code reacts to events that earlier turns already processed.
    pub(crate) fn is_replaying(&self) -> bool {
        self.cursor <= self.replay_len
    }

    pub(crate) fn fail(&mut self, failure: Failure) {
        if self.failure.is_none() {
            self.failure = Some(failure);
        }
    }

    fn resolve(&mut self, slot: Slot, position: usize, value: CompletionValue) {
        self.completions
            .insert(slot, Completion { position, value });
        if let Some(waker) = self.wakers.remove(&slot) {
            waker.wake();
        }
    }

    /// Applies the event at `position` (already counted in `cursor`).
    pub(crate) fn apply(&mut self, position: usize, event: &Event) {
        match event {
            Event::TurnStarted { now_ms } => self.now_ms = *now_ms,
            Event::OrchestrationStarted { guid_seed, .. } => self.guid_seed = *guid_seed,
            Event::EventRaised { name, data } => self.deliver_event(name, position, data.clone()),
            Event::ActivityCompleted { id, output } => self.complete_command(
                *id,
                position,
                "activity_scheduled",
                CompletionValue::Activity(Ok(output.clone())),
            ),
            Event::ActivityFailed { id, failure } => self.complete_command(
                *id,
                position,
                "activity_scheduled",
                CompletionValue::Activity(Err(failure.clone())),
            ),
            Event::TimerFired { id } => {
                self.complete_command(*id, position, "timer_created", CompletionValue::Timer)
            }
            Event::SubOrchestrationCompleted { id, output } => self.complete_command(
                *id,
                position,
                "sub_orchestration_scheduled",
                CompletionValue::SubOrchestration(Ok(output.clone())),
            ),
            Event::SubOrchestrationFailed { id, failure } => self.complete_command(
                *id,
                position,
                "sub_orchestration_scheduled",
                CompletionValue::SubOrchestration(Err(failure.clone())),
            ),
            // Commands are matched when the code issues them; terminal events end a turn and
            // are never followed by more events.
            _ => {}
        }
    }

    fn complete_command(
        &mut self,
        id: u64,
        position: usize,
        expected_kind: &'static str,
        value: CompletionValue,
    ) {
        match self.command_kinds.get(&id) {
            Some(kind) if *kind == expected_kind => {
                self.resolve(Slot::Command(id), position, value)
            }
            Some(kind) => self.fail(Failure::new(
                codes::NONDETERMINISM_COMMAND_MISMATCH,
                format!(
                    "history resolves command {id} as {expected_kind} but it was recorded as {kind}"
                ),
            )),
            None => self.fail(Failure::new(
                codes::NONDETERMINISM_MISSING_COMMAND,
                format!("history has a result for command {id}, which was never issued"),
            )),
        }
    }

    fn deliver_event(&mut self, name: &str, position: usize, data: String) {
        let waiter = self.waiting.get_mut(name).and_then(VecDeque::pop_front);
        match waiter {
            Some(wait_id) => {
                self.resolve(Slot::Wait(wait_id), position, CompletionValue::Event(data))
            }
            None => self
                .buffered_events
                .entry(name.to_string())
                .or_default()
                .push_back((position, data)),
        }
    }

    /// Registers a wait for the next event called `name`; resolves at once if one is buffered.
    pub(crate) fn add_wait(&mut self, name: &str) -> Slot {
        let wait_id = self.next_wait_id;
        self.next_wait_id += 1;
        self.wait_names.insert(wait_id, name.to_string());
        let buffered = self
            .buffered_events
            .get_mut(name)
            .and_then(VecDeque::pop_front);
        match buffered {
            Some((position, data)) => {
                self.resolve(Slot::Wait(wait_id), position, CompletionValue::Event(data))
            }
            None => self
                .waiting
                .entry(name.to_string())
                .or_default()
                .push_back(wait_id),
        }
        Slot::Wait(wait_id)
    }

    /// A wait future was dropped before yielding its value: unregister it, and give back an
    /// event it had matched but not handed out, so no event is lost to a losing select branch.
    pub(crate) fn drop_wait(&mut self, wait_id: u64) {
        let Some(name) = self.wait_names.remove(&wait_id) else {
            return;
        };
        self.wakers.remove(&Slot::Wait(wait_id));
        if let Some(queue) = self.waiting.get_mut(&name) {
            queue.retain(|waiting_id| *waiting_id != wait_id);
        }
        if let Some(Completion {
            position,
            value: CompletionValue::Event(data),
        }) = self.completions.remove(&Slot::Wait(wait_id))
        {
            // Back to the front, then hand it to the oldest remaining wait, if any.
            self.buffered_events
                .entry(name.clone())
                .or_default()
                .push_front((position, data));
            if let Some(next_wait) = self.waiting.get_mut(&name).and_then(VecDeque::pop_front)
                && let Some((position, data)) = self
                    .buffered_events
                    .get_mut(&name)
                    .and_then(VecDeque::pop_front)
            {
                self.resolve(
                    Slot::Wait(next_wait),
                    position,
                    CompletionValue::Event(data),
                );
            }
        }
    }

    /// The code dropped the unresolved future of `slot`: an activity or sub-orchestration that
    /// has no result yet is cancelled, once, recorded in history so every replay agrees. A
    /// result already applied (the loser of a select whose result also came) needs nothing.
    pub(crate) fn drop_command(&mut self, slot: Slot) {
        self.wakers.remove(&slot);
        let Slot::Command(id) = slot else { return };
        if self.completions.remove(&slot).is_some() || self.tearing_down || self.failure.is_some() {
            return;
        }
        let cancellable = matches!(
            self.command_kinds.get(&id),
            Some(&"activity_scheduled" | &"sub_orchestration_scheduled")
        );
        if cancellable && self.cancelled.insert(id) {
            self.appended.push(Event::CancelRequested { id });
        }
    }

    /// Marks a wait as having handed out its value.
    pub(crate) fn finish_wait(&mut self, wait_id: u64) {
        self.wait_names.remove(&wait_id);
    }

    /// Issues a command: returns its id, or `None` after recording a nondeterminism failure.
    /// `command` is the event that records it; on replay the recorded event is returned so
    /// values chosen at the time (a timer's fire time) are reused. With `derived_id`, the command's instance id was derived from this
    /// execution (not chosen by the code), so a recorded command is matched without it and
    /// keeps the id it was recorded with: after a rewind, the new execution replays commands
    /// an earlier execution issued and named.
    pub(crate) fn issue_with(&mut self, command: Event, derived_id: bool) -> Option<(u64, Event)> {
        if self.failure.is_some() {
            return None;
        }
        let id = command.command_id().expect("commands carry ids");
        debug_assert_eq!(id, self.next_command_id);
        self.next_command_id += 1;
        if let Some(&position) = self.recorded_commands.get(&id) {
            let recorded = &self.history[position];
            if !same_command(recorded, &command, derived_id) {
                self.fail(Failure::new(
                    codes::NONDETERMINISM_COMMAND_MISMATCH,
                    format!(
                        "command {id}: history recorded {} but the code now issues {}",
                        describe(recorded),
                        describe(&command)
                    ),
                ));
                return None;
            }
            return Some((id, recorded.clone()));
        }
        if self.is_replaying() {
            self.fail(Failure::new(
                codes::NONDETERMINISM_UNEXPECTED_COMMAND,
                format!(
                    "command {id}: the code issues {} during replay, but history has no command \
                     with this id",
                    describe(&command)
                ),
            ));
            return None;
        }
        self.command_kinds.insert(id, command.kind());
        self.appended.push(command.clone());
        Some((id, command))
    }

    /// Answers a patch check at the code's current point (see
    /// `OrchestrationContext::is_patched`); `deprecated` for `deprecate_patch`, which never
    /// records a marker and always takes the new branch.
    pub(crate) fn patch(&mut self, patch: &str, deprecated: bool) -> bool {
        if self.failure.is_some() {
            return true;
        }
        let id = self.next_command_id;
        if let Some(&position) = self.recorded_commands.get(&id) {
            if matches!(&self.history[position], Event::PatchMarker { patch: recorded, .. } if recorded == patch)
            {
                // Recorded by the patched code: take its branch again.
                self.next_command_id += 1;
                return true;
            }
            // The code that recorded this history passed here without the patch (or another
            // patch's marker comes first, which the next command's match reports).
            return deprecated;
        }
        if self.is_replaying() {
            // An earlier turn ran past this point and recorded no marker: the old code.
            return deprecated;
        }
        if deprecated {
            return true;
        }
        let marker = Event::PatchMarker {
            id,
            patch: patch.to_string(),
        };
        self.next_command_id += 1;
        self.command_kinds.insert(id, marker.kind());
        self.appended.push(marker);
        true
    }

    /// Recorded commands the code did not issue this time (checked when the turn ends).
    pub(crate) fn missing_command(&self) -> Option<Failure> {
        let mut missing: Vec<u64> = self
            .recorded_commands
            .keys()
            .copied()
            .filter(|id| *id >= self.next_command_id)
            .collect();
        missing.sort_unstable();
        let first = *missing.first()?;
        let event = &self.history[self.recorded_commands[&first]];
        Some(Failure::new(
            codes::NONDETERMINISM_MISSING_COMMAND,
            format!(
                "history recorded {} as command {first}, but the code no longer issues it \
                 ({} recorded command(s) missing)",
                describe(event),
                missing.len()
            ),
        ))
    }

    pub(crate) fn take_completion(&mut self, slot: Slot) -> Option<CompletionValue> {
        self.completions
            .remove(&slot)
            .map(|completion| completion.value)
    }

    pub(crate) fn completion_position(&self, slot: Slot) -> Option<usize> {
        self.completions
            .get(&slot)
            .map(|completion| completion.position)
    }

    pub(crate) fn register_waker(&mut self, slot: Slot, waker: &std::task::Waker) {
        match self.wakers.get_mut(&slot) {
            Some(existing) if existing.will_wake(waker) => {}
            Some(existing) => existing.clone_from(waker),
            None => {
                self.wakers.insert(slot, waker.clone());
            }
        }
    }

    /// Unconsumed events, in history order, to carry over a continue-as-new.
    pub(crate) fn unconsumed_events(&self) -> Vec<(String, String)> {
        let mut all: Vec<(usize, String, String)> = self
            .buffered_events
            .iter()
            .flat_map(|(name, queue)| {
                queue
                    .iter()
                    .map(move |(position, data)| (*position, name.clone(), data.clone()))
            })
            .collect();
        all.sort_by_key(|(position, _, _)| *position);
        all.into_iter()
            .map(|(_, name, data)| (name, data))
            .collect()
    }
}

fn same_command(recorded: &Event, issued: &Event, derived_id: bool) -> bool {
    match (recorded, issued) {
        (Event::ActivityScheduled { name: a, .. }, Event::ActivityScheduled { name: b, .. }) => {
            a == b
        }
        (Event::TimerCreated { .. }, Event::TimerCreated { .. }) => true,
        (
            Event::SubOrchestrationScheduled {
                name: a,
                instance_id: ia,
                ..
            },
            Event::SubOrchestrationScheduled {
                name: b,
                instance_id: ib,
                ..
            },
        ) => a == b && (derived_id || ia == ib),
        (
            Event::DetachedStarted {
                name: a,
                instance_id: ia,
                ..
            },
            Event::DetachedStarted {
                name: b,
                instance_id: ib,
                ..
            },
        ) => a == b && ia == ib,
        (Event::PatchMarker { patch: a, .. }, Event::PatchMarker { patch: b, .. }) => a == b,
        _ => false,
    }
}

fn describe(event: &Event) -> String {
    match event {
        Event::ActivityScheduled { name, .. } => format!("activity '{name}'"),
        Event::TimerCreated { .. } => "a timer".to_string(),
        Event::SubOrchestrationScheduled {
            name, instance_id, ..
        } => {
            format!("sub-orchestration '{name}' ({instance_id})")
        }
        Event::DetachedStarted {
            name, instance_id, ..
        } => {
            format!("detached orchestration '{name}' ({instance_id})")
        }
        Event::PatchMarker { patch, .. } => format!("the marker of patch '{patch}'"),
        other => other.kind().to_string(),
    }
}
