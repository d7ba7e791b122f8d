//! The Raft hard state: the vote, the purge point and the last committed
//! log id, in one small file beside the log segments (`log/raft_state`).
//!
//! They used to be values in sled, flushed and then `fdatasync`ed. That
//! made each one durable when it was written, but not afterwards: sled
//! 0.34 counts a buffer as stable once `pwrite` and `sync_file_range`
//! returned (no `fdatasync`, no disk-cache flush), and on that basis it
//! relocates pages, reuses the space they occupied and writes its own
//! (fsynced) page-table snapshots. Every apply wrote the committed index, so
//! sled churned all the time, and a power cut could give back an older vote
//! than the one Raft had already acted on. A follower whose vote went back
//! accepts entries from a deposed leader of an older term, truncates
//! acknowledged entries, and forms a quorum that has lost them: issue 16's
//! "1000 of 2500 acknowledged logins" finding. Here nothing but these
//! three values lives in the file, and it is rewritten only when the vote
//! or the purge point changes.
//!
//! # Format (version 1)
//!
//! `"HRLDHARD"`, the format version (u32 LE), the body's length (u32 LE),
//! the CRC-32 of the body (u32 LE), then the body: the bincode of
//! [`HardState`]. Written whole to `raft_state.tmp`, `fdatasync`ed, renamed
//! over `raft_state`, and the directory synced: a crash leaves the old file
//! or the new one, never a mix.
//!
//! The committed log id is not made durable on its own (openraft saves it
//! after every apply; a file write per apply is not worth it): it rides
//! along when the vote or the purge point is written, and on a clean
//! shutdown. It is only a hint for re-applying the log at start (see
//! `LogStore::open`, which never lets it point past the log it has).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::segment_log::{RESTORE_ADVICE, sync_dir};
use super::typ::{LogId, Vote};

/// The hard state format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const MAGIC: [u8; 8] = *b"HRLDHARD";
const HEADER: usize = 20;
const FILE_NAME: &str = "raft_state";
const TMP_NAME: &str = "raft_state.tmp";

/// What Raft must find again after a crash, besides the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The vote: durable before openraft acts on it.
    pub vote: Option<Vote>,
    /// The last purged log id: durable before its segments are deleted.
    pub purged: Option<LogId>,
    /// The last committed log id as last written (a hint, see module doc).
    pub committed: Option<LogId>,
}

/// Why the hard state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum HardStateError {
    /// The file is not what this module writes.
    #[error("raft state file {file}: {what}. {RESTORE_ADVICE}")]
    Corrupt {
        /// The file.
        file: String,
        /// What is wrong with it.
        what: String,
    },
    /// Written by a format this build does not read.
    #[error(
        "raft state file {file}: format version {found} is not supported (this build reads \
         version {FORMAT_VERSION}); run the release that wrote it, or restore the node with the \
         replace flow"
    )]
    UnknownVersion {
        /// The file.
        file: String,
        /// The version in its header.
        found: u32,
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

impl From<HardStateError> for io::Error {
    fn from(e: HardStateError) -> io::Error {
        let kind = match &e {
            HardStateError::Io { source, .. } => source.kind(),
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

fn ctx<T>(r: io::Result<T>, op: &'static str, file: &Path) -> Result<T, HardStateError> {
    r.map_err(|source| HardStateError::Io {
        op,
        file: file.display().to_string(),
        source,
    })
}

/// The hard state file of the log in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Reads the hard state in `dir`; `None` when there is no file yet.
pub fn load(dir: &Path) -> Result<Option<HardState>, HardStateError> {
    let file = path(dir);
    let tmp = dir.join(TMP_NAME);
    if tmp.exists() {
        // A write a crash interrupted before its rename: never in effect.
        ctx(fs::remove_file(&tmp), "deleting", &tmp)?;
    }
    let bytes = match fs::read(&file) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return ctx(Err(e), "reading", &file),
    };
    let corrupt = |what: &str| HardStateError::Corrupt {
        file: file.display().to_string(),
        what: what.to_string(),
    };
    if bytes.len() < HEADER || bytes[..8] != MAGIC {
        return Err(corrupt("no valid header"));
    }
    let word = |at: usize| {
        let mut b = [0; 4];
        b.copy_from_slice(&bytes[at..at + 4]);
        u32::from_le_bytes(b)
    };
    let version = word(8);
    if version != FORMAT_VERSION {
        return Err(HardStateError::UnknownVersion {
            file: file.display().to_string(),
            found: version,
        });
    }
    let body = &bytes[HEADER..];
    if body.len() != word(12) as usize {
        return Err(corrupt("a body whose length does not match its header"));
    }
    if crc32fast::hash(body) != word(16) {
        return Err(corrupt("a checksum that does not match"));
    }
    super::from_bincode(body)
        .map(Some)
        .map_err(|_| corrupt("a body that does not decode"))
}

/// Makes `state` the hard state in `dir`, durably.
pub fn store(dir: &Path, state: &HardState) -> Result<(), HardStateError> {
    let file = path(dir);
    let tmp = dir.join(TMP_NAME);
    let body = ctx(super::to_bincode(state), "encoding", &file)?;
    let mut bytes = Vec::with_capacity(HEADER + body.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    {
        let mut f = ctx(File::create(&tmp), "creating", &tmp)?;
        ctx(f.write_all(&bytes), "writing", &tmp)?;
        ctx(f.sync_data(), "fdatasync of", &tmp)?;
    }
    ctx(fs::rename(&tmp, &file), "renaming over", &file)?;
    ctx(sync_dir(dir), "syncing directory", dir)
}

#[cfg(test)]
mod tests {
    use openraft::testing::log_id;

    use super::*;
    use crate::raft::TypeConfig;

    fn sample() -> HardState {
        HardState {
            vote: Some(Vote::new(3, 2)),
            purged: Some(log_id::<TypeConfig>(2, 1, 90)),
            committed: Some(log_id::<TypeConfig>(3, 2, 120)),
        }
    }

    #[test]
    fn round_trips_and_a_leftover_temporary_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        store(dir.path(), &sample()).unwrap();
        fs::write(dir.path().join(TMP_NAME), b"half").unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(sample()));
        assert!(!dir.path().join(TMP_NAME).exists());
    }

    #[test]
    fn a_flipped_bit_or_an_unknown_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), &sample()).unwrap();
        let file = path(dir.path());
        let good = fs::read(&file).unwrap();
        let mut bad = good.clone();
        *bad.last_mut().unwrap() ^= 1;
        fs::write(&file, &bad).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("checksum") && err.contains("raft_state"),
            "{err}"
        );
        let mut newer = good;
        newer[8..12].copy_from_slice(&4u32.to_le_bytes());
        fs::write(&file, &newer).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("version 4") && err.contains("version 1"),
            "{err}"
        );
    }
}
