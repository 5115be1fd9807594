//! `cargo xtask bench --scenario flash-crowd` and `--scenario trace` (issue #13).
//!
//! flash-crowd: an HTTP origin (testsupport's `Origin`) that waits 50 ms before each response
//! head and sends each response at about 200 Mbit/s; 500 clients within one second ask for the
//! same cold 8 MiB object (half whole, half a 64 KiB–1 MiB range somewhere in it), against
//! edgeplane with `[upstream]` and against nginx with `proxy_cache` + `proxy_cache_lock on` +
//! `slice 2m`, each on a fresh cache and its own copy of the object, both pinned to the server
//! CPU. Reported: upstream requests and bytes, clients' TTFB p50/p99, errors.
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
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use edgeplane_dataplane::pull::admission::{simulate, zipf_scan_trace};
use edgeplane_test_support::origin::Origin;

use crate::bench::BenchArgs;
use crate::server::{start_edgeplane, Server};
use crate::testbed::{free_port, READY_TIMEOUT, SERVER_CPU};
use crate::util::{edgeplane_bin_or_build, find_program, header};

const OBJECT: usize = 8 << 20;
const CLIENTS: u64 = 500;

/// One server's flash-crowd result.
struct Crowd {
    server: &'static str,
    upstream_requests: usize,
    upstream_bytes: u64,
    ttfb_ms: Vec<f64>,
    errors: u64,
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
    let mut results = Vec::new();
    for server in ["edgeplane", "nginx"] {
        let id = format!("crowd-{server}.ts");
        origin.put(&id, object().to_vec());
        let dir = run_dir.join(server);
        fs::create_dir_all(&dir)?;
        let before_bytes = origin.body_bytes();
        let (mut proc, addr) = match server {
            "edgeplane" => start_edgeplane_pull(&bin, &dir, &origin)?,
            _ => start_nginx_cache(&nginx, &dir, &origin)?,
        };
        header(&format!(
            "flash-crowd: {CLIENTS} clients within 1 s against {server}"
        ));
        let (ttfb_ms, errors) = crowd(addr, &id);
        proc.check_running()?;
        results.push(Crowd {
            server,
            upstream_requests: origin.requests_for(&id).len(),
            upstream_bytes: origin.body_bytes() - before_bytes,
            ttfb_ms,
            errors,
        });
        drop(proc);
    }
    println!(
        "\n| server | upstream requests | upstream bytes (× object) | TTFB p50 | TTFB p99 | TTFB max | errors |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in &results {
        let mut t = r.ttfb_ms.clone();
        t.sort_by(f64::total_cmp);
        let q = |p: f64| {
            t.get(((t.len() as f64 * p) as usize).min(t.len().saturating_sub(1)))
                .copied()
                .unwrap_or(f64::NAN)
        };
        println!(
            "| {} | {} | {} ({:.2}×) | {:.1} ms | {:.1} ms | {:.1} ms | {} |",
            r.server,
            r.upstream_requests,
            r.upstream_bytes,
            r.upstream_bytes as f64 / OBJECT as f64,
            q(0.5),
            q(0.99),
            t.last().copied().unwrap_or(f64::NAN),
            r.errors
        );
    }
    let _ = fs::remove_dir_all(&run_dir);
    Ok(())
}

fn start_edgeplane_pull(bin: &Path, dir: &Path, origin: &Origin) -> Result<(Server, SocketAddr)> {
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
    Ok((server, ready.http))
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

/// 500 clients spread over one second; returns their TTFBs (ms) and the number of errors
/// (connection failures, unexpected status, short or wrong bodies).
fn crowd(addr: SocketAddr, id: &str) -> (Vec<f64>, u64) {
    let start = Instant::now() + Duration::from_millis(100);
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
                one_client(addr, &id, range)
            })
        })
        .collect();
    let mut ttfb = Vec::new();
    let mut errors = 0;
    for c in clients {
        match c.join() {
            Ok(Ok(ms)) => ttfb.push(ms),
            Ok(Err(e)) => {
                errors += 1;
                eprintln!("client error: {e:#}");
            }
            Err(_) => errors += 1,
        }
    }
    (ttfb, errors)
}

/// The object's bytes (the same for every server's copy).
fn object() -> &'static [u8] {
    static DATA: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    DATA.get_or_init(|| (0..OBJECT).map(|i| (i * 31 % 251) as u8).collect())
}

/// One client: GET (whole or ranged), time to the first response byte, then the body read and
/// compared with the object as it arrives (memcmp per read, no buffering of the body).
fn one_client(addr: SocketAddr, id: &str, range: Option<(u64, u64)>) -> Result<f64> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let extra = range.map_or(String::new(), |(a, b)| format!("Range: bytes={a}-{b}\r\n"));
    let sent = Instant::now();
    write!(
        s,
        "GET /{id} HTTP/1.1\r\nHost: bench\r\n{extra}Connection: close\r\n\r\n"
    )?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = Vec::new();
    let n = s.read(&mut buf)?;
    let ttfb = sent.elapsed().as_secs_f64() * 1000.0;
    if n == 0 {
        bail!("closed before the head");
    }
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
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if pos + n > want.len() || buf[..n] != want[pos..pos + n] {
            bail!("wrong or extra bytes at {}", a as usize + pos);
        }
        pos += n;
    }
    if pos != want.len() {
        bail!("body of {pos} bytes, expected {}", want.len());
    }
    Ok(ttfb)
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
    let (mut proc, addr) = start_edgeplane_pull(&bin, &dir, &origin)?;
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
