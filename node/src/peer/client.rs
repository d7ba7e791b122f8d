//! The typed peer client: one method per node-to-node call that is not
//! Raft replication, each encoding its request and decoding its answer the
//! same way everywhere (bincode in a `RaftBlob`, the deadline as the gRPC
//! timeout, the node's stamp on every request).
//!
//! Raft's own messages (append, vote, snapshots, leader transfer) go
//! through `raft::network`, which adds stall detection and cancellation on
//! top of the same channels.

use std::time::Duration;

use tonic::Request;

use super::PingReply;
use super::proto::RaftBlob;
use crate::node::ForwardReply;
use crate::raft::network::{PeerChannels, PeerClientOf};
use crate::raft::{decode, encode};
use crate::state::Command;

/// Why a peer call gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The request could not be encoded; it was not sent.
    #[error("{0}")]
    Encode(String),
    /// The peer (or the transport) answered with this status.
    #[error("{}", .0.message())]
    Call(tonic::Status),
    /// The answer could not be decoded (a peer of another version).
    #[error("{0}")]
    Decode(String),
}

/// A client of node `id`'s peer service, over this node's cached channel
/// (and peer route) to it. Cheap to make: one per call is fine.
pub struct PeerClient {
    inner: PeerClientOf,
}

impl PeerClient {
    /// A client of node `id`, whose membership address is `addr`.
    pub fn new(peers: &PeerChannels, id: u64, addr: &str) -> Result<Self, tonic::transport::Error> {
        Ok(PeerClient {
            inner: peers.client_to(id, addr)?,
        })
    }

    /// `Peer.Ping`: who the node is (and that it answers).
    pub async fn ping(&mut self, timeout: Duration) -> Result<PingReply, PeerError> {
        let r = self
            .inner
            .ping(request(Vec::new(), timeout))
            .await
            .map_err(PeerError::Call)?;
        answer(r)
    }

    /// `Peer.Forward`: proposes `cmd` through the node (the leader).
    pub async fn forward(
        &mut self,
        cmd: &Command,
        timeout: Duration,
    ) -> Result<ForwardReply, PeerError> {
        let data = encode(cmd).map_err(|e| PeerError::Encode(e.to_string()))?;
        let mut req = request(data, timeout);
        crate::telemetry::inject(req.metadata_mut());
        let r = self.inner.forward(req).await.map_err(PeerError::Call)?;
        answer(r).map_err(|e| match e {
            PeerError::Decode(e) => PeerError::Decode(format!("bad forward reply: {e}")),
            e => e,
        })
    }

    /// `Peer.ReadIndex`: the index a linearizable read must wait for, as
    /// the node (the leader) confirmed it.
    pub async fn read_index(&mut self, timeout: Duration) -> Result<u64, PeerError> {
        let r = self
            .inner
            .read_index(request(Vec::new(), timeout))
            .await
            .map_err(PeerError::Call)?;
        answer(r)
    }

    /// `Peer.Heartbeat`: passes a heartbeat of one connection of `uid`
    /// (`client_type`, `connection_id`) to the node (its owner); whether
    /// that connection is logged in.
    pub async fn heartbeat(
        &mut self,
        uid: &str,
        client_type: &str,
        connection_id: &str,
        timeout: Duration,
    ) -> Result<bool, PeerError> {
        let data = encode(&(
            uid.to_string(),
            client_type.to_string(),
            connection_id.to_string(),
        ))
        .map_err(|e| PeerError::Encode(e.to_string()))?;
        let r = self
            .inner
            .heartbeat(request(data, timeout))
            .await
            .map_err(PeerError::Call)?;
        answer(r)
    }

    /// `Peer.StorageBeat`: passes a storage server's heartbeat (TTL
    /// `ttl_ms`) to the node (its owner); the server as the owner's state
    /// shows it, or the state's refusal.
    pub async fn storage_beat(
        &mut self,
        server_id: &str,
        ttl_ms: u64,
        timeout: Duration,
    ) -> Result<Result<crate::state::StorageServer, crate::state::StateError>, PeerError> {
        let data = encode(&(server_id.to_string(), ttl_ms))
            .map_err(|e| PeerError::Encode(e.to_string()))?;
        let r = self
            .inner
            .storage_beat(request(data, timeout))
            .await
            .map_err(PeerError::Call)?;
        answer(r)
    }
}

fn request(data: Vec<u8>, timeout: Duration) -> Request<RaftBlob> {
    let mut req = Request::new(RaftBlob { data });
    req.set_timeout(timeout);
    req
}

fn answer<T: serde::de::DeserializeOwned>(r: tonic::Response<RaftBlob>) -> Result<T, PeerError> {
    decode(&r.into_inner().data).map_err(|e| PeerError::Decode(e.to_string()))
}
