//! The recorded history: every operation's invocation and completion, in the
//! order they happened, as JSON lines.
//!
//! The vocabulary is Jepsen's. `invoke` is written before a request is sent;
//! its completion is `ok` (it happened, with this result), `fail` (it
//! certainly did not change anything: a definite error) or `info` (a write's
//! outcome is unknown: it may take effect at any time after its invocation,
//! even after the run). Times are monotonic nanoseconds since the run began.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The process id the nemesis records its faults under.
pub const NEMESIS: u64 = 0;

/// The process id the cluster monitor records node statuses under
/// (`workload` "monitor", `f` "status", `value` {node: {role, term, leader}}).
pub const MONITOR: u64 = u64::MAX;

/// What an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// A request is about to be sent.
    Invoke,
    /// It completed; `value` is the result.
    Ok,
    /// It certainly had no effect (`error` says why).
    Fail,
    /// Its outcome is unknown.
    Info,
}

/// One line of `history.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The logical process (one client worker); 0 is the nemesis.
    pub process: u64,
    /// Invoke or one of the three completions.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The operation: `write`, `read`, `lease`, `renew`, `release`, `list`,
    /// `progress`, `handoff`, `get`, `share`, `commit`, `delete`, `access`,
    /// `storage`, `register-storage`, `befriend`, or a fault name for the
    /// nemesis.
    pub f: String,
    /// The workload the operation belongs to: `register`, `pool`, `session`,
    /// `ttl`, `link`, `share`, `nemesis`.
    pub workload: String,
    /// The key the operation is about (a uid, a pool, a session).
    pub key: String,
    /// The argument (on invoke) or the result (on completion).
    pub value: Value,
    /// Nanoseconds since the run began, from a monotonic clock.
    pub time_ns: u64,
    /// For `fail` and `info`: the error, as the client reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A shared, append-only history. Cheap to clone; a std mutex because no
/// await happens while it is held.
#[derive(Clone, Debug)]
pub struct Recorder {
    start: Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// An empty history whose clock starts now.
    pub fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            events: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Nanoseconds since the history began.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Appends one event stamped with the current time.
    // One argument per field of the event: a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        process: u64,
        kind: EventType,
        workload: &str,
        f: &str,
        key: &str,
        value: Value,
        error: Option<String>,
    ) {
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        // Stamped under the lock, so file order and time order agree.
        let time_ns = self.now_ns();
        events.push(Event {
            process,
            kind,
            f: f.to_string(),
            workload: workload.to_string(),
            key: key.to_string(),
            value,
            time_ns,
            error,
        });
    }

    /// A copy of every event so far.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Writes events as JSON lines.
pub fn write_jsonl(path: &Path, events: &[Event]) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for e in events {
        serde_json::to_writer(&mut out, e)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// Reads a `history.jsonl`.
pub fn read_jsonl(path: &Path) -> Result<Vec<Event>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut events = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        events.push(
            serde_json::from_str(&line).with_context(|| format!("{}:{}", path.display(), n + 1))?,
        );
    }
    Ok(events)
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It happened.
    Ok,
    /// It certainly did not change anything.
    Fail,
    /// Unknown; also what an invocation without completion becomes.
    Info,
}

/// An invocation paired with its completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the list of ops (stable id for reports).
    pub id: usize,
    /// The process that ran it.
    pub process: u64,
    /// Workload name.
    pub workload: String,
    /// Operation name.
    pub f: String,
    /// Key.
    pub key: String,
    /// Invocation argument.
    pub input: Value,
    /// Completion value (null for info).
    pub output: Value,
    /// How it ended.
    pub outcome: Outcome,
    /// The error of a fail or info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it was invoked.
    pub invoke_ns: u64,
    /// When it completed; `None` for info (it may take effect any time later).
    pub complete_ns: Option<u64>,
    /// When the client got its answer, even an `info` one (for latency plots).
    pub answered_ns: Option<u64>,
}

/// Pairs each process's invocations with their completions. A process has
/// at most one operation outstanding; an invocation left open becomes info.
/// Nemesis events are skipped.
pub fn pair(events: &[Event]) -> Vec<Op> {
    let mut open: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    let mut ops: Vec<Op> = Vec::new();
    for e in events {
        if e.process == NEMESIS || e.process == MONITOR {
            continue;
        }
        match e.kind {
            EventType::Invoke => {
                let id = ops.len();
                ops.push(Op {
                    id,
                    process: e.process,
                    workload: e.workload.clone(),
                    f: e.f.clone(),
                    key: e.key.clone(),
                    input: e.value.clone(),
                    output: Value::Null,
                    outcome: Outcome::Info,
                    error: None,
                    invoke_ns: e.time_ns,
                    complete_ns: None,
                    answered_ns: None,
                });
                open.insert(e.process, id);
            }
            kind => {
                let Some(id) = open.remove(&e.process) else {
                    continue;
                };
                let op = &mut ops[id];
                op.output = e.value.clone();
                op.error = e.error.clone();
                op.answered_ns = Some(e.time_ns);
                match kind {
                    EventType::Ok => {
                        op.outcome = Outcome::Ok;
                        op.complete_ns = Some(e.time_ns);
                    }
                    EventType::Fail => {
                        op.outcome = Outcome::Fail;
                        op.complete_ns = Some(e.time_ns);
                    }
                    _ => op.outcome = Outcome::Info,
                }
            }
        }
    }
    ops
}

/// A fault's time window, for the summary and the plots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultWindow {
    /// The nemesis.
    pub name: String,
    /// What exactly it did ("isolated node 2").
    pub detail: String,
    /// When it started.
    pub start_ns: u64,
    /// When it was healed.
    pub end_ns: u64,
}

/// The fault windows a history's nemesis events describe: each `invoke`
/// opens one, the next `ok`/`info` of the same fault name closes it.
pub fn fault_windows(events: &[Event]) -> Vec<FaultWindow> {
    let mut windows = Vec::new();
    let mut open: Option<(String, String, u64)> = None;
    for e in events.iter().filter(|e| e.process == NEMESIS) {
        match e.kind {
            EventType::Invoke => {
                let detail = e.value.as_str().unwrap_or_default().to_string();
                open = Some((e.f.clone(), detail, e.time_ns));
            }
            _ => {
                if let Some((name, detail, start)) = open.take() {
                    let detail = match e.value.as_str() {
                        Some(d) if !d.is_empty() => d.to_string(),
                        _ => detail,
                    };
                    windows.push(FaultWindow {
                        name,
                        detail,
                        start_ns: start,
                        end_ns: e.time_ns,
                    });
                }
            }
        }
    }
    if let (Some((name, detail, start)), Some(last)) = (open, events.last()) {
        windows.push(FaultWindow {
            name,
            detail,
            start_ns: start,
            end_ns: last.time_ns,
        });
    }
    windows
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pairs_invocations_and_completions_per_process() {
        let r = Recorder::new();
        r.record(
            1,
            EventType::Invoke,
            "register",
            "write",
            "a",
            json!(1),
            None,
        );
        r.record(
            2,
            EventType::Invoke,
            "register",
            "read",
            "a",
            json!(null),
            None,
        );
        r.record(
            NEMESIS,
            EventType::Invoke,
            "nemesis",
            "kill",
            "",
            json!("node 1"),
            None,
        );
        r.record(2, EventType::Ok, "register", "read", "a", json!(1), None);
        r.record(
            1,
            EventType::Info,
            "register",
            "write",
            "a",
            json!(null),
            Some("timeout".into()),
        );
        r.record(
            3,
            EventType::Invoke,
            "register",
            "write",
            "a",
            json!(2),
            None,
        );
        r.record(
            NEMESIS,
            EventType::Ok,
            "nemesis",
            "kill",
            "",
            json!(""),
            None,
        );
        let events = r.events();
        let ops = pair(&events);
        assert_eq!(ops.len(), 3);
        assert_eq!(ops[0].outcome, Outcome::Info);
        assert!(ops[0].complete_ns.is_none() && ops[0].answered_ns.is_some());
        assert_eq!(ops[1].outcome, Outcome::Ok);
        assert_eq!(ops[1].output, json!(1));
        assert_eq!(ops[2].outcome, Outcome::Info, "never completed");
        let windows = fault_windows(&events);
        assert_eq!(windows.len(), 1);
        assert_eq!(windows[0].detail, "node 1");

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("h.jsonl");
        write_jsonl(&path, &events).expect("write");
        assert_eq!(read_jsonl(&path).expect("read"), events);
    }
}
