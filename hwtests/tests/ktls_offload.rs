//! kTLS with NIC offload where the NIC offers it (`ethtool -k`: `tls-hw-tx-offload`), and the
//! fallback to software kTLS: HTTPS from the peer through the NIC under test, with the offload
//! on (when offered) and then off; `/proc/net/tls_stat` must count the connections as device
//! (`TlsTxDevice`) and then software (`TlsTxSw`) kTLS. Prints the server's CPU-s/GiB in each.

use std::process::Command;

use edgeplane_hwtests as hw;
use edgeplane_test_support::prelude::{Server, ServerBuilder};

const OBJECT: &str = "ktls-64m.bin";
const SIZE: usize = 64 << 20;
const FETCHES: u32 = 32;

fn set_offload(iface: &str, on: bool) {
    hw::run(Command::new("ethtool").args([
        "-K",
        iface,
        "tls-hw-tx-offload",
        if on { "on" } else { "off" },
    ]));
}

/// Fetches the object FETCHES times over HTTPS from the peer; returns (TLS counter deltas,
/// server CPU-s per GiB).
fn phase(
    env: &std::collections::HashMap<&'static str, String>,
    server: &Server,
    url: &str,
) -> (std::collections::HashMap<String, u64>, f64) {
    let tls0 = hw::tls_stat();
    let cpu0 = hw::cpu_seconds(server.pid());
    hw::on_peer(
        &env[hw::PEER.0],
        &format!("for i in $(seq {FETCHES}); do curl -skf -o /dev/null {url} || exit 1; done"),
    );
    let cpu = hw::cpu_seconds(server.pid()) - cpu0;
    let tls1 = hw::tls_stat();
    let delta = tls1
        .iter()
        .map(|(k, v)| (k.clone(), v - tls0.get(k).copied().unwrap_or(0)))
        .collect();
    let gib = f64::from(FETCHES) * SIZE as f64 / (1u64 << 30) as f64;
    (delta, cpu / gib)
}

#[test]
fn ktls_nic_offload_and_software_fallback() {
    let Some(env) = hw::need(
        "ktls_nic_offload_and_software_fallback",
        &[hw::IFACE, hw::ADDR, hw::PEER, hw::BIN],
        true,
    ) else {
        return;
    };
    let iface = env[hw::IFACE.0].clone();
    if hw::tls_stat().is_empty() {
        println!("SKIPPED ktls_nic_offload_and_software_fallback: missing the kernel's tls module (/proc/net/tls_stat); modprobe tls");
        return;
    }
    let features = hw::ethtool_features(&iface);
    let offload = features.get("tls-hw-tx-offload").copied();
    let offered = offload.is_some_and(|f| !f.fixed);
    println!("{iface}: tls-hw-tx-offload {offload:?} (offered: {offered})");

    let data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let server = ServerBuilder::new(hw::edgeplane_bin(&env))
        .https()
        .https_ktls("auto")
        .https_listen(&format!("{}:0", env[hw::ADDR.0]))
        .file("flash", OBJECT, &data)
        .start();
    let port = server.https_addr().port();
    let url = format!("https://{}:{port}/{OBJECT}", env[hw::ADDR.0]);
    assert!(
        !server.https_addr().ip().is_loopback(),
        "the HTTPS listener must be on {} for the peer to reach it through {iface}",
        env[hw::ADDR.0]
    );

    if offered {
        set_offload(&iface, true);
        let (d, cpu) = phase(&env, &server, &url);
        println!(
            "NIC kTLS: TlsTxDevice +{}, TlsTxSw +{}, {cpu:.3} CPU-s/GiB",
            d["TlsTxDevice"], d["TlsTxSw"]
        );
        assert!(
            d["TlsTxDevice"] >= u64::from(FETCHES),
            "offload on: connections must be device kTLS: {d:?}"
        );
    } else {
        println!("{iface} does not offer tls-hw-tx-offload: software kTLS only");
    }
    if offered {
        set_offload(&iface, false);
    }
    let (d, cpu) = phase(&env, &server, &url);
    println!(
        "software kTLS: TlsTxDevice +{}, TlsTxSw +{}, {cpu:.3} CPU-s/GiB",
        d["TlsTxDevice"], d["TlsTxSw"]
    );
    if let Some(f) = offload {
        if offered {
            set_offload(&iface, f.on);
        }
    }
    assert_eq!(d["TlsTxDevice"], 0, "offload off: no device kTLS: {d:?}");
    assert!(
        d["TlsTxSw"] >= u64::from(FETCHES),
        "software kTLS must take every connection: {d:?}"
    );
}
