//! Linearizability search: Wing & Gong's algorithm with Lowe's memoisation,
//! as Porcupine implements it.
//!
//! The history becomes a doubly linked list of call and return events in
//! time order. The search walks it: at a call it tries to linearize that
//! operation now (the model must accept it from the current state); at a
//! return whose call is still in the list it is stuck and backtracks. Each
//! (set of linearized ops, model state) pair is explored once: the cache
//! holds a bitset of the linearized ops and the state, which is what turns an
//! exponential search into one that handles thousands of operations per key.
//!
//! Models may be nondeterministic (an `info` lease took *some* account): a
//! step returns every possible successor and the search carries the set of
//! states, as Porcupine's power-set models do.

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A sequential specification.
pub trait Model {
    /// One operation with its input and observed output.
    type Op: Debug;
    /// The model's state; ordered so state sets have one canonical form.
    type State: Clone + Ord + Hash + Debug;
    /// The state before any operation.
    fn init(&self) -> Self::State;
    /// Every state the operation can lead to from `state` while producing
    /// its observed output; empty when it cannot happen there. An operation
    /// with an unknown outcome (`ret: None`) must be possible in every
    /// state (its successors include "it did not happen" where that is
    /// allowed): the search relies on it to leave such operations for the
    /// end once they no longer change anything.
    fn step(&self, state: &Self::State, op: &Self::Op) -> Vec<Self::State>;

    /// Whether an unknown-outcome `op` can no longer change any state
    /// reachable from `states` (its chance has passed for good: a progress
    /// write whose epoch has ended). Such operations count as linearized in
    /// the cache key, so the search does not explore the same future twice
    /// for "it did not happen" and "it has not happened yet".
    fn inert(&self, _states: &[Self::State], _op: &Self::Op) -> bool {
        false
    }
}

/// One operation to check.
#[derive(Debug, Clone)]
pub struct Entry<O> {
    /// The typed operation.
    pub op: O,
    /// Its id in the history (for reports).
    pub id: usize,
    /// Invocation time.
    pub call: u64,
    /// Completion time; `None` when unknown (it may take effect any time
    /// after the call, or never).
    pub ret: Option<u64>,
}

/// The result of a search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A linearization exists.
    Linearizable,
    /// None exists. `stuck` is the operation (history id) whose completion
    /// no order could get past on the deepest path the search found;
    /// `prefix` the last operations linearized on that path, oldest first.
    NotLinearizable {
        /// The operation that could not be linearized.
        stuck: usize,
        /// The tail of the longest linearizable prefix.
        prefix: Vec<usize>,
    },
    /// The time budget ran out.
    Unknown,
}

const NONE: usize = usize::MAX;

struct Bitset(Vec<u64>);

impl Bitset {
    fn new(n: usize) -> Bitset {
        Bitset(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// Searches for a linearization of `entries` under `model`, giving up after
/// `budget`.
pub fn check<M: Model>(model: &M, entries: &[Entry<M::Op>], budget: Duration) -> Verdict {
    let n = entries.len();
    if n == 0 {
        return Verdict::Linearizable;
    }
    // Events sorted by time; at equal times calls first (the operations then
    // count as concurrent, the permissive reading of a tie).
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, e) in entries.iter().enumerate() {
        events.push((e.call, 0, i));
        events.push((e.ret.unwrap_or(u64::MAX), 1, i));
    }
    events.sort_unstable();
    // Node 0 is the head sentinel; node k + 1 is events[k].
    let len = events.len() + 1;
    let mut prev = vec![NONE; len];
    let mut next = vec![NONE; len];
    let mut op_of = vec![0usize; len];
    let mut is_call = vec![false; len];
    let mut match_of = vec![NONE; len];
    let mut ret_node = vec![NONE; n];
    for (k, &(_, kind, op)) in events.iter().enumerate() {
        let node = k + 1;
        prev[node] = node - 1;
        next[node - 1] = node;
        op_of[node] = op;
        is_call[node] = kind == 0;
        if kind == 1 {
            ret_node[op] = node;
        }
    }
    for node in 1..len {
        if is_call[node] {
            match_of[node] = ret_node[op_of[node]];
        }
    }

    let lift = |prev: &mut Vec<usize>, next: &mut Vec<usize>, node: usize| {
        for x in [node, match_of[node]] {
            next[prev[x]] = next[x];
            if next[x] != NONE {
                prev[next[x]] = prev[x];
            }
        }
    };
    let unlift = |prev: &mut Vec<usize>, next: &mut Vec<usize>, node: usize| {
        for x in [match_of[node], node] {
            next[prev[x]] = x;
            if next[x] != NONE {
                prev[next[x]] = x;
            }
        }
    };

    let started = Instant::now();
    let mut state: Vec<M::State> = vec![model.init()];
    let mut linearized = Bitset::new(n);
    let mut cache: HashSet<(Vec<u64>, Vec<M::State>)> = HashSet::new();
    let mut stack: Vec<(usize, Vec<M::State>)> = Vec::new();
    let mut deepest: Option<(usize, Vec<usize>)> = None;
    let mut deepest_len = 0usize;
    let mut entry = next[0];
    let mut steps: u64 = 0;
    // Operations with a known completion still to linearize. Those with an
    // unknown one can always go last, so the search is done without them.
    let mut remaining = entries.iter().filter(|e| e.ret.is_some()).count();
    let unknown: Vec<usize> = (0..n).filter(|&i| entries[i].ret.is_none()).collect();
    while remaining > 0 {
        steps += 1;
        if steps.is_multiple_of(4096) && started.elapsed() > budget {
            return Verdict::Unknown;
        }
        if is_call[entry] {
            let op = op_of[entry];
            let mut successors: Vec<M::State> = state
                .iter()
                .flat_map(|s| model.step(s, &entries[op].op))
                .collect();
            successors.sort();
            successors.dedup();
            // An unknown-outcome operation that changes nothing now is left
            // for later: linearizing it here reaches nothing that waiting
            // does not, and trying it would double the search per such op.
            let idle = entries[op].ret.is_none() && successors == state;
            if !successors.is_empty() && !idle {
                linearized.set(op);
                let mut key = linearized.0.clone();
                for &i in &unknown {
                    if key[i / 64] & (1 << (i % 64)) == 0
                        && model.inert(&successors, &entries[i].op)
                    {
                        key[i / 64] |= 1 << (i % 64);
                    }
                }
                if cache.insert((key, successors.clone())) {
                    stack.push((entry, std::mem::replace(&mut state, successors)));
                    lift(&mut prev, &mut next, entry);
                    if entries[op].ret.is_some() {
                        remaining -= 1;
                    }
                    entry = next[0];
                    continue;
                }
                linearized.clear(op);
            }
            entry = next[entry];
        } else {
            if deepest.is_none() || stack.len() > deepest_len {
                deepest_len = stack.len();
                let tail = stack
                    .iter()
                    .rev()
                    .take(6)
                    .rev()
                    .map(|(node, _)| entries[op_of[*node]].id)
                    .collect();
                deepest = Some((entries[op_of[entry]].id, tail));
            }
            let Some((top, old)) = stack.pop() else {
                let (stuck, prefix) = deepest.unwrap_or((entries[op_of[entry]].id, Vec::new()));
                return Verdict::NotLinearizable { stuck, prefix };
            };
            state = old;
            linearized.clear(op_of[top]);
            unlift(&mut prev, &mut next, top);
            if entries[op_of[top]].ret.is_some() {
                remaining += 1;
            }
            entry = next[top];
        }
    }
    Verdict::Linearizable
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register holding a u64 (0 = never written).
    struct Reg;
    #[derive(Debug)]
    enum RegOp {
        W(u64),
        R(u64),
    }
    impl Model for Reg {
        type Op = RegOp;
        type State = u64;
        fn init(&self) -> u64 {
            0
        }
        fn step(&self, s: &u64, op: &RegOp) -> Vec<u64> {
            match op {
                RegOp::W(v) => vec![*v],
                RegOp::R(v) if v == s => vec![*s],
                RegOp::R(_) => vec![],
            }
        }
    }

    fn e(id: usize, op: RegOp, call: u64, ret: Option<u64>) -> Entry<RegOp> {
        Entry { op, id, call, ret }
    }

    #[test]
    fn concurrent_write_and_read_linearize_either_way() {
        let h = [
            e(0, RegOp::W(1), 0, Some(10)),
            e(1, RegOp::R(1), 1, Some(5)),
            e(2, RegOp::R(0), 2, Some(4)),
        ];
        assert_eq!(
            check(&Reg, &h, Duration::from_secs(1)),
            Verdict::Linearizable
        );
    }

    #[test]
    fn a_read_after_a_read_of_the_new_value_may_not_see_the_old() {
        let h = [
            e(0, RegOp::W(1), 0, Some(10)),
            e(1, RegOp::R(1), 1, Some(2)),
            e(2, RegOp::R(0), 3, Some(4)),
        ];
        assert!(matches!(
            check(&Reg, &h, Duration::from_secs(1)),
            Verdict::NotLinearizable { stuck: 2, .. }
        ));
    }

    #[test]
    fn info_writes_may_land_late_or_never() {
        let h = [
            e(0, RegOp::W(1), 0, None),
            e(1, RegOp::R(0), 5, Some(6)),
            e(2, RegOp::R(1), 7, Some(8)),
        ];
        assert_eq!(
            check(&Reg, &h, Duration::from_secs(1)),
            Verdict::Linearizable
        );
        let h = [e(0, RegOp::W(1), 0, None), e(1, RegOp::R(0), 5, Some(6))];
        assert_eq!(
            check(&Reg, &h, Duration::from_secs(1)),
            Verdict::Linearizable
        );
    }
}
