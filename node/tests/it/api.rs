//! The client API end to end on a real 3-node cluster: bad input is refused
//! with the field named and nothing applied; watch delivers every change in
//! revision order and resumes without gaps on another node; the HTTP batch
//! lookup; handoff fencing and lease idempotency through gRPC; no lease
//! takeover from a listing or a replay; a `Batch` answers each of its calls
//! on its own.

use std::collections::HashMap;

use crate::common::TestCluster;
use ::herald_client::proto::herald_client::HeraldClient;
use ::herald_client::proto::*;
use futures::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

fn login(uid: &str, client: &str) -> LoginRequest {
    LoginRequest {
        uid: uid.into(),
        sid: 7,
        client_type: client.into(),
        accept_strangers: false,
        ext: HashMap::new(),
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

async fn applied(c: &TestCluster, id: u64) -> u64 {
    c.status(id).await.unwrap().applied_index
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_naming_the_field_and_changes_nothing() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let mut cl = c.client(leader);
    cl.login(login("warmup", "pc")).await.unwrap();
    let before = applied(&c, leader).await;

    let cases: Vec<(Code, &str, tonic::Status)> = vec![
        (
            Code::InvalidArgument,
            "uid",
            cl.login(login("", "pc")).await.unwrap_err(),
        ),
        (
            Code::InvalidArgument,
            "uid",
            cl.login(login(&"x".repeat(129), "pc")).await.unwrap_err(),
        ),
        (Code::InvalidArgument, "ext", {
            let mut r = login("bob", "pc");
            r.ext.insert("k".into(), "v".repeat(5000));
            cl.login(r).await.unwrap_err()
        }),
        (Code::InvalidArgument, "uids", {
            let uids = (0..1001).map(|i| format!("u{i}")).collect();
            cl.batch_get_presence(BatchGetPresenceRequest {
                uids,
                consistency: 0,
            })
            .await
            .unwrap_err()
        }),
        (Code::InvalidArgument, "terminal.kind", {
            let t = Terminal {
                kind: 0,
                id: "x".into(),
            };
            cl.connect_session(ConnectRequest {
                terminal: Some(t),
                app_url: "https://a".into(),
                capabilities: vec![],
            })
            .await
            .unwrap_err()
        }),
        (Code::InvalidArgument, "terminal.id", {
            // Fails the IMEI Luhn check.
            cl.connect_session(ConnectRequest {
                terminal: Some(imei("490154203237519")),
                app_url: "https://a".into(),
                capabilities: vec![],
            })
            .await
            .unwrap_err()
        }),
        (Code::InvalidArgument, "progress", {
            cl.progress(ProgressRequest {
                session_id: 1,
                terminal: Some(imei("490154203237518")),
                epoch: 1,
                seq: 1,
                progress: vec![0; 64 * 1024 + 1],
            })
            .await
            .unwrap_err()
        }),
        (Code::NotFound, "session", {
            cl.progress(ProgressRequest {
                session_id: 999_999,
                terminal: Some(imei("490154203237518")),
                epoch: 1,
                seq: 1,
                progress: vec![1],
            })
            .await
            .unwrap_err()
        }),
        (Code::NotFound, "pool", {
            cl.lease_account(LeaseRequest {
                pool_id: 424_242,
                user: "u".into(),
                ttl_ms: 1000,
                request_id: "r".into(),
            })
            .await
            .unwrap_err()
        }),
    ];
    for (code, field, status) in cases {
        assert_eq!(status.code(), code, "{field}: {status:?}");
        assert!(
            status.message().contains(field),
            "message should name {field}: {}",
            status.message()
        );
    }
    // A call with one `uid` names `uid`, not the `uids[0]` of a batch.
    let single: Vec<(&str, tonic::Status)> = vec![
        (
            "GetPresence(uid=<10 KB>)",
            cl.get_presence(GetPresenceRequest {
                uid: "x".repeat(10_000),
                consistency: 0,
            })
            .await
            .unwrap_err(),
        ),
        (
            "GetPresence(uid=\"\")",
            cl.get_presence(GetPresenceRequest {
                uid: String::new(),
                consistency: 0,
            })
            .await
            .unwrap_err(),
        ),
        (
            "Heartbeat(uid=\"\")",
            cl.heartbeat(HeartbeatRequest {
                uid: String::new(),
                client_type: "pc".into(),
                connection_id: String::new(),
            })
            .await
            .unwrap_err(),
        ),
        (
            "Heartbeat(uid=<10 KB>)",
            cl.heartbeat(HeartbeatRequest {
                uid: "x".repeat(10_000),
                client_type: "pc".into(),
                connection_id: String::new(),
            })
            .await
            .unwrap_err(),
        ),
    ];
    for (call, status) in single {
        assert_eq!(status.code(), Code::InvalidArgument, "{call}: {status:?}");
        assert!(
            status.message().starts_with("uid:") && !status.message().contains("uids"),
            "{call} should name the field uid: {}",
            status.message()
        );
    }
    // Validation failures never reached the log; NotFound ones were applied
    // as rejections, which change nothing but the applied index.
    let r = cl
        .get_presence(GetPresenceRequest {
            uid: "bob".into(),
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.record.is_none(), "a refused login left a record");
    assert!(applied(&c, leader).await <= before + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_each_call_as_its_unary_rpc_would() {
    use batch_call::Call;
    use batch_reply::Reply;
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let follower = c.alive().into_iter().find(|id| *id != leader).unwrap();
    c.client(leader).login(login("alice", "pc")).await.unwrap();

    // To a follower, which forwards the writes and reads through ReadIndex.
    let mut cl = c.client(follower);
    let call = |c: Call| BatchCall { call: Some(c) };
    let calls = vec![
        call(Call::Login(login("carol", "tv"))),
        call(Call::Login(login(&"x".repeat(129), "pc"))),
        call(Call::GetPresence(GetPresenceRequest {
            uid: "alice".into(),
            consistency: Consistency::Linearizable as i32,
        })),
        BatchCall { call: None },
        call(Call::Heartbeat(HeartbeatRequest {
            uid: "nobody".into(),
            client_type: "pc".into(),
            connection_id: String::new(),
        })),
    ];
    let replies = cl
        .batch(BatchRequest { calls })
        .await
        .unwrap()
        .into_inner()
        .replies;
    assert_eq!(replies.len(), 5, "{replies:?}");
    match &replies[0].reply {
        Some(Reply::PresenceWrite(w)) => {
            let r = w.record.as_ref().unwrap();
            assert!(r.uid == "carol" && r.online, "{r:?}");
        }
        other => panic!("carol's login: {other:?}"),
    }
    // A forwarded write names the leader (the one it was forwarded to).
    let hint = replies[0].leader_hint;
    assert!(hint != 0 && hint != follower, "leader hint {hint}");
    let refused = |r: &BatchReply, field: &str| match &r.reply {
        Some(Reply::Error(e)) => {
            assert_eq!(e.code, Code::InvalidArgument as i32, "{e:?}");
            assert!(e.message.contains(field), "should name {field}: {e:?}");
            assert!(!e.not_applied, "{e:?}");
        }
        other => panic!("expected a refusal naming {field}: {other:?}"),
    };
    refused(&replies[1], "uid");
    match &replies[2].reply {
        // Linearizable: alice's acknowledged login is visible on the follower.
        Some(Reply::GetPresence(g)) => assert!(g.record.as_ref().unwrap().online),
        other => panic!("alice's get: {other:?}"),
    }
    refused(&replies[3], "calls[3]");
    match &replies[4].reply {
        Some(Reply::Heartbeat(h)) => assert!(!h.known),
        other => panic!("the heartbeat: {other:?}"),
    }

    // Each call is counted under its own method.
    let (_, metrics) = c.get(follower, "/metrics").await.unwrap();
    for (code, want) in [("Ok", 1.0), ("InvalidArgument", 1.0)] {
        let series = format!(
            "herald_api_requests_total{{server=\"client\",method=\"/herald.v1.Herald/Login\",code=\"{code}\"}}"
        );
        assert_eq!(
            crate::common::sample(&metrics, &series),
            Some(want),
            "{series}"
        );
    }

    // Too many calls: the whole batch is refused and nothing is applied.
    let calls = (0..1001)
        .map(|i| call(Call::Login(login(&format!("big{i}"), "pc"))))
        .collect();
    let err = cl.batch(BatchRequest { calls }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("calls"), "{err:?}");
    let err = cl.batch(BatchRequest { calls: vec![] }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let r = cl
        .get_presence(GetPresenceRequest {
            uid: "big0".into(),
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.record.is_none(), "a refused batch applied a login");
}

/// The gets of a batch share one ReadIndex: a follower that restarts
/// without the latest acknowledged write must not answer them from its
/// stale state, however early it is asked. (A batch whose gets skipped the
/// ReadIndex still passed the chaos smoke; this test fails on it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_gets_on_a_restarted_follower_sees_every_acknowledged_write() {
    use batch_call::Call;
    use batch_reply::Reply;
    let mut c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let follower = c.alive().into_iter().find(|id| *id != leader).unwrap();
    c.kill(follower);
    // Acknowledged by the other two while the follower is down.
    c.client(leader).login(login("late", "pc")).await.unwrap();
    c.restart(follower);
    let get = || BatchCall {
        call: Some(Call::GetPresence(GetPresenceRequest {
            uid: "late".into(),
            consistency: Consistency::Linearizable as i32,
        })),
    };
    // The first answer the restarted node gives, however early.
    let cl = c.client(follower);
    let replies = c
        .wait_for("the restarted follower to answer a batch", || {
            let mut cl = cl.clone();
            async move {
                let calls = vec![get(), get()];
                cl.batch(BatchRequest { calls }).await.ok()
            }
        })
        .await
        .into_inner()
        .replies;
    for r in &replies {
        match &r.reply {
            Some(Reply::GetPresence(g)) => {
                assert!(
                    g.record.as_ref().is_some_and(|r| r.online),
                    "stale read: {g:?}"
                )
            }
            other => panic!("a get: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_is_ordered_gapless_and_resumable_on_another_node() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let mut cl = c.client(leader);
    let first = cl
        .login(login("w0", "pc"))
        .await
        .unwrap()
        .into_inner()
        .record
        .unwrap()
        .revision;

    // Watch everything from the first revision on node A.
    let nodes = c.alive();
    let mut stream = c
        .client(nodes[0])
        .watch(WatchRequest {
            uids: vec![],
            start_revision: first,
        })
        .await
        .unwrap()
        .into_inner();
    let mut written = vec![first];
    for i in 1..10 {
        let uid = format!("w{i}");
        let rec = cl
            .login(login(&uid, "mobile"))
            .await
            .unwrap()
            .into_inner()
            .record
            .unwrap();
        written.push(rec.revision);
    }
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let e = stream.next().await.unwrap().unwrap();
        seen.push(e.revision);
    }
    drop(stream);
    // Resume on node B right after the last event seen.
    let resume = seen.last().unwrap() + 1;
    let mut stream = c
        .client(nodes[1])
        .watch(WatchRequest {
            uids: vec![],
            start_revision: resume,
        })
        .await
        .unwrap()
        .into_inner();
    while seen.len() < written.len() {
        let e = stream.next().await.unwrap().unwrap();
        seen.push(e.revision);
    }
    assert_eq!(
        seen, written,
        "watch must deliver every change once, in order"
    );

    // A uid filter sees only its user; a logout shows as an event.
    let mut only = c
        .client(nodes[2])
        .watch(WatchRequest {
            uids: vec!["w3".into()],
            start_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    cl.logout(LogoutRequest {
        uid: "w4".into(),
        sid: 7,
        client_type: String::new(),
        ext: HashMap::new(),
        connection_id: String::new(),
    })
    .await
    .unwrap();
    cl.logout(LogoutRequest {
        uid: "w3".into(),
        sid: 7,
        client_type: "mobile".into(),
        ext: HashMap::new(),
        connection_id: String::new(),
    })
    .await
    .unwrap();
    let e = only.next().await.unwrap().unwrap();
    assert_eq!(
        (e.uid.as_str(), e.kind),
        ("w3", PresenceEventKind::Logout as i32)
    );
    assert!(!e.record.unwrap().online);
}

/// A GET on node `id`'s HTTP port through the shared harness (TLS, as
/// root); the body as JSON.
async fn http_get(c: &TestCluster, id: u64, path: &str) -> (u16, serde_json::Value) {
    let (code, body) = c.get(id, path).await.expect("GET");
    (
        code,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_batch_lookup_and_health() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    c.client(leader).login(login("alice", "web")).await.unwrap();
    let follower = c.alive().into_iter().find(|id| *id != leader).unwrap();
    let base = "";
    let c = &c;
    let get = |path: String| async move { http_get(c, follower, &path).await };
    // Linearizable by default, served by a follower.
    let (code, body) = get(format!("{base}/v1/presence?ids=alice,nobody")).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["records"][0]["uid"], "alice");
    assert_eq!(body["records"][0]["online"], true);
    assert_eq!(body["records"][1]["online"], false);
    let (code, body) = get(format!("{base}/v1/presence")).await;
    assert_eq!(code, 400);
    assert!(body["error"].as_str().unwrap().contains("ids"));
    let many: Vec<String> = (0..1001).map(|i| format!("u{i}")).collect();
    let (code, body) = get(format!("{base}/v1/presence?ids={}", many.join(","))).await;
    assert_eq!(code, 400);
    assert!(body["error"].as_str().unwrap().contains("1000"), "{body}");
    let (code, body) = get(format!("{base}/health")).await;
    assert_eq!((code, body["leader"].as_u64()), (200, Some(leader)));
}

/// Issue 23 item 3: the documented batch (1000 ids of up to 128 bytes) can
/// be looked up (POST with a JSON body), invalid UTF-8 is refused, every
/// error is the JSON error document, and any valid uid (a comma in it
/// included) can be looked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_lookups_take_any_valid_batch_and_uid_and_answer_errors_as_json() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let mut cl = c.client(leader);
    cl.login(login("alice", "web")).await.unwrap();
    cl.login(login("a,b", "web")).await.unwrap();
    cl.login(login("x".repeat(128).as_str(), "web"))
        .await
        .unwrap();
    let follower = c.alive().into_iter().find(|id| *id != leader).unwrap();
    let json = |code: u16, body: String| -> (u16, serde_json::Value) {
        let v = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{code} with a body that is not JSON ({e}): {body:?}"));
        (code, v)
    };

    // 1000 ids of 128 bytes (the spec's largest batch) in a POST body.
    let mut ids: Vec<String> = (0..999).map(|i| format!("{i:0>128}")).collect();
    ids.push("x".repeat(128));
    let req = serde_json::json!({ "ids": ids, "consistency": "linearizable" });
    let (code, body) = c
        .post(follower, "/v1/presence", req.to_string().as_bytes())
        .await
        .map(|(c, b)| json(c, b))
        .unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["records"].as_array().unwrap().len(), 1000);
    assert_eq!(body["records"][999]["online"], true);
    // The same batch as a query string is refused by the server's URL limit,
    // which is why the POST form exists; the POST form refuses 1001 ids.
    let mut over = ids.clone();
    over.push("one-too-many".into());
    let (code, body) = c
        .post(
            follower,
            "/v1/presence",
            serde_json::json!({ "ids": over }).to_string().as_bytes(),
        )
        .await
        .map(|(c, b)| json(c, b))
        .unwrap();
    assert_eq!(code, 400);
    assert!(body["error"].as_str().unwrap().contains("1000"), "{body}");

    // A uid with a comma: `%2C` in the list, or one user by path.
    let (code, body) = c
        .get(follower, "/v1/presence?ids=alice,a%2Cb")
        .await
        .map(|(c, b)| json(c, b))
        .unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["records"][1]["uid"], "a,b");
    assert_eq!(body["records"][1]["online"], true);
    let (code, body) = c
        .get(follower, "/v1/presence/a%2Cb?consistency=serializable")
        .await
        .map(|(c, b)| json(c, b))
        .unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["record"]["uid"], "a,b");
    assert_eq!(body["record"]["online"], true);

    // Every refusal is the JSON error document with a 4xx code.
    for (what, code, body) in [
        (
            "invalid UTF-8 in ids",
            c.get(follower, "/v1/presence?ids=%ff%fe").await,
        ),
        (
            "invalid UTF-8 in a path uid",
            c.get(follower, "/v1/presence/%ff%fe").await,
        ),
        (
            "a key given twice",
            c.get(follower, "/v1/presence?ids=a&ids=b").await,
        ),
        (
            "a uid too long",
            c.get(follower, &format!("/v1/presence/{}", "y".repeat(129)))
                .await,
        ),
        ("no such route", c.get(follower, "/v1/nothing").await),
        ("not JSON", c.post(follower, "/v1/presence", b"{ids").await),
        (
            "a JSON body of the wrong shape",
            c.post(follower, "/v1/presence", b"{\"ids\": 7}").await,
        ),
        (
            "invalid UTF-8 in a JSON body",
            c.post(follower, "/v1/presence", b"{\"ids\": [\"\xff\xfe\"]}")
                .await,
        ),
        (
            "a method the route lacks",
            c.post(follower, "/health", b"{}").await,
        ),
    ]
    .map(|(what, r)| {
        let (code, body) = r.unwrap();
        (what, code, body)
    }) {
        let (code, body) = json(code, body);
        assert!((400..500).contains(&code), "{what}: {code} {body}");
        assert!(body["error"].is_string(), "{what}: {body}");
        // The reason is the gRPC API's ErrorReason name, on every refusal.
        let expected = match what {
            "no such route" | "a method the route lacks" => "NO_ROUTE",
            _ => "INVALID_FIELD",
        };
        assert_eq!(body["reason"], expected, "{what}: {body}");
        if what.starts_with("invalid UTF-8") || what.contains("twice") || what.contains("shape") {
            assert_eq!(code, 400, "{what}: {body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_fences_the_old_terminal_and_leases_are_idempotent() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let mut cl = c.client(c.alive().into_iter().find(|id| *id != leader).unwrap());
    let phone = imei("490154203237518");
    let tv = Terminal {
        kind: TerminalKind::Mac as i32,
        id: "00:1A:2B:3C:4D:5E".into(),
    };
    let s = cl
        .connect_session(ConnectRequest {
            terminal: Some(phone.clone()),
            app_url: "https://apps.example/quiz".into(),
            capabilities: vec!["video".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    cl.progress(ProgressRequest {
        session_id: s.session_id,
        terminal: Some(phone.clone()),
        epoch: 1,
        seq: 1,
        progress: b"q1".to_vec(),
    })
    .await
    .unwrap();
    let stale = cl
        .progress(ProgressRequest {
            session_id: s.session_id,
            terminal: Some(phone.clone()),
            epoch: 1,
            seq: 1,
            progress: b"again".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    // An incompatible tv is refused; a compatible one takes the session.
    let h = cl
        .handoff(HandoffRequest {
            session_id: s.session_id,
            mode: HandoffMode::Push as i32,
            initiator: Some(phone.clone()),
            candidates: vec![
                Candidate {
                    terminal: Some(imei("356938035643809")),
                    capabilities: vec!["audio".into()],
                },
                Candidate {
                    terminal: Some(tv.clone()),
                    capabilities: vec!["video".into(), "remote".into()],
                },
            ],
            bound_capabilities: vec![],
            holder: None,
            epoch: s.epoch,
            app_url: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(h.accepted);
    assert_eq!(h.refused.len(), 1);
    let after = h.session.unwrap();
    assert_eq!(
        (after.epoch, after.seq, after.progress.as_slice()),
        (2, 1, &b"q1"[..])
    );
    assert_eq!(after.terminal.unwrap().id, "00:1a:2b:3c:4d:5e");
    // The old terminal is fenced; the new one continues.
    let fenced = cl
        .progress(ProgressRequest {
            session_id: s.session_id,
            terminal: Some(phone),
            epoch: 1,
            seq: 2,
            progress: b"late".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(fenced.code(), Code::FailedPrecondition);
    assert!(fenced.message().contains("fenced"), "{}", fenced.message());
    cl.progress(ProgressRequest {
        session_id: s.session_id,
        terminal: Some(tv),
        epoch: 2,
        seq: 2,
        progress: b"q2".to_vec(),
    })
    .await
    .unwrap();
    let log = cl
        .session_log(SessionLogRequest {
            session_id: s.session_id,
            consistency: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let events: Vec<&str> = log.entries.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        events,
        [
            "connect",
            "progress",
            "handoff_refused",
            "handoff",
            "progress"
        ]
    );

    // Leases: a retry with the same request id returns the same lease.
    let p = cl
        .create_platform(CreatePlatformRequest {
            name: "tv".into(),
            units: vec![UnitSpec {
                name: "vote".into(),
                access_policy: AccessPolicy::HolderOnly as i32,
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .platform
        .unwrap();
    let unit = p.units[0].unit_id;
    let pool = cl
        .create_pool(CreatePoolRequest {
            unit_id: unit,
            name: "g".into(),
            provision: 1,
            max_size: 1,
            default_ttl_ms: 60_000,
        })
        .await
        .unwrap()
        .into_inner()
        .pool
        .unwrap();
    let req = LeaseRequest {
        pool_id: pool.pool_id,
        user: "v1".into(),
        ttl_ms: 0,
        request_id: "abc".into(),
    };
    let a = cl.lease_account(req.clone()).await.unwrap().into_inner();
    let b = cl.lease_account(req).await.unwrap().into_inner();
    assert_eq!(
        a.lease.as_ref().unwrap().lease_id,
        b.lease.as_ref().unwrap().lease_id
    );
    assert!(b.replayed && !a.replayed);
    // The pool has one account: a second user is refused, not double-leased.
    let other = cl
        .lease_account(LeaseRequest {
            pool_id: pool.pool_id,
            user: "v2".into(),
            ttl_ms: 0,
            request_id: "xyz".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::ResourceExhausted);
    // Both answers' passwords work (a duplicate delivery locks nobody out);
    // the holder-only policy holds.
    let account = b.lease.clone().unwrap().account;
    for answer in [&a, &b] {
        let ok = cl
            .account_login(AccountLoginRequest {
                unit_id: unit,
                account: account.clone(),
                password: answer.password.clone(),
                user: "v1".into(),
                lease_secret: answer.lease_secret.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(ok.ok, "{}", ok.reason);
    }
    let wrong_user = cl
        .account_login(AccountLoginRequest {
            unit_id: unit,
            account,
            password: b.password,
            user: "v2".into(),
            lease_secret: b.lease_secret,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!wrong_user.ok);
}

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Issue 15 item 5 and issue 23 item 7, from outside: what `ListLeases`
/// shows is not enough to take a lease over, a replay locks nobody out, and
/// no password or secret reaches the log, the snapshots or the node logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_cannot_be_taken_over_from_a_listing_or_a_replay() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let follower = c.alive().into_iter().find(|id| *id != leader).unwrap();
    let mut holder = c.client(leader);
    let mut attacker = c.client(follower);
    let p = holder
        .create_platform(CreatePlatformRequest {
            name: "tv".into(),
            units: vec![UnitSpec {
                name: "vote".into(),
                access_policy: AccessPolicy::HolderOnly as i32,
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .platform
        .unwrap();
    let unit = p.units[0].unit_id;
    let pool = holder
        .create_pool(CreatePoolRequest {
            unit_id: unit,
            name: "g".into(),
            provision: 1,
            max_size: 1,
            default_ttl_ms: 600_000,
        })
        .await
        .unwrap()
        .into_inner()
        .pool
        .unwrap();
    let request = LeaseRequest {
        pool_id: pool.pool_id,
        user: "viewer-1".into(),
        ttl_ms: 0,
        request_id: "7f3a9c0e5b2d4186a1c3e5f7092b4d6e".into(),
    };
    let mine = holder
        .lease_account(request.clone())
        .await
        .unwrap()
        .into_inner();
    let lease = mine.lease.clone().unwrap();
    assert_eq!(
        lease.request_id, request.request_id,
        "echoed to the requester"
    );
    assert_eq!(mine.lease_secret.len(), 32, "{}", mine.lease_secret);
    assert!(mine.lease_secret.chars().all(|ch| ch.is_ascii_hexdigit()));
    let sign_in = |cl: &HeraldClient<Channel>, password: &str, user: &str, secret: &str| {
        let req = AccountLoginRequest {
            unit_id: unit,
            account: lease.account.clone(),
            password: password.into(),
            user: user.into(),
            lease_secret: secret.into(),
        };
        let mut cl = cl.clone();
        async move { cl.account_login(req).await.unwrap().into_inner() }
    };
    let ok = sign_in(&holder, &mine.password, "viewer-1", &mine.lease_secret).await;
    assert!(ok.ok, "{}", ok.reason);

    // The listing shows holder, account and times, never the request id.
    let listed = attacker
        .list_leases(ListLeasesRequest {
            pool_id: pool.pool_id,
            consistency: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .leases;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].holder.as_str(), listed[0].account.as_str()),
        ("viewer-1", lease.account.as_str())
    );
    assert_eq!(listed[0].request_id, "");
    let shown = format!("{listed:?}");
    for secret in [&request.request_id, &mine.password, &mine.lease_secret] {
        assert!(!shown.contains(secret.as_str()), "listing shows {secret}");
    }

    // Renew, release and account data with the listed holder's name alone,
    // or with a guessed secret, are refused.
    let id = lease.lease_id;
    for secret in ["", "0123456789abcdef0123456789abcdef"] {
        let want = if secret.is_empty() {
            Code::InvalidArgument
        } else {
            Code::PermissionDenied
        };
        let errors = [
            attacker
                .renew_lease(RenewRequest {
                    lease_id: id,
                    user: "viewer-1".into(),
                    ttl_ms: 1,
                    lease_secret: secret.into(),
                })
                .await
                .unwrap_err(),
            attacker
                .release_lease(ReleaseRequest {
                    lease_id: id,
                    user: "viewer-1".into(),
                    lease_secret: secret.into(),
                })
                .await
                .unwrap_err(),
            attacker
                .put_account_data(PutAccountDataRequest {
                    lease_id: id,
                    user: "viewer-1".into(),
                    key: "posts".into(),
                    value: b"spam".to_vec(),
                    lease_secret: secret.into(),
                })
                .await
                .unwrap_err(),
        ];
        for e in errors {
            assert_eq!(e.code(), want, "{e:?}");
            assert!(e.message().contains("lease_secret"), "{}", e.message());
        }
    }
    // Holder-only login: the holder's name and password are not enough.
    for secret in ["", "0123456789abcdef0123456789abcdef"] {
        let no = sign_in(&attacker, &mine.password, "viewer-1", secret).await;
        assert!(
            !no.ok && no.reason.contains("lease_secret"),
            "{}",
            no.reason
        );
    }

    // A replay of the request id for another user is refused. (Until the
    // listeners authenticate, every caller is the same principal; the state
    // machine's tests cover a replay by another one.)
    let mut other_user = request.clone();
    other_user.user = "mallory".into();
    let e = attacker.lease_account(other_user).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    // A duplicate delivery for the same user returns the same lease with new
    // credentials, and the holder's keep working.
    let dup = attacker.lease_account(request).await.unwrap().into_inner();
    assert!(dup.replayed);
    assert_eq!(dup.lease.as_ref().unwrap().lease_id, id);
    assert_ne!(dup.password, mine.password);
    assert_ne!(dup.lease_secret, mine.lease_secret);
    for (password, secret) in [
        (&mine.password, &mine.lease_secret),
        (&dup.password, &dup.lease_secret),
    ] {
        let ok = sign_in(&holder, password, "viewer-1", secret).await;
        assert!(ok.ok, "{}", ok.reason);
        // Nothing the attacker tried changed the lease or its data.
        assert!(ok.data.is_empty(), "{:?}", ok.data);
        assert_eq!(ok.lease.unwrap().expires_ms, lease.expires_ms);
    }

    // The holder's own secret works; the lease stays theirs.
    holder
        .put_account_data(PutAccountDataRequest {
            lease_id: id,
            user: "viewer-1".into(),
            key: "posts".into(),
            value: b"hello".to_vec(),
            lease_secret: mine.lease_secret.clone(),
        })
        .await
        .unwrap();
    holder
        .renew_lease(RenewRequest {
            lease_id: id,
            user: "viewer-1".into(),
            ttl_ms: 0,
            lease_secret: dup.lease_secret.clone(),
        })
        .await
        .unwrap();

    // Neither the Raft log nor a snapshot nor a node's log holds a password,
    // a secret or anything but their hashes.
    for id in c.alive() {
        c.admin(id).snapshot(SnapshotRequest {}).await.unwrap();
    }
    let plain = [
        &mine.password,
        &mine.lease_secret,
        &dup.password,
        &dup.lease_secret,
    ];
    for node in c.nodes.values() {
        let files = files_under(&node.config.data_dir);
        assert!(!files.is_empty());
        for file in files {
            let bytes = std::fs::read(&file).unwrap();
            for secret in plain {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{} holds a password or secret in plain text",
                    file.display()
                );
            }
        }
    }
    let logs = c.log_tails();
    for secret in plain {
        assert!(!logs.contains(secret.as_str()), "a node logged {secret}");
    }

    holder
        .release_lease(ReleaseRequest {
            lease_id: id,
            user: "viewer-1".into(),
            lease_secret: mine.lease_secret.clone(),
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_expire_by_cluster_time_without_other_writes() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let mut cl = c.client(leader);
    let p = cl
        .create_platform(CreatePlatformRequest {
            name: "exp".into(),
            units: vec![UnitSpec {
                name: "u".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .platform
        .unwrap();
    let pool = cl
        .create_pool(CreatePoolRequest {
            unit_id: p.units[0].unit_id,
            name: "g".into(),
            provision: 1,
            max_size: 1,
            default_ttl_ms: 300,
        })
        .await
        .unwrap()
        .into_inner()
        .pool
        .unwrap();
    cl.lease_account(LeaseRequest {
        pool_id: pool.pool_id,
        user: "v".into(),
        ttl_ms: 0,
        request_id: "1".into(),
    })
    .await
    .unwrap();
    // The leader proposes a Tick once the lease is due; every node sees it expire.
    c.wait_for("the lease to expire on every node", || async {
        for id in c.alive() {
            let pools = c
                .client(id)
                .list_pools(ListPoolsRequest {
                    unit_id: 0,
                    consistency: Consistency::Serializable as i32,
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner()
                .pools;
            let p = pools.iter().find(|x| x.pool_id == pool.pool_id)?;
            if p.free != 1 || p.expired_total != 1 {
                return None;
            }
        }
        Some(())
    })
    .await;
}

/// Quotas come from the leader's `[quotas]` (written to the log by the
/// leader), refuse with RESOURCE_EXHAUSTED naming the quota and its value
/// before anything is logged, and deletes free what they held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_from_the_config_refuse_naming_the_quota_and_deletes_free_the_place() {
    let c = TestCluster::start_custom(3, crate::common::timings(), |cfg| {
        cfg.quotas.clients_per_user = 2;
        cfg.quotas.sessions_per_terminal = 1;
        cfg.quotas.users = 1_000;
    })
    .await;
    let leader = c.wait_leader().await;
    // The leader writes its quotas within a second of taking office; every
    // replica then shows them.
    let cl = &c;
    for id in 1..=3 {
        c.wait_for("the leader's quotas to be replicated", || async move {
            let (_, text) = cl.get(id, "/metrics").await.ok()?;
            (crate::common::sample(&text, "herald_state_quota{kind=\"users\"}") == Some(1_000.0))
                .then_some(())
        })
        .await;
    }
    let mut api = c.client(leader);
    api.login(login("quota-user", "pc")).await.unwrap();
    api.login(login("quota-user", "mobile")).await.unwrap();
    let refused = api.login(login("quota-user", "web")).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .starts_with("quota clients_per_user = 2 reached: "),
        "{}",
        refused.message()
    );
    // Refused before it was logged: the applied index does not move on
    // any node when the refusal repeats.
    let before = applied(&c, leader).await;
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let again = c
        .client(follower)
        .login(login("quota-user", "tv"))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::ResourceExhausted);
    assert_eq!(applied(&c, leader).await, before);

    let connect = |id: &str| ConnectRequest {
        terminal: Some(imei(id)),
        app_url: "app://quota".into(),
        capabilities: vec![],
    };
    let first = api
        .connect_session(connect("490154203237518"))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    let second = api
        .connect_session(connect("490154203237518"))
        .await
        .unwrap_err();
    assert_eq!(second.code(), Code::ResourceExhausted);
    assert!(second.message().contains("sessions_per_terminal = 1"));
    api.delete_session(DeleteSessionRequest {
        session_id: first.session_id,
    })
    .await
    .unwrap();
    let gone = api
        .get_session(GetSessionRequest {
            session_id: first.session_id,
            consistency: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    api.connect_session(connect("490154203237518"))
        .await
        .unwrap();
    let missing = api
        .delete_pool(DeletePoolRequest {
            pool_id: 999,
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}
