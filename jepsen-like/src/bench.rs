//! Synthetic histories for measuring the checker: a register history that
//! is linearizable by construction (every operation takes effect at a random
//! point inside its interval), optionally with one read corrupted.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::checker::{self, Report};
use crate::history::{Op, Outcome};

/// `ops` register operations by `processes` concurrent processes over `keys`
/// keys; 2% of writes end `info`. With `corrupt`, one late read returns a
/// value overwritten long before (a stale read).
pub fn register_history(
    ops: usize,
    processes: u64,
    keys: usize,
    seed: u64,
    corrupt: bool,
) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut clock = vec![0u64; processes as usize];
    // (linearization point, op) before values are known.
    let mut planned: Vec<(u64, Op)> = Vec::with_capacity(ops);
    for id in 0..ops {
        let p = rng.random_range(0..processes);
        let start = clock[p as usize] + rng.random_range(1..20);
        let end = start + rng.random_range(1..60);
        clock[p as usize] = end;
        let at = rng.random_range(start..=end);
        let write = rng.random_bool(0.5);
        let info = write && rng.random_bool(0.02);
        planned.push((
            at,
            Op {
                id,
                process: p + 1,
                workload: "register".into(),
                f: if write { "write" } else { "read" }.into(),
                key: format!("reg-{}", rng.random_range(0..keys)),
                input: if write {
                    json!({"v": id + 1})
                } else {
                    json!({"final": false})
                },
                output: json!(null),
                outcome: if info { Outcome::Info } else { Outcome::Ok },
                error: None,
                invoke_ns: start * 1000,
                complete_ns: (!info).then_some(end * 1000),
                answered_ns: Some(end * 1000),
            },
        ));
    }
    // An info op leaves its process free at once: nothing after it waits.
    let mut order: Vec<usize> = (0..planned.len()).collect();
    order.sort_by_key(|&i| planned[i].0);
    let mut values: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for i in order {
        let op = &mut planned[i].1;
        let current = values.entry(op.key.clone()).or_insert(0);
        if op.f == "write" {
            *current = op.input["v"].as_u64().unwrap_or(0);
            op.output = json!({"v": *current, "revision": 0});
        } else {
            op.output = json!({"v": *current, "revision": 0});
        }
    }
    let mut history: Vec<Op> = planned.into_iter().map(|(_, op)| op).collect();
    if corrupt {
        // The last read of a key that was written at least twice before it
        // returns the first value written: stale.
        let target = (0..history.len()).rev().find_map(|i| {
            let op = &history[i];
            if op.f != "read" {
                return None;
            }
            let writes: Vec<&Op> = history
                .iter()
                .filter(|w| {
                    w.f == "write"
                        && w.key == op.key
                        && w.outcome == Outcome::Ok
                        && w.complete_ns < Some(op.invoke_ns)
                })
                .collect();
            (writes.len() >= 2 && writes[0].output != op.output)
                .then(|| (i, writes[0].output.clone()))
        });
        if let Some((i, stale)) = target {
            history[i].output = stale;
        }
    }
    history
}

/// Checks a synthetic history and returns the report and the wall time.
pub fn run(ops: usize, seed: u64, corrupt: bool) -> (Report, Duration) {
    let history = register_history(ops, 10, 8, seed, corrupt);
    let started = Instant::now();
    let report = checker::check(&history, Duration::from_secs(120));
    (report, started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_histories_are_valid_until_corrupted() {
        let (report, _) = run(2000, 7, false);
        assert!(report.valid, "{:?}", report.kinds());
        let (report, _) = run(2000, 7, true);
        assert!(!report.valid);
        assert_eq!(
            report.kinds().into_keys().collect::<Vec<_>>(),
            ["not-linearizable"]
        );
    }
}
