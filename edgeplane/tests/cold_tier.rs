//! Cold-tier isolation: a hot request's latency must not depend on cold requests on the same core.
//!
//! One executor (`cores = 1`) serves a `flash` tier (a normal directory, pre-warmed) and a
//! `storage` tier on slowfs (a FUSE mirror that sleeps before every read that reaches it, so cold
//! pages cost milliseconds, like an HDD seek). 32 connections loop over distinct, never-read
//! ranges of the storage tier while a few other connections time small ranges of the flash file.
//! With `[io] residency_check = false`, `sendfile` on cold pages blocks the executor thread for the
//! FUSE delay and the hot requests queue behind it; with `= true`, cold ranges are read on the
//! blocking pool first and hot requests go straight through. The test runs both and asserts the
//! hot p99 with the check is at least 5× better (a ratio, never an absolute time). Every body is
//! checked byte for byte. A first phase with the hot connections alone gives the baseline the
//! output reports the mixed hot p99 against (issue #17's goal: ≤ 2×; printed, not asserted).
//!
//! Skips, printing why, where FUSE mounts cannot be made (no /dev/fuse, not root).

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use edgeplane_test_support::ready::parse_ready;

/// Sleep per FUSE read on the storage tier.
const FUSE_DELAY: Duration = Duration::from_millis(8);
/// Cold storage files and 1 MiB slots in each: a cold range lies at the start of its own slot,
/// far enough (> the kernel's 128 KiB readahead) from the next that no read warms another's range.
const COLD_FILES: usize = 32;
const SLOTS_PER_FILE: usize = 64;
const SLOT: u64 = 1 << 20;
/// A cold range starts up to this far into its slot (unaligned on purpose) …
const MAX_JITTER: u64 = 4096;
/// … and is 64–192 KiB long. Only the part of a slot a range can touch holds data; the rest of
/// the source file is a hole.
const MIN_COLD_LEN: u64 = 64 << 10;
const MAX_COLD_LEN: u64 = 192 << 10;
const COLD_CONNECTIONS: usize = 32;
/// Without the check a hot request can wait for dozens of cold reads (hundreds of ms), so each
/// hot connection gets only a few samples per phase; several connections make up the count.
const HOT_CONNECTIONS: usize = 8;
const MIN_HOT_SAMPLES: usize = 10;
const HOT_FILE_LEN: u64 = 8 << 20;
const MAX_HOT_LEN: u64 = 16 << 10;
/// Pause between one hot connection's requests: hot requests arrive "in between" cold ones.
const HOT_PAUSE: Duration = Duration::from_millis(2);
const PHASE: Duration = Duration::from_secs(3);
const REQUIRED_RATIO: f64 = 5.0;

// ---------------------------------------------------------------------------------------------
// Content: every byte is a function of (file seed, offset), so bodies are checked without keeping
// the files in memory, and a misplaced or shifted range cannot match.

fn word(seed: u64, index: u64) -> u64 {
    let mut w = (index ^ (seed << 40)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    w ^= w >> 29;
    w
}

/// The bytes at `[first, first + len)` of the file with `seed`.
fn expected(seed: u64, first: u64, len: u64) -> Vec<u8> {
    let start_word = first / 8;
    let end_word = (first + len).div_ceil(8);
    let mut bytes = Vec::with_capacity(((end_word - start_word) * 8) as usize);
    for i in start_word..end_word {
        bytes.extend_from_slice(&word(seed, i).to_le_bytes());
    }
    let skip = (first % 8) as usize;
    bytes[skip..skip + len as usize].to_vec()
}

fn cold_seed(file: usize) -> u64 {
    1000 + file as u64
}
const HOT_SEED: u64 = 7;

fn cold_name(file: usize) -> String {
    format!("cold-{file:03}.bin")
}

/// The never-read range of cold slot `n`: (file, first, last), deterministic.
fn cold_range(n: usize) -> (usize, u64, u64) {
    let file = n % COLD_FILES;
    let slot = (n / COLD_FILES) as u64;
    let h = word(99, n as u64);
    let first = slot * SLOT + h % MAX_JITTER;
    let len = MIN_COLD_LEN + (h >> 20) % (MAX_COLD_LEN - MIN_COLD_LEN + 1);
    (file, first, first + len - 1)
}

fn write_sources(flash: &Path, storage: &Path) {
    let hot = File::create(flash.join("hot.bin")).unwrap();
    hot.write_all_at(&expected(HOT_SEED, 0, HOT_FILE_LEN), 0)
        .unwrap();
    let region = MAX_JITTER + MAX_COLD_LEN;
    for file in 0..COLD_FILES {
        let f = File::create(storage.join(cold_name(file))).unwrap();
        f.set_len(SLOTS_PER_FILE as u64 * SLOT).unwrap();
        for slot in 0..SLOTS_PER_FILE as u64 {
            let at = slot * SLOT;
            f.write_all_at(&expected(cold_seed(file), at, region), at)
                .unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The server under test.

/// A running `edgeplane serve`; SIGTERM (then SIGKILL) and reap on drop.
struct Server {
    child: Child,
    http: SocketAddr,
    admin: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(config: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_edgeplane"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start edgeplane serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let log_writer = Arc::clone(&log);
        // Keep draining stderr for the server's whole life so it never blocks on a full pipe.
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("ready http=") {
                    let _ = ready_tx.send(line.clone());
                }
                log_writer.lock().unwrap().push(line);
            }
        });
        let mut server = Server {
            child,
            http: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
            log,
        };
        let line = match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let status = server.child.try_wait().ok().flatten();
                panic!(
                    "edgeplane did not print its ready line (exit status {status:?}); stderr:\n{}",
                    server.log()
                );
            }
        };
        let ready = parse_ready(&line)
            .unwrap_or_else(|| panic!("no http=IP:PORT admin=IP:PORT in ready line {line:?}"));
        server.http = ready.http;
        server.admin = ready.admin;
        server
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn metrics(&self) -> String {
        let mut s = TcpStream::connect(self.admin).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text
    }

    fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child, which has not been reaped yet (try_wait said so).
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("edgeplane did not exit 15 s after SIGTERM; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// `io.readiness` from EDGEPLANE_TEST_READINESS, as every test server gets it.
fn readiness_line() -> String {
    match std::env::var(edgeplane_test_support::server::READINESS_ENV) {
        Ok(mode) if !mode.is_empty() => format!("readiness = \"{mode}\""),
        _ => String::new(),
    }
}

fn write_config(dir: &Path, residency_check: bool, flash: &Path, storage: &Path) -> PathBuf {
    let path = dir.join(format!("edgeplane-residency-{residency_check}.toml"));
    let text = format!(
        r#"cores = 1
[http]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[signing]
enabled = false
[io]
residency_check = {residency_check}
cold_read_threads = 4
{readiness}
[[tier]]
name = "flash"
kind = "flash"
path = "{}"
[[tier]]
name = "storage"
kind = "storage"
path = "{}"
"#,
        flash.display(),
        storage.display(),
        readiness = readiness_line()
    );
    fs::write(&path, text).unwrap();
    path
}

// ---------------------------------------------------------------------------------------------
// A minimal keep-alive HTTP/1.1 client: one request at a time per connection.

struct Client {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let mut client = Client { addr, conn: None };
        client.ensure_connected();
        client
    }

    fn ensure_connected(&mut self) -> &mut BufReader<TcpStream> {
        if self.conn.is_none() {
            let stream = TcpStream::connect(self.addr).expect("connect to edgeplane");
            stream.set_nodelay(true).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            self.conn = Some(BufReader::new(stream));
        }
        self.conn.as_mut().unwrap()
    }

    /// `GET /<id>/range/<first>-<last>`; returns the status and body.
    fn get_range(&mut self, id: &str, first: u64, last: u64) -> (u16, Vec<u8>) {
        let conn = self.ensure_connected();
        let request = format!("GET /{id}/range/{first}-{last} HTTP/1.1\r\nHost: edgeplane\r\n\r\n");
        conn.get_mut().write_all(request.as_bytes()).unwrap();

        let mut line = String::new();
        conn.read_line(&mut line).unwrap();
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut length = None;
        let mut close = false;
        loop {
            line.clear();
            conn.read_line(&mut line).unwrap();
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').expect("header line");
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse::<usize>().unwrap());
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
        let mut body = vec![0u8; length.expect("Content-Length")];
        conn.read_exact(&mut body).unwrap();
        if close {
            self.conn = None;
        }
        (status, body)
    }
}

// ---------------------------------------------------------------------------------------------
// One measured run.

struct RunResult {
    hot_latencies: Vec<Duration>,
    /// How long the cold load ran.
    phase: Duration,
    cold_requests: usize,
    fuse_reads: u64,
    metrics_cold_reads: String,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One phase: `cold_connections` clients on cold ranges (0: hot clients alone) beside the hot
/// ones.
fn run(
    residency_check: bool,
    cold_connections: usize,
    dir: &Path,
    flash: &Path,
    mount: &slowfs::MountGuard,
) -> RunResult {
    let storage = mount.mountpoint();
    // Every cold range must be cold in every run.
    for file in 0..COLD_FILES {
        slowfs::evict(&storage.join(cold_name(file))).unwrap();
    }
    let config = write_config(dir, residency_check, flash, storage);
    let server = Server::start(&config);
    let addr = server.http;

    // Warm the hot file through the server and check it whole, once.
    let mut warm = Client::connect(addr);
    let (status, body) = warm.get_range("hot.bin", 0, HOT_FILE_LEN - 1);
    assert_eq!(status, 206);
    assert!(
        body == expected(HOT_SEED, 0, HOT_FILE_LEN),
        "hot file body differs"
    );
    drop(warm);
    // Evict again in case the server touched cold files while starting (catalog scan).
    for file in 0..COLD_FILES {
        let path = storage.join(cold_name(file));
        slowfs::evict(&path).unwrap();
        assert_eq!(slowfs::residency(&path).unwrap().resident_pages, 0);
    }

    let mut cold_clients: Vec<Client> = (0..cold_connections)
        .map(|_| Client::connect(addr))
        .collect();
    let mut hot_clients: Vec<Client> = (0..HOT_CONNECTIONS)
        .map(|_| Client::connect(addr))
        .collect();
    let next_slot = AtomicUsize::new(0);
    let total_slots = COLD_FILES * SLOTS_PER_FILE;
    let fuse_reads_before = mount.reads();
    let start = Instant::now();
    let deadline = start + PHASE;

    let (cold_requests, hot_latencies) = thread::scope(|s| {
        let cold: Vec<_> = cold_clients
            .iter_mut()
            .map(|client| {
                let next_slot = &next_slot;
                s.spawn(move || {
                    let mut done = 0usize;
                    while Instant::now() < deadline {
                        let n = next_slot.fetch_add(1, Ordering::Relaxed);
                        if n >= total_slots {
                            break;
                        }
                        let (file, first, last) = cold_range(n);
                        let (status, body) = client.get_range(&cold_name(file), first, last);
                        assert_eq!(status, 206, "cold range {n}");
                        assert!(
                            body == expected(cold_seed(file), first, last - first + 1),
                            "cold range {n} ({} {first}-{last}) differs",
                            cold_name(file)
                        );
                        done += 1;
                    }
                    done
                })
            })
            .collect();
        let hot: Vec<_> = hot_clients
            .iter_mut()
            .enumerate()
            .map(|(c, client)| {
                let next_slot = &next_slot;
                s.spawn(move || {
                    let mut latencies = Vec::new();
                    let mut i = 0u64;
                    // Let the cold load build up before timing; stop when it stops.
                    thread::sleep(Duration::from_millis(100));
                    while Instant::now() < deadline
                        && next_slot.load(Ordering::Relaxed) < total_slots
                    {
                        let h = word(c as u64 + 50, i);
                        i += 1;
                        let len = 1 + (h >> 32) % MAX_HOT_LEN;
                        let first = h % (HOT_FILE_LEN - len);
                        let last = first + len - 1;
                        let t = Instant::now();
                        let (status, body) = client.get_range("hot.bin", first, last);
                        latencies.push(t.elapsed());
                        assert_eq!(status, 206, "hot range {first}-{last}");
                        assert!(
                            body == expected(HOT_SEED, first, len),
                            "hot range {first}-{last} differs"
                        );
                        thread::sleep(HOT_PAUSE);
                    }
                    latencies
                })
            })
            .collect();
        let cold_requests: usize = cold.into_iter().map(|t| t.join().unwrap()).sum();
        let hot_latencies: Vec<Duration> =
            hot.into_iter().flat_map(|t| t.join().unwrap()).collect();
        (cold_requests, hot_latencies)
    });
    let phase = start.elapsed();
    let fuse_reads = mount.reads() - fuse_reads_before;
    if next_slot.load(Ordering::Relaxed) >= total_slots {
        eprintln!(
            "residency_check={residency_check}: used all {total_slots} cold ranges after \
             {phase:?}; the phase ended early"
        );
    }
    let metrics_cold_reads = server
        .metrics()
        .lines()
        .filter(|l| l.starts_with("edgeplane_cold_reads_total"))
        .collect::<Vec<_>>()
        .join("; ");
    drop(cold_clients);
    drop(hot_clients);
    server.stop();
    RunResult {
        hot_latencies,
        phase,
        cold_requests,
        fuse_reads,
        metrics_cold_reads,
    }
}

#[test]
fn hot_requests_do_not_wait_for_cold_reads() {
    if let Some(why) = slowfs::mount_unavailable_reason() {
        eprintln!("SKIPPED cold-tier isolation test: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let flash = dir.path().join("flash");
    let source = dir.path().join("storage-source");
    let mnt = dir.path().join("storage");
    for d in [&flash, &source, &mnt] {
        fs::create_dir(d).unwrap();
    }
    write_sources(&flash, &source);
    let mount = slowfs::mount(&source, &mnt, FUSE_DELAY).expect("mount slowfs");

    // Hot clients alone first: the baseline the mixed phase's hot p99 is reported against.
    let alone = {
        let mut lat = run(true, 0, dir.path(), &flash, &mount).hot_latencies;
        lat.sort();
        assert!(
            lat.len() >= MIN_HOT_SAMPLES,
            "hot only: {} samples",
            lat.len()
        );
        eprintln!(
            "hot only: n={} p50={:?} p99={:?} max={:?}",
            lat.len(),
            percentile(&lat, 0.50),
            percentile(&lat, 0.99),
            lat[lat.len() - 1]
        );
        percentile(&lat, 0.99)
    };
    let mut p99 = Vec::new();
    for residency_check in [true, false] {
        let result = run(
            residency_check,
            COLD_CONNECTIONS,
            dir.path(),
            &flash,
            &mount,
        );
        let mut lat = result.hot_latencies;
        lat.sort();
        assert!(
            lat.len() >= MIN_HOT_SAMPLES,
            "residency_check={residency_check}: only {} hot samples",
            lat.len()
        );
        // Each cold range lies in its own never-read slot, so each must have reached slowfs.
        assert!(
            result.fuse_reads >= result.cold_requests as u64,
            "residency_check={residency_check}: {} cold requests but only {} FUSE reads: \
             the cold ranges were not cold",
            result.cold_requests,
            result.fuse_reads
        );
        eprintln!(
            "residency_check={residency_check}: hot n={} p50={:?} p99={:?} max={:?}; \
             cold requests={} ({:.0}/s), FUSE reads={}; metrics: {}",
            lat.len(),
            percentile(&lat, 0.50),
            percentile(&lat, 0.99),
            lat[lat.len() - 1],
            result.cold_requests,
            result.cold_requests as f64 / result.phase.as_secs_f64(),
            result.fuse_reads,
            result.metrics_cold_reads
        );
        p99.push(percentile(&lat, 0.99));
    }
    let (with_check, without_check) = (p99[0], p99[1]);
    // Reported, not asserted (no timed assertions): the issue's goal is <= 2x (issue #17).
    eprintln!(
        "hot p99 with {COLD_CONNECTIONS} cold clients {with_check:?} vs hot only {alone:?}: \
         {:.2}x (goal <= 2x)",
        with_check.as_secs_f64() / alone.as_secs_f64()
    );
    let ratio = without_check.as_secs_f64() / with_check.as_secs_f64();
    eprintln!(
        "hot p99: with residency check {with_check:?}, without {without_check:?}; \
         ratio {ratio:.1}x (required >= {REQUIRED_RATIO}x)"
    );
    assert!(
        ratio >= REQUIRED_RATIO,
        "hot p99 with the residency check ({with_check:?}) is only {ratio:.1}x better than \
         without ({without_check:?}); required {REQUIRED_RATIO}x"
    );
    drop(mount);
}
