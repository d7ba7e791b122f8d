//! TTL presence: heartbeating users are never expired, silent ones are.
//!
//! Not a linearizability search: TTL expiry is a liveness rule in time, so
//! each user's operations are checked in their (sequential) order against
//! bounds that hold whatever the faults:
//!
//! - **live-user-expired**: a live user was seen offline (a heartbeat
//!   answered `known = false`, or a linearizable read without its client)
//!   less than a TTL after a contact `P` (a login, or a heartbeat answered
//!   `known = true`) was invoked, where `P` itself came in time: a login, or
//!   a heartbeat answered before a TTL had passed since the contact before
//!   it. The owner's deadline after that earlier contact was at least its
//!   invocation plus the TTL, so `P` reached the owner before the deadline
//!   and no expiry could be under way; an expiry that early was judged by
//!   a node that did not hold the heartbeats (issue 23 item 9). A contact
//!   after a longer silence (failed heartbeats) may race with an expiry
//!   already proposed, which is allowed. [`SLACK_NS`] absorbs scheduling
//!   between the nodes' clocks and the recorder's.
//! - **silent-user-not-expired**: a silent user was read online after the
//!   cluster had been writable for its TTL plus the grace
//!   ([`crate::workload::TTL_GRACE_MS`]) since its login was acknowledged:
//!   counted in whole seconds in which some write of any workload was
//!   acknowledged, since no expiry can be committed while the cluster
//!   commits nothing. **silent-user-expired-early**: read offline less than
//!   a TTL after its login was invoked.

use serde_json::Value;

use super::Anomaly;
use crate::history::{Op, Outcome};
use crate::workload::TTL_GRACE_MS;

/// Slack on the "less than a TTL" bounds.
pub const SLACK_NS: u64 = 250_000_000;

const MS: u64 = 1_000_000;

fn anomaly(kind: &str, key: &str, message: String, ops: Vec<Op>) -> Anomaly {
    Anomaly {
        kind: kind.into(),
        workload: "ttl".into(),
        key: key.into(),
        message,
        ops,
    }
}

/// Whether an `ok` op shows the user offline.
fn seen_offline(op: &Op) -> bool {
    match op.f.as_str() {
        "heartbeat" => op.output.get("known").and_then(Value::as_bool) == Some(false),
        "read" => op.output.get("online").and_then(Value::as_bool) == Some(false),
        _ => false,
    }
}

/// Whether an `ok` op is a contact that resets the TTL (a login, or a
/// heartbeat the cluster knew).
fn contact(op: &Op) -> bool {
    match op.f.as_str() {
        "login" => true,
        "heartbeat" => op.output.get("known").and_then(Value::as_bool) == Some(true),
        _ => false,
    }
}

/// Whether an `ok` op is a write: evidence that the cluster could commit.
pub fn is_write(op: &Op) -> bool {
    op.outcome == Outcome::Ok
        && !matches!(
            op.f.as_str(),
            "read" | "get" | "list" | "heartbeat" | "status" | "storage-beat"
        )
}

/// The seconds (of the recorder's clock) in which some write was
/// acknowledged, sorted: see [`check`].
pub fn writable_seconds(ops: &[Op]) -> Vec<u64> {
    let mut secs: Vec<u64> = ops
        .iter()
        .filter(|op| is_write(op))
        .filter_map(|op| op.complete_ns)
        .map(|t| t / 1_000_000_000)
        .collect();
    secs.sort_unstable();
    secs.dedup();
    secs
}

/// Checks one `ttl` user's operations (any order; sorted here);
/// `writable` is [`writable_seconds`] of the whole history.
pub fn check(key: &str, ops: &[&Op], writable: &[u64]) -> Vec<Anomaly> {
    let mut ops: Vec<&Op> = ops.to_vec();
    ops.sort_by_key(|op| op.invoke_ns);
    let Some(first_login) = ops.iter().find(|op| op.f == "login") else {
        return Vec::new();
    };
    let live = first_login.input.get("live").and_then(Value::as_bool) == Some(true);
    let ttl_ns = first_login
        .input
        .get("ttl_ms")
        .and_then(Value::as_u64)
        .unwrap_or(0)
        * MS;
    let mut out = Vec::new();
    // The last acknowledged login or known heartbeat (live) / the last
    // acknowledged login (silent), and whether a login since is in doubt.
    let mut last: Option<&Op> = None;
    // Live: whether `last` came in time (see the module doc).
    let mut in_time = false;
    let mut login_in_doubt = false;
    for op in ops {
        if op.f == "login" {
            match op.outcome {
                Outcome::Ok => {
                    last = Some(op);
                    in_time = true;
                    login_in_doubt = false;
                }
                // A login that may have happened later resets nothing we
                // can bound: skip until the next acknowledged one.
                Outcome::Info => login_in_doubt = true,
                Outcome::Fail => {}
            }
            continue;
        }
        if op.outcome != Outcome::Ok {
            continue;
        }
        let Some(prev) = last else { continue };
        let Some(done) = op.complete_ns else { continue };
        if live {
            if in_time && seen_offline(op) && done + SLACK_NS < prev.invoke_ns + ttl_ns {
                out.push(anomaly(
                    "live-user-expired",
                    key,
                    format!(
                        "heartbeating user seen offline ({} op {}) {} ms after its {} (op {}) \
                         was invoked and acknowledged, within its TTL of {} ms",
                        op.f,
                        op.id,
                        done.saturating_sub(prev.invoke_ns) / MS,
                        prev.f,
                        prev.id,
                        ttl_ns / MS
                    ),
                    vec![prev.clone(), op.clone()],
                ));
            }
            if contact(op) {
                in_time = done + SLACK_NS < prev.invoke_ns + ttl_ns;
                last = Some(op);
            } else if seen_offline(op) {
                last = None; // the worker logs in again
            }
        } else if !login_in_doubt && op.f == "read" {
            let online = op.output.get("online").and_then(Value::as_bool) == Some(true);
            let login_done = prev.complete_ns.unwrap_or(prev.invoke_ns);
            let from = login_done.div_ceil(1_000_000_000);
            let to = op.invoke_ns / 1_000_000_000;
            let up = writable.iter().filter(|s| **s >= from && **s < to).count() as u64;
            if online && up * 1_000 > (ttl_ns / MS) + TTL_GRACE_MS {
                out.push(anomaly(
                    "silent-user-not-expired",
                    key,
                    format!(
                        "silent user still online (read op {}) {} ms after its login (op {}) was \
                         acknowledged, {up} s of them with writes acknowledged; the TTL is {} ms, \
                         the grace {} ms",
                        op.id,
                        (op.invoke_ns - login_done) / MS,
                        prev.id,
                        ttl_ns / MS,
                        TTL_GRACE_MS
                    ),
                    vec![prev.clone(), op.clone()],
                ));
                last = None; // one report per login
            } else if !online && done + SLACK_NS < prev.invoke_ns + ttl_ns {
                out.push(anomaly(
                    "silent-user-expired-early",
                    key,
                    format!(
                        "silent user offline (read op {}) {} ms after its login (op {}), before \
                         its TTL of {} ms",
                        op.id,
                        done.saturating_sub(prev.invoke_ns) / MS,
                        prev.id,
                        ttl_ns / MS
                    ),
                    vec![prev.clone(), op.clone()],
                ));
            }
        }
    }
    out
}
