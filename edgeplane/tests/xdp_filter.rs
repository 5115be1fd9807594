//! The XDP filter under `BPF_PROG_TEST_RUN`: crafted frames in, exact verdicts and counters out.
//!
//! Every frame is checked for the XDP action the program returned and for exactly one global
//! counter moving by exactly one (all others unchanged); per-prefix packets, bytes and drops are
//! checked where a served prefix is involved. Covered: IPv4 and IPv6; 802.1Q and QinQ; IPv4
//! options; IPv6 extension headers (hop-by-hop, routing, destination options, AH, fragment) up
//! to the walk limit and past it; fragments; a truncation at every byte offset of the headers
//! and the payload; allowed and not-allowed sources; enforce and monitor modes; global and
//! per-prefix drain; traffic that must never be touched (ARP, ICMP, ICMPv6, UDP, BGP, SSH, the
//! admin port); prefixes added and removed at runtime; CPUMAP steering.
//!
//! Needs root (or CAP_BPF): skips with the reason printed otherwise.

use std::collections::BTreeMap;
use std::net::IpAddr;

use edgeplane_xdp::frame::{tcp_flags, Ext, Frame, TPID_8021AD, TPID_8021Q};
use edgeplane_xdp::{Counter, Filter, FilterSettings, LoadOptions, Prefix, Verdict, XdpError};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

const SERVING: [u16; 2] = [80, 443];

const V4_NET: &str = "198.51.100.0/24";
const V4_IN: &str = "198.51.100.7";
const V4_OUT: &str = "192.0.2.9";
const V4_SERVER: &str = "203.0.113.1";
const V6_NET: &str = "2001:db8:100::/48";
const V6_IN: &str = "2001:db8:100::7";
const V6_OUT: &str = "2001:db8:200::9";
const V6_SERVER: &str = "2001:db8:ffff::1";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn prefix(s: &str) -> Prefix {
    s.parse().unwrap()
}

fn server_for(src: &str) -> IpAddr {
    if ip(src).is_ipv6() {
        ip(V6_SERVER)
    } else {
        ip(V4_SERVER)
    }
}

/// A new connection's first packet from `src` to `dport`.
fn syn(src: &str, dport: u16) -> Frame {
    Frame::tcp(ip(src), 40000, server_for(src), dport, tcp_flags::SYN)
}

/// A packet of an established flow from `src` to `dport`, with a little payload.
fn data(src: &str, dport: u16) -> Frame {
    Frame::tcp(
        ip(src),
        40000,
        server_for(src),
        dport,
        tcp_flags::ACK | tcp_flags::PSH,
    )
    .payload(100)
}

/// A loaded filter serving `V4_NET` and `V6_NET` on ports 80 and 443.
struct Rig {
    filter: Filter,
    test: &'static str,
}

impl Rig {
    fn new(test: &'static str, enforce: bool) -> Option<Rig> {
        Rig::with(test, enforce, &LoadOptions::default())
    }

    fn with(test: &'static str, enforce: bool, opts: &LoadOptions) -> Option<Rig> {
        let mut filter = edgeplane_test_support::xdp::load(test, opts)?;
        filter
            .configure(&FilterSettings {
                enforce,
                serving_ports: SERVING.to_vec(),
                ..FilterSettings::default()
            })
            .unwrap();
        for p in [V4_NET, V6_NET] {
            filter.prefixes().add(prefix(p), false).unwrap();
        }
        Some(Rig { filter, test })
    }

    fn counters(&self) -> [u64; 9] {
        self.filter.counters().read().unwrap()
    }

    /// Per prefix: (packets, bytes, drops).
    fn stats(&mut self) -> BTreeMap<String, (u64, u64, u64)> {
        self.filter
            .prefixes()
            .stats()
            .unwrap()
            .into_iter()
            .map(|s| (s.entry.prefix.to_string(), (s.packets, s.bytes, s.drops)))
            .collect()
    }

    /// Runs `frame` once: the action must be `counter`'s verdict, and `counter` must be the only
    /// global counter that moved, by exactly one.
    fn expect(&mut self, what: &str, frame: &[u8], counter: Counter) {
        let before = self.counters();
        let run = self
            .filter
            .test_run(frame, 1)
            .unwrap_or_else(|e| panic!("{}: {what}: {e}", self.test));
        let after = self.counters();
        let action = match counter.verdict() {
            Verdict::Pass => XDP_PASS,
            Verdict::Drop => XDP_DROP,
            Verdict::Redirect => XDP_REDIRECT,
        };
        assert_eq!(
            run.action, action,
            "{}: {what}: action (expected {counter:?})",
            self.test
        );
        for c in Counter::ALL {
            let moved = after[c as usize] - before[c as usize];
            assert_eq!(
                moved,
                u64::from(c == counter),
                "{}: {what}: counter {c:?} (expected only {counter:?} to move)",
                self.test
            );
        }
    }

    /// Like [`Rig::expect`], and the prefix `net`'s counters moved by `(packets, bytes, drops)`.
    fn expect_prefix(
        &mut self,
        what: &str,
        frame: &[u8],
        counter: Counter,
        net: &str,
        delta: (u64, u64, u64),
    ) {
        let before = self.stats();
        self.expect(what, frame, counter);
        let after = self.stats();
        for (p, a) in &after {
            let b = before.get(p).copied().unwrap_or_default();
            let want = if p == net { delta } else { (0, 0, 0) };
            assert_eq!(
                (a.0 - b.0, a.1 - b.1, a.2 - b.2),
                want,
                "{}: {what}: counters of {p}",
                self.test
            );
        }
    }
}

#[test]
fn served_sources_pass_and_others_drop_in_enforce_mode() {
    let Some(mut rig) = Rig::new("served_sources_pass_and_others_drop_in_enforce_mode", true)
    else {
        return;
    };
    for (src, net) in [(V4_IN, V4_NET), (V6_IN, V6_NET)] {
        for port in SERVING {
            let f = syn(src, port).build();
            let len = f.len() as u64;
            rig.expect_prefix(
                &format!("SYN {src}→{port}"),
                &f,
                Counter::Allowed,
                net,
                (1, len, 0),
            );
            let f = data(src, port).build();
            let len = f.len() as u64;
            rig.expect_prefix(
                &format!("data {src}→{port}"),
                &f,
                Counter::Allowed,
                net,
                (1, len, 0),
            );
        }
    }
    for src in [V4_OUT, V6_OUT] {
        for port in SERVING {
            rig.expect(
                &format!("SYN {src}→{port}"),
                &syn(src, port).build(),
                Counter::NotServedDropped,
            );
            rig.expect(
                &format!("data {src}→{port}"),
                &data(src, port).build(),
                Counter::NotServedDropped,
            );
        }
    }
    // Totals are exact: 8 allowed, 8 dropped, nothing else.
    let c = rig.counters();
    assert_eq!(c[Counter::Allowed as usize], 8);
    assert_eq!(c[Counter::NotServedDropped as usize], 8);
    assert_eq!(c.iter().sum::<u64>(), 16);
    let v4_bytes: u64 = SERVING
        .iter()
        .map(|&p| (syn(V4_IN, p).build().len() + data(V4_IN, p).build().len()) as u64)
        .sum();
    assert_eq!(rig.stats()[V4_NET], (4, v4_bytes, 0));
}

#[test]
fn monitor_mode_counts_but_passes() {
    let Some(mut rig) = Rig::new("monitor_mode_counts_but_passes", false) else {
        return;
    };
    for src in [V4_OUT, V6_OUT] {
        rig.expect(
            &format!("SYN {src}"),
            &syn(src, 80).build(),
            Counter::NotServedPassed,
        );
    }
    rig.expect("served", &syn(V4_IN, 80).build(), Counter::Allowed);
    let mut f = syn(V4_OUT, 80).build();
    f.truncate(30);
    rig.expect("truncated IPv4", &f, Counter::MalformedPassed);
}

#[test]
fn vlan_and_qinq_tags_are_walked() {
    let Some(mut rig) = Rig::new("vlan_and_qinq_tags_are_walked", true) else {
        return;
    };
    for src in [V4_IN, V6_IN, V4_OUT, V6_OUT] {
        let served = src == V4_IN || src == V6_IN;
        let want = if served {
            Counter::Allowed
        } else {
            Counter::NotServedDropped
        };
        let one = syn(src, 443).vlan(TPID_8021Q, 100).build();
        rig.expect(&format!("802.1Q {src}"), &one, want);
        let two = syn(src, 443)
            .vlan(TPID_8021AD, 100)
            .vlan(TPID_8021Q, 200)
            .build();
        rig.expect(&format!("QinQ {src}"), &two, want);
        // A third tag is more than the filter walks: not its business, passed untouched.
        let three = syn(src, 443)
            .vlan(TPID_8021AD, 1)
            .vlan(TPID_8021Q, 2)
            .vlan(TPID_8021Q, 3)
            .build();
        rig.expect(&format!("three tags {src}"), &three, Counter::NotTcp);
    }
}

#[test]
fn ipv4_options_are_skipped_by_ihl() {
    let Some(mut rig) = Rig::new("ipv4_options_are_skipped_by_ihl", true) else {
        return;
    };
    for options in (4..=40).step_by(4) {
        let f = syn(V4_IN, 80).ipv4_options(options).build();
        assert_eq!(f[14] & 0x0f, (5 + options / 4) as u8);
        rig.expect(
            &format!("IHL with {options} option bytes"),
            &f,
            Counter::Allowed,
        );
        let f = syn(V4_OUT, 80)
            .ipv4_options(options)
            .tcp_options(12)
            .build();
        rig.expect(
            &format!("{options} option bytes, out"),
            &f,
            Counter::NotServedDropped,
        );
    }
}

#[test]
fn ipv6_extension_headers_are_walked_to_tcp() {
    let Some(mut rig) = Rig::new("ipv6_extension_headers_are_walked_to_tcp", true) else {
        return;
    };
    let first_fragment = Ext::Fragment {
        offset: 0,
        more: true,
    };
    let chains: Vec<(&str, Vec<Ext>)> = vec![
        ("hop-by-hop", vec![Ext::HopByHop(1)]),
        ("destination options", vec![Ext::DestOpts(3)]),
        ("routing", vec![Ext::Routing(5)]),
        ("AH", vec![Ext::Auth(6)]),
        ("first fragment", vec![first_fragment]),
        (
            "hop-by-hop, routing, fragment, AH, destination options",
            vec![
                Ext::HopByHop(2),
                Ext::Routing(3),
                first_fragment,
                Ext::Auth(4),
                Ext::DestOpts(1),
            ],
        ),
        ("eight (the walk limit)", vec![Ext::DestOpts(1); 8]),
    ];
    for (name, chain) in &chains {
        for (src, want) in [
            (V6_IN, Counter::Allowed),
            (V6_OUT, Counter::NotServedDropped),
        ] {
            let mut f = syn(src, 80);
            for e in chain {
                f = f.ipv6_ext(*e);
            }
            rig.expect(&format!("{name} from {src}"), &f.build(), want);
        }
    }
    // Nine extension headers: cannot be classified within the walk limit.
    let mut f = syn(V6_IN, 80);
    for _ in 0..9 {
        f = f.ipv6_ext(Ext::DestOpts(1));
    }
    rig.expect(
        "nine extension headers",
        &f.build(),
        Counter::MalformedDropped,
    );
}

#[test]
fn fragments_first_judged_rest_passed() {
    let Some(mut rig) = Rig::new("fragments_first_judged_rest_passed", true) else {
        return;
    };
    // IPv4: the first fragment carries the TCP header and is judged; later ones cannot be.
    let first = data(V4_OUT, 80).ipv4_fragment(0, true).build();
    rig.expect(
        "IPv4 first fragment, out",
        &first,
        Counter::NotServedDropped,
    );
    let first = data(V4_IN, 80).ipv4_fragment(0, true).build();
    rig.expect("IPv4 first fragment, in", &first, Counter::Allowed);
    for (offset, more) in [(1, true), (185, false)] {
        let later = data(V4_OUT, 80).ipv4_fragment(offset, more).build();
        rig.expect(
            &format!("IPv4 fragment at {offset}"),
            &later,
            Counter::Fragment,
        );
    }
    // IPv6: the same through the fragment extension header.
    let frag = |offset: u16, more: bool| Ext::Fragment { offset, more };
    let first = data(V6_OUT, 443).ipv6_ext(frag(0, true)).build();
    rig.expect(
        "IPv6 first fragment, out",
        &first,
        Counter::NotServedDropped,
    );
    let later = data(V6_OUT, 443)
        .ipv6_ext(Ext::HopByHop(1))
        .ipv6_ext(frag(77, false))
        .build();
    rig.expect("IPv6 later fragment", &later, Counter::Fragment);
    // A first fragment too short to hold the TCP header (RFC 1858): total length 20 + 8.
    let mut tiny = data(V4_OUT, 80).ipv4_fragment(0, true).build();
    tiny[16..18].copy_from_slice(&28u16.to_be_bytes());
    rig.expect("tiny first fragment", &tiny, Counter::MalformedDropped);
}

#[test]
fn never_touched_traffic_passes_from_anyone() {
    let Some(mut rig) = Rig::new("never_touched_traffic_passes_from_anyone", true) else {
        return;
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("ARP", Frame::arp(ip(V4_OUT), ip(V4_SERVER)).build()),
        ("ICMP echo", Frame::icmp(ip(V4_OUT), ip(V4_SERVER)).build()),
        (
            "ICMPv6 neighbour solicitation",
            Frame::icmp(ip(V6_OUT), ip(V6_SERVER)).build(),
        ),
        (
            "MLD behind hop-by-hop",
            Frame::icmp(ip(V6_OUT), ip(V6_SERVER))
                .ipv6_ext(Ext::HopByHop(1))
                .build(),
        ),
        (
            "UDP to 80",
            Frame::udp(ip(V4_OUT), 5000, ip(V4_SERVER), 80).build(),
        ),
        (
            "UDP to 443 (v6)",
            Frame::udp(ip(V6_OUT), 5000, ip(V6_SERVER), 443).build(),
        ),
        ("BGP", syn(V4_OUT, 179).build()),
        ("SSH", syn(V4_OUT, 22).build()),
        ("admin port", syn(V6_OUT, 9090).build()),
        ("TCP to 8080", data(V4_OUT, 8080).build()),
        (
            "ICMP in QinQ",
            Frame::icmp(ip(V4_OUT), ip(V4_SERVER))
                .vlan(TPID_8021AD, 5)
                .vlan(TPID_8021Q, 6)
                .build(),
        ),
    ];
    for (name, f) in &cases {
        rig.expect(name, f, Counter::NotTcp);
    }
    let mut ipx = syn(V4_OUT, 80).build();
    ipx[12..14].copy_from_slice(&0x8137u16.to_be_bytes());
    rig.expect("other ethertype", &ipx, Counter::NotTcp);
}

#[test]
fn inconsistent_headers_are_malformed() {
    let Some(mut rig) = Rig::new("inconsistent_headers_are_malformed", true) else {
        return;
    };
    let base = syn(V4_IN, 80).build();
    let mut version = base.clone();
    version[14] = 0x55;
    rig.expect("IPv4 version 5", &version, Counter::MalformedDropped);
    let mut ihl = base.clone();
    ihl[14] = 0x44;
    rig.expect("IHL 4", &ihl, Counter::MalformedDropped);
    let mut doff = base.clone();
    doff[14 + 20 + 12] = 0x40;
    rig.expect("TCP data offset 4", &doff, Counter::MalformedDropped);
    let mut long = base.clone();
    long[16..18].copy_from_slice(&1500u16.to_be_bytes());
    rig.expect(
        "IPv4 length past the frame",
        &long,
        Counter::MalformedDropped,
    );
    let mut v6 = syn(V6_IN, 80).build();
    v6[14] = 0x40;
    rig.expect("IPv6 header with version 4", &v6, Counter::MalformedDropped);
    let mut v6_long = syn(V6_IN, 80).build();
    v6_long[18..20].copy_from_slice(&1000u16.to_be_bytes());
    rig.expect(
        "IPv6 payload length past the frame",
        &v6_long,
        Counter::MalformedDropped,
    );
    // The same damage on a packet to SSH is not the filter's business once the port is known.
    let mut ssh = syn(V4_OUT, 22).build();
    ssh[16..18].copy_from_slice(&1500u16.to_be_bytes());
    rig.expect("IPv4 length past the frame, SSH", &ssh, Counter::NotTcp);
}

/// What the filter must say about `frame` cut to `len` bytes (enforce mode).
struct Cut {
    name: &'static str,
    frame: Frame,
    /// Verdict of the whole frame.
    whole: Counter,
    /// From this length on, a cut frame is no longer malformed but this.
    readable_from: Option<(usize, Counter)>,
}

#[test]
fn a_truncation_at_every_byte_offset() {
    let Some(mut rig) = Rig::new("a_truncation_at_every_byte_offset", true) else {
        return;
    };
    let v4 = syn(V4_IN, 80)
        .vlan(TPID_8021AD, 7)
        .vlan(TPID_8021Q, 8)
        .ipv4_options(12)
        .tcp_options(8)
        .payload(6);
    let v6 = data(V6_OUT, 443)
        .vlan(TPID_8021Q, 9)
        .ipv6_ext(Ext::HopByHop(1))
        .ipv6_ext(Ext::Fragment {
            offset: 0,
            more: true,
        })
        .ipv6_ext(Ext::Auth(4))
        .tcp_options(4)
        .payload(5);
    let ssh = Frame::tcp(ip(V4_OUT), 5555, ip(V4_SERVER), 22, tcp_flags::ACK)
        .ipv4_options(4)
        .payload(10);
    let icmp = Frame::icmp(ip(V4_OUT), ip(V4_SERVER))
        .vlan(TPID_8021Q, 3)
        .payload(8);
    let nd = Frame::icmp(ip(V6_OUT), ip(V6_SERVER)).payload(16);
    let arp = Frame::arp(ip(V4_OUT), ip(V4_SERVER));
    let fragment = data(V4_OUT, 80).ipv4_fragment(3, true).payload(4);
    let cases = [
        Cut {
            name: "IPv4 TCP in QinQ with IP and TCP options",
            whole: Counter::Allowed,
            readable_from: None,
            frame: v4,
        },
        Cut {
            name: "IPv6 TCP in 802.1Q behind hop-by-hop, fragment and AH",
            whole: Counter::NotServedDropped,
            readable_from: None,
            frame: v6,
        },
        Cut {
            name: "IPv4 TCP to SSH",
            whole: Counter::NotTcp,
            // Ethernet, IPv4 with options, the 20-byte TCP header.
            readable_from: Some((14 + 24 + 20, Counter::NotTcp)),
            frame: ssh,
        },
        Cut {
            name: "ICMP in 802.1Q",
            whole: Counter::NotTcp,
            readable_from: Some((18 + 20, Counter::NotTcp)),
            frame: icmp,
        },
        Cut {
            name: "ICMPv6",
            whole: Counter::NotTcp,
            readable_from: Some((14 + 40, Counter::NotTcp)),
            frame: nd,
        },
        Cut {
            name: "ARP",
            whole: Counter::NotTcp,
            readable_from: Some((14, Counter::NotTcp)),
            frame: arp,
        },
        Cut {
            name: "IPv4 later fragment",
            whole: Counter::Fragment,
            readable_from: Some((14 + 20, Counter::Fragment)),
            frame: fragment,
        },
    ];
    for case in &cases {
        let whole = case.frame.build();
        rig.expect(&format!("{}: whole", case.name), &whole, case.whole);
        for len in 14..whole.len() {
            let want = match case.readable_from {
                Some((from, counter)) if len >= from => counter,
                _ => Counter::MalformedDropped,
            };
            rig.expect(
                &format!("{}: cut to {len} of {} bytes", case.name, whole.len()),
                &whole[..len],
                want,
            );
        }
        // Shorter than an Ethernet header: the kernel itself refuses the frame (drivers never
        // deliver one), so the program is never asked.
        for len in [0, 1, 13] {
            let err = rig.filter.test_run(&whole[..len], 1);
            assert!(err.is_err(), "{}: {len}-byte frame was accepted", case.name);
        }
    }
}

#[test]
fn drain_drops_new_connections_only() {
    let Some(mut rig) = Rig::new("drain_drops_new_connections_only", true) else {
        return;
    };
    let syn_ack = Frame::tcp(
        ip(V4_IN),
        40000,
        ip(V4_SERVER),
        80,
        tcp_flags::SYN | tcp_flags::ACK,
    )
    .build();
    // Global drain.
    rig.filter.settings().set_drain(true).unwrap();
    for (src, net) in [(V4_IN, V4_NET), (V6_IN, V6_NET)] {
        rig.expect_prefix(
            &format!("SYN {src}, drained"),
            &syn(src, 80).build(),
            Counter::DrainDropped,
            net,
            (0, 0, 1),
        );
        let f = data(src, 80).build();
        let len = f.len() as u64;
        rig.expect_prefix(
            &format!("established {src}, drained"),
            &f,
            Counter::Allowed,
            net,
            (1, len, 0),
        );
    }
    rig.expect(
        "SYN+ACK is not a new connection",
        &syn_ack,
        Counter::Allowed,
    );
    rig.expect(
        "SYN to SSH, drained",
        &syn(V4_IN, 22).build(),
        Counter::NotTcp,
    );
    // Enforce outranks drain for sources that are not served.
    rig.expect(
        "SYN from outside",
        &syn(V4_OUT, 80).build(),
        Counter::NotServedDropped,
    );
    rig.filter.settings().set_drain(false).unwrap();
    rig.expect(
        "SYN after undrain",
        &syn(V4_IN, 80).build(),
        Counter::Allowed,
    );

    // Per-prefix drain: only that prefix's new connections.
    rig.filter
        .prefixes()
        .set_drain(prefix(V4_NET), true)
        .unwrap()
        .unwrap();
    rig.expect_prefix(
        "SYN v4, prefix drained",
        &syn(V4_IN, 443).build(),
        Counter::DrainDropped,
        V4_NET,
        (0, 0, 1),
    );
    rig.expect(
        "data v4, prefix drained",
        &data(V4_IN, 443).build(),
        Counter::Allowed,
    );
    rig.expect(
        "SYN v6, other prefix",
        &syn(V6_IN, 443).build(),
        Counter::Allowed,
    );
    rig.filter
        .prefixes()
        .set_drain(prefix(V4_NET), false)
        .unwrap()
        .unwrap();
    rig.expect(
        "SYN v4, prefix undrained",
        &syn(V4_IN, 443).build(),
        Counter::Allowed,
    );
    assert_eq!(rig.stats()[V4_NET].2, 2, "drops of {V4_NET}");

    // Monitor mode: a global drain still drops new connections from unserved sources.
    let Some(mut monitor) = Rig::new("drain_drops_new_connections_only", false) else {
        return;
    };
    monitor.filter.settings().set_drain(true).unwrap();
    monitor.expect(
        "SYN from outside, monitor, drained",
        &syn(V4_OUT, 80).build(),
        Counter::DrainDropped,
    );
    monitor.expect(
        "data from outside, monitor, drained",
        &data(V4_OUT, 80).build(),
        Counter::NotServedPassed,
    );
}

#[test]
fn prefixes_change_at_runtime() {
    let Some(mut rig) = Rig::new("prefixes_change_at_runtime", true) else {
        return;
    };
    let src = "192.0.2.77";
    let f = syn(src, 80).build();
    rig.expect("before add", &f, Counter::NotServedDropped);
    let narrow = prefix("192.0.2.64/26");
    let wide = prefix("192.0.0.0/16");
    rig.filter.prefixes().add(wide, false).unwrap();
    rig.expect_prefix(
        "wide added",
        &f,
        Counter::Allowed,
        "192.0.0.0/16",
        (1, f.len() as u64, 0),
    );
    rig.filter.prefixes().add(narrow, false).unwrap();
    // The longest match takes the count.
    rig.expect_prefix(
        "narrow added",
        &f,
        Counter::Allowed,
        "192.0.2.64/26",
        (1, f.len() as u64, 0),
    );
    assert!(rig.filter.prefixes().remove(narrow).unwrap());
    assert!(
        !rig.filter.prefixes().remove(narrow).unwrap(),
        "second remove"
    );
    rig.expect_prefix(
        "narrow removed",
        &f,
        Counter::Allowed,
        "192.0.0.0/16",
        (1, f.len() as u64, 0),
    );
    rig.filter.prefixes().remove(wide).unwrap();
    rig.expect("wide removed", &f, Counter::NotServedDropped);
    // A re-added prefix starts from zero, even in a reused counter slot.
    rig.filter.prefixes().add(narrow, false).unwrap();
    assert_eq!(rig.stats()["192.0.2.64/26"], (0, 0, 0));
    let listed: Vec<String> = rig
        .filter
        .prefixes()
        .list()
        .unwrap()
        .iter()
        .map(|e| e.prefix.to_string())
        .collect();
    assert_eq!(listed, ["192.0.2.64/26", V4_NET, V6_NET]);
}

#[test]
fn capacity_is_enforced() {
    let opts = LoadOptions {
        max_prefixes: 3,
        ..LoadOptions::default()
    };
    let Some(mut rig) = Rig::with("capacity_is_enforced", true, &opts) else {
        return;
    };
    rig.filter
        .prefixes()
        .add(prefix("10.0.0.0/8"), false)
        .unwrap();
    let err = rig
        .filter
        .prefixes()
        .add(prefix("11.0.0.0/8"), false)
        .unwrap_err();
    assert!(matches!(err, XdpError::Full { capacity: 3 }), "{err}");
    // Re-adding an existing prefix is not a new one.
    rig.filter
        .prefixes()
        .add(prefix("10.0.0.0/8"), true)
        .unwrap();
}

#[test]
fn cpumap_steering_redirects_allowed_flows() {
    let Some(mut rig) = Rig::new("cpumap_steering_redirects_allowed_flows", true) else {
        return;
    };
    rig.filter
        .configure(&FilterSettings {
            enforce: true,
            serving_ports: SERVING.to_vec(),
            steer_cpumap: true,
            executor_cpus: vec![0],
            ..FilterSettings::default()
        })
        .unwrap();
    let f = data(V4_IN, 80).build();
    rig.expect_prefix(
        "steered v4",
        &f,
        Counter::Steered,
        V4_NET,
        (1, f.len() as u64, 0),
    );
    rig.expect("steered v6", &data(V6_IN, 80).build(), Counter::Steered);
    rig.expect(
        "outside is still dropped",
        &data(V4_OUT, 80).build(),
        Counter::NotServedDropped,
    );
}

#[test]
fn source_cache_forgets_on_every_prefix_change() {
    let Some(mut rig) = Rig::new("source_cache_forgets_on_every_prefix_change", true) else {
        return;
    };
    let src = "192.0.2.200";
    let f = data(src, 80).build();
    // Cached as "not served" by the first packet, answered from the cache by the second.
    rig.expect("first", &f, Counter::NotServedDropped);
    rig.expect("cached", &f, Counter::NotServedDropped);
    rig.filter
        .prefixes()
        .add(prefix("192.0.2.128/25"), false)
        .unwrap();
    rig.expect("after add", &f, Counter::Allowed);
    rig.expect("cached as served", &f, Counter::Allowed);
    rig.filter
        .prefixes()
        .set_drain(prefix("192.0.2.128/25"), true)
        .unwrap();
    rig.expect(
        "SYN after the prefix drains",
        &syn(src, 80).build(),
        Counter::DrainDropped,
    );
    rig.filter
        .prefixes()
        .remove(prefix("192.0.2.128/25"))
        .unwrap();
    rig.expect("after remove", &f, Counter::NotServedDropped);
    // Sources that share a cache slot evict each other but never borrow each other's answer.
    let mut other = None;
    for i in 0..=255u8 {
        for j in 0..=255u8 {
            let a = [198, 51, i, j];
            let b = [192, 0, 2, 200];
            if edgeplane_ebpf_types::cache_slot_v4(a) == edgeplane_ebpf_types::cache_slot_v4(b) {
                other = Some(std::net::Ipv4Addr::from(a).to_string());
            }
        }
    }
    if let Some(other) = other {
        // 198.51.0.0/16 covers it only when it is in V4_NET's /24.
        let want = if other.starts_with("198.51.100.") {
            Counter::Allowed
        } else {
            Counter::NotServedDropped
        };
        rig.expect("colliding source", &data(&other, 80).build(), want);
        rig.expect("first source again", &f, Counter::NotServedDropped);
    }
}

#[test]
fn trie_walk_without_the_cache_gives_the_same_verdicts() {
    let Some(mut rig) = Rig::new("trie_walk_without_the_cache_gives_the_same_verdicts", true)
    else {
        return;
    };
    rig.filter
        .configure(&FilterSettings {
            enforce: true,
            serving_ports: SERVING.to_vec(),
            no_source_cache: true,
            ..FilterSettings::default()
        })
        .unwrap();
    for _ in 0..2 {
        rig.expect("served v4", &syn(V4_IN, 80).build(), Counter::Allowed);
        rig.expect("served v6", &data(V6_IN, 443).build(), Counter::Allowed);
        rig.expect(
            "outside v4",
            &syn(V4_OUT, 80).build(),
            Counter::NotServedDropped,
        );
        rig.expect(
            "outside v6",
            &data(V6_OUT, 443).build(),
            Counter::NotServedDropped,
        );
    }
}
