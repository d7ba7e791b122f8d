//! Who owns which users, and the TTL presence their owners keep.
//!
//! Ownership is one agreed decision, not each node's own judgement. Every
//! node probes its peers (`Peer.Ping`, over the same routes as Raft, so a
//! partition looks the same to both), but only the leader acts on what it
//! sees: when the voters it reaches differ from the committed ring, it
//! commits a new [`crate::state::OwnershipEpoch`] through Raft
//! ([`crate::state::ownership::decide`]). Every node builds its consistent-
//! hash [`Ring`] from the committed set alone, so two followers cut from each
//! other but both reaching the leader keep the same owners, and nobody takes
//! over users whose owner is alive and hearing their heartbeats.
//!
//! A uid's owner keeps that user's heartbeats in memory, never in the log,
//! and when a client's TTL passes without one it proposes a logout with
//! reason `expired` for that very login (the command names the login's
//! `since`, so a re-login is never expired by a stale proposal) and the
//! epoch it judged under, so an expiry decided on a ring that has since
//! changed is refused when applied.
//!
//! The owner learns of TTL logins by tailing the state's presence events.
//! Whenever the committed ring changes or the event history it tails was
//! compacted, it rescans the state and gives every TTL client it newly owns
//! a full TTL of grace: a failover never logs out live users.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ::herald_client::proto::RaftBlob;
use ::herald_client::ring::Ring;
use tokio::time::Instant;

use crate::node::Herald;
use crate::state::{Command, Logout, LogoutReason, PresenceEventKind, State};

/// A tracked client: (uid, client type).
type ClientKey = (String, String);

/// One TTL client this node owns.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    deadline: Instant,
    ttl: Duration,
    since_ms: u64,
    sid: u64,
}

#[derive(Default)]
struct Inner {
    last_seen: BTreeMap<u64, Instant>,
    ring: Option<Arc<Ring>>,
    /// The committed ownership epoch `ring` was built from.
    epoch: u64,
    tracked: HashMap<(String, String), Tracked>,
    /// Set when the ring changed and tracked entries need a rescan.
    rescan: bool,
    expired_total: u64,
}

/// This node's view of ownership; cheap to share (inside `Herald`).
pub struct Ownership {
    me: u64,
    vnodes: u32,
    inner: Mutex<Inner>,
}

impl Ownership {
    /// Ownership for node `me` with `vnodes` virtual nodes per member.
    pub fn new(me: u64, vnodes: u32) -> Self {
        Ownership {
            me,
            vnodes,
            inner: Mutex::new(Inner {
                rescan: true,
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The owner of `uid` as this node sees it (`None` before the first ring).
    pub fn owner(&self, uid: &str) -> Option<u64> {
        self.lock().ring.as_ref()?.owner(uid)
    }

    /// The members of the committed ring this node follows.
    pub fn live(&self) -> BTreeSet<u64> {
        self.lock()
            .ring
            .as_ref()
            .map(|r| r.nodes().clone())
            .unwrap_or_default()
    }

    /// How long ago peer `id` last answered a liveness probe (`None`: never).
    pub fn silent_for(&self, id: u64) -> Option<Duration> {
        self.lock().last_seen.get(&id).map(|t| t.elapsed())
    }

    /// TTL clients this node owns and watches.
    pub fn tracked_count(&self) -> usize {
        self.lock().tracked.len()
    }

    /// Expiry logouts this node has had committed.
    pub fn expired_total(&self) -> u64 {
        self.lock().expired_total
    }

    /// Handles a heartbeat: refreshes the client's deadline if this node
    /// owns the user on the committed ring (one that reached it during a
    /// ring change only answers). Returns whether the client is logged in
    /// (false: log in again).
    pub fn heartbeat(&self, state: &State, uid: &str, client_type: &str) -> bool {
        let Some(entry) = state
            .presence(uid)
            .and_then(|r| r.clients.get(client_type).map(|c| (r.sid, c)))
        else {
            self.lock()
                .tracked
                .remove(&(uid.to_string(), client_type.to_string()));
            return false;
        };
        let (sid, c) = entry;
        let mut inner = self.lock();
        let mine = inner.ring.as_ref().and_then(|r| r.owner(uid)) == Some(self.me);
        if c.ttl_ms > 0 && mine {
            let ttl = Duration::from_millis(c.ttl_ms);
            inner.tracked.insert(
                (uid.to_string(), client_type.to_string()),
                Tracked {
                    deadline: Instant::now() + ttl,
                    ttl,
                    since_ms: c.since_ms,
                    sid,
                },
            );
        }
        true
    }

    /// Records probe results; returns the voters that answered within
    /// `down_after` (a peer not probed yet gets that long from its first
    /// probe, so a restarted node does not report everyone dead).
    fn update_liveness(
        &self,
        voters: &BTreeSet<u64>,
        answered: &[u64],
        down_after: Duration,
    ) -> BTreeSet<u64> {
        let now = Instant::now();
        let mut inner = self.lock();
        for id in answered {
            inner.last_seen.insert(*id, now);
        }
        inner.last_seen.retain(|id, _| voters.contains(id));
        for id in voters {
            inner.last_seen.entry(*id).or_insert(now);
        }
        voters
            .iter()
            .copied()
            .filter(|id| {
                *id == self.me
                    || inner
                        .last_seen
                        .get(id)
                        .is_some_and(|t| now.duration_since(*t) < down_after)
            })
            .collect()
    }

    /// Rebuilds the ring when the committed one (or, at epoch 0, the
    /// voters) changed.
    fn follow_ring(&self, state: &State, voters: &BTreeSet<u64>) {
        let agreed = state.ownership();
        let members = agreed.ring_members(voters);
        let mut inner = self.lock();
        let same = inner.epoch == agreed.epoch()
            && inner.ring.as_ref().map(|r| r.nodes()) == Some(&members);
        if same || members.is_empty() {
            return;
        }
        tracing::info!(epoch = agreed.epoch(), live = ?members, "ownership ring changed");
        // A user this node keeps across the change keeps its deadline only
        // if no epoch went by unseen: in one this node missed (cut off from
        // the leader) another node may have owned the user and heard its
        // heartbeats while the deadlines here ran out. Then every user
        // starts over with a full TTL.
        if agreed.epoch() != inner.epoch + 1 {
            inner.tracked.clear();
        }
        inner.ring = Some(Arc::new(Ring::new(members, self.vnodes)));
        inner.epoch = agreed.epoch();
        inner.rescan = true;
    }

    /// Follows presence events from `next`; returns the next revision to read.
    fn follow(&self, state: &State, next: u64) -> u64 {
        let now = Instant::now();
        let mut inner = self.lock();
        let ring = inner.ring.clone();
        let tracked = &mut inner.tracked;
        let visited = state.visit_presence_events_since(next, |e| match e.kind {
            PresenceEventKind::Login => {
                let Some(c) = e.record.clients.get(&e.client_type) else {
                    return;
                };
                let key = || (e.uid.clone(), e.client_type.clone());
                let mine = || ring.as_ref().and_then(|r| r.owner(&e.uid)) == Some(self.me);
                if c.ttl_ms > 0 && mine() {
                    let ttl = Duration::from_millis(c.ttl_ms);
                    tracked.insert(
                        key(),
                        Tracked {
                            deadline: now + ttl,
                            ttl,
                            since_ms: c.since_ms,
                            sid: e.record.sid,
                        },
                    );
                } else if !tracked.is_empty() {
                    tracked.remove(&key());
                }
            }
            PresenceEventKind::Logout | PresenceEventKind::Expired => {
                if e.client_type.is_empty() {
                    tracked.retain(|(uid, _), _| uid != &e.uid);
                } else if !tracked.is_empty() {
                    tracked.remove(&(e.uid.clone(), e.client_type.clone()));
                }
            }
            PresenceEventKind::Permission => {}
        });
        if visited.is_err() {
            inner.rescan = true; // fell behind the history: rescan instead
        }
        if inner.rescan {
            inner.rescan = false;
            let Some(ring) = ring else {
                return state.last_index() + 1;
            };
            inner
                .tracked
                .retain(|(uid, _), _| ring.owner(uid) == Some(self.me));
            let mut inherited = 0;
            for r in state.presence_records() {
                if ring.owner(&r.uid) != Some(self.me) {
                    continue;
                }
                for c in r.clients.values().filter(|c| c.ttl_ms > 0) {
                    let key = (r.uid.clone(), c.client_type.clone());
                    if let std::collections::hash_map::Entry::Vacant(slot) =
                        inner.tracked.entry(key)
                    {
                        // A full TTL of grace for users we inherit.
                        let ttl = Duration::from_millis(c.ttl_ms);
                        slot.insert(Tracked {
                            deadline: now + ttl,
                            ttl,
                            since_ms: c.since_ms,
                            sid: r.sid,
                        });
                        inherited += 1;
                    }
                }
            }
            if inherited > 0 {
                tracing::info!(inherited, "took over TTL clients with a full TTL of grace");
            }
        }
        state.last_index() + 1
    }

    /// Entries whose deadline passed, with the epoch they were judged
    /// under; their deadlines move a second on so a failed proposal is
    /// retried, not spun on.
    fn due(&self) -> (u64, Vec<(ClientKey, Tracked)>) {
        let now = Instant::now();
        let mut inner = self.lock();
        let epoch = inner.epoch;
        let mut out = Vec::new();
        for (k, t) in inner.tracked.iter_mut() {
            if t.deadline <= now {
                out.push((k.clone(), *t));
                t.deadline = now + Duration::from_secs(1);
            }
        }
        (epoch, out)
    }

    fn expired(&self, key: &(String, String), since_ms: u64, committed: bool) {
        let mut inner = self.lock();
        if inner
            .tracked
            .get(key)
            .is_some_and(|t| t.since_ms == since_ms)
        {
            inner.tracked.remove(key);
        }
        if committed {
            inner.expired_total += 1;
        }
    }
}

async fn ping(node: &Herald, id: u64, addr: &str, timeout: Duration) -> bool {
    let Ok(mut client) = node.peers().client_to(id, addr) else {
        return false;
    };
    let mut req = tonic::Request::new(RaftBlob { data: Vec::new() });
    req.set_timeout(timeout);
    tokio::time::timeout(timeout, client.ping(req))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// Probes peers, commits the ownership ring while leading, follows the
/// committed ring and TTL logins, and proposes expiry, until `stopped`
/// resolves.
pub async fn run(node: Herald, stopped: impl Future<Output = ()>) {
    tokio::pin!(stopped);
    let cfg = node.config().ring.clone();
    let probe_every = Duration::from_millis(cfg.probe_interval_ms.max(10));
    let down_after = Duration::from_millis(cfg.down_after_ms);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_probe: Option<Instant> = None;
    let mut next_rev = 1;
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tick.tick() => {}
        }
        let own = node.ownership();
        let (members, _) = node.members();
        let voters: BTreeSet<u64> = members
            .iter()
            .filter(|(_, (_, v))| *v)
            .map(|(id, _)| *id)
            .collect();
        if last_probe.is_none_or(|t| t.elapsed() >= probe_every) {
            last_probe = Some(Instant::now());
            let probes = members
                .iter()
                .filter(|(id, (_, voter))| *voter && **id != node.id())
                .map(|(id, (m, _))| {
                    let (id, addr, node) = (*id, m.peer_addr.clone(), node.clone());
                    async move { ping(&node, id, &addr, probe_every).await.then_some(id) }
                });
            let answered: Vec<u64> = futures::future::join_all(probes)
                .await
                .into_iter()
                .flatten()
                .collect();
            if !voters.is_empty() {
                let reachable = own.update_liveness(&voters, &answered, down_after);
                if node.is_leader() {
                    decide(&node, &voters, &reachable).await;
                }
            }
        }
        next_rev = {
            let m = node.store().read();
            if !voters.is_empty() {
                own.follow_ring(&m.state, &voters);
            }
            own.follow(&m.state, next_rev)
        };
        let (epoch, due) = own.due();
        if due.is_empty() || !node.in_touch_with_leader(down_after) {
            // Cut off from the leader, this node's ring may be stale: its
            // proposals would fail or be refused; the deadlines moved on.
            continue;
        }
        for ((uid, client_type), t) in due {
            let cmd = Command::Logout(Logout {
                uid: uid.clone(),
                sid: t.sid,
                client_type: Some(client_type.clone()),
                ext: BTreeMap::new(),
                reason: LogoutReason::Expired,
                login_since_ms: Some(t.since_ms),
                owner_epoch: Some(epoch),
            });
            let key = (uid, client_type);
            match node.propose(cmd).await {
                Ok(_) => {
                    tracing::info!(uid = %key.0, client = %key.1, ttl_ms = t.ttl.as_millis() as u64, epoch, "presence expired");
                    own.expired(&key, t.since_ms, true);
                }
                // Logged out or in again meanwhile, or the ring moved on
                // (the rescan on the new ring tracks the user again if it
                // is still ours, with a full TTL of grace).
                Err(crate::node::NodeError::State(_)) => own.expired(&key, t.since_ms, false),
                Err(e) => tracing::debug!(uid = %key.0, "expiry proposal: {e}"),
            }
        }
    }
}

/// On the leader: commits a new ownership epoch when the voters it reaches
/// are not the committed ring.
async fn decide(node: &Herald, voters: &BTreeSet<u64>, reachable: &BTreeSet<u64>) {
    let decision = {
        let m = node.store().read();
        crate::state::ownership::decide(m.state.ownership(), voters, node.id(), reachable)
    };
    let Some(cmd) = decision else {
        return;
    };
    let (epoch, live) = (cmd.epoch, cmd.live.clone());
    match node.propose(Command::SetOwnership(cmd)).await {
        Ok(_) => tracing::info!(epoch, ?live, "ownership decided"),
        Err(e) => tracing::debug!(epoch, "ownership decision: {e}"),
    }
}
