//! `faultfs`: a FUSE passthrough filesystem with a fault switch, mounted
//! over a node's data dir so the disk nemeses can break the disk under a
//! real `herald-node` without any hook in the node.
//!
//! Every call goes to a backing directory (`<run>/backing/node<N>`); the
//! filesystem runs in this process, one thread per mount (fuser's
//! pure-Rust mount: `mount(2)` on `/dev/fuse` as root, else `fusermount3`).
//! The runner holds a [`FaultControl`] per mount and can:
//!
//! - [`crash`](FaultControl::crash): forget every write not yet fsynced, as
//!   a power cut would. Writes go through to the backing file at once, but
//!   the first write since the last `fsync`/`fdatasync` into a 4 KiB page
//!   of the file's synced length first saves that page's old bytes; a sync
//!   of the file forgets the saved pages. A crash puts the saved pages back
//!   and cuts the file to its synced length (a file created since has a
//!   synced length of 0). Call it only once the node's process is reaped.
//!   Directory operations (create, rename, unlink) are kept as if the
//!   directory had been synced: only file contents are lost.
//! - [`set`](FaultControl::set) a [`DiskFault`]: `fsync` answering `EIO`,
//!   writes and syncs answering `EIO`, or a full disk (`ENOSPC` on writes,
//!   creates and `fallocate`, and `statfs` showing no free block).
//!
//! Reads always pass through. Bit flips need no switch: the runner writes
//! into a stopped node's files through the mount (and syncs them).
//!
//! An inode the kernel knows is pinned: the filesystem holds an `O_PATH`
//! descriptor of its backing file from the lookup that named it until the
//! kernel forgets it, and opens and stats go through that descriptor. So a
//! file renamed over or unlinked while the kernel still holds it is the
//! file it was (as on any POSIX file system), and the backing file system
//! cannot hand its inode number, which is the FUSE inode number, to a new
//! file meanwhile. Opening by path instead once let a reader of the node's
//! snapshot see the file that replaced it, or an empty one.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use fuser::{
    AccessFlags, BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// What the disk does wrong, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskFault {
    /// Nothing: a passthrough.
    #[default]
    Healthy,
    /// `fsync`, `fdatasync` and directory syncs fail with `EIO`.
    FsyncEio,
    /// Writes and syncs fail with `EIO`.
    WriteEio,
    /// The disk is full: `ENOSPC` on writes, creates and `fallocate`, and
    /// `statfs` shows no free block.
    NoSpace,
}

const PAGE: u64 = 4096;
/// Attributes and entries are never cached by the kernel: the backing
/// files change behind its back at a crash.
const TTL: Duration = Duration::ZERO;

/// The old bytes of a file's synced contents that writes since its last
/// sync replaced.
#[derive(Debug)]
struct Unsynced {
    /// The file's length at its last sync (or when first seen).
    synced_len: u64,
    /// Page number -> the page's bytes at the last sync (short at the end).
    pages: BTreeMap<u64, Vec<u8>>,
}

#[derive(Debug)]
struct Handle {
    file: File,
    ino: u64,
    append: bool,
}

#[derive(Debug)]
struct State {
    backing: PathBuf,
    /// FUSE inode -> backing path.
    paths: HashMap<u64, PathBuf>,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    /// FUSE inode -> what a crash puts back.
    unsynced: HashMap<u64, Unsynced>,
    /// FUSE inode -> its backing file, held while the kernel knows the inode.
    pins: HashMap<u64, Pin>,
    fault: DiskFault,
}

/// An `O_PATH` descriptor of a backing file and the kernel's lookup count
/// of its inode (see the module docs).
#[derive(Debug)]
struct Pin {
    file: File,
    lookups: u64,
}

impl Pin {
    /// A path that opens the pinned file itself, wherever it is now.
    fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// What a [`crash`](FaultControl::crash) undid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Files put back to their last sync.
    pub files: usize,
    /// Pages of synced data restored.
    pub pages: usize,
}

/// The runner's switch for one mount; cheap to clone.
#[derive(Debug, Clone)]
pub struct FaultControl {
    state: Arc<Mutex<State>>,
}

impl FaultControl {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Switches the fault.
    pub fn set(&self, fault: DiskFault) {
        self.lock().fault = fault;
    }

    /// The current fault.
    pub fn fault(&self) -> DiskFault {
        self.lock().fault
    }

    /// Inodes pinned for the kernel (one descriptor each; see the module
    /// docs): bounded by what the kernel still holds, not by what was ever
    /// created.
    pub fn pinned_inodes(&self) -> usize {
        self.lock().pins.len()
    }

    /// Files with writes not yet synced.
    pub fn unsynced_files(&self) -> usize {
        self.lock().unsynced.len()
    }

    /// Drops every write not yet synced (see the module docs). Only once
    /// the process that wrote is dead.
    pub fn crash(&self) -> Result<CrashReport> {
        let mut st = self.lock();
        st.handles.clear();
        let mut report = CrashReport::default();
        let unsynced: Vec<(u64, Unsynced)> = st.unsynced.drain().collect();
        for (ino, u) in unsynced {
            let Some(path) = st.paths.get(&ino) else {
                continue;
            };
            let file = match OpenOptions::new().write(true).open(path) {
                Ok(f) => f,
                // Unlinked since: nothing to put back.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("crash: {}", path.display())),
            };
            for (page, bytes) in &u.pages {
                file.write_all_at(bytes, page * PAGE)
                    .with_context(|| format!("crash: restoring {}", path.display()))?;
            }
            file.set_len(u.synced_len)
                .with_context(|| format!("crash: cutting {}", path.display()))?;
            report.files += 1;
            report.pages += u.pages.len();
        }
        Ok(report)
    }
}

/// A mounted [`FaultFs`]; dropping it unmounts.
pub struct Mount {
    session: Option<BackgroundSession>,
    control: FaultControl,
    mountpoint: PathBuf,
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mount")
            .field("mountpoint", &self.mountpoint)
            .finish()
    }
}

impl Mount {
    /// Mounts a passthrough of `backing` (created if missing) on
    /// `mountpoint` (an existing directory).
    pub fn new(backing: &Path, mountpoint: &Path) -> Result<Mount> {
        std::fs::create_dir_all(backing)
            .with_context(|| format!("creating {}", backing.display()))?;
        let backing = backing.canonicalize()?;
        let mut paths = HashMap::new();
        paths.insert(INodeNo::ROOT.0, backing.clone());
        let state = Arc::new(Mutex::new(State {
            backing,
            paths,
            handles: HashMap::new(),
            next_fh: 1,
            unsynced: HashMap::new(),
            pins: HashMap::new(),
            fault: DiskFault::Healthy,
        }));
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("herald-faultfs".into()),
            MountOption::DefaultPermissions,
        ];
        let session = fuser::spawn_mount(
            FaultFs {
                state: state.clone(),
            },
            mountpoint,
            &config,
        )
        .with_context(|| format!("mounting faultfs on {}", mountpoint.display()))?;
        Ok(Mount {
            session: Some(session),
            control: FaultControl { state },
            mountpoint: mountpoint.to_path_buf(),
        })
    }

    /// Its switch.
    pub fn control(&self) -> FaultControl {
        self.control.clone()
    }

    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(s) = self.session.take()
            && s.umount_and_join().is_err()
        {
            // Busy: a killed node not reaped yet still holds files. Detach
            // lazily; the kernel ends the session once they are closed.
            use std::os::unix::ffi::OsStrExt;
            if let Ok(path) = std::ffi::CString::new(self.mountpoint.as_os_str().as_bytes()) {
                // SAFETY: umount2(2) with a NUL-terminated path that
                // outlives the call.
                unsafe {
                    libc::umount2(path.as_ptr(), libc::MNT_DETACH);
                }
            }
        }
    }
}

/// Why FUSE mounts cannot work here, or `None` when a trial mount worked.
pub fn unavailable() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse on this machine".into());
    }
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("fusermount3").is_file()));
    if !on_path {
        return Some("no fusermount3 on PATH (Debian package fuse3; .ci/install-fuse)".into());
    }
    let trial = || -> Result<()> {
        let dir = tempfile::Builder::new()
            .prefix("faultfs-probe-")
            .tempdir()?;
        let (backing, mnt) = (dir.path().join("b"), dir.path().join("m"));
        std::fs::create_dir(&mnt)?;
        let mount = Mount::new(&backing, &mnt)?;
        std::fs::write(mnt.join("probe"), b"ok")?;
        if std::fs::read(backing.join("probe"))? != b"ok" {
            bail!("a write through the trial mount did not reach its backing dir");
        }
        drop(mount);
        Ok(())
    };
    trial()
        .err()
        .map(|e| format!("a trial FUSE mount failed: {e:#}"))
}

/// The filesystem itself; see the module docs.
struct FaultFs {
    state: Arc<Mutex<State>>,
}

fn errno(e: &io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH
    }
}

fn attr(ino: u64, m: &Metadata) -> FileAttr {
    let ft = m.file_type();
    let kind = FileType::from_std(ft).unwrap_or(FileType::RegularFile);
    FileAttr {
        ino: INodeNo(ino),
        size: m.size(),
        blocks: m.blocks(),
        atime: time(m.atime(), m.atime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind,
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: m.blksize() as u32,
        flags: 0,
    }
}

impl State {
    /// The FUSE inode of a backing path's metadata: the backing inode + 1,
    /// the root being 1.
    fn ino_of(&self, path: &Path, m: &Metadata) -> u64 {
        if path == self.backing {
            INodeNo::ROOT.0
        } else {
            m.ino() + 1
        }
    }

    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.paths.get(&ino.0).cloned().ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path(parent)?.join(name))
    }

    /// Looks `path` up for the kernel: remembers its path and pins its
    /// inode, one more lookup the kernel will [`forget`](Self::forget).
    fn entry(&mut self, path: PathBuf) -> Result<FileAttr, Errno> {
        if path == self.backing {
            let m = std::fs::symlink_metadata(&path).map_err(|e| errno(&e))?;
            return Ok(attr(INodeNo::ROOT.0, &m));
        }
        // Open first, then stat what was opened: the path may be replaced
        // in between, and the attributes must be the pinned file's.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| errno(&e))?;
        let m = file.metadata().map_err(|e| errno(&e))?;
        let ino = self.ino_of(&path, &m);
        // An inode already pinned keeps its descriptor: the same file, as
        // its pin keeps the number from being reused.
        self.pins
            .entry(ino)
            .or_insert(Pin { file, lookups: 0 })
            .lookups += 1;
        self.paths.insert(ino, path);
        Ok(attr(ino, &m))
    }

    /// The kernel dropped `n` lookups of `ino`.
    fn forget(&mut self, ino: u64, n: u64) {
        let Some(pin) = self.pins.get_mut(&ino) else {
            return;
        };
        pin.lookups = pin.lookups.saturating_sub(n);
        if pin.lookups == 0 {
            self.pins.remove(&ino);
            // A crash still needs the path of a file with unsynced writes.
            if !self.unsynced.contains_key(&ino) {
                self.paths.remove(&ino);
            }
        }
    }

    /// A path that opens inode `ino` itself: its pin, else its last path.
    fn open_path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        match self.pins.get(&ino.0) {
            Some(pin) => Ok(pin.proc_path()),
            None => self.path(ino),
        }
    }

    /// The attributes of inode `ino` itself (see [`open_path`](Self::open_path)).
    fn metadata(&self, ino: INodeNo) -> io::Result<Metadata> {
        match self.pins.get(&ino.0) {
            Some(pin) => pin.file.metadata(),
            None => std::fs::symlink_metadata(
                self.path(ino)
                    .map_err(|e| io::Error::from_raw_os_error(e.code()))?,
            ),
        }
    }

    fn write_fault(&self) -> Option<Errno> {
        match self.fault {
            DiskFault::Healthy | DiskFault::FsyncEio => None,
            DiskFault::WriteEio => Some(Errno::EIO),
            DiskFault::NoSpace => Some(Errno::ENOSPC),
        }
    }

    fn sync_fault(&self) -> Option<Errno> {
        match self.fault {
            DiskFault::FsyncEio | DiskFault::WriteEio => Some(Errno::EIO),
            DiskFault::Healthy | DiskFault::NoSpace => None,
        }
    }

    /// Before `[start, end)` of inode `ino` (open as `file`) changes: save
    /// the synced bytes there that are not saved yet.
    fn save(&mut self, ino: u64, file: &File, start: u64, end: u64) -> io::Result<()> {
        let u = match self.unsynced.entry(ino) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(Unsynced {
                synced_len: file.metadata()?.len(),
                pages: BTreeMap::new(),
            }),
        };
        let end = end.min(u.synced_len);
        if start >= end {
            return Ok(());
        }
        for page in start / PAGE..=(end - 1) / PAGE {
            if u.pages.contains_key(&page) {
                continue;
            }
            let from = page * PAGE;
            let len = PAGE.min(u.synced_len - from) as usize;
            let mut buf = vec![0u8; len];
            let mut got = 0;
            while got < len {
                match file.read_at(&mut buf[got..], from + got as u64)? {
                    0 => break,
                    n => got += n,
                }
            }
            u.pages.insert(page, buf);
        }
        Ok(())
    }

    fn open_handle(&mut self, ino: u64, file: File, append: bool) -> FileHandle {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, Handle { file, ino, append });
        FileHandle(fh)
    }

    fn truncate(&mut self, ino: u64, file: &File, size: u64) -> io::Result<()> {
        let len = file.metadata()?.len();
        self.save(ino, file, size.min(len), len.max(size))?;
        file.set_len(size)
    }
}

fn open_options(flags: i32) -> OpenOptions {
    // Always readable: saving old bytes before a write reads them, and the
    // kernel reads a page before writing part of it, on write-only handles too.
    let mut o = OpenOptions::new();
    o.read(true);
    if flags & libc::O_ACCMODE != libc::O_RDONLY {
        o.write(true);
    }
    o.custom_flags(flags & libc::O_APPEND);
    o
}

impl FaultFs {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Filesystem for FaultFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut st = self.lock();
        match st.child(parent, name).and_then(|p| st.entry(p)) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let st = self.lock();
        let m = match fh.and_then(|fh| st.handles.get(&fh.0)) {
            Some(h) => h.file.metadata(),
            None => st.metadata(ino),
        };
        match m {
            Ok(m) => reply.attr(&TTL, &attr(ino.0, &m)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut st = self.lock();
        let path = match st.open_path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let result = (|| -> io::Result<Metadata> {
            if let Some(mode) = mode {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::chown(&path, uid, gid)?;
            }
            if let Some(size) = size {
                if let Some(e) = st.write_fault().filter(|_| size > 0) {
                    return Err(io::Error::from_raw_os_error(e.code()));
                }
                let file = match fh.and_then(|fh| st.handles.get(&fh.0)) {
                    Some(h) => h.file.try_clone()?,
                    None => OpenOptions::new().read(true).write(true).open(&path)?,
                };
                st.truncate(ino.0, &file, size)?;
            }
            st.metadata(ino)
        })();
        match result {
            Ok(m) => reply.attr(&TTL, &attr(ino.0, &m)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut st = self.lock();
        if let Some(e) = st.write_fault() {
            return reply.error(e);
        }
        let result = st.child(parent, name).and_then(|p| {
            std::fs::create_dir(&p).map_err(|e| errno(&e))?;
            let _ = std::fs::set_permissions(
                &p,
                std::fs::Permissions::from_mode(mode & !umask & 0o7777),
            );
            st.entry(p)
        });
        match result {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.lock();
        let result = st.child(parent, name).and_then(|p| {
            let m = std::fs::symlink_metadata(&p).map_err(|e| errno(&e))?;
            let ino = st.ino_of(&p, &m);
            std::fs::remove_file(&p).map_err(|e| errno(&e))?;
            if m.nlink() <= 1 {
                st.unsynced.remove(&ino);
            }
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let st = self.lock();
        match st
            .child(parent, name)
            .and_then(|p| std::fs::remove_dir(p).map_err(|e| errno(&e)))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let mut st = self.lock();
        let result = (|| -> Result<(), Errno> {
            let from = st.child(parent, name)?;
            let to = st.child(newparent, newname)?;
            if let Ok(m) = std::fs::symlink_metadata(&to) {
                let replaced = st.ino_of(&to, &m);
                st.unsynced.remove(&replaced);
            }
            std::fs::rename(&from, &to).map_err(|e| errno(&e))?;
            for path in st.paths.values_mut() {
                if let Ok(rest) = path.strip_prefix(&from) {
                    *path = if rest.as_os_str().is_empty() {
                        to.clone()
                    } else {
                        to.join(rest)
                    };
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut st = self.lock();
        let path = match st.open_path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let file = match open_options(flags.0).open(&path) {
            Ok(f) => f,
            Err(e) => return reply.error(errno(&e)),
        };
        if flags.0 & libc::O_TRUNC != 0
            && let Err(e) = st.truncate(ino.0, &file, 0)
        {
            return reply.error(errno(&e));
        }
        let fh = st.open_handle(ino.0, file, flags.0 & libc::O_APPEND != 0);
        reply.opened(fh, FopenFlags::empty());
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let st = self.lock();
        let Some(h) = st.handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let mut buf = vec![0u8; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match h.file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(errno(&e)),
            }
        }
        reply.data(&buf[..got]);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut st = self.lock();
        if let Some(e) = st.write_fault() {
            return reply.error(e);
        }
        let Some(h) = st.handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let (ino, append) = (h.ino, h.append);
        let file = match h.file.try_clone() {
            Ok(f) => f,
            Err(e) => return reply.error(errno(&e)),
        };
        let result = (|| -> io::Result<()> {
            // O_APPEND: the backing pwrite appends wherever `offset` says.
            let at = if append {
                file.metadata()?.len()
            } else {
                offset
            };
            st.save(ino, &file, at, at + data.len() as u64)?;
            file.write_all_at(data, at)
        })();
        match result {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.lock().handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = self.lock();
        if let Some(e) = st.sync_fault() {
            return reply.error(e);
        }
        let Some(h) = st.handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let ino = h.ino;
        let synced = if datasync {
            h.file.sync_data()
        } else {
            h.file.sync_all()
        };
        match synced {
            Ok(()) => {
                st.unsynced.remove(&ino);
                reply.ok();
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.lock().forget(ino.0, nlookup);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let st = self.lock();
        let path = match st.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let read = match std::fs::read_dir(&path) {
            Ok(r) => r,
            Err(e) => return reply.error(errno(&e)),
        };
        let mut entries: Vec<(u64, FileType, std::ffi::OsString)> = vec![
            (ino.0, FileType::Directory, ".".into()),
            (ino.0, FileType::Directory, "..".into()),
        ];
        for e in read.flatten() {
            let Ok(m) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            let kind = FileType::from_std(m.file_type()).unwrap_or(FileType::RegularFile);
            entries.push((st.ino_of(&e.path(), &m), kind, e.file_name()));
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let st = self.lock();
        if let Some(e) = st.sync_fault() {
            return reply.error(e);
        }
        match st.path(ino).and_then(|p| {
            File::open(p)
                .and_then(|d| d.sync_all())
                .map_err(|e| errno(&e))
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let st = self.lock();
        let Ok(path) = std::ffi::CString::new(st.backing.as_os_str().as_encoded_bytes()) else {
            return reply.error(Errno::EIO);
        };
        // SAFETY: `statvfs` is plain old data (all zeros is valid) and the
        // path is a NUL-terminated string that outlives the call.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut s) } != 0 {
            return reply.error(errno(&io::Error::last_os_error()));
        }
        let (bfree, bavail) = if st.fault == DiskFault::NoSpace {
            (0, 0)
        } else {
            (s.f_bfree, s.f_bavail)
        };
        reply.statfs(
            s.f_blocks,
            bfree,
            bavail,
            s.f_files,
            s.f_ffree,
            s.f_bsize as u32,
            s.f_namemax as u32,
            s.f_frsize as u32,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut st = self.lock();
        if let Some(e) = st.write_fault() {
            return reply.error(e);
        }
        let result = (|| -> Result<(FileAttr, FileHandle), Errno> {
            let path = st.child(parent, name)?;
            let mut o = open_options(flags);
            o.write(true)
                .create(true)
                .truncate(flags & libc::O_TRUNC != 0)
                .mode(mode & !umask & 0o7777);
            if flags & libc::O_EXCL != 0 {
                o.create_new(true);
            }
            let file = o.open(&path).map_err(|e| errno(&e))?;
            let a = st.entry(path)?;
            // Created since the last sync: a crash empties it.
            st.unsynced.entry(a.ino.0).or_insert(Unsynced {
                synced_len: 0,
                pages: BTreeMap::new(),
            });
            let fh = st.open_handle(a.ino.0, file, flags & libc::O_APPEND != 0);
            Ok((a, fh))
        })();
        match result {
            Ok((a, fh)) => reply.created(&TTL, &a, Generation(0), fh, FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut st = self.lock();
        if let Some(e) = st.write_fault() {
            return reply.error(e);
        }
        let Some(h) = st.handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let ino = h.ino;
        let file = match h.file.try_clone() {
            Ok(f) => f,
            Err(e) => return reply.error(errno(&e)),
        };
        if let Err(e) = st.save(ino, &file, offset, offset + length) {
            return reply.error(errno(&e));
        }
        // SAFETY: fallocate(2) on an fd we own; no memory is shared.
        let r = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                mode,
                offset as libc::off_t,
                length as libc::off_t,
            )
        };
        if r == 0 {
            reply.ok();
        } else {
            reply.error(errno(&io::Error::last_os_error()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A mount over a fresh backing dir, or `None` (with the reason on
    /// stderr) where FUSE does not work.
    fn mounted() -> Option<(tempfile::TempDir, Mount)> {
        if let Some(why) = unavailable() {
            eprintln!("SKIPPED: FUSE is unavailable here: {why}");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mountpoint");
        let mount = Mount::new(&dir.path().join("backing"), &mnt).expect("mount");
        Some((dir, mount))
    }

    #[test]
    fn crash_drops_unsynced_writes_and_keeps_synced_ones() {
        let Some((_dir, mount)) = mounted() else {
            return;
        };
        let m = mount.mountpoint().to_path_buf();
        let synced: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut f = File::create(m.join("log")).expect("create");
        f.write_all(&synced).expect("write");
        f.sync_data().expect("fdatasync");
        // After the sync: an overwrite inside the synced bytes, an append.
        f.write_all_at(b"OVERWRITTEN", 5000).expect("overwrite");
        f.write_all_at(&[7u8; 3000], 10_000).expect("append");
        drop(f);
        // Never synced at all.
        std::fs::write(m.join("fresh"), b"never synced").expect("fresh");
        // Written and synced: kept whole.
        let mut g = File::create(m.join("kept")).expect("kept");
        g.write_all(b"synced").expect("write");
        g.sync_all().expect("fsync");
        drop(g);
        assert_eq!(std::fs::read(m.join("log")).expect("read").len(), 13_000);

        let report = mount.control().crash().expect("crash");
        assert_eq!(report.files, 2, "log and fresh had unsynced writes");
        assert_eq!(std::fs::read(m.join("log")).expect("read"), synced);
        assert_eq!(std::fs::read(m.join("fresh")).expect("read"), b"");
        assert_eq!(std::fs::read(m.join("kept")).expect("read"), b"synced");
    }

    #[test]
    fn eio_fails_fsync_then_writes() {
        let Some((_dir, mount)) = mounted() else {
            return;
        };
        let m = mount.mountpoint().to_path_buf();
        let mut f = File::create(m.join("seg")).expect("create");
        mount.control().set(DiskFault::FsyncEio);
        f.write_all(b"accepted into the cache")
            .expect("write still works");
        let e = f.sync_data().expect_err("fdatasync must fail");
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
        mount.control().set(DiskFault::WriteEio);
        let e = f.write_all_at(b"x", 0).expect_err("write must fail");
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
        mount.control().set(DiskFault::Healthy);
        f.sync_data().expect("healthy again");
    }

    #[test]
    fn full_disk_answers_enospc_and_shows_no_free_space() {
        let Some((_dir, mount)) = mounted() else {
            return;
        };
        let m = mount.mountpoint().to_path_buf();
        let f = File::create(m.join("seg")).expect("create");
        mount.control().set(DiskFault::NoSpace);
        let e = f.write_all_at(b"x", 0).expect_err("write must fail");
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
        let e = File::create(m.join("other")).expect_err("create must fail");
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
        let path = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: as in `statfs` above.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut s) }, 0);
        assert_eq!(s.f_bavail, 0, "a full disk shows no free block");
        mount.control().set(DiskFault::Healthy);
        f.write_all_at(b"x", 0).expect("room again");
    }

    /// The node writes its snapshot aside, syncs it and renames it over the
    /// old one while another task may be reading the old one. On any POSIX
    /// file system each read sees one whole file, old or new. The chaos
    /// suite once saw a read through this mount come back mixed (a
    /// checksum mismatch that stopped a node) after the backing file
    /// system reused a replaced file's inode number for the next file.
    #[test]
    fn a_file_renamed_over_while_read_is_read_whole() {
        let Some((_dir, mount)) = mounted() else {
            return;
        };
        let m = mount.mountpoint().to_path_buf();
        // A file whose every byte is its generation, its length varying.
        let content = |generation: u32| {
            vec![(generation % 251) as u8; 100_000 + (generation as usize % 7) * 33_333]
        };
        let write = |generation: u32| {
            let tmp = m.join("snapshot.tmp");
            let mut f = File::create(&tmp).expect("create");
            f.write_all(&content(generation)).expect("write");
            f.sync_all().expect("fsync");
            drop(f);
            std::fs::rename(&tmp, m.join("snapshot.bin")).expect("rename");
        };
        write(0);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (m, stop) = (m.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let bytes = std::fs::read(m.join("snapshot.bin")).expect("read");
                    let first = bytes[0];
                    assert!(
                        bytes.iter().all(|&b| b == first),
                        "read {reads}: a mixed file of {} bytes",
                        bytes.len()
                    );
                    reads += 1;
                }
                reads
            })
        };
        for generation in 1..300 {
            write(generation);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let reads = reader.join().expect("the reader saw whole files only");
        assert!(reads > 0);
        // The kernel forgets replaced files, and their pins go with them:
        // 300 files renamed over leave a handful of descriptors, not 300.
        let pinned = mount.control().pinned_inodes();
        assert!(pinned < 50, "{pinned} inodes still pinned");
    }
}
