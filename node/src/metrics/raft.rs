//! Raft metrics: the term and role, leader and membership changes (counted
//! by [`watch_raft`]), log indexes and replication lag (sampled at scrape
//! time), proposals and their commit latency
//! ([`crate::node::Herald::propose`]), snapshots (the state store) and
//! failover takeovers.

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::Metrics;
use super::latency;
use crate::raft::Raft;

/// `{result}`: how a proposal ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `committed` or `failed`.
    pub result: &'static str,
}

/// `{peer}`: a follower's Raft id.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    /// Raft id of the follower.
    pub peer: String,
}

/// Raft metrics (see the module doc).
pub struct RaftDefs {
    /// `herald_raft_term`: current Raft term.
    pub term: Gauge,
    /// `herald_raft_is_leader`: 1 on the leader.
    pub is_leader: Gauge,
    /// `herald_raft_leader_changes_total`: times this node saw a new leader.
    pub leader_changes: Counter,
    /// `herald_failover_takeovers_total`: campaigns this node started after
    /// every leader lease had run out (`failover::run_takeover`).
    pub takeovers: Counter,
    /// `herald_raft_membership_changes_total`: membership configs this node saw.
    pub membership_changes: Counter,
    /// `herald_raft_voters`: voters in the current membership.
    pub voters: Gauge,
    /// `herald_raft_learners`: learners in the current membership.
    pub learners: Gauge,
    /// `herald_raft_last_log_index`.
    pub last_log_index: Gauge,
    /// `herald_raft_commit_index`: committed as this node knows it.
    pub commit_index: Gauge,
    /// `herald_raft_applied_index`.
    pub applied_index: Gauge,
    /// `herald_raft_snapshot_index`: last index in the latest snapshot.
    pub snapshot_index: Gauge,
    /// `herald_raft_proposals_total{result}`: proposals on this node as leader
    /// (`committed`, `failed` = outcome unknown, `not_leader` = refused unappended).
    pub proposals: Family<ResultLabel, Counter>,
    /// `herald_raft_commit_seconds`: leader append to committed-and-applied.
    pub commit_seconds: Histogram,
    /// `herald_raft_snapshot_builds_total`.
    pub snapshot_builds: Counter,
    /// `herald_raft_snapshot_installs_total`: snapshots received from a leader.
    pub snapshot_installs: Counter,
    /// `herald_raft_replication_lag_entries{peer}`: on the leader, entries
    /// each follower is behind the leader's last log index.
    pub replication_lag: Family<PeerLabel, Gauge>,
}

impl RaftDefs {
    /// Registers every metric of this file in `r`.
    pub(super) fn new(r: &mut Registry) -> Self {
        Self {
            term: reg!(r, "herald_raft_term", "Current Raft term", Gauge::default()),
            is_leader: reg!(
                r,
                "herald_raft_is_leader",
                "1 when this node is the Raft leader",
                Gauge::default()
            ),
            leader_changes: reg!(
                r,
                "herald_raft_leader_changes",
                "Leader changes this node observed",
                Counter::default()
            ),
            takeovers: reg!(
                r,
                "herald_failover_takeovers",
                "Campaigns started after every leader lease had run out",
                Counter::default()
            ),
            membership_changes: reg!(
                r,
                "herald_raft_membership_changes",
                "Membership configs this node observed",
                Counter::default()
            ),
            voters: reg!(
                r,
                "herald_raft_voters",
                "Voters in the current membership",
                Gauge::default()
            ),
            learners: reg!(
                r,
                "herald_raft_learners",
                "Learners in the current membership",
                Gauge::default()
            ),
            last_log_index: reg!(
                r,
                "herald_raft_last_log_index",
                "Index of the last entry in the local log",
                Gauge::default()
            ),
            commit_index: reg!(
                r,
                "herald_raft_commit_index",
                "Last committed index known to this node",
                Gauge::default()
            ),
            applied_index: reg!(
                r,
                "herald_raft_applied_index",
                "Last index applied to the state machine",
                Gauge::default()
            ),
            snapshot_index: reg!(
                r,
                "herald_raft_snapshot_index",
                "Last index included in the latest snapshot",
                Gauge::default()
            ),
            proposals: reg!(
                r,
                "herald_raft_proposals",
                "Proposals made on this node as leader, by result",
                Family::default()
            ),
            commit_seconds: reg!(
                r,
                "herald_raft_commit_seconds",
                "Leader: from proposing an entry to it being committed and applied",
                latency()
            ),
            snapshot_builds: reg!(
                r,
                "herald_raft_snapshot_builds",
                "Snapshots built",
                Counter::default()
            ),
            snapshot_installs: reg!(
                r,
                "herald_raft_snapshot_installs",
                "Snapshots installed from the leader",
                Counter::default()
            ),
            replication_lag: reg!(
                r,
                "herald_raft_replication_lag_entries",
                "Leader only: entries each follower is behind the leader's log",
                Family::default()
            ),
        }
    }

    /// Creates the known label combinations at zero.
    pub(super) fn precreate(&self) {
        for result in ["committed", "failed", "not_leader"] {
            let _ = self.proposals.get_or_create(&ResultLabel { result });
        }
    }

    /// Sets the term, role, indexes, membership and (on the leader) each
    /// follower's lag from Raft's latest metrics.
    pub fn sample(&self, r: &openraft::RaftMetrics<crate::raft::TypeConfig>) {
        self.term.set(r.current_term as i64);
        let leader = r.state == ServerState::Leader && r.current_leader == Some(r.id);
        self.is_leader.set(leader as i64);
        let last = r.last_log_index.unwrap_or(0);
        self.last_log_index.set(last as i64);
        let idx =
            |l: &Option<crate::raft::typ::LogId>| l.as_ref().map(|l| l.index()).unwrap_or(0) as i64;
        self.commit_index.set(idx(&r.local_committed));
        self.applied_index.set(idx(&r.last_applied));
        self.snapshot_index.set(idx(&r.snapshot));
        let mem = r.membership_config.membership();
        let voters = mem.voter_ids().count();
        self.voters.set(voters as i64);
        self.learners
            .set(mem.nodes().count().saturating_sub(voters) as i64);
        self.replication_lag.clear();
        if let (true, Some(repl)) = (leader, r.replication.as_ref()) {
            for (peer, matched) in repl {
                if *peer == r.id {
                    continue;
                }
                let matched = matched.as_ref().map(|l| l.index()).unwrap_or(0);
                self.replication_lag
                    .get_or_create(&PeerLabel {
                        peer: peer.to_string(),
                    })
                    .set(last.saturating_sub(matched) as i64);
            }
        }
    }
}

/// Follows openraft's server metrics until `stopped`: counts leader and
/// membership changes and logs one line for each. The server metrics change
/// only with the vote, the role, the leader or the membership; the full
/// metrics change with every append and apply, and watching those woke this
/// task several times per write.
pub async fn watch_raft(
    raft: Raft,
    metrics: Metrics,
    me: u64,
    stopped: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stopped);
    let mut rx = raft.server_metrics();
    let mut leader: Option<u64> = None;
    let mut membership: Option<crate::raft::typ::LogId> = None;
    loop {
        let (now_leader, term, now_membership, voters, learners) = {
            let m = rx.borrow_watched();
            let mem = m.membership_config.membership();
            let voters: Vec<u64> = mem.voter_ids().collect();
            let learners: Vec<u64> = mem.learner_ids().collect();
            (
                m.current_leader,
                m.vote.leader_id().term,
                *m.membership_config.log_id(),
                voters,
                learners,
            )
        };
        if now_leader != leader {
            if now_leader.is_some() {
                metrics.raft.leader_changes.inc();
            }
            tracing::info!(
                leader = ?now_leader,
                previous = ?leader,
                term,
                me,
                "leader changed"
            );
            leader = now_leader;
        }
        if now_membership != membership {
            metrics.raft.membership_changes.inc();
            tracing::info!(
                log_index = now_membership.as_ref().map(|l| l.index()),
                ?voters,
                ?learners,
                "membership changed"
            );
            membership = now_membership;
        }
        tokio::select! {
            _ = &mut stopped => return,
            r = rx.changed() => if r.is_err() { return },
        }
    }
}
