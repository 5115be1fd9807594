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
