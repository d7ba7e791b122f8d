//! The `--docker` mode's nodes: one container per node, from the
//! `herald:local` image (`deploy/docker/build-images`), on a user-defined
//! bridge network of its own, with faults made the way a real network and a
//! real host make them.
//!
//! - A cut link is an iptables rule in the receiving container's network
//!   namespace, entered from the host with `nsenter -t <pid> -n` (the image
//!   is `FROM scratch`: it has no iptables of its own). A link `from -> to`
//!   drops (stall) or resets (`REJECT --reject-with tcp-reset`) the packets
//!   `from` sends to `to`'s Raft port, which is what the loopback proxy's
//!   link does to the connections `from` opens; a partition between groups
//!   drops everything between their addresses, every port and protocol.
//! - Slow links are `tc netem` on the container's interface.
//! - A kill is `docker kill` (SIGKILL), a restart `docker start`; a pause
//!   is `docker pause` (the cgroup freezer).
//!
//! The chaos run's directory (configs, certificates, data dirs) is
//! bind-mounted into every container at the same path, so the configs name
//! the same files inside and out. The client operations run on the host,
//! against the containers' addresses on the bridge.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The image the nodes run.
pub const IMAGE: &str = "herald:local";
/// Every node's Raft peer port inside its container.
pub const PEER_PORT: u16 = 7101;

/// Why the docker mode cannot run here (`None`: it can): no docker, no
/// daemon, no `herald:local` image, no `nsenter` or `iptables`, not root.
pub fn unavailable() -> Option<String> {
    let found = |cmd: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(cmd).is_file()))
    };
    if !found("docker") {
        return Some("docker is not installed (no docker on PATH)".into());
    }
    match Command::new("docker").arg("info").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let last = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
            return Some(format!(
                "the Docker daemon does not answer (docker info: {last})"
            ));
        }
        Err(e) => return Some(format!("running docker info: {e}")),
    }
    match Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", IMAGE])
        .output()
    {
        Ok(o) if o.status.success() => {}
        _ => {
            return Some(format!(
                "no {IMAGE} image (build it: cargo build --release, then bash deploy/docker/build-images)"
            ));
        }
    }
    for cmd in ["nsenter", "iptables"] {
        if !found(cmd) {
            return Some(format!(
                "{cmd} is not installed: links are cut with nsenter + iptables from the host"
            ));
        }
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: nsenter into the containers' network namespaces needs root".into());
    }
    None
}

/// How a cut link treats packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Dropped: the connection stalls.
    Stall,
    /// Refused with a TCP reset: the connection breaks.
    Reset,
}

/// One node's container.
#[derive(Debug)]
struct Container {
    name: String,
    ip: Ipv4Addr,
    /// Made (`docker run`) yet; later starts are `docker start`.
    created: bool,
}

/// The network and the containers of one run. Dropping it removes both.
#[derive(Debug)]
pub struct DockerNodes {
    network: String,
    mount: PathBuf,
    containers: BTreeMap<u64, Container>,
    /// The iptables rules in place, by node: removed by flushing its chain.
    cut: BTreeMap<u64, bool>,
    delayed: BTreeMap<u64, bool>,
    /// Whether `tc netem` works here, once probed (`Some(None)`: it does).
    netem: Option<Option<String>>,
}

/// Runs `docker args...`; its stdout, or an error with its stderr.
fn docker(args: &[&str]) -> Result<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .with_context(|| format!("running docker {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The chain this suite keeps its rules in, in each container's namespace.
const CHAIN: &str = "HERALD-CHAOS";

impl DockerNodes {
    /// Creates the bridge network `herald-jepsen-<tag>` on a free /24 and
    /// names an address in it for each of `ids`; `mount` (the run's
    /// directory) is bind-mounted into every container.
    pub fn create(tag: &str, ids: &[u64], mount: &Path) -> Result<DockerNodes> {
        let network = format!("herald-jepsen-{tag}");
        // A /24 no other network holds: try a few in 172.30-31.x.
        let mut subnet = None;
        for third in 0..=255u8 {
            let second = 30 + (u32::from(third) + std::process::id()) % 2;
            let third = ((u32::from(third) * 7 + std::process::id()) % 256) as u8;
            let candidate = format!("172.{second}.{third}.0/24");
            match docker(&[
                "network", "create", "--driver", "bridge", "--subnet", &candidate, &network,
            ]) {
                Ok(_) => {
                    subnet = Some((second as u8, third));
                    break;
                }
                Err(e) if e.to_string().contains("overlap") => continue,
                Err(e) => return Err(e),
            }
        }
        let Some((second, third)) = subnet else {
            bail!("no free /24 in 172.30-31.0.0/16 for the network {network}");
        };
        let containers = ids
            .iter()
            .map(|&id| {
                (
                    id,
                    Container {
                        name: format!("{network}-node{id}"),
                        ip: Ipv4Addr::new(172, second, third, 10 + id as u8),
                        created: false,
                    },
                )
            })
            .collect();
        Ok(DockerNodes {
            network,
            mount: mount.to_path_buf(),
            containers,
            cut: BTreeMap::new(),
            delayed: BTreeMap::new(),
            netem: None,
        })
    }

    /// Node `id`'s address on the bridge.
    pub fn ip(&self, id: u64) -> Option<Ipv4Addr> {
        self.containers.get(&id).map(|c| c.ip)
    }

    fn container(&self, id: u64) -> Result<&Container> {
        self.containers
            .get(&id)
            .with_context(|| format!("no container for node {id}"))
    }

    /// Starts node `id`'s container on `config` (made on the first start,
    /// `docker start` afterwards); a no-op while it runs.
    pub fn start(&mut self, id: u64, config: &Path, testing: bool) -> Result<()> {
        if self.is_running(id) {
            return Ok(());
        }
        let mount = format!("{0}:{0}", self.mount.display());
        let network = self.network.clone();
        let c = self
            .containers
            .get_mut(&id)
            .with_context(|| format!("no container for node {id}"))?;
        if c.created {
            docker(&["start", &c.name])?;
            return Ok(());
        }
        let ip = c.ip.to_string();
        let config = config.display().to_string();
        let mut args = vec![
            "run",
            "--detach",
            "--name",
            &c.name,
            "--hostname",
            &c.name,
            "--network",
            &network,
            "--ip",
            &ip,
            "--volume",
            &mount,
            "--env",
            "RUST_LOG=info,openraft=warn",
            "--env",
            "NO_COLOR=1",
            IMAGE,
        ];
        if testing {
            args.push("--testing");
        }
        args.extend(["--config", &config]);
        docker(&args)?;
        c.created = true;
        Ok(())
    }

    /// Whether node `id`'s container runs (paused counts as running).
    pub fn is_running(&self, id: u64) -> bool {
        let Ok(c) = self.container(id) else {
            return false;
        };
        c.created
            && docker(&["inspect", "--format", "{{.State.Running}}", &c.name])
                .is_ok_and(|s| s == "true")
    }

    /// `docker kill` (SIGKILL).
    pub fn kill(&mut self, id: u64) -> Result<()> {
        if !self.is_running(id) {
            return Ok(());
        }
        let name = self.container(id)?.name.clone();
        // A paused container is killed as it is.
        docker(&["kill", &name]).map(|_| ())?;
        // Rules live in the namespace, which died with it.
        self.cut.remove(&id);
        self.delayed.remove(&id);
        Ok(())
    }

    /// `docker pause` (the freezer cgroup).
    pub fn pause(&self, id: u64) -> Result<()> {
        docker(&["pause", &self.container(id)?.name]).map(|_| ())
    }

    /// `docker unpause`.
    pub fn resume(&self, id: u64) -> Result<()> {
        docker(&["unpause", &self.container(id)?.name]).map(|_| ())
    }

    /// Whether node `id`'s container is paused.
    pub fn is_paused(&self, id: u64) -> bool {
        self.container(id).is_ok_and(|c| {
            docker(&["inspect", "--format", "{{.State.Paused}}", &c.name])
                .is_ok_and(|s| s == "true")
        })
    }

    /// Runs `cmd args...` in node `id`'s network namespace, from the host.
    fn in_netns(&self, id: u64, cmd: &str, args: &[&str]) -> Result<()> {
        let c = self.container(id)?;
        let pid = docker(&["inspect", "--format", "{{.State.Pid}}", &c.name])?;
        if pid == "0" {
            bail!("node {id}'s container is not running");
        }
        let out = Command::new("nsenter")
            .args(["-t", &pid, "-n", cmd])
            .args(args)
            .output()
            .with_context(|| format!("running nsenter {cmd}"))?;
        if !out.status.success() {
            bail!(
                "nsenter -t {pid} -n {cmd} {} (node {id}): {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// The suite's chain in node `id`'s namespace, jumped to from INPUT.
    fn ensure_chain(&mut self, id: u64) -> Result<()> {
        if self.cut.get(&id).copied().unwrap_or(false) {
            return Ok(());
        }
        // Left over from a container that was restarted: start clean.
        let _ = self.in_netns(id, "iptables", &["-D", "INPUT", "-j", CHAIN]);
        let _ = self.in_netns(id, "iptables", &["-F", CHAIN]);
        let _ = self.in_netns(id, "iptables", &["-X", CHAIN]);
        self.in_netns(id, "iptables", &["-N", CHAIN])?;
        self.in_netns(id, "iptables", &["-I", "INPUT", "-j", CHAIN])?;
        self.cut.insert(id, true);
        Ok(())
    }

    /// Cuts the link `from -> to`: what `from` sends to `to`'s Raft port
    /// (the connections `from` opens to `to`), dropped at `to`.
    pub fn cut_link(&mut self, from: u64, to: u64, cut: Cut) -> Result<()> {
        let src = self.container(from)?.ip.to_string();
        let port = PEER_PORT.to_string();
        self.ensure_chain(to)?;
        let mut rule = vec!["-A", CHAIN, "-s", &src, "-p", "tcp", "--dport", &port];
        match cut {
            Cut::Stall => rule.extend(["-j", "DROP"]),
            Cut::Reset => rule.extend(["-j", "REJECT", "--reject-with", "tcp-reset"]),
        }
        self.in_netns(to, "iptables", &rule)
    }

    /// Cuts everything between `a` and `b`, both ways, every port.
    pub fn cut_hosts(&mut self, a: u64, b: u64, cut: Cut) -> Result<()> {
        for (from, to) in [(a, b), (b, a)] {
            let src = self.container(from)?.ip.to_string();
            self.ensure_chain(to)?;
            if cut == Cut::Reset {
                self.in_netns(
                    to,
                    "iptables",
                    &[
                        "-A",
                        CHAIN,
                        "-s",
                        &src,
                        "-p",
                        "tcp",
                        "-j",
                        "REJECT",
                        "--reject-with",
                        "tcp-reset",
                    ],
                )?;
            }
            self.in_netns(to, "iptables", &["-A", CHAIN, "-s", &src, "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Why slow links cannot be made here (`None`: they can), probed once
    /// in running node `id`'s namespace: a kernel without `sch_netem`
    /// answers "Specified qdisc kind is unknown".
    pub fn delay_unavailable(&mut self, id: u64) -> Option<String> {
        if let Some(known) = &self.netem {
            return known.clone();
        }
        let probe = self
            .in_netns(
                id,
                "tc",
                &[
                    "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", "1ms",
                ],
            )
            .and_then(|()| self.in_netns(id, "tc", &["qdisc", "del", "dev", "eth0", "root"]));
        let why = probe
            .err()
            .map(|e| format!("tc netem does not work in the containers' namespaces ({e:#})"));
        self.netem = Some(why.clone());
        why
    }

    /// Delays every packet node `id` sends by `ms`.
    pub fn delay(&mut self, id: u64, ms: u64) -> Result<()> {
        let delay = format!("{ms}ms");
        self.in_netns(
            id,
            "tc",
            &[
                "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", &delay,
            ],
        )?;
        self.delayed.insert(id, true);
        Ok(())
    }

    /// Every rule and delay gone, on every running node.
    pub fn heal(&mut self) {
        let ids: Vec<u64> = self.containers.keys().copied().collect();
        for id in ids {
            if self.cut.remove(&id).is_some() {
                let _ = self.in_netns(id, "iptables", &["-F", CHAIN]);
            }
            if self.delayed.remove(&id).is_some() {
                let _ = self.in_netns(id, "tc", &["qdisc", "del", "dev", "eth0", "root"]);
            }
        }
    }

    /// Node `id`'s output so far (`docker logs`).
    pub fn logs(&self, id: u64) -> String {
        let Ok(c) = self.container(id) else {
            return String::new();
        };
        if !c.created {
            return String::new();
        }
        match Command::new("docker").args(["logs", &c.name]).output() {
            Ok(o) => {
                let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&o.stderr));
                text
            }
            Err(e) => format!("docker logs {}: {e}", c.name),
        }
    }

    /// Waits up to `timeout` for node `id`'s container to stop on its own;
    /// its exit code, or `None` while it runs.
    pub async fn wait_exit(&self, id: u64, timeout: std::time::Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if !self.is_running(id) {
                let c = self.container(id).ok()?;
                return docker(&["inspect", "--format", "{{.State.ExitCode}}", &c.name])
                    .ok()?
                    .parse()
                    .ok();
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            // Nothing to await: docker has no exit event we subscribe to here.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

impl Drop for DockerNodes {
    fn drop(&mut self) {
        for c in self.containers.values().filter(|c| c.created) {
            let _ = docker(&["rm", "--force", &c.name]);
        }
        let _ = docker(&["network", "rm", &self.network]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where Docker is missing the reason is a sentence naming what is
    /// missing; where it is all there, `None`.
    #[test]
    fn unavailable_says_why() {
        if let Some(why) = unavailable() {
            assert!(
                ["docker", "image", "nsenter", "iptables", "root"]
                    .iter()
                    .any(|w| why.contains(w)),
                "{why}"
            );
        }
    }
}
