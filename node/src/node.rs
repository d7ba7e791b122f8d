//! A running Herald node: one handle over Raft, the state store and the
//! cluster clock, shared by every API service. Cheap to clone.
//!
//! This is where the consistency rules live, once:
//! - writes ([`Herald::propose`]) are stamped with cluster time and committed
//!   through the leader, forwarded over the peer API when this node is not
//!   the leader;
//! - linearizable reads ([`Herald::linearize`]) use ReadIndex, asked of the
//!   leader by followers, then wait until the local state has applied it.
//!
//! A write is retried on another leader only when it certainly was not
//! proposed; when the outcome is unknown the caller gets
//! [`NodeError::Indeterminate`], never a silent second apply.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ReadPolicy, ServerState};
use tokio::time::Instant;

use crate::clock::ClusterClock;
use crate::config::Config;
use crate::raft::log_store::LogStore;
use crate::raft::network::PeerChannels;
use crate::raft::state_store::StateStore;
use crate::raft::{Member, Proposal, Raft};
use crate::state::{Command, Response, StateError};

pub use ::herald_client::NOT_APPLIED;

/// How long a write or read waits for a leader before giving up.
const LEADER_WAIT: Duration = Duration::from_secs(5);

/// Why a node could not serve a request.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The state machine rejected the command (bad input or a failed precondition).
    #[error(transparent)]
    State(#[from] StateError),
    /// No leader was elected, or none could be confirmed, in time; nothing
    /// was applied.
    #[error("unavailable: {0}")]
    NoLeader(String),
    /// This node cannot serve the request now (try another); nothing was
    /// applied.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The write may or may not have been applied.
    #[error("indeterminate: {0}")]
    Indeterminate(String),
    /// A local failure (storage, encoding).
    #[error("internal: {0}")]
    Internal(String),
}

/// Where a write ended up.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum ForwardReply {
    /// Committed and applied; the state machine's answer.
    Applied(Result<Response, StateError>),
    /// The receiving node was not the leader: nothing was proposed.
    NotLeader,
    /// Proposed, outcome unknown.
    Indeterminate(String),
}

/// When this node last heard from a leader: any `AppendEntries` it
/// accepted, heartbeats included, and any moment it was the leader itself
/// (refreshed by `failover::run_takeover` while it leads, and when it hands
/// leadership away). Without the latter a leader that steps down would
/// count its whole time in office as silence and campaign against the
/// leader it had just chosen, before that leader's first heartbeat arrived.
///
/// It also remembers when a leader last handed leadership to this node
/// (`Peer.TransferLeader` naming it): a term won that way is a choice, not
/// a failure of the previous leader (numbered failover tells the two apart).
#[derive(Debug, Default)]
pub struct LeaderContact {
    last: std::sync::Mutex<Option<Instant>>,
    handed: std::sync::Mutex<Option<Instant>>,
}

fn now_into(slot: &std::sync::Mutex<Option<Instant>>) {
    *slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
}

fn read(slot: &std::sync::Mutex<Option<Instant>>) -> Option<Instant> {
    *slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LeaderContact {
    /// Records contact now.
    pub fn touch(&self) {
        now_into(&self.last);
    }

    /// The last contact, if there was one.
    pub fn last(&self) -> Option<Instant> {
        read(&self.last)
    }

    /// Records that the leader is handing leadership to this node now.
    pub fn handed_to_me(&self) {
        now_into(&self.handed);
    }

    /// When leadership was last handed to this node, if ever.
    pub fn handed(&self) -> Option<Instant> {
        read(&self.handed)
    }
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) raft: Raft,
    pub(crate) store: StateStore,
    pub(crate) log: LogStore,
    pub(crate) clock: ClusterClock,
    pub(crate) peers: PeerChannels,
    pub(crate) stopping: tokio::sync::watch::Receiver<bool>,
    pub(crate) ownership: crate::cluster::owner::Ownership,
    pub(crate) storage_beats: crate::cluster::storage_beats::StorageBeats,
    pub(crate) metrics: crate::metrics::Metrics,
    pub(crate) leader_contact: LeaderContact,
    pub(crate) guard: crate::security::Guard,
    pub(crate) identity: crate::raft::identity::IdentityCell,
    pub(crate) stamp: crate::stamp::StampBound,
    pub(crate) space: Arc<crate::raft::free_space::FreeSpace>,
    /// Permits for client writes in flight (`limits.max_pending_writes`).
    pub(crate) pending_writes: Arc<tokio::sync::Semaphore>,
    /// One permit per open presence watch (`limits.max_watch_streams`),
    /// gRPC `Watch` and HTTP event streams alike, so the cap is per node
    /// whichever API a watcher uses.
    pub(crate) watch_slots: Arc<tokio::sync::Semaphore>,
}

/// Handle to a running node.
#[derive(Clone)]
pub struct Herald {
    pub(crate) inner: Arc<Inner>,
}

impl Herald {
    pub(crate) fn new(inner: Inner) -> Self {
        Herald {
            inner: Arc::new(inner),
        }
    }

    /// This node's Raft id.
    pub fn id(&self) -> u64 {
        self.inner.config.id
    }

    /// This node's config.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The permits of open presence watches (`limits.max_watch_streams`).
    pub fn watch_slots(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.inner.watch_slots
    }

    /// The Raft handle.
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// When this node last accepted entries or a heartbeat from a leader.
    pub fn leader_contact(&self) -> &LeaderContact {
        &self.inner.leader_contact
    }

    /// Which cluster this node belongs to, and its incarnation (see
    /// [`crate::raft::identity`]).
    pub fn identity(&self) -> &crate::raft::identity::IdentityCell {
        &self.inner.identity
    }

    /// Why this node cannot serve yet, if it cannot: it has no identity
    /// (waiting for `cluster init` or to be added), or its cluster refused
    /// it (a wiped data dir in a member's place).
    pub fn waiting(&self) -> Option<String> {
        if let Some(why) = self.inner.identity.refused() {
            return Some(why);
        }
        if self.inner.identity.get().is_none() {
            return Some(
                "not initialized: waiting for heraldctl cluster init (a founding node) or to \
                 be added by the cluster's leader"
                    .into(),
            );
        }
        None
    }

    /// Who may call what (see [`crate::security`]).
    pub fn guard(&self) -> &crate::security::Guard {
        &self.inner.guard
    }

    /// The state store (for reads).
    pub fn store(&self) -> &StateStore {
        &self.inner.store
    }

    /// The Raft log store (for status).
    pub fn log(&self) -> &LogStore {
        &self.inner.log
    }

    /// The cluster clock.
    pub fn clock(&self) -> &ClusterClock {
        &self.inner.clock
    }

    /// Who owns which users (the ring) and the TTL clients this node watches.
    pub fn ownership(&self) -> &crate::cluster::owner::Ownership {
        &self.inner.ownership
    }

    /// The heartbeat-kept storage servers this node owns.
    pub fn storage_beats(&self) -> &crate::cluster::storage_beats::StorageBeats {
        &self.inner.storage_beats
    }

    /// Channels to peers (with this node's peer routes).
    pub fn peers(&self) -> &PeerChannels {
        &self.inner.peers
    }

    /// What this node's SNTP server says about its time source (the rules
    /// are [`crate::cluster::stratum::source`]).
    pub fn time_source(&self) -> crate::cluster::stratum::Source {
        let clock = self.clock();
        let leader = self.is_leader();
        crate::cluster::stratum::source(&crate::cluster::stratum::Observed {
            leader,
            now_ns: clock.now_ns(),
            now_ms: clock.now_ms(),
            last_sync_ms: clock.last_sync_ms(),
            sync_interval_ms: self.inner.config.clock.sync_interval_ms,
            leader_time_addr: if leader {
                None
            } else {
                self.leader().and_then(|(_, m)| m.time_addr.parse().ok())
            },
        })
    }

    /// Free space on the data dir and the alarm that refuses writes.
    pub fn space(&self) -> &crate::raft::free_space::FreeSpace {
        &self.inner.space
    }

    /// Why `cmd` may not be proposed now: the free-space alarm is on, on
    /// this node (which received it) or on the leader (which would log it).
    /// Time-driven commands (lease ticks, TTL expiry, ownership) still go: they are
    /// not new client writes, and holding them back would keep expired
    /// users online.
    fn no_space(&self, cmd: &Command) -> Option<StateError> {
        if internal(cmd) {
            return None;
        }
        let why = self.inner.space.refusal()?;
        Some(StateError::exhausted(
            crate::state::Reason::NoSpace,
            format!("node {}: {why}", self.id()),
        ))
    }

    /// This node's Prometheus metrics.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    /// This node's metrics in the OpenMetrics text format, the gauges that
    /// are sampled at scrape time (Raft, storage, presence, pools, clock)
    /// set from the node now.
    pub fn render_metrics(&self) -> Result<String, std::fmt::Error> {
        let m = &self.inner.metrics;
        self.with_metrics(|r| m.raft.sample(r));
        m.api.auth_enabled.set(i64::from(self.guard().enabled()));
        m.storage
            .sample(self.log().size_on_disk(), self.log().len(), self.space());
        {
            let machine = self.store().read();
            m.storage.sample_records(&machine.state);
            m.presence
                .sample(&machine.state, self.ownership().tracked_count());
            m.pools.sample(&machine.state);
            m.share.sample(&machine.state);
        }
        m.clock.sample(self.clock());
        m.encode()
    }

    /// Becomes true when the node starts shutting down (ends long streams).
    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.stopping.clone()
    }

    /// Reads Raft's latest metrics without copying them (hot path: every
    /// request asks who leads).
    pub fn with_metrics<T>(
        &self,
        f: impl FnOnce(&openraft::RaftMetrics<crate::raft::TypeConfig>) -> T,
    ) -> T {
        let rx = self.inner.raft.metrics();
        let m = rx.borrow_watched();
        f(&m)
    }

    /// The current leader as this node knows it.
    pub fn leader(&self) -> Option<(u64, Member)> {
        self.with_metrics(|m| {
            let id = m.current_leader?;
            let member = m.membership_config.membership().get_node(&id)?.clone();
            Some((id, member))
        })
    }

    /// Every member (voters and learners) with its address and whether it votes.
    pub fn members(&self) -> (BTreeMap<u64, (Member, bool)>, Option<u64>) {
        self.with_metrics(|m| {
            let mem = m.membership_config.membership();
            let voters: std::collections::BTreeSet<u64> = mem.voter_ids().collect();
            let out = mem
                .nodes()
                .map(|(id, n)| (*id, (n.clone(), voters.contains(id))))
                .collect();
            (out, m.current_leader)
        })
    }

    /// True while this node is the Raft leader.
    pub fn is_leader(&self) -> bool {
        self.with_metrics(|m| m.state == ServerState::Leader && m.current_leader == Some(self.id()))
    }

    /// Waits (bounded) until some leader is known.
    async fn wait_leader(&self, deadline: Instant) -> Result<(u64, Member), NodeError> {
        let mut rx = self.inner.raft.metrics();
        loop {
            if let Some(l) = self.leader() {
                return Ok(l);
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(NodeError::NoLeader("no leader elected".into()));
            }
        }
    }

    /// Commits `cmd` through the leader and returns the state machine's answer.
    #[tracing::instrument(target = "herald_trace", name = "propose", skip_all, fields(node_id = self.id()))]
    pub async fn propose(&self, cmd: Command) -> Result<Response, NodeError> {
        cmd.validate()?;
        // Held until answered: a write waiting in this node counts.
        let _permit = if internal(&cmd) {
            None
        } else {
            let Ok(permit) = Arc::clone(&self.inner.pending_writes).try_acquire_owned() else {
                let n = self.inner.config.limits.max_pending_writes;
                return Err(NodeError::State(StateError::exhausted(
                    crate::state::Reason::Overloaded,
                    format!(
                        "limit limits.max_pending_writes = {n} reached: node {} has {n} writes in \
                     flight; retry with backoff",
                        self.id()
                    ),
                )));
            };
            Some(permit)
        };
        if let Some(refused) = self.no_space(&cmd) {
            return Err(NodeError::State(refused));
        }
        // Shared, not cloned, across the attempts.
        let cmd = std::sync::Arc::new(cmd);
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let (leader, member) = self.wait_leader(deadline).await?;
            let reply = if leader == self.id() {
                self.propose_local(std::sync::Arc::clone(&cmd)).await
            } else {
                self.forward(leader, &member, &cmd).await
            };
            match reply {
                ForwardReply::Applied(r) => return r.map_err(NodeError::State),
                ForwardReply::Indeterminate(m) => return Err(NodeError::Indeterminate(m)),
                ForwardReply::NotLeader => {
                    if Instant::now() >= deadline {
                        return Err(NodeError::NoLeader("leader kept changing".into()));
                    }
                    // Leadership is moving: let the metrics catch up.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// Proposes on this node, which believes it is the leader.
    #[tracing::instrument(
        target = "herald_trace",
        name = "raft.propose",
        skip_all,
        fields(node_id = self.id(), index = tracing::field::Empty)
    )]
    pub(crate) async fn propose_local(&self, cmd: std::sync::Arc<Command>) -> ForwardReply {
        if !self.is_leader() {
            return ForwardReply::NotLeader;
        }
        if let Some(refused) = self.no_space(&cmd) {
            // Not proposed: certainly not applied.
            return ForwardReply::Applied(Err(refused));
        }
        // Quotas against the state as this leader has applied it: a command
        // over one never reaches the log (apply checks again).
        if let Err(refused) = self.inner.store.read().state.admit(&cmd) {
            return ForwardReply::Applied(Err(refused));
        }
        let term = self.with_metrics(|m| m.current_term);
        let max_ahead = self.inner.config.clock.max_ahead_ms;
        let Some(time_ms) = self
            .inner
            .stamp
            .stamp(term, self.inner.clock.now_ms(), max_ahead, || {
                self.agreed_time()
            })
            .await
        else {
            // No majority answered: this node could not commit anyway.
            return ForwardReply::NotLeader;
        };
        let proposal = Proposal { time_ms, cmd };
        let started = std::time::Instant::now();
        let m = &self.inner.metrics;
        match self.inner.raft.client_write(proposal).await {
            Ok(resp) => {
                m.raft
                    .commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                m.raft
                    .proposals
                    .get_or_create(&crate::metrics::ResultLabel {
                        result: "committed",
                    })
                    .inc();
                tracing::Span::current().record("index", resp.log_id.index());
                tracing::debug!(index = resp.log_id.index(), "committed and applied");
                ForwardReply::Applied(resp.data.0)
            }
            // Refused before appending: this node was not (or no longer) a
            // writable leader, so the caller may safely try the new one.
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                m.raft
                    .proposals
                    .get_or_create(&crate::metrics::ResultLabel {
                        result: "not_leader",
                    })
                    .inc();
                ForwardReply::NotLeader
            }
            // Appended, then discarded or cut off: another leader may still
            // commit it, so the outcome is unknown.
            Err(e) => {
                m.raft
                    .proposals
                    .get_or_create(&crate::metrics::ResultLabel { result: "failed" })
                    .inc();
                ForwardReply::Indeterminate(e.to_string())
            }
        }
    }

    /// The voters' agreed cluster time (see [`crate::stamp`]): this node's
    /// clock and every voter's that answers `Ping` within two seconds, each
    /// moved forward by half its round trip; `None` without a majority.
    async fn agreed_time(&self) -> Option<u64> {
        let (members, _) = self.members();
        let voters: Vec<(u64, String)> = members
            .iter()
            .filter(|(_, (_, voter))| *voter)
            .map(|(id, (m, _))| (*id, m.peer_addr.clone()))
            .collect();
        let quorum = voters.len() / 2 + 1;
        let asks = voters
            .iter()
            .filter(|(id, _)| *id != self.id())
            .map(|(id, addr)| async move {
                let sent = std::time::Instant::now();
                let mut peer = crate::peer::PeerClient::new(self.peers(), *id, addr).ok()?;
                let reply = peer.ping(Duration::from_secs(2)).await.ok()?;
                let half_rtt = sent.elapsed().as_millis() as u64 / 2;
                Some(reply.cluster_time_ms.saturating_add(half_rtt))
            });
        let mut readings: Vec<u64> = futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect();
        readings.push(self.inner.clock.now_ms());
        let agreed = crate::stamp::agreed(readings, quorum);
        if agreed.is_none() {
            tracing::warn!("no majority of voters answered with its clock: not stamping yet");
        }
        agreed
    }

    #[tracing::instrument(target = "herald_trace", name = "forward", skip_all, fields(node_id = self.id(), leader = leader_id))]
    async fn forward(&self, leader_id: u64, leader: &Member, cmd: &Command) -> ForwardReply {
        use crate::peer::{PeerClient, PeerError};
        let Ok(mut client) = PeerClient::new(&self.inner.peers, leader_id, &leader.peer_addr)
        else {
            return ForwardReply::NotLeader;
        };
        match client.forward(cmd, LEADER_WAIT).await {
            Ok(reply) => reply,
            Err(PeerError::Call(s)) if certainly_not_sent(&s) => ForwardReply::NotLeader,
            Err(PeerError::Call(s)) => {
                ForwardReply::Indeterminate(format!("forwarding to the leader: {}", s.message()))
            }
            Err(e @ (PeerError::Encode(_) | PeerError::Decode(_))) => {
                ForwardReply::Indeterminate(e.to_string())
            }
        }
    }

    /// Whether this node's state is fresh enough to answer for: it leads
    /// and a quorum acknowledged it within `within`, or it heard from a
    /// leader within `within`. A node cut off from the leader may hold a
    /// stale ring and stale presence, and must say so instead of answering.
    pub fn in_touch_with_leader(&self, within: Duration) -> bool {
        let acked = self.with_metrics(|m| {
            let leading = m.state == ServerState::Leader && m.current_leader == Some(self.id());
            // A lone voter is its own quorum; no follower ever acks it.
            let alone = m.membership_config.membership().voter_ids().count() == 1;
            leading.then(|| match &m.last_quorum_acked {
                _ if alone => Some(Duration::ZERO),
                acked => acked.as_ref().map(|t| openraft::Instant::elapsed(&**t)),
            })
        });
        match acked {
            Some(acked) => acked.is_some_and(|e| e < within),
            None => self
                .leader_contact()
                .last()
                .is_some_and(|t| t.elapsed() < within),
        }
    }

    /// Keeps a heartbeat of one connection on this node, the uid's owner;
    /// false if that connection is not logged in. Logins go to the leader, so a client's first
    /// heartbeat can arrive before this replica applied its login: a miss is
    /// looked up again after catching up to the leader before it is reported.
    /// `Unavailable` when this node has not heard from a leader within the
    /// ring's down-after bound: its state may be stale (the leader may have
    /// moved the user to another owner, or expired it), so the client must
    /// try another node rather than be told its heartbeat was known.
    pub async fn heartbeat_here(
        &self,
        uid: &str,
        client_type: &str,
        connection_id: &str,
    ) -> Result<bool, NodeError> {
        let within = Duration::from_millis(self.config().ring.down_after_ms);
        if !self.in_touch_with_leader(within) {
            return Err(NodeError::Unavailable(format!(
                "node {} has not heard from a leader for {within:?}; its presence may be stale, \
                 try another node",
                self.id()
            )));
        }
        let known = {
            let m = self.store().read();
            self.ownership().heartbeat(
                std::time::Instant::now(),
                &m.state,
                uid,
                client_type,
                connection_id,
            )
        };
        if known {
            return Ok(true);
        }
        self.linearize().await?;
        let m = self.store().read();
        Ok(self.ownership().heartbeat(
            std::time::Instant::now(),
            &m.state,
            uid,
            client_type,
            connection_id,
        ))
    }

    /// Keeps a storage server's heartbeat (TTL `ttl_ms` > 0) on this node,
    /// its owner, and answers the server as the state shows it. Only a
    /// change reaches the log: a server that is down, marked up without a
    /// TTL, or kept by another TTL is marked up with this one first. A
    /// server this replica does not know yet is looked up again after
    /// catching up to the leader. `Unavailable` when this node has not
    /// heard from a leader within the ring's down-after bound (its ring
    /// and state may be stale: the server must try another node).
    pub async fn storage_beat_here(
        &self,
        server_id: &str,
        ttl_ms: u64,
    ) -> Result<crate::state::StorageServer, NodeError> {
        use crate::state::share::{ShareCommand, ShareOutcome, StorageHealth};
        let within = Duration::from_millis(self.config().ring.down_after_ms);
        if !self.in_touch_with_leader(within) {
            return Err(NodeError::Unavailable(format!(
                "node {} has not heard from a leader for {within:?}; try another node",
                self.id()
            )));
        }
        let known = || {
            self.store()
                .read()
                .state
                .share()
                .storage(server_id)
                .cloned()
        };
        let server = match known() {
            Some(s) => s,
            None => {
                self.linearize().await?;
                known().ok_or_else(|| {
                    NodeError::State(StateError::not_found(format!(
                        "storage server {server_id:?}"
                    )))
                })?
            }
        };
        let mark = |renew| async move {
            let cmd = Command::Share(ShareCommand::StorageHealth(StorageHealth {
                server_id: server_id.to_string(),
                up: true,
                ttl_ms,
                renew,
            }));
            match self.propose(cmd).await? {
                Response::Share(ShareOutcome::Storage(s)) => Ok(s),
                other => Err(NodeError::Internal(format!(
                    "unexpected answer to a storage mark: {other:?}"
                ))),
            }
        };
        let mut server = if server.up && server.heartbeat_ttl_ms == ttl_ms {
            server
        } else {
            mark(false).await?
        };
        let key = crate::cluster::storage_beats::ring_key(server_id);
        let mine = || self.ownership().owner(&key) == Some(self.id());
        let beats = self.storage_beats();
        if !beats.beat(std::time::Instant::now(), &server, mine()) {
            // Its TTL ran out here before this beat: the expiry of that
            // spell may be under way, so this beat starts a new one
            // (whichever commits first, the other does not end it).
            server = mark(true).await?;
            beats.beat(std::time::Instant::now(), &server, mine());
        }
        Ok(server)
    }

    /// Makes the next local read linearizable: waits until this node has
    /// applied everything committed before the call.
    pub async fn linearize(&self) -> Result<(), NodeError> {
        if self.inner.config.testing.stale_reads {
            return Ok(()); // the deliberate fault: no ReadIndex
        }
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let (leader, member) = self.wait_leader(deadline).await?;
            let index = if leader == self.id() {
                self.read_index_local().await.ok()
            } else {
                self.remote_read_index(leader, &member).await
            };
            if let Some(index) = index {
                return tokio::time::timeout_at(deadline, self.inner.store.wait_applied(index))
                    .await
                    .map_err(|_| {
                        NodeError::Unavailable("timed out catching up for a read".into())
                    });
            }
            if Instant::now() >= deadline {
                return Err(NodeError::NoLeader(
                    "could not confirm leadership for a read".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// ReadIndex on the leader: confirms leadership with a quorum and returns
    /// the index a read must wait for.
    pub(crate) async fn read_index_local(&self) -> Result<u64, NodeError> {
        let read = self
            .inner
            .raft
            .ensure_linearizable(ReadPolicy::ReadIndex)
            .await
            .map_err(|e| NodeError::NoLeader(e.to_string()))?;
        Ok(read.log_id().index())
    }

    async fn remote_read_index(&self, leader_id: u64, leader: &Member) -> Option<u64> {
        let mut client =
            crate::peer::PeerClient::new(&self.inner.peers, leader_id, &leader.peer_addr).ok()?;
        client.read_index(LEADER_WAIT).await.ok()
    }
}

/// True when a failed call certainly did not reach the state machine: the
/// receiver said so, or the connection was never made. A reset or closed
/// connection is *not* proof: the request may have been appended before the
/// leader died, and sending it again would apply it twice.
pub fn certainly_not_sent(s: &tonic::Status) -> bool {
    s.metadata().get(NOT_APPLIED).is_some() || herald_client::never_executed(s)
}

/// Writes the cluster makes by itself as time passes (lease ticks, TTL
/// expiry, the ownership ring): never held back by the free-space alarm or
/// the write limit, since holding them back would keep expired users
/// online.
fn internal(cmd: &Command) -> bool {
    match cmd {
        Command::Tick | Command::SetOwnership(_) => true,
        Command::Logout(l) => l.reason == crate::state::LogoutReason::Expired,
        Command::Share(crate::state::ShareCommand::ExpireStorage(_)) => true,
        _ => false,
    }
}
