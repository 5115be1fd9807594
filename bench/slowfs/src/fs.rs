//! The FUSE filesystem: a read-only mirror of a source directory whose reads sleep first.
//!
//! Metadata (lookup, getattr, readdir) is answered at once on fuser's session thread. Every read
//! is handed to a thread of its own that sleeps for the delay, then `pread`s the source file and
//! replies, so concurrent cold reads overlap instead of queueing behind one another — the way a
//! disk with a deep queue behaves, not a single spindle. This module must never sleep on the
//! session thread.
//!
//! Attributes and entries are cached by the kernel for a long time and files are opened with
//! `FOPEN_KEEP_CACHE`, so pages read once stay in the page cache across opens: a second read
//! of the same pages never reaches this filesystem. The source is assumed not to change while it
//! is mounted.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, Request,
};

/// How long the kernel may cache entries and attributes. The mirror is read-only and the source
/// is assumed static, so "for the life of the mount" is right; an hour is plenty for a test.
const TTL: Duration = Duration::from_secs(3600);

/// Upper bound on FUSE requests the kernel keeps in flight in the background (readahead is
/// background work). The kernel's default of 12 would serialize a burst of concurrent cold reads.
const MAX_BACKGROUND: u16 = 256;

/// Counters shared between the filesystem, its read threads and the [`crate::MountGuard`].
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Read requests that reached the filesystem (each one slept once).
    pub(crate) reads: AtomicU64,
    /// Bytes returned by those reads.
    pub(crate) bytes: AtomicU64,
    /// Reads sleeping or reading right now.
    in_flight: AtomicU64,
    /// Most reads ever in flight at once.
    pub(crate) peak_in_flight: AtomicU64,
}

/// Inode numbers handed to the kernel, mapped to paths under the source directory.
#[derive(Debug)]
struct Inodes {
    paths: HashMap<u64, PathBuf>,
    /// (st_dev, st_ino) of the source → our inode number, so a file keeps its number.
    by_source: HashMap<(u64, u64), u64>,
    next: u64,
}

impl Inodes {
    fn new(root: PathBuf, root_meta: &Metadata) -> Self {
        let mut paths = HashMap::new();
        paths.insert(INodeNo::ROOT.0, root);
        let mut by_source = HashMap::new();
        by_source.insert((root_meta.dev(), root_meta.ino()), INodeNo::ROOT.0);
        Self {
            paths,
            by_source,
            next: INodeNo::ROOT.0 + 1,
        }
    }

    fn intern(&mut self, path: PathBuf, meta: &Metadata) -> u64 {
        let key = (meta.dev(), meta.ino());
        if let Some(&ino) = self.by_source.get(&key) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_source.insert(key, ino);
        self.paths.insert(ino, path);
        ino
    }
}

/// The mirror of one source directory.
#[derive(Debug)]
pub(crate) struct SlowFs {
    delay: Duration,
    inodes: RwLock<Inodes>,
    open_files: Mutex<HashMap<u64, Arc<File>>>,
    next_fh: AtomicU64,
    stats: Arc<Stats>,
}

impl SlowFs {
    pub(crate) fn new(
        source: PathBuf,
        source_meta: &Metadata,
        delay: Duration,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            delay,
            inodes: RwLock::new(Inodes::new(source, source_meta)),
            open_files: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            stats,
        }
    }

    fn path_of(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        let inodes = self.inodes.read().unwrap_or_else(PoisonError::into_inner);
        inodes.paths.get(&ino.0).cloned().ok_or(Errno::ENOENT)
    }

    /// Stats `path` (without following a final symlink) and gives it an inode number.
    fn stat_interned(&self, path: PathBuf) -> Result<FileAttr, Errno> {
        let meta = std::fs::symlink_metadata(&path).map_err(Errno::from)?;
        let mut inodes = self.inodes.write().unwrap_or_else(PoisonError::into_inner);
        let ino = inodes.intern(path, &meta);
        drop(inodes);
        attr_of(INodeNo(ino), &meta).ok_or(Errno::EIO)
    }

    fn open_file(&self, fh: FileHandle) -> Option<Arc<File>> {
        let files = self
            .open_files
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        files.get(&fh.0).cloned()
    }
}

fn system_time(secs: i64, nanos: i64) -> SystemTime {
    let nanos = u32::try_from(nanos).unwrap_or(0);
    match u64::try_from(secs) {
        Ok(secs) => UNIX_EPOCH + Duration::new(secs, nanos),
        Err(_) => UNIX_EPOCH - Duration::new(secs.unsigned_abs(), 0),
    }
}

fn attr_of(ino: INodeNo, meta: &Metadata) -> Option<FileAttr> {
    let kind = FileType::from_std(meta.file_type())?;
    let mtime = system_time(meta.mtime(), meta.mtime_nsec());
    Some(FileAttr {
        ino,
        size: meta.size(),
        blocks: meta.blocks(),
        atime: system_time(meta.atime(), meta.atime_nsec()),
        mtime,
        ctime: system_time(meta.ctime(), meta.ctime_nsec()),
        crtime: mtime,
        kind,
        // The mirror is read-only: report no write bits so tools do not try.
        perm: (meta.mode() & 0o7555) as u16,
        nlink: u32::try_from(meta.nlink()).unwrap_or(u32::MAX),
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: u32::try_from(meta.rdev()).unwrap_or(0),
        blksize: u32::try_from(meta.blksize()).unwrap_or(4096),
        flags: 0,
    })
}

/// `pread` until `size` bytes or end of file.
fn read_at_most(file: &File, offset: u64, size: u32) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; size as usize];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

impl Filesystem for SlowFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Both only fail for 0; ignore the previous values they return.
        let _ = config.set_max_background(MAX_BACKGROUND);
        let _ = config.set_congestion_threshold(MAX_BACKGROUND / 4 * 3);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let result = self
            .path_of(parent)
            .and_then(|dir| self.stat_interned(dir.join(name)));
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let result = self.path_of(ino).and_then(|path| {
            let meta = std::fs::symlink_metadata(path).map_err(Errno::from)?;
            attr_of(ino, &meta).ok_or(Errno::EIO)
        });
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self
            .path_of(ino)
            .and_then(|path| std::fs::read_link(path).map_err(Errno::from))
        {
            Ok(target) => reply.data(target.as_os_str().as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            reply.error(Errno::EROFS);
            return;
        }
        let file = match self
            .path_of(ino)
            .and_then(|path| File::open(path).map_err(Errno::from))
        {
            Ok(file) => file,
            Err(e) => {
                reply.error(e);
                return;
            }
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let mut files = self
            .open_files
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        files.insert(fh, Arc::new(file));
        drop(files);
        // KEEP_CACHE: do not drop the inode's cached pages on open, so warm stays warm.
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
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
        let Some(file) = self.open_file(fh) else {
            reply.error(Errno::EBADF);
            return;
        };
        let delay = self.delay;
        let stats = Arc::clone(&self.stats);
        let in_flight = stats.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        stats.peak_in_flight.fetch_max(in_flight, Ordering::Relaxed);
        // One thread per read: the sleeps overlap. If the spawn fails, the closure (and with it
        // the reply) is dropped, and fuser answers EIO for an unanswered reply.
        let spawned = thread::Builder::new()
            .name("slowfs-read".into())
            .spawn(move || {
                thread::sleep(delay);
                let result = read_at_most(&file, offset, size);
                stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                match result {
                    Ok(data) => {
                        stats.reads.fetch_add(1, Ordering::Relaxed);
                        stats.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                        reply.data(&data);
                    }
                    Err(e) => reply.error(Errno::from(e)),
                }
            });
        if spawned.is_err() {
            self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
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
        let mut files = self
            .open_files
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        files.remove(&fh.0);
        drop(files);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let dir = match self.path_of(ino) {
            Ok(dir) => dir,
            Err(e) => {
                reply.error(e);
                return;
            }
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                reply.error(Errno::from(e));
                return;
            }
        };
        // "." and ".." first; the offset of an entry is its index + 1 (where the next call resumes).
        // ".." may point at the root itself; the kernel only uses these numbers for d_ino.
        let dots = [(ino, FileType::Directory, OsStr::new(".").to_owned())];
        let dotdot = [(
            INodeNo::ROOT,
            FileType::Directory,
            OsStr::new("..").to_owned(),
        )];
        let listed = entries.filter_map(Result::ok).filter_map(|entry| {
            let attr = self.stat_interned(entry.path()).ok()?;
            Some((attr.ino, attr.kind, entry.file_name()))
        });
        let all = dots.into_iter().chain(dotdot).chain(listed);
        for (index, (entry_ino, kind, name)) in all.enumerate().skip(offset as usize) {
            if reply.add(entry_ino, index as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }
}
