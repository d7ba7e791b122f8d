//! The state-machine side of openraft: applies committed entries to the pure
//! [`State`], builds and installs snapshots, and keeps the latest snapshot
//! durable in a file of its own.
//!
//! The state lives in memory behind a std `RwLock` (no await happens under
//! it), shared with the API so reads need no message passing. Its durable
//! form is the latest snapshot (`snapshot.bin` beside sled's files) plus the
//! Raft log after it:
//! on restart the node loads the snapshot and openraft re-applies the
//! committed log tail. Applying therefore never waits on disk; the log
//! append already made every entry durable before it was committed. Apply
//! checks that each entry follows the last one applied, in every build: a
//! gap or a repeat is an error that stops the node, never a state that
//! silently differs from the other replicas'.
//!
//! # The snapshot file (format version 2)
//!
//! `"HRLDSNAP"`, the format version (u32 LE), the data-dir format the state
//! was encoded in (u32 LE, [`identity::FORMAT_VERSION`]; zero in files
//! written before it was recorded, and not checked when a node loads its
//! own file: the identity file already is), the length of the meta (u32 LE), the meta (bincode of openraft's `SnapshotMeta`), the
//! length of the data (u64 LE), the data (the bincode of [`State`]), and
//! the CRC-32 of everything before it (u32 LE). The checksum is verified
//! whenever the file is read (at start, and before it is sent to a
//! follower); a snapshot received from the leader is checked against the
//! checksum the leader sent with it (`api::peer`). Version 1 (before
//! versions: the bincode of meta and data, no checksum) is still read.
//!
//! One writer at a time, and never backwards: a build and an install both
//! write through [`StateStore`]'s writer lock, and a snapshot that is not
//! newer than the one on disk is not written (a build that started before
//! an install finished would otherwise put the older state back after the
//! log behind the newer one was purged).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use futures::{Stream, TryStreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::segment_log::RESTORE_ADVICE;
use super::typ::{LogId, Snapshot, SnapshotMeta, StoredMembership};
use super::{Applied, TypeConfig, identity, to_bincode};
use crate::metrics::Metrics;
use crate::state::{Entry as SmEntry, State};

const KEY_SNAPSHOT: &[u8] = b"current";
/// The snapshot file's name in a data dir.
pub const SNAPSHOT_FILE: &str = "snapshot.bin";
/// The snapshot format this build writes (and the newest it reads).
pub const FORMAT_VERSION: u32 = 2;
const MAGIC: [u8; 8] = *b"HRLDSNAP";

/// Why a snapshot could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file is not what this module wrote.
    #[error("snapshot {file}: {what}. {RESTORE_ADVICE}")]
    Corrupt {
        /// The file (or where the snapshot came from).
        file: String,
        /// What is wrong with it.
        what: String,
    },
    /// Written by a format this build does not read.
    #[error(
        "snapshot {file}: format version {found} is not supported (this build reads versions 1 \
         and {FORMAT_VERSION}); run the release that wrote it, or restore the node with the \
         replace flow"
    )]
    UnknownVersion {
        /// The file.
        file: String,
        /// The version in its header.
        found: u32,
    },
}

impl From<SnapshotError> for io::Error {
    fn from(e: SnapshotError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// The durable snapshot's bytes: the file, else (a data dir from before the
/// file) the sled tree it used to live in.
fn read_snapshot(file: &Path, legacy: &sled::Tree) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(file) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(legacy
            .get(KEY_SNAPSHOT)
            .map_err(io_err)?
            .map(|v| v.to_vec())),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("reading snapshot {}: {e}", file.display()),
        )),
    }
}

/// The bytes of the file before the data: header, meta, data length.
fn file_prefix(meta: &SnapshotMeta, data_len: usize) -> io::Result<Vec<u8>> {
    let meta = to_bincode(meta)?;
    let mut out = Vec::with_capacity(20 + meta.len() + 8);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&identity::FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(&(data_len as u64).to_le_bytes());
    Ok(out)
}

/// Splits a stored snapshot into its meta and its data, reusing `bytes` for
/// the data, after checking its version and checksum. `file` names it in
/// errors. Decoding the data through serde pushed a 200 MB snapshot into a
/// growing `Vec` one byte at a time: slow, and on restart the node's memory
/// peaked at twice its steady size.
fn split_snapshot(
    mut bytes: Vec<u8>,
    file: &str,
) -> Result<(SnapshotMeta, Vec<u8>), SnapshotError> {
    let corrupt = |what: String| SnapshotError::Corrupt {
        file: file.to_string(),
        what,
    };
    if bytes.len() < MAGIC.len() || bytes[..8] != MAGIC {
        if bytes.len() >= 4 && bytes[..4] == MAGIC[..4] {
            return Err(corrupt("a damaged header".into()));
        }
        return split_v1(bytes).map_err(|e| corrupt(e.to_string()));
    }
    let word = |b: &[u8], at: usize| {
        let mut w = [0; 4];
        w.copy_from_slice(&b[at..at + 4]);
        u32::from_le_bytes(w)
    };
    if bytes.len() < 20 + 8 + 4 {
        return Err(corrupt(format!(
            "{} bytes, shorter than any snapshot",
            bytes.len()
        )));
    }
    let version = word(&bytes, 8);
    if version != FORMAT_VERSION {
        return Err(SnapshotError::UnknownVersion {
            file: file.to_string(),
            found: version,
        });
    }
    let body = bytes.len() - 4;
    let stored = word(&bytes, body);
    let actual = crc32fast::hash(&bytes[..body]);
    if stored != actual {
        return Err(corrupt(format!(
            "checksum {actual:08x} over {body} bytes, the file says {stored:08x}"
        )));
    }
    let meta_len = word(&bytes, 16) as usize;
    let data_at = 20 + meta_len + 8;
    if data_at > body {
        return Err(corrupt(format!(
            "a meta of {meta_len} bytes running past the end"
        )));
    }
    let meta: SnapshotMeta = super::from_bincode(&bytes[20..20 + meta_len])
        .map_err(|e| corrupt(format!("a meta that does not decode ({e})")))?;
    let mut len = [0; 8];
    len.copy_from_slice(&bytes[20 + meta_len..data_at]);
    let data_len = u64::from_le_bytes(len);
    if (body - data_at) as u64 != data_len {
        return Err(corrupt(format!(
            "{} data bytes, its header says {data_len}",
            body - data_at
        )));
    }
    bytes.truncate(body);
    bytes.drain(..data_at);
    Ok((meta, bytes))
}

/// A whole snapshot file's bytes (this build's format) for `meta` and the
/// state's bincode `data`: what `Admin.SnapshotSave` streams and what a
/// restore writes into a new data dir.
pub fn encode_file(meta: &SnapshotMeta, data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = file_prefix(meta, data.len())?;
    out.reserve(data.len() + 4);
    out.extend_from_slice(data);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Reads a snapshot file of this build's format (a backup: the version-1
/// form, which has no checksum, is refused): its meta and its state's
/// bincode, after checking the header, the lengths and the checksum.
/// `file` names it in errors.
pub fn decode_file(bytes: Vec<u8>, file: &str) -> Result<(SnapshotMeta, Vec<u8>), SnapshotError> {
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError::Corrupt {
            file: file.to_string(),
            what: "not a Herald snapshot (it does not start with HRLDSNAP)".into(),
        });
    }
    split_snapshot(bytes, file)
}

/// The data-dir format a snapshot file says its state was encoded in
/// (0: not recorded, a file from before it was).
pub fn data_format(bytes: &[u8]) -> u32 {
    match bytes.get(12..16) {
        Some(w) => u32::from_le_bytes([w[0], w[1], w[2], w[3]]),
        None => 0,
    }
}

/// The CRC-32 a snapshot file of this build's format carries in its last
/// four bytes (not checked here: see [`decode_file`]).
pub fn stored_checksum(bytes: &[u8]) -> Option<u32> {
    let tail = bytes.len().checked_sub(4)?;
    let mut w = [0; 4];
    w.copy_from_slice(&bytes[tail..]);
    Some(u32::from_le_bytes(w))
}

/// A snapshot from before versions (the bincode of a [`StoredSnapshot`]:
/// the meta, the data's length as a u64, the data), without a checksum.
fn split_v1(mut bytes: Vec<u8>) -> io::Result<(SnapshotMeta, Vec<u8>)> {
    let invalid = |e: bincode::Error| io::Error::new(io::ErrorKind::InvalidData, e);
    let mut rest = &bytes[..];
    let meta: SnapshotMeta = bincode::deserialize_from(&mut rest).map_err(invalid)?;
    let len: u64 = bincode::deserialize_from(&mut rest).map_err(invalid)?;
    if rest.len() as u64 != len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "snapshot holds {} data bytes, its header says {len}",
                rest.len()
            ),
        ));
    }
    let start = bytes.len() - rest.len();
    bytes.drain(..start);
    Ok((meta, bytes))
}

/// The state plus what openraft needs to know about it.
#[derive(Default)]
pub struct Machine {
    /// Herald's replicated state.
    pub state: State,
    /// The last log id applied.
    pub last_applied: Option<LogId>,
    /// The last membership config applied.
    pub last_membership: StoredMembership,
}

/// A snapshot as kept on disk.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

struct Inner {
    machine: RwLock<Machine>,
    applied: watch::Sender<u64>,
    /// Where snapshots lived before they had a file: read once, if the file
    /// is missing, so an older data dir keeps its snapshot.
    legacy: sled::Tree,
    /// The snapshot file. Not in sled: sled's flush writes out everything
    /// dirty, so a 100 MB snapshot value made every log append that flushed
    /// meanwhile wait for it (p99.9 of 0.5-0.7 s with a million users).
    file: PathBuf,
    /// The one writer of the snapshot file at a time, holding the last log
    /// id of the snapshot the file has now. A std mutex: it is taken on
    /// the blocking pool, never across an await.
    writer: Mutex<Option<LogId>>,
    /// Each applied entry must follow the last one (always, except for
    /// openraft's storage suite: [`StateStore::for_openraft_suite`]).
    contiguous: bool,
    metrics: Metrics,
}

/// Handle to the state machine store; cheap to clone. openraft drives it
/// through [`RaftStateMachine`]; the API reads through [`StateStore::read`].
#[derive(Clone)]
pub struct StateStore {
    inner: Arc<Inner>,
}

fn io_err(e: sled::Error) -> io::Error {
    io::Error::other(e)
}

impl StateStore {
    /// Opens the store and loads the latest durable snapshot, if any, from
    /// `dir` (the node's data dir).
    pub fn open(db: &sled::Db, dir: &Path) -> io::Result<StateStore> {
        Self::open_with_metrics(db, dir, Metrics::default())
    }

    /// Like [`StateStore::open`], reporting applies and snapshots to `metrics`.
    pub fn open_with_metrics(
        db: &sled::Db,
        dir: &Path,
        metrics: Metrics,
    ) -> io::Result<StateStore> {
        let legacy = db.open_tree("snapshot").map_err(io_err)?;
        let file = dir.join(SNAPSHOT_FILE);
        let mut machine = Machine::default();
        if let Some(bytes) = read_snapshot(&file, &legacy)? {
            let (meta, data) = split_snapshot(bytes, &file.display().to_string())?;
            machine.state = State::from_snapshot(&data).map_err(|e| SnapshotError::Corrupt {
                file: file.display().to_string(),
                what: format!("a state that does not decode ({e})"),
            })?;
            machine.last_applied = meta.last_log_id;
            machine.last_membership = meta.last_membership;
        }
        let on_disk = machine.last_applied;
        let applied_index = machine
            .last_applied
            .as_ref()
            .map(|l| l.index())
            .unwrap_or(0);
        let (applied, _) = watch::channel(applied_index);
        Ok(StateStore {
            inner: Arc::new(Inner {
                machine: RwLock::new(machine),
                applied,
                legacy,
                file,
                writer: Mutex::new(on_disk),
                contiguous: true,
                metrics,
            }),
        })
    }

    /// A store for openraft's storage test suite, which applies made-up log
    /// ids with gaps between them (3, then 5) to check what it checks;
    /// entries must still come in increasing order. Never for a node.
    pub fn for_openraft_suite(db: &sled::Db, dir: &Path) -> io::Result<StateStore> {
        let mut store = Self::open(db, dir)?;
        if let Some(inner) = Arc::get_mut(&mut store.inner) {
            inner.contiguous = false;
        }
        Ok(store)
    }

    /// The last log id in the durable snapshot, if any: the log store may
    /// be missing entries up to it (see `LogOptions::snapshot`).
    pub fn snapshot_log_id(&self) -> Option<LogId> {
        *self.inner.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Read access to the state. Hold it briefly: apply waits for it.
    pub fn read(&self) -> RwLockReadGuard<'_, Machine> {
        // A panic while applying would be a bug in the pure state machine;
        // the data is still the last consistent state, so keep serving it.
        self.inner.machine.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The index of the last applied entry, as a watch for waiters.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.inner.applied.subscribe()
    }

    /// Waits until the state has applied `index`.
    pub async fn wait_applied(&self, index: u64) {
        let mut rx = self.applied();
        // The sender lives as long as the store, which outlives this call.
        let _ = rx.wait_for(|&applied| applied >= index).await;
    }

    /// The state as it is now, as the bytes of a snapshot file
    /// ([`encode_file`]), with its meta: a backup. Like a build, only a
    /// pointer copy is made under the lock; encoding runs on the blocking
    /// pool. Nothing is written to disk and the log is not purged.
    pub async fn export(&self) -> io::Result<(SnapshotMeta, Vec<u8>)> {
        let (meta, view) = {
            let m = self.read();
            let meta = SnapshotMeta {
                last_log_id: m.last_applied,
                last_membership: m.last_membership.clone(),
            };
            (meta, m.state.snapshot_view())
        };
        self.blocking(move |_| {
            let data = view.to_snapshot().map_err(io::Error::other)?;
            drop(view);
            let bytes = encode_file(&meta, &data)?;
            Ok((meta, bytes))
        })
        .await
    }

    /// Size of the durable snapshot in bytes (0 if none).
    pub fn snapshot_bytes(&self) -> u64 {
        match std::fs::metadata(&self.inner.file) {
            Ok(m) => m.len(),
            Err(_) => self
                .inner
                .legacy
                .get(KEY_SNAPSHOT)
                .ok()
                .flatten()
                .map(|v| v.len() as u64)
                .unwrap_or(0),
        }
    }

    fn write_machine(&self) -> std::sync::RwLockWriteGuard<'_, Machine> {
        self.inner
            .machine
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `snap` the durable snapshot, unless the file already holds
    /// one at least as new (then `Ok(false)`). Blocking (a snapshot of a
    /// million records is ~150 MB): run it off the runtime.
    fn persist_snapshot_blocking(&self, snap: &StoredSnapshot) -> io::Result<bool> {
        let mut on_disk = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        if on_disk.is_some() && snap.meta.last_log_id <= *on_disk {
            return Ok(false);
        }
        // Written in parts so the data is not copied (see [`split_snapshot`]).
        let prefix = file_prefix(&snap.meta, snap.data.len())?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&prefix);
        crc.update(&snap.data);
        let started = std::time::Instant::now();
        // Write aside, fsync, then rename over the old one and fsync the
        // directory: a crash leaves either the old snapshot or the new one.
        let tmp = self.inner.file.with_extension("tmp");
        let fail = |op: &str, path: &Path, e: io::Error| {
            io::Error::new(e.kind(), format!("{op} {}: {e}", path.display()))
        };
        {
            let mut f = std::fs::File::create(&tmp).map_err(|e| fail("creating", &tmp, e))?;
            f.write_all(&prefix)
                .and_then(|_| f.write_all(&snap.data))
                .and_then(|_| f.write_all(&crc.finalize().to_le_bytes()))
                .map_err(|e| fail("writing", &tmp, e))?;
            f.sync_all().map_err(|e| fail("fdatasync of", &tmp, e))?;
        }
        std::fs::rename(&tmp, &self.inner.file)
            .map_err(|e| fail("renaming over", &self.inner.file, e))?;
        if let Some(dir) = self.inner.file.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| fail("syncing directory", dir, e))?;
        }
        *on_disk = snap.meta.last_log_id;
        self.inner
            .metrics
            .storage
            .observe_fsync("snapshot", started);
        Ok(true)
    }

    /// Runs `f` on the blocking pool with a clone of this store.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(StateStore) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(store))
            .await
            .map_err(io::Error::other)?
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateStore {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        // Under the lock only a pointer copy of the state (milliseconds even
        // with a million users); encoding and writing it happen on the
        // blocking pool while apply and reads go on.
        let (meta, view) = {
            let m = self.read();
            let meta = SnapshotMeta {
                last_log_id: m.last_applied,
                last_membership: m.last_membership.clone(),
            };
            (meta, m.state.snapshot_view())
        };
        let (snap, written) = self
            .blocking(move |store| {
                let snap = StoredSnapshot {
                    meta,
                    data: view.to_snapshot().map_err(io::Error::other)?,
                };
                drop(view);
                let written = store.persist_snapshot_blocking(&snap)?;
                Ok((snap, written))
            })
            .await?;
        if !written {
            // An install finished first: the file keeps the newer state.
            tracing::info!(
                index = ?snap.meta.last_log_id.as_ref().map(|l| l.index()),
                "snapshot built, not written: the one on disk is as new or newer"
            );
        }
        self.inner.metrics.raft.snapshot_builds.inc();
        tracing::info!(
            index = ?snap.meta.last_log_id.as_ref().map(|l| l.index()),
            bytes = snap.data.len(),
            "snapshot built"
        );
        Ok(Snapshot {
            meta: snap.meta,
            snapshot: snap.data,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateStore {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = StateStore;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let m = self.read();
        Ok((m.last_applied, m.last_membership.clone()))
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        // Collect first: the std lock must not be held across an await.
        let batch: Vec<EntryResponder<TypeConfig>> = entries.try_collect().await?;
        let mut replies = Vec::with_capacity(batch.len());
        let last_index = {
            // One span per applied batch, on every replica; the leader's
            // `raft.propose` span records the same index.
            let _span = tracing::info_span!(
                target: crate::telemetry::SPAN_TARGET,
                "raft.apply",
                first = batch.first().map(|(e, _)| e.index()),
                entries = batch.len()
            )
            .entered();
            let mut m = self.write_machine();
            for (entry, responder) in batch {
                let log_id = entry.log_id();
                let index = log_id.index();
                if let Some(last) = &m.last_applied
                    && (index <= last.index()
                        || (self.inner.contiguous && index != last.index() + 1))
                {
                    // openraft hands entries over in order, with no gaps;
                    // anything else means the log was misread. Stop rather
                    // than compute a state no other replica has.
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "apply: entry {index} does not follow the last applied entry {}: \
                             the log handed to the state machine has a gap or a repeat",
                            last.index()
                        ),
                    ));
                }
                let reply = match entry.payload {
                    EntryPayload::Normal(ref p) => {
                        let r = m.state.apply(
                            SmEntry {
                                index,
                                time_ms: p.time_ms,
                            },
                            &p.cmd,
                        );
                        self.inner.metrics.observe_apply(p, &r);
                        Applied(r)
                    }
                    EntryPayload::Membership(ref mem) => {
                        let ids = mem.nodes().map(|(id, _)| *id).collect();
                        m.state.membership_changed(&ids);
                        m.last_membership = StoredMembership::new(Some(log_id), mem.clone());
                        Applied(Ok(crate::state::Response::Done))
                    }
                    EntryPayload::Blank => Applied(Ok(crate::state::Response::Done)),
                };
                m.last_applied = Some(log_id);
                if let Some(r) = responder {
                    replies.push((r, reply));
                }
            }
            m.last_applied.as_ref().map(|l| l.index()).unwrap_or(0)
        };
        self.inner.applied.send_replace(last_index);
        for (r, reply) in replies {
            r.send(reply);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Vec<u8>) -> io::Result<()> {
        let meta_owned = meta.clone();
        // Decode and make durable off the runtime; durable first: if we crash
        // after this, restart loads the new state.
        let (state, snap) = self
            .blocking(move |store| {
                let state =
                    State::from_snapshot(&snapshot).map_err(|e| SnapshotError::Corrupt {
                        file: "received from the leader".into(),
                        what: format!("a state that does not decode ({e})"),
                    })?;
                let snap = StoredSnapshot {
                    meta: meta_owned,
                    data: snapshot,
                };
                if !store.persist_snapshot_blocking(&snap)? {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "refusing to install the snapshot up to {:?} over a newer one on disk \
                             ({:?})",
                            snap.meta.last_log_id,
                            store.snapshot_log_id()
                        ),
                    ));
                }
                Ok((state, snap))
            })
            .await?;
        let index = {
            let mut m = self.write_machine();
            m.state = state;
            m.last_applied = meta.last_log_id;
            m.last_membership = meta.last_membership.clone();
            m.last_applied.as_ref().map(|l| l.index()).unwrap_or(0)
        };
        self.inner.applied.send_replace(index);
        self.inner.metrics.raft.snapshot_installs.inc();
        tracing::info!(index, bytes = snap.data.len(), "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        let found = self
            .blocking(|store| {
                let file = &store.inner.file;
                match read_snapshot(file, &store.inner.legacy)? {
                    Some(bytes) => Ok(Some(split_snapshot(bytes, &file.display().to_string())?)),
                    None => Ok(None),
                }
            })
            .await?;
        Ok(found.map(|(meta, data)| Snapshot {
            meta,
            snapshot: data,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use openraft::testing::{blank_ent, log_id};

    use super::*;
    use crate::state::presence::Login;
    use crate::state::{Command, Entry as SmEntry};

    fn db(dir: &Path) -> sled::Db {
        sled::Config::new().path(dir.join("sled")).open().unwrap()
    }

    /// A snapshot up to `index` holding one user, `uid`.
    fn snapshot(index: u64, uid: &str) -> StoredSnapshot {
        let mut state = State::default();
        let login = Command::Login(Login {
            uid: uid.into(),
            sid: 1,
            client_type: "pc".into(),
            connection_id: String::new(),
            accept_strangers: true,
            ext: BTreeMap::new(),
            ttl_ms: 0,
        });
        state.apply(SmEntry { index, time_ms: 1 }, &login).unwrap();
        StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: Some(log_id::<TypeConfig>(1, 1, index)),
                last_membership: StoredMembership::default(),
            },
            data: state.to_snapshot().unwrap(),
        }
    }

    fn file_of(dir: &Path) -> PathBuf {
        dir.join(SNAPSHOT_FILE)
    }

    /// Snapshots used to be a value in the sled tree `snapshot`; a data dir
    /// from then must still come back with its state, or everything the
    /// purged log held would be gone.
    #[test]
    fn a_snapshot_an_older_version_kept_in_sled_is_still_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(dir.path());
        let snap = snapshot(7, "old");
        let legacy = db.open_tree("snapshot").unwrap();
        legacy
            .insert(KEY_SNAPSHOT, to_bincode(&snap).unwrap())
            .unwrap();

        let store = StateStore::open(&db, dir.path()).unwrap();
        assert!(store.read().state.presence("old").is_some());
        assert_eq!(*store.applied().borrow(), 7);
        assert_eq!(store.snapshot_log_id().map(|l| l.index()), Some(7));
        assert!(store.snapshot_bytes() > 0);
        // Once a new snapshot is written, the file is what is read.
        assert!(
            store
                .persist_snapshot_blocking(&snapshot(8, "new"))
                .unwrap()
        );
        assert!(file_of(dir.path()).exists());
        legacy.remove(KEY_SNAPSHOT).unwrap();
        let again = StateStore::open(&db, dir.path()).unwrap();
        assert!(again.read().state.presence("new").is_some());
        assert_eq!(*again.applied().borrow(), 8);
    }

    /// The file round-trips through `split_snapshot`; a cut-off file is an
    /// error, not a smaller state; a file from before versions still loads.
    #[test]
    fn the_file_carries_its_version_and_a_version_1_file_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(dir.path());
        let store = StateStore::open(&db, dir.path()).unwrap();
        let snap = snapshot(9, "u");
        store.persist_snapshot_blocking(&snap).unwrap();
        let file = std::fs::read(file_of(dir.path())).unwrap();
        assert_eq!(&file[..8], b"HRLDSNAP");
        let (meta, data) = split_snapshot(file.clone(), "f").unwrap();
        assert_eq!((meta, data), (snap.meta.clone(), snap.data.clone()));
        let err = split_snapshot(file[..file.len() - 1].to_vec(), "f").unwrap_err();
        assert!(matches!(err, SnapshotError::Corrupt { .. }), "{err}");

        std::fs::write(file_of(dir.path()), to_bincode(&snap).unwrap()).unwrap();
        let again = StateStore::open(&db, dir.path()).unwrap();
        assert!(again.read().state.presence("u").is_some());
    }

    /// Sabotage check: with the checksum comparison in `split_snapshot`
    /// removed, the flipped byte (inside a user id) loads as a different
    /// state and this fails.
    #[test]
    fn a_snapshot_with_a_bad_checksum_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(dir.path());
        let store = StateStore::open(&db, dir.path()).unwrap();
        store
            .persist_snapshot_blocking(&snapshot(9, "someone"))
            .unwrap();
        drop(store);
        let path = file_of(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes
            .windows(7)
            .position(|w| w == b"someone")
            .expect("the uid is in the data");
        bytes[at] = b'S';
        std::fs::write(&path, &bytes).unwrap();
        let err = StateStore::open(&db, dir.path()).err().expect("refused");
        let msg = err.to_string();
        assert!(
            msg.contains("checksum") && msg.contains(&path.display().to_string()),
            "{msg}"
        );
        assert!(msg.contains("replace flow"), "{msg}");
    }

    /// Sabotage check: with the version comparison removed, this fails.
    #[test]
    fn a_snapshot_of_an_unknown_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(dir.path());
        let store = StateStore::open(&db, dir.path()).unwrap();
        store.persist_snapshot_blocking(&snapshot(9, "u")).unwrap();
        drop(store);
        let path = file_of(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
        let body = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let msg = StateStore::open(&db, dir.path())
            .err()
            .expect("refused")
            .to_string();
        assert!(
            msg.contains("version 3") && msg.contains("1 and 2"),
            "{msg}"
        );
    }

    /// Sabotage check: with the "not newer" test in
    /// `persist_snapshot_blocking` removed, the older snapshot replaces the
    /// newer one and this fails.
    #[tokio::test]
    async fn an_older_snapshot_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(dir.path());
        let mut store = StateStore::open(&db, dir.path()).unwrap();
        assert!(
            store
                .persist_snapshot_blocking(&snapshot(10, "ten"))
                .unwrap()
        );
        // A build that started from an older state finishes late.
        assert!(
            !store
                .persist_snapshot_blocking(&snapshot(8, "eight"))
                .unwrap()
        );
        assert!(
            !store
                .persist_snapshot_blocking(&snapshot(10, "ten"))
                .unwrap()
        );
        let on_disk = store.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(on_disk.meta.last_log_id.map(|l| l.index()), Some(10));
        // An install of an older one is refused, not half done.
        let old = snapshot(8, "eight");
        let err = store
            .install_snapshot(&old.meta, old.data.clone())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("newer one on disk"), "{err}");
        let again = StateStore::open(&db, dir.path()).unwrap();
        assert!(again.read().state.presence("ten").is_some());
    }

    /// Builds and installs write one at a time: many at once leave the
    /// newest, whole.
    #[test]
    fn concurrent_writers_leave_the_newest_snapshot_whole() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(dir.path());
        let store = StateStore::open(&db, dir.path()).unwrap();
        std::thread::scope(|s| {
            for i in 1..=8u64 {
                let store = store.clone();
                s.spawn(move || store.persist_snapshot_blocking(&snapshot(i, &format!("u{i}"))));
            }
        });
        let again = StateStore::open(&db, dir.path()).unwrap();
        assert_eq!(*again.applied().borrow(), 8);
        assert!(again.read().state.presence("u8").is_some());
    }

    /// Apply checks continuity in every build. Sabotage check: with the
    /// check in `apply` removed, entry 4 is applied after 2 and this fails.
    #[tokio::test]
    async fn apply_refuses_an_entry_that_does_not_follow_the_last_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(dir.path());
        let mut store = StateStore::open(&db, dir.path()).unwrap();
        let apply = |store: &mut StateStore, indexes: Vec<u64>| {
            let entries: Vec<io::Result<EntryResponder<TypeConfig>>> = indexes
                .into_iter()
                .map(|i| Ok((blank_ent::<TypeConfig>(1, 1, i), None)))
                .collect();
            let mut store = store.clone();
            async move { store.apply(futures::stream::iter(entries)).await }
        };
        apply(&mut store, vec![1, 2]).await.unwrap();
        let err = apply(&mut store, vec![4]).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("entry 4 does not follow the last applied entry 2"),
            "{err}"
        );
        assert!(apply(&mut store, vec![2]).await.is_err(), "a repeat");
        assert_eq!(*store.applied().borrow(), 2);
        apply(&mut store, vec![3]).await.unwrap();
    }
}
