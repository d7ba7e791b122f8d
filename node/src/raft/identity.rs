//! Which cluster and which node a data dir belongs to: a small fsynced file,
//! `data_dir/identity`, written once and never changed.
//!
//! Raft assumes a voter never forgets what it acknowledged. A node whose
//! data dir was emptied forgets everything, and if it came back as the same
//! voter it could elect a leader that lacks acknowledged writes (issue 16:
//! two wiped followers elected one of themselves and the running leader's
//! log was cut from 303 entries to 2). So a node never founds a cluster
//! because its data dir is empty (founding is `heraldctl cluster init`,
//! once), and the identity tells a wiped node from a member:
//!
//! - `cluster_id`: chosen at `cluster init`; every peer message carries it,
//!   and a node refuses peers of another cluster.
//! - `incarnation`: random, made with the file. The cluster records each
//!   member's incarnation (`state::Members`); a data dir with another one
//!   (wiped and started again) is refused until an operator replaces it:
//!   `heraldctl cluster replace <id>` (remove, add as a learner, promote).
//!
//! A node with no identity file adopts one only from a leader that does not
//! know any earlier incarnation of it: a founding node at init, or a node
//! being added. The file is TOML so an operator can read it
//! (`cat data_dir/identity`); it is written whole to a temporary file,
//! fsynced, renamed and the directory synced.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use super::segment_log::sync_dir;

/// The data-dir format this build writes and reads: the identity file's
/// layout *and* the bincode shape of the state machine's commands and state
/// inside the log and the snapshot (`crate::state::Command`,
/// `crate::state::State`). Bump it whenever either shape changes, so a node
/// refuses a data dir it would misread instead of misreading it. (Appending
/// a `Command` variant keeps old logs readable; changing a field does not.)
///
/// - 1: up to issue 17's release.
/// - 2: the seed flows (handoff epochs, per-connection presence).
/// - 3: registered accounts, content tags and their quotas (issue 18's
///   last part), the share and link modules.
/// - 4: storage-server heartbeats off the log (a server records its
///   heartbeat TTL and when it went up, instead of an expiry time).
pub const FORMAT_VERSION: u32 = 4;
const FILE_NAME: &str = "identity";
const TMP_NAME: &str = "identity.tmp";

/// A data dir's identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// [`FORMAT_VERSION`] when written.
    pub format: u32,
    /// The cluster (32 hex digits, chosen at `cluster init`).
    pub cluster_id: String,
    /// The node's Raft id.
    pub node_id: u64,
    /// This data dir's incarnation of the node (32 hex digits).
    pub incarnation: String,
    /// When the file was written (ms since the epoch, system clock).
    pub created_ms: u64,
}

/// 128 random bits as 32 hex digits: cluster ids and incarnations.
pub fn random_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Whether `id` looks like [`random_id`]'s output.
pub fn is_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Identity {
    /// A fresh identity of node `node_id` in `cluster_id`, with a new
    /// incarnation.
    pub fn new(cluster_id: &str, node_id: u64) -> Identity {
        let created_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Identity {
            format: FORMAT_VERSION,
            cluster_id: cluster_id.to_string(),
            node_id,
            incarnation: random_id(),
            created_ms,
        }
    }
}

/// Why a data dir's identity is not usable.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The file is not what this module writes.
    #[error(
        "identity file {file}: {what}. The node must not start on it: do not edit it; if the \
         data dir is lost, restore the node with the replace flow (heraldctl cluster replace <id>)"
    )]
    Corrupt {
        /// The file.
        file: String,
        /// What is wrong with it.
        what: String,
    },
    /// The data dir belongs to another node.
    #[error(
        "data dir {dir} belongs to node {found}, but this node's id is {configured}: point \
         data_dir at node {configured}'s own directory"
    )]
    OtherNode {
        /// The data dir.
        dir: String,
        /// The node id in the file.
        found: u64,
        /// The node id in the config.
        configured: u64,
    },
    /// Raft state without an identity: not a data dir this build made.
    #[error(
        "data dir {dir} holds Raft state ({what}) but no identity file: it was not made by this \
         version of Herald, or the identity file was deleted. Restore the node with the replace \
         flow (heraldctl cluster replace <id>) on an empty data dir"
    )]
    Unidentified {
        /// The data dir.
        dir: String,
        /// What was found.
        what: String,
    },
    /// A system call failed: `op` on `file`.
    #[error("{op} {file}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        file: String,
        /// The OS error.
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, file: &'a Path) -> impl FnOnce(io::Error) -> IdentityError + 'a {
    move |source| IdentityError::Io {
        op,
        file: file.display().to_string(),
        source,
    }
}

/// The identity file of a data dir.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Reads `data_dir`'s identity; `None` when there is none. Checks the file
/// is whole and that it names node `node_id`; a data dir without one must
/// hold no Raft state (`state_found` names what was found, if anything:
/// see [`raft_state_in`]).
pub fn load(
    data_dir: &Path,
    node_id: u64,
    state_found: Option<String>,
) -> Result<Option<Identity>, IdentityError> {
    let file = path(data_dir);
    let text = match fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(what) = state_found {
                return Err(IdentityError::Unidentified {
                    dir: data_dir.display().to_string(),
                    what,
                });
            }
            return Ok(None);
        }
        Err(e) => return Err(io_err("reading", &file)(e)),
    };
    let corrupt = |what: String| IdentityError::Corrupt {
        file: file.display().to_string(),
        what,
    };
    let id: Identity = toml::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    if id.format != FORMAT_VERSION {
        return Err(corrupt(format!(
            "format {} (this build reads format {FORMAT_VERSION}; run the release that wrote \
             it, or restore a `heraldctl snapshot save` file into a new data dir)",
            id.format
        )));
    }
    if !is_id(&id.cluster_id) || !is_id(&id.incarnation) {
        return Err(corrupt(
            "a cluster id or incarnation that is not 32 hex digits".into(),
        ));
    }
    if id.node_id != node_id {
        return Err(IdentityError::OtherNode {
            dir: data_dir.display().to_string(),
            found: id.node_id,
            configured: node_id,
        });
    }
    Ok(Some(id))
}

/// What in `data_dir` shows that this node has taken part in a cluster: a
/// snapshot, or a hard state holding a vote or a commit point (a node
/// saves its vote before it appends or grants anything). An empty log
/// directory, as a node that waited for `cluster init` leaves, is not.
pub fn raft_state_in(data_dir: &Path) -> Result<Option<String>, IdentityError> {
    let snapshot = data_dir.join("snapshot.bin");
    if snapshot.exists() {
        return Ok(Some(snapshot.display().to_string()));
    }
    let log_dir = data_dir.join("log");
    let hard = super::hard_state::load(&log_dir).map_err(|e| IdentityError::Io {
        op: "reading the hard state in",
        file: log_dir.display().to_string(),
        source: io::Error::other(e.to_string()),
    })?;
    Ok(hard
        .filter(|h| h.vote.is_some() || h.committed.is_some())
        .map(|_| format!("a vote in {}", super::hard_state::path(&log_dir).display())))
}

/// Writes `id` as `data_dir`'s identity, durably; refuses if one exists.
pub fn create(data_dir: &Path, id: &Identity) -> Result<(), IdentityError> {
    let file = path(data_dir);
    if file.exists() {
        return Err(IdentityError::Corrupt {
            file: file.display().to_string(),
            what: "already exists (an identity is written once)".into(),
        });
    }
    fs::create_dir_all(data_dir).map_err(io_err("creating", data_dir))?;
    let tmp = data_dir.join(TMP_NAME);
    let body = toml::to_string(id).map_err(|e| IdentityError::Corrupt {
        file: file.display().to_string(),
        what: format!("encoding: {e}"),
    })?;
    let text = format!(
        "# Herald node identity: the cluster and node this data dir belongs to.\n\
         # Written once; never edit it (see node/src/raft/identity.rs).\n{body}"
    );
    {
        let mut f = fs::File::create(&tmp).map_err(io_err("creating", &tmp))?;
        f.write_all(text.as_bytes())
            .map_err(io_err("writing", &tmp))?;
        f.sync_all().map_err(io_err("fsync of", &tmp))?;
    }
    fs::rename(&tmp, &file).map_err(io_err("renaming over", &file))?;
    sync_dir(data_dir).map_err(io_err("syncing directory", data_dir))
}

/// This node's identity as it is now: none until `cluster init` or until a
/// leader adds it, then fixed. Cheap to clone; shared by the peer service
/// (which checks and adopts) and the network (which stamps it on every
/// peer message).
#[derive(Clone)]
pub struct IdentityCell {
    inner: Arc<CellInner>,
}

struct CellInner {
    data_dir: PathBuf,
    node_id: u64,
    current: RwLock<Option<Identity>>,
    /// Why peers were last turned away for not matching, for status.
    refused: RwLock<Option<String>>,
}

impl IdentityCell {
    /// The cell for `data_dir` of node `node_id`, holding what was loaded.
    pub fn new(data_dir: &Path, node_id: u64, loaded: Option<Identity>) -> Self {
        IdentityCell {
            inner: Arc::new(CellInner {
                data_dir: data_dir.to_owned(),
                node_id,
                current: RwLock::new(loaded),
                refused: RwLock::new(None),
            }),
        }
    }

    /// The identity, if this node has one.
    pub fn get(&self) -> Option<Identity> {
        self.inner
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The cluster id, if this node has one.
    pub fn cluster_id(&self) -> Option<String> {
        self.get().map(|i| i.cluster_id)
    }

    /// Makes this node a member of `cluster_id` (durably, before it acts as
    /// one); a no-op returning the existing identity when it already is.
    /// Refuses when it belongs to another cluster.
    pub fn adopt(&self, cluster_id: &str) -> Result<Identity, String> {
        let mut cur = self
            .inner
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner());
        match &*cur {
            Some(id) if id.cluster_id == cluster_id => return Ok(id.clone()),
            Some(id) => {
                return Err(format!(
                    "this node belongs to cluster {}, not {cluster_id}",
                    id.cluster_id
                ));
            }
            None => {}
        }
        if !is_id(cluster_id) {
            return Err(format!("{cluster_id:?} is not a cluster id"));
        }
        let id = Identity::new(cluster_id, self.inner.node_id);
        create(&self.inner.data_dir, &id).map_err(|e| e.to_string())?;
        tracing::info!(cluster_id, incarnation = %id.incarnation, "joined the cluster: identity written");
        *cur = Some(id.clone());
        Ok(id)
    }

    /// Records why peers were refused (shown by status and `/health`).
    pub fn set_refused(&self, why: Option<String>) {
        *self
            .inner
            .refused
            .write()
            .unwrap_or_else(|p| p.into_inner()) = why;
    }

    /// Why peers were last refused, if they were.
    pub fn refused(&self) -> Option<String> {
        self.inner
            .refused
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_once_read_back_and_checked_against_the_node() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path(), 2, None).unwrap().is_none());
        let id = Identity::new(&random_id(), 2);
        create(dir.path(), &id).unwrap();
        assert_eq!(load(dir.path(), 2, None).unwrap(), Some(id.clone()));
        assert!(create(dir.path(), &id).is_err(), "never rewritten");
        let err = load(dir.path(), 3, None).unwrap_err().to_string();
        assert!(
            err.contains("belongs to node 2") && err.contains("is 3"),
            "{err}"
        );
        assert!(!dir.path().join(TMP_NAME).exists());
    }

    #[test]
    fn a_damaged_file_or_state_without_identity_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::new(&random_id(), 1);
        create(dir.path(), &id).unwrap();
        let text = fs::read_to_string(path(dir.path())).unwrap();
        fs::write(path(dir.path()), text.replace(&id.incarnation, "zz")).unwrap();
        let err = load(dir.path(), 1, None).unwrap_err().to_string();
        assert!(err.contains("32 hex digits"), "{err}");
        fs::write(
            path(dir.path()),
            text.replace(&format!("format = {FORMAT_VERSION}"), "format = 9"),
        )
        .unwrap();
        let err = load(dir.path(), 1, None).unwrap_err().to_string();
        assert!(err.contains("format 9"), "{err}");

        let bare = tempfile::tempdir().unwrap();
        assert_eq!(raft_state_in(bare.path()).unwrap(), None);
        fs::write(bare.path().join("snapshot.bin"), b"x").unwrap();
        let found = raft_state_in(bare.path()).unwrap();
        assert!(
            found
                .as_deref()
                .is_some_and(|f| f.ends_with("snapshot.bin"))
        );
        let err = load(bare.path(), 1, found).unwrap_err().to_string();
        assert!(err.contains("no identity file"), "{err}");
    }

    #[test]
    fn a_cell_adopts_one_cluster_and_refuses_another() {
        let dir = tempfile::tempdir().unwrap();
        let cell = IdentityCell::new(dir.path(), 4, None);
        assert!(cell.get().is_none());
        let a = random_id();
        let first = cell.adopt(&a).unwrap();
        assert_eq!(cell.adopt(&a).unwrap(), first, "idempotent");
        assert!(
            cell.adopt(&random_id())
                .unwrap_err()
                .contains("belongs to cluster")
        );
        assert!(cell.adopt("nope").is_err() || cell.cluster_id().as_deref() == Some(a.as_str()));
        assert_eq!(load(dir.path(), 4, None).unwrap(), Some(first));
    }
}
