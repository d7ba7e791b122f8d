//! Issue 23 item 9 on real processes: 3 nodes, heartbeating TTL users (and
//! silent ones), and the links between the two followers cut while both
//! still reach the leader. Heartbeating users must never be expired; silent
//! ones must be, within the TTL plus grace.
//!
//! Unlike `short_run`, validity is asserted: it is what this test is for.
//! Against a node from before the agreed ownership ring (each node built
//! its ring from its own probes) it fails with `live-user-expired`:
//! `HERALD_NODE_BIN=<old herald-node> cargo test --release -p herald-jepsen
//! --test it link_cut_ttl`.

use std::time::Duration;

use herald_jepsen::cluster::locate_node_binary;
use herald_jepsen::nemesis::Fault;
use herald_jepsen::run::{RunOptions, Schedule, run};
use herald_jepsen::workload::Workload;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeating_users_survive_a_cut_between_two_followers() {
    let _one_at_a_time = crate::ONE_CHAOS_RUN.lock().await;
    let out = tempfile::tempdir().expect("tempdir");
    let opts = RunOptions {
        nodes: 3,
        duration: Duration::ZERO,
        // Twice, so both cut modes (stall, drop) are likely to be seen.
        faults: vec![Fault::LinkCut, Fault::LinkCut],
        workloads: vec![Workload::Ttl],
        seed: 9,
        out: out.path().to_path_buf(),
        node_bin: locate_node_binary(None).expect("herald-node binary (set HERALD_NODE_BIN)"),
        schedule: Schedule::EachOnce,
        hold: herald_jepsen::nemesis::LINK_CUT_HOLD,
        gap: Duration::from_secs(2),
        stale_reads: Vec::new(),
        docker: false,
    };
    let summary = run(&opts).await.expect("run");
    for a in &summary.check.anomalies {
        eprintln!("{} [{}]: {}", a.kind, a.key, a.message);
    }
    for f in &summary.faults {
        eprintln!("fault {}: {}", f.name, f.detail);
    }
    assert!(summary.check.counts["ttl/heartbeat"].ok > 0);
    assert!(
        summary.valid,
        "anomalies {:?} (history in {})",
        summary.check.kinds(),
        out.keep().display()
    );
}
