//! Native XDP on a physical NIC: the filter attaches in driver mode, the peer's packet
//! generator floods the serving port at line rate from outside the served prefixes and then from
//! inside one, and the counters must be exact: every flood packet dropped (a filter that falls
//! behind shows up as NIC drops and a short count), every served-prefix packet counted on its
//! prefix. Prints the rate reached and the NIC's own drop counters.

use std::time::Instant;

use edgeplane_hwtests as hw;
use edgeplane_xdp::{Counter, Filter, FilterSettings, LoadOptions, Mode, Prefix};

/// The serving port the generator aims at (nothing needs to listen: the filter judges first).
const PORT: u16 = 8080;

#[test]
fn native_xdp_drops_at_line_rate_with_exact_counters() {
    let Some(env) = hw::need(
        "native_xdp_drops_at_line_rate_with_exact_counters",
        &[
            hw::IFACE,
            hw::ADDR,
            hw::PEER,
            hw::PEER_ADDR,
            hw::LINK_GBPS,
            hw::FLOOD,
        ],
        true,
    ) else {
        return;
    };
    let iface = &env[hw::IFACE.0];
    let link_gbps: f64 = env[hw::LINK_GBPS.0]
        .parse()
        .expect("EDGEPLANE_HW_LINK_GBPS: a number");
    let count: u64 = std::env::var("EDGEPLANE_HW_FLOOD_PACKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000_000);
    let frame: f64 = std::env::var("EDGEPLANE_HW_FLOOD_FRAME")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64.0);
    let speed = hw::link_speed_mbps(iface).unwrap_or(0);
    println!("{iface}: link {speed} Mb/s (expected {link_gbps} Gb/s)");
    assert!(
        speed as f64 >= link_gbps * 1000.0,
        "{iface} links at {speed} Mb/s, below the expected {link_gbps} Gb/s"
    );

    let peer_addr = hw::ipv4(&env, hw::PEER_ADDR);
    let mut filter = Filter::load(&LoadOptions {
        max_prefixes: 1024,
        pin_dir: None,
    })
    .expect("load the filter");
    filter
        .configure(&FilterSettings {
            enforce: true,
            serving_ports: vec![PORT],
            ..FilterSettings::default()
        })
        .expect("configure");
    let served: Prefix = format!("{peer_addr}/32").parse().expect("prefix");
    filter
        .prefixes()
        .add(served, false)
        .expect("add the peer's prefix");
    let mode = filter
        .attach(iface, Mode::Driver)
        .expect("attach in driver (native) mode");
    assert_eq!(mode, Mode::Driver, "{iface}: not attached natively");

    let flood = |src_min: &str, src_max: &str| {
        let cmd = hw::fill(
            &env[hw::FLOOD.0],
            &[
                ("addr", env[hw::ADDR.0].clone()),
                ("port", PORT.to_string()),
                ("count", count.to_string()),
                ("src_min", src_min.into()),
                ("src_max", src_max.into()),
            ],
        );
        let missed = hw::nic_stat(iface, "rx_missed_errors") + hw::nic_stat(iface, "rx_dropped");
        let t = Instant::now();
        hw::on_peer(&env[hw::PEER.0], &cmd);
        let secs = t.elapsed().as_secs_f64();
        let missed =
            hw::nic_stat(iface, "rx_missed_errors") + hw::nic_stat(iface, "rx_dropped") - missed;
        (secs, missed)
    };

    // 1. From outside every served prefix (198.18.0.0/15, the benchmarking range): dropped.
    let before = filter.counters().read().expect("counters");
    let (secs, missed) = flood("198.18.0.1", "198.19.255.254");
    let after = filter.counters().read().expect("counters");
    let dropped =
        after[Counter::NotServedDropped as usize] - before[Counter::NotServedDropped as usize];
    let pps = count as f64 / secs;
    let line_pps = link_gbps * 1e9 / ((frame + 20.0) * 8.0);
    println!(
        "flood: {count} packets of {frame} B in {secs:.2} s (ssh included) = {:.2} Mpps, {:.0} % of \
         line rate ({:.2} Mpps); XDP dropped {dropped}; NIC missed/dropped {missed}",
        pps / 1e6,
        100.0 * pps / line_pps,
        line_pps / 1e6
    );
    assert_eq!(
        dropped, count,
        "every flood packet must be seen and dropped by XDP"
    );

    // 2. From the served prefix: passed, each counted on the prefix.
    let prefix_packets = |f: &mut Filter| {
        f.prefixes()
            .stats()
            .expect("prefix stats")
            .into_iter()
            .find(|s| s.entry.prefix == served)
            .map_or(0, |s| s.packets)
    };
    let p0 = prefix_packets(&mut filter);
    let (secs, missed) = flood(&peer_addr.to_string(), &peer_addr.to_string());
    let p1 = prefix_packets(&mut filter);
    println!(
        "served flood: {count} packets in {secs:.2} s; prefix {served} counted {}; NIC missed/dropped {missed}",
        p1 - p0
    );
    assert_eq!(p1 - p0, count, "per-prefix packet counter must be exact");
    filter.detach_all();
}
