//! An in-process fake Herald node for the client's tests: real gRPC over
//! loopback, scripted answers. It checks the parts a unit test cannot —
//! fail-over on real status codes, watch resume across nodes, cluster status
//! with a dead member — without a cluster.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use crate::proto::admin_server::{Admin, AdminServer};
use crate::proto::herald_server::{Herald, HeraldServer};
use crate::proto::*;

/// What a fake node does, and what it saw.
#[derive(Default)]
pub struct Script {
    /// This node's id in Admin answers.
    pub id: u64,
    /// Answer writes with `Unavailable` ("no leader yet").
    pub unavailable_writes: bool,
    /// Answer logins with this validation error.
    pub invalid_login: Option<String>,
    /// The revision a linearizable batch read reports.
    pub applied: u64,
    /// The event history watches are served from.
    pub events: Vec<PresenceEvent>,
    /// The session event history session watches are served from; a
    /// session watch "from now" starts at `applied + 1`, named in its
    /// response's `herald-start-revision`.
    pub session_events: Vec<SessionEvent>,
    /// After this many events a watch stream fails with `Unavailable`.
    pub break_watch_after: Option<usize>,
    /// Members for `Admin.Members`.
    pub members: Vec<Member>,
    /// Start revisions of the watches opened here.
    pub watch_starts: Vec<u64>,
    /// Answer a login of this uid with `InvalidArgument`.
    pub invalid_uid: Option<String>,
    /// How long a write takes to answer.
    pub write_delay: std::time::Duration,
    /// Answer leases (after `write_delay`) with `ResourceExhausted`.
    pub pool_exhausted: bool,
    /// How many calls each `Batch` carried, in arrival order.
    pub batch_sizes: Vec<usize>,
}

/// A running fake node.
pub struct FakeNode {
    pub addr: SocketAddr,
    pub script: Arc<Mutex<Script>>,
    pub calls: Arc<AtomicUsize>,
}

impl FakeNode {
    pub async fn start(script: Script) -> FakeNode {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let service = Fake {
            script: Arc::new(Mutex::new(script)),
            calls: Arc::new(AtomicUsize::new(0)),
        };
        let node = FakeNode {
            addr,
            script: service.script.clone(),
            calls: service.calls.clone(),
        };
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(HeraldServer::new(service.clone()))
                .add_service(AdminServer::new(service))
                .serve_with_incoming(incoming),
        );
        node
    }

    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    pub fn watch_starts(&self) -> Vec<u64> {
        self.script.lock().expect("lock").watch_starts.clone()
    }
}

/// A watch stream of `events` that fails with `Unavailable` after
/// `break_after` of them, or stays open after the last.
fn scripted<T: Send + 'static>(
    events: Vec<Result<T, Status>>,
    break_after: Option<usize>,
) -> Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>> {
    match break_after {
        Some(n) => Box::pin(futures::stream::iter(events.into_iter().take(n)).chain(
            futures::stream::once(async { Err(Status::unavailable("shutting down")) }),
        )),
        None => Box::pin(futures::stream::iter(events).chain(futures::stream::pending())),
    }
}

pub fn event(revision: u64, uid: &str) -> PresenceEvent {
    PresenceEvent {
        revision,
        uid: uid.into(),
        kind: PresenceEventKind::Login as i32,
        ..Default::default()
    }
}

#[derive(Clone)]
struct Fake {
    script: Arc<Mutex<Script>>,
    calls: Arc<AtomicUsize>,
}

type Res<T> = Result<Response<T>, Status>;

impl Fake {
    fn count(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }

    fn write(&self, uid: &str) -> Res<PresenceWriteResponse> {
        self.count();
        let script = self.script.lock().expect("lock");
        if script.unavailable_writes {
            return Err(Status::unavailable("no leader yet"));
        }
        Ok(Response::new(PresenceWriteResponse {
            record: Some(PresenceRecord {
                uid: uid.into(),
                revision: script.applied + 1,
                ..Default::default()
            }),
        }))
    }
}

fn no<T>(name: &str) -> Res<T> {
    Err(Status::unimplemented(name.to_string()))
}

#[tonic::async_trait]
impl Herald for Fake {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<PresenceEvent, Status>> + Send>>;

    async fn login(&self, r: Request<LoginRequest>) -> Res<PresenceWriteResponse> {
        let uid = r.into_inner().uid;
        let (invalid, delay) = {
            let script = self.script.lock().expect("lock");
            let invalid = match &script.invalid_uid {
                Some(bad) if *bad == uid => Some(format!("uid: {bad} is refused")),
                _ => script.invalid_login.clone(),
            };
            (invalid, script.write_delay)
        };
        tokio::time::sleep(delay).await;
        if let Some(msg) = invalid {
            self.count();
            return Err(Status::invalid_argument(msg));
        }
        self.write(&uid)
    }
    async fn logout(&self, r: Request<LogoutRequest>) -> Res<PresenceWriteResponse> {
        self.write(&r.into_inner().uid)
    }
    async fn batch(&self, r: Request<BatchRequest>) -> Res<BatchResponse> {
        use crate::batch_reply;
        use crate::proto::batch_call::Call;
        use crate::proto::batch_reply::Reply;
        let calls = r.into_inner().calls;
        self.script
            .lock()
            .expect("lock")
            .batch_sizes
            .push(calls.len());
        let replies = futures::future::join_all(calls.into_iter().map(|c| async move {
            let result = match c.call {
                Some(Call::Login(m)) => self
                    .login(Request::new(m))
                    .await
                    .map(|r| batch_reply(r, Reply::PresenceWrite)),
                Some(Call::Logout(m)) => self
                    .logout(Request::new(m))
                    .await
                    .map(|r| batch_reply(r, Reply::PresenceWrite)),
                _ => Err(Status::unimplemented("this call in a batch")),
            };
            result.unwrap_or_else(|s| BatchReply {
                reply: Some(Reply::Error(CallError {
                    code: s.code() as i32,
                    message: s.message().to_string(),
                    not_applied: false,
                    reason: crate::reason_of(&s).unwrap_or_default(),
                })),
                leader_hint: 0,
            })
        }))
        .await;
        Ok(Response::new(BatchResponse { replies }))
    }
    async fn change_permission(&self, _: Request<PermissionRequest>) -> Res<PresenceWriteResponse> {
        no("change_permission")
    }
    async fn heartbeat(&self, _: Request<HeartbeatRequest>) -> Res<HeartbeatResponse> {
        no("heartbeat")
    }
    async fn get_presence(&self, _: Request<GetPresenceRequest>) -> Res<GetPresenceResponse> {
        no("get_presence")
    }
    async fn batch_get_presence(
        &self,
        r: Request<BatchGetPresenceRequest>,
    ) -> Res<BatchGetPresenceResponse> {
        self.count();
        let script = self.script.lock().expect("lock");
        Ok(Response::new(BatchGetPresenceResponse {
            records: r
                .into_inner()
                .uids
                .into_iter()
                .map(|uid| PresenceRecord {
                    uid,
                    ..Default::default()
                })
                .collect(),
            revision: script.applied,
            truncated: false,
        }))
    }
    async fn watch(&self, r: Request<WatchRequest>) -> Res<Self::WatchStream> {
        self.count();
        let start = r.into_inner().start_revision;
        let mut script = self.script.lock().expect("lock");
        script.watch_starts.push(start);
        let events: Vec<_> = script
            .events
            .iter()
            .filter(|e| e.revision >= start)
            .cloned()
            .map(Ok)
            .collect();
        Ok(Response::new(scripted(events, script.break_watch_after)))
    }
    async fn connect_session(&self, _: Request<ConnectRequest>) -> Res<ConnectResponse> {
        no("connect_session")
    }
    async fn progress(&self, _: Request<ProgressRequest>) -> Res<ProgressResponse> {
        no("progress")
    }
    async fn bind(&self, _: Request<BindRequest>) -> Res<BindResponse> {
        no("bind")
    }
    async fn handoff(&self, _: Request<HandoffRequest>) -> Res<HandoffResponse> {
        no("handoff")
    }
    async fn get_session(&self, _: Request<GetSessionRequest>) -> Res<GetSessionResponse> {
        no("get_session")
    }
    async fn session_log(&self, _: Request<SessionLogRequest>) -> Res<SessionLogResponse> {
        no("session_log")
    }
    async fn create_platform(
        &self,
        _: Request<CreatePlatformRequest>,
    ) -> Res<CreatePlatformResponse> {
        no("create_platform")
    }
    async fn create_pool(&self, _: Request<CreatePoolRequest>) -> Res<CreatePoolResponse> {
        no("create_pool")
    }
    async fn lease_account(&self, _: Request<LeaseRequest>) -> Res<LeaseResponse> {
        self.count();
        let (exhausted, delay) = {
            let script = self.script.lock().expect("lock");
            (script.pool_exhausted, script.write_delay)
        };
        tokio::time::sleep(delay).await;
        if exhausted {
            return Err(Status::resource_exhausted("pool 1 has no free account"));
        }
        no("lease_account")
    }
    async fn renew_lease(&self, _: Request<RenewRequest>) -> Res<RenewResponse> {
        no("renew_lease")
    }
    async fn release_lease(&self, _: Request<ReleaseRequest>) -> Res<ReleaseResponse> {
        no("release_lease")
    }
    async fn put_account_data(
        &self,
        _: Request<PutAccountDataRequest>,
    ) -> Res<PutAccountDataResponse> {
        no("put_account_data")
    }
    async fn list_pools(&self, _: Request<ListPoolsRequest>) -> Res<ListPoolsResponse> {
        no("list_pools")
    }
    async fn list_leases(&self, _: Request<ListLeasesRequest>) -> Res<ListLeasesResponse> {
        no("list_leases")
    }
    async fn account_login(&self, _: Request<AccountLoginRequest>) -> Res<AccountLoginResponse> {
        no("account_login")
    }
    async fn delete_session(&self, _: Request<DeleteSessionRequest>) -> Res<DeleteResponse> {
        no("delete_session")
    }
    async fn delete_pool(&self, _: Request<DeletePoolRequest>) -> Res<DeleteResponse> {
        no("delete_pool")
    }
    async fn delete_platform(&self, _: Request<DeletePlatformRequest>) -> Res<DeleteResponse> {
        no("delete_platform")
    }
    async fn lease_and_login(
        &self,
        _: Request<LeaseAndLoginRequest>,
    ) -> Res<LeaseAndLoginResponse> {
        no("LeaseAndLogin")
    }
    async fn get_binding(&self, _: Request<GetBindingRequest>) -> Res<GetBindingResponse> {
        no("GetBinding")
    }
    async fn unbind(&self, _: Request<UnbindRequest>) -> Res<UnbindResponse> {
        no("Unbind")
    }
    async fn list_sessions(&self, _: Request<ListSessionsRequest>) -> Res<ListSessionsResponse> {
        no("ListSessions")
    }
    type WatchSessionsStream = Pin<Box<dyn Stream<Item = Result<SessionEvent, Status>> + Send>>;
    async fn watch_sessions(
        &self,
        r: Request<WatchSessionsRequest>,
    ) -> Res<Self::WatchSessionsStream> {
        self.count();
        let mut script = self.script.lock().expect("lock");
        let start = match r.into_inner().start_revision {
            0 => script.applied + 1,
            n => n,
        };
        script.watch_starts.push(start);
        let events: Vec<_> = script
            .session_events
            .iter()
            .filter(|e| e.revision >= start)
            .cloned()
            .map(Ok)
            .collect();
        let mut response = Response::new(scripted(events, script.break_watch_after));
        response
            .metadata_mut()
            .insert(crate::START_REVISION_HEADER, start.into());
        Ok(response)
    }
    async fn offer_handoff(&self, _: Request<OfferHandoffRequest>) -> Res<OfferHandoffResponse> {
        no("OfferHandoff")
    }
    async fn accept_handoff(&self, _: Request<AcceptHandoffRequest>) -> Res<HandoffResponse> {
        no("AcceptHandoff")
    }
    async fn register_account(
        &self,
        _: Request<RegisterAccountRequest>,
    ) -> Res<RegisterAccountResponse> {
        no("RegisterAccount")
    }
    async fn remove_account(&self, _: Request<RemoveAccountRequest>) -> Res<DeleteResponse> {
        no("RemoveAccount")
    }
    async fn list_accounts(&self, _: Request<ListAccountsRequest>) -> Res<ListAccountsResponse> {
        no("ListAccounts")
    }
    async fn get_account_data(
        &self,
        _: Request<GetAccountDataRequest>,
    ) -> Res<GetAccountDataResponse> {
        no("GetAccountData")
    }
    async fn set_content_units(
        &self,
        _: Request<SetContentUnitsRequest>,
    ) -> Res<SetContentUnitsResponse> {
        no("SetContentUnits")
    }
    async fn remove_content(&self, _: Request<RemoveContentRequest>) -> Res<DeleteResponse> {
        no("RemoveContent")
    }
    async fn first_access(&self, _: Request<FirstAccessRequest>) -> Res<FirstAccessResponse> {
        no("FirstAccess")
    }
}

#[tonic::async_trait]
impl Admin for Fake {
    type SnapshotSaveStream = Pin<Box<dyn Stream<Item = Result<SnapshotChunk, Status>> + Send>>;

    async fn snapshot_save(
        &self,
        _: Request<SnapshotSaveRequest>,
    ) -> Res<Self::SnapshotSaveStream> {
        no("snapshot_save")
    }
    async fn status(&self, _: Request<StatusRequest>) -> Res<StatusResponse> {
        self.count();
        let script = self.script.lock().expect("lock");
        Ok(Response::new(StatusResponse {
            status: Some(NodeStatus {
                id: script.id,
                role: if script.id == 1 { "leader" } else { "follower" }.into(),
                leader_id: 1,
                ..Default::default()
            }),
        }))
    }
    async fn members(&self, _: Request<MembersRequest>) -> Res<MembersResponse> {
        self.count();
        let script = self.script.lock().expect("lock");
        Ok(Response::new(MembersResponse {
            members: script.members.clone(),
            leader_id: 1,
        }))
    }
    async fn init(&self, _: Request<InitRequest>) -> Res<InitResponse> {
        no("init")
    }
    async fn add_learner(&self, _: Request<AddLearnerRequest>) -> Res<AdminResponse> {
        no("add_learner")
    }
    async fn promote(&self, _: Request<PromoteRequest>) -> Res<AdminResponse> {
        no("promote")
    }
    async fn remove(&self, _: Request<RemoveRequest>) -> Res<AdminResponse> {
        no("remove")
    }
    async fn change_membership(&self, _: Request<ChangeMembershipRequest>) -> Res<AdminResponse> {
        no("change_membership")
    }
    async fn transfer_leader(&self, _: Request<TransferLeaderRequest>) -> Res<AdminResponse> {
        no("transfer_leader")
    }
    async fn snapshot(&self, _: Request<SnapshotRequest>) -> Res<AdminResponse> {
        no("snapshot")
    }
    async fn set_clock_offset(&self, _: Request<SetClockOffsetRequest>) -> Res<AdminResponse> {
        no("set_clock_offset")
    }
}

mod tests {
    use super::*;
    use crate::{Client, ClientError};

    fn history() -> Vec<PresenceEvent> {
        vec![
            event(5, "a"),
            event(6, "b"),
            // One log entry that yields two events (a batch of expiries).
            event(7, "c"),
            event(7, "d"),
            event(8, "e"),
        ]
    }

    #[tokio::test]
    async fn watch_resumes_on_another_node_without_gaps_or_duplicates() {
        let a = FakeNode::start(Script {
            applied: 4,
            events: history(),
            break_watch_after: Some(3),
            ..Default::default()
        })
        .await;
        let b = FakeNode::start(Script {
            applied: 4,
            events: history(),
            ..Default::default()
        })
        .await;
        let client = Client::new(vec![a.endpoint(), b.endpoint()]).expect("endpoints");
        let got: Vec<(u64, String)> = client
            .watch(vec![], 0)
            .take(5)
            .map(|e| {
                let e = e.expect("event");
                (e.revision, e.uid)
            })
            .collect()
            .await;
        let want: Vec<(u64, String)> = history().into_iter().map(|e| (e.revision, e.uid)).collect();
        assert_eq!(got, want);
        // "From now" was pinned by a linearizable read at revision 4; the
        // resume restarted at the revision of the last delivered event.
        assert_eq!(a.watch_starts(), [5]);
        assert_eq!(b.watch_starts(), [7]);
    }

    #[tokio::test]
    async fn a_session_watch_from_now_resumes_on_another_node_at_the_start_it_was_named() {
        let session = |revision: u64, id: u64| SessionEvent {
            revision,
            session: Some(Session {
                session_id: id,
                ..Default::default()
            }),
            ..Default::default()
        };
        // Revision 9 is one entry changing two sessions.
        let events = vec![session(5, 1), session(9, 1), session(9, 2), session(10, 3)];
        // a names "now" = 5 and breaks before it sends anything; b sends
        // two events and breaks inside revision 9; c goes on. b and c are
        // further on: a "from now" opened there would miss 5 and 9.
        let node = |applied, break_watch_after| {
            FakeNode::start(Script {
                applied,
                session_events: events.clone(),
                break_watch_after,
                ..Default::default()
            })
        };
        let (a, b, c) = (
            node(4, Some(0)).await,
            node(9, Some(2)).await,
            node(9, None).await,
        );
        let client =
            Client::new(vec![a.endpoint(), b.endpoint(), c.endpoint()]).expect("endpoints");
        let mut stream = client.watch_sessions_resumed(WatchSessionsRequest::default());
        let mut got = Vec::new();
        while got.len() < 4 {
            // A watch that lost events waits for ever: give up after a while.
            let next = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next());
            let Ok(e) = next.await else {
                panic!("only {got:?} came: a resume lost events");
            };
            let e = e.expect("an event").expect("not an error");
            got.push((e.revision, e.session.unwrap().session_id));
        }
        assert_eq!(got, [(5, 1), (9, 1), (9, 2), (10, 3)]);
        // "Now" was the 5 a named, so b resumed there although nothing had
        // come; c resumed at 9, skipping the one event of 9 delivered.
        assert_eq!(a.watch_starts(), [5]);
        assert_eq!(b.watch_starts(), [5]);
        assert_eq!(c.watch_starts(), [9]);
    }

    /// A client that skips owner routing, so call counts show fail-over alone.
    fn endpoint_failover_only(a: &FakeNode, b: &FakeNode) -> Client {
        let config = crate::ClientConfig {
            route_by_owner: false,
            ..Default::default()
        };
        Client::with_config(vec![a.endpoint(), b.endpoint()], config).expect("endpoints")
    }

    #[tokio::test]
    async fn unavailable_writes_fail_over_even_when_not_idempotent() {
        let a = FakeNode::start(Script {
            unavailable_writes: true,
            ..Default::default()
        })
        .await;
        let b = FakeNode::start(Script::default()).await;
        let client = endpoint_failover_only(&a, &b);
        let record = client
            .logout(LogoutRequest {
                uid: "alice".into(),
                ..Default::default()
            })
            .await
            .expect("served by b");
        assert_eq!(record.uid, "alice");
        assert_eq!(a.calls.load(Ordering::SeqCst), 1);
        assert_eq!(b.calls.load(Ordering::SeqCst), 1);
        // The preference moved: the next call goes straight to b.
        client
            .logout(LogoutRequest::default())
            .await
            .expect("served by b");
        assert_eq!(a.calls.load(Ordering::SeqCst), 1);
    }

    /// An idempotent write whose first attempt went unanswered and whose
    /// retry is refused is unknown, not refused: the first may still apply.
    #[tokio::test]
    async fn a_refused_retry_after_an_unanswered_attempt_is_unknown() {
        let a = FakeNode::start(Script {
            write_delay: std::time::Duration::from_secs(5),
            ..Default::default()
        })
        .await;
        let b = FakeNode::start(Script {
            pool_exhausted: true,
            ..Default::default()
        })
        .await;
        let config = crate::ClientConfig {
            route_by_owner: false,
            request_timeout: std::time::Duration::from_millis(200),
            ..Default::default()
        };
        let client = Client::with_config(vec![a.endpoint(), b.endpoint()], config).unwrap();
        let err = client
            .lease_account(LeaseRequest {
                pool_id: 1,
                user: "viewer".into(),
                ttl_ms: 0,
                request_id: "r1".into(),
            })
            .await
            .expect_err("refused");
        assert!(matches!(err, ClientError::Unknown(_)), "{err:?}");
        assert_eq!(b.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn validation_errors_are_not_retried() {
        let a = FakeNode::start(Script {
            invalid_login: Some("uid: at most 128 bytes".into()),
            ..Default::default()
        })
        .await;
        let b = FakeNode::start(Script::default()).await;
        let client = endpoint_failover_only(&a, &b);
        let err = client
            .login(LoginRequest::default())
            .await
            .expect_err("invalid");
        match err {
            ClientError::InvalidArgument(msg) => assert_eq!(msg, "uid: at most 128 bytes"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            a.calls.load(Ordering::SeqCst) + b.calls.load(Ordering::SeqCst),
            1
        );
    }

    #[tokio::test]
    async fn cluster_status_reports_dead_members() {
        let member = |id: u64, addr: String| Member {
            id,
            number: id as u32,
            client_addr: addr,
            voter: true,
            ..Default::default()
        };
        let a = FakeNode::start(Script {
            id: 1,
            ..Default::default()
        })
        .await;
        let b = FakeNode::start(Script {
            id: 2,
            ..Default::default()
        })
        .await;
        let members = vec![
            member(1, a.endpoint()),
            member(2, b.endpoint()),
            member(3, "127.0.0.1:1".into()),
        ];
        a.script.lock().expect("lock").members = members;
        let client = Client::new(vec![a.endpoint()]).expect("endpoints");
        let status = client.cluster_status().await.expect("members from a");
        assert_eq!(status.members.len(), 3);
        assert_eq!(
            status.members[0].status.as_ref().map(|s| s.id).ok(),
            Some(1)
        );
        assert_eq!(
            status.members[1].status.as_ref().map(|s| s.id).ok(),
            Some(2)
        );
        assert!(matches!(
            status.members[2].status,
            Err(ClientError::Unavailable(_))
        ));
        assert_eq!(status.agreed_leader(), None, "node 3 did not answer");
    }

    fn login_of(uid: &str) -> LoginRequest {
        LoginRequest {
            uid: uid.into(),
            ..Default::default()
        }
    }

    /// A client of `a` alone, without owner routing (whose member fetches
    /// would count as calls and split the callers).
    fn direct(a: &FakeNode, coalesce: bool) -> Client {
        let config = crate::ClientConfig {
            route_by_owner: false,
            coalesce,
            ..Default::default()
        };
        Client::with_config(vec![a.endpoint()], config).expect("endpoints")
    }

    /// Logins of `uids`, issued together on one task (so they meet in one
    /// scheduler turn, as the callers woken by one reply do).
    async fn logins(client: &Client, uids: &[&str]) -> Vec<Result<PresenceRecord, ClientError>> {
        futures::future::join_all(uids.iter().map(|u| client.login(login_of(u)))).await
    }

    #[tokio::test]
    async fn calls_issued_together_share_one_batch_and_each_gets_its_answer() {
        let a = FakeNode::start(Script {
            invalid_uid: Some("bad".into()),
            ..Default::default()
        })
        .await;
        let client = direct(&a, true);
        let got = logins(&client, &["u1", "bad", "u3", "u4"]).await;
        assert_eq!(a.script.lock().expect("lock").batch_sizes, [4]);
        assert_eq!(got[0].as_ref().expect("u1").uid, "u1");
        match &got[1] {
            // Its own validation error, not retried, not shared.
            Err(ClientError::InvalidArgument(m)) => assert_eq!(m, "uid: bad is refused"),
            other => panic!("{other:?}"),
        }
        assert_eq!(got[2].as_ref().expect("u3").uid, "u3");
        assert_eq!(got[3].as_ref().expect("u4").uid, "u4");
        assert_eq!(a.calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_lone_call_and_an_uncoalescing_client_send_unary_rpcs() {
        let a = FakeNode::start(Script::default()).await;
        let client = direct(&a, true);
        client.login(login_of("alone")).await.expect("login");
        let plain = direct(&a, false);
        for r in logins(&plain, &["u1", "u2", "u3"]).await {
            r.expect("login");
        }
        assert_eq!(a.calls.load(Ordering::SeqCst), 4);
        assert!(a.script.lock().expect("lock").batch_sizes.is_empty());
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_does_not_take_the_batch_with_it() {
        let a = FakeNode::start(Script {
            write_delay: std::time::Duration::from_millis(100),
            ..Default::default()
        })
        .await;
        let client = direct(&a, true);
        // The first call opens the batch; it is dropped once the batch has
        // left, long before the answers come back.
        let impatient = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            client.login(login_of("impatient")),
        );
        let (gave_up, rest) = tokio::join!(impatient, logins(&client, &["u2", "u3"]));
        assert!(gave_up.is_err(), "the first call should have timed out");
        for (r, uid) in rest.into_iter().zip(["u2", "u3"]) {
            assert_eq!(r.expect("answered").uid, uid);
        }
        assert_eq!(a.script.lock().expect("lock").batch_sizes, [3]);
    }

    #[tokio::test]
    async fn an_opener_dropped_before_sending_leaves_the_others_answered() {
        let a = FakeNode::start(Script::default()).await;
        let client = direct(&a, true);
        // The first call opens the batch and yields; the next two join it;
        // then the first is dropped before it could send the batch.
        let mut opener = Box::pin(client.login(login_of("gone")));
        assert!(futures::poll!(opener.as_mut()).is_pending());
        let mut rest = Box::pin(logins(&client, &["u2", "u3"]));
        assert!(futures::poll!(rest.as_mut()).is_pending());
        drop(opener);
        let rest = tokio::time::timeout(std::time::Duration::from_secs(2), rest)
            .await
            .expect("the joined calls were stranded");
        for (r, uid) in rest.into_iter().zip(["u2", "u3"]) {
            assert_eq!(r.expect("answered").uid, uid);
        }
        // The dropped call was never sent, as with a unary call dropped
        // before it left.
        assert_eq!(a.script.lock().expect("lock").batch_sizes, [2]);
        assert_eq!(a.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_batch_that_cannot_be_sent_fails_over_like_unary_calls() {
        // Nothing listens on a: dialing fails, so nothing was executed and
        // even non-idempotent logouts may go to b.
        let dead = "127.0.0.1:1".to_string();
        let b = FakeNode::start(Script::default()).await;
        let config = crate::ClientConfig {
            route_by_owner: false,
            ..Default::default()
        };
        let client = Client::with_config(vec![dead, b.endpoint()], config).expect("endpoints");
        let got = futures::future::join_all(["u1", "u2", "u3"].map(|u| {
            client.logout(LogoutRequest {
                uid: u.into(),
                ..Default::default()
            })
        }))
        .await;
        for (r, uid) in got.into_iter().zip(["u1", "u2", "u3"]) {
            assert_eq!(r.expect("served by b").uid, uid);
        }
        assert_eq!(b.calls.load(Ordering::SeqCst), 3);
    }
}
