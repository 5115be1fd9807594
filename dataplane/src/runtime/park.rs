//! Idle keep-alive connections, parked (issue #17: many idle connections stay cheap).
//!
//! A plain-HTTP connection that has waited `io.park_idle_after_ms` for its next request with
//! nothing buffered is handed here by its task, which then ends: the task, its future, the
//! connection's read buffer, its glommio stream and io_uring poll are all freed. What stays is
//! the socket, registered in this core's epoll set, and one small [`Parked`] entry (the client's
//! address, its place under the connection caps, the requests it was served). One task per core
//! waits on the epoll set's descriptor through glommio ([`glommio::net::readable`]); when a
//! parked socket turns readable (a request, or the client's FIN) it is taken out of the set and
//! served by a new connection task, as if just accepted. The core's sweeper closes parked
//! connections whose idle timeout passed ([`Parker::expire`]), as it ends idle reads.
//!
//! One parker per executor thread (a thread-local, like the head-buffer pool), started by the
//! executor ([`start`]), which also names how a woken connection is served: this file sits
//! below `conn` and above `core`.
//!
//! Only plain HTTP parks: a TLS connection's state lives in user space (rustls) or in the
//! kernel's TLS socket with records the transport tracks, and stays with its task.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;

use glommio::net::TcpStream;

use super::core::Core;
use super::shared::Admitted;
use crate::metrics::Timeout;

/// One parked connection.
struct Parked {
    /// The socket (a duplicate of the descriptor the connection's stream had).
    fd: OwnedFd,
    peer: IpAddr,
    /// Its place under the connection caps and in the open-connections gauge.
    admitted: Admitted,
    /// Requests served on it so far (`limits.max_requests_per_connection` still counts them).
    served: u64,
    /// When its idle timeout ends, in core-local milliseconds (`Core::deadline_ms`).
    idle_until_ms: u64,
    /// Distinguishes this entry from a later one in the same slot (epoll events name both).
    tag: u32,
}

/// Serves a woken connection: spawns its new connection task (`served`: requests so far).
pub(crate) type Resume = fn(Rc<Core>, TcpStream, IpAddr, Admitted, u64);

thread_local! {
    /// This executor's parker, once [`start`]ed.
    static PARKER: RefCell<Option<Rc<Parker>>> = const { RefCell::new(None) };
}

/// Starts parking on this executor's thread: the epoll set and the task that waits on it.
/// Without it (or when the set cannot be created) [`available`] is false.
pub(crate) fn start(core: &Rc<Core>, resume: Resume) {
    let Some(parker) = Parker::new(core.index, resume).map(Rc::new) else {
        return;
    };
    PARKER.with(|p| *p.borrow_mut() = Some(parker.clone()));
    glommio::spawn_local(wake_loop(Rc::downgrade(core), parker)).detach();
}

/// This thread's parker, if parking is on.
fn parker() -> Option<Rc<Parker>> {
    PARKER.with(|p| p.borrow().clone())
}

/// Whether connections can be parked on this executor.
pub(crate) fn available() -> bool {
    PARKER.with(|p| p.borrow().is_some())
}

/// Parks the idle connection `stream` (see [`Parker::park`]).
pub(crate) fn park(
    core: &Core,
    stream: TcpStream,
    peer: IpAddr,
    admitted: Admitted,
    served: u64,
    idle_until_ms: u64,
) {
    match parker() {
        Some(p) => p.park(core, stream, peer, admitted, served, idle_until_ms),
        None => close_idle(stream.as_raw_fd(), admitted),
    }
}

/// Closes the parked connections whose idle timeout passed (see [`Parker::expire`]).
pub(crate) fn expire(core: &Core, now_ms: u64) {
    if let Some(p) = parker() {
        p.expire(core, now_ms);
    }
}

/// Parkings after which [`release_memory`] asks the allocator to give free memory back.
const TRIM_AFTER: usize = 256;

/// Gives the memory freed by parking back to the kernel, once at least [`TRIM_AFTER`]
/// connections were parked since the last time. Called by the sweeper after it asked idle
/// reads to park. Why: glibc returns freed memory only from the top of a heap, and the freed
/// tasks and buffers of a crowd of idle connections sit below memory still in use (the parked
/// set itself), so without `malloc_trim` the process's RSS would not shrink when they park.
pub(crate) fn release_memory() {
    let Some(p) = parker() else { return };
    if p.parked_since_trim.get() < TRIM_AFTER {
        return;
    }
    p.parked_since_trim.set(0);
    let started = std::time::Instant::now();
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes an integer (bytes to leave at the top) and only releases free
    // pages of glibc's heaps.
    unsafe {
        libc::malloc_trim(0);
    }
    tracing::debug!(
        parked = p.slots.borrow().len(),
        micros = started.elapsed().as_micros() as u64,
        "parked connections: memory given back"
    );
}

/// This core's parked connections.
struct Parker {
    /// The epoll set the parked sockets wait in.
    epoll: OwnedFd,
    slots: RefCell<slab::Slab<Parked>>,
    next_tag: Cell<u32>,
    resume: Resume,
    /// Connections parked since the allocator last gave free memory back ([`release_memory`]).
    parked_since_trim: Cell<usize>,
}

/// Events taken from the epoll set per `epoll_wait`.
const EVENTS: usize = 64;

impl Parker {
    /// `None` (logged) when the epoll set cannot be created: the core does not park.
    fn new(core: usize, resume: Resume) -> Option<Parker> {
        // SAFETY: epoll_create1 takes an integer flag and returns a new descriptor or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            tracing::warn!(
                core,
                "idle connections will not be parked: epoll_create1: {}",
                io::Error::last_os_error()
            );
            return None;
        }
        Some(Parker {
            // SAFETY: a descriptor just returned to us, owned by nothing else.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            slots: RefCell::new(slab::Slab::new()),
            next_tag: Cell::new(0),
            resume,
            parked_since_trim: Cell::new(0),
        })
    }

    /// Parks the idle connection `stream` (nothing buffered, no response in flight). On
    /// failure the connection is closed as if its idle timeout had passed: the caller's stream
    /// is dropped either way.
    fn park(
        &self,
        core: &Core,
        stream: TcpStream,
        peer: IpAddr,
        admitted: Admitted,
        served: u64,
        idle_until_ms: u64,
    ) {
        // A duplicate outlives the stream, whose drop cancels its io_uring poll and closes the
        // descriptor it was accepted with.
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) on the live stream's descriptor; integer arguments.
        let dup = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return close_idle(stream.as_raw_fd(), admitted);
        }
        drop(stream);
        // SAFETY: `dup` is a new descriptor owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(dup) };
        let tag = self.next_tag.get().wrapping_add(1);
        self.next_tag.set(tag);
        let mut slots = self.slots.borrow_mut();
        let entry = slots.vacant_entry();
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: (entry.key() as u64) | (u64::from(tag) << 32),
        };
        // SAFETY: both descriptors are live; `event` is a valid epoll_event.
        let added = unsafe {
            libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, dup, &mut event)
        };
        if added != 0 {
            return close_idle(fd.as_raw_fd(), admitted);
        }
        entry.insert(Parked {
            fd,
            peer,
            admitted,
            served,
            idle_until_ms,
            tag,
        });
        drop(slots);
        self.parked_since_trim.set(self.parked_since_trim.get() + 1);
        core.metrics().parked(1);
    }

    /// Closes every parked connection whose idle timeout has passed (`now_ms`: core-local
    /// milliseconds). Called by the core's deadline sweeper.
    fn expire(&self, core: &Core, now_ms: u64) {
        let expired: Vec<usize> = self
            .slots
            .borrow()
            .iter()
            .filter(|(_, p)| p.idle_until_ms <= now_ms)
            .map(|(k, _)| k)
            .collect();
        for key in expired {
            let p = self.unregister(key);
            core.metrics().parked(-1);
            core.metrics().timeout(Timeout::Idle);
            close_idle(p.fd.as_raw_fd(), p.admitted);
        }
    }

    /// Takes slot `key` out of the set and the slab.
    fn unregister(&self, key: usize) -> Parked {
        let p = self.slots.borrow_mut().remove(key);
        // SAFETY: live descriptors; EPOLL_CTL_DEL ignores the event argument.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                p.fd.as_raw_fd(),
                std::ptr::null_mut(),
            )
        };
        p
    }

    /// Hands every parked connection that turned readable to a new connection task. Returns
    /// how many events were taken.
    fn wake_ready(&self, core: &Rc<Core>) -> usize {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        // SAFETY: `events` has room for EVENTS entries; timeout 0 never blocks.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                EVENTS as i32,
                0,
            )
        };
        if n <= 0 {
            return 0;
        }
        for ev in &events[..n as usize] {
            let key = (ev.u64 & 0xffff_ffff) as usize;
            let tag = (ev.u64 >> 32) as u32;
            let current = self.slots.borrow().get(key).is_some_and(|p| p.tag == tag);
            if !current {
                continue;
            }
            let p = self.unregister(key);
            core.metrics().parked(-1);
            // SAFETY: the descriptor is ours (taken out of the entry), a connected TCP socket.
            let stream = unsafe { TcpStream::from_raw_fd(p.fd.into_raw_fd()) };
            (self.resume)(core.clone(), stream, p.peer, p.admitted, p.served);
        }
        n as usize
    }
}

/// Ends a parked (or about-to-be-parked) connection whose idle time ran out, as an idle read's
/// timeout does: our FIN, then (when the caller drops the descriptor) the close; dropping
/// `admitted` gives back its place under the caps and in the gauge.
fn close_idle(fd: RawFd, admitted: Admitted) {
    // SAFETY: shutdown(2) on a live descriptor the caller still owns; integer arguments.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
    drop(admitted);
}

/// The core's waiting task: sleeps on the epoll set's readability, hands the ready sockets to
/// new connection tasks, and ends with the core.
async fn wake_loop(core: std::rc::Weak<Core>, parker: Rc<Parker>) {
    loop {
        if let Err(e) = glommio::net::readable(parker.epoll.as_raw_fd()).await {
            tracing::warn!("parked connections: waiting on the epoll set: {e}");
            glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        }
        let Some(core) = core.upgrade() else { return };
        while parker.wake_ready(&core) == EVENTS {}
    }
}
