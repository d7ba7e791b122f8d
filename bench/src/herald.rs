//! A 3-node Herald on loopback, started with `herald_harness`'s local
//! cluster (the same configs and process handling as `heraldctl
//! playground`), plus what a benchmark needs on top: the nodes' pids, the
//! leader, and timing a node's restart (through the harness, on the same
//! config and data).
//!
//! Pids are found in `/proc` by the node's config path (an argument of its
//! command line): a node that was SIGKILLed but not yet reaped has none, so
//! a crashed node shows as gone at once.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use herald_client::proto::Consistency;
use herald_client::{Client, ClientConfig};
use herald_harness::{LocalCluster, Options};
use tokio::time::Instant;

use crate::procfs;

/// A running Herald cluster.
pub struct HeraldCluster {
    cluster: LocalCluster,
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
        let mut me = HeraldCluster { cluster, tls };
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
        self.cluster.client_endpoints()
    }

    /// Node ids in order.
    pub fn ids(&self) -> Vec<u64> {
        self.cluster.nodes().iter().map(|n| n.id()).collect()
    }

    /// The pid of node `id`, if it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        let config = self.cluster.node(id)?.config_path.to_str()?;
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
        self.cluster
            .nodes()
            .iter()
            .map(|n| procfs::disk_usage(&n.data_dir()))
            .sum()
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
            for endpoint in self.endpoints() {
                if let Ok(status) = client.status_of(&endpoint).await
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

    /// kill -9 of node `id` (reaped by the harness).
    pub fn kill(&mut self, id: u64) -> Result<()> {
        let node = self.cluster.node_mut(id)?;
        if !node.is_running() {
            bail!("herald: node{id} is not running");
        }
        node.kill();
        Ok(())
    }

    /// Starts node `id` again on its config and data, as the playground
    /// started it (killing what is left of it first), with its output
    /// appended to its log; returns when it was spawned.
    pub fn restart(&mut self, id: u64) -> Result<Instant> {
        let started = Instant::now();
        self.cluster.node_mut(id)?.restart()?;
        Ok(started)
    }

    /// Waits until node `id` answers a linearizable read, polling every
    /// 10 ms; returns when it did.
    pub async fn wait_serving(&self, id: u64, timeout: Duration) -> Result<Instant> {
        let endpoint = self
            .cluster
            .node(id)
            .ok_or_else(|| anyhow!("herald: no node{id}"))?
            .client_addr();
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
