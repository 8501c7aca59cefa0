//! Operator actions on every instance a filter selects, on any store: first a dry run (how
//! many match, and a sample), then, when confirmed, the action one instance at a time, each
//! recorded in that instance's history like a single action.
//!
//! ```no_run
//! use sluice_store::bulk::{BulkAction, BulkOutcome, BulkRequest, run_bulk};
//! use sluice_store::{InstanceFilter, Store};
//! use sluice_history::InstanceStatus;
//!
//! # async fn example(store: &dyn Store) -> sluice_store::StoreResult<()> {
//! let mut request = BulkRequest::new(
//!     BulkAction::Retry,
//!     InstanceFilter {
//!         statuses: vec![InstanceStatus::Quarantined],
//!         name: Some("checkout".into()),
//!         ..InstanceFilter::default()
//!     },
//!     "the decoder is fixed in 1.4.2",
//!     "ops@example.com",
//! );
//! // Unconfirmed (the default), it only looks.
//! if let BulkOutcome::DryRun { matching, sample } = run_bulk(store, &request, |_| {}).await? {
//!     println!("{matching} would be retried, for example {:?}", sample.first());
//! }
//! request.confirmed = true;
//! run_bulk(store, &request, |done| println!("{done} so far")).await?;
//! # Ok(())
//! # }
//! ```

use crate::{
    ChildPolicy, InstanceFilter, InstanceOrder, InstanceQuery, InstanceSummary, OperatorRequest,
    Store, StoreError, StoreResult,
};
use serde::Serialize;

/// What a bulk action does to each instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "action", content = "children")]
pub enum BulkAction {
    /// [`Store::terminate_instance`], children following the policy.
    Terminate(ChildPolicy),
    /// [`Store::suspend_instance`].
    Suspend,
    /// [`Store::resume_instance`].
    Resume,
    /// [`Store::retry_instance`] (quarantined instances).
    Retry,
    /// [`Store::discard_instance`] (quarantined instances).
    Discard,
    /// [`Store::rewind_instance`] (failed instances).
    Rewind,
}

impl BulkAction {
    /// The past participle, for reports ("terminated").
    pub fn done_verb(self) -> &'static str {
        match self {
            BulkAction::Terminate(_) => "terminated",
            BulkAction::Suspend => "suspended",
            BulkAction::Resume => "resumed",
            BulkAction::Retry => "retried",
            BulkAction::Discard => "discarded",
            BulkAction::Rewind => "rewound",
        }
    }
}

/// A bulk action: what, on which instances, why and by whom, and whether it is confirmed.
#[derive(Clone, Debug, PartialEq)]
pub struct BulkRequest {
    /// The action.
    pub action: BulkAction,
    /// The instances.
    pub filter: InstanceFilter,
    /// Why (recorded in each instance's history).
    pub reason: String,
    /// Who asks (recorded).
    pub requested_by: String,
    /// Act; without it (the default) the request is a dry run.
    pub confirmed: bool,
    /// Instances in a dry run's sample.
    pub sample_max: usize,
}

impl BulkRequest {
    /// An unconfirmed request (a dry run until `confirmed` is set), with a sample of 10.
    pub fn new(
        action: BulkAction,
        filter: InstanceFilter,
        reason: impl Into<String>,
        requested_by: impl Into<String>,
    ) -> Self {
        Self {
            action,
            filter,
            reason: reason.into(),
            requested_by: requested_by.into(),
            confirmed: false,
            sample_max: 10,
        }
    }
}

/// What a bulk action did, or would do.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum BulkOutcome {
    /// Unconfirmed: how many instances the filter selects now, and the first of them (oldest
    /// first, the order the action takes them in).
    DryRun {
        /// Instances the filter selects.
        matching: u64,
        /// The first `sample_max` of them.
        sample: Vec<InstanceSummary>,
    },
    /// Confirmed: what happened.
    Done {
        /// Instances the action changed (terminations include the children they took along).
        acted: u64,
        /// Instances it left as they were: already so, or no longer in a state for it (they
        /// finished, or another operator acted first).
        unchanged: u64,
    },
}

/// Instances read per page while acting.
const PAGE: usize = 100;

/// Runs `request`: a dry run unless it is confirmed; confirmed, the action on every instance
/// the filter selects, oldest first, calling `progress` with the count so far after each
/// page. Instances that come to match while it runs may or may not be acted on. A store error
/// stops it (what was done stays done: running it again takes up the rest, since changed
/// instances no longer match a status filter).
pub async fn run_bulk(
    store: &dyn Store,
    request: &BulkRequest,
    mut progress: impl FnMut(u64),
) -> StoreResult<BulkOutcome> {
    if request.reason.trim().is_empty() {
        return Err(StoreError::Contract(
            "a bulk action needs a reason (it is recorded in every instance's history)".into(),
        ));
    }
    if !request.confirmed {
        let matching = store.count_instances(&request.filter).await?;
        let sample = store
            .list_instances(&InstanceQuery {
                filter: request.filter.clone(),
                order: InstanceOrder::CreatedAsc,
                page_size: request.sample_max,
                after: None,
            })
            .await?
            .instances;
        return Ok(BulkOutcome::DryRun { matching, sample });
    }
    let (mut acted, mut unchanged) = (0u64, 0u64);
    let mut after = None;
    loop {
        let page = store
            .list_instances(&InstanceQuery {
                filter: request.filter.clone(),
                order: InstanceOrder::CreatedAsc,
                page_size: PAGE,
                after: after.take(),
            })
            .await?;
        for instance in &page.instances {
            let one = OperatorRequest {
                instance_id: instance.instance_id.clone(),
                reason: request.reason.clone(),
                requested_by: request.requested_by.clone(),
            };
            match act(store, request.action, &one).await {
                Ok(0) => unchanged += 1,
                Ok(n) => acted += n,
                // Changed since the page was read (finished, purged, acted on by another).
                Err(
                    StoreError::InstanceFinished { .. }
                    | StoreError::InstanceNotFound(_)
                    | StoreError::NotAllowed { .. },
                ) => unchanged += 1,
                Err(error) => return Err(error),
            }
        }
        progress(acted + unchanged);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(BulkOutcome::Done { acted, unchanged }),
        }
    }
}

/// One instance's action; how many instances it changed.
async fn act(store: &dyn Store, action: BulkAction, request: &OperatorRequest) -> StoreResult<u64> {
    let changed = match action {
        BulkAction::Terminate(children) => {
            return Ok(store.terminate_instance(request, children).await?.len() as u64);
        }
        BulkAction::Suspend => store.suspend_instance(request).await?,
        BulkAction::Resume => store.resume_instance(request).await?,
        BulkAction::Retry => store.retry_instance(request).await?,
        BulkAction::Discard => {
            store.discard_instance(request).await?;
            true
        }
        BulkAction::Rewind => {
            return Ok(store.rewind_instance(request).await?.1.len() as u64);
        }
    };
    Ok(u64::from(changed))
}
