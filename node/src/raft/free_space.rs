//! The free-space alarm: when the file system holding the data dir has
//! less free space than `storage.min_free_bytes`, new client writes are
//! refused (`RESOURCE_EXHAUSTED`, naming the alarm and the threshold)
//! before the disk fills, like etcd's NOSPACE alarm; the alarm clears by
//! itself once space returns.
//!
//! Only new proposals are refused: Raft's own traffic (appends from the
//! leader, votes, snapshots) goes on, so a node low on space keeps up with
//! the cluster while an operator frees space, and a leader low on space
//! still commits what it already accepted. Log segments are preallocated
//! (`segment_log::preallocate`), so the space an append needs was taken
//! when its segment was created, and a full disk shows up as a failed
//! roll-over, which stops the node, not as a torn write.
//!
//! [`FreeSpace`] is the policy (fed observations, answers questions; no
//! I/O); [`run`] is the loop that feeds it `statvfs` results.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Free space on the data dir's file system, and the alarm it raises.
/// Lock-free: every proposal asks [`FreeSpace::refusal`].
pub struct FreeSpace {
    dir: PathBuf,
    threshold: u64,
    free: AtomicU64,
    alarm: AtomicBool,
}

impl FreeSpace {
    /// Watches the file system of `dir`; the alarm is on below `threshold`
    /// free bytes. Nothing is known (and no alarm raised) until the first
    /// observation.
    pub fn new(dir: &Path, threshold: u64) -> Self {
        FreeSpace {
            dir: dir.to_path_buf(),
            threshold,
            free: AtomicU64::new(u64::MAX),
            alarm: AtomicBool::new(false),
        }
    }

    /// Records that `free` bytes are available; returns the alarm's new
    /// state when it changed.
    pub fn observe(&self, free: u64) -> Option<bool> {
        self.free.store(free, Ordering::Relaxed);
        let on = free < self.threshold;
        (self.alarm.swap(on, Ordering::AcqRel) != on).then_some(on)
    }

    /// True while writes are refused.
    pub fn alarm(&self) -> bool {
        self.alarm.load(Ordering::Acquire)
    }

    /// Bytes available at the last observation (`u64::MAX` before the first).
    pub fn free_bytes(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// The alarm threshold (`storage.min_free_bytes`).
    pub fn threshold(&self) -> u64 {
        self.threshold
    }

    /// Why a new write is refused now, if it is.
    pub fn refusal(&self) -> Option<String> {
        self.alarm().then(|| {
            format!(
                "free-space alarm: {} bytes free on the file system of {}, below \
                 storage.min_free_bytes = {}; writes are refused until space is freed",
                self.free_bytes(),
                self.dir.display(),
                self.threshold
            )
        })
    }

    /// Asks the file system once.
    pub fn check(&self) -> io::Result<Option<bool>> {
        Ok(self.observe(available_bytes(&self.dir)?))
    }
}

/// Bytes an unprivileged process may still write on the file system of
/// `dir` (`statvfs`: available blocks times the fragment size).
pub fn available_bytes(dir: &Path) -> io::Result<u64> {
    let path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `statvfs` is plain old data, all zeros is a valid value, and
    // the call only writes into it; `path` is a NUL-terminated string that
    // outlives the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Checks free space every `interval` until `stopped`, logging each time
/// the alarm is raised or cleared. `statvfs` runs on the blocking pool: a
/// hung file system must not stall the runtime.
pub async fn run(
    space: Arc<FreeSpace>,
    interval: Duration,
    stopped: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stopped);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once; the node checked when it started.
    tick.tick().await;
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tick.tick() => {}
        }
        let s = space.clone();
        match tokio::task::spawn_blocking(move || s.check()).await {
            Ok(Ok(Some(true))) => tracing::warn!(
                free_bytes = space.free_bytes(),
                threshold = space.threshold(),
                dir = %space.dir.display(),
                "free-space alarm raised: new writes are refused"
            ),
            Ok(Ok(Some(false))) => tracing::info!(
                free_bytes = space.free_bytes(),
                threshold = space.threshold(),
                "free-space alarm cleared: writes are accepted again"
            ),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::warn!(
                dir = %space.dir.display(),
                error = %e,
                "statvfs of the data dir failed; keeping the last free-space reading"
            ),
            Err(e) => tracing::warn!(error = %e, "free-space check did not finish"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alarm_is_raised_below_the_threshold_and_clears_by_itself() {
        let space = FreeSpace::new(Path::new("/data"), 1000);
        assert!(
            !space.alarm() && space.refusal().is_none(),
            "unknown: no alarm"
        );
        assert_eq!(space.observe(5000), None);
        assert_eq!(space.observe(999), Some(true));
        let why = space.refusal().expect("refused");
        assert!(
            why.contains("free-space alarm")
                && why.contains("999 bytes free")
                && why.contains("storage.min_free_bytes = 1000"),
            "{why}"
        );
        assert_eq!(space.observe(10), None, "still on");
        assert_eq!(space.observe(1000), Some(false));
        assert!(space.refusal().is_none());
    }

    #[test]
    fn the_real_file_system_has_some_space() {
        let dir = tempfile::tempdir().unwrap();
        assert!(available_bytes(dir.path()).unwrap() > 0);
        let space = FreeSpace::new(dir.path(), u64::MAX);
        assert_eq!(space.check().unwrap(), Some(true));
        assert!(available_bytes(&dir.path().join("missing")).is_err());
    }
}
