//! Latency histograms and the summary of one timed run.
//!
//! Latencies are recorded in microseconds in an HDR histogram (3 significant
//! digits, up to one minute), one histogram per worker task, merged at the
//! end: no lock on the hot path.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The highest latency a histogram records, in µs; longer ones are clamped.
const MAX_MICROS: u64 = 60_000_000;

/// One worker's latencies, in microseconds.
#[derive(Debug, Clone)]
pub struct Latencies {
    hist: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies::new()
    }
}

impl Latencies {
    /// An empty histogram.
    pub fn new() -> Latencies {
        // Bounds are constants known to be valid: 1 µs .. 60 s, 3 digits.
        let hist = Histogram::new_with_bounds(1, MAX_MICROS, 3)
            .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid"));
        Latencies { hist }
    }

    /// Records one latency (clamped to 1 µs .. 60 s).
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(MAX_MICROS);
        self.hist.saturating_record(micros.clamp(1, MAX_MICROS));
    }

    /// Adds another worker's latencies.
    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The latency at `quantile` (0..=1), in µs; 0 when empty.
    pub fn quantile_micros(&self, quantile: f64) -> u64 {
        if self.hist.is_empty() {
            return 0;
        }
        self.hist.value_at_quantile(quantile)
    }

    /// The largest latency, in µs; 0 when empty.
    pub fn max_micros(&self) -> u64 {
        if self.hist.is_empty() {
            0
        } else {
            self.hist.max()
        }
    }
}

/// Throughput and latency of one timed run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Successful operations completed in the measured window.
    pub ops: u64,
    /// Operations that failed in the measured window.
    pub errors: u64,
    /// The measured window, in seconds.
    pub seconds: f64,
    /// Successful operations per second.
    pub throughput: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Largest latency, ms.
    pub max_ms: f64,
}

impl Summary {
    /// The summary of `latencies` (successes only) over a window of `window`.
    pub fn new(latencies: &Latencies, errors: u64, window: Duration) -> Summary {
        let seconds = window.as_secs_f64();
        let ops = latencies.count();
        let ms = |micros: u64| micros as f64 / 1000.0;
        Summary {
            ops,
            errors,
            seconds,
            throughput: if seconds > 0.0 {
                ops as f64 / seconds
            } else {
                0.0
            },
            p50_ms: ms(latencies.quantile_micros(0.50)),
            p99_ms: ms(latencies.quantile_micros(0.99)),
            p999_ms: ms(latencies.quantile_micros(0.999)),
            max_ms: ms(latencies.max_micros()),
        }
    }
}

/// The median of `values` (the mean of the middle two for an even count);
/// `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    })
}

/// The longest pause between consecutive acknowledgements at or after
/// `from` (ack times in seconds on any common clock, in any order), counting
/// the pause from the last ack before `from` to the first after it. This is
/// the write outage around a leader kill at `from`: replies already on the
/// wire when the leader died do not hide the outage that follows them.
pub fn longest_gap_after(acks: &[f64], from: f64) -> Option<f64> {
    let mut sorted = acks.to_vec();
    sorted.sort_by(f64::total_cmp);
    let start = sorted.iter().rposition(|&t| t <= from).unwrap_or(0);
    sorted[start..]
        .windows(2)
        .map(|w| w[1] - w[0])
        .max_by(f64::total_cmp)
}
