//! A soak at the target rate: `edgeplane serve` on the appliance with the bench catalog, the
//! peer's `edgeplane-load` in open loop at EDGEPLANE_HW_RATE for EDGEPLANE_HW_SOAK_S seconds
//! (default 600) in one-minute windows, every body byte validated. Zero errors in every window,
//! and a flat p99: no window's p99 above twice the best window's (a leak, a growing queue or a
//! periodic stall shows as a rising or spiking p99). Prints each window's figures.

use std::process::Command;

use edgeplane_hwtests as hw;
use edgeplane_test_support::prelude::ServerBuilder;

const WINDOW_S: u64 = 60;

#[test]
fn soak_at_target_rate_zero_errors_flat_p99() {
    let Some(env) = hw::need(
        "soak_at_target_rate_zero_errors_flat_p99",
        &[hw::ADDR, hw::PEER, hw::RATE, hw::BIN, hw::LOAD_BIN],
        false,
    ) else {
        return;
    };
    let soak_s: u64 = std::env::var("EDGEPLANE_HW_SOAK_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let cores: u32 = std::env::var("EDGEPLANE_HW_CORES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let connections = std::env::var("EDGEPLANE_HW_CONNECTIONS").unwrap_or_else(|_| "1024".into());
    let rate = &env[hw::RATE.0];
    let builder = ServerBuilder::new(hw::edgeplane_bin(&env))
        .cores(cores)
        .http_listen(&format!("{}:0", env[hw::ADDR.0]));
    // The bench catalog (4 × 64 MiB, content defined by its pattern), written by edgeplane-load
    // here and on the peer, so the peer validates every byte against its own copy's rule.
    hw::run(
        Command::new(&env[hw::LOAD_BIN.0])
            .arg("catalog")
            .arg(builder.tier_dir("flash")),
    );
    let server = builder.start();
    let url = server.url("");
    let peer = &env[hw::PEER.0];
    hw::on_peer(
        peer,
        "edgeplane-load catalog /tmp/edgeplane-hw-catalog >/dev/null",
    );

    let windows = soak_s.div_ceil(WINDOW_S);
    let mut p99s = Vec::new();
    for w in 0..windows {
        let out = hw::on_peer(
            peer,
            &format!(
                "edgeplane-load run {url} --catalog /tmp/edgeplane-hw-catalog --rate {rate} \
                 --connections {connections} --duration {WINDOW_S} --range 1048576 2>/dev/null"
            ),
        );
        let report: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("edgeplane-load's JSON report");
        let errors = hw::report_f64(&report, "errors_total");
        let p99 = hw::report_f64(&report, "latency.p99_ms");
        println!(
            "window {}/{windows}: {:.0} req/s (asked {rate}), {:.2} Gb/s, p50 {:.2} ms, p99 {p99:.2} ms, \
             p99.9 {:.2} ms, errors {errors}",
            w + 1,
            hw::report_f64(&report, "req_per_s"),
            hw::report_f64(&report, "gbps"),
            hw::report_f64(&report, "latency.p50_ms"),
            hw::report_f64(&report, "latency.p999_ms"),
        );
        assert_eq!(
            errors,
            0.0,
            "window {}: errors: {}",
            w + 1,
            report["errors"]
        );
        p99s.push(p99);
    }
    let best = p99s.iter().copied().fold(f64::INFINITY, f64::min);
    let worst = p99s.iter().copied().fold(0.0, f64::max);
    println!("p99 over {windows} windows: best {best:.2} ms, worst {worst:.2} ms");
    assert!(worst <= 2.0 * best, "p99 not flat: {p99s:?}");
}
