//! HTTPS: the handshake and request path over userspace rustls, with curl, `openssl s_client`
//! and a rustls client; byte-exact ranges over TLS 1.2 and 1.3, keep-alive and pipelining,
//! session resumption, SNI, ALPN, handshakes that must fail cleanly, certificate reload, the
//! `[https]` config errors and what `/metrics` and the log say about the TLS mode.
//!
//! Kernel TLS is exercised only where the kernel has the `tls` module (the development
//! kernel has none: these tests then cover the userspace path, and `https.ktls = "off"`);
//! `cargo xtask vmtest` runs real clients against kernel TLS in a VM.
//! Certificates come from a test PKI made with the `openssl` CLI
//! (`edgeplane_test_support::pki`).

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use edgeplane_test_support::prelude::*;
use rustls::version::{TLS12, TLS13};

/// The binary under test (Cargo builds it for these tests).
const BIN: &str = env!("CARGO_BIN_EXE_edgeplane");

const ALPN: &[&[u8]] = &[b"http/1.1"];

fn client(versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<rustls::ClientConfig> {
    tls_client(versions, ALPN)
}

// ---------------------------------------------------------------------------------------------
// Real clients, byte-exact
// ---------------------------------------------------------------------------------------------

#[test]
fn curl_over_tls12_and_tls13_is_byte_exact() {
    const BIG: &str = "big.mp4";
    let data = pattern(BIG, (40 << 20) + 12_345);
    let server = ServerBuilder::new(BIN)
        .https()
        .https_sni("rsa.test", PkiCert::Rsa)
        .file("flash", BIG, &data)
        .start();
    // A range of more than 32 MiB (many 1 MiB residency chunks, thousands of TLS records).
    let (first, last) = (1_000_003u64, 1_000_003 + (33 << 20) + 7);
    let cases: [(&str, &[&str], &str); 3] = [
        (
            "edgeplane.test",
            &["--tlsv1.3"],
            "SSL connection using TLSv1.3 / TLS_AES_",
        ),
        (
            "edgeplane.test",
            &["--tlsv1.2", "--tls-max", "1.2"],
            "SSL connection using TLSv1.2 / ECDHE-ECDSA-AES",
        ),
        (
            "rsa.test",
            &["--tlsv1.2", "--tls-max", "1.2"],
            "SSL connection using TLSv1.2 / ECDHE-RSA-AES",
        ),
    ];
    for (name, version, negotiated) in cases {
        let what = format!("curl {name} {version:?}");
        let mut args = server.curl_https_args(name);
        args.extend(version.iter().map(|s| s.to_string()));
        args.push("-v".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();

        let range = format!("Range: bytes={first}-{last}");
        let mut with_range = args.clone();
        with_range.extend(["-H", &range]);
        let r = curl(&with_range, &server.https_url(name, &format!("/{BIG}")));
        assert_eq!(r.exit_code, Some(0), "{what}: {r:?}");
        assert!(r.stderr.contains(negotiated), "{what}: {}", r.stderr);
        assert!(
            r.stderr.contains("ALPN: server accepted http/1.1"),
            "{what}: {}",
            r.stderr
        );
        assert_partial(&r.response(), &data, first, last, &what);

        let r = curl(
            &args,
            &server.https_url(name, &format!("/{BIG}/range/5-70004")),
        );
        assert_partial(
            &r.response(),
            &data,
            5,
            70_004,
            &format!("{what} path form"),
        );
        let tail = data.len() as u64 - 1;
        let r = curl(
            &args,
            &server.https_url(name, &format!("/{BIG}/range/{}-{}", tail - 99, tail + 50)),
        );
        assert_partial(
            &r.response(),
            &data,
            tail - 99,
            tail,
            &format!("{what} clamped"),
        );

        let r = curl(&args, &server.https_url(name, &format!("/{CANARY}")));
        assert_full(&r.response(), &canary_data(), &format!("{what} canary"));
    }
    // The plain HTTP listener still serves beside the HTTPS one.
    server.assert_serving("plain HTTP beside HTTPS");
}

#[test]
fn cold_ranges_are_read_in_before_encrypting() {
    const COLD: &str = "cold.bin";
    let data = pattern(COLD, 3 << 20);
    let server = ServerBuilder::new(BIN)
        .https()
        .file("flash", COLD, &data)
        .start();
    evict(&server.tier_dir("flash").join(COLD));
    let mut c = server.connect_tls(&client(&[&TLS13]), "edgeplane.test");
    let r = c.request("GET", &format!("/{COLD}"), &[]);
    assert_full(&r, &data, "cold object over TLS");
    let m = server.wait_metrics("a cold read", |m| {
        m.sum("edgeplane_cold_reads_total", &[("tier", "flash")]) >= 1.0
    });
    assert!(m.sum("edgeplane_io_errors_total", &[]) == 0.0, "{}", m.text);
}

/// Drops the file's clean pages from the page cache.
fn evict(path: &Path) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    // SAFETY: posix_fadvise on an open descriptor with integer arguments only.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise");
}

#[test]
fn a_thousand_keep_alive_requests_on_one_connection() {
    const SEG: &str = "seg.m4s";
    let data = pattern(SEG, (1 << 20) + 17);
    let len = data.len() as u64;
    let server = ServerBuilder::new(BIN)
        .https()
        .file("flash", SEG, &data)
        .start();
    for (version, requests) in [(&TLS13, 1000), (&TLS12, 200)] {
        let mut c = server.connect_tls(&client(&[version]), "edgeplane.test");
        assert_eq!(c.tls().alpn_protocol(), Some(&b"http/1.1"[..]), "ALPN");
        assert_eq!(c.tls().protocol_version(), Some(version.version));
        let mut rng = Rng::new(requests);
        for i in 0..requests {
            let first = rng.below(len);
            let span = if i % 50 == 0 {
                300_000
            } else {
                1 + rng.below(70_000)
            };
            let last = (first + span - 1).min(len - 1);
            let r = if i % 2 == 0 {
                c.request(
                    "GET",
                    &format!("/{SEG}"),
                    &[("Range", &format!("bytes={first}-{last}"))],
                )
            } else {
                c.request("GET", &format!("/{SEG}/range/{first}-{last}"), &[])
            };
            assert_partial(&r, &data, first, last, &format!("request {i}"));
            assert!(!r.says_close(), "request {i}: {r:?}");
        }
        // Pipelined: sixteen heads in one write, answered in order.
        let mut burst = String::new();
        for k in 0..16u64 {
            burst.push_str(&request_head(
                "GET",
                &format!("/{SEG}/range/{}-{}", k * 1000, k * 1000 + 999),
                &[],
            ));
        }
        c.send(burst.as_bytes());
        for k in 0..16u64 {
            let r = c.read_response(false);
            assert_partial(
                &r,
                &data,
                k * 1000,
                k * 1000 + 999,
                &format!("pipelined {k}"),
            );
        }
        // The last response closes; the server ends the session with close_notify.
        let r = c.request("HEAD", &format!("/{SEG}"), &[("Connection", "close")]);
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.says_close(), "{r:?}");
        assert!(c.read_to_close().unwrap(), "close_notify before the FIN");
    }
    let m = server.wait_metrics("two TLS connections", |m| {
        m.sum("edgeplane_tls_connections_total", &[("mode", "userspace")]) == 2.0
    });
    assert!(
        m.sum("edgeplane_requests_total", &[("status", "206")]) >= 1232.0,
        "{}",
        m.text
    );
}

// ---------------------------------------------------------------------------------------------
// Session resumption, SNI, ALPN
// ---------------------------------------------------------------------------------------------

/// `openssl s_client` sending one request (`Connection: close`), until the server closes.
fn s_client(server: &Server, args: &[&str]) -> String {
    let ca = server.tls_path("ca.pem");
    if !ca.exists() {
        write_file(&ca, pki().ca.as_bytes());
    }
    let mut child = Command::new("openssl")
        .arg("s_client")
        .args(["-connect", &server.https_addr().to_string()])
        .args(["-servername", "edgeplane.test", "-alpn", "http/1.1"])
        .arg("-CAfile")
        .arg(&ca)
        .arg("-ign_eof")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl s_client (install openssl with scripts/setup.sh)");
    let request = request_head("GET", &format!("/{CANARY}"), &[("Connection", "close")]);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.as_bytes())
        .unwrap();
    let deadline = Instant::now() + IO_TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("openssl s_client {args:?} did not finish");
        }
        thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn sessions_resume_with_tickets_and_session_ids() {
    let server = ServerBuilder::new(BIN).https().start();
    let cases: [(&str, &[&str]); 3] = [
        ("TLS 1.3 ticket", &["-tls1_3"]),
        ("TLS 1.2 ticket", &["-tls1_2"]),
        ("TLS 1.2 session id", &["-tls1_2", "-no_ticket"]),
    ];
    let dir = temp_dir();
    for (i, (what, version)) in cases.into_iter().enumerate() {
        let sess = dir.path().join(format!("session{i}"));
        let sess = sess.to_str().unwrap();
        let mut first_args = version.to_vec();
        first_args.extend(["-sess_out", sess]);
        let first = s_client(&server, &first_args);
        for want in [
            "New, TLSv1.",
            "Verify return code: 0 (ok)",
            "ALPN protocol: http/1.1",
            "HTTP/1.1 200 OK",
        ] {
            assert!(first.contains(want), "{what}: no {want:?} in:\n{first}");
        }
        let mut again = version.to_vec();
        again.extend(["-sess_in", sess]);
        let second = s_client(&server, &again);
        assert!(
            second.contains("Reused, TLSv1."),
            "{what}: the session was not resumed:\n{second}"
        );
        assert!(second.contains("HTTP/1.1 200 OK"), "{what}:\n{second}");
    }
}

#[test]
fn sni_picks_the_certificate() {
    let server = ServerBuilder::new(BIN)
        .https()
        .https_sni("rsa.test", PkiCert::Rsa)
        .https_sni("*.wild.test", PkiCert::Wildcard)
        .start();
    let verified = client(&[&TLS13, &TLS12]);
    let any = tls_client_any_cert();
    let cases = [
        (&verified, "edgeplane.test", PkiCert::Default),
        (&verified, "localhost", PkiCert::Default),
        (&verified, "rsa.test", PkiCert::Rsa),
        (&verified, "a.wild.test", PkiCert::Wildcard),
        // Unknown names and no SNI at all (an IP address) get the default certificate; a
        // wildcard covers exactly one label.
        (&any, "unknown.test", PkiCert::Default),
        (&any, "a.b.wild.test", PkiCert::Default),
        (&any, "wild.test", PkiCert::Default),
        (&verified, "127.0.0.1", PkiCert::Default),
    ];
    for (config, name, want) in cases {
        let mut c = server.connect_tls(config, name);
        let chain = c.tls().peer_certificates().expect("server certificates");
        assert_eq!(
            chain[0].as_ref(),
            &pki().der(want)[..],
            "{name}: want the {want:?} certificate"
        );
        let r = c.request("GET", &format!("/{CANARY}"), &[]);
        assert_full(&r, &canary_data(), name);
    }
}

#[test]
fn alpn_offers_only_http11() {
    let server = ServerBuilder::new(BIN).https().start();
    let offer = |alpn: &[&[u8]]| {
        TlsConn::connect(
            server.https_addr(),
            &tls_client(&[&TLS13], alpn),
            "edgeplane.test",
        )
    };
    let mut c = offer(&[b"h2", b"http/1.1"]).unwrap();
    assert_eq!(c.tls().alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_full(
        &c.request("GET", &format!("/{CANARY}"), &[]),
        &canary_data(),
        "h2,http/1.1",
    );
    let mut c = offer(&[]).unwrap();
    assert_eq!(c.tls().alpn_protocol(), None);
    assert_full(
        &c.request("GET", &format!("/{CANARY}"), &[]),
        &canary_data(),
        "no ALPN",
    );
    // Only h2: nothing in common, the handshake fails (no_application_protocol).
    match offer(&[b"h2"]) {
        Err(e) => assert!(format!("{e}").contains("NoApplicationProtocol"), "{e}"),
        Ok(c) => panic!("h2-only client got {:?}", c.tls().alpn_protocol()),
    }
    server.wait_metrics("the refused handshake", |m| {
        m.sum(
            "edgeplane_tls_handshake_failures_total",
            &[("reason", "protocol")],
        ) == 1.0
    });
}

// ---------------------------------------------------------------------------------------------
// Handshakes that fail
// ---------------------------------------------------------------------------------------------

/// The first flight of a real TLS client (a ClientHello).
fn client_hello() -> Vec<u8> {
    let name = rustls::pki_types::ServerName::try_from("edgeplane.test").unwrap();
    let mut conn = rustls::ClientConnection::new(client(&[&TLS13, &TLS12]), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    assert!(out.len() > 100 && out[0] == 0x16, "{out:?}");
    out
}

/// Reads until the server closes: returns what arrived, and fails on a reset or a timeout.
#[track_caller]
fn expect_clean_close(conn: &mut Conn, what: &str) -> Vec<u8> {
    use std::io::Read as _;
    let mut got = Vec::new();
    match conn.reader.read_to_end(&mut got) {
        Ok(_) => got,
        Err(e) => panic!(
            "{what}: not closed cleanly (FIN) after {} bytes: {e}",
            got.len()
        ),
    }
}

#[test]
fn bad_handshakes_close_cleanly_without_disturbing_others() {
    const TIMEOUT_MS: u64 = 1500;
    let server = ServerBuilder::new(BIN)
        .cores(1)
        .https()
        .limit("header_read_timeout_ms", TIMEOUT_MS)
        .start();
    let tls = client(&[&TLS13]);
    let mut good = server.connect_tls(&tls, "edgeplane.test");
    let canary = format!("/{CANARY}");
    assert_full(&good.request("GET", &canary, &[]), &canary_data(), "before");

    // Two that stall: nothing at all, and half a ClientHello. Both are left pending while the
    // rest runs on the same (only) core.
    let started = Instant::now();
    let mut silent = Conn::connect(server.https_addr());
    let hello = client_hello();
    let mut half_stalled = Conn::connect(server.https_addr());
    half_stalled.send(&hello[..hello.len() / 2]);

    // Garbage, and a record header announcing an impossible length: an alert, then FIN.
    for (what, bytes) in [
        (
            "garbage",
            b"\x00\x01\x02\x03 this is not TLS at all \xff\xfe".repeat(20),
        ),
        ("oversized record", vec![0x16, 0x03, 0x01, 0xff, 0xff, 0x01]),
    ] {
        let mut c = Conn::connect(server.https_addr());
        c.send(&bytes);
        let got = expect_clean_close(&mut c, what);
        assert!(
            got.is_empty() || got[0] == 0x15,
            "{what}: want nothing or a TLS alert, got {got:?}"
        );
        assert_full(&good.request("GET", &canary, &[]), &canary_data(), what);
    }

    // Plain HTTP: told so in plain HTTP, then FIN.
    let mut plain = Conn::connect(server.https_addr());
    let r = plain.request("GET", &canary, &[]);
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        String::from_utf8_lossy(&r.body).contains("HTTPS port"),
        "{r:?}"
    );
    expect_clean_close(&mut plain, "plain HTTP");

    // Half a ClientHello, then the client's FIN: closed at once.
    let mut half = Conn::connect(server.https_addr());
    half.send(&hello[..hello.len() / 2]);
    half.shutdown_write();
    let got = expect_clean_close(&mut half, "truncated ClientHello");
    assert!(got.is_empty() || got[0] == 0x15, "{got:?}");

    // Meanwhile, full handshakes and requests go on.
    assert!(
        started.elapsed() < Duration::from_millis(TIMEOUT_MS),
        "the checks above took too long to prove anything about the stalled handshakes"
    );
    for _ in 0..3 {
        let mut other = server.connect_tls(&tls, "edgeplane.test");
        assert_full(&other.request("GET", &canary, &[]), &canary_data(), "new");
    }
    assert_full(&good.request("GET", &canary, &[]), &canary_data(), "during");

    // The stalled ones are closed by the handshake timeout.
    for (what, c) in [
        ("silent", &mut silent),
        ("half ClientHello", &mut half_stalled),
    ] {
        let got = expect_clean_close(c, what);
        assert!(got.is_empty() || got[0] == 0x15, "{what}: {got:?}");
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(TIMEOUT_MS - 100),
        "stalled handshakes closed after {waited:?}, before the {TIMEOUT_MS} ms timeout"
    );
    assert_full(&good.request("GET", &canary, &[]), &canary_data(), "after");

    let m = server.wait_metrics("every failed handshake counted", |m| {
        let f = |reason| {
            m.sum(
                "edgeplane_tls_handshake_failures_total",
                &[("reason", reason)],
            )
        };
        f("timeout") == 2.0 && f("plain_http") == 1.0 && f("protocol") == 2.0 && f("closed") == 1.0
    });
    assert_eq!(
        m.sum("edgeplane_timeouts_total", &[("kind", "header")]),
        2.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.sum("edgeplane_tls_connections_total", &[("mode", "userspace")]),
        4.0,
        "{}",
        m.text
    );
    server.wait_metrics("only the good connection left open", |m| {
        m.sum("edgeplane_open_connections", &[]) == 1.0
    });
    drop(good);
}

#[test]
fn connections_over_a_cap_are_closed_without_a_handshake() {
    let server = ServerBuilder::new(BIN)
        .https()
        .limit("max_connections_per_client", 1)
        .start();
    let tls = client(&[&TLS13]);
    let mut first = server.connect_tls(&tls, "edgeplane.test");
    let mut over = Conn::connect(server.https_addr());
    over.send(&client_hello());
    let got = expect_clean_close(&mut over, "over the cap");
    assert!(
        got.is_empty(),
        "a refused connection gets no bytes: {got:?}"
    );
    let canary = format!("/{CANARY}");
    assert_full(&first.request("GET", &canary, &[]), &canary_data(), "first");
    let m = server.metrics();
    assert_eq!(
        m.sum(
            "edgeplane_connections_rejected_total",
            &[("reason", "max_connections_per_client")]
        ),
        1.0,
        "{}",
        m.text
    );
    drop(first);
    poll("the slot to free up", || {
        let mut c = TlsConn::connect(server.https_addr(), &tls, "edgeplane.test").ok()?;
        use std::io::Write as _;
        let stream = c.reader.get_mut();
        stream
            .write_all(request_head("GET", &canary, &[]).as_bytes())
            .ok()?;
        stream.flush().ok()?;
        read_http_response(&mut c.reader, false).ok()?
    });
}

// ---------------------------------------------------------------------------------------------
// Reload, mode reporting, config errors
// ---------------------------------------------------------------------------------------------

fn served_cert(server: &Server) -> Vec<u8> {
    let c = server.connect_tls(&tls_client_any_cert(), "edgeplane.test");
    c.tls().peer_certificates().unwrap()[0].to_vec()
}

#[test]
fn reload_swaps_certificates_and_keeps_them_when_the_new_ones_are_bad() {
    let server = ServerBuilder::new(BIN).https().start();
    let mut old = server.connect_tls(&client(&[&TLS13]), "edgeplane.test");
    assert_eq!(served_cert(&server), pki().der(PkiCert::Default));

    pki().write(PkiCert::Alternate, &server.root().join("tls"), "server");
    let r = server.post_reload();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        String::from_utf8_lossy(&r.body).contains("certificates: reloaded"),
        "{r:?}"
    );
    assert_eq!(served_cert(&server), pki().der(PkiCert::Alternate));
    // The connection made before the reload keeps its session.
    let canary = format!("/{CANARY}");
    assert_full(&old.request("GET", &canary, &[]), &canary_data(), "old");

    // A broken certificate: reload says so (500), the previous certificate stays in use.
    write_file(&server.tls_path("server.pem"), b"not a certificate\n");
    let r = server.post_reload();
    assert_eq!(r.status, 500, "{r:?}");
    let body = String::from_utf8_lossy(&r.body);
    assert!(
        body.contains("https.cert") && body.contains("previous ones"),
        "{body}"
    );
    assert_eq!(served_cert(&server), pki().der(PkiCert::Alternate));
    poll("the reload error in the log", || {
        server
            .output()
            .contains("TLS certificates not reloaded")
            .then_some(())
    });

    // SIGHUP reloads them too.
    pki().write(PkiCert::Default, &server.root().join("tls"), "server");
    server.signal("HUP");
    poll("SIGHUP to bring back the default certificate", || {
        (served_cert(&server) == pki().der(PkiCert::Default)).then_some(())
    });
    assert_full(
        &old.request("GET", &canary, &[]),
        &canary_data(),
        "old, after",
    );
    let m = server.metrics();
    assert_eq!(
        m.sum("edgeplane_tls_cert_reloads_total", &[("result", "ok")]),
        2.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.sum("edgeplane_tls_cert_reloads_total", &[("result", "failed")]),
        1.0,
        "{}",
        m.text
    );
}

#[test]
fn log_and_metrics_say_how_https_is_served() {
    // `auto`: kernel TLS where the kernel has the `tls` module (the development kernel has
    // none; `cargo xtask vmtest` covers a kernel that has it), user space otherwise; either way
    // the log line and the metrics agree, and every connection is counted under the mode.
    let server = ServerBuilder::new(BIN).https().start();
    let out = server.output();
    let kernel = out.contains("kernel TLS available (TCP_ULP tls)");
    assert!(
        kernel || out.contains("kernel TLS unavailable (TCP_ULP tls: "),
        "the start-up line does not say what the kernel can do:\n{out}"
    );
    if !kernel {
        assert!(
            out.contains("serving HTTPS with userspace rustls"),
            "no TLS mode line in:\n{out}"
        );
    }
    let (mode, other) = if kernel {
        ("ktls", "userspace")
    } else {
        ("userspace", "ktls")
    };
    let tls = client(&[&TLS13]);
    let canary = format!("/{CANARY}");
    for _ in 0..2 {
        let mut c = server.connect_tls(&tls, "edgeplane.test");
        assert_full(&c.request("GET", &canary, &[]), &canary_data(), mode);
    }
    let m = server.metrics();
    assert_eq!(
        m.sum("edgeplane_tls_mode", &[("mode", mode)]),
        1.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.sum("edgeplane_tls_mode", &[("mode", other)]),
        0.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.sum("edgeplane_tls_connections_total", &[("mode", mode)]),
        2.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.sum("edgeplane_tls_connections_total", &[("mode", other)]),
        0.0,
        "{}",
        m.text
    );
    for series in [
        "edgeplane_tls_ktls_fallbacks_total",
        "edgeplane_tls_ktls_closed_total",
    ] {
        assert!(m.has(series), "{series} missing:\n{}", m.text);
    }

    // `off`: user space whatever the kernel can do, and the log says why.
    let off = ServerBuilder::new(BIN).https_ktls("off").start();
    let out = off.output();
    assert!(
        out.contains("kernel TLS off (https.ktls = \"off\"): serving HTTPS with userspace rustls"),
        "{out}"
    );
    let mut c = off.connect_tls(&tls, "edgeplane.test");
    assert_full(&c.request("GET", &canary, &[]), &canary_data(), "off");
    let m = off.metrics();
    assert_eq!(m.sum("edgeplane_tls_mode", &[("mode", "userspace")]), 1.0);
    assert_eq!(
        m.sum("edgeplane_tls_connections_total", &[("mode", "userspace")]),
        1.0,
        "{}",
        m.text
    );

    // Without [https]: no listener, no mode.
    let plain = ServerBuilder::new(BIN).start();
    assert!(plain.https.is_none(), "{}", plain.ready_line);
    let m = plain.metrics();
    assert_eq!(m.sum("edgeplane_tls_mode", &[]), 0.0, "{}", m.text);
    assert!(
        m.has("edgeplane_tls_handshake_failures_total"),
        "{}",
        m.text
    );
}

#[test]
fn https_config_errors_name_the_key() {
    let dir = temp_dir();
    let root = dir.path();
    let tier = root.join("tier");
    std::fs::create_dir_all(&tier).unwrap();
    let (cert, key) = pki().write(PkiCert::Default, root, "default");
    let (rsa_cert, rsa_key) = pki().write(PkiCert::Rsa, root, "rsa");
    let missing = root.join("missing.pem");
    let d = |p: &Path| p.display().to_string();
    let section = |cert: &Path, key: &Path, extra: &str| {
        format!(
            "[https]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n{extra}",
            d(cert),
            d(key)
        )
    };
    let sni = |name: &str, cert: &Path, key: &Path| {
        format!(
            "[[https.sni]]\nname = \"{name}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            d(cert),
            d(key)
        )
    };
    let cases = [
        (section(&missing, &key, ""), "https.cert", "does not exist"),
        (section(&key, &key, ""), "https.cert", "BEGIN CERTIFICATE"),
        (section(&cert, &cert, ""), "https.key", "no private key"),
        (
            section(&cert, &rsa_key, ""),
            "https.key",
            "does not match the certificate",
        ),
        (
            section(&cert, &key, &sni("bad_name", &rsa_cert, &rsa_key)),
            "https.sni[0].name",
            "not a host name",
        ),
        (
            section(
                &cert,
                &key,
                &(sni("rsa.test", &rsa_cert, &rsa_key) + &sni("x.test", &missing, &rsa_key)),
            ),
            "https.sni[1].cert",
            "does not exist",
        ),
        (
            section(
                &cert,
                &key,
                &(sni("rsa.test", &rsa_cert, &rsa_key) + &sni("RSA.test", &rsa_cert, &rsa_key)),
            ),
            "https.sni[1].name",
            "listed twice",
        ),
        (
            format!("[https]\ncert = \"{}\"\n", d(&cert)),
            "https",
            "missing field `key`",
        ),
        (
            format!(
                "[http]\nlisten = \"127.0.0.1:18443\"\n{}",
                section(&cert, &key, "")
            )
            .replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:18443\""),
            "https.listen",
            "must differ from http.listen",
        ),
    ];
    check_all(
        cases
            .into_iter()
            .enumerate()
            .map(|(i, c)| (format!("case {i}: {}", c.1), c)),
        |name, (text, key, problem)| {
            let config = root.join("edgeplane.toml");
            let text = format!(
                "{text}\n[[tier]]\nname = \"t\"\nkind = \"flash\"\npath = \"{}\"\n",
                d(&tier)
            );
            std::fs::write(&config, &text).unwrap();
            let (status, _, err) = run_to_exit(
                BIN,
                &["check-config", "--config", config.to_str().unwrap()],
                Duration::from_secs(10),
            );
            assert_eq!(status.code(), Some(2), "{name}: {err}\nconfig:\n{text}");
            let line = err.trim();
            let prefix = format!("edgeplane: config error: {key}");
            assert!(
                line.starts_with(&prefix) && line.contains(problem) && !line.contains('\n'),
                "{name}: want one line starting {prefix:?} mentioning {problem:?}, got:\n{err}"
            );
        },
    );
}
