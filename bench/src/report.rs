//! The results: one [`RunResult`] per (workload, system), rendered as a
//! markdown comparison table, JSON, and a hand-written SVG bar chart
//! (throughput and p99 per workload, both systems).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::Summary;

/// The two systems.
pub const HERALD: &str = "herald";
/// See [`HERALD`].
pub const ETCD: &str = "etcd";

/// One timed workload on one system.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunResult {
    /// Workload name, e.g. `write-c16`.
    pub workload: String,
    /// [`HERALD`] or [`ETCD`].
    pub system: String,
    /// Requests in flight.
    pub concurrency: usize,
    /// Throughput and latency.
    pub summary: Summary,
    /// CPU seconds of all server processes during the measured window.
    pub cpu_seconds: f64,
    /// The largest server process's peak RSS during the run, bytes.
    pub peak_rss_bytes: u64,
    /// Disk used by all data dirs after the run, bytes.
    pub data_bytes: u64,
    /// The first error seen, if any.
    pub first_error: Option<String>,
}

/// Fail-over figures of one system.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Failover {
    /// [`HERALD`] or [`ETCD`].
    pub system: String,
    /// Write outage of each kill, ms.
    pub gaps_ms: Vec<f64>,
    /// Their median, ms.
    pub median_ms: Option<f64>,
}

/// Memory and restart figures (Herald).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MemoryRestart {
    /// Records asked for.
    pub target_records: u64,
    /// Records loaded (fewer than asked when the time limit struck).
    pub records: u64,
    /// Seconds the load took.
    pub load_seconds: f64,
    /// Failed writes during the load.
    pub load_errors: u64,
    /// RSS per node after the load, bytes, by node id.
    pub rss_after_load: BTreeMap<u64, u64>,
    /// Disk used by all data dirs after the load, bytes.
    pub data_bytes: u64,
    /// Time from process start to the first linearizable read, ms, by id.
    pub restart_to_serving_ms: BTreeMap<u64, f64>,
    /// RSS per node once serving after the restart, bytes, by node id.
    pub rss_after_restart: BTreeMap<u64, u64>,
}

/// Issue 20's linked-catalog scenario on one system (see
/// [`crate::link`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LinkResult {
    /// [`HERALD`] or [`ETCD`].
    pub system: String,
    /// Items asked for.
    pub target_items: u64,
    /// Items loaded (fewer than asked when the time limit struck).
    pub items: u64,
    /// Seconds the load took.
    pub load_seconds: f64,
    /// Failed load requests.
    pub load_errors: u64,
    /// How the items were loaded.
    pub load_method: String,
    /// RSS per server process before the load, bytes, by name.
    pub rss_before: BTreeMap<String, u64>,
    /// RSS per server process after the load, bytes, by name.
    pub rss_after: BTreeMap<String, u64>,
    /// Count updates in flight.
    pub count_concurrency: usize,
    /// Count updates: throughput and latency.
    pub counts: Summary,
    /// etcd's read-modify-write conflicts (each cost another get and txn).
    pub count_conflicts: u64,
    /// Lookups in flight.
    pub lookup_concurrency: usize,
    /// Top-20 lookups: throughput and latency.
    pub lookups: Summary,
    /// The best score after the count updates.
    pub top_score: u64,
    /// The first error seen, if any.
    pub first_error: Option<String>,
}

impl LinkResult {
    /// The largest RSS growth of one server process over the load, per
    /// item loaded, bytes.
    pub fn rss_growth_per_item(&self) -> Option<f64> {
        if self.items == 0 {
            return None;
        }
        self.rss_after
            .iter()
            .filter_map(|(name, after)| {
                let before = self.rss_before.get(name)?;
                Some(after.saturating_sub(*before) as f64 / self.items as f64)
            })
            .max_by(f64::total_cmp)
    }
}

/// The linked-catalog table: one column per system.
pub fn link_table(results: &[LinkResult]) -> String {
    let mut out = String::from("| | ");
    let names: Vec<&str> = results.iter().map(|r| r.system.as_str()).collect();
    out.push_str(&names.join(" | "));
    out.push_str(" |\n|---|");
    out.push_str(&"---:|".repeat(results.len()));
    out.push('\n');
    let row = |out: &mut String, label: &str, cell: &dyn Fn(&LinkResult) -> String| {
        let cells: Vec<String> = results.iter().map(cell).collect();
        let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
    };
    row(&mut out, "items loaded (asked)", &|r| {
        format!("{} ({})", r.items, r.target_items)
    });
    row(&mut out, "load", &|r| {
        format!(
            "{:.1} s, {:.0} items/s, {} errors; {}",
            r.load_seconds,
            if r.load_seconds > 0.0 {
                r.items as f64 / r.load_seconds
            } else {
                0.0
            },
            r.load_errors,
            r.load_method
        )
    });
    row(&mut out, "count updates/s", &|r| {
        format!("{:.0} (c{})", r.counts.throughput, r.count_concurrency)
    });
    row(&mut out, "count update p50 / p99 ms", &|r| {
        format!("{:.2} / {:.2}", r.counts.p50_ms, r.counts.p99_ms)
    });
    row(&mut out, "count errors / txn conflicts", &|r| {
        format!("{} / {}", r.counts.errors, r.count_conflicts)
    });
    row(&mut out, "top-20 lookup p50 / p99 ms", &|r| {
        format!("{:.2} / {:.2}", r.lookups.p50_ms, r.lookups.p99_ms)
    });
    row(
        &mut out,
        "top-20 lookups measured (in flight), per s",
        &|r| {
            format!(
                "{} (c{}), {:.1}/s, {} errors",
                r.lookups.ops, r.lookup_concurrency, r.lookups.throughput, r.lookups.errors
            )
        },
    );
    row(
        &mut out,
        "RSS growth per item, bytes (largest process)",
        &|r| {
            r.rss_growth_per_item()
                .map_or("—".into(), |b| format!("{b:.0}"))
        },
    );
    row(&mut out, "RSS after load MiB (per process)", &|r| {
        r.rss_after
            .iter()
            .map(|(name, b)| format!("{name} {:.0}", mib(*b)))
            .collect::<Vec<_>>()
            .join(", ")
    });
    row(&mut out, "best score after the counts", &|r| {
        r.top_score.to_string()
    });
    out
}

/// Everything one invocation measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// When the run started (UTC, RFC 3339).
    pub started_at: String,
    /// The command line.
    pub command: String,
    /// Run parameters, for the record.
    pub parameters: BTreeMap<String, String>,
    /// Timed workloads.
    pub runs: Vec<RunResult>,
    /// Fail-over per system.
    pub failover: Vec<Failover>,
    /// Herald's memory and restart figures, when measured.
    pub memory: Option<MemoryRestart>,
    /// Issue 20's linked-catalog scenario, per system.
    pub link: Vec<LinkResult>,
    /// Things that went wrong and are worth a look.
    pub notes: Vec<String>,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// `a / b` formatted with two decimals, or `—` when it means nothing.
pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.2}", a / b)
    } else {
        "—".into()
    }
}

/// The workloads in first-seen order.
fn workloads(runs: &[RunResult]) -> Vec<(String, usize)> {
    let mut seen: Vec<(String, usize)> = Vec::new();
    for r in runs {
        if !seen.iter().any(|(w, _)| *w == r.workload) {
            seen.push((r.workload.clone(), r.concurrency));
        }
    }
    seen
}

fn find<'a>(runs: &'a [RunResult], workload: &str, system: &str) -> Option<&'a RunResult> {
    runs.iter()
        .find(|r| r.workload == workload && r.system == system)
}

/// The comparison table: one row per workload, Herald and etcd side by side,
/// ratios Herald/etcd (throughput: higher is better for Herald; p99: lower).
pub fn comparison_table(runs: &[RunResult]) -> String {
    let mut out = String::new();
    out.push_str(
        "| workload | in flight | Herald ops/s | etcd ops/s | ratio H/E | Herald p50 / p99 / p99.9 ms | etcd p50 / p99 / p99.9 ms | p99 ratio H/E | errors H / E | CPU s H / E | peak RSS MiB H / E | data MiB H / E |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (workload, concurrency) in workloads(runs) {
        let h = find(runs, &workload, HERALD);
        let e = find(runs, &workload, ETCD);
        let ops = |r: Option<&RunResult>| {
            r.map_or("—".into(), |r| format!("{:.0}", r.summary.throughput))
        };
        let lat = |r: Option<&RunResult>| {
            r.map_or("—".into(), |r| {
                format!(
                    "{:.2} / {:.2} / {:.2}",
                    r.summary.p50_ms, r.summary.p99_ms, r.summary.p999_ms
                )
            })
        };
        let pair = |f: &dyn Fn(&RunResult) -> String| {
            format!("{} / {}", h.map_or("—".into(), f), e.map_or("—".into(), f))
        };
        let tput_ratio = match (h, e) {
            (Some(h), Some(e)) => ratio(h.summary.throughput, e.summary.throughput),
            _ => "—".into(),
        };
        let p99_ratio = match (h, e) {
            (Some(h), Some(e)) => ratio(h.summary.p99_ms, e.summary.p99_ms),
            _ => "—".into(),
        };
        let _ = writeln!(
            out,
            "| {workload} | {concurrency} | {} | {} | {tput_ratio} | {} | {} | {p99_ratio} | {} | {} | {} | {} |",
            ops(h),
            ops(e),
            lat(h),
            lat(e),
            pair(&|r| r.summary.errors.to_string()),
            pair(&|r| format!("{:.1}", r.cpu_seconds)),
            pair(&|r| format!("{:.0}", mib(r.peak_rss_bytes))),
            pair(&|r| format!("{:.1}", mib(r.data_bytes))),
        );
    }
    out
}

/// The fail-over table.
pub fn failover_table(failover: &[Failover]) -> String {
    let mut out = String::from(
        "| system | kills | write outage per kill, ms | median ms |\n|---|---:|---|---:|\n",
    );
    for f in failover {
        let gaps: Vec<String> = f.gaps_ms.iter().map(|g| format!("{g:.0}")).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            f.system,
            f.gaps_ms.len(),
            gaps.join(", "),
            f.median_ms.map_or("—".into(), |m| format!("{m:.0}"))
        );
    }
    out
}

/// The memory and restart table.
pub fn memory_table(m: &MemoryRestart) -> String {
    let mut out = String::new();
    if m.records < m.target_records {
        let _ = writeln!(
            out,
            "**Only {} of {} records loaded: the load hit its time limit.**\n",
            m.records, m.target_records
        );
    }
    let _ = write!(
        out,
        "{} records loaded in {:.1} s ({:.0}/s, {} errors); data dirs {:.1} MiB in all.\n\n",
        m.records,
        m.load_seconds,
        if m.load_seconds > 0.0 {
            m.records as f64 / m.load_seconds
        } else {
            0.0
        },
        m.load_errors,
        mib(m.data_bytes)
    );
    out.push_str("| node | RSS after load MiB | restart → serving ms | RSS after restart MiB |\n|---|---:|---:|---:|\n");
    for (id, rss) in &m.rss_after_load {
        let _ = writeln!(
            out,
            "| node{id} | {:.0} | {} | {} |",
            mib(*rss),
            m.restart_to_serving_ms
                .get(id)
                .map_or("—".into(), |t| format!("{t:.0}")),
            m.rss_after_restart
                .get(id)
                .map_or("—".into(), |r| format!("{:.0}", mib(*r))),
        );
    }
    out
}

/// The whole `results.md`.
pub fn markdown(report: &Report) -> String {
    let mut out = format!(
        "# herald-bench results\n\nStarted {} — `{}`\n\n",
        report.started_at, report.command
    );
    for (k, v) in &report.parameters {
        let _ = writeln!(out, "- {k}: {v}");
    }
    out.push_str("\n## Workloads\n\n");
    out.push_str(&comparison_table(&report.runs));
    if !report.failover.is_empty() {
        out.push_str("\n## Fail-over (kill -9 of the leader under write load)\n\n");
        out.push_str(&failover_table(&report.failover));
    }
    if let Some(m) = &report.memory {
        out.push_str("\n## Herald memory and restart\n\n");
        out.push_str(&memory_table(m));
    }
    if !report.link.is_empty() {
        out.push_str("\n## Linked catalogs (P-link): count updates and top-20 lookups\n\n");
        out.push_str(&link_table(&report.link));
        for r in &report.link {
            if let Some(e) = &r.first_error {
                let _ = writeln!(out, "\n{} link: first error: {e}", r.system);
            }
        }
    }
    if !report.notes.is_empty() {
        out.push_str("\n## Notes\n\n");
        for n in &report.notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A chart panel: title, top edge, and the figure it plots.
type Panel = (&'static str, f64, fn(&Summary) -> f64);

/// A two-panel grouped bar chart: throughput (top) and p99 (bottom) per
/// workload, Herald and etcd side by side. Hand-written SVG: no plotting
/// dependency for a dozen rectangles.
pub fn svg(runs: &[RunResult]) -> String {
    let workloads = workloads(runs);
    let group_w = 90.0;
    let left = 70.0;
    let width = left + group_w * workloads.len().max(1) as f64 + 20.0;
    let panel_h = 220.0;
    let height = 2.0 * panel_h + 130.0;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let panels: [Panel; 2] = [
        ("throughput, ops/s (higher is better)", 30.0, |s| {
            s.throughput
        }),
        ("p99 latency, ms (lower is better)", 60.0 + panel_h, |s| {
            s.p99_ms
        }),
    ];
    let colours = [(HERALD, "#2b6cb0"), (ETCD, "#dd6b20")];
    for (title, top, value) in panels {
        let max = runs
            .iter()
            .map(|r| value(&r.summary))
            .fold(0.0_f64, f64::max)
            .max(1e-9);
        let base = top + panel_h - 20.0;
        let scale = (panel_h - 40.0) / max;
        let _ = writeln!(
            out,
            "<text x=\"{left}\" y=\"{:.0}\" font-size=\"13\" font-weight=\"bold\">{}</text>",
            top - 8.0,
            escape(title)
        );
        let _ = writeln!(
            out,
            "<line x1=\"{left}\" y1=\"{base:.1}\" x2=\"{:.1}\" y2=\"{base:.1}\" stroke=\"black\"/>",
            width - 20.0
        );
        let _ = writeln!(
            out,
            "<text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left - 4.0,
            base - max * scale + 4.0,
            short(max)
        );
        for (g, (workload, _)) in workloads.iter().enumerate() {
            let x0 = left + g as f64 * group_w + 10.0;
            for (k, (system, colour)) in colours.iter().enumerate() {
                let Some(r) = find(runs, workload, system) else {
                    continue;
                };
                let v = value(&r.summary);
                let h = v * scale;
                let x = x0 + k as f64 * 34.0;
                let _ = writeln!(
                    out,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"30\" height=\"{h:.1}\" fill=\"{colour}\"><title>{system} {}: {}</title></rect>",
                    base - h,
                    escape(workload),
                    short(v)
                );
                let _ = writeln!(
                    out,
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"9\">{}</text>",
                    x + 15.0,
                    base - h - 3.0,
                    short(v)
                );
            }
            let _ = writeln!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                x0 + 32.0,
                base + 14.0,
                escape(workload)
            );
        }
    }
    let legend_y = height - 30.0;
    for (k, (system, colour)) in colours.iter().enumerate() {
        let x = left + k as f64 * 100.0;
        let _ = writeln!(
            out,
            "<rect x=\"{x:.0}\" y=\"{:.0}\" width=\"12\" height=\"12\" fill=\"{colour}\"/><text x=\"{:.0}\" y=\"{legend_y:.0}\">{system}</text>",
            legend_y - 10.0,
            x + 16.0
        );
    }
    out.push_str("</svg>\n");
    out
}

/// A short number: 12.3k, 456, 7.89.
fn short(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}
