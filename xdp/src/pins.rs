//! The BPF filesystem and edgeplane's directory on it, where the maps that outlive a process
//! are pinned so `edgeplane prefixes …` (and the control agent) can change them at runtime.
//!
//! Syscall layer: `statfs`, `mount`, `flock`, each `unsafe` block with its reason.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::XdpError;

/// Where the data plane pins its maps unless `xdp.pin_dir` says otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/edgeplane";

/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether `path` is on a BPF filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `statfs` writes into the zeroed struct we own; `c` is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    // `f_type`'s integer type differs between architectures (i64 here, i32 on some).
    #[allow(clippy::useless_conversion)]
    let f_type = i64::from(st.f_type);
    rc == 0 && f_type == BPF_FS_MAGIC
}

/// Makes `dir` a directory on a BPF filesystem: mounts bpffs on its parent when the parent is
/// not one (as systemd does at boot on most distributions), then creates `dir`.
pub fn ensure_dir(dir: &Path) -> Result<(), XdpError> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| XdpError::Pins {
            path: dir.to_path_buf(),
            detail: "must be a directory inside a BPF filesystem, e.g. /sys/fs/bpf/edgeplane"
                .into(),
        })?;
    if !is_bpffs(parent) {
        mount_bpffs(parent).map_err(|e| XdpError::Pins {
            path: parent.to_path_buf(),
            detail: format!(
                "not a BPF filesystem, and mounting one failed ({e}): \
                 `mount -t bpf bpf {}` as root, or set xdp.pin_dir",
                parent.display()
            ),
        })?;
        tracing::info!(path = %parent.display(), "mounted a BPF filesystem");
    }
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(XdpError::Pins {
            path: dir.to_path_buf(),
            detail: format!("cannot create: {e}"),
        }),
    }
}

fn mount_bpffs(at: &Path) -> io::Result<()> {
    std::fs::create_dir_all(at)?;
    let target = CString::new(at.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: every argument is a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An exclusive lock on a pin directory, held while prefixes are changed, so two writers
/// (`edgeplane prefixes add` run twice at once, or beside a starting data plane) never hand out
/// the same counter slot. Released on drop.
#[derive(Debug)]
pub struct Lock {
    _dir: File,
}

impl Lock {
    /// Waits for the lock on `dir`.
    pub fn take(dir: &Path) -> Result<Lock, XdpError> {
        let file = File::open(dir).map_err(|e| XdpError::Pins {
            path: dir.to_path_buf(),
            detail: match e.kind() {
                io::ErrorKind::NotFound => {
                    "no such directory: is the data plane running with XDP enabled?".into()
                }
                _ => e.to_string(),
            },
        })?;
        // SAFETY: flock on a descriptor we own; integer arguments only.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(XdpError::Pins {
                path: dir.to_path_buf(),
                detail: format!("cannot lock: {}", io::Error::last_os_error()),
            });
        }
        Ok(Lock { _dir: file })
    }
}

/// Removes a pin directory and every pin in it (tests, `edgeplane prefixes reset`).
pub fn remove_dir(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The path of map `name` in `dir`.
pub fn pin_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// What [`sync_prefixes`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Prefixes that were not served and now are, in address order.
    pub added: Vec<super::Prefix>,
    /// Prefixes that were served and no longer are, in address order.
    pub removed: Vec<super::Prefix>,
}

/// Makes the served prefixes of the running data plane whose maps are pinned in `pin_dir`
/// exactly `desired` (duplicates ignored): adds the missing ones, removes the extra ones, and
/// leaves the others (their counters and drain flags) as they are. For the agent, which keeps
/// the XDP filter in step with the prefixes steering hands out.
///
/// Takes the pin directory's lock (like `edgeplane prefixes add|remove`) for the whole change.
/// Adds go in before removals, so a prefix being replaced by a covering one is never briefly
/// unserved, unless the maps lack room for both, in which case removals go first. On an error
/// part of the change may have been made; calling it again finishes it.
pub fn sync_prefixes(pin_dir: &Path, desired: &[super::Prefix]) -> Result<SyncReport, XdpError> {
    use std::collections::BTreeSet;
    let _lock = Lock::take(pin_dir)?;
    let mut table = super::PrefixTable::open_pinned(pin_dir)?;
    let current: BTreeSet<super::Prefix> = table.list()?.into_iter().map(|e| e.prefix).collect();
    let want: BTreeSet<super::Prefix> = desired.iter().copied().collect();
    let report = SyncReport {
        added: want.difference(&current).copied().collect(),
        removed: current.difference(&want).copied().collect(),
    };
    if want.len() > table.capacity() as usize {
        return Err(XdpError::Full {
            capacity: table.capacity(),
        });
    }
    let add = |table: &mut super::PrefixTable| -> Result<(), XdpError> {
        if !report.added.is_empty() {
            table.add_many(&report.added)?;
            table.bump_generation()?;
        }
        Ok(())
    };
    let room = current.len() + report.added.len() <= table.capacity() as usize;
    if room {
        add(&mut table)?;
    }
    for &p in &report.removed {
        table.remove(p)?;
    }
    if !room {
        add(&mut table)?;
    }
    Ok(report)
}
