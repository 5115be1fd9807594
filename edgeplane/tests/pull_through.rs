//! Pull-through (`[upstream]`): a miss is fetched from a real HTTP origin (testsupport's
//! `Origin`, which counts requests and misbehaves on command) once per slice, however many
//! clients ask at once; each client gets exactly its bytes (curl, compared with the source);
//! upstream failures give clean errors and leave nothing partial; a kill -9 mid-pull leaves only
//! a temporary file, removed at the next start. Nothing here is timed.

use std::fs;
use std::path::Path;
use std::thread;
use std::time::Duration;

use edgeplane_test_support::prelude::*;

/// The binary under test (Cargo builds it for these tests).
const BIN: &str = env!("CARGO_BIN_EXE_edgeplane");

/// `[upstream]` pointing at `origin`, storing in tier `flash`.
fn upstream(origin: &Origin, extra: &str) -> String {
    upstream_to(origin, "flash", extra)
}

/// `[upstream]` pointing at `origin`, storing in `tier`.
fn upstream_to(origin: &Origin, tier: &str, extra: &str) -> String {
    format!(
        "[upstream]\nurl = \"{}\"\ntier = \"{tier}\"\n{extra}",
        origin.url()
    )
}

/// A server with one flash tier (the builder's) and `[upstream]`.
fn pull_server(origin: &Origin, extra: &str) -> Server {
    ServerBuilder::new(BIN)
        .cores(2)
        .section(&upstream(origin, extra))
        .start()
}

/// The `.tmp-pull-*` files in `dir`.
/// `n` curl GETs of `url` started together; their results, in start order.
fn curl_at_once(url: &str, n: usize) -> Vec<CurlResult> {
    let clients: Vec<_> = (0..n)
        .map(|_| {
            let url = url.to_owned();
            thread::spawn(move || curl(&[], &url))
        })
        .collect();
    clients.into_iter().map(|c| c.join().unwrap()).collect()
}

fn temporaries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect()
}

/// After a pull whose digest did not match: no temporary left, `id` not installed, the
/// failure counted.
fn assert_digest_failure_left_nothing(server: &Server, tier: &Path, id: &str) {
    poll("the failed pull to leave nothing", || {
        temporaries(tier).is_empty().then_some(())
    });
    assert!(!tier.join(id).exists(), "a mismatched object was installed");
    assert!(
        server
            .metrics()
            .sum("edgeplane_pull_verify_failures_total", &[])
            >= 1.0
    );
}

/// Slice index of each upstream request for `id` (`Range: bytes=a-b`), sorted.
fn slices_requested(origin: &Origin, id: &str, slice: u64) -> Vec<u64> {
    let mut s: Vec<u64> = origin
        .requests_for(id)
        .iter()
        .map(|r| {
            let range = r
                .range
                .as_deref()
                .expect("pull-through always asks for a range");
            let a: u64 = range
                .strip_prefix("bytes=")
                .and_then(|r| r.split('-').next())
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("unexpected Range {range:?}"));
            assert_eq!(a % slice, 0, "range {range} is not slice-aligned");
            a / slice
        })
        .collect();
    s.sort_unstable();
    s
}

#[test]
fn two_hundred_concurrent_clients_cause_one_upstream_request_per_slice() {
    let origin = Origin::start();
    let slice = 1u64 << 20;
    let data = pattern("flash crowd", 5 * (1 << 20) + 4321);
    origin.put("crowd.ts", data.clone());
    // Slow enough that the crowd arrives while the object is still being pulled.
    origin.set_delay(Duration::from_millis(50));
    origin.set_rate(1 << 20);
    let server = pull_server(&origin, "slice_size = \"1M\"\n");
    let url = server.url("/crowd.ts");
    let len = data.len() as u64;
    let clients: Vec<_> = (0..200u64)
        .map(|i| {
            let url = url.clone();
            // Every fourth client takes the whole object; the others a range somewhere in it,
            // many across a slice boundary.
            let range = (i % 4 != 0).then(|| {
                let first = (i * 104_729) % (len - 1);
                let last = (first + 300_000 + i * 977).min(len - 1);
                (first, last)
            });
            thread::spawn(move || {
                let r = match range {
                    Some((a, b)) => curl(&["-H", &format!("Range: bytes={a}-{b}")], &url),
                    None => curl(&[], &url),
                };
                (range, r)
            })
        })
        .collect();
    let mut collapsed = 0;
    for c in clients {
        let (range, r) = c.join().unwrap();
        assert_eq!(r.exit_code, Some(0), "curl failed: {}", r.stderr);
        let cache_status = r.header("Cache-Status").unwrap_or_default().to_owned();
        assert!(
            cache_status.starts_with("edgeplane; hit")
                || cache_status.starts_with("edgeplane; fwd=miss"),
            "Cache-Status {cache_status:?}"
        );
        collapsed += usize::from(cache_status.contains("collapsed"));
        match range {
            Some((a, b)) => assert_partial(&r.response(), &data, a, b, "ranged client"),
            None => assert_full(&r.response(), &data, "whole-object client"),
        }
    }
    // One upstream request per slice, each slice once.
    let slices = len.div_ceil(slice);
    assert_eq!(
        slices_requested(&origin, "crowd.ts", slice),
        (0..slices).collect::<Vec<_>>(),
        "upstream requests: {:?}",
        origin.requests_for("crowd.ts")
    );
    assert_eq!(
        origin.body_bytes(),
        len,
        "the origin sent the object exactly once"
    );
    // Installed in the tier; later requests are hits.
    let tier = server.tier_dir("flash");
    poll("the object to be installed", || {
        (fs::read(tier.join("crowd.ts")).ok()? == data).then_some(())
    });
    let r = curl(&[], &url);
    assert_full(&r.response(), &data, "after the pull");
    assert_eq!(r.header("Cache-Status"), Some("edgeplane; hit"));
    assert!(temporaries(&tier).is_empty());
    let m = server.metrics();
    assert_eq!(
        m.sum("edgeplane_pull_upstream_requests_total", &[]),
        slices as f64
    );
    assert_eq!(m.sum("edgeplane_pull_misses_total", &[]), 1.0);
    eprintln!("{collapsed} of 200 clients were collapsed into the pull");
}

#[test]
fn ranges_across_slice_boundaries_are_byte_exact_cold_partial_and_hot() {
    let origin = Origin::start();
    let slice = 64 * 1024u64;
    let data = pattern("slices", 300_001);
    let len = data.len() as u64;
    let cases: [(u64, u64); 7] = [
        (65_530, 65_545),
        (0, 65_535),
        (65_536, 131_071),
        (131_000, 262_200),
        (len - 10, len - 1),
        (299_990, len - 1),
        (1, len - 2),
    ];
    for i in 0..cases.len() {
        origin.put(&format!("obj{i}.ts"), data.clone());
    }
    let server = pull_server(&origin, "slice_size = \"64K\"\n");
    // Cold: each range is the first request for its object.
    for (i, &(a, b)) in cases.iter().enumerate() {
        let r = curl(
            &["-H", &format!("Range: bytes={a}-{b}")],
            &server.url(&format!("/obj{i}.ts")),
        );
        assert_partial(&r.response(), &data, a, b, &format!("cold {a}-{b}"));
        assert!(r
            .header("Cache-Status")
            .unwrap_or_default()
            .contains("fwd=miss"));
        // Only the slices the range touches were fetched: a seek does not fetch slice 0.
        let want: Vec<u64> = (a / slice..=b / slice).collect();
        assert_eq!(
            slices_requested(&origin, &format!("obj{i}.ts"), slice),
            want,
            "range {a}-{b}"
        );
    }
    // Partial objects serve what they have and fetch only what is missing.
    let r = curl(&[], &server.url("/obj0.ts"));
    assert_full(&r.response(), &data, "whole object after one range");
    let all: Vec<u64> = (0..len.div_ceil(slice)).collect();
    assert_eq!(slices_requested(&origin, "obj0.ts", slice), all);
    // Complete now: every range again, from the tier.
    let tier = server.tier_dir("flash");
    poll("obj0.ts installed", || {
        tier.join("obj0.ts").exists().then_some(())
    });
    for &(a, b) in &cases {
        let r = curl(
            &["-H", &format!("Range: bytes={a}-{b}")],
            &server.url("/obj0.ts"),
        );
        assert_partial(&r.response(), &data, a, b, &format!("hot {a}-{b}"));
        assert_eq!(r.header("Cache-Status"), Some("edgeplane; hit"));
    }
    assert_eq!(
        slices_requested(&origin, "obj0.ts", slice),
        all,
        "hits asked nothing upstream"
    );
    // A range past the end of an object being pulled: 416 with its size.
    origin.put("late.ts", data.clone());
    let r = curl(
        &["-H", &format!("Range: bytes={}-", len + 5)],
        &server.url("/late.ts"),
    );
    assert_unsatisfiable(&r.response(), len, "past the end");
}

#[test]
fn upstream_dying_mid_object_gives_clean_errors_and_the_next_request_refetches() {
    let origin = Origin::start();
    let data = pattern("dies", 3 << 20);
    origin.put("dies.ts", data.clone());
    origin.set_rate(4 << 20);
    origin.die_after(200_000);
    let server = pull_server(&origin, "slice_size = \"1M\"\n");
    let url = server.url("/dies.ts");
    for r in curl_at_once(&url, 8) {
        // Either an error status, or a 200 whose body was cut short (curl says so); never a
        // complete-looking wrong object.
        let complete = r.exit_code == Some(0) && r.status == 200;
        assert!(
            !complete || r.body == data,
            "a client got a wrong complete body"
        );
        assert!(
            !complete,
            "the upstream died, yet a client got the whole object"
        );
        if r.exit_code == Some(0) {
            assert!(matches!(r.status, 502 | 504), "status {}", r.status);
        } else {
            assert!(r.body.len() < data.len());
            assert_bytes_eq(&r.body, &data[..r.body.len()], "the bytes before the cut");
        }
    }
    let tier = server.tier_dir("flash");
    poll("the failed pull to leave nothing", || {
        temporaries(&tier).is_empty().then_some(())
    });
    assert!(
        !tier.join("dies.ts").exists(),
        "a partial object was installed"
    );
    let before = origin.requests_for("dies.ts").len();
    // The upstream recovers: the next request pulls again and gets it all.
    origin.die_after(0);
    let r = curl(&[], &url);
    assert_full(&r.response(), &data, "after the upstream recovered");
    assert!(
        origin.requests_for("dies.ts").len() > before,
        "no new upstream request"
    );
    assert!(
        server
            .metrics()
            .sum("edgeplane_pull_upstream_errors_total", &[])
            >= 1.0
    );
}

#[test]
fn upstream_errors_timeouts_and_the_breaker() {
    let origin = Origin::start();
    origin.put("ok.ts", pattern("ok", 1000));
    let server = pull_server(
        &origin,
        "slice_size = \"64K\"\ntimeout_ms = 500\nbreaker_failures = 3\nbreaker_cooldown_ms = 600000\n",
    );
    // Not upstream: 404, and the breaker counts it as the upstream being fine.
    let r = curl(&[], &server.url("/missing.ts"));
    assert_eq!(r.status, 404);
    // A 500 from the upstream: 502.
    origin.fail_with(500);
    let r = curl(&[], &server.url("/e1.ts"));
    assert_eq!(r.status, 502, "{:?}", r.headers);
    assert!(r
        .header("Cache-Status")
        .unwrap_or_default()
        .contains("fwd=miss"));
    // Slower than timeout_ms: 504.
    origin.fail_with(0);
    origin.set_delay(Duration::from_secs(3));
    let r = curl(&[], &server.url("/ok.ts"));
    assert_eq!(r.status, 504);
    // A third failure opens the breaker; then misses get 503 + Retry-After without an
    // upstream request.
    origin.set_delay(Duration::ZERO);
    origin.fail_with(503);
    assert_eq!(curl(&[], &server.url("/e2.ts")).status, 502);
    let asked = origin.requests().len();
    let r = curl(&[], &server.url("/e3.ts"));
    assert_eq!(r.status, 503);
    assert_eq!(r.header("Retry-After"), Some("1"));
    assert_eq!(
        origin.requests().len(),
        asked,
        "the open breaker let a request through"
    );
    let m = server.metrics();
    assert_eq!(m.sum("edgeplane_pull_breaker_opened_total", &[]), 1.0);
    assert!(temporaries(&server.tier_dir("flash")).is_empty());
}

#[test]
fn a_kill_9_mid_pull_leaves_only_a_temporary_that_the_next_start_removes() {
    let origin = Origin::start();
    let data = pattern("killed", 2 << 20);
    origin.put("k.ts", data.clone());
    origin.set_rate(100 * 1024);
    let tier = temp_dir();
    let config = format!(
        "[[tier]]\nname = \"pulled\"\nkind = \"flash\"\npath = \"{}\"\n\n{}",
        tier.path().display(),
        upstream_to(&origin, "pulled", "slice_size = \"1M\"\n")
    );
    let mut server = ServerBuilder::new(BIN).cores(1).section(&config).start();
    let url = server.url("/k.ts");
    let client = thread::spawn(move || curl(&[], &url));
    poll("the pull to start writing", || {
        (!temporaries(tier.path()).is_empty()).then_some(())
    });
    server.signal("KILL");
    server.wait_exit(Duration::from_secs(10));
    let r = client.join().unwrap();
    assert!(
        r.exit_code != Some(0) || r.status != 200,
        "a killed server finished the body"
    );
    assert!(
        !tier.path().join("k.ts").exists(),
        "a partial object was installed"
    );
    // The next start removes the temporary and pulls afresh.
    origin.set_rate(0);
    let server = ServerBuilder::new(BIN).cores(1).section(&config).start();
    assert!(
        temporaries(tier.path()).is_empty(),
        "{:?}",
        temporaries(tier.path())
    );
    let r = curl(&[], &server.url("/k.ts"));
    assert_full(&r.response(), &data, "after the restart");
    poll("k.ts installed", || {
        tier.path().join("k.ts").exists().then_some(())
    });
    assert_eq!(fs::read(tier.path().join("k.ts")).unwrap(), data);
}

#[test]
fn without_upstream_a_miss_stays_a_404() {
    let server = ServerBuilder::new(BIN).cores(1).start();
    let r = curl(&[], &server.url("/nothing.ts"));
    assert_eq!(r.status, 404);
    assert_eq!(r.header("Cache-Status"), None);
    assert!(server
        .metrics()
        .samples
        .iter()
        .all(|s| !s.name.starts_with("edgeplane_pull_")));
}

#[test]
fn a_wrong_upstream_sha256_installs_nothing_and_the_next_request_refetches() {
    use edgeplane_test_support::origin::sha256;
    let origin = Origin::start();
    // Right digests, in each header style the upstream may use: installed, served whole.
    let styles = [
        ("repr.ts", DigestHeader::Repr),
        ("legacy.ts", DigestHeader::Legacy),
        ("amz.ts", DigestHeader::AmzMeta),
    ];
    for (id, kind) in styles {
        let data = pattern(id, (2 << 20) + 17);
        origin.put(id, data.clone());
        origin.set_digest(id, kind, sha256(&data));
    }
    // A wrong one (the digest of other bytes).
    let data = pattern("wrong", (3 << 20) + 5);
    origin.put("wrong.ts", data.clone());
    origin.set_digest("wrong.ts", DigestHeader::Repr, sha256(b"something else"));
    let server = pull_server(&origin, "slice_size = \"1M\"\n");
    let tier = server.tier_dir("flash");
    for (id, _) in styles {
        let r = curl(&[], &server.url(&format!("/{id}")));
        assert_full(&r.response(), &pattern(id, (2 << 20) + 17), id);
        poll("the verified object to be installed", || {
            tier.join(id).exists().then_some(())
        });
    }
    assert_eq!(
        server
            .metrics()
            .sum("edgeplane_pull_verify_failures_total", &[]),
        0.0
    );
    // Wrong digest: no client gets a complete-looking object (the last byte waits for the
    // check), nothing is installed, the failure is counted.
    let url = server.url("/wrong.ts");
    for r in curl_at_once(&url, 4) {
        let complete = r.exit_code == Some(0) && r.status == 200;
        assert!(!complete, "a client got an object whose digest is wrong");
        if r.exit_code == Some(0) {
            assert!(matches!(r.status, 502..=504), "status {}", r.status);
        } else {
            assert!(r.body.len() < data.len());
            assert_bytes_eq(&r.body, &data[..r.body.len()], "the bytes before the cut");
        }
    }
    assert_digest_failure_left_nothing(&server, &tier, "wrong.ts");
    // The upstream fixes its digest: the next request pulls again and gets it all.
    let before = origin.requests_for("wrong.ts").len();
    origin.set_digest("wrong.ts", DigestHeader::Repr, sha256(&data));
    let r = curl(&[], &url);
    assert_full(&r.response(), &data, "after the digest was fixed");
    assert!(
        origin.requests_for("wrong.ts").len() > before,
        "no new upstream request"
    );
    poll("the fixed object to be installed", || {
        tier.join("wrong.ts").exists().then_some(())
    });
}

#[test]
fn after_a_restart_earlier_pulls_are_still_evictable_and_agent_files_are_not() {
    let origin = Origin::start();
    let first = pattern("first", 2 << 20);
    let second = pattern("second", 2 << 20);
    origin.put("first.ts", first.clone());
    origin.put("second.ts", second.clone());
    let tier = temp_dir();
    // Room for one pulled object: the second pull must evict the first.
    let config = format!(
        "[[tier]]\nname = \"pulled\"\nkind = \"flash\"\npath = \"{}\"\n\n{}",
        tier.path().display(),
        upstream_to(
            &origin,
            "pulled",
            "slice_size = \"1M\"\ncapacity = \"3M\"\n"
        )
    );
    let mut server = ServerBuilder::new(BIN).cores(1).section(&config).start();
    let r = curl(&[], &server.url("/first.ts"));
    assert_full(&r.response(), &first, "the first pull");
    poll("first.ts installed", || {
        tier.path().join("first.ts").exists().then_some(())
    });
    server.signal("TERM");
    server.wait_exit(Duration::from_secs(20));
    // The agent places a file meanwhile (fill's: pull-through must never evict it).
    let agent = pattern("agent", 1 << 20);
    fs::write(tier.path().join("agent.ts"), &agent).unwrap();
    let server = ServerBuilder::new(BIN).cores(1).section(&config).start();
    assert_eq!(
        server.metrics().sum("edgeplane_pull_used_bytes", &[]),
        first.len() as f64,
        "the restarted store does not count the earlier pull"
    );
    // second.ts becomes popular enough to push first.ts (not asked for since) out.
    let url = server.url("/second.ts");
    poll("second.ts to be admitted", || {
        let r = curl(&[], &url);
        assert_full(&r.response(), &second, "second.ts");
        tier.path().join("second.ts").exists().then_some(())
    });
    poll("first.ts to be evicted", || {
        (!tier.path().join("first.ts").exists()).then_some(())
    });
    assert_eq!(fs::read(tier.path().join("agent.ts")).unwrap(), agent);
    let r = curl(&[], &server.url("/agent.ts"));
    assert_full(&r.response(), &agent, "the agent's file");
    assert!(server.metrics().sum("edgeplane_pull_evictions_total", &[]) >= 1.0);
}

/// An S3 bucket as the upstream (moto_server, a real S3 API; objects written `public-read`, so
/// anonymous GETs are answered as S3 answers them): ranged slices across boundaries,
/// `x-amz-meta-sha256` checked (right: installed; wrong: nothing installed, no complete-looking
/// body), a missing key a 404, a private object (403 upstream) a 502.
#[test]
fn an_s3_bucket_as_the_upstream() {
    use edgeplane_test_support::moto::Moto;
    let moto = Moto::start(free_port());
    moto.create_bucket("media");
    let data = pattern("s3obj", 300_001);
    let len = data.len() as u64;
    moto.put_with(
        "media",
        "title-a.ts",
        &data,
        &[
            ("x-amz-acl", "public-read"),
            ("x-amz-meta-sha256", &sha256_hex(&data)),
        ],
    );
    moto.put_with(
        "media",
        "title-b.ts",
        &data,
        &[("x-amz-acl", "public-read")],
    );
    // Private (the default ACL): an anonymous GET is refused with 403.
    moto.put("media", "private.ts", &data);
    let wrong = pattern("s3wrong", 200_003);
    moto.put_with(
        "media",
        "title-c.ts",
        &wrong,
        &[
            ("x-amz-acl", "public-read"),
            ("x-amz-meta-sha256", &sha256_hex(b"other bytes")),
        ],
    );
    let server = ServerBuilder::new(BIN)
        .cores(2)
        .section(&format!(
            "[upstream]\nurl = \"{}/media\"\ntier = \"flash\"\nslice_size = \"64K\"\n",
            moto.url()
        ))
        .start();
    let tier = server.tier_dir("flash");

    // Ranges across slice boundaries, cold, then the whole object, then hits from the tier.
    for (id, (a, b)) in [
        ("title-a.ts", (65_530, 131_100)),
        ("title-b.ts", (1, len - 2)),
    ] {
        let url = server.url(&format!("/{id}"));
        let r = curl(&["-H", &format!("Range: bytes={a}-{b}")], &url);
        assert_partial(&r.response(), &data, a, b, &format!("{id}: cold {a}-{b}"));
        assert!(
            r.header("Cache-Status")
                .unwrap_or_default()
                .contains("fwd=miss"),
            "{id}: {:?}",
            r.header("Cache-Status")
        );
        let r = curl(&[], &url);
        assert_full(&r.response(), &data, &format!("{id}: whole"));
        poll("the pulled object to be installed", || {
            tier.join(id).exists().then_some(())
        });
        let r = curl(&["-H", "Range: bytes=70000-70099"], &url);
        assert_partial(&r.response(), &data, 70_000, 70_099, &format!("{id}: hot"));
        assert_eq!(r.header("Cache-Status"), Some("edgeplane; hit"));
    }
    assert_eq!(
        server
            .metrics()
            .sum("edgeplane_pull_verify_failures_total", &[]),
        0.0,
        "the right x-amz-meta-sha256 verified"
    );

    // A wrong x-amz-meta-sha256: no complete-looking body, nothing installed, counted.
    let r = curl(&[], &server.url("/title-c.ts"));
    let complete = r.exit_code == Some(0) && r.status == 200;
    assert!(!complete, "a client got an object whose digest is wrong");
    assert_digest_failure_left_nothing(&server, &tier, "title-c.ts");

    // A key the bucket does not have: the upstream's 404 is the client's. A private object
    // (the pull sends no credentials; S3 answers 403): an upstream error, 502, nothing stored.
    assert_eq!(curl(&[], &server.url("/no-such-key.ts")).status, 404);
    assert_eq!(curl(&[], &server.url("/private.ts")).status, 502);
    assert!(!tier.join("private.ts").exists());
    server.assert_serving("after pulls from S3");
}
