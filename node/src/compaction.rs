//! Log compaction by bytes. openraft builds a snapshot every
//! `raft.snapshot_every` entries; this loop also asks for one once
//! `raft.snapshot_every_bytes` were appended since it last asked.
//!
//! Why: after a restart the state machine replays the log behind the
//! snapshot, and openraft reads that whole range in one go. Counted in
//! entries alone, 100 000 maximal entries (64 KiB of progress each) made a
//! replay read gigabytes, so a node that crashed under such a load could
//! not come back (the replay test in `node/tests/it/storage.rs`). Counted in
//! bytes, a replay reads at most about `snapshot_every_bytes` plus what
//! arrives in one check interval.

use std::future::Future;
use std::time::Duration;

use crate::node::Herald;

/// How often the appended bytes are looked at.
const CHECK_EVERY: Duration = Duration::from_millis(200);

/// Runs until `stopped` resolves.
pub async fn run(node: Herald, stopped: impl Future<Output = ()>) {
    tokio::pin!(stopped);
    let limit = node.config().raft.snapshot_every_bytes;
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut mark = 0;
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tick.tick() => {}
        }
        let appended = node.log().appended_bytes();
        if appended.saturating_sub(mark) < limit {
            continue;
        }
        mark = appended;
        match node.raft().trigger().snapshot().await {
            Ok(()) => tracing::info!(appended, limit, "snapshot: the log grew by its byte limit"),
            Err(e) => tracing::warn!(error = %e, "snapshot by bytes"),
        }
    }
}
