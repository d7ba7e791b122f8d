//! A local cluster of `herald-node` processes in one directory: what
//! `heraldctl playground` runs and the benchmark measures.
//!
//! Each node gets a config file (`herald_config::local`'s layout on
//! `base_port`), a data directory and a log file under the directory. The
//! processes are [`NodeProcess`]es: a Ctrl-C in the terminal reaches only
//! the driving program, which then stops the nodes in order (SIGTERM, a
//! grace period, SIGKILL for stragglers); single nodes can be killed,
//! paused and restarted on their config and data.
//!
//! Secure unless asked otherwise: a CA, a certificate per node and the
//! `root` client certificate are made in `<dir>/certs`, every node speaks
//! TLS (mutual between nodes) and `root` is the founding administrator.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use herald_client::{Client, ClientConfig, ClientTls};
use herald_config::local::{ROOT_USER, Security, local_cluster};
use tokio::time::Instant;

use crate::process::NodeProcess;

/// What to start.
#[derive(Debug, Clone)]
pub struct Options {
    /// How many founding nodes.
    pub nodes: u32,
    /// The directory for configs, data and logs: created if absent, refused
    /// if it exists and is not empty.
    pub dir: PathBuf,
    /// Port base; see [`herald_config::local`].
    pub base_port: u16,
    /// The `herald-node` binary.
    pub node_bin: PathBuf,
    /// Plaintext, no certificates, no auth.
    pub insecure: bool,
    /// Start the nodes with `--testing` (test hooks on).
    pub testing: bool,
}

/// A running local cluster. Dropping it kills the nodes;
/// [`stop`](LocalCluster::stop) is the orderly way.
#[derive(Debug)]
pub struct LocalCluster {
    dir: PathBuf,
    nodes: Vec<NodeProcess>,
    certs: Option<herald_certs::LocalCerts>,
}

/// How long the playground's certificates are valid.
const CERT_DAYS: u32 = 365;

impl LocalCluster {
    /// Writes the configs and data directories and spawns the nodes. Does
    /// not wait for them; see [`wait_for_leader`](LocalCluster::wait_for_leader).
    pub async fn start(options: &Options) -> Result<LocalCluster> {
        let dir = prepare_dir(&options.dir)?;
        let root = dir
            .to_str()
            .ok_or_else(|| anyhow!("{}: the path is not UTF-8", dir.display()))?;
        let certs = if options.insecure {
            None
        } else {
            let ids: Vec<u64> = (1..=u64::from(options.nodes)).collect();
            Some(
                herald_certs::local_cluster(
                    &dir.join("certs"),
                    &ids,
                    &[ROOT_USER],
                    herald_certs::Validity::days(CERT_DAYS),
                )
                .context("making the playground's certificates")?,
            )
        };
        let security = match &certs {
            None => Security::Insecure,
            Some(c) => Security::Tls {
                certs_dir: c
                    .dir
                    .to_str()
                    .ok_or_else(|| anyhow!("{}: the path is not UTF-8", c.dir.display()))?
                    .to_string(),
            },
        };
        let configs = local_cluster(options.nodes, options.base_port, root, &security)
            .map_err(|e| anyhow!(e))?;
        let mut nodes = Vec::with_capacity(configs.len());
        for mut config in configs {
            config.testing_mode = options.testing;
            let mut node = NodeProcess::new(&options.node_bin, config, &dir)?.current_dir(&dir);
            node.start()?;
            nodes.push(node);
        }
        Ok(LocalCluster { dir, nodes, certs })
    }

    /// The certificates, unless the cluster is insecure.
    pub fn certs(&self) -> Option<&herald_certs::LocalCerts> {
        self.certs.as_ref()
    }

    /// A client config that reaches this cluster: its CA and the `root`
    /// client certificate (nothing for an insecure cluster).
    pub fn client_config(&self, base: ClientConfig) -> Result<ClientConfig> {
        let tls = match &self.certs {
            None => None,
            Some(c) => {
                let (cert, key) = c.client(ROOT_USER);
                Some(ClientTls::from_files(&c.ca(), Some((&cert, &key)))?)
            }
        };
        Ok(ClientConfig { tls, ..base })
    }

    /// The cluster's directory (absolute).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The nodes, in id order.
    pub fn nodes(&self) -> &[NodeProcess] {
        &self.nodes
    }

    /// Node `id`.
    pub fn node(&self, id: u64) -> Option<&NodeProcess> {
        self.nodes.iter().find(|n| n.id() == id)
    }

    /// Node `id`, to signal, restart or wipe it.
    pub fn node_mut(&mut self, id: u64) -> Result<&mut NodeProcess> {
        self.nodes
            .iter_mut()
            .find(|n| n.id() == id)
            .ok_or_else(|| anyhow!("no node{id}"))
    }

    /// Every node's client gRPC address, for [`Client::new`].
    pub fn client_endpoints(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| n.config.listen.client.to_string())
            .collect()
    }

    /// The first node found to have exited on its own since the last call,
    /// if any.
    pub fn exited_node(&mut self) -> Option<(u64, ExitStatus)> {
        for node in &mut self.nodes {
            if let Some(status) = node.try_exit() {
                return Some((node.id(), status));
            }
        }
        None
    }

    /// Waits until every node answers `Admin.Status` naming the same leader,
    /// and returns that leader's id; founds the cluster (`cluster init`)
    /// when every node answers and none belongs to one yet. `progress` is
    /// told each new picture of the cluster ("node1 follower, node2
    /// candidate, node3 unreachable"). Fails on timeout or when a node exits.
    pub async fn wait_for_leader(
        &mut self,
        timeout: Duration,
        mut progress: impl FnMut(&str),
    ) -> Result<u64> {
        let client = Client::with_config(
            self.client_endpoints(),
            self.client_config(ClientConfig::with_request_timeout(Duration::from_secs(1)))?,
        )?;
        let deadline = Instant::now() + timeout;
        let mut last_picture = String::new();
        loop {
            if let Some((id, status)) = self.exited_node() {
                bail!("node{id} exited during startup ({status})");
            }
            let endpoints = self.client_endpoints();
            let statuses =
                futures::future::join_all(endpoints.iter().map(|e| client.status_of(e))).await;
            let mut parts = Vec::new();
            for (node, status) in self.nodes.iter().zip(&statuses) {
                let id = node.id();
                match status {
                    Ok(s) => {
                        let leader = if s.leader_id == 0 {
                            "?".to_string()
                        } else {
                            s.leader_id.to_string()
                        };
                        parts.push(format!(
                            "node{id} {} (leader {leader}, term {})",
                            s.role, s.term
                        ));
                    }
                    Err(_) => parts.push(format!("node{id} unreachable")),
                }
            }
            // A new cluster is founded once, explicitly (`cluster init`):
            // when every node answers and none belongs to a cluster yet.
            let all_answered = statuses.iter().all(Result::is_ok);
            if all_answered
                && statuses
                    .iter()
                    .all(|s| s.as_ref().is_ok_and(|s| s.cluster_id.is_empty()))
            {
                let first = &endpoints[0];
                match client.init_on(first).await {
                    Ok(r) => progress(&r.message),
                    Err(herald_client::ClientError::Unavailable(why)) => {
                        progress(&format!("cluster init: waiting ({why})"))
                    }
                    Err(e) => bail!("cluster init on {first}: {e}"),
                }
            }
            if let Some(leader) = agreed_leader(
                statuses
                    .iter()
                    .map(|s| s.as_ref().ok().map(|s| s.leader_id)),
            ) {
                return Ok(leader);
            }
            let picture = parts.join(", ");
            if picture != last_picture {
                progress(&picture);
                last_picture = picture;
            }
            if Instant::now() >= deadline {
                bail!("no agreed leader after {timeout:?}: {last_picture}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The last `lines` lines of a node's log.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        self.node(id).map(|n| n.log_tail(lines)).unwrap_or_default()
    }

    /// Stops every node: SIGTERM to all, up to `grace` for all to exit,
    /// then SIGKILL for the rest. Returns the ids of the nodes that had to
    /// be killed.
    pub async fn stop(&mut self, grace: Duration) -> Vec<u64> {
        let deadline = Instant::now() + grace;
        // SIGTERM to every node first, so they shut down side by side.
        let mut stopping = Vec::new();
        for node in &mut self.nodes {
            if node.is_running() {
                stopping.push(node.id());
                if node.is_paused() {
                    node.resume();
                }
                terminate(node);
            }
        }
        let mut killed = Vec::new();
        for node in &mut self.nodes {
            if !stopping.contains(&node.id()) {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if node.wait_exit(left).await.is_none() {
                killed.push(node.id());
                node.kill();
            }
        }
        killed
    }
}

/// SIGTERM, the signal herald-node treats as "shut down cleanly", without
/// waiting (see [`NodeProcess::stop`] for the one-node, waiting form).
fn terminate(node: &NodeProcess) {
    let Some(pid) = node.pid().and_then(|p| libc::pid_t::try_from(p).ok()) else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions. The pid is the
    // node's own child that has not been reaped yet, so it cannot have been
    // reused by another process.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

/// Creates `dir` (or accepts it empty) and returns it absolute.
fn prepare_dir(dir: &Path) -> Result<PathBuf> {
    if dir.exists() {
        let mut entries =
            std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
        if entries.next().is_some() {
            bail!(
                "{} exists and is not empty; pick another --dir",
                dir.display()
            );
        }
    } else {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    dir.canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))
}

/// The leader every node names, when each of `leader_ids` (one per node
/// asked; `None` for a node that did not answer) is the same non-zero id:
/// the one rule of "the cluster has a leader" the playground, the chaos
/// suite and the tests wait for.
pub fn agreed_leader(leader_ids: impl IntoIterator<Item = Option<u64>>) -> Option<u64> {
    let mut agreed = None;
    for id in leader_ids {
        match (id, agreed) {
            (None | Some(0), _) => return None,
            (Some(l), Some(a)) if l != a => return None,
            (Some(l), _) => agreed = Some(l),
        }
    }
    agreed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_is_agreed_only_when_every_node_names_it() {
        assert_eq!(agreed_leader([Some(2), Some(2), Some(2)]), Some(2));
        assert_eq!(agreed_leader([Some(2), Some(3), Some(2)]), None);
        assert_eq!(agreed_leader([Some(2), None, Some(2)]), None);
        assert_eq!(agreed_leader([Some(2), Some(0)]), None);
        assert_eq!(agreed_leader(std::iter::empty()), None);
    }

    #[test]
    fn refuses_a_non_empty_dir() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("pg");
        assert!(prepare_dir(&dir).is_ok(), "absent is fine");
        assert!(prepare_dir(&dir).is_ok(), "empty is fine");
        std::fs::write(dir.join("x"), "x").expect("write");
        let err = prepare_dir(&dir).expect_err("non-empty");
        assert!(err.to_string().contains("not empty"), "{err}");
    }

    /// A fake node that ignores its config and sleeps: the process handling
    /// (spawn, exit detection, SIGTERM) works without a real herald-node.
    #[tokio::test]
    async fn starts_and_stops_processes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let fake = crate::process::tests::fake_node(tmp.path());
        let options = Options {
            nodes: 2,
            dir: tmp.path().join("cluster"),
            base_port: 17100,
            node_bin: fake,
            insecure: false,
            testing: false,
        };
        let mut cluster = LocalCluster::start(&options).await.expect("start");
        assert_eq!(
            cluster.client_endpoints(),
            ["127.0.0.1:17201", "127.0.0.1:17202"]
        );
        assert!(cluster.dir().join("node2.toml").is_file());
        let certs = cluster.certs().expect("secure by default");
        assert!(certs.ca().is_file() && certs.node(2).0.is_file());
        assert!(certs.client(ROOT_USER).0.is_file());
        let toml = std::fs::read_to_string(cluster.dir().join("node2.toml")).expect("config");
        assert!(
            toml.contains("[tls]") && !toml.contains("insecure"),
            "{toml}"
        );
        assert!(cluster.dir().join("node2").is_dir());
        assert!(cluster.exited_node().is_none());
        // Let the script start before stopping it, so the log has its line.
        for _ in 0..100 {
            if cluster.log_tail(2, 5).contains("--config") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let killed = cluster.stop(Duration::from_secs(5)).await;
        assert!(killed.is_empty(), "sleep dies of SIGTERM: {killed:?}");
        assert!(cluster.log_tail(2, 5).contains("--config"));
    }
}
