//! The storage contract of the orchestration runtime.
//!
//! A store keeps, per instance: its row (status, output, custom status, the current execution),
//! the history of each execution, an inbox of [`Message`]s (some invisible until a time: that
//! is how durable timers and retry backoffs work), and the activity work items it scheduled.
//!
//! Work is handed out by *peek-lock*: a fetch locks an instance (or a work item) under a lease
//! with a fresh lock token; the holder commits with that token. A commit whose lease was lost
//! (expired, or taken over by another fetch) is rejected with [`StoreError::LeaseLost`] and
//! changes nothing. A turn commit is atomic: history append, consumed messages, new work items,
//! timers, messages to other instances and the status change all happen, or none does. Holders
//! renew leases while they work ([`Store::renew_turn_lease`], [`Store::renew_activity_lease`]),
//! so a turn or an activity of any length commits once.
//!
//! Deliveries are counted durably, turns like activities: every fetch counts one on what it
//! hands out, so that work which keeps failing, or keeps crashing its process, is recognised
//! and taken out of service ([`Store::quarantine_turn`]) instead of looping. A row that cannot
//! be decoded affects only its own instance or work item (see [`LockedTurn::unreadable`]).
//! Work of a finished instance is never handed out.
//!
//! Every store passes the conformance suite in [`conformance`] (feature `conformance`).
//!
//! Code over the contract works with every store (sluice-store-sqlite, sluice-store-postgres);
//! a store's time comes from a [`Clock`], which tests replace.
//!
//! ```
//! use sluice_store::{Clock, ManualClock, NewInstance, Store, StoreResult};
//!
//! /// Starts a checkout for `order` unless one exists, on any store.
//! async fn start_checkout(store: &dyn Store, order: &str) -> StoreResult<bool> {
//!     let start = NewInstance {
//!         instance_id: format!("checkout-{order}"),
//!         name: "checkout".into(),
//!         input: format!("{{\"order\": \"{order}\"}}"),
//!         parent: None,
//!         version: None,
//!     };
//!     store.create_instance(start).await
//! }
//!
//! let clock = ManualClock::new(1_000);
//! clock.advance_ms(30_000); // a lease of 30 s has run out, as the store judges it
//! assert_eq!(clock.now_ms(), 31_000);
//! ```
#![warn(missing_docs)]

pub mod bulk;
mod clock;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod listing;
mod query;
pub mod repair;
mod signals;
pub mod stored;
mod types;

pub use clock::{Clock, ManualClock, SystemClock};
pub use query::*;
pub use signals::Signals;
pub use types::*;

use async_trait::async_trait;
use sluice_history::Event;
use std::sync::Arc;
use std::time::Duration;

/// Errors every store reports the same way.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The lock token no longer holds the lease (expired or taken over); nothing was written.
    #[error("lease lost: the lock token no longer holds this {0}")]
    LeaseLost(&'static str),
    /// No instance has this id.
    #[error("instance '{0}' does not exist")]
    InstanceNotFound(String),
    /// The instance has finished and takes no more events.
    #[error("instance '{instance_id}' is {status} and takes no more events")]
    InstanceFinished {
        /// The instance.
        instance_id: String,
        /// Its final status.
        status: &'static str,
    },
    /// A commit broke the contract (for example appended history at the wrong position).
    #[error("contract violation: {0}")]
    Contract(String),
    /// Stored data could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error("database error: {0}")]
    Database(String),
    /// The instance's status does not allow the operation.
    #[error("instance '{instance_id}' is {status}: {why}")]
    NotAllowed {
        /// The instance.
        instance_id: String,
        /// Its status.
        status: &'static str,
        /// Why not, and what to do instead.
        why: &'static str,
    },
}

impl StoreError {
    /// A stable code for the error.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::LeaseLost(_) => "store.lease_lost",
            StoreError::InstanceNotFound(_) => "store.instance_not_found",
            StoreError::InstanceFinished { .. } => "store.instance_finished",
            StoreError::Contract(_) => "store.contract",
            StoreError::Corrupt(_) => "store.corrupt",
            StoreError::Database(_) => "store.database",
            StoreError::NotAllowed { .. } => "store.not_allowed",
        }
    }
}

/// Result alias for store calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// The storage contract. See the crate docs for the semantics every store guarantees.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Wake-ups for in-process dispatchers and waiters.
    fn signals(&self) -> &Arc<Signals>;

    /// Creates an instance and enqueues its start message. Idempotent on the id: when the id
    /// exists, nothing changes and `Ok(false)` is returned.
    async fn create_instance(&self, start: NewInstance) -> StoreResult<bool>;

    /// Adds a message to an existing, unfinished instance's inbox. With `start_if_missing`, a
    /// missing instance is created first (signal-with-start), atomically.
    async fn enqueue_message(
        &self,
        instance_id: &str,
        message: sluice_history::Message,
        start_if_missing: Option<NewInstance>,
    ) -> StoreResult<()>;

    /// Locks up to `max` instances that have visible messages and are not locked or
    /// quarantined, for `lease`, and returns each with its visible messages, counting a
    /// delivery on each of them. Instances listed in `also` are locked too (when they exist and
    /// are not locked, whatever their status) even without visible messages, ahead of the
    /// others: the caller holds results for them in memory. A row that cannot be decoded does
    /// not fail the fetch: its turn comes back with [`LockedTurn::unreadable`] set. Only
    /// instances whose orchestration `names` has are handed out (`also` ones included), so a
    /// process never takes work it has no code for; [`Store::next_wake_at`] then counts only
    /// those names too.
    async fn fetch_turns_named(
        &self,
        max: usize,
        lease: Duration,
        also: &[String],
        names: &Names,
    ) -> StoreResult<Vec<LockedTurn>>;

    /// [`Store::fetch_turns_named`] with [`Names::All`].
    async fn fetch_turns(
        &self,
        max: usize,
        lease: Duration,
        also: &[String],
    ) -> StoreResult<Vec<LockedTurn>> {
        self.fetch_turns_named(max, lease, also, &Names::All).await
    }

    /// Reads an execution's history from position `from` on.
    async fn read_history(
        &self,
        instance_id: &str,
        execution_id: u64,
        from: u64,
    ) -> StoreResult<Vec<Event>>;

    /// Commits a turn atomically (see [`TurnCommit`]); releases the instance lock. Returns the
    /// activity work items the commit claimed for the caller (see
    /// [`TurnCommit::claim_activities`]).
    async fn commit_turn(&self, commit: TurnCommit) -> StoreResult<Vec<ActivityWorkItem>>;

    /// Releases an instance lock without changes after a failed turn; its messages become
    /// visible again after `delay`. The fetch's delivery stays counted.
    async fn abandon_turn(
        &self,
        instance_id: &str,
        lock_token: u64,
        delay: Duration,
    ) -> StoreResult<()>;

    /// Releases an instance lock without changes for a turn that did not run (no handler in
    /// this process, shutdown): like [`Store::abandon_turn`], but the fetch's delivery is
    /// taken back, so waiting does not count toward the poison limit.
    async fn release_turn(
        &self,
        instance_id: &str,
        lock_token: u64,
        delay: Duration,
    ) -> StoreResult<()>;

    /// Extends a turn's lease to `lease` from now, while the turn is still being built or
    /// committed. [`StoreError::LeaseLost`] when the token no longer holds it.
    async fn renew_turn_lease(
        &self,
        instance_id: &str,
        lock_token: u64,
        lease: Duration,
    ) -> StoreResult<()>;

    /// Takes the instance out of service: appends [`Event::Quarantined`] with `reason`, its
    /// status becomes [`InstanceStatus::Quarantined`](sluice_history::InstanceStatus::Quarantined)
    /// with `reason` as its failure, and the lock is released. Its messages stay (with their
    /// delivery counts); it keeps receiving more, but [`Store::fetch_turns`] hands it out only
    /// through `also`, so no turn runs until an operator acts; its activity work items are not
    /// handed out either (those running finish, their results wait in the inbox).
    ///
    /// [`Event::Quarantined`]: sluice_history::Event::Quarantined
    async fn quarantine_turn(
        &self,
        instance_id: &str,
        lock_token: u64,
        reason: sluice_history::Failure,
    ) -> StoreResult<()>;

    /// Locks up to `max` visible activity work items for `lease`, counting an attempt on each.
    /// Work items of finished instances are deleted, not handed out. A work item that cannot be
    /// decoded comes back with [`ActivityWorkItem::unreadable`] set. Only work items of the
    /// activities `names` has, on the task queues `queues` has (the default queue is named
    /// `""`), are handed out (and counted by [`Store::next_wake_at`]).
    async fn fetch_activities_named(
        &self,
        max: usize,
        lease: Duration,
        names: &Names,
        queues: &Names,
    ) -> StoreResult<Vec<ActivityWorkItem>>;

    /// [`Store::fetch_activities_named`] with [`Names::All`] names and queues.
    async fn fetch_activities(
        &self,
        max: usize,
        lease: Duration,
    ) -> StoreResult<Vec<ActivityWorkItem>> {
        self.fetch_activities_named(max, lease, &Names::All, &Names::All)
            .await
    }

    /// Takes the instance of a held activity work item out of service because the item was
    /// delivered too often (it keeps crashing or hanging its process): as
    /// [`Store::quarantine_turn`], fencing whoever runs the instance's turn, and the item is
    /// given back uncounted, kept with its attempt count for an operator's retry (which starts
    /// the count afresh) or discard. An instance that is already quarantined keeps its first
    /// reason; a finished one only loses the item. [`StoreError::LeaseLost`] when the token no
    /// longer holds the item.
    async fn quarantine_activity(
        &self,
        item_id: u64,
        lock_token: u64,
        reason: sluice_history::Failure,
    ) -> StoreResult<()>;

    /// Extends an activity's lease. Returns whether the owning instance is still running (an
    /// activity of a finished or cancelled instance should stop).
    async fn renew_activity_lease(
        &self,
        item_id: u64,
        lock_token: u64,
        lease: Duration,
    ) -> StoreResult<bool>;

    /// Removes a work item and delivers its result to the instance, atomically.
    async fn complete_activity(
        &self,
        item_id: u64,
        lock_token: u64,
        result: ActivityResult,
    ) -> StoreResult<()>;

    /// Releases a work item for another attempt, invisible for `delay`.
    async fn retry_activity(
        &self,
        item_id: u64,
        lock_token: u64,
        delay: Duration,
    ) -> StoreResult<()>;

    /// Releases a work item that did not run (no handler in this process, shutdown), invisible
    /// for `delay`: like [`Store::retry_activity`], but the fetch's attempt is taken back.
    async fn release_activity(
        &self,
        item_id: u64,
        lock_token: u64,
        delay: Duration,
    ) -> StoreResult<()>;

    /// The instance's row.
    async fn instance(&self, instance_id: &str) -> StoreResult<Option<InstanceInfo>>;

    /// When a dispatcher of `work` should fetch again at the latest: the earliest time, after
    /// the moment this store's last fetch of that kind began, at which a message (turns) or a
    /// work item (activities) becomes visible, or a lease of that kind ends. Measured from the
    /// last fetch, not from now, so that what became due between that fetch and this call is
    /// not skipped (the answer is then in the past: fetch at once). Only work of the names that
    /// fetch asked for counts.
    async fn next_wake_at(&self, work: Work) -> StoreResult<Option<sluice_history::TimestampMs>>;

    /// A page of the instances a query's filter selects, in its order (see [`InstanceQuery`]).
    async fn list_instances(&self, query: &InstanceQuery) -> StoreResult<InstancePage>;

    /// How many instances `filter` selects (for a bulk action's dry run). Unlike
    /// [`Store::instance_counts`] it reads the rows it counts: bounded by the filter's index
    /// ranges, but a million of them take a moment.
    async fn count_instances(&self, filter: &InstanceFilter) -> StoreResult<u64>;

    /// Terminates an unfinished instance at once, without running its code: appends
    /// [`Event::Terminated`] with the request, sets status `terminated` (failure code
    /// `terminated`, the reason as its message), drops its messages, timers and the activity
    /// work nobody holds, and fences the lease of whoever holds its turn, whose commit is then
    /// refused ([`StoreError::LeaseLost`]). Its unfinished children follow `children`. Returns
    /// the ids terminated, this instance first. A finished instance is
    /// [`StoreError::InstanceFinished`].
    async fn terminate_instance(
        &self,
        request: &OperatorRequest,
        children: ChildPolicy,
    ) -> StoreResult<Vec<String>>;

    /// Suspends a pending or running instance: appends [`Event::Suspended`], sets status
    /// `suspended` and fences the holder of its turn. It keeps receiving messages and activity
    /// results (its activities run on), and timers fall due, but no turn runs until
    /// [`Store::resume_instance`]. `Ok(false)` when it was suspended already; a quarantined
    /// instance is [`StoreError::NotAllowed`], a finished one [`StoreError::InstanceFinished`].
    async fn suspend_instance(&self, request: &OperatorRequest) -> StoreResult<bool>;

    /// Resumes a suspended instance: appends [`Event::Resumed`] and sets it back to running
    /// (pending if it never started); what arrived meanwhile, timers that fell due included,
    /// is its next turn. `Ok(false)` when it was not suspended.
    async fn resume_instance(&self, request: &OperatorRequest) -> StoreResult<bool>;

    /// Puts a quarantined instance back in service: appends [`Event::Retried`], sets it back
    /// to running (pending if it never started) without its failure, and starts its messages'
    /// delivery counts afresh, so its next turn runs at once. `Ok(false)` when it was not
    /// quarantined.
    async fn retry_instance(&self, request: &OperatorRequest) -> StoreResult<bool>;

    /// Fails a quarantined instance for good: appends [`Event::Discarded`], status `failed`
    /// with code `discarded` and the reason, and drops its messages as a terminate does.
    /// Anything but a quarantined instance is [`StoreError::NotAllowed`] (a finished one
    /// [`StoreError::InstanceFinished`]).
    async fn discard_instance(&self, request: &OperatorRequest) -> StoreResult<()>;

    /// Starts a finished instance (completed, failed, cancelled or terminated) again from
    /// its input (the current execution's, or `input` when given), appending
    /// [`Event::Restarted`] to the execution that ended. With `as_instance` `None` it runs as a
    /// new execution under the same id (pending, without output or failure; a restarted
    /// sub-orchestration no longer reports to its parent); otherwise a new instance of that id
    /// starts (the original may then be in any status). Returns the new instance's id and
    /// execution. Unfinished instances are [`StoreError::NotAllowed`] (terminate them first);
    /// a taken `as_instance` is [`StoreError::NotAllowed`] too.
    async fn restart_instance(
        &self,
        request: &OperatorRequest,
        as_instance: Option<&str>,
        input: Option<&str>,
    ) -> StoreResult<(String, u64)>;

    /// Rewinds a failed instance to before its last failure (see [`repair`]): a new execution
    /// starts with the failed one's history up to there and runs again what was open (the
    /// failed activity, a failed sub-orchestration, which is rewound too, or the turn whose
    /// code failed). Appends [`Event::Rewound`] to the failed execution. Returns the new
    /// execution and the ids rewound (this instance first, then failed children). Anything
    /// but a failed instance whose history ends in a failure (a discarded one has nothing to
    /// run again) is [`StoreError::NotAllowed`].
    async fn rewind_instance(&self, request: &OperatorRequest) -> StoreResult<(u64, Vec<String>)>;

    /// Removes a finished instance and everything stored for it (history, executions,
    /// messages, work items), with its finished sub-orchestrations, theirs, and so on; an
    /// unfinished descendant stays (and is not descended into). Returns the ids removed, this
    /// one first. An unfinished instance is [`StoreError::NotAllowed`].
    async fn purge_instance(&self, instance_id: &str) -> StoreResult<Vec<String>>;

    /// How many instances [`Store::purge_batch`] would remove for `filter` in all (for a dry
    /// run; [`PurgeFilter::as_listing`] lists a sample).
    async fn count_purgeable(&self, filter: &PurgeFilter) -> StoreResult<u64>;

    /// Removes up to `max` instances `filter` selects, those that finished first, in one
    /// transaction (children are not followed: each is selected, or not, by the filter itself).
    /// Returns how many it removed; 0 when none is left (or, on a store several processes
    /// share, when the rest is being removed by another purge: instances another purge holds
    /// are skipped, not waited for). Callers loop, in small batches, so that no transaction
    /// holds locks for long.
    async fn purge_batch(&self, filter: &PurgeFilter, max: usize) -> StoreResult<usize>;

    /// How many instances there are per status and orchestration name (only counts above zero,
    /// ordered by status, then name). Kept by the store as instances change, so it reads a few
    /// rows however many instances there are.
    async fn instance_counts(&self) -> StoreResult<Vec<InstanceCount>>;

    /// The instance's executions, oldest first; empty when the instance does not exist.
    async fn executions(&self, instance_id: &str) -> StoreResult<Vec<ExecutionInfo>>;

    /// At most `max` events of an execution's history from position `from` on (a page of a
    /// long history: the next page starts at `from` plus the events returned).
    async fn read_history_page(
        &self,
        instance_id: &str,
        execution_id: u64,
        from: u64,
        max: usize,
    ) -> StoreResult<Vec<Event>>;

    /// Counts instances by status, from [`Store::instance_counts`].
    async fn count_by_status(&self) -> StoreResult<Vec<(sluice_history::InstanceStatus, u64)>> {
        let mut totals: Vec<(sluice_history::InstanceStatus, u64)> = Vec::new();
        for count in self.instance_counts().await? {
            match totals
                .iter_mut()
                .find(|(status, _)| *status == count.status)
            {
                Some((_, total)) => *total += count.count,
                None => totals.push((count.status, count.count)),
            }
        }
        totals.sort_by_key(|(status, _)| status.as_str());
        Ok(totals)
    }
}
