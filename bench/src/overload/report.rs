//! What the overload test measured, the pure bookkeeping behind it (the
//! refusal tally, the leader tracker) and its markdown table. No I/O here,
//! so all of it is tested without a cluster.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::Summary;

/// Distinct messages kept per (phase, code); the rest are only counted.
const MAX_MESSAGES: usize = 20;
/// Characters kept of one message.
const MAX_MESSAGE_CHARS: usize = 200;

/// How one request ended, as the overload test sorts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged.
    Ok,
    /// A definite error: the server (or the client library on its behalf)
    /// said no, and nothing was applied. Code as tonic names it.
    Refused {
        /// gRPC code, e.g. `ResourceExhausted`.
        code: String,
        /// The message, verbatim.
        message: String,
    },
    /// No answer in time: a write may or may not have been applied.
    Indeterminate {
        /// What the client saw.
        message: String,
    },
}

/// One distinct refusal: where, which code, which message, how often.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// The phase it happened in (`idle`, `watch`, `max`, `open-loop`,
    /// `largest`).
    pub phase: String,
    /// gRPC code, or `indeterminate` for requests that got no answer.
    pub code: String,
    /// The message (truncated), or `(other messages)` past the first 20.
    pub message: String,
    /// How many requests.
    pub count: u64,
}

/// Counts refusals by (phase, code, message), keeping at most
/// [`MAX_MESSAGES`] distinct messages per (phase, code).
#[derive(Debug, Clone, Default)]
pub struct RefusalTally {
    counts: BTreeMap<(String, String, String), u64>,
}

impl RefusalTally {
    /// Records one failed request of `phase`; `Ok` is ignored.
    pub fn record(&mut self, phase: &str, outcome: &Outcome) {
        let (code, message) = match outcome {
            Outcome::Ok => return,
            Outcome::Refused { code, message } => (code.as_str(), message.as_str()),
            Outcome::Indeterminate { message } => ("indeterminate", message.as_str()),
        };
        let message: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
        let key = (phase.to_string(), code.to_string(), message);
        if let Some(n) = self.counts.get_mut(&key) {
            *n += 1;
            return;
        }
        let distinct = self
            .counts
            .keys()
            .filter(|(p, c, m)| p == phase && c == code && m != OTHER)
            .count();
        let key = if distinct >= MAX_MESSAGES {
            (phase.to_string(), code.to_string(), OTHER.to_string())
        } else {
            key
        };
        *self.counts.entry(key).or_default() += 1;
    }

    /// Adds another tally's counts.
    pub fn merge(&mut self, other: &RefusalTally) {
        for ((phase, code, message), n) in &other.counts {
            for _ in 0..*n {
                let outcome = if code == "indeterminate" {
                    Outcome::Indeterminate {
                        message: message.clone(),
                    }
                } else {
                    Outcome::Refused {
                        code: code.clone(),
                        message: message.clone(),
                    }
                };
                self.record(phase, &outcome);
            }
        }
    }

    /// Refused (definite) requests of `phase`.
    pub fn refused(&self, phase: &str) -> u64 {
        self.sum(phase, |c| c != "indeterminate")
    }

    /// Requests of `phase` that got no answer.
    pub fn indeterminate(&self, phase: &str) -> u64 {
        self.sum(phase, |c| c == "indeterminate")
    }

    fn sum(&self, phase: &str, code: impl Fn(&str) -> bool) -> u64 {
        self.counts
            .iter()
            .filter(|((p, c, _), _)| p == phase && code(c))
            .map(|(_, n)| n)
            .sum()
    }

    /// The distinct refusals, most frequent first within each phase.
    pub fn refusals(&self) -> Vec<Refusal> {
        let mut out: Vec<Refusal> = self
            .counts
            .iter()
            .map(|((phase, code, message), &count)| Refusal {
                phase: phase.clone(),
                code: code.clone(),
                message: message.clone(),
                count,
            })
            .collect();
        out.sort_by(|a, b| a.phase.cmp(&b.phase).then(b.count.cmp(&a.count)));
        out
    }
}

const OTHER: &str = "(other messages)";

/// Follows the term and the leader every node reports, and counts what
/// changed: the cluster's highest term moving up (an election), and the
/// leader the nodes name moving from one node to another.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LeaderTracker {
    /// Highest term any node reported.
    pub term: u64,
    /// The leader last named (0 = none yet).
    pub leader: u64,
    /// Times the highest term moved up after the first reading.
    pub term_changes: u64,
    /// Times a node named a leader other than the last one named.
    pub leader_changes: u64,
    /// One line per change: when, in which phase, who said what.
    pub events: Vec<String>,
}

impl LeaderTracker {
    /// Feeds one status reading of node `node` at `secs` into the run.
    pub fn observe(&mut self, secs: f64, phase: &str, node: &str, term: u64, leader: u64) {
        if term > self.term {
            if self.term != 0 {
                self.term_changes += 1;
                self.events.push(format!(
                    "{secs:.1} s ({phase}): {node} reports term {term} (was {}), leader {leader}",
                    self.term
                ));
            }
            self.term = term;
        }
        if leader != 0 && leader != self.leader {
            if self.leader != 0 {
                self.leader_changes += 1;
                self.events.push(format!(
                    "{secs:.1} s ({phase}): {node} names leader {leader} (was {}), term {term}",
                    self.leader
                ));
            }
            self.leader = leader;
        }
    }
}

/// One phase's request figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PhaseResult {
    /// Requests the generator meant to send.
    pub offered: u64,
    /// Requests not sent because the generator's in-flight cap was reached
    /// (open loop only).
    pub not_sent: u64,
    /// Acknowledged.
    pub ok: u64,
    /// Refused (definite error).
    pub refused: u64,
    /// No answer in time.
    pub indeterminate: u64,
    /// Seconds the phase ran.
    pub seconds: f64,
    /// Latency of the acknowledged requests (open loop: from the request's
    /// scheduled start).
    pub latency: Summary,
}

/// Acknowledged writes read back after the load.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Readback {
    /// Acknowledged writes.
    pub acknowledged: u64,
    /// Of those, found as written.
    pub found: u64,
    /// Missing or different (a lost acknowledged write).
    pub lost: u64,
    /// The first few lost ones, for the record.
    pub examples: Vec<String>,
    /// Reads that failed (so the writes could not be checked).
    pub read_errors: u64,
}

/// One system's overload figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SystemOverload {
    /// `herald` or `etcd`.
    pub system: String,
    /// Idle connections asked for and held open.
    pub idle_asked: u64,
    /// Idle connections that answered their first request.
    pub idle_open: u64,
    /// Seconds it took to open them.
    pub idle_seconds: f64,
    /// Watch streams asked for.
    pub watches_asked: u64,
    /// Watch streams open when the load stopped.
    pub watches_open: u64,
    /// Events the watch streams delivered.
    pub watch_events: u64,
    /// The closed-loop login rate measured with the idle connections and
    /// watches in place, per second.
    pub max_rate: f64,
    /// The open-loop rate offered (twice `max_rate`).
    pub offered_rate: f64,
    /// The closed-loop measurement.
    pub max_phase: PhaseResult,
    /// The open-loop overload.
    pub open_loop: PhaseResult,
    /// The largest valid requests.
    pub largest: PhaseResult,
    /// What the largest requests were.
    pub largest_kind: String,
    /// Elections and leader changes seen by polling every node's status.
    pub leader: LeaderTracker,
    /// Status polls that got no answer within 500 ms.
    pub status_timeouts: u64,
    /// Largest RSS per node during the test, bytes.
    pub max_rss: BTreeMap<String, u64>,
    /// Most open file descriptors per node seen during the test.
    pub max_fds: BTreeMap<String, u64>,
    /// Each node's soft open-files limit.
    pub nofile_limit: BTreeMap<String, u64>,
    /// Every distinct refusal.
    pub refusals: Vec<Refusal>,
    /// Acknowledged logins / puts read back.
    pub readback: Readback,
    /// Anything else worth a look.
    pub notes: Vec<String>,
}

/// Everything one `herald-bench overload` measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OverloadReport {
    /// When the run started (UTC, RFC 3339).
    pub started_at: String,
    /// The command line.
    pub command: String,
    /// Run parameters, for the record.
    pub parameters: BTreeMap<String, String>,
    /// One entry per system.
    pub systems: Vec<SystemOverload>,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn per_node(map: &BTreeMap<String, u64>, f: impl Fn(u64) -> String) -> String {
    if map.is_empty() {
        return "—".into();
    }
    map.iter()
        .map(|(node, v)| format!("{node} {}", f(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn phase_row(p: &PhaseResult) -> String {
    format!(
        "{} ok / {} refused / {} no answer{}",
        p.ok,
        p.refused,
        p.indeterminate,
        if p.not_sent > 0 {
            format!(" / {} not sent (generator cap)", p.not_sent)
        } else {
            String::new()
        }
    )
}

fn latency(p: &PhaseResult) -> String {
    if p.ok == 0 {
        return "—".into();
    }
    format!(
        "{:.1} / {:.1} / {:.1}",
        p.latency.p50_ms, p.latency.p99_ms, p.latency.max_ms
    )
}

/// The side-by-side table: one row per figure, one column per system.
pub fn overload_table(systems: &[SystemOverload]) -> String {
    type Row = (&'static str, fn(&SystemOverload) -> String);
    let rows: [Row; 17] = [
        ("idle connections open / asked", |s| {
            format!(
                "{} / {} ({:.0} s)",
                s.idle_open, s.idle_asked, s.idle_seconds
            )
        }),
        ("watch streams open / asked (events)", |s| {
            format!(
                "{} / {} ({})",
                s.watches_open, s.watches_asked, s.watch_events
            )
        }),
        ("max login rate, closed loop (/s)", |s| {
            format!("{:.0}", s.max_rate)
        }),
        ("open loop offered (/s)", |s| {
            format!("{:.0}", s.offered_rate)
        }),
        ("open loop: achieved (/s)", |s| {
            let secs = s.open_loop.seconds.max(1e-9);
            format!("{:.0}", s.open_loop.ok as f64 / secs)
        }),
        ("open loop: requests", |s| phase_row(&s.open_loop)),
        ("open loop write p50 / p99 / max ms", |s| {
            latency(&s.open_loop)
        }),
        ("largest requests", |s| s.largest_kind.clone()),
        ("largest: requests", |s| phase_row(&s.largest)),
        ("largest p50 / p99 / max ms", |s| latency(&s.largest)),
        ("term changes (elections)", |s| {
            s.leader.term_changes.to_string()
        }),
        ("leader changes", |s| s.leader.leader_changes.to_string()),
        ("status polls unanswered in 500 ms", |s| {
            s.status_timeouts.to_string()
        }),
        ("max RSS per node (MiB)", |s| {
            per_node(&s.max_rss, |b| format!("{:.0}", mib(b)))
        }),
        ("max open fds per node (soft limit)", |s| {
            s.max_fds
                .iter()
                .map(|(node, n)| {
                    let limit = s
                        .nofile_limit
                        .get(node)
                        .map_or("?".into(), |l| l.to_string());
                    format!("{node} {n} ({limit})")
                })
                .collect::<Vec<_>>()
                .join(", ")
        }),
        ("acknowledged writes read back / lost", |s| {
            let r = &s.readback;
            let errors = if r.read_errors > 0 {
                format!(" ({} reads failed)", r.read_errors)
            } else {
                String::new()
            };
            format!("{} of {} / {}{errors}", r.found, r.acknowledged, r.lost)
        }),
        ("refused requests, all phases", |s| {
            s.refusals
                .iter()
                .filter(|r| r.code != "indeterminate")
                .map(|r| r.count)
                .sum::<u64>()
                .to_string()
        }),
    ];
    let mut out = String::from("| |");
    for s in systems {
        let _ = write!(out, " {} |", s.system);
    }
    out.push_str("\n|---|");
    for _ in systems {
        out.push_str("---|");
    }
    out.push('\n');
    for (name, cell) in rows {
        let _ = write!(out, "| {name} |");
        for s in systems {
            let _ = write!(out, " {} |", cell(s).replace('|', "\\|"));
        }
        out.push('\n');
    }
    out
}

/// The refusals table: system, phase, code, count, message.
pub fn refusals_table(systems: &[SystemOverload]) -> String {
    let mut out =
        String::from("| system | phase | code | count | message |\n|---|---|---|---:|---|\n");
    let mut any = false;
    for s in systems {
        for r in &s.refusals {
            any = true;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                s.system,
                r.phase,
                r.code,
                r.count,
                r.message.replace('|', "\\|").replace('\n', " ")
            );
        }
    }
    if !any {
        out.push_str("| — | — | — | 0 | no request was refused |\n");
    }
    out
}

/// The whole `overload.md`.
pub fn overload_markdown(report: &OverloadReport) -> String {
    let mut out = format!(
        "# herald-bench overload\n\nStarted {} — `{}`\n\n",
        report.started_at, report.command
    );
    for (k, v) in &report.parameters {
        let _ = writeln!(out, "- {k}: {v}");
    }
    out.push_str("\n## Side by side\n\n");
    out.push_str(&overload_table(&report.systems));
    out.push_str("\n## Refusals and unanswered requests\n\n");
    out.push_str(&refusals_table(&report.systems));
    for s in &report.systems {
        if s.leader.events.is_empty() && s.readback.examples.is_empty() && s.notes.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n## {}: evidence\n", s.system);
        for e in &s.leader.events {
            let _ = writeln!(out, "- leader: {e}");
        }
        for e in &s.readback.examples {
            let _ = writeln!(out, "- lost write: {e}");
        }
        for n in &s.notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}
