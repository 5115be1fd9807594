//! HTTPS connections: the rustls handshake driven over the glommio socket, the hand-over to
//! kernel TLS where `http::connection::handover` decides it (then `runtime::ktls::KernelTls`
//! carries the connection), else the shared request loop (`conn::serve_transport`) with a
//! [`Tls`] transport that reads bodies with `pread` and encrypts them with rustls.
//!
//! Never blocks the executor: socket reads and writes are glommio's (or non-blocking `sendmsg`
//! that falls back to glommio when the socket is full), and bodies follow the same residency rule
//! as `sendfile` (cold ranges are read in on the blocking pool first). A handshake must finish
//! within `limits.header_read_timeout_ms` of the accept; anything that is not TLS, or not TLS we
//! accept, closes the connection cleanly (an alert when rustls has one, then FIN) without
//! affecting other connections.

use std::cell::RefCell;
use std::io::{self, IoSlice, Read as _, Write as _};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use rustls::{ServerConfig, ServerConnection};

use super::core::{Core, DeadlineGuard};
use super::ktls::{self, KernelTls};
use super::transport::{self, End, Transport, CHUNK, WAIT_PIECE};
use super::{conn, sys};
use crate::catalog::OpenObject;
use crate::http::connection::handover::{
    self, looks_like_http, plausible_record, record_len, Fallback, Handover, Handshaken,
};
use crate::metrics::{HandshakeFailure, KtlsClose, KtlsFallback, Timeout, TlsMode};

/// Ciphertext buffered from the socket: room for one whole record of the largest size a peer
/// may send (16 KiB of plaintext + 2 KiB of expansion + the header), since handshake records
/// are handed to rustls whole.
const READ_BUF: usize = 16_384 + 2048 + 5;
/// Plaintext read from a file and encrypted per round (four full 16 KiB records), then flushed.
const BODY_BATCH: usize = 64 * 1024;

thread_local! {
    /// The executor's body staging buffer. Used only between a `pread` and handing the bytes
    /// to rustls, with no await in between, so one per executor serves every connection.
    static BODY_SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; BODY_BATCH]);
}

/// Serves one accepted HTTPS connection: handshake, then requests until it ends.
pub(crate) async fn serve(
    core: Rc<Core>,
    stream: TcpStream,
    config: Arc<ServerConfig>,
    peer: std::net::IpAddr,
) {
    let fd = stream.as_raw_fd();
    if sys::set_nonblocking(fd).is_err() {
        return;
    }
    let _ = stream.set_write_timeout(Some(core.config().limits.send_timeout()));
    let deadline = core.register_deadline(fd);
    let conn = match ServerConnection::new(config) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("cannot start a TLS session: {e}");
            return;
        }
    };
    let mut tls = Tls {
        stream,
        fd,
        conn,
        rx: vec![0; READ_BUF].into_boxed_slice(),
        rx_start: 0,
        rx_end: 0,
        received: 0,
    };
    match tls.handshake(&core, &deadline).await {
        Ok(()) => {
            let kernel_tls = core.shared.https.as_ref().is_some_and(|h| h.kernel);
            tls = match tls.into_kernel(&core, kernel_tls) {
                Handoff::Kernel(k) => {
                    core.metrics().tls_connection(TlsMode::Kernel);
                    conn::serve_transport(core, k, deadline, peer, 0).await;
                    return;
                }
                Handoff::Userspace(tls, None) => *tls,
                Handoff::Userspace(tls, Some(why)) => {
                    core.metrics().ktls_fallback(why);
                    *tls
                }
                Handoff::Failed(stream) => {
                    core.metrics().ktls_closed(KtlsClose::InstallFailed);
                    drop(deadline);
                    let _ = stream.shutdown(std::net::Shutdown::Both).await;
                    return;
                }
            };
            core.metrics().tls_connection(TlsMode::Userspace);
            // Body writes are flushed after every batch, so rustls never holds more than one.
            tls.conn.set_buffer_limit(None);
            conn::serve_transport(core, tls, deadline, peer, 0).await;
        }
        Err(why) => {
            core.metrics().tls_handshake_failure(why);
            if why == HandshakeFailure::Timeout {
                core.metrics().timeout(Timeout::Header);
            }
            drop(deadline);
            tls.abandon().await;
        }
    }
}

/// Closes a connection over a cap on the HTTPS listener: no response (a 503 would cost a
/// handshake, which is what the cap is there to refuse), just a clean close.
pub(crate) async fn refuse(stream: TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write).await;
    transport::drain(stream).await;
}

/// A TLS connection over a glommio socket, driven by hand: rustls holds the session state and
/// the records waiting to be sent; the socket I/O is ours.
pub(crate) struct Tls {
    stream: TcpStream,
    fd: RawFd,
    conn: ServerConnection,
    /// Ciphertext read and not yet taken by rustls: `rx[rx_start..rx_end]`.
    rx: Box<[u8]>,
    rx_start: usize,
    rx_end: usize,
    /// Bytes received so far (only the first matters: is it TLS at all?).
    received: u64,
}

/// What reading ciphertext produced.
enum Fill {
    /// rustls took new bytes.
    Data,
    /// The client closed its side, or the deadline sweeper shut ours.
    Eof,
    /// The first bytes on the connection are an HTTP request line, not TLS.
    PlainHttp,
}

impl Tls {
    /// Runs the handshake to completion within `header_read_timeout_ms` of now (the accept).
    async fn handshake(
        &mut self,
        core: &Core,
        deadline: &DeadlineGuard,
    ) -> Result<(), HandshakeFailure> {
        let at = Instant::now() + core.config().limits.header_read_timeout();
        deadline.arm(core.deadline_ms(at), Timeout::Header);
        let result = self.handshake_steps(deadline).await;
        deadline.disarm();
        result
    }

    async fn handshake_steps(&mut self, deadline: &DeadlineGuard) -> Result<(), HandshakeFailure> {
        while self.conn.is_handshaking() {
            if self.conn.wants_write() {
                self.flush(false)
                    .await
                    .map_err(|_| HandshakeFailure::Closed)?;
                continue;
            }
            match self.fill().await {
                Ok(Fill::Data) => {}
                Ok(Fill::Eof) if deadline.fired().is_some() => {
                    return Err(HandshakeFailure::Timeout)
                }
                Ok(Fill::Eof) => return Err(HandshakeFailure::Closed),
                Ok(Fill::PlainHttp) => {
                    self.answer_plain_http().await;
                    return Err(HandshakeFailure::PlainHttp);
                }
                Err(FillError::Tls(e)) => {
                    tracing::debug!("TLS handshake failed: {e}");
                    return Err(HandshakeFailure::Protocol);
                }
                Err(FillError::Socket) => return Err(HandshakeFailure::Closed),
            }
        }
        // The last flight (TLS 1.2 Finished, TLS 1.3 session tickets).
        self.flush(false)
            .await
            .map_err(|_| HandshakeFailure::Closed)?;
        Ok(())
    }

    /// Reads ciphertext (unless some is still waiting) and lets rustls process it. While the
    /// handshake runs, rustls gets one whole record at a time and nothing after the record that
    /// completes it: what the client sent after its Finished stays in `rx`, where the hand-over
    /// to the kernel can see it (rustls's own buffer cannot be inspected).
    async fn fill(&mut self) -> Result<Fill, FillError> {
        loop {
            let pending = &self.rx[self.rx_start..self.rx_end];
            let feed = if self.conn.is_handshaking() && plausible_record(pending) {
                match record_len(pending) {
                    Some(n) if n <= pending.len() => n,
                    // Larger than any valid record: let rustls refuse it.
                    Some(n) if n > self.rx.len() => pending.len(),
                    _ => 0,
                }
            } else {
                pending.len()
            };
            if feed > 0 {
                return self.feed(feed).map(|()| Fill::Data);
            }
            // Not a whole record buffered: read more, after what is there.
            if self.rx_start > 0 {
                self.rx.copy_within(self.rx_start..self.rx_end, 0);
                self.rx_end -= self.rx_start;
                self.rx_start = 0;
            }
            let n = self
                .stream
                .read(&mut self.rx[self.rx_end..])
                .await
                .map_err(|_| FillError::Socket)?;
            if n == 0 {
                return Ok(Fill::Eof);
            }
            if self.received == 0 && looks_like_http(&self.rx[..n]) {
                return Ok(Fill::PlainHttp);
            }
            self.received += n as u64;
            self.rx_end += n;
        }
    }

    /// Hands the next `len` buffered bytes (or what rustls takes of them) to rustls.
    fn feed(&mut self, len: usize) -> Result<(), FillError> {
        let mut pending = &self.rx[self.rx_start..self.rx_start + len];
        let taken = self
            .conn
            .read_tls(&mut pending)
            .map_err(|e| FillError::Tls(e.to_string()))?;
        self.rx_start += taken;
        if let Err(e) = self.conn.process_new_packets() {
            // rustls queued an alert saying why; send it if the socket takes it now.
            self.flush_now();
            return Err(FillError::Tls(e.to_string()));
        }
        Ok(())
    }

    /// After the handshake (flushed): feeds rustls the whole records the client already sent
    /// (their plaintext is kept for the request loop) and reports what the hand-over is decided
    /// on. A partial record leaves everything buffered for rustls to take in user space.
    fn settle(&mut self) -> Handshaken {
        let mut fed = handover::whole_records(&self.rx[self.rx_start..self.rx_end]);
        while fed && self.rx_start < self.rx_end {
            match handover::record_len(&self.rx[self.rx_start..self.rx_end]) {
                Some(n) => fed = self.feed(n).is_ok(),
                None => fed = false,
            }
        }
        if !fed {
            return Handshaken {
                kernel_tls: true,
                ..Handshaken::default()
            };
        }
        let peer_closed = self
            .conn
            .process_new_packets()
            .map(|state| state.peer_has_closed())
            .unwrap_or(true);
        Handshaken {
            kernel_tls: true,
            whole_records: true,
            wants_write: self.conn.wants_write(),
            peer_closed,
            version_known: self.conn.protocol_version().is_some(),
        }
    }

    /// After the handshake (flushed): moves the connection to kernel TLS when
    /// `handover::decide` says so (`kernel_tls`: this host hands connections over at all).
    /// Once keys are extracted there is no way back: a failure to install them closes the
    /// connection.
    fn into_kernel(mut self, core: &Core, kernel_tls: bool) -> Handoff {
        let seen = if kernel_tls {
            self.settle()
        } else {
            Handshaken::default()
        };
        match handover::decide(&seen) {
            Handover::Kernel => {}
            Handover::Userspace => return Handoff::Userspace(Box::new(self), None),
            Handover::Fallback(why) => {
                return Handoff::Userspace(Box::new(self), Some(fallback_metric(why)))
            }
        }
        let Some(version) = self.conn.protocol_version() else {
            return Handoff::Userspace(Box::new(self), Some(KtlsFallback::PendingData));
        };
        if let Err(e) = ktls::enable_ulp(self.fd) {
            // Nothing is installed: the socket is still plain TCP, rustls carries on.
            tracing::debug!("TCP_ULP tls failed on a connection: {e}");
            return Handoff::Userspace(Box::new(self), Some(fallback_metric(Fallback::Ulp)));
        }
        let mut early = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = self.conn.reader().read(&mut buf) {
            early.extend_from_slice(&buf[..n]);
        }
        let installed = self
            .conn
            .dangerous_extract_secrets()
            .map_err(|e| e.to_string())
            .and_then(|secrets| {
                let tx = ktls::CryptoInfo::from_rustls(version, &secrets.tx)
                    .map_err(|e| e.to_string())?;
                let rx = ktls::CryptoInfo::from_rustls(version, &secrets.rx)
                    .map_err(|e| e.to_string())?;
                ktls::set_crypto(self.fd, ktls::Direction::Tx, &tx)
                    .map_err(|e| format!("TLS_TX: {e}"))?;
                ktls::set_crypto(self.fd, ktls::Direction::Rx, &rx)
                    .map_err(|e| format!("TLS_RX: {e}"))
            });
        match installed {
            Ok(()) => Handoff::Kernel(KernelTls::new(
                self.stream,
                self.fd,
                early,
                core.shared.metrics.clone(),
                core.index,
            )),
            Err(e) => {
                tracing::warn!("cannot hand a TLS connection to the kernel, closing it: {e}");
                Handoff::Failed(self.stream)
            }
        }
    }

    /// Sends everything rustls has queued, waiting for the socket when it is full.
    async fn flush(&mut self, more: bool) -> Result<(), End> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut SocketWriter { fd: self.fd, more }) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.send_piece().await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(End::Client),
            }
        }
        Ok(())
    }

    /// The socket is full: take one small piece of the queued records and let glommio wait for
    /// writability and send it (the same trick as the `sendfile` path).
    async fn send_piece(&mut self) -> Result<(), End> {
        let mut piece = PieceWriter {
            buf: [0; WAIT_PIECE as usize],
            len: 0,
        };
        let _ = self.conn.write_tls(&mut piece);
        let mut sent = 0;
        while sent < piece.len {
            match self.stream.write(&piece.buf[sent..piece.len]).await {
                Ok(0) => return Err(End::Client),
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    return Err(End::Timeout(Timeout::Send))
                }
                Err(_) => return Err(End::Client),
            }
        }
        Ok(())
    }

    /// Sends what the socket takes right now and drops the rest: for alerts and close_notify,
    /// which must never wait on a client that does not read.
    fn flush_now(&mut self) {
        while self.conn.wants_write() {
            let sent = self.conn.write_tls(&mut SocketWriter {
                fd: self.fd,
                more: false,
            });
            if !matches!(sent, Ok(n) if n > 0) {
                break;
            }
        }
    }

    /// Plain HTTP on the HTTPS port: say so, as a plain-text 400, and close.
    async fn answer_plain_http(&mut self) {
        const BODY: &str = "plain HTTP request sent to the HTTPS port\n";
        let response = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{BODY}",
            BODY.len()
        );
        let _ = sys::send(self.fd, response.as_bytes(), false);
    }

    /// After a failed handshake: send any queued alert, FIN, discard input for a moment, close.
    async fn abandon(mut self) {
        self.flush_now();
        let _ = self.stream.shutdown(std::net::Shutdown::Write).await;
        transport::drain(self.stream).await;
    }
}

/// The metrics label of a fallback.
fn fallback_metric(why: Fallback) -> KtlsFallback {
    match why {
        Fallback::PendingData => KtlsFallback::PendingData,
        Fallback::Ulp => KtlsFallback::Ulp,
    }
}

/// What [`Tls::into_kernel`] did.
enum Handoff {
    /// The kernel encrypts and decrypts from now on.
    Kernel(KernelTls),
    /// The connection stays with rustls: kernel TLS is off here (`None`), or for this reason.
    Userspace(Box<Tls>, Option<KtlsFallback>),
    /// Keys were extracted but could not be installed: the connection must be closed.
    Failed(TcpStream),
}

enum FillError {
    /// The socket failed (reset, ...).
    Socket,
    /// rustls refused what arrived.
    Tls(String),
}

impl Transport for Tls {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, End> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The stream ended without close_notify: the same as any end of stream.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(_) => return Err(End::Client),
            }
            match self.fill().await {
                Ok(Fill::Data | Fill::PlainHttp) => {}
                Ok(Fill::Eof) => return Ok(0),
                Err(FillError::Tls(e)) => {
                    tracing::debug!("TLS error from the client: {e}");
                    return Err(End::Client);
                }
                Err(FillError::Socket) => return Err(End::Client),
            }
            // A TLS 1.3 KeyUpdate asks for one back.
            if self.conn.wants_write() {
                self.flush(false).await?;
            }
        }
    }

    async fn send_head(&mut self, bytes: &[u8], more: bool) -> Result<(), End> {
        self.conn
            .writer()
            .write_all(bytes)
            .map_err(|_| End::Client)?;
        if more {
            // Encrypted now, sent with the first body records (one write, shared packets).
            return Ok(());
        }
        self.flush(false).await
    }

    async fn send_body(
        &mut self,
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
                let want = (chunk_end - off).min(BODY_BATCH as u64) as usize;
                // pread (not the mapping: a file truncated under us gives a short read, not
                // SIGBUS) of resident pages, straight into rustls; no await in between.
                let got = BODY_SCRATCH.with(|scratch| {
                    let mut scratch = scratch.borrow_mut();
                    let n = match obj.file.read_at(&mut scratch[..want], off) {
                        Ok(0) => return Err(End::object_shrank()),
                        Ok(n) => n,
                        Err(e) => return Err(End::Object(e)),
                    };
                    self.conn
                        .writer()
                        .write_all(&scratch[..n])
                        .map_err(|_| End::Client)?;
                    Ok(n)
                })?;
                off += got as u64;
                if let Err(e) = self.flush(false).await {
                    if matches!(e, End::Client) {
                        core.metrics().client_abort();
                    }
                    return Err(e);
                }
            }
            glommio::yield_if_needed().await;
        }
        Ok(())
    }

    async fn close(&mut self, clean: bool) {
        if clean {
            self.conn.send_close_notify();
            self.flush_now();
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Write).await;
    }
}

/// Hands queued records straight to the socket without waiting (`sendmsg`, `MSG_DONTWAIT`).
struct SocketWriter {
    fd: RawFd,
    more: bool,
}

impl io::Write for SocketWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        sys::send(self.fd, buf, self.more)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        sys::send_vectored(self.fd, bufs, self.more)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Takes at most one piece of queued records into a local buffer.
struct PieceWriter {
    buf: [u8; WAIT_PIECE as usize],
    len: usize,
}

impl io::Write for PieceWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&data[..n]);
        self.len += n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
