//! Connection handling: keep-alive, pipelining, closing, slow and vanishing clients, timeouts.

use std::io::Read;
use std::thread;
use std::time::Duration;

use edgeplane_test_support::prelude::*;

/// The binary under test (Cargo builds it for these tests).
const BIN: &str = env!("CARGO_BIN_EXE_edgeplane");

const BIG: &str = "big.mp4";
const BIG_LEN: usize = 40 << 20;
const MIB32: u64 = 32 << 20;

#[test]
fn keep_alive_1000_random_ranges_on_one_connection() {
    let data = pattern("ka.mp4", 2 << 20);
    let len = data.len() as u64;
    let server = ServerBuilder::new(BIN)
        .file("flash", "ka.mp4", &data)
        .start();
    let mut conn = server.connect();
    let mut rng = Rng::new(7);
    for i in 0..1000 {
        let (range, first, last) = match rng.below(10) {
            // suffix
            0 => {
                let n = 1 + rng.below(70_000);
                (format!("bytes=-{n}"), len - n, len - 1)
            }
            // open
            1 => {
                let a = len - 1 - rng.below(70_000);
                (format!("bytes={a}-"), a, len - 1)
            }
            // tiny
            2 => {
                let a = rng.below(len);
                (format!("bytes={a}-{a}"), a, a)
            }
            // anything up to 64 KiB, clamped at the end
            _ => {
                let a = rng.below(len);
                let b = a + rng.below(65_536);
                (format!("bytes={a}-{b}"), a, b.min(len - 1))
            }
        };
        let r = conn.request("GET", "/ka.mp4", &[("Range", &range)]);
        assert_partial(&r, &data, first, last, &format!("request {i} ({range})"));
        assert!(
            !r.says_close(),
            "request {i}: the server ended a keep-alive connection: {r:?}"
        );
    }
    // Still the same, healthy connection.
    let r = conn.request("GET", "/ka.mp4", &[]);
    assert_full(&r, &data, "request 1001 (whole object)");
}

#[test]
fn twenty_pipelined_requests_in_one_write() {
    let data = pattern("pipe.m4s", 300_000);
    let small = pattern("small.vtt", 100);
    let server = ServerBuilder::new(BIN)
        .file("flash", "pipe.m4s", &data)
        .file("flash", "small.vtt", &small)
        .start();
    let etag = server
        .get("/pipe.m4s", &[])
        .expect_header("etag")
        .to_owned();

    #[derive(Debug)]
    enum Exp {
        Part(u64, u64),
        Small,
        Head,
        NotFound,
        NotModified,
    }
    let mut reqs: Vec<(String, Exp)> = Vec::new();
    let mut rng = Rng::new(20);
    for i in 0..20 {
        let (head, exp) = match i {
            3 => (request_head("HEAD", "/pipe.m4s", &[]), Exp::Head),
            7 => (request_head("GET", "/missing.m4s", &[]), Exp::NotFound),
            11 => (
                request_head("GET", "/pipe.m4s", &[("If-None-Match", &etag)]),
                Exp::NotModified,
            ),
            15 => (request_head("GET", "/small.vtt", &[]), Exp::Small),
            _ => {
                let a = rng.below(300_000);
                let b = (a + rng.below(40_000)).min(299_999);
                (
                    request_head("GET", &format!("/pipe.m4s/range/{a}-{b}"), &[]),
                    Exp::Part(a, b),
                )
            }
        };
        reqs.push((head, exp));
    }
    let all: String = reqs.iter().map(|(h, _)| h.as_str()).collect();
    let mut conn = server.connect();
    conn.send(all.as_bytes());
    for (i, (_, exp)) in reqs.iter().enumerate() {
        let r = conn.read_response(matches!(exp, Exp::Head));
        let what = format!("pipelined response {i} ({exp:?})");
        match exp {
            Exp::Part(a, b) => assert_partial(&r, &data, *a, *b, &what),
            Exp::Small => assert_full(&r, &small, &what),
            Exp::Head => {
                assert_eq!(r.status, 200, "{what}: {r:?}");
                assert_eq!(r.content_length(), Some(300_000), "{what}: {r:?}");
            }
            Exp::NotFound => assert_eq!(r.status, 404, "{what}: {r:?}"),
            Exp::NotModified => assert_eq!(r.status, 304, "{what}: {r:?}"),
        }
        if i < 19 {
            assert!(!r.says_close(), "{what}: closed mid-pipeline: {r:?}");
        }
    }
    // Nothing extra after the 20 responses: the next request gets its own response.
    let r = conn.request("GET", "/small.vtt", &[]);
    assert_full(&r, &small, "request after the pipeline");
}

#[test]
fn pipeline_stops_at_connection_close() {
    let small = pattern("small.vtt", 100);
    let server = ServerBuilder::new(BIN)
        .file("flash", "small.vtt", &small)
        .start();
    let mut conn = server.connect();
    let batch = [
        request_head("GET", "/small.vtt", &[]),
        request_head("GET", "/small.vtt", &[("Connection", "close")]),
        request_head("GET", "/small.vtt", &[]),
    ]
    .concat();
    conn.send(batch.as_bytes());
    let r = conn.read_response(false);
    assert_full(&r, &small, "first");
    let r = conn.read_response(false);
    assert_full(&r, &small, "second (Connection: close)");
    // The third request must not be answered: RFC 9112 9.6.
    conn.expect_closed("after the Connection: close request in a pipeline");
}

#[test]
fn requests_split_into_tiny_writes() {
    let data = pattern("split.ts", 50_000);
    let server = ServerBuilder::new(BIN)
        .file("flash", "split.ts", &data)
        .start();
    let mut conn = server.connect();
    let reqs = [
        request_head("GET", "/split.ts", &[("Range", "bytes=10-20")]),
        request_head(
            "GET",
            "/split.ts/range/49000-49999",
            &[("X-Filler", "abcdefghij")],
        ),
        request_head("HEAD", "/split.ts", &[]),
    ];
    let all = reqs.concat();
    for piece in all.as_bytes().chunks(7) {
        conn.send(piece);
        thread::sleep(Duration::from_millis(2));
    }
    let r = conn.read_response(false);
    assert_partial(&r, &data, 10, 20, "split request 1");
    let r = conn.read_response(false);
    assert_partial(&r, &data, 49_000, 49_999, "split request 2");
    let r = conn.read_response(true);
    assert_eq!(r.status, 200, "split HEAD: {r:?}");
    assert_eq!(r.content_length(), Some(50_000));
}

#[test]
fn connection_close_is_honoured() {
    let data = pattern("c.mp4", 100_000);
    let server = ServerBuilder::new(BIN)
        .file("flash", "c.mp4", &data)
        .start();
    for (target, headers, status) in [
        ("/c.mp4", vec![("Connection", "close")], 200),
        (
            "/c.mp4",
            vec![("Connection", "close"), ("Range", "bytes=5-99")],
            206,
        ),
        ("/c.mp4/range/0-9", vec![("Connection", "close")], 206),
        ("/missing.mp4", vec![("Connection", "close")], 404),
        ("/c.mp4", vec![("Connection", "keep-alive, close")], 200),
    ] {
        let mut c = server.connect();
        let r = c.request("GET", target, &headers);
        assert_eq!(r.status, status, "{target} {headers:?}: {r:?}");
        c.expect_eof(&format!("after Connection: close ({target}, {headers:?})"));
    }
    // curl agrees (and does not complain).
    let c = curl(&["-H", "Connection: close"], &server.url("/c.mp4"));
    assert_eq!((c.exit_code, c.status), (Some(0), 200), "{c:?}");
    assert_bytes_eq(&c.body, &data, "curl Connection: close");
}

#[test]
fn http_1_0_closes_unless_keep_alive_is_agreed() {
    let data = pattern("old.mp4", 20_000);
    let server = ServerBuilder::new(BIN)
        .file("flash", "old.mp4", &data)
        .start();

    let mut c = server.connect();
    let r = c.raw(b"GET /old.mp4 HTTP/1.0\r\n\r\n");
    assert_full(&r, &data, "HTTP/1.0 GET");
    c.expect_eof("HTTP/1.0 without keep-alive");

    let mut c = server.connect();
    let r = c.raw(b"GET /old.mp4 HTTP/1.0\r\nRange: bytes=100-199\r\n\r\n");
    assert_partial(&r, &data, 100, 199, "HTTP/1.0 Range");
    c.expect_eof("HTTP/1.0 Range without keep-alive");

    let mut c = server.connect();
    let r = c.raw(b"HEAD /old.mp4 HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    c.expect_eof("HTTP/1.0 HEAD");

    // With `Connection: keep-alive` the server may keep it open, but then it must say so.
    let mut c = server.connect();
    let r = c.raw(b"GET /old.mp4 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_full(&r, &data, "HTTP/1.0 keep-alive GET");
    let agreed = r.header("connection").is_some_and(|v| {
        v.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("keep-alive"))
    });
    if agreed {
        let r =
            c.raw(b"GET /old.mp4 HTTP/1.0\r\nConnection: keep-alive\r\nRange: bytes=0-0\r\n\r\n");
        assert_partial(&r, &data, 0, 0, "second HTTP/1.0 keep-alive request");
    } else {
        c.expect_eof("HTTP/1.0 keep-alive request answered without Connection: keep-alive");
    }
}

/// A client that stops reading a 32 MiB range for a while and then reads it in small pieces:
/// the body must arrive byte-exact, and the stalled connection must not hold up others (even
/// with one executor).
#[test]
fn slow_reader_gets_exact_bytes_and_does_not_block_others() {
    let data = pattern(BIG, BIG_LEN);
    let server = ServerBuilder::new(BIN)
        .cores(1)
        .file("flash", BIG, &data)
        .start();
    let first = 1_000_001u64;
    let last = first + MIB32 - 1;
    let mut conn = server.connect();
    conn.send(
        request_head(
            "GET",
            &format!("/{BIG}"),
            &[("Range", &format!("bytes={first}-{last}"))],
        )
        .as_bytes(),
    );

    // Read only the head and a little body, then stall: the server's socket buffer fills up.
    let head = conn.read_head();
    assert!(
        head.starts_with("HTTP/1.1 206"),
        "slow reader head: {head:?}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {MIB32}\r\n")),
        "slow reader head: {head:?}"
    );
    let mut body = Vec::with_capacity(MIB32 as usize);
    let mut buf = vec![0u8; 8192];
    let n = conn.reader.read(&mut buf).unwrap();
    body.extend_from_slice(&buf[..n]);
    thread::sleep(Duration::from_millis(500));

    // Meanwhile, other clients are served.
    for i in 0..5 {
        server.assert_serving(&format!("another client while one reader stalls ({i})"));
        let r = server.get(&format!("/{BIG}"), &[("Range", "bytes=0-65535")]);
        assert_partial(&r, &data, 0, 65_535, "other client's range");
    }

    // Read the rest in small pieces with pauses.
    let mut since_pause = 0usize;
    while (body.len() as u64) < MIB32 {
        let want = buf.len().min(MIB32 as usize - body.len());
        let n = conn.reader.read(&mut buf[..want]).unwrap();
        assert!(n > 0, "EOF after {} of {MIB32} body bytes", body.len());
        body.extend_from_slice(&buf[..n]);
        since_pause += n;
        if since_pause >= 1 << 20 {
            since_pause = 0;
            thread::sleep(Duration::from_millis(15));
        }
    }
    assert_eq!(
        sha256_hex(&body),
        sha256_hex(&data[first as usize..=last as usize]),
        "slow reader's 32 MiB body"
    );
    // And the connection is still good for another request.
    let r = conn.request("GET", &format!("/{BIG}"), &[("Range", "bytes=-10")]);
    assert_partial(
        &r,
        &data,
        BIG_LEN as u64 - 10,
        BIG_LEN as u64 - 1,
        "after the slow read",
    );
}

/// Clients that vanish in the middle of a body: the server keeps serving, /metrics answers,
/// and the connections are not leaked.
#[test]
fn client_disconnecting_mid_body() {
    let data = pattern(BIG, BIG_LEN);
    let server = ServerBuilder::new(BIN)
        .cores(1)
        .file("flash", BIG, &data)
        .start();
    let range = format!("bytes=0-{}", MIB32 - 1);
    for i in 0..12 {
        let mut c = server.connect();
        c.send(request_head("GET", &format!("/{BIG}"), &[("Range", &range)]).as_bytes());
        let mut buf = vec![0u8; 100 * 1024];
        match i % 3 {
            0 => {} // never read a byte
            1 => {
                let _ = c.reader.read(&mut buf[..1]);
            }
            _ => {
                let _ = c.reader.read_exact(&mut buf);
            }
        }
        // Close with unread data: the kernel resets the connection.
        drop(c);
    }
    // Other requests are fine after the aborts.
    let r = server.get(&format!("/{BIG}/range/123-456"), &[]);
    assert_partial(&r, &data, 123, 456, "after disconnects");
    server.assert_serving("after disconnects");
    let m = server.metrics();
    assert!(
        m.has("edgeplane_open_connections"),
        "no edgeplane_open_connections in:\n{}",
        m.text
    );

    // Hold three idle keep-alive connections; the aborted ones must not be counted any more.
    let held: Vec<Conn> = (0..3)
        .map(|_| {
            let mut c = server.connect();
            let r = c.request("GET", "/canary.bin", &[]);
            assert_eq!(r.status, 200);
            c
        })
        .collect();
    // 3 held (+1 if the gauge also counts the admin connection that scrapes it).
    server.wait_metrics("edgeplane_open_connections back to 3 (or 4)", |m| {
        let v = m.sum("edgeplane_open_connections", &[]);
        (3.0..=4.0).contains(&v)
    });
    drop(held);
}

#[test]
fn idle_keep_alive_connection_is_closed() {
    let server = ServerBuilder::new(BIN)
        .limit("idle_timeout_ms", 1000)
        .start();
    let mut c = server.connect();
    let r = c.request("GET", "/canary.bin", &[]);
    assert_eq!(r.status, 200);
    assert!(!r.says_close(), "{r:?}");
    // IO_TIMEOUT (20 s) is the guard; the server should close after about 1 s.
    c.expect_eof("idle keep-alive connection with idle_timeout_ms = 1000");
    server.wait_metrics("an idle timeout counted", |m| {
        m.sum("edgeplane_timeouts_total", &[("kind", "idle")]) >= 1.0
    });
    server.assert_serving("after an idle close");
}

#[test]
fn half_closed_client_still_gets_its_response() {
    let data = pattern("h.mp4", 300_000);
    let server = ServerBuilder::new(BIN)
        .file("flash", "h.mp4", &data)
        .start();
    let mut c = server.connect();
    c.send(
        request_head(
            "GET",
            "/h.mp4",
            &[("Range", "bytes=1-200000"), ("Connection", "close")],
        )
        .as_bytes(),
    );
    c.shutdown_write();
    let r = c.read_response(false);
    assert_partial(&r, &data, 1, 200_000, "after shutdown(SHUT_WR)");
    c.expect_eof("half-closed client");
}

#[test]
fn many_concurrent_clients_on_two_cores() {
    let data = std::sync::Arc::new(pattern("conc.mp4", 3 << 20));
    let server = ServerBuilder::new(BIN)
        .cores(2)
        .file("flash", "conc.mp4", &data)
        .start();
    assert_eq!(
        server.ready_cores,
        Some(2),
        "ready line: {}",
        server.ready_line
    );
    let addr = server.http;
    let url = server.url("/conc.mp4");
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let data = std::sync::Arc::clone(&data);
            let url = url.clone();
            thread::spawn(move || {
                let len = data.len() as u64;
                let mut rng = Rng::new(100 + t);
                if t % 2 == 0 {
                    let mut c = Conn::connect(addr);
                    for i in 0..100 {
                        let a = rng.below(len);
                        let b = (a + rng.below(200_000)).min(len - 1);
                        let r =
                            c.request("GET", "/conc.mp4", &[("Range", &format!("bytes={a}-{b}"))]);
                        assert_partial(&r, &data, a, b, &format!("thread {t} request {i}"));
                    }
                } else {
                    let agent = ureq_agent();
                    for i in 0..100 {
                        let a = rng.below(len);
                        let b = (a + rng.below(200_000)).min(len - 1);
                        let r = ureq_request(
                            &agent,
                            "GET",
                            &url,
                            &[("Range", &format!("bytes={a}-{b}"))],
                        );
                        assert_partial(&r, &data, a, b, &format!("thread {t} (ureq) request {i}"));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread failed");
    }
    // Many short connections as well.
    for i in 0..100 {
        let r = server.get(
            "/conc.mp4",
            &[("Range", &format!("bytes={i}-{}", i + 1000))],
        );
        assert_partial(&r, &data, i, i + 1000, &format!("short connection {i}"));
    }
}

/// Every `io.readiness` path (issue #17) says at start which one runs, and serves what needs
/// a connection to wait for bytes: keep-alive requests one after another, a request that
/// arrives in pieces (each piece after the socket was found empty), many connections at once,
/// and the idle timeout the sweeper enforces on a connection waiting for its next request.
#[test]
fn every_readiness_path_waits_for_requests_and_times_out_idle_ones() {
    let data = pattern("ready.mp4", 1 << 20);
    for mode in ["auto", "multishot", "read-first", "legacy"] {
        let server = ServerBuilder::new(BIN)
            .io("readiness", &format!("\"{mode}\""))
            .limit("idle_timeout_ms", 1000)
            .file("flash", "ready.mp4", &data)
            .start();
        let said = server
            .output()
            .lines()
            .find(|l| l.contains("socket readiness:") && l.contains("setting="))
            .map(str::to_owned);
        let said = said.unwrap_or_else(|| {
            panic!(
                "{mode}: no `socket readiness:` line at start:\n{}",
                server.output()
            )
        });
        assert!(
            said.contains(&format!("setting=\"{mode}\"")),
            "{mode}: {said}"
        );
        let path = if mode == "legacy" {
            "glommio's own path"
        } else {
            "read first"
        };
        assert!(said.contains(path), "{mode}: want {path:?} in {said}");

        let mut rng = Rng::new(17);
        let mut conn = server.connect();
        for i in 0..100 {
            let a = rng.below(1 << 20);
            let b = (a + rng.below(70_000)).min((1 << 20) - 1);
            let r = conn.request("GET", &format!("/ready.mp4/range/{a}-{b}"), &[]);
            assert_partial(&r, &data, a, b, &format!("{mode}: keep-alive request {i}"));
        }
        let head = request_head("GET", "/ready.mp4", &[("Range", "bytes=5-500")]);
        for piece in head.as_bytes().chunks(5) {
            conn.send(piece);
            thread::sleep(Duration::from_millis(3));
        }
        let r = conn.read_response(false);
        assert_partial(&r, &data, 5, 500, &format!("{mode}: request in pieces"));

        let clients: Vec<_> = (0..16u64)
            .map(|c| {
                let mut conn = server.connect();
                let data = data.clone();
                thread::spawn(move || {
                    let mut rng = Rng::new(100 + c);
                    for i in 0..20 {
                        let a = rng.below(1 << 20);
                        let b = (a + rng.below(65_536)).min((1 << 20) - 1);
                        let r = conn.request(
                            "GET",
                            "/ready.mp4",
                            &[("Range", &format!("bytes={a}-{b}"))],
                        );
                        assert_partial(&r, &data, a, b, &format!("client {c} request {i}"));
                    }
                })
            })
            .collect();
        for c in clients {
            c.join()
                .unwrap_or_else(|_| panic!("{mode}: a concurrent client failed"));
        }

        conn.expect_eof(&format!(
            "{mode}: idle keep-alive connection, idle_timeout_ms = 1000"
        ));
        server.wait_metrics("an idle timeout counted", |m| {
            m.sum("edgeplane_timeouts_total", &[("kind", "idle")]) >= 1.0
        });
        server.assert_serving(&format!("{mode}: after an idle close"));
    }
}

/// Idle keep-alive connections are parked (task and buffers freed, socket in the core's epoll
/// set) and served again when the client sends: ranges stay exact, the request count
/// (`max_requests_per_connection`) carries over, a partial head is never parked, a client that
/// leaves a parked connection frees it, and the idle timeout still closes one.
#[test]
fn idle_connections_are_parked_and_woken_with_their_state() {
    let data = pattern("park.mp4", 1 << 20);
    let server = ServerBuilder::new(BIN)
        .io("park_idle_after_ms", "200")
        .limit("idle_timeout_ms", 4000)
        .limit("max_requests_per_connection", 3)
        .file("flash", "park.mp4", &data)
        .start();
    let parked = |m: &Metrics| m.sum("edgeplane_parked_connections", &[]);
    let open = |m: &Metrics| m.sum("edgeplane_open_connections", &[]);

    // Twenty connections, one request each, then idle: all parked.
    let mut conns: Vec<Conn> = (0..20).map(|_| server.connect()).collect();
    let mut rng = Rng::new(23);
    let mut ask = |c: &mut Conn, what: &str| {
        let a = rng.below(1 << 20);
        let b = (a + rng.below(300_000)).min((1 << 20) - 1);
        let r = c.request("GET", &format!("/park.mp4/range/{a}-{b}"), &[]);
        assert_partial(&r, &data, a, b, what);
        r
    };
    for (i, c) in conns.iter_mut().enumerate() {
        let r = ask(c, &format!("connection {i}, first request"));
        assert!(!r.says_close(), "{r:?}");
    }
    server.wait_metrics("20 idle connections parked", |m| {
        parked(m) == 20.0 && open(m) == 20.0
    });

    // Each one asks again: woken, answered exactly, and parked again afterwards.
    for (i, c) in conns.iter_mut().enumerate() {
        let r = ask(c, &format!("connection {i}, after parking"));
        assert!(!r.says_close(), "second of three requests: {r:?}");
    }
    let m = server.wait_metrics("all parked again", |m| parked(m) == 20.0);
    assert!(
        m.sum("edgeplane_connections_parked_total", &[]) >= 40.0,
        "each connection parked twice"
    );

    // The third request is the last allowed: the count survived two parkings.
    let r = ask(&mut conns[0], "connection 0, third request");
    assert!(r.says_close(), "third request with max 3: {r:?}");
    conns[0].expect_eof("after max_requests_per_connection, across parkings");

    // A partial head is never parked (it is under the header timeout, not idle): wait until a
    // connection that went idle after it has been parked, then finish the head.
    let mut partial = server.connect();
    partial.send(b"GET /park.mp4 HTTP/1.1\r\nHost: t\r\n");
    let mut later = server.connect();
    ask(&mut later, "a connection idle after the partial head");
    server.wait_metrics("the later idle connection parked", |m| parked(m) == 20.0);
    partial.send(b"Range: bytes=10-20\r\n\r\n");
    let r = partial.read_response(false);
    assert_partial(
        &r,
        &data,
        10,
        20,
        "the partial head, finished after parking ran",
    );

    // Clients that leave parked connections free them (caps and gauge).
    for c in conns.drain(10..) {
        drop(c);
    }
    server.wait_metrics("ten parked connections left by their clients", |m| {
        parked(m) <= 11.0 && open(m) <= 12.0
    });

    // The idle timeout still closes a parked connection, counted as an idle timeout.
    conns[1].expect_eof("parked connection past idle_timeout_ms");
    let m = server.wait_metrics("every parked connection timed out", |m| {
        parked(m) == 0.0 && m.sum("edgeplane_timeouts_total", &[("kind", "idle")]) >= 10.0
    });
    assert!(open(&m) <= 1.0, "open connections: {}", open(&m));
    server.assert_serving("after parking, waking and timing out");
}
