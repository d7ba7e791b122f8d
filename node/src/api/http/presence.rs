//! Presence for web pages (P-publish's web-service call):
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
//!   [`super::SSE_KEEP_ALIVE`] keeps idle proxies from closing the stream.
//!   If the stream must end (its history was compacted under a slow
//!   reader, the node shuts down), a last `event: error` carries the error
//!   document (`{"error", "reason"}`); resume elsewhere with
//!   `Last-Event-ID`.
//!
//! The batch forms answer `{"revision", "records"}`, one record per id in
//! order (unknown users come back offline). All need the `reader` role.

use ::herald_client::proto::{PresenceEvent, PresenceEventKind, PresenceRecord};
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_stream::wrappers::ReceiverStream;

use super::{Answer, Query, Refused, body_refused, enum_name, read_barrier, sse, stream_start};
use crate::api::client::{batch_get, check_uid, check_uids, open_watch};
use crate::api::convert as cv;
use crate::node::Herald;
use crate::state::StateError;

/// `GET /v1/presence?ids=...`.
pub(super) async fn get(State(node): State<Herald>, uri: Uri) -> Answer {
    let q = Query::parse(&uri)?;
    let Some(ids) = q.raw("ids").filter(|s| !s.is_empty()) else {
        return Err(StateError::invalid("ids", "required: comma-separated user ids").into());
    };
    lookup(&node, split_ids(ids)?, &q).await
}

/// The `ids` of a query, split on `,` first, then each percent-decoded
/// (`%2C` is a comma inside a uid).
fn split_ids(ids: &str) -> Result<Vec<String>, StateError> {
    ids.split(',')
        .map(|raw| super::decode("ids", raw, true))
        .collect()
}

/// `GET /v1/watch`: the presence change stream as Server-Sent Events (see
/// the module doc). The watch itself is the gRPC `Watch`'s
/// ([`open_watch`]); this only writes its events as SSE.
pub(super) async fn watch(State(node): State<Herald>, uri: Uri, headers: HeaderMap) -> Answer {
    let q = Query::parse(&uri)?;
    let uids = match q.raw("ids").filter(|s| !s.is_empty()) {
        None => Vec::new(),
        Some(ids) => split_ids(ids)?,
    };
    let start = stream_start(&q, &headers)?;
    let feed = open_watch(&node, uids, start)?;
    Ok(sse(ReceiverStream::new(feed), "presence", |e| {
        (e.revision, event_json(&cv::event_pb(e)))
    }))
}

/// A presence change as the event stream's JSON: the gRPC event's fields,
/// the kind by its proto name (`LOGIN`, `LOGOUT`, `PERMISSION`,
/// `EXPIRED`), the record in the lookups' shape.
fn event_json(e: &PresenceEvent) -> Value {
    json!({
        "revision": e.revision,
        "kind": enum_name(e.kind, PresenceEventKind::as_str_name),
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
pub(super) struct PresenceBody {
    ids: Vec<String>,
    consistency: Option<String>,
}

/// `POST /v1/presence`: the lookup with its ids in a JSON body.
pub(super) async fn post(
    State(node): State<Herald>,
    body: Result<Json<PresenceBody>, JsonRejection>,
) -> Answer {
    let b = match body {
        Ok(Json(b)) => b,
        Err(rejection) => return Ok(body_refused(rejection)),
    };
    if b.ids.is_empty() {
        return Err(StateError::invalid("ids", "required: a list of user ids").into());
    }
    // The body's consistency, read as the query's would be.
    let mut pairs = std::collections::BTreeMap::new();
    if let Some(c) = b.consistency {
        pairs.insert("consistency".to_string(), c);
    }
    lookup(&node, b.ids, &Query(pairs)).await
}

async fn lookup(node: &Herald, uids: Vec<String>, q: &Query) -> Answer {
    check_uids(&uids)?;
    read_barrier(node, q).await?;
    let r = batch_get(node, &uids, usize::MAX);
    let records: Vec<Value> = r.records.iter().map(record_json).collect();
    Ok(Json(json!({ "revision": r.revision, "records": records })).into_response())
}

/// `GET /v1/presence/{uid}`.
pub(super) async fn one(
    State(node): State<Herald>,
    uri: Uri,
    uid: Result<Path<String>, PathRejection>,
) -> Answer {
    // axum's Path has percent-decoded the segment; it refuses bad UTF-8.
    let uid = uid
        .map_err(|r| Refused::from(StateError::invalid("uid", r.body_text())))?
        .0;
    check_uid(&uid)?;
    let q = Query::parse(&uri)?;
    read_barrier(&node, &q).await?;
    let r = batch_get(&node, std::slice::from_ref(&uid), usize::MAX);
    let record = r.records.first().map(record_json);
    Ok(Json(json!({ "revision": r.revision, "record": record })).into_response())
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
