//! Raft's own threads: the openraft core, the state machine worker, the
//! outgoing Raft RPCs and the peer listener run on a runtime of their own,
//! never queued behind client work.
//!
//! Why: the node's main runtime is single-threaded (see `main.rs`), and
//! under overload it holds thousands of ready client tasks. A follower's
//! `AppendEntries` handler, or a leader's heartbeat timer, waited behind
//! all of them for longer than the 150-250 ms election timeout, and the
//! cluster held elections while it was merely busy (the overload bench of
//! issue 17: 49 term changes in 30 s at twice the maximum login rate, etcd
//! none). On threads of its own, Raft gets its share of the CPU from the
//! kernel's scheduler whatever the client runtime's queue holds.
//!
//! Everything that does I/O for Raft must be *created* on this runtime:
//! a tokio socket is driven by the reactor of the runtime it was registered
//! with, so a peer listener or channel made on the main runtime would still
//! wait for the busy main thread to poll its reactor.

use std::future::Future;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The runtime Raft runs on, on a thread of its own; stopped when dropped.
pub struct RaftRuntime {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
}

impl RaftRuntime {
    /// Starts Raft's runtime: two worker threads `herald-raft-<id>`, so the
    /// core (elections, heartbeats, replication) keeps running while the
    /// state machine worker applies a large entry or a peer request is
    /// decoded, and a thread `herald-raft-<id>` that holds it until dropped.
    pub fn start(id: u64) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name(format!("herald-raft-{id}"))
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("herald-raft-{id}"))
            .spawn(move || {
                // Waits until the sender is dropped, then drops the runtime
                // (and the tasks left on it) here, off any async context.
                let _ = runtime.block_on(stopped);
            })?;
        Ok(RaftRuntime {
            handle,
            stop: Some(stop),
        })
    }

    /// Runs `f` on the Raft thread.
    pub fn spawn<F>(&self, f: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(f)
    }

    /// Runs `f` on the Raft thread and waits for its result (for what must
    /// be created there: openraft's core tasks, listeners, channels).
    pub async fn run<F>(&self, f: F) -> anyhow::Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn(f)
            .await
            .map_err(|e| anyhow::anyhow!("the raft thread failed: {e}"))
    }
}

impl Drop for RaftRuntime {
    fn drop(&mut self) {
        // Wakes the thread, which drops its runtime and the tasks left on it.
        drop(self.stop.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn work_on_the_raft_thread_runs_while_the_caller_is_busy() {
        let rt = RaftRuntime::start(7).unwrap();
        // The caller's one thread is blocked; the Raft thread still runs.
        let (tx, rx) = std::sync::mpsc::channel();
        let h = rt.spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            tx.send(std::thread::current().name().map(str::to_owned))
                .unwrap();
        });
        let name = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the raft thread ran while the caller's thread was blocked");
        assert_eq!(name.as_deref(), Some("herald-raft-7"));
        h.await.unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn dropping_the_runtime_ends_its_tasks() {
        let rt = RaftRuntime::start(8).unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let h = rt.spawn(async move {
            let _tx = tx; // dropped when the task is cancelled
            std::future::pending::<()>().await
        });
        drop(rt);
        assert!(rx.await.is_err(), "the task's sender was dropped");
        assert!(h.await.unwrap_err().is_cancelled());
    }
}
