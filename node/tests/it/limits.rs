//! Connection and request limits on real node processes (issue 17 item 3,
//! issue 23 item 6): a listener over its connection cap refuses the extra
//! connections while the first keep working; the watch-stream cap, and a
//! watch whose client vanished gives its slot back; the HTTP header-read
//! timeout closes a slowloris connection and an oversized HTTP body is
//! refused with 413; list RPCs page; and the answers
//! that passed gRPC's default 4 MiB receive limit (a long session log, a
//! batch read of 1000 users with full ext) now fit it, while a `Batch` of
//! 1000 maximal logins is served and an oversized message is refused with
//! `RESOURCE_EXHAUSTED` naming the limit.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use crate::common::{ROOT, TestCluster, channel_as, sample, timings};
use ::herald_client::proto::herald_client::HeraldClient;
use ::herald_client::proto::*;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::transport::Channel;

/// A metric of node `id` (0 when absent).
async fn metric(c: &TestCluster, id: u64, series: &str) -> f64 {
    let (_, text) = c.get(id, "/metrics").await.expect("metrics");
    sample(&text, series).unwrap_or(0.0)
}

/// A Herald stub on its own connection to node 1's client port (a tonic
/// channel is one HTTP/2 connection).
fn own_connection(c: &TestCluster, addr: &str) -> HeraldClient<Channel> {
    HeraldClient::new(channel_as(&c.certs, addr, Some(ROOT)))
}

async fn ping(cl: &mut HeraldClient<Channel>) -> Result<(), tonic::Status> {
    cl.get_presence(GetPresenceRequest {
        uid: "nobody".into(),
        consistency: 0,
    })
    .await
    .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_refused_and_the_first_keep_working() {
    let c = TestCluster::start_custom(1, timings(), |cfg| {
        cfg.limits.max_client_connections = 3;
    })
    .await;
    let addr = c.client_addr(1);
    let open = r#"herald_connections_open{listener="client"}"#;
    // The harness's own status calls close their connections first.
    c.wait_for("no client connections open", || async {
        (metric(&c, 1, open).await == 0.0).then_some(())
    })
    .await;
    let mut first: Vec<_> = (0..3).map(|_| own_connection(&c, &addr)).collect();
    for cl in &mut first {
        ping(cl).await.expect("under the cap");
    }
    assert_eq!(metric(&c, 1, open).await, 3.0);
    let mut extra = own_connection(&c, &addr);
    let err = ping(&mut extra).await.expect_err("over the cap");
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    let refused = r#"herald_connections_refused_total{listener="client"}"#;
    assert!(metric(&c, 1, refused).await >= 1.0);
    for cl in &mut first {
        ping(cl).await.expect("the first connections keep working");
    }
    // A closed connection gives its slot back.
    first.pop();
    c.wait_for("a slot to free", || async {
        let mut cl = own_connection(&c, &addr);
        ping(&mut cl).await.ok()
    })
    .await;
}

/// A TCP relay in front of `target` that can go silent: after `freeze`,
/// it neither forwards nor closes anything, like a client whose machine
/// vanished from the network.
struct Relay {
    addr: String,
    frozen: tokio::sync::watch::Sender<bool>,
}

impl Relay {
    async fn start(target: String) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (frozen, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let outbound = tokio::net::TcpStream::connect(&target).await.unwrap();
                let (ir, iw) = inbound.into_split();
                let (or, ow) = outbound.into_split();
                tokio::spawn(pump(ir, ow, rx.clone()));
                tokio::spawn(pump(or, iw, rx.clone()));
            }
        });
        Relay { addr, frozen }
    }

    fn freeze(&self) {
        self.frozen.send_replace(true);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        tokio::select! {
            _ = async { frozen.wait_for(|f| *f).await.map(|_| ()) } => {
                // Hold both sockets open and silent for good.
                std::future::pending::<()>().await;
            }
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => if to.write_all(&buf[..n]).await.is_err() { return },
            },
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_cap_refuses_and_a_vanished_watcher_frees_its_slot() {
    let c = TestCluster::start_custom(1, timings(), |cfg| {
        cfg.limits.max_watch_streams = 2;
        cfg.limits.grpc_keepalive_ms = 300;
        cfg.limits.grpc_keepalive_timeout_ms = 300;
    })
    .await;
    let addr = c.client_addr(1);
    let watch = |cl: &HeraldClient<Channel>| {
        let mut cl = cl.clone();
        async move {
            cl.watch(WatchRequest {
                uids: vec![],
                start_revision: 0,
            })
            .await
        }
    };
    // One watch through a relay that will vanish, one direct.
    let relay = Relay::start(addr.clone()).await;
    let vanishing = own_connection(&c, &relay.addr);
    let _a = watch(&vanishing).await.expect("first watch");
    let direct = own_connection(&c, &addr);
    let b = watch(&direct).await.expect("second watch");
    let err = watch(&direct).await.expect_err("over the cap");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert_eq!(
        ::herald_client::reason_of(&err).as_deref(),
        Some("QUOTA_EXCEEDED"),
        "{err:?}"
    );
    assert!(
        err.message().contains("limits.max_watch_streams = 2"),
        "{}",
        err.message()
    );

    // A client that drops its stream gives the slot back at once.
    drop(b);
    let mut c_stream = c
        .wait_for("the dropped watch's slot", || async {
            watch(&direct).await.ok()
        })
        .await
        .into_inner();

    // A client that vanishes (no FIN, no RST: its relay goes silent) is
    // found by the keepalive, and its slot freed.
    relay.freeze();
    let d = c
        .wait_for("the vanished watcher's slot", || async {
            watch(&direct).await.ok()
        })
        .await
        .into_inner();
    assert_eq!(metric(&c, 1, "herald_api_watch_streams").await, 2.0);
    // The surviving streams still deliver.
    let mut cl = c.client(1);
    cl.login(LoginRequest {
        uid: "w".into(),
        sid: 1,
        client_type: "pc".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    for s in [&mut c_stream] {
        let e = tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .expect("an event")
            .expect("open")
            .expect("ok");
        assert_eq!(e.uid, "w");
    }
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_header_timeout_closes_a_slowloris_connection() {
    let c = TestCluster::start_custom(1, timings(), |cfg| {
        cfg.limits.http_header_timeout_ms = 500;
    })
    .await;
    let mut s = crate::common::tls_connect(&c.certs, &c.http_addr(1), Some(ROOT))
        .await
        .expect("tls");
    // Headers started, never finished.
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf)).await;
    assert!(
        closed.is_ok(),
        "the node kept a connection that never finished its headers"
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
    // A normal request still works.
    let (code, _) = c.get(1, "/health").await.unwrap();
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_body_over_the_limit_is_refused_and_one_under_it_is_served() {
    let c = TestCluster::start_custom(1, timings(), |cfg| {
        cfg.limits.http_max_body_bytes = 4096;
    })
    .await;
    // A batch lookup of many uids: valid JSON, just too long.
    let uids: Vec<String> = (0..400).map(|i| format!("user-{i:05}")).collect();
    let big = serde_json::to_vec(&serde_json::json!({ "ids": uids })).unwrap();
    assert!(big.len() > 4096);
    let (code, body) = c.post(1, "/v1/presence", &big).await.unwrap();
    assert_eq!(code, 413, "an oversized body was not refused: {body}");
    let small = serde_json::to_vec(&serde_json::json!({ "ids": ["user-00001"] })).unwrap();
    let (code, body) = c.post(1, "/v1/presence", &small).await.unwrap();
    assert_eq!(code, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_walk_every_pool_and_lease_exactly_once() {
    let c = TestCluster::start(1).await;
    let mut cl = c.client(1);
    let p = cl
        .create_platform(CreatePlatformRequest {
            name: "tv".into(),
            units: vec![UnitSpec {
                name: "vote".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .platform
        .unwrap();
    let unit = p.units[0].unit_id;
    let mut pool_ids = BTreeSet::new();
    for i in 0..7 {
        let pool = cl
            .create_pool(CreatePoolRequest {
                unit_id: unit,
                name: format!("p{i}"),
                provision: 10,
                max_size: 10,
                default_ttl_ms: 60_000,
            })
            .await
            .unwrap()
            .into_inner()
            .pool
            .unwrap();
        pool_ids.insert(pool.pool_id);
    }
    let pool = *pool_ids.first().unwrap();
    let mut lease_ids = BTreeSet::new();
    for i in 0..10 {
        let l = cl
            .lease_account(LeaseRequest {
                pool_id: pool,
                user: format!("v{i}"),
                ttl_ms: 0,
                request_id: format!("r{i}"),
            })
            .await
            .unwrap()
            .into_inner();
        lease_ids.insert(l.lease.unwrap().lease_id);
    }

    // Pools, three a page.
    let (mut seen, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let r = cl
            .list_pools(ListPoolsRequest {
                unit_id: 0,
                consistency: 0,
                page_size: 3,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(r.pools.len() <= 3);
        assert_eq!(r.platforms.len(), usize::from(pages == 1), "platforms once");
        seen.extend(r.pools.iter().map(|p| p.pool_id));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 7, "{seen:?}");
    assert_eq!(seen.iter().copied().collect::<BTreeSet<_>>(), pool_ids);

    // Leases, four a page.
    let (mut seen, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let r = cl
            .list_leases(ListLeasesRequest {
                pool_id: pool,
                consistency: 0,
                page_size: 4,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        seen.extend(r.leases.iter().map(|l| l.lease_id));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 10, "{seen:?}");
    assert_eq!(seen.iter().copied().collect::<BTreeSet<_>>(), lease_ids);

    // The default page holds them all; a bad token is refused.
    let all = cl
        .list_leases(ListLeasesRequest {
            pool_id: pool,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((all.leases.len(), all.next_page_token.as_str()), (10, ""));
    let bad = cl
        .list_leases(ListLeasesRequest {
            pool_id: pool,
            page_token: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    // The client library walks the pages.
    let lib = c.client_lib();
    assert_eq!(
        lib.list_leases(pool, Consistency::Linearizable)
            .await
            .unwrap()
            .len(),
        10
    );
    assert_eq!(
        lib.list_pools(0, Consistency::Linearizable)
            .await
            .unwrap()
            .pools
            .len(),
        7
    );
}

fn mac(i: usize) -> Terminal {
    Terminal {
        kind: TerminalKind::Mac as i32,
        id: format!("02:00:00:00:{:02x}:{:02x}", i / 256, i % 256),
    }
}

/// 23.6 (1): a session log of 1000 entries with long capability lists was
/// 4.3 MB in one answer, over the 4 MiB a default gRPC client reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_session_log_fits_a_default_client_in_pages() {
    let c = TestCluster::start(1).await;
    let mut cl = c.client(1);
    // 64 required capabilities of 64 bytes; every candidate lacks them
    // all, so each handoff logs 64 refusals of ~4.2 KB.
    let caps: Vec<String> = (0..64)
        .map(|i| format!("{i:02}{}", "c".repeat(62)))
        .collect();
    let s = cl
        .connect_session(ConnectRequest {
            terminal: Some(mac(0)),
            app_url: "https://apps.example/quiz".into(),
            capabilities: caps,
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    for round in 0..16 {
        let h = cl
            .handoff(HandoffRequest {
                session_id: s.session_id,
                mode: HandoffMode::Push as i32,
                initiator: Some(mac(0)),
                candidates: (1..=64)
                    .map(|i| Candidate {
                        terminal: Some(mac(round * 64 + i)),
                        capabilities: vec!["none".into()],
                    })
                    .collect(),
                bound_capabilities: vec![],
                holder: None,
                epoch: s.epoch,
                app_url: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!h.accepted);
    }
    // A stub with gRPC's default limits (the harness's channel is one).
    let mut entries = Vec::new();
    let mut token = String::new();
    loop {
        let r = cl
            .session_log(SessionLogRequest {
                session_id: s.session_id,
                consistency: 0,
                page_size: 0,
                page_token: token.clone(),
            })
            .await
            .expect("every page fits 4 MiB");
        let r = r.into_inner();
        entries.extend(r.entries);
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(entries.len(), 1000);
    let bytes: usize = entries.iter().map(|e| e.detail.len()).sum();
    assert!(bytes > 4 << 20, "the whole log is over 4 MiB: {bytes}");
    // Every entry once, in log order (64 share each revision).
    let whole = c
        .client_lib()
        .session_log(s.session_id, Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(whole, entries);
    let mut keys: Vec<_> = entries
        .iter()
        .map(|e| (e.revision, e.terminal.clone().unwrap().id))
        .collect();
    keys.dedup();
    assert_eq!(keys.len(), 1000);
}

/// A login as large as validation allows: 128-byte uid, 32-byte client
/// type, 4096 bytes of ext in 256 small entries (the most framing).
fn maximal_login(i: usize) -> LoginRequest {
    let ext: HashMap<String, String> = (0..256)
        .map(|k| (format!("k{k:06}"), format!("v{i:07}")))
        .collect();
    LoginRequest {
        uid: format!("{i:04}{}", "u".repeat(124)),
        sid: i as u64,
        client_type: "c".repeat(32),
        accept_strangers: false,
        ext,
        ttl_ms: 0,
        connection_id: String::new(),
    }
}

fn batch_of(logins: impl IntoIterator<Item = LoginRequest>) -> BatchRequest {
    BatchRequest {
        calls: logins
            .into_iter()
            .map(|l| BatchCall {
                call: Some(batch_call::Call::Login(l)),
            })
            .collect(),
    }
}

/// 23.6 (2) and (3): a `Batch` of 1000 maximal logins (5.6 MB) was refused
/// whole by the node's 4 MiB default; a `BatchGetPresence` of those 1000
/// users (5.4 MB) could not be read by a default client; an oversized
/// message was refused with OUT_OF_RANGE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_valid_batch_is_served_and_batch_reads_fit_a_default_client() {
    use prost::Message;
    let c = TestCluster::start(1).await;
    // 1000 logins are 1000 Raft entries: more than the usual 10 s on a
    // busy machine.
    let channel = crate::common::channel_with_timeout(
        &c.certs,
        &c.client_addr(1),
        Some(ROOT),
        Duration::from_secs(120),
    );
    // This stub reads and sends as much as the client library does.
    let mut big = HeraldClient::new(channel.clone())
        .max_decoding_message_size(::herald_client::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(::herald_client::MAX_MESSAGE_BYTES);
    let batch = batch_of((0..1000).map(maximal_login));
    assert!(batch.encoded_len() > 5_000_000, "{}", batch.encoded_len());
    let replies = big
        .batch(batch)
        .await
        .expect("the largest valid batch is served")
        .into_inner()
        .replies;
    assert_eq!(replies.len(), 1000);
    for r in &replies {
        assert!(
            matches!(r.reply, Some(batch_reply::Reply::PresenceWrite(_))),
            "{r:?}"
        );
    }

    // A stub with gRPC's default 4 MiB receive limit reads all 1000 users,
    // in answers the node keeps under it.
    let uids: Vec<String> = (0..1000).map(|i| maximal_login(i).uid).collect();
    let mut small = HeraldClient::new(channel.clone());
    let mut records = Vec::new();
    let mut answers = 0;
    while records.len() < uids.len() {
        let r = small
            .batch_get_presence(BatchGetPresenceRequest {
                uids: uids[records.len()..].to_vec(),
                consistency: 0,
            })
            .await
            .expect("fits 4 MiB")
            .into_inner();
        answers += 1;
        assert_eq!(r.truncated, records.len() + r.records.len() < uids.len());
        records.extend(r.records);
    }
    assert!(answers >= 2);
    for (r, uid) in records.iter().zip(&uids) {
        assert_eq!(&r.uid, uid);
        assert!(r.online);
    }
    // The client library asks for the rest by itself.
    let all = c
        .client_lib()
        .batch_get_presence(uids.clone(), Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(all.records.len(), 1000);

    // Over the node's limit: RESOURCE_EXHAUSTED naming it.
    let mut huge = maximal_login(0);
    huge.ext.insert("x".into(), "y".repeat(17 << 20));
    let err = small.batch(batch_of([huge])).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(
        err.message().contains("limits.grpc_max_message_bytes"),
        "{}",
        err.message()
    );
}
