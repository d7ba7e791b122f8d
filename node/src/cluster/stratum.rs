//! The clock's pure rules: what a node says about its time source (its
//! stratum) and the SNTP reply it builds from that.
//!
//! The leader is the cluster's reference (stratum 1); a follower that
//! synced with it recently is stratum 2; any other node admits being
//! unsynchronized (stratum 16, leap bits 3), so an NTP client never trusts
//! a node that lost its leader. Times and the node's role come in as
//! arguments; `timesync.rs` (the shell) owns the socket, the thread and the
//! sync loop, and [`super::discipline`] filters the samples it takes.

use std::net::{IpAddr, SocketAddr};

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

/// What the stratum rules look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// This node leads.
    pub leader: bool,
    /// Cluster time now (ns since the Unix epoch).
    pub now_ns: i64,
    /// Cluster time now (ms since the Unix epoch).
    pub now_ms: u64,
    /// Cluster time (ms) of the last sync with the leader, 0 if none.
    pub last_sync_ms: u64,
    /// `clock.sync_interval_ms`: a sync within four of these is fresh.
    pub sync_interval_ms: u64,
    /// The leader's time-sync address, if known.
    pub leader_time_addr: Option<SocketAddr>,
}

/// What this node's SNTP server says about its time source: the leader
/// is the reference (stratum 1); a follower that synced recently is
/// stratum 2; otherwise it admits being unsynchronized (16).
pub fn source(o: &Observed) -> Source {
    if o.leader {
        return Source {
            stratum: 1,
            reference_id: *b"HRLD",
            reference_ns: o.now_ns,
        };
    }
    let fresh = 4 * o.sync_interval_ms;
    if o.last_sync_ms > 0 && o.now_ms.saturating_sub(o.last_sync_ms) <= fresh {
        let reference_id = o
            .leader_time_addr
            .and_then(|a| match a.ip() {
                IpAddr::V4(v4) => Some(v4.octets()),
                IpAddr::V6(_) => None,
            })
            .unwrap_or([0; 4]);
        Source {
            stratum: 2,
            reference_id,
            reference_ns: (o.last_sync_ms as i64) * 1_000_000,
        }
    } else {
        Source {
            stratum: 16,
            reference_id: *b"INIT",
            reference_ns: 0,
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

    /// (leader?, ms since the last sync (None: never), leader address) ->
    /// (stratum, reference id); the sync interval is 1 s, fresh for 4.
    #[test]
    fn stratum_table() {
        let v4: SocketAddr = "10.1.2.3:7300".parse().unwrap();
        let v6: SocketAddr = "[::1]:7300".parse().unwrap();
        let now_ms = 1_000_000;
        type Row = (bool, Option<u64>, Option<SocketAddr>, u8, [u8; 4]);
        let table: [Row; 7] = [
            (true, None, None, 1, *b"HRLD"),
            (true, Some(60_000), Some(v4), 1, *b"HRLD"),
            (false, Some(0), Some(v4), 2, [10, 1, 2, 3]),
            (false, Some(4000), Some(v4), 2, [10, 1, 2, 3]),
            (false, Some(4001), Some(v4), 16, *b"INIT"),
            (false, None, Some(v4), 16, *b"INIT"),
            // A reference without an IPv4 address is named 0.0.0.0.
            (false, Some(10), Some(v6), 2, [0; 4]),
        ];
        for (leader, ago, addr, stratum, id) in table {
            let o = Observed {
                leader,
                now_ns: now_ms as i64 * 1_000_000,
                now_ms,
                last_sync_ms: ago.map_or(0, |a| now_ms - a),
                sync_interval_ms: 1000,
                leader_time_addr: addr,
            };
            let s = source(&o);
            assert_eq!((s.stratum, s.reference_id), (stratum, id), "{o:?}");
            match s.stratum {
                1 => assert_eq!(s.reference_ns, o.now_ns),
                2 => assert_eq!(s.reference_ns, o.last_sync_ms as i64 * 1_000_000),
                _ => assert_eq!(s.reference_ns, 0),
            }
        }
    }
}
