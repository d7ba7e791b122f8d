//! The cluster as `heraldctl cluster status` shows it.

use crate::ClientError;
use crate::proto::{Member, NodeStatus};

/// Every member and what it says about itself, from
/// [`Client::cluster_status`](crate::Client::cluster_status).
#[derive(Debug)]
pub struct ClusterStatus {
    /// The leader according to the node that listed the members (0 = none
    /// known).
    pub leader_id: u64,
    /// One entry per member, in the order the cluster lists them.
    pub members: Vec<MemberStatus>,
}

/// One member and its own `Admin.Status`, or why it could not be asked.
#[derive(Debug)]
pub struct MemberStatus {
    /// The member as the cluster's membership config records it.
    pub member: Member,
    /// The member's answer, or the error of asking it (an unreachable node
    /// is a normal sight during chaos, so it is data here, not a failure).
    pub status: Result<NodeStatus, ClientError>,
}

impl ClusterStatus {
    /// The leader every member names, when all answered and agree on one;
    /// `None` while an election is on or a member is unreachable.
    pub fn agreed_leader(&self) -> Option<u64> {
        let mut leader = None;
        for m in &self.members {
            let status = m.status.as_ref().ok()?;
            if status.leader_id == 0 || leader.is_some_and(|l| l != status.leader_id) {
                return None;
            }
            leader = Some(status.leader_id);
        }
        leader
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, leader: Result<u64, ()>) -> MemberStatus {
        MemberStatus {
            member: Member {
                id,
                ..Default::default()
            },
            status: leader
                .map(|leader_id| NodeStatus {
                    id,
                    leader_id,
                    ..Default::default()
                })
                .map_err(|()| ClientError::Unavailable("down".into())),
        }
    }

    #[test]
    fn leader_agreement_needs_every_member() {
        let all = |members| ClusterStatus {
            leader_id: 1,
            members,
        };
        assert_eq!(
            all(vec![member(1, Ok(1)), member(2, Ok(1))]).agreed_leader(),
            Some(1)
        );
        assert_eq!(
            all(vec![member(1, Ok(1)), member(2, Ok(2))]).agreed_leader(),
            None
        );
        assert_eq!(
            all(vec![member(1, Ok(1)), member(2, Err(()))]).agreed_leader(),
            None
        );
        assert_eq!(
            all(vec![member(1, Ok(0)), member(2, Ok(0))]).agreed_leader(),
            None
        );
        assert_eq!(all(vec![]).agreed_leader(), None);
    }
}
