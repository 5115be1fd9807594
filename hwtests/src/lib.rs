//! What the hardware tests share: the hardware named by environment variables (or one SKIPPED
//! line naming what is missing), commands on the peer (load) host over ssh, and the facts read
//! from the appliance (link speed, `ethtool -k`, `/proc/net/tls_stat`, NIC counters, process
//! CPU time). The procedure and every variable: hwtests/README.md.
#![warn(missing_docs)]

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output};

/// One hardware variable: its name and what it names (printed when missing).
pub type Need = (&'static str, &'static str);

/// The appliance's NIC under test.
pub const IFACE: Need = ("EDGEPLANE_HW_IFACE", "the appliance's NIC under test");
/// The appliance's IPv4 address on it.
pub const ADDR: Need = (
    "EDGEPLANE_HW_ADDR",
    "the appliance's IPv4 address on that NIC",
);
/// ssh destination of the peer (load generator) host.
pub const PEER: Need = (
    "EDGEPLANE_HW_PEER",
    "ssh destination of the peer (load) host",
);
/// The peer's IPv4 address as the appliance sees it.
pub const PEER_ADDR: Need = (
    "EDGEPLANE_HW_PEER_ADDR",
    "the peer's IPv4 address on the link",
);
/// Expected link speed.
pub const LINK_GBPS: Need = ("EDGEPLANE_HW_LINK_GBPS", "the expected link speed in Gb/s");
/// The packet generator command run on the peer.
pub const FLOOD: Need = (
    "EDGEPLANE_HW_FLOOD",
    "the peer's packet generator command ({addr} {port} {count} {src_min} {src_max})",
);
/// Open-loop request rate for the soak.
pub const RATE: Need = ("EDGEPLANE_HW_RATE", "the soak's target rate in requests/s");
/// The `edgeplane` binary (`cargo xtask hwtest` builds it).
pub const BIN: Need = (
    "EDGEPLANE_BIN",
    "the edgeplane binary (cargo xtask hwtest sets it)",
);
/// The `edgeplane-load` binary on this host (writes the catalog the peer's copy validates).
pub const LOAD_BIN: Need = (
    "EDGEPLANE_LOAD_BIN",
    "the edgeplane-load binary on this host",
);

/// The variables a test needs, read; `None` after printing one line naming every missing one
/// (and root, when the test needs it). Tests return at once on `None`.
pub fn need(test: &str, vars: &[Need], root: bool) -> Option<HashMap<&'static str, String>> {
    let mut missing: Vec<String> = vars
        .iter()
        .filter(|(v, _)| std::env::var(v).map_or(true, |s| s.is_empty()))
        .map(|(v, what)| format!("{v} ({what})"))
        .collect();
    if root && !is_root() {
        missing.push("root (XDP and ethtool need CAP_NET_ADMIN, CAP_BPF)".into());
    }
    if !missing.is_empty() {
        println!("SKIPPED {test}: missing {}", missing.join(", "));
        return None;
    }
    Some(
        vars.iter()
            .map(|(v, _)| (*v, std::env::var(v).unwrap_or_default()))
            .collect(),
    )
}

/// Whether this process runs as uid 0.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|u| u.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Parses an IPv4 variable, panicking with its name when malformed.
pub fn ipv4(env: &HashMap<&'static str, String>, var: Need) -> Ipv4Addr {
    env[var.0]
        .parse()
        .unwrap_or_else(|e| panic!("{}={:?}: {e}", var.0, env[var.0]))
}

/// Runs `script` on the peer with `ssh -o BatchMode=yes PEER`, failing the test on a non-zero
/// exit with its output.
pub fn on_peer(peer: &str, script: &str) -> Output {
    let out = Command::new("ssh")
        .args(["-o", "BatchMode=yes", peer, script])
        .output()
        .unwrap_or_else(|e| panic!("ssh {peer}: {e}"));
    assert!(
        out.status.success(),
        "on {peer}: `{script}` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a local command, failing the test on a non-zero exit.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The link speed the kernel reports for `iface`, Mb/s (`None`: down or unknown).
pub fn link_speed_mbps(iface: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/speed"))
        .ok()?
        .trim()
        .parse::<i64>()
        .ok()
        .and_then(|v| u64::try_from(v).ok())
}

/// One of the interface's counters in `/sys/class/net/<if>/statistics/`.
pub fn nic_stat(iface: &str, name: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/statistics/{name}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// A feature line of `ethtool -k`: whether it is on, and whether it can be changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    /// `on`.
    pub on: bool,
    /// `[fixed]`: the driver cannot change it (for an offload: the NIC does not offer it).
    pub fixed: bool,
}

/// Parses `ethtool -k IFACE` output (`name: on|off [fixed]` lines).
pub fn parse_ethtool_k(text: &str) -> HashMap<String, Feature> {
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().split_once(':')?;
            let mut words = rest.split_whitespace();
            let on = match words.next()? {
                "on" => true,
                "off" => false,
                _ => return None,
            };
            let fixed = rest.contains("[fixed]");
            Some((name.trim().to_string(), Feature { on, fixed }))
        })
        .collect()
}

/// `ethtool -k iface`, parsed.
pub fn ethtool_features(iface: &str) -> HashMap<String, Feature> {
    parse_ethtool_k(&run(Command::new("ethtool").args(["-k", iface])))
}

/// Parses `/proc/net/tls_stat` (`TlsTxSw 12` lines).
pub fn parse_tls_stat(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.parse().ok()?))
        })
        .collect()
}

/// The kernel's TLS counters now (empty without the `tls` module).
pub fn tls_stat() -> HashMap<String, u64> {
    std::fs::read_to_string("/proc/net/tls_stat")
        .map(|t| parse_tls_stat(&t))
        .unwrap_or_default()
}

/// User + system CPU seconds of process `pid` (USER_HZ = 100, as on every Linux the appliance
/// runs).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) close with ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Substitutes `{name}` placeholders.
pub fn fill(template: &str, values: &[(&str, String)]) -> String {
    values.iter().fold(template.to_string(), |t, (k, v)| {
        t.replace(&format!("{{{k}}}"), v)
    })
}

/// A value from the load generator's JSON report (`edgeplane-load run`), by path
/// (`latency.p99_ms`).
pub fn report_f64(report: &serde_json::Value, path: &str) -> f64 {
    path.split('.')
        .try_fold(report, |v, k| v.get(k))
        .and_then(serde_json::Value::as_f64)
        .unwrap_or_else(|| panic!("load report has no {path}: {report}"))
}

/// The `edgeplane` binary to serve with.
pub fn edgeplane_bin(env: &HashMap<&'static str, String>) -> PathBuf {
    PathBuf::from(&env[BIN.0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ethtool_k_lines() {
        let text = "Features for ens1f0np0:\nrx-checksumming: on\n\
                    tls-hw-tx-offload: off [fixed]\ntls-hw-rx-offload: on\n\
                    tx-checksum-ipv4: off [fixed]\nhw-tc-offload: off [requested on]\n";
        let f = parse_ethtool_k(text);
        assert_eq!(
            f["tls-hw-tx-offload"],
            Feature {
                on: false,
                fixed: true
            }
        );
        assert_eq!(
            f["tls-hw-rx-offload"],
            Feature {
                on: true,
                fixed: false
            }
        );
        assert_eq!(
            f["hw-tc-offload"],
            Feature {
                on: false,
                fixed: false
            }
        );
        assert!(!f.contains_key("Features for ens1f0np0"));
    }

    #[test]
    fn tls_stat_lines() {
        let s = parse_tls_stat("TlsCurrTxSw                     \t2\nTlsTxDevice 17\nbogus\n");
        assert_eq!(s["TlsCurrTxSw"], 2);
        assert_eq!(s["TlsTxDevice"], 17);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn placeholders_and_reports() {
        assert_eq!(
            fill(
                "pktgen -d {addr} -n {count}",
                &[("addr", "10.0.0.2".into()), ("count", "5".into())]
            ),
            "pktgen -d 10.0.0.2 -n 5"
        );
        let r: serde_json::Value = serde_json::from_str(r#"{"latency": {"p99_ms": 2.5}}"#).unwrap();
        assert_eq!(report_f64(&r, "latency.p99_ms"), 2.5);
    }

    #[test]
    fn own_cpu_time_reads() {
        // Burn a little CPU so the count cannot be zero by luck of the tick.
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(cpu_seconds(std::process::id()) > 0.0);
    }
}
