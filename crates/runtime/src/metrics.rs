//! Metrics through the `metrics` facade (no exporter here). Names follow
//! `sluice_runtime_<name>_<unit>`, counters end in `_total`; the list is in
//! `docs/specs/metrics.md`. What is here so far counts the runtime's unhappy paths (failed,
//! poisoned and unrunnable work, lease renewals and losses), emitted when they happen, which is
//! never per event in a hot loop.

/// What kind of series a metric is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Monotonic count.
    Counter,
}

/// Every metric the runtime emits. Code refers to names only through this enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricName {
    /// Turns that could not be built or committed and were given back to be retried later
    /// (label `code`: the error's stable code).
    TurnsFailedTotal,
    /// Instances quarantined because their turns kept failing.
    TurnsQuarantinedTotal,
    /// Instances quarantined because one of their activities kept crashing its process.
    ActivitiesQuarantinedTotal,
    /// Deliveries given back because this process lacks the code (label `kind`:
    /// `orchestration` or `activity`).
    HandlerMissingTotal,
    /// Turn leases renewed while a turn was running.
    TurnLeaseRenewalsTotal,
    /// Turns whose lease was lost before their commit (the commit is refused).
    TurnLeasesLostTotal,
    /// Finished instances the background retention purged.
    InstancesPurgedTotal,
    /// Turns that took a history past a limit (label `limit`: `warn` or `max`).
    HistoryLimitTotal,
}

impl MetricName {
    /// Every metric.
    pub const ALL: [MetricName; 8] = [
        MetricName::TurnsFailedTotal,
        MetricName::TurnsQuarantinedTotal,
        MetricName::ActivitiesQuarantinedTotal,
        MetricName::HandlerMissingTotal,
        MetricName::TurnLeaseRenewalsTotal,
        MetricName::TurnLeasesLostTotal,
        MetricName::InstancesPurgedTotal,
        MetricName::HistoryLimitTotal,
    ];

    /// The exported name.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricName::TurnsFailedTotal => "sluice_runtime_turns_failed_total",
            MetricName::TurnsQuarantinedTotal => "sluice_runtime_turns_quarantined_total",
            MetricName::ActivitiesQuarantinedTotal => "sluice_runtime_activities_quarantined_total",
            MetricName::HandlerMissingTotal => "sluice_runtime_handler_missing_total",
            MetricName::TurnLeaseRenewalsTotal => "sluice_runtime_turn_lease_renewals_total",
            MetricName::TurnLeasesLostTotal => "sluice_runtime_turn_leases_lost_total",
            MetricName::InstancesPurgedTotal => "sluice_runtime_instances_purged_total",
            MetricName::HistoryLimitTotal => "sluice_runtime_history_limit_total",
        }
    }

    /// The series kind.
    pub fn kind(self) -> MetricKind {
        MetricKind::Counter
    }

    /// The labels every series of this metric carries.
    pub fn labels(self) -> &'static [&'static str] {
        match self {
            MetricName::TurnsFailedTotal => &["code"],
            MetricName::HandlerMissingTotal => &["kind"],
            MetricName::HistoryLimitTotal => &["limit"],
            _ => &[],
        }
    }
}

pub(crate) fn turn_failed(code: &'static str) {
    metrics::counter!(MetricName::TurnsFailedTotal.as_str(), "code" => code).increment(1);
}

pub(crate) fn turn_quarantined() {
    metrics::counter!(MetricName::TurnsQuarantinedTotal.as_str()).increment(1);
}

pub(crate) fn activity_quarantined() {
    metrics::counter!(MetricName::ActivitiesQuarantinedTotal.as_str()).increment(1);
}

pub(crate) fn handler_missing(kind: &'static str) {
    metrics::counter!(MetricName::HandlerMissingTotal.as_str(), "kind" => kind).increment(1);
}

pub(crate) fn turn_lease_renewed() {
    metrics::counter!(MetricName::TurnLeaseRenewalsTotal.as_str()).increment(1);
}

pub(crate) fn turn_lease_lost() {
    metrics::counter!(MetricName::TurnLeasesLostTotal.as_str()).increment(1);
}

pub(crate) fn instances_purged(count: u64) {
    metrics::counter!(MetricName::InstancesPurgedTotal.as_str()).increment(count);
}

pub(crate) fn history_limit(limit: &'static str) {
    metrics::counter!(MetricName::HistoryLimitTotal.as_str(), "limit" => limit).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name is documented in the spec with its kind and labels, and the spec lists no
    /// runtime metric the code lacks.
    #[test]
    fn the_spec_lists_every_metric() {
        let spec = include_str!("../../../docs/specs/metrics.md");
        for name in MetricName::ALL {
            let row = spec
                .lines()
                .find(|line| line.starts_with(&format!("| `{}` |", name.as_str())))
                .unwrap_or_else(|| panic!("{} is not in docs/specs/metrics.md", name.as_str()));
            assert!(row.contains("| counter |"), "{row}");
            for label in name.labels() {
                assert!(row.contains(&format!("`{label}`")), "{row} lacks {label}");
            }
        }
        let documented = spec
            .lines()
            .filter(|line| line.starts_with("| `sluice_runtime_"))
            .count();
        assert_eq!(documented, MetricName::ALL.len());
    }
}
