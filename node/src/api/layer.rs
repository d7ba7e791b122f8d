//! One tower layer in front of every listener (client gRPC, peer gRPC, HTTP):
//! request metrics, the request id and the request's tracing span.
//!
//! It sits at the HTTP level, below tonic and axum, so one implementation
//! covers every method of every service without touching them:
//! - `herald_api_requests_total{server,method,code}`, the latency histogram
//!   and the in-flight gauge. `code` is the gRPC status name (from the
//!   `grpc-status` header of an error, `Ok` when absent: a success or a
//!   stream that started) or the HTTP status code. `method` is the path of a
//!   gRPC method this node serves or a known HTTP route; anything else is
//!   `other`, so a scanner cannot grow the label set. This runs on every request of the leader's one
//!   runtime thread, so a gRPC method's `Ok` series are looked up by path
//!   once and kept (no label strings per request); errors and HTTP go the
//!   long way.
//! - the request id: the caller's `x-request-id` when it is a sane token,
//!   else a fresh one made on first use; scoped to the request
//!   ([`current_request_id`]) so a forwarded write carries it to the leader.
//! - a `request` span with the node and request ids, a child of the
//!   caller's trace when a W3C `traceparent` came with it (created only
//!   when traces are exported: see `telemetry::SPAN_TARGET`). On the peer
//!   listener only requests that carry one (forwarded client writes) get a
//!   span: Raft's own heartbeats and appends would drown the traces.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderMap, HeaderValue, Request, Response};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tracing::Instrument;

use crate::metrics::{MethodLabels, Metrics, RequestLabels, ServerLabel};

/// Header carrying the request id, in both directions of a forward.
pub const REQUEST_ID: &str = "x-request-id";

/// The request id of one request: the caller's when sane, else made on
/// first use. Most requests never ask (only a forwarded write and an
/// exported span do), so a fresh one is not formatted for every request.
struct RequestId {
    given: Option<HeaderValue>,
    id: OnceLock<String>,
}

impl RequestId {
    fn get(&self) -> &str {
        self.id.get_or_init(|| match &self.given {
            Some(v) => v.to_str().unwrap_or_default().to_string(),
            None => format!("{:016x}", rand::random::<u64>()),
        })
    }
}

tokio::task_local! {
    static CURRENT_REQUEST_ID: RequestId;
}

/// The id of the request this task is serving, if any.
pub fn current_request_id() -> Option<String> {
    CURRENT_REQUEST_ID.try_with(|r| r.get().to_string()).ok()
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

/// The metrics of one gRPC method that has succeeded at least once: its
/// latency histogram and its `code="Ok"` counter, found by path without
/// building label strings.
struct MethodMetrics {
    method: String,
    seconds: Histogram,
    ok: Counter,
}

/// Request counting for one listener: `herald_api_requests_total` and the
/// latency histogram by method and code. Cheap to clone (shared cache).
///
/// Shared by the layer (one count per HTTP/2 request) and by the client
/// service's `Batch` handler, which counts each call of a batch under its
/// own method, as if it had come alone.
#[derive(Clone)]
pub struct Accounting {
    metrics: Metrics,
    listener: Listener,
    /// Successful gRPC methods by path. Only paths that answered `Ok` get
    /// in, so the map is bounded by the services' methods.
    ok_paths: Arc<RwLock<HashMap<String, Arc<MethodMetrics>>>>,
}

impl Accounting {
    /// Counting for `listener`'s requests into `metrics`.
    pub fn new(metrics: Metrics, listener: Listener) -> Self {
        Accounting {
            metrics,
            listener,
            ok_paths: Arc::default(),
        }
    }

    /// Counts one finished gRPC call of `path` (e.g.
    /// `/herald.v1.Herald/Login`); `code` is its status name, `None` for `Ok`.
    pub fn record(&self, path: &str, code: Option<&str>, elapsed: f64) {
        match (code, self.ok_path(path)) {
            (None, Some(m)) => {
                m.seconds.observe(elapsed);
                m.ok.inc();
            }
            (code, _) => self.count(path, code.unwrap_or("Ok"), elapsed),
        }
    }

    /// The cached metrics of a gRPC method that answered `Ok` before.
    fn ok_path(&self, path: &str) -> Option<Arc<MethodMetrics>> {
        let map = self.ok_paths.read().unwrap_or_else(|p| p.into_inner());
        map.get(path).cloned()
    }

    /// Counts a finished request the long way: label strings and family
    /// lookups (errors, HTTP, and a gRPC method's first success, which
    /// fills the cache).
    fn count(&self, method: &str, code: &str, elapsed: f64) {
        let server = self.listener.label();
        let m = &self.metrics;
        // An unknown gRPC method must not become a label value.
        let method = if code == "Unimplemented" {
            "other".to_string()
        } else {
            method.to_string()
        };
        let seconds = m
            .api
            .request_seconds
            .get_or_create(&MethodLabels {
                server,
                method: method.clone(),
            })
            .clone();
        seconds.observe(elapsed);
        let counter = m
            .api
            .requests
            .get_or_create(&RequestLabels {
                server,
                method: method.clone(),
                code: code.to_string(),
            })
            .clone();
        counter.inc();
        if code == "Ok" && self.listener != Listener::Http {
            let mut map = self.ok_paths.write().unwrap_or_else(|p| p.into_inner());
            map.entry(method.clone()).or_insert_with(|| {
                Arc::new(MethodMetrics {
                    method,
                    seconds,
                    ok: counter,
                })
            });
        }
    }
}

/// The layer; see the module doc.
#[derive(Clone)]
pub struct ObserveLayer {
    accounting: Accounting,
    node_id: u64,
    listener: Listener,
    in_flight: Gauge,
}

impl ObserveLayer {
    /// A layer for one listener of node `node_id`.
    pub fn new(metrics: Metrics, node_id: u64, listener: Listener) -> Self {
        let in_flight = metrics
            .api
            .in_flight
            .get_or_create(&ServerLabel {
                server: listener.label(),
            })
            .clone();
        ObserveLayer {
            accounting: Accounting::new(metrics, listener),
            node_id,
            listener,
            in_flight,
        }
    }

    /// The layer's request counting, for services that count calls of
    /// their own (the client service's `Batch`).
    pub fn accounting(&self) -> Accounting {
        self.accounting.clone()
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

/// The methods of the peer service (`herald.v1.Peer`).
const PEER_METHODS: &[&str] = &[
    "Append",
    "AppendStream",
    "Vote",
    "PreVote",
    "InstallSnapshot",
    "TransferLeader",
    "Forward",
    "ReadIndex",
    "Ping",
    "Heartbeat",
    "StorageBeat",
];

/// The `method` label of a request: its path when it names a method or
/// route this node serves, else `other`. The path is the caller's to
/// choose, and a refused call (an unknown method is refused by the guard
/// before tonic could answer `Unimplemented`) is counted too, so anything
/// else would let a caller grow the label set.
fn method_label(listener: Listener, path: &str) -> &str {
    let known = match listener {
        // One user's lookup: the route, not the uid, is the label.
        Listener::Http if path.starts_with("/v1/presence/") => return "/v1/presence/{uid}",
        Listener::Http => HTTP_ROUTES.contains(&path),
        Listener::Client | Listener::Peer => {
            crate::security::policy::permission_of(path).is_some()
                || path
                    .strip_prefix("/herald.v1.Peer/")
                    .is_some_and(|m| PEER_METHODS.contains(&m))
        }
    };
    if known { path } else { "other" }
}

/// The caller's request id when it is a sane token (1 to 64 of
/// `[A-Za-z0-9-_.:]`).
fn given_request_id(headers: &HeaderMap) -> Option<HeaderValue> {
    headers
        .get(REQUEST_ID)
        .filter(|v| {
            (1..=64).contains(&v.len())
                && v.as_bytes()
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
        })
        .cloned()
}

/// gRPC status name for a numeric `grpc-status`.
fn grpc_code_name(code: &str) -> String {
    let n: i32 = code.parse().unwrap_or(2);
    format!("{:?}", tonic::Code::from_i32(n))
}

/// Decrements the in-flight gauge when the request ends, however it ends.
struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
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
        let path = req.uri().path();
        let cached = match listener {
            Listener::Http => None,
            _ => layer.accounting.ok_path(path),
        };
        let method = if cached.is_some() {
            // Only needed again on an error.
            String::new()
        } else {
            method_label(listener, path).to_string()
        };
        let rid = RequestId {
            given: given_request_id(req.headers()),
            id: OnceLock::new(),
        };
        let parent = crate::telemetry::extract_context(req.headers());
        let span = if listener == Listener::Peer && parent.is_none() {
            tracing::Span::none()
        } else {
            let span = tracing::info_span!(
                target: crate::telemetry::SPAN_TARGET,
                "request",
                otel.name = %path,
                otel.kind = "server",
                node_id = layer.node_id,
                request_id = tracing::field::Empty,
                listener = listener.label(),
                code = tracing::field::Empty,
            );
            if !span.is_disabled() {
                span.record("request_id", rid.get());
            }
            if let Some(cx) = parent {
                crate::telemetry::set_parent(&span, cx);
            }
            span
        };
        Box::pin(async move {
            layer.in_flight.inc();
            let _in_flight = InFlight(layer.in_flight.clone());
            let started = Instant::now();
            let result = CURRENT_REQUEST_ID
                .scope(rid, inner.call(req).instrument(span.clone()))
                .await;
            let code = match &result {
                Ok(resp) => match resp.headers().get("grpc-status") {
                    Some(v) => Some(grpc_code_name(v.to_str().unwrap_or("2"))),
                    None if listener == Listener::Http => Some(resp.status().as_u16().to_string()),
                    None => None,
                },
                Err(_) => Some("error".to_string()),
            };
            if !span.is_disabled() {
                span.record("code", code.as_deref().unwrap_or("Ok"));
            }
            let elapsed = started.elapsed().as_secs_f64();
            match (code, cached) {
                (None, Some(m)) => {
                    m.seconds.observe(elapsed);
                    m.ok.inc();
                }
                (code, cached) => {
                    let method = match &cached {
                        Some(m) => &m.method,
                        None => &method,
                    };
                    layer
                        .accounting
                        .count(method, code.as_deref().unwrap_or("Ok"), elapsed);
                }
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_the_served_methods_or_other() {
        use Listener::*;
        let login = "/herald.v1.Herald/Login";
        assert_eq!(method_label(Client, login), login);
        assert_eq!(
            method_label(Client, "/herald.v1.Admin/Status"),
            "/herald.v1.Admin/Status"
        );
        assert_eq!(
            method_label(Peer, "/herald.v1.Peer/Append"),
            "/herald.v1.Peer/Append"
        );
        assert_eq!(method_label(Http, "/v1/presence"), "/v1/presence");
        assert_eq!(
            method_label(Http, "/v1/presence/a%2Cb"),
            "/v1/presence/{uid}"
        );
        for made_up in [
            "/herald.v1.Herald/Made1",
            "/x/y",
            "/herald.v1.Peer/Nope",
            "",
            "/",
        ] {
            assert_eq!(method_label(Client, made_up), "other");
            assert_eq!(method_label(Peer, made_up), "other");
            assert_eq!(method_label(Http, made_up), "other");
        }
    }

    #[test]
    fn request_ids_are_kept_when_sane_and_replaced_otherwise() {
        let id = |h: &HeaderMap| {
            RequestId {
                given: given_request_id(h),
                id: OnceLock::new(),
            }
            .get()
            .to_string()
        };
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, "abc-123".parse().unwrap());
        assert_eq!(id(&h), "abc-123");
        h.insert(REQUEST_ID, "bad id with spaces".parse().unwrap());
        let fresh = id(&h);
        assert_eq!(fresh.len(), 16);
        assert!(fresh.bytes().all(|b| b.is_ascii_hexdigit()));
        // Asked twice, the same id.
        let r = RequestId {
            given: None,
            id: OnceLock::new(),
        };
        assert_eq!(r.get().to_string(), r.get());
    }

    /// The `Ok` fast path (cached handles) counts into the same series as
    /// the long way, and an error after it still gets its method's label.
    #[tokio::test]
    async fn successes_after_the_first_count_into_the_same_series() {
        use tower::{Layer, Service, ServiceExt};
        let metrics = Metrics::new();
        let layer = ObserveLayer::new(metrics.clone(), 1, Listener::Client);
        let mut svc = layer.layer(tower::service_fn(|req: Request<()>| async move {
            let mut resp = Response::new(());
            if req.headers().contains_key("fail") {
                resp.headers_mut()
                    .insert("grpc-status", HeaderValue::from_static("3"));
            }
            Ok::<_, std::convert::Infallible>(resp)
        }));
        let call = |fail: bool| {
            let mut b = Request::builder().uri("/herald.v1.Herald/Login");
            if fail {
                b = b.header("fail", "1");
            }
            b.body(()).unwrap()
        };
        for fail in [false, false, false, true] {
            svc.ready().await.unwrap().call(call(fail)).await.unwrap();
        }
        let ok = metrics
            .api
            .requests
            .get_or_create(&RequestLabels {
                server: "client",
                method: "/herald.v1.Herald/Login".into(),
                code: "Ok".into(),
            })
            .get();
        let bad = metrics
            .api
            .requests
            .get_or_create(&RequestLabels {
                server: "client",
                method: "/herald.v1.Herald/Login".into(),
                code: "InvalidArgument".into(),
            })
            .get();
        assert_eq!((ok, bad), (3, 1));
        assert_eq!(layer.in_flight.get(), 0);
    }

    #[test]
    fn grpc_codes_are_named() {
        assert_eq!(grpc_code_name("0"), "Ok");
        assert_eq!(grpc_code_name("3"), "InvalidArgument");
        assert_eq!(grpc_code_name("x"), "Unknown");
    }
}

/// Names the message-size limit when tonic refuses a request over it.
///
/// tonic's decoder answers a request over `max_decoding_message_size` with
/// `OUT_OF_RANGE` ("decoded message length too large"), which reads as a
/// bad argument; a size limit is a resource limit. This layer turns that
/// answer (a trailers-only response, so its status is in the headers) into
/// `RESOURCE_EXHAUSTED` naming `limits.grpc_max_message_bytes`.
#[derive(Clone, Copy)]
pub struct MessageLimitLayer {
    limit: usize,
}

impl MessageLimitLayer {
    /// A layer for a listener whose limit is `limit` bytes.
    pub fn new(limit: usize) -> Self {
        MessageLimitLayer { limit }
    }
}

impl<S> tower::Layer<S> for MessageLimitLayer {
    type Service = MessageLimit<S>;
    fn layer(&self, inner: S) -> MessageLimit<S> {
        MessageLimit {
            inner,
            limit: self.limit,
        }
    }
}

/// The service [`MessageLimitLayer`] wraps around a server.
#[derive(Clone)]
pub struct MessageLimit<S> {
    inner: S,
    limit: usize,
}

/// The `RESOURCE_EXHAUSTED` message for tonic's `OUT_OF_RANGE` refusal of
/// an oversized request, or `None` when `headers` say something else.
fn oversized_message(headers: &HeaderMap, limit: usize) -> Option<String> {
    let status = headers.get("grpc-status")?;
    if status.as_bytes() != b"11" {
        return None;
    }
    let raw = headers.get("grpc-message")?.to_str().ok()?;
    let message = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    if !message.contains("decoded message length too large") {
        return None;
    }
    // "found N bytes, the limit is: M bytes"
    let found = message
        .split("found ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or("?");
    Some(format!(
        "request message of {found} bytes is over the limit: \
         limits.grpc_max_message_bytes = {limit}"
    ))
}

impl<S, B, RB> tower::Service<Request<B>> for MessageLimit<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let limit = self.limit;
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            if let Some(message) = oversized_message(resp.headers(), limit) {
                let status = herald_client::refusal(
                    tonic::Code::ResourceExhausted,
                    message,
                    herald_client::proto::ErrorReason::TooLarge,
                );
                let headers = resp.headers_mut();
                headers.remove("grpc-message");
                headers.remove("grpc-status");
                headers.remove("grpc-status-details-bin");
                // Adds grpc-status and the percent-encoded grpc-message.
                let _ = status.add_header(headers);
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod message_limit_tests {
    use super::*;

    #[test]
    fn tonics_oversize_refusal_becomes_resource_exhausted() {
        let mut headers = HeaderMap::new();
        let s = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 5330000 bytes, the limit is: 4194304 bytes",
        );
        s.add_header(&mut headers).unwrap();
        let m = oversized_message(&headers, 4194304).unwrap();
        assert!(
            m.contains("5330000") && m.contains("limits.grpc_max_message_bytes = 4194304"),
            "{m}"
        );
        let mut other = HeaderMap::new();
        tonic::Status::out_of_range("revision compacted")
            .add_header(&mut other)
            .unwrap();
        assert_eq!(oversized_message(&other, 1), None);
    }
}
