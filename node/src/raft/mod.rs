//! openraft glue: the one place that declares Herald's Raft types, plus the
//! log store (segment files and a hard state file), the state-machine store
//! (in memory, snapshots in a file) and the gRPC network, each behind
//! openraft's traits, and the runtime Raft runs on. sled is opened only to
//! move the log, hard state and snapshot out of a data dir written by an
//! older build.
//!
//! What goes through the log is a [`Proposal`]: a state-machine command
//! stamped with the leader's cluster time. The state machine answers with an
//! [`Applied`] result, which openraft hands back to the proposer.
//!
//! Formats carry a version, so a build never misreads bytes written by
//! another: peer messages ([`encode`]/[`decode`], [`WIRE_VERSION`]), log
//! segments ([`segment_log::FORMAT_VERSION`]), the hard state file
//! ([`hard_state::FORMAT_VERSION`]) and the snapshot file
//! ([`state_store::FORMAT_VERSION`]) are containers; the bincode shape of
//! the commands and state inside them is the data dir's format
//! ([`identity::FORMAT_VERSION`]). An unknown version is refused with the
//! version found and the ones this build reads.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::state::{Command, Response, StateError};

pub mod free_space;
pub mod hard_state;
pub mod identity;
pub mod log_store;
pub mod network;
pub mod runtime;
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
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// Leader's cluster time when it proposed, in ms since the epoch.
    pub time_ms: u64,
    /// What to apply. Shared: the log store keeps recent entries in memory
    /// and hands out clones of them.
    pub cmd: std::sync::Arc<Command>,
}

/// Only the command's kind, never its fields: openraft formats entries
/// into its own log lines (a follower whose Raft core had stopped printed a
/// whole `AppendEntries`, user ids and ext included, at ERROR), and user
/// data must never reach the logs.
impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proposal@{}:{}", self.time_ms, command_kind(&self.cmd))
    }
}

/// Redacted like [`Display`](fmt::Display): openraft's debug logging prints
/// queued commands, entries included, with `{:?}`.
impl fmt::Debug for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proposal")
            .field("time_ms", &self.time_ms)
            .field("cmd", &command_kind(&self.cmd))
            .finish()
    }
}

/// A command's kind, for logs: says what happened without saying to whom.
pub fn command_kind(cmd: &Command) -> &'static str {
    match cmd {
        Command::Login(_) => "login",
        Command::Logout(_) => "logout",
        Command::Permission(_) => "permission",
        Command::Connect(_) => "connect",
        Command::Progress(_) => "progress",
        Command::Bind(_) => "bind",
        Command::Handoff(_) => "handoff",
        Command::CreatePlatform(_) => "create_platform",
        Command::CreatePool(_) => "create_pool",
        Command::Lease(_) => "lease",
        Command::Renew(_) => "renew",
        Command::Release(_) => "release",
        Command::PutAccountData(_) => "put_account_data",
        Command::Auth(_) => "auth",
        Command::RecordIncarnation(_) => "record_incarnation",
        Command::SetOwnership(_) => "set_ownership",
        Command::Tick => "tick",
        Command::SetQuotas(_) => "set_quotas",
        Command::DeletePlatform(_) => "delete_platform",
        Command::DeletePool(_) => "delete_pool",
        Command::DeleteSession(_) => "delete_session",
        Command::Unbind(_) => "unbind",
        Command::OfferHandoff(_) => "offer_handoff",
        Command::AcceptHandoff(_) => "accept_handoff",
        Command::RegisterAccount(_) => "register_account",
        Command::RemoveAccount(_) => "remove_account",
        Command::SetContentUnits(_) => "set_content_units",
        Command::RemoveContent(_) => "remove_content",
        Command::Share(_) => "share",
        Command::Link(c) => match c {
            crate::state::LinkCommand::CreateCatalog(_) => "link_create_catalog",
            crate::state::LinkCommand::DeleteCatalog { .. } => "link_delete_catalog",
            crate::state::LinkCommand::PutItem(_) => "link_put_item",
            crate::state::LinkCommand::RemoveItem { .. } => "link_remove_item",
            crate::state::LinkCommand::AddRule(_) => "link_add_rule",
            crate::state::LinkCommand::RemoveRule { .. } => "link_remove_rule",
            crate::state::LinkCommand::Count(_) => "link_count",
        },
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

/// The version of the peer messages this build sends and accepts. Peer
/// messages are bincode of openraft's and Herald's types, which change
/// shape between versions without notice: bump this whenever one of them
/// does, so a node refuses a peer it would misread instead of misreading it.
pub const WIRE_VERSION: u16 = 4;
/// Every peer message starts with these two bytes, then [`WIRE_VERSION`]
/// (u16 little-endian), then the bincode body.
const WIRE_MAGIC: [u8; 2] = *b"HR";

/// Why a peer message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The message does not start with Herald's header: a node from before
    /// peer messages were versioned, or not a Herald node at all.
    #[error(
        "peer message has no format header (starts with {found:02x?}): sent by a node from before \
         versioned peer messages? this node speaks version {WIRE_VERSION}"
    )]
    NoHeader {
        /// The first bytes received.
        found: Vec<u8>,
    },
    /// A version this build does not speak.
    #[error(
        "peer message format version {found} is not supported: this node speaks version \
         {WIRE_VERSION} only (upgrade or downgrade so all members run the same release)"
    )]
    UnknownVersion {
        /// The version the message carries.
        found: u16,
    },
    /// The header is fine but the body does not decode.
    #[error("peer message body does not decode: {0}")]
    Body(#[from] bincode::Error),
}

impl From<WireError> for std::io::Error {
    fn from(e: WireError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

/// Serializes a peer message: the versioned header, then bincode.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, std::io::Error> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&WIRE_MAGIC);
    out.extend_from_slice(&WIRE_VERSION.to_le_bytes());
    bincode::serialize_into(&mut out, v).map_err(WireError::Body)?;
    Ok(out)
}

/// Decodes what [`encode`] produced; refuses any other version.
pub fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, std::io::Error> {
    let body = match b {
        [m0, m1, v0, v1, body @ ..] if [*m0, *m1] == WIRE_MAGIC => {
            let found = u16::from_le_bytes([*v0, *v1]);
            if found != WIRE_VERSION {
                return Err(WireError::UnknownVersion { found }.into());
            }
            body
        }
        _ => {
            return Err(WireError::NoHeader {
                found: b.iter().take(4).copied().collect(),
            }
            .into());
        }
    };
    Ok(bincode::deserialize(body).map_err(WireError::Body)?)
}

/// Plain bincode, for the bodies of on-disk files whose own header carries
/// the version (and for reading values written before versions existed).
pub(crate) fn to_bincode<T: Serialize>(v: &T) -> Result<Vec<u8>, std::io::Error> {
    bincode::serialize(v).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Reads what [`to_bincode`] wrote.
pub(crate) fn from_bincode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, std::io::Error> {
    bincode::deserialize(b).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::state::presence::Login;

    #[test]
    fn peer_messages_round_trip_with_their_version() {
        let blob = encode(&(7u64, "x".to_string())).unwrap();
        assert_eq!(&blob[..2], b"HR");
        assert_eq!(&blob[2..4], &WIRE_VERSION.to_le_bytes());
        let back: (u64, String) = decode(&blob).unwrap();
        assert_eq!(back, (7, "x".into()));
    }

    /// Sabotage check: with the version comparison in `decode` removed, a
    /// message from version 9 decodes and this test fails.
    #[test]
    fn a_peer_message_of_an_unknown_version_is_refused_naming_both_versions() {
        let mut blob = encode(&7u64).unwrap();
        blob[2..4].copy_from_slice(&9u16.to_le_bytes());
        let err = decode::<u64>(&blob).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        let msg = err.to_string();
        assert!(
            msg.contains("version 9") && msg.contains(&format!("version {WIRE_VERSION}")),
            "{msg}"
        );
        // A blob from before versions (bare bincode) is refused too.
        let bare = bincode::serialize(&7u64).unwrap();
        let msg = decode::<u64>(&bare).unwrap_err().to_string();
        assert!(msg.contains("no format header"), "{msg}");
    }

    /// User data never reaches a log line through an entry's Display or Debug.
    #[test]
    fn a_proposal_formats_without_user_data() {
        let p = Proposal {
            time_ms: 5,
            cmd: Arc::new(Command::Login(Login {
                uid: "secret-user".into(),
                sid: 4242,
                client_type: "pc".into(),
                connection_id: String::new(),
                accept_strangers: true,
                ext: BTreeMap::from([("city".into(), "hangzhou".into())]),
                ttl_ms: 0,
            })),
        };
        for text in [format!("{p}"), format!("{p:?}")] {
            assert!(text.contains("login"), "{text}");
            for secret in ["secret-user", "4242", "hangzhou", "city"] {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
        }
    }
}
