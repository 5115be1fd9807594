//! What edgeplane's eBPF programs (`ebpf/edgeplane-ebpf`) and their userspace loader
//! (`dataplane/src/xdp`) must agree on: map names, the `#[repr(C)]` values stored in the maps,
//! the counter layout and the flow hash that steers a connection to one executor.
//!
//! `no_std`, no allocation, no I/O: the same source compiles for the `bpfel` target and for the
//! host. The data plane embeds the object it was built with, so both sides always come from the
//! same revision of this crate; a layout change is still a change to pinned maps that outlive a
//! process (see `docs/xdp.md`, "Pinned maps").
#![no_std]

/// Names of the maps in the object. Userspace pins some of them under
/// `/sys/fs/bpf/edgeplane/<name>` so `edgeplane prefixes …` can change them at runtime.
pub mod map {
    /// LPM trie: IPv4 served prefixes, key `{prefix_len: u32, addr: [u8; 4]}` →
    /// [`PrefixValue`](crate::PrefixValue).
    pub const PREFIXES_V4: &str = "PREFIXES_V4";
    /// LPM trie: IPv6 served prefixes, key `{prefix_len: u32, addr: [u8; 16]}` →
    /// [`PrefixValue`](crate::PrefixValue).
    pub const PREFIXES_V6: &str = "PREFIXES_V6";
    /// Per-CPU array indexed by [`PrefixValue::id`](crate::PrefixValue): per-prefix
    /// [`PrefixCounters`](crate::PrefixCounters).
    pub const PREFIX_COUNTERS: &str = "PREFIX_COUNTERS";
    /// Per-CPU array of `u64`, indexed by [`Counter`](crate::Counter).
    pub const COUNTERS: &str = "COUNTERS";
    /// Array with one [`FilterConfig`](crate::FilterConfig) at index 0.
    pub const CONFIG: &str = "CONFIG";
    /// Array of [`PORT_WORDS`](crate::PORT_WORDS) `u64`: bit `p` set = TCP port `p` is served.
    pub const PORTS: &str = "PORTS";
    /// Array: executor index → CPU it is pinned to (for CPUMAP steering).
    pub const EXECUTOR_CPUS: &str = "EXECUTOR_CPUS";
    /// CPUMAP: CPU → queue that the XDP program redirects steered frames to.
    pub const CPUS: &str = "CPUS";
    /// REUSEPORT_SOCKARRAY: executor index → that executor's listening socket.
    pub const LISTENERS: &str = "LISTENERS";
    /// Array with one `u32` at index 0: bumped by userspace after every change to the prefix
    /// tries; [`CachedSource`](crate::CachedSource) entries of another generation are stale.
    pub const GENERATION: &str = "GENERATION";
    /// Per-CPU array of [`SOURCE_CACHE_SLOTS`](crate::SOURCE_CACHE_SLOTS)
    /// [`CachedSource`](crate::CachedSource): the last LPM answer per source address slot.
    pub const SOURCE_CACHE: &str = "SOURCE_CACHE";
}

/// Names of the programs in the object.
pub mod program {
    /// The XDP program: served-prefix filter, accounting, drain, optional CPUMAP steering.
    pub const FILTER: &str = "edgeplane_filter";
    /// The `SK_REUSEPORT` program: picks the executor's listener by the flow hash.
    pub const SELECT_LISTENER: &str = "edgeplane_select_listener";
}

/// Most executors the steering maps hold.
pub const MAX_EXECUTORS: u32 = 256;
/// Words in the [`map::PORTS`] bitmap: 1024 × 64 bits = every TCP port.
pub const PORT_WORDS: u32 = 1024;

/// Where a port's bit lives in the [`map::PORTS`] bitmap: `(word index, mask)`.
#[inline(always)]
pub const fn port_bit(port: u16) -> (u32, u64) {
    ((port >> 6) as u32, 1u64 << (port & 63))
}

/// The value of a served prefix in the LPM tries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixValue {
    /// Index of this prefix's counters in [`map::PREFIX_COUNTERS`]; unique over both tries.
    pub id: u32,
    /// [`PrefixValue::DRAIN`] or 0.
    pub flags: u32,
}

impl PrefixValue {
    /// New connections (SYN without ACK) from this prefix are dropped; established flows continue.
    pub const DRAIN: u32 = 1;
}

/// Slots in the per-CPU source cache (direct-mapped by [`cache_slot_v4`] / [`cache_slot_v6`]).
pub const SOURCE_CACHE_SLOTS: u32 = 1 << 16;

/// One slot of the source cache: the LPM answer for one source address, valid while
/// `generation` equals the current [`map::GENERATION`]. A source that is not served is cached
/// too (`found = 0`), so a flood from one unserved address costs no trie walk either.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedSource {
    /// The source address as two native-endian words of its wire bytes (IPv4: the first word
    /// holds its 4 bytes, the rest is zero). Words, not bytes, so the program compares them with
    /// two aligned loads.
    pub addr: [u64; 2],
    /// The prefix-table generation the answer belongs to (0: empty slot).
    pub generation: u32,
    /// 4 or 6.
    pub family: u32,
    /// 1 when the source is in a served prefix.
    pub found: u32,
    /// That prefix's [`PrefixValue::id`].
    pub id: u32,
    /// That prefix's [`PrefixValue::flags`].
    pub flags: u32,
    /// Keeps the size a multiple of 8 with no implicit padding.
    pub reserved: u32,
}

/// The source-cache slot of an IPv4 address.
#[inline(always)]
pub const fn cache_slot_v4(addr: [u8; 4]) -> u32 {
    u32::from_ne_bytes(addr).wrapping_mul(0x9e37_79b1) >> 16
}

/// The source-cache slot of an IPv6 address.
#[inline(always)]
pub const fn cache_slot_v6(addr: [u8; 16]) -> u32 {
    let hi = u64::from_ne_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let lo = u64::from_ne_bytes([
        addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
    ]);
    cache_slot_v6_words(hi, lo)
}

/// [`cache_slot_v6`] of the address read as two native-endian 64-bit words (how the XDP
/// program loads it: two loads instead of sixteen).
#[inline(always)]
pub const fn cache_slot_v6_words(hi: u64, lo: u64) -> u32 {
    let x = hi ^ lo.rotate_left(29);
    ((x ^ (x >> 32)) as u32).wrapping_mul(0x9e37_79b1) >> 16
}

/// Per-prefix counters (one copy per CPU; userspace sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixCounters {
    /// Packets from the prefix to a serving port that were passed (or steered).
    pub packets: u64,
    /// Their bytes, counted from the Ethernet header to the end of the frame.
    pub bytes: u64,
    /// Packets from the prefix to a serving port that were dropped (new connections under drain).
    pub drops: u64,
}

/// The filter's global settings, at index 0 of [`map::CONFIG`]. All zero (the state before
/// userspace writes it) means: monitor mode, no serving ports, so nothing is ever dropped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterConfig {
    /// [`FilterConfig::ENFORCE`] | [`FilterConfig::DRAIN`] | [`FilterConfig::STEER_CPUMAP`].
    pub flags: u32,
    /// Serving executors (for the flow hash → executor → CPU step of CPUMAP steering).
    pub executors: u32,
}

impl FilterConfig {
    /// Drop TCP to the serving ports from sources outside the served prefixes (and malformed
    /// packets). Without it: monitor mode, count what would be dropped and pass it.
    pub const ENFORCE: u32 = 1;
    /// Drain everything: drop new connections (SYN without ACK) to the serving ports.
    pub const DRAIN: u32 = 2;
    /// Redirect allowed packets to the CPU of the executor the flow hash names (CPUMAP).
    pub const STEER_CPUMAP: u32 = 4;
    /// Walk the LPM trie for every packet instead of consulting the source cache first
    /// (`xdp.source_cache = false`; the bench uses it to measure the trie).
    pub const NO_SOURCE_CACHE: u32 = 8;
}

/// What the XDP program did with a packet, and why: the index into [`map::COUNTERS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// TCP to a serving port from a served prefix: passed.
    Allowed = 0,
    /// TCP to a serving port from a served prefix: redirected to its executor's CPU.
    Steered = 1,
    /// TCP to a serving port from outside the served prefixes, enforce mode: dropped.
    NotServedDropped = 2,
    /// TCP to a serving port from outside the served prefixes, monitor mode: passed.
    NotServedPassed = 3,
    /// A new connection (SYN without ACK) under drain: dropped.
    DrainDropped = 4,
    /// Truncated or inconsistent headers, enforce mode: dropped.
    MalformedDropped = 5,
    /// Truncated or inconsistent headers, monitor mode: passed.
    MalformedPassed = 6,
    /// Not TCP to a serving port (ARP, ICMP, ICMPv6, UDP, other ports, other ethertypes): passed
    /// untouched.
    NotTcp = 7,
    /// A non-first IP fragment (no TCP header to look at): passed; the kernel reassembles it only
    /// if the first fragment, which the filter did see, was passed.
    Fragment = 8,
}

/// Number of [`Counter`]s.
pub const COUNTERS: u32 = 9;

/// The three XDP verdicts the program returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `XDP_PASS`
    Pass,
    /// `XDP_DROP`
    Drop,
    /// `XDP_REDIRECT`
    Redirect,
}

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; COUNTERS as usize] = [
        Counter::Allowed,
        Counter::Steered,
        Counter::NotServedDropped,
        Counter::NotServedPassed,
        Counter::DrainDropped,
        Counter::MalformedDropped,
        Counter::MalformedPassed,
        Counter::NotTcp,
        Counter::Fragment,
    ];

    /// The verdict the program returns when it counts this.
    pub const fn verdict(self) -> Verdict {
        match self {
            Counter::Allowed
            | Counter::NotServedPassed
            | Counter::MalformedPassed
            | Counter::NotTcp
            | Counter::Fragment => Verdict::Pass,
            Counter::Steered => Verdict::Redirect,
            Counter::NotServedDropped | Counter::DrainDropped | Counter::MalformedDropped => {
                Verdict::Drop
            }
        }
    }

    /// The `reason` label on `/metrics`.
    pub const fn reason(self) -> &'static str {
        match self {
            Counter::Allowed | Counter::Steered => "served",
            Counter::NotServedDropped | Counter::NotServedPassed => "not_served",
            Counter::DrainDropped => "drain",
            Counter::MalformedDropped | Counter::MalformedPassed => "malformed",
            Counter::NotTcp => "not_tcp",
            Counter::Fragment => "fragment",
        }
    }
}

impl Verdict {
    /// The `verdict` label on `/metrics`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Drop => "drop",
            Verdict::Redirect => "redirect",
        }
    }
}

// The flow hash: murmur3's 32-bit mixing over the 4-tuple, the same on both sides. The XDP
// program (CPUMAP steering) and the SK_REUSEPORT program (listener choice) both call it, so a
// flow's packets and its socket meet on one core; the tests call it to predict the executor.
const SEED: u32 = 0x6564_6765; // "edge"

#[inline(always)]
const fn round(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn finish(mut h: u32, len: u32) -> u32 {
    h ^= len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
const fn ports(sport: u16, dport: u16) -> u32 {
    ((sport as u32) << 16) | dport as u32
}

/// Hash of an IPv4 TCP flow (addresses as on the wire, ports as numbers).
#[inline(always)]
pub const fn flow_hash_v4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> u32 {
    let mut h = round(SEED, u32::from_be_bytes(src));
    h = round(h, u32::from_be_bytes(dst));
    h = round(h, ports(sport, dport));
    finish(h, 12)
}

/// Hash of an IPv6 TCP flow (addresses as on the wire, ports as numbers).
#[inline(always)]
pub const fn flow_hash_v6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16) -> u32 {
    let mut h = SEED;
    let mut i = 0;
    while i < 16 {
        h = round(
            h,
            u32::from_be_bytes([src[i], src[i + 1], src[i + 2], src[i + 3]]),
        );
        i += 4;
    }
    i = 0;
    while i < 16 {
        h = round(
            h,
            u32::from_be_bytes([dst[i], dst[i + 1], dst[i + 2], dst[i + 3]]),
        );
        i += 4;
    }
    h = round(h, ports(sport, dport));
    finish(h, 36)
}

/// The executor (0..`executors`) a flow hash names: the hash scaled onto the range, which is
/// uniform without a division. 0 when there are no executors.
#[inline(always)]
pub const fn executor_for(hash: u32, executors: u32) -> u32 {
    ((hash as u64 * executors as u64) >> 32) as u32
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is #[repr(C)], built only of integers, and has no padding (two u32s,
    // three u64s), so every bit pattern is a valid value and no byte is uninitialized.
    unsafe impl aya::Pod for super::PrefixValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PrefixCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FilterConfig {}
    // SAFETY: as above (two u64s and six u32s: 40 bytes, no padding).
    unsafe impl aya::Pod for super::CachedSource {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_indexed_in_order() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }

    #[test]
    fn executor_for_covers_the_range() {
        assert_eq!(executor_for(0, 4), 0);
        assert_eq!(executor_for(u32::MAX, 4), 3);
        assert_eq!(executor_for(u32::MAX / 2 + 1, 2), 1);
        assert_eq!(executor_for(12345, 0), 0);
        let mut seen = [0u32; 4];
        for sport in 1000..5000u16 {
            let h = flow_hash_v4([10, 0, 0, 1], [10, 0, 0, 2], sport, 80);
            seen[executor_for(h, 4) as usize] += 1;
        }
        // 4000 flows over 4 executors: each within 15% of 1000.
        assert!(seen.iter().all(|&n| (850..=1150).contains(&n)), "{seen:?}");
    }

    #[test]
    fn hash_depends_on_every_field() {
        let base = flow_hash_v4([10, 0, 0, 1], [10, 0, 0, 2], 40000, 80);
        assert_ne!(base, flow_hash_v4([10, 0, 0, 3], [10, 0, 0, 2], 40000, 80));
        assert_ne!(base, flow_hash_v4([10, 0, 0, 1], [10, 0, 0, 3], 40000, 80));
        assert_ne!(base, flow_hash_v4([10, 0, 0, 1], [10, 0, 0, 2], 40001, 80));
        assert_ne!(base, flow_hash_v4([10, 0, 0, 1], [10, 0, 0, 2], 40000, 81));
        let a = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let mut b = a;
        b[15] = 2;
        assert_ne!(flow_hash_v6(a, b, 1, 2), flow_hash_v6(b, a, 1, 2));
    }

    #[test]
    fn cache_slots_stay_in_range() {
        assert_eq!(size_of::<CachedSource>(), 40);
        let mut used = [false; 256];
        for i in 0..10_000u32 {
            let s4 = cache_slot_v4(i.to_be_bytes());
            let s6 = cache_slot_v6((u128::from(i) << 64).to_be_bytes());
            assert!(s4 < SOURCE_CACHE_SLOTS && s6 < SOURCE_CACHE_SLOTS);
            used[(s4 >> 8) as usize] = true;
        }
        assert!(used.iter().filter(|&&u| u).count() > 200, "slots spread");
    }

    #[test]
    fn port_bits() {
        assert_eq!(port_bit(0), (0, 1));
        assert_eq!(port_bit(80), (1, 1 << 16));
        assert_eq!(port_bit(65535), (1023, 1 << 63));
    }
}
