//! `cargo xtask bench --scenario flash-crowd` and `--scenario trace` (issue #13).
//!
//! flash-crowd: an HTTP origin (testsupport's `Origin`) that waits 50 ms before each response
//! head and sends each response at about 200 Mbit/s; 500 clients within one second ask for the
//! same cold 8 MiB object (half whole, half a 64 KiB–1 MiB range somewhere in it), against
//! edgeplane with `[upstream]` and against nginx with `proxy_cache` + `proxy_cache_lock on` +
//! `slice 2m`, each on a fresh cache and its own copy of the object, both pinned to the server
//! CPU. Reported per round: upstream requests and bytes, clients' TTFB p50/p99, errors, when
//! the pull ended, CPU of the server and of this process, and how long the server's busiest
//! thread waited for a CPU. Then, per server over the rounds, the TTFB broken down by client
//! kind (whole / ranged) and arrival (during the pull / after it: a hit), with the kernel's
//! receive timestamp of the first byte (`SO_TIMESTAMPNS`: the server's part of the TTFB; the
//! rest is the client thread waiting for its CPU); a timeline per 100 ms of arrival with the CPU
//! use of both sides; and edgeplane's own `edgeplane_ttfb_seconds`. Whole-object clients
//! compare one 128 KiB block in 8 and let the kernel discard the rest (`--crowd-verify all`
//! compares everything), the same for both servers.
//!
//! trace: replays a Zipf + scan trace through pull-through's admission policy
//! (`edgeplane_dataplane::pull::admission::simulate`, in process) with a tier 10 % of the
//! catalog's bytes; byte hit ratio of TinyLFU vs plain LRU.
//!
//! miss-storm: edgeplane on one core with `[upstream]` pointing at an origin that waits 200 ms
//! before each head and sends 2 MB/s per response. 4 keep-alive clients fetch a 64 KiB object
//! already in the tier (hot hits) for `STORM_SECONDS`, alone, then beside 32 clients that each
//! ask for a new cold 1 MiB object as soon as the previous answer ended (a miss storm: every
//! request a pull, the fetch queue full, some misses 503). Alternated over `--rounds` rounds;
//! reported: hot-hit p50/p99 in each phase and the p99 ratio storm / quiet per round (median,
//! min–max), the figure for "hits on the same core are not slowed by misses".

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use edgeplane_dataplane::pull::admission::{simulate, zipf_scan_trace};
use edgeplane_test_support::metrics::Metrics;
use edgeplane_test_support::origin::Origin;

use crate::bench::BenchArgs;
use crate::server::{start_edgeplane, Server};
use crate::testbed::{free_port, READY_TIMEOUT, SERVER_CPU};
use crate::util::{edgeplane_bin_or_build, find_program, header, load_average};

const OBJECT: usize = 8 << 20;
const CLIENTS: u64 = 500;

/// One client's measurements, in ms; `at` counts from the crowd's start (the first client).
#[derive(Clone, Copy)]
struct Client {
    whole: bool,
    /// When the request went out.
    at: f64,
    /// `connect()` (the kernel's handshake; the server's accept comes later).
    connect: f64,
    /// Request sent → first response byte (when `read` returned it to the client thread).
    ttfb: f64,
    /// Request sent → the first response byte's arrival in the client's socket (the kernel's
    /// receive timestamp, `SO_TIMESTAMPNS`): the server's part of `ttfb`; the rest is the
    /// client thread waiting for its CPU.
    ttfb_kernel: f64,
    /// The first read returned only head bytes (the head did not wait to share a packet with
    /// the body).
    head_alone: bool,
    /// Request sent → first body byte.
    first_body: f64,
    /// Request sent → last body byte.
    done: f64,
}

/// CPU counters at one instant: ticks of the server's processes and of this process, and
/// busy/total jiffies of CPU 0 and CPU 1 (/proc/stat: everything on them, other sessions too).
#[derive(Clone, Default)]
struct CpuSample {
    t: f64,
    server: u64,
    /// Per thread of the server (`/proc/PID/task/TID/schedstat`): id, nanoseconds on a CPU,
    /// nanoseconds runnable but waiting for one.
    server_threads: Vec<(u32, u64, u64)>,
    bench: u64,
    cpu: [(u64, u64); 2],
}

/// One server's flash-crowd result (one round).
struct Crowd {
    server: &'static str,
    upstream_requests: usize,
    upstream_bytes: u64,
    clients: Vec<Client>,
    errors: u64,
    /// When the origin had sent the whole object (ms from the crowd's start): the pull's end.
    pull_done: Option<f64>,
    cpu: Vec<CpuSample>,
    /// edgeplane's own `edgeplane_ttfb_seconds` quantiles after the round (ms).
    server_ttfb: Vec<(String, f64)>,
}

/// The server thread that ran longest over `samples` (edgeplane's executor, nginx's worker).
fn busiest_thread(samples: &[CpuSample]) -> Option<u32> {
    let (first, last) = (samples.first()?, samples.last()?);
    last.server_threads
        .iter()
        .map(|&(tid, run, _)| {
            let before = first
                .server_threads
                .iter()
                .find(|t| t.0 == tid)
                .map_or(0, |t| t.1);
            (run - before, tid)
        })
        .max()
        .map(|(_, tid)| tid)
}

/// Seconds thread `tid` waited for a CPU between samples `a` and `b`.
fn waited(tid: u32, a: &CpuSample, b: &CpuSample) -> f64 {
    let w = |s: &CpuSample| {
        s.server_threads
            .iter()
            .find(|t| t.0 == tid)
            .map_or(0, |t| t.2)
    };
    w(b).saturating_sub(w(a)) as f64 / 1e9
}

/// `p`-quantile of sorted values (NaN when empty).
fn quantile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

/// The finite values, sorted (a client without a kernel timestamp or without a body byte has
/// NaN there).
fn sorted(v: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = v.filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    v
}

pub(crate) fn run(args: &BenchArgs, flash: bool, trace: bool, storm: bool) -> Result<()> {
    // The origin and the clients run in this process: on the client CPU, never the server's.
    let _pinned = crate::testbed::pin_to_client_cpu()?;
    if storm {
        miss_storm(args)?;
    }
    if trace {
        header("trace: Zipf + scan, tier = 10% of the catalog's bytes, TinyLFU vs LRU");
        println!("| scan share of requests | TinyLFU byte hit ratio | LRU byte hit ratio | difference (points) |");
        println!("|---|---|---|---|");
        for scan in [0.0, 0.1, 0.3, 0.5] {
            let (t, sizes) = zipf_scan_trace(5_000, 200_000, 0.9, scan, 13);
            let catalog: u64 = sizes[..5_000].iter().sum();
            let r = simulate(&t, &sizes, catalog / 10);
            println!(
                "| {:.0} % | {:.3} | {:.3} | {:+.1} |",
                scan * 100.0,
                r.tinylfu,
                r.lru,
                (r.tinylfu - r.lru) * 100.0
            );
        }
    }
    if !flash {
        return Ok(());
    }
    let bin = edgeplane_bin_or_build(args.edgeplane_bin.as_deref(), &args.profile)?;
    let nginx = find_program("nginx")?;
    let run_dir =
        std::env::temp_dir().join(format!("edgeplane-flash-crowd-{}", std::process::id()));
    fs::create_dir_all(&run_dir)?;
    let origin = Origin::start();
    origin.set_delay(Duration::from_millis(50));
    origin.set_rate(25_000_000);
    let mut results: Vec<(u32, Crowd)> = Vec::new();
    for round in 0..args.rounds.max(1) {
        let mut order = ["edgeplane", "nginx"];
        if round % 2 == 1 {
            order.reverse();
        }
        for server in order {
            let id = format!("crowd-{server}-{round}.ts");
            origin.put(&id, object().to_vec());
            let dir = run_dir.join(format!("{server}-{round}"));
            fs::create_dir_all(&dir)?;
            let before_bytes = origin.body_bytes();
            let (mut proc, addr, admin) = match server {
                "edgeplane" => {
                    let (p, a, m) = start_edgeplane_pull(&bin, &dir, &origin)?;
                    (p, a, Some(m))
                }
                _ => {
                    let (p, a) = start_nginx_cache(&nginx, &dir, &origin)?;
                    (p, a, None)
                }
            };
            header(&format!(
                "flash-crowd round {round}: {CLIENTS} clients within 1 s against {server}, whole bodies verified: {} (load average {})",
                args.crowd_verify,
                load_average()
            ));
            let pids = crate::testbed::process_tree(proc.pid());
            let mut c = crowd(
                addr,
                &id,
                &origin,
                before_bytes,
                &pids,
                args.crowd_verify == "sampled",
            );
            proc.check_running()?;
            c.server = server;
            c.upstream_requests = origin.requests_for(&id).len();
            c.upstream_bytes = origin.body_bytes() - before_bytes;
            if let Some(admin) = admin {
                // Each core publishes its latency summary once a second.
                thread::sleep(Duration::from_millis(1_200));
                let m = Metrics::parse(&crate::bench_catalog::admin_get(admin, "/metrics")?);
                c.server_ttfb = m
                    .matching("edgeplane_ttfb_seconds", &[])
                    .map(|s| {
                        (
                            s.labels.get("quantile").cloned().unwrap_or_default(),
                            s.value * 1000.0,
                        )
                    })
                    .collect();
            }
            results.push((round, c));
            drop(proc);
        }
    }
    report_crowds(&results);
    let _ = fs::remove_dir_all(&run_dir);
    Ok(())
}

/// Prints the flash-crowd tables: per round, the TTFB breakdown (client kind × arrival during
/// or after the pull), the timeline (TTFB and CPU per 100 ms of arrival) and the server's own
/// TTFB view.
fn report_crowds(results: &[(u32, Crowd)]) {
    println!(
        "\n| server | round | upstream requests | upstream bytes (× object) | TTFB p50 | TTFB p99 | TTFB max | first byte in the socket p99 | errors | pull done at | server CPU-s | server's busiest thread waiting for a CPU | bench CPU-s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let tck = crate::bench_catalog::clock_ticks() as f64;
    for (round, r) in results {
        let t = sorted(r.clients.iter().map(|c| c.ttfb));
        let kt = sorted(r.clients.iter().map(|c| c.ttfb_kernel));
        let (first, last) = (r.cpu.first(), r.cpu.last());
        let cpu_s = |f: fn(&CpuSample) -> u64| match (first, last) {
            (Some(a), Some(b)) => (f(b) - f(a)) as f64 / tck,
            _ => f64::NAN,
        };
        println!(
            "| {} | {round} | {} | {} ({:.2}×) | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {} | {} | {:.2} | {:.2} s | {:.2} |",
            r.server,
            r.upstream_requests,
            r.upstream_bytes,
            r.upstream_bytes as f64 / OBJECT as f64,
            quantile(&t, 0.5),
            quantile(&t, 0.99),
            t.last().copied().unwrap_or(f64::NAN),
            quantile(&kt, 0.99),
            r.errors,
            r.pull_done.map_or("?".into(), |d| format!("{d:.0} ms")),
            cpu_s(|c| c.server),
            match (busiest_thread(&r.cpu), first, last) {
                (Some(tid), Some(a), Some(b)) => waited(tid, a, b),
                _ => f64::NAN,
            },
            cpu_s(|c| c.bench),
        );
    }
    for server in ["edgeplane", "nginx"] {
        let rounds: Vec<&Crowd> = results
            .iter()
            .filter(|(_, r)| r.server == server)
            .map(|(_, r)| r)
            .collect();
        if rounds.is_empty() {
            continue;
        }
        println!(
            "\n{server}: TTFB by client kind and arrival (during = request sent before the origin had sent the whole object), all rounds\n"
        );
        println!("| clients | n | TTFB p50 | TTFB p99 | TTFB max | first byte in the client's socket p50 / p99 / max | head alone in first read | first body byte p50 / p99 | connect p99 |");
        println!("|---|---|---|---|---|---|---|---|---|");
        for whole in [true, false] {
            for during in [true, false] {
                let sel: Vec<Client> = rounds
                    .iter()
                    .flat_map(|r| {
                        let done = r.pull_done.unwrap_or(f64::INFINITY);
                        r.clients
                            .iter()
                            .filter(move |c| c.whole == whole && (c.at < done) == during)
                            .copied()
                    })
                    .collect();
                let t = sorted(sel.iter().map(|c| c.ttfb));
                let b = sorted(sel.iter().map(|c| c.first_body));
                let k = sorted(sel.iter().map(|c| c.connect));
                let kt = sorted(sel.iter().map(|c| c.ttfb_kernel));
                println!(
                    "| {} {} | {} | {:.1} | {:.1} | {:.1} | {:.1} / {:.1} / {:.1} | {}/{} | {:.1} / {:.1} | {:.1} |",
                    if whole { "whole" } else { "ranged" },
                    if during { "during the pull" } else { "after (hits)" },
                    sel.len(),
                    quantile(&t, 0.5),
                    quantile(&t, 0.99),
                    t.last().copied().unwrap_or(f64::NAN),
                    quantile(&kt, 0.5),
                    quantile(&kt, 0.99),
                    kt.last().copied().unwrap_or(f64::NAN),
                    sel.iter().filter(|c| c.head_alone).count(),
                    sel.len(),
                    quantile(&b, 0.5),
                    quantile(&b, 0.99),
                    quantile(&k, 0.99),
                );
            }
        }
        println!("\n{server}: per 100 ms of arrival, all rounds: clients' TTFB; CPU busy in that interval (mean over rounds; server = its processes, bench = this process: clients + origin; CPU 0/1 = everything on them)\n");
        println!("| arrival (ms) | clients | TTFB p50 | TTFB p99 | TTFB max | in socket p99 | server CPU | its busiest thread waiting for a CPU | bench CPU | CPU 0 busy | CPU 1 busy |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        let end = rounds
            .iter()
            .flat_map(|r| r.clients.iter().map(|c| c.at + c.done))
            .fold(0.0f64, f64::max);
        let buckets = ((end / 100.0).ceil() as usize).clamp(1, 40);
        for b in 0..buckets {
            let (lo, hi) = (b as f64 * 100.0, (b + 1) as f64 * 100.0);
            let sel: Vec<&Client> = rounds
                .iter()
                .flat_map(|r| r.clients.iter())
                .filter(|c| c.at >= lo && c.at < hi)
                .collect();
            let t = sorted(sel.iter().map(|c| c.ttfb));
            let kt = sorted(sel.iter().map(|c| c.ttfb_kernel));
            let mut usage = [0.0f64; 5];
            let mut n = 0.0;
            for r in &rounds {
                let at = |ms: f64| r.cpu.iter().rev().find(|s| s.t <= ms).or(r.cpu.first());
                let (Some(a), Some(z)) = (at(lo), at(hi)) else {
                    continue;
                };
                let secs = (z.t - a.t) / 1000.0;
                if secs <= 0.0 {
                    continue;
                }
                usage[0] += (z.server - a.server) as f64 / tck / secs;
                usage[1] += (z.bench - a.bench) as f64 / tck / secs;
                if let Some(tid) = busiest_thread(&r.cpu) {
                    usage[4] += waited(tid, a, z) / secs;
                }
                for i in 0..2 {
                    let (busy, total) = (z.cpu[i].0 - a.cpu[i].0, z.cpu[i].1 - a.cpu[i].1);
                    usage[2 + i] += busy as f64 / (total.max(1)) as f64;
                }
                n += 1.0;
            }
            let pct = |v: f64| {
                if n > 0.0 {
                    format!("{:.0} %", v / n * 100.0)
                } else {
                    "?".into()
                }
            };
            println!(
                "| {lo:.0}–{hi:.0} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} |",
                t.len(),
                quantile(&t, 0.5),
                quantile(&t, 0.99),
                t.last().copied().unwrap_or(f64::NAN),
                quantile(&kt, 0.99),
                pct(usage[0]),
                pct(usage[4]),
                pct(usage[1]),
                pct(usage[2]),
                pct(usage[3]),
            );
        }
        for (i, r) in rounds.iter().enumerate() {
            if !r.server_ttfb.is_empty() {
                println!(
                    "\n{server} round {i}, its own view (edgeplane_ttfb_seconds: request head complete → response head handed to the kernel): {}",
                    r.server_ttfb
                        .iter()
                        .map(|(q, v)| format!("q{q} {v:.2} ms"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
    }
}

fn start_edgeplane_pull(
    bin: &Path,
    dir: &Path,
    origin: &Origin,
) -> Result<(Server, SocketAddr, SocketAddr)> {
    let tier = dir.join("tier");
    fs::create_dir_all(&tier)?;
    let config = dir.join("edgeplane.toml");
    fs::write(
        &config,
        format!(
            "cores = 1\n[http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [signing]\nenabled = false\n[limits]\nmax_connections = 4096\nmax_connections_per_client = 4096\n\
             [[tier]]\nname = \"flash\"\nkind = \"flash\"\npath = \"{}\"\n\
             [upstream]\nurl = \"{}\"\ntier = \"flash\"\nslice_size = \"2M\"\n",
            tier.display(),
            origin.url()
        ),
    )?;
    let (server, ready) = start_edgeplane(
        bin,
        &config,
        &dir.join("edgeplane.log"),
        Some(SERVER_CPU),
        READY_TIMEOUT,
    )?;
    Ok((server, ready.http, ready.admin))
}

fn start_nginx_cache(nginx: &Path, dir: &Path, origin: &Origin) -> Result<(Server, SocketAddr)> {
    fs::create_dir_all(dir.join("tmp"))?;
    fs::create_dir_all(dir.join("cache"))?;
    let addr = free_port()?;
    let conf = dir.join("nginx.conf");
    fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes 1;\npid {p}/nginx.pid;\nevents {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  client_body_temp_path {p}/tmp;\n  proxy_temp_path {p}/tmp;\n\
               fastcgi_temp_path {p}/tmp;\n  uwsgi_temp_path {p}/tmp;\n  scgi_temp_path {p}/tmp;\n\
               proxy_cache_path {p}/cache levels=1:2 keys_zone=pc:10m max_size=10g inactive=60m use_temp_path=off;\n\
               server {{\n    listen {addr};\n    location / {{\n      slice 2m;\n      proxy_cache pc;\n\
                   proxy_cache_key $uri$slice_range;\n      proxy_set_header Range $slice_range;\n\
                   proxy_cache_valid 200 206 1h;\n      proxy_cache_lock on;\n      proxy_cache_lock_timeout 30s;\n\
                   proxy_cache_lock_age 30s;\n      proxy_http_version 1.1;\n      proxy_pass {u};\n    }}\n  }}\n}}\n",
            p = dir.display(),
            u = origin.url(),
        ),
    )?;
    let error_log = dir.join("error.log");
    let mut cmd = Command::new("taskset");
    cmd.arg("-c")
        .arg(SERVER_CPU)
        .arg(nginx)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(&error_log);
    let mut server = Server::spawn("nginx", cmd, &dir.join("stderr.log"))?;
    server
        .wait_for_port(addr, READY_TIMEOUT)
        .with_context(|| format!("nginx did not come up; see {}", error_log.display()))?;
    Ok((server, addr))
}

/// 500 clients spread over one second, with a sampler of CPU use (every 50 ms) and a watch
/// on the origin for the end of the pull; returns every client's timings and the number of
/// errors (connection failures, unexpected status, short or wrong bodies).
fn crowd(
    addr: SocketAddr,
    id: &str,
    origin: &Origin,
    before_bytes: u64,
    pids: &[u32],
    sampled: bool,
) -> Crowd {
    let start = Instant::now() + Duration::from_millis(100);
    let ms = move |t: Instant| {
        t.checked_duration_since(start).map_or_else(
            || -(start - t).as_secs_f64() * 1000.0,
            |d| d.as_secs_f64() * 1000.0,
        )
    };
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut ttfb = Vec::new();
    let mut errors = 0;
    let (pull_done, cpu) = thread::scope(|scope| {
        let stop = &stop;
        let watch = scope.spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if origin.body_bytes() >= before_bytes + OBJECT as u64 {
                    return Some(ms(Instant::now()));
                }
                thread::sleep(Duration::from_millis(1));
            }
            None
        });
        let sampler = scope.spawn(move || {
            let mut v = Vec::new();
            loop {
                let done = stop.load(std::sync::atomic::Ordering::Relaxed);
                v.push(cpu_sample(ms(Instant::now()), pids));
                if done {
                    return v;
                }
                thread::sleep(Duration::from_millis(50));
            }
        });
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let id = id.to_owned();
                thread::spawn(move || {
                    let at = start + Duration::from_micros(i * 1_000_000 / CLIENTS);
                    if let Some(d) = at.checked_duration_since(Instant::now()) {
                        thread::sleep(d);
                    }
                    let range = (i % 2 == 1).then(|| {
                        let len = (64u64 << 10) + (i * 7919 % (960 << 10));
                        let first = (i * 104_729 * 13) % (OBJECT as u64 - len);
                        (first, first + len - 1)
                    });
                    let sample =
                        (sampled && range.is_none()).then_some((i as usize / 2) % SAMPLE_EVERY);
                    one_client(addr, &id, range, sample, start)
                })
            })
            .collect();
        for c in clients {
            match c.join() {
                Ok(Ok(c)) => ttfb.push(c),
                Ok(Err(e)) => {
                    errors += 1;
                    eprintln!("client error: {e:#}");
                }
                Err(_) => errors += 1,
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (
            watch.join().ok().flatten(),
            sampler.join().unwrap_or_default(),
        )
    });
    Crowd {
        server: "",
        upstream_requests: 0,
        upstream_bytes: 0,
        clients: ttfb,
        errors,
        pull_done,
        cpu,
        server_ttfb: Vec::new(),
    }
}

/// CPU counters now (see [`CpuSample`]); zeros where /proc cannot be read.
fn cpu_sample(t: f64, pids: &[u32]) -> CpuSample {
    let server = pids
        .iter()
        .filter_map(|&p| crate::testbed::read_stat(p).ok())
        .map(|s| s.ticks)
        .sum();
    let server_threads = pids
        .iter()
        .filter_map(|p| fs::read_dir(format!("/proc/{p}/task")).ok())
        .flat_map(|d| d.flatten())
        .filter_map(|t| {
            let tid = t.file_name().to_str()?.parse().ok()?;
            let l = fs::read_to_string(t.path().join("schedstat")).ok()?;
            let mut f = l.split_whitespace().map(|x| x.parse::<u64>().ok());
            Some((tid, f.next()??, f.next()??))
        })
        .collect();
    let bench = crate::bench_catalog::cpu_ticks(std::process::id()).unwrap_or(0);
    let mut cpu = [(0, 0); 2];
    if let Ok(stat) = fs::read_to_string("/proc/stat") {
        for (i, name) in ["cpu0", "cpu1"].iter().enumerate() {
            if let Some(f) = crate::testbed::proc_stat_cpu(&stat, name) {
                let total: u64 = f.iter().sum();
                let idle = f[3] + f[4];
                cpu[i] = (total - idle, total);
            }
        }
    }
    CpuSample {
        t,
        server,
        server_threads,
        bench,
        cpu,
    }
}

/// The object's bytes (the same for every server's copy).
fn object() -> &'static [u8] {
    static DATA: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    DATA.get_or_init(|| (0..OBJECT).map(|i| (i * 31 % 251) as u8).collect())
}

/// Whole-object clients compare the body in blocks of this size, one in [`SAMPLE_EVERY`].
const SAMPLE_BLOCK: usize = 128 << 10;
/// One block in this many is compared by a whole-object client; client `i` compares blocks
/// `b` with `b % SAMPLE_EVERY == (i / 2) % SAMPLE_EVERY`, so over the crowd's 250 whole-object
/// clients every block is compared by about 31 of them.
const SAMPLE_EVERY: usize = 8;

/// One client: GET (whole or ranged), time to the first response byte, then the body read as
/// it arrives (no buffering of the body): a ranged body compared byte for byte with the object;
/// a whole one's first read and the blocks `sample` picks compared, the rest discarded by the
/// kernel without a copy (`recv(MSG_TRUNC)`), its length checked exactly. Copying and
/// comparing 250 × 8 MiB within a second kept the client CPU busy enough to delay the clients'
/// own reads (docs/benchmarks.md, flash-crowd); every byte pull-through serves is checked by
/// the pull-through tests.
fn one_client(
    addr: SocketAddr,
    id: &str,
    range: Option<(u64, u64)>,
    sample: Option<usize>,
    crowd_start: Instant,
) -> Result<Client> {
    let before_connect = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    let connect = before_connect.elapsed().as_secs_f64() * 1000.0;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    stamp_arrivals(&s)?;
    let extra = range.map_or(String::new(), |(a, b)| format!("Range: bytes={a}-{b}\r\n"));
    let sent_wall = SystemTime::now();
    let sent = Instant::now();
    write!(
        s,
        "GET /{id} HTTP/1.1\r\nHost: bench\r\n{extra}Connection: close\r\n\r\n"
    )?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = Vec::new();
    // One byte first: its receive timestamp is the first segment's.
    let (n, arrived) = read_stamped(&s, &mut buf[..1])?;
    let ttfb = sent.elapsed().as_secs_f64() * 1000.0;
    if n == 0 {
        bail!("closed before the head");
    }
    let ttfb_kernel = arrived
        .and_then(|t| t.duration_since(sent_wall).ok())
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    let n = n + s.read(&mut buf[1..])?;
    got.extend_from_slice(&buf[..n]);
    let end = loop {
        if let Some(p) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            bail!("closed inside the head");
        }
        got.extend_from_slice(&buf[..n]);
    };
    let head_alone = n <= end;
    let head = String::from_utf8_lossy(&got[..end]).to_string();
    let want_status = if range.is_some() { " 206 " } else { " 200 " };
    if !head.lines().next().unwrap_or("").contains(want_status) {
        bail!("unexpected status: {}", head.lines().next().unwrap_or(""));
    }
    let (a, b) = range.unwrap_or((0, OBJECT as u64 - 1));
    let want = &object()[a as usize..=b as usize];
    let mut pos = got.len() - end;
    if pos > want.len() || got[end..] != want[..pos] {
        bail!("wrong bytes in the first read");
    }
    let mut first_body = (pos > 0).then(|| sent.elapsed());
    while pos < want.len() {
        // A whole-object client compares one block in SAMPLE_EVERY (which one depends on
        // `sample`) and lets the kernel discard the others uncopied (`MSG_TRUNC`); a ranged
        // one compares every byte.
        let block_end = ((pos / SAMPLE_BLOCK + 1) * SAMPLE_BLOCK).min(want.len());
        let compare = sample.is_none_or(|k| (pos / SAMPLE_BLOCK) % SAMPLE_EVERY == k);
        let room = (block_end - pos).min(buf.len());
        let n = if compare {
            s.read(&mut buf[..room])?
        } else {
            discard(&s, &mut buf[..room])?
        };
        if n == 0 {
            break;
        }
        first_body.get_or_insert_with(|| sent.elapsed());
        if compare && buf[..n] != want[pos..pos + n] {
            bail!("wrong bytes at {}", a as usize + pos);
        }
        pos += n;
    }
    if pos != want.len() {
        bail!("body of {pos} bytes, expected {}", want.len());
    }
    if s.read(&mut buf[..1])? != 0 {
        bail!("bytes after the body's {} bytes", want.len());
    }
    let at = sent
        .checked_duration_since(crowd_start)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    Ok(Client {
        whole: range.is_none(),
        at,
        connect,
        ttfb,
        ttfb_kernel,
        head_alone,
        first_body: first_body.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0),
        done: sent.elapsed().as_secs_f64() * 1000.0,
    })
}

/// Receives into `buf`'s length worth of bytes and discards them in the kernel
/// (`recv(MSG_TRUNC)` on TCP: no copy to user space); returns how many.
fn discard(s: &TcpStream, buf: &mut [u8]) -> Result<usize> {
    // SAFETY: `buf` is valid for its length (the kernel does not even write it with MSG_TRUNC).
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_TRUNC,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(n as usize)
}

/// Asks the kernel to stamp received data with its arrival time (`SO_TIMESTAMPNS`).
fn stamp_arrivals(s: &TcpStream) -> Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option value of the size given.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        bail!("SO_TIMESTAMPNS: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// `recvmsg` into `buf`; also returns the receive timestamp of the last segment read
/// (`SCM_TIMESTAMPNS`), if the kernel gave one.
fn read_stamped(s: &TcpStream, buf: &mut [u8]) -> Result<(usize, Option<SystemTime>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 16];
    // SAFETY: msghdr is plain data; every pointer in it refers to a live local above, with its
    // length; the cmsg walk stays inside `control` (CMSG_* check msg_controllen).
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        let n = libc::recvmsg(s.as_raw_fd(), &mut msg, 0);
        if n < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let mut stamp = None;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                stamp = Some(
                    SystemTime::UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32),
                );
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        Ok((n as usize, stamp))
    }
}

const STORM_SECONDS: u64 = 5;
const HOT_CLIENTS: usize = 4;
const STORM_CLIENTS: usize = 32;
const HOT: usize = 64 << 10;
const COLD: usize = 1 << 20;

fn miss_storm(args: &BenchArgs) -> Result<()> {
    let bin = edgeplane_bin_or_build(args.edgeplane_bin.as_deref(), &args.profile)?;
    let dir = std::env::temp_dir().join(format!("edgeplane-miss-storm-{}", std::process::id()));
    fs::create_dir_all(dir.join("tier"))?;
    let hot: Vec<u8> = (0..HOT).map(|i| (i * 7 % 253) as u8).collect();
    fs::write(dir.join("tier").join("hot.ts"), &hot)?;
    let origin = Origin::start();
    origin.set_delay(Duration::from_millis(200));
    origin.set_rate(2_000_000);
    let cold: Vec<u8> = (0..COLD).map(|i| (i * 13 % 251) as u8).collect();
    let (mut proc, addr, _) = start_edgeplane_pull(&bin, &dir, &origin)?;
    header(&format!(
        "miss-storm: {HOT_CLIENTS} hot-hit clients, alone and beside {STORM_CLIENTS} cold-miss clients, {STORM_SECONDS} s each, {} round(s)",
        args.rounds
    ));
    let next_cold = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut put = 0u64;
    let mut rows = Vec::new();
    for round in 0..args.rounds.max(1) {
        let quiet = hot_phase(addr, &hot, None)?;
        // The stormers' ids exist upstream before they ask (kept ahead during the phase).
        let want = next_cold.load(std::sync::atomic::Ordering::Relaxed) + 2 * STORM_CLIENTS as u64;
        while put < want {
            origin.put(&format!("cold-{put}.ts"), cold.clone());
            put += 1;
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stormers: Vec<_> = (0..STORM_CLIENTS)
            .map(|_| {
                let (stop, next) = (stop.clone(), next_cold.clone());
                thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        // A 503 (fetch queue full) is retried with the same id.
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            match drain_get(addr, &format!("cold-{i}.ts")) {
                                Ok(503) => thread::sleep(Duration::from_millis(10)),
                                Ok(_) => {
                                    n += 1;
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    n
                })
            })
            .collect();
        let loud = hot_phase(addr, &hot, Some((&origin, &cold, &next_cold, &mut put)))?;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let storm_answers: u64 = stormers.into_iter().map(|t| t.join().unwrap_or(0)).sum();
        proc.check_running()?;
        let p = |v: &[f64], q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
        println!(
            "round {round}: quiet p50 {:.3} ms p99 {:.3} ms ({} hits); storm p50 {:.3} ms p99 {:.3} ms ({} hits, {storm_answers} miss answers); p99 ratio {:.2}",
            p(&quiet, 0.5), p(&quiet, 0.99), quiet.len(),
            p(&loud, 0.5), p(&loud, 0.99), loud.len(),
            p(&loud, 0.99) / p(&quiet, 0.99)
        );
        rows.push((p(&quiet, 0.99), p(&loud, 0.99)));
    }
    let mut ratios: Vec<f64> = rows.iter().map(|(q, l)| l / q).collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "\n| hot-hit p99, quiet (median) | hot-hit p99, miss storm (median) | ratio storm / quiet (median of rounds) | min–max |\n|---|---|---|---|"
    );
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "| {:.3} ms | {:.3} ms | {:.2} | {:.2}–{:.2} |",
        med(rows.iter().map(|r| r.0).collect()),
        med(rows.iter().map(|r| r.1).collect()),
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    );
    println!(
        "upstream: {} requests, {} body bytes",
        origin.requests().len(),
        origin.body_bytes()
    );
    drop(proc);
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// `HOT_CLIENTS` keep-alive clients GET hot.ts back to back for `STORM_SECONDS`; returns every
/// request's latency (ms), sorted. With `storm`, keeps the origin supplied with cold objects
/// for the stormers meanwhile.
fn hot_phase(
    addr: SocketAddr,
    hot: &[u8],
    storm: Option<(&Origin, &[u8], &std::sync::atomic::AtomicU64, &mut u64)>,
) -> Result<Vec<f64>> {
    let until = Instant::now() + Duration::from_secs(STORM_SECONDS);
    let clients: Vec<_> = (0..HOT_CLIENTS)
        .map(|_| {
            let hot = hot.to_vec();
            thread::spawn(move || -> Result<Vec<f64>> {
                let mut s = TcpStream::connect(addr)?;
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                s.set_nodelay(true)?;
                let mut lat = Vec::new();
                let mut buf = vec![0u8; 256 * 1024];
                while Instant::now() < until {
                    let t = Instant::now();
                    s.write_all(b"GET /hot.ts HTTP/1.1\r\nHost: bench\r\n\r\n")?;
                    let mut got = Vec::new();
                    let want = loop {
                        let n = s.read(&mut buf)?;
                        if n == 0 {
                            bail!("hot connection closed");
                        }
                        got.extend_from_slice(&buf[..n]);
                        if let Some(p) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            if !got.starts_with(b"HTTP/1.1 200") {
                                bail!(
                                    "hot hit answered {:?}",
                                    String::from_utf8_lossy(&got[..12.min(got.len())])
                                );
                            }
                            break p + 4 + hot.len();
                        }
                    };
                    while got.len() < want {
                        let n = s.read(&mut buf)?;
                        if n == 0 {
                            bail!("hot body cut short");
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    if got[want - hot.len()..want] != hot[..] {
                        bail!("wrong hot bytes");
                    }
                }
                Ok(lat)
            })
        })
        .collect();
    if let Some((origin, cold, next, put)) = storm {
        // Stay ahead of the stormers' ids.
        while Instant::now() < until {
            let want = next.load(std::sync::atomic::Ordering::Relaxed) + 2 * STORM_CLIENTS as u64;
            while *put < want {
                origin.put(&format!("cold-{put}.ts"), cold.to_vec());
                *put += 1;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
    let mut all = Vec::new();
    for c in clients {
        all.extend(
            c.join()
                .map_err(|_| anyhow::anyhow!("hot client panicked"))??,
        );
    }
    if all.is_empty() {
        bail!("no hot hits measured");
    }
    all.sort_by(f64::total_cmp);
    Ok(all)
}

/// GET with `Connection: close`, body read to the end and dropped; returns the status.
fn drain_get(addr: SocketAddr, id: &str) -> Result<u16> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "GET /{id} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut first = Vec::new();
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if first.len() < 12 {
            first.extend_from_slice(&buf[..n.min(12)]);
        }
    }
    let status = String::from_utf8_lossy(first.get(9..12).unwrap_or_default())
        .parse()
        .unwrap_or(0);
    Ok(status)
}
