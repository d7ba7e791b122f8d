//! The client gRPC service (`herald.v1.Herald`): presence, sessions and
//! account pools. Each call validates and converts its request (bad input is
//! refused before anything is proposed), then either proposes a command
//! through [`Herald::propose`] or reads the local state after
//! [`Herald::linearize`] when the read asks for linearizability.
//!
//! This file holds the service, the helpers every domain uses and the one
//! [`HeraldApi`] impl, whose methods only delegate; the handlers themselves
//! are inherent methods of [`HeraldService`] of the same name, one file per
//! domain, so a call reads next to the other calls on the same records:
//! - `presence.rs`: login, logout, permission, heartbeat, presence reads,
//!   `Watch`, and the uid checks and batch lookup the HTTP API shares;
//! - `sessions.rs`: connect, progress, bind, unbind, handoff, offer and
//!   accept, session and binding reads, delete, and `WatchSessions`;
//! - `pools.rs`: platforms, pools, leases, account data and account logins;
//! - `units.rs`: registered accounts (Argon2id, off the async threads),
//!   content tags and the first access request, the account data read.
//! - `share.rs`: the media-sharing service `herald.v1.Share` (its own tonic
//!   service on the same listener).
//! - `link.rs`: the linked catalogs (`herald.v1.Link`, its own service).
//!
//! `Batch` is served by [`super::batch`], which runs the same handlers for
//! each of its calls.

pub mod link;
mod pools;
mod presence;
mod sessions;
mod share;
mod units;
mod watch;

use ::herald_client::proto::herald_server::Herald as HeraldApi;
use ::herald_client::proto::*;
use tonic::{Request, Response, Status};

use super::convert::linearizable;
use super::layer::Accounting;
use super::status::state_status;
use crate::node::Herald;
use crate::state::{self, Command, StateError};

use presence::WatchStream;
pub use presence::{WatchFeed, batch_get, check_uid, check_uids, open_watch};
use sessions::WatchSessionsStream;
pub use share::{ShareService, share_pb};

/// Serves [`HeraldApi`] for one node.
pub struct HeraldService {
    node: Herald,
    /// The client listener's request counting, for the calls of a `Batch`.
    accounting: Accounting,
}

impl HeraldService {
    /// A client service over `node`; `accounting` is the client listener's
    /// ([`super::layer::ObserveLayer::accounting`]).
    pub fn new(node: Herald, accounting: Accounting) -> Self {
        HeraldService { node, accounting }
    }

    pub(super) fn node(&self) -> &Herald {
        &self.node
    }

    pub(super) fn accounting(&self) -> &Accounting {
        &self.accounting
    }

    async fn propose(&self, cmd: Command) -> Result<state::Response, Status> {
        Ok(self.node.propose(cmd).await?)
    }

    async fn read_barrier(&self, consistency: i32) -> Result<(), Status> {
        if linearizable(consistency).map_err(|e| state_status(&e))? {
            self.node.linearize().await?;
        }
        Ok(())
    }
}

fn invalid(e: StateError) -> Status {
    state_status(&e)
}

fn unexpected(r: state::Response) -> Status {
    super::status::refuse(
        tonic::Code::Internal,
        format!("unexpected state machine response {r:?}"),
    )
}

// Each method calls the inherent method of the same name (inherent methods
// win method resolution); were one missing, `unconditional_recursion` would
// refuse the build.
#[tonic::async_trait]
impl HeraldApi for HeraldService {
    async fn login(
        &self,
        req: Request<LoginRequest>,
    ) -> Result<Response<PresenceWriteResponse>, Status> {
        self.login(req).await
    }

    async fn logout(
        &self,
        req: Request<LogoutRequest>,
    ) -> Result<Response<PresenceWriteResponse>, Status> {
        self.logout(req).await
    }

    async fn change_permission(
        &self,
        req: Request<PermissionRequest>,
    ) -> Result<Response<PresenceWriteResponse>, Status> {
        self.change_permission(req).await
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        self.heartbeat(req).await
    }

    async fn get_presence(
        &self,
        req: Request<GetPresenceRequest>,
    ) -> Result<Response<GetPresenceResponse>, Status> {
        self.get_presence(req).await
    }

    async fn batch_get_presence(
        &self,
        req: Request<BatchGetPresenceRequest>,
    ) -> Result<Response<BatchGetPresenceResponse>, Status> {
        self.batch_get_presence(req).await
    }

    async fn batch(&self, req: Request<BatchRequest>) -> Result<Response<BatchResponse>, Status> {
        let principal = crate::security::principal_of(&req);
        self.serve_batch(principal, req.into_inner())
            .await
            .map(Response::new)
    }

    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<WatchStream>, Status> {
        self.watch(req).await
    }

    async fn connect_session(
        &self,
        req: Request<ConnectRequest>,
    ) -> Result<Response<ConnectResponse>, Status> {
        self.connect_session(req).await
    }

    async fn progress(
        &self,
        req: Request<ProgressRequest>,
    ) -> Result<Response<ProgressResponse>, Status> {
        self.progress(req).await
    }

    async fn bind(&self, req: Request<BindRequest>) -> Result<Response<BindResponse>, Status> {
        self.bind(req).await
    }

    async fn handoff(
        &self,
        req: Request<HandoffRequest>,
    ) -> Result<Response<HandoffResponse>, Status> {
        self.handoff(req).await
    }

    async fn get_session(
        &self,
        req: Request<GetSessionRequest>,
    ) -> Result<Response<GetSessionResponse>, Status> {
        self.get_session(req).await
    }

    async fn session_log(
        &self,
        req: Request<SessionLogRequest>,
    ) -> Result<Response<SessionLogResponse>, Status> {
        self.session_log(req).await
    }

    async fn delete_session(
        &self,
        req: Request<DeleteSessionRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        self.delete_session(req).await
    }

    async fn create_platform(
        &self,
        req: Request<CreatePlatformRequest>,
    ) -> Result<Response<CreatePlatformResponse>, Status> {
        self.create_platform(req).await
    }

    async fn delete_platform(
        &self,
        req: Request<DeletePlatformRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        self.delete_platform(req).await
    }

    async fn create_pool(
        &self,
        req: Request<CreatePoolRequest>,
    ) -> Result<Response<CreatePoolResponse>, Status> {
        self.create_pool(req).await
    }

    async fn delete_pool(
        &self,
        req: Request<DeletePoolRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        self.delete_pool(req).await
    }

    async fn lease_account(
        &self,
        req: Request<LeaseRequest>,
    ) -> Result<Response<LeaseResponse>, Status> {
        self.lease_account(req).await
    }

    async fn renew_lease(
        &self,
        req: Request<RenewRequest>,
    ) -> Result<Response<RenewResponse>, Status> {
        self.renew_lease(req).await
    }

    async fn release_lease(
        &self,
        req: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        self.release_lease(req).await
    }

    async fn put_account_data(
        &self,
        req: Request<PutAccountDataRequest>,
    ) -> Result<Response<PutAccountDataResponse>, Status> {
        self.put_account_data(req).await
    }

    async fn list_pools(
        &self,
        req: Request<ListPoolsRequest>,
    ) -> Result<Response<ListPoolsResponse>, Status> {
        self.list_pools(req).await
    }

    async fn list_leases(
        &self,
        req: Request<ListLeasesRequest>,
    ) -> Result<Response<ListLeasesResponse>, Status> {
        self.list_leases(req).await
    }

    async fn account_login(
        &self,
        req: Request<AccountLoginRequest>,
    ) -> Result<Response<AccountLoginResponse>, Status> {
        self.account_login(req).await
    }

    async fn get_binding(
        &self,
        req: Request<GetBindingRequest>,
    ) -> Result<Response<GetBindingResponse>, Status> {
        self.get_binding(req).await
    }

    async fn unbind(
        &self,
        req: Request<UnbindRequest>,
    ) -> Result<Response<UnbindResponse>, Status> {
        self.unbind(req).await
    }

    async fn list_sessions(
        &self,
        req: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        self.list_sessions(req).await
    }

    type WatchSessionsStream = WatchSessionsStream;

    async fn watch_sessions(
        &self,
        req: Request<WatchSessionsRequest>,
    ) -> Result<Response<WatchSessionsStream>, Status> {
        self.watch_sessions(req).await
    }

    async fn offer_handoff(
        &self,
        req: Request<OfferHandoffRequest>,
    ) -> Result<Response<OfferHandoffResponse>, Status> {
        self.offer_handoff(req).await
    }

    async fn accept_handoff(
        &self,
        req: Request<AcceptHandoffRequest>,
    ) -> Result<Response<HandoffResponse>, Status> {
        self.accept_handoff(req).await
    }

    async fn lease_and_login(
        &self,
        req: Request<LeaseAndLoginRequest>,
    ) -> Result<Response<LeaseAndLoginResponse>, Status> {
        self.lease_and_login(req).await
    }

    async fn register_account(
        &self,
        req: Request<RegisterAccountRequest>,
    ) -> Result<Response<RegisterAccountResponse>, Status> {
        self.register_account(req).await
    }

    async fn remove_account(
        &self,
        req: Request<RemoveAccountRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        self.remove_account(req).await
    }

    async fn list_accounts(
        &self,
        req: Request<ListAccountsRequest>,
    ) -> Result<Response<ListAccountsResponse>, Status> {
        self.list_accounts(req).await
    }

    async fn get_account_data(
        &self,
        req: Request<GetAccountDataRequest>,
    ) -> Result<Response<GetAccountDataResponse>, Status> {
        self.get_account_data(req).await
    }

    async fn set_content_units(
        &self,
        req: Request<SetContentUnitsRequest>,
    ) -> Result<Response<SetContentUnitsResponse>, Status> {
        self.set_content_units(req).await
    }

    async fn remove_content(
        &self,
        req: Request<RemoveContentRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        self.remove_content(req).await
    }

    async fn first_access(
        &self,
        req: Request<FirstAccessRequest>,
    ) -> Result<Response<FirstAccessResponse>, Status> {
        self.first_access(req).await
    }
}
