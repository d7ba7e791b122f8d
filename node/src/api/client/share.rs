//! The media-sharing service (`herald.v1.Share`, P-share): storage servers,
//! friendships, upload admission, commit, delete, access and key checks.
//!
//! Its own tonic service beside `herald.v1.Herald`, served on the same
//! client listener behind the same guard, so the module's calls read in one
//! file. Writes go through [`Herald::propose`] (which forwards to the leader
//! and checks validation and quotas before logging, as for pools); reads
//! linearize when asked. Keys are made here, before proposing: the command
//! carries only their SHA-256, and the answer is the only place a key is
//! ever shown.

use ::herald_client::proto::share_server::Share as ShareApi;
use ::herald_client::proto::*;
use rand::Rng;
use tonic::{Request, Response, Status};

use super::super::convert::linearizable;
use super::super::page;
use super::super::status::state_status;
use super::{invalid, unexpected};
use crate::node::Herald;
use crate::state::limits::MAX_SHARE_KEY_BYTES;
use crate::state::share::{self as sh, KeyHolder, ShareCommand, ShareOutcome, ShareState as St};
use crate::state::{self, Command, SecretHash, StateError};

/// The reservation deadline and access TTL a request that asks for none
/// gets: 10 minutes.
const DEFAULT_TTL_MS: u64 = 10 * 60 * 1000;

/// Serves `herald.v1.Share` for one node.
pub struct ShareService {
    node: Herald,
}

impl ShareService {
    /// A share service over `node`.
    pub fn new(node: Herald) -> Self {
        ShareService { node }
    }

    async fn propose(&self, cmd: ShareCommand) -> Result<ShareOutcome, Status> {
        match self.node.propose(Command::Share(cmd)).await? {
            state::Response::Share(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }

    async fn read_barrier(&self, consistency: i32) -> Result<(), Status> {
        if linearizable(consistency).map_err(|e| state_status(&e))? {
            self.node.linearize().await?;
        }
        Ok(())
    }

    /// Passes a storage heartbeat to the server's owner: its answer, or
    /// `None` if it cannot be reached.
    async fn forward_beat(
        &self,
        owner: u64,
        server_id: &str,
        ttl_ms: u64,
    ) -> Option<Result<state::StorageServer, StateError>> {
        let (members, _) = self.node.members();
        let (member, _) = members.get(&owner)?;
        let mut client =
            crate::peer::PeerClient::new(self.node.peers(), owner, &member.peer_addr).ok()?;
        client
            .storage_beat(server_id, ttl_ms, std::time::Duration::from_secs(2))
            .await
            .ok()
    }
}

/// A fresh key: 128 random bits as 32 hex characters, made here, returned
/// once and only hashed from then on.
fn new_key() -> (String, SecretHash) {
    let key = format!("{:032x}", rand::rng().random::<u128>());
    let hash = SecretHash::of(&key);
    (key, hash)
}

/// Checks a presented key (there, and not oversized) and hashes it.
fn key_hash(field: &str, key: &str) -> Result<SecretHash, Status> {
    if key.is_empty() || key.len() > MAX_SHARE_KEY_BYTES {
        return Err(invalid(StateError::invalid(
            field,
            format!(
                "must be 1..={MAX_SHARE_KEY_BYTES} bytes (the key ShareMedia returned), got {}",
                key.len()
            ),
        )));
    }
    Ok(SecretHash::of(key))
}

fn storage_pb(s: &state::StorageServer) -> StorageServer {
    StorageServer {
        server_id: s.server_id.clone(),
        address: s.address.clone(),
        capacity_bytes: s.capacity_bytes,
        reserved_bytes: s.reserved_bytes,
        committed_bytes: s.committed_bytes,
        shares: s.shares,
        up: s.is_up(),
        heartbeat_ttl_ms: s.heartbeat_ttl_ms,
        up_since_ms: s.up_since_ms,
    }
}

/// A share as the API shows it, with its server's address.
pub fn share_pb(s: &state::MediaShare, address: &str) -> MediaShare {
    MediaShare {
        share_id: s.share_id,
        owner: s.owner.clone(),
        receivers: s.receivers.clone(),
        server_id: s.server_id.clone(),
        address: address.to_string(),
        size_bytes: s.size_bytes,
        state: match s.state {
            St::Reserved => ShareState::Reserved,
            St::Committed => ShareState::Committed,
        } as i32,
        created_ms: s.created_ms,
        deadline_ms: s.deadline_ms,
    }
}

fn storage_of(o: ShareOutcome) -> Result<Response<StorageResponse>, Status> {
    match o {
        ShareOutcome::Storage(s) => Ok(Response::new(StorageResponse {
            server: Some(storage_pb(&s)),
        })),
        other => Err(unexpected(state::Response::Share(other))),
    }
}

#[tonic::async_trait]
impl ShareApi for ShareService {
    async fn register_storage(
        &self,
        req: Request<RegisterStorageRequest>,
    ) -> Result<Response<StorageResponse>, Status> {
        let r = req.into_inner();
        let o = self
            .propose(ShareCommand::RegisterStorage(sh::RegisterStorage {
                server_id: r.server_id,
                address: r.address,
                capacity_bytes: r.capacity_bytes,
            }))
            .await?;
        storage_of(o)
    }

    async fn update_storage(
        &self,
        req: Request<UpdateStorageRequest>,
    ) -> Result<Response<StorageResponse>, Status> {
        let r = req.into_inner();
        let o = self
            .propose(ShareCommand::UpdateStorage(sh::UpdateStorage {
                server_id: r.server_id,
                address: r.address,
                capacity_bytes: r.capacity_bytes,
            }))
            .await?;
        storage_of(o)
    }

    async fn storage_heartbeat(
        &self,
        req: Request<StorageHeartbeatRequest>,
    ) -> Result<Response<StorageResponse>, Status> {
        let r = req.into_inner();
        let h = sh::StorageHealth {
            server_id: r.server_id,
            up: r.up,
            ttl_ms: r.ttl_ms,
            renew: false,
        };
        let health = ShareCommand::StorageHealth(h.clone());
        health.validate().map_err(invalid)?;
        if !(h.up && h.ttl_ms > 0) {
            // An operator's mark (down, or up until marked down): a change,
            // through the log.
            return storage_of(self.propose(health).await?);
        }
        // A heartbeat: kept in the memory of the server's owner on the
        // committed ring, never logged (the owner logs only a change). If
        // the owner cannot be reached from here the server must try
        // another node: keeping the beat here would not stop the owner
        // from expiring it.
        let me = self.node.id();
        let key = crate::cluster::storage_beats::ring_key(&h.server_id);
        let server = match self.node.ownership().owner(&key).filter(|o| *o != me) {
            Some(owner) => match self.forward_beat(owner, &h.server_id, h.ttl_ms).await {
                Some(Ok(s)) => s,
                Some(Err(e)) => return Err(state_status(&e)),
                None => {
                    return Err(crate::node::NodeError::Unavailable(format!(
                        "the owner of storage server {:?}, node {owner}, did not take the \
                         heartbeat from node {me}; try another node",
                        h.server_id
                    ))
                    .into());
                }
            },
            None => self.node.storage_beat_here(&h.server_id, h.ttl_ms).await?,
        };
        Ok(Response::new(StorageResponse {
            server: Some(storage_pb(&server)),
        }))
    }

    async fn remove_storage(
        &self,
        req: Request<RemoveStorageRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let r = req.into_inner();
        self.propose(ShareCommand::RemoveStorage(sh::RemoveStorage {
            server_id: r.server_id,
        }))
        .await?;
        Ok(Response::new(DeleteResponse {}))
    }

    async fn list_storage(
        &self,
        req: Request<ListStorageRequest>,
    ) -> Result<Response<ListStorageResponse>, Status> {
        self.read_barrier(req.into_inner().consistency).await?;
        let m = self.node.store().read();
        let now = self.node.clock().now_ms().max(m.state.now_ms());
        let servers = m.state.share().servers().map(storage_pb);
        Ok(Response::new(ListStorageResponse {
            servers: servers.collect(),
            cluster_time_ms: now,
        }))
    }

    async fn add_friend(
        &self,
        req: Request<FriendshipRequest>,
    ) -> Result<Response<FriendshipResponse>, Status> {
        let r = req.into_inner();
        self.propose(ShareCommand::SetFriendship(sh::SetFriendship {
            user: r.user,
            friend: r.friend,
            friends: true,
        }))
        .await?;
        Ok(Response::new(FriendshipResponse {}))
    }

    async fn remove_friend(
        &self,
        req: Request<FriendshipRequest>,
    ) -> Result<Response<FriendshipResponse>, Status> {
        let r = req.into_inner();
        self.propose(ShareCommand::SetFriendship(sh::SetFriendship {
            user: r.user,
            friend: r.friend,
            friends: false,
        }))
        .await?;
        Ok(Response::new(FriendshipResponse {}))
    }

    async fn list_friends(
        &self,
        req: Request<ListFriendsRequest>,
    ) -> Result<Response<ListFriendsResponse>, Status> {
        let r = req.into_inner();
        state::limits::check_uid("user", &r.user).map_err(invalid)?;
        self.read_barrier(r.consistency).await?;
        let m = self.node.store().read();
        Ok(Response::new(ListFriendsResponse {
            friends: m.state.share().friends_of(&r.user),
        }))
    }

    async fn share_media(
        &self,
        req: Request<ShareMediaRequest>,
    ) -> Result<Response<ShareMediaResponse>, Status> {
        let caller = crate::security::principal_of(&req).name();
        let r = req.into_inner();
        let (owner_key, owner_hash) = new_key();
        let made: Vec<(String, SecretHash)> = r.receivers.iter().map(|_| new_key()).collect();
        let cmd = sh::ShareMedia {
            owner: r.owner,
            receivers: r.receivers.clone(),
            size_bytes: r.size_bytes,
            ttl_ms: if r.ttl_ms == 0 {
                DEFAULT_TTL_MS
            } else {
                r.ttl_ms
            },
            request_id: r.request_id,
            caller,
            owner_key: owner_hash,
            receiver_keys: made.iter().map(|(_, h)| *h).collect(),
        };
        match self.propose(ShareCommand::Share(cmd)).await? {
            ShareOutcome::Share {
                share,
                address,
                replayed,
            } => Ok(Response::new(ShareMediaResponse {
                share: Some(share_pb(&share, &address)),
                owner_key,
                receiver_keys: r
                    .receivers
                    .into_iter()
                    .zip(made)
                    .map(|(user, (key, _))| ReceiverKey { user, key })
                    .collect(),
                replayed,
            })),
            other => Err(unexpected(state::Response::Share(other))),
        }
    }

    async fn commit_share(
        &self,
        req: Request<CommitShareRequest>,
    ) -> Result<Response<CommitShareResponse>, Status> {
        let r = req.into_inner();
        let owner_key = key_hash("owner_key", &r.owner_key)?;
        match self
            .propose(ShareCommand::Commit(sh::CommitShare {
                share_id: r.share_id,
                owner_key,
                size_bytes: r.size_bytes,
            }))
            .await?
        {
            ShareOutcome::Share { share, address, .. } => Ok(Response::new(CommitShareResponse {
                share: Some(share_pb(&share, &address)),
            })),
            other => Err(unexpected(state::Response::Share(other))),
        }
    }

    async fn delete_share(
        &self,
        req: Request<DeleteShareRequest>,
    ) -> Result<Response<DeleteShareResponse>, Status> {
        let r = req.into_inner();
        let owner_key = key_hash("owner_key", &r.owner_key)?;
        self.propose(ShareCommand::Delete(sh::DeleteShare {
            share_id: r.share_id,
            owner_key,
        }))
        .await?;
        Ok(Response::new(DeleteShareResponse {}))
    }

    async fn access_share(
        &self,
        req: Request<AccessShareRequest>,
    ) -> Result<Response<AccessShareResponse>, Status> {
        let r = req.into_inner();
        let (key, hash) = new_key();
        let outcome = self
            .propose(ShareCommand::Grant(sh::GrantAccess {
                share_id: r.share_id,
                user: r.user,
                key: hash,
                ttl_ms: if r.ttl_ms == 0 {
                    DEFAULT_TTL_MS
                } else {
                    r.ttl_ms
                },
            }))
            .await?;
        match outcome {
            ShareOutcome::Access {
                share,
                address,
                expires_ms,
            } => Ok(Response::new(AccessShareResponse {
                share: Some(share_pb(&share, &address)),
                address,
                key,
                expires_ms,
            })),
            other => Err(unexpected(state::Response::Share(other))),
        }
    }

    async fn get_share(
        &self,
        req: Request<GetShareRequest>,
    ) -> Result<Response<GetShareResponse>, Status> {
        let r = req.into_inner();
        self.read_barrier(r.consistency).await?;
        let m = self.node.store().read();
        let share = m.state.share();
        let s = share
            .get(r.share_id)
            .ok_or_else(|| invalid(StateError::not_found(format!("share {}", r.share_id))))?;
        let address = share
            .storage(&s.server_id)
            .map(|v| v.address.as_str())
            .unwrap_or("");
        Ok(Response::new(GetShareResponse {
            share: Some(share_pb(s, address)),
        }))
    }

    async fn list_shares(
        &self,
        req: Request<ListSharesRequest>,
    ) -> Result<Response<ListSharesResponse>, Status> {
        let r = req.into_inner();
        if !r.owner.is_empty() {
            state::limits::check_uid("owner", &r.owner).map_err(invalid)?;
        }
        self.read_barrier(r.consistency).await?;
        let after = page::after_id(&r.page_token)?;
        let max = page::size(r.page_size, page::DEFAULT_PAGE);
        let m = self.node.store().read();
        let share = m.state.share();
        // One more than a page, to know whether there is a next one.
        let rest = share.list(&r.owner, after, max + 1).into_iter().map(|s| {
            let address = share
                .storage(&s.server_id)
                .map(|v| v.address.as_str())
                .unwrap_or("");
            share_pb(s, address)
        });
        let (shares, more) = page::take(rest, max, page::REPLY_BUDGET_BYTES);
        let next_page_token = match shares.last() {
            Some(last) if more => last.share_id.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(ListSharesResponse {
            shares,
            next_page_token,
        }))
    }

    async fn check_share_key(
        &self,
        req: Request<CheckShareKeyRequest>,
    ) -> Result<Response<CheckShareKeyResponse>, Status> {
        let r = req.into_inner();
        let key = key_hash("key", &r.key)?;
        self.node.linearize().await?;
        let m = self.node.store().read();
        // Never judge a grant by a time earlier than the state has seen.
        let now = self.node.clock().now_ms().max(m.state.now_ms());
        let holder = m
            .state
            .share()
            .check_key(r.share_id, &key, now)
            .map_err(invalid)?;
        let (user, kind) = match holder {
            KeyHolder::Owner(u) => (u, "owner"),
            KeyHolder::Receiver(u) => (u, "receiver"),
            KeyHolder::Access(u) => (u, "access"),
        };
        Ok(Response::new(CheckShareKeyResponse {
            user,
            kind: kind.into(),
        }))
    }
}
