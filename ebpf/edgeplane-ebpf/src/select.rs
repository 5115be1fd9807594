//! The `SK_REUSEPORT` program: which executor's listener a new connection goes to.
//!
//! Every executor listens on the same port with its own `SO_REUSEPORT` socket and puts it in
//! `LISTENERS` at its index as it binds. For each new TCP connection the program hashes the
//! 4-tuple with the same function as the XDP program's CPUMAP steering
//! (`edgeplane_ebpf_types::flow_hash_v4/v6`) and picks `LISTENERS[executor_for(hash, n)]`, so a
//! flow's packets (steered to that executor's CPU) and its socket meet on one core. When the
//! slot is empty (an executor not yet bound, or gone) or anything is unreadable, the program
//! leaves the choice to the kernel's own reuseport hash.

use aya_ebpf::bindings::bpf_hdr_start_off::BPF_HDR_START_NET;
use aya_ebpf::bindings::sk_action::SK_PASS;
use aya_ebpf::helpers::generated::bpf_skb_load_bytes_relative;
use aya_ebpf::macros::{map, sk_reuseport};
use aya_ebpf::maps::ReusePortSockArray;
use aya_ebpf::programs::SkReuseportContext;
use aya_ebpf::EbpfContext as _;
use edgeplane_ebpf_types::{executor_for, flow_hash_v4, flow_hash_v6, MAX_EXECUTORS};

use crate::parse::bytes;
use crate::CONFIG;

#[map]
static LISTENERS: ReusePortSockArray = ReusePortSockArray::with_max_entries(MAX_EXECUTORS, 0);

const IPPROTO_TCP: u32 = 6;

#[sk_reuseport]
pub fn edgeplane_select_listener(ctx: SkReuseportContext) -> u32 {
    if let Some(index) = listener_index(&ctx) {
        // An empty slot fails the helper: the kernel then picks by its own hash.
        let _ = LISTENERS.select_reuseport(&ctx, index);
    }
    SK_PASS
}

#[inline(always)]
fn listener_index(ctx: &SkReuseportContext) -> Option<u32> {
    if ctx.ip_protocol() != IPPROTO_TCP {
        return None;
    }
    let executors = CONFIG.get(0)?.executors;
    if executors == 0 {
        return None;
    }
    // For TCP the context's data starts at the TCP header: the ports.
    let ports: [u8; 4] = bytes(ctx.data(), ctx.data_end(), 0)?;
    let sport = u16::from_be_bytes([ports[0], ports[1]]);
    let dport = u16::from_be_bytes([ports[2], ports[3]]);
    let hash = if ctx.eth_protocol() == u32::from(0x0800u16.to_be()) {
        // IPv4 source and destination: bytes 12..20 of the network header.
        let a: [u8; 8] = load_network(ctx, 12)?;
        flow_hash_v4(
            [a[0], a[1], a[2], a[3]],
            [a[4], a[5], a[6], a[7]],
            sport,
            dport,
        )
    } else if ctx.eth_protocol() == u32::from(0x86ddu16.to_be()) {
        // IPv6 source and destination: bytes 8..40.
        let src: [u8; 16] = load_network(ctx, 8)?;
        let dst: [u8; 16] = load_network(ctx, 24)?;
        flow_hash_v6(src, dst, sport, dport)
    } else {
        return None;
    };
    Some(executor_for(hash, executors))
}

/// `N` bytes at `offset` from the start of the network header.
#[inline(always)]
fn load_network<const N: usize>(ctx: &SkReuseportContext, offset: u32) -> Option<[u8; N]> {
    let mut buf = [0u8; N];
    // SAFETY: the helper writes at most `N` bytes into `buf`, which we own; the verifier checks
    // the context pointer.
    let rc = unsafe {
        bpf_skb_load_bytes_relative(
            ctx.as_ptr(),
            offset,
            buf.as_mut_ptr().cast(),
            N as u32,
            BPF_HDR_START_NET,
        )
    };
    (rc == 0).then_some(buf)
}
