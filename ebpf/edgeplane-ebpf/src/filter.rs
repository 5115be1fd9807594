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
    cache_slot_v4, cache_slot_v6, executor_for, flow_hash_v4, flow_hash_v6, port_bit, CachedSource,
    Counter, FilterConfig, PrefixValue, Verdict,
};

use crate::parse::{bytes, parse, Skip, Tcp};
use crate::{
    CONFIG, COUNTERS, CPUS, EXECUTOR_CPUS, GENERATION, PORTS, PREFIXES_V4, PREFIXES_V6,
    PREFIX_COUNTERS, SOURCE_CACHE,
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
    let cfg = config();
    // Generation 0: userspace has not set up the cache (or turned it off).
    let generation = if cfg.flags & FilterConfig::NO_SOURCE_CACHE == 0 {
        GENERATION.get(0).copied().unwrap_or(0)
    } else {
        0
    };
    let prefix = if tcp.v6 {
        match bytes::<16>(start, end, tcp.l3 + 8) {
            Some(src) => source_v6(src, generation),
            None => return malformed_verdict(),
        }
    } else {
        match bytes::<4>(start, end, tcp.l3 + 12) {
            Some(src) => source_v4(src, generation),
            None => return malformed_verdict(),
        }
    };
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

/// The served prefix of an IPv4 source: from this CPU's source cache when the slot holds this
/// address at the current generation, else from the LPM trie (and the slot is refilled).
#[inline(always)]
fn source_v4(src: [u8; 4], generation: u32) -> Option<PrefixValue> {
    let lookup = || PREFIXES_V4.get(Key::new(32, src)).copied();
    if generation == 0 {
        return lookup();
    }
    let Some(slot) = SOURCE_CACHE.get_ptr_mut(cache_slot_v4(src)) else {
        return lookup();
    };
    // SAFETY: this CPU's copy of the slot; XDP runs with preemption off, so nothing else
    // touches it while we read and write it.
    let slot = unsafe { &mut *slot };
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&src);
    if slot.generation == generation && slot.family == 4 && same(&slot.addr, &addr) {
        return cached(slot);
    }
    let answer = lookup();
    fill(slot, addr, 4, generation, answer);
    answer
}

/// [`source_v4`] for IPv6.
#[inline(always)]
fn source_v6(src: [u8; 16], generation: u32) -> Option<PrefixValue> {
    let lookup = || PREFIXES_V6.get(Key::new(128, src)).copied();
    if generation == 0 {
        return lookup();
    }
    let Some(slot) = SOURCE_CACHE.get_ptr_mut(cache_slot_v6(src)) else {
        return lookup();
    };
    // SAFETY: as in `source_v4`.
    let slot = unsafe { &mut *slot };
    if slot.generation == generation && slot.family == 6 && same(&slot.addr, &src) {
        return cached(slot);
    }
    let answer = lookup();
    fill(slot, src, 6, generation, answer);
    answer
}

/// Address equality as two 64-bit compares (no `memcmp` in BPF).
#[inline(always)]
fn same(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let (a, b) = (u128::from_ne_bytes(*a), u128::from_ne_bytes(*b));
    a as u64 == b as u64 && (a >> 64) as u64 == (b >> 64) as u64
}

#[inline(always)]
fn cached(slot: &CachedSource) -> Option<PrefixValue> {
    (slot.found != 0).then_some(PrefixValue {
        id: slot.id,
        flags: slot.flags,
    })
}

#[inline(always)]
fn fill(
    slot: &mut CachedSource,
    addr: [u8; 16],
    family: u32,
    generation: u32,
    answer: Option<PrefixValue>,
) {
    let value = answer.unwrap_or_default();
    *slot = CachedSource {
        addr,
        generation,
        family,
        found: u32::from(answer.is_some()),
        id: value.id,
        flags: value.flags,
    };
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
