//! Media-sharing metrics: each storage server's capacity, reserved and
//! committed bytes and whether it is up (sampled at scrape time, with a
//! bounded number of series), admissions and access grants, refusals by
//! reason and heartbeat expiries (counted as each replica applies them).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::state::share::{ShareCommand, ShareOutcome};
use crate::state::{self, Command, Reason, State, StateError};

/// Storage servers with series of their own; any further ones (by id) are
/// summed under `server="other"`. Servers are registered by admins, but
/// keep the scrape bounded all the same.
pub const MAX_STORAGE_SERIES: usize = 100;

/// `{server, kind}`: bytes of one storage server.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StorageBytesLabels {
    /// The server id.
    pub server: String,
    /// `capacity`, `reserved` or `committed`.
    pub kind: &'static str,
}

/// `{server}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StorageLabel {
    /// The server id.
    pub server: String,
}

/// `{op, reason}`: a refused share or access.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShareRefusalLabels {
    /// `share` (upload admission) or `access`.
    pub op: &'static str,
    /// `storage_down`, `storage_full`, `not_friend`, `quota`, `ended`,
    /// `invalid`, `denied` or `other`.
    pub reason: &'static str,
}

/// Media-sharing metrics (see the module doc).
pub struct ShareDefs {
    /// `herald_storage_bytes{server,kind}`.
    pub storage_bytes: Family<StorageBytesLabels, Gauge>,
    /// `herald_storage_up{server}`: 1 while it takes uploads.
    pub storage_up: Family<StorageLabel, Gauge>,
    /// `herald_share_admissions_total`: uploads admitted (retries answered
    /// with the same share are not counted).
    pub admissions: Counter,
    /// `herald_share_access_grants_total`.
    pub access_grants: Counter,
    /// `herald_share_refusals_total{op,reason}`.
    pub refusals: Family<ShareRefusalLabels, Counter>,
    /// `herald_storage_expiries_total`: servers marked down by their owner
    /// when a heartbeat TTL passed without a beat.
    pub expiries: Counter,
}

const REASONS: [&str; 8] = [
    "storage_down",
    "storage_full",
    "not_friend",
    "quota",
    "ended",
    "invalid",
    "denied",
    "other",
];

fn reason_label(e: &StateError) -> &'static str {
    match e.reason() {
        Reason::StorageDown => "storage_down",
        Reason::StorageFull => "storage_full",
        Reason::NotFriend => "not_friend",
        Reason::QuotaExceeded => "quota",
        Reason::ShareEnded => "ended",
        Reason::InvalidField => "invalid",
        Reason::WrongSecret => "denied",
        _ => "other",
    }
}

impl ShareDefs {
    /// Registers every metric of this file in `r`.
    pub(super) fn new(r: &mut Registry) -> Self {
        Self {
            storage_bytes: reg!(
                r,
                "herald_storage_bytes",
                "Bytes of each storage server: capacity, reserved (uncommitted uploads), committed",
                Family::default()
            ),
            storage_up: reg!(
                r,
                "herald_storage_up",
                "1 while the storage server takes uploads (marked up, not marked down or expired since)",
                Family::default()
            ),
            admissions: reg!(
                r,
                "herald_share_admissions",
                "Media uploads admitted (bytes reserved)",
                Counter::default()
            ),
            access_grants: reg!(
                r,
                "herald_share_access_grants",
                "Access parameters issued to friends",
                Counter::default()
            ),
            refusals: reg!(
                r,
                "herald_share_refusals",
                "Upload admissions and access requests refused, by reason",
                Family::default()
            ),
            expiries: reg!(
                r,
                "herald_storage_expiries",
                "Storage servers marked down by their owner node: a heartbeat TTL passed without a beat",
                Counter::default()
            ),
        }
    }

    /// Creates the known label combinations at zero.
    pub(super) fn precreate(&self) {
        for op in ["share", "access"] {
            for reason in REASONS {
                let _ = self
                    .refusals
                    .get_or_create(&ShareRefusalLabels { op, reason });
            }
        }
    }

    /// Counts an applied share or access: admitted, granted or refused.
    pub(super) fn observe_apply(
        &self,
        cmd: &Command,
        result: &Result<state::Response, StateError>,
    ) {
        let Command::Share(cmd) = cmd else {
            return;
        };
        let op = match cmd {
            ShareCommand::Share(_) => "share",
            ShareCommand::Grant(_) => "access",
            ShareCommand::ExpireStorage(_) => {
                if result.is_ok() {
                    self.expiries.inc();
                }
                return;
            }
            _ => return,
        };
        match result {
            Ok(state::Response::Share(ShareOutcome::Share {
                replayed: false, ..
            })) => self.admissions.inc(),
            Ok(state::Response::Share(ShareOutcome::Access { .. })) => self.access_grants.inc(),
            Ok(_) => 0,
            Err(e) => self
                .refusals
                .get_or_create(&ShareRefusalLabels {
                    op,
                    reason: reason_label(e),
                })
                .inc(),
        };
    }

    /// Sets each storage server's bytes and health (past
    /// [`MAX_STORAGE_SERIES`] servers, summed under `other`).
    pub fn sample(&self, state: &State) {
        self.storage_bytes.clear();
        self.storage_up.clear();
        for (i, s) in state.share().servers().enumerate() {
            let server = if i < MAX_STORAGE_SERIES {
                s.server_id.clone()
            } else {
                "other".to_string()
            };
            for (kind, n) in [
                ("capacity", s.capacity_bytes),
                ("reserved", s.reserved_bytes),
                ("committed", s.committed_bytes),
            ] {
                self.storage_bytes
                    .get_or_create(&StorageBytesLabels {
                        server: server.clone(),
                        kind,
                    })
                    .inc_by(i64::try_from(n).unwrap_or(i64::MAX));
            }
            self.storage_up
                .get_or_create(&StorageLabel { server })
                .inc_by(i64::from(s.is_up()));
        }
    }
}
