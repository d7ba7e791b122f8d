//! Leader-based time sync over SNTP (P-publish's "standard time server").
//!
//! Every node answers SNTP (NTPv4 server mode, RFC 4330) on its time-sync
//! port with its *cluster* clock. Followers query the current leader with
//! the `rsntp` tokio client every `clock.sync_interval_ms`; the leader may
//! query upstream NTP servers the same way, or is its own reference. Nobody
//! touches the system clock: a correction only changes this node's offset.
//!
//! Each round takes several samples and keeps the lower-delay half (queueing
//! only ever adds delay, and it is what skews an offset estimate), then the
//! median offset of those. An error above `clock.step_threshold_ms` is
//! *stepped* (set at once: a node started seconds off must be right within a
//! sync interval, and cluster time on a follower feeds nothing replicated);
//! a smaller error above `clock.tolerance_us` is *slewed*, corrected by half
//! per round, so reads and SNTP answers never see a jump.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::clock::ClusterClock;
use crate::node::Herald;

/// Seconds between the NTP era (1900) and the Unix epoch.
const NTP_UNIX_DELTA: u64 = 2_208_988_800;

/// Nanoseconds since the Unix epoch to an NTP timestamp (32.32 fixed point).
pub fn ntp_timestamp(unix_ns: i64) -> [u8; 8] {
    let ns = unix_ns.max(0) as u64;
    let secs = ns / 1_000_000_000 + NTP_UNIX_DELTA;
    let frac = ((ns % 1_000_000_000) << 32) / 1_000_000_000;
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&(secs as u32).to_be_bytes());
    out[4..].copy_from_slice(&(frac as u32).to_be_bytes());
    out
}

/// What a node says about its own time source when it answers SNTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// 1 = primary reference, 2.. = synced to one, 16 = unsynchronized.
    pub stratum: u8,
    /// Reference id: ASCII for stratum 1, the reference's IPv4 otherwise.
    pub reference_id: [u8; 4],
    /// Cluster time (ns) of the last sync, 0 if none.
    pub reference_ns: i64,
}

/// Builds the server reply to one client request, or `None` for a packet
/// that is not an SNTP client request. Pure: times are passed in.
pub fn reply(
    request: &[u8],
    receive_ns: i64,
    transmit_ns: i64,
    source: Source,
) -> Option<[u8; 48]> {
    if request.len() < 48 {
        return None;
    }
    let version = (request[0] >> 3) & 0x07;
    let mode = request[0] & 0x07;
    if mode != 3 || !(1..=4).contains(&version) {
        return None;
    }
    let mut out = [0u8; 48];
    let leap = if source.stratum >= 16 { 3 } else { 0 };
    out[0] = (leap << 6) | (version << 3) | 4; // server mode, echo the version
    out[1] = source.stratum;
    out[2] = request[2]; // poll
    out[3] = (-20i8) as u8; // precision ~ 1 us
    // root delay and dispersion (bytes 4..12) stay zero: one hop on a LAN.
    out[12..16].copy_from_slice(&source.reference_id);
    if source.reference_ns > 0 {
        out[16..24].copy_from_slice(&ntp_timestamp(source.reference_ns));
    }
    out[24..32].copy_from_slice(&request[40..48]); // originate = client's transmit
    out[32..40].copy_from_slice(&ntp_timestamp(receive_ns));
    out[40..48].copy_from_slice(&ntp_timestamp(transmit_ns));
    Some(out)
}

/// Serves SNTP on `socket` until `stopped` resolves.
pub async fn serve(node: Herald, socket: UdpSocket, stopped: impl Future<Output = ()>) {
    tokio::pin!(stopped);
    let mut buf = [0u8; 512];
    loop {
        let (len, peer) = tokio::select! {
            _ = &mut stopped => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!("sntp recv: {e}");
                    continue;
                }
            },
        };
        let clock = node.clock();
        let receive_ns = clock.now_ns();
        let source = node.time_source();
        if let Some(out) = reply(&buf[..len], receive_ns, clock.now_ns(), source)
            && let Err(e) = socket.send_to(&out, peer).await
        {
            tracing::debug!("sntp send to {peer}: {e}");
        }
    }
}

/// One sync round's estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Reference time minus local *system* time, in ns: the offset to adopt.
    pub offset_ns: i64,
    /// Round-trip delay of the samples used, in ns.
    pub delay_ns: u64,
}

/// Combines samples `(offset_ns, delay_ns)`: keep the lower-delay half,
/// take their median offset. `None` without samples.
pub fn estimate(samples: &[(i64, u64)]) -> Option<Estimate> {
    if samples.is_empty() {
        return None;
    }
    let mut by_delay = samples.to_vec();
    by_delay.sort_by_key(|s| s.1);
    let keep = &mut by_delay[..samples.len().div_ceil(2)];
    let delay_ns = keep.iter().map(|s| s.1).max().unwrap_or(0);
    keep.sort_by_key(|s| s.0);
    let offset_ns = keep[keep.len() / 2].0;
    Some(Estimate {
        offset_ns,
        delay_ns,
    })
}

/// How to move from the current offset to an estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Correction {
    /// Within tolerance: leave the clock alone.
    None,
    /// Large error: set the offset at once.
    Step(i64),
    /// Small error: move half-way this round.
    Slew(i64),
}

/// Decides the correction for `current` offset given the `target` offset.
pub fn correction(current_ns: i64, target_ns: i64, tolerance_ns: i64, step_ns: i64) -> Correction {
    let error = target_ns - current_ns;
    if error.abs() <= tolerance_ns {
        Correction::None
    } else if error.abs() >= step_ns {
        Correction::Step(target_ns)
    } else {
        Correction::Slew(current_ns + error / 2)
    }
}

/// Takes `n` SNTP samples of `server`; failed samples are skipped.
async fn sample(server: SocketAddr, n: u32, timeout: Duration) -> Vec<(i64, u64)> {
    let client = rsntp::AsyncSntpClient::with_config(rsntp::Config::default().timeout(timeout));
    let mut out = Vec::new();
    for _ in 0..n {
        match client.synchronize(server.to_string().as_str()).await {
            Ok(r) => {
                let offset = (r.clock_offset().as_secs_f64() * 1e9) as i64;
                let delay = (r.round_trip_delay().as_secs_f64() * 1e9).max(0.0) as u64;
                out.push((offset, delay));
            }
            Err(e) => tracing::debug!(%server, "sntp sample: {e}"),
        }
    }
    out
}

/// Applies one round's estimate to `clock`; returns the correction made.
fn adopt(
    clock: &ClusterClock,
    est: Estimate,
    tolerance_ns: i64,
    step_ns: i64,
    what: &str,
) -> Correction {
    let c = correction(clock.offset_ns(), est.offset_ns, tolerance_ns, step_ns);
    match c {
        Correction::None => {}
        Correction::Step(o) => {
            tracing::info!(
                reference = what,
                from_us = clock.offset_ns() / 1000,
                to_us = o / 1000,
                "clock stepped"
            );
            clock.set_offset_ns(o);
        }
        Correction::Slew(o) => {
            tracing::info!(
                reference = what,
                from_us = clock.offset_ns() / 1000,
                to_us = o / 1000,
                "clock slewed"
            );
            clock.set_offset_ns(o);
        }
    }
    clock.record_sync(clock.now_ms(), est.delay_ns);
    c
}

/// Keeps this node's clock on the leader's (or, on the leader, on the
/// configured upstream servers) until `stopped` resolves.
pub async fn sync(node: Herald, stopped: impl Future<Output = ()>) {
    tokio::pin!(stopped);
    let cfg = node.config().clock.clone();
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.sync_interval_ms.max(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let tolerance = cfg.tolerance_us as i64 * 1000;
    let step = cfg.step_threshold_ms as i64 * 1_000_000;
    let timeout = Duration::from_millis((cfg.sync_interval_ms / 2).clamp(50, 2000));
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tick.tick() => {}
        }
        let Some((leader, member)) = node.leader() else {
            continue;
        };
        if leader == node.id() {
            // The leader is the reference; with upstream servers it follows them.
            let mut samples = Vec::new();
            for server in &cfg.upstream {
                match tokio::net::lookup_host(server.as_str())
                    .await
                    .ok()
                    .and_then(|mut a| a.next())
                {
                    Some(addr) => samples.extend(sample(addr, cfg.samples, timeout).await),
                    None => tracing::debug!(server, "upstream NTP server does not resolve"),
                }
            }
            if let Some(est) = estimate(&samples) {
                adopt(node.clock(), est, tolerance, step, "upstream");
            }
            continue;
        }
        let Ok(addr) = member.time_addr.parse::<SocketAddr>() else {
            continue; // the leader has no time-sync port
        };
        if let Some(est) = estimate(&sample(addr, cfg.samples, timeout).await) {
            adopt(node.clock(), est, tolerance, step, "leader");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_request(transmit: [u8; 8]) -> [u8; 48] {
        let mut r = [0u8; 48];
        r[0] = (4 << 3) | 3;
        r[40..48].copy_from_slice(&transmit);
        r
    }

    #[test]
    fn ntp_timestamps_count_from_1900() {
        let t = ntp_timestamp(1_500_000_000); // 1.5 s after the Unix epoch
        assert_eq!(
            u32::from_be_bytes(t[..4].try_into().unwrap()) as u64,
            NTP_UNIX_DELTA + 1
        );
        assert_eq!(u32::from_be_bytes(t[4..].try_into().unwrap()), 1 << 31);
    }

    #[test]
    fn reply_echoes_the_originate_and_stamps_cluster_times() {
        let req = client_request([9, 9, 9, 9, 1, 2, 3, 4]);
        let src = Source {
            stratum: 1,
            reference_id: *b"HRLD",
            reference_ns: 0,
        };
        let out = reply(&req, 1_000_000_000, 2_000_000_000, src).unwrap();
        assert_eq!(out[0] & 0x07, 4, "server mode");
        assert_eq!((out[0] >> 3) & 0x07, 4, "version echoed");
        assert_eq!(out[1], 1);
        assert_eq!(&out[12..16], b"HRLD");
        assert_eq!(&out[24..32], &[9, 9, 9, 9, 1, 2, 3, 4]);
        assert_eq!(out[32..40], ntp_timestamp(1_000_000_000));
        assert_eq!(out[40..48], ntp_timestamp(2_000_000_000));
        // Unsynchronized servers say so (leap = 3, stratum 16).
        let out = reply(&req, 1, 2, Source { stratum: 16, ..src }).unwrap();
        assert_eq!(out[0] >> 6, 3);
        // Not a client request: no answer.
        let mut bad = req;
        bad[0] = (4 << 3) | 4;
        assert!(reply(&bad, 1, 2, src).is_none());
        assert!(reply(&req[..40], 1, 2, src).is_none());
    }

    #[test]
    fn estimate_prefers_low_delay_samples() {
        // Two queued samples with wild offsets lose to three quick ones.
        let s = [
            (5_000, 100),
            (900_000, 50_000),
            (5_200, 120),
            (-700_000, 40_000),
            (5_100, 110),
        ];
        let e = estimate(&s).unwrap();
        assert_eq!(e.offset_ns, 5_100);
        assert_eq!(e.delay_ns, 120);
        assert!(estimate(&[]).is_none());
    }

    #[test]
    fn large_errors_step_small_ones_slew_tiny_ones_stay() {
        let (tol, step) = (500_000, 50_000_000);
        assert_eq!(
            correction(0, 5_000_000_000, tol, step),
            Correction::Step(5_000_000_000)
        );
        assert_eq!(
            correction(0, 10_000_000, tol, step),
            Correction::Slew(5_000_000)
        );
        assert_eq!(correction(0, 400_000, tol, step), Correction::None);
    }
}
