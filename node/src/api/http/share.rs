//! Media sharing for web pages (P-share), `share` role:
//! - `GET /v1/shares/{id}[?consistency=...]`: one share (never its keys):
//!   `{"share_id", "owner", "receivers", "server_id", "address",
//!   "size_bytes", "state": "reserved"|"committed", "created_ms",
//!   "deadline_ms"}`.
//! - `GET /v1/storage[?consistency=...]`: every storage server with its
//!   bytes and whether it is up at cluster time.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::{Answer, Query, path_id, read_barrier};
use crate::node::Herald;
use crate::state::StateError;

/// `GET /v1/shares/{id}`: one media share (P-share), for web pages that
/// show a shared item; never its keys.
pub(super) async fn one(
    State(node): State<Herald>,
    uri: Uri,
    id: Result<Path<u64>, PathRejection>,
) -> Answer {
    let id = path_id(id)?;
    read_barrier(&node, &Query::parse(&uri)?).await?;
    let m = node.store().read();
    let share = m.state.share();
    let Some(s) = share.get(id) else {
        return Err(StateError::not_found(format!("share {id}")).into());
    };
    let address = share
        .storage(&s.server_id)
        .map(|v| v.address.as_str())
        .unwrap_or("");
    let pb = crate::api::client::share_pb(s, address);
    Ok(Json(json!({
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
    .into_response())
}

/// `GET /v1/storage`: every storage server, its bytes and whether it is up.
pub(super) async fn storage(State(node): State<Herald>, uri: Uri) -> Answer {
    read_barrier(&node, &Query::parse(&uri)?).await?;
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
                "up": s.is_up(),
                "heartbeat_ttl_ms": s.heartbeat_ttl_ms,
                "up_since_ms": s.up_since_ms,
            })
        })
        .collect();
    Ok(Json(json!({ "cluster_time_ms": now, "servers": servers })).into_response())
}
