//! A TCP proxy for one directed peer link, with faults.
//!
//! Node `i` dials node `j` through the proxy of link `i -> j` (the node's
//! `[peer_routes]`), so cutting that proxy cuts exactly what `i` sends to `j`
//! and the answers to it: gRPC carries a call's request and response on the
//! connection the caller opened. `j -> i` is a different proxy. Written here
//! rather than taken from a crate because it is small and the faults need to
//! act on live connections (a stall must freeze established streams, not
//! only refuse new ones).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a link does to its traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    /// Forward everything at once.
    Pass,
    /// Forward every chunk after this delay (order kept).
    Delay(Duration),
    /// Blackhole: accept connections, forward nothing, keep everything
    /// buffered; traffic resumes where it stopped when the link heals (a
    /// partition TCP survives).
    Stall,
    /// Reset every open connection and every new one (a partition that
    /// breaks connections, or a peer restarting).
    Drop,
}

/// One directed link's proxy. Dropping it stops the proxy.
#[derive(Debug)]
pub struct Link {
    /// Sender node id.
    pub from: u64,
    /// Receiver node id.
    pub to: u64,
    /// Where the sender dials.
    pub listen: SocketAddr,
    mode: watch::Sender<LinkMode>,
    task: JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Link {
    /// Binds a proxy on a free loopback port that forwards to `upstream`.
    pub async fn start(from: u64, to: u64, upstream: SocketAddr) -> Result<Link> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a proxy port")?;
        let listen = listener.local_addr()?;
        let (mode, rx) = watch::channel(LinkMode::Pass);
        let task = tokio::spawn(accept_loop(listener, upstream, rx));
        Ok(Link {
            from,
            to,
            listen,
            mode,
            task,
        })
    }

    /// Sets the link's mode; live connections follow at once.
    pub fn set(&self, mode: LinkMode) {
        self.mode.send_replace(mode);
    }

    /// The current mode.
    pub fn mode(&self) -> LinkMode {
        *self.mode.borrow()
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, rx: watch::Receiver<LinkMode>) {
    // Connection tasks end with the proxy: they are aborted when it is.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((socket, _)) = accepted else { continue };
                if *rx.borrow() == LinkMode::Drop {
                    drop(socket);
                    continue;
                }
                conns.spawn(connection(socket, upstream, rx.clone()));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn connection(socket: TcpStream, upstream: SocketAddr, mut rx: watch::Receiver<LinkMode>) {
    // A stalled link does not even connect upstream until it heals.
    loop {
        match *rx.borrow_and_update() {
            LinkMode::Drop => return,
            LinkMode::Stall => {}
            _ => break,
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
    let Ok(up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = socket.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let (down_r, down_w) = socket.into_split();
    let (up_r, up_w) = up.into_split();
    tokio::join!(
        pump(down_r, up_w, rx.clone()),
        pump(up_r, down_w, rx.clone())
    );
}

/// Copies one direction, obeying the mode between chunks. Returns on EOF,
/// on an error, or when the link is set to drop (both directions see it).
///
/// Reading and writing are separate halves joined by a queue, so a delay is
/// a pipeline (every chunk arrives `d` after it was read) rather than a
/// per-chunk pause that would also throttle the link.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut rx: watch::Receiver<LinkMode>,
) {
    let (tx, mut queue) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(1024);
    let writer_mode = rx.clone();
    let writer = async move {
        while let Some((due, chunk)) = queue.recv().await {
            tokio::time::sleep_until(due).await;
            if *writer_mode.borrow() == LinkMode::Drop || to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let mode = *rx.borrow_and_update();
            let delay = match mode {
                LinkMode::Drop => return,
                LinkMode::Stall => {
                    if rx.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
                LinkMode::Pass => Duration::ZERO,
                LinkMode::Delay(d) => d,
            };
            tokio::select! {
                read = from.read(&mut buf) => {
                    let n = match read {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let due = tokio::time::Instant::now() + delay;
                    if tx.send((due, buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server, a proxy in front, and a client: each mode does what
    /// it says to a live connection.
    #[tokio::test]
    async fn modes_act_on_live_connections() {
        let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let echo_addr = echo.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let link = Link::start(1, 2, echo_addr).await.expect("proxy");
        let mut c = TcpStream::connect(link.listen).await.expect("connect");
        let mut buf = [0u8; 5];
        c.write_all(b"hello").await.expect("write");
        c.read_exact(&mut buf).await.expect("echo");
        assert_eq!(&buf, b"hello");

        // Stall: nothing comes back, then everything does after healing.
        link.set(LinkMode::Stall);
        c.write_all(b"again").await.expect("write");
        let stalled =
            tokio::time::timeout(Duration::from_millis(300), c.read_exact(&mut buf)).await;
        assert!(stalled.is_err(), "a stalled link forwards nothing");
        link.set(LinkMode::Pass);
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut buf))
            .await
            .expect("healed")
            .expect("echo");
        assert_eq!(&buf, b"again");

        // Delay: the answer comes, late.
        link.set(LinkMode::Delay(Duration::from_millis(200)));
        let t = tokio::time::Instant::now();
        c.write_all(b"slow!").await.expect("write");
        c.read_exact(&mut buf).await.expect("echo");
        assert!(t.elapsed() >= Duration::from_millis(200));

        // Drop: the connection is closed, new ones are reset.
        link.set(LinkMode::Drop);
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest))
            .await
            .expect("closed promptly");
        assert!(n.map(|n| n == 0).unwrap_or(true));
        assert_eq!(link.mode(), LinkMode::Drop);
    }
}
