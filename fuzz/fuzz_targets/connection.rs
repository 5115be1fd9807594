//! The sans-IO connection (`http::connection`) under random byte streams, read sizes and clock
//! jumps, driven as the runtime drives it. Nothing panics; after a close nothing but the close
//! comes out (no response after close, a refusal is followed by the close); a response that says
//! `Connection: close` is the last; `max_requests_per_connection` is never exceeded; a read is
//! never given a deadline past the longer of the two timeouts; every refusal is a 4xx or 5xx.
//!
//! The input is a script: each step's first byte says what happens (some bytes arrive, the
//! clock jumps, or the pending read's deadline passes), the bytes after it are the client's.
#![no_main]

use std::time::{Duration, Instant};

use edgeplane_dataplane::http::connection::{Action, Close, Connection, Policy};
use edgeplane_dataplane::http::request::Limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&setup, mut script)) = data.split_first() else {
        return;
    };
    let policy = Policy {
        idle_timeout: Duration::from_millis(5000),
        header_read_timeout: Duration::from_millis(1000),
        max_requests: u64::from(setup & 3),
        stopping: setup & 4 != 0,
    };
    let limits = Limits {
        max_header_bytes: 256 + usize::from(setup >> 3) * 16,
        max_headers: 8,
        max_uri_bytes: 128,
    };
    let mut conn = Connection::new(limits);
    let mut now = Instant::now();
    let mut closed: Option<Close> = None;
    let mut responses = 0u64;
    let mut pending_read: Option<Instant>;
    // Every step either consumes input or ends the loop; the bound is for safety only.
    for _ in 0..10_000 {
        let action = conn.poll(now, &policy);
        if let Some(c) = closed {
            assert_eq!(action, Action::Close(c), "something after the close");
            // Once closed it stays closed; the runtime stops polling here.
            assert_eq!(conn.poll(now, &policy), Action::Close(c));
            return;
        }
        match action {
            Action::Respond(r) => {
                responses += 1;
                if policy.max_requests > 0 {
                    assert!(responses <= policy.max_requests, "over the request cap");
                    if responses == policy.max_requests {
                        assert!(!r.keep_alive, "the last allowed request must close");
                    }
                }
                if policy.stopping {
                    assert!(!r.keep_alive, "keep-alive while stopping");
                }
                assert!(r.received <= now);
                if !r.keep_alive {
                    closed = Some(expect_close(&mut conn, now, &policy));
                }
                continue;
            }
            Action::Refuse { status, .. } => {
                assert!((400..600).contains(&status.code()), "{status:?}");
                closed = Some(expect_close(&mut conn, now, &policy));
                continue;
            }
            Action::Close(c) => {
                closed = Some(c);
                continue;
            }
            Action::Read { deadline, .. } => {
                assert!(deadline > now, "a read with a past deadline");
                assert!(deadline <= now + policy.idle_timeout.max(policy.header_read_timeout));
                pending_read = Some(deadline);
            }
        }
        // The runtime is reading: the script says what happens.
        let Some((&op, rest)) = script.split_first() else {
            return;
        };
        script = rest;
        match op % 4 {
            // Some bytes arrive.
            0 | 1 => {
                let want = usize::from(op >> 2) + 1;
                let buf = conn.read_buf();
                let n = want.min(buf.len()).min(script.len());
                if n == 0 {
                    return;
                }
                buf[..n].copy_from_slice(&script[..n]);
                script = &script[n..];
                conn.received(n, now);
            }
            // The clock moves on (up to ~4 s), without passing the read's deadline.
            2 => {
                let jump = Duration::from_millis(u64::from(op >> 2) * 64);
                now = (now + jump)
                    .min(pending_read.unwrap() - Duration::from_nanos(1))
                    .max(now);
            }
            // The deadline passes.
            _ => {
                // The runtime's read ends at the deadline and it tells the connection which
                // timeout passed (the one the read was started under).
                let timeout = match conn.poll(now, &policy) {
                    Action::Read { timeout, .. } => timeout,
                    other => panic!("a second poll before any input: {other:?}"),
                };
                now = pending_read.unwrap();
                conn.timed_out(timeout);
            }
        }
    }
});

/// The next action must be the close.
fn expect_close(conn: &mut Connection, now: Instant, policy: &Policy) -> Close {
    match conn.poll(now, policy) {
        Action::Close(c) => c,
        other => panic!("expected the close, got {other:?}"),
    }
}
