//! `herald-jepsen clock-offsets`: how far each follower's clock is from the
//! leader's under write load, measured from outside through every node's
//! SNTP answers (issue 23 item 2).
//!
//! A 3-node cluster takes the benchmark's write load (presence logins of
//! about 120 bytes from `concurrency` clients, as `herald-bench`'s
//! `write-c64`) while a probe thread asks every node's time-sync port for
//! its time every `interval`. Each node gets three exchanges per tick and
//! the quickest counts (its error is at most half its round trip, which is
//! reported too). The leader is the node that answers stratum 1; a
//! follower's offset is its time minus the leader's at that tick. Ticks in
//! the first `settle` after the start or a leader change are left out.
//! With a baseline binary, two clusters run side by side under the same
//! machine load.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use herald_client::{ClientConfig, proto};

use crate::cluster::{Cluster, ClusterOptions};

/// Seconds between the NTP era (1900) and the Unix epoch.
const NTP_UNIX_DELTA: i64 = 2_208_988_800;

/// What to measure.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// A name for the table (e.g. "new", "baseline").
    pub label: String,
    /// The `herald-node` binary.
    pub node_bin: PathBuf,
    /// How long the load runs.
    pub duration: Duration,
    /// Concurrent login clients.
    pub concurrency: usize,
    /// Probe period.
    pub interval: Duration,
    /// Ticks this soon after the start or a leader change are not counted.
    pub settle: Duration,
}

/// One follower's offsets from the leader.
#[derive(Debug, Clone, Default)]
pub struct FollowerOffsets {
    /// |follower − leader| per counted tick, in µs.
    pub abs_offset_us: Vec<u64>,
    /// The probe's round trip to the follower per counted tick, in µs.
    pub probe_delay_us: Vec<u64>,
}

/// What a probe run saw.
#[derive(Debug, Clone, Default)]
pub struct ProbeReport {
    /// The run's label.
    pub label: String,
    /// Keyed by node id (while it was a follower).
    pub followers: BTreeMap<u64, FollowerOffsets>,
    /// Logins acknowledged.
    pub writes: u64,
    /// Leader changes seen.
    pub leader_changes: u32,
}

/// The `q` quantile (0..=1) of `v`, nearest rank; 0 when empty.
pub fn quantile(v: &[u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

fn system_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn ntp_ns(b: &[u8]) -> i64 {
    let secs = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as i64;
    let frac = u32::from_be_bytes([b[4], b[5], b[6], b[7]]) as i64;
    (secs - NTP_UNIX_DELTA) * 1_000_000_000 + ((frac * 1_000_000_000) >> 32)
}

/// One SNTP exchange: (server − local offset ns, round trip ns, stratum).
fn exchange(socket: &UdpSocket, server: SocketAddr) -> Option<(i64, u64, u8)> {
    let mut req = [0u8; 48];
    req[0] = (4 << 3) | 3;
    let t1 = system_ns();
    // The transmit timestamp doubles as the nonce the reply echoes.
    req[40..48].copy_from_slice(&t1.to_be_bytes());
    socket.send_to(&req, server).ok()?;
    let mut buf = [0u8; 64];
    loop {
        let (n, from) = socket.recv_from(&mut buf).ok()?;
        let t4 = system_ns();
        if from != server || n < 48 || buf[24..32] != req[40..48] {
            continue; // a late answer to an earlier exchange
        }
        let (t2, t3) = (ntp_ns(&buf[32..40]), ntp_ns(&buf[40..48]));
        let offset = ((t2 - t1) + (t3 - t4)) / 2;
        let delay = ((t4 - t1) - (t3 - t2)).max(0) as u64;
        return Some((offset, delay, buf[1]));
    }
}

/// The quickest of three exchanges.
fn best_of_three(socket: &UdpSocket, server: SocketAddr) -> Option<(i64, u64, u8)> {
    (0..3)
        .filter_map(|_| exchange(socket, server))
        .min_by_key(|s| s.1)
}

/// One probe tick: when, and per node (offset ns, delay ns, stratum).
type Tick = (Instant, BTreeMap<u64, (i64, u64, u8)>);

/// Probes `nodes` every `interval` until `stop`.
fn probe(nodes: Vec<(u64, SocketAddr)>, interval: Duration, stop: Arc<AtomicBool>) -> Vec<Tick> {
    let Ok(socket) = UdpSocket::bind("127.0.0.1:0") else {
        return Vec::new();
    };
    let _ = socket.set_read_timeout(Some(Duration::from_millis(100)));
    let mut ticks = Vec::new();
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let at = Instant::now();
        let seen = nodes
            .iter()
            .filter_map(|(id, addr)| Some((*id, best_of_three(&socket, *addr)?)))
            .collect();
        ticks.push((at, seen));
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    ticks
}

/// The benchmark's login payload: about 120 bytes.
fn login(n: u64) -> proto::LoginRequest {
    let ext = [
        ("app", "im-9.4.2"),
        ("os", "android-14"),
        ("region", "cn-north-1"),
        ("net", "wifi"),
        ("dev", "sm-g9910"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    proto::LoginRequest {
        uid: format!("user-{n:010}"),
        sid: 13_800_000_000 + n,
        client_type: "mobile".into(),
        accept_strangers: n.is_multiple_of(2),
        ext,
        ttl_ms: 0,
        connection_id: String::new(),
    }
}

/// Starts a cluster, loads it and probes it; see the module docs.
pub async fn measure(opts: &ProbeOptions) -> Result<ProbeReport> {
    let mut cluster = Cluster::start(&ClusterOptions {
        nodes: 3,
        spare: false,
        node_bin: opts.node_bin.clone(),
        stale_reads: Vec::new(),
        faultfs: false,
        snapshot_every: None,
        docker: false,
    })
    .await
    .with_context(|| format!("{}: starting the cluster", opts.label))?;
    let founders = cluster.founders().to_vec();
    cluster.init(founders[0], Duration::from_secs(30)).await?;
    cluster
        .wait_for_leader(&founders, Duration::from_secs(30))
        .await?;
    let time_addrs: Vec<(u64, SocketAddr)> = cluster
        .nodes()
        .filter_map(|n| Some((n.id(), n.config.listen.time_sync?)))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        let interval = opts.interval;
        std::thread::spawn(move || probe(time_addrs, interval, stop))
    };
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + opts.duration;
    let mut load = Vec::new();
    for c in 0..opts.concurrency {
        let id = founders[c % founders.len()];
        let client = cluster.client_for(
            id,
            ClientConfig {
                request_timeout: Duration::from_secs(2),
                ..ClientConfig::default()
            },
        )?;
        load.push(tokio::spawn(async move {
            let mut done = 0u64;
            let mut n = c as u64;
            while tokio::time::Instant::now() < deadline {
                if client.login(login(n % 100_000)).await.is_ok() {
                    done += 1;
                }
                n += 997;
            }
            done
        }));
    }
    let mut writes = 0;
    for t in load {
        writes += t.await.unwrap_or(0);
    }
    stop.store(true, Ordering::Relaxed);
    let ticks = tokio::task::spawn_blocking(move || prober.join())
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    drop(cluster);

    let mut report = ProbeReport {
        label: opts.label.clone(),
        writes,
        ..ProbeReport::default()
    };
    let mut leader: Option<u64> = None;
    let mut settled_from = started + opts.settle;
    for (at, seen) in ticks {
        let leaders: Vec<u64> = seen
            .iter()
            .filter(|(_, s)| s.2 == 1)
            .map(|(id, _)| *id)
            .collect();
        let [now_leader] = leaders[..] else {
            continue; // no leader, or two during a change
        };
        if leader.is_some_and(|l| l != now_leader) {
            report.leader_changes += 1;
            settled_from = at + opts.settle;
        }
        leader = Some(now_leader);
        if at < settled_from {
            continue;
        }
        let (lo, _, _) = seen[&now_leader];
        for (id, (o, d, _)) in &seen {
            if *id == now_leader {
                continue;
            }
            let f = report.followers.entry(*id).or_default();
            f.abs_offset_us.push(o.abs_diff(lo) / 1000);
            f.probe_delay_us.push(d / 1000);
        }
    }
    Ok(report)
}

/// The machine's 1-minute load average, as `/proc/loadavg` says.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// A markdown table of the reports.
pub fn table(reports: &[ProbeReport]) -> String {
    let mut out = String::from(
        "| binary | follower | ticks | p50 abs offset µs | p99 µs | max µs | probe delay p50 µs | writes | leader changes |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in reports {
        for (id, f) in &r.followers {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                r.label,
                id,
                f.abs_offset_us.len(),
                quantile(&f.abs_offset_us, 0.5),
                quantile(&f.abs_offset_us, 0.99),
                quantile(&f.abs_offset_us, 1.0),
                quantile(&f.probe_delay_us, 0.5),
                r.writes,
                r.leader_changes
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), 50);
        assert_eq!(quantile(&v, 0.99), 99);
        assert_eq!(quantile(&v, 1.0), 100);
        assert_eq!(quantile(&[], 0.5), 0);
    }

    #[test]
    fn ntp_timestamps_read_back() {
        // 1.5 s after the Unix epoch.
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&((NTP_UNIX_DELTA + 1) as u32).to_be_bytes());
        b[4..].copy_from_slice(&(1u32 << 31).to_be_bytes());
        assert_eq!(ntp_ns(&b), 1_500_000_000);
    }
}
