//! Black-box harness for the `edgeplane` binary, shared by the integration test files.
//!
//! * [`ServerBuilder`] writes a config (tiers, limits) into a temporary directory under
//!   `CARGO_TARGET_TMPDIR` (a real disk, so sparse files and page-cache eviction work), starts
//!   `edgeplane serve --config FILE` with both listeners on `127.0.0.1:0`, and waits for the
//!   `ready http=IP:PORT admin=IP:PORT` line on stderr.
//! * [`Server`] owns the process: it is killed on drop, and a test fails if the server died
//!   under it. Everything the server printed is kept and shown when a test fails.
//! * [`Conn`] is a raw TCP client that writes exact bytes and reads HTTP/1.1 responses one at a
//!   time (Content-Length, chunked, or until EOF), so tests see exactly what went over the wire.
//! * [`curl`] and [`ureq_request`] drive two real HTTP clients.
//! * [`ServerBuilder::https`] adds the HTTPS listener with certificates from a test PKI made once
//!   per test binary with the `openssl` CLI ([`pki`]); [`TlsConn`] is the raw client over
//!   rustls.
//!
//! Each test file uses only part of this module.
#![allow(dead_code)]

pub(crate) mod xdp;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_edgeplane");

/// How long a server may take to print its ready line.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Read/write timeout on every client socket: only a guard against hangs.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// How long polling loops (metrics, reloads, connection slots) wait before giving up.
pub(crate) const POLL_TIMEOUT: Duration = Duration::from_secs(15);

/// Every server gets this object in its first tier, so any test can check "still serving".
pub(crate) const CANARY: &str = "canary.bin";
pub(crate) const CANARY_LEN: usize = 4099;

/// The canary's content.
pub(crate) fn canary_data() -> Vec<u8> {
    pattern(CANARY, CANARY_LEN)
}

// ---------------------------------------------------------------------------------------------
// Test content
// ---------------------------------------------------------------------------------------------

/// SplitMix64: a tiny deterministic generator for content and random ranges.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

fn name_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `len` pseudo-random bytes that depend only on `name`.
pub(crate) fn pattern(name: &str, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(name_seed(name));
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

pub(crate) fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Byte-exact comparison with a useful message (lengths, first difference, sha256 of both).
#[track_caller]
pub(crate) fn assert_bytes_eq(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first_diff = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "{what}: body differs: got {} bytes (sha256 {}), want {} bytes (sha256 {}); \
         first difference at offset {first_diff}",
        got.len(),
        sha256_hex(got),
        want.len(),
        sha256_hex(want)
    );
}

// ---------------------------------------------------------------------------------------------
// Starting servers
// ---------------------------------------------------------------------------------------------

struct TierSpec {
    name: String,
    kind: String,
    path: PathBuf,
}

/// Builds a config and a set of tier directories, then starts the server.
pub(crate) struct ServerBuilder {
    dir: TempDir,
    cores: u32,
    limits: Vec<(String, String)>,
    io: Vec<(String, String)>,
    tiers: Vec<TierSpec>,
    /// `[https]`: the default certificate and the `[[https.sni]]` entries.
    https: Option<(PkiCert, Vec<(String, PkiCert)>)>,
    /// `https.ktls`, when set.
    https_ktls: Option<String>,
    sections: Vec<String>,
    http_listen: String,
    wrapper: Vec<String>,
    /// `[signing]`: `None` writes `enabled = false`; `Some(keys_file)` turns signing on.
    signing_keys: Option<PathBuf>,
    /// `[access] prefixes_file`.
    prefixes_file: Option<PathBuf>,
}

/// A temporary directory on the same disk as the build (not tmpfs).
pub(crate) fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("edgeplane-it-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("create a temporary directory under CARGO_TARGET_TMPDIR")
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerBuilder {
    /// One executor, one tier `flash` (kind `flash`) holding [`CANARY`], default limits.
    pub(crate) fn new() -> Self {
        let mut b = ServerBuilder {
            dir: temp_dir(),
            cores: 1,
            limits: Vec::new(),
            io: Vec::new(),
            tiers: Vec::new(),
            https: None,
            https_ktls: None,
            sections: Vec::new(),
            http_listen: "127.0.0.1:0".to_owned(),
            wrapper: Vec::new(),
            signing_keys: None,
            prefixes_file: None,
        };
        b = b.tier("flash", "flash");
        b.file("flash", CANARY, &canary_data())
    }

    pub(crate) fn cores(mut self, n: u32) -> Self {
        self.cores = n;
        self
    }

    /// Sets `[limits] key = value` (`value` is written as a TOML integer).
    pub(crate) fn limit(mut self, key: &str, value: u64) -> Self {
        self.limits.push((key.to_owned(), value.to_string()));
        self
    }

    /// Sets `[io] key = value` (`value` is written verbatim, e.g. `"true"` or `"2"`).
    pub(crate) fn io(mut self, key: &str, value: &str) -> Self {
        self.io.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Adds the HTTPS listener (`127.0.0.1:0`) with the test PKI's [`PkiCert::Default`]
    /// certificate. The PEM files are copied to `ROOT/tls/` (see [`Server::tls_path`]), so a
    /// test can replace them and reload.
    pub(crate) fn https(mut self) -> Self {
        self.https.get_or_insert((PkiCert::Default, Vec::new()));
        self
    }

    /// Sets `https.ktls` (`"auto"` or `"off"`; implies [`Self::https`]).
    pub(crate) fn https_ktls(mut self, value: &str) -> Self {
        self.https_ktls = Some(value.to_owned());
        self.https()
    }

    /// Adds `[[https.sni]] name = NAME` served with the test PKI's certificate `cert` (implies
    /// [`Self::https`]).
    pub(crate) fn https_sni(mut self, name: &str, cert: PkiCert) -> Self {
        let https = self.https.get_or_insert((PkiCert::Default, Vec::new()));
        https.1.push((name.to_owned(), cert));
        self
    }

    /// Turns signed URLs on with `keys_file` (by default the harness writes
    /// `[signing] enabled = false`, so plain URLs are served).
    pub(crate) fn signing_keys(mut self, keys_file: &Path) -> Self {
        self.signing_keys = Some(keys_file.to_path_buf());
        self
    }

    /// Sets `[access] prefixes_file`.
    pub(crate) fn prefixes_file(mut self, path: &Path) -> Self {
        self.prefixes_file = Some(path.to_path_buf());
        self
    }

    /// Sets `http.listen` (default `127.0.0.1:0`).
    pub(crate) fn http_listen(mut self, addr: &str) -> Self {
        self.http_listen = addr.to_owned();
        self
    }

    /// Runs the server under a wrapper command, e.g. `["ip", "netns", "exec", "ns1"]`.
    pub(crate) fn wrapper(mut self, cmd: &[&str]) -> Self {
        self.wrapper = cmd.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// Appends a TOML section verbatim after the tiers (e.g. `"[xdp]\nenforce = true\n"`).
    pub(crate) fn section(mut self, text: &str) -> Self {
        self.sections.push(text.to_owned());
        self
    }

    /// Adds a tier with its own (new, empty) directory.
    pub(crate) fn tier(mut self, name: &str, kind: &str) -> Self {
        let path = self.dir.path().join(format!("tier-{name}"));
        fs::create_dir_all(&path).expect("create tier directory");
        self.tiers.push(TierSpec {
            name: name.to_owned(),
            kind: kind.to_owned(),
            path,
        });
        self
    }

    pub(crate) fn tier_dir(&self, tier: &str) -> PathBuf {
        self.tiers
            .iter()
            .find(|t| t.name == tier)
            .unwrap_or_else(|| panic!("no tier named {tier:?} in this builder"))
            .path
            .clone()
    }

    /// Writes `tier/name` with `data` (fsynced).
    pub(crate) fn file(self, tier: &str, name: &str, data: &[u8]) -> Self {
        write_file(&self.tier_dir(tier).join(name), data);
        self
    }

    /// The scratch directory that holds the config and the tier directories.
    pub(crate) fn root(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn config_text(&self) -> String {
        let mut s = format!(
            "cores = {}\n\n[http]\nlisten = \"{}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            self.cores, self.http_listen
        );
        if let Some((default, sni)) = &self.https {
            let tls = self.dir.path().join("tls");
            let (cert, key) = pki().write(*default, &tls, "server");
            s.push_str(&format!(
                "\n[https]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n",
                cert.display(),
                key.display()
            ));
            if let Some(ktls) = &self.https_ktls {
                s.push_str(&format!("ktls = \"{ktls}\"\n"));
            }
            for (i, (name, which)) in sni.iter().enumerate() {
                let (cert, key) = pki().write(*which, &tls, &format!("sni{i}"));
                s.push_str(&format!(
                    "\n[[https.sni]]\nname = \"{name}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                    cert.display(),
                    key.display()
                ));
            }
        }
        match &self.signing_keys {
            None => s.push_str("\n[signing]\nenabled = false\n"),
            Some(path) => s.push_str(&format!(
                "\n[signing]\nenabled = true\nkeys_file = \"{}\"\n",
                path.display()
            )),
        }
        if let Some(path) = &self.prefixes_file {
            s.push_str(&format!(
                "\n[access]\nprefixes_file = \"{}\"\n",
                path.display()
            ));
        }
        if !self.limits.is_empty() {
            s.push_str("\n[limits]\n");
            for (k, v) in &self.limits {
                s.push_str(&format!("{k} = {v}\n"));
            }
        }
        if !self.io.is_empty() {
            s.push_str("\n[io]\n");
            for (k, v) in &self.io {
                s.push_str(&format!("{k} = {v}\n"));
            }
        }
        for t in &self.tiers {
            s.push_str(&format!(
                "\n[[tier]]\nname = \"{}\"\nkind = \"{}\"\npath = \"{}\"\n",
                t.name,
                t.kind,
                t.path.display()
            ));
        }
        for section in &self.sections {
            s.push('\n');
            s.push_str(section);
            if !section.ends_with('\n') {
                s.push('\n');
            }
        }
        s
    }

    /// Writes the config and starts the server; panics (with the server's output) unless it
    /// prints its ready line within [`READY_TIMEOUT`].
    pub(crate) fn start(self) -> Server {
        let config_path = self.dir.path().join("edgeplane.toml");
        let text = self.config_text();
        fs::write(&config_path, &text).expect("write config");
        let tiers = self
            .tiers
            .iter()
            .map(|t| (t.name.clone(), t.path.clone()))
            .collect();
        let mut server = Server::spawn(self.dir, config_path, text, tiers, &self.wrapper);
        server.wait_ready();
        server
    }
}

pub(crate) fn write_file(path: &Path, data: &[u8]) {
    let mut f = fs::File::create(path).unwrap_or_else(|e| panic!("create {path:?}: {e}"));
    f.write_all(data).expect("write test file");
    f.sync_all().expect("fsync test file");
}

/// A running `edgeplane serve`.
pub(crate) struct Server {
    child: Option<Child>,
    pub(crate) http: SocketAddr,
    pub(crate) admin: SocketAddr,
    /// `https=IP:PORT` from the ready line, when the server has an HTTPS listener.
    pub(crate) https: Option<SocketAddr>,
    /// `cores=N` from the ready line, if it was there.
    pub(crate) ready_cores: Option<u32>,
    /// The ready line as printed.
    pub(crate) ready_line: String,
    output: Arc<Mutex<String>>,
    stderr_lines: Receiver<String>,
    config_text: String,
    tiers: Vec<(String, PathBuf)>,
    dir: TempDir,
}

impl Server {
    fn spawn(
        dir: TempDir,
        config_path: PathBuf,
        config_text: String,
        tiers: Vec<(String, PathBuf)>,
        wrapper: &[String],
    ) -> Server {
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let mut child = cmd
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {BIN}: {e}"));
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let o = Arc::clone(&output);
        thread::spawn(move || forward(out, "stdout", &o, None));
        let o = Arc::clone(&output);
        thread::spawn(move || forward(err, "stderr", &o, Some(tx)));
        Server {
            child: Some(child),
            http: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
            https: None,
            ready_cores: None,
            ready_line: String::new(),
            output,
            stderr_lines: rx,
            config_text,
            tiers,
            dir,
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some((http, admin, cores)) = parse_ready(&line) {
                        self.http = http;
                        self.admin = admin;
                        self.ready_cores = cores;
                        self.https = parse_ready_https(&line);
                        self.ready_line = line;
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    let out = self.output();
                    self.kill();
                    panic!(
                        "edgeplane did not print `ready http=IP:PORT admin=IP:PORT` on stderr \
                         within {} s.\nconfig:\n{}\noutput so far:\n{}",
                        READY_TIMEOUT.as_secs(),
                        self.config_text,
                        out
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit(Duration::from_secs(5));
                    panic!(
                        "edgeplane closed stderr before its ready line ({}).\nconfig:\n{}\n\
                         output:\n{}",
                        describe_status(status),
                        self.config_text,
                        self.output()
                    );
                }
            }
        }
    }

    /// Everything the server printed so far (stdout and stderr, tagged).
    pub(crate) fn output(&self) -> String {
        self.output.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub(crate) fn tier_dir(&self, tier: &str) -> PathBuf {
        self.tiers
            .iter()
            .find(|(n, _)| n == tier)
            .unwrap_or_else(|| panic!("no tier named {tier:?}"))
            .1
            .clone()
    }

    /// The scratch directory that holds the config and the tier directories.
    pub(crate) fn root(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub(crate) fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub(crate) fn connect(&self) -> Conn {
        Conn::connect(self.http)
    }

    /// The HTTPS listener's address; panics when the server has none.
    #[track_caller]
    pub(crate) fn https_addr(&self) -> SocketAddr {
        self.https
            .unwrap_or_else(|| panic!("no https= in the ready line {:?}", self.ready_line))
    }

    /// `https://NAME:PORT/path` for clients that resolve `NAME` to the HTTPS address
    /// (curl: `--resolve NAME:PORT:127.0.0.1`, see [`Server::curl_https_args`]).
    pub(crate) fn https_url(&self, name: &str, path: &str) -> String {
        format!("https://{name}:{}{path}", self.https_addr().port())
    }

    /// curl arguments that trust the test CA and resolve `name` to the HTTPS listener.
    pub(crate) fn curl_https_args(&self, name: &str) -> Vec<String> {
        let addr = self.https_addr();
        let ca = self.root().join("tls").join("ca.pem");
        if !ca.exists() {
            write_file(&ca, pki().ca.as_bytes());
        }
        vec![
            "--cacert".into(),
            ca.display().to_string(),
            "--resolve".into(),
            format!("{name}:{}:{}", addr.port(), addr.ip()),
        ]
    }

    /// Where the server reads `[https]` `cert` (`"server.pem"`), `key` (`"server.key"`) and the
    /// SNI entries' files (`"sni0.pem"`, ...).
    pub(crate) fn tls_path(&self, file: &str) -> PathBuf {
        self.root().join("tls").join(file)
    }

    /// A TLS connection to the HTTPS listener (handshake done), asking for `server_name`.
    #[track_caller]
    pub(crate) fn connect_tls(
        &self,
        config: &Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> TlsConn {
        TlsConn::connect(self.https_addr(), config, server_name)
            .unwrap_or_else(|e| panic!("TLS handshake with {server_name}: {e}"))
    }

    pub(crate) fn connect_admin(&self) -> Conn {
        Conn::connect(self.admin)
    }

    /// One request on a fresh connection (with `Connection: close`).
    pub(crate) fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut c = self.connect();
        let mut h = headers.to_vec();
        h.push(("Connection", "close"));
        c.request("GET", path, &h)
    }

    /// Fails unless a fresh connection still gets the canary byte-exact.
    #[track_caller]
    pub(crate) fn assert_serving(&self, context: &str) {
        let mut c = self.connect();
        let r = c.request("GET", &format!("/{CANARY}"), &[]);
        assert_eq!(r.status, 200, "{context}: server no longer serves: {r:?}");
        assert_bytes_eq(&r.body, &canary_data(), context);
    }

    /// Sends a signal with `kill -SIG pid`.
    pub(crate) fn signal(&self, sig: &str) {
        let pid = self.pid();
        assert!(pid != 0, "server already stopped");
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {pid} failed: {status}");
    }

    /// Waits for the process to exit; `None` if it is still running after `timeout`.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => return None,
            }
        }
    }

    /// Whether the process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// GET on the admin listener (raw socket, `Connection: close`).
    pub(crate) fn admin_get(&self, path: &str) -> Response {
        let mut c = self.connect_admin();
        c.request("GET", path, &[("Connection", "close")])
    }

    /// Scrapes `/metrics`.
    pub(crate) fn metrics(&self) -> Metrics {
        let r = self.admin_get("/metrics");
        assert_eq!(r.status, 200, "GET /metrics: {r:?}");
        Metrics::parse(&String::from_utf8_lossy(&r.body))
    }

    /// `POST /reload` on the admin listener; fails unless it answers 200.
    #[track_caller]
    pub(crate) fn reload(&self) {
        let mut c = self.connect_admin();
        let r = c.request(
            "POST",
            "/reload",
            &[("Content-Length", "0"), ("Connection", "close")],
        );
        assert_eq!(r.status, 200, "POST /reload: {r:?}");
    }

    /// Polls `/metrics` until `pred` holds; panics with the last scrape after [`POLL_TIMEOUT`].
    #[track_caller]
    pub(crate) fn wait_metrics(
        &self,
        what: &str,
        mut pred: impl FnMut(&Metrics) -> bool,
    ) -> Metrics {
        let deadline = Instant::now() + POLL_TIMEOUT;
        loop {
            let m = self.metrics();
            if pred(&m) {
                return m;
            }
            if Instant::now() > deadline {
                panic!(
                    "metrics never showed {what} within {} s; last scrape:\n{}",
                    POLL_TIMEOUT.as_secs(),
                    m.text
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let died = match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten(),
            None => None,
        };
        self.kill();
        if thread::panicking() {
            eprintln!(
                "---- edgeplane output (pid was alive: {}) ----\n{}\n---- end ----",
                died.is_none(),
                self.output()
            );
        } else if let Some(status) = died {
            panic!(
                "edgeplane exited during the test ({}); output:\n{}",
                describe_status(Some(status)),
                self.output()
            );
        }
    }
}

fn forward(pipe: impl Read, tag: &str, output: &Mutex<String>, tx: Option<mpsc::Sender<String>>) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = strip_ansi(String::from_utf8_lossy(&buf).trim_end());
        if let Ok(mut o) = output.lock() {
            o.push_str(&format!("[{tag}] {line}\n"));
        }
        if let Some(tx) = &tx {
            let _ = tx.send(line);
        }
    }
}

/// Parses a line containing `ready http=IP:PORT admin=IP:PORT [cores=N]` (a log prefix and
/// quoted values are tolerated).
pub(crate) fn parse_ready(line: &str) -> Option<(SocketAddr, SocketAddr, Option<u32>)> {
    let rest = &line[line.find("ready")? + "ready".len()..];
    let (mut http, mut admin, mut cores) = (None, None, None);
    for token in rest.split_whitespace() {
        let Some((key, value)) = token.split_once('=') else {
            continue;
        };
        let value = value.trim_matches(|c| c == '"' || c == ',' || c == ';');
        match key {
            "http" => http = value.parse().ok(),
            "admin" => admin = value.parse().ok(),
            "cores" => cores = value.parse().ok(),
            _ => {}
        }
    }
    Some((http?, admin?, cores))
}

/// `https=IP:PORT` from a ready line.
pub(crate) fn parse_ready_https(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("ready")? + "ready".len()..];
    rest.split_whitespace()
        .find_map(|t| t.strip_prefix("https="))
        .and_then(|v| {
            v.trim_matches(|c| c == '"' || c == ',' || c == ';')
                .parse()
                .ok()
        })
}

pub(crate) fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

pub(crate) fn describe_status(status: Option<ExitStatus>) -> String {
    match status {
        None => "still running".to_owned(),
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => s.to_string(),
        },
    }
}

/// Runs `edgeplane` with `args` to completion (killed after `timeout`, which fails the test).
pub(crate) fn run_to_exit(args: &[&str], timeout: Duration) -> (ExitStatus, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {BIN}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let t_err = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().expect("try_wait") {
            Some(status) => break status,
            None if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                let err = String::from_utf8_lossy(&t_err.join().unwrap()).into_owned();
                panic!(
                    "`edgeplane {}` still running after {} s (killed); stderr:\n{err}",
                    args.join(" "),
                    timeout.as_secs()
                );
            }
        }
    };
    let out = String::from_utf8_lossy(&t_out.join().unwrap()).into_owned();
    let err = String::from_utf8_lossy(&t_err.join().unwrap()).into_owned();
    (status, out, err)
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP over TCP
// ---------------------------------------------------------------------------------------------

/// One HTTP response as read off the wire.
#[derive(Clone)]
pub(crate) struct Response {
    pub(crate) version: String,
    pub(crate) status: u16,
    pub(crate) reason: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }

    /// The header's value; panics (showing the response) if it is missing.
    #[track_caller]
    pub(crate) fn expect_header(&self, name: &str) -> &str {
        match self.header(name) {
            Some(v) => v,
            None => panic!("response has no {name} header: {self:?}"),
        }
    }

    pub(crate) fn content_length(&self) -> Option<u64> {
        self.header("content-length")
            .map(|v| v.trim().parse().expect("numeric Content-Length"))
    }

    /// Whether the response carries `Connection: close`.
    pub(crate) fn says_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} {} {}", self.version, self.status, self.reason)?;
        for (n, v) in &self.headers {
            writeln!(f, "  {n}: {v}")?;
        }
        let shown = &self.body[..self.body.len().min(200)];
        write!(
            f,
            "  [body: {} bytes{}: {:?}]",
            self.body.len(),
            if self.body.len() > 200 {
                ", first 200"
            } else {
                ""
            },
            String::from_utf8_lossy(shown)
        )
    }
}

/// How a read at a response boundary ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Closed {
    /// read returned 0: orderly close (FIN).
    Eof,
    /// ECONNRESET.
    Reset,
}

/// A raw client connection.
pub(crate) struct Conn {
    pub(crate) reader: BufReader<TcpStream>,
    pub(crate) peer: SocketAddr,
}

/// Builds a request head: `METHOD target HTTP/1.1`, `Host`, the given headers, blank line.
pub(crate) fn request_head(method: &str, target: &str, headers: &[(&str, &str)]) -> String {
    let mut s = format!("{method} {target} HTTP/1.1\r\nHost: edgeplane.test\r\n");
    for (n, v) in headers {
        s.push_str(&format!("{n}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s
}

impl Conn {
    pub(crate) fn connect(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        Conn {
            reader: BufReader::with_capacity(64 * 1024, s),
            peer: addr,
        }
    }

    pub(crate) fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    pub(crate) fn set_read_timeout(&self, t: Duration) {
        self.stream().set_read_timeout(Some(t)).unwrap();
    }

    #[track_caller]
    pub(crate) fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.reader.get_mut().write_all(bytes) {
            panic!(
                "writing {} request bytes to {} failed: {e}",
                bytes.len(),
                self.peer
            );
        }
    }

    /// Reads a response head up to and including its blank line, leaving the body unread
    /// (for tests that then read slowly, or not at all).
    #[track_caller]
    pub(crate) fn read_head(&mut self) -> String {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let n = io::BufRead::read_line(&mut self.reader, &mut line).expect("read a head line");
            assert!(n > 0, "connection closed inside the head: {head:?}");
            head.push_str(&line);
            if line == "\r\n" {
                return head;
            }
        }
    }

    pub(crate) fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.reader.get_mut().write_all(bytes)
    }

    /// Sends a request and reads its response (a HEAD request's response has no body).
    #[track_caller]
    pub(crate) fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Response {
        self.send(request_head(method, target, headers).as_bytes());
        self.read_response(method == "HEAD")
    }

    /// Sends raw bytes and reads one response.
    #[track_caller]
    pub(crate) fn raw(&mut self, bytes: &[u8]) -> Response {
        self.send(bytes);
        self.read_response(bytes.starts_with(b"HEAD "))
    }

    /// Reads one response; panics on EOF, reset, timeout or a malformed response.
    #[track_caller]
    pub(crate) fn read_response(&mut self, head: bool) -> Response {
        match self.try_read_response(head) {
            Ok(Some(r)) => r,
            Ok(None) => panic!(
                "connection to {} closed before a response arrived",
                self.peer
            ),
            Err(e) => panic!("reading a response from {} failed: {e}", self.peer),
        }
    }

    /// Reads one response; `Ok(None)` if the peer closed the connection before its first byte.
    pub(crate) fn try_read_response(&mut self, head: bool) -> io::Result<Option<Response>> {
        read_http_response(&mut self.reader, head)
    }

    /// Reads until the peer closes; fails if any byte arrives or the read times out.
    pub(crate) fn read_close(&mut self) -> io::Result<Closed> {
        let mut buf = [0u8; 4096];
        match self.reader.read(&mut buf) {
            Ok(0) => Ok(Closed::Eof),
            Ok(n) => Err(bad(format!(
                "expected the connection to close, got {n} more bytes: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ))),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(Closed::Reset),
            Err(e) => Err(e),
        }
    }

    /// Fails unless the server closes the connection cleanly (read returns 0) before
    /// [`IO_TIMEOUT`].
    #[track_caller]
    pub(crate) fn expect_eof(&mut self, context: &str) {
        match self.read_close() {
            Ok(Closed::Eof) => {}
            Ok(Closed::Reset) => {
                panic!("{context}: connection was reset (RST) instead of closed cleanly (FIN)")
            }
            Err(e) => panic!("{context}: connection was not closed by the server: {e}"),
        }
    }

    /// Fails unless the server closes the connection (FIN or RST) before [`IO_TIMEOUT`].
    /// For cases where the client left unread bytes in the server's receive buffer, where a
    /// kernel may answer the close with a reset.
    #[track_caller]
    pub(crate) fn expect_closed(&mut self, context: &str) {
        if let Err(e) = self.read_close() {
            panic!("{context}: connection was not closed by the server: {e}");
        }
    }

    /// After an error response `prev` on this connection: the connection must either be closed
    /// cleanly (when the response said `Connection: close`, or the server closes it when we try
    /// to go on), or still work (the canary is served byte-exact).
    #[track_caller]
    pub(crate) fn expect_usable_or_closed(&mut self, prev: &Response, context: &str) {
        if prev.says_close() {
            self.expect_eof(&format!("{context} (response said Connection: close)"));
            return;
        }
        let next = request_head("GET", &format!("/{CANARY}"), &[]);
        // The write may fail if the server already closed; the read tells.
        let _ = self.try_send(next.as_bytes());
        match self.try_read_response(false) {
            Ok(None) => {}
            Ok(Some(r)) => {
                assert_eq!(
                    r.status, 200,
                    "{context}: the next request on the same connection got {r:?}"
                );
                assert_bytes_eq(&r.body, &canary_data(), context);
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => panic!(
                "{context}: after the error response the connection was reset instead of \
                 closed cleanly or kept usable"
            ),
            Err(e) => panic!("{context}: the next request on the same connection failed: {e}"),
        }
    }

    pub(crate) fn shutdown_write(&self) {
        let _ = self.stream().shutdown(Shutdown::Write);
    }
}

/// Reads one HTTP/1.1 response from any byte stream (plain or TLS); `Ok(None)` if the peer
/// closed the connection before its first byte.
pub(crate) fn read_http_response(
    reader: &mut impl BufRead,
    head: bool,
) -> io::Result<Option<Response>> {
    let mut line = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    let mut head_bytes = 0usize;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            if lines.is_empty() && head_bytes == 0 {
                return Ok(None);
            }
            return Err(bad(format!("EOF inside the response head after {lines:?}")));
        }
        head_bytes += n;
        if head_bytes > 64 * 1024 {
            return Err(bad("response head over 64 KiB".into()));
        }
        if !line.ends_with(b"\r\n") {
            return Err(bad(format!(
                "response line not terminated by CRLF: {:?}",
                String::from_utf8_lossy(&line)
            )));
        }
        let text = String::from_utf8(line[..line.len() - 2].to_vec())
            .map_err(|_| bad("non-UTF-8 response head".into()))?;
        if text.is_empty() {
            break;
        }
        lines.push(text);
    }
    let status_line = &lines[0];
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default().to_owned();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let reason = parts.next().unwrap_or_default().to_owned();
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!("bad status line {status_line:?}")));
    }
    let mut headers = Vec::new();
    for l in &lines[1..] {
        let (n, v) = l
            .split_once(':')
            .ok_or_else(|| bad(format!("bad header line {l:?}")))?;
        headers.push((n.to_owned(), v.trim().to_owned()));
    }
    let mut resp = Response {
        version,
        status,
        reason,
        headers,
        body: Vec::new(),
    };
    let no_body = head || status == 204 || status == 304 || (100..200).contains(&status);
    if no_body {
        return Ok(Some(resp));
    }
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        resp.body = read_chunked(reader)?;
    } else if let Some(len) = resp.content_length() {
        let mut body = vec![0u8; usize::try_from(len).expect("body fits in memory")];
        reader.read_exact(&mut body)?;
        resp.body = body;
    } else {
        // No framing: the body runs to EOF.
        reader.read_to_end(&mut resp.body)?;
    }
    Ok(Some(resp))
}

fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let size_text = line.trim().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| bad(format!("bad chunk size line {line:?}")))?;
        if size == 0 {
            // Trailers until the blank line.
            loop {
                line.clear();
                reader.read_line(&mut line)?;
                if line == "\r\n" || line.is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf)?;
        if &crlf != b"\r\n" {
            return Err(bad("chunk not followed by CRLF".into()));
        }
    }
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

// ---------------------------------------------------------------------------------------------
// Range expectations
// ---------------------------------------------------------------------------------------------

/// Asserts a 206 for bytes `first..=last` of `data`, with exact headers and body.
#[track_caller]
pub(crate) fn assert_partial(r: &Response, data: &[u8], first: u64, last: u64, what: &str) {
    let len = data.len() as u64;
    assert_eq!(
        r.status, 206,
        "{what}: want 206 for {first}-{last}/{len}: {r:?}"
    );
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes {first}-{last}/{len}").as_str()),
        "{what}: Content-Range: {r:?}"
    );
    assert_eq!(
        r.content_length(),
        Some(last - first + 1),
        "{what}: Content-Length: {r:?}"
    );
    assert_bytes_eq(
        &r.body,
        &data[first as usize..=last as usize],
        &format!("{what} ({first}-{last})"),
    );
}

/// Asserts a 200 with the whole of `data` and no Content-Range.
#[track_caller]
pub(crate) fn assert_full(r: &Response, data: &[u8], what: &str) {
    assert_eq!(
        r.status, 200,
        "{what}: want 200 with the whole object: {r:?}"
    );
    assert_eq!(
        r.content_length(),
        Some(data.len() as u64),
        "{what}: Content-Length: {r:?}"
    );
    assert_eq!(
        r.header("content-range"),
        None,
        "{what}: a 200 must not carry Content-Range: {r:?}"
    );
    assert_bytes_eq(&r.body, data, what);
}

/// Asserts a 416 with `Content-Range: bytes */LEN`.
#[track_caller]
pub(crate) fn assert_unsatisfiable(r: &Response, len: u64, what: &str) {
    assert_eq!(r.status, 416, "{what}: want 416: {r:?}");
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{len}").as_str()),
        "{what}: 416 needs Content-Range: bytes */{len}: {r:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Real clients: curl and ureq
// ---------------------------------------------------------------------------------------------

/// The outcome of one curl run: the last response's status and headers, and the body file.
pub(crate) struct CurlResult {
    pub(crate) exit_code: Option<i32>,
    pub(crate) stderr: String,
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    /// Every status line curl saw (one per response, in order).
    pub(crate) status_lines: Vec<String>,
}

impl CurlResult {
    /// The last response as a [`Response`] (for the shared assertions).
    pub(crate) fn response(&self) -> Response {
        Response {
            version: String::new(),
            status: self.status,
            reason: String::new(),
            headers: self.headers.clone(),
            body: self.body.clone(),
        }
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl fmt::Debug for CurlResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "curl exit {:?}, status {}, headers {:?}, body {} bytes, stderr {:?}",
            self.exit_code,
            self.status,
            self.headers,
            self.body.len(),
            self.stderr
        )
    }
}

/// Runs `curl -sS --http1.1 -o BODY -D HEADERS ARGS... URL`.
pub(crate) fn curl(args: &[&str], url: &str) -> CurlResult {
    let dir = temp_dir();
    let body_path = dir.path().join("body");
    let head_path = dir.path().join("headers");
    let out = Command::new("curl")
        .args(["-sS", "--http1.1", "--max-time", "30", "-o"])
        .arg(&body_path)
        .arg("-D")
        .arg(&head_path)
        .args(args)
        .arg(url)
        .output()
        .expect("run curl (is it installed?)");
    let head = fs::read_to_string(&head_path).unwrap_or_default();
    let mut status = 0;
    let mut headers = Vec::new();
    let mut status_lines = Vec::new();
    for line in head.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("HTTP/") {
            status_lines.push(line.to_owned());
            status = line
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            headers.clear();
        } else if let Some((n, v)) = line.split_once(':') {
            headers.push((n.trim().to_owned(), v.trim().to_owned()));
        }
    }
    CurlResult {
        exit_code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        status,
        headers,
        body: fs::read(&body_path).unwrap_or_default(),
        status_lines,
    }
}

/// A ureq agent with hang guards.
pub(crate) fn ureq_agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(IO_TIMEOUT)
        .redirects(0)
        .build()
}

/// One request with ureq; 4xx/5xx are results, not errors (transport errors panic).
pub(crate) fn ureq_request(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Response {
    let mut req = agent.request(method, url);
    for (n, v) in headers {
        req = req.set(n, v);
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("ureq {method} {url}: {e}"),
    };
    let status = resp.status();
    let version = resp.http_version().to_owned();
    let reason = resp.status_text().to_owned();
    let headers = resp
        .headers_names()
        .into_iter()
        .flat_map(|n| {
            resp.all(&n)
                .into_iter()
                .map(|v| (n.clone(), v.to_owned()))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut body = Vec::new();
    resp.into_reader()
        .read_to_end(&mut body)
        .unwrap_or_else(|e| panic!("ureq {method} {url}: reading the body: {e}"));
    Response {
        version,
        status,
        reason,
        headers,
        body,
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus text
// ---------------------------------------------------------------------------------------------

/// One sample line: name, labels, value.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) value: f64,
}

/// A parsed `/metrics` scrape.
pub(crate) struct Metrics {
    pub(crate) text: String,
    pub(crate) samples: Vec<Sample>,
}

impl Metrics {
    pub(crate) fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(s) = parse_sample(line) {
                samples.push(s);
            }
        }
        Metrics {
            text: text.to_owned(),
            samples,
        }
    }

    /// Samples named `name` whose labels include all of `labels`.
    pub(crate) fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// Sum over matching samples (0 if none).
    pub(crate) fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (name_labels, rest) = match line.find('{') {
        Some(_) => {
            let close = line.rfind('}')?;
            (&line[..=close], &line[close + 1..])
        }
        None => {
            let sp = line.find(char::is_whitespace)?;
            (&line[..sp], &line[sp..])
        }
    };
    let value_text = rest.split_whitespace().next()?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match name_labels.find('{') {
        Some(open) => {
            let inner = &name_labels[open + 1..name_labels.len() - 1];
            (&name_labels[..open], parse_labels(inner)?)
        }
        None => (name_labels, BTreeMap::new()),
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn parse_labels(inner: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut rest = inner.trim();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_owned();
        let after = rest[eq + 1..].trim_start();
        let after = after.strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(match n {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end?;
        out.insert(key, value);
        rest = after[end + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Some(out)
}

/// Runs `one` for every case, and fails at the end naming all the cases that failed (each
/// case's own panic message is printed as it happens), so one bad case does not hide others.
#[track_caller]
pub(crate) fn check_all<T>(
    cases: impl IntoIterator<Item = (String, T)>,
    mut one: impl FnMut(&str, T),
) {
    let mut failed = Vec::new();
    for (name, case) in cases {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| one(&name, case)));
        if r.is_err() {
            failed.push(name);
        }
    }
    assert!(failed.is_empty(), "failed cases: {failed:#?}");
}

/// Polls `f` until it returns `Some`, panicking with `what` after [`POLL_TIMEOUT`].
#[track_caller]
pub(crate) fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + POLL_TIMEOUT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "gave up after {} s waiting for {what}",
                POLL_TIMEOUT.as_secs()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// TLS: a test PKI made with the openssl CLI, and a raw client over rustls
// ---------------------------------------------------------------------------------------------

/// The test PKI's server certificates, all issued by one test CA ([`Pki::ca`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum PkiCert {
    /// ECDSA P-256 (SEC1 "EC PRIVATE KEY"): `localhost`, `edgeplane.test`, `127.0.0.1`.
    Default,
    /// Another ECDSA P-256 certificate (PKCS#8 key) for the same names, for reload tests.
    Alternate,
    /// RSA 2048 (PKCS#1 "RSA PRIVATE KEY"): `rsa.test`.
    Rsa,
    /// ECDSA P-384 (PKCS#8): `*.wild.test`.
    Wildcard,
}

/// PEM texts of the test PKI (kept in memory; each server gets its own copies).
pub(crate) struct Pki {
    pub(crate) ca: String,
    certs: Vec<(PkiCert, String, String)>,
}

impl Pki {
    /// (certificate PEM, key PEM)
    pub(crate) fn pem(&self, which: PkiCert) -> (&str, &str) {
        let (_, cert, key) = self
            .certs
            .iter()
            .find(|(w, _, _)| *w == which)
            .expect("every PkiCert is generated");
        (cert, key)
    }

    /// The leaf certificate as DER (what a client sees first in the server's chain).
    pub(crate) fn der(&self, which: PkiCert) -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(self.pem(which).0.as_bytes())
            .expect("test certificate PEM")
            .to_vec()
    }

    /// Writes `DIR/NAME.pem` and `DIR/NAME.key`; returns their paths.
    pub(crate) fn write(&self, which: PkiCert, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        fs::create_dir_all(dir).expect("create tls directory");
        let (cert, key) = self.pem(which);
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        write_file(&cert_path, cert.as_bytes());
        write_file(&key_path, key.as_bytes());
        (cert_path, key_path)
    }
}

/// The test PKI, generated on first use (about a second: one RSA key).
pub(crate) fn pki() -> &'static Pki {
    static PKI: std::sync::OnceLock<Pki> = std::sync::OnceLock::new();
    PKI.get_or_init(make_pki)
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}); install it with scripts/setup.sh"));
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_pki() -> Pki {
    let tmp = temp_dir();
    let dir = tmp.path();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "3",
            "-subj",
            "/CN=edgeplane test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    let leaves: [(PkiCert, &str, &[&str], &str); 4] = [
        (
            PkiCert::Default,
            "default",
            &[
                "ecparam",
                "-genkey",
                "-name",
                "prime256v1",
                "-noout",
                "-out",
                "default.key",
            ],
            "DNS:localhost,DNS:edgeplane.test,IP:127.0.0.1",
        ),
        (
            PkiCert::Alternate,
            "alternate",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                "alternate.key",
            ],
            "DNS:localhost,DNS:edgeplane.test,IP:127.0.0.1",
        ),
        (
            PkiCert::Rsa,
            "rsa",
            &["genrsa", "-traditional", "-out", "rsa.key", "2048"],
            "DNS:rsa.test",
        ),
        (
            PkiCert::Wildcard,
            "wild",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
                "-out",
                "wild.key",
            ],
            "DNS:*.wild.test",
        ),
    ];
    let mut certs = Vec::new();
    for (serial, (which, name, keygen, san)) in leaves.into_iter().enumerate() {
        openssl(dir, keygen);
        let ext = format!(
            "subjectAltName={san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n"
        );
        fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-key",
                &format!("{name}.key"),
                "-subj",
                &format!("/CN={name}"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &(1000 + serial).to_string(),
                "-days",
                "3",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
        let read = |f: String| fs::read_to_string(dir.join(f)).unwrap();
        certs.push((
            which,
            read(format!("{name}.pem")),
            read(format!("{name}.key")),
        ));
    }
    Pki {
        ca: fs::read_to_string(dir.join("ca.pem")).unwrap(),
        certs,
    }
}

/// A rustls client configuration that trusts the test CA, for the given protocol versions and
/// ALPN offer.
pub(crate) fn tls_client(
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(pki().ca.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A rustls client configuration that accepts any server certificate (signatures are still
/// checked), for looking at which certificate a server picks.
pub(crate) fn tls_client_any_cert() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A raw HTTPS client connection: rustls over a blocking `TcpStream`.
pub(crate) struct TlsConn {
    pub(crate) reader: BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
}

impl TlsConn {
    /// Connects and completes the handshake. `server_name`: a DNS name (sent as SNI) or an IP
    /// address (no SNI).
    pub(crate) fn connect(
        addr: SocketAddr,
        config: &Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> Result<TlsConn, rustls::Error> {
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
            .map_err(|e| rustls::Error::General(format!("bad server name: {e}")))?;
        let mut conn = rustls::ClientConnection::new(config.clone(), name)?;
        let mut sock = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        sock.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        sock.set_nodelay(true).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut sock)
                .map_err(|e| match e.into_inner() {
                    Some(inner) => match inner.downcast::<rustls::Error>() {
                        Ok(tls) => *tls,
                        Err(other) => rustls::Error::General(other.to_string()),
                    },
                    None => rustls::Error::General("I/O error during the handshake".into()),
                })?;
        }
        Ok(TlsConn {
            reader: BufReader::with_capacity(64 * 1024, rustls::StreamOwned::new(conn, sock)),
        })
    }

    /// The client side of the session (version, cipher suite, ALPN, the server's certificates).
    pub(crate) fn tls(&self) -> &rustls::ClientConnection {
        &self.reader.get_ref().conn
    }

    #[track_caller]
    pub(crate) fn send(&mut self, bytes: &[u8]) {
        let stream = self.reader.get_mut();
        stream
            .write_all(bytes)
            .and_then(|()| stream.flush())
            .unwrap_or_else(|e| panic!("writing {} bytes over TLS failed: {e}", bytes.len()));
    }

    /// Sends a request and reads its response.
    #[track_caller]
    pub(crate) fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Response {
        self.send(request_head(method, target, headers).as_bytes());
        self.read_response(method == "HEAD")
    }

    #[track_caller]
    pub(crate) fn read_response(&mut self, head: bool) -> Response {
        match read_http_response(&mut self.reader, head) {
            Ok(Some(r)) => r,
            Ok(None) => panic!("the TLS connection closed before a response arrived"),
            Err(e) => panic!("reading a response over TLS failed: {e}"),
        }
    }

    /// Reads on until the server ends the session; `Ok(true)` when it sent close_notify first.
    pub(crate) fn read_to_close(&mut self) -> io::Result<bool> {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) if rest.is_empty() => Ok(true),
            Ok(n) => Err(bad(format!("{n} unexpected bytes before the close"))),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
        }
    }
}
