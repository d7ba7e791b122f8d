//! Prometheus metrics: the one registry and every metric definition.
//!
//! **One handle per node, not a global.** [`Metrics`] is created in
//! `server::start`, kept in the [`Herald`](crate::node::Herald) handle and
//! given to the log and state stores. A process-wide global would be
//! shorter to reach, but a process may run several nodes (`server::start`
//! is a library call, and tests may use it), and each must report only its
//! own numbers. The handle is an `Arc`, so clones are cheap; every metric
//! inside is lock-free.
//!
//! Values arrive three ways:
//! - **counted where they happen**: fsync latency (log store), proposals
//!   and their latency ([`crate::node::Herald::propose`]), snapshot
//!   builds/installs and the domain events of every applied entry (state
//!   store), API requests (the [`crate::api::layer`] tower layer on every
//!   server);
//! - **watched**: [`watch_raft`] follows openraft's server metrics channel
//!   to count leader and membership changes (and log one line for each);
//! - **sampled at scrape time** ([`crate::node::Herald::render_metrics`]):
//!   Raft indexes and replication lag, the log's size, free space and its
//!   alarm, users online, pool accounts, the cluster clock and the process
//!   (`/proc/self`), so gauges are exact when Prometheus reads them and
//!   nothing runs between scrapes (free space itself is read by
//!   `raft::free_space::run`).
//!
//! Domain counters are counted on *every* replica as it applies an entry:
//! each node reports the same cluster-wide rate (dashboards take the `max`
//! over nodes), and a node that never saw the client request still counts
//! it. Names follow Prometheus conventions: `herald_` prefix, base units
//! (seconds, bytes), `_total` on counters (added by the encoder).
//!
//! **One file per domain.** Each file owns its label sets, its metrics (a
//! `*Defs` struct, reached as a field of [`Defs`]: `metrics.raft.term`),
//! their names and help texts, the label values created at zero, and how
//! they are counted or sampled, so a metric reads in one place with the
//! others of its kind:
//! - `raft.rs`: term, role, indexes, membership, replication lag,
//!   proposals, snapshots and failover takeovers; [`watch_raft`];
//! - `storage.rs`: fsync latency, the log on disk, free space and its
//!   alarm, and the state's records against their quotas;
//! - `api.rs`: per listener connections, TLS and auth refusals, requests
//!   and their latency, watch streams, and the security mode;
//! - `presence.rs`, `sessions.rs`, `pools.rs`: the domain counters and
//!   gauges (presence changes and users online, handoffs and fencing,
//!   pool accounts and leases);
//! - `clock.rs`: the cluster clock's offset and syncs;
//! - `process.rs`: the `process_*` metrics, read from `/proc/self`.
//!
//! This file wires them together: the [`Metrics`] handle and its registry,
//! [`Metrics::observe_apply`] (which passes each applied entry to every
//! domain) and the encoding ([`Metrics::encode`], [`to_prometheus_text`]).
//!
//! **Nothing here knows the node.** Each domain samples its gauges from the
//! pieces it reads (Raft's metrics, the state, the log, the clock), and the
//! scrape that hands them over is `Herald::render_metrics` in `node.rs`;
//! `GET /metrics` is served by [`crate::api::http`], and [`watch_raft`]
//! takes the Raft handle. So `crate::node`, which holds the [`Metrics`],
//! is not imported back by this module.

use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::raft::Proposal;
use crate::state::{self, StateError};

/// Registers a metric under `$name` with `$help` and returns it.
macro_rules! reg {
    ($r:expr, $name:literal, $help:literal, $m:expr) => {{
        let m = $m;
        $r.register($name, $help, m.clone());
        m
    }};
}

mod api;
mod clock;
mod link;
mod pools;
mod presence;
mod process;
mod raft;
mod sessions;
mod share;
mod storage;

pub use api::{ApiDefs, ListenerLabel, MethodLabels, RefusalLabels, RequestLabels, ServerLabel};
pub use clock::ClockDefs;
pub use link::{CountLabels, LinkDefs};
pub use pools::{MAX_POOL_SERIES, PoolDefs, PoolLabels, ReasonLabel};
pub use presence::{
    ChangeLabel, ClientTypeLabel, KNOWN_CLIENT_TYPES, PresenceDefs, client_type_label,
};
pub use raft::{PeerLabel, RaftDefs, ResultLabel, watch_raft};
pub use sessions::{OutcomeLabel, SessionDefs};
pub use share::{
    MAX_STORAGE_SERIES, ShareDefs, ShareRefusalLabels, StorageBytesLabels, StorageLabel,
};
pub use storage::{OpLabel, RecordLabel, StorageDefs};

/// A float gauge (seconds, ratios).
pub type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Latency histogram: 100 µs .. ~6.5 s in powers of two.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// Every metric of a node, by domain. Reach it through [`Metrics`] (which
/// derefs to it).
pub struct Defs {
    registry: Registry,
    /// Raft: term, role, indexes, proposals, snapshots, takeovers.
    pub raft: RaftDefs,
    /// The log on disk, free space, records and quotas.
    pub storage: StorageDefs,
    /// Listeners, requests, refusals and the security mode.
    pub api: ApiDefs,
    /// Presence changes, users online, watch history, owned users.
    pub presence: PresenceDefs,
    /// Session handoffs and fenced writes.
    pub sessions: SessionDefs,
    /// Pool accounts and leases.
    pub pools: PoolDefs,
    /// The cluster clock.
    pub clock: ClockDefs,
    /// Media sharing: storage servers, admissions, access.
    pub share: ShareDefs,
    /// Linked catalogs: counts and lookup latency.
    pub link: LinkDefs,
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

impl Metrics {
    /// A fresh registry with every metric registered, and the label values
    /// known in advance created at zero, so every series exists from the start.
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let raft = RaftDefs::new(&mut r);
        let storage = StorageDefs::new(&mut r);
        let api = ApiDefs::new(&mut r);
        let presence = PresenceDefs::new(&mut r);
        let sessions = SessionDefs::new(&mut r);
        let pools = PoolDefs::new(&mut r);
        let clock = ClockDefs::new(&mut r);
        let share = ShareDefs::new(&mut r);
        let link = LinkDefs::new(&mut r);
        r.register_collector(Box::new(process::ProcessCollector));
        let defs = Defs {
            registry: r,
            raft,
            storage,
            api,
            presence,
            sessions,
            pools,
            clock,
            share,
            link,
        };
        defs.raft.precreate();
        defs.storage.precreate();
        defs.api.precreate();
        defs.presence.precreate();
        defs.sessions.precreate();
        defs.pools.precreate();
        defs.share.precreate();
        defs.link.precreate();
        Metrics(Arc::new(defs))
    }

    /// Counts the domain events of one applied entry (called on every replica).
    pub fn observe_apply(&self, p: &Proposal, result: &Result<state::Response, StateError>) {
        self.presence.observe_apply(&p.cmd, result);
        self.sessions.observe_apply(&p.cmd, result);
        self.pools.observe_apply(&p.cmd, result);
        self.share.observe_apply(&p.cmd, result);
        self.link.observe_apply(&p.cmd, result);
    }

    /// The registry in the OpenMetrics text format, as the metrics are now
    /// (the scrape samples the gauges first).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
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

/// Rewrites the encoder's OpenMetrics text as Prometheus text format 0.0.4,
/// for scrapers and tools that only read the older format (`promtool check
/// metrics`, curl). The two differ, for the metric types Herald uses, only
/// in that OpenMetrics names a counter family without its `_total` suffix
/// and has `# UNIT` and `# EOF` lines.
pub fn to_prometheus_text(openmetrics: &str) -> String {
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

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
        m.storage.observe_fsync("append", Instant::now());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).unwrap();
        for name in [
            "herald_raft_term",
            "herald_raft_proposals_total{result=\"failed\"}",
            "herald_storage_fsync_seconds_bucket",
            "herald_presence_online_users{client_type=\"tv\"}",
            "herald_presence_connections",
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
