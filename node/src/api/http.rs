//! HTTP JSON for web platforms (P-publish's web-service call):
//!
//! - `GET /v1/presence?ids=a,b,c[&consistency=serializable]`: up to 1000
//!   ids, comma-separated, each percent-decoded after the split (so a uid
//!   with a comma is sent as `%2C`); a query short enough for every proxy.
//! - `POST /v1/presence` with a JSON body `{"ids": ["a", "b"],
//!   "consistency": "serializable"}` (`consistency` optional): the same
//!   lookup for batches of any valid size (1000 ids of up to 128 bytes do
//!   not fit in a URL).
//! - `GET /v1/presence/{uid}[?consistency=...]`: one user, any valid uid
//!   percent-encoded as one path segment; answers `{"revision", "record"}`.
//! - `GET /v1/watch[?ids=a,b][&start_revision=N]`: the presence change
//!   stream of the gRPC `Watch` as Server-Sent Events (`text/event-stream`)
//!   for web pages (`EventSource`): each change is `id:<revision>`,
//!   `event:presence`, `data:<the change as JSON>` (`revision`, `kind`,
//!   `uid`, `client_type`, `connection_id`, `time_ms` and the `record`
//!   after it, in the lookups' record shape). `ids` is parsed like the
//!   lookup's (empty or absent = every user); `start_revision` 0 or absent
//!   = from now. A reconnecting `EventSource` sends `Last-Event-ID: <the
//!   last revision it got>`, and the stream resumes after it (the header
//!   wins over `start_revision`), so nothing is missed or repeated. A start
//!   no longer in the history is refused before the stream opens (400,
//!   reason `COMPACTED`), like the gRPC `Watch` (`OUT_OF_RANGE`); so is a
//!   watch over `limits.max_watch_streams` (429, `QUOTA_EXCEEDED`), a cap
//!   it shares with the gRPC streams. A comment line (`:keep-alive`) every
//!   [`SSE_KEEP_ALIVE`] keeps idle proxies from closing the stream. If the
//!   stream must end (its history was compacted under a slow reader, the
//!   node shuts down), a last `event: error` carries the error document
//!   (`{"error", "reason"}`); resume elsewhere with `Last-Event-ID`.
//! - `GET /v1/link/lookup?from=album&to=shop&item=p1` (or
//!   `&attr=camera_model&value=X100` instead of `item`)
//!   `[&by=score|selections|purchases][&limit=20][&page_token=...]
//!   [&consistency=serializable]`: a linked lookup (P-link) for the web
//!   pages that show linked results, ranked from the index; answers
//!   `{"items": [{"rank", "item_id", "attrs": [{"key", "value"}],
//!   "selections", "purchases", "score"}], "next_page_token"}`. Needs the
//!   `link` role.
//! - `GET /health`; `GET /metrics` serves Prometheus metrics
//!   ([`crate::metrics`]).
//!
//! The batch forms answer `{"revision", "records"}`, one record per id in
//! order (unknown users come back offline). Every error, axum's own
//! refusals included (a query key given twice, percent-encoding that is not
//! UTF-8, a malformed JSON body, an unknown route or method), is
//! `{"error": "...", "reason": "INVALID_FIELD"}` with the HTTP code of its
//! gRPC status (400 for bad input) and the gRPC API's `ErrorReason` name
//! (`NO_ROUTE` for an unknown route or method, `TOO_LARGE` for a body over
//! the limit). Only limits hyper enforces before any route runs (a request
//! line or headers over its buffer: 414/431) answer without that body.
//!
//! The records are written by hand ([`record_json`]), not by a proto3 JSON
//! mapping (pbjson): that mapping would rename the contract's fields to
//! lowerCamelCase and quote 64-bit integers as strings, changing the API
//! web pages already parse.
//!
//! Every request passes the node's auth guard first ([`guard`]):
//! `/v1/presence`, `/v1/presence/{uid}` and `/v1/watch` need the `reader`
//! role (a client
//! certificate or a bearer token); `/health` and `/metrics` are open, like
//! etcd's, so supervisors and Prometheus need no credential (they still
//! speak TLS).

use std::time::Duration;

use ::herald_client::proto::{ErrorReason, PresenceEvent, PresenceEventKind, PresenceRecord};
use axum::Json;
use axum::Router;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use futures::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;

use super::client::{batch_get, check_uid, check_uids, open_watch};
use super::convert as cv;
use super::status::{http_code, node_status, state_status};
use crate::node::Herald;
use crate::security::{PeerCert, PeerInfo, Permission};
use crate::state::{Role, StateError};

/// The HTTP routes of one node.
pub fn router(node: Herald) -> Router {
    Router::new()
        .route("/v1/presence", get(presence_get).post(presence_post))
        .route("/v1/presence/{uid}", get(presence_one))
        .route("/v1/watch", get(watch))
        .route("/v1/shares/{id}", get(share_one))
        .route("/v1/storage", get(storage_list))
        .route("/v1/link/lookup", get(link_lookup))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .layer(middleware::from_fn_with_state(node.clone(), guard))
        .with_state(node)
}

/// What an HTTP route needs of its caller.
fn permission(path: &str) -> Permission {
    if path == "/v1/presence" || path.starts_with("/v1/presence/") || path == "/v1/watch" {
        Permission::Role(Role::Reader)
    } else if path.starts_with("/v1/shares/") || path == "/v1/storage" {
        Permission::Role(Role::Share)
    } else if path == "/v1/link/lookup" {
        Permission::Role(Role::Link)
    } else {
        Permission::Open
    }
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

fn invalid(field: &str, reason: impl Into<String>) -> Response {
    error(state_status(&StateError::invalid(field, reason)))
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

/// The lookup's and the watch's query: `ids` (raw, still encoded),
/// `consistency` and `start_revision` (decoded). Each key at most once;
/// other keys are ignored.
#[derive(Default)]
struct PresenceQuery {
    ids: Option<String>,
    consistency: Option<String>,
    start_revision: Option<String>,
}

fn parse_query(query: Option<&str>) -> Result<PresenceQuery, StateError> {
    let mut q = PresenceQuery::default();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode("query", key, true)?;
        let slot = match key.as_str() {
            "ids" => &mut q.ids,
            "consistency" => &mut q.consistency,
            "start_revision" => &mut q.start_revision,
            _ => continue,
        };
        if slot.is_some() {
            return Err(StateError::invalid(key, "given more than once"));
        }
        // `ids` stays encoded: it is split on `,` before decoding.
        *slot = Some(if key == "ids" {
            value.to_string()
        } else {
            decode(&key, value, true)?
        });
    }
    Ok(q)
}

/// The read barrier a `consistency` asks for (linearizable by default).
async fn read_barrier(node: &Herald, consistency: Option<&str>) -> Result<(), Box<Response>> {
    match consistency {
        None | Some("linearizable") => node
            .linearize()
            .await
            .map_err(|e| Box::new(error(node_status(e)))),
        Some("serializable") => Ok(()),
        Some(other) => Err(Box::new(invalid(
            "consistency",
            format!("must be linearizable or serializable, got {other:?}"),
        ))),
    }
}

async fn presence_get(State(node): State<Herald>, uri: Uri) -> Response {
    let q = match parse_query(uri.query()) {
        Ok(q) => q,
        Err(e) => return error(state_status(&e)),
    };
    let Some(ids) = q.ids.filter(|s| !s.is_empty()) else {
        return invalid("ids", "required: comma-separated user ids");
    };
    match split_ids(&ids) {
        Ok(uids) => lookup(&node, uids, q.consistency.as_deref()).await,
        Err(e) => error(state_status(&e)),
    }
}

/// The `ids` of a query, split on `,` first, then each percent-decoded
/// (`%2C` is a comma inside a uid).
fn split_ids(ids: &str) -> Result<Vec<String>, StateError> {
    ids.split(',').map(|raw| decode("ids", raw, true)).collect()
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

/// `GET /v1/watch`: the presence change stream as Server-Sent Events (see
/// the module doc). The watch itself is the gRPC `Watch`'s
/// ([`open_watch`]); this only writes its events as SSE.
async fn watch(State(node): State<Herald>, uri: Uri, headers: HeaderMap) -> Response {
    let q = match parse_query(uri.query()) {
        Ok(q) => q,
        Err(e) => return error(state_status(&e)),
    };
    let uids = match q.ids.as_deref().filter(|s| !s.is_empty()).map(split_ids) {
        None => Vec::new(),
        Some(Ok(uids)) => uids,
        Some(Err(e)) => return error(state_status(&e)),
    };
    // A reconnecting EventSource names the last event it got: resume right
    // after it, whatever the URL's start says.
    let last_event_id = match headers.get("last-event-id").map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => match revision("Last-Event-ID", v) {
            Ok(r) => Some(r),
            Err(e) => return error(state_status(&e)),
        },
        Some(Err(_)) => return invalid("Last-Event-ID", "must be ASCII"),
    };
    let start = match (last_event_id, q.start_revision.as_deref()) {
        (Some(last), _) => last.saturating_add(1),
        (None, Some(raw)) => match revision("start_revision", raw) {
            Ok(r) => r,
            Err(e) => return error(state_status(&e)),
        },
        (None, None) => 0,
    };
    let feed = match open_watch(&node, uids, start) {
        Ok(feed) => feed,
        Err(status) => return error(status),
    };
    // The feed ends after its one error, if any: the last event is then
    // `error`.
    let events = ReceiverStream::new(feed).map(|e| {
        Ok::<Event, std::convert::Infallible>(match e {
            Ok(e) => {
                let json = event_json(&cv::event_pb(&e));
                Event::default()
                    .id(e.revision.to_string())
                    .event("presence")
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

/// A presence change as the event stream's JSON: the gRPC event's fields,
/// the kind by its proto name (`LOGIN`, `LOGOUT`, `PERMISSION`,
/// `EXPIRED`), the record in the lookups' shape.
fn event_json(e: &PresenceEvent) -> Value {
    let kind = PresenceEventKind::try_from(e.kind)
        .map_or_else(|_| e.kind.to_string(), |k| k.as_str_name().to_string());
    json!({
        "revision": e.revision,
        "kind": kind,
        "uid": e.uid,
        "client_type": e.client_type,
        "connection_id": e.connection_id,
        "record": e.record.as_ref().map(record_json),
        "time_ms": e.time_ms,
    })
}

/// `POST /v1/presence`'s body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceBody {
    ids: Vec<String>,
    consistency: Option<String>,
}

async fn presence_post(
    State(node): State<Herald>,
    body: Result<Json<PresenceBody>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(b)) => {
            if b.ids.is_empty() {
                return invalid("ids", "required: a list of user ids");
            }
            lookup(&node, b.ids, b.consistency.as_deref()).await
        }
        // A body that is JSON but not this shape is bad input like any
        // other (400, not axum's 422); a missing content type stays 415, a
        // body over the limit 413.
        Err(rejection) => {
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
    }
}

async fn lookup(node: &Herald, uids: Vec<String>, consistency: Option<&str>) -> Response {
    if let Err(e) = check_uids(&uids) {
        return error(state_status(&e));
    }
    if let Err(r) = read_barrier(node, consistency).await {
        return *r;
    }
    let r = batch_get(node, &uids, usize::MAX);
    let records: Vec<Value> = r.records.iter().map(record_json).collect();
    Json(json!({ "revision": r.revision, "records": records })).into_response()
}

async fn presence_one(
    State(node): State<Herald>,
    uri: Uri,
    uid: Result<Path<String>, PathRejection>,
) -> Response {
    // axum's Path has percent-decoded the segment; it refuses bad UTF-8.
    let uid = match uid {
        Ok(Path(uid)) => uid,
        Err(rejection) => return invalid("uid", rejection.body_text()),
    };
    if let Err(e) = check_uid(&uid) {
        return error(state_status(&e));
    }
    let q = match parse_query(uri.query()) {
        Ok(q) => q,
        Err(e) => return error(state_status(&e)),
    };
    if let Err(r) = read_barrier(&node, q.consistency.as_deref()).await {
        return *r;
    }
    let r = batch_get(&node, std::slice::from_ref(&uid), usize::MAX);
    let record = r.records.first().map(record_json);
    Json(json!({ "revision": r.revision, "record": record })).into_response()
}

/// `GET /v1/shares/{id}`: one media share (P-share), for web pages that
/// show a shared item; never its keys.
async fn share_one(
    State(node): State<Herald>,
    uri: Uri,
    id: Result<Path<u64>, PathRejection>,
) -> Response {
    let id = match id {
        Ok(Path(id)) => id,
        Err(rejection) => return invalid("id", rejection.body_text()),
    };
    let q = match parse_query(uri.query()) {
        Ok(q) => q,
        Err(e) => return error(state_status(&e)),
    };
    if let Err(r) = read_barrier(&node, q.consistency.as_deref()).await {
        return *r;
    }
    let m = node.store().read();
    let share = m.state.share();
    let Some(s) = share.get(id) else {
        return error(state_status(&StateError::not_found(format!("share {id}"))));
    };
    let address = share
        .storage(&s.server_id)
        .map(|v| v.address.as_str())
        .unwrap_or("");
    let pb = super::client::share_pb(s, address);
    Json(json!({
        "share_id": pb.share_id,
        "owner": pb.owner,
        "receivers": pb.receivers,
        "server_id": pb.server_id,
        "address": pb.address,
        "size_bytes": pb.size_bytes,
        "state": match s.state {
            crate::state::share::ShareState::Reserved => "reserved",
            crate::state::share::ShareState::Committed => "committed",
        },
        "created_ms": pb.created_ms,
        "deadline_ms": pb.deadline_ms,
    }))
    .into_response()
}

/// `GET /v1/storage`: every storage server, its bytes and whether it is up.
async fn storage_list(State(node): State<Herald>, uri: Uri) -> Response {
    let q = match parse_query(uri.query()) {
        Ok(q) => q,
        Err(e) => return error(state_status(&e)),
    };
    if let Err(r) = read_barrier(&node, q.consistency.as_deref()).await {
        return *r;
    }
    let m = node.store().read();
    let now = node.clock().now_ms().max(m.state.now_ms());
    let servers: Vec<Value> = m
        .state
        .share()
        .servers()
        .map(|s| {
            json!({
                "server_id": s.server_id,
                "address": s.address,
                "capacity_bytes": s.capacity_bytes,
                "reserved_bytes": s.reserved_bytes,
                "committed_bytes": s.committed_bytes,
                "shares": s.shares,
                "up": s.is_up(now),
            })
        })
        .collect();
    Json(json!({ "cluster_time_ms": now, "servers": servers })).into_response()
}

fn record_json(p: &PresenceRecord) -> Value {
    json!({
        "uid": p.uid,
        "sid": p.sid,
        "online": p.online,
        "clients": p.clients.iter().map(|c| json!({
            "client_type": c.client_type,
            "connection_id": c.connection_id,
            "since_ms": c.since_ms,
            "ttl_ms": c.ttl_ms,
        })).collect::<Vec<_>>(),
        "accept_strangers": p.accept_strangers,
        "ext": p.ext,
        "updated_at_ms": p.updated_at_ms,
        "revision": p.revision,
    })
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

/// `GET /v1/link/lookup`: a linked lookup as JSON (see the module doc);
/// the same answer as the gRPC `LinkedLookup`.
async fn link_lookup(State(node): State<Herald>, uri: Uri) -> Response {
    let mut r = ::herald_client::proto::LinkedLookupRequest::default();
    let mut consistency: Option<String> = None;
    let mut seen = std::collections::BTreeSet::new();
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let parsed = decode("query", key, true).and_then(|k| {
            let v = decode(&k, value, true)?;
            Ok((k, v))
        });
        let (key, value) = match parsed {
            Ok(kv) => kv,
            Err(e) => return error(state_status(&e)),
        };
        if !seen.insert(key.clone()) {
            return invalid(&key, "given more than once");
        }
        match key.as_str() {
            "from" => r.from_catalog = value,
            "to" => r.to_catalog = value,
            "item" => r.item_id = value,
            "attr" => r.attr = value,
            "value" => r.value = value,
            "page_token" => r.page_token = value,
            "consistency" => consistency = Some(value),
            "by" => {
                use ::herald_client::proto::RankBy;
                r.rank_by = match value.as_str() {
                    "score" => RankBy::Score,
                    "selections" => RankBy::Selections,
                    "purchases" => RankBy::Purchases,
                    _ => return invalid("by", "must be score, selections or purchases"),
                } as i32;
            }
            "limit" => match value.parse() {
                Ok(n) => r.limit = n,
                Err(_) => return invalid("limit", format!("must be 1..=1000, got {value:?}")),
            },
            _ => {}
        }
    }
    if let Err(resp) = read_barrier(&node, consistency.as_deref()).await {
        return *resp;
    }
    let answer = {
        let m = node.store().read();
        super::client::link::linked_lookup(&m.state, &r)
    };
    match answer {
        Ok(a) => Json(json!({
            "items": a.items.iter().map(|ri| {
                let item = ri.item.clone().unwrap_or_default();
                json!({
                    "rank": ri.rank,
                    "item_id": item.item_id,
                    "attrs": item.attrs.iter()
                        .map(|a| json!({"key": a.key, "value": a.value}))
                        .collect::<Vec<_>>(),
                    "selections": item.selections,
                    "purchases": item.purchases,
                    "score": item.score,
                })
            }).collect::<Vec<_>>(),
            "next_page_token": a.next_page_token,
        }))
        .into_response(),
        Err(e) => error(state_status(&e)),
    }
}
