//! The layout of a local cluster: every node on loopback, node `i` (1-based)
//! on `base` listening on peer `base+i`, client `base+100+i`, HTTP
//! `base+200+i` and time sync `base+300+i`; base 7100 gives clients on
//! 7201.., heraldctl's default endpoints. `cluster-configs/`, `heraldctl
//! playground` and the harness's clusters are all this layout (the harness
//! then moves the ports onto free ones).
//!
//! A cluster is secure ([`Security::Tls`]: every node names its CA,
//! certificate and key, and `root` is the founding administrator) unless
//! asked to be [`Security::Insecure`] (plaintext, no auth).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::{AuthConfig, Config, Listen, MemberConfig, TlsConfig};

/// The loopback address every local node listens on.
pub const LOCAL_HOST: &str = "127.0.0.1";

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

    /// The four as loopback listen addresses.
    pub fn listen(&self) -> Listen {
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        Listen {
            peer: addr(self.peer),
            client: addr(self.client),
            http: addr(self.http),
            time_sync: Some(addr(self.time_sync)),
        }
    }
}

impl MemberConfig {
    /// The `[[initial_members]]` entry of the node `config` describes.
    pub fn of(config: &Config) -> MemberConfig {
        MemberConfig {
            id: config.id,
            number: config.number,
            peer: config.listen.peer.to_string(),
            client: config.listen.client.to_string(),
            http: config.listen.http.to_string(),
            time_sync: config.listen.time_sync.map(|a| a.to_string()),
        }
    }
}

/// The configs of an `n`-node local cluster on `base`, node `i` keeping its
/// data in `{data_root}/node{i}`. Node ids and numbers are both `i`; every
/// other value is its default.
pub fn local_cluster(
    n: u32,
    base: u16,
    data_root: &str,
    security: &Security,
) -> Result<Vec<Config>, String> {
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
    let root = data_root.trim_end_matches('/');
    let mut configs: Vec<Config> = (1..=n)
        .zip(&ports)
        .map(|(i, p)| {
            let mut c = Config::new(
                u64::from(i),
                i,
                PathBuf::from(format!("{root}/node{i}")),
                p.listen(),
            );
            match security {
                Security::Insecure => c.insecure = true,
                Security::Tls { certs_dir } => {
                    let dir = certs_dir.trim_end_matches('/');
                    let stem = herald_certs::node_stem(i.into());
                    c.tls = Some(TlsConfig {
                        ca_file: format!("{dir}/{}", herald_certs::CA_CERT).into(),
                        cert_file: format!("{dir}/{stem}.crt").into(),
                        key_file: format!("{dir}/{stem}.key").into(),
                    });
                    c.auth = AuthConfig {
                        root_users: vec![ROOT_USER.to_string()],
                        root_token_sha256: Vec::new(),
                    };
                }
            }
            c
        })
        .collect();
    let members: Vec<MemberConfig> = configs.iter().map(MemberConfig::of).collect();
    for c in &mut configs {
        c.initial_members = members.clone();
    }
    Ok(configs)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(nodes[1].data_dir, PathBuf::from("/tmp/pg/node2"));
        assert_eq!(nodes[2].listen.client.to_string(), "127.0.0.1:7203");
        for node in &nodes {
            assert_eq!(node.initial_members, nodes[0].initial_members);
            node.validate().expect("valid");
        }
        assert!(local_cluster(0, 7100, "x", &Security::Insecure).is_err());
        assert!(local_cluster(3, 65400, "x", &Security::Insecure).is_err());
    }

    /// `cluster-configs/` must be exactly what this crate renders. Run with
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
                    // Whole files only: another test reads them meanwhile.
                    let tmp = path.with_extension("toml.new");
                    std::fs::write(&tmp, node.to_toml()).expect("write");
                    std::fs::rename(&tmp, &path).expect("rename");
                }
                let on_disk = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert_eq!(on_disk, node.to_toml(), "{} is stale", path.display());
                let loaded = Config::load(&path).expect("loads");
                assert_eq!(loaded, node);
            }
        }
    }

    /// The hand-written examples (three machines, the compose cluster)
    /// load and validate as they are, and their founders agree on the
    /// membership, named by host name.
    #[test]
    fn example_configs_load_and_agree_on_the_founders() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        for dir in ["cluster-configs/three-machines", "deploy/docker/config"] {
            let mut members = None;
            for id in 1..=3u64 {
                let path = root.join(dir).join(format!("node{id}.toml"));
                let c = Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert_eq!(c.id, id, "{}", path.display());
                let founders: Vec<_> = c
                    .initial_members
                    .iter()
                    .map(|m| (m.id, m.peer.clone()))
                    .collect();
                assert_eq!(founders.len(), 3, "{}", path.display());
                assert!(
                    founders
                        .iter()
                        .all(|(_, peer)| peer.parse::<std::net::SocketAddr>().is_err()),
                    "{}: members are named by host name here",
                    path.display()
                );
                match &members {
                    None => members = Some(founders),
                    Some(m) => assert_eq!(m, &founders, "{}", path.display()),
                }
            }
        }
    }
}
