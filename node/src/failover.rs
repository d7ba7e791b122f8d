//! Numbered failover (P-publish): the lowest-numbered voter that is healthy
//! and caught up is the preferred leader, and the leader hands over to it.
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

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use openraft::Instant as _;
use openraft::ServerState;
use tokio::time::Instant;

use crate::config::Config;
use crate::node::Herald;

/// Election timeouts for this node: the configured range shifted up by
/// `election_bias_ms` per rank of its number among the founding members
/// (rank 0 for the lowest number), so lower numbers time out first.
///
/// What this means for fail-over time: openraft gives every voter a leader
/// lease of its own `election_timeout_max` after the last heartbeat, and a
/// voter inside its lease refuses (pre-)votes. The first campaign after a
/// leader dies therefore usually fails and the second, one timeout later,
/// wins: fail-over takes about two election timeouts of the next number
/// (measured with 50 / 250-500 / bias 100 ms: 1.0-1.3 s from kill -9 to the
/// next acknowledged write, of which ~1 s before the first node noticed).
pub fn election_timeouts(config: &Config) -> (u64, u64) {
    let t = &config.raft;
    let rank = config
        .initial_members
        .iter()
        .filter(|m| m.number < config.number)
        .count() as u64;
    let bias = rank * config.failover.election_bias_ms;
    (
        t.election_timeout_min_ms + bias,
        t.election_timeout_max_ms + bias,
    )
}

/// One voter as the leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Raft id.
    pub id: u64,
    /// Sequence number.
    pub number: u32,
    /// Answered heartbeats recently and is within `max_lag_entries`.
    pub healthy: bool,
}

/// The preferred leader: lowest number among healthy candidates not
/// excluded. Pure, for tests.
pub fn preferred(candidates: &[Candidate], excluded: &BTreeSet<u64>) -> Option<u64> {
    candidates
        .iter()
        .filter(|c| c.healthy && !excluded.contains(&c.id))
        .min_by_key(|c| c.number)
        .map(|c| c.id)
}

/// Runs on every node; acts only while this node leads.
pub async fn run(node: Herald, stopped: impl Future<Output = ()>) {
    tokio::pin!(stopped);
    let cfg = node.config().failover.clone();
    let hold = Duration::from_millis(cfg.hold_ms);
    // Heartbeats this old mean the follower is not answering.
    let stale = Duration::from_millis(node.config().raft.heartbeat_ms * 4);
    // A live follower answers a new leader's first heartbeats at once; one
    // silent for this long after we took office was down when we did.
    let grace = stale;
    // The liveness prober (owner.rs) pings every peer whatever the role, so
    // it also knows who was silent just before we took office.
    let probe_silence = Duration::from_millis(node.config().ring.probe_interval_ms * 2);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut term = 0;
    let mut led_since = Instant::now();
    let mut ever_down: BTreeSet<u64> = BTreeSet::new();
    let mut pending: Option<(u64, Instant)> = None;
    let mut quiet_until = Instant::now();
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let view = node.with_metrics(|m| {
            if m.state != ServerState::Leader {
                return None;
            }
            let last = m.last_log_index.unwrap_or(0);
            let mem = m.membership_config.membership();
            let heartbeat = m.heartbeat.clone().unwrap_or_default();
            let replication = m.replication.clone().unwrap_or_default();
            let candidates: Vec<(u64, u32, Option<Duration>, u64)> = mem
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
            Some((m.current_term, candidates))
        });
        let Some((current_term, voters)) = view else {
            term = 0;
            pending = None;
            continue;
        };
        if current_term != term {
            // A new term of ours: start the bookkeeping afresh.
            term = current_term;
            led_since = now;
            ever_down.clear();
            pending = None;
            quiet_until = now + hold;
        }
        let mut candidates = Vec::new();
        for (id, number, ack, lag) in voters {
            let healthy = if id == node.id() {
                true
            } else {
                // No answer yet is "down" once a few heartbeats have passed
                // since we took office.
                let down = match ack {
                    Some(age) => age > stale,
                    None => now.duration_since(led_since) >= grace,
                } || node
                    .ownership()
                    .silent_for(id)
                    .is_some_and(|s| s > probe_silence);
                if down {
                    ever_down.insert(id);
                }
                ack.is_some_and(|age| age <= stale) && lag <= cfg.max_lag_entries
            };
            candidates.push(Candidate {
                id,
                number,
                healthy,
            });
        }
        let excluded = if cfg.failback {
            BTreeSet::new()
        } else {
            ever_down.clone()
        };
        let best = preferred(&candidates, &excluded);
        let target = match best {
            Some(id) if id != node.id() => id,
            _ => {
                pending = None;
                continue;
            }
        };
        let since = match pending {
            Some((id, since)) if id == target => since,
            _ => {
                pending = Some((target, now));
                now
            }
        };
        if now.duration_since(since) < hold || now < quiet_until {
            continue;
        }
        let numbers: BTreeMap<u64, u32> = candidates.iter().map(|c| (c.id, c.number)).collect();
        tracing::info!(
            to = target,
            to_number = numbers.get(&target).copied().unwrap_or(0),
            from_number = node.config().number,
            "numbered failover: handing leadership to the preferred node"
        );
        if let Err(e) = node.raft().trigger().transfer_leader(target).await {
            tracing::warn!("leader transfer to {target}: {e}");
        }
        pending = None;
        quiet_until = Instant::now() + hold;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: u64, number: u32, healthy: bool) -> Candidate {
        Candidate {
            id,
            number,
            healthy,
        }
    }

    #[test]
    fn lowest_healthy_number_wins() {
        let cs = [c(10, 3, true), c(11, 1, false), c(12, 2, true)];
        assert_eq!(preferred(&cs, &BTreeSet::new()), Some(12));
        let cs = [c(10, 3, true), c(11, 1, true), c(12, 2, true)];
        assert_eq!(preferred(&cs, &BTreeSet::new()), Some(11));
        // Without failback, a recovered node is passed over.
        assert_eq!(preferred(&cs, &BTreeSet::from([11])), Some(12));
        assert_eq!(preferred(&[], &BTreeSet::new()), None);
    }

    #[test]
    fn election_timeouts_grow_with_rank() {
        let text = r#"
id = 2
number = 20
data_dir = "/tmp/x"
[listen]
peer = "127.0.0.1:1"
client = "127.0.0.1:2"
http = "127.0.0.1:3"
[[initial_members]]
id = 1
number = 10
peer = "a:1"
client = "a:2"
http = "a:3"
[[initial_members]]
id = 2
number = 20
peer = "b:1"
client = "b:2"
http = "b:3"
"#;
        let mut cfg: Config = toml::from_str(text).unwrap();
        let (min2, max2) = election_timeouts(&cfg);
        cfg.id = 1;
        cfg.number = 10;
        let (min1, max1) = election_timeouts(&cfg);
        assert!(min1 < min2 && max1 < max2);
        assert_eq!(min2 - min1, cfg.failover.election_bias_ms);
    }
}
