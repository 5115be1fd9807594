//! Shared by the XDP tests: loading the filter, or skipping with the reason printed when this
//! machine cannot (no root / CAP_BPF, or a binary built without the eBPF toolchain).

use edgeplane::xdp::{Filter, LoadOptions, XdpError};

/// Whether this process runs as root (the namespace tests need it for `ip netns`).
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Prints why `test` is skipped.
pub(crate) fn skip(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
}

/// Loads the filter, or prints why `test` is skipped and returns `None`. A binary without the
/// eBPF object only skips when the build was allowed to leave it out (`EDGEPLANE_REQUIRE_EBPF`
/// unset); any other failure fails the test.
pub(crate) fn load(test: &str, opts: &LoadOptions) -> Option<Filter> {
    match Filter::load(opts) {
        Ok(f) => Some(f),
        Err(e @ XdpError::Permission { .. }) => {
            skip(test, &format!("{e}"));
            None
        }
        Err(e @ XdpError::ObjectMissing(_))
            if std::env::var("EDGEPLANE_REQUIRE_EBPF").as_deref() != Ok("1") =>
        {
            skip(test, &format!("{e}"));
            None
        }
        Err(e) => panic!("{test}: loading the XDP filter: {e}"),
    }
}

/// A pin directory for one test, removed (with every pin in it) on drop.
pub(crate) struct PinDir(pub(crate) std::path::PathBuf);

impl PinDir {
    pub(crate) fn new(test: &str) -> PinDir {
        PinDir(std::path::PathBuf::from(format!(
            "/sys/fs/bpf/edgeplane-test-{}-{test}",
            std::process::id()
        )))
    }

    pub(crate) fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `edgeplane prefixes --pin-dir DIR ARGS…`; returns (exit code, stdout, stderr).
pub(crate) fn prefixes(pin_dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(super::BIN)
        .arg("prefixes")
        .arg("--pin-dir")
        .arg(pin_dir)
        .args(args)
        .output()
        .expect("run edgeplane prefixes");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
