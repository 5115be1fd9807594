//! XDP at the NIC: the served-prefix filter, per-prefix accounting, drain, and flow steering to
//! the executor that owns a flow. How it works and why: `docs/xdp.md`.
//!
//! - [`object`]: the eBPF object `build.rs` compiled, embedded.
//! - [`Prefix`]: parsing and display of served prefixes (pure).
//! - [`Filter`]: loads the object, configures it, attaches the XDP program, runs it under
//!   `BPF_PROG_TEST_RUN`.
//! - [`PrefixTable`], [`GlobalCounters`], [`SettingsMap`]: typed handles on the maps, from a
//!   load or from their pins (what `edgeplane prefixes` uses against a running data plane).
//! - [`XdpService`]: the filter as `edgeplane serve` runs it (start from `[xdp]`, snapshot for
//!   `/metrics`, shutdown).
//! - [`Steering`]: executors register their listeners; the `SK_REUSEPORT` program picks one by
//!   the flow hash ([`flow_hash_v4`], [`flow_hash_v6`], [`executor_for`]).
//! - [`config`]: the `[xdp]` section of the config file.
//! - [`pins`]: the BPF filesystem and edgeplane's directory on it.
//! - `frame` (feature `test-support`): Ethernet frames built byte by byte, for the tests and
//!   the bench; `model`: the filter's verdict and counters computed in user space, for
//!   differential tests against the program.
//!
//! This module never changes a packet's fate on its own: what is dropped follows from the
//! config (`[xdp]`) and the prefixes an operator or the agent wrote.
#![warn(missing_docs)]

pub mod config;
mod filter;
#[cfg(any(test, feature = "test-support"))]
pub mod frame;
mod log;
#[cfg(any(test, feature = "test-support"))]
pub mod model;
mod object;
pub mod pins;
mod prefix;
mod service;
mod steering;
mod tables;

pub use config::XdpMode as Mode;
pub use config::{XdpConfig, XdpMode, XdpSteering, MAX_PREFIXES_LIMIT};
pub use edgeplane_ebpf_types::{executor_for, flow_hash_v4, flow_hash_v6};
pub use edgeplane_ebpf_types::{Counter, Verdict};
pub use filter::{Filter, FilterSettings, LoadOptions, TestRun};
pub use object::{object, ObjectMissing};
pub use pins::{sync_prefixes, SyncReport};
pub use prefix::{Prefix, PrefixError};
pub use service::{XdpService, XdpSnapshot};
pub use steering::Steering;
pub use tables::{Added, GlobalCounters, PrefixEntry, PrefixStats, PrefixTable, SettingsMap};

use std::path::PathBuf;

/// Why an XDP operation failed. Each renders as one line an operator can act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum XdpError {
    /// The binary carries no eBPF object.
    #[error(transparent)]
    ObjectMissing(#[from] ObjectMissing),
    /// The kernel refused for lack of privilege.
    #[error("{action}: {detail} (needs root, or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)")]
    Permission {
        /// What was being done.
        action: String,
        /// The error chain.
        detail: String,
    },
    /// The kernel refused for another reason (missing feature, verifier, …).
    #[error("{action}: {detail}")]
    Kernel {
        /// What was being done.
        action: String,
        /// The error chain.
        detail: String,
    },
    /// The BPF filesystem or a pin under it.
    #[error("{}: {detail}", path.display())]
    Pins {
        /// The path involved.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A map operation failed.
    #[error("{what}: {detail}")]
    Map {
        /// Which map or operation.
        what: String,
        /// The error chain.
        detail: String,
    },
    /// An interface could not be used.
    #[error("xdp.interfaces: {name}: {detail}")]
    Interface {
        /// The interface.
        name: String,
        /// What went wrong.
        detail: String,
    },
    /// No free prefix slot.
    #[error(
        "{capacity} prefixes are served, the most xdp.max_prefixes allows: remove some or raise it"
    )]
    Full {
        /// `xdp.max_prefixes`.
        capacity: u32,
    },
}

/// An error and its sources, joined with `: ` on one line.
pub(crate) fn describe(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// Whether EPERM is anywhere in the chain. (Not EACCES: that is how `BPF_PROG_LOAD` reports a
/// program the verifier rejected, which must never pass for a missing privilege.)
fn denied(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.raw_os_error() == Some(libc::EPERM) {
                return true;
            }
        }
        cur = e.source();
    }
    false
}

/// `Permission` when the kernel said EPERM, else `Kernel`.
pub(crate) fn kernel_error(
    action: impl Into<String>,
    err: &(dyn std::error::Error + 'static),
) -> XdpError {
    let action = action.into();
    let detail = describe(err);
    if denied(err) {
        XdpError::Permission { action, detail }
    } else {
        XdpError::Kernel { action, detail }
    }
}
