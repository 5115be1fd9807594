//! Start-up and shutdown: the ready line, SIGTERM/SIGINT with and without work in flight.

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use edgeplane_test_support::prelude::*;

/// The binary under test (Cargo builds it for these tests).
const BIN: &str = env!("CARGO_BIN_EXE_edgeplane");

const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

#[test]
fn ready_line_reports_addresses_and_cores() {
    for cores in [1, 2] {
        let server = ServerBuilder::new(BIN).cores(cores).start();
        assert_eq!(
            server.ready_cores,
            Some(cores),
            "ready line {:?} should say cores={cores}",
            server.ready_line
        );
        assert!(server.http.ip().is_loopback() && server.http.port() != 0);
        assert!(server.admin.ip().is_loopback() && server.admin.port() != 0);
        assert_ne!(server.http, server.admin);
        server.assert_serving("right after the ready line");
        assert_eq!(server.admin_get("/healthz").status, 200);
    }
}

#[track_caller]
fn expect_clean_exit(server: &mut Server, what: &str) {
    match server.wait_exit(EXIT_TIMEOUT) {
        Some(status) => assert_eq!(
            status.code(),
            Some(0),
            "{what}: exit status {}; output:\n{}",
            describe_status(Some(status)),
            server.output()
        ),
        None => panic!(
            "{what}: still running {} s after the signal; output:\n{}",
            EXIT_TIMEOUT.as_secs(),
            server.output()
        ),
    }
}

#[test]
fn sigterm_and_sigint_exit_zero() {
    for sig in ["TERM", "INT"] {
        let mut server = ServerBuilder::new(BIN).cores(2).start();
        server.assert_serving("before the signal");
        // An idle keep-alive connection must not keep the server alive (the default idle
        // timeout is 60 s, longer than EXIT_TIMEOUT).
        let mut idle = server.connect();
        assert_eq!(idle.request("GET", "/canary.bin", &[]).status, 200);
        server.signal(sig);
        expect_clean_exit(&mut server, &format!("SIG{sig}"));
        idle.expect_closed(&format!("idle connection at SIG{sig}"));
    }
}

/// SIGTERM while a large response is being read: the response completes byte-exact, new
/// connections are no longer served, then the process exits 0.
#[test]
fn sigterm_finishes_in_flight_responses() {
    const LEN: usize = 24 << 20;
    let data = pattern("inflight.mp4", LEN);
    let mut server = ServerBuilder::new(BIN)
        .file("flash", "inflight.mp4", &data)
        .start();
    let mut conn = server.connect();
    conn.send(request_head("GET", "/inflight.mp4", &[]).as_bytes());
    let head = conn.read_head();
    assert!(head.starts_with("HTTP/1.1 200"), "{head:?}");
    let mut body = vec![0u8; 4096];
    conn.reader.read_exact(&mut body).unwrap();

    server.signal("TERM");
    // Stop accepting: new connections are refused or closed unanswered, while the old
    // response (stalled by us) is still in flight.
    poll("new connections to be refused after SIGTERM", || {
        let Ok(s) = TcpStream::connect(server.http) else {
            return Some(());
        };
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut c = Conn {
            reader: std::io::BufReader::new(s),
            peer: server.http,
        };
        let _ = c.try_send(request_head("GET", "/canary.bin", &[]).as_bytes());
        match c.try_read_response(false) {
            Ok(Some(r)) if r.status == 200 => None,
            _ => Some(()),
        }
    });
    assert!(
        server.is_running(),
        "exited before the in-flight response was read"
    );

    let mut rest = Vec::new();
    conn.reader.read_to_end(&mut rest).unwrap();
    body.extend_from_slice(&rest);
    assert_eq!(body.len(), LEN, "in-flight body cut short by SIGTERM");
    assert_eq!(
        sha256_hex(&body),
        sha256_hex(&data),
        "in-flight body after SIGTERM"
    );
    expect_clean_exit(&mut server, "SIGTERM with a response in flight");
}
