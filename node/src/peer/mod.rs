//! The peer API, the client side: its wire types (generated from
//! `node/proto/peer.proto`, between nodes of the same version only, so not
//! part of the public contract in `herald-client`) and the typed
//! [`PeerClient`] every node-to-node call outside Raft replication goes
//! through. The server side is `api::peer`.

mod client;

pub use client::{PeerClient, PeerError};

/// Generated protobuf messages and gRPC client/server of `herald.v1.Peer`.
pub mod proto {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("herald.v1");
}

/// What a node answers to `Peer.Ping`: who it is, so the leader can record
/// its incarnation and `cluster init` can see whether a cluster exists.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PingReply {
    /// The node's Raft id.
    pub node_id: u64,
    /// Its cluster and incarnation, once it has an identity.
    pub identity: Option<(String, String)>,
    /// Its cluster clock when it answered (ms since the epoch): a new
    /// leader's stamps are anchored to a majority's (`stamp`).
    pub cluster_time_ms: u64,
}
