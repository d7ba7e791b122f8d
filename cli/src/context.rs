//! The running playground, as heraldctl finds it: endpoints and the
//! credentials to use them (the cluster's CA and the `root` client
//! certificate), written by `heraldctl playground` when its cluster is up
//! and removed when it stops.
//!
//! This is what lets the README's first command start a secure cluster
//! that `heraldctl` can use with no extra step: a heraldctl given no
//! `--endpoints` and no credentials reads the context, like kubectl reads
//! its kubeconfig. Anything given explicitly wins, and the context is
//! never used half: either all of it or none.
//!
//! The file is `$HERALD_CONTEXT` if set, else `~/.herald/playground.json`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

/// Endpoints and credentials of a running playground.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    /// The playground's directory (the context belongs to it).
    pub dir: PathBuf,
    /// Client gRPC endpoints (`host:port`).
    pub endpoints: Vec<String>,
    /// The cluster's CA; `None` for an insecure playground.
    pub cacert: Option<PathBuf>,
    /// The client certificate to present.
    pub cert: Option<PathBuf>,
    /// Its key.
    pub key: Option<PathBuf>,
}

/// Where the context file is: `$HERALD_CONTEXT`, else
/// `$HOME/.herald/playground.json`; `None` without either.
pub fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HERALD_CONTEXT") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")?;
    Some(Path::new(&home).join(".herald").join("playground.json"))
}

impl Context {
    /// Reads the context, if there is one whose playground directory still
    /// exists (a playground killed without cleaning up leaves a stale file
    /// behind; it is ignored).
    pub fn load() -> Option<Context> {
        let text = std::fs::read_to_string(path()?).ok()?;
        let ctx: Context = serde_json::from_str(&text).ok()?;
        ctx.dir.is_dir().then_some(ctx)
    }

    /// Writes the context (replacing any other playground's).
    pub fn save(&self) -> Result<PathBuf> {
        let path = path().context("no HOME or HERALD_CONTEXT to keep the playground context in")?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let text = serde_json::to_string_pretty(self).context("encoding the context")?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Removes the context file if it still belongs to this playground.
    pub fn remove_if_mine(&self) {
        if Context::load().is_some_and(|c| c.dir == self.dir)
            && let Some(path) = path()
        {
            let _ = std::fs::remove_file(path);
        }
    }
}
