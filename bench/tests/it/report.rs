//! Table and plot rendering.

use herald_bench::procfs::{parse_cpu_ticks, parse_status_kb};
use herald_bench::report::{
    ETCD, Failover, HERALD, RunResult, comparison_table, failover_table, ratio, svg,
};
use herald_bench::stats::Summary;

fn run(workload: &str, system: &str, throughput: f64, p99: f64) -> RunResult {
    RunResult {
        workload: workload.into(),
        system: system.into(),
        concurrency: 16,
        summary: Summary {
            throughput,
            p50_ms: p99 / 4.0,
            p99_ms: p99,
            p999_ms: p99 * 2.0,
            ..Summary::default()
        },
        cpu_seconds: 1.5,
        peak_rss_bytes: 64 << 20,
        data_bytes: 3 << 20,
        first_error: None,
    }
}

#[test]
fn table_puts_both_systems_and_ratios_on_one_row() {
    let runs = vec![
        run("write-c16", HERALD, 8000.0, 4.0),
        run("write-c16", ETCD, 4000.0, 8.0),
        run("read-c64", HERALD, 1000.0, 1.0),
    ];
    let table = comparison_table(&runs);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].starts_with("| workload | in flight | Herald ops/s"));
    assert_eq!(
        lines[2],
        "| write-c16 | 16 | 8000 | 4000 | 2.00 | 1.00 / 4.00 / 8.00 | 2.00 / 8.00 / 16.00 | 0.50 | 0 / 0 | 1.5 / 1.5 | 64 / 64 | 3.0 / 3.0 |"
    );
    // etcd missing (--skip-etcd): dashes, no ratio.
    assert!(
        lines[3].starts_with("| read-c64 | 16 | 1000 | — | — |"),
        "{}",
        lines[3]
    );
    // Every row has as many cells as the header.
    let cells = |l: &str| l.matches('|').count();
    assert!(lines.iter().all(|l| cells(l) == cells(lines[0])));
}

#[test]
fn ratio_handles_zero() {
    assert_eq!(ratio(3.0, 2.0), "1.50");
    assert_eq!(ratio(3.0, 0.0), "—");
}

#[test]
fn failover_table_lists_gaps_and_median() {
    let table = failover_table(&[Failover {
        system: HERALD.into(),
        gaps_ms: vec![700.0, 500.4, 900.0],
        median_ms: Some(700.0),
    }]);
    assert!(
        table.contains("| herald | 3 | 700, 500, 900 | 700 |"),
        "{table}"
    );
}

#[test]
fn svg_has_a_bar_per_run_and_escapes_names() {
    let runs = vec![
        run("write<c16>", HERALD, 8000.0, 4.0),
        run("write<c16>", ETCD, 4000.0, 8.0),
    ];
    let svg = svg(&runs);
    assert!(svg.starts_with("<svg "));
    assert!(svg.trim_end().ends_with("</svg>"));
    // Two panels × two systems, plus two legend swatches and the background.
    assert_eq!(svg.matches("<rect").count(), 4 + 2 + 1);
    assert!(svg.contains("write&lt;c16&gt;"));
    assert!(!svg.contains("write<c16>"));
}

#[test]
fn proc_parsing() {
    let stat =
        "1234 (herald node) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 100 0 0";
    assert_eq!(parse_cpu_ticks(stat), Some(300));
    let status = "Name:\therald-node\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n";
    assert_eq!(parse_status_kb(status, "VmRSS"), Some(102_400));
    assert_eq!(parse_status_kb(status, "VmHWM"), Some(204_800));
    assert_eq!(parse_status_kb(status, "VmSwap"), None);
}

fn link(system: &str, items: u64, before: u64, after: u64) -> herald_bench::report::LinkResult {
    herald_bench::report::LinkResult {
        system: system.into(),
        target_items: 1000,
        items,
        load_seconds: 2.0,
        rss_before: [("a".to_string(), before), ("b".to_string(), before)].into(),
        rss_after: [("a".to_string(), after), ("b".to_string(), before + 100)].into(),
        counts: Summary {
            throughput: 5000.0,
            p50_ms: 1.0,
            p99_ms: 4.0,
            ..Summary::default()
        },
        lookups: Summary {
            ops: 20,
            p50_ms: 0.5,
            p99_ms: 0.9,
            ..Summary::default()
        },
        count_concurrency: 64,
        lookup_concurrency: 1,
        ..Default::default()
    }
}

#[test]
fn link_table_has_a_column_per_system_and_memory_per_item() {
    let herald = link(HERALD, 1000, 1 << 20, (1 << 20) + 200_000);
    assert_eq!(herald.rss_growth_per_item(), Some(200.0));
    assert_eq!(link(ETCD, 0, 0, 0).rss_growth_per_item(), None);
    let table = herald_bench::report::link_table(&[herald, link(ETCD, 500, 0, 50_000)]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0], "| | herald | etcd |", "{table}");
    assert_eq!(lines[1], "|---|---:|---:|");
    assert!(
        table.contains("| items loaded (asked) | 1000 (1000) | 500 (1000) |"),
        "{table}"
    );
    assert!(
        table.contains("| top-20 lookup p50 / p99 ms | 0.50 / 0.90 | 0.50 / 0.90 |"),
        "{table}"
    );
    assert!(
        table.contains("| RSS growth per item, bytes (largest process) | 200 | 100 |"),
        "{table}"
    );
}
