//! `cargo xtask bench-tls`: HTTPS throughput and server CPU per GiB, with the rig of
//! `cargo xtask bench` (same catalog, same Lua script, server pinned to CPU 0, wrk to CPU 1).
//!
//! - default: edgeplane's HTTPS listener (kernel TLS where the kernel has it, else rustls in
//!   user space; the report says which) against nginx with OpenSSL (`ssl`, `sendfile on`), on
//!   the same files, TLS 1.3 with AES-128-GCM for both.
//! - `--vm`: kernel TLS against user space (`https.ktls = "auto"` vs `"off"`) on the same
//!   kernel, in the `cargo xtask vmtest` guest (Debian 6.1 under qemu TCG): wrk on the host
//!   through qemu's port forwarding, server CPU read from the guest's `/proc`. Emulated CPU, so
//!   only the ratio between the two modes means anything.
//!
//! CPU-seconds per GiB = (utime + stime of the server's processes) / body GiB received by wrk.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::server::Server;
use crate::testbed::{
    free_port, nginx_config, nginx_version, process_tree, read_stat, run_wrk, wrk_script, Rig,
    Scenario, WrkResult, CLIENT_CPU, READY_TIMEOUT, SCENARIOS, SERVER_CPU,
};
use crate::util::{build_edgeplane, find_program, git_revision, kernel};
use crate::vmtest;

#[derive(clap::Args)]
pub(crate) struct BenchTlsArgs {
    /// Measured seconds per scenario, server and round.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Rounds (servers alternate order each round); the report gives the median.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// wrk connections.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Kernel TLS vs user space in the vmtest guest instead of edgeplane vs nginx here.
    #[arg(long)]
    vm: bool,
    /// Cargo profile edgeplane is built with.
    #[arg(long, default_value = "release")]
    profile: String,
}

/// One measured run.
struct Run {
    server: String,
    scenario: &'static str,
    req_s: f64,
    gib: f64,
    cpu_s: f64,
    errors: u64,
}

impl Run {
    fn cpu_per_gib(&self) -> f64 {
        self.cpu_s / self.gib
    }
}

pub(crate) fn run(args: &BenchTlsArgs) -> Result<()> {
    let bin = build_edgeplane(&args.profile)?;
    if args.vm {
        return run_vm(args, &bin);
    }
    let nginx = find_program("nginx")?;
    let rig = Rig::prepare("tls-", args.connections)?;
    let (cert, key) = make_cert(&rig.run_dir)?;
    let clk_tck = clk_tck()?;
    let mut runs = Vec::new();
    for scenario in &SCENARIOS {
        let script = rig.run_dir.join(format!("wrk-{}.lua", scenario.name));
        fs::write(&script, wrk_script(scenario, &rig.files))?;
        for round in 0..args.rounds {
            let order: [&str; 2] = if round % 2 == 0 {
                ["edgeplane", "nginx"]
            } else {
                ["nginx", "edgeplane"]
            };
            for which in order {
                let (mut server, port, label) = if which == "edgeplane" {
                    start_edgeplane(&rig, &bin, &cert, &key)?
                } else {
                    start_nginx(&rig, &nginx, &cert, &key)?
                };
                // Warm-up (connections, page cache, session setup), unmeasured.
                run_wrk(&mut wrk(&rig.wrk, &script, port, args.connections, 2))?;
                let pids = process_tree(server.pid());
                let before = ticks(&pids)?;
                let out = run_wrk(&mut wrk(
                    &rig.wrk,
                    &script,
                    port,
                    args.connections,
                    args.seconds,
                ))?;
                let after = ticks(&pids)?;
                let w = WrkResult::parse(&out)?;
                let r = Run {
                    server: label,
                    scenario: scenario.name,
                    req_s: w.req_s(),
                    gib: w.bytes as f64 / (1u64 << 30) as f64,
                    cpu_s: (after - before) as f64 / clk_tck as f64,
                    errors: w.errors.socket() + w.errors.status,
                };
                eprintln!(
                    "{} {} round {round}: {:.0} req/s, {:.2} CPU-s/GiB, {} errors",
                    r.server,
                    r.scenario,
                    r.req_s,
                    r.cpu_per_gib(),
                    r.errors
                );
                runs.push(r);
                let signal = if which == "nginx" {
                    libc::SIGQUIT
                } else {
                    libc::SIGTERM
                };
                server.stop(signal, Duration::from_secs(10))?;
            }
        }
    }
    let notes = format!(
        "- host: kernel {}, {} CPUs; edgeplane {} (profile `{}`, `cores = 1`), {} (1 worker); \
         both pinned to CPU {SERVER_CPU}, wrk (`-t1 -c{}`) on CPU {CLIENT_CPU}; TLS 1.3 \
         AES-128-GCM, ECDSA P-256 certificate; {} s per run after 2 s of warm-up, {} rounds\n",
        kernel(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        git_revision(),
        args.profile,
        nginx_version(&nginx),
        args.connections,
        args.seconds,
        args.rounds
    );
    report(&rig.run_dir, "edgeplane vs nginx, HTTPS", &notes, &runs)
}

/// A throwaway self-signed ECDSA P-256 certificate.
fn make_cert(dir: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=edgeplane.test",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()?
        .status
        .success();
    if !ok {
        bail!("openssl could not make a certificate");
    }
    Ok((cert, key))
}

fn start_edgeplane(
    rig: &Rig,
    bin: &Path,
    cert: &Path,
    key: &Path,
) -> Result<(Server, u16, String)> {
    let per_client = rig.connections.saturating_add(64).max(256);
    let config = rig.run_dir.join("edgeplane-tls.toml");
    fs::write(
        &config,
        format!(
            "# Written by `cargo xtask bench-tls`.\ncores = 1\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n\
             [https]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\n[limits]\nmax_connections_per_client = {per_client}\n\n\
             [signing]\nenabled = false\n\n\
             [[tier]]\nname = \"flash\"\nkind = \"flash\"\npath = \"{}\"\n",
            cert.display(),
            key.display(),
            rig.catalog.display()
        ),
    )?;
    let mut cmd = Command::new(&rig.taskset);
    cmd.arg("-c")
        .arg(SERVER_CPU)
        .arg(bin)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("NO_COLOR", "1");
    let mut server = Server::spawn("edgeplane", cmd, &rig.run_dir.join("edgeplane-tls.log"))?;
    let mut mode = "userspace";
    let port = server.wait_for_line("its ready line", READY_TIMEOUT, |line| {
        if line.contains("kernel TLS available") {
            mode = "ktls";
        }
        let https = line
            .split_whitespace()
            .find_map(|t| t.strip_prefix("https="))?;
        https.rsplit(':').next()?.parse().ok()
    })?;
    Ok((server, port, format!("edgeplane ({mode})")))
}

fn start_nginx(rig: &Rig, nginx: &Path, cert: &Path, key: &Path) -> Result<(Server, u16, String)> {
    let prefix = rig.run_dir.join("nginx-tls");
    fs::create_dir_all(prefix.join("tmp"))?;
    let addr = free_port()?;
    let plain = nginx_config(&prefix, &rig.catalog, addr, rig.connections);
    let listen = format!("listen {addr};");
    if !plain.contains(&listen) {
        bail!("the bench's nginx config has no `{listen}` line to add TLS to");
    }
    let conf = plain.replace(
        &listen,
        &format!(
            "listen {addr} ssl;\n        ssl_certificate {};\n        ssl_certificate_key {};\n        \
             ssl_protocols TLSv1.2 TLSv1.3;\n        \
             ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;\n        \
             ssl_session_cache shared:TLS:10m;",
            cert.display(),
            key.display()
        ),
    );
    let path = prefix.join("nginx.conf");
    fs::write(&path, conf)?;
    let error_log = prefix.join("error.log");
    let mut cmd = Command::new(&rig.taskset);
    cmd.arg("-c")
        .arg(SERVER_CPU)
        .arg(nginx)
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&path)
        .arg("-e")
        .arg(&error_log);
    let mut server = Server::spawn("nginx", cmd, &prefix.join("stderr.log"))?;
    server
        .wait_for_port(addr, READY_TIMEOUT)
        .with_context(|| format!("nginx did not come up; see {}", error_log.display()))?;
    Ok((server, addr.port(), "nginx + OpenSSL".to_owned()))
}

fn wrk(wrk: &Path, script: &Path, port: u16, connections: u32, seconds: u32) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.arg("-c")
        .arg(CLIENT_CPU)
        .arg(wrk)
        .arg("-t1")
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .args(["--timeout", "10s", "-s"])
        .arg(script)
        .arg(format!("https://127.0.0.1:{port}/"));
    cmd
}

fn ticks(pids: &[u32]) -> Result<u64> {
    pids.iter()
        .map(|&p| read_stat(p).map(|s| s.ticks))
        .sum::<Result<u64>>()
        .context("a server process vanished during the run")
}

fn clk_tck() -> Result<u64> {
    let out = Command::new("getconf").arg("CLK_TCK").output()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("getconf CLK_TCK")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Prints (and writes to `dir/report.md`) medians per server and scenario, with the range.
fn report(dir: &Path, title: &str, notes: &str, runs: &[Run]) -> Result<()> {
    let mut out = format!(
        "### {title}\n\n{notes}\n| scenario | server | req/s (median) | CPU-s/GiB (median) | \
         CPU-s/GiB range | errors |\n|---|---|---:|---:|---|---:|\n"
    );
    let mut keys: Vec<(&str, &str)> = runs
        .iter()
        .map(|r| (r.scenario, r.server.as_str()))
        .collect();
    keys.dedup();
    keys.sort();
    keys.dedup();
    for (scenario, server) in keys {
        let these: Vec<&Run> = runs
            .iter()
            .filter(|r| r.scenario == scenario && r.server == server)
            .collect();
        let cpu: Vec<f64> = these.iter().map(|r| r.cpu_per_gib()).collect();
        let lo = cpu.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = cpu.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "| {scenario} | {server} | {:.0} | {:.3} | {lo:.3}–{hi:.3} | {} |",
            median(these.iter().map(|r| r.req_s).collect()),
            median(cpu),
            these.iter().map(|r| r.errors).sum::<u64>()
        );
    }
    fs::write(dir.join("report.md"), &out)?;
    println!("{out}");
    eprintln!("report: {}", dir.join("report.md").display());
    Ok(())
}

/// Kernel TLS vs user space in the vmtest guest: edgeplane and wrk both run in the guest, on
/// loopback (qemu's user-mode network would be the bottleneck otherwise).
fn run_vm(args: &BenchTlsArgs, bin: &Path) -> Result<()> {
    let (kernel_image, modules) = vmtest::kernel_and_modules(&Default::default())?;
    let dir = crate::util::target_dir().join("bench-tls-vm");
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    let files: Vec<(String, u64)> = (0..2)
        .map(|i| (format!("/bench-{i}.bin"), 64u64 << 20))
        .collect();
    let scripts: Vec<(String, String)> = SCENARIOS
        .iter()
        .map(|s| {
            (
                format!("etc/bench/wrk-{}.lua", s.name),
                wrk_script(s, &files),
            )
        })
        .collect();
    let guest = vmtest::Guest::build(&dir, bin, &modules, vmtest::GuestKind::Bench, &scripts)?;
    let ports = vmtest::Ports::pick()?;
    let console = dir.join("console.log");
    let vm = vmtest::start_vm(&kernel_image, &guest.initrd, &ports, &console)?;
    let deadline = Instant::now() + Duration::from_secs(180);
    while vmtest::http_get(ports.control, "/cgi-bin/tls_stat").is_err() {
        if Instant::now() > deadline {
            bail!("the bench guest did not come up; see {}", console.display());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut runs = Vec::new();
    for scenario in &SCENARIOS {
        for round in 0..args.rounds {
            let order = if round % 2 == 0 {
                ["auto", "off"]
            } else {
                ["off", "auto"]
            };
            for mode in order {
                runs.push(vm_run(args, &ports, &dir, scenario, mode, round)?);
            }
        }
    }
    drop(vm);
    let notes = format!(
        "- guest: {} under qemu TCG (`-cpu max`, 2 vCPUs, emulated: absolute numbers mean \
         nothing, only the ratio between the modes), edgeplane {} (profile `{}`, `cores = 1` on \
         guest CPU 0), wrk (`-t1 -c16`) on guest CPU 1, loopback in the guest; CPU of edgeplane \
         from the guest's /proc; {} s per run after 2 s of warm-up, {} rounds\n",
        kernel_image.display(),
        git_revision(),
        args.profile,
        args.seconds,
        args.rounds
    );
    report(&dir, "kernel TLS vs user space (VM)", &notes, &runs)
}

fn vm_run(
    args: &BenchTlsArgs,
    ports: &vmtest::Ports,
    dir: &Path,
    scenario: &Scenario,
    mode: &str,
    round: u32,
) -> Result<Run> {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "300"])
        .arg(format!(
            "http://127.0.0.1:{}/cgi-bin/bench?{mode}-{}-{}",
            ports.control, scenario.name, args.seconds
        ))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    fs::write(
        dir.join(format!("run-{}-{mode}-{round}.txt", scenario.name)),
        &text,
    )?;
    let want = if mode == "auto" { "ktls" } else { "userspace" };
    let used = vmtest::metric(
        &text,
        &format!("edgeplane_tls_connections_total{{mode=\"{want}\"}}"),
    )
    .unwrap_or(0.0);
    if used < 16.0 || !text.contains("XTASK_EXIT 0") {
        bail!(
            "the guest run ({mode}, {}) went wrong:\n{text}",
            scenario.name
        );
    }
    let ticks: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("XTASK_CPU_TICKS "))
        .context("no CPU ticks from the guest")?
        .trim()
        .parse()?;
    let w = WrkResult::parse(&text)?;
    let r = Run {
        server: format!("edgeplane ({want})"),
        scenario: scenario.name,
        req_s: w.req_s(),
        gib: w.bytes as f64 / (1u64 << 30) as f64,
        // Guest USER_HZ is 100.
        cpu_s: ticks / 100.0,
        errors: w.errors.socket() + w.errors.status,
    };
    eprintln!(
        "{} {} round {round}: {:.0} req/s, {:.2} CPU-s/GiB",
        r.server,
        r.scenario,
        r.req_s,
        r.cpu_per_gib()
    );
    Ok(r)
}
