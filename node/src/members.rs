//! The leader keeps the replicated record of each member's incarnation
//! (`state::members`, `raft::identity`): every second it asks the members
//! that have none recorded who they are (`Peer.Ping` answers with the
//! node's cluster and incarnation) and proposes what they say. From then
//! on every peer message to that member carries the incarnation, and a
//! wiped data dir started in its place is refused until it is replaced.
//!
//! Between a member joining and the record being committed (about a
//! second) a wipe of that member would go unnoticed; the window is at the
//! member's start, before it has acknowledged much.
//!
//! The same loop writes the leader's `[quotas]` to the log when they differ
//! from the replicated ones (`state::quotas` says why quotas are replicated).

use std::future::Future;
use std::time::Duration;

use crate::node::Herald;
use crate::peer::{PeerClient, PingReply};
use crate::state::{Command, RecordIncarnation};

/// How often the leader looks for members without a recorded incarnation.
const EVERY: Duration = Duration::from_secs(1);

/// Who node `id` at `addr` says it is.
pub async fn ask(node: &Herald, id: u64, addr: &str) -> Result<PingReply, String> {
    let mut client = PeerClient::new(node.peers(), id, addr).map_err(|e| e.to_string())?;
    client.ping(EVERY * 2).await.map_err(|e| e.to_string())
}

/// Writes this leader's `[quotas]` when the replicated ones differ, so the
/// cluster enforces the current leader's file (`state::quotas`).
async fn write_quotas(node: &Herald) {
    let wanted = &node.config().quotas;
    if node.store().read().state.quotas() == wanted {
        return;
    }
    match node.propose(Command::SetQuotas(wanted.clone())).await {
        Ok(_) => tracing::info!(quotas = ?wanted, "wrote this leader's quotas"),
        Err(e) => tracing::warn!(error = %e, "writing this leader's quotas"),
    }
}

/// Records members' incarnations and writes the quotas while this node
/// leads, until `stopped`.
pub async fn run(node: Herald, stopped: impl Future<Output = ()>) {
    tokio::pin!(stopped);
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tick.tick() => {}
        }
        if !node.is_leader() {
            continue;
        }
        write_quotas(&node).await;
        let Some(own) = node.identity().get() else {
            continue;
        };
        let (members, _) = node.members();
        let missing: Vec<(u64, String)> = {
            let m = node.store().read();
            members
                .iter()
                .filter(|(id, _)| m.state.incarnations().get(**id).is_none())
                .map(|(id, (member, _))| (*id, member.peer_addr.clone()))
                .collect()
        };
        for (id, addr) in missing {
            let incarnation = if id == node.id() {
                Some(own.incarnation.clone())
            } else {
                match ask(&node, id, &addr).await {
                    Ok(PingReply {
                        identity: Some((cluster, incarnation)),
                        ..
                    }) if cluster == own.cluster_id => Some(incarnation),
                    _ => None,
                }
            };
            let Some(incarnation) = incarnation else {
                continue;
            };
            let cmd = Command::RecordIncarnation(RecordIncarnation {
                node_id: id,
                incarnation: incarnation.clone(),
            });
            match node.propose(cmd).await {
                Ok(_) => tracing::info!(id, %incarnation, "recorded the member's incarnation"),
                Err(e) => tracing::warn!(id, error = %e, "recording the member's incarnation"),
            }
        }
    }
}
