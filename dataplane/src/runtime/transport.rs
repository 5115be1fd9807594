//! How bytes leave and arrive, whatever the connection: the [`Transport`] trait (plain HTTP,
//! userspace rustls, kernel TLS), the plain one ([`Plain`]), the `sendfile` body path plain HTTP
//! and kernel TLS share ([`sendfile_body`]), writing a head ([`send_all`]) and the bounded drain
//! before a close ([`drain`]).
//!
//! Must never block the executor: the socket is non-blocking, `sendfile` that finds the socket
//! buffer full yields to glommio until the client drains it, and a range that is not in the page
//! cache is read in on the blocking pool before `sendfile` touches it (see `docs/design.md`).

use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::core::Core;
use super::sys;
use crate::catalog::OpenObject;
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
    /// Whether an idle connection over this transport can be parked (`runtime::park`): its
    /// whole state is the socket.
    const PARKABLE: bool = false;
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

/// Plain HTTP: bodies go out with `sendfile`.
pub(crate) struct Plain {
    stream: TcpStream,
    fd: RawFd,
}

impl Plain {
    /// `fd`: the stream's descriptor (non-blocking).
    pub(crate) fn new(stream: TcpStream, fd: RawFd) -> Plain {
        Plain { stream, fd }
    }

    /// The stream back, to park it.
    pub(crate) fn into_stream(self) -> TcpStream {
        self.stream
    }
}

impl Transport for Plain {
    const PARKABLE: bool = true;

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
