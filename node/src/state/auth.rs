//! Who may do what: users, their roles and their bearer tokens, replicated
//! like every other write so a change takes effect on every node at once,
//! with no restart (as etcd's auth does).
//!
//! Roles are fixed, one per API group ([`Role`]); `admin` holds every
//! permission. A user is named by a client certificate's common name or by
//! a token; the node's guard (`security::guard`) reads this state to decide
//! each request. Tokens are made by the serving node (random, shown once)
//! and only their SHA-256 is proposed, so neither the log nor a snapshot
//! ever holds one. The cluster's first administrators are not here: they
//! come from every node's config (`auth.root_users`), so a fresh cluster
//! is administrable before any command was applied.
//!
//! Whether auth is enforced is replicated too (`Some(true|false)` after an
//! administrator said so); until then each node applies its mode's default
//! (on with TLS, off in insecure mode).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::limits::{MAX_TOKENS_PER_USER, MAX_TTL_MS, MAX_USERS, check_ttl};
use super::{Entry, Reason, StateError};

/// A role: the permission to use one API group.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Membership, leadership, snapshots, auth itself; and every other group.
    Admin,
    /// Presence writes and heartbeats.
    Publisher,
    /// Presence reads, watches and the HTTP lookup.
    Reader,
    /// Platforms, pools, leases and account logins.
    Pools,
    /// Session progress, bindings and handoffs.
    Sessions,
    /// Media sharing: shares, friendships, access and storage heartbeats.
    Share,
    /// Linked catalogs: catalogs, items, rules, counts and lookups.
    Link,
}

impl Role {
    /// Every role, in order.
    pub const ALL: [Role; 7] = [
        Role::Admin,
        Role::Publisher,
        Role::Reader,
        Role::Pools,
        Role::Sessions,
        Role::Share,
        Role::Link,
    ];

    /// The role's name as the CLI and messages spell it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Publisher => "publisher",
            Role::Reader => "reader",
            Role::Pools => "pools",
            Role::Sessions => "sessions",
            Role::Share => "share",
            Role::Link => "link",
        }
    }

    /// Parses [`Role::name`].
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A user and the roles granted to it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// As a certificate's common name or a token names it.
    pub name: String,
    /// Granted roles.
    pub roles: BTreeSet<Role>,
    /// Cluster time the user was added.
    pub created_ms: u64,
}

/// A bearer token of a user: only its digest is kept.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Token {
    /// Cluster-assigned, from 1, never reused.
    pub token_id: u64,
    /// Whose token it is.
    pub user: String,
    /// SHA-256 of the token.
    pub digest: [u8; 32],
    /// Cluster time it was made.
    pub created_ms: u64,
    /// It stops working at this cluster time; 0 = never.
    pub expires_ms: u64,
}

/// A change to users, roles, tokens or enforcement.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum AuthCommand {
    /// Turn enforcement on or off for the whole cluster.
    SetEnabled(bool),
    /// Add a user with roles (may be none).
    UserAdd {
        /// The name.
        name: String,
        /// Its roles.
        roles: BTreeSet<Role>,
    },
    /// Remove a user and revoke its tokens.
    UserRemove {
        /// The name.
        name: String,
    },
    /// Grant a role.
    RoleGrant {
        /// The user.
        user: String,
        /// The role.
        role: Role,
    },
    /// Revoke a role.
    RoleRevoke {
        /// The user.
        user: String,
        /// The role.
        role: Role,
    },
    /// Record a new token's digest (the serving node made the token).
    TokenCreate {
        /// The user it authenticates.
        user: String,
        /// SHA-256 of the token.
        digest: [u8; 32],
        /// Lifetime from the entry's time; 0 = no expiry.
        ttl_ms: u64,
    },
    /// Revoke a token.
    TokenRevoke {
        /// Its id.
        token_id: u64,
    },
}

fn check_name(field: &str, name: &str) -> Result<(), StateError> {
    herald_certs::check_user_name(name).map_err(|reason| StateError::invalid(field, reason))
}

impl AuthCommand {
    /// Field checks.
    pub fn validate(&self) -> Result<(), StateError> {
        match self {
            AuthCommand::SetEnabled(_) => Ok(()),
            AuthCommand::UserAdd { name, .. } | AuthCommand::UserRemove { name } => {
                check_name("name", name)
            }
            AuthCommand::RoleGrant { user, .. } | AuthCommand::RoleRevoke { user, .. } => {
                check_name("user", user)
            }
            AuthCommand::TokenCreate { user, ttl_ms, .. } => {
                check_name("user", user)?;
                check_ttl("ttl_ms", *ttl_ms)
            }
            AuthCommand::TokenRevoke { token_id } => {
                if *token_id == 0 {
                    return Err(StateError::invalid("token_id", "must be >= 1"));
                }
                Ok(())
            }
        }
    }
}

/// What an applied auth command answers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Done; nothing to report.
    Done,
    /// A token was recorded with this id, expiring then (0 = never).
    Token {
        /// Its id.
        token_id: u64,
        /// When it expires.
        expires_ms: u64,
    },
}

/// The replicated auth state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Auth {
    enabled: Option<bool>,
    users: BTreeMap<String, User>,
    tokens: BTreeMap<u64, Token>,
    by_digest: BTreeMap<[u8; 32], u64>,
    last_token_id: u64,
}

impl Auth {
    /// Enforcement as an administrator last set it; `None` = never set.
    pub fn enabled(&self) -> Option<bool> {
        self.enabled
    }

    /// A user's roles; `None` when there is no such user.
    pub fn roles(&self, user: &str) -> Option<&BTreeSet<Role>> {
        self.users.get(user).map(|u| &u.roles)
    }

    /// Every user, by name.
    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    /// Every token (digests included: for the API to leave out), by id.
    pub fn tokens(&self) -> impl Iterator<Item = &Token> {
        self.tokens.values()
    }

    /// The token with this digest, if it exists and has not expired at `now_ms`.
    pub fn token(&self, digest: &[u8; 32], now_ms: u64) -> Option<&Token> {
        let token = self.tokens.get(self.by_digest.get(digest)?)?;
        (token.expires_ms == 0 || now_ms < token.expires_ms).then_some(token)
    }

    fn user_mut(&mut self, name: &str) -> Result<&mut User, StateError> {
        self.users
            .get_mut(name)
            .ok_or_else(|| StateError::not_found(format!("user {name:?}")))
    }

    /// Applies one command at `at`. All checks come before any change.
    pub(crate) fn apply(
        &mut self,
        at: Entry,
        cmd: &AuthCommand,
    ) -> Result<AuthOutcome, StateError> {
        self.forget_expired(at.time_ms);
        match cmd {
            AuthCommand::SetEnabled(on) => self.enabled = Some(*on),
            AuthCommand::UserAdd { name, roles } => {
                if self.users.contains_key(name) {
                    return Err(StateError::exists(format!("user {name:?}")));
                }
                if self.users.len() >= MAX_USERS {
                    return Err(StateError::exhausted(
                        Reason::QuotaExceeded,
                        format!("users: at most {MAX_USERS} (quota max_users)"),
                    ));
                }
                self.users.insert(
                    name.clone(),
                    User {
                        name: name.clone(),
                        roles: roles.clone(),
                        created_ms: at.time_ms,
                    },
                );
            }
            AuthCommand::UserRemove { name } => {
                if self.users.remove(name).is_none() {
                    return Err(StateError::not_found(format!("user {name:?}")));
                }
                let gone: Vec<u64> = self
                    .tokens
                    .values()
                    .filter(|t| &t.user == name)
                    .map(|t| t.token_id)
                    .collect();
                for id in gone {
                    self.remove_token(id);
                }
            }
            AuthCommand::RoleGrant { user, role } => {
                self.user_mut(user)?.roles.insert(*role);
            }
            AuthCommand::RoleRevoke { user, role } => {
                let u = self.user_mut(user)?;
                if !u.roles.remove(role) {
                    return Err(StateError::precondition(
                        Reason::NoSuchRole,
                        format!("user {user:?} does not have the {role} role"),
                    ));
                }
            }
            AuthCommand::TokenCreate {
                user,
                digest,
                ttl_ms,
            } => {
                if !self.users.contains_key(user) {
                    return Err(StateError::not_found(format!(
                        "user {user:?} (add it first: heraldctl user add)"
                    )));
                }
                let held = self.tokens.values().filter(|t| &t.user == user).count();
                if held >= MAX_TOKENS_PER_USER {
                    return Err(StateError::exhausted(
                        Reason::QuotaExceeded,
                        format!(
                            "user {user:?} already has {held} tokens: at most {MAX_TOKENS_PER_USER} \
                         (quota max_tokens_per_user); revoke one first"
                        ),
                    ));
                }
                if self.by_digest.contains_key(digest) {
                    // 256 random bits never collide; a replayed proposal might.
                    return Err(StateError::exists("token"));
                }
                self.last_token_id += 1;
                let expires_ms = match *ttl_ms {
                    0 => 0,
                    ttl => at.time_ms.saturating_add(ttl.min(MAX_TTL_MS)),
                };
                let token = Token {
                    token_id: self.last_token_id,
                    user: user.clone(),
                    digest: *digest,
                    created_ms: at.time_ms,
                    expires_ms,
                };
                self.by_digest.insert(*digest, token.token_id);
                self.tokens.insert(token.token_id, token);
                return Ok(AuthOutcome::Token {
                    token_id: self.last_token_id,
                    expires_ms,
                });
            }
            AuthCommand::TokenRevoke { token_id } => {
                if !self.tokens.contains_key(token_id) {
                    return Err(StateError::not_found(format!("token {token_id}")));
                }
                self.remove_token(*token_id);
            }
        }
        Ok(AuthOutcome::Done)
    }

    fn remove_token(&mut self, token_id: u64) {
        if let Some(t) = self.tokens.remove(&token_id) {
            self.by_digest.remove(&t.digest);
        }
    }

    /// Drops tokens that expired by `now_ms` (they already stopped working;
    /// this only frees their quota).
    fn forget_expired(&mut self, now_ms: u64) {
        let expired: Vec<u64> = self
            .tokens
            .values()
            .filter(|t| t.expires_ms != 0 && t.expires_ms <= now_ms)
            .map(|t| t.token_id)
            .collect();
        for id in expired {
            self.remove_token(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(index: u64, time_ms: u64) -> Entry {
        Entry { index, time_ms }
    }

    fn add(a: &mut Auth, name: &str, roles: &[Role]) -> Result<AuthOutcome, StateError> {
        a.apply(
            at(1, 1000),
            &AuthCommand::UserAdd {
                name: name.into(),
                roles: roles.iter().copied().collect(),
            },
        )
    }

    #[test]
    fn users_roles_and_their_errors() {
        let mut a = Auth::default();
        add(&mut a, "alice", &[Role::Reader]).unwrap();
        assert_eq!(
            add(&mut a, "alice", &[]).unwrap_err(),
            StateError::exists("user \"alice\"")
        );
        a.apply(
            at(2, 1000),
            &AuthCommand::RoleGrant {
                user: "alice".into(),
                role: Role::Publisher,
            },
        )
        .unwrap();
        assert_eq!(
            a.roles("alice")
                .unwrap()
                .iter()
                .copied()
                .collect::<Vec<_>>(),
            [Role::Publisher, Role::Reader]
        );
        let before = a.clone();
        let e = a
            .apply(
                at(3, 1000),
                &AuthCommand::RoleRevoke {
                    user: "alice".into(),
                    role: Role::Admin,
                },
            )
            .unwrap_err();
        assert!(matches!(e, StateError::FailedPrecondition { .. }), "{e}");
        assert_eq!(a, before, "a refused command changes nothing");
        assert!(matches!(
            a.apply(
                at(4, 1000),
                &AuthCommand::RoleGrant {
                    user: "bob".into(),
                    role: Role::Admin
                }
            ),
            Err(StateError::NotFound { .. })
        ));
        assert!(
            AuthCommand::UserAdd {
                name: "bad name".into(),
                roles: BTreeSet::new()
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn tokens_expire_are_revoked_with_their_user_and_are_bounded() {
        let mut a = Auth::default();
        add(&mut a, "svc", &[Role::Publisher]).unwrap();
        let d1 = [1u8; 32];
        let out = a
            .apply(
                at(2, 1000),
                &AuthCommand::TokenCreate {
                    user: "svc".into(),
                    digest: d1,
                    ttl_ms: 500,
                },
            )
            .unwrap();
        assert_eq!(
            out,
            AuthOutcome::Token {
                token_id: 1,
                expires_ms: 1500
            }
        );
        assert_eq!(a.token(&d1, 1499).map(|t| t.user.as_str()), Some("svc"));
        assert!(a.token(&d1, 1500).is_none(), "expired");
        assert!(a.token(&[2; 32], 0).is_none(), "unknown");
        for i in 0..MAX_TOKENS_PER_USER as u8 {
            a.apply(
                at(3, 1200),
                &AuthCommand::TokenCreate {
                    user: "svc".into(),
                    digest: [10 + i; 32],
                    ttl_ms: 0,
                },
            )
            .ok();
        }
        let before = a.clone();
        let e = a
            .apply(
                at(4, 1200),
                &AuthCommand::TokenCreate {
                    user: "svc".into(),
                    digest: [99; 32],
                    ttl_ms: 0,
                },
            )
            .unwrap_err();
        assert!(e.to_string().contains("max_tokens_per_user"), "{e}");
        assert_eq!(a, before);
        // The expired token is forgotten at the next command after its expiry.
        a.apply(at(5, 2000), &AuthCommand::SetEnabled(true))
            .unwrap();
        assert!(a.tokens().all(|t| t.digest != d1));
        a.apply(at(6, 2000), &AuthCommand::UserRemove { name: "svc".into() })
            .unwrap();
        assert_eq!(a.tokens().count(), 0);
        assert!(a.by_digest.is_empty());
        assert!(a.token(&[10; 32], 2000).is_none());
    }

    #[test]
    fn a_token_needs_an_existing_user() {
        let mut a = Auth::default();
        let e = a
            .apply(
                at(1, 0),
                &AuthCommand::TokenCreate {
                    user: "ghost".into(),
                    digest: [1; 32],
                    ttl_ms: 0,
                },
            )
            .unwrap_err();
        assert!(matches!(e, StateError::NotFound { .. }));
        assert_eq!(a, Auth::default());
    }

    #[test]
    fn role_names_round_trip() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.name()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }
}
