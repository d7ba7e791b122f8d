//! A replica's bounded history of change events, for watches that resume
//! from a revision without gaps.
//!
//! The history is a per-replica cache, not replicated state: it is never in
//! a snapshot, it is rebuilt from the log applied after one, and everything
//! up to a restored snapshot counts as compacted. It is bounded twice, by a
//! count and by the bytes its events account for, and remembers the newest
//! revision it dropped, so a watch that asks for an older start is told
//! "compacted" instead of silently missing events.

use std::collections::VecDeque;

use super::{Reason, StateError};

/// One kept event: its revision (a Raft log index) orders the history.
pub(crate) trait Revisioned {
    /// The log index of the change.
    fn revision(&self) -> u64;
}

/// The bounded history of one kind of event.
#[derive(Clone, Debug)]
pub(crate) struct History<E> {
    events: VecDeque<E>,
    /// What each event in `events` was charged, in step with it.
    charges: VecDeque<u64>,
    bytes: u64,
    /// Revision of the newest event dropped (or of a restored snapshot);
    /// 0 = nothing dropped yet.
    compacted: u64,
    max_events: usize,
}

impl<E: Revisioned> Default for History<E> {
    fn default() -> Self {
        Self::new(super::limits::EVENT_HISTORY)
    }
}

impl<E: Revisioned> History<E> {
    /// An empty history of at most `max_events` events.
    pub(crate) fn new(max_events: usize) -> Self {
        History {
            events: VecDeque::new(),
            charges: VecDeque::new(),
            bytes: 0,
            compacted: 0,
            max_events,
        }
    }

    /// After loading a snapshot taken at `last_index`: nothing up to there
    /// is kept on this replica.
    pub(crate) fn restored(&mut self, last_index: u64) {
        self.events.clear();
        self.charges.clear();
        self.bytes = 0;
        self.compacted = self.compacted.max(last_index);
    }

    /// Bytes the kept events account for.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Appends `event`, charged `charge` bytes, then drops the oldest while
    /// more than the count or `budget` bytes are kept.
    pub(crate) fn push(&mut self, event: E, charge: u64, budget: u64) {
        debug_assert!(
            self.events
                .back()
                .is_none_or(|e| e.revision() <= event.revision()),
            "a history is in revision order"
        );
        self.bytes += charge;
        self.charges.push_back(charge);
        self.events.push_back(event);
        while self.events.len() > self.max_events || self.bytes > budget {
            let Some(dropped) = self.events.pop_front() else {
                break;
            };
            self.compacted = dropped.revision();
            let charged = self.charges.pop_front().unwrap_or(0);
            self.bytes = self.bytes.saturating_sub(charged);
        }
    }

    /// Calls `f` on every event with `revision >= start` (0 = every kept
    /// one), in revision order; refuses a start this replica no longer
    /// holds with [`Reason::Compacted`].
    pub(crate) fn visit_since(&self, start: u64, mut f: impl FnMut(&E)) -> Result<(), StateError> {
        if start != 0 && start <= self.compacted {
            return Err(StateError::precondition(
                Reason::Compacted,
                format!(
                    "compacted: events up to revision {} are no longer kept, asked for {start}; \
                     resume from {} or later",
                    self.compacted,
                    self.compacted + 1
                ),
            ));
        }
        let from = self.events.partition_point(|e| e.revision() < start);
        self.events.range(from..).for_each(&mut f);
        Ok(())
    }

    /// Order and bounds hold (tests only).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        for pair in self.events.iter().collect::<Vec<_>>().windows(2) {
            assert!(
                pair[0].revision() <= pair[1].revision(),
                "history out of order"
            );
        }
        assert!(self.events.len() <= self.max_events);
        assert_eq!(self.charges.len(), self.events.len());
        assert_eq!(self.charges.iter().sum::<u64>(), self.bytes);
        if let Some(first) = self.events.front() {
            assert!(first.revision() > self.compacted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Ev(u64);
    impl Revisioned for Ev {
        fn revision(&self) -> u64 {
            self.0
        }
    }

    fn since(h: &History<Ev>, start: u64) -> Result<Vec<u64>, StateError> {
        let mut out = Vec::new();
        h.visit_since(start, |e| out.push(e.0))?;
        Ok(out)
    }

    #[test]
    fn bounded_by_count_and_bytes_and_says_compacted() {
        let mut h = History::new(3);
        for r in 1..=5 {
            h.push(Ev(r), 10, 1_000);
        }
        h.check_invariants();
        assert_eq!(since(&h, 0).unwrap(), vec![3, 4, 5]);
        assert_eq!(since(&h, 3).unwrap(), vec![3, 4, 5]);
        let err = since(&h, 2).unwrap_err();
        assert_eq!(err.reason(), Reason::Compacted);
        assert!(err.to_string().contains("resume from 3"), "{err}");
        // 25 bytes hold two events of 10.
        h.push(Ev(6), 10, 25);
        assert_eq!(since(&h, 0).unwrap(), vec![5, 6]);
        assert_eq!(h.bytes(), 20);
        h.restored(9);
        assert!(since(&h, 9).is_err());
        assert_eq!(since(&h, 10).unwrap(), Vec::<u64>::new());
        h.check_invariants();
    }
}
