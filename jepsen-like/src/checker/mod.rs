//! Checks a history: per key, a linearizability search against the
//! workload's model ([`linear`]), and direct checks that name the anomaly
//! plainly (a lost acknowledged write, two holders of one account, a lease
//! ended before its TTL by the client's clock, a fenced
//! terminal's write accepted, progress going back).
//!
//! What a clean verdict guarantees: for every key, some total order of the
//! `ok` operations and some subset of the `info` ones is consistent with the
//! model and with real time (an operation that completed before another was
//! invoked comes first). `fail` operations are taken to have done nothing.

pub mod lease_time;
pub mod linear;
pub mod link;
pub mod pool;
pub mod register;
pub mod session;
pub mod share;
pub mod ttl;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::history::{Op, Outcome};
use linear::Verdict;

/// One thing wrong with a history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    /// `not-linearizable`, `lost-write`, `double-lease`, `lease-expired-early`,
    /// `fenced-write-accepted`, `fenced-handoff-accepted`, `progress-went-back`, `live-user-expired`,
    /// `silent-user-not-expired`, `silent-user-expired-early`, `lost-count`,
    /// `double-count`, `ranking-out-of-order`, `ranking-disagrees-with-counts`,
    /// `oversubscribed`, `lost-commit`, `non-friend-access`, `non-friend-share`,
    /// `retry-not-idempotent`.
    pub kind: String,
    /// The workload.
    pub workload: String,
    /// The key.
    pub key: String,
    /// What happened, in a sentence.
    pub message: String,
    /// The operations involved.
    pub ops: Vec<Op>,
}

/// ok / fail / info counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Completed.
    pub ok: u64,
    /// Definitely did nothing.
    pub fail: u64,
    /// Unknown.
    pub info: u64,
}

/// The checker's verdict on a history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// No anomaly and every search finished.
    pub valid: bool,
    /// Keys whose search ran out of time (neither valid nor invalid).
    pub unknown: Vec<String>,
    /// Everything wrong.
    pub anomalies: Vec<Anomaly>,
    /// Counts per `workload/f`.
    pub counts: BTreeMap<String, Counts>,
    /// How many keys were searched.
    pub keys: usize,
    /// How many operations the history has.
    pub ops: usize,
    /// How long checking took.
    pub check_ms: u64,
}

impl Report {
    /// Anomaly kinds with how often each occurs.
    pub fn kinds(&self) -> BTreeMap<String, usize> {
        let mut kinds = BTreeMap::new();
        for a in &self.anomalies {
            *kinds.entry(a.kind.clone()).or_insert(0) += 1;
        }
        kinds
    }
}

/// Checks `ops`, giving each key's search at most `budget`.
pub fn check(ops: &[Op], budget: Duration) -> Report {
    let started = Instant::now();
    let mut counts: BTreeMap<String, Counts> = BTreeMap::new();
    let mut by_key: BTreeMap<(String, String), Vec<&Op>> = BTreeMap::new();
    for op in ops {
        let c = counts
            .entry(format!("{}/{}", op.workload, op.f))
            .or_default();
        match op.outcome {
            Outcome::Ok => c.ok += 1,
            Outcome::Fail => c.fail += 1,
            Outcome::Info => c.info += 1,
        }
        by_key
            .entry((op.workload.clone(), op.key.clone()))
            .or_default()
            .push(op);
    }
    let mut anomalies = Vec::new();
    let mut unknown = Vec::new();
    let writable = ttl::writable_seconds(ops);
    // The link checks span items (a lookup ranks several), so they run once
    // over every link operation rather than per key.
    let link_ops: Vec<&Op> = ops.iter().filter(|o| o.workload == "link").collect();
    if !link_ops.is_empty() {
        anomalies.extend(link::check(&link_ops));
    }
    // So do the share checks: capacity is per server, friendships and
    // request ids span shares.
    let share_ops: Vec<&Op> = ops.iter().filter(|o| o.workload == "share").collect();
    if !share_ops.is_empty() {
        anomalies.extend(share::check(&share_ops));
    }
    for ((workload, key), key_ops) in &by_key {
        let verdict = match workload.as_str() {
            "register" => {
                anomalies.extend(register_durability(workload, key, key_ops));
                linear::check(
                    &register::RegisterModel,
                    &register::entries(key_ops),
                    budget,
                )
            }
            "pool" => {
                anomalies.extend(double_leases(workload, key, key_ops));
                anomalies.extend(refused_auto_logins(workload, key, key_ops));
                anomalies.extend(lease_time::early_expiries(
                    workload,
                    key,
                    key_ops,
                    lease_time::CLOCK_ALLOWANCE_NS,
                ));
                let size = key_ops
                    .iter()
                    .find_map(|op| op.input.get("pool_size").and_then(Value::as_u64))
                    .unwrap_or(0);
                let model = pool::PoolModel {
                    size: usize::try_from(size).unwrap_or(usize::MAX),
                };
                linear::check(&model, &pool::entries(key_ops), budget)
            }
            "session" => {
                anomalies.extend(session_checks(workload, key, key_ops));
                linear::check(&session::SessionModel, &session::entries(key_ops), budget)
            }
            "ttl" => {
                anomalies.extend(ttl::check(key, key_ops, &writable));
                Verdict::Linearizable
            }
            // Checked above, over every key at once.
            "link" | "share" => Verdict::Linearizable,
            _ => Verdict::Linearizable,
        };
        match verdict {
            Verdict::Linearizable => {}
            Verdict::Unknown => unknown.push(format!("{workload}/{key}")),
            Verdict::NotLinearizable { stuck, prefix } => {
                let stuck_op = &ops[stuck];
                let mut involved: Vec<Op> = prefix.iter().map(|&i| ops[i].clone()).collect();
                involved.push(stuck_op.clone());
                anomalies.push(Anomaly {
                    kind: "not-linearizable".into(),
                    workload: workload.clone(),
                    key: key.clone(),
                    message: format!(
                        "no order of the operations explains op {} ({} {} -> {}, process {}); \
                         the ops before it are the end of the longest order that works",
                        stuck_op.id,
                        stuck_op.f,
                        stuck_op.input,
                        if stuck_op.outcome == Outcome::Ok {
                            stuck_op.output.to_string()
                        } else {
                            format!("{:?}", stuck_op.outcome)
                        },
                        stuck_op.process
                    ),
                    ops: involved,
                });
            }
        }
    }
    Report {
        valid: anomalies.is_empty() && unknown.is_empty(),
        unknown,
        anomalies,
        counts,
        keys: by_key.len(),
        ops: ops.len(),
        check_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
}

fn is_final(op: &Op) -> bool {
    op.input.get("final").and_then(Value::as_bool) == Some(true)
}

/// The final read's revision must be at least every acknowledged write's:
/// revisions are Raft log indexes, so a lower one means the write is gone.
fn register_durability(workload: &str, key: &str, ops: &[&Op]) -> Option<Anomaly> {
    let final_read = ops
        .iter()
        .filter(|op| op.f == "read" && op.outcome == Outcome::Ok && is_final(op))
        .max_by_key(|op| op.invoke_ns)?;
    let seen = final_read
        .output
        .get("revision")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let lost: Vec<&&Op> = ops
        .iter()
        .filter(|op| {
            op.f == "write"
                && op.outcome == Outcome::Ok
                && op.output.get("revision").and_then(Value::as_u64) > Some(seen)
        })
        .collect();
    let newest = lost.iter().max_by_key(|op| op.invoke_ns)?;
    Some(Anomaly {
        kind: "lost-write".into(),
        workload: workload.into(),
        key: key.into(),
        message: format!(
            "{} acknowledged write(s) missing after healing: the final read is at revision {seen}, \
             but write {} was acknowledged at revision {}",
            lost.len(),
            newest.input,
            newest
                .output
                .get("revision")
                .cloned()
                .unwrap_or(Value::Null)
        ),
        ops: vec![(**newest).clone(), (*final_read).clone()],
    })
}

/// Two leases of one account whose certain holding times overlap: from the
/// lease's acknowledgement to the invocation of its release.
/// An automatic login (`LeaseAndLogin`) that got its lease must have been
/// let in: the workload's unit admits every leased account, so a granted
/// lease whose login was refused means the login did not see the lease it
/// was made with.
fn refused_auto_logins(workload: &str, key: &str, ops: &[&Op]) -> Vec<Anomaly> {
    ops.iter()
        .filter(|op| {
            op.f == "lease"
                && op.outcome == Outcome::Ok
                && op.input.get("login").and_then(Value::as_bool) == Some(true)
                && op.output.get("login_ok").and_then(Value::as_bool) != Some(true)
        })
        .map(|op| Anomaly {
            kind: "auto-login-refused".into(),
            workload: workload.into(),
            key: key.into(),
            message: format!(
                "lease-and-login {} got account {} but its login was refused",
                op.input["rid"], op.output["account"]
            ),
            ops: vec![(*op).clone()],
        })
        .collect()
}

fn double_leases(workload: &str, key: &str, ops: &[&Op]) -> Vec<Anomaly> {
    // request id -> (account, first ack, the ack's op)
    let mut held: BTreeMap<String, (String, u64, &Op)> = BTreeMap::new();
    let mut released: BTreeMap<String, u64> = BTreeMap::new();
    let mut anomalies = Vec::new();
    for op in ops {
        let rid = op.input.get("rid").and_then(Value::as_str).unwrap_or("");
        match (op.f.as_str(), op.outcome, op.complete_ns) {
            ("lease", Outcome::Ok, Some(done)) => {
                if let Some(account) = op.output.get("account").and_then(Value::as_str) {
                    let e = held
                        .entry(rid.to_string())
                        .or_insert((account.to_string(), done, op));
                    if done < e.1 {
                        *e = (account.to_string(), done, op);
                    }
                }
            }
            ("release", _, _) => {
                let at = released.entry(rid.to_string()).or_insert(op.invoke_ns);
                *at = (*at).min(op.invoke_ns);
            }
            ("list", Outcome::Ok, _) => {
                let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
                for (holder, account) in pool::listed(op).unwrap_or_default() {
                    if let Some(other) = seen.insert(account, holder) {
                        anomalies.push(Anomaly {
                            kind: "double-lease".into(),
                            workload: workload.into(),
                            key: key.into(),
                            message: format!(
                                "a listing shows account {account} leased to {other} and {holder} at once"
                            ),
                            ops: vec![(*op).clone()],
                        });
                    }
                }
            }
            _ => {}
        }
    }
    let leases: Vec<(&String, &(String, u64, &Op))> = held.iter().collect();
    for (i, (rid_a, (acct_a, from_a, op_a))) in leases.iter().enumerate() {
        let until_a = released.get(*rid_a).copied().unwrap_or(u64::MAX);
        for (rid_b, (acct_b, from_b, op_b)) in &leases[i + 1..] {
            let until_b = released.get(*rid_b).copied().unwrap_or(u64::MAX);
            if acct_a == acct_b && from_a < &until_b && from_b < &until_a {
                anomalies.push(Anomaly {
                    kind: "double-lease".into(),
                    workload: workload.into(),
                    key: key.into(),
                    message: format!(
                        "account {acct_a} held by requests {rid_a} and {rid_b} at overlapping times"
                    ),
                    ops: vec![(*op_a).clone(), (*op_b).clone()],
                });
            }
        }
    }
    anomalies
}

/// Fencing, monotonic progress and durability of a session, checked
/// directly.
fn session_checks(workload: &str, key: &str, ops: &[&Op]) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    let anomaly = |kind: &str, message: String, ops: Vec<Op>| Anomaly {
        kind: kind.into(),
        workload: workload.into(),
        key: key.into(),
        message,
        ops,
    };
    // A progress write accepted at an epoch some handoff had already ended.
    let handoffs: Vec<(&Op, u64, u64)> = ops
        .iter()
        .filter(|op| op.f == "handoff" && op.outcome == Outcome::Ok)
        .filter_map(|op| {
            Some((
                *op,
                op.complete_ns?,
                op.output.get("epoch").and_then(Value::as_u64)?,
            ))
        })
        .collect();
    // A handoff accepted at an epoch an earlier handoff had already ended:
    // a stale instance of a holder handing the session away.
    for op in ops
        .iter()
        .filter(|op| op.f == "handoff" && op.outcome == Outcome::Ok)
    {
        let Some(epoch) = op.input.get("epoch").and_then(Value::as_u64) else {
            continue;
        };
        if let Some((h, _, new_epoch)) = handoffs
            .iter()
            .find(|(_, done, new_epoch)| *done < op.invoke_ns && *new_epoch > epoch)
        {
            anomalies.push(anomaly(
                "fenced-handoff-accepted",
                format!(
                    "a handoff naming epoch {epoch} was accepted after a handoff had moved the session to epoch {new_epoch}"
                ),
                vec![(*h).clone(), (*op).clone()],
            ));
        }
    }
    for op in ops
        .iter()
        .filter(|op| op.f == "progress" && op.outcome == Outcome::Ok)
    {
        let epoch = op.input.get("epoch").and_then(Value::as_u64).unwrap_or(0);
        if let Some((h, _, new_epoch)) = handoffs
            .iter()
            .find(|(_, done, new_epoch)| *done < op.invoke_ns && *new_epoch > epoch)
        {
            anomalies.push(anomaly(
                "fenced-write-accepted",
                format!(
                    "progress at epoch {epoch} was accepted after a handoff had moved the session to epoch {new_epoch}"
                ),
                vec![(*h).clone(), (*op).clone()],
            ));
        }
    }
    // Observed seq never goes back in real time: a read must see at least the
    // seq of everything acknowledged before it was invoked.
    let mut seen: Vec<(u64, u64, &Op)> = ops
        .iter()
        .filter(|op| op.outcome == Outcome::Ok)
        .filter_map(|op| {
            Some((
                op.complete_ns?,
                op.output.get("seq").and_then(Value::as_u64)?,
                *op,
            ))
        })
        .collect();
    seen.sort_by_key(|(done, _, _)| *done);
    let mut reads: Vec<&Op> = ops
        .iter()
        .filter(|op| op.f == "get" && op.outcome == Outcome::Ok)
        .copied()
        .collect();
    reads.sort_by_key(|op| op.invoke_ns);
    let mut best: Option<(u64, &Op)> = None;
    let mut next = 0;
    for read in reads {
        while next < seen.len() && seen[next].0 < read.invoke_ns {
            if best.is_none_or(|(s, _)| seen[next].1 > s) {
                best = Some((seen[next].1, seen[next].2));
            }
            next += 1;
        }
        let got = read.output.get("seq").and_then(Value::as_u64).unwrap_or(0);
        if let Some((max, before)) = best
            && got < max
        {
            let kind = if is_final(read) {
                "lost-write"
            } else {
                "progress-went-back"
            };
            anomalies.push(anomaly(
                kind,
                format!(
                    "a read saw seq {got} after seq {max} had been acknowledged (op {})",
                    before.id
                ),
                vec![before.clone(), read.clone()],
            ));
        }
    }
    anomalies
}

#[cfg(test)]
mod tests;
