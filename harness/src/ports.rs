//! Loopback ports free for a node to bind (TCP and UDP: the time-sync port
//! is UDP).
//!
//! Ports are taken below Linux's ephemeral range (32768 and up). A port
//! found by binding port 0 is released before the node binds it, and in
//! between an outgoing connection or a proxy's port-0 bind may be handed it
//! (a node then failed with "Address already in use", seen in the chaos
//! suite). Below the range only explicit binds take ports, and a cursor
//! shared by the whole process never returns the same port twice; each
//! process starts at its own offset, so test binaries running side by side
//! rarely probe the same ports.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Result, bail};

/// The lowest port handed out.
const LOW: u32 = 10_000;
/// How many ports above [`LOW`] are used (up to 32000, below the
/// ephemeral range).
const SPAN: u32 = 22_000;

/// `n` loopback ports free for TCP and UDP; fails when the range is used up.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(397) % SPAN;
    let mut ports = Vec::with_capacity(n);
    while ports.len() < n {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        if k >= SPAN {
            bail!("finding free ports: none left below 32768");
        }
        let port = (LOW + (start + k) % SPAN) as u16;
        let tcp = TcpListener::bind(("127.0.0.1", port));
        let udp = UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            ports.push(port);
        }
    }
    Ok(ports)
}

/// One free loopback port.
///
/// # Panics
/// When the range is used up (a test process that started thousands of
/// nodes).
pub fn free_port() -> u16 {
    free_ports(1).expect("a free loopback port")[0]
}

/// A free loopback address (`127.0.0.1:<free port>`).
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_twice() {
        let ports = free_ports(50).expect("ports");
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len());
        assert!(ports.iter().all(|&p| (10_000..32_768).contains(&p)));
        assert!(!ports.contains(&free_port()));
    }
}
