//! `heraldctl snapshot ...`: backups, like etcdctl's `snapshot save`,
//! `snapshot status` and `snapshot restore`. The logic is the node crate's
//! (`herald_node::backup`); this is the command line around it.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use herald_node::backup::{self, RestorePlan, Summary};
use herald_node::raft::identity;
use serde_json::json;

use super::Ctx;
use crate::output::{Format, Table, print_json};

#[derive(Subcommand)]
pub enum Cmd {
    /// Save a consistent backup of the cluster's state to FILE: the node
    /// that answers first catches up with every write acknowledged before
    /// the call, then streams its state (written to FILE.part, checked,
    /// fsynced and renamed; an existing FILE is replaced)
    Save {
        /// Where to write the backup
        file: PathBuf,
    },
    /// Check a backup file and show its index, term, size, checksum and
    /// records (offline)
    Status {
        /// The backup file
        file: PathBuf,
    },
    /// Make the data dir of one member of a NEW cluster from a backup
    /// (offline; run it once per member, with the same --cluster-id). Start
    /// the nodes on their configs: they elect a leader with no `cluster
    /// init`
    Restore {
        /// The backup file
        file: PathBuf,
        /// The restored member's config file, as `herald-node --config` will
        /// load it: its `id`, its `data_dir` and its `[[initial_members]]`
        /// (every member of the new cluster, with their addresses) make the
        /// data dir
        #[arg(long)]
        config: PathBuf,
        /// Write the data dir here instead of the config's `data_dir`
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The new cluster's id: leave it out for the first member (a new
        /// one is made and printed), then give that one for every other
        #[arg(long)]
        cluster_id: Option<String>,
    },
}

pub async fn run(cmd: Cmd, format: Format, ctx: impl FnOnce() -> Result<Ctx>) -> Result<()> {
    match cmd {
        Cmd::Save { file } => save(&ctx()?, &file).await,
        Cmd::Status { file } => {
            let summary = backup::read(&file)?.summary;
            print_summary(format, &file, &summary);
            Ok(())
        }
        Cmd::Restore {
            file,
            config,
            data_dir,
            cluster_id,
        } => restore(format, &file, &config, data_dir, cluster_id),
    }
}

/// `snapshot save`: progress on stderr for large backups (at most one line
/// a second, or a line per 10% when stderr is not a terminal).
async fn save(ctx: &Ctx, file: &Path) -> Result<()> {
    let started = Instant::now();
    let mut last_shown = Instant::now();
    let mut last_tenth = 0;
    let tty = std::io::stderr().is_terminal();
    let mut progress = |received: u64, total: u64| {
        if total < 8 << 20 {
            return;
        }
        let tenth = received * 10 / total;
        let due = if tty {
            last_shown.elapsed() >= Duration::from_secs(1)
        } else {
            tenth > last_tenth
        };
        if due || received == total {
            eprintln!(
                "snapshot save: {} of {} ({}%)",
                mib(received),
                mib(total),
                received * 100 / total
            );
            last_shown = Instant::now();
            last_tenth = tenth;
        }
    };
    let summary = backup::save(&ctx.client, file, &mut progress).await?;
    match ctx.format {
        Format::Json => print_json(&summary_json(file, &summary)),
        Format::Table => println!(
            "Snapshot saved to {}: index {}, term {}, {} bytes, crc32 {:08x}, in {:.1}s",
            file.display(),
            summary.index,
            summary.term,
            summary.size,
            summary.crc32,
            started.elapsed().as_secs_f64()
        ),
    }
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn summary_json(file: &Path, s: &Summary) -> serde_json::Value {
    let c = &s.counts;
    json!({
        "file": file.display().to_string(),
        "index": s.index,
        "term": s.term,
        "size": s.size,
        "crc32": format!("{:08x}", s.crc32),
        "sha256": s.sha256,
        "version": s.version,
        "data_format": s.data_format,
        "time_ms": s.time_ms,
        "voters": s.voters,
        "records": {
            "users": c.users,
            "sessions": c.sessions,
            "platforms": c.platforms,
            "pools": c.pools,
            "accounts": c.accounts,
            "leases": c.leases,
            "auth_users": c.auth_users,
            "tokens": c.tokens,
        },
    })
}

fn print_summary(format: Format, file: &Path, s: &Summary) {
    if format == Format::Json {
        print_json(&summary_json(file, s));
        return;
    }
    let c = &s.counts;
    let voters = s
        .voters
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut table = Table::new(&["FIELD", "VALUE"]);
    for (k, v) in [
        ("file", file.display().to_string()),
        ("index", s.index.to_string()),
        ("term", s.term.to_string()),
        ("size", format!("{} bytes", s.size)),
        ("crc32", format!("{:08x}", s.crc32)),
        ("sha256", s.sha256.clone()),
        (
            "format",
            format!("snapshot {}, data dir {}", s.version, s.data_format),
        ),
        ("cluster time", format!("{} ms", s.time_ms)),
        ("voters", voters),
        ("users", c.users.to_string()),
        ("sessions", c.sessions.to_string()),
        ("platforms", c.platforms.to_string()),
        ("pools", c.pools.to_string()),
        ("accounts", c.accounts.to_string()),
        ("leases", c.leases.to_string()),
        ("auth users", c.auth_users.to_string()),
        ("tokens", c.tokens.to_string()),
    ] {
        table.row(vec![k.to_string(), v]);
    }
    table.print();
}

fn restore(
    format: Format,
    file: &Path,
    config: &Path,
    data_dir: Option<PathBuf>,
    cluster_id: Option<String>,
) -> Result<()> {
    let cfg = herald_config::Config::load(config)
        .with_context(|| format!("--config {}", config.display()))?;
    if cfg.initial_members.is_empty() {
        bail!(
            "--config {}: names no [[initial_members]]; a restore needs every member of the new \
             cluster (the same list in every member's config)",
            config.display()
        );
    }
    let new_id = cluster_id.is_none();
    let plan = RestorePlan {
        cluster_id: cluster_id.unwrap_or_else(identity::random_id),
        node_id: cfg.id,
        members: cfg.initial_members.clone(),
        data_dir: data_dir.unwrap_or_else(|| cfg.data_dir.clone()),
    };
    let restored = backup::restore(file, &plan)?;
    let others: Vec<String> = plan
        .members
        .iter()
        .filter(|m| m.id != plan.node_id)
        .map(|m| m.id.to_string())
        .collect();
    match format {
        Format::Json => print_json(&json!({
            "cluster_id": plan.cluster_id,
            "node_id": plan.node_id,
            "incarnation": restored.identity.incarnation,
            "data_dir": restored.data_dir.display().to_string(),
            "index": restored.summary.index,
            "members": plan.members.iter().map(|m| m.id).collect::<Vec<_>>(),
        })),
        Format::Table => {
            println!(
                "Restored node {} of cluster {} into {} (index {}, {} members)",
                plan.node_id,
                plan.cluster_id,
                restored.data_dir.display(),
                restored.summary.index,
                plan.members.len()
            );
            if new_id && !others.is_empty() {
                println!(
                    "Restore the other members ({}) with --cluster-id {}, then start every node \
                     on its config (no cluster init)",
                    others.join(", "),
                    plan.cluster_id
                );
            }
        }
    }
    Ok(())
}
