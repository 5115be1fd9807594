//! Header parsing for the XDP filter: Ethernet, up to two VLAN tags (802.1Q, 802.1ad), IPv4
//! (options skipped by IHL), IPv6 (extension headers walked until TCP), TCP.
//!
//! Every read is bounds-checked against the end of the frame, and the rules for what cannot be
//! parsed are fixed here (docs/xdp.md, "Parsing rules"):
//! - a frame that ends inside the Ethernet header, a VLAN tag, the IPv4 base header, the IPv6
//!   header or an IPv6 extension header is [`Skip::Malformed`]: its protocol cannot be known;
//! - IPv4 with a version other than 4 or an IHL below 5, and IPv6 with a version other than 6,
//!   when they carry TCP, are [`Skip::Malformed`];
//! - a non-first fragment is [`Skip::Fragment`]: it has no TCP header to look at;
//! - TCP whose header is cut short (by the frame, the IP length, or the end of a first fragment)
//!   or has a data offset below 5 is [`Skip::Malformed`];
//! - TCP whose header is readable but whose IP length disagrees with the frame (the payload is cut
//!   short) comes back as [`Tcp`] with `consistent = false`, so the filter can still tell by the
//!   port whether it is any of its business;
//! - more than two VLAN tags, or an ethertype other than IPv4/IPv6, is [`Skip::NotTcp`];
//! - an IPv6 header chain with more than [`MAX_V6_EXT`] extension headers before TCP is
//!   [`Skip::Malformed`] (it cannot be classified within the verifier's budget, and real traffic
//!   never carries one).

/// What the filter needs from a TCP packet.
pub(crate) struct Tcp {
    /// Offset of the IP header in the frame.
    pub(crate) l3: usize,
    /// IPv6 (else IPv4).
    pub(crate) v6: bool,
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    /// SYN set, ACK clear: the first packet of a new connection.
    pub(crate) syn_only: bool,
    /// The IP length fits the frame and the TCP header (with options) fits the IP length.
    pub(crate) consistent: bool,
}

/// Why a frame is not a [`Tcp`] packet the filter can judge.
pub(crate) enum Skip {
    /// Not TCP (or not IP at all): never touched.
    NotTcp,
    /// A non-first IP fragment.
    Fragment,
    /// Headers cut short or inconsistent before the TCP ports could be read.
    Malformed,
}

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const IPPROTO_TCP: u8 = 6;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;

/// Most IPv6 extension headers walked before TCP.
pub(crate) const MAX_V6_EXT: usize = 8;

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// `N` bytes at `off`, or `None` when the frame ends first.
#[inline(always)]
pub(crate) fn bytes<const N: usize>(start: usize, end: usize, off: usize) -> Option<[u8; N]> {
    let p = start + off;
    if p + N > end {
        return None;
    }
    // SAFETY: `p..p + N` lies inside the frame (checked just above; the verifier checks the same
    // comparison again before it allows the load).
    Some(unsafe { core::ptr::read_unaligned(p as *const [u8; N]) })
}

/// `p`, hidden from the optimizer. The verifier only trusts a bounds check made on the very
/// register a packet load then uses; without this, LLVM folds a load's own check into an earlier,
/// wider one and recomputes the pointer for the asm load, which the verifier then refuses.
#[inline(always)]
fn opaque(mut p: usize) -> usize {
    // SAFETY: an empty asm block; it only stops the compiler from seeing through `p`.
    unsafe {
        core::arch::asm!("/* {0} */", inout(reg) p, options(pure, nomem, nostack, preserves_flags));
    }
    p
}

/// A native-endian `u64` at `off`, or `None` when the frame ends first.
///
/// One load instruction even where `off` is not 8-aligned: the kernel allows misaligned packet
/// access (architectures with efficient unaligned loads: x86-64, arm64), but LLVM's BPF backend,
/// asked for an unaligned `u64`, emits eight byte loads and the shifts to assemble them. Its
/// `allows-misaligned-mem-access` feature is no way out: it also misaligns stack stores, which
/// the verifier always rejects. Hence one instruction of asm.
#[inline(always)]
pub(crate) fn load_u64(start: usize, end: usize, off: usize) -> Option<u64> {
    let p = opaque(start + off);
    if p + 8 > end {
        return None;
    }
    let v: u64;
    // SAFETY: `p..p + 8` lies inside the frame (checked above; the verifier checks the same
    // bound again and refuses the program otherwise). The asm only loads.
    unsafe {
        core::arch::asm!(
            "{v} = *(u64 *)({p} + 0)",
            v = out(reg) v,
            p = in(reg) p,
            options(readonly, nostack, preserves_flags)
        );
    }
    Some(v)
}

/// A native-endian `u16` at `off`, like [`load_u64`].
#[inline(always)]
pub(crate) fn load_u16(start: usize, end: usize, off: usize) -> Option<u16> {
    let p = opaque(start + off);
    if p + 2 > end {
        return None;
    }
    let v: u64;
    // SAFETY: as in `load_u64`.
    unsafe {
        core::arch::asm!(
            "{v} = *(u16 *)({p} + 0)",
            v = out(reg) v,
            p = in(reg) p,
            options(readonly, nostack, preserves_flags)
        );
    }
    Some(v as u16)
}

/// A native-endian `u32` at `off`, like [`load_u64`].
#[inline(always)]
pub(crate) fn load_u32(start: usize, end: usize, off: usize) -> Option<u32> {
    let p = opaque(start + off);
    if p + 4 > end {
        return None;
    }
    let v: u64;
    // SAFETY: as in `load_u64`.
    unsafe {
        core::arch::asm!(
            "{v} = *(u32 *)({p} + 0)",
            v = out(reg) v,
            p = in(reg) p,
            options(readonly, nostack, preserves_flags)
        );
    }
    Some(v as u32)
}

/// Whether the frame is at least `len` bytes long (a bounds check without a load).
#[inline(always)]
pub(crate) fn within(start: usize, end: usize, len: usize) -> bool {
    start + len <= end
}

/// Classifies the frame `start..end`.
#[inline(always)]
pub(crate) fn parse(start: usize, end: usize) -> Result<Tcp, Skip> {
    let mut proto = be(load_u16(start, end, 12).ok_or(Skip::Malformed)?);
    let mut off = ETH_HLEN;
    // Up to two tags: 802.1Q, or 802.1ad (QinQ outer) followed by 802.1Q. Each is 2 bytes of
    // TCI, then the next ethertype.
    for _ in 0..2 {
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            proto = be(load_u16(start, end, off + 2).ok_or(Skip::Malformed)?);
            off += 4;
        }
    }
    match proto {
        ETH_P_IP => ipv4(start, end, off),
        ETH_P_IPV6 => ipv6(start, end, off),
        _ => Err(Skip::NotTcp),
    }
}

/// Byte `k` of a word loaded from the packet (the target is little-endian: byte 0 is the
/// lowest).
#[inline(always)]
fn byte(word: u64, k: u32) -> u8 {
    (word >> (8 * k)) as u8
}

/// A big-endian 16-bit field from its two bytes as loaded.
#[inline(always)]
fn be(loaded: u16) -> u16 {
    u16::from_be(loaded)
}

#[inline(always)]
fn ipv4(start: usize, end: usize, l3: usize) -> Result<Tcp, Skip> {
    if !within(start, end, l3 + 20) {
        return Err(Skip::Malformed);
    }
    // Bytes 0-7: version/IHL, TOS, total length, id, flags/fragment offset; 8-11: TTL,
    // protocol, checksum.
    let a = load_u64(start, end, l3).ok_or(Skip::Malformed)?;
    let b = load_u32(start, end, l3 + 8).ok_or(Skip::Malformed)?;
    if byte(u64::from(b), 1) != IPPROTO_TCP {
        return Err(Skip::NotTcp);
    }
    let ver_ihl = byte(a, 0);
    let ihl = usize::from(ver_ihl & 0x0f) * 4;
    if ver_ihl >> 4 != 4 || ihl < 20 {
        return Err(Skip::Malformed);
    }
    if be((a >> 48) as u16) & 0x1fff != 0 {
        return Err(Skip::Fragment);
    }
    let total = usize::from(be((a >> 16) as u16));
    // The TCP header must lie inside the datagram (a first fragment too short to hold it is
    // the RFC 1858 "tiny fragment") and inside the frame.
    if total < ihl + 20 {
        return Err(Skip::Malformed);
    }
    tcp(start, end, l3, l3 + ihl, l3 + total, false)
}

#[inline(always)]
fn ipv6(start: usize, end: usize, l3: usize) -> Result<Tcp, Skip> {
    // The whole fixed header: the addresses are read later.
    if !within(start, end, l3 + 40) {
        return Err(Skip::Malformed);
    }
    // Bytes 0-7: version/class/flow, payload length, next header, hop limit.
    let h = load_u64(start, end, l3).ok_or(Skip::Malformed)?;
    let limit = l3 + 40 + usize::from(be((h >> 32) as u16));
    let mut next = byte(h, 6);
    let mut off = l3 + 40;
    // One more round than extension headers, for the TCP header that follows the last one.
    for _ in 0..=MAX_V6_EXT {
        match next {
            IPPROTO_TCP => {
                if byte(h, 0) >> 4 != 6 || off + 20 > limit {
                    return Err(Skip::Malformed);
                }
                return tcp(start, end, l3, off, limit, true);
            }
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let e = u64::from(load_u16(start, end, off).ok_or(Skip::Malformed)?);
                next = byte(e, 0);
                off += (usize::from(byte(e, 1)) + 1) * 8;
            }
            IPV6_AH => {
                let e = u64::from(load_u16(start, end, off).ok_or(Skip::Malformed)?);
                next = byte(e, 0);
                off += (usize::from(byte(e, 1)) + 2) * 4;
            }
            IPV6_FRAGMENT => {
                let e = load_u64(start, end, off).ok_or(Skip::Malformed)?;
                if be((e >> 16) as u16) & 0xfff8 != 0 {
                    return Err(Skip::Fragment);
                }
                next = byte(e, 0);
                off += 8;
            }
            // ICMPv6 (neighbour discovery), UDP, ESP, "no next header", anything else.
            _ => return Err(Skip::NotTcp),
        }
    }
    Err(Skip::Malformed)
}

/// The TCP header at `l4`, in an IP packet that ends at `ip_end` by its own length field.
#[inline(always)]
fn tcp(
    start: usize,
    end: usize,
    l3: usize,
    l4: usize,
    ip_end: usize,
    v6: bool,
) -> Result<Tcp, Skip> {
    if !within(start, end, l4 + 20) {
        return Err(Skip::Malformed);
    }
    let ports = load_u32(start, end, l4).ok_or(Skip::Malformed)?;
    let off_flags = u64::from(load_u16(start, end, l4 + 12).ok_or(Skip::Malformed)?);
    let doff = usize::from(byte(off_flags, 0) >> 4) * 4;
    if doff < 20 {
        return Err(Skip::Malformed);
    }
    let flags = byte(off_flags, 1);
    Ok(Tcp {
        l3,
        v6,
        sport: be(ports as u16),
        dport: be((ports >> 16) as u16),
        syn_only: flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
        consistent: l4 + doff <= ip_end && start + ip_end <= end,
    })
}
