//! `herald-jepsen`: Herald's chaos suite. See `jepsen-like/README.md`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use herald_harness::duration::parse_duration;
use herald_jepsen::checker;
use herald_jepsen::cluster::locate_node_binary;
use herald_jepsen::history::{fault_windows, pair, read_jsonl};
use herald_jepsen::nemesis::{Fault, parse_group};
use herald_jepsen::report::{self, Summary};
use herald_jepsen::run::{RunOptions, Schedule, docker_faults, run};
use herald_jepsen::soak::{SoakOptions, soak, table};
use herald_jepsen::workload::Workload;

#[derive(Parser)]
#[command(name = "herald-jepsen", about = "Chaos and partition tests for Herald")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every fault once, briefly, on 3 nodes, all workloads, fixed seed.
    Smoke {
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Random faults from the chosen groups for a while.
    Run {
        /// Workload time, e.g. 60s.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        duration: Duration,
        /// Founding nodes.
        #[arg(long, default_value_t = 5)]
        nodes: u32,
        /// partition, kill, pause, clock, membership, disk, or single fault names.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "partition,kill,pause,clock,membership"
        )]
        nemesis: Vec<String>,
        /// register, pool, session, ttl, link, share.
        #[arg(long, value_delimiter = ',', default_value = "register,pool,session")]
        workload: Vec<Workload>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How long each fault is held (randomized ±50%).
        #[arg(long, default_value = "4s", value_parser = parse_duration)]
        hold: Duration,
        /// Quiet time before each fault (randomized ±50%).
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        gap: Duration,
        #[command(flatten)]
        common: Common,
    },
    /// Many seeded runs back to back, each with a random mix of faults; a
    /// table of verdicts (also in <out>/soak.md); the first invalid run's
    /// directory is kept. Exits 1 when any run is not valid.
    Soak {
        /// How many runs.
        #[arg(long, default_value_t = 10)]
        runs: u32,
        /// The first run's seed (run k uses seed + k).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Workload time of each run.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        duration: Duration,
        /// Founding nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// How long each fault is held (randomized ±50%).
        #[arg(long, default_value = "3s", value_parser = parse_duration)]
        hold: Duration,
        /// Quiet time before each fault (randomized ±50%).
        #[arg(long, default_value = "1500ms", value_parser = parse_duration)]
        gap: Duration,
        #[command(flatten)]
        common: Common,
    },
    /// Re-check a recorded history.jsonl.
    Check {
        history: PathBuf,
        /// Search time allowed per key.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        budget: Duration,
        /// Only check this workload.
        #[arg(long)]
        workload: Option<String>,
    },
    /// Follower clock offsets from the leader under write load, through
    /// every node's SNTP answers (p50/p99/max per follower). With
    /// --baseline-bin, a second cluster of that binary runs side by side.
    ClockOffsets {
        /// The herald-node binary measured.
        #[arg(long)]
        node_bin: Option<PathBuf>,
        /// Another herald-node binary (e.g. built from main) run at the same time.
        #[arg(long)]
        baseline_bin: Option<PathBuf>,
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        duration: Duration,
        /// Concurrent login clients per cluster (the bench's write-c64).
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// SNTP probe period.
        #[arg(long, default_value = "100ms", value_parser = parse_duration)]
        interval: Duration,
        /// Ticks this soon after the start or a leader change are left out.
        #[arg(long, default_value = "3s", value_parser = parse_duration)]
        settle: Duration,
    },
    /// Time the checker on a synthetic register history.
    BenchChecker {
        #[arg(long, default_value_t = 10_000)]
        ops: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[derive(clap::Args)]
struct Common {
    /// Output directory (default jepsen-runs/<command>-seed<N>-<unix time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The herald-node binary (default: $HERALD_NODE_BIN, then next to this one).
    #[arg(long)]
    node_bin: Option<PathBuf>,
    /// Start these node ids with `[testing] stale_reads = true` (proves the checker).
    #[arg(long, value_delimiter = ',')]
    stale_reads: Vec<u64>,
    /// Run the nodes in containers of the herald:local image
    /// (deploy/docker/build-images) on a bridge network and cut links with
    /// iptables in their network namespaces, not the loopback proxy; kills
    /// are `docker kill`. Partition, kill, pause, clock and membership
    /// faults only. Skipped, saying why, where Docker is not usable.
    #[arg(long)]
    docker: bool,
}

/// The node binary, unless the nodes run in containers.
fn node_bin(common: &Common) -> Result<PathBuf> {
    if common.docker {
        return Ok(PathBuf::new());
    }
    locate_node_binary(common.node_bin.clone())
}

fn out_dir(common: &Common, name: &str, seed: u64) -> PathBuf {
    common.out.clone().unwrap_or_else(|| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        PathBuf::from(format!("jepsen-runs/{name}-seed{seed}-{now}"))
    })
}

fn finish(summary: &Summary, out: &std::path::Path) -> ExitCode {
    println!("{}", report::verdict_table(summary));
    for a in &summary.check.anomalies {
        println!("  {} [{} {}]: {}", a.kind, a.workload, a.key, a.message);
    }
    println!("output: {}", out.display());
    if summary.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

async fn main_inner(args: Args) -> Result<ExitCode> {
    let opts = match args.command {
        Cmd::Check {
            history,
            budget,
            workload,
        } => {
            let events = read_jsonl(&history)?;
            let mut ops = pair(&events);
            if let Some(w) = workload {
                ops.retain(|o| o.workload == w);
                for (i, o) in ops.iter_mut().enumerate() {
                    o.id = i;
                }
            }
            let check = checker::check(&ops, budget);
            let summary = Summary {
                valid: check.valid,
                seed: 0,
                nodes: 0,
                workloads: ops
                    .iter()
                    .map(|o| o.workload.clone())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect(),
                nemeses: Vec::new(),
                faults: fault_windows(&events),
                unread_keys: Vec::new(),
                check,
                wall_ms: 0,
                check_ms: 0,
            };
            return Ok(finish(&summary, &history));
        }
        Cmd::ClockOffsets {
            node_bin,
            baseline_bin,
            duration,
            concurrency,
            interval,
            settle,
        } => {
            use herald_jepsen::clockprobe::{ProbeOptions, load_average, measure, table};
            let opts = |label: &str, node_bin| ProbeOptions {
                label: label.into(),
                node_bin,
                duration,
                concurrency,
                interval,
                settle,
            };
            let new = opts("new", locate_node_binary(node_bin)?);
            let load_before = load_average();
            let reports = match baseline_bin {
                Some(b) => {
                    let base = opts("baseline", b);
                    let (a, b) = tokio::join!(measure(&base), measure(&new));
                    vec![a?, b?]
                }
                None => vec![measure(&new).await?],
            };
            println!(
                "clock offsets under write load ({concurrency} login clients per cluster, \
                 {duration:?}, probe every {interval:?}); load average {load_before} before, {} after",
                load_average()
            );
            println!("{}", table(&reports));
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::BenchChecker { ops, seed } => {
            for corrupt in [false, true] {
                let (report, took) = herald_jepsen::bench::run(ops, seed, corrupt);
                println!(
                    "{} ops over {} keys{}: {} in {:.2?}",
                    report.ops,
                    report.keys,
                    if corrupt {
                        ", one stale read planted"
                    } else {
                        ""
                    },
                    if report.valid {
                        "linearizable".to_string()
                    } else {
                        format!("NOT linearizable {:?}", report.kinds())
                    },
                    took
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Soak {
            runs,
            seed,
            duration,
            nodes,
            hold,
            gap,
            common,
        } => {
            if !(1..=9).contains(&nodes) {
                bail!("--nodes must be between 1 and 9");
            }
            let opts = SoakOptions {
                runs,
                seed,
                duration,
                nodes,
                hold,
                gap,
                out: out_dir(&common, "soak", seed),
                node_bin: {
                    if common.docker {
                        bail!("--docker is for run and smoke (a soak mixes in the disk faults)");
                    }
                    locate_node_binary(common.node_bin.clone())?
                },
            };
            println!(
                "soak: {runs} runs from seed {seed}, {duration:?} each, {nodes} nodes, output {}",
                opts.out.display()
            );
            let (rows, kept) = tokio::select! {
                r = soak(&opts) => r?,
                _ = tokio::signal::ctrl_c() => bail!("interrupted; nodes killed"),
            };
            println!("\n{}", table(&rows, kept.as_deref()));
            println!("table: {}", opts.out.join("soak.md").display());
            return Ok(if rows.iter().any(|r| r.failed) {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            });
        }
        Cmd::Smoke { seed, common } => RunOptions {
            nodes: 3,
            duration: Duration::ZERO,
            faults: if common.docker {
                docker_faults()
            } else {
                Fault::ALL.to_vec()
            },
            workloads: vec![
                Workload::Register,
                Workload::Pool,
                Workload::Session,
                Workload::Ttl,
            ],
            seed,
            out: out_dir(&common, "smoke", seed),
            node_bin: node_bin(&common)?,
            schedule: Schedule::EachOnce,
            hold: Duration::from_secs(3),
            gap: Duration::from_millis(1500),
            stale_reads: common.stale_reads.clone(),
            docker: common.docker,
        },
        Cmd::Run {
            duration,
            nodes,
            nemesis,
            workload,
            seed,
            hold,
            gap,
            common,
        } => {
            if !(1..=9).contains(&nodes) {
                bail!("--nodes must be between 1 and 9");
            }
            let mut faults = Vec::new();
            for name in &nemesis {
                for f in parse_group(name)? {
                    if !faults.contains(&f) {
                        faults.push(f);
                    }
                }
            }
            RunOptions {
                nodes,
                duration,
                faults,
                workloads: workload,
                seed,
                out: out_dir(&common, "run", seed),
                node_bin: node_bin(&common)?,
                schedule: Schedule::Random,
                hold,
                gap,
                stale_reads: common.stale_reads.clone(),
                docker: common.docker,
            }
        }
    };
    if opts.docker
        && let Some(why) = herald_jepsen::docker::unavailable()
    {
        println!("SKIPPED: --docker: {why}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "nodes {}, faults {:?}, workloads {:?}, seed {}, output {}",
        opts.nodes,
        opts.faults.iter().map(|f| f.name()).collect::<Vec<_>>(),
        opts.workloads,
        opts.seed,
        opts.out.display()
    );
    // Ctrl-C drops the run, and with it the cluster, which kills the nodes.
    let summary = tokio::select! {
        s = run(&opts) => s?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted; nodes killed"),
    };
    Ok(finish(&summary, &opts.out))
}

#[tokio::main]
async fn main() -> ExitCode {
    match main_inner(Args::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::from(2)
        }
    }
}
