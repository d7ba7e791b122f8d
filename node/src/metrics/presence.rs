//! Presence metrics: users online by client type, connections online,
//! applied presence changes,
//! the watch history a replica keeps, and the users whose heartbeats this
//! node keeps as their owner on the ring.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::state::{self, Command, LogoutReason, State, StateError};

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

/// `{kind}`: a presence change.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabel {
    /// `login`, `logout`, `expired` or `permission`.
    pub kind: &'static str,
}

/// Presence metrics (see the module doc).
pub struct PresenceDefs {
    /// `herald_presence_online_users{client_type}`: users with a client of
    /// that type online (custom types summed under `other`).
    pub online: Family<ClientTypeLabel, Gauge>,
    /// `herald_presence_connections`: connections online over every user
    /// (a user with two phones counts two; kept by the state, not scanned).
    pub connections: Gauge,
    /// `herald_presence_changes_total{kind}`: applied presence writes.
    pub changes: Family<ChangeLabel, Counter>,
    /// `herald_watch_history_bytes`: presence changes this replica keeps
    /// for watch resume (bounded by `quotas.watch_history_bytes`).
    pub watch_history_bytes: Gauge,
    /// `herald_ring_owned_users`: TTL clients whose uid the ring maps to this
    /// node and whose heartbeats it keeps (counting every owned record would
    /// scan the whole state on each scrape).
    pub ring_owned_users: Gauge,
}

impl PresenceDefs {
    /// Registers every metric of this file in `r`.
    pub(super) fn new(r: &mut Registry) -> Self {
        Self {
            online: reg!(
                r,
                "herald_presence_online_users",
                "Users online with a client of this type",
                Family::default()
            ),
            connections: reg!(
                r,
                "herald_presence_connections",
                "Connections online over every user (each with its own presence entry)",
                Gauge::default()
            ),
            changes: reg!(
                r,
                "herald_presence_changes",
                "Applied presence changes by kind",
                Family::default()
            ),
            watch_history_bytes: reg!(
                r,
                "herald_watch_history_bytes",
                "Bytes of presence changes kept for watch resume on this replica",
                Gauge::default()
            ),
            ring_owned_users: reg!(
                r,
                "herald_ring_owned_users",
                "Users the consistent-hash ring maps to this node",
                Gauge::default()
            ),
        }
    }

    /// Creates the known label combinations at zero.
    pub(super) fn precreate(&self) {
        for kind in ["login", "logout", "expired", "permission"] {
            let _ = self.changes.get_or_create(&ChangeLabel { kind });
        }
        self.reset_online();
    }

    fn reset_online(&self) {
        self.online.clear();
        for client_type in KNOWN_CLIENT_TYPES.into_iter().chain(["other"]) {
            let _ = self.online.get_or_create(&ClientTypeLabel { client_type });
        }
    }

    /// Counts an applied presence change.
    pub(super) fn observe_apply(
        &self,
        cmd: &Command,
        result: &Result<state::Response, StateError>,
    ) {
        let kind = match (cmd, result) {
            (Command::Login(_), Ok(_)) => "login",
            (Command::Logout(l), Ok(_)) => match l.reason {
                LogoutReason::User => "logout",
                LogoutReason::Expired => "expired",
            },
            (Command::Permission(_), Ok(_)) => "permission",
            _ => return,
        };
        self.changes.get_or_create(&ChangeLabel { kind }).inc();
    }

    /// Sets the users online, the watch history's size and the users this
    /// node keeps heartbeats for.
    pub fn sample(&self, state: &State, owned_users: usize) {
        self.watch_history_bytes
            .set(i64::try_from(state.counts().watch_history_bytes).unwrap_or(i64::MAX));
        self.reset_online();
        for (client_type, n) in state.online_counts() {
            self.online
                .get_or_create(&ClientTypeLabel {
                    client_type: client_type_label(&client_type),
                })
                .inc_by(n as i64);
        }
        self.connections
            .set(i64::try_from(state.connection_count()).unwrap_or(i64::MAX));
        self.ring_owned_users.set(owned_users as i64);
    }
}
