//! The admin gRPC service: node status, membership and leadership, and
//! backups. Changes run on the leader; a follower passes them on through the
//! leader's admin API, so any node answers every call.

use std::collections::BTreeSet;

use super::status::refuse;
use ::herald_client::proto::admin_client::AdminClient;
use ::herald_client::proto::admin_server::Admin;
use ::herald_client::proto::*;
use openraft::ChangeMembers;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::{Request, Response, Status};

use crate::node::{Herald, NodeError};
use crate::raft::Member as RaftMember;

/// Serves [`Admin`] for one node.
pub struct AdminService {
    node: Herald,
}

impl AdminService {
    /// An admin service over `node`.
    pub fn new(node: Herald) -> Self {
        AdminService { node }
    }

    /// `Some(client)` of the leader's admin API when this node is not the leader.
    fn leader_client(&self) -> Result<Option<AdminClient<tonic::transport::Channel>>, Status> {
        match self.node.leader() {
            Some((id, _)) if id == self.node.id() => Ok(None),
            Some((_, m)) => {
                // Through the node's TLS: the leader sees this node's
                // certificate and trusts it with what this node's guard
                // already allowed the caller.
                let ch = self
                    .node
                    .peers()
                    .endpoint(&m.client_addr)
                    .map_err(|e| refuse(Code::Internal, e.to_string()))?
                    .connect_lazy();
                Ok(Some(AdminClient::new(ch)))
            }
            None => Err(NodeError::NoLeader("no leader elected".into()).into()),
        }
    }

    fn done(message: String, log_index: u64) -> Result<Response<AdminResponse>, Status> {
        Ok(Response::new(AdminResponse { message, log_index }))
    }
}

/// The largest clock offset the test hook sets: far beyond any real skew,
/// and far from the values whose nanoseconds overflow (i64::MAX ms once
/// made the node's SNTP answer 1970).
pub const MAX_CLOCK_OFFSET_MS: u64 = 7 * 24 * 3600 * 1000;

/// The size of one `SnapshotChunk`'s data: well under gRPC's default 4 MiB
/// message limit, large enough that a 150 MB backup is ~150 messages.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// The stream `SnapshotSave` answers with.
pub type SnapshotChunks = ReceiverStream<Result<SnapshotChunk, Status>>;

/// Makes a backup on `node` and sends it down `tx` in chunks: after a
/// linearizable barrier (so it holds every write acknowledged before the
/// call), the state as applied then, encoded like the node's snapshot file.
/// Stops quietly when the receiver has gone.
async fn stream_backup(node: Herald, tx: tokio::sync::mpsc::Sender<Result<SnapshotChunk, Status>>) {
    let made = async {
        node.linearize().await.map_err(Status::from)?;
        node.store()
            .export()
            .await
            .map_err(|e| refuse(Code::Internal, format!("encoding the snapshot failed: {e}")))
    }
    .await;
    let (meta, bytes) = match made {
        Ok(m) => m,
        Err(status) => {
            let _ = tx.send(Err(status)).await;
            return;
        }
    };
    let (index, term) = meta
        .last_log_id
        .as_ref()
        .map_or((0, 0), |l| (l.index(), l.leader_id.term));
    tracing::info!(index, bytes = bytes.len(), "backup: streaming a snapshot");
    let digest: Vec<u8> = {
        use sha2::Digest;
        sha2::Sha256::digest(&bytes).to_vec()
    };
    let mut chunks = bytes.chunks(SNAPSHOT_CHUNK_BYTES).peekable();
    let mut first = true;
    while let Some(data) = chunks.next() {
        let last = chunks.peek().is_none();
        let mut chunk = SnapshotChunk {
            data: data.to_vec(),
            ..Default::default()
        };
        if first {
            chunk.total_bytes = bytes.len() as u64;
            chunk.index = index;
            chunk.term = term;
            chunk.node_id = node.id();
            first = false;
        }
        if last {
            chunk.sha256 = digest.clone();
        }
        if tx.send(Ok(chunk)).await.is_err() {
            tracing::info!("backup: the receiver went away");
            return;
        }
    }
}

fn raft_err(e: impl std::fmt::Display) -> Status {
    refuse(Code::FailedPrecondition, e.to_string())
}

/// Converts a proto member, checking the fields a node needs.
fn member_from_proto(m: Option<Member>) -> Result<(u64, RaftMember), Status> {
    let m = m.ok_or_else(|| refuse(Code::InvalidArgument, "member: required"))?;
    if m.id == 0 {
        return Err(refuse(Code::InvalidArgument, "member.id: must be >= 1"));
    }
    for (field, v) in [
        ("member.peer_addr", &m.peer_addr),
        ("member.client_addr", &m.client_addr),
    ] {
        if let Err(why) = crate::config::check_host_port(v) {
            return Err(refuse(
                Code::InvalidArgument,
                format!(
                    "{field}: must be host:port (an IP address or a DNS name, and a port 1-65535): {why}, got {v:?}"
                ),
            ));
        }
    }
    Ok((
        m.id,
        RaftMember {
            number: m.number,
            peer_addr: m.peer_addr,
            client_addr: m.client_addr,
            http_addr: m.http_addr,
            time_addr: m.time_addr,
        },
    ))
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let m = self.node.with_metrics(|m| m.clone());
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let cfg = self.node.config();
        Ok(Response::new(StatusResponse {
            status: Some(NodeStatus {
                id: cfg.id,
                number: cfg.number,
                role: role.into(),
                term: m.current_term,
                last_log_index: m.last_log_index.unwrap_or(0),
                applied_index: m.last_applied.as_ref().map(|l| l.index()).unwrap_or(0),
                leader_id: m.current_leader.unwrap_or(0),
                snapshot_index: m.snapshot.as_ref().map(|l| l.index()).unwrap_or(0),
                purged_index: m.purged.as_ref().map(|l| l.index()).unwrap_or(0),
                client_addr: cfg.listen.client.to_string(),
                clock_offset_us: self.node.clock().offset_ns() / 1_000,
                last_sync_ms: self.node.clock().last_sync_ms(),
                sync_delay_us: self.node.clock().sync_delay_ns() / 1_000,
                cluster_time_ms: self.node.clock().now_ms(),
                insecure: cfg.insecure,
                testing: cfg.testing_mode,
                auth_enabled: self.node.guard().enabled(),
                storage_free_bytes: self.node.space().free_bytes(),
                nospace_alarm: self.node.space().alarm(),
                storage_min_free_bytes: self.node.space().threshold(),
                cluster_id: self.node.identity().cluster_id().unwrap_or_default(),
                waiting: self.node.waiting().unwrap_or_default(),
                members_log_index: m
                    .membership_config
                    .log_id()
                    .as_ref()
                    .map(|l| l.index())
                    .unwrap_or(0),
            }),
        }))
    }

    async fn members(
        &self,
        _req: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let (members, leader) = self.node.members();
        let incarnations = self.node.store().read().state.incarnations().clone();
        Ok(Response::new(MembersResponse {
            members: members
                .into_iter()
                .map(|(id, (m, voter))| Member {
                    incarnation: incarnations.get(id).unwrap_or_default().to_string(),
                    id,
                    number: m.number,
                    peer_addr: m.peer_addr,
                    client_addr: m.client_addr,
                    http_addr: m.http_addr,
                    time_addr: m.time_addr,
                    voter,
                })
                .collect(),
            leader_id: leader.unwrap_or(0),
        }))
    }

    /// Founds the cluster (see `InitRequest` in the proto and
    /// `raft::identity`): only on a node with no identity, whose config
    /// names the founders, none of which belongs to a cluster yet.
    async fn init(&self, _req: Request<InitRequest>) -> Result<Response<InitResponse>, Status> {
        let me = self.node.id();
        if let Some(id) = self.node.identity().get() {
            return Err(refuse(
                Code::FailedPrecondition,
                format!(
                    "node {me} already belongs to cluster {}: a cluster is initialized once",
                    id.cluster_id
                ),
            ));
        }
        let founders = &self.node.config().initial_members;
        if founders.is_empty() {
            return Err(refuse(
                Code::FailedPrecondition,
                format!(
                    "node {me}'s config names no initial_members: run cluster init on a founding \
                 node (others join with heraldctl member add)"
                ),
            ));
        }
        if !founders.iter().any(|m| m.id == me) {
            return Err(refuse(
                Code::FailedPrecondition,
                format!("node {me} is not among its config's initial_members"),
            ));
        }
        // Every founder must answer and be as new as this node: a founder
        // that already belongs to a cluster means one exists (init was run
        // before, or these are the survivors of a wiped majority).
        for m in founders.iter().filter(|m| m.id != me) {
            let reply = crate::members::ask(&self.node, m.id, &m.peer)
                .await
                .map_err(|e| {
                    refuse(
                        Code::Unavailable,
                        format!(
                            "founding node {} at {} did not answer ({e}); start every founding \
                         node, then run cluster init again",
                            m.id, m.peer
                        ),
                    )
                })?;
            if reply.node_id != m.id {
                return Err(refuse(
                    Code::FailedPrecondition,
                    format!(
                        "{} answers as node {}, but initial_members says node {}",
                        m.peer, reply.node_id, m.id
                    ),
                ));
            }
            if let Some((cluster, _)) = reply.identity {
                return Err(refuse(
                    Code::FailedPrecondition,
                    format!(
                        "founding node {} already belongs to cluster {cluster}: a cluster exists; \
                     add this node to it instead (or, if it is a replacement, use \
                     heraldctl cluster replace)",
                        m.id
                    ),
                ));
            }
        }
        let cluster_id = crate::raft::identity::random_id();
        self.node
            .identity()
            .adopt(&cluster_id)
            .map_err(|e| refuse(Code::Internal, format!("writing the identity: {e}")))?;
        let members = founders
            .iter()
            .map(|m| {
                (
                    m.id,
                    RaftMember {
                        number: m.number,
                        peer_addr: m.peer.clone(),
                        client_addr: m.client.clone(),
                        http_addr: m.http.clone(),
                        time_addr: m.time_sync.clone().unwrap_or_default(),
                    },
                )
            })
            .collect::<std::collections::BTreeMap<_, _>>();
        let n = members.len();
        self.node
            .raft()
            .initialize(members)
            .await
            .map_err(raft_err)?;
        tracing::info!(%cluster_id, founders = n, "cluster initialized");
        Ok(Response::new(InitResponse {
            message: format!("initialized cluster {cluster_id} with {n} founding members"),
            cluster_id,
        }))
    }

    async fn add_learner(
        &self,
        req: Request<AddLearnerRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        if let Some(mut c) = self.leader_client()? {
            return c.add_learner(req.into_inner()).await;
        }
        let (id, member) = member_from_proto(req.into_inner().member)?;
        let (existing, _) = self.node.members();
        if existing.contains_key(&id) {
            return Err(refuse(
                Code::AlreadyExists,
                format!("member {id} already exists"),
            ));
        }
        if existing.values().any(|(m, _)| m.number == member.number) {
            return Err(refuse(
                Code::AlreadyExists,
                format!("a member already has number {}", member.number),
            ));
        }
        // Blocking: returns once the learner has caught up with the log.
        let r = self
            .node
            .raft()
            .add_learner(id, member, true)
            .await
            .map_err(raft_err)?;
        tracing::info!(id, "membership: learner added");
        Self::done(format!("added learner {id}"), r.log_id.index())
    }

    async fn promote(
        &self,
        req: Request<PromoteRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        if let Some(mut c) = self.leader_client()? {
            return c.promote(req.into_inner()).await;
        }
        let id = req.into_inner().id;
        let (existing, _) = self.node.members();
        match existing.get(&id) {
            None => {
                return Err(refuse(
                    Code::NotFound,
                    format!("member {id} not found (add it as a learner first)"),
                ));
            }
            Some((_, true)) => {
                return Err(refuse(
                    Code::FailedPrecondition,
                    format!("member {id} is already a voter"),
                ));
            }
            Some(_) => {}
        }
        let r = self
            .node
            .raft()
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(raft_err)?;
        tracing::info!(id, "membership: promoted to voter");
        Self::done(format!("promoted {id} to voter"), r.log_id.index())
    }

    async fn remove(&self, req: Request<RemoveRequest>) -> Result<Response<AdminResponse>, Status> {
        if let Some(mut c) = self.leader_client()? {
            return c.remove(req.into_inner()).await;
        }
        let id = req.into_inner().id;
        let (existing, _) = self.node.members();
        let Some((_, voter)) = existing.get(&id) else {
            return Err(refuse(Code::NotFound, format!("member {id} not found")));
        };
        let change = if *voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        let r = self
            .node
            .raft()
            .change_membership(change, false)
            .await
            .map_err(raft_err)?;
        tracing::info!(id, "membership: removed");
        Self::done(format!("removed {id}"), r.log_id.index())
    }

    async fn change_membership(
        &self,
        req: Request<ChangeMembershipRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        if let Some(mut c) = self.leader_client()? {
            return c.change_membership(req.into_inner()).await;
        }
        let voters: BTreeSet<u64> = req.into_inner().voters.into_iter().collect();
        if voters.is_empty() {
            return Err(refuse(
                Code::InvalidArgument,
                "voters: must name at least one node",
            ));
        }
        let (existing, _) = self.node.members();
        if let Some(id) = voters.iter().find(|id| !existing.contains_key(id)) {
            return Err(refuse(
                Code::NotFound,
                format!("member {id} not found (add it as a learner first)"),
            ));
        }
        let r = self
            .node
            .raft()
            .change_membership(ChangeMembers::ReplaceAllVoters(voters.clone()), false)
            .await
            .map_err(raft_err)?;
        tracing::info!(?voters, "membership: voters replaced");
        Self::done(format!("voters are now {voters:?}"), r.log_id.index())
    }

    async fn transfer_leader(
        &self,
        req: Request<TransferLeaderRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        if let Some(mut c) = self.leader_client()? {
            return c.transfer_leader(req.into_inner()).await;
        }
        let to = req.into_inner().to;
        let (existing, _) = self.node.members();
        match existing.get(&to) {
            None => return Err(refuse(Code::NotFound, format!("member {to} not found"))),
            Some((_, false)) => {
                return Err(refuse(
                    Code::FailedPrecondition,
                    format!("member {to} is a learner, not a voter"),
                ));
            }
            Some(_) => {}
        }
        if to == self.node.id() {
            return Self::done(format!("{to} is already the leader"), 0);
        }
        self.node
            .raft()
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(raft_err)?;
        // Having chosen the next leader, wait for it a full takeover period
        // (see node::LeaderContact).
        self.node.leader_contact().touch();
        // Wait (bounded) for the move to show, so the CLI reports the outcome.
        let mut rx = self.node.raft().metrics();
        let moved = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                if rx.borrow_watched().current_leader == Some(to) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        match moved {
            Ok(()) => {
                tracing::info!(to, "leadership transferred");
                Self::done(format!("leadership moved to {to}"), 0)
            }
            Err(_) => Err(refuse(
                Code::DeadlineExceeded,
                format!("leadership did not move to {to} within 5s"),
            )),
        }
    }

    async fn snapshot(
        &self,
        _req: Request<SnapshotRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        let (before, applied) = self
            .node
            .with_metrics(|m| (m.snapshot, m.last_applied.as_ref().map(|l| l.index())));
        if before.as_ref().map(|l| l.index()) == applied {
            let index = applied.unwrap_or(0);
            return Self::done(format!("snapshot already at index {index}"), index);
        }
        self.node
            .raft()
            .trigger()
            .snapshot()
            .await
            .map_err(raft_err)?;
        let mut rx = self.node.raft().metrics();
        let r = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            loop {
                let snap = rx.borrow_watched().snapshot;
                if snap.is_some() && snap != before {
                    return snap.map(|l| l.index()).unwrap_or(0);
                }
                if rx.changed().await.is_err() {
                    return 0;
                }
            }
        })
        .await;
        match r {
            Ok(index) => Self::done(format!("snapshot built at index {index}"), index),
            Err(_) => Err(refuse(
                Code::DeadlineExceeded,
                "snapshot not built within 30s",
            )),
        }
    }

    type SnapshotSaveStream = SnapshotChunks;

    /// Answers at once; the barrier, the encoding and the chunks follow on
    /// the stream, so a large state never runs into the caller's timeout
    /// for the response headers.
    async fn snapshot_save(
        &self,
        _req: Request<SnapshotSaveRequest>,
    ) -> Result<Response<Self::SnapshotSaveStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(stream_backup(self.node.clone(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn set_clock_offset(
        &self,
        req: Request<SetClockOffsetRequest>,
    ) -> Result<Response<AdminResponse>, Status> {
        if !self.node.config().testing_mode {
            return Err(refuse(
                Code::FailedPrecondition,
                "SetClockOffset is a test hook: this node was not started with herald-node --testing",
            ));
        }
        let r = req.into_inner();
        let clock = self.node.clock();
        let new_ms = if r.relative {
            (clock.offset_ns() / 1_000_000).saturating_add(r.offset_ms)
        } else {
            r.offset_ms
        };
        if new_ms.unsigned_abs() > MAX_CLOCK_OFFSET_MS {
            return Err(refuse(
                Code::InvalidArgument,
                format!(
                    "offset_ms: the resulting offset must be within ±{MAX_CLOCK_OFFSET_MS} ms (7 days), got {new_ms}"
                ),
            ));
        }
        let new = new_ms * 1_000_000;
        clock.set_offset_ns(new);
        tracing::warn!(
            offset_ms = new / 1_000_000,
            "clock offset set by admin call"
        );
        Self::done(
            format!(
                "node {} clock offset is now {} ms",
                self.node.id(),
                new / 1_000_000
            ),
            0,
        )
    }
}
