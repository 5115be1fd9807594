//! HTTP clients for tests: [`Conn`], raw HTTP/1.1 over a `TcpStream` that writes exact bytes
//! and reads responses one at a time (Content-Length, chunked, or until EOF), so tests see
//! exactly what went over the wire; [`TlsConn`], the same over rustls; and two real clients,
//! [`curl`] and [`ureq_request`].

use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::content::assert_bytes_eq;
use crate::scratch::temp_dir;
use crate::server::{canary_data, CANARY};
use crate::IO_TIMEOUT;

/// One HTTP response as read off the wire.
#[derive(Clone)]
pub struct Response {
    /// The status line's version (`HTTP/1.1`).
    pub version: String,
    /// The status code.
    pub status: u16,
    /// The reason phrase.
    pub reason: String,
    /// The header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body (empty for HEAD, 204, 304 and 1xx).
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// How many header fields are named `name` (case-insensitive).
    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }

    /// The header's value; panics (showing the response) if it is missing.
    #[track_caller]
    pub fn expect_header(&self, name: &str) -> &str {
        match self.header(name) {
            Some(v) => v,
            None => panic!("response has no {name} header: {self:?}"),
        }
    }

    /// `Content-Length` as a number; panics if it is not one.
    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length")
            .map(|v| v.trim().parse().expect("numeric Content-Length"))
    }

    /// Whether the response carries `Connection: close`.
    pub fn says_close(&self) -> bool {
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
pub enum Closed {
    /// read returned 0: orderly close (FIN).
    Eof,
    /// ECONNRESET.
    Reset,
}

/// A raw client connection.
pub struct Conn {
    /// The socket, buffered.
    pub reader: BufReader<TcpStream>,
    /// The server's address.
    pub peer: SocketAddr,
}

/// Builds a request head: `METHOD target HTTP/1.1`, `Host`, the given headers, blank line.
pub fn request_head(method: &str, target: &str, headers: &[(&str, &str)]) -> String {
    let mut s = format!("{method} {target} HTTP/1.1\r\nHost: edgeplane.test\r\n");
    for (n, v) in headers {
        s.push_str(&format!("{n}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s
}

impl Conn {
    /// Connects, with [`IO_TIMEOUT`] on reads and writes and Nagle off.
    pub fn connect(addr: SocketAddr) -> Conn {
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

    /// The socket.
    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    /// Replaces the read timeout.
    pub fn set_read_timeout(&self, t: Duration) {
        self.stream().set_read_timeout(Some(t)).unwrap();
    }

    /// Writes `bytes`; panics if the write fails.
    #[track_caller]
    pub fn send(&mut self, bytes: &[u8]) {
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
    pub fn read_head(&mut self) -> String {
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

    /// Writes `bytes`; the error is the caller's to judge.
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.reader.get_mut().write_all(bytes)
    }

    /// Sends a request and reads its response (a HEAD request's response has no body).
    #[track_caller]
    pub fn request(&mut self, method: &str, target: &str, headers: &[(&str, &str)]) -> Response {
        self.send(request_head(method, target, headers).as_bytes());
        self.read_response(method == "HEAD")
    }

    /// Sends raw bytes and reads one response.
    #[track_caller]
    pub fn raw(&mut self, bytes: &[u8]) -> Response {
        self.send(bytes);
        self.read_response(bytes.starts_with(b"HEAD "))
    }

    /// Reads one response; panics on EOF, reset, timeout or a malformed response.
    #[track_caller]
    pub fn read_response(&mut self, head: bool) -> Response {
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
    pub fn try_read_response(&mut self, head: bool) -> io::Result<Option<Response>> {
        read_http_response(&mut self.reader, head)
    }

    /// Reads until the peer closes; fails if any byte arrives or the read times out.
    pub fn read_close(&mut self) -> io::Result<Closed> {
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
    pub fn expect_eof(&mut self, context: &str) {
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
    pub fn expect_closed(&mut self, context: &str) {
        if let Err(e) = self.read_close() {
            panic!("{context}: connection was not closed by the server: {e}");
        }
    }

    /// After an error response `prev` on this connection: the connection must either be closed
    /// cleanly (when the response said `Connection: close`, or the server closes it when we try
    /// to go on), or still work (the canary is served byte-exact).
    #[track_caller]
    pub fn expect_usable_or_closed(&mut self, prev: &Response, context: &str) {
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

    /// Shuts down the write side (sends FIN).
    pub fn shutdown_write(&self) {
        let _ = self.stream().shutdown(Shutdown::Write);
    }
}

/// Reads one HTTP/1.1 response from any byte stream (plain or TLS); `Ok(None)` if the peer
/// closed the connection before its first byte.
pub fn read_http_response(reader: &mut impl BufRead, head: bool) -> io::Result<Option<Response>> {
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

/// The outcome of one curl run: the last response's status and headers, and the body file.
pub struct CurlResult {
    /// curl's exit code (`None`: killed by a signal).
    pub exit_code: Option<i32>,
    /// What curl printed on stderr.
    pub stderr: String,
    /// The last response's status (0 if there was none).
    pub status: u16,
    /// The last response's header fields.
    pub headers: Vec<(String, String)>,
    /// The body curl wrote.
    pub body: Vec<u8>,
    /// Every status line curl saw (one per response, in order).
    pub status_lines: Vec<String>,
}

impl CurlResult {
    /// The last response as a [`Response`] (for the shared assertions).
    pub fn response(&self) -> Response {
        Response {
            version: String::new(),
            status: self.status,
            reason: String::new(),
            headers: self.headers.clone(),
            body: self.body.clone(),
        }
    }

    /// The last response's first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
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
pub fn curl(args: &[&str], url: &str) -> CurlResult {
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
pub fn ureq_agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(IO_TIMEOUT)
        .redirects(0)
        .build()
}

/// One request with ureq; 4xx/5xx are results, not errors (transport errors panic).
pub fn ureq_request(
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

/// A raw HTTPS client connection: rustls over a blocking `TcpStream`.
pub struct TlsConn {
    /// The TLS stream, buffered.
    pub reader: BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
}

impl TlsConn {
    /// Connects and completes the handshake. `server_name`: a DNS name (sent as SNI) or an IP
    /// address (no SNI).
    pub fn connect(
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
    pub fn tls(&self) -> &rustls::ClientConnection {
        &self.reader.get_ref().conn
    }

    /// Writes `bytes` and flushes; panics if that fails.
    #[track_caller]
    pub fn send(&mut self, bytes: &[u8]) {
        let stream = self.reader.get_mut();
        stream
            .write_all(bytes)
            .and_then(|()| stream.flush())
            .unwrap_or_else(|e| panic!("writing {} bytes over TLS failed: {e}", bytes.len()));
    }

    /// Sends a request and reads its response.
    #[track_caller]
    pub fn request(&mut self, method: &str, target: &str, headers: &[(&str, &str)]) -> Response {
        self.send(request_head(method, target, headers).as_bytes());
        self.read_response(method == "HEAD")
    }

    /// Reads one response; panics on EOF, a TLS or I/O error or a malformed response.
    #[track_caller]
    pub fn read_response(&mut self, head: bool) -> Response {
        match read_http_response(&mut self.reader, head) {
            Ok(Some(r)) => r,
            Ok(None) => panic!("the TLS connection closed before a response arrived"),
            Err(e) => panic!("reading a response over TLS failed: {e}"),
        }
    }

    /// Reads on until the server ends the session; `Ok(true)` when it sent close_notify first.
    pub fn read_to_close(&mut self) -> io::Result<bool> {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) if rest.is_empty() => Ok(true),
            Ok(n) => Err(bad(format!("{n} unexpected bytes before the close"))),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
        }
    }
}
