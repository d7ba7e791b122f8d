//! openraft glue: the one place that declares Herald's Raft types, plus the
//! sled log store, the state-machine store and the gRPC network, each behind
//! openraft's traits.
//!
//! What goes through the log is a [`Proposal`]: a state-machine command
//! stamped with the leader's cluster time. The state machine answers with an
//! [`Applied`] result, which openraft hands back to the proposer.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::state::{Command, Response, StateError};

pub mod log_store;
pub mod network;
pub mod segment_log;
pub mod state_store;

/// A member as Raft's membership config stores it: what any node needs to
/// reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The P-publish sequence number.
    pub number: u32,
    /// Raft peer gRPC address.
    pub peer_addr: String,
    /// Client and admin gRPC address.
    pub client_addr: String,
    /// HTTP JSON address.
    pub http_addr: String,
    /// SNTP time-sync address ("" = none).
    pub time_addr: String,
}

/// A command stamped with the proposing leader's cluster time: the only
/// source of time for the state machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// Leader's cluster time when it proposed, in ms since the epoch.
    pub time_ms: u64,
    /// What to apply. Shared: the log store keeps recent entries in memory
    /// and hands out clones of them.
    pub cmd: std::sync::Arc<Command>,
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proposal@{}:{:?}", self.time_ms, self.cmd)
    }
}

/// The state machine's answer to one applied entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied(pub Result<Response, StateError>);

openraft::declare_raft_types!(
    /// Herald's Raft type configuration.
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = u64,
        Node = Member,
);

/// A Herald Raft handle.
pub type Raft = openraft::Raft<TypeConfig, state_store::StateStore>;

/// Shorthands for openraft's generic types at Herald's config.
pub mod typ {
    use super::TypeConfig;

    /// A log id.
    pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
    /// A vote.
    pub type Vote = openraft::alias::VoteOf<TypeConfig>;
    /// A log entry.
    pub type Entry = openraft::alias::EntryOf<TypeConfig>;
    /// Membership as stored with its log id.
    pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
    /// Snapshot metadata.
    pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
    /// A snapshot with Herald's data (the bincode-serialized state).
    pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, Vec<u8>>;
    /// Raft's error type for RPCs.
    pub type RPCError = openraft::errors::RPCError<TypeConfig>;
}

/// Serializes a Raft message or stored value (bincode; same-version peers only).
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, std::io::Error> {
    bincode::serialize(v).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Decodes what [`encode`] produced.
pub fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, std::io::Error> {
    bincode::deserialize(b).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
