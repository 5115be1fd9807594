//! A disk that fails takes out its tier, and comes back with it: the tier watcher checks each
//! tier directory every `io.tier_check_interval_ms` and at once after an I/O error while
//! serving; a tier that fails leaves the catalog (its objects 404, or come from another tier
//! that holds them) and `edgeplane_tier_up` reads 0 until it passes again. `GET /catalog`
//! shows the same state as JSON.
//!
//! "Failing" here is the directory disappearing (renamed away), which is what a dead or
//! unmounted disk looks like to the data plane; no timing is asserted, only polled for.

use std::fs;
use std::time::{Duration, Instant};

use edgeplane_test_support::prelude::*;
use serde_json::Value;

/// The binary under test (Cargo builds it for these tests).
const BIN: &str = env!("CARGO_BIN_EXE_edgeplane");

const A: &str = "a-flash-only.bin";
const B: &str = "b-hdd-only.bin";
const BOTH: &str = "both.bin";

fn builder(interval_ms: &str) -> ServerBuilder {
    ServerBuilder::new(BIN)
        .tier("hdd", "storage")
        .io("tier_check_interval_ms", interval_ms)
        .file("flash", A, &pattern(A, 70_001))
        .file("hdd", B, &pattern(B, 90_003))
        .file("flash", BOTH, &pattern("flash copy", 5_000))
        .file("hdd", BOTH, &pattern("hdd copy", 6_000))
}

/// Polls `GET path` on fresh connections until it answers `status`.
#[track_caller]
fn wait_status(server: &Server, path: &str, status: u16, what: &str) -> Response {
    let deadline = Instant::now() + POLL_TIMEOUT;
    loop {
        let r = server.get(path, &[]);
        if r.status == status {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {path} never answered {status}; last: {r:?}\n{}",
            server.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn catalog_page(server: &Server, query: &str) -> Value {
    let r = server.admin_get(&format!("/catalog{query}"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("GET /catalog: {e}: {r:?}"))
}

/// `GET /catalog` once its byte counts are in (a low-priority thread counts the sizes after
/// each scan; `bytes_counted` says when it is done).
fn catalog(server: &Server) -> Value {
    poll("GET /catalog with its sizes counted", || {
        Some(catalog_page(server, "")).filter(|c| c["bytes_counted"] == true)
    })
}

fn tier<'a>(catalog: &'a Value, name: &str) -> &'a Value {
    catalog["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no tier {name} in {catalog}"))
}

fn tier_up(server: &Server, name: &str) -> f64 {
    server.metrics().sum("edgeplane_tier_up", &[("tier", name)])
}

#[test]
fn catalog_endpoint_lists_each_tier() {
    let server = builder("1000").start();
    let c = catalog(&server);
    assert!(c["generation"].as_u64().unwrap() >= 1, "{c}");
    let flash = tier(&c, "flash");
    assert_eq!(flash["kind"], "flash");
    assert_eq!(flash["up"], true);
    assert_eq!(flash["objects"], 3);
    assert_eq!(flash["bytes"], (CANARY_LEN + 70_001 + 5_000) as u64);
    assert_eq!(
        flash["ids"],
        serde_json::json!([A, BOTH, CANARY]),
        "sorted, every id served from flash"
    );
    let hdd = tier(&c, "hdd");
    assert_eq!(hdd["kind"], "storage");
    // `both.bin` is served from flash (first tier), so it is listed there only.
    assert_eq!(hdd["ids"], serde_json::json!([B]));
    assert_eq!(hdd["objects"], 1);
    assert_eq!(hdd["bytes"], 90_003);
    assert_eq!(c["next"], Value::Null, "one page holds everything");
    assert_eq!(
        server
            .metrics()
            .sum("edgeplane_catalog_bytes", &[("tier", "hdd")]),
        90_003.0
    );
    assert_eq!(
        server.metrics().sum("edgeplane_catalog_bytes_counted", &[]),
        1.0
    );

    // Paged: two ids a page, in id order across the tiers, `next` to continue after.
    let mut seen = Vec::new();
    let mut query = "?limit=2".to_string();
    loop {
        let page = catalog_page(&server, &query);
        let ids: Vec<&str> = page["tiers"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|t| t["ids"].as_array().unwrap().iter())
            .map(|id| id.as_str().unwrap())
            .collect();
        assert!(ids.len() <= 2, "{page}");
        assert_eq!(
            page["tiers"][0]["objects"], 3,
            "totals on every page: {page}"
        );
        seen.extend(ids.into_iter().map(String::from));
        match page["next"].as_str() {
            Some(next) => query = format!("?limit=2&after={next}"),
            None => break,
        }
    }
    let mut all = vec![A, B, BOTH, CANARY];
    all.sort_unstable();
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    assert_eq!(seen, sorted, "pages come in id order");
    assert_eq!(seen, all);
    for bad in ["?limit=0", "?limit=abc", "?after=../x", "?page=2"] {
        let r = server.admin_get(&format!("/catalog{bad}"));
        assert_eq!(r.status, 400, "{bad}: {r:?}");
    }

    // New objects appear after a reload, with a new generation.
    fs::write(server.tier_dir("hdd").join("new.bin"), b"0123").unwrap();
    server.reload();
    let c2 = catalog(&server);
    assert!(c2["generation"].as_u64() > c["generation"].as_u64());
    assert_eq!(tier(&c2, "hdd")["ids"], serde_json::json!([B, "new.bin"]));
    let r = server.connect_admin().request(
        "POST",
        "/catalog",
        &[("Content-Length", "0"), ("Connection", "close")],
    );
    assert_eq!(r.status, 405);
}

#[test]
fn a_tier_that_disappears_is_taken_out_and_comes_back() {
    let server = builder("200").start();
    let flash = server.tier_dir("flash");
    let parked = flash.with_extension("gone");
    // A keep-alive client on the other tier, across the whole failure.
    let mut c = server.connect();
    let r = c.request("GET", &format!("/{B}"), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        server.get(&format!("/{BOTH}"), &[]).body,
        pattern("flash copy", 5_000)
    );

    fs::rename(&flash, &parked).unwrap();
    wait_status(&server, &format!("/{A}"), 404, "flash gone");
    server.wait_metrics("edgeplane_tier_up{tier=flash} 0", |m| {
        m.sum("edgeplane_tier_up", &[("tier", "flash")]) == 0.0
    });
    assert_eq!(tier_up(&server, "hdd"), 1.0);
    assert_eq!(server.get(&format!("/{CANARY}"), &[]).status, 404);
    // The other tier serves on, byte-exact, on the connection opened before.
    let r = c.request("GET", &format!("/{B}"), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_bytes_eq(&r.body, &pattern(B, 90_003), "hdd while flash is down");
    let r = curl(&["-r", "100-199"], &server.url(&format!("/{B}")));
    assert_eq!(r.status, 206, "{r:?}");
    assert_bytes_eq(&r.body, &pattern(B, 90_003)[100..200], "hdd range");
    // An object on both tiers now comes from the one that is up.
    let r = server.get(&format!("/{BOTH}"), &[]);
    assert_eq!(r.status, 200);
    assert_bytes_eq(&r.body, &pattern("hdd copy", 6_000), "fallback copy");
    let cat = catalog(&server);
    assert_eq!(tier(&cat, "flash")["up"], false, "{cat}");
    assert_eq!(tier(&cat, "flash")["objects"], 0, "{cat}");
    assert_eq!(tier(&cat, "hdd")["ids"], serde_json::json!([B, BOTH]));
    let h = server.admin_get("/healthz");
    assert_eq!(h.status, 200);
    assert!(
        String::from_utf8_lossy(&h.body).contains("degraded: tier flash down"),
        "{h:?}"
    );
    assert!(server.output().contains("tier out of service"));

    // The disk comes back.
    fs::rename(&parked, &flash).unwrap();
    let r = wait_status(&server, &format!("/{A}"), 200, "flash back");
    assert_bytes_eq(&r.body, &pattern(A, 70_001), "flash back");
    server.wait_metrics("edgeplane_tier_up{tier=flash} 1", |m| {
        m.sum("edgeplane_tier_up", &[("tier", "flash")]) == 1.0
    });
    assert_bytes_eq(
        &server.get(&format!("/{BOTH}"), &[]).body,
        &pattern("flash copy", 5_000),
        "flash copy again",
    );
    server.assert_serving("flash back");
    assert_eq!(tier(&catalog(&server), "flash")["up"], true);
}

/// With a check interval far longer than the test, the tier still goes down at once: an I/O
/// error while serving (the first request after the disk went away) makes the tier watcher
/// look, unless the catalog watch saw the directory move first (it rescans, and the rescan
/// finds the tier gone). Whichever came first is counted.
#[test]
fn an_io_error_while_serving_triggers_a_check_at_once() {
    let server = builder("600000").start();
    let flash = server.tier_dir("flash");
    let parked = flash.with_extension("gone");
    // Open the object once so the tier is known good, then take the disk away.
    assert_eq!(server.get(&format!("/{B}"), &[]).status, 200);
    fs::rename(&flash, &parked).unwrap();
    assert_eq!(server.get(&format!("/{A}"), &[]).status, 404);
    let m = server.wait_metrics("flash down after an I/O error", |m| {
        m.sum("edgeplane_tier_up", &[("tier", "flash")]) == 0.0
    });
    assert!(
        m.sum(
            "edgeplane_tier_io_errors_total",
            &[("tier", "flash"), ("kind", "enoent")]
        ) + m.sum(
            "edgeplane_catalog_watch_rescans_total",
            &[("reason", "replaced")]
        ) >= 1.0,
        "{}",
        m.text
    );
    for kind in ["eio", "enxio", "enoent", "other"] {
        assert_eq!(
            m.matching(
                "edgeplane_tier_io_errors_total",
                &[("tier", "hdd"), ("kind", kind)]
            )
            .count(),
            1,
            "pre-registered {kind}"
        );
    }
    assert_eq!(
        server.get(&format!("/{BOTH}"), &[]).body,
        pattern("hdd copy", 6_000)
    );
    // Back, and picked up by a reload (the periodic check is ten minutes away).
    fs::rename(&parked, &flash).unwrap();
    server.reload();
    assert_eq!(tier_up(&server, "flash"), 1.0);
    server.assert_serving("after reload");
}
