//! Sessions for web pages (P-handoff), `sessions` role. A terminal is
//! written `KIND:ID`, KIND one of `SIM`, `MSISDN`, `IMEI`, `MAC` (the
//! gRPC API's `TerminalKind` names), e.g. `IMEI:490154203237518`.
//!
//! - `GET /v1/sessions/{id}[?consistency=serializable]`: one session,
//!   `{"session": {...}}` (NOT_FOUND when there is none).
//! - `GET /v1/sessions?terminal=KIND:ID[&page_size=N][&page_token=T]
//!   [&consistency=...]`: the sessions the terminal holds, so a terminal
//!   that lost its session id finds it again:
//!   `{"sessions": [...], "next_page_token"}`.
//! - `GET /v1/sessions/watch[?session_ids=1,2][&terminals=KIND:ID,...]
//!   [&start_revision=N]`: the gRPC `WatchSessions` stream as Server-Sent
//!   Events (`event: session`, `id:` the revision), resumable with
//!   `Last-Event-ID` and refused before it opens exactly like `/v1/watch`
//!   (see [`super::presence`]). A terminal watching itself is told when a
//!   session is handed or offered to it.
//!
//! A session is `{"session_id", "app_url", "requires", "terminal":
//! {"kind", "id"}, "epoch", "seq", "progress" (base64), "created_ms",
//! "updated_ms", "offer": null | {"offer_id", "to", "expires_ms"}}`; an
//! event is `{"revision", "kind" (SessionEventKind name), "session",
//! "from", "to", "time_ms"}`.

use ::herald_client::proto::{
    GetSessionRequest, ListSessionsRequest, Session, SessionEvent, SessionEventKind, Terminal,
    TerminalKind, WatchSessionsRequest,
};
use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::http::{HeaderMap, Uri};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use base64::Engine as _;
use serde_json::{Value, json};

use super::{Answer, Api, Query, enum_name, grpc, path_id, sse, stream_start};
use crate::security::Principal;
use crate::state::StateError;

/// `GET /v1/sessions/{id}`.
pub(super) async fn one(
    api: Api,
    uri: Uri,
    id: Result<Path<u64>, PathRejection>,
    Extension(who): Extension<Principal>,
) -> Answer {
    let session_id = path_id(id)?;
    let q = Query::parse(&uri)?;
    let msg = GetSessionRequest {
        session_id,
        consistency: q.consistency()?,
    };
    let r = api.get_session(grpc(msg, &who)).await?.into_inner();
    Ok(Json(json!({ "session": r.session.as_ref().map(session_json) })).into_response())
}

/// `GET /v1/sessions?terminal=KIND:ID`.
pub(super) async fn list(api: Api, uri: Uri, Extension(who): Extension<Principal>) -> Answer {
    let q = Query::parse(&uri)?;
    let Some(terminal) = q.get("terminal")? else {
        return Err(StateError::invalid("terminal", "required: KIND:ID").into());
    };
    let msg = ListSessionsRequest {
        terminal: Some(terminal_of("terminal", &terminal)?),
        consistency: q.consistency()?,
        page_size: q.number("page_size", 0)?,
        page_token: q.get("page_token")?.unwrap_or_default(),
    };
    let r = api.list_sessions(grpc(msg, &who)).await?.into_inner();
    Ok(Json(json!({
        "sessions": r.sessions.iter().map(session_json).collect::<Vec<_>>(),
        "next_page_token": r.next_page_token,
    }))
    .into_response())
}

/// `GET /v1/sessions/watch`: the session change stream as SSE.
pub(super) async fn watch(
    api: Api,
    uri: Uri,
    headers: HeaderMap,
    Extension(who): Extension<Principal>,
) -> Answer {
    let q = Query::parse(&uri)?;
    let list = |key: &str| -> Result<Vec<String>, StateError> {
        Ok(match q.raw(key).filter(|s| !s.is_empty()) {
            None => Vec::new(),
            Some(raw) => raw
                .split(',')
                .map(|piece| super::decode(key, piece, true))
                .collect::<Result<_, _>>()?,
        })
    };
    let session_ids = list("session_ids")?
        .iter()
        .map(|id| {
            id.trim().parse::<u64>().map_err(|_| {
                StateError::invalid("session_ids", format!("must be session ids, got {id:?}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let terminals = list("terminals")?
        .iter()
        .enumerate()
        .map(|(i, t)| terminal_of(&format!("terminals[{i}]"), t))
        .collect::<Result<Vec<_>, _>>()?;
    let msg = WatchSessionsRequest {
        session_ids,
        terminals,
        start_revision: stream_start(&q, &headers)?,
    };
    let feed = api.watch_sessions(grpc(msg, &who)).await?.into_inner();
    Ok(sse(feed, "session", |e: &SessionEvent| {
        (e.revision, event_json(e))
    }))
}

/// A terminal written `KIND:ID` (the id itself may hold `:`, as a MAC
/// does); the id is checked by the gRPC handler like any terminal.
fn terminal_of(field: &str, raw: &str) -> Result<Terminal, StateError> {
    let (kind, id) = raw
        .split_once(':')
        .ok_or_else(|| StateError::invalid(field, format!("must be KIND:ID, got {raw:?}")))?;
    let kind = TerminalKind::from_str_name(&kind.to_ascii_uppercase())
        .filter(|k| *k != TerminalKind::TerminalUnspecified)
        .ok_or_else(|| {
            StateError::invalid(
                field,
                format!("kind must be one of SIM, MSISDN, IMEI, MAC, got {kind:?}"),
            )
        })?;
    Ok(Terminal {
        kind: kind as i32,
        id: id.to_string(),
    })
}

fn terminal_json(t: &Terminal) -> Value {
    json!({ "kind": enum_name(t.kind, TerminalKind::as_str_name), "id": t.id })
}

fn session_json(s: &Session) -> Value {
    json!({
        "session_id": s.session_id,
        "app_url": s.app_url,
        "requires": s.requires,
        "terminal": s.terminal.as_ref().map(terminal_json),
        "epoch": s.epoch,
        "seq": s.seq,
        "progress": base64::engine::general_purpose::STANDARD.encode(&s.progress),
        "created_ms": s.created_ms,
        "updated_ms": s.updated_ms,
        "offer": s.offer.as_ref().map(|o| json!({
            "offer_id": o.offer_id,
            "to": o.to.as_ref().map(terminal_json),
            "expires_ms": o.expires_ms,
        })),
    })
}

fn event_json(e: &SessionEvent) -> Value {
    json!({
        "revision": e.revision,
        "kind": enum_name(e.kind, SessionEventKind::as_str_name),
        "session": e.session.as_ref().map(session_json),
        "from": e.from.as_ref().map(terminal_json),
        "to": e.to.as_ref().map(terminal_json),
        "time_ms": e.time_ms,
    })
}
