//! The admin listener: /healthz, /metrics, /reload (and SIGHUP), and what a rescan changes.

use std::fs;

use edgeplane_test_support::prelude::*;

/// The binary under test (Cargo builds it for these tests).
const BIN: &str = env!("CARGO_BIN_EXE_edgeplane");

const DOCUMENTED_METRICS: [&str; 7] = [
    "edgeplane_requests_total",
    "edgeplane_response_bytes_total",
    "edgeplane_cold_reads_total",
    "edgeplane_open_connections",
    "edgeplane_ttfb_seconds",
    "edgeplane_request_duration_seconds",
    "edgeplane_catalog_objects",
];

fn two_tiers() -> Server {
    ServerBuilder::new(BIN)
        .tier("storage", "storage")
        .file("flash", "f.mp4", &pattern("f.mp4", 500_000))
        .file("storage", "s.mp4", &pattern("s.mp4", 300_000))
        .start()
}

#[test]
fn healthz() {
    let server = ServerBuilder::new(BIN).start();
    let r = server.admin_get("/healthz");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(String::from_utf8_lossy(&r.body).trim(), "ok", "{r:?}");
    let u = ureq_request(&ureq_agent(), "GET", &server.admin_url("/healthz"), &[]);
    assert_eq!(u.status, 200);
    let c = curl(&[], &server.admin_url("/healthz"));
    assert_eq!((c.exit_code, c.status), (Some(0), 200), "{c:?}");
    // Unknown admin paths are 404.
    let r = server.admin_get("/nope");
    assert_eq!(r.status, 404, "{r:?}");
}

#[test]
fn metrics_has_the_documented_names() {
    let server = two_tiers();
    // Some traffic first, so that every labelled series has a reason to exist.
    let r = server.get("/f.mp4", &[("Range", "bytes=0-9")]);
    assert_eq!(r.status, 206);
    let r = server.get("/s.mp4", &[]);
    assert_eq!(r.status, 200);
    let r = server.admin_get("/metrics");
    assert_eq!(r.status, 200, "{r:?}");
    let ct = r.expect_header("content-type");
    assert!(ct.starts_with("text/plain"), "Content-Type {ct:?}");
    let m = server.wait_metrics("both requests counted", |m| {
        m.sum("edgeplane_requests_total", &[("status", "206")]) >= 1.0
            && m.sum("edgeplane_requests_total", &[("status", "200")]) >= 1.0
    });
    for name in DOCUMENTED_METRICS {
        assert!(m.has(name), "/metrics lacks {name}:\n{}", m.text);
    }
    for tier in ["flash", "storage"] {
        for name in [
            "edgeplane_response_bytes_total",
            "edgeplane_cold_reads_total",
            "edgeplane_catalog_objects",
        ] {
            assert!(
                m.matching(name, &[("tier", tier)]).next().is_some(),
                "/metrics lacks {name}{{tier=\"{tier}\"}}:\n{}",
                m.text
            );
        }
    }
    for name in [
        "edgeplane_ttfb_seconds",
        "edgeplane_request_duration_seconds",
    ] {
        let qs: Vec<&Sample> = m
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels.contains_key("quantile"))
            .collect();
        assert!(!qs.is_empty(), "{name} has no quantile series:\n{}", m.text);
        for s in qs {
            assert!(
                s.value.is_finite() && s.value >= 0.0,
                "{name} quantile {:?} = {}",
                s.labels,
                s.value
            );
        }
    }
    // The catalog: canary + f.mp4 in flash, s.mp4 in storage.
    assert_eq!(
        m.sum("edgeplane_catalog_objects", &[("tier", "flash")]),
        2.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.sum("edgeplane_catalog_objects", &[("tier", "storage")]),
        1.0,
        "{}",
        m.text
    );
}

#[test]
fn counters_follow_the_traffic() {
    let server = two_tiers();
    let f = pattern("f.mp4", 500_000);
    let s = pattern("s.mp4", 300_000);
    let m0 = server.metrics();
    let c206 = |m: &Metrics| m.sum("edgeplane_requests_total", &[("status", "206")]);
    let c404 = |m: &Metrics| m.sum("edgeplane_requests_total", &[("status", "404")]);
    let bytes =
        |m: &Metrics, tier: &str| m.sum("edgeplane_response_bytes_total", &[("tier", tier)]);

    let mut conn = server.connect();
    let mut flash_body = 0u64;
    for (a, b) in [
        (0, 99),
        (1000, 50_999),
        (499_000, 499_999),
        (7, 7),
        (10, 200_009),
    ] {
        let r = conn.request("GET", "/f.mp4", &[("Range", &format!("bytes={a}-{b}"))]);
        assert_partial(&r, &f, a, b, "flash range");
        flash_body += b - a + 1;
    }
    let mut storage_body = 0u64;
    for (a, b) in [(0, 65_535), (100_000, 299_999)] {
        let r = conn.request("GET", &format!("/s.mp4/range/{a}-{b}"), &[]);
        assert_partial(&r, &s, a, b, "storage range");
        storage_body += b - a + 1;
    }
    let r = conn.request("GET", "/missing.mp4", &[]);
    assert_eq!(r.status, 404);

    let m1 = server.wait_metrics("7 more 206s and 1 more 404", |m| {
        c206(m) >= c206(&m0) + 7.0 && c404(m) >= c404(&m0) + 1.0
    });
    assert_eq!(
        c206(&m1),
        c206(&m0) + 7.0,
        "exactly 7 new 206s:\n{}",
        m1.text
    );
    assert_eq!(
        c404(&m1),
        c404(&m0) + 1.0,
        "exactly 1 new 404:\n{}",
        m1.text
    );

    let m1 = server.wait_metrics("response bytes counted", |m| {
        bytes(m, "flash") - bytes(&m0, "flash") >= flash_body as f64
            && bytes(m, "storage") - bytes(&m0, "storage") >= storage_body as f64
    });
    // Attributed to the right tier: storage grew by its bodies (plus at most the heads).
    let storage_delta = bytes(&m1, "storage") - bytes(&m0, "storage");
    assert!(
        storage_delta <= (storage_body + 2 * 4096) as f64,
        "storage bytes grew by {storage_delta}, its bodies were {storage_body}:\n{}",
        m1.text
    );
    let flash_delta = bytes(&m1, "flash") - bytes(&m0, "flash");
    assert!(
        flash_delta <= (flash_body + 5 * 4096 + 4096) as f64,
        "flash bytes grew by {flash_delta}, its bodies were {flash_body}:\n{}",
        m1.text
    );
}

#[test]
fn reload_picks_up_added_and_removed_files() {
    let server = ServerBuilder::new(BIN).start();
    let dir = server.tier_dir("flash");
    let data = pattern("new.mp4", 123_456);

    // A keep-alive connection that lives across the reloads.
    let mut conn = server.connect();
    let r = conn.request("GET", "/canary.bin", &[]);
    assert_eq!(r.status, 200);
    let objects = |m: &Metrics| m.sum("edgeplane_catalog_objects", &[("tier", "flash")]);
    assert_eq!(objects(&server.metrics()), 1.0);

    write_file(&dir.join("new.mp4"), &data);
    server.reload();
    let r = conn.request("GET", "/new.mp4", &[]);
    assert_full(
        &r,
        &data,
        "added file, on the connection opened before the reload",
    );
    let r = server.get("/new.mp4", &[("Range", "bytes=100-199")]);
    assert_partial(&r, &data, 100, 199, "added file, new connection");
    assert_eq!(objects(&server.metrics()), 2.0);

    fs::remove_file(dir.join("new.mp4")).unwrap();
    server.reload();
    let r = conn.request("GET", "/new.mp4", &[]);
    assert_eq!(r.status, 404, "removed file after reload: {r:?}");
    let r = server.get("/new.mp4", &[]);
    assert_eq!(
        r.status, 404,
        "removed file after reload, new connection: {r:?}"
    );
    assert_eq!(objects(&server.metrics()), 1.0);

    let r = conn.request("GET", "/canary.bin", &[]);
    assert_full(&r, &canary_data(), "the old connection after two reloads");
}

#[test]
fn reload_on_sighup() {
    let server = ServerBuilder::new(BIN).cores(2).start();
    let dir = server.tier_dir("flash");
    let data = pattern("hup.ts", 9_999);
    let mut conn = server.connect();
    assert_eq!(conn.request("GET", "/canary.bin", &[]).status, 200);

    write_file(&dir.join("hup.ts"), &data);
    server.signal("HUP");
    poll("hup.ts to be served after SIGHUP", || {
        let r = server.get("/hup.ts", &[]);
        (r.status == 200).then_some(r)
    });
    // Every executor has the new catalog: several fresh connections all get it.
    for i in 0..8 {
        let r = server.get("/hup.ts", &[]);
        assert_full(&r, &data, &format!("after SIGHUP, connection {i}"));
    }
    let r = conn.request("GET", "/hup.ts", &[]);
    assert_full(&r, &data, "after SIGHUP, on the old connection");

    fs::remove_file(dir.join("hup.ts")).unwrap();
    server.signal("HUP");
    poll("hup.ts to be gone after the second SIGHUP", || {
        (server.get("/hup.ts", &[]).status == 404).then_some(())
    });
    for i in 0..8 {
        let r = server.get("/hup.ts", &[]);
        assert_eq!(
            r.status, 404,
            "after the second SIGHUP, connection {i}: {r:?}"
        );
    }
    assert_full(
        &conn.request("GET", "/canary.bin", &[]),
        &canary_data(),
        "old connection after SIGHUPs",
    );
}

#[test]
fn replaced_file_gets_new_content_and_etag_after_reload() {
    let server = ServerBuilder::new(BIN)
        .file("flash", "v.mp4", &pattern("v1", 50_000))
        .start();
    let r1 = server.get("/v.mp4", &[]);
    assert_full(&r1, &pattern("v1", 50_000), "v1");
    let etag1 = r1.expect_header("etag").to_owned();

    // Write the new version beside it and rename over it (as a publisher would).
    let dir = server.tier_dir("flash");
    let v2 = pattern("v2", 60_001);
    write_file(&dir.join(".v.mp4.tmp"), &v2);
    fs::rename(dir.join(".v.mp4.tmp"), dir.join("v.mp4")).unwrap();
    server.reload();

    let r2 = server.get("/v.mp4", &[]);
    assert_full(&r2, &v2, "v2 after reload");
    let etag2 = r2.expect_header("etag").to_owned();
    assert_ne!(etag1, etag2, "new content, same ETag");
    // The old ETag no longer validates.
    let r = server.get("/v.mp4", &[("If-None-Match", &etag1)]);
    assert_full(&r, &v2, "If-None-Match with the old ETag");
    let r = server.get("/v.mp4", &[("Range", "bytes=0-9"), ("If-Range", &etag1)]);
    assert_full(&r, &v2, "If-Range with the old ETag");
}

/// A file deleted behind the server's back (no reload): a 404, or the old bytes exactly; never
/// a broken response, a hang or a crash.
#[test]
fn file_deleted_without_reload() {
    let data = pattern("gone.mp4", 200_000);
    let server = ServerBuilder::new(BIN)
        .file("flash", "gone.mp4", &data)
        .start();
    assert_eq!(server.get("/gone.mp4", &[]).status, 200);
    fs::remove_file(server.tier_dir("flash").join("gone.mp4")).unwrap();
    let mut c = server.connect();
    let r = c.request("GET", "/gone.mp4", &[("Range", "bytes=1000-1999")]);
    match r.status {
        404 => {}
        206 => assert_partial(&r, &data, 1000, 1999, "deleted file served from an open fd"),
        _ => panic!("deleted file: want 404 (or the old bytes): {r:?}"),
    }
    c.expect_usable_or_closed(&r, "deleted file");
    server.assert_serving("after a deleted file");
}

/// A file truncated behind the server's back (no reload): the server must not hang or send a
/// body that disagrees with its headers on a connection it keeps open.
#[test]
fn file_truncated_without_reload() {
    let data = pattern("shrink.mp4", 2_000_000);
    let server = ServerBuilder::new(BIN)
        .file("flash", "shrink.mp4", &data)
        .start();
    assert_eq!(
        server.get("/shrink.mp4", &[("Range", "bytes=0-0")]).status,
        206
    );
    let f = fs::File::options()
        .write(true)
        .open(server.tier_dir("flash").join("shrink.mp4"))
        .unwrap();
    f.set_len(1000).unwrap();
    f.sync_all().unwrap();
    drop(f);

    let mut c = server.connect();
    c.send(request_head("GET", "/shrink.mp4", &[("Range", "bytes=500000-1499999")]).as_bytes());
    match c.try_read_response(false) {
        // Closed, before or during the body: acceptable (the object changed under us).
        Ok(None) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Some(r)) => {
            // A complete response: either an error/416 or the body it announced.
            assert!(
                matches!(r.status, 404 | 416 | 500 | 503) || r.status == 206,
                "truncated file: {r:?}"
            );
            c.expect_usable_or_closed(&r, "truncated file");
        }
        Err(e) => panic!("truncated file: the server hung or sent garbage: {e}"),
    }
    server.assert_serving("after a truncated file");
}

#[test]
fn reload_needs_post() {
    let server = ServerBuilder::new(BIN).start();
    let r = server.admin_get("/reload");
    assert!(matches!(r.status, 404 | 405), "GET /reload: {r:?}");
    // The admin listener does not serve content, and the http listener does not serve admin.
    let r = server.admin_get("/canary.bin");
    assert_eq!(r.status, 404, "content on the admin listener: {r:?}");
    let mut c = server.connect();
    let r = c.request("POST", "/reload", &[("Content-Length", "0")]);
    assert_ne!(r.status, 200, "POST /reload on the http listener: {r:?}");
}
