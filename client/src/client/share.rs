//! Media-sharing calls (P-share, the `Share` service): storage servers,
//! friendships, upload admission, commit, delete, access and key checks.

use super::*;

/// The stub of the `Share` service over one connection.
fn stub(ch: Conn) -> crate::proto::share_client::ShareClient<crate::endpoint::Transport> {
    crate::endpoint::share(ch.channel)
}

impl Client {
    /// Registers a storage server (admin). It takes uploads once it sends
    /// a heartbeat or is marked up. Not idempotent.
    pub async fn register_storage(
        &self,
        req: proto::RegisterStorageRequest,
    ) -> Result<proto::StorageServer, ClientError> {
        let resp = self
            .call("RegisterStorage", Effect::Write, req, |ch, r| async move {
                stub(ch).register_storage(r).await
            })
            .await?;
        required(resp.server, "RegisterStorage", "server")
    }

    /// Changes a storage server's address or capacity (admin).
    pub async fn update_storage(
        &self,
        req: proto::UpdateStorageRequest,
    ) -> Result<proto::StorageServer, ClientError> {
        let resp = self
            .call(
                "UpdateStorage",
                Effect::IdempotentWrite,
                req,
                |ch, r| async move { stub(ch).update_storage(r).await },
            )
            .await?;
        required(resp.server, "UpdateStorage", "server")
    }

    /// A storage server's heartbeat (`up` with a TTL), or a mark up or
    /// down. Idempotent. A heartbeat goes straight to the server's owner
    /// node (which keeps it in memory, off the log) when the client routes
    /// by owner; a mark goes to the leader.
    pub async fn storage_heartbeat(
        &self,
        req: proto::StorageHeartbeatRequest,
    ) -> Result<proto::StorageServer, ClientError> {
        let rpc = |ch, r| async move { stub(ch).storage_heartbeat(r).await };
        let resp = if req.up && req.ttl_ms > 0 {
            let key = crate::ring::storage_key(&req.server_id);
            self.routed(&key, "StorageHeartbeat", Effect::IdempotentWrite, req, rpc)
                .await?
        } else {
            self.call("StorageHeartbeat", Effect::IdempotentWrite, req, rpc)
                .await?
        };
        required(resp.server, "StorageHeartbeat", "server")
    }

    /// Removes a storage server (admin; refused while it holds shares).
    pub async fn remove_storage(&self, server_id: &str) -> Result<(), ClientError> {
        let req = proto::RemoveStorageRequest {
            server_id: server_id.to_string(),
        };
        self.call("RemoveStorage", Effect::Write, req, |ch, r| async move {
            stub(ch).remove_storage(r).await
        })
        .await?;
        Ok(())
    }

    /// Every storage server, with the cluster time the `up` flags are
    /// judged at.
    pub async fn list_storage(
        &self,
        consistency: Consistency,
    ) -> Result<proto::ListStorageResponse, ClientError> {
        let req = proto::ListStorageRequest {
            consistency: consistency.into(),
        };
        self.call("ListStorage", Effect::Read, req, |ch, r| async move {
            stub(ch).list_storage(r).await
        })
        .await
    }

    /// Makes two users friends (both ways), or ends it (`friends` false).
    /// Idempotent.
    pub async fn set_friendship(
        &self,
        user: &str,
        friend: &str,
        friends: bool,
    ) -> Result<(), ClientError> {
        let req = proto::FriendshipRequest {
            user: user.to_string(),
            friend: friend.to_string(),
        };
        if friends {
            self.call(
                "AddFriend",
                Effect::IdempotentWrite,
                req,
                |ch, r| async move { stub(ch).add_friend(r).await },
            )
            .await?;
        } else {
            self.call(
                "RemoveFriend",
                Effect::IdempotentWrite,
                req,
                |ch, r| async move { stub(ch).remove_friend(r).await },
            )
            .await?;
        }
        Ok(())
    }

    /// A user's friends.
    pub async fn list_friends(
        &self,
        user: &str,
        consistency: Consistency,
    ) -> Result<Vec<String>, ClientError> {
        let req = proto::ListFriendsRequest {
            user: user.to_string(),
            consistency: consistency.into(),
        };
        let resp = self
            .call("ListFriends", Effect::Read, req, |ch, r| async move {
                stub(ch).list_friends(r).await
            })
            .await?;
        Ok(resp.friends)
    }

    /// Asks to share a media item: the upload parameters (server, keys
    /// shown only here, deadline) or why it is refused (`STORAGE_DOWN`,
    /// `STORAGE_FULL`, `NOT_FRIEND`). With a `request_id` the call is
    /// idempotent and retried after any failure: a replay returns the same
    /// share with fresh keys, the earlier ones still working.
    pub async fn share_media(
        &self,
        req: proto::ShareMediaRequest,
    ) -> Result<proto::ShareMediaResponse, ClientError> {
        let effect = if req.request_id.is_empty() {
            Effect::Write
        } else {
            Effect::IdempotentWrite
        };
        self.call("ShareMedia", effect, req, |ch, r| async move {
            stub(ch).share_media(r).await
        })
        .await
    }

    /// Commits an uploaded share's actual size (with the owner key).
    /// Idempotent for the same size.
    pub async fn commit_share(
        &self,
        req: proto::CommitShareRequest,
    ) -> Result<proto::MediaShare, ClientError> {
        let resp = self
            .call(
                "CommitShare",
                Effect::IdempotentWrite,
                req,
                |ch, r| async move { stub(ch).commit_share(r).await },
            )
            .await?;
        required(resp.share, "CommitShare", "share")
    }

    /// Deletes a share and frees its bytes (with the owner key).
    pub async fn delete_share(&self, share_id: u64, owner_key: &str) -> Result<(), ClientError> {
        let req = proto::DeleteShareRequest {
            share_id,
            owner_key: owner_key.to_string(),
        };
        self.call("DeleteShare", Effect::Write, req, |ch, r| async move {
            stub(ch).delete_share(r).await
        })
        .await?;
        Ok(())
    }

    /// Access parameters for a committed share, for its owner or a friend
    /// of the owner (anyone else: `NOT_FRIEND`). Each call issues a new
    /// key, replacing the user's earlier one.
    pub async fn access_share(
        &self,
        req: proto::AccessShareRequest,
    ) -> Result<proto::AccessShareResponse, ClientError> {
        self.call(
            "AccessShare",
            Effect::IdempotentWrite,
            req,
            |ch, r| async move { stub(ch).access_share(r).await },
        )
        .await
    }

    /// One share.
    pub async fn get_share(
        &self,
        share_id: u64,
        consistency: Consistency,
    ) -> Result<proto::MediaShare, ClientError> {
        let req = proto::GetShareRequest {
            share_id,
            consistency: consistency.into(),
        };
        let resp = self
            .call("GetShare", Effect::Read, req, |ch, r| async move {
                stub(ch).get_share(r).await
            })
            .await?;
        required(resp.share, "GetShare", "share")
    }

    /// Every share of `owner` ("" = every owner), all pages.
    pub async fn list_shares(
        &self,
        owner: &str,
        consistency: Consistency,
    ) -> Result<Vec<proto::MediaShare>, ClientError> {
        let mut all = Vec::new();
        let mut page_token = String::new();
        loop {
            let req = proto::ListSharesRequest {
                owner: owner.to_string(),
                page_size: 0,
                page_token,
                consistency: consistency.into(),
            };
            let page = self
                .call("ListShares", Effect::Read, req, |ch, r| async move {
                    stub(ch).list_shares(r).await
                })
                .await?;
            all.extend(page.shares);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            page_token = page.next_page_token;
        }
    }

    /// What a key a client presents opens (a storage server asks):
    /// `(user, kind)`, kind being `owner`, `receiver` or `access`.
    pub async fn check_share_key(
        &self,
        share_id: u64,
        key: &str,
    ) -> Result<(String, String), ClientError> {
        let req = proto::CheckShareKeyRequest {
            share_id,
            key: key.to_string(),
        };
        let resp = self
            .call("CheckShareKey", Effect::Read, req, |ch, r| async move {
                stub(ch).check_share_key(r).await
            })
            .await?;
        Ok((resp.user, resp.kind))
    }
}
