//! `cargo xtask bench`: edgeplane against nginx (sendfile) on the same files, the same URLs and
//! the same load, from `edgeplane-load` (bench/loadgen, run in process on CPU 1) with each
//! server pinned to CPU 0. Scenarios: hot 64 KiB ranges, 1 MiB ranges, 1–4 MiB video
//! segments, the player model, mixed hot + cold (slowfs storage tier), and HTTPS. Reports
//! throughput, latency percentiles and, above all, server CPU per request and per GiB, read
//! from /proc before and after each run; every body is validated.
//!
//! One run per server is noisy on a small VM, so each scenario runs in rounds: after one warm-up
//! per server, every round measures each server once, the order alternating between rounds
//! (A B, B A, A B, ...). The report shows per-server medians over the rounds and, for the
//! edgeplane / nginx ratios, the median of the per-round ratios with their min–max range.
//!
//! `--target URL --no-peer` drives a remote server instead (no local servers, no CPU columns);
//! `--callgrind` counts edgeplane's instructions per request under valgrind (see
//! [`crate::callgrind`]).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::ValueEnum;
use edgeplane_load::player::DEFAULT_LADDER_KBPS;
use edgeplane_load::{
    Config as LoadConfig, Distributed, Live, Object, PlayerConfig, RangeClass, Report,
    Target as LoadTarget, Validation, Workload,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::svg;
use crate::testbed::{
    check_cpus, machine_busy_ticks, nginx_version, read_stat, write_catalog, CatalogSpec,
    HttpsFiles, Rig, Target, CLIENT_CPU, SERVER_CPU,
};
use crate::util::{
    edgeplane_bin_or_build, find_program, git_revision, header, kernel, run_checked,
};

const GIB: f64 = (1u64 << 30) as f64;
/// slowfs's delay per read that reaches it: a disk seek.
const COLD_DELAY: Duration = Duration::from_millis(5);
const COLD_FILES: u32 = 4;

#[derive(clap::Args, Clone)]
pub(crate) struct BenchArgs {
    /// Seconds of measured load per scenario, server and round.
    #[arg(long, default_value_t = 10)]
    pub(crate) duration: u32,
    /// Rounds per scenario; each measures every server once, the order alternating between
    /// rounds. The report shows medians over the rounds.
    #[arg(long, default_value_t = 3)]
    pub(crate) rounds: u32,
    /// Concurrent connections (range scenarios).
    #[arg(long, default_value_t = 64)]
    pub(crate) connections: u32,
    /// Which scenarios to run (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    pub(crate) scenario: Vec<ScenarioArg>,
    /// Which servers to run (the ratio columns need both).
    #[arg(long, value_enum, default_value_t = ServerArg::Both)]
    pub(crate) server: ServerArg,
    /// Seconds of unmeasured load per scenario and server, once before the first round.
    #[arg(long, default_value_t = 2)]
    pub(crate) warmup: u32,
    /// Cargo profile edgeplane is built with.
    #[arg(long, default_value = "release")]
    pub(crate) profile: String,
    /// Open loop at this many requests/s (range scenarios; latency corrected for coordinated
    /// omission). Default: closed loop.
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// Viewers in the player scenario.
    #[arg(long, default_value_t = 100)]
    pub(crate) viewers: u64,
    /// Steered viewers in the failover scenario.
    #[arg(long, default_value_t = 1000)]
    pub(crate) failover_viewers: u64,
    /// Seconds of load in the failover scenario (the embedded appliance is killed at half).
    #[arg(long, default_value_t = 40)]
    pub(crate) failover_seconds: u32,
    /// How the failover scenario fails the embedded appliance (data plane and agent): `kill`
    /// (SIGKILL: connections reset, connects refused) or `stop` (SIGSTOP: a hung box, requests
    /// time out).
    #[arg(long, value_enum, default_value_t = crate::bench_failover::Failure::Kill)]
    pub(crate) failover_signal: crate::bench_failover::Failure,
    /// Load generator threads, each pinned (default: one per CPU not given to the local
    /// servers, i.e. 1 on CPU 1 on a 2-CPU machine; with --target: one per allowed CPU). With
    /// --workers: threads per worker (default: each worker's own CPUs).
    #[arg(long)]
    pub(crate) load_threads: Option<usize>,
    /// Send the load from these `edgeplane-load worker` processes (HOST:PORT,...) instead of
    /// from threads in this process; their results are merged into one measurement.
    #[arg(long, value_delimiter = ',')]
    pub(crate) workers: Vec<String>,
    /// Compare with an earlier run: its directory (with report.json).
    #[arg(long)]
    pub(crate) baseline: Option<PathBuf>,
    /// Drive this server instead of local ones: http://host:port (https scenario: give
    /// --https-url too). Needs --no-peer.
    #[arg(long, requires = "no_peer")]
    pub(crate) target: Option<String>,
    /// With --target: start no local servers, no comparison peer.
    #[arg(long)]
    pub(crate) no_peer: bool,
    /// With --target: the HTTPS URL for the https scenario.
    #[arg(long)]
    pub(crate) https_url: Option<String>,
    /// With --target: PEM certificate(s) to trust for HTTPS.
    #[arg(long)]
    pub(crate) ca: Option<PathBuf>,
    /// Use this edgeplane binary instead of building one with --profile (e.g. a release build
    /// made beforehand).
    #[arg(long)]
    pub(crate) edgeplane_bin: Option<PathBuf>,
    /// flash-crowd: whole-object clients compare every body byte (`all`: copying and comparing
    /// 250 × 8 MiB within a second keeps the client CPU busy) or one 128 KiB block in 8,
    /// discarding the rest in the kernel (`sampled`). Ranged clients always compare all.
    #[arg(long, default_value = "sampled", value_parser = ["sampled", "all"])]
    pub(crate) crowd_verify: String,
    /// Instead of the bench: instructions per request of edgeplane under callgrind.
    #[arg(long)]
    pub(crate) callgrind: bool,
    /// Requests (64 KiB ranges) counted under --callgrind.
    #[arg(long, default_value_t = 2000)]
    pub(crate) callgrind_requests: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub(crate) enum ScenarioArg {
    #[value(name = "64k")]
    K64,
    #[value(name = "1m")]
    M1,
    Segments,
    Player,
    Mixed,
    Https,
    /// Pull-through: 500 clients for one cold object, edgeplane vs nginx (bench_pull).
    #[value(name = "flash-crowd")]
    FlashCrowd,
    /// Pull-through admission: Zipf + scan trace, TinyLFU vs LRU byte hit ratio (bench_pull).
    Trace,
    /// Pull-through: hot-hit p99 with and without a miss storm against a slow origin, on the
    /// same core (bench_pull).
    #[value(name = "miss-storm")]
    MissStorm,
    /// 64 KiB ranges beside 10,000 idle keep-alive connections (not part of `all`).
    Idle,
    /// Steered viewers; the embedded appliance is SIGKILLed mid-run: rebuffer ratio and time
    /// to recover (bench_failover; not part of `all`).
    Failover,
    All,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ServerArg {
    Edgeplane,
    Nginx,
    Both,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// Range requests of `min..=max` bytes at multiples of `align`, uniform over the files.
    Ranges { min: u64, max: u64, align: u64 },
    /// 90 % hot 64 KiB ranges from the flash tier, 10 % cold 256 KiB ranges through slowfs.
    Mixed,
    /// Viewers, Zipf over the files as titles, ladder and ABR.
    Player,
    /// Hot 64 KiB ranges while [`IDLE_CONNECTIONS`] idle keep-alive connections stay open.
    Idle,
}

/// Idle keep-alive connections the `idle` scenario opens (each answered once, then left idle).
const IDLE_CONNECTIONS: u32 = 10_000;
/// How long the idle crowd sits before the server's RSS is taken (again) with it.
const IDLE_SETTLE: Duration = Duration::from_secs(3);

pub(crate) struct Scenario {
    name: &'static str,
    arg: ScenarioArg,
    kind: Kind,
    tls: bool,
    what: &'static str,
}

const SCENARIOS: [Scenario; 7] = [
    Scenario {
        name: "64k",
        arg: ScenarioArg::K64,
        kind: Kind::Ranges {
            min: 64 << 10,
            max: 64 << 10,
            align: 64 << 10,
        },
        tls: false,
        what: "hot 64 KiB ranges (per-request cost)",
    },
    Scenario {
        name: "1m",
        arg: ScenarioArg::M1,
        kind: Kind::Ranges {
            min: 1 << 20,
            max: 1 << 20,
            align: 1 << 20,
        },
        tls: false,
        what: "hot 1 MiB ranges (per-byte cost)",
    },
    Scenario {
        name: "segments",
        arg: ScenarioArg::Segments,
        kind: Kind::Ranges {
            min: 1 << 20,
            max: 4 << 20,
            align: 1 << 20,
        },
        tls: false,
        what: "video segments: 1, 2, 3 or 4 MiB ranges",
    },
    Scenario {
        name: "player",
        arg: ScenarioArg::Player,
        kind: Kind::Player,
        tls: false,
        what: "player model: viewers, Zipf titles, 235 kbps–16 Mbps ladder, 4 s segments, ABR",
    },
    Scenario {
        name: "mixed",
        arg: ScenarioArg::Mixed,
        kind: Kind::Mixed,
        tls: false,
        what: "90% hot 64 KiB ranges + 10% cold 256 KiB ranges from a slow tier (slowfs, 5 ms per read)",
    },
    Scenario {
        name: "https",
        arg: ScenarioArg::Https,
        kind: Kind::Ranges {
            min: 1 << 20,
            max: 1 << 20,
            align: 1 << 20,
        },
        tls: true,
        what: "1 MiB ranges over HTTPS (TLS in user space: rustls / OpenSSL)",
    },
    Scenario {
        name: "idle",
        arg: ScenarioArg::Idle,
        kind: Kind::Idle,
        tls: false,
        what: "hot 64 KiB ranges beside 10,000 idle keep-alive connections (each answered once); \
               server RSS per idle connection, active p99 against the `64k` scenario's",
    },
];

/// One measured run: one server, one scenario, one round.
pub(crate) struct Measurement {
    scenario: &'static str,
    server: String,
    /// 1-based.
    round: u32,
    report: Report,
    /// Server CPU seconds; None for a remote target.
    cpu_s: Option<f64>,
    /// The whole machine's busy CPU seconds over the run (server, generator, softirq and
    /// ksoftirqd on both CPUs); None for a remote target.
    machine_cpu_s: Option<f64>,
}

impl Measurement {
    fn req_s(&self) -> f64 {
        self.report.req_per_s
    }
    fn gbps(&self) -> f64 {
        self.report.gbps
    }
    fn p50(&self) -> f64 {
        self.report.latency.p50_ms
    }
    fn p99(&self) -> f64 {
        self.report.latency.p99_ms
    }
    fn p999(&self) -> f64 {
        self.report.latency.p999_ms
    }
    fn cpu(&self) -> f64 {
        self.cpu_s.unwrap_or(f64::NAN)
    }
    fn cpu_util(&self) -> f64 {
        self.cpu() / self.report.duration_s
    }
    fn cpu_s_per_gib(&self) -> f64 {
        self.cpu() / (self.report.bytes as f64 / GIB)
    }
    fn req_per_cpu_s(&self) -> f64 {
        self.report.requests as f64 / self.cpu()
    }
    fn machine_cpu_s_per_gib(&self) -> f64 {
        self.machine_cpu_s.unwrap_or(f64::NAN) / (self.report.bytes as f64 / GIB)
    }
    /// Why this run does not count, if it does not.
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.report.requests == 0 {
            out.push("no requests completed".to_owned());
        }
        if self.report.errors_total > 0 {
            let kinds: Vec<String> = self
                .report
                .errors
                .iter()
                .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
                .map(|(k, v)| format!("{v} {k}"))
                .collect();
            out.push(format!("errors: {}", kinds.join(", ")));
        }
        if !self.report.valid {
            out.push(format!(
                "invalid measurement: {}",
                self.report.invalid_reasons.join("; ")
            ));
        }
        out
    }
    fn to_json(&self) -> Value {
        json!({
            "scenario": self.scenario,
            "server": self.server,
            "round": self.round,
            "server_cpu_s": self.cpu_s,
            "cpu_s_per_gib": finite(self.cpu_s_per_gib()),
            "req_per_cpu_s": finite(self.req_per_cpu_s()),
            "machine_cpu_s": self.machine_cpu_s,
            "machine_cpu_s_per_gib": finite(self.machine_cpu_s_per_gib()),
            "problems": self.problems(),
            "load": self.report,
        })
    }
}

fn finite(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

/// A server the bench measures: local (with its process) or remote (a URL).
struct Endpoint {
    name: String,
    http: String,
    https: Option<String>,
    local: Option<Target>,
}

/// Paths and binaries a run uses; the smoke test substitutes small ones.
pub(crate) struct Setup {
    pub(crate) catalog: CatalogSpec,
    /// Use this edgeplane binary instead of building one.
    pub(crate) edgeplane: Option<PathBuf>,
}

pub(crate) fn run(args: &BenchArgs) -> Result<()> {
    if args.callgrind {
        return crate::callgrind::run(args);
    }
    if args.scenario.contains(&ScenarioArg::Failover) {
        crate::bench_failover::run(args)?;
        if args.scenario.iter().all(|s| *s == ScenarioArg::Failover) {
            return Ok(());
        }
    }
    let flash = args.scenario.contains(&ScenarioArg::FlashCrowd);
    let trace = args.scenario.contains(&ScenarioArg::Trace);
    let storm = args.scenario.contains(&ScenarioArg::MissStorm);
    if flash || trace || storm {
        crate::bench_pull::run(args, flash, trace, storm)?;
        if args.scenario.iter().all(|s| {
            matches!(
                s,
                ScenarioArg::FlashCrowd
                    | ScenarioArg::Trace
                    | ScenarioArg::MissStorm
                    | ScenarioArg::Failover
            )
        }) {
            return Ok(());
        }
    }
    let setup = Setup {
        catalog: CatalogSpec::standard(false),
        edgeplane: args.edgeplane_bin.clone(),
    };
    let outcome = run_with(args, &setup)?;
    if !outcome.problems.is_empty() {
        bail!(
            "bench finished with problems:\n  {}",
            outcome.problems.join("\n  ")
        );
    }
    Ok(())
}

pub(crate) struct Outcome {
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) run_dir: PathBuf,
    pub(crate) problems: Vec<String>,
}

fn selected(args: &BenchArgs) -> Vec<&'static Scenario> {
    SCENARIOS
        .iter()
        .filter(|s| {
            args.scenario
                .iter()
                .any(|&a| (a == ScenarioArg::All && s.arg != ScenarioArg::Idle) || a == s.arg)
        })
        .collect()
}

pub(crate) fn run_with(args: &BenchArgs, setup: &Setup) -> Result<Outcome> {
    if args.duration == 0 || args.connections == 0 || args.rounds == 0 || args.viewers == 0 {
        bail!("--duration, --connections, --rounds and --viewers must be at least 1");
    }
    let remote = args.target.is_some();
    let mut scenarios = selected(args);
    let mut skipped: Vec<String> = Vec::new();
    if remote && args.https_url.is_none() {
        scenarios.retain(|s| {
            if s.tls {
                skipped.push(format!("{}: no --https-url given", s.name));
            }
            !s.tls
        });
    }
    if !remote {
        check_cpus()?;
        if scenarios.iter().any(|s| s.kind == Kind::Mixed) {
            if let Some(why) = slowfs::mount_unavailable_reason() {
                eprintln!("skipping the mixed scenario: {why}");
                skipped.push(format!("mixed: {why}"));
                scenarios.retain(|s| s.kind != Kind::Mixed);
            }
        }
    }
    if scenarios.is_empty() {
        bail!("no scenario left to run ({})", skipped.join("; "));
    }
    let want_edgeplane = !remote && args.server != ServerArg::Nginx;
    let want_nginx = !remote && args.server != ServerArg::Edgeplane;
    let nginx = if want_nginx {
        Some(find_program("nginx")?)
    } else {
        None
    };
    let bin = if want_edgeplane {
        Some(edgeplane_bin_or_build(
            setup.edgeplane.as_deref(),
            &args.profile,
        )?)
    } else {
        None
    };
    let clk_tck = clk_tck()?;

    // The servers' connection caps must admit the idle crowd beside the active connections.
    let idle = scenarios.iter().any(|s| s.kind == Kind::Idle);
    let rig_connections = args.connections + if idle { IDLE_CONNECTIONS } else { 0 };
    let mut rig = Rig::prepare_with(&setup.catalog, "", rig_connections)?;
    let hot: Vec<Object> = rig
        .files
        .iter()
        .map(|(path, size)| Object {
            name: path.trim_start_matches('/').to_owned(),
            size: *size,
        })
        .collect();
    let mut cold: Vec<Object> = Vec::new();
    let mut mount = None;
    if scenarios.iter().any(|s| s.kind == Kind::Mixed) {
        let names: Vec<String> = (0..COLD_FILES)
            .map(|i| format!("cold-{i:02}.bin"))
            .collect();
        cold = names
            .iter()
            .map(|n| Object {
                name: n.clone(),
                size: setup.catalog.file_size,
            })
            .collect();
        if !remote {
            let src = setup.catalog.bench_dir.join("cold-src");
            write_catalog(&src, "cold-", COLD_FILES, setup.catalog.file_size)?;
            let mnt = rig.run_dir.join("cold");
            fs::create_dir_all(&mnt)?;
            header(&format!(
                "mounting slowfs ({} ms per read) at {}",
                COLD_DELAY.as_millis(),
                mnt.display()
            ));
            let m = slowfs::mount(&src, &mnt, COLD_DELAY)
                .map_err(|e| anyhow!("mount slowfs at {}: {e}", mnt.display()))?;
            rig.cold = Some(m.mountpoint().to_owned());
            mount = Some(m);
        }
    }
    let mut ca = args.ca.clone();
    if !remote && scenarios.iter().any(|s| s.tls) {
        let files = self_signed_cert(&rig.run_dir)?;
        ca = Some(files.cert.clone());
        rig.https = Some(files);
    }

    let servers = if remote {
        1
    } else {
        u32::from(want_edgeplane) + u32::from(want_nginx)
    };
    let load_s = scenarios.len() as u64
        * u64::from(servers)
        * u64::from(args.warmup + args.rounds * args.duration);
    eprintln!(
        "{} scenario(s) x {servers} server(s): {} s warm-up, then {} round(s) of {} s each; \
         about {:.1} min of load",
        scenarios.len(),
        args.warmup,
        args.rounds,
        args.duration,
        load_s as f64 / 60.0
    );

    // Both servers run for the whole bench, each idle while the other is measured; dropping a
    // `Target` (also on error) stops its server.
    let mut endpoints: Vec<Endpoint> = Vec::new();
    if let Some(url) = &args.target {
        endpoints.push(Endpoint {
            name: "target".to_owned(),
            http: url.trim_end_matches('/').to_owned(),
            https: args.https_url.clone(),
            local: None,
        });
    }
    if let Some(bin) = &bin {
        endpoints.push(local_endpoint(rig.start_edgeplane(bin)?));
    }
    if let Some(nginx) = &nginx {
        endpoints.push(local_endpoint(rig.start_nginx(nginx)?));
    }
    // The third column: the plain epoll + sendfile reference server, the least any server
    // can spend per range request here (range scenarios over plain HTTP only).
    if want_edgeplane && want_nginx && scenarios.iter().any(|s| limit_serves(s)) {
        let refserver = crate::testbed::build_reference()?;
        endpoints.push(local_endpoint(rig.start_reference(&refserver)?));
    }

    // Generator threads go to the CPUs the local servers do not use (all CPUs for a remote
    // target), one pinned thread per CPU unless --load-threads says otherwise.
    let cpus: Vec<usize> = if remote {
        edgeplane_load::generator_cpus(&[])
    } else {
        edgeplane_load::generator_cpus(&[SERVER_CPU.parse().expect("a CPU number")])
    };
    let threads = args.load_threads.unwrap_or(cpus.len()).max(1);

    let bar = ProgressBar::new(load_s * 10);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {percent:>3}% {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut results = Vec::new();
    let mut idle_rounds: Vec<IdleRound> = Vec::new();
    let mut done_s = 0u64;
    for scenario in &scenarios {
        let make = |e: &Endpoint, seconds: u32| -> Result<LoadConfig> {
            let url = if scenario.tls {
                e.https
                    .clone()
                    .ok_or_else(|| anyhow!("{} has no HTTPS URL", e.name))?
            } else {
                e.http.clone()
            };
            load_config(
                scenario,
                &url,
                args,
                seconds,
                threads,
                &cpus,
                ca.clone(),
                &hot,
                &cold,
            )
        };
        let takes_part = |e: &Endpoint| e.name != "limit" || limit_serves(scenario);
        if args.warmup > 0 {
            for e in endpoints.iter_mut().filter(|e| takes_part(e)) {
                bar.set_message(format!("{} {}: warm-up", scenario.name, e.name));
                evict_cold(scenario, &rig, &cold);
                drive(&make(e, args.warmup)?, args, &bar, done_s)?;
                done_s += u64::from(args.warmup);
                if let Some(t) = &mut e.local {
                    t.server.check_running()?;
                }
            }
        }
        for round in 1..=args.rounds {
            for i in round_order(endpoints.len(), round) {
                if !takes_part(&endpoints[i]) {
                    continue;
                }
                let e = &mut endpoints[i];
                bar.set_message(format!(
                    "{} {}: round {round}/{}",
                    scenario.name, e.name, args.rounds
                ));
                evict_cold(scenario, &rig, &cold);
                let pids = e.local.as_ref().map(Target::pids);
                let crowd = match (scenario.kind, &pids) {
                    (Kind::Idle, Some(pids)) => {
                        bar.set_message(format!(
                            "{} {}: opening {IDLE_CONNECTIONS} idle connections",
                            scenario.name, e.name
                        ));
                        let rss_before = rss_kib(pids)?;
                        let conns = idle_crowd(&e.http, &hot[0].name, IDLE_CONNECTIONS)?;
                        let rss_opened = rss_kib(pids)?;
                        // Idle connections are idle for seconds to minutes between a player's
                        // requests: the steady figure is the one after they have sat a while
                        // (edgeplane parks them after `io.park_idle_after_ms`, 1 s by default).
                        std::thread::sleep(IDLE_SETTLE);
                        let rss_after = rss_kib(pids)?;
                        idle_rounds.push(IdleRound {
                            server: e.name.clone(),
                            round,
                            connections: conns.len(),
                            rss_before_kib: rss_before,
                            rss_opened_kib: rss_opened,
                            rss_after_kib: rss_after,
                        });
                        Some(conns)
                    }
                    _ => None,
                };
                let before = pids.as_deref().map(cpu_ticks).transpose()?;
                let machine_before = pids.as_ref().map(|_| machine_busy_ticks()).transpose()?;
                let report = drive(&make(e, args.duration)?, args, &bar, done_s)?;
                let machine_after = pids.as_ref().map(|_| machine_busy_ticks()).transpose()?;
                let after = pids.as_deref().map(cpu_ticks).transpose()?;
                drop(crowd);
                done_s += u64::from(args.duration);
                if let Some(t) = &mut e.local {
                    t.server.check_running()?;
                }
                let cpu_s = before
                    .zip(after)
                    .map(|(b, a)| a.saturating_sub(b) as f64 / clk_tck as f64);
                let machine_cpu_s = machine_before
                    .zip(machine_after)
                    .map(|(b, a)| a.saturating_sub(b) as f64 / clk_tck as f64);
                let m = Measurement {
                    scenario: scenario.name,
                    server: e.name.clone(),
                    round,
                    report,
                    cpu_s,
                    machine_cpu_s,
                };
                bar.println(format!(
                    "{} {} round {round}: {}{}",
                    scenario.name,
                    e.name,
                    m.report.summary(),
                    match m.cpu_s {
                        Some(c) => format!("; server CPU {c:.2} s"),
                        None => String::new(),
                    }
                ));
                results.push(m);
            }
        }
    }
    bar.finish_and_clear();

    header("stopping servers");
    let mut shutdown_problems = Vec::new();
    for e in endpoints {
        if let Some(t) = e.local {
            if let Err(err) = t.shut_down() {
                shutdown_problems.push(format!("{err:#}"));
            }
        }
    }
    if let Some(m) = mount {
        if let Err(err) = m.unmount() {
            shutdown_problems.push(format!("unmount slowfs: {err}"));
        }
    }

    let baseline = match &args.baseline {
        Some(dir) => Some(Baseline::load(dir)?),
        None => None,
    };
    let context = RunContext {
        args,
        files: rig.files.len(),
        file_size: setup.catalog.file_size,
        timestamp: rig.run_name(),
        nginx_version: nginx.as_deref().map(nginx_version).unwrap_or_default(),
        revision: git_revision(),
        kernel: kernel(),
        tcp: tcp_settings(),
        threads,
        skipped,
    };
    let plots = write_plots(&rig.run_dir, &results)?;
    let mut markdown = report_markdown(
        &context,
        &results,
        &shutdown_problems,
        baseline.as_ref(),
        &plots,
    );
    markdown.push_str(&idle_markdown(&idle_rounds, &results));
    println!("\n{markdown}");
    fs::write(rig.run_dir.join("report.md"), &markdown)?;
    let mut report = report_json(&context, &results, &shutdown_problems, baseline.as_ref());
    report["idle"] = Value::Array(idle_rounds.iter().map(IdleRound::to_json).collect());
    fs::write(
        rig.run_dir.join("report.json"),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    eprintln!(
        "wrote {}/report.md, report.json and the plots",
        rig.run_dir.display()
    );
    let problems = problems(&results)
        .into_iter()
        .chain(shutdown_problems)
        .collect();
    Ok(Outcome {
        run_dir: rig.run_dir.clone(),
        problems,
    })
}

/// One server's idle crowd in one round of the `idle` scenario.
struct IdleRound {
    server: String,
    round: u32,
    connections: usize,
    rss_before_kib: u64,
    /// Right after the last connection was answered.
    rss_opened_kib: u64,
    /// After the crowd sat idle for [`IDLE_SETTLE`].
    rss_after_kib: u64,
}

impl IdleRound {
    /// KiB per idle connection, after they sat idle for [`IDLE_SETTLE`].
    fn kib_per_connection(&self) -> f64 {
        self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64
            / self.connections.max(1) as f64
    }

    /// KiB per idle connection right after they were opened and answered.
    fn kib_per_connection_opened(&self) -> f64 {
        self.rss_opened_kib.saturating_sub(self.rss_before_kib) as f64
            / self.connections.max(1) as f64
    }

    fn to_json(&self) -> Value {
        json!({
            "server": self.server,
            "round": self.round,
            "idle_connections": self.connections,
            "rss_before_kib": self.rss_before_kib,
            "rss_just_opened_kib": self.rss_opened_kib,
            "rss_kib_per_connection_just_opened": finite(self.kib_per_connection_opened()),
            "idle_settle_s": IDLE_SETTLE.as_secs_f64(),
            "rss_with_idle_kib": self.rss_after_kib,
            "rss_kib_per_idle_connection": finite(self.kib_per_connection()),
        })
    }
}

/// Resident memory of `pids` together (VmRSS from /proc/PID/status), KiB.
fn rss_kib(pids: &[u32]) -> Result<u64> {
    let mut total = 0;
    for pid in pids {
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("read /proc/{pid}/status"))?;
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

/// Opens `n` keep-alive connections to `url` (http://host:port), has each answered once (a
/// one-byte range of `object`) and returns them, idle. Batches of 256, so the server's accept
/// queue never overflows.
fn idle_crowd(url: &str, object: &str, n: u32) -> Result<Vec<std::net::TcpStream>> {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let request = format!("GET /{object} HTTP/1.1\r\nHost: bench\r\nRange: bytes=0-0\r\n\r\n");
    let mut conns = Vec::with_capacity(n as usize);
    let mut buf = [0u8; 1024];
    while conns.len() < n as usize {
        let batch = (n as usize - conns.len()).min(256);
        let mut fresh = Vec::with_capacity(batch);
        for _ in 0..batch {
            let mut c = std::net::TcpStream::connect(addr)
                .with_context(|| format!("idle connection {} to {addr}", conns.len()))?;
            c.set_read_timeout(Some(Duration::from_secs(10)))?;
            c.write_all(request.as_bytes())?;
            fresh.push(c);
        }
        for c in &mut fresh {
            // The head and its one body byte: read until the head ends and one more byte came.
            let mut got = Vec::new();
            loop {
                let k = c
                    .read(&mut buf)
                    .context("read an idle connection's response")?;
                if k == 0 {
                    bail!("the server closed an idle connection before answering it");
                }
                got.extend_from_slice(&buf[..k]);
                if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    if got.len() > end + 4 {
                        break;
                    }
                }
            }
            if !got.starts_with(b"HTTP/1.1 206") {
                bail!(
                    "idle connection: want 206, got {:?}",
                    String::from_utf8_lossy(&got[..got.len().min(64)])
                );
            }
        }
        conns.extend(fresh);
    }
    Ok(conns)
}

/// The `idle` scenario's section: RSS per idle connection, and the active p99 beside the idle
/// crowd over the `64k` scenario's p99 of the same server and round.
fn idle_markdown(idle: &[IdleRound], results: &[Measurement]) -> String {
    if idle.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "\n## Idle connections (per round)\n\nRSS is taken before the crowd, right after its last \
         connection was answered, and after it sat idle for 3 s (the steady figure: KiB per idle \
         connection).\n\n| server | round | idle connections | RSS before MiB | RSS just opened MiB \
         | RSS after 3 s idle MiB | KiB per connection, just opened | KiB per idle connection | \
         active p99 ms with them | `64k` p99 ms (same round) | ratio |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in idle {
        let with = results
            .iter()
            .find(|m| m.scenario == "idle" && m.server == r.server && m.round == r.round);
        let without = results
            .iter()
            .find(|m| m.scenario == "64k" && m.server == r.server && m.round == r.round);
        let p = |m: Option<&Measurement>| m.map_or(f64::NAN, Measurement::p99);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {} | {} | {} |",
            r.server,
            r.round,
            r.connections,
            r.rss_before_kib as f64 / 1024.0,
            r.rss_opened_kib as f64 / 1024.0,
            r.rss_after_kib as f64 / 1024.0,
            r.kib_per_connection_opened(),
            r.kib_per_connection(),
            num(p(with), 2),
            num(p(without), 2),
            num(p(with) / p(without), 2),
        );
    }
    s
}

/// Whether the reference server ("limit") can answer `scenario`: plain-HTTP range requests
/// on the hot files (it knows nothing of TLS, cold tiers or players).
fn limit_serves(scenario: &Scenario) -> bool {
    matches!(scenario.kind, Kind::Ranges { .. }) && !scenario.tls
}

fn local_endpoint(t: Target) -> Endpoint {
    Endpoint {
        name: t.name().to_owned(),
        http: format!("http://{}", t.addr),
        https: t.https_addr.map(|a| format!("https://{a}")),
        local: Some(t),
    }
}

/// Before each mixed run: drop the cold files from the page cache, so every run starts cold.
fn evict_cold(scenario: &Scenario, rig: &Rig, cold: &[Object]) {
    if scenario.kind != Kind::Mixed {
        return;
    }
    if let Some(dir) = &rig.cold {
        for o in cold {
            let _ = slowfs::evict(&dir.join(&o.name));
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn load_config(
    scenario: &Scenario,
    url: &str,
    args: &BenchArgs,
    seconds: u32,
    threads: usize,
    cpus: &[usize],
    ca: Option<PathBuf>,
    hot: &[Object],
    cold: &[Object],
) -> Result<LoadConfig> {
    let class = |name: &str, weight, objects: &[Object], min, max, align| RangeClass {
        name: name.to_owned(),
        weight,
        objects: objects.to_vec(),
        zipf_s: 0.0,
        min_len: min,
        max_len: max,
        align,
    };
    let workload = match scenario.kind {
        Kind::Ranges { min, max, align } => {
            Workload::Ranges(vec![class("hot", 1.0, hot, min, max, align)])
        }
        Kind::Idle => Workload::Ranges(vec![class("hot", 1.0, hot, 64 << 10, 64 << 10, 64 << 10)]),
        Kind::Mixed => Workload::Ranges(vec![
            class("hot", 0.9, hot, 64 << 10, 64 << 10, 64 << 10),
            class("cold", 0.1, cold, 256 << 10, 256 << 10, 256 << 10),
        ]),
        Kind::Player => Workload::Player(PlayerConfig {
            viewers: args.viewers,
            titles: hot.to_vec(),
            zipf_s: 1.0,
            ladder_kbps: DEFAULT_LADDER_KBPS.to_vec(),
            segment_s: 4.0,
            buffer_target_s: 12.0,
            startup_s: 4.0,
            ramp_s: f64::from(seconds).min(2.0) / 2.0,
            steering: None,
        }),
    };
    Ok(LoadConfig {
        target: LoadTarget::parse(url)?,
        threads,
        cpus: cpus.to_vec(),
        connections: u64::from(args.connections),
        duration: Duration::from_secs(u64::from(seconds)),
        rate: match scenario.kind {
            Kind::Player => None,
            _ => args.rate,
        },
        request_timeout: Duration::from_secs(10),
        workload,
        validation: Validation::Full,
        ca,
        sni: None,
        seed: 1,
        max_requests: None,
    })
}

/// Runs the load (on threads here, or on the `--workers`) while the progress bar follows its
/// counters.
fn drive(cfg: &LoadConfig, args: &BenchArgs, bar: &ProgressBar, done_s: u64) -> Result<Report> {
    let live = Arc::new(Live::default());
    let started = Instant::now();
    let base = bar.message();
    std::thread::scope(|scope| {
        let handle = scope.spawn(|| {
            if args.workers.is_empty() {
                edgeplane_load::run(cfg, Arc::clone(&live))
            } else {
                let dist = Distributed {
                    workers: args.workers.clone(),
                    threads_per_worker: args.load_threads,
                    start_delay: None,
                };
                edgeplane_load::run_distributed(cfg, &dist, Arc::clone(&live), |_| {})
            }
        });
        let mut last = (Instant::now(), 0u64);
        while !handle.is_finished() {
            std::thread::sleep(Duration::from_millis(100));
            let elapsed = started.elapsed();
            let bytes = live.bytes.load(Ordering::Relaxed);
            let dt = last.0.elapsed().as_secs_f64();
            if dt >= 1.0 {
                let gbps = (bytes - last.1) as f64 * 8.0 / dt / 1e9;
                bar.set_message(format!(
                    "{base} | {} req, {gbps:.2} Gbps, {} errors",
                    live.requests.load(Ordering::Relaxed),
                    live.errors.load(Ordering::Relaxed)
                ));
                last = (Instant::now(), bytes);
            }
            let pos = done_s * 10 + (elapsed.as_millis() / 100) as u64;
            bar.set_position(pos.min(done_s * 10 + cfg.duration.as_secs() * 10));
        }
        handle
            .join()
            .map_err(|_| anyhow!("the load generator panicked"))?
    })
}

/// A self-signed ECDSA P-256 certificate for 127.0.0.1 and localhost (openssl CLI).
fn self_signed_cert(dir: &Path) -> Result<HttpsFiles> {
    let files = HttpsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    header("self-signed certificate for the https scenario (openssl)");
    let openssl = find_program("openssl")?;
    let mut cmd = Command::new(openssl);
    cmd.args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "30",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
        // openssl's default for -x509 is a CA certificate, which WebPKI (rustls) refuses as a
        // server's own certificate.
        "-addext",
        "basicConstraints=critical,CA:FALSE",
        "-keyout",
    ])
    .arg(&files.key)
    .arg("-out")
    .arg(&files.cert)
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    run_checked(&mut cmd)?;
    Ok(files)
}

/// The order in which round `round` (1-based) measures `n` servers: as started in odd rounds,
/// reversed in even ones, so neither server always goes first.
fn round_order(n: usize, round: u32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if round.is_multiple_of(2) {
        order.reverse();
    }
    order
}

/// `getconf CLK_TCK`: the unit of utime/stime in /proc/PID/stat.
fn clk_tck() -> Result<u64> {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("run getconf CLK_TCK")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .ok()
        .filter(|&t| t > 0)
        .ok_or_else(|| anyhow!("getconf CLK_TCK printed {text:?}"))
}

/// The TCP congestion control (`bbr`): it decides how loopback TCP paces large responses
/// (loopback has no qdisc, so BBR paces inside TCP).
fn tcp_settings() -> String {
    fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn cpu_ticks(pids: &[u32]) -> Result<u64> {
    let mut total = 0;
    for &pid in pids {
        total += read_stat(pid)
            .with_context(|| format!("server process {pid} vanished during the bench"))?
            .ticks;
    }
    Ok(total)
}

/// The generator's own cost per scenario and server (medians over rounds): validated requests
/// per generator CPU-second and Gbps per generator core (Gbps / (generator CPU-s / second)).
fn generator_markdown(results: &[Measurement]) -> String {
    let mut s = String::from(
        "\n## Load generator (edgeplane-load, every body validated)\n\n\
         | scenario | server | threads | workers | generator CPU-s | req per generator CPU-s | \
         Gbps per generator core | valid |\n|---|---|---:|---:|---:|---:|---:|---|\n",
    );
    for g in by_server(results) {
        let last = g.rounds.last().map(|m| &m.report);
        let cores = |m: &Measurement| m.report.generator_cpu_s / m.report.duration_s.max(1e-9);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            g.scenario,
            g.server,
            last.map_or(0, |r| r.threads),
            last.map_or(0, |r| r.workers.len()),
            num(g.median(|m| m.report.generator_cpu_s), 2),
            num(g.median(|m| m.report.req_per_generator_cpu_s), 0),
            num(g.median(|m| m.report.gbps / cores(m)), 2),
            if g.rounds.iter().all(|m| m.report.valid) {
                "yes"
            } else {
                "NO"
            },
        );
    }
    s
}

/// The median of `values` (the mean of the middle two for an even count); NaN if empty.
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One server in one scenario, over all rounds.
struct ServerRounds<'a> {
    scenario: &'static str,
    server: &'a str,
    rounds: Vec<&'a Measurement>,
}

impl ServerRounds<'_> {
    fn median(&self, metric: impl Fn(&Measurement) -> f64) -> f64 {
        let values: Vec<f64> = self.rounds.iter().map(|m| metric(m)).collect();
        median(&values)
    }

    fn errors(&self) -> u64 {
        self.rounds.iter().map(|m| m.report.errors_total).sum()
    }

    /// Error counts by kind, summed over the rounds.
    fn errors_by_kind(&self) -> serde_json::Map<String, Value> {
        let mut out = serde_json::Map::new();
        for m in &self.rounds {
            for (k, v) in &m.report.errors {
                let sum = out.get(k).and_then(Value::as_u64).unwrap_or(0) + v.as_u64().unwrap_or(0);
                out.insert(k.clone(), sum.into());
            }
        }
        out
    }

    /// The metrics of the table and of `--baseline`, by name.
    fn metrics(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("gbps", self.median(Measurement::gbps)),
            ("req_per_s", self.median(Measurement::req_s)),
            ("latency_p50_ms", self.median(Measurement::p50)),
            ("latency_p99_ms", self.median(Measurement::p99)),
            ("latency_p999_ms", self.median(Measurement::p999)),
            ("server_cpu_s", self.median(Measurement::cpu)),
            ("server_cpu_utilisation", self.median(Measurement::cpu_util)),
            ("cpu_s_per_gib", self.median(Measurement::cpu_s_per_gib)),
            ("req_per_cpu_s", self.median(Measurement::req_per_cpu_s)),
        ]
    }

    fn to_json(&self) -> Value {
        let mut obj = serde_json::Map::new();
        obj.insert("scenario".into(), self.scenario.into());
        obj.insert("server".into(), self.server.into());
        obj.insert("rounds".into(), self.rounds.len().into());
        obj.insert(
            "statistic".into(),
            "median over rounds (errors: sum)".into(),
        );
        for (k, v) in self.metrics() {
            obj.insert(k.into(), finite(v));
        }
        obj.insert("errors".into(), self.errors().into());
        obj.insert(
            "errors_by_kind".into(),
            Value::Object(self.errors_by_kind()),
        );
        if let Some(p) = self.rounds.last().and_then(|m| m.report.player.as_ref()) {
            obj.insert(
                "player_last_round".into(),
                serde_json::to_value(p).unwrap_or(Value::Null),
            );
        }
        Value::Object(obj)
    }
}

/// Measurements grouped by (scenario, server), in the order they first appear.
fn by_server(results: &[Measurement]) -> Vec<ServerRounds<'_>> {
    let mut out: Vec<ServerRounds<'_>> = Vec::new();
    for m in results {
        match out
            .iter_mut()
            .find(|g| g.scenario == m.scenario && g.server == m.server)
        {
            Some(group) => group.rounds.push(m),
            None => out.push(ServerRounds {
                scenario: m.scenario,
                server: &m.server,
                rounds: vec![m],
            }),
        }
    }
    out
}

/// Per-round values of one ratio and their median, min and max.
struct Spread {
    per_round: Vec<f64>,
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(per_round: Vec<f64>) -> Spread {
        let min = per_round.iter().copied().fold(f64::INFINITY, f64::min);
        let max = per_round.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Spread {
            median: median(&per_round),
            min,
            max,
            per_round,
        }
    }

    /// `0.87 (0.84–0.90)`; just `0.87` for a single round.
    fn display(&self) -> String {
        if self.per_round.len() > 1 {
            format!("{:.2} ({:.2}–{:.2})", self.median, self.min, self.max)
        } else {
            format!("{:.2}", self.median)
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "median": finite(self.median),
            "min": finite(self.min),
            "max": finite(self.max),
            "per_round": self.per_round.iter().map(|v| finite(*v)).collect::<Vec<_>>(),
        })
    }
}

/// One server over another (edgeplane / nginx, or either / the limit) in one scenario, over
/// the rounds that measured both.
struct Ratio {
    scenario: &'static str,
    gbps: Spread,
    req_s: Spread,
    p99: Spread,
    req_per_cpu_s: Spread,
    cpu_s_per_gib: Spread,
    machine_cpu_s_per_gib: Spread,
}

fn ratios(results: &[Measurement]) -> Vec<Ratio> {
    ratios_of(results, "edgeplane", "nginx")
}

/// `num` / `den` per scenario, from the rounds that measured both.
fn ratios_of(results: &[Measurement], num: &str, den: &str) -> Vec<Ratio> {
    let mut out = Vec::new();
    for s in &SCENARIOS {
        let mut v: [Vec<f64>; 6] = Default::default();
        for e in results
            .iter()
            .filter(|m| m.scenario == s.name && m.server == num)
        {
            let Some(n) = results
                .iter()
                .find(|m| m.scenario == s.name && m.server == den && m.round == e.round)
            else {
                continue;
            };
            v[0].push(e.gbps() / n.gbps());
            v[1].push(e.req_s() / n.req_s());
            v[2].push(e.p99() / n.p99());
            v[3].push(e.req_per_cpu_s() / n.req_per_cpu_s());
            v[4].push(e.cpu_s_per_gib() / n.cpu_s_per_gib());
            v[5].push(e.machine_cpu_s_per_gib() / n.machine_cpu_s_per_gib());
        }
        if !v[0].is_empty() {
            let [a, b, c, d, e, f] = v;
            out.push(Ratio {
                scenario: s.name,
                gbps: Spread::of(a),
                req_s: Spread::of(b),
                p99: Spread::of(c),
                req_per_cpu_s: Spread::of(d),
                cpu_s_per_gib: Spread::of(e),
                machine_cpu_s_per_gib: Spread::of(f),
            });
        }
    }
    out
}

/// Every measurement's problems, named by server, scenario and round.
fn problems(results: &[Measurement]) -> Vec<String> {
    results
        .iter()
        .flat_map(|m| {
            m.problems()
                .into_iter()
                .map(move |p| format!("{} {} round {}: {p}", m.server, m.scenario, m.round))
        })
        .collect()
}

/// An earlier run's `results`, for `--baseline`.
pub(crate) struct Baseline {
    dir: PathBuf,
    results: Vec<Value>,
}

impl Baseline {
    fn load(dir: &Path) -> Result<Baseline> {
        let path = dir.join("report.json");
        let text = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let json: Value =
            serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        Ok(Baseline {
            dir: dir.to_owned(),
            results: json["results"].as_array().cloned().unwrap_or_default(),
        })
    }

    /// (new / old − 1) for `metric` of (scenario, server), if the baseline has it.
    fn delta(&self, scenario: &str, server: &str, metric: &str, new: f64) -> Option<f64> {
        let old = self
            .results
            .iter()
            .find(|r| r["scenario"] == scenario && r["server"] == server)?[metric]
            .as_f64()?;
        (old != 0.0 && new.is_finite()).then(|| new / old - 1.0)
    }
}

const DELTA_METRICS: [(&str, &str); 4] = [
    ("gbps", "Gbps"),
    ("latency_p99_ms", "p99"),
    ("cpu_s_per_gib", "CPU-s/GiB"),
    ("req_per_cpu_s", "req/CPU-s"),
];

fn deltas_text(b: &Baseline, g: &ServerRounds<'_>) -> String {
    let metrics = g.metrics();
    let parts: Vec<String> = DELTA_METRICS
        .iter()
        .filter_map(|(key, label)| {
            let new = metrics.iter().find(|(k, _)| k == key)?.1;
            b.delta(g.scenario, g.server, key, new)
                .map(|d| format!("{label} {:+.1}%", d * 100.0))
        })
        .collect();
    if parts.is_empty() {
        "–".to_owned()
    } else {
        parts.join(", ")
    }
}

pub(crate) struct RunContext<'a> {
    args: &'a BenchArgs,
    files: usize,
    file_size: u64,
    timestamp: String,
    nginx_version: String,
    revision: String,
    kernel: String,
    /// The TCP congestion control (`bbr`).
    tcp: String,
    threads: usize,
    skipped: Vec<String>,
}

fn num(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "–".to_owned()
    }
}

fn report_markdown(
    ctx: &RunContext<'_>,
    results: &[Measurement],
    shutdown: &[String],
    baseline: Option<&Baseline>,
    plots: &[(String, String)],
) -> String {
    let a = ctx.args;
    let mut s = match &a.target {
        Some(t) => format!("# edgeplane bench against {t}: {}\n\n", ctx.timestamp),
        None => format!("# edgeplane vs nginx: {}\n\n", ctx.timestamp),
    };
    let _ = writeln!(
        s,
        "- load: `edgeplane-load` ({}), {}, {} connections (player: {} viewers, one \
         connection each); {} files of {} MiB (page cache warm); every response checked: \
         status 206, Content-Length, Content-Range and every body byte",
        if !a.workers.is_empty() {
            format!(
                "{} worker process(es): {}, {}; their results merged into one measurement",
                a.workers.len(),
                a.workers.join(", "),
                match a.load_threads {
                    Some(n) => format!("{n} thread(s) each"),
                    None => "each with its own default threads".to_owned(),
                }
            )
        } else if a.target.is_some() {
            format!("{} thread(s), pinned, one per CPU", ctx.threads)
        } else {
            format!("{} thread(s) pinned to CPU {CLIENT_CPU}", ctx.threads)
        },
        match a.rate {
            Some(r) =>
                format!("open loop at {r:.0} req/s (latency corrected for coordinated omission)"),
            None => "closed loop".to_owned(),
        },
        a.connections,
        a.viewers,
        ctx.files,
        ctx.file_size >> 20
    );
    let _ = writeln!(
        s,
        "- method: per scenario, each server gets {} s of unmeasured warm-up once, then {} \
         round(s) of {} s; each round measures every server once, the order alternating between \
         rounds. The table shows each metric's median over the rounds (errors: summed); ratios \
         are the median of the per-round edgeplane / nginx ratios with their min–max. \
         Per-round numbers are in report.json",
        a.warmup, a.rounds, a.duration
    );
    if a.target.is_none() {
        let _ = writeln!(
            s,
            "- servers pinned to CPU {SERVER_CPU}: edgeplane `cores = 1` (profile `{}`, {}); \
             {} with 1 worker, `sendfile on; tcp_nopush on; access_log off; open_file_cache`",
            a.profile,
            match ctx.revision.as_str() {
                "" => "unknown revision".to_owned(),
                r => format!("revision `{r}`"),
            },
            ctx.nginx_version
        );
        s.push_str(
            "- server CPU = utime + stime of the server's processes from /proc/PID/stat; \
             CPU util = server CPU-s / wall-clock s (well below 100%: the load generator was \
             the bottleneck, so compare req/CPU-s and CPU-s/GiB)\n\
             - whole machine's CPU = busy ticks of both CPUs from /proc/stat (user, nice, \
             system, irq, softirq) over the run: server, generator, ksoftirqd, everything. On \
             loopback the kernel runs part of a sender's TCP work in the receiver's context (data \
             pushed out while processing the generator's ACKs, on the generator's CPU), so where \
             large responses are charged varies from run to run; the whole machine's figure does \
             not depend on it, and the generator's share is the same for every server\n",
        );
    }
    let _ = writeln!(
        s,
        "- Gbps = 10^9 bits/s received by the generator (headers included); kernel {}; TCP \
         congestion control {} (on loopback, BBR settles in one of two modes per run, and \
         responses over about 1 MiB cost twice as much CPU per byte in the slower one: see \
         docs/benchmarking.md)",
        ctx.kernel, ctx.tcp
    );
    s.push_str("\nScenarios:\n\n");
    for sc in SCENARIOS
        .iter()
        .filter(|sc| results.iter().any(|m| m.scenario == sc.name))
    {
        let _ = writeln!(s, "- `{}`: {}", sc.name, sc.what);
    }
    for skip in &ctx.skipped {
        let _ = writeln!(s, "- skipped {skip}");
    }
    let ratios = ratios(results);
    s.push_str(
        "\n| scenario | server | Gbps | req/s | p50 ms | p99 ms | p99.9 ms | CPU-s/GiB | \
         req/CPU-s | CPU util | errors | edgeplane / nginx |",
    );
    if baseline.is_some() {
        s.push_str(" Δ vs baseline |");
    }
    s.push_str("\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    if baseline.is_some() {
        s.push_str("---|");
    }
    s.push('\n');
    for g in by_server(results) {
        let ratio = match ratios.iter().find(|r| r.scenario == g.scenario) {
            Some(r) if g.server == "edgeplane" => format!(
                "Gbps {}; CPU-s/GiB {}",
                r.gbps.display(),
                r.cpu_s_per_gib.display()
            ),
            _ => String::new(),
        };
        let _ = write!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {ratio} |",
            g.scenario,
            g.server,
            num(g.median(Measurement::gbps), 2),
            num(g.median(Measurement::req_s), 0),
            num(g.median(Measurement::p50), 2),
            num(g.median(Measurement::p99), 2),
            num(g.median(Measurement::p999), 2),
            num(g.median(Measurement::cpu_s_per_gib), 3),
            num(g.median(Measurement::req_per_cpu_s), 0),
            match g.median(Measurement::cpu_util) {
                u if u.is_finite() => format!("{:.0}%", u * 100.0),
                _ => "–".to_owned(),
            },
            g.errors()
        );
        if let Some(b) = baseline {
            let _ = write!(s, " {} |", deltas_text(b, &g));
        }
        s.push('\n');
    }
    if !ratios.is_empty() {
        s.push_str(
            "\n## edgeplane / nginx (median of per-round ratios, min–max)\n\n\
             | scenario | Gbps | req/s | p99 latency (lower is better) | req per CPU-s (higher is \
             better) | CPU-s per GiB (lower is better) | whole machine's CPU-s per GiB |\n\
             |---|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in &ratios {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                r.scenario,
                r.gbps.display(),
                r.req_s.display(),
                r.p99.display(),
                r.req_per_cpu_s.display(),
                r.cpu_s_per_gib.display(),
                r.machine_cpu_s_per_gib.display()
            );
        }
    }
    let limit: Vec<(&str, Vec<Ratio>)> = ["edgeplane", "nginx"]
        .into_iter()
        .map(|server| (server, ratios_of(results, server, "limit")))
        .filter(|(_, r)| !r.is_empty())
        .collect();
    if !limit.is_empty() {
        s.push_str(
            "\n## Against the limit (median of per-round ratios, min–max)\n\n\
             `limit` is bench/refserver: one thread, one edge-triggered epoll registration per \
             connection, the Range line parsed and nothing else, the head with `MSG_MORE` and the \
             body with `sendfile` — the least a server can spend per request on this machine. \
             1.00 = as efficient as it.\n\n\
             | scenario | server | req per CPU-s / limit's (higher is better) | CPU-s per GiB / \
             limit's (lower is better) | whole machine's CPU-s per GiB / limit's | p99 / limit's \
             |\n|---|---|---:|---:|---:|---:|\n",
        );
        for (server, rs) in &limit {
            for r in rs {
                let _ = writeln!(
                    s,
                    "| {} | {server} | {} | {} | {} | {} |",
                    r.scenario,
                    r.req_per_cpu_s.display(),
                    r.cpu_s_per_gib.display(),
                    r.machine_cpu_s_per_gib.display(),
                    r.p99.display()
                );
            }
        }
    }
    let players: Vec<&Measurement> = results
        .iter()
        .filter(|m| m.report.player.is_some())
        .collect();
    if !players.is_empty() {
        s.push_str(
            "\n## Player model (per round)\n\n| server | round | viewers | started | startup p50 s \
             | startup p90 s | rebuffer | stalls | delivered kbps | switches | segments |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for m in players {
            let p = m.report.player.as_ref().expect("filtered");
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.3} | {:.3} | {:.2}% | {} | {:.0} | {} | {} |",
                m.server,
                m.round,
                p.viewers,
                p.started,
                p.startup_p50_s,
                p.startup_p90_s,
                p.rebuffer_ratio * 100.0,
                p.stalls,
                p.delivered_kbps_mean,
                p.switches,
                p.segments
            );
        }
    }
    let mixed: Vec<&Measurement> = results
        .iter()
        .filter(|m| m.report.classes.len() > 1)
        .collect();
    if !mixed.is_empty() {
        s.push_str(
            "\n## Hot and cold requests (per round)\n\n| scenario | server | round | hot req | hot p50 ms \
             | hot p99 ms | cold req | cold p50 ms | cold p99 ms | hot p99 / `64k` p99 (same round; \
             goal ≤ 2) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for m in mixed {
            let (h, c) = (&m.report.classes[0], &m.report.classes[1]);
            // The same server's hot-only p99: the `64k` scenario (hot 64 KiB ranges, same
            // connections) in the same round.
            let alone = results
                .iter()
                .find(|o| o.scenario == "64k" && o.server == m.server && o.round == m.round)
                .map_or(f64::NAN, Measurement::p99);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {} |",
                m.scenario,
                m.server,
                m.round,
                h.requests,
                h.latency.p50_ms,
                h.latency.p99_ms,
                c.requests,
                c.latency.p50_ms,
                c.latency.p99_ms,
                num(h.latency.p99_ms / alone, 2)
            );
        }
    }
    if let Some(b) = baseline {
        let _ = writeln!(
            s,
            "\nΔ vs baseline: this run's medians against those of `{}` (relative change; for \
             p99 and CPU-s/GiB lower is better). Compare the change with the spread between \
             rounds in report.json before reading anything into it.",
            b.dir.display()
        );
    }
    s.push_str(&generator_markdown(results));
    if !plots.is_empty() {
        s.push_str("\n## Plots\n\n");
        for (title, file) in plots {
            let _ = writeln!(s, "![{title}]({file})");
        }
    }
    let problems: Vec<String> = problems(results)
        .into_iter()
        .chain(shutdown.iter().cloned())
        .collect();
    if !problems.is_empty() {
        s.push_str("\n## Problems\n\n");
        for p in problems {
            let _ = writeln!(s, "- {p}");
        }
    }
    s
}

fn report_json(
    ctx: &RunContext<'_>,
    results: &[Measurement],
    shutdown: &[String],
    baseline: Option<&Baseline>,
) -> Value {
    let a = ctx.args;
    let over_limit: Vec<Value> = ["edgeplane", "nginx"]
        .iter()
        .flat_map(|server| {
            ratios_of(results, server, "limit")
                .into_iter()
                .map(move |r| {
                    json!({
                        "scenario": r.scenario,
                        "server": server,
                        "req_per_cpu_s": r.req_per_cpu_s.to_json(),
                        "cpu_s_per_gib": r.cpu_s_per_gib.to_json(),
                        "machine_cpu_s_per_gib": r.machine_cpu_s_per_gib.to_json(),
                        "latency_p99": r.p99.to_json(),
                    })
                })
        })
        .collect();
    json!({
        "timestamp": ctx.timestamp,
        "settings": {
            "duration_s": a.duration,
            "warmup_s": a.warmup,
            "rounds": a.rounds,
            "connections": a.connections,
            "viewers": a.viewers,
            "rate_per_s": a.rate,
            "load_generator": "edgeplane-load",
            "load_threads": ctx.threads,
            "load_workers": a.workers,
            "target": a.target,
            "server_cpu": SERVER_CPU,
            "client_cpu": CLIENT_CPU,
            "files": ctx.files,
            "file_bytes": ctx.file_size,
            "edgeplane_profile": a.profile,
            "edgeplane_revision": ctx.revision,
            "nginx_version": ctx.nginx_version,
            "kernel": ctx.kernel,
            "tcp": ctx.tcp,
            "skipped": ctx.skipped,
        },
        // Per server and scenario: the median of each metric over the rounds.
        "results": by_server(results).iter().map(|g| {
            let mut v = g.to_json();
            if let Some(b) = baseline {
                let metrics = g.metrics();
                let deltas: serde_json::Map<String, Value> = DELTA_METRICS
                    .iter()
                    .filter_map(|(k, _)| {
                        let new = metrics.iter().find(|(m, _)| m == k)?.1;
                        Some(((*k).to_owned(), finite(b.delta(g.scenario, g.server, k, new)?)))
                    })
                    .collect();
                v["delta_vs_baseline"] = Value::Object(deltas);
            }
            v
        }).collect::<Vec<_>>(),
        // Every measured run, in the order it ran, with the generator's whole report.
        "measurements": results.iter().map(Measurement::to_json).collect::<Vec<_>>(),
        "ratios_edgeplane_over_nginx": ratios(results)
            .iter()
            .map(|r| json!({
                "scenario": r.scenario,
                "gbps": r.gbps.to_json(),
                "req_per_s": r.req_s.to_json(),
                "latency_p99": r.p99.to_json(),
                "req_per_cpu_s": r.req_per_cpu_s.to_json(),
                "cpu_s_per_gib": r.cpu_s_per_gib.to_json(),
                "machine_cpu_s_per_gib": r.machine_cpu_s_per_gib.to_json(),
            }))
            .collect::<Vec<_>>(),
        "ratios_over_limit": over_limit,
        "baseline": baseline.map(|b| b.dir.display().to_string()),
        "shutdown_problems": shutdown,
    })
}

/// Per scenario: the latency CDF and the throughput over time of each server's last round, as
/// SVG files in the run directory. Returns (title, file name) per plot.
fn write_plots(dir: &Path, results: &[Measurement]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for sc in &SCENARIOS {
        let last: Vec<&Measurement> = by_server(results)
            .iter()
            .filter(|g| g.scenario == sc.name)
            .filter_map(|g| g.rounds.last().copied())
            .collect();
        if last.is_empty() {
            continue;
        }
        let cdf: Vec<svg::Series> = last
            .iter()
            .map(|m| svg::Series {
                name: m.server.clone(),
                points: m.report.latency_cdf.clone(),
            })
            .collect();
        let title = format!("{}: latency CDF (last round)", sc.name);
        let file = format!("latency-{}.svg", sc.name);
        fs::write(dir.join(&file), svg::latency_cdf(&title, &cdf))?;
        out.push((title, file));
        let tput: Vec<svg::Series> = last
            .iter()
            .map(|m| svg::Series {
                name: m.server.clone(),
                points: m
                    .report
                    .timeseries
                    .iter()
                    .map(|p| (p.t_s as f64 + 0.5, p.gbps))
                    .collect(),
            })
            .collect();
        let title = format!("{}: throughput per second (last round)", sc.name);
        let file = format!("throughput-{}.svg", sc.name);
        fs::write(dir.join(&file), svg::time_series(&title, "Gbps", &tput))?;
        out.push((title, file));
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use edgeplane_load::stats::{histogram, ReportInput, Stats};

    /// A 10 s run: `requests` of 64 KiB, `cpu_s` of server CPU; the whole machine spends 5 s
    /// more (the generator).
    fn run_64k(server: &str, round: u32, requests: u64, cpu_s: f64) -> Measurement {
        let mut stats = Stats::new(1);
        for i in 0..requests {
            stats.add_bytes(i as f64 * 10.0 / requests as f64, (64 << 10) + 200);
            stats.success(i as f64 * 10.0 / requests as f64, 0, 1000, 64 << 10);
        }
        stats.latency = histogram();
        stats.latency.record(1000).unwrap();
        let report = Report::build(
            &ReportInput {
                target: "http://x",
                mode: "closed",
                threads: 1,
                connections: 64,
                target_rate_per_s: None,
                duration_s: 10.0,
                class_names: &["hot".to_owned()],
                player: false,
                validation: "full",
            },
            &stats,
        );
        Measurement {
            scenario: "64k",
            server: server.to_owned(),
            round,
            report,
            cpu_s: Some(cpu_s),
            machine_cpu_s: Some(cpu_s + 5.0),
        }
    }

    fn args(rounds: u32) -> BenchArgs {
        BenchArgs {
            duration: 10,
            rounds,
            connections: 64,
            scenario: vec![ScenarioArg::All],
            server: ServerArg::Both,
            warmup: 2,
            profile: "release".to_owned(),
            rate: None,
            viewers: 10,
            failover_viewers: 20,
            failover_seconds: 20,
            failover_signal: crate::bench_failover::Failure::Kill,
            load_threads: None,
            workers: Vec::new(),
            baseline: None,
            target: None,
            no_peer: false,
            https_url: None,
            ca: None,
            callgrind: false,
            edgeplane_bin: None,
            callgrind_requests: 10,
            crowd_verify: "sampled".to_owned(),
        }
    }

    fn six() -> Vec<Measurement> {
        vec![
            run_64k("edgeplane", 1, 10_000, 5.0),
            run_64k("nginx", 1, 10_000, 5.0),
            run_64k("nginx", 2, 10_000, 5.0),
            run_64k("edgeplane", 2, 10_000, 6.25),
            run_64k("edgeplane", 3, 9_000, 5.0),
            run_64k("nginx", 3, 10_000, 5.0),
        ]
    }

    fn ctx(a: &BenchArgs) -> RunContext<'_> {
        RunContext {
            args: a,
            files: 4,
            file_size: 64 << 20,
            timestamp: "T".to_owned(),
            nginx_version: "nginx/1.22.1".to_owned(),
            revision: "abc".to_owned(),
            kernel: "6.1".to_owned(),
            tcp: "cubic".to_owned(),
            threads: 1,
            skipped: vec![],
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[7.0]), 7.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn rounds_alternate_order() {
        assert_eq!(round_order(2, 1), [0, 1]);
        assert_eq!(round_order(2, 2), [1, 0]);
        assert_eq!(round_order(2, 3), [0, 1]);
        assert_eq!(round_order(1, 2), [0]);
    }

    #[test]
    fn ratios_are_per_round_then_median() {
        // Per-round req/CPU-s ratios: 1.0, 0.8, 0.9 (edgeplane uses 1.25 CPU-s in round 2).
        let results = six();
        let r = ratios(&results);
        assert_eq!(r.len(), 1);
        let per_cpu = &r[0].req_per_cpu_s;
        assert_eq!(per_cpu.per_round.len(), 3);
        assert!((per_cpu.median - 0.9).abs() < 1e-9);
        assert!((per_cpu.min - 0.8).abs() < 1e-9);
        assert!((per_cpu.max - 1.0).abs() < 1e-9);
        assert_eq!(per_cpu.display(), "0.90 (0.80–1.00)");
        // Per GiB, the whole machine: the generator's 5 s dilutes round 2's 1.25 to 1.125;
        // round 3 moved 10 % fewer bytes for the same CPU.
        let machine = &r[0].machine_cpu_s_per_gib.per_round;
        let server = &r[0].cpu_s_per_gib.per_round;
        for (got, want) in machine.iter().zip([1.0, 1.125, 10.0 / 9.0]) {
            assert!((got - want).abs() < 1e-9, "{machine:?}");
        }
        assert!((server[1] - 1.25).abs() < 1e-9, "{server:?}");

        let groups = by_server(&results);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].server, "edgeplane");
        assert_eq!(groups[0].rounds.len(), 3);
        assert_eq!(groups[0].median(Measurement::cpu), 5.0);
        assert_eq!(groups[0].median(Measurement::req_s), 1_000.0);
    }

    #[test]
    fn report_table_ratios_and_baseline() {
        let results = six();
        let a = args(3);
        let md = report_markdown(&ctx(&a), &results, &[], None, &[]);
        assert!(md.contains("| 64k | edgeplane | 0.53 | 1000 |"), "{md}");
        assert!(md.contains("Gbps 1.00 (0.90–1.00)"), "{md}");
        assert!(!md.contains("## Problems"), "{md}");
        let json = report_json(&ctx(&a), &results, &[], None);
        assert_eq!(json["measurements"].as_array().unwrap().len(), 6);
        assert_eq!(json["results"][1]["server"], "nginx");
        assert_eq!(
            json["ratios_edgeplane_over_nginx"][0]["req_per_cpu_s"]["per_round"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
        // The same run as its own baseline: no change; a slower server: −50 % Gbps.
        let baseline = Baseline {
            dir: "B".into(),
            results: json["results"].as_array().unwrap().clone(),
        };
        let g = &by_server(&results)[0];
        assert_eq!(
            deltas_text(&baseline, g),
            "Gbps +0.0%, p99 +0.0%, CPU-s/GiB +0.0%, req/CPU-s +0.0%"
        );
        let d = baseline
            .delta(
                "64k",
                "edgeplane",
                "gbps",
                g.median(Measurement::gbps) / 2.0,
            )
            .unwrap();
        assert!((d + 0.5).abs() < 1e-9);
        assert!(baseline.delta("1m", "edgeplane", "gbps", 1.0).is_none());
        let md = report_markdown(&ctx(&a), &results, &[], Some(&baseline), &[]);
        assert!(md.contains("Δ vs baseline |"), "{md}");
    }

    #[test]
    fn errors_are_problems() {
        let mut m = run_64k("edgeplane", 1, 100, 1.0);
        m.report.errors_total = 3;
        m.report.errors.insert("content".into(), 3.into());
        assert_eq!(problems(&[m]), ["edgeplane 64k round 1: errors: 3 content"]);
    }

    #[test]
    fn an_invalid_measurement_is_a_problem_and_shows_in_the_generator_table() {
        let ok = run_64k("nginx", 1, 100, 1.0);
        let mut lost = run_64k("edgeplane", 1, 100, 1.0);
        lost.report.valid = false;
        lost.report.invalid_reasons = vec!["worker 10.0.0.9:7070 lost 3.0 s into the run".into()];
        assert_eq!(
            problems(&[ok, lost]),
            [
                "edgeplane 64k round 1: invalid measurement: worker 10.0.0.9:7070 lost 3.0 s into \
              the run"
            ]
        );
        let mut m = run_64k("edgeplane", 1, 100, 1.0);
        m.report.generator_cpu_s = 2.0;
        m.report.req_per_generator_cpu_s = 1234.0;
        let md = generator_markdown(&[m]);
        assert!(
            md.contains("| 64k | edgeplane |") && md.contains("| 1234 |"),
            "{md}"
        );
        assert!(md.contains("| yes |"), "{md}");
    }

    /// The debug edgeplane next to this test binary (target/debug/deps/xtask-… →
    /// target/debug/edgeplane), built first if `cargo test --workspace` did not.
    pub(crate) fn debug_edgeplane() -> PathBuf {
        let exe = std::env::current_exe().unwrap();
        let bin = exe.parent().unwrap().parent().unwrap().join("edgeplane");
        if !bin.is_file() {
            crate::util::run_checked(crate::util::cargo().args(["build", "-p", "edgeplane"]))
                .unwrap();
        }
        assert!(bin.is_file(), "no {}", bin.display());
        bin
    }

    /// End to end, 2 s per server: the 64k and https scenarios against edgeplane and nginx (if
    /// installed), small files in a temporary directory; checks the report's shape, not numbers.
    #[test]
    fn smoke_two_seconds_end_to_end() {
        if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
            eprintln!("skipping: the bench rig needs 2 CPUs");
            return;
        }
        let with_nginx = find_program("nginx").is_ok();
        if !with_nginx {
            eprintln!("nginx not installed: edgeplane only");
        }
        let dir = std::env::temp_dir().join(format!("xtask-bench-smoke-{}", std::process::id()));
        let setup = Setup {
            catalog: CatalogSpec {
                catalog: dir.join("catalog"),
                bench_dir: dir.clone(),
                files: 2,
                file_size: 8 << 20,
                wrk: false,
            },
            edgeplane: Some(debug_edgeplane()),
        };
        let mut a = args(1);
        a.duration = 2;
        a.warmup = 0;
        a.connections = 8;
        a.scenario = vec![ScenarioArg::K64, ScenarioArg::Https];
        a.server = if with_nginx {
            ServerArg::Both
        } else {
            ServerArg::Edgeplane
        };
        let outcome = run_with(&a, &setup).unwrap();
        assert!(outcome.problems.is_empty(), "{:?}", outcome.problems);
        let report: Value =
            serde_json::from_str(&fs::read_to_string(outcome.run_dir.join("report.json")).unwrap())
                .unwrap();
        let servers = if with_nginx { 2 } else { 1 };
        let results = report["results"].as_array().unwrap();
        // The reference server ("limit") runs beside nginx, in 64k only (it speaks no TLS).
        let limit = usize::from(with_nginx);
        assert_eq!(results.len(), 2 * servers + limit, "{report:#}");
        assert_eq!(
            results.iter().filter(|r| r["server"] == "limit").count(),
            limit,
            "{report:#}"
        );
        for r in results {
            assert!(r["gbps"].as_f64().unwrap() > 0.0, "{r}");
            assert!(r["latency_p99_ms"].as_f64().unwrap() > 0.0, "{r}");
            assert!(r["req_per_s"].as_f64().unwrap() > 0.0, "{r}");
            assert_eq!(r["errors"], 0, "{r}");
            assert!(r.get("cpu_s_per_gib").is_some(), "{r}");
        }
        let m = &report["measurements"][0];
        assert_eq!(
            m["load"]["validation"].as_str().unwrap().split(':').next(),
            Some("full")
        );
        assert!(m["load"]["latency_cdf"].as_array().unwrap().len() > 10);
        assert!(!m["load"]["timeseries"].as_array().unwrap().is_empty());
        if with_nginx {
            assert_eq!(
                report["ratios_edgeplane_over_nginx"]
                    .as_array()
                    .unwrap()
                    .len(),
                2
            );
        }
        let md = fs::read_to_string(outcome.run_dir.join("report.md")).unwrap();
        assert!(md.contains("| 64k | edgeplane |"), "{md}");
        for svg in ["latency-64k.svg", "throughput-64k.svg", "latency-https.svg"] {
            let text = fs::read_to_string(outcome.run_dir.join(svg)).unwrap();
            assert!(text.starts_with("<svg"), "{svg}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn single_round_ratio_has_no_range() {
        assert_eq!(Spread::of(vec![0.87]).display(), "0.87");
    }
}
