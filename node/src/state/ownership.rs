//! The agreed ownership ring: which nodes own TTL users, as one decision
//! committed through Raft.
//!
//! Each node used to build its own ring from the peers its own probes
//! reached and expire users on that local judgement; under a partial
//! partition (two followers cut from each other, both still reaching the
//! leader) two nodes then owned the same users and one of them expired
//! users that were heartbeating on the other. Now the leader decides the
//! live set from its own probes and commits it as an [`OwnershipEpoch`];
//! every node derives the ring from the committed set only, and an expiry
//! names the epoch it was judged under and is refused once the ring has
//! moved on ([`OwnershipEpoch::check_expiry`]). Epoch 0 (never set) means
//! "every voter", the ring clients compute for themselves.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{Entry, Reason, StateError};

/// The leader's decision: from now on the ring is `live`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SetOwnership {
    /// Must be the committed epoch plus one: a decision made on an older
    /// ring (a deposed leader's, or a retry) is refused, never applied twice.
    pub epoch: u64,
    /// The members on the ring; at least one, ids >= 1.
    pub live: BTreeSet<u64>,
}

/// At most this many members on a ring (a sanity bound, far above any
/// cluster Herald runs).
const MAX_LIVE: usize = 64;

impl SetOwnership {
    /// Field checks.
    pub fn validate(&self) -> Result<(), StateError> {
        if self.epoch == 0 {
            return Err(StateError::invalid("epoch", "must be >= 1"));
        }
        if self.live.is_empty() || self.live.len() > MAX_LIVE {
            return Err(StateError::invalid(
                "live",
                format!("1..={MAX_LIVE} members, got {}", self.live.len()),
            ));
        }
        if self.live.contains(&0) {
            return Err(StateError::invalid("live", "node ids are >= 1"));
        }
        Ok(())
    }
}

/// The committed ring: its epoch, its members and when it was set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnershipEpoch {
    epoch: u64,
    live: BTreeSet<u64>,
    since_ms: u64,
}

impl OwnershipEpoch {
    /// The epoch number; 0 until the leader first decides.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The members on the ring; empty at epoch 0 (= every voter).
    pub fn live(&self) -> &BTreeSet<u64> {
        &self.live
    }

    /// Cluster time the epoch was committed.
    pub fn since_ms(&self) -> u64 {
        self.since_ms
    }

    /// The ring for `voters`: the committed set, or every voter at epoch 0.
    pub fn ring_members(&self, voters: &BTreeSet<u64>) -> BTreeSet<u64> {
        if self.epoch == 0 {
            voters.clone()
        } else {
            self.live.clone()
        }
    }

    pub(crate) fn set(&mut self, at: Entry, cmd: &SetOwnership) -> Result<(), StateError> {
        if cmd.epoch != self.epoch + 1 {
            return Err(StateError::precondition(
                Reason::Stale,
                format!(
                    "stale ownership decision: epoch {} proposed, the committed epoch is {}",
                    cmd.epoch, self.epoch
                ),
            ));
        }
        self.epoch = cmd.epoch;
        self.live = cmd.live.clone();
        self.since_ms = at.time_ms;
        Ok(())
    }

    /// An expiry judged under `epoch` stands only while that epoch is the
    /// committed one: once the ring moved, another node may own the user
    /// and have heard from it.
    pub(crate) fn check_expiry(&self, epoch: Option<u64>) -> Result<(), StateError> {
        match epoch {
            Some(e) if e == self.epoch => Ok(()),
            Some(e) => Err(StateError::precondition(
                Reason::Stale,
                format!(
                    "stale expiry: judged under ownership epoch {e}, the committed epoch is {}",
                    self.epoch
                ),
            )),
            None => Err(StateError::invalid(
                "owner_epoch",
                "required when the reason is expired",
            )),
        }
    }
}

/// The leader's ownership decision, a pure function of its observations:
/// which voters answered its probes within the down-after bound. Returns
/// the command to propose, or `None` when the committed ring already is
/// what the leader sees. The leader itself is always live (it is the one
/// committing), and a node that is not a voter never is.
pub fn decide(
    committed: &OwnershipEpoch,
    voters: &BTreeSet<u64>,
    leader: u64,
    reachable: &BTreeSet<u64>,
) -> Option<SetOwnership> {
    let live: BTreeSet<u64> = voters
        .iter()
        .copied()
        .filter(|id| *id == leader || reachable.contains(id))
        .collect();
    if live.is_empty() || live == committed.ring_members(voters) {
        return None;
    }
    Some(SetOwnership {
        epoch: committed.epoch + 1,
        live,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    fn at(ms: u64) -> Entry {
        Entry {
            index: ms,
            time_ms: ms,
        }
    }

    /// The decision table: (committed live set or epoch 0, voters, leader,
    /// what the leader reaches) -> the live set it commits, if any.
    #[test]
    fn the_leader_decides_from_what_it_reaches() {
        let all = set(&[1, 2, 3]);
        #[allow(clippy::type_complexity)]
        let table: &[(Option<&[u64]>, &[u64], u64, &[u64], Option<&[u64]>)] = &[
            // Epoch 0 is every voter, and followers 2 and 3 cut from each other, both reach the leader:
            // the leader still sees everyone, so ownership does not move.
            (None, &[1, 2, 3], 1, &[2, 3], None),
            (Some(&[1, 2, 3]), &[1, 2, 3], 1, &[2, 3], None),
            // The leader lost follower 3: 3's users move to 1 and 2.
            (None, &[1, 2, 3], 1, &[2], Some(&[1, 2])),
            (Some(&[1, 2, 3]), &[1, 2, 3], 2, &[1], Some(&[1, 2])),
            // 3 is back.
            (Some(&[1, 2]), &[1, 2, 3], 1, &[2, 3], Some(&[1, 2, 3])),
            // The leader itself never leaves the ring.
            (Some(&[1, 2, 3]), &[1, 2, 3], 1, &[], Some(&[1])),
            // Learners and removed nodes are never on it.
            (Some(&[1, 2, 3]), &[1, 2], 1, &[2, 3, 4], Some(&[1, 2])),
            (None, &[1, 2], 1, &[2, 4], None),
        ];
        for (i, (committed, voters, leader, reach, want)) in table.iter().enumerate() {
            let mut epoch = OwnershipEpoch::default();
            if let Some(live) = committed {
                epoch
                    .set(
                        at(1),
                        &SetOwnership {
                            epoch: 1,
                            live: set(live),
                        },
                    )
                    .unwrap();
            }
            let got = decide(&epoch, &set(voters), *leader, &set(reach));
            assert_eq!(
                got.as_ref().map(|c| c.live.clone()),
                want.map(set),
                "row {i}"
            );
            if let Some(c) = got {
                assert_eq!(c.epoch, epoch.epoch() + 1, "row {i}");
                c.validate().unwrap();
            }
        }
        assert_eq!(OwnershipEpoch::default().ring_members(&all), all);
    }

    #[test]
    fn epochs_advance_one_at_a_time_and_expiries_must_match() {
        let mut o = OwnershipEpoch::default();
        o.check_expiry(Some(0)).unwrap();
        let two = SetOwnership {
            epoch: 2,
            live: set(&[1]),
        };
        assert!(o.set(at(5), &two).is_err(), "skipping an epoch");
        let one = SetOwnership {
            epoch: 1,
            live: set(&[1, 2]),
        };
        o.set(at(5), &one).unwrap();
        assert!(o.set(at(6), &one).is_err(), "the same decision twice");
        assert_eq!((o.epoch(), o.since_ms()), (1, 5));
        assert_eq!(o.live(), &set(&[1, 2]));
        assert!(o.check_expiry(Some(0)).is_err(), "judged on the old ring");
        assert!(o.check_expiry(Some(2)).is_err(), "from the future");
        assert!(o.check_expiry(None).is_err());
        o.check_expiry(Some(1)).unwrap();
    }

    #[test]
    fn decisions_are_validated() {
        let bad = [
            SetOwnership {
                epoch: 0,
                live: set(&[1]),
            },
            SetOwnership {
                epoch: 1,
                live: set(&[]),
            },
            SetOwnership {
                epoch: 1,
                live: set(&[0, 1]),
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }
}
