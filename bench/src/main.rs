//! `herald-bench`: Herald against a 3-node etcd 3.4 on the same machine,
//! same load and same durability, one system at a time.
//!
//! For each system: start a fresh 3-node cluster on loopback, write every
//! key once, run each workload for a warm-up and a measured window, kill -9
//! the leader under write load a few times, stop. Then issue 20's linked
//! catalogs (`herald_bench::link`) on a fresh cluster of each system: load
//! N items, measure count updates per second and top-20 lookup latency
//! (etcd: read-modify-write txns, and a range read sorted client-side).
//! Then, for Herald only, load many presence records into a fresh cluster
//! and restart it. Results
//! go to `results/<timestamp>/` (markdown, JSON, SVG) and the table to
//! stdout; progress goes to stderr.
//!
//! Security (`--tls`, default `both`): the workloads run on plaintext
//! clusters and again on secure ones, rows suffixed `+tls`: Herald as the
//! playground starts it (TLS on every port, client certificates, auth on),
//! etcd with TLS and client-certificate auth on its client and peer ports.
//! Fail-over and the memory test run once, on the first mode.
//!
//! `herald-bench overload` is issue 17's overload test instead (see
//! `herald_bench::overload`): idle connections, watch streams, logins at
//! twice the measured maximum and the largest valid requests, on Herald
//! and etcd with TLS, side by side; results in `overload.md` and
//! `overload.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use herald_bench::driver::{self, Load, Mix};
use herald_bench::etcd::{self, EtcdCluster};
use herald_bench::herald::HeraldCluster;
use herald_bench::link::{self, LinkPlan};
use herald_bench::overload::report::{OverloadReport, overload_markdown};
use herald_bench::overload::{self, OverloadPlan, Setup};
use herald_bench::procfs;
use herald_bench::report::{self, ETCD, Failover, HERALD, MemoryRestart, Report, RunResult};
use herald_bench::stats::{longest_gap_after, median};
use herald_bench::target::Target;
use herald_harness::duration::parse_duration;
use tokio::time::Instant;

/// Herald vs a 3-node etcd on this machine: throughput, latency, CPU,
/// memory, fail-over and restart.
#[derive(Debug, Parser)]
#[command(name = "herald-bench", version)]
struct Args {
    /// Another test instead of the suite.
    #[command(subcommand)]
    command: Option<Command>,
    /// A quick run for CI: short windows, few keys, one kill, 10 k records
    /// (overload: 200 idle connections, 50 watches, 5 s open loop).
    #[arg(long, global = true)]
    tiny: bool,
    /// Where results go [default: results/<UTC timestamp>, overload:
    /// results/overload-<UTC timestamp>].
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// Measured window of each workload [default: 10s, --tiny 2s]; for
    /// `overload`, the open-loop window [default: 30s, --tiny 5s].
    #[arg(long, global = true, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Warm-up before each measured window [default: 2s, --tiny 1s].
    #[arg(long, value_parser = parse_duration)]
    warmup: Option<Duration>,
    /// Keys (uids) the workloads pick from, uniformly [default: 10000,
    /// --tiny 1000]. Every key is written once before the workloads.
    #[arg(long)]
    keys: Option<u64>,
    /// Client connections per system (at most one per request in flight).
    #[arg(long, global = true, default_value_t = 8)]
    connections: usize,
    /// Seed of the key sequences (the same for both systems).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Leader kills per system [default: 3, --tiny 1].
    #[arg(long)]
    kills: Option<usize>,
    /// Presence records for the memory and restart test [default: 1000000,
    /// --tiny 10000].
    #[arg(long)]
    records: Option<u64>,
    /// Time limit of the memory test's load; it reports what got loaded.
    #[arg(long, value_parser = parse_duration, default_value = "5m")]
    load_limit: Duration,
    /// The herald-node binary [default: next to this executable].
    #[arg(long, global = true)]
    node_bin: Option<PathBuf>,
    /// The etcd binary [default: `etcd` on PATH, installed with apt if
    /// missing].
    #[arg(long, global = true)]
    etcd_bin: Option<PathBuf>,
    /// Do not run etcd (and do not install it): Herald's figures only.
    #[arg(long, global = true)]
    skip_etcd: bool,
    /// Skip the fail-over test.
    #[arg(long)]
    skip_failover: bool,
    /// Herald's client sends every call as its own unary RPC instead of
    /// coalescing the calls issued together to one node into one `Batch`
    /// round trip (herald_client's default; etcd-client has no such mode).
    #[arg(long)]
    no_coalesce: bool,
    /// Skip the memory and restart test.
    #[arg(long)]
    skip_memory: bool,
    /// Only these workloads (comma-separated names, e.g. write-c16,read-c64;
    /// `link` for the linked-catalog scenario).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Skip the linked-catalog scenario (issue 20).
    #[arg(long)]
    skip_link: bool,
    /// Shop items of the linked-catalog scenario, on each system
    /// [default: 1000000, --tiny 2000].
    #[arg(long)]
    link_items: Option<u64>,
    /// Top-20 lookups the linked-catalog scenario measures at least, past
    /// its window if need be [default: 20, --tiny 5].
    #[arg(long)]
    link_min_lookups: Option<u64>,
    /// Where the clusters' data dirs and logs live during the run
    /// [default: $TMPDIR/herald-bench-<timestamp>]; removed afterwards
    /// unless --keep-work.
    #[arg(long, global = true)]
    work_dir: Option<PathBuf>,
    /// Keep the work dir (data and logs) after the run.
    #[arg(long, global = true)]
    keep_work: bool,
    /// Base port of the Herald cluster (clients on base+101..).
    #[arg(long, global = true, default_value_t = 27100)]
    herald_base_port: u16,
    /// First client port of the etcd cluster (member i: +10 i, peer +1).
    #[arg(long, global = true, default_value_t = 42379)]
    etcd_base_port: u16,
    /// Plaintext clusters, secure ones (TLS and client certificates on
    /// both systems), or both, the secure rows suffixed `+tls`.
    #[arg(long, value_enum, default_value_t = Security::Both)]
    tls: Security,
}

/// Tests other than the suite.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Issue 17's overload test: a 3-node Herald and a 3-node etcd, both
    /// with TLS, one after the other, each given idle connections, watch
    /// streams, logins at twice its measured maximum rate and its largest
    /// valid requests; elections, RSS, refusals, latency and a read-back
    /// of every acknowledged write, side by side.
    Overload(OverloadArgs),
}

/// Options of `herald-bench overload` (the shared ones are above).
#[derive(Debug, clap::Args)]
struct OverloadArgs {
    /// Idle connections per system, spread over the 3 nodes [default:
    /// 10000, --tiny 200].
    #[arg(long)]
    idle: Option<usize>,
    /// Watch streams per system, 100 per connection [default: 2000,
    /// --tiny 50].
    #[arg(long)]
    watches: Option<usize>,
    /// The closed-loop measurement of the maximum login rate [default:
    /// 5s, --tiny 2s].
    #[arg(long, value_parser = parse_duration)]
    measure: Option<Duration>,
    /// Logins in flight during that measurement [default: 256, --tiny 64].
    #[arg(long)]
    concurrency: Option<usize>,
    /// The most open-loop logins in flight; past it the generator drops
    /// requests and counts them as not sent.
    #[arg(long, default_value_t = 20_000)]
    max_in_flight: usize,
    /// How long the largest requests are sent [default: 10s, --tiny 2s].
    #[arg(long, value_parser = parse_duration)]
    largest: Option<Duration>,
    /// Workers sending the largest requests (on Herald, one in four sends
    /// a `Batch` of 1000) [default: 8, --tiny 4].
    #[arg(long)]
    largest_workers: Option<usize>,
}

/// Which clusters the workloads run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Security {
    /// Plaintext, no authentication.
    Plain,
    /// TLS on every port and client certificates.
    Tls,
    /// Plaintext, then secure.
    Both,
}

/// One workload of the suite.
#[derive(Debug, Clone)]
struct Workload {
    name: &'static str,
    concurrency: usize,
    mix: Mix,
}

fn workloads() -> Vec<Workload> {
    let w = |name, concurrency, mix| Workload {
        name,
        concurrency,
        mix,
    };
    vec![
        w("write-c1", 1, Mix::Writes),
        w("write-c16", 16, Mix::Writes),
        w("write-c64", 64, Mix::Writes),
        w("write-c256", 256, Mix::Writes),
        w("read-c64", 64, Mix::Reads),
        w("batch100-c16", 16, Mix::BatchReads(100)),
        w("mixed90r-c64", 64, Mix::Mixed { read_percent: 90 }),
    ]
}

/// The settled parameters of a run.
#[derive(Debug, Clone)]
struct Plan {
    duration: Duration,
    warmup: Duration,
    keys: u64,
    connections: usize,
    seed: u64,
    kills: usize,
    records: u64,
    load_limit: Duration,
    workloads: Vec<Workload>,
    /// Herald clients coalesce calls into `Batch` round trips.
    coalesce: bool,
    /// The linked-catalog scenario, unless skipped.
    link: Option<LinkPlan>,
}

/// mimalloc: the generator runs on the servers' cores, so every cycle it
/// saves goes to whichever system is measured (both clients use it).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut args = Args::parse();
    let command = args.command.take();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async {
        tokio::select! {
            r = async {
                match command {
                    Some(Command::Overload(o)) => run_overload(&args, &o).await,
                    None => run(args).await,
                }
            } => r,
            // Dropping `run` drops the clusters, which kills their processes.
            _ = tokio::signal::ctrl_c() => bail!("interrupted; clusters stopped"),
        }
    });
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<()> {
    let now = chrono::Utc::now();
    let stamp = now.format("%Y%m%dT%H%M%SZ").to_string();
    let tiny = args.tiny;
    let all = workloads();
    for name in &args.only {
        if name != "link" && !all.iter().any(|w| w.name == name) {
            let names: Vec<&str> = all.iter().map(|w| w.name).collect();
            bail!(
                "--only {name}: no such workload (have {})",
                names.join(", ")
            );
        }
    }
    let plan = Plan {
        duration: args
            .duration
            .unwrap_or(Duration::from_secs(if tiny { 2 } else { 10 })),
        warmup: args
            .warmup
            .unwrap_or(Duration::from_secs(if tiny { 1 } else { 2 })),
        keys: args.keys.unwrap_or(if tiny { 1_000 } else { 10_000 }),
        connections: args.connections.max(1),
        seed: args.seed,
        kills: args.kills.unwrap_or(if tiny { 1 } else { 3 }),
        records: args
            .records
            .unwrap_or(if tiny { 10_000 } else { 1_000_000 }),
        load_limit: args.load_limit,
        coalesce: !args.no_coalesce,
        workloads: all
            .into_iter()
            .filter(|w| args.only.is_empty() || args.only.iter().any(|o| o == w.name))
            .collect(),
        link: (!args.skip_link && (args.only.is_empty() || args.only.iter().any(|o| o == "link")))
            .then(|| LinkPlan {
                items: args
                    .link_items
                    .unwrap_or(if tiny { 2_000 } else { 1_000_000 }),
                load_limit: args.load_limit,
                warmup: if tiny {
                    Duration::from_millis(500)
                } else {
                    args.warmup.unwrap_or(Duration::from_secs(2))
                },
                duration: if tiny {
                    Duration::from_secs(1)
                } else {
                    args.duration.unwrap_or(Duration::from_secs(10))
                },
                min_lookups: args.link_min_lookups.unwrap_or(if tiny { 5 } else { 20 }),
                connections: args.connections.max(1),
                count_concurrency: 64,
                lookup_concurrency: 1,
                seed: args.seed,
            }),
    };
    let (out, work, node_bin, etcd_bin) = prepare(&args, &stamp, "")?;

    let mut report = Report {
        started_at: now.to_rfc3339(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        ..Report::default()
    };
    let params = &mut report.parameters;
    params.insert("duration".into(), format!("{:?}", plan.duration));
    params.insert("warmup".into(), format!("{:?}", plan.warmup));
    params.insert("keys".into(), plan.keys.to_string());
    params.insert("connections".into(), plan.connections.to_string());
    params.insert("seed".into(), plan.seed.to_string());
    params.insert(
        "herald client".into(),
        if plan.coalesce {
            "coalesces calls issued together into Batch round trips (default)"
        } else {
            "one unary RPC per call (--no-coalesce)"
        }
        .into(),
    );
    params.insert("node binary".into(), node_bin.display().to_string());
    if let Some(bin) = &etcd_bin {
        params.insert("etcd binary".into(), bin.display().to_string());
    }
    params.insert(
        "machine".into(),
        format!(
            "{} CPUs, {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel()
        ),
    );
    if let Some(lp) = &plan.link {
        params.insert(
            "link scenario".into(),
            format!(
                "{} shop items all linked to one album item (a lookup ranks the whole shop); \
                 count updates: {} in flight, 1 in {} a purchase, score = selections * {} + \
                 purchases * {}; top-{} lookups: {} in flight, linearizable, at least {}; \
                 windows {:?} after {:?} of warm-up; load limit {:?}",
                lp.items,
                lp.count_concurrency,
                100 / link::PURCHASE_PERCENT,
                link::SELECTION_WEIGHT,
                link::PURCHASE_WEIGHT,
                link::TOP,
                lp.lookup_concurrency,
                lp.min_lookups,
                lp.duration,
                lp.warmup,
                lp.load_limit
            ),
        );
        params.insert(
            "link on etcd".into(),
            format!(
                "items under {} (value: counts and model); count update = get, then a txn \
                 putting the new counts and a {}<request id> marker if the item's mod_revision \
                 is unchanged and the marker absent (again on a conflict; markers are never \
                 removed); lookup = range read of the prefix in pages of {} keys at one \
                 revision, sorted client-side, first {}",
                link::ETCD_ITEMS,
                link::ETCD_REQUESTS,
                link::ETCD_PAGE,
                link::TOP
            ),
        );
    }
    params.insert(
        "etcd batch read".into(),
        "one txn of 100 gets (a single linearizable round trip)".into(),
    );

    let herald_ports: Vec<u16> = (1..=3u16)
        .flat_map(|i| [0u16, 100, 200, 300].map(|o| args.herald_base_port.saturating_add(o + i)))
        .collect();
    let etcd_ports: Vec<u16> = (0..3u16)
        .flat_map(|i| [0u16, 1].map(|o| args.etcd_base_port.saturating_add(10 * i + o)))
        .collect();
    let mut wanted = herald_ports;
    if etcd_bin.is_some() {
        wanted.extend(etcd_ports);
    }
    if let Some(port) = procfs::port_in_use(&wanted) {
        bail!(
            "port {port} on 127.0.0.1 is taken (another herald-bench or cluster running?); \
             stop it or pick other --herald-base-port / --etcd-base-port"
        );
    }

    let started = Instant::now();
    let modes: &[bool] = match args.tls {
        Security::Plain => &[false],
        Security::Tls => &[true],
        Security::Both => &[false, true],
    };
    report.parameters.insert(
        "security".into(),
        match args.tls {
            Security::Plain => "plaintext, no authentication",
            Security::Tls => "TLS and client certificates on every port (both systems)",
            Security::Both => {
                "plaintext rows, then +tls rows: TLS and client certificates on every port \
                 (both systems); fail-over and memory on plaintext"
            }
        }
        .into(),
    );
    for (m, &tls) in modes.iter().enumerate() {
        let suffix = if tls { "+tls" } else { "" };
        let failover = !args.skip_failover && m == 0;
        if plan.workloads.is_empty() && !failover {
            continue;
        }
        if let Some(bin) = &etcd_bin {
            eprintln!(
                "== etcd{suffix}: 3 members on 127.0.0.1:{}..",
                args.etcd_base_port
            );
            let mut cluster = EtcdCluster::start(
                bin,
                &work.join(format!("etcd{suffix}")),
                args.etcd_base_port,
                3,
                tls,
            )
            .await?;
            let result = bench_etcd(&mut cluster, &plan, failover, suffix, &mut report).await;
            cluster.stop().await;
            save(&out, &report)?;
            if let Err(e) = result {
                for i in 0..3 {
                    eprintln!("--- etcd{i} log tail ---\n{}", cluster.log_tail(i, 10));
                }
                return Err(e);
            }
        }
        eprintln!(
            "== herald{suffix}: 3 nodes, clients on 127.0.0.1:{}..",
            args.herald_base_port + 101
        );
        let mut cluster = HeraldCluster::start(
            &node_bin,
            &work.join(format!("herald{suffix}")),
            args.herald_base_port,
            3,
            tls,
        )
        .await?;
        let result = bench_herald(&mut cluster, &plan, failover, suffix, &mut report).await;
        cluster.stop().await;
        save(&out, &report)?;
        if let Err(e) = result {
            for id in cluster.ids() {
                eprintln!("--- node{id} log tail ---\n{}", cluster.log_tail(id, 10));
            }
            return Err(e);
        }
    }
    if let Some(lp) = &plan.link {
        eprintln!("== herald link: {} items", lp.items);
        let mut cluster = HeraldCluster::start(
            &node_bin,
            &work.join("herald-link"),
            args.herald_base_port,
            3,
            modes[0],
        )
        .await?;
        let result = link::herald(&cluster, lp).await;
        cluster.stop().await;
        match result {
            Ok(r) => report.link.push(r),
            Err(e) => {
                for id in cluster.ids() {
                    eprintln!("--- node{id} log tail ---\n{}", cluster.log_tail(id, 10));
                }
                return Err(e);
            }
        }
        save(&out, &report)?;
        if let Some(bin) = &etcd_bin {
            eprintln!("== etcd link: {} items", lp.items);
            let mut cluster = EtcdCluster::start(
                bin,
                &work.join("etcd-link"),
                args.etcd_base_port,
                3,
                modes[0],
            )
            .await?;
            let result = link::etcd(&cluster, lp).await;
            cluster.stop().await;
            match result {
                Ok(r) => report.link.push(r),
                Err(e) => {
                    for i in 0..3 {
                        eprintln!("--- etcd{i} log tail ---\n{}", cluster.log_tail(i, 10));
                    }
                    return Err(e);
                }
            }
            save(&out, &report)?;
        }
    }
    if !args.skip_memory {
        eprintln!("== herald memory and restart: {} records", plan.records);
        let mut cluster = HeraldCluster::start(
            &node_bin,
            &work.join("herald-memory"),
            args.herald_base_port,
            3,
            modes[0],
        )
        .await?;
        let result = memory_and_restart(&mut cluster, &plan).await;
        cluster.stop().await;
        match result {
            Ok(m) => report.memory = Some(m),
            Err(e) => {
                for id in cluster.ids() {
                    eprintln!("--- node{id} log tail ---\n{}", cluster.log_tail(id, 10));
                }
                return Err(e);
            }
        }
    }
    report.parameters.insert(
        "total run time".into(),
        format!("{:.0} s", started.elapsed().as_secs_f64()),
    );

    let markdown = save(&out, &report)?;
    println!("{markdown}");
    eprintln!(
        "results in {} (results.md, results.json, results.svg); {:.0} s in all",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    if args.keep_work {
        eprintln!("work dir kept: {}", work.display());
    } else if let Err(e) = std::fs::remove_dir_all(&work) {
        eprintln!("warning: removing {}: {e}", work.display());
    }
    Ok(())
}

/// `herald-bench overload`.
async fn run_overload(args: &Args, o: &OverloadArgs) -> Result<()> {
    let now = chrono::Utc::now();
    let stamp = now.format("%Y%m%dT%H%M%SZ").to_string();
    let tiny = args.tiny;
    // Thousands of client sockets: this process needs more than the usual
    // 1024. The nodes inherit what their parent has when they start, so the
    // report records their own limit too.
    let (nofile_before, nofile_after) =
        procfs::raise_nofile_limit().context("raising RLIMIT_NOFILE")?;
    let plan = OverloadPlan {
        idle: o.idle.unwrap_or(if tiny { 200 } else { 10_000 }),
        watches: o.watches.unwrap_or(if tiny { 50 } else { 2_000 }),
        measure: o
            .measure
            .unwrap_or(Duration::from_secs(if tiny { 2 } else { 5 })),
        concurrency: o.concurrency.unwrap_or(if tiny { 64 } else { 256 }),
        connections: args.connections.max(1),
        duration: args
            .duration
            .unwrap_or(Duration::from_secs(if tiny { 5 } else { 30 })),
        max_in_flight: o.max_in_flight.max(1),
        largest: o
            .largest
            .unwrap_or(Duration::from_secs(if tiny { 2 } else { 10 })),
        largest_workers: o.largest_workers.unwrap_or(if tiny { 4 } else { 8 }),
    };
    let needed = (plan.idle + plan.watches / 100 + plan.connections + 200) as u64;
    if needed > nofile_after {
        bail!(
            "{} idle connections need about {needed} file descriptors and this process may \
             open {nofile_after} (its hard limit); raise it (ulimit -Hn) or pass a smaller --idle",
            plan.idle
        );
    }
    let (out, work, node_bin, etcd_bin) = prepare(args, &stamp, "overload")?;
    let mut wanted: Vec<u16> = (1..=3u16)
        .flat_map(|i| [0u16, 100, 200, 300].map(|o| args.herald_base_port.saturating_add(o + i)))
        .collect();
    if etcd_bin.is_some() {
        wanted.extend(
            (0..3u16)
                .flat_map(|i| [0u16, 1].map(|o| args.etcd_base_port.saturating_add(10 * i + o))),
        );
    }
    if let Some(port) = procfs::port_in_use(&wanted) {
        bail!(
            "port {port} on 127.0.0.1 is taken (another herald-bench or cluster running?); \
             stop it or pick other --herald-base-port / --etcd-base-port"
        );
    }
    let mut report = OverloadReport {
        started_at: now.to_rfc3339(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        ..OverloadReport::default()
    };
    let p = &mut report.parameters;
    p.insert("idle connections".into(), plan.idle.to_string());
    p.insert(
        "watch streams".into(),
        format!("{} (100 per connection, one key each)", plan.watches),
    );
    p.insert(
        "max rate".into(),
        format!(
            "closed loop, {} in flight over {} connections, {:?}",
            plan.concurrency, plan.connections, plan.measure
        ),
    );
    p.insert(
        "open loop".into(),
        format!(
            "2 x max for {:?}, at most {} in flight; latency from each request's scheduled start",
            plan.duration, plan.max_in_flight
        ),
    );
    p.insert(
        "largest requests".into(),
        format!("{} workers for {:?}", plan.largest_workers, plan.largest),
    );
    p.insert(
        "writes".into(),
        format!(
            "Herald Login with ttl {} s, every login a new user; etcd put with a lease of \
             the same TTL (a pool of 1000 leases granted first)",
            herald_bench::payload::LEASED_TTL_MS / 1000
        ),
    );
    p.insert(
        "security".into(),
        "TLS and client certificates on every port, auth on (both systems)".into(),
    );
    p.insert(
        "keep-alive".into(),
        "each client library's default: herald_client pings every 2 s, etcd-client does not".into(),
    );
    p.insert(
        "bench RLIMIT_NOFILE".into(),
        format!("soft {nofile_before} raised to {nofile_after}"),
    );
    p.insert("load average at start".into(), load_average());
    p.insert(
        "machine".into(),
        format!(
            "{} CPUs, {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel()
        ),
    );
    p.insert("node binary".into(), node_bin.display().to_string());
    if let Some(bin) = &etcd_bin {
        p.insert("etcd binary".into(), bin.display().to_string());
    }
    let started = Instant::now();
    let setup = Setup {
        node_bin,
        etcd_bin,
        work: work.clone(),
        herald_base_port: args.herald_base_port,
        etcd_base_port: args.etcd_base_port,
    };
    report.systems = overload::run(&plan, &setup).await?;
    report
        .parameters
        .insert("load average at end".into(), load_average());
    report.parameters.insert(
        "total run time".into(),
        format!("{:.0} s", started.elapsed().as_secs_f64()),
    );
    let markdown = overload_markdown(&report);
    write(&out.join("overload.md"), &markdown)?;
    write(
        &out.join("overload.json"),
        &serde_json::to_string_pretty(&report).context("encoding overload.json")?,
    )?;
    println!("{markdown}");
    eprintln!(
        "results in {} (overload.md, overload.json); {:.0} s in all",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    if args.keep_work {
        eprintln!("work dir kept: {}", work.display());
    } else if let Err(e) = std::fs::remove_dir_all(&work) {
        eprintln!("warning: removing {}: {e}", work.display());
    }
    Ok(())
}

/// The 1, 5 and 15 minute load averages.
/// What a run needs before it starts, the same for the side-by-side
/// benchmark and `overload` (`kind` "" or "overload"): the results dir
/// (`--out`, made), a fresh work dir (`--work-dir`, made), the node binary,
/// and etcd unless `--skip-etcd` (installed if missing).
fn prepare(
    args: &Args,
    stamp: &str,
    kind: &str,
) -> Result<(PathBuf, PathBuf, PathBuf, Option<PathBuf>)> {
    let (results, scratch) = if kind.is_empty() {
        (stamp.to_string(), format!("herald-bench-{stamp}"))
    } else {
        (format!("{kind}-{stamp}"), format!("herald-{kind}-{stamp}"))
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("results").join(results));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(scratch));
    if work.exists() {
        bail!("{} exists; pick another --work-dir", work.display());
    }
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let node_bin = herald_harness::locate_node_binary(args.node_bin.clone(), |cmd| {
        eprintln!("running: {cmd}")
    })?;
    let etcd_bin = if args.skip_etcd {
        eprintln!("--skip-etcd: etcd is not run; its figures are left blank");
        None
    } else {
        match etcd::ensure_installed(args.etcd_bin.as_deref())? {
            Some(bin) => Some(bin),
            None => bail!(
                "etcd is not installed and apt-get is not available to install it \
                 (Debian package etcd-server 3.4); install etcd 3.4, pass --etcd-bin, \
                 or pass --skip-etcd for Herald's figures only"
            ),
        }
    };
    Ok((out, work, node_bin, etcd_bin))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Writes results.md, results.json and results.svg (after each phase, so an
/// interrupted run keeps what it measured); returns the markdown.
fn save(out: &Path, report: &Report) -> Result<String> {
    let markdown = report::markdown(report);
    write(&out.join("results.md"), &markdown)?;
    write(
        &out.join("results.json"),
        &serde_json::to_string_pretty(report).context("encoding results.json")?,
    )?;
    write(&out.join("results.svg"), &report::svg(&report.runs))?;
    Ok(markdown)
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| format!("Linux {}", s.trim()))
        .unwrap_or_else(|_| "unknown kernel".into())
}

/// What a system offers the benchmark.
trait System {
    const NAME: &'static str;
    async fn target(&self, connections: usize, plan: &Plan) -> Result<Target>;
    fn pids(&self) -> Vec<u32>;
    fn data_bytes(&self) -> u64;
}

impl System for EtcdCluster {
    const NAME: &'static str = ETCD;
    async fn target(&self, connections: usize, _plan: &Plan) -> Result<Target> {
        let leader = self.leader_index(Duration::from_secs(10)).await?;
        Target::etcd(&self.endpoints(), leader, connections, self.tls_options()?).await
    }
    fn pids(&self) -> Vec<u32> {
        EtcdCluster::pids(self)
    }
    fn data_bytes(&self) -> u64 {
        EtcdCluster::data_bytes(self)
    }
}

impl System for HeraldCluster {
    const NAME: &'static str = HERALD;
    async fn target(&self, connections: usize, plan: &Plan) -> Result<Target> {
        let leader = self.leader(Duration::from_secs(10)).await?;
        Target::herald(
            &self.endpoints(),
            self.index_of(leader),
            connections,
            plan.coalesce,
            self.client_tls(),
        )
    }
    fn pids(&self) -> Vec<u32> {
        HeraldCluster::pids(self)
    }
    fn data_bytes(&self) -> u64 {
        HeraldCluster::data_bytes(self)
    }
}

/// Writes every key once, then runs each workload.
/// Rows are named `<workload><suffix>` (`+tls` on secure clusters).
async fn workloads_on<S: System>(
    system: &S,
    plan: &Plan,
    suffix: &str,
    report: &mut Report,
) -> Result<()> {
    let name = S::NAME;
    let target = Arc::new(system.target(plan.connections, plan).await?);
    eprintln!("  {name}: writing {} keys once", plan.keys);
    let fill_started = Instant::now();
    let filled = driver::fill(target, plan.keys, 64, None, |done| {
        eprintln!("  {name}: {done}/{} keys", plan.keys)
    })
    .await;
    let (errors, first) = (filled.errors, filled.first_error);
    eprintln!(
        "  {name}: keys written in {:.1} s",
        fill_started.elapsed().as_secs_f64()
    );
    if errors > 0 {
        report.notes.push(format!(
            "{name}: {errors} of {} preload writes failed; first: {}",
            plan.keys,
            first.unwrap_or_default()
        ));
    }
    for (i, w) in plan.workloads.iter().enumerate() {
        let connections = plan.connections.min(w.concurrency);
        let target = Arc::new(system.target(connections, plan).await?);
        let load = Load {
            concurrency: w.concurrency,
            warmup: plan.warmup,
            duration: plan.duration,
            mix: w.mix,
            keys: plan.keys,
            seed: plan.seed.wrapping_add(1000 * i as u64),
            record_acks: false,
        };
        let pids = system.pids();
        let task = tokio::spawn(async move { driver::run(target, &load).await });
        tokio::time::sleep(plan.warmup).await;
        for &pid in &pids {
            procfs::reset_peak_rss(pid);
        }
        let before = procfs::usage(&pids);
        let outcome = task.await.context("load task failed")?;
        let after = procfs::usage(&pids);
        let s = &outcome.summary;
        eprintln!(
            "  {name} {:<17} {:>9.0} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  errors {}",
            format!("{}{suffix}", w.name),
            s.throughput,
            s.p50_ms,
            s.p99_ms,
            s.p999_ms,
            s.errors
        );
        if let Some(e) = &outcome.first_error {
            eprintln!("    first error: {e}");
            report
                .notes
                .push(format!("{name} {}: first error: {e}", w.name));
        }
        report.runs.push(RunResult {
            workload: format!("{}{suffix}", w.name),
            system: name.to_string(),
            concurrency: w.concurrency,
            summary: outcome.summary,
            cpu_seconds: after.cpu_seconds - before.cpu_seconds,
            peak_rss_bytes: after.max_peak_rss,
            data_bytes: system.data_bytes(),
            first_error: outcome.first_error,
        });
    }
    Ok(())
}

/// Write load with 16 in flight; after `before`, `kill` runs; the write
/// outage is the longest pause between acknowledgements from then on.
async fn one_kill<S: System>(
    system: &S,
    plan: &Plan,
    kill: impl AsyncFnOnce() -> Result<()>,
) -> Result<f64> {
    let before = Duration::from_secs(2);
    let after = Duration::from_secs(6);
    let target = Arc::new(system.target(plan.connections, plan).await?);
    let load = Load {
        concurrency: 16,
        warmup: Duration::ZERO,
        duration: before + after,
        mix: Mix::Writes,
        keys: plan.keys,
        seed: plan.seed ^ 0xfa11,
        record_acks: true,
    };
    let task = tokio::spawn(async move { driver::run(target, &load).await });
    let origin = Instant::now();
    tokio::time::sleep(before).await;
    kill().await?;
    let killed_at = origin.elapsed().as_secs_f64();
    let outcome = task.await.context("load task failed")?;
    let acks: Vec<f64> = outcome
        .acks
        .iter()
        .map(|t| t.saturating_duration_since(origin).as_secs_f64())
        .collect();
    let last = acks.iter().copied().fold(0.0, f64::max);
    if last < killed_at {
        bail!(
            "{}: no write was acknowledged in the {after:?} after the kill ({})",
            S::NAME,
            outcome.first_error.unwrap_or_default()
        );
    }
    longest_gap_after(&acks, killed_at)
        .map(|g| g * 1000.0)
        .ok_or_else(|| anyhow::anyhow!("{}: no acknowledged writes", S::NAME))
}

async fn bench_etcd(
    cluster: &mut EtcdCluster,
    plan: &Plan,
    failover: bool,
    suffix: &str,
    report: &mut Report,
) -> Result<()> {
    workloads_on(&*cluster, plan, suffix, report).await?;
    if !failover {
        return Ok(());
    }
    let mut gaps = Vec::new();
    for k in 0..plan.kills {
        let leader = cluster.leader_index(Duration::from_secs(10)).await?;
        let shared: &EtcdCluster = cluster;
        let pid = shared.pids().get(leader).copied();
        let gap = one_kill(shared, plan, async || {
            let pid = pid.ok_or_else(|| anyhow::anyhow!("etcd: leader has no pid"))?;
            procfs::signal(pid, libc::SIGKILL);
            Ok(())
        })
        .await?;
        eprintln!(
            "  etcd: kill {} of leader etcd{leader}: write outage {gap:.0} ms",
            k + 1
        );
        gaps.push(gap);
        // Reap the killed member and bring it back before the next kill.
        cluster.kill(leader).await?;
        cluster.restart(leader)?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.leader_index(Duration::from_secs(20)).await?;
    }
    report.failover.push(Failover {
        system: ETCD.into(),
        median_ms: median(&gaps),
        gaps_ms: gaps,
    });
    Ok(())
}

async fn bench_herald(
    cluster: &mut HeraldCluster,
    plan: &Plan,
    failover: bool,
    suffix: &str,
    report: &mut Report,
) -> Result<()> {
    workloads_on(&*cluster, plan, suffix, report).await?;
    if !failover {
        return Ok(());
    }
    let mut gaps = Vec::new();
    for k in 0..plan.kills {
        // Kill the settled leader: numbered failover hands leadership back to
        // node 1 a few seconds after it returns, and killing a node that is
        // just passing leadership on would measure nothing.
        let leader = cluster.settled_leader(Duration::from_secs(15)).await?;
        let shared: &HeraldCluster = cluster;
        let pid = shared.pid(leader);
        let gap = one_kill(shared, plan, async || {
            let pid = pid.ok_or_else(|| anyhow::anyhow!("herald: leader has no pid"))?;
            procfs::signal(pid, libc::SIGKILL);
            Ok(())
        })
        .await?;
        eprintln!(
            "  herald: kill {} of leader node{leader}: write outage {gap:.0} ms",
            k + 1
        );
        gaps.push(gap);
        cluster.restart(leader)?;
        cluster
            .wait_serving(leader, Duration::from_secs(30))
            .await?;
    }
    report.failover.push(Failover {
        system: HERALD.into(),
        median_ms: median(&gaps),
        gaps_ms: gaps,
    });
    Ok(())
}

async fn memory_and_restart(cluster: &mut HeraldCluster, plan: &Plan) -> Result<MemoryRestart> {
    let target = Arc::new(cluster.target(16, plan).await?);
    let load_started = Instant::now();
    let target_records = plan.records;
    let mut last = (0u64, load_started);
    let filled = driver::fill(target, target_records, 256, Some(plan.load_limit), |done| {
        let now = Instant::now();
        let recent = (done - last.0) as f64 / (now - last.1).as_secs_f64().max(1e-9);
        last = (done, now);
        eprintln!(
            "  herald: {done}/{target_records} records, {:.0}/s overall, {recent:.0}/s in the last interval",
            done as f64 / load_started.elapsed().as_secs_f64().max(1e-9)
        );
    })
    .await;
    let load_seconds = load_started.elapsed().as_secs_f64();
    let records = filled.done;
    let load_errors = filled.errors;
    eprintln!("  herald: {records} records in {load_seconds:.1} s, {load_errors} errors");
    if filled.timed_out {
        eprintln!(
            "  herald: stopped at the --load-limit of {:?} with {records} of {target_records} records",
            plan.load_limit
        );
    }
    if let Some(e) = &filled.first_error {
        eprintln!("    first error: {e}");
    }
    let rss = |cluster: &HeraldCluster| -> BTreeMap<u64, u64> {
        cluster
            .ids()
            .into_iter()
            .filter_map(|id| Some((id, procfs::status_bytes(cluster.pid(id)?, "VmRSS")?)))
            .collect()
    };
    let rss_after_load = rss(cluster);
    let data_bytes = cluster.data_bytes();
    eprintln!("  herald: restarting all nodes");
    let times = cluster.restart_all(Duration::from_secs(120)).await?;
    for (id, t) in &times {
        eprintln!(
            "  herald: node{id} serving {:.0} ms after start",
            t.as_secs_f64() * 1000.0
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after_restart = rss(cluster);
    Ok(MemoryRestart {
        target_records,
        records,
        load_seconds,
        load_errors,
        rss_after_load,
        data_bytes,
        restart_to_serving_ms: times
            .into_iter()
            .map(|(id, t)| (id, t.as_secs_f64() * 1000.0))
            .collect(),
        rss_after_restart,
    })
}
