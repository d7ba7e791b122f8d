//! The auth gRPC service (`herald.v1.Auth`): enforcement on and off,
//! users, roles and bearer tokens. Changes are proposed like any write, so
//! they take effect on every node once committed; the guard in front of the
//! listener has already checked that the caller is an administrator (every
//! method but `Status`, which tells any caller who it is).

use super::status::refuse;
use ::herald_client::proto::auth_server::Auth as AuthApi;
use ::herald_client::proto::*;
use rand::Rng;
use tonic::Code;
use tonic::{Request, Response, Status};

use super::status::state_status;
use crate::node::Herald;
use crate::security::{Principal, principal_of, token_digest};
use crate::state::{self, AuthCommand, AuthOutcome, Command, StateError};

/// Serves [`AuthApi`] for one node.
pub struct AuthService {
    node: Herald,
}

impl AuthService {
    /// An auth service over `node`.
    pub fn new(node: Herald) -> Self {
        AuthService { node }
    }

    async fn propose(&self, cmd: AuthCommand) -> Result<AuthOutcome, Status> {
        match self.node.propose(Command::Auth(cmd)).await? {
            state::Response::Auth(outcome) => Ok(outcome),
            other => Err(refuse(
                Code::Internal,
                format!("unexpected state machine response {other:?}"),
            )),
        }
    }

    async fn done(
        &self,
        cmd: AuthCommand,
        message: String,
    ) -> Result<Response<AuthResponse>, Status> {
        self.propose(cmd).await?;
        Ok(Response::new(AuthResponse { message }))
    }
}

/// A proto role to the state's; `ROLE_UNSPECIFIED` and unknown values are
/// refused naming `field`.
fn role(field: &str, value: i32) -> Result<state::Role, Status> {
    let r = match pb_role(value) {
        Some(r) => r,
        None => {
            return Err(state_status(&StateError::invalid(
                field,
                format!("must be one of ADMIN, PUBLISHER, READER, POOLS, SESSIONS, got {value}"),
            )));
        }
    };
    Ok(r)
}

fn pb_role(value: i32) -> Option<state::Role> {
    Some(match Role::try_from(value).ok()? {
        Role::Admin => state::Role::Admin,
        Role::Publisher => state::Role::Publisher,
        Role::Reader => state::Role::Reader,
        Role::Pools => state::Role::Pools,
        Role::Sessions => state::Role::Sessions,
        Role::Share => state::Role::Share,
        Role::Link => state::Role::Link,
        Role::Unspecified => return None,
    })
}

/// The state's role to proto.
pub fn role_pb(r: state::Role) -> Role {
    match r {
        state::Role::Admin => Role::Admin,
        state::Role::Publisher => Role::Publisher,
        state::Role::Reader => Role::Reader,
        state::Role::Pools => Role::Pools,
        state::Role::Sessions => Role::Sessions,
        state::Role::Share => Role::Share,
        state::Role::Link => Role::Link,
    }
}

/// A fresh bearer token: `hrt_` and 256 random bits in hex. Made here,
/// returned once, never logged; only its digest is proposed.
fn new_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!("hrt_{}", hex::encode(bytes))
}

#[tonic::async_trait]
impl AuthApi for AuthService {
    async fn status(
        &self,
        req: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        let principal = principal_of(&req);
        let guard = self.node.guard();
        let authenticated_by = match &principal {
            Principal::Anonymous => String::new(),
            Principal::Node(_) => "node certificate".into(),
            Principal::User { via, .. } => via.describe(),
        };
        Ok(Response::new(AuthStatusResponse {
            enabled: guard.enabled(),
            principal: principal.name(),
            roles: guard
                .roles_of(&principal)
                .into_iter()
                .map(|r| role_pb(r) as i32)
                .collect(),
            authenticated_by,
            insecure: guard.insecure(),
            testing: self.node.config().testing_mode,
        }))
    }

    async fn enable(
        &self,
        _req: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthResponse>, Status> {
        self.done(AuthCommand::SetEnabled(true), "auth enabled".into())
            .await
    }

    async fn disable(
        &self,
        req: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthResponse>, Status> {
        tracing::warn!(by = %principal_of(&req).name(), "auth disabled: every caller may now do anything");
        self.done(
            AuthCommand::SetEnabled(false),
            "auth disabled: every caller may now do anything".into(),
        )
        .await
    }

    async fn user_add(
        &self,
        req: Request<UserAddRequest>,
    ) -> Result<Response<AuthResponse>, Status> {
        let r = req.into_inner();
        let roles = r
            .roles
            .iter()
            .enumerate()
            .map(|(i, v)| role(&format!("roles[{i}]"), *v))
            .collect::<Result<_, _>>()?;
        let message = format!("user {:?} added", r.name);
        self.done(
            AuthCommand::UserAdd {
                name: r.name,
                roles,
            },
            message,
        )
        .await
    }

    async fn user_remove(
        &self,
        req: Request<UserRemoveRequest>,
    ) -> Result<Response<AuthResponse>, Status> {
        let name = req.into_inner().name;
        let message = format!("user {name:?} removed, with its tokens");
        self.done(AuthCommand::UserRemove { name }, message).await
    }

    async fn user_list(
        &self,
        _req: Request<UserListRequest>,
    ) -> Result<Response<UserListResponse>, Status> {
        self.node.linearize().await?;
        let m = self.node.store().read();
        let auth = m.state.auth();
        let users = auth
            .users()
            .map(|u| User {
                name: u.name.clone(),
                roles: u.roles.iter().map(|r| role_pb(*r) as i32).collect(),
                created_ms: u.created_ms,
                tokens: auth.tokens().filter(|t| t.user == u.name).count() as u32,
            })
            .collect();
        Ok(Response::new(UserListResponse { users }))
    }

    async fn role_grant(
        &self,
        req: Request<RoleChangeRequest>,
    ) -> Result<Response<AuthResponse>, Status> {
        let r = req.into_inner();
        let role = role("role", r.role)?;
        let message = format!("granted {role} to {:?}", r.user);
        self.done(AuthCommand::RoleGrant { user: r.user, role }, message)
            .await
    }

    async fn role_revoke(
        &self,
        req: Request<RoleChangeRequest>,
    ) -> Result<Response<AuthResponse>, Status> {
        let r = req.into_inner();
        let role = role("role", r.role)?;
        let message = format!("revoked {role} from {:?}", r.user);
        self.done(AuthCommand::RoleRevoke { user: r.user, role }, message)
            .await
    }

    async fn token_create(
        &self,
        req: Request<TokenCreateRequest>,
    ) -> Result<Response<TokenCreateResponse>, Status> {
        let r = req.into_inner();
        let token = new_token();
        let cmd = AuthCommand::TokenCreate {
            user: r.user,
            digest: token_digest(&token),
            ttl_ms: r.ttl_ms,
        };
        match self.propose(cmd).await? {
            AuthOutcome::Token {
                token_id,
                expires_ms,
            } => Ok(Response::new(TokenCreateResponse {
                token_id,
                token,
                expires_ms,
            })),
            other => Err(refuse(
                Code::Internal,
                format!("unexpected outcome {other:?}"),
            )),
        }
    }

    async fn token_revoke(
        &self,
        req: Request<TokenRevokeRequest>,
    ) -> Result<Response<AuthResponse>, Status> {
        let token_id = req.into_inner().token_id;
        self.done(
            AuthCommand::TokenRevoke { token_id },
            format!("token {token_id} revoked"),
        )
        .await
    }

    async fn token_list(
        &self,
        req: Request<TokenListRequest>,
    ) -> Result<Response<TokenListResponse>, Status> {
        let user = req.into_inner().user;
        self.node.linearize().await?;
        let m = self.node.store().read();
        let now = self.node.clock().now_ms().max(m.state.now_ms());
        let tokens = m
            .state
            .auth()
            .tokens()
            .filter(|t| user.is_empty() || t.user == user)
            .filter(|t| t.expires_ms == 0 || now < t.expires_ms)
            .map(|t| TokenInfo {
                token_id: t.token_id,
                user: t.user.clone(),
                created_ms: t.created_ms,
                expires_ms: t.expires_ms,
            })
            .collect();
        Ok(Response::new(TokenListResponse { tokens }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_prefixed() {
        let a = new_token();
        assert!(a.starts_with("hrt_") && a.len() == 68, "{a}");
        assert_ne!(a, new_token());
    }

    #[test]
    fn roles_map_both_ways_and_unspecified_is_refused() {
        for r in state::Role::ALL {
            assert_eq!(pb_role(role_pb(r) as i32), Some(r));
        }
        assert!(role("role", Role::Unspecified as i32).is_err());
        assert_eq!(
            role("roles[1]", 42).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
