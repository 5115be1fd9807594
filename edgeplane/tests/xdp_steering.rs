//! `SK_REUSEPORT` steering: with `xdp.steering = "reuseport"`, a connection lands on the
//! executor that the flow hash of its 4-tuple names — the hash the XDP program's CPUMAP
//! steering uses — whatever the kernel's own reuseport hash would have chosen.
//!
//! Two executors on loopback; connections from many chosen source ports; for each, the
//! per-executor counter `edgeplane_core_requests_total{core}` must move on exactly the core
//! `executor_for(flow_hash_v4(…), 2)` predicts. Needs root (CAP_BPF); skips otherwise.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use edgeplane_test_support::prelude::ServerBuilder;
use edgeplane_test_support::xdp::{is_root, skip, PinDir};
use edgeplane_xdp::{executor_for, flow_hash_v4, flow_hash_v6};

/// The binary under test (Cargo builds it for these tests).
const BIN: &str = env!("CARGO_BIN_EXE_edgeplane");

/// One request on a connection from `local` to `server`; the server's executor must answer.
fn request_from(local: SocketAddr, server: SocketAddr) -> std::io::Result<()> {
    let domain = socket2::Domain::for_address(local);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    sock.bind(&local.into())?;
    sock.connect_timeout(&server.into(), Duration::from_secs(5))?;
    let mut stream: std::net::TcpStream = sock.into();
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET /{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        edgeplane_test_support::server::CANARY
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    assert!(
        response.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&response[..response.len().min(80)])
    );
    Ok(())
}

fn per_core(server: &edgeplane_test_support::server::Server) -> [f64; 2] {
    let m = server.metrics();
    [
        m.sum("edgeplane_core_requests_total", &[("core", "0")]),
        m.sum("edgeplane_core_requests_total", &[("core", "1")]),
    ]
}

fn expected(local: SocketAddr, server: SocketAddr) -> usize {
    let hash = match (local.ip(), server.ip()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            flow_hash_v4(a.octets(), b.octets(), local.port(), server.port())
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            flow_hash_v6(a.octets(), b.octets(), local.port(), server.port())
        }
        _ => unreachable!("one family"),
    };
    executor_for(hash, 2) as usize
}

fn check_family(test: &str, listen: &str, client_ip: &str) {
    let pins = PinDir::new(test);
    let server = ServerBuilder::new(BIN)
        .cores(2)
        .http_listen(listen)
        .section(&format!(
            "[xdp]\npin_dir = \"{}\"\nsteering = \"reuseport\"\nrequired = true\n",
            pins.path().display()
        ))
        .start();
    let m = server.metrics();
    assert_eq!(
        m.sum("edgeplane_xdp_steering", &[("mode", "reuseport")]),
        1.0,
        "{}",
        m.text
    );
    let mut landed = [0usize; 2];
    let mut tried = 0;
    for port in (41_000u16..).step_by(7).take(60) {
        let local = SocketAddr::new(client_ip.parse().unwrap(), port);
        let before = per_core(&server);
        match request_from(local, server.http) {
            Ok(()) => {}
            // A port some other process holds: try the next one.
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => panic!("{test}: request from {local}: {e}"),
        }
        tried += 1;
        let want = expected(local, server.http);
        let after = edgeplane_test_support::poll::poll("the per-core counter", || {
            let a = per_core(&server);
            (a[0] + a[1] > before[0] + before[1]).then_some(a)
        });
        let moved: Vec<usize> = (0..2).filter(|&c| after[c] > before[c]).collect();
        assert_eq!(
            moved,
            [want],
            "{test}: connection from {local} (hash names executor {want})"
        );
        landed[want] += 1;
    }
    assert!(tried >= 40, "{test}: only {tried} source ports were free");
    assert!(
        landed[0] > 0 && landed[1] > 0,
        "{test}: the hash used one executor only: {landed:?}"
    );
}

#[test]
fn connections_land_on_the_executor_the_hash_names() {
    let test = "connections_land_on_the_executor_the_hash_names";
    if !is_root() {
        skip(test, "needs root (CAP_BPF)");
        return;
    }
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        skip(test, "needs 2 CPUs for 2 executors");
        return;
    }
    check_family(test, "127.0.0.1:0", "127.0.0.1");
}

#[test]
fn ipv6_connections_land_on_the_executor_the_hash_names() {
    let test = "ipv6_connections_land_on_the_executor_the_hash_names";
    if !is_root() {
        skip(test, "needs root (CAP_BPF)");
        return;
    }
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        skip(test, "needs 2 CPUs for 2 executors");
        return;
    }
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        skip(test, "no IPv6 loopback");
        return;
    }
    check_family(test, "[::1]:0", "::1");
}
