//! The `link` workload's checks (P-link): selections and purchases are
//! counted exactly once per request id under faults, and rankings agree
//! with the counts.
//!
//! Counts only grow and each request id may add one, so bounds suffice (no
//! search): a read of an item, invoked at `t0` and answered at `t1`, must
//! show at least the request ids acknowledged (`ok`, replayed or not)
//! before `t0` — fewer is a `lost-count` — and at most the distinct request
//! ids invoked before `t1` — more is a `double-count` (a retry counted
//! twice, or a count from nowhere). The final reads must lie between the
//! acknowledged ids and the acknowledged plus unknown (`info`) ones. A
//! lookup ranks by selections: its ranks must not increase down the list
//! (`ranking-out-of-order`), and each listed item's rank must lie within
//! that item's read bounds at the lookup's times
//! (`ranking-disagrees-with-counts`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::Anomaly;
use crate::history::{Op, Outcome};

/// Which counter.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Selection,
    Purchase,
}

fn kind_of(op: &Op) -> Option<Kind> {
    match op.input.get("kind").and_then(Value::as_str)? {
        "selection" => Some(Kind::Selection),
        "purchase" => Some(Kind::Purchase),
        _ => None,
    }
}

/// One request id of one item and counter: when it was first invoked, when
/// first acknowledged, and whether any attempt's outcome is unknown.
#[derive(Default, Clone, Debug)]
struct Request {
    first_invoke: u64,
    first_ok: Option<u64>,
    unknown: bool,
}

/// item -> kind -> rid -> request.
type Requests = BTreeMap<String, BTreeMap<Kind, BTreeMap<String, Request>>>;

fn requests(ops: &[&Op]) -> Requests {
    let mut out: Requests = BTreeMap::new();
    for op in ops.iter().filter(|o| o.f == "count") {
        let (Some(kind), Some(rid)) = (kind_of(op), op.input.get("rid").and_then(Value::as_str))
        else {
            continue;
        };
        let r = out
            .entry(op.key.clone())
            .or_default()
            .entry(kind)
            .or_default()
            .entry(rid.to_string())
            .or_insert(Request {
                first_invoke: op.invoke_ns,
                ..Request::default()
            });
        r.first_invoke = r.first_invoke.min(op.invoke_ns);
        match op.outcome {
            Outcome::Ok => {
                let t = op.complete_ns.unwrap_or(op.invoke_ns);
                r.first_ok = Some(r.first_ok.map_or(t, |f| f.min(t)));
            }
            Outcome::Info => r.unknown = true,
            Outcome::Fail => {}
        }
    }
    out
}

/// (at least, at most) for one item and counter seen by an op invoked at
/// `t0` and answered at `t1`.
fn bounds(reqs: Option<&BTreeMap<String, Request>>, t0: u64, t1: u64) -> (u64, u64) {
    let Some(reqs) = reqs else { return (0, 0) };
    let low = reqs
        .values()
        .filter(|r| r.first_ok.is_some_and(|t| t < t0))
        .count() as u64;
    let high = reqs.values().filter(|r| r.first_invoke < t1).count() as u64;
    (low, high)
}

fn anomaly(kind: &str, key: &str, message: String, ops: Vec<Op>) -> Anomaly {
    Anomaly {
        kind: kind.into(),
        workload: "link".into(),
        key: key.into(),
        message,
        ops,
    }
}

fn field(v: &Value, name: &str) -> Option<u64> {
    v.get(name).and_then(Value::as_u64)
}

/// Every anomaly of the `link` operations in `ops`.
pub fn check(ops: &[&Op]) -> Vec<Anomaly> {
    let reqs = requests(ops);
    let mut out = Vec::new();
    let per = |item: &str, kind: Kind| reqs.get(item).and_then(|m| m.get(&kind));
    for op in ops.iter().filter(|o| o.outcome == Outcome::Ok) {
        let t0 = op.invoke_ns;
        let t1 = op.complete_ns.unwrap_or(u64::MAX);
        match op.f.as_str() {
            "read" | "count" => {
                for (kind, name) in [
                    (Kind::Selection, "selections"),
                    (Kind::Purchase, "purchases"),
                ] {
                    let Some(seen) = field(&op.output, name) else {
                        continue;
                    };
                    let (low, high) = bounds(per(&op.key, kind), t0, t1);
                    // A count's own answer includes itself; a read's lower
                    // bound is what was acknowledged before it began.
                    if seen < low {
                        out.push(anomaly(
                            "lost-count",
                            &op.key,
                            format!(
                                "op {} ({}) saw {seen} {name} of {}, but {low} request ids \
                                 were acknowledged before it began",
                                op.id, op.f, op.key
                            ),
                            vec![(*op).clone()],
                        ));
                    }
                    if seen > high {
                        out.push(anomaly(
                            "double-count",
                            &op.key,
                            format!(
                                "op {} ({}) saw {seen} {name} of {}, but only {high} distinct \
                                 request ids had been sent",
                                op.id, op.f, op.key
                            ),
                            vec![(*op).clone()],
                        ));
                    }
                    let fin = op.input.get("final").and_then(Value::as_bool) == Some(true);
                    if fin && op.f == "read" {
                        let r = per(&op.key, kind);
                        let acked = r
                            .map_or(0, |m| m.values().filter(|r| r.first_ok.is_some()).count())
                            as u64;
                        let maybe = r.map_or(0, |m| {
                            m.values()
                                .filter(|r| r.first_ok.is_some() || r.unknown)
                                .count()
                        }) as u64;
                        if seen < acked || seen > maybe {
                            out.push(anomaly(
                                if seen < acked {
                                    "lost-count"
                                } else {
                                    "double-count"
                                },
                                &op.key,
                                format!(
                                    "final read of {}: {seen} {name}, but {acked} request ids \
                                     were acknowledged and {maybe} may have been counted",
                                    op.key
                                ),
                                vec![(*op).clone()],
                            ));
                        }
                    }
                }
            }
            "lookup" => {
                let items = op
                    .output
                    .get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let mut last = u64::MAX;
                let mut listed = BTreeSet::new();
                for it in &items {
                    let rank = it.get(0).and_then(Value::as_u64).unwrap_or(0);
                    let id = it.get(1).and_then(Value::as_str).unwrap_or("");
                    if rank > last {
                        out.push(anomaly(
                            "ranking-out-of-order",
                            &op.key,
                            format!("op {} ranks {id} ({rank}) below an item with {last}", op.id),
                            vec![(*op).clone()],
                        ));
                    }
                    last = rank;
                    listed.insert(id.to_string());
                    let (low, high) = bounds(per(id, Kind::Selection), t0, t1);
                    if rank < low || rank > high {
                        out.push(anomaly(
                            "ranking-disagrees-with-counts",
                            &op.key,
                            format!(
                                "op {} ranks {id} at {rank} selections, but its count was \
                                 between {low} and {high} while the lookup ran",
                                op.id
                            ),
                            vec![(*op).clone()],
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    out
}
