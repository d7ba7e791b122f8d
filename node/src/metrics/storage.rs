//! Storage metrics: fdatasync latency, the log's size on disk, the free
//! space on the data dir and its alarm, and the records the replicated
//! state keeps beside the quotas that bound them (what fills a node up).

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::latency;
use crate::raft::free_space::FreeSpace;
use crate::state::State;

/// `{op}`: what an fdatasync made durable.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    /// `append` (a log segment), `vote` (the hard state file: the vote or
    /// the purge point, with the appends of the same group) or `snapshot`.
    pub op: &'static str,
}

/// `{kind}`: a kind of record the quotas bound.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RecordLabel {
    /// `users`, `sessions` or `accounts`.
    pub kind: &'static str,
}

/// Storage metrics (see the module doc).
pub struct StorageDefs {
    /// `herald_storage_fsync_seconds{op}`: fdatasync latency.
    pub fsync_seconds: Family<OpLabel, Histogram>,
    /// `herald_storage_disk_bytes`: the log segments plus sled, on disk.
    pub disk_bytes: Gauge,
    /// `herald_storage_log_entries`: Raft log entries kept (not yet purged).
    pub log_entries: Gauge,
    /// `herald_storage_free_bytes`: free bytes on the data dir's file system
    /// at the last check.
    pub free_bytes: Gauge,
    /// `herald_storage_nospace_alarm`: 1 while the free-space alarm refuses
    /// new writes.
    pub nospace_alarm: Gauge,
    /// `herald_state_records{kind}`: records the state keeps, beside
    /// `herald_state_quota{kind}`, the quota that bounds them.
    pub state_records: Family<RecordLabel, Gauge>,
    /// `herald_state_quota{kind}`.
    pub state_quota: Family<RecordLabel, Gauge>,
}

impl StorageDefs {
    /// Registers every metric of this file in `r`.
    pub(super) fn new(r: &mut Registry) -> Self {
        Self {
            fsync_seconds: reg!(
                r,
                "herald_storage_fsync_seconds",
                "fdatasync latency of the log (append), of the hard state file (vote, purge point) and of snapshots",
                Family::<OpLabel, Histogram>::new_with_constructor(latency as fn() -> Histogram)
            ),
            disk_bytes: reg!(
                r,
                "herald_storage_disk_bytes",
                "Raft log segments plus sled, bytes on disk",
                Gauge::default()
            ),
            log_entries: reg!(
                r,
                "herald_storage_log_entries",
                "Raft log entries kept on disk",
                Gauge::default()
            ),
            free_bytes: reg!(
                r,
                "herald_storage_free_bytes",
                "Free bytes on the data dir's file system at the last check",
                Gauge::default()
            ),
            nospace_alarm: reg!(
                r,
                "herald_storage_nospace_alarm",
                "1 while the free-space alarm refuses new writes (storage.min_free_bytes)",
                Gauge::default()
            ),
            state_records: reg!(
                r,
                "herald_state_records",
                "Records the replicated state keeps, by kind",
                Family::default()
            ),
            state_quota: reg!(
                r,
                "herald_state_quota",
                "The quota on each kind of record ([quotas])",
                Family::default()
            ),
        }
    }

    /// Creates the known label combinations at zero.
    pub(super) fn precreate(&self) {
        for op in ["append", "vote", "snapshot"] {
            let _ = self.fsync_seconds.get_or_create(&OpLabel { op });
        }
    }

    /// Times one `fdatasync` (`append`, `vote`: the log; `snapshot`).
    pub fn observe_fsync(&self, op: &'static str, started: Instant) {
        self.fsync_seconds
            .get_or_create(&OpLabel { op })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Sets the log's size and entries and the free space and its alarm.
    pub fn sample(&self, disk_bytes: u64, log_entries: usize, space: &FreeSpace) {
        self.disk_bytes.set(disk_bytes as i64);
        self.log_entries.set(log_entries as i64);
        if space.free_bytes() != u64::MAX {
            self.free_bytes
                .set(i64::try_from(space.free_bytes()).unwrap_or(i64::MAX));
        }
        self.nospace_alarm.set(space.alarm() as i64);
    }

    /// Sets the records of each kind the state keeps and their quotas.
    pub fn sample_records(&self, state: &State) {
        let counts = state.counts();
        let q = state.quotas();
        for (kind, n, quota) in [
            ("users", counts.users, q.users),
            ("sessions", counts.sessions, q.sessions),
            ("accounts", counts.accounts, q.accounts),
        ] {
            let label = RecordLabel { kind };
            self.state_records
                .get_or_create(&label)
                .set(i64::try_from(n).unwrap_or(i64::MAX));
            self.state_quota
                .get_or_create(&label)
                .set(i64::try_from(quota).unwrap_or(i64::MAX));
        }
    }
}
