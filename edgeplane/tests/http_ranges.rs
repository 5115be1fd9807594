//! Range requests and representation headers, checked with a raw socket, curl and ureq.
//!
//! Every body is compared byte for byte with the file on disk.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgeplane_test_support::prelude::*;

/// The binary under test (Cargo builds it for these tests).
const BIN: &str = env!("CARGO_BIN_EXE_edgeplane");

/// An odd length, so no range lines up with a page or buffer by accident.
const VIDEO_LEN: usize = 1_000_003;
const VIDEO: &str = "video.mp4";
/// 2021-01-01T00:00:00Z
const MTIME_SECS: u64 = 1_609_459_200;
const MTIME_HTTP: &str = "Fri, 01 Jan 2021 00:00:00 GMT";

fn video() -> Vec<u8> {
    pattern(VIDEO, VIDEO_LEN)
}

fn set_mtime(path: &std::path::Path, secs: u64) {
    File::options()
        .write(true)
        .open(path)
        .expect("open for set_modified")
        .set_modified(UNIX_EPOCH + Duration::from_secs(secs))
        .expect("set mtime");
}

/// A server with `video.mp4` (mtime fixed) and an empty `empty.ts`.
fn start() -> Server {
    let b = ServerBuilder::new(BIN)
        .file("flash", VIDEO, &video())
        .file("flash", "empty.ts", b"");
    set_mtime(&b.tier_dir("flash").join(VIDEO), MTIME_SECS);
    b.start()
}

#[derive(Debug, Clone, Copy)]
enum Want {
    /// 206 with this inclusive range.
    Part(u64, u64),
    /// 200 with the whole object (Range ignored).
    Full,
    /// 416 with `Content-Range: bytes */LEN`.
    Unsatisfiable,
    /// Semantically invalid (`last < first`): RFC 9110 lets a server ignore (200) or
    /// reject (416) it; anything else is wrong.
    FullOrUnsatisfiable,
}

/// (Range header value, expected outcome) for an object of `len` bytes (`len > 600`).
fn range_cases(len: u64) -> Vec<(String, Want)> {
    use Want::*;
    let l = len;
    vec![
        // int-range
        ("bytes=0-0".into(), Part(0, 0)),
        ("bytes=0-1".into(), Part(0, 1)),
        ("bytes=0-99".into(), Part(0, 99)),
        (format!("bytes={}-{}", l - 1, l - 1), Part(l - 1, l - 1)),
        (format!("bytes={}-{}", l - 2, l - 1), Part(l - 2, l - 1)),
        (format!("bytes=0-{}", l - 1), Part(0, l - 1)),
        ("bytes=12345-67890".into(), Part(12345, 67890)),
        ("bytes=4095-4096".into(), Part(4095, 4096)),
        ("bytes=65535-65537".into(), Part(65535, 65537)),
        ("bytes=131072-393215".into(), Part(131_072, 393_215)),
        // suffix-range
        ("bytes=-1".into(), Part(l - 1, l - 1)),
        ("bytes=-500".into(), Part(l - 500, l - 1)),
        (format!("bytes=-{l}"), Part(0, l - 1)),
        (format!("bytes=-{}", l + 1000), Part(0, l - 1)),
        // open range
        ("bytes=0-".into(), Part(0, l - 1)),
        ("bytes=999-".into(), Part(999, l - 1)),
        (format!("bytes={}-", l - 1), Part(l - 1, l - 1)),
        // last-pos past EOF: clamped
        (format!("bytes=10-{}", l + 1000), Part(10, l - 1)),
        (format!("bytes={}-{}", l - 5, l + 5), Part(l - 5, l - 1)),
        (format!("bytes={}-{}", l - 1, l), Part(l - 1, l - 1)),
        ("bytes=0-18446744073709551615".into(), Part(0, l - 1)),
        // first-pos at or past EOF: unsatisfiable
        (format!("bytes={l}-"), Unsatisfiable),
        (format!("bytes={l}-{}", l + 10), Unsatisfiable),
        (format!("bytes={}-{}", l + 100, l + 200), Unsatisfiable),
        ("bytes=-0".into(), Unsatisfiable),
        // multiple ranges: documented decision, the whole object with 200
        ("bytes=0-1,5-9".into(), Full),
        ("bytes=0-1, 5-9".into(), Full),
        (format!("bytes=-10,0-{}", l - 1), Full),
        // unparsable: ignored
        ("bytes=abc".into(), Full),
        ("bytes=".into(), Full),
        ("items=0-5".into(), Full),
        ("bytes 0-5".into(), Full),
        ("bytes=--5".into(), Full),
        ("bytes=1-2-3".into(), Full),
        ("bytes=x-5".into(), Full),
        // RFC 9110 14.1: range unit names are case-insensitive
        ("Bytes=0-9".into(), Part(0, 9)),
        ("BYTES=-2".into(), Part(l - 2, l - 1)),
        // invalid
        ("bytes=5-3".into(), FullOrUnsatisfiable),
    ]
}

#[track_caller]
fn check(r: &Response, data: &[u8], range: &str, want: Want, client: &str) {
    let what = format!("{client}: Range: {range}");
    match want {
        Want::Part(a, b) => assert_partial(r, data, a, b, &what),
        Want::Full => assert_full(r, data, &what),
        Want::Unsatisfiable => assert_unsatisfiable(r, data.len() as u64, &what),
        Want::FullOrUnsatisfiable => {
            if r.status == 416 {
                assert_unsatisfiable(r, data.len() as u64, &what)
            } else {
                assert_full(r, data, &what)
            }
        }
    }
}

#[test]
fn range_matrix_over_one_keep_alive_connection() {
    let server = start();
    let data = video();
    let mut conn = server.connect();
    check_all(range_cases(data.len() as u64), |range, want| {
        let r = conn.request("GET", &format!("/{VIDEO}"), &[("Range", range)]);
        if r.says_close() {
            conn = server.connect();
        }
        check(&r, &data, range, want, "raw");
        if r.status == 206 || r.status == 200 {
            assert_eq!(
                r.header("accept-ranges"),
                Some("bytes"),
                "Range: {range}: {r:?}"
            );
        }
    });
}

#[test]
fn range_matrix_with_ureq() {
    let server = start();
    let data = video();
    let agent = ureq_agent();
    let url = server.url(&format!("/{VIDEO}"));
    check_all(range_cases(data.len() as u64), |range, want| {
        let r = ureq_request(&agent, "GET", &url, &[("Range", range)]);
        check(&r, &data, range, want, "ureq");
    });
}

#[test]
fn ranges_with_curl() {
    let server = start();
    let data = video();
    let l = data.len() as u64;
    let url = server.url(&format!("/{VIDEO}"));
    let cases: Vec<(String, Want)> = vec![
        ("0-0".into(), Want::Part(0, 0)),
        ("0-99".into(), Want::Part(0, 99)),
        (format!("{}-{}", l - 1, l - 1), Want::Part(l - 1, l - 1)),
        ("-500".into(), Want::Part(l - 500, l - 1)),
        ("999000-".into(), Want::Part(999_000, l - 1)),
        (format!("500-{}", l + 99), Want::Part(500, l - 1)),
        ("300000-700000".into(), Want::Part(300_000, 700_000)),
    ];
    for (range, want) in cases {
        let c = curl(&["-r", &range], &url);
        assert_eq!(c.exit_code, Some(0), "curl -r {range}: {c:?}");
        check(&c.response(), &data, &range, want, "curl");
    }
    // Unsatisfiable: curl still reports the 416 and its Content-Range.
    let c = curl(&["-r", &format!("{l}-")], &url);
    assert_unsatisfiable(&c.response(), l, &format!("curl -r {l}-"));

    // Whole object, compared by sha256 as well.
    let c = curl(&[], &url);
    assert_eq!(c.exit_code, Some(0), "curl whole object: {c:?}");
    assert_eq!(c.status, 200, "{c:?}");
    assert_eq!(sha256_hex(&c.body), sha256_hex(&data), "curl whole object");

    // HEAD.
    let c = curl(&["--head"], &url);
    assert_eq!(c.exit_code, Some(0), "curl --head: {c:?}");
    assert_eq!(c.status, 200, "{c:?}");
    assert_eq!(
        c.header("content-length"),
        Some(VIDEO_LEN.to_string().as_str())
    );
}

#[test]
fn curl_reuses_the_keep_alive_connection() {
    let server = start();
    let data = video();
    let dir = temp_dir();
    let url = server.url(&format!("/{VIDEO}"));
    let out = Command::new("curl")
        .args([
            "-sS",
            "--http1.1",
            "--max-time",
            "30",
            "-w",
            "%{num_connects}\n",
        ])
        .args(["-r", "0-999"])
        .arg(&url)
        .arg("-o")
        .arg(dir.path().join("a"))
        .arg(&url)
        .arg("-o")
        .arg(dir.path().join("b"))
        .output()
        .expect("run curl");
    assert!(out.status.success(), "curl failed: {out:?}");
    let counts: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        counts,
        vec!["1".to_owned(), "0".to_owned()],
        "curl's second transfer should reuse the first connection (num_connects per transfer)"
    );
    for f in ["a", "b"] {
        let got = fs::read(dir.path().join(f)).unwrap();
        assert_bytes_eq(&got, &data[..1000], &format!("curl transfer {f}"));
    }
}

#[test]
fn empty_file() {
    let server = start();
    let mut conn = server.connect();

    let r = conn.request("GET", "/empty.ts", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.content_length(), Some(0), "{r:?}");
    assert!(r.body.is_empty());

    let r = conn.request("HEAD", "/empty.ts", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.content_length(), Some(0), "{r:?}");

    for range in [
        "bytes=0-",
        "bytes=0-0",
        "bytes=0-10",
        "bytes=5-9",
        "bytes=-0",
    ] {
        let r = conn.request("GET", "/empty.ts", &[("Range", range)]);
        assert_unsatisfiable(&r, 0, &format!("empty file, Range: {range}"));
        if r.says_close() {
            conn = server.connect();
        }
    }
    // A suffix range with a non-zero length is, by RFC 9110 14.1.1, the one "satisfiable" form
    // on an empty representation, yet no 206 can describe zero bytes: 416 or an ignored
    // Range (200, empty) are both acceptable.
    let r = conn.request("GET", "/empty.ts", &[("Range", "bytes=-5")]);
    match r.status {
        416 => assert_unsatisfiable(&r, 0, "empty file, Range: bytes=-5"),
        200 => assert!(r.body.is_empty(), "{r:?}"),
        _ => panic!("empty file, Range: bytes=-5: want 416 (or 200 with no body): {r:?}"),
    }
    if r.says_close() {
        conn = server.connect();
    }
    let r = conn.request("GET", "/empty.ts/range/0-0", &[]);
    assert_unsatisfiable(&r, 0, "empty file, /range/0-0");

    // curl and ureq agree.
    let c = curl(&[], &server.url("/empty.ts"));
    assert_eq!(
        (c.exit_code, c.status, c.body.len()),
        (Some(0), 200, 0),
        "{c:?}"
    );
    let u = ureq_request(&ureq_agent(), "GET", &server.url("/empty.ts"), &[]);
    assert_eq!((u.status, u.body.len()), (200, 0), "{u:?}");
    let u = ureq_request(
        &ureq_agent(),
        "GET",
        &server.url("/empty.ts"),
        &[("Range", "bytes=0-0")],
    );
    assert_unsatisfiable(&u, 0, "ureq empty file bytes=0-0");
}

#[test]
fn range_url_form() {
    let server = start();
    let data = video();
    let l = data.len() as u64;
    let mut conn = server.connect();
    let cases = [
        (0, 0),
        (0, 99),
        (l - 1, l - 1),
        (0, l - 1),
        (4096, 8191),
        (777_777, 888_888),
    ];
    for (a, b) in cases {
        let path = format!("/{VIDEO}/range/{a}-{b}");
        let r = conn.request("GET", &path, &[]);
        assert_partial(&r, &data, a, b, &path);
        assert_eq!(r.header("accept-ranges"), Some("bytes"), "{path}: {r:?}");
    }
    // A last byte past EOF is clamped, as with a Range header.
    let path = format!("/{VIDEO}/range/10-{}", l + 100);
    let r = conn.request("GET", &path, &[]);
    assert_partial(&r, &data, 10, l - 1, &path);

    // First byte past EOF.
    let path = format!("/{VIDEO}/range/{l}-{}", l + 5);
    let r = conn.request("GET", &path, &[]);
    assert_unsatisfiable(&r, l, &path);
    conn.expect_usable_or_closed(&r, &path);

    // last < first, and junk: not served as a range.
    for bad in ["5-3", "abc", "1-", "-5", "1-2-3", ""] {
        let path = format!("/{VIDEO}/range/{bad}");
        let mut c = server.connect();
        let r = c.request("GET", &path, &[]);
        assert!(
            matches!(r.status, 400 | 404 | 416),
            "{path}: want 400, 404 or 416: {r:?}"
        );
        c.expect_usable_or_closed(&r, &path);
    }

    // HEAD on the range form: 206 headers, no body (the next response parses).
    let mut conn = server.connect();
    let path = format!("/{VIDEO}/range/100-199");
    let r = conn.request("HEAD", &path, &[]);
    assert_eq!(r.status, 206, "HEAD {path}: {r:?}");
    assert_eq!(r.content_length(), Some(100), "HEAD {path}: {r:?}");
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 100-199/{l}").as_str())
    );
    let r = conn.request("GET", &path, &[]);
    assert_partial(&r, &data, 100, 199, &path);

    // curl and ureq.
    let c = curl(&[], &server.url(&format!("/{VIDEO}/range/5000-5999")));
    assert_eq!(c.exit_code, Some(0), "{c:?}");
    assert_partial(&c.response(), &data, 5000, 5999, "curl /range/5000-5999");
    let u = ureq_request(
        &ureq_agent(),
        "GET",
        &server.url(&format!("/{VIDEO}/range/{}-{}", l - 1000, l - 1)),
        &[],
    );
    assert_partial(&u, &data, l - 1000, l - 1, "ureq /range/ last 1000");
}

#[test]
fn header_names_are_case_insensitive() {
    let server = start();
    let data = video();
    let path = format!("/{VIDEO}");
    let mut conn = server.connect();
    for name in ["range", "RANGE", "rAnGe"] {
        let r = conn.request("GET", &path, &[(name, "bytes=3-5")]);
        assert_partial(&r, &data, 3, 5, &format!("header name {name:?}"));
    }
    let etag = conn
        .request("HEAD", &path, &[])
        .expect_header("etag")
        .to_owned();
    let r = conn.request("GET", &path, &[("IF-NONE-MATCH", &etag)]);
    assert_eq!(r.status, 304, "IF-NONE-MATCH: {r:?}");
    let r = conn.request(
        "GET",
        &path,
        &[("connection", "CLOSE"), ("range", "bytes=0-0")],
    );
    assert_partial(&r, &data, 0, 0, "lower-case connection header");
    conn.expect_eof("connection: CLOSE");
}

/// RFC 9112 3.2.2: "A server MUST accept the absolute-form in requests".
#[test]
fn absolute_form_request_target() {
    let server = start();
    let data = video();
    let mut conn = server.connect();
    let target = format!("http://{}/{VIDEO}", server.http);
    let r = conn.request("GET", &target, &[("Range", "bytes=10-19")]);
    assert_partial(&r, &data, 10, 19, "absolute-form target");
    let target = format!("http://{}/{VIDEO}/range/0-4", server.http);
    let r = conn.request("GET", &target, &[]);
    assert_partial(&r, &data, 0, 4, "absolute-form /range/ target");
}

#[test]
fn query_string_is_ignored() {
    let server = start();
    let data = video();
    let mut conn = server.connect();
    let r = conn.request("GET", &format!("/{VIDEO}?token=abc&x=1"), &[]);
    assert_full(&r, &data, "query string");
    let r = conn.request(
        "GET",
        &format!("/{VIDEO}?t=1"),
        &[("Range", "bytes=100-199")],
    );
    assert_partial(&r, &data, 100, 199, "query string + Range");
    let r = conn.request("GET", &format!("/{VIDEO}/range/0-9?session=42"), &[]);
    assert_partial(&r, &data, 0, 9, "query string on /range/");
}

#[test]
fn offsets_beyond_4_gib() {
    const GIB: u64 = 1 << 30;
    let len: u64 = 5 * GIB + 123;
    let b = ServerBuilder::new(BIN);
    let path = b.tier_dir("flash").join("big.ts");
    {
        let f = File::create(&path).unwrap();
        f.set_len(len).unwrap();
        f.write_all_at(b"<<MARK-4GiB>>", (4 * GIB) - 6).unwrap();
        f.write_all_at(&pattern("big+1MiB", 4096), 4 * GIB + (1 << 20) + 7)
            .unwrap();
        f.write_all_at(&pattern("big-end", 64), len - 64).unwrap();
        f.sync_all().unwrap();
    }
    let server = b.start();
    let file = File::open(&path).unwrap();
    let read = |first: u64, last: u64| -> Vec<u8> {
        let mut buf = vec![0u8; (last - first + 1) as usize];
        file.read_exact_at(&mut buf, first).unwrap();
        buf
    };

    let mut conn = server.connect();
    let r = conn.request("HEAD", "/big.ts", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.content_length(),
        Some(len),
        "HEAD of a 5 GiB object: {r:?}"
    );

    // A range longer than 4 GiB: only the headers (HEAD), to check no 32-bit truncation.
    let r = conn.request("HEAD", "/big.ts", &[("Range", "bytes=1-4294967300")]);
    assert_eq!(r.status, 206, "{r:?}");
    assert_eq!(r.content_length(), Some(4_294_967_300), "{r:?}");
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 1-4294967300/{len}").as_str())
    );

    let four = 4 * GIB;
    let ranges = [
        (four - 6, four + 6),                        // the marker across 2^32
        (four - 1, four),                            // the two bytes around 2^32
        (four, four),                                // exactly 2^32
        (four + (1 << 20), four + (1 << 20) + 5000), // second marker
        (four - (1 << 20), four + (3 << 20)),        // 4 MiB across 2^32
        (len - 64, len - 1),                         // the end
    ];
    for (a, bb) in ranges {
        let range = format!("bytes={a}-{bb}");
        let r = conn.request("GET", "/big.ts", &[("Range", &range)]);
        assert_eq!(r.status, 206, "{range}: {r:?}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {a}-{bb}/{len}").as_str()),
            "{range}"
        );
        assert_bytes_eq(&r.body, &read(a, bb), &range);
    }
    // Suffix and open ranges near the end, and the URL form past 4 GiB.
    let r = conn.request("GET", "/big.ts", &[("Range", "bytes=-100")]);
    assert_eq!(r.status, 206, "{r:?}");
    assert_bytes_eq(&r.body, &read(len - 100, len - 1), "bytes=-100 of 5 GiB");
    let range = format!("bytes={}-", len - 1000);
    let r = conn.request("GET", "/big.ts", &[("Range", &range)]);
    assert_eq!(r.status, 206, "{r:?}");
    assert_bytes_eq(&r.body, &read(len - 1000, len - 1), &range);
    let p = format!(
        "/big.ts/range/{}-{}",
        four + (1 << 20),
        four + (1 << 20) + 8191
    );
    let r = conn.request("GET", &p, &[]);
    assert_eq!(r.status, 206, "{p}: {r:?}");
    assert_bytes_eq(
        &r.body,
        &read(four + (1 << 20), four + (1 << 20) + 8191),
        &p,
    );
    // Past the end of a 5 GiB object.
    let range = format!("bytes={len}-");
    let r = conn.request("GET", "/big.ts", &[("Range", &range)]);
    assert_eq!(r.status, 416, "{r:?}");
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{len}").as_str())
    );

    // curl, across 2^32.
    let c = curl(
        &["-r", &format!("{}-{}", four - 100, four + 100)],
        &server.url("/big.ts"),
    );
    assert_eq!((c.exit_code, c.status), (Some(0), 206), "{c:?}");
    assert_bytes_eq(&c.body, &read(four - 100, four + 100), "curl across 4 GiB");
}

#[test]
fn head_matches_get() {
    let server = start();
    let data = video();
    let mut conn = server.connect();
    let get = conn.request("GET", &format!("/{VIDEO}"), &[]);
    assert_full(&get, &data, "GET");
    let head = conn.request("HEAD", &format!("/{VIDEO}"), &[]);
    assert_eq!(head.status, 200, "{head:?}");
    for h in [
        "content-length",
        "content-type",
        "etag",
        "last-modified",
        "accept-ranges",
    ] {
        assert!(get.header(h).is_some(), "GET lacks {h}: {get:?}");
        assert_eq!(head.header(h), get.header(h), "HEAD vs GET, header {h}");
    }
    // HEAD with a Range: the 206 headers, no body.
    let head = conn.request("HEAD", &format!("/{VIDEO}"), &[("Range", "bytes=10-19")]);
    assert_eq!(head.status, 206, "{head:?}");
    assert_eq!(head.content_length(), Some(10), "{head:?}");
    assert_eq!(
        head.header("content-range"),
        Some(format!("bytes 10-19/{VIDEO_LEN}").as_str())
    );
    // If HEAD had sent a body, this response would not parse.
    let r = conn.request("GET", &format!("/{VIDEO}"), &[("Range", "bytes=0-3")]);
    assert_partial(&r, &data, 0, 3, "GET after HEAD on the same connection");

    // ureq and curl see the same.
    let u = ureq_request(
        &ureq_agent(),
        "HEAD",
        &server.url(&format!("/{VIDEO}")),
        &[],
    );
    assert_eq!(u.status, 200);
    assert_eq!(u.header("content-length"), get.header("content-length"));
    assert!(u.body.is_empty());
}

#[test]
fn representation_headers() {
    let server = start();
    let data = video();
    let mut conn = server.connect();
    let r = conn.request("GET", &format!("/{VIDEO}"), &[]);
    assert_full(&r, &data, "GET");
    assert_eq!(r.header("accept-ranges"), Some("bytes"), "{r:?}");
    assert_eq!(r.header_count("content-length"), 1, "{r:?}");

    let etag = r.expect_header("etag").to_owned();
    assert!(
        etag.len() >= 3 && etag.starts_with('"') && etag.ends_with('"'),
        "ETag must be a quoted strong entity-tag, got {etag:?}"
    );
    assert!(
        !etag[1..etag.len() - 1].contains('"'),
        "ETag has an inner quote: {etag:?}"
    );

    assert_eq!(
        r.header("last-modified"),
        Some(MTIME_HTTP),
        "Last-Modified must be the file's mtime"
    );
    let date = r.expect_header("date");
    let parsed = httpdate::parse_http_date(date)
        .unwrap_or_else(|e| panic!("Date {date:?} is not an HTTP date: {e}"));
    let now = SystemTime::now();
    let skew = now.duration_since(parsed).unwrap_or_else(|e| e.duration());
    assert!(
        skew < Duration::from_secs(3600),
        "Date {date:?} is far from now"
    );

    // Stable across requests and response kinds, and per object.
    let r2 = conn.request("GET", &format!("/{VIDEO}"), &[("Range", "bytes=5-10")]);
    assert_eq!(r2.header("etag"), Some(etag.as_str()), "206 ETag: {r2:?}");
    assert_eq!(r2.header("last-modified"), Some(MTIME_HTTP));
    let r3 = conn.request("HEAD", &format!("/{VIDEO}"), &[]);
    assert_eq!(r3.header("etag"), Some(etag.as_str()), "HEAD ETag: {r3:?}");
    let other = conn.request("HEAD", &format!("/{CANARY}"), &[]);
    assert_ne!(
        other.header("etag"),
        Some(etag.as_str()),
        "two different objects share an ETag"
    );
}

#[test]
fn content_type_by_extension() {
    let cases = [
        ("a.mp4", "video/mp4"),
        ("seg-1.m4s", "video/iso.segment"),
        ("audio.m4a", "audio/mp4"),
        ("seg.ts", "video/mp2t"),
        ("index.m3u8", "application/vnd.apple.mpegurl"),
        ("manifest.mpd", "application/dash+xml"),
        ("subs.vtt", "text/vtt"),
        ("blob.bin", "application/octet-stream"),
        ("noextension", "application/octet-stream"),
        ("archive.tar.gz", "application/octet-stream"),
    ];
    let mut b = ServerBuilder::new(BIN);
    for (name, _) in cases {
        b = b.file("flash", name, &pattern(name, 100));
    }
    let server = b.start();
    let mut conn = server.connect();
    for (name, want) in cases {
        for range in [None, Some("bytes=0-9")] {
            let headers: Vec<(&str, &str)> = range.map(|r| ("Range", r)).into_iter().collect();
            let r = conn.request("GET", &format!("/{name}"), &headers);
            assert!(r.status == 200 || r.status == 206, "{name}: {r:?}");
            let ct = r.expect_header("content-type");
            let media = ct.split(';').next().unwrap().trim();
            assert!(
                media.eq_ignore_ascii_case(want),
                "{name} (Range {range:?}): Content-Type {ct:?}, want {want}"
            );
        }
    }
}

#[test]
fn if_none_match() {
    let server = start();
    let data = video();
    let path = format!("/{VIDEO}");
    let mut conn = server.connect();
    let etag = conn
        .request("HEAD", &path, &[])
        .expect_header("etag")
        .to_owned();
    let weak = format!("W/{etag}");
    let list = format!("\"nope\", {etag}");
    for inm in [etag.as_str(), weak.as_str(), list.as_str(), "*"] {
        let r = conn.request("GET", &path, &[("If-None-Match", inm)]);
        assert_eq!(r.status, 304, "If-None-Match: {inm}: {r:?}");
        assert_eq!(
            r.header("etag"),
            Some(etag.as_str()),
            "304 must carry the ETag"
        );
        // No body: the next response on this connection must parse and be exact.
        let r = conn.request("GET", &path, &[("Range", "bytes=0-15")]);
        assert_partial(&r, &data, 0, 15, &format!("request after 304 ({inm})"));
    }
    // With a Range as well: still 304 (the condition is evaluated before Range).
    let r = conn.request(
        "GET",
        &path,
        &[("If-None-Match", &etag), ("Range", "bytes=0-99")],
    );
    assert_eq!(r.status, 304, "If-None-Match + Range: {r:?}");
    // HEAD too.
    let r = conn.request("HEAD", &path, &[("If-None-Match", &etag)]);
    assert_eq!(r.status, 304, "HEAD If-None-Match: {r:?}");
    // Not matching: served.
    let r = conn.request("GET", &path, &[("If-None-Match", "\"something-else\"")]);
    assert_full(&r, &data, "If-None-Match not matching");
    let r = conn.request(
        "GET",
        &path,
        &[
            ("If-None-Match", "\"something-else\""),
            ("Range", "bytes=1-2"),
        ],
    );
    assert_partial(&r, &data, 1, 2, "If-None-Match not matching + Range");

    // ureq sees the 304 with an empty body.
    let u = ureq_request(
        &ureq_agent(),
        "GET",
        &server.url(&path),
        &[("If-None-Match", &etag)],
    );
    assert_eq!(u.status, 304);
    assert!(u.body.is_empty());
}

#[test]
fn if_range() {
    let server = start();
    let data = video();
    let path = format!("/{VIDEO}");
    let mut conn = server.connect();
    let etag = conn
        .request("HEAD", &path, &[])
        .expect_header("etag")
        .to_owned();

    let r = conn.request(
        "GET",
        &path,
        &[("Range", "bytes=100-299"), ("If-Range", &etag)],
    );
    assert_partial(&r, &data, 100, 299, "If-Range matching");

    let r = conn.request(
        "GET",
        &path,
        &[("Range", "bytes=100-299"), ("If-Range", "\"other-etag\"")],
    );
    assert_full(&r, &data, "If-Range not matching");

    // If-Range uses the strong comparison: a weak tag never matches.
    let weak = format!("W/{etag}");
    let r = conn.request(
        "GET",
        &path,
        &[("Range", "bytes=100-299"), ("If-Range", &weak)],
    );
    assert_full(&r, &data, "If-Range with a weak tag");

    // If-Range without Range: plain 200.
    let r = conn.request("GET", &path, &[("If-Range", &etag)]);
    assert_full(&r, &data, "If-Range without Range");

    let u = ureq_request(
        &ureq_agent(),
        "GET",
        &server.url(&path),
        &[("Range", "bytes=-10"), ("If-Range", &etag)],
    );
    assert_partial(
        &u,
        &data,
        VIDEO_LEN as u64 - 10,
        VIDEO_LEN as u64 - 1,
        "ureq If-Range",
    );
}

fn token_list_contains(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[test]
fn cors() {
    let server = start();
    let data = video();
    let path = format!("/{VIDEO}");
    let origin = "https://player.example";
    let mut conn = server.connect();

    for range in [None, Some("bytes=0-99")] {
        let mut headers = vec![("Origin", origin)];
        if let Some(r) = range {
            headers.push(("Range", r));
        }
        let r = conn.request("GET", &path, &headers);
        assert!(r.status == 200 || r.status == 206, "{r:?}");
        let acao = r.expect_header("access-control-allow-origin");
        assert!(
            acao == "*" || acao == origin,
            "Access-Control-Allow-Origin {acao:?}"
        );
        let expose = r.expect_header("access-control-expose-headers");
        for h in ["Content-Range", "Content-Length"] {
            assert!(
                expose.trim() == "*" || token_list_contains(expose, h),
                "Access-Control-Expose-Headers {expose:?} lacks {h}"
            );
        }
        if range.is_some() {
            assert_partial(&r, &data, 0, 99, "CORS range");
        }
    }

    // Preflight for a Range request.
    let r = conn.request(
        "OPTIONS",
        &path,
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "range"),
        ],
    );
    assert_eq!(r.status, 204, "preflight: {r:?}");
    let acao = r.expect_header("access-control-allow-origin");
    assert!(acao == "*" || acao == origin, "{r:?}");
    let methods = r.expect_header("access-control-allow-methods");
    for m in ["GET", "HEAD"] {
        assert!(
            token_list_contains(methods, m),
            "Access-Control-Allow-Methods {methods:?} lacks {m}"
        );
    }
    let allow_headers = r.expect_header("access-control-allow-headers");
    assert!(
        allow_headers.trim() == "*" || token_list_contains(allow_headers, "range"),
        "preflight asked for `range`; Access-Control-Allow-Headers is {allow_headers:?}"
    );
    // 204 has no body: the connection goes on.
    let r = conn.request("GET", &path, &[("Range", "bytes=7-8")]);
    assert_partial(&r, &data, 7, 8, "after preflight");

    // curl's view of the preflight.
    let c = curl(
        &[
            "-X",
            "OPTIONS",
            "-H",
            &format!("Origin: {origin}"),
            "-H",
            "Access-Control-Request-Method: GET",
        ],
        &server.url(&path),
    );
    assert_eq!((c.exit_code, c.status), (Some(0), 204), "{c:?}");
}

/// Drops `path` from the page cache and checks that it is gone (mincore).
fn evict_from_page_cache(path: &std::path::Path) {
    let file = File::open(path).unwrap();
    file.sync_all().unwrap();
    use std::os::fd::AsRawFd;
    for _ in 0..5 {
        // SAFETY: posix_fadvise only reads its integer arguments; the fd is open.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0, "posix_fadvise(DONTNEED) failed: {rc}");
        if resident_pages(&file) == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "could not evict {path:?} from the page cache ({} pages still resident); \
         this test needs a disk-backed CARGO_TARGET_TMPDIR",
        resident_pages(&file)
    );
}

fn resident_pages(file: &File) -> usize {
    let len = file.metadata().unwrap().len() as usize;
    // SAFETY: a read-only private mapping of a file nobody truncates during the test; its
    // pages are never touched, only queried with mincore.
    let map = unsafe { memmap2::Mmap::map(file) }.expect("mmap");
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let mut vec = vec![0u8; len.div_ceil(page)];
    // SAFETY: `map` is a live mapping of `len` bytes and `vec` has one byte per page of it.
    let rc = unsafe { libc::mincore(map.as_ptr() as *mut libc::c_void, len, vec.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore failed");
    vec.iter().filter(|v| **v & 1 == 1).count()
}

#[test]
fn cold_ranges_are_byte_exact_and_counted() {
    const LEN: usize = 8 << 20;
    let data = pattern("cold.mp4", LEN);
    let server = ServerBuilder::new(BIN)
        .io("residency_check", "true")
        .io("cold_read_threads", "2")
        .file("flash", "cold.mp4", &data)
        .start();
    let path = server.tier_dir("flash").join("cold.mp4");
    let before = server
        .metrics()
        .sum("edgeplane_cold_reads_total", &[("tier", "flash")]);

    evict_from_page_cache(&path);
    let mut conn = server.connect();
    let r = conn.request("GET", "/cold.mp4", &[("Range", "bytes=1048576-3145727")]);
    assert_partial(&r, &data, 1_048_576, 3_145_727, "cold range");
    server.wait_metrics("edgeplane_cold_reads_total{tier=\"flash\"} to grow", |m| {
        m.sum("edgeplane_cold_reads_total", &[("tier", "flash")]) > before
    });

    // Cold again, several odd ranges and the whole object, on one connection.
    evict_from_page_cache(&path);
    let l = LEN as u64;
    for (a, b) in [(0, 0), (4095, 4097), (l - 7, l - 1), (123_457, 2_345_679)] {
        let r = conn.request("GET", "/cold.mp4", &[("Range", &format!("bytes={a}-{b}"))]);
        assert_partial(&r, &data, a, b, "cold range");
    }
    evict_from_page_cache(&path);
    let r = conn.request("GET", "/cold.mp4", &[]);
    assert_full(&r, &data, "cold whole object");
}
