//! One client connection's decisions, without I/O: bytes and `now` in, [`Action`]s out.
//!
//! The runtime owns the socket, the clock and the catalog; a [`Connection`] owns everything a
//! connection decides on its own: buffering received bytes and parsing heads from them
//! ([`super::request`]), pipelining (several heads in one read, each parsed once), keep-alive
//! versus close (the request's own semantics, `limits.max_requests_per_connection`, shutdown),
//! the idle timeout (nothing buffered) versus the header-read timeout (counted from a head's
//! first byte), and refusing what cannot be answered (the status, then a close). The runtime
//! loops on [`Connection::poll`] and carries out what it says:
//!
//! - [`Action::Read`]: read into [`Connection::read_buf`] by the deadline, then
//!   [`Connection::received`]; when the deadline passes first, [`Connection::timed_out`].
//! - [`Action::Respond`]: answer the request (the catalog, the response head, the body).
//! - [`Action::Refuse`]: send the bodiless error response; the connection closes after it.
//! - [`Action::Close`]: end the connection.
//!
//! The hand-over of a TLS connection to kernel TLS after its handshake is decided here too
//! ([`handover`]), from what the runtime saw of rustls and the socket.
//!
//! Nothing here allocates after [`Connection::new`] (the read buffer) or reads a clock, so the
//! tests below drive it deterministically, byte by byte if they like.

use std::time::{Duration, Instant};

use super::request::{self, Limits, Parsed, Request};
use super::Status;

/// What a connection's decisions depend on that may change while it is open: the timeouts
/// and the request cap of the config in effect, and whether the process is shutting down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `limits.idle_timeout_ms`: how long a connection may wait with nothing buffered.
    pub idle_timeout: Duration,
    /// `limits.header_read_timeout_ms`: how long a head may take from its first byte.
    pub header_read_timeout: Duration,
    /// `limits.max_requests_per_connection` (0: no cap).
    pub max_requests: u64,
    /// The process is shutting down: responses say `Connection: close`.
    pub stopping: bool,
}

/// Which read timeout a deadline enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadTimeout {
    /// Nothing was buffered: the connection was idle.
    Idle,
    /// Part of a head had arrived.
    Header,
}

/// Why a connection ends without an I/O failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The last response said `Connection: close`, or a refusal was sent.
    Done,
    /// A read timeout passed (after a 408 when it was [`ReadTimeout::Header`]).
    TimedOut(ReadTimeout),
}

/// A request to answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Respond<'a> {
    /// The parsed head (borrows the connection's buffer).
    pub request: Request<'a>,
    /// Whether the connection stays open after the response (what the head must say).
    pub keep_alive: bool,
    /// When the head's first byte arrived (or when it was taken from the buffer, for a
    /// pipelined head that was already there): time to first byte is counted from it.
    pub received: Instant,
}

/// What the runtime does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action<'a> {
    /// Read more bytes into [`Connection::read_buf`]; when none arrive by `deadline`, the read
    /// is ended and [`Connection::timed_out`] told with `timeout`.
    Read {
        /// When the read must have completed.
        deadline: Instant,
        /// What passing the deadline counts as.
        timeout: ReadTimeout,
    },
    /// Answer a request.
    Respond(Respond<'a>),
    /// Send a bodiless error response with `Connection: close`; the connection ends after it.
    Refuse {
        /// The status.
        status: Status,
        /// The request looked like a HEAD: no body either (RFC 9110 §9.3.2).
        head: bool,
    },
    /// End the connection (cleanly: every response sent was complete).
    Close(Close),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading and answering heads.
    Open,
    /// The next action is this refusal, then the close.
    Refuse(Status, bool, Close),
    /// Only [`Action::Close`] is left.
    Closed(Close),
}

/// Bytes a connection's read buffer starts with (see [`Connection::new`]).
pub const INITIAL_BUF: usize = 1024;

/// One connection's request side. See the module docs.
#[derive(Debug)]
pub struct Connection {
    /// Received bytes; the unconsumed ones are `buf[start..end]`. As large as the largest head.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    limits: Limits,
    /// When the first byte of the head being read arrived.
    first_byte_at: Option<Instant>,
    /// The buffered bytes were parsed and are a partial head: only more bytes change that.
    partial: bool,
    /// Requests taken so far.
    served: u64,
    state: State,
}

impl Connection {
    /// A new connection under the head limits in effect at its accept. Its buffer, the only
    /// allocation, starts at [`INITIAL_BUF`] bytes (enough for the usual head) and grows up to
    /// `limits.max_header_bytes` only for a head that does not fit: an idle keep-alive
    /// connection holds 1 KiB, not the largest head allowed (issue #17, idle connections).
    pub fn new(limits: Limits) -> Connection {
        Connection {
            buf: vec![0; INITIAL_BUF.min(limits.max_header_bytes)],
            start: 0,
            end: 0,
            limits,
            first_byte_at: None,
            partial: false,
            served: 0,
            state: State::Open,
        }
    }

    /// A connection that has already served `served` requests (one woken from the parked set:
    /// `limits.max_requests_per_connection` keeps counting), otherwise as [`Connection::new`].
    pub fn resume(limits: Limits, served: u64) -> Connection {
        Connection {
            served,
            ..Connection::new(limits)
        }
    }

    /// What to do next, as of `now`.
    pub fn poll(&mut self, now: Instant, policy: &Policy) -> Action<'_> {
        match self.state {
            State::Open => {}
            State::Refuse(status, head, then) => {
                self.state = State::Closed(then);
                return Action::Refuse { status, head };
            }
            State::Closed(close) => return Action::Close(close),
        }
        if self.start == self.end || self.partial {
            return self.read(now, policy);
        }
        let pending = &self.buf[self.start..self.end];
        match request::parse(pending, &self.limits) {
            Parsed::Partial => {
                self.partial = true;
                read(
                    self.start == self.end,
                    &mut self.first_byte_at,
                    &mut self.state,
                    now,
                    policy,
                )
            }
            Parsed::Error(status) => {
                let head = pending.starts_with(b"HEAD ");
                self.state = State::Closed(Close::Done);
                Action::Refuse { status, head }
            }
            Parsed::Complete { request, len } => {
                let received = self.first_byte_at.take().unwrap_or(now);
                self.served += 1;
                let keep_alive = request.keep_alive
                    && !policy.stopping
                    && (policy.max_requests == 0 || self.served < policy.max_requests);
                // The head stays in the buffer until the next read, which the runtime cannot
                // start while it still borrows the request.
                self.start += len;
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                }
                if !keep_alive {
                    self.state = State::Closed(Close::Done);
                }
                Action::Respond(Respond {
                    request,
                    keep_alive,
                    received,
                })
            }
        }
    }

    /// A read is needed (see [`read`]).
    fn read(&mut self, now: Instant, policy: &Policy) -> Action<'static> {
        read(
            self.start == self.end,
            &mut self.first_byte_at,
            &mut self.state,
            now,
            policy,
        )
    }

    /// Where the next read puts its bytes (after [`Action::Read`]).
    pub fn read_buf(&mut self) -> &mut [u8] {
        if self.end == self.buf.len() && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() && self.buf.len() < self.limits.max_header_bytes {
            // A head longer than the buffer so far: grow, at most to the largest head allowed.
            let len = (self.buf.len() * 4).min(self.limits.max_header_bytes);
            self.buf.resize(len, 0);
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into [`Connection::read_buf`] at `now`.
    pub fn received(&mut self, n: usize, now: Instant) {
        debug_assert!(n <= self.buf.len() - self.end);
        self.end += n;
        self.partial = false;
        self.first_byte_at.get_or_insert(now);
    }

    /// The read's deadline passed: a partial head is answered 408, then the connection closes.
    pub fn timed_out(&mut self, timeout: ReadTimeout) {
        self.state = timed_out(timeout);
    }

    /// Requests taken so far.
    pub fn served(&self) -> u64 {
        self.served
    }
}

/// The read a connection needs: under the idle timeout when nothing is buffered (`empty`), else
/// under the header-read timeout counted from the head's first byte (so a byte-a-second client
/// cannot hold the connection open). A deadline already passed times out at once. Works on the
/// fields it needs only, so a parse may still borrow the buffer.
fn read(
    empty: bool,
    first_byte_at: &mut Option<Instant>,
    state: &mut State,
    now: Instant,
    policy: &Policy,
) -> Action<'static> {
    let (deadline, timeout) = if empty {
        (now + policy.idle_timeout, ReadTimeout::Idle)
    } else {
        let first = *first_byte_at.get_or_insert(now);
        (first + policy.header_read_timeout, ReadTimeout::Header)
    };
    if deadline > now {
        return Action::Read { deadline, timeout };
    }
    match timed_out(timeout) {
        State::Refuse(status, head, then) => {
            *state = State::Closed(then);
            Action::Refuse { status, head }
        }
        other => {
            *state = other;
            Action::Close(Close::TimedOut(timeout))
        }
    }
}

/// What a read timeout leaves: a 408 when part of a head had arrived, then the close.
fn timed_out(timeout: ReadTimeout) -> State {
    match timeout {
        ReadTimeout::Header => State::Refuse(
            Status::RequestTimeout,
            false,
            Close::TimedOut(ReadTimeout::Header),
        ),
        ReadTimeout::Idle => State::Closed(Close::TimedOut(ReadTimeout::Idle)),
    }
}

pub mod handover {
    //! After a TLS handshake: whether the connection is handed to kernel TLS or stays with
    //! rustls in user space, decided from what the runtime saw.

    /// Why a connection that could have gone to kernel TLS stays in user space.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Fallback {
        /// The client had already sent part of a record, or something rustls must answer
        /// (a KeyUpdate, close_notify): the kernel cannot take over mid-record.
        PendingData,
        /// `setsockopt(TCP_ULP, "tls")` failed on this connection (nothing was installed).
        Ulp,
    }

    /// The decision.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Handover {
        /// Kernel TLS is off or unavailable on this host: rustls keeps every connection.
        Userspace,
        /// This connection stays with rustls, for this reason.
        Fallback(Fallback),
        /// Enable the ULP, extract the keys and install them: the kernel takes over.
        Kernel,
    }

    /// What the runtime knows once the handshake's last flight is flushed and the whole
    /// records the client already sent went through rustls.
    /// The default knows nothing: kernel TLS off, no records checked.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct Handshaken {
        /// `https.ktls` allows it and the kernel has the `tls` module (decided at start).
        pub kernel_tls: bool,
        /// Ciphertext after the handshake was whole records only, and rustls took them all.
        pub whole_records: bool,
        /// rustls has records to send (an answer to what the client sent).
        pub wants_write: bool,
        /// The client already sent close_notify (or rustls failed on what it sent).
        pub peer_closed: bool,
        /// rustls knows the negotiated protocol version (the keys can be described).
        pub version_known: bool,
    }

    /// Decides the hand-over. Once keys are extracted there is no way back, so anything that
    /// would need rustls afterwards keeps the connection in user space.
    pub fn decide(h: &Handshaken) -> Handover {
        if !h.kernel_tls {
            Handover::Userspace
        } else if !h.whole_records || h.wants_write || h.peer_closed || !h.version_known {
            Handover::Fallback(Fallback::PendingData)
        } else {
            Handover::Kernel
        }
    }

    /// The length of the TLS record starting `buf` (header included), once its header is there.
    pub fn record_len(buf: &[u8]) -> Option<usize> {
        (buf.len() >= 5).then(|| 5 + usize::from(u16::from_be_bytes([buf[3], buf[4]])))
    }

    /// Whether `pending` is a sequence of whole TLS records (nothing, or records whose last
    /// ends exactly at its end): only then can rustls take everything before the hand-over.
    pub fn whole_records(mut pending: &[u8]) -> bool {
        while !pending.is_empty() {
            match record_len(pending) {
                Some(n) if n <= pending.len() => pending = &pending[n..],
                _ => return false,
            }
        }
        true
    }

    /// Whether `buf` may start a TLS record (content type 20–23, protocol major version 3).
    /// What cannot is handed to rustls at once, to be refused without waiting for more.
    pub fn plausible_record(buf: &[u8]) -> bool {
        buf.first().is_some_and(|t| (20..=23).contains(t)) && buf.get(1).is_none_or(|&v| v == 3)
    }

    /// Whether the first bytes of a connection are an HTTP request line rather than a TLS
    /// record (which starts with content type 0x16, 0x15 or 0x17, never an upper-case letter).
    pub fn looks_like_http(first: &[u8]) -> bool {
        let method_len = first.iter().take_while(|b| b.is_ascii_uppercase()).count();
        (3..=7).contains(&method_len) && first.get(method_len).is_none_or(|&b| b == b' ')
    }
}

#[cfg(test)]
mod tests {
    use super::handover::{self, Fallback, Handover, Handshaken};
    use super::*;
    use crate::http::request::{Method, Target};
    use proptest::prelude::*;

    const LIMITS: Limits = Limits {
        max_header_bytes: 1024,
        max_headers: 16,
        max_uri_bytes: 256,
    };

    const POLICY: Policy = Policy {
        idle_timeout: Duration::from_secs(60),
        header_read_timeout: Duration::from_secs(10),
        max_requests: 0,
        stopping: false,
    };

    /// What a test sees of an action, owned, so runs can be compared.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Seen {
        Read(ReadTimeout, Duration),
        Respond {
            method: Method,
            id: Option<String>,
            keep_alive: bool,
            received: Duration,
        },
        Refuse(Status, bool),
        Close(Close),
    }

    fn seen(action: Action<'_>, t0: Instant) -> Seen {
        match action {
            Action::Read { deadline, timeout } => Seen::Read(timeout, deadline - t0),
            Action::Respond(r) => Seen::Respond {
                method: r.request.method,
                id: match r.request.target {
                    Target::Object { id, .. } => Some(id.to_owned()),
                    _ => None,
                },
                keep_alive: r.keep_alive,
                received: r.received - t0,
            },
            Action::Refuse { status, head } => Seen::Refuse(status, head),
            Action::Close(c) => Seen::Close(c),
        }
    }

    /// Feeds `chunks` in order, all at time `t0` (a chunk larger than the room left is read in
    /// parts, as a socket would), until the connection asks to read with nothing left to give,
    /// or closes. Returns every action but the reads.
    fn drive(conn: &mut Connection, chunks: &[&[u8]], policy: &Policy, t0: Instant) -> Vec<Seen> {
        let mut out = Vec::new();
        let mut next = 0;
        let mut at = 0;
        loop {
            match seen(conn.poll(t0, policy), t0) {
                Seen::Read(..) => {
                    while chunks.get(next).is_some_and(|c| at == c.len()) {
                        next += 1;
                        at = 0;
                    }
                    let Some(chunk) = chunks.get(next) else {
                        return out;
                    };
                    let buf = conn.read_buf();
                    assert!(!buf.is_empty(), "asked to read into a full buffer");
                    let n = buf.len().min(chunk.len() - at);
                    buf[..n].copy_from_slice(&chunk[at..at + n]);
                    at += n;
                    conn.received(n, t0);
                }
                s @ Seen::Close(_) => {
                    out.push(s);
                    return out;
                }
                s => out.push(s),
            }
        }
    }

    fn get(id: &str) -> Seen {
        Seen::Respond {
            method: Method::Get,
            id: Some(id.into()),
            keep_alive: true,
            received: Duration::ZERO,
        }
    }

    fn last(mut s: Seen) -> Seen {
        if let Seen::Respond { keep_alive, .. } = &mut s {
            *keep_alive = false;
        }
        s
    }

    #[test]
    fn starts_idle_and_reads_under_the_idle_timeout() {
        let t0 = Instant::now();
        let mut c = Connection::new(LIMITS);
        assert_eq!(
            c.poll(t0, &POLICY),
            Action::Read {
                deadline: t0 + POLICY.idle_timeout,
                timeout: ReadTimeout::Idle
            }
        );
        assert_eq!(c.read_buf().len(), LIMITS.max_header_bytes);
    }

    #[test]
    fn pipelined_requests_in_one_read_are_answered_in_order() {
        let t0 = Instant::now();
        let mut c = Connection::new(LIMITS);
        let raw = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nHEAD /b HTTP/1.1\r\nHost: h\r\n\r\n\
                    GET /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /d HTTP/1.1\r\n\r\n";
        let seen = drive(&mut c, &[raw], &POLICY, t0);
        let head_b = Seen::Respond {
            method: Method::Head,
            id: Some("b".into()),
            keep_alive: true,
            received: Duration::ZERO,
        };
        assert_eq!(
            seen,
            vec![get("a"), head_b, last(get("c")), Seen::Close(Close::Done)]
        );
        assert_eq!(c.served(), 3);
    }

    #[test]
    fn each_head_is_parsed_once_and_a_partial_one_waits_for_bytes() {
        let t0 = Instant::now();
        let mut c = Connection::new(LIMITS);
        let seen = drive(
            &mut c,
            &[b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HT"],
            &POLICY,
            t0,
        );
        assert_eq!(seen, vec![get("a")]);
        // The start of /b is buffered: the read is under the header timeout, counted from when
        // it was first looked at (not parsed again: nothing new arrived).
        let t1 = t0 + Duration::from_secs(3);
        assert_eq!(
            c.poll(t1, &POLICY),
            Action::Read {
                deadline: t0 + POLICY.header_read_timeout,
                timeout: ReadTimeout::Header
            }
        );
        let tail = b"TP/1.1\r\nHost: h\r\n\r\n";
        c.read_buf()[..tail.len()].copy_from_slice(tail);
        c.received(tail.len(), t1 + Duration::from_secs(1));
        match c.poll(t1 + Duration::from_secs(2), &POLICY) {
            Action::Respond(r) => {
                assert!(matches!(r.request.target, Target::Object { id: "b", .. }));
                // Counted from when the head's first byte was looked at, not the last.
                assert_eq!(r.received, t0);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keep_alive_follows_the_request_and_shutdown() {
        let t0 = Instant::now();
        for (raw, keep) in [
            (&b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"[..], true),
            (
                b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                false,
            ),
            (b"GET /a HTTP/1.0\r\n\r\n", false),
            (b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true),
        ] {
            let mut c = Connection::new(LIMITS);
            let seen = drive(&mut c, &[raw], &POLICY, t0);
            let want = if keep {
                vec![get("a")]
            } else {
                vec![last(get("a")), Seen::Close(Close::Done)]
            };
            assert_eq!(seen, want, "{:?}", String::from_utf8_lossy(raw));
        }
        let stopping = Policy {
            stopping: true,
            ..POLICY
        };
        let mut c = Connection::new(LIMITS);
        let raw = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n";
        assert_eq!(
            drive(&mut c, &[raw], &stopping, t0),
            vec![last(get("a")), Seen::Close(Close::Done)]
        );
    }

    #[test]
    fn max_requests_per_connection_closes_after_the_last_one() {
        let t0 = Instant::now();
        let raw = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n".repeat(5);
        for max in 1..=4u64 {
            let policy = Policy {
                max_requests: max,
                ..POLICY
            };
            let mut c = Connection::new(LIMITS);
            let seen = drive(&mut c, &[&raw], &policy, t0);
            let mut want = vec![get("a"); max as usize - 1];
            want.push(last(get("a")));
            want.push(Seen::Close(Close::Done));
            assert_eq!(seen, want, "max_requests = {max}");
        }
        let mut c = Connection::new(LIMITS);
        assert_eq!(drive(&mut c, &[&raw], &POLICY, t0), vec![get("a"); 5]);
    }

    #[test]
    fn bad_heads_are_refused_then_closed() {
        let t0 = Instant::now();
        for (raw, status, head) in [
            (
                &b"GET /a HTTP/1.1\r\nHost: h\r\nbad header\r\n\r\n"[..],
                Status::BadRequest,
                false,
            ),
            (
                b"POST /a HTTP/1.1\r\nHost: h\r\n\r\n",
                Status::MethodNotAllowed,
                false,
            ),
            (
                b"HEAD /a HTTP/2.0\r\n\r\n",
                Status::HttpVersionNotSupported,
                true,
            ),
        ] {
            let mut c = Connection::new(LIMITS);
            let seen = drive(&mut c, &[raw], &POLICY, t0);
            assert_eq!(
                seen,
                vec![Seen::Refuse(status, head), Seen::Close(Close::Done)],
                "{:?}",
                String::from_utf8_lossy(raw)
            );
            // Nothing more is read or answered.
            assert_eq!(c.poll(t0, &POLICY), Action::Close(Close::Done));
        }
        // A bad head after a good one: the good one is answered first.
        let mut c = Connection::new(LIMITS);
        let raw = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nBREW /b HTTP/1.1\r\n\r\n";
        assert_eq!(
            drive(&mut c, &[raw], &POLICY, t0),
            vec![
                get("a"),
                Seen::Refuse(Status::MethodNotAllowed, false),
                Seen::Close(Close::Done)
            ]
        );
    }

    #[test]
    fn a_head_larger_than_the_limit_is_refused_431() {
        let t0 = Instant::now();
        let mut c = Connection::new(LIMITS);
        let big = format!(
            "GET /a HTTP/1.1\r\nX: {}",
            "v".repeat(LIMITS.max_header_bytes)
        );
        let chunks: Vec<&[u8]> = big.as_bytes().chunks(100).collect();
        let seen = drive(&mut c, &chunks, &POLICY, t0);
        assert_eq!(
            seen,
            vec![
                Seen::Refuse(Status::RequestHeaderFieldsTooLarge, false),
                Seen::Close(Close::Done)
            ]
        );
        // Refused as soon as the buffer was full, not after reading all the client sent.
        assert!(c.read_buf().is_empty());
    }

    #[test]
    fn a_full_buffer_behind_answered_heads_is_compacted() {
        let t0 = Instant::now();
        let mut c = Connection::new(LIMITS);
        let first = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n";
        let next = format!("GET /b HTTP/1.1\r\nHost: h\r\nX: {}", "v".repeat(970));
        let mut fill = first.to_vec();
        fill.extend_from_slice(&next.as_bytes()[..LIMITS.max_header_bytes - first.len()]);
        let rest = &next.as_bytes()[LIMITS.max_header_bytes - first.len()..];
        let seen = drive(&mut c, &[&fill, rest, b"\r\n\r\n"], &POLICY, t0);
        assert_eq!(seen, vec![get("a"), get("b")]);
    }

    #[test]
    fn the_buffer_starts_small_and_grows_only_for_a_long_head() {
        let t0 = Instant::now();
        let limits = Limits {
            max_header_bytes: 16 * INITIAL_BUF,
            ..LIMITS
        };
        let mut c = Connection::new(limits);
        assert_eq!(
            c.read_buf().len(),
            INITIAL_BUF,
            "an idle connection holds 1 KiB"
        );
        // A 10 KiB head, then a short one: both answered, the buffer never past the limit.
        let long = format!(
            "GET /big HTTP/1.1\r\nHost: h\r\nX: {}\r\n\r\n",
            "v".repeat(10 << 10)
        );
        let short = b"GET /small HTTP/1.1\r\nHost: h\r\n\r\n";
        let seen = drive(&mut c, &[long.as_bytes(), short], &POLICY, t0);
        assert_eq!(seen, vec![get("big"), get("small")]);
        assert!(c.buf.len() > INITIAL_BUF && c.buf.len() <= limits.max_header_bytes);
    }

    #[test]
    fn header_timeout_counts_from_the_first_byte_idle_from_the_read() {
        let t0 = Instant::now();
        let mut c = Connection::new(LIMITS);
        assert!(matches!(
            c.poll(t0, &POLICY),
            Action::Read {
                timeout: ReadTimeout::Idle,
                ..
            }
        ));
        let t1 = t0 + Duration::from_secs(30);
        c.read_buf()[..5].copy_from_slice(b"GET /");
        c.received(5, t1);
        // Byte by byte, the deadline does not move.
        for s in 1..10 {
            let now = t1 + Duration::from_secs(s);
            assert_eq!(
                c.poll(now, &POLICY),
                Action::Read {
                    deadline: t1 + POLICY.header_read_timeout,
                    timeout: ReadTimeout::Header
                }
            );
            c.read_buf()[0] = b'a';
            c.received(1, now);
        }
        // Past it: 408, then the close counted as a header timeout.
        let late = t1 + POLICY.header_read_timeout;
        assert_eq!(
            c.poll(late, &POLICY),
            Action::Refuse {
                status: Status::RequestTimeout,
                head: false
            }
        );
        assert_eq!(
            c.poll(late, &POLICY),
            Action::Close(Close::TimedOut(ReadTimeout::Header))
        );
    }

    #[test]
    fn timeouts_reported_by_the_runtime() {
        let t0 = Instant::now();
        // Idle: closed without a response.
        let mut c = Connection::new(LIMITS);
        let _ = c.poll(t0, &POLICY);
        c.timed_out(ReadTimeout::Idle);
        assert_eq!(
            c.poll(t0, &POLICY),
            Action::Close(Close::TimedOut(ReadTimeout::Idle))
        );
        // Header: 408 first.
        let mut c = Connection::new(LIMITS);
        assert_eq!(drive(&mut c, &[b"GET /a"], &POLICY, t0), vec![]);
        c.timed_out(ReadTimeout::Header);
        assert_eq!(
            drive(&mut c, &[], &POLICY, t0),
            vec![
                Seen::Refuse(Status::RequestTimeout, false),
                Seen::Close(Close::TimedOut(ReadTimeout::Header))
            ]
        );
        // After an answered request the connection is idle again, with a fresh deadline.
        let mut c = Connection::new(LIMITS);
        let _ = drive(
            &mut c,
            &[b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"],
            &POLICY,
            t0,
        );
        let later = t0 + Duration::from_secs(100);
        assert_eq!(
            c.poll(later, &POLICY),
            Action::Read {
                deadline: later + POLICY.idle_timeout,
                timeout: ReadTimeout::Idle
            }
        );
        // A zero header timeout times a partial head out at once, as a deadline already passed.
        let zero = Policy {
            header_read_timeout: Duration::ZERO,
            ..POLICY
        };
        let mut c = Connection::new(LIMITS);
        assert_eq!(
            drive(&mut c, &[b"GET /a"], &zero, t0),
            vec![
                Seen::Refuse(Status::RequestTimeout, false),
                Seen::Close(Close::TimedOut(ReadTimeout::Header))
            ]
        );
    }

    #[test]
    fn kernel_tls_handover() {
        let ready = Handshaken {
            kernel_tls: true,
            whole_records: true,
            wants_write: false,
            peer_closed: false,
            version_known: true,
        };
        assert_eq!(handover::decide(&ready), Handover::Kernel);
        assert_eq!(
            handover::decide(&Handshaken {
                kernel_tls: false,
                ..ready
            }),
            Handover::Userspace
        );
        for not_ready in [
            Handshaken {
                whole_records: false,
                ..ready
            },
            Handshaken {
                wants_write: true,
                ..ready
            },
            Handshaken {
                peer_closed: true,
                ..ready
            },
            Handshaken {
                version_known: false,
                ..ready
            },
        ] {
            assert_eq!(
                handover::decide(&not_ready),
                Handover::Fallback(Fallback::PendingData),
                "{not_ready:?}"
            );
            // Kernel TLS off wins over everything.
            assert_eq!(
                handover::decide(&Handshaken {
                    kernel_tls: false,
                    ..not_ready
                }),
                Handover::Userspace
            );
        }
    }

    #[test]
    fn record_framing() {
        use handover::{plausible_record, record_len, whole_records};
        assert_eq!(record_len(&[0x16, 3, 1, 0x02, 0x00]), Some(5 + 512));
        assert_eq!(record_len(&[0x17, 3, 3, 0x40]), None);
        assert!(plausible_record(&[0x16]));
        assert!(plausible_record(&[0x17, 3, 3]));
        assert!(!plausible_record(&[0x16, 2]));
        assert!(!plausible_record(b"\x00\x01\x02\x03"));
        assert!(!plausible_record(&[]));
        let rec = [0x17, 3, 3, 0, 2, 0xaa, 0xbb];
        assert!(whole_records(&[]));
        assert!(whole_records(&rec));
        assert!(whole_records(&[&rec[..], &rec[..]].concat()));
        for cut in 1..rec.len() {
            assert!(!whole_records(&rec[..cut]), "{cut}");
            assert!(!whole_records(&[&rec[..], &rec[..cut]].concat()), "{cut}");
        }
    }

    #[test]
    fn plain_http_is_told_apart_from_tls() {
        use handover::looks_like_http;
        for http in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"HEAD /x HTTP/1.0",
            b"OPTIONS * HTTP/1.1",
            b"POST",
            b"PRI * HTTP/2.0",
        ] {
            assert!(looks_like_http(http), "{:?}", String::from_utf8_lossy(http));
        }
        for not_http in [
            &[0x16, 0x03, 0x01, 0x00, 0xc8][..],
            &[0x15, 0x03, 0x03, 0x00, 0x02][..],
            b"garbage",
            b"G",
            b"GETTINGLONG / HTTP/1.1",
            b"\r\n",
        ] {
            assert!(!looks_like_http(not_http), "{not_http:?}");
        }
    }

    /// One pipelined request of the property tests.
    fn request_strategy() -> impl Strategy<Value = Vec<u8>> {
        (
            prop_oneof![Just("GET"), Just("HEAD"), Just("OPTIONS"), Just("POST")],
            "[a-z0-9]{1,12}",
            prop_oneof![Just("HTTP/1.1"), Just("HTTP/1.0")],
            prop_oneof![
                Just(""),
                Just("Connection: close\r\n"),
                Just("Connection: keep-alive\r\n"),
                Just("Range: bytes=0-99\r\n"),
                Just("Origin: https://x\r\n"),
            ],
        )
            .prop_map(|(method, id, version, extra)| {
                format!("{method} /{id} {version}\r\nHost: h\r\n{extra}\r\n").into_bytes()
            })
    }

    proptest! {
        /// Pipelined requests give the same actions however the bytes are split into reads.
        #[test]
        fn splitting_reads_never_changes_the_actions(
            requests in proptest::collection::vec(request_strategy(), 1..6),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
            max_requests in 0u64..4,
        ) {
            let t0 = Instant::now();
            let policy = Policy { max_requests, ..POLICY };
            let stream = requests.concat();
            prop_assume!(stream.len() <= LIMITS.max_header_bytes);
            let mut whole = Connection::new(LIMITS);
            let want = drive(&mut whole, &[&stream], &policy, t0);
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            points.push(0);
            points.push(stream.len());
            points.sort_unstable();
            let chunks: Vec<&[u8]> = points.windows(2).map(|w| &stream[w[0]..w[1]]).collect();
            let mut split = Connection::new(LIMITS);
            prop_assert_eq!(drive(&mut split, &chunks, &policy, t0), want.clone());
            let bytes: Vec<&[u8]> = stream.chunks(1).collect();
            let mut bytewise = Connection::new(LIMITS);
            prop_assert_eq!(drive(&mut bytewise, &bytes, &policy, t0), want.clone());
            // Every request before the first refusal or close is answered, in order.
            let answered = want.iter().filter(|s| matches!(s, Seen::Respond { .. })).count();
            prop_assert!(answered <= requests.len());
            if max_requests > 0 {
                prop_assert!(answered as u64 <= max_requests);
            }
        }

        /// Whatever arrives, the connection never panics, never asks to read past its buffer
        /// and ends in a close once it refuses.
        #[test]
        fn any_bytes_are_handled(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..10)
        ) {
            let t0 = Instant::now();
            let mut c = Connection::new(LIMITS);
            let mut refused = false;
            for chunk in &chunks {
                match c.poll(t0, &POLICY) {
                    Action::Read { .. } => {}
                    Action::Refuse { .. } => { refused = true; break; }
                    Action::Close(_) => break,
                    Action::Respond(_) => continue,
                }
                let buf = c.read_buf();
                let n = chunk.len().min(buf.len());
                buf[..n].copy_from_slice(&chunk[..n]);
                c.received(n, t0);
            }
            if refused {
                prop_assert_eq!(c.poll(t0, &POLICY), Action::Close(Close::Done));
            }
        }
    }
}
