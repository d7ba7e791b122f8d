//! Expiry and retention driver. The state machine expires leases and
//! deletes what outlived its retention at the start of every apply, by
//! entry time; when nothing else is written, the leader proposes a `Tick`
//! once something is due so it still happens on time and identically on
//! every replica.

use std::future::Future;
use std::time::Duration;

use crate::node::Herald;
use crate::state::Command;

/// How often the leader looks for due leases.
const CHECK_EVERY: Duration = Duration::from_millis(200);

/// Runs until `stopped` resolves.
pub async fn run(node: Herald, stopped: impl Future<Output = ()>) {
    tokio::pin!(stopped);
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tick.tick() => {}
        }
        if !node.raft().is_leader() {
            continue;
        }
        let due = node.store().read().state.next_due();
        if due.is_some_and(|t| t <= node.clock().now_ms())
            && let Err(e) = node.propose(Command::Tick).await
        {
            tracing::debug!("expiry tick: {e}");
        }
    }
}
