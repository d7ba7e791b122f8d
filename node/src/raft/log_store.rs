//! The Raft log and vote, durable in sled.
//!
//! Layout: tree `log` maps the big-endian log index to a bincode entry (so
//! sled's key order is log order); tree `raft_meta` holds the vote, the last
//! purged log id and the committed log id.
//!
//! Durability is the whole point: `append` inserts the entries (readable at
//! once, as openraft requires) and then fsyncs with `sled::Db::flush` on a
//! blocking thread, firing openraft's callback only after the flush. Raft
//! counts an entry towards a quorum only once its callback fired, so an
//! acknowledged write is on disk on a quorum. Votes are flushed before
//! `save_vote` returns.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

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

/// The sled-backed log store. Cheap to clone: sled trees are shared handles.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    metrics: Metrics,
}

fn io_err(e: sled::Error) -> io::Error {
    io::Error::other(e)
}

impl LogStore {
    /// Opens (or creates) the log trees in `db`.
    pub fn open(db: &sled::Db) -> io::Result<LogStore> {
        Ok(LogStore {
            db: db.clone(),
            log: db.open_tree("log").map_err(io_err)?,
            meta: db.open_tree("raft_meta").map_err(io_err)?,
            metrics: Metrics::default(),
        })
    }

    /// Reports fsync latency to `metrics` (a private registry otherwise).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
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

    /// Entries kept in the log (for metrics and status).
    pub fn len(&self) -> usize {
        self.log.len()
    }

    /// True when the log holds no entries.
    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
    }

    async fn flush(&self, op: &'static str) -> io::Result<()> {
        let db = self.db.clone();
        let metrics = self.metrics.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let r = db.flush().map(|_| ()).map_err(io_err);
            metrics.observe_fsync(op, started);
            r
        })
        .await
        .map_err(io::Error::other)?
    }
}

fn range_keys<RB: RangeBounds<u64>>(range: &RB) -> (Bound<[u8; 8]>, Bound<[u8; 8]>) {
    let map = |b: Bound<&u64>| match b {
        Bound::Included(i) => Bound::Included(i.to_be_bytes()),
        Bound::Excluded(i) => Bound::Excluded(i.to_be_bytes()),
        Bound::Unbounded => Bound::Unbounded,
    };
    (map(range.start_bound()), map(range.end_bound()))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        for kv in self.log.range(range_keys(&range)) {
            let (_, v) = kv.map_err(io_err)?;
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
        let last = match self.log.last().map_err(io_err)? {
            Some((_, v)) => Some(decode::<Entry>(&v)?.log_id()),
            None => None,
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
        self.flush("vote").await
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
        for entry in entries {
            batch.insert(&entry.index().to_be_bytes(), encode(&entry)?);
        }
        self.log.apply_batch(batch).map_err(io_err)?;
        // Readable now; durable once the flush below completes. sled's flush
        // covers every write made before it, so concurrent appends group-commit.
        let db = self.db.clone();
        let metrics = self.metrics.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let res = db.flush().map(|_| ()).map_err(io_err);
            metrics.observe_fsync("append", started);
            callback.io_completed(res);
        });
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map(|l| l.index() + 1).unwrap_or(0);
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
        // Record the purge point first: entries at or below it are ignored
        // by openraft, so a crash between the two steps is harmless.
        self.put_meta(KEY_PURGED, &log_id)?;
        // In small batches, yielding in between: one batch of 100 000
        // removals stalled this node's runtime for over a second.
        let upto = log_id.index().to_be_bytes();
        loop {
            let mut batch = sled::Batch::default();
            let mut n = 0;
            for kv in self.log.range(..=upto).take(PURGE_BATCH) {
                let (k, _) = kv.map_err(io_err)?;
                batch.remove(k);
                n += 1;
            }
            if n == 0 {
                return Ok(());
            }
            self.log.apply_batch(batch).map_err(io_err)?;
            tokio::task::yield_now().await;
        }
    }
}
