//! Media sharing (P-share) end to end on a real 3-node cluster, through the
//! `herald.v1.Share` contract on followers (forwarded to the leader): upload
//! admission by capacity and health, idempotent retries, friend-only access,
//! key checks, a reservation released by cluster time with no other write,
//! and capacity still never oversubscribed after the leader is killed.

use ::herald_client::proto::share_client::ShareClient;
use ::herald_client::proto::*;
use ::herald_client::reason_of;
use tonic::Code;
use tonic::transport::Channel;

use crate::common::{ROOT, TestCluster, channel_as};

fn share_client(c: &TestCluster, id: u64) -> ShareClient<Channel> {
    ShareClient::new(channel_as(&c.certs, &c.client_addr(id), Some(ROOT)))
}

fn refused(r: Result<impl std::fmt::Debug, tonic::Status>, code: Code, reason: &str) {
    let status = r.expect_err("expected a refusal");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason_of(&status).as_deref(), Some(reason), "{status:?}");
}

fn upload(owner: &str, to: &[&str], size: u64, request_id: &str) -> ShareMediaRequest {
    ShareMediaRequest {
        owner: owner.into(),
        receivers: to.iter().map(|s| s.to_string()).collect(),
        size_bytes: size,
        ttl_ms: 0,
        request_id: request_id.into(),
    }
}

async fn storage(cl: &mut ShareClient<Channel>, id: &str) -> StorageServer {
    let all = cl
        .list_storage(ListStorageRequest {
            consistency: Consistency::Linearizable as i32,
        })
        .await
        .expect("list storage")
        .into_inner();
    all.servers
        .into_iter()
        .find(|s| s.server_id == id)
        .expect("server listed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_admitted_by_capacity_friends_get_access_and_a_leader_change_keeps_both() {
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let follower = c.alive().into_iter().find(|id| *id != leader).unwrap();
    let mut f = share_client(&c, follower);

    f.register_storage(RegisterStorageRequest {
        server_id: "s1".into(),
        address: "s1.media:9000".into(),
        capacity_bytes: 1000,
    })
    .await
    .expect("register");
    for (a, b) in [("alice", "bob"), ("carol", "alice")] {
        f.add_friend(FriendshipRequest {
            user: a.into(),
            friend: b.into(),
        })
        .await
        .expect("friends");
    }
    // Registered but never heard from: not up.
    refused(
        f.share_media(upload("alice", &["bob"], 10, "r0")).await,
        Code::FailedPrecondition,
        "STORAGE_DOWN",
    );
    f.storage_heartbeat(StorageHeartbeatRequest {
        server_id: "s1".into(),
        up: true,
        ttl_ms: 0,
    })
    .await
    .expect("mark up");

    let first = f
        .share_media(upload("alice", &["bob"], 600, "r1"))
        .await
        .expect("admitted")
        .into_inner();
    let share = first.share.clone().unwrap();
    assert_eq!(
        (share.server_id.as_str(), share.address.as_str()),
        ("s1", "s1.media:9000")
    );
    assert_eq!(share.state, ShareState::Reserved as i32);
    assert_eq!(first.owner_key.len(), 32);
    assert_eq!(first.receiver_keys.len(), 1);
    // A retry: the same share, fresh keys, no second reservation.
    let again = f
        .share_media(upload("alice", &["bob"], 600, "r1"))
        .await
        .expect("replay")
        .into_inner();
    assert!(again.replayed);
    assert_eq!(again.share.unwrap().share_id, share.share_id);
    assert_ne!(again.owner_key, first.owner_key);
    assert_eq!(storage(&mut f, "s1").await.reserved_bytes, 600);
    // 400 left: 500 does not fit; a non-friend is refused.
    refused(
        f.share_media(upload("alice", &["bob"], 500, "r2")).await,
        Code::ResourceExhausted,
        "STORAGE_FULL",
    );
    refused(
        f.share_media(upload("alice", &["mallory"], 1, "r3")).await,
        Code::PermissionDenied,
        "NOT_FRIEND",
    );
    // The upload is committed with its actual size, with either answer's key.
    let committed = f
        .commit_share(CommitShareRequest {
            share_id: share.share_id,
            owner_key: again.owner_key.clone(),
            size_bytes: 400,
        })
        .await
        .expect("commit")
        .into_inner()
        .share
        .unwrap();
    assert_eq!(committed.state, ShareState::Committed as i32);
    refused(
        f.commit_share(CommitShareRequest {
            share_id: share.share_id,
            owner_key: "not-the-key".into(),
            size_bytes: 400,
        })
        .await,
        Code::PermissionDenied,
        "WRONG_SECRET",
    );

    // A reservation with a short deadline is released by cluster time,
    // with no other write to carry it (the leader's Tick).
    let mut short = upload("carol", &["alice"], 100, "r4");
    short.ttl_ms = 300;
    f.share_media(short).await.expect("short reservation");
    c.wait_for("the short reservation to be released", || {
        let mut f = f.clone();
        async move { (storage(&mut f, "s1").await.reserved_bytes == 0).then_some(()) }
    })
    .await;

    // Kill the leader: the new one keeps the commit and the friendships.
    c.kill(leader);
    let new_leader = c.wait_leader().await;
    assert_ne!(new_leader, leader);
    let other = c.alive().into_iter().find(|id| *id != new_leader).unwrap();
    let mut g = share_client(&c, other);
    refused(
        g.share_media(upload("alice", &["bob"], 601, "r5")).await,
        Code::ResourceExhausted,
        "STORAGE_FULL",
    );
    let fits = g
        .share_media(upload("alice", &["bob"], 600, "r5"))
        .await
        .expect("600 fits beside the 400 committed")
        .into_inner();
    let s1 = storage(&mut g, "s1").await;
    assert_eq!((s1.committed_bytes, s1.reserved_bytes), (400, 600));
    assert!(s1.committed_bytes + s1.reserved_bytes <= s1.capacity_bytes);
    assert_eq!(fits.share.unwrap().server_id, "s1");

    // Access: a friend who was not a receiver gets parameters and a key the
    // storage server can check; a stranger gets NOT_FRIEND.
    let access = g
        .access_share(AccessShareRequest {
            share_id: share.share_id,
            user: "carol".into(),
            ttl_ms: 60_000,
        })
        .await
        .expect("access for a friend")
        .into_inner();
    assert_eq!(access.address, "s1.media:9000");
    let checked = g
        .check_share_key(CheckShareKeyRequest {
            share_id: share.share_id,
            key: access.key.clone(),
        })
        .await
        .expect("key opens")
        .into_inner();
    assert_eq!(
        (checked.user.as_str(), checked.kind.as_str()),
        ("carol", "access")
    );
    refused(
        g.access_share(AccessShareRequest {
            share_id: share.share_id,
            user: "mallory".into(),
            ttl_ms: 60_000,
        })
        .await,
        Code::PermissionDenied,
        "NOT_FRIEND",
    );
    // The friendship ends: so does the key.
    g.remove_friend(FriendshipRequest {
        user: "alice".into(),
        friend: "carol".into(),
    })
    .await
    .expect("unfriend");
    refused(
        g.check_share_key(CheckShareKeyRequest {
            share_id: share.share_id,
            key: access.key,
        })
        .await,
        Code::PermissionDenied,
        "WRONG_SECRET",
    );
    // The web platforms' view over HTTP JSON (share role), without keys.
    let (code, body) = c
        .get(other, &format!("/v1/shares/{}", share.share_id))
        .await
        .expect("http share");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["state"], "committed", "{body}");
    assert_eq!(v["address"], "s1.media:9000", "{body}");
    assert!(!body.contains("key"), "{body}");
    let (code, body) = c.get(other, "/v1/storage").await.expect("http storage");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"committed_bytes\":400"), "{body}");
    let (code, body) = c.get(other, "/v1/shares/999").await.expect("http 404");
    assert_eq!(code, 404, "{body}");

    // Deleting frees the bytes.
    g.delete_share(DeleteShareRequest {
        share_id: share.share_id,
        owner_key: first.owner_key,
    })
    .await
    .expect("delete");
    assert_eq!(storage(&mut g, "s1").await.committed_bytes, 0);
}

/// `ListStorage` on node `id`, serializable (what that node's state says).
async fn storage_on(c: &TestCluster, id: u64, server: &str) -> Option<StorageServer> {
    let all = share_client(c, id)
        .list_storage(ListStorageRequest {
            consistency: Consistency::Serializable as i32,
        })
        .await
        .ok()?
        .into_inner();
    all.servers.into_iter().find(|s| s.server_id == server)
}

fn beat(server: &str, ttl_ms: u64) -> StorageHeartbeatRequest {
    StorageHeartbeatRequest {
        server_id: server.into(),
        up: true,
        ttl_ms,
    }
}

/// Storage heartbeats live in the memory of the server's owner on the
/// ownership ring, as presence heartbeats do: beats through every node
/// (forwarded to the owner) leave the log where it was; a server that falls
/// silent is marked down by its owner (an upload is then refused
/// `STORAGE_DOWN`); and a server that keeps beating while its owner dies is
/// never expired, as the node that takes it over waits a whole TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_heartbeats_stay_off_the_log_and_only_a_silent_server_is_expired() {
    use ::herald_client::ring::{DEFAULT_VNODES, Ring, storage_key};
    use std::time::Duration;
    let mut c = TestCluster::start_custom(3, crate::common::timings(), |cfg| {
        cfg.failover.hold_ms = 600_000;
        cfg.ring.down_after_ms = 800;
    })
    .await;
    let leader = c.wait_leader().await;
    // A server whose owner (on the ring over all three nodes) is not the
    // leader, so killing the owner keeps the leader.
    let ring = Ring::new(c.alive(), DEFAULT_VNODES);
    let keep = (0..)
        .map(|i| format!("keep-{i}"))
        .find(|s| ring.owner(&storage_key(s)) != Some(leader))
        .unwrap();
    let owner = ring.owner(&storage_key(&keep)).unwrap();
    let mut l = share_client(&c, leader);
    for id in [keep.as_str(), "silent"] {
        l.register_storage(RegisterStorageRequest {
            server_id: id.into(),
            address: format!("{id}.media:9000"),
            capacity_bytes: 1000,
        })
        .await
        .expect("register");
    }
    l.add_friend(FriendshipRequest {
        user: "alice".into(),
        friend: "bob".into(),
    })
    .await
    .expect("friends");
    // The first beat marks it up (a change, logged once).
    let first = l
        .storage_heartbeat(beat(&keep, 3_000))
        .await
        .expect("first beat")
        .into_inner()
        .server
        .unwrap();
    assert!(first.up && first.heartbeat_ttl_ms == 3_000, "{first:?}");
    let applied = c.status(leader).await.unwrap().applied_index;
    c.wait_applied(applied).await;
    for round in 0..10 {
        for id in c.alive() {
            let s = share_client(&c, id)
                .storage_heartbeat(beat(&keep, 3_000))
                .await
                .unwrap_or_else(|e| panic!("beat {round} through node {id}: {e}"))
                .into_inner()
                .server
                .unwrap();
            assert_eq!(s.up_since_ms, first.up_since_ms, "one spell of being up");
        }
    }
    assert_eq!(
        c.status(leader).await.unwrap().applied_index,
        applied,
        "30 heartbeats wrote to the log"
    );
    // A beat for a server nobody registered: refused, through any node.
    for id in c.alive() {
        let e = share_client(&c, id)
            .storage_heartbeat(beat("nobody", 3_000))
            .await
            .expect_err("unknown server");
        assert_eq!(e.code(), Code::NotFound, "through node {id}: {e:?}");
    }

    // `silent` beats once and falls silent; `keep` beats every 300 ms
    // through the client library while its owner dies.
    l.storage_heartbeat(beat("silent", 1_000))
        .await
        .expect("silent's one beat");
    let cl = c.client_lib();
    let hb = {
        let (cl, keep) = (cl.clone(), keep.clone());
        tokio::spawn(async move {
            let until = tokio::time::Instant::now() + Duration::from_secs(8);
            while tokio::time::Instant::now() < until {
                let _ = cl.storage_heartbeat(beat(&keep, 3_000)).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    c.wait_for("the silent server expired", || async {
        storage_on(&c, leader, "silent").await.filter(|s| !s.up)
    })
    .await;
    refused(
        l.share_media(ShareMediaRequest {
            owner: "alice".into(),
            receivers: vec!["bob".into()],
            size_bytes: 1001,
            ttl_ms: 0,
            request_id: "too-big-for-keep".into(),
        })
        .await,
        Code::ResourceExhausted,
        "STORAGE_FULL",
    );
    c.kill(owner);
    hb.await.unwrap();
    let kept = storage_on(&c, leader, &keep).await.expect("keep listed");
    assert!(
        kept.up && kept.up_since_ms == first.up_since_ms,
        "{keep} was expired although it kept beating while its owner died: {kept:?}\n{}",
        c.log_tails()
    );
    let (_, metrics) = c.get(leader, "/metrics").await.expect("metrics");
    let expiries = crate::common::sample(&metrics, "herald_storage_expiries_total").unwrap_or(0.0);
    assert_eq!(expiries, 1.0, "only the silent server expired");
}
