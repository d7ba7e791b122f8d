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

    /// Registers a viewer's own account in a unit (`replace`: sets the
    /// password of an existing one). The node hashes the password with
    /// Argon2id; only the hash is kept.
    pub async fn register_account(
        &self,
        req: proto::RegisterAccountRequest,
    ) -> Result<proto::RegisteredAccount, ClientError> {
        // Setting a password twice is harmless; registering twice is not
        // (the second would answer ALREADY_EXISTS).
        let effect = if req.replace {
            Effect::IdempotentWrite
        } else {
            Effect::Write
        };
        let resp = self
            .call("RegisterAccount", effect, req, |ch, r| async move {
                crate::endpoint::herald(ch.channel)
                    .register_account(r)
                    .await
            })
            .await?;
        Ok(resp.account.unwrap_or_default())
    }

    /// Removes a registered account.
    pub async fn remove_account(&self, unit_id: u64, account: &str) -> Result<(), ClientError> {
        let req = proto::RemoveAccountRequest {
            unit_id,
            account: account.to_owned(),
        };
        self.call("RemoveAccount", Effect::Write, req, |ch, r| async move {
            crate::endpoint::herald(ch.channel).remove_account(r).await
        })
        .await?;
        Ok(())
    }

    /// Every registered account of a unit, by name.
    pub async fn list_accounts(
        &self,
        unit_id: u64,
        consistency: Consistency,
    ) -> Result<Vec<proto::RegisteredAccount>, ClientError> {
        let mut accounts = Vec::new();
        let mut page_token = String::new();
        loop {
            let req = proto::ListAccountsRequest {
                unit_id,
                consistency: consistency.into(),
                page_size: 0,
                page_token,
            };
            let page = self
                .call("ListAccounts", Effect::Read, req, |ch, r| async move {
                    crate::endpoint::herald(ch.channel).list_accounts(r).await
                })
                .await?;
            accounts.extend(page.accounts);
            if page.next_page_token.is_empty() {
                return Ok(accounts);
            }
            page_token = page.next_page_token;
        }
    }

    /// A leased account's data, read by its holder with the lease secret.
    pub async fn get_account_data(
        &self,
        req: proto::GetAccountDataRequest,
    ) -> Result<proto::GetAccountDataResponse, ClientError> {
        self.call("GetAccountData", Effect::Read, req, |ch, r| async move {
            crate::endpoint::herald(ch.channel)
                .get_account_data(r)
                .await
        })
        .await
    }

    /// Tags a content id with the units it shows (replaces an earlier tag).
    pub async fn set_content_units(
        &self,
        req: proto::SetContentUnitsRequest,
    ) -> Result<(), ClientError> {
        self.call(
            "SetContentUnits",
            Effect::IdempotentWrite,
            req,
            |ch, r| async move {
                crate::endpoint::herald(ch.channel)
                    .set_content_units(r)
                    .await
            },
        )
        .await?;
        Ok(())
    }

    /// Removes a content's tag.
    pub async fn remove_content(
        &self,
        platform_id: u64,
        content_id: &str,
    ) -> Result<(), ClientError> {
        let req = proto::RemoveContentRequest {
            platform_id,
            content_id: content_id.to_owned(),
        };
        self.call("RemoveContent", Effect::Write, req, |ch, r| async move {
            crate::endpoint::herald(ch.channel).remove_content(r).await
        })
        .await?;
        Ok(())
    }

    /// The first access request: the units a content shows, each with
    /// whether it admits logins now.
    pub async fn first_access(
        &self,
        req: proto::FirstAccessRequest,
    ) -> Result<proto::FirstAccessResponse, ClientError> {
        self.call("FirstAccess", Effect::Read, req, |ch, r| async move {
            crate::endpoint::herald(ch.channel).first_access(r).await
        })
        .await
    }
}
