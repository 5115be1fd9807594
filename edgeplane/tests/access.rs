//! Who may be served: signed URLs (`[signing]`) and the served prefixes without XDP
//! (`[access] prefixes_file`), against the real binary with real clients (curl and raw sockets).
//!
//! Keys and prefixes files are written the way the agent writes them (temporary file, then
//! rename) and picked up by `POST /reload` or SIGHUP.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edgeplane_signing::{sign, sign_title, KeySet, SigningKey};
use edgeplane_test_support::prelude::*;

/// The binary under test (Cargo builds it for these tests).
const BIN: &str = env!("CARGO_BIN_EXE_edgeplane");

const SEG: &str = "seg-0001.m4s";
const SEG_LEN: usize = 300_007;

fn seg() -> Vec<u8> {
    pattern(SEG, SEG_LEN)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn key(id: &str, byte: u8) -> SigningKey {
    SigningKey {
        id: id.into(),
        secret: [byte; 32],
        not_after: now() + 3600,
    }
}

/// Writes the keys file as the agent does: a temporary file, then rename.
fn write_keys(path: &Path, keys: &[&SigningKey]) {
    let set = KeySet {
        keys: keys.iter().map(|k| (*k).clone()).collect(),
    };
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, serde_json::to_vec(&set).unwrap()).unwrap();
    fs::rename(&tmp, path).unwrap();
}

fn write_prefixes(path: &Path, prefixes: &[&str]) {
    let tmp = path.with_extension("tmp");
    let text = serde_json::json!({ "prefixes": prefixes }).to_string();
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// `?exp=…&pfx=…&kid=…&sig=…` for `object`, clients in `prefix`, valid for 10 minutes.
fn signed(key: &SigningKey, object: &str, prefix: &str) -> String {
    format!(
        "?{}",
        sign(key, object, now() + 600, prefix.parse().unwrap())
    )
}

/// `POST /reload` on a raw connection; returns the status and body.
fn post_reload(server: &Server) -> (u16, String) {
    let r = server.post_reload();
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

fn rejects(server: &Server, reason: &str) -> f64 {
    server
        .metrics()
        .sum("edgeplane_signed_url_rejects_total", &[("reason", reason)])
}

fn signing_server(keys: &[&SigningKey]) -> Server {
    let b = ServerBuilder::new(BIN).file("flash", SEG, &seg());
    let path = b.root().join("signing-keys.json");
    write_keys(&path, keys);
    b.signing_keys(&path).start()
}

#[test]
fn signed_urls_are_served_in_every_form() {
    let k = key("k1", 7);
    let server = signing_server(&[&k]);
    let q = signed(&k, SEG, "127.0.0.0/8");
    let data = seg();

    let r = curl(&[], &server.url(&format!("/{SEG}{q}")));
    assert_eq!(r.status, 200, "{r:?}");
    assert_bytes_eq(&r.body, &data, "signed GET");

    // The path-range form: the signature covers the object, not the range.
    let r = curl(&[], &server.url(&format!("/{SEG}/range/1000-65999{q}")));
    assert_eq!(r.status, 206, "{r:?}");
    assert_bytes_eq(&r.body, &data[1000..66000], "signed path range");

    // A Range header on the signed URL.
    let r = curl(&["-r", "299000-"], &server.url(&format!("/{SEG}{q}")));
    assert_eq!(r.status, 206, "{r:?}");
    assert_bytes_eq(&r.body, &data[299_000..], "signed Range header");

    // HEAD is checked too, and answered.
    let mut c = server.connect();
    let r = c.request("HEAD", &format!("/{SEG}{q}"), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("Content-Length"), Some(&*SEG_LEN.to_string()));
    let r = c.request("HEAD", &format!("/{SEG}"), &[]);
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.is_empty());

    // A CORS preflight carries no signature and needs none.
    let r = c.request(
        "OPTIONS",
        &format!("/{SEG}"),
        &[
            ("Origin", "https://player.example"),
            ("Access-Control-Request-Method", "GET"),
        ],
    );
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(rejects(&server, "unsigned"), 1.0);
}

#[test]
fn every_bad_url_is_403_by_reason_and_keeps_the_connection() {
    let k = key("k1", 7);
    let stranger = key("k9", 9);
    let server = signing_server(&[&k]);
    let good = signed(&k, SEG, "127.0.0.0/8");
    let sig_at = good.find("sig=").unwrap() + 4;
    let mut flipped = good.clone().into_bytes();
    flipped[sig_at] = if flipped[sig_at] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let exp = good.split('&').next().unwrap().trim_start_matches("?exp=");
    let later = (exp.parse::<u64>().unwrap() + 1).to_string();
    let expired = format!(
        "?{}",
        sign(&k, SEG, now() - 5, "127.0.0.0/8".parse().unwrap())
    );

    let cases: Vec<(&str, String, &str)> = vec![
        ("no query", String::new(), "unsigned"),
        ("empty query", "?".into(), "unsigned"),
        ("other parameters", "?token=abc".into(), "malformed"),
        ("flipped signature", flipped, "bad_signature"),
        (
            "changed expiry",
            good.replace(&format!("exp={exp}"), &format!("exp={later}")),
            "bad_signature",
        ),
        (
            "changed prefix (still holding the client)",
            good.replace("pfx=127.0.0.0/8", "pfx=127.0.0.0/16"),
            "bad_signature",
        ),
        (
            "signed for another object",
            signed(&k, "other.m4s", "127.0.0.0/8"),
            "bad_signature",
        ),
        ("expired", expired, "expired"),
        (
            "another client network",
            signed(&k, SEG, "10.9.9.0/24"),
            "wrong_prefix",
        ),
        (
            "a key the server does not hold",
            signed(&stranger, SEG, "127.0.0.0/8"),
            "unknown_key",
        ),
    ];
    // All on one keep-alive connection: a 403 does not close it.
    let mut c = server.connect();
    for (what, query, reason) in &cases {
        let before = rejects(&server, reason);
        let r = c.request("GET", &format!("/{SEG}{query}"), &[]);
        assert_eq!(r.status, 403, "{what}: {r:?}");
        assert_eq!(r.body, b"403 Forbidden\n", "{what}");
        assert_ne!(r.header("Connection"), Some("close"), "{what}: {r:?}");
        assert_eq!(rejects(&server, reason), before + 1.0, "{what}: {reason}");
        // The path-range form is refused the same way.
        let r = c.request("GET", &format!("/{SEG}/range/0-9{query}"), &[]);
        assert_eq!(r.status, 403, "{what} (path range): {r:?}");
    }
    let r = c.request("GET", &format!("/{SEG}{good}"), &[]);
    assert_eq!(r.status, 200, "the same connection still serves: {r:?}");
    assert_bytes_eq(&r.body, &seg(), "after refusals");

    // Every reason is on /metrics from the start (here: counted above).
    let m = server.metrics();
    for reason in edgeplane_signing::Reject::ALL {
        assert!(
            m.matching(
                "edgeplane_signed_url_rejects_total",
                &[("reason", reason.label())]
            )
            .count()
                == 1,
            "{}",
            m.text
        );
    }
    assert_eq!(m.sum("edgeplane_signing_enabled", &[]), 1.0);
    assert_eq!(m.sum("edgeplane_signing_keys", &[]), 1.0);
}

/// The signature is checked before the catalog: an object that does not exist is 403 to an
/// unsigned request (nothing learned, no disk touched) and 404 only to a signed one.
#[test]
fn the_signature_is_checked_before_the_catalog() {
    let k = key("k1", 7);
    let server = signing_server(&[&k]);
    let r = server.get("/no-such-object.m4s", &[]);
    assert_eq!(r.status, 403, "{r:?}");
    let r = server.get("/no-such-object.m4s/range/0-9?exp=1&pfx=x", &[]);
    assert_eq!(r.status, 403, "{r:?}");
    let q = signed(&k, "no-such-object.m4s", "127.0.0.0/8");
    let r = server.get(&format!("/no-such-object.m4s{q}"), &[]);
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(
        server
            .metrics()
            .sum("edgeplane_requests_total", &[("status", "404")]),
        1.0
    );
}

#[test]
fn https_checks_signatures_too() {
    let k = key("k1", 7);
    let b = ServerBuilder::new(BIN).https().file("flash", SEG, &seg());
    let path = b.root().join("signing-keys.json");
    write_keys(&path, &[&k]);
    let server = b.signing_keys(&path).start();
    let args = server.curl_https_args("edgeplane.test");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let q = signed(&k, SEG, "127.0.0.0/8");
    let r = curl(
        &args,
        &server.https_url("edgeplane.test", &format!("/{SEG}{q}")),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_bytes_eq(&r.body, &seg(), "signed HTTPS GET");
    let r = curl(
        &args,
        &server.https_url("edgeplane.test", &format!("/{SEG}")),
    );
    assert_eq!(r.status, 403, "{r:?}");
    let r = curl(
        &args,
        &server.https_url(
            "edgeplane.test",
            &format!("/{SEG}{}", signed(&k, SEG, "10.9.9.0/24")),
        ),
    );
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(rejects(&server, "wrong_prefix"), 1.0);
}

#[test]
fn keys_rotate_by_rewriting_the_file_and_reloading() {
    let k1 = key("k1", 1);
    let k2 = key("k2", 2);
    let server = signing_server(&[&k1]);
    let path = server.root().join("signing-keys.json");
    let u1 = format!("/{SEG}{}", signed(&k1, SEG, "127.0.0.0/8"));
    let u2 = format!("/{SEG}{}", signed(&k2, SEG, "127.0.0.0/8"));
    assert_eq!(server.get(&u1, &[]).status, 200);
    assert_eq!(server.get(&u2, &[]).status, 403);
    assert_eq!(rejects(&server, "unknown_key"), 1.0);

    // The agent adds the new key (keeping the old one for the overlap) and reloads.
    write_keys(&path, &[&k1, &k2]);
    let (status, body) = post_reload(&server);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("signing keys: 2 loaded"), "{body}");
    assert_eq!(server.get(&u1, &[]).status, 200);
    let r = server.get(&u2, &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_bytes_eq(&r.body, &seg(), "under the new key");

    // The overlap ends: the old key goes; SIGHUP reloads as well.
    write_keys(&path, &[&k2]);
    server.signal("HUP");
    let deadline = Instant::now() + POLL_TIMEOUT;
    while server.get(&u1, &[]).status != 403 {
        assert!(Instant::now() < deadline, "SIGHUP never dropped k1");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(server.get(&u2, &[]).status, 200);
}

/// Signing on and no usable keys file: the server starts, says why, and refuses every object
/// request until the file appears and a reload reads it.
#[test]
fn a_missing_or_broken_keys_file_refuses_everything() {
    let k = key("k1", 7);
    let b = ServerBuilder::new(BIN).file("flash", SEG, &seg());
    let path = b.root().join("keys").join("signing-keys.json");
    let server = b.signing_keys(&path).start();
    let out = server.output();
    assert!(
        out.contains("signing keys not loaded") && out.contains(&path.display().to_string()),
        "the warning names the file:\n{out}"
    );
    let u = format!("/{SEG}{}", signed(&k, SEG, "127.0.0.0/8"));
    assert_eq!(server.get(&u, &[]).status, 403);
    assert_eq!(server.get(&format!("/{SEG}"), &[]).status, 403);
    assert_eq!(server.metrics().sum("edgeplane_signing_keys", &[]), 0.0);

    fs::create_dir_all(path.parent().unwrap()).unwrap();
    write_keys(&path, &[&k]);
    let (status, body) = post_reload(&server);
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.get(&u, &[]).status, 200);

    // A broken file is not a reason to keep serving with old keys: refuse, and say so.
    fs::write(&path, "{\"keys\": [").unwrap();
    let (status, body) = post_reload(&server);
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("signing keys: NOT loaded") && body.contains("signing-keys.json"),
        "{body}"
    );
    assert_eq!(server.get(&u, &[]).status, 403);
}

#[test]
fn with_signing_off_plain_urls_are_served() {
    let server = ServerBuilder::new(BIN).file("flash", SEG, &seg()).start();
    let r = curl(&[], &server.url(&format!("/{SEG}")));
    assert_eq!(r.status, 200, "{r:?}");
    assert_bytes_eq(&r.body, &seg(), "unsigned, signing off");
    // A query string is ignored.
    assert_eq!(server.get(&format!("/{SEG}?exp=1"), &[]).status, 200);
    let m = server.metrics();
    assert_eq!(m.sum("edgeplane_signing_enabled", &[]), 0.0);
    assert_eq!(m.sum("edgeplane_signed_url_rejects_total", &[]), 0.0);
    assert!(!m.has("edgeplane_access_prefixes"), "{}", m.text);
}

/// Expects the server to close a fresh connection without answering.
#[track_caller]
fn assert_closed_unanswered(server: &Server, context: &str) {
    let mut c = server.connect();
    // The request may or may not get out before the close; either way no byte comes back.
    let _ = c.try_send(request_head("GET", &format!("/{CANARY}"), &[]).as_bytes());
    match c.try_read_response(false) {
        Ok(None) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("{context}: want a close without a response, got {other:?}"),
    }
}

fn prefix_rejects(server: &Server) -> f64 {
    server.metrics().sum(
        "edgeplane_connections_rejected_total",
        &[("reason", "prefix")],
    )
}

#[test]
fn only_listed_prefixes_may_connect() {
    let b = ServerBuilder::new(BIN);
    let path = b.root().join("prefixes.json");
    write_prefixes(&path, &["203.0.113.0/24", "127.0.0.0/8", "2001:db8::/32"]);
    let server = b.prefixes_file(&path).start();
    server.assert_serving("127.0.0.0/8 listed");
    let m = server.metrics();
    assert_eq!(m.sum("edgeplane_access_prefixes", &[]), 3.0, "{}", m.text);
    assert_eq!(prefix_rejects(&server), 0.0);

    // The agent narrows the set to a network this client is not in.
    write_prefixes(&path, &["10.0.0.0/8"]);
    let (status, body) = post_reload(&server);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("prefixes: 1 loaded"), "{body}");
    assert_closed_unanswered(&server, "only 10.0.0.0/8 listed");
    assert_closed_unanswered(&server, "only 10.0.0.0/8 listed, again");
    assert_eq!(prefix_rejects(&server), 2.0);
    assert_eq!(server.metrics().sum("edgeplane_access_prefixes", &[]), 1.0);

    // And back.
    write_prefixes(&path, &["10.0.0.0/8", "127.0.0.1/32"]);
    let (status, _) = post_reload(&server);
    assert_eq!(status, 200);
    server.assert_serving("127.0.0.1/32 listed again");

    // The file disappears: fail closed, and the reload says so.
    fs::remove_file(&path).unwrap();
    let (status, body) = post_reload(&server);
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("prefixes: NOT loaded"), "{body}");
    assert_closed_unanswered(&server, "prefixes file missing");
    assert_eq!(prefix_rejects(&server), 3.0);
}

#[test]
fn a_missing_prefixes_file_denies_every_client_from_the_start() {
    let b = ServerBuilder::new(BIN);
    let path = b.root().join("no-prefixes.json");
    let server = b.prefixes_file(&path).start();
    let out = server.output();
    assert!(
        out.contains("served prefixes not loaded") && out.contains("no-prefixes.json"),
        "the error names the file:\n{out}"
    );
    assert_closed_unanswered(&server, "no prefixes file");
    assert_eq!(prefix_rejects(&server), 1.0);
    write_prefixes(&path, &["127.0.0.0/8"]);
    let (status, body) = post_reload(&server);
    assert_eq!(status, 200, "{body}");
    server.assert_serving("after the file appeared");
}

/// The per-title token form `/tok/<token>/<id>`: one token serves every object of its title
/// (whole, by path range, by Range header), and is refused (403, by reason, before the
/// catalog) for another title's object, after it expires, from another client network, with
/// any field tampered.
#[test]
fn per_title_tokens_serve_their_title_only() {
    const A: &str = "t0007-720p-0003.m4s";
    const A2: &str = "t0007-1080p-0001.m4s";
    const OTHER: &str = "t0008-720p-0003.m4s";
    let k = key("k1", 7);
    let stranger = key("k9", 9);
    let b = ServerBuilder::new(BIN)
        .file("flash", A, &pattern(A, SEG_LEN))
        .file("flash", A2, &pattern(A2, 1000))
        .file("flash", OTHER, &pattern(OTHER, 1000));
    let path = b.root().join("signing-keys.json");
    write_keys(&path, &[&k]);
    let server = b.signing_keys(&path).start();
    let local = "127.0.0.0/8".parse().unwrap();
    let tok = sign_title(&k, "t0007-", now() + 600, local);
    assert!(
        tok.starts_with("t0007-~") && tok.contains("~127.0.0.0_8~k1~"),
        "{tok}"
    );
    let data = pattern(A, SEG_LEN);

    // As a player resolves a relative URL against `…/tok/<token>/`.
    let base = server.url(&format!("/tok/{tok}/"));
    let r = curl(&[], &format!("{base}{A}"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_bytes_eq(&r.body, &data, "token GET");
    let r = curl(&[], &format!("{base}{A2}"));
    assert_eq!(r.status, 200, "another object of the title: {r:?}");
    assert_bytes_eq(&r.body, &pattern(A2, 1000), "token GET, other rendition");
    let r = curl(&["-r", "1000-65999"], &format!("{base}{A}"));
    assert_eq!(r.status, 206, "{r:?}");
    assert_bytes_eq(&r.body, &data[1000..66000], "token Range header");
    let r = curl(&[], &format!("{base}{A}/range/299000-300006"));
    assert_eq!(r.status, 206, "{r:?}");
    assert_bytes_eq(&r.body, &data[299_000..], "token path range");
    // A missing object of the title is 404 once the token verifies.
    let r = curl(&[], &format!("{base}t0007-720p-9999.m4s"));
    assert_eq!(r.status, 404, "{r:?}");

    let sig_at = tok.rfind('~').unwrap() + 1;
    let mut flipped = tok.clone().into_bytes();
    flipped[sig_at] = if flipped[sig_at] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let exp = tok.split('~').nth(1).unwrap();
    let later = (exp.parse::<u64>().unwrap() + 1).to_string();
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "another title's object",
            tok.clone(),
            OTHER,
            "bad_signature",
        ),
        (
            "expired",
            sign_title(&k, "t0007-", now() - 5, local),
            A,
            "expired",
        ),
        (
            "another client network",
            sign_title(&k, "t0007-", now() + 600, "10.9.9.0/24".parse().unwrap()),
            A,
            "wrong_prefix",
        ),
        ("flipped signature", flipped, A, "bad_signature"),
        (
            "changed expiry",
            tok.replace(&format!("~{exp}~"), &format!("~{later}~")),
            A,
            "bad_signature",
        ),
        (
            "widened id-prefix",
            tok.replacen("t0007-~", "t000~", 1),
            OTHER,
            "bad_signature",
        ),
        (
            "changed prefix (still holding the client)",
            tok.replace("~127.0.0.0_8~", "~127.0.0.0_16~"),
            A,
            "bad_signature",
        ),
        (
            "a key the server does not hold",
            sign_title(&stranger, "t0007-", now() + 600, local),
            A,
            "unknown_key",
        ),
        ("not a token", "t0007-".into(), A, "malformed"),
    ];
    let mut c = server.connect();
    for (what, token, id, reason) in &cases {
        let before = rejects(&server, reason);
        let r = curl(&[], &server.url(&format!("/tok/{token}/{id}")));
        assert_eq!(r.status, 403, "{what}: {r:?}");
        assert_eq!(rejects(&server, reason), before + 1.0, "{what}: {reason}");
        let r = c.request("GET", &format!("/tok/{token}/{id}/range/0-9"), &[]);
        assert_eq!(r.status, 403, "{what} (path range): {r:?}");
    }
    // A good per-object query does not rescue a bad token: the token form checks the token.
    let r = c.request(
        "GET",
        &format!("/tok/{}/{OTHER}{}", tok, signed(&k, OTHER, "127.0.0.0/8")),
        &[],
    );
    assert_eq!(r.status, 403, "{r:?}");
    // Checked before the catalog: an unknown id under a bad token is 403, not 404.
    let r = c.request("GET", &format!("/tok/{tok}/t0009-x.m4s"), &[]);
    assert_eq!(r.status, 403, "{r:?}");
    // The query form keeps working beside it.
    let r = c.request("GET", &format!("/{A}{}", signed(&k, A, "127.0.0.0/8")), &[]);
    assert_eq!(r.status, 200, "{r:?}");
}
