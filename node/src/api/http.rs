//! HTTP JSON for web platforms (P-publish's web-service call):
//! `GET /v1/presence?ids=a,b,c[&consistency=serializable]` and `GET /health`;
//! `GET /metrics` serves Prometheus metrics ([`crate::metrics`]).
//! Errors are `{"error": "..."}` with the HTTP code of the gRPC status.
//!
//! Every request passes the node's auth guard first ([`guard`]):
//! `/v1/presence` needs the `reader` role (a client certificate or a bearer
//! token); `/health` and `/metrics` are open, like etcd's, so supervisors
//! and Prometheus need no credential (they still speak TLS).

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use super::client::{batch_get, check_uids};
use super::status::{http_code, node_status, state_status};
use crate::node::Herald;
use crate::security::{PeerCert, PeerInfo, Permission};
use crate::state::{Role, StateError};

/// The HTTP routes of one node.
pub fn router(node: Herald) -> Router {
    Router::new()
        .route("/v1/presence", get(presence))
        .route("/health", get(health))
        .route("/metrics", get(crate::metrics::http_handler))
        .layer(middleware::from_fn_with_state(node.clone(), guard))
        .with_state(node)
}

/// What an HTTP route needs of its caller.
fn permission(path: &str) -> Permission {
    match path {
        "/v1/presence" => Permission::Role(Role::Reader),
        _ => Permission::Open,
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
    (code, Json(json!({ "error": status.message() }))).into_response()
}

#[derive(Deserialize)]
struct PresenceQuery {
    ids: Option<String>,
    consistency: Option<String>,
}

async fn presence(State(node): State<Herald>, Query(q): Query<PresenceQuery>) -> Response {
    let Some(ids) = q.ids.filter(|s| !s.is_empty()) else {
        return error(state_status(&StateError::invalid(
            "ids",
            "required: comma-separated user ids",
        )));
    };
    let uids: Vec<String> = ids.split(',').map(str::to_string).collect();
    if let Err(e) = check_uids(&uids) {
        return error(state_status(&e));
    }
    match q.consistency.as_deref() {
        None | Some("linearizable") => {
            if let Err(e) = node.linearize().await {
                return error(node_status(e));
            }
        }
        Some("serializable") => {}
        Some(other) => {
            return error(state_status(&StateError::invalid(
                "consistency",
                format!("must be linearizable or serializable, got {other:?}"),
            )));
        }
    }
    let r = batch_get(&node, &uids);
    let records: Vec<Value> = r
        .records
        .iter()
        .map(|p| {
            json!({
                "uid": p.uid,
                "sid": p.sid,
                "online": p.online,
                "clients": p.clients.iter().map(|c| json!({
                    "client_type": c.client_type,
                    "since_ms": c.since_ms,
                    "ttl_ms": c.ttl_ms,
                })).collect::<Vec<_>>(),
                "accept_strangers": p.accept_strangers,
                "ext": p.ext,
                "updated_at_ms": p.updated_at_ms,
                "revision": p.revision,
            })
        })
        .collect();
    Json(json!({ "revision": r.revision, "records": records })).into_response()
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
