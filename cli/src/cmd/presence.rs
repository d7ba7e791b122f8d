//! `heraldctl presence ...`: the P-publish calls and the batch lookup web
//! platforms make, plus a live watch.

use std::collections::HashMap;
use std::io::BufRead as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{ArgAction, Subcommand};
use futures::StreamExt as _;
use herald_cli::duration::as_millis;
use herald_client::proto::{self, PresenceRecord};
use herald_client::{Client, ClientConfig};

use super::{Ctx, consistency};
use crate::args;
use crate::output::{self, Format, Table, print_json, to_json};

#[derive(Subcommand)]
pub enum Cmd {
    /// Log a client of a user in (UserLogin)
    Login {
        uid: String,
        /// The user's public service number
        #[arg(long)]
        sid: u64,
        /// Client type: pc, mobile, web, tv or a custom string
        #[arg(long = "client")]
        client_type: String,
        /// This connection of the client (one per device or tab; each has
        /// its own entry and TTL). Default: the client type's one entry
        #[arg(long = "connection", default_value = "")]
        connection_id: String,
        /// Accept sessions from strangers
        #[arg(long)]
        accept_strangers: bool,
        /// Extension data, repeatable: --ext k=v --ext k2=v2
        #[arg(long, value_parser = args::key_value)]
        ext: Vec<(String, String)>,
        /// Go offline unless heartbeats arrive within this (e.g. 30s)
        #[arg(long, value_parser = args::duration)]
        ttl: Option<Duration>,
    },
    /// Log a user's connection out (--client and --connection), every
    /// connection of a client type (--client), or all (UserLogout)
    Logout {
        uid: String,
        #[arg(long)]
        sid: u64,
        /// Only this client type (default: every client of the user)
        #[arg(long = "client")]
        client_type: Option<String>,
        /// Only this connection of --client (default: every connection of it)
        #[arg(long = "connection", requires = "client_type")]
        connection_id: Option<String>,
        /// Extension data, repeatable
        #[arg(long, value_parser = args::key_value)]
        ext: Vec<(String, String)>,
    },
    /// Change whether a user accepts strangers (PermissionChanged)
    Permission {
        uid: String,
        #[arg(long)]
        sid: u64,
        /// true or false
        #[arg(long, action = ArgAction::Set)]
        accept_strangers: bool,
        /// Replaces the user's extension data when given, repeatable
        #[arg(long, value_parser = args::key_value)]
        ext: Vec<(String, String)>,
    },
    /// Keep a TTL login alive
    Heartbeat {
        uid: String,
        #[arg(long = "client")]
        client_type: String,
        /// The connection whose TTL to renew (default: the type's one entry)
        #[arg(long = "connection", default_value = "")]
        connection_id: String,
    },
    /// Show one user's presence
    Get {
        uid: String,
        /// Read the answering node's local state (fast, possibly stale)
        #[arg(long)]
        serializable: bool,
    },
    /// Show the presence of many users (at most 1000 per call)
    Batch {
        uids: Vec<String>,
        /// Read uids from a file, one per line ('-' = stdin)
        #[arg(long)]
        file: Option<PathBuf>,
        /// Read the answering node's local state (fast, possibly stale)
        #[arg(long)]
        serializable: bool,
    },
    /// Print presence changes as they happen, until Ctrl-C
    Watch {
        /// Users to watch (default: every user)
        uids: Vec<String>,
        /// Start from this revision, replaying history (default: from now)
        #[arg(long, default_value_t = 0)]
        from_revision: u64,
    },
}

pub async fn run(cmd: Cmd, ctx: &Ctx) -> Result<()> {
    let client = &ctx.client;
    match cmd {
        Cmd::Login {
            uid,
            sid,
            client_type,
            connection_id,
            accept_strangers,
            ext,
            ttl,
        } => {
            let record = client
                .login(proto::LoginRequest {
                    uid,
                    sid,
                    client_type,
                    accept_strangers,
                    ext: ext.into_iter().collect(),
                    ttl_ms: ttl.map_or(0, as_millis),
                    connection_id,
                })
                .await?;
            print_records(ctx.format, &[record]);
        }
        Cmd::Logout {
            uid,
            sid,
            client_type,
            connection_id,
            ext,
        } => {
            let record = client
                .logout(proto::LogoutRequest {
                    uid,
                    sid,
                    client_type: client_type.unwrap_or_default(),
                    ext: ext.into_iter().collect(),
                    connection_id: connection_id.unwrap_or_default(),
                })
                .await?;
            print_records(ctx.format, &[record]);
        }
        Cmd::Permission {
            uid,
            sid,
            accept_strangers,
            ext,
        } => {
            let record = client
                .change_permission(proto::PermissionRequest {
                    uid,
                    sid,
                    accept_strangers,
                    ext: ext.into_iter().collect::<HashMap<_, _>>(),
                })
                .await?;
            print_records(ctx.format, &[record]);
        }
        Cmd::Heartbeat {
            uid,
            client_type,
            connection_id,
        } => {
            let known = client
                .heartbeat_connection(&uid, &client_type, &connection_id)
                .await?;
            let who = output::connection(&client_type, &connection_id);
            match ctx.format {
                Format::Json => print_json(&serde_json::json!({ "known": known })),
                Format::Table if known => println!("OK: {uid} ({who}) is alive"),
                Format::Table => {
                    println!(
                        "{uid} ({who}) is not logged in (expired or never logged in): log in again"
                    )
                }
            }
        }
        Cmd::Get { uid, serializable } => {
            let record = client.get_presence(&uid, consistency(serializable)).await?;
            match (ctx.format, record) {
                (Format::Json, record) => print_json(&to_json::record_opt(record.as_ref())),
                (Format::Table, Some(record)) => print_records(Format::Table, &[record]),
                (Format::Table, None) => println!("{uid}: never seen"),
            }
        }
        Cmd::Batch {
            mut uids,
            file,
            serializable,
        } => {
            if let Some(path) = file {
                uids.extend(read_uids(&path)?);
            }
            if uids.is_empty() {
                bail!("no uids given (pass them as arguments or with --file)");
            }
            let resp = client
                .batch_get_presence(uids, consistency(serializable))
                .await?;
            match ctx.format {
                Format::Json => print_json(&to_json::batch(&resp)),
                Format::Table => {
                    print_records(Format::Table, &resp.records);
                    println!("read at revision {}", resp.revision);
                }
            }
        }
        Cmd::Watch {
            uids,
            from_revision,
        } => watch(ctx, uids, from_revision).await?,
    }
    Ok(())
}

async fn watch(ctx: &Ctx, uids: Vec<String>, from_revision: u64) -> Result<()> {
    // A person watching wants it to outlast a whole-cluster restart: retry
    // reconnects forever (backoff caps at 1 s) until Ctrl-C.
    let config = ClientConfig {
        max_attempts: u32::MAX,
        ..ctx.client.config().clone()
    };
    let endpoints = ctx
        .client
        .endpoints()
        .into_iter()
        .map(String::from)
        .collect();
    let mut events = Client::with_config(endpoints, config)?.watch(uids, from_revision);
    if ctx.format == Format::Table {
        println!(
            "{:>10}  {:<10}  {:<20}  {:<8}  {:<6}  TIME",
            "REVISION", "EVENT", "UID", "CLIENT", "ONLINE"
        );
    }
    // One Ctrl-C future for the whole loop, so a signal between two events
    // is not missed.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let event = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            event = events.next() => event,
        };
        let Some(event) = event else {
            bail!("the watch ended");
        };
        let event = event?;
        match ctx.format {
            Format::Json => print_json(&to_json::event(&event)),
            Format::Table => println!(
                "{:>10}  {:<10}  {:<20}  {:<8}  {:<6}  {}",
                event.revision,
                output::event_kind(event.kind),
                event.uid,
                if event.client_type.is_empty() {
                    "-".to_string()
                } else {
                    output::connection(&event.client_type, &event.connection_id)
                },
                event
                    .record
                    .as_ref()
                    .map_or("-".into(), |r| output::yes_no(r.online)),
                output::time(event.time_ms),
            ),
        }
    }
}

fn read_uids(path: &PathBuf) -> Result<Vec<String>> {
    let reader: Box<dyn std::io::BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    let mut uids = Vec::new();
    for line in reader.lines() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        let uid = line.trim();
        if !uid.is_empty() && !uid.starts_with('#') {
            uids.push(uid.to_string());
        }
    }
    Ok(uids)
}

fn print_records(format: Format, records: &[PresenceRecord]) {
    match format {
        Format::Json => {
            if let [record] = records {
                print_json(&to_json::record(record));
            } else {
                print_json(&serde_json::Value::Array(
                    records.iter().map(to_json::record).collect(),
                ));
            }
        }
        Format::Table => {
            let mut table = Table::new(&[
                "UID",
                "SID",
                "ONLINE",
                "CLIENTS",
                "STRANGERS",
                "EXT",
                "UPDATED",
                "REVISION",
            ]);
            for r in records {
                table.row(vec![
                    r.uid.clone(),
                    output::or_dash(r.sid),
                    output::yes_no(r.online),
                    output::clients(&r.clients),
                    output::yes_no(r.accept_strangers),
                    output::ext(&r.ext),
                    output::time(r.updated_at_ms),
                    output::or_dash(r.revision),
                ]);
            }
            table.print();
        }
    }
}
