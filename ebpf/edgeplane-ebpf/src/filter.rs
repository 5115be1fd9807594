//! The XDP program: served-prefix filter for TCP to the serving ports.
//!
//! For each frame: parse (see [`crate::parse`] for the rules on what cannot be parsed); anything
//! that is not TCP to a serving port passes untouched (ARP, ICMP, ICMPv6, BGP, SSH, the admin
//! port, UDP, …). TCP to a serving port: look the source up in the LPM trie of its family.
//! - found: a new connection (SYN without ACK) under drain (global or the prefix's) is dropped
//!   and counted as the prefix's drop; everything else is counted as the prefix's packets and
//!   bytes and passed, or redirected to the CPU of the executor the flow hash names (CPUMAP).
//! - not found: dropped in enforce mode; in monitor mode passed (a drain still drops its SYNs).
//!
//! Malformed frames are dropped in enforce mode and passed in monitor mode. Every frame counts
//! exactly once in the global counters (`COUNTERS`, one per [`Counter`]).

use aya_ebpf::bindings::xdp_action;
use aya_ebpf::macros::xdp;
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::programs::XdpContext;
use aya_log_ebpf::debug;
use edgeplane_ebpf_types::{
    executor_for, flow_hash_v4, flow_hash_v6, port_bit, Counter, FilterConfig, PrefixValue, Verdict,
};

use crate::parse::{bytes, parse, Skip, Tcp};
use crate::{
    CONFIG, COUNTERS, CPUS, EXECUTOR_CPUS, PORTS, PREFIXES_V4, PREFIXES_V6, PREFIX_COUNTERS,
};

#[xdp]
pub fn edgeplane_filter(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    let end = ctx.data_end();
    match parse(start, end) {
        Ok(tcp) if serving(tcp.dport) => {
            if tcp.consistent {
                judge(start, end, &tcp)
            } else {
                malformed(&ctx, start, end)
            }
        }
        Ok(_) | Err(Skip::NotTcp) => verdict(Counter::NotTcp),
        Err(Skip::Fragment) => verdict(Counter::Fragment),
        Err(Skip::Malformed) => malformed(&ctx, start, end),
    }
}

#[inline(always)]
fn config() -> FilterConfig {
    CONFIG.get(0).copied().unwrap_or_default()
}

#[inline(always)]
fn serving(port: u16) -> bool {
    let (word, mask) = port_bit(port);
    PORTS.get(word).is_some_and(|w| w & mask != 0)
}

/// Counts `counter` and returns its verdict.
#[inline(always)]
fn verdict(counter: Counter) -> u32 {
    if let Some(n) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot; XDP runs with preemption off, so nothing else writes it now.
        unsafe { *n += 1 };
    }
    match counter.verdict() {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Redirect => xdp_action::XDP_REDIRECT,
    }
}

#[inline(always)]
fn malformed(ctx: &XdpContext, start: usize, end: usize) -> u32 {
    debug!(ctx, "malformed frame of {} bytes", end - start);
    malformed_verdict()
}

#[inline(always)]
fn malformed_verdict() -> u32 {
    if config().flags & FilterConfig::ENFORCE != 0 {
        verdict(Counter::MalformedDropped)
    } else {
        verdict(Counter::MalformedPassed)
    }
}

/// The served-prefix decision for TCP to a serving port.
#[inline(always)]
fn judge(start: usize, end: usize, tcp: &Tcp) -> u32 {
    let prefix = if tcp.v6 {
        match bytes::<16>(start, end, tcp.l3 + 8) {
            Some(src) => PREFIXES_V6.get(Key::new(128, src)).copied(),
            None => return malformed_verdict(),
        }
    } else {
        match bytes::<4>(start, end, tcp.l3 + 12) {
            Some(src) => PREFIXES_V4.get(Key::new(32, src)).copied(),
            None => return malformed_verdict(),
        }
    };
    let cfg = config();
    let drain_all = cfg.flags & FilterConfig::DRAIN != 0;
    let Some(prefix) = prefix else {
        return if cfg.flags & FilterConfig::ENFORCE != 0 {
            verdict(Counter::NotServedDropped)
        } else if tcp.syn_only && drain_all {
            verdict(Counter::DrainDropped)
        } else {
            verdict(Counter::NotServedPassed)
        };
    };
    let counters = PREFIX_COUNTERS.get_ptr_mut(prefix.id);
    if tcp.syn_only && (drain_all || prefix.flags & PrefixValue::DRAIN != 0) {
        if let Some(c) = counters {
            // SAFETY: a per-CPU slot, written only by this CPU with preemption off.
            unsafe { (*c).drops += 1 };
        }
        return verdict(Counter::DrainDropped);
    }
    if let Some(c) = counters {
        // SAFETY: as above.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += (end - start) as u64;
        }
    }
    if cfg.flags & FilterConfig::STEER_CPUMAP != 0 {
        if let Some(action) = steer(start, end, tcp, cfg.executors) {
            return action;
        }
    }
    verdict(Counter::Allowed)
}

/// Redirects the frame to the CPU of the executor the flow hash names; `None` (pass it here)
/// when that CPU has no queue in the CPUMAP.
#[inline(always)]
fn steer(start: usize, end: usize, tcp: &Tcp, executors: u32) -> Option<u32> {
    let hash = if tcp.v6 {
        let src = bytes(start, end, tcp.l3 + 8)?;
        let dst = bytes(start, end, tcp.l3 + 24)?;
        flow_hash_v6(src, dst, tcp.sport, tcp.dport)
    } else {
        let a: [u8; 8] = bytes(start, end, tcp.l3 + 12)?;
        flow_hash_v4(
            [a[0], a[1], a[2], a[3]],
            [a[4], a[5], a[6], a[7]],
            tcp.sport,
            tcp.dport,
        )
    };
    let cpu = *EXECUTOR_CPUS.get(executor_for(hash, executors))?;
    let action = CPUS.redirect(cpu, u64::from(xdp_action::XDP_PASS)).ok()?;
    verdict(Counter::Steered);
    Some(action)
}
