//! Multi-node tests on real `herald-node` processes over loopback gRPC:
//! replication of all three kinds of state, leader loss, restart and
//! catch-up (also through a snapshot), and membership changes.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::TestCluster;
use ::herald_client::proto::*;

fn login(uid: &str, client: &str) -> LoginRequest {
    LoginRequest {
        uid: uid.into(),
        sid: 1000,
        client_type: client.into(),
        accept_strangers: true,
        ext: BTreeMap::from([("city".to_string(), "hangzhou".to_string())])
            .into_iter()
            .collect(),
        ttl_ms: 0,
        connection_id: String::new(),
    }
}

fn imei(id: &str) -> Terminal {
    Terminal {
        kind: TerminalKind::Imei as i32,
        id: id.into(),
    }
}

/// Reads a user's presence from one node, serializably (its local state).
async fn local_presence(c: &TestCluster, node: u64, uid: &str) -> Option<PresenceRecord> {
    c.client(node)
        .get_presence(GetPresenceRequest {
            uid: uid.into(),
            consistency: Consistency::Serializable as i32,
        })
        .await
        .ok()?
        .into_inner()
        .record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_presence_sessions_and_pools() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let follower = c.alive().into_iter().find(|id| *id != leader).unwrap();

    // Presence, written through a follower (forwarded to the leader).
    let rec = c
        .client(follower)
        .login(login("alice", "pc"))
        .await
        .expect("login")
        .into_inner()
        .record
        .unwrap();
    assert!(rec.online);
    let rev = rec.revision;
    assert!(rev > 0);

    // Sessions.
    let s = c
        .client(leader)
        .connect_session(ConnectRequest {
            terminal: Some(imei("490154203237518")),
            app_url: "https://apps.example/game".into(),
            capabilities: vec!["touch".into()],
        })
        .await
        .expect("connect")
        .into_inner()
        .session
        .unwrap();
    let sid = s.session_id;
    c.client(follower)
        .progress(ProgressRequest {
            session_id: sid,
            terminal: Some(imei("490154203237518")),
            epoch: s.epoch,
            seq: 1,
            progress: b"level-3".to_vec(),
        })
        .await
        .expect("progress");

    // Pools.
    let p = c
        .client(follower)
        .create_platform(CreatePlatformRequest {
            name: "iptv-news".into(),
            units: vec![UnitSpec {
                name: "quiz".into(),
                service_start_ms: 0,
                service_end_ms: 0,
                qos_class: "gold".into(),
                response_time_ms: 200,
                access_policy: AccessPolicy::LeasedAccounts as i32,
            }],
        })
        .await
        .expect("platform")
        .into_inner()
        .platform
        .unwrap();
    let unit = p.units[0].unit_id;
    let pool = c
        .client(leader)
        .create_pool(CreatePoolRequest {
            unit_id: unit,
            name: "guests".into(),
            provision: 2,
            max_size: 2,
            default_ttl_ms: 60_000,
        })
        .await
        .expect("pool")
        .into_inner()
        .pool
        .unwrap();
    let lease = c
        .client(follower)
        .lease_account(LeaseRequest {
            pool_id: pool.pool_id,
            user: "viewer-1".into(),
            ttl_ms: 0,
            request_id: "req-1".into(),
        })
        .await
        .expect("lease")
        .into_inner();
    assert!(!lease.password.is_empty());
    let last = c.status(leader).await.unwrap().applied_index;
    c.wait_applied(last).await;

    // Every node holds every kind of state.
    for id in c.alive() {
        let r = local_presence(&c, id, "alice")
            .await
            .expect("presence everywhere");
        assert_eq!(r.revision, rev, "node {id}");
        let sess = c
            .client(id)
            .get_session(GetSessionRequest {
                session_id: sid,
                consistency: Consistency::Serializable as i32,
            })
            .await
            .expect("session")
            .into_inner()
            .session
            .unwrap();
        assert_eq!(
            (sess.seq, sess.progress.as_slice()),
            (1, &b"level-3"[..]),
            "node {id}"
        );
        let login = c
            .client(id)
            .account_login(AccountLoginRequest {
                unit_id: unit,
                account: lease.lease.as_ref().unwrap().account.clone(),
                password: lease.password.clone(),
                user: "viewer-1".into(),
                lease_secret: lease.lease_secret.clone(),
            })
            .await
            .expect("account login")
            .into_inner();
        assert!(login.ok, "node {id}: {}", login.reason);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_loss_keeps_every_acknowledged_write() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let mut acked = Vec::new();
    for i in 0..20 {
        let uid = format!("user-{i}");
        let node = 1 + (i % 3) as u64;
        c.client(node)
            .login(login(&uid, "mobile"))
            .await
            .expect("login");
        acked.push(uid);
    }
    c.kill(leader);
    let new_leader = c.wait_leader().await;
    assert_ne!(new_leader, leader);
    // Writes continue on the survivors.
    for i in 20..30 {
        let uid = format!("user-{i}");
        c.client(new_leader)
            .login(login(&uid, "mobile"))
            .await
            .expect("login after failover");
        acked.push(uid);
    }
    for id in c.alive() {
        let resp = c
            .client(id)
            .batch_get_presence(BatchGetPresenceRequest {
                uids: acked.clone(),
                consistency: Consistency::Linearizable as i32,
            })
            .await
            .expect("batch get")
            .into_inner();
        assert_eq!(resp.records.len(), acked.len());
        for r in resp.records {
            assert!(r.online, "node {id} lost {}", r.uid);
        }
    }
}

/// Found by the chaos suite (kill-all): the old leader came back as leader
/// without an election (openraft's leader restore) with its in-memory state
/// replayed only up to the last *flushed* commit index, and answered a
/// linearizable read with a value older than an acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linearizable_read_after_killing_every_node_sees_the_last_ack() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let mut last = 0;
    for v in 1..=5 {
        let mut req = login("kill-all", "pc");
        req.ext.insert("v".into(), v.to_string());
        c.client(leader).login(req).await.expect("login");
        last = v;
    }
    for id in 1..=3 {
        c.kill(id);
    }
    for id in 1..=3 {
        c.restart(id);
    }
    // Ask the old leader first, as soon as it answers at all.
    for id in [leader, leader % 3 + 1] {
        let record = c
            .wait_for(
                &format!("node {id} to answer a linearizable read"),
                || async {
                    let mut req = tonic::Request::new(GetPresenceRequest {
                        uid: "kill-all".into(),
                        consistency: Consistency::Linearizable as i32,
                    });
                    req.set_timeout(std::time::Duration::from_secs(2));
                    c.client(id)
                        .get_presence(req)
                        .await
                        .ok()?
                        .into_inner()
                        .record
                },
            )
            .await;
        assert_eq!(
            record.ext.get("v").map(String::as_str),
            Some(last.to_string().as_str()),
            "node {id} served a value older than the last acknowledged write"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_catches_up_from_log_and_from_snapshot() {
    // Keep no log behind a snapshot, so a lagging node must install one.
    let timings = herald_node::config::RaftTimings {
        keep_logs_after_snapshot: 0,
        ..crate::common::timings()
    };
    let mut c = TestCluster::start_with(3, timings).await;
    let leader = c.wait_leader().await;
    let victim = c.alive().into_iter().find(|id| *id != leader).unwrap();
    let victim_applied = c.status(victim).await.unwrap().applied_index;
    c.kill(victim);
    for i in 0..30 {
        c.client(leader)
            .login(login(&format!("a-{i}"), "web"))
            .await
            .expect("login");
    }
    // Compact the log on the survivors so the victim needs a snapshot.
    for id in c.alive() {
        c.admin(id)
            .snapshot(SnapshotRequest {})
            .await
            .expect("snapshot");
    }
    // Purging follows the snapshot asynchronously; the victim now needs a snapshot.
    let purged = c
        .wait_for(
            "the leader to purge its log past the stopped node",
            || async {
                let p = c.status(leader).await?.purged_index;
                (p > victim_applied).then_some(p)
            },
        )
        .await;
    for i in 30..40 {
        c.client(leader)
            .login(login(&format!("a-{i}"), "web"))
            .await
            .expect("login");
    }
    let last = c.status(leader).await.unwrap().applied_index;
    c.restart(victim);
    c.wait_applied(last).await;
    let s = c.status(victim).await.unwrap();
    assert!(
        s.snapshot_index >= purged,
        "victim installed a snapshot: {s:?}, purged {purged}"
    );
    for i in 0..40 {
        let r = local_presence(&c, victim, &format!("a-{i}")).await;
        assert!(
            r.is_some_and(|r| r.online),
            "a-{i} missing on restarted node"
        );
    }
    // And it survives its own restart (state reloaded from sled snapshot + log).
    c.kill(victim);
    c.restart(victim);
    c.wait_applied(last).await;
    assert!(local_presence(&c, victim, "a-39").await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_learner_promote_and_remove() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    c.client(leader)
        .login(login("before-join", "tv"))
        .await
        .expect("login");
    c.spawn_joiner(4);
    let member = c.member(4);
    // Through a follower: admin changes are passed on to the leader.
    let follower = c
        .alive()
        .into_iter()
        .find(|id| *id != leader && *id != 4)
        .unwrap();
    c.admin(follower)
        .add_learner(AddLearnerRequest {
            member: Some(member.clone()),
        })
        .await
        .expect("add learner");
    assert_eq!(c.members(leader).await.get(&4), Some(&false));
    // Adding it twice is refused, and changes nothing.
    let dup = c
        .admin(leader)
        .add_learner(AddLearnerRequest {
            member: Some(member),
        })
        .await;
    assert_eq!(dup.unwrap_err().code(), tonic::Code::AlreadyExists);
    c.admin(leader)
        .promote(PromoteRequest { id: 4 })
        .await
        .expect("promote");
    assert_eq!(c.members(leader).await.get(&4), Some(&true));
    let last = c.status(leader).await.unwrap().applied_index;
    c.wait_applied(last).await;
    assert!(local_presence(&c, 4, "before-join").await.is_some());

    // Remove a voter that is not the leader; the cluster keeps writing.
    let gone = c
        .alive()
        .into_iter()
        .find(|id| *id != leader && *id != 4)
        .unwrap();
    c.admin(leader)
        .remove(RemoveRequest { id: gone })
        .await
        .expect("remove");
    let members = c.members(leader).await;
    assert!(!members.contains_key(&gone), "{members:?}");
    assert_eq!(members.len(), 3);
    c.kill(gone);
    c.client(4)
        .login(login("after-remove", "tv"))
        .await
        .expect("login after remove");
    // Unknown members are refused with NotFound, its reason in the details
    // like every refusal (not only the state machine's).
    let err = c
        .admin(leader)
        .promote(PromoteRequest { id: 99 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(
        ::herald_client::reason_of(&err).as_deref(),
        Some("NOT_FOUND"),
        "{err:?}"
    );
}

/// A dead follower once had its leader reopen the replication stream every
/// ~0.1 ms (a whole core, ~8000 log lines a second): openraft's backoff
/// delays the next stream's first request, which a stream that cannot
/// connect never asks for. Over a 3 s window the retries are now paced
/// (about 10 a second); before, there were tens of thousands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_follower_does_not_make_its_leader_spin() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let dead = c.alive().into_iter().find(|id| *id != leader).unwrap();
    c.kill(dead);
    c.client(leader)
        .login(login("after-the-kill", "pc"))
        .await
        .expect("the other two still commit");
    let attempts = |c: &TestCluster| {
        c.log_text(leader)
            .lines()
            .filter(|l| {
                l.contains(&format!("peer {dead}")) && l.contains("initiate-stream-replication")
            })
            .count()
    };
    let before = attempts(&c);
    // The measuring window (nothing to await: the point is what does not happen).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = attempts(&c) - before;
    assert!(
        during < 300,
        "{during} stream retries to the dead follower in 3 s"
    );
}

/// Issue 21 item 5, a rolling restart: every node in turn stopped the way
/// a supervisor stops it for an upgrade (SIGTERM), started again on its
/// data dir and waited for until it has caught up, while one writer keeps
/// logging users in through the client library (fail-over on). Every login
/// acknowledged is online afterwards, read linearizably, and no node needed
/// SIGKILL. The longest time between two acknowledged writes is printed
/// (the fail-over time itself is measured by the benchmark, not here) and
/// only bounded loosely: a restart must never leave the cluster without a
/// leader for long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_writes_loses_no_acknowledged_write() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let mut c = TestCluster::start(3).await;
    c.wait_leader().await;
    let client = c.client_lib();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let stop = stop.clone();
        async move {
            let (mut acked, mut attempts) = (Vec::new(), 0u64);
            let mut last_ok = tokio::time::Instant::now();
            let mut longest_gap = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                let uid = format!("roll-{attempts}");
                attempts += 1;
                if client.login(login(&uid, "web")).await.is_ok() {
                    longest_gap = longest_gap.max(last_ok.elapsed());
                    last_ok = tokio::time::Instant::now();
                    acked.push(uid);
                }
            }
            (acked, attempts, longest_gap)
        }
    });
    for id in [1, 2, 3] {
        let killed = c.stop(id, Duration::from_secs(10)).await;
        assert!(
            !killed,
            "node {id} did not stop on SIGTERM within 10 s\n{}",
            c.log_tails()
        );
        c.restart(id);
        // Caught up: it names the leader and has applied what the leader
        // had committed when it came back.
        let leader = c.wait_leader().await;
        let target = c.status(leader).await.expect("leader status").applied_index;
        c.wait_for(
            &format!("node {id} to apply {target} after its restart"),
            || async {
                let s = c.status(id).await?;
                (s.applied_index >= target).then_some(())
            },
        )
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    let (acked, attempts, longest_gap) = writer.await.expect("writer");
    println!(
        "rolling restart: {} of {attempts} logins acknowledged; longest time between two \
         acknowledged logins {longest_gap:?}",
        acked.len()
    );
    assert!(
        acked.len() >= 10,
        "too few writes got through: {}",
        acked.len()
    );
    assert!(
        longest_gap < Duration::from_secs(10),
        "no write acknowledged for {longest_gap:?} during the rolling restart"
    );
    let reader = c.client_lib();
    for chunk in acked.chunks(1000) {
        let got = reader
            .batch_get_presence(chunk.to_vec(), Consistency::Linearizable)
            .await
            .expect("read back");
        let lost: Vec<&String> = chunk
            .iter()
            .zip(&got.records)
            .filter(|(_, r)| !r.online)
            .map(|(uid, _)| uid)
            .collect();
        assert!(lost.is_empty(), "acknowledged logins lost: {lost:?}");
    }
}
