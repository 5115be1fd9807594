//! An HTTP/1.1 origin for pull-through tests and the `flash-crowd` bench: serves byte ranges
//! of objects held in memory, counts every request it gets, and misbehaves on command (a delay
//! before the response head, a capped rate, a connection dropped after N body bytes, an error
//! status). A thread per connection, keep-alive, `Range: bytes=a-b` / `a-` / `-n`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// One request the origin received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginRequest {
    /// The path, without the leading `/`.
    pub id: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
}

/// How the origin states an object's SHA-256 (pull-through checks it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestHeader {
    /// RFC 9530 `Repr-Digest: sha-256=:<base64>:`.
    Repr,
    /// RFC 3230 `Digest: sha-256=<base64>`.
    Legacy,
    /// S3 user metadata `x-amz-meta-sha256: <hex>`.
    AmzMeta,
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).into()
}

#[derive(Default)]
struct State {
    objects: Mutex<HashMap<String, Arc<Vec<u8>>>>,
    digests: Mutex<HashMap<String, String>>,
    log: Mutex<Vec<OriginRequest>>,
    delay_ms: AtomicU64,
    rate: AtomicU64,
    die_after: AtomicU64,
    status: AtomicU16,
    body_bytes: AtomicU64,
    stop: AtomicBool,
}

/// A running origin; stops accepting when dropped.
pub struct Origin {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl Origin {
    /// Starts an origin on a free loopback port.
    pub fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind origin");
        let addr = listener.local_addr().expect("origin address");
        let state = Arc::new(State::default());
        let s = state.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                thread::spawn(move || serve(conn, &s));
            }
        });
        Origin { addr, state }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds (or replaces) an object.
    pub fn put(&self, id: &str, data: Vec<u8>) {
        self.state
            .objects
            .lock()
            .unwrap()
            .insert(id.to_owned(), Arc::new(data));
    }

    /// Sends `digest` as `id`'s SHA-256 in every answer for it (right or wrong: the test
    /// decides), in the header style `kind`.
    pub fn set_digest(&self, id: &str, kind: DigestHeader, digest: [u8; 32]) {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(digest);
        let line = match kind {
            DigestHeader::Repr => format!("Repr-Digest: sha-256=:{b64}:\r\n"),
            DigestHeader::Legacy => format!("Digest: sha-256={b64}\r\n"),
            DigestHeader::AmzMeta => format!("x-amz-meta-sha256: {}\r\n", hex::encode(digest)),
        };
        self.state
            .digests
            .lock()
            .unwrap()
            .insert(id.to_owned(), line);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<OriginRequest> {
        self.state.log.lock().unwrap().clone()
    }

    /// Requests so far for `id`.
    pub fn requests_for(&self, id: &str) -> Vec<OriginRequest> {
        self.requests().into_iter().filter(|r| r.id == id).collect()
    }

    /// Body bytes sent so far.
    pub fn body_bytes(&self) -> u64 {
        self.state.body_bytes.load(Relaxed)
    }

    /// Waits this long before each response head.
    pub fn set_delay(&self, d: Duration) {
        self.state.delay_ms.store(d.as_millis() as u64, Relaxed);
    }

    /// Sends bodies at about this many bytes per second per response (0: as fast as it can).
    pub fn set_rate(&self, bytes_per_second: u64) {
        self.state.rate.store(bytes_per_second, Relaxed);
    }

    /// Drops the connection after this many body bytes of a response (0: never).
    pub fn die_after(&self, bytes: u64) {
        self.state.die_after.store(bytes, Relaxed);
    }

    /// Answers every request with this status and no body (0: serve normally).
    pub fn fail_with(&self, status: u16) {
        self.state.status.store(status, Relaxed);
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.state.stop.store(true, Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(conn: TcpStream, s: &State) {
    let _ = conn.set_nodelay(true);
    let mut reader = BufReader::new(conn.try_clone().expect("clone origin socket"));
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let mut range = None;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("range") {
                    range = Some(v.trim().to_owned());
                }
            }
        }
        let id = path.trim_start_matches('/').to_owned();
        s.log.lock().unwrap().push(OriginRequest {
            id: id.clone(),
            range: range.clone(),
        });
        let delay = s.delay_ms.load(Relaxed);
        if delay > 0 {
            thread::sleep(Duration::from_millis(delay));
        }
        let status = s.status.load(Relaxed);
        if status != 0 {
            let _ = write!(out, "HTTP/1.1 {status} Error\r\nContent-Length: 0\r\n\r\n");
            continue;
        }
        let obj = s.objects.lock().unwrap().get(&id).cloned();
        let Some(obj) = obj else {
            let _ = write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            continue;
        };
        let total = obj.len() as u64;
        let (code, a, b) = match range.as_deref().and_then(|r| parse_range(r, total)) {
            Some(Ok((a, b))) => (206, a, b),
            Some(Err(())) => {
                let _ = write!(
                    out,
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\nContent-Length: 0\r\n\r\n"
                );
                continue;
            }
            None => (200, 0, total),
        };
        let mut head = format!(
            "HTTP/1.1 {code} {}\r\nContent-Type: video/mp2t\r\nContent-Length: {}\r\nLast-Modified: Tue, 01 Dec 2026 10:00:00 GMT\r\n",
            if code == 206 { "Partial Content" } else { "OK" },
            b - a
        );
        if code == 206 {
            head.push_str(&format!("Content-Range: bytes {a}-{}/{total}\r\n", b - 1));
        }
        if let Some(line) = s.digests.lock().unwrap().get(&id) {
            head.push_str(line);
        }
        head.push_str("\r\n");
        if out.write_all(head.as_bytes()).is_err() {
            return;
        }
        let die = s.die_after.load(Relaxed);
        let rate = s.rate.load(Relaxed);
        let started = Instant::now();
        let mut sent = 0u64;
        let mut pos = a;
        while pos < b {
            let mut n = (b - pos).min(16 * 1024);
            if die > 0 {
                if sent >= die {
                    let _ = out.shutdown(std::net::Shutdown::Both);
                    return;
                }
                n = n.min(die - sent);
            }
            if out
                .write_all(&obj[pos as usize..(pos + n) as usize])
                .is_err()
            {
                return;
            }
            s.body_bytes.fetch_add(n, Relaxed);
            sent += n;
            pos += n;
            if rate > 0 {
                let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    thread::sleep(wait);
                }
            }
        }
        let _ = out.flush();
    }
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` → `Ok((start, end_exclusive))`; `Err` when unsatisfiable;
/// `None` when not a single byte range (served whole).
fn parse_range(v: &str, total: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = v.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        return Some(if n == 0 || total == 0 {
            Err(())
        } else {
            Ok((total - n.min(total), total))
        });
    }
    let a: u64 = a.parse().ok()?;
    if a >= total {
        return Some(Err(()));
    }
    let end = if b.is_empty() {
        total
    } else {
        (b.parse::<u64>().ok()? + 1).min(total)
    };
    Some(Ok((a, end)))
}
