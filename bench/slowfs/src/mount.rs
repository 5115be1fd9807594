//! Mounting: start the FUSE session in the background and unmount when the guard drops.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fuser::{BackgroundSession, Config, MountOption, SessionACL};

use crate::fs::{SlowFs, Stats};

/// Why a mount could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MountError {
    /// The source directory could not be read.
    #[error("source {path}: {source}")]
    Source {
        /// The source directory given.
        path: PathBuf,
        /// What stat/canonicalize said.
        source: io::Error,
    },
    /// The source exists but is not a directory.
    #[error("source {path}: not a directory")]
    SourceNotDirectory {
        /// The source given.
        path: PathBuf,
    },
    /// The kernel refused the mount (no /dev/fuse, not root and no fusermount3, busy mount point…).
    #[error("mount point {path}: {source}")]
    Mount {
        /// The mount point given.
        path: PathBuf,
        /// What the mount attempt said.
        source: io::Error,
    },
}

/// Says why FUSE mounts cannot be made on this machine, or `None` if they probably can
/// (`/dev/fuse` exists and we are root). Tests print the reason and skip.
pub fn mount_unavailable_reason() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse does not exist (no FUSE in this kernel/container)".into());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Some(format!(
            "not root (euid {euid}); mounting FUSE directly needs root"
        ));
    }
    None
}

/// Mirrors `source` read-only at `mountpoint` (an existing, empty directory); every read that
/// reaches the mirror sleeps `delay` first. Returns once the mount is live; it is unmounted when
/// the returned guard drops.
pub fn mount(source: &Path, mountpoint: &Path, delay: Duration) -> Result<MountGuard, MountError> {
    let source_err = |e| MountError::Source {
        path: source.to_owned(),
        source: e,
    };
    let source_abs = source.canonicalize().map_err(source_err)?;
    let meta = std::fs::metadata(&source_abs).map_err(source_err)?;
    if !meta.is_dir() {
        return Err(MountError::SourceNotDirectory {
            path: source.to_owned(),
        });
    }
    let mount_err = |e| MountError::Mount {
        path: mountpoint.to_owned(),
        source: e,
    };
    let mountpoint = mountpoint.canonicalize().map_err(mount_err)?;
    let stats = Arc::new(Stats::default());
    let fs = SlowFs::new(source_abs.clone(), &meta, delay, Arc::clone(&stats));

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(format!("slowfs:{}", source_abs.display())),
        MountOption::Subtype("slowfs".into()),
        // The kernel checks permissions against the attributes, so we need no access().
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
    ];
    // allow_other: the server under test may run as another user than the test.
    config.acl = SessionACL::All;
    let session = fuser::spawn_mount(fs, &mountpoint, &config).map_err(mount_err)?;
    Ok(MountGuard {
        session: Some(session),
        mountpoint,
        delay,
        stats,
    })
}

/// A live slowfs mount. Dropping it unmounts (lazily, if something still has files open).
#[derive(Debug)]
pub struct MountGuard {
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
    delay: Duration,
    stats: Arc<Stats>,
}

impl MountGuard {
    /// Where the mirror is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The delay each read sleeps.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Read requests that reached the filesystem so far (each slept once). Page-cache hits never
    /// get here, so this counts cold reads.
    pub fn reads(&self) -> u64 {
        self.stats.reads.load(Ordering::Relaxed)
    }

    /// Bytes those reads returned.
    pub fn bytes_read(&self) -> u64 {
        self.stats.bytes.load(Ordering::Relaxed)
    }

    /// The most reads that were sleeping at the same time.
    pub fn peak_concurrent_reads(&self) -> u64 {
        self.stats.peak_in_flight.load(Ordering::Relaxed)
    }

    /// Unmounts now and waits for the session thread; reports what went wrong. If files on the
    /// mount are still open the unmount is `EBUSY`; then the mount is detached lazily (it goes
    /// away when the last file closes) and the error is returned.
    pub fn unmount(mut self) -> io::Result<()> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        match session.umount_and_join() {
            Ok(()) => Ok(()),
            Err(e) => {
                // The session thread is left to end by itself once the lazy detach completes;
                // joining it here could hang for as long as someone holds a file open.
                detach(&self.mountpoint);
                Err(e)
            }
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            eprintln!(
                "slowfs: unmount {}: {e} (detached lazily)",
                self.mountpoint.display()
            );
        }
    }
}

/// `umount2(MNT_DETACH)`, ignoring errors (it may already be gone).
fn detach(mountpoint: &Path) {
    let Ok(path) = CString::new(mountpoint.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
}
