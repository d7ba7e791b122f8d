//! A session's progress: which terminal holds it, at which epoch, and the
//! last accepted sequence number. Progress must name the holder and its
//! epoch (else "fenced") and move `seq` forward (else "stale"). A handoff
//! names the terminal it takes the session from (the initiator for push and
//! binding, the other terminal for pull and pull-bound: the workload's two
//! terminals are bound to each other) and the epoch its initiator saw; it
//! moves the session to the other terminal and bumps the epoch only when
//! both are right, and is refused FENCED (wrong epoch) or NOT_HOLDER (right
//! epoch, wrong holder) otherwise.

use serde_json::Value;

use super::linear::{Entry, Model};
use crate::history::{Op, Outcome};

/// The session as the model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionState {
    /// Bumped by every handoff.
    pub epoch: u64,
    /// Terminal index (0 = the one that connected).
    pub terminal: u64,
    /// Last accepted sequence number.
    pub seq: u64,
}

/// What a progress write answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressAnswer {
    /// Accepted.
    Ok,
    /// FailedPrecondition "fenced".
    Fenced,
    /// FailedPrecondition "stale".
    Stale,
    /// Unknown.
    Unknown,
}

/// One session operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionOp {
    /// Progress from `terminal` at `epoch` with `seq`.
    Progress {
        /// Sender.
        terminal: u64,
        /// The epoch it believes in.
        epoch: u64,
        /// Its sequence number.
        seq: u64,
        /// The answer.
        answer: ProgressAnswer,
    },
    /// A handoff taking the session from `from`; `result` is the session
    /// after an accepted one, `None` after a refusal (FailedPrecondition),
    /// and the flag says whether the outcome is unknown.
    Handoff {
        /// The holder the request names (or is).
        from: u64,
        /// The epoch the initiator saw (`None` in histories from before
        /// handoffs named one: any epoch).
        epoch: Option<u64>,
        /// The refusal's reason, when refused.
        refused: Option<Refusal>,
        /// The session after, when accepted.
        result: Option<SessionState>,
        /// Outcome unknown.
        unknown: bool,
    },
    /// A linearizable read.
    Read(SessionState),
}

/// Why a handoff was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// FENCED: the epoch named is not the session's.
    Fenced,
    /// NOT_HOLDER: the epoch is right, the holder named is not.
    NotHolder,
    /// Another precondition.
    Other,
}

/// The session's sequential specification.
#[derive(Debug, Default)]
pub struct SessionModel;

impl Model for SessionModel {
    type Op = SessionOp;
    type State = SessionState;
    fn init(&self) -> SessionState {
        SessionState {
            epoch: 1,
            terminal: 0,
            seq: 0,
        }
    }
    fn step(&self, s: &SessionState, op: &SessionOp) -> Vec<SessionState> {
        match *op {
            SessionOp::Progress {
                terminal,
                epoch,
                seq,
                answer,
            } => {
                let fenced = terminal != s.terminal || epoch != s.epoch;
                let stale = !fenced && seq <= s.seq;
                let applied = SessionState { seq, ..*s };
                match answer {
                    ProgressAnswer::Ok if !fenced && !stale => vec![applied],
                    ProgressAnswer::Fenced if fenced => vec![*s],
                    ProgressAnswer::Stale if stale => vec![*s],
                    ProgressAnswer::Unknown if !fenced && !stale => vec![*s, applied],
                    ProgressAnswer::Unknown => vec![*s],
                    _ => vec![],
                }
            }
            SessionOp::Handoff {
                from,
                epoch,
                refused,
                result,
                unknown,
            } => {
                let right_epoch = epoch.is_none_or(|e| e == s.epoch);
                let holder = from == s.terminal;
                let valid = right_epoch && holder;
                let moved = SessionState {
                    epoch: s.epoch + 1,
                    terminal: 1 - s.terminal,
                    seq: s.seq,
                };
                let refusal_fits = match refused {
                    Some(Refusal::Fenced) => !right_epoch,
                    Some(Refusal::NotHolder) => right_epoch && !holder,
                    Some(Refusal::Other) | None => !valid,
                };
                match (unknown, result) {
                    (true, _) if valid => vec![*s, moved],
                    (true, _) => vec![*s],
                    (false, Some(r)) if valid && r == moved => vec![moved],
                    (false, None) if refusal_fits => vec![*s],
                    _ => vec![],
                }
            }
            SessionOp::Read(r) if r == *s => vec![*s],
            SessionOp::Read(_) => vec![],
        }
    }

    /// Epochs and seqs only grow: a progress write whose epoch has passed,
    /// or whose seq has been overtaken in its epoch, can never apply.
    fn inert(&self, states: &[SessionState], op: &SessionOp) -> bool {
        match *op {
            SessionOp::Progress {
                terminal,
                epoch,
                seq,
                ..
            } => states.iter().all(|s| {
                s.epoch > epoch || (s.epoch == epoch && (s.terminal != terminal || s.seq >= seq))
            }),
            _ => false,
        }
    }
}

/// Reads `{"epoch", "terminal", "seq"}`.
pub fn state_of(v: &Value) -> Option<SessionState> {
    Some(SessionState {
        epoch: v.get("epoch")?.as_u64()?,
        terminal: v.get("terminal")?.as_u64()?,
        seq: v.get("seq")?.as_u64()?,
    })
}

/// The reason of a refused precondition (`"FENCED"`, as the node named it in
/// the status details; `""` when it gave none).
fn precondition(op: &Op) -> Option<&str> {
    (op.output.get("code").and_then(Value::as_str) == Some("FailedPrecondition")).then(|| {
        op.output
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("")
    })
}

/// The operations on one session.
pub fn entries(ops: &[&Op]) -> Vec<Entry<SessionOp>> {
    ops.iter()
        .filter_map(|op| {
            let typed = match op.f.as_str() {
                "progress" => {
                    let answer = match op.outcome {
                        Outcome::Ok => ProgressAnswer::Ok,
                        Outcome::Info => ProgressAnswer::Unknown,
                        Outcome::Fail => match precondition(op) {
                            Some("FENCED") => ProgressAnswer::Fenced,
                            Some("STALE_SEQUENCE") => ProgressAnswer::Stale,
                            _ => return None,
                        },
                    };
                    SessionOp::Progress {
                        terminal: op.input.get("terminal")?.as_u64()?,
                        epoch: op.input.get("epoch")?.as_u64()?,
                        seq: op.input.get("seq")?.as_u64()?,
                        answer,
                    }
                }
                "handoff" => {
                    let from = op.input.get("from")?.as_u64()?;
                    let epoch = op.input.get("epoch").and_then(Value::as_u64);
                    match op.outcome {
                        Outcome::Ok => SessionOp::Handoff {
                            from,
                            epoch,
                            refused: None,
                            result: state_of(&op.output),
                            unknown: false,
                        },
                        Outcome::Info => SessionOp::Handoff {
                            from,
                            epoch,
                            refused: None,
                            result: None,
                            unknown: true,
                        },
                        Outcome::Fail => {
                            let refused = match precondition(op)? {
                                "FENCED" => Refusal::Fenced,
                                "NOT_HOLDER" => Refusal::NotHolder,
                                _ => Refusal::Other,
                            };
                            SessionOp::Handoff {
                                from,
                                epoch,
                                refused: Some(refused),
                                result: None,
                                unknown: false,
                            }
                        }
                    }
                }
                "get" if op.outcome == Outcome::Ok => SessionOp::Read(state_of(&op.output)?),
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
