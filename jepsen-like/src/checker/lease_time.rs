//! No lease expires before its time (issue 17 item 4), judged by the
//! client's own monotonic clock, whatever the nodes' clocks did.
//!
//! A lease asked for with TTL `T` cannot have been granted before its
//! request was *sent* (the first `lease` op with its request id was
//! invoked), so it must stay in force at least until `sent + T`; an `ok`
//! renew pushes that to at least the renew's send time plus its TTL. Until
//! then, unless a release of it was sent first, it must not be seen ended:
//!
//! - a linearizable listing that began after the grant was acknowledged and
//!   ended before the deadline leaves its holder out;
//! - a renew sent after the grant, answered before the deadline, is refused
//!   as ended (`FailedPrecondition`);
//! - another request is acknowledged the same account before the deadline.
//!
//! Every bound is taken on the side that can only excuse the cluster: the
//! earliest send as the grant time, acknowledged renewals only, any release
//! attempt (whatever its outcome) as an end, and [`CLOCK_ALLOWANCE_NS`]
//! for how far cluster time may legitimately run ahead of real time.

use std::collections::BTreeMap;

use serde_json::Value;

use super::Anomaly;
use super::pool;
use crate::history::{Op, Outcome};

/// How much earlier than `sent + T` an expiry is still allowed: a leader
/// may stamp up to `clock.max_ahead_ms` (1 s by default) ahead of the real
/// time elapsed in its term, and followers' clocks sit within a few ms.
pub const CLOCK_ALLOWANCE_NS: u64 = 1_500_000_000;

/// What the checker knows about one lease request.
struct Lease<'a> {
    user: &'a str,
    /// Earliest send of any lease op with this request id.
    sent: u64,
    /// Earliest acknowledgement, with the account it gave.
    granted: Option<(u64, &'a str, &'a Op)>,
    /// It must stay in force until at least this.
    deadline: u64,
    /// Earliest send of a release of it.
    released: u64,
}

fn ttl_ns(op: &Op) -> Option<u64> {
    op.input
        .get("ttl_ms")
        .and_then(Value::as_u64)
        .map(|ms| ms.saturating_mul(1_000_000))
}

fn rid(op: &Op) -> Option<&str> {
    op.input.get("rid").and_then(Value::as_str)
}

/// The early expiries in one pool's ops; see the module docs.
pub fn early_expiries(workload: &str, key: &str, ops: &[&Op], allowance_ns: u64) -> Vec<Anomaly> {
    let mut leases: BTreeMap<&str, Lease> = BTreeMap::new();
    for op in ops.iter().filter(|op| op.f == "lease") {
        let (Some(r), Some(ttl)) = (rid(op), ttl_ns(op)) else {
            continue; // a history from before TTLs were recorded
        };
        let user = op.input.get("user").and_then(Value::as_str).unwrap_or("");
        let l = leases.entry(r).or_insert(Lease {
            user,
            sent: op.invoke_ns,
            granted: None,
            deadline: 0,
            released: u64::MAX,
        });
        l.sent = l.sent.min(op.invoke_ns);
        l.deadline = l.deadline.max(l.sent.saturating_add(ttl));
        if op.outcome == Outcome::Ok
            && let (Some(done), Some(account)) = (
                op.complete_ns,
                op.output.get("account").and_then(Value::as_str),
            )
            && l.granted.is_none_or(|g| done < g.0)
        {
            l.granted = Some((done, account, op));
        }
    }
    for op in ops {
        let Some(l) = rid(op).and_then(|r| leases.get_mut(r)) else {
            continue;
        };
        match (op.f.as_str(), op.outcome) {
            ("renew", Outcome::Ok) => {
                if let Some(ttl) = ttl_ns(op) {
                    l.deadline = l.deadline.max(op.invoke_ns.saturating_add(ttl));
                }
            }
            ("release", _) => l.released = l.released.min(op.invoke_ns),
            _ => {}
        }
    }
    let mut out = Vec::new();
    let mut flag = |r: &str, l: &Lease, seen: &Op, how: String| {
        let done = seen.complete_ns.unwrap_or(u64::MAX);
        out.push(Anomaly {
            kind: "lease-expired-early".into(),
            workload: workload.into(),
            key: key.into(),
            message: format!(
                "lease {r} (sent at {} ms, in force until at least {} ms) {how} at {} ms, \
                 {} ms before its time",
                l.sent / 1_000_000,
                l.deadline / 1_000_000,
                done / 1_000_000,
                l.deadline.saturating_sub(done) / 1_000_000
            ),
            ops: [l.granted.map(|g| g.2.clone()), Some(seen.clone())]
                .into_iter()
                .flatten()
                .collect(),
        });
    };
    for (r, l) in &leases {
        let Some((granted, account, _)) = l.granted else {
            continue;
        };
        // An observation [invoke, complete] counts when it began after the
        // grant was acknowledged, ended before the deadline (less the
        // allowance) and before any release of the lease was sent.
        let in_force = |seen: &Op| {
            seen.invoke_ns >= granted
                && seen.complete_ns.is_some_and(|done| {
                    done.saturating_add(allowance_ns) < l.deadline && done <= l.released
                })
        };
        for seen in ops.iter().filter(|op| in_force(op)) {
            match (seen.f.as_str(), seen.outcome) {
                ("list", Outcome::Ok) => {
                    let listed = pool::listed(seen).unwrap_or_default();
                    if !listed.iter().any(|(holder, _)| *holder == l.user) {
                        flag(r, l, seen, "was missing from a listing".into());
                    }
                }
                ("renew", Outcome::Fail)
                    if rid(seen) == Some(r)
                        && seen.output.get("code").and_then(Value::as_str)
                            == Some("FailedPrecondition") =>
                {
                    flag(r, l, seen, "was refused a renewal as ended".into());
                }
                ("lease", Outcome::Ok)
                    if rid(seen) != Some(r)
                        && seen.output.get("account").and_then(Value::as_str) == Some(account) =>
                {
                    let other = rid(seen).unwrap_or("?");
                    flag(r, l, seen, format!("lost account {account} to {other}"));
                }
                _ => {}
            }
        }
    }
    out
}
