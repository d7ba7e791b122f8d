//! Parsers for the small syntaxes on heraldctl's command line. They run as
//! clap value parsers, so a typo is a usage error (exit 2) before any RPC.

use std::time::Duration;

use herald_client::proto::{self, AccessPolicy, TerminalKind};

/// `--ttl 30s`, `--timeout 500ms`.
pub fn duration(text: &str) -> Result<Duration, String> {
    herald_cli::duration::parse_duration(text)
}

/// A terminal as `kind:id`, kinds `sim`, `msisdn`, `imei`, `mac`
/// (`mac:00:1a:2b:3c:4d:5e` works: only the first colon separates). The id's
/// own format (Luhn digit, E.164, ...) is the server's to check.
pub fn terminal(text: &str) -> Result<proto::Terminal, String> {
    let (kind, id) = text
        .split_once(':')
        .ok_or_else(|| format!("expected kind:id (kinds: sim, msisdn, imei, mac), got {text:?}"))?;
    let kind = match kind.to_ascii_lowercase().as_str() {
        "sim" => TerminalKind::Sim,
        "msisdn" => TerminalKind::Msisdn,
        "imei" => TerminalKind::Imei,
        "mac" => TerminalKind::Mac,
        other => {
            return Err(format!(
                "unknown terminal kind {other:?} (kinds: sim, msisdn, imei, mac)"
            ));
        }
    };
    if id.is_empty() {
        return Err(format!("terminal {text:?} has an empty id"));
    }
    Ok(proto::Terminal {
        kind: kind as i32,
        id: id.to_string(),
    })
}

/// A handoff candidate: `kind:id` or `kind:id=cap,cap`.
pub fn candidate(text: &str) -> Result<proto::Candidate, String> {
    let (term, caps) = match text.split_once('=') {
        Some((term, caps)) => (term, split_list(caps)),
        None => (text, Vec::new()),
    };
    Ok(proto::Candidate {
        terminal: Some(terminal(term)?),
        capabilities: caps,
    })
}

/// `key=value` for `--ext`; the value may contain `=`.
pub fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected key=value, got {text:?}")),
    }
}

/// An application unit for `pool platform-create --unit`:
/// `name=news,qos=gold,response-ms=200,policy=leased,start=0,end=0`.
/// Only `name` is required; `start`/`end` are ms since the epoch (0 = open).
pub fn unit_spec(text: &str) -> Result<proto::UnitSpec, String> {
    let mut spec = proto::UnitSpec::default();
    let mut named = false;
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("unit: expected key=value, got {part:?}"))?;
        let number = |what: &str| {
            value
                .parse::<u64>()
                .map_err(|_| format!("unit {what}: expected a non-negative integer, got {value:?}"))
        };
        match key.trim() {
            "name" => {
                spec.name = value.to_string();
                named = true;
            }
            "qos" => spec.qos_class = value.to_string(),
            "response-ms" => {
                spec.response_time_ms = u32::try_from(number("response-ms")?)
                    .map_err(|_| format!("unit response-ms: {value} is too large"))?;
            }
            "policy" => spec.access_policy = policy(value)? as i32,
            "start" => spec.service_start_ms = number("start")?,
            "end" => spec.service_end_ms = number("end")?,
            other => {
                return Err(format!(
                    "unit: unknown key {other:?} (keys: name, qos, response-ms, policy, start, end)"
                ));
            }
        }
    }
    if !named {
        return Err(format!("unit {text:?}: name=... is required"));
    }
    Ok(spec)
}

fn policy(text: &str) -> Result<AccessPolicy, String> {
    match text.to_ascii_lowercase().replace('_', "-").as_str() {
        "leased" | "leased-accounts" => Ok(AccessPolicy::LeasedAccounts),
        "holder" | "holder-only" => Ok(AccessPolicy::HolderOnly),
        "closed" => Ok(AccessPolicy::Closed),
        "registered" | "registered-only" => Ok(AccessPolicy::RegisteredOnly),
        _ => Err(format!(
            "unit policy: unknown {text:?} (policies: leased, holder-only, closed, registered-only)"
        )),
    }
}

/// `a,b,,c` → `[a, b, c]`.
pub fn split_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminals() {
        let t = terminal("imei:490154203237518").expect("valid");
        assert_eq!(t.kind, TerminalKind::Imei as i32);
        assert_eq!(t.id, "490154203237518");
        let t = terminal("MAC:00:1a:2b:3c:4d:5e").expect("valid");
        assert_eq!(
            (t.kind, t.id.as_str()),
            (TerminalKind::Mac as i32, "00:1a:2b:3c:4d:5e")
        );
        assert!(
            terminal("phone:123")
                .expect_err("bad kind")
                .contains("unknown terminal kind")
        );
        assert!(
            terminal("490154203237518")
                .expect_err("no kind")
                .contains("kind:id")
        );
        assert!(terminal("sim:").expect_err("no id").contains("empty id"));
    }

    #[test]
    fn candidates() {
        let c = candidate("mac:00:1a:2b:3c:4d:5e=video,touch").expect("valid");
        assert_eq!(c.capabilities, ["video", "touch"]);
        assert_eq!(
            c.terminal.map(|t| t.id).as_deref(),
            Some("00:1a:2b:3c:4d:5e")
        );
        assert!(
            candidate("msisdn:+8613800000000")
                .expect("valid")
                .capabilities
                .is_empty()
        );
    }

    #[test]
    fn key_values() {
        assert_eq!(key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(key_value("a="), Ok(("a".into(), String::new())));
        assert!(key_value("=b").is_err());
        assert!(key_value("ab").is_err());
    }

    #[test]
    fn unit_specs() {
        let u = unit_spec("name=news,qos=gold,response-ms=200,policy=holder-only,start=5,end=9")
            .expect("valid");
        assert_eq!(u.name, "news");
        assert_eq!(u.qos_class, "gold");
        assert_eq!(u.response_time_ms, 200);
        assert_eq!(u.access_policy, AccessPolicy::HolderOnly as i32);
        assert_eq!((u.service_start_ms, u.service_end_ms), (5, 9));
        assert_eq!(
            unit_spec("name=x").expect("valid").access_policy,
            AccessPolicy::LeasedAccounts as i32
        );
        assert!(
            unit_spec("qos=gold")
                .expect_err("no name")
                .contains("required")
        );
        assert!(
            unit_spec("name=x,color=red")
                .expect_err("bad key")
                .contains("unknown key")
        );
        assert!(
            unit_spec("name=x,policy=open")
                .expect_err("bad policy")
                .contains("policies")
        );
        assert!(unit_spec("name=x,response-ms=-1").is_err());
    }
}
