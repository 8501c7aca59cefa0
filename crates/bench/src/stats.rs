//! Percentiles, through one HDR histogram per measurement (`hdrhistogram`, three significant
//! digits: a reported percentile is within 0.1% of the exact one).

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latency percentiles in milliseconds; the JSON keys are part of the benchmarks' contract.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct LatencyMs {
    pub p50: f64,
    #[serde(default)]
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// Latencies recorded in microseconds, each with a weight (the rows a write carried).
pub(crate) struct Latencies(Histogram<u64>);

impl Latencies {
    pub(crate) fn new() -> Latencies {
        // Three significant digits; the histogram grows to the largest value recorded.
        Latencies(Histogram::new(3).expect("3 significant digits is a valid precision"))
    }

    /// Records `count` samples of `ms` milliseconds.
    pub(crate) fn record_ms(&mut self, ms: f64, count: u64) {
        let micros = (ms * 1e3).round().max(0.0) as u64;
        // Auto-resizing histograms only refuse values past u64's range, which a u64 is not.
        self.0
            .record_n(micros, count)
            .expect("an auto-resizing histogram records any value");
    }

    /// Samples recorded (rows, with the weights).
    pub(crate) fn count(&self) -> u64 {
        self.0.len()
    }

    /// One quantile (0.95 for the 95th percentile) in milliseconds, or `None` when nothing was
    /// recorded.
    pub(crate) fn quantile_ms(&self, quantile: f64) -> Option<f64> {
        (!self.0.is_empty()).then(|| self.0.value_at_quantile(quantile) as f64 / 1e3)
    }

    /// The percentiles, or `None` when nothing was recorded.
    pub(crate) fn summary(&self) -> Option<LatencyMs> {
        if self.0.is_empty() {
            return None;
        }
        let ms = |micros: u64| micros as f64 / 1e3;
        Some(LatencyMs {
            p50: ms(self.0.value_at_quantile(0.50)),
            p90: ms(self.0.value_at_quantile(0.90)),
            p99: ms(self.0.value_at_quantile(0.99)),
            max: ms(self.0.max()),
        })
    }
}

impl FromIterator<(f64, u64)> for Latencies {
    fn from_iter<I: IntoIterator<Item = (f64, u64)>>(samples: I) -> Latencies {
        let mut latencies = Latencies::new();
        for (ms, count) in samples {
            latencies.record_ms(ms, count);
        }
        latencies
    }
}

/// The median of a few figures (the rounds of a benchmark), the mean of the middle two when
/// their number is even.
pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_percentiles_count_rows_not_samples() {
        let latencies: Latencies = [(1.0, 98), (50.0, 1), (100.0, 1)].into_iter().collect();
        let summary = latencies.summary().unwrap();
        assert_eq!(summary.p50, 1.0);
        assert_eq!(summary.p90, 1.0);
        assert!((summary.p99 - 50.0).abs() < 0.05, "{summary:?}");
        assert!((summary.max - 100.0).abs() < 0.1, "{summary:?}");
    }

    #[test]
    fn nothing_recorded_has_no_summary() {
        assert!(Latencies::new().summary().is_none());
    }

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
