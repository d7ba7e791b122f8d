//! A Herald node's configuration: one TOML file per node.
//!
//! Every node of a cluster runs the same binary; what differs is this file:
//! its Raft id, its P-publish sequence number, where it listens, where it keeps
//! its data, and who the founding members are. `cluster-configs/` holds ready
//! local layouts.
//!
//! This crate owns the file's types, every default (in one place: the
//! `Default` impls here), and the checks TOML types cannot make
//! ([`Config::validate`]). The node reads its file with it; heraldctl's
//! playground, the chaos suite, the benchmark and the tests build configs as
//! typed values and write them with [`Config::to_toml`] ([`render`]), so a
//! field or a default is changed in one place. [`local`] is the layout of a
//! cluster on one machine (ports, certificates, data dirs).

#![warn(missing_docs)]

pub mod local;
pub mod quotas;
pub mod render;

pub use quotas::Quotas;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A node's whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Raft node id: unique in the cluster, never reused.
    pub id: u64,
    /// The node's sequence number (P-publish): the lowest healthy number is
    /// the preferred leader.
    pub number: u32,
    /// The node's data: the Raft log and its hard state (`log/`), the
    /// latest snapshot (`snapshot.bin`) and sled (`sled/`).
    pub data_dir: PathBuf,
    /// Serve every port in plaintext, with no TLS and (unless an
    /// administrator enables it) no authentication. An explicit choice: a
    /// node with neither `[tls]` nor `insecure = true` refuses to start, and
    /// an insecure node says so loudly in its log, its metrics and its status.
    #[serde(default)]
    pub insecure: bool,
    /// Listen addresses.
    pub listen: Listen,
    /// TLS on every listener and mutual TLS between nodes (see
    /// [`TlsConfig`]). Required unless `insecure = true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// The founding administrators and how callers are authenticated.
    #[serde(default)]
    pub auth: AuthConfig,
    /// The founding members, identical on every founding node. Empty on a
    /// node that will be added later as a learner.
    #[serde(default)]
    pub initial_members: Vec<MemberConfig>,
    /// Raft timings and log compaction.
    #[serde(default)]
    pub raft: RaftTimings,
    /// Storage safety margins (the free-space alarm).
    #[serde(default)]
    pub storage: StorageConfig,
    /// Per-peer address overrides: how *this* node dials a peer, by Raft id,
    /// instead of the peer address in the membership. The chaos suite routes
    /// every link through its own proxy this way.
    #[serde(default)]
    pub peer_routes: std::collections::BTreeMap<String, String>,
    /// Cluster clock settings.
    #[serde(default)]
    pub clock: ClockConfig,
    /// Deliberate faults for proving the chaos checker. Never in production:
    /// refused unless the node runs in testing mode ([`Config::testing_mode`]).
    #[serde(default)]
    pub testing: TestingFaults,
    /// Numbered failover.
    #[serde(default)]
    pub failover: FailoverConfig,
    /// Consistent-hash ring and liveness.
    #[serde(default)]
    pub ring: RingConfig,
    /// Logs and trace export.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The quotas and retention periods this node wants the cluster to
    /// enforce; the leader's are the cluster's (see [`quotas`]).
    #[serde(default)]
    pub quotas: Quotas,
    /// Connection, stream and message limits of the listeners.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Testing mode: test hooks (`Admin.SetClockOffset`, `[testing]`
    /// faults, a non-zero `clock.initial_offset_ms`) work only when this is
    /// on. Never read from the file: only `herald-node --testing` sets it,
    /// so a config copied from a test cannot turn hooks on in production.
    #[serde(skip)]
    pub testing_mode: bool,
}

/// The certificate files of a node (PEM). Relative paths are relative to
/// the node's working directory, like `data_dir`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The cluster's CA certificate: peers and client certificates must
    /// chain to it.
    pub ca_file: PathBuf,
    /// This node's certificate (`heraldctl cert create-node`): it names the
    /// node's id and the hosts it is dialed at.
    pub cert_file: PathBuf,
    /// This node's private key.
    pub key_file: PathBuf,
}

/// Who may do what before any user exists: the founding administrators.
/// Users, roles and tokens themselves are replicated through Raft
/// (`heraldctl user|role|token`), so changes need no restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Client-certificate names that are administrators whatever the
    /// replicated auth state says (`heraldctl cert create-client root`).
    /// The same list on every node.
    pub root_users: Vec<String>,
    /// Hex SHA-256 digests of bearer tokens that are administrators (as
    /// user `root`), for callers that cannot present a certificate. Only
    /// the digest is kept: `printf %s "$TOKEN" | sha256sum`.
    pub root_token_sha256: Vec<String>,
}

/// Logs and trace export (metrics need no settings: `/metrics` on the HTTP port).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/gRPC collector for traces (`http://127.0.0.1:4317`). When unset,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is used; when neither is set, no
    /// traces are exported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// `text` or `json`; `--log-format` overrides it. Default text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log format must be text or json, got {other:?}")),
        }
    }
}

/// Deliberately broken behaviour, so a test can show the checker catches it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TestingFaults {
    /// Serve "linearizable" reads from local state without ReadIndex:
    /// a partitioned or lagging node then returns stale data.
    pub stale_reads: bool,
    /// Fail the log's Nth `fdatasync` after start with EIO, as a failing
    /// disk would (the node must stop and exit non-zero).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail_log_sync_after: Option<u64>,
}

/// Cluster clock settings (see `timesync`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClockConfig {
    /// Offset added to the system clock at start (tests and chaos inject skew with it).
    pub initial_offset_ms: i64,
    /// How often a follower syncs to the leader (and the leader to upstream).
    pub sync_interval_ms: u64,
    /// SNTP samples per sync round, spread over the first fifth of the
    /// interval (only the quickest are used; see `discipline`).
    pub samples: u32,
    /// Errors within this are left alone.
    pub tolerance_us: u64,
    /// The most one round may move the offset (smaller errors are slewed
    /// half-way), unless the error persisted for `persist_rounds` rounds.
    pub max_slew_us: u64,
    /// Rounds in a row an error beyond `max_slew_us` must be seen, same
    /// sign, before it is stepped out at once.
    pub persist_rounds: u32,
    /// Samples slower than the round's quickest × this (+200 µs) are dropped;
    /// so is a round whose quickest is slower than the recent best × this.
    pub delay_factor: f64,
    /// Offsets further than this many median absolute deviations from the
    /// round's median are dropped.
    pub outlier_mads: f64,
    /// Upstream NTP servers (host:port) the leader follows; empty = the
    /// leader's own clock is the reference.
    pub upstream: Vec<String>,
    /// How far ahead of the voters' agreed time, plus the real time elapsed
    /// since its term began, a leader may stamp entries (see `stamp`): the
    /// most one wrong clock can move cluster time forward.
    pub max_ahead_ms: u64,
}

impl Default for ClockConfig {
    fn default() -> Self {
        ClockConfig {
            initial_offset_ms: 0,
            sync_interval_ms: 1000,
            samples: 8,
            tolerance_us: 100,
            max_slew_us: 2_000,
            persist_rounds: 2,
            delay_factor: 2.0,
            outlier_mads: 3.0,
            upstream: Vec::new(),
            max_ahead_ms: 1000,
        }
    }
}

/// Numbered failover: the lowest-numbered healthy, caught-up voter leads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    /// Move leadership back to a lower-numbered node that recovered after
    /// this leader took over. Off: only nodes that stayed healthy count.
    pub failback: bool,
    /// How long the preferred node must be healthy and caught up before the
    /// leader hands over (and the pause after a handover): the hysteresis.
    pub hold_ms: u64,
    /// Election timeouts grow by this per rank of the node's number, so
    /// lower numbers tend to win elections.
    pub election_bias_ms: u64,
    /// A follower within this many entries of the leader's log is caught up.
    pub max_lag_entries: u64,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            failback: true,
            hold_ms: 3000,
            election_bias_ms: 50,
            max_lag_entries: 100,
        }
    }
}

/// Consistent-hash ring and peer liveness (who owns which users).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RingConfig {
    /// Virtual nodes per member.
    pub vnodes: u32,
    /// How often each node probes its peers.
    pub probe_interval_ms: u64,
    /// A peer that has not answered for this long is down and leaves the ring.
    pub down_after_ms: u64,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            vnodes: 64,
            probe_interval_ms: 250,
            down_after_ms: 1500,
        }
    }
}

/// Addresses a node listens on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// Raft peer gRPC (append, vote, snapshot, forwarded writes).
    pub peer: SocketAddr,
    /// Client and admin gRPC.
    pub client: SocketAddr,
    /// HTTP JSON (`/v1/presence`, `/health`).
    pub http: SocketAddr,
    /// SNTP time-sync port (reserved for the cluster clock).
    #[serde(default)]
    pub time_sync: Option<SocketAddr>,
}

/// One founding member as every node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// Raft node id.
    pub id: u64,
    /// Sequence number.
    pub number: u32,
    /// Peer gRPC address.
    pub peer: String,
    /// Client gRPC address.
    pub client: String,
    /// HTTP address.
    pub http: String,
    /// SNTP time-sync address (followers sync to the leader's).
    #[serde(default)]
    pub time_sync: Option<String>,
}

/// Raft timings. Defaults suit a loopback or LAN cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTimings {
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot every this many applied entries, then purge the log.
    pub snapshot_every: u64,
    /// ... or once this many bytes were appended to the log since the last
    /// trigger, whichever comes first: a restart replays the log after the
    /// snapshot in one read, so its size in bytes is what bounds the memory
    /// a replay needs (the node's `compaction`).
    pub snapshot_every_bytes: u64,
    /// Log entries kept behind a snapshot, so a briefly lagging follower
    /// catches up from the log rather than a snapshot.
    pub keep_logs_after_snapshot: u64,
    /// Largest snapshot a node accepts from a peer.
    pub max_snapshot_bytes: u64,
    /// sled page cache in bytes (sled may use several times this).
    pub cache_bytes: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        RaftTimings {
            heartbeat_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 250,
            snapshot_every: 100_000,
            snapshot_every_bytes: 32 << 20,
            keep_logs_after_snapshot: 1_000,
            max_snapshot_bytes: 1 << 30,
            cache_bytes: 32 << 20,
        }
    }
}

/// Connection, stream and message limits of the listeners (issue 17): what
/// one node accepts before it refuses, so that idle sockets, watch streams
/// and large messages cannot exhaust it. A refusal names the limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Open connections on the client gRPC listener; one more is closed at
    /// once and counted in `herald_connections_refused_total{listener}`.
    pub max_client_connections: usize,
    /// Open connections on the HTTP listener.
    pub max_http_connections: usize,
    /// Open connections on the peer (Raft) listener.
    pub max_peer_connections: usize,
    /// Open `Watch` streams on this node; one more is refused with
    /// `RESOURCE_EXHAUSTED` naming `limits.max_watch_streams`.
    pub max_watch_streams: usize,
    /// How long an HTTP client may take to send a request's headers; a
    /// slower (slowloris) connection is closed.
    pub http_header_timeout_ms: u64,
    /// Largest HTTP request body (`413` above it).
    pub http_max_body_bytes: usize,
    /// HTTP/2 keepalive ping interval on the gRPC listeners: a connection
    /// whose peer vanished is found and closed, and its streams (watches)
    /// freed.
    pub grpc_keepalive_ms: u64,
    /// How long a keepalive ping may go unanswered before the connection is
    /// closed.
    pub grpc_keepalive_timeout_ms: u64,
    /// Concurrent HTTP/2 streams (calls) per client gRPC connection.
    pub grpc_max_concurrent_streams: u32,
    /// Largest gRPC message the client listener decodes or encodes. The
    /// largest valid request (a `Batch` of 1000 maximal logins, about
    /// 5.4 MB, up to some 12 MB with the most ext entries) fits; larger
    /// ones are refused with `RESOURCE_EXHAUSTED` naming this limit. List
    /// and batch-read answers are paged to stay under 4 MiB, gRPC's default
    /// receive limit, so generated clients read them with their defaults.
    pub grpc_max_message_bytes: usize,
    /// Client writes one node has in flight (proposed or forwarded, not yet
    /// answered). Past it a write is refused at once with
    /// `RESOURCE_EXHAUSTED` naming this limit, instead of queueing until
    /// it times out: under overload the node answers quickly and keeps its
    /// CPU for Raft. Time-driven writes (ticks, TTL expiry) are not counted.
    pub max_pending_writes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_client_connections: 10_000,
            max_http_connections: 1_000,
            max_peer_connections: 64,
            max_watch_streams: 4_096,
            http_header_timeout_ms: 10_000,
            http_max_body_bytes: 2 << 20,
            grpc_keepalive_ms: 10_000,
            grpc_keepalive_timeout_ms: 20_000,
            grpc_max_concurrent_streams: 1_024,
            grpc_max_message_bytes: herald_client::MAX_MESSAGE_BYTES,
            max_pending_writes: 2_048,
        }
    }
}

/// Storage safety margins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Below this many free bytes on the data dir's file system the node
    /// refuses new client writes (`RESOURCE_EXHAUSTED`) until space
    /// returns; Raft replication goes on. Default 512 MiB: room for a new
    /// log segment (32 MiB) and for a snapshot of a million users (~250 MB)
    /// written beside the current one.
    pub min_free_bytes: u64,
    /// How often free space is checked.
    pub free_space_check_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            min_free_bytes: 512 << 20,
            free_space_check_ms: 1000,
        }
    }
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("parsing {path}: {source}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The TOML error.
        source: toml::de::Error,
    },
    /// The values contradict each other.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// `ip:port`, `[ipv6]:port` or `name:port` with an RFC 1123 host name:
/// members may be named by host name (a compose or Kubernetes network).
/// The one check of a member address: the config's `initial_members` and
/// the node's `AddLearner` use it.
pub fn check_host_port(v: &str) -> Result<(), &'static str> {
    if v.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = v.rsplit_once(':').ok_or("no port")?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err("the port is not 1-65535"),
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err("the host is neither an IP address nor a host name");
    }
    Ok(())
}

impl Config {
    /// A config for node `id` with sequence number `number`, keeping its
    /// data in `data_dir` and listening on `listen`; every other value is
    /// its default (no `[tls]` and not `insecure`: the caller chooses).
    pub fn new(id: u64, number: u32, data_dir: PathBuf, listen: Listen) -> Config {
        Config {
            id,
            number,
            data_dir,
            insecure: false,
            listen,
            tls: None,
            auth: AuthConfig::default(),
            initial_members: Vec::new(),
            raft: RaftTimings::default(),
            storage: StorageConfig::default(),
            peer_routes: Default::default(),
            clock: ClockConfig::default(),
            testing: TestingFaults::default(),
            failover: FailoverConfig::default(),
            ring: RingConfig::default(),
            telemetry: TelemetryConfig::default(),
            quotas: Quotas::default(),
            limits: LimitsConfig::default(),
            testing_mode: false,
        }
    }

    /// The address this node dials to reach peer `id`.
    pub fn route<'a>(&'a self, id: u64, membership_addr: &'a str) -> &'a str {
        self.peer_routes
            .get(&id.to_string())
            .map(String::as_str)
            .unwrap_or(membership_addr)
    }

    /// Reads and validates a config file for a node in production mode.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with(path, false)
    }

    /// Reads and validates a config file; `testing_mode` as `herald-node
    /// --testing` sets it.
    pub fn load_with(path: &Path, testing_mode: bool) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config.testing_mode = testing_mode;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values that TOML types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.id == 0 {
            return bad("id must be >= 1".into());
        }
        match (&self.tls, self.insecure) {
            (None, false) => {
                return bad(
                    "no [tls] section: name the node's ca_file, cert_file and key_file \
                     (heraldctl cert create-ca / create-node make them), or set insecure = true \
                     to serve plaintext with no authentication"
                        .into(),
                );
            }
            (Some(_), true) => {
                return bad("both [tls] and insecure = true: choose one".into());
            }
            _ => {}
        }
        if let Err(e) = self.quotas.validate() {
            return bad(e.to_string());
        }
        for user in &self.auth.root_users {
            if let Err(e) = herald_certs::check_user_name(user) {
                return bad(format!("auth.root_users: {e}"));
            }
        }
        for digest in &self.auth.root_token_sha256 {
            if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad(format!(
                    "auth.root_token_sha256: {digest:?} is not 64 hex digits (a SHA-256 digest)"
                ));
            }
        }
        if !self.testing_mode {
            if self.testing.stale_reads {
                return bad(
                    "[testing] stale_reads is a test hook: it needs herald-node --testing".into(),
                );
            }
            if self.clock.initial_offset_ms != 0 {
                return bad(
                    "clock.initial_offset_ms is a test hook: it needs herald-node --testing".into(),
                );
            }
        }
        let k = &self.clock;
        if k.samples == 0 || k.persist_rounds == 0 || k.max_slew_us == 0 {
            return bad(
                "clock.samples, clock.persist_rounds and clock.max_slew_us must be >= 1".into(),
            );
        }
        if !(k.delay_factor >= 1.0 && k.outlier_mads > 0.0) {
            return bad("clock.delay_factor must be >= 1 and clock.outlier_mads > 0".into());
        }
        let t = &self.raft;
        if t.heartbeat_ms == 0 || t.election_timeout_min_ms <= t.heartbeat_ms {
            return bad(format!(
                "raft.election_timeout_min_ms ({}) must exceed raft.heartbeat_ms ({}) > 0",
                t.election_timeout_min_ms, t.heartbeat_ms
            ));
        }
        if t.election_timeout_max_ms <= t.election_timeout_min_ms {
            return bad(
                "raft.election_timeout_max_ms must exceed raft.election_timeout_min_ms".into(),
            );
        }
        if t.snapshot_every == 0 {
            return bad("raft.snapshot_every must be >= 1".into());
        }
        if t.snapshot_every_bytes < 1 << 20 {
            return bad(format!(
                "raft.snapshot_every_bytes must be at least 1 MiB, got {}",
                t.snapshot_every_bytes
            ));
        }
        let l = &self.limits;
        for (name, v) in [
            ("max_client_connections", l.max_client_connections),
            ("max_http_connections", l.max_http_connections),
            ("max_peer_connections", l.max_peer_connections),
            ("http_max_body_bytes", l.http_max_body_bytes),
            ("max_pending_writes", l.max_pending_writes),
            ("grpc_max_message_bytes", l.grpc_max_message_bytes),
            (
                "grpc_max_concurrent_streams",
                l.grpc_max_concurrent_streams as usize,
            ),
        ] {
            if v == 0 {
                return bad(format!("limits.{name} must be >= 1"));
            }
        }
        for (name, v) in [
            ("max_client_connections", l.max_client_connections),
            ("max_http_connections", l.max_http_connections),
            ("max_peer_connections", l.max_peer_connections),
            ("max_watch_streams", l.max_watch_streams),
        ] {
            if v > tokio::sync::Semaphore::MAX_PERMITS {
                return bad(format!(
                    "limits.{name} must be at most {}",
                    tokio::sync::Semaphore::MAX_PERMITS
                ));
            }
        }
        for (name, v) in [
            ("http_header_timeout_ms", l.http_header_timeout_ms),
            ("grpc_keepalive_ms", l.grpc_keepalive_ms),
            ("grpc_keepalive_timeout_ms", l.grpc_keepalive_timeout_ms),
        ] {
            if v == 0 {
                return bad(format!("limits.{name} must be >= 1"));
            }
        }
        if self.storage.free_space_check_ms == 0 {
            return bad("storage.free_space_check_ms must be >= 1".into());
        }
        for (id, addr) in &self.peer_routes {
            if id.parse::<u64>().is_err() {
                return bad(format!("peer_routes: key {id:?} must be a node id"));
            }
            if addr.parse::<SocketAddr>().is_err() {
                return bad(format!("peer_routes.{id}: {addr:?} is not host:port"));
            }
        }
        let mut ids = std::collections::BTreeSet::new();
        let mut numbers = std::collections::BTreeSet::new();
        for m in &self.initial_members {
            // Peer and client are required; http and time_sync optional.
            let optional = [
                ("http", m.http.as_str()),
                ("time_sync", m.time_sync.as_deref().unwrap_or("")),
            ];
            let named = [("peer", m.peer.as_str()), ("client", m.client.as_str())]
                .into_iter()
                .chain(optional.into_iter().filter(|(_, a)| !a.is_empty()));
            for (field, addr) in named {
                if let Err(why) = check_host_port(addr) {
                    return bad(format!(
                        "initial_members: node {} {field} {addr:?}: {why}",
                        m.id
                    ));
                }
            }
            if !ids.insert(m.id) {
                return bad(format!("initial_members: id {} appears twice", m.id));
            }
            if !numbers.insert(m.number) {
                return bad(format!(
                    "initial_members: number {} appears twice",
                    m.number
                ));
            }
        }
        if !self.initial_members.is_empty() {
            match self.initial_members.iter().find(|m| m.id == self.id) {
                None => {
                    return bad(format!(
                        "initial_members does not include this node (id {})",
                        self.id
                    ));
                }
                Some(m) if m.number != self.number => {
                    return bad(format!(
                        "initial_members gives node {} number {}, but number = {}",
                        self.id, m.number, self.number
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_founding_member_address_that_is_not_host_port_is_refused() {
        let mut c: Config = toml::from_str(GOOD).unwrap();
        c.initial_members[0].peer = "node1:7101".into();
        c.validate().expect("a host name is a member address");
        c.initial_members[0].peer = "127.0.0.1".into();
        let e = c.validate().expect_err("no port").to_string();
        assert!(e.contains("initial_members: node 1 peer"), "{e}");
    }

    #[test]
    fn members_may_be_named_by_ip_or_host_name() {
        for ok in [
            "127.0.0.1:7101",
            "[::1]:7101",
            "node1:7101",
            "herald-1.db.example:7101",
        ] {
            assert_eq!(check_host_port(ok), Ok(()), "{ok}");
        }
        for bad in [
            "node1",
            "node1:0",
            "node1:70000",
            ":7101",
            "no de:7101",
            "-node:7101",
            "a..b:7101",
        ] {
            assert!(check_host_port(bad).is_err(), "{bad}");
        }
    }

    const GOOD: &str = r#"
id = 1
number = 1
data_dir = "/tmp/x"
insecure = true
[listen]
peer = "127.0.0.1:7101"
client = "127.0.0.1:7201"
http = "127.0.0.1:7301"
[[initial_members]]
id = 1
number = 1
peer = "127.0.0.1:7101"
client = "127.0.0.1:7201"
http = "127.0.0.1:7301"
"#;

    #[test]
    fn parses_and_defaults() {
        let c: Config = toml::from_str(GOOD).unwrap();
        c.validate().unwrap();
        assert_eq!(c.raft.heartbeat_ms, 50);
        assert_eq!(c.storage.min_free_bytes, 512 << 20);
    }

    #[test]
    fn rejects_inconsistent_members() {
        let mut c: Config = toml::from_str(GOOD).unwrap();
        c.number = 2;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("number"), "{err}");
        c.number = 1;
        c.initial_members[0].id = 9;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("does not include")
        );
    }

    #[test]
    fn peer_routes_override_membership_addresses() {
        let text = format!("{GOOD}\n[peer_routes]\n2 = \"127.0.0.1:9012\"\n");
        let c: Config = toml::from_str(&text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.route(2, "127.0.0.1:7102"), "127.0.0.1:9012");
        assert_eq!(c.route(3, "127.0.0.1:7103"), "127.0.0.1:7103");
        let bad: Config =
            toml::from_str(&format!("{GOOD}\n[peer_routes]\nx = \"nowhere\"\n")).unwrap();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn plaintext_is_an_explicit_choice() {
        let text = GOOD.replace("insecure = true\n", "");
        let c: Config = toml::from_str(&text).unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("[tls]") && err.contains("insecure"), "{err}");
        let with_tls = format!(
            "{text}\n[tls]\nca_file = \"ca.crt\"\ncert_file = \"n.crt\"\nkey_file = \"n.key\"\n"
        );
        let c: Config = toml::from_str(&with_tls).unwrap();
        c.validate().unwrap();
        let both = with_tls.replace("data_dir", "insecure = true\ndata_dir");
        let c: Config = toml::from_str(&both).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("choose one"));
    }

    #[test]
    fn test_hooks_need_testing_mode() {
        let mut c: Config = toml::from_str(GOOD).unwrap();
        c.testing.stale_reads = true;
        assert!(c.validate().unwrap_err().to_string().contains("--testing"));
        c.testing_mode = true;
        c.validate().unwrap();
        c.testing = TestingFaults::default();
        c.testing_mode = false;
        c.clock.initial_offset_ms = 5;
        assert!(c.validate().unwrap_err().to_string().contains("--testing"));
        // The mode is never read from the file.
        let text = format!("{GOOD}\ntesting_mode = true\n");
        assert!(toml::from_str::<Config>(&text).is_err());
    }

    #[test]
    fn root_credentials_are_checked() {
        let mut c: Config = toml::from_str(GOOD).unwrap();
        c.auth.root_users = vec!["bad name".into()];
        assert!(c.validate().unwrap_err().to_string().contains("root_users"));
        c.auth.root_users = vec!["root".into()];
        c.auth.root_token_sha256 = vec!["abc".into()];
        assert!(c.validate().unwrap_err().to_string().contains("SHA-256"));
        c.auth.root_token_sha256 = vec!["a".repeat(64)];
        c.validate().unwrap();
    }

    /// The checked-in files ([`local`]) write the node's `[limits]` out;
    /// they must say what the defaults are.
    #[test]
    fn the_checked_in_configs_show_the_default_limits() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../cluster-configs/local-3/node1.toml"
        );
        let c = Config::load(Path::new(path)).unwrap();
        assert_eq!(c.limits, LimitsConfig::default());
        let mut bad: Config = toml::from_str(GOOD).unwrap();
        bad.limits.max_client_connections = 0;
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("limits.max_client_connections")
        );
    }

    #[test]
    fn rejects_unknown_keys() {
        let text = GOOD.replace("number = 1\ndata_dir", "number = 1\nbogus = 3\ndata_dir");
        assert!(toml::from_str::<Config>(&text).is_err());
    }
}
