//! Serving a resumable watch over a replica's event history: the one loop
//! behind the presence watch (gRPC and the SSE route, through
//! `presence::open_watch`) and the session watch.
//!
//! A watch takes a slot of `limits.max_watch_streams` (refused with
//! RESOURCE_EXHAUSTED when none is free), refuses a compacted start as a
//! status (OUT_OF_RANGE, reason COMPACTED) rather than a broken stream, then
//! sends every matching event from the start on and waits for the next
//! apply. Everything up to the state's last index is in its history, so
//! resuming at `last_index + 1` leaves no gap. The stream ends with
//! UNAVAILABLE when the node shuts down, so the client resumes elsewhere.

use std::pin::Pin;

use ::herald_client::refusal;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use super::super::status::{refuse, wire_reason};
use crate::node::Herald;
use crate::state::{State, StateError};

/// The stream a watch answers.
pub type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Appends the events of one watch with `revision >= start` to `out`, or
/// says the start is compacted.
pub type EventSource<T> =
    Box<dyn FnMut(&State, u64, &mut Vec<T>) -> Result<(), StateError> + Send + 'static>;

/// The response metadata that names the revision a watch stream starts at
/// (the node's "now" when the request asked for 0): a client whose stream
/// breaks before its first event reopens there, elsewhere, without a gap.
pub const START_REVISION_HEADER: &str = "herald-start-revision";

/// Starts a watch from `start_revision` (0 = from now) over `source`, as a
/// gRPC stream whose response names its start in
/// [`START_REVISION_HEADER`].
pub fn serve_watch<T: Send + 'static>(
    node: &Herald,
    start_revision: u64,
    source: EventSource<T>,
) -> Result<tonic::Response<EventStream<T>>, Status> {
    let (rx, start) = spawn_watch(node, start_revision, source)?;
    let stream: EventStream<T> = Box::pin(ReceiverStream::new(rx));
    let mut response = tonic::Response::new(stream);
    response
        .metadata_mut()
        .insert(START_REVISION_HEADER, start.into());
    Ok(response)
}

/// Starts a watch from `start_revision` (0 = from now) over `source`, and
/// says the revision it starts at: the task that feeds the receiver holds a `limits.max_watch_streams` permit
/// until the receiver is dropped (the client went away: the call was
/// cancelled or the connection closed, which keepalive notices for a
/// vanished peer).
pub fn spawn_watch<T: Send + 'static>(
    node: &Herald,
    start_revision: u64,
    mut source: EventSource<T>,
) -> Result<(mpsc::Receiver<Result<T, Status>>, u64), Status> {
    let slot = node
        .watch_slots()
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            refuse(
                Code::ResourceExhausted,
                format!(
                    "too many watch streams on this node: limits.max_watch_streams = {}; \
                     close one or watch through another node",
                    node.config().limits.max_watch_streams
                ),
            )
        })?;
    let store = node.store().clone();
    let mut applied = store.applied();
    let mut stopping = node.stopping();
    let mut next = match start_revision {
        0 => store.read().state.last_index() + 1,
        n => n,
    };
    // Refuse a compacted start now, as a status rather than a broken stream.
    source(&store.read().state, next, &mut Vec::new()).map_err(|e| compacted(&e))?;
    let start = next;
    let (tx, rx) = mpsc::channel(1024);
    let open_stream = node.metrics().api.watch_stream();
    tokio::spawn(async move {
        // Dropped in reverse: the gauge falls before the slot frees.
        let _slot = slot;
        let _open_stream = open_stream;
        loop {
            // Everything up to the state's last index is in its history,
            // so resuming at last_index + 1 leaves no gap.
            let mut events = Vec::new();
            let (fed, upto) = {
                let m = store.read();
                (source(&m.state, next, &mut events), m.state.last_index())
            };
            if let Err(e) = fed {
                let _ = tx.send(Err(compacted(&e))).await;
                return;
            }
            for e in events {
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            next = next.max(upto + 1);
            tokio::select! {
                r = applied.changed() => if r.is_err() { return },
                _ = tx.closed() => return,
                _ = until_true(&mut stopping) => {
                    let _ = tx.send(Err(refuse(Code::Unavailable, "node shutting down; resume elsewhere"))).await;
                    return;
                }
            }
        }
    });
    Ok((rx, start))
}

/// Resolves once the flag is (or becomes) true, or its sender is gone.
async fn until_true(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// A watch whose start the history no longer holds: OUT_OF_RANGE, as etcd
/// answers a compacted revision, with the state machine's COMPACTED reason.
pub fn compacted(e: &StateError) -> Status {
    refusal(Code::OutOfRange, e.to_string(), wire_reason(e.reason()))
}
