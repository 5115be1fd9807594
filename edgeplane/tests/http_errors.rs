//! Error responses on the http listener. After every error the test checks that the
//! connection is either closed cleanly or still usable, and that other clients are served.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use edgeplane_test_support::prelude::*;

/// The binary under test (Cargo builds it for these tests).
const BIN: &str = env!("CARGO_BIN_EXE_edgeplane");

const SECRET: &[u8] = b"top-secret-outside-the-tier";

fn builder() -> ServerBuilder {
    ServerBuilder::new(BIN)
        .file("flash", "a.bin", &pattern("a.bin", 10_000))
        .file("flash", "b.bin", &pattern("b.bin", 777))
}

/// Sends `raw`, expects `status`, then checks the connection and the server.
#[track_caller]
fn expect_status(server: &Server, raw: &[u8], status: &[u16], what: &str) -> Response {
    let mut c = server.connect();
    let r = c.raw(raw);
    assert!(
        status.contains(&r.status),
        "{what}: want {status:?}, got {r:?}\nrequest: {:?}",
        String::from_utf8_lossy(raw)
    );
    c.expect_usable_or_closed(&r, what);
    server.assert_serving(what);
    r
}

/// Like [`expect_status`] for requests the server need not read to the end (heads over a
/// limit): the connection must be closed afterwards, and a reset (unread bytes in the server's
/// receive buffer) is acceptable.
#[track_caller]
fn expect_status_then_close(server: &Server, raw: &[u8], status: &[u16], what: &str) -> Response {
    let mut c = server.connect();
    let r = c.raw(raw);
    assert!(
        status.contains(&r.status),
        "{what}: want {status:?}, got {r:?}"
    );
    c.expect_closed(what);
    server.assert_serving(what);
    r
}

#[test]
fn malformed_requests_get_400() {
    let server = builder().start();
    let cases: &[(&str, &[u8])] = &[
        (
            "binary garbage",
            b"\x00\x01\x02\x03\xff\xfe garbage\r\n\r\n",
        ),
        ("request line without target", b"GET\r\n\r\n"),
        ("request line without version", b"GET /a.bin\r\n\r\n"),
        (
            "bad protocol name",
            b"GET /a.bin FOO/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            "header without colon",
            b"GET /a.bin HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
        ),
        (
            "space in header name",
            b"GET /a.bin HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n",
        ),
        (
            "empty header name",
            b"GET /a.bin HTTP/1.1\r\nHost: x\r\n: value\r\n\r\n",
        ),
        (
            "space before colon",
            b"GET /a.bin HTTP/1.1\r\nHost : x\r\n\r\n",
        ),
        (
            "space inside the target",
            b"GET /a b.bin HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            "control byte in method",
            b"G\x01T /a.bin HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            "bad Content-Length",
            b"GET /a.bin HTTP/1.1\r\nHost: x\r\nContent-Length: ab\r\n\r\n",
        ),
        (
            "conflicting Content-Length",
            b"GET /a.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\n",
        ),
    ];
    let prefix = pattern("a.bin", 16);
    let named = cases.iter().map(|(what, raw)| (what.to_string(), *raw));
    check_all(named, |what, raw| {
        let r = expect_status(&server, raw, &[400], what);
        assert!(
            !r.body.windows(16).any(|w| w == &prefix[..]),
            "{what}: an error response carried object bytes"
        );
    });
}

/// RFC 9112 3.2: "A server MUST respond with a 400 (Bad Request) status code to any HTTP/1.1
/// request message that lacks a Host header field and to any request message that contains
/// more than one Host header field line".
#[test]
fn host_header_rules() {
    let server = builder().start();
    expect_status(
        &server,
        b"GET /a.bin HTTP/1.1\r\n\r\n",
        &[400],
        "HTTP/1.1 without Host",
    );
    expect_status(
        &server,
        b"GET /a.bin HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        &[400],
        "two Host headers",
    );
    // HTTP/1.0 needs no Host.
    let mut c = server.connect();
    let r = c.raw(b"GET /a.bin HTTP/1.0\r\n\r\n");
    assert_full(&r, &pattern("a.bin", 10_000), "HTTP/1.0 without Host");
}

#[test]
fn unparsable_range_header_is_ignored_not_400() {
    let server = builder().start();
    let data = pattern("a.bin", 10_000);
    let mut c = server.connect();
    for range in [
        "bytes=abc",
        "bytes=",
        "pages=1-2",
        "bytes=1-2-3",
        "=",
        "bytes==1-2",
    ] {
        let r = c.request("GET", "/a.bin", &[("Range", range)]);
        assert_full(&r, &data, &format!("Range: {range}"));
    }
}

#[test]
fn unknown_ids_get_404() {
    let server = builder().start();
    for target in [
        "/nope.bin",
        "/nope.bin/range/0-1",
        "/A.BIN",
        "/a.bin.",
        "/a.bi",
    ] {
        let mut c = server.connect();
        let r = c.request("GET", target, &[]);
        assert_eq!(r.status, 404, "GET {target}: {r:?}");
        c.expect_usable_or_closed(&r, target);
    }
    let mut c = server.connect();
    let r = c.request("HEAD", "/nope.bin", &[]);
    assert_eq!(r.status, 404, "HEAD: {r:?}");
    // HEAD 404 has no body: the next response parses.
    c.expect_usable_or_closed(&r, "HEAD 404");
    // The root is not an object.
    let mut c = server.connect();
    let r = c.request("GET", "/", &[]);
    assert!(matches!(r.status, 400 | 404), "GET /: {r:?}");
    server.assert_serving("after 404s");
}

#[test]
fn path_traversal_is_refused() {
    let b = builder().file("flash", "a b.bin", b"space in name").file(
        "flash",
        &"x".repeat(201),
        b"name of 201 bytes",
    );
    std::fs::create_dir_all(b.tier_dir("flash").join("sub")).unwrap();
    write_file(
        &b.tier_dir("flash").join("sub").join("x.bin"),
        b"nested file",
    );
    // A file next to the tier directory, and the config itself, must stay unreachable.
    write_file(&b.root().join("secret.txt"), SECRET);
    let server = b.start();
    let long = format!("/{}", "x".repeat(201));
    let targets = [
        "/../secret.txt",
        "/..%2fsecret.txt",
        "/%2e%2e/secret.txt",
        "/%2e%2e%2fsecret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/..\\secret.txt",
        "/../edgeplane.toml",
        "/../../../../../../etc/passwd",
        "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/..",
        "/.",
        "/%2e%2e",
        "/sub/x.bin",
        "/sub%2fx.bin",
        "/sub",
        "/./a.bin/../../secret.txt",
        "//etc/passwd",
        "/a.bin%00.mp4",
        "/a%20b.bin",
        long.as_str(),
        "../secret.txt",
        "secret.txt",
        "*",
    ];
    for target in targets {
        let mut c = server.connect();
        let raw = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
        let r = c.raw(raw.as_bytes());
        assert!(
            matches!(r.status, 400 | 404),
            "GET {target:?}: want 400 or 404, got {r:?}"
        );
        for needle in [
            SECRET,
            b"root:",
            b"nested file",
            b"[[tier]]",
            b"space in name",
        ] {
            assert!(
                !r.body.windows(needle.len()).any(|w| w == needle),
                "GET {target:?} leaked {:?}",
                String::from_utf8_lossy(needle)
            );
        }
        assert!(
            !r.body.windows(9).any(|w| w == b"name of 2"),
            "GET {target:?} served a file whose name is not a valid content-id"
        );
        c.expect_usable_or_closed(&r, &format!("GET {target:?}"));
    }
    server.assert_serving("after traversal attempts");
}

#[test]
fn other_methods_get_405_with_allow() {
    let server = builder().start();
    let cases: &[&[u8]] = &[
        b"POST /a.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        b"PUT /a.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        b"DELETE /a.bin HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PATCH /a.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        b"POST /nope.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    ];
    for raw in cases {
        let what = String::from_utf8_lossy(raw.split(|b| *b == b'\r').next().unwrap()).into_owned();
        let r = expect_status(&server, raw, &[405], &what);
        let allow = r.expect_header("allow");
        for m in ["GET", "HEAD"] {
            assert!(
                allow.split(',').any(|t| t.trim() == m),
                "{what}: Allow {allow:?} lacks {m}"
            );
        }
        for m in ["POST", "PUT", "DELETE"] {
            assert!(
                !allow.split(',').any(|t| t.trim() == m),
                "{what}: Allow {allow:?} lists {m}"
            );
        }
    }
    // An unknown method: 405 or 501.
    expect_status(
        &server,
        b"BREW /a.bin HTTP/1.1\r\nHost: x\r\n\r\n",
        &[405, 501],
        "unknown method",
    );
    // With ureq too.
    let u = ureq_request(&ureq_agent(), "DELETE", &server.url("/a.bin"), &[]);
    assert_eq!(u.status, 405, "{u:?}");
}

/// GET/HEAD with a body: 413 and the connection closed, and the body is never taken for the
/// next request (a smuggled `GET /b.bin` must not be answered).
#[test]
fn request_with_body_gets_413_and_no_smuggling() {
    let server = builder().start();
    let smuggled = "GET /b.bin HTTP/1.1\r\nHost: x\r\n\r\n";
    let chunk = format!("{:x}\r\n{smuggled}\r\n0\r\n\r\n", smuggled.len());
    let cases = [
        (
            "GET with Content-Length",
            format!(
                "GET /a.bin HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
        ),
        (
            "HEAD with Content-Length",
            format!(
                "HEAD /a.bin HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
        ),
        (
            "GET with Transfer-Encoding: chunked",
            format!("GET /a.bin HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}"),
        ),
    ];
    let named = cases
        .iter()
        .map(|(what, raw)| (what.to_string(), raw.as_str()));
    check_all(named, |what, raw| {
        let mut c = server.connect();
        let r = c.raw(raw.as_bytes());
        assert_eq!(r.status, 413, "{what}: {r:?}");
        if r.says_close() {
            // Any byte after the response (a body on a HEAD response, or an answer to the
            // smuggled request) is an error.
            c.expect_closed(what);
            server.assert_serving(what);
            return;
        }
        // Whatever the server does next, it must not answer the smuggled request: either it
        // closes, or the next response is for the request we send now.
        let _ = c.try_send(request_head("GET", &format!("/{CANARY}"), &[]).as_bytes());
        match c.try_read_response(false) {
            Ok(None) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Ok(Some(next)) => {
                assert_ne!(
                    next.body,
                    pattern("b.bin", 777),
                    "{what}: the request body was executed as a request (smuggling)"
                );
                assert_eq!(next.status, 200, "{what}: next response {next:?}");
                assert_bytes_eq(&next.body, &canary_data(), what);
            }
            Err(e) => panic!("{what}: after 413 the connection neither closed nor served: {e}"),
        }
        server.assert_serving(what);
    });
    // Both framings at once: rejected (400 or 413), never served.
    let raw = format!(
        "GET /a.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}"
    );
    let mut c = server.connect();
    let r = c.raw(raw.as_bytes());
    assert!(matches!(r.status, 400 | 413), "CL + TE: {r:?}");
    c.expect_closed("CL + TE");

    // Content-Length: 0 is no body: served normally on a kept-alive connection.
    let mut c = server.connect();
    let r = c.request("GET", "/a.bin", &[("Content-Length", "0")]);
    assert_full(&r, &pattern("a.bin", 10_000), "GET with Content-Length: 0");
    let r = c.request("GET", "/a.bin", &[("Range", "bytes=0-0")]);
    assert_partial(
        &r,
        &pattern("a.bin", 10_000),
        0,
        0,
        "after Content-Length: 0",
    );
}

/// RFC 9110 9.3.2: a response to HEAD has no content, error responses included. Any body
/// bytes would be read as the start of the next response.
#[test]
fn head_error_responses_have_no_body() {
    let server = builder().limit("max_uri_bytes", 256).start();
    let long = format!("/{}", "a".repeat(300));
    let cases: Vec<(String, u16)> = vec![
        ("HEAD /nope.bin HTTP/1.1\r\nHost: x\r\n\r\n".into(), 404),
        (
            "HEAD /a.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=99999-\r\n\r\n".into(),
            416,
        ),
        (
            "HEAD /a.bin/range/5-3 HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            0,
        ),
        (format!("HEAD {long} HTTP/1.1\r\nHost: x\r\n\r\n"), 414),
        ("HEAD /a.bin HTTP/1.1\r\n\r\n".into(), 400),
        ("HEAD /a.bin HTTP/2.0\r\nHost: x\r\n\r\n".into(), 505),
        (
            "HEAD /a.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi".into(),
            413,
        ),
    ];
    let named = cases.into_iter().map(|(raw, status)| {
        let line: String = raw.lines().next().unwrap().chars().take(60).collect();
        (line, (raw, status))
    });
    check_all(named, |what, (raw, status)| {
        let mut c = server.connect();
        c.send(raw.as_bytes());
        let r = c.read_response(true);
        if status != 0 {
            assert_eq!(r.status, status, "{what}: {r:?}");
        } else {
            assert!(r.status >= 400, "{what}: {r:?}");
        }
        if r.says_close() {
            c.expect_closed(&format!("{what} (HEAD, Connection: close)"));
        } else {
            c.expect_usable_or_closed(&r, what);
        }
    });
}

#[test]
fn long_request_target_gets_414() {
    let server = builder().limit("max_uri_bytes", 256).start();
    // Exactly at the limit: not 414 (it is an unknown or invalid id).
    let at_limit = format!("/{}", "a".repeat(255));
    let mut c = server.connect();
    let r = c.request("GET", &at_limit, &[]);
    assert!(
        matches!(r.status, 400 | 404),
        "target of exactly max_uri_bytes: {r:?}"
    );
    c.expect_usable_or_closed(&r, "at limit");
    // A valid object with a long query string under the limit is served.
    let target = format!("/a.bin?{}", "q".repeat(200));
    let r = server.get(&target, &[]);
    assert_eq!(r.status, 200, "{r:?}");

    for target in [
        format!("/{}", "a".repeat(256)),
        format!("/a.bin?{}", "q".repeat(300)),
    ] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
        let what = format!("target of {} bytes", target.len());
        expect_status(&server, raw.as_bytes(), &[414], &what);
    }
    // A target larger than the default max_header_bytes (8192) as well: 414 (or 431, as the
    // head is over that limit too), then the connection is closed.
    let raw = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(20_000));
    expect_status_then_close(
        &server,
        raw.as_bytes(),
        &[414, 431],
        "target of 20001 bytes",
    );
}

#[test]
fn large_or_many_headers_get_431() {
    let server = builder()
        .limit("max_header_bytes", 2048)
        .limit("max_uri_bytes", 1024)
        .limit("max_headers", 16)
        .limit("header_read_timeout_ms", 8000)
        .start();
    let data = pattern("a.bin", 10_000);

    // Under both limits: served.
    let mut c = server.connect();
    let pad = "p".repeat(1000);
    let r = c.request("GET", "/a.bin", &[("X-Pad", &pad)]);
    assert_full(&r, &data, "1 KiB header");
    let many: Vec<(String, String)> = (0..10).map(|i| (format!("X-H{i}"), "v".into())).collect();
    let many_ref: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let r = c.request("GET", "/a.bin", &many_ref);
    assert_full(&r, &data, "11 header lines");

    // One big header.
    let big = "b".repeat(3000);
    let raw = request_head("GET", "/a.bin", &[("X-Big", &big)]);
    expect_status_then_close(&server, raw.as_bytes(), &[431], "3000-byte header");

    // Many small header lines.
    let many: Vec<(String, String)> = (0..40).map(|i| (format!("X-H{i}"), "v".into())).collect();
    let many_ref: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let raw = request_head("GET", "/a.bin", &many_ref);
    assert!(
        raw.len() < 2048,
        "this case must be about the count, not the size"
    );
    expect_status(&server, raw.as_bytes(), &[431], "41 header lines");

    // An oversized head that never ends: 431 as soon as the limit is passed, not a timeout.
    let mut c = server.connect();
    let raw = format!(
        "GET /a.bin HTTP/1.1\r\nHost: x\r\nX-Endless: {}",
        "e".repeat(4000)
    );
    c.send(raw.as_bytes());
    let r = c.read_response(false);
    assert_eq!(r.status, 431, "unterminated oversized head: {r:?}");
    c.expect_closed("unterminated oversized head");
    server.assert_serving("after 431s");
}

#[test]
fn http2_and_http3_request_lines_get_505() {
    let server = builder().start();
    for v in ["HTTP/2.0", "HTTP/3.0"] {
        let raw = format!("GET /a.bin {v}\r\nHost: x\r\n\r\n");
        let r = expect_status(&server, raw.as_bytes(), &[505], v);
        assert_ne!(r.body, pattern("a.bin", 10_000));
    }
    // `HTTP/3` and `HTTP/2` lack the minor version that RFC 9112's HTTP-version requires, so 400
    // is as right as 505.
    for v in ["HTTP/3", "HTTP/2"] {
        let raw = format!("GET /a.bin {v}\r\nHost: x\r\n\r\n");
        expect_status(&server, raw.as_bytes(), &[400, 505], v);
    }
    // The HTTP/2 connection preface.
    let mut c = server.connect();
    let r = c.raw(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    assert!(matches!(r.status, 400 | 505), "h2 preface: {r:?}");
    c.expect_usable_or_closed(&r, "h2 preface");
    // curl with --http2-prior-knowledge must fail, not hang or get the object.
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
        ])
        .args(["-w", "%{http_code}"])
        .arg(server.url("/a.bin"))
        .output()
        .expect("run curl");
    let code = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_ne!(code, "200", "HTTP/2 prior knowledge got a 200: {out:?}");
    assert_ne!(out.status.code(), Some(28), "curl timed out: {out:?}");
    server.assert_serving("after HTTP/2 attempts");
}

/// Opens `n` connections and proves each one is being served (so the server counts them).
fn hold_connections(server: &Server, n: usize) -> Vec<Conn> {
    (0..n)
        .map(|i| {
            let mut c = server.connect();
            let r = c.request("GET", "/b.bin", &[]);
            assert_eq!(r.status, 200, "held connection {i}: {r:?}");
            c
        })
        .collect()
}

/// The next connection gets 503 and a close.
#[track_caller]
fn expect_503(server: &Server, what: &str) {
    let mut c = server.connect();
    let _ = c.try_send(request_head("GET", "/b.bin", &[]).as_bytes());
    match c.try_read_response(false) {
        Ok(Some(r)) => {
            assert_eq!(r.status, 503, "{what}: {r:?}");
            c.expect_closed(what);
        }
        Ok(None) => panic!("{what}: connection closed without a 503"),
        Err(e) => panic!("{what}: no 503: {e}"),
    }
}

/// Polls until a new connection is served again (slots are released asynchronously).
fn wait_served_again(server: &Server, what: &str) {
    poll(what, || {
        let mut c = server.connect();
        let _ = c.try_send(request_head("GET", "/b.bin", &[("Connection", "close")]).as_bytes());
        match c.try_read_response(false) {
            Ok(Some(r)) if r.status == 200 => Some(()),
            _ => None,
        }
    });
}

#[test]
fn max_connections_gives_503() {
    let server = builder().limit("max_connections", 3).start();
    let mut held = hold_connections(&server, 3);
    expect_503(&server, "4th connection with max_connections = 3");
    expect_503(&server, "5th connection with max_connections = 3");
    // The held ones still work.
    for (i, c) in held.iter_mut().enumerate() {
        let r = c.request("GET", "/b.bin", &[]);
        assert_eq!(r.status, 200, "held connection {i} after 503s: {r:?}");
    }
    // Releasing one frees a slot.
    drop(held.pop());
    wait_served_again(&server, "a free slot after closing one connection");
    drop(held);
    // All released: three at once again.
    let _again = poll("three slots again", || {
        let mut v = Vec::new();
        for _ in 0..3 {
            let mut c = server.connect();
            let _ = c.try_send(request_head("GET", "/b.bin", &[]).as_bytes());
            match c.try_read_response(false) {
                Ok(Some(r)) if r.status == 200 => v.push(c),
                _ => return None,
            }
        }
        Some(v)
    });
}

/// `max_connections` is for the whole process, not per executor.
#[test]
fn max_connections_counts_across_executors() {
    let server = builder().cores(2).limit("max_connections", 4).start();
    let _held = hold_connections(&server, 4);
    for i in 0..4 {
        expect_503(
            &server,
            &format!(
                "connection {} with max_connections = 4 and cores = 2",
                5 + i
            ),
        );
    }
}

#[test]
fn max_connections_per_client_gives_503() {
    let server = builder().limit("max_connections_per_client", 2).start();
    let _held = hold_connections(&server, 2);
    expect_503(
        &server,
        "3rd connection from 127.0.0.1 with max_connections_per_client = 2",
    );
    // Another client address is not affected (127.0.0.2 is loopback too).
    let c = curl(&["--interface", "127.0.0.2"], &server.url("/b.bin"));
    assert_eq!(c.exit_code, Some(0), "curl from 127.0.0.2: {c:?}");
    assert_eq!(
        c.status, 200,
        "another client address must be served: {c:?}"
    );
    assert_bytes_eq(&c.body, &pattern("b.bin", 777), "curl from 127.0.0.2");
}

/// Slowloris: one byte every 200 ms. With header_read_timeout_ms = 1000, the server must give
/// up (408, or a plain close) long before the 50-byte head could be complete.
#[test]
fn slow_request_head_times_out() {
    let server = builder().limit("header_read_timeout_ms", 1000).start();
    let head = b"GET /a.bin HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaa\r\n\r\n";
    assert!(head.len() >= 50);
    let mut c = server.connect();
    let mut writer = c.stream().try_clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_w = Arc::clone(&stop);
    let sender = thread::spawn(move || {
        use std::io::Write;
        let mut sent = 0;
        for byte in head {
            if stop_w.load(Ordering::SeqCst) {
                break;
            }
            if writer.write_all(&[*byte]).is_err() {
                break;
            }
            sent += 1;
            thread::sleep(Duration::from_millis(200));
        }
        sent
    });
    let first = c.try_read_response(false);
    stop.store(true, Ordering::SeqCst);
    let sent = sender.join().unwrap();
    match first {
        Ok(Some(r)) => {
            assert!(
                sent < head.len(),
                "the whole head was sent (over 10 s) before the server answered: \
                 header_read_timeout_ms = 1000 not enforced; response: {r:?}"
            );
            assert_eq!(r.status, 408, "slow head: {r:?}");
            c.expect_closed("after 408");
        }
        Ok(None) => assert!(
            sent < head.len(),
            "the server closed only after the whole head was sent"
        ),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            panic!("slow head: connection reset instead of 408 or a clean close")
        }
        Err(e) => panic!("slow head: no 408 and no close: {e}"),
    }
    server.wait_metrics("a header-read timeout counted", |m| {
        m.sum("edgeplane_timeouts_total", &[("kind", "header")]) >= 1.0
    });
    server.assert_serving("after slowloris");
}

/// A client that connects and sends nothing is dropped (whichever of the two timeouts the
/// server applies before the first byte).
#[test]
fn silent_connection_times_out() {
    let server = builder()
        .limit("header_read_timeout_ms", 1000)
        .limit("idle_timeout_ms", 1000)
        .start();
    let mut c = server.connect();
    let mut buf = Vec::new();
    match c.reader.read_to_end(&mut buf) {
        Ok(_) => {
            if !buf.is_empty() {
                let text = String::from_utf8_lossy(&buf);
                assert!(
                    text.starts_with("HTTP/1.1 408") || text.starts_with("HTTP/1.0 408"),
                    "silent connection got {text:?}"
                );
            }
        }
        Err(e) => panic!("a silent connection was not closed: {e}"),
    }
    server.assert_serving("after a silent connection");
}
