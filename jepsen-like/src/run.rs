//! One chaos run: cluster up, workloads and nemesis concurrently, heal,
//! final reads, check, write the output directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::checker;
use crate::cluster::{Cluster, ClusterOptions};
use crate::faultfs;
use crate::history::{Recorder, fault_windows, pair};
use crate::nemesis::{Fault, Nemesis};
use crate::report::{self, Summary};
use crate::workload::{self, Context, Workload};

/// `raft.snapshot_every` in runs with the snapshot storm.
pub const SNAPSHOT_STORM_EVERY: u64 = 20;

/// How faults are scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Each enabled fault once, in order (the smoke run).
    EachOnce,
    /// Random faults from the enabled set until the duration is over.
    Random,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Founding nodes.
    pub nodes: u32,
    /// Workload time (for [`Schedule::Random`]; each-once runs as long as the faults take).
    pub duration: Duration,
    /// Enabled faults.
    pub faults: Vec<Fault>,
    /// Enabled workloads.
    pub workloads: Vec<Workload>,
    /// Everything random derives from it.
    pub seed: u64,
    /// Output directory.
    pub out: PathBuf,
    /// The node binary.
    pub node_bin: PathBuf,
    /// Fault schedule.
    pub schedule: Schedule,
    /// How long a fault is held.
    pub hold: Duration,
    /// Quiet time before each fault.
    pub gap: Duration,
    /// Nodes started with `[testing] stale_reads = true`.
    pub stale_reads: Vec<u64>,
    /// Nodes in containers on a bridge network, links cut with iptables
    /// (see [`crate::docker`]); only the faults of [`docker_faults`].
    pub docker: bool,
}

/// The faults the docker mode runs: every fault but the `disk` group
/// (partitions, kills, pauses, clocks and membership; the disk faults need
/// the FUSE mounts and process exits on the host), in the smoke run's order.
pub fn docker_faults() -> Vec<Fault> {
    Fault::ALL
        .into_iter()
        .filter(|f| !Fault::DISK.contains(f))
        .collect()
}

/// Runs it; the summary says whether the history was valid.
pub async fn run(opts: &RunOptions) -> Result<Summary> {
    let started = Instant::now();
    if opts.docker
        && let Some(f) = opts.faults.iter().find(|f| Fault::DISK.contains(f))
    {
        anyhow::bail!(
            "--docker runs the partition, kill, pause, clock and membership faults; not {}",
            f.name()
        );
    }
    let spare = opts.faults.contains(&Fault::Membership);
    let wants_fuse = !opts.docker && opts.faults.iter().any(|f| Fault::FUSE.contains(f));
    let no_fuse = if wants_fuse {
        faultfs::unavailable()
    } else {
        Some("no FUSE fault enabled".into())
    };
    if wants_fuse && let Some(why) = &no_fuse {
        eprintln!(
            "SKIPPING the FUSE disk faults ({}): {why}",
            Fault::FUSE.map(Fault::name).join(", ")
        );
    }
    let mut cluster = Cluster::start(&ClusterOptions {
        nodes: opts.nodes,
        spare,
        node_bin: opts.node_bin.clone(),
        stale_reads: opts.stale_reads.clone(),
        faultfs: no_fuse.is_none(),
        snapshot_every: opts
            .faults
            .contains(&Fault::SnapshotStorm)
            .then_some(SNAPSHOT_STORM_EVERY),
        docker: opts.docker,
    })
    .await?;
    let founders = cluster.founders().to_vec();
    let result = drive(
        opts,
        &mut cluster,
        spare.then_some(u64::from(opts.nodes) + 1),
        no_fuse,
    )
    .await;
    let logs = opts.out.join("logs");
    if let Err(e) = cluster.copy_logs(&logs) {
        eprintln!("copying node logs: {e:#}");
    }
    drop(cluster);
    let (recorder, unread, disk_anomalies) =
        result.with_context(|| format!("cluster of nodes {founders:?}"))?;
    let events = recorder.events();
    let ops = pair(&events);
    let checked = Instant::now();
    let mut check = checker::check(&ops, Duration::from_secs(60));
    let check_ms = u64::try_from(checked.elapsed().as_millis()).unwrap_or(u64::MAX);
    if !disk_anomalies.is_empty() {
        check.valid = false;
        check.anomalies.extend(disk_anomalies);
    }
    let summary = Summary {
        valid: check.valid && unread.is_empty(),
        seed: opts.seed,
        nodes: opts.nodes,
        workloads: opts
            .workloads
            .iter()
            .map(|w| format!("{w:?}").to_lowercase())
            .collect(),
        nemeses: opts.faults.iter().map(|f| f.name().to_string()).collect(),
        faults: fault_windows(&events),
        unread_keys: unread,
        check,
        wall_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        check_ms,
    };
    report::write(&opts.out, &events, &ops, &summary)?;
    Ok(summary)
}

async fn drive(
    opts: &RunOptions,
    cluster: &mut Cluster,
    spare: Option<u64>,
    no_fuse: Option<String>,
) -> Result<(Recorder, Vec<String>, Vec<checker::Anomaly>)> {
    let founders = cluster.founders().to_vec();
    cluster.init(founders[0], Duration::from_secs(30)).await?;
    cluster
        .wait_for_leader(&founders, Duration::from_secs(30))
        .await?;
    let admin = workload::client_preferring(&cluster.endpoints(), cluster.client_tls(), 0)?;
    let setup = workload::setup(&admin, &opts.workloads).await?;

    let recorder = Recorder::new();
    let (stop_tx, stop) = watch::channel(false);
    let ctx = Context {
        recorder: recorder.clone(),
        endpoints: cluster.endpoints(),
        tls: cluster.client_tls(),
        stop,
        seed: opts.seed,
        next_process: Arc::new(AtomicU64::new(1)),
    };
    let mut workers = JoinSet::new();
    workload::spawn(&opts.workloads, &setup, &ctx, &mut workers);

    let monitor = tokio::spawn(monitor(
        cluster.nodes().map(|n| (n.id(), n.client_addr())).collect(),
        cluster.client_tls(),
        recorder.clone(),
    ));
    let mut nemesis = Nemesis::new(cluster, spare, opts.seed, recorder.clone(), no_fuse)?;
    let mut rng = StdRng::seed_from_u64(opts.seed.wrapping_add(1));
    let began = Instant::now();
    match opts.schedule {
        Schedule::EachOnce => {
            for &fault in &opts.faults {
                tokio::time::sleep(opts.gap).await;
                nemesis.run(cluster, fault, opts.hold).await?;
            }
            tokio::time::sleep(opts.gap).await;
        }
        Schedule::Random => loop {
            let gap = opts.gap.mul_f64(rng.random_range(0.5..1.5));
            let hold = opts.hold.mul_f64(rng.random_range(0.5..1.5));
            if opts.faults.is_empty() || began.elapsed() + gap + hold > opts.duration {
                tokio::time::sleep(opts.duration.saturating_sub(began.elapsed())).await;
                break;
            }
            tokio::time::sleep(gap).await;
            let fault = opts.faults[rng.random_range(0..opts.faults.len())];
            nemesis.run(cluster, fault, hold).await?;
        },
    }
    nemesis.heal_all(cluster).await?;
    stop_tx.send_replace(true);
    while workers.join_next().await.is_some() {}
    let members = nemesis.members(cluster);
    if let Err(e) = cluster
        .wait_for_leader(&members, Duration::from_secs(30))
        .await
    {
        eprintln!("after healing: {e:#}");
        // What a CI log keeps of a run whose directory is gone: each
        // node's last warnings.
        let ids: Vec<u64> = cluster.nodes().map(|n| n.id()).collect();
        for id in ids {
            let text = cluster.log_text(id);
            let warnings: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .collect();
            eprintln!("--- node {id}: its last warnings");
            for line in &warnings[warnings.len().saturating_sub(12)..] {
                eprintln!("{}", line.chars().take(400).collect::<String>());
            }
        }
    }
    let unread =
        workload::final_reads(&opts.workloads, &setup, &ctx, Duration::from_secs(30)).await;
    monitor.abort();
    Ok((recorder, unread, nemesis.anomalies().to_vec()))
}

/// Records every node's role, term and leader twice a second, so elections
/// show in the history next to the faults that caused them.
/// Runs until aborted.
async fn monitor(
    nodes: Vec<(u64, String)>,
    tls: Option<herald_client::ClientTls>,
    recorder: Recorder,
) {
    let Ok(client) = herald_client::Client::with_config(
        nodes.iter().map(|(_, a)| a.clone()).collect(),
        herald_client::ClientConfig {
            tls,
            request_timeout: Duration::from_millis(300),
            deadline: Duration::from_millis(400),
            max_attempts: 1,
            ..herald_client::ClientConfig::default()
        },
    ) else {
        return;
    };
    let mut last = serde_json::Value::Null;
    loop {
        let asks = nodes.iter().map(|(id, addr)| {
            let client = client.clone();
            async move { (*id, client.status_of(addr).await) }
        });
        let mut value = serde_json::Map::new();
        for (id, status) in futures::future::join_all(asks).await {
            if let Ok(s) = status {
                value.insert(
                    id.to_string(),
                    serde_json::json!({"role": s.role, "term": s.term, "leader": s.leader_id}),
                );
            }
        }
        let value = serde_json::Value::Object(value);
        if value != last {
            recorder.record(
                crate::history::MONITOR,
                crate::history::EventType::Ok,
                "monitor",
                "status",
                "",
                value.clone(),
                None,
            );
            last = value;
        }
        // Sampling, not synchronisation: the nodes publish no events.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
