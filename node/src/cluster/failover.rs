//! Numbered failover as pure policies: which voter should lead, when the
//! leader hands over to it, and when a follower that heard nothing from its
//! leader campaigns (the takeover).
//!
//! Observations (what openraft's metrics say about the voters, when this
//! node last heard from a leader) and the time come in; decisions (hand
//! leadership to node n, campaign now) come out. The async shell
//! (`failover.rs`) reads the metrics, feeds the policies every tick and
//! carries out what they decide; the mechanism and its measured numbers are
//! explained there. The tests below are tables of observations, not sleeps.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::config::Config;

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

/// A term that starts this soon after a leader handed leadership to this
/// node was handed over, not won against a failed leader.
pub const HANDOVER_WINDOW: Duration = Duration::from_secs(5);

/// One voter as the leader observes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Voter {
    /// Raft id.
    pub id: u64,
    /// Sequence number.
    pub number: u32,
    /// Age of its last answered heartbeat (`None`: none this term).
    pub ack_age: Option<Duration>,
    /// Entries it is behind the leader's last log index.
    pub lag: u64,
    /// How long since it last answered a liveness probe (`None`: never).
    pub probe_silence: Option<Duration>,
}

/// What the failover policy sees on one tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    /// This node does not lead; it follows `leader` if it knows one.
    NotLeading {
        /// The leader it follows (not itself).
        leader: Option<u64>,
    },
    /// This node leads in `term`.
    Leading {
        /// The current term.
        term: u64,
        /// The voters of the membership.
        voters: Vec<Voter>,
        /// When a leader last handed leadership to this node, if ever.
        handed_at: Option<Instant>,
    },
}

/// What the leader should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handover {
    /// The preferred node to hand leadership to.
    pub to: u64,
    /// Its sequence number (for the log line).
    pub to_number: u32,
}

/// The leader's numbered-failover policy (see `failover.rs`): the lowest
/// healthy, caught-up number leads; with failback off, nodes that were down
/// since this term began are passed over; the preferred node must stay
/// preferred for `hold` before the handover, and after one the leader waits
/// a `hold` before considering another.
#[derive(Debug)]
pub struct Failover {
    me: u64,
    hold: Duration,
    /// Heartbeats this old mean the follower is not answering.
    stale: Duration,
    /// A live follower answers a new leader's first heartbeats at once; one
    /// silent for this long after we took office was down when we did.
    grace: Duration,
    /// Probe silence (from the liveness prober, which pings every peer
    /// whatever the role) longer than this means down.
    probe_silence: Duration,
    max_lag_entries: u64,
    failback: bool,

    term: u64,
    led_since: Instant,
    ever_down: BTreeSet<u64>,
    /// The leader this node last followed: the one that failed, when this
    /// node's term was won by an election rather than handed over.
    followed: Option<u64>,
    pending: Option<(u64, Instant)>,
    quiet_until: Instant,
}

impl Failover {
    /// The policy for `config`'s node, starting at `now`.
    pub fn new(config: &Config, now: Instant) -> Self {
        let stale = Duration::from_millis(config.raft.heartbeat_ms * 4);
        Failover {
            me: config.id,
            hold: Duration::from_millis(config.failover.hold_ms),
            stale,
            grace: stale,
            probe_silence: Duration::from_millis(config.ring.probe_interval_ms * 2),
            max_lag_entries: config.failover.max_lag_entries,
            failback: config.failover.failback,
            term: 0,
            led_since: now,
            ever_down: BTreeSet::new(),
            followed: None,
            pending: None,
            quiet_until: now,
        }
    }

    /// One tick: what this node sees at `now`, and the handover to make, if
    /// one is due.
    pub fn observe(&mut self, now: Instant, view: View) -> Option<Handover> {
        let (current_term, voters, handed_at) = match view {
            View::NotLeading { leader } => {
                if leader.is_some() {
                    self.followed = leader;
                }
                self.term = 0;
                self.pending = None;
                return None;
            }
            View::Leading {
                term,
                voters,
                handed_at,
            } => (term, voters, handed_at),
        };
        if current_term != self.term {
            // A new term of ours: start the bookkeeping afresh.
            self.term = current_term;
            self.led_since = now;
            self.ever_down.clear();
            self.pending = None;
            self.quiet_until = now + self.hold;
            // Won by an election, not handed over: the leader before failed
            // (or could not be heard), even if it is back before this term
            // has seen it down; without failback it is passed over.
            let handed =
                handed_at.is_some_and(|t| now.saturating_duration_since(t) < HANDOVER_WINDOW);
            if let Some(prev) = self.followed.take()
                && !handed
            {
                self.ever_down.insert(prev);
            }
        }
        let mut candidates = Vec::new();
        for v in &voters {
            let healthy = if v.id == self.me {
                true
            } else {
                // No answer yet is "down" once a few heartbeats have passed
                // since we took office.
                let down = match v.ack_age {
                    Some(age) => age > self.stale,
                    None => now.saturating_duration_since(self.led_since) >= self.grace,
                } || v.probe_silence.is_some_and(|s| s > self.probe_silence);
                if down {
                    self.ever_down.insert(v.id);
                }
                v.ack_age.is_some_and(|age| age <= self.stale) && v.lag <= self.max_lag_entries
            };
            candidates.push(Candidate {
                id: v.id,
                number: v.number,
                healthy,
            });
        }
        let excluded = if self.failback {
            BTreeSet::new()
        } else {
            self.ever_down.clone()
        };
        let target = match preferred(&candidates, &excluded) {
            Some(id) if id != self.me => id,
            _ => {
                self.pending = None;
                return None;
            }
        };
        let since = match self.pending {
            Some((id, since)) if id == target => since,
            _ => {
                self.pending = Some((target, now));
                now
            }
        };
        if now.saturating_duration_since(since) < self.hold || now < self.quiet_until {
            return None;
        }
        let to_number = candidates
            .iter()
            .find(|c| c.id == target)
            .map_or(0, |c| c.number);
        Some(Handover {
            to: target,
            to_number,
        })
    }

    /// The handover was made (or tried) and finished at `now`: wait a hold
    /// time before considering another.
    pub fn handed_over(&mut self, now: Instant) {
        self.pending = None;
        self.quiet_until = now + self.hold;
    }
}

/// The follower's takeover policy (see `failover.rs`): campaign once per
/// silence, when the leader has been silent for longer than every voter's
/// lease ([`takeover_after`]).
#[derive(Debug, Default)]
pub struct Takeover {
    /// The silence we already campaigned for, identified by its start.
    campaigned_after: Option<Instant>,
}

/// What the takeover policy sees on one tick of a node that does not lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Silence {
    /// When this node last heard from a leader (or led), if ever.
    pub last_contact: Option<Instant>,
    /// The voters' sequence numbers, when this node is a voting follower or
    /// candidate; `None` otherwise (a learner, shutting down).
    pub voters: Option<Vec<u32>>,
}

impl Takeover {
    /// One tick at `now`: the silence to campaign about (how long it has
    /// lasted), if the time has come; at most once per silence.
    pub fn observe(&mut self, config: &Config, now: Instant, seen: Silence) -> Option<Duration> {
        let last = seen.last_contact?;
        if self.campaigned_after == Some(last) {
            return None;
        }
        let voters = seen.voters?;
        let silent = now.saturating_duration_since(last);
        if silent < takeover_after(config, voters) {
            return None;
        }
        self.campaigned_after = Some(last);
        Some(silent)
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

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A voter that answers (`ack` ms ago, `lag` entries behind) or not.
    fn v(id: u64, ack: Option<u64>, lag: u64) -> Voter {
        Voter {
            id,
            number: id as u32,
            ack_age: ack.map(ms),
            lag,
            probe_silence: Some(ms(100)),
        }
    }

    fn leading(term: u64, voters: Vec<Voter>) -> View {
        View::Leading {
            term,
            voters,
            handed_at: None,
        }
    }

    /// Node 2 of three (defaults: heartbeat 50 ms so stale after 200 ms,
    /// hold 3 s, failback on).
    fn node2(failback: bool) -> Config {
        let mut cfg = three_nodes(2);
        cfg.failover.failback = failback;
        cfg
    }

    /// (time after t0, what node 2 sees, what it decides): the preferred
    /// node must stay preferred for the whole hold, and the new term's
    /// quiet period holds the first handover back too.
    #[test]
    fn the_leader_hands_over_to_the_lowest_healthy_number_after_the_hold() {
        let cfg = node2(true);
        assert_eq!(cfg.raft.heartbeat_ms, 50);
        assert_eq!(cfg.failover.hold_ms, 3000);
        let t0 = Instant::now();
        let mut f = Failover::new(&cfg, t0);
        let all =
            |one: Option<u64>, lag1: u64| vec![v(1, one, lag1), v(2, None, 0), v(3, Some(10), 0)];
        let handover = Some(Handover {
            to: 1,
            to_number: 1,
        });
        let table: Vec<(u64, View, Option<Handover>)> = vec![
            (0, View::NotLeading { leader: Some(1) }, None),
            // Won term 5; node 1 not answering yet: 3 is healthy but higher.
            (100, leading(5, all(None, 0)), None),
            // Node 1 answers from here on: preferred since 200.
            (200, leading(5, all(Some(10), 0)), None),
            (3099, leading(5, all(Some(10), 0)), None),
            // Hold since 200 passed, and the quiet period since 100.
            (3200, leading(5, all(Some(10), 0)), handover),
            // Lagging is not caught up: the pending handover starts over.
            (3300, leading(5, all(Some(10), 101)), None),
            (3400, leading(5, all(Some(10), 100)), None),
            (6399, leading(5, all(Some(10), 100)), None),
            (6400, leading(5, all(Some(10), 100)), handover),
        ];
        for (at, view, want) in table {
            assert_eq!(f.observe(t0 + ms(at), view), want, "at {at} ms");
        }
        // After a handover, a hold of quiet, and the preferred node is
        // held for a whole hold again (from 6500 here).
        f.handed_over(t0 + ms(6400));
        for (at, want) in [(6500, None), (9399, None), (9499, None), (9500, handover)] {
            let view = leading(5, all(Some(10), 0));
            assert_eq!(f.observe(t0 + ms(at), view), want, "at {at} ms");
        }
    }

    /// Without failback, the leader this node followed before winning an
    /// election, and any voter seen down this term, are passed over; a term
    /// handed over by that leader does not count it as failed.
    #[test]
    fn without_failback_a_recovered_node_is_passed_over() {
        let cfg = node2(false);
        let t0 = Instant::now();
        let healthy = vec![v(1, Some(10), 0), v(2, None, 0), v(3, Some(10), 0)];
        // Won by election after following 1: 1 stays passed over.
        let mut f = Failover::new(&cfg, t0);
        f.observe(t0, View::NotLeading { leader: Some(1) });
        for at in [0, 3000, 10_000] {
            assert_eq!(f.observe(t0 + ms(at), leading(7, healthy.clone())), None);
        }
        // Handed over by 1 (a second ago): 1 is preferred again after the hold.
        let mut f = Failover::new(&cfg, t0);
        f.observe(t0, View::NotLeading { leader: Some(1) });
        let handed = |term| View::Leading {
            term,
            voters: healthy.clone(),
            handed_at: Some(t0),
        };
        assert_eq!(f.observe(t0 + ms(1000), handed(7)), None);
        assert_eq!(
            f.observe(t0 + ms(4000), handed(7)),
            Some(Handover {
                to: 1,
                to_number: 1
            })
        );
        // Node 1 silent to the prober (probes every 250 ms) for more than
        // two probes this term: passed over from then on, even once it
        // answers again.
        let mut f = Failover::new(&cfg, t0);
        let mut silent = healthy.clone();
        silent[0].probe_silence = Some(ms(501));
        assert_eq!(f.observe(t0, leading(8, silent)), None);
        assert_eq!(f.observe(t0 + ms(5000), leading(8, healthy.clone())), None);
        // A new term forgets it.
        assert_eq!(f.observe(t0 + ms(6000), leading(9, healthy.clone())), None);
        assert!(f.observe(t0 + ms(9000), leading(9, healthy)).is_some());
    }

    #[test]
    fn the_lowest_number_keeps_leadership() {
        let mut cfg = three_nodes(1);
        cfg.failover.failback = true;
        let t0 = Instant::now();
        let mut f = Failover::new(&cfg, t0);
        let voters = vec![v(1, None, 0), v(2, Some(10), 0), v(3, Some(10), 0)];
        for at in [0, 5000, 60_000] {
            assert_eq!(f.observe(t0 + ms(at), leading(2, voters.clone())), None);
        }
    }

    /// (time after the last contact, voters seen) -> campaign or not; once
    /// per silence. Node 2 of three waits 395 ms (see above).
    #[test]
    fn the_takeover_campaigns_once_per_silence() {
        let cfg = three_nodes(2);
        let t0 = Instant::now();
        let mut t = Takeover::default();
        let seen = |last: Option<Instant>, voters: Option<Vec<u32>>| Silence {
            last_contact: last,
            voters,
        };
        // (now, last contact, voters, campaign after)
        type Row = (u64, Option<u64>, Option<Vec<u32>>, Option<u64>);
        let table: [Row; 6] = [
            // Never heard from a leader: the first election is openraft's.
            (10_000, None, Some(vec![1, 2, 3]), None),
            (394, Some(0), Some(vec![1, 2, 3]), None),
            // Not a voting follower: nothing to do.
            (395, Some(0), None, None),
            (395, Some(0), Some(vec![1, 2, 3]), Some(395)),
            // Same silence: once.
            (900, Some(0), Some(vec![1, 2, 3]), None),
            // A new silence (contact at 1000): again after 395 ms of it.
            (1395, Some(1000), Some(vec![1, 2, 3]), Some(395)),
        ];
        for (at, last, voters, want) in table {
            let got = t.observe(&cfg, t0 + ms(at), seen(last.map(|l| t0 + ms(l)), voters));
            assert_eq!(got, want.map(ms), "at {at} ms");
        }
    }
}
