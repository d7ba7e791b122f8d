//! A run's output directory: `history.jsonl`, `summary.json`, the node logs,
//! and two hand-written SVG plots (latency per operation with the fault
//! windows shaded, and throughput per second).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::checker::Report;
use crate::history::{Event, FaultWindow, Op, Outcome};

/// `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// No anomaly, every key checked, every key read after healing.
    pub valid: bool,
    /// The seed the run was made from.
    pub seed: u64,
    /// Founding nodes.
    pub nodes: u32,
    /// Workloads.
    pub workloads: Vec<String>,
    /// Faults enabled.
    pub nemeses: Vec<String>,
    /// Faults as they happened.
    pub faults: Vec<FaultWindow>,
    /// Keys no final read succeeded on (their durability is unchecked).
    pub unread_keys: Vec<String>,
    /// The checker's verdict.
    pub check: Report,
    /// Wall time of the whole run.
    pub wall_ms: u64,
    /// Time the checker took.
    #[serde(default)]
    pub check_ms: u64,
}

/// Writes the history, summary and plots into `dir`.
pub fn write(dir: &Path, events: &[Event], ops: &[Op], summary: &Summary) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    crate::history::write_jsonl(&dir.join("history.jsonl"), events)?;
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(summary)?,
    )?;
    std::fs::write(dir.join("latency.svg"), latency_svg(ops, &summary.faults))?;
    std::fs::write(
        dir.join("throughput.svg"),
        throughput_svg(ops, &summary.faults),
    )?;
    Ok(())
}

/// The verdict table printed at the end of a run.
pub fn verdict_table(summary: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<22} {:>7} {:>7} {:>7}", "op", "ok", "fail", "info");
    for (name, c) in &summary.check.counts {
        let _ = writeln!(out, "{name:<22} {:>7} {:>7} {:>7}", c.ok, c.fail, c.info);
    }
    let _ = writeln!(out);
    let mut per_workload: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for a in &summary.check.anomalies {
        per_workload
            .entry(a.workload.as_str())
            .or_default()
            .push(a.kind.clone());
    }
    for w in &summary.workloads {
        let verdict = match per_workload.get(w.as_str()) {
            Some(kinds) => format!("INVALID ({})", kinds.join(", ")),
            None if summary
                .check
                .unknown
                .iter()
                .any(|k| k.starts_with(w.as_str())) =>
            {
                "UNKNOWN (search timed out)".into()
            }
            None => "valid".into(),
        };
        let _ = writeln!(out, "{w:<10} {verdict}");
    }
    if !summary.unread_keys.is_empty() {
        let _ = writeln!(out, "unread after healing: {:?}", summary.unread_keys);
    }
    let _ = writeln!(
        out,
        "verdict: {}  ({} ops, {} keys, checked in {} ms)",
        if summary.valid { "VALID" } else { "INVALID" },
        summary.check.ops,
        summary.check.keys,
        summary.check.check_ms
    );
    out
}

const W: f64 = 1000.0;
const H: f64 = 420.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 40.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
];

struct Frame {
    t_max: f64,
    y_max: f64,
}

impl Frame {
    fn x(&self, ns: u64) -> f64 {
        LEFT + (ns as f64 / 1e9) / self.t_max * (W - LEFT - RIGHT)
    }
    fn y(&self, v: f64) -> f64 {
        H - BOTTOM - (v / self.y_max).min(1.0) * (H - TOP - BOTTOM)
    }
}

fn open_svg(title: &str, frame: &Frame, faults: &[FaultWindow], y_label: &str) -> String {
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{LEFT}\" y=\"18\" font-size=\"14\">{title}</text>\n"
    );
    for (i, f) in faults.iter().enumerate() {
        let (x0, x1) = (frame.x(f.start_ns), frame.x(f.end_ns));
        let _ = writeln!(
            s,
            "<rect x=\"{x0:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#f4a582\" fill-opacity=\"0.35\"><title>{}: {}</title></rect>\
             <text x=\"{x0:.1}\" y=\"{:.1}\" fill=\"#b2182b\" font-size=\"9\">{}</text>",
            (x1 - x0).max(1.0),
            H - TOP - BOTTOM,
            f.name,
            xml(&f.detail),
            TOP + 10.0 + 10.0 * (i % 3) as f64,
            f.name
        );
    }
    let (x0, y0, x1, y1) = (LEFT, H - BOTTOM, W - RIGHT, TOP);
    let _ = writeln!(
        s,
        "<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\" stroke=\"black\"/>\
         <line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{y1}\" stroke=\"black\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\">time (s)</text>\
         <text x=\"8\" y=\"{:.1}\" transform=\"rotate(-90 8 {:.1})\">{y_label}</text>",
        (x0 + x1) / 2.0,
        H - 8.0,
        H / 2.0,
        H / 2.0
    );
    for k in 0..=5 {
        let t = frame.t_max * k as f64 / 5.0;
        let v = frame.y_max * k as f64 / 5.0;
        let x = LEFT + (W - LEFT - RIGHT) * k as f64 / 5.0;
        let y = frame.y(v);
        let _ = writeln!(
            s,
            "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{t:.0}</text>\
             <text x=\"{:.1}\" y=\"{y:.1}\" text-anchor=\"end\">{v:.0}</text>",
            H - BOTTOM + 14.0,
            LEFT - 4.0
        );
    }
    s
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn legend(s: &mut String, names: &[String]) {
    for (i, name) in names.iter().enumerate() {
        let y = TOP + 14.0 * i as f64;
        let _ = writeln!(
            s,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            W - RIGHT + 10.0,
            y,
            COLORS[i % COLORS.len()],
            W - RIGHT + 24.0,
            y + 9.0,
            xml(name)
        );
    }
}

fn t_max(ops: &[Op], faults: &[FaultWindow]) -> f64 {
    let last = ops
        .iter()
        .filter_map(|o| o.answered_ns)
        .chain(faults.iter().map(|f| f.end_ns))
        .max()
        .unwrap_or(1);
    (last as f64 / 1e9).max(1.0)
}

/// Latency of every answered operation: a dot per op, coloured by
/// `workload/f`; fail is drawn hollow, info as a cross.
pub fn latency_svg(ops: &[Op], faults: &[FaultWindow]) -> String {
    let names: Vec<String> = ops
        .iter()
        .map(|o| format!("{}/{}", o.workload, o.f))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let lat = |o: &Op| {
        o.answered_ns
            .map(|a| a.saturating_sub(o.invoke_ns) as f64 / 1e6)
    };
    let y_max = ops.iter().filter_map(lat).fold(10.0, f64::max);
    let frame = Frame {
        t_max: t_max(ops, faults),
        y_max,
    };
    let mut s = open_svg(
        "latency per operation (ok ●, fail ○, info ×) — shaded: faults",
        &frame,
        faults,
        "latency (ms)",
    );
    for o in ops {
        let Some(l) = lat(o) else { continue };
        let name = format!("{}/{}", o.workload, o.f);
        let color = COLORS[names.iter().position(|n| *n == name).unwrap_or(0) % COLORS.len()];
        let (x, y) = (frame.x(o.invoke_ns), frame.y(l));
        let _ = match o.outcome {
            Outcome::Ok => writeln!(
                s,
                "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"1.6\" fill=\"{color}\"/>"
            ),
            Outcome::Fail => writeln!(
                s,
                "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"2.2\" fill=\"none\" stroke=\"{color}\"/>"
            ),
            Outcome::Info => writeln!(
                s,
                "<path d=\"M{:.1} {:.1}l5 5m0 -5l-5 5\" stroke=\"{color}\"/>",
                x - 2.5,
                y - 2.5
            ),
        };
    }
    legend(&mut s, &names);
    s.push_str("</svg>\n");
    s
}

/// Completed (`ok`) operations per second, one line per workload.
pub fn throughput_svg(ops: &[Op], faults: &[FaultWindow]) -> String {
    let t = t_max(ops, faults);
    let buckets = t.ceil() as usize + 1;
    let mut series: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for o in ops.iter().filter(|o| o.outcome == Outcome::Ok) {
        if let Some(done) = o.complete_ns {
            let b = (done / 1_000_000_000) as usize;
            series
                .entry(o.workload.clone())
                .or_insert_with(|| vec![0; buckets])[b.min(buckets - 1)] += 1;
        }
    }
    let y_max = series
        .values()
        .flat_map(|v| v.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let frame = Frame { t_max: t, y_max };
    let mut s = open_svg(
        "throughput (ok ops per second) — shaded: faults",
        &frame,
        faults,
        "ops/s",
    );
    let names: Vec<String> = series.keys().cloned().collect();
    for (i, (_, counts)) in series.iter().enumerate() {
        let points: Vec<String> = counts
            .iter()
            .enumerate()
            .map(|(b, &c)| {
                format!(
                    "{:.1},{:.1}",
                    frame.x(b as u64 * 1_000_000_000 + 500_000_000),
                    frame.y(c as f64)
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>",
            COLORS[i % COLORS.len()],
            points.join(" ")
        );
    }
    legend(&mut s, &names);
    s.push_str("</svg>\n");
    s
}
