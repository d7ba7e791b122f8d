//! Percentile, median and gap math.

use std::time::Duration;

use herald_bench::stats::{Latencies, Summary, longest_gap_after, median};

#[test]
fn percentiles_of_a_known_distribution() {
    let mut lat = Latencies::new();
    // 1..=1000 ms, one each.
    for ms in 1..=1000u64 {
        lat.record(Duration::from_millis(ms));
    }
    let s = Summary::new(&lat, 3, Duration::from_secs(10));
    assert_eq!(s.ops, 1000);
    assert_eq!(s.errors, 3);
    assert!((s.throughput - 100.0).abs() < 1e-9);
    // HDR keeps 3 significant digits: within 0.1 %.
    let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 1e-9;
    assert!(close(s.p50_ms, 500.0), "p50 {}", s.p50_ms);
    assert!(close(s.p99_ms, 990.0), "p99 {}", s.p99_ms);
    assert!(close(s.p999_ms, 999.0), "p99.9 {}", s.p999_ms);
    assert!(close(s.max_ms, 1000.0), "max {}", s.max_ms);
}

#[test]
fn merging_workers_is_the_same_as_one_histogram() {
    let mut a = Latencies::new();
    let mut b = Latencies::new();
    let mut all = Latencies::new();
    for us in 1..=5000u64 {
        let d = Duration::from_micros(us * 7);
        if us % 3 == 0 { &mut a } else { &mut b }.record(d);
        all.record(d);
    }
    a.merge(&b);
    assert_eq!(a.count(), all.count());
    for q in [0.5, 0.9, 0.99, 0.999] {
        assert_eq!(a.quantile_micros(q), all.quantile_micros(q));
    }
}

#[test]
fn empty_and_extreme_latencies() {
    let empty = Latencies::new();
    let s = Summary::new(&empty, 0, Duration::ZERO);
    assert_eq!((s.ops, s.throughput, s.p99_ms), (0, 0.0, 0.0));
    let mut lat = Latencies::new();
    lat.record(Duration::ZERO); // clamped up to 1 µs
    lat.record(Duration::from_secs(3600)); // clamped down to 60 s
    assert_eq!(lat.count(), 2);
    assert!(lat.max_micros() >= 59_000_000);
}

#[test]
fn median_odd_even_empty() {
    assert_eq!(median(&[]), None);
    assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
    assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
}

#[test]
fn gap_counts_the_outage_after_the_kill() {
    // Acks every 10 ms until 1.0 s, a few replies in flight at 1.005 and
    // 1.008, then nothing until 1.6 s: the outage is 1.008 → 1.6.
    let mut acks: Vec<f64> = (0..=100).map(|i| f64::from(i) / 100.0).collect();
    acks.extend([1.005, 1.008, 1.6, 1.61, 1.62]);
    let gap = longest_gap_after(&acks, 1.0).expect("acks");
    assert!((gap - 0.592).abs() < 1e-9, "{gap}");
    // Pauses before the kill do not count.
    acks.push(0.001);
    let mut before: Vec<f64> = vec![0.0, 0.5, 0.51, 0.52];
    before.extend([0.53, 0.54]);
    let gap = longest_gap_after(&before, 0.52).expect("acks");
    assert!((gap - 0.01).abs() < 1e-9, "{gap}");
    assert_eq!(longest_gap_after(&[], 1.0), None);
}
