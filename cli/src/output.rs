//! How heraldctl prints: etcdctl-style tables for people, JSON for scripts.
//!
//! JSON is each proto message with its proto field names (snake_case),
//! integers as numbers, enums by their proto names, bytes as base64 and an
//! absent message as `null` — proto3's JSON mapping with
//! `preserving_proto_field_names`, written out by hand so the generated
//! types need no serde derives.

use std::collections::HashMap;

use base64::Engine as _;
use herald_client::proto::{self, PresenceEventKind, TerminalKind};
use serde_json::{Value, json};

use herald_cli::duration::format_millis;

/// `-w table` or `-w json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable tables.
    Table,
    /// One JSON document per command (one per line for `watch`).
    Json,
}

/// A boxed table like etcdctl's.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let rule = {
            let mut s = String::from("+");
            for w in &widths {
                s.push_str(&"-".repeat(w + 2));
                s.push('+');
            }
            s
        };
        let line = |cells: &[String], center: bool| {
            let mut s = String::from("|");
            for (i, w) in widths.iter().enumerate() {
                let cell = cells.get(i).map(String::as_str).unwrap_or("");
                let pad = w - cell.chars().count();
                let (left, right) = if center {
                    (pad / 2, pad - pad / 2)
                } else {
                    (0, pad)
                };
                s.push_str(&format!(
                    " {}{cell}{} |",
                    " ".repeat(left),
                    " ".repeat(right)
                ));
            }
            s
        };
        let mut out = vec![rule.clone(), line(&self.headers, true), rule.clone()];
        for row in &self.rows {
            out.push(line(row, false));
        }
        out.push(rule);
        out.join("\n")
    }

    pub fn print(&self) {
        println!("{}", self.render());
    }
}

/// Prints a JSON value on one line.
pub fn print_json(value: &Value) {
    println!("{value}");
}

// ---------------------------------------------------------------- text

pub fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

/// `-` for zero, which the protocol uses for "none".
pub fn or_dash(n: u64) -> String {
    if n == 0 { "-".into() } else { n.to_string() }
}

/// A cluster time (ms since the Unix epoch) as RFC 3339 UTC; `-` for 0.
pub fn time(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

pub fn terminal_kind(kind: i32) -> &'static str {
    match TerminalKind::try_from(kind) {
        Ok(TerminalKind::Sim) => "sim",
        Ok(TerminalKind::Msisdn) => "msisdn",
        Ok(TerminalKind::Imei) => "imei",
        Ok(TerminalKind::Mac) => "mac",
        Ok(TerminalKind::TerminalUnspecified) | Err(_) => "unspecified",
    }
}

/// `kind:id`, the syntax the CLI reads.
pub fn terminal(t: Option<&proto::Terminal>) -> String {
    match t {
        Some(t) => format!("{}:{}", terminal_kind(t.kind), t.id),
        None => "-".into(),
    }
}

/// A connection as people read it: `pc` for a client type's one entry,
/// `mobile/phone-2` for a named connection.
pub fn connection(client_type: &str, connection_id: &str) -> String {
    if connection_id.is_empty() {
        client_type.to_string()
    } else {
        format!("{client_type}/{connection_id}")
    }
}

/// `pc`, `mobile/phone-2`, or `pc (ttl 30s)` for a TTL login,
/// comma-separated.
pub fn clients(entries: &[proto::ClientEntry]) -> String {
    if entries.is_empty() {
        return "-".into();
    }
    entries
        .iter()
        .map(|c| {
            let who = connection(&c.client_type, &c.connection_id);
            if c.ttl_ms == 0 {
                who
            } else {
                format!("{who} (ttl {})", format_millis(c.ttl_ms))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `k=v,k=v`, sorted by key.
pub fn ext(map: &HashMap<String, String>) -> String {
    if map.is_empty() {
        return "-".into();
    }
    let mut pairs: Vec<_> = map.iter().collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

/// Progress bytes for a table: the text itself when it is short printable
/// UTF-8, otherwise its size.
pub fn bytes_preview(data: &[u8]) -> String {
    if data.is_empty() {
        return "-".into();
    }
    match std::str::from_utf8(data) {
        Ok(text) if !text.chars().any(char::is_control) => {
            if text.chars().count() <= 40 {
                text.to_string()
            } else {
                let head: String = text.chars().take(37).collect();
                format!("{head}... ({} bytes)", data.len())
            }
        }
        _ => format!("<{} bytes>", data.len()),
    }
}

pub fn event_kind(kind: i32) -> String {
    enum_name(kind, |k: PresenceEventKind| k.as_str_name())
}

pub fn access_policy(policy: i32) -> String {
    enum_name(policy, |p: proto::AccessPolicy| p.as_str_name())
}

/// A proto enum's name, or its number when this build does not know it.
fn enum_name<E: TryFrom<i32>>(value: i32, name: impl Fn(E) -> &'static str) -> String {
    E::try_from(value)
        .map(name)
        .map_or_else(|_| value.to_string(), str::to_string)
}

// ---------------------------------------------------------------- JSON

pub mod to_json {
    use super::*;

    fn b64(data: &[u8]) -> Value {
        Value::String(base64::engine::general_purpose::STANDARD.encode(data))
    }

    fn opt<T>(v: Option<&T>, f: impl Fn(&T) -> Value) -> Value {
        v.map_or(Value::Null, f)
    }

    pub fn client_entry(c: &proto::ClientEntry) -> Value {
        json!({
            "client_type": c.client_type,
            "connection_id": c.connection_id,
            "since_ms": c.since_ms,
            "ttl_ms": c.ttl_ms,
        })
    }

    pub fn record(r: &proto::PresenceRecord) -> Value {
        json!({
            "uid": r.uid,
            "sid": r.sid,
            "online": r.online,
            "clients": r.clients.iter().map(client_entry).collect::<Vec<_>>(),
            "accept_strangers": r.accept_strangers,
            "ext": r.ext,
            "updated_at_ms": r.updated_at_ms,
            "revision": r.revision,
        })
    }

    pub fn record_opt(r: Option<&proto::PresenceRecord>) -> Value {
        opt(r, record)
    }

    pub fn batch(b: &proto::BatchGetPresenceResponse) -> Value {
        json!({
            "records": b.records.iter().map(record).collect::<Vec<_>>(),
            "revision": b.revision,
        })
    }

    pub fn event(e: &proto::PresenceEvent) -> Value {
        json!({
            "revision": e.revision,
            "kind": event_kind(e.kind),
            "uid": e.uid,
            "client_type": e.client_type,
            "connection_id": e.connection_id,
            "record": record_opt(e.record.as_ref()),
            "time_ms": e.time_ms,
        })
    }

    pub fn terminal(t: &proto::Terminal) -> Value {
        let kind = enum_name(t.kind, |k: TerminalKind| k.as_str_name());
        json!({ "kind": kind, "id": t.id })
    }

    fn terminal_opt(t: Option<&proto::Terminal>) -> Value {
        opt(t, terminal)
    }

    pub fn session(s: &proto::Session) -> Value {
        json!({
            "session_id": s.session_id,
            "app_url": s.app_url,
            "requires": s.requires,
            "terminal": terminal_opt(s.terminal.as_ref()),
            "epoch": s.epoch,
            "seq": s.seq,
            "progress": b64(&s.progress),
            "created_ms": s.created_ms,
            "updated_ms": s.updated_ms,
            "offer": opt(s.offer.as_ref(), offer),
        })
    }

    pub fn offer(o: &proto::HandoffOffer) -> Value {
        json!({
            "offer_id": o.offer_id,
            "to": terminal_opt(o.to.as_ref()),
            "expires_ms": o.expires_ms,
        })
    }

    pub fn session_event(e: &proto::SessionEvent) -> Value {
        let kind = enum_name(e.kind, |k: proto::SessionEventKind| k.as_str_name());
        json!({
            "revision": e.revision,
            "kind": kind,
            "session": opt(e.session.as_ref(), session),
            "from": terminal_opt(e.from.as_ref()),
            "to": terminal_opt(e.to.as_ref()),
            "time_ms": e.time_ms,
        })
    }

    pub fn handoff(h: &proto::HandoffResponse) -> Value {
        json!({
            "accepted": h.accepted,
            "session": opt(h.session.as_ref(), session),
            "refused": h.refused.iter().map(terminal).collect::<Vec<_>>(),
        })
    }

    pub fn work_log_entry(e: &proto::WorkLogEntry) -> Value {
        json!({
            "revision": e.revision,
            "time_ms": e.time_ms,
            "event": e.event,
            "terminal": terminal_opt(e.terminal.as_ref()),
            "epoch": e.epoch,
            "seq": e.seq,
            "detail": e.detail,
        })
    }

    pub fn unit_spec(s: &proto::UnitSpec) -> Value {
        json!({
            "name": s.name,
            "service_start_ms": s.service_start_ms,
            "service_end_ms": s.service_end_ms,
            "qos_class": s.qos_class,
            "response_time_ms": s.response_time_ms,
            "access_policy": access_policy(s.access_policy),
        })
    }

    pub fn unit(u: &proto::Unit) -> Value {
        json!({
            "unit_id": u.unit_id,
            "platform_id": u.platform_id,
            "spec": opt(u.spec.as_ref(), unit_spec),
        })
    }

    pub fn platform(p: &proto::Platform) -> Value {
        json!({
            "platform_id": p.platform_id,
            "name": p.name,
            "units": p.units.iter().map(unit).collect::<Vec<_>>(),
        })
    }

    pub fn pool(p: &proto::Pool) -> Value {
        json!({
            "pool_id": p.pool_id,
            "unit_id": p.unit_id,
            "name": p.name,
            "size": p.size,
            "max_size": p.max_size,
            "free": p.free,
            "leased": p.leased,
            "expired_total": p.expired_total,
            "default_ttl_ms": p.default_ttl_ms,
        })
    }

    pub fn pools(r: &proto::ListPoolsResponse) -> Value {
        json!({
            "pools": r.pools.iter().map(pool).collect::<Vec<_>>(),
            "platforms": r.platforms.iter().map(platform).collect::<Vec<_>>(),
        })
    }

    pub fn lease(l: &proto::Lease) -> Value {
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

    pub fn lease_response(r: &proto::LeaseResponse) -> Value {
        json!({
            "lease": opt(r.lease.as_ref(), lease),
            "password": r.password,
            "lease_secret": r.lease_secret,
            "replayed": r.replayed,
        })
    }

    pub fn account_login(r: &proto::AccountLoginResponse) -> Value {
        json!({
            "ok": r.ok,
            "reason": r.reason,
            "lease": opt(r.lease.as_ref(), lease),
            "data": account_data(&r.data),
            "registered": r.registered,
        })
    }

    /// A leased account's data: each value in base64.
    pub fn account_data(data: &std::collections::HashMap<String, Vec<u8>>) -> Value {
        let data: serde_json::Map<String, Value> =
            data.iter().map(|(k, v)| (k.clone(), b64(v))).collect();
        Value::Object(data)
    }

    pub fn registered(a: &proto::RegisteredAccount) -> Value {
        json!({
            "unit_id": a.unit_id,
            "account": a.account,
            "created_ms": a.created_ms,
            "updated_ms": a.updated_ms,
        })
    }

    pub fn first_access(r: &proto::FirstAccessResponse) -> Value {
        let mode = proto::ContentUnitsMode::try_from(r.mode).map_or("?", |m| m.as_str_name());
        let units: Vec<Value> = r
            .units
            .iter()
            .map(|s| {
                json!({
                    "unit": opt(s.unit.as_ref(), unit),
                    "available": s.available,
                })
            })
            .collect();
        json!({
            "platform_id": r.platform_id,
            "content_id": r.content_id,
            "mode": mode,
            "units": units,
        })
    }

    pub fn member(m: &proto::Member) -> Value {
        json!({
            "id": m.id,
            "number": m.number,
            "peer_addr": m.peer_addr,
            "client_addr": m.client_addr,
            "http_addr": m.http_addr,
            "time_addr": m.time_addr,
            "voter": m.voter,
            "incarnation": m.incarnation,
        })
    }

    pub fn members(r: &proto::MembersResponse) -> Value {
        json!({
            "members": r.members.iter().map(member).collect::<Vec<_>>(),
            "leader_id": r.leader_id,
        })
    }

    pub fn node_status(s: &proto::NodeStatus) -> Value {
        json!({
            "id": s.id,
            "number": s.number,
            "role": s.role,
            "term": s.term,
            "last_log_index": s.last_log_index,
            "applied_index": s.applied_index,
            "leader_id": s.leader_id,
            "snapshot_index": s.snapshot_index,
            "purged_index": s.purged_index,
            "client_addr": s.client_addr,
            "members_log_index": s.members_log_index,
            "clock_offset_us": s.clock_offset_us,
            "last_sync_ms": s.last_sync_ms,
            "sync_delay_us": s.sync_delay_us,
            "cluster_time_ms": s.cluster_time_ms,
            "storage_free_bytes": s.storage_free_bytes,
            "nospace_alarm": s.nospace_alarm,
            "storage_min_free_bytes": s.storage_min_free_bytes,
            "cluster_id": s.cluster_id,
            "waiting": s.waiting,
        })
    }

    pub fn admin(r: &proto::AdminResponse) -> Value {
        json!({ "message": r.message, "log_index": r.log_index })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(time(0), "-");
        assert_eq!(time(1), "1970-01-01T00:00:00.001Z");
        assert_eq!(time(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(time(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn tables_line_up() {
        let mut t = Table::new(&["ID", "ROLE"]);
        t.row(vec!["1".into(), "leader".into()]);
        t.row(vec!["12".into(), "follower".into()]);
        let expected = "\
+----+----------+
| ID |   ROLE   |
+----+----------+
| 1  | leader   |
| 12 | follower |
+----+----------+";
        assert_eq!(t.render(), expected);
    }

    #[test]
    fn previews_show_text_or_size() {
        assert_eq!(bytes_preview(b""), "-");
        assert_eq!(bytes_preview(b"level 3"), "level 3");
        assert_eq!(bytes_preview(&[0, 159, 146, 150]), "<4 bytes>");
        assert!(bytes_preview(&[b'a'; 100]).ends_with("(100 bytes)"));
    }

    #[test]
    fn json_uses_proto_names() {
        let t = proto::Terminal {
            kind: TerminalKind::Imei as i32,
            id: "490154203237518".into(),
        };
        assert_eq!(
            to_json::terminal(&t),
            json!({"kind": "IMEI", "id": "490154203237518"})
        );
        let s = proto::Session {
            progress: b"hi".to_vec(),
            ..Default::default()
        };
        assert_eq!(to_json::session(&s)["progress"], "aGk=");
        assert_eq!(to_json::session(&s)["terminal"], Value::Null);
        assert_eq!(event_kind(3), "EXPIRED");
        assert_eq!(event_kind(42), "42");
    }
}
