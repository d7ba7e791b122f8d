//! The checker catches a real stale read: node 3 runs with
//! `[testing] stale_reads = true` (linearizable reads served locally, no
//! ReadIndex), gets cut off, misses a write, and answers a read with the old
//! value. The history recorded from real clients must be reported.

use std::time::Duration;

use herald_jepsen::checker;
use herald_jepsen::cluster::{Cluster, ClusterOptions, locate_node_binary};
use herald_jepsen::history::{Recorder, pair};
use herald_jepsen::proxy::LinkMode;
use herald_jepsen::workload::{register_read, register_write, worker_client_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_serving_local_reads_is_caught() {
    let _one_at_a_time = crate::ONE_CHAOS_RUN.lock().await;
    let node_bin = locate_node_binary(None).expect("herald-node binary (set HERALD_NODE_BIN)");
    let mut cluster = Cluster::start(&ClusterOptions {
        nodes: 3,
        spare: false,
        node_bin,
        stale_reads: vec![3],
        faultfs: false,
        snapshot_every: None,
        docker: false,
    })
    .await
    .expect("start");
    cluster
        .init(1, Duration::from_secs(30))
        .await
        .expect("cluster init");
    cluster
        .wait_for_leader(&[1, 2, 3], Duration::from_secs(30))
        .await
        .expect("leader");
    let on1 = cluster
        .client_for(1, worker_client_config(None))
        .expect("client");
    let on3 = cluster
        .client_for(3, worker_client_config(None))
        .expect("client");
    let rec = Recorder::new();
    let key = "stale-uid";

    // v=1 everywhere: write through node 1, read on node 3 until it has it.
    let mut written = false;
    for _ in 0..50 {
        if register_write(&rec, &on1, 1, key, 1).await.is_ok() {
            written = true;
            break;
        }
    }
    assert!(written, "first write never succeeded");
    let mut seen = 0;
    for _ in 0..100 {
        seen = register_read(&rec, &on3, 2, key, false).await.unwrap_or(0);
        if seen == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, 1, "node 3 never applied the first write");

    // Cut node 3 off; the majority takes v=2.
    cluster.partition(&[vec![3], vec![1, 2]], LinkMode::Stall);
    let mut written = false;
    for _ in 0..50 {
        if register_write(&rec, &on1, 1, key, 2).await.is_ok() {
            written = true;
            break;
        }
    }
    assert!(written, "the majority never took the second write");

    // Node 3 answers from its stale state.
    let stale = register_read(&rec, &on3, 2, key, false)
        .await
        .expect("a stale_reads node answers while cut off");
    assert_eq!(stale, 1, "node 3 should not have v=2 while partitioned");

    let report = checker::check(&pair(&rec.events()), Duration::from_secs(10));
    assert!(!report.valid, "the checker must reject: {report:#?}");
    assert_eq!(
        report.kinds().into_keys().collect::<Vec<_>>(),
        ["not-linearizable"]
    );
    let anomaly = &report.anomalies[0];
    let last = anomaly.ops.last().expect("ops named");
    assert_eq!(last.f, "read");
    assert_eq!(last.process, 2, "the stale read on node 3 is the one named");
}
