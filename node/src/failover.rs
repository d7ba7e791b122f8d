//! Numbered failover (P-publish): the lowest-numbered voter that is healthy
//! and caught up is the preferred leader, and the leader hands over to it.
//!
//! The decisions are pure policies in [`crate::cluster::failover`]; this
//! module is their shell: it reads openraft's metrics every tick, feeds the
//! policies, and carries out what they decide (a leader transfer, an
//! election).
//!
//! Two parts. Election timeouts are biased by rank (see
//! [`election_timeouts`]), so when a leader dies the next number usually
//! wins the election outright. And a task on the leader ([`run`]) moves
//! leadership to the preferred node with openraft's leader transfer once
//! that node has been healthy and caught up for `failover.hold_ms`.
//!
//! Failback is a switch. With it off, a lower-numbered node that was down
//! at some point since this leader took office ("recovered") is not
//! preferred, so leadership stays where it settled; nodes that stayed healthy
//! still are, which is how leadership settles on number 2 even if number 3
//! happened to win the election. The hold time is the hysteresis: the
//! preferred node must stay preferred for all of it, and after a handover
//! the (new) leader waits a hold time before considering another, so
//! leadership never flaps.
//!
//! And a third, for fail-over time: the *takeover* ([`run_takeover`]).
//! openraft gives every voter a leader lease of its own
//! `election_timeout_max` after the last heartbeat, and a voter inside its
//! lease refuses votes; with the biased timeouts the next number's first
//! campaign after a leader dies usually lands inside the others' leases
//! and fails, and the second one wins a whole timeout later (1.0-1.3 s
//! from kill -9 to the next acknowledged write, measured). So a follower
//! that has heard nothing from its leader for as long as the longest lease
//! in the cluster (plus a stagger by rank, lower numbers first) campaigns
//! then, once, when every lease has run out and the votes will be granted.
//! It never campaigns earlier than openraft's own timers would, and it asks
//! with a pre-vote first, so a node cut off from a leader the others still
//! follow does not disturb them.

use std::future::Future;
use std::time::Duration;

use openraft::Instant as _;
use openraft::ServerState;

use crate::cluster::failover::{Failover, Silence, Takeover, View, Voter};
pub use crate::cluster::failover::{election_timeouts, takeover_after};
use crate::node::Herald;

/// How often the takeover check runs.
const TAKEOVER_TICK: Duration = Duration::from_millis(10);

/// The takeover (see the module doc and [`Takeover`]). Runs on every node;
/// acts only on a voter that is not leading and has heard from a leader (or
/// led) before (a fresh cluster's first election is left to openraft's
/// timers). While this node leads it keeps the leader contact fresh, so
/// that after stepping down (a leader transfer, numbered failover) it waits
/// a full takeover period for the leader it handed over to, as any follower
/// would.
pub async fn run_takeover(node: Herald, stopped: impl Future<Output = ()>) {
    tokio::pin!(stopped);
    let mut tick = tokio::time::interval(TAKEOVER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut policy = Takeover::default();
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tick.tick() => {}
        }
        // A leader is its own contact: its time in office is not silence.
        if node.with_metrics(|m| m.state == ServerState::Leader) {
            node.leader_contact().touch();
            continue;
        }
        let Some(last) = node.leader_contact().last() else {
            continue;
        };
        let voters = node.with_metrics(|m| {
            if !matches!(m.state, ServerState::Follower | ServerState::Candidate) {
                return None;
            }
            let mem = m.membership_config.membership();
            let voters: Vec<u32> = mem
                .voter_ids()
                .filter_map(|id| mem.get_node(&id).map(|n| n.number))
                .collect();
            mem.voter_ids().any(|id| id == node.id()).then_some(voters)
        });
        let seen = Silence {
            last_contact: Some(last.into_std()),
            voters,
        };
        let Some(silent) = policy.observe(node.config(), std::time::Instant::now(), seen) else {
            continue;
        };
        tracing::info!(
            silent_ms = silent.as_millis() as u64,
            "takeover: no word from the leader for longer than any lease; campaigning"
        );
        node.inner.metrics.raft.takeovers.inc();
        if let Err(e) = node.raft().trigger().elect(true).await {
            tracing::warn!("takeover election: {e}");
        }
    }
}

/// Numbered failover (see the module doc and [`Failover`]). Runs on every
/// node; acts only while this node leads.
pub async fn run(node: Herald, stopped: impl Future<Output = ()>) {
    tokio::pin!(stopped);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut policy = Failover::new(node.config(), std::time::Instant::now());
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tick.tick() => {}
        }
        let now = std::time::Instant::now();
        let view = observe(&node, now);
        let Some(handover) = policy.observe(now, view) else {
            continue;
        };
        let target = handover.to;
        tracing::info!(
            to = target,
            to_number = handover.to_number,
            from_number = node.config().number,
            "numbered failover: handing leadership to the preferred node"
        );
        if let Err(e) = node.raft().trigger().transfer_leader(target).await {
            tracing::warn!("leader transfer to {target}: {e}");
        }
        // We chose the next leader: its silence starts now, not when we
        // last heard from a leader before leading ourselves.
        node.leader_contact().touch();
        policy.handed_over(std::time::Instant::now());
    }
}

/// What the failover policy sees now: openraft's view of the voters (heart-
/// beat acks, replication lag) and the liveness prober's (`owner.rs` pings
/// every peer whatever the role, so it also knows who was silent just
/// before this node took office).
fn observe(node: &Herald, now: std::time::Instant) -> View {
    let view = node.with_metrics(|m| {
        if m.state != ServerState::Leader {
            return Err(m.current_leader.filter(|l| *l != m.id));
        }
        let last = m.last_log_index.unwrap_or(0);
        let mem = m.membership_config.membership();
        let heartbeat = m.heartbeat.clone().unwrap_or_default();
        let replication = m.replication.clone().unwrap_or_default();
        let voters: Vec<(u64, u32, Option<Duration>, u64)> = mem
            .voter_ids()
            .filter_map(|id| {
                let number = mem.get_node(&id)?.number;
                let ack = heartbeat.get(&id).cloned().flatten().map(|t| t.elapsed());
                let matched = replication
                    .get(&id)
                    .cloned()
                    .flatten()
                    .map(|l| l.index())
                    .unwrap_or(0);
                Some((id, number, ack, last.saturating_sub(matched)))
            })
            .collect();
        Ok((m.current_term, voters))
    });
    match view {
        Err(leader) => View::NotLeading { leader },
        Ok((term, voters)) => View::Leading {
            term,
            voters: voters
                .into_iter()
                .map(|(id, number, ack_age, lag)| Voter {
                    id,
                    number,
                    ack_age,
                    lag,
                    probe_silence: node.ownership().silent_for(id, now),
                })
                .collect(),
            handed_at: node.leader_contact().handed().map(|t| t.into_std()),
        },
    }
}
