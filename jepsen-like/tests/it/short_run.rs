//! A short chaos run end to end: a split and a kill against all three
//! workloads on 3 nodes; the run must complete, be checked, and leave
//! everything the README promises in its output directory.
//!
//! Validity itself is not asserted here: that is the node's property, judged
//! by `herald-jepsen smoke` / `run`, and a node bug must not make the suite's
//! own test flaky. The verdict is printed.

use std::time::Duration;

use herald_jepsen::cluster::locate_node_binary;
use herald_jepsen::nemesis::Fault;
use herald_jepsen::run::{RunOptions, Schedule, run};
use herald_jepsen::workload::Workload;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_is_valid_and_writes_its_output() {
    let _one_at_a_time = crate::ONE_CHAOS_RUN.lock().await;
    let out = tempfile::tempdir().expect("tempdir");
    let opts = RunOptions {
        nodes: 3,
        duration: Duration::ZERO,
        faults: vec![Fault::Split, Fault::Kill],
        workloads: vec![Workload::Register, Workload::Pool, Workload::Session],
        seed: 3,
        out: out.path().to_path_buf(),
        node_bin: locate_node_binary(None).expect("herald-node binary (set HERALD_NODE_BIN)"),
        schedule: Schedule::EachOnce,
        hold: Duration::from_secs(2),
        gap: Duration::from_secs(1),
        stale_reads: Vec::new(),
        docker: false,
    };
    let summary = run(&opts).await.expect("run");
    eprintln!(
        "verdict: valid={} anomalies={:?} unknown={:?}",
        summary.valid,
        summary.check.kinds(),
        summary.check.unknown
    );
    assert!(summary.unread_keys.is_empty(), "{:?}", summary.unread_keys);
    assert_eq!(summary.faults.len(), 2);
    for c in summary.check.counts.values() {
        assert!(c.ok + c.fail + c.info > 0);
    }
    assert!(summary.check.counts["register/write"].ok > 0);
    for file in [
        "history.jsonl",
        "summary.json",
        "latency.svg",
        "throughput.svg",
        "logs/node1.log",
    ] {
        assert!(out.path().join(file).is_file(), "{file} missing");
    }
}
