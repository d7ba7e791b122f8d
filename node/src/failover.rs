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
/// Each voter's leader lease is its own (biased) `election_timeout_max`;
/// see [`takeover_after`] for what that means for fail-over.
pub fn election_timeouts(config: &Config) -> (u64, u64) {
    let t = &config.raft;
    let bias = rank(config, config.number) * config.failover.election_bias_ms;
    (
        t.election_timeout_min_ms + bias,
        t.election_timeout_max_ms + bias,
    )
}

/// The rank of sequence number `number` among the founding members (0 for
/// the lowest); what [`election_timeouts`] biases by.
fn rank(config: &Config, number: u32) -> u64 {
    config
        .initial_members
        .iter()
        .filter(|m| m.number < number)
        .count() as u64
}

/// Slack after the last lease ran out, for clocks and scheduling.
const TAKEOVER_MARGIN_MS: u64 = 20;

/// How long a follower waits without hearing from its leader before it
/// campaigns itself: the longest leader lease among `voters` (sequence
/// numbers; a voter's lease is its own biased `election_timeout_max`, see
/// [`election_timeouts`]), a margin, and half a bias step per rank of this
/// node so that lower numbers go first and two nodes rarely split the vote.
pub fn takeover_after(config: &Config, voters: impl IntoIterator<Item = u32>) -> Duration {
    let bias = config.failover.election_bias_ms;
    let longest_lease = voters
        .into_iter()
        .map(|n| config.raft.election_timeout_max_ms + rank(config, n) * bias)
        .max()
        .unwrap_or(config.raft.election_timeout_max_ms);
    Duration::from_millis(
        longest_lease + TAKEOVER_MARGIN_MS + rank(config, config.number) * bias / 2,
    )
}

/// When this node last heard from a leader: any `AppendEntries` it
/// accepted, heartbeats included, and any moment it was the leader itself
/// (refreshed by [`run_takeover`] while it leads, and when it hands
/// leadership away). Without the latter a leader that steps down would
/// count its whole time in office as silence and campaign against the
/// leader it had just chosen, before that leader's first heartbeat arrived.
///
/// It also remembers when a leader last handed leadership to this node
/// (`Peer.TransferLeader` naming it): a term won that way is a choice, not
/// a failure of the previous leader ([`run`] tells the two apart).
#[derive(Debug, Default)]
pub struct LeaderContact {
    last: std::sync::Mutex<Option<Instant>>,
    handed: std::sync::Mutex<Option<Instant>>,
}

fn now_into(slot: &std::sync::Mutex<Option<Instant>>) {
    *slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
}

fn read(slot: &std::sync::Mutex<Option<Instant>>) -> Option<Instant> {
    *slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LeaderContact {
    /// Records contact now.
    pub fn touch(&self) {
        now_into(&self.last);
    }

    /// The last contact, if there was one.
    pub fn last(&self) -> Option<Instant> {
        read(&self.last)
    }

    /// Records that the leader is handing leadership to this node now.
    pub fn handed_to_me(&self) {
        now_into(&self.handed);
    }

    /// When leadership was last handed to this node, if ever.
    pub fn handed(&self) -> Option<Instant> {
        read(&self.handed)
    }
}

/// A term that starts this soon after a leader handed leadership to this
/// node was handed over, not won against a failed leader.
const HANDOVER_WINDOW: Duration = Duration::from_secs(5);

/// How often the takeover check runs.
const TAKEOVER_TICK: Duration = Duration::from_millis(10);

/// The takeover (see the module doc). Runs on every node; acts only on a
/// voter that is not leading and has heard from a leader (or led) before (a
/// fresh cluster's first election is left to openraft's timers). While this
/// node leads it keeps [`LeaderContact`] fresh, so that after stepping down
/// (a leader transfer, numbered failover) it waits a full takeover period
/// for the leader it handed over to, as any follower would.
pub async fn run_takeover(node: Herald, stopped: impl Future<Output = ()>) {
    tokio::pin!(stopped);
    let mut tick = tokio::time::interval(TAKEOVER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The silence we already campaigned for, identified by its start.
    let mut campaigned_after: Option<Instant> = None;
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
        if campaigned_after == Some(last) {
            continue;
        }
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
        let Some(voters) = voters else {
            continue;
        };
        let wait = takeover_after(node.config(), voters);
        if last.elapsed() < wait {
            continue;
        }
        campaigned_after = Some(last);
        tracing::info!(
            silent_ms = last.elapsed().as_millis() as u64,
            "takeover: no word from the leader for longer than any lease; campaigning"
        );
        node.inner.metrics.takeovers.inc();
        if let Err(e) = node.raft().trigger().elect(true).await {
            tracing::warn!("takeover election: {e}");
        }
    }
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
    // The leader this node last followed: the one that failed, when this
    // node's term was won by an election rather than handed over.
    let mut followed: Option<u64> = None;
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
                if let Some(l) = m.current_leader.filter(|l| *l != m.id) {
                    followed = Some(l);
                }
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
            // Won by an election, not handed over: the leader before failed
            // (or could not be heard), even if it is back before this term
            // has seen it down; without failback it is passed over.
            let handed = node
                .leader_contact()
                .handed()
                .is_some_and(|t| now.duration_since(t) < HANDOVER_WINDOW);
            if let Some(prev) = followed.take()
                && !handed
            {
                ever_down.insert(prev);
            }
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
        // We chose the next leader: its silence starts now, not when we
        // last heard from a leader before leading ourselves.
        node.leader_contact().touch();
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

    fn three_nodes(number: u32) -> Config {
        let mut text = format!(
            "id = {number}\nnumber = {number}\ndata_dir = \"/tmp/x\"\n\
             [listen]\npeer = \"127.0.0.1:1\"\nclient = \"127.0.0.1:2\"\nhttp = \"127.0.0.1:3\"\n"
        );
        for n in 1..=3 {
            text.push_str(&format!(
                "[[initial_members]]\nid = {n}\nnumber = {n}\npeer = \"p\"\nclient = \"c\"\nhttp = \"h\"\n"
            ));
        }
        toml::from_str(&text).unwrap()
    }

    /// The takeover waits out every voter's lease (each voter's own biased
    /// `election_timeout_max`), so its campaign is not refused; it is never
    /// earlier than the node's own election timer; lower numbers go first.
    #[test]
    fn the_takeover_comes_after_every_lease_and_lower_numbers_go_first() {
        let voters = [1, 2, 3];
        let waits: Vec<Duration> = (1..=3)
            .map(|n| takeover_after(&three_nodes(n), voters))
            .collect();
        for n in 1..=3u32 {
            let cfg = three_nodes(n);
            let own_max = election_timeouts(&cfg).1;
            assert!(waits[n as usize - 1] >= Duration::from_millis(own_max));
            for other in voters {
                let lease = election_timeouts(&three_nodes(other)).1;
                assert!(
                    waits[n as usize - 1] > Duration::from_millis(lease),
                    "node {n} would campaign inside node {other}'s lease"
                );
            }
        }
        assert!(waits[0] < waits[1] && waits[1] < waits[2], "{waits:?}");
        // With the defaults (250 ms, bias 50): node 2 waits 350 + 20 + 25.
        assert_eq!(waits[1], Duration::from_millis(395));
        // With node 1 gone from the voters, the longest lease is still node 3's.
        assert_eq!(
            takeover_after(&three_nodes(2), [2, 3]),
            Duration::from_millis(395)
        );
    }
}
