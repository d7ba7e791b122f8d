//! Liveness and TTL ownership as a pure policy: who answered probes, which
//! ring this node follows, and which TTL clients it owns and when each is
//! due to expire.
//!
//! Observations (probe answers, the committed state, heartbeats) and the
//! time come in as arguments; decisions (the reachable voters, the clients
//! due for an expiry proposal) come out. Nothing here probes, proposes,
//! sleeps or reads a clock: `owner.rs` does that, and the tests below drive
//! the policy through tables of instants instead of sleeps.
//!
//! Why a std `Mutex` inside: the handle is shared by the API handlers (a
//! heartbeat, an owner lookup) and the shell's loop, and no await ever
//! happens under the lock.
//!
//! See `owner.rs` for the mechanism this policy serves (one agreed ring,
//! heartbeats kept only in the owner's memory, a full TTL of grace for
//! inherited users).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ::herald_client::ring::Ring;

use crate::state::{PresenceEventKind, State};

/// A tracked connection: (uid, client type, connection id). Each
/// connection of a user has its own TTL and deadline.
pub type ClientKey = (String, String, String);

/// One TTL client this node owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracked {
    /// When its TTL runs out without a heartbeat.
    pub deadline: Instant,
    /// Its TTL.
    pub ttl: Duration,
    /// The login the expiry would end (a re-login is never expired).
    pub since_ms: u64,
    /// The user's session id, for the logout.
    pub sid: u64,
    /// Its deadline passed and it was handed out for an expiry, which may
    /// still commit: a heartbeat of this login is answered "not logged in"
    /// (log in again) rather than "known", or it would be acknowledged
    /// while the expiry commits after it.
    pub expiring: bool,
}

/// How long a due client waits before it is due again, so a failed
/// proposal is retried, not spun on.
const RETRY_DUE: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Inner {
    last_seen: BTreeMap<u64, Instant>,
    ring: Option<Arc<Ring>>,
    /// The committed ownership epoch `ring` was built from.
    epoch: u64,
    /// Ordered by uid first, so a user's connections are one range.
    tracked: BTreeMap<ClientKey, Tracked>,
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

    /// The committed ownership epoch this node's ring was built from.
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// The members of the committed ring this node follows.
    pub fn live(&self) -> BTreeSet<u64> {
        self.lock()
            .ring
            .as_ref()
            .map(|r| r.nodes().clone())
            .unwrap_or_default()
    }

    /// How long before `now` peer `id` last answered a liveness probe
    /// (`None`: never).
    pub fn silent_for(&self, id: u64, now: Instant) -> Option<Duration> {
        self.lock()
            .last_seen
            .get(&id)
            .map(|t| now.saturating_duration_since(*t))
    }

    /// TTL clients this node owns and watches.
    pub fn tracked_count(&self) -> usize {
        self.lock().tracked.len()
    }

    /// Expiry logouts this node has had committed.
    pub fn expired_total(&self) -> u64 {
        self.lock().expired_total
    }

    /// Handles a heartbeat of one connection at `now`: refreshes that
    /// connection's deadline if this node owns the user on the committed
    /// ring (one that reached it during a ring change only answers). Returns
    /// whether the connection is logged in (false: log in again), and false
    /// too once its deadline passed here and its expiry may be under way.
    pub fn heartbeat(
        &self,
        now: Instant,
        state: &State,
        uid: &str,
        client_type: &str,
        connection_id: &str,
    ) -> bool {
        let key = || {
            (
                uid.to_string(),
                client_type.to_string(),
                connection_id.to_string(),
            )
        };
        let Some(entry) = state
            .presence(uid)
            .and_then(|r| r.connection(client_type, connection_id).map(|c| (r.sid, c)))
        else {
            self.lock().tracked.remove(&key());
            return false;
        };
        let (sid, c) = entry;
        let mut inner = self.lock();
        if inner
            .tracked
            .get(&key())
            .is_some_and(|t| t.expiring && t.since_ms == c.since_ms)
        {
            // Its TTL ran out here first: the expiry may be under way.
            return false;
        }
        let mine = inner.ring.as_ref().and_then(|r| r.owner(uid)) == Some(self.me);
        if c.ttl_ms > 0 && mine {
            let ttl = Duration::from_millis(c.ttl_ms);
            inner.tracked.insert(
                key(),
                Tracked {
                    deadline: now + ttl,
                    ttl,
                    since_ms: c.since_ms,
                    sid,
                    expiring: false,
                },
            );
        }
        true
    }

    /// Records the probe answers of a round at `now`; returns the voters
    /// that answered within `down_after` (a peer not probed yet gets that
    /// long from its first probe, so a restarted node does not report
    /// everyone dead).
    pub fn update_liveness(
        &self,
        now: Instant,
        voters: &BTreeSet<u64>,
        answered: &[u64],
        down_after: Duration,
    ) -> BTreeSet<u64> {
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
                        .is_some_and(|t| now.saturating_duration_since(*t) < down_after)
            })
            .collect()
    }

    /// Rebuilds the ring when the committed one (or, at epoch 0, the
    /// voters) changed.
    pub fn follow_ring(&self, state: &State, voters: &BTreeSet<u64>) {
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

    /// Follows presence events from revision `next` at `now`; returns the
    /// next revision to read.
    pub fn follow(&self, now: Instant, state: &State, next: u64) -> u64 {
        let mut inner = self.lock();
        let ring = inner.ring.clone();
        let tracked = &mut inner.tracked;
        let visited = state.visit_presence_events_since(next, |e| match e.kind {
            PresenceEventKind::Login => {
                let Some(c) = e.record.connection(&e.client_type, &e.connection_id) else {
                    return;
                };
                let key = || {
                    (
                        e.uid.clone(),
                        e.client_type.clone(),
                        e.connection_id.clone(),
                    )
                };
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
                            expiring: false,
                        },
                    );
                } else if !tracked.is_empty() {
                    tracked.remove(&key());
                }
            }
            PresenceEventKind::Logout | PresenceEventKind::Expired => {
                // One connection, a type's or all of them went: stop
                // tracking every login of this user the record after the
                // change no longer holds.
                let from = (e.uid.clone(), String::new(), String::new());
                let gone: Vec<ClientKey> = tracked
                    .range(from..)
                    .take_while(|((uid, _, _), _)| uid == &e.uid)
                    .filter(|((_, t, conn), tr)| {
                        e.record
                            .connection(t, conn)
                            .is_none_or(|c| c.since_ms != tr.since_ms)
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in gone {
                    tracked.remove(&k);
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
                .retain(|(uid, _, _), _| ring.owner(uid) == Some(self.me));
            let mut inherited = 0;
            for r in state.presence_records() {
                if ring.owner(&r.uid) != Some(self.me) {
                    continue;
                }
                for c in r.clients.values().filter(|c| c.ttl_ms > 0) {
                    let key = (
                        r.uid.clone(),
                        c.client_type.clone(),
                        c.connection_id.clone(),
                    );
                    if let std::collections::btree_map::Entry::Vacant(slot) =
                        inner.tracked.entry(key)
                    {
                        // A full TTL of grace for users we inherit.
                        let ttl = Duration::from_millis(c.ttl_ms);
                        slot.insert(Tracked {
                            deadline: now + ttl,
                            ttl,
                            since_ms: c.since_ms,
                            sid: r.sid,
                            expiring: false,
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

    /// Entries whose deadline passed by `now`, with the epoch they were
    /// judged under; each is marked expiring (see [`Tracked::expiring`])
    /// and its deadline moves a second on so a failed proposal is retried,
    /// not spun on.
    pub fn due(&self, now: Instant) -> (u64, Vec<(ClientKey, Tracked)>) {
        let mut inner = self.lock();
        let epoch = inner.epoch;
        let mut out = Vec::new();
        for (k, t) in inner.tracked.iter_mut() {
            if t.deadline <= now {
                t.expiring = true;
                out.push((k.clone(), *t));
                t.deadline = now + RETRY_DUE;
            }
        }
        (epoch, out)
    }

    /// The expiry of `key`'s login at `since_ms` was decided: `committed`,
    /// or refused (logged out or in again meanwhile, the ring moved on).
    /// Either way this node stops tracking that login.
    pub fn expired(&self, key: &ClientKey, since_ms: u64, committed: bool) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, Entry, Login, Logout, LogoutReason};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A state with TTL logins of `users` (uid, ttl ms), at indexes 1...
    fn state_with(users: &[(&str, u64)]) -> State {
        let mut state = State::default();
        for (i, (uid, ttl_ms)) in users.iter().enumerate() {
            let entry = Entry {
                index: i as u64 + 1,
                time_ms: 1_000_000 + i as u64,
            };
            state
                .apply(
                    entry,
                    &Command::Login(Login {
                        uid: uid.to_string(),
                        sid: 7,
                        client_type: "pc".into(),
                        connection_id: String::new(),
                        accept_strangers: false,
                        ext: BTreeMap::new(),
                        ttl_ms: *ttl_ms,
                    }),
                )
                .expect("a valid login");
        }
        state
    }

    /// Applies `cmd` as the next entry, at a fixed later cluster time.
    fn apply_next(state: &mut State, cmd: Command, what: &str) {
        let index = state.last_index() + 1;
        let entry = Entry {
            index,
            time_ms: 2_000_000,
        };
        state.apply(entry, &cmd).expect(what);
    }

    fn logout(state: &mut State, uid: &str) {
        let cmd = Command::Logout(Logout {
            uid: uid.into(),
            sid: 7,
            client_type: None,
            connection_id: String::new(),
            ext: BTreeMap::new(),
            reason: LogoutReason::User,
            login_since_ms: None,
            owner_epoch: None,
        });
        apply_next(state, cmd, "a valid logout");
    }

    fn voters(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    /// Users of `state` node `me` owns on a ring of `ring`.
    fn owned_by(me: u64, ring: &[u64], uids: &[&str]) -> Vec<String> {
        let r = Ring::new(ring.iter().copied(), 64);
        uids.iter()
            .filter(|u| r.owner(u) == Some(me))
            .map(|u| u.to_string())
            .collect()
    }

    const USERS: [&str; 8] = ["a", "b", "c", "d", "e", "f", "g", "h"];

    #[test]
    fn liveness_table() {
        let t0 = Instant::now();
        let down = ms(1000);
        let own = Ownership::new(1, 64);
        let all = voters(&[1, 2, 3]);
        // (time after t0, who answered, reachable after the round)
        let table: [(u64, &[u64], &[u64]); 6] = [
            // First round: nobody answered yet, everyone gets `down_after`.
            (0, &[], &[1, 2, 3]),
            (500, &[2], &[1, 2, 3]),
            // 3 never answered: down once `down_after` passed since first seen.
            (1000, &[2], &[1, 2]),
            (1999, &[], &[1, 2]),
            (2000, &[3], &[1, 3]),
            // Itself is always reachable.
            (5000, &[], &[1]),
        ];
        for (at, answered, reachable) in table {
            let now = t0 + ms(at);
            assert_eq!(
                own.update_liveness(now, &all, answered, down),
                voters(reachable),
                "at {at} ms"
            );
        }
        assert_eq!(own.silent_for(2, t0 + ms(1500)), Some(ms(500)));
        assert_eq!(own.silent_for(9, t0), None);
        // A voter removed is forgotten.
        own.update_liveness(t0 + ms(5100), &voters(&[1, 2]), &[], down);
        assert_eq!(own.silent_for(3, t0 + ms(5100)), None);
    }

    #[test]
    fn the_owner_tracks_its_ttl_logins_and_expires_them_when_due() {
        let t0 = Instant::now();
        let state = state_with(&USERS.map(|u| (u, 1000)));
        let mine = owned_by(1, &[1, 2], &USERS);
        assert!(!mine.is_empty() && mine.len() < USERS.len(), "{mine:?}");
        let own = Ownership::new(1, 64);
        own.follow_ring(&state, &voters(&[1, 2]));
        assert_eq!(own.follow(t0, &state, 1), state.last_index() + 1);
        assert_eq!(own.tracked_count(), mine.len());
        // (time after t0, heartbeats at that time, uids due then)
        let first = mine[0].as_str();
        let rest: Vec<&str> = mine[1..].iter().map(String::as_str).collect();
        let table: [(u64, &[&str], &[&str]); 4] = [
            (999, &[first], &[]),
            (1000, &[], &rest),
            // Not decided: due again a second later, not before.
            (1998, &[], &[]),
            (1999, &[], &[first]),
        ];
        let mut last = Vec::new();
        for (at, beats, due) in table {
            let now = t0 + ms(at);
            for uid in beats {
                assert!(own.heartbeat(now, &state, uid, "pc", ""));
            }
            let (epoch, out) = own.due(now);
            assert_eq!(epoch, 0);
            let mut got: Vec<&str> = out.iter().map(|((u, _, _), _)| u.as_str()).collect();
            got.sort();
            let mut want = due.to_vec();
            want.sort();
            assert_eq!(got, want, "at {at} ms");
            if !out.is_empty() {
                last = out;
            }
        }
        assert_eq!(own.due(t0 + ms(2000)).1.len(), rest.len());
        // Deciding an expiry (committed or refused) stops tracking that
        // login; a decision about another login of the client does not.
        let (key, t) = last.pop().expect("first was due");
        own.expired(&key, t.since_ms + 1, false);
        assert_eq!(own.tracked_count(), mine.len());
        own.expired(&key, t.since_ms, true);
        assert_eq!(own.tracked_count(), mine.len() - 1);
        assert_eq!(own.expired_total(), 1);
    }

    /// Found by the chaos run of issue 19 (for storage heartbeats; the
    /// presence TTL had the same gap): an expiry proposal stalled in a
    /// partition while the client's next heartbeats were answered "known",
    /// and then committed after them. Once handed out for an expiry, a
    /// login takes no heartbeat: the client is told to log in again.
    #[test]
    fn a_heartbeat_after_the_deadline_passed_is_answered_not_logged_in() {
        let t0 = Instant::now();
        let state = state_with(&[("a", 1000)]);
        let own = Ownership::new(1, 64);
        own.follow_ring(&state, &voters(&[1]));
        own.follow(t0, &state, 1);
        assert!(own.heartbeat(t0 + ms(900), &state, "a", "pc", ""));
        assert!(own.due(t0 + ms(1899)).1.is_empty());
        assert_eq!(own.due(t0 + ms(1900)).1.len(), 1);
        assert!(
            !own.heartbeat(t0 + ms(1950), &state, "a", "pc", ""),
            "its expiry is under way"
        );
        assert_eq!(
            own.due(t0 + ms(2900)).1.len(),
            1,
            "the beat did not refresh it"
        );
    }

    #[test]
    fn heartbeats_of_strangers_or_unknown_clients() {
        let t0 = Instant::now();
        let state = state_with(&USERS.map(|u| (u, 1000)));
        let own = Ownership::new(1, 64);
        // No ring yet: answers, tracks nothing.
        assert!(own.heartbeat(t0, &state, "a", "pc", ""));
        assert_eq!(own.tracked_count(), 0);
        own.follow_ring(&state, &voters(&[1, 2]));
        // Not logged in: log in again.
        assert!(!own.heartbeat(t0, &state, "a", "tv", ""));
        assert!(!own.heartbeat(t0, &state, "a", "pc", "phone-2"));
        assert!(!own.heartbeat(t0, &state, "nobody", "pc", ""));
        let theirs = USERS
            .iter()
            .find(|u| own.owner(u) == Some(2))
            .expect("node 2 owns someone");
        assert!(own.heartbeat(t0, &state, theirs, "pc", ""));
        assert_eq!(own.tracked_count(), 0, "another node's user is not tracked");
    }

    /// Issue 18: each connection of a user has its own deadline. A
    /// heartbeat of one does not keep another alive, the expiry names the
    /// login of the connection that went silent, and a logout of one
    /// connection keeps the other tracked.
    #[test]
    fn heartbeats_deadlines_and_logouts_are_per_connection() {
        let t0 = Instant::now();
        let mut state = State::default();
        for conn in ["p1", "p2"] {
            let cmd = Command::Login(Login {
                uid: "alice".into(),
                sid: 7,
                client_type: "mobile".into(),
                connection_id: conn.into(),
                accept_strangers: false,
                ext: BTreeMap::new(),
                ttl_ms: 1000,
            });
            let index = state.last_index() + 1;
            let entry = Entry {
                index,
                time_ms: 1_000_000 + index,
            };
            state.apply(entry, &cmd).expect("a valid login");
        }
        let p2_since = state
            .presence("alice")
            .and_then(|r| r.connection("mobile", "p2"))
            .map(|c| c.since_ms)
            .expect("p2 online");
        let own = Ownership::new(1, 64);
        own.follow_ring(&state, &voters(&[1]));
        let next = own.follow(t0, &state, 1);
        assert_eq!(own.tracked_count(), 2);
        assert!(own.heartbeat(t0 + ms(900), &state, "alice", "mobile", "p1"));
        let (_, due) = own.due(t0 + ms(1000));
        let due: Vec<(ClientKey, u64)> = due.into_iter().map(|(k, t)| (k, t.since_ms)).collect();
        let p2 = ("alice".to_string(), "mobile".to_string(), "p2".to_string());
        assert_eq!(due, vec![(p2.clone(), p2_since)]);

        let cmd = Command::Logout(Logout {
            uid: "alice".into(),
            sid: 7,
            client_type: Some("mobile".into()),
            connection_id: "p2".into(),
            ext: BTreeMap::new(),
            reason: LogoutReason::User,
            login_since_ms: None,
            owner_epoch: None,
        });
        apply_next(&mut state, cmd, "a logout of p2");
        own.follow(t0 + ms(1001), &state, next);
        assert_eq!(own.tracked_count(), 1, "p1 is still tracked");
        let (_, due) = own.due(t0 + ms(1900));
        let due: Vec<ClientKey> = due.into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            due,
            vec![("alice".to_string(), "mobile".to_string(), "p1".to_string())]
        );
    }

    fn set_ring(state: &mut State, epoch: u64, live: &[u64]) {
        let cmd = Command::SetOwnership(crate::state::SetOwnership {
            epoch,
            live: voters(live),
        });
        apply_next(state, cmd, "the next epoch");
    }

    /// (ring change, whether this node saw the epoch before it) -> which
    /// tracked users keep their deadlines: only the users it kept on a ring
    /// whose every epoch it saw; the rest get a full TTL from the rescan.
    #[test]
    fn logouts_stop_tracking_and_a_ring_change_rescans_with_full_grace() {
        let t0 = Instant::now();
        let mut state = state_with(&USERS.map(|u| (u, 1000)));
        set_ring(&mut state, 1, &[1, 2]);
        let own = Ownership::new(1, 64);
        let all = voters(&[1, 2, 3]);
        own.follow_ring(&state, &all);
        let next = own.follow(t0, &state, 1);
        let mine = owned_by(1, &[1, 2], &USERS);
        assert_eq!(own.tracked_count(), mine.len());
        logout(&mut state, &mine[0]);
        let next = own.follow(t0 + ms(10), &state, next);
        assert_eq!(own.tracked_count(), mine.len() - 1);

        // Epoch 2 (seen, the next one): node 2 leaves; node 1 inherits every
        // user still online; the ones it had keep their deadlines.
        set_ring(&mut state, 2, &[1]);
        own.follow_ring(&state, &all);
        assert_eq!(own.live(), voters(&[1]));
        let next = own.follow(t0 + ms(900), &state, next);
        assert_eq!(own.tracked_count(), USERS.len() - 1);
        let (epoch, due) = own.due(t0 + ms(1000));
        assert_eq!(epoch, 2);
        let mut due: Vec<String> = due.into_iter().map(|((u, _, _), _)| u).collect();
        due.sort();
        let mut kept: Vec<String> = mine[1..].to_vec();
        kept.sort();
        assert_eq!(due, kept);
        assert_eq!(
            own.due(t0 + ms(1900)).1.len(),
            USERS.len() - mine.len(),
            "the inherited users had a full TTL of grace"
        );

        // Epochs 3 and 4, this node saw only 4: every deadline starts over.
        set_ring(&mut state, 3, &[1, 2]);
        set_ring(&mut state, 4, &[1]);
        own.follow_ring(&state, &all);
        own.follow(t0 + ms(5000), &state, next);
        assert_eq!(own.tracked_count(), USERS.len() - 1);
        assert!(own.due(t0 + ms(5999)).1.is_empty());
        assert_eq!(own.due(t0 + ms(6000)).1.len(), USERS.len() - 1);
    }
}
