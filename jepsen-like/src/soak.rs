//! `herald-jepsen soak`: many seeded runs back to back, each with its own
//! random mix of faults, and one table of verdicts.
//!
//! Run `k` (from 0) uses seed `S + k`; the seed picks the mix (two to five
//! faults from every fault there is) and drives the run, so
//! `herald-jepsen run --seed S+k --nemesis <its faults>` with the same
//! timings replays it. The table goes to stdout and to `soak.md` in the
//! output directory. Run directories are removed once checked, except the
//! first invalid (or failed) run's, which is kept for its history, logs
//! and plots; the others leave their `summary-seed<N>.json`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::nemesis::Fault;
use crate::run::{RunOptions, Schedule, run};
use crate::workload::Workload;

/// What to soak.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// How many runs.
    pub runs: u32,
    /// The first run's seed.
    pub seed: u64,
    /// Workload time of each run.
    pub duration: Duration,
    /// Founding nodes.
    pub nodes: u32,
    /// Fault hold and gap (randomized ±50%, as in `run`).
    pub hold: Duration,
    /// See `hold`.
    pub gap: Duration,
    /// The output directory.
    pub out: PathBuf,
    /// The `herald-node` binary.
    pub node_bin: PathBuf,
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// Its seed.
    pub seed: u64,
    /// The faults it enabled.
    pub faults: Vec<Fault>,
    /// Faults that happened (nemesis windows).
    pub injected: usize,
    /// Client operations recorded.
    pub ops: u64,
    /// `valid`, `INVALID (kinds)`, or `ERROR: why`.
    pub verdict: String,
    /// The checker's time.
    pub check_ms: u64,
    /// The whole run's time.
    pub wall_ms: u64,
    /// Whether it counts as a failure.
    pub failed: bool,
}

/// The fault mix of seed `seed`: two to five distinct faults.
pub fn mix(seed: u64) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_50a4);
    let mut all = Fault::ALL.to_vec();
    all.shuffle(&mut rng);
    let n = rng.random_range(2..=5);
    let mut chosen: Vec<Fault> = all.into_iter().take(n).collect();
    chosen.sort();
    chosen
}

/// Runs the soak; returns the rows and the kept directory, if any.
pub async fn soak(opts: &SoakOptions) -> Result<(Vec<Row>, Option<PathBuf>)> {
    std::fs::create_dir_all(&opts.out)?;
    let mut rows = Vec::new();
    let mut kept: Option<PathBuf> = None;
    for k in 0..opts.runs {
        let seed = opts.seed + u64::from(k);
        let faults = mix(seed);
        let dir = opts.out.join(format!("run-seed{seed}"));
        let run_opts = RunOptions {
            nodes: opts.nodes,
            duration: opts.duration,
            faults: faults.clone(),
            workloads: vec![Workload::Register, Workload::Pool, Workload::Session],
            seed,
            out: dir.clone(),
            node_bin: opts.node_bin.clone(),
            schedule: Schedule::Random,
            hold: opts.hold,
            gap: opts.gap,
            stale_reads: Vec::new(),
            docker: false,
        };
        println!(
            "soak {}/{}: seed {seed}, faults {}",
            k + 1,
            opts.runs,
            names(&faults)
        );
        let row = match run(&run_opts).await {
            Ok(s) => {
                let mut kinds: Vec<String> =
                    s.check.anomalies.iter().map(|a| a.kind.clone()).collect();
                kinds.dedup();
                let verdict = if s.valid {
                    "valid".to_string()
                } else if !kinds.is_empty() {
                    format!("INVALID ({})", kinds.join(", "))
                } else if !s.unread_keys.is_empty() {
                    format!("INVALID ({} keys unread)", s.unread_keys.len())
                } else {
                    "UNKNOWN (search timed out)".to_string()
                };
                Row {
                    seed,
                    faults,
                    injected: s.faults.len(),
                    ops: s
                        .check
                        .counts
                        .values()
                        .map(|c| c.ok + c.fail + c.info)
                        .sum(),
                    verdict,
                    check_ms: s.check_ms,
                    wall_ms: s.wall_ms,
                    failed: !s.valid,
                }
            }
            Err(e) => Row {
                seed,
                faults,
                injected: 0,
                ops: 0,
                verdict: format!("ERROR: {e:#}"),
                check_ms: 0,
                wall_ms: 0,
                failed: true,
            },
        };
        println!("  {}", row.verdict);
        if row.failed && kept.is_none() {
            kept = Some(dir);
        } else {
            // The summary (what each fault did) outlives the directory.
            let _ = std::fs::copy(
                dir.join("summary.json"),
                opts.out.join(format!("summary-seed{seed}.json")),
            );
            let _ = std::fs::remove_dir_all(&dir);
        }
        rows.push(row);
        std::fs::write(opts.out.join("soak.md"), table(&rows, kept.as_deref()))?;
    }
    Ok((rows, kept))
}

fn names(faults: &[Fault]) -> String {
    faults
        .iter()
        .map(|f| f.name())
        .collect::<Vec<_>>()
        .join(",")
}

/// The table, in Markdown, with a totals line.
pub fn table(rows: &[Row], kept: Option<&Path>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| seed | faults enabled | faults injected | ops | verdict | check time | run time |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.1} s | {:.0} s |",
            r.seed,
            names(&r.faults),
            r.injected,
            r.ops,
            r.verdict.replace('|', "/"),
            r.check_ms as f64 / 1000.0,
            r.wall_ms as f64 / 1000.0
        );
    }
    let failed = rows.iter().filter(|r| r.failed).count();
    let _ = writeln!(
        out,
        "\n{} runs, {} operations, {} faults injected, {} invalid or failed{}",
        rows.len(),
        rows.iter().map(|r| r.ops).sum::<u64>(),
        rows.iter().map(|r| r.injected).sum::<usize>(),
        failed,
        kept.map(|d| format!("; first kept: {}", d.display()))
            .unwrap_or_default()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_are_seeded_and_sized() {
        for seed in 0..50 {
            let m = mix(seed);
            assert_eq!(m, mix(seed), "same seed, same mix");
            assert!((2..=5).contains(&m.len()), "{m:?}");
            let mut d = m.clone();
            d.dedup();
            assert_eq!(d, m, "distinct faults");
        }
        assert_ne!(mix(1), mix(2));
    }
}
