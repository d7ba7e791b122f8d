//! The Raft log's entries on disk: append-only segment files with one
//! `fdatasync` per group commit.
//!
//! Why not sled (which the node still opens): the log is written once at its
//! tail, read back almost only from memory, and dropped from its head a
//! segment at a time. Through sled, an append paid for sled's page cache,
//! its own log, its IO threads and their allocations, about a third of a
//! node's CPU per write; here it is an encode, a CRC and one `pwrite` per
//! batch.
//!
//! # Format (version 2)
//!
//! A directory of `<first index, 20 digits>.seg` files. Each starts with a
//! 32-byte header: `"HRLDLOG\0"`, the format version (u32 LE), 4 zero bytes,
//! the segment's first index (u64 LE, the same as its name), the CRC-32 of
//! those 24 bytes (u32 LE) and 4 zero bytes. Then records, one per entry:
//! `[payload length: u32 LE][crc32 of index and payload: u32 LE]
//! [index: u64 LE][payload: bincode]`. A segment holds consecutive entries,
//! and segments follow each other in index order. A gap between two is
//! legal only below the purge point or the snapshot (after a snapshot is
//! installed the next append starts past the old tail, and everything below
//! it is purged); the caller says where that is ([`SegmentLog::open_with`]).
//!
//! Version 1 (before versions) had no file header and records without the
//! index (`[length][crc32 of payload][payload]`). Such segments are still
//! read, never written: the first append after opening one starts a new
//! version-2 segment.
//!
//! # Durability rules, which keep recovery simple
//!
//! - appends are `pwrite`s; they are durable once the active segment is
//!   synced ([`SegmentLog::active_file`]). A segment stops being active only
//!   after it was cut to its valid length and synced;
//! - creating, truncating and deleting segment files sync the file and the
//!   directory before they return. They are rare (a roll-over every
//!   [`SEGMENT_BYTES`], a truncation per leader change, a purge per
//!   snapshot), and so a deleted or cut segment never comes back after a
//!   crash, and a cut leaves zeros, not old records, behind it.
//!
//! # What recovery accepts
//!
//! The active segment is preallocated to its full size with real blocks
//! (`posix_fallocate`: zeros, and no `ENOSPC` half-way through an append),
//! so an append writes inside the file. After a crash, whatever was written
//! since the last sync may be on disk in part: some sectors of the last
//! batch written, others still zero. That, and only that, is a torn tail,
//! and it is cut: the first record that does not check out in the *last*
//! segment is torn when some 512-byte sector of it reads as all zeros (an
//! unfinished write into the preallocated zeros) or it runs past the end of
//! the file, and no valid record follows it anywhere in the segment.
//! Nothing after it can have been acknowledged: every later byte was
//! written after it, and no sync completed since (a sync would have made it
//! whole). Everything else is refused, naming the file, the byte offset and
//! what was found: a bad checksum with no zero sector (bits changed, not a
//! write cut short), any bad record followed by a valid one, a bad record
//! in a segment that is not the last, a record whose index does not follow
//! the one before it, a damaged header, an unknown version, a gap the purge
//! point and the snapshot do not cover. The operator's way back is
//! [`RESTORE_ADVICE`]; the log is never repaired by cutting good records.
//!
//! The zero-sector test is etcd's (`isTornEntry`). It can be fooled only by
//! a damaged last record that happens to contain a whole sector of zeros.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A segment rolls over once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 32 << 20;
/// The segment format this build writes (and the newest it reads).
pub const FORMAT_VERSION: u32 = 2;
const MAGIC: [u8; 8] = *b"HRLDLOG\0";
const FILE_HEADER: usize = 32;
/// Sectors are written whole or not at all: the unit of a torn write.
const SECTOR: usize = 512;
/// Longer than any entry (a few hundred bytes; a membership change a few
/// KiB): a length beyond it is garbage, not a record.
const MAX_RECORD: usize = 64 << 20;

/// What an operator does when this node's log cannot be trusted.
pub const RESTORE_ADVICE: &str = "The node must not start on it: do not edit or delete the file \
     by hand. Restore the node with the replace flow: remove it from the cluster (`heraldctl \
     cluster remove <id>`), delete its data dir, start it empty and add it back as a learner \
     (`heraldctl cluster add-learner`), then promote it once it has caught up.";

/// Why the log could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Bytes that are not what the log wrote there, and not a torn tail.
    #[error("log segment {file}: {what} at byte {offset}. {RESTORE_ADVICE}")]
    Corrupt {
        /// The segment file.
        file: String,
        /// Where in it.
        offset: u64,
        /// What was found there.
        what: String,
    },
    /// A segment written by a format this build does not read.
    #[error(
        "log segment {file}: format version {found} is not supported (this build reads versions \
         1 and {FORMAT_VERSION}); run the release that wrote it, or restore the node with the \
         replace flow"
    )]
    UnknownVersion {
        /// The segment file.
        file: String,
        /// The version in its header.
        found: u32,
    },
    /// Entries missing between two segments, below no purge point or snapshot.
    #[error(
        "log segment {file}: starts at index {first}, but the segment before it ends at index \
         {prev_end}: entries {prev_end}..{first} are missing and neither the purge point nor \
         the snapshot covers them (a lost segment file?). {RESTORE_ADVICE}"
    )]
    Gap {
        /// The segment after the gap.
        file: String,
        /// Its first index.
        first: u64,
        /// One past the last index of the segment before it.
        prev_end: u64,
    },
    /// A system call failed: `op` on `file`.
    #[error("{op} {file}: {source}")]
    Io {
        /// What was being done ("fdatasync of log segment").
        op: &'static str,
        /// The file or directory.
        file: String,
        /// The OS error.
        source: io::Error,
    },
}

impl From<LogError> for io::Error {
    fn from(e: LogError) -> io::Error {
        let kind = match &e {
            LogError::Io { source, .. } => source.kind(),
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

/// `Err(e)` as a [`LogError::Io`] saying what was done to which file.
fn ctx<T>(r: io::Result<T>, op: &'static str, file: &Path) -> Result<T, LogError> {
    r.map_err(|source| LogError::Io {
        op,
        file: file.display().to_string(),
        source,
    })
}

/// How a segment's records are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// Version 1: no file header, records without their index.
    V1,
    /// Version 2: file header, records carry their index.
    V2,
}

impl Layout {
    fn file_header(self) -> usize {
        match self {
            Layout::V1 => 0,
            Layout::V2 => FILE_HEADER,
        }
    }

    fn record_header(self) -> usize {
        match self {
            Layout::V1 => 8,
            Layout::V2 => 16,
        }
    }
}

/// One segment file.
struct Segment {
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    layout: Layout,
    /// Byte offset of each record: entry `first + i` starts at `offsets[i]`.
    offsets: Vec<u64>,
    /// End of the valid records; anything past it is not part of the log.
    len: u64,
}

impl Segment {
    /// One past its last entry.
    fn end(&self) -> u64 {
        self.first + self.offsets.len() as u64
    }

    /// Byte offset where entry `index` (at most [`Segment::end`]) starts.
    fn offset(&self, index: u64) -> u64 {
        let i = (index - self.first) as usize;
        self.offsets.get(i).copied().unwrap_or(self.len)
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }
}

/// The log's segments, oldest first; the last one takes the appends.
pub struct SegmentLog {
    dir: PathBuf,
    segments: Vec<Segment>,
    segment_bytes: u64,
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

/// Makes the directory's entries (created, renamed, deleted files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Gives `file` real blocks up to `len` bytes (zeros), so later writes
/// inside it cannot fail for want of space and need no size change.
/// glibc emulates it by writing zeros where the file system cannot.
pub fn preallocate(file: &File, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(io::Error::other)?;
    // SAFETY: plain system call on an open descriptor we own; no pointers.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) } {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

fn crc_of(index: Option<u64>, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    if let Some(i) = index {
        h.update(&i.to_le_bytes());
    }
    h.update(payload);
    h.finalize()
}

/// What sits at a byte offset of a segment.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// A valid record: its size (header included) and, in version 2, index.
    Record { size: usize, index: Option<u64> },
    /// A length of zero: the zeros after the last record, if all that
    /// follows is zeros too.
    Zero,
    /// Not a valid record. `size` is what its header claims (header
    /// included) when the length is plausible.
    Bad { what: String, size: Option<usize> },
}

fn u32_at(bytes: &[u8], pos: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&bytes[pos..pos + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(bytes: &[u8], pos: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&bytes[pos..pos + 8]);
    u64::from_le_bytes(b)
}

/// Reads the record at `pos` of `bytes`.
fn parse_record(bytes: &[u8], pos: usize, layout: Layout) -> Parsed {
    let header = layout.record_header();
    if pos + header > bytes.len() {
        return Parsed::Bad {
            what: "a record header cut off by the end of the file".into(),
            size: None,
        };
    }
    let len = u32_at(bytes, pos) as usize;
    if len == 0 {
        return Parsed::Zero;
    }
    if len > MAX_RECORD {
        return Parsed::Bad {
            what: format!("a record length of {len} bytes, more than any entry"),
            size: None,
        };
    }
    let size = header + len;
    if pos + size > bytes.len() {
        return Parsed::Bad {
            what: format!("a record of {len} bytes running past the end of the file"),
            size: Some(size),
        };
    }
    let crc = u32_at(bytes, pos + 4);
    let index = (layout == Layout::V2).then(|| u64_at(bytes, pos + 8));
    if crc_of(index, &bytes[pos + header..pos + size]) != crc {
        return Parsed::Bad {
            what: "a record whose checksum does not match".into(),
            size: Some(size),
        };
    }
    Parsed::Record { size, index }
}

/// The offset of the first valid record after `pos`, if any: data that
/// was written after a bad record, so the bad record is not a torn tail.
/// Version-2 candidates must carry an index the segment could hold, which
/// keeps the scan cheap.
fn valid_record_after(bytes: &[u8], pos: usize, layout: Layout, first: u64) -> Option<usize> {
    let header = layout.record_header();
    let most = first.saturating_add((bytes.len() / header) as u64);
    (pos + 1..bytes.len().saturating_sub(header - 1)).find(|&off| {
        if layout == Layout::V2 {
            let index = u64_at(bytes, off + 8);
            if index < first || index > most {
                return false;
            }
        }
        matches!(parse_record(bytes, off, layout), Parsed::Record { .. })
    })
}

/// True when the bad record at `pos` looks like a write cut short by a
/// crash: it runs past the end of the file, or one of the sectors it lies
/// in reads as zeros from where the record starts to the sector's end.
fn looks_torn(bytes: &[u8], pos: usize, claimed: Option<usize>, layout: Layout) -> bool {
    let size = claimed.unwrap_or(layout.record_header());
    let end = pos + size;
    if end > bytes.len() {
        return true;
    }
    let mut sector = pos / SECTOR * SECTOR;
    while sector < end {
        let from = sector.max(pos);
        let to = (sector + SECTOR).min(bytes.len());
        if bytes[from..to].iter().all(|&b| b == 0) {
            return true;
        }
        sector += SECTOR;
    }
    false
}

/// Appends one record holding `value` at `index` to `buf`.
fn encode_record<T: Serialize>(buf: &mut Vec<u8>, index: u64, value: &T) -> io::Result<()> {
    let start = buf.len();
    buf.extend_from_slice(&[0; 16]);
    bincode::serialize_into(&mut *buf, value)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let payload = &buf[start + 16..];
    let (len, crc) = (payload.len() as u32, crc_of(Some(index), payload));
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    buf[start + 8..start + 16].copy_from_slice(&index.to_le_bytes());
    Ok(())
}

/// The version-2 file header of the segment starting at `first`.
fn file_header(first: u64) -> [u8; FILE_HEADER] {
    let mut h = [0; FILE_HEADER];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&first.to_le_bytes());
    let crc = crc32fast::hash(&h[..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Reads a segment's file header: its layout, or why it is refused.
fn read_header(bytes: &[u8], first: u64, file: &str) -> Result<Layout, LogError> {
    let corrupt = |what: String| LogError::Corrupt {
        file: file.to_string(),
        offset: 0,
        what,
    };
    if bytes.len() >= MAGIC.len() && bytes[..8] == MAGIC {
        if bytes.len() < FILE_HEADER {
            return Err(corrupt("a file header cut short".into()));
        }
        if crc32fast::hash(&bytes[..24]) != u32_at(bytes, 24) {
            return Err(corrupt(
                "a file header whose checksum does not match".into(),
            ));
        }
        let version = u32_at(bytes, 8);
        if version != FORMAT_VERSION {
            return Err(LogError::UnknownVersion {
                file: file.to_string(),
                found: version,
            });
        }
        let named = u64_at(bytes, 16);
        if named != first {
            return Err(corrupt(format!(
                "a file header for the segment starting at {named}, not {first} as its name says"
            )));
        }
        return Ok(Layout::V2);
    }
    if bytes.len() >= 4 && bytes[..4] == MAGIC[..4] {
        return Err(corrupt("a damaged file header".into()));
    }
    Ok(Layout::V1)
}

impl Segment {
    /// Reads segment `first` in `dir` and finds its records (see the module
    /// doc for what is accepted). `Ok(None)`: the last segment was created
    /// but never got its header (a crash while rolling over), so it held
    /// nothing; it is deleted.
    fn recover(dir: &Path, first: u64, is_last: bool) -> Result<Option<Segment>, LogError> {
        let path = dir.join(segment_name(first));
        let name = path.display().to_string();
        let file = ctx(
            OpenOptions::new().read(true).write(true).open(&path),
            "opening log segment",
            &path,
        )?;
        let bytes = ctx(fs::read(&path), "reading log segment", &path)?;
        let corrupt = |offset: usize, what: String| LogError::Corrupt {
            file: name.clone(),
            offset: offset as u64,
            what,
        };
        if bytes.iter().all(|&b| b == 0) {
            if !is_last {
                return Err(corrupt(
                    0,
                    "nothing but zeros (no header, no records), yet later segments exist".into(),
                ));
            }
            ctx(fs::remove_file(&path), "deleting empty log segment", &path)?;
            ctx(sync_dir(dir), "syncing log directory", dir)?;
            tracing::warn!(segment = %name, "deleted a log segment whose creation a crash interrupted (it held no records)");
            return Ok(None);
        }
        let layout = read_header(&bytes, first, &name)?;
        let mut offsets = Vec::new();
        let mut pos = layout.file_header();
        let mut expected = first;
        let stop = loop {
            match parse_record(&bytes, pos, layout) {
                Parsed::Record { size, index } => {
                    if let Some(found) = index
                        && found != expected
                    {
                        return Err(corrupt(
                            pos,
                            format!(
                                "a record for index {found} where index {expected} (the one after \
                                 its predecessor) belongs"
                            ),
                        ));
                    }
                    offsets.push(pos as u64);
                    pos += size;
                    expected += 1;
                    if pos == bytes.len() {
                        break None;
                    }
                }
                other => break Some(other),
            }
        };
        let mut seg = Segment {
            first,
            path: path.clone(),
            file: Arc::new(file),
            layout,
            offsets,
            len: pos as u64,
        };
        let Some(found) = stop else {
            return Ok(Some(seg));
        };
        if bytes[pos..].iter().all(|&b| b == 0) {
            // The zeros after the last record: kept for appends in the
            // active segment, else cut (a segment stops being active cut).
            if !is_last || layout != Layout::V2 {
                seg.seal()?;
            }
            return Ok(Some(seg));
        }
        let what = match found {
            Parsed::Bad { what, .. } => what,
            _ => "a zero record length followed by data".into(),
        };
        if !is_last {
            return Err(corrupt(
                pos,
                format!(
                    "{what}, in a segment that was complete and synced before the next one was \
                     started"
                ),
            ));
        }
        if let Some(next) = valid_record_after(&bytes, pos, layout, first) {
            return Err(corrupt(
                pos,
                format!(
                    "{what}, followed by a valid record at byte {next}: data after it was \
                     written, so this is damage, not a write torn by a crash"
                ),
            ));
        }
        let claimed = match parse_record(&bytes, pos, layout) {
            Parsed::Bad { size, .. } => size,
            _ => None,
        };
        if !looks_torn(&bytes, pos, claimed, layout) {
            return Err(corrupt(
                pos,
                format!(
                    "{what}, with no zero-filled sector in it: its bytes were changed, it is not \
                     a write torn by a crash"
                ),
            ));
        }
        tracing::warn!(
            segment = %name,
            cut_at = pos,
            dropped_bytes = bytes.len() - pos,
            "cutting a torn tail off the log: a write no sync had completed when the node stopped"
        );
        if layout == Layout::V2 {
            seg.cut_and_preallocate(pos as u64, bytes.len() as u64)?;
        } else {
            seg.seal()?;
        }
        Ok(Some(seg))
    }

    /// Cuts the file to its records and syncs it: it takes no more appends.
    fn seal(&self) -> Result<(), LogError> {
        ctx(
            self.file.set_len(self.len),
            "cutting log segment",
            &self.path,
        )?;
        ctx(self.file.sync_all(), "fdatasync of log segment", &self.path)
    }

    /// Cuts the file at `at`, then gives it zeroed blocks again up to
    /// `size`, and syncs: what was past `at` never reads back.
    fn cut_and_preallocate(&mut self, at: u64, size: u64) -> Result<(), LogError> {
        ctx(self.file.set_len(at), "cutting log segment", &self.path)?;
        ctx(
            preallocate(&self.file, size.max(at)),
            "preallocating log segment",
            &self.path,
        )?;
        ctx(self.file.sync_all(), "fdatasync of log segment", &self.path)?;
        self.len = at;
        Ok(())
    }
}

impl SegmentLog {
    /// Opens the log in `dir`, creating the directory if need be, with no
    /// gaps allowed between segments.
    pub fn open(dir: &Path) -> Result<SegmentLog, LogError> {
        SegmentLog::open_with(dir, SEGMENT_BYTES, 0)
    }

    /// [`SegmentLog::open`] with segments rolling over at `segment_bytes`.
    /// Entries below `covered_below` are purged or in the snapshot: a gap
    /// between segments may end there, nowhere else.
    pub fn open_with(
        dir: &Path,
        segment_bytes: u64,
        covered_below: u64,
    ) -> Result<SegmentLog, LogError> {
        if !dir.exists() {
            ctx(fs::create_dir_all(dir), "creating log directory", dir)?;
            if let Some(parent) = dir.parent() {
                ctx(sync_dir(parent), "syncing directory", parent)?;
            }
        }
        let mut firsts = Vec::new();
        for item in ctx(fs::read_dir(dir), "listing log directory", dir)? {
            let name = ctx(item, "listing log directory", dir)?.file_name();
            let first = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(first) = first {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut segments: Vec<Segment> = Vec::with_capacity(firsts.len());
        for (k, &first) in firsts.iter().enumerate() {
            let Some(seg) = Segment::recover(dir, first, k + 1 == firsts.len())? else {
                continue;
            };
            if let Some(prev) = segments.last() {
                if seg.first < prev.end() {
                    return Err(LogError::Corrupt {
                        file: seg.name(),
                        offset: 0,
                        what: format!(
                            "a segment starting at index {}, inside the one before it (which \
                             ends at {})",
                            seg.first,
                            prev.end()
                        ),
                    });
                }
                if seg.first > prev.end() && seg.first > covered_below {
                    return Err(LogError::Gap {
                        file: seg.name(),
                        first: seg.first,
                        prev_end: prev.end(),
                    });
                }
            }
            segments.push(seg);
        }
        Ok(SegmentLog {
            dir: dir.to_path_buf(),
            segments,
            segment_bytes,
        })
    }

    /// The directory it lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// One past the last entry (0 for an empty log).
    pub fn end(&self) -> u64 {
        self.segments.last().map_or(0, Segment::end)
    }

    /// The first index held, if any.
    pub fn first(&self) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| !s.offsets.is_empty())
            .map(|s| s.first)
    }

    /// Where the last run of consecutive entries starts: every index from
    /// it to [`SegmentLog::end`] is held, and the one before it is not (it
    /// sits in a gap, or is before the first entry).
    pub fn contiguous_from(&self) -> u64 {
        let mut from = self.end();
        for seg in self.segments.iter().rev() {
            if seg.end() != from {
                break;
            }
            from = seg.first;
        }
        from
    }

    /// Entries held.
    pub fn len(&self) -> u64 {
        self.segments.iter().map(|s| s.offsets.len() as u64).sum()
    }

    /// True when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of records held.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// The file appends go to, and its path: syncing it makes every append
    /// so far durable.
    pub fn active_file(&self) -> Option<(Arc<File>, PathBuf)> {
        self.segments
            .last()
            .map(|s| (s.file.clone(), s.path.clone()))
    }

    /// Appends `(index, value)` pairs in order. Each index must follow the
    /// one before it; the first must be [`SegmentLog::end`] or past it (a
    /// gap, see the module doc). Written, not yet durable. On an error
    /// nothing counts as appended.
    pub fn append<'a, T: Serialize + 'a>(
        &mut self,
        entries: impl IntoIterator<Item = (u64, &'a T)>,
    ) -> Result<(), LogError> {
        let mut buf = Vec::with_capacity(4096);
        let mut offsets = Vec::new();
        for (index, value) in entries {
            let next = self.end() + offsets.len() as u64;
            let full = self.segments.last().is_none_or(|s| {
                s.layout != Layout::V2 || s.len + buf.len() as u64 >= self.segment_bytes
            });
            if index < next {
                return Err(LogError::Io {
                    op: "appending to the log",
                    file: self.dir.display().to_string(),
                    source: io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("index {index} would overwrite the log, which ends at {next}"),
                    ),
                });
            }
            if index > next || full {
                self.write(&mut buf, &mut offsets)?;
                self.roll(index)?;
            }
            let Some(seg) = self.segments.last() else {
                unreachable!("roll pushed a segment");
            };
            offsets.push(seg.len + buf.len() as u64);
            ctx(
                encode_record(&mut buf, index, value),
                "encoding a log entry for",
                &seg.path,
            )?;
        }
        self.write(&mut buf, &mut offsets)
    }

    /// Writes `buf` (records starting at `offsets`) at the end of the
    /// active segment, then counts them in.
    fn write(&mut self, buf: &mut Vec<u8>, offsets: &mut Vec<u64>) -> Result<(), LogError> {
        if buf.is_empty() {
            return Ok(());
        }
        let Some(seg) = self.segments.last_mut() else {
            unreachable!("append rolls before it writes");
        };
        ctx(
            seg.file.write_all_at(buf, seg.len),
            "writing log segment",
            &seg.path,
        )?;
        seg.len += buf.len() as u64;
        seg.offsets.append(offsets);
        buf.clear();
        Ok(())
    }

    /// Starts a new segment at `first`; the old one is cut to its valid
    /// length (a failed write may have left bytes past it) and synced.
    fn roll(&mut self, first: u64) -> Result<(), LogError> {
        if let Some(old) = self.segments.last() {
            old.seal()?;
        }
        let path = self.dir.join(segment_name(first));
        let file = ctx(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path),
            "creating log segment",
            &path,
        )?;
        ctx(
            preallocate(&file, self.segment_bytes),
            "preallocating log segment",
            &path,
        )?;
        ctx(
            file.write_all_at(&file_header(first), 0),
            "writing log segment header",
            &path,
        )?;
        ctx(file.sync_all(), "fdatasync of log segment", &path)?;
        ctx(sync_dir(&self.dir), "syncing log directory", &self.dir)?;
        self.segments.push(Segment {
            first,
            path,
            file: Arc::new(file),
            layout: Layout::V2,
            offsets: Vec::new(),
            len: FILE_HEADER as u64,
        });
        Ok(())
    }

    /// Entries `from..to` that are held, in order. Each record's index is
    /// checked against its place.
    pub fn read<T: DeserializeOwned>(&self, from: u64, to: u64) -> Result<Vec<T>, LogError> {
        Ok(self
            .read_indexed(from, to)?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// [`SegmentLog::read`], each entry with the index its record carries,
    /// so the caller can check the entry agrees.
    pub fn read_indexed<T: DeserializeOwned>(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, T)>, LogError> {
        let mut out = Vec::new();
        for seg in &self.segments {
            let (lo, hi) = (from.max(seg.first), to.min(seg.end()));
            if lo >= hi {
                continue;
            }
            let start = seg.offset(lo);
            let mut buf = vec![0; (seg.offset(hi) - start) as usize];
            ctx(
                seg.file.read_exact_at(&mut buf, start),
                "reading log segment",
                &seg.path,
            )?;
            let header = seg.layout.record_header();
            let (mut pos, mut index) = (0, lo);
            while pos < buf.len() {
                let corrupt = |what: String| LogError::Corrupt {
                    file: seg.name(),
                    offset: start + pos as u64,
                    what,
                };
                let size = match parse_record(&buf, pos, seg.layout) {
                    Parsed::Record {
                        index: Some(found), ..
                    } if found != index => {
                        return Err(corrupt(format!(
                            "a record for index {found} where index {index} belongs"
                        )));
                    }
                    Parsed::Record { size, .. } => size,
                    Parsed::Zero => return Err(corrupt("zeros where a record was written".into())),
                    Parsed::Bad { what, .. } => return Err(corrupt(what)),
                };
                let value = super::from_bincode(&buf[pos + header..pos + size])
                    .map_err(|e| corrupt(format!("an entry that does not decode ({e})")))?;
                out.push((index, value));
                pos += size;
                index += 1;
            }
        }
        Ok(out)
    }

    /// The last entry, if any.
    pub fn last<T: DeserializeOwned>(&self) -> Result<Option<T>, LogError> {
        let end = self.end();
        if end == 0 {
            return Ok(None);
        }
        Ok(self.read(end - 1, end)?.pop())
    }

    /// Drops every entry after `last` (all of them for `None`), durably.
    pub fn truncate_after(&mut self, last: Option<u64>) -> Result<(), LogError> {
        let from = last.map_or(0, |l| l + 1);
        let mut removed = false;
        while let Some(seg) = self.segments.last_mut() {
            if seg.first >= from {
                if let Some(seg) = self.segments.pop() {
                    ctx(
                        fs::remove_file(&seg.path),
                        "deleting log segment",
                        &seg.path,
                    )?;
                }
                removed = true;
                continue;
            }
            if from < seg.end() || (removed && seg.layout == Layout::V2) {
                // The active segment now: cut (zeros, not the old records,
                // must read back behind the cut) and preallocated again.
                let cut = seg.offset(from.min(seg.end()));
                seg.offsets
                    .truncate((from.min(seg.end()) - seg.first) as usize);
                if seg.layout == Layout::V2 {
                    seg.cut_and_preallocate(cut, self.segment_bytes)?;
                } else {
                    seg.len = cut;
                    seg.seal()?;
                }
            }
            break;
        }
        if removed {
            ctx(sync_dir(&self.dir), "syncing log directory", &self.dir)?;
        }
        Ok(())
    }

    /// Takes the segments whose entries are all at or below `upto` out of
    /// the log and returns their files for [`remove_segments`] (which can
    /// run without the log's lock). An empty segment goes too, unless it is
    /// the one taking appends.
    pub fn detach_purged(&mut self, upto: u64) -> Vec<PathBuf> {
        let count = self.segments.len();
        let mut detached = Vec::new();
        self.segments = std::mem::take(&mut self.segments)
            .into_iter()
            .enumerate()
            .filter_map(|(k, seg)| {
                let empty = seg.offsets.is_empty();
                let purged = if empty {
                    k + 1 < count && seg.first <= upto
                } else {
                    seg.end() <= upto + 1
                };
                if purged {
                    detached.push(seg.path);
                    None
                } else {
                    Some(seg)
                }
            })
            .collect();
        detached
    }
}

/// Deletes detached segment files in `dir`, durably.
pub fn remove_segments(dir: &Path, paths: &[PathBuf]) -> Result<(), LogError> {
    if paths.is_empty() {
        return Ok(());
    }
    for path in paths {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return ctx(Err(e), "deleting purged log segment", path),
        }
    }
    ctx(sync_dir(dir), "syncing log directory", dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(log: &mut SegmentLog, range: std::ops::Range<u64>) {
        let values: Vec<(u64, String)> = range.map(|i| (i, format!("entry {i}"))).collect();
        log.append(values.iter().map(|(i, v)| (*i, v))).unwrap();
    }

    fn read(log: &SegmentLog, from: u64, to: u64) -> Vec<String> {
        log.read::<String>(from, to).unwrap()
    }

    fn names(range: std::ops::Range<u64>) -> Vec<String> {
        range.map(|i| format!("entry {i}")).collect()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    fn open(dir: &Path) -> Result<SegmentLog, LogError> {
        SegmentLog::open(dir)
    }

    /// A log of entries 0..n in one segment, closed; returns the segment's
    /// path and each record's byte offset (and one past the last).
    fn one_segment(dir: &Path, n: u64) -> (PathBuf, Vec<u64>) {
        let mut log = SegmentLog::open(dir).unwrap();
        append(&mut log, 0..n);
        let mut offsets = log.segments[0].offsets.clone();
        offsets.push(log.segments[0].len);
        (dir.join(segment_name(0)), offsets)
    }

    fn edit(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = fs::read(path).unwrap();
        f(&mut bytes);
        fs::write(path, &bytes).unwrap();
    }

    /// The refusal names the file, the byte offset and what to do.
    fn assert_refused(err: LogError, path: &Path, offset: u64, what: &str) {
        let msg = err.to_string();
        assert!(
            matches!(err, LogError::Corrupt { offset: o, .. } if o == offset),
            "offset {offset}: {msg}"
        );
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(what), "{what:?} not in {msg}");
        assert!(msg.contains("replace flow"), "{msg}");
        let io: io::Error = err.into();
        assert_eq!(io.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn entries_survive_a_reopen_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open_with(dir.path(), 300, 0).unwrap();
        append(&mut log, 1..40);
        assert!(files(dir.path()).len() > 3, "{:?}", files(dir.path()));
        assert_eq!(read(&log, 5, 30), names(5..30));
        drop(log);
        let log = SegmentLog::open_with(dir.path(), 300, 0).unwrap();
        assert_eq!((log.end(), log.len(), log.first()), (40, 39, Some(1)));
        assert_eq!(read(&log, 0, 100), names(1..40));
        assert_eq!(log.last::<String>().unwrap().as_deref(), Some("entry 39"));
        let header = &fs::read(dir.path().join(segment_name(1))).unwrap()[..FILE_HEADER];
        assert_eq!(&header[..8], b"HRLDLOG\0");
        assert_eq!(u32_at(header, 8), FORMAT_VERSION);
    }

    /// Sabotage check: with `looks_torn` returning false (or the torn-tail
    /// branch refusing), this fails: a crash in the middle of an append
    /// must not stop the node.
    #[test]
    fn a_torn_tail_is_cut_and_appends_go_on_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (path, offsets) = one_segment(dir.path(), 10);
        let whole = offsets[10] as usize;
        // The next batch, written but not synced: its first sectors reached
        // the disk, the last one did not.
        let mut batch = Vec::new();
        for i in 10..20u64 {
            encode_record(&mut batch, i, &format!("entry {i} {}", "x".repeat(90))).unwrap();
        }
        let landed = (whole + batch.len()) / SECTOR * SECTOR - whole;
        assert!(landed > 0 && landed < batch.len());
        edit(&path, |b| {
            b[whole..whole + landed].copy_from_slice(&batch[..landed]);
        });
        let mut log = open(dir.path()).unwrap();
        assert!(log.end() > 10 && log.end() < 20, "whole records kept");
        let kept = log.end();
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            SEGMENT_BYTES,
            "still preallocated"
        );
        append(&mut log, kept..kept + 2);
        drop(log);
        let log = open(dir.path()).unwrap();
        assert_eq!(read(&log, 10, kept + 2).len() as u64, kept + 2 - 10);
        assert_eq!(read(&log, 0, 10), names(0..10));
    }

    /// A record whose first sector reached the disk and whose next did not
    /// is torn too, even when the sector boundary cuts its header.
    #[test]
    fn a_half_written_record_at_the_end_is_torn() {
        let dir = tempfile::tempdir().unwrap();
        let (path, offsets) = one_segment(dir.path(), 3);
        let end = offsets[3] as usize;
        let mut rec = Vec::new();
        encode_record(&mut rec, 3, &"y".repeat(700)).unwrap();
        let boundary = (end / SECTOR + 1) * SECTOR;
        edit(&path, |b| {
            b[end..boundary].copy_from_slice(&rec[..boundary - end])
        });
        let log = open(dir.path()).unwrap();
        assert_eq!(read(&log, 0, 10), names(0..3));
    }

    /// Sabotage check: with the `valid_record_after` test removed from
    /// `recover`, the refusal no longer names the valid record after it and
    /// this fails; with `looks_torn` also answering yes, the segment is cut
    /// at the flipped record and the records after it are destroyed.
    #[test]
    fn a_corrupt_record_in_the_middle_of_the_active_segment_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, offsets) = one_segment(dir.path(), 40);
        let bad = offsets[20] as usize;
        edit(&path, |b| {
            for x in &mut b[bad + 20..bad + 24] {
                *x ^= 0xff;
            }
        });
        let before = fs::read(&path).unwrap();
        let err = open(dir.path()).err().expect("refused");
        assert_refused(err, &path, bad as u64, "followed by a valid record");
        assert_eq!(fs::read(&path).unwrap(), before, "nothing was cut");
    }

    /// A sector that reads as zeros in the middle of synced records looks
    /// like a torn write, but valid records follow it: refused, not cut.
    /// Sabotage check: with the `valid_record_after` test removed from
    /// `recover`, the segment is cut there and this fails.
    #[test]
    fn a_zeroed_sector_followed_by_valid_records_is_refused_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (path, offsets) = one_segment(dir.path(), 60);
        assert!(offsets[60] > 3 * SECTOR as u64);
        let first_hit = offsets.iter().position(|&o| o > SECTOR as u64).unwrap() - 1;
        edit(&path, |b| b[SECTOR..2 * SECTOR].fill(0));
        let before = fs::read(&path).unwrap();
        let err = open(dir.path()).err().expect("refused");
        assert_refused(err, &path, offsets[first_hit], "followed by a valid record");
        assert_eq!(fs::read(&path).unwrap(), before, "nothing was cut");
    }

    /// Sabotage check: with the `looks_torn` test removed, this fails: the
    /// last, acknowledged record is cut as if a crash had torn it.
    #[test]
    fn a_changed_last_record_is_refused_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (path, offsets) = one_segment(dir.path(), 10);
        let last = offsets[9] as usize;
        edit(&path, |b| b[last + 17] ^= 0x10);
        let err = open(dir.path()).err().expect("refused");
        assert_refused(err, &path, last as u64, "no zero-filled sector");
    }

    /// Sabotage check: with the index comparison in `recover` removed, this
    /// fails (the log opens and serves index 7 as if it were 5).
    #[test]
    fn a_record_with_the_wrong_index_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, offsets) = one_segment(dir.path(), 10);
        // A record that checks out on its own, for index 7, where 5 belongs.
        let at = offsets[5] as usize;
        let mut rec = Vec::new();
        encode_record(&mut rec, 7, &"entry 5".to_string()).unwrap();
        assert_eq!(rec.len() as u64, offsets[6] - offsets[5]);
        edit(&path, |b| b[at..at + rec.len()].copy_from_slice(&rec));
        let err = open(dir.path()).err().expect("refused");
        assert_refused(err, &path, at as u64, "index 7 where index 5");
    }

    /// Reads check the index too (the file changed after it was opened).
    #[test]
    fn a_read_checks_each_record_index() {
        let dir = tempfile::tempdir().unwrap();
        let (path, offsets) = one_segment(dir.path(), 10);
        let log = open(dir.path()).unwrap();
        let at = offsets[5] as usize;
        let mut rec = Vec::new();
        encode_record(&mut rec, 7, &"entry 5".to_string()).unwrap();
        edit(&path, |b| b[at..at + rec.len()].copy_from_slice(&rec));
        let err = log.read::<String>(0, 10).unwrap_err();
        assert_refused(err, &path, at as u64, "index 7 where index 5");
    }

    #[test]
    fn a_bad_record_before_the_last_segment_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open_with(dir.path(), 200, 0).unwrap();
        append(&mut log, 0..20);
        drop(log);
        let first = dir.path().join(segment_name(0));
        let mut bytes = fs::read(&first).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&first, &bytes).unwrap();
        let err = SegmentLog::open_with(dir.path(), 200, 0)
            .err()
            .expect("corrupt");
        assert!(err.to_string().contains("complete and synced"), "{err}");
        assert!(err.to_string().contains(&first.display().to_string()));
    }

    /// Sabotage check: with the `covered_below` comparison removed from
    /// `open_with`, the first open succeeds and this fails.
    #[test]
    fn a_gap_between_segments_is_refused_unless_purged_or_in_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open_with(dir.path(), 300, 0).unwrap();
        append(&mut log, 0..30);
        drop(log);
        // A segment in the middle lost.
        let segs = files(dir.path());
        assert!(segs.len() >= 3, "{segs:?}");
        fs::remove_file(dir.path().join(&segs[1])).unwrap();
        let err = SegmentLog::open_with(dir.path(), 300, 0)
            .err()
            .expect("gap refused");
        assert!(matches!(err, LogError::Gap { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&segs[2]) && msg.contains("missing") && msg.contains("replace flow"),
            "{msg}"
        );
        // Covered by a purge point or a snapshot: fine.
        let second: u64 = segs[2].trim_end_matches(".seg").parse().unwrap();
        let log = SegmentLog::open_with(dir.path(), 300, second).unwrap();
        assert_eq!(log.contiguous_from(), second);
    }

    #[test]
    fn an_unknown_segment_version_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = one_segment(dir.path(), 3);
        edit(&path, |b| {
            b[8..12].copy_from_slice(&7u32.to_le_bytes());
            let crc = crc32fast::hash(&b[..24]);
            b[24..28].copy_from_slice(&crc.to_le_bytes());
        });
        let err = open(dir.path()).err().expect("refused");
        let msg = err.to_string();
        assert!(
            matches!(err, LogError::UnknownVersion { found: 7, .. }),
            "{msg}"
        );
        assert!(
            msg.contains("version 7") && msg.contains("1 and 2"),
            "{msg}"
        );
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }

    /// A data dir from before versions: headerless segments with records
    /// that do not carry their index. Read, never appended to.
    #[test]
    fn a_version_1_segment_is_read_and_appends_go_to_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_name(0));
        let mut bytes = Vec::new();
        for i in 0..5u64 {
            let payload = bincode::serialize(&format!("entry {i}")).unwrap();
            bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            bytes.extend_from_slice(&payload);
        }
        bytes.resize(bytes.len() + 4096, 0); // its preallocated zeros
        fs::write(&path, &bytes).unwrap();
        let mut log = open(dir.path()).unwrap();
        assert_eq!(read(&log, 0, 10), names(0..5));
        append(&mut log, 5..8);
        assert_eq!(files(dir.path()), vec![segment_name(0), segment_name(5)]);
        drop(log);
        let log = open(dir.path()).unwrap();
        assert_eq!(read(&log, 0, 10), names(0..8));
    }

    #[test]
    fn the_active_segment_is_preallocated_and_its_zeros_are_no_torn_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open_with(dir.path(), 4096, 0).unwrap();
        append(&mut log, 0..3);
        let path = dir.path().join(segment_name(0));
        assert_eq!(fs::metadata(&path).unwrap().len(), 4096);
        // Real blocks, not a sparse file.
        use std::os::unix::fs::MetadataExt;
        assert!(fs::metadata(&path).unwrap().blocks() * 512 >= 4096);
        drop(log);
        let mut log = SegmentLog::open_with(dir.path(), 4096, 0).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 4096, "not cut");
        append(&mut log, 3..5);
        assert_eq!(read(&log, 0, 5), names(0..5));
        // Truncation leaves zeros, not the old records, behind the cut.
        log.truncate_after(Some(1)).unwrap();
        drop(log);
        let log = SegmentLog::open_with(dir.path(), 4096, 0).unwrap();
        assert_eq!(read(&log, 0, 5), names(0..2));
        // A segment that stopped being active holds only its records.
        let mut log = log;
        append(&mut log, 2..300);
        let bytes = fs::read(&path).unwrap();
        assert_ne!(bytes.last(), Some(&0), "no zeros after the records");
    }

    /// A crash while rolling over can leave the new segment without its
    /// header: it never held a record, so it goes.
    #[test]
    fn a_last_segment_without_its_header_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (_, _) = one_segment(dir.path(), 3);
        let stray = dir.path().join(segment_name(3));
        fs::write(&stray, vec![0; 4096]).unwrap();
        let mut log = open(dir.path()).unwrap();
        assert!(!stray.exists());
        append(&mut log, 3..5);
        assert_eq!(read(&log, 0, 5), names(0..5));
    }

    #[test]
    fn truncation_cuts_and_deletes_and_stays_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open_with(dir.path(), 300, 0).unwrap();
        append(&mut log, 1..40);
        log.truncate_after(Some(12)).unwrap();
        assert_eq!(log.end(), 13);
        let err = log.append([(12, &"again".to_string())]).unwrap_err();
        assert!(
            matches!(&err, LogError::Io { source, .. } if source.kind() == io::ErrorKind::InvalidInput)
        );
        append(&mut log, 13..15);
        drop(log);
        let mut log = SegmentLog::open_with(dir.path(), 300, 0).unwrap();
        assert_eq!(read(&log, 0, 100), names(1..15));
        log.truncate_after(None).unwrap();
        assert!(log.is_empty());
        assert!(files(dir.path()).is_empty());
    }

    #[test]
    fn a_gap_starts_a_segment_and_purging_drops_whole_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open_with(dir.path(), 300, 0).unwrap();
        append(&mut log, 1..20);
        // A snapshot up to 99 was installed: the next append is 100.
        append(&mut log, 100..103);
        assert_eq!(
            read(&log, 15, 102),
            [names(15..20), names(100..102)].concat()
        );
        assert_eq!(log.contiguous_from(), 100);
        let gone = log.detach_purged(99);
        assert!(!gone.is_empty());
        remove_segments(dir.path(), &gone).unwrap();
        assert_eq!(files(dir.path()), vec![segment_name(100)]);
        drop(log);
        let log = SegmentLog::open_with(dir.path(), 300, 100).unwrap();
        assert_eq!(read(&log, 0, 200), names(100..103));
        // A segment with an entry above the purge point stays.
        let mut log = log;
        assert!(log.detach_purged(101).is_empty());
    }
}
