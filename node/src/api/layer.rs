//! One tower layer in front of every listener (client gRPC, peer gRPC, HTTP):
//! request metrics, the request id and the request's tracing span.
//!
//! It sits at the HTTP level, below tonic and axum, so one implementation
//! covers every method of every service without touching them:
//! - `herald_api_requests_total{server,method,code}`, the latency histogram
//!   and the in-flight gauge. `code` is the gRPC status name (from the
//!   `grpc-status` header of an error, `Ok` when absent: a success or a
//!   stream that started) or the HTTP status code. `method` is the gRPC path
//!   or a known HTTP route; anything else is `other`, so a scanner cannot
//!   grow the label set.
//! - the request id: the caller's `x-request-id` when it is a sane token,
//!   else a fresh one; scoped to the request ([`current_request_id`]) so a
//!   forwarded write carries it to the leader.
//! - a `request` span with the node and request ids, a child of the
//!   caller's trace when a W3C `traceparent` came with it (created only
//!   when traces are exported: see `telemetry::SPAN_TARGET`). On the peer
//!   listener only requests that carry one (forwarded client writes) get a
//!   span: Raft's own heartbeats and appends would drown the traces.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderMap, Request, Response};
use tracing::Instrument;

use crate::metrics::{MethodLabels, Metrics, RequestLabels};

/// Header carrying the request id, in both directions of a forward.
pub const REQUEST_ID: &str = "x-request-id";

tokio::task_local! {
    static CURRENT_REQUEST_ID: String;
}

/// The id of the request this task is serving, if any.
pub fn current_request_id() -> Option<String> {
    CURRENT_REQUEST_ID.try_with(Clone::clone).ok()
}

/// Which listener a layer serves; decides labels and tracing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// Client and admin gRPC.
    Client,
    /// Raft peer gRPC.
    Peer,
    /// HTTP JSON and `/metrics`.
    Http,
}

impl Listener {
    fn label(self) -> &'static str {
        match self {
            Listener::Client => "client",
            Listener::Peer => "peer",
            Listener::Http => "http",
        }
    }
}

/// The layer; see the module doc.
#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Metrics,
    node_id: u64,
    listener: Listener,
}

impl ObserveLayer {
    /// A layer for one listener of node `node_id`.
    pub fn new(metrics: Metrics, node_id: u64, listener: Listener) -> Self {
        ObserveLayer {
            metrics,
            node_id,
            listener,
        }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`ObserveLayer`] wraps around a server.
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    layer: ObserveLayer,
}

const HTTP_ROUTES: &[&str] = &["/v1/presence", "/health", "/metrics"];

fn request_id(headers: &HeaderMap) -> String {
    let given = headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=64).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        });
    match given {
        Some(v) => v.to_string(),
        None => format!("{:016x}", rand::random::<u64>()),
    }
}

/// gRPC status name for a numeric `grpc-status`.
fn grpc_code_name(code: &str) -> String {
    let n: i32 = code.parse().unwrap_or(2);
    format!("{:?}", tonic::Code::from_i32(n))
}

impl<S, B, RB> tower::Service<Request<B>> for Observe<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    RB: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The clone that was polled ready serves this call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        let listener = layer.listener;
        let server = listener.label();
        let path = req.uri().path();
        let method = match listener {
            Listener::Http if !HTTP_ROUTES.contains(&path) => "other".to_string(),
            _ => path.to_string(),
        };
        let rid = request_id(req.headers());
        let parent = crate::telemetry::extract_context(req.headers());
        let span = if listener == Listener::Peer && parent.is_none() {
            tracing::Span::none()
        } else {
            let span = tracing::info_span!(
                target: crate::telemetry::SPAN_TARGET,
                "request",
                otel.name = %method,
                otel.kind = "server",
                node_id = layer.node_id,
                request_id = %rid,
                listener = server,
                code = tracing::field::Empty,
            );
            if let Some(cx) = parent {
                crate::telemetry::set_parent(&span, cx);
            }
            span
        };
        Box::pin(async move {
            let _in_flight = layer.metrics.in_flight(server);
            let started = Instant::now();
            let result = CURRENT_REQUEST_ID
                .scope(rid, inner.call(req).instrument(span.clone()))
                .await;
            let code = match &result {
                Ok(resp) => match resp.headers().get("grpc-status") {
                    Some(v) => grpc_code_name(v.to_str().unwrap_or("2")),
                    None if listener == Listener::Http => resp.status().as_u16().to_string(),
                    None => "Ok".to_string(),
                },
                Err(_) => "error".to_string(),
            };
            span.record("code", code.as_str());
            let m = &layer.metrics;
            // An unknown gRPC method must not become a label value.
            let method = if code == "Unimplemented" {
                "other".to_string()
            } else {
                method
            };
            m.api_request_seconds
                .get_or_create(&MethodLabels {
                    server,
                    method: method.clone(),
                })
                .observe(started.elapsed().as_secs_f64());
            m.api_requests
                .get_or_create(&RequestLabels {
                    server,
                    method,
                    code,
                })
                .inc();
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_when_sane_and_replaced_otherwise() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, "abc-123".parse().unwrap());
        assert_eq!(request_id(&h), "abc-123");
        h.insert(REQUEST_ID, "bad id with spaces".parse().unwrap());
        let fresh = request_id(&h);
        assert_eq!(fresh.len(), 16);
        assert!(fresh.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn grpc_codes_are_named() {
        assert_eq!(grpc_code_name("0"), "Ok");
        assert_eq!(grpc_code_name("3"), "InvalidArgument");
        assert_eq!(grpc_code_name("x"), "Unknown");
    }
}
