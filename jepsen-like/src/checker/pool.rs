//! The account pool: which lease request (by request id) holds which account.
//!
//! Leases are identified by their request id, the one thing the client knows
//! before the answer. `ListLeases` shows no request ids, only holders, so the
//! workload leases each request to its own viewer and the checker maps a
//! listed holder back to the request that named it. An `info` lease may have
//! taken an account we never learn: it holds a placeholder (`None`) that
//! counts against the pool's size and is bound to a name when a replay or a
//! listing reveals it. Leases in the checked runs live far longer than the
//! run, so expiry never enters the model.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::linear::{Entry, Model};
use crate::history::{Op, Outcome};

/// What a pool operation answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// It happened (for a lease: the account it gave).
    Ok(Option<String>),
    /// FailedPrecondition: an ended lease, a replayed request of an ended lease.
    Precondition,
    /// ResourceExhausted: no free account, or (for a replay) the lease keeps
    /// the most answers it may.
    Exhausted,
    /// PermissionDenied: a lease secret the cluster returned was refused.
    Denied,
    /// Unknown outcome.
    Unknown,
}

/// One pool operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolOp {
    /// Lease with this request id.
    Lease(String, Answer),
    /// Renew the lease of this request id.
    Renew(String, Answer),
    /// Release the lease of this request id.
    Release(String, Answer),
    /// `ListLeases`: (request id, account) of every active lease, the
    /// request id found from the listed holder.
    List(Vec<(String, String)>),
}

/// The pool's state.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PoolState {
    /// Active leases: request id -> account (None: not learned yet).
    pub holders: BTreeMap<String, Option<String>>,
    /// Request ids whose lease ended.
    pub ended: BTreeSet<String>,
}

/// The pool's sequential specification, for a pool of `size` accounts.
#[derive(Debug)]
pub struct PoolModel {
    /// How many accounts the pool has (and may ever have).
    pub size: usize,
}

fn held_by_other(state: &PoolState, rid: &str, account: &str) -> bool {
    state
        .holders
        .iter()
        .any(|(r, a)| r != rid && a.as_deref() == Some(account))
}

impl Model for PoolModel {
    type Op = PoolOp;
    type State = PoolState;
    fn init(&self) -> PoolState {
        PoolState::default()
    }
    fn step(&self, s: &PoolState, op: &PoolOp) -> Vec<PoolState> {
        let held = |rid: &str| s.holders.contains_key(rid);
        match op {
            PoolOp::Lease(rid, answer) => match answer {
                Answer::Ok(Some(account)) => match s.holders.get(rid) {
                    Some(Some(a)) if a == account => vec![s.clone()],
                    Some(Some(_)) => vec![],
                    Some(None) if !held_by_other(s, rid, account) => {
                        let mut n = s.clone();
                        n.holders.insert(rid.clone(), Some(account.clone()));
                        vec![n]
                    }
                    Some(None) => vec![],
                    None if s.ended.contains(rid)
                        || s.holders.len() >= self.size
                        || held_by_other(s, rid, account) =>
                    {
                        vec![]
                    }
                    None => {
                        let mut n = s.clone();
                        n.holders.insert(rid.clone(), Some(account.clone()));
                        vec![n]
                    }
                },
                Answer::Ok(None) => vec![],
                Answer::Precondition if s.ended.contains(rid) => vec![s.clone()],
                Answer::Precondition => vec![],
                Answer::Exhausted if !held(rid) && s.holders.len() >= self.size => {
                    vec![s.clone()]
                }
                // A replay past the cap on answers per lease. The model does
                // not count answers: one call may apply more than once
                // (the client retries an idempotent write).
                Answer::Exhausted if held(rid) => vec![s.clone()],
                Answer::Exhausted => vec![],
                // Every lease request comes from the same principal.
                Answer::Denied => vec![],
                Answer::Unknown => {
                    let mut out = vec![s.clone()];
                    if !held(rid) && !s.ended.contains(rid) && s.holders.len() < self.size {
                        let mut n = s.clone();
                        n.holders.insert(rid.clone(), None);
                        out.push(n);
                    }
                    out
                }
            },
            // The workload presents a secret the cluster returned for the
            // lease: a refusal (Denied) is never right.
            PoolOp::Renew(rid, answer) => match answer {
                Answer::Ok(_) if held(rid) => vec![s.clone()],
                Answer::Precondition if !held(rid) => vec![s.clone()],
                Answer::Unknown => vec![s.clone()],
                _ => vec![],
            },
            PoolOp::Release(rid, answer) => {
                let mut released = s.clone();
                released.holders.remove(rid);
                released.ended.insert(rid.clone());
                match answer {
                    Answer::Ok(_) if held(rid) => vec![released],
                    Answer::Precondition if !held(rid) => vec![s.clone()],
                    Answer::Unknown if held(rid) => vec![s.clone(), released],
                    Answer::Unknown => vec![s.clone()],
                    _ => vec![],
                }
            }
            PoolOp::List(listed) => {
                let distinct: BTreeSet<&String> = listed.iter().map(|(rid, _)| rid).collect();
                if listed.len() != s.holders.len() || distinct.len() != listed.len() {
                    return vec![];
                }
                let mut n = s.clone();
                for (rid, account) in listed {
                    match s.holders.get(rid) {
                        Some(Some(a)) if a == account => {}
                        Some(None) if !held_by_other(&n, rid, account) => {
                            n.holders.insert(rid.clone(), Some(account.clone()));
                        }
                        _ => return vec![],
                    }
                }
                vec![n]
            }
        }
    }

    /// Ended request ids stay ended: an unknown lease or release of one can
    /// no longer do anything; an unknown renew never changes the model.
    fn inert(&self, states: &[PoolState], op: &PoolOp) -> bool {
        match op {
            PoolOp::Lease(rid, _) | PoolOp::Release(rid, _) => {
                states.iter().all(|s| s.ended.contains(rid))
            }
            PoolOp::Renew(..) => true,
            PoolOp::List(_) => false,
        }
    }
}

fn answer(op: &Op) -> Option<Answer> {
    match op.outcome {
        Outcome::Ok => Some(Answer::Ok(
            op.output
                .get("account")
                .and_then(Value::as_str)
                .map(str::to_string),
        )),
        Outcome::Info => Some(Answer::Unknown),
        Outcome::Fail => match op.output.get("code").and_then(Value::as_str) {
            Some("FailedPrecondition") => Some(Answer::Precondition),
            Some("ResourceExhausted") => Some(Answer::Exhausted),
            Some("PermissionDenied") => Some(Answer::Denied),
            // Unavailable, InvalidArgument, ...: nothing happened, nothing learned.
            _ => None,
        },
    }
}

/// The request each viewer was leased for, from the lease ops' inputs.
pub fn requests_by_holder<'a>(ops: &[&'a Op]) -> BTreeMap<&'a str, &'a str> {
    ops.iter()
        .filter(|op| op.f == "lease")
        .filter_map(|op| {
            Some((
                op.input.get("user")?.as_str()?,
                op.input.get("rid")?.as_str()?,
            ))
        })
        .collect()
}

/// A listing's leases as (holder, account), in the order listed.
pub fn listed(op: &Op) -> Option<Vec<(&str, &str)>> {
    let leases = op.output.get("leases")?.as_array()?;
    Some(
        leases
            .iter()
            .filter_map(|l| Some((l.get("holder")?.as_str()?, l.get("account")?.as_str()?)))
            .collect(),
    )
}

/// The pool operations of one pool.
pub fn entries(ops: &[&Op]) -> Vec<Entry<PoolOp>> {
    let requests = requests_by_holder(ops);
    ops.iter()
        .filter_map(|op| {
            let rid = || {
                op.input
                    .get("rid")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            let typed = match op.f.as_str() {
                "lease" => PoolOp::Lease(rid()?, answer(op)?),
                "renew" => PoolOp::Renew(rid()?, answer(op)?),
                "release" => PoolOp::Release(rid()?, answer(op)?),
                "list" if op.outcome == Outcome::Ok => PoolOp::List(
                    listed(op)?
                        .into_iter()
                        .map(|(holder, account)| {
                            // A holder no request named cannot match any
                            // lease of the model, so the listing fails.
                            let rid = requests
                                .get(holder)
                                .map_or_else(|| format!("(holder {holder})"), |r| r.to_string());
                            (rid, account.to_string())
                        })
                        .collect(),
                ),
                _ => return None,
            };
            Some(Entry {
                op: typed,
                id: op.id,
                call: op.invoke_ns,
                ret: op.complete_ns,
            })
        })
        .collect()
}
