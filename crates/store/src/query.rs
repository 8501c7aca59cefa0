//! Finding instances: filters, orders, pages and counts ([`crate::Store::list_instances`],
//! [`crate::Store::instance_counts`]).

use serde::Serialize;
use sluice_history::{Failure, InstanceStatus, TimestampMs};

/// Largest page [`crate::Store::list_instances`] returns (`page_size` above it is cut to it).
pub const PAGE_SIZE_MAX: usize = 1_000;

/// A time range in milliseconds since the epoch: `from_ms <= t < to_ms`, either end open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeRange {
    /// Inclusive lower end.
    pub from_ms: Option<TimestampMs>,
    /// Exclusive upper end.
    pub to_ms: Option<TimestampMs>,
}

impl TimeRange {
    /// Whether neither end is set.
    pub fn is_open(&self) -> bool {
        self.from_ms.is_none() && self.to_ms.is_none()
    }

    /// Whether `at` lies in the range (`None`, a time not yet reached, lies in an open range only).
    pub fn contains(&self, at: Option<TimestampMs>) -> bool {
        match at {
            None => self.is_open(),
            Some(at) => {
                self.from_ms.is_none_or(|from| at >= from) && self.to_ms.is_none_or(|to| at < to)
            }
        }
    }
}

/// Which instances a listing returns; every field set narrows it (an empty filter: all).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InstanceFilter {
    /// Any of these statuses (empty: any status).
    pub statuses: Vec<InstanceStatus>,
    /// This orchestration name.
    pub name: Option<String>,
    /// Created in this range.
    pub created: TimeRange,
    /// Finished (completed, failed or cancelled) in this range; a set range excludes unfinished
    /// instances. Stores may rely on a finished instance's last update being its finish.
    pub finished: TimeRange,
    /// Ids that start with this text.
    pub id_prefix: Option<String>,
    /// Sub-orchestrations of this parent instance.
    pub parent: Option<String>,
}

impl InstanceFilter {
    /// Whether `instance` passes the filter (what the stores' queries compute, for tests and
    /// for callers that filter what they already hold).
    pub fn matches(&self, instance: &InstanceSummary) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&instance.status))
            && self.name.as_ref().is_none_or(|name| *name == instance.name)
            && self.created.contains(Some(instance.created_at_ms))
            && self.finished.contains(instance.finished_at_ms)
            && self
                .id_prefix
                .as_ref()
                .is_none_or(|prefix| instance.instance_id.starts_with(prefix.as_str()))
            && self
                .parent
                .as_ref()
                .is_none_or(|parent| instance.parent_id.as_ref() == Some(parent))
    }

    /// The statuses without repeats, in their stored order.
    pub fn distinct_statuses(&self) -> Vec<InstanceStatus> {
        let mut statuses = self.statuses.clone();
        statuses.sort_by_key(|status| status.as_str());
        statuses.dedup();
        statuses
    }
}

/// Which finished instances a bulk purge removes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PurgeFilter {
    /// Any of these final statuses (empty: every final status; others match nothing).
    pub statuses: Vec<InstanceStatus>,
    /// Finished before this time, in milliseconds since the epoch.
    pub finished_before_ms: TimestampMs,
    /// Only this orchestration.
    pub name: Option<String>,
}

impl PurgeFilter {
    /// The final statuses it covers, without repeats.
    pub fn final_statuses(&self) -> Vec<InstanceStatus> {
        let mut statuses: Vec<InstanceStatus> = if self.statuses.is_empty() {
            crate::listing::ALL_STATUSES.to_vec()
        } else {
            self.statuses.clone()
        };
        statuses.retain(|status| status.is_terminal());
        statuses.sort_by_key(|status| status.as_str());
        statuses.dedup();
        statuses
    }

    /// The same selection as a listing filter (for a dry run's sample).
    pub fn as_listing(&self) -> InstanceFilter {
        InstanceFilter {
            statuses: self.final_statuses(),
            name: self.name.clone(),
            finished: TimeRange {
                from_ms: None,
                to_ms: Some(self.finished_before_ms),
            },
            ..InstanceFilter::default()
        }
    }
}

/// The order of a listing. Ties on the time are broken by id, the same way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceOrder {
    /// Newest first by creation time. The default.
    #[default]
    CreatedDesc,
    /// Oldest first by creation time.
    CreatedAsc,
    /// Most recently updated first.
    UpdatedDesc,
    /// Least recently updated first.
    UpdatedAsc,
}

impl InstanceOrder {
    /// Whether the order is by the last update (else by creation).
    pub fn by_update(self) -> bool {
        matches!(self, Self::UpdatedDesc | Self::UpdatedAsc)
    }

    /// Whether the order is descending.
    pub fn descending(self) -> bool {
        matches!(self, Self::CreatedDesc | Self::UpdatedDesc)
    }

    /// The time an instance is ordered by.
    pub fn key_of(self, instance: &InstanceSummary) -> TimestampMs {
        if self.by_update() {
            instance.updated_at_ms
        } else {
            instance.created_at_ms
        }
    }
}

/// Where the next page starts: just after this instance in the listing's order. New instances
/// do not move it (an instance is created once, with its creation time); in an order by update,
/// an instance updated while paging moves, as it does in every such listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageCursor {
    /// The ordering time of the last instance returned.
    pub key_ms: TimestampMs,
    /// Its id.
    pub instance_id: String,
}

/// Why a cursor's text could not be read.
#[derive(Debug, thiserror::Error)]
#[error("not a page cursor: '{0}' (pass on the `next` of a page as it was given)")]
pub struct BadCursor(String);

impl std::fmt::Display for PageCursor {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}:{}", self.key_ms, self.instance_id)
    }
}

impl std::str::FromStr for PageCursor {
    type Err = BadCursor;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (key, id) = text.split_once(':').ok_or_else(|| BadCursor(text.into()))?;
        let key_ms = key.parse().map_err(|_| BadCursor(text.into()))?;
        Ok(PageCursor {
            key_ms,
            instance_id: id.to_string(),
        })
    }
}

impl Serialize for PageCursor {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// One page of a listing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InstanceQuery {
    /// Which instances.
    pub filter: InstanceFilter,
    /// In which order.
    pub order: InstanceOrder,
    /// At most this many (cut to [`PAGE_SIZE_MAX`]; 0 returns an empty page).
    pub page_size: usize,
    /// Start after this instance (`None`: from the start).
    pub after: Option<PageCursor>,
}

impl InstanceQuery {
    /// The page size the stores use.
    pub fn limit(&self) -> usize {
        self.page_size.min(PAGE_SIZE_MAX)
    }

    /// Whether `instance` comes after the cursor in this order.
    pub fn after_cursor(&self, instance: &InstanceSummary) -> bool {
        let Some(cursor) = &self.after else {
            return true;
        };
        let key = (self.order.key_of(instance), instance.instance_id.as_str());
        let at = (cursor.key_ms, cursor.instance_id.as_str());
        if self.order.descending() {
            key < at
        } else {
            key > at
        }
    }
}

/// An instance as listings show it: everything but its input and output.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InstanceSummary {
    /// Its id.
    pub instance_id: String,
    /// Orchestration name.
    pub name: String,
    /// Status.
    pub status: InstanceStatus,
    /// Current execution.
    pub execution_id: u64,
    /// Failure, when failed, cancelled or quarantined.
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

/// A page of a listing.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct InstancePage {
    /// The instances, in the query's order.
    pub instances: Vec<InstanceSummary>,
    /// Where the next page starts; `None` when this page is the last.
    pub next: Option<PageCursor>,
}

/// How many instances of one orchestration have one status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstanceCount {
    /// The status.
    pub status: InstanceStatus,
    /// The orchestration name.
    pub name: String,
    /// How many.
    pub count: u64,
}

/// How an execution ended, or the instance's status for the current one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    /// An earlier execution that continued as new.
    ContinuedAsNew,
    /// The current execution, with the instance's status.
    #[serde(untagged)]
    Current(InstanceStatus),
    /// An earlier execution that ended so (completed, failed, cancelled, terminated), after
    /// which an operator restarted or rewound the instance.
    #[serde(untagged)]
    Ended(InstanceStatus),
}

impl ExecutionStatus {
    /// The text form (`continued_as_new`, or the instance status's).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ContinuedAsNew => "continued_as_new",
            Self::Current(status) | Self::Ended(status) => status.as_str(),
        }
    }

    /// How an earlier execution ended, from the last events of its history (an operator's
    /// restart or rewind is recorded after the end).
    pub fn of_ended(tail: &[sluice_history::Event]) -> Self {
        use sluice_history::Event;
        let end = tail.iter().rev().find(|event| event.is_terminal());
        match end {
            Some(Event::OrchestrationCompleted { .. }) => Self::Ended(InstanceStatus::Completed),
            Some(Event::OrchestrationFailed { .. } | Event::Discarded { .. }) => {
                Self::Ended(InstanceStatus::Failed)
            }
            Some(Event::Cancelled { .. }) => Self::Ended(InstanceStatus::Cancelled),
            Some(Event::Terminated { .. }) => Self::Ended(InstanceStatus::Terminated),
            _ => Self::ContinuedAsNew,
        }
    }
}

/// One execution of an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExecutionInfo {
    /// Its id (1 for the first).
    pub execution_id: u64,
    /// How it ended, or the instance's status for the current one.
    pub status: ExecutionStatus,
    /// When it started running (`None` while the instance is pending).
    pub started_at_ms: Option<TimestampMs>,
    /// When it ended (the continue-as-new, or the instance's finish).
    pub finished_at_ms: Option<TimestampMs>,
    /// Events in its history.
    pub history_len: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(id: &str, created: i64) -> InstanceSummary {
        InstanceSummary {
            instance_id: id.into(),
            name: "orders".into(),
            status: InstanceStatus::Running,
            execution_id: 1,
            failure: None,
            custom_status: None,
            parent_id: None,
            created_at_ms: created,
            started_at_ms: Some(created),
            updated_at_ms: created,
            finished_at_ms: None,
        }
    }

    #[test]
    fn cursors_round_trip_ids_with_colons() {
        let cursor = PageCursor {
            key_ms: -5,
            instance_id: "a:b:c".into(),
        };
        let text = cursor.to_string();
        assert_eq!(text.parse::<PageCursor>().unwrap(), cursor);
        assert!("nonsense".parse::<PageCursor>().is_err());
        assert!("x:y".parse::<PageCursor>().is_err());
    }

    #[test]
    fn the_cursor_follows_the_order() {
        let mut query = InstanceQuery {
            after: Some(PageCursor {
                key_ms: 10,
                instance_id: "b".into(),
            }),
            ..InstanceQuery::default()
        };
        assert!(query.after_cursor(&summary("a", 10)));
        assert!(!query.after_cursor(&summary("c", 10)));
        assert!(query.after_cursor(&summary("z", 9)));
        query.order = InstanceOrder::CreatedAsc;
        assert!(query.after_cursor(&summary("c", 10)));
        assert!(!query.after_cursor(&summary("b", 10)));
    }

    #[test]
    fn an_unfinished_instance_is_outside_every_set_finish_range() {
        let filter = InstanceFilter {
            finished: TimeRange {
                from_ms: None,
                to_ms: Some(100),
            },
            ..InstanceFilter::default()
        };
        assert!(!filter.matches(&summary("a", 1)));
        assert!(InstanceFilter::default().matches(&summary("a", 1)));
    }
}
