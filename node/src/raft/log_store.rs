//! The Raft log and hard state: entries in append-only segment files
//! ([`SegmentLog`]), the vote, the purge point and the committed log id in
//! the hard state file beside them ([`hard_state`]).
//!
//! Durability is the whole point: `append` writes the entries (readable at
//! once, as openraft requires) and hands openraft's callback to the
//! *flusher*, one thread per store that makes them durable and only then
//! fires the callbacks, in the order the appends were made. Durable means
//! an `fdatasync` of the segment file, the same promise etcd's WAL makes.
//! Raft counts an entry towards a quorum only once its callback fired, so
//! an acknowledged write is on disk on a quorum. One sync covers every
//! append queued while the previous one ran (group commit).
//!
//! Votes and purge points go through the same thread: the hard state file
//! is rewritten and synced (see [`hard_state`] for why not sled any more).
//! A vote is durable before `save_vote` returns; purged segments are
//! deleted only after the purge point is durable, so the log never has a
//! hole a restart could see.
//!
//! A storage error is fatal and sticky: the flusher fails that job and
//! every later one (after a failed `fdatasync` the page cache can no longer
//! be trusted, so a retry that "succeeds" would lie), openraft stops on the
//! failed callback, and [`LogStore::failure`] names the operation and the
//! file so the node can log it and exit.
//!
//! On open, nothing that openraft relies on is taken on trust
//! ([`LogStore::open_with`]): the segments are checked record by record,
//! gaps must be covered by the purge point or the snapshot, the vote must
//! be at least as new as the last entry's leader (a node accepts entries
//! only from a leader whose vote it saved first, so an older vote means it
//! went back), and the committed hint is never allowed past the log.
//!
//! Two things keep the log off the write path's critical section:
//! - the most recent entries are also kept decoded in memory ([`Recent`]):
//!   openraft reads each entry back right after appending it, to replicate
//!   it and to apply it, and those reads skip the disk and bincode;
//! - purging only records the purge point; the flusher deletes the purged
//!   segments after its next sync. openraft awaits `purge` on its core task.
//!   Reads never see entries at or below the purge point.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::fs::File;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use super::hard_state::{self, HardState};
use super::segment_log::{self, LogError, RESTORE_ADVICE, SegmentLog};
use super::typ::{Entry, LogId, Vote};
use super::{TypeConfig, from_bincode};
use crate::metrics::Metrics;

/// Where the vote, purge point and committed log id were kept in sled
/// before the hard state file (read once, when the file does not exist).
const LEGACY_META_TREE: &str = "raft_meta";
const KEY_VOTE: &[u8] = b"vote";
const KEY_PURGED: &[u8] = b"last_purged";
const KEY_COMMITTED: &[u8] = b"committed";
/// The sled tree that held the entries before the segment log.
const LEGACY_LOG_TREE: &str = "log";
/// Entries kept decoded in memory: several seconds of appends at full
/// speed, so replication and apply, which trail appends by milliseconds,
/// always find theirs.
const RECENT_ENTRIES: usize = 16_384;
/// ... and at most this many bytes of them (as encoded on disk): with
/// maximal entries (64 KiB of progress) the count alone let the tail hold
/// a gigabyte. Older entries are read back from the segments.
const RECENT_BYTES: u64 = 32 << 20;

/// How the log store is opened.
#[derive(Clone)]
pub struct LogOptions {
    /// Where fsync latency is reported.
    pub metrics: Metrics,
    /// Segments roll over at this size.
    pub segment_bytes: u64,
    /// The last log id in the durable snapshot (`StateStore::snapshot_log_id`),
    /// if any: entries up to it may be missing from the log, as after a
    /// snapshot install whose purge point a crash kept from disk.
    pub snapshot: Option<LogId>,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            metrics: Metrics::default(),
            segment_bytes: segment_log::SEGMENT_BYTES,
            snapshot: None,
        }
    }
}

/// The log store. Cheap to clone: every part is shared.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    segments: Arc<Mutex<SegmentLog>>,
    recent: Arc<Mutex<Recent>>,
    /// The hard state as it is now; the flusher writes it out.
    hard: Arc<Mutex<HardState>>,
    /// One past the last purged index (0: nothing purged). Entries below it
    /// may still be on disk until the flusher deletes their segment; reads
    /// skip them.
    purged_below: Arc<AtomicU64>,
    /// Bytes ever appended to the log by this process (for the snapshot
    /// trigger by bytes, `crate::compaction`).
    appended: Arc<AtomicU64>,
    flusher: mpsc::Sender<Flush>,
    health: Arc<StorageHealth>,
}

/// Whether the log's storage has failed, and the test seam that makes it
/// fail. Shared by the store's handles and its flusher.
pub struct StorageHealth {
    failure: tokio::sync::watch::Sender<Option<String>>,
    /// The errno an injected failure reports (0: none armed).
    injected: AtomicI32,
    /// Syncs left before the injected failure (see [`LogStore::fail_sync`]).
    countdown: AtomicU64,
}

impl StorageHealth {
    fn new() -> Self {
        StorageHealth {
            failure: tokio::sync::watch::channel(None).0,
            injected: AtomicI32::new(0),
            countdown: AtomicU64::new(0),
        }
    }

    /// The errno this sync must fail with, when an injected failure is
    /// armed and due.
    fn injected_now(&self) -> Option<i32> {
        let errno = self.injected.load(Ordering::Acquire);
        if errno == 0 {
            return None;
        }
        match self.countdown.fetch_sub(1, Ordering::AcqRel) {
            0 | 1 => {
                self.injected.store(0, Ordering::Release);
                Some(errno)
            }
            _ => None,
        }
    }

    /// `fdatasync`s `file` (at `path`), or fails as injected.
    fn sync(&self, file: &File, op: &'static str, path: &Path) -> Result<(), LogError> {
        let r = match self.injected_now() {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => file.sync_data(),
        };
        r.map_err(|source| LogError::Io {
            op,
            file: path.display().to_string(),
            source,
        })
    }
}

/// The tail of the log, decoded: entries `first..first + entries.len()`.
/// Always a suffix of the log (appends go at the tail, truncation cuts the
/// tail, purges cut the head), so a read inside it needs no disk.
#[derive(Default)]
struct Recent {
    first: u64,
    entries: VecDeque<Entry>,
    /// Encoded size of each entry, in step with `entries`, and their sum.
    sizes: VecDeque<u64>,
    bytes: u64,
}

impl Recent {
    fn end(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    /// Adds the entry at the tail; `size` is its encoded size.
    fn push(&mut self, entry: Entry, size: u64) {
        let index = entry.index();
        if self.entries.is_empty() || index != self.end() {
            // A fresh store, or after a restart or a truncation: start here.
            self.entries.clear();
            self.sizes.clear();
            self.bytes = 0;
            self.first = index;
        }
        self.entries.push_back(entry);
        self.sizes.push_back(size);
        self.bytes += size;
        while self.entries.len() > RECENT_ENTRIES
            || (self.bytes > RECENT_BYTES && self.entries.len() > 1)
        {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) -> Option<Entry> {
        let entry = self.entries.pop_front()?;
        self.bytes -= self.sizes.pop_front().unwrap_or(0);
        self.first += 1;
        Some(entry)
    }

    /// Keeps entries up to and including `last` (none if `None`).
    fn truncate_after(&mut self, last: Option<u64>) {
        let keep = match last {
            Some(l) if l >= self.first => (l + 1 - self.first) as usize,
            _ => 0,
        };
        self.entries.truncate(keep);
        while self.sizes.len() > keep {
            self.bytes -= self.sizes.pop_back().unwrap_or(0);
        }
    }

    /// Drops entries up to and including `upto`.
    fn purge(&mut self, upto: u64) {
        while self.first <= upto && self.pop_front().is_some() {}
        if self.entries.is_empty() {
            self.first = self.first.max(upto + 1);
        }
    }

    /// Entries `from..to`, when all of them are here. Empty (after a
    /// restart, before the first append) it knows nothing: the log's tail
    /// is on disk.
    fn get(&self, from: u64, to: u64) -> Option<Vec<Entry>> {
        if self.entries.is_empty() || from < self.first || to > self.end() || from > to {
            return None;
        }
        let (a, b) = ((from - self.first) as usize, (to - self.first) as usize);
        Some(self.entries.range(a..b).cloned().collect())
    }
}

/// Work for the flusher thread.
enum Flush {
    /// Make the appends so far durable, then report.
    Append(IOFlushed<TypeConfig>),
    /// Make the hard state (the vote) durable, then report.
    Meta(tokio::sync::oneshot::Sender<io::Result<()>>),
    /// Make the hard state (the purge point) durable, then delete the
    /// segments at or below this index.
    Purge(u64),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A failure every job after it is failed with too.
#[derive(Clone)]
struct Failed {
    kind: io::ErrorKind,
    msg: String,
}

impl Failed {
    fn to_io(&self) -> io::Error {
        io::Error::new(self.kind, self.msg.clone())
    }
}

/// What the flusher works on.
struct Flusher {
    dir: PathBuf,
    segments: Arc<Mutex<SegmentLog>>,
    hard: Arc<Mutex<HardState>>,
    metrics: Metrics,
    health: Arc<StorageHealth>,
}

impl Flusher {
    /// Waits for work, takes everything queued, syncs once for all of it,
    /// deletes purged segments, completes the rest in arrival order. Ends
    /// when every store handle is gone. After the first failure it fails
    /// everything (see the module doc).
    fn run(self, rx: mpsc::Receiver<Flush>) {
        let mut failed: Option<Failed> = None;
        while let Ok(first) = rx.recv() {
            let mut jobs = vec![first];
            jobs.extend(rx.try_iter());
            let res = match &failed {
                Some(f) => Err(f.clone()),
                None => self.flush(&jobs).map_err(|io| {
                    let f = Failed {
                        kind: io.kind(),
                        msg: io.to_string(),
                    };
                    tracing::error!(cause = %f.msg, "log storage failed; the node stops");
                    self.health.failure.send_replace(Some(f.msg.clone()));
                    failed = Some(f.clone());
                    f
                }),
            };
            for job in jobs {
                let r = res.as_ref().map(|_| ()).map_err(Failed::to_io);
                match job {
                    Flush::Append(cb) => cb.io_completed(r),
                    Flush::Meta(tx) => {
                        let _ = tx.send(r);
                    }
                    Flush::Purge(_) => {}
                }
            }
        }
    }

    /// One sync for `jobs`: the active segment if any append is among
    /// them, the hard state if a vote or purge point is, then the purged
    /// segments' deletion.
    fn flush(&self, jobs: &[Flush]) -> io::Result<()> {
        let started = std::time::Instant::now();
        let appends = jobs.iter().any(|j| matches!(j, Flush::Append(_)));
        let metadata = jobs.iter().any(|j| !matches!(j, Flush::Append(_)));
        if appends {
            // The active segment; older ones were synced when they stopped
            // being active.
            let active = lock(&self.segments).active_file();
            if let Some((file, path)) = active {
                self.health.sync(&file, "fdatasync of log segment", &path)?;
            }
        }
        if metadata {
            let state = lock(&self.hard).clone();
            if let Some(errno) = self.health.injected_now() {
                return Err(LogError::Io {
                    op: "fdatasync of raft state file",
                    file: hard_state::path(&self.dir).display().to_string(),
                    source: io::Error::from_raw_os_error(errno),
                }
                .into());
            }
            hard_state::store(&self.dir, &state)?;
        }
        self.metrics
            .storage
            .observe_fsync(if metadata { "vote" } else { "append" }, started);
        let purge_upto = jobs
            .iter()
            .filter_map(|j| match j {
                Flush::Purge(upto) => Some(*upto),
                _ => None,
            })
            .max();
        if let Some(upto) = purge_upto {
            // Before the callbacks, so whoever waits on a later append
            // finds the segments gone (one unlink per snapshot).
            let paths = lock(&self.segments).detach_purged(upto);
            segment_log::remove_segments(&self.dir, &paths)?;
        }
        Ok(())
    }
}

/// The term of the leader that wrote `log_id`.
fn term_of(log_id: &LogId) -> u64 {
    log_id.committed_leader_id().term
}

/// Why the log store refuses to open: the check and what to do.
fn refuse(what: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{what}. {RESTORE_ADVICE}"),
    )
}

impl LogStore {
    /// Opens (or creates) the log in directory `log_dir`, with sled `db`
    /// for what older data dirs kept there; starts its flusher.
    pub fn open(db: &sled::Db, log_dir: &Path) -> io::Result<LogStore> {
        LogStore::open_with(db, log_dir, LogOptions::default())
    }

    /// [`LogStore::open`] with options. Refuses (with the file, the offset
    /// or the values, and what to do) a log that is not what this node
    /// wrote; see the module doc.
    pub fn open_with(db: &sled::Db, log_dir: &Path, opts: LogOptions) -> io::Result<LogStore> {
        let stored = hard_state::load(log_dir)?;
        let had_file = stored.is_some();
        let mut hard = match stored {
            Some(h) => h,
            None => legacy_hard_state(db)?,
        };
        let purged_below = hard.purged.as_ref().map_or(0, |p| p.index() + 1);
        migrate_from_sled(db, log_dir, purged_below)?;
        let snapshot_next = opts.snapshot.as_ref().map_or(0, |s| s.index() + 1);
        let mut log =
            SegmentLog::open_with(log_dir, opts.segment_bytes, purged_below.max(snapshot_next))?;
        if !had_file {
            // Fresh, or moving out of sled: the file exists from now on.
            hard_state::store(log_dir, &hard)?;
            clear_legacy_hard_state(db)?;
        }
        let mut purged_below = purged_below;
        // Entries missing at or above the purge point: only the snapshot
        // may explain them (its purge point did not reach the disk before a
        // crash). Then it is the purge point.
        if !log.is_empty() && log.contiguous_from() > purged_below {
            let from = log.contiguous_from();
            match &opts.snapshot {
                Some(snap) if from <= snap.index() + 1 => {
                    tracing::warn!(
                        purged = ?hard.purged,
                        snapshot = %snap,
                        "log entries below the snapshot are missing: purging up to the snapshot"
                    );
                    hard.purged = Some(*snap);
                    purged_below = snap.index() + 1;
                    hard_state::store(log_dir, &hard)?;
                }
                _ => {
                    return Err(refuse(format!(
                        "log in {}: entries from {purged_below} are kept, but the log holds \
                         none from {purged_below} to {} and the snapshot ({:?}) does not cover \
                         them (lost segment files?)",
                        log_dir.display(),
                        from - 1,
                        opts.snapshot.as_ref().map(|s| s.index()),
                    )));
                }
            }
        }
        if purged_below > 0 {
            // Segments a purge had not deleted yet when the node stopped.
            let stale = log.detach_purged(purged_below - 1);
            segment_log::remove_segments(log_dir, &stale)?;
        }
        let last_entry: Option<Entry> = if log.end() > purged_below {
            log.last()?
        } else {
            None
        };
        let last = last_entry.as_ref().map(|e| e.log_id()).or(hard.purged);
        check_vote(&hard, last.as_ref(), log_dir)?;
        hard.committed = clamp_committed(&log, &hard, last.as_ref(), purged_below)?;

        let segments = Arc::new(Mutex::new(log));
        let hard = Arc::new(Mutex::new(hard));
        let health = Arc::new(StorageHealth::new());
        let (flusher, rx) = mpsc::channel();
        let worker = Flusher {
            dir: log_dir.to_path_buf(),
            segments: segments.clone(),
            hard: hard.clone(),
            metrics: opts.metrics,
            health: health.clone(),
        };
        std::thread::Builder::new()
            .name("herald-log-flush".into())
            .spawn(move || worker.run(rx))?;
        Ok(LogStore {
            db: db.clone(),
            segments,
            recent: Arc::default(),
            hard,
            purged_below: Arc::new(AtomicU64::new(purged_below)),
            appended: Arc::new(AtomicU64::new(0)),
            flusher,
            health,
        })
    }

    /// Bytes this process appended to the log, ever.
    pub fn appended_bytes(&self) -> u64 {
        self.appended.load(Ordering::Relaxed)
    }

    /// Bytes on disk: sled's and the log's (0 for what it cannot tell).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0) + lock(&self.segments).bytes()
    }

    /// Entries kept in the log (for metrics and status); counts purged
    /// entries whose segment is not deleted yet.
    pub fn len(&self) -> usize {
        lock(&self.segments).len() as usize
    }

    /// True when the log holds no entries.
    pub fn is_empty(&self) -> bool {
        lock(&self.segments).is_empty()
    }

    /// The first fatal storage failure (the operation and the file), once
    /// there is one. Raft stops on it too, through the failed callback.
    pub fn failure(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.health.failure.subscribe()
    }

    /// Test seam: the next sync (of the active segment or of the hard
    /// state) fails with OS error `errno` (e.g. `libc::EIO`) instead of
    /// touching the disk, as a failing disk would make it. Fail-stop is
    /// tested through it, without a broken disk.
    pub fn fail_next_sync(&self, errno: i32) {
        self.fail_sync(1, errno);
    }

    /// Test seam: the `nth` sync from now (1 = the next) fails with OS
    /// error `errno`; see [`LogStore::fail_next_sync`].
    pub fn fail_sync(&self, nth: u64, errno: i32) {
        self.health.countdown.store(nth, Ordering::Release);
        self.health.injected.store(errno, Ordering::Release);
    }

    /// Writes the hard state now, the latest committed log id included, so
    /// a clean restart re-applies everything it had applied.
    pub async fn persist_hard_state(&self) -> io::Result<()> {
        self.sync_meta().await
    }

    async fn sync_meta(&self) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.flusher
            .send(Flush::Meta(tx))
            .map_err(|_| Self::flusher_gone())?;
        rx.await.map_err(|_| Self::flusher_gone())?
    }

    fn recent(&self) -> MutexGuard<'_, Recent> {
        lock(&self.recent)
    }

    fn flusher_gone() -> io::Error {
        io::Error::other("log flusher thread is gone")
    }
}

/// A vote older than the log's last leader went back after a crash: the
/// node may have voted again since, in a term it had already voted in, or
/// accept entries from a deposed leader. Refused, not repaired: raising it
/// to the last entry's leader could still be older than the lost vote.
fn check_vote(hard: &HardState, last: Option<&LogId>, dir: &Path) -> io::Result<()> {
    let Some(last) = last else {
        return Ok(());
    };
    let vote_term = hard.vote.as_ref().map_or(0, |v| v.leader_id().term);
    if vote_term < term_of(last) {
        return Err(refuse(format!(
            "raft state in {}: the saved vote (term {vote_term}) is older than the last log \
             entry (index {}, written by the leader of term {}): the vote went back after a \
             crash, and starting could elect two leaders in one term and lose acknowledged \
             writes",
            hard_state::path(dir).display(),
            last.index(),
            term_of(last),
        )));
    }
    Ok(())
}

/// The committed hint, never past the log: it may be newer than the
/// entries that reached the disk (a follower learns the commit index
/// before its own copy is synced, and the hint rides along with a later
/// vote). Every durable entry at or below it is committed (the follower
/// matched the leader's log up to there, and conflicting entries are only
/// ever truncated durably), so the clamp keeps what is known.
fn clamp_committed(
    log: &SegmentLog,
    hard: &HardState,
    last: Option<&LogId>,
    purged_below: u64,
) -> io::Result<Option<LogId>> {
    let Some(committed) = hard.committed else {
        return Ok(None);
    };
    let Some(last) = last else {
        return Ok(None);
    };
    if committed.index() > last.index() {
        return Ok(Some(*last));
    }
    if committed.index() < purged_below {
        return Ok(Some(committed));
    }
    let at: Vec<Entry> = log.read(committed.index(), committed.index() + 1)?;
    match at.first() {
        Some(e) if e.log_id() == committed => Ok(Some(committed)),
        _ => {
            tracing::warn!(
                %committed,
                "the committed log id does not match the log; re-applying from the snapshot only"
            );
            Ok(hard.purged)
        }
    }
}

/// The vote, purge point and committed log id as sled held them before the
/// hard state file (plain bincode values), or nothing.
fn legacy_hard_state(db: &sled::Db) -> io::Result<HardState> {
    let meta = db.open_tree(LEGACY_META_TREE).map_err(io::Error::other)?;
    let get =
        |key: &[u8]| -> io::Result<Option<sled::IVec>> { meta.get(key).map_err(io::Error::other) };
    Ok(HardState {
        vote: get(KEY_VOTE)?.map(|v| from_bincode(&v)).transpose()?,
        purged: get(KEY_PURGED)?.map(|v| from_bincode(&v)).transpose()?,
        committed: get(KEY_COMMITTED)?.map(|v| from_bincode(&v)).transpose()?,
    })
}

/// Once the hard state file holds them, sled's copies go: nothing reads
/// them again, and an old copy must never be mistaken for the current one.
fn clear_legacy_hard_state(db: &sled::Db) -> io::Result<()> {
    if db
        .tree_names()
        .iter()
        .any(|n| &n[..] == LEGACY_META_TREE.as_bytes())
    {
        db.drop_tree(LEGACY_META_TREE).map_err(io::Error::other)?;
        db.flush().map_err(io::Error::other)?;
    }
    Ok(())
}

/// Moves the entries of a data dir from before the segment log out of
/// sled's tree `log` into `log_dir`, once. The segments are written in a
/// side directory and renamed into place when complete and synced, so a
/// crash halfway leaves the sled copy in charge and the move starts over.
/// Entries below `purged_below` are left behind: they are purged.
fn migrate_from_sled(db: &sled::Db, log_dir: &Path, purged_below: u64) -> io::Result<()> {
    let legacy = db.open_tree(LEGACY_LOG_TREE).map_err(io::Error::other)?;
    if legacy.is_empty() {
        return Ok(());
    }
    if !log_dir.exists() {
        let side: PathBuf = log_dir.with_extension("migrating");
        if side.exists() {
            std::fs::remove_dir_all(&side)?;
        }
        let mut log = SegmentLog::open(&side)?;
        let mut batch = Vec::with_capacity(1_000);
        for kv in legacy.range(purged_below.to_be_bytes()..) {
            let (_, v) = kv.map_err(io::Error::other)?;
            let entry: Entry = from_bincode(&v)?;
            batch.push(entry);
            if batch.len() == 1_000 {
                log.append(batch.iter().map(|e| (e.index(), e)))?;
                batch.clear();
            }
        }
        log.append(batch.iter().map(|e| (e.index(), e)))?;
        if let Some((file, _)) = log.active_file() {
            file.sync_data()?;
        }
        drop(log);
        std::fs::rename(&side, log_dir)?;
        if let Some(parent) = log_dir.parent() {
            segment_log::sync_dir(parent)?;
        }
        tracing::info!(entries = legacy.len(), dir = %log_dir.display(), "moved the raft log out of sled");
    }
    // The segments are complete: the sled copy can go.
    db.drop_tree(LEGACY_LOG_TREE).map_err(io::Error::other)?;
    db.flush().map_err(io::Error::other)?;
    Ok(())
}

/// `range` as a half-open `from..to` of log indices.
fn index_range<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let from = match range.start_bound() {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let to = match range.end_bound() {
        Bound::Included(i) => i.saturating_add(1),
        Bound::Excluded(i) => *i,
        Bound::Unbounded => u64::MAX,
    };
    (from, to)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let (from, to) = index_range(&range);
        let from = from.max(self.purged_below.load(Ordering::Acquire));
        if from >= to {
            return Ok(Vec::new());
        }
        {
            let recent = self.recent();
            if let Some(hit) = recent.get(from, to.min(recent.end())) {
                return Ok(hit);
            }
        }
        let read = lock(&self.segments).read_indexed::<Entry>(from, to)?;
        read.into_iter()
            .map(|(index, entry)| {
                if entry.index() == index {
                    Ok(entry)
                } else {
                    Err(refuse(format!(
                        "log in {}: the record for index {index} holds the entry for index {}",
                        lock(&self.segments).dir().display(),
                        entry.index()
                    )))
                }
            })
            .collect()
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        Ok(lock(&self.hard).vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last_purged_log_id = lock(&self.hard).purged;
        let purged_below = self.purged_below.load(Ordering::Acquire);
        let last = {
            let log = lock(&self.segments);
            if log.end() > purged_below {
                log.last::<Entry>()?.map(|e| e.log_id())
            } else {
                None
            }
        };
        Ok(LogState {
            last_log_id: last.or(last_purged_log_id),
            last_purged_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        lock(&self.hard).vote = Some(*vote);
        self.sync_meta().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        // In memory only: written with the next vote or purge point and on
        // a clean shutdown (see `hard_state`); a hint, clamped on open.
        lock(&self.hard).committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        Ok(lock(&self.hard).committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let written = {
            let mut segments = lock(&self.segments);
            let before = segments.bytes();
            segments.append(entries.iter().map(|e| (e.index(), e)))?;
            segments.bytes().saturating_sub(before)
        };
        self.appended.fetch_add(written, Ordering::Relaxed);
        // A batch's entries are charged its average size.
        let each = written / entries.len().max(1) as u64;
        let mut recent = self.recent();
        for entry in entries {
            recent.push(entry, each);
        }
        drop(recent);
        // Readable now; durable once the flusher's next sync completes.
        self.flusher
            .send(Flush::Append(callback))
            .map_err(|_| Self::flusher_gone())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let last = last_log_id.map(|l| l.index());
        self.recent().truncate_after(last);
        // Durable before it returns: truncation is rare (a new leader
        // overwriting an uncommitted tail).
        Ok(lock(&self.segments).truncate_after(last)?)
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        // Record the purge point; from then on reads skip entries at or
        // below it. The flusher makes the point durable and then deletes
        // the segments wholly below it, so the log never has a hole.
        {
            let mut hard = lock(&self.hard);
            if hard.purged.as_ref().is_none_or(|p| p < &log_id) {
                hard.purged = Some(log_id);
            }
        }
        let upto = log_id.index();
        self.purged_below.fetch_max(upto + 1, Ordering::AcqRel);
        self.recent().purge(upto);
        self.flusher
            .send(Flush::Purge(upto))
            .map_err(|_| Self::flusher_gone())
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::{blank_ent, log_id};

    use super::*;

    fn indices(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.index()).collect()
    }

    fn open(dir: &Path) -> (sled::Db, LogStore) {
        let db = sled::Config::new().path(dir.join("sled")).open().unwrap();
        let store = reopen(&db, dir);
        (db, store)
    }

    /// A fresh handle on the store in `dir`: nothing cached.
    fn reopen(db: &sled::Db, dir: &Path) -> LogStore {
        LogStore::open(db, &dir.join("log")).unwrap()
    }

    fn try_reopen(db: &sled::Db, dir: &Path, snapshot: Option<LogId>) -> io::Result<LogStore> {
        let opts = LogOptions {
            snapshot,
            ..LogOptions::default()
        };
        LogStore::open_with(db, &dir.join("log"), opts)
    }

    /// What a follower does before it takes entries from the leader of
    /// term 1: saves its vote.
    async fn voted(store: &mut LogStore) {
        store.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
    }

    #[test]
    fn recent_entries_follow_appends_truncations_and_purges() {
        let mut r = Recent::default();
        for i in 5..10 {
            r.push(blank_ent::<TypeConfig>(1, 1, i), 10);
        }
        assert_eq!(r.get(5, 10).map(|e| indices(&e)), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(r.get(4, 6), None, "below the first entry: ask the disk");
        assert_eq!(r.get(9, 11), None, "past the last entry");
        r.truncate_after(Some(7));
        assert_eq!(r.end(), 8);
        // An append that does not follow the tail starts the cache afresh.
        r.push(blank_ent::<TypeConfig>(2, 1, 20), 10);
        assert_eq!((r.first, r.end()), (20, 21));
        r.purge(20);
        assert!(r.entries.is_empty());
        assert_eq!(r.first, 21);
        r.push(blank_ent::<TypeConfig>(2, 1, 21), 10);
        assert_eq!(r.get(21, 22).map(|e| indices(&e)), Some(vec![21]));
    }

    #[test]
    fn the_recent_cache_is_bounded() {
        let mut r = Recent::default();
        for i in 0..(RECENT_ENTRIES as u64 + 10) {
            r.push(blank_ent::<TypeConfig>(1, 1, i), 10);
        }
        assert_eq!(r.entries.len(), RECENT_ENTRIES);
        assert_eq!(r.first, 10);
    }

    /// Appends entries of term 1 and returns what their flush callback got.
    async fn try_append(store: &mut LogStore, range: std::ops::Range<u64>) -> io::Result<()> {
        let entries: Vec<Entry> = range.map(|i| blank_ent::<TypeConfig>(1, 1, i)).collect();
        let (tx, rx) = <TypeConfig as openraft::type_config::TypeConfigExt>::oneshot();
        let done = IOFlushed::signal(tx);
        store.append(entries, done).await?;
        rx.await.map_err(|_| io::Error::other("callback dropped"))?
    }

    async fn append(store: &mut LogStore, range: std::ops::Range<u64>) {
        try_append(store, range).await.unwrap();
    }

    /// Waits until the flusher has handled everything sent before.
    async fn flushed(store: &mut LogStore) {
        append(store, 0..0).await;
    }

    /// Reads served from disk (after a restart, nothing is cached) and from
    /// the cache must agree, and neither may return purged entries, even
    /// before their segment is deleted.
    #[tokio::test]
    async fn reads_skip_purged_entries_and_the_flusher_deletes_them() {
        let dir = tempfile::tempdir().unwrap();
        let (db, mut store) = open(dir.path());
        voted(&mut store).await;
        append(&mut store, 1..3_001).await;
        store
            .purge(log_id::<TypeConfig>(1, 1, 2_500))
            .await
            .unwrap();
        let got = store.try_get_log_entries(2_000..2_600).await.unwrap();
        assert_eq!(indices(&got), (2_501..2_600).collect::<Vec<_>>());
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index()), Some(2_500));
        assert_eq!(state.last_log_id.map(|l| l.index()), Some(3_000));

        // A fresh handle on the same data: nothing cached, read from disk.
        flushed(&mut store).await;
        drop(store);
        let mut reopened = reopen(&db, dir.path());
        let got = reopened.try_get_log_entries(2_400..).await.unwrap();
        assert_eq!(indices(&got), (2_501..3_001).collect::<Vec<_>>());
        let got = reopened.try_get_log_entries(2_990..2_995).await.unwrap();
        assert_eq!(indices(&got), (2_990..2_995).collect::<Vec<_>>());
    }

    /// Purging deletes whole segments, and only once the purge point is on
    /// disk; what is left still reads back after a restart.
    #[tokio::test]
    async fn purged_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let log_dir = dir.path().join("log");
        let db = sled::Config::new()
            .path(dir.path().join("sled"))
            .open()
            .unwrap();
        let opts = LogOptions {
            segment_bytes: 4096,
            ..LogOptions::default()
        };
        let open = || LogStore::open_with(&db, &log_dir, opts.clone());
        let mut store = open().unwrap();
        voted(&mut store).await;
        append(&mut store, 1..1_001).await;
        let segments = || {
            std::fs::read_dir(&log_dir)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .ends_with(".seg")
                })
                .count()
        };
        assert!(segments() > 2, "{} segments", segments());
        store.purge(log_id::<TypeConfig>(1, 1, 990)).await.unwrap();
        flushed(&mut store).await;
        assert_eq!(segments(), 1, "every segment but the last is gone");
        drop(store);
        let durable = hard_state::load(&log_dir).unwrap().unwrap();
        assert_eq!(durable.purged.map(|l| l.index()), Some(990));
        let mut reopened = open().unwrap();
        let got = reopened.try_get_log_entries(0..).await.unwrap();
        assert_eq!(indices(&got), (991..1_001).collect::<Vec<_>>());
    }

    /// What openraft does first after a restart: read the head of the log.
    /// The (empty) cache must not answer for it.
    #[tokio::test]
    async fn a_reopened_store_reads_its_log_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (db, mut store) = open(dir.path());
        voted(&mut store).await;
        append(&mut store, 0..100).await;
        drop(store);
        let mut reopened = reopen(&db, dir.path());
        let got = reopened.try_get_log_entries(0..64).await.unwrap();
        assert_eq!(indices(&got), (0..64).collect::<Vec<_>>());
        assert_eq!(
            reopened.read_vote().await.unwrap(),
            Some(Vote::new_committed(1, 1))
        );
    }

    /// The purge point is honoured from disk too: entries whose segment was
    /// not deleted yet when the node stopped are neither read nor reported
    /// as the last entry.
    #[tokio::test]
    async fn entries_left_behind_by_an_interrupted_purge_stay_invisible() {
        let dir = tempfile::tempdir().unwrap();
        let (db, mut store) = open(dir.path());
        voted(&mut store).await;
        append(&mut store, 1..11).await;
        // The purge point written, but no segment deleted.
        lock(&store.hard).purged = Some(log_id::<TypeConfig>(1, 1, 10));
        store.persist_hard_state().await.unwrap();
        drop(store);
        let mut reopened = reopen(&db, dir.path());
        assert!(reopened.try_get_log_entries(0..).await.unwrap().is_empty());
        let state = reopened.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index()), Some(10));
        assert_eq!(state.last_purged_log_id.map(|l| l.index()), Some(10));
    }

    /// issue 16, the power-cut finding: a vote older than the log it
    /// accepted means the vote went back; the node must not start on it.
    /// Sabotage check: with `check_vote` returning `Ok(())` this fails.
    #[tokio::test]
    async fn a_vote_older_than_the_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (db, mut store) = open(dir.path());
        store.save_vote(&Vote::new_committed(3, 1)).await.unwrap();
        let entries: Vec<Entry> = (0..5).map(|i| blank_ent::<TypeConfig>(3, 1, i)).collect();
        let (tx, rx) = <TypeConfig as openraft::type_config::TypeConfigExt>::oneshot();
        store.append(entries, IOFlushed::signal(tx)).await.unwrap();
        rx.await.unwrap().unwrap();
        drop(store);
        // The vote file put back to a state from term 2.
        let log_dir = dir.path().join("log");
        let mut hard = hard_state::load(&log_dir).unwrap().unwrap();
        hard.vote = Some(Vote::new_committed(2, 2));
        hard_state::store(&log_dir, &hard).unwrap();
        let err = try_reopen(&db, dir.path(), None).err().expect("refused");
        let msg = err.to_string();
        assert!(
            msg.contains("vote (term 2) is older than the last log entry (index 4")
                && msg.contains("raft_state")
                && msg.contains("replace flow"),
            "{msg}"
        );
    }

    /// The committed hint may be newer than the entries that reached the
    /// disk; it is clamped to the log, never trusted past it.
    #[tokio::test]
    async fn a_committed_index_past_the_durable_log_is_clamped() {
        let dir = tempfile::tempdir().unwrap();
        let (db, mut store) = open(dir.path());
        voted(&mut store).await;
        append(&mut store, 0..10).await;
        store
            .save_committed(Some(log_id::<TypeConfig>(1, 1, 50)))
            .await
            .unwrap();
        store.persist_hard_state().await.unwrap();
        drop(store);
        let mut reopened = reopen(&db, dir.path());
        let committed = reopened.read_committed().await.unwrap();
        assert_eq!(committed, Some(log_id::<TypeConfig>(1, 1, 9)));
    }

    /// A crash after a snapshot install wrote the first segment past the
    /// old tail but before the purge point reached the disk: the snapshot
    /// covers the gap, and becomes the purge point. Without a snapshot the
    /// same gap is refused. Sabotage check: with the snapshot ignored in
    /// `open_with`, the first reopen fails.
    #[tokio::test]
    async fn a_gap_covered_only_by_the_snapshot_becomes_the_purge_point() {
        let dir = tempfile::tempdir().unwrap();
        let (db, mut store) = open(dir.path());
        voted(&mut store).await;
        append(&mut store, 0..10).await;
        append(&mut store, 100..105).await;
        drop(store);
        let snap = log_id::<TypeConfig>(1, 1, 99);
        let err = try_reopen(&db, dir.path(), None)
            .err()
            .expect("gap refused");
        assert!(err.to_string().contains("missing"), "{err}");
        let mut store = try_reopen(&db, dir.path(), Some(snap)).unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(snap));
        let got = store.try_get_log_entries(0..).await.unwrap();
        assert_eq!(indices(&got), (100..105).collect::<Vec<_>>());
        drop(store);
        // Durable: it opens without the snapshot now.
        try_reopen(&db, dir.path(), None).unwrap();
    }

    /// A failed fdatasync fails the append's callback with the operation
    /// and the file, is reported once, and fails everything after it.
    #[tokio::test]
    async fn a_failed_sync_is_fatal_and_sticky() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, mut store) = open(dir.path());
        voted(&mut store).await;
        append(&mut store, 0..3).await;
        let mut failure = store.failure();
        assert!(failure.borrow().is_none());
        store.fail_next_sync(libc::EIO);
        let err = try_append(&mut store, 3..5).await.unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("fdatasync of log segment")
                && msg.contains(".seg")
                && msg.contains("os error 5"),
            "{msg}"
        );
        failure.changed().await.unwrap();
        assert_eq!(failure.borrow().as_deref(), Some(msg.as_str()));
        // Sticky: no later write succeeds on this disk.
        assert!(try_append(&mut store, 5..6).await.is_err());
        assert!(store.save_vote(&Vote::new_committed(2, 1)).await.is_err());
    }

    /// A data dir from before the segment log keeps its entries: they move
    /// from sled's `log` tree into segments on open, once; its vote and
    /// purge point move from sled into the hard state file.
    #[tokio::test]
    async fn a_log_kept_in_sled_moves_into_segments() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path().join("sled"))
            .open()
            .unwrap();
        let tree = db.open_tree(LEGACY_LOG_TREE).unwrap();
        for i in 1..=20u64 {
            let e = blank_ent::<TypeConfig>(1, 1, i);
            tree.insert(i.to_be_bytes(), bincode::serialize(&e).unwrap())
                .unwrap();
        }
        let meta = db.open_tree(LEGACY_META_TREE).unwrap();
        let purged = log_id::<TypeConfig>(1, 1, 5);
        meta.insert(KEY_PURGED, bincode::serialize(&purged).unwrap())
            .unwrap();
        let vote = Vote::new_committed(1, 1);
        meta.insert(KEY_VOTE, bincode::serialize(&vote).unwrap())
            .unwrap();
        // A half-done earlier attempt is thrown away.
        std::fs::create_dir_all(dir.path().join("log.migrating")).unwrap();
        std::fs::write(dir.path().join("log.migrating/junk"), b"x").unwrap();

        let mut store = reopen(&db, dir.path());
        let got = store.try_get_log_entries(0..).await.unwrap();
        assert_eq!(indices(&got), (6..=20).collect::<Vec<_>>());
        assert!(
            !db.tree_names()
                .iter()
                .any(|n| &n[..] == LEGACY_LOG_TREE.as_bytes()
                    || &n[..] == LEGACY_META_TREE.as_bytes())
        );
        assert!(!dir.path().join("log.migrating").exists());
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index()), Some(20));
        assert_eq!(state.last_purged_log_id, Some(purged));
        assert_eq!(store.read_vote().await.unwrap(), Some(vote));
        let hard = hard_state::load(&dir.path().join("log")).unwrap().unwrap();
        assert_eq!((hard.vote, hard.purged), (Some(vote), Some(purged)));
    }
}
