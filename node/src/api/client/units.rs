//! Unit calls beyond the pools: registered accounts (their passwords hashed
//! and checked here with Argon2id, off the async threads and outside the
//! state lock), the content -> units tags and the first access request, and
//! the leased account's data read back by its holder.
//!
//! A KDF is slow on purpose, so a node runs at most one per core at once
//! ([`KDF_SLOTS`]) and lets at most [`KDF_MAX_WAITING`] more wait; beyond
//! that a call is refused `RESOURCE_EXHAUSTED`/`OVERLOADED` at once, so a
//! flood of logins cannot queue without bound or starve the node.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use ::herald_client::proto::*;
use rand::Rng;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use super::super::convert as cv;
use super::super::page;
use super::super::status::state_status;
use super::{HeraldService, invalid, unexpected};
use crate::state::{self, Command, Reason, StateError};

/// KDF computations at once on this node: one per core.
static KDF_SLOTS: LazyLock<Semaphore> =
    LazyLock::new(|| Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())));
/// Calls waiting for a KDF slot.
static KDF_WAITING: AtomicUsize = AtomicUsize::new(0);
/// Calls that may wait for a KDF slot before more are refused.
pub const KDF_MAX_WAITING: usize = 64;

/// Runs `f` (a KDF) on a blocking thread once a slot is free; refused
/// `OVERLOADED` when too many calls already wait.
async fn with_kdf<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    if KDF_WAITING.fetch_add(1, Ordering::AcqRel) >= KDF_MAX_WAITING {
        KDF_WAITING.fetch_sub(1, Ordering::AcqRel);
        return Err(state_status(&StateError::exhausted(
            Reason::Overloaded,
            format!(
                "{KDF_MAX_WAITING} password checks are already waiting on this node; retry later"
            ),
        )));
    }
    let permit = KDF_SLOTS.acquire().await;
    KDF_WAITING.fetch_sub(1, Ordering::AcqRel);
    let _permit = permit.map_err(|_| Status::unavailable("the node is shutting down"))?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("password hashing failed: {e}")))
}

impl HeraldService {
    pub(super) async fn register_account(
        &self,
        req: Request<RegisterAccountRequest>,
    ) -> Result<Response<RegisterAccountResponse>, Status> {
        let r = req.into_inner();
        state::check_password(&r.password).map_err(invalid)?;
        let salt: [u8; 16] = rand::rng().random();
        let password = r.password;
        let hash = with_kdf(move || state::KdfHash::new(salt, &password)).await?;
        let cmd = Command::RegisterAccount(state::RegisterAccount {
            unit_id: r.unit_id,
            account: r.account.clone(),
            password: hash,
            replace: r.replace,
        });
        match self.propose(cmd).await? {
            state::Response::Done => {}
            other => return Err(unexpected(other)),
        }
        // A forwarding follower may not have applied the entry yet: read
        // the account once this node has caught up with the commit.
        self.node().linearize().await?;
        let m = self.node().store().read();
        let account = m
            .state
            .registered_accounts(r.unit_id, "")
            .find(|a| a.account == r.account)
            .map(cv::registered_pb);
        Ok(Response::new(RegisterAccountResponse { account }))
    }

    pub(super) async fn remove_account(
        &self,
        req: Request<RemoveAccountRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let r = req.into_inner();
        let cmd = Command::RemoveAccount(state::RemoveAccount {
            unit_id: r.unit_id,
            account: r.account,
        });
        self.propose(cmd).await?;
        Ok(Response::new(DeleteResponse {}))
    }

    pub(super) async fn list_accounts(
        &self,
        req: Request<ListAccountsRequest>,
    ) -> Result<Response<ListAccountsResponse>, Status> {
        let r = req.into_inner();
        self.read_barrier(r.consistency).await?;
        let after = if r.page_token.is_empty() {
            String::new()
        } else {
            hex::decode(&r.page_token)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    invalid(StateError::invalid(
                        "page_token",
                        "not a token from this list's previous page",
                    ))
                })?
        };
        let m = self.node().store().read();
        if m.state.unit(r.unit_id).is_none() {
            return Err(invalid(StateError::not_found(format!(
                "unit {}",
                r.unit_id
            ))));
        }
        let rest = m
            .state
            .registered_accounts(r.unit_id, &after)
            .map(cv::registered_pb);
        let (accounts, more) = page::take(
            rest,
            page::size(r.page_size, page::DEFAULT_PAGE),
            page::REPLY_BUDGET_BYTES,
        );
        let next_page_token = match accounts.last() {
            Some(last) if more => hex::encode(&last.account),
            _ => String::new(),
        };
        Ok(Response::new(ListAccountsResponse {
            accounts,
            next_page_token,
        }))
    }

    /// A login with a registered account, read after the caller's barrier:
    /// the state judges the unit (period, policy) and finds the hash; the
    /// password is checked here, outside the state lock.
    pub(super) async fn registered_login(
        &self,
        r: &AccountLoginRequest,
        now_ms: u64,
    ) -> Result<AccountLoginResponse, Status> {
        let (found, service) = {
            let m = self.node().store().read();
            (
                m.state.registered_login(r.unit_id, &r.account, now_ms),
                m.state.unit(r.unit_id).map(cv::service_pb),
            )
        };
        let refused = |reason: &str| AccountLoginResponse {
            ok: false,
            reason: reason.to_owned(),
            service: service.clone(),
            registered: true,
            ..Default::default()
        };
        let hash = match found {
            state::RegisteredLogin::Check(hash) => hash,
            state::RegisteredLogin::Refused(why) => return Ok(refused(&why)),
        };
        if r.password.len() > state::accounts::MAX_PASSWORD_BYTES {
            return Ok(refused("wrong password"));
        }
        let password = r.password.clone();
        if !with_kdf(move || hash.matches(&password)).await? {
            return Ok(refused("wrong password"));
        }
        Ok(AccountLoginResponse {
            ok: true,
            service,
            registered: true,
            ..Default::default()
        })
    }

    pub(super) async fn get_account_data(
        &self,
        req: Request<GetAccountDataRequest>,
    ) -> Result<Response<GetAccountDataResponse>, Status> {
        let r = req.into_inner();
        let secret = state::lease_secret_hash(&r.lease_secret).map_err(invalid)?;
        self.read_barrier(r.consistency).await?;
        let m = self.node().store().read();
        // Never judge a lease by a time earlier than the state has seen.
        let now = self.node().clock().now_ms().max(m.state.now_ms());
        let data = m
            .state
            .account_data(r.lease_id, &r.user, &secret, now)
            .map_err(invalid)?;
        Ok(Response::new(GetAccountDataResponse {
            data: data.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }))
    }

    pub(super) async fn set_content_units(
        &self,
        req: Request<SetContentUnitsRequest>,
    ) -> Result<Response<SetContentUnitsResponse>, Status> {
        let cmd = Command::SetContentUnits(cv::set_content(req.into_inner()).map_err(invalid)?);
        match self.propose(cmd).await? {
            state::Response::Done => Ok(Response::new(SetContentUnitsResponse {})),
            other => Err(unexpected(other)),
        }
    }

    pub(super) async fn remove_content(
        &self,
        req: Request<RemoveContentRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let r = req.into_inner();
        let cmd = Command::RemoveContent(state::RemoveContent {
            platform_id: r.platform_id,
            content_id: r.content_id,
        });
        self.propose(cmd).await?;
        Ok(Response::new(DeleteResponse {}))
    }

    pub(in crate::api) async fn first_access(
        &self,
        req: Request<FirstAccessRequest>,
    ) -> Result<Response<FirstAccessResponse>, Status> {
        let r = req.into_inner();
        self.read_barrier(r.consistency).await?;
        let m = self.node().store().read();
        let now = self.node().clock().now_ms().max(m.state.now_ms());
        let view = m
            .state
            .first_access(r.platform_id, &r.content_id, now)
            .map_err(invalid)?;
        Ok(Response::new(cv::content_view_pb(&view)))
    }
}
