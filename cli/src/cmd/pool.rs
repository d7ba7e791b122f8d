//! `heraldctl pool ...`: P-iptv's platforms, units and pools of temporary
//! accounts.

use std::time::Duration;

use anyhow::{Result, bail};
use clap::Subcommand;
use herald_cli::duration::{as_millis, format_millis};
use herald_client::new_request_id;
use herald_client::proto::{self, Lease, Platform, Pool};

use super::{Ctx, consistency};
use crate::args;
use crate::output::{self, Format, Table, print_json, to_json};

#[derive(Subcommand)]
pub enum Cmd {
    /// Create an interactive-application platform with its units
    PlatformCreate {
        /// The platform's name
        name: String,
        /// A unit, repeatable: 'name=news,qos=gold,response-ms=200,policy=leased,start=0,end=0'
        /// (policy: leased, holder-only, closed, registered-only; start/end: ms since the epoch, 0 = open)
        #[arg(long = "unit", value_parser = args::unit_spec, required = true)]
        units: Vec<proto::UnitSpec>,
    },
    /// Delete a platform and its units (refused while a unit has a pool)
    PlatformDelete {
        /// The platform's id
        platform: u64,
    },
    /// Delete a pool and its accounts
    Delete {
        /// The pool's id
        pool: u64,
        /// End the pool's active leases first (without it, a pool with
        /// leases is kept and the command fails)
        #[arg(long)]
        force: bool,
    },
    /// Create a pool of temporary accounts for a unit
    Create {
        /// The unit's id
        #[arg(long)]
        unit: u64,
        /// The pool's name
        #[arg(long)]
        name: String,
        /// Accounts made in advance
        #[arg(long)]
        provision: u32,
        /// Grow on demand up to this many accounts (default: provision only)
        #[arg(long, default_value_t = 0)]
        max: u32,
        /// Default lease length (e.g. 1h)
        #[arg(long, value_parser = args::duration)]
        ttl: Option<Duration>,
    },
    /// Lease a temporary account to a user
    Lease {
        /// The pool's id
        pool: u64,
        /// The user to lease to
        #[arg(long)]
        user: String,
        /// Lease length (default: the pool's)
        #[arg(long, value_parser = args::duration)]
        ttl: Option<Duration>,
        /// Makes retries safe: the same id returns the same lease (default: a fresh one, printed)
        #[arg(long)]
        request_id: Option<String>,
        /// Log in to the pool's unit with the leased account in the same
        /// call (automatic login); fails when the login is refused
        #[arg(long)]
        login: bool,
    },
    /// Extend a lease (needs its lease secret)
    Renew {
        /// The lease's id
        lease: u64,
        /// The lease holder
        #[arg(long)]
        user: String,
        #[command(flatten)]
        secret: LeaseSecret,
        /// New length from now (default: the pool's)
        #[arg(long, value_parser = args::duration)]
        ttl: Option<Duration>,
    },
    /// Give a leased account back (needs its lease secret; the account's data
    /// is cleared, its password reset)
    Release {
        /// The lease's id
        lease: u64,
        /// The lease holder
        #[arg(long)]
        user: String,
        #[command(flatten)]
        secret: LeaseSecret,
    },
    /// Store one key of a leased account's data, kept for the lease (needs its
    /// lease secret)
    DataPut {
        /// The lease's id
        lease: u64,
        /// The lease holder
        #[arg(long)]
        user: String,
        #[command(flatten)]
        secret: LeaseSecret,
        /// The key (1-128 bytes)
        #[arg(value_name = "KEY")]
        data_key: String,
        /// The value, as text (at most 64 KiB)
        value: String,
    },
    /// List pools (and platforms)
    List {
        /// Only the pools of this unit
        #[arg(long)]
        unit: Option<u64>,
        /// Read the answering node's local state (fast, possibly stale)
        #[arg(long)]
        serializable: bool,
    },
    /// List a pool's live leases
    Leases {
        /// The pool's id
        pool: u64,
        /// Read the answering node's local state (fast, possibly stale)
        #[arg(long)]
        serializable: bool,
    },
    /// Log a viewer in to a unit with an account and password
    Login {
        /// The unit's id
        #[arg(long)]
        unit: u64,
        #[arg(long)]
        account: String,
        #[arg(long)]
        password: String,
        /// The viewer's user id
        #[arg(long)]
        user: String,
        /// The lease secret `pool lease` printed; holder-only units require
        /// it (or set HERALD_LEASE_SECRET)
        #[arg(long = "secret", env = "HERALD_LEASE_SECRET", hide_env_values = true)]
        secret: Option<String>,
    },
    /// Read back a leased account's data (needs its lease secret)
    DataGet {
        /// The lease's id
        lease: u64,
        /// The lease holder
        #[arg(long)]
        user: String,
        #[command(flatten)]
        secret: LeaseSecret,
        /// Read the answering node's local state (fast, possibly stale)
        #[arg(long)]
        serializable: bool,
    },
    /// Register a viewer's own account in a unit (or, with --replace, set
    /// its password); the cluster keeps only an Argon2id hash
    Register {
        /// The unit's id
        #[arg(long)]
        unit: u64,
        /// The account name (1-128 bytes; not of the u<unit>p<pool>-<n> shape)
        account: String,
        /// Its password, 8-128 bytes (or set HERALD_ACCOUNT_PASSWORD, which
        /// keeps it out of the shell history and the process list)
        #[arg(
            long,
            env = "HERALD_ACCOUNT_PASSWORD",
            hide_env_values = true,
            required = true
        )]
        password: String,
        /// Set the password of an existing account instead
        #[arg(long)]
        replace: bool,
    },
    /// Remove a registered account
    Unregister {
        /// The unit's id
        #[arg(long)]
        unit: u64,
        /// The account name
        account: String,
    },
    /// List a unit's registered accounts (never their passwords)
    Accounts {
        /// The unit's id
        unit: u64,
        /// Read the answering node's local state (fast, possibly stale)
        #[arg(long)]
        serializable: bool,
    },
    /// Tag a content id with the units it shows: --units 3,4 (a list),
    /// --all, or --none
    ContentSet {
        /// The platform's id
        #[arg(long)]
        platform: u64,
        /// The content id (a programme, a channel; 1-128 bytes)
        content: String,
        /// The units it shows, in order
        #[arg(long, value_delimiter = ',', conflicts_with_all = ["all", "none"], required_unless_present_any = ["all", "none"])]
        units: Vec<u64>,
        /// Every unit of the platform
        #[arg(long, conflicts_with = "none")]
        all: bool,
        /// No unit
        #[arg(long)]
        none: bool,
    },
    /// Remove a content's tag
    ContentRemove {
        /// The platform's id
        #[arg(long)]
        platform: u64,
        /// The content id
        content: String,
    },
    /// The first access request: the units a content shows, and whether
    /// each admits logins now
    Content {
        /// The platform's id
        #[arg(long)]
        platform: u64,
        /// The content id
        content: String,
        /// Read the answering node's local state (fast, possibly stale)
        #[arg(long)]
        serializable: bool,
    },
}

/// The lease secret `pool lease` printed, which proves the caller holds the
/// lease. The environment variable keeps it out of the shell history and the
/// process list.
#[derive(clap::Args)]
pub struct LeaseSecret {
    /// The lease secret `pool lease` printed (or set HERALD_LEASE_SECRET)
    #[arg(
        long = "secret",
        env = "HERALD_LEASE_SECRET",
        hide_env_values = true,
        required = true
    )]
    secret: String,
}

pub async fn run(cmd: Cmd, ctx: &Ctx) -> Result<()> {
    let client = &ctx.client;
    match cmd {
        Cmd::PlatformCreate { name, units } => {
            let platform = client
                .create_platform(proto::CreatePlatformRequest { name, units })
                .await?;
            print_platforms(ctx.format, std::slice::from_ref(&platform), true);
        }
        Cmd::PlatformDelete { platform } => {
            client.delete_platform(platform).await?;
            done(ctx.format, &format!("deleted platform {platform}"));
        }
        Cmd::Delete { pool, force } => {
            client.delete_pool(pool, force).await?;
            done(ctx.format, &format!("deleted pool {pool}"));
        }
        Cmd::Create {
            unit,
            name,
            provision,
            max,
            ttl,
        } => {
            let pool = client
                .create_pool(proto::CreatePoolRequest {
                    unit_id: unit,
                    name,
                    provision,
                    max_size: max,
                    default_ttl_ms: ttl.map_or(0, as_millis),
                })
                .await?;
            match ctx.format {
                Format::Json => print_json(&to_json::pool(&pool)),
                Format::Table => print_pools(&[pool]),
            }
        }
        Cmd::Lease {
            pool,
            user,
            ttl,
            request_id,
            login,
        } => {
            let request_id = request_id.unwrap_or_else(|| {
                let id = new_request_id();
                // Before the call, so it is at hand if the outcome is unknown.
                eprintln!("request id: {id} (retry with --request-id {id} to get the same lease)");
                id
            });
            let req = proto::LeaseRequest {
                pool_id: pool,
                user,
                ttl_ms: ttl.map_or(0, as_millis),
                request_id,
            };
            let (resp, login) = if login {
                let both = client.lease_and_login(req).await?;
                (both.lease.unwrap_or_default(), both.login)
            } else {
                (client.lease_account(req).await?, None)
            };
            match ctx.format {
                Format::Json => {
                    let mut v = to_json::lease_response(&resp);
                    if let Some(l) = &login {
                        v["login"] = serde_json::json!({"ok": l.ok, "reason": l.reason});
                    }
                    if let Some(s) = &resp.service {
                        v["service"] = serde_json::json!({
                            "unit_id": s.unit_id,
                            "qos_class": s.qos_class,
                            "response_time_ms": s.response_time_ms,
                        });
                    }
                    print_json(&v);
                }
                Format::Table => {
                    let mut table = Table::new(&[
                        "LEASE",
                        "POOL",
                        "ACCOUNT",
                        "PASSWORD",
                        "SECRET",
                        "HOLDER",
                        "EXPIRES",
                        "REQUEST ID",
                        "REPLAYED",
                    ]);
                    if let Some(l) = &resp.lease {
                        table.row(vec![
                            l.lease_id.to_string(),
                            l.pool_id.to_string(),
                            l.account.clone(),
                            resp.password.clone(),
                            resp.lease_secret.clone(),
                            l.holder.clone(),
                            output::time(l.expires_ms),
                            l.request_id.clone(),
                            output::yes_no(resp.replayed),
                        ]);
                    }
                    table.print();
                    if let Some(s) = &resp.service {
                        println!(
                            "unit {}: QoS class {:?}, response time {} ms",
                            s.unit_id, s.qos_class, s.response_time_ms
                        );
                    }
                    if let Some(l) = &login {
                        if l.ok {
                            println!(
                                "logged in to unit {}",
                                resp.service.as_ref().map_or(0, |s| s.unit_id)
                            );
                        } else {
                            println!("login refused: {}", l.reason);
                        }
                    }
                    // Shown once: the cluster keeps only hashes.
                    eprintln!(
                        "keep the password and the secret: they are not shown again; \
                         renew, release and data-put need --secret (or HERALD_LEASE_SECRET)"
                    );
                }
            }
            if let Some(l) = login.filter(|l| !l.ok) {
                anyhow::bail!("leased, but the login was refused: {}", l.reason);
            }
        }
        Cmd::Renew {
            lease,
            user,
            secret,
            ttl,
        } => {
            let lease = client
                .renew_lease(proto::RenewRequest {
                    lease_id: lease,
                    user,
                    ttl_ms: ttl.map_or(0, as_millis),
                    lease_secret: secret.secret,
                })
                .await?;
            print_leases(ctx.format, &[lease], true);
        }
        Cmd::Release {
            lease,
            user,
            secret,
        } => {
            client
                .release_lease(proto::ReleaseRequest {
                    lease_id: lease,
                    user,
                    lease_secret: secret.secret,
                })
                .await?;
            match ctx.format {
                Format::Json => print_json(&serde_json::json!({})),
                Format::Table => println!("OK: lease {lease} released"),
            }
        }
        Cmd::DataPut {
            lease,
            user,
            secret,
            data_key: key,
            value,
        } => {
            client
                .put_account_data(proto::PutAccountDataRequest {
                    lease_id: lease,
                    user,
                    key: key.clone(),
                    value: value.into_bytes(),
                    lease_secret: secret.secret,
                })
                .await?;
            match ctx.format {
                Format::Json => print_json(&serde_json::json!({})),
                Format::Table => println!("OK: {key} stored with lease {lease}"),
            }
        }
        Cmd::List { unit, serializable } => {
            let resp = client
                .list_pools(unit.unwrap_or(0), consistency(serializable))
                .await?;
            match ctx.format {
                Format::Json => print_json(&to_json::pools(&resp)),
                Format::Table => {
                    print_pools(&resp.pools);
                    if !resp.platforms.is_empty() {
                        print_platforms(Format::Table, &resp.platforms, false);
                    }
                }
            }
        }
        Cmd::Leases { pool, serializable } => {
            let leases = client.list_leases(pool, consistency(serializable)).await?;
            print_leases(ctx.format, &leases, false);
        }
        Cmd::Login {
            unit,
            account,
            password,
            user,
            secret,
        } => {
            let resp = client
                .account_login(proto::AccountLoginRequest {
                    unit_id: unit,
                    account: account.clone(),
                    password,
                    user,
                    lease_secret: secret.unwrap_or_default(),
                })
                .await?;
            match ctx.format {
                Format::Json => print_json(&to_json::account_login(&resp)),
                Format::Table if resp.ok => {
                    println!("OK: {account} logged in to unit {unit}");
                    if let Some(lease) = &resp.lease {
                        print_leases(Format::Table, std::slice::from_ref(lease), false);
                    }
                    if !resp.data.is_empty() {
                        let mut keys: Vec<_> = resp.data.iter().collect();
                        keys.sort();
                        let mut table = Table::new(&["KEY", "VALUE"]);
                        for (k, v) in keys {
                            table.row(vec![k.clone(), output::bytes_preview(v)]);
                        }
                        table.print();
                    }
                }
                Format::Table => {}
            }
            if !resp.ok {
                bail!("login refused: {}", resp.reason);
            }
        }
        Cmd::DataGet {
            lease,
            user,
            secret,
            serializable,
        } => {
            let resp = client
                .get_account_data(proto::GetAccountDataRequest {
                    lease_id: lease,
                    user,
                    lease_secret: secret.secret,
                    consistency: consistency(serializable).into(),
                })
                .await?;
            match ctx.format {
                Format::Json => print_json(&to_json::account_data(&resp.data)),
                Format::Table => print_data(&resp.data),
            }
        }
        Cmd::Register {
            unit,
            account,
            password,
            replace,
        } => {
            let a = client
                .register_account(proto::RegisterAccountRequest {
                    unit_id: unit,
                    account,
                    password,
                    replace,
                })
                .await?;
            match ctx.format {
                Format::Json => print_json(&to_json::registered(&a)),
                Format::Table if replace => {
                    println!("OK: password of {} in unit {unit} set", a.account)
                }
                Format::Table => println!("OK: {} registered in unit {unit}", a.account),
            }
        }
        Cmd::Unregister { unit, account } => {
            client.remove_account(unit, &account).await?;
            match ctx.format {
                Format::Json => print_json(&serde_json::json!({})),
                Format::Table => println!("OK: {account} removed from unit {unit}"),
            }
        }
        Cmd::Accounts { unit, serializable } => {
            let accounts = client
                .list_accounts(unit, consistency(serializable))
                .await?;
            match ctx.format {
                Format::Json => print_json(&serde_json::Value::Array(
                    accounts.iter().map(to_json::registered).collect(),
                )),
                Format::Table => {
                    let mut table = Table::new(&["UNIT", "ACCOUNT", "CREATED", "PASSWORD SET"]);
                    for a in &accounts {
                        table.row(vec![
                            a.unit_id.to_string(),
                            a.account.clone(),
                            output::time(a.created_ms),
                            output::time(a.updated_ms),
                        ]);
                    }
                    table.print();
                }
            }
        }
        Cmd::ContentSet {
            platform,
            content,
            units,
            all,
            none,
        } => {
            let mode = if all {
                proto::ContentUnitsMode::UnitsAll
            } else if none {
                proto::ContentUnitsMode::UnitsNone
            } else {
                proto::ContentUnitsMode::UnitsList
            };
            client
                .set_content_units(proto::SetContentUnitsRequest {
                    platform_id: platform,
                    content_id: content.clone(),
                    mode: mode as i32,
                    unit_ids: units,
                })
                .await?;
            match ctx.format {
                Format::Json => print_json(&serde_json::json!({})),
                Format::Table => println!("OK: {content} of platform {platform} tagged"),
            }
        }
        Cmd::ContentRemove { platform, content } => {
            client.remove_content(platform, &content).await?;
            match ctx.format {
                Format::Json => print_json(&serde_json::json!({})),
                Format::Table => println!("OK: {content} of platform {platform} untagged"),
            }
        }
        Cmd::Content {
            platform,
            content,
            serializable,
        } => {
            let resp = client
                .first_access(proto::FirstAccessRequest {
                    platform_id: platform,
                    content_id: content,
                    consistency: consistency(serializable).into(),
                })
                .await?;
            match ctx.format {
                Format::Json => print_json(&to_json::first_access(&resp)),
                Format::Table => {
                    let mode = proto::ContentUnitsMode::try_from(resp.mode)
                        .map_or("?", |m| m.as_str_name());
                    println!(
                        "{} of platform {}: {mode}",
                        resp.content_id, resp.platform_id
                    );
                    let mut table =
                        Table::new(&["UNIT", "NAME", "QOS", "RESPONSE", "POLICY", "AVAILABLE"]);
                    for shown in &resp.units {
                        let u = shown.unit.clone().unwrap_or_default();
                        let spec = u.spec.unwrap_or_default();
                        let policy = output::access_policy(spec.access_policy);
                        table.row(vec![
                            u.unit_id.to_string(),
                            spec.name,
                            spec.qos_class,
                            format!("{} ms", spec.response_time_ms),
                            policy,
                            if shown.available { "yes" } else { "no" }.to_string(),
                        ]);
                    }
                    table.print();
                }
            }
        }
    }
    Ok(())
}

fn print_data(data: &std::collections::HashMap<String, Vec<u8>>) {
    let mut keys: Vec<_> = data.iter().collect();
    keys.sort();
    let mut table = Table::new(&["KEY", "VALUE"]);
    for (k, v) in keys {
        table.row(vec![k.clone(), output::bytes_preview(v)]);
    }
    table.print();
}

fn print_pools(pools: &[Pool]) {
    let mut table = Table::new(&[
        "POOL",
        "UNIT",
        "NAME",
        "SIZE",
        "MAX",
        "FREE",
        "LEASED",
        "EXPIRED",
        "DEFAULT TTL",
    ]);
    for p in pools {
        table.row(vec![
            p.pool_id.to_string(),
            p.unit_id.to_string(),
            p.name.clone(),
            p.size.to_string(),
            if p.max_size == 0 {
                "-".into()
            } else {
                p.max_size.to_string()
            },
            p.free.to_string(),
            p.leased.to_string(),
            p.expired_total.to_string(),
            if p.default_ttl_ms == 0 {
                "-".into()
            } else {
                format_millis(p.default_ttl_ms)
            },
        ]);
    }
    table.print();
}

fn print_platforms(format: Format, platforms: &[Platform], single: bool) {
    if format == Format::Json {
        if let (true, [p]) = (single, platforms) {
            print_json(&to_json::platform(p));
        } else {
            print_json(&serde_json::Value::Array(
                platforms.iter().map(to_json::platform).collect(),
            ));
        }
        return;
    }
    let mut table = Table::new(&[
        "PLATFORM",
        "NAME",
        "UNIT",
        "UNIT NAME",
        "QOS",
        "RESPONSE",
        "POLICY",
        "SERVICE START",
        "SERVICE END",
    ]);
    for p in platforms {
        if p.units.is_empty() {
            table.row(vec![p.platform_id.to_string(), p.name.clone()]);
        }
        for u in &p.units {
            let spec = u.spec.clone().unwrap_or_default();
            table.row(vec![
                p.platform_id.to_string(),
                p.name.clone(),
                u.unit_id.to_string(),
                spec.name,
                if spec.qos_class.is_empty() {
                    "-".into()
                } else {
                    spec.qos_class
                },
                if spec.response_time_ms == 0 {
                    "-".into()
                } else {
                    format!("{}ms", spec.response_time_ms)
                },
                output::access_policy(spec.access_policy),
                output::time(spec.service_start_ms),
                output::time(spec.service_end_ms),
            ]);
        }
    }
    table.print();
}

fn print_leases(format: Format, leases: &[Lease], single: bool) {
    if format == Format::Json {
        if let (true, [l]) = (single, leases) {
            print_json(&to_json::lease(l));
        } else {
            print_json(&serde_json::json!({
                "leases": leases.iter().map(to_json::lease).collect::<Vec<_>>()
            }));
        }
        return;
    }
    // No request id column: the cluster shows request ids only to the
    // requester, in the `pool lease` answer.
    let mut table = Table::new(&["LEASE", "POOL", "ACCOUNT", "HOLDER", "GRANTED", "EXPIRES"]);
    for l in leases {
        table.row(vec![
            l.lease_id.to_string(),
            l.pool_id.to_string(),
            l.account.clone(),
            l.holder.clone(),
            output::time(l.granted_ms),
            output::time(l.expires_ms),
        ]);
    }
    table.print();
}

/// What a command that answers nothing prints: `message`, or `{}` in JSON.
fn done(format: Format, message: &str) {
    match format {
        Format::Json => print_json(&serde_json::json!({})),
        Format::Table => println!("{message}"),
    }
}
