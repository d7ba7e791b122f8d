//! Herald's replicated state machine: presence, session progress and
//! temporary-account pools, as every replica holds them.
//!
//! This module owns the *meaning* of every write. Raft (in `crate::raft`)
//! decides the order of commands; [`State::apply`] turns each committed
//! `(Entry, Command)` into a new state and a [`Response`]. It is pure, like
//! ntpd-rs's protocol crate: no I/O, no clock, no randomness, no hash-order
//! iteration. Time comes from the entry (the leader's cluster time, clamped
//! so it never goes back), randomness (lease passwords and secrets) is made
//! by the serving node before it proposes, and only hashed. So every replica computes byte-identical state
//! from the same log, a snapshot is just this struct in bincode, and tests
//! and the chaos checker can replay any history.
//!
//! A command is checked twice with the same code: [`Command::validate`]
//! before it is proposed (so bad requests never reach the log) and again in
//! `apply` (so a bad entry from a buggy or older peer is rejected the same
//! way everywhere). A rejected command changes nothing; the time-driven work
//! of its entry (clock, lease expiry) still happens, exactly as for a
//! [`Command::Tick`].

pub mod accounts;
pub mod auth;
mod error;
mod history;
pub mod limits;
pub mod link;
pub mod members;
pub mod ownership;
pub mod presence;
pub mod quotas;
pub mod sessions;
pub mod share;
#[cfg(test)]
mod tests;
pub mod vecmap;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use accounts::{
    AccessPolicy, ContentUnits, ContentView, CreatePlatform, CreatePool, DeletePlatform,
    DeletePool, KdfHash, Lease, LeaseAccount, LoginOutcome, PasswordHash, Platform, PoolView,
    PutAccountData, RegisterAccount, RegisteredAccount, RegisteredLogin, ReleaseLease,
    RemoveAccount, RemoveContent, RenewLease, SecretHash, SetContentUnits, Unit, UnitShown,
    UnitSpec, check_password, lease_secret_hash,
};
pub use auth::{Auth, AuthCommand, AuthOutcome, Role};
pub use error::{Reason, StateError};
pub use limits::MAX_BATCH;
pub use link::{
    CatalogView, CountEvent, CountKind, CreateCatalog, Cursor, ItemView, LinkCommand, LinkOutcome,
    LinkPage, LinkQuery, LinkRule, LinkSide, LinkSource, PutItem, RankBy,
};
pub use members::{Incarnations, RecordIncarnation};
pub use ownership::{OwnershipEpoch, SetOwnership};
pub use presence::{
    ClientEntry, ConnectionKey, Login, Logout, LogoutReason, Permission, PresenceEvent,
    PresenceEventKind, PresenceRecord,
};
pub use quotas::Quotas;
pub use sessions::{
    AcceptHandoff, Bind, Candidate, Connect, DeleteSession, Handoff, HandoffMode, HandoffOutcome,
    Offer, OfferHandoff, Progress, Session, SessionEvent, SessionEventKind, Terminal, TerminalKind,
    Unbind, WorkEvent, WorkLogEntry,
};

pub use share::{MediaShare, MediaShares, ShareCommand, ShareOutcome, StorageServer};

use accounts::AccountPools;
use link::Linked;
use presence::Roster;
use sessions::Sessions;

/// Where a command sits in the log: its Raft index and the leader's cluster
/// time when it was proposed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Raft log index; strictly increases from one apply to the next.
    pub index: u64,
    /// Leader's cluster time (ms since the Unix epoch).
    pub time_ms: u64,
}

/// A write, as proposed to Raft. Each variant's payload documents its fields
/// and limits and has its own `validate`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Presence: a client logs in.
    Login(Login),
    /// Presence: one or every client logs out, or a TTL expired.
    Logout(Logout),
    /// Presence: permission (and ext) change.
    Permission(Permission),
    /// Sessions: a terminal connects to an application.
    Connect(Connect),
    /// Sessions: the holder records progress.
    Progress(Progress),
    /// Sessions: bind two terminals.
    Bind(Bind),
    /// Sessions: move a session to another terminal.
    Handoff(Handoff),
    /// Accounts: create a platform and its units.
    CreatePlatform(CreatePlatform),
    /// Accounts: create a pool of temporary accounts.
    CreatePool(CreatePool),
    /// Accounts: lease an account.
    Lease(LeaseAccount),
    /// Accounts: extend a lease.
    Renew(RenewLease),
    /// Accounts: end a lease early.
    Release(ReleaseLease),
    /// Accounts: store data on a leased account.
    PutAccountData(PutAccountData),
    /// Auth: users, roles, tokens and enforcement.
    Auth(AuthCommand),
    /// Members: the incarnation of a member, as the leader first met it.
    RecordIncarnation(RecordIncarnation),
    /// Ownership: the leader's agreed ring for TTL users (a new epoch).
    SetOwnership(SetOwnership),
    /// Nothing but the passing of time: the leader proposes one when a lease
    /// is due ([`State::next_due`]) so expiry and retention happen without
    /// waiting for other writes.
    Tick,
    /// Quotas: the leader's `[quotas]`, written when they differ from the
    /// replicated ones.
    SetQuotas(Quotas),
    /// Accounts: delete a platform and its units.
    DeletePlatform(DeletePlatform),
    /// Accounts: delete a pool and its accounts.
    DeletePool(DeletePool),
    /// Sessions: delete a session and its work log.
    DeleteSession(DeleteSession),
    /// Sessions: remove a terminal's binding.
    Unbind(Unbind),
    /// Sessions: the holder offers its session to one terminal.
    OfferHandoff(OfferHandoff),
    /// Sessions: the offered terminal confirms its capabilities.
    AcceptHandoff(AcceptHandoff),
    /// Accounts: register a viewer's own account in a unit, or set its
    /// password.
    RegisterAccount(RegisterAccount),
    /// Accounts: remove a registered account.
    RemoveAccount(RemoveAccount),
    /// Accounts: tag a content id with the units it shows.
    SetContentUnits(SetContentUnits),
    /// Accounts: remove a content's tag.
    RemoveContent(RemoveContent),
    /// Media sharing: storage servers, friendships, shares and access.
    Share(ShareCommand),
    /// Linked catalogs: catalogs, items, link rules and counts.
    Link(LinkCommand),
}

impl Command {
    /// Stateless field checks (limits and formats). Called before proposing
    /// and again inside [`State::apply`].
    pub fn validate(&self) -> Result<(), StateError> {
        match self {
            Command::Login(c) => c.validate(),
            Command::Logout(c) => c.validate(),
            Command::Permission(c) => c.validate(),
            Command::Connect(c) => c.validate(),
            Command::Progress(c) => c.validate(),
            Command::Bind(c) => c.validate(),
            Command::Handoff(c) => c.validate(),
            Command::CreatePlatform(c) => c.validate(),
            Command::CreatePool(c) => c.validate(),
            Command::Lease(c) => c.validate(),
            Command::Renew(c) => c.validate(),
            Command::Release(c) => c.validate(),
            Command::PutAccountData(c) => c.validate(),
            Command::Auth(c) => c.validate(),
            Command::RecordIncarnation(c) => c.validate(),
            Command::SetOwnership(c) => c.validate(),
            Command::Tick => Ok(()),
            Command::SetQuotas(q) => q.validate().map_err(StateError::from),
            Command::DeletePlatform(_) | Command::DeletePool(_) | Command::DeleteSession(_) => {
                Ok(())
            }
            Command::Unbind(c) => c.validate(),
            Command::OfferHandoff(c) => c.validate(),
            Command::AcceptHandoff(c) => c.validate(),
            Command::RegisterAccount(c) => c.validate(),
            Command::RemoveAccount(c) => c.validate(),
            Command::SetContentUnits(c) => c.validate(),
            Command::RemoveContent(c) => c.validate(),
            Command::Share(c) => c.validate(),
            Command::Link(c) => c.validate(),
        }
    }
}

/// What an applied command answers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// Login, Logout, Permission: the record after the change.
    Presence(Arc<PresenceRecord>),
    /// Connect, Progress: the session after the change.
    Session(Session),
    /// Handoff: accepted or refused.
    Handoff(HandoffOutcome),
    /// Bind.
    Bound,
    /// Unbind: the terminal the other side was bound to.
    Unbound(Terminal),
    /// CreatePlatform: the platform with its ids.
    Platform(Platform),
    /// CreatePool: the new pool.
    Pool(PoolView),
    /// Lease (`replayed` when the request id matched an active lease) and
    /// Renew (`replayed` false).
    Lease {
        /// The lease.
        lease: Lease,
        /// True when this answers a retry of an earlier request.
        replayed: bool,
    },
    /// Auth commands.
    Auth(AuthOutcome),
    /// Release, PutAccountData, SetOwnership, Tick.
    Done,
    /// Media sharing commands.
    Share(ShareOutcome),
    /// Link commands.
    Link(LinkOutcome),
}

/// The whole replicated state. Snapshots are this struct in bincode
/// ([`State::to_snapshot`]), less the per-replica watch history.
///
/// Every collection is ordered (BTreeMap/BTreeSet), so equal states
/// serialize to equal bytes on every replica.
#[derive(Default, Serialize, Deserialize, Clone, Debug)]
pub struct State {
    last_index: u64,
    now_ms: u64,
    roster: Roster,
    sessions: Sessions,
    accounts: AccountPools,
    auth: Auth,
    incarnations: Incarnations,
    quotas: Quotas,
    /// The agreed TTL ownership ring.
    #[serde(default)]
    ownership: OwnershipEpoch,
    /// Media sharing (P-share).
    #[serde(default)]
    share: MediaShares,
    /// Linked catalogs (P-link).
    link: Linked,
}

/// [`State`] as snapshots before the quotas and the ownership epoch held it.
#[derive(Deserialize)]
struct StateBeforeOwnership {
    last_index: u64,
    now_ms: u64,
    roster: Roster,
    sessions: Sessions,
    accounts: AccountPools,
    auth: Auth,
    incarnations: Incarnations,
}

impl From<StateBeforeOwnership> for State {
    fn from(old: StateBeforeOwnership) -> State {
        State {
            last_index: old.last_index,
            now_ms: old.now_ms,
            roster: old.roster,
            sessions: old.sessions,
            accounts: old.accounts,
            auth: old.auth,
            incarnations: old.incarnations,
            ownership: OwnershipEpoch::default(),
            quotas: Quotas::default(),
            share: MediaShares::default(),
            link: Linked::default(),
        }
    }
}

impl State {
    /// Decodes a snapshot made by [`State::to_snapshot`].
    /// Snapshots from before the ownership epoch (bincode has no field
    /// defaults) decode with epoch 0, every voter on the ring.
    pub fn from_snapshot(bytes: &[u8]) -> bincode::Result<State> {
        let mut state: State = match bincode::deserialize(bytes) {
            Ok(state) => state,
            Err(e) => match bincode::deserialize::<StateBeforeOwnership>(bytes) {
                Ok(old) => old.into(),
                Err(_) => return Err(e),
            },
        };
        state.roster.restored(state.last_index);
        state.roster.history_budget = state.quotas.watch_history_bytes;
        state.sessions.restored(state.last_index);
        state.sessions.history_budget = state.quotas.watch_history_bytes;
        state.link.restored();
        Ok(state)
    }

    /// A copy of everything a snapshot holds, made in milliseconds even with
    /// a million users (records are shared pointers), so a snapshot can be
    /// encoded from it without holding the state lock.
    pub fn snapshot_view(&self) -> State {
        State {
            last_index: self.last_index,
            now_ms: self.now_ms,
            roster: self.roster.snapshot_view(),
            sessions: self.sessions.snapshot_view(),
            accounts: self.accounts.clone(),
            auth: self.auth.clone(),
            incarnations: self.incarnations.clone(),
            quotas: self.quotas.clone(),
            ownership: self.ownership.clone(),
            share: self.share.clone(),
            link: self.link.snapshot_view(),
        }
    }

    /// Whether `cmd` may be proposed now: its field limits
    /// ([`Command::validate`]) and the quotas, against this state. The
    /// leader calls it before proposing, so a command over a quota never
    /// reaches the log; `apply` calls it again, so two that raced past the
    /// first check cannot both land.
    pub fn admit(&self, cmd: &Command) -> Result<(), StateError> {
        cmd.validate()?;
        let q = &self.quotas;
        match cmd {
            Command::Login(c) => self.roster.admit_login(q, c),
            Command::Connect(c) => self.sessions.admit_connect(q, c),
            Command::Bind(c) => self.sessions.admit_bind(q, c),
            Command::CreatePlatform(c) => self.accounts.admit_platform(q, c),
            Command::CreatePool(c) => self.accounts.admit_pool(q, c),
            Command::Lease(c) => self.accounts.admit_lease(q, c),
            Command::PutAccountData(c) => self.accounts.admit_data(q, c),
            Command::RegisterAccount(c) => self.accounts.admit_register(q, c),
            Command::SetContentUnits(c) => self.accounts.admit_content(q, c),
            Command::Share(c) => self.share.admit(q, c),
            Command::Link(c) => self.link.admit(q, c),
            _ => Ok(()),
        }
    }

    /// The quotas the cluster enforces now.
    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    /// Records kept, by kind (for metrics and status).
    pub fn counts(&self) -> RecordCounts {
        RecordCounts {
            users: self.roster.len() as u64,
            sessions: self.sessions.len() as u64,
            accounts: self.accounts.account_count() as u64,
            registered_accounts: self.accounts.registered_count() as u64,
            contents: self.accounts.content_count() as u64,
            watch_history_bytes: self.roster.history_bytes() + self.sessions.history_bytes(),
        }
    }

    /// The snapshot form of the state: everything replicated, in bincode;
    /// not the watch history, which each replica keeps for itself.
    pub fn to_snapshot(&self) -> bincode::Result<Vec<u8>> {
        bincode::serialize(self)
    }

    /// Applies one committed command. `Err` = rejected, and the state is
    /// exactly as before (nothing half-applied) except for what the entry
    /// itself does to every state, as a [`Command::Tick`] would: the clock
    /// and last index advance and due leases expire.
    pub fn apply(&mut self, entry: Entry, cmd: &Command) -> Result<Response, StateError> {
        debug_assert!(
            entry.index > self.last_index,
            "entry {} applied after entry {}",
            entry.index,
            self.last_index
        );
        self.last_index = entry.index;
        // A new leader's clock may be a little behind the old one's; cluster
        // time never goes back.
        self.now_ms = self.now_ms.max(entry.time_ms);
        let at = Entry {
            index: entry.index,
            time_ms: self.now_ms,
        };
        self.accounts.expire_due(at.time_ms);
        self.share.expire_due(at.time_ms);
        self.link.forget_due(at.time_ms);
        self.roster.history_budget = self.quotas.watch_history_bytes;
        self.sessions.history_budget = self.quotas.watch_history_bytes;
        self.sessions
            .forget_idle(at, self.quotas.session_retention_ms);
        self.roster
            .forget_offline(at.time_ms, self.quotas.presence_retention_ms);
        self.admit(cmd)?;
        match cmd {
            Command::Login(c) => Ok(Response::Presence(self.roster.login(at, c))),
            Command::Logout(c) => {
                if c.reason == LogoutReason::Expired {
                    self.ownership.check_expiry(c.owner_epoch)?;
                }
                self.roster.logout(at, c).map(Response::Presence)
            }
            Command::Permission(c) => self.roster.permission(at, c).map(Response::Presence),
            Command::Connect(c) => Ok(Response::Session(self.sessions.connect(at, c))),
            Command::Progress(c) => self.sessions.progress(at, c).map(Response::Session),
            Command::Bind(c) => {
                self.sessions.bind(at, c);
                Ok(Response::Bound)
            }
            Command::Handoff(c) => self.sessions.handoff(at, c).map(Response::Handoff),
            Command::CreatePlatform(c) => self.accounts.create_platform(c).map(Response::Platform),
            Command::CreatePool(c) => self.accounts.create_pool(c).map(Response::Pool),
            Command::Lease(c) => self
                .accounts
                .lease(at, c)
                .map(|(lease, replayed)| Response::Lease { lease, replayed }),
            Command::Renew(c) => self.accounts.renew(at, c).map(|lease| Response::Lease {
                lease,
                replayed: false,
            }),
            Command::Release(c) => self.accounts.release(at, c).map(|()| Response::Done),
            Command::PutAccountData(c) => self.accounts.put_data(c).map(|()| Response::Done),
            Command::Auth(c) => self.auth.apply(at, c).map(Response::Auth),
            Command::RecordIncarnation(c) => self.incarnations.record(c).map(|()| Response::Done),
            Command::SetOwnership(c) => self.ownership.set(at, c).map(|()| Response::Done),
            Command::Tick => Ok(Response::Done),
            Command::SetQuotas(q) => {
                self.quotas = q.clone();
                self.roster.history_budget = q.watch_history_bytes;
                self.sessions.history_budget = q.watch_history_bytes;
                Ok(Response::Done)
            }
            Command::DeletePlatform(c) => self.accounts.delete_platform(c).map(|()| Response::Done),
            Command::DeletePool(c) => self.accounts.delete_pool(at, c).map(|()| Response::Done),
            Command::DeleteSession(c) => self.sessions.delete(at, c).map(|()| Response::Done),
            Command::Unbind(c) => self.sessions.unbind(at, c).map(Response::Unbound),
            Command::OfferHandoff(c) => self.sessions.offer(at, c).map(Response::Session),
            Command::AcceptHandoff(c) => self.sessions.accept(at, c).map(Response::Handoff),
            Command::RegisterAccount(c) => self
                .accounts
                .register(at.time_ms, c)
                .map(|()| Response::Done),
            Command::RemoveAccount(c) => self.accounts.remove_account(c).map(|()| Response::Done),
            Command::SetContentUnits(c) => self.accounts.set_content(c).map(|()| Response::Done),
            Command::RemoveContent(c) => self.accounts.remove_content(c).map(|()| Response::Done),
            Command::Share(c) => {
                if let share::ShareCommand::ExpireStorage(e) = c {
                    self.ownership.check_expiry(Some(e.owner_epoch))?;
                }
                self.share.apply(at, c).map(Response::Share)
            }
            Command::Link(c) => self.link.apply(at, &self.quotas, c).map(Response::Link),
        }
    }

    /// Cluster time: the latest entry time seen (monotonic even when a new
    /// leader's clock is behind).
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Index of the last entry applied, whether its command was accepted or
    /// rejected.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// A user's presence record; `None` when the user was never seen.
    pub fn presence(&self, uid: &str) -> Option<&PresenceRecord> {
        self.roster.get(uid)
    }

    /// Presence events with `revision >= start_revision` (0 = every retained
    /// one) for `uids` (empty = every user), in revision order.
    /// `FailedPrecondition` ("compacted: ...") when events at or after
    /// `start_revision` are no longer kept.
    pub fn presence_events_since(
        &self,
        start_revision: u64,
        uids: &BTreeSet<String>,
    ) -> Result<Vec<PresenceEvent>, StateError> {
        self.roster.events_since(start_revision, uids)
    }

    /// Calls `f` on every presence event with `revision >= start_revision`
    /// (0 = every retained one), in revision order, without copying them;
    /// an error when they were compacted.
    pub fn visit_presence_events_since(
        &self,
        start_revision: u64,
        f: impl FnMut(&PresenceEvent),
    ) -> Result<(), StateError> {
        self.roster.visit_events_since(start_revision, f)
    }

    /// Every presence record, in uid order (for the owner's TTL rescan).
    pub fn presence_records(&self) -> impl Iterator<Item = &PresenceRecord> {
        self.roster.records()
    }

    /// Users online per client type (for metrics).
    pub fn online_counts(&self) -> BTreeMap<String, u64> {
        self.roster.online_counts()
    }

    /// Connections online over every user (for metrics).
    pub fn connection_count(&self) -> u64 {
        self.roster.connection_count()
    }

    /// Users, roles, tokens and whether auth is enforced.
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// The agreed TTL ownership ring.
    pub fn ownership(&self) -> &OwnershipEpoch {
        &self.ownership
    }

    /// Every member's recorded incarnation.
    pub fn incarnations(&self) -> &Incarnations {
        &self.incarnations
    }

    /// A membership entry was applied: forget the incarnations of nodes it
    /// no longer lists (called by the state store, in log order).
    pub fn membership_changed(&mut self, members: &BTreeSet<u64>) {
        self.incarnations.retain(members);
    }

    /// A session.
    pub fn session(&self, id: u64) -> Option<&Session> {
        self.sessions.get(id)
    }

    /// A session's work log, oldest first (the newest
    /// [`limits::WORK_LOG_LEN`] entries).
    pub fn session_log(&self, id: u64) -> Option<Vec<WorkLogEntry>> {
        self.sessions.log(id)
    }

    /// The terminal bound to `terminal`, if any.
    pub fn binding(&self, terminal: &Terminal) -> Option<&Terminal> {
        self.sessions.binding(terminal)
    }

    /// The sessions `terminal` holds with an id above `after`, by id, at
    /// most `limit`.
    pub fn sessions_held_by(&self, terminal: &Terminal, after: u64, limit: usize) -> Vec<&Session> {
        self.sessions.held_by(terminal, after, limit)
    }

    /// Calls `f` on every session event with `revision >= start_revision`
    /// (0 = every retained one), in revision order; `FailedPrecondition`
    /// with [`Reason::Compacted`] when they are no longer kept.
    pub fn visit_session_events_since(
        &self,
        start_revision: u64,
        f: impl FnMut(&SessionEvent),
    ) -> Result<(), StateError> {
        self.sessions.visit_events_since(start_revision, f)
    }

    /// Every platform, by id.
    pub fn platforms(&self) -> Vec<&Platform> {
        self.accounts.platforms()
    }

    /// Every pool (`None`) or the pools of one unit, by id.
    pub fn pools(&self, unit_id: Option<u64>) -> Vec<PoolView> {
        self.accounts.pools(unit_id)
    }

    /// The data of a leased account, for its holder (see
    /// `GetAccountData`), at cluster time `now_ms`.
    pub fn account_data(
        &self,
        lease_id: u64,
        user: &str,
        secret: &SecretHash,
        now_ms: u64,
    ) -> Result<&BTreeMap<String, Vec<u8>>, StateError> {
        self.accounts.account_data(lease_id, user, secret, now_ms)
    }

    /// The registered accounts of a unit by name, after `after`.
    pub fn registered_accounts(
        &self,
        unit_id: u64,
        after: &str,
    ) -> impl Iterator<Item = &RegisteredAccount> {
        self.accounts.registered_accounts(unit_id, after)
    }

    /// True when `account` names a registered account of `unit_id`.
    pub fn is_registered(&self, unit_id: u64, account: &str) -> bool {
        self.accounts.is_registered(unit_id, account)
    }

    /// A registered account's login at cluster time `now_ms`, up to the
    /// password check, which the caller does with the returned hash.
    pub fn registered_login(&self, unit_id: u64, account: &str, now_ms: u64) -> RegisteredLogin {
        self.accounts.registered_login(unit_id, account, now_ms)
    }

    /// The first access request: the units a content shows, judged at
    /// cluster time `now_ms`.
    pub fn first_access(
        &self,
        platform_id: u64,
        content_id: &str,
        now_ms: u64,
    ) -> Result<ContentView, StateError> {
        self.accounts.first_access(platform_id, content_id, now_ms)
    }

    /// A unit.
    pub fn unit(&self, unit_id: u64) -> Option<&Unit> {
        self.accounts.unit_of(unit_id)
    }

    /// The unit a pool serves (its QoS class and response-time target).
    pub fn unit_of_pool(&self, pool_id: u64) -> Option<&Unit> {
        self.accounts.unit_of_pool(pool_id)
    }

    /// The active leases of a pool, by lease id.
    pub fn leases(&self, pool_id: u64) -> Result<Vec<Lease>, StateError> {
        self.accounts.leases(pool_id)
    }

    /// Checks a viewer's login to a unit at cluster time `now_ms` (the
    /// answering node's clock: a lease past its expiry is refused even
    /// before the Tick that ends it is applied). `lease_secret` is the hash
    /// of the secret the viewer presented ([`lease_secret_hash`]), which
    /// holder-only units require.
    pub fn check_login(
        &self,
        unit_id: u64,
        account: &str,
        password: &str,
        user: &str,
        lease_secret: Option<&SecretHash>,
        now_ms: u64,
    ) -> LoginOutcome {
        self.accounts
            .check_login(unit_id, account, password, user, lease_secret, now_ms)
    }

    /// Media sharing: storage servers, friendships and shares.
    pub fn share(&self) -> &MediaShares {
        &self.share
    }

    /// The earliest `expires_ms` of an active lease.
    pub fn next_lease_expiry(&self) -> Option<u64> {
        self.accounts.next_expiry()
    }

    /// The earliest cluster time at which time alone changes the state (a
    /// lease expires, a retention deletes), so the leader knows when to
    /// propose a [`Command::Tick`].
    pub fn next_due(&self) -> Option<u64> {
        let q = &self.quotas;
        [
            self.accounts.next_expiry(),
            self.sessions.next_forget(q.session_retention_ms),
            self.sessions.next_offer_expiry(),
            self.roster.next_forget(q.presence_retention_ms),
            self.share.next_due(),
            self.link.next_forget(),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

impl State {
    /// Every linked catalog, by name.
    pub fn link_catalogs(&self) -> Vec<CatalogView> {
        self.link.catalogs()
    }

    /// Every link rule, by name.
    pub fn link_rules(&self) -> Vec<&LinkRule> {
        self.link.rules()
    }

    /// A linked catalog's item, with its counts.
    pub fn link_item(&self, catalog: &str, item_id: &str) -> Option<ItemView> {
        self.link.item(catalog, item_id)
    }

    /// A catalog's items with an insertion number above `after` (0 = from
    /// the first), at most `limit`, with their numbers.
    pub fn link_items(
        &self,
        catalog: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, ItemView)>, StateError> {
        self.link.items(catalog, after, limit)
    }

    /// One page of a linked lookup, ranked from the index.
    pub fn link_lookup(&self, q: &LinkQuery) -> Result<LinkPage, StateError> {
        self.link.lookup(q)
    }

    /// Linked items over every catalog, and counted request ids remembered
    /// (for metrics).
    pub fn link_counts(&self) -> (u64, u64) {
        (self.link.item_count(), self.link.request_count())
    }
}

/// How many records of each kind the state keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordCounts {
    /// Presence records.
    pub users: u64,
    /// Sessions.
    pub sessions: u64,
    /// Temporary accounts.
    pub accounts: u64,
    /// Registered accounts.
    pub registered_accounts: u64,
    /// Tagged contents.
    pub contents: u64,
    /// Bytes of presence and session changes kept for watch resume (this
    /// replica).
    pub watch_history_bytes: u64,
}
