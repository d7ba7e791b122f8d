//! Issue 18 (P-publish) on real node processes: one presence entry per
//! connection through gRPC (two connections of one type stay apart, a
//! logout of one keeps the other, each has its own TTL on the owner, the
//! per-user cap refuses before anything is logged), and the presence watch
//! as Server-Sent Events on HTTP, read by a real HTTP client (hyper): the
//! same events as the gRPC `Watch`, resumed with `Last-Event-ID` without a
//! gap, a compacted start refused with `COMPACTED`.

use std::time::Duration;

use crate::common::{ROOT, TestCluster, WAIT};
use ::herald_client::proto::*;
use futures::StreamExt;
use http_body_util::BodyExt as _;
use tonic::Code;

fn login_on(uid: &str, client: &str, conn: &str, ttl_ms: u64) -> LoginRequest {
    LoginRequest {
        uid: uid.into(),
        sid: 7,
        client_type: client.into(),
        connection_id: conn.into(),
        ttl_ms,
        ..Default::default()
    }
}

fn logout_of(uid: &str, client: &str, conn: &str) -> LogoutRequest {
    LogoutRequest {
        uid: uid.into(),
        sid: 7,
        client_type: client.into(),
        connection_id: conn.into(),
        ..Default::default()
    }
}

/// (client type, connection id) of a record's entries, in order.
fn conns(r: &PresenceRecord) -> Vec<(String, String)> {
    r.clients
        .iter()
        .map(|c| (c.client_type.clone(), c.connection_id.clone()))
        .collect()
}

fn pair(t: &str, c: &str) -> (String, String) {
    (t.to_string(), c.to_string())
}

/// The error reason a refusal carries (`INVALID_FIELD`, ...).
fn reason(s: &tonic::Status) -> String {
    ::herald_client::reason_of(s).unwrap_or_default()
}

/// Waits until every node enforces the leader's `[quotas]` (their `users`
/// quota is the test's marker value).
async fn wait_quotas(c: &TestCluster, users: u64) {
    for id in c.alive() {
        c.wait_for("the leader's quotas to be replicated", || async move {
            let (_, text) = c.get(id, "/metrics").await.ok()?;
            (crate::common::sample(&text, "herald_state_quota{kind=\"users\"}")
                == Some(users as f64))
            .then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_separate_entries_with_their_own_ttl_and_a_cap() {
    let c = TestCluster::start_custom(3, crate::common::timings(), |cfg| {
        cfg.quotas.connections_per_user = 3;
        cfg.quotas.users = 1_001;
    })
    .await;
    let leader = c.wait_leader().await;
    wait_quotas(&c, 1_001).await;
    let mut cl = c.client(leader);
    let rec = |r: tonic::Response<PresenceWriteResponse>| r.into_inner().record.unwrap();

    // Two phones of one user: two entries.
    rec(cl
        .login(login_on("alice", "mobile", "p1", 0))
        .await
        .unwrap());
    let r = rec(cl
        .login(login_on("alice", "mobile", "p2", 0))
        .await
        .unwrap());
    assert_eq!(
        conns(&r),
        [pair("mobile", "p1"), pair("mobile", "p2")],
        "{r:?}"
    );
    // Logging out one keeps the other.
    let r = rec(cl.logout(logout_of("alice", "mobile", "p1")).await.unwrap());
    assert_eq!(conns(&r), [pair("mobile", "p2")]);
    assert!(r.online);
    let e = cl
        .logout(logout_of("alice", "mobile", "p1"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::NotFound, "NOT_FOUND")
    );

    // The cap: three connections, a fourth refused before it is logged
    // (the record keeps its revision); a login of one already online
    // replaces its entry.
    rec(cl
        .login(login_on("alice", "mobile", "p3", 0))
        .await
        .unwrap());
    let r = rec(cl.login(login_on("alice", "pc", "", 0)).await.unwrap());
    assert_eq!(r.clients.len(), 3);
    let e = cl
        .login(login_on("alice", "web", "tab", 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(reason(&e), "QUOTA_EXCEEDED");
    assert!(
        e.message()
            .starts_with("quota connections_per_user = 3 reached: "),
        "{}",
        e.message()
    );
    let now = cl
        .get_presence(GetPresenceRequest {
            uid: "alice".into(),
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap();
    assert_eq!(
        now.revision, r.revision,
        "the refused login changed nothing"
    );
    rec(cl
        .login(login_on("alice", "mobile", "p3", 0))
        .await
        .unwrap());
    // A type-only logout takes every connection of the type.
    let r = rec(cl.logout(logout_of("alice", "mobile", "")).await.unwrap());
    assert_eq!(conns(&r), [pair("pc", "")]);

    // Bad connection ids are refused naming the field, on every call.
    let bad = [
        cl.login(login_on("alice", "pc", &"c".repeat(65), 0))
            .await
            .unwrap_err(),
        cl.login(login_on("alice", "pc", "tab\t1", 0))
            .await
            .unwrap_err(),
        cl.logout(logout_of("alice", "", "p1")).await.unwrap_err(),
        cl.heartbeat(HeartbeatRequest {
            uid: "alice".into(),
            client_type: "pc".into(),
            connection_id: "é".into(),
        })
        .await
        .unwrap_err(),
    ];
    for e in bad {
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert_eq!(reason(&e), "INVALID_FIELD");
        assert!(
            e.message().starts_with("connection_id: "),
            "{}",
            e.message()
        );
    }

    // Each connection has its own TTL on the uid's owner: heartbeats of
    // "a" (through the client library, which sends them to the owner)
    // keep "a" online while "b", silent, is expired alone.
    let lib = c.client_lib();
    let first = rec(cl
        .login(login_on("bob", "mobile", "a", 1_500))
        .await
        .unwrap())
    .revision;
    rec(cl
        .login(login_on("bob", "mobile", "b", 1_500))
        .await
        .unwrap());
    let mut watch = c
        .client(leader)
        .watch(WatchRequest {
            uids: vec!["bob".into()],
            start_revision: first,
        })
        .await
        .unwrap()
        .into_inner();
    let beating = {
        let lib = lib.clone();
        tokio::spawn(async move {
            loop {
                // Pacing, not synchronisation: a client's heartbeat period.
                tokio::time::sleep(Duration::from_millis(250)).await;
                let _ = lib.heartbeat_connection("bob", "mobile", "a").await;
            }
        })
    };
    let expired = tokio::time::timeout(WAIT, async {
        while let Some(e) = watch.next().await {
            let e = e.expect("watch event");
            if e.kind == PresenceEventKind::Expired as i32 {
                return e;
            }
        }
        panic!("the watch ended");
    })
    .await
    .expect("an expiry within the wait");
    assert_eq!(
        (expired.client_type.as_str(), expired.connection_id.as_str()),
        ("mobile", "b")
    );
    assert_eq!(
        conns(expired.record.as_ref().unwrap()),
        [pair("mobile", "a")]
    );
    assert!(
        !lib.heartbeat_connection("bob", "mobile", "b")
            .await
            .unwrap(),
        "b must log in again"
    );
    assert!(
        lib.heartbeat_connection("bob", "mobile", "a")
            .await
            .unwrap()
    );
    beating.abort();
    // Silent now, "a" goes too.
    let expired = tokio::time::timeout(WAIT, async {
        while let Some(e) = watch.next().await {
            let e = e.expect("watch event");
            if e.kind == PresenceEventKind::Expired as i32 {
                return e;
            }
        }
        panic!("the watch ended");
    })
    .await
    .expect("the second expiry within the wait");
    assert_eq!(expired.connection_id, "a");
    assert!(!expired.record.unwrap().online);
}

/// One event of a `text/event-stream`.
#[derive(Debug, Default, Clone)]
pub(crate) struct SseEvent {
    pub(crate) id: Option<String>,
    pub(crate) event: String,
    pub(crate) data: String,
}

/// A Server-Sent Events stream read through hyper's HTTP/1.1 client over
/// the cluster's TLS, as `root`.
#[derive(Debug)]
pub(crate) struct EventStream {
    body: hyper::body::Incoming,
    buf: String,
}

impl EventStream {
    /// The next event (comments skipped); `None` when the stream ended.
    pub(crate) async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = SseEvent::default();
                let mut fields = 0;
                for line in block.lines() {
                    if line.starts_with(':') {
                        continue; // a comment: the keep-alive
                    }
                    let (k, v) = line.split_once(':').unwrap_or((line, ""));
                    let v = v.strip_prefix(' ').unwrap_or(v);
                    fields += 1;
                    match k {
                        "id" => ev.id = Some(v.to_string()),
                        "event" => ev.event = v.to_string(),
                        "data" => {
                            if !ev.data.is_empty() {
                                ev.data.push('\n');
                            }
                            ev.data.push_str(v);
                        }
                        _ => {}
                    }
                }
                if fields > 0 {
                    return Some(ev);
                }
                continue;
            }
            let frame = tokio::time::timeout(WAIT, self.body.frame())
                .await
                .expect("an event within the wait")?
                .ok()?;
            if let Ok(data) = frame.into_data() {
                self.buf
                    .push_str(std::str::from_utf8(&data).expect("UTF-8 events"));
            }
        }
    }

    /// The next `presence` event's data as JSON.
    async fn presence(&mut self) -> (SseEvent, serde_json::Value) {
        self.event("presence").await
    }

    /// The next event, which must be a `name` event, and its data as JSON.
    pub(crate) async fn event(&mut self, name: &str) -> (SseEvent, serde_json::Value) {
        let e = self.next().await.expect("the stream goes on");
        assert_eq!(e.event, name, "{e:?}");
        let json = serde_json::from_str(&e.data).expect("JSON data");
        (e, json)
    }
}

/// `GET path` on node `id`'s HTTP port with `headers`: the status, the
/// content type, and the event stream (2xx) or the body (else).
pub(crate) async fn sse_get(
    c: &TestCluster,
    id: u64,
    path: &str,
    headers: &[(&str, String)],
) -> (u16, String, Result<EventStream, String>) {
    let addr = c.http_addr(id);
    let tls = crate::common::tls_connect(&c.certs, &addr, Some(ROOT))
        .await
        .expect("TLS");
    let (mut send, conn) = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::Empty<bytes::Bytes>,
    >(hyper_util::rt::TokioIo::new(tls))
    .await
    .expect("HTTP/1.1 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = http::Request::get(path)
        .header("host", addr.as_str())
        .header("accept", "text/event-stream");
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let resp = send
        .send_request(req.body(http_body_util::Empty::new()).unwrap())
        .await
        .expect("response head");
    let code = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp.into_body();
    if (200..300).contains(&code) {
        let stream = EventStream {
            body,
            buf: String::new(),
        };
        (code, content_type, Ok(stream))
    } else {
        let bytes = body.collect().await.expect("error body").to_bytes();
        (
            code,
            content_type,
            Err(String::from_utf8_lossy(&bytes).into_owned()),
        )
    }
}

/// What identifies a change: revision, kind, uid, client and connection.
fn key_of_json(v: &serde_json::Value) -> (u64, String, String, String, String) {
    (
        v["revision"].as_u64().unwrap(),
        v["kind"].as_str().unwrap().to_string(),
        v["uid"].as_str().unwrap().to_string(),
        v["client_type"].as_str().unwrap().to_string(),
        v["connection_id"].as_str().unwrap().to_string(),
    )
}

fn key_of_pb(e: &PresenceEvent) -> (u64, String, String, String, String) {
    (
        e.revision,
        PresenceEventKind::try_from(e.kind)
            .unwrap()
            .as_str_name()
            .to_string(),
        e.uid.clone(),
        e.client_type.clone(),
        e.connection_id.clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_watch_is_the_grpc_stream_resumes_by_last_event_id_and_refuses_compacted() {
    let c = TestCluster::start_custom(3, crate::common::timings(), |cfg| {
        cfg.quotas.watch_history_bytes = 1024 * 1024;
        cfg.quotas.users = 1_002;
    })
    .await;
    let leader = c.wait_leader().await;
    wait_quotas(&c, 1_002).await;
    let follower = c.alive().into_iter().find(|id| *id != leader).unwrap();
    let mut cl = c.client(leader);
    let first = cl
        .login(login_on("s1", "pc", "", 0))
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap()
        .revision;

    // The event stream on a follower, and the gRPC watch of the same users
    // from the same revision: they must deliver the same changes.
    let path = format!("/v1/watch?ids=s1,s2&start_revision={first}");
    let (code, content_type, stream) = sse_get(&c, follower, &path, &[]).await;
    assert_eq!(code, 200, "{stream:?}", stream = stream.as_ref().err());
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let mut sse = stream.unwrap();
    let mut grpc = c
        .client(follower)
        .watch(WatchRequest {
            uids: vec!["s1".into(), "s2".into()],
            start_revision: first,
        })
        .await
        .unwrap()
        .into_inner();

    cl.login(login_on("s2", "mobile", "tab-1", 0))
        .await
        .unwrap();
    cl.login(login_on("not-watched", "pc", "", 0))
        .await
        .unwrap();
    cl.logout(logout_of("s1", "", "")).await.unwrap();

    let mut got = Vec::new();
    for _ in 0..2 {
        let (e, json) = sse.presence().await;
        assert_eq!(
            e.id,
            Some(json["revision"].to_string()),
            "id is the revision"
        );
        got.push(json);
    }
    assert_eq!(got[0]["uid"], "s1");
    assert_eq!(got[0]["kind"], "LOGIN");
    assert_eq!(got[1]["connection_id"], "tab-1");
    assert_eq!(got[1]["record"]["clients"][0]["connection_id"], "tab-1");
    assert_eq!(got[1]["record"]["online"], true);
    // The client goes away after two events; more changes happen.
    let last_id = got[1]["revision"].as_u64().unwrap();
    drop(sse);
    cl.logout(logout_of("s2", "mobile", "tab-1")).await.unwrap();
    cl.login(login_on("s1", "web", "w", 0)).await.unwrap();

    // It comes back with Last-Event-ID (an EventSource keeps the URL, so
    // the URL's older start must lose to the header).
    let (code, _, stream) = sse_get(
        &c,
        follower,
        &path,
        &[("last-event-id", last_id.to_string())],
    )
    .await;
    assert_eq!(code, 200);
    let mut sse = stream.unwrap();
    for _ in 0..3 {
        got.push(sse.presence().await.1);
    }
    let mut want = Vec::new();
    for _ in 0..5 {
        let e = tokio::time::timeout(WAIT, grpc.next())
            .await
            .expect("a gRPC event")
            .unwrap()
            .unwrap();
        want.push(key_of_pb(&e));
    }
    let got: Vec<_> = got.iter().map(key_of_json).collect();
    assert_eq!(got, want, "no gap, nothing twice, the gRPC stream's events");
    assert_eq!(got[2].1, "LOGOUT");
    assert_eq!(got[4].4, "w");

    // Bad input is the JSON error document.
    let (code, _, body) = sse_get(&c, follower, "/v1/watch?start_revision=x", &[]).await;
    assert_eq!(code, 400);
    assert!(body.unwrap_err().contains("start_revision"));
    let (code, _, body) = sse_get(
        &c,
        follower,
        "/v1/watch",
        &[("last-event-id", "nope".into())],
    )
    .await;
    assert_eq!(code, 400);
    assert!(body.unwrap_err().contains("Last-Event-ID"));

    // Fill the 1 MiB history with changes that each replace a 4 KB ext
    // until the first revisions are compacted; a start there is refused
    // before any stream opens, with the gRPC watch's reason.
    let writes = (0..8).map(|w| {
        let mut cl = c.client(leader);
        async move {
            let mut last = 0;
            for i in 0..40 {
                let mut req = login_on(&format!("big-{w}"), "pc", "", 0);
                req.ext
                    .insert("blob".into(), format!("{i:04}").repeat(1000));
                last = cl
                    .login(req)
                    .await
                    .unwrap()
                    .into_inner()
                    .record
                    .unwrap()
                    .revision;
            }
            last
        }
    });
    let last = futures::future::join_all(writes)
        .await
        .into_iter()
        .max()
        .unwrap();
    c.wait_applied(last).await;
    let e = c
        .client(follower)
        .watch(WatchRequest {
            uids: vec![],
            start_revision: first,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::OutOfRange, "COMPACTED")
    );
    let (code, content_type, body) = sse_get(
        &c,
        follower,
        &format!("/v1/watch?start_revision={first}"),
        &[],
    )
    .await;
    let body = body.unwrap_err();
    assert_eq!(code, 400, "{body}");
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["reason"], "COMPACTED", "{json}");
    assert!(
        json["error"].as_str().unwrap().contains("compacted"),
        "{json}"
    );
    // The same through Last-Event-ID.
    let (code, _, body) = sse_get(
        &c,
        follower,
        "/v1/watch",
        &[("last-event-id", first.to_string())],
    )
    .await;
    assert_eq!(code, 400);
    assert!(body.unwrap_err().contains("COMPACTED"));
}
