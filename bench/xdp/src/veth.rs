//! Drop rate on a veth: the XDP filter in driver mode against nftables doing the same drop.
//!
//! Two namespaces joined by a veth. The generator namespace transmits TCP SYNs from a source
//! outside the served prefixes to port 80 (`rawbpf::transmit`, pinned to the first CPU). The
//! sink namespace drops them: with the XDP filter attached in driver mode (1k prefixes in its
//! LPM trie), or with nftables (the same 1k prefixes in an interval set) in the netdev ingress
//! hook — nftables' earliest point — and in inet prerouting. The sink's NAPI runs threaded,
//! pinned to the second CPU, so each side has a core; the drop rate is what the sink counted
//! (XDP counters, nft rule counter) over the generator's run time.

use std::fmt::Write as _;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use edgeplane_xdp::frame::{tcp_flags, Frame};
use edgeplane_xdp::{Counter, Filter, FilterSettings, LoadOptions, Mode, Prefix};

use crate::{median, prefixes, rawbpf, Args};

struct Net {
    gen: String,
    sink: String,
    gen_if: String,
    sink_if: String,
}

fn run_cmd(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("{program} {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Net {
    fn create() -> Result<Net> {
        let pid = std::process::id();
        let net = Net {
            gen: format!("xb-gen-{pid}"),
            sink: format!("xb-sink-{pid}"),
            gen_if: format!("xbg{pid}"),
            sink_if: format!("xbs{pid}"),
        };
        run_cmd("ip", &["netns", "add", &net.gen])?;
        run_cmd("ip", &["netns", "add", &net.sink])?;
        run_cmd(
            "ip",
            &[
                "link",
                "add",
                &net.gen_if,
                "netns",
                &net.gen,
                "type",
                "veth",
                "peer",
                "name",
                &net.sink_if,
                "netns",
                &net.sink,
            ],
        )?;
        for (ns, dev) in [(&net.gen, &net.gen_if), (&net.sink, &net.sink_if)] {
            run_cmd("ip", &["-n", ns, "link", "set", dev, "up"])?;
        }
        run_cmd(
            "ip",
            &[
                "-n",
                &net.sink,
                "addr",
                "add",
                "10.99.0.1/24",
                "dev",
                &net.sink_if,
            ],
        )?;
        // NAPI on the sink without an XDP program (the nftables cases), and threaded so it can
        // be pinned to its own CPU.
        net.exec(&net.sink, &["ethtool", "-K", &net.sink_if, "gro", "on"])?;
        net.exec(
            &net.sink,
            &[
                "sh",
                "-c",
                &format!("echo 1 > /sys/class/net/{}/threaded", net.sink_if),
            ],
        )?;
        Ok(net)
    }

    fn exec(&self, ns: &str, args: &[&str]) -> Result<String> {
        let mut full = vec!["netns", "exec", ns];
        full.extend_from_slice(args);
        run_cmd("ip", &full)
    }

    fn mac(&self, ns: &str, dev: &str) -> Result<[u8; 6]> {
        let text = self.exec(ns, &["cat", &format!("/sys/class/net/{dev}/address")])?;
        let bytes: Vec<u8> = text
            .trim()
            .split(':')
            .map(|h| u8::from_str_radix(h, 16))
            .collect::<Result<_, _>>()?;
        bytes.try_into().map_err(|_| anyhow!("bad MAC {text}"))
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.gen, &self.sink] {
            let _ = run_cmd("ip", &["netns", "del", ns]);
        }
    }
}

/// Moves the calling thread into namespace `ns`.
fn enter(ns: &str) -> Result<()> {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}"))?;
    // SAFETY: setns on a namespace descriptor we own; it moves only the calling thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {ns}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Pins thread `tid` (0 = the caller) to `cpu`.
fn pin(tid: libc::pid_t, cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `cpu` is below CPU_SETSIZE for any machine this runs on.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: the set lives on this stack frame for the call.
    if unsafe { libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &set) } != 0 {
        bail!(
            "sched_setaffinity {tid}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Pins the sink's NAPI kthreads (`napi/<dev>-<id>`) to `cpu`; returns how many.
fn pin_napi(dev: &str, cpu: usize) -> Result<usize> {
    let want = format!("napi/{dev}");
    let want = &want[..want.len().min(15)];
    let mut n = 0;
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<libc::pid_t>() else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(want)
            || want.starts_with(comm.trim_end()) && comm.starts_with("napi/")
        {
            pin(pid, cpu)?;
            n += 1;
        }
    }
    Ok(n)
}

/// Transmits `frames` copies of `frame` from the generator namespace on `cpu`.
fn generate(net: &Net, frame: &[u8], frames: u32, cpu: usize) -> Result<Duration> {
    let (ns, dev, frame) = (net.gen.clone(), net.gen_if.clone(), frame.to_vec());
    std::thread::spawn(move || -> Result<Duration> {
        enter(&ns)?;
        pin(0, cpu)?;
        let prog: OwnedFd = rawbpf::load_xdp_tx().context("loading the generator program")?;
        let name = std::ffi::CString::new(dev.clone())?;
        // SAFETY: a valid C string for the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            bail!("{dev}: no such interface");
        }
        rawbpf::transmit(prog.as_raw_fd(), ifindex, &frame, frames, 256)
            .context("BPF_PROG_TEST_RUN live frames (Linux 5.18+)")
    })
    .join()
    .map_err(|_| anyhow!("generator thread panicked"))?
}

struct Case {
    name: &'static str,
    rates: Vec<f64>,
    sent: Vec<f64>,
}

fn nft_ruleset(kind: &str, dev: &str, served: &[Prefix]) -> String {
    let elements: Vec<String> = served.iter().map(ToString::to_string).collect();
    let set = format!(
        "set served {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {} }} }}",
        elements.join(", ")
    );
    match kind {
        "ingress" => format!(
            "table netdev edgeplane_bench {{\n {set}\n chain served_only {{\n  type filter hook ingress device \"{dev}\" priority -500; policy accept;\n  ip saddr != @served tcp dport 80 counter drop\n }}\n}}\n"
        ),
        _ => format!(
            "table ip edgeplane_bench {{\n {set}\n chain served_only {{\n  type filter hook prerouting priority -300; policy accept;\n  ip saddr != @served tcp dport 80 counter drop\n }}\n}}\n"
        ),
    }
}

fn nft_counter(net: &Net, family: &str) -> Result<u64> {
    let text = net.exec(
        &net.sink,
        &["nft", "list", "table", family, "edgeplane_bench"],
    )?;
    let at = text
        .find("counter packets ")
        .ok_or_else(|| anyhow!("no counter in {text}"))?;
    let rest = &text[at + "counter packets ".len()..];
    Ok(rest.split_whitespace().next().unwrap_or("0").parse()?)
}

pub(crate) fn run(args: &Args) -> Result<String> {
    let (gen_cpu, sink_cpu) = (args.cpus[0], *args.cpus.get(1).unwrap_or(&args.cpus[0]));
    let net = Net::create()?;
    let served = prefixes(false, args.veth_prefixes, 7);
    let frame = Frame::tcp(
        "11.22.33.9".parse()?,
        40000,
        "10.99.0.1".parse()?,
        80,
        tcp_flags::SYN,
    )
    .macs(
        net.mac(&net.gen, &net.gen_if)?,
        net.mac(&net.sink, &net.sink_if)?,
    )
    .payload(6)
    .build();
    let source: std::net::IpAddr = "11.22.33.9".parse()?;
    anyhow::ensure!(!served.iter().any(|p| p.contains(source)));

    let mut cases = vec![
        Case {
            name: "XDP (driver mode, LPM trie)",
            rates: vec![],
            sent: vec![],
        },
        Case {
            name: "nftables, netdev ingress hook (interval set)",
            rates: vec![],
            sent: vec![],
        },
        Case {
            name: "nftables, ip prerouting hook (interval set)",
            rates: vec![],
            sent: vec![],
        },
    ];
    let mut napi_pinned = 0;
    for round in 0..args.veth_rounds {
        // XDP: attach in the sink namespace from a thread that lives there.
        let (sink, dev, set) = (net.sink.clone(), net.sink_if.clone(), served.clone());
        let filter = std::thread::spawn(move || -> Result<Filter> {
            enter(&sink)?;
            let mut f = Filter::load(&LoadOptions {
                max_prefixes: 4096,
                pin_dir: None,
            })?;
            f.configure(&FilterSettings {
                enforce: true,
                serving_ports: vec![80],
                ..FilterSettings::default()
            })?;
            f.prefixes().add_many(&set)?;
            f.attach(&dev, Mode::Driver)?;
            Ok(f)
        })
        .join()
        .map_err(|_| anyhow!("sink thread panicked"))??;
        napi_pinned = pin_napi(&net.sink_if, sink_cpu)?;
        let before = filter.counters().read()?[Counter::NotServedDropped as usize];
        let took = generate(&net, &frame, args.frames, gen_cpu)?;
        std::thread::sleep(Duration::from_millis(100));
        let dropped = filter.counters().read()?[Counter::NotServedDropped as usize] - before;
        drop(filter);
        cases[0].rates.push(dropped as f64 / took.as_secs_f64());
        cases[0]
            .sent
            .push(f64::from(args.frames) / took.as_secs_f64());

        for (i, (kind, family)) in [("ingress", "netdev"), ("prerouting", "ip")]
            .into_iter()
            .enumerate()
        {
            let rules = nft_ruleset(kind, &net.sink_if, &served);
            let path = std::env::temp_dir().join(format!("xdpbench-{}.nft", std::process::id()));
            std::fs::write(&path, rules)?;
            net.exec(&net.sink, &["nft", "-f", path.to_str().unwrap_or_default()])?;
            let _ = std::fs::remove_file(&path);
            pin_napi(&net.sink_if, sink_cpu)?;
            let before = nft_counter(&net, family)?;
            let took = generate(&net, &frame, args.frames, gen_cpu)?;
            std::thread::sleep(Duration::from_millis(100));
            let dropped = nft_counter(&net, family)? - before;
            net.exec(
                &net.sink,
                &["nft", "delete", "table", family, "edgeplane_bench"],
            )?;
            cases[i + 1].rates.push(dropped as f64 / took.as_secs_f64());
            cases[i + 1]
                .sent
                .push(f64::from(args.frames) / took.as_secs_f64());
        }
        eprintln!(
            "veth round {}: XDP {:.2} Mpps, nft ingress {:.2} Mpps, nft prerouting {:.2} Mpps",
            round + 1,
            cases[0].rates[round] / 1e6,
            cases[1].rates[round] / 1e6,
            cases[2].rates[round] / 1e6
        );
    }
    let mut out = String::new();
    writeln!(
        out,
        "### Drop rate on a veth ({} frames of {} bytes per run, median of {}, {} prefixes; generator on CPU {gen_cpu}, sink NAPI threads ({napi_pinned}) on CPU {sink_cpu})\n",
        args.frames,
        frame.len(),
        args.veth_rounds,
        args.veth_prefixes
    )?;
    writeln!(
        out,
        "| sink drops with | dropped (Mpps) | generator sent (Mpps) | ratio XDP / this |"
    )?;
    writeln!(out, "|---|---:|---:|---:|")?;
    let xdp = median(cases[0].rates.clone());
    for c in &cases {
        let rate = median(c.rates.clone());
        writeln!(
            out,
            "| {} | {:.2} | {:.2} | {:.2}× |",
            c.name,
            rate / 1e6,
            median(c.sent.clone()) / 1e6,
            xdp / rate
        )?;
    }
    Ok(out)
}
