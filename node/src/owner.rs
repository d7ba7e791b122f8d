//! Who owns which users, and the TTL presence their owners keep.
//!
//! Ownership is one agreed decision, not each node's own judgement. Every
//! node probes its peers (`Peer.Ping`, over the same routes as Raft, so a
//! partition looks the same to both), but only the leader acts on what it
//! sees: when the voters it reaches differ from the committed ring, it
//! commits a new [`crate::state::OwnershipEpoch`] through Raft
//! ([`crate::state::ownership::decide`]). Every node builds its consistent-
//! hash [`Ring`] from the committed set alone, so two followers cut from each
//! other but both reaching the leader keep the same owners, and nobody takes
//! over users whose owner is alive and hearing their heartbeats.
//!
//! A uid's owner keeps that user's heartbeats in memory, never in the log,
//! and when a connection's TTL passes without one it proposes a logout with
//! reason `expired` for that very connection and login (the command names the login's
//! `since`, so a re-login is never expired by a stale proposal) and the
//! epoch it judged under, so an expiry decided on a ring that has since
//! changed is refused when applied.
//!
//! The owner learns of TTL logins by tailing the state's presence events.
//! Whenever the committed ring changes or the event history it tails was
//! compacted, it rescans the state and gives every TTL client it newly owns
//! a full TTL of grace: a failover never logs out live users.
//!
//! Storage servers' heartbeats are kept the same way, keyed on the ring by
//! [`ring_key`]: the owner proposes [`ExpireStorage`] when one's TTL passes
//! without a beat (policy: [`crate::cluster::storage_beats`]).
//!
//! What to conclude from the probes and the state is the pure policy
//! [`crate::cluster::owner::Ownership`]; this module is its shell: it
//! probes, reads the clock and the committed state, feeds the policy, and
//! proposes what it decides (an ownership epoch, expiry logouts).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::{Duration, Instant};

use crate::cluster::storage_beats::{Beat, ring_key};
use crate::node::Herald;
use crate::state::share::{ExpireStorage, ShareCommand};
use crate::state::{Command, Logout, LogoutReason};

async fn ping(node: &Herald, id: u64, addr: &str, timeout: Duration) -> bool {
    let Ok(mut client) = crate::peer::PeerClient::new(node.peers(), id, addr) else {
        return false;
    };
    tokio::time::timeout(timeout, client.ping(timeout))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// Probes peers, commits the ownership ring while leading, follows the
/// committed ring and TTL logins, and proposes expiry, until `stopped`
/// resolves.
pub async fn run(node: Herald, stopped: impl Future<Output = ()>) {
    tokio::pin!(stopped);
    let cfg = node.config().ring.clone();
    let probe_every = Duration::from_millis(cfg.probe_interval_ms.max(10));
    let down_after = Duration::from_millis(cfg.down_after_ms);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_probe: Option<Instant> = None;
    let mut next_rev = 1;
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tick.tick() => {}
        }
        let own = node.ownership();
        let (members, _) = node.members();
        let voters: BTreeSet<u64> = members
            .iter()
            .filter(|(_, (_, v))| *v)
            .map(|(id, _)| *id)
            .collect();
        if last_probe.is_none_or(|t| t.elapsed() >= probe_every) {
            last_probe = Some(Instant::now());
            let probes = members
                .iter()
                .filter(|(id, (_, voter))| *voter && **id != node.id())
                .map(|(id, (m, _))| {
                    let (id, addr, node) = (*id, m.peer_addr.clone(), node.clone());
                    async move { ping(&node, id, &addr, probe_every).await.then_some(id) }
                });
            let answered: Vec<u64> = futures::future::join_all(probes)
                .await
                .into_iter()
                .flatten()
                .collect();
            if !voters.is_empty() {
                let reachable = own.update_liveness(Instant::now(), &voters, &answered, down_after);
                if node.is_leader() {
                    decide(&node, &voters, &reachable).await;
                }
            }
        }
        next_rev = {
            let m = node.store().read();
            if !voters.is_empty() {
                own.follow_ring(&m.state, &voters);
            }
            own.follow(Instant::now(), &m.state, next_rev)
        };
        let beats = node.storage_beats();
        {
            let m = node.store().read();
            let me = node.id();
            let mine = |id: &str| own.owner(&ring_key(id)) == Some(me);
            beats.follow(Instant::now(), own.epoch(), m.state.share().servers(), mine);
        }
        let (epoch, due) = own.due(Instant::now());
        let (storage_epoch, storage_due) = beats.due(Instant::now());
        if (due.is_empty() && storage_due.is_empty()) || !node.in_touch_with_leader(down_after) {
            // Cut off from the leader, this node's ring may be stale: its
            // proposals would fail or be refused; the deadlines moved on.
            continue;
        }
        for ((uid, client_type, connection_id), t) in due {
            // One connection's login: the others of the user have their own
            // deadlines, and a newer login of this one is never expired.
            let cmd = Command::Logout(Logout {
                uid: uid.clone(),
                sid: t.sid,
                client_type: Some(client_type.clone()),
                connection_id: connection_id.clone(),
                ext: BTreeMap::new(),
                reason: LogoutReason::Expired,
                login_since_ms: Some(t.since_ms),
                owner_epoch: Some(epoch),
            });
            let key = (uid, client_type, connection_id);
            match node.propose(cmd).await {
                Ok(_) => {
                    tracing::info!(uid = %key.0, client = %key.1, connection = %key.2, ttl_ms = t.ttl.as_millis() as u64, epoch, "presence expired");
                    own.expired(&key, t.since_ms, true);
                }
                // Logged out or in again meanwhile, or the ring moved on
                // (the rescan on the new ring tracks the user again if it
                // is still ours, with a full TTL of grace).
                Err(crate::node::NodeError::State(_)) => own.expired(&key, t.since_ms, false),
                Err(e) => tracing::debug!(uid = %key.0, "expiry proposal: {e}"),
            }
        }
        if let Some(epoch) = storage_epoch {
            expire_storage(&node, epoch, storage_due).await;
        }
    }
}

/// Proposes the expiry of each heartbeat-kept storage server whose TTL
/// passed without a beat, judged under ownership `epoch`.
async fn expire_storage(node: &Herald, epoch: u64, due: Vec<(String, Beat)>) {
    for (server_id, b) in due {
        let cmd = Command::Share(ShareCommand::ExpireStorage(ExpireStorage {
            server_id: server_id.clone(),
            up_since_ms: b.up_since_ms,
            owner_epoch: epoch,
        }));
        match node.propose(cmd).await {
            Ok(_) => {
                tracing::info!(server = %server_id, ttl_ms = b.ttl.as_millis() as u64, epoch, "storage server expired");
                node.storage_beats()
                    .expired(&server_id, b.up_since_ms, true);
            }
            // Up again, marked or removed meanwhile, or the ring moved on
            // (the next rescan tracks it again if it is still ours).
            Err(crate::node::NodeError::State(_)) => {
                node.storage_beats()
                    .expired(&server_id, b.up_since_ms, false)
            }
            Err(e) => tracing::debug!(server = %server_id, "storage expiry proposal: {e}"),
        }
    }
}

/// On the leader: commits a new ownership epoch when the voters it reaches
/// are not the committed ring.
async fn decide(node: &Herald, voters: &BTreeSet<u64>, reachable: &BTreeSet<u64>) {
    let decision = {
        let m = node.store().read();
        crate::state::ownership::decide(m.state.ownership(), voters, node.id(), reachable)
    };
    let Some(cmd) = decision else {
        return;
    };
    let (epoch, live) = (cmd.epoch, cmd.live.clone());
    match node.propose(Command::SetOwnership(cmd)).await {
        Ok(_) => tracing::info!(epoch, ?live, "ownership decided"),
        Err(e) => tracing::debug!(epoch, "ownership decision: {e}"),
    }
}
