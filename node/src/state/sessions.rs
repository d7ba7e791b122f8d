//! Session progress and handoff (P-handoff).
//!
//! A terminal connects to an application and records opaque progress under a
//! sequence number that only moves forward (up to [`MAX_SEQ`]). A handoff
//! moves the session to another terminal: pushed by the holder, pulled by the
//! new terminal naming the holder, pulled by the new terminal through its
//! stored binding (the patent's Fig. 3: the holder is found, not named), or
//! through the holder's binding. The first candidate that has every
//! capability the application requires wins; the session's epoch goes up,
//! and from then on the old terminal's writes are refused (fencing), because
//! they carry the old epoch. A handoff request carries the epoch its
//! initiator last saw, so a stale instance of the holder cannot hand the
//! session away either.
//!
//! The one-step handoff trusts the capabilities its initiator states. The
//! two-step form does not: the holder [`OfferHandoff`]s the session to one
//! terminal, which is told through the session watch and confirms its own
//! capabilities with [`AcceptHandoff`] before the offer's deadline.
//!
//! Every event of a session goes to its bounded work log, and every change
//! to this replica's [`SessionEvent`] history, which session watches (by
//! session or by terminal) read and resume from.
//!
//! [`Terminal`]s are validated and normalized once, by [`Terminal::new`], so
//! two spellings of one MAC or MSISDN are the same terminal everywhere.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::history::{History, Revisioned};
use super::limits::{
    MAX_APP_URL_BYTES, MAX_CANDIDATES, MAX_OFFER_TTL_MS, MAX_PROGRESS_BYTES, MAX_SEQ, WORK_LOG_LEN,
    check_bytes, check_capabilities, check_len,
};
use super::quotas::{Quotas, over};
use super::{Entry, Reason, StateError};

/// How a terminal is identified.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TerminalKind {
    /// Not set (the proto default); never valid.
    Unspecified,
    /// A SIM card's ICCID: 18-22 digits starting with 89.
    Sim,
    /// A phone number in E.164: 8-15 digits, stored without the '+'.
    Msisdn,
    /// A phone's IMEI: 15 digits, the last a Luhn check digit.
    Imei,
    /// A PC's MAC address, stored as lowercase `aa:bb:cc:dd:ee:ff`.
    Mac,
}

impl TerminalKind {
    /// Lowercase name, as used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            TerminalKind::Unspecified => "unspecified",
            TerminalKind::Sim => "sim",
            TerminalKind::Msisdn => "msisdn",
            TerminalKind::Imei => "imei",
            TerminalKind::Mac => "mac",
        }
    }
}

/// A validated terminal id in normal form.
///
/// The fields are private so that a `Terminal` built in code is always valid
/// and normalized; [`Command::validate`](super::Command::validate) checks
/// again for ones that arrive deserialized.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Terminal {
    kind: TerminalKind,
    id: String,
}

impl Terminal {
    /// Validates `id` as a terminal id of `kind` and normalizes it (MSISDN
    /// without '+', MAC lowercase with ':'). Errors name `terminal.kind` or
    /// `terminal.id`.
    pub fn new(kind: TerminalKind, id: &str) -> Result<Terminal, StateError> {
        Terminal::parse("terminal", kind, id)
    }

    /// How the terminal is identified.
    pub fn kind(&self) -> TerminalKind {
        self.kind
    }

    /// The normalized id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// [`Terminal::new`] with errors naming `{field}.kind` / `{field}.id`.
    pub(crate) fn parse(field: &str, kind: TerminalKind, id: &str) -> Result<Terminal, StateError> {
        let bad = |reason: String| StateError::invalid(format!("{field}.id"), reason);
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let id = match kind {
            TerminalKind::Unspecified => {
                return Err(StateError::invalid(
                    format!("{field}.kind"),
                    "must be one of sim, msisdn, imei, mac",
                ));
            }
            TerminalKind::Sim => {
                if !(digits(id) && (18..=22).contains(&id.len()) && id.starts_with("89")) {
                    return Err(bad(format!(
                        "a SIM id (ICCID) must be 18..=22 digits starting with 89, got {id:?}"
                    )));
                }
                id.to_owned()
            }
            TerminalKind::Msisdn => {
                let number = id.strip_prefix('+').unwrap_or(id);
                if !(digits(number) && (8..=15).contains(&number.len())) {
                    return Err(bad(format!(
                        "an MSISDN must be E.164: an optional '+' and 8..=15 digits, got {id:?}"
                    )));
                }
                number.to_owned()
            }
            TerminalKind::Imei => {
                if !(digits(id) && id.len() == 15) {
                    return Err(bad(format!(
                        "an IMEI must be exactly 15 digits, got {id:?}"
                    )));
                }
                if !luhn_valid(id) {
                    return Err(bad(format!("IMEI {id} fails its Luhn check digit")));
                }
                id.to_owned()
            }
            TerminalKind::Mac => normalize_mac(id).ok_or_else(|| {
                bad(format!(
                    "a MAC must be six hex octets separated by ':' or '-', got {id:?}"
                ))
            })?,
        };
        Ok(Terminal { kind, id })
    }

    /// Checks a terminal that may not have come through [`Terminal::new`]
    /// (deserialized from a proposal): it must be valid and in normal form.
    pub(crate) fn check(&self, field: &str) -> Result<(), StateError> {
        let normal = Terminal::parse(field, self.kind, &self.id)?;
        if normal != *self {
            return Err(StateError::invalid(
                format!("{field}.id"),
                format!("must be in normal form {:?}, got {:?}", normal.id, self.id),
            ));
        }
        Ok(())
    }
}

impl fmt::Display for Terminal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.id)
    }
}

/// Luhn check over ASCII digits (the last one is the check digit).
fn luhn_valid(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let dd = d * 2;
                if dd > 9 { dd - 9 } else { dd }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// `aa:BB:cc:dd:ee:ff` or `aa-bb-...` (one separator throughout) to
/// lowercase with ':'.
fn normalize_mac(id: &str) -> Option<String> {
    let sep = if id.contains(':') { ':' } else { '-' };
    let octets: Vec<&str> = id.split(sep).collect();
    let ok = octets.len() == 6
        && octets
            .iter()
            .all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()));
    ok.then(|| octets.join(":").to_ascii_lowercase())
}

/// A terminal's interaction with an application, as every replica holds it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The log index of the connect that created it.
    pub session_id: u64,
    /// The application.
    pub app_url: String,
    /// Capabilities a terminal needs to run the application.
    pub requires: Vec<String>,
    /// The terminal that holds the session now.
    pub terminal: Terminal,
    /// Starts at 1, bumped by every handoff; fences the old terminal.
    pub epoch: u64,
    /// Last accepted progress sequence number (0 = none yet).
    pub seq: u64,
    /// Last accepted progress.
    pub progress: Vec<u8>,
    /// Cluster time of the connect.
    pub created_ms: u64,
    /// Cluster time of the last progress or handoff.
    pub updated_ms: u64,
    /// The holder's pending two-step offer, if any.
    pub offer: Option<Offer>,
}

/// A holder's offer of its session to one terminal, waiting for that
/// terminal to confirm its capabilities ([`AcceptHandoff`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    /// The log index of the offer; an accept names it.
    pub offer_id: u64,
    /// The terminal offered the session.
    pub to: Terminal,
    /// Cluster time after which the offer no longer counts.
    pub expires_ms: u64,
}

/// What a work-log entry records.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkEvent {
    /// The session was created.
    Connect,
    /// Progress was recorded.
    Progress,
    /// The holder was bound to another terminal.
    Bind,
    /// The session moved to another terminal.
    Handoff,
    /// A handoff candidate did not fit.
    HandoffRefused,
    /// The holder's binding was removed.
    Unbind,
    /// The holder offered the session to a terminal.
    Offer,
    /// An offer ended without a handoff (declined, expired or replaced).
    OfferEnded,
}

impl WorkEvent {
    /// The name used on the wire: connect, progress, bind, handoff,
    /// handoff_refused, unbind, offer, offer_ended.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkEvent::Connect => "connect",
            WorkEvent::Progress => "progress",
            WorkEvent::Bind => "bind",
            WorkEvent::Handoff => "handoff",
            WorkEvent::HandoffRefused => "handoff_refused",
            WorkEvent::Unbind => "unbind",
            WorkEvent::Offer => "offer",
            WorkEvent::OfferEnded => "offer_ended",
        }
    }
}

/// One event in a session's work log.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WorkLogEntry {
    /// Log index of the command (one command may log several entries).
    pub revision: u64,
    /// Cluster time of the command.
    pub time_ms: u64,
    /// What happened.
    pub event: WorkEvent,
    /// The terminal concerned: the holder, the new holder, or the refused
    /// candidate.
    pub terminal: Terminal,
    /// The session's epoch after the event.
    pub epoch: u64,
    /// The session's sequence number after the event.
    pub seq: u64,
    /// Human-readable detail (the URL, the reason a candidate was refused).
    pub detail: String,
}

/// Who starts a handoff.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandoffMode {
    /// The holder sends the session to the first fitting candidate.
    Push,
    /// The initiator (the only candidate) takes the session from `holder`.
    Pull,
    /// The holder sends the session to its bound terminal, then on to the
    /// candidates if that one does not fit.
    Binding,
    /// The initiator (the only candidate) takes the session from the
    /// terminal bound to it, found through the binding (patent Fig. 3).
    PullBound,
}

/// A terminal offered to take a session, with what it can do.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The terminal.
    pub terminal: Terminal,
    /// Its capabilities; it fits when they include all the session requires.
    pub capabilities: Vec<String>,
}

/// The result of a handoff: accepted or refused, never an error once the
/// request itself is allowed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HandoffOutcome {
    /// True when a candidate took the session.
    pub accepted: bool,
    /// The session after the handoff (unchanged when refused).
    pub session: Session,
    /// Candidates that did not fit, in the order tried.
    pub refused: Vec<Terminal>,
}

/// Creates a session held by `terminal`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    /// The terminal connecting.
    pub terminal: Terminal,
    /// 1..=2048 bytes, `scheme://...`.
    pub app_url: String,
    /// Capabilities the application needs; at most 64 of 1..=64 bytes.
    pub requires: Vec<String>,
}

/// Deletes a session and its work log (its holder's later writes are
/// answered "not found").
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DeleteSession {
    /// The session.
    pub session_id: u64,
}

/// Records progress of a session.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The session.
    pub session_id: u64,
    /// Must be the holder.
    pub terminal: Terminal,
    /// Must be the session's current epoch.
    pub epoch: u64,
    /// Must be greater than the last accepted one, and at most [`MAX_SEQ`].
    pub seq: u64,
    /// At most 64 KiB, replaces the stored progress.
    pub data: Vec<u8>,
}

/// Binds two terminals to each other (replacing their old bindings).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    /// One side.
    pub first: Terminal,
    /// The other side; must differ from `first`.
    pub second: Terminal,
}

/// Moves a session to another terminal.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Handoff {
    /// The session. PullBound may leave it 0: the bound terminal's most
    /// recently updated session (of `app_url` when given).
    pub session_id: u64,
    /// Who starts it.
    pub mode: HandoffMode,
    /// Push and Binding: the holder. Pull and PullBound: the terminal taking
    /// the session.
    pub initiator: Terminal,
    /// The session's epoch as the initiator last saw it; a handoff at any
    /// other epoch is refused as fenced. Required (at least 1), except for
    /// PullBound without a session id, where 0 takes any epoch.
    pub epoch: u64,
    /// Pull only (required there): the terminal the initiator believes holds
    /// the session; it must.
    pub holder: Option<Terminal>,
    /// Tried in order (at most 64). Push: at least one. Pull and PullBound:
    /// exactly the initiator. Binding: tried after the bound terminal.
    pub candidates: Vec<Candidate>,
    /// Binding only: the bound terminal's capabilities.
    pub bound_capabilities: Vec<String>,
    /// PullBound with session id 0 only: the application to pull ("" =
    /// whichever session the bound terminal updated last).
    pub app_url: String,
}

/// Removes a terminal's binding (both sides of the pair).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Unbind {
    /// Either side of the pair.
    pub terminal: Terminal,
}

/// The holder offers its session to one terminal (two-step handoff). A new
/// offer replaces the session's pending one.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct OfferHandoff {
    /// The session.
    pub session_id: u64,
    /// The holder.
    pub initiator: Terminal,
    /// The session's epoch as the holder last saw it.
    pub epoch: u64,
    /// The terminal offered the session; not the holder.
    pub to: Terminal,
    /// How long the offer stands, 1 ms ..= [`MAX_OFFER_TTL_MS`]; 0 = 60 s.
    pub ttl_ms: u64,
}

/// The offered terminal confirms its capabilities: the session moves to it
/// when they include everything the application requires, and the offer
/// ends either way.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AcceptHandoff {
    /// The session.
    pub session_id: u64,
    /// The offer, as the session watch or the session told it.
    pub offer_id: u64,
    /// The terminal accepting; must be the one offered the session.
    pub terminal: Terminal,
    /// Its own capabilities (at most 64 of 1..=64 bytes).
    pub capabilities: Vec<String>,
}

/// The default lifetime of an offer.
pub const DEFAULT_OFFER_TTL_MS: u64 = 60_000;

/// What kind of change a [`SessionEvent`] records.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionEventKind {
    /// A terminal connected: the session was created.
    Connected,
    /// The holder recorded progress.
    Progress,
    /// The session moved to another terminal (any handoff, or an accepted
    /// offer); `from` is the terminal that held it.
    HandedOff,
    /// The holder offered the session to `to`.
    Offered,
    /// An offer to `to` ended without a handoff: declined, expired or
    /// replaced.
    OfferEnded,
    /// The session was deleted (by a call or by the session retention).
    Deleted,
}

/// One change of one session, as a session watch delivers it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SessionEvent {
    /// Log index of the change.
    pub revision: u64,
    /// Cluster time of the change.
    pub time_ms: u64,
    /// What happened.
    pub kind: SessionEventKind,
    /// The session after the change (before it, for `Deleted`). Shared with
    /// other watchers; progress included.
    pub session: Arc<Session>,
    /// `HandedOff`: the terminal that held the session before.
    pub from: Option<Terminal>,
    /// `Offered` and `OfferEnded`: the terminal offered the session.
    pub to: Option<Terminal>,
}

impl SessionEvent {
    /// Whether a watch on `terminal` sees this event: the terminal holds
    /// the session (before or after) or was offered it.
    pub fn involves(&self, terminal: &Terminal) -> bool {
        self.session.terminal == *terminal
            || self.from.as_ref() == Some(terminal)
            || self.to.as_ref() == Some(terminal)
    }
}

impl Revisioned for SessionEvent {
    fn revision(&self) -> u64 {
        self.revision
    }
}

/// What one kept event costs in memory, near enough to bound the history.
fn session_event_bytes(e: &SessionEvent) -> u64 {
    let s = &e.session;
    let terminal = |t: &Terminal| t.id().len() + 32;
    (256 + s.app_url.len()
        + s.requires.iter().map(|r| r.len() + 24).sum::<usize>()
        + s.progress.len()
        + terminal(&s.terminal)
        + e.from.as_ref().map_or(0, terminal)
        + e.to.as_ref().map_or(0, terminal)) as u64
}

/// `scheme://rest` with an RFC 3986 scheme, a non-empty rest and no spaces
/// or control characters.
fn check_app_url(url: &str) -> Result<(), StateError> {
    check_len("app_url", url, 1, MAX_APP_URL_BYTES)?;
    let bad = || {
        StateError::invalid(
            "app_url",
            format!("must be scheme://... (http://, https:// or another scheme), got {url:?}"),
        )
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok || rest.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    Ok(())
}

impl Connect {
    /// Field limits and formats.
    pub fn validate(&self) -> Result<(), StateError> {
        self.terminal.check("terminal")?;
        check_app_url(&self.app_url)?;
        check_capabilities("requires", &self.requires)
    }
}

impl Progress {
    /// Field limits.
    pub fn validate(&self) -> Result<(), StateError> {
        self.terminal.check("terminal")?;
        check_seq(self.seq)?;
        // Named as on the wire (ProgressRequest.progress).
        check_bytes("progress", &self.data, MAX_PROGRESS_BYTES)
    }
}

impl Bind {
    /// Both terminals valid and different.
    pub fn validate(&self) -> Result<(), StateError> {
        self.first.check("first")?;
        self.second.check("second")?;
        if self.first == self.second {
            return Err(StateError::invalid(
                "second",
                format!("must differ from first, both are {}", self.first),
            ));
        }
        Ok(())
    }
}

impl Handoff {
    /// Field limits, and the shape each mode needs.
    pub fn validate(&self) -> Result<(), StateError> {
        self.initiator.check("initiator")?;
        if self.candidates.len() > MAX_CANDIDATES {
            return Err(StateError::invalid(
                "candidates",
                format!(
                    "must have at most {MAX_CANDIDATES} entries, got {}",
                    self.candidates.len()
                ),
            ));
        }
        for (i, c) in self.candidates.iter().enumerate() {
            c.terminal.check(&format!("candidates[{i}].terminal"))?;
            check_capabilities(&format!("candidates[{i}].capabilities"), &c.capabilities)?;
        }
        check_capabilities("bound_capabilities", &self.bound_capabilities)?;
        match self.mode {
            HandoffMode::Push => {
                if self.candidates.is_empty() {
                    return Err(StateError::invalid(
                        "candidates",
                        "push needs at least one candidate",
                    ));
                }
            }
            HandoffMode::Pull | HandoffMode::PullBound => {
                if self.mode == HandoffMode::Pull {
                    let Some(holder) = &self.holder else {
                        return Err(StateError::invalid("holder", "required for pull"));
                    };
                    holder.check("holder")?;
                }
                if self.candidates.len() != 1 || self.candidates[0].terminal != self.initiator {
                    return Err(StateError::invalid(
                        "candidates",
                        "a pull needs exactly one candidate: the initiator with its capabilities",
                    ));
                }
            }
            HandoffMode::Binding => {}
        }
        if self.mode != HandoffMode::Pull && self.holder.is_some() {
            return Err(StateError::invalid("holder", "only used by pull"));
        }
        let any_session = self.mode == HandoffMode::PullBound && self.session_id == 0;
        if self.epoch == 0 && !any_session {
            return Err(StateError::invalid(
                "epoch",
                "required: the session's epoch as the initiator last saw it (1 or more)",
            ));
        }
        if any_session {
            if self.epoch != 0 {
                return Err(StateError::invalid(
                    "epoch",
                    "must be 0 when session_id is 0: the session is not known yet",
                ));
            }
            if !self.app_url.is_empty() {
                check_app_url(&self.app_url)?;
            }
        } else if !self.app_url.is_empty() {
            return Err(StateError::invalid(
                "app_url",
                "only used by pull_bound with session_id 0",
            ));
        }
        Ok(())
    }
}

impl Unbind {
    /// A valid terminal.
    pub fn validate(&self) -> Result<(), StateError> {
        self.terminal.check("terminal")
    }
}

impl OfferHandoff {
    /// Terminals valid and different, an epoch, a bounded lifetime.
    pub fn validate(&self) -> Result<(), StateError> {
        self.initiator.check("initiator")?;
        self.to.check("to")?;
        if self.to == self.initiator {
            return Err(StateError::invalid(
                "to",
                format!("must differ from the initiator, both are {}", self.to),
            ));
        }
        if self.epoch == 0 {
            return Err(StateError::invalid(
                "epoch",
                "required: the session's epoch as the holder last saw it (1 or more)",
            ));
        }
        if self.ttl_ms > MAX_OFFER_TTL_MS {
            return Err(StateError::invalid(
                "ttl_ms",
                format!(
                    "must be at most {MAX_OFFER_TTL_MS} ms (0 = {DEFAULT_OFFER_TTL_MS}), got {}",
                    self.ttl_ms
                ),
            ));
        }
        Ok(())
    }
}

impl AcceptHandoff {
    /// A valid terminal, an offer id, bounded capabilities.
    pub fn validate(&self) -> Result<(), StateError> {
        self.terminal.check("terminal")?;
        if self.offer_id == 0 {
            return Err(StateError::invalid("offer_id", "required"));
        }
        check_capabilities("capabilities", &self.capabilities)
    }
}

/// A progress sequence number: 1 ..= [`MAX_SEQ`].
fn check_seq(seq: u64) -> Result<(), StateError> {
    if seq == 0 || seq > MAX_SEQ {
        return Err(StateError::invalid(
            "seq",
            format!("must be 1..={MAX_SEQ}, got {seq}"),
        ));
    }
    Ok(())
}

/// Every session, its work log, and the terminal bindings.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub(crate) struct Sessions {
    sessions: BTreeMap<u64, Session>,
    /// The newest [`WORK_LOG_LEN`] entries of each session.
    logs: BTreeMap<u64, VecDeque<WorkLogEntry>>,
    /// Symmetric: `a -> b` exactly when `b -> a`.
    bindings: BTreeMap<Terminal, Terminal>,
    /// (holder, session id): which sessions a terminal holds, so a bind can
    /// log to them without scanning every session.
    held: BTreeSet<(Terminal, u64)>,
    /// (updated_ms, session id) of every session, oldest first, so the
    /// session retention deletes from the front instead of scanning.
    /// Derived from `sessions` (rebuilt by [`Sessions::restored`]).
    #[serde(skip)]
    idle: BTreeSet<(u64, u64)>,
    /// (expires_ms, session id) of every pending offer, soonest first.
    /// Derived from `sessions`.
    #[serde(skip)]
    offers: BTreeSet<(u64, u64)>,
    /// This replica's recent session changes, for watches.
    #[serde(skip)]
    history: History<SessionEvent>,
    /// The byte budget of `history` (`quotas.watch_history_bytes`; 0 = the
    /// default), set by the state before each apply.
    #[serde(skip)]
    pub(crate) history_budget: u64,
}

impl Sessions {
    /// After loading a snapshot taken at `last_index`: rebuilds the derived
    /// indexes; the watch history starts empty, compacted up to there.
    pub(crate) fn restored(&mut self, last_index: u64) {
        self.idle = self
            .sessions
            .values()
            .map(|s| (s.updated_ms, s.session_id))
            .collect();
        self.offers = self
            .sessions
            .values()
            .filter_map(|s| s.offer.as_ref().map(|o| (o.expires_ms, s.session_id)))
            .collect();
        self.history.restored(last_index);
    }

    /// What a snapshot encodes: everything but the watch history.
    pub(crate) fn snapshot_view(&self) -> Sessions {
        Sessions {
            sessions: self.sessions.clone(),
            logs: self.logs.clone(),
            bindings: self.bindings.clone(),
            held: self.held.clone(),
            idle: BTreeSet::new(),
            offers: BTreeSet::new(),
            history: History::default(),
            history_budget: self.history_budget,
        }
    }

    /// Bytes the watch history accounts for.
    pub(crate) fn history_bytes(&self) -> u64 {
        self.history.bytes()
    }

    /// Calls `f` on every session event with `revision >= start` (0 = every
    /// kept one), in revision order; an error when they were compacted.
    pub(crate) fn visit_events_since(
        &self,
        start: u64,
        f: impl FnMut(&SessionEvent),
    ) -> Result<(), StateError> {
        self.history.visit_since(start, f)
    }

    /// The sessions `terminal` holds with an id above `after`, by id, at
    /// most `limit`.
    pub(crate) fn held_by(&self, terminal: &Terminal, after: u64, limit: usize) -> Vec<&Session> {
        if after == u64::MAX {
            return Vec::new();
        }
        self.held
            .range((terminal.clone(), after + 1)..=(terminal.clone(), u64::MAX))
            .take(limit)
            .filter_map(|(_, id)| self.sessions.get(id))
            .collect()
    }

    /// Whether a connect fits the quotas: `sessions` in all and
    /// `sessions_per_terminal` for the connecting terminal.
    pub(crate) fn admit_connect(&self, q: &Quotas, cmd: &Connect) -> Result<(), StateError> {
        if self.sessions.len() as u64 >= q.sessions {
            return Err(over(
                "sessions",
                q.sessions,
                format!("{} sessions are kept", self.sessions.len()),
            ));
        }
        let t = &cmd.terminal;
        let held = self
            .held
            .range((t.clone(), 0)..=(t.clone(), u64::MAX))
            .take(q.sessions_per_terminal as usize)
            .count();
        if held >= q.sessions_per_terminal as usize {
            return Err(over(
                "sessions_per_terminal",
                q.sessions_per_terminal,
                format!("terminal {t} holds {held} sessions"),
            ));
        }
        Ok(())
    }

    /// Whether a bind fits the `bindings` quota: a new pair is refused when
    /// the quota is reached; rebinding a bound terminal replaces its pair.
    pub(crate) fn admit_bind(&self, q: &Quotas, cmd: &Bind) -> Result<(), StateError> {
        let pairs = self.bindings.len() as u64 / 2;
        let replaces =
            self.bindings.contains_key(&cmd.first) || self.bindings.contains_key(&cmd.second);
        if !replaces && pairs >= q.bindings {
            return Err(over(
                "bindings",
                q.bindings,
                format!("{pairs} terminal pairs are bound"),
            ));
        }
        Ok(())
    }

    /// Deletes every session idle since `now - retention_ms` or longer, with
    /// its work log (0 = never), and ends every offer past its deadline.
    /// Runs before every command, by entry time.
    pub(crate) fn forget_idle(&mut self, at: Entry, retention_ms: u64) {
        while let Some(&(expires, id)) = self.offers.first() {
            if expires > at.time_ms {
                break;
            }
            self.end_offer(at, id, "expired".to_owned());
        }
        if retention_ms == 0 {
            return;
        }
        while let Some(&(updated, id)) = self.idle.first() {
            if updated.saturating_add(retention_ms) > at.time_ms {
                break;
            }
            if let Some(s) = self.sessions.get(&id) {
                let before = Arc::new(s.clone());
                self.push_event(at, SessionEventKind::Deleted, before, None, None);
            }
            self.remove(id);
        }
    }

    /// When an offer next expires, if any.
    pub(crate) fn next_offer_expiry(&self) -> Option<u64> {
        self.offers.first().map(|&(expires, _)| expires)
    }

    /// When the session retention next deletes a session, if ever.
    pub(crate) fn next_forget(&self, retention_ms: u64) -> Option<u64> {
        if retention_ms == 0 {
            return None;
        }
        let &(updated, _) = self.idle.first()?;
        Some(updated.saturating_add(retention_ms))
    }

    /// Deletes a session and its work log.
    pub(crate) fn delete(&mut self, at: Entry, cmd: &DeleteSession) -> Result<(), StateError> {
        let Some(s) = self.sessions.get(&cmd.session_id) else {
            return Err(StateError::not_found(format!("session {}", cmd.session_id)));
        };
        let before = Arc::new(s.clone());
        self.push_event(at, SessionEventKind::Deleted, before, None, None);
        self.remove(cmd.session_id);
        Ok(())
    }

    fn remove(&mut self, id: u64) {
        if let Some(s) = self.sessions.remove(&id) {
            self.idle.remove(&(s.updated_ms, id));
            self.held.remove(&(s.terminal, id));
            if let Some(o) = s.offer {
                self.offers.remove(&(o.expires_ms, id));
            }
        }
        self.logs.remove(&id);
    }

    /// Sessions kept.
    pub(crate) fn len(&self) -> usize {
        self.sessions.len()
    }

    pub(crate) fn get(&self, id: u64) -> Option<&Session> {
        self.sessions.get(&id)
    }

    pub(crate) fn log(&self, id: u64) -> Option<Vec<WorkLogEntry>> {
        self.logs.get(&id).map(|log| log.iter().cloned().collect())
    }

    /// The terminal bound to `terminal`, if any.
    pub(crate) fn binding(&self, terminal: &Terminal) -> Option<&Terminal> {
        self.bindings.get(terminal)
    }

    pub(crate) fn connect(&mut self, at: Entry, cmd: &Connect) -> Session {
        let session = Session {
            session_id: at.index,
            app_url: cmd.app_url.clone(),
            requires: cmd.requires.clone(),
            terminal: cmd.terminal.clone(),
            epoch: 1,
            seq: 0,
            progress: Vec::new(),
            created_ms: at.time_ms,
            updated_ms: at.time_ms,
            offer: None,
        };
        debug_assert!(
            !self.sessions.contains_key(&at.index),
            "session ids are log indexes"
        );
        self.held
            .insert((session.terminal.clone(), session.session_id));
        self.idle.insert((session.updated_ms, session.session_id));
        self.sessions.insert(session.session_id, session.clone());
        self.write_log(
            at,
            &session,
            WorkEvent::Connect,
            &session.terminal,
            cmd.app_url.clone(),
        );
        let event = Arc::new(session.clone());
        self.push_event(at, SessionEventKind::Connected, event, None, None);
        session
    }

    pub(crate) fn progress(&mut self, at: Entry, cmd: &Progress) -> Result<Session, StateError> {
        let session = self
            .sessions
            .get_mut(&cmd.session_id)
            .ok_or_else(|| StateError::not_found(format!("session {}", cmd.session_id)))?;
        if cmd.terminal != session.terminal || cmd.epoch != session.epoch {
            return Err(fenced(session));
        }
        if cmd.seq <= session.seq {
            return Err(StateError::precondition(
                Reason::StaleSequence,
                format!("stale sequence {}, last accepted {}", cmd.seq, session.seq),
            ));
        }
        let was = session.updated_ms;
        session.seq = cmd.seq;
        session.progress = cmd.data.clone();
        session.updated_ms = at.time_ms;
        let after = session.clone();
        self.idle.remove(&(was, after.session_id));
        self.idle.insert((after.updated_ms, after.session_id));
        let detail = format!("{} bytes", cmd.data.len());
        self.write_log(at, &after, WorkEvent::Progress, &after.terminal, detail);
        let event = Arc::new(after.clone());
        self.push_event(at, SessionEventKind::Progress, event, None, None);
        Ok(after)
    }

    pub(crate) fn bind(&mut self, at: Entry, cmd: &Bind) {
        for side in [&cmd.first, &cmd.second] {
            if let Some(old) = self.bindings.remove(side) {
                self.bindings.remove(&old);
            }
        }
        self.bindings.insert(cmd.first.clone(), cmd.second.clone());
        self.bindings.insert(cmd.second.clone(), cmd.first.clone());
        for (this, other) in [(&cmd.first, &cmd.second), (&cmd.second, &cmd.first)] {
            self.log_to_held(at, this, WorkEvent::Bind, &format!("bound to {other}"));
        }
    }

    /// Removes the pair `cmd.terminal` is in, logging to the sessions both
    /// sides hold.
    pub(crate) fn unbind(&mut self, at: Entry, cmd: &Unbind) -> Result<Terminal, StateError> {
        let Some(other) = self.bindings.remove(&cmd.terminal) else {
            return Err(StateError::not_found(format!(
                "binding of terminal {}",
                cmd.terminal
            )));
        };
        self.bindings.remove(&other);
        for (this, that) in [(&cmd.terminal, &other), (&other, &cmd.terminal)] {
            self.log_to_held(at, this, WorkEvent::Unbind, &format!("unbound from {that}"));
        }
        Ok(other)
    }

    /// Writes one work-log entry to every session `terminal` holds.
    fn log_to_held(&mut self, at: Entry, terminal: &Terminal, event: WorkEvent, detail: &str) {
        let held: Vec<u64> = self
            .held
            .range((terminal.clone(), 0)..=(terminal.clone(), u64::MAX))
            .map(|(_, id)| *id)
            .collect();
        for id in held {
            if let Some(session) = self.sessions.get(&id).cloned() {
                self.write_log(at, &session, event, terminal, detail.to_owned());
            }
        }
    }

    /// The session a PullBound handoff without a session id takes: the one
    /// the initiator's bound terminal updated last (of `app_url` if given).
    fn bound_session(&self, cmd: &Handoff) -> Result<u64, StateError> {
        let bound = self.bindings.get(&cmd.initiator).ok_or_else(|| {
            StateError::precondition(
                Reason::FailedPrecondition,
                format!("terminal {} has no binding", cmd.initiator),
            )
        })?;
        self.held
            .range((bound.clone(), 0)..=(bound.clone(), u64::MAX))
            .filter_map(|(_, id)| self.sessions.get(id))
            .filter(|s| cmd.app_url.is_empty() || s.app_url == cmd.app_url)
            .max_by_key(|s| (s.updated_ms, s.session_id))
            .map(|s| s.session_id)
            .ok_or_else(|| {
                let of = if cmd.app_url.is_empty() {
                    String::new()
                } else {
                    format!(" of {}", cmd.app_url)
                };
                StateError::not_found(format!(
                    "session{of} held by {bound}, the terminal bound to {}",
                    cmd.initiator
                ))
            })
    }

    pub(crate) fn handoff(
        &mut self,
        at: Entry,
        cmd: &Handoff,
    ) -> Result<HandoffOutcome, StateError> {
        let session_id = if cmd.mode == HandoffMode::PullBound && cmd.session_id == 0 {
            self.bound_session(cmd)?
        } else {
            cmd.session_id
        };
        let session = self
            .sessions
            .get(&session_id)
            .ok_or_else(|| StateError::not_found(format!("session {session_id}")))?;
        if cmd.epoch != 0 && cmd.epoch != session.epoch {
            return Err(StateError::precondition(
                Reason::Fenced,
                format!(
                    "fenced: session {} is at epoch {} on terminal {}, the handoff names epoch {}",
                    session.session_id, session.epoch, session.terminal, cmd.epoch
                ),
            ));
        }
        let holder = &session.terminal;
        let mut targets: Vec<(&Terminal, &[String])> = Vec::new();
        let how = match cmd.mode {
            HandoffMode::Push | HandoffMode::Binding if cmd.initiator != *holder => {
                return Err(StateError::precondition(
                    Reason::NotHolder,
                    format!(
                        "initiator {} does not hold session {}: it is at epoch {} on terminal {}",
                        cmd.initiator, session.session_id, session.epoch, holder
                    ),
                ));
            }
            HandoffMode::Push => format!("pushed by {holder}"),
            HandoffMode::Pull => {
                if cmd.holder.as_ref() != Some(holder) {
                    return Err(StateError::precondition(
                        Reason::NotHolder,
                        format!(
                            "session {} is held by {}, not {}",
                            session.session_id,
                            holder,
                            cmd.holder
                                .as_ref()
                                .map_or_else(|| "nobody".to_owned(), ToString::to_string)
                        ),
                    ));
                }
                format!("pulled by {} from {holder}", cmd.initiator)
            }
            HandoffMode::PullBound => {
                if self.bindings.get(&cmd.initiator) != Some(holder) {
                    return Err(StateError::precondition(
                        Reason::NotHolder,
                        format!(
                            "session {} is held by {holder}, which is not bound to {}",
                            session.session_id, cmd.initiator
                        ),
                    ));
                }
                format!(
                    "pulled by {} through its binding to {holder}",
                    cmd.initiator
                )
            }
            HandoffMode::Binding => {
                let bound = self.bindings.get(holder).ok_or_else(|| {
                    StateError::precondition(
                        Reason::FailedPrecondition,
                        format!("terminal {holder} has no binding"),
                    )
                })?;
                targets.push((bound, &cmd.bound_capabilities));
                format!("through the binding of {holder}")
            }
        };
        targets.extend(
            cmd.candidates
                .iter()
                .map(|c| (&c.terminal, c.capabilities.as_slice())),
        );

        let mut refused: Vec<(Terminal, String)> = Vec::new();
        let mut chosen: Option<Terminal> = None;
        for (terminal, caps) in targets {
            if terminal == holder {
                refused.push((terminal.clone(), "already holds the session".to_owned()));
                continue;
            }
            let missing: Vec<&str> = session
                .requires
                .iter()
                .filter(|r| !caps.contains(r))
                .map(String::as_str)
                .collect();
            if missing.is_empty() {
                chosen = Some(terminal.clone());
                break;
            }
            refused.push((
                terminal.clone(),
                format!("missing capabilities: {}", missing.join(", ")),
            ));
        }

        // All checks done; from here on the handoff cannot fail.
        let before = session.clone();
        for (terminal, why) in &refused {
            self.write_log(
                at,
                &before,
                WorkEvent::HandoffRefused,
                terminal,
                why.clone(),
            );
        }
        let accepted = chosen.is_some();
        let after = match chosen {
            Some(to) => self.move_session(at, session_id, to, how)?,
            None => before,
        };
        Ok(HandoffOutcome {
            accepted,
            session: after,
            refused: refused.into_iter().map(|(t, _)| t).collect(),
        })
    }

    /// Moves a session to `to`: a new epoch, any pending offer ended, the
    /// indexes, the work log and the watch history kept in step.
    fn move_session(
        &mut self,
        at: Entry,
        id: u64,
        to: Terminal,
        how: String,
    ) -> Result<Session, StateError> {
        if let Some(offer) = self.sessions.get(&id).and_then(|s| s.offer.as_ref()) {
            if offer.to != to {
                self.end_offer(at, id, format!("the session went to {to}"));
            } else {
                let expires = offer.expires_ms;
                self.offers.remove(&(expires, id));
            }
        }
        let Some(session) = self.sessions.get_mut(&id) else {
            return Err(StateError::not_found(format!("session {id}")));
        };
        self.held.remove(&(session.terminal.clone(), id));
        self.held.insert((to.clone(), id));
        let was = session.updated_ms;
        let from = std::mem::replace(&mut session.terminal, to);
        session.epoch += 1;
        session.updated_ms = at.time_ms;
        session.offer = None;
        let after = session.clone();
        self.idle.remove(&(was, id));
        self.idle.insert((after.updated_ms, id));
        self.write_log(at, &after, WorkEvent::Handoff, &after.terminal, how);
        let event = Arc::new(after.clone());
        self.push_event(at, SessionEventKind::HandedOff, event, Some(from), None);
        Ok(after)
    }

    /// Ends session `id`'s pending offer without a handoff (if it has one).
    fn end_offer(&mut self, at: Entry, id: u64, why: String) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        let Some(offer) = session.offer.take() else {
            return;
        };
        self.offers.remove(&(offer.expires_ms, id));
        let after = session.clone();
        let detail = format!("offer {} to {}: {why}", offer.offer_id, offer.to);
        self.write_log(at, &after, WorkEvent::OfferEnded, &offer.to, detail);
        let event = Arc::new(after);
        self.push_event(
            at,
            SessionEventKind::OfferEnded,
            event,
            None,
            Some(offer.to),
        );
    }

    /// The holder offers its session to one terminal; a pending offer to
    /// another terminal ends.
    pub(crate) fn offer(&mut self, at: Entry, cmd: &OfferHandoff) -> Result<Session, StateError> {
        let session = self
            .sessions
            .get(&cmd.session_id)
            .ok_or_else(|| StateError::not_found(format!("session {}", cmd.session_id)))?;
        if cmd.initiator != session.terminal || cmd.epoch != session.epoch {
            return Err(fenced(session));
        }
        self.end_offer(
            at,
            cmd.session_id,
            format!("replaced by an offer to {}", cmd.to),
        );
        let ttl = if cmd.ttl_ms == 0 {
            DEFAULT_OFFER_TTL_MS
        } else {
            cmd.ttl_ms
        };
        let offer = Offer {
            offer_id: at.index,
            to: cmd.to.clone(),
            expires_ms: at.time_ms.saturating_add(ttl),
        };
        let Some(session) = self.sessions.get_mut(&cmd.session_id) else {
            return Err(StateError::not_found(format!("session {}", cmd.session_id)));
        };
        self.offers.insert((offer.expires_ms, cmd.session_id));
        session.offer = Some(offer);
        let after = session.clone();
        let detail = format!("offered to {} for {ttl} ms", cmd.to);
        self.write_log(at, &after, WorkEvent::Offer, &cmd.to, detail);
        let event = Arc::new(after.clone());
        self.push_event(
            at,
            SessionEventKind::Offered,
            event,
            None,
            Some(cmd.to.clone()),
        );
        Ok(after)
    }

    /// The offered terminal confirms its capabilities: the session moves to
    /// it when they fit; the offer ends either way.
    pub(crate) fn accept(
        &mut self,
        at: Entry,
        cmd: &AcceptHandoff,
    ) -> Result<HandoffOutcome, StateError> {
        let session = self
            .sessions
            .get(&cmd.session_id)
            .ok_or_else(|| StateError::not_found(format!("session {}", cmd.session_id)))?;
        let Some(offer) = session
            .offer
            .as_ref()
            .filter(|o| o.offer_id == cmd.offer_id)
        else {
            return Err(StateError::precondition(
                Reason::OfferEnded,
                format!(
                    "offer {} of session {} has ended (declined, expired, replaced or the \
                     session moved); ask the holder for a new one",
                    cmd.offer_id, cmd.session_id
                ),
            ));
        };
        if offer.to != cmd.terminal {
            return Err(StateError::precondition(
                Reason::NotHolder,
                format!(
                    "offer {} is to terminal {}, not {}",
                    offer.offer_id, offer.to, cmd.terminal
                ),
            ));
        }
        let missing: Vec<&str> = session
            .requires
            .iter()
            .filter(|r| !cmd.capabilities.contains(r))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            let why = format!("declined, missing capabilities: {}", missing.join(", "));
            self.end_offer(at, cmd.session_id, why);
            let session = self.sessions.get(&cmd.session_id).cloned();
            return Ok(HandoffOutcome {
                accepted: false,
                session: session
                    .ok_or_else(|| StateError::not_found(format!("session {}", cmd.session_id)))?,
                refused: vec![cmd.terminal.clone()],
            });
        }
        let how = format!("accepted offer {} from {}", cmd.offer_id, session.terminal);
        let after = self.move_session(at, cmd.session_id, cmd.terminal.clone(), how)?;
        Ok(HandoffOutcome {
            accepted: true,
            session: after,
            refused: Vec::new(),
        })
    }

    fn push_event(
        &mut self,
        at: Entry,
        kind: SessionEventKind,
        session: Arc<Session>,
        from: Option<Terminal>,
        to: Option<Terminal>,
    ) {
        let event = SessionEvent {
            revision: at.index,
            time_ms: at.time_ms,
            kind,
            session,
            from,
            to,
        };
        let charge = session_event_bytes(&event);
        let budget = if self.history_budget == 0 {
            super::Quotas::default().watch_history_bytes
        } else {
            self.history_budget
        };
        self.history.push(event, charge, budget);
    }

    fn write_log(
        &mut self,
        at: Entry,
        session: &Session,
        event: WorkEvent,
        terminal: &Terminal,
        detail: String,
    ) {
        let log = self.logs.entry(session.session_id).or_default();
        log.push_back(WorkLogEntry {
            revision: at.index,
            time_ms: at.time_ms,
            event,
            terminal: terminal.clone(),
            epoch: session.epoch,
            seq: session.seq,
            detail,
        });
        while log.len() > WORK_LOG_LEN {
            log.pop_front();
        }
    }

    /// Recomputes the derived indexes and compares (tests only).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let held: BTreeSet<(Terminal, u64)> = self
            .sessions
            .values()
            .map(|s| (s.terminal.clone(), s.session_id))
            .collect();
        assert_eq!(held, self.held, "held index drifted");
        let idle: BTreeSet<(u64, u64)> = self
            .sessions
            .values()
            .map(|s| (s.updated_ms, s.session_id))
            .collect();
        assert_eq!(idle, self.idle, "idle index drifted");
        let offers: BTreeSet<(u64, u64)> = self
            .sessions
            .values()
            .filter_map(|s| s.offer.as_ref().map(|o| (o.expires_ms, s.session_id)))
            .collect();
        assert_eq!(offers, self.offers, "offer index drifted");
        self.history.check_invariants();
        for (a, b) in &self.bindings {
            assert_eq!(self.bindings.get(b), Some(a), "binding not symmetric");
            assert_ne!(a, b);
        }
        for (id, s) in &self.sessions {
            assert_eq!(*id, s.session_id);
            assert!(s.epoch >= 1);
            assert!(s.seq <= MAX_SEQ);
            if let Some(o) = &s.offer {
                assert_ne!(o.to, s.terminal, "an offer to the holder");
            }
            assert!(
                self.logs
                    .get(id)
                    .is_some_and(|l| !l.is_empty() && l.len() <= WORK_LOG_LEN)
            );
        }
    }
}

/// The refused error for a write from a terminal that does not hold the
/// session at its current epoch.
fn fenced(session: &Session) -> StateError {
    StateError::precondition(
        Reason::Fenced,
        format!(
            "fenced: session {} is at epoch {} on terminal {}",
            session.session_id, session.epoch, session.terminal
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::super::tests::Harness;
    use super::super::{Command, Response, State};
    use super::*;

    fn imei(id: &str) -> Terminal {
        Terminal::new(TerminalKind::Imei, id).unwrap()
    }
    fn mac(id: &str) -> Terminal {
        Terminal::new(TerminalKind::Mac, id).unwrap()
    }
    fn phone() -> Terminal {
        imei("490154203237518")
    }
    fn tv() -> Terminal {
        mac("00:1a:2b:3c:4d:5e")
    }
    fn pc() -> Terminal {
        mac("aa:bb:cc:dd:ee:ff")
    }

    fn connect(h: &mut Harness, terminal: Terminal, requires: &[&str]) -> Session {
        match h.ok(Command::Connect(Connect {
            terminal,
            app_url: "https://game.example/play".into(),
            requires: requires.iter().map(|s| s.to_string()).collect(),
        })) {
            Response::Session(s) => s,
            other => panic!("{other:?}"),
        }
    }

    fn progress(session: &Session, terminal: Terminal, seq: u64) -> Command {
        Command::Progress(Progress {
            session_id: session.session_id,
            terminal,
            epoch: session.epoch,
            seq,
            data: seq.to_be_bytes().to_vec(),
        })
    }

    fn cand(terminal: Terminal, caps: &[&str]) -> Candidate {
        Candidate {
            terminal,
            capabilities: caps.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn handoff(h: &mut Harness, cmd: Handoff) -> HandoffOutcome {
        match h.ok(Command::Handoff(cmd)) {
            Response::Handoff(o) => o,
            other => panic!("{other:?}"),
        }
    }

    fn push(session: &Session, initiator: Terminal, candidates: Vec<Candidate>) -> Handoff {
        Handoff {
            session_id: session.session_id,
            mode: HandoffMode::Push,
            initiator,
            epoch: session.epoch,
            holder: None,
            candidates,
            bound_capabilities: vec![],
            app_url: String::new(),
        }
    }

    fn invalid_field(e: StateError) -> String {
        match e {
            StateError::InvalidArgument { field, .. } => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn terminal_ids_are_validated_and_normalized() {
        use TerminalKind::*;
        let good = [
            (Sim, "894400000000000000", "894400000000000000"),
            (Sim, "8986002000000000000001", "8986002000000000000001"),
            (Msisdn, "+8613800138000", "8613800138000"),
            (Msisdn, "12345678", "12345678"),
            (Msisdn, "123456789012345", "123456789012345"),
            (Imei, "490154203237518", "490154203237518"),
            (Imei, "356938035643809", "356938035643809"),
            (Mac, "AA:BB:CC:DD:EE:FF", "aa:bb:cc:dd:ee:ff"),
            (Mac, "00-1a-2B-3c-4D-5e", "00:1a:2b:3c:4d:5e"),
        ];
        for (kind, id, normal) in good {
            let t = Terminal::new(kind, id).unwrap_or_else(|e| panic!("{kind:?} {id}: {e}"));
            assert_eq!(t.id(), normal);
            assert_eq!(t.kind(), kind);
        }
        let bad = [
            (Sim, "8944000000000000"),        // 16 digits
            (Sim, "89440000000000000000000"), // 23 digits
            (Sim, "994400000000000000"),      // not 89
            (Sim, "89440000000000000a"),      // not a digit
            (Msisdn, "1234567"),              // 7 digits
            (Msisdn, "1234567890123456"),     // 16 digits
            (Msisdn, "++12345678"),           // two '+'
            (Msisdn, "+1 2345678"),           // space
            (Msisdn, "+"),                    // nothing
            (Imei, "490154203237517"),        // bad check digit
            (Imei, "49015420323751"),         // 14 digits
            (Imei, "4901542032375180"),       // 16 digits
            (Imei, "49015420323751x"),        // not a digit
            (Mac, "aa:bb:cc:dd:ee"),          // five octets
            (Mac, "aa:bb:cc:dd:ee:ff:00"),    // seven octets
            (Mac, "aa:bb-cc:dd:ee:ff"),       // mixed separators
            (Mac, "aabb.ccdd.eeff"),          // dotted form
            (Mac, "aa:bb:cc:dd:ee:fg"),       // not hex
            (Mac, "a:bb:cc:dd:ee:fff"),       // wrong octet widths
            (Mac, ""),
        ];
        for (kind, id) in bad {
            let e = Terminal::new(kind, id).expect_err(id);
            assert_eq!(invalid_field(e), "terminal.id", "{kind:?} {id}");
        }
        let e = Terminal::new(Unspecified, "490154203237518").unwrap_err();
        assert_eq!(invalid_field(e), "terminal.kind");
        assert_eq!(phone().to_string(), "imei:490154203237518");
    }

    #[test]
    fn luhn_table() {
        assert!(luhn_valid("79927398713"));
        assert!(!luhn_valid("79927398710"));
        assert!(luhn_valid("490154203237518"));
        for wrong in 0..10u8 {
            let id = format!("49015420323751{wrong}");
            assert_eq!(luhn_valid(&id), wrong == 8, "{id}");
        }
    }

    #[test]
    fn unnormalized_terminals_from_the_wire_are_rejected() {
        let raw: Terminal = bincode::deserialize(
            &bincode::serialize(&(TerminalKind::Mac, "AA-BB-CC-DD-EE-FF".to_string())).unwrap(),
        )
        .unwrap();
        let mut h = Harness::new();
        let e = h.err(Command::Connect(Connect {
            terminal: raw,
            app_url: "https://a.example".into(),
            requires: vec![],
        }));
        assert_eq!(invalid_field(e), "terminal.id");
    }

    #[test]
    fn connect_creates_a_session_at_epoch_one() {
        let mut h = Harness::new();
        let s = connect(&mut h, phone(), &["touch"]);
        assert_eq!(s.session_id, h.index);
        assert_eq!((s.epoch, s.seq), (1, 0));
        assert_eq!(s.created_ms, h.time_ms);
        assert_eq!(h.state.session(s.session_id), Some(&s));
        let log = h.state.session_log(s.session_id).unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].event, WorkEvent::Connect);
        assert_eq!(log[0].event.as_str(), "connect");
        assert!(h.state.session(s.session_id + 1).is_none());
        assert!(h.state.session_log(s.session_id + 1).is_none());
    }

    #[test]
    fn connect_validation_names_the_field() {
        let mut h = Harness::new();
        let mut cmd = Connect {
            terminal: phone(),
            app_url: "ftp://files.example/x".into(),
            requires: vec![],
        };
        h.ok(Command::Connect(cmd.clone()));
        h.ok(Command::Connect(Connect {
            app_url: "x-game+v2://start".into(),
            ..cmd.clone()
        }));
        for url in [
            "",
            "game.example/play",
            "://nothing",
            "https://",
            "1http://x",
            "https://a b",
            "ht tp://x",
        ] {
            cmd.app_url = url.into();
            assert_eq!(
                invalid_field(h.err(Command::Connect(cmd.clone()))),
                "app_url",
                "{url}"
            );
        }
        // "https://" is 8 bytes.
        cmd.app_url = format!("https://{}", "a".repeat(MAX_APP_URL_BYTES - 8 + 1));
        assert_eq!(
            invalid_field(h.err(Command::Connect(cmd.clone()))),
            "app_url"
        );
        cmd.app_url = format!("https://{}", "a".repeat(MAX_APP_URL_BYTES - 8));
        h.ok(Command::Connect(cmd.clone()));
        cmd.requires = (0..65).map(|i| format!("c{i}")).collect();
        assert_eq!(
            invalid_field(h.err(Command::Connect(cmd.clone()))),
            "requires"
        );
        cmd.requires = vec!["x".repeat(65)];
        assert_eq!(invalid_field(h.err(Command::Connect(cmd))), "requires[0]");
    }

    #[test]
    fn progress_moves_forward_only() {
        let mut h = Harness::new();
        let s = connect(&mut h, phone(), &[]);
        h.ok(progress(&s, phone(), 1));
        h.ok(progress(&s, phone(), 5));
        let e = h.err(progress(&s, phone(), 5));
        assert_eq!(e.to_string(), "stale sequence 5, last accepted 5");
        assert!(
            h.err(progress(&s, phone(), 2))
                .to_string()
                .starts_with("stale sequence 2")
        );
        let now = h.state.session(s.session_id).unwrap();
        assert_eq!(now.seq, 5);
        assert_eq!(now.progress, 5u64.to_be_bytes().to_vec());
        let e = h.err(Command::Progress(Progress {
            session_id: 999,
            terminal: phone(),
            epoch: 1,
            seq: 9,
            data: vec![],
        }));
        assert!(matches!(e, StateError::NotFound { .. }));
        let e = h.err(Command::Progress(Progress {
            session_id: s.session_id,
            terminal: phone(),
            epoch: 1,
            seq: 9,
            data: vec![0; MAX_PROGRESS_BYTES + 1],
        }));
        assert_eq!(invalid_field(e), "progress");
        h.ok(Command::Progress(Progress {
            session_id: s.session_id,
            terminal: phone(),
            epoch: 1,
            seq: 9,
            data: vec![0; MAX_PROGRESS_BYTES],
        }));
    }

    #[test]
    fn wrong_terminal_or_epoch_is_fenced() {
        let mut h = Harness::new();
        let s = connect(&mut h, phone(), &[]);
        let e = h.err(progress(&s, tv(), 1));
        assert_eq!(
            e.to_string(),
            format!(
                "fenced: session {} is at epoch 1 on terminal imei:490154203237518",
                s.session_id
            )
        );
        let e = h.err(Command::Progress(Progress {
            epoch: 2,
            ..match progress(&s, phone(), 1) {
                Command::Progress(p) => p,
                _ => unreachable!(),
            }
        }));
        assert!(e.to_string().starts_with("fenced"));
    }

    #[test]
    fn push_handoff_carries_progress_and_fences_the_old_terminal() {
        let mut h = Harness::new();
        let s = connect(&mut h, phone(), &["video"]);
        h.ok(progress(&s, phone(), 3));
        let out = handoff(
            &mut h,
            push(
                &s,
                phone(),
                vec![cand(pc(), &["keyboard"]), cand(tv(), &["video", "remote"])],
            ),
        );
        assert!(out.accepted);
        assert_eq!(out.refused, vec![pc()]);
        assert_eq!(out.session.terminal, tv());
        assert_eq!((out.session.epoch, out.session.seq), (2, 3));
        assert_eq!(out.session.progress, 3u64.to_be_bytes().to_vec());
        // The phone is fenced, the TV goes on from seq 3.
        assert!(
            h.err(progress(&s, phone(), 4))
                .to_string()
                .starts_with("fenced")
        );
        h.ok(progress(&out.session, tv(), 4));
        let log = h.state.session_log(s.session_id).unwrap();
        let events: Vec<&str> = log.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(
            events,
            [
                "connect",
                "progress",
                "handoff_refused",
                "handoff",
                "progress"
            ]
        );
        assert_eq!(log[2].terminal, pc());
        assert_eq!(log[2].detail, "missing capabilities: video");
        assert_eq!(log[3].terminal, tv());
        assert_eq!(log[3].epoch, 2);
    }

    #[test]
    fn push_by_a_non_holder_is_refused() {
        let mut h = Harness::new();
        let s = connect(&mut h, phone(), &[]);
        let e = h.err(Command::Handoff(push(&s, tv(), vec![cand(pc(), &[])])));
        assert!(matches!(e, StateError::FailedPrecondition { .. }));
        let e = h.err(Command::Handoff(push(&s, phone(), vec![])));
        assert_eq!(invalid_field(e), "candidates");
        let mut missing = push(&s, phone(), vec![cand(pc(), &[])]);
        missing.session_id = 12345;
        assert!(matches!(
            h.err(Command::Handoff(missing)),
            StateError::NotFound { .. }
        ));
    }

    #[test]
    fn no_fit_is_a_refusal_not_an_error() {
        let mut h = Harness::new();
        let s = connect(&mut h, phone(), &["4k"]);
        let out = handoff(
            &mut h,
            push(
                &s,
                phone(),
                vec![cand(phone(), &["4k"]), cand(tv(), &["hd"])],
            ),
        );
        assert!(!out.accepted);
        assert_eq!(out.refused, vec![phone(), tv()]);
        assert_eq!(out.session, s);
        assert_eq!(h.state.session(s.session_id), Some(&s));
        let log = h.state.session_log(s.session_id).unwrap();
        assert_eq!(log.len(), 3);
        assert_eq!(log[1].detail, "already holds the session");
        assert!(
            log[1..]
                .iter()
                .all(|e| e.event == WorkEvent::HandoffRefused)
        );
    }

    #[test]
    fn pull_names_the_holder() {
        let mut h = Harness::new();
        let s = connect(&mut h, phone(), &["video"]);
        let pull = |holder: Option<Terminal>, caps: &[&str]| Handoff {
            session_id: s.session_id,
            mode: HandoffMode::Pull,
            initiator: tv(),
            epoch: 1,
            holder,
            candidates: vec![cand(tv(), caps)],
            bound_capabilities: vec![],
            app_url: String::new(),
        };
        let e = h.err(Command::Handoff(pull(Some(pc()), &["video"])));
        assert!(
            e.to_string().contains("is held by imei:490154203237518"),
            "{e}"
        );
        assert_eq!(
            invalid_field(h.err(Command::Handoff(pull(None, &["video"])))),
            "holder"
        );
        let mut wrong = pull(Some(phone()), &["video"]);
        wrong.candidates = vec![cand(pc(), &["video"])];
        assert_eq!(invalid_field(h.err(Command::Handoff(wrong))), "candidates");
        let out = handoff(&mut h, pull(Some(phone()), &[]));
        assert!(!out.accepted);
        let out = handoff(&mut h, pull(Some(phone()), &["video"]));
        assert!(out.accepted);
        assert_eq!(out.session.terminal, tv());
        assert_eq!(out.session.epoch, 2);
    }

    #[test]
    fn holder_field_is_only_for_pull() {
        let mut h = Harness::new();
        let s = connect(&mut h, phone(), &[]);
        let mut cmd = push(&s, phone(), vec![cand(tv(), &[])]);
        cmd.holder = Some(phone());
        assert_eq!(invalid_field(h.err(Command::Handoff(cmd))), "holder");
    }

    #[test]
    fn binding_handoff_chains_to_a_third_terminal() {
        let mut h = Harness::new();
        let s = connect(&mut h, phone(), &["video"]);
        let binding = |bound_caps: &[&str], candidates: Vec<Candidate>| Handoff {
            session_id: s.session_id,
            mode: HandoffMode::Binding,
            initiator: phone(),
            epoch: 1,
            holder: None,
            candidates,
            bound_capabilities: bound_caps.iter().map(|c| c.to_string()).collect(),
            app_url: String::new(),
        };
        let e = h.err(Command::Handoff(binding(&["video"], vec![])));
        assert!(e.to_string().contains("has no binding"), "{e}");
        assert_eq!(
            h.ok(Command::Bind(Bind {
                first: phone(),
                second: pc()
            })),
            Response::Bound
        );
        // The bound PC lacks video; the chain goes on to the TV.
        let out = handoff(&mut h, binding(&["keyboard"], vec![cand(tv(), &["video"])]));
        assert!(out.accepted);
        assert_eq!(out.refused, vec![pc()]);
        assert_eq!(out.session.terminal, tv());
        // Now the TV holds it and has no binding.
        let mut again = binding(&["video"], vec![]);
        again.initiator = tv();
        again.epoch = 2;
        assert!(
            h.err(Command::Handoff(again))
                .to_string()
                .contains("has no binding")
        );
    }

    #[test]
    fn binding_handoff_to_the_bound_terminal() {
        let mut h = Harness::new();
        let s = connect(&mut h, phone(), &["video"]);
        h.ok(Command::Bind(Bind {
            first: tv(),
            second: phone(),
        }));
        let out = handoff(
            &mut h,
            Handoff {
                session_id: s.session_id,
                mode: HandoffMode::Binding,
                initiator: phone(),
                epoch: 1,
                holder: None,
                candidates: vec![],
                bound_capabilities: vec!["video".into()],
                app_url: String::new(),
            },
        );
        assert!(out.accepted);
        assert!(out.refused.is_empty());
        assert_eq!(out.session.terminal, tv());
        let log = h.state.session_log(s.session_id).unwrap();
        assert_eq!(log[1].event, WorkEvent::Bind);
        assert_eq!(log[1].detail, "bound to mac:00:1a:2b:3c:4d:5e");
    }

    #[test]
    fn rebinding_replaces_both_old_bindings() {
        let mut h = Harness::new();
        let sim = Terminal::new(TerminalKind::Sim, "894400000000000000").unwrap();
        h.ok(Command::Bind(Bind {
            first: phone(),
            second: tv(),
        }));
        h.ok(Command::Bind(Bind {
            first: pc(),
            second: sim.clone(),
        }));
        h.ok(Command::Bind(Bind {
            first: tv(),
            second: pc(),
        }));
        let s = &h.state.sessions;
        assert_eq!(s.binding(&tv()), Some(&pc()));
        assert_eq!(s.binding(&pc()), Some(&tv()));
        assert_eq!(s.binding(&phone()), None);
        assert_eq!(s.binding(&sim), None);
        h.state.sessions.check_invariants();
        let e = h.err(Command::Bind(Bind {
            first: tv(),
            second: tv(),
        }));
        assert_eq!(invalid_field(e), "second");
    }

    #[test]
    fn handoff_validation_names_the_field() {
        let mut h = Harness::new();
        let s = connect(&mut h, phone(), &[]);
        let many: Vec<Candidate> = (0..65).map(|_| cand(tv(), &[])).collect();
        assert_eq!(
            invalid_field(h.err(Command::Handoff(push(&s, phone(), many)))),
            "candidates"
        );
        let caps: Vec<&str> = vec!["c"; 65];
        let e = h.err(Command::Handoff(push(&s, phone(), vec![cand(tv(), &caps)])));
        assert_eq!(invalid_field(e), "candidates[0].capabilities");
        let mut cmd = push(&s, phone(), vec![cand(tv(), &[])]);
        cmd.bound_capabilities = vec![String::new()];
        assert_eq!(
            invalid_field(h.err(Command::Handoff(cmd))),
            "bound_capabilities[0]"
        );
    }

    fn reason(e: &StateError) -> Reason {
        e.reason()
    }

    fn events_for(h: &Harness, terminal: &Terminal) -> Vec<(SessionEventKind, u64)> {
        let mut out = Vec::new();
        h.state
            .visit_session_events_since(0, |e| {
                if e.involves(terminal) {
                    out.push((e.kind, e.session.epoch));
                }
            })
            .unwrap();
        out
    }

    /// Sabotage check: with the epoch comparison in `handoff` removed, the
    /// stale push below moves the session and this test fails.
    #[test]
    fn a_handoff_names_the_epoch_it_saw_and_a_stale_one_is_fenced() {
        let mut h = Harness::new();
        let s = connect(&mut h, phone(), &[]);
        let mut zero = push(&s, phone(), vec![cand(tv(), &[])]);
        zero.epoch = 0;
        assert_eq!(invalid_field(h.err(Command::Handoff(zero))), "epoch");
        // Phone -> TV -> phone: epoch 3, held by the phone again.
        handoff(&mut h, push(&s, phone(), vec![cand(tv(), &[])]));
        let mut back = push(&s, tv(), vec![cand(phone(), &[])]);
        back.epoch = 2;
        assert!(handoff(&mut h, back).accepted);
        // A stale instance of the phone, still at epoch 1, cannot hand it
        // away although the phone is the holder again.
        let stale = push(&s, phone(), vec![cand(pc(), &[])]);
        let e = h.err(Command::Handoff(stale));
        assert_eq!(reason(&e), Reason::Fenced);
        assert!(e.to_string().contains("names epoch 1"), "{e}");
        assert_eq!(h.state.session(s.session_id).unwrap().terminal, phone());
    }

    /// Sabotage check: without `check_seq` in `Progress::validate`, the
    /// `u64::MAX` progress is accepted and this test fails.
    #[test]
    fn seq_is_bounded_so_no_write_can_end_a_session() {
        let mut h = Harness::new();
        let s = connect(&mut h, phone(), &[]);
        for bad in [0, MAX_SEQ + 1, u64::MAX] {
            let e = h.err(progress(&s, phone(), bad));
            assert_eq!(invalid_field(e), "seq");
        }
        assert_eq!(h.state.session(s.session_id).unwrap().seq, 0);
        h.ok(progress(&s, phone(), MAX_SEQ));
    }

    /// The patent's Fig. 3: the second terminal asks, the holder is found
    /// through the stored binding. Sabotage check: with the binding check
    /// in the PullBound arm removed, the unbound PC takes the session.
    #[test]
    fn pull_bound_finds_the_holder_through_the_binding() {
        let mut h = Harness::new();
        let game = connect(&mut h, phone(), &["video"]);
        h.advance(10);
        let mail = h.ok(Command::Connect(Connect {
            terminal: phone(),
            app_url: "https://mail.example".into(),
            requires: vec![],
        }));
        let Response::Session(mail) = mail else {
            panic!("{mail:?}")
        };
        let pull = |initiator: Terminal, session_id: u64, app: &str| Handoff {
            session_id,
            mode: HandoffMode::PullBound,
            initiator: initiator.clone(),
            epoch: if session_id == 0 { 0 } else { 1 },
            holder: None,
            candidates: vec![cand(initiator, &["video"])],
            bound_capabilities: vec![],
            app_url: app.into(),
        };
        let e = h.err(Command::Handoff(pull(tv(), 0, "")));
        assert!(e.to_string().contains("has no binding"), "{e}");
        h.ok(Command::Bind(Bind {
            first: tv(),
            second: phone(),
        }));
        // An unbound terminal naming the session is refused.
        let e = h.err(Command::Handoff(pull(pc(), game.session_id, "")));
        assert_eq!(reason(&e), Reason::NotHolder);
        // By app: the game, though the mail session is newer.
        let out = handoff(&mut h, pull(tv(), 0, "https://game.example/play"));
        assert!(out.accepted);
        assert_eq!(out.session.session_id, game.session_id);
        assert_eq!(out.session.terminal, tv());
        // Without an app: the newest session the phone still holds.
        let out = handoff(&mut h, pull(tv(), 0, ""));
        assert_eq!(out.session.session_id, mail.session_id);
        let e = h.err(Command::Handoff(pull(tv(), 0, "")));
        assert_eq!(reason(&e), Reason::NotFound);
        // A session id with epoch 0 is refused at validation.
        let mut named_no_epoch = pull(tv(), game.session_id, "");
        named_no_epoch.epoch = 0;
        assert_eq!(
            invalid_field(h.err(Command::Handoff(named_no_epoch))),
            "epoch"
        );
        let log = h.state.session_log(game.session_id).unwrap();
        assert!(
            log.last().unwrap().detail.contains("through its binding"),
            "{log:?}"
        );
    }

    #[test]
    fn unbind_removes_both_sides_and_is_read_back() {
        let mut h = Harness::new();
        let s = connect(&mut h, phone(), &[]);
        h.ok(Command::Bind(Bind {
            first: phone(),
            second: tv(),
        }));
        assert_eq!(h.state.binding(&tv()), Some(&phone()));
        assert_eq!(
            h.ok(Command::Unbind(Unbind { terminal: tv() })),
            Response::Unbound(phone())
        );
        assert_eq!(h.state.binding(&tv()), None);
        assert_eq!(h.state.binding(&phone()), None);
        let e = h.err(Command::Unbind(Unbind { terminal: phone() }));
        assert_eq!(reason(&e), Reason::NotFound);
        let log = h.state.session_log(s.session_id).unwrap();
        assert_eq!(log.last().unwrap().event, WorkEvent::Unbind);
    }

    /// Sabotage check: with the capability check in `accept` removed, the
    /// declining TV takes the session and this test fails.
    #[test]
    fn an_offer_is_told_to_the_target_and_only_its_accept_moves_the_session() {
        let mut h = Harness::new();
        let s = connect(&mut h, phone(), &["video"]);
        let offer = |h: &mut Harness, to: Terminal, epoch: u64| {
            let r = h.ok(Command::OfferHandoff(OfferHandoff {
                session_id: s.session_id,
                initiator: phone(),
                epoch,
                to,
                ttl_ms: 0,
            }));
            let Response::Session(after) = r else {
                panic!("{r:?}")
            };
            after.offer.unwrap()
        };
        let accept = |offer_id: u64, terminal: Terminal, caps: &[&str]| {
            Command::AcceptHandoff(AcceptHandoff {
                session_id: s.session_id,
                offer_id,
                terminal,
                capabilities: caps.iter().map(|c| c.to_string()).collect(),
            })
        };
        // A stale holder cannot offer.
        let e = h.err(Command::OfferHandoff(OfferHandoff {
            session_id: s.session_id,
            initiator: phone(),
            epoch: 2,
            to: tv(),
            ttl_ms: 0,
        }));
        assert_eq!(reason(&e), Reason::Fenced);
        let first = offer(&mut h, tv(), 1);
        assert_eq!(first.expires_ms, h.time_ms + DEFAULT_OFFER_TTL_MS);
        // The TV is told.
        assert_eq!(events_for(&h, &tv()), vec![(SessionEventKind::Offered, 1)]);
        // Someone else cannot accept it.
        let e = h.err(accept(first.offer_id, pc(), &["video"]));
        assert_eq!(reason(&e), Reason::NotHolder);
        // The TV lacks video: declined, and the offer is over.
        let Response::Handoff(out) = h.ok(accept(first.offer_id, tv(), &["audio"])) else {
            panic!()
        };
        assert!(!out.accepted);
        assert_eq!(out.refused, vec![tv()]);
        assert_eq!(out.session.terminal, phone());
        assert_eq!(out.session.offer, None);
        let e = h.err(accept(first.offer_id, tv(), &["video"]));
        assert_eq!(reason(&e), Reason::OfferEnded);
        // A new offer replaces an older one.
        let to_pc = offer(&mut h, pc(), 1);
        let to_tv = offer(&mut h, tv(), 1);
        let e = h.err(accept(to_pc.offer_id, pc(), &["video"]));
        assert_eq!(reason(&e), Reason::OfferEnded);
        let Response::Handoff(out) = h.ok(accept(to_tv.offer_id, tv(), &["video"])) else {
            panic!()
        };
        assert!(out.accepted);
        assert_eq!(out.session.terminal, tv());
        assert_eq!(out.session.epoch, 2);
        assert_eq!(out.session.offer, None);
        // The old holder is fenced, and both watches saw the move.
        let e = h.err(progress(&s, phone(), 1));
        assert_eq!(reason(&e), Reason::Fenced);
        assert_eq!(
            events_for(&h, &tv()),
            vec![
                (SessionEventKind::Offered, 1),
                (SessionEventKind::OfferEnded, 1),
                (SessionEventKind::Offered, 1),
                (SessionEventKind::HandedOff, 2),
            ]
        );
        assert_eq!(
            events_for(&h, &phone()).last(),
            Some(&(SessionEventKind::HandedOff, 2))
        );
    }

    /// Sabotage check: with the offer loop in `forget_idle` removed, the
    /// offer outlives its deadline and this test fails.
    #[test]
    fn an_offer_expires_by_cluster_time() {
        let mut h = Harness::new();
        let s = connect(&mut h, phone(), &[]);
        h.ok(Command::OfferHandoff(OfferHandoff {
            session_id: s.session_id,
            initiator: phone(),
            epoch: 1,
            to: tv(),
            ttl_ms: 1000,
        }));
        let offer = h
            .state
            .session(s.session_id)
            .unwrap()
            .offer
            .clone()
            .unwrap();
        assert_eq!(h.state.next_due(), Some(offer.expires_ms));
        h.advance(999);
        h.ok(Command::Tick);
        assert!(h.state.session(s.session_id).unwrap().offer.is_some());
        h.advance(1);
        h.ok(Command::Tick);
        assert_eq!(h.state.session(s.session_id).unwrap().offer, None);
        // What is due next is the session retention, not the offer.
        assert!(h.state.next_due() > Some(offer.expires_ms));
        let e = h.err(Command::AcceptHandoff(AcceptHandoff {
            session_id: s.session_id,
            offer_id: offer.offer_id,
            terminal: tv(),
            capabilities: vec![],
        }));
        assert_eq!(reason(&e), Reason::OfferEnded);
        let log = h.state.session_log(s.session_id).unwrap();
        assert!(log.last().unwrap().detail.ends_with("expired"), "{log:?}");
    }

    #[test]
    fn a_terminal_lists_its_sessions_by_id() {
        let mut h = Harness::new();
        let ids: Vec<u64> = (0..5)
            .map(|_| connect(&mut h, phone(), &[]).session_id)
            .collect();
        connect(&mut h, tv(), &[]);
        let page = |after, limit| -> Vec<u64> {
            h.state
                .sessions_held_by(&phone(), after, limit)
                .iter()
                .map(|s| s.session_id)
                .collect()
        };
        assert_eq!(page(0, 10), ids);
        assert_eq!(page(ids[1], 2), ids[2..4].to_vec());
        assert_eq!(page(u64::MAX, 10), Vec::<u64>::new());
    }

    #[test]
    fn the_session_history_resumes_from_a_revision_and_restores_compacted() {
        let mut h = Harness::new();
        let s = connect(&mut h, phone(), &[]);
        h.ok(progress(&s, phone(), 1));
        let mut seen = Vec::new();
        h.state
            .visit_session_events_since(h.index, |e| seen.push(e.kind))
            .unwrap();
        assert_eq!(seen, vec![SessionEventKind::Progress]);
        let restored = State::from_snapshot(&h.state.to_snapshot().unwrap()).unwrap();
        let e = restored
            .visit_session_events_since(h.index, |_| {})
            .unwrap_err();
        assert_eq!(reason(&e), Reason::Compacted);
        restored
            .visit_session_events_since(h.index + 1, |_| {})
            .unwrap();
    }

    #[test]
    fn work_log_keeps_the_newest_entries() {
        let mut h = Harness::new();
        let s = connect(&mut h, phone(), &[]);
        for seq in 1..=(WORK_LOG_LEN as u64 + 10) {
            h.state
                .apply(
                    Entry {
                        index: h.index + seq,
                        time_ms: h.time_ms,
                    },
                    &progress(&s, phone(), seq),
                )
                .unwrap();
        }
        let log = h.state.session_log(s.session_id).unwrap();
        assert_eq!(log.len(), WORK_LOG_LEN);
        assert_eq!(log[0].seq, 11);
        assert_eq!(log.last().map(|e| e.seq), Some(WORK_LOG_LEN as u64 + 10));
    }
}
