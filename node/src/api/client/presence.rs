//! Presence calls: writes (login, logout, permission changes) proposed
//! through the leader, heartbeats passed to the uid's owner, reads, and the
//! `Watch` stream; with the uid checks and the batch lookup the HTTP API
//! shares.

use std::collections::BTreeSet;
use std::pin::Pin;

use ::herald_client::LEADER_HINT;
use ::herald_client::proto::*;
use futures::{Stream, StreamExt as _};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::super::convert as cv;
use super::super::page;
use super::watch::{EventSource, spawn_watch};
use super::{HeraldService, invalid, unexpected};
use crate::node::{Herald, NodeError};
use crate::state::{self, Command, StateError};

pub(super) type WatchStream = Pin<Box<dyn Stream<Item = Result<PresenceEvent, Status>> + Send>>;

fn presence_reply(r: state::Response) -> Result<Response<PresenceWriteResponse>, Status> {
    match r {
        state::Response::Presence(rec) => Ok(Response::new(PresenceWriteResponse {
            record: Some(cv::record_pb(&rec)),
        })),
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

impl HeraldService {
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
            .heartbeat(
                &r.uid,
                &r.client_type,
                &r.connection_id,
                std::time::Duration::from_secs(1),
            )
            .await
            .ok()
    }

    pub(super) async fn login(
        &self,
        req: Request<LoginRequest>,
    ) -> Result<Response<PresenceWriteResponse>, Status> {
        let cmd = Command::Login(cv::login(req.into_inner()));
        self.presence_write(cmd).await
    }

    pub(super) async fn logout(
        &self,
        req: Request<LogoutRequest>,
    ) -> Result<Response<PresenceWriteResponse>, Status> {
        let cmd = Command::Logout(cv::logout(req.into_inner()));
        self.presence_write(cmd).await
    }

    pub(super) async fn change_permission(
        &self,
        req: Request<PermissionRequest>,
    ) -> Result<Response<PresenceWriteResponse>, Status> {
        let cmd = Command::Permission(cv::permission(req.into_inner()));
        self.presence_write(cmd).await
    }

    pub(super) async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let r = req.into_inner();
        check_uid(&r.uid).map_err(invalid)?;
        state::limits::check_connection_id("connection_id", &r.connection_id).map_err(invalid)?;
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
        let known = self
            .node
            .heartbeat_here(&r.uid, &r.client_type, &r.connection_id)
            .await?;
        Ok(Response::new(HeartbeatResponse { known }))
    }

    pub(super) async fn get_presence(
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

    pub(super) async fn batch_get_presence(
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

    pub(super) async fn watch(
        &self,
        req: Request<WatchRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let r = req.into_inner();
        let feed = open_watch(&self.node, r.uids, r.start_revision)?;
        let events = ReceiverStream::new(feed).map(|e| e.map(|e| cv::event_pb(&e)));
        Ok(Response::new(Box::pin(events)))
    }
}

/// An open presence watch: the changes of the watched users from its start,
/// in revision order and without gaps, as this node applies them; it ends
/// with an error status when the history it reads was compacted under it
/// (`OUT_OF_RANGE`, `COMPACTED`) or the node shuts down (`UNAVAILABLE`).
/// The gRPC `Watch` and the HTTP event stream ([`super::super::http`]) both
/// serve one, so their filter, start, refusals and cap are the same.
pub type WatchFeed = mpsc::Receiver<Result<state::PresenceEvent, Status>>;

/// Opens a watch of `uids` (empty = every user) from `start_revision` (0 =
/// from now). Refused at once, as a status rather than a broken stream,
/// when the uids are invalid, the start is compacted, or the node has
/// `limits.max_watch_streams` watches open. The task serving it holds one
/// of those permits until its receiver is dropped (the client went away:
/// the call was cancelled or the connection closed, which keepalive notices
/// for a vanished peer).
pub fn open_watch(
    node: &Herald,
    uids: Vec<String>,
    start_revision: u64,
) -> Result<WatchFeed, Status> {
    check_uids(&uids).map_err(invalid)?;
    let uids: BTreeSet<String> = uids.into_iter().collect();
    let source: EventSource<state::PresenceEvent> = Box::new(move |state, start, out| {
        state.visit_presence_events_since(start, |e| {
            if uids.is_empty() || uids.contains(&e.uid) {
                out.push(e.clone());
            }
        })
    });
    spawn_watch(node, start_revision, source).map(|(feed, _)| feed)
}
