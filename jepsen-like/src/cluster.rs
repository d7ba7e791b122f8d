//! A cluster of real `herald-node` processes on loopback, built for faults
//! (or, with [`ClusterOptions::docker`], in containers on a bridge network:
//! see [`docker`](crate::docker)).
//!
//! The processes are `herald_harness`'s (start, kill, pause, wipe), the
//! configs `herald_config`'s local layout moved onto free ports. Unlike
//! `heraldctl playground`, every peer link goes through its own [`Link`]
//! proxy, and single nodes can be killed, paused, restarted or added later. Secure like
//! production (TLS everywhere, mutual TLS between nodes, auth on; the TCP
//! proxies carry the TLS streams untouched), with the nodes in testing mode
//! so the clock nemesis can skew them. Everything
//! lives in a fresh temporary directory; dropping the [`Cluster`] kills every
//! process (paused ones too) and removes it, so a panic or a Ctrl-C that ends
//! the runtime leaves nothing behind.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use herald_client::{Client, ClientConfig, ClientTls, proto};
use herald_config::local::{ROOT_USER, Security, local_cluster};
use herald_config::{Listen, MemberConfig};
use herald_harness::{NodeProcess, free_ports};
use tokio::time::Instant;

use crate::docker::{Cut, DockerNodes};
use crate::faultfs::{self, FaultControl};
use crate::proxy::{Link, LinkMode};

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Founding voters (3 or 5).
    pub nodes: u32,
    /// Prepare one more node (configs, ports, proxies) that is not started:
    /// the membership nemesis adds and removes it.
    pub spare: bool,
    /// The `herald-node` binary.
    pub node_bin: PathBuf,
    /// Nodes started with `[testing] stale_reads = true`.
    pub stale_reads: Vec<u64>,
    /// Mount a [`faultfs`] over every data dir (the disk faults).
    pub faultfs: bool,
    /// `raft.snapshot_every`, with no log kept after a snapshot (the
    /// snapshot storm); `None` keeps the node's defaults.
    pub snapshot_every: Option<u64>,
    /// Run the nodes in containers of the `herald:local` image on a bridge
    /// network, links cut with iptables ([`crate::docker`]); `node_bin` is
    /// then unused.
    pub docker: bool,
}

/// A running cluster; see the module docs.
#[derive(Debug)]
pub struct Cluster {
    // Fields drop in order, after Drop below killed the processes: the
    // mounts go before the directory they are in.
    mounts: BTreeMap<u64, faultfs::Mount>,
    /// The containers (docker mode): removed before the directory they mount.
    docker: Option<DockerNodes>,
    dir: tempfile::TempDir,
    nodes: BTreeMap<u64, NodeProcess>,
    links: BTreeMap<(u64, u64), Link>,
    founders: Vec<u64>,
    tls: ClientTls,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Kill the processes (paused ones too) before the mounts and the
        // directory they use go.
        self.nodes.clear();
    }
}

/// Where the node binary is: `explicit`, else `$HERALD_NODE_BIN`, else
/// `target/release/herald-node` when running as a cargo test (whose
/// executable sits in `deps/`), else what `heraldctl playground` would use.
pub fn locate_node_binary(explicit: Option<PathBuf>) -> Result<PathBuf> {
    let explicit = explicit.or_else(|| std::env::var_os("HERALD_NODE_BIN").map(PathBuf::from));
    if explicit.is_none()
        && let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
        && dir.ends_with("deps")
        && let Some(release) = dir.parent()
    {
        let candidate = release.join("herald-node");
        return herald_harness::locate_node_binary(Some(candidate), |_| {});
    }
    herald_harness::locate_node_binary(explicit, |cmd| eprintln!("$ {cmd}"))
}

/// A version-2 segment's 32-byte header.
const SEG_HEADER: u64 = 32;
/// Length, CRC and index before a record's payload.
const SEG_RECORD_HEADER: u64 = 16;

/// `(offset, payload length)` of each record of a version-2 segment (see
/// the node's `segment_log.rs`), up to the preallocated zeros.
fn segment_records(bytes: &[u8]) -> Vec<(u64, u32)> {
    let mut out = Vec::new();
    if bytes.len() < SEG_HEADER as usize || &bytes[..7] != b"HRLDLOG" {
        return out;
    }
    let mut at = SEG_HEADER as usize;
    while at + SEG_RECORD_HEADER as usize <= bytes.len() {
        let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let end = at + SEG_RECORD_HEADER as usize + len as usize;
        if len == 0 || end > bytes.len() {
            break;
        }
        out.push((at as u64, len));
        at = end;
    }
    out
}

impl Cluster {
    /// Writes configs, starts the proxies and the founding nodes. Does not
    /// wait for a leader; see [`wait_for_leader`](Cluster::wait_for_leader).
    pub async fn start(options: &ClusterOptions) -> Result<Cluster> {
        if options.nodes == 0 {
            bail!("a cluster needs at least one node");
        }
        let dir = tempfile::Builder::new()
            .prefix("herald-jepsen-")
            .tempdir()
            .context("creating a temporary directory")?;
        let total = options.nodes + u32::from(options.spare);
        let ports = free_ports(4 * total as usize)?;
        let addr =
            |i: u64, k: usize| SocketAddr::from(([127, 0, 0, 1], ports[4 * (i as usize - 1) + k]));
        let root = dir
            .path()
            .to_str()
            .ok_or_else(|| anyhow!("temporary directory is not UTF-8"))?;
        // The playground's layout, moved onto free ports: any field the
        // config gains later keeps its playground value.
        let ids: Vec<u64> = (1..=u64::from(total)).collect();
        let validity = herald_certs::Validity::days(7);
        let docker = if options.docker {
            let tag = dir
                .path()
                .file_name()
                .map(|n| n.to_string_lossy().replace("herald-jepsen-", ""))
                .unwrap_or_default()
                .to_lowercase();
            Some(DockerNodes::create(&tag, &ids, dir.path())?)
        } else {
            None
        };
        let certs = herald_certs::local_cluster(
            &dir.path().join("certs"),
            if docker.is_some() { &[] } else { &ids },
            &[ROOT_USER],
            validity,
        )
        .context("making the cluster's certificates")?;
        if let Some(d) = &docker {
            // Node certificates for the containers' addresses.
            let ca = herald_certs::Ca::load(&certs.dir, &certs.dir.join(herald_certs::CA_KEY))?;
            for &id in &ids {
                let ip = d.ip(id).map(|ip| ip.to_string()).unwrap_or_default();
                ca.issue_node(id, &[ip, "127.0.0.1".into(), "localhost".into()], validity)?
                    .save(&certs.dir, &herald_certs::node_stem(id))?;
            }
        }
        let (root_cert, root_key) = certs.client(ROOT_USER);
        let tls = ClientTls::from_files(&certs.ca(), Some((&root_cert, &root_key)))?;
        let security = Security::Tls {
            certs_dir: format!("{root}/certs"),
        };
        let mut configs = local_cluster(total, 20000, root, &security).map_err(|e| anyhow!(e))?;
        for c in &mut configs {
            c.listen = match docker.as_ref().and_then(|d| d.ip(c.id)) {
                // Each container has its own address: the usual ports.
                Some(ip) => Listen {
                    peer: SocketAddr::from((ip, crate::docker::PEER_PORT)),
                    client: SocketAddr::from((ip, 7201)),
                    http: SocketAddr::from((ip, 7301)),
                    time_sync: Some(SocketAddr::from((ip, 7401))),
                },
                None => Listen {
                    peer: addr(c.id, 0),
                    client: addr(c.id, 1),
                    http: addr(c.id, 2),
                    time_sync: Some(addr(c.id, 3)),
                },
            };
            // Testing mode: the nodes run with --testing (see `spawn`).
            c.testing_mode = true;
        }
        let founding: Vec<MemberConfig> = configs
            .iter()
            .take(options.nodes as usize)
            .map(MemberConfig::of)
            .collect();
        for c in &mut configs {
            c.initial_members = if c.id <= u64::from(options.nodes) {
                founding.clone()
            } else {
                Vec::new()
            };
        }
        let mut links = BTreeMap::new();
        // No proxies in docker mode: the links are the bridge's.
        for from in (1..=u64::from(total)).filter(|_| docker.is_none()) {
            for to in 1..=u64::from(total) {
                if from != to {
                    let upstream = configs[to as usize - 1].listen.peer;
                    links.insert((from, to), Link::start(from, to, upstream).await?);
                }
            }
        }
        let founders: Vec<u64> = (1..=u64::from(options.nodes)).collect();
        let mut nodes = BTreeMap::new();
        for mut config in configs {
            let id = config.id;
            if let Some(every) = options.snapshot_every {
                config.raft.snapshot_every = every;
                // Purge the whole log at each snapshot, so a lagging
                // follower needs one.
                config.raft.keep_logs_after_snapshot = 0;
            }
            // Every link to a peer goes through the chaos suite's proxy.
            for ((from, to), link) in &links {
                if *from == id {
                    config
                        .peer_routes
                        .insert(to.to_string(), link.listen.to_string());
                }
            }
            config.testing.stale_reads = options.stale_reads.contains(&id);
            config.validate()?;
            let node =
                NodeProcess::new(&options.node_bin, config, dir.path())?.current_dir(dir.path());
            nodes.insert(id, node);
        }
        let mut mounts = BTreeMap::new();
        if options.faultfs {
            for node in nodes.values() {
                let backing = dir
                    .path()
                    .join("backing")
                    .join(format!("node{}", node.id()));
                let mount = faultfs::Mount::new(&backing, &node.config.data_dir)
                    .with_context(|| format!("faultfs for node {}", node.id()))?;
                mounts.insert(node.id(), mount);
            }
        }
        let mut cluster = Cluster {
            mounts,
            docker,
            dir,
            nodes,
            links,
            founders: founders.clone(),
            tls,
        };
        for id in founders {
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    /// The temporary directory with configs, data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The founding members' ids.
    pub fn founders(&self) -> &[u64] {
        &self.founders
    }

    /// Every node, the spare included.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeProcess> {
        self.nodes.values()
    }

    /// One node.
    pub fn node(&self, id: u64) -> Option<&NodeProcess> {
        self.nodes.get(&id)
    }

    /// The founders' client addresses, in id order.
    pub fn endpoints(&self) -> Vec<String> {
        self.founders
            .iter()
            .filter_map(|id| self.nodes.get(id).map(NodeProcess::client_addr))
            .collect()
    }

    /// Starts (or restarts) node `id`'s process; a no-op when it runs.
    /// Testing mode: the clock nemesis uses SetClockOffset, and the
    /// checker's own test runs use the [testing] faults.
    pub fn spawn(&mut self, id: u64) -> Result<()> {
        if let Some(d) = self.docker.as_mut() {
            let node = self.nodes.get(&id).ok_or_else(|| anyhow!("no node {id}"))?;
            return d.start(id, &node.config_path, node.config.testing_mode);
        }
        self.node_mut(id)?.start()
    }

    /// Whether the nodes run in containers.
    pub fn is_docker(&self) -> bool {
        self.docker.is_some()
    }

    /// Why links cannot be slowed here (docker mode without `tc netem`);
    /// `None` when they can.
    pub fn delay_unavailable(&mut self) -> Option<String> {
        let running = self.running();
        let d = self.docker.as_mut()?;
        let id = *running.first()?;
        d.delay_unavailable(id)
    }

    /// Everything node `id` has logged so far.
    pub fn log_text(&self, id: u64) -> String {
        match (&self.docker, self.nodes.get(&id)) {
            (Some(d), _) => d.logs(id),
            (None, Some(node)) => node.log_text(),
            (None, None) => String::new(),
        }
    }

    fn node_mut(&mut self, id: u64) -> Result<&mut NodeProcess> {
        self.nodes
            .get_mut(&id)
            .ok_or_else(|| anyhow!("no node {id}"))
    }

    /// SIGKILLs node `id` and reaps it.
    pub async fn kill(&mut self, id: u64) {
        if let Some(d) = self.docker.as_mut() {
            if let Err(e) = d.kill(id) {
                eprintln!("kill node {id}: {e:#}");
            }
            return;
        }
        if let Some(node) = self.nodes.get_mut(&id) {
            node.kill();
        }
    }

    /// SIGSTOPs node `id`.
    pub fn pause(&mut self, id: u64) {
        if let Some(d) = &self.docker {
            if let Err(e) = d.pause(id) {
                eprintln!("pause node {id}: {e:#}");
            }
            return;
        }
        if let Some(node) = self.nodes.get_mut(&id) {
            node.pause();
        }
    }

    /// SIGCONTs node `id`.
    pub fn resume(&mut self, id: u64) {
        if let Some(d) = &self.docker {
            if let Err(e) = d.resume(id) {
                eprintln!("resume node {id}: {e:#}");
            }
            return;
        }
        if let Some(node) = self.nodes.get_mut(&id) {
            node.resume();
        }
    }

    fn is_paused(&self, id: u64) -> bool {
        match &self.docker {
            Some(d) => d.is_paused(id),
            None => self.nodes.get(&id).is_some_and(NodeProcess::is_paused),
        }
    }

    /// Whether node `id` has a live process (paused counts as live).
    pub fn is_running(&mut self, id: u64) -> bool {
        if let Some(d) = &self.docker {
            return d.is_running(id);
        }
        self.nodes.get_mut(&id).is_some_and(NodeProcess::is_running)
    }

    /// Ids of nodes with a process.
    pub fn running(&mut self) -> Vec<u64> {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        ids.into_iter().filter(|&id| self.is_running(id)).collect()
    }

    /// Resumes paused nodes and restarts killed founders and `extra`.
    pub fn revive(&mut self, extra: &[u64]) -> Result<()> {
        let ids: Vec<u64> = self.founders.iter().chain(extra).copied().collect();
        for id in ids {
            if self.is_paused(id) {
                self.resume(id);
            }
            if !self.is_running(id) {
                self.spawn(id)?;
            }
        }
        Ok(())
    }

    /// Sets the mode of link `from -> to`.
    pub fn set_link(&mut self, from: u64, to: u64, mode: LinkMode) {
        if let Some(d) = self.docker.as_mut() {
            let done = match mode {
                // Links heal together (heal_network).
                LinkMode::Pass => Ok(()),
                LinkMode::Stall => d.cut_link(from, to, Cut::Stall),
                LinkMode::Drop => d.cut_link(from, to, Cut::Reset),
                LinkMode::Delay(by) => d.delay(from, by.as_millis() as u64),
            };
            if let Err(e) = done {
                eprintln!("link {from} -> {to} ({mode:?}): {e:#}");
            }
            return;
        }
        if let Some(link) = self.links.get(&(from, to)) {
            link.set(mode);
        }
    }

    /// Cuts every link between nodes of different groups (nodes in no group
    /// keep their links), with `mode`.
    pub fn partition(&mut self, groups: &[Vec<u64>], mode: LinkMode) {
        let group_of = |id: u64| groups.iter().position(|g| g.contains(&id));
        if let Some(d) = self.docker.as_mut() {
            // A real partition: every packet between the groups' hosts.
            let cut = if mode == LinkMode::Drop {
                Cut::Reset
            } else {
                Cut::Stall
            };
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for &a in &ids {
                for &b in ids.iter().filter(|&&b| b > a) {
                    if let (Some(x), Some(y)) = (group_of(a), group_of(b))
                        && x != y
                        && let Err(e) = d.cut_hosts(a, b, cut)
                    {
                        eprintln!("partition {a} | {b}: {e:#}");
                    }
                }
            }
            return;
        }
        for (&(from, to), link) in &self.links {
            if let (Some(a), Some(b)) = (group_of(from), group_of(to))
                && a != b
            {
                link.set(mode);
            }
        }
    }

    /// Every link back to [`LinkMode::Pass`].
    pub fn heal_network(&mut self) {
        if let Some(d) = self.docker.as_mut() {
            d.heal();
        }
        for link in self.links.values() {
            link.set(LinkMode::Pass);
        }
    }

    /// How clients reach the cluster: its CA and the `root` certificate.
    pub fn client_tls(&self) -> Option<ClientTls> {
        Some(self.tls.clone())
    }

    /// A client for node `id` alone (no fail-over), with the cluster's TLS
    /// unless `config` brings its own.
    pub fn client_for(&self, id: u64, mut config: ClientConfig) -> Result<Client> {
        let node = self.nodes.get(&id).ok_or_else(|| anyhow!("no node {id}"))?;
        if config.tls.is_none() {
            config.tls = self.client_tls();
        }
        Ok(Client::with_config(vec![node.client_addr()], config)?)
    }

    /// Each running node's own status (unreachable ones left out).
    pub async fn statuses(&mut self) -> BTreeMap<u64, proto::NodeStatus> {
        let running = self.running();
        let Ok(client) = Client::with_config(
            self.endpoints(),
            ClientConfig {
                tls: self.client_tls(),
                request_timeout: Duration::from_millis(500),
                deadline: Duration::from_millis(800),
                max_attempts: 1,
                ..ClientConfig::default()
            },
        ) else {
            return BTreeMap::new();
        };
        let asks = running.iter().filter_map(|id| {
            let addr = self.nodes.get(id)?.client_addr();
            let client = client.clone();
            Some(async move { (*id, client.status_of(&addr).await) })
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .filter_map(|(id, s)| Some((id, s.ok()?)))
            .collect()
    }

    /// The leader with the highest term any node reports, if any.
    pub async fn leader(&mut self) -> Option<u64> {
        self.statuses()
            .await
            .values()
            .filter(|s| s.role == "leader")
            .max_by_key(|s| s.term)
            .map(|s| s.id)
    }

    /// Founds the cluster (`cluster init`) on founding node `id`, retrying
    /// while founders are still starting.
    pub async fn init(&self, id: u64, timeout: Duration) -> Result<String> {
        let node = self.nodes.get(&id).ok_or_else(|| anyhow!("no node {id}"))?;
        let client = self.client_for(id, ClientConfig::default())?;
        let deadline = Instant::now() + timeout;
        loop {
            match client.init_on(&node.client_addr()).await {
                Ok(r) => return Ok(r.cluster_id),
                Err(herald_client::ClientError::Unavailable(_)) if Instant::now() < deadline => {}
                Err(e) => bail!("cluster init on node {id}: {e}"),
            }
            // Nothing to await: a starting node does not announce itself.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every node in `ids` answers naming the same leader.
    pub async fn wait_for_leader(&mut self, ids: &[u64], timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses = self.statuses().await;
            if let Some(leader) = herald_harness::agreed_leader(
                ids.iter().map(|id| statuses.get(id).map(|s| s.leader_id)),
            ) {
                return Ok(leader);
            }
            if Instant::now() >= deadline {
                bail!("no agreed leader among {ids:?} after {timeout:?}: {statuses:?}");
            }
            // Nothing to await: the nodes do not announce elections.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every node in `ids` names the same leader, one of `ids`
    /// (not a dead node they have not yet noticed is gone).
    pub async fn wait_for_leader_among(&mut self, ids: &[u64], timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.wait_for_leader(ids, left).await {
                Ok(l) if ids.contains(&l) => return Ok(l),
                Ok(l) if Instant::now() >= deadline => {
                    bail!("{ids:?} still follow node {l}, not one of them, after {timeout:?}")
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
            // Nothing to await: the nodes do not announce elections.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Copies every node's log into `to`.
    pub fn copy_logs(&self, to: &Path) -> Result<()> {
        std::fs::create_dir_all(to)?;
        for node in self.nodes.values() {
            if let Some(d) = &self.docker {
                std::fs::write(to.join(format!("node{}.log", node.id())), d.logs(node.id()))?;
            } else if node.log_path.is_file() {
                std::fs::copy(&node.log_path, to.join(format!("node{}.log", node.id())))?;
            }
        }
        Ok(())
    }

    /// The disk-fault switch of node `id`'s data dir, when it has a
    /// [`faultfs`] mount.
    pub fn disk(&self, id: u64) -> Option<FaultControl> {
        self.mounts.get(&id).map(faultfs::Mount::control)
    }

    /// Node `id`'s data dir (through its mount, if any).
    pub fn data_dir(&self, id: u64) -> Option<PathBuf> {
        self.nodes.get(&id).map(|n| n.config.data_dir.clone())
    }

    /// Waits up to `timeout` for node `id`'s process to exit on its own;
    /// its exit status, or `None` while it still runs (or never ran).
    pub async fn wait_exit(
        &mut self,
        id: u64,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        if let Some(d) = &self.docker {
            use std::os::unix::process::ExitStatusExt;
            let code = d.wait_exit(id, timeout).await?;
            return Some(std::process::ExitStatus::from_raw(code << 8));
        }
        self.nodes.get_mut(&id)?.wait_exit(timeout).await
    }

    /// Empties node `id`'s data dir (a lost disk). The node must be stopped.
    pub fn wipe(&mut self, id: u64) -> Result<()> {
        self.node_mut(id)?.wipe()
    }

    /// Flips one bit in the payload of a record in the middle of node
    /// `id`'s log (a stopped node): the longest segment, the middle record,
    /// the middle payload byte. Synced through the mount. Says where, or
    /// `None` when no segment holds three records.
    pub fn flip_record(&self, id: u64) -> Result<Option<String>> {
        use std::os::unix::fs::FileExt;
        let dir = self
            .data_dir(id)
            .ok_or_else(|| anyhow!("no node {id}"))?
            .join("log");
        let mut best: Option<(PathBuf, Vec<(u64, u32)>)> = None;
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "seg") {
                continue;
            }
            let records = segment_records(&std::fs::read(&path)?);
            if records.len() >= 3 && best.as_ref().is_none_or(|(_, r)| records.len() > r.len()) {
                best = Some((path, records));
            }
        }
        let Some((path, records)) = best else {
            return Ok(None);
        };
        let k = records.len() / 2;
        let (at, len) = records[k];
        let byte = at + SEG_RECORD_HEADER + u64::from(len) / 2;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)?;
        let mut b = [0u8; 1];
        file.read_exact_at(&mut b, byte)?;
        b[0] ^= 0x10;
        file.write_all_at(&b, byte)?;
        file.sync_data()?;
        Ok(Some(format!(
            "flipped bit 4 of byte {byte} in {} (record {} of {})",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            k + 1,
            records.len()
        )))
    }

    /// The membership record for node `id`, for `AddLearner`.
    pub fn member(&self, id: u64) -> Option<proto::Member> {
        self.nodes.get(&id).map(NodeProcess::member)
    }
}
