//! Ethernet frames built byte by byte: what the XDP tests feed to `BPF_PROG_TEST_RUN` and what
//! the veth bench transmits. Pure logic; checksums are correct, so the kernel's own checks
//! (which run before netfilter) never drop a generated frame for the wrong reason.

use std::net::IpAddr;

/// 802.1Q tag protocol id.
pub const TPID_8021Q: u16 = 0x8100;
/// 802.1ad (QinQ outer tag) protocol id.
pub const TPID_8021AD: u16 = 0x88a8;

/// TCP flag bits.
pub mod tcp_flags {
    /// FIN
    pub const FIN: u8 = 0x01;
    /// SYN
    pub const SYN: u8 = 0x02;
    /// RST
    pub const RST: u8 = 0x04;
    /// PSH
    pub const PSH: u8 = 0x08;
    /// ACK
    pub const ACK: u8 = 0x10;
}

/// An IPv6 extension header to put before the transport header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ext {
    /// Hop-by-hop options, `n` × 8 bytes (n ≥ 1).
    HopByHop(u8),
    /// Destination options, `n` × 8 bytes.
    DestOpts(u8),
    /// Routing header (type 0 style, segments left 0), `n` × 8 bytes.
    Routing(u8),
    /// Fragment header: offset in 8-byte units, more-fragments flag.
    Fragment {
        /// Offset of this fragment, in 8-byte units.
        offset: u16,
        /// More fragments follow.
        more: bool,
    },
    /// Authentication header, `n` × 4 bytes (n ≥ 3).
    Auth(u8),
}

impl Ext {
    fn protocol(self) -> u8 {
        match self {
            Ext::HopByHop(_) => 0,
            Ext::Routing(_) => 43,
            Ext::Fragment { .. } => 44,
            Ext::Auth(_) => 51,
            Ext::DestOpts(_) => 60,
        }
    }

    fn bytes(self, next: u8) -> Vec<u8> {
        match self {
            Ext::HopByHop(n) | Ext::DestOpts(n) => {
                let len = usize::from(n.max(1)) * 8;
                let mut b = vec![next, n.max(1) - 1];
                // One PadN option filling the rest.
                b.extend([1, (len - 4) as u8]);
                b.resize(len, 0);
                b
            }
            Ext::Routing(n) => {
                let len = usize::from(n.max(1)) * 8;
                let mut b = vec![next, n.max(1) - 1, 0, 0];
                b.resize(len, 0);
                b
            }
            Ext::Fragment { offset, more } => {
                let field = (offset << 3) | u16::from(more);
                let mut b = vec![next, 0];
                b.extend(field.to_be_bytes());
                b.extend(0x1234_5678u32.to_be_bytes());
                b
            }
            Ext::Auth(n) => {
                let len = usize::from(n.max(3)) * 4;
                let mut b = vec![next, n.max(3) - 2];
                b.resize(len, 0);
                b
            }
        }
    }
}

/// What follows the IP header(s).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Transport {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        options: usize,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    Icmp,
}

/// A frame under construction. Build with [`Frame::tcp`], [`Frame::udp`], [`Frame::icmp`] or
/// [`Frame::arp`], adjust, then [`Frame::build`].
#[derive(Debug, Clone)]
pub struct Frame {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vlans: Vec<(u16, u16)>,
    arp: bool,
    src: IpAddr,
    dst: IpAddr,
    ipv4_options: usize,
    ipv4_fragment: (u16, bool),
    ipv6_ext: Vec<Ext>,
    transport: Transport,
    payload: usize,
}

impl Frame {
    fn new(src: IpAddr, dst: IpAddr, transport: Transport) -> Frame {
        Frame {
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            vlans: Vec::new(),
            arp: false,
            src,
            dst,
            ipv4_options: 0,
            ipv4_fragment: (0, false),
            ipv6_ext: Vec::new(),
            transport,
            payload: 0,
        }
    }

    /// TCP from `src:sport` to `dst:dport` with `flags` (see [`tcp_flags`]).
    pub fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8) -> Frame {
        Frame::new(
            src,
            dst,
            Transport::Tcp {
                sport,
                dport,
                flags,
                options: 0,
            },
        )
    }

    /// UDP from `src:sport` to `dst:dport`.
    pub fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Frame {
        Frame::new(src, dst, Transport::Udp { sport, dport })
    }

    /// An ICMP echo request (ICMPv6 neighbour solicitation when the addresses are IPv6).
    pub fn icmp(src: IpAddr, dst: IpAddr) -> Frame {
        Frame::new(src, dst, Transport::Icmp)
    }

    /// An ARP request from `src` for `dst` (IPv4 addresses).
    pub fn arp(src: IpAddr, dst: IpAddr) -> Frame {
        let mut f = Frame::new(src, dst, Transport::Icmp);
        f.arp = true;
        f.dst_mac = [0xff; 6];
        f
    }

    /// Source and destination MAC addresses.
    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Frame {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    /// Adds a VLAN tag (outermost first): `tpid` is [`TPID_8021Q`] or [`TPID_8021AD`].
    pub fn vlan(mut self, tpid: u16, vid: u16) -> Frame {
        self.vlans.push((tpid, vid & 0x0fff));
        self
    }

    /// IPv4 options: `bytes` of NOPs and an end-of-list (rounded up to 4; at most 40).
    pub fn ipv4_options(mut self, bytes: usize) -> Frame {
        self.ipv4_options = bytes.div_ceil(4) * 4;
        self
    }

    /// Makes the IPv4 packet a fragment: `offset` in 8-byte units, more-fragments flag.
    pub fn ipv4_fragment(mut self, offset: u16, more: bool) -> Frame {
        self.ipv4_fragment = (offset, more);
        self
    }

    /// Appends an IPv6 extension header (in order, before the transport header).
    pub fn ipv6_ext(mut self, ext: Ext) -> Frame {
        self.ipv6_ext.push(ext);
        self
    }

    /// TCP options: `bytes` of NOPs (rounded up to 4; at most 40).
    pub fn tcp_options(mut self, bytes: usize) -> Frame {
        if let Transport::Tcp { options, .. } = &mut self.transport {
            *options = bytes.div_ceil(4) * 4;
        }
        self
    }

    /// Payload bytes after the transport header.
    pub fn payload(mut self, bytes: usize) -> Frame {
        self.payload = bytes;
        self
    }

    /// Offset of the IP header in the built frame.
    pub fn l3_offset(&self) -> usize {
        14 + 4 * self.vlans.len()
    }

    /// The frame's bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(128 + self.payload);
        f.extend(self.dst_mac);
        f.extend(self.src_mac);
        for &(tpid, vid) in &self.vlans {
            f.extend(tpid.to_be_bytes());
            f.extend(vid.to_be_bytes());
        }
        if self.arp {
            f.extend(0x0806u16.to_be_bytes());
            f.extend([0, 1, 0x08, 0, 6, 4, 0, 1]);
            f.extend(self.src_mac);
            f.extend(ip_bytes(self.src));
            f.extend([0; 6]);
            f.extend(ip_bytes(self.dst));
            return f;
        }
        let v6 = self.src.is_ipv6();
        f.extend(if v6 { 0x86ddu16 } else { 0x0800u16 }.to_be_bytes());
        let transport = self.transport_bytes(v6);
        if v6 {
            let mut exts = Vec::new();
            let protocol = self.transport_protocol(true);
            let mut chain: Vec<u8> = self.ipv6_ext.iter().map(|e| e.protocol()).collect();
            chain.push(protocol);
            for (i, e) in self.ipv6_ext.iter().enumerate() {
                exts.extend(e.bytes(chain[i + 1]));
            }
            let payload_len = (exts.len() + transport.len()) as u16;
            f.extend([0x60, 0, 0, 0]);
            f.extend(payload_len.to_be_bytes());
            f.push(chain[0]);
            f.push(64);
            f.extend(ip_bytes(self.src));
            f.extend(ip_bytes(self.dst));
            f.extend(exts);
        } else {
            let ihl = 20 + self.ipv4_options;
            let total = (ihl + transport.len()) as u16;
            let (offset, more) = self.ipv4_fragment;
            let frag = (offset & 0x1fff) | if more { 0x2000 } else { 0 };
            let mut h = vec![0x40 | (ihl / 4) as u8, 0];
            h.extend(total.to_be_bytes());
            h.extend(0x4242u16.to_be_bytes());
            h.extend(frag.to_be_bytes());
            h.extend([64, self.transport_protocol(false), 0, 0]);
            h.extend(ip_bytes(self.src));
            h.extend(ip_bytes(self.dst));
            if self.ipv4_options > 0 {
                h.extend(std::iter::repeat_n(1u8, self.ipv4_options - 1));
                h.push(0);
            }
            let sum = checksum(&h, 0);
            h[10..12].copy_from_slice(&sum.to_be_bytes());
            f.extend(h);
        }
        f.extend(transport);
        f
    }

    fn transport_protocol(&self, v6: bool) -> u8 {
        match self.transport {
            Transport::Tcp { .. } => 6,
            Transport::Udp { .. } => 17,
            Transport::Icmp if v6 => 58,
            Transport::Icmp => 1,
        }
    }

    fn transport_bytes(&self, v6: bool) -> Vec<u8> {
        let mut t = match self.transport {
            Transport::Tcp {
                sport,
                dport,
                flags,
                options,
            } => {
                let mut t = Vec::new();
                t.extend(sport.to_be_bytes());
                t.extend(dport.to_be_bytes());
                t.extend(1000u32.to_be_bytes());
                t.extend(
                    if flags & tcp_flags::ACK != 0 {
                        2000u32
                    } else {
                        0
                    }
                    .to_be_bytes(),
                );
                t.push((((20 + options) / 4) as u8) << 4);
                t.push(flags);
                t.extend(64240u16.to_be_bytes());
                t.extend([0, 0, 0, 0]);
                t.extend(std::iter::repeat_n(1u8, options));
                t
            }
            Transport::Udp { sport, dport } => {
                let mut t = Vec::new();
                t.extend(sport.to_be_bytes());
                t.extend(dport.to_be_bytes());
                t.extend(((8 + self.payload) as u16).to_be_bytes());
                t.extend([0, 0]);
                t
            }
            Transport::Icmp if v6 => vec![135, 0, 0, 0, 0, 0, 0, 0],
            Transport::Icmp => vec![8, 0, 0, 0, 0, 1, 0, 1],
        };
        t.extend((0..self.payload).map(|i| (i % 251) as u8));
        let sum_at = match self.transport {
            Transport::Tcp { .. } => 16,
            Transport::Udp { .. } => 6,
            Transport::Icmp => 2,
        };
        let pseudo = if matches!(self.transport, Transport::Icmp) && !v6 {
            0
        } else {
            pseudo_header_sum(self.src, self.dst, self.transport_protocol(v6), t.len())
        };
        let sum = checksum(&t, pseudo);
        t[sum_at..sum_at + 2].copy_from_slice(&sum.to_be_bytes());
        t
    }
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn pseudo_header_sum(src: IpAddr, dst: IpAddr, protocol: u8, len: usize) -> u32 {
    let mut b = ip_bytes(src);
    b.extend(ip_bytes(dst));
    let mut sum = sum16(&b);
    sum += u32::from(protocol);
    sum += (len as u32) & 0xffff;
    sum += (len as u32) >> 16;
    sum
}

fn sum16(b: &[u8]) -> u32 {
    b.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

/// The Internet checksum of `b`, starting from `initial` (a pseudo-header sum).
fn checksum(b: &[u8], initial: u32) -> u16 {
    let mut sum = u64::from(initial) + u64::from(sum16(b));
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_tcp_layout_and_checksums() {
        let f = Frame::tcp(
            ip("192.0.2.1"),
            40000,
            ip("198.51.100.2"),
            80,
            tcp_flags::SYN,
        )
        .ipv4_options(8)
        .payload(3)
        .build();
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(f[14], 0x47, "version 4, IHL 7");
        assert_eq!(u16::from_be_bytes([f[16], f[17]]) as usize, f.len() - 14);
        assert_eq!(checksum(&f[14..42], 0), 0, "IPv4 header checksum verifies");
        let tcp = &f[42..];
        assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), 80);
        assert_eq!(tcp[13], tcp_flags::SYN);
        let pseudo = pseudo_header_sum(ip("192.0.2.1"), ip("198.51.100.2"), 6, tcp.len());
        assert_eq!(checksum(tcp, pseudo), 0, "TCP checksum verifies");
    }

    #[test]
    fn ipv6_extension_chain_links_up() {
        let f = Frame::tcp(ip("2001:db8::1"), 1, ip("2001:db8::2"), 443, tcp_flags::ACK)
            .vlan(TPID_8021AD, 10)
            .vlan(TPID_8021Q, 20)
            .ipv6_ext(Ext::HopByHop(1))
            .ipv6_ext(Ext::Fragment {
                offset: 0,
                more: true,
            })
            .ipv6_ext(Ext::DestOpts(2))
            .build();
        assert_eq!(&f[12..14], &[0x88, 0xa8]);
        assert_eq!(&f[16..18], &[0x81, 0x00]);
        assert_eq!(&f[20..22], &[0x86, 0xdd]);
        let l3 = 22;
        assert_eq!(f[l3 + 6], 0, "first: hop-by-hop");
        let hbh = l3 + 40;
        assert_eq!(f[hbh], 44, "then fragment");
        let frag = hbh + 8;
        assert_eq!(f[frag], 60, "then destination options");
        assert_eq!(
            u16::from_be_bytes([f[frag + 2], f[frag + 3]]) & 1,
            1,
            "M flag"
        );
        let dst = frag + 8;
        assert_eq!(f[dst], 6, "then TCP");
        assert_eq!(f[dst + 1], 1, "16 bytes");
        let payload_len = u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]) as usize;
        assert_eq!(payload_len, f.len() - l3 - 40);
    }

    #[test]
    fn arp_and_icmp_have_their_ethertypes() {
        let a = Frame::arp(ip("192.0.2.1"), ip("192.0.2.2")).build();
        assert_eq!(&a[12..14], &[0x08, 0x06]);
        assert_eq!(a.len(), 42);
        let i = Frame::icmp(ip("2001:db8::1"), ip("2001:db8::2")).build();
        assert_eq!(i[14 + 6], 58);
    }
}
