//! Where the `herald-node` binary is, for tools run from a checkout.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

/// Where the `herald-node` binary is.
///
/// An explicit path wins. Otherwise the binary next to the current
/// executable (`target/release/` when run by cargo). When running under cargo
/// (`CARGO` is set) it is built first, so a playground never runs a stale or
/// missing node; `announce` is told the command before it runs.
pub fn locate_node_binary(
    explicit: Option<PathBuf>,
    mut announce: impl FnMut(&str),
) -> Result<PathBuf> {
    if let Some(path) = explicit {
        if !path.is_file() {
            bail!("--node-bin {}: no such file", path.display());
        }
        // Nodes start in their own directories: make the path absolute.
        return path
            .canonicalize()
            .with_context(|| format!("--node-bin {}", path.display()));
    }
    let exe = std::env::current_exe().context("finding the current executable")?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?;
    if let Some(cargo) = std::env::var_os("CARGO") {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        announce("cargo build --release -p herald-node --bin herald-node");
        let status = std::process::Command::new(&cargo)
            .args([
                "build",
                "--release",
                "-p",
                "herald-node",
                "--bin",
                "herald-node",
            ])
            .arg("--manifest-path")
            .arg(&manifest)
            .status()
            .with_context(|| format!("running {}", PathBuf::from(&cargo).display()))?;
        if !status.success() {
            bail!("building herald-node failed ({status})");
        }
    }
    let node = dir.join(format!("herald-node{}", std::env::consts::EXE_SUFFIX));
    if !node.is_file() {
        bail!(
            "{} not found; build it with `cargo build --release -p herald-node` or pass --node-bin",
            node.display()
        );
    }
    Ok(node)
}
