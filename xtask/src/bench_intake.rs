//! `cargo xtask bench-intake`: health intake at fleet scale. A release `edgeplane cloud serve`,
//! pinned to one core with taskset, is provisioned with `--appliances` appliances (default
//! 10,000 on 50 sites) and a catalog; simulated appliances (threads here, one keep-alive
//! connection per appliance, as the agent keeps one) register, send their full held list once
//! (`--objects` ids each), then report at their real interval (`--interval-secs`, the service's
//! default 5 s) for `--secs` seconds: the digest of the held set, no changes, and `--demand`
//! per-object demand entries, as a steady agent does. Each report is checked: the ack must
//! acknowledge its sequence number without asking for the full list.
//!
//! Reported per phase: reports, target and achieved rate, bytes per report, the server's CPU
//! (utime + stime of its process from /proc/PID/stat) per report, response latency p50/p99, the
//! largest lag behind the schedule, whether it keeps up, and the server's RSS. Writes the
//! markdown to `target/bench/intake-<time>.md` and prints it.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use edgeplane_api::{DemandEntry, HealthReport, HeldDigest, HeldReport, TierHealth};

use crate::bench_catalog::{clock_ticks, cpu_ticks, rss_kib};
use crate::server::Server;
use crate::util::{
    edgeplane_bin_or_build, git_revision, header, kernel, target_dir, utc_timestamp,
};

#[derive(clap::Args)]
pub(crate) struct BenchIntakeArgs {
    /// Simulated appliances.
    #[arg(long, default_value_t = 10_000)]
    appliances: usize,
    /// Their health interval, seconds (the control service's default is 5).
    #[arg(long, default_value_t = 5)]
    interval_secs: u64,
    /// Objects each appliance holds (its full list).
    #[arg(long, default_value_t = 100)]
    objects: usize,
    /// Demand entries per steady report (at most 64).
    #[arg(long, default_value_t = 16)]
    demand: usize,
    /// Seconds of steady reporting measured.
    #[arg(long, default_value_t = 30)]
    secs: u64,
    /// Titles of the catalog (2 renditions × 10 segments each, at most 50); 0: no catalog, so
    /// the cost of placement (every report recomputes the appliance's manifest generation) is
    /// left out.
    #[arg(long, default_value_t = 50)]
    titles: usize,
    /// Client threads.
    #[arg(long, default_value_t = 8)]
    threads: usize,
    /// The core the server is pinned to.
    #[arg(long, default_value_t = 0)]
    core: usize,
    /// Cargo profile of the server build.
    #[arg(long, default_value = "release")]
    profile: String,
    /// Measure this edgeplane binary instead of building one with `--profile`.
    #[arg(long)]
    edgeplane_bin: Option<std::path::PathBuf>,
}

const SITES: usize = 50;
const TOKEN: &str = "bench-admin";

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    addr: String,
    stream: Option<BufReader<TcpStream>>,
}

impl Conn {
    /// Sends a request; returns the status and body. Reconnects once if the connection died.
    fn call(
        &mut self,
        method: &str,
        path: &str,
        auth: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>)> {
        for attempt in 0..2 {
            if self.stream.is_none() {
                let s = TcpStream::connect(&self.addr)?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(60)))?;
                self.stream = Some(BufReader::new(s));
            }
            match self.try_call(method, path, auth, body) {
                Ok(r) => return Ok(r),
                Err(_) if attempt == 0 => self.stream = None,
                Err(e) => return Err(e),
            }
        }
        unreachable!()
    }

    fn try_call(
        &mut self,
        method: &str,
        path: &str,
        auth: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>)> {
        let s = self
            .stream
            .as_mut()
            .ok_or_else(|| anyhow!("no connection"))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {auth}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let w = s.get_mut();
        w.write_all(head.as_bytes())?;
        w.write_all(body)?;
        let mut line = String::new();
        s.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("bad status line {line:?}"))?;
        let mut len = 0usize;
        loop {
            line.clear();
            if s.read_line(&mut line)? == 0 {
                bail!("connection closed in the head");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse()?;
                }
            }
        }
        let mut out = vec![0; len];
        s.read_exact(&mut out)?;
        Ok((status, out))
    }
}

/// What one phase measured on one thread.
#[derive(Default)]
struct Tally {
    reports: u64,
    bytes: u64,
    errors: u64,
    /// Acks that did not accept the held set.
    refused: u64,
    latencies_us: Vec<u32>,
    max_lag: Duration,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.reports += o.reports;
        self.bytes += o.bytes;
        self.errors += o.errors;
        self.refused += o.refused;
        self.latencies_us.extend(o.latencies_us);
        self.max_lag = self.max_lag.max(o.max_lag);
    }
}

struct Row {
    phase: &'static str,
    tally: Tally,
    wall_s: f64,
    cpu_s: f64,
    target_rate: f64,
}

/// A simulated appliance.
struct Sim {
    id: String,
    secret: String,
    held: Vec<String>,
    digest: String,
    seq: u64,
}

fn ids(objects: usize, i: usize) -> Vec<String> {
    // Each appliance holds a window of the 1,000-object catalog, then ids of its own.
    let mut v: Vec<String> = (0..objects)
        .map(|k| {
            if k < 1000 {
                let idx = (i + k) % 1000;
                format!("t{:04}-r{}-{:04}.m4s", idx / 20, (idx / 10) % 2, idx % 10)
            } else {
                format!("a{i}-{k:07}.m4s")
            }
        })
        .collect();
    v.sort();
    v
}

fn catalog_json(n: usize) -> String {
    let titles: Vec<serde_json::Value> = (0..n.min(50))
        .map(|t| {
            serde_json::json!({
                "id": format!("t{t:04}"),
                "renditions": (0..2).map(|r| serde_json::json!({
                    "name": format!("r{r}"),
                    "bitrate": 1_000_000 * (r + 1),
                    "objects": (0..10).map(|s| serde_json::json!({
                        "id": format!("t{t:04}-r{r}-{s:04}.m4s"),
                        "size": 1_000_000,
                        "sha256": "0".repeat(64),
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({ "titles": titles }).to_string()
}

fn report_body(sim: &mut Sim, full: bool, demand: usize) -> Vec<u8> {
    sim.seq += 1;
    let r = HealthReport {
        healthy: true,
        serving_bps: 4_000_000_000,
        connections: 12_000,
        cpu: 3.5,
        tiers: ["nvme0", "nvme1", "hdd0", "hdd1"]
            .iter()
            .map(|n| TierHealth {
                name: n.to_string(),
                up: true,
                capacity_bytes: 8 << 40,
                used_bytes: 7 << 40,
                objects: sim.held.len() as u64 / 4,
                disk_errors: 0,
            })
            .collect(),
        tls_mode: "ktls".into(),
        version: "bench".into(),
        held: Some(HeldReport {
            seq: sim.seq,
            count: sim.held.len() as u64,
            digest: sim.digest.clone(),
            full: full.then(|| sim.held.clone()),
            ..HeldReport::default()
        }),
        demand: sim
            .held
            .iter()
            .take(demand.min(64))
            .enumerate()
            .map(|(k, id)| DemandEntry {
                id: id.clone(),
                requests: 1000 / (k as u64 + 1),
            })
            .collect(),
        prefixes: vec!["10.0.0.0/12".parse().unwrap()],
        ..HealthReport::default()
    };
    serde_json::to_vec(&r).expect("report JSON")
}

pub(crate) fn run(args: &BenchIntakeArgs) -> Result<()> {
    if args.appliances == 0 || args.threads == 0 || args.interval_secs == 0 {
        bail!("--appliances, --threads and --interval-secs must be at least 1");
    }
    raise_fd_limit(args.appliances as u64 + 1000)?;
    let bin = edgeplane_bin_or_build(args.edgeplane_bin.as_deref(), &args.profile)?;
    let dir = target_dir().join("bench-intake");
    fs::create_dir_all(&dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut cfg = format!(
        "listen = \"{addr}\"\nadmin_token = \"{TOKEN}\"\n\n[origin]\nbucket = \"bench\"\n\
         endpoint = \"http://127.0.0.1:9\"\nallow_http = true\n\n[health]\ninterval_secs = {}\n\n",
        args.interval_secs
    );
    for i in 0..args.appliances {
        let _ = writeln!(cfg, "[[appliance]]\nid = \"a{i}\"\nsecret = \"s{i}\"\n");
    }
    let cfg_path = dir.join("cloud.toml");
    fs::write(&cfg_path, cfg)?;
    header(&format!(
        "edgeplane cloud serve on core {} with {} appliances",
        args.core, args.appliances
    ));
    let mut cmd = Command::new("taskset");
    cmd.arg("-c")
        .arg(args.core.to_string())
        .arg(&bin)
        .args(["cloud", "serve", "--config"])
        .arg(&cfg_path);
    let mut server = Server::spawn("edgeplane cloud serve", cmd, &dir.join("cloud.log"))?;
    server.wait_for_line("its ready line", Duration::from_secs(60), |l| {
        l.contains("edgeplane-cloud: ready").then_some(())
    })?;
    let pid = server.pid();
    let mut admin = Conn {
        addr: addr.clone(),
        stream: None,
    };
    let (status, body) = admin.call(
        "PUT",
        "/v1/catalog",
        TOKEN,
        catalog_json(args.titles).as_bytes(),
    )?;
    if status != 204 {
        bail!(
            "PUT /v1/catalog: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }

    // The simulated fleet, split over the threads.
    let interval = Duration::from_secs(args.interval_secs);
    let steady_rounds = args.secs.div_ceil(args.interval_secs).max(1);
    let barrier = Arc::new(Barrier::new(args.threads + 1));
    let results: Arc<Mutex<Vec<[Tally; 3]>>> = Arc::default();
    let start_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let mut handles = Vec::new();
    for t in 0..args.threads {
        let barrier = barrier.clone();
        let results = results.clone();
        let start_at = start_at.clone();
        let addr = addr.clone();
        let (n, objects, demand) = (args.appliances, args.objects, args.demand);
        let threads = args.threads;
        handles.push(thread::spawn(move || -> Result<()> {
            let mut sims: Vec<(Sim, Conn)> = (t..n)
                .step_by(threads)
                .map(|i| {
                    let held = ids(objects, i);
                    let digest = HeldDigest::of(held.iter().map(String::as_str)).hex();
                    (
                        Sim {
                            id: format!("a{i}"),
                            secret: format!("s{i}"),
                            held,
                            digest,
                            seq: 0,
                        },
                        Conn {
                            addr: addr.clone(),
                            stream: None,
                        },
                    )
                })
                .collect();
            let mut tallies: [Tally; 3] = Default::default();
            // Phase 0: register (as fast as the server answers).
            barrier.wait();
            for (k, (sim, conn)) in sims.iter_mut().enumerate() {
                let reg = serde_json::json!({
                    "role": "embedded", "site": format!("site-{}", (t + k * threads) % SITES),
                    "urls": [format!("http://10.0.0.1:8080/{}", sim.id)], "prefixes": ["10.0.0.0/12"],
                    "tiers": [{"name": "nvme0", "kind": "flash", "capacity_bytes": 100_000_000u64},
                              {"name": "hdd0", "kind": "storage", "capacity_bytes": 1_000_000_000u64}],
                    "max_bps": 10_000_000_000u64, "version": "bench",
                })
                .to_string();
                let path = format!("/v1/appliances/{}/register", sim.id);
                let t0 = Instant::now();
                match conn.call("POST", &path, &sim.secret, reg.as_bytes()) {
                    Ok((200, _)) => {
                        tallies[0].reports += 1;
                        tallies[0].bytes += reg.len() as u64;
                        tallies[0].latencies_us.push(t0.elapsed().as_micros() as u32);
                    }
                    _ => tallies[0].errors += 1,
                }
            }
            // Phases 1 (full lists, one interval) and 2 (steady rounds), on the schedule.
            for (phase, rounds) in [(1usize, 1u64), (2, steady_rounds)] {
                barrier.wait();
                barrier.wait();
                let t_start = start_at.lock().unwrap().expect("phase start");
                let per = sims.len().max(1) as u32;
                for round in 0..rounds {
                    for (k, (sim, conn)) in sims.iter_mut().enumerate() {
                        let due = t_start + interval * round as u32 + interval * k as u32 / per;
                        let now = Instant::now();
                        if due > now {
                            thread::sleep(due - now);
                        } else {
                            tallies[phase].max_lag = tallies[phase].max_lag.max(now - due);
                        }
                        let body = report_body(sim, phase == 1, demand);
                        let path = format!("/v1/appliances/{}/health", sim.id);
                        let t0 = Instant::now();
                        match conn.call("POST", &path, &sim.secret, &body) {
                            Ok((200, ack)) => {
                                let tl = &mut tallies[phase];
                                tl.reports += 1;
                                tl.bytes += body.len() as u64;
                                tl.latencies_us.push(t0.elapsed().as_micros() as u32);
                                let ack: serde_json::Value =
                                    serde_json::from_slice(&ack).unwrap_or_default();
                                if ack["held_seq"] != sim.seq || ack["send_full"] == true {
                                    tl.refused += 1;
                                }
                            }
                            _ => tallies[phase].errors += 1,
                        }
                    }
                }
            }
            results.lock().unwrap().push(tallies);
            barrier.wait();
            Ok(())
        }));
    }
    let hz = clock_ticks() as f64;
    let mut rows = Vec::new();
    let measure = |wait: &dyn Fn()| -> Result<(f64, f64)> {
        let c0 = cpu_ticks(pid)?;
        let w0 = Instant::now();
        wait();
        Ok((
            (cpu_ticks(pid)? - c0) as f64 / hz,
            w0.elapsed().as_secs_f64(),
        ))
    };
    header("register");
    let (reg_cpu, reg_wall) = measure(&|| {
        barrier.wait(); // start registering
        barrier.wait(); // registered (phase 1's first wait)
    })?;
    let rate = args.appliances as f64 / args.interval_secs as f64;
    header("full held lists, one interval");
    *start_at.lock().unwrap() = Some(Instant::now() + Duration::from_millis(100));
    let (full_cpu, full_wall) = measure(&|| {
        barrier.wait(); // go
        barrier.wait(); // phase 2's first wait: phase 1 done
    })?;
    header(&format!("steady reports, {steady_rounds} intervals"));
    *start_at.lock().unwrap() = Some(Instant::now() + Duration::from_millis(100));
    let (steady_cpu, steady_wall) = measure(&|| {
        barrier.wait(); // go
        barrier.wait(); // done
    })?;
    for h in handles {
        h.join()
            .map_err(|_| anyhow!("a client thread panicked"))??;
    }
    let rss = rss_kib(pid)?;
    let mut merged: [Tally; 3] = Default::default();
    for t in results.lock().unwrap().drain(..) {
        for (m, t) in merged.iter_mut().zip(t) {
            m.merge(t);
        }
    }
    let [reg, full, steady] = merged;
    rows.push(Row {
        phase: "register",
        tally: reg,
        wall_s: reg_wall,
        cpu_s: reg_cpu,
        target_rate: 0.0,
    });
    rows.push(Row {
        phase: "full held list",
        tally: full,
        wall_s: full_wall,
        cpu_s: full_cpu,
        target_rate: rate,
    });
    rows.push(Row {
        phase: "steady (digest + demand)",
        tally: steady,
        wall_s: steady_wall,
        cpu_s: steady_cpu,
        target_rate: rate,
    });
    drop(server);
    let report = render(args, &mut rows, rss);
    print!("{report}");
    let out = target_dir().join("bench");
    fs::create_dir_all(&out)?;
    let path = out.join(format!("intake-{}.md", utc_timestamp()));
    fs::write(&path, &report)?;
    eprintln!("\nreport: {}", path.display());
    Ok(())
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

fn render(args: &BenchIntakeArgs, rows: &mut [Row], rss_kib: u64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Health intake: {} appliances, one core\n",
        args.appliances
    );
    let _ =
        writeln!(
        s,
        "`cargo xtask bench-intake --appliances {} --interval-secs {} --objects {} --demand {} \
         --titles {} --secs {} --threads {} --core {}` · {} · kernel {} · load {}\n",
        args.appliances,
        args.interval_secs,
        args.objects,
        args.demand,
        args.titles,
        args.secs,
        args.threads,
        args.core,
        git_revision(),
        kernel(),
        fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    s.push_str(
        "| phase | reports | errors | not accepted | target/s | achieved/s | bytes/report | \
         server CPU s | CPU µs/report | p50 ms | p99 ms | max lag s | keeps up |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in rows.iter_mut() {
        r.tally.latencies_us.sort_unstable();
        let t = &r.tally;
        let n = t.reports.max(1) as f64;
        let achieved = t.reports as f64 / r.wall_s.max(1e-9);
        let keeps_up = if r.target_rate == 0.0 {
            "—".to_string()
        } else if t.errors == 0 && t.max_lag.as_secs_f64() < args.interval_secs as f64 {
            "yes".to_string()
        } else {
            "no".to_string()
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            r.phase,
            t.reports,
            t.errors,
            t.refused,
            r.target_rate,
            achieved,
            t.bytes as f64 / n,
            r.cpu_s,
            r.cpu_s * 1e6 / n,
            percentile(&t.latencies_us, 0.5),
            percentile(&t.latencies_us, 0.99),
            t.max_lag.as_secs_f64(),
            keeps_up
        );
    }
    let _ = writeln!(
        s,
        "\nServer RSS at the end: {:.0} MiB. CPU = utime + stime of the server process \
         (/proc/PID/stat) over the phase, divided by its reports; the server is pinned with \
         `taskset -c {}`, the clients run beside it. \"Not accepted\": acks that did not \
         acknowledge the report's held set (the full list would be asked for). Keeps up: no \
         errors and no report later than one interval behind its schedule.",
        rss_kib as f64 / 1024.0,
        args.core
    );
    s
}

/// Raises RLIMIT_NOFILE to at least `want` (up to the hard limit): one socket per appliance.
fn raise_fd_limit(want: u64) -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error()).context("getrlimit");
        }
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error()).context("setrlimit");
            }
        }
    }
    if lim.rlim_cur < want {
        bail!(
            "{want} open files needed, the hard limit is {}",
            lim.rlim_max
        );
    }
    Ok(())
}
