//! The patents' flows end to end through the gRPC contract on a real
//! 3-node cluster, each call on a follower (forwarded to the leader):
//! the P-handoff Fig. 3 pull through a binding, the two-step offer/accept
//! with the target told through the session watch, bindings read and
//! removed, a terminal's sessions listed, stale handoffs fenced; and the
//! P-iptv automatic login, refused for a closed or out-of-period unit; and
//! the same flows as a web page makes them over HTTP JSON and SSE.

use ::herald_client::proto::herald_client::HeraldClient;
use ::herald_client::proto::*;
use ::herald_client::reason_of;
use futures::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

use crate::common::TestCluster;

fn imei(id: &str) -> Terminal {
    Terminal {
        kind: TerminalKind::Imei as i32,
        id: id.into(),
    }
}

fn mac(id: &str) -> Terminal {
    Terminal {
        kind: TerminalKind::Mac as i32,
        id: id.into(),
    }
}

fn video(t: &Terminal) -> Candidate {
    Candidate {
        terminal: Some(t.clone()),
        capabilities: vec!["video".into()],
    }
}

async fn connect(cl: &mut HeraldClient<Channel>, t: &Terminal, app: &str) -> Session {
    cl.connect_session(ConnectRequest {
        terminal: Some(t.clone()),
        app_url: app.into(),
        capabilities: vec!["video".into()],
    })
    .await
    .unwrap()
    .into_inner()
    .session
    .unwrap()
}

/// A unit of the `tv` platform: QoS class gold, 150 ms target, `policy`,
/// in service from `start` (ms since the epoch).
fn unit(name: &str, policy: AccessPolicy, start: u64) -> UnitSpec {
    UnitSpec {
        name: name.into(),
        service_start_ms: start,
        qos_class: "gold".into(),
        response_time_ms: 150,
        access_policy: policy as i32,
        ..Default::default()
    }
}

/// Starts in the year 2286: a unit not yet in service.
const LATER: u64 = 9_999_999_999_999;

/// Creates the `tv` platform with `units`.
async fn tv_platform(cl: &mut HeraldClient<Channel>, units: Vec<UnitSpec>) -> Platform {
    cl.create_platform(CreatePlatformRequest {
        name: "tv".into(),
        units,
    })
    .await
    .unwrap()
    .into_inner()
    .platform
    .unwrap()
}

/// One pool per unit of `p` (one account, at most `max_size`), in the
/// units' order.
async fn pool_per_unit(cl: &mut HeraldClient<Channel>, p: &Platform, max_size: u32) -> Vec<u64> {
    let mut pools = Vec::new();
    for u in &p.units {
        let pool = cl
            .create_pool(CreatePoolRequest {
                unit_id: u.unit_id,
                name: u.spec.as_ref().unwrap().name.clone(),
                provision: 1,
                max_size,
                default_ttl_ms: 60_000,
            })
            .await
            .unwrap()
            .into_inner()
            .pool
            .unwrap();
        pools.push(pool.pool_id);
    }
    pools
}

fn refused(r: Result<impl std::fmt::Debug, tonic::Status>, code: Code, reason: &str) {
    let status = r.expect_err("expected a refusal");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason_of(&status).as_deref(), Some(reason), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoffs_in_every_direction_and_the_new_holder_is_told() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let follower = c.alive().into_iter().find(|id| *id != leader).unwrap();
    let mut cl = c.client(follower);
    let phone = imei("490154203237518");
    let tv = mac("00:1a:2b:3c:4d:5e");
    let pc = mac("aa:bb:cc:dd:ee:ff");

    // The TV watches for sessions coming its way before anything happens.
    let mut tv_watch = cl
        .watch_sessions(WatchSessionsRequest {
            terminals: vec![tv.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let game = connect(&mut cl, &phone, "https://game.example/play").await;
    let mail = connect(&mut cl, &phone, "https://mail.example/inbox").await;
    let listed = cl
        .list_sessions(ListSessionsRequest {
            terminal: Some(phone.clone()),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.sessions.len(), 1);
    assert_eq!(listed.sessions[0].session_id, game.session_id);
    let rest = cl
        .list_sessions(ListSessionsRequest {
            terminal: Some(phone.clone()),
            page_token: listed.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.sessions[0].session_id, mail.session_id);
    assert!(rest.next_page_token.is_empty());

    // Fig. 3: the TV asks; the holder is found through the binding.
    cl.bind(BindRequest {
        first: Some(tv.clone()),
        second: Some(phone.clone()),
    })
    .await
    .unwrap();
    let bound = cl
        .get_binding(GetBindingRequest {
            terminal: Some(tv.clone()),
            consistency: Consistency::Linearizable as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .bound;
    assert_eq!(bound.unwrap().id, phone.id);
    let pulled = cl
        .handoff(HandoffRequest {
            mode: HandoffMode::PullBound as i32,
            initiator: Some(tv.clone()),
            candidates: vec![video(&tv)],
            app_url: "https://game.example/play".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(pulled.accepted);
    let after = pulled.session.unwrap();
    assert_eq!(after.session_id, game.session_id);
    assert_eq!(after.epoch, 2);
    let told = tv_watch.next().await.unwrap().unwrap();
    assert_eq!(told.kind, SessionEventKind::SessionHandedOff as i32);
    assert_eq!(told.session.unwrap().session_id, game.session_id);
    assert_eq!(told.from.unwrap().id, phone.id);

    // A pull naming the epoch it saw before the move is fenced; a handoff
    // without an epoch, or a seq past 2^53 - 1, is refused at the door.
    refused(
        cl.handoff(HandoffRequest {
            session_id: game.session_id,
            mode: HandoffMode::Pull as i32,
            initiator: Some(pc.clone()),
            holder: Some(tv.clone()),
            candidates: vec![video(&pc)],
            epoch: 1,
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
        "FENCED",
    );
    refused(
        cl.handoff(HandoffRequest {
            session_id: mail.session_id,
            mode: HandoffMode::Push as i32,
            initiator: Some(phone.clone()),
            candidates: vec![video(&tv)],
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    refused(
        cl.progress(ProgressRequest {
            session_id: mail.session_id,
            terminal: Some(phone.clone()),
            epoch: 1,
            seq: u64::MAX,
            progress: vec![],
        })
        .await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );

    // Two steps: the phone offers the mail to the TV, which is told, and
    // declines it (no "keyboard"), then takes a second offer.
    let offer = |to: &Terminal| OfferHandoffRequest {
        session_id: mail.session_id,
        initiator: Some(phone.clone()),
        epoch: 1,
        to: Some(to.clone()),
        ttl_ms: 30_000,
    };
    let first = cl.offer_handoff(offer(&tv)).await.unwrap().into_inner();
    let first_id = first.session.unwrap().offer.unwrap().offer_id;
    let told = tv_watch.next().await.unwrap().unwrap();
    assert_eq!(told.kind, SessionEventKind::SessionOffered as i32);
    assert_eq!(told.session.unwrap().offer.unwrap().offer_id, first_id);
    let accept = |offer_id, caps: &[&str]| AcceptHandoffRequest {
        session_id: mail.session_id,
        offer_id,
        terminal: Some(tv.clone()),
        capabilities: caps.iter().map(|c| c.to_string()).collect(),
    };
    let declined = cl
        .accept_handoff(accept(first_id, &["audio"]))
        .await
        .unwrap()
        .into_inner();
    assert!(!declined.accepted);
    let told = tv_watch.next().await.unwrap().unwrap();
    assert_eq!(told.kind, SessionEventKind::SessionOfferEnded as i32);
    refused(
        cl.accept_handoff(accept(first_id, &["video"])).await,
        Code::FailedPrecondition,
        "OFFER_ENDED",
    );
    let second = cl.offer_handoff(offer(&tv)).await.unwrap().into_inner();
    let second_id = second.session.unwrap().offer.unwrap().offer_id;
    let taken = cl
        .accept_handoff(accept(second_id, &["video"]))
        .await
        .unwrap()
        .into_inner();
    assert!(taken.accepted);
    assert_eq!(taken.session.unwrap().terminal.unwrap().id, tv.id);

    // Unbind: both sides gone; again is NOT_FOUND.
    let was = cl
        .unbind(UnbindRequest {
            terminal: Some(phone.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(was.was_bound_to.unwrap().id, tv.id);
    refused(
        cl.unbind(UnbindRequest {
            terminal: Some(tv.clone()),
        })
        .await,
        Code::NotFound,
        "NOT_FOUND",
    );

    // A watch resumed from the start on another node sees the same events.
    let other = c.alive().into_iter().find(|id| *id != follower).unwrap();
    let mut replay = c
        .client(other)
        .watch_sessions(WatchSessionsRequest {
            session_ids: vec![mail.session_id],
            start_revision: mail.session_id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = replay.next().await.unwrap().unwrap();
    assert_eq!(first.kind, SessionEventKind::SessionConnected as i32);
    assert_eq!(first.revision, mail.session_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_and_login_logs_in_and_a_closed_or_out_of_period_unit_leases_nothing() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let mut cl = c.client(c.alive().into_iter().find(|id| *id != leader).unwrap());
    let p = tv_platform(
        &mut cl,
        vec![
            unit("vote", AccessPolicy::HolderOnly, 0),
            unit("closed", AccessPolicy::Closed, 0),
            unit("later", AccessPolicy::LeasedAccounts, LATER),
        ],
    )
    .await;
    let pools = pool_per_unit(&mut cl, &p, 1).await;
    let lease = |pool_id: u64, rid: &str| LeaseAndLoginRequest {
        lease: Some(LeaseRequest {
            pool_id,
            user: "viewer-1".into(),
            ttl_ms: 0,
            request_id: rid.into(),
        }),
    };
    let both = cl
        .lease_and_login(lease(pools[0], "r1"))
        .await
        .unwrap()
        .into_inner();
    let leased = both.lease.unwrap();
    let login = both.login.unwrap();
    assert!(login.ok, "{login:?}");
    assert_eq!(
        login.lease.unwrap().lease_id,
        leased.lease.as_ref().unwrap().lease_id
    );
    for service in [leased.service.unwrap(), login.service.unwrap()] {
        assert_eq!(service.unit_id, p.units[0].unit_id);
        assert_eq!(service.qos_class, "gold");
        assert_eq!(service.response_time_ms, 150);
    }
    // The password it returned logs in by itself too.
    let again = cl
        .account_login(AccountLoginRequest {
            unit_id: p.units[0].unit_id,
            account: leased.lease.as_ref().unwrap().account.clone(),
            password: leased.password.clone(),
            user: "viewer-1".into(),
            lease_secret: leased.lease_secret.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.ok, "{again:?}");
    refused(
        cl.lease_and_login(lease(pools[1], "r2")).await,
        Code::FailedPrecondition,
        "UNIT_CLOSED",
    );
    refused(
        cl.lease_and_login(lease(pools[2], "r3")).await,
        Code::FailedPrecondition,
        "OUT_OF_SERVICE",
    );
    // Nothing was leased from either.
    for pool_id in &pools[1..] {
        let leases = cl
            .list_leases(ListLeasesRequest {
                pool_id: *pool_id,
                consistency: Consistency::Linearizable as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(leases.leases.is_empty());
    }
}

/// P-iptv's second access request with a viewer's own account, and the
/// first access request: registered accounts (Argon2id on the serving
/// node), a registered-only unit that leases nothing, content tags in the
/// three modes, the account data read back by the lease holder, and each
/// unit's response time beside its target in `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_accounts_content_tags_and_account_data_through_followers() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let followers: Vec<u64> = c.alive().into_iter().filter(|id| *id != leader).collect();
    let mut cl = c.client(followers[0]);
    let mut other = c.client(followers[1]);
    let p = tv_platform(
        &mut cl,
        vec![
            unit("quiz", AccessPolicy::LeasedAccounts, 0),
            unit("members", AccessPolicy::RegisteredOnly, 0),
            unit("later", AccessPolicy::LeasedAccounts, LATER),
        ],
    )
    .await;
    let (quiz, members, later) = (p.units[0].unit_id, p.units[1].unit_id, p.units[2].unit_id);

    // Registered on one follower, logged in through the other.
    let register = |account: &str, password: &str, replace: bool| RegisterAccountRequest {
        unit_id: members,
        account: account.into(),
        password: password.into(),
        replace,
    };
    let alice = cl
        .register_account(register("alice", "correct horse", false))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(alice.account, "alice");
    assert!(alice.created_ms > 0);
    let login = |password: &str| AccountLoginRequest {
        unit_id: members,
        account: "alice".into(),
        password: password.into(),
        user: "alice".into(),
        lease_secret: String::new(),
    };
    let ok = other
        .account_login(login("correct horse"))
        .await
        .unwrap()
        .into_inner();
    assert!(ok.ok && ok.registered, "{ok:?}");
    assert_eq!(ok.service.unwrap().response_time_ms, 150);
    let wrong = other
        .account_login(login("wrong horse!"))
        .await
        .unwrap()
        .into_inner();
    assert!(!wrong.ok, "{wrong:?}");
    assert_eq!(wrong.reason, "wrong password");
    refused(
        cl.register_account(register("alice", "another one", false))
            .await,
        Code::AlreadyExists,
        "ALREADY_EXISTS",
    );
    refused(
        cl.register_account(register("bob", "short", false)).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    refused(
        cl.register_account(register("u1p1-00000", "long enough", false))
            .await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    cl.register_account(register("alice", "another one", true))
        .await
        .unwrap();
    assert!(
        !other
            .account_login(login("correct horse"))
            .await
            .unwrap()
            .into_inner()
            .ok
    );
    let listed = other
        .list_accounts(ListAccountsRequest {
            unit_id: members,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.accounts.len(), 1);
    assert!(listed.accounts[0].updated_ms >= listed.accounts[0].created_ms);

    // A registered-only unit hands out no temporary account.
    let pool = |unit_id: u64| CreatePoolRequest {
        unit_id,
        name: format!("p{unit_id}"),
        provision: 1,
        max_size: 1,
        default_ttl_ms: 60_000,
    };
    let members_pool = cl
        .create_pool(pool(members))
        .await
        .unwrap()
        .into_inner()
        .pool
        .unwrap();
    let lease = |pool_id: u64| LeaseRequest {
        pool_id,
        user: "viewer-1".into(),
        ttl_ms: 0,
        request_id: format!("r{pool_id}"),
    };
    refused(
        cl.lease_account(lease(members_pool.pool_id)).await,
        Code::FailedPrecondition,
        "UNIT_CLOSED",
    );

    // The account data a holder stored is read back with the lease secret.
    let quiz_pool = cl
        .create_pool(pool(quiz))
        .await
        .unwrap()
        .into_inner()
        .pool
        .unwrap();
    let leased = cl
        .lease_account(lease(quiz_pool.pool_id))
        .await
        .unwrap()
        .into_inner();
    let lease_id = leased.lease.as_ref().unwrap().lease_id;
    cl.put_account_data(PutAccountDataRequest {
        lease_id,
        user: "viewer-1".into(),
        key: "score".into(),
        value: b"42".to_vec(),
        lease_secret: leased.lease_secret.clone(),
    })
    .await
    .unwrap();
    let get = |secret: &str| GetAccountDataRequest {
        lease_id,
        user: "viewer-1".into(),
        lease_secret: secret.into(),
        consistency: Consistency::Linearizable as i32,
    };
    let data = other
        .get_account_data(get(&leased.lease_secret))
        .await
        .unwrap()
        .into_inner()
        .data;
    assert_eq!(data.get("score").map(Vec::as_slice), Some(&b"42"[..]));
    refused(
        other.get_account_data(get("not-the-secret")).await,
        Code::PermissionDenied,
        "WRONG_SECRET",
    );

    // Content tags, and the first access request in each mode.
    let tag = |content: &str, mode: ContentUnitsMode, unit_ids: Vec<u64>| SetContentUnitsRequest {
        platform_id: p.platform_id,
        content_id: content.into(),
        mode: mode as i32,
        unit_ids,
    };
    cl.set_content_units(tag("news", ContentUnitsMode::UnitsList, vec![later, quiz]))
        .await
        .unwrap();
    cl.set_content_units(tag("film", ContentUnitsMode::UnitsAll, vec![]))
        .await
        .unwrap();
    cl.set_content_units(tag("ads", ContentUnitsMode::UnitsNone, vec![]))
        .await
        .unwrap();
    refused(
        cl.set_content_units(tag("x", ContentUnitsMode::UnitsAll, vec![quiz]))
            .await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    refused(
        cl.set_content_units(tag("x", ContentUnitsMode::UnitsList, vec![9999]))
            .await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    let first = |content: &str| FirstAccessRequest {
        platform_id: p.platform_id,
        content_id: content.into(),
        consistency: Consistency::Linearizable as i32,
    };
    let shown = |r: FirstAccessResponse| -> Vec<(u64, bool)> {
        r.units
            .iter()
            .map(|s| (s.unit.as_ref().unwrap().unit_id, s.available))
            .collect()
    };
    let news = other
        .first_access(first("news"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(news.mode, ContentUnitsMode::UnitsList as i32);
    assert_eq!(shown(news), [(later, false), (quiz, true)]);
    let film = other
        .first_access(first("film"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown(film), [(quiz, true), (members, true), (later, false)]);
    let ads = other.first_access(first("ads")).await.unwrap().into_inner();
    assert_eq!(ads.mode, ContentUnitsMode::UnitsNone as i32);
    assert!(ads.units.is_empty());
    refused(
        other.first_access(first("nope")).await,
        Code::NotFound,
        "NOT_FOUND",
    );
    cl.remove_content(RemoveContentRequest {
        platform_id: p.platform_id,
        content_id: "ads".into(),
    })
    .await
    .unwrap();
    refused(
        other.first_access(first("ads")).await,
        Code::NotFound,
        "NOT_FOUND",
    );

    // The units' response times are measured beside their targets, by the
    // node that answered: quiz's leases on one follower, members' logins on
    // the other.
    for (node, unit) in [(followers[0], quiz), (followers[1], members)] {
        let (_, metrics) = c.get(node, "/metrics").await.unwrap();
        let count = format!("herald_unit_response_seconds_count{{unit=\"{unit}\"}}");
        assert!(metrics.contains(&count), "no {count} in:\n{metrics}");
        let target = format!("herald_unit_response_target_seconds{{unit=\"{unit}\"}} 0.15");
        assert!(metrics.contains(&target), "no {target}");
    }
}

/// The same flows as a web page makes them, over HTTP JSON on a follower:
/// the automatic login (`POST /v1/pools/{id}/lease` with `login`), a
/// closed unit's refusal, a login of its own (`POST /v1/units/{id}/login`),
/// the first access request, and a terminal that follows its sessions by
/// Server-Sent Events, finds them by terminal, and reads one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_pages_lease_log_in_ask_first_access_and_follow_sessions_over_http() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let web = c.alive().into_iter().find(|id| *id != leader).unwrap();
    let mut cl = c.client(leader);
    let p = tv_platform(
        &mut cl,
        vec![
            unit("quiz", AccessPolicy::HolderOnly, 0),
            unit("closed", AccessPolicy::Closed, 0),
        ],
    )
    .await;
    let pools = pool_per_unit(&mut cl, &p, 2).await;
    cl.set_content_units(SetContentUnitsRequest {
        platform_id: p.platform_id,
        content_id: "film".into(),
        mode: ContentUnitsMode::UnitsAll as i32,
        unit_ids: vec![],
    })
    .await
    .unwrap();
    let json = |(code, body): (u16, String)| -> (u16, serde_json::Value) {
        let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        (code, v)
    };

    // Lease and log in, in one call.
    let (code, both) = json(
        c.post(
            web,
            &format!("/v1/pools/{}/lease", pools[0]),
            br#"{"user": "viewer-1", "request_id": "r1", "login": true}"#,
        )
        .await
        .unwrap(),
    );
    assert_eq!(code, 200, "{both}");
    assert_eq!(both["login"]["ok"], true, "{both}");
    assert_eq!(
        both["login"]["lease"]["lease_id"],
        both["lease"]["lease_id"]
    );
    assert_eq!(both["service"]["qos_class"], "gold");
    assert_eq!(both["service"]["response_time_ms"], 150);
    let account = both["lease"]["account"].as_str().unwrap().to_string();
    assert!(!both["password"].as_str().unwrap().is_empty());
    // Its password and secret log in by themselves too.
    let login = serde_json::json!({
        "account": account,
        "password": both["password"],
        "user": "viewer-1",
        "lease_secret": both["lease_secret"],
    });
    let (code, ok) = json(
        c.post(
            web,
            &format!("/v1/units/{}/login", p.units[0].unit_id),
            login.to_string().as_bytes(),
        )
        .await
        .unwrap(),
    );
    assert_eq!(
        (code, &ok["ok"], &ok["registered"]),
        (200, &true.into(), &false.into()),
        "{ok}"
    );
    // A holder-only unit without the secret: a refused login, not an error.
    let mut no_secret = login.clone();
    no_secret["lease_secret"] = "".into();
    let (code, refused_login) = json(
        c.post(
            web,
            &format!("/v1/units/{}/login", p.units[0].unit_id),
            no_secret.to_string().as_bytes(),
        )
        .await
        .unwrap(),
    );
    assert_eq!(
        (code, &refused_login["ok"]),
        (200, &false.into()),
        "{refused_login}"
    );
    // A closed unit leases nothing; bad bodies are refused whole.
    for (path, body, want, reason) in [
        (
            format!("/v1/pools/{}/lease", pools[1]),
            r#"{"user": "viewer-1", "request_id": "r2", "login": true}"#,
            412,
            "UNIT_CLOSED",
        ),
        (
            format!("/v1/pools/{}/lease", pools[0]),
            r#"{"user": "viewer-1", "logn": true}"#,
            400,
            "INVALID_FIELD",
        ),
        (
            "/v1/pools/x/lease".to_string(),
            r#"{"user": "viewer-1"}"#,
            400,
            "INVALID_FIELD",
        ),
        (
            format!("/v1/pools/{}/lease", pools[0]),
            r#"{"user": ""}"#,
            400,
            "INVALID_FIELD",
        ),
    ] {
        let (code, body) = json(c.post(web, &path, body.as_bytes()).await.unwrap());
        assert_eq!(
            (code, body["reason"].as_str()),
            (want, Some(reason)),
            "{path}: {body}"
        );
    }

    // The first access request.
    let (code, first) = json(
        c.get(
            web,
            &format!("/v1/platforms/{}/contents/film", p.platform_id),
        )
        .await
        .unwrap(),
    );
    assert_eq!(code, 200, "{first}");
    assert_eq!(first["mode"], "UNITS_ALL");
    let shown: Vec<(u64, bool)> = first["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["unit"]["unit_id"].as_u64().unwrap(),
                u["available"] == true,
            )
        })
        .collect();
    assert_eq!(
        shown,
        vec![(p.units[0].unit_id, true), (p.units[1].unit_id, false)]
    );
    let (code, body) = json(
        c.get(
            web,
            &format!("/v1/platforms/{}/contents/news", p.platform_id),
        )
        .await
        .unwrap(),
    );
    assert_eq!(
        (code, body["reason"].as_str()),
        (404, Some("NOT_FOUND")),
        "{body}"
    );

    // The TV follows its sessions by SSE; the phone pushes one to it.
    let phone = imei("490154203237518");
    let tv = mac("00:1a:2b:3c:4d:5e");
    let tv_q = "MAC:00:1a:2b:3c:4d:5e";
    let (code, _, stream) = crate::presence::sse_get(
        &c,
        web,
        &format!("/v1/sessions/watch?terminals={tv_q}"),
        &[],
    )
    .await;
    assert_eq!(code, 200);
    let mut tv_watch = stream.unwrap();
    let game = connect(&mut cl, &phone, "https://game.example/play").await;
    let pushed = cl
        .handoff(HandoffRequest {
            session_id: game.session_id,
            mode: HandoffMode::Push as i32,
            initiator: Some(phone.clone()),
            candidates: vec![video(&tv)],
            epoch: game.epoch,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(pushed.accepted);
    let (sse, told) = tv_watch.event("session").await;
    assert_eq!(told["kind"], "SESSION_HANDED_OFF", "{told}");
    assert_eq!(told["session"]["session_id"], game.session_id);
    assert_eq!(told["session"]["terminal"]["id"], tv.id);
    assert_eq!(told["from"]["kind"], "IMEI");
    assert_eq!(sse.id, Some(told["revision"].to_string()));

    // Found again by terminal, read by id; a bad terminal is refused.
    let (code, listed) = json(
        c.get(web, &format!("/v1/sessions?terminal={tv_q}"))
            .await
            .unwrap(),
    );
    assert_eq!(code, 200, "{listed}");
    assert_eq!(listed["sessions"][0]["session_id"], game.session_id);
    let (code, one) = json(
        c.get(web, &format!("/v1/sessions/{}", game.session_id))
            .await
            .unwrap(),
    );
    assert_eq!((code, &one["session"]["epoch"]), (200, &2.into()), "{one}");
    for bad in [
        "/v1/sessions?terminal=TV:1",
        "/v1/sessions?terminal=IMEI:12",
        "/v1/sessions",
    ] {
        let (code, body) = json(c.get(web, bad).await.unwrap());
        assert_eq!(
            (code, body["reason"].as_str()),
            (400, Some("INVALID_FIELD")),
            "{bad}: {body}"
        );
    }
    let (code, body) = json(c.get(web, "/v1/sessions/999999").await.unwrap());
    assert_eq!(code, 404, "{body}");

    // Resumed by Last-Event-ID from the session's start: the connect first.
    let (code, _, stream) = crate::presence::sse_get(
        &c,
        leader,
        &format!("/v1/sessions/watch?session_ids={}", game.session_id),
        &[("last-event-id", (game.session_id - 1).to_string())],
    )
    .await;
    assert_eq!(code, 200);
    let (_, first) = stream.unwrap().event("session").await;
    assert_eq!(first["kind"], "SESSION_CONNECTED", "{first}");
    assert_eq!(first["revision"], game.session_id);
}
