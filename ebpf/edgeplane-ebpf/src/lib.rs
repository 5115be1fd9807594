//! edgeplane's eBPF programs. Built by `dataplane/build.rs`; loaded by `dataplane/src/xdp`.
#![no_std]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// Placeholder: passes everything.
#[xdp]
pub fn edgeplane_filter(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path (an unbounded loop or
    // an unknown call), so this is never reached in a loaded program.
    unsafe { core::hint::unreachable_unchecked() }
}

/// aya-log and the perf/ring-buffer helpers are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
