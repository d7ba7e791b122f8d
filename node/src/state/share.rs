//! Media sharing (P-share): storage servers, friendships, upload admission
//! with capacity reservations, and friend-checked access.
//!
//! An IM user asks to share a media item of N bytes with some friends. The
//! upload is admitted only if a storage server is up and has room: the
//! state picks the least loaded such server (most free bytes, then the
//! lowest id), reserves N bytes on it and records the share with a
//! deadline. The uploader commits the actual size before the deadline, or
//! the reservation is released by cluster time; deleting a share frees its
//! bytes. Friends of the sharer get access parameters (the server and a
//! key); anyone else is refused with [`Reason::NotFriend`].
//!
//! The rule that matters most: on every server, at every log index,
//! `reserved + committed <= capacity`. It holds because bytes are reserved,
//! committed and freed only here, in log order, with time from the entries;
//! the capacity check runs inside `apply` (a check before proposing only
//! saves log entries), and a capacity is never lowered below what a server
//! holds.
//!
//! Keys (the uploader's, each receiver's and each access grant's) are made
//! by the serving node before it proposes; only their SHA-256
//! ([`SecretHash`]) reaches the log, so a key is shown once. A storage
//! server checks a presented key with [`MediaShares::check_key`].
//!
//! A retried share request (same owner and `request_id`, from the same
//! caller, for the same size and receivers) gets the same share, never a
//! second reservation; as with leases the retry's keys are added beside the
//! earlier answers' (at most [`MAX_SHARE_ANSWERS`]). An ended share's
//! request id is refused for [`REQUEST_ID_RETENTION_MS`] after it ended.
//!
//! Storage-server health is kept off the log, like presence: a storage
//! server's heartbeats go to its owner on the ownership ring and live only
//! in that node's memory (`crate::cluster::storage_beats`). The log holds
//! only changes: [`StorageHealth`] marks a server up (with the TTL its
//! heartbeats keep it up by, or none: up until marked down) or down, and
//! [`ExpireStorage`] is the owner's proposal when a TTL passed without a
//! beat. An expiry names the spell of being up it ends (`up_since_ms`) and
//! the ownership epoch it was judged under, so one judged on a ring that
//! has since moved, or on a spell that has since ended, is refused. A
//! server is up exactly while the state says so: admission never reads a
//! clock.
//!
//! Friendships are mutual: adding (a, b) makes each the other's friend,
//! removing it ends both directions, as in an IM buddy list.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::accounts::SecretHash;
use super::limits::{
    MAX_ACCESS_TTL_MS, MAX_CALLER_BYTES, MAX_CAPACITY_BYTES, MAX_HEALTH_TTL_MS, MAX_MEDIA_BYTES,
    MAX_REQUEST_ID_BYTES, MAX_SERVER_ADDRESS_BYTES, MAX_SERVER_ID_BYTES, MAX_SHARE_ANSWERS,
    MAX_SHARE_RECEIVERS, MAX_UPLOAD_TTL_MS, REQUEST_ID_RETENTION_MS, check_connection_id,
    check_len, check_uid,
};
use super::quotas::{Quotas, over};
use super::{Entry, Reason, StateError};

/// The reservation deadline of a share that asks for none: 10 minutes.
pub const DEFAULT_UPLOAD_TTL_MS: u64 = 10 * 60 * 1000;

/// A storage server as the cluster knows it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StorageServer {
    /// Operator-chosen, 1..=64 bytes of printable ASCII.
    pub server_id: String,
    /// Where clients upload and download (`host:port` or a URL).
    pub address: String,
    /// Bytes it may hold.
    pub capacity_bytes: u64,
    /// Bytes reserved by uncommitted shares.
    pub reserved_bytes: u64,
    /// Bytes of committed shares.
    pub committed_bytes: u64,
    /// Shares (reserved or committed) it holds.
    pub shares: u64,
    /// Takes uploads: marked up, and neither marked down nor expired
    /// since. A heartbeat to a server that is down marks it up again.
    pub up: bool,
    /// While up: the TTL its heartbeats keep it up by (its owner proposes
    /// [`ExpireStorage`] when one passes without a beat); 0 = up until
    /// marked down.
    pub heartbeat_ttl_ms: u64,
    /// While up: the cluster time it went up (or changed its TTL), which
    /// names this spell of being up for an expiry; 0 while down.
    pub up_since_ms: u64,
}

impl StorageServer {
    /// Reserved plus committed bytes.
    pub fn used_bytes(&self) -> u64 {
        self.reserved_bytes + self.committed_bytes
    }

    /// Capacity not reserved nor committed.
    pub fn free_bytes(&self) -> u64 {
        self.capacity_bytes.saturating_sub(self.used_bytes())
    }

    /// Whether it takes uploads.
    pub fn is_up(&self) -> bool {
        self.up
    }
}

/// Where a share is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShareState {
    /// Bytes reserved; the upload must be committed by the deadline.
    Reserved,
    /// Uploaded; its actual size is committed on its server.
    Committed,
}

/// A shared media item as clients see it (never its keys or request id).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MediaShare {
    /// Cluster-assigned, from 1.
    pub share_id: u64,
    /// The sharer.
    pub owner: String,
    /// The friends it was shared with, in request order.
    pub receivers: Vec<String>,
    /// The storage server that holds it.
    pub server_id: String,
    /// Reserved bytes while reserved; the actual size once committed.
    pub size_bytes: u64,
    /// Reserved or committed.
    pub state: ShareState,
    /// Cluster time of the admission.
    pub created_ms: u64,
    /// A reserved share is released at this cluster time; 0 once committed.
    pub deadline_ms: u64,
}

/// What a presented key proves ([`MediaShares::check_key`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum KeyHolder {
    /// The uploader's key: upload, commit, delete, download.
    Owner(String),
    /// A receiver's key, while the receiver is still the owner's friend.
    Receiver(String),
    /// An access grant's key, before its expiry and while its user is the
    /// owner or a friend.
    Access(String),
}

/// Registers a storage server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RegisterStorage {
    /// 1..=64 bytes of printable ASCII; unique.
    pub server_id: String,
    /// 1..=256 bytes.
    pub address: String,
    /// 1..=2^60 bytes.
    pub capacity_bytes: u64,
}

/// Changes a storage server's address or capacity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct UpdateStorage {
    /// A registered server.
    pub server_id: String,
    /// "" = unchanged; else 1..=256 bytes.
    pub address: String,
    /// 0 = unchanged; never below the bytes the server holds.
    pub capacity_bytes: u64,
}

/// A storage server's health: a heartbeat, or an operator's mark.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StorageHealth {
    /// A registered server.
    pub server_id: String,
    /// Up or down.
    pub up: bool,
    /// When up: the heartbeat's TTL (1..=10 min), or 0 = up until marked
    /// down. Must be 0 when down.
    pub ttl_ms: u64,
    /// Start a new spell of being up even if it is up with this TTL: the
    /// owner proposes it for a beat that came after the server's deadline
    /// passed there, when an expiry of the old spell may be under way
    /// (that expiry is then refused as stale, or came first). Only with
    /// `up` and a TTL; never from a client.
    pub renew: bool,
}

/// The owner's expiry of a heartbeat-kept server whose TTL passed without
/// a beat (proposed by the node, never by a client).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ExpireStorage {
    /// A registered server.
    pub server_id: String,
    /// The spell of being up it ends ([`StorageServer::up_since_ms`]): a
    /// server that went up again since is not expired.
    pub up_since_ms: u64,
    /// The ownership epoch the owner judged under: refused once the ring
    /// moved, as another node may have heard the server's beats since.
    pub owner_epoch: u64,
}

/// Removes a storage server (refused while it holds shares).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RemoveStorage {
    /// A registered server.
    pub server_id: String,
}

/// Makes two users friends, or ends their friendship (both directions).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SetFriendship {
    /// A user id (1..=128 bytes).
    pub user: String,
    /// Another user id.
    pub friend: String,
    /// True: add; false: remove.
    pub friends: bool,
}

/// Asks to share a media item: reserves `size_bytes` on a storage server
/// that is up and has room.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ShareMedia {
    /// The sharer (1..=128 bytes).
    pub owner: String,
    /// 1..=64 distinct friends of the owner, not the owner.
    pub receivers: Vec<String>,
    /// 1..=2^40 bytes.
    pub size_bytes: u64,
    /// The reservation deadline, from now; 0 = 10 minutes; at most a day.
    pub ttl_ms: u64,
    /// 1..=128 bytes; a retry with the same owner, id and caller gets the
    /// same share.
    pub request_id: String,
    /// The authenticated principal that asks (empty when the listener does
    /// not authenticate); a replay must come from the same one.
    pub caller: String,
    /// The hash of the uploader's key, made by the serving node.
    pub owner_key: SecretHash,
    /// The hash of each receiver's key, in `receivers` order.
    pub receiver_keys: Vec<SecretHash>,
}

/// Commits an uploaded share's actual size (at most what was reserved).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CommitShare {
    /// A reserved share.
    pub share_id: u64,
    /// The hash of the uploader's key.
    pub owner_key: SecretHash,
    /// 1..=the reserved size.
    pub size_bytes: u64,
}

/// Deletes a share and frees its bytes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DeleteShare {
    /// A share.
    pub share_id: u64,
    /// The hash of the uploader's key.
    pub owner_key: SecretHash,
}

/// Grants a user access to a committed share, if it is the owner or a
/// friend of the owner.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct GrantAccess {
    /// A committed share.
    pub share_id: u64,
    /// Who asks (1..=128 bytes).
    pub user: String,
    /// The hash of the access key the serving node made.
    pub key: SecretHash,
    /// 1..=a day.
    pub ttl_ms: u64,
}

/// Every media-sharing write, as one [`super::Command::Share`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ShareCommand {
    /// Register a storage server.
    RegisterStorage(RegisterStorage),
    /// Change its address or capacity.
    UpdateStorage(UpdateStorage),
    /// Heartbeat or mark up/down.
    StorageHealth(StorageHealth),
    /// Remove it.
    RemoveStorage(RemoveStorage),
    /// Add or remove a friendship.
    SetFriendship(SetFriendship),
    /// Upload admission.
    Share(ShareMedia),
    /// Commit an upload.
    Commit(CommitShare),
    /// Delete a share.
    Delete(DeleteShare),
    /// Access for a friend.
    Grant(GrantAccess),
    /// A heartbeat TTL ran out (appended last: older logs stay readable).
    ExpireStorage(ExpireStorage),
}

/// What an applied [`ShareCommand`] answers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ShareOutcome {
    /// Register, update, health: the server after the change.
    Storage(StorageServer),
    /// Share (`replayed` for a retry), commit: the share and its server's
    /// address.
    Share {
        /// The share.
        share: MediaShare,
        /// Its server's address.
        address: String,
        /// True when this answers a retry of an earlier request.
        replayed: bool,
    },
    /// Grant: where and until when the key works.
    Access {
        /// The share.
        share: MediaShare,
        /// Its server's address.
        address: String,
        /// The key stops working at this cluster time.
        expires_ms: u64,
    },
    /// Remove, friendship, delete.
    Done,
}

fn check_server_id(field: &str, id: &str) -> Result<(), StateError> {
    if id.is_empty() {
        return Err(StateError::invalid(
            field,
            format!("must be 1..={MAX_SERVER_ID_BYTES} bytes of printable ASCII, got 0"),
        ));
    }
    if id.len() > MAX_SERVER_ID_BYTES {
        return Err(StateError::invalid(
            field,
            format!(
                "must be 1..={MAX_SERVER_ID_BYTES} bytes of printable ASCII, got {}",
                id.len()
            ),
        ));
    }
    check_connection_id(field, id)
}

fn check_capacity(field: &str, bytes: u64) -> Result<(), StateError> {
    if bytes == 0 || bytes > MAX_CAPACITY_BYTES {
        return Err(StateError::invalid(
            field,
            format!("must be 1..={MAX_CAPACITY_BYTES} bytes, got {bytes}"),
        ));
    }
    Ok(())
}

fn check_media_size(field: &str, bytes: u64) -> Result<(), StateError> {
    if bytes == 0 || bytes > MAX_MEDIA_BYTES {
        return Err(StateError::invalid(
            field,
            format!("must be 1..={MAX_MEDIA_BYTES} bytes, got {bytes}"),
        ));
    }
    Ok(())
}

impl ShareCommand {
    /// Stateless field checks; every refusal names the field and the limit.
    pub fn validate(&self) -> Result<(), StateError> {
        match self {
            ShareCommand::RegisterStorage(c) => {
                check_server_id("server_id", &c.server_id)?;
                check_len("address", &c.address, 1, MAX_SERVER_ADDRESS_BYTES)?;
                check_capacity("capacity_bytes", c.capacity_bytes)
            }
            ShareCommand::UpdateStorage(c) => {
                check_server_id("server_id", &c.server_id)?;
                check_len("address", &c.address, 0, MAX_SERVER_ADDRESS_BYTES)?;
                if c.capacity_bytes != 0 {
                    check_capacity("capacity_bytes", c.capacity_bytes)?;
                }
                Ok(())
            }
            ShareCommand::StorageHealth(c) => {
                check_server_id("server_id", &c.server_id)?;
                if c.ttl_ms > MAX_HEALTH_TTL_MS {
                    return Err(StateError::invalid(
                        "ttl_ms",
                        format!("must be at most {MAX_HEALTH_TTL_MS} ms, got {}", c.ttl_ms),
                    ));
                }
                if !c.up && c.ttl_ms != 0 {
                    return Err(StateError::invalid(
                        "ttl_ms",
                        format!("must be 0 when marking down, got {}", c.ttl_ms),
                    ));
                }
                if c.renew && !(c.up && c.ttl_ms > 0) {
                    return Err(StateError::invalid(
                        "renew",
                        "only a heartbeat (up, with a TTL) renews a spell",
                    ));
                }
                Ok(())
            }
            ShareCommand::RemoveStorage(c) => check_server_id("server_id", &c.server_id),
            ShareCommand::ExpireStorage(c) => check_server_id("server_id", &c.server_id),
            ShareCommand::SetFriendship(c) => {
                check_uid("user", &c.user)?;
                check_uid("friend", &c.friend)?;
                if c.user == c.friend {
                    return Err(StateError::invalid(
                        "friend",
                        "must differ from user: a user is not its own friend",
                    ));
                }
                Ok(())
            }
            ShareCommand::Share(c) => c.validate(),
            ShareCommand::Commit(c) => check_media_size("size_bytes", c.size_bytes),
            ShareCommand::Delete(_) => Ok(()),
            ShareCommand::Grant(c) => {
                check_uid("user", &c.user)?;
                if c.ttl_ms == 0 || c.ttl_ms > MAX_ACCESS_TTL_MS {
                    return Err(StateError::invalid(
                        "ttl_ms",
                        format!("must be 1..={MAX_ACCESS_TTL_MS} ms, got {}", c.ttl_ms),
                    ));
                }
                Ok(())
            }
        }
    }
}

impl ShareMedia {
    /// Field limits; receivers distinct, not the owner, one key each.
    pub fn validate(&self) -> Result<(), StateError> {
        check_uid("owner", &self.owner)?;
        if self.receivers.is_empty() || self.receivers.len() > MAX_SHARE_RECEIVERS {
            return Err(StateError::invalid(
                "receivers",
                format!(
                    "must have 1..={MAX_SHARE_RECEIVERS} entries, got {}",
                    self.receivers.len()
                ),
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, r) in self.receivers.iter().enumerate() {
            let field = format!("receivers[{i}]");
            check_uid(&field, r)?;
            if *r == self.owner {
                return Err(StateError::invalid(field, "must not be the owner"));
            }
            if !seen.insert(r.as_str()) {
                return Err(StateError::invalid(field, format!("{r:?} repeats")));
            }
        }
        if self.receiver_keys.len() != self.receivers.len() {
            return Err(StateError::invalid(
                "receiver_keys",
                format!(
                    "must have one key per receiver ({}), got {}",
                    self.receivers.len(),
                    self.receiver_keys.len()
                ),
            ));
        }
        check_media_size("size_bytes", self.size_bytes)?;
        if self.ttl_ms > MAX_UPLOAD_TTL_MS {
            return Err(StateError::invalid(
                "ttl_ms",
                format!(
                    "must be at most {MAX_UPLOAD_TTL_MS} ms (a day), got {}",
                    self.ttl_ms
                ),
            ));
        }
        check_len("request_id", &self.request_id, 1, MAX_REQUEST_ID_BYTES)?;
        check_len("caller", &self.caller, 0, MAX_CALLER_BYTES)
    }
}

/// One answer's keys: the uploader's and each receiver's, hashed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
struct Keys {
    owner: SecretHash,
    /// In `receivers` order.
    receivers: Vec<SecretHash>,
}

/// A share as the state keeps it: the [`MediaShare`] anyone may list and
/// what proves who may use it, which nothing outside this module sees.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Held {
    share: MediaShare,
    request_id: String,
    caller: String,
    /// One set per answer to the request, 1..=[`MAX_SHARE_ANSWERS`].
    keys: Vec<Keys>,
    /// Access grants by user: the latest key and its expiry.
    grants: BTreeMap<String, (SecretHash, u64)>,
}

/// What a share request id led to.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct RequestRecord {
    share_id: u64,
    /// Cluster time the share ended; `None` while it exists.
    ended_ms: Option<u64>,
}

/// Storage servers, friendships and shares.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct MediaShares {
    servers: BTreeMap<String, StorageServer>,
    /// Both directions of every friendship.
    friends: BTreeMap<String, BTreeSet<String>>,
    last_share_id: u64,
    shares: BTreeMap<u64, Held>,
    /// Shares (reserved or committed) per owner.
    per_owner: BTreeMap<String, u64>,
    /// (deadline_ms, share_id) of every reserved share.
    deadlines: BTreeSet<(u64, u64)>,
    /// (owner, request_id) -> share, for idempotent retries.
    requests: BTreeMap<(String, String), RequestRecord>,
    /// (forget_at_ms, owner, request_id) of ended shares' requests.
    forget: BTreeSet<(u64, String, String)>,
}

impl MediaShares {
    /// Whether `cmd` fits the quotas (`storage_servers`, `friends_per_user`,
    /// `shares`, `shares_per_user`). Checked before proposing and in apply.
    pub(crate) fn admit(&self, q: &Quotas, cmd: &ShareCommand) -> Result<(), StateError> {
        match cmd {
            ShareCommand::RegisterStorage(c) => {
                if !self.servers.contains_key(&c.server_id)
                    && self.servers.len() as u64 >= q.storage_servers
                {
                    return Err(over(
                        "storage_servers",
                        q.storage_servers,
                        format!("{} storage servers are registered", self.servers.len()),
                    ));
                }
                Ok(())
            }
            ShareCommand::SetFriendship(c) if c.friends => {
                for (a, b) in [(&c.user, &c.friend), (&c.friend, &c.user)] {
                    let has = self.friends.get(a);
                    let n = has.map_or(0, BTreeSet::len) as u64;
                    if !has.is_some_and(|f| f.contains(b)) && n >= q.friends_per_user {
                        return Err(over(
                            "friends_per_user",
                            q.friends_per_user,
                            format!("{a:?} has {n} friends"),
                        ));
                    }
                }
                Ok(())
            }
            ShareCommand::Share(c) => {
                let key = (c.owner.clone(), c.request_id.clone());
                if self.requests.contains_key(&key) {
                    return Ok(()); // a replay adds no share
                }
                if self.shares.len() as u64 >= q.shares {
                    return Err(over(
                        "shares",
                        q.shares,
                        format!("{} shares exist", self.shares.len()),
                    ));
                }
                let n = self.per_owner.get(&c.owner).copied().unwrap_or(0);
                if n >= q.shares_per_user {
                    return Err(over(
                        "shares_per_user",
                        q.shares_per_user,
                        format!("{:?} has {n} shares", c.owner),
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Applies `cmd` at `at` (validated and admitted by the caller).
    pub(crate) fn apply(
        &mut self,
        at: Entry,
        cmd: &ShareCommand,
    ) -> Result<ShareOutcome, StateError> {
        match cmd {
            ShareCommand::RegisterStorage(c) => self.register(c),
            ShareCommand::UpdateStorage(c) => self.update(c),
            ShareCommand::StorageHealth(c) => self.health(at, c),
            ShareCommand::RemoveStorage(c) => self.remove(c),
            ShareCommand::ExpireStorage(c) => self.expire(c),
            ShareCommand::SetFriendship(c) => {
                self.set_friendship(c);
                Ok(ShareOutcome::Done)
            }
            ShareCommand::Share(c) => self.share(at, c),
            ShareCommand::Commit(c) => self.commit(c),
            ShareCommand::Delete(c) => self.delete(at, c),
            ShareCommand::Grant(c) => self.grant(at, c),
        }
    }

    fn server(&self, id: &str) -> Result<&StorageServer, StateError> {
        self.servers
            .get(id)
            .ok_or_else(|| StateError::not_found(format!("storage server {id:?}")))
    }

    fn register(&mut self, c: &RegisterStorage) -> Result<ShareOutcome, StateError> {
        if self.servers.contains_key(&c.server_id) {
            return Err(StateError::exists(format!(
                "storage server {:?}",
                c.server_id
            )));
        }
        // Down until its first heartbeat (or an operator's mark): a
        // registered server is not known to work yet.
        let server = StorageServer {
            server_id: c.server_id.clone(),
            address: c.address.clone(),
            capacity_bytes: c.capacity_bytes,
            reserved_bytes: 0,
            committed_bytes: 0,
            shares: 0,
            up: false,
            heartbeat_ttl_ms: 0,
            up_since_ms: 0,
        };
        self.servers.insert(c.server_id.clone(), server.clone());
        Ok(ShareOutcome::Storage(server))
    }

    fn update(&mut self, c: &UpdateStorage) -> Result<ShareOutcome, StateError> {
        let server = self.server(&c.server_id)?;
        if c.capacity_bytes != 0 && c.capacity_bytes < server.used_bytes() {
            return Err(StateError::precondition(
                Reason::InUse,
                format!(
                    "storage server {:?} holds {} bytes: its capacity cannot go below that, \
                     got {}",
                    c.server_id,
                    server.used_bytes(),
                    c.capacity_bytes
                ),
            ));
        }
        // All checks done.
        let Some(server) = self.servers.get_mut(&c.server_id) else {
            return Err(StateError::not_found(format!(
                "storage server {:?}",
                c.server_id
            )));
        };
        if !c.address.is_empty() {
            server.address = c.address.clone();
        }
        if c.capacity_bytes != 0 {
            server.capacity_bytes = c.capacity_bytes;
        }
        Ok(ShareOutcome::Storage(server.clone()))
    }

    fn health(&mut self, at: Entry, c: &StorageHealth) -> Result<ShareOutcome, StateError> {
        let Some(server) = self.servers.get_mut(&c.server_id) else {
            return Err(StateError::not_found(format!(
                "storage server {:?}",
                c.server_id
            )));
        };
        // Marking a server the way it already is changes nothing: its
        // spell of being up (and an expiry judged on it) goes on.
        let ttl = if c.up { c.ttl_ms } else { 0 };
        if server.up != c.up || server.heartbeat_ttl_ms != ttl || c.renew {
            // A new spell is named by a time no earlier spell had.
            let since = at.time_ms.max(server.up_since_ms + 1);
            server.up = c.up;
            server.heartbeat_ttl_ms = ttl;
            server.up_since_ms = if c.up { since } else { 0 };
        }
        Ok(ShareOutcome::Storage(server.clone()))
    }

    /// Ends the spell of being up `c` names (the ownership epoch was
    /// checked by the caller).
    fn expire(&mut self, c: &ExpireStorage) -> Result<ShareOutcome, StateError> {
        let Some(server) = self.servers.get_mut(&c.server_id) else {
            return Err(StateError::not_found(format!(
                "storage server {:?}",
                c.server_id
            )));
        };
        if !server.up || server.heartbeat_ttl_ms == 0 || server.up_since_ms != c.up_since_ms {
            return Err(StateError::precondition(
                Reason::Stale,
                format!(
                    "stale expiry of storage server {:?}: judged on its spell up since {}, it is \
                     now {} (heartbeat TTL {} ms, up since {})",
                    c.server_id,
                    c.up_since_ms,
                    if server.up { "up" } else { "down" },
                    server.heartbeat_ttl_ms,
                    server.up_since_ms
                ),
            ));
        }
        server.up = false;
        server.heartbeat_ttl_ms = 0;
        server.up_since_ms = 0;
        Ok(ShareOutcome::Storage(server.clone()))
    }

    fn remove(&mut self, c: &RemoveStorage) -> Result<ShareOutcome, StateError> {
        let server = self.server(&c.server_id)?;
        if server.shares > 0 {
            return Err(StateError::precondition(
                Reason::InUse,
                format!(
                    "storage server {:?} holds {} shares: delete them first",
                    c.server_id, server.shares
                ),
            ));
        }
        self.servers.remove(&c.server_id);
        Ok(ShareOutcome::Done)
    }

    fn set_friendship(&mut self, c: &SetFriendship) {
        for (a, b) in [(&c.user, &c.friend), (&c.friend, &c.user)] {
            if c.friends {
                self.friends.entry(a.clone()).or_default().insert(b.clone());
            } else if let Some(set) = self.friends.get_mut(a) {
                set.remove(b);
                if set.is_empty() {
                    self.friends.remove(a);
                }
            }
        }
    }

    /// True when `a` and `b` are friends.
    pub fn are_friends(&self, a: &str, b: &str) -> bool {
        self.friends.get(a).is_some_and(|f| f.contains(b))
    }

    /// A user's friends, by name.
    pub fn friends_of(&self, user: &str) -> Vec<String> {
        self.friends
            .get(user)
            .map(|f| f.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The server a new reservation of `size` goes to at `now`: the up
    /// server with the most free bytes (then the lowest id), or why none.
    fn pick(&self, now: u64, size: u64) -> Result<&StorageServer, StateError> {
        if self.servers.is_empty() {
            return Err(StateError::precondition(
                Reason::StorageDown,
                "no storage server is registered",
            ));
        }
        let up: Vec<&StorageServer> = self.servers.values().filter(|s| s.is_up()).collect();
        let Some(best) = up
            .iter()
            .copied()
            // Most free bytes; among equals the lowest id counts as larger.
            .max_by(|a, b| {
                a.free_bytes()
                    .cmp(&b.free_bytes())
                    .then_with(|| b.server_id.cmp(&a.server_id))
            })
        else {
            return Err(StateError::precondition(
                Reason::StorageDown,
                format!(
                    "none of the {} storage servers is up (cluster time {now})",
                    self.servers.len()
                ),
            ));
        };
        if best.free_bytes() < size {
            return Err(StateError::exhausted(
                Reason::StorageFull,
                format!(
                    "no storage server that is up has room for {size} bytes: the most free is \
                     {} bytes on {:?} ({} of {} up)",
                    best.free_bytes(),
                    best.server_id,
                    up.len(),
                    self.servers.len()
                ),
            ));
        }
        Ok(best)
    }

    fn share(&mut self, at: Entry, c: &ShareMedia) -> Result<ShareOutcome, StateError> {
        let key = (c.owner.clone(), c.request_id.clone());
        if let Some(record) = self.requests.get(&key) {
            return self.replay(record.share_id, record.ended_ms, c);
        }
        if let Some(r) = c.receivers.iter().find(|r| !self.are_friends(&c.owner, r)) {
            return Err(StateError::denied(
                Reason::NotFriend,
                format!(
                    "{r:?} is not a friend of {:?}: media is shared with friends only",
                    c.owner
                ),
            ));
        }
        let server_id = self.pick(at.time_ms, c.size_bytes)?.server_id.clone();

        // All checks done.
        let ttl = if c.ttl_ms == 0 {
            DEFAULT_UPLOAD_TTL_MS
        } else {
            c.ttl_ms
        };
        let Some(server) = self.servers.get_mut(&server_id) else {
            return Err(StateError::not_found(format!(
                "storage server {server_id:?}"
            )));
        };
        server.reserved_bytes += c.size_bytes;
        server.shares += 1;
        debug_assert!(
            server.used_bytes() <= server.capacity_bytes,
            "oversubscribed"
        );
        let address = server.address.clone();
        self.last_share_id += 1;
        let share = MediaShare {
            share_id: self.last_share_id,
            owner: c.owner.clone(),
            receivers: c.receivers.clone(),
            server_id,
            size_bytes: c.size_bytes,
            state: ShareState::Reserved,
            created_ms: at.time_ms,
            deadline_ms: at.time_ms.saturating_add(ttl),
        };
        self.deadlines.insert((share.deadline_ms, share.share_id));
        *self.per_owner.entry(c.owner.clone()).or_default() += 1;
        self.requests.insert(
            key,
            RequestRecord {
                share_id: share.share_id,
                ended_ms: None,
            },
        );
        self.shares.insert(
            share.share_id,
            Held {
                share: share.clone(),
                request_id: c.request_id.clone(),
                caller: c.caller.clone(),
                keys: vec![Keys {
                    owner: c.owner_key,
                    receivers: c.receiver_keys.clone(),
                }],
                grants: BTreeMap::new(),
            },
        );
        Ok(ShareOutcome::Share {
            share,
            address,
            replayed: false,
        })
    }

    /// A retried share request: the same share, the retry's keys added
    /// beside the earlier answers'.
    fn replay(
        &mut self,
        share_id: u64,
        ended_ms: Option<u64>,
        c: &ShareMedia,
    ) -> Result<ShareOutcome, StateError> {
        let ended = || {
            StateError::precondition(
                Reason::ShareEnded,
                format!(
                    "request_id {:?} already used by ended share {share_id}",
                    c.request_id
                ),
            )
        };
        if ended_ms.is_some() {
            return Err(ended());
        }
        let held = self.shares.get(&share_id).ok_or_else(ended)?;
        if held.caller != c.caller {
            return Err(StateError::denied(
                Reason::WrongSecret,
                format!(
                    "request_id {:?} belongs to another caller's share",
                    c.request_id
                ),
            ));
        }
        // Once committed the size is the actual one; the receivers never change.
        if held.share.receivers != c.receivers
            || (held.share.state == ShareState::Reserved && held.share.size_bytes != c.size_bytes)
        {
            return Err(StateError::precondition(
                Reason::FailedPrecondition,
                format!(
                    "request_id {:?} was used for share {share_id} with other receivers or \
                     size: use a new request_id for a new share",
                    c.request_id
                ),
            ));
        }
        if held.keys.len() >= MAX_SHARE_ANSWERS {
            return Err(StateError::exhausted(
                Reason::QuotaExceeded,
                format!(
                    "request_id {:?} was answered {MAX_SHARE_ANSWERS} times already, the most \
                     share {share_id} keeps: the keys of every earlier answer still work",
                    c.request_id
                ),
            ));
        }
        let address = self
            .servers
            .get(&held.share.server_id)
            .map(|s| s.address.clone())
            .unwrap_or_default();

        // All checks done.
        let Some(held) = self.shares.get_mut(&share_id) else {
            return Err(ended());
        };
        held.keys.push(Keys {
            owner: c.owner_key,
            receivers: c.receiver_keys.clone(),
        });
        Ok(ShareOutcome::Share {
            share: held.share.clone(),
            address,
            replayed: true,
        })
    }

    /// The share `id`, if `key` is one of its uploader's keys.
    fn owned(&self, id: u64, key: &SecretHash) -> Result<&Held, StateError> {
        match self.shares.get(&id) {
            Some(held)
                if held
                    .keys
                    .iter()
                    .fold(false, |f, k| f | k.owner.matches(key)) =>
            {
                Ok(held)
            }
            Some(_) => Err(StateError::denied(
                Reason::WrongSecret,
                format!("owner_key: does not match share {id}"),
            )),
            None => Err(self.gone(id)),
        }
    }

    fn gone(&self, id: u64) -> StateError {
        if (1..=self.last_share_id).contains(&id) {
            StateError::precondition(
                Reason::ShareEnded,
                format!("share {id} has ended (deleted, or its reservation expired)"),
            )
        } else {
            StateError::not_found(format!("share {id}"))
        }
    }

    fn commit(&mut self, c: &CommitShare) -> Result<ShareOutcome, StateError> {
        let held = self.owned(c.share_id, &c.owner_key)?;
        if held.share.state == ShareState::Committed {
            // A retried commit of the same size answers the same.
            if held.share.size_bytes == c.size_bytes {
                let address = self.address_of(&held.share.server_id);
                return Ok(ShareOutcome::Share {
                    share: held.share.clone(),
                    address,
                    replayed: true,
                });
            }
            return Err(StateError::precondition(
                Reason::FailedPrecondition,
                format!(
                    "share {} is committed already with {} bytes",
                    c.share_id, held.share.size_bytes
                ),
            ));
        }
        if c.size_bytes > held.share.size_bytes {
            return Err(StateError::invalid(
                "size_bytes",
                format!(
                    "must be at most the {} bytes reserved for share {}, got {}",
                    held.share.size_bytes, c.share_id, c.size_bytes
                ),
            ));
        }
        let reserved = held.share.size_bytes;
        let server_id = held.share.server_id.clone();
        let deadline = held.share.deadline_ms;

        // All checks done.
        if let Some(server) = self.servers.get_mut(&server_id) {
            server.reserved_bytes -= reserved;
            server.committed_bytes += c.size_bytes;
        }
        self.deadlines.remove(&(deadline, c.share_id));
        let address = self.address_of(&server_id);
        let Some(held) = self.shares.get_mut(&c.share_id) else {
            return Err(self.gone(c.share_id));
        };
        held.share.state = ShareState::Committed;
        held.share.size_bytes = c.size_bytes;
        held.share.deadline_ms = 0;
        Ok(ShareOutcome::Share {
            share: held.share.clone(),
            address,
            replayed: false,
        })
    }

    fn address_of(&self, server_id: &str) -> String {
        self.servers
            .get(server_id)
            .map(|s| s.address.clone())
            .unwrap_or_default()
    }

    fn delete(&mut self, at: Entry, c: &DeleteShare) -> Result<ShareOutcome, StateError> {
        self.owned(c.share_id, &c.owner_key)?;
        self.end_share(c.share_id, at.time_ms);
        Ok(ShareOutcome::Done)
    }

    fn grant(&mut self, at: Entry, c: &GrantAccess) -> Result<ShareOutcome, StateError> {
        let Some(held) = self.shares.get(&c.share_id) else {
            return Err(self.gone(c.share_id));
        };
        let owner = &held.share.owner;
        if c.user != *owner && !self.are_friends(owner, &c.user) {
            return Err(StateError::denied(
                Reason::NotFriend,
                format!(
                    "{:?} is not a friend of {owner:?}, who shared {}",
                    c.user, c.share_id
                ),
            ));
        }
        if held.share.state != ShareState::Committed {
            return Err(StateError::precondition(
                Reason::FailedPrecondition,
                format!(
                    "share {} is not uploaded yet (reserved until {})",
                    c.share_id, held.share.deadline_ms
                ),
            ));
        }
        let address = self.address_of(&held.share.server_id);

        // All checks done.
        let Some(held) = self.shares.get_mut(&c.share_id) else {
            return Err(self.gone(c.share_id));
        };
        let now = at.time_ms;
        // Grants are bounded by the owner's friends; expired ones go here.
        held.grants.retain(|_, (_, expires)| *expires > now);
        let expires_ms = now.saturating_add(c.ttl_ms);
        held.grants.insert(c.user.clone(), (c.key, expires_ms));
        Ok(ShareOutcome::Access {
            share: held.share.clone(),
            address,
            expires_ms,
        })
    }

    /// Ends a share: frees its bytes and starts its request id's retention.
    fn end_share(&mut self, share_id: u64, now: u64) {
        let Some(held) = self.shares.remove(&share_id) else {
            debug_assert!(false, "ending share {share_id}, which does not exist");
            return;
        };
        let share = &held.share;
        if let Some(server) = self.servers.get_mut(&share.server_id) {
            match share.state {
                ShareState::Reserved => server.reserved_bytes -= share.size_bytes,
                ShareState::Committed => server.committed_bytes -= share.size_bytes,
            }
            server.shares -= 1;
        }
        if share.state == ShareState::Reserved {
            self.deadlines.remove(&(share.deadline_ms, share_id));
        }
        if let Some(n) = self.per_owner.get_mut(&share.owner) {
            *n -= 1;
            if *n == 0 {
                self.per_owner.remove(&share.owner);
            }
        }
        let key = (share.owner.clone(), held.request_id.clone());
        if let Some(record) = self.requests.get_mut(&key) {
            record.ended_ms = Some(now);
            self.forget
                .insert((now.saturating_add(REQUEST_ID_RETENTION_MS), key.0, key.1));
        }
    }

    /// Releases every reservation whose deadline passed by `now` and forgets
    /// request ids whose retention ran out. Runs before every command.
    pub(crate) fn expire_due(&mut self, now: u64) {
        while let Some(&(deadline, share_id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.end_share(share_id, deadline);
        }
        while let Some((forget_at, _, _)) = self.forget.first() {
            if *forget_at > now {
                break;
            }
            if let Some((_, owner, request_id)) = self.forget.pop_first() {
                self.requests.remove(&(owner, request_id));
            }
        }
    }

    /// The earliest cluster time at which time alone changes this module.
    pub(crate) fn next_due(&self) -> Option<u64> {
        let deadline = self.deadlines.first().map(|&(t, _)| t);
        let forget = self.forget.first().map(|(t, _, _)| *t);
        deadline.into_iter().chain(forget).min()
    }

    /// Every storage server, by id.
    pub fn servers(&self) -> impl Iterator<Item = &StorageServer> {
        self.servers.values()
    }

    /// One storage server.
    pub fn storage(&self, id: &str) -> Option<&StorageServer> {
        self.servers.get(id)
    }

    /// A share.
    pub fn get(&self, share_id: u64) -> Option<&MediaShare> {
        self.shares.get(&share_id).map(|h| &h.share)
    }

    /// The shares `owner` holds with an id above `after`, by id, at most
    /// `limit` (`owner` empty: every owner's).
    pub fn list(&self, owner: &str, after: u64, limit: usize) -> Vec<&MediaShare> {
        self.shares
            .range(after.saturating_add(1)..)
            .map(|(_, h)| &h.share)
            .filter(|s| owner.is_empty() || s.owner == owner)
            .take(limit)
            .collect()
    }

    /// What `key` (hashed) proves about share `share_id` at cluster time
    /// `now_ms`: a storage server asks before it takes an upload or serves
    /// a download. Receivers and grants count only while their user is
    /// still the owner's friend (or the owner).
    pub fn check_key(
        &self,
        share_id: u64,
        key: &SecretHash,
        now_ms: u64,
    ) -> Result<KeyHolder, StateError> {
        let Some(held) = self.shares.get(&share_id) else {
            return Err(self.gone(share_id));
        };
        let owner = &held.share.owner;
        let allowed = |user: &str| user == owner || self.are_friends(owner, user);
        // Every key is compared, so the time taken does not tell which.
        let mut found = None;
        for k in &held.keys {
            if k.owner.matches(key) {
                found.get_or_insert(KeyHolder::Owner(owner.clone()));
            }
            for (r, rk) in held.share.receivers.iter().zip(&k.receivers) {
                if rk.matches(key) && allowed(r) {
                    found.get_or_insert(KeyHolder::Receiver(r.clone()));
                }
            }
        }
        for (user, (k, expires)) in &held.grants {
            if k.matches(key) && *expires > now_ms && allowed(user) {
                found.get_or_insert(KeyHolder::Access(user.clone()));
            }
        }
        found.ok_or_else(|| {
            StateError::denied(
                Reason::WrongSecret,
                format!(
                    "key: does not open share {share_id} (wrong, expired, or its holder is no \
                     longer a friend of {owner:?})"
                ),
            )
        })
    }

    /// Recomputes the bookkeeping and compares; above all, no server is
    /// oversubscribed (tests only).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let mut reserved: BTreeMap<&str, u64> = BTreeMap::new();
        let mut committed: BTreeMap<&str, u64> = BTreeMap::new();
        let mut count: BTreeMap<&str, u64> = BTreeMap::new();
        let mut owners: BTreeMap<&str, u64> = BTreeMap::new();
        for (id, held) in &self.shares {
            let s = &held.share;
            assert_eq!(*id, s.share_id);
            assert!(
                self.servers.contains_key(&s.server_id),
                "share on no server"
            );
            match s.state {
                ShareState::Reserved => {
                    *reserved.entry(&s.server_id).or_default() += s.size_bytes;
                    assert!(self.deadlines.contains(&(s.deadline_ms, s.share_id)));
                }
                ShareState::Committed => {
                    *committed.entry(&s.server_id).or_default() += s.size_bytes;
                    assert_eq!(s.deadline_ms, 0);
                }
            }
            *count.entry(&s.server_id).or_default() += 1;
            *owners.entry(&s.owner).or_default() += 1;
            assert!((1..=MAX_SHARE_ANSWERS).contains(&held.keys.len()));
            let record = &self.requests[&(s.owner.clone(), held.request_id.clone())];
            assert_eq!((record.share_id, record.ended_ms), (s.share_id, None));
        }
        for (id, server) in &self.servers {
            assert_eq!(
                server.reserved_bytes,
                reserved.get(id.as_str()).copied().unwrap_or(0)
            );
            assert_eq!(
                server.committed_bytes,
                committed.get(id.as_str()).copied().unwrap_or(0)
            );
            assert_eq!(server.shares, count.get(id.as_str()).copied().unwrap_or(0));
            assert!(
                server.used_bytes() <= server.capacity_bytes,
                "storage server {id} oversubscribed: {} of {}",
                server.used_bytes(),
                server.capacity_bytes
            );
        }
        let per_owner: BTreeMap<&str, u64> = self
            .per_owner
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        assert_eq!(per_owner, owners);
        let reserved_shares = self
            .shares
            .values()
            .filter(|h| h.share.state == ShareState::Reserved)
            .count();
        assert_eq!(self.deadlines.len(), reserved_shares);
        for (a, fs) in &self.friends {
            assert!(!fs.is_empty());
            for b in fs {
                assert!(self.are_friends(b, a), "friendship {a}-{b} one way only");
            }
        }
        let ended = self
            .requests
            .values()
            .filter(|r| r.ended_ms.is_some())
            .count();
        assert_eq!(ended, self.forget.len());
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::tests::Harness;
    use super::super::{Command, Response};
    use super::*;

    fn cmd(c: ShareCommand) -> Command {
        Command::Share(c)
    }

    fn register(id: &str, capacity: u64) -> Command {
        cmd(ShareCommand::RegisterStorage(RegisterStorage {
            server_id: id.into(),
            address: format!("{id}.example:9000"),
            capacity_bytes: capacity,
        }))
    }

    fn health(id: &str, up: bool, ttl_ms: u64) -> Command {
        cmd(ShareCommand::StorageHealth(StorageHealth {
            server_id: id.into(),
            up,
            ttl_ms,
            renew: false,
        }))
    }

    fn befriend(a: &str, b: &str, friends: bool) -> Command {
        cmd(ShareCommand::SetFriendship(SetFriendship {
            user: a.into(),
            friend: b.into(),
            friends,
        }))
    }

    /// The key a test's serving node made for `who` in answer `n`.
    fn key(share: &str, who: &str) -> SecretHash {
        SecretHash::of(&format!("key-{share}-{who}"))
    }

    fn share_as(caller: &str, owner: &str, to: &[&str], size: u64, request_id: &str) -> Command {
        cmd(ShareCommand::Share(ShareMedia {
            owner: owner.into(),
            receivers: to.iter().map(|r| r.to_string()).collect(),
            size_bytes: size,
            ttl_ms: 60_000,
            request_id: request_id.into(),
            caller: caller.into(),
            owner_key: key(request_id, owner),
            receiver_keys: to.iter().map(|r| key(request_id, r)).collect(),
        }))
    }

    fn share(owner: &str, to: &[&str], size: u64, request_id: &str) -> Command {
        share_as("", owner, to, size, request_id)
    }

    fn shared(r: Response) -> (MediaShare, String, bool) {
        match r {
            Response::Share(ShareOutcome::Share {
                share,
                address,
                replayed,
            }) => (share, address, replayed),
            other => panic!("{other:?}"),
        }
    }

    fn commit(id: u64, request_id: &str, owner: &str, size: u64) -> Command {
        cmd(ShareCommand::Commit(CommitShare {
            share_id: id,
            owner_key: key(request_id, owner),
            size_bytes: size,
        }))
    }

    fn delete(id: u64, request_id: &str, owner: &str) -> Command {
        cmd(ShareCommand::Delete(DeleteShare {
            share_id: id,
            owner_key: key(request_id, owner),
        }))
    }

    fn grant(id: u64, user: &str) -> Command {
        cmd(ShareCommand::Grant(GrantAccess {
            share_id: id,
            user: user.into(),
            key: SecretHash::of(&format!("grant-{id}-{user}")),
            ttl_ms: 60_000,
        }))
    }

    fn reason(e: &StateError) -> Reason {
        e.reason()
    }

    fn server(h: &Harness, id: &str) -> StorageServer {
        h.state.share().storage(id).cloned().expect("server")
    }

    /// Two friends of alice, one server of 1000 bytes that is up.
    fn setup() -> Harness {
        let mut h = Harness::new();
        h.ok(register("s1", 1000));
        h.ok(health("s1", true, 0));
        h.ok(befriend("alice", "bob", true));
        h.ok(befriend("carol", "alice", true));
        h
    }

    #[test]
    fn validation_names_the_field_and_the_limit() {
        let mut h = Harness::new();
        let field = |e: StateError| match e {
            StateError::InvalidArgument { field, reason } => format!("{field}: {reason}"),
            other => panic!("expected InvalidArgument, got {other:?}"),
        };
        assert_eq!(
            field(h.err(register("", 1))),
            "server_id: must be 1..=64 bytes of printable ASCII, got 0"
        );
        assert!(field(h.err(register("s\t1", 1))).starts_with("server_id: must be printable"));
        assert!(field(h.err(register("s1", 0))).starts_with("capacity_bytes: must be 1..="));
        assert!(field(h.err(register("s1", MAX_CAPACITY_BYTES + 1))).starts_with("capacity_bytes"));
        assert!(field(h.err(health("s1", false, 5))).starts_with("ttl_ms: must be 0 when"));
        assert!(field(h.err(health("s1", true, MAX_HEALTH_TTL_MS + 1))).starts_with("ttl_ms"));
        let renew_marked = cmd(ShareCommand::StorageHealth(StorageHealth {
            server_id: "s1".into(),
            up: true,
            ttl_ms: 0,
            renew: true,
        }));
        assert!(field(h.err(renew_marked)).starts_with("renew: only a heartbeat"));
        assert!(field(h.err(befriend("a", "a", true))).starts_with("friend: must differ"));
        assert!(field(h.err(befriend("", "a", true))).starts_with("user: must be 1..=128"));
        assert!(
            field(h.err(share("alice", &[], 1, "r"))).starts_with("receivers: must have 1..=64")
        );
        assert!(
            field(h.err(share("alice", &["bob", "bob"], 1, "r")))
                .starts_with("receivers[1]: \"bob\" repeats")
        );
        assert!(
            field(h.err(share("alice", &["alice"], 1, "r")))
                .starts_with("receivers[0]: must not be")
        );
        assert!(
            field(h.err(share("alice", &["bob"], 0, "r"))).starts_with("size_bytes: must be 1..=")
        );
        assert!(
            field(h.err(share("alice", &["bob"], MAX_MEDIA_BYTES + 1, "r")))
                .starts_with("size_bytes")
        );
        assert!(
            field(h.err(share("alice", &["bob"], 1, "")))
                .starts_with("request_id: must be 1..=128")
        );
        let mut bad_keys = share("alice", &["bob"], 1, "r");
        if let Command::Share(ShareCommand::Share(s)) = &mut bad_keys {
            s.receiver_keys.clear();
        }
        assert!(
            field(h.err(bad_keys)).starts_with("receiver_keys: must have one key per receiver")
        );
        let mut long_ttl = share("alice", &["bob"], 1, "r");
        if let Command::Share(ShareCommand::Share(s)) = &mut long_ttl {
            s.ttl_ms = MAX_UPLOAD_TTL_MS + 1;
        }
        assert!(field(h.err(long_ttl)).starts_with("ttl_ms: must be at most"));
        assert!(field(h.err(commit(1, "r", "alice", 0))).starts_with("size_bytes"));
        let mut no_ttl = grant(1, "bob");
        if let Command::Share(ShareCommand::Grant(g)) = &mut no_ttl {
            g.ttl_ms = 0;
        }
        assert!(field(h.err(no_ttl)).starts_with("ttl_ms: must be 1..="));
    }

    #[test]
    fn admission_needs_a_server_that_is_up_and_has_room_and_names_why() {
        let mut h = Harness::new();
        h.ok(befriend("alice", "bob", true));
        let e = h.err(share("alice", &["bob"], 10, "r1"));
        assert_eq!(reason(&e), Reason::StorageDown);
        assert!(
            e.to_string().contains("no storage server is registered"),
            "{e}"
        );
        h.ok(register("s1", 100));
        h.ok(register("s2", 300));
        let e = h.err(share("alice", &["bob"], 10, "r1"));
        assert_eq!(reason(&e), Reason::StorageDown);
        assert!(
            e.to_string()
                .contains("none of the 2 storage servers is up"),
            "{e}"
        );
        h.ok(health("s1", true, 0));
        let e = h.err(share("alice", &["bob"], 101, "r1"));
        assert_eq!(reason(&e), Reason::StorageFull);
        assert!(matches!(e, StateError::ResourceExhausted { .. }));
        assert!(e.to_string().contains("room for 101 bytes"), "{e}");
        // The least loaded server that is up: s2 once it is up.
        h.ok(health("s2", true, 0));
        let (a, addr, replayed) = shared(h.ok(share("alice", &["bob"], 250, "r1")));
        assert_eq!(
            (a.server_id.as_str(), addr.as_str(), replayed),
            ("s2", "s2.example:9000", false)
        );
        assert_eq!(a.state, ShareState::Reserved);
        let (b, _, _) = shared(h.ok(share("alice", &["bob"], 60, "r2")));
        assert_eq!(b.server_id, "s1", "s1 has 100 free, s2 has 50");
        assert_eq!(server(&h, "s1").reserved_bytes, 60);
        // 40 + 50 free: 45 fits one of them, 51 neither.
        let e = h.err(share("alice", &["bob"], 51, "r3"));
        assert_eq!(reason(&e), Reason::StorageFull);
        let (c, _, _) = shared(h.ok(share("alice", &["bob"], 45, "r3")));
        assert_eq!(c.server_id, "s2");
        // Equal free bytes: the lowest id.
        let mut h = Harness::new();
        h.ok(befriend("alice", "bob", true));
        for id in ["s9", "s3", "s5"] {
            h.ok(register(id, 10));
            h.ok(health(id, true, 0));
        }
        let (d, _, _) = shared(h.ok(share("alice", &["bob"], 1, "r")));
        assert_eq!(d.server_id, "s3");
    }

    fn expire(id: &str, up_since_ms: u64, owner_epoch: u64) -> Command {
        cmd(ShareCommand::ExpireStorage(ExpireStorage {
            server_id: id.into(),
            up_since_ms,
            owner_epoch,
        }))
    }

    #[test]
    fn a_heartbeat_kept_server_stays_up_however_long_until_its_owner_expires_it() {
        let mut h = Harness::new();
        h.ok(befriend("alice", "bob", true));
        h.ok(register("s1", 100));
        h.ok(health("s1", true, 5_000));
        let since = server(&h, "s1").up_since_ms;
        assert_eq!(since, h.state.now_ms());
        assert_eq!(server(&h, "s1").heartbeat_ttl_ms, 5_000);
        // Cluster time alone never ends it: only the owner's expiry does.
        h.advance(MAX_UPLOAD_TTL_MS);
        shared(h.ok(share("alice", &["bob"], 1, "r1")));
        // The same mark again goes on with the same spell.
        h.ok(health("s1", true, 5_000));
        assert_eq!(server(&h, "s1").up_since_ms, since);
        let epoch = h.state.ownership().epoch();
        let stale = h.err(expire("s1", since, epoch + 1));
        assert_eq!(stale.reason(), Reason::Stale, "another epoch: {stale}");
        let stale = h.err(expire("s1", since + 1, epoch));
        assert_eq!(stale.reason(), Reason::Stale, "another spell: {stale}");
        assert!(server(&h, "s1").is_up());
        h.ok(expire("s1", since, epoch));
        let s = server(&h, "s1");
        assert_eq!((s.up, s.heartbeat_ttl_ms, s.up_since_ms), (false, 0, 0));
        assert_eq!(
            reason(&h.err(share("alice", &["bob"], 1, "r2"))),
            Reason::StorageDown
        );
        // Expired once, an expiry of that spell is refused.
        assert_eq!(h.err(expire("s1", since, epoch)).reason(), Reason::Stale);
        // The next heartbeat brings it back in a new spell.
        h.advance(1);
        h.ok(health("s1", true, 5_000));
        let again = server(&h, "s1").up_since_ms;
        assert!(again > since);
        shared(h.ok(share("alice", &["bob"], 1, "r2")));
        // A renewal (the owner's, for a beat after the deadline passed
        // there) is a new spell even at the same TTL: the expiry of the
        // old one, committed after it, is stale.
        let before = server(&h, "s1").up_since_ms;
        h.ok(cmd(ShareCommand::StorageHealth(StorageHealth {
            server_id: "s1".into(),
            up: true,
            ttl_ms: 5_000,
            renew: true,
        })));
        let renewed = server(&h, "s1").up_since_ms;
        assert!(renewed > before, "same ms, still a new spell");
        assert_eq!(h.err(expire("s1", before, epoch)).reason(), Reason::Stale);
        assert!(server(&h, "s1").is_up());
        let again = renewed;
        // Another TTL is another spell; an operator's mark ends expiry.
        h.advance(1);
        h.ok(health("s1", true, 9_000));
        assert!(server(&h, "s1").up_since_ms > again);
        h.ok(health("s1", true, 0));
        let s = server(&h, "s1");
        assert_eq!(
            h.err(expire("s1", s.up_since_ms, epoch)).reason(),
            Reason::Stale
        );
        h.ok(health("s1", false, 0));
        assert_eq!(
            reason(&h.err(share("alice", &["bob"], 1, "r3"))),
            Reason::StorageDown
        );
        assert_eq!(h.err(health("nope", true, 0)).reason(), Reason::NotFound);
        assert_eq!(h.err(expire("nope", 1, epoch)).reason(), Reason::NotFound);
    }

    #[test]
    fn an_uncommitted_reservation_is_released_at_its_deadline() {
        let mut h = setup();
        let (s, _, _) = shared(h.ok(share("alice", &["bob"], 400, "r1")));
        assert_eq!(s.deadline_ms, h.time_ms + 60_000);
        assert_eq!(h.state.next_due(), Some(s.deadline_ms));
        assert_eq!(server(&h, "s1").reserved_bytes, 400);
        h.advance(59_999);
        h.ok(Command::Tick);
        assert_eq!(server(&h, "s1").reserved_bytes, 400);
        h.advance(1);
        h.ok(Command::Tick);
        assert_eq!(server(&h, "s1").used_bytes(), 0);
        assert!(h.state.share().get(s.share_id).is_none());
        let e = h.err(commit(s.share_id, "r1", "alice", 400));
        assert_eq!(reason(&e), Reason::ShareEnded);
        // The request id stays refused for the retention, then is forgotten.
        assert_eq!(
            reason(&h.err(share("alice", &["bob"], 400, "r1"))),
            Reason::ShareEnded
        );
        assert_eq!(
            h.state.next_due(),
            Some(s.deadline_ms + REQUEST_ID_RETENTION_MS)
        );
        h.advance(REQUEST_ID_RETENTION_MS);
        let (again, _, replayed) = shared(h.ok(share("alice", &["bob"], 400, "r1")));
        assert!(again.share_id > s.share_id && !replayed);
    }

    #[test]
    fn commit_records_the_actual_size_and_delete_frees_it() {
        let mut h = setup();
        let (s, _, _) = shared(h.ok(share("alice", &["bob"], 400, "r1")));
        let e = h.err(commit(s.share_id, "other", "alice", 300));
        assert_eq!(reason(&e), Reason::WrongSecret);
        assert!(matches!(e, StateError::PermissionDenied { .. }));
        assert!(
            h.err(commit(s.share_id, "r1", "alice", 401))
                .to_string()
                .contains("at most the 400")
        );
        let (c, _, _) = shared(h.ok(commit(s.share_id, "r1", "alice", 300)));
        assert_eq!(
            (c.state, c.size_bytes, c.deadline_ms),
            (ShareState::Committed, 300, 0)
        );
        let srv = server(&h, "s1");
        assert_eq!(
            (srv.reserved_bytes, srv.committed_bytes, srv.shares),
            (0, 300, 1)
        );
        // A committed share outlives its deadline; a repeated commit answers the same.
        h.advance(120_000);
        let (again, _, replayed) = shared(h.ok(commit(s.share_id, "r1", "alice", 300)));
        assert!(replayed && again == c);
        assert_eq!(
            h.err(commit(s.share_id, "r1", "alice", 200)).reason(),
            Reason::FailedPrecondition
        );
        assert_eq!(
            h.err(delete(s.share_id, "r2", "alice")).reason(),
            Reason::WrongSecret
        );
        h.ok(delete(s.share_id, "r1", "alice"));
        assert_eq!(server(&h, "s1").used_bytes(), 0);
        assert_eq!(
            h.err(delete(s.share_id, "r1", "alice")).reason(),
            Reason::ShareEnded
        );
        assert_eq!(h.err(delete(99, "r1", "alice")).reason(), Reason::NotFound);
    }

    #[test]
    fn only_friends_of_the_sharer_get_access() {
        let mut h = setup();
        h.ok(befriend("mallory", "bob", true));
        let e = h.err(share("alice", &["bob", "mallory"], 10, "r1"));
        assert_eq!(reason(&e), Reason::NotFriend);
        assert!(matches!(e, StateError::PermissionDenied { .. }));
        assert!(
            e.to_string()
                .contains("\"mallory\" is not a friend of \"alice\""),
            "{e}"
        );
        let (s, _, _) = shared(h.ok(share("alice", &["bob"], 10, "r1")));
        // Not uploaded yet: nobody gets access parameters.
        assert_eq!(
            h.err(grant(s.share_id, "bob")).reason(),
            Reason::FailedPrecondition
        );
        h.ok(commit(s.share_id, "r1", "alice", 10));
        assert_eq!(
            h.err(grant(s.share_id, "mallory")).reason(),
            Reason::NotFriend
        );
        // A friend who was not a receiver may open it too, and the owner.
        for user in ["carol", "bob", "alice"] {
            match h.ok(grant(s.share_id, user)) {
                Response::Share(ShareOutcome::Access {
                    address,
                    expires_ms,
                    ..
                }) => {
                    assert_eq!(address, "s1.example:9000");
                    assert_eq!(expires_ms, h.time_ms + 60_000);
                }
                other => panic!("{other:?}"),
            }
        }
        let now = h.time_ms;
        let share = h.state.share();
        let grant_key = |u: &str| SecretHash::of(&format!("grant-{}-{u}", s.share_id));
        assert_eq!(
            share.check_key(s.share_id, &key("r1", "alice"), now),
            Ok(KeyHolder::Owner("alice".into()))
        );
        assert_eq!(
            share.check_key(s.share_id, &key("r1", "bob"), now),
            Ok(KeyHolder::Receiver("bob".into()))
        );
        assert_eq!(
            share.check_key(s.share_id, &grant_key("carol"), now),
            Ok(KeyHolder::Access("carol".into()))
        );
        assert!(
            share
                .check_key(s.share_id, &grant_key("carol"), now + 60_000)
                .is_err(),
            "expired"
        );
        assert!(
            share
                .check_key(s.share_id, &grant_key("mallory"), now)
                .is_err()
        );
        // An ended friendship closes the receiver's key and the grant's.
        h.ok(befriend("bob", "alice", false));
        h.ok(befriend("alice", "carol", false));
        assert!(h.state.share().friends_of("alice").is_empty());
        let share = h.state.share();
        assert_eq!(
            share
                .check_key(s.share_id, &key("r1", "bob"), now)
                .unwrap_err()
                .reason(),
            Reason::WrongSecret
        );
        assert!(
            share
                .check_key(s.share_id, &grant_key("carol"), now)
                .is_err()
        );
        assert_eq!(h.err(grant(s.share_id, "bob")).reason(), Reason::NotFriend);
    }

    #[test]
    fn a_retried_request_gets_the_same_share_and_never_a_second_reservation() {
        let mut h = setup();
        let (first, _, replayed) = shared(h.ok(share_as("app", "alice", &["bob"], 400, "r1")));
        assert!(!replayed);
        // A retry with fresh keys: the same share, no more bytes, and every
        // answer's keys open it.
        let mut retry = share_as("app", "alice", &["bob"], 400, "r1");
        if let Command::Share(ShareCommand::Share(s)) = &mut retry {
            s.owner_key = key("r1-again", "alice");
            s.receiver_keys = vec![key("r1-again", "bob")];
        }
        let (second, _, replayed) = shared(h.ok(retry));
        assert!(replayed);
        assert_eq!(second, first);
        assert_eq!(server(&h, "s1").reserved_bytes, 400);
        let now = h.time_ms;
        for k in [key("r1", "alice"), key("r1-again", "alice")] {
            assert_eq!(
                h.state.share().check_key(first.share_id, &k, now),
                Ok(KeyHolder::Owner("alice".into()))
            );
        }
        // Another caller, other receivers or another size: refused.
        assert_eq!(
            h.err(share_as("eve", "alice", &["bob"], 400, "r1"))
                .reason(),
            Reason::WrongSecret
        );
        assert_eq!(
            h.err(share_as("app", "alice", &["carol"], 400, "r1"))
                .reason(),
            Reason::FailedPrecondition
        );
        assert_eq!(
            h.err(share_as("app", "alice", &["bob"], 401, "r1"))
                .reason(),
            Reason::FailedPrecondition
        );
        // Four answers at most.
        shared(h.ok(share_as("app", "alice", &["bob"], 400, "r1")));
        shared(h.ok(share_as("app", "alice", &["bob"], 400, "r1")));
        let e = h.err(share_as("app", "alice", &["bob"], 400, "r1"));
        assert_eq!(e.reason(), Reason::QuotaExceeded);
        // The same request id of another owner is another request.
        h.ok(befriend("bob", "carol", true));
        let (other, _, replayed) = shared(h.ok(share_as("app", "bob", &["carol"], 10, "r1")));
        assert!(!replayed && other.share_id != first.share_id);
        // A retry after commit still answers the share.
        h.ok(commit(first.share_id, "r1", "alice", 100));
        let full = share_as("app", "alice", &["bob"], 400, "r1");
        assert_eq!(
            h.err(full).reason(),
            Reason::QuotaExceeded,
            "answers are capped, even after commit"
        );
    }

    #[test]
    fn capacity_never_goes_below_what_a_server_holds() {
        let mut h = setup();
        let (s, _, _) = shared(h.ok(share("alice", &["bob"], 600, "r1")));
        let update = |capacity: u64, address: &str| {
            cmd(ShareCommand::UpdateStorage(UpdateStorage {
                server_id: "s1".into(),
                address: address.into(),
                capacity_bytes: capacity,
            }))
        };
        let e = h.err(update(599, ""));
        assert_eq!(e.reason(), Reason::InUse);
        h.ok(update(600, "new:1"));
        let srv = server(&h, "s1");
        assert_eq!((srv.capacity_bytes, srv.address.as_str()), (600, "new:1"));
        assert_eq!(
            reason(&h.err(share("alice", &["bob"], 1, "r2"))),
            Reason::StorageFull
        );
        let remove = cmd(ShareCommand::RemoveStorage(RemoveStorage {
            server_id: "s1".into(),
        }));
        assert_eq!(h.err(remove.clone()).reason(), Reason::InUse);
        h.ok(delete(s.share_id, "r1", "alice"));
        h.ok(remove.clone());
        assert_eq!(h.err(remove).reason(), Reason::NotFound);
        h.ok(register("s1", 5));
        assert!(matches!(
            h.err(register("s1", 5)),
            StateError::AlreadyExists { .. }
        ));
    }

    #[test]
    fn quotas_refuse_before_anything_changes() {
        let mut h = Harness::new();
        h.ok(Command::SetQuotas(Quotas {
            storage_servers: 1,
            shares: 3,
            shares_per_user: 2,
            friends_per_user: 2,
            ..Quotas::default()
        }));
        h.ok(register("s1", 1000));
        h.ok(health("s1", true, 0));
        let e = h.err(register("s2", 1000));
        assert!(
            e.to_string()
                .starts_with("quota storage_servers = 1 reached"),
            "{e}"
        );
        assert!(h.state.admit(&register("s2", 1000)).is_err());
        h.ok(befriend("a", "b", true));
        h.ok(befriend("a", "c", true));
        h.ok(befriend("a", "b", true)); // already friends: no new slot
        let e = h.err(befriend("a", "d", true));
        assert!(
            e.to_string()
                .starts_with("quota friends_per_user = 2 reached"),
            "{e}"
        );
        // The other side's count too.
        h.ok(befriend("d", "e", true));
        h.ok(befriend("d", "f", true));
        assert!(
            h.err(befriend("g", "d", true))
                .to_string()
                .contains("friends_per_user")
        );
        shared(h.ok(share("a", &["b"], 1, "1")));
        shared(h.ok(share("a", &["b"], 1, "2")));
        let e = h.err(share("a", &["b"], 1, "3"));
        assert!(
            e.to_string()
                .starts_with("quota shares_per_user = 2 reached"),
            "{e}"
        );
        // A replay is not a new share.
        shared(h.ok(share("a", &["b"], 1, "2")));
        shared(h.ok(share("d", &["e"], 1, "1")));
        let e = h.err(share("d", &["e"], 1, "2"));
        assert!(e.to_string().starts_with("quota shares = 3 reached"), "{e}");
    }

    /// One random step over three servers and four users.
    #[derive(Clone, Debug)]
    enum Op {
        Register(usize, u64),
        Health(usize, bool, u64),
        /// The owner's expiry of the server's current spell, or of a stale one.
        Expire(usize, bool),
        /// The owner's renewal of a spell (a beat after its deadline).
        Renew(usize),
        Update(usize, u64),
        Remove(usize),
        Friends(usize, usize, bool),
        Share(usize, u8, u64, usize, u8),
        Commit(usize, u64),
        Delete(usize),
        Grant(usize, usize),
        Wait(u64),
    }

    const USERS: [&str; 4] = ["u0", "u1", "u2", "u3"];
    const SERVERS: [&str; 3] = ["s0", "s1", "s2"];

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => (0..3usize, 1..200u64).prop_map(|(s, c)| Op::Register(s, c)),
            1 => (0..3usize, any::<bool>(), 0..3u64).prop_map(|(s, up, t)| Op::Health(s, up, t * 20_000)),
            1 => (0..3usize, any::<bool>()).prop_map(|(s, stale)| Op::Expire(s, stale)),
            1 => (0..3usize).prop_map(Op::Renew),
            1 => (0..3usize, 1..200u64).prop_map(|(s, c)| Op::Update(s, c)),
            1 => (0..3usize).prop_map(Op::Remove),
            1 => (0..4usize, 0..4usize, any::<bool>()).prop_map(|(a, b, f)| Op::Friends(a, b, f)),
            4 => (0..4usize, 1..16u8, 1..120u64, 0..6usize, 0..3u8)
                .prop_map(|(o, r, size, req, caller)| Op::Share(o, r, size, req, caller)),
            2 => (0..8usize, 0..130u64).prop_map(|(s, size)| Op::Commit(s, size)),
            1 => (0..8usize).prop_map(Op::Delete),
            1 => (0..8usize, 0..4usize).prop_map(|(s, u)| Op::Grant(s, u)),
            1 => (1..100_000u64).prop_map(Op::Wait),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// Random histories: every rejected command leaves the state as a
        /// Tick would (the harness), no server is ever oversubscribed (the
        /// invariants), a share goes only to friends, and a replay never
        /// reserves twice.
        #[test]
        fn random_histories_never_oversubscribe(ops in prop::collection::vec(op(), 1..120)) {
            let mut h = Harness::new();
            // share ids the history made, with the request id that owns them.
            let mut made: Vec<(u64, String, String)> = Vec::new();
            for op in ops {
                let c = match op {
                    Op::Register(s, c) => register(SERVERS[s], c),
                    Op::Health(s, up, t) => health(SERVERS[s], up, if up { t } else { 0 }),
                    Op::Expire(s, stale) => {
                        let before = h.state.share().storage(SERVERS[s]).cloned();
                        let since = before.as_ref().map_or(0, |b| b.up_since_ms) + u64::from(stale);
                        let r = h.apply(expire(SERVERS[s], since, h.state.ownership().epoch()));
                        let expirable = before.is_some_and(|b| b.up && b.heartbeat_ttl_ms > 0);
                        prop_assert_eq!(r.is_ok(), expirable && !stale, "expiry of {:?}", SERVERS[s]);
                        continue;
                    }
                    Op::Renew(s) => cmd(ShareCommand::StorageHealth(StorageHealth {
                        server_id: SERVERS[s].into(),
                        up: true,
                        ttl_ms: 20_000,
                        renew: true,
                    })),
                    Op::Update(s, c) => cmd(ShareCommand::UpdateStorage(UpdateStorage {
                        server_id: SERVERS[s].into(),
                        address: String::new(),
                        capacity_bytes: c,
                    })),
                    Op::Remove(s) => cmd(ShareCommand::RemoveStorage(RemoveStorage { server_id: SERVERS[s].into() })),
                    Op::Friends(a, b, f) => {
                        if a == b { continue; }
                        befriend(USERS[a], USERS[b], f)
                    }
                    Op::Share(o, mask, size, req, caller) => {
                        let to: Vec<&str> = (0..4).filter(|i| *i != o && mask & (1 << i) != 0).map(|i| USERS[i]).collect();
                        if to.is_empty() { continue; }
                        let owner = USERS[o];
                        let friends_before: Vec<bool> = to.iter().map(|r| h.state.share().are_friends(owner, r)).collect();
                        let used_before: u64 = h.state.share().servers().map(|s| s.used_bytes()).sum();
                        let request_id = format!("req{req}");
                        let r = h.apply(share_as(&format!("c{caller}"), owner, &to, size, &request_id));
                        if let Ok(Response::Share(ShareOutcome::Share { share, replayed, .. })) = r {
                            let used: u64 = h.state.share().servers().map(|s| s.used_bytes()).sum();
                            if replayed {
                                prop_assert_eq!(used, used_before, "a replay reserved bytes");
                            } else {
                                prop_assert!(friends_before.iter().all(|f| *f), "shared with a non-friend");
                                prop_assert_eq!(used, used_before + size);
                                made.push((share.share_id, request_id, owner.to_string()));
                            }
                        }
                        continue;
                    }
                    Op::Commit(i, size) => match made.get(i) {
                        Some((id, req, owner)) => commit(*id, req, owner, size.max(1)),
                        None => continue,
                    },
                    Op::Delete(i) => match made.get(i) {
                        Some((id, req, owner)) => delete(*id, req, owner),
                        None => continue,
                    },
                    Op::Grant(i, u) => match made.get(i) {
                        Some((id, _, _)) => {
                            let owner = h.state.share().get(*id).map(|s| s.owner.clone());
                            let friend = owner.as_deref().is_some_and(|o| o == USERS[u] || h.state.share().are_friends(o, USERS[u]));
                            let r = h.apply(grant(*id, USERS[u]));
                            if r.is_ok() {
                                prop_assert!(friend, "access granted to a non-friend");
                            }
                            continue;
                        }
                        None => continue,
                    },
                    Op::Wait(ms) => {
                        h.advance(ms);
                        Command::Tick
                    }
                };
                let _ = h.apply(c);
            }
            let snapshot = h.state.to_snapshot().unwrap();
            let restored = super::super::State::from_snapshot(&snapshot).unwrap();
            prop_assert!(restored.to_snapshot().unwrap() == snapshot);
        }
    }
}
