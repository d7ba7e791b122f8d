//! `heraldctl cluster ...`: status, membership and leadership, like
//! etcdctl's `endpoint status`, `member ...` and `move-leader`.

use anyhow::{Result, bail};
use clap::Subcommand;
use herald_client::proto::{self, AdminResponse};

use super::Ctx;
use crate::output::{self, Format, Table, print_json, to_json};

#[derive(Subcommand)]
pub enum Cmd {
    /// Found the cluster, once: run after starting the founding nodes (the
    /// initial_members of their configs). Nodes never found a cluster on
    /// their own, so an emptied data dir can never start a new, empty one
    Init {
        /// On this client address (default: the first endpoint)
        #[arg(long)]
        node: Option<String>,
        /// How long to keep retrying while founding nodes are not up yet
        #[arg(long, default_value = "30s", value_parser = crate::args::duration)]
        wait: std::time::Duration,
    },
    /// Bring back a member whose data dir was lost: remove it, add it again
    /// as a learner at the same addresses (start it first, on an empty data
    /// dir), wait until it has caught up, and make it a voter (like etcd's
    /// member replace)
    Replace {
        /// The member's id
        id: u64,
    },
    /// Every member's own view: role, term, log and applied index, leader
    Status,
    /// List the members
    Members,
    /// Add a node as a non-voting learner (it catches up, then can be promoted)
    AddLearner {
        /// Raft node id (unique, never reused)
        #[arg(long)]
        id: u64,
        /// Sequence number: the lowest healthy number is the preferred leader
        #[arg(long)]
        number: u32,
        /// Raft peer gRPC address
        #[arg(long)]
        peer: String,
        /// Client gRPC address
        #[arg(long)]
        client: String,
        /// HTTP address
        #[arg(long)]
        http: String,
        /// SNTP time-sync address (followers sync to it when this node leads)
        #[arg(long, default_value = "")]
        time_sync: String,
    },
    /// Make a learner a voter
    Promote {
        /// The node's id
        id: u64,
    },
    /// Remove a node from the cluster
    Remove {
        /// The node's id
        id: u64,
    },
    /// Hand leadership to another voter
    MoveLeader {
        /// The new leader's id
        id: u64,
    },
    /// Build a snapshot now (then the log is purged up to it)
    Snapshot {
        /// On this node's client address (default: whichever endpoint answers)
        #[arg(long)]
        node: Option<String>,
    },
}

pub async fn run(cmd: Cmd, ctx: &Ctx) -> Result<()> {
    let client = &ctx.client;
    let resp = match cmd {
        Cmd::Init { node, wait } => return init(ctx, node, wait).await,
        Cmd::Replace { id } => return replace(ctx, id).await,
        Cmd::Status => return status(ctx).await,
        Cmd::Members => {
            let resp = client.members().await?;
            match ctx.format {
                Format::Json => print_json(&to_json::members(&resp)),
                Format::Table => {
                    let mut table = Table::new(&[
                        "ID",
                        "NUMBER",
                        "PEER ADDR",
                        "CLIENT ADDR",
                        "HTTP ADDR",
                        "VOTER",
                        "LEADER",
                        "INCARNATION",
                    ]);
                    for m in &resp.members {
                        table.row(vec![
                            m.id.to_string(),
                            m.number.to_string(),
                            m.peer_addr.clone(),
                            m.client_addr.clone(),
                            m.http_addr.clone(),
                            output::yes_no(m.voter),
                            output::yes_no(m.id == resp.leader_id),
                            if m.incarnation.is_empty() {
                                "-".into()
                            } else {
                                m.incarnation.clone()
                            },
                        ]);
                    }
                    table.print();
                }
            }
            return Ok(());
        }
        Cmd::AddLearner {
            id,
            number,
            peer,
            client: client_addr,
            http,
            time_sync,
        } => {
            client
                .add_learner(proto::Member {
                    id,
                    number,
                    peer_addr: peer,
                    client_addr,
                    http_addr: http,
                    time_addr: time_sync,
                    voter: false,
                    incarnation: String::new(),
                })
                .await?
        }
        Cmd::Promote { id } => client.promote(id).await?,
        Cmd::Remove { id } => client.remove(id).await?,
        Cmd::MoveLeader { id } => client.transfer_leader(id).await?,
        Cmd::Snapshot { node: Some(node) } => client.snapshot_on(&node).await?,
        Cmd::Snapshot { node: None } => client.snapshot().await?,
    };
    print_admin(ctx.format, &resp);
    Ok(())
}

/// `cluster init`: retried while a founding node is not up yet, with a
/// line on stderr each time so a slow start is visible.
async fn init(ctx: &Ctx, node: Option<String>, wait: std::time::Duration) -> Result<()> {
    let endpoint = match node {
        Some(n) => n,
        None => ctx
            .client
            .endpoints()
            .first()
            .map(|e| e.to_string())
            .ok_or_else(|| anyhow::anyhow!("no endpoint to run cluster init on"))?,
    };
    let deadline = tokio::time::Instant::now() + wait;
    let resp = loop {
        match ctx.client.init_on(&endpoint).await {
            Ok(r) => break r,
            Err(herald_client::ClientError::Unavailable(why))
                if tokio::time::Instant::now() < deadline =>
            {
                eprintln!("cluster init: waiting ({why})");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    match ctx.format {
        Format::Json => print_json(&serde_json::json!({
            "cluster_id": resp.cluster_id,
            "message": resp.message,
        })),
        Format::Table => println!("OK: {}", resp.message),
    }
    Ok(())
}

/// `cluster replace ID`: the three membership steps, each reported as it
/// completes.
async fn replace(ctx: &Ctx, id: u64) -> Result<()> {
    let client = &ctx.client;
    let members = client.members().await?;
    let Some(old) = members.members.iter().find(|m| m.id == id).cloned() else {
        bail!("node {id} is not a member; add it with cluster add-learner");
    };
    if members.leader_id == id {
        bail!("node {id} leads the cluster; move leadership first (cluster move-leader)");
    }
    eprintln!("replace {id}: removing the member (its recorded incarnation is forgotten)");
    client.remove(id).await?;
    eprintln!(
        "replace {id}: adding it as a learner at {} (start it on an empty data dir); waiting \
         until it has caught up",
        old.peer_addr
    );
    client
        .add_learner(proto::Member {
            voter: false,
            incarnation: String::new(),
            ..old.clone()
        })
        .await?;
    let resp = if old.voter {
        eprintln!("replace {id}: promoting it to voter");
        client.promote(id).await?
    } else {
        AdminResponse {
            message: format!("node {id} is back as a learner"),
            log_index: 0,
        }
    };
    print_admin(ctx.format, &resp);
    Ok(())
}

/// How long ago the node last synced its clock ("reference" for a leader
/// that never synced: it is the reference).
fn sync_age(s: &proto::NodeStatus) -> String {
    if s.last_sync_ms == 0 {
        return if s.role == "leader" {
            "reference".into()
        } else {
            "never".into()
        };
    }
    let age = s.cluster_time_ms.saturating_sub(s.last_sync_ms);
    format!("{:.1}s ago", age as f64 / 1000.0)
}

async fn status(ctx: &Ctx) -> Result<()> {
    let cluster = ctx.client.cluster_status().await?;
    match ctx.format {
        Format::Json => {
            let members: Vec<_> = cluster
                .members
                .iter()
                .map(|m| {
                    let mut entry = serde_json::json!({ "member": to_json::member(&m.member) });
                    match &m.status {
                        Ok(s) => entry["status"] = to_json::node_status(s),
                        Err(e) => entry["error"] = e.to_string().into(),
                    }
                    entry
                })
                .collect();
            print_json(&serde_json::json!({ "leader_id": cluster.leader_id, "members": members }));
        }
        Format::Table => {
            let mut table = Table::new(&[
                "ID",
                "NUMBER",
                "CLIENT ADDR",
                "ROLE",
                "TERM",
                "LAST LOG",
                "APPLIED",
                "LEADER",
                "SNAPSHOT",
                "CLOCK OFFSET",
                "LAST SYNC",
                "SYNC DELAY",
                "DISK FREE",
            ]);
            for m in &cluster.members {
                let mut row = vec![
                    m.member.id.to_string(),
                    m.member.number.to_string(),
                    m.member.client_addr.clone(),
                ];
                match &m.status {
                    Ok(s) => row.extend([
                        s.role.clone(),
                        s.term.to_string(),
                        s.last_log_index.to_string(),
                        s.applied_index.to_string(),
                        output::or_dash(s.leader_id),
                        output::or_dash(s.snapshot_index),
                        format!("{:+.3} ms", s.clock_offset_us as f64 / 1000.0),
                        sync_age(s),
                        format!("{:.3} ms", s.sync_delay_us as f64 / 1000.0),
                        disk_free(s),
                    ]),
                    Err(_) => row.extend(
                        ["unreachable", "-", "-", "-", "-", "-", "-", "-", "-", "-"]
                            .map(String::from),
                    ),
                }
                table.row(row);
            }
            table.print();
            for m in &cluster.members {
                match &m.status {
                    Err(e) => eprintln!("node {} ({}): {e}", m.member.id, m.member.client_addr),
                    Ok(s) if !s.waiting.is_empty() => {
                        eprintln!("node {} cannot serve: {}", m.member.id, s.waiting)
                    }
                    Ok(_) => {}
                }
            }
        }
    }
    if cluster.members.iter().all(|m| m.status.is_err()) && !cluster.members.is_empty() {
        bail!("no member answered");
    }
    Ok(())
}

/// Free space on a node's data dir, flagged while its free-space alarm
/// refuses writes.
fn disk_free(s: &proto::NodeStatus) -> String {
    let gib = |b: u64| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64);
    match (s.nospace_alarm, s.storage_free_bytes) {
        (true, free) => format!("ALARM {} < {}", gib(free), gib(s.storage_min_free_bytes)),
        (false, u64::MAX) => "-".into(),
        (false, free) => gib(free),
    }
}

fn print_admin(format: Format, resp: &AdminResponse) {
    match format {
        Format::Json => print_json(&to_json::admin(resp)),
        Format::Table if resp.log_index == 0 => println!("OK: {}", resp.message),
        Format::Table => println!("OK: {} (log index {})", resp.message, resp.log_index),
    }
}
