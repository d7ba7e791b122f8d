//! Starting and stopping a node: open the data dir, build Raft on its own
//! runtime, join or found the cluster, serve the peer, client/admin and HTTP
//! listeners, and shut all of it down cleanly.
//!
//! Fail-stop: a node whose storage failed (a failed `fdatasync`, `ENOSPC`,
//! `EMFILE`, a read error), or whose Raft core stopped for any other reason,
//! must not linger as a zombie that answers `/health` and serves stale
//! reads. [`RunningNode::failed`] resolves with the cause (the operation
//! and the file), [`serve`] logs it and returns an error, and the binary
//! exits non-zero so its supervisor restarts it (and the restart refuses a
//! log it cannot trust).

use std::future::Future;
use std::time::Duration;

use crate::peer::proto::peer_server::PeerServer;
use ::herald_client::proto::admin_server::AdminServer;
use ::herald_client::proto::auth_server::AuthServer;
use ::herald_client::proto::herald_server::HeraldServer;
use ::herald_client::proto::share_server::ShareServer;
use anyhow::Context;
use openraft::async_runtime::WatchReceiver;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api;
use crate::api::layer::{Listener, ObserveLayer};
use crate::clock::ClusterClock;
use crate::config::Config;
use crate::metrics::{ListenerLabel, Metrics, ServerLabel};
use crate::node::{Herald, Inner};
use crate::raft::Raft;
use crate::raft::free_space::FreeSpace;
use crate::raft::identity::IdentityCell;
use crate::raft::log_store::{LogOptions, LogStore};
use crate::raft::network::{LogTail, Network, PeerChannels, PeerStamp};
use crate::raft::runtime::RaftRuntime;
use crate::raft::state_store::StateStore;
use crate::security::tls::ConnCap;
use crate::security::{Gate, Guard, GuardLayer, NodeTls};

/// A node running in this process (the binary runs one; tests run several).
pub struct RunningNode {
    /// The node handle.
    pub herald: Herald,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    db: sled::Db,
    /// Dropped last: Raft's core and the peer listener run on it.
    raft_rt: RaftRuntime,
}

fn raft_config(config: &Config) -> anyhow::Result<openraft::Config> {
    let t = &config.raft;
    // Lower numbers time out first, so they tend to win elections.
    let (election_min, election_max) = crate::cluster::failover::election_timeouts(config);
    let rc = openraft::Config {
        cluster_name: "herald".into(),
        heartbeat_interval: t.heartbeat_ms,
        election_timeout_min: election_min,
        election_timeout_max: election_max,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(t.snapshot_every),
        max_in_snapshot_log_to_keep: t.keep_logs_after_snapshot,
        install_snapshot_timeout: 30_000,
        // A restarted leader must win an election like anyone else. Restoring
        // leadership at once is only safe when the committed index and the
        // state machine are durable on every commit; ours are not (the state
        // is in memory and replays to the last *flushed* commit index), so a
        // restored leader would answer ReadIndex reads from a state behind
        // acknowledged writes. A new term's no-op entry fixes that: reads
        // wait until it is committed and applied. Found by the chaos suite.
        enable_leader_restore: Some(false),
        ..Default::default()
    };
    Ok(rc.validate()?)
}

/// Opens sled with a bounded page cache. sled holds nothing a node of this
/// build writes: it is opened so the log store and the state store can
/// move what an older build kept there (log entries, vote, snapshot) into
/// their own files, once. Its cache stays small for that.
fn open_db(config: &Config) -> anyhow::Result<sled::Db> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
    sled::Config::new()
        .path(config.data_dir.join("sled"))
        .cache_capacity(config.raft.cache_bytes)
        .flush_every_ms(None)
        .mode(sled::Mode::HighThroughput)
        .open()
        .with_context(|| format!("opening sled in {}", config.data_dir.display()))
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} listener on {addr}"))
}

/// Raises this process's open-file limit (`RLIMIT_NOFILE`) to its hard
/// limit and returns the new soft limit. Every connection, log segment and
/// snapshot is a file descriptor: at a soft limit of 1024, about a thousand
/// idle sockets made the next log roll fail with EMFILE (issue 17).
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
    }
    Ok(lim.rlim_cur)
}

/// Serves the HTTP listener's connections: HTTP/1.1 with a header-read
/// deadline (a client that has not sent a request's headers within
/// `limits.http_header_timeout_ms` is disconnected, so slowloris
/// connections do not pile up), each connection's `PeerInfo` in its
/// requests as `ConnectInfo`, and a graceful end when `stop` turns true.
async fn serve_http(
    mut incoming: crate::security::tls::Incoming,
    app: axum::Router,
    header_timeout: Duration,
    stop: watch::Receiver<bool>,
) {
    use axum::serve::Listener as _;
    let mut stopping = stop.clone();
    loop {
        let (conn, info) = tokio::select! {
            c = incoming.accept() => c,
            _ = async { stopping.wait_for(|s| *s).await.map(|_| ()) } => return,
        };
        let app = app.clone();
        let svc =
            hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(info.clone()));
                let mut app = app.clone();
                async move { tower::Service::call(&mut app, req).await }
            });
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(conn), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    tracing::debug!(error = %e, "http connection ended");
                },
                _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

/// Starts a node and returns once every listener is bound, in named steps:
/// [`announce`] the process's limits and modes, [`open_storage`], build
/// Raft on its own runtime, [`bind_listeners`] (a taken port fails the
/// start), make the [`Herald`] handle, [`serve_peer`], [`serve_client`]
/// and the HTTP listener, then [`spawn_mechanisms`].
pub async fn start(config: Config) -> anyhow::Result<RunningNode> {
    config.validate()?;
    let metrics = Metrics::new();
    announce(&config, &metrics);
    let tls = match &config.tls {
        Some(files) => Some(NodeTls::load(files, config.id)?),
        None => None,
    };
    let storage = open_storage(&config, &metrics).await?;
    let routes = config
        .peer_routes
        .iter()
        .filter_map(|(id, addr)| Some((id.parse::<u64>().ok()?, addr.clone())))
        .collect();
    let peers = PeerChannels::with_routes(
        routes,
        tls.as_ref().map(|t| t.dial.clone()),
        Some(PeerStamp::new(
            storage.identity.clone(),
            storage.store.clone(),
            storage.tail,
        )),
    );
    // Raft's core tasks are spawned where it is built: on its own thread.
    let raft_rt = RaftRuntime::start(config.id).context("starting the raft thread")?;
    let raft = raft_rt
        .run({
            let (rc, network) = (
                raft_config(&config)?,
                Network::new(peers.with_own_connections()),
            );
            let (log, store) = (storage.log.clone(), storage.store.clone());
            async move { Raft::new(config.id, std::sync::Arc::new(rc), network, log, store).await }
        })
        .await?
        .context("starting raft")?;
    let listeners = bind_listeners(&config).await?;

    let (stop, stop_rx) = watch::channel(false);
    let clock = ClusterClock::with_offset_ms(config.clock.initial_offset_ms);
    let guard = Guard::new(
        &config,
        storage.store.clone(),
        clock.clone(),
        metrics.clone(),
    );
    let herald = Herald::new(Inner {
        config: config.clone(),
        raft: raft.clone(),
        store: storage.store,
        log: storage.log,
        clock,
        peers,
        stopping: stop_rx.clone(),
        ownership: crate::cluster::owner::Ownership::new(config.id, config.ring.vnodes),
        storage_beats: Default::default(),
        metrics: metrics.clone(),
        leader_contact: Default::default(),
        guard: guard.clone(),
        identity: storage.identity,
        stamp: Default::default(),
        space: storage.space.clone(),
        pending_writes: std::sync::Arc::new(tokio::sync::Semaphore::new(
            config.limits.max_pending_writes,
        )),
        watch_slots: std::sync::Arc::new(tokio::sync::Semaphore::new(
            config.limits.max_watch_streams,
        )),
    });
    let accept = Acceptor {
        metrics: metrics.clone(),
        stop: stop_rx.clone(),
    };
    let mut tasks = vec![
        serve_peer(
            &herald,
            &guard,
            &raft_rt,
            listeners.peer,
            tls.as_ref().map(|t| t.peer.clone()),
            &accept,
        )
        .await?,
        serve_client(
            &herald,
            &guard,
            accept.incoming(
                listeners.client,
                "client",
                tls.as_ref().map(|t| t.client.clone()),
                config.limits.max_client_connections,
            )?,
            accept.stopped(),
        ),
    ];
    let app = api::http::router(herald.clone())
        .layer(axum::extract::DefaultBodyLimit::max(
            config.limits.http_max_body_bytes,
        ))
        .layer(ObserveLayer::new(
            metrics.clone(),
            config.id,
            Listener::Http,
        ));
    tasks.push(tokio::spawn(serve_http(
        accept.incoming(
            listeners.http,
            "http",
            tls.as_ref().map(|t| t.http.clone()),
            config.limits.max_http_connections,
        )?,
        app,
        Duration::from_millis(config.limits.http_header_timeout_ms),
        stop_rx.clone(),
    )));
    tasks.extend(spawn_mechanisms(
        &herald,
        listeners.time_sync,
        storage.space,
        &accept,
    ));
    if config.testing.stale_reads {
        tracing::warn!("testing.stale_reads is on: linearizable reads are NOT linearizable");
    }
    tracing::info!(id = config.id, number = config.number, "node started");
    Ok(RunningNode {
        herald,
        stop,
        tasks,
        db: storage.db,
        raft_rt,
    })
}

/// Raises the open-file limit and says, in the log and the security
/// metrics, whether this node is insecure or in testing mode.
fn announce(config: &Config, metrics: &Metrics) {
    match raise_open_files_limit() {
        Ok(n) => tracing::info!(rlimit_nofile = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit (RLIMIT_NOFILE)"),
    }
    if config.insecure {
        tracing::warn!(
            "INSECURE: this node serves every port in plaintext with no TLS; anyone who can \
             reach it can read its traffic and, unless auth is enabled, do anything \
             (insecure = true in the config)"
        );
    }
    if config.testing_mode {
        tracing::warn!(
            "TESTING MODE: test hooks (SetClockOffset, [testing] faults) are on; never run \
             a production node with --testing"
        );
    }
    metrics
        .api
        .security_insecure
        .set(i64::from(config.insecure));
    metrics
        .api
        .security_testing_mode
        .set(i64::from(config.testing_mode));
}

/// What [`open_storage`] opened.
struct Storage {
    identity: IdentityCell,
    db: sled::Db,
    store: StateStore,
    log: LogStore,
    space: std::sync::Arc<FreeSpace>,
    /// The incarnations recorded in the log past the snapshot.
    tail: LogTail,
}

/// Opens the data dir: the identity before anything else (a data dir of
/// another node, or Raft state without an identity, is refused before it
/// is opened), the snapshot, then the log (which needs to know what the
/// snapshot covers), and the free-space watch.
async fn open_storage(config: &Config, metrics: &Metrics) -> anyhow::Result<Storage> {
    let identity = crate::raft::identity::load(
        &config.data_dir,
        config.id,
        crate::raft::identity::raft_state_in(&config.data_dir)?,
    )?;
    match &identity {
        Some(i) => {
            tracing::info!(cluster_id = %i.cluster_id, incarnation = %i.incarnation, "identity")
        }
        None => tracing::info!(
            "no identity yet: this node waits to be added by a leader, or for \
             `heraldctl cluster init` if it is a founding member"
        ),
    }
    let identity = IdentityCell::new(&config.data_dir, config.id, identity);
    let db = open_db(config)?;
    let store = StateStore::open_with_metrics(&db, &config.data_dir, metrics.clone())?;
    let log = LogStore::open_with(
        &db,
        &config.data_dir.join("log"),
        LogOptions {
            metrics: metrics.clone(),
            snapshot: store.snapshot_log_id(),
            ..LogOptions::default()
        },
    )?;
    if let Some(nth) = config.testing.fail_log_sync_after {
        tracing::warn!(
            nth,
            "testing.fail_log_sync_after is set: the log's fdatasync will fail"
        );
        log.fail_sync(nth, libc::EIO);
    }
    let space = std::sync::Arc::new(FreeSpace::new(
        &config.data_dir,
        config.storage.min_free_bytes,
    ));
    if let Err(e) = space.check() {
        tracing::warn!(error = %e, dir = %config.data_dir.display(), "statvfs of the data dir failed");
    }
    let tail = LogTail::scan(&log, store.snapshot_log_id().map(|l| l.index()))
        .await
        .context("reading the log tail")?;
    Ok(Storage {
        identity,
        db,
        store,
        log,
        space,
        tail,
    })
}

/// Every port this node listens on, bound.
struct Listeners {
    /// Bound with std so a taken port fails the start; registered with the
    /// Raft thread's reactor in [`serve_peer`].
    peer: std::net::TcpListener,
    client: TcpListener,
    http: TcpListener,
    time_sync: Option<tokio::net::UdpSocket>,
}

async fn bind_listeners(config: &Config) -> anyhow::Result<Listeners> {
    let peer = std::net::TcpListener::bind(config.listen.peer)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .with_context(|| format!("binding the peer listener on {}", config.listen.peer))?;
    let client = bind(config.listen.client, "client").await?;
    let http = bind(config.listen.http, "http").await?;
    let time_sync = match config.listen.time_sync {
        Some(addr) => Some(
            tokio::net::UdpSocket::bind(addr)
                .await
                .with_context(|| format!("binding the time-sync (SNTP) socket on {addr}"))?,
        ),
        None => None,
    };
    Ok(Listeners {
        peer,
        client,
        http,
        time_sync,
    })
}

/// Every listener goes through the same acceptor: TLS handshakes (or plain
/// TCP in insecure mode), Nagle off (small gRPC replies would wait for
/// delayed ACKs, ~40 ms per forwarded write), the caller's verified
/// certificate read once per connection, and each listener's own
/// connection cap (`[limits]`).
#[derive(Clone)]
struct Acceptor {
    metrics: Metrics,
    stop: watch::Receiver<bool>,
}

impl Acceptor {
    fn incoming(
        &self,
        l: TcpListener,
        server: &'static str,
        tls: Option<std::sync::Arc<rustls::ServerConfig>>,
        max: usize,
    ) -> anyhow::Result<crate::security::tls::Incoming> {
        let api = &self.metrics.api;
        let failures = api
            .tls_handshake_failures
            .get_or_create(&ServerLabel { server })
            .clone();
        let label = ListenerLabel { listener: server };
        let cap = ConnCap::new(
            max,
            api.connections_open.get_or_create(&label).clone(),
            api.connections_refused.get_or_create(&label).clone(),
        );
        crate::security::tls::accept(l, tls, server, failures, cap, self.stop.clone())
            .with_context(|| format!("starting the {server} listener"))
    }

    /// Resolves when the node stops.
    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }
}

/// The peer listener: its acceptor, connections and the tonic peer server
/// live on the Raft thread, beside the Raft core they feed.
async fn serve_peer(
    herald: &Herald,
    guard: &Guard,
    raft_rt: &RaftRuntime,
    listener: std::net::TcpListener,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    accept: &Acceptor,
) -> anyhow::Result<JoinHandle<()>> {
    let limits = &herald.config().limits;
    let keepalive = Duration::from_millis(limits.grpc_keepalive_ms);
    let keepalive_timeout = Duration::from_millis(limits.grpc_keepalive_timeout_ms);
    let svc = PeerServer::new(api::peer::PeerService::new(herald.clone()))
        .max_decoding_message_size(64 << 20);
    let layer = ObserveLayer::new(herald.metrics().clone(), herald.id(), Listener::Peer);
    let peer_guard = GuardLayer::new(guard.clone(), Gate::Peer);
    let incoming = raft_rt
        .run({
            let accept = accept.clone();
            let max = limits.max_peer_connections;
            async move {
                let l = TcpListener::from_std(listener).context("registering the peer listener")?;
                accept.incoming(l, "peer", tls, max)
            }
        })
        .await??;
    let stopped = accept.stopped();
    Ok(raft_rt.spawn(async move {
        let r = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(keepalive))
            .http2_keepalive_timeout(Some(keepalive_timeout))
            .layer(layer)
            .layer(peer_guard)
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, stopped)
            .await;
        if let Err(e) = r {
            tracing::error!("peer server: {e}");
        }
    }))
}

/// The client listener: the `Herald`, `Admin` and `Auth` services behind
/// the observing layer, the message size limit and the guard.
fn serve_client(
    herald: &Herald,
    guard: &Guard,
    incoming: crate::security::tls::Incoming,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    let limits = &herald.config().limits;
    let keepalive = Duration::from_millis(limits.grpc_keepalive_ms);
    let keepalive_timeout = Duration::from_millis(limits.grpc_keepalive_timeout_ms);
    let max_message = limits.grpc_max_message_bytes;
    let max_streams = limits.grpc_max_concurrent_streams;
    let layer = ObserveLayer::new(herald.metrics().clone(), herald.id(), Listener::Client);
    // Explicit message limits both ways (tonic's defaults: 4 MiB read,
    // unlimited write), and a refusal that names them.
    let herald_svc = HeraldServer::new(api::client::HeraldService::new(
        herald.clone(),
        layer.accounting(),
    ))
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message);
    let admin_svc = AdminServer::new(api::admin::AdminService::new(herald.clone()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let auth_svc = AuthServer::new(api::auth::AuthService::new(herald.clone()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let share_svc = ShareServer::new(api::client::ShareService::new(herald.clone()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let link_svc = ::herald_client::proto::link_server::LinkServer::new(
        api::client::link::LinkService::new(herald.clone()),
    )
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message);
    let size_limit = api::layer::MessageLimitLayer::new(max_message);
    let client_guard = GuardLayer::new(guard.clone(), Gate::Client);
    tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(keepalive))
            .http2_keepalive_timeout(Some(keepalive_timeout))
            .max_concurrent_streams(Some(max_streams))
            .layer(layer)
            .layer(size_limit)
            .layer(client_guard)
            .add_service(herald_svc)
            .add_service(admin_svc)
            .add_service(auth_svc)
            .add_service(share_svc)
            .add_service(link_svc)
            .serve_with_incoming_shutdown(incoming, stopped)
            .await;
        if let Err(e) = r {
            tracing::error!("client server: {e}");
        }
    })
}

/// The cluster mechanisms' loops, each until the node stops: expiry,
/// compaction, time sync (and the SNTP server), failover and takeover,
/// TTL ownership, Raft metrics, the free-space watch, members.
fn spawn_mechanisms(
    herald: &Herald,
    time_sync: Option<tokio::net::UdpSocket>,
    space: std::sync::Arc<FreeSpace>,
    accept: &Acceptor,
) -> Vec<JoinHandle<()>> {
    let stopped = || accept.stopped();
    let mut tasks = vec![
        tokio::spawn(crate::expiry::run(herald.clone(), stopped())),
        tokio::spawn(crate::compaction::run(herald.clone(), stopped())),
        tokio::spawn(crate::timesync::sync(herald.clone(), stopped())),
    ];
    if let Some(socket) = time_sync {
        tasks.push(tokio::spawn(crate::timesync::serve(
            herald.clone(),
            socket,
            stopped(),
        )));
    }
    tasks.extend([
        tokio::spawn(crate::failover::run(herald.clone(), stopped())),
        tokio::spawn(crate::failover::run_takeover(herald.clone(), stopped())),
        tokio::spawn(crate::owner::run(herald.clone(), stopped())),
        tokio::spawn(crate::metrics::watch_raft(
            herald.raft().clone(),
            herald.metrics().clone(),
            herald.id(),
            stopped(),
        )),
        tokio::spawn(crate::raft::free_space::run(
            space,
            Duration::from_millis(herald.config().storage.free_space_check_ms),
            stopped(),
        )),
        tokio::spawn(crate::members::run(herald.clone(), stopped())),
    ]);
    tasks
}

impl RunningNode {
    /// Stops serving, shuts Raft down, writes the hard state (so a clean
    /// restart re-applies all it had applied) and flushes sled (left from a
    /// data dir an older build wrote).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.herald.raft().shutdown().await;
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        if let Err(e) = self.herald.log().persist_hard_state().await {
            tracing::warn!(error = %e, "writing the raft hard state at shutdown");
        }
        if let Err(e) = self.db.flush_async().await {
            tracing::error!("final flush: {e}");
        }
        // Last: ends the Raft thread and whatever is left on it.
        drop(self.raft_rt);
    }

    /// Resolves when this node can no longer serve, with the cause: its log
    /// storage failed, or its Raft core stopped without being asked to (a
    /// storage error in the state machine, a panic). Never resolves while
    /// the node is healthy.
    pub async fn failed(&self) -> String {
        let mut raft = self.herald.raft().metrics();
        let mut log = self.herald.log().failure();
        loop {
            if let Some(cause) = log.borrow_and_update().clone() {
                return cause;
            }
            if let Err(fatal) = &raft.borrow_watched().running_state {
                return format!("raft stopped: {fatal}");
            }
            tokio::select! {
                r = raft.changed() => if r.is_err() {
                    return "raft stopped: its metrics channel closed".into();
                },
                r = log.changed() => if r.is_err() {
                    return "the log store is gone".into();
                },
            }
        }
    }
}

/// Serves `node` until `shutdown` resolves (a clean stop: `Ok`) or the node
/// fails (`Err` with the cause, after logging it and stopping what can be
/// stopped within a few seconds: a failing disk may hang the rest).
pub async fn serve(node: RunningNode, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let failure = tokio::select! {
        _ = shutdown => None,
        cause = node.failed() => Some(cause),
    };
    match failure {
        None => {
            tracing::info!("shutting down");
            node.shutdown().await;
            Ok(())
        }
        Some(cause) => {
            tracing::error!(
                %cause,
                "fatal storage error: this node stops (exit non-zero) so its supervisor restarts it"
            );
            let _ = tokio::time::timeout(Duration::from_secs(5), node.shutdown()).await;
            Err(anyhow::anyhow!("node stopped on a fatal error: {cause}"))
        }
    }
}

/// Runs a node until `shutdown` resolves or the node fails; `started` is
/// called once it serves (every listener bound, the state loaded).
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    started: impl FnOnce(),
) -> anyhow::Result<()> {
    let node = start(config).await?;
    started();
    let result = serve(node, shutdown).await;
    crate::telemetry::shutdown().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restarted_leader_is_not_restored_without_an_election() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../cluster-configs/local-3/node1.toml"
        );
        let rc = raft_config(&Config::load(std::path::Path::new(path)).unwrap()).unwrap();
        assert_eq!(rc.enable_leader_restore, Some(false));
    }

    fn open_files_limit() -> libc::rlimit {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes only the struct passed.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        lim
    }

    #[test]
    fn the_open_file_limit_is_raised_to_the_hard_limit() {
        let before = open_files_limit();
        // One below the hard limit: a soft limit to raise that no test
        // running beside this one can notice.
        let lowered = libc::rlimit {
            rlim_cur: before.rlim_max - 1,
            rlim_max: before.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct passed.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }, 0);
        assert_eq!(raise_open_files_limit().unwrap(), before.rlim_max);
        assert_eq!(open_files_limit().rlim_cur, before.rlim_max);
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap()
    }

    /// A one-node cluster in this process, data in `dir`.
    fn single_node(dir: &std::path::Path, min_free_bytes: u64) -> Config {
        let (peer, client, http) = (free_port(), free_port(), free_port());
        let text = format!(
            r#"
id = 1
number = 1
data_dir = "{}"
insecure = true
[listen]
peer = "127.0.0.1:{peer}"
client = "127.0.0.1:{client}"
http = "127.0.0.1:{http}"
[[initial_members]]
id = 1
number = 1
peer = "127.0.0.1:{peer}"
client = "127.0.0.1:{client}"
http = "127.0.0.1:{http}"
[storage]
min_free_bytes = {min_free_bytes}
# Checked once at start; the tests feed the alarm themselves.
free_space_check_ms = 3600000
"#,
            dir.display()
        );
        let config: Config = toml::from_str(&text).unwrap();
        config.validate().unwrap();
        config
    }

    /// `cluster init`, then the single node leads.
    async fn leader_elected(node: &RunningNode) {
        use ::herald_client::proto::admin_server::Admin;
        crate::api::admin::AdminService::new(node.herald.clone())
            .init(tonic::Request::new(::herald_client::proto::InitRequest {}))
            .await
            .unwrap();
        node.herald
            .raft()
            .wait(Some(Duration::from_secs(30)))
            .state(openraft::ServerState::Leader, "single node leads")
            .await
            .unwrap();
    }

    fn login(uid: &str) -> crate::state::Command {
        crate::state::Command::Login(crate::state::Login {
            uid: uid.into(),
            sid: 77,
            client_type: "pc".into(),
            connection_id: String::new(),
            accept_strangers: false,
            ext: [("city".to_string(), "secret-city".to_string())].into(),
            ttl_ms: 0,
        })
    }

    /// issue 17: under overload a node queued every write until it timed
    /// out, refusing none. Past `limits.max_pending_writes` writes in flight
    /// a write is now refused at once, naming the limit; time-driven
    /// writes still go, and a freed slot admits writes again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_past_the_in_flight_limit_are_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = single_node(dir.path(), 0);
        config.limits.max_pending_writes = 2;
        let node = start(config).await.unwrap();
        leader_elected(&node).await;
        node.herald.propose(login("a")).await.unwrap();
        // Two writes in flight (their permits held as a slow commit would).
        let slots = &node.herald.inner.pending_writes;
        let held = std::sync::Arc::clone(slots)
            .try_acquire_many_owned(2)
            .unwrap();
        let err = node.herald.propose(login("b")).await.unwrap_err();
        let status = crate::api::status::node_status(err);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status
                .message()
                .starts_with("limit limits.max_pending_writes = 2 reached"),
            "{}",
            status.message()
        );
        node.herald
            .propose(crate::state::Command::Tick)
            .await
            .unwrap();
        drop(held);
        node.herald.propose(login("b")).await.unwrap();
        assert_eq!(slots.available_permits(), 2, "answered writes give back");
        node.shutdown().await;
    }

    /// `GET /health` over loopback: the status code and the body.
    async fn health(config: &Config) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(config.listen.http)
            .await
            .unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let code = out[9..12].parse().unwrap();
        (code, out)
    }

    /// issue 16: a follower whose fdatasync failed stayed up as a zombie
    /// (`/health` 200). A failed sync (injected through the log store's
    /// seam) now stops Raft, `/health` answers 503 `stopped` naming the
    /// operation and the file, and `serve` returns an error (the binary
    /// exits non-zero). Nothing of the command reaches the cause.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fatal_storage_error_stops_the_node_and_health_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let config = single_node(dir.path(), 0);
        let node = start(config.clone()).await.unwrap();
        leader_elected(&node).await;
        node.herald.propose(login("before")).await.unwrap();
        assert_eq!(health(&config).await.0, 200);

        node.herald.log().fail_next_sync(libc::EIO);
        assert!(node.herald.propose(login("secret-user")).await.is_err());
        let cause = tokio::time::timeout(Duration::from_secs(30), node.failed())
            .await
            .expect("the node fails");
        assert!(
            cause.contains("fdatasync of log segment") && cause.contains("os error 5"),
            "{cause}"
        );
        assert!(
            !cause.contains("secret-user") && !cause.contains("secret-city"),
            "{cause}"
        );
        let (code, body) = health(&config).await;
        assert_eq!(code, 503, "{body}");
        assert!(
            body.contains("\"stopped\"") && body.contains("fdatasync"),
            "{body}"
        );
        // Raft itself stops on the failed callback.
        node.herald
            .raft()
            .wait(Some(Duration::from_secs(30)))
            .metrics(|m| m.running_state.is_err(), "raft stopped")
            .await
            .unwrap();

        let err = serve(node, std::future::pending()).await.unwrap_err();
        assert!(
            err.to_string().contains("fdatasync of log segment"),
            "{err}"
        );
    }

    /// The free-space alarm refuses new writes with RESOURCE_EXHAUSTED,
    /// naming the alarm and the threshold, and clears by itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_free_space_alarm_refuses_writes_until_space_returns() {
        let dir = tempfile::tempdir().unwrap();
        // More than any disk (TOML integers stop at i64::MAX).
        let huge = i64::MAX as u64;
        let config = single_node(dir.path(), huge);
        let node = start(config.clone()).await.unwrap();
        leader_elected(&node).await;
        assert!(node.herald.space().alarm(), "checked at start");
        let err = node.herald.propose(login("u")).await.unwrap_err();
        let status = crate::api::status::node_status(err);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().contains("free-space alarm")
                && status
                    .message()
                    .contains(&format!("storage.min_free_bytes = {huge}")),
            "{}",
            status.message()
        );
        // Time-driven work is not a client write.
        node.herald
            .propose(crate::state::Command::Tick)
            .await
            .unwrap();
        // Space returns.
        assert_eq!(node.herald.space().observe(huge), Some(false));
        node.herald.propose(login("u")).await.unwrap();
        node.shutdown().await;
    }
}
