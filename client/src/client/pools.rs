//! Platform, pool and lease calls (P-iptv): create and delete platforms and
//! pools, lease, renew, release, account data, paged lists, account login.

use super::*;

impl Client {
    /// Creates an interactive-application platform and its units (P-iptv);
    /// the cluster assigns the ids. Not idempotent.
    pub async fn create_platform(
        &self,
        req: proto::CreatePlatformRequest,
    ) -> Result<proto::Platform, ClientError> {
        let resp = self
            .call("CreatePlatform", Effect::Write, req, |ch, r| async move {
                crate::endpoint::herald(ch.channel).create_platform(r).await
            })
            .await?;
        required(resp.platform, "CreatePlatform", "platform")
    }

    /// Deletes a pool and its accounts; `force` ends its active leases
    /// first (without it a pool with leases is refused).
    pub async fn delete_pool(&self, pool_id: u64, force: bool) -> Result<(), ClientError> {
        let req = proto::DeletePoolRequest { pool_id, force };
        self.call("DeletePool", Effect::Write, req, |ch, r| async move {
            crate::endpoint::herald(ch.channel).delete_pool(r).await
        })
        .await?;
        Ok(())
    }

    /// Deletes a platform and its units (refused while they have pools).
    pub async fn delete_platform(&self, platform_id: u64) -> Result<(), ClientError> {
        let req = proto::DeletePlatformRequest { platform_id };
        self.call("DeletePlatform", Effect::Write, req, |ch, r| async move {
            crate::endpoint::herald(ch.channel).delete_platform(r).await
        })
        .await?;
        Ok(())
    }

    /// Creates a pool of temporary accounts for a unit. Not idempotent.
    pub async fn create_pool(
        &self,
        req: proto::CreatePoolRequest,
    ) -> Result<proto::Pool, ClientError> {
        let resp = self
            .call("CreatePool", Effect::Write, req, |ch, r| async move {
                crate::endpoint::herald(ch.channel).create_pool(r).await
            })
            .await?;
        required(resp.pool, "CreatePool", "pool")
    }

    /// Leases a temporary account. The answer holds the account's password
    /// and the `lease_secret` that renew, release, account data and
    /// holder-only logins require; both are shown only here, so keep them.
    ///
    /// With a `request_id` (see [`new_request_id`](crate::new_request_id))
    /// the call is idempotent and retried after any failure; a replay returns
    /// the same lease with `replayed` set and a fresh password and secret,
    /// while those of earlier answers keep working (a lease keeps at most 4
    /// answers; one more replay is [`ClientError::ResourceExhausted`]).
    /// Without one a lost answer is [`ClientError::Unknown`].
    pub async fn lease_and_login(
        &self,
        req: proto::LeaseRequest,
    ) -> Result<proto::LeaseAndLoginResponse, ClientError> {
        let effect = if req.request_id.is_empty() {
            Effect::Write
        } else {
            Effect::IdempotentWrite
        };
        let req = proto::LeaseAndLoginRequest { lease: Some(req) };
        self.call("LeaseAndLogin", effect, req, |ch, r| async move {
            crate::endpoint::herald(ch.channel).lease_and_login(r).await
        })
        .await
    }

    /// Leases an account of a pool: the lease, its password and lease
    /// secret (both shown only here), and the pool's unit's QoS.
    pub async fn lease_account(
        &self,
        req: proto::LeaseRequest,
    ) -> Result<proto::LeaseResponse, ClientError> {
        let effect = if req.request_id.is_empty() {
            Effect::Write
        } else {
            Effect::IdempotentWrite
        };
        self.call("LeaseAccount", effect, req, |ch, r| async move {
            crate::endpoint::herald(ch.channel).lease_account(r).await
        })
        .await
    }

    /// Extends a lease held by `user`; `req.lease_secret` must be one
    /// [`lease_account`](Client::lease_account) returned for it. Not
    /// idempotent.
    pub async fn renew_lease(&self, req: proto::RenewRequest) -> Result<proto::Lease, ClientError> {
        let resp = self
            .call("RenewLease", Effect::Write, req, |ch, r| async move {
                crate::endpoint::herald(ch.channel).renew_lease(r).await
            })
            .await?;
        required(resp.lease, "RenewLease", "lease")
    }

    /// Gives a leased account back (with its `lease_secret`, as for
    /// [`renew_lease`](Client::renew_lease)); its data is cleared and its
    /// passwords and secrets stop working. Not idempotent.
    pub async fn release_lease(&self, req: proto::ReleaseRequest) -> Result<(), ClientError> {
        self.call("ReleaseLease", Effect::Write, req, |ch, r| async move {
            crate::endpoint::herald(ch.channel).release_lease(r).await
        })
        .await?;
        Ok(())
    }

    /// Stores data (chat history, posts) with a leased account for the
    /// length of the lease (with its `lease_secret`, as for
    /// [`renew_lease`](Client::renew_lease)).
    pub async fn put_account_data(
        &self,
        req: proto::PutAccountDataRequest,
    ) -> Result<(), ClientError> {
        self.call("PutAccountData", Effect::Write, req, |ch, r| async move {
            crate::endpoint::herald(ch.channel)
                .put_account_data(r)
                .await
        })
        .await?;
        Ok(())
    }

    /// The pools of a unit (0 = every pool) and the platforms.
    pub async fn list_pools(
        &self,
        unit_id: u64,
        consistency: Consistency,
    ) -> Result<proto::ListPoolsResponse, ClientError> {
        let mut all = proto::ListPoolsResponse::default();
        let mut page_token = String::new();
        loop {
            let req = proto::ListPoolsRequest {
                unit_id,
                consistency: consistency.into(),
                page_size: 0,
                page_token,
            };
            let page = self
                .call("ListPools", Effect::Read, req, |ch, r| async move {
                    crate::endpoint::herald(ch.channel).list_pools(r).await
                })
                .await?;
            all.pools.extend(page.pools);
            all.platforms.extend(page.platforms);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            page_token = page.next_page_token;
        }
    }

    /// The live leases of a pool: holders, accounts and times, never request
    /// ids or secrets.
    pub async fn list_leases(
        &self,
        pool_id: u64,
        consistency: Consistency,
    ) -> Result<Vec<proto::Lease>, ClientError> {
        let mut leases = Vec::new();
        let mut page_token = String::new();
        loop {
            let req = proto::ListLeasesRequest {
                pool_id,
                consistency: consistency.into(),
                page_size: 0,
                page_token,
            };
            let page = self
                .call("ListLeases", Effect::Read, req, |ch, r| async move {
                    crate::endpoint::herald(ch.channel).list_leases(r).await
                })
                .await?;
            leases.extend(page.leases);
            if page.next_page_token.is_empty() {
                return Ok(leases);
            }
            page_token = page.next_page_token;
        }
    }

    /// Checks an account and password against a unit's access policy
    /// (holder-only units also want the `lease_secret`). A refusal is an
    /// answer (`ok` false, with a `reason`), not an error.
    pub async fn account_login(
        &self,
        req: proto::AccountLoginRequest,
    ) -> Result<proto::AccountLoginResponse, ClientError> {
        self.call("AccountLogin", Effect::Read, req, |ch, r| async move {
            crate::endpoint::herald(ch.channel).account_login(r).await
        })
        .await
    }
}
