//! Page-cache controls for tests: make a file cold again and ask how much of it is cached.
//!
//! Point these at the *mounted* path: the pages that matter are the FUSE inode's, not the
//! source file's (the delay applies whenever a read reaches slowfs, however warm the source is).
//! This is the syscall layer of the crate; each `unsafe` block says why it is sound.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::ptr;

/// Drops the cached pages of `path` (`posix_fadvise(POSIX_FADV_DONTNEED)` over the whole file),
/// so the next read of it reaches the filesystem again. Dirty pages are not dropped; slowfs is
/// read-only, so its files have none.
pub fn evict(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    // SAFETY: plain syscall on an fd we own for the duration of the call; no memory is passed.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    // posix_fadvise returns the error number instead of setting errno.
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Drops the whole page cache of the machine (`sync`, then `1` into `/proc/sys/vm/drop_caches`).
/// Needs root. Heavy-handed: prefer [`evict`] on the files a test uses.
pub fn drop_all_caches() -> io::Result<()> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let mut knob = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/sys/vm/drop_caches")?;
    knob.write_all(b"1\n")
}

/// How much of a file is in the page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Residency {
    /// Pages of the file that are cached.
    pub resident_pages: usize,
    /// Pages the file spans.
    pub total_pages: usize,
}

impl Residency {
    /// True when every page of the file is cached (also for an empty file).
    pub fn is_fully_resident(&self) -> bool {
        self.resident_pages == self.total_pages
    }
}

/// Reports which part of `path` is in the page cache (`mincore` over a read-only shared mapping).
/// Mapping the file does not read it, so asking does not warm it.
pub fn residency(path: &Path) -> io::Result<Residency> {
    let file = File::open(path)?;
    let len = usize::try_from(file.metadata()?.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large to map"))?;
    if len == 0 {
        return Ok(Residency {
            resident_pages: 0,
            total_pages: 0,
        });
    }
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = usize::try_from(page).unwrap_or(4096);
    let total_pages = len.div_ceil(page);
    // SAFETY: a fresh PROT_READ, MAP_SHARED mapping of `len` bytes of a file we hold open; the
    // kernel picks the address, so nothing existing is replaced. We never dereference it.
    let addr = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let mut vec = vec![0u8; total_pages];
    // SAFETY: `addr` is page-aligned (returned by mmap) and maps `len` bytes; `vec` has one byte
    // per page of that range, as mincore requires.
    let rc = unsafe { libc::mincore(addr, len, vec.as_mut_ptr()) };
    let mincore_err = (rc != 0).then(io::Error::last_os_error);
    // SAFETY: unmapping exactly the mapping created above, which nothing else refers to.
    unsafe { libc::munmap(addr, len) };
    if let Some(e) = mincore_err {
        return Err(e);
    }
    Ok(Residency {
        resident_pages: vec.iter().filter(|&&b| b & 1 == 1).count(),
        total_pages,
    })
}
