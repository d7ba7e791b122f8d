//! Node config files for local clusters: the layout `heraldctl playground`,
//! `cluster-configs/` and the chaos suite share.
//!
//! Node `i` (1-based) of a local cluster on `base` listens on
//! peer `base+i`, client `base+100+i`, HTTP `base+200+i` and time sync
//! `base+300+i`; base 7100 gives clients on 7201.., heraldctl's default
//! endpoints. The node reads these files with `deny_unknown_fields`, so this
//! module writes exactly its schema and nothing more.
//!
//! A cluster is secure ([`Security::Tls`]: every node names its CA,
//! certificate and key, and `root` is the founding administrator) unless
//! asked to be [`Security::Insecure`] (plaintext, no auth).

use serde::{Deserialize, Serialize};

/// The loopback address every local node listens on.
pub const LOCAL_HOST: &str = "127.0.0.1";

/// One node's config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    /// Raft node id, unique in the cluster.
    pub id: u64,
    /// Sequence number: the lowest healthy number is the preferred leader.
    pub number: u32,
    /// Where the node keeps its data; relative paths are relative to the
    /// node's working directory.
    pub data_dir: String,
    /// Plaintext with no TLS and no auth (an explicit choice).
    #[serde(default)]
    pub insecure: bool,
    /// Listen addresses.
    pub listen: Listen,
    /// The node's certificate files, when secure.
    #[serde(default)]
    pub tls: Option<Tls>,
    /// The founding administrators.
    #[serde(default)]
    pub auth: Auth,
    /// The founding members, the same on every founding node; empty for a
    /// node that will join as a learner.
    #[serde(default)]
    pub initial_members: Vec<Member>,
    /// Raft timings.
    pub raft: Raft,
    /// Connection, stream and message limits (the node's `[limits]`).
    #[serde(default)]
    pub limits: Limits,
}

/// A node's certificate files (PEM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tls {
    /// The cluster's CA certificate.
    pub ca_file: String,
    /// The node's certificate.
    pub cert_file: String,
    /// The node's key.
    pub key_file: String,
}

/// Who administers the cluster before any user exists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auth {
    /// Client-certificate names that are administrators on every node.
    #[serde(default)]
    pub root_users: Vec<String>,
}

/// The user the playground and the checked-in configs make the founding
/// administrator (its client certificate is `client.root.crt`).
pub const ROOT_USER: &str = "root";

/// Whether a local cluster speaks TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Security {
    /// Plaintext, no auth.
    Insecure,
    /// TLS with the certificates in `certs_dir` (as
    /// `herald_certs::local_cluster` names them), `root` the founding
    /// administrator.
    Tls {
        /// Where `ca.crt` and `node<i>.crt`/`.key` are.
        certs_dir: String,
    },
}

/// The addresses a node listens on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listen {
    /// Raft peer gRPC.
    pub peer: String,
    /// Client and admin gRPC.
    pub client: String,
    /// HTTP JSON (`/v1/presence`, `/health`).
    pub http: String,
    /// SNTP time sync.
    pub time_sync: String,
}

/// A founding member as every node's config lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Raft node id.
    pub id: u64,
    /// Sequence number.
    pub number: u32,
    /// Raft peer gRPC address.
    pub peer: String,
    /// Client gRPC address.
    pub client: String,
    /// HTTP address.
    pub http: String,
    /// SNTP address followers sync their cluster clock to when it leads.
    pub time_sync: String,
}

/// Raft timings and compaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Raft {
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot every this many applied entries, then purge the log.
    pub snapshot_every: u64,
}

/// The node's `[limits]` with the node's defaults (`herald_node::config::
/// LimitsConfig`), written out so a playground's files show them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Open connections on the client gRPC listener.
    pub max_client_connections: usize,
    /// Open connections on the HTTP listener.
    pub max_http_connections: usize,
    /// Open connections on the peer listener.
    pub max_peer_connections: usize,
    /// Open watch streams on the node.
    pub max_watch_streams: usize,
    /// How long an HTTP client may take to send its headers.
    pub http_header_timeout_ms: u64,
    /// Largest HTTP request body.
    pub http_max_body_bytes: usize,
    /// HTTP/2 keepalive ping interval on the gRPC listeners.
    pub grpc_keepalive_ms: u64,
    /// How long a keepalive ping may go unanswered.
    pub grpc_keepalive_timeout_ms: u64,
    /// Concurrent calls per client gRPC connection.
    pub grpc_max_concurrent_streams: u32,
    /// Largest gRPC message the client listener reads or writes.
    pub grpc_max_message_bytes: usize,
    /// Client writes in flight on one node.
    pub max_pending_writes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
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

impl Default for Raft {
    /// Timings for loopback: elections well above the heartbeat, quick enough
    /// that losing the leader costs well under a second.
    fn default() -> Self {
        Raft {
            heartbeat_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 250,
            snapshot_every: 100_000,
        }
    }
}

/// The four ports of node `i` (1-based) of a local cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// Raft peer gRPC: `base + i`.
    pub peer: u16,
    /// Client gRPC: `base + 100 + i`.
    pub client: u16,
    /// HTTP: `base + 200 + i`.
    pub http: u16,
    /// Time sync: `base + 300 + i`.
    pub time_sync: u16,
}

impl Ports {
    /// The ports of node `i` on `base`, or `None` if they do not fit in a
    /// u16 (or `i` is 0 or above 99, where the ranges would overlap).
    pub fn of(base: u16, i: u32) -> Option<Ports> {
        if !(1..=99).contains(&i) {
            return None;
        }
        let port = |offset: u32| u16::try_from(u32::from(base) + offset + i).ok();
        Some(Ports {
            peer: port(0)?,
            client: port(100)?,
            http: port(200)?,
            time_sync: port(300)?,
        })
    }
}

/// The configs of an `n`-node local cluster on `base`, node `i` keeping its
/// data in `{data_root}/node{i}`. Node ids and numbers are both `i`.
pub fn local_cluster(
    n: u32,
    base: u16,
    data_root: &str,
    security: &Security,
) -> Result<Vec<NodeConfig>, String> {
    if n == 0 {
        return Err("a cluster needs at least one node".into());
    }
    let ports = (1..=n)
        .map(|i| {
            Ports::of(base, i).ok_or_else(|| {
                format!("node {i} of {n} does not fit on base port {base} (at most 99 nodes, ports up to 65535)")
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let addr = |port: u16| format!("{LOCAL_HOST}:{port}");
    let members: Vec<Member> = (1..=n)
        .zip(&ports)
        .map(|(i, p)| Member {
            id: u64::from(i),
            number: i,
            peer: addr(p.peer),
            client: addr(p.client),
            http: addr(p.http),
            time_sync: addr(p.time_sync),
        })
        .collect();
    let root = data_root.trim_end_matches('/');
    Ok((1..=n)
        .zip(&ports)
        .map(|(i, p)| NodeConfig {
            id: u64::from(i),
            number: i,
            data_dir: format!("{root}/node{i}"),
            insecure: *security == Security::Insecure,
            tls: match security {
                Security::Insecure => None,
                Security::Tls { certs_dir } => {
                    let dir = certs_dir.trim_end_matches('/');
                    Some(Tls {
                        ca_file: format!("{dir}/{}", herald_certs::CA_CERT),
                        cert_file: format!("{dir}/{}.crt", herald_certs::node_stem(i.into())),
                        key_file: format!("{dir}/{}.key", herald_certs::node_stem(i.into())),
                    })
                }
            },
            auth: match security {
                Security::Insecure => Auth::default(),
                Security::Tls { .. } => Auth {
                    root_users: vec![ROOT_USER.to_string()],
                },
            },
            listen: Listen {
                peer: addr(p.peer),
                client: addr(p.client),
                http: addr(p.http),
                time_sync: addr(p.time_sync),
            },
            initial_members: members.clone(),
            raft: Raft::default(),
            limits: Limits::default(),
        })
        .collect())
}

impl NodeConfig {
    /// The config as a commented TOML file, in the layout documented in
    /// `cluster-configs/README.md`.
    pub fn to_toml(&self) -> String {
        let q = |s: &str| toml::Value::String(s.to_string()).to_string();
        let mut out = String::new();
        out.push_str(&format!(
            "# Herald node {id}, generated by heraldctl (see cluster-configs/README.md).\n\
             # Raft node id: unique, never reused.\n\
             id = {id}\n\
             # Sequence number: the lowest healthy number is the preferred leader.\n\
             number = {number}\n\
             data_dir = {data_dir}\n",
            id = self.id,
            number = self.number,
            data_dir = q(&self.data_dir),
        ));
        if self.insecure {
            out.push_str(
                "# Plaintext on every port, no TLS and no authentication: for a\n\
                 # throwaway local cluster only.\n\
                 insecure = true\n",
            );
        }
        out.push('\n');
        out.push_str(&format!(
            "[listen]\n\
             # Raft peer gRPC\n\
             peer = {}\n\
             # client + admin gRPC\n\
             client = {}\n\
             # HTTP JSON (/v1/presence, /health)\n\
             http = {}\n\
             # SNTP (reserved)\n\
             time_sync = {}\n",
            q(&self.listen.peer),
            q(&self.listen.client),
            q(&self.listen.http),
            q(&self.listen.time_sync),
        ));
        if let Some(tls) = &self.tls {
            out.push_str(&format!(
                "\n# TLS on every port, mutual TLS between nodes (heraldctl cert makes these).\n\
                 [tls]\n\
                 ca_file = {}\n\
                 cert_file = {}\n\
                 key_file = {}\n",
                q(&tls.ca_file),
                q(&tls.cert_file),
                q(&tls.key_file),
            ));
        }
        if !self.auth.root_users.is_empty() {
            let users: Vec<String> = self.auth.root_users.iter().map(|u| q(u)).collect();
            out.push_str(&format!(
                "\n# The founding administrators: client-certificate names that are admins\n\
                 # on every node (heraldctl cert create-client root).\n\
                 [auth]\n\
                 root_users = [{}]\n",
                users.join(", ")
            ));
        }
        if self.initial_members.is_empty() {
            out.push_str(
                "\n# No initial_members: this node joins an existing cluster as a learner.\n",
            );
        } else {
            out.push_str("\n# The founding members: the same list on every founding node.\n");
        }
        for m in &self.initial_members {
            out.push_str(&format!(
                "[[initial_members]]\n\
                 id = {}\n\
                 number = {}\n\
                 peer = {}\n\
                 client = {}\n\
                 http = {}\n\
                 time_sync = {}\n\n",
                m.id,
                m.number,
                q(&m.peer),
                q(&m.client),
                q(&m.http),
                q(&m.time_sync),
            ));
        }
        if self.initial_members.is_empty() {
            out.push('\n');
        }
        out.push_str(&format!(
            "[raft]\n\
             heartbeat_ms = {}\n\
             election_timeout_min_ms = {}\n\
             election_timeout_max_ms = {}\n\
             # Build a snapshot every N applied entries, then purge the log.\n\
             snapshot_every = {}\n",
            self.raft.heartbeat_ms,
            self.raft.election_timeout_min_ms,
            self.raft.election_timeout_max_ms,
            self.raft.snapshot_every,
        ));
        let l = &self.limits;
        out.push_str(&format!(
            "\n# What one node accepts before it refuses (refusals name the limit).\n\
             [limits]\n\
             # Open connections per listener; one more is closed at once.\n\
             max_client_connections = {}\n\
             max_http_connections = {}\n\
             max_peer_connections = {}\n\
             # Open Watch streams on this node (RESOURCE_EXHAUSTED above it).\n\
             max_watch_streams = {}\n\
             # An HTTP client slower than this to send its headers is disconnected.\n\
             http_header_timeout_ms = {}\n\
             http_max_body_bytes = {}\n\
             # HTTP/2 keepalive on the gRPC listeners: finds peers that vanished.\n\
             grpc_keepalive_ms = {}\n\
             grpc_keepalive_timeout_ms = {}\n\
             # Concurrent calls per client gRPC connection.\n\
             grpc_max_concurrent_streams = {}\n\
             # Largest gRPC message read or written on the client port.\n\
             grpc_max_message_bytes = {}\n\
             # Client writes in flight on this node (RESOURCE_EXHAUSTED above it).\n\
             max_pending_writes = {}\n",
            l.max_client_connections,
            l.max_http_connections,
            l.max_peer_connections,
            l.max_watch_streams,
            l.http_header_timeout_ms,
            l.http_max_body_bytes,
            l.grpc_keepalive_ms,
            l.grpc_keepalive_timeout_ms,
            l.grpc_max_concurrent_streams,
            l.grpc_max_message_bytes,
            l.max_pending_writes,
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn ports_follow_the_documented_scheme() {
        assert_eq!(
            Ports::of(7100, 1),
            Some(Ports {
                peer: 7101,
                client: 7201,
                http: 7301,
                time_sync: 7401
            })
        );
        assert_eq!(Ports::of(7100, 3).map(|p| p.client), Some(7203));
        assert_eq!(Ports::of(7100, 0), None);
        assert_eq!(Ports::of(7100, 100), None);
        assert_eq!(Ports::of(65300, 1), None);
    }

    #[test]
    fn every_node_lists_the_same_founders() {
        let nodes = local_cluster(3, 7100, "/tmp/pg/", &Security::Insecure).expect("fits");
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[1].data_dir, "/tmp/pg/node2");
        assert_eq!(nodes[2].listen.client, "127.0.0.1:7203");
        for node in &nodes {
            assert_eq!(node.initial_members, nodes[0].initial_members);
        }
        assert!(local_cluster(0, 7100, "x", &Security::Insecure).is_err());
        assert!(local_cluster(3, 65400, "x", &Security::Insecure).is_err());
    }

    #[test]
    fn rendered_toml_parses_back() {
        let secure = Security::Tls {
            certs_dir: "certs/x\"y".into(),
        };
        for security in [Security::Insecure, secure] {
            for mut node in local_cluster(5, 9000, "data/with \"quotes\"", &security).expect("fits")
            {
                assert_eq!(node.insecure, node.tls.is_none());
                let parsed: NodeConfig = toml::from_str(&node.to_toml()).expect("valid TOML");
                assert_eq!(parsed, node);
                node.initial_members.clear();
                let parsed: NodeConfig = toml::from_str(&node.to_toml()).expect("valid TOML");
                assert_eq!(parsed, node);
            }
        }
    }

    /// `cluster-configs/` must be exactly what this module renders. Run with
    /// `HERALD_BLESS_CONFIGS=1` to rewrite them after changing the layout.
    #[test]
    fn checked_in_cluster_configs_match() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../cluster-configs");
        let bless = std::env::var_os("HERALD_BLESS_CONFIGS").is_some();
        for n in [3u32, 5] {
            let name = format!("local-{n}");
            let security = Security::Tls {
                certs_dir: format!("certs/{name}"),
            };
            let nodes = local_cluster(n, 7100, &format!("data/{name}"), &security).expect("fits");
            for node in nodes {
                let path = root.join(&name).join(format!("node{}.toml", node.id));
                if bless {
                    std::fs::create_dir_all(root.join(&name)).expect("mkdir");
                    std::fs::write(&path, node.to_toml()).expect("write");
                }
                let on_disk = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert_eq!(on_disk, node.to_toml(), "{} is stale", path.display());
            }
        }
    }
}
