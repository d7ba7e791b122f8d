//! The time a leader stamps on its proposals, bounded so cluster time
//! cannot run away.
//!
//! Entry time is the only time the state machine knows, and it never goes
//! back: one entry stamped a day ahead expires every lease at once and
//! keeps cluster time a day ahead for good (issue 23 item 8, issue 17 item
//! 4: a skewed new leader, a bad upstream step, an operator's typo). So a
//! leader does not stamp its own clock unchecked:
//!
//! - **Anchored at the start of each term** to the median of a majority of
//!   the voters' cluster clocks (its own and what `Peer.Ping` answers,
//!   each moved forward by half its round trip). A leader whose clock is
//!   far ahead of the others starts from theirs.
//! - **Bounded while it leads**: a stamp is at most the anchor plus the real
//!   (monotonic) time elapsed since, plus `clock.max_ahead_ms`. Its own
//!   clock stepping forward, however far, moves stamps by at most that.
//!
//! A leader that cannot hear from a majority cannot commit anyway; its
//! proposals wait for the anchor and fail as unavailable when it is not
//! found.

use std::time::{Duration, Instant};

use std::sync::RwLock;

/// The anchor of one term: cluster time agreed by a majority, and when.
#[derive(Clone, Copy, Debug)]
struct Anchor {
    term: u64,
    cluster_ms: u64,
    at: Instant,
}

/// The bound on one node's stamps. Cheap to share behind the node handle.
#[derive(Debug, Default)]
pub struct StampBound {
    /// Read on every proposal; written once a term.
    anchor: RwLock<Option<Anchor>>,
    /// Held while one proposal looks for a new term's anchor.
    search: tokio::sync::Mutex<()>,
}

/// The median of a majority's clock readings: `None` unless at least
/// `quorum` readings are there. With an even count the lower middle, so a
/// single clock far ahead never moves it forward.
pub fn agreed(mut readings: Vec<u64>, quorum: usize) -> Option<u64> {
    if readings.len() < quorum.max(1) {
        return None;
    }
    readings.sort_unstable();
    Some(readings[(readings.len() - 1) / 2])
}

/// A stamp: the clock, capped at `anchor + elapsed + max_ahead`.
pub fn bounded(clock_ms: u64, anchor_ms: u64, elapsed: Duration, max_ahead_ms: u64) -> u64 {
    let cap = anchor_ms
        .saturating_add(elapsed.as_millis() as u64)
        .saturating_add(max_ahead_ms);
    clock_ms.min(cap)
}

impl StampBound {
    /// The stamp for a proposal in `term` with the leader's clock at
    /// `clock_ms`. `anchor` finds the term's agreed time the first time it
    /// is needed (concurrent proposals wait for that one search); `None`
    /// from it means no majority answered.
    pub async fn stamp<F, Fut>(
        &self,
        term: u64,
        clock_ms: u64,
        max_ahead_ms: u64,
        anchor: F,
    ) -> Option<u64>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Option<u64>>,
    {
        let read = || *self.anchor.read().unwrap_or_else(|p| p.into_inner());
        let current = match read() {
            Some(a) if a.term == term => a,
            _ => {
                let _searching = self.search.lock().await;
                if let Some(a) = read().filter(|a| a.term == term) {
                    return Some(bounded(
                        clock_ms,
                        a.cluster_ms,
                        a.at.elapsed(),
                        max_ahead_ms,
                    ));
                }
                let at = Instant::now();
                let cluster_ms = anchor().await?;
                if clock_ms > cluster_ms.saturating_add(max_ahead_ms) {
                    tracing::warn!(
                        term,
                        clock_ms,
                        agreed_ms = cluster_ms,
                        "this leader's clock is ahead of the voters' agreed time: stamping \
                         from the agreed time"
                    );
                }
                let a = Anchor {
                    term,
                    cluster_ms,
                    at,
                };
                *self.anchor.write().unwrap_or_else(|p| p.into_inner()) = Some(a);
                a
            }
        };
        Some(bounded(
            clock_ms,
            current.cluster_ms,
            current.at.elapsed(),
            max_ahead_ms,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_far_ahead_is_capped_by_real_elapsed_time() {
        let day = 24 * 3600 * 1000;
        let anchor = 1_000_000;
        assert_eq!(
            bounded(anchor + day, anchor, Duration::from_millis(500), 1000),
            anchor + 1500
        );
        // A clock within the bound is stamped as it is.
        assert_eq!(
            bounded(anchor + 700, anchor, Duration::from_millis(500), 1000),
            anchor + 700
        );
        assert_eq!(bounded(u64::MAX, u64::MAX - 1, Duration::ZERO, 9), u64::MAX);
    }

    #[test]
    fn one_clock_far_ahead_does_not_move_the_agreed_time() {
        let day = 24 * 3600 * 1000;
        assert_eq!(agreed(vec![5_000 + day, 5_000, 5_010], 2), Some(5_010));
        assert_eq!(agreed(vec![5_000 + day, 5_000], 2), Some(5_000));
        assert_eq!(agreed(vec![5_000 + day], 2), None, "no majority");
        assert_eq!(agreed(vec![7, 3, 9, 1, 5], 3), Some(5));
    }

    #[tokio::test]
    async fn anchored_once_per_term() {
        let bound = StampBound::default();
        let day = 24 * 3600 * 1000;
        let s = bound
            .stamp(3, 10_000 + day, 1000, || async { Some(10_000) })
            .await;
        assert!(s.is_some_and(|s| (10_000..=11_100).contains(&s)), "{s:?}");
        // Same term: the anchor stays, the search is not run again.
        let s = bound
            .stamp(3, 10_000 + day, 1000, || async {
                panic!("anchored already")
            })
            .await;
        assert!(s.is_some_and(|s| s <= 11_100), "{s:?}");
        // A new term looks again; no majority, no stamp.
        assert_eq!(bound.stamp(4, 10_000, 1000, || async { None }).await, None);
    }
}
