//! A 3-node Herald on loopback, started with `herald_cli`'s playground (the
//! same configs and process handling as `heraldctl playground`), plus what a
//! benchmark needs on top: the nodes' pids, kill -9 of one node and its
//! restart on the same config and data.
//!
//! Pids are found in `/proc` by the node's config path (an argument of its
//! command line), which also finds nodes this module restarted itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use herald_cli::playground::{LocalCluster, Options};
use herald_client::proto::Consistency;
use herald_client::{Client, ClientConfig};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::procfs;

/// A running Herald cluster.
pub struct HeraldCluster {
    cluster: LocalCluster,
    node_bin: PathBuf,
    /// Nodes restarted by this module (the playground owns the originals).
    restarted: BTreeMap<u64, Child>,
    /// Every node's client endpoint, by id.
    endpoints: BTreeMap<u64, String>,
    /// Every node's config path, by id.
    configs: BTreeMap<u64, PathBuf>,
    /// Every node's data dir, by id.
    data_dirs: BTreeMap<u64, PathBuf>,
    /// The CA and `root`'s certificate, unless the cluster is insecure.
    tls: Option<herald_client::ClientTls>,
}

impl HeraldCluster {
    /// Starts `nodes` nodes under `dir` on `base_port` and waits for a
    /// leader. With `tls` the cluster is the playground's default (TLS on
    /// every port, client certificates, auth on); without, it is insecure.
    pub async fn start(
        node_bin: &Path,
        dir: &Path,
        base_port: u16,
        nodes: u32,
        tls: bool,
    ) -> Result<Self> {
        let options = Options {
            nodes,
            dir: dir.to_path_buf(),
            base_port,
            node_bin: node_bin.to_path_buf(),
            insecure: !tls,
            testing: false,
        };
        let cluster = LocalCluster::start(&options).await?;
        let tls = cluster.client_config(ClientConfig::default())?.tls;
        let root = cluster.dir().to_path_buf();
        let mut me = HeraldCluster {
            node_bin: node_bin.to_path_buf(),
            restarted: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            configs: BTreeMap::new(),
            data_dirs: BTreeMap::new(),
            cluster,
            tls,
        };
        for node in me.cluster.nodes() {
            let id = node.config.id;
            me.endpoints.insert(id, node.config.listen.client.clone());
            me.configs.insert(id, node.config_path.clone());
            me.data_dirs.insert(id, root.join(&node.config.data_dir));
        }
        let leader = me
            .cluster
            .wait_for_leader(Duration::from_secs(30), |p| eprintln!("  herald: {p}"))
            .await?;
        eprintln!("  herald: leader is node{leader}");
        Ok(me)
    }

    /// The CA and client certificates, unless the cluster is insecure (for
    /// a caller that dials a node without `herald_client`).
    pub fn certs(&self) -> Option<&herald_certs::LocalCerts> {
        self.cluster.certs()
    }

    /// The client TLS settings (`None` for an insecure cluster).
    pub fn client_tls(&self) -> Option<herald_client::ClientTls> {
        self.tls.clone()
    }

    /// Client endpoints in id order.
    pub fn endpoints(&self) -> Vec<String> {
        self.endpoints.values().cloned().collect()
    }

    /// Node ids in order.
    pub fn ids(&self) -> Vec<u64> {
        self.endpoints.keys().copied().collect()
    }

    /// The pid of node `id`, if it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        let config = self.configs.get(&id)?.to_str()?;
        procfs::pids_with_arg(config).into_iter().next()
    }

    /// Pids of the running nodes.
    pub fn pids(&self) -> Vec<u32> {
        self.ids()
            .into_iter()
            .filter_map(|id| self.pid(id))
            .collect()
    }

    /// Disk used by all data dirs.
    pub fn data_bytes(&self) -> u64 {
        self.data_dirs.values().map(|d| procfs::disk_usage(d)).sum()
    }

    /// The leader as the live nodes see it (the id most of them name),
    /// asking each node once a round until `timeout`.
    pub async fn leader(&self, timeout: Duration) -> Result<u64> {
        let client = Client::with_config(
            self.endpoints(),
            ClientConfig {
                tls: self.tls.clone(),
                ..ClientConfig::with_request_timeout(Duration::from_millis(500))
            },
        )?;
        let deadline = Instant::now() + timeout;
        loop {
            let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
            for endpoint in self.endpoints.values() {
                if let Ok(status) = client.status_of(endpoint).await
                    && status.leader_id != 0
                {
                    *votes.entry(status.leader_id).or_default() += 1;
                }
            }
            if let Some((&leader, _)) = votes.iter().max_by_key(|(_, n)| **n) {
                return Ok(leader);
            }
            if Instant::now() >= deadline {
                bail!("herald: no node knows a leader after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The leader once it is the lowest-numbered node (where numbered
    /// failover settles when every node is up), or whoever leads after
    /// `timeout`.
    pub async fn settled_leader(&self, timeout: Duration) -> Result<u64> {
        let preferred = self.ids().into_iter().min().unwrap_or(1);
        let deadline = Instant::now() + timeout;
        loop {
            let leader = self.leader(timeout).await?;
            if leader == preferred || Instant::now() >= deadline {
                return Ok(leader);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Index (0-based, id order) of node `id`.
    pub fn index_of(&self, id: u64) -> usize {
        self.ids().iter().position(|&i| i == id).unwrap_or(0)
    }

    /// kill -9 of node `id`.
    pub fn kill(&mut self, id: u64) -> Result<()> {
        let pid = self
            .pid(id)
            .ok_or_else(|| anyhow!("herald: node{id} is not running"))?;
        procfs::signal(pid, libc::SIGKILL);
        Ok(())
    }

    /// Starts node `id` again on its config and data, as the playground
    /// started it, with its output appended to its log.
    pub fn restart(&mut self, id: u64) -> Result<Instant> {
        let config = self
            .configs
            .get(&id)
            .ok_or_else(|| anyhow!("herald: no node{id}"))?
            .clone();
        let dir = self.cluster.dir().to_path_buf();
        let log_path = dir.join(format!("node{id}.log"));
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let log_err = log.try_clone().context("duplicating the log handle")?;
        if let Some(mut old) = self.restarted.remove(&id) {
            let _ = old.start_kill();
        }
        let started = Instant::now();
        let child = Command::new(&self.node_bin)
            .arg("--config")
            .arg(&config)
            .current_dir(&dir)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("restarting node{id}"))?;
        self.restarted.insert(id, child);
        Ok(started)
    }

    /// Waits until node `id` answers a linearizable read, polling every
    /// 10 ms; returns when it did.
    pub async fn wait_serving(&self, id: u64, timeout: Duration) -> Result<Instant> {
        let endpoint = self
            .endpoints
            .get(&id)
            .ok_or_else(|| anyhow!("herald: no node{id}"))?
            .clone();
        let config = ClientConfig {
            max_attempts: 1,
            tls: self.tls.clone(),
            ..ClientConfig::with_request_timeout(Duration::from_millis(500))
        };
        let client = Client::with_config(vec![endpoint], config)?;
        let deadline = Instant::now() + timeout;
        loop {
            if client
                .get_presence("bench-probe", Consistency::Linearizable)
                .await
                .is_ok()
            {
                return Ok(Instant::now());
            }
            if Instant::now() >= deadline {
                bail!("herald: node{id} not serving after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops every node: SIGTERM, 10 s grace, SIGKILL.
    pub async fn stop(&mut self) {
        let killed = self.cluster.stop(Duration::from_secs(10)).await;
        if !killed.is_empty() {
            eprintln!("  herald: had to SIGKILL {killed:?}");
        }
        self.stop_restarted().await;
    }

    /// Stops only the nodes this module restarted.
    async fn stop_restarted(&mut self) {
        for child in self.restarted.values() {
            if let Some(pid) = child.id() {
                procfs::signal(pid, libc::SIGTERM);
            }
        }
        for (id, mut child) in std::mem::take(&mut self.restarted) {
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                eprintln!("  herald: node{id} ignored SIGTERM; SIGKILL");
                let _ = child.kill().await;
            }
        }
    }

    /// Stops all nodes gracefully, then starts them all again on the same
    /// data; returns each node's time from spawn to its first successful
    /// linearizable read.
    pub async fn restart_all(&mut self, timeout: Duration) -> Result<BTreeMap<u64, Duration>> {
        self.stop().await;
        let mut started = BTreeMap::new();
        for id in self.ids() {
            started.insert(id, self.restart(id)?);
        }
        let mut times = BTreeMap::new();
        let me: &HeraldCluster = self;
        let waits = futures::future::join_all(
            me.ids()
                .into_iter()
                .map(|id| async move { (id, me.wait_serving(id, timeout).await) }),
        )
        .await;
        for (id, result) in waits {
            let served = result?;
            times.insert(id, served - started[&id]);
        }
        Ok(times)
    }

    /// The last lines of node `id`'s log.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        self.cluster.log_tail(id, lines)
    }
}
