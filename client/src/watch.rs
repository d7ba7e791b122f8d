//! A watch that outlives the node it is attached to: the presence watch
//! ([`Client::watch`](crate::Client::watch)) and the session watch
//! ([`Client::watch_sessions_resumed`](crate::Client::watch_sessions_resumed)),
//! one loop over a [`Feed`] that says how to open each.
//!
//! A broken stream is reopened on the next endpoint from where it stopped.
//! The resume point is the revision of the last delivered event itself, not
//! the one after, and the events of that revision already delivered are
//! skipped: correct both when every log entry yields one event and when one
//! entry yields several (a batch of expiries), as long as a node replays the
//! events of one revision in the same order — which every replica does,
//! since they come from the same log entry.

use std::pin::Pin;
use std::time::Duration;

use crate::endpoint::Transport;
use futures::Stream;
use futures::future::BoxFuture;
use tokio::time::Instant;
use tonic::{Status, Streaming};

use crate::client::describe;
use crate::proto::{Consistency, PresenceEvent, SessionEvent, WatchRequest, WatchSessionsRequest};
use crate::retry::{Outcome, classify};
use crate::{Client, ClientError};

/// The stream returned by [`Client::watch`](crate::Client::watch): presence
/// events in revision order, no gaps, no duplicates, across node failures.
///
/// It yields an `Err` and ends after a definite error from a server (for
/// example a start revision that was compacted away) or after
/// `max_attempts` failed reconnects in a row.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<PresenceEvent, ClientError>> + Send>>;

/// The stream returned by
/// [`Client::watch_sessions_resumed`](crate::Client::watch_sessions_resumed):
/// session events in revision order, no gaps, no duplicates, across node
/// failures; it ends like [`WatchStream`].
pub type SessionWatchStream = Pin<Box<dyn Stream<Item = Result<SessionEvent, ClientError>> + Send>>;

/// The response metadata in which a node names the revision a session
/// watch starts at (its "now" when asked for 0).
pub const START_REVISION_HEADER: &str = "herald-start-revision";

/// What one kind of watch needs: how to open its stream at a revision, and
/// how "from now" is pinned to one.
pub(crate) trait Feed: Send + 'static {
    type Event: Send + 'static;
    /// The RPC's name, for errors.
    const NAME: &'static str;
    fn revision(event: &Self::Event) -> u64;
    fn open(
        &self,
        channel: Transport,
        start_revision: u64,
    ) -> BoxFuture<'static, Result<tonic::Response<Streaming<Self::Event>>, Status>>;
    /// The revision "now" means, read before the first open; `None` when
    /// the first stream's `herald-start-revision` names it instead.
    fn anchor(&self, client: &Client) -> BoxFuture<'static, Result<Option<u64>, ClientError>>;
}

/// The presence watch.
struct Presence {
    uids: Vec<String>,
}

impl Feed for Presence {
    type Event = PresenceEvent;
    const NAME: &'static str = "Watch";
    fn revision(event: &PresenceEvent) -> u64 {
        event.revision
    }
    fn open(
        &self,
        channel: Transport,
        start_revision: u64,
    ) -> BoxFuture<'static, Result<tonic::Response<Streaming<PresenceEvent>>, Status>> {
        let request = WatchRequest {
            uids: self.uids.clone(),
            start_revision,
        };
        Box::pin(async move { crate::endpoint::herald(channel).watch(request).await })
    }
    /// The applied index seen by a linearizable read, which covers every
    /// write acknowledged before the watch began.
    fn anchor(&self, client: &Client) -> BoxFuture<'static, Result<Option<u64>, ClientError>> {
        let uid = self
            .uids
            .first()
            .cloned()
            .unwrap_or_else(|| ANCHOR_UID.to_string());
        let client = client.clone();
        Box::pin(async move {
            let read = client
                .batch_get_presence(vec![uid], Consistency::Linearizable)
                .await?;
            Ok(Some(read.revision))
        })
    }
}

/// The session watch. "From now" is the first stream's start, as its node
/// names it: a session watcher may hold no presence role to read with.
struct Sessions {
    request: WatchSessionsRequest,
}

impl Feed for Sessions {
    type Event = SessionEvent;
    const NAME: &'static str = "WatchSessions";
    fn revision(event: &SessionEvent) -> u64 {
        event.revision
    }
    fn open(
        &self,
        channel: Transport,
        start_revision: u64,
    ) -> BoxFuture<'static, Result<tonic::Response<Streaming<SessionEvent>>, Status>> {
        let request = WatchSessionsRequest {
            start_revision,
            ..self.request.clone()
        };
        Box::pin(async move {
            crate::endpoint::herald(channel)
                .watch_sessions(request)
                .await
        })
    }
    fn anchor(&self, _: &Client) -> BoxFuture<'static, Result<Option<u64>, ClientError>> {
        Box::pin(async { Ok(None) })
    }
}

/// A stream that stayed up this long counts as healthy: its break starts a
/// fresh series of reconnect attempts instead of adding to the old one, so a
/// long watch survives any number of spaced-out node restarts.
const STABLE: Duration = Duration::from_secs(5);

/// The uid read to anchor a watch "from now" when it watches every user: any
/// valid uid works, an unknown user costs nothing.
const ANCHOR_UID: &str = "herald-watch-anchor";

pub(crate) fn watch(client: Client, uids: Vec<String>, start_revision: u64) -> WatchStream {
    resumed(client, Presence { uids }, start_revision)
}

pub(crate) fn watch_sessions(client: Client, request: WatchSessionsRequest) -> SessionWatchStream {
    let start = request.start_revision;
    resumed(client, Sessions { request }, start)
}

fn resumed<F: Feed>(
    client: Client,
    feed: F,
    start_revision: u64,
) -> Pin<Box<dyn Stream<Item = Result<F::Event, ClientError>> + Send>> {
    let state = Watch {
        client,
        feed,
        cursor: Cursor::new(start_revision),
        anchored: start_revision != 0,
        stream: None,
        endpoint: 0,
        opened_at: Instant::now(),
        failures: 0,
        last_error: String::new(),
        done: false,
    };
    Box::pin(futures::stream::unfold(state, |mut watch| async move {
        let item = watch.next().await?;
        Some((item, watch))
    }))
}

/// Where a watch stands: what to ask for when (re)opening, and which events
/// were delivered already.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    /// The revision to open at while nothing has been delivered.
    start: u64,
    /// The revision of the last delivered event and how many events of that
    /// revision were delivered.
    last: Option<(u64, usize)>,
    /// Events of revision `last` the current stream will replay and that
    /// must be dropped.
    skip: usize,
}

impl Cursor {
    fn new(start: u64) -> Cursor {
        Cursor {
            start,
            last: None,
            skip: 0,
        }
    }

    /// The start revision for a new stream.
    fn reopen_at(&mut self) -> u64 {
        match self.last {
            Some((revision, delivered)) => {
                self.skip = delivered;
                revision
            }
            None => {
                self.skip = 0;
                self.start
            }
        }
    }

    /// Whether an event at `revision` is new and must be delivered.
    fn accept(&mut self, revision: u64) -> bool {
        match self.last {
            None if revision < self.start => false,
            None => {
                self.last = Some((revision, 1));
                true
            }
            Some((last, _)) if revision < last => false,
            Some((last, delivered)) if revision == last => {
                if self.skip > 0 {
                    self.skip -= 1;
                    false
                } else {
                    self.last = Some((last, delivered + 1));
                    true
                }
            }
            Some(_) => {
                self.skip = 0;
                self.last = Some((revision, 1));
                true
            }
        }
    }
}

struct Watch<F: Feed> {
    client: Client,
    feed: F,
    cursor: Cursor,
    /// False while "from now" has not been pinned to a revision yet.
    anchored: bool,
    stream: Option<Streaming<F::Event>>,
    /// The endpoint index `stream` is attached to.
    endpoint: usize,
    opened_at: Instant,
    /// Failed opens and breaks since the watch was last healthy.
    failures: u32,
    last_error: String,
    done: bool,
}

impl<F: Feed> Watch<F> {
    async fn next(&mut self) -> Option<Result<F::Event, ClientError>> {
        while !self.done {
            let Some(stream) = self.stream.as_mut() else {
                if let Err(e) = self.open().await {
                    self.done = true;
                    return Some(Err(e));
                }
                continue;
            };
            match stream.message().await {
                Ok(Some(event)) => {
                    if self.cursor.accept(F::revision(&event)) {
                        return Some(Ok(event));
                    }
                }
                Ok(None) => self.broken("the server ended the stream".into()),
                Err(status) => match classify(&status) {
                    Outcome::Definite => {
                        self.done = true;
                        return Some(Err(status.into()));
                    }
                    _ => self.broken(describe(&status)),
                },
            }
        }
        None
    }

    fn broken(&mut self, detail: String) {
        self.stream = None;
        if self.opened_at.elapsed() >= STABLE {
            self.failures = 0;
        }
        self.failed(self.endpoint, detail);
    }

    fn failed(&mut self, endpoint: usize, detail: String) {
        let (uri, _) = self.client.target(endpoint);
        tracing::debug!(endpoint = uri, %detail, failures = self.failures, "watch stream failed");
        self.last_error = format!("{uri}: {detail}");
        self.failures += 1;
        self.client.move_preference_from(endpoint);
    }

    /// Opens a stream at the cursor, trying endpoints in turn.
    async fn open(&mut self) -> Result<(), ClientError> {
        let config = self.client.config().clone();
        loop {
            if self.failures >= config.max_attempts.max(1) {
                return Err(ClientError::Unavailable(
                    format!(
                        "{}: gave up after {} failed attempts in a row; last error from {}",
                        F::NAME,
                        self.failures,
                        self.last_error
                    )
                    .into(),
                ));
            }
            if self.failures > 0 {
                tokio::time::sleep(config.backoff.jittered(self.failures - 1)).await;
            }
            if !self.anchored
                && let Some(now) = self.feed.anchor(&self.client).await?
            {
                self.cursor.start = now + 1;
                self.anchored = true;
            }
            let endpoint = self.client.preferred();
            let (_, channel) = self.client.target(endpoint);
            // Not anchored yet: open "from now" and learn the start from the
            // stream's own header.
            let start = if self.anchored {
                self.cursor.reopen_at()
            } else {
                0
            };
            // No grpc-timeout here: it would end the stream on the server.
            // The timeout bounds only the wait for the response headers.
            let opened =
                tokio::time::timeout(config.request_timeout, self.feed.open(channel, start)).await;
            match opened {
                Ok(Ok(response)) => {
                    if !self.anchored {
                        let named: Option<u64> = response
                            .metadata()
                            .get(START_REVISION_HEADER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse().ok());
                        let Some(now) = named else {
                            return Err(ClientError::Other(Status::internal(format!(
                                "{}: the stream did not name its start ({START_REVISION_HEADER})",
                                F::NAME
                            ))));
                        };
                        self.cursor.start = now;
                        self.cursor.reopen_at();
                        self.anchored = true;
                    }
                    self.stream = Some(response.into_inner());
                    self.endpoint = endpoint;
                    self.opened_at = Instant::now();
                    return Ok(());
                }
                Ok(Err(status)) => match classify(&status) {
                    Outcome::Definite => return Err(status.into()),
                    _ => self.failed(endpoint, describe(&status)),
                },
                Err(_) => self.failed(
                    endpoint,
                    format!("no answer within {:?}", config.request_timeout),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_cursor_drops_events_before_the_start() {
        let mut c = Cursor::new(10);
        assert_eq!(c.reopen_at(), 10);
        assert!(!c.accept(9));
        assert!(c.accept(10));
        assert!(c.accept(12));
        assert!(!c.accept(11));
    }

    #[test]
    fn resume_skips_exactly_what_was_delivered() {
        let mut c = Cursor::new(1);
        c.reopen_at();
        assert!(c.accept(5));
        assert!(c.accept(7));
        // The stream breaks after one of revision 7's events.
        assert_eq!(c.reopen_at(), 7);
        assert!(!c.accept(7), "the replayed event is a duplicate");
        assert!(c.accept(7), "a second event of the same entry is new");
        assert!(c.accept(8));
        assert_eq!(c.reopen_at(), 8);
        assert!(!c.accept(8));
        assert!(c.accept(9));
    }

    #[test]
    fn resume_with_one_event_per_revision() {
        let mut c = Cursor::new(3);
        c.reopen_at();
        for rev in 3..6 {
            assert!(c.accept(rev));
        }
        assert_eq!(c.reopen_at(), 5);
        assert!(!c.accept(5));
        assert!(c.accept(6));
    }

    #[test]
    fn a_stream_that_jumps_ahead_clears_the_skip() {
        let mut c = Cursor::new(1);
        c.reopen_at();
        assert!(c.accept(4));
        assert!(c.accept(4));
        assert_eq!(c.reopen_at(), 4);
        // The node sends revision 5 first: the skipped events of 4 are gone.
        assert!(c.accept(5));
        assert!(!c.accept(4));
    }
}
