//! The peer gRPC service: openraft's RPCs from other nodes, writes forwarded
//! by followers, and ReadIndex for follower reads. Only Herald nodes of the
//! same peer message version talk here (bincode payloads behind a version
//! header, `raft::encode`); another version is refused naming both.

use ::herald_client::proto::peer_server::Peer;
use ::herald_client::proto::{RaftBlob, SnapshotChunk};
use futures::StreamExt;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, StreamAppendError};
use tonic::{Request, Response, Status, Streaming};

use crate::node::{ForwardReply, Herald, NOT_APPLIED};
use crate::raft::network::SnapshotHead;
use crate::raft::{TypeConfig, decode, encode};
use crate::state::Command;

/// Serves [`Peer`] for one node.
pub struct PeerService {
    node: Herald,
}

impl PeerService {
    /// A peer service over `node`.
    pub fn new(node: Herald) -> Self {
        PeerService { node }
    }
}

fn bad(e: std::io::Error) -> Status {
    Status::invalid_argument(format!("undecodable peer message: {e}"))
}

fn blob<T: serde::Serialize>(v: &T) -> Result<Response<RaftBlob>, Status> {
    let data = encode(v).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftBlob { data }))
}

/// Unavailable, marked as certainly not applied.
fn not_applied(msg: impl Into<String>) -> Status {
    let mut s = Status::unavailable(msg);
    s.metadata_mut().insert(
        NOT_APPLIED,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    s
}

/// The reply stream of [`Peer::append_stream`].
pub type AppendResults =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<RaftBlob, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Peer for PeerService {
    type AppendStreamStream = AppendResults;

    /// The follower's end of pipelined replication: openraft's
    /// `stream_append` takes the requests in order as they arrive and yields
    /// each one's result (after its entries are durable) in the same order.
    /// A request that does not decode, or a broken inbound stream, ends the
    /// input; the results of what came before still go out.
    async fn append_stream(
        &self,
        req: Request<Streaming<RaftBlob>>,
    ) -> Result<Response<AppendResults>, Status> {
        let requests = req.into_inner().scan((), |_, item| {
            let rpc = match item {
                Ok(b) => decode::<AppendEntriesRequest<TypeConfig>>(&b.data)
                    .inspect_err(|e| tracing::warn!(error = %e, "undecodable append in a stream"))
                    .ok(),
                Err(_) => None,
            };
            std::future::ready(rpc)
        });
        let node = self.node.clone();
        let results = self
            .node
            .raft()
            .stream_append(requests)
            .map(move |r| match r {
                Ok(result) => {
                    if !matches!(result, Err(StreamAppendError::HigherVote(_))) {
                        // From the current leader (a stale one gets HigherVote).
                        node.leader_contact().touch();
                    }
                    let data = encode(&result).map_err(|e| Status::internal(e.to_string()))?;
                    Ok(RaftBlob { data })
                }
                Err(fatal) => Err(Status::unavailable(fatal.to_string())),
            });
        Ok(Response::new(Box::pin(results)))
    }

    async fn append(&self, req: Request<RaftBlob>) -> Result<Response<RaftBlob>, Status> {
        let rpc = decode(&req.into_inner().data).map_err(bad)?;
        let resp = self
            .node
            .raft()
            .append_entries(rpc)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        if !matches!(resp, AppendEntriesResponse::HigherVote(_)) {
            // From the current leader (a stale one gets HigherVote).
            self.node.leader_contact().touch();
        }
        blob(&resp)
    }

    async fn vote(&self, req: Request<RaftBlob>) -> Result<Response<RaftBlob>, Status> {
        let rpc = decode(&req.into_inner().data).map_err(bad)?;
        let resp = self
            .node
            .raft()
            .vote(rpc)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        blob(&resp)
    }

    async fn pre_vote(&self, req: Request<RaftBlob>) -> Result<Response<RaftBlob>, Status> {
        let rpc = decode(&req.into_inner().data).map_err(bad)?;
        let resp = self
            .node
            .raft()
            .pre_vote(rpc)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        blob(&resp)
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftBlob>, Status> {
        let max = self.node.config().raft.max_snapshot_bytes;
        let mut stream = req.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let SnapshotHead {
            vote,
            meta,
            crc32: expected,
        } = decode(&first.meta).map_err(bad)?;
        let mut data = first.data;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if (data.len() + chunk.data.len()) as u64 > max {
                return Err(Status::resource_exhausted(format!(
                    "snapshot exceeds raft.max_snapshot_bytes = {max}"
                )));
            }
            data.extend_from_slice(&chunk.data);
        }
        let actual = crc32fast::hash(&data);
        if actual != expected {
            // Damaged on the way: the leader sends it again.
            return Err(Status::data_loss(format!(
                "snapshot data checksum {actual:08x} over {} bytes, the leader sent {expected:08x}",
                data.len()
            )));
        }
        tracing::info!(
            bytes = data.len(),
            "receiving snapshot complete, checksum verified, installing"
        );
        let snapshot = crate::raft::typ::Snapshot {
            meta,
            snapshot: data,
        };
        let resp = self
            .node
            .raft()
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        blob(&resp)
    }

    async fn transfer_leader(&self, req: Request<RaftBlob>) -> Result<Response<RaftBlob>, Status> {
        let rpc = decode(&req.into_inner().data).map_err(bad)?;
        let resp = self
            .node
            .raft()
            .handle_transfer_leader(rpc)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        blob(&resp)
    }

    async fn forward(&self, req: Request<RaftBlob>) -> Result<Response<RaftBlob>, Status> {
        let cmd: Command = decode(&req.into_inner().data).map_err(bad)?;
        if let Err(e) = cmd.validate() {
            return blob(&ForwardReply::Applied(Err(e)));
        }
        let reply = self.node.propose_local(std::sync::Arc::new(cmd)).await;
        blob(&reply)
    }

    async fn read_index(&self, _req: Request<RaftBlob>) -> Result<Response<RaftBlob>, Status> {
        match self.node.read_index_local().await {
            Ok(index) => blob(&index),
            Err(e) => Err(not_applied(e.to_string())),
        }
    }

    async fn ping(&self, _req: Request<RaftBlob>) -> Result<Response<RaftBlob>, Status> {
        blob(&self.node.id())
    }

    async fn heartbeat(&self, req: Request<RaftBlob>) -> Result<Response<RaftBlob>, Status> {
        // Handled here whatever this node's view of the ring: never forwarded twice.
        let (uid, client_type): (String, String) = decode(&req.into_inner().data).map_err(bad)?;
        blob(&self.node.heartbeat_here(&uid, &client_type).await)
    }
}
