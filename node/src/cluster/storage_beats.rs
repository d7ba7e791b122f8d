//! Storage-server heartbeats as a pure policy: which heartbeat-kept servers
//! this node owns, when each is due to expire, and what an expiry names.
//!
//! A storage server beats every few seconds; writing each beat to the log
//! would cost a quorum fsync per beat for a fact nobody reads. So, as with
//! presence TTLs, a beat goes to the server's owner on the committed
//! ownership ring (keyed by [`ring_key`]) and lives only in that node's
//! memory; the log holds only changes (up, down, expired). When a TTL
//! passes without a beat, the owner proposes
//! [`ExpireStorage`](crate::state::share::ExpireStorage) naming the spell of
//! being up it ends and the epoch it judged under.
//!
//! The servers to watch come from the committed state, rescanned on every
//! round (storage servers are few: the `storage_servers` quota): an owned
//! server that is up with a heartbeat TTL and not tracked yet gets a full
//! TTL from now. A ring change starts every server over: the node that
//! takes over a server waits one whole TTL before it may expire it, since
//! the previous owner may have heard beats it never saw.
//!
//! Observations and the time come in as arguments and decisions come out;
//! `owner.rs` probes, proposes and reads the clock. The std `Mutex` is
//! shared by the heartbeat handler and the shell's loop, and no await
//! happens under it.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::state::StorageServer;

/// How long a due server waits before it is due again, so a failed
/// proposal is retried, not spun on.
const RETRY_DUE: Duration = Duration::from_secs(1);

/// The key a storage server's owner is found by on the ownership ring.
pub use ::herald_client::ring::storage_key as ring_key;

/// One heartbeat-kept server this node owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    /// When its TTL runs out without a beat.
    pub deadline: Instant,
    /// Its heartbeat TTL.
    pub ttl: Duration,
    /// The spell of being up an expiry would end.
    pub up_since_ms: u64,
    /// Its deadline passed and it was handed out for an expiry (which may
    /// still commit): a beat of this spell must start a new one.
    pub expiring: bool,
}

#[derive(Default)]
struct Inner {
    /// The ownership epoch `tracked` was built under.
    epoch: Option<u64>,
    tracked: BTreeMap<String, Beat>,
    expired_total: u64,
}

/// The heartbeat-kept storage servers this node owns; cheap to share
/// (inside `Herald`).
#[derive(Default)]
pub struct StorageBeats {
    inner: Mutex<Inner>,
}

impl StorageBeats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A beat of `server` (as the committed state shows it) at `now`, on
    /// this node: its deadline moves to a TTL from now when this node owns
    /// it (`mine`) and it is up with a heartbeat TTL. A beat that reached a
    /// node that no longer owns the server is only answered. False when
    /// this spell's deadline already passed here and its expiry may be
    /// under way: the beat must start a new spell (and then beat again),
    /// or it would be answered "up" while the expiry commits after it.
    pub fn beat(&self, now: Instant, server: &StorageServer, mine: bool) -> bool {
        let mut inner = self.lock();
        if !(mine && server.up && server.heartbeat_ttl_ms > 0) {
            return true;
        }
        let id = &server.server_id;
        if inner
            .tracked
            .get(id)
            .is_some_and(|b| b.expiring && b.up_since_ms == server.up_since_ms)
        {
            return false;
        }
        let ttl = Duration::from_millis(server.heartbeat_ttl_ms);
        let beat = Beat {
            deadline: now + ttl,
            ttl,
            up_since_ms: server.up_since_ms,
            expiring: false,
        };
        inner.tracked.insert(id.clone(), beat);
        true
    }

    /// Follows the committed `servers` under ownership `epoch` at `now`:
    /// tracks every server `mine` says this node owns that is up with a
    /// heartbeat TTL (a newly seen one, or one that went up again, gets a
    /// full TTL), and forgets the rest. A new epoch starts every server
    /// over with a full TTL.
    pub fn follow<'a>(
        &self,
        now: Instant,
        epoch: u64,
        servers: impl Iterator<Item = &'a StorageServer>,
        mine: impl Fn(&str) -> bool,
    ) {
        let mut inner = self.lock();
        if inner.epoch != Some(epoch) {
            inner.epoch = Some(epoch);
            inner.tracked.clear();
        }
        let mut next = BTreeMap::new();
        for s in servers {
            if !(s.up && s.heartbeat_ttl_ms > 0 && mine(&s.server_id)) {
                continue;
            }
            let ttl = Duration::from_millis(s.heartbeat_ttl_ms);
            let kept = inner
                .tracked
                .get(&s.server_id)
                .filter(|b| b.up_since_ms == s.up_since_ms && b.ttl == ttl);
            let beat = kept.copied().unwrap_or(Beat {
                deadline: now + ttl,
                ttl,
                up_since_ms: s.up_since_ms,
                expiring: false,
            });
            next.insert(s.server_id.clone(), beat);
        }
        inner.tracked = next;
    }

    /// Servers whose deadline passed by `now`, with the epoch they were
    /// judged under (`None` before the first [`Self::follow`]); each is
    /// marked expiring (from now on a beat of that spell starts a new one,
    /// see [`Self::beat`]) and its deadline moves a second on, so a failed
    /// proposal is retried.
    pub fn due(&self, now: Instant) -> (Option<u64>, Vec<(String, Beat)>) {
        let mut inner = self.lock();
        let epoch = inner.epoch;
        let mut out = Vec::new();
        for (id, b) in inner.tracked.iter_mut() {
            if b.deadline <= now {
                b.expiring = true;
                out.push((id.clone(), *b));
                b.deadline = now + RETRY_DUE;
            }
        }
        (epoch, out)
    }

    /// The expiry of `server_id`'s spell up since `up_since_ms` was
    /// decided: `committed`, or refused (it went up again, was marked, or
    /// the ring moved on). Either way that spell is no longer tracked.
    pub fn expired(&self, server_id: &str, up_since_ms: u64, committed: bool) {
        let mut inner = self.lock();
        if inner
            .tracked
            .get(server_id)
            .is_some_and(|b| b.up_since_ms == up_since_ms)
        {
            inner.tracked.remove(server_id);
        }
        if committed {
            inner.expired_total += 1;
        }
    }

    /// Heartbeat-kept servers this node owns and watches.
    pub fn tracked_count(&self) -> usize {
        self.lock().tracked.len()
    }

    /// Storage expiries this node has had committed.
    pub fn expired_total(&self) -> u64 {
        self.lock().expired_total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn server(id: &str, up: bool, ttl_ms: u64, up_since_ms: u64) -> StorageServer {
        StorageServer {
            server_id: id.into(),
            address: format!("{id}:9000"),
            capacity_bytes: 100,
            reserved_bytes: 0,
            committed_bytes: 0,
            shares: 0,
            up,
            heartbeat_ttl_ms: ttl_ms,
            up_since_ms,
        }
    }

    fn due_ids(b: &StorageBeats, now: Instant) -> Vec<String> {
        b.due(now).1.into_iter().map(|(id, _)| id).collect()
    }

    #[test]
    fn an_owned_server_is_due_a_ttl_after_its_last_beat_and_no_sooner() {
        let t0 = Instant::now();
        let b = StorageBeats::default();
        let servers = [
            server("s1", true, 1_000, 7),
            server("s2", true, 0, 7),     // marked up: never expires
            server("s3", false, 0, 0),    // down
            server("s4", true, 1_000, 7), // another node's
        ];
        b.follow(t0, 1, servers.iter(), |id| id != "s4");
        assert_eq!(b.tracked_count(), 1);
        assert!(b.beat(t0 + ms(600), &servers[0], true));
        // The rescan keeps the beat's deadline (same spell, same TTL).
        b.follow(t0 + ms(700), 1, servers.iter(), |id| id != "s4");
        assert!(due_ids(&b, t0 + ms(1_599)).is_empty());
        let (epoch, due) = b.due(t0 + ms(1_600));
        assert_eq!(epoch, Some(1));
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].0.as_str(), due[0].1.up_since_ms), ("s1", 7));
        // Not proposed again until the retry delay passed.
        assert!(due_ids(&b, t0 + ms(2_599)).is_empty());
        assert_eq!(due_ids(&b, t0 + ms(2_600)), ["s1"]);
        b.expired("s1", 7, true);
        assert_eq!((b.tracked_count(), b.expired_total()), (0, 1));
    }

    /// The chaos run that found it: the owner's expiry proposal stalled in
    /// a partition while the server's next beats were answered "up"; the
    /// expiry then committed after them. Once handed out for an expiry, a
    /// spell takes no beat: the beat must start a new spell.
    #[test]
    fn a_beat_after_the_deadline_of_its_spell_passed_must_start_a_new_spell() {
        let t0 = Instant::now();
        let b = StorageBeats::default();
        let s1 = server("s1", true, 1_000, 7);
        b.follow(t0, 1, [s1.clone()].iter(), |_| true);
        assert!(b.beat(t0 + ms(900), &s1, true), "in time");
        assert_eq!(due_ids(&b, t0 + ms(1_900)), ["s1"]);
        assert!(
            !b.beat(t0 + ms(1_950), &s1, true),
            "its expiry is under way"
        );
        // Still refused on a rescan of the same spell, and while retried.
        b.follow(t0 + ms(2_000), 1, [s1.clone()].iter(), |_| true);
        assert!(!b.beat(t0 + ms(2_000), &s1, true));
        // The new spell the beat started takes beats again.
        let s2 = server("s1", true, 1_000, 8);
        assert!(b.beat(t0 + ms(2_100), &s2, true));
        assert!(b.beat(t0 + ms(2_200), &s2, true));
        assert!(due_ids(&b, t0 + ms(3_199)).is_empty());
        // The refused expiry of the old spell leaves the new one alone.
        b.expired("s1", 7, false);
        assert_eq!(b.tracked_count(), 1);
    }

    #[test]
    fn a_beat_off_the_owner_or_of_a_server_that_is_not_heartbeat_kept_is_only_answered() {
        let t0 = Instant::now();
        let b = StorageBeats::default();
        assert!(b.beat(t0, &server("s1", true, 1_000, 7), false));
        assert!(b.beat(t0, &server("s2", true, 0, 7), true));
        assert!(b.beat(t0, &server("s3", false, 0, 0), true));
        assert_eq!(b.tracked_count(), 0);
    }

    #[test]
    fn a_new_spell_a_new_ttl_or_a_ring_change_starts_over_with_a_full_ttl() {
        let t0 = Instant::now();
        let b = StorageBeats::default();
        let up = |since, ttl| [server("s1", true, ttl, since)];
        b.follow(t0, 1, up(7, 1_000).iter(), |_| true);
        // It went down and up again: the old deadline does not carry over.
        b.follow(t0 + ms(900), 1, up(9, 1_000).iter(), |_| true);
        assert!(due_ids(&b, t0 + ms(1_899)).is_empty());
        assert_eq!(due_ids(&b, t0 + ms(1_900)), ["s1"]);
        // A refused expiry of an older spell leaves the newer one tracked.
        b.expired("s1", 7, false);
        assert_eq!(b.tracked_count(), 1);
        // A longer TTL: a full one from now.
        b.follow(t0 + ms(2_000), 1, up(9, 5_000).iter(), |_| true);
        assert!(due_ids(&b, t0 + ms(6_999)).is_empty());
        // A ring change: full grace under the new epoch, whatever was due.
        b.follow(t0 + ms(7_000), 2, up(9, 5_000).iter(), |_| true);
        assert!(due_ids(&b, t0 + ms(11_999)).is_empty());
        let (epoch, due) = b.due(t0 + ms(12_000));
        assert_eq!((epoch, due.len()), (Some(2), 1));
        // No longer ours, or down: forgotten.
        b.follow(t0 + ms(12_100), 2, up(9, 5_000).iter(), |_| false);
        assert_eq!(b.tracked_count(), 0);
        b.follow(
            t0 + ms(12_200),
            2,
            [server("s1", false, 0, 0)].iter(),
            |_| true,
        );
        assert_eq!(b.tracked_count(), 0);
    }
}
