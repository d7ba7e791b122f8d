//! Presence (P-publish): who is online, on which clients, and whether they
//! accept sessions from strangers.
//!
//! The `Roster` keeps one [`PresenceRecord`] per user ever seen (offline
//! users keep theirs, so a batch read can tell "offline" from "never seen")
//! and a bounded history of [`PresenceEvent`]s, so a watch can resume from a
//! revision without gaps. A revision is the Raft log index of the change, like
//! etcd's `mod_revision`, so it is the same on every replica.
//!
//! Heartbeats are not here: the user's owner node keeps them in memory and
//! proposes a [`Logout`] with [`LogoutReason::Expired`] when a TTL runs out.
//! That proposal names the login it expires (`login_since_ms`), so an expiry
//! that raced with a fresh login is refused as stale instead of logging the
//! user out.
//!
//! A record holds one entry per *connection*: a client type and a
//! `connection_id` the client picks (a user's two phones are two entries,
//! each with its own TTL, like Phoenix Presence's per-connection metas). The
//! empty connection id is the client type's one entry, as before connection
//! ids existed, so a caller that sends none keeps the old behaviour. A
//! logout naming a connection takes that one; naming only a client type,
//! every connection of that type; naming neither, every connection.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::limits::{
    EVENT_HISTORY, MAX_CLIENT_TYPE_BYTES, check_connection_id, check_ext, check_len, check_ttl,
    check_uid as check_uid_named,
};
use super::quotas::{Quotas, over};
use super::vecmap::{StrMap, VecMap};
use super::{Entry, Reason, StateError};

/// Which entry of a record a connection is: its client type, then its
/// connection id ("" = the client type's one entry). Ordered by type first,
/// so a type's connections sit side by side in the record.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConnectionKey {
    /// pc, mobile, web, tv or a custom string.
    pub client_type: String,
    /// The client's own id for the connection; "" = one entry per type.
    pub connection_id: String,
}

impl ConnectionKey {
    /// The key of `connection_id` of `client_type`.
    pub fn new(client_type: &str, connection_id: &str) -> Self {
        ConnectionKey {
            client_type: client_type.to_string(),
            connection_id: connection_id.to_string(),
        }
    }

    fn cmp_to(&self, client_type: &str, connection_id: &str) -> std::cmp::Ordering {
        (self.client_type.as_str(), self.connection_id.as_str()).cmp(&(client_type, connection_id))
    }
}

/// One online connection of a user.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ClientEntry {
    /// pc, mobile, web, tv or a custom string.
    pub client_type: String,
    /// The connection of that client type; "" = the type's one entry.
    pub connection_id: String,
    /// Cluster time of the login that put this client online.
    pub since_ms: u64,
    /// Heartbeat TTL of that login; 0 = online until logout.
    pub ttl_ms: u64,
}

/// A user's presence, as every replica holds it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PresenceRecord {
    /// Internal user id.
    pub uid: String,
    /// The user's public service number.
    pub sid: u64,
    /// Online connections by (client type, connection id); empty = offline.
    pub clients: VecMap<ConnectionKey, ClientEntry>,
    /// Whether the user accepts sessions from strangers.
    pub accept_strangers: bool,
    /// Free extension data.
    pub ext: StrMap,
    /// Cluster time of the last change.
    pub updated_at_ms: u64,
    /// Log index of the last change; strictly increases with every change.
    pub revision: u64,
}

impl PresenceRecord {
    /// True while any client is online.
    pub fn online(&self) -> bool {
        !self.clients.is_empty()
    }

    /// The entry of one connection (`""`: the client type's one entry).
    pub fn connection(&self, client_type: &str, connection_id: &str) -> Option<&ClientEntry> {
        self.clients
            .get_by(|k| k.cmp_to(client_type, connection_id))
    }

    /// True while any connection of `client_type` is online.
    pub fn has_client_type(&self, client_type: &str) -> bool {
        self.clients.keys().any(|k| k.client_type == client_type)
    }

    /// How many client types have a connection online.
    pub fn client_type_count(&self) -> usize {
        let mut n = 0;
        let mut last: Option<&str> = None;
        for k in self.clients.keys() {
            if last != Some(k.client_type.as_str()) {
                n += 1;
                last = Some(&k.client_type);
            }
        }
        n
    }
}

/// Why a client goes offline.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogoutReason {
    /// The user (or the IM server on its behalf) logged out.
    User,
    /// The owner node saw no heartbeat within the login's TTL.
    Expired,
}

/// What kind of change a [`PresenceEvent`] records.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresenceEventKind {
    /// A client logged in.
    Login,
    /// One or all clients logged out.
    Logout,
    /// The permission or ext changed.
    Permission,
    /// A client went offline because its TTL passed.
    Expired,
}

/// One change of one record, as a watch delivers it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PresenceEvent {
    /// Log index of the change (equals `record.revision`).
    pub revision: u64,
    /// What happened.
    pub kind: PresenceEventKind,
    /// Whose record changed.
    pub uid: String,
    /// The client concerned; empty for a permission change or a logout of
    /// every client.
    pub client_type: String,
    /// The connection concerned; empty for the client type's one entry, a
    /// logout of every connection of a type or of the user, or a permission
    /// change.
    pub connection_id: String,
    /// The record after the change (shared with the state until the
    /// record changes again, so an event costs no copy of the record).
    pub record: Arc<PresenceRecord>,
    /// Cluster time of the change.
    pub time_ms: u64,
}

/// Puts a connection of a user online (adding or replacing that
/// connection's entry).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Login {
    /// 1..=128 bytes.
    pub uid: String,
    /// Replaces the record's sid.
    pub sid: u64,
    /// 1..=32 bytes.
    pub client_type: String,
    /// 0..=64 bytes of printable ASCII; "" = the client type's one entry.
    pub connection_id: String,
    /// Replaces the record's permission.
    pub accept_strangers: bool,
    /// Replaces the record's ext when non-empty; at most 4 KiB.
    pub ext: BTreeMap<String, String>,
    /// Heartbeat TTL of this connection; 0 = online until logout; at most
    /// 30 days.
    pub ttl_ms: u64,
}

/// Takes one connection, every connection of a client type, or every
/// connection of a user offline.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Logout {
    /// 1..=128 bytes.
    pub uid: String,
    /// Replaces the record's sid (reason `User` only).
    pub sid: u64,
    /// The client to log out; `None` = every client (reason `User` only).
    pub client_type: Option<String>,
    /// The connection of `client_type` to log out (needs `client_type`);
    /// "" = every connection of that type. An expiry names exactly one
    /// entry: "" is then the type's one entry.
    pub connection_id: String,
    /// Replaces the record's ext when non-empty (reason `User` only).
    pub ext: BTreeMap<String, String>,
    /// Who asked.
    pub reason: LogoutReason,
    /// For `Expired` (required): the `since_ms` of the login being expired.
    /// A client whose login is newer logged in again, and stays online.
    /// Ignored for `User`.
    pub login_since_ms: Option<u64>,
    /// For `Expired` (required): the ownership epoch the owner judged the
    /// TTL under; refused unless it is still the committed one
    /// ([`super::OwnershipEpoch`]). Ignored for `User`.
    #[serde(default)]
    pub owner_epoch: Option<u64>,
}

/// Changes a user's permission (and ext).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Permission {
    /// 1..=128 bytes; the user must have a record.
    pub uid: String,
    /// Replaces the record's sid.
    pub sid: u64,
    /// Replaces the record's permission.
    pub accept_strangers: bool,
    /// Replaces the record's ext when non-empty; at most 4 KiB.
    pub ext: BTreeMap<String, String>,
}

fn check_uid(uid: &str) -> Result<(), StateError> {
    check_uid_named("uid", uid)
}

fn check_client_type(client_type: &str) -> Result<(), StateError> {
    check_len("client_type", client_type, 1, MAX_CLIENT_TYPE_BYTES)
}

impl Login {
    /// Field limits.
    pub fn validate(&self) -> Result<(), StateError> {
        check_uid(&self.uid)?;
        check_client_type(&self.client_type)?;
        check_connection_id("connection_id", &self.connection_id)?;
        check_ext("ext", &self.ext)?;
        check_ttl("ttl_ms", self.ttl_ms)
    }
}

impl Logout {
    /// Field limits; an expiry must name one client and the login it expires.
    pub fn validate(&self) -> Result<(), StateError> {
        check_uid(&self.uid)?;
        if let Some(client_type) = &self.client_type {
            check_client_type(client_type)?;
        }
        check_connection_id("connection_id", &self.connection_id)?;
        if !self.connection_id.is_empty() && self.client_type.is_none() {
            return Err(StateError::invalid(
                "connection_id",
                "needs client_type: a connection is named by its client type and its id",
            ));
        }
        check_ext("ext", &self.ext)?;
        if self.reason == LogoutReason::Expired {
            if self.client_type.is_none() {
                return Err(StateError::invalid(
                    "client_type",
                    "required when the reason is expired",
                ));
            }
            if self.login_since_ms.is_none() {
                return Err(StateError::invalid(
                    "login_since_ms",
                    "required when the reason is expired",
                ));
            }
            if self.owner_epoch.is_none() {
                return Err(StateError::invalid(
                    "owner_epoch",
                    "required when the reason is expired",
                ));
            }
        }
        Ok(())
    }
}

impl Permission {
    /// Field limits.
    pub fn validate(&self) -> Result<(), StateError> {
        check_uid(&self.uid)?;
        check_ext("ext", &self.ext)
    }
}

/// Every presence record and the recent event history.
///
/// BTreeMaps, not HashMaps: a snapshot must serialize to the same bytes on
/// every replica.
///
/// The event history is this replica's cache for watch resume, not part of
/// the snapshot: it is rebuilt from the log applied after the snapshot, and
/// [`Roster::restored`] marks everything before as compacted. Keeping it out
/// makes a snapshot about the records alone (the history was ~90 % of the
/// bytes with 100 000 retained events), which is what made snapshots costly.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub(crate) struct Roster {
    /// Shared pointers, so a snapshot can take a copy of the map under the
    /// state lock in milliseconds and encode it after the lock is released
    /// ([`Roster::snapshot_view`]); a change copies only the record it
    /// touches, and only while a snapshot still holds it.
    records: BTreeMap<Arc<str>, Arc<PresenceRecord>>,
    /// The newest [`EVENT_HISTORY`] events, in revision order.
    #[serde(skip)]
    history: VecDeque<PresenceEvent>,
    /// Revision of the newest event dropped from `history`; 0 = none yet.
    /// Per replica, like the history.
    #[serde(skip)]
    compacted_revision: u64,
    /// Users online per client type (a user with two connections of a type
    /// counts once), kept up to date on every change so metrics never scan
    /// a million records.
    online_by_client: BTreeMap<String, u64>,
    /// Connections online over every user, kept like `online_by_client`.
    connections: u64,
    /// (updated_at_ms, uid) of every offline record, oldest first, so the
    /// presence retention forgets from the front instead of scanning.
    /// Derived from `records` (rebuilt by [`Roster::restored`]).
    #[serde(skip)]
    offline: BTreeSet<(u64, Arc<str>)>,
    /// Bytes the events in `history` account for ([`event_bytes`]), in
    /// all and one by one (in step with `history`).
    #[serde(skip)]
    history_bytes: u64,
    #[serde(skip)]
    history_charges: VecDeque<u64>,
    /// The byte budget of `history` (`quotas.watch_history_bytes`; 0 = the
    /// default), set by the state before each apply.
    #[serde(skip)]
    pub(crate) history_budget: u64,
}

impl Roster {
    pub(crate) fn get(&self, uid: &str) -> Option<&PresenceRecord> {
        self.records.get(uid).map(|r| &**r)
    }

    /// What a snapshot encodes: the records (pointer copies) and counts,
    /// without the watch history. Cheap enough to take under the state lock.
    pub(crate) fn snapshot_view(&self) -> Roster {
        Roster {
            records: self.records.clone(),
            history: VecDeque::new(),
            compacted_revision: 0,
            online_by_client: self.online_by_client.clone(),
            connections: self.connections,
            offline: BTreeSet::new(),
            history_bytes: 0,
            history_charges: VecDeque::new(),
            history_budget: self.history_budget,
        }
    }

    /// After loading a snapshot taken at `last_index`: events up to there
    /// are not kept on this replica (a watch resuming before it is told so).
    pub(crate) fn restored(&mut self, last_index: u64) {
        self.history.clear();
        self.history_charges.clear();
        self.history_bytes = 0;
        self.compacted_revision = self.compacted_revision.max(last_index);
        self.offline = self
            .records
            .iter()
            .filter(|(_, r)| !r.online())
            .map(|(uid, r)| (r.updated_at_ms, Arc::clone(uid)))
            .collect();
    }

    /// Forgets the records of users offline since `now - retention_ms` or
    /// longer (0 = never). Runs before every command, by entry time.
    pub(crate) fn forget_offline(&mut self, now: u64, retention_ms: u64) {
        if retention_ms == 0 {
            return;
        }
        while let Some((updated, _)) = self.offline.first() {
            if updated.saturating_add(retention_ms) > now {
                break;
            }
            if let Some((_, uid)) = self.offline.pop_first() {
                let gone = self.records.remove(&uid);
                debug_assert!(gone.is_some_and(|r| !r.online()));
            }
        }
    }

    /// When the presence retention next forgets a record, if ever.
    pub(crate) fn next_forget(&self, retention_ms: u64) -> Option<u64> {
        if retention_ms == 0 {
            return None;
        }
        let (updated, _) = self.offline.first()?;
        Some(updated.saturating_add(retention_ms))
    }

    /// Keeps the offline index in step with one record's change: `before`
    /// is (online, updated_at_ms) before it, `None` for a new record.
    fn reindex(&mut self, before: Option<(bool, u64)>, after: &PresenceRecord) {
        if let Some((false, updated)) = before {
            self.offline
                .remove(&(updated, Arc::from(after.uid.as_str())));
        }
        if !after.online() {
            self.offline
                .insert((after.updated_at_ms, Arc::from(after.uid.as_str())));
        }
    }

    /// Presence records kept.
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    /// Bytes the watch history accounts for.
    pub(crate) fn history_bytes(&self) -> u64 {
        self.history_bytes
    }

    pub(crate) fn records(&self) -> impl Iterator<Item = &PresenceRecord> {
        self.records.values().map(|r| &**r)
    }

    pub(crate) fn online_counts(&self) -> BTreeMap<String, u64> {
        self.online_by_client.clone()
    }

    /// Connections online over every user.
    pub(crate) fn connection_count(&self) -> u64 {
        self.connections
    }

    /// Whether `cmd` fits the quotas: a new user within `users`, a new
    /// client type within `clients_per_user`, a new connection within
    /// `connections_per_user` (a login of a connection already online
    /// replaces its entry and adds nothing).
    pub(crate) fn admit_login(&self, q: &Quotas, cmd: &Login) -> Result<(), StateError> {
        let Some(r) = self.records.get(cmd.uid.as_str()) else {
            if self.records.len() as u64 >= q.users {
                return Err(over(
                    "users",
                    q.users,
                    format!("{} presence records are kept", self.records.len()),
                ));
            }
            return Ok(());
        };
        if r.connection(&cmd.client_type, &cmd.connection_id).is_some() {
            return Ok(());
        }
        let types = r.client_type_count();
        if !r.has_client_type(&cmd.client_type) && types >= q.clients_per_user as usize {
            return Err(over(
                "clients_per_user",
                q.clients_per_user,
                format!("user {:?} has {types} clients online", cmd.uid),
            ));
        }
        if r.clients.len() >= q.connections_per_user as usize {
            return Err(over(
                "connections_per_user",
                q.connections_per_user,
                format!(
                    "user {:?} has {} connections online",
                    cmd.uid,
                    r.clients.len()
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn login(&mut self, at: Entry, cmd: &Login) -> Arc<PresenceRecord> {
        let ext = (!cmd.ext.is_empty()).then(|| StrMap::from(&cmd.ext));
        // One search for a known user; a key is allocated only for a new one.
        let (after, (was_online, type_was_online)) = match self.records.get_mut(cmd.uid.as_str()) {
            Some(shared) => {
                let before = (shared.online(), shared.updated_at_ms);
                let was_online = login_into(shared, at, cmd, ext);
                let after = Arc::clone(shared);
                if !before.0 {
                    self.reindex(Some(before), &after);
                }
                (after, was_online)
            }
            None => {
                let mut shared = Arc::new(PresenceRecord {
                    uid: cmd.uid.clone(),
                    sid: cmd.sid,
                    clients: VecMap::new(),
                    accept_strangers: cmd.accept_strangers,
                    ext: StrMap::new(),
                    updated_at_ms: 0,
                    revision: 0,
                });
                let was_online = login_into(&mut shared, at, cmd, ext);
                self.records
                    .insert(Arc::from(cmd.uid.as_str()), Arc::clone(&shared));
                (shared, was_online)
            }
        };
        if !type_was_online {
            *self
                .online_by_client
                .entry(cmd.client_type.clone())
                .or_default() += 1;
        }
        if !was_online {
            self.connections += 1;
        }
        let ext_bytes = if cmd.ext.is_empty() {
            0
        } else {
            after.ext.byte_len()
        };
        self.push_event(
            at,
            PresenceEventKind::Login,
            (&cmd.client_type, &cmd.connection_id),
            &after,
            ext_bytes,
        );
        after
    }

    pub(crate) fn logout(
        &mut self,
        at: Entry,
        cmd: &Logout,
    ) -> Result<Arc<PresenceRecord>, StateError> {
        // Check everything first: a refused logout leaves no trace.
        let record = self
            .records
            .get(cmd.uid.as_str())
            .ok_or_else(|| StateError::not_found(format!("user {:?}", cmd.uid)))?;
        let gone: Vec<ConnectionKey> = match (&cmd.client_type, cmd.reason) {
            // An expiry ends exactly one login of exactly one connection.
            (Some(client_type), LogoutReason::Expired) => {
                let client = record
                    .connection(client_type, &cmd.connection_id)
                    .ok_or_else(|| not_online(cmd, client_type))?;
                let expiring = cmd.login_since_ms.unwrap_or(u64::MAX);
                if client.since_ms > expiring {
                    return Err(StateError::precondition(
                        Reason::Stale,
                        format!(
                            "stale expiry: {} of user {:?} logged in again at {}, after the \
                             expired login at {expiring}",
                            connection_name(client_type, &cmd.connection_id),
                            cmd.uid,
                            client.since_ms
                        ),
                    ));
                }
                vec![ConnectionKey::new(client_type, &cmd.connection_id)]
            }
            (Some(client_type), LogoutReason::User) if !cmd.connection_id.is_empty() => {
                record
                    .connection(client_type, &cmd.connection_id)
                    .ok_or_else(|| not_online(cmd, client_type))?;
                vec![ConnectionKey::new(client_type, &cmd.connection_id)]
            }
            (Some(client_type), LogoutReason::User) => {
                let of_type: Vec<ConnectionKey> = record
                    .clients
                    .keys()
                    .filter(|k| &k.client_type == client_type)
                    .cloned()
                    .collect();
                if of_type.is_empty() {
                    return Err(not_online(cmd, client_type));
                }
                of_type
            }
            (None, _) if record.clients.is_empty() => {
                return Err(StateError::not_found(format!(
                    "online client of user {:?}",
                    cmd.uid
                )));
            }
            (None, _) => record.clients.keys().cloned().collect(),
        };

        let Some(shared) = self.records.get_mut(cmd.uid.as_str()) else {
            return Err(StateError::not_found(format!("user {:?}", cmd.uid)));
        };
        let new_ext = (cmd.reason == LogoutReason::User && !cmd.ext.is_empty())
            .then(|| StrMap::from(&cmd.ext));
        let before = (shared.online(), shared.updated_at_ms);
        let ext_bytes = new_ext.as_ref().map_or(0, StrMap::byte_len);
        let record = unshare(shared, new_ext);
        for key in &gone {
            record.clients.remove(key);
        }
        if cmd.reason == LogoutReason::User {
            record.sid = cmd.sid;
        }
        stamp(record, at);
        let after = Arc::clone(shared);
        self.reindex(Some(before), &after);
        self.connections -= gone.len() as u64;
        // `gone` is in key order: each type once, when its last connection
        // went.
        let mut last: Option<&str> = None;
        for key in &gone {
            let t = key.client_type.as_str();
            if last != Some(t) && !after.has_client_type(t) {
                self.count_offline(t);
            }
            last = Some(t);
        }
        let kind = match cmd.reason {
            LogoutReason::User => PresenceEventKind::Logout,
            LogoutReason::Expired => PresenceEventKind::Expired,
        };
        let client_type = cmd.client_type.as_deref().unwrap_or("");
        self.push_event(
            at,
            kind,
            (client_type, &cmd.connection_id),
            &after,
            ext_bytes,
        );
        Ok(after)
    }

    pub(crate) fn permission(
        &mut self,
        at: Entry,
        cmd: &Permission,
    ) -> Result<Arc<PresenceRecord>, StateError> {
        let shared = self
            .records
            .get_mut(cmd.uid.as_str())
            .ok_or_else(|| StateError::not_found(format!("user {:?}", cmd.uid)))?;
        let before = (shared.online(), shared.updated_at_ms);
        let new_ext = (!cmd.ext.is_empty()).then(|| StrMap::from(&cmd.ext));
        let ext_bytes = new_ext.as_ref().map_or(0, StrMap::byte_len);
        let record = unshare(shared, new_ext);
        record.sid = cmd.sid;
        record.accept_strangers = cmd.accept_strangers;
        stamp(record, at);
        let after = Arc::clone(shared);
        if !before.0 {
            self.reindex(Some(before), &after);
        }
        self.push_event(
            at,
            PresenceEventKind::Permission,
            ("", ""),
            &after,
            ext_bytes,
        );
        Ok(after)
    }

    /// Events with `revision >= start` (0 = every retained one), for `uids`
    /// (empty = everyone), in revision order.
    pub(crate) fn events_since(
        &self,
        start: u64,
        uids: &BTreeSet<String>,
    ) -> Result<Vec<PresenceEvent>, StateError> {
        let mut out = Vec::new();
        self.visit_events_since(start, |e| {
            if uids.is_empty() || uids.contains(&e.uid) {
                out.push(e.clone());
            }
        })?;
        Ok(out)
    }

    /// Calls `f` on every event with `revision >= start` (0 = every
    /// retained one), in revision order, without copying them.
    pub(crate) fn visit_events_since(
        &self,
        start: u64,
        mut f: impl FnMut(&PresenceEvent),
    ) -> Result<(), StateError> {
        if start != 0 && start <= self.compacted_revision {
            return Err(StateError::precondition(
                Reason::Compacted,
                format!(
                    "compacted: events up to revision {} are no longer kept, asked for {start}; \
                 resume from {} or later",
                    self.compacted_revision,
                    self.compacted_revision + 1
                ),
            ));
        }
        let from = self.history.partition_point(|e| e.revision < start);
        self.history.range(from..).for_each(&mut f);
        Ok(())
    }

    fn count_offline(&mut self, client_type: &str) {
        if let Some(n) = self.online_by_client.get_mut(client_type) {
            *n -= 1;
            if *n == 0 {
                // Drop zeros so equal states serialize to equal bytes.
                self.online_by_client.remove(client_type);
            }
        } else {
            debug_assert!(
                false,
                "client {client_type} went offline but was not counted"
            );
        }
    }

    fn push_event(
        &mut self,
        at: Entry,
        kind: PresenceEventKind,
        (client_type, connection_id): (&str, &str),
        record: &Arc<PresenceRecord>,
        ext_bytes: usize,
    ) {
        debug_assert!(
            self.history.back().is_none_or(|e| e.revision < at.index),
            "presence history must be in strictly increasing revision order"
        );
        let event = PresenceEvent {
            revision: at.index,
            kind,
            uid: record.uid.clone(),
            client_type: client_type.to_owned(),
            connection_id: connection_id.to_owned(),
            record: Arc::clone(record),
            time_ms: at.time_ms,
        };
        let charge = event_bytes(&event, ext_bytes);
        self.history_bytes += charge;
        self.history_charges.push_back(charge);
        self.history.push_back(event);
        let budget = if self.history_budget == 0 {
            super::Quotas::default().watch_history_bytes
        } else {
            self.history_budget
        };
        while self.history.len() > EVENT_HISTORY || self.history_bytes > budget {
            let Some(dropped) = self.history.pop_front() else {
                break;
            };
            self.compacted_revision = dropped.revision;
            let charged = self.history_charges.pop_front().unwrap_or(0);
            self.history_bytes = self.history_bytes.saturating_sub(charged);
        }
    }

    /// Recomputes what is kept incrementally and compares (tests only: it
    /// scans everything).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        let mut connections = 0;
        for (uid, record) in &self.records {
            assert_eq!(&**uid, record.uid.as_str());
            let mut types = BTreeSet::new();
            for (key, client) in &record.clients {
                assert_eq!(key.client_type, client.client_type);
                assert_eq!(key.connection_id, client.connection_id);
                check_connection_id("connection_id", &key.connection_id)
                    .expect("only valid connection ids are kept");
                types.insert(key.client_type.clone());
                connections += 1;
            }
            assert_eq!(types.len(), record.client_type_count());
            for t in types {
                *counts.entry(t).or_default() += 1;
            }
        }
        assert_eq!(counts, self.online_by_client, "online counts drifted");
        assert_eq!(connections, self.connections, "connection count drifted");
        for pair in self.history.iter().collect::<Vec<_>>().windows(2) {
            assert!(pair[0].revision < pair[1].revision, "history out of order");
        }
        assert!(self.history.len() <= EVENT_HISTORY);
        if let Some(first) = self.history.front() {
            assert!(first.revision > self.compacted_revision);
        }
    }
}

/// What one kept event costs in memory, near enough to bound the history
/// in bytes: the event, its own copy of the record (made when the record
/// changed again; the ext is shared between copies, see [`StrMap`]), its
/// clients, and `ext_bytes` when this change replaced the ext.
fn event_bytes(e: &PresenceEvent, ext_bytes: usize) -> u64 {
    let clients: usize = e
        .record
        .clients
        .values()
        .map(|c| {
            std::mem::size_of::<(ConnectionKey, ClientEntry)>()
                + 2 * (c.client_type.len() + c.connection_id.len())
        })
        .sum();
    (std::mem::size_of::<PresenceEvent>()
        + std::mem::size_of::<PresenceRecord>()
        + 2 * e.uid.len()
        + e.client_type.len()
        + e.connection_id.len()
        + clients
        + ext_bytes
        // Allocator and reference-count headers of the four allocations.
        + 64) as u64
}

/// Applies a login to one record; whether that connection, and whether
/// any connection of its client type, was online already. `ext`, when
/// given, replaces the record's ext.
fn login_into(
    shared: &mut Arc<PresenceRecord>,
    at: Entry,
    cmd: &Login,
    ext: Option<StrMap>,
) -> (bool, bool) {
    let record = unshare(shared, ext);
    let type_was_online = record.has_client_type(&cmd.client_type);
    let entry = ClientEntry {
        client_type: cmd.client_type.clone(),
        connection_id: cmd.connection_id.clone(),
        since_ms: at.time_ms,
        ttl_ms: cmd.ttl_ms,
    };
    let was_online = record
        .clients
        .insert(
            ConnectionKey::new(&cmd.client_type, &cmd.connection_id),
            entry,
        )
        .is_some();
    record.sid = cmd.sid;
    record.accept_strangers = cmd.accept_strangers;
    stamp(record, at);
    (was_online, type_was_online)
}

/// How an error names a connection: `client "pc"` or
/// `connection "phone-2" of client "mobile"`.
fn connection_name(client_type: &str, connection_id: &str) -> String {
    if connection_id.is_empty() {
        format!("client {client_type:?}")
    } else {
        format!("connection {connection_id:?} of client {client_type:?}")
    }
}

/// The refusal of a logout of a connection (or client type) not online.
fn not_online(cmd: &Logout, client_type: &str) -> StateError {
    StateError::not_found(format!(
        "{} of user {:?}",
        connection_name(client_type, &cmd.connection_id),
        cmd.uid
    ))
}

/// The record behind `shared`, for changing, with `new_ext` (when given)
/// as its ext: copied first when something else holds it (the event
/// history, a snapshot being written), like `Arc::make_mut`, except that an
/// ext about to be replaced is not copied.
fn unshare(shared: &mut Arc<PresenceRecord>, new_ext: Option<StrMap>) -> &mut PresenceRecord {
    if Arc::get_mut(shared).is_none() {
        let old = &**shared;
        let copy = PresenceRecord {
            uid: old.uid.clone(),
            sid: old.sid,
            clients: old.clients.clone(),
            accept_strangers: old.accept_strangers,
            ext: if new_ext.is_some() {
                StrMap::new()
            } else {
                old.ext.clone()
            },
            updated_at_ms: old.updated_at_ms,
            revision: old.revision,
        };
        *shared = Arc::new(copy);
    }
    let record = Arc::get_mut(shared).expect("made unique above");
    if let Some(ext) = new_ext {
        record.ext = ext;
    }
    record
}

/// Marks `record` as changed by the entry `at`.
fn stamp(record: &mut PresenceRecord, at: Entry) {
    debug_assert!(
        record.revision < at.index,
        "a record's revision must strictly increase"
    );
    record.revision = at.index;
    record.updated_at_ms = at.time_ms;
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::super::tests::Harness;
    use super::super::{Command, Response, State, StateError};
    use super::*;

    fn login(uid: &str, client_type: &str) -> Command {
        Command::Login(Login {
            uid: uid.into(),
            sid: 7,
            client_type: client_type.into(),
            connection_id: String::new(),
            accept_strangers: true,
            ext: BTreeMap::new(),
            ttl_ms: 0,
        })
    }

    fn logout(uid: &str, client_type: Option<&str>) -> Command {
        Command::Logout(Logout {
            uid: uid.into(),
            sid: 7,
            client_type: client_type.map(Into::into),
            connection_id: String::new(),
            ext: BTreeMap::new(),
            reason: LogoutReason::User,
            login_since_ms: None,
            owner_epoch: None,
        })
    }

    fn expire(uid: &str, client_type: &str, login_since_ms: u64) -> Command {
        Command::Logout(Logout {
            uid: uid.into(),
            sid: 0,
            client_type: Some(client_type.into()),
            connection_id: String::new(),
            ext: BTreeMap::new(),
            reason: LogoutReason::Expired,
            login_since_ms: Some(login_since_ms),
            owner_epoch: Some(0),
        })
    }

    fn login_on(uid: &str, client_type: &str, conn: &str, ttl_ms: u64) -> Command {
        Command::Login(Login {
            uid: uid.into(),
            sid: 7,
            client_type: client_type.into(),
            connection_id: conn.into(),
            accept_strangers: true,
            ext: BTreeMap::new(),
            ttl_ms,
        })
    }

    fn logout_of(uid: &str, client_type: Option<&str>, conn: &str) -> Command {
        let Command::Logout(mut cmd) = logout(uid, client_type) else {
            unreachable!()
        };
        cmd.connection_id = conn.into();
        Command::Logout(cmd)
    }

    fn expire_of(uid: &str, client_type: &str, conn: &str, login_since_ms: u64) -> Command {
        let Command::Logout(mut cmd) = expire(uid, client_type, login_since_ms) else {
            unreachable!()
        };
        cmd.connection_id = conn.into();
        Command::Logout(cmd)
    }

    /// (client type, connection id) of every online entry, in order.
    fn conns(r: &PresenceRecord) -> Vec<(&str, &str)> {
        r.clients
            .keys()
            .map(|k| (k.client_type.as_str(), k.connection_id.as_str()))
            .collect()
    }

    fn record(r: Response) -> PresenceRecord {
        match r {
            Response::Presence(p) => Arc::unwrap_or_clone(p),
            other => panic!("expected a presence record, got {other:?}"),
        }
    }

    fn invalid_field(e: StateError) -> String {
        match e {
            StateError::InvalidArgument { field, .. } => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    /// Records are shared with the event history; a change must copy, not
    /// edit, the record an earlier event holds.
    #[test]
    fn events_keep_the_record_as_it_was_at_their_revision() {
        let mut h = Harness::new();
        let ext = |v: &str| BTreeMap::from([("k".to_string(), v.to_string())]);
        let Command::Login(mut first) = login("alice", "pc") else {
            unreachable!()
        };
        first.ext = ext("1");
        h.ok(Command::Login(first));
        h.ok(Command::Permission(Permission {
            uid: "alice".into(),
            sid: 8,
            accept_strangers: false,
            ext: ext("2"),
        }));
        h.ok(login("alice", "mobile"));
        let Command::Logout(mut bye) = logout("alice", Some("pc")) else {
            unreachable!()
        };
        bye.ext = ext("3");
        h.ok(Command::Logout(bye));
        let events = h.state.presence_events_since(0, &BTreeSet::new()).unwrap();
        let seen: Vec<(u64, bool, Vec<&str>, Option<&str>)> = events
            .iter()
            .map(|e| {
                let r = &e.record;
                (
                    r.sid,
                    r.accept_strangers,
                    r.clients.keys().map(|k| k.client_type.as_str()).collect(),
                    r.ext.get("k"),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (7, true, vec!["pc"], Some("1")),
                (8, false, vec!["pc"], Some("2")),
                (7, true, vec!["mobile", "pc"], Some("2")),
                (7, true, vec!["mobile"], Some("3")),
            ]
        );
        for e in &events {
            assert_eq!(e.record.revision, e.revision);
        }
        assert_eq!(*h.state.presence("alice").unwrap(), *events[3].record);
    }

    #[test]
    fn login_adds_clients_and_logout_removes_them() {
        let mut h = Harness::new();
        let r = record(h.ok(login("alice", "pc")));
        assert!(r.online());
        assert_eq!(r.revision, h.index);
        assert_eq!(r.connection("pc", "").unwrap().since_ms, h.time_ms);
        let r = record(h.ok(login("alice", "mobile")));
        assert_eq!(r.clients.len(), 2);
        assert_eq!(
            h.state.online_counts(),
            BTreeMap::from([("mobile".into(), 1), ("pc".into(), 1)])
        );
        let r = record(h.ok(logout("alice", Some("pc"))));
        assert!(r.online());
        assert!(!r.has_client_type("pc"));
        let r = record(h.ok(logout("alice", None)));
        assert!(!r.online());
        // Offline users keep their record.
        assert_eq!(h.state.presence("alice").map(|p| p.online()), Some(false));
        assert!(h.state.online_counts().is_empty());
    }

    /// Issue 18: a user's two phones are two entries; logging out one
    /// keeps the other; a type-only logout takes both; "" is the old
    /// one-entry-per-type behaviour beside them.
    #[test]
    fn two_connections_of_one_type_stay_separate() {
        let mut h = Harness::new();
        let first = record(h.ok(login_on("alice", "mobile", "phone-1", 0)));
        let at_first = h.time_ms;
        h.advance(10);
        let r = record(h.ok(login_on("alice", "mobile", "phone-2", 5_000)));
        assert_eq!(conns(&first), [("mobile", "phone-1")]);
        assert_eq!(conns(&r), [("mobile", "phone-1"), ("mobile", "phone-2")]);
        assert_eq!(
            r.connection("mobile", "phone-1").unwrap().since_ms,
            at_first
        );
        assert_eq!(r.connection("mobile", "phone-2").unwrap().ttl_ms, 5_000);
        // One user with a mobile online, two connections.
        assert_eq!(h.state.online_counts()["mobile"], 1);
        assert_eq!(h.state.connection_count(), 2);
        h.ok(login("alice", "pc"));
        assert_eq!(h.state.connection_count(), 3);

        let r = record(h.ok(logout_of("alice", Some("mobile"), "phone-1")));
        assert_eq!(conns(&r), [("mobile", "phone-2"), ("pc", "")]);
        assert_eq!(h.state.online_counts()["mobile"], 1);
        let events = h.state.presence_events_since(0, &BTreeSet::new()).unwrap();
        let last = events.last().unwrap();
        assert_eq!(
            (last.client_type.as_str(), last.connection_id.as_str()),
            ("mobile", "phone-1")
        );
        assert!(matches!(
            h.err(logout_of("alice", Some("mobile"), "phone-1")),
            StateError::NotFound { .. }
        ));
        // The same connection id under another type is another connection.
        h.ok(login_on("alice", "web", "phone-2", 0));
        let r = record(h.ok(logout_of("alice", Some("mobile"), "")));
        assert_eq!(conns(&r), [("pc", ""), ("web", "phone-2")]);
        assert!(!h.state.online_counts().contains_key("mobile"));
        let r = record(h.ok(logout_of("alice", None, "")));
        assert!(!r.online());
        assert_eq!(h.state.connection_count(), 0);
        h.state.roster.check_invariants();
    }

    /// Each connection has its own login, so an expiry names that login:
    /// it ends only its own connection, and never a newer login of it.
    #[test]
    fn ttl_and_expiry_are_per_connection() {
        let mut h = Harness::new();
        h.ok(login_on("bob", "mobile", "a", 1_000));
        let a_since = h.time_ms;
        h.advance(500);
        h.ok(login_on("bob", "mobile", "b", 1_000));
        let b_since = h.time_ms;
        h.advance(600);
        let r = record(h.ok(expire_of("bob", "mobile", "a", a_since)));
        assert_eq!(conns(&r), [("mobile", "b")]);
        let events = h.state.presence_events_since(0, &BTreeSet::new()).unwrap();
        let last = events.last().unwrap();
        assert_eq!(last.kind, PresenceEventKind::Expired);
        assert_eq!(last.connection_id, "a");
        // An expiry of connection a (gone) or of the type's "" entry (never
        // online) finds nothing; b stays.
        assert!(matches!(
            h.err(expire_of("bob", "mobile", "a", a_since)),
            StateError::NotFound { .. }
        ));
        assert!(matches!(
            h.err(expire_of("bob", "mobile", "", b_since)),
            StateError::NotFound { .. }
        ));
        // b logs in again before its expiry lands: the stale expiry of its
        // older login is refused, whatever the other connections do.
        h.advance(100);
        h.ok(login_on("bob", "mobile", "b", 1_000));
        let e = h.err(expire_of("bob", "mobile", "b", b_since));
        assert!(matches!(&e, StateError::FailedPrecondition { .. }), "{e:?}");
        assert!(
            e.to_string()
                .contains("stale expiry: connection \"b\" of client \"mobile\""),
            "{e}"
        );
        assert_eq!(conns(h.state.presence("bob").unwrap()), [("mobile", "b")]);
        let since = h
            .state
            .presence("bob")
            .unwrap()
            .connection("mobile", "b")
            .unwrap()
            .since_ms;
        assert!(!record(h.ok(expire_of("bob", "mobile", "b", since))).online());
    }

    #[test]
    fn connection_ids_are_validated_in_every_command() {
        let mut h = Harness::new();
        assert_eq!(
            invalid_field(h.err(login_on("a", "pc", &"c".repeat(65), 0))),
            "connection_id"
        );
        assert_eq!(
            invalid_field(h.err(login_on("a", "pc", "tab\t1", 0))),
            "connection_id"
        );
        h.ok(login_on("a", "pc", &"c".repeat(64), 0));
        assert_eq!(
            invalid_field(h.err(logout_of("a", Some("pc"), "\u{7f}"))),
            "connection_id"
        );
        // A connection is named by its type and its id.
        assert_eq!(
            invalid_field(h.err(logout_of("a", None, "c1"))),
            "connection_id"
        );
        assert_eq!(
            invalid_field(h.err(expire_of("a", "pc", &"é".repeat(3), 1))),
            "connection_id"
        );
    }

    #[test]
    fn login_replaces_the_client_entry_and_keeps_ext_when_empty() {
        let mut h = Harness::new();
        let mut cmd = Login {
            uid: "bob".into(),
            sid: 1,
            client_type: "tv".into(),
            connection_id: String::new(),
            accept_strangers: false,
            ext: BTreeMap::from([("city".into(), "Xi'an".into())]),
            ttl_ms: 5000,
        };
        h.ok(Command::Login(cmd.clone()));
        h.advance(100);
        cmd.ext.clear();
        cmd.sid = 2;
        cmd.ttl_ms = 0;
        let r = record(h.ok(Command::Login(cmd)));
        assert_eq!(r.sid, 2);
        assert_eq!(r.ext.get("city"), Some("Xi'an"));
        assert_eq!(r.connection("tv", "").unwrap().ttl_ms, 0);
        assert_eq!(r.connection("tv", "").unwrap().since_ms, h.time_ms);
        assert_eq!(h.state.online_counts()["tv"], 1);
    }

    #[test]
    fn unknown_user_or_client_is_not_found() {
        let mut h = Harness::new();
        assert!(matches!(
            h.err(logout("nobody", None)),
            StateError::NotFound { .. }
        ));
        h.ok(login("alice", "pc"));
        assert!(matches!(
            h.err(logout("alice", Some("web"))),
            StateError::NotFound { .. }
        ));
        h.ok(logout("alice", None));
        assert!(matches!(
            h.err(logout("alice", None)),
            StateError::NotFound { .. }
        ));
        let perm = Command::Permission(Permission {
            uid: "nobody".into(),
            sid: 1,
            accept_strangers: false,
            ext: BTreeMap::new(),
        });
        assert!(matches!(h.err(perm), StateError::NotFound { .. }));
    }

    #[test]
    fn permission_changes_flag_sid_and_ext() {
        let mut h = Harness::new();
        h.ok(login("alice", "pc"));
        let r = record(h.ok(Command::Permission(Permission {
            uid: "alice".into(),
            sid: 99,
            accept_strangers: false,
            ext: BTreeMap::from([("k".into(), "v".into())]),
        })));
        assert!(!r.accept_strangers);
        assert_eq!(r.sid, 99);
        assert_eq!(r.ext.get("k"), Some("v"));
        assert!(r.online());
    }

    #[test]
    fn expiry_of_an_older_login_is_stale() {
        let mut h = Harness::new();
        h.ok(login("alice", "pc"));
        let first = h.time_ms;
        h.advance(1000);
        h.ok(login("alice", "pc")); // logged in again before the expiry landed
        let e = h.err(expire("alice", "pc", first));
        assert!(e.to_string().starts_with("stale expiry"), "{e}");
        let r = record(h.ok(expire("alice", "pc", h.time_ms)));
        assert!(!r.online());
        let events = h.state.presence_events_since(0, &BTreeSet::new()).unwrap();
        assert_eq!(
            events.last().map(|e| e.kind),
            Some(PresenceEventKind::Expired)
        );
    }

    #[test]
    fn expiry_must_name_client_and_login() {
        let mut h = Harness::new();
        h.ok(login("alice", "pc"));
        let mut cmd = Logout {
            uid: "alice".into(),
            sid: 0,
            client_type: None,
            connection_id: String::new(),
            ext: BTreeMap::new(),
            reason: LogoutReason::Expired,
            login_since_ms: Some(1),
            owner_epoch: Some(0),
        };
        assert_eq!(
            invalid_field(h.err(Command::Logout(cmd.clone()))),
            "client_type"
        );
        cmd.client_type = Some("pc".into());
        cmd.login_since_ms = None;
        assert_eq!(
            invalid_field(h.err(Command::Logout(cmd.clone()))),
            "login_since_ms"
        );
        cmd.login_since_ms = Some(1);
        cmd.owner_epoch = None;
        assert_eq!(invalid_field(h.err(Command::Logout(cmd))), "owner_epoch");
    }

    #[test]
    fn validation_names_the_field() {
        let mut h = Harness::new();
        let e = h.err(login(&"u".repeat(129), "pc"));
        assert_eq!(
            e.to_string(),
            "uid: must be 1..=128 bytes of UTF-8, got 129"
        );
        assert_eq!(invalid_field(h.err(login("", "pc"))), "uid");
        assert_eq!(invalid_field(h.err(login("a", ""))), "client_type");
        assert_eq!(
            invalid_field(h.err(login("a", &"c".repeat(33)))),
            "client_type"
        );
        h.ok(login("a", &"c".repeat(32)));
        let mut big = Login {
            uid: "a".into(),
            sid: 0,
            client_type: "pc".into(),
            connection_id: String::new(),
            accept_strangers: false,
            ext: BTreeMap::from([("k".into(), "v".repeat(4096))]),
            ttl_ms: 0,
        };
        assert_eq!(invalid_field(h.err(Command::Login(big.clone()))), "ext");
        big.ext = BTreeMap::new();
        big.ttl_ms = super::super::limits::MAX_TTL_MS + 1;
        assert_eq!(invalid_field(h.err(Command::Login(big))), "ttl_ms");
        let perm = Permission {
            uid: "a".into(),
            sid: 0,
            accept_strangers: false,
            ext: BTreeMap::from([("k".repeat(4097), String::new())]),
        };
        assert_eq!(invalid_field(h.err(Command::Permission(perm))), "ext");
        assert_eq!(
            invalid_field(h.err(logout("a", Some(&"c".repeat(33))))),
            "client_type"
        );
    }

    #[test]
    fn events_are_filtered_and_resumable() {
        let mut h = Harness::new();
        h.ok(login("a", "pc"));
        let second = h.index + 1;
        h.ok(login("b", "pc"));
        h.ok(logout("a", None));
        let all = h.state.presence_events_since(0, &BTreeSet::new()).unwrap();
        assert_eq!(all.len(), 3);
        assert!(all.windows(2).all(|w| w[0].revision < w[1].revision));
        assert_eq!(all[2].kind, PresenceEventKind::Logout);
        assert!(!all[2].record.online());
        let from = h
            .state
            .presence_events_since(second, &BTreeSet::new())
            .unwrap();
        assert_eq!(from.len(), 2);
        assert_eq!(from[0].uid, "b");
        let only_a = h
            .state
            .presence_events_since(0, &BTreeSet::from(["a".to_string()]))
            .unwrap();
        assert_eq!(only_a.len(), 2);
        assert!(only_a.iter().all(|e| e.uid == "a"));
        assert!(
            h.state
                .presence_events_since(h.index + 1, &BTreeSet::new())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn history_is_bounded_and_reports_compaction() {
        // Straight to State::apply: the harness's per-step checks would make
        // this quadratic.
        let mut state = State::default();
        let total = EVENT_HISTORY as u64 + 5;
        for index in 1..=total {
            let entry = Entry {
                index,
                time_ms: index,
            };
            let client = if index % 2 == 0 { "pc" } else { "web" };
            state.apply(entry, &login("u", client)).unwrap();
        }
        let all = state.presence_events_since(0, &BTreeSet::new()).unwrap();
        assert_eq!(all.len(), EVENT_HISTORY);
        assert_eq!(all[0].revision, 6);
        let e = state
            .presence_events_since(5, &BTreeSet::new())
            .unwrap_err();
        assert!(
            matches!(&e, StateError::FailedPrecondition { reason, .. } if reason.starts_with("compacted") && reason.contains("revision 5")),
            "{e}"
        );
        assert_eq!(
            state
                .presence_events_since(6, &BTreeSet::new())
                .unwrap()
                .len(),
            EVENT_HISTORY
        );
        state.roster.check_invariants();
    }
}
