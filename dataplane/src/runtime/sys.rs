//! The syscalls the runtime makes directly: `sendfile`, `send`/`sendmsg` with flags, `mincore`,
//! `pread`. (Kernel TLS `setsockopt`s live in `runtime::ktls`.)
//!
//! Thin wrappers that turn return codes into `io::Result`; every `unsafe` block of the data
//! plane's serving path lives here, each with its reason.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// Makes `fd` non-blocking, so `sendfile` returns `EAGAIN` instead of parking the executor.
pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `sendfile(sock, file, &offset, len)`; advances `offset` by what was sent.
pub(crate) fn sendfile(
    sock: RawFd,
    file: &impl AsRawFd,
    offset: &mut u64,
    len: usize,
) -> io::Result<usize> {
    let mut off =
        i64::try_from(*offset).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    // SAFETY: both descriptors are open for the duration of the call; `off` is a valid local.
    let n = unsafe { libc::sendfile(sock, file.as_raw_fd(), &mut off, len) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    *offset = off as u64;
    Ok(n as usize)
}

/// `send(sock, buf, MSG_DONTWAIT | MSG_NOSIGNAL | (MSG_MORE if more))`.
pub(crate) fn send(sock: RawFd, buf: &[u8], more: bool) -> io::Result<usize> {
    let mut flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    if more {
        flags |= libc::MSG_MORE;
    }
    // SAFETY: `buf` is a valid slice for its length.
    let n = unsafe { libc::send(sock, buf.as_ptr().cast(), buf.len(), flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// `sendmsg(sock, bufs, MSG_DONTWAIT | MSG_NOSIGNAL | (MSG_MORE if more))`: one syscall for
/// several queued TLS records.
pub(crate) fn send_vectored(
    sock: RawFd,
    bufs: &[io::IoSlice<'_>],
    more: bool,
) -> io::Result<usize> {
    let mut flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    if more {
        flags |= libc::MSG_MORE;
    }
    // SAFETY: an all-zero msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is ABI-compatible with iovec on Unix (documented by std); sendmsg only reads them.
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len().min(libc::UIO_MAXIOV as usize) as _;
    // SAFETY: `msg` points at `bufs`, valid slices for the duration of the call.
    let n = unsafe { libc::sendmsg(sock, &msg, flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Whether every page of `file[start..start+len]` is in the page cache.
///
/// Uses `cachestat(2)` (Linux 6.5+), which walks the range once by folio; falls back to
/// `mincore(2)` over `map` on older kernels, which looks every page up separately and costs
/// several times more per request (measured in `docs/benchmarks.md`).
pub(crate) fn resident(file: &impl AsRawFd, map: &[u8], start: u64, len: u64) -> io::Result<bool> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static NO_CACHESTAT: AtomicBool = AtomicBool::new(false);
    if len == 0 {
        return Ok(true);
    }
    if !NO_CACHESTAT.load(Ordering::Relaxed) {
        match cachestat(file.as_raw_fd(), start, len) {
            Ok(cached) => {
                let pages = (start + len).div_ceil(PAGE) - start / PAGE;
                return Ok(cached >= pages);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                NO_CACHESTAT.store(true, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
    resident_mincore(map, start, len)
}

const PAGE: u64 = 4096;

/// Pages of `fd[start..start+len]` in the page cache, by `cachestat(2)`.
fn cachestat(fd: RawFd, start: u64, len: u64) -> io::Result<u64> {
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    const SYS_CACHESTAT: libc::c_long = 451;
    let range = Range { off: start, len };
    let mut stat = Stat::default();
    // SAFETY: cachestat reads `range` and writes `stat`, both valid locals of the layout the
    // kernel expects (struct cachestat_range / struct cachestat); flags must be 0.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            fd,
            &range as *const Range,
            &mut stat as *mut Stat,
            0u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.nr_cache)
}

/// `mincore(2)` over the file's mapping, 256 pages at a time.
fn resident_mincore(map: &[u8], start: u64, len: u64) -> io::Result<bool> {
    const WINDOW_PAGES: usize = 256;
    let end = start.saturating_add(len).min(map.len() as u64);
    if start >= end {
        return Ok(true);
    }
    let mut page = start / PAGE * PAGE;
    let mut vec = [0u8; WINDOW_PAGES];
    while page < end {
        let pages = (end - page).div_ceil(PAGE).min(WINDOW_PAGES as u64) as usize;
        let span = (pages as u64 * PAGE).min(map.len() as u64 - page) as usize;
        // SAFETY: `page` is page-aligned (mappings start page-aligned) and `span` stays inside
        // the mapping; `vec` has room for `pages` entries, one per page of `span`.
        let rc = unsafe {
            libc::mincore(
                map.as_ptr().add(page as usize) as *mut libc::c_void,
                span,
                vec.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        if vec[..pages].iter().any(|b| b & 1 == 0) {
            return Ok(false);
        }
        page += pages as u64 * PAGE;
    }
    Ok(true)
}

/// Reads `file[start..start+len]` through the page cache, discarding the bytes: after it
/// returns, the range is resident (until memory pressure evicts it). Blocks on the disk, so it
/// runs on the blocking pool, never on an executor.
pub(crate) fn read_into_cache(file: &std::fs::File, start: u64, len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 256 * 1024]);
    }
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        let mut off = start;
        let end = start + len;
        while off < end {
            let want = ((end - off) as usize).min(buf.len());
            let n = file.read_at(&mut buf[..want], off)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "object shrank while serving",
                ));
            }
            off += n as u64;
        }
        Ok(())
    })
}

/// Binds the calling thread to `cpus` (empty: leave it as it is). Remembers the last set per
/// thread, so a blocking-pool thread that keeps reading the same tier pays one
/// `sched_setaffinity` in all. A failure (CPUs gone offline) leaves the thread where it was:
/// placement is an optimization, never a reason to fail a read.
pub(crate) fn bind_thread_to(cpus: &[usize]) {
    thread_local! {
        static BOUND: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    if cpus.is_empty() {
        return;
    }
    BOUND.with(|bound| {
        let mut bound = bound.borrow_mut();
        if bound.as_slice() == cpus {
            return;
        }
        // SAFETY: cpu_set_t is plain data; all-zero is the empty set CPU_ZERO would make.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &cpu in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
            // SAFETY: `cpu` is below CPU_SETSIZE (filtered above), so the bit is inside `set`.
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
        // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size passed.
        let rc =
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
        if rc == 0 {
            *bound = cpus.to_vec();
        } else {
            tracing::debug!(
                "cold read: cannot bind to CPUs {cpus:?}: {}",
                io::Error::last_os_error()
            );
        }
    });
}

/// Free bytes (for an unprivileged user) and total bytes of the filesystem holding `path`.
pub(crate) fn fs_space(path: &std::path::Path) -> io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))?;
    // SAFETY: statvfs is plain old data; zeroed is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a pointer to the local struct.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let unit = st.f_frsize as u64;
    Ok((st.f_bavail as u64 * unit, st.f_blocks as u64 * unit))
}

/// Nice value of the threads that read cold ranges: the lowest, so a cold-read thread that
/// shares a CPU with an executor never preempts it when its read completes (the executor's hot
/// requests would wait behind it), yet still gets a share of an executor that never idles
/// (unlike `SCHED_IDLE`, which could starve cold reads on a saturated core).
pub(crate) const COLD_READ_NICE: libc::c_int = 19;

/// Lowers the calling thread to [`COLD_READ_NICE`], once per thread. A failure (a seccomp
/// filter, say) leaves it as it was: the priority is an optimization, never a reason to fail a
/// read.
pub(crate) fn lower_thread_priority() {
    thread_local! {
        static DONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    DONE.with(|done| {
        if done.replace(true) {
            return;
        }
        // SAFETY: gettid has no arguments; setpriority with PRIO_PROCESS and a thread id
        // changes that one thread's nice value (Linux), integer arguments only.
        let rc = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, COLD_READ_NICE)
        };
        if rc != 0 {
            tracing::debug!(
                "cannot lower this thread's priority: {}",
                io::Error::last_os_error()
            );
        }
    });
}

/// Puts the calling thread under `SCHED_BATCH` (at its nice value): it never preempts a running
/// thread when it wakes up (so an executor sharing its CPU is not interrupted each time the
/// thread's socket has bytes), yet competes at full weight once runnable. For threads that share
/// locks with the executors (pull-through's fetch threads): at nice 19 such a thread, holding a
/// lock an executor waits for, would queue behind every other low-priority thread. A failure
/// leaves the thread as it was (an optimization, never a reason to fail).
pub(crate) fn batch_thread_policy() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid local (priority 0, as
    // SCHED_BATCH requires).
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if rc != 0 {
        tracing::debug!(
            "cannot set SCHED_BATCH on this thread: {}",
            io::Error::last_os_error()
        );
    }
}

/// The soft `RLIMIT_MEMLOCK` in bytes (`u64::MAX` when unlimited).
pub(crate) fn memlock_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return 0;
    }
    if lim.rlim_cur == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        lim.rlim_cur
    }
}

/// A listening `SO_REUSEPORT` socket on `addr`, as glommio's `TcpListener::bind` makes it, but
/// built here so its descriptor can be handed to XDP steering (glommio's listener does not
/// expose it) before it becomes the executor's listener with [`into_listener`].
pub(crate) fn reuseport_listener(addr: std::net::SocketAddr) -> io::Result<socket2::Socket> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_reuse_port(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    Ok(sock)
}

/// Hands a listening socket to the current glommio executor.
pub(crate) fn into_listener(sock: socket2::Socket) -> glommio::net::TcpListener {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: `into_raw_fd` gives up ownership of a bound, listening TCP socket, which is what
    // `from_raw_fd` requires; we are on a glommio executor thread (the caller is `core::run`).
    unsafe { glommio::net::TcpListener::from_raw_fd(sock.into_raw_fd()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn residency_follows_the_page_cache() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&vec![7u8; 3 * 4096 + 10]).unwrap();
        f.flush().unwrap();
        let file = f.as_file();
        read_into_cache(file, 0, 3 * 4096 + 10).unwrap();
        // SAFETY: test-only read-only mapping of a file nobody truncates.
        let map = unsafe { memmap2::Mmap::map(file).unwrap() };
        for (start, len) in [(0, map.len() as u64), (4097, 5), (10, 0)] {
            assert!(resident(file, &map, start, len).unwrap());
            assert!(resident_mincore(&map, start, len).unwrap());
        }
        // A sparse hole that was never read is not resident.
        let g = tempfile::NamedTempFile::new().unwrap();
        g.as_file().set_len(64 << 20).unwrap();
        // SAFETY: as above.
        let hole = unsafe { memmap2::Mmap::map(g.as_file()).unwrap() };
        assert!(!resident(g.as_file(), &hole, 32 << 20, 65536).unwrap());
        assert!(!resident_mincore(&hole, 32 << 20, 65536).unwrap());
        read_into_cache(g.as_file(), 32 << 20, 65536).unwrap();
        assert!(resident(g.as_file(), &hole, 32 << 20, 65536).unwrap());
        assert!(resident_mincore(&hole, 32 << 20, 65536).unwrap());
    }

    /// The CPUs the calling thread may run on.
    fn affinity() -> Vec<usize> {
        // SAFETY: cpu_set_t is plain data; all-zero is a valid (empty) set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: pid 0 is the calling thread; `set` is a writable cpu_set_t of the size passed.
        let rc =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        (0..libc::CPU_SETSIZE as usize)
            // SAFETY: every index is below CPU_SETSIZE, inside `set`.
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .collect()
    }

    #[test]
    fn cold_read_threads_bind_to_their_tier_cpus() {
        std::thread::spawn(|| {
            let all = affinity();
            bind_thread_to(&[]);
            assert_eq!(
                affinity(),
                all,
                "an unbound tier leaves the thread as it is"
            );
            bind_thread_to(&all[..1]);
            assert_eq!(affinity(), all[..1]);
            bind_thread_to(&all);
            assert_eq!(affinity(), all);
        })
        .join()
        .unwrap();
    }

    fn nice_of_this_thread() -> libc::c_int {
        // SAFETY: integer arguments only; errno is cleared first, as getpriority's -1 is valid.
        unsafe {
            *libc::__errno_location() = 0;
            libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t)
        }
    }

    #[test]
    fn cold_read_threads_run_at_the_lowest_priority_and_only_they_do() {
        let before = nice_of_this_thread();
        let (first, again) = std::thread::spawn(|| {
            lower_thread_priority();
            let first = nice_of_this_thread();
            lower_thread_priority();
            (first, nice_of_this_thread())
        })
        .join()
        .unwrap();
        assert_eq!(first, COLD_READ_NICE);
        assert_eq!(again, COLD_READ_NICE);
        assert_eq!(
            nice_of_this_thread(),
            before,
            "other threads keep their priority"
        );
    }
}
