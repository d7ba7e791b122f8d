//! Resource figures of server processes from `/proc`: CPU time, resident
//! memory (with its peak reset between runs), and disk use of a directory.

use std::path::Path;

/// Clock ticks per second of `/proc/<pid>/stat` times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// User + system CPU seconds `pid` has used so far; `None` when it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat).map(|ticks| ticks as f64 / ticks_per_second())
}

/// utime + stime from a `/proc/<pid>/stat` line. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after the last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14, stime 15 (1-based).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
pub fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kb(&status, field).map(|kb| kb * 1024)
}

/// The value in kB of `field` in a `/proc/<pid>/status` text.
pub fn parse_status_kb(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Resets the peak RSS (`VmHWM`) of `pid` to its current RSS, so the next
/// reading is the peak of one run. Best effort: needs Linux ≥ 4.0 and the
/// right to write `/proc/<pid>/clear_refs`.
pub fn reset_peak_rss(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// Bytes of disk a directory tree uses (allocated blocks, not apparent
/// sizes: sled and etcd both preallocate files).
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.blocks() * 512;
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| disk_usage(&entry.path()))
        .sum::<u64>()
        + meta.blocks() * 512
}

/// Pids of live processes whose command line has `arg` as one argument
/// (a node's config path, an etcd `--data-dir`). Zombies have an empty
/// command line and are never found.
pub fn pids_with_arg(arg: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmd| cmd.split(|&b| b == 0).any(|a| a == arg.as_bytes()))
                .unwrap_or(false)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Sends `signal` to `pid`. Best effort.
pub fn signal(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions; pids come from
    // processes this benchmark started and found by their unique arguments.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// CPU seconds, peak RSS and current RSS of a set of server processes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Summed CPU seconds.
    pub cpu_seconds: f64,
    /// The largest per-process peak RSS, bytes.
    pub max_peak_rss: u64,
}

/// Reads the usage of `pids` now.
pub fn usage(pids: &[u32]) -> Usage {
    Usage {
        cpu_seconds: pids.iter().filter_map(|&p| cpu_seconds(p)).sum(),
        max_peak_rss: pids
            .iter()
            .filter_map(|&p| status_bytes(p, "VmHWM"))
            .max()
            .unwrap_or(0),
    }
}

/// The first of `ports` on 127.0.0.1 that something already listens on.
/// A cluster started on a taken port would half-start, and a benchmark that
/// then reaches someone else's server measures the wrong thing.
pub fn port_in_use(ports: &[u16]) -> Option<u16> {
    ports
        .iter()
        .copied()
        .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_err())
}

/// The soft `Max open files` limit of `pid` (from `/proc/<pid>/limits`).
pub fn open_files_limit(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    parse_open_files_limit(&limits)
}

/// The soft limit on the `Max open files` line of a `/proc/<pid>/limits`
/// text; `None` when it is missing or `unlimited`.
pub fn parse_open_files_limit(limits: &str) -> Option<u64> {
    let rest = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    rest.split_whitespace().next()?.parse().ok()
}

/// How many file descriptors `pid` holds open now.
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit; returns
/// (soft before, soft after). Thousands of client sockets need it.
pub fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, lim.rlim_cur))
}
