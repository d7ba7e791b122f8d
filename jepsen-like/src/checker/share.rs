//! The `share` workload's checks (P-share): storage servers are never
//! oversubscribed, only friends get at shared media, and a retried share
//! request names the share its first answer named.
//!
//! Reservations end by a deadline in cluster time, which the history's
//! clock cannot place, so only *committed* bytes are counted: a share whose
//! commit was acknowledged (`ok`) by time `t`, and whose delete (`ok` or
//! `info`; a `fail` did nothing) was not invoked by `t`, certainly holds its
//! committed size on its server at `t` (committed shares end only by a
//! delete). Those are lower bounds, so no search is needed:
//!
//! - `oversubscribed`: a storage read shows `reserved + committed` above a
//!   server's capacity, or the committed shares certainly held on a server
//!   at one moment add up to more than its capacity (checked at every
//!   acknowledged commit, when such a set is largest);
//! - `lost-commit`: a storage read, invoked at `t0` and answered at `t1`,
//!   shows fewer committed bytes on a server than the shares committed
//!   before `t0` and not deleted before `t1`;
//! - `non-friend-access`: `AccessShare` granted to a user other than the
//!   owner who was never the owner's friend (friendships are mutual; one is
//!   known from a `befriend` op, acknowledged or unknown);
//! - `non-friend-share`: a share admitted with a receiver who was never the
//!   owner's friend;
//! - `retry-not-idempotent`: two acknowledged answers to one share request
//!   (owner and request id) naming different shares or servers;
//! - `live-storage-expired`: a heartbeat-kept storage server seen down (or
//!   up again in a new spell) within a TTL of a beat that reached its owner
//!   in time ([`check_beats`]).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::Anomaly;
use crate::history::{Op, Outcome};

fn anomaly(kind: &str, key: &str, message: String, ops: Vec<Op>) -> Anomaly {
    Anomaly {
        kind: kind.into(),
        workload: "share".into(),
        key: key.into(),
        message,
        ops,
    }
}

fn u64_of(v: &Value, name: &str) -> Option<u64> {
    v.get(name).and_then(Value::as_u64)
}

fn str_of<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v.get(name).and_then(Value::as_str)
}

/// An unordered pair of users.
fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

/// A share whose commit was acknowledged: its first acknowledgement.
struct Committed<'a> {
    share_id: u64,
    server: String,
    size: u64,
    done: u64,
    op: &'a Op,
}

/// The committed shares certainly on `server` from `from` to `until`:
/// acknowledged by `from`, no delete invoked by `until`.
fn held<'a, 'o>(
    committed: &'a BTreeMap<u64, Committed<'o>>,
    delete_at: &BTreeMap<u64, u64>,
    server: &str,
    from: u64,
    until: u64,
) -> Vec<&'a Committed<'o>> {
    committed
        .values()
        .filter(|c| {
            c.server == server
                && c.done <= from
                && delete_at.get(&c.share_id).is_none_or(|&d| d > until)
        })
        .collect()
}

/// Every anomaly of the `share` operations in `ops`.
pub fn check(ops: &[&Op]) -> Vec<Anomaly> {
    let mut out = Vec::new();

    // Facts: capacities and friendships (ever, in either order).
    let mut capacity: BTreeMap<String, u64> = BTreeMap::new();
    let mut friends: BTreeSet<(String, String)> = BTreeSet::new();
    for op in ops.iter().filter(|o| o.outcome != Outcome::Fail) {
        match op.f.as_str() {
            "register-storage" if op.outcome == Outcome::Ok => {
                if let (Some(s), Some(c)) =
                    (str_of(&op.input, "server"), u64_of(&op.input, "capacity"))
                {
                    capacity.insert(s.to_string(), c);
                }
            }
            "befriend" => {
                if let (Some(a), Some(b)) = (str_of(&op.input, "user"), str_of(&op.input, "friend"))
                {
                    friends.insert(pair(a, b));
                }
            }
            _ => {}
        }
    }
    let ever_friends = |a: &str, b: &str| friends.contains(&pair(a, b));

    // Commits acknowledged, and when each share's delete was first invoked.
    let mut committed: BTreeMap<u64, Committed<'_>> = BTreeMap::new();
    let mut delete_at: BTreeMap<u64, u64> = BTreeMap::new();
    for op in ops {
        let Some(id) = u64_of(&op.input, "share_id") else {
            continue;
        };
        match (op.f.as_str(), op.outcome, op.complete_ns) {
            ("commit", Outcome::Ok, Some(done)) => {
                let (Some(server), Some(size)) =
                    (str_of(&op.output, "server"), u64_of(&op.output, "size"))
                else {
                    continue;
                };
                if committed.get(&id).is_none_or(|c| done < c.done) {
                    committed.insert(
                        id,
                        Committed {
                            share_id: id,
                            server: server.to_string(),
                            size,
                            done,
                            op,
                        },
                    );
                }
            }
            ("delete", Outcome::Ok | Outcome::Info, _) => {
                let at = delete_at.entry(id).or_insert(op.invoke_ns);
                *at = (*at).min(op.invoke_ns);
            }
            _ => {}
        }
    }
    // Storage reads: over capacity, or fewer committed bytes than certain.
    let mut read_capacity: BTreeMap<String, u64> = BTreeMap::new();
    for op in ops
        .iter()
        .filter(|o| o.f == "storage" && o.outcome == Outcome::Ok)
    {
        let t0 = op.invoke_ns;
        let t1 = op.complete_ns.unwrap_or(u64::MAX);
        let servers = op
            .output
            .get("servers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for s in &servers {
            let Some(id) = str_of(s, "server") else {
                continue;
            };
            let cap = u64_of(s, "capacity").unwrap_or(0);
            let reserved = u64_of(s, "reserved").unwrap_or(0);
            let used_committed = u64_of(s, "committed").unwrap_or(0);
            let c = read_capacity.entry(id.to_string()).or_insert(cap);
            *c = (*c).min(cap);
            if reserved + used_committed > cap {
                out.push(anomaly(
                    "oversubscribed",
                    id,
                    format!(
                        "op {} read storage server {id} holding {reserved} reserved + \
                         {used_committed} committed bytes, over its capacity of {cap}",
                        op.id
                    ),
                    vec![(*op).clone()],
                ));
            }
            let certain = held(&committed, &delete_at, id, t0, t1);
            let sum: u64 = certain.iter().map(|c| c.size).sum();
            if used_committed < sum {
                let mut involved: Vec<Op> = certain.iter().map(|c| c.op.clone()).collect();
                involved.push((*op).clone());
                out.push(anomaly(
                    "lost-commit",
                    id,
                    format!(
                        "op {} read {used_committed} committed bytes on {id}, but {} shares \
                         of {sum} bytes were committed before it began and not deleted before \
                         it ended",
                        op.id,
                        certain.len()
                    ),
                    involved,
                ));
            }
        }
    }

    // Committed shares held at one moment, against the capacity: the set
    // held at a commit's acknowledgement, for every commit.
    let mut over_reported: BTreeSet<&str> = BTreeSet::new();
    for c in committed.values() {
        let server = c.server.as_str();
        let Some(&cap) = capacity.get(server).or_else(|| read_capacity.get(server)) else {
            continue;
        };
        if over_reported.contains(server) {
            continue;
        }
        let certain = held(&committed, &delete_at, server, c.done, c.done);
        let sum: u64 = certain.iter().map(|h| h.size).sum();
        if sum > cap {
            over_reported.insert(server);
            out.push(anomaly(
                "oversubscribed",
                server,
                format!(
                    "when share {} was acknowledged committed, {} committed shares of {sum} \
                     bytes were certainly on {server}, over its capacity of {cap}",
                    c.share_id,
                    certain.len()
                ),
                certain.iter().map(|h| h.op.clone()).collect(),
            ));
        }
    }

    // Friends only.
    for op in ops.iter().filter(|o| o.outcome == Outcome::Ok) {
        match op.f.as_str() {
            "access" => {
                let Some(user) = str_of(&op.input, "user") else {
                    continue;
                };
                let owners: BTreeSet<&str> =
                    [str_of(&op.input, "owner"), str_of(&op.output, "owner")]
                        .into_iter()
                        .flatten()
                        .collect();
                for owner in owners {
                    if user != owner && !ever_friends(owner, user) {
                        out.push(anomaly(
                            "non-friend-access",
                            &op.key,
                            format!(
                                "op {}: {user} was granted access to share {} of {owner}, \
                                 never a friend of theirs",
                                op.id, op.key
                            ),
                            vec![(*op).clone()],
                        ));
                    }
                }
            }
            "share" => {
                let owner = str_of(&op.input, "owner").unwrap_or("");
                let receivers = op
                    .input
                    .get("receivers")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let strangers: Vec<&str> = receivers
                    .iter()
                    .filter_map(Value::as_str)
                    .filter(|r| !ever_friends(owner, r))
                    .collect();
                if !strangers.is_empty() {
                    out.push(anomaly(
                        "non-friend-share",
                        &op.key,
                        format!(
                            "op {}: {owner} shared media with {strangers:?}, never friends of \
                             theirs",
                            op.id
                        ),
                        vec![(*op).clone()],
                    ));
                }
            }
            _ => {}
        }
    }

    // One share per request.
    let mut first: BTreeMap<(String, String), (u64, String, &Op)> = BTreeMap::new();
    for op in ops
        .iter()
        .filter(|o| o.f == "share" && o.outcome == Outcome::Ok)
    {
        let (Some(owner), Some(rid)) = (str_of(&op.input, "owner"), str_of(&op.input, "rid"))
        else {
            continue;
        };
        let id = u64_of(&op.output, "share_id").unwrap_or(0);
        let server = str_of(&op.output, "server").unwrap_or("").to_string();
        let key = (owner.to_string(), rid.to_string());
        match first.get(&key) {
            None => {
                first.insert(key, (id, server, op));
            }
            Some((id0, server0, op0)) if (*id0, server0) != (id, &server) => {
                out.push(anomaly(
                    "retry-not-idempotent",
                    &op.key,
                    format!(
                        "request {rid} of {owner} was answered share {id0} on {server0} (op {}) \
                         and share {id} on {server} (op {})",
                        op0.id, op.id
                    ),
                    vec![(*op0).clone(), (*op).clone()],
                ));
            }
            Some(_) => {}
        }
    }
    out.extend(check_beats(ops));
    out
}

/// What an `ok` op says of heartbeat-kept `server`: up and since when, or
/// down (a storage read or a beat's answer).
fn seen(op: &Op, server: &str) -> Option<(bool, u64)> {
    let s = match op.f.as_str() {
        "storage-beat" if op.key == server => &op.output,
        "storage" => op
            .output
            .get("servers")?
            .as_array()?
            .iter()
            .find(|s| str_of(s, "server") == Some(server))?,
        _ => return None,
    };
    Some((s.get("up")?.as_bool()?, u64_of(s, "up_since")?))
}

/// `live-storage-expired`, per heartbeat-kept server, as `live-user-expired`
/// is for TTL presence (`checker::ttl`): the server was seen down, or up in
/// another spell (an expiry came between), less than a TTL after a beat `P`
/// was invoked, where `P` came in time (answered before a TTL had passed
/// since the beat before it was invoked, or the beat that brought it up).
/// The owner's deadline after that earlier beat was at least its invocation
/// plus the TTL, so `P` reached the owner before it and no expiry could be
/// under way.
fn check_beats(ops: &[&Op]) -> Vec<Anomaly> {
    use super::ttl::SLACK_NS;
    const MS: u64 = 1_000_000;
    let mut out = Vec::new();
    let mut servers: BTreeMap<&str, u64> = BTreeMap::new();
    for op in ops.iter().filter(|o| o.f == "storage-beat") {
        if let Some(ttl) = u64_of(&op.input, "ttl_ms") {
            servers.insert(op.key.as_str(), ttl * MS);
        }
    }
    for (server, ttl_ns) in servers {
        let mut seq: Vec<(&Op, bool, u64)> = ops
            .iter()
            .filter(|o| o.outcome == Outcome::Ok)
            .filter_map(|o| seen(o, server).map(|(up, since)| (*o, up, since)))
            .collect();
        seq.sort_by_key(|(o, _, _)| o.invoke_ns);
        // The last acknowledged beat, its spell, and whether it came in time.
        let mut last: Option<(&Op, u64, bool)> = None;
        for (op, up, since) in seq {
            let Some(done) = op.complete_ns else { continue };
            let beat = op.f == "storage-beat";
            let Some((prev, spell, in_time)) = last else {
                if beat && up {
                    last = Some((op, since, true));
                }
                continue;
            };
            let down = !up || since != spell;
            // An op invoked before `prev` was answered may have been
            // served before it (before the spell `prev` began).
            let after = prev.complete_ns.is_some_and(|c| op.invoke_ns >= c);
            if down && after && in_time && done + SLACK_NS < prev.invoke_ns + ttl_ns {
                out.push(anomaly(
                    "live-storage-expired",
                    server,
                    format!(
                        "heartbeat-kept storage server seen {} ({} op {}) {} ms after its beat \
                         (op {}) was invoked and acknowledged, within its TTL of {} ms",
                        if up { "in a new spell" } else { "down" },
                        op.f,
                        op.id,
                        done.saturating_sub(prev.invoke_ns) / MS,
                        prev.id,
                        ttl_ns / MS
                    ),
                    vec![prev.clone(), op.clone()],
                ));
            }
            if beat && up {
                // A beat of a new spell is like a login: the owner's
                // deadline counts from the mark it proposed.
                let in_time = down || done + SLACK_NS < prev.invoke_ns + ttl_ns;
                last = Some((op, since, in_time));
            } else if down && after {
                last = None;
            }
        }
    }
    out
}
