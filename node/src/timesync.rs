//! Leader-based time sync over SNTP (P-publish's "standard time server").
//!
//! Every node answers SNTP (NTPv4 server mode, RFC 4330) on its time-sync
//! port with its *cluster* clock. Followers query the current leader with
//! the `rsntp` tokio client every `clock.sync_interval_ms`; the leader may
//! query upstream NTP servers the same way, or is its own reference. Nobody
//! touches the system clock: a correction only changes this node's offset.
//!
//! Each round takes `clock.samples` samples spread over a fifth of the
//! interval and hands them to [`Discipline`](crate::cluster::discipline), which keeps
//! the quick, agreeing ones (queueing only ever adds delay, and it is what
//! skews an offset estimate) and bounds what one round may change. Both ends
//! timestamp on threads that block in the kernel, not on tokio tasks, so a
//! busy runtime does not sit inside the measurement.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::clock::ClusterClock;
use crate::cluster::discipline::{Correction, Discipline, Limits, Sample};
use crate::cluster::stratum::reply;
use crate::config::ClockConfig;
use crate::node::Herald;

/// Serves SNTP on `socket` until `stopped` resolves.
///
/// On its own OS thread with a blocking socket, not as a tokio task: under
/// load a ready task can wait milliseconds for a worker, and every one of
/// them would sit between the packet's arrival and its receive timestamp,
/// skewing each follower's sample by half of it (issue 23 item 2). A thread
/// blocked in `recv` is woken by the kernel directly.
pub async fn serve(node: Herald, socket: UdpSocket, stopped: impl Future<Output = ()>) {
    let socket = match socket.into_std().and_then(|s| {
        s.set_nonblocking(false)?;
        // Wakes now and then to see whether the node is stopping.
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        Ok(s)
    }) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("sntp socket: {e}");
            return;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("herald-sntp".into())
            .spawn(move || serve_blocking(&node, &socket, &stop))
    };
    let thread = match thread {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("sntp thread: {e}");
            return;
        }
    };
    stopped.await;
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
}

fn serve_blocking(node: &Herald, socket: &std::net::UdpSocket, stop: &AtomicBool) {
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        let (len, peer) = match socket.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => {
                tracing::debug!("sntp recv: {e}");
                continue;
            }
        };
        let clock = node.clock();
        let receive_ns = clock.now_ns();
        let source = node.time_source();
        if let Some(out) = reply(&buf[..len], receive_ns, clock.now_ns(), source)
            && let Err(e) = socket.send_to(&out, peer)
        {
            tracing::debug!("sntp send to {peer}: {e}");
        }
    }
}

/// Takes `n` SNTP samples of `server`, spread over `spread`; failed samples
/// are skipped. Blocking sockets on a blocking-pool thread, so the reply's
/// timestamp is taken when the kernel wakes the thread, not when a busy
/// runtime gets round to the task.
async fn sample(server: SocketAddr, n: u32, timeout: Duration, spread: Duration) -> Vec<Sample> {
    let gap = spread / n.max(1);
    let run = move || {
        let client = rsntp::SntpClient::with_config(rsntp::Config::default().timeout(timeout));
        let mut out = Vec::new();
        for i in 0..n {
            if i > 0 {
                std::thread::sleep(gap);
            }
            match client.synchronize(server) {
                Ok(r) => out.push(Sample {
                    offset_ns: (r.clock_offset().as_secs_f64() * 1e9) as i64,
                    delay_ns: (r.round_trip_delay().as_secs_f64() * 1e9).max(0.0) as u64,
                }),
                Err(e) => tracing::debug!(%server, "sntp sample: {e}"),
            }
        }
        out
    };
    tokio::task::spawn_blocking(run).await.unwrap_or_default()
}

/// Runs one round of `discipline` on `samples` and applies its decision to
/// `clock`; returns it.
fn adopt(
    clock: &ClusterClock,
    discipline: &mut Discipline,
    samples: &[Sample],
    what: &str,
) -> Correction {
    let from = clock.offset_ns();
    let (c, est) = discipline.round(from, samples);
    match c {
        Correction::NoSamples => return c,
        Correction::Queued(delay, best) => {
            tracing::debug!(
                reference = what,
                delay_us = delay / 1000,
                best_us = best / 1000,
                "clock round queued throughout: not used"
            );
            return c;
        }
        Correction::None => {}
        Correction::Step(o) | Correction::Slew(o) => {
            let kind = if matches!(c, Correction::Step(_)) {
                "stepped"
            } else {
                "slewed"
            };
            // Sub-millisecond slews are routine: debug, not info.
            if (o - from).abs() >= 1_000_000 {
                tracing::info!(
                    reference = what,
                    from_us = from / 1000,
                    to_us = o / 1000,
                    "clock {kind}"
                );
            } else {
                tracing::debug!(
                    reference = what,
                    from_us = from / 1000,
                    to_us = o / 1000,
                    "clock {kind}"
                );
            }
            clock.set_offset_ns(o);
        }
    }
    if let Some(est) = est {
        clock.record_sync(clock.now_ms(), est.delay_ns);
    }
    c
}

/// The discipline's limits from `[clock]`.
pub fn limits(cfg: &ClockConfig) -> Limits {
    Limits {
        tolerance_ns: cfg.tolerance_us as i64 * 1000,
        max_slew_ns: cfg.max_slew_us as i64 * 1000,
        persist_rounds: cfg.persist_rounds,
        delay_factor: cfg.delay_factor,
        outlier_mads: cfg.outlier_mads,
        ..Limits::default()
    }
}

/// Keeps this node's clock on the leader's (or, on the leader, on the
/// configured upstream servers) until `stopped` resolves.
pub async fn sync(node: Herald, stopped: impl Future<Output = ()>) {
    tokio::pin!(stopped);
    let cfg = node.config().clock.clone();
    let interval = Duration::from_millis(cfg.sync_interval_ms.max(10));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = Duration::from_millis((cfg.sync_interval_ms / 2).clamp(50, 2000));
    let spread = interval / 5;
    let mut discipline = Discipline::new(limits(&cfg));
    // The reference the discipline knows: a leader id (0 = upstream).
    let mut reference: Option<u64> = None;
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tick.tick() => {}
        }
        let Some((leader, member)) = node.leader() else {
            continue;
        };
        let now_ref = if leader == node.id() { 0 } else { leader };
        if reference.is_some_and(|r| r != now_ref) {
            discipline.reset();
        }
        reference = Some(now_ref);
        if leader == node.id() {
            // The leader is the reference; with upstream servers it follows them.
            let mut samples = Vec::new();
            for server in &cfg.upstream {
                match resolve(server).await {
                    Some(addr) => samples.extend(sample(addr, cfg.samples, timeout, spread).await),
                    None => tracing::debug!(server, "upstream NTP server does not resolve"),
                }
            }
            if !samples.is_empty() {
                adopt(node.clock(), &mut discipline, &samples, "upstream");
            }
            continue;
        }
        if member.time_addr.is_empty() {
            continue; // the leader has no time-sync port
        }
        // A member may be named by host name (`node1:7401` in a compose
        // network), not only by IP: resolve it like an upstream server.
        let Some(addr) = resolve(&member.time_addr).await else {
            tracing::debug!(addr = %member.time_addr, "the leader's time-sync address does not resolve");
            continue;
        };
        let samples = sample(addr, cfg.samples, timeout, spread).await;
        adopt(node.clock(), &mut discipline, &samples, "leader");
    }
}

/// The first address `host:port` (or `ip:port`) resolves to.
async fn resolve(addr: &str) -> Option<SocketAddr> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Some(a);
    }
    tokio::net::lookup_host(addr).await.ok()?.next()
}
