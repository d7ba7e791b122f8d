//! `heraldctl session ...`: P-handoff's interaction progress, bindings,
//! handoffs (one step, and offer/accept), the sessions of a terminal, the
//! session watch and the work log.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::{ArgGroup, Subcommand, ValueEnum};
use futures::StreamExt as _;
use herald_client::proto::{self, HandoffMode, Session};

use super::{Ctx, consistency};
use crate::args;
use crate::output::{self, Format, Table, print_json, to_json};

#[derive(Subcommand)]
pub enum Cmd {
    /// Open a session of an application on a terminal
    Connect {
        /// The terminal as kind:id (kinds: sim, msisdn, imei, mac)
        #[arg(long, value_parser = args::terminal)]
        terminal: proto::Terminal,
        /// The application's URL
        #[arg(long)]
        app: String,
        /// Capabilities a terminal needs to run the application: cap,cap
        #[arg(long, value_delimiter = ',')]
        requires: Vec<String>,
    },
    /// Record interaction progress (seq must move forward)
    #[command(group(ArgGroup::new("payload").required(true).args(["data", "data_file"])))]
    Progress {
        session_id: u64,
        /// The terminal holding the session, kind:id
        #[arg(long, value_parser = args::terminal)]
        terminal: proto::Terminal,
        /// The session's current epoch (bumped by every handoff)
        #[arg(long)]
        epoch: u64,
        /// Sequence number, greater than the last accepted one
        #[arg(long)]
        seq: u64,
        /// The progress as a string
        #[arg(long)]
        data: Option<String>,
        /// The progress as the contents of a file (at most 64 KiB)
        #[arg(long)]
        data_file: Option<PathBuf>,
    },
    /// Bind two terminals, for handoffs in binding mode
    Bind {
        /// The first terminal, kind:id
        #[arg(value_parser = args::terminal)]
        first: proto::Terminal,
        /// The second terminal, kind:id
        #[arg(value_parser = args::terminal)]
        second: proto::Terminal,
    },
    /// Show the terminal bound to a terminal
    Binding {
        /// The terminal, kind:id
        #[arg(value_parser = args::terminal)]
        terminal: proto::Terminal,
        /// Read the answering node's local state (fast, possibly stale)
        #[arg(long)]
        serializable: bool,
    },
    /// Remove a terminal's binding (both sides of the pair)
    Unbind {
        /// Either terminal of the pair, kind:id
        #[arg(value_parser = args::terminal)]
        terminal: proto::Terminal,
    },
    /// List the sessions a terminal holds
    List {
        /// The terminal, kind:id
        #[arg(long, value_parser = args::terminal)]
        terminal: proto::Terminal,
        /// Read the answering node's local state (fast, possibly stale)
        #[arg(long)]
        serializable: bool,
    },
    /// Move a session to another terminal
    Handoff {
        /// The session; 0 with --mode pull-bound takes the bound terminal's
        /// newest session (of --app when given)
        session_id: u64,
        /// push: the holder sends it; pull: a candidate takes it from
        /// --holder; pull-bound: the initiator takes it from the terminal
        /// bound to it; binding: to the terminal bound to the holder
        #[arg(long, value_enum)]
        mode: Mode,
        /// The session's epoch as the initiator saw it (a handoff at another
        /// epoch is refused as fenced); default: the session's epoch now,
        /// read first
        #[arg(long)]
        epoch: Option<u64>,
        /// For pull-bound with session 0: the application to pull
        #[arg(long)]
        app: Option<String>,
        /// The terminal that asks for the handoff, kind:id
        #[arg(long, value_parser = args::terminal)]
        initiator: proto::Terminal,
        /// A candidate, kind:id or kind:id=cap,cap; repeat to try several in
        /// order. For pull: the initiator itself with its capabilities
        /// (default: the initiator without capabilities)
        #[arg(long = "to", value_parser = args::candidate)]
        candidates: Vec<proto::Candidate>,
        /// For pull (required there): the terminal the session is taken from;
        /// it must be the current holder
        #[arg(long, value_parser = args::terminal)]
        holder: Option<proto::Terminal>,
        /// For binding: the bound terminal's capabilities, cap,cap
        #[arg(long, value_delimiter = ',')]
        bound_caps: Vec<String>,
    },
    /// Offer a session to one terminal, which confirms its own
    /// capabilities with `session accept`
    Offer {
        session_id: u64,
        /// The holder, kind:id
        #[arg(long, value_parser = args::terminal)]
        initiator: proto::Terminal,
        /// The terminal offered the session, kind:id
        #[arg(long, value_parser = args::terminal)]
        to: proto::Terminal,
        /// The session's epoch as the holder saw it; default: read first
        #[arg(long)]
        epoch: Option<u64>,
        /// How long the offer stands (e.g. 30s; at most 10m)
        #[arg(long, value_parser = args::duration, default_value = "60s")]
        ttl: std::time::Duration,
    },
    /// Accept (or, when the capabilities do not fit, decline) an offer
    Accept {
        session_id: u64,
        /// The offer id `session offer` printed
        #[arg(long)]
        offer: u64,
        /// The terminal offered the session, kind:id
        #[arg(long, value_parser = args::terminal)]
        terminal: proto::Terminal,
        /// Its capabilities: cap,cap
        #[arg(long, value_delimiter = ',')]
        caps: Vec<String>,
    },
    /// Watch session changes (one JSON object or line per event) until
    /// interrupted; moves to another node when one goes, missing nothing
    Watch {
        /// Only this session; repeat for several
        #[arg(long = "session")]
        sessions: Vec<u64>,
        /// Only sessions this terminal holds, held or was offered, kind:id;
        /// repeat for several
        #[arg(long = "terminal", value_parser = args::terminal)]
        terminals: Vec<proto::Terminal>,
        /// Deliver events from this revision on (0 = from now)
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
    /// Show a session
    Get {
        session_id: u64,
        /// Read the answering node's local state (fast, possibly stale)
        #[arg(long)]
        serializable: bool,
    },
    /// Delete a session and its work log
    Delete { session_id: u64 },
    /// Show a session's work log
    Log {
        session_id: u64,
        /// Read the answering node's local state (fast, possibly stale)
        #[arg(long)]
        serializable: bool,
    },
}

/// `--mode`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Mode {
    Push,
    Pull,
    PullBound,
    Binding,
}

impl From<Mode> for HandoffMode {
    fn from(mode: Mode) -> HandoffMode {
        match mode {
            Mode::Push => HandoffMode::Push,
            Mode::Pull => HandoffMode::Pull,
            Mode::PullBound => HandoffMode::PullBound,
            Mode::Binding => HandoffMode::Binding,
        }
    }
}

pub async fn run(cmd: Cmd, ctx: &Ctx) -> Result<()> {
    let client = &ctx.client;
    match cmd {
        Cmd::Connect {
            terminal,
            app,
            requires,
        } => {
            let session = client
                .connect_session(proto::ConnectRequest {
                    terminal: Some(terminal),
                    app_url: app,
                    capabilities: requires,
                })
                .await?;
            print_session(ctx.format, &session);
        }
        Cmd::Progress {
            session_id,
            terminal,
            epoch,
            seq,
            data,
            data_file,
        } => {
            let progress = match (data, data_file) {
                (Some(text), _) => text.into_bytes(),
                (None, Some(path)) => {
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?
                }
                (None, None) => bail!("one of --data or --data-file is required"),
            };
            let session = client
                .progress(proto::ProgressRequest {
                    session_id,
                    terminal: Some(terminal),
                    epoch,
                    seq,
                    progress,
                })
                .await?;
            print_session(ctx.format, &session);
        }
        Cmd::Bind { first, second } => {
            let (a, b) = (
                output::terminal(Some(&first)),
                output::terminal(Some(&second)),
            );
            client.bind(first, second).await?;
            match ctx.format {
                Format::Json => print_json(&serde_json::json!({})),
                Format::Table => println!("OK: {a} is bound to {b}"),
            }
        }
        Cmd::Handoff {
            session_id,
            mode,
            epoch,
            app,
            initiator,
            mut candidates,
            holder,
            bound_caps,
        } => {
            let epoch = match epoch {
                Some(e) => e,
                None if session_id == 0 => 0,
                None => current_epoch(ctx, session_id).await?,
            };
            if matches!(mode, Mode::Pull | Mode::PullBound) && candidates.is_empty() {
                candidates.push(proto::Candidate {
                    terminal: Some(initiator.clone()),
                    capabilities: Vec::new(),
                });
            }
            let resp = client
                .handoff(proto::HandoffRequest {
                    session_id,
                    mode: HandoffMode::from(mode) as i32,
                    initiator: Some(initiator),
                    candidates,
                    bound_capabilities: bound_caps,
                    holder,
                    epoch,
                    app_url: app.unwrap_or_default(),
                })
                .await?;
            let refused = resp
                .refused
                .iter()
                .map(|t| output::terminal(Some(t)))
                .collect::<Vec<_>>();
            match ctx.format {
                Format::Json => print_json(&to_json::handoff(&resp)),
                Format::Table => {
                    if let Some(session) = &resp.session {
                        print_session(Format::Table, session);
                    }
                    if !refused.is_empty() {
                        println!("refused (incompatible): {}", refused.join(", "));
                    }
                }
            }
            if !resp.accepted {
                bail!("handoff refused: no candidate is compatible with the application");
            }
        }
        Cmd::Binding {
            terminal,
            serializable,
        } => {
            let name = output::terminal(Some(&terminal));
            let bound = client
                .get_binding(terminal, consistency(serializable))
                .await?;
            match ctx.format {
                Format::Json => print_json(&serde_json::json!({
                    "terminal": name,
                    "bound": bound.as_ref().map(to_json::terminal),
                })),
                Format::Table => match &bound {
                    Some(b) => println!("{name} is bound to {}", output::terminal(Some(b))),
                    None => println!("{name} is not bound"),
                },
            }
        }
        Cmd::Unbind { terminal } => {
            let name = output::terminal(Some(&terminal));
            let other = client.unbind(terminal).await?;
            match ctx.format {
                Format::Json => print_json(&serde_json::json!({
                    "was_bound_to": to_json::terminal(&other),
                })),
                Format::Table => println!(
                    "OK: {name} is no longer bound to {}",
                    output::terminal(Some(&other))
                ),
            }
        }
        Cmd::List {
            terminal,
            serializable,
        } => {
            let sessions = client
                .list_sessions(terminal, consistency(serializable))
                .await?;
            match ctx.format {
                Format::Json => print_json(&serde_json::json!({
                    "sessions": sessions.iter().map(to_json::session).collect::<Vec<_>>()
                })),
                Format::Table => print_sessions(&sessions),
            }
        }
        Cmd::Offer {
            session_id,
            initiator,
            to,
            epoch,
            ttl,
        } => {
            let epoch = match epoch {
                Some(e) => e,
                None => current_epoch(ctx, session_id).await?,
            };
            let session = client
                .offer_handoff(proto::OfferHandoffRequest {
                    session_id,
                    initiator: Some(initiator),
                    epoch,
                    to: Some(to),
                    ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
                })
                .await?;
            match ctx.format {
                Format::Json => print_json(&to_json::session(&session)),
                Format::Table => {
                    print_session(Format::Table, &session);
                    if let Some(o) = &session.offer {
                        println!(
                            "offer {} to {} until {}",
                            o.offer_id,
                            output::terminal(o.to.as_ref()),
                            output::time(o.expires_ms)
                        );
                    }
                }
            }
        }
        Cmd::Accept {
            session_id,
            offer,
            terminal,
            caps,
        } => {
            let resp = client
                .accept_handoff(proto::AcceptHandoffRequest {
                    session_id,
                    offer_id: offer,
                    terminal: Some(terminal),
                    capabilities: caps,
                })
                .await?;
            match ctx.format {
                Format::Json => print_json(&to_json::handoff(&resp)),
                Format::Table => {
                    if let Some(session) = &resp.session {
                        print_session(Format::Table, session);
                    }
                }
            }
            if !resp.accepted {
                bail!("offer declined: the terminal lacks a capability the application requires");
            }
        }
        Cmd::Watch {
            sessions,
            terminals,
            from,
        } => {
            // Resumed on another node when one goes, nothing missed.
            let mut stream = client.watch_sessions_resumed(proto::WatchSessionsRequest {
                session_ids: sessions,
                terminals,
                start_revision: from,
            });
            while let Some(event) = stream.next().await {
                let e = event?;
                match ctx.format {
                    Format::Json => println!("{}", to_json::session_event(&e)),
                    Format::Table => {
                        let kind = proto::SessionEventKind::try_from(e.kind)
                            .map_or("UNKNOWN", |k| k.as_str_name());
                        let s = e.session.as_ref();
                        println!(
                            "{} {} session {} on {} epoch {}{}{}",
                            e.revision,
                            kind.trim_start_matches("SESSION_").to_lowercase(),
                            s.map_or(0, |s| s.session_id),
                            output::terminal(s.and_then(|s| s.terminal.as_ref())),
                            s.map_or(0, |s| s.epoch),
                            e.from
                                .as_ref()
                                .map(|t| format!(" from {}", output::terminal(Some(t))))
                                .unwrap_or_default(),
                            e.to.as_ref()
                                .map(|t| format!(" to {}", output::terminal(Some(t))))
                                .unwrap_or_default(),
                        );
                    }
                }
            }
        }
        Cmd::Get {
            session_id,
            serializable,
        } => {
            let session = client
                .get_session(session_id, consistency(serializable))
                .await?;
            print_session(ctx.format, &session);
        }
        Cmd::Log {
            session_id,
            serializable,
        } => {
            let entries = client
                .session_log(session_id, consistency(serializable))
                .await?;
            print_log(ctx, &entries);
        }
        Cmd::Delete { session_id } => {
            ctx.client.delete_session(session_id).await?;
            match ctx.format {
                Format::Json => print_json(&serde_json::json!({})),
                Format::Table => println!("deleted session {session_id}"),
            }
        }
    }
    Ok(())
}

fn print_log(ctx: &Ctx, entries: &[proto::WorkLogEntry]) {
    match ctx.format {
        Format::Json => print_json(&serde_json::json!({
            "entries": entries.iter().map(to_json::work_log_entry).collect::<Vec<_>>()
        })),
        Format::Table => {
            let mut table = Table::new(&[
                "REVISION", "TIME", "EVENT", "TERMINAL", "EPOCH", "SEQ", "DETAIL",
            ]);
            for e in entries {
                table.row(vec![
                    e.revision.to_string(),
                    output::time(e.time_ms),
                    e.event.clone(),
                    output::terminal(e.terminal.as_ref()),
                    e.epoch.to_string(),
                    e.seq.to_string(),
                    if e.detail.is_empty() {
                        "-".into()
                    } else {
                        e.detail.clone()
                    },
                ]);
            }
            table.print();
        }
    }
}

/// The session's epoch now, for a handoff or offer that did not name one.
async fn current_epoch(ctx: &Ctx, session_id: u64) -> Result<u64> {
    let session = ctx
        .client
        .get_session(session_id, consistency(false))
        .await?;
    Ok(session.epoch)
}

fn print_sessions(sessions: &[Session]) {
    let mut table = Table::new(&["SESSION", "APP URL", "EPOCH", "SEQ", "OFFER", "UPDATED"]);
    for s in sessions {
        table.row(vec![
            s.session_id.to_string(),
            s.app_url.clone(),
            s.epoch.to_string(),
            s.seq.to_string(),
            s.offer.as_ref().map_or("-".into(), |o| {
                format!("{} to {}", o.offer_id, output::terminal(o.to.as_ref()))
            }),
            output::time(s.updated_ms),
        ]);
    }
    table.print();
}

fn print_session(format: Format, s: &Session) {
    match format {
        Format::Json => print_json(&to_json::session(s)),
        Format::Table => {
            let mut table = Table::new(&[
                "SESSION", "APP URL", "TERMINAL", "EPOCH", "SEQ", "PROGRESS", "REQUIRES", "UPDATED",
            ]);
            table.row(vec![
                s.session_id.to_string(),
                s.app_url.clone(),
                output::terminal(s.terminal.as_ref()),
                s.epoch.to_string(),
                s.seq.to_string(),
                output::bytes_preview(&s.progress),
                output::list(&s.requires),
                output::time(s.updated_ms),
            ]);
            table.print();
        }
    }
}
