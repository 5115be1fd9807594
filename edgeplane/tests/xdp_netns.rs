//! The XDP filter on a real interface: two network namespaces joined by a veth, edgeplane
//! serving in one with the program attached in driver mode, curl in the other choosing its
//! source address with `--interface` (and, for the download that must outlive a drain, a slow
//! client thread that enters the client namespace itself).
//!
//! - a client whose source is in a served prefix downloads ranges byte-exact (IPv4 and IPv6);
//! - a client outside the prefixes cannot connect (its SYNs die at the NIC, counted);
//! - a prefix added at runtime starts working, removed stops;
//! - drain stops new connections while a download already running completes byte-exact.
//!
//! Needs root (namespaces, CAP_BPF) and `ip` and `curl`; skips with the reason printed otherwise.

use std::thread;
use std::time::{Duration, Instant};

use edgeplane_test_support::prelude::{assert_bytes_eq, pattern, Metrics, ServerBuilder};
use edgeplane_test_support::xdp::{
    is_root, prefixes, skip, PinDir, VethPair, CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6,
};

/// The binary under test (Cargo builds it for these tests).
const BIN: &str = env!("CARGO_BIN_EXE_edgeplane");

const OBJECT: &str = "movie.bin";
const OBJECT_LEN: usize = 2 << 20;

/// Dropped in field order: the server stops before its pins and its namespaces go.
struct Rig {
    server: edgeplane_test_support::server::Server,
    pins: PinDir,
    net: VethPair,
    port: u16,
    data: Vec<u8>,
}

impl Rig {
    fn fetch(
        &self,
        src: &str,
        first: usize,
        last: usize,
        extra: &[&str],
    ) -> Result<Vec<u8>, String> {
        fetch(&self.net, self.port, src, first, last, extra)
    }

    /// A byte-exact range from `src`, or a failed test.
    fn assert_fetch(&self, src: &str, first: usize, last: usize, what: &str) {
        match self.fetch(src, first, last, &[]) {
            Ok(body) => assert_bytes_eq(&body, &self.data[first..=last], what),
            Err(e) => panic!("{what}: {e}\n{}", self.server.output()),
        }
    }

    /// Connecting from `src` must fail (the SYN is dropped at the NIC: curl times out).
    fn assert_refused(&self, src: &str, what: &str) {
        match self.fetch(src, 0, 99, &[]) {
            Ok(_) => panic!("{what}: {src} could download"),
            Err(e) => assert!(
                e.starts_with("curl exit 28"),
                "{what}: expected a connect timeout, got {e}"
            ),
        }
    }

    /// `/metrics`, scraped inside the server's namespace.
    fn metrics(&self) -> Metrics {
        let url = format!("http://{}/metrics", self.server.admin);
        let (code, body, err) = self.net.exec(&self.net.server, &["curl", "-sS", &url]);
        assert_eq!(code, 0, "scrape: {err}");
        Metrics::parse(&String::from_utf8_lossy(&body))
    }

    fn prefixes(&self, args: &[&str]) {
        let (code, out, err) = prefixes(BIN, self.pins.path(), args);
        assert_eq!(code, 0, "edgeplane prefixes {}: {err}", args.join(" "));
        assert!(!out.is_empty());
    }
}

/// curl in the client namespace from `src` for bytes `first..=last` of the object; the body, or
/// curl's exit code and message.
fn fetch(
    net: &VethPair,
    port: u16,
    src: &str,
    first: usize,
    last: usize,
    extra: &[&str],
) -> Result<Vec<u8>, String> {
    let url = if src.contains(':') {
        format!("http://[{SERVER_V6}]:{port}/{OBJECT}")
    } else {
        format!("http://{SERVER_V4}:{port}/{OBJECT}")
    };
    let range = format!("{first}-{last}");
    let mut args = vec![
        "curl",
        "-sS",
        "--fail",
        "--interface",
        src,
        "--connect-timeout",
        "2",
        "-r",
        &range,
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    let (code, body, err) = net.exec(&net.client, &args);
    if code == 0 {
        Ok(body)
    } else {
        Err(format!("curl exit {code}: {}", err.trim()))
    }
}

/// A slow client in namespace `ns`: a thread that enters it, connects from `src` with a small
/// receive buffer and reads bytes `first..=last` of the object 8 KiB every 30 ms. curl's
/// `--limit-rate` cannot be used for this: the kernel's buffers absorb a whole megabyte.
fn slow_get(ns: &str, src: &str, port: u16, first: usize, last: usize) -> Result<Vec<u8>, String> {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let netns = std::fs::File::open(format!("/var/run/netns/{ns}")).map_err(|e| e.to_string())?;
    // SAFETY: setns on a namespace descriptor we own; it moves only this thread.
    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns: {}", std::io::Error::last_os_error()));
    }
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| e.to_string())?;
    sock.set_recv_buffer_size(32 << 10)
        .map_err(|e| e.to_string())?;
    let local: std::net::SocketAddr = format!("{src}:0").parse().unwrap();
    sock.bind(&local.into()).map_err(|e| e.to_string())?;
    let server: std::net::SocketAddr = format!("{SERVER_V4}:{port}").parse().unwrap();
    sock.connect_timeout(&server.into(), Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    let mut stream: std::net::TcpStream = sock.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET /{OBJECT} HTTP/1.1\r\nHost: x\r\nRange: bytes={first}-{last}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = stream.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
        thread::sleep(Duration::from_millis(30));
    }
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no response head")?;
    let head = String::from_utf8_lossy(&response[..head_end]).into_owned();
    if !head.starts_with("HTTP/1.1 206") {
        return Err(format!("unexpected response: {head}"));
    }
    Ok(response[head_end + 4..].to_vec())
}

fn start(test: &str, tag: &str) -> Option<Rig> {
    start_with(test, tag, 1, "")
}

fn start_with(test: &str, tag: &str, cores: u32, extra: &str) -> Option<Rig> {
    if !is_root() {
        skip(test, "needs root (network namespaces, CAP_BPF)");
        return None;
    }
    for tool in ["ip", "curl"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            skip(
                test,
                &format!("`{tool}` is not installed (scripts/setup.sh installs it)"),
            );
            return None;
        }
    }
    let net = VethPair::create(tag).unwrap_or_else(|e| panic!("{test}: {e}"));
    let pins = PinDir::own_bpffs(test).unwrap_or_else(|e| panic!("{test}: {e}"));
    let data = pattern(OBJECT, OBJECT_LEN);
    let xdp = format!(
        "[xdp]\ninterfaces = [\"{}\"]\nmode = \"driver\"\nenforce = true\nrequired = true\n\
         pin_dir = \"{}\"\nprefixes = [\"{}/32\", \"{}/128\"]\n{extra}\n",
        net.server_if,
        pins.path().display(),
        CLIENT_V4[0],
        CLIENT_V6[0],
    );
    let server = ServerBuilder::new(BIN)
        .cores(cores)
        .http_listen("[::]:0")
        .file("flash", OBJECT, &data)
        .section(&xdp)
        .wrapper(&net.wrapper(&net.server))
        .start();
    let port = server.http.port();
    let rig = Rig {
        net,
        server,
        pins,
        port,
        data,
    };
    let m = rig.metrics();
    let attached = [
        ("interface", rig.net.server_if.as_str()),
        ("mode", "driver"),
    ];
    assert_eq!(
        m.sum("edgeplane_xdp_attached", &attached),
        1.0,
        "{}",
        m.text
    );
    Some(rig)
}

fn drops(m: &Metrics, reason: &str) -> f64 {
    m.sum(
        "edgeplane_xdp_packets_total",
        &[("verdict", "drop"), ("reason", reason)],
    )
}

#[test]
fn served_prefixes_connect_others_do_not() {
    let Some(rig) = start("served_prefixes_connect_others_do_not", "pfx") else {
        return;
    };
    let (allowed, outside) = (CLIENT_V4[0], CLIENT_V4[1]);
    rig.assert_fetch(allowed, 0, OBJECT_LEN - 1, "whole object, allowed IPv4");
    rig.assert_fetch(allowed, 123_457, 1_500_000, "a range, allowed IPv4");
    rig.assert_fetch(CLIENT_V6[0], 1_000_000, 1_999_999, "a range, allowed IPv6");

    let before = drops(&rig.metrics(), "not_served");
    rig.assert_refused(outside, "IPv4 outside the prefixes");
    rig.assert_refused(CLIENT_V6[1], "IPv6 outside the prefixes");
    let m = rig.metrics();
    assert!(drops(&m, "not_served") > before, "{}", m.text);
    let v4 = [("prefix", "10.201.0.2/32")];
    assert!(
        m.sum("edgeplane_xdp_prefix_packets_total", &v4) > 10.0,
        "{}",
        m.text
    );
    assert!(
        m.sum("edgeplane_xdp_prefix_bytes_total", &v4) > 500.0,
        "{}",
        m.text
    );
    assert_eq!(m.sum("edgeplane_xdp_prefix_drops_total", &v4), 0.0);

    // Added at runtime: works at once. Removed: stops at once.
    rig.prefixes(&["add", "10.201.0.0/30"]);
    rig.assert_fetch(outside, 5, 70_000, "after adding 10.201.0.0/30");
    rig.assert_refused(CLIENT_V4[2], "10.201.0.4 is outside 10.201.0.0/30");
    rig.prefixes(&["add", "fd00:201::3/128"]);
    rig.assert_fetch(CLIENT_V6[1], 0, 9, "after adding fd00:201::3/128");
    rig.prefixes(&["remove", "10.201.0.0/30"]);
    rig.assert_refused(outside, "after removing 10.201.0.0/30");
    rig.assert_fetch(allowed, 0, 1023, "its own /32 still served");
    let m = rig.metrics();
    assert_eq!(m.sum("edgeplane_xdp_prefixes", &[]), 3.0, "{}", m.text);
}

#[test]
fn drain_stops_new_connections_and_running_downloads_finish() {
    let Some(rig) = start(
        "drain_stops_new_connections_and_running_downloads_finish",
        "drn",
    ) else {
        return;
    };
    let client = CLIENT_V4[0];
    rig.assert_fetch(client, 0, 99, "before the drain");
    thread::scope(|s| {
        // ~4 s at ~250 KB/s through a 32 KiB receive buffer: the server is still sending
        // when the drain starts and is checked (~2.5 s).
        let (ns, port) = (rig.net.client.clone(), rig.port);
        let download = s.spawn(move || slow_get(&ns, client, port, 0, OBJECT_LEN / 2 - 1));
        let deadline = Instant::now() + Duration::from_secs(10);
        while rig.metrics().sum("edgeplane_open_connections", &[]) < 1.0 {
            if Instant::now() > deadline || download.is_finished() {
                panic!(
                    "the slow download never showed as connected: {:?}",
                    download.join().map(|r| r.map(|b| b.len()))
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        rig.prefixes(&["drain", "all"]);
        assert_eq!(rig.metrics().sum("edgeplane_xdp_drain", &[]), 1.0);
        rig.assert_refused(client, "a new connection under the global drain");
        assert!(
            !download.is_finished(),
            "the slow download ended before the drain was checked"
        );
        let body = download
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("the running download failed: {e}"));
        assert_bytes_eq(
            &body,
            &rig.data[..OBJECT_LEN / 2],
            "download that ran through the drain",
        );
    });
    let m = rig.metrics();
    assert!(drops(&m, "drain") >= 1.0, "{}", m.text);
    rig.prefixes(&["drain", "all", "--off"]);
    rig.assert_fetch(client, 0, 99, "after the drain");

    // A drain on one prefix leaves the others alone.
    rig.prefixes(&["drain", "10.201.0.2/32"]);
    rig.assert_refused(client, "its prefix is draining");
    rig.assert_fetch(CLIENT_V6[0], 0, 99, "another prefix is not");
    let m = rig.metrics();
    assert!(
        m.sum(
            "edgeplane_xdp_prefix_drops_total",
            &[("prefix", "10.201.0.2/32")]
        ) >= 1.0,
        "{}",
        m.text
    );
    rig.prefixes(&["drain", "10.201.0.2/32", "--off"]);
    rig.assert_fetch(client, 0, 99, "its drain ended");
}

#[test]
fn cpumap_steering_keeps_downloads_exact() {
    let test = "cpumap_steering_keeps_downloads_exact";
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        skip(test, "needs 2 CPUs for 2 executors");
        return;
    }
    let Some(rig) = start_with(test, "cpu", 2, "steering = \"cpumap\"") else {
        return;
    };
    // A veth hands its peer TCP segments with the checksum left to "offload"
    // (CHECKSUM_PARTIAL); XDP_REDIRECT into a CPUMAP drops that note, and the stack on the other
    // CPU then finds a bad checksum. Real NICs deliver complete checksums; here the client
    // computes them itself.
    let (code, _, err) = rig.net.exec(
        &rig.net.client,
        &["ethtool", "-K", &rig.net.client_if, "tx", "off"],
    );
    if code != 0 {
        skip(test, &format!("ethtool -K … tx off failed ({code}): {err}"));
        return;
    }
    for (i, src) in [CLIENT_V4[0], CLIENT_V6[0]].into_iter().enumerate() {
        for n in 0..4 {
            let first = 1000 * (n + 4 * i);
            rig.assert_fetch(
                src,
                first,
                first + 700_000,
                &format!("steered download {n} from {src}"),
            );
        }
    }
    let m = rig.metrics();
    let steered = m.sum(
        "edgeplane_xdp_packets_total",
        &[("verdict", "redirect"), ("reason", "served")],
    );
    assert!(
        steered > 100.0,
        "frames redirected through the CPUMAP: {}",
        m.text
    );
    assert_eq!(
        m.sum("edgeplane_xdp_steering", &[("mode", "cpumap")]),
        1.0,
        "{}",
        m.text
    );
    rig.assert_refused(CLIENT_V4[1], "outside the prefixes, with steering on");
}

/// `edgeplane_xdp::sync_prefixes`, the agent's way in: the served set becomes exactly the one
/// asked for, and the NIC follows at once.
#[test]
fn sync_prefixes_makes_the_served_set_exact() {
    let Some(rig) = start("sync_prefixes_makes_the_served_set_exact", "sync") else {
        return;
    };
    let p = |s: &str| -> edgeplane_xdp::Prefix { s.parse().unwrap() };
    rig.assert_fetch(CLIENT_V4[0], 0, 999, "configured /32");
    rig.assert_refused(CLIENT_V4[1], "not yet served");

    let desired = [
        p("10.201.0.3/32"),
        p("fd00:201::3/128"),
        p("10.201.0.3/32"),
        p("198.51.100.0/24"),
    ];
    let report = edgeplane_xdp::sync_prefixes(rig.pins.path(), &desired)
        .unwrap_or_else(|e| panic!("sync: {e}\n{}", rig.server.output()));
    assert_eq!(
        report.added,
        [
            p("10.201.0.3/32"),
            p("198.51.100.0/24"),
            p("fd00:201::3/128")
        ]
    );
    assert_eq!(report.removed, [p("10.201.0.2/32"), p("fd00:201::2/128")]);
    rig.assert_fetch(CLIENT_V4[1], 10, 70_000, "added by sync (IPv4)");
    rig.assert_fetch(CLIENT_V6[1], 0, 99, "added by sync (IPv6)");
    rig.assert_refused(CLIENT_V4[0], "removed by sync (IPv4)");
    rig.assert_refused(CLIENT_V6[0], "removed by sync (IPv6)");
    let (_, out, _) = prefixes(BIN, rig.pins.path(), &["list"]);
    assert_eq!(out, "10.201.0.3/32\n198.51.100.0/24\nfd00:201::3/128\n");
    assert_eq!(rig.metrics().sum("edgeplane_xdp_prefixes", &[]), 3.0);

    // Already in step: nothing changes.
    let again = edgeplane_xdp::sync_prefixes(rig.pins.path(), &desired).unwrap();
    assert_eq!(again, edgeplane_xdp::SyncReport::default());
    // Down to nothing: no one is served.
    let all_gone = edgeplane_xdp::sync_prefixes(rig.pins.path(), &[]).unwrap();
    assert_eq!(all_gone.removed.len(), 3);
    rig.assert_refused(CLIENT_V4[1], "empty set");
    // Back to one.
    edgeplane_xdp::sync_prefixes(rig.pins.path(), &[p("10.201.0.0/30")]).unwrap();
    rig.assert_fetch(CLIENT_V4[0], 0, 9, "10.201.0.0/30 after sync");
    rig.assert_fetch(CLIENT_V4[1], 0, 9, "10.201.0.0/30 after sync");

    // Without a running data plane: an error, not a panic.
    let e = edgeplane_xdp::sync_prefixes(std::path::Path::new("/run/edgeplane-nonexistent"), &[])
        .unwrap_err();
    assert!(e.to_string().contains("is the data plane running"), "{e}");
}
