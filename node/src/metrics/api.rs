//! API metrics, per listener (`client`, `peer`, `http`): open and refused
//! connections, TLS handshake failures, requests the auth guard refused,
//! requests by method and status with their latency (the
//! [`crate::api::layer`] tower layer), open watch streams, and whether the
//! node runs insecure, in testing mode or with auth on.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::{GaugeGuard, latency};

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

/// Api metrics (see the module doc).
pub struct ApiDefs {
    /// `herald_api_requests_total{server,method,code}`.
    pub requests: Family<RequestLabels, Counter>,
    /// `herald_api_request_seconds{server,method}`: until the response head
    /// (for a stream: until it started).
    pub request_seconds: Family<MethodLabels, Histogram>,
    /// `herald_api_in_flight_requests{server}`.
    pub in_flight: Family<ServerLabel, Gauge>,
    /// `herald_api_watch_streams`: open presence watch streams.
    pub watch_streams: Gauge,
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
}

impl ApiDefs {
    /// Registers every metric of this file in `r`.
    pub(super) fn new(r: &mut Registry) -> Self {
        Self {
            requests: reg!(
                r,
                "herald_api_requests",
                "API requests by server, method and status code",
                Family::default()
            ),
            request_seconds: reg!(
                r,
                "herald_api_request_seconds",
                "API latency until the response head",
                Family::<MethodLabels, Histogram>::new_with_constructor(
                    latency as fn() -> Histogram
                )
            ),
            in_flight: reg!(
                r,
                "herald_api_in_flight_requests",
                "API requests being served",
                Family::default()
            ),
            watch_streams: reg!(
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
            tls_handshake_failures: reg!(
                r,
                "herald_tls_handshake_failures",
                "Connections dropped during the TLS handshake",
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
        }
    }

    /// Creates the known label combinations at zero.
    pub(super) fn precreate(&self) {
        for server in ["client", "peer", "http"] {
            let _ = self.in_flight.get_or_create(&ServerLabel { server });
        }
    }

    /// Tracks one open watch stream until the guard drops.
    pub fn watch_stream(&self) -> GaugeGuard {
        GaugeGuard::new(self.watch_streams.clone())
    }
}
