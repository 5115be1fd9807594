//! edgeplane's eBPF programs, built by `dataplane/build.rs` and loaded by `dataplane/src/xdp`.
//!
//! - [`filter`]: the XDP program. Served-prefix filter for TCP to the serving ports, per-prefix
//!   and global counters, drain, optional CPUMAP steering. Everything that is not TCP to a
//!   serving port passes untouched.
//! - [`select`]: the `SK_REUSEPORT` program. Picks the listener of the executor the flow hash
//!   names, the same hash the XDP program steers by.
//!
//! The maps are declared here, named as in `edgeplane_ebpf_types::map`. Their sizes are
//! defaults; the loader sets the real ones (`xdp.max_prefixes`, the CPU count) before loading.
#![no_std]
// One-instruction misaligned packet loads (`parse::load_u64`) are inline asm, unstable on BPF.
#![feature(asm_experimental_arch)]

mod filter;
mod parse;
mod select;

use aya_ebpf::macros::map;
use aya_ebpf::maps::{Array, CpuMap, LpmTrie, PerCpuArray};
use edgeplane_ebpf_types::{
    CachedSource, FilterConfig, PrefixCounters, PrefixValue, COUNTERS as COUNTER_LEN,
    MAX_EXECUTORS, PORT_WORDS, SOURCE_CACHE_SLOTS,
};

/// Default capacity of the prefix maps; the loader overrides it with `xdp.max_prefixes`.
const DEFAULT_PREFIXES: u32 = 16384;

#[map]
static PREFIXES_V4: LpmTrie<[u8; 4], PrefixValue> = LpmTrie::with_max_entries(DEFAULT_PREFIXES, 0);

#[map]
static PREFIXES_V6: LpmTrie<[u8; 16], PrefixValue> = LpmTrie::with_max_entries(DEFAULT_PREFIXES, 0);

#[map]
static PREFIX_COUNTERS: PerCpuArray<PrefixCounters> =
    PerCpuArray::with_max_entries(DEFAULT_PREFIXES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_LEN, 0);

#[map]
static CONFIG: Array<FilterConfig> = Array::with_max_entries(1, 0);

#[map]
static PORTS: Array<u64> = Array::with_max_entries(PORT_WORDS, 0);

#[map]
static EXECUTOR_CPUS: Array<u32> = Array::with_max_entries(MAX_EXECUTORS, 0);

#[map]
static CPUS: CpuMap = CpuMap::with_max_entries(64, 0);

#[map]
static GENERATION: Array<u32> = Array::with_max_entries(1, 0);

#[map]
static SOURCE_CACHE: PerCpuArray<CachedSource> =
    PerCpuArray::with_max_entries(SOURCE_CACHE_SLOTS, 0);

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects a program with a reachable panic path (it would be an
    // unbounded loop or a call to an unknown function), so a loaded program never gets here.
    unsafe { core::hint::unreachable_unchecked() }
}

/// aya-log's ring buffer output and the CPUMAP redirect helpers are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
