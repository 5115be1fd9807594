//! XDP filter benchmarks (not timed tests; `cargo xtask bench-xdp` runs them as root):
//!
//! - `lookup`: ns per packet from `BPF_PROG_TEST_RUN` (the kernel's own timing, ≥ 1M repeats,
//!   median of 5) with 1k, 100k and 1M served prefixes, IPv4 and IPv6, for a source inside a
//!   prefix (pass), outside (drop) and a frame that is not TCP to a serving port.
//! - `veth`: frames per second dropped by the XDP program in driver mode on a veth, against the
//!   same drop done by nftables (netdev ingress hook, and inet prerouting), from the same run: a
//!   generator namespace transmits SYNs from an unserved source with `XDP_TX` under
//!   `BPF_PROG_TEST_RUN` live frames; the sink namespace drops them, its NAPI threaded and pinned
//!   to another CPU than the generator.
//!
//! Output: markdown tables on stdout.

mod rawbpf;
mod veth;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use edgeplane_xdp::frame::{tcp_flags, Frame};
use edgeplane_xdp::{Filter, FilterSettings, LoadOptions, Prefix};

#[derive(Parser)]
#[command(name = "xdpbench", about = "XDP filter benchmarks (root)")]
struct Args {
    /// Which benchmark.
    #[arg(long, value_enum, default_value_t = Which::All)]
    which: Which,
    /// BPF_PROG_TEST_RUN repeats per measurement (lookup).
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// Measurements per cell; the median is reported (lookup).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Prefix counts (lookup).
    #[arg(long, value_delimiter = ',', default_value = "1000,100000,1000000")]
    prefixes: Vec<u32>,
    /// Frames per veth run.
    #[arg(long, default_value_t = 20_000_000)]
    frames: u32,
    /// Served prefixes in the veth runs (the same set in the LPM trie and in the nftables set).
    #[arg(long, default_value_t = 1000)]
    veth_prefixes: u32,
    /// Generator CPU and sink (NAPI) CPU for the veth runs.
    #[arg(long, default_value = "0,1", value_delimiter = ',')]
    cpus: Vec<usize>,
    /// Veth runs per case; the median is reported.
    #[arg(long, default_value_t = 3)]
    veth_rounds: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Lookup,
    Veth,
    All,
}

/// SplitMix64: deterministic prefixes and addresses.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// `n` distinct prefixes shaped like an ISP's: IPv4 /16–/24 in unicast space, IPv6 /32–/48 in
/// 2000::/3.
pub(crate) fn prefixes(v6: bool, n: u32, seed: u64) -> Vec<Prefix> {
    let mut rng = Rng(seed);
    let mut seen = HashSet::with_capacity(n as usize);
    let mut out = Vec::with_capacity(n as usize);
    while out.len() < n as usize {
        let r = rng.next();
        let p = if v6 {
            let len = 32 + (r % 17) as u8;
            let bits = (u128::from(rng.next()) << 64 | u128::from(rng.next())) >> 3;
            let addr = (0b001u128 << 125 | bits) & (u128::MAX << (128 - u32::from(len)));
            Prefix::new(IpAddr::V6(Ipv6Addr::from(addr)), len)
        } else {
            let len = 16 + (r % 9) as u8;
            let addr = (rng.next() as u32) & (u32::MAX << (32 - u32::from(len)));
            let first = addr >> 24;
            if first == 0 || first == 10 || first == 127 || first >= 224 {
                continue;
            }
            Prefix::new(IpAddr::V4(Ipv4Addr::from(addr)), len)
        }
        .expect("masked");
        if seen.insert(p) {
            out.push(p);
        }
    }
    out
}

/// An address inside `p` (host bits from `r`).
fn inside(p: Prefix, r: u64) -> IpAddr {
    match p.addr() {
        IpAddr::V4(a) => {
            let host = (r as u32)
                .checked_shr(u32::from(p.prefix_len()))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) | host))
        }
        IpAddr::V6(a) => {
            let host = u128::from(r)
                .checked_shr(u32::from(p.prefix_len()))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) | host))
        }
    }
}

/// An address no prefix covers (prefix lengths are those [`prefixes`] generates).
fn outside(set: &HashSet<Prefix>, v6: bool, rng: &mut Rng) -> IpAddr {
    loop {
        let candidate = if v6 {
            IpAddr::V6(Ipv6Addr::from(
                0b001u128 << 125 | (u128::from(rng.next()) << 64 | u128::from(rng.next())) >> 3,
            ))
        } else {
            // In the populated unicast space, so the trie walk is as deep as for a real source.
            let a = rng.next() as u32;
            if matches!(a >> 24, 0 | 10 | 127 | 224..) {
                continue;
            }
            IpAddr::V4(Ipv4Addr::from(a))
        };
        let lengths = if v6 { 32..=48u8 } else { 16..=24u8 };
        let covered = lengths.clone().any(|len| {
            let masked = match candidate {
                IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(
                    u32::from(a) & (u32::MAX << (32 - u32::from(len))),
                )),
                IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(
                    u128::from(a) & (u128::MAX << (128 - u32::from(len))),
                )),
            };
            Prefix::new(masked, len).is_ok_and(|p| set.contains(&p))
        });
        if !covered {
            return candidate;
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct LookupRow {
    family: &'static str,
    prefixes: u32,
    load_s: f64,
    /// Source cache on (the default): (pass, drop).
    cached: (f64, f64),
    /// Source cache off: every packet walks the trie: (pass, drop).
    trie: (f64, f64),
    not_tcp_ns: f64,
}

fn lookup(args: &Args) -> Result<Vec<LookupRow>> {
    let mut rows = Vec::new();
    for v6 in [false, true] {
        for &n in &args.prefixes {
            let mut filter = Filter::load(&LoadOptions {
                max_prefixes: n,
                pin_dir: None,
            })
            .context("loading the filter")?;
            filter.configure(&FilterSettings {
                enforce: true,
                serving_ports: vec![80],
                ..FilterSettings::default()
            })?;
            let set = prefixes(v6, n, 0x5eed ^ u64::from(n));
            let start = Instant::now();
            filter.prefixes().add_many(&set)?;
            let load_s = start.elapsed().as_secs_f64();
            let mut rng = Rng(42);
            let server: IpAddr = if v6 {
                "2001:db8::1".parse()?
            } else {
                "203.0.113.1".parse()?
            };
            let hit = inside(set[set.len() / 2], rng.next());
            let lookup: HashSet<Prefix> = set.iter().copied().collect();
            let miss = outside(&lookup, v6, &mut rng);
            let frame = |src| {
                Frame::tcp(src, 40000, server, 80, tcp_flags::ACK)
                    .payload(10)
                    .build()
            };
            let udp = Frame::udp(miss, 5353, server, 53).payload(10).build();
            let cell = |filter: &Filter, f: &[u8], want: u32| -> Result<f64> {
                let mut runs = Vec::new();
                for _ in 0..args.rounds {
                    let r = filter.test_run(f, args.repeat)?;
                    anyhow::ensure!(r.action == want, "action {} != {want}", r.action);
                    runs.push(r.per_run.as_nanos() as f64);
                }
                Ok(median(runs))
            };
            let cached = (
                cell(&filter, &frame(hit), 2)?,
                cell(&filter, &frame(miss), 1)?,
            );
            let not_tcp_ns = cell(&filter, &udp, 2)?;
            filter.configure(&FilterSettings {
                enforce: true,
                serving_ports: vec![80],
                no_source_cache: true,
                ..FilterSettings::default()
            })?;
            let trie = (
                cell(&filter, &frame(hit), 2)?,
                cell(&filter, &frame(miss), 1)?,
            );
            let row = LookupRow {
                family: if v6 { "IPv6" } else { "IPv4" },
                prefixes: n,
                load_s,
                cached,
                trie,
                not_tcp_ns,
            };
            eprintln!(
                "lookup {} {:>8} prefixes: cached pass {:.0} / drop {:.0} ns, trie pass {:.0} / drop {:.0} ns, not TCP {:.0} ns (loaded in {:.1} s)",
                row.family, n, row.cached.0, row.cached.1, row.trie.0, row.trie.1, row.not_tcp_ns, row.load_s
            );
            rows.push(row);
        }
    }
    Ok(rows)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "Linux {}, {} CPUs",
        kernel.trim(),
        std::thread::available_parallelism()?
    );
    if matches!(args.which, Which::Lookup | Which::All) {
        let empty = rawbpf::load_xdp_return(2).context("loading the empty program")?;
        let frame = Frame::tcp(
            "198.51.100.1".parse()?,
            1,
            "203.0.113.1".parse()?,
            80,
            tcp_flags::ACK,
        )
        .payload(10)
        .build();
        let mut runs = Vec::new();
        for _ in 0..args.rounds {
            let ns = rawbpf::time_per_run(empty.as_raw_fd(), &frame, args.repeat)?;
            runs.push(f64::from(ns));
        }
        let harness = median(runs);
        let rows = lookup(&args)?;
        println!(
            "\n### ns per packet, BPF_PROG_TEST_RUN ({} repeats, median of {}; the empty program \
             `return XDP_PASS` takes {harness:.0} ns in the same harness)\n",
            args.repeat, args.rounds
        );
        println!(
            "| family | prefixes | served (pass), cached | unserved (drop), cached | served, trie walk \
             | unserved, trie walk | not TCP to a serving port | loading the prefixes |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for r in &rows {
            println!(
                "| {} | {} | {:.0} ns | {:.0} ns | {:.0} ns | {:.0} ns | {:.0} ns | {:.1} s |",
                r.family,
                r.prefixes,
                r.cached.0,
                r.cached.1,
                r.trie.0,
                r.trie.1,
                r.not_tcp_ns,
                r.load_s
            );
        }
    }
    if matches!(args.which, Which::Veth | Which::All) {
        let report = veth::run(&args)?;
        println!("\n{report}");
    }
    Ok(())
}
