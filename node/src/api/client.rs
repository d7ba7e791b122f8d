//! The client gRPC service (`herald.v1.Herald`): presence, sessions and
//! account pools. Each call validates and converts its request (bad input is
//! refused before anything is proposed), then either proposes a command
//! through [`Herald::propose`] or reads the local state after
//! [`Herald::linearize`] when the read asks for linearizability.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;

use ::herald_client::LEADER_HINT;
use ::herald_client::proto::herald_server::Herald as HeraldApi;
use ::herald_client::proto::*;
use futures::Stream;
use rand::Rng;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert::{self as cv, linearizable};
use super::layer::Accounting;
use super::page;
use super::status::state_status;
use crate::node::{Herald, NodeError};
use crate::state::{self, Command, StateError};

/// Serves [`HeraldApi`] for one node.
pub struct HeraldService {
    node: Herald,
    /// The client listener's request counting, for the calls of a `Batch`.
    accounting: Accounting,
    /// One permit per open `Watch` stream (`limits.max_watch_streams`). The
    /// stream's task holds it, and that task ends when the stream's client
    /// is gone (its receiver dropped: the call was cancelled or the
    /// connection closed, which keepalive notices for a vanished peer).
    watch_slots: Arc<Semaphore>,
}

impl HeraldService {
    /// A client service over `node`; `accounting` is the client listener's
    /// ([`super::layer::ObserveLayer::accounting`]).
    pub fn new(node: Herald, accounting: Accounting) -> Self {
        let watch_slots = Arc::new(Semaphore::new(node.config().limits.max_watch_streams));
        HeraldService {
            node,
            accounting,
            watch_slots,
        }
    }

    pub(super) fn node(&self) -> &Herald {
        &self.node
    }

    pub(super) fn accounting(&self) -> &Accounting {
        &self.accounting
    }

    async fn propose(&self, cmd: Command) -> Result<state::Response, Status> {
        Ok(self.node.propose(cmd).await?)
    }

    /// A presence write the client routes to the leader: proposed, and when
    /// this node is not the leader (it forwarded the write), answered with
    /// the leader's id in [`LEADER_HINT`] so the client's next write goes
    /// there directly instead of taking this hop again.
    async fn presence_write(
        &self,
        cmd: Command,
    ) -> Result<Response<PresenceWriteResponse>, Status> {
        let mut resp = presence_reply(self.propose(cmd).await?)?;
        if !self.node.is_leader()
            && let Some((leader, _)) = self.node.leader()
        {
            resp.metadata_mut().insert(LEADER_HINT, leader.into());
        }
        Ok(resp)
    }

    /// Passes a heartbeat to the uid's owner; `None` if it cannot be reached.
    async fn forward_heartbeat(&self, owner: u64, r: &HeartbeatRequest) -> Option<bool> {
        let (members, _) = self.node.members();
        let (member, _) = members.get(&owner)?;
        let mut client =
            crate::peer::PeerClient::new(self.node.peers(), owner, &member.peer_addr).ok()?;
        client
            .heartbeat(&r.uid, &r.client_type, std::time::Duration::from_secs(1))
            .await
            .ok()
    }

    async fn read_barrier(&self, consistency: i32) -> Result<(), Status> {
        if linearizable(consistency).map_err(|e| state_status(&e))? {
            self.node.linearize().await?;
        }
        Ok(())
    }
}

fn invalid(e: StateError) -> Status {
    state_status(&e)
}

fn unexpected(r: state::Response) -> Status {
    Status::internal(format!("unexpected state machine response {r:?}"))
}

fn presence_reply(r: state::Response) -> Result<Response<PresenceWriteResponse>, Status> {
    match r {
        state::Response::Presence(rec) => Ok(Response::new(PresenceWriteResponse {
            record: Some(cv::record_pb(&rec)),
        })),
        other => Err(unexpected(other)),
    }
}

fn session_of(r: state::Response) -> Result<Session, Status> {
    match r {
        state::Response::Session(s) => Ok(cv::session_pb(&s)),
        other => Err(unexpected(other)),
    }
}

/// Checks a uid list for batch reads and watches: count and each id's
/// length, naming the offending entry (`uids[3]`). A call that carries one
/// uid checks it with [`check_uid`], which names the field `uid`.
pub fn check_uids(uids: &[String]) -> Result<(), StateError> {
    if uids.len() > state::MAX_BATCH {
        return Err(StateError::invalid(
            "uids",
            format!(
                "at most {} ids per call, got {}",
                state::MAX_BATCH,
                uids.len()
            ),
        ));
    }
    for (i, uid) in uids.iter().enumerate() {
        state::limits::check_uid(&format!("uids[{i}]"), uid)?;
    }
    Ok(())
}

/// Checks the single `uid` of a call (`GetPresence`, `Heartbeat`).
pub fn check_uid(uid: &str) -> Result<(), StateError> {
    state::limits::check_uid("uid", uid)
}

/// The authenticated principal that sent `req` (the guard put it in the
/// request), recorded with a lease so only it may replay the lease request.
/// Empty for an anonymous caller (auth off).
fn caller_of<T>(req: &tonic::Request<T>) -> String {
    crate::security::principal_of(req).name()
}

/// A fresh lease secret: 128 random bits as 32 hex characters, made here,
/// returned once and only hashed from then on. It proves the caller holds
/// the lease (renew, release, account data, holder-only logins).
fn new_lease_secret() -> (String, state::SecretHash) {
    let secret = format!("{:032x}", rand::rng().random::<u128>());
    let hash = state::SecretHash::of(&secret);
    (secret, hash)
}

/// A fresh lease password: 16 characters from an unambiguous alphabet
/// (about 80 bits), made here, never logged and never stored in plain text.
fn new_password() -> (String, state::PasswordHash) {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rng();
    let password: String = (0..16)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    let salt: [u8; 16] = rng.random();
    let hash = state::PasswordHash::new(salt, &password);
    (password, hash)
}

/// Resolves once the flag is (or becomes) true, or its sender is gone.
async fn until_true(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<PresenceEvent, Status>> + Send>>;

#[tonic::async_trait]
impl HeraldApi for HeraldService {
    async fn login(
        &self,
        req: Request<LoginRequest>,
    ) -> Result<Response<PresenceWriteResponse>, Status> {
        let cmd = Command::Login(cv::login(req.into_inner()));
        self.presence_write(cmd).await
    }

    async fn logout(
        &self,
        req: Request<LogoutRequest>,
    ) -> Result<Response<PresenceWriteResponse>, Status> {
        let cmd = Command::Logout(cv::logout(req.into_inner()));
        self.presence_write(cmd).await
    }

    async fn change_permission(
        &self,
        req: Request<PermissionRequest>,
    ) -> Result<Response<PresenceWriteResponse>, Status> {
        let cmd = Command::Permission(cv::permission(req.into_inner()));
        self.presence_write(cmd).await
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let r = req.into_inner();
        check_uid(&r.uid).map_err(invalid)?;
        // Heartbeats live in the owner's memory (the owner on the committed
        // ring): pass them on to the owner. If it cannot be reached from
        // here, the client must try another node: keeping the heartbeat
        // here would not stop the owner from expiring the user.
        let me = self.node.id();
        if let Some(owner) = self.node.ownership().owner(&r.uid).filter(|o| *o != me) {
            return match self.forward_heartbeat(owner, &r).await {
                Some(known) => Ok(Response::new(HeartbeatResponse { known })),
                None => Err(NodeError::Unavailable(format!(
                    "the owner of this user, node {owner}, did not take the heartbeat from \
                     node {me}; try another node"
                ))
                .into()),
            };
        }
        let known = self.node.heartbeat_here(&r.uid, &r.client_type).await?;
        Ok(Response::new(HeartbeatResponse { known }))
    }

    async fn get_presence(
        &self,
        req: Request<GetPresenceRequest>,
    ) -> Result<Response<GetPresenceResponse>, Status> {
        let r = req.into_inner();
        check_uid(&r.uid).map_err(invalid)?;
        self.read_barrier(r.consistency).await?;
        let m = self.node.store().read();
        Ok(Response::new(GetPresenceResponse {
            record: m.state.presence(&r.uid).map(cv::record_pb),
        }))
    }

    async fn batch_get_presence(
        &self,
        req: Request<BatchGetPresenceRequest>,
    ) -> Result<Response<BatchGetPresenceResponse>, Status> {
        let r = req.into_inner();
        check_uids(&r.uids).map_err(invalid)?;
        self.read_barrier(r.consistency).await?;
        Ok(Response::new(batch_get(
            &self.node,
            &r.uids,
            page::REPLY_BUDGET_BYTES,
        )))
    }

    async fn batch(&self, req: Request<BatchRequest>) -> Result<Response<BatchResponse>, Status> {
        let principal = crate::security::principal_of(&req);
        self.serve_batch(principal, req.into_inner())
            .await
            .map(Response::new)
    }

    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let r = req.into_inner();
        check_uids(&r.uids).map_err(invalid)?;
        let slot = self.watch_slots.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "too many watch streams on this node: limits.max_watch_streams = {}; \
                 close one or watch through another node",
                self.node.config().limits.max_watch_streams
            ))
        })?;
        let uids: BTreeSet<String> = r.uids.into_iter().collect();
        let store = self.node.store().clone();
        let mut applied = store.applied();
        let mut stopping = self.node.stopping();
        let mut next = match r.start_revision {
            0 => store.read().state.last_index() + 1,
            n => n,
        };
        // Refuse a compacted start now, as a status rather than a broken stream.
        store
            .read()
            .state
            .presence_events_since(next, &uids)
            .map_err(|e| Status::out_of_range(e.to_string()))?;
        let (tx, rx) = mpsc::channel(1024);
        let open_stream = self.node.metrics().watch_stream();
        tokio::spawn(async move {
            // Dropped in reverse: the gauge falls before the slot frees.
            let _slot = slot;
            let _open_stream = open_stream;
            loop {
                // Everything up to the state's last index is in its history,
                // so resuming at last_index + 1 leaves no gap.
                let (events, upto) = {
                    let m = store.read();
                    (
                        m.state.presence_events_since(next, &uids),
                        m.state.last_index(),
                    )
                };
                match events {
                    Ok(events) => {
                        for e in &events {
                            if tx.send(Ok(cv::event_pb(e))).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Status::out_of_range(e.to_string()))).await;
                        return;
                    }
                }
                next = next.max(upto + 1);
                tokio::select! {
                    r = applied.changed() => if r.is_err() { return },
                    _ = tx.closed() => return,
                    _ = until_true(&mut stopping) => {
                        let _ = tx.send(Err(Status::unavailable("node shutting down; resume elsewhere"))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn connect_session(
        &self,
        req: Request<ConnectRequest>,
    ) -> Result<Response<ConnectResponse>, Status> {
        let cmd = Command::Connect(cv::connect(req.into_inner()).map_err(invalid)?);
        let session = session_of(self.propose(cmd).await?)?;
        Ok(Response::new(ConnectResponse {
            session: Some(session),
        }))
    }

    async fn progress(
        &self,
        req: Request<ProgressRequest>,
    ) -> Result<Response<ProgressResponse>, Status> {
        let cmd = Command::Progress(cv::progress(req.into_inner()).map_err(invalid)?);
        let session = session_of(self.propose(cmd).await?)?;
        Ok(Response::new(ProgressResponse {
            session: Some(session),
        }))
    }

    async fn bind(&self, req: Request<BindRequest>) -> Result<Response<BindResponse>, Status> {
        let cmd = Command::Bind(cv::bind(req.into_inner()).map_err(invalid)?);
        match self.propose(cmd).await? {
            state::Response::Bound => Ok(Response::new(BindResponse {})),
            other => Err(unexpected(other)),
        }
    }

    async fn handoff(
        &self,
        req: Request<HandoffRequest>,
    ) -> Result<Response<HandoffResponse>, Status> {
        let cmd = Command::Handoff(cv::handoff(req.into_inner()).map_err(invalid)?);
        match self.propose(cmd).await? {
            state::Response::Handoff(o) => Ok(Response::new(HandoffResponse {
                accepted: o.accepted,
                session: Some(cv::session_pb(&o.session)),
                refused: o.refused.iter().map(cv::terminal_pb).collect(),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn get_session(
        &self,
        req: Request<GetSessionRequest>,
    ) -> Result<Response<GetSessionResponse>, Status> {
        let r = req.into_inner();
        self.read_barrier(r.consistency).await?;
        let m = self.node.store().read();
        let s = m
            .state
            .session(r.session_id)
            .ok_or_else(|| Status::not_found(format!("session {} not found", r.session_id)))?;
        Ok(Response::new(GetSessionResponse {
            session: Some(cv::session_pb(s)),
        }))
    }

    async fn session_log(
        &self,
        req: Request<SessionLogRequest>,
    ) -> Result<Response<SessionLogResponse>, Status> {
        let r = req.into_inner();
        self.read_barrier(r.consistency).await?;
        let m = self.node.store().read();
        let log = m
            .state
            .session_log(r.session_id)
            .ok_or_else(|| Status::not_found(format!("session {} not found", r.session_id)))?;
        let (after, seen) = page::after_revision(&r.page_token)?;
        // Entries of the token's revision already delivered are skipped.
        let mut skip = seen;
        let rest = log.iter().filter(|e| {
            if e.revision < after {
                return false;
            }
            if e.revision == after && skip > 0 {
                skip -= 1;
                return false;
            }
            true
        });
        let size = page::size(r.page_size, page::DEFAULT_LOG_PAGE);
        let (entries, more) = page::take(rest.map(cv::work_pb), size, page::REPLY_BUDGET_BYTES);
        let next_page_token = match entries.last() {
            Some(last) if more => {
                let at_last = entries
                    .iter()
                    .filter(|e| e.revision == last.revision)
                    .count();
                // Entries of that revision on earlier pages count too.
                let before = if last.revision == after { seen } else { 0 };
                page::revision_token(last.revision, before + at_last)
            }
            _ => String::new(),
        };
        Ok(Response::new(SessionLogResponse {
            entries,
            next_page_token,
        }))
    }

    async fn create_platform(
        &self,
        req: Request<CreatePlatformRequest>,
    ) -> Result<Response<CreatePlatformResponse>, Status> {
        let cmd = Command::CreatePlatform(cv::create_platform(req.into_inner()).map_err(invalid)?);
        match self.propose(cmd).await? {
            state::Response::Platform(p) => Ok(Response::new(CreatePlatformResponse {
                platform: Some(cv::platform_pb(&p)),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn delete_session(
        &self,
        req: Request<DeleteSessionRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let r = req.into_inner();
        let cmd = Command::DeleteSession(state::DeleteSession {
            session_id: r.session_id,
        });
        self.propose(cmd).await?;
        Ok(Response::new(DeleteResponse {}))
    }

    async fn delete_pool(
        &self,
        req: Request<DeletePoolRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let r = req.into_inner();
        let cmd = Command::DeletePool(state::DeletePool {
            pool_id: r.pool_id,
            force: r.force,
        });
        self.propose(cmd).await?;
        Ok(Response::new(DeleteResponse {}))
    }

    async fn delete_platform(
        &self,
        req: Request<DeletePlatformRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let r = req.into_inner();
        let cmd = Command::DeletePlatform(state::DeletePlatform {
            platform_id: r.platform_id,
        });
        self.propose(cmd).await?;
        Ok(Response::new(DeleteResponse {}))
    }

    async fn create_pool(
        &self,
        req: Request<CreatePoolRequest>,
    ) -> Result<Response<CreatePoolResponse>, Status> {
        let cmd = Command::CreatePool(cv::create_pool(req.into_inner()));
        match self.propose(cmd).await? {
            state::Response::Pool(p) => Ok(Response::new(CreatePoolResponse {
                pool: Some(cv::pool_pb(&p)),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn lease_account(
        &self,
        req: Request<LeaseRequest>,
    ) -> Result<Response<LeaseResponse>, Status> {
        let caller = caller_of(&req);
        let (password, password_hash) = new_password();
        let (lease_secret, secret_hash) = new_lease_secret();
        let r = req.into_inner();
        let request_id = r.request_id.clone();
        let made = cv::NewCredentials {
            password: password_hash,
            lease_secret: secret_hash,
        };
        let cmd = Command::Lease(cv::lease(r, caller, made));
        match self.propose(cmd).await? {
            state::Response::Lease { lease, replayed } => {
                // The requester may see its own request id; listings never do.
                let mut lease = cv::lease_pb(&lease);
                lease.request_id = request_id;
                Ok(Response::new(LeaseResponse {
                    lease: Some(lease),
                    password,
                    replayed,
                    lease_secret,
                }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn renew_lease(
        &self,
        req: Request<RenewRequest>,
    ) -> Result<Response<RenewResponse>, Status> {
        let cmd = Command::Renew(cv::renew(req.into_inner()).map_err(invalid)?);
        match self.propose(cmd).await? {
            state::Response::Lease { lease, .. } => Ok(Response::new(RenewResponse {
                lease: Some(cv::lease_pb(&lease)),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn release_lease(
        &self,
        req: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        let cmd = Command::Release(cv::release(req.into_inner()).map_err(invalid)?);
        match self.propose(cmd).await? {
            state::Response::Done => Ok(Response::new(ReleaseResponse {})),
            other => Err(unexpected(other)),
        }
    }

    async fn put_account_data(
        &self,
        req: Request<PutAccountDataRequest>,
    ) -> Result<Response<PutAccountDataResponse>, Status> {
        let cmd = Command::PutAccountData(cv::put_data(req.into_inner()).map_err(invalid)?);
        match self.propose(cmd).await? {
            state::Response::Done => Ok(Response::new(PutAccountDataResponse {})),
            other => Err(unexpected(other)),
        }
    }

    async fn list_pools(
        &self,
        req: Request<ListPoolsRequest>,
    ) -> Result<Response<ListPoolsResponse>, Status> {
        let r = req.into_inner();
        self.read_barrier(r.consistency).await?;
        let m = self.node.store().read();
        let unit = (r.unit_id != 0).then_some(r.unit_id);
        let after = page::after_id(&r.page_token)?;
        let mut pools = m.state.pools(unit);
        pools.sort_by_key(|p| p.pool_id);
        let rest = pools.iter().filter(|p| p.pool_id > after).map(cv::pool_pb);
        // The platforms go with the first page only.
        let platforms: Vec<Platform> = if r.page_token.is_empty() {
            m.state
                .platforms()
                .into_iter()
                .map(cv::platform_pb)
                .collect()
        } else {
            Vec::new()
        };
        let used: usize = platforms.iter().map(page::field_len).sum();
        let (pools, more) = page::take(
            rest,
            page::size(r.page_size, page::DEFAULT_PAGE),
            page::REPLY_BUDGET_BYTES.saturating_sub(used),
        );
        let next_page_token = match pools.last() {
            Some(last) if more => last.pool_id.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(ListPoolsResponse {
            pools,
            platforms,
            next_page_token,
        }))
    }

    async fn list_leases(
        &self,
        req: Request<ListLeasesRequest>,
    ) -> Result<Response<ListLeasesResponse>, Status> {
        let r = req.into_inner();
        self.read_barrier(r.consistency).await?;
        let m = self.node.store().read();
        // By lease id (the state's order).
        let leases = m.state.leases(r.pool_id).map_err(invalid)?;
        let after = page::after_id(&r.page_token)?;
        let rest = leases
            .iter()
            .filter(|l| l.lease_id > after)
            .map(cv::lease_pb);
        let (leases, more) = page::take(
            rest,
            page::size(r.page_size, page::DEFAULT_PAGE),
            page::REPLY_BUDGET_BYTES,
        );
        let next_page_token = match leases.last() {
            Some(last) if more => last.lease_id.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(ListLeasesResponse {
            leases,
            next_page_token,
        }))
    }

    async fn account_login(
        &self,
        req: Request<AccountLoginRequest>,
    ) -> Result<Response<AccountLoginResponse>, Status> {
        let r = req.into_inner();
        let secret = cv::login_secret(&r).map_err(invalid)?;
        self.node.linearize().await?;
        let m = self.node.store().read();
        // Never judge a lease by a time earlier than the state has seen.
        let now = self.node.clock().now_ms().max(m.state.now_ms());
        let outcome = m.state.check_login(
            r.unit_id,
            &r.account,
            &r.password,
            &r.user,
            secret.as_ref(),
            now,
        );
        Ok(Response::new(cv::login_outcome_pb(&outcome)))
    }
}

/// Batch lookup shared by gRPC and HTTP: one record per uid, in order,
/// until the records would pass `budget` bytes (`truncated`: the caller
/// asks again for the rest). gRPC answers stay under
/// [`page::REPLY_BUDGET_BYTES`]; HTTP has no such limit and passes
/// `usize::MAX`.
pub fn batch_get(node: &Herald, uids: &[String], budget: usize) -> BatchGetPresenceResponse {
    let m = node.store().read();
    let records = uids.iter().map(|u| {
        m.state
            .presence(u)
            .map(cv::record_pb)
            .unwrap_or_else(|| cv::unknown_record_pb(u))
    });
    let (records, truncated) = page::take(records, usize::MAX, budget);
    BatchGetPresenceResponse {
        records,
        revision: m.state.last_index(),
        truncated,
    }
}
