//! `heraldctl share ...`: P-share's storage servers, friendships, uploads
//! admitted by capacity, and friend-checked access.

use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;
use herald_cli::duration::as_millis;
use herald_client::new_request_id;
use herald_client::proto::{self, MediaShare, ShareState, StorageServer};
use serde_json::{Value, json};

use super::{Ctx, consistency};
use crate::args;
use crate::output::{Format, Table, print_json};

#[derive(Subcommand)]
pub enum Cmd {
    /// Register a storage server (admin); it takes uploads once marked up
    /// or heartbeating
    StorageRegister {
        /// The server's id
        server: String,
        /// Where clients upload and download
        #[arg(long)]
        address: String,
        /// Bytes it may hold
        #[arg(long)]
        capacity: u64,
    },
    /// Change a storage server's address or capacity (admin)
    StorageUpdate {
        /// The server's id
        server: String,
        /// New address
        #[arg(long, default_value = "")]
        address: String,
        /// New capacity (never below what it holds)
        #[arg(long, default_value_t = 0)]
        capacity: u64,
    },
    /// A storage server's heartbeat: up for --ttl (e.g. 30s) unless
    /// another comes within it (kept by the server's owner node, not
    /// logged); without --ttl, up until marked down
    StorageUp {
        /// The server's id
        server: String,
        /// Up for this long unless another heartbeat comes
        #[arg(long, value_parser = args::duration)]
        ttl: Option<Duration>,
    },
    /// Mark a storage server down: it takes no new uploads
    StorageDown {
        /// The server's id
        server: String,
    },
    /// Remove a storage server (admin; refused while it holds shares)
    StorageRemove {
        /// The server's id
        server: String,
    },
    /// Every storage server: capacity, reserved, committed, up
    StorageList {
        /// Read this node's copy (possibly stale)
        #[arg(long)]
        serializable: bool,
    },
    /// Make two users friends (both ways)
    FriendAdd {
        /// A user
        user: String,
        /// Another user
        friend: String,
    },
    /// End a friendship (both ways)
    FriendRemove {
        /// A user
        user: String,
        /// Another user
        friend: String,
    },
    /// A user's friends
    Friends {
        /// The user
        user: String,
        /// Read this node's copy (possibly stale)
        #[arg(long)]
        serializable: bool,
    },
    /// Ask to share a media item of --size bytes with friends: the upload
    /// parameters (server, keys shown only here, deadline) or why not
    Create {
        /// The sharer
        owner: String,
        /// A friend to share with, repeatable
        #[arg(long = "to", required = true)]
        receivers: Vec<String>,
        /// Bytes to reserve
        #[arg(long)]
        size: u64,
        /// Commit the upload within this (default 10m)
        #[arg(long, value_parser = args::duration)]
        ttl: Option<Duration>,
        /// Makes retries safe: the same id returns the same share (default: a fresh one, printed)
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Commit an uploaded share's actual size (needs the owner key)
    Commit {
        /// The share's id
        share: u64,
        /// The owner key `share create` printed
        #[arg(long = "share-key", env = "HERALD_SHARE_KEY", hide_env_values = true)]
        share_key: String,
        /// The actual size, at most the reserved one
        #[arg(long)]
        size: u64,
    },
    /// Delete a share and free its bytes (needs the owner key)
    Delete {
        /// The share's id
        share: u64,
        /// The owner key `share create` printed
        #[arg(long = "share-key", env = "HERALD_SHARE_KEY", hide_env_values = true)]
        share_key: String,
    },
    /// Access parameters for a committed share, for its owner or a friend
    Access {
        /// The share's id
        share: u64,
        /// Who asks
        #[arg(long)]
        user: String,
        /// How long the key works (default 10m)
        #[arg(long, value_parser = args::duration)]
        ttl: Option<Duration>,
    },
    /// One share
    Get {
        /// The share's id
        share: u64,
        /// Read this node's copy (possibly stale)
        #[arg(long)]
        serializable: bool,
    },
    /// Every share, or one owner's
    List {
        /// Only this owner's
        #[arg(long, default_value = "")]
        owner: String,
        /// Read this node's copy (possibly stale)
        #[arg(long)]
        serializable: bool,
    },
    /// What a key opens (as a storage server checks it)
    CheckKey {
        /// The share's id
        share: u64,
        /// The presented key
        #[arg(long = "share-key", env = "HERALD_SHARE_KEY", hide_env_values = true)]
        share_key: String,
    },
}

pub async fn run(cmd: Cmd, ctx: &Ctx) -> Result<()> {
    let client = &ctx.client;
    match cmd {
        Cmd::StorageRegister {
            server,
            address,
            capacity,
        } => {
            let s = client
                .register_storage(proto::RegisterStorageRequest {
                    server_id: server,
                    address,
                    capacity_bytes: capacity,
                })
                .await?;
            print_servers(ctx.format, &[s]);
        }
        Cmd::StorageUpdate {
            server,
            address,
            capacity,
        } => {
            let s = client
                .update_storage(proto::UpdateStorageRequest {
                    server_id: server,
                    address,
                    capacity_bytes: capacity,
                })
                .await?;
            print_servers(ctx.format, &[s]);
        }
        Cmd::StorageUp { server, ttl } => {
            let s = client
                .storage_heartbeat(proto::StorageHeartbeatRequest {
                    server_id: server,
                    up: true,
                    ttl_ms: ttl.map_or(0, as_millis),
                })
                .await?;
            print_servers(ctx.format, &[s]);
        }
        Cmd::StorageDown { server } => {
            let s = client
                .storage_heartbeat(proto::StorageHeartbeatRequest {
                    server_id: server,
                    up: false,
                    ttl_ms: 0,
                })
                .await?;
            print_servers(ctx.format, &[s]);
        }
        Cmd::StorageRemove { server } => {
            client.remove_storage(&server).await?;
            done(ctx.format, &format!("removed storage server {server}"));
        }
        Cmd::StorageList { serializable } => {
            let r = client.list_storage(consistency(serializable)).await?;
            print_servers(ctx.format, &r.servers);
        }
        Cmd::FriendAdd { user, friend } => {
            client.set_friendship(&user, &friend, true).await?;
            done(ctx.format, &format!("{user} and {friend} are friends"));
        }
        Cmd::FriendRemove { user, friend } => {
            client.set_friendship(&user, &friend, false).await?;
            done(
                ctx.format,
                &format!("{user} and {friend} are no longer friends"),
            );
        }
        Cmd::Friends { user, serializable } => {
            let friends = client
                .list_friends(&user, consistency(serializable))
                .await?;
            match ctx.format {
                Format::Json => print_json(&json!({ "user": user, "friends": friends })),
                Format::Table => {
                    let mut t = Table::new(&["FRIEND"]);
                    for f in friends {
                        t.row(vec![f]);
                    }
                    t.print();
                }
            }
        }
        Cmd::Create {
            owner,
            receivers,
            size,
            ttl,
            request_id,
        } => {
            let request_id = request_id.unwrap_or_else(|| {
                let id = new_request_id();
                // Before the call, so it is at hand if the outcome is unknown.
                eprintln!("request id: {id} (retry with --request-id {id} to get the same share)");
                id
            });
            let r = client
                .share_media(proto::ShareMediaRequest {
                    owner,
                    receivers,
                    size_bytes: size,
                    ttl_ms: ttl.map_or(0, as_millis),
                    request_id,
                })
                .await?;
            let share = r.share.clone().unwrap_or_default();
            match ctx.format {
                Format::Json => {
                    let keys: Vec<Value> = r
                        .receiver_keys
                        .iter()
                        .map(|k| json!({ "user": k.user, "key": k.key }))
                        .collect();
                    print_json(&json!({
                        "share": share_json(&share),
                        "owner_key": r.owner_key,
                        "receiver_keys": keys,
                        "replayed": r.replayed,
                    }));
                }
                Format::Table => {
                    print_shares(Format::Table, &[share]);
                    let mut t = Table::new(&["USER", "KEY"]);
                    t.row(vec!["(owner)".into(), r.owner_key.clone()]);
                    for k in &r.receiver_keys {
                        t.row(vec![k.user.clone(), k.key.clone()]);
                    }
                    t.print();
                    if r.replayed {
                        println!("(a retry: the same share, fresh keys; earlier keys still work)");
                    }
                }
            }
        }
        Cmd::Commit {
            share,
            share_key,
            size,
        } => {
            let s = client
                .commit_share(proto::CommitShareRequest {
                    share_id: share,
                    owner_key: share_key,
                    size_bytes: size,
                })
                .await?;
            print_shares(ctx.format, &[s]);
        }
        Cmd::Delete { share, share_key } => {
            client.delete_share(share, &share_key).await?;
            done(ctx.format, &format!("deleted share {share}"));
        }
        Cmd::Access { share, user, ttl } => {
            let r = client
                .access_share(proto::AccessShareRequest {
                    share_id: share,
                    user,
                    ttl_ms: ttl.map_or(0, as_millis),
                })
                .await?;
            match ctx.format {
                Format::Json => print_json(&json!({
                    "share": r.share.as_ref().map(share_json),
                    "address": r.address,
                    "key": r.key,
                    "expires_ms": r.expires_ms,
                })),
                Format::Table => {
                    let mut t = Table::new(&["SHARE", "ADDRESS", "KEY", "EXPIRES"]);
                    t.row(vec![
                        share.to_string(),
                        r.address.clone(),
                        r.key.clone(),
                        r.expires_ms.to_string(),
                    ]);
                    t.print();
                }
            }
        }
        Cmd::Get {
            share,
            serializable,
        } => {
            let s = client.get_share(share, consistency(serializable)).await?;
            print_shares(ctx.format, &[s]);
        }
        Cmd::List {
            owner,
            serializable,
        } => {
            let shares = client
                .list_shares(&owner, consistency(serializable))
                .await?;
            print_shares(ctx.format, &shares);
        }
        Cmd::CheckKey { share, share_key } => {
            let (user, kind) = client.check_share_key(share, &share_key).await?;
            match ctx.format {
                Format::Json => {
                    print_json(&json!({ "share_id": share, "user": user, "kind": kind }))
                }
                Format::Table => println!("OK: the key opens share {share} as {kind} {user}"),
            }
        }
    }
    Ok(())
}

fn done(format: Format, message: &str) {
    match format {
        Format::Json => print_json(&json!({})),
        Format::Table => println!("OK: {message}"),
    }
}

fn server_json(s: &StorageServer) -> Value {
    json!({
        "server_id": s.server_id,
        "address": s.address,
        "capacity_bytes": s.capacity_bytes,
        "reserved_bytes": s.reserved_bytes,
        "committed_bytes": s.committed_bytes,
        "shares": s.shares,
        "up": s.up,
        "heartbeat_ttl_ms": s.heartbeat_ttl_ms,
        "up_since_ms": s.up_since_ms,
    })
}

fn print_servers(format: Format, servers: &[StorageServer]) {
    match format {
        Format::Json => print_json(&json!({
            "servers": servers.iter().map(server_json).collect::<Vec<_>>()
        })),
        Format::Table => {
            let mut t = Table::new(&[
                "SERVER",
                "ADDRESS",
                "CAPACITY",
                "RESERVED",
                "COMMITTED",
                "SHARES",
                "UP",
                "HEARTBEAT TTL",
            ]);
            for s in servers {
                t.row(vec![
                    s.server_id.clone(),
                    s.address.clone(),
                    s.capacity_bytes.to_string(),
                    s.reserved_bytes.to_string(),
                    s.committed_bytes.to_string(),
                    s.shares.to_string(),
                    s.up.to_string(),
                    match s.heartbeat_ttl_ms {
                        0 => "-".to_string(),
                        ms => format!("{ms}ms"),
                    },
                ]);
            }
            t.print();
        }
    }
}

fn state_name(s: &MediaShare) -> &'static str {
    match ShareState::try_from(s.state) {
        Ok(ShareState::Reserved) => "reserved",
        Ok(ShareState::Committed) => "committed",
        _ => "unknown",
    }
}

fn share_json(s: &MediaShare) -> Value {
    json!({
        "share_id": s.share_id,
        "owner": s.owner,
        "receivers": s.receivers,
        "server_id": s.server_id,
        "address": s.address,
        "size_bytes": s.size_bytes,
        "state": state_name(s),
        "created_ms": s.created_ms,
        "deadline_ms": s.deadline_ms,
    })
}

fn print_shares(format: Format, shares: &[MediaShare]) {
    match format {
        Format::Json => print_json(&json!({
            "shares": shares.iter().map(share_json).collect::<Vec<_>>()
        })),
        Format::Table => {
            let mut t = Table::new(&[
                "SHARE",
                "OWNER",
                "RECEIVERS",
                "SERVER",
                "ADDRESS",
                "SIZE",
                "STATE",
                "DEADLINE",
            ]);
            for s in shares {
                t.row(vec![
                    s.share_id.to_string(),
                    s.owner.clone(),
                    s.receivers.join(","),
                    s.server_id.clone(),
                    s.address.clone(),
                    s.size_bytes.to_string(),
                    state_name(s).to_string(),
                    s.deadline_ms.to_string(),
                ]);
            }
            t.print();
        }
    }
}
