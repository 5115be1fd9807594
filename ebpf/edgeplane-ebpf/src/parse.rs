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

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Classifies the frame `start..end`.
#[inline(always)]
pub(crate) fn parse(start: usize, end: usize) -> Result<Tcp, Skip> {
    let mut proto = be16(bytes(start, end, 12).ok_or(Skip::Malformed)?);
    let mut off = ETH_HLEN;
    // Up to two tags: 802.1Q, or 802.1ad (QinQ outer) followed by 802.1Q. Each is 2 bytes of
    // TCI, then the next ethertype.
    for _ in 0..2 {
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            proto = be16(bytes(start, end, off + 2).ok_or(Skip::Malformed)?);
            off += 4;
        }
    }
    match proto {
        ETH_P_IP => ipv4(start, end, off),
        ETH_P_IPV6 => ipv6(start, end, off),
        _ => Err(Skip::NotTcp),
    }
}

#[inline(always)]
fn ipv4(start: usize, end: usize, l3: usize) -> Result<Tcp, Skip> {
    let h: [u8; 20] = bytes(start, end, l3).ok_or(Skip::Malformed)?;
    if h[9] != IPPROTO_TCP {
        return Err(Skip::NotTcp);
    }
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return Err(Skip::Malformed);
    }
    if be16([h[6], h[7]]) & 0x1fff != 0 {
        return Err(Skip::Fragment);
    }
    let total = usize::from(be16([h[2], h[3]]));
    // The TCP header must lie inside the datagram (a first fragment too short to hold it is
    // the RFC 1858 "tiny fragment") and inside the frame.
    if total < ihl + 20 {
        return Err(Skip::Malformed);
    }
    tcp(start, end, l3, l3 + ihl, l3 + total, false)
}

#[inline(always)]
fn ipv6(start: usize, end: usize, l3: usize) -> Result<Tcp, Skip> {
    let h: [u8; 8] = bytes(start, end, l3).ok_or(Skip::Malformed)?;
    // The whole fixed header: the addresses are read later.
    bytes::<32>(start, end, l3 + 8).ok_or(Skip::Malformed)?;
    let limit = l3 + 40 + usize::from(be16([h[4], h[5]]));
    let mut next = h[6];
    let mut off = l3 + 40;
    // One more round than extension headers, for the TCP header that follows the last one.
    for _ in 0..=MAX_V6_EXT {
        match next {
            IPPROTO_TCP => {
                if h[0] >> 4 != 6 || off + 20 > limit {
                    return Err(Skip::Malformed);
                }
                return tcp(start, end, l3, off, limit, true);
            }
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let e: [u8; 2] = bytes(start, end, off).ok_or(Skip::Malformed)?;
                next = e[0];
                off += (usize::from(e[1]) + 1) * 8;
            }
            IPV6_AH => {
                let e: [u8; 2] = bytes(start, end, off).ok_or(Skip::Malformed)?;
                next = e[0];
                off += (usize::from(e[1]) + 2) * 4;
            }
            IPV6_FRAGMENT => {
                let e: [u8; 8] = bytes(start, end, off).ok_or(Skip::Malformed)?;
                if be16([e[2], e[3]]) & 0xfff8 != 0 {
                    return Err(Skip::Fragment);
                }
                next = e[0];
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
    let th: [u8; 20] = bytes(start, end, l4).ok_or(Skip::Malformed)?;
    let doff = usize::from(th[12] >> 4) * 4;
    if doff < 20 {
        return Err(Skip::Malformed);
    }
    let flags = th[13];
    Ok(Tcp {
        l3,
        v6,
        sport: be16([th[0], th[1]]),
        dport: be16([th[2], th[3]]),
        syn_only: flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
        consistent: l4 + doff <= ip_end && start + ip_end <= end,
    })
}
