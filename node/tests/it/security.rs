//! Security on a real cluster, driven as an outsider would: raw gRPC calls
//! to every method of the contract, curl-like HTTPS, certificates from the
//! wrong CA or out of date, and forged peer messages.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use crate::common::{ROOT, TestCluster, channel_as};
use ::herald_client::proto::admin_client::AdminClient;
use ::herald_client::proto::auth_client::AuthClient;
use ::herald_client::proto::herald_client::HeraldClient;
use ::herald_client::proto::*;
use bytes::{Buf, BufMut};
use herald_certs::{Ca, Validity};
use herald_node::peer::proto::RaftBlob;
use herald_node::peer::proto::peer_client::PeerClient;
use herald_node::raft::TypeConfig;
use herald_node::raft::typ::Vote;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// Sends and receives raw protobuf bytes, so one helper can call any method
/// by its path (an empty message is a valid request for every one).
#[derive(Clone, Default)]
struct Raw;

struct RawCoder;

impl Encoder for RawCoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Self::Error> {
        let mut v = vec![0; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCoder;
    type Decoder = RawCoder;
    fn encoder(&mut self) -> RawCoder {
        RawCoder
    }
    fn decoder(&mut self) -> RawCoder {
        RawCoder
    }
}

/// Calls `path` with an empty request; the status code it ends with (Ok
/// for a success; for a stream, the code of its start).
async fn call(channel: Channel, path: &str) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel);
    if grpc.ready().await.is_err() {
        return Code::Unavailable;
    }
    let pq = http::uri::PathAndQuery::from_str(path).expect("path");
    let req = tonic::Request::new(Vec::new());
    if path.ends_with("/Watch")
        || path.ends_with("/WatchSessions")
        || path.ends_with("/SnapshotSave")
    {
        return match grpc.server_streaming(req, pq, Raw).await {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        };
    }
    match grpc.unary(req, pq, Raw).await {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// The role each method needs, written out here from the contract's
/// comment (not taken from the node's table, so a wrong entry there fails
/// this test). `None`: any authenticated caller.
fn needed(service: &str, method: &str) -> Option<&'static str> {
    match (service, method) {
        ("Herald", "Login" | "Logout" | "ChangePermission" | "Heartbeat") => Some("publisher"),
        ("Herald", "GetPresence" | "BatchGetPresence" | "Watch") => Some("reader"),
        ("Herald", "Batch") => None,
        (
            "Herald",
            "ConnectSession" | "Progress" | "Bind" | "Handoff" | "GetSession" | "SessionLog"
            | "DeleteSession" | "GetBinding" | "Unbind" | "ListSessions" | "WatchSessions"
            | "OfferHandoff" | "AcceptHandoff",
        ) => Some("sessions"),
        (
            "Herald",
            "CreatePlatform" | "CreatePool" | "LeaseAccount" | "RenewLease" | "ReleaseLease"
            | "PutAccountData" | "ListPools" | "ListLeases" | "AccountLogin" | "DeletePool"
            | "DeletePlatform" | "LeaseAndLogin" | "RegisterAccount" | "RemoveAccount"
            | "ListAccounts" | "GetAccountData" | "SetContentUnits" | "RemoveContent"
            | "FirstAccess",
        ) => Some("pools"),
        ("Share", "RegisterStorage" | "UpdateStorage" | "RemoveStorage") => Some("admin"),
        (
            "Share",
            "StorageHeartbeat" | "ListStorage" | "AddFriend" | "RemoveFriend" | "ListFriends"
            | "ShareMedia" | "CommitShare" | "DeleteShare" | "AccessShare" | "GetShare"
            | "ListShares" | "CheckShareKey",
        ) => Some("share"),
        ("Link", _) => Some("link"),
        ("Admin" | "Auth", "Status") | ("Admin", "Members") => None,
        ("Admin" | "Auth", _) => Some("admin"),
        other => panic!("no expectation for {other:?}: add it to this table"),
    }
}

/// Every (service, method) of the public contract, from the proto file.
fn methods() -> Vec<(String, String)> {
    let proto = include_str!("../../../client/proto/herald.proto");
    let mut service = String::new();
    let mut out = Vec::new();
    for line in proto.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("service ") {
            service = rest.split_whitespace().next().unwrap_or("").to_string();
        } else if let Some(rest) = line.strip_prefix("rpc ")
            && service != "Peer"
        {
            let method = rest.split('(').next().unwrap_or("").trim().to_string();
            out.push((service.clone(), method));
        }
    }
    out
}

const ROLES: [&str; 7] = [
    "admin",
    "publisher",
    "reader",
    "pools",
    "sessions",
    "share",
    "link",
];

fn role_pb(name: &str) -> i32 {
    (match name {
        "admin" => Role::Admin,
        "publisher" => Role::Publisher,
        "reader" => Role::Reader,
        "pools" => Role::Pools,
        "sessions" => Role::Sessions,
        "share" => Role::Share,
        "link" => Role::Link,
        other => panic!("role {other}"),
    }) as i32
}

/// Users `u-<role>` holding one role each, and `u-none` holding none, with
/// client certificates.
async fn add_role_users(c: &TestCluster, leader: u64) {
    let mut auth = AuthClient::new(channel_as(&c.certs, &c.client_addr(leader), Some(ROOT)));
    for role in ROLES.iter().map(Some).chain([None]) {
        let name = format!("u-{}", role.copied().unwrap_or("none"));
        c.client_cert(&name);
        auth.user_add(UserAddRequest {
            name,
            roles: role.map(|r| role_pb(r)).into_iter().collect(),
        })
        .await
        .expect("user add");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_refuses_no_credential_and_the_wrong_role_and_serves_the_right_one() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    add_role_users(&c, leader).await;
    let follower = c.alive().into_iter().find(|id| *id != leader).unwrap();
    c.wait_applied(c.status(leader).await.unwrap().applied_index)
        .await;
    let addr = c.client_addr(follower);
    let as_user = |user: Option<&str>| channel_as(&c.certs, &addr, user);

    let mut methods = methods();
    assert!(methods.len() > 30, "{methods:?}");
    // Auth.Disable, called with the right role, turns auth off: last.
    methods.sort_by_key(|(s, m)| s == "Auth" && m == "Disable");
    let mut results = BTreeMap::new();
    for (service, method) in &methods {
        let path = format!("/herald.v1.{service}/{method}");
        let none = call(as_user(None), &path).await;
        assert_eq!(none, Code::Unauthenticated, "{path} without a credential");
        let need = needed(service, method);
        let (wrong, right) = match need {
            Some("admin") => ("u-publisher".to_string(), "u-admin".to_string()),
            Some(role) => {
                let wrong = if role == "reader" {
                    "publisher"
                } else {
                    "reader"
                };
                (format!("u-{wrong}"), format!("u-{role}"))
            }
            None => (String::new(), "u-none".to_string()),
        };
        if !wrong.is_empty() {
            let code = call(as_user(Some(&wrong)), &path).await;
            assert_eq!(code, Code::PermissionDenied, "{path} as {wrong}");
        }
        let code = call(as_user(Some(&right)), &path).await;
        assert!(
            !matches!(code, Code::Unauthenticated | Code::PermissionDenied),
            "{path} as {right}: {code:?}"
        );
        // Admin holds every role.
        if need.is_some() && need != Some("admin") {
            let code = call(as_user(Some("u-admin")), &path).await;
            assert!(
                !matches!(code, Code::Unauthenticated | Code::PermissionDenied),
                "{path} as u-admin: {code:?}"
            );
        }
        results.insert(path, code);
    }
    println!("right-role answers: {results:#?}");

    // The HTTP lookup, the same way; /health and /metrics are open.
    c.client_cert("u-reader");
    let http = c.http_addr(follower);
    let get = |user: Option<&'static str>, path: &'static str| {
        crate::common::https_get(&c.certs, &http, path, user, &[])
    };
    // Auth was disabled by the last right-role call: turn it back on.
    AuthClient::new(as_user(Some(ROOT)))
        .enable(AuthEnableRequest {})
        .await
        .expect("enable");
    c.wait_for("auth enabled on the follower", || async {
        let (code, _) = get(None, "/v1/presence?ids=a").await.ok()?;
        (code == 401).then_some(())
    })
    .await;
    // Every HTTP route: 401 without a credential, 403 with the wrong role,
    // served (whatever it answers) with the right one.
    let routes = [
        ("GET", "/v1/presence?ids=a", "reader"),
        ("POST", "/v1/presence", "reader"),
        ("GET", "/v1/presence/a", "reader"),
        ("GET", "/v1/watch?start_revision=x", "reader"),
        ("GET", "/v1/sessions/1", "sessions"),
        ("GET", "/v1/sessions?terminal=IMEI:1", "sessions"),
        ("GET", "/v1/sessions/watch?start_revision=x", "sessions"),
        ("POST", "/v1/pools/1/lease", "pools"),
        ("POST", "/v1/units/1/login", "pools"),
        ("GET", "/v1/platforms/1/contents/c", "pools"),
        ("GET", "/v1/shares/1", "share"),
        ("GET", "/v1/storage", "share"),
        ("GET", "/v1/link/lookup?from=a&to=b&item=c", "link"),
    ];
    for (method, path, role) in routes {
        let send = |user: Option<String>| {
            let http = &http;
            let certs = &c.certs;
            async move {
                crate::common::https_request(
                    certs,
                    http,
                    method,
                    path,
                    user.as_deref(),
                    &[("content-type", "application/json")],
                    if method == "POST" { b"{}" } else { b"" },
                )
                .await
                .unwrap()
            }
        };
        let (code, body) = send(None).await;
        assert_eq!(code, 401, "{method} {path}: {body}");
        let (code, body) = send(Some("u-publisher".into())).await;
        assert_eq!(code, 403, "{method} {path} as u-publisher: {body}");
        assert!(body.contains(role), "{method} {path}: {body}");
        let (code, body) = send(Some(format!("u-{role}"))).await;
        assert!(
            code != 401 && code != 403,
            "{method} {path} as u-{role}: {code} {body}"
        );
    }
    for open in ["/health", "/metrics"] {
        let (code, body) = get(None, open).await.unwrap();
        assert_eq!(code, 200, "{open}: {body}");
    }
    let (_, metrics) = get(None, "/metrics").await.unwrap();
    for series in [
        "herald_auth_refusals_total{server=\"client\",code=\"unauthenticated\",permission=\"publisher\"}",
        "herald_auth_refusals_total{server=\"client\",code=\"permission_denied\",permission=\"admin\"}",
        "herald_auth_refusals_total{server=\"http\",code=\"permission_denied\",permission=\"reader\"}",
    ] {
        assert!(
            crate::common::sample(&metrics, series).unwrap_or(0.0) >= 1.0,
            "{series} in\n{metrics}"
        );
    }
    assert_eq!(
        crate::common::sample(&metrics, "herald_auth_enabled"),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_calls_are_authorized_one_by_one() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    add_role_users(&c, leader).await;
    let mut cl = HeraldClient::new(channel_as(
        &c.certs,
        &c.client_addr(leader),
        Some("u-publisher"),
    ));
    let login = LoginRequest {
        uid: "alice".into(),
        sid: 1,
        client_type: "pc".into(),
        ..Default::default()
    };
    let r = cl
        .batch(BatchRequest {
            calls: vec![
                BatchCall {
                    call: Some(batch_call::Call::Login(login)),
                },
                BatchCall {
                    call: Some(batch_call::Call::GetPresence(GetPresenceRequest {
                        uid: "alice".into(),
                        consistency: 0,
                    })),
                },
            ],
        })
        .await
        .expect("batch")
        .into_inner();
    assert!(
        matches!(
            r.replies[0].reply,
            Some(batch_reply::Reply::PresenceWrite(_))
        ),
        "{r:?}"
    );
    match &r.replies[1].reply {
        Some(batch_reply::Reply::Error(e)) => {
            assert_eq!(e.code, Code::PermissionDenied as i32, "{e:?}");
            assert!(e.message.contains("reader"), "{e:?}");
            assert!(e.not_applied);
        }
        other => panic!("the get needs the reader role: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_roles_and_tokens_take_effect_on_every_node_without_restarts() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let ids = c.alive();
    let others: Vec<u64> = ids.iter().copied().filter(|id| *id != leader).collect();
    let root = |id: u64| channel_as(&c.certs, &c.client_addr(id), Some(ROOT));
    c.client_cert("alice");
    let mut auth = AuthClient::new(root(others[0]));
    auth.user_add(UserAddRequest {
        name: "alice".into(),
        roles: vec![Role::Publisher as i32],
    })
    .await
    .expect("add alice");
    let login = |uid: &str| LoginRequest {
        uid: uid.into(),
        sid: 1,
        client_type: "pc".into(),
        ..Default::default()
    };
    // Added through one node, alice logs in through another.
    let alice = HeraldClient::new(channel_as(
        &c.certs,
        &c.client_addr(others[1]),
        Some("alice"),
    ));
    c.wait_for("alice's role on the other node", || {
        let mut alice = alice.clone();
        async move { alice.login(login("a1")).await.ok().map(|_| ()) }
    })
    .await;

    // A token for alice works on any node; revoked, on none.
    let token = auth
        .token_create(TokenCreateRequest {
            user: "alice".into(),
            ttl_ms: 0,
        })
        .await
        .expect("token")
        .into_inner();
    assert!(token.token.starts_with("hrt_"));
    let with_token = |id: u64, token: &str| {
        let mut req = tonic::Request::new(login("a2"));
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let mut cl = HeraldClient::new(channel_as(&c.certs, &c.client_addr(id), None));
        async move { cl.login(req).await.map(|_| ()).map_err(|s| s.code()) }
    };
    c.wait_for("the token on every node", || async {
        for id in &ids {
            with_token(*id, &token.token).await.ok()?;
        }
        Some(())
    })
    .await;
    assert_eq!(
        with_token(leader, "hrt_not-a-token").await,
        Err(Code::Unauthenticated)
    );
    // Tokens are listed without the token itself.
    let list = auth
        .token_list(TokenListRequest {
            user: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.tokens.len(), 1);
    assert!(!format!("{list:?}").contains(&token.token[4..]));
    auth.token_revoke(TokenRevokeRequest {
        token_id: token.token_id,
    })
    .await
    .unwrap();
    c.wait_for("the revoked token refused everywhere", || async {
        for id in &ids {
            if with_token(*id, &token.token).await != Err(Code::Unauthenticated) {
                return None;
            }
        }
        Some(())
    })
    .await;

    // Revoking the role takes effect everywhere.
    auth.role_revoke(RoleChangeRequest {
        user: "alice".into(),
        role: Role::Publisher as i32,
    })
    .await
    .unwrap();
    c.wait_for("alice refused after the revoke", || {
        let mut alice = alice.clone();
        async move {
            (alice.login(login("a3")).await.err()?.code() == Code::PermissionDenied).then_some(())
        }
    })
    .await;

    // Disabled, anyone may do anything; enabled again, no one without a credential.
    let anonymous = || HeraldClient::new(channel_as(&c.certs, &c.client_addr(others[1]), None));
    assert_eq!(
        anonymous().login(login("x")).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    auth.disable(AuthDisableRequest {}).await.unwrap();
    c.wait_for("anonymous writes while auth is off", || async {
        anonymous().login(login("x")).await.ok().map(|_| ())
    })
    .await;
    let status = AuthClient::new(channel_as(&c.certs, &c.client_addr(others[1]), None))
        .status(AuthStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!status.enabled && status.principal.is_empty(), "{status:?}");
    auth.enable(AuthEnableRequest {}).await.unwrap();
    c.wait_for("auth on again", || async {
        (anonymous().login(login("x")).await.err()?.code() == Code::Unauthenticated).then_some(())
    })
    .await;
    let me = AuthClient::new(root(leader))
        .status(AuthStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.principal, ROOT);
    assert_eq!(me.roles, [Role::Admin as i32]);
    assert_eq!(me.authenticated_by, "client certificate");
}

/// A TLS config for a client of `certs`' CA presenting `identity` (PEMs).
fn tls_with(c: &TestCluster, identity: Option<(String, String)>) -> ClientTlsConfig {
    let ca = std::fs::read(c.certs.ca()).unwrap();
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    match identity {
        Some((cert, key)) => tls.identity(Identity::from_pem(cert, key)),
        None => tls,
    }
}

fn tls_channel(addr: &str, tls: ClientTlsConfig) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect_lazy()
}

async fn status_code(channel: Channel) -> Result<(), Code> {
    AdminClient::new(channel)
        .status(StatusRequest {})
        .await
        .map(|_| ())
        .map_err(|s| s.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transport_refuses_plaintext_strangers_and_stale_certificates() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let addr = c.client_addr(leader);

    // The right certificate works.
    let root = std::fs::read_to_string(c.certs.client(ROOT).0).unwrap();
    let root_key = std::fs::read_to_string(c.certs.client(ROOT).1).unwrap();
    assert_eq!(
        status_code(tls_channel(
            &addr,
            tls_with(&c, Some((root.clone(), root_key.clone())))
        ))
        .await,
        Ok(())
    );
    // Plaintext against a TLS port.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    assert!(status_code(plain).await.is_err());
    // A "root" certificate from another CA.
    let other = Ca::create("another CA", Validity::days(1)).unwrap();
    let forged = other.issue_client(ROOT, Validity::days(1)).unwrap();
    assert!(
        status_code(tls_channel(
            &addr,
            tls_with(&c, Some((forged.cert_pem, forged.key_pem)))
        ))
        .await
        .is_err()
    );
    // A certificate of the right CA that expired an hour ago.
    let expired = c
        .ca()
        .issue_client(
            ROOT,
            Validity {
                not_before: SystemTime::now() - Duration::from_secs(7200),
                not_after: SystemTime::now() - Duration::from_secs(3600),
            },
        )
        .unwrap();
    assert!(
        status_code(tls_channel(
            &addr,
            tls_with(&c, Some((expired.cert_pem, expired.key_pem)))
        ))
        .await
        .is_err()
    );
    // A client that does not trust the cluster's CA refuses the node.
    let distrust = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(other.cert_pem()))
        .identity(Identity::from_pem(root.clone(), root_key.clone()));
    assert!(status_code(tls_channel(&addr, distrust)).await.is_err());
    // A client certificate on the peer port.
    let mut peer = PeerClient::new(tls_channel(
        &c.nodes[&leader].config.listen.peer.to_string(),
        tls_with(&c, Some((root, root_key))),
    ));
    let err = peer.ping(RaftBlob { data: vec![] }).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let (_, metrics) = c.get(leader, "/metrics").await.unwrap();
    assert!(
        crate::common::sample(
            &metrics,
            "herald_tls_handshake_failures_total{server=\"client\"}"
        )
        .unwrap_or(0.0)
            >= 3.0,
        "{metrics}"
    );
}

fn peer_as(c: &TestCluster, node: u64, target: u64) -> PeerClient<Channel> {
    let issued = c
        .ca()
        .issue_node(node, &["127.0.0.1".into()], Validity::days(1))
        .unwrap();
    PeerClient::new(tls_channel(
        &c.nodes[&target].config.listen.peer.to_string(),
        tls_with(c, Some((issued.cert_pem, issued.key_pem))),
    ))
}

fn blob<T: serde::Serialize>(v: &T) -> RaftBlob {
    RaftBlob {
        data: herald_node::raft::encode(v).unwrap(),
    }
}

/// The packet that once wedged every node: a vote (and an append) with term
/// 2^64-1. From a non-member it never reaches Raft; from a member its term
/// is refused; no node's term moves, and the cluster keeps writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_peer_messages_never_reach_raft() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let follower = c.alive().into_iter().find(|id| *id != leader).unwrap();
    let terms = || async {
        let mut t = BTreeMap::new();
        for id in c.alive() {
            t.insert(id, c.status(id).await.unwrap().term);
        }
        t
    };
    let before = terms().await;

    let absurd = Vote::new_committed(u64::MAX, 99);
    let vote = openraft::raft::VoteRequest::<TypeConfig>::new(Vote::new(u64::MAX, 99), None);
    let append = openraft::raft::AppendEntriesRequest::<TypeConfig> {
        vote: absurd,
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    };
    // Node 99: a certificate from the cluster's CA, but not a member.
    let mut stranger = peer_as(&c, 99, follower);
    for (what, r) in [
        ("vote", stranger.vote(blob(&vote)).await),
        ("pre-vote", stranger.pre_vote(blob(&vote)).await),
        ("append", stranger.append(blob(&append)).await),
        (
            "read-index",
            stranger.read_index(RaftBlob { data: vec![] }).await,
        ),
    ] {
        let code = r.unwrap_err().code();
        assert!(
            matches!(code, Code::PermissionDenied | Code::InvalidArgument),
            "{what} from a non-member: {code:?}"
        );
    }
    // Ping answers any node of the CA, but says only who the node is.
    let ping = stranger.ping(RaftBlob { data: vec![] }).await.unwrap();
    let who: herald_node::api::peer::PingReply =
        herald_node::raft::decode(&ping.into_inner().data).unwrap();
    assert_eq!(who.node_id, follower);

    // A member's own certificate and stamp (cluster and incarnation), with
    // the absurd term: past the identity checks, refused by the term bound.
    let member = c.alive().into_iter().find(|id| *id != follower).unwrap();
    let cluster = c.status(follower).await.unwrap().cluster_id;
    let incarnations = c.incarnations(follower, &[member, follower]).await;
    let stamped = |body: RaftBlob| {
        let mut req = tonic::Request::new(body);
        let md = req.metadata_mut();
        md.insert("x-herald-cluster", cluster.parse().unwrap());
        md.insert(
            "x-herald-from-incarnation",
            incarnations[&member].parse().unwrap(),
        );
        md.insert(
            "x-herald-to-incarnation",
            incarnations[&follower].parse().unwrap(),
        );
        req
    };
    let mut insider = peer_as(&c, member, follower);
    let vote = openraft::raft::VoteRequest::<TypeConfig>::new(Vote::new(u64::MAX, member), None);
    let err = insider.vote(stamped(blob(&vote))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let append = openraft::raft::AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(u64::MAX, member),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    };
    let err = insider.append(stamped(blob(&append))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // Unstamped, the same member is refused before the term is looked at.
    let err = insider.append(blob(&append)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // Nothing moved, and the cluster writes.
    let after = terms().await;
    assert_eq!(before, after);
    c.client_lib()
        .login(LoginRequest {
            uid: "still-works".into(),
            sid: 1,
            client_type: "pc".into(),
            ..Default::default()
        })
        .await
        .expect("write after the forged messages");
    assert_eq!(c.wait_leader().await, leader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_hooks_need_testing_mode() {
    // A production node: the hook is refused, and status says what it runs as.
    let c = TestCluster::start(1).await;
    let id = c.wait_leader().await;
    let mut admin = c.admin(id);
    let err = admin
        .set_clock_offset(SetClockOffsetRequest {
            offset_ms: 3_600_000,
            relative: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("--testing"), "{err:?}");
    let s = c.status(id).await.unwrap();
    assert!(!s.testing && !s.insecure && s.auth_enabled, "{s:?}");
    let (_, metrics) = c.get(id, "/metrics").await.unwrap();
    assert_eq!(
        crate::common::sample(&metrics, "herald_security_testing_mode"),
        Some(0.0)
    );
    assert_eq!(
        crate::common::sample(&metrics, "herald_security_insecure"),
        Some(0.0)
    );
    drop(c);

    // A testing node: the hook works within its bounds.
    let c =
        TestCluster::start_custom(1, crate::common::timings(), |cfg| cfg.testing_mode = true).await;
    let id = c.wait_leader().await;
    let mut admin = c.admin(id);
    admin
        .set_clock_offset(SetClockOffsetRequest {
            offset_ms: 1000,
            relative: false,
        })
        .await
        .expect("in testing mode");
    for (offset_ms, relative) in [(i64::MAX, false), (i64::MIN, false), (7 * 86_400_000, true)] {
        let err = admin
            .set_clock_offset(SetClockOffsetRequest {
                offset_ms,
                relative,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{offset_ms}: {err:?}");
    }
    let s = c.status(id).await.unwrap();
    assert!(s.testing, "{s:?}");
    assert!((s.clock_offset_us - 1_000_000).abs() < 1000, "{s:?}");
}

/// A node whose config asks for a test fault but that was not started in
/// testing mode refuses to start, saying why.
#[test]
fn a_test_fault_without_testing_mode_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "id = 1\nnumber = 1\ndata_dir = \"d\"\ninsecure = true\n[listen]\npeer = \"127.0.0.1:1\"\n\
         client = \"127.0.0.1:2\"\nhttp = \"127.0.0.1:3\"\n[testing]\nstale_reads = true\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald-node"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--testing"), "{err}");
}

/// Issue 23 item 5: no label value is taken from a request as it came.
/// 300 logins with distinct client types and 50 calls to made-up methods
/// (refused by the guard, so tonic never answers `Unimplemented`) leave the
/// `/metrics` series bounded: the known client types plus `other`, and the
/// methods the node serves plus `other`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_labels_taken_from_requests_are_bounded() {
    let c = TestCluster::start(3).await;
    let leader = c.wait_leader().await;
    let mut cl = c.client(leader);
    for i in 0..300 {
        cl.login(LoginRequest {
            uid: format!("label{i}"),
            sid: 1,
            client_type: format!("custom-{i}"),
            accept_strangers: false,
            ext: Default::default(),
            ttl_ms: 0,
            connection_id: String::new(),
        })
        .await
        .unwrap();
    }
    c.client_cert("u-nobody");
    let nobody = channel_as(&c.certs, &c.client_addr(leader), Some("u-nobody"));
    for i in 0..50 {
        let code = call(nobody.clone(), &format!("/herald.v1.Herald/Made{i}")).await;
        assert_ne!(code, Code::Ok);
    }
    let (_, metrics) = c.get(leader, "/metrics").await.unwrap();
    let online: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("herald_presence_online_users{"))
        .collect();
    assert!(online.len() <= 5, "{online:#?}");
    assert_eq!(
        crate::common::sample(
            &metrics,
            "herald_presence_online_users{client_type=\"other\"}"
        ),
        Some(300.0),
        "{online:#?}"
    );
    let made_up: Vec<&str> = metrics.lines().filter(|l| l.contains("/Made")).collect();
    assert!(made_up.is_empty(), "{made_up:#?}");
}
