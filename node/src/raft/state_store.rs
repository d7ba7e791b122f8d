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
//! append already made every entry durable before it was committed.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use futures::{Stream, TryStreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::typ::{LogId, Snapshot, SnapshotMeta, StoredMembership};
use super::{Applied, TypeConfig, encode};
use crate::metrics::Metrics;
use crate::state::{Entry as SmEntry, State};

const KEY_SNAPSHOT: &[u8] = b"current";
const SNAPSHOT_FILE: &str = "snapshot.bin";

/// The durable snapshot's bytes: the file, else (a data dir from before the
/// file) the sled tree it used to live in.
fn read_snapshot(file: &Path, legacy: &sled::Tree) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(file) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(legacy
            .get(KEY_SNAPSHOT)
            .map_err(io_err)?
            .map(|v| v.to_vec())),
        Err(e) => Err(e),
    }
}

/// Splits a stored snapshot (the bincode of a [`StoredSnapshot`]: the meta,
/// the data's length as a u64, the data) into its meta and its data, reusing
/// `bytes` for the data. Decoding the data through serde pushed a 200 MB
/// snapshot into a growing `Vec` one byte at a time: slow, and on restart
/// the node's memory peaked at twice its steady size.
fn split_snapshot(mut bytes: Vec<u8>) -> io::Result<(SnapshotMeta, Vec<u8>)> {
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
            let (meta, data) = split_snapshot(bytes)?;
            machine.state = State::from_snapshot(&data).map_err(io::Error::other)?;
            machine.last_applied = meta.last_log_id;
            machine.last_membership = meta.last_membership;
        }
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
                metrics,
            }),
        })
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

    /// Makes `snap` the durable snapshot: encode, sled insert, flush. Blocking
    /// (a snapshot of a million records is ~150 MB): run it off the runtime.
    fn persist_snapshot_blocking(&self, snap: &StoredSnapshot) -> io::Result<()> {
        // The bincode of `snap`, written in two parts so the data is not
        // copied (see [`split_snapshot`]).
        let mut header = encode(&snap.meta)?;
        header.extend_from_slice(&(snap.data.len() as u64).to_le_bytes());
        let started = std::time::Instant::now();
        // Write aside, fsync, then rename over the old one and fsync the
        // directory: a crash leaves either the old snapshot or the new one.
        let tmp = self.inner.file.with_extension("tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&header)?;
            f.write_all(&snap.data)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.inner.file)?;
        if let Some(dir) = self.inner.file.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        self.inner.metrics.observe_fsync("snapshot", started);
        Ok(())
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
        let snap = self
            .blocking(move |store| {
                let snap = StoredSnapshot {
                    meta,
                    data: view.to_snapshot().map_err(io::Error::other)?,
                };
                drop(view);
                store.persist_snapshot_blocking(&snap)?;
                Ok(snap)
            })
            .await?;
        self.inner.metrics.raft_snapshot_builds.inc();
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
                let state = State::from_snapshot(&snapshot).map_err(io::Error::other)?;
                let snap = StoredSnapshot {
                    meta: meta_owned,
                    data: snapshot,
                };
                store.persist_snapshot_blocking(&snap)?;
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
        self.inner.metrics.raft_snapshot_installs.inc();
        tracing::info!(index, bytes = snap.data.len(), "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        let found = self
            .blocking(|store| read_snapshot(&store.inner.file, &store.inner.legacy))
            .await?;
        match found {
            Some(bytes) => {
                let (meta, data) = split_snapshot(bytes)?;
                Ok(Some(Snapshot {
                    meta,
                    snapshot: data,
                }))
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::state::presence::Login;
    use crate::state::{Command, Entry as SmEntry};

    /// Snapshots used to be a value in the sled tree `snapshot`; a data dir
    /// from then must still come back with its state, or everything the
    /// purged log held would be gone.
    #[test]
    fn a_snapshot_an_older_version_kept_in_sled_is_still_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path().join("sled"))
            .open()
            .unwrap();
        let mut state = State::default();
        let login = Command::Login(Login {
            uid: "old".into(),
            sid: 1,
            client_type: "pc".into(),
            accept_strangers: true,
            ext: BTreeMap::new(),
            ttl_ms: 0,
        });
        state
            .apply(
                SmEntry {
                    index: 7,
                    time_ms: 1,
                },
                &login,
            )
            .unwrap();
        let snap = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: Some(openraft::testing::log_id::<TypeConfig>(1, 1, 7)),
                last_membership: StoredMembership::default(),
            },
            data: state.to_snapshot().unwrap(),
        };
        let legacy = db.open_tree("snapshot").unwrap();
        legacy.insert(KEY_SNAPSHOT, encode(&snap).unwrap()).unwrap();

        let store = StateStore::open(&db, dir.path()).unwrap();
        assert!(store.read().state.presence("old").is_some());
        assert_eq!(*store.applied().borrow(), 7);
        assert!(store.snapshot_bytes() > 0);
        // Once a new snapshot is written, the file is what is read.
        store.persist_snapshot_blocking(&snap).unwrap();
        assert!(dir.path().join(SNAPSHOT_FILE).exists());
        legacy.remove(KEY_SNAPSHOT).unwrap();
        let again = StateStore::open(&db, dir.path()).unwrap();
        assert!(again.read().state.presence("old").is_some());

        // The file written in two parts is the bincode of the whole.
        let file = std::fs::read(dir.path().join(SNAPSHOT_FILE)).unwrap();
        assert_eq!(file, encode(&snap).unwrap());
        let (meta, data) = split_snapshot(file.clone()).unwrap();
        assert_eq!((meta, data), (snap.meta.clone(), snap.data.clone()));
        // A cut-off file is an error, not a smaller state.
        let err = split_snapshot(file[..file.len() - 1].to_vec()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
