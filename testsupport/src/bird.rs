//! Test fixtures: network namespaces with a veth to the root namespace, BIRD and GoBGP
//! processes inside them, polling helpers. Everything is torn down in `Drop`, also on panic.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::sync::watch;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Generous deadline for conditions that should hold "within seconds".
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Parses a prefix (`"10.0.0.0/8"`); panics on a bad one.
pub fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// Fails (never skips) when the test cannot run here.
pub fn require(binaries: &[&str]) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    assert!(
        root,
        "these tests create network namespaces and must run as root (CI runs them as root)"
    );
    for b in binaries {
        let found = [
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
            "/bin",
            "/usr/local/bin",
            "/usr/local/sbin",
        ]
        .iter()
        .any(|d| std::path::Path::new(d).join(b).exists());
        assert!(
            found,
            "`{b}` is not installed: install Debian packages bird2 and gobgpd (scripts/setup.sh)"
        );
    }
}

fn run(cmd: &[&str]) {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace joined to the root namespace by a veth pair:
/// root end `host_ip`/30, namespace end `ns_ip`/30.
pub struct Netns {
    /// The namespace's name.
    pub name: String,
    /// The veth end in the root namespace.
    pub host_if: String,
    /// The root namespace's address on the veth.
    pub host_ip: Ipv4Addr,
    /// The namespace's address on the veth.
    pub ns_ip: Ipv4Addr,
    /// A scratch directory for the routers' configs and sockets.
    pub dir: PathBuf,
}

impl Netns {
    /// Creates the namespace and the veth (removing leftovers of a crashed run first), both
    /// ends addressed and up.
    // No `Default`: this creates a namespace and a veth, nothing a default value should do.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = format!("ebg{}n{n}", pid % 100_000);
        let host_if = format!("ebg{}h{n}", pid % 100_000);
        let ns_if = format!("ebg{}p{n}", pid % 100_000);
        let (b, c) = (100 + (pid % 100) as u8, (n * 4) as u8);
        let host_ip = Ipv4Addr::new(10, b, c, 1);
        let ns_ip = Ipv4Addr::new(10, b, c, 2);
        let dir = std::env::temp_dir().join(&name);
        // Leftovers of an earlier crashed run with the same pid.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &host_if])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let me = Self {
            name,
            host_if,
            host_ip,
            ns_ip,
            dir,
        };
        run(&["ip", "netns", "add", &me.name]);
        run(&[
            "ip",
            "link",
            "add",
            &me.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns_if,
        ]);
        run(&["ip", "link", "set", &ns_if, "netns", &me.name]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", me.host_ip),
            "dev",
            &me.host_if,
        ]);
        run(&["ip", "link", "set", &me.host_if, "up"]);
        me.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", me.ns_ip),
            "dev",
            &ns_if,
        ]);
        me.exec(&["ip", "link", "set", &ns_if, "up"]);
        me.exec(&["ip", "link", "set", "lo", "up"]);
        me
    }

    /// Runs a command in the namespace; panics on failure.
    pub fn exec(&self, cmd: &[&str]) {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(cmd);
        run(&full);
    }

    fn spawn(&self, cmd: &[&str], log: &str) -> Child {
        let log = std::fs::File::create(self.dir.join(log)).unwrap();
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn in netns")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end, and with it the root end.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A BIRD 2 daemon in a namespace, running in the foreground so the test owns the process.
pub struct Bird {
    child: Option<Child>,
    conf: PathBuf,
    sock: PathBuf,
}

impl Bird {
    /// Starts `bird` in the foreground in `ns` with config `conf` (written to the namespace's
    /// scratch directory); its output goes to `bird.log` there.
    pub fn start(ns: &Netns, conf: &str) -> Self {
        let conf_path = ns.dir.join("bird.conf");
        let sock = ns.dir.join("bird.ctl");
        std::fs::write(&conf_path, conf).unwrap();
        let child = ns.spawn(
            &[
                "bird",
                "-f",
                "-c",
                conf_path.to_str().unwrap(),
                "-s",
                sock.to_str().unwrap(),
                "-P",
                ns.dir.join("bird.pid").to_str().unwrap(),
            ],
            "bird.log",
        );
        Self {
            child: Some(child),
            conf: conf_path,
            sock,
        }
    }

    /// Replaces the configuration and tells BIRD to reload it.
    pub fn reconfigure(&self, conf: &str) {
        std::fs::write(&self.conf, conf).unwrap();
        let out = Command::new("birdc")
            .args(["-s", self.sock.to_str().unwrap(), "configure"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Reconfigured") || text.contains("Reconfiguration"),
            "birdc configure: {text}"
        );
    }

    /// Kills BIRD (SIGKILL), like a router crash: the kernel resets its TCP sessions.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A BIRD configuration with one BGP session (IPv4 and IPv6 channels) to `neighbor`, and
/// static blackhole routes exported to it.
pub fn bird_conf(
    ns: &Netns,
    local_as: u32,
    peer_as: u32,
    v4: &[&str],
    v6: &[&str],
    extra: &str,
) -> String {
    let routes = |rs: &[&str]| {
        rs.iter()
            .map(|r| format!("route {r} blackhole; "))
            .collect::<String>()
    };
    format!(
        "router id {ns_ip};
protocol device {{}}
protocol static s4 {{ ipv4; {r4} }}
protocol static s6 {{ ipv6; {r6} }}
protocol bgp edge {{
  local {ns_ip} as {local_as};
  neighbor {host_ip} as {peer_as};
  hold time 9;
  connect retry time 1;
  error wait time 1, 2;
  {extra}
  ipv4 {{ import none; export all; }};
  ipv6 {{ import none; export all; next hop address 2001:db8::2; }};
}}
",
        ns_ip = ns.ns_ip,
        host_ip = ns.host_ip,
        r4 = routes(v4),
        r6 = routes(v6),
    )
}

/// gobgpd in a namespace, with its gRPC API on the namespace's loopback.
pub struct Gobgp {
    child: Child,
    ns_name: String,
}

impl Gobgp {
    /// Starts `gobgpd` in `ns` with AS `local_as`, peering with AS `peer_as` at the root
    /// namespace's end of the veth.
    pub fn start(ns: &Netns, local_as: u32, peer_as: u32) -> Self {
        let conf = format!(
            r#"[global.config]
  as = {local_as}
  router-id = "{ns_ip}"
  local-address-list = ["{ns_ip}"]

[[neighbors]]
  [neighbors.config]
    neighbor-address = "{host_ip}"
    peer-as = {peer_as}
  [neighbors.timers.config]
    hold-time = 9
    keepalive-interval = 3
    connect-retry = 1
  [neighbors.transport.config]
    passive-mode = true
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-unicast"
"#,
            ns_ip = ns.ns_ip,
            host_ip = ns.host_ip,
        );
        let path = ns.dir.join("gobgpd.toml");
        std::fs::write(&path, conf).unwrap();
        let child = ns.spawn(
            &[
                "gobgpd",
                "-f",
                path.to_str().unwrap(),
                "-p",
                "--api-hosts",
                "127.0.0.1:50051",
                "--pprof-disable",
            ],
            "gobgpd.log",
        );
        Self {
            child,
            ns_name: ns.name.clone(),
        }
    }

    /// Runs `gobgp ARGS` against this daemon, retrying while its API is not up yet.
    pub fn cli(&self, args: &[&str]) {
        let start = Instant::now();
        loop {
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &self.ns_name,
                    "gobgp",
                    "-u",
                    "127.0.0.1",
                    "-p",
                    "50051",
                ])
                .args(args)
                .output()
                .unwrap();
            if out.status.success() {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "gobgp {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Gobgp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` every 50 ms until it holds; panics with `what` after `DEADLINE`.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the served set satisfies `cond`; returns it.
pub async fn wait_served(
    rx: &mut watch::Receiver<BTreeSet<IpNet>>,
    what: &str,
    cond: impl Fn(&BTreeSet<IpNet>) -> bool,
) -> BTreeSet<IpNet> {
    let r = tokio::time::timeout(DEADLINE, rx.wait_for(|s| cond(s)))
        .await
        .map(|r| r.map(|set| set.clone()));
    match r {
        Ok(Ok(set)) => set,
        _ => panic!(
            "timed out waiting for served set: {what}; have {:?}",
            *rx.borrow()
        ),
    }
}

/// Runs `f` with a timeout so a hung test fails instead of hanging the suite.
pub async fn within<T>(secs: u64, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test took too long")
}
