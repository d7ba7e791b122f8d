//! The Raft log and vote: entries in append-only segment files
//! ([`SegmentLog`]), the vote and the log's metadata in sled.
//!
//! sled's tree `raft_meta` holds the vote, the last purged log id and the
//! committed log id; directory `log/` holds the entries (a data dir from
//! before it kept them in sled's tree `log` and is moved over once, on
//! open).
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
//! Votes and purge points go through the same thread: sled's flush, then an
//! `fdatasync` of sled's data file through a handle of our own (on Linux
//! sled 0.34's flush ends in `sync_file_range`, which neither flushes the
//! disk's write cache nor persists the file's size). A vote is durable
//! before `save_vote` returns; purged segments are deleted only after the
//! purge point is durable, so the log never has a hole a restart could see.
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use super::segment_log::{self, SegmentLog};
use super::typ::{Entry, LogId, Vote};
use super::{TypeConfig, decode, encode};
use crate::metrics::Metrics;

const KEY_VOTE: &[u8] = b"vote";
const KEY_PURGED: &[u8] = b"last_purged";
const KEY_COMMITTED: &[u8] = b"committed";
/// The sled tree that held the entries before the segment log.
const LEGACY_LOG_TREE: &str = "log";
/// Entries kept decoded in memory: several seconds of appends at full
/// speed, so replication and apply, which trail appends by milliseconds,
/// always find theirs.
const RECENT_ENTRIES: usize = 16_384;

/// The log store. Cheap to clone: every part is shared.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    meta: sled::Tree,
    segments: Arc<Mutex<SegmentLog>>,
    recent: Arc<Mutex<Recent>>,
    /// One past the last purged index (0: nothing purged). Entries below it
    /// may still be on disk until the flusher deletes their segment; reads
    /// skip them.
    purged_below: Arc<AtomicU64>,
    flusher: mpsc::Sender<Flush>,
}

/// The tail of the log, decoded: entries `first..first + entries.len()`.
/// Always a suffix of the log (appends go at the tail, truncation cuts the
/// tail, purges cut the head), so a read inside it needs no disk.
#[derive(Default)]
struct Recent {
    first: u64,
    entries: VecDeque<Entry>,
}

impl Recent {
    fn end(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    fn push(&mut self, entry: Entry) {
        let index = entry.index();
        if self.entries.is_empty() || index != self.end() {
            // A fresh store, or after a restart or a truncation: start here.
            self.entries.clear();
            self.first = index;
        }
        self.entries.push_back(entry);
        if self.entries.len() > RECENT_ENTRIES {
            self.entries.pop_front();
            self.first += 1;
        }
    }

    /// Keeps entries up to and including `last` (none if `None`).
    fn truncate_after(&mut self, last: Option<u64>) {
        let keep = match last {
            Some(l) if l >= self.first => (l + 1 - self.first) as usize,
            _ => 0,
        };
        self.entries.truncate(keep);
    }

    /// Drops entries up to and including `upto`.
    fn purge(&mut self, upto: u64) {
        while self.first <= upto && self.entries.pop_front().is_some() {
            self.first += 1;
        }
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
    /// Make sled (the vote) durable, then report.
    Vote(tokio::sync::oneshot::Sender<io::Result<()>>),
    /// Make sled (the purge point) durable, then delete the segments at or
    /// below this index.
    Purge(u64),
}

fn io_err(e: sled::Error) -> io::Error {
    io::Error::other(e)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the flusher works on.
struct Flusher {
    db: sled::Db,
    /// sled's data file, for the `fdatasync` its flush leaves out.
    sled_file: File,
    segments: Arc<Mutex<SegmentLog>>,
    metrics: Metrics,
}

impl Flusher {
    /// Waits for work, takes everything queued, syncs once for all of it,
    /// deletes purged segments, completes the rest in arrival order. Ends
    /// when every store handle is gone.
    fn run(self, rx: mpsc::Receiver<Flush>) {
        while let Ok(first) = rx.recv() {
            let mut jobs = vec![first];
            jobs.extend(rx.try_iter());
            let started = std::time::Instant::now();
            let appends = jobs.iter().any(|j| matches!(j, Flush::Append(_)));
            let metadata = jobs.iter().any(|j| !matches!(j, Flush::Append(_)));
            let mut res = Ok(());
            if appends {
                // The active segment; older ones were synced when they stopped
                // being active.
                let file = lock(&self.segments).active_file();
                if let Some(file) = file {
                    res = file.sync_data();
                }
            }
            if metadata && res.is_ok() {
                res = self
                    .db
                    .flush()
                    .map_err(io_err)
                    .and_then(|_| self.sled_file.sync_data());
            }
            let op = if metadata { "vote" } else { "append" };
            self.metrics.observe_fsync(op, started);
            let purge_upto = jobs
                .iter()
                .filter_map(|j| match j {
                    Flush::Purge(upto) => Some(*upto),
                    _ => None,
                })
                .max();
            if let (Some(upto), Ok(())) = (purge_upto, &res) {
                // Before the callbacks, so whoever waits on a later append
                // finds the segments gone (one unlink per snapshot).
                self.delete_purged(upto);
            }
            for job in jobs {
                let r = match &res {
                    Ok(()) => Ok(()),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                };
                match job {
                    Flush::Append(cb) => cb.io_completed(r),
                    Flush::Vote(tx) => {
                        let _ = tx.send(r);
                    }
                    Flush::Purge(_) => {}
                }
            }
        }
    }

    /// Deletes the segments wholly at or below `upto` (its purge point is
    /// durable). A failure is logged: the next purge, or the next start,
    /// tries again.
    fn delete_purged(&self, upto: u64) {
        let (dir, paths) = {
            let mut log = lock(&self.segments);
            (log.dir().to_path_buf(), log.detach_purged(upto))
        };
        if let Err(e) = segment_log::remove_segments(&dir, &paths) {
            tracing::warn!(error = %e, "deleting purged log segments");
        }
    }
}

impl LogStore {
    /// Opens (or creates) the log: the metadata in `db` (the sled database
    /// in directory `sled_dir`), the entries in directory `log_dir`; starts
    /// its flusher.
    pub fn open(db: &sled::Db, sled_dir: &Path, log_dir: &Path) -> io::Result<LogStore> {
        LogStore::open_with_metrics(db, sled_dir, log_dir, Metrics::default())
    }

    /// [`LogStore::open`], reporting fsync latency to `metrics`.
    pub fn open_with_metrics(
        db: &sled::Db,
        sled_dir: &Path,
        log_dir: &Path,
        metrics: Metrics,
    ) -> io::Result<LogStore> {
        LogStore::open_sized(db, sled_dir, log_dir, metrics, segment_log::SEGMENT_BYTES)
    }

    /// [`LogStore::open_with_metrics`] with segments of `segment_bytes`.
    fn open_sized(
        db: &sled::Db,
        sled_dir: &Path,
        log_dir: &Path,
        metrics: Metrics,
        segment_bytes: u64,
    ) -> io::Result<LogStore> {
        // sled keeps everything in one file, `db`; fdatasync works on a
        // read-only handle.
        let data_file = sled_dir.join("db");
        let sled_file = File::open(&data_file).map_err(|e| {
            io::Error::new(e.kind(), format!("opening {}: {e}", data_file.display()))
        })?;
        let meta = db.open_tree("raft_meta").map_err(io_err)?;
        let purged: Option<LogId> = get_meta(&meta, KEY_PURGED)?;
        let purged_below = purged.map_or(0, |p| p.index() + 1);
        migrate_from_sled(db, log_dir, purged_below)?;
        let mut log = SegmentLog::open_with(log_dir, segment_bytes).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("opening the log in {}: {e}", log_dir.display()),
            )
        })?;
        if purged_below > 0 {
            // Segments a purge had not deleted yet when the node stopped.
            let stale = log.detach_purged(purged_below - 1);
            segment_log::remove_segments(log_dir, &stale)?;
        }
        let segments = Arc::new(Mutex::new(log));
        let (flusher, rx) = mpsc::channel();
        let worker = Flusher {
            db: db.clone(),
            sled_file,
            segments: segments.clone(),
            metrics,
        };
        std::thread::Builder::new()
            .name("herald-log-flush".into())
            .spawn(move || worker.run(rx))?;
        Ok(LogStore {
            db: db.clone(),
            meta,
            segments,
            recent: Arc::default(),
            purged_below: Arc::new(AtomicU64::new(purged_below)),
            flusher,
        })
    }

    /// Bytes on disk: sled's and the log's (0 for what it cannot tell).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0) + lock(&self.segments).bytes()
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> io::Result<()> {
        self.meta.insert(key, encode(value)?).map_err(io_err)?;
        Ok(())
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

    fn recent(&self) -> MutexGuard<'_, Recent> {
        lock(&self.recent)
    }

    fn flusher_gone() -> io::Error {
        io::Error::other("log flusher thread is gone")
    }
}

fn get_meta<T: serde::de::DeserializeOwned>(
    meta: &sled::Tree,
    key: &[u8],
) -> io::Result<Option<T>> {
    match meta.get(key).map_err(io_err)? {
        Some(v) => Ok(Some(decode(&v)?)),
        None => Ok(None),
    }
}

/// Moves the entries of a data dir from before the segment log out of
/// sled's tree `log` into `log_dir`, once. The segments are written in a
/// side directory and renamed into place when complete and synced, so a
/// crash halfway leaves the sled copy in charge and the move starts over.
/// Entries below `purged_below` are left behind: they are purged.
fn migrate_from_sled(db: &sled::Db, log_dir: &Path, purged_below: u64) -> io::Result<()> {
    let legacy = db.open_tree(LEGACY_LOG_TREE).map_err(io_err)?;
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
            let (_, v) = kv.map_err(io_err)?;
            let entry: Entry = decode(&v)?;
            batch.push(entry);
            if batch.len() == 1_000 {
                log.append(batch.iter().map(|e| (e.index(), e)))?;
                batch.clear();
            }
        }
        log.append(batch.iter().map(|e| (e.index(), e)))?;
        if let Some(file) = log.active_file() {
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
    db.drop_tree(LEGACY_LOG_TREE).map_err(io_err)?;
    db.flush().map_err(io_err)?;
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
        lock(&self.segments).read(from, to)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        get_meta(&self.meta, KEY_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId> = get_meta(&self.meta, KEY_PURGED)?;
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
        self.put_meta(KEY_VOTE, vote)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.flusher
            .send(Flush::Vote(tx))
            .map_err(|_| Self::flusher_gone())?;
        rx.await.map_err(|_| Self::flusher_gone())?
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        // Not flushed: it only lets a restarted node re-apply committed entries
        // before hearing from the leader; losing it is harmless.
        match committed {
            Some(c) => self.put_meta(KEY_COMMITTED, &c),
            None => self.meta.remove(KEY_COMMITTED).map(|_| ()).map_err(io_err),
        }
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        get_meta(&self.meta, KEY_COMMITTED)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        lock(&self.segments).append(entries.iter().map(|e| (e.index(), e)))?;
        let mut recent = self.recent();
        for entry in entries {
            recent.push(entry);
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
        lock(&self.segments).truncate_after(last)
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        // Record the purge point; from then on reads skip entries at or
        // below it. The flusher makes the point durable and then deletes
        // the segments wholly below it, so the log never has a hole.
        self.put_meta(KEY_PURGED, &log_id)?;
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
        LogStore::open(db, &dir.join("sled"), &dir.join("log")).unwrap()
    }

    #[test]
    fn recent_entries_follow_appends_truncations_and_purges() {
        let mut r = Recent::default();
        for i in 5..10 {
            r.push(blank_ent::<TypeConfig>(1, 1, i));
        }
        assert_eq!(r.get(5, 10).map(|e| indices(&e)), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(r.get(4, 6), None, "below the first entry: ask the disk");
        assert_eq!(r.get(9, 11), None, "past the last entry");
        r.truncate_after(Some(7));
        assert_eq!(r.end(), 8);
        // An append that does not follow the tail starts the cache afresh.
        r.push(blank_ent::<TypeConfig>(2, 1, 20));
        assert_eq!((r.first, r.end()), (20, 21));
        r.purge(20);
        assert!(r.entries.is_empty());
        assert_eq!(r.first, 21);
        r.push(blank_ent::<TypeConfig>(2, 1, 21));
        assert_eq!(r.get(21, 22).map(|e| indices(&e)), Some(vec![21]));
    }

    #[test]
    fn the_recent_cache_is_bounded() {
        let mut r = Recent::default();
        for i in 0..(RECENT_ENTRIES as u64 + 10) {
            r.push(blank_ent::<TypeConfig>(1, 1, i));
        }
        assert_eq!(r.entries.len(), RECENT_ENTRIES);
        assert_eq!(r.first, 10);
    }

    async fn append(store: &mut LogStore, range: std::ops::Range<u64>) {
        let entries: Vec<Entry> = range.map(|i| blank_ent::<TypeConfig>(1, 1, i)).collect();
        let (tx, rx) = <TypeConfig as openraft::type_config::TypeConfigExt>::oneshot();
        let done = IOFlushed::signal(tx);
        store.append(entries, done).await.unwrap();
        rx.await.unwrap().unwrap();
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
        let (sled_dir, log_dir) = (dir.path().join("sled"), dir.path().join("log"));
        let db = sled::Config::new().path(&sled_dir).open().unwrap();
        let open = || LogStore::open_sized(&db, &sled_dir, &log_dir, Metrics::default(), 4096);
        let mut store = open().unwrap();
        append(&mut store, 1..1_001).await;
        let segments = || std::fs::read_dir(&log_dir).unwrap().count();
        assert!(segments() > 2, "{} segments", segments());
        store.purge(log_id::<TypeConfig>(1, 1, 990)).await.unwrap();
        flushed(&mut store).await;
        assert_eq!(segments(), 1, "every segment but the last is gone");
        drop(store);
        let durable: Option<LogId> =
            get_meta(&db.open_tree("raft_meta").unwrap(), KEY_PURGED).unwrap();
        assert_eq!(durable.map(|l| l.index()), Some(990));
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
        append(&mut store, 0..100).await;
        drop(store);
        let mut reopened = reopen(&db, dir.path());
        let got = reopened.try_get_log_entries(0..64).await.unwrap();
        assert_eq!(indices(&got), (0..64).collect::<Vec<_>>());
    }

    /// The purge point is honoured from disk too: entries whose segment was
    /// not deleted yet when the node stopped are neither read nor reported
    /// as the last entry.
    #[tokio::test]
    async fn entries_left_behind_by_an_interrupted_purge_stay_invisible() {
        let dir = tempfile::tempdir().unwrap();
        let (db, mut store) = open(dir.path());
        append(&mut store, 1..11).await;
        // The purge point written, but no segment deleted.
        store
            .put_meta(KEY_PURGED, &log_id::<TypeConfig>(1, 1, 10))
            .unwrap();
        drop(store);
        let mut reopened = reopen(&db, dir.path());
        assert!(reopened.try_get_log_entries(0..).await.unwrap().is_empty());
        let state = reopened.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index()), Some(10));
        assert_eq!(state.last_purged_log_id.map(|l| l.index()), Some(10));
    }

    /// A data dir from before the segment log keeps its entries: they move
    /// from sled's `log` tree into segments on open, once.
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
            tree.insert(i.to_be_bytes(), encode(&e).unwrap()).unwrap();
        }
        let meta = db.open_tree("raft_meta").unwrap();
        meta.insert(KEY_PURGED, encode(&log_id::<TypeConfig>(1, 1, 5)).unwrap())
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
                .any(|n| &n[..] == LEGACY_LOG_TREE.as_bytes())
        );
        assert!(!dir.path().join("log.migrating").exists());
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index()), Some(20));
    }
}
