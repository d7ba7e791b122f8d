//! A 3-node etcd 3.4 on loopback: installing it (Debian `etcd-server`),
//! starting it with fresh data dirs, finding the leader, kill -9 and
//! restart of one member, and stopping it. With `tls` it runs the way a
//! secure Herald does: TLS on the client and peer ports, client
//! certificates required on both (`--client-cert-auth`,
//! `--peer-client-cert-auth`), from one CA made by `herald-certs`.
//!
//! Ports: member `i` (0-based) listens for clients on `base + 10 i` and for
//! peers on `base + 10 i + 1`; the default base 42379 keeps clear of a
//! system etcd on 2379/2380 and of Herald's playground ports.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::procfs;

/// Where etcd is, installing Debian's `etcd-server` when it is missing and
/// apt is there. `Ok(None)` means "not available" (the caller decides
/// whether that is fatal).
pub fn ensure_installed(explicit: Option<&Path>) -> Result<Option<PathBuf>> {
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(Some(path.to_path_buf()));
        }
        bail!("--etcd-bin {}: no such file", path.display());
    }
    if let Some(found) = which("etcd") {
        return Ok(Some(found));
    }
    if which("apt-get").is_none() {
        return Ok(None);
    }
    for args in [
        vec!["update", "-qq"],
        vec!["install", "-y", "-qq", "etcd-server"],
    ] {
        eprintln!("etcd not found; running: apt-get {}", args.join(" "));
        let status = std::process::Command::new("apt-get")
            .args(&args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", args.join(" "));
        }
    }
    which("etcd")
        .map(Some)
        .ok_or_else(|| anyhow!("etcd-server installed but no `etcd` on PATH"))
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// One member's addresses and data dir.
#[derive(Debug, Clone)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
}

/// A running 3-member etcd.
pub struct EtcdCluster {
    bin: PathBuf,
    dir: PathBuf,
    members: Vec<Member>,
    children: Vec<Option<Child>>,
    certs: Option<herald_certs::LocalCerts>,
}

/// The scheme of every URL: `https` with TLS.
fn scheme(tls: bool) -> &'static str {
    if tls { "https" } else { "http" }
}

impl EtcdCluster {
    /// Starts `n` members with fresh data dirs under `dir` and waits until
    /// every member reports the same leader.
    pub async fn start(
        bin: &Path,
        dir: &Path,
        base_port: u16,
        n: usize,
        tls: bool,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        let members: Vec<Member> = (0..n)
            .map(|i| {
                let offset = u16::try_from(i * 10).unwrap_or(0);
                Member {
                    name: format!("etcd{i}"),
                    client_port: base_port + offset,
                    peer_port: base_port + offset + 1,
                    data_dir: dir.join(format!("etcd{i}.data")),
                }
            })
            .collect();
        for m in &members {
            if m.data_dir.exists() {
                bail!(
                    "{} exists: etcd needs a fresh data dir",
                    m.data_dir.display()
                );
            }
        }
        let certs = if tls {
            let ids: Vec<u64> = (1..=n as u64).collect();
            Some(
                herald_certs::local_cluster(
                    &dir.join("certs"),
                    &ids,
                    &["root"],
                    herald_certs::Validity::days(2),
                )
                .context("making etcd's certificates")?,
            )
        } else {
            None
        };
        let mut me = EtcdCluster {
            bin: bin.to_path_buf(),
            dir,
            children: members.iter().map(|_| None).collect(),
            members,
            certs,
        };
        for i in 0..n {
            me.spawn(i, true)?;
        }
        me.leader_index(Duration::from_secs(30)).await?;
        if let Some(tls) = me.tls_options()? {
            me.enable_auth(tls).await?;
        }
        Ok(me)
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                format!(
                    "{}={}://127.0.0.1:{}",
                    m.name,
                    scheme(self.certs.is_some()),
                    m.peer_port
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize, fresh: bool) -> Result<Instant> {
        let m = self.members[i].clone();
        let log_path = self.dir.join(format!("{}.log", m.name));
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let log_err = log.try_clone().context("duplicating the log handle")?;
        let s = scheme(self.certs.is_some());
        let client = format!("{s}://127.0.0.1:{}", m.client_port);
        let peer = format!("{s}://127.0.0.1:{}", m.peer_port);
        let started = Instant::now();
        let mut command = Command::new(&self.bin);
        if let Some(certs) = &self.certs {
            let (cert, key) = certs.node(i as u64 + 1);
            let ca = certs.ca();
            for (flag, path) in [
                ("--cert-file", &cert),
                ("--key-file", &key),
                ("--trusted-ca-file", &ca),
                ("--peer-cert-file", &cert),
                ("--peer-key-file", &key),
                ("--peer-trusted-ca-file", &ca),
            ] {
                command.arg(flag).arg(path);
            }
            command.args(["--client-cert-auth", "--peer-client-cert-auth"]);
        }
        // Defaults otherwise: WAL fsync per commit, 100 ms heartbeat,
        // 1000 ms election timeout.
        let child = command
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster()])
            .args(["--initial-cluster-token", "herald-bench"])
            .args([
                "--initial-cluster-state",
                if fresh { "new" } else { "existing" },
            ])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.children[i] = Some(child);
        Ok(started)
    }

    /// Client endpoints (`host:port`) in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// etcd's own RBAC on, as Herald's auth is on a secure cluster: user
    /// `root` (no password: the client certificate's common name is the
    /// user, as with `--client-cert-auth`) with role `root`, then `auth
    /// enable`. Every request is then checked against the user's roles.
    async fn enable_auth(&self, tls: TlsOptions) -> Result<()> {
        let endpoint = format!("https://{}", self.endpoints()[0]);
        let options = ConnectOptions::new()
            .with_timeout(Duration::from_secs(5))
            .with_tls(tls);
        let mut client = etcd_client::Client::connect([endpoint], Some(options))
            .await
            .context("connecting to etcd to enable auth")?;
        client
            .user_add(
                "root",
                "",
                Some(etcd_client::UserAddOptions::new().with_no_pwd()),
            )
            .await
            .context("etcd: user add root")?;
        // The root role exists once named; adding it is harmless either way.
        let _ = client.role_add("root").await;
        client
            .user_grant_role("root", "root")
            .await
            .context("etcd: grant root the root role")?;
        client.auth_enable().await.context("etcd: auth enable")?;
        Ok(())
    }

    /// How clients reach the members: the CA and the `root` client
    /// certificate, with TLS; `None` without.
    pub fn tls_options(&self) -> Result<Option<TlsOptions>> {
        let Some(certs) = &self.certs else {
            return Ok(None);
        };
        let read =
            |p: PathBuf| std::fs::read(&p).with_context(|| format!("reading {}", p.display()));
        let (cert, key) = certs.client("root");
        Ok(Some(
            TlsOptions::new()
                .ca_certificate(Certificate::from_pem(read(certs.ca())?))
                .identity(Identity::from_pem(read(cert)?, read(key)?)),
        ))
    }

    /// `https` with TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        scheme(self.certs.is_some())
    }

    /// Pids of the running members.
    pub fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter_map(|m| {
                let dir = m.data_dir.to_str()?;
                procfs::pids_with_arg(dir).into_iter().next()
            })
            .collect()
    }

    /// Disk used by the data dirs.
    pub fn data_bytes(&self) -> u64 {
        self.members
            .iter()
            .map(|m| procfs::disk_usage(&m.data_dir))
            .sum()
    }

    /// The index of the leader, once a live member names one.
    pub async fn leader_index(&self, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        let mut last_error = String::from("no member answered");
        loop {
            for (i, endpoint) in self.endpoints().iter().enumerate() {
                if self.children[i].is_none() {
                    continue;
                }
                match member_status(endpoint, self.tls_options()?).await {
                    Ok((member_id, leader)) if leader != 0 => {
                        if member_id == leader {
                            return Ok(i);
                        }
                        // Ask the others; the leader answers with its own id.
                    }
                    Ok(_) => last_error = format!("{endpoint}: no leader yet"),
                    Err(e) => last_error = format!("{endpoint}: {e:#}"),
                }
            }
            if Instant::now() >= deadline {
                bail!("etcd: no leader after {timeout:?} ({last_error})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// kill -9 of member `i`.
    pub async fn kill(&mut self, i: usize) -> Result<()> {
        let mut child = self.children[i]
            .take()
            .ok_or_else(|| anyhow!("etcd: member {i} is not running"))?;
        child.kill().await.context("killing an etcd member")?;
        Ok(())
    }

    /// Starts member `i` again on its data dir.
    pub fn restart(&mut self, i: usize) -> Result<Instant> {
        self.spawn(i, false)
    }

    /// Stops all members: SIGTERM, 10 s grace, SIGKILL.
    pub async fn stop(&mut self) {
        for child in self.children.iter().flatten() {
            if let Some(pid) = child.id() {
                procfs::signal(pid, libc::SIGTERM);
            }
        }
        for (i, slot) in self.children.iter_mut().enumerate() {
            if let Some(mut child) = slot.take()
                && tokio::time::timeout(Duration::from_secs(10), child.wait())
                    .await
                    .is_err()
            {
                eprintln!("  etcd: member {i} ignored SIGTERM; SIGKILL");
                let _ = child.kill().await;
            }
        }
    }

    /// The last lines of member `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let path = self.dir.join(format!("{}.log", self.members[i].name));
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(e) => format!("(cannot read {}: {e})", path.display()),
        }
    }
}

/// (member id, leader id) as the member at `endpoint` reports them.
async fn member_status(endpoint: &str, tls: Option<TlsOptions>) -> Result<(u64, u64)> {
    let mut options = ConnectOptions::new()
        .with_timeout(Duration::from_millis(500))
        .with_connect_timeout(Duration::from_millis(500));
    let s = scheme(tls.is_some());
    if let Some(tls) = tls {
        options = options.with_tls(tls);
    }
    let client = etcd_client::Client::connect([format!("{s}://{endpoint}")], Some(options)).await?;
    let status = client.maintenance_client().status().await?;
    let member = status
        .header()
        .map(|h| h.member_id())
        .ok_or_else(|| anyhow!("status without header"))?;
    Ok((member, status.leader()))
}
