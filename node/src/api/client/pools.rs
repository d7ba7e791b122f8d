//! Account pool calls: platforms and pools, leases (with the password and
//! lease secret made here, before the command is proposed), account data,
//! the paged pool and lease listings, and account logins.

use ::herald_client::proto::*;
use std::time::Instant;

use rand::Rng;
use tonic::{Request, Response, Status};

use super::super::convert as cv;
use super::super::page;
use super::{HeraldService, invalid, unexpected};
use crate::state::{self, Command};

/// The authenticated principal that sent `req` (the guard put it in the
/// request), recorded with a lease so only it may replay the lease request.
/// Empty for an anonymous caller (auth off).
fn caller_of<T>(req: &tonic::Request<T>) -> String {
    crate::security::principal_of(req).name()
}

/// A fresh lease secret: 128 random bits as 32 hex characters, made here,
/// returned once and only hashed from then on. It proves the caller holds
/// the lease (renew, release, account data, holder-only logins).
fn new_lease_secret() -> (String, state::SecretHash) {
    let secret = format!("{:032x}", rand::rng().random::<u128>());
    let hash = state::SecretHash::of(&secret);
    (secret, hash)
}

/// A fresh lease password: 16 characters from an unambiguous alphabet
/// (about 80 bits), made here, never logged and never stored in plain text.
fn new_password() -> (String, state::PasswordHash) {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rng();
    let password: String = (0..16)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    let salt: [u8; 16] = rng.random();
    let hash = state::PasswordHash::new(salt, &password);
    (password, hash)
}

impl HeraldService {
    pub(super) async fn create_platform(
        &self,
        req: Request<CreatePlatformRequest>,
    ) -> Result<Response<CreatePlatformResponse>, Status> {
        let cmd = Command::CreatePlatform(cv::create_platform(req.into_inner()).map_err(invalid)?);
        match self.propose(cmd).await? {
            state::Response::Platform(p) => Ok(Response::new(CreatePlatformResponse {
                platform: Some(cv::platform_pb(&p)),
            })),
            other => Err(unexpected(other)),
        }
    }

    pub(super) async fn delete_platform(
        &self,
        req: Request<DeletePlatformRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let r = req.into_inner();
        let cmd = Command::DeletePlatform(state::DeletePlatform {
            platform_id: r.platform_id,
        });
        self.propose(cmd).await?;
        Ok(Response::new(DeleteResponse {}))
    }

    pub(super) async fn create_pool(
        &self,
        req: Request<CreatePoolRequest>,
    ) -> Result<Response<CreatePoolResponse>, Status> {
        let cmd = Command::CreatePool(cv::create_pool(req.into_inner()));
        match self.propose(cmd).await? {
            state::Response::Pool(p) => Ok(Response::new(CreatePoolResponse {
                pool: Some(cv::pool_pb(&p)),
            })),
            other => Err(unexpected(other)),
        }
    }

    pub(super) async fn delete_pool(
        &self,
        req: Request<DeletePoolRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let r = req.into_inner();
        let cmd = Command::DeletePool(state::DeletePool {
            pool_id: r.pool_id,
            force: r.force,
        });
        self.propose(cmd).await?;
        Ok(Response::new(DeleteResponse {}))
    }

    pub(in crate::api) async fn lease_account(
        &self,
        req: Request<LeaseRequest>,
    ) -> Result<Response<LeaseResponse>, Status> {
        let started = Instant::now();
        let answer = self.lease_account_inner(req).await?;
        if let Some(service) = &answer.get_ref().service {
            self.unit_took(service.unit_id, started);
        }
        Ok(answer)
    }

    /// Records one answer to a unit's viewer in the unit's response time.
    fn unit_took(&self, unit_id: u64, started: Instant) {
        self.node
            .metrics()
            .pools
            .observe_unit_response(unit_id, started.elapsed());
    }

    async fn lease_account_inner(
        &self,
        req: Request<LeaseRequest>,
    ) -> Result<Response<LeaseResponse>, Status> {
        let caller = caller_of(&req);
        let (password, password_hash) = new_password();
        let (lease_secret, secret_hash) = new_lease_secret();
        let r = req.into_inner();
        let request_id = r.request_id.clone();
        let made = cv::NewCredentials {
            password: password_hash,
            lease_secret: secret_hash,
        };
        let cmd = Command::Lease(cv::lease(r, caller, made));
        match self.propose(cmd).await? {
            state::Response::Lease { lease, replayed } => {
                let service = {
                    let m = self.node.store().read();
                    m.state.unit_of_pool(lease.pool_id).map(cv::service_pb)
                };
                // The requester may see its own request id; listings never do.
                let mut lease = cv::lease_pb(&lease);
                lease.request_id = request_id;
                Ok(Response::new(LeaseResponse {
                    lease: Some(lease),
                    password,
                    replayed,
                    lease_secret,
                    service,
                }))
            }
            other => Err(unexpected(other)),
        }
    }

    pub(super) async fn renew_lease(
        &self,
        req: Request<RenewRequest>,
    ) -> Result<Response<RenewResponse>, Status> {
        let cmd = Command::Renew(cv::renew(req.into_inner()).map_err(invalid)?);
        match self.propose(cmd).await? {
            state::Response::Lease { lease, .. } => Ok(Response::new(RenewResponse {
                lease: Some(cv::lease_pb(&lease)),
            })),
            other => Err(unexpected(other)),
        }
    }

    pub(super) async fn release_lease(
        &self,
        req: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        let cmd = Command::Release(cv::release(req.into_inner()).map_err(invalid)?);
        match self.propose(cmd).await? {
            state::Response::Done => Ok(Response::new(ReleaseResponse {})),
            other => Err(unexpected(other)),
        }
    }

    pub(super) async fn put_account_data(
        &self,
        req: Request<PutAccountDataRequest>,
    ) -> Result<Response<PutAccountDataResponse>, Status> {
        let cmd = Command::PutAccountData(cv::put_data(req.into_inner()).map_err(invalid)?);
        match self.propose(cmd).await? {
            state::Response::Done => Ok(Response::new(PutAccountDataResponse {})),
            other => Err(unexpected(other)),
        }
    }

    pub(super) async fn list_pools(
        &self,
        req: Request<ListPoolsRequest>,
    ) -> Result<Response<ListPoolsResponse>, Status> {
        let r = req.into_inner();
        self.read_barrier(r.consistency).await?;
        let m = self.node.store().read();
        let unit = (r.unit_id != 0).then_some(r.unit_id);
        let after = page::after_id(&r.page_token)?;
        let mut pools = m.state.pools(unit);
        pools.sort_by_key(|p| p.pool_id);
        let rest = pools.iter().filter(|p| p.pool_id > after).map(cv::pool_pb);
        // The platforms go with the first page only.
        let platforms: Vec<Platform> = if r.page_token.is_empty() {
            m.state
                .platforms()
                .into_iter()
                .map(cv::platform_pb)
                .collect()
        } else {
            Vec::new()
        };
        let used: usize = platforms.iter().map(page::field_len).sum();
        let (pools, more) = page::take(
            rest,
            page::size(r.page_size, page::DEFAULT_PAGE),
            page::REPLY_BUDGET_BYTES.saturating_sub(used),
        );
        let next_page_token = match pools.last() {
            Some(last) if more => last.pool_id.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(ListPoolsResponse {
            pools,
            platforms,
            next_page_token,
        }))
    }

    pub(super) async fn list_leases(
        &self,
        req: Request<ListLeasesRequest>,
    ) -> Result<Response<ListLeasesResponse>, Status> {
        let r = req.into_inner();
        self.read_barrier(r.consistency).await?;
        let m = self.node.store().read();
        // By lease id (the state's order).
        let leases = m.state.leases(r.pool_id).map_err(invalid)?;
        let after = page::after_id(&r.page_token)?;
        let rest = leases
            .iter()
            .filter(|l| l.lease_id > after)
            .map(cv::lease_pb);
        let (leases, more) = page::take(
            rest,
            page::size(r.page_size, page::DEFAULT_PAGE),
            page::REPLY_BUDGET_BYTES,
        );
        let next_page_token = match leases.last() {
            Some(last) if more => last.lease_id.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(ListLeasesResponse {
            leases,
            next_page_token,
        }))
    }

    pub(in crate::api) async fn account_login(
        &self,
        req: Request<AccountLoginRequest>,
    ) -> Result<Response<AccountLoginResponse>, Status> {
        let started = Instant::now();
        let r = req.into_inner();
        let secret = cv::login_secret(&r).map_err(invalid)?;
        self.node.linearize().await?;
        let registered = {
            let m = self.node.store().read();
            m.state
                .is_registered(r.unit_id, &r.account)
                .then(|| self.node.clock().now_ms().max(m.state.now_ms()))
        };
        let answer = match registered {
            Some(now) => self.registered_login(&r, now).await?,
            None => self.check_login(&r, secret.as_ref(), Judge::NodeClock),
        };
        if answer.service.is_some() {
            self.unit_took(r.unit_id, started);
        }
        Ok(Response::new(answer))
    }

    /// Checks a login against the local state (linearized by the caller),
    /// at cluster time now.
    fn check_login(
        &self,
        r: &AccountLoginRequest,
        secret: Option<&state::SecretHash>,
        judge: Judge,
    ) -> AccountLoginResponse {
        let m = self.node.store().read();
        let now = match judge {
            // Never judge a lease by a time earlier than the state has seen.
            Judge::NodeClock => self.node.clock().now_ms().max(m.state.now_ms()),
            Judge::StateTime => m.state.now_ms(),
        };
        let outcome = m
            .state
            .check_login(r.unit_id, &r.account, &r.password, &r.user, secret, now);
        let mut answer = cv::login_outcome_pb(&outcome);
        answer.service = m.state.unit(r.unit_id).map(cv::service_pb);
        answer
    }

    /// Automatic login: a lease of the pool, then a login to its unit with
    /// the lease's own password and secret, checked as `AccountLogin`
    /// checks it once this node has applied the lease.
    pub(in crate::api) async fn lease_and_login(
        &self,
        req: Request<LeaseAndLoginRequest>,
    ) -> Result<Response<LeaseAndLoginResponse>, Status> {
        let (meta, ext, r) = req.into_parts();
        let lease_req = r
            .lease
            .ok_or_else(|| invalid(state::StateError::invalid("lease", "required")))?;
        let started = Instant::now();
        let leased = self
            .lease_account_inner(Request::from_parts(meta, ext, lease_req))
            .await?
            .into_inner();
        let (Some(lease), Some(service)) = (&leased.lease, &leased.service) else {
            return Err(super::super::status::refuse(
                tonic::Code::Unavailable,
                "the lease was granted but this node has not applied its pool yet; \
                 log in with AccountLogin",
            ));
        };
        self.node.linearize().await?;
        let login = AccountLoginRequest {
            unit_id: service.unit_id,
            account: lease.account.clone(),
            password: leased.password.clone(),
            user: lease.holder.clone(),
            lease_secret: leased.lease_secret.clone(),
        };
        let secret = state::SecretHash::of(&leased.lease_secret);
        // Judged at the cluster time of the state this read linearized to,
        // which holds the lease: a node whose own clock jumped ahead must not
        // refuse the lease it has just granted (the chaos smoke's clock-jump
        // did, before).
        let login = self.check_login(&login, Some(&secret), Judge::StateTime);
        self.unit_took(service.unit_id, started);
        Ok(Response::new(LeaseAndLoginResponse {
            lease: Some(leased),
            login: Some(login),
        }))
    }
}

/// The time a login is judged at (lease expiry, the unit's service period).
#[derive(Clone, Copy)]
enum Judge {
    /// This node's clock, never before the state's own time: a login on
    /// its own (`AccountLogin`).
    NodeClock,
    /// The time of the last entry this node applied: the automatic login,
    /// right after a linearizable read that covers its lease.
    StateTime,
}
