//! The peer gRPC service: openraft's RPCs from other nodes, writes forwarded
//! by followers, and ReadIndex for follower reads. Only Herald nodes of the
//! same peer message version talk here (bincode payloads behind a version
//! header, `raft::encode`); another version is refused naming both.
//!
//! Admission, before openraft sees a message: the listener's guard lets in
//! only node certificates from the cluster's CA (`security::guard`); here a
//! node must also be a member (voter or learner, as this node's membership
//! says) — except a leader newer than any this node knows, whose appends
//! and snapshots a lagging node needs in order to learn that membership —
//! and no message may carry an absurd term or log index
//! ([`check_message`]): one forged vote with term 2^64-1 once wedged every
//! node of a cluster (openraft's `term + 1` overflowed).

use super::status::refuse;
use crate::peer::proto::peer_server::Peer;
use crate::peer::proto::{RaftBlob, SnapshotChunk};
use futures::StreamExt;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, StreamAppendError};
use tonic::Code;
use tonic::{Request, Response, Status, Streaming};

use crate::node::{ForwardReply, Herald, NOT_APPLIED};
use crate::raft::network::SnapshotHead;
use crate::raft::network::{CLUSTER_HEADER, FROM_INCARNATION_HEADER, TO_INCARNATION_HEADER};
use crate::raft::typ::{LogId, Vote};
use crate::raft::{TypeConfig, decode, encode};
use crate::security::{Principal, principal_of};
use crate::state::Command;

/// A message whose term is this far beyond this node's is refused. Terms
/// grow by one per election round, and pre-vote keeps an isolated node's
/// term still, so a million rounds of a real cluster are years away.
pub const MAX_TERM_STEP: u64 = 1 << 20;
/// A log index beyond this is refused: no log gets near it, and openraft's
/// index arithmetic must never be handed a value it could overflow.
pub const MAX_LOG_INDEX: u64 = u64::MAX >> 2;

/// Whether a Raft message is sane for a node at `local_term`: its vote's
/// term at most [`MAX_TERM_STEP`] ahead, every log id's index at most
/// [`MAX_LOG_INDEX`] and its term no newer than the vote's. Pure, so it is
/// tested as a table.
pub fn check_message<'a>(
    local_term: u64,
    vote_term: u64,
    log_ids: impl IntoIterator<Item = &'a LogId>,
) -> Result<(), String> {
    if vote_term > local_term.saturating_add(MAX_TERM_STEP) {
        return Err(format!(
            "term {vote_term} is absurdly far beyond this node's term {local_term} (at most {MAX_TERM_STEP} ahead)"
        ));
    }
    for id in log_ids {
        if id.index > MAX_LOG_INDEX {
            return Err(format!("log index {} is beyond {MAX_LOG_INDEX}", id.index));
        }
        if id.leader_id.term > vote_term {
            return Err(format!(
                "log id of term {} is newer than the sender's term {vote_term}",
                id.leader_id.term
            ));
        }
    }
    Ok(())
}

/// Who sent a peer request and what it expects of this node: the guard's
/// principal and the sender's stamp (`raft::network::PeerStamp`).
#[derive(Clone, Debug)]
struct Caller {
    principal: Principal,
    cluster: Option<String>,
    from_incarnation: Option<String>,
    to_incarnation: Option<String>,
}

fn caller<T>(req: &Request<T>) -> Caller {
    let header = |key: &str| {
        req.metadata()
            .get(key)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    Caller {
        principal: principal_of(req),
        cluster: header(CLUSTER_HEADER),
        from_incarnation: header(FROM_INCARNATION_HEADER),
        to_incarnation: header(TO_INCARNATION_HEADER),
    }
}

pub use crate::peer::PingReply;

/// What kind of message [`PeerService::admit`] is looking at.
#[derive(Clone, Copy)]
enum Sender<'a> {
    /// An append or a snapshot, sent with this leader vote.
    Leader(&'a Vote),
    /// A vote or pre-vote request, from a candidate whose log ends here.
    Candidate(Option<&'a LogId>),
    /// Anything else.
    Other,
}

/// Serves [`Peer`] for one node.
pub struct PeerService {
    node: Herald,
}

impl PeerService {
    /// A peer service over `node`.
    pub fn new(node: Herald) -> Self {
        PeerService { node }
    }
}

impl PeerService {
    /// Refuses a message from a node that is not a member as this node's
    /// membership says, or that fails the identity rules ([`Self::identify`]).
    /// A non-member may still send an append or a snapshot as a committed
    /// leader at least as new as any this node knows (a lagging node learns
    /// the new membership only from that leader), and may ask a node that
    /// has never had a membership for its vote (the founders at `cluster
    /// init`). In insecure mode nobody proves an id, and only the identity
    /// and message checks apply.
    fn admit(&self, caller: &Caller, kind: Sender<'_>) -> Result<(), Status> {
        self.identify(caller, kind)?;
        let Principal::Node(from) = &caller.principal else {
            return Ok(()); // insecure mode (the guard admits nodes only otherwise)
        };
        let (member, unborn, term) = self.node.with_metrics(|m| {
            let mut nodes = m.membership_config.membership().nodes().peekable();
            let unborn = nodes.peek().is_none();
            let member = nodes.any(|(id, _)| id == from);
            (member, unborn, m.current_term)
        });
        if member {
            return Ok(());
        }
        match kind {
            Sender::Leader(vote) if vote.is_committed() && vote.leader_id().term >= term => {
                return Ok(());
            }
            Sender::Candidate(_) if unborn => return Ok(()),
            _ => {}
        }
        tracing::warn!(
            from,
            "refused a peer message from a node that is not a member"
        );
        Err(refuse(
            Code::PermissionDenied,
            format!("node {from} is not a member of this node's cluster"),
        ))
    }

    /// The identity rules (`raft::identity`): a node with an identity
    /// hears only its own cluster, and only messages meant for its own
    /// incarnation; a node without one adopts the cluster of a committed
    /// leader or a candidate that knows no earlier incarnation of it (a
    /// founder at `cluster init`, a node being added), and is refused by,
    /// and refuses, everything else.
    fn identify(&self, caller: &Caller, kind: Sender<'_>) -> Result<(), Status> {
        let cell = self.node.identity();
        let me = self.node.id();
        let deny = |why: String| {
            tracing::warn!(why = %why, "refused a peer message");
            Err(refuse(Code::PermissionDenied, why))
        };
        match cell.get() {
            Some(id) => {
                if caller.cluster.as_deref() != Some(id.cluster_id.as_str()) {
                    return deny(format!(
                        "this node belongs to cluster {}; the sender's is {}",
                        id.cluster_id,
                        caller
                            .cluster
                            .as_deref()
                            .unwrap_or("none (not initialized)")
                    ));
                }
                // The sender's own incarnation is checked only on a vote,
                // and only by a node whose log is at least the candidate's:
                // records live in the log, so a node behind the candidate
                // may hold a stale one (the candidate was replaced since),
                // and refusing would stop the election that lets it catch
                // up. Appends are not checked this way: a lagging follower
                // with a stale record must still take them from the leader
                // (the soak saw a replaced node refuse its leader for good).
                if let (Principal::Node(from), Sender::Candidate(last)) = (&caller.principal, kind)
                {
                    let known = {
                        let m = self.node.store().read();
                        m.state.incarnations().get(*from).map(str::to_string)
                    };
                    let mine = self.node.with_metrics(|x| x.last_log_index);
                    if let Some(known) = known
                        && caller.from_incarnation.as_deref() != Some(known.as_str())
                        && last.map(|l| l.index()) <= mine
                    {
                        return deny(format!(
                            "the cluster knows node {from} as incarnation {known}, not {}: a \
                             replaced node's old data dir may not speak for it",
                            caller.from_incarnation.as_deref().unwrap_or("none")
                        ));
                    }
                }
                match &caller.to_incarnation {
                    Some(expected) if *expected != id.incarnation => {
                        let why = format!(
                            "the cluster knows node {me} as incarnation {expected}, but this \
                             data dir is incarnation {}: another data dir has taken this \
                             node's place, or the sender has not caught up; if it persists, \
                             stop this one",
                            id.incarnation
                        );
                        cell.set_refused(Some(why.clone()));
                        return deny(why);
                    }
                    // A message meant for this incarnation: whatever a stale
                    // sender said before no longer holds.
                    Some(_) => cell.set_refused(None),
                    None => {}
                }
                Ok(())
            }
            None => {
                if let Some(expected) = &caller.to_incarnation {
                    let why = format!(
                        "this node's data dir is empty, but the cluster knows node {me} from \
                         another data dir (incarnation {expected}): it will not rejoin as that \
                         member. Replace it: heraldctl cluster replace {me}"
                    );
                    cell.set_refused(Some(why.clone()));
                    return deny(why);
                }
                let may_adopt = match kind {
                    Sender::Leader(vote) => vote.is_committed(),
                    // Only a founder at `cluster init`, whose log holds
                    // nothing but the initial membership (index 0): an
                    // empty node must never help elect a candidate of a
                    // cluster that has written anything.
                    Sender::Candidate(last) => last.is_none_or(|l| l.index() == 0),
                    Sender::Other => false,
                };
                match &caller.cluster {
                    Some(cluster) if may_adopt => {
                        cell.adopt(cluster).map_err(|e| {
                            tracing::error!(error = %e, "could not write this node's identity");
                            refuse(Code::Unavailable, format!("this node could not join: {e}"))
                        })?;
                        cell.set_refused(None);
                        Ok(())
                    }
                    _ => Err(refuse(
                        Code::FailedPrecondition,
                        format!(
                            "node {me} is not initialized: it joins when a leader adds it (or at \
                         heraldctl cluster init)"
                        ),
                    )),
                }
            }
        }
    }

    /// [`check_message`] against this node's term; refused and logged.
    fn sane<'a>(
        &self,
        from: &Caller,
        vote: &Vote,
        log_ids: impl IntoIterator<Item = &'a LogId>,
    ) -> Result<(), Status> {
        let local = self.node.with_metrics(|m| m.current_term);
        check_message(local, vote.leader_id().term, log_ids).map_err(|why| {
            tracing::warn!(from = %from.principal.name(), %why, "refused an absurd Raft message");
            refuse(
                Code::InvalidArgument,
                format!("refused Raft message: {why}"),
            )
        })
    }
}

fn bad(e: std::io::Error) -> Status {
    refuse(
        Code::InvalidArgument,
        format!("undecodable peer message: {e}"),
    )
}

fn blob<T: serde::Serialize>(v: &T) -> Result<Response<RaftBlob>, Status> {
    let data = encode(v).map_err(|e| refuse(Code::Internal, e.to_string()))?;
    Ok(Response::new(RaftBlob { data }))
}

/// Unavailable, marked as certainly not applied.
fn not_applied(msg: impl Into<String>) -> Status {
    let mut s = refuse(Code::Unavailable, msg);
    s.metadata_mut().insert(
        NOT_APPLIED,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    s
}

impl PeerService {
    /// Admission and sanity of one append (unary or in a stream).
    fn check_append(
        &self,
        principal: &Caller,
        rpc: &AppendEntriesRequest<TypeConfig>,
    ) -> Result<(), Status> {
        self.admit(principal, Sender::Leader(&rpc.vote))?;
        let ids = rpc
            .prev_log_id
            .iter()
            .chain(rpc.leader_commit.iter())
            .chain(rpc.entries.iter().map(|e| &e.log_id));
        self.sane(principal, &rpc.vote, ids)
    }
}

/// The reply stream of [`Peer::append_stream`].
pub type AppendResults =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<RaftBlob, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Peer for PeerService {
    type AppendStreamStream = AppendResults;

    /// The follower's end of pipelined replication: openraft's
    /// `stream_append` takes the requests in order as they arrive and yields
    /// each one's result (after its entries are durable) in the same order.
    /// A request that does not decode, or a broken inbound stream, ends the
    /// input; the results of what came before still go out.
    async fn append_stream(
        &self,
        req: Request<Streaming<RaftBlob>>,
    ) -> Result<Response<AppendResults>, Status> {
        let principal = caller(&req);
        let this = PeerService {
            node: self.node.clone(),
        };
        // An undecodable, absurd or non-member request ends the input like
        // a broken stream: what came before still gets its results.
        let requests = req.into_inner().scan((), move |_, item| {
            let rpc = match item {
                Ok(b) => decode::<AppendEntriesRequest<TypeConfig>>(&b.data)
                    .inspect_err(|e| tracing::warn!(error = %e, "undecodable append in a stream"))
                    .ok()
                    .filter(|rpc| this.check_append(&principal, rpc).is_ok()),
                Err(_) => None,
            };
            std::future::ready(rpc)
        });
        let node = self.node.clone();
        let results = self
            .node
            .raft()
            .stream_append(requests)
            .map(move |r| match r {
                Ok(result) => {
                    if !matches!(result, Err(StreamAppendError::HigherVote(_))) {
                        // From the current leader (a stale one gets HigherVote).
                        node.leader_contact().touch();
                    }
                    let data =
                        encode(&result).map_err(|e| refuse(Code::Internal, e.to_string()))?;
                    Ok(RaftBlob { data })
                }
                Err(fatal) => Err(refuse(Code::Unavailable, fatal.to_string())),
            });
        Ok(Response::new(Box::pin(results)))
    }

    async fn append(&self, req: Request<RaftBlob>) -> Result<Response<RaftBlob>, Status> {
        let principal = caller(&req);
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&req.into_inner().data).map_err(bad)?;
        self.check_append(&principal, &rpc)?;
        let resp = self
            .node
            .raft()
            .append_entries(rpc)
            .await
            .map_err(|e| refuse(Code::Unavailable, e.to_string()))?;
        if !matches!(resp, AppendEntriesResponse::HigherVote(_)) {
            // From the current leader (a stale one gets HigherVote).
            self.node.leader_contact().touch();
        }
        blob(&resp)
    }

    async fn vote(&self, req: Request<RaftBlob>) -> Result<Response<RaftBlob>, Status> {
        let principal = caller(&req);
        let rpc: openraft::raft::VoteRequest<TypeConfig> =
            decode(&req.into_inner().data).map_err(bad)?;
        self.admit(&principal, Sender::Candidate(rpc.last_log_id.as_ref()))?;
        self.sane(&principal, &rpc.vote, rpc.last_log_id.iter())?;
        let resp = self
            .node
            .raft()
            .vote(rpc)
            .await
            .map_err(|e| refuse(Code::Unavailable, e.to_string()))?;
        blob(&resp)
    }

    async fn pre_vote(&self, req: Request<RaftBlob>) -> Result<Response<RaftBlob>, Status> {
        let principal = caller(&req);
        let rpc: openraft::raft::VoteRequest<TypeConfig> =
            decode(&req.into_inner().data).map_err(bad)?;
        self.admit(&principal, Sender::Candidate(rpc.last_log_id.as_ref()))?;
        self.sane(&principal, &rpc.vote, rpc.last_log_id.iter())?;
        let resp = self
            .node
            .raft()
            .pre_vote(rpc)
            .await
            .map_err(|e| refuse(Code::Unavailable, e.to_string()))?;
        blob(&resp)
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftBlob>, Status> {
        let max = self.node.config().raft.max_snapshot_bytes;
        let principal = caller(&req);
        let mut stream = req.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| refuse(Code::InvalidArgument, "empty snapshot stream"))??;
        let SnapshotHead {
            vote,
            meta,
            crc32: expected,
        } = decode(&first.meta).map_err(bad)?;
        self.admit(&principal, Sender::Leader(&vote))?;
        self.sane(&principal, &vote, meta.last_log_id.iter())?;
        let mut data = first.data;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if (data.len() + chunk.data.len()) as u64 > max {
                return Err(herald_client::refusal(
                    Code::ResourceExhausted,
                    format!("snapshot exceeds raft.max_snapshot_bytes = {max}"),
                    herald_client::proto::ErrorReason::TooLarge,
                ));
            }
            data.extend_from_slice(&chunk.data);
        }
        let actual = crc32fast::hash(&data);
        if actual != expected {
            // Damaged on the way: the leader sends it again.
            return Err(Status::data_loss(format!(
                "snapshot data checksum {actual:08x} over {} bytes, the leader sent {expected:08x}",
                data.len()
            )));
        }
        tracing::info!(
            bytes = data.len(),
            "receiving snapshot complete, checksum verified, installing"
        );
        let snapshot = crate::raft::typ::Snapshot {
            meta,
            snapshot: data,
        };
        let resp = self
            .node
            .raft()
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| refuse(Code::Unavailable, e.to_string()))?;
        blob(&resp)
    }

    async fn transfer_leader(&self, req: Request<RaftBlob>) -> Result<Response<RaftBlob>, Status> {
        let principal = caller(&req);
        let rpc: openraft::raft::TransferLeaderRequest<TypeConfig> =
            decode(&req.into_inner().data).map_err(bad)?;
        self.admit(&principal, Sender::Other)?;
        self.sane(&principal, rpc.from_leader(), rpc.last_log_id())?;
        if *rpc.to_node_id() == self.node.id() {
            self.node.leader_contact().handed_to_me();
        }
        let resp = self
            .node
            .raft()
            .handle_transfer_leader(rpc)
            .await
            .map_err(|e| refuse(Code::Unavailable, e.to_string()))?;
        blob(&resp)
    }

    async fn forward(&self, req: Request<RaftBlob>) -> Result<Response<RaftBlob>, Status> {
        self.admit(&caller(&req), Sender::Other)?;
        let cmd: Command = decode(&req.into_inner().data).map_err(bad)?;
        if let Err(e) = cmd.validate() {
            return blob(&ForwardReply::Applied(Err(e)));
        }
        let reply = self.node.propose_local(std::sync::Arc::new(cmd)).await;
        blob(&reply)
    }

    async fn read_index(&self, req: Request<RaftBlob>) -> Result<Response<RaftBlob>, Status> {
        self.admit(&caller(&req), Sender::Other)?;
        match self.node.read_index_local().await {
            Ok(index) => blob(&index),
            Err(e) => Err(not_applied(e.to_string())),
        }
    }

    /// Answered to any node of the cluster's CA, member or not, cluster or
    /// not: it only says who this node is (liveness, `cluster init`, and the
    /// leader recording each member's incarnation).
    async fn ping(&self, _req: Request<RaftBlob>) -> Result<Response<RaftBlob>, Status> {
        blob(&PingReply {
            node_id: self.node.id(),
            identity: self
                .node
                .identity()
                .get()
                .map(|i| (i.cluster_id, i.incarnation)),
            cluster_time_ms: self.node.clock().now_ms(),
        })
    }

    async fn heartbeat(&self, req: Request<RaftBlob>) -> Result<Response<RaftBlob>, Status> {
        self.admit(&caller(&req), Sender::Other)?;
        // Handled here whatever this node's view of the ring: never forwarded twice.
        let (uid, client_type, connection_id): (String, String, String) =
            decode(&req.into_inner().data).map_err(bad)?;
        crate::state::limits::check_connection_id("connection_id", &connection_id)
            .map_err(|e| super::status::state_status(&e))?;
        let known = self
            .node
            .heartbeat_here(&uid, &client_type, &connection_id)
            .await?;
        blob(&known)
    }

    async fn storage_beat(&self, req: Request<RaftBlob>) -> Result<Response<RaftBlob>, Status> {
        self.admit(&caller(&req), Sender::Other)?;
        // Handled here whatever this node's view of the ring: never
        // forwarded twice. A refusal of the state (an unknown server, a
        // bad TTL) is answered as such; anything else is this node's
        // failure, and the caller tries another node.
        let (server_id, ttl_ms): (String, u64) = decode(&req.into_inner().data).map_err(bad)?;
        let health =
            crate::state::ShareCommand::StorageHealth(crate::state::share::StorageHealth {
                server_id: server_id.clone(),
                up: true,
                ttl_ms,
                renew: false,
            });
        if let Err(e) = health.validate() {
            return blob(&Err::<crate::state::StorageServer, _>(e));
        }
        match self.node.storage_beat_here(&server_id, ttl_ms).await {
            Ok(s) => blob(&Ok::<_, crate::state::StateError>(s)),
            Err(crate::node::NodeError::State(e)) => {
                blob(&Err::<crate::state::StorageServer, _>(e))
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_id(term: u64, index: u64) -> LogId {
        openraft::LogId {
            leader_id: openraft::impls::leader_id_adv::LeaderId { term, node_id: 1 },
            index,
        }
    }

    /// The 27-byte packet that wedged a cluster carried a vote of term
    /// 2^64-1; nothing that absurd gets past this check.
    #[test]
    fn absurd_terms_and_indexes_are_refused() {
        assert!(check_message(5, 6, []).is_ok());
        assert!(check_message(0, MAX_TERM_STEP, []).is_ok());
        assert!(check_message(0, MAX_TERM_STEP + 1, []).is_err());
        assert!(check_message(5, u64::MAX, []).is_err());
        assert!(
            check_message(u64::MAX - 3, u64::MAX, []).is_ok(),
            "saturating, not wrapping"
        );
        assert!(check_message(5, 6, [&log_id(6, 10)]).is_ok());
        assert!(
            check_message(5, 6, [&log_id(7, 10)]).is_err(),
            "entry newer than the vote"
        );
        assert!(check_message(5, 6, [&log_id(6, u64::MAX)]).is_err());
        assert!(check_message(5, 6, [&log_id(6, MAX_LOG_INDEX)]).is_ok());
    }
}
