//! Cluster clock metrics: this node's offset from its system clock, the
//! round trip of the last sync and the time since it (see
//! [`crate::timesync`]).

use prometheus_client::registry::Registry;

use super::FloatGauge;
use crate::clock::ClusterClock;

/// Clock metrics (see the module doc).
pub struct ClockDefs {
    /// `herald_clock_offset_seconds`: cluster clock minus system clock.
    pub offset_seconds: FloatGauge,
    /// `herald_clock_sync_delay_seconds`: round trip of the last sync.
    pub sync_delay_seconds: FloatGauge,
    /// `herald_clock_last_sync_age_seconds`: since the last sync; -1 = never.
    pub last_sync_age_seconds: FloatGauge,
}

impl ClockDefs {
    /// Registers every metric of this file in `r`.
    pub(super) fn new(r: &mut Registry) -> Self {
        Self {
            offset_seconds: reg!(
                r,
                "herald_clock_offset_seconds",
                "Cluster clock minus system clock",
                FloatGauge::default()
            ),
            sync_delay_seconds: reg!(
                r,
                "herald_clock_sync_delay_seconds",
                "Round-trip delay of the last clock sync",
                FloatGauge::default()
            ),
            last_sync_age_seconds: reg!(
                r,
                "herald_clock_last_sync_age_seconds",
                "Seconds since the last clock sync (-1: never)",
                FloatGauge::default()
            ),
        }
    }

    /// Sets the offset, the last sync's delay and its age from `clock`.
    pub fn sample(&self, clock: &ClusterClock) {
        self.offset_seconds.set(clock.offset_ns() as f64 / 1e9);
        self.sync_delay_seconds
            .set(clock.sync_delay_ns() as f64 / 1e9);
        let last = clock.last_sync_ms();
        self.last_sync_age_seconds.set(if last == 0 {
            -1.0
        } else {
            clock.now_ms().saturating_sub(last) as f64 / 1e3
        });
    }
}
