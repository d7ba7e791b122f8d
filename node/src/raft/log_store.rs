//! The Raft log and vote, durable in sled.
//!
//! Layout: tree `log` maps the big-endian log index to a bincode entry (so
//! sled's key order is log order); tree `raft_meta` holds the vote, the last
//! purged log id and the committed log id.
//!
//! Durability is the whole point: `append` inserts the entries (readable at
//! once, as openraft requires) and hands openraft's callback to the
//! *flusher*, one thread per store that makes them durable and only then
//! fires the callbacks, in the order the appends were made.
//!
//! Durable means `sled::Db::flush` *and then* an `fdatasync` of sled's data
//! file through a handle of our own: on Linux sled 0.34's flush ends in
//! `sync_file_range`, which writes the pages out but neither flushes the
//! disk's write cache nor persists the file's size, so by itself it is not
//! the fsync the product promises (and etcd does). Raft
//! counts an entry towards a quorum only once its callback fired, so an
//! acknowledged write is on disk on a quorum. One flush covers every append
//! queued while the previous one ran (group commit). Votes go through the
//! same thread and are durable before `save_vote` returns.
//!
//! Two things keep the log off the write path's critical section:
//! - the most recent entries are also kept decoded in memory ([`Recent`]):
//!   openraft reads each entry back right after appending it, to replicate
//!   it and to apply it, and those reads skip sled and bincode;
//! - purging only records the purge point; a background thread deletes the
//!   entries, paced ([`PURGE_PAUSE`]). openraft awaits `purge` on its core
//!   task, and deleting the 100 000 entries behind a snapshot there stalled
//!   every write for up to 0.8 s. Reads never see entries at or below the
//!   purge point.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::fs::File;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use super::typ::{Entry, LogId, Vote};
use super::{TypeConfig, decode, encode};
use crate::metrics::Metrics;

const KEY_VOTE: &[u8] = b"vote";
const KEY_PURGED: &[u8] = b"last_purged";
const KEY_COMMITTED: &[u8] = b"committed";
/// Log entries removed per sled batch when purging.
const PURGE_BATCH: usize = 1_000;
/// The purger's pause between batches. Unpaced, deleting the 100 000
/// entries behind a snapshot competed with appends for the CPU and the
/// flush for a second or two: write-c64 p99 rose from 18 to 33 ms. Paced,
/// it takes ~5 s, well inside the time 100 000 writes take to arrive.
const PURGE_PAUSE: std::time::Duration = std::time::Duration::from_millis(40);
/// Entries kept decoded in memory: several seconds of appends at full
/// speed, so replication and apply, which trail appends by milliseconds,
/// always find theirs.
const RECENT_ENTRIES: usize = 16_384;

/// The sled-backed log store. Cheap to clone: every part is shared.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    recent: Arc<Mutex<Recent>>,
    /// One past the last purged index (0: nothing purged). Entries below it
    /// may still be in sled until the purger gets to them; reads skip them.
    purged_below: Arc<AtomicU64>,
    purger: Arc<Mutex<Purger>>,
    flusher: mpsc::Sender<Flush>,
}

/// The tail of the log, decoded: entries `first..first + entries.len()`.
/// Always a suffix of the log (appends go at the tail, truncation cuts the
/// tail, purges cut the head), so a read inside it needs no sled.
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
    /// is in sled.
    fn get(&self, from: u64, to: u64) -> Option<Vec<Entry>> {
        if self.entries.is_empty() || from < self.first || to > self.end() || from > to {
            return None;
        }
        let (a, b) = ((from - self.first) as usize, (to - self.first) as usize);
        Some(self.entries.range(a..b).cloned().collect())
    }
}

/// The background deletion of purged entries.
#[derive(Default)]
struct Purger {
    /// Delete entries up to and including this index.
    upto: Option<u64>,
    running: bool,
}

/// Work for the flusher thread: fsync, then report.
enum Flush {
    Append(IOFlushed<TypeConfig>),
    Vote(tokio::sync::oneshot::Sender<io::Result<()>>),
}

fn io_err(e: sled::Error) -> io::Error {
    io::Error::other(e)
}

/// The flusher: waits for work, takes everything queued, flushes sled once,
/// completes it all in arrival order. Ends when every store handle is gone.
fn run_flusher(db: sled::Db, file: File, metrics: Metrics, rx: mpsc::Receiver<Flush>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        jobs.extend(rx.try_iter());
        let started = std::time::Instant::now();
        let res = db.flush().map_err(io_err).and_then(|_| file.sync_data());
        let op = if jobs.iter().any(|j| matches!(j, Flush::Vote(_))) {
            "vote"
        } else {
            "append"
        };
        metrics.observe_fsync(op, started);
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
            }
        }
    }
}

impl LogStore {
    /// Opens (or creates) the log trees in `db`, the sled database in
    /// directory `sled_dir`, and starts its flusher.
    pub fn open(db: &sled::Db, sled_dir: &Path) -> io::Result<LogStore> {
        LogStore::open_with_metrics(db, sled_dir, Metrics::default())
    }

    /// [`LogStore::open`], reporting fsync latency to `metrics`.
    pub fn open_with_metrics(
        db: &sled::Db,
        sled_dir: &Path,
        metrics: Metrics,
    ) -> io::Result<LogStore> {
        // sled keeps everything in one file, `db`; fdatasync works on a
        // read-only handle.
        let data_file = sled_dir.join("db");
        let file = File::open(&data_file).map_err(|e| {
            io::Error::new(e.kind(), format!("opening {}: {e}", data_file.display()))
        })?;
        let (flusher, rx) = mpsc::channel();
        let flush_db = db.clone();
        std::thread::Builder::new()
            .name("herald-log-flush".into())
            .spawn(move || run_flusher(flush_db, file, metrics, rx))?;
        let store = LogStore {
            db: db.clone(),
            log: db.open_tree("log").map_err(io_err)?,
            meta: db.open_tree("raft_meta").map_err(io_err)?,
            recent: Arc::default(),
            purged_below: Arc::default(),
            purger: Arc::default(),
            flusher,
        };
        let purged: Option<LogId> = store.get_meta(KEY_PURGED)?;
        if let Some(p) = purged {
            store.purged_below.store(p.index() + 1, Ordering::Release);
        }
        Ok(store)
    }

    /// sled's size on disk in bytes (0 if it cannot tell).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self.meta.get(key).map_err(io_err)? {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> io::Result<()> {
        self.meta.insert(key, encode(value)?).map_err(io_err)?;
        Ok(())
    }

    /// Entries kept in the log (for metrics and status); counts purged
    /// entries the purger has not deleted yet.
    pub fn len(&self) -> usize {
        self.log.len()
    }

    /// True when the log holds no entries.
    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn flusher_gone() -> io::Error {
        io::Error::other("log flusher thread is gone")
    }

    /// Deletes purged entries on a blocking thread until none are left,
    /// unless a purger already runs (it picks up the new purge point).
    fn start_purger(&self) {
        {
            let mut p = self.purger();
            if p.running {
                return;
            }
            p.running = true;
        }
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.drain_purges() {
                // Left for the next purge, which starts from the bottom.
                tracing::warn!(error = %e, "purging the log");
                store.purger().running = false;
            }
        });
    }

    fn purger(&self) -> std::sync::MutexGuard<'_, Purger> {
        self.purger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Deletes purged entries until none are left; then marks the purger
    /// idle (under the same lock as the check, so a purge recorded meanwhile
    /// is not missed).
    fn drain_purges(&self) -> io::Result<()> {
        loop {
            let upto = {
                let mut p = self.purger();
                match p.upto {
                    Some(u) => u,
                    None => {
                        p.running = false;
                        return Ok(());
                    }
                }
            };
            if self.delete_batch(upto)? == 0 {
                let mut p = self.purger();
                if p.upto == Some(upto) {
                    p.upto = None;
                }
            } else {
                std::thread::sleep(PURGE_PAUSE);
            }
        }
    }

    /// Deletes up to [`PURGE_BATCH`] entries at or below `upto`; how many.
    fn delete_batch(&self, upto: u64) -> io::Result<usize> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for kv in self.log.range(..=upto.to_be_bytes()).take(PURGE_BATCH) {
            let (k, _) = kv.map_err(io_err)?;
            batch.remove(k);
            n += 1;
        }
        if n > 0 {
            self.log.apply_batch(batch).map_err(io_err)?;
        }
        Ok(n)
    }
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
        let mut out = Vec::new();
        for kv in self.log.range(from.to_be_bytes()..) {
            let (k, v) = kv.map_err(io_err)?;
            let index = u64::from_be_bytes(k.as_ref().try_into().map_err(io::Error::other)?);
            if index >= to {
                break;
            }
            out.push(decode::<Entry>(&v)?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        self.get_meta(KEY_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId> = self.get_meta(KEY_PURGED)?;
        let purged_below = self.purged_below.load(Ordering::Acquire);
        let last = match self.log.last().map_err(io_err)? {
            Some((k, v))
                if u64::from_be_bytes(k.as_ref().try_into().map_err(io::Error::other)?)
                    >= purged_below =>
            {
                Some(decode::<Entry>(&v)?.log_id())
            }
            _ => None,
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
        self.get_meta(KEY_COMMITTED)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        let mut recent = self.recent();
        for entry in entries {
            batch.insert(&entry.index().to_be_bytes(), encode(&entry)?);
            recent.push(entry);
        }
        self.log.apply_batch(batch).map_err(io_err)?;
        drop(recent);
        // Readable now; durable once the flusher's next flush completes.
        self.flusher
            .send(Flush::Append(callback))
            .map_err(|_| Self::flusher_gone())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map(|l| l.index() + 1).unwrap_or(0);
        self.recent().truncate_after(last_log_id.map(|l| l.index()));
        let mut batch = sled::Batch::default();
        for kv in self.log.range(from.to_be_bytes()..) {
            let (k, _) = kv.map_err(io_err)?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(io_err)?;
        // Truncated entries were never committed; no need to flush here: a
        // later append's flush makes the truncation durable before it counts.
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        // Record the purge point; from then on reads skip entries at or
        // below it, and the purger deletes them in the background (from the
        // bottom up, so the log never has a hole).
        self.put_meta(KEY_PURGED, &log_id)?;
        let upto = log_id.index();
        self.purged_below.fetch_max(upto + 1, Ordering::AcqRel);
        self.recent().purge(upto);
        {
            let mut p = self.purger();
            p.upto = Some(p.upto.map_or(upto, |u| u.max(upto)));
        }
        self.start_purger();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::{blank_ent, log_id};

    use super::*;

    fn indices(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.index()).collect()
    }

    fn store() -> (tempfile::TempDir, LogStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let store = LogStore::open(&db, dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn recent_entries_follow_appends_truncations_and_purges() {
        let mut r = Recent::default();
        for i in 5..10 {
            r.push(blank_ent::<TypeConfig>(1, 1, i));
        }
        assert_eq!(r.get(5, 10).map(|e| indices(&e)), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(r.get(4, 6), None, "below the first entry: ask sled");
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
        store.append(entries, IOFlushed::noop()).await.unwrap();
    }

    /// Reads served from sled (after a restart, nothing is cached) and from
    /// the cache must agree, and neither may return purged entries, even
    /// before the purger has deleted them.
    #[tokio::test]
    async fn reads_skip_purged_entries_and_the_purger_deletes_them() {
        let (dir, mut store) = store();
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
        // What the background purger does, done here to the end (deleting
        // alongside it is harmless).
        store.drain_purges().unwrap();
        assert_eq!(store.len(), 500, "purged entries are deleted");

        // A fresh handle on the same data: nothing cached, read from sled.
        let db = store.db.clone();
        drop(store);
        let mut reopened = LogStore::open(&db, dir.path()).unwrap();
        let got = reopened.try_get_log_entries(2_400..).await.unwrap();
        assert_eq!(indices(&got), (2_501..3_001).collect::<Vec<_>>());
        let got = reopened.try_get_log_entries(2_990..2_995).await.unwrap();
        assert_eq!(indices(&got), (2_990..2_995).collect::<Vec<_>>());
    }

    /// What openraft does first after a restart: read the head of the log.
    /// The (empty) cache must not answer for it.
    #[tokio::test]
    async fn a_reopened_store_reads_its_log_from_sled() {
        let (dir, mut store) = store();
        append(&mut store, 0..100).await;
        let db = store.db.clone();
        drop(store);
        let mut reopened = LogStore::open(&db, dir.path()).unwrap();
        let got = reopened.try_get_log_entries(0..64).await.unwrap();
        assert_eq!(indices(&got), (0..64).collect::<Vec<_>>());
    }

    /// The purge point is honoured from disk too: entries the purger had
    /// not deleted yet when the node stopped are neither read nor reported
    /// as the last entry.
    #[tokio::test]
    async fn entries_left_behind_by_an_interrupted_purge_stay_invisible() {
        let (dir, mut store) = store();
        append(&mut store, 1..11).await;
        // The purge point written, but no entry deleted (the purger did not run).
        store
            .put_meta(KEY_PURGED, &log_id::<TypeConfig>(1, 1, 10))
            .unwrap();
        let db = store.db.clone();
        drop(store);
        let mut reopened = LogStore::open(&db, dir.path()).unwrap();
        assert!(reopened.try_get_log_entries(0..).await.unwrap().is_empty());
        let state = reopened.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index()), Some(10));
        assert_eq!(state.last_purged_log_id.map(|l| l.index()), Some(10));
    }
}
