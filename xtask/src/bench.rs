//! `cargo xtask bench`: edgeplane against nginx (sendfile) on the same files, the same URLs and
//! the same load: wrk on CPU 1 requesting random range-aligned `Range: bytes=a-b` slices, each
//! server pinned to CPU 0. Reports throughput and, above all, server CPU per request and per
//! GiB, read from /proc before and after each run.
//!
//! One run per server is noisy on a small VM, so each scenario runs in rounds: after one warm-up
//! per server, every round measures each server once, the order alternating between rounds
//! (A B, B A, A B, ...). The report shows per-server medians over the rounds and, for the
//! edgeplane / nginx ratios, the median of the per-round ratios with their min–max range.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use clap::ValueEnum;
use serde_json::{json, Value};

use crate::testbed::{
    check_cpus, log_wrk_result, nginx_version, read_stat, run_wrk, Rig, Scenario, Target,
    WrkErrors, WrkResult, CLIENT_CPU, FILE_SIZE, SCENARIOS, SERVER_CPU,
};
use crate::util::{build_edgeplane, find_program, git_revision, header, kernel};

const GIB: f64 = (1u64 << 30) as f64;

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// Seconds of measured load per scenario, server and round.
    #[arg(long, default_value_t = 10)]
    duration: u32,
    /// Rounds per scenario; each measures every server once, the order alternating between
    /// rounds. The report shows medians over the rounds.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Concurrent connections (wrk -c).
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Which range size to run.
    #[arg(long, value_enum, default_value_t = ScenarioArg::All)]
    scenario: ScenarioArg,
    /// Which servers to run (the ratio table needs both).
    #[arg(long, value_enum, default_value_t = ServerArg::Both)]
    server: ServerArg,
    /// Seconds of unmeasured load per scenario and server, once before the first round.
    #[arg(long, default_value_t = 2)]
    warmup: u32,
    /// Cargo profile edgeplane is built with.
    #[arg(long, default_value = "release")]
    profile: String,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ScenarioArg {
    #[value(name = "64k")]
    K64,
    #[value(name = "1m")]
    M1,
    All,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ServerArg {
    Edgeplane,
    Nginx,
    Both,
}

/// One measured run: one server, one scenario, one round.
struct Measurement {
    scenario: &'static str,
    server: &'static str,
    range: u64,
    /// 1-based.
    round: u32,
    wrk: WrkResult,
    cpu_s: f64,
}

impl Measurement {
    fn req_s(&self) -> f64 {
        self.wrk.req_s()
    }
    fn gb_s(&self) -> f64 {
        self.wrk.gb_s()
    }
    fn cpu_util(&self) -> f64 {
        self.cpu_s / self.wrk.duration_s
    }
    fn cpu_s_per_gib(&self) -> f64 {
        self.cpu_s / (self.wrk.bytes as f64 / GIB)
    }
    fn req_per_cpu_s(&self) -> f64 {
        self.wrk.requests as f64 / self.cpu_s
    }
    fn avg_response(&self) -> f64 {
        self.wrk.bytes as f64 / self.wrk.requests.max(1) as f64
    }
    /// Why this run does not count, if it does not.
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.wrk.requests == 0 {
            out.push("no requests completed".to_owned());
        }
        if self.wrk.errors.status > 0 {
            out.push(format!("{} non-2xx/3xx responses", self.wrk.errors.status));
        }
        // Status line and headers are a few hundred bytes; a response far from the range
        // size means the range was not honoured (or was answered with an error body).
        let avg = self.avg_response();
        if self.wrk.requests > 0 && !(self.range as f64..=self.range as f64 + 2048.0).contains(&avg)
        {
            out.push(format!(
                "average response is {avg:.0} bytes for {} byte ranges",
                self.range
            ));
        }
        out
    }
    fn to_json(&self) -> Value {
        json!({
            "scenario": self.scenario,
            "server": self.server,
            "round": self.round,
            "range_bytes": self.range,
            "duration_s": self.wrk.duration_s,
            "requests": self.wrk.requests,
            "bytes": self.wrk.bytes,
            "req_per_s": self.req_s(),
            "gb_per_s": self.gb_s(),
            "server_cpu_s": self.cpu_s,
            "server_cpu_utilisation": self.cpu_util(),
            "cpu_s_per_gib": self.cpu_s_per_gib(),
            "req_per_cpu_s": self.req_per_cpu_s(),
            "latency_p50_ms": self.wrk.p50_ms,
            "latency_p99_ms": self.wrk.p99_ms,
            "errors": errors_json(&self.wrk.errors),
            "problems": self.problems(),
        })
    }
}

fn errors_json(e: &WrkErrors) -> Value {
    json!({
        "connect": e.connect,
        "read": e.read,
        "write": e.write,
        "timeout": e.timeout,
        "status": e.status,
    })
}

pub(crate) fn run(args: &BenchArgs) -> Result<()> {
    if args.duration == 0 || args.connections == 0 || args.rounds == 0 {
        bail!("--duration, --connections and --rounds must be at least 1");
    }
    check_cpus()?;
    let want_edgeplane = args.server != ServerArg::Nginx;
    let want_nginx = args.server != ServerArg::Edgeplane;
    let nginx = if want_nginx {
        Some(find_program("nginx")?)
    } else {
        None
    };
    let scenarios: Vec<&Scenario> = SCENARIOS
        .iter()
        .filter(|s| match args.scenario {
            ScenarioArg::All => true,
            ScenarioArg::K64 => s.name == "64k",
            ScenarioArg::M1 => s.name == "1m",
        })
        .collect();
    let clk_tck = clk_tck()?;

    let bin = if want_edgeplane {
        Some(build_edgeplane(&args.profile)?)
    } else {
        None
    };

    let rig = Rig::prepare("", args.connections)?;
    let servers = u32::from(want_edgeplane) + u32::from(want_nginx);
    let load_s = scenarios.len() as u32 * servers * (args.warmup + args.rounds * args.duration);
    eprintln!(
        "{} scenario(s) x {servers} server(s): {} s warm-up, then {} round(s) of {} s each; \
         about {:.1} min of load",
        scenarios.len(),
        args.warmup,
        args.rounds,
        args.duration,
        f64::from(load_s) / 60.0
    );

    // Both servers run for the whole bench, each idle while the other is measured; dropping a
    // `Target` (also on error) stops its server.
    let mut targets = Vec::new();
    if let Some(bin) = &bin {
        targets.push(rig.start_edgeplane(bin)?);
    }
    if let Some(nginx) = &nginx {
        targets.push(rig.start_nginx(nginx)?);
    }

    let mut results = Vec::new();
    for scenario in &scenarios {
        let script = rig.write_wrk_script(scenario)?;
        if args.warmup > 0 {
            for target in &mut targets {
                header(&format!(
                    "{}: {} ranges, {} s of warm-up",
                    target.name(),
                    scenario.name,
                    args.warmup
                ));
                run_wrk(&mut rig.wrk_command(&script, target, args.warmup))?;
                target.server.check_running()?;
            }
        }
        for round in 1..=args.rounds {
            for i in round_order(targets.len(), round) {
                let target = &mut targets[i];
                header(&format!(
                    "round {round}/{}, {}: {} ranges, wrk -t1 -c{} -d{}s",
                    args.rounds,
                    target.name(),
                    scenario.name,
                    args.connections,
                    args.duration
                ));
                let m = measure(&rig, &script, scenario, target, round, args, clk_tck)?;
                eprintln!(
                    "{:.0} req/s, {:.2} GB/s, server CPU {:.2} s ({:.0}%), {:.3} CPU-s/GiB, \
                     {:.0} req/CPU-s, errors: {} socket, {} status",
                    m.req_s(),
                    m.gb_s(),
                    m.cpu_s,
                    m.cpu_util() * 100.0,
                    m.cpu_s_per_gib(),
                    m.req_per_cpu_s(),
                    m.wrk.errors.socket(),
                    m.wrk.errors.status
                );
                results.push(m);
            }
        }
    }

    header("stopping servers");
    let mut shutdown_problems = Vec::new();
    for target in targets {
        if let Err(err) = target.shut_down() {
            shutdown_problems.push(format!("{err:#}"));
        }
    }

    let context = RunContext {
        args,
        files: rig.files.len(),
        timestamp: rig.run_name(),
        nginx_version: nginx.as_deref().map(nginx_version).unwrap_or_default(),
        revision: git_revision(),
        kernel: kernel(),
    };
    let markdown = report_markdown(&context, &results, &shutdown_problems);
    println!("\n{markdown}");
    fs::write(rig.run_dir.join("report.md"), &markdown)?;
    let report = report_json(&context, &results, &shutdown_problems);
    fs::write(
        rig.run_dir.join("report.json"),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    eprintln!("wrote {}/report.md and report.json", rig.run_dir.display());

    let bad: Vec<String> = problems(&results)
        .into_iter()
        .chain(shutdown_problems)
        .collect();
    if !bad.is_empty() {
        bail!("bench finished with problems:\n  {}", bad.join("\n  "));
    }
    Ok(())
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

fn measure(
    rig: &Rig,
    script: &Path,
    scenario: &Scenario,
    target: &mut Target,
    round: u32,
    args: &BenchArgs,
    clk_tck: u64,
) -> Result<Measurement> {
    let pids = target.pids();
    let before = cpu_ticks(&pids)?;
    let mut cmd = rig.wrk_command(script, target, args.duration);
    let log = rig.run_dir.join(format!(
        "wrk-{}-{}-r{round}.txt",
        scenario.name,
        target.name()
    ));
    let output = run_wrk(&mut cmd)?;
    let after = cpu_ticks(&pids)?;
    target.server.check_running()?;
    Ok(Measurement {
        scenario: scenario.name,
        server: target.name(),
        range: scenario.range,
        round,
        wrk: log_wrk_result(&cmd, &output, &log)?,
        cpu_s: after.saturating_sub(before) as f64 / clk_tck as f64,
    })
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

fn cpu_ticks(pids: &[u32]) -> Result<u64> {
    let mut total = 0;
    for &pid in pids {
        total += read_stat(pid)
            .with_context(|| format!("server process {pid} vanished during the bench"))?
            .ticks;
    }
    Ok(total)
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
    server: &'static str,
    rounds: Vec<&'a Measurement>,
}

impl ServerRounds<'_> {
    fn median(&self, metric: impl Fn(&Measurement) -> f64) -> f64 {
        let values: Vec<f64> = self.rounds.iter().map(|m| metric(m)).collect();
        median(&values)
    }

    /// Errors summed over the rounds.
    fn errors(&self) -> WrkErrors {
        let mut sum = WrkErrors::default();
        for m in &self.rounds {
            let e = &m.wrk.errors;
            sum.connect += e.connect;
            sum.read += e.read;
            sum.write += e.write;
            sum.timeout += e.timeout;
            sum.status += e.status;
        }
        sum
    }

    fn to_json(&self) -> Value {
        json!({
            "scenario": self.scenario,
            "server": self.server,
            "rounds": self.rounds.len(),
            "statistic": "median over rounds (errors: sum)",
            "req_per_s": self.median(Measurement::req_s),
            "gb_per_s": self.median(Measurement::gb_s),
            "server_cpu_s": self.median(|m| m.cpu_s),
            "server_cpu_utilisation": self.median(Measurement::cpu_util),
            "cpu_s_per_gib": self.median(Measurement::cpu_s_per_gib),
            "req_per_cpu_s": self.median(Measurement::req_per_cpu_s),
            "latency_p50_ms": self.median(|m| m.wrk.p50_ms),
            "latency_p99_ms": self.median(|m| m.wrk.p99_ms),
            "errors": errors_json(&self.errors()),
        })
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
                server: m.server,
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
            "median": self.median,
            "min": self.min,
            "max": self.max,
            "per_round": self.per_round,
        })
    }
}

/// edgeplane / nginx in one scenario, over the rounds that measured both.
struct Ratio {
    scenario: &'static str,
    req_s: Spread,
    req_per_cpu_s: Spread,
    cpu_s_per_gib: Spread,
}

fn ratios(results: &[Measurement]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for s in &SCENARIOS {
        let (mut req_s, mut per_cpu, mut per_gib) = (Vec::new(), Vec::new(), Vec::new());
        for e in results
            .iter()
            .filter(|m| m.scenario == s.name && m.server == "edgeplane")
        {
            let Some(n) = results
                .iter()
                .find(|m| m.scenario == s.name && m.server == "nginx" && m.round == e.round)
            else {
                continue;
            };
            req_s.push(e.req_s() / n.req_s());
            per_cpu.push(e.req_per_cpu_s() / n.req_per_cpu_s());
            per_gib.push(e.cpu_s_per_gib() / n.cpu_s_per_gib());
        }
        if !req_s.is_empty() {
            out.push(Ratio {
                scenario: s.name,
                req_s: Spread::of(req_s),
                req_per_cpu_s: Spread::of(per_cpu),
                cpu_s_per_gib: Spread::of(per_gib),
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

struct RunContext<'a> {
    args: &'a BenchArgs,
    files: usize,
    timestamp: String,
    nginx_version: String,
    revision: String,
    kernel: String,
}

fn report_markdown(ctx: &RunContext<'_>, results: &[Measurement], shutdown: &[String]) -> String {
    let a = ctx.args;
    let mut s = format!("# edgeplane vs nginx: {}\n\n", ctx.timestamp);
    let _ = writeln!(
        s,
        "- load: `wrk -t1 -c{} -d{}s` pinned to CPU {CLIENT_CPU}; random `Range: bytes=a-b` \
         requests aligned to the range size over {} files of {} MiB (page cache warm)",
        a.connections,
        a.duration,
        ctx.files,
        FILE_SIZE >> 20
    );
    let _ = writeln!(
        s,
        "- method: per scenario, each server gets {} s of unmeasured warm-up once, then {} \
         round(s); each round measures every server once, the order alternating between rounds \
         (edgeplane first in odd rounds, nginx first in even ones). The server table shows each \
         metric's median over the rounds (errors: summed); the ratio table shows the median of \
         the per-round edgeplane / nginx ratios and, in parentheses, their min–max. Per-round \
         numbers are in report.json",
        a.warmup, a.rounds
    );
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
    let _ = writeln!(
        s,
        "- server CPU = utime + stime of the server's processes from /proc/PID/stat; \
         GB = 10^9 bytes as counted by wrk (headers included); kernel {}",
        ctx.kernel
    );
    s.push_str(
        "- CPU util = server CPU-s / wall-clock s. Well below 100% means the one wrk thread was \
         the bottleneck: then req/s compares the client, while req/CPU-s and CPU-s/GiB still \
         compare the servers.\n\n",
    );
    s.push_str(
        "| scenario | server | req/s | GB/s | server CPU-s | CPU util | CPU-s/GiB | req/CPU-s \
         | p50 ms | p99 ms | errors |\n",
    );
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for g in by_server(results) {
        let e = g.errors();
        let errors = match (e.socket(), e.status) {
            (0, 0) => "0".to_owned(),
            (sock, status) => format!(
                "{status} non-2xx; socket: {} connect, {} read, {} write, {} timeout ({sock})",
                e.connect, e.read, e.write, e.timeout
            ),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.0}% | {:.3} | {:.0} | {:.2} | {:.2} | {errors} |",
            g.scenario,
            g.server,
            g.median(Measurement::req_s),
            g.median(Measurement::gb_s),
            g.median(|m| m.cpu_s),
            g.median(Measurement::cpu_util) * 100.0,
            g.median(Measurement::cpu_s_per_gib),
            g.median(Measurement::req_per_cpu_s),
            g.median(|m| m.wrk.p50_ms),
            g.median(|m| m.wrk.p99_ms)
        );
    }
    let ratios = ratios(results);
    if !ratios.is_empty() {
        let _ = write!(
            s,
            "\n## edgeplane / nginx (median of per-round ratios, min–max)\n\n\
             | scenario | req/s | req per CPU-s (higher is better) | CPU-s per GiB (lower is better) |\n\
             |---|---:|---:|---:|\n",
        );
        for r in ratios {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                r.scenario,
                r.req_s.display(),
                r.req_per_cpu_s.display(),
                r.cpu_s_per_gib.display()
            );
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

fn report_json(ctx: &RunContext<'_>, results: &[Measurement], shutdown: &[String]) -> Value {
    let a = ctx.args;
    json!({
        "timestamp": ctx.timestamp,
        "settings": {
            "duration_s": a.duration,
            "warmup_s": a.warmup,
            "rounds": a.rounds,
            "connections": a.connections,
            "wrk_threads": 1,
            "server_cpu": SERVER_CPU,
            "client_cpu": CLIENT_CPU,
            "files": ctx.files,
            "file_bytes": FILE_SIZE,
            "edgeplane_profile": a.profile,
            "edgeplane_revision": ctx.revision,
            "nginx_version": ctx.nginx_version,
            "kernel": ctx.kernel,
        },
        // Per server and scenario: the median of each metric over the rounds.
        "results": by_server(results).iter().map(ServerRounds::to_json).collect::<Vec<_>>(),
        // Every measured run, in the order it ran.
        "measurements": results.iter().map(Measurement::to_json).collect::<Vec<_>>(),
        "ratios_edgeplane_over_nginx": ratios(results)
            .iter()
            .map(|r| json!({
                "scenario": r.scenario,
                "req_per_s": r.req_s.to_json(),
                "req_per_cpu_s": r.req_per_cpu_s.to_json(),
                "cpu_s_per_gib": r.cpu_s_per_gib.to_json(),
            }))
            .collect::<Vec<_>>(),
        "shutdown_problems": shutdown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 10 s run: `requests` of 64 KiB, `cpu_s` of server CPU.
    fn run_64k(server: &'static str, round: u32, requests: u64, cpu_s: f64) -> Measurement {
        Measurement {
            scenario: "64k",
            server,
            range: 64 << 10,
            round,
            wrk: WrkResult {
                duration_s: 10.0,
                requests,
                bytes: requests * ((64 << 10) + 200),
                errors: WrkErrors::default(),
                p50_ms: 1.0,
                p99_ms: 10.0,
            },
            cpu_s,
        }
    }

    fn args(rounds: u32) -> BenchArgs {
        BenchArgs {
            duration: 10,
            rounds,
            connections: 64,
            scenario: ScenarioArg::All,
            server: ServerArg::Both,
            warmup: 2,
            profile: "release".to_owned(),
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
        let results = [
            run_64k("edgeplane", 1, 100_000, 5.0),
            run_64k("nginx", 1, 100_000, 5.0),
            run_64k("nginx", 2, 100_000, 5.0),
            run_64k("edgeplane", 2, 100_000, 6.25),
            run_64k("edgeplane", 3, 90_000, 5.0),
            run_64k("nginx", 3, 100_000, 5.0),
        ];
        let r = ratios(&results);
        assert_eq!(r.len(), 1);
        let per_cpu = &r[0].req_per_cpu_s;
        assert_eq!(per_cpu.per_round.len(), 3);
        assert!((per_cpu.median - 0.9).abs() < 1e-9);
        assert!((per_cpu.min - 0.8).abs() < 1e-9);
        assert!((per_cpu.max - 1.0).abs() < 1e-9);
        assert_eq!(per_cpu.display(), "0.90 (0.80–1.00)");

        let groups = by_server(&results);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].server, "edgeplane");
        assert_eq!(groups[0].rounds.len(), 3);
        assert_eq!(groups[0].median(|m| m.cpu_s), 5.0);
        assert_eq!(groups[0].median(Measurement::req_s), 10_000.0);
    }

    #[test]
    fn report_shows_medians_and_ranges() {
        let results = [
            run_64k("edgeplane", 1, 100_000, 5.0),
            run_64k("nginx", 1, 100_000, 5.0),
            run_64k("nginx", 2, 100_000, 5.0),
            run_64k("edgeplane", 2, 100_000, 6.25),
            run_64k("edgeplane", 3, 90_000, 5.0),
            run_64k("nginx", 3, 100_000, 5.0),
        ];
        let a = args(3);
        let ctx = RunContext {
            args: &a,
            files: 4,
            timestamp: "T".to_owned(),
            nginx_version: "nginx/1.22.1".to_owned(),
            revision: "abc".to_owned(),
            kernel: "6.1".to_owned(),
        };
        let md = report_markdown(&ctx, &results, &[]);
        assert!(md.contains("| 64k | edgeplane | 10000 |"), "{md}");
        assert!(
            md.contains("| 64k | 1.00 (0.90–1.00) | 0.90 (0.80–1.00) |"),
            "{md}"
        );
        assert!(!md.contains("## Problems"), "{md}");
        let json = report_json(&ctx, &results, &[]);
        assert_eq!(json["measurements"].as_array().unwrap().len(), 6);
        assert_eq!(json["results"][1]["server"], "nginx");
        assert_eq!(
            json["ratios_edgeplane_over_nginx"][0]["req_per_cpu_s"]["per_round"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn single_round_ratio_has_no_range() {
        assert_eq!(Spread::of(vec![0.87]).display(), "0.87");
    }
}
