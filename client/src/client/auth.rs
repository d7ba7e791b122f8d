//! Auth calls: enabling auth, users, roles and tokens.

use super::*;

impl Client {
    /// Who the cluster takes this client for, its roles, and whether auth
    /// is enforced (asked of any node).
    pub async fn auth_status(&self) -> Result<proto::AuthStatusResponse, ClientError> {
        self.call(
            "Auth.Status",
            Effect::Read,
            proto::AuthStatusRequest {},
            |ch, r| async move { crate::endpoint::auth(ch.channel).status(r).await },
        )
        .await
    }

    /// Turns auth enforcement on (`true`) or off for the whole cluster.
    /// Idempotent.
    pub async fn auth_set_enabled(&self, on: bool) -> Result<proto::AuthResponse, ClientError> {
        if on {
            self.call(
                "Auth.Enable",
                Effect::IdempotentWrite,
                proto::AuthEnableRequest {},
                |ch, r| async move { crate::endpoint::auth(ch.channel).enable(r).await },
            )
            .await
        } else {
            self.call(
                "Auth.Disable",
                Effect::IdempotentWrite,
                proto::AuthDisableRequest {},
                |ch, r| async move { crate::endpoint::auth(ch.channel).disable(r).await },
            )
            .await
        }
    }

    /// Adds a user with roles.
    pub async fn user_add(
        &self,
        name: &str,
        roles: Vec<proto::Role>,
    ) -> Result<proto::AuthResponse, ClientError> {
        let req = proto::UserAddRequest {
            name: name.to_string(),
            roles: roles.into_iter().map(|r| r as i32).collect(),
        };
        self.call("Auth.UserAdd", Effect::Write, req, |ch, r| async move {
            crate::endpoint::auth(ch.channel).user_add(r).await
        })
        .await
    }

    /// Removes a user and revokes its tokens.
    pub async fn user_remove(&self, name: &str) -> Result<proto::AuthResponse, ClientError> {
        let req = proto::UserRemoveRequest {
            name: name.to_string(),
        };
        self.call("Auth.UserRemove", Effect::Write, req, |ch, r| async move {
            crate::endpoint::auth(ch.channel).user_remove(r).await
        })
        .await
    }

    /// Every user and its roles.
    pub async fn user_list(&self) -> Result<Vec<proto::User>, ClientError> {
        let resp = self
            .call(
                "Auth.UserList",
                Effect::Read,
                proto::UserListRequest {},
                |ch, r| async move { crate::endpoint::auth(ch.channel).user_list(r).await },
            )
            .await?;
        Ok(resp.users)
    }

    /// Grants (`grant`) or revokes a role.
    pub async fn role_change(
        &self,
        user: &str,
        role: proto::Role,
        grant: bool,
    ) -> Result<proto::AuthResponse, ClientError> {
        let req = proto::RoleChangeRequest {
            user: user.to_string(),
            role: role as i32,
        };
        if grant {
            self.call(
                "Auth.RoleGrant",
                Effect::IdempotentWrite,
                req,
                |ch, r| async move { crate::endpoint::auth(ch.channel).role_grant(r).await },
            )
            .await
        } else {
            self.call("Auth.RoleRevoke", Effect::Write, req, |ch, r| async move {
                crate::endpoint::auth(ch.channel).role_revoke(r).await
            })
            .await
        }
    }

    /// Makes a bearer token for `user` (shown once in the response).
    pub async fn token_create(
        &self,
        user: &str,
        ttl: Duration,
    ) -> Result<proto::TokenCreateResponse, ClientError> {
        let req = proto::TokenCreateRequest {
            user: user.to_string(),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        };
        self.call("Auth.TokenCreate", Effect::Write, req, |ch, r| async move {
            crate::endpoint::auth(ch.channel).token_create(r).await
        })
        .await
    }

    /// Revokes a token by id.
    pub async fn token_revoke(&self, token_id: u64) -> Result<proto::AuthResponse, ClientError> {
        let req = proto::TokenRevokeRequest { token_id };
        self.call("Auth.TokenRevoke", Effect::Write, req, |ch, r| async move {
            crate::endpoint::auth(ch.channel).token_revoke(r).await
        })
        .await
    }

    /// The live tokens of `user` ("" = everyone's); never the tokens themselves.
    pub async fn token_list(&self, user: &str) -> Result<Vec<proto::TokenInfo>, ClientError> {
        let req = proto::TokenListRequest {
            user: user.to_string(),
        };
        let resp = self
            .call("Auth.TokenList", Effect::Read, req, |ch, r| async move {
                crate::endpoint::auth(ch.channel).token_list(r).await
            })
            .await?;
        Ok(resp.tokens)
    }
}
