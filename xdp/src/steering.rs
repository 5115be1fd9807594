//! Flow steering: the `SK_REUSEPORT` program picks the listener of the executor that the flow
//! hash names; with CPUMAP steering the XDP program sends the flow's packets to that executor's
//! CPU by the same hash (docs/xdp.md, "Steering").
//!
//! Each executor registers its listening socket as it binds ([`Steering::register`]); the first
//! registration attaches the program to the reuseport group. A failure here is never fatal: the
//! kernel's own reuseport hash still spreads connections, only not onto the flow's core.
//!
//! Syscall layer: `setsockopt(SO_ATTACH_REUSEPORT_EBPF)`, with its reason.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use aya::maps::{MapData, ReusePortSockArray};
use aya::programs::ProgramFd;

use super::{describe, XdpError};

/// The executors' listeners and the program that chooses among them.
pub struct Steering {
    listeners: Mutex<ReusePortSockArray<MapData>>,
    program: ProgramFd,
    attached: AtomicBool,
}

impl Steering {
    pub(crate) fn new(listeners: ReusePortSockArray<MapData>, program: ProgramFd) -> Steering {
        Steering {
            listeners: Mutex::new(listeners),
            program,
            attached: AtomicBool::new(false),
        }
    }

    /// Puts executor `index`'s listening socket in the map and, the first time, attaches the
    /// program to the socket's reuseport group (which every executor's listener joins).
    pub fn register(&self, index: usize, listener: BorrowedFd<'_>) -> Result<(), XdpError> {
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set(index, &listener.as_raw_fd(), 0)
            .map_err(|e| XdpError::Map {
                what: format!("putting executor {index}'s listener in LISTENERS"),
                detail: describe(&e),
            })?;
        if !self.attached.swap(true, Ordering::AcqRel) {
            let prog = self.program.as_fd().as_raw_fd();
            // SAFETY: setsockopt on a socket the caller keeps open for the call, with a pointer
            // to a c_int that lives on this stack frame and its exact size.
            let rc = unsafe {
                libc::setsockopt(
                    listener.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_ATTACH_REUSEPORT_EBPF,
                    std::ptr::from_ref(&prog).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                self.attached.store(false, Ordering::Release);
                let e = std::io::Error::last_os_error();
                return Err(super::kernel_error(
                    "attaching the SK_REUSEPORT program to the listeners",
                    &e,
                ));
            }
        }
        Ok(())
    }

    /// Whether the program is attached to the listeners' group.
    pub fn attached(&self) -> bool {
        self.attached.load(Ordering::Acquire)
    }
}

impl std::fmt::Debug for Steering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steering")
            .field("attached", &self.attached())
            .finish_non_exhaustive()
    }
}
