//! Pool metrics: accounts of each pool by state (sampled at scrape time,
//! with a bounded number of series), leases granted and leases denied by
//! reason (counted as each replica applies them), and each unit's response
//! time beside the target its spec promises (P-iptv's QoS, acted on: a
//! dashboard panel draws both).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use super::FloatGauge;
use prometheus_client::registry::Registry;

use crate::state::{self, Command, State, StateError};

/// Pools with a series of their own in `herald_pool_accounts`; the
/// accounts of any further pools (by id) are summed under `pool="other",
/// unit="other"`. Pools are made by requests, so their number is the
/// callers' to grow.
pub const MAX_POOL_SERIES: usize = 100;

/// Units with a series of their own in `herald_unit_response_seconds` and
/// `herald_unit_response_target_seconds`; the calls of any further units
/// are counted under `unit="other"`.
pub const MAX_UNIT_SERIES: usize = 100;

/// `{unit}`: a unit id, or `other`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UnitLabel {
    /// Unit id.
    pub unit: String,
}

/// `{reason}`: why a lease was denied.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The state error's kind: `exhausted`, `not_found`, `precondition`,
    /// `invalid`, `exists`, `denied`.
    pub reason: &'static str,
}

/// `{pool, unit, state}`: accounts of one pool in one state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// Pool id.
    pub pool: String,
    /// Unit id.
    pub unit: String,
    /// `free`, `leased`, or `expired` (leases ended by expiry, ever).
    pub state: &'static str,
}

/// Pool metrics (see the module doc).
pub struct PoolDefs {
    /// `herald_pool_accounts{pool,unit,state}` (pools past the first
    /// [`MAX_POOL_SERIES`] summed under `other`).
    pub accounts: Family<PoolLabels, Gauge>,
    /// `herald_lease_grants_total`: new leases (retries answered with the
    /// same lease are not counted).
    pub lease_grants: Counter,
    /// `herald_lease_denials_total{reason}`.
    pub lease_denials: Family<ReasonLabel, Counter>,
    /// `herald_unit_response_seconds{unit}`: how long this node took to
    /// answer a unit's viewers (LeaseAccount, LeaseAndLogin, AccountLogin),
    /// from the call's arrival to its answer.
    pub unit_response: Family<UnitLabel, Histogram>,
    /// `herald_unit_response_target_seconds{unit}`: the response time the
    /// unit's spec promises (0 = none), sampled at scrape.
    pub unit_target: Family<UnitLabel, FloatGauge>,
    /// The units given a series of their own so far (at most
    /// [`MAX_UNIT_SERIES`]).
    unit_series: std::sync::Mutex<std::collections::BTreeSet<u64>>,
}

impl PoolDefs {
    /// Registers every metric of this file in `r`.
    pub(super) fn new(r: &mut Registry) -> Self {
        Self {
            accounts: reg!(
                r,
                "herald_pool_accounts",
                "Pool accounts by state (expired: leases ended by expiry, ever)",
                Family::default()
            ),
            lease_grants: reg!(
                r,
                "herald_lease_grants",
                "New leases granted",
                Counter::default()
            ),
            lease_denials: reg!(
                r,
                "herald_lease_denials",
                "Lease requests refused, by reason",
                Family::default()
            ),
            unit_response: reg!(
                r,
                "herald_unit_response_seconds",
                "Time to answer a unit's viewers (lease, login), by unit",
                Family::new_with_constructor(super::latency as fn() -> Histogram)
            ),
            unit_target: reg!(
                r,
                "herald_unit_response_target_seconds",
                "The response time a unit promises (its spec), by unit",
                Family::default()
            ),
            unit_series: Default::default(),
        }
    }

    /// Creates the known label combinations at zero.
    pub(super) fn precreate(&self) {
        for reason in [
            "exhausted",
            "not_found",
            "precondition",
            "invalid",
            "exists",
            "denied",
        ] {
            let _ = self.lease_denials.get_or_create(&ReasonLabel { reason });
        }
    }

    /// Counts an applied lease: granted (not a replay) or denied.
    pub(super) fn observe_apply(
        &self,
        cmd: &Command,
        result: &Result<state::Response, StateError>,
    ) {
        match (cmd, result) {
            (
                Command::Lease(_),
                Ok(state::Response::Lease {
                    replayed: false, ..
                }),
            ) => {
                self.lease_grants.inc();
            }
            (Command::Lease(_), Err(e)) => {
                let reason = match e {
                    StateError::ResourceExhausted { .. } => "exhausted",
                    StateError::NotFound { .. } => "not_found",
                    StateError::FailedPrecondition { .. } => "precondition",
                    StateError::InvalidArgument { .. } => "invalid",
                    StateError::AlreadyExists { .. } => "exists",
                    StateError::PermissionDenied { .. } => "denied",
                };
                self.lease_denials
                    .get_or_create(&ReasonLabel { reason })
                    .inc();
            }
            _ => {}
        }
    }

    /// The label of `unit_id`: its own while fewer than
    /// [`MAX_UNIT_SERIES`] units have one, else `other`.
    fn unit_label(&self, unit_id: u64) -> UnitLabel {
        let mut seen = self.unit_series.lock().unwrap_or_else(|e| e.into_inner());
        let own =
            seen.contains(&unit_id) || { seen.len() < MAX_UNIT_SERIES && seen.insert(unit_id) };
        UnitLabel {
            unit: if own {
                unit_id.to_string()
            } else {
                "other".to_string()
            },
        }
    }

    /// Records one answer to a unit's viewer that took `took`.
    pub fn observe_unit_response(&self, unit_id: u64, took: std::time::Duration) {
        self.unit_response
            .get_or_create(&self.unit_label(unit_id))
            .observe(took.as_secs_f64());
    }

    /// Sets the accounts of each pool by state (past [`MAX_POOL_SERIES`]
    /// pools, summed under `other`).
    pub fn sample(&self, state: &State) {
        self.accounts.clear();
        for (i, p) in state.pools(None).into_iter().enumerate() {
            let (pool, unit) = if i < MAX_POOL_SERIES {
                (p.pool_id.to_string(), p.unit_id.to_string())
            } else {
                ("other".to_string(), "other".to_string())
            };
            for (state, n) in [
                ("free", p.free as u64),
                ("leased", p.leased as u64),
                ("expired", p.expired_total),
            ] {
                self.accounts
                    .get_or_create(&PoolLabels {
                        pool: pool.clone(),
                        unit: unit.clone(),
                        state,
                    })
                    .inc_by(n as i64);
            }
        }
        self.unit_target.clear();
        for platform in state.platforms() {
            for unit in &platform.units {
                let label = self.unit_label(unit.unit_id);
                if label.unit != "other" {
                    self.unit_target
                        .get_or_create(&label)
                        .set(f64::from(unit.spec.response_time_ms) / 1000.0);
                }
            }
        }
    }
}
