//! Proto <-> state-machine types. Conversions that can fail (an unknown enum
//! value, a missing message, a malformed terminal id) return `StateError`
//! naming the field, so bad input is rejected before anything is proposed.

use std::collections::BTreeMap;

use ::herald_client::proto as pb;

use crate::state::{self, StateError};

/// A required sub-message.
pub fn required<T>(field: &str, v: Option<T>) -> Result<T, StateError> {
    v.ok_or_else(|| StateError::invalid(field, "required"))
}

/// Consistency requested for a read.
pub fn linearizable(consistency: i32) -> Result<bool, StateError> {
    match pb::Consistency::try_from(consistency) {
        Ok(pb::Consistency::Linearizable) => Ok(true),
        Ok(pb::Consistency::Serializable) => Ok(false),
        Err(_) => Err(StateError::invalid(
            "consistency",
            format!("unknown value {consistency}"),
        )),
    }
}

/// Proto terminal to a validated, normalized state terminal.
pub fn terminal(field: &str, t: Option<pb::Terminal>) -> Result<state::Terminal, StateError> {
    let t = required(field, t)?;
    let kind = match pb::TerminalKind::try_from(t.kind) {
        Ok(pb::TerminalKind::Sim) => state::TerminalKind::Sim,
        Ok(pb::TerminalKind::Msisdn) => state::TerminalKind::Msisdn,
        Ok(pb::TerminalKind::Imei) => state::TerminalKind::Imei,
        Ok(pb::TerminalKind::Mac) => state::TerminalKind::Mac,
        _ => {
            return Err(StateError::invalid(
                format!("{field}.kind"),
                "must be one of SIM, MSISDN, IMEI, MAC",
            ));
        }
    };
    state::Terminal::new(kind, &t.id).map_err(|e| match e {
        StateError::InvalidArgument { field: f, reason } => StateError::InvalidArgument {
            field: f.replacen("terminal", field, 1),
            reason,
        },
        other => other,
    })
}

/// State terminal to proto.
pub fn terminal_pb(t: &state::Terminal) -> pb::Terminal {
    let kind = match t.kind() {
        state::TerminalKind::Sim => pb::TerminalKind::Sim,
        state::TerminalKind::Msisdn => pb::TerminalKind::Msisdn,
        state::TerminalKind::Imei => pb::TerminalKind::Imei,
        state::TerminalKind::Mac => pb::TerminalKind::Mac,
        state::TerminalKind::Unspecified => pb::TerminalKind::TerminalUnspecified,
    };
    pb::Terminal {
        kind: kind as i32,
        id: t.id().to_string(),
    }
}

fn ext(m: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

/// A presence record to proto.
pub fn record_pb(r: &state::PresenceRecord) -> pb::PresenceRecord {
    pb::PresenceRecord {
        uid: r.uid.clone(),
        sid: r.sid,
        online: r.online(),
        clients: r
            .clients
            .values()
            .map(|c| pb::ClientEntry {
                client_type: c.client_type.clone(),
                since_ms: c.since_ms,
                ttl_ms: c.ttl_ms,
                connection_id: c.connection_id.clone(),
            })
            .collect(),
        accept_strangers: r.accept_strangers,
        ext: r
            .ext
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        updated_at_ms: r.updated_at_ms,
        revision: r.revision,
    }
}

/// The record of a user never seen: offline, revision 0.
pub fn unknown_record_pb(uid: &str) -> pb::PresenceRecord {
    pb::PresenceRecord {
        uid: uid.to_string(),
        ..Default::default()
    }
}

/// A presence event to proto.
pub fn event_pb(e: &state::PresenceEvent) -> pb::PresenceEvent {
    let kind = match e.kind {
        state::PresenceEventKind::Login => pb::PresenceEventKind::Login,
        state::PresenceEventKind::Logout => pb::PresenceEventKind::Logout,
        state::PresenceEventKind::Permission => pb::PresenceEventKind::Permission,
        state::PresenceEventKind::Expired => pb::PresenceEventKind::Expired,
    };
    pb::PresenceEvent {
        revision: e.revision,
        kind: kind as i32,
        uid: e.uid.clone(),
        client_type: e.client_type.clone(),
        record: Some(record_pb(&e.record)),
        time_ms: e.time_ms,
        connection_id: e.connection_id.clone(),
    }
}

/// Login request to its command.
pub fn login(r: pb::LoginRequest) -> state::Login {
    state::Login {
        uid: r.uid,
        sid: r.sid,
        client_type: r.client_type,
        connection_id: r.connection_id,
        accept_strangers: r.accept_strangers,
        ext: ext(r.ext),
        ttl_ms: r.ttl_ms,
    }
}

/// Logout request to its command (a user's own logout).
pub fn logout(r: pb::LogoutRequest) -> state::Logout {
    state::Logout {
        uid: r.uid,
        sid: r.sid,
        client_type: (!r.client_type.is_empty()).then_some(r.client_type),
        connection_id: r.connection_id,
        ext: ext(r.ext),
        reason: state::LogoutReason::User,
        login_since_ms: None,
        owner_epoch: None,
    }
}

/// Permission request to its command.
pub fn permission(r: pb::PermissionRequest) -> state::Permission {
    state::Permission {
        uid: r.uid,
        sid: r.sid,
        accept_strangers: r.accept_strangers,
        ext: ext(r.ext),
    }
}

/// A session to proto.
pub fn session_pb(s: &state::Session) -> pb::Session {
    pb::Session {
        session_id: s.session_id,
        app_url: s.app_url.clone(),
        requires: s.requires.clone(),
        terminal: Some(terminal_pb(&s.terminal)),
        epoch: s.epoch,
        seq: s.seq,
        progress: s.progress.clone(),
        created_ms: s.created_ms,
        updated_ms: s.updated_ms,
        offer: s.offer.as_ref().map(|o| pb::HandoffOffer {
            offer_id: o.offer_id,
            to: Some(terminal_pb(&o.to)),
            expires_ms: o.expires_ms,
        }),
    }
}

/// A session event to proto.
pub fn session_event_pb(e: &state::SessionEvent) -> pb::SessionEvent {
    use state::SessionEventKind as K;
    let kind = match e.kind {
        K::Connected => pb::SessionEventKind::SessionConnected,
        K::Progress => pb::SessionEventKind::SessionProgress,
        K::HandedOff => pb::SessionEventKind::SessionHandedOff,
        K::Offered => pb::SessionEventKind::SessionOffered,
        K::OfferEnded => pb::SessionEventKind::SessionOfferEnded,
        K::Deleted => pb::SessionEventKind::SessionDeleted,
    };
    pb::SessionEvent {
        revision: e.revision,
        kind: kind as i32,
        session: Some(session_pb(&e.session)),
        from: e.from.as_ref().map(terminal_pb),
        to: e.to.as_ref().map(terminal_pb),
        time_ms: e.time_ms,
    }
}

/// A work-log entry to proto.
pub fn work_pb(w: &state::WorkLogEntry) -> pb::WorkLogEntry {
    pb::WorkLogEntry {
        revision: w.revision,
        time_ms: w.time_ms,
        event: w.event.as_str().to_string(),
        terminal: Some(terminal_pb(&w.terminal)),
        epoch: w.epoch,
        seq: w.seq,
        detail: w.detail.clone(),
    }
}

/// Connect request to its command.
pub fn connect(r: pb::ConnectRequest) -> Result<state::Connect, StateError> {
    Ok(state::Connect {
        terminal: terminal("terminal", r.terminal)?,
        app_url: r.app_url,
        requires: r.capabilities,
    })
}

/// Progress request to its command.
pub fn progress(r: pb::ProgressRequest) -> Result<state::Progress, StateError> {
    Ok(state::Progress {
        session_id: r.session_id,
        terminal: terminal("terminal", r.terminal)?,
        epoch: r.epoch,
        seq: r.seq,
        data: r.progress,
    })
}

/// Bind request to its command.
pub fn bind(r: pb::BindRequest) -> Result<state::Bind, StateError> {
    Ok(state::Bind {
        first: terminal("first", r.first)?,
        second: terminal("second", r.second)?,
    })
}

/// Handoff request to its command.
pub fn handoff(r: pb::HandoffRequest) -> Result<state::Handoff, StateError> {
    let mode = match pb::HandoffMode::try_from(r.mode) {
        Ok(pb::HandoffMode::Push) => state::HandoffMode::Push,
        Ok(pb::HandoffMode::Pull) => state::HandoffMode::Pull,
        Ok(pb::HandoffMode::Binding) => state::HandoffMode::Binding,
        Ok(pb::HandoffMode::PullBound) => state::HandoffMode::PullBound,
        Err(_) => {
            return Err(StateError::invalid(
                "mode",
                format!("unknown value {}", r.mode),
            ));
        }
    };
    let candidates = r
        .candidates
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            Ok(state::Candidate {
                terminal: terminal(&format!("candidates[{i}].terminal"), c.terminal)?,
                capabilities: c.capabilities,
            })
        })
        .collect::<Result<Vec<_>, StateError>>()?;
    let holder = match r.holder {
        Some(h) => Some(terminal("holder", Some(h))?),
        None => None,
    };
    Ok(state::Handoff {
        session_id: r.session_id,
        mode,
        initiator: terminal("initiator", r.initiator)?,
        epoch: r.epoch,
        holder,
        candidates,
        bound_capabilities: r.bound_capabilities,
        app_url: r.app_url,
    })
}

/// Offer request to its command.
pub fn offer(r: pb::OfferHandoffRequest) -> Result<state::OfferHandoff, StateError> {
    Ok(state::OfferHandoff {
        session_id: r.session_id,
        initiator: terminal("initiator", r.initiator)?,
        epoch: r.epoch,
        to: terminal("to", r.to)?,
        ttl_ms: r.ttl_ms,
    })
}

/// Accept request to its command.
pub fn accept(r: pb::AcceptHandoffRequest) -> Result<state::AcceptHandoff, StateError> {
    Ok(state::AcceptHandoff {
        session_id: r.session_id,
        offer_id: r.offer_id,
        terminal: terminal("terminal", r.terminal)?,
        capabilities: r.capabilities,
    })
}

/// A handoff outcome to proto.
pub fn handoff_pb(o: &state::HandoffOutcome) -> pb::HandoffResponse {
    pb::HandoffResponse {
        accepted: o.accepted,
        session: Some(session_pb(&o.session)),
        refused: o.refused.iter().map(terminal_pb).collect(),
    }
}

fn policy(field: &str, v: i32) -> Result<state::AccessPolicy, StateError> {
    match pb::AccessPolicy::try_from(v) {
        Ok(pb::AccessPolicy::LeasedAccounts) => Ok(state::AccessPolicy::LeasedAccounts),
        Ok(pb::AccessPolicy::HolderOnly) => Ok(state::AccessPolicy::HolderOnly),
        Ok(pb::AccessPolicy::Closed) => Ok(state::AccessPolicy::Closed),
        Ok(pb::AccessPolicy::RegisteredOnly) => Ok(state::AccessPolicy::RegisteredOnly),
        Err(_) => Err(StateError::invalid(field, format!("unknown value {v}"))),
    }
}

fn policy_pb(p: state::AccessPolicy) -> pb::AccessPolicy {
    match p {
        state::AccessPolicy::LeasedAccounts => pb::AccessPolicy::LeasedAccounts,
        state::AccessPolicy::HolderOnly => pb::AccessPolicy::HolderOnly,
        state::AccessPolicy::Closed => pb::AccessPolicy::Closed,
        state::AccessPolicy::RegisteredOnly => pb::AccessPolicy::RegisteredOnly,
    }
}

/// Platform request to its command.
pub fn create_platform(r: pb::CreatePlatformRequest) -> Result<state::CreatePlatform, StateError> {
    let units = r
        .units
        .into_iter()
        .enumerate()
        .map(|(i, u)| {
            Ok(state::UnitSpec {
                name: u.name,
                service_start_ms: u.service_start_ms,
                service_end_ms: u.service_end_ms,
                qos_class: u.qos_class,
                response_time_ms: u.response_time_ms,
                access_policy: policy(&format!("units[{i}].access_policy"), u.access_policy)?,
            })
        })
        .collect::<Result<Vec<_>, StateError>>()?;
    Ok(state::CreatePlatform {
        name: r.name,
        units,
    })
}

/// A platform to proto.
pub fn platform_pb(p: &state::Platform) -> pb::Platform {
    pb::Platform {
        platform_id: p.platform_id,
        name: p.name.clone(),
        units: p.units.iter().map(unit_pb).collect(),
    }
}

/// A unit to proto.
pub fn unit_pb(u: &state::Unit) -> pb::Unit {
    pb::Unit {
        unit_id: u.unit_id,
        platform_id: u.platform_id,
        spec: Some(pb::UnitSpec {
            name: u.spec.name.clone(),
            service_start_ms: u.spec.service_start_ms,
            service_end_ms: u.spec.service_end_ms,
            qos_class: u.spec.qos_class.clone(),
            response_time_ms: u.spec.response_time_ms,
            access_policy: policy_pb(u.spec.access_policy) as i32,
        }),
    }
}

/// A registered account as clients see it (never its hash).
pub fn registered_pb(a: &state::RegisteredAccount) -> pb::RegisteredAccount {
    pb::RegisteredAccount {
        unit_id: a.unit_id,
        account: a.account.clone(),
        created_ms: a.created_ms,
        updated_ms: a.updated_ms,
    }
}

/// A content tag request to its command.
pub fn set_content(r: pb::SetContentUnitsRequest) -> Result<state::SetContentUnits, StateError> {
    let units = match pb::ContentUnitsMode::try_from(r.mode) {
        Ok(pb::ContentUnitsMode::UnitsList) => state::ContentUnits::List(r.unit_ids),
        Ok(mode) if !r.unit_ids.is_empty() => {
            return Err(StateError::invalid(
                "unit_ids",
                format!("must be empty with {}", mode.as_str_name()),
            ));
        }
        Ok(pb::ContentUnitsMode::UnitsAll) => state::ContentUnits::All,
        Ok(pb::ContentUnitsMode::UnitsNone) => state::ContentUnits::None,
        Err(_) => {
            return Err(StateError::invalid(
                "mode",
                format!("unknown value {}", r.mode),
            ));
        }
    };
    Ok(state::SetContentUnits {
        platform_id: r.platform_id,
        content_id: r.content_id,
        units,
    })
}

/// A first access answer to proto.
pub fn content_view_pb(v: &state::ContentView) -> pb::FirstAccessResponse {
    let mode = match v.units {
        state::ContentUnits::List(_) => pb::ContentUnitsMode::UnitsList,
        state::ContentUnits::All => pb::ContentUnitsMode::UnitsAll,
        state::ContentUnits::None => pb::ContentUnitsMode::UnitsNone,
    };
    pb::FirstAccessResponse {
        platform_id: v.platform_id,
        content_id: v.content_id.clone(),
        mode: mode as i32,
        units: v
            .shown
            .iter()
            .map(|s| pb::ShownUnit {
                unit: Some(unit_pb(&s.unit)),
                available: s.available,
            })
            .collect(),
    }
}

/// Pool request to its command.
pub fn create_pool(r: pb::CreatePoolRequest) -> state::CreatePool {
    state::CreatePool {
        unit_id: r.unit_id,
        name: r.name,
        provision: r.provision,
        max_size: r.max_size,
        default_ttl_ms: r.default_ttl_ms,
    }
}

/// A pool to proto.
pub fn pool_pb(p: &state::PoolView) -> pb::Pool {
    pb::Pool {
        pool_id: p.pool_id,
        unit_id: p.unit_id,
        name: p.name.clone(),
        size: p.size,
        max_size: p.max_size,
        free: p.free,
        leased: p.leased,
        expired_total: p.expired_total,
        default_ttl_ms: p.default_ttl_ms,
    }
}

/// A lease to proto, as anyone may see it: no request id (with it, a replay
/// returns the lease) and no secret. Only the `LeaseAccount` answer echoes
/// the request id, to the caller that sent it.
pub fn lease_pb(l: &state::Lease) -> pb::Lease {
    pb::Lease {
        lease_id: l.lease_id,
        pool_id: l.pool_id,
        account: l.account.clone(),
        holder: l.holder.clone(),
        granted_ms: l.granted_ms,
        expires_ms: l.expires_ms,
        request_id: String::new(),
    }
}

/// What a unit promises its viewers.
pub fn service_pb(u: &state::Unit) -> pb::UnitService {
    pb::UnitService {
        unit_id: u.unit_id,
        qos_class: u.spec.qos_class.clone(),
        response_time_ms: u.spec.response_time_ms,
    }
}

/// The credentials the serving node made for one `LeaseAccount` call,
/// hashed: all that goes into the command.
pub struct NewCredentials {
    /// The account password's salted hash.
    pub password: state::PasswordHash,
    /// The lease secret's hash.
    pub lease_secret: state::SecretHash,
}

/// Lease request to its command, with the caller principal and the hashes
/// of the credentials made by the serving node.
pub fn lease(r: pb::LeaseRequest, caller: String, made: NewCredentials) -> state::LeaseAccount {
    state::LeaseAccount {
        pool_id: r.pool_id,
        user: r.user,
        ttl_ms: r.ttl_ms,
        request_id: r.request_id,
        caller,
        password: made.password,
        lease_secret: made.lease_secret,
    }
}

/// Renew request to its command: the presented secret is checked and hashed
/// here, so only its hash is proposed.
pub fn renew(r: pb::RenewRequest) -> Result<state::RenewLease, StateError> {
    Ok(state::RenewLease {
        lease_secret: state::lease_secret_hash(&r.lease_secret)?,
        lease_id: r.lease_id,
        user: r.user,
        ttl_ms: r.ttl_ms,
    })
}

/// Release request to its command (the secret hashed, as for renew).
pub fn release(r: pb::ReleaseRequest) -> Result<state::ReleaseLease, StateError> {
    Ok(state::ReleaseLease {
        lease_secret: state::lease_secret_hash(&r.lease_secret)?,
        lease_id: r.lease_id,
        user: r.user,
    })
}

/// Account-data request to its command (the secret hashed, as for renew).
pub fn put_data(r: pb::PutAccountDataRequest) -> Result<state::PutAccountData, StateError> {
    Ok(state::PutAccountData {
        lease_secret: state::lease_secret_hash(&r.lease_secret)?,
        lease_id: r.lease_id,
        user: r.user,
        key: r.key,
        value: r.value,
    })
}

/// The lease secret of a login, hashed; `None` when none was presented
/// (only holder-only units need one, and they say so in the answer).
pub fn login_secret(r: &pb::AccountLoginRequest) -> Result<Option<state::SecretHash>, StateError> {
    if r.lease_secret.is_empty() {
        return Ok(None);
    }
    state::lease_secret_hash(&r.lease_secret).map(Some)
}

/// A login check's outcome to proto.
pub fn login_outcome_pb(o: &state::LoginOutcome) -> pb::AccountLoginResponse {
    pb::AccountLoginResponse {
        ok: o.ok,
        reason: o.reason.clone(),
        lease: o.lease.as_ref().map(lease_pb),
        data: o.data.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        service: None,
        registered: false,
    }
}
