//! `heraldctl auth ...`, `user ...`, `role ...`, `token ...`: who may do
//! what, replicated through Raft (like etcdctl's `auth`, `user`, `role`).
//! Roles are fixed, one per API group: admin (everything), publisher,
//! reader, pools, sessions.

use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;
use herald_client::proto::{self, Role};

use super::Ctx;
use crate::output::{Format, Table, print_json};

#[derive(Subcommand)]
pub enum AuthCmd {
    /// Who the cluster takes you for, your roles, and whether auth is on
    Status,
    /// Enforce authentication and roles on every node
    Enable,
    /// Stop enforcing: every caller may do anything (refused unless admin)
    Disable,
}

#[derive(Subcommand)]
pub enum UserCmd {
    /// Add a user (a client certificate's common name, or a token's owner)
    Add {
        /// The user's name
        name: String,
        /// Roles to grant, comma-separated (admin, publisher, reader, pools, sessions)
        #[arg(long, value_delimiter = ',', value_parser = role)]
        roles: Vec<Role>,
    },
    /// Remove a user and revoke its tokens
    Remove {
        /// The user's name
        name: String,
    },
    /// List users and their roles
    List,
}

#[derive(Subcommand)]
pub enum RoleCmd {
    /// Grant a role to a user
    Grant {
        /// admin, publisher, reader, pools or sessions
        #[arg(value_parser = role)]
        role: Role,
        /// The user
        #[arg(long)]
        user: String,
    },
    /// Revoke a role from a user
    Revoke {
        /// admin, publisher, reader, pools or sessions
        #[arg(value_parser = role)]
        role: Role,
        /// The user
        #[arg(long)]
        user: String,
    },
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Make a bearer token for a user (printed once; only its hash is kept)
    Create {
        /// The user it authenticates
        #[arg(long)]
        user: String,
        /// Lifetime (e.g. 12h, 30d; 0 = no expiry; at most 30d)
        #[arg(long, default_value = "0s", value_parser = crate::args::duration)]
        ttl: Duration,
    },
    /// Revoke a token by id
    Revoke {
        /// The token's id (from `token list`)
        id: u64,
    },
    /// List live tokens (ids and owners, never the tokens)
    List {
        /// Only this user's
        #[arg(long, default_value = "")]
        user: String,
    },
}

/// A role by name.
pub fn role(text: &str) -> Result<Role, String> {
    match text.to_ascii_lowercase().as_str() {
        "admin" => Ok(Role::Admin),
        "publisher" => Ok(Role::Publisher),
        "reader" => Ok(Role::Reader),
        "pools" => Ok(Role::Pools),
        "sessions" => Ok(Role::Sessions),
        "share" => Ok(Role::Share),
        "link" => Ok(Role::Link),
        _ => Err(format!(
            "unknown role {text:?} (roles: admin, publisher, reader, pools, sessions, share, link)"
        )),
    }
}

fn role_name(value: i32) -> String {
    match Role::try_from(value) {
        Ok(Role::Unspecified) | Err(_) => value.to_string(),
        Ok(r) => r.as_str_name().to_ascii_lowercase(),
    }
}

fn roles(values: &[i32]) -> String {
    if values.is_empty() {
        return "-".into();
    }
    values
        .iter()
        .map(|r| role_name(*r))
        .collect::<Vec<_>>()
        .join(", ")
}

fn done(format: Format, resp: &proto::AuthResponse) {
    match format {
        Format::Json => print_json(&serde_json::json!({ "message": resp.message })),
        Format::Table => println!("OK: {}", resp.message),
    }
}

pub async fn auth(cmd: AuthCmd, ctx: &Ctx) -> Result<()> {
    match cmd {
        AuthCmd::Status => {
            let s = ctx.client.auth_status().await?;
            match ctx.format {
                Format::Json => print_json(&serde_json::json!({
                    "enabled": s.enabled,
                    "principal": s.principal,
                    "roles": s.roles.iter().map(|r| role_name(*r)).collect::<Vec<_>>(),
                    "authenticated_by": s.authenticated_by,
                    "insecure": s.insecure,
                    "testing": s.testing,
                })),
                Format::Table => {
                    let who = if s.principal.is_empty() {
                        "anonymous (no credential)".to_string()
                    } else {
                        format!("{} ({})", s.principal, s.authenticated_by)
                    };
                    println!(
                        "auth:      {}",
                        if s.enabled { "enabled" } else { "DISABLED" }
                    );
                    println!("you are:   {who}");
                    println!("roles:     {}", roles(&s.roles));
                    if s.insecure {
                        println!("transport: INSECURE (plaintext, no TLS)");
                    }
                    if s.testing {
                        println!("testing:   test hooks are ON on the answering node");
                    }
                }
            }
        }
        AuthCmd::Enable => done(ctx.format, &ctx.client.auth_set_enabled(true).await?),
        AuthCmd::Disable => done(ctx.format, &ctx.client.auth_set_enabled(false).await?),
    }
    Ok(())
}

pub async fn user(cmd: UserCmd, ctx: &Ctx) -> Result<()> {
    match cmd {
        UserCmd::Add { name, roles } => done(ctx.format, &ctx.client.user_add(&name, roles).await?),
        UserCmd::Remove { name } => done(ctx.format, &ctx.client.user_remove(&name).await?),
        UserCmd::List => {
            let users = ctx.client.user_list().await?;
            match ctx.format {
                Format::Json => print_json(&serde_json::Value::Array(
                    users
                        .iter()
                        .map(|u| {
                            serde_json::json!({
                                "name": u.name,
                                "roles": u.roles.iter().map(|r| role_name(*r)).collect::<Vec<_>>(),
                                "created_ms": u.created_ms,
                                "tokens": u.tokens,
                            })
                        })
                        .collect(),
                )),
                Format::Table => {
                    let mut t = Table::new(&["USER", "ROLES", "TOKENS", "CREATED"]);
                    for u in &users {
                        t.row(vec![
                            u.name.clone(),
                            roles(&u.roles),
                            u.tokens.to_string(),
                            crate::output::time(u.created_ms),
                        ]);
                    }
                    t.print();
                }
            }
        }
    }
    Ok(())
}

pub async fn role_cmd(cmd: RoleCmd, ctx: &Ctx) -> Result<()> {
    let resp = match cmd {
        RoleCmd::Grant { role, user } => ctx.client.role_change(&user, role, true).await?,
        RoleCmd::Revoke { role, user } => ctx.client.role_change(&user, role, false).await?,
    };
    done(ctx.format, &resp);
    Ok(())
}

pub async fn token(cmd: TokenCmd, ctx: &Ctx) -> Result<()> {
    match cmd {
        TokenCmd::Create { user, ttl } => {
            let t = ctx.client.token_create(&user, ttl).await?;
            match ctx.format {
                Format::Json => print_json(&serde_json::json!({
                    "token_id": t.token_id,
                    "token": t.token,
                    "expires_ms": t.expires_ms,
                })),
                Format::Table => {
                    println!("token {} for {user:?}, shown once:", t.token_id);
                    println!("{}", t.token);
                    if t.expires_ms != 0 {
                        println!("expires {}", crate::output::time(t.expires_ms));
                    }
                    println!("use it: export HERALD_TOKEN=<the token>  (or --token)");
                }
            }
        }
        TokenCmd::Revoke { id } => done(ctx.format, &ctx.client.token_revoke(id).await?),
        TokenCmd::List { user } => {
            let tokens = ctx.client.token_list(&user).await?;
            match ctx.format {
                Format::Json => print_json(&serde_json::Value::Array(
                    tokens
                        .iter()
                        .map(|t| {
                            serde_json::json!({
                                "token_id": t.token_id,
                                "user": t.user,
                                "created_ms": t.created_ms,
                                "expires_ms": t.expires_ms,
                            })
                        })
                        .collect(),
                )),
                Format::Table => {
                    let mut table = Table::new(&["ID", "USER", "CREATED", "EXPIRES"]);
                    for t in &tokens {
                        table.row(vec![
                            t.token_id.to_string(),
                            t.user.clone(),
                            crate::output::time(t.created_ms),
                            if t.expires_ms == 0 {
                                "never".into()
                            } else {
                                crate::output::time(t.expires_ms)
                            },
                        ]);
                    }
                    table.print();
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_by_name() {
        assert_eq!(role("Publisher"), Ok(Role::Publisher));
        assert!(role("root").unwrap_err().contains("roles:"));
        assert_eq!(
            roles(&[Role::Admin as i32, Role::Reader as i32]),
            "admin, reader"
        );
        assert_eq!(roles(&[]), "-");
    }
}
