//! `heraldctl session ...`: P-handoff's interaction progress, bindings,
//! handoffs and the work log.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::{ArgGroup, Subcommand, ValueEnum};
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
    /// Move a session to another terminal
    Handoff {
        session_id: u64,
        /// push: the holder sends it; pull: a candidate takes it; binding: to
        /// the terminal bound to the holder
        #[arg(long, value_enum)]
        mode: Mode,
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
    Binding,
}

impl From<Mode> for HandoffMode {
    fn from(mode: Mode) -> HandoffMode {
        match mode {
            Mode::Push => HandoffMode::Push,
            Mode::Pull => HandoffMode::Pull,
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
            initiator,
            mut candidates,
            holder,
            bound_caps,
        } => {
            if matches!(mode, Mode::Pull) && candidates.is_empty() {
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
