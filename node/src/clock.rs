//! The cluster clock: the system clock plus an offset this node keeps.
//!
//! Herald never sets the system clock (no chrony, no root). The leader
//! stamps every proposal with its cluster time; the state machine takes time
//! only from entries, so expiry is the same on every replica whatever the
//! local clocks say. The offset is kept in nanoseconds so a sync on loopback
//! can hold followers well inside a millisecond of the leader.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// System time in nanoseconds since the Unix epoch.
pub fn system_ns() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

#[derive(Debug, Default)]
struct Shared {
    offset_ns: AtomicI64,
    last_sync_ms: AtomicU64,
    sync_delay_ns: AtomicU64,
}

/// This node's view of cluster time. Cheap to clone; all clones share it.
#[derive(Clone, Debug, Default)]
pub struct ClusterClock {
    shared: Arc<Shared>,
}

impl ClusterClock {
    /// A clock with the given initial offset from the system clock.
    pub fn with_offset_ms(offset_ms: i64) -> Self {
        let c = ClusterClock::default();
        c.set_offset_ns(offset_ms.saturating_mul(1_000_000));
        c
    }

    /// Cluster time in nanoseconds since the Unix epoch.
    pub fn now_ns(&self) -> i64 {
        system_ns() + self.offset_ns()
    }

    /// Cluster time in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        (self.now_ns() / 1_000_000).max(0) as u64
    }

    /// The current offset from the system clock.
    pub fn offset_ns(&self) -> i64 {
        self.shared.offset_ns.load(Ordering::Relaxed)
    }

    /// Replaces the offset (a clock step, or skew injected by tests).
    pub fn set_offset_ns(&self, offset_ns: i64) {
        // Corrections are logged by whoever makes them (timesync, admin).
        self.shared.offset_ns.store(offset_ns, Ordering::Relaxed);
    }

    /// Records a completed sync: when (cluster ms) and its round-trip delay.
    pub fn record_sync(&self, at_ms: u64, delay_ns: u64) {
        self.shared.last_sync_ms.store(at_ms, Ordering::Relaxed);
        self.shared.sync_delay_ns.store(delay_ns, Ordering::Relaxed);
    }

    /// Cluster time of the last sync (0 = never).
    pub fn last_sync_ms(&self) -> u64 {
        self.shared.last_sync_ms.load(Ordering::Relaxed)
    }

    /// Round-trip delay of the last sync.
    pub fn sync_delay_ns(&self) -> u64 {
        self.shared.sync_delay_ns.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_moves_cluster_time_and_is_shared_by_clones() {
        let c = ClusterClock::with_offset_ms(5_000);
        let other = c.clone();
        let skew = other.now_ns() - system_ns();
        assert!((4_990_000_000..5_010_000_000).contains(&skew), "{skew}");
        c.set_offset_ns(0);
        assert!((other.now_ns() - system_ns()).abs() < 10_000_000);
    }
}
