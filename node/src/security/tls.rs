//! TLS on every listener, and what a connection's certificate says.
//!
//! One acceptor serves all three TCP listeners (client gRPC, peer gRPC,
//! HTTP): it accepts, runs each TLS handshake in its own task with a
//! deadline (a slow or silent client never holds up the next accept), reads
//! who the verified client certificate names once per connection, and hands
//! the finished connection to tonic or axum with that [`PeerInfo`] attached.
//! The auth guard (`security::guard`) reads it from every request.
//!
//! - **Client gRPC and HTTP**: the node's certificate; a client certificate
//!   is optional (a caller may use a bearer token instead) but, when given,
//!   must chain to the cluster's CA and be valid now, or the handshake fails.
//! - **Peer gRPC**: mutual TLS; a client certificate chaining to the CA is
//!   required by the handshake itself, and the guard then admits only
//!   certificates that name a node.
//!
//! In insecure mode the same acceptor passes plain TCP through, so the rest
//! of the node does not care which mode it runs in.
//!
//! Each listener has a connection cap ([`ConnCap`], `limits.max_*_connections`):
//! a connection over it is closed as soon as it is accepted, before any
//! handshake, and counted; the ones already open are not disturbed. Every
//! accepted connection holds its slot until it closes.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use herald_certs::CertIdentity;
use prometheus_client::metrics::counter::Counter;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::TlsConfig;

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the node's TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file is missing, unreadable or holds no usable PEM.
    #[error("tls.{field} = {path}: {why}")]
    File {
        /// The config field.
        field: &'static str,
        /// The file.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// rustls refused the combination (e.g. the key does not match the certificate).
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    /// The node's own certificate does not name this node.
    #[error("tls.cert_file = {path}: {why}")]
    Identity {
        /// The file.
        path: String,
        /// What it names instead.
        why: String,
    },
}

fn file_error(field: &'static str, path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        field,
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A node's TLS settings, loaded once at start.
#[derive(Clone)]
pub struct NodeTls {
    /// Client gRPC: client certificates optional, verified when given.
    pub client: Arc<ServerConfig>,
    /// HTTP: as `client`, over HTTP/1.1.
    pub http: Arc<ServerConfig>,
    /// Peer gRPC: client certificates required.
    pub peer: Arc<ServerConfig>,
    /// What this node trusts and presents when it dials a peer or another
    /// node's admin API.
    pub dial: tonic::transport::ClientTlsConfig,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls").finish_non_exhaustive()
    }
}

impl NodeTls {
    /// Reads the CA, the node's certificate and key, and checks that the
    /// certificate names node `id` (a node started with another node's
    /// certificate would be refused by every peer, so say it now).
    pub fn load(files: &TlsConfig, id: u64) -> Result<NodeTls, TlsError> {
        let ca_pem =
            std::fs::read(&files.ca_file).map_err(|e| file_error("ca_file", &files.ca_file, e))?;
        let cert_pem = std::fs::read(&files.cert_file)
            .map_err(|e| file_error("cert_file", &files.cert_file, e))?;
        let key_pem = std::fs::read(&files.key_file)
            .map_err(|e| file_error("key_file", &files.key_file, e))?;

        let mut roots = rustls::RootCertStore::empty();
        let mut found = 0;
        for cert in CertificateDer::pem_slice_iter(&ca_pem) {
            let cert = cert.map_err(|e| file_error("ca_file", &files.ca_file, e))?;
            roots
                .add(cert)
                .map_err(|e| file_error("ca_file", &files.ca_file, e))?;
            found += 1;
        }
        if found == 0 {
            return Err(file_error(
                "ca_file",
                &files.ca_file,
                "no PEM certificate in it",
            ));
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| file_error("cert_file", &files.cert_file, e))?;
        let Some(leaf) = chain.first() else {
            return Err(file_error(
                "cert_file",
                &files.cert_file,
                "no PEM certificate in it",
            ));
        };
        match herald_certs::identity_of(leaf) {
            Ok(CertIdentity::Node(n)) if n == id => {}
            Ok(CertIdentity::Node(n)) => {
                return Err(TlsError::Identity {
                    path: files.cert_file.display().to_string(),
                    why: format!("it is node {n}'s certificate, but this node's id is {id}"),
                });
            }
            Ok(CertIdentity::User(u)) => {
                return Err(TlsError::Identity {
                    path: files.cert_file.display().to_string(),
                    why: format!(
                        "it is a client certificate (user {u:?}), not a node certificate \
                         (heraldctl cert create-node --id {id})"
                    ),
                });
            }
            Err(e) => {
                return Err(TlsError::Identity {
                    path: files.cert_file.display().to_string(),
                    why: e.to_string(),
                });
            }
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| file_error("key_file", &files.key_file, e))?;

        let roots = Arc::new(roots);
        let server = |client_auth_required: bool, alpn: &[&[u8]]| -> Result<_, TlsError> {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
            let verifier = if client_auth_required {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            }
            .map_err(|e| file_error("ca_file", &files.ca_file, e))?;
            let mut config = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain.clone(), key.clone_key())?;
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(Arc::new(config))
        };
        let dial = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&ca_pem))
            .identity(tonic::transport::Identity::from_pem(&cert_pem, &key_pem));
        Ok(NodeTls {
            client: server(false, &[b"h2"])?,
            http: server(false, &[b"http/1.1"])?,
            peer: server(true, &[b"h2"])?,
            dial,
        })
    }
}

/// What a connection's client certificate said, read once at the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerCert {
    /// No certificate (plaintext, or TLS without one).
    None,
    /// A certificate from the cluster's CA naming a node or a user.
    Named(CertIdentity),
    /// A certificate from the cluster's CA that names no one Herald knows.
    Unusable(String),
}

/// Who is on the other end of a connection, as far as the transport knows.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The caller's address.
    pub remote: Option<SocketAddr>,
    /// Its verified client certificate, if any.
    pub cert: PeerCert,
}

/// One accepted connection: plain TCP (insecure mode) or TLS.
pub struct Conn {
    io: Io,
    info: PeerInfo,
    /// Its slot under the listener's cap, given back when it closes.
    _slot: Slot,
}

/// A listener's connection cap and the metrics that show it.
#[derive(Clone)]
pub struct ConnCap {
    slots: Arc<Semaphore>,
    /// `herald_connections_open{listener}`.
    open: prometheus_client::metrics::gauge::Gauge,
    /// `herald_connections_refused_total{listener}`.
    refused: Counter,
}

impl ConnCap {
    /// At most `max` open connections; `open` and `refused` count them.
    pub fn new(
        max: usize,
        open: prometheus_client::metrics::gauge::Gauge,
        refused: Counter,
    ) -> Self {
        ConnCap {
            slots: Arc::new(Semaphore::new(max)),
            open,
            refused,
        }
    }

    /// A slot for a connection just accepted, or `None` (counted) when the
    /// listener is full.
    fn admit(&self) -> Option<Slot> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Some(Slot {
                _permit: permit,
                _open: crate::metrics::GaugeGuard::new(self.open.clone()),
            }),
            Err(_) => {
                self.refused.inc();
                None
            }
        }
    }
}

/// One connection's place under its listener's cap.
struct Slot {
    _permit: OwnedSemaphorePermit,
    _open: crate::metrics::GaugeGuard,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    /// What is known about the caller.
    pub fn info(&self) -> &PeerInfo {
        &self.info
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

/// The connections a listener accepted, handshakes done: a `Stream` for
/// tonic and a `Listener` for axum.
pub struct Incoming {
    rx: mpsc::Receiver<Conn>,
    local: SocketAddr,
}

/// Starts accepting on `listener` until `stop` turns true. `tls` = `None`
/// serves plain TCP (insecure mode). Failed handshakes are dropped and
/// counted in `failures`; nothing about them reaches the services.
/// Connections over `cap` are closed at once.
pub fn accept(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    what: &'static str,
    failures: Counter,
    cap: ConnCap,
    mut stop: watch::Receiver<bool>,
) -> io::Result<Incoming> {
    let local = listener.local_addr()?;
    // A short queue: accepting faster than the server takes connections
    // only moves the backlog from the kernel into memory.
    let (tx, rx) = mpsc::channel(64);
    let acceptor = tls.map(TlsAcceptor::from);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(pair) => pair,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(listener = what, error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => return,
            };
            let Some(slot) = cap.admit() else {
                // Dropped: closed before a byte is read or a handshake run.
                tracing::debug!(listener = what, %remote, "connection refused: the listener is at its cap");
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let Some(acceptor) = acceptor.clone() else {
                let info = PeerInfo {
                    remote: Some(remote),
                    cert: PeerCert::None,
                };
                if tx
                    .send(Conn {
                        io: Io::Plain(tcp),
                        info,
                        _slot: slot,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            };
            let tx = tx.clone();
            let failures = failures.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let cert = match stream.get_ref().1.peer_certificates() {
                            Some([leaf, ..]) => match herald_certs::identity_of(leaf) {
                                Ok(id) => PeerCert::Named(id),
                                Err(e) => PeerCert::Unusable(e.to_string()),
                            },
                            _ => PeerCert::None,
                        };
                        let info = PeerInfo {
                            remote: Some(remote),
                            cert,
                        };
                        let _ = tx
                            .send(Conn {
                                io: Io::Tls(Box::new(stream)),
                                info,
                                _slot: slot,
                            })
                            .await;
                    }
                    Ok(Err(e)) => {
                        failures.inc();
                        tracing::debug!(listener = what, %remote, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        failures.inc();
                        tracing::debug!(listener = what, %remote, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    Ok(Incoming { rx, local })
}

impl futures::Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().rx.poll_recv(cx).map(|c| c.map(Ok))
    }
}

impl axum::serve::Listener for Incoming {
    type Io = Conn;
    type Addr = PeerInfo;

    async fn accept(&mut self) -> (Conn, PeerInfo) {
        match self.rx.recv().await {
            Some(conn) => {
                let info = conn.info.clone();
                (conn, info)
            }
            // The acceptor stopped (shutdown): axum's graceful shutdown
            // ends the server; there is nothing more to accept.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<PeerInfo> {
        Ok(PeerInfo {
            remote: Some(self.local),
            cert: PeerCert::None,
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Incoming>>
    for PeerInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, Incoming>) -> Self {
        stream.remote_addr().clone()
    }
}
