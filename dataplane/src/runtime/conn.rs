//! One client connection on one executor: read heads, answer them, send bodies.
//!
//! The request loop ([`serve_transport`]) is shared by plain HTTP and HTTPS; only how bytes come
//! in and go out differs ([`Transport`]): [`Plain`] sends bodies with `sendfile`,
//! `runtime::tls::Tls` reads them with `pread` and encrypts them with rustls.
//!
//! Must never block the executor: the socket is non-blocking, `sendfile` that finds the socket
//! buffer full yields to glommio until the client drains it, and a range that is not in the page
//! cache is read in on the blocking pool before `sendfile` touches it (see `docs/design.md`).

use std::cell::Cell;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::core::{Core, DeadlineGuard};
use super::sys;
use crate::catalog::OpenObject;
use crate::http::request::{self, Method, Parsed, Request, Target};
use crate::http::response::{self, HeadContext};
use crate::http::Status;
use crate::metrics::Timeout;

/// Bytes sent per `sendfile` call and checked for residency at once. Also the unit after which a
/// long response yields to other connections on the core.
pub(crate) const CHUNK: u64 = 1 << 20;
/// Bytes pushed through glommio's write path when the socket is full: it waits for writability
/// (an io_uring poll) and then sends this small piece, read from the page cache.
pub(crate) const WAIT_PIECE: u64 = 4096;

/// Why a connection ended early.
#[derive(Debug)]
pub(crate) enum End {
    /// Closed by the client, or any I/O error on the socket.
    Client,
    /// A timer fired.
    Timeout(Timeout),
    /// The object could not be read.
    Object(io::Error),
}

impl End {
    pub(crate) fn object_shrank() -> End {
        End::Object(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "object shrank while serving",
        ))
    }
}

/// What differs between plain HTTP and HTTPS: how request bytes arrive and how response bytes
/// leave. Implementations must never block the executor.
pub(crate) trait Transport {
    /// Reads request bytes into `buf`; `Ok(0)` at the end of the stream, which is also how a
    /// read ends when the core's deadline sweeper shuts the socket's read side.
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, End>;
    /// Sends a response head (or a whole bodiless response). `more`: a body follows at once,
    /// so the head may wait to share packets with it.
    async fn send_head(&mut self, bytes: &[u8], more: bool) -> Result<(), End>;
    /// Sends `obj[start..start+len]`: only resident pages are touched on the executor; cold
    /// ranges are read in on the blocking pool first (`Core::ensure_resident`).
    async fn send_body(
        &mut self,
        core: &Core,
        obj: &Rc<OpenObject>,
        start: u64,
        len: u64,
    ) -> Result<(), End>;
    /// Ends our side of the connection. `clean`: every response was complete (TLS announces
    /// the end with close_notify; after a cut-short body it must not, so the client can tell).
    async fn close(&mut self, clean: bool);
}

/// Serves one accepted plain-HTTP connection to completion.
pub(crate) async fn serve(core: Rc<Core>, stream: TcpStream, peer: IpAddr) {
    let fd = stream.as_raw_fd();
    if sys::set_nonblocking(fd).is_err() {
        return;
    }
    let _ = stream.set_write_timeout(Some(core.config().limits.send_timeout()));
    let deadline = core.register_deadline(fd);
    serve_transport(core, Plain { stream, fd }, deadline, peer).await;
}

/// The request loop over any transport, until the connection ends. `peer`: the client's
/// address, which signed URLs are checked against.
pub(crate) async fn serve_transport<T: Transport>(
    core: Rc<Core>,
    transport: T,
    deadline: DeadlineGuard,
    peer: IpAddr,
) {
    let mut rx = ReadBuf {
        buf: vec![0; core.config().limits.max_header_bytes],
        start: 0,
        end: 0,
    };
    let mut io = Io {
        deadline,
        core,
        t: transport,
        out: Vec::with_capacity(512),
        served: 0,
        peer,
    };
    let result = io.run(&mut rx).await;
    let clean = !matches!(result, Err(End::Object(_) | End::Timeout(Timeout::Send)));
    match result {
        Ok(()) | Err(End::Client) => {}
        Err(End::Timeout(t)) => io.core.metrics().timeout(t),
        Err(End::Object(e)) => {
            io.core.metrics().io_error();
            tracing::debug!("object read failed mid-response: {e}");
        }
    }
    io.t.close(clean).await;
}

/// The connection's read buffer; unconsumed bytes are `buf[start..end]`. Kept apart from
/// [`Io`] so a parsed request can borrow it while the response is written.
struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// Everything a connection writes with.
struct Io<T> {
    /// This connection's read deadline, watched by the core's sweeper.
    deadline: DeadlineGuard,
    core: Rc<Core>,
    t: T,
    /// Response head being written.
    out: Vec<u8>,
    served: u64,
    /// The client's address.
    peer: IpAddr,
}

/// Marks the core busy while a response is in flight (shutdown waits for these).
struct Busy<'a>(&'a Cell<usize>);

impl<'a> Busy<'a> {
    fn new(c: &'a Cell<usize>) -> Self {
        c.set(c.get() + 1);
        Busy(c)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl<T: Transport> Io<T> {
    /// Reads and answers requests until the connection ends. Each head is parsed once: a
    /// partial parse only leads to another read.
    async fn run(&mut self, rx: &mut ReadBuf) -> Result<(), End> {
        let limits = self.core.request_limits();
        let mut need_read = true;
        let mut first_byte_at: Option<Instant> = None;
        loop {
            if need_read {
                self.read_more(rx, &mut first_byte_at).await?;
            }
            let (req, len) = match request::parse(&rx.buf[rx.start..rx.end], &limits) {
                Parsed::Partial => {
                    need_read = true;
                    continue;
                }
                Parsed::Error(status) => {
                    let head = rx.buf[rx.start..rx.end].starts_with(b"HEAD ");
                    self.refuse_request(status, head).await?;
                    return Ok(());
                }
                Parsed::Complete { request, len } => (request, len),
            };
            let received = first_byte_at.take().unwrap_or_else(Instant::now);
            let keep_alive = self.answer(&req, received).await?;
            rx.start += len;
            need_read = rx.start == rx.end;
            if need_read {
                rx.start = 0;
                rx.end = 0;
            }
            if !keep_alive {
                return Ok(());
            }
        }
    }

    /// Reads more bytes of a head, under the idle timeout (nothing buffered yet) or the
    /// header-read timeout (counted from the head's first byte, so a byte-a-second client cannot
    /// hold the connection open).
    async fn read_more(
        &mut self,
        rx: &mut ReadBuf,
        first_byte_at: &mut Option<Instant>,
    ) -> Result<(), End> {
        if rx.end == rx.buf.len() && rx.start > 0 {
            rx.buf.copy_within(rx.start..rx.end, 0);
            rx.end -= rx.start;
            rx.start = 0;
        }
        let now = Instant::now();
        let (idle_timeout, header_read_timeout) = {
            let config = self.core.config();
            (
                config.limits.idle_timeout(),
                config.limits.header_read_timeout(),
            )
        };
        let (deadline, which) = if rx.start == rx.end {
            (now + idle_timeout, Timeout::Idle)
        } else {
            let first = *first_byte_at.get_or_insert(now);
            (first + header_read_timeout, Timeout::Header)
        };
        if deadline <= now {
            return self.timed_out(which).await;
        }
        // No per-read timer: the core's sweeper shuts the read side of a connection whose
        // deadline passed, which ends this read with EOF (see `Core::sweep_deadlines`).
        self.deadline.arm(self.core.deadline_ms(deadline), which);
        let read = self.t.read(&mut rx.buf[rx.end..]).await;
        self.deadline.disarm();
        match read {
            Ok(0) => match self.deadline.fired() {
                Some(which) => self.timed_out(which).await,
                None => Err(End::Client),
            },
            Ok(n) => {
                first_byte_at.get_or_insert_with(Instant::now);
                rx.end += n;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// 408 (only when part of a head arrived) and close.
    async fn timed_out(&mut self, which: Timeout) -> Result<(), End> {
        if matches!(which, Timeout::Header) {
            self.refuse_request(Status::RequestTimeout, false).await?;
        }
        Err(End::Timeout(which))
    }

    /// Sends an error for a request that cannot be answered; the connection closes after it.
    /// `head`: the request looked like a HEAD, so no body (RFC 9110 §9.3.2).
    async fn refuse_request(&mut self, status: Status, head: bool) -> Result<(), End> {
        let date = self.core.date();
        let ctx = HeadContext {
            date: &date,
            cors: false,
            keep_alive: false,
            http10: false,
        };
        let extra: &[u8] = if status == Status::MethodNotAllowed {
            b"Allow: GET, HEAD, OPTIONS\r\n"
        } else {
            b""
        };
        response::write_error(&mut self.out, status, &ctx, head, extra);
        self.core.metrics().response(status);
        self.t.send_head(&self.out, false).await
    }

    /// Answers one request; returns whether the connection stays open.
    async fn answer(&mut self, req: &Request<'_>, received: Instant) -> Result<bool, End> {
        let core = self.core.clone();
        let _busy = Busy::new(&core.busy);
        self.served += 1;
        // One look at the config in effect per request (a reload may swap it at any await).
        let (max_requests, cors) = {
            let config = core.config();
            (config.limits.max_requests_per_connection, config.http.cors)
        };
        let keep_alive = req.keep_alive
            && !core.stopping.get()
            && (max_requests == 0 || self.served < max_requests);
        let date = core.date();
        let ctx = HeadContext {
            date: &date,
            cors: cors && req.has_origin,
            keep_alive,
            http10: req.http10,
        };
        let (status, body) = respond_head(
            &core,
            &mut self.out,
            req,
            &ctx,
            req.method == Method::Head,
            self.peer,
        )
        .await?;
        core.metrics().response(status);
        self.t.send_head(&self.out, body.is_some()).await?;
        let ttfb = received.elapsed();
        if let Some((obj, start, n)) = body {
            let sent = self.t.send_body(&core, &obj, start, n).await;
            if let Err(End::Object(e)) = &sent {
                core.tier_io_error(obj.tier, e);
            }
            sent?;
            core.metrics().body_bytes(obj.tier, n);
        }
        core.latency.borrow_mut().record(ttfb, received.elapsed());
        Ok(keep_alive)
    }
}

/// Plain HTTP: bodies go out with `sendfile`.
pub(crate) struct Plain {
    stream: TcpStream,
    fd: RawFd,
}

impl Transport for Plain {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, End> {
        self.stream.read(buf).await.map_err(|_| End::Client)
    }

    async fn send_head(&mut self, bytes: &[u8], more: bool) -> Result<(), End> {
        send_all(&mut self.stream, self.fd, bytes, more).await
    }

    async fn close(&mut self, _clean: bool) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write).await;
    }

    async fn send_body(
        &mut self,
        core: &Core,
        obj: &Rc<OpenObject>,
        start: u64,
        len: u64,
    ) -> Result<(), End> {
        sendfile_body(&mut self.stream, self.fd, core, obj, start, len).await
    }
}

/// Sends `obj[start..start+len]` with `sendfile`, never blocking the executor: plain HTTP, and
/// HTTPS once the kernel encrypts (kernel TLS).
pub(crate) async fn sendfile_body(
    stream: &mut TcpStream,
    fd: RawFd,
    core: &Core,
    obj: &Rc<OpenObject>,
    start: u64,
    len: u64,
) -> Result<(), End> {
    let end = start + len;
    let mut off = start;
    while off < end {
        let chunk_end = end.min(off + CHUNK);
        core.ensure_resident(obj, off, chunk_end - off)
            .await
            .map_err(End::Object)?;
        while off < chunk_end {
            let want = (chunk_end - off) as usize;
            match sys::sendfile(fd, &*obj.file, &mut off, want) {
                Ok(0) => return Err(End::object_shrank()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    core.metrics().would_block();
                    // Let glommio wait for writability, then hand it one small piece of
                    // the (resident) range. pread, not the mapping: a file truncated under
                    // us gives a short read here instead of SIGBUS.
                    let mut piece = [0u8; WAIT_PIECE as usize];
                    let want = (chunk_end - off).min(WAIT_PIECE) as usize;
                    let got = match std::os::unix::fs::FileExt::read_at(
                        &*obj.file,
                        &mut piece[..want],
                        off,
                    ) {
                        Ok(0) => return Err(End::object_shrank()),
                        Ok(n) => n,
                        Err(e) => return Err(End::Object(e)),
                    };
                    match stream.write(&piece[..got]).await {
                        Ok(n) => off += n as u64,
                        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                            return Err(End::Timeout(Timeout::Send))
                        }
                        Err(_) => {
                            core.metrics().client_abort();
                            return Err(End::Client);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_client_gone(&e) => {
                    core.metrics().client_abort();
                    return Err(End::Client);
                }
                Err(e) => return Err(End::Object(e)),
            }
        }
        glommio::yield_if_needed().await;
    }
    Ok(())
}

/// Renders the response head into `out`; returns the status and the body to send.
async fn respond_head(
    core: &Core,
    out: &mut Vec<u8>,
    req: &Request<'_>,
    ctx: &HeadContext<'_>,
    head: bool,
    peer: IpAddr,
) -> Result<(Status, Option<(Rc<OpenObject>, u64, u64)>), End> {
    if req.method == Method::Options {
        response::write_options(out, req, ctx);
        return Ok((Status::NoContent, None));
    }
    if req.bad_path_range {
        response::write_error(out, Status::BadRequest, ctx, head, b"");
        return Ok((Status::BadRequest, None));
    }
    let Target::Object {
        id,
        path_range,
        query,
    } = req.target
    else {
        response::write_error(out, Status::NotFound, ctx, head, b"");
        return Ok((Status::NotFound, None));
    };
    // The signature first: a refused request never reaches the catalog or a disk, so an
    // unsigned client cannot even learn whether an object exists (403, never 404).
    if let Err(why) = core.shared.access.verify(id, query, peer, core.unix_now()) {
        core.metrics().signed_url_reject(why);
        response::write_error(out, Status::Forbidden, ctx, head, b"");
        return Ok((Status::Forbidden, None));
    }
    let obj = match core.open(id).await {
        Ok(Some(obj)) => obj,
        Ok(None) => {
            response::write_error(out, Status::NotFound, ctx, head, b"");
            return Ok((Status::NotFound, None));
        }
        Err(e) => {
            tracing::warn!(id, "cannot open object: {e}");
            core.metrics().io_error();
            response::write_error(
                out,
                Status::ServiceUnavailable,
                ctx,
                head,
                b"Retry-After: 5\r\n",
            );
            return Ok((Status::ServiceUnavailable, None));
        }
    };
    let plan = response::plan(req, &obj.meta(), path_range);
    response::write_object_head(out, &plan, &obj.meta(), ctx);
    Ok((plan.status, plan.body.map(|(s, n)| (obj, s, n))))
}

pub(crate) fn is_client_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN | libc::ETIMEDOUT)
    )
}

/// Writes all of `bytes`: directly with `send` (with `MSG_MORE` when a body follows, so head
/// and body share packets), through glommio's write path when the socket is full.
pub(crate) async fn send_all(
    stream: &mut TcpStream,
    fd: RawFd,
    bytes: &[u8],
    more: bool,
) -> Result<(), End> {
    let mut sent = match sys::send(fd, bytes, more) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(_) => return Err(End::Client),
    };
    while sent < bytes.len() {
        match stream.write(&bytes[sent..]).await {
            Ok(0) | Err(_) => return Err(End::Client),
            Ok(n) => sent += n,
        }
    }
    Ok(())
}

/// Answers a connection over a cap with 503 and closes it gently (so the client reads the
/// response instead of a reset).
pub(crate) async fn refuse(core: Rc<Core>, mut stream: TcpStream) {
    let fd = stream.as_raw_fd();
    let date = core.date();
    let ctx = HeadContext {
        date: &date,
        cors: false,
        keep_alive: false,
        http10: false,
    };
    let mut out = Vec::with_capacity(256);
    response::write_error(
        &mut out,
        Status::ServiceUnavailable,
        &ctx,
        false,
        b"Retry-After: 1\r\n",
    );
    core.metrics().response(Status::ServiceUnavailable);
    if send_all(&mut stream, fd, &out, false).await.is_err() {
        return;
    }
    let _ = stream.shutdown(std::net::Shutdown::Write).await;
    drain(stream).await;
}

/// After our FIN: how long, and how many bytes, to read and discard before closing, so that
/// unread input does not turn the close into a reset. Bounded in both, so a client that keeps
/// sending cannot keep a refused connection alive.
const DRAIN_TIME: Duration = Duration::from_secs(1);
const DRAIN_BYTES: usize = 64 * 1024;

/// Reads and discards what the client still sends (at most [`DRAIN_BYTES`] for at most
/// [`DRAIN_TIME`]), then drops the socket.
pub(crate) async fn drain(mut stream: TcpStream) {
    let until = Instant::now() + DRAIN_TIME;
    let _ = stream.set_read_timeout(Some(DRAIN_TIME));
    let mut sink = [0u8; 4096];
    let mut total = 0;
    while total < DRAIN_BYTES && Instant::now() < until {
        match stream.read(&mut sink).await {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}
