//! The cluster clock: the system clock plus an offset this node keeps.
//!
//! Herald never sets the system clock. The leader stamps every proposal with
//! its cluster time; the state machine takes time only from entries, so expiry
//! is the same on every replica whatever the local clocks say.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// This node's view of cluster time. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct ClusterClock {
    offset_ms: Arc<AtomicI64>,
}

impl ClusterClock {
    /// A clock with the given initial offset from the system clock.
    pub fn with_offset(offset_ms: i64) -> Self {
        let c = ClusterClock::default();
        c.set_offset_ms(offset_ms);
        c
    }

    /// Cluster time in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        let sys = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        (sys + self.offset_ms.load(Ordering::Relaxed)).max(0) as u64
    }

    /// The current offset from the system clock.
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }

    /// Replaces the offset (clock correction, or skew injected by tests).
    pub fn set_offset_ms(&self, offset_ms: i64) {
        self.offset_ms.store(offset_ms, Ordering::Relaxed);
    }
}
