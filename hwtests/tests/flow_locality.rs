//! RSS/CPUMAP flow locality on a real NIC: `edgeplane serve` with `[xdp] steering = "cpumap"`
//! in driver mode; the peer makes one request from each of a range of fixed source ports, and
//! each executor's request counter must grow by exactly the number of those flows the flow hash
//! assigns to it (each executor sees only its flows). Prints the per-executor split.

use std::net::Ipv4Addr;

use edgeplane_hwtests as hw;
use edgeplane_test_support::prelude::{Server, ServerBuilder, CANARY};
use edgeplane_xdp::{executor_for, flow_hash_v4};

const FIRST_PORT: u16 = 40_000;
const FLOWS: u16 = 400;

#[test]
fn each_executor_sees_only_its_flows() {
    let Some(env) = hw::need(
        "each_executor_sees_only_its_flows",
        &[hw::IFACE, hw::ADDR, hw::PEER, hw::PEER_ADDR, hw::BIN],
        true,
    ) else {
        return;
    };
    let cores: u32 = std::env::var("EDGEPLANE_HW_CORES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let addr: Ipv4Addr = hw::ipv4(&env, hw::ADDR);
    let peer: Ipv4Addr = hw::ipv4(&env, hw::PEER_ADDR);
    let iface = &env[hw::IFACE.0];
    let pins = std::env::temp_dir().join(format!("edgeplane-hw-{}", std::process::id()));
    let server = ServerBuilder::new(hw::edgeplane_bin(&env))
        .cores(cores)
        .http_listen(&format!("{addr}:0"))
        .section(&format!(
            "[xdp]\ninterfaces = [{iface:?}]\nmode = \"driver\"\nsteering = \"cpumap\"\n\
             required = true\nprefixes = [\"{peer}/32\"]\npin_dir = \"/sys/fs/bpf/{}\"\n",
            pins.file_name().unwrap().to_string_lossy()
        ))
        .start();
    let url = server.url(&format!("/{CANARY}"));
    let port: u16 = url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next()?.parse().ok())
        .expect("port in the server URL");
    let per_core = |s: &Server| -> Vec<f64> {
        let m = s.metrics();
        (0..cores)
            .map(|c| m.sum("edgeplane_core_requests_total", &[("core", &c.to_string())]))
            .collect()
    };
    let before = per_core(&server);
    let last = FIRST_PORT + FLOWS - 1;
    hw::on_peer(
        &env[hw::PEER.0],
        &format!(
            "for p in $(seq {FIRST_PORT} {last}); do \
             curl -sf -o /dev/null --local-port $p {url} || exit 1; done"
        ),
    );
    let after = per_core(&server);
    let mut want = vec![0f64; cores as usize];
    for p in FIRST_PORT..=last {
        let hash = flow_hash_v4(peer.octets(), addr.octets(), p, port);
        want[executor_for(hash, cores) as usize] += 1.0;
    }
    let got: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    println!("{FLOWS} flows over {cores} executors: hash says {want:?}, executors counted {got:?}");
    assert_eq!(
        got, want,
        "every flow must be served by the executor its hash names"
    );
}
