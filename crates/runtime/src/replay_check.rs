//! Checking a build's code against the histories of running instances before deploying it.

use crate::registry::Registry;
use serde::Serialize;
use sluice_history::{Failure, InstanceStatus, codes, execution_version};
use sluice_replay::{TurnOutcome, run_turn};
use sluice_store::{InstanceFilter, InstanceQuery, Store, StoreError};
use std::sync::Arc;

/// What [`replay_check`] found.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ReplayCheckReport {
    /// Instances whose current execution was replayed against the registered code.
    pub checked: u64,
    /// Instances the code would fail on its next turn, with the failure (nondeterminism,
    /// mostly: `nondeterminism.*` codes name the mismatch).
    pub failures: Vec<ReplayCheckFailure>,
    /// Instances whose orchestration (at the version they run) is not registered.
    pub unregistered: Vec<ReplayCheckFailure>,
}

impl ReplayCheckReport {
    /// True when every checked instance replays and every instance found has its code.
    pub fn passed(&self) -> bool {
        self.failures.is_empty() && self.unregistered.is_empty()
    }
}

/// One instance the check found a problem with.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReplayCheckFailure {
    /// The instance.
    pub instance_id: String,
    /// Its orchestration.
    pub name: String,
    /// The version of the code its execution runs.
    pub version: u32,
    /// Its current execution.
    pub execution_id: u64,
    /// What replay reported.
    pub failure: Failure,
}

/// The statuses whose instances still run turns: what a deploy must not break.
pub const UNFINISHED: [InstanceStatus; 3] = [
    InstanceStatus::Running,
    InstanceStatus::Suspended,
    InstanceStatus::Quarantined,
];

/// Replays the current execution of every unfinished instance that `filter` selects (its
/// statuses, when empty, become [`UNFINISHED`]) against the code in `registry`, and reports
/// each instance that the code would fail on its next turn, with the failure.
///
/// It reads only: it takes no work, holds no lease and writes nothing, so it runs beside live
/// runtimes, from a deploy pipeline, on the build about to be deployed. Histories are read one
/// instance at a time, listings a page at a time.
pub async fn replay_check(
    store: &dyn Store,
    registry: &Registry,
    filter: &InstanceFilter,
) -> Result<ReplayCheckReport, StoreError> {
    let mut filter = filter.clone();
    if filter.statuses.is_empty() {
        filter.statuses = UNFINISHED.to_vec();
    }
    let mut query = InstanceQuery {
        filter,
        page_size: 200,
        ..InstanceQuery::default()
    };
    let mut report = ReplayCheckReport::default();
    loop {
        let page = store.list_instances(&query).await?;
        for instance in &page.instances {
            let history = store
                .read_history(&instance.instance_id, instance.execution_id, 0)
                .await?;
            let version = execution_version(&history);
            let problem = |failure: Failure| ReplayCheckFailure {
                instance_id: instance.instance_id.clone(),
                name: instance.name.clone(),
                version,
                execution_id: instance.execution_id,
                failure,
            };
            if history.is_empty() {
                // Not started yet (or restarted): it will start on the newest code.
                continue;
            }
            let Some(code) = registry.code(&instance.name, version) else {
                report.unregistered.push(problem(Failure::new(
                    codes::ORCHESTRATION_NOT_REGISTERED,
                    format!(
                        "no orchestration named '{}' is registered at version {version}",
                        instance.name
                    ),
                )));
                continue;
            };
            report.checked += 1;
            let result = run_turn(
                code.as_ref(),
                &instance.instance_id,
                instance.execution_id,
                Arc::new(history),
                Vec::new(),
            );
            match result.outcome {
                TurnOutcome::Waiting => {}
                TurnOutcome::Failed(failure) => report.failures.push(problem(failure)),
                // A replay with no new events cannot finish without an early-finish failure;
                // anything else is reported as it is.
                other => report.failures.push(problem(Failure::new(
                    codes::NONDETERMINISM_EARLY_FINISH,
                    format!("replay ended the execution: {other:?}"),
                ))),
            }
        }
        match page.next {
            Some(next) => query.after = Some(next),
            None => return Ok(report),
        }
    }
}
