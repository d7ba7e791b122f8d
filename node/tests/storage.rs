//! Storage faults on real `herald-node` processes: a node whose disk fails
//! stops (non-zero exit, the cause in its log, no user data) while the
//! cluster goes on; a node under the free-space alarm refuses new writes
//! but keeps replicating, and says so in `Admin.Status` and `/metrics`.

mod common;

use std::collections::BTreeMap;

use ::herald_client::proto::*;
use common::TestCluster;

fn login(uid: &str) -> LoginRequest {
    LoginRequest {
        uid: uid.into(),
        sid: 4242,
        client_type: "pc".into(),
        accept_strangers: true,
        ext: BTreeMap::from([("city".to_string(), "secret-city".to_string())])
            .into_iter()
            .collect(),
        ttl_ms: 0,
    }
}

/// Makes node 1 the leader (the lowest number prefers to lead anyway) so
/// the faulty node 3 is a follower.
async fn leader_is_one(c: &TestCluster) {
    let leader = c.wait_leader().await;
    if leader != 1 {
        let mut admin = c.admin(leader);
        let _ = admin.transfer_leader(TransferLeaderRequest { to: 1 }).await;
        c.wait_for("node 1 to lead", || async {
            (c.status(1).await?.role == "leader").then_some(())
        })
        .await;
    }
}

/// issue 16: a follower whose fdatasync failed stayed up as a zombie and
/// logged a whole command. Now it exits non-zero with the operation and
/// the file in its log, no user data anywhere in it, and the other two
/// keep acknowledging writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_disk_fails_stops_and_the_cluster_goes_on() {
    let mut c = TestCluster::start_custom(3, common::timings(), |cfg| {
        if cfg.id == 3 {
            cfg.testing_mode = true;
            cfg.testing.fail_log_sync_after = Some(40);
        }
    })
    .await;
    leader_is_one(&c).await;
    let mut client = c.client(1);
    for i in 0..200 {
        client
            .login(login(&format!("secret-user-{i}")))
            .await
            .expect("acknowledged by nodes 1 and 2");
    }
    let status = c.wait_exit(3).await;
    assert!(!status.success(), "exit status {status:?}");
    let log = c.log_text(3);
    assert!(
        log.contains("fdatasync of log segment") && log.contains("os error 5"),
        "{log}"
    );
    for secret in ["secret-user", "secret-city", "4242"] {
        assert!(!log.contains(secret), "{secret} in node 3's log:\n{log}");
    }
    client
        .login(login("after"))
        .await
        .expect("nodes 1 and 2 still a quorum");
}

/// The free-space alarm refuses writes on the node that raised it, naming
/// the alarm and the threshold, while Raft keeps replicating to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_under_the_free_space_alarm_refuses_writes_and_keeps_replicating() {
    // More free space than any disk has (TOML integers stop at i64::MAX).
    let huge = i64::MAX as u64;
    let c = TestCluster::start_custom(3, common::timings(), |cfg| {
        if cfg.id == 3 {
            cfg.storage.min_free_bytes = huge;
        }
    })
    .await;
    leader_is_one(&c).await;

    let err = c
        .client(3)
        .login(login("refused"))
        .await
        .expect_err("node 3 is under the alarm");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("free-space alarm")
            && err
                .message()
                .contains(&format!("storage.min_free_bytes = {huge}")),
        "{}",
        err.message()
    );

    c.client(1).login(login("accepted")).await.expect("login");
    let leader_applied = c.status(1).await.expect("status").applied_index;
    c.wait_for("node 3 to apply the write", || async {
        (c.status(3).await?.applied_index >= leader_applied).then_some(())
    })
    .await;

    let s3 = c.status(3).await.expect("status");
    assert!(s3.nospace_alarm && s3.storage_min_free_bytes == huge);
    let s1 = c.status(1).await.expect("status");
    assert!(!s1.nospace_alarm && s1.storage_free_bytes > 0);
    let (_, metrics) = c.get(3, "/metrics").await.expect("metrics");
    assert_eq!(
        common::sample(&metrics, "herald_storage_nospace_alarm"),
        Some(1.0)
    );
    assert!(common::sample(&metrics, "herald_storage_free_bytes").is_some_and(|b| b > 0.0));
}
