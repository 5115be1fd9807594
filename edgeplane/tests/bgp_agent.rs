//! BGP through the whole appliance: BIRD 2 (the ISP's router, in a network namespace the test
//! creates, peering over a veth) announces prefixes to `edgeplane agent`, which makes them the
//! data plane's served set — its own accept-time check (`[access] prefixes_file`) and the pinned
//! XDP maps — and shows the session in `edgeplane bgp status`. Withdrawals and a dead router
//! (after the grace time) take the prefixes away again.
//!
//! Needs root (namespaces, BPF) and `bird`/`birdc` (Debian bird2); fails, never skips, without.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use edgeplane_test_support::bird::{bird_conf, Bird, Netns};
use edgeplane_test_support::prelude::{ServerBuilder, CANARY};
use edgeplane_test_support::xdp::{is_root, prefixes, PinDir};

/// The binary under test (Cargo builds it for these tests).
const BIN: &str = env!("CARGO_BIN_EXE_edgeplane");

const ROUTER_AS: u32 = 65002;
const LOCAL_AS: u32 = 65001;

/// Whether the data plane answers a request from `from`, or closes the connection unheard.
fn served(from: std::net::Ipv4Addr, http: std::net::SocketAddr) -> bool {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&std::net::SocketAddr::from((from, 0)).into())
        .unwrap();
    if sock.connect(&http.into()).is_err() {
        return false;
    }
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = format!("GET /{CANARY} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    match s.read(&mut head) {
        Ok(n) if n > 0 => {
            assert!(
                head.starts_with(b"HTTP/1.1 200"),
                "{:?}",
                String::from_utf8_lossy(&head)
            );
            true
        }
        _ => false,
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn bird_announcements_become_the_served_set() {
    assert!(
        is_root(),
        "needs root: network namespaces and BPF maps (CI runs as root)"
    );
    for tool in ["bird", "birdc", "ip"] {
        let ok = Command::new("sh")
            .args([
                "-c",
                &format!("command -v {tool} >/dev/null || test -x /usr/sbin/{tool}"),
            ])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "`{tool}` is missing: run scripts/setup.sh (Debian bird2, iproute2)"
        );
    }
    let ns = Netns::new();
    // The client: the root end of the veth (a non-loopback local address; BIRD will not
    // announce 127.0.0.0/8). The data plane listens on 127.0.0.1 and sees this source.
    let client = ns.host_ip;
    let client_net = format!("{client}/32");
    let v4 = [client_net.as_str(), "198.51.100.0/24"];
    let v6 = ["2001:db8:100::/48"];
    let bird = Bird::start(
        &ns,
        &bird_conf(&ns, ROUTER_AS, LOCAL_AS, &v4, &v6, "passive on;"),
    );

    let pins = PinDir::new("bgp-agent");
    let builder = ServerBuilder::new(BIN);
    let prefixes_file = builder.root().join("state/prefixes.json");
    let server = builder
        .prefixes_file(&prefixes_file)
        .section(&format!(
            "[xdp]\npin_dir = \"{}\"\nrequired = true\n",
            pins.path().display()
        ))
        .start();
    // No prefixes file yet: nobody is served.
    assert!(
        !served(client, server.http),
        "served before any prefix was known"
    );

    // The agent's config: the same data-plane sections (tiers, admin, access, xdp) plus [agent].
    // Nothing answers at control_url: registration keeps retrying, BGP does not depend on it.
    let tier = server.tier_dir("flash");
    let agent_toml = server.root().join("agent.toml");
    std::fs::write(
        &agent_toml,
        format!(
            r#"[admin]
listen = "{admin}"

[signing]
enabled = false

[access]
prefixes_file = "{pf}"

[xdp]
pin_dir = "{pins}"

[[tier]]
name = "flash"
kind = "flash"
path = "{tier}"

[agent]
id = "bgp-test"
secret = "unused"
control_url = "http://127.0.0.1:9"
urls = ["http://{http}"]
state_dir = "{state}"
listen = "127.0.0.1:0"

[agent.origin]
bucket = "unused"

[agent.bgp]
grace_secs = 3
connect_retry_secs = 1

[[agent.bgp.peers]]
name = "isp-rtr-1"
address = "{router}"
peer_as = {ROUTER_AS}
local_as = {LOCAL_AS}
router_id = "{host}"
hold_time = 9
"#,
            admin = server.admin,
            pf = prefixes_file.display(),
            pins = pins.path().display(),
            tier = tier.display(),
            http = server.http,
            state = server.root().join("state/agent").display(),
            router = ns.ns_ip,
            host = ns.host_ip,
        ),
    )
    .unwrap();
    let mut agent = Command::new(BIN)
        .args(["agent", "--config"])
        .arg(&agent_toml)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = agent.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let status_url = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the agent printed no ready line");
        if let Some(rest) = line.strip_prefix("edgeplane-agent: ready status=") {
            break format!("http://{}", rest.split_whitespace().next().unwrap());
        }
    };
    let _kill = KillOnDrop(agent);

    // Announced: the data plane serves the client, and the XDP maps hold all three.
    wait_until("BGP prefixes to reach the data plane", || {
        served(client, server.http)
    });
    let list = || prefixes(BIN, pins.path(), &["list"]).1;
    wait_until("BGP prefixes in the XDP maps", || {
        let l = list();
        v4.iter().chain(&v6).all(|p| l.contains(p))
    });
    let file = std::fs::read_to_string(&prefixes_file).unwrap();
    assert!(
        file.contains("198.51.100.0/24") && file.contains("2001:db8:100::/48"),
        "{file}"
    );

    // `edgeplane bgp status`: the session, its state and counts.
    let out = Command::new(BIN)
        .args(["bgp", "status", "--agent", &status_url])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.contains("isp-rtr-1") && table.contains("Established"),
        "{table}"
    );

    // Withdrawn: the client's /32 leaves the served set; the others stay.
    bird.reconfigure(&bird_conf(
        &ns,
        ROUTER_AS,
        LOCAL_AS,
        &v4[1..],
        &v6,
        "passive on;",
    ));
    wait_until("the withdrawal to reach the data plane", || {
        !served(client, server.http)
    });
    wait_until("the withdrawal to reach the XDP maps", || {
        !list().contains(&client_net)
    });
    assert!(list().contains("198.51.100.0/24"));

    // The router dies: its prefixes stay for the grace time (3 s), then go.
    let mut bird = bird;
    bird.kill();
    let died = Instant::now();
    wait_until("grace to expire", || !list().contains("198.51.100.0/24"));
    assert!(
        died.elapsed() >= Duration::from_secs(2),
        "prefixes were withdrawn after {:?}, before the 3 s grace",
        died.elapsed()
    );
    assert!(!list().contains("2001:db8:100::/48"));
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
