//! Raft between nodes over tonic: openraft's append (pipelined on one
//! stream per follower), vote, snapshot and leader transfer as bincode
//! blobs on Herald's `Peer` gRPC service.
//!
//! Every blob is [`encode`]d with the peer message format version, and a
//! node refuses versions it does not speak (see `raft::WIRE_VERSION`).
//!
//! Channels are made lazily and cached per address in a [`PeerChannels`]
//! shared by Raft replication, write forwarding and follower ReadIndex, so a
//! node keeps one HTTP/2 connection per peer.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::peer::proto::peer_client::PeerClient;
use crate::peer::proto::{RaftBlob, SnapshotChunk};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use openraft::OptionalSend;
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::identity::IdentityCell;
use super::state_store::StateStore;

use super::typ::{Snapshot, Vote};
use super::{Member, TypeConfig, decode, encode};

/// One result of pipelined replication, as openraft wants it.
type AppendResult = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

/// How long a replication stream may owe results before it is given up.
const STREAM_STALL: Duration = Duration::from_secs(1);

/// How long replication waits before reopening a stream to a peer it could
/// not connect to (openraft's own backoff, [`PeerConnection::backoff`],
/// never runs on that path).
const REOPEN_BACKOFF: Duration = Duration::from_millis(100);

/// Snapshot data is streamed in chunks of this size.
pub const SNAPSHOT_CHUNK: usize = 1 << 20;

/// Peer message metadata: the sender's cluster id.
pub const CLUSTER_HEADER: &str = "x-herald-cluster";
/// Peer message metadata: the sender's incarnation.
pub const FROM_INCARNATION_HEADER: &str = "x-herald-from-incarnation";
/// Peer message metadata: the incarnation the sender's cluster recorded
/// for the receiver (absent when it recorded none).
pub const TO_INCARNATION_HEADER: &str = "x-herald-to-incarnation";

/// What every peer message says about who sends it and whom it is for (see
/// `raft::identity`): the sender's cluster id and incarnation, and the
/// receiver's incarnation as the replicated state records it. Read at each
/// call, so a node that joins or a member that is replaced is stamped
/// right at once.
#[derive(Clone)]
pub struct PeerStamp {
    identity: IdentityCell,
    store: StateStore,
    tail: Arc<LogTail>,
}

/// The incarnations recorded in the log beyond what the state machine had
/// applied when the node started. The committed index is kept lazily (a
/// hint; `hard_state`), so after a crash a node may re-apply less than was
/// committed and, until it catches up, not know an incarnation the cluster
/// recorded: it would then stamp nothing, and a wiped peer could adopt its
/// cluster. Read from the log itself (committed or not: a record only ever
/// makes the stamp stricter), used until the state machine has applied
/// past the end of that log.
#[derive(Default)]
pub struct LogTail {
    /// The last index scanned.
    pub upto: u64,
    /// What the scanned entries record, in log order (a membership entry
    /// forgets the nodes it drops, as the state machine does).
    pub incarnations: crate::state::Incarnations,
}

impl LogTail {
    /// Scans `log` after index `applied` (what the snapshot covers).
    pub async fn scan(
        log: &super::log_store::LogStore,
        applied: Option<u64>,
    ) -> std::io::Result<LogTail> {
        use openraft::storage::{RaftLogReader, RaftLogStorage};
        let mut log = log.clone();
        let last = log
            .get_log_state()
            .await?
            .last_log_id
            .map_or(0, |l| l.index());
        let from = applied.map_or(0, |a| a + 1);
        let mut tail = LogTail {
            upto: last,
            ..LogTail::default()
        };
        if from > last {
            return Ok(tail);
        }
        for entry in log.try_get_log_entries(from..=last).await? {
            match &entry.payload {
                openraft::EntryPayload::Normal(p) => {
                    if let crate::state::Command::RecordIncarnation(r) = &*p.cmd {
                        let _ = tail.incarnations.record(r);
                    }
                }
                openraft::EntryPayload::Membership(m) => {
                    tail.incarnations
                        .retain(&m.nodes().map(|(id, _)| *id).collect());
                }
                _ => {}
            }
        }
        Ok(tail)
    }
}

impl PeerStamp {
    /// Stamps from this node's identity, replicated state and log tail.
    pub fn new(identity: IdentityCell, store: StateStore, tail: LogTail) -> Self {
        PeerStamp {
            identity,
            store,
            tail: Arc::new(tail),
        }
    }

    /// The incarnation the cluster recorded for node `target`, as far as
    /// this node knows.
    fn expected(&self, target: u64) -> Option<String> {
        let m = self.store.read();
        if let Some(known) = m.state.incarnations().get(target) {
            return Some(known.to_string());
        }
        let applied = m.last_applied.as_ref().map_or(0, |l| l.index());
        (applied < self.tail.upto)
            .then(|| self.tail.incarnations.get(target).map(str::to_string))
            .flatten()
    }
}

/// The interceptor that puts a [`PeerStamp`] on each request to `target`.
#[derive(Clone)]
pub struct Stamper {
    stamp: Option<PeerStamp>,
    target: u64,
}

impl tonic::service::Interceptor for Stamper {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(stamp) = &self.stamp else {
            return Ok(req);
        };
        let md = req.metadata_mut();
        if let Some(id) = stamp.identity.get() {
            for (key, value) in [
                (CLUSTER_HEADER, id.cluster_id),
                (FROM_INCARNATION_HEADER, id.incarnation),
            ] {
                if let Ok(v) = value.parse() {
                    md.insert(key, v);
                }
            }
        }
        if let Some(v) = stamp.expected(self.target).and_then(|e| e.parse().ok()) {
            md.insert(TO_INCARNATION_HEADER, v);
        }
        Ok(req)
    }
}

/// A `Peer` client whose every request carries this node's stamp.
pub type PeerClientOf = PeerClient<InterceptedService<Channel, Stamper>>;

/// Lazily connected gRPC channels to peers, by address. Cheap to clone.
///
/// With TLS (`tls` is the node's dial config: the cluster's CA, and this
/// node's certificate as its client identity) every channel is mutual TLS;
/// without, plaintext (insecure mode). Every request carries the node's
/// [`PeerStamp`].
#[derive(Clone, Default)]
pub struct PeerChannels {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    routes: Arc<BTreeMap<u64, String>>,
    tls: Option<tonic::transport::ClientTlsConfig>,
    stamp: Option<PeerStamp>,
}

impl PeerChannels {
    /// Channels that dial peer `id` at `routes[id]` when present (see
    /// `Config::peer_routes`), else at its membership address.
    pub fn with_routes(
        routes: BTreeMap<u64, String>,
        tls: Option<tonic::transport::ClientTlsConfig>,
        stamp: Option<PeerStamp>,
    ) -> Self {
        PeerChannels {
            channels: Arc::default(),
            routes: Arc::new(routes),
            tls,
            stamp,
        }
    }

    /// The same routes, TLS and stamp with connections of their own: Raft's
    /// RPCs use these, made on the Raft thread and driven by its reactor
    /// (`raft::runtime`), so a busy client runtime cannot delay them.
    pub fn with_own_connections(&self) -> Self {
        PeerChannels {
            channels: Arc::default(),
            ..self.clone()
        }
    }

    /// An endpoint for `addr` (host:port) with this node's TLS, if any.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, tonic::transport::Error> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))?;
        match &self.tls {
            Some(tls) => endpoint.tls_config(tls.clone()),
            None => Ok(endpoint),
        }
    }

    /// A `Peer` client for node `id`, whose membership address is `addr`.
    pub fn client_to(&self, id: u64, addr: &str) -> Result<PeerClientOf, tonic::transport::Error> {
        let addr = self.routes.get(&id).map_or(addr, String::as_str);
        let stamper = Stamper {
            stamp: self.stamp.clone(),
            target: id,
        };
        Ok(PeerClient::with_interceptor(self.channel(addr)?, stamper)
            .max_decoding_message_size(usize::MAX))
    }

    /// The cached channel to `addr` (host:port), made on first use.
    fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = map.get(addr) {
            return Ok(ch.clone());
        }
        let ch = self
            .endpoint(addr)?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .connect_lazy();
        map.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }
}

/// The `InstallSnapshot` stream: one chunk with the encoded meta, then the
/// data in [`SNAPSHOT_CHUNK`]s. Chunks are cut as the stream is polled
/// (HTTP/2 flow control keeps only a few in flight), not all at once: a
/// copy of the whole snapshot would double the sender's memory while it
/// sends.
fn snapshot_chunks(meta: Vec<u8>, data: Vec<u8>) -> impl Iterator<Item = SnapshotChunk> {
    let total = data.len();
    let first = SnapshotChunk {
        meta,
        data: Vec::new(),
    };
    std::iter::once(first).chain(
        (0..total.div_ceil(SNAPSHOT_CHUNK)).map(move |i| SnapshotChunk {
            meta: Vec::new(),
            data: data[i * SNAPSHOT_CHUNK..total.min((i + 1) * SNAPSHOT_CHUNK)].to_vec(),
        }),
    )
}

/// The first chunk of an `InstallSnapshot` stream: who sends it, what it
/// holds, and the CRC-32 of its data.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct SnapshotHead {
    /// The leader's vote.
    pub vote: Vote,
    /// What the snapshot covers.
    pub meta: crate::raft::typ::SnapshotMeta,
    /// CRC-32 of the whole data, checked by the receiver.
    pub crc32: u32,
}

/// Makes [`PeerConnection`]s for openraft.
#[derive(Clone, Default)]
pub struct Network {
    channels: PeerChannels,
}

impl Network {
    /// A factory sharing `channels` with the rest of the node.
    pub fn new(channels: PeerChannels) -> Self {
        Network { channels }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: u64, node: &Member) -> PeerConnection {
        PeerConnection {
            target,
            addr: node.peer_addr.clone(),
            channels: self.channels.clone(),
        }
    }
}

/// openraft's view of one peer.
pub struct PeerConnection {
    target: u64,
    addr: String,
    channels: PeerChannels,
}

fn unreachable(e: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(e.to_string()))
}

/// Connection failures ask openraft to back off; other failures may retry at once.
fn status_to_rpc(target: u64, s: tonic::Status) -> RPCError<TypeConfig> {
    let msg = format!("peer {target}: {s}");
    match s.code() {
        // A peer that refuses us (not a member, another cluster, another
        // incarnation) will go on refusing: back off as from a dead one.
        tonic::Code::Unavailable
        | tonic::Code::DeadlineExceeded
        | tonic::Code::Cancelled
        | tonic::Code::PermissionDenied
        | tonic::Code::Unauthenticated => RPCError::Unreachable(Unreachable::from_string(msg)),
        _ => RPCError::Network(NetworkError::from_string(msg)),
    }
}

impl PeerConnection {
    fn client(&self) -> Result<PeerClientOf, RPCError<TypeConfig>> {
        self.channels
            .client_to(self.target, &self.addr)
            .map_err(unreachable)
    }

    fn request<T: serde::Serialize>(
        &self,
        msg: &T,
        option: &RPCOption,
    ) -> Result<tonic::Request<RaftBlob>, RPCError<TypeConfig>> {
        let data = encode(msg).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut req = tonic::Request::new(RaftBlob { data });
        req.set_timeout(option.soft_ttl());
        Ok(req)
    }

    fn reply<T: serde::de::DeserializeOwned>(
        &self,
        r: Result<tonic::Response<RaftBlob>, tonic::Status>,
    ) -> Result<T, RPCError<TypeConfig>> {
        let blob = r.map_err(|s| status_to_rpc(self.target, s))?.into_inner();
        decode(&blob.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let req = self.request(&rpc, &option)?;
        let r = self.client()?.append(req).await;
        self.reply(r)
    }

    /// Pipelined replication over one gRPC stream (`Peer.AppendStream`):
    /// openraft yields the next request as soon as new entries are
    /// submitted, and it goes out without waiting for the result of the one
    /// before, so a follower's `fdatasync` of one batch overlaps the
    /// transfer of the next and its log store group-commits them.
    ///
    /// A stream has no deadline of its own; instead, when results are owed
    /// and none arrives for [`STREAM_STALL`], the stream ends with
    /// `Unreachable` (a partitioned or paused follower), and openraft opens
    /// a new one. (openraft's `soft_ttl` for replication is ¾ of a
    /// heartbeat, 37 ms: one slow `fdatasync` on a busy machine would cut
    /// the stream and resend everything in flight.)
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, AppendResult>, RPCError<TypeConfig>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        let target = self.target;
        let ttl = option.soft_ttl().max(STREAM_STALL);
        Box::pin(async move {
            let mut client = self.client()?;
            let sent = Arc::new(AtomicU64::new(0));
            let counter = sent.clone();
            let requests = input.then(move |rpc| {
                counter.fetch_add(1, Ordering::Relaxed);
                async move {
                    if rpc.entries.is_empty() {
                        // A commit-only append (a new commit index, no
                        // entries) follows every commit. Let this turn's
                        // apply and client replies go first: a follower
                        // learning the commit a few µs later costs nothing,
                        // a client waiting on two more socket writes does.
                        tokio::task::yield_now().await;
                    }
                    // bincode cannot fail on these types; an empty blob
                    // would be refused by the follower and end the stream.
                    RaftBlob {
                        data: encode(&rpc).unwrap_or_default(),
                    }
                }
            });
            let mut request = tonic::Request::new(requests);
            request.set_timeout(Duration::from_secs(24 * 3600));
            let opened = tokio::time::timeout(ttl, client.append_stream(request))
                .await
                .map_err(|_| {
                    unreachable(format!(
                        "peer {target}: opening the append stream timed out"
                    ))
                })?;
            let responses = match opened {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    // openraft backs off by delaying the first request of the
                    // next stream, but a stream whose connection fails never
                    // asks for a request: without this pause a dead follower
                    // had the leader retry every ~0.1 ms, a whole core and
                    // ~8000 log lines a second.
                    if herald_client::never_executed(&s) {
                        tokio::time::sleep(REOPEN_BACKOFF).await;
                    }
                    return Err(status_to_rpc(target, s));
                }
            };
            let results = futures::stream::unfold(
                (responses, sent, 0u64),
                move |(mut responses, sent, received)| async move {
                    let item = loop {
                        match tokio::time::timeout(ttl, responses.next()).await {
                            Ok(item) => break item?,
                            Err(_) if sent.load(Ordering::Relaxed) > received => {
                                break Err(tonic::Status::unavailable(format!(
                                    "no append result for {ttl:?}"
                                )));
                            }
                            // Nothing owed: an idle stream.
                            Err(_) => continue,
                        }
                    };
                    let result = item.map_err(|s| status_to_rpc(target, s)).and_then(|blob| {
                        decode::<StreamAppendResult<TypeConfig>>(&blob.data)
                            .map_err(|e| RPCError::Network(NetworkError::new(&e)))
                    });
                    Some((result, (responses, sent, received + 1)))
                },
            );
            Ok(Box::pin(results) as BoxStream<'s, AppendResult>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let req = self.request(&rpc, &option)?;
        let r = self.client()?.vote(req).await;
        self.reply(r)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let req = self.request(&rpc, &option)?;
        let r = self.client()?.pre_vote(req).await;
        self.reply(r)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        // The checksum of the data travels with the meta: the follower
        // checks what it assembled from the chunks before installing it.
        let checksum = crc32fast::hash(&snapshot.snapshot);
        let meta = encode(&SnapshotHead {
            vote,
            meta: snapshot.meta.clone(),
            crc32: checksum,
        })
        .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let data = snapshot.snapshot;
        let total = data.len();
        let chunks = snapshot_chunks(meta, data);
        let mut client = self
            .channels
            .client_to(self.target, &self.addr)
            .map_err(|e| StreamingError::Unreachable(Unreachable::from_string(e.to_string())))?;
        tracing::info!(target = self.target, bytes = total, "sending snapshot");
        let call = client.install_snapshot(futures::stream::iter(chunks));
        let r = tokio::select! {
            r = call => r,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        let blob = r
            .map_err(|s| match status_to_rpc(self.target, s) {
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                other => StreamingError::Network(NetworkError::from_string(other.to_string())),
            })?
            .into_inner();
        decode(&blob.data).map_err(|e| StreamingError::Network(NetworkError::new(&e)))
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let req = self.request(&req, &option)?;
        let r = self.client()?.transfer_leader(req).await;
        self.reply(r)
    }

    fn backoff(&self) -> Option<Backoff> {
        Some(Backoff::new(std::iter::repeat(Duration::from_millis(100))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_chunks_carry_the_meta_first_and_the_data_in_order() {
        for len in [
            0,
            1,
            SNAPSHOT_CHUNK - 1,
            SNAPSHOT_CHUNK,
            SNAPSHOT_CHUNK + 1,
            3 * SNAPSHOT_CHUNK,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let chunks: Vec<SnapshotChunk> =
                snapshot_chunks(b"meta".to_vec(), data.clone()).collect();
            assert_eq!(chunks[0].meta, b"meta", "len {len}");
            assert!(chunks[0].data.is_empty());
            assert_eq!(chunks.len(), 1 + len.div_ceil(SNAPSHOT_CHUNK), "len {len}");
            let mut joined = Vec::new();
            for c in &chunks[1..] {
                assert!(c.meta.is_empty());
                assert!(!c.data.is_empty() && c.data.len() <= SNAPSHOT_CHUNK);
                joined.extend_from_slice(&c.data);
            }
            assert_eq!(joined, data, "len {len}");
        }
    }
}
