//! One client connection on one executor: the runtime half of `http::connection`. The
//! [`Connection`] decides (what to read and until when, which request to answer and whether the
//! connection stays open, what to refuse, when to close); this loop carries its actions out over
//! a [`Transport`]: reads under the core's deadline sweeper, the catalog and the response head,
//! the body, the metrics.
//!
//! The loop ([`serve_transport`]) is shared by plain HTTP ([`serve`]), userspace rustls and
//! kernel TLS (`runtime::tls`); only how bytes come in and go out differs.

use std::cell::Cell;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Instant;

use glommio::net::TcpStream;

use super::core::{Core, DeadlineGuard};
use super::park;
use super::shared::Admitted;
use super::sys;
use super::transport::{self, End, Plain, Transport};
use crate::catalog::OpenObject;
use crate::http::connection::{Action, Close, Connection, Policy, ReadTimeout, Respond};
use crate::http::request::{Method, Request, Target};
use crate::http::response::{self, HeadContext};
use crate::http::Status;
use crate::metrics::Timeout;

/// Serves one plain-HTTP connection until it ends or is parked: just accepted (`served` 0) or
/// woken from the parked set (`runtime::park`). `admitted`: its place under the connection caps
/// and in the open-connections gauge, given back when it closes.
pub(crate) async fn serve(
    core: Rc<Core>,
    stream: TcpStream,
    peer: IpAddr,
    admitted: Admitted,
    served: u64,
) {
    let fd = stream.as_raw_fd();
    if sys::set_nonblocking(fd).is_err() {
        return;
    }
    let _ = stream.set_write_timeout(Some(core.config().limits.send_timeout()));
    let deadline = core.register_deadline(fd);
    let plain = Plain::new(stream, fd);
    // `admitted` goes with the connection: into the parked set, or dropped when it closes.
    if let Some(idle) = serve_transport(core.clone(), plain, deadline, peer, served).await {
        let stream = idle.transport.into_stream();
        park::park(
            &core,
            stream,
            peer,
            admitted,
            idle.served,
            idle.idle_until_ms,
        );
    }
}

/// A connection given up for parking by [`serve_transport`].
pub(crate) struct Idle<T> {
    pub(crate) transport: T,
    /// Requests served on it so far.
    pub(crate) served: u64,
    /// When its idle timeout ends (core-local ms).
    pub(crate) idle_until_ms: u64,
}

/// The request loop over any transport, until the connection ends (`None`) or, for a
/// transport that can park ([`Transport::PARKABLE`]), until it has been idle for
/// `io.park_idle_after_ms` (`Some`, nothing buffered: the caller parks it). `peer`: the client's
/// address, which signed URLs are checked against. `served`: requests already served on it.
pub(crate) async fn serve_transport<T: Transport>(
    core: Rc<Core>,
    transport: T,
    deadline: DeadlineGuard,
    peer: IpAddr,
    served: u64,
) -> Option<Idle<T>> {
    let mut conn = Connection::resume(core.request_limits(), served);
    let mut io = Io {
        deadline,
        core,
        t: transport,
        out: Vec::new(),
        peer,
    };
    let result = io.run(&mut conn).await;
    let clean = !matches!(result, Err(End::Object(_) | End::Timeout(Timeout::Send)));
    match result {
        Ok(Ended::Park(idle_until_ms)) => {
            return Some(Idle {
                transport: io.t,
                served: conn.served(),
                idle_until_ms,
            })
        }
        Ok(Ended::Done) | Err(End::Client) => {}
        Err(End::Timeout(t)) => io.core.metrics().timeout(t),
        Err(End::Object(e)) => {
            io.core.metrics().io_error();
            tracing::debug!("object read failed mid-response: {e}");
        }
    }
    io.t.close(clean).await;
    None
}

/// How [`Io::run`] ended without an error.
enum Ended {
    /// The connection is done (closed by the protocol, or by the client between requests).
    Done,
    /// Idle long enough to be parked; its idle timeout ends at this core-local ms.
    Park(u64),
}

/// Everything a connection writes with. Kept apart from the [`Connection`] so a parsed request
/// can borrow its buffer while the response is written.
struct Io<T> {
    /// This connection's read deadline, watched by the core's sweeper.
    deadline: DeadlineGuard,
    core: Rc<Core>,
    t: T,
    /// Response head being written; empty (no allocation) between requests.
    out: Vec<u8>,
    /// The client's address.
    peer: IpAddr,
}

/// Capacity of a response head buffer (a longer head grows it).
const HEAD_BUF: usize = 512;
/// Head buffers a core keeps for reuse; more are freed when given back.
const HEAD_BUF_POOL: usize = 256;

thread_local! {
    /// This core's spare response head buffers (one executor per thread): a connection holds
    /// one only while it answers, so an idle keep-alive connection holds none (issue #17).
    static HEAD_BUFS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A response head buffer from this core's pool, or a new one.
fn head_buf_take() -> Vec<u8> {
    HEAD_BUFS
        .with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(HEAD_BUF))
}

/// Gives a head buffer back to this core's pool (freed if the pool is full or it grew large).
fn head_buf_give(mut buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > 8 * HEAD_BUF {
        return;
    }
    buf.clear();
    HEAD_BUFS.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < HEAD_BUF_POOL {
            p.push(buf);
        }
    });
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

/// The metrics label of a read timeout.
fn timeout_metric(t: ReadTimeout) -> Timeout {
    match t {
        ReadTimeout::Idle => Timeout::Idle,
        ReadTimeout::Header => Timeout::Header,
    }
}

impl<T: Transport> Io<T> {
    /// Carries out the connection's actions until it ends or is to be parked.
    async fn run(&mut self, conn: &mut Connection) -> Result<Ended, End> {
        // Parking asked for by the sweeper ends an idle read (nothing buffered) of a transport
        // that can park; `None`: this connection never parks.
        let park_after = match self.core.config().io.park_idle_after() {
            Some(after) if T::PARKABLE && park::available() => Some(after),
            _ => None,
        };
        loop {
            // One look at the config in effect per step (a reload may swap it at any await).
            let (policy, cors) = {
                let config = self.core.config();
                let l = &config.limits;
                let policy = Policy {
                    idle_timeout: l.idle_timeout(),
                    header_read_timeout: l.header_read_timeout(),
                    max_requests: l.max_requests_per_connection,
                    stopping: self.core.stopping.get(),
                };
                (policy, config.http.cors)
            };
            match conn.poll(Instant::now(), &policy) {
                Action::Read { deadline, timeout } => {
                    // No per-read timer: the core's sweeper shuts the read side of a connection
                    // whose deadline passed, which ends this read with EOF (see
                    // `Core::sweep_deadlines`).
                    self.deadline
                        .arm(self.core.deadline_ms(deadline), timeout_metric(timeout));
                    let read = match park_after {
                        Some(after) if timeout == ReadTimeout::Idle => {
                            // An idle read's deadline is its start plus the idle timeout: no
                            // second clock read on the request path.
                            let idle_since = deadline - policy.idle_timeout;
                            self.deadline
                                .arm_park(self.core.deadline_ms(idle_since + after));
                            // The read first: a request that is there wins over parking, and a
                            // read given up before `recv` succeeded has consumed nothing.
                            let (t, deadline) = (&mut self.t, &self.deadline);
                            let buf = conn.read_buf();
                            let read = async { Some(t.read(buf).await) };
                            let park = async {
                                deadline.parked().await;
                                None
                            };
                            futures_lite::future::or(read, park).await
                        }
                        _ => Some(self.t.read(conn.read_buf()).await),
                    };
                    let read = match read {
                        Some(read) => read,
                        // The idle timeout fired after parking was asked for: it wins.
                        None if self.deadline.fired().is_some() => Ok(0),
                        None => {
                            let idle_until = self.deadline.at_ms();
                            self.deadline.disarm();
                            return Ok(Ended::Park(idle_until));
                        }
                    };
                    self.deadline.disarm();
                    match read? {
                        0 => match self.deadline.fired() {
                            Some(Timeout::Idle) => conn.timed_out(ReadTimeout::Idle),
                            Some(_) => conn.timed_out(ReadTimeout::Header),
                            None => return Err(End::Client),
                        },
                        n => conn.received(n, Instant::now()),
                    }
                }
                // Boxed: an async fn's state is as large as its largest await point, and an
                // answer's (catalog open, pull, body) is kilobytes; unboxed, every idle
                // connection waiting at the read above would hold that much (issue #17).
                // The head buffer too is held only while a request is answered: taken from
                // this core's pool and given back after.
                Action::Respond(respond) => {
                    self.out = head_buf_take();
                    let answered = Box::pin(self.answer(&respond, cors)).await;
                    head_buf_give(std::mem::take(&mut self.out));
                    answered?
                }
                Action::Refuse { status, head } => {
                    self.out = head_buf_take();
                    let refused = Box::pin(self.refuse_request(status, head)).await;
                    head_buf_give(std::mem::take(&mut self.out));
                    refused?
                }
                Action::Close(Close::Done) => return Ok(Ended::Done),
                Action::Close(Close::TimedOut(t)) => return Err(End::Timeout(timeout_metric(t))),
            }
        }
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

    /// Answers one request, with the keep-alive the connection decided.
    async fn answer(&mut self, respond: &Respond<'_>, cors: bool) -> Result<(), End> {
        let core = self.core.clone();
        let _busy = Busy::new(&core.busy);
        let req = &respond.request;
        let received = respond.received;
        let date = core.date();
        let ctx = HeadContext {
            date: &date,
            cors: cors && req.has_origin,
            keep_alive: respond.keep_alive,
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
        let more = match (&body, &core.shared.pull) {
            (Some(Body::Pull(b)), Some(pull)) => b.follows_at_once(pull),
            (b, _) => b.is_some(),
        };
        self.t.send_head(&self.out, more).await?;
        let ttfb = received.elapsed();
        match body {
            Some(Body::Hit(obj, start, n)) => {
                let sent = self.t.send_body(&core, &obj, start, n).await;
                if let Err(End::Object(e)) = &sent {
                    core.tier_io_error(obj.tier, e);
                }
                sent?;
                core.metrics().body_bytes(obj.tier, n);
            }
            Some(Body::Pull(body)) => {
                // A pull's failure is the upstream's, not the tier's: no tier check.
                if let Some(pull) = core.shared.pull.clone() {
                    body.send(&core, &pull, &mut self.t).await?;
                    core.metrics().body_bytes(pull.tier(), body.len());
                }
            }
            None => {}
        }
        core.latency.borrow_mut().record(ttfb, received.elapsed());
        Ok(())
    }
}

/// What follows a response head.
enum Body {
    /// `obj[start..start+len]` of an object in the catalog.
    Hit(Rc<OpenObject>, u64, u64),
    /// A range of an object being pulled from the upstream.
    Pull(super::pull::PullBody),
}

/// Renders the response head into `out`; returns the status and the body to send.
async fn respond_head(
    core: &Core,
    out: &mut Vec<u8>,
    req: &Request<'_>,
    ctx: &HeadContext<'_>,
    head: bool,
    peer: IpAddr,
) -> Result<(Status, Option<Body>), End> {
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
        token,
    } = req.target
    else {
        response::write_error(out, Status::NotFound, ctx, head, b"");
        return Ok((Status::NotFound, None));
    };
    // The signature first: a refused request never reaches the catalog or a disk, so an
    // unsigned client cannot even learn whether an object exists (403, never 404).
    if let Err(why) = core
        .shared
        .access
        .verify(id, query, token, peer, core.unix_now())
    {
        core.metrics().signed_url_reject(why);
        response::write_error(out, Status::Forbidden, ctx, head, b"");
        return Ok((Status::Forbidden, None));
    }
    // Demand counts every authorized request, held or not (placement wants both).
    core.shared.metrics.demand().core(core.index).record(id);
    let pull = core.shared.pull.clone();
    if let Some(pull) = &pull {
        pull.record(id);
    }
    let mut opened = core.open(id).await;
    if let (Ok(None), Some(pull)) = (&opened, &pull) {
        // A miss with `[upstream]`: pull it (or join the pull under way).
        match super::pull::respond_miss(core, pull, out, req, ctx, head, id, path_range).await {
            super::pull::Miss::Answered(status, body) => {
                return Ok((status, body.map(Body::Pull)));
            }
            super::pull::Miss::InCatalog => opened = core.open(id).await,
        }
    }
    let obj = match opened {
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
    if let Some(pull) = &pull {
        pull.metrics
            .hits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if obj.tier == pull.tier() {
            pull.touch(id);
        }
        super::pull::add_header(out, b"Cache-Status: edgeplane; hit\r\n");
    }
    Ok((plan.status, plan.body.map(|(s, n)| Body::Hit(obj, s, n))))
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
    if transport::send_all(&mut stream, fd, &out, false)
        .await
        .is_err()
    {
        return;
    }
    let _ = stream.shutdown(std::net::Shutdown::Write).await;
    transport::drain(stream).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an async fn of five arguments returns.
    fn future_size<A, B, C, D, E, F: std::future::Future>(
        _: impl FnOnce(A, B, C, D, E) -> F,
    ) -> usize {
        std::mem::size_of::<F>()
    }

    /// An idle keep-alive connection holds its task, whose size is its future's largest await
    /// point: the request-handling branch is boxed so that the read it waits at stays small
    /// (issue #17; unboxed, a debug build's plain connection future was 5.5 KiB).
    #[test]
    fn an_idle_connection_future_is_small() {
        let plain = future_size(serve);
        eprintln!("conn::serve future: {plain} bytes");
        assert!(plain <= 2048, "conn::serve future is {plain} bytes");
    }
}
