//! `cargo xtask demo`: build edgeplane, serve a small deterministic catalog, fetch from it with
//! curl (a real client) and check every byte, show a few metrics, then stop it with SIGTERM.

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::catalog::{sized_by_name, write_object, write_text};
use crate::server::{start_edgeplane, Ready};
use crate::util::{build_edgeplane, header, target_dir};

const TITLES: [&str; 2] = ["title1", "title2"];
/// (rendition, resolution, bandwidth bit/s, segment size range in bytes)
const RENDITIONS: [(&str, &str, u32, (u64, u64)); 2] = [
    ("1080p", "1920x1080", 3_000_000, (1 << 20, 2 << 20)),
    ("720p", "1280x720", 1_500_000, (512 << 10, 1 << 20)),
];
const SEGMENTS: u32 = 4;
const SEGMENT_SECONDS: u32 = 4;
const LONG_TAIL_TITLES: u32 = 6;
const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) fn run() -> Result<()> {
    let bin = build_edgeplane("release")?;
    let dir = target_dir().join("demo");
    header(&format!("writing the demo catalog under {}", dir.display()));
    let (flash, storage) = write_catalog(&dir)?;
    let config = dir.join("edgeplane.toml");
    fs::write(&config, config_text(&flash, &storage))
        .with_context(|| format!("write {}", config.display()))?;

    header(&format!("edgeplane serve --config {}", config.display()));
    let (mut server, ready) = start_edgeplane(
        &bin,
        &config,
        &dir.join("edgeplane.log"),
        None,
        READY_TIMEOUT,
    )?;

    header("fetching with curl");
    let scratch = dir.join("fetched");
    fs::create_dir_all(&scratch)?;
    let mut failures = Vec::new();
    let mut rows = Vec::new();
    for check in checks(&flash, &storage, &ready)? {
        let row = match run_check(&check, &scratch) {
            Ok(row) => row,
            Err(err) => Row::failed(&check, format!("{err:#}")),
        };
        if let Some(problem) = &row.problem {
            failures.push(format!("{}: {problem}", check.name));
        }
        rows.push(row);
    }
    print_table(&rows);

    header(&format!(
        "admin metrics (http://{}/metrics, excerpt)",
        ready.admin
    ));
    match show_metrics(ready.admin, &scratch) {
        Ok(()) => {}
        Err(err) => failures.push(format!("metrics: {err:#}")),
    }
    server.check_running()?;

    header("SIGTERM");
    if let Err(err) = server.stop_expect_success() {
        failures.push(format!("shutdown: {err:#}"));
    }

    if !failures.is_empty() {
        eprintln!();
        for failure in &failures {
            eprintln!("FAILED {failure}");
        }
        bail!("demo: {} check(s) failed", failures.len());
    }
    header("demo: all checks passed");
    Ok(())
}

/// Writes the flash tier (popular titles: init segments, media segments, HLS and DASH
/// playlists) and the storage tier (long-tail titles). Returns both tier directories.
fn write_catalog(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let flash = dir.join("flash");
    let storage = dir.join("storage");
    for tier in [&flash, &storage] {
        if tier.exists() {
            fs::remove_dir_all(tier).with_context(|| format!("remove {}", tier.display()))?;
        }
        fs::create_dir_all(tier).with_context(|| format!("create {}", tier.display()))?;
    }
    let mut bytes = 0;
    let mut objects = 0;
    for title in TITLES {
        for (rendition, _, _, (min, max)) in RENDITIONS {
            let init = format!("{title}-{rendition}-init.mp4");
            let len = sized_by_name(&init, 700, 1_400);
            write_object(&flash, &init, len)?;
            bytes += len;
            for seg in 1..=SEGMENTS {
                let name = format!("{title}-{rendition}-seg{seg:04}.m4s");
                let len = sized_by_name(&name, min, max);
                write_object(&flash, &name, len)?;
                bytes += len;
            }
            write_text(
                &flash,
                &format!("{title}-{rendition}.m3u8"),
                &media_playlist(title, rendition),
            )?;
            objects += SEGMENTS + 2;
        }
        write_text(&flash, &format!("{title}.m3u8"), &master_playlist(title))?;
        write_text(&flash, &format!("{title}.mpd"), &dash_manifest(title))?;
        objects += 2;
    }
    for n in 1..=LONG_TAIL_TITLES {
        let title = format!("archive{n:04}");
        for seg in 1..=3 {
            let name = format!("{title}-480p-seg{seg:04}.m4s");
            let len = sized_by_name(&name, 256 << 10, 768 << 10);
            write_object(&storage, &name, len)?;
            bytes += len;
            objects += 1;
        }
    }
    eprintln!(
        "{objects} objects, {:.1} MiB of segments",
        bytes as f64 / f64::from(1 << 20)
    );
    Ok((flash, storage))
}

fn master_playlist(title: &str) -> String {
    let mut s = String::from("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    for (rendition, resolution, bandwidth, _) in RENDITIONS {
        let _ = writeln!(
            s,
            "#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},RESOLUTION={resolution},\
             CODECS=\"avc1.640028,mp4a.40.2\"\n{title}-{rendition}.m3u8"
        );
    }
    s
}

fn media_playlist(title: &str, rendition: &str) -> String {
    let mut s = format!(
        "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:{SEGMENT_SECONDS}\n\
         #EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-MAP:URI=\"{title}-{rendition}-init.mp4\"\n"
    );
    for seg in 1..=SEGMENTS {
        let _ = writeln!(
            s,
            "#EXTINF:{SEGMENT_SECONDS}.000,\n{title}-{rendition}-seg{seg:04}.m4s"
        );
    }
    s.push_str("#EXT-X-ENDLIST\n");
    s
}

fn dash_manifest(title: &str) -> String {
    let total = SEGMENTS * SEGMENT_SECONDS;
    let mut reps = String::new();
    for (rendition, resolution, bandwidth, _) in RENDITIONS {
        let (w, h) = resolution.split_once('x').unwrap_or(("0", "0"));
        let _ = writeln!(
            reps,
            "      <Representation id=\"{rendition}\" bandwidth=\"{bandwidth}\" width=\"{w}\" \
             height=\"{h}\" codecs=\"avc1.640028\"/>"
        );
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <MPD xmlns=\"urn:mpeg:dash:schema:mpd:2011\" type=\"static\" \
         mediaPresentationDuration=\"PT{total}S\" minBufferTime=\"PT2S\" \
         profiles=\"urn:mpeg:dash:profile:isoff-on-demand:2011\">\n\
         \x20 <Period>\n\
         \x20   <AdaptationSet mimeType=\"video/mp4\" segmentAlignment=\"true\">\n\
         \x20     <SegmentTemplate timescale=\"1\" duration=\"{SEGMENT_SECONDS}\" startNumber=\"1\" \
         initialization=\"{title}-$RepresentationID$-init.mp4\" \
         media=\"{title}-$RepresentationID$-seg$Number%04d$.m4s\"/>\n\
         {reps}\
         \x20   </AdaptationSet>\n\
         \x20 </Period>\n\
         </MPD>\n"
    )
}

fn config_text(flash: &Path, storage: &Path) -> String {
    format!(
        "# Written by `cargo xtask demo`.\n\
         cores = 2\n\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         # The demo player fetches plain URLs: no signatures.\n\
         [signing]\nenabled = false\n\n\
         [[tier]]\nname = \"flash\"\nkind = \"flash\"\npath = {}\n\n\
         [[tier]]\nname = \"storage\"\nkind = \"storage\"\npath = {}\n",
        toml_string(flash),
        toml_string(storage)
    )
}

/// A TOML basic string for a path.
pub(crate) fn toml_string(path: &Path) -> String {
    let s = path.to_string_lossy();
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// What a fetch must return.
struct Check {
    name: &'static str,
    /// Shown in the table.
    request: String,
    url: String,
    curl_args: Vec<String>,
    status: u16,
    /// Expected body (`None`: not checked beyond the status).
    body: Option<Vec<u8>>,
    /// Expected response headers (name lower-case, value).
    headers: Vec<(&'static str, String)>,
}

fn checks(flash: &Path, storage: &Path, ready: &Ready) -> Result<Vec<Check>> {
    let http = ready.http;
    let seg1 = "title1-1080p-seg0001.m4s";
    let seg2 = "title2-720p-seg0003.m4s";
    let cold = "archive0003-480p-seg0002.m4s";
    let seg1_bytes = read(flash, seg1)?;
    let seg2_bytes = read(flash, seg2)?;
    let len1 = seg1_bytes.len() as u64;
    let len2 = seg2_bytes.len() as u64;
    let url = |id: &str| format!("http://{http}/{id}");
    let slice =
        |bytes: &[u8], first: u64, last: u64| bytes[first as usize..=last as usize].to_vec();

    let (r_first, r_last) = (1_000, 263_143);
    let (u_first, u_last) = (65_536, 589_823);
    let tail_first = len1 - 1_000;
    Ok(vec![
        Check {
            name: "whole object",
            request: format!("GET /{seg1}"),
            url: url(seg1),
            curl_args: vec![],
            status: 200,
            headers: vec![("content-length", len1.to_string())],
            body: Some(seg1_bytes.clone()),
        },
        Check {
            name: "Range header",
            request: format!("GET /{seg1} Range: bytes={r_first}-{r_last}"),
            url: url(seg1),
            curl_args: range_header(&format!("bytes={r_first}-{r_last}")),
            status: 206,
            headers: vec![("content-range", format!("bytes {r_first}-{r_last}/{len1}"))],
            body: Some(slice(&seg1_bytes, r_first, r_last)),
        },
        Check {
            name: "open-ended Range",
            request: format!("GET /{seg1} Range: bytes={tail_first}-"),
            url: url(seg1),
            curl_args: range_header(&format!("bytes={tail_first}-")),
            status: 206,
            headers: vec![(
                "content-range",
                format!("bytes {tail_first}-{}/{len1}", len1 - 1),
            )],
            body: Some(slice(&seg1_bytes, tail_first, len1 - 1)),
        },
        Check {
            name: "range URL",
            request: format!("GET /{seg2}/range/{u_first}-{u_last}"),
            url: url(&format!("{seg2}/range/{u_first}-{u_last}")),
            curl_args: vec![],
            status: 206,
            headers: vec![("content-range", format!("bytes {u_first}-{u_last}/{len2}"))],
            body: Some(slice(&seg2_bytes, u_first, u_last)),
        },
        Check {
            name: "HEAD",
            request: format!("HEAD /{seg1}"),
            url: url(seg1),
            // curl reads no body after a HEAD (and would store the headers as one).
            curl_args: vec!["--head".into()],
            status: 200,
            headers: vec![("content-length", len1.to_string())],
            body: None,
        },
        Check {
            name: "query string ignored",
            request: format!("GET /{seg2}?token=abc"),
            url: url(&format!("{seg2}?token=abc")),
            curl_args: vec![],
            status: 200,
            headers: vec![],
            body: Some(seg2_bytes),
        },
        Check {
            name: "storage tier",
            request: format!("GET /{cold}"),
            url: url(cold),
            curl_args: vec![],
            status: 200,
            headers: vec![],
            body: Some(read(storage, cold)?),
        },
        Check {
            name: "playlist",
            request: "GET /title1.m3u8".into(),
            url: url("title1.m3u8"),
            curl_args: vec![],
            status: 200,
            headers: vec![],
            body: Some(read(flash, "title1.m3u8")?),
        },
        Check {
            name: "missing object",
            request: "GET /no-such-title-seg0001.m4s".into(),
            url: url("no-such-title-seg0001.m4s"),
            curl_args: vec![],
            status: 404,
            headers: vec![],
            body: None,
        },
        Check {
            name: "admin healthz",
            request: "GET admin /healthz".into(),
            url: format!("http://{}/healthz", ready.admin),
            curl_args: vec![],
            status: 200,
            headers: vec![],
            body: None,
        },
    ])
}

fn range_header(spec: &str) -> Vec<String> {
    vec!["-H".into(), format!("Range: {spec}")]
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>> {
    let path = dir.join(name);
    fs::read(&path).with_context(|| format!("read {}", path.display()))
}

struct Row {
    name: &'static str,
    request: String,
    status: String,
    bytes: u64,
    seconds: f64,
    problem: Option<String>,
}

impl Row {
    fn failed(check: &Check, problem: String) -> Row {
        Row {
            name: check.name,
            request: check.request.clone(),
            status: "-".into(),
            bytes: 0,
            seconds: 0.0,
            problem: Some(problem),
        }
    }
}

/// The result of one curl run.
pub(crate) struct Fetched {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    /// Body bytes curl received.
    pub(crate) downloaded: u64,
    pub(crate) seconds: f64,
}

impl Fetched {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Fetches `url` with curl; the body lands in `scratch` and is read back.
pub(crate) fn curl(url: &str, args: &[String], scratch: &Path) -> Result<Fetched> {
    let body_path = scratch.join("body");
    let head_path = scratch.join("headers");
    let _ = fs::remove_file(&body_path);
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10", "--http1.1"])
        .arg("--output")
        .arg(&body_path)
        .arg("--dump-header")
        .arg(&head_path)
        .args(["--write-out", "%{http_code} %{size_download} %{time_total}"])
        .args(args)
        .arg(url)
        .output()
        .context("could not run curl (run `bash scripts/setup.sh`)")?;
    if !output.status.success() {
        bail!(
            "curl failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let out = String::from_utf8_lossy(&output.stdout);
    let mut fields = out.split_whitespace();
    let status = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let downloaded = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let seconds = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let head = fs::read_to_string(&head_path).unwrap_or_default();
    // The last header block is the final response's.
    let block = head
        .split("\r\n\r\n")
        .filter(|b| !b.trim().is_empty())
        .last()
        .unwrap_or("");
    let headers = block
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = fs::read(&body_path).unwrap_or_default();
    Ok(Fetched {
        status,
        headers,
        body,
        downloaded,
        seconds,
    })
}

fn run_check(check: &Check, scratch: &Path) -> Result<Row> {
    let got = curl(&check.url, &check.curl_args, scratch)?;
    let mut problems = Vec::new();
    if got.status != check.status {
        problems.push(format!("status {} (expected {})", got.status, check.status));
    }
    for (name, want) in &check.headers {
        match got.header(name) {
            Some(value) if value == want => {}
            Some(value) => problems.push(format!("{name}: {value:?} (expected {want:?})")),
            None => problems.push(format!("no {name} header (expected {want:?})")),
        }
    }
    if let Some(want) = &check.body {
        if got.body != *want {
            let at = got.body.iter().zip(want).position(|(a, b)| a != b);
            problems.push(match at {
                Some(at) => format!(
                    "body differs from the file at byte {at} ({} bytes, expected {})",
                    got.body.len(),
                    want.len()
                ),
                None => format!("body is {} bytes, expected {}", got.body.len(), want.len()),
            });
        }
    }
    Ok(Row {
        name: check.name,
        request: check.request.clone(),
        status: got.status.to_string(),
        bytes: got.downloaded,
        seconds: got.seconds,
        problem: (!problems.is_empty()).then(|| problems.join("; ")),
    })
}

fn print_table(rows: &[Row]) {
    let w_name = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(5);
    let w_req = rows
        .iter()
        .map(|r| r.request.len())
        .max()
        .unwrap_or(0)
        .max(7);
    println!(
        "{:<w_name$}  {:<w_req$}  {:>6}  {:>9}  {:>9}  {:>8}  result",
        "check", "request", "status", "bytes", "time ms", "MB/s"
    );
    for r in rows {
        let mbps = if r.seconds > 0.0 {
            format!("{:.1}", r.bytes as f64 / r.seconds / 1e6)
        } else {
            "-".into()
        };
        let result = match &r.problem {
            None => "ok".to_owned(),
            Some(p) => format!("FAIL: {p}"),
        };
        println!(
            "{:<w_name$}  {:<w_req$}  {:>6}  {:>9}  {:>9.2}  {:>8}  {result}",
            r.name,
            r.request,
            r.status,
            r.bytes,
            r.seconds * 1e3,
            mbps
        );
    }
}

/// Prints the interesting lines of the admin /metrics; fails if it is not served or lacks the
/// request counter.
fn show_metrics(admin: SocketAddr, scratch: &Path) -> Result<()> {
    let got = curl(&format!("http://{admin}/metrics"), &[], scratch)?;
    if got.status != 200 {
        bail!("GET /metrics: status {}", got.status);
    }
    let text = String::from_utf8_lossy(&got.body);
    let wanted = [
        "edgeplane_requests_total",
        "edgeplane_response_bytes_total",
        "edgeplane_catalog_objects",
        "edgeplane_open_connections",
        "edgeplane_ttfb_seconds",
    ];
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && wanted.iter().any(|w| l.starts_with(w)))
        // Counters that never moved (most status codes) are noise here.
        .filter(|l| {
            l.starts_with("edgeplane_open_connections")
                || l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) != Some(0.0)
        })
        .collect();
    for line in lines.iter().take(16) {
        println!("  {line}");
    }
    if lines.len() > 16 {
        println!("  ... ({} more)", lines.len() - 16);
    }
    if !text.contains("edgeplane_requests_total") {
        bail!("/metrics has no edgeplane_requests_total");
    }
    Ok(())
}
