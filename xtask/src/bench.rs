//! `cargo xtask bench`: edgeplane against nginx (sendfile) on the same files, the same URLs and
//! the same load: wrk on CPU 1 requesting random range-aligned `Range: bytes=a-b` slices, each
//! server pinned to CPU 0. Reports throughput and, above all, server CPU per request and per
//! GiB, read from /proc before and after each run.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::ValueEnum;
use serde_json::{json, Value};

use crate::catalog::ensure_object;
use crate::demo::toml_string;
use crate::server::{describe_status, start_edgeplane, Server, STOP_TIMEOUT};
use crate::util::{
    build_edgeplane, display_command, find_program, header, target_dir, utc_timestamp,
};

const FILES: u32 = 4;
const FILE_SIZE: u64 = 64 << 20;
const SERVER_CPU: &str = "0";
const CLIENT_CPU: &str = "1";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const GIB: f64 = (1u64 << 30) as f64;
/// Requests wrk's Lua script prepares up front and cycles through.
const PREPARED_REQUESTS: u32 = 16_384;

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// Seconds of measured load per scenario and server.
    #[arg(long, default_value_t = 10)]
    duration: u32,
    /// Concurrent connections (wrk -c).
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Which range size to run.
    #[arg(long, value_enum, default_value_t = ScenarioArg::All)]
    scenario: ScenarioArg,
    /// Which servers to run (the ratio table needs both).
    #[arg(long, value_enum, default_value_t = ServerArg::Both)]
    server: ServerArg,
    /// Seconds of unmeasured load before each measured run.
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

struct Scenario {
    name: &'static str,
    range: u64,
    seed: u32,
}

const SCENARIOS: [Scenario; 2] = [
    Scenario {
        name: "64k",
        range: 64 << 10,
        seed: 64,
    },
    Scenario {
        name: "1m",
        range: 1 << 20,
        seed: 1024,
    },
];

/// A running server under test.
struct Target {
    name: &'static str,
    server: Server,
    addr: SocketAddr,
}

/// One measured run.
struct Measurement {
    scenario: &'static str,
    server: &'static str,
    range: u64,
    duration_s: f64,
    requests: u64,
    bytes: u64,
    errors: WrkErrors,
    cpu_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

#[derive(Default)]
struct WrkErrors {
    connect: u64,
    read: u64,
    write: u64,
    timeout: u64,
    /// Responses that were not 2xx or 3xx.
    status: u64,
}

impl WrkErrors {
    fn socket(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout
    }
}

impl Measurement {
    fn req_s(&self) -> f64 {
        self.requests as f64 / self.duration_s
    }
    fn gb_s(&self) -> f64 {
        self.bytes as f64 / self.duration_s / 1e9
    }
    fn cpu_util(&self) -> f64 {
        self.cpu_s / self.duration_s
    }
    fn cpu_s_per_gib(&self) -> f64 {
        self.cpu_s / (self.bytes as f64 / GIB)
    }
    fn req_per_cpu_s(&self) -> f64 {
        self.requests as f64 / self.cpu_s
    }
    fn avg_response(&self) -> f64 {
        self.bytes as f64 / self.requests.max(1) as f64
    }
    /// Why this run does not count, if it does not.
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.requests == 0 {
            out.push("no requests completed".to_owned());
        }
        if self.errors.status > 0 {
            out.push(format!("{} non-2xx/3xx responses", self.errors.status));
        }
        // Status line and headers are a few hundred bytes; a response far from the range
        // size means the range was not honoured (or was answered with an error body).
        let avg = self.avg_response();
        if self.requests > 0 && !(self.range as f64..=self.range as f64 + 2048.0).contains(&avg) {
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
            "range_bytes": self.range,
            "duration_s": self.duration_s,
            "requests": self.requests,
            "bytes": self.bytes,
            "req_per_s": self.req_s(),
            "gb_per_s": self.gb_s(),
            "server_cpu_s": self.cpu_s,
            "server_cpu_utilisation": self.cpu_util(),
            "cpu_s_per_gib": self.cpu_s_per_gib(),
            "req_per_cpu_s": self.req_per_cpu_s(),
            "latency_p50_ms": self.p50_ms,
            "latency_p99_ms": self.p99_ms,
            "errors": {
                "connect": self.errors.connect,
                "read": self.errors.read,
                "write": self.errors.write,
                "timeout": self.errors.timeout,
                "status": self.errors.status,
            },
            "problems": self.problems(),
        })
    }
}

pub(crate) fn run(args: &BenchArgs) -> Result<()> {
    if args.duration == 0 || args.connections == 0 {
        bail!("--duration and --connections must be at least 1");
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        bail!("the bench needs 2 CPUs (server on CPU 0, wrk on CPU 1); this machine has {cpus}");
    }
    let wrk = find_program("wrk")?;
    let taskset = find_program("taskset")?;
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

    let bench_dir = target_dir().join("bench");
    let catalog = bench_dir.join("catalog");
    header(&format!(
        "bench catalog: {FILES} x {} MiB under {}",
        FILE_SIZE >> 20,
        catalog.display()
    ));
    let files = write_catalog(&catalog)?;
    let run_dir = new_run_dir(&bench_dir)?;
    eprintln!("run directory: {}", run_dir.display());

    // Both servers run for the whole bench, each idle while the other is measured; dropping a
    // `Target` (also on error) stops its server.
    let mut targets = Vec::new();
    if let Some(bin) = &bin {
        header("starting edgeplane (cores = 1, pinned to CPU 0)");
        let config = run_dir.join("edgeplane.toml");
        fs::write(&config, edgeplane_config(&catalog, args.connections))?;
        let (server, ready) = start_edgeplane(
            bin,
            &config,
            &run_dir.join("edgeplane.log"),
            Some(SERVER_CPU),
            READY_TIMEOUT,
        )?;
        targets.push(Target {
            name: "edgeplane",
            server,
            addr: ready.http,
        });
    }
    if let Some(nginx) = &nginx {
        header("starting nginx (1 worker, sendfile, pinned to CPU 0)");
        let (server, addr) = start_nginx(nginx, &taskset, &run_dir.join("nginx"), &catalog, args)?;
        targets.push(Target {
            name: "nginx",
            server,
            addr,
        });
    }

    let mut results = Vec::new();
    for scenario in &scenarios {
        let script = run_dir.join(format!("wrk-{}.lua", scenario.name));
        fs::write(&script, wrk_script(scenario, &files))?;
        for target in &mut targets {
            header(&format!(
                "{}: {} ranges, wrk -t1 -c{} -d{}s",
                target.name, scenario.name, args.connections, args.duration
            ));
            let m = measure(
                &wrk, &taskset, &script, &run_dir, scenario, target, args, clk_tck,
            )?;
            eprintln!(
                "{:.0} req/s, {:.2} GB/s, server CPU {:.2} s ({:.0}%), {:.3} CPU-s/GiB, \
                 {:.0} req/CPU-s, errors: {} socket, {} status",
                m.req_s(),
                m.gb_s(),
                m.cpu_s,
                m.cpu_util() * 100.0,
                m.cpu_s_per_gib(),
                m.req_per_cpu_s(),
                m.errors.socket(),
                m.errors.status
            );
            results.push(m);
        }
    }

    header("stopping servers");
    let mut shutdown_problems = Vec::new();
    for mut target in targets {
        // nginx: SIGQUIT is its graceful shutdown; edgeplane: SIGTERM (the contract).
        let signal = if target.name == "nginx" {
            libc::SIGQUIT
        } else {
            libc::SIGTERM
        };
        match target.server.stop(signal, STOP_TIMEOUT) {
            Ok(status) if status.success() => eprintln!("{} exited with status 0", target.name),
            Ok(status) => shutdown_problems.push(format!(
                "{} exited with {}",
                target.name,
                describe_status(Some(status))
            )),
            Err(err) => shutdown_problems.push(format!("{err:#}")),
        }
    }

    let context = RunContext {
        args,
        files: files.len(),
        timestamp: run_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        nginx_version: nginx.as_deref().map(nginx_version).unwrap_or_default(),
    };
    let markdown = report_markdown(&context, &results, &shutdown_problems);
    println!("\n{markdown}");
    fs::write(run_dir.join("report.md"), &markdown)?;
    let report = report_json(&context, &results, &shutdown_problems);
    fs::write(
        run_dir.join("report.json"),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    eprintln!("wrote {}/report.md and report.json", run_dir.display());

    let bad: Vec<String> = results
        .iter()
        .flat_map(|m| {
            m.problems()
                .into_iter()
                .map(move |p| format!("{} {}: {p}", m.server, m.scenario))
        })
        .chain(shutdown_problems)
        .collect();
    if !bad.is_empty() {
        bail!("bench finished with problems:\n  {}", bad.join("\n  "));
    }
    Ok(())
}

/// Writes (or keeps) the bench files and reads them once so they start in the page cache.
/// Returns (url path, size) per file.
fn write_catalog(dir: &Path) -> Result<Vec<(String, u64)>> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut files = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..FILES {
        let name = format!("bench-{i:02}.bin");
        if ensure_object(dir, &name, FILE_SIZE)? {
            eprintln!("wrote {name}");
        }
        let mut file = File::open(dir.join(&name))?;
        while file.read(&mut buf)? > 0 {}
        files.push((format!("/{name}"), FILE_SIZE));
    }
    Ok(files)
}

/// `target/bench/<UTC timestamp>`, made unique.
fn new_run_dir(bench_dir: &Path) -> Result<PathBuf> {
    let stamp = utc_timestamp();
    for n in 0.. {
        let name = if n == 0 {
            stamp.clone()
        } else {
            format!("{stamp}-{n}")
        };
        let dir = bench_dir.join(name);
        if !dir.exists() {
            fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            return Ok(dir);
        }
    }
    unreachable!("an unused directory name exists")
}

fn edgeplane_config(catalog: &Path, connections: u32) -> String {
    let per_client = connections.saturating_add(64).max(256);
    let total = per_client.saturating_mul(2).max(10_000);
    format!(
        "# Written by `cargo xtask bench`.\n\
         cores = 1\n\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [limits]\nmax_connections = {total}\nmax_connections_per_client = {per_client}\n\n\
         [[tier]]\nname = \"flash\"\nkind = \"flash\"\npath = {}\n",
        toml_string(catalog)
    )
}

fn start_nginx(
    nginx: &Path,
    taskset: &Path,
    prefix: &Path,
    catalog: &Path,
    args: &BenchArgs,
) -> Result<(Server, SocketAddr)> {
    fs::create_dir_all(prefix.join("tmp"))?;
    let addr = free_port()?;
    let conf = prefix.join("nginx.conf");
    fs::write(&conf, nginx_config(prefix, catalog, addr, args.connections))?;
    let error_log = prefix.join("error.log");
    let mut cmd = Command::new(taskset);
    cmd.arg("-c")
        .arg(SERVER_CPU)
        .arg(nginx)
        .arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(&error_log);
    let mut server = Server::spawn("nginx", cmd, &prefix.join("stderr.log"))?;
    server
        .wait_for_port(addr, READY_TIMEOUT)
        .with_context(|| format!("nginx did not come up; see {}", error_log.display()))?;
    eprintln!("nginx ready: http={addr}");
    Ok((server, addr))
}

fn nginx_config(prefix: &Path, catalog: &Path, addr: SocketAddr, connections: u32) -> String {
    let p = |name: &str| prefix.join(name).to_string_lossy().into_owned();
    // Workers of a root master switch to `nobody`; keep root so the files are readable
    // wherever the workspace lives. (Without root the directive is ignored, so leave it out.)
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let user = if unsafe { libc::geteuid() } == 0 {
        "user root;\n"
    } else {
        ""
    };
    let worker_connections = connections.saturating_mul(2).saturating_add(64).max(1024);
    format!(
        "# Written by `cargo xtask bench`.\n\
         {user}\
         worker_processes 1;\n\
         daemon off;\n\
         master_process on;\n\
         pid {pid};\n\
         error_log {error_log} warn;\n\
         events {{\n    worker_connections {worker_connections};\n}}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   sendfile on;\n\
         \x20   tcp_nopush on;\n\
         \x20   tcp_nodelay on;\n\
         \x20   open_file_cache max=1000 inactive=60s;\n\
         \x20   open_file_cache_valid 60s;\n\
         \x20   keepalive_timeout 65s;\n\
         \x20   # nginx closes a connection after 1000 requests by default; edgeplane does not.\n\
         \x20   keepalive_requests 1000000;\n\
         \x20   server_tokens off;\n\
         \x20   default_type application/octet-stream;\n\
         \x20   client_body_temp_path {tmp}/client_body;\n\
         \x20   proxy_temp_path {tmp}/proxy;\n\
         \x20   fastcgi_temp_path {tmp}/fastcgi;\n\
         \x20   uwsgi_temp_path {tmp}/uwsgi;\n\
         \x20   scgi_temp_path {tmp}/scgi;\n\
         \x20   server {{\n\
         \x20       listen {addr};\n\
         \x20       # /<content-id> -> <catalog>/<content-id>, the same URL edgeplane serves.\n\
         \x20       root {root};\n\
         \x20       location / {{\n\
         \x20       }}\n\
         \x20   }}\n\
         }}\n",
        pid = p("nginx.pid"),
        error_log = p("error.log"),
        tmp = p("tmp"),
        root = catalog.to_string_lossy(),
    )
}

/// A loopback address with a port that was free a moment ago.
fn free_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// The wrk script: prepared GET requests with `Range: bytes=a-b` headers at random offsets
/// aligned to the range size (fixed seed, so every server sees the same sequence), and a
/// `done` hook that prints the summary as one JSON line.
fn wrk_script(scenario: &Scenario, files: &[(String, u64)]) -> String {
    let mut list = String::new();
    for (path, size) in files {
        let _ = writeln!(list, "    {{ path = \"{path}\", size = {size} }},");
    }
    format!(
        r#"-- Written by `cargo xtask bench` ({name} ranges).
local files = {{
{list}}}
local range = {range}
local count = {count}
local prepared = {{}}
local next_index = 0

function init(args)
    math.randomseed({seed})
    for i = 1, count do
        local f = files[math.random(#files)]
        local first = (math.random(math.floor(f.size / range)) - 1) * range
        local spec = string.format("bytes=%d-%d", first, first + range - 1)
        prepared[i] = wrk.format("GET", f.path, {{ ["Range"] = spec }})
    end
end

function request()
    next_index = next_index % count + 1
    return prepared[next_index]
end

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        'XTASK_RESULT {{"duration_us":%.0f,"requests":%.0f,"bytes":%.0f,"connect":%.0f,' ..
        '"read":%.0f,"write":%.0f,"timeout":%.0f,"status":%.0f,"p50_us":%.0f,"p99_us":%.0f}}\n',
        summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write,
        e.timeout, e.status, latency:percentile(50), latency:percentile(99)))
end
"#,
        name = scenario.name,
        range = scenario.range,
        count = PREPARED_REQUESTS,
        seed = scenario.seed,
    )
}

#[allow(clippy::too_many_arguments)]
fn measure(
    wrk: &Path,
    taskset: &Path,
    script: &Path,
    run_dir: &Path,
    scenario: &Scenario,
    target: &mut Target,
    args: &BenchArgs,
    clk_tck: u64,
) -> Result<Measurement> {
    let url = format!("http://{}/", target.addr);
    let wrk_cmd = |seconds: u32| {
        let mut cmd = Command::new(taskset);
        cmd.arg("-c")
            .arg(CLIENT_CPU)
            .arg(wrk)
            .arg("-t1")
            .arg(format!("-c{}", args.connections))
            .arg(format!("-d{seconds}s"))
            .arg("--timeout")
            .arg("5s")
            .arg("-s")
            .arg(script)
            .arg(&url);
        cmd
    };
    if args.warmup > 0 {
        run_wrk(&mut wrk_cmd(args.warmup))?;
        target.server.check_running()?;
    }
    let pids = process_tree(target.server.pid());
    let before = cpu_ticks(&pids)?;
    let mut cmd = wrk_cmd(args.duration);
    let output = run_wrk(&mut cmd)?;
    let after = cpu_ticks(&pids)?;
    target.server.check_running()?;
    let log = run_dir.join(format!("wrk-{}-{}.txt", scenario.name, target.name));
    fs::write(&log, format!("$ {}\n{output}", display_command(&cmd)))?;

    let summary = parse_wrk_result(&output)
        .with_context(|| format!("wrk printed no result; its output is in {}", log.display()))?;
    let field = |name: &str| summary[name].as_f64().unwrap_or(0.0);
    let count = |name: &str| summary[name].as_f64().unwrap_or(0.0) as u64;
    Ok(Measurement {
        scenario: scenario.name,
        server: target.name,
        range: scenario.range,
        duration_s: field("duration_us") / 1e6,
        requests: count("requests"),
        bytes: count("bytes"),
        errors: WrkErrors {
            connect: count("connect"),
            read: count("read"),
            write: count("write"),
            timeout: count("timeout"),
            status: count("status"),
        },
        cpu_s: after.saturating_sub(before) as f64 / clk_tck as f64,
        p50_ms: field("p50_us") / 1e3,
        p99_ms: field("p99_us") / 1e3,
    })
}

/// Runs wrk and returns stdout and stderr together.
fn run_wrk(cmd: &mut Command) -> Result<String> {
    let output = cmd
        .output()
        .with_context(|| format!("could not run `{}`", display_command(cmd)))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        bail!(
            "`{}` failed ({}):\n{text}",
            display_command(cmd),
            output.status
        );
    }
    Ok(text)
}

fn parse_wrk_result(output: &str) -> Result<Value> {
    let line = output
        .lines()
        .find_map(|l| l.strip_prefix("XTASK_RESULT "))
        .ok_or_else(|| anyhow!("no XTASK_RESULT line"))?;
    serde_json::from_str(line).context("parse wrk's XTASK_RESULT line")
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

/// `pid` and all its descendants (nginx: master and worker).
fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Ok(stat) = read_stat(child) {
                parents.push((child, stat.ppid));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    tree
}

struct Stat {
    ppid: u32,
    /// utime + stime, in clock ticks (all threads of the process).
    ticks: u64,
}

fn read_stat(pid: u32) -> Result<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| anyhow!("cannot parse /proc/{pid}/stat"))
}

/// Parses /proc/PID/stat. The command name (field 2) may contain spaces and parentheses, so
/// fields are counted from the last ')'.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): ppid is field 4, utime 14, stime 15.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Stat {
        ppid,
        ticks: utime + stime,
    })
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

fn nginx_version(nginx: &Path) -> String {
    Command::new(nginx)
        .arg("-v")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stderr)
                .trim()
                .trim_start_matches("nginx version: ")
                .to_owned()
        })
        .unwrap_or_default()
}

struct RunContext<'a> {
    args: &'a BenchArgs,
    files: usize,
    timestamp: String,
    nginx_version: String,
}

fn kernel() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn git_revision() -> String {
    Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(crate::util::workspace_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// (scenario, req/s ratio, req per CPU-s ratio, CPU-s/GiB ratio) for each scenario with both.
fn ratios(results: &[Measurement]) -> Vec<(&'static str, f64, f64, f64)> {
    let mut out = Vec::new();
    for s in &SCENARIOS {
        let find = |server: &str| {
            results
                .iter()
                .find(|m| m.scenario == s.name && m.server == server)
        };
        if let (Some(e), Some(n)) = (find("edgeplane"), find("nginx")) {
            out.push((
                s.name,
                e.req_s() / n.req_s(),
                e.req_per_cpu_s() / n.req_per_cpu_s(),
                e.cpu_s_per_gib() / n.cpu_s_per_gib(),
            ));
        }
    }
    out
}

fn report_markdown(ctx: &RunContext<'_>, results: &[Measurement], shutdown: &[String]) -> String {
    let a = ctx.args;
    let mut s = format!("# edgeplane vs nginx: {}\n\n", ctx.timestamp);
    let _ = writeln!(
        s,
        "- load: `wrk -t1 -c{} -d{}s` pinned to CPU {CLIENT_CPU}, after {} s of warm-up; \
         random `Range: bytes=a-b` requests aligned to the range size over {} files of {} MiB \
         (page cache warm)",
        a.connections,
        a.duration,
        a.warmup,
        ctx.files,
        FILE_SIZE >> 20
    );
    let _ = writeln!(
        s,
        "- servers pinned to CPU {SERVER_CPU}: edgeplane `cores = 1` (profile `{}`, {}); \
         {} with 1 worker, `sendfile on; tcp_nopush on; access_log off; open_file_cache`",
        a.profile,
        match git_revision() {
            r if r.is_empty() => "unknown revision".to_owned(),
            r => format!("revision `{r}`"),
        },
        ctx.nginx_version
    );
    let _ = writeln!(
        s,
        "- server CPU = utime + stime of the server's processes from /proc/PID/stat; \
         GB = 10^9 bytes as counted by wrk (headers included); kernel {}",
        kernel()
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
    for m in results {
        let errors = match (m.errors.socket(), m.errors.status) {
            (0, 0) => "0".to_owned(),
            (sock, status) => format!(
                "{status} non-2xx; socket: {} connect, {} read, {} write, {} timeout ({sock})",
                m.errors.connect, m.errors.read, m.errors.write, m.errors.timeout
            ),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.0}% | {:.3} | {:.0} | {:.2} | {:.2} | {errors} |",
            m.scenario,
            m.server,
            m.req_s(),
            m.gb_s(),
            m.cpu_s,
            m.cpu_util() * 100.0,
            m.cpu_s_per_gib(),
            m.req_per_cpu_s(),
            m.p50_ms,
            m.p99_ms
        );
    }
    let ratios = ratios(results);
    if !ratios.is_empty() {
        s.push_str(
            "\n## edgeplane / nginx\n\n\
             | scenario | req/s | req per CPU-s (higher is better) | CPU-s per GiB (lower is better) |\n\
             |---|---:|---:|---:|\n",
        );
        for (name, req_s, per_cpu, per_gib) in ratios {
            let _ = writeln!(s, "| {name} | {req_s:.2} | {per_cpu:.2} | {per_gib:.2} |");
        }
    }
    let problems: Vec<String> = results
        .iter()
        .flat_map(|m| {
            m.problems()
                .into_iter()
                .map(move |p| format!("{} {}: {p}", m.server, m.scenario))
        })
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
            "connections": a.connections,
            "wrk_threads": 1,
            "server_cpu": SERVER_CPU,
            "client_cpu": CLIENT_CPU,
            "files": ctx.files,
            "file_bytes": FILE_SIZE,
            "edgeplane_profile": a.profile,
            "edgeplane_revision": git_revision(),
            "nginx_version": ctx.nginx_version,
            "kernel": kernel(),
        },
        "results": results.iter().map(Measurement::to_json).collect::<Vec<_>>(),
        "ratios_edgeplane_over_nginx": ratios(results)
            .into_iter()
            .map(|(scenario, req_s, per_cpu, per_gib)| json!({
                "scenario": scenario,
                "req_per_s": req_s,
                "req_per_cpu_s": per_cpu,
                "cpu_s_per_gib": per_gib,
            }))
            .collect::<Vec<_>>(),
        "shutdown_problems": shutdown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_awkward_command_name() {
        let line = "1234 (nginx: worker (x) ) S 1200 1234 1200 0 -1 4194560 100 0 0 0 \
                    250 75 0 0 20 0 1 0 12345 1000000 200 18446744073709551615";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.ppid, 1200);
        assert_eq!(stat.ticks, 325);
    }

    #[test]
    fn own_stat_parses() {
        let stat = read_stat(std::process::id()).unwrap();
        assert!(stat.ppid > 0);
        assert!(process_tree(std::process::id()).contains(&std::process::id()));
    }

    #[test]
    fn wrk_result_line() {
        let out = "Running 1s test\nXTASK_RESULT {\"duration_us\":1000000,\"requests\":10,\
                   \"bytes\":655360,\"connect\":0,\"read\":0,\"write\":0,\"timeout\":0,\
                   \"status\":0,\"p50_us\":100,\"p99_us\":900}\n";
        let v = parse_wrk_result(out).unwrap();
        assert_eq!(v["requests"].as_f64(), Some(10.0));
    }

    #[test]
    fn nginx_config_maps_ids_to_files() {
        let conf = nginx_config(
            Path::new("/p"),
            Path::new("/cat"),
            "127.0.0.1:8081".parse().unwrap(),
            64,
        );
        assert!(conf.contains("listen 127.0.0.1:8081;"));
        assert!(conf.contains("root /cat;"));
        assert!(conf.contains("pid /p/nginx.pid;"));
    }
}
