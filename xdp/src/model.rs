//! A userspace model of the XDP filter's verdict and counters, for differential testing
//! (feature `test-support`): the same frame goes through the real program under
//! `BPF_PROG_TEST_RUN` and through [`Model::judge`], and the two must agree on the action, the
//! one global counter that moves, and the served prefix's packets, bytes and drops.
//!
//! Written from the parsing rules in `docs/xdp.md` ("Parsing rules") over plain byte slices, not
//! from the eBPF code: a bug copied into both would hide. CPUMAP steering is not modelled (a
//! redirect needs a CPUMAP entry the test-run context does not have); the differential checks
//! run without it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use edgeplane_ebpf_types::Counter;

use crate::Prefix;

/// What the filter is set up with.
#[derive(Debug, Clone, Default)]
pub struct Model {
    /// Drop what is not served (else monitor).
    pub enforce: bool,
    /// Global drain: new connections to the serving ports are dropped.
    pub drain: bool,
    /// Serving ports.
    pub serving_ports: Vec<u16>,
    /// Served prefixes, each with its own drain flag.
    pub prefixes: Vec<(Prefix, bool)>,
}

/// The model's answer for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// The global counter that moves by one (its verdict is the action).
    pub counter: Counter,
    /// The served prefix the source matched (index into [`Model::prefixes`]) and how its
    /// counters move: `(packets, bytes, drops)`.
    pub prefix: Option<(usize, (u64, u64, u64))>,
}

/// How a frame classifies before the prefix lookup.
enum Class {
    /// TCP to some port: source address, destination port, SYN without ACK, and whether the
    /// IP and TCP lengths agree with each other and the frame.
    Tcp {
        src: IpAddr,
        dport: u16,
        syn_only: bool,
        consistent: bool,
    },
    NotTcp,
    Fragment,
    Malformed,
}

const MAX_V6_EXT: usize = 8;

impl Model {
    /// Sets a freshly loaded `filter` up as this model says: enforce or monitor, the serving
    /// ports, the global drain, the prefixes with their drain flags; no CPUMAP steering.
    pub fn apply(&self, filter: &mut crate::Filter) -> Result<(), crate::XdpError> {
        filter.configure(&crate::FilterSettings {
            enforce: self.enforce,
            serving_ports: self.serving_ports.clone(),
            ..crate::FilterSettings::default()
        })?;
        filter.settings().set_drain(self.drain)?;
        for (p, drain) in &self.prefixes {
            filter.prefixes().add(*p, *drain)?;
        }
        Ok(())
    }

    /// What the filter must do with `frame`.
    pub fn judge(&self, frame: &[u8]) -> Expected {
        let only = |counter| Expected {
            counter,
            prefix: None,
        };
        let malformed = if self.enforce {
            Counter::MalformedDropped
        } else {
            Counter::MalformedPassed
        };
        let (src, syn_only) = match classify(frame) {
            Class::NotTcp => return only(Counter::NotTcp),
            Class::Fragment => return only(Counter::Fragment),
            Class::Malformed => return only(malformed),
            Class::Tcp { dport, .. } if !self.serving_ports.contains(&dport) => {
                return only(Counter::NotTcp)
            }
            Class::Tcp {
                consistent: false, ..
            } => return only(malformed),
            Class::Tcp { src, syn_only, .. } => (src, syn_only),
        };
        // Longest served prefix containing the source.
        let found = self
            .prefixes
            .iter()
            .enumerate()
            .filter(|(_, (p, _))| p.contains(src))
            .max_by_key(|(_, (p, _))| p.prefix_len());
        let Some((index, (_, prefix_drain))) = found else {
            let counter = if self.enforce {
                Counter::NotServedDropped
            } else if syn_only && self.drain {
                Counter::DrainDropped
            } else {
                Counter::NotServedPassed
            };
            return only(counter);
        };
        if syn_only && (self.drain || *prefix_drain) {
            return Expected {
                counter: Counter::DrainDropped,
                prefix: Some((index, (0, 0, 1))),
            };
        }
        Expected {
            counter: Counter::Allowed,
            prefix: Some((index, (1, frame.len() as u64, 0))),
        }
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn classify(f: &[u8]) -> Class {
    let Some(mut ethertype) = be16(f, 12) else {
        return Class::Malformed;
    };
    let mut l3 = 14;
    // At most two VLAN tags (802.1Q, or 802.1ad then 802.1Q).
    for _ in 0..2 {
        if ethertype == 0x8100 || ethertype == 0x88a8 {
            match be16(f, l3 + 2) {
                Some(t) => ethertype = t,
                None => return Class::Malformed,
            }
            l3 += 4;
        }
    }
    match ethertype {
        0x0800 => ipv4(f, l3),
        0x86dd => ipv6(f, l3),
        _ => Class::NotTcp,
    }
}

fn ipv4(f: &[u8], l3: usize) -> Class {
    let Some(h) = f.get(l3..l3 + 20) else {
        return Class::Malformed;
    };
    if h[9] != 6 {
        return Class::NotTcp;
    }
    let version = h[0] >> 4;
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if version != 4 || ihl < 20 {
        return Class::Malformed;
    }
    let frag_offset = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
    if frag_offset != 0 {
        return Class::Fragment;
    }
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if total < ihl + 20 {
        return Class::Malformed;
    }
    let src = IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15]));
    tcp(f, l3 + ihl, l3 + total, src)
}

fn ipv6(f: &[u8], l3: usize) -> Class {
    let Some(h) = f.get(l3..l3 + 40) else {
        return Class::Malformed;
    };
    let end = l3 + 40 + usize::from(u16::from_be_bytes([h[4], h[5]]));
    let mut next = h[6];
    let mut at = l3 + 40;
    let src: [u8; 16] = h[8..24].try_into().expect("16 bytes");
    let src = IpAddr::V6(Ipv6Addr::from(src));
    let mut walked = 0;
    loop {
        match next {
            6 => {
                if h[0] >> 4 != 6 || at + 20 > end {
                    return Class::Malformed;
                }
                return tcp(f, at, end, src);
            }
            // Hop-by-hop, routing, destination options: length in 8-octet units, not counting
            // the first 8.
            0 | 43 | 60 => {
                let Some(e) = f.get(at..at + 2) else {
                    return Class::Malformed;
                };
                next = e[0];
                at += (usize::from(e[1]) + 1) * 8;
            }
            // AH: length in 4-octet units, minus 2.
            51 => {
                let Some(e) = f.get(at..at + 2) else {
                    return Class::Malformed;
                };
                next = e[0];
                at += (usize::from(e[1]) + 2) * 4;
            }
            // Fragment header: 8 octets; a non-zero offset is a later fragment.
            44 => {
                let Some(e) = f.get(at..at + 8) else {
                    return Class::Malformed;
                };
                if u16::from_be_bytes([e[2], e[3]]) >> 3 != 0 {
                    return Class::Fragment;
                }
                next = e[0];
                at += 8;
            }
            _ => return Class::NotTcp,
        }
        walked += 1;
        // More extension headers than the filter walks before TCP.
        if walked > MAX_V6_EXT {
            return Class::Malformed;
        }
    }
}

/// The TCP header at `l4` of an IP packet that ends at `ip_end` by its own length.
fn tcp(f: &[u8], l4: usize, ip_end: usize, src: IpAddr) -> Class {
    let Some(t) = f.get(l4..l4 + 20) else {
        return Class::Malformed;
    };
    let doff = usize::from(t[12] >> 4) * 4;
    if doff < 20 {
        return Class::Malformed;
    }
    let flags = t[13];
    Class::Tcp {
        src,
        dport: u16::from_be_bytes([t[2], t[3]]),
        syn_only: flags & 0x12 == 0x02,
        consistent: l4 + doff <= ip_end && ip_end <= f.len(),
    }
}

/// Runs `frame` through the loaded `filter` once (`BPF_PROG_TEST_RUN`) and checks it against
/// `model`: the action, exactly one global counter moving by one, and the served prefixes'
/// packets, bytes and drops. The filter must be configured as the model says (same enforce,
/// drain, ports and prefixes, no CPUMAP steering). A disagreement comes back as one message
/// with the frame in hex. Frames under 14 bytes are not run (the kernel refuses them, as drivers
/// never deliver them).
pub fn check(filter: &mut crate::Filter, model: &Model, frame: &[u8]) -> Result<(), String> {
    if frame.len() < 14 {
        return Ok(());
    }
    let expected = model.judge(frame);
    let stats = |filter: &mut crate::Filter| -> Result<Vec<(u64, u64, u64)>, String> {
        let all = filter.prefixes().stats().map_err(|e| e.to_string())?;
        Ok(model
            .prefixes
            .iter()
            .map(|(p, _)| {
                all.iter()
                    .find(|s| s.entry.prefix == *p)
                    .map_or((0, 0, 0), |s| (s.packets, s.bytes, s.drops))
            })
            .collect())
    };
    let counters_before = filter.counters().read().map_err(|e| e.to_string())?;
    let stats_before = stats(filter)?;
    let run = filter.test_run(frame, 1).map_err(|e| e.to_string())?;
    let counters_after = filter.counters().read().map_err(|e| e.to_string())?;
    let stats_after = stats(filter)?;
    let mut problems = Vec::new();
    let action = match expected.counter.verdict() {
        edgeplane_ebpf_types::Verdict::Pass => 2,
        edgeplane_ebpf_types::Verdict::Drop => 1,
        edgeplane_ebpf_types::Verdict::Redirect => 4,
    };
    if run.action != action {
        problems.push(format!("action {} (model: {action})", run.action));
    }
    for c in Counter::ALL {
        let moved = counters_after[c as usize] - counters_before[c as usize];
        let want = u64::from(c == expected.counter);
        if moved != want {
            problems.push(format!("counter {c:?} moved by {moved} (model: {want})"));
        }
    }
    for (i, (p, _)) in model.prefixes.iter().enumerate() {
        let (a, b) = (stats_after[i], stats_before[i]);
        let moved = (a.0 - b.0, a.1 - b.1, a.2 - b.2);
        let want = match expected.prefix {
            Some((j, delta)) if j == i => delta,
            _ => (0, 0, 0),
        };
        if moved != want {
            problems.push(format!(
                "prefix {p}: (packets, bytes, drops) moved by {moved:?} (model: {want:?})"
            ));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
    Err(format!(
        "XDP program and model disagree on a {}-byte frame (model: {:?}): {}\nframe: {hex}",
        frame.len(),
        expected.counter,
        problems.join("; ")
    ))
}

/// A frame from a stream of choices (`next(n)` returns a number below `n`): a structured TCP,
/// UDP, ICMP or ARP frame over IPv4 or IPv6 with VLAN tags, IPv4 options, fragments, IPv6
/// extension headers and TCP options drawn from the choices, from sources inside and outside
/// `model`'s prefixes, then often mutated (truncated, bytes overwritten, length fields
/// rewritten). Shared by the differential test (a seeded generator) and the fuzz target (the
/// fuzzer's bytes).
pub fn frame(model: &Model, next: &mut dyn FnMut(u32) -> u32) -> Vec<u8> {
    use crate::frame::{tcp_flags, Ext, Frame, TPID_8021AD, TPID_8021Q};
    let v6 = next(2) == 1;
    let src = match (
        next(3),
        model
            .prefixes
            .get(next(model.prefixes.len().max(1) as u32) as usize),
    ) {
        // Inside a served prefix: its network address with some host bits.
        (0 | 1, Some((p, _))) => match (p.addr(), v6) {
            (IpAddr::V4(a), false) => IpAddr::V4(Ipv4Addr::from(u32::from(a) | next(256))),
            (IpAddr::V6(a), true) => {
                IpAddr::V6(Ipv6Addr::from(u128::from(a) | u128::from(next(65536))))
            }
            _ => random_ip(v6, next),
        },
        _ => random_ip(v6, next),
    };
    let dst = random_ip(v6, next);
    let ports = &model.serving_ports;
    let dport = match (next(4), ports.is_empty()) {
        (0..=2, false) => ports[next(ports.len() as u32) as usize],
        _ => [22, 179, 443, 8080, 9090, 53][next(6) as usize],
    };
    let flag_sets = [
        tcp_flags::SYN,
        tcp_flags::SYN | tcp_flags::ACK,
        tcp_flags::ACK,
        tcp_flags::ACK | tcp_flags::PSH,
        tcp_flags::FIN | tcp_flags::ACK,
        tcp_flags::RST,
    ];
    let mut f = match next(10) {
        0 => Frame::udp(src, 5000, dst, dport),
        1 => Frame::icmp(src, dst),
        2 => Frame::arp(src, dst),
        _ => Frame::tcp(src, 40000, dst, dport, flag_sets[next(6) as usize]),
    };
    for _ in 0..next(4) {
        let tpid = if next(2) == 0 {
            TPID_8021Q
        } else {
            TPID_8021AD
        };
        f = f.vlan(tpid, next(4096) as u16);
    }
    if !v6 {
        if next(4) == 0 {
            f = f.ipv4_options(next(41) as usize);
        }
        if next(5) == 0 {
            f = f.ipv4_fragment(next(3) as u16, next(2) == 1);
        }
    } else {
        for _ in 0..next(11) {
            let ext = match next(5) {
                0 => Ext::HopByHop(1 + next(3) as u8),
                1 => Ext::DestOpts(1 + next(3) as u8),
                2 => Ext::Routing(1 + next(3) as u8),
                3 => Ext::Auth(3 + next(3) as u8),
                _ => Ext::Fragment {
                    offset: next(3) as u16,
                    more: next(2) == 1,
                },
            };
            f = f.ipv6_ext(ext);
        }
    }
    if next(3) == 0 {
        f = f.tcp_options(next(41) as usize);
    }
    f = f.payload(next(4) as usize * next(400) as usize);
    let mut bytes = f.build();
    // Mutations: what no builder makes.
    for _ in 0..next(4) {
        if bytes.is_empty() {
            break;
        }
        match next(4) {
            0 => bytes.truncate(next(bytes.len() as u32 + 1) as usize),
            1 => {
                let at = next(bytes.len() as u32) as usize;
                bytes[at] = next(256) as u8;
            }
            2 => {
                // A header byte: the first 80 bytes hold every length and type field.
                let at = next(bytes.len().min(80) as u32) as usize;
                bytes[at] ^= 1 << next(8);
            }
            _ => bytes.extend((0..next(64)).map(|_| next(256) as u8)),
        }
    }
    bytes
}

fn random_ip(v6: bool, next: &mut dyn FnMut(u32) -> u32) -> IpAddr {
    if v6 {
        let words: [u32; 4] = std::array::from_fn(|_| next(u32::MAX));
        let v = words
            .iter()
            .fold(0u128, |acc, w| (acc << 32) | u128::from(*w));
        IpAddr::V6(Ipv6Addr::from(v))
    } else {
        IpAddr::V4(Ipv4Addr::from(next(u32::MAX)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{tcp_flags, Frame};

    fn model() -> Model {
        Model {
            enforce: true,
            drain: false,
            serving_ports: vec![80],
            prefixes: vec![
                ("198.51.100.0/24".parse().unwrap(), false),
                ("198.51.100.128/25".parse().unwrap(), true),
            ],
        }
    }

    fn syn(src: &str, dport: u16) -> Vec<u8> {
        Frame::tcp(
            src.parse().unwrap(),
            4000,
            "203.0.113.1".parse().unwrap(),
            dport,
            tcp_flags::SYN,
        )
        .build()
    }

    #[test]
    fn longest_prefix_and_its_drain() {
        let m = model();
        let e = m.judge(&syn("198.51.100.7", 80));
        assert_eq!(e.counter, Counter::Allowed);
        assert_eq!(e.prefix.map(|p| p.0), Some(0));
        let e = m.judge(&syn("198.51.100.200", 80));
        assert_eq!(e.counter, Counter::DrainDropped);
        assert_eq!(e.prefix, Some((1, (0, 0, 1))));
    }

    #[test]
    fn other_ports_and_sources() {
        let m = model();
        assert_eq!(m.judge(&syn("192.0.2.1", 22)).counter, Counter::NotTcp);
        assert_eq!(
            m.judge(&syn("192.0.2.1", 80)).counter,
            Counter::NotServedDropped
        );
        let f = syn("198.51.100.7", 80);
        assert_eq!(m.judge(&f[..30]).counter, Counter::MalformedDropped);
    }
}
