//! HTTP JSON for web platforms: the calls a web page makes, answered by
//! the same handlers as the gRPC API (so validation, limits and errors are
//! the gRPC API's), written as JSON by hand.
//!
//! One file per domain, each with its routes' reference:
//! - [`presence`]: `GET|POST /v1/presence`, `GET /v1/presence/{uid}` and the
//!   `GET /v1/watch` Server-Sent Events stream (P-publish); `reader` role.
//! - [`sessions`]: `GET /v1/sessions/{id}`, `GET /v1/sessions?terminal=`
//!   and the `GET /v1/sessions/watch` event stream (P-handoff), so the
//!   terminal that receives a session is told; `sessions` role.
//! - [`units`]: `POST /v1/pools/{id}/lease` (with `"login": true`, the
//!   automatic login), `POST /v1/units/{id}/login` and
//!   `GET /v1/platforms/{id}/contents/{content}` (P-iptv's first access
//!   request); `pools` role.
//! - [`share`]: `GET /v1/shares/{id}`, `GET /v1/storage` (P-share); `share`
//!   role.
//! - [`link`]: `GET /v1/link/lookup` (P-link); `link` role.
//! - `GET /health`; `GET /metrics` serves Prometheus metrics
//!   ([`crate::metrics`]). Both open, like etcd's, so supervisors and
//!   Prometheus need no credential (they still speak TLS).
//!
//! Every error, axum's own refusals included (a query key given twice,
//! percent-encoding that is not UTF-8, a malformed JSON body, an unknown
//! route or method), is `{"error": "...", "reason": "INVALID_FIELD"}` with
//! the HTTP code of its gRPC status (400 for bad input) and the gRPC API's
//! `ErrorReason` name (`NO_ROUTE` for an unknown route or method,
//! `TOO_LARGE` for a body over the limit). Only limits hyper enforces
//! before any route runs (a request line or headers over its buffer:
//! 414/431) answer without that body.
//!
//! Answers are written by hand, not by a proto3 JSON mapping (pbjson): that
//! mapping would rename the contract's fields to lowerCamelCase and quote
//! 64-bit integers as strings, changing the API web pages already parse.
//! Enums are written by their proto names; `bytes` fields in base64.
//!
//! Every request passes the node's auth guard first ([`guard`]), with a
//! client certificate or a bearer token; the role each route needs is in
//! [`permission`].

mod link;
mod presence;
mod sessions;
mod share;
mod units;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ::herald_client::proto::ErrorReason;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures::{Stream, StreamExt as _};
use serde_json::{Value, json};

use super::client::HeraldService;
use super::layer::{Accounting, Listener};
use super::status::{http_code, node_status, state_status};
use crate::node::Herald;
use crate::security::{PeerCert, PeerInfo, Permission, Principal};
use crate::state::{Role, StateError};

/// The gRPC client service the HTTP routes call, one per router.
type Api = Extension<Arc<HeraldService>>;

/// A refusal: a gRPC status, written as the error document.
pub(super) struct Refused(tonic::Status);

impl From<tonic::Status> for Refused {
    fn from(s: tonic::Status) -> Self {
        Refused(s)
    }
}

impl From<StateError> for Refused {
    fn from(e: StateError) -> Self {
        Refused(state_status(&e))
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        error(self.0)
    }
}

/// What a route answers: its JSON, or a refusal.
type Answer = Result<Response, Refused>;

/// A tonic request carrying `msg` and the caller the guard found, as the
/// gRPC listener's guard would have left it.
fn grpc<T>(msg: T, principal: &Principal) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.extensions_mut().insert(principal.clone());
    r
}

/// The HTTP routes of one node.
pub fn router(node: Herald) -> Router {
    Router::new()
        .route("/v1/presence", get(presence::get).post(presence::post))
        .route("/v1/presence/{uid}", get(presence::one))
        .route("/v1/watch", get(presence::watch))
        .route("/v1/sessions", get(sessions::list))
        .route("/v1/sessions/watch", get(sessions::watch))
        .route("/v1/sessions/{id}", get(sessions::one))
        .route("/v1/pools/{id}/lease", post(units::lease))
        .route("/v1/units/{id}/login", post(units::login))
        .route(
            "/v1/platforms/{id}/contents/{content}",
            get(units::first_access),
        )
        .route("/v1/shares/{id}", get(share::one))
        .route("/v1/storage", get(share::storage))
        .route("/v1/link/lookup", get(link::lookup))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .layer(middleware::from_fn_with_state(node.clone(), guard))
        .layer(Extension(Arc::new(HeraldService::new(
            node.clone(),
            Accounting::new(node.metrics().clone(), Listener::Http),
        ))))
        .with_state(node)
}

/// What an HTTP route needs of its caller, by its first segment after
/// `/v1/` (an unknown route is open: it only answers `NO_ROUTE`).
fn permission(path: &str) -> Permission {
    let mut parts = path.trim_start_matches('/').split('/');
    let role = match (parts.next(), parts.next()) {
        (Some("v1"), Some("presence" | "watch")) => Role::Reader,
        (Some("v1"), Some("sessions")) => Role::Sessions,
        (Some("v1"), Some("pools" | "units" | "platforms")) => Role::Pools,
        (Some("v1"), Some("shares" | "storage")) => Role::Share,
        (Some("v1"), Some("link")) => Role::Link,
        _ => return Permission::Open,
    };
    Permission::Role(role)
}

/// The node's auth guard in front of every route.
async fn guard(State(node): State<Herald>, mut req: Request, next: Next) -> Response {
    let cert = req
        .extensions()
        .get::<ConnectInfo<PeerInfo>>()
        .map_or(PeerCert::None, |c| c.0.cert.clone());
    let path = req.uri().path().to_string();
    match node
        .guard()
        .check("http", &cert, req.headers(), permission(&path), &path)
    {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Err(refusal) => error(super::status::refusal_status(&refusal)),
    }
}

fn error(status: tonic::Status) -> Response {
    let code =
        StatusCode::from_u16(http_code(status.code())).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let reason = herald_client::reason_of(&status).unwrap_or_else(|| {
        super::status::edge_reason(status.code())
            .as_str_name()
            .to_string()
    });
    json_error(code, status.message(), &reason)
}

/// The one error document: `{"error": message, "reason": REASON}` with
/// `code`; the reason is the gRPC API's `herald.v1.ErrorReason` name.
fn json_error(code: StatusCode, message: &str, reason: &str) -> Response {
    (code, Json(json!({ "error": message, "reason": reason }))).into_response()
}

async fn no_route(uri: Uri) -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        &format!("no such route: {}", uri.path()),
        ErrorReason::NoRoute.as_str_name(),
    )
}

async fn no_method() -> Response {
    json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
        ErrorReason::NoRoute.as_str_name(),
    )
}

/// Percent-decodes one query or path piece; `+` is a space in a query.
/// Percent-encoding that does not decode to UTF-8 is refused, never
/// replaced with U+FFFD (that would look up a different user).
fn decode(field: &str, raw: &str, plus_is_space: bool) -> Result<String, StateError> {
    let raw = if plus_is_space {
        raw.replace('+', " ")
    } else {
        raw.to_string()
    };
    percent_encoding::percent_decode_str(&raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| StateError::invalid(field, "percent-encoding is not valid UTF-8"))
}

/// A query string: each key percent-decoded and given at most once, its
/// value kept raw (still encoded) until a route asks for it, so a list
/// like `ids` can be split on `,` before its pieces are decoded. Keys no
/// route reads are ignored.
pub(super) struct Query(BTreeMap<String, String>);

impl Query {
    pub(super) fn parse(uri: &Uri) -> Result<Query, StateError> {
        let mut pairs = BTreeMap::new();
        for pair in uri.query().unwrap_or("").split('&') {
            if pair.is_empty() {
                continue;
            }
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode("query", key, true)?;
            if pairs.contains_key(&key) {
                return Err(StateError::invalid(key, "given more than once"));
            }
            pairs.insert(key, value.to_string());
        }
        Ok(Query(pairs))
    }

    /// `key`'s value, still percent-encoded.
    pub(super) fn raw(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// `key`'s value, decoded (`+` is a space).
    pub(super) fn get(&self, key: &str) -> Result<Option<String>, StateError> {
        self.raw(key).map(|v| decode(key, v, true)).transpose()
    }

    /// `key` as an unsigned integer, or `default` when absent.
    pub(super) fn number<N: std::str::FromStr>(
        &self,
        key: &str,
        default: N,
    ) -> Result<N, StateError> {
        match self.get(key)? {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| {
                StateError::invalid(key, format!("must be an unsigned integer, got {v:?}"))
            }),
        }
    }

    /// `consistency` as the gRPC API's `Consistency` (linearizable when
    /// absent).
    pub(super) fn consistency(&self) -> Result<i32, StateError> {
        use ::herald_client::proto::Consistency;
        Ok(match self.get("consistency")?.as_deref() {
            None | Some("linearizable") => Consistency::Linearizable,
            Some("serializable") => Consistency::Serializable,
            Some(other) => {
                return Err(StateError::invalid(
                    "consistency",
                    format!("must be linearizable or serializable, got {other:?}"),
                ));
            }
        } as i32)
    }
}

/// The read barrier a query's `consistency` asks for (linearizable by
/// default), for routes that read the state themselves.
async fn read_barrier(node: &Herald, q: &Query) -> Result<(), Refused> {
    use ::herald_client::proto::Consistency;
    if q.consistency()? == Consistency::Linearizable as i32 {
        node.linearize().await.map_err(node_status)?;
    }
    Ok(())
}

/// A numeric id from the path (`{id}`), refused as bad input when it is
/// not one.
fn path_id(
    id: Result<axum::extract::Path<u64>, axum::extract::rejection::PathRejection>,
) -> Result<u64, Refused> {
    id.map(|p| p.0)
        .map_err(|r| StateError::invalid("id", r.body_text()).into())
}

/// A JSON body axum could not take, as the error document: JSON that is not
/// the route's shape is bad input like any other (400, not axum's 422); a
/// missing content type stays 415, a body over the limit 413.
fn body_refused(rejection: JsonRejection) -> Response {
    let code = match rejection.status() {
        StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
        other => other,
    };
    let reason = match code {
        StatusCode::PAYLOAD_TOO_LARGE => ErrorReason::TooLarge,
        _ => ErrorReason::InvalidField,
    };
    json_error(code, &rejection.body_text(), reason.as_str_name())
}

/// How often an idle event stream gets a comment line, so proxies and load
/// balancers that close silent connections (often after 30 to 60 s) keep it.
pub const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// A revision from `field` (a query value or the `Last-Event-ID` header).
fn revision(field: &str, raw: &str) -> Result<u64, StateError> {
    raw.trim().parse().map_err(|_| {
        StateError::invalid(
            field,
            format!("must be a revision (an unsigned integer), got {raw:?}"),
        )
    })
}

/// Where an event stream starts: right after the `Last-Event-ID` a
/// reconnecting `EventSource` sends (it wins over the URL), else the
/// query's `start_revision` (0 or absent = from now).
fn stream_start(q: &Query, headers: &HeaderMap) -> Result<u64, StateError> {
    match headers.get("last-event-id").map(|v| v.to_str()) {
        Some(Ok(v)) => Ok(revision("Last-Event-ID", v)?.saturating_add(1)),
        Some(Err(_)) => Err(StateError::invalid("Last-Event-ID", "must be ASCII")),
        None => match q.get("start_revision")? {
            Some(raw) => revision("start_revision", &raw),
            None => Ok(0),
        },
    }
}

/// A watch's events as Server-Sent Events: each is `id:<revision>`,
/// `event:<name>`, `data:<JSON>`. The feed ends after its one error, if
/// any: the last event is then `event: error` with the error document.
fn sse<T: 'static, S>(feed: S, name: &'static str, write: fn(&T) -> (u64, Value)) -> Response
where
    S: Stream<Item = Result<T, tonic::Status>> + Send + 'static,
{
    let events = feed.map(move |e| {
        Ok::<Event, std::convert::Infallible>(match e {
            Ok(e) => {
                let (revision, json) = write(&e);
                Event::default()
                    .id(revision.to_string())
                    .event(name)
                    .data(json.to_string())
            }
            Err(status) => {
                let reason = herald_client::reason_of(&status).unwrap_or_default();
                Event::default()
                    .event("error")
                    .data(json!({ "error": status.message(), "reason": reason }).to_string())
            }
        })
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE).text("keep-alive"))
        .into_response()
}

/// A proto enum value by its proto name (the number when it is unknown).
fn enum_name<E: TryFrom<i32>>(value: i32, name: fn(&E) -> &'static str) -> Value {
    match E::try_from(value) {
        Ok(e) => name(&e).into(),
        Err(_) => value.into(),
    }
}

/// 200 only while the node can serve: Raft running and a leader known.
/// A node whose Raft core stopped (a fatal storage error) answers 503
/// `stopped` with the cause until its process exits.
async fn health(State(node): State<Herald>) -> Response {
    let stopped =
        node.log().failure().borrow().clone().or_else(|| {
            node.with_metrics(|m| m.running_state.as_ref().err().map(|e| e.to_string()))
        });
    let leader = node.leader().map(|(id, _)| id);
    let waiting = node.waiting();
    let status = match (&stopped, &waiting, leader) {
        (Some(_), _, _) => "stopped",
        (None, Some(_), _) => "waiting",
        (None, None, Some(_)) => "ok",
        (None, None, None) => "no-leader",
    };
    let mut body = json!({
        "status": status,
        "id": node.id(),
        "number": node.config().number,
        "leader": leader,
        "applied": *node.store().applied().borrow(),
        "nospace_alarm": node.space().alarm(),
    });
    if let Some(cause) = stopped {
        body["error"] = cause.into();
    }
    if let Some(why) = waiting {
        body["waiting"] = why.into();
    }
    let code = if status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// `GET /metrics`: OpenMetrics when the scraper asks for it (Prometheus
/// does), else Prometheus text format 0.0.4.
async fn metrics(State(node): State<Herald>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    match node.render_metrics() {
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
            crate::metrics::to_prometheus_text(&body),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
