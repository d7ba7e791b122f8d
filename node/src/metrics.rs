//! Prometheus metrics: the one registry and every metric definition.
//!
//! **One handle per node, not a global.** [`Metrics`] is created in
//! `server::start`, kept in the [`Herald`] handle and given to the log and
//! state stores. A process-wide global would be shorter to reach, but a
//! process may run several nodes (`server::start` is a library call, and
//! tests may use it), and each must report only its own numbers. The handle
//! is an `Arc`, so clones are cheap; every metric inside is lock-free.
//!
//! Values arrive three ways:
//! - **counted where they happen**: fsync latency (log store), proposals and
//!   their latency ([`Herald::propose`]), snapshot builds/installs and the
//!   domain events of every applied entry (state store), API requests (the
//!   [`crate::api::layer`] tower layer on every server);
//! - **watched**: [`watch_raft`] follows openraft's server metrics channel
//!   to count leader and membership changes (and log one line for each);
//! - **sampled at scrape time** ([`render`]): Raft indexes and replication
//!   lag, the log's size, free space and its alarm, users online, pool
//!   accounts, the cluster clock and the process (`/proc/self`), so gauges
//!   are exact when Prometheus reads them and nothing runs between scrapes
//!   (free space itself is read by `raft::free_space::run`).
//!
//! Domain counters are counted on *every* replica as it applies an entry:
//! each node reports the same cluster-wide rate (dashboards take the `max`
//! over nodes), and a node that never saw the client request still counts
//! it. Names follow Prometheus conventions: `herald_` prefix, base units
//! (seconds, bytes), `_total` on counters (added by the encoder).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::node::Herald;
use crate::raft::Proposal;
use crate::state::{self, Command, LogoutReason, StateError};

/// A float gauge (seconds, ratios).
pub type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Latency histogram: 100 µs .. ~6.5 s in powers of two.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// `{result}`: how a proposal ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `committed` or `failed`.
    pub result: &'static str,
}

/// `{peer}`: a follower's Raft id.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    /// Raft id of the follower.
    pub peer: String,
}

/// `{op}`: what an fdatasync made durable.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    /// `append` (a log segment), `vote` (the hard state file: the vote or
    /// the purge point, with the appends of the same group) or `snapshot`.
    pub op: &'static str,
}

/// `{server, method}`: one API endpoint.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// `client` (Herald + Admin gRPC), `peer` (Raft gRPC) or `http`.
    pub server: &'static str,
    /// gRPC path (`/herald.v1.Herald/Login`) or HTTP route (`/v1/presence`).
    pub method: String,
}

/// `{server, method, code}`: one API endpoint and how it answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// As in [`MethodLabels`].
    pub server: &'static str,
    /// As in [`MethodLabels`].
    pub method: String,
    /// gRPC status name (`OK`, `InvalidArgument`, ...) or HTTP status code.
    pub code: String,
}

/// `{server}`: one listener.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabel {
    /// `client`, `peer` or `http`.
    pub server: &'static str,
}

/// `{listener}`: one TCP listener (`client`, `peer` or `http`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    /// `client`, `peer` or `http`.
    pub listener: &'static str,
}

/// `{server, code, permission}`: a request the auth guard turned away.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `client`, `peer` or `http`.
    pub server: &'static str,
    /// `unauthenticated` or `permission_denied`.
    pub code: &'static str,
    /// The permission the call needed (`publisher`, `admin`, ...).
    pub permission: &'static str,
}

/// `{client_type}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientTypeLabel {
    /// One of [`KNOWN_CLIENT_TYPES`], or `other` for every custom string:
    /// a client type comes from the request, so taking it as it came would
    /// let any caller grow the series (and Prometheus' memory) at will.
    pub client_type: &'static str,
}

/// The client types that get a series of their own; any other is `other`.
pub const KNOWN_CLIENT_TYPES: [&str; 4] = ["pc", "mobile", "web", "tv"];

/// The `client_type` label for a client type from a request.
pub fn client_type_label(client_type: &str) -> &'static str {
    KNOWN_CLIENT_TYPES
        .iter()
        .find(|t| **t == client_type)
        .copied()
        .unwrap_or("other")
}

/// Pools with a series of their own in `herald_pool_accounts`; the
/// accounts of any further pools (by id) are summed under `pool="other",
/// unit="other"`. Pools are made by requests, so their number is the
/// callers' to grow.
pub const MAX_POOL_SERIES: usize = 100;

/// `{kind}`: a presence change.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabel {
    /// `login`, `logout`, `expired` or `permission`.
    pub kind: &'static str,
}

/// `{outcome}`: how a handoff ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `accepted`, `refused` (no compatible terminal) or `rejected` (bad
    /// request: not the holder, unknown session, ...).
    pub outcome: &'static str,
}

/// `{reason}`: why a lease was denied.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The state error's kind: `exhausted`, `not_found`, `precondition`,
    /// `invalid`, `exists`, `denied`.
    pub reason: &'static str,
}

/// `{kind}`: a kind of record the quotas bound.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RecordLabel {
    /// `users`, `sessions` or `accounts`.
    pub kind: &'static str,
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

/// Every metric of a node. Reach it through [`Metrics`] (which derefs to it).
pub struct Defs {
    registry: Registry,

    /// `herald_raft_term`: current Raft term.
    pub raft_term: Gauge,
    /// `herald_raft_is_leader`: 1 on the leader.
    pub raft_is_leader: Gauge,
    /// `herald_raft_leader_changes_total`: times this node saw a new leader.
    pub raft_leader_changes: Counter,
    /// `herald_failover_takeovers_total`: campaigns this node started after
    /// every leader lease had run out (`failover::run_takeover`).
    pub takeovers: Counter,
    /// `herald_raft_membership_changes_total`: membership configs this node saw.
    pub raft_membership_changes: Counter,
    /// `herald_raft_voters`: voters in the current membership.
    pub raft_voters: Gauge,
    /// `herald_raft_learners`: learners in the current membership.
    pub raft_learners: Gauge,
    /// `herald_raft_last_log_index`.
    pub raft_last_log_index: Gauge,
    /// `herald_raft_commit_index`: committed as this node knows it.
    pub raft_commit_index: Gauge,
    /// `herald_raft_applied_index`.
    pub raft_applied_index: Gauge,
    /// `herald_raft_snapshot_index`: last index in the latest snapshot.
    pub raft_snapshot_index: Gauge,
    /// `herald_raft_proposals_total{result}`: proposals on this node as leader
    /// (`committed`, `failed` = outcome unknown, `not_leader` = refused unappended).
    pub raft_proposals: Family<ResultLabel, Counter>,
    /// `herald_raft_commit_seconds`: leader append to committed-and-applied.
    pub raft_commit_seconds: Histogram,
    /// `herald_raft_snapshot_builds_total`.
    pub raft_snapshot_builds: Counter,
    /// `herald_raft_snapshot_installs_total`: snapshots received from a leader.
    pub raft_snapshot_installs: Counter,
    /// `herald_raft_replication_lag_entries{peer}`: on the leader, entries
    /// each follower is behind the leader's last log index.
    pub raft_replication_lag: Family<PeerLabel, Gauge>,

    /// `herald_storage_fsync_seconds{op}`: fdatasync latency.
    pub storage_fsync_seconds: Family<OpLabel, Histogram>,
    /// `herald_storage_disk_bytes`: the log segments plus sled, on disk.
    pub storage_disk_bytes: Gauge,
    /// `herald_storage_log_entries`: Raft log entries kept (not yet purged).
    pub storage_log_entries: Gauge,
    /// `herald_storage_free_bytes`: free bytes on the data dir's file system
    /// at the last check.
    pub storage_free_bytes: Gauge,
    /// `herald_storage_nospace_alarm`: 1 while the free-space alarm refuses
    /// new writes.
    pub storage_nospace_alarm: Gauge,

    /// `herald_api_requests_total{server,method,code}`.
    pub api_requests: Family<RequestLabels, Counter>,
    /// `herald_api_request_seconds{server,method}`: until the response head
    /// (for a stream: until it started).
    pub api_request_seconds: Family<MethodLabels, Histogram>,
    /// `herald_api_in_flight_requests{server}`.
    pub api_in_flight: Family<ServerLabel, Gauge>,
    /// `herald_api_watch_streams`: open presence watch streams.
    pub api_watch_streams: Gauge,

    /// `herald_auth_refusals_total{server,code,permission}`: requests the
    /// guard turned away before any handler ran.
    pub auth_refusals: Family<RefusalLabels, Counter>,
    /// `herald_tls_handshake_failures_total{server}`: connections dropped
    /// during the TLS handshake (wrong CA, expired certificate, plaintext
    /// client, timeout).
    pub tls_handshake_failures: Family<ServerLabel, Counter>,
    /// `herald_connections_open{listener}`: accepted connections not yet
    /// closed (TLS handshakes in progress included).
    pub connections_open: Family<ListenerLabel, Gauge>,
    /// `herald_connections_refused_total{listener}`: connections closed at
    /// once because the listener was at its cap (`limits.max_*_connections`).
    pub connections_refused: Family<ListenerLabel, Counter>,
    /// `herald_security_insecure`: 1 when the node serves plaintext with no
    /// TLS (`insecure = true`).
    pub security_insecure: Gauge,
    /// `herald_security_testing_mode`: 1 when test hooks are on
    /// (`herald-node --testing`).
    pub security_testing_mode: Gauge,
    /// `herald_auth_enabled`: 1 while auth is enforced.
    pub auth_enabled: Gauge,

    /// `herald_presence_online_users{client_type}`: users with a client of
    /// that type online (custom types summed under `other`).
    pub presence_online: Family<ClientTypeLabel, Gauge>,
    /// `herald_presence_changes_total{kind}`: applied presence writes.
    pub presence_changes: Family<ChangeLabel, Counter>,
    /// `herald_session_handoffs_total{outcome}`.
    pub session_handoffs: Family<OutcomeLabel, Counter>,
    /// `herald_session_fenced_writes_total`: progress writes refused because
    /// the writer no longer holds the session (old terminal or epoch).
    pub session_fenced_writes: Counter,
    /// `herald_state_records{kind}`: records the state keeps, beside
    /// `herald_state_quota{kind}`, the quota that bounds them.
    pub state_records: Family<RecordLabel, Gauge>,
    /// `herald_state_quota{kind}`.
    pub state_quota: Family<RecordLabel, Gauge>,
    /// `herald_watch_history_bytes`: presence changes this replica keeps
    /// for watch resume (bounded by `quotas.watch_history_bytes`).
    pub watch_history_bytes: Gauge,
    /// `herald_pool_accounts{pool,unit,state}` (pools past the first
    /// [`MAX_POOL_SERIES`] summed under `other`).
    pub pool_accounts: Family<PoolLabels, Gauge>,
    /// `herald_lease_grants_total`: new leases (retries answered with the
    /// same lease are not counted).
    pub lease_grants: Counter,
    /// `herald_lease_denials_total{reason}`.
    pub lease_denials: Family<ReasonLabel, Counter>,

    /// `herald_clock_offset_seconds`: cluster clock minus system clock.
    pub clock_offset_seconds: FloatGauge,
    /// `herald_clock_sync_delay_seconds`: round trip of the last sync.
    pub clock_sync_delay_seconds: FloatGauge,
    /// `herald_clock_last_sync_age_seconds`: since the last sync; -1 = never.
    pub clock_last_sync_age_seconds: FloatGauge,
    /// `herald_ring_owned_users`: TTL clients whose uid the ring maps to this
    /// node and whose heartbeats it keeps (counting every owned record would
    /// scan the whole state on each scrape).
    pub ring_owned_users: Gauge,
}

/// Handle to a node's metrics; cheap to clone.
#[derive(Clone)]
pub struct Metrics(Arc<Defs>);

impl std::ops::Deref for Metrics {
    type Target = Defs;
    fn deref(&self) -> &Defs {
        &self.0
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

macro_rules! reg {
    ($r:expr, $name:literal, $help:literal, $m:expr) => {{
        let m = $m;
        $r.register($name, $help, m.clone());
        m
    }};
}

impl Metrics {
    /// A fresh registry with every metric registered, and the label values
    /// known in advance created at zero, so every series exists from the start.
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let r = &mut r;
        let hist_family =
            || Family::<OpLabel, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        let defs = Defs {
            raft_term: reg!(r, "herald_raft_term", "Current Raft term", Gauge::default()),
            raft_is_leader: reg!(
                r,
                "herald_raft_is_leader",
                "1 when this node is the Raft leader",
                Gauge::default()
            ),
            raft_leader_changes: reg!(
                r,
                "herald_raft_leader_changes",
                "Leader changes this node observed",
                Counter::default()
            ),
            takeovers: reg!(
                r,
                "herald_failover_takeovers",
                "Campaigns started after every leader lease had run out",
                Counter::default()
            ),
            raft_membership_changes: reg!(
                r,
                "herald_raft_membership_changes",
                "Membership configs this node observed",
                Counter::default()
            ),
            raft_voters: reg!(
                r,
                "herald_raft_voters",
                "Voters in the current membership",
                Gauge::default()
            ),
            raft_learners: reg!(
                r,
                "herald_raft_learners",
                "Learners in the current membership",
                Gauge::default()
            ),
            raft_last_log_index: reg!(
                r,
                "herald_raft_last_log_index",
                "Index of the last entry in the local log",
                Gauge::default()
            ),
            raft_commit_index: reg!(
                r,
                "herald_raft_commit_index",
                "Last committed index known to this node",
                Gauge::default()
            ),
            raft_applied_index: reg!(
                r,
                "herald_raft_applied_index",
                "Last index applied to the state machine",
                Gauge::default()
            ),
            raft_snapshot_index: reg!(
                r,
                "herald_raft_snapshot_index",
                "Last index included in the latest snapshot",
                Gauge::default()
            ),
            raft_proposals: reg!(
                r,
                "herald_raft_proposals",
                "Proposals made on this node as leader, by result",
                Family::default()
            ),
            raft_commit_seconds: reg!(
                r,
                "herald_raft_commit_seconds",
                "Leader: from proposing an entry to it being committed and applied",
                latency()
            ),
            raft_snapshot_builds: reg!(
                r,
                "herald_raft_snapshot_builds",
                "Snapshots built",
                Counter::default()
            ),
            raft_snapshot_installs: reg!(
                r,
                "herald_raft_snapshot_installs",
                "Snapshots installed from the leader",
                Counter::default()
            ),
            raft_replication_lag: reg!(
                r,
                "herald_raft_replication_lag_entries",
                "Leader only: entries each follower is behind the leader's log",
                Family::default()
            ),
            storage_fsync_seconds: reg!(
                r,
                "herald_storage_fsync_seconds",
                "fdatasync latency of the log (append), of the hard state file (vote, purge point) and of snapshots",
                hist_family()
            ),
            storage_disk_bytes: reg!(
                r,
                "herald_storage_disk_bytes",
                "Raft log segments plus sled, bytes on disk",
                Gauge::default()
            ),
            storage_log_entries: reg!(
                r,
                "herald_storage_log_entries",
                "Raft log entries kept on disk",
                Gauge::default()
            ),
            storage_free_bytes: reg!(
                r,
                "herald_storage_free_bytes",
                "Free bytes on the data dir's file system at the last check",
                Gauge::default()
            ),
            storage_nospace_alarm: reg!(
                r,
                "herald_storage_nospace_alarm",
                "1 while the free-space alarm refuses new writes (storage.min_free_bytes)",
                Gauge::default()
            ),
            api_requests: reg!(
                r,
                "herald_api_requests",
                "API requests by server, method and status code",
                Family::default()
            ),
            api_request_seconds: reg!(
                r,
                "herald_api_request_seconds",
                "API latency until the response head",
                Family::<MethodLabels, Histogram>::new_with_constructor(
                    latency as fn() -> Histogram
                )
            ),
            api_in_flight: reg!(
                r,
                "herald_api_in_flight_requests",
                "API requests being served",
                Family::default()
            ),
            api_watch_streams: reg!(
                r,
                "herald_api_watch_streams",
                "Open presence watch streams",
                Gauge::default()
            ),
            auth_refusals: reg!(
                r,
                "herald_auth_refusals",
                "Requests refused by the auth guard, by listener, code and the permission needed",
                Family::default()
            ),
            connections_open: reg!(
                r,
                "herald_connections_open",
                "Open connections by listener",
                Family::default()
            ),
            connections_refused: reg!(
                r,
                "herald_connections_refused",
                "Connections closed at once because their listener was at its cap",
                Family::default()
            ),
            tls_handshake_failures: reg!(
                r,
                "herald_tls_handshake_failures",
                "Connections dropped during the TLS handshake",
                Family::default()
            ),
            security_insecure: reg!(
                r,
                "herald_security_insecure",
                "1 when the node serves plaintext with no TLS (insecure = true)",
                Gauge::default()
            ),
            security_testing_mode: reg!(
                r,
                "herald_security_testing_mode",
                "1 when test hooks are on (herald-node --testing)",
                Gauge::default()
            ),
            auth_enabled: reg!(
                r,
                "herald_auth_enabled",
                "1 while authentication and authorization are enforced",
                Gauge::default()
            ),
            presence_online: reg!(
                r,
                "herald_presence_online_users",
                "Users online with a client of this type",
                Family::default()
            ),
            presence_changes: reg!(
                r,
                "herald_presence_changes",
                "Applied presence changes by kind",
                Family::default()
            ),
            session_handoffs: reg!(
                r,
                "herald_session_handoffs",
                "Applied session handoffs by outcome",
                Family::default()
            ),
            session_fenced_writes: reg!(
                r,
                "herald_session_fenced_writes",
                "Progress writes refused by fencing (old terminal or epoch)",
                Counter::default()
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
            watch_history_bytes: reg!(
                r,
                "herald_watch_history_bytes",
                "Bytes of presence changes kept for watch resume on this replica",
                Gauge::default()
            ),
            pool_accounts: reg!(
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
            clock_offset_seconds: reg!(
                r,
                "herald_clock_offset_seconds",
                "Cluster clock minus system clock",
                FloatGauge::default()
            ),
            clock_sync_delay_seconds: reg!(
                r,
                "herald_clock_sync_delay_seconds",
                "Round-trip delay of the last clock sync",
                FloatGauge::default()
            ),
            clock_last_sync_age_seconds: reg!(
                r,
                "herald_clock_last_sync_age_seconds",
                "Seconds since the last clock sync (-1: never)",
                FloatGauge::default()
            ),
            ring_owned_users: reg!(
                r,
                "herald_ring_owned_users",
                "Users the consistent-hash ring maps to this node",
                Gauge::default()
            ),
            registry: Registry::default(),
        };
        r.register_collector(Box::new(ProcessCollector));
        let registry = std::mem::take(r);
        let m = Metrics(Arc::new(Defs { registry, ..defs }));
        m.precreate();
        m
    }

    /// Creates the known label combinations at zero.
    fn precreate(&self) {
        for result in ["committed", "failed", "not_leader"] {
            let _ = self.raft_proposals.get_or_create(&ResultLabel { result });
        }
        for op in ["append", "vote", "snapshot"] {
            let _ = self.storage_fsync_seconds.get_or_create(&OpLabel { op });
        }
        for server in ["client", "peer", "http"] {
            let _ = self.api_in_flight.get_or_create(&ServerLabel { server });
        }
        for kind in ["login", "logout", "expired", "permission"] {
            let _ = self.presence_changes.get_or_create(&ChangeLabel { kind });
        }
        for outcome in ["accepted", "refused", "rejected"] {
            let _ = self
                .session_handoffs
                .get_or_create(&OutcomeLabel { outcome });
        }
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
        self.reset_online();
    }

    fn reset_online(&self) {
        self.presence_online.clear();
        for client_type in KNOWN_CLIENT_TYPES.into_iter().chain(["other"]) {
            let _ = self
                .presence_online
                .get_or_create(&ClientTypeLabel { client_type });
        }
    }

    /// Times one `fdatasync` (`append`, `vote`: the log; `snapshot`).
    pub fn observe_fsync(&self, op: &'static str, started: Instant) {
        self.storage_fsync_seconds
            .get_or_create(&OpLabel { op })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Counts the domain events of one applied entry (called on every replica).
    pub fn observe_apply(&self, p: &Proposal, result: &Result<state::Response, StateError>) {
        let change = |kind| {
            self.presence_changes
                .get_or_create(&ChangeLabel { kind })
                .inc();
        };
        match (&*p.cmd, result) {
            (Command::Login(_), Ok(_)) => change("login"),
            (Command::Logout(l), Ok(_)) => change(match l.reason {
                LogoutReason::User => "logout",
                LogoutReason::Expired => "expired",
            }),
            (Command::Permission(_), Ok(_)) => change("permission"),
            (Command::Handoff(_), r) => {
                let outcome = match r {
                    Ok(state::Response::Handoff(o)) if o.accepted => "accepted",
                    Ok(_) => "refused",
                    Err(_) => "rejected",
                };
                self.session_handoffs
                    .get_or_create(&OutcomeLabel { outcome })
                    .inc();
            }
            // Stale sequences are not fencing.
            (Command::Progress(_), Err(e)) if e.reason() == state::Reason::Fenced => {
                self.session_fenced_writes.inc();
            }
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

    /// Tracks one open watch stream until the guard drops.
    pub fn watch_stream(&self) -> GaugeGuard {
        GaugeGuard::new(self.api_watch_streams.clone())
    }
}

/// Increments a gauge now and decrements it on drop (in-flight requests,
/// open streams), so an early return or a cancelled future still balances.
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    /// Increments `g` until the guard drops.
    pub fn new(g: Gauge) -> Self {
        g.inc();
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Updates the sampled gauges from the node's current state.
fn sample(node: &Herald) {
    let m = node.metrics();
    node.with_metrics(|r| {
        m.raft_term.set(r.current_term as i64);
        let leader = r.state == ServerState::Leader && r.current_leader == Some(r.id);
        m.raft_is_leader.set(leader as i64);
        let last = r.last_log_index.unwrap_or(0);
        m.raft_last_log_index.set(last as i64);
        let idx =
            |l: &Option<crate::raft::typ::LogId>| l.as_ref().map(|l| l.index()).unwrap_or(0) as i64;
        m.raft_commit_index.set(idx(&r.local_committed));
        m.raft_applied_index.set(idx(&r.last_applied));
        m.raft_snapshot_index.set(idx(&r.snapshot));
        let mem = r.membership_config.membership();
        let voters = mem.voter_ids().count();
        m.raft_voters.set(voters as i64);
        m.raft_learners
            .set(mem.nodes().count().saturating_sub(voters) as i64);
        m.raft_replication_lag.clear();
        if let (true, Some(repl)) = (leader, r.replication.as_ref()) {
            for (peer, matched) in repl {
                if *peer == r.id {
                    continue;
                }
                let matched = matched.as_ref().map(|l| l.index()).unwrap_or(0);
                m.raft_replication_lag
                    .get_or_create(&PeerLabel {
                        peer: peer.to_string(),
                    })
                    .set(last.saturating_sub(matched) as i64);
            }
        }
    });
    m.auth_enabled.set(i64::from(node.guard().enabled()));
    m.storage_disk_bytes.set(node.log().size_on_disk() as i64);
    m.storage_log_entries.set(node.log().len() as i64);
    let space = node.space();
    if space.free_bytes() != u64::MAX {
        m.storage_free_bytes
            .set(i64::try_from(space.free_bytes()).unwrap_or(i64::MAX));
    }
    m.storage_nospace_alarm.set(space.alarm() as i64);
    {
        let machine = node.store().read();
        let counts = machine.state.counts();
        let q = machine.state.quotas();
        for (kind, n, quota) in [
            ("users", counts.users, q.users),
            ("sessions", counts.sessions, q.sessions),
            ("accounts", counts.accounts, q.accounts),
        ] {
            let label = RecordLabel { kind };
            m.state_records
                .get_or_create(&label)
                .set(i64::try_from(n).unwrap_or(i64::MAX));
            m.state_quota
                .get_or_create(&label)
                .set(i64::try_from(quota).unwrap_or(i64::MAX));
        }
        m.watch_history_bytes
            .set(i64::try_from(counts.watch_history_bytes).unwrap_or(i64::MAX));
        m.reset_online();
        for (client_type, n) in machine.state.online_counts() {
            m.presence_online
                .get_or_create(&ClientTypeLabel {
                    client_type: client_type_label(&client_type),
                })
                .inc_by(n as i64);
        }
        m.pool_accounts.clear();
        for (i, p) in machine.state.pools(None).into_iter().enumerate() {
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
                m.pool_accounts
                    .get_or_create(&PoolLabels {
                        pool: pool.clone(),
                        unit: unit.clone(),
                        state,
                    })
                    .inc_by(n as i64);
            }
        }
    }
    m.ring_owned_users
        .set(node.ownership().tracked_count() as i64);
    let clock = node.clock();
    m.clock_offset_seconds.set(clock.offset_ns() as f64 / 1e9);
    m.clock_sync_delay_seconds
        .set(clock.sync_delay_ns() as f64 / 1e9);
    let last = clock.last_sync_ms();
    m.clock_last_sync_age_seconds.set(if last == 0 {
        -1.0
    } else {
        clock.now_ms().saturating_sub(last) as f64 / 1e3
    });
}

/// The node's metrics in the OpenMetrics text format, sampled now.
pub fn render(node: &Herald) -> Result<String, std::fmt::Error> {
    sample(node);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &node.metrics().registry)?;
    Ok(out)
}

/// Rewrites the encoder's OpenMetrics text as Prometheus text format 0.0.4,
/// for scrapers and tools that only read the older format (`promtool check
/// metrics`, curl). The two differ, for the metric types Herald uses, only
/// in that OpenMetrics names a counter family without its `_total` suffix
/// and has `# UNIT` and `# EOF` lines.
fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match descriptor {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// `GET /metrics`: OpenMetrics when the scraper asks for it (Prometheus
/// does), else Prometheus text format 0.0.4.
pub async fn http_handler(State(node): State<Herald>, headers: axum::http::HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    match render(&node) {
        Ok(body) if openmetrics => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            to_prometheus_text(&body),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Follows openraft's server metrics until `stopped`: counts leader and
/// membership changes and logs one line for each. The server metrics change
/// only with the vote, the role, the leader or the membership; the full
/// metrics change with every append and apply, and watching those woke this
/// task several times per write.
pub async fn watch_raft(node: Herald, stopped: impl std::future::Future<Output = ()>) {
    tokio::pin!(stopped);
    let mut rx = node.raft().server_metrics();
    let mut leader: Option<u64> = None;
    let mut membership: Option<crate::raft::typ::LogId> = None;
    loop {
        let (now_leader, term, now_membership, voters, learners) = {
            let m = rx.borrow_watched();
            let mem = m.membership_config.membership();
            let voters: Vec<u64> = mem.voter_ids().collect();
            let learners: Vec<u64> = mem.learner_ids().collect();
            (
                m.current_leader,
                m.vote.leader_id().term,
                *m.membership_config.log_id(),
                voters,
                learners,
            )
        };
        if now_leader != leader {
            if now_leader.is_some() {
                node.metrics().raft_leader_changes.inc();
            }
            tracing::info!(
                leader = ?now_leader,
                previous = ?leader,
                term,
                me = node.id(),
                "leader changed"
            );
            leader = now_leader;
        }
        if now_membership != membership {
            node.metrics().raft_membership_changes.inc();
            tracing::info!(
                log_index = now_membership.as_ref().map(|l| l.index()),
                ?voters,
                ?learners,
                "membership changed"
            );
            membership = now_membership;
        }
        tokio::select! {
            _ = &mut stopped => return,
            r = rx.changed() => if r.is_err() { return },
        }
    }
}

/// `process_*` metrics read from `/proc/self` at scrape time (Linux; other
/// systems report none).
#[derive(Debug)]
struct ProcessCollector;

/// What `/proc/self` says about this process.
struct ProcStats {
    cpu_seconds: f64,
    resident_bytes: i64,
    virtual_bytes: i64,
    open_fds: i64,
    threads: i64,
    start_time_seconds: f64,
}

fn proc_stats() -> Option<ProcStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Linux reports times in USER_HZ ticks, 100 on every Linux ABI (it is
    // not the kernel's HZ); RSS comes from /proc/self/status in kB.
    const TICKS: f64 = 100.0;
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    // stat(5) numbering minus 3 (pid, comm and state are gone).
    let utime = num(11)?;
    let stime = num(12)?;
    let threads = num(17)? as i64;
    let start_ticks = num(19)?;
    let virtual_bytes = num(20)? as i64;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok())
        .unwrap_or(0);
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as i64)
        .unwrap_or(0);
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())?;
    Some(ProcStats {
        cpu_seconds: (utime + stime) / TICKS,
        resident_bytes: rss_kb * 1024,
        virtual_bytes,
        open_fds,
        threads,
        start_time_seconds: boot + start_ticks / TICKS,
    })
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = proc_stats() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(s.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        for (name, help, v) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                s.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                s.virtual_bytes,
            ),
            ("process_open_fds", "Open file descriptors", s.open_fds),
            ("process_threads", "OS threads", s.threads),
        ] {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        let start = ConstGauge::new(s.start_time_seconds);
        start.encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds",
            None,
            start.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_stats_are_read_from_proc() {
        let s = proc_stats().expect("/proc/self on Linux");
        assert!(s.resident_bytes > 0);
        assert!(s.open_fds > 0);
        assert!(s.start_time_seconds > 1.0e9);
    }

    #[test]
    fn prometheus_text_names_counter_families_with_total() {
        let om = "# HELP a_total x\n# HELP c Count.\n# TYPE c counter\n# UNIT c seconds\nc_total 1\n# HELP g G.\n# TYPE g gauge\ng 2\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_total x\n# HELP c_total Count.\n# TYPE c_total counter\nc_total 1\n# HELP g G.\n# TYPE g gauge\ng 2\n"
        );
    }

    #[test]
    fn registry_encodes_every_family_once() {
        let m = Metrics::new();
        m.observe_fsync("append", Instant::now());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).unwrap();
        for name in [
            "herald_raft_term",
            "herald_raft_proposals_total{result=\"failed\"}",
            "herald_storage_fsync_seconds_bucket",
            "herald_presence_online_users{client_type=\"tv\"}",
            "herald_ring_owned_users",
            "herald_storage_nospace_alarm",
            "herald_storage_free_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
        ] {
            assert!(out.contains(name), "{name} missing from\n{out}");
        }
    }
}
