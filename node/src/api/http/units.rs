//! Leases, logins and the first access request for web pages (P-iptv),
//! `pools` role. Each answers what its gRPC call answers, as JSON.
//!
//! - `POST /v1/pools/{id}/lease` with `{"user", "ttl_ms"?, "request_id"?,
//!   "login"?}`: leases an account of the pool (`LeaseAccount`); with
//!   `"login": true` also logs in to the pool's unit with it in the same
//!   call (`LeaseAndLogin`, the automatic login, which needs a
//!   `request_id` so a retry logs in with the same lease). Answers `{"lease":
//!   {...}, "password", "lease_secret", "replayed", "service": {"unit_id",
//!   "qos_class", "response_time_ms"}}`, plus `"login": {...}` with
//!   `login`. A lease outside the unit's service period or under a closed
//!   policy is refused (409, `OUT_OF_SERVICE` or `UNIT_CLOSED`).
//! - `POST /v1/units/{id}/login` with `{"account", "password", "user",
//!   "lease_secret"?}`: `AccountLogin`, for a leased or a registered
//!   account. Answers `{"ok", "reason", "lease", "data" (values base64),
//!   "service", "registered"}`; a refused login is `ok: false` with its
//!   reason, like the gRPC answer.
//! - `GET /v1/platforms/{id}/contents/{content}[?consistency=...]`: the
//!   first access request (`FirstAccess`): `{"platform_id", "content_id",
//!   "mode": "UNITS_LIST"|"UNITS_ALL"|"UNITS_NONE", "units": [{"unit":
//!   {"unit_id", "platform_id", "spec": {...}}, "available"}]}`.
//!
//! Answers that carry a password or lease secret are sent with
//! `Cache-Control: no-store`: they are shown once and must not be kept by
//! a cache on the way.

use ::herald_client::proto::{
    AccessPolicy, AccountLoginRequest, AccountLoginResponse, ContentUnitsMode, FirstAccessRequest,
    Lease, LeaseAndLoginRequest, LeaseRequest, LeaseResponse, ShownUnit, UnitService,
};
use axum::extract::Path;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::http::{Uri, header};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Answer, Api, Query, body_refused, enum_name, grpc, path_id};
use crate::security::Principal;

/// `POST /v1/pools/{id}/lease`'s body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LeaseBody {
    user: String,
    #[serde(default)]
    ttl_ms: u64,
    #[serde(default)]
    request_id: String,
    #[serde(default)]
    login: bool,
}

/// `POST /v1/pools/{id}/lease`.
pub(super) async fn lease(
    api: Api,
    Extension(who): Extension<Principal>,
    id: Result<Path<u64>, PathRejection>,
    body: Result<Json<LeaseBody>, JsonRejection>,
) -> Answer {
    let pool_id = path_id(id)?;
    let b = match body {
        Ok(Json(b)) => b,
        Err(rejection) => return Ok(body_refused(rejection)),
    };
    let lease = LeaseRequest {
        pool_id,
        user: b.user,
        ttl_ms: b.ttl_ms,
        request_id: b.request_id,
    };
    let answer = if b.login {
        let r = api
            .lease_and_login(grpc(LeaseAndLoginRequest { lease: Some(lease) }, &who))
            .await?
            .into_inner();
        let mut answer = r.lease.as_ref().map(lease_answer_json).unwrap_or_default();
        answer["login"] = r.login.as_ref().map(login_json).unwrap_or_default();
        answer
    } else {
        let r = api.lease_account(grpc(lease, &who)).await?.into_inner();
        lease_answer_json(&r)
    };
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(answer)).into_response())
}

/// `POST /v1/units/{id}/login`'s body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LoginBody {
    account: String,
    password: String,
    user: String,
    #[serde(default)]
    lease_secret: String,
}

/// `POST /v1/units/{id}/login`.
pub(super) async fn login(
    api: Api,
    Extension(who): Extension<Principal>,
    id: Result<Path<u64>, PathRejection>,
    body: Result<Json<LoginBody>, JsonRejection>,
) -> Answer {
    let unit_id = path_id(id)?;
    let b = match body {
        Ok(Json(b)) => b,
        Err(rejection) => return Ok(body_refused(rejection)),
    };
    let msg = AccountLoginRequest {
        unit_id,
        account: b.account,
        password: b.password,
        user: b.user,
        lease_secret: b.lease_secret,
    };
    let r = api.account_login(grpc(msg, &who)).await?.into_inner();
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(login_json(&r))).into_response())
}

/// `GET /v1/platforms/{id}/contents/{content}`.
pub(super) async fn first_access(
    api: Api,
    Extension(who): Extension<Principal>,
    uri: Uri,
    ids: Result<Path<(u64, String)>, PathRejection>,
) -> Answer {
    let (platform_id, content_id) = ids
        .map_err(|r| crate::state::StateError::invalid("path", r.body_text()))?
        .0;
    let q = Query::parse(&uri)?;
    let msg = FirstAccessRequest {
        platform_id,
        content_id,
        consistency: q.consistency()?,
    };
    let r = api.first_access(grpc(msg, &who)).await?.into_inner();
    Ok(Json(json!({
        "platform_id": r.platform_id,
        "content_id": r.content_id,
        "mode": enum_name(r.mode, ContentUnitsMode::as_str_name),
        "units": r.units.iter().map(shown_unit_json).collect::<Vec<_>>(),
    }))
    .into_response())
}

fn lease_json(l: &Lease) -> Value {
    json!({
        "lease_id": l.lease_id,
        "pool_id": l.pool_id,
        "account": l.account,
        "holder": l.holder,
        "granted_ms": l.granted_ms,
        "expires_ms": l.expires_ms,
        "request_id": l.request_id,
    })
}

fn service_json(s: &UnitService) -> Value {
    json!({
        "unit_id": s.unit_id,
        "qos_class": s.qos_class,
        "response_time_ms": s.response_time_ms,
    })
}

fn lease_answer_json(r: &LeaseResponse) -> Value {
    json!({
        "lease": r.lease.as_ref().map(lease_json),
        "password": r.password,
        "lease_secret": r.lease_secret,
        "replayed": r.replayed,
        "service": r.service.as_ref().map(service_json),
    })
}

fn login_json(r: &AccountLoginResponse) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    let data: serde_json::Map<String, Value> = r
        .data
        .iter()
        .map(|(k, v)| (k.clone(), b64.encode(v).into()))
        .collect();
    json!({
        "ok": r.ok,
        "reason": r.reason,
        "lease": r.lease.as_ref().map(lease_json),
        "data": data,
        "service": r.service.as_ref().map(service_json),
        "registered": r.registered,
    })
}

fn shown_unit_json(u: &ShownUnit) -> Value {
    let unit = u.unit.as_ref().map(|unit| {
        let spec = unit.spec.as_ref().map(|s| {
            json!({
                "name": s.name,
                "service_start_ms": s.service_start_ms,
                "service_end_ms": s.service_end_ms,
                "qos_class": s.qos_class,
                "response_time_ms": s.response_time_ms,
                "access_policy": enum_name(s.access_policy, AccessPolicy::as_str_name),
            })
        });
        json!({ "unit_id": unit.unit_id, "platform_id": unit.platform_id, "spec": spec })
    });
    json!({ "unit": unit, "available": u.available })
}
