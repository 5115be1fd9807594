//! Starting `edgeplane serve` from a written config, and running `edgeplane` commands.
//!
//! * [`ServerBuilder`] writes a config (tiers, limits) into a temporary directory under the
//!   target directory ([`crate::scratch::temp_dir`]: a real disk, so sparse files and
//!   page-cache eviction work), starts `edgeplane serve --config FILE` with both listeners on
//!   `127.0.0.1:0`, and waits for the `ready http=IP:PORT admin=IP:PORT` line on stderr.
//! * [`Server`] owns the process: it is killed on drop, and a test fails if the server died
//!   under it. Everything the server printed is kept and shown when a test fails.

use std::fs;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::client::{Conn, Response, TlsConn};
use crate::content::{assert_bytes_eq, pattern};
use crate::metrics::Metrics;
use crate::pki::{pki, PkiCert};
use crate::process::{describe_status, for_each_line};
use crate::ready::{parse_ready, strip_ansi};
use crate::scratch::{temp_dir, write_file};
use crate::{POLL_TIMEOUT, READY_TIMEOUT};

/// Environment variable naming the `io.readiness` every test server gets (see
/// [`ServerBuilder::config_text`]).
pub const READINESS_ENV: &str = "EDGEPLANE_TEST_READINESS";

/// Every server gets this object in its first tier, so any test can check "still serving".
pub const CANARY: &str = "canary.bin";
/// The canary's length.
pub const CANARY_LEN: usize = 4099;

/// The canary's content.
pub fn canary_data() -> Vec<u8> {
    pattern(CANARY, CANARY_LEN)
}
struct TierSpec {
    name: String,
    kind: String,
    path: PathBuf,
}

/// Builds a config and a set of tier directories, then starts the server.
pub struct ServerBuilder {
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
    /// `https.listen` (default `127.0.0.1:0`).
    https_listen: String,
    wrapper: Vec<String>,
    /// `[signing]`: `None` writes `enabled = false`; `Some(keys_file)` turns signing on.
    signing_keys: Option<PathBuf>,
    /// `[access] prefixes_file`.
    prefixes_file: Option<PathBuf>,
    /// The `edgeplane` binary.
    bin: PathBuf,
}

impl ServerBuilder {
    /// One executor, one tier `flash` (kind `flash`) holding [`CANARY`], default limits; the
    /// server will be `bin`, the `edgeplane` binary: pass `env!("CARGO_BIN_EXE_edgeplane")`.
    pub fn new(bin: impl AsRef<Path>) -> Self {
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
            https_listen: "127.0.0.1:0".to_owned(),
            wrapper: Vec::new(),
            signing_keys: None,
            prefixes_file: None,
            bin: bin.as_ref().to_path_buf(),
        };
        b = b.tier("flash", "flash");
        b.file("flash", CANARY, &canary_data())
    }

    /// Sets `cores` (executors; default 1).
    pub fn cores(mut self, n: u32) -> Self {
        self.cores = n;
        self
    }

    /// Sets `[limits] key = value` (`value` is written as a TOML integer).
    pub fn limit(mut self, key: &str, value: u64) -> Self {
        self.limits.push((key.to_owned(), value.to_string()));
        self
    }

    /// Sets `[io] key = value` (`value` is written verbatim, e.g. `"true"` or `"2"`).
    pub fn io(mut self, key: &str, value: &str) -> Self {
        self.io.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Adds the HTTPS listener (`127.0.0.1:0`) with the test PKI's [`PkiCert::Default`]
    /// certificate. The PEM files are copied to `ROOT/tls/` (see [`Server::tls_path`]), so a
    /// test can replace them and reload.
    pub fn https(mut self) -> Self {
        self.https.get_or_insert((PkiCert::Default, Vec::new()));
        self
    }

    /// Sets `https.ktls` (`"auto"` or `"off"`; implies [`Self::https`]).
    pub fn https_ktls(mut self, value: &str) -> Self {
        self.https_ktls = Some(value.to_owned());
        self.https()
    }

    /// Adds `[[https.sni]] name = NAME` served with the test PKI's certificate `cert` (implies
    /// [`Self::https`]).
    pub fn https_sni(mut self, name: &str, cert: PkiCert) -> Self {
        let https = self.https.get_or_insert((PkiCert::Default, Vec::new()));
        https.1.push((name.to_owned(), cert));
        self
    }

    /// Turns signed URLs on with `keys_file` (by default the harness writes
    /// `[signing] enabled = false`, so plain URLs are served).
    pub fn signing_keys(mut self, keys_file: &Path) -> Self {
        self.signing_keys = Some(keys_file.to_path_buf());
        self
    }

    /// Sets `[access] prefixes_file`.
    pub fn prefixes_file(mut self, path: &Path) -> Self {
        self.prefixes_file = Some(path.to_path_buf());
        self
    }

    /// Sets `http.listen` (default `127.0.0.1:0`).
    pub fn http_listen(mut self, addr: &str) -> Self {
        self.http_listen = addr.to_owned();
        self
    }

    /// Sets `https.listen` (default `127.0.0.1:0`; implies nothing: add [`Self::https`]).
    pub fn https_listen(mut self, addr: &str) -> Self {
        self.https_listen = addr.to_owned();
        self
    }

    /// Runs the server under a wrapper command, e.g. `["ip", "netns", "exec", "ns1"]`.
    pub fn wrapper(mut self, cmd: &[&str]) -> Self {
        self.wrapper = cmd.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// Appends a TOML section verbatim after the tiers (e.g. `"[xdp]\nenforce = true\n"`).
    pub fn section(mut self, text: &str) -> Self {
        self.sections.push(text.to_owned());
        self
    }

    /// Adds a tier with its own (new, empty) directory.
    pub fn tier(mut self, name: &str, kind: &str) -> Self {
        let path = self.dir.path().join(format!("tier-{name}"));
        fs::create_dir_all(&path).expect("create tier directory");
        self.tiers.push(TierSpec {
            name: name.to_owned(),
            kind: kind.to_owned(),
            path,
        });
        self
    }

    /// The directory of tier `tier`.
    pub fn tier_dir(&self, tier: &str) -> PathBuf {
        self.tiers
            .iter()
            .find(|t| t.name == tier)
            .unwrap_or_else(|| panic!("no tier named {tier:?} in this builder"))
            .path
            .clone()
    }

    /// Writes `tier/name` with `data` (fsynced).
    pub fn file(self, tier: &str, name: &str, data: &[u8]) -> Self {
        write_file(&self.tier_dir(tier).join(name), data);
        self
    }

    /// The scratch directory that holds the config and the tier directories.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The config [`Self::start`] writes.
    pub fn config_text(&self) -> String {
        let mut s = format!(
            "cores = {}\n\n[http]\nlisten = \"{}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            self.cores, self.http_listen
        );
        if let Some((default, sni)) = &self.https {
            let tls = self.dir.path().join("tls");
            let (cert, key) = pki().write(*default, &tls, "server");
            s.push_str(&format!(
                "\n[https]\nlisten = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                self.https_listen,
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
        // EDGEPLANE_TEST_READINESS: every server a test starts waits for request bytes this
        // way (`io.readiness`), unless the test sets the key itself; `cargo xtask ci` runs the
        // serving tests once with the default and once with `legacy` (glommio's own path).
        let mut io = self.io.clone();
        if let Ok(mode) = std::env::var(READINESS_ENV) {
            if !mode.is_empty() && !io.iter().any(|(k, _)| k == "readiness") {
                io.push(("readiness".into(), format!("\"{mode}\"")));
            }
        }
        if !io.is_empty() {
            s.push_str("\n[io]\n");
            for (k, v) in &io {
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
    pub fn start(self) -> Server {
        let config_path = self.dir.path().join("edgeplane.toml");
        let text = self.config_text();
        fs::write(&config_path, &text).expect("write config");
        let tiers = self
            .tiers
            .iter()
            .map(|t| (t.name.clone(), t.path.clone()))
            .collect();
        let mut server =
            Server::spawn(&self.bin, self.dir, config_path, text, tiers, &self.wrapper);
        server.wait_ready();
        server
    }
}

/// A running `edgeplane serve`.
pub struct Server {
    child: Option<Child>,
    /// `http=IP:PORT` from the ready line.
    pub http: SocketAddr,
    /// `admin=IP:PORT` from the ready line.
    pub admin: SocketAddr,
    /// `https=IP:PORT` from the ready line, when the server has an HTTPS listener.
    pub https: Option<SocketAddr>,
    /// `cores=N` from the ready line, if it was there.
    pub ready_cores: Option<u32>,
    /// The ready line as printed.
    pub ready_line: String,
    output: Arc<Mutex<String>>,
    stderr_lines: Receiver<String>,
    config_text: String,
    tiers: Vec<(String, PathBuf)>,
    dir: TempDir,
}

impl Server {
    fn spawn(
        bin: &Path,
        dir: TempDir,
        config_path: PathBuf,
        config_text: String,
        tiers: Vec<(String, PathBuf)>,
        wrapper: &[String],
    ) -> Server {
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
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
            .unwrap_or_else(|e| panic!("could not start {}: {e}", bin.display()));
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
                    if let Some(ready) = parse_ready(&line) {
                        self.http = ready.http;
                        self.admin = ready.admin;
                        self.ready_cores = ready.cores;
                        self.https = ready.https;
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
    pub fn output(&self) -> String {
        self.output.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The server's process id (0 once it has been reaped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The directory of tier `tier`.
    pub fn tier_dir(&self, tier: &str) -> PathBuf {
        self.tiers
            .iter()
            .find(|(n, _)| n == tier)
            .unwrap_or_else(|| panic!("no tier named {tier:?}"))
            .1
            .clone()
    }

    /// The scratch directory that holds the config and the tier directories.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `http://HTTP-LISTENER/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// `http://ADMIN-LISTENER/path`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// A raw connection to the HTTP listener.
    pub fn connect(&self) -> Conn {
        Conn::connect(self.http)
    }

    /// The HTTPS listener's address; panics when the server has none.
    #[track_caller]
    pub fn https_addr(&self) -> SocketAddr {
        self.https
            .unwrap_or_else(|| panic!("no https= in the ready line {:?}", self.ready_line))
    }

    /// `https://NAME:PORT/path` for clients that resolve `NAME` to the HTTPS address
    /// (curl: `--resolve NAME:PORT:127.0.0.1`, see [`Server::curl_https_args`]).
    pub fn https_url(&self, name: &str, path: &str) -> String {
        format!("https://{name}:{}{path}", self.https_addr().port())
    }

    /// curl arguments that trust the test CA and resolve `name` to the HTTPS listener.
    pub fn curl_https_args(&self, name: &str) -> Vec<String> {
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
    pub fn tls_path(&self, file: &str) -> PathBuf {
        self.root().join("tls").join(file)
    }

    /// A TLS connection to the HTTPS listener (handshake done), asking for `server_name`.
    #[track_caller]
    pub fn connect_tls(&self, config: &Arc<rustls::ClientConfig>, server_name: &str) -> TlsConn {
        TlsConn::connect(self.https_addr(), config, server_name)
            .unwrap_or_else(|e| panic!("TLS handshake with {server_name}: {e}"))
    }

    /// A raw connection to the admin listener.
    pub fn connect_admin(&self) -> Conn {
        Conn::connect(self.admin)
    }

    /// One request on a fresh connection (with `Connection: close`).
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut c = self.connect();
        let mut h = headers.to_vec();
        h.push(("Connection", "close"));
        c.request("GET", path, &h)
    }

    /// Fails unless a fresh connection still gets the canary byte-exact.
    #[track_caller]
    pub fn assert_serving(&self, context: &str) {
        let mut c = self.connect();
        let r = c.request("GET", &format!("/{CANARY}"), &[]);
        assert_eq!(r.status, 200, "{context}: server no longer serves: {r:?}");
        assert_bytes_eq(&r.body, &canary_data(), context);
    }

    /// Sends a signal with `kill -SIG pid`.
    pub fn signal(&self, sig: &str) {
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
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        crate::process::wait_exit(&mut self.child, timeout)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn kill(&mut self) {
        crate::process::kill(&mut self.child);
    }

    /// GET on the admin listener (raw socket, `Connection: close`).
    pub fn admin_get(&self, path: &str) -> Response {
        let mut c = self.connect_admin();
        c.request("GET", path, &[("Connection", "close")])
    }

    /// Scrapes `/metrics`.
    pub fn metrics(&self) -> Metrics {
        let r = self.admin_get("/metrics");
        assert_eq!(r.status, 200, "GET /metrics: {r:?}");
        Metrics::parse(&String::from_utf8_lossy(&r.body))
    }

    /// `POST /reload` on the admin listener; fails unless it answers 200.
    #[track_caller]
    pub fn reload(&self) {
        let r = self.post_reload();
        assert_eq!(r.status, 200, "POST /reload: {r:?}");
    }

    /// `POST /reload` on the admin listener (raw socket, `Connection: close`), whatever it
    /// answers.
    pub fn post_reload(&self) -> Response {
        self.admin_post("/reload")
    }

    /// POST `path` (query included) on the admin listener, empty body, whatever it answers.
    pub fn admin_post(&self, path: &str) -> Response {
        let mut c = self.connect_admin();
        c.request(
            "POST",
            path,
            &[("Content-Length", "0"), ("Connection", "close")],
        )
    }

    /// Polls `/metrics` until `pred` holds; panics with the last scrape after [`POLL_TIMEOUT`].
    #[track_caller]
    pub fn wait_metrics(&self, what: &str, mut pred: impl FnMut(&Metrics) -> bool) -> Metrics {
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
    for_each_line(pipe, |buf| {
        let line = strip_ansi(String::from_utf8_lossy(buf).trim_end());
        if let Ok(mut o) = output.lock() {
            o.push_str(&format!("[{tag}] {line}\n"));
        }
        if let Some(tx) = &tx {
            let _ = tx.send(line);
        }
    });
}

/// Runs `bin` (the `edgeplane` binary) with `args` to completion (killed after `timeout`,
/// which fails the test); returns its exit status, stdout and stderr.
pub fn run_to_exit(
    bin: impl AsRef<Path>,
    args: &[&str],
    timeout: Duration,
) -> (ExitStatus, String, String) {
    let bin = bin.as_ref();
    let mut child = Command::new(bin)
        .args(args)
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {}: {e}", bin.display()));
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
