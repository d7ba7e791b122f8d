//! One `herald-node` process: its config file, its log, and the signals a
//! test or a tool sends it.
//!
//! The node is started with `--config <file>` (and `--testing` when the
//! config's `testing_mode` is on), its stdout and stderr appended to its log
//! file (the node logs to stderr), `NO_COLOR` set since the log is a file.
//! It runs in its own process group, so a terminal's Ctrl-C reaches only
//! the program driving it, which then stops it in order. Dropping a
//! [`NodeProcess`] kills it (a paused one too), so a failing test or a
//! panicking tool leaves nothing behind.
//!
//! Processes are `std::process::Child`ren, polled with `try_wait` where a
//! wait must be bounded; nothing here blocks a runtime for more than the
//! reaping of a SIGKILLed process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use herald_config::Config;
use tokio::time::Instant;

/// How often bounded waits poll a process.
const POLL: Duration = Duration::from_millis(20);

/// A node process (not necessarily running); see the module docs.
#[derive(Debug)]
pub struct NodeProcess {
    /// The node's config, as written to [`config_path`](Self::config_path).
    pub config: Config,
    /// The config file.
    pub config_path: PathBuf,
    /// Where its stdout and stderr go (appended across restarts).
    pub log_path: PathBuf,
    bin: PathBuf,
    cwd: Option<PathBuf>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    paused: bool,
}

impl NodeProcess {
    /// A node running `bin` on `config`, with its config file and log in
    /// `dir` (`node<id>.toml`, `node<id>.log`). Writes the config file;
    /// does not start the process.
    pub fn new(bin: &Path, config: Config, dir: &Path) -> Result<NodeProcess> {
        let id = config.id;
        let node = NodeProcess {
            config_path: dir.join(format!("node{id}.toml")),
            log_path: dir.join(format!("node{id}.log")),
            config,
            bin: bin.to_path_buf(),
            cwd: None,
            env: Vec::new(),
            child: None,
            paused: false,
        };
        node.write_config()?;
        Ok(node)
    }

    /// Starts the process in `dir` (relative paths in the config are
    /// relative to it).
    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.cwd = Some(dir.to_path_buf());
        self
    }

    /// Adds `key=value` to the process's environment.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The Raft id.
    pub fn id(&self) -> u64 {
        self.config.id
    }

    /// The client gRPC address.
    pub fn client_addr(&self) -> String {
        self.config.listen.client.to_string()
    }

    /// This node's membership record, for `AddLearner` (a learner, its
    /// incarnation not yet recorded).
    pub fn member(&self) -> herald_client::proto::Member {
        let listen = &self.config.listen;
        herald_client::proto::Member {
            id: self.config.id,
            number: self.config.number,
            peer_addr: listen.peer.to_string(),
            client_addr: listen.client.to_string(),
            http_addr: listen.http.to_string(),
            time_addr: listen.time_sync.map(|a| a.to_string()).unwrap_or_default(),
            voter: false,
            incarnation: String::new(),
        }
    }

    /// (Re)writes the config file from [`config`](Self::config); a running
    /// node reads it at its next start.
    pub fn write_config(&self) -> Result<()> {
        std::fs::write(&self.config_path, self.config.to_toml())
            .with_context(|| format!("writing {}", self.config_path.display()))?;
        std::fs::create_dir_all(self.data_dir())
            .with_context(|| format!("creating {}", self.data_dir().display()))
    }

    /// The data dir (relative to the working directory if relative).
    pub fn data_dir(&self) -> PathBuf {
        match &self.cwd {
            Some(cwd) => cwd.join(&self.config.data_dir),
            None => self.config.data_dir.clone(),
        }
    }

    /// Starts the process; a no-op while it runs.
    pub fn start(&mut self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        let log_err = log.try_clone().context("duplicating the log handle")?;
        let mut command = Command::new(&self.bin);
        if self.config.testing_mode {
            command.arg("--testing");
        }
        command.arg("--config").arg(&self.config_path);
        if let Some(cwd) = &self.cwd {
            command.current_dir(cwd);
        }
        {
            use std::os::unix::process::CommandExt;
            // Own process group: the terminal's Ctrl-C is ours to handle.
            command.process_group(0);
        }
        let child = command
            // The log is a file: no colour escapes in it.
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    /// The pid while the process has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is alive (paused counts as alive).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Whether it was paused and not resumed since.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// How the process ended, if it exited on its own since the last look
    /// (it is then reaped and counts as stopped).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        self.paused = false;
        Some(status)
    }

    /// Waits up to `timeout` for the process to exit on its own; how it
    /// ended, or `None` while it still runs (or never ran).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            self.child.as_ref()?;
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGKILL, and reap. The data dir stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// Stops the process the way an operator would: SIGTERM (the node's
    /// "shut down cleanly"), up to `grace` to exit, then SIGKILL. Returns
    /// whether it had to be killed.
    pub async fn stop(&mut self, grace: Duration) -> bool {
        if self.child.is_none() {
            return false;
        }
        if self.paused {
            self.resume();
        }
        self.signal(libc::SIGTERM);
        if self.wait_exit(grace).await.is_some() {
            return false;
        }
        self.kill();
        true
    }

    /// Kills the process (if it runs) and starts it again on the same
    /// config and data.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.start()
    }

    /// SIGSTOP: the process freezes, its sockets stay open.
    pub fn pause(&mut self) {
        if self.signal(libc::SIGSTOP) {
            self.paused = true;
        }
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
        self.paused = false;
    }

    /// Sends `sig` to the process; false when there is none.
    fn signal(&self, sig: libc::c_int) -> bool {
        let Some(pid) = self.pid().and_then(|p| libc::pid_t::try_from(p).ok()) else {
            return false;
        };
        // SAFETY: kill(2) has no memory-safety preconditions. The pid is our
        // own child that has not been reaped yet (reaping clears `child`),
        // so it cannot have been reused by another process.
        unsafe { libc::kill(pid, sig) == 0 }
    }

    /// Empties the data dir, as a lost disk would. The process must be
    /// stopped.
    pub fn wipe(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("wipe node {}: stop it first", self.id());
        }
        let dir = self.data_dir();
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            }
            .with_context(|| format!("wiping {}", path.display()))?;
        }
        Ok(())
    }

    /// Everything the node has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        match std::fs::read_to_string(&self.log_path) {
            Ok(text) => {
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(e) => format!("(cannot read {}: {e})", self.log_path.display()),
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if self.paused {
            self.resume();
        }
        self.kill();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use herald_config::local::{Security, local_cluster};

    /// A fake node that prints its arguments and sleeps: the process
    /// handling works without a real herald-node.
    pub(crate) fn fake_node(dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let fake = dir.join("fake-node");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho \"started with $*\"\nexec sleep 30\n",
        )
        .expect("write");
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        fake
    }

    #[tokio::test]
    async fn signals_reach_the_process() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let fake = fake_node(tmp.path());
        let root = tmp.path().to_str().expect("utf-8");
        let mut config =
            local_cluster(1, 17100, root, &Security::Insecure).expect("fits")[0].clone();
        config.testing_mode = true;
        let mut node = NodeProcess::new(&fake, config, tmp.path()).expect("new");
        assert!(node.config_path.is_file() && node.data_dir().is_dir());
        node.start().expect("start");
        assert!(node.is_running());
        node.pause();
        assert!(node.is_paused() && node.is_running());
        node.resume();
        std::fs::write(node.data_dir().join("x"), "x").expect("write");
        assert!(node.wipe().is_err(), "running");
        node.kill();
        assert!(!node.is_running());
        node.wipe().expect("wipe");
        assert!(!node.data_dir().join("x").exists());
        node.restart().expect("restart");
        for _ in 0..100 {
            if node.log_text().matches("--testing --config").count() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            !node.stop(Duration::from_secs(5)).await,
            "sleep dies of SIGTERM"
        );
        assert!(node.wait_exit(Duration::from_millis(10)).await.is_none());
        assert!(node.log_text().contains("--testing --config"));
    }
}
