//! `[process] user`/`group`: once `edgeplane serve` has bound its sockets, loaded and pinned
//! its XDP programs and opened its tiers, it stops being root.
//!
//! Every thread switches user and group (glibc applies `setuid`/`setgid`/`setgroups` to all
//! threads of the process) and loses every capability. Only the main thread, with `[xdp]`,
//! keeps CAP_NET_ADMIN and CAP_BPF in its effective set, to detach the programs at exit; the
//! executors, the admin thread and the tier watcher run with none. The XDP pin directory is
//! handed to the user first, so `edgeplane agent` running as that user can update the maps.
//!
//! Syscall layer: `getpwnam_r`, `getgrnam_r`, `setgroups`, `setgid`, `setuid`, `prctl`,
//! `capset`, `chown`; each `unsafe` block with its reason.

use std::ffi::{CStr, CString};
use std::io;
use std::path::Path;

/// A user and group to switch to, resolved from `[process]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) uid: libc::uid_t,
    pub(crate) gid: libc::gid_t,
}

/// `CAP_NET_ADMIN` (capability.h).
const CAP_NET_ADMIN: u32 = 12;
/// `CAP_BPF` (capability.h, Linux 5.8).
const CAP_BPF: u32 = 39;

/// Looks up `[process] user` (and `group`, else the user's primary group). `Ok(None)` when no
/// user is configured.
pub(crate) fn resolve(
    process: &crate::config::ProcessConfig,
) -> Result<Option<Target>, crate::config::ConfigError> {
    use crate::config::ConfigError;
    let Some(user) = &process.user else {
        return Ok(None);
    };
    let (uid, primary) = lookup_user(user)
        .map_err(|e| ConfigError::new("process.user", format!("{user}: {e}")))?
        .ok_or_else(|| ConfigError::new("process.user", format!("{user}: no such user")))?;
    let gid = match &process.group {
        None => primary,
        Some(group) => lookup_group(group)
            .map_err(|e| ConfigError::new("process.group", format!("{group}: {e}")))?
            .ok_or_else(|| ConfigError::new("process.group", format!("{group}: no such group")))?,
    };
    Ok(Some(Target { uid, gid }))
}

fn lookup_user(name: &str) -> io::Result<Option<(libc::uid_t, libc::gid_t)>> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: zeroed plain C struct that getpwnam_r fills in.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives the use of `pw`'s strings
    // (we read only the integer fields).
    let rc =
        unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok((!out.is_null()).then_some((pw.pw_uid, pw.pw_gid)))
}

fn lookup_group(name: &str) -> io::Result<Option<libc::gid_t>> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: zeroed plain C struct that getgrnam_r fills in.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call.
    let rc =
        unsafe { libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok((!out.is_null()).then_some(gr.gr_gid))
}

/// The user name of `uid`, for the log line.
fn user_name(uid: libc::uid_t) -> String {
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: zeroed plain C struct that getpwuid_r fills in.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() || pw.pw_name.is_null() {
        return uid.to_string();
    }
    // SAFETY: getpwuid_r succeeded: pw_name points at a C string inside `buf`.
    unsafe { CStr::from_ptr(pw.pw_name) }
        .to_string_lossy()
        .into_owned()
}

/// Gives `dir` and the files directly in it to `target` (the XDP pins, so the agent running as
/// that user can open them).
pub(crate) fn chown_tree(dir: &Path, target: Target) -> io::Result<()> {
    std::os::unix::fs::chown(dir, Some(target.uid), Some(target.gid))?;
    for entry in std::fs::read_dir(dir)? {
        std::os::unix::fs::chown(entry?.path(), Some(target.uid), Some(target.gid))?;
    }
    Ok(())
}

/// Switches the whole process to `target`. With `keep_xdp_caps`, the calling thread keeps
/// CAP_NET_ADMIN and CAP_BPF (to detach XDP at exit); every other capability is dropped.
pub(crate) fn drop_to(target: Target, keep_xdp_caps: bool) -> io::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(io::Error::other(
            "not started as root: cannot switch user (leave [process] user out, or start as root)",
        ));
    }
    if keep_xdp_caps {
        // SAFETY: prctl with integer arguments; affects the calling thread only.
        if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let groups = [target.gid];
    // SAFETY: `groups` is a valid array of one gid; glibc applies it to every thread.
    if unsafe { libc::setgroups(1, groups.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: integer argument; glibc applies it to every thread.
    if unsafe { libc::setgid(target.gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: integer argument; glibc applies it to every thread.
    if unsafe { libc::setuid(target.uid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let keep = if keep_xdp_caps {
        (1u64 << CAP_NET_ADMIN) | (1u64 << CAP_BPF)
    } else {
        0
    };
    set_caps(keep)?;
    if keep_xdp_caps {
        // SAFETY: as above.
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    }
    // A switch that did not happen must never look like one that did.
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    if uid != target.uid || gid != target.gid {
        return Err(io::Error::other(format!(
            "still uid {uid} gid {gid} after switching"
        )));
    }
    tracing::info!(
        user = %user_name(target.uid),
        uid = target.uid,
        gid = target.gid,
        capabilities = if keep_xdp_caps { "CAP_NET_ADMIN CAP_BPF (main thread, to detach XDP at exit)" } else { "none" },
        "dropped root"
    );
    Ok(())
}

/// Sets the calling thread's permitted and effective capabilities to `caps` (bit n = capability
/// n), inheritable none.
fn set_caps(caps: u64) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [
        Data {
            effective: caps as u32,
            permitted: caps as u32,
            inheritable: 0,
        },
        Data {
            effective: (caps >> 32) as u32,
            permitted: (caps >> 32) as u32,
            inheritable: 0,
        },
    ];
    // SAFETY: capset(2) reads a v3 header and two data structs, both valid for the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_resolves_and_unknown_users_are_named() {
        let p = crate::config::ProcessConfig {
            user: Some("root".into()),
            group: None,
        };
        assert_eq!(resolve(&p).unwrap(), Some(Target { uid: 0, gid: 0 }));
        let p = crate::config::ProcessConfig {
            user: Some("no-such-user-edgeplane".into()),
            group: None,
        };
        assert_eq!(
            resolve(&p).unwrap_err().to_string(),
            "config error: process.user: no-such-user-edgeplane: no such user"
        );
        assert_eq!(resolve(&Default::default()).unwrap(), None);
    }
}
