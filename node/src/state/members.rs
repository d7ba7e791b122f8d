//! The incarnation of each member, as the cluster first met it: the random
//! id in the member's data dir (`raft::identity`). Peer messages carry the
//! incarnation the sender expects of the receiver; a node whose data dir
//! is another incarnation (it was wiped and started again) is refused until
//! the member is removed, which forgets its incarnation, and added again.
//! Recorded by the leader when a member first answers it; forgotten when a
//! membership entry no longer lists the node (applied in log order, so on
//! every replica alike).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{Reason, StateError};

/// Records member `node_id`'s incarnation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RecordIncarnation {
    /// The member's Raft id.
    pub node_id: u64,
    /// Its data dir's incarnation (32 hex digits).
    pub incarnation: String,
}

impl RecordIncarnation {
    /// Field checks.
    pub fn validate(&self) -> Result<(), StateError> {
        if self.node_id == 0 {
            return Err(StateError::invalid("node_id", "must be >= 1"));
        }
        if self.incarnation.len() != 32 || !self.incarnation.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(StateError::invalid(
                "incarnation",
                format!("must be 32 hex digits, got {:?}", self.incarnation),
            ));
        }
        Ok(())
    }
}

/// Every member's recorded incarnation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Incarnations {
    by_node: BTreeMap<u64, String>,
}

impl Incarnations {
    /// Member `node_id`'s incarnation, if recorded.
    pub fn get(&self, node_id: u64) -> Option<&str> {
        self.by_node.get(&node_id).map(String::as_str)
    }

    pub(crate) fn record(&mut self, cmd: &RecordIncarnation) -> Result<(), StateError> {
        match self.by_node.get(&cmd.node_id) {
            Some(known) if *known == cmd.incarnation => Ok(()),
            Some(known) => Err(StateError::precondition(
                Reason::Incarnation,
                format!(
                    "node {} is known as incarnation {known}; another data dir cannot take its place \
                 until it is removed (heraldctl cluster replace {})",
                    cmd.node_id, cmd.node_id
                ),
            )),
            None => {
                self.by_node.insert(cmd.node_id, cmd.incarnation.clone());
                Ok(())
            }
        }
    }

    /// Forgets the incarnations of nodes not in `members`.
    pub(crate) fn retain(&mut self, members: &BTreeSet<u64>) {
        self.by_node.retain(|id, _| members.contains(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(node_id: u64, c: char) -> RecordIncarnation {
        RecordIncarnation {
            node_id,
            incarnation: c.to_string().repeat(32),
        }
    }

    #[test]
    fn recorded_once_refused_when_different_forgotten_with_the_member() {
        let mut i = Incarnations::default();
        i.record(&rec(2, 'a')).unwrap();
        i.record(&rec(2, 'a')).unwrap();
        let before = i.clone();
        assert!(matches!(
            i.record(&rec(2, 'b')),
            Err(StateError::FailedPrecondition { .. })
        ));
        assert_eq!(i, before);
        i.retain(&[1, 3].into());
        assert_eq!(i.get(2), None);
        i.record(&rec(2, 'b')).unwrap();
        assert_eq!(i.get(2), Some("b".repeat(32).as_str()));
        assert!(rec(0, 'a').validate().is_err());
        assert!(
            RecordIncarnation {
                node_id: 1,
                incarnation: "xyz".into()
            }
            .validate()
            .is_err()
        );
    }
}
