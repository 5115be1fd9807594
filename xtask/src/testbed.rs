//! The load rig that `cargo xtask bench` and `cargo xtask flamegraph` share: the catalog of
//! bench files, edgeplane and nginx started with their bench configs and pinned to the server
//! CPU, the wrk script and command (pinned to the client CPU), and reading a server's processes
//! from /proc.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::ValueEnum;
use edgeplane_dataplane::config::ReadinessSetting;
use serde_json::Value;

use crate::catalog::ensure_object;
use crate::demo::toml_string;
use crate::server::{describe_status, start_edgeplane, Server, STOP_TIMEOUT};
use crate::util::{display_command, find_program, header, target_dir, utc_timestamp};

pub(crate) const FILES: u32 = 4;
pub(crate) const FILE_SIZE: u64 = 64 << 20;
pub(crate) const SERVER_CPU: &str = "0";
pub(crate) const CLIENT_CPU: &str = "1";

/// Pins the calling thread, and so every thread it spawns afterwards (origins, client threads),
/// to [`CLIENT_CPU`] until the guard is dropped: the load the bench makes in process must not
/// share the server's CPU, as wrk does not.
pub(crate) fn pin_to_client_cpu() -> anyhow::Result<PinnedToClientCpu> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity/sched_setaffinity(0, ...) read or
    // write the calling thread's mask from/into the local set of the size given.
    unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut old) != 0 {
            anyhow::bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(CLIENT_CPU.parse()?, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            anyhow::bail!(
                "pinning the bench's clients to CPU {CLIENT_CPU}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(PinnedToClientCpu(old))
    }
}

/// Restores the thread's CPU mask on drop (see [`pin_to_client_cpu`]).
pub(crate) struct PinnedToClientCpu(libc::cpu_set_t);

impl Drop for PinnedToClientCpu {
    fn drop(&mut self) {
        // SAFETY: as in pin_to_client_cpu, with the mask saved there.
        unsafe {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.0);
        }
    }
}
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests wrk's Lua script prepares up front and cycles through.
const PREPARED_REQUESTS: u32 = 16_384;

pub(crate) struct Scenario {
    pub(crate) name: &'static str,
    pub(crate) range: u64,
    seed: u32,
}

pub(crate) const SCENARIOS: [Scenario; 2] = [
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

/// A scenario picked on the command line.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ScenarioName {
    #[value(name = "64k")]
    K64,
    #[value(name = "1m")]
    M1,
}

impl ScenarioName {
    pub(crate) fn scenario(self) -> &'static Scenario {
        match self {
            ScenarioName::K64 => &SCENARIOS[0],
            ScenarioName::M1 => &SCENARIOS[1],
        }
    }
}

/// A server under test, as named on the command line and in reports.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ServerKind {
    Edgeplane,
    Nginx,
    /// bench/refserver: one thread, epoll, header + sendfile (the bench's "limit" column).
    #[value(skip)]
    Limit,
}

impl ServerKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ServerKind::Edgeplane => "edgeplane",
            ServerKind::Nginx => "nginx",
            ServerKind::Limit => "limit",
        }
    }
}

/// `io.readiness` for the edgeplane under test (docs/config.md): how a connection waits for its
/// next request bytes. Unset, the server's default (`auto`) applies.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub(crate) enum Readiness {
    /// glommio's stock path: a one-shot io_uring poll armed after every read (the "before").
    Legacy,
    /// Read first; on `EAGAIN` arm a one-shot poll.
    ReadFirst,
    /// Read first; on `EAGAIN` wait on one multishot poll armed for the connection's life (what
    /// `auto` picks on Linux 5.13+).
    Multishot,
}

impl Readiness {
    pub(crate) fn setting(self) -> ReadinessSetting {
        match self {
            Readiness::Legacy => ReadinessSetting::Legacy,
            Readiness::ReadFirst => ReadinessSetting::ReadFirst,
            Readiness::Multishot => ReadinessSetting::Multishot,
        }
    }
}

/// Builds bench/refserver/refserver.c (`cc -O2`) into the target directory; returns the binary.
pub(crate) fn build_reference() -> Result<PathBuf> {
    let src = crate::util::workspace_root().join("bench/refserver/refserver.c");
    let out = target_dir().join("bench/refserver");
    fs::create_dir_all(out.parent().expect("a parent"))?;
    let cc = find_program("cc")?;
    let mut cmd = Command::new(cc);
    cmd.args(["-O2", "-Wall", "-o"]).arg(&out).arg(&src);
    header(&format!(
        "building the reference server: {}",
        display_command(&cmd)
    ));
    let status = cmd.status().context("run cc")?;
    if !status.success() {
        bail!(
            "cc {} failed: {}",
            src.display(),
            describe_status(Some(status))
        );
    }
    Ok(out)
}

/// Fails unless the machine has the two CPUs the rig pins to.
pub(crate) fn check_cpus() -> Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        bail!(
            "the bench needs 2 CPUs (server on CPU {SERVER_CPU}, wrk on CPU {CLIENT_CPU}); \
             this machine has {cpus}"
        );
    }
    Ok(())
}

/// The bench files, a run directory, and the tools that drive the load.
pub(crate) struct Rig {
    pub(crate) wrk: PathBuf,
    pub(crate) taskset: PathBuf,
    pub(crate) catalog: PathBuf,
    /// (url path, size) per file.
    pub(crate) files: Vec<(String, u64)>,
    pub(crate) run_dir: PathBuf,
    /// wrk -c, and what the server configs are sized for.
    pub(crate) connections: u32,
    /// Servers also listen for HTTPS with this certificate (PEM files).
    pub(crate) https: Option<HttpsFiles>,
    /// A second, slow directory (the slowfs mount): edgeplane's `storage` tier, nginx's
    /// fallback location.
    pub(crate) cold: Option<PathBuf>,
    /// edgeplane's `io.readiness`; `None`: its default.
    pub(crate) readiness: Option<Readiness>,
}

#[derive(Clone)]
pub(crate) struct HttpsFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

/// Where the catalog lives and what it holds.
pub(crate) struct CatalogSpec {
    pub(crate) bench_dir: PathBuf,
    pub(crate) catalog: PathBuf,
    pub(crate) files: u32,
    pub(crate) file_size: u64,
    /// Look for wrk (the flame graph drives the load with it; the bench does not).
    pub(crate) wrk: bool,
}

impl CatalogSpec {
    /// `target/bench/catalog`, 4 x 64 MiB.
    pub(crate) fn standard(wrk: bool) -> CatalogSpec {
        let bench_dir = target_dir().join("bench");
        CatalogSpec {
            catalog: bench_dir.join("catalog"),
            bench_dir,
            files: FILES,
            file_size: FILE_SIZE,
            wrk,
        }
    }
}

impl Rig {
    /// Finds wrk and taskset, writes (or keeps) the catalog under `target/bench/catalog` and
    /// warms it into the page cache, and makes `target/bench/<run_prefix><UTC timestamp>`.
    pub(crate) fn prepare(run_prefix: &str, connections: u32) -> Result<Rig> {
        Rig::prepare_with(&CatalogSpec::standard(true), run_prefix, connections)
    }

    pub(crate) fn prepare_with(
        spec: &CatalogSpec,
        run_prefix: &str,
        connections: u32,
    ) -> Result<Rig> {
        let wrk = if spec.wrk {
            find_program("wrk")?
        } else {
            PathBuf::from("wrk")
        };
        let taskset = find_program("taskset")?;
        let catalog = spec.catalog.clone();
        header(&format!(
            "bench catalog: {} x {} MiB under {}",
            spec.files,
            spec.file_size >> 20,
            catalog.display()
        ));
        let files = write_catalog(&catalog, "bench-", spec.files, spec.file_size)?;
        let run_dir = new_run_dir(&spec.bench_dir, run_prefix)?;
        eprintln!("run directory: {}", run_dir.display());
        Ok(Rig {
            wrk,
            taskset,
            catalog,
            files,
            run_dir,
            connections,
            https: None,
            cold: None,
            readiness: None,
        })
    }

    /// The run directory's name (its timestamp).
    pub(crate) fn run_name(&self) -> String {
        self.run_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Starts edgeplane (`cores = 1`) pinned to the server CPU and waits until it is ready.
    pub(crate) fn start_edgeplane(&self, bin: &Path) -> Result<Target> {
        header(&format!(
            "starting edgeplane (cores = 1, pinned to CPU {SERVER_CPU})"
        ));
        let config = self.run_dir.join("edgeplane.toml");
        let https_addr = match &self.https {
            Some(_) => Some(free_port()?),
            None => None,
        };
        let https = self.https.as_ref().zip(https_addr);
        fs::write(
            &config,
            edgeplane_config(
                &self.catalog,
                self.connections,
                https,
                self.cold.as_deref(),
                self.readiness.map(Readiness::setting),
            ),
        )?;
        let (server, ready) = start_edgeplane(
            bin,
            &config,
            &self.run_dir.join("edgeplane.log"),
            Some(SERVER_CPU),
            READY_TIMEOUT,
        )?;
        Ok(Target {
            kind: ServerKind::Edgeplane,
            server,
            addr: ready.http,
            https_addr,
        })
    }

    /// Starts nginx (1 worker, sendfile) pinned to the server CPU and waits for its port.
    pub(crate) fn start_nginx(&self, nginx: &Path) -> Result<Target> {
        header(&format!(
            "starting nginx (1 worker, sendfile, pinned to CPU {SERVER_CPU})"
        ));
        let prefix = self.run_dir.join("nginx");
        fs::create_dir_all(prefix.join("tmp"))?;
        let addr = free_port()?;
        let https_addr = match &self.https {
            Some(_) => Some(free_port()?),
            None => None,
        };
        let conf = prefix.join("nginx.conf");
        let mut text = nginx_config(&prefix, &self.catalog, addr, self.connections);
        if let (Some(files), Some(tls_addr)) = (&self.https, https_addr) {
            text = with_nginx_https(&text, files, tls_addr);
        }
        if let Some(cold) = &self.cold {
            text = with_nginx_cold(&text, cold);
        }
        fs::write(&conf, text)?;
        let error_log = prefix.join("error.log");
        let mut cmd = Command::new(&self.taskset);
        cmd.arg("-c")
            .arg(SERVER_CPU)
            .arg(nginx)
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(&error_log);
        let mut server = Server::spawn("nginx", cmd, &prefix.join("stderr.log"))?;
        server
            .wait_for_port(addr, READY_TIMEOUT)
            .with_context(|| format!("nginx did not come up; see {}", error_log.display()))?;
        eprintln!("nginx ready: http={addr}");
        if let Some(tls_addr) = https_addr {
            server.wait_for_port(tls_addr, READY_TIMEOUT)?;
        }
        Ok(Target {
            kind: ServerKind::Nginx,
            server,
            addr,
            https_addr,
        })
    }

    /// Starts the reference server (bench/refserver) on the catalog, pinned to the server CPU.
    pub(crate) fn start_reference(&self, bin: &Path) -> Result<Target> {
        header(&format!(
            "starting the reference server (epoll + sendfile, pinned to CPU {SERVER_CPU})"
        ));
        let addr = free_port()?;
        let mut cmd = Command::new(&self.taskset);
        cmd.arg("-c")
            .arg(SERVER_CPU)
            .arg(bin)
            .arg(&self.catalog)
            .arg(addr.port().to_string());
        let mut server = Server::spawn("limit", cmd, &self.run_dir.join("refserver.log"))?;
        server.wait_for_port(addr, READY_TIMEOUT)?;
        eprintln!("reference server ready: http={addr}");
        Ok(Target {
            kind: ServerKind::Limit,
            server,
            addr,
            https_addr: None,
        })
    }

    /// Writes `wrk-<scenario>.lua` into the run directory and returns its path.
    pub(crate) fn write_wrk_script(&self, scenario: &Scenario) -> Result<PathBuf> {
        let script = self.run_dir.join(format!("wrk-{}.lua", scenario.name));
        fs::write(&script, wrk_script(scenario, &self.files))?;
        Ok(script)
    }

    /// `taskset -c CLIENT_CPU wrk -t1 -cN -dSECONDSs --timeout 5s -s SCRIPT http://ADDR/`.
    pub(crate) fn wrk_command(&self, script: &Path, target: &Target, seconds: u32) -> Command {
        let mut cmd = Command::new(&self.taskset);
        cmd.arg("-c")
            .arg(CLIENT_CPU)
            .arg(&self.wrk)
            .arg("-t1")
            .arg(format!("-c{}", self.connections))
            .arg(format!("-d{seconds}s"))
            .arg("--timeout")
            .arg("5s")
            .arg("-s")
            .arg(script)
            .arg(format!("http://{}/", target.addr));
        cmd
    }
}

/// A running server under test. Dropping it (also on error) stops the server.
pub(crate) struct Target {
    pub(crate) kind: ServerKind,
    pub(crate) server: Server,
    pub(crate) addr: SocketAddr,
    /// The HTTPS listener, when the rig has a certificate.
    pub(crate) https_addr: Option<SocketAddr>,
}

impl Target {
    pub(crate) fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// The server's process and its descendants (nginx: master and worker).
    pub(crate) fn pids(&self) -> Vec<u32> {
        process_tree(self.server.pid())
    }

    /// Stops the server the way it is meant to be stopped (nginx: SIGQUIT, its graceful
    /// shutdown; edgeplane: SIGTERM, the contract) and fails unless it exits with status 0.
    pub(crate) fn shut_down(mut self) -> Result<()> {
        let signal = match self.kind {
            ServerKind::Nginx => libc::SIGQUIT,
            ServerKind::Edgeplane | ServerKind::Limit => libc::SIGTERM,
        };
        let status = self.server.stop(signal, STOP_TIMEOUT)?;
        if !status.success() {
            bail!(
                "{} exited with {}",
                self.name(),
                describe_status(Some(status))
            );
        }
        eprintln!("{} exited with status 0", self.name());
        Ok(())
    }
}

/// Writes (or keeps) the bench files and reads them once so they start in the page cache.
/// Returns (url path, size) per file.
pub(crate) fn write_catalog(
    dir: &Path,
    prefix: &str,
    count: u32,
    size: u64,
) -> Result<Vec<(String, u64)>> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut files = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..count {
        let name = format!("{prefix}{i:02}.bin");
        if ensure_object(dir, &name, size)? {
            eprintln!("wrote {name}");
        }
        let mut file = File::open(dir.join(&name))?;
        while file.read(&mut buf)? > 0 {}
        files.push((format!("/{name}"), size));
    }
    Ok(files)
}

/// `<bench_dir>/<prefix><UTC timestamp>`, made unique.
fn new_run_dir(bench_dir: &Path, prefix: &str) -> Result<PathBuf> {
    let stamp = format!("{prefix}{}", utc_timestamp());
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

pub(crate) fn edgeplane_config(
    catalog: &Path,
    connections: u32,
    https: Option<(&HttpsFiles, SocketAddr)>,
    cold: Option<&Path>,
    readiness: Option<ReadinessSetting>,
) -> String {
    let per_client = connections.saturating_add(64).max(256);
    let total = per_client.saturating_mul(2).max(10_000);
    let mut extra = String::new();
    if let Some((files, addr)) = https {
        let _ = write!(
            extra,
            "\n[https]\nlisten = \"{addr}\"\ncert = {}\nkey = {}\n",
            toml_string(&files.cert),
            toml_string(&files.key)
        );
    }
    if let Some(cold) = cold {
        let _ = write!(
            extra,
            "\n[[tier]]\nname = \"slow\"\nkind = \"storage\"\npath = {}\n",
            toml_string(cold)
        );
    }
    if let Some(readiness) = readiness {
        let _ = write!(extra, "\n[io]\nreadiness = \"{}\"\n", readiness.as_str());
    }
    let base = format!(
        "# Written by `cargo xtask bench`.\n\
         cores = 1\n\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [limits]\nmax_connections = {total}\nmax_connections_per_client = {per_client}\n\n\
         # The load generators fetch plain URLs: no signatures.\n\
         [signing]\nenabled = false\n\n\
         [[tier]]\nname = \"flash\"\nkind = \"flash\"\npath = {}\n",
        toml_string(catalog)
    );
    base + &extra
}

/// Adds an HTTPS server block (OpenSSL, same files) to an nginx config from [`nginx_config`].
fn with_nginx_https(conf: &str, files: &HttpsFiles, addr: SocketAddr) -> String {
    let block = format!(
        "    server {{\n\
         \x20       listen {addr} ssl;\n\
         \x20       ssl_certificate {};\n\
         \x20       ssl_certificate_key {};\n\
         \x20       ssl_protocols TLSv1.2 TLSv1.3;\n\
         \x20       ssl_session_cache shared:SSL:1m;\n\
         \x20       root {};\n\
         \x20       location / {{\n\
         \x20       }}\n\
         \x20   }}\n}}\n",
        files.cert.display(),
        files.key.display(),
        root_of(conf),
    );
    let end = conf.trim_end().rfind('}').expect("http block");
    format!("{}{block}", &conf[..end])
}

/// Makes every server block fall back to `cold` for files the catalog does not have.
fn with_nginx_cold(conf: &str, cold: &Path) -> String {
    conf.replace(
        "        location / {\n        }\n",
        &format!(
            "        location / {{\n            try_files $uri @cold;\n        }}\n\
             \x20       location @cold {{\n            root {};\n        }}\n",
            cold.display()
        ),
    )
}

fn root_of(conf: &str) -> String {
    conf.lines()
        .find_map(|l| l.trim().strip_prefix("root "))
        .map(|r| r.trim_end_matches(';').to_owned())
        .unwrap_or_default()
}

pub(crate) fn nginx_config(
    prefix: &Path,
    catalog: &Path,
    addr: SocketAddr,
    connections: u32,
) -> String {
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
pub(crate) fn free_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// The wrk script: prepared GET requests with `Range: bytes=a-b` headers at random offsets
/// aligned to the range size (fixed seed, so every server sees the same sequence), and a
/// `done` hook that prints the summary as one JSON line.
pub(crate) fn wrk_script(scenario: &Scenario, files: &[(String, u64)]) -> String {
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

/// What one wrk run reports (its script's `XTASK_RESULT` line).
pub(crate) struct WrkResult {
    pub(crate) duration_s: f64,
    pub(crate) requests: u64,
    pub(crate) bytes: u64,
    pub(crate) errors: WrkErrors,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

#[derive(Default)]
pub(crate) struct WrkErrors {
    pub(crate) connect: u64,
    pub(crate) read: u64,
    pub(crate) write: u64,
    pub(crate) timeout: u64,
    /// Responses that were not 2xx or 3xx.
    pub(crate) status: u64,
}

impl WrkErrors {
    pub(crate) fn socket(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout
    }
}

impl WrkResult {
    /// Parses the `XTASK_RESULT {json}` line out of wrk's output.
    pub(crate) fn parse(output: &str) -> Result<WrkResult> {
        let line = output
            .lines()
            .find_map(|l| l.strip_prefix("XTASK_RESULT "))
            .ok_or_else(|| anyhow!("no XTASK_RESULT line"))?;
        let summary: Value = serde_json::from_str(line).context("parse wrk's XTASK_RESULT line")?;
        let field = |name: &str| summary[name].as_f64().unwrap_or(0.0);
        let count = |name: &str| summary[name].as_f64().unwrap_or(0.0) as u64;
        Ok(WrkResult {
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
            p50_ms: field("p50_us") / 1e3,
            p99_ms: field("p99_us") / 1e3,
        })
    }

    pub(crate) fn req_s(&self) -> f64 {
        self.requests as f64 / self.duration_s
    }

    pub(crate) fn gb_s(&self) -> f64 {
        self.bytes as f64 / self.duration_s / 1e9
    }
}

/// Runs wrk to completion and returns its output (stdout and stderr); fails when wrk does.
pub(crate) fn run_wrk(cmd: &mut Command) -> Result<String> {
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

/// Saves wrk's command line and output to `log` and parses its result.
pub(crate) fn log_wrk_result(cmd: &Command, output: &str, log: &Path) -> Result<WrkResult> {
    fs::write(log, format!("$ {}\n{output}", display_command(cmd)))?;
    WrkResult::parse(output)
        .with_context(|| format!("wrk printed no result; its output is in {}", log.display()))
}

/// `nginx -v`, without the `nginx version: ` prefix.
pub(crate) fn nginx_version(nginx: &Path) -> String {
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

/// `pid` and all its descendants (nginx: master and worker).
pub(crate) fn process_tree(pid: u32) -> Vec<u32> {
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

/// Busy clock ticks of the whole machine, all CPUs, from the `cpu` line of /proc/stat: user,
/// nice, system, irq and softirq (idle, iowait and steal left out). Unlike a process's utime +
/// stime it does not depend on which context the kernel charges work to (a loopback TCP
/// sender's transmissions run partly in the receiver's ACK processing, in softirq or
/// ksoftirqd), but it includes the load generator and anything else running.
pub(crate) fn machine_busy_ticks() -> Result<u64> {
    let text = fs::read_to_string("/proc/stat")?;
    machine_busy(&text).ok_or_else(|| anyhow!("cannot parse the cpu line of /proc/stat"))
}

fn machine_busy(stat: &str) -> Option<u64> {
    let [user, nice, system, _idle, _iowait, irq, softirq, _steal] = proc_stat_cpu(stat, "cpu")?;
    Some(user + nice + system + irq + softirq)
}

/// The first eight counters of /proc/stat's line `name` (`cpu` for the whole machine, `cpu0`,
/// `cpu1`, ...), in clock ticks: user, nice, system, idle, iowait, irq, softirq, steal.
pub(crate) fn proc_stat_cpu(stat: &str, name: &str) -> Option<[u64; 8]> {
    let mut fields = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))?
        .split_whitespace()
        .skip(1);
    let mut out = [0; 8];
    for v in &mut out {
        *v = fields.next()?.parse().ok()?;
    }
    Some(out)
}

pub(crate) struct Stat {
    ppid: u32,
    /// utime + stime, in clock ticks (all threads of the process).
    pub(crate) ticks: u64,
}

pub(crate) fn read_stat(pid: u32) -> Result<Stat> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_busy_is_user_nice_system_irq_softirq() {
        let text = "cpu  100 20 30 5000 70 0 9 4 0 0\ncpu0 50 10 15 2500 35 0 4 2 0 0\n";
        assert_eq!(machine_busy(text), Some(100 + 20 + 30 + 9));
        assert_eq!(machine_busy("cpu0 1 2 3\n"), None);
        assert_eq!(machine_busy("cpu  1 2 x 4 5 6 7\n"), None);
        assert_eq!(
            proc_stat_cpu(text, "cpu"),
            Some([100, 20, 30, 5000, 70, 0, 9, 4])
        );
        assert_eq!(
            proc_stat_cpu(text, "cpu0"),
            Some([50, 10, 15, 2500, 35, 0, 4, 2])
        );
        assert_eq!(proc_stat_cpu(text, "cpu1"), None);
        assert_eq!(proc_stat_cpu("cpu0 1 2 3\n", "cpu0"), None);
        assert_eq!(proc_stat_cpu("cpu  1 2 x 4 5 6 7 8\n", "cpu"), None);
        assert!(machine_busy_ticks().unwrap() > 0);
    }

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
        let r = WrkResult::parse(out).unwrap();
        assert_eq!(r.requests, 10);
        assert_eq!(r.bytes, 655_360);
        assert_eq!(r.duration_s, 1.0);
        assert_eq!(r.p99_ms, 0.9);
        assert!(WrkResult::parse("Running 1s test\n").is_err());
    }

    #[test]
    fn nginx_https_and_cold() {
        let conf = nginx_config(
            Path::new("/p"),
            Path::new("/cat"),
            "127.0.0.1:8081".parse().unwrap(),
            64,
        );
        let files = HttpsFiles {
            cert: "/c.pem".into(),
            key: "/k.pem".into(),
        };
        let conf = with_nginx_https(&conf, &files, "127.0.0.1:8443".parse().unwrap());
        let conf = with_nginx_cold(&conf, Path::new("/slow"));
        assert!(conf.contains("listen 127.0.0.1:8443 ssl;"), "{conf}");
        assert!(conf.contains("ssl_certificate_key /k.pem;"), "{conf}");
        assert_eq!(conf.matches("try_files $uri @cold;").count(), 2, "{conf}");
        assert_eq!(conf.matches("root /cat;").count(), 2, "{conf}");
        assert!(conf.trim_end().ends_with('}'));
        assert_eq!(
            conf.matches('{').count(),
            conf.matches('}').count(),
            "{conf}"
        );
        let ep = edgeplane_config(
            Path::new("/cat"),
            64,
            Some((&files, "127.0.0.1:8443".parse().unwrap())),
            Some(Path::new("/slow")),
            Some(ReadinessSetting::ReadFirst),
        );
        assert!(ep.contains("[io]\nreadiness = \"read-first\""), "{ep}");
        assert!(ep.contains("[https]\nlisten = \"127.0.0.1:8443\""), "{ep}");
        assert!(ep.contains("kind = \"storage\""), "{ep}");
        assert!(ep.contains("[signing]\nenabled = false"), "{ep}");
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

    #[test]
    fn scenario_names() {
        assert_eq!(ScenarioName::K64.scenario().range, 64 << 10);
        assert_eq!(ScenarioName::M1.scenario().name, "1m");
    }
}
