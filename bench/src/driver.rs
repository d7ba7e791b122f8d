//! The closed-loop load driver: `concurrency` tasks, each with its own
//! seeded random generator and histogram, each sending one request at a time
//! for a warm-up and then a measured window. Keys are uniform over
//! `0..keys`; worker `w` seeds its generator with `seed + w`, so a run is the
//! same key sequence for both systems.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::stats::{Latencies, Summary};
use crate::target::{Op, Target};

/// What a workload sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// Only writes.
    Writes,
    /// Only linearizable single reads.
    Reads,
    /// Only batch reads of this many distinct keys.
    BatchReads(usize),
    /// Reads with this percentage, writes otherwise.
    Mixed {
        /// Percentage of reads, 0..=100.
        read_percent: u32,
    },
}

impl Mix {
    /// The next operation.
    pub fn next(&self, rng: &mut StdRng, keys: u64) -> Op {
        let keys = keys.max(1);
        match *self {
            Mix::Writes => Op::Write(rng.random_range(0..keys)),
            Mix::Reads => Op::Read(rng.random_range(0..keys)),
            Mix::BatchReads(n) => {
                let n = n.min(usize::try_from(keys).unwrap_or(usize::MAX));
                let mut picked = Vec::with_capacity(n);
                while picked.len() < n {
                    let k = rng.random_range(0..keys);
                    if !picked.contains(&k) {
                        picked.push(k);
                    }
                }
                Op::BatchRead(picked)
            }
            Mix::Mixed { read_percent } => {
                let k = rng.random_range(0..keys);
                if rng.random_range(0..100) < read_percent {
                    Op::Read(k)
                } else {
                    Op::Write(k)
                }
            }
        }
    }
}

/// One timed run.
#[derive(Debug, Clone)]
pub struct Load {
    /// Requests in flight (worker tasks).
    pub concurrency: usize,
    /// Run but do not measure for this long first.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// What to send.
    pub mix: Mix,
    /// Keys are uniform over `0..keys`.
    pub keys: u64,
    /// Seed of worker 0; worker `w` uses `seed + w`.
    pub seed: u64,
    /// Keep the time of every successful write (for fail-over gaps).
    pub record_acks: bool,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Throughput and latency over the measured window.
    pub summary: Summary,
    /// Times of successful writes over the whole run (warm-up included),
    /// when asked for.
    pub acks: Vec<Instant>,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
    /// When the measured window began.
    pub measure_from: Instant,
}

struct WorkerResult {
    latencies: Latencies,
    errors: u64,
    acks: Vec<Instant>,
    first_error: Option<String>,
}

/// Runs `load` against `target`.
pub async fn run(target: Arc<Target>, load: &Load) -> Outcome {
    let start = Instant::now();
    let measure_from = start + load.warmup;
    let end = measure_from + load.duration;
    let connections = target.connections();
    let mut tasks = Vec::with_capacity(load.concurrency);
    for worker in 0..load.concurrency.max(1) {
        let target = target.clone();
        let load = load.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(load.seed.wrapping_add(worker as u64));
            let mut out = WorkerResult {
                latencies: Latencies::new(),
                errors: 0,
                acks: Vec::new(),
                first_error: None,
            };
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let op = load.mix.next(&mut rng, load.keys);
                let result = target.execute(worker % connections, &op).await;
                let done = Instant::now();
                match result {
                    Ok(()) => {
                        if sent >= measure_from {
                            out.latencies.record(done - sent);
                        }
                        if load.record_acks && matches!(op, Op::Write(_)) {
                            out.acks.push(done);
                        }
                    }
                    Err(e) => {
                        if sent >= measure_from {
                            out.errors += 1;
                        }
                        if out.first_error.is_none() {
                            out.first_error = Some(format!("{e:#}"));
                        }
                        // A node is down or electing: do not spin on it.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            out
        }));
    }
    let mut latencies = Latencies::new();
    let mut errors = 0;
    let mut acks = Vec::new();
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(w) => {
                latencies.merge(&w.latencies);
                errors += w.errors;
                acks.extend(w.acks);
                first_error = first_error.or(w.first_error);
            }
            Err(e) => first_error = first_error.or(Some(format!("worker task failed: {e}"))),
        }
    }
    Outcome {
        summary: Summary::new(&latencies, errors, load.duration),
        acks,
        first_error,
        measure_from,
    }
}

/// What [`fill`] did.
#[derive(Debug, Clone, Default)]
pub struct Filled {
    /// Keys written (successfully or not).
    pub done: u64,
    /// Failed writes.
    pub errors: u64,
    /// The first error.
    pub first_error: Option<String>,
    /// Whether the time limit stopped it before every key was written.
    pub timed_out: bool,
}

/// Writes every key of `0..keys` once through `concurrency` workers (a
/// shared counter hands out keys), calling `progress(done)` about every
/// five seconds. Workers take no new key after `limit`, if given.
pub async fn fill(
    target: Arc<Target>,
    keys: u64,
    concurrency: usize,
    limit: Option<Duration>,
    mut progress: impl FnMut(u64),
) -> Filled {
    let deadline = limit.map(|l| Instant::now() + l);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let connections = target.connections();
    let mut tasks = Vec::with_capacity(concurrency);
    for worker in 0..concurrency.max(1) {
        let target = target.clone();
        let next = next.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut errors = 0u64;
            let mut first_error = None;
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= keys {
                    break;
                }
                if let Err(e) = target.execute(worker % connections, &Op::Write(k)).await {
                    errors += 1;
                    first_error.get_or_insert_with(|| format!("{e:#}"));
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (errors, first_error)
        }));
    }
    let all = futures::future::join_all(tasks);
    tokio::pin!(all);
    let results = loop {
        tokio::select! {
            results = &mut all => break results,
            () = tokio::time::sleep(Duration::from_secs(5)) => progress(done.load(Ordering::Relaxed)),
        }
    };
    let mut filled = Filled {
        done: done.load(Ordering::Relaxed),
        ..Filled::default()
    };
    filled.timed_out = filled.done < keys;
    for result in results {
        match result {
            Ok((e, first)) => {
                filled.errors += e;
                filled.first_error = filled.first_error.or(first);
            }
            Err(e) => {
                filled.first_error = filled
                    .first_error
                    .or(Some(format!("worker task failed: {e}")))
            }
        }
    }
    filled
}
