//! The `process_*` metrics: CPU, memory, file descriptors, threads and
//! start time of this process, read from `/proc/self` when Prometheus
//! scrapes (a [`Collector`], so nothing is stored between scrapes).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// `process_*` metrics read from `/proc/self` at scrape time (Linux; other
/// systems report none).
#[derive(Debug)]
pub(super) struct ProcessCollector;

/// What `/proc/self` says about this process.
struct ProcStats {
    cpu_seconds: f64,
    resident_bytes: i64,
    virtual_bytes: i64,
    open_fds: i64,
    threads: i64,
    start_time_seconds: f64,
}

fn proc_stats() -> Option<ProcStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Linux reports times in USER_HZ ticks, 100 on every Linux ABI (it is
    // not the kernel's HZ); RSS comes from /proc/self/status in kB.
    const TICKS: f64 = 100.0;
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    // stat(5) numbering minus 3 (pid, comm and state are gone).
    let utime = num(11)?;
    let stime = num(12)?;
    let threads = num(17)? as i64;
    let start_ticks = num(19)?;
    let virtual_bytes = num(20)? as i64;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok())
        .unwrap_or(0);
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as i64)
        .unwrap_or(0);
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())?;
    Some(ProcStats {
        cpu_seconds: (utime + stime) / TICKS,
        resident_bytes: rss_kb * 1024,
        virtual_bytes,
        open_fds,
        threads,
        start_time_seconds: boot + start_ticks / TICKS,
    })
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = proc_stats() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(s.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        for (name, help, v) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                s.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                s.virtual_bytes,
            ),
            ("process_open_fds", "Open file descriptors", s.open_fds),
            ("process_threads", "OS threads", s.threads),
        ] {
            let g = ConstGauge::new(v);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        let start = ConstGauge::new(s.start_time_seconds);
        start.encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds",
            None,
            start.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_stats_are_read_from_proc() {
        let s = proc_stats().expect("/proc/self on Linux");
        assert!(s.resident_bytes > 0);
        assert!(s.open_fds > 0);
        assert!(s.start_time_seconds > 1.0e9);
    }
}
