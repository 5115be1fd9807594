//! `[xdp]` in `edgeplane serve` and `edgeplane prefixes`: the filter starts with the data plane
//! and its maps pinned, prefixes change at runtime through the CLI, `/metrics` shows every
//! counter per prefix, and a filter that cannot start is one error line — fatal only with
//! `xdp.required = true`.
//!
//! The failure tests run anywhere (without root the load fails for want of privilege, which is
//! the same path); the others need root and skip with the reason printed otherwise.

use std::time::Duration;

use edgeplane_test_support::prelude::ServerBuilder;
use edgeplane_test_support::xdp::{is_root, prefixes, skip, PinDir};

/// The binary under test (Cargo builds it for these tests).
const BIN: &str = env!("CARGO_BIN_EXE_edgeplane");

fn xdp_section(pin_dir: &PinDir, extra: &str) -> String {
    format!(
        "[xdp]\npin_dir = \"{}\"\n{extra}\n",
        pin_dir.path().display()
    )
}

#[test]
fn required_false_serves_without_xdp_after_one_error_line() {
    let pins = PinDir::new("not-required");
    let server = ServerBuilder::new(BIN)
        .section(&xdp_section(
            &pins,
            "interfaces = [\"ep-nosuch0\"]\nrequired = false",
        ))
        .start();
    server.assert_serving("with XDP unavailable");
    let output = server.output();
    let lines: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("serving without XDP"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line:\n{output}");
    assert!(lines[0].contains("ERROR"), "{}", lines[0]);
    if is_root() {
        assert!(
            lines[0].contains("xdp.interfaces: ep-nosuch0: no such interface"),
            "{}",
            lines[0]
        );
    }
    let m = server.metrics();
    assert_eq!(m.sum("edgeplane_xdp_up", &[]), 0.0, "{}", m.text);
}

#[test]
fn required_true_exits_with_one_line() {
    let pins = PinDir::new("required");
    let builder = ServerBuilder::new(BIN).section(&xdp_section(
        &pins,
        "interfaces = [\"ep-nosuch0\"]\nrequired = true",
    ));
    let config = builder.root().join("edgeplane.toml");
    std::fs::write(&config, builder.config_text()).unwrap();
    let (status, _out, err) = edgeplane_test_support::server::run_to_exit(
        BIN,
        &["serve", "--config", config.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("edgeplane: xdp: ") && last.ends_with("(xdp.required = true)"),
        "last line: {last}\n{err}"
    );
    if is_root() {
        assert!(last.contains("ep-nosuch0: no such interface"), "{last}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn prefixes_change_at_runtime_and_show_on_metrics() {
    if !is_root() {
        skip(
            "prefixes_change_at_runtime_and_show_on_metrics",
            "needs root (CAP_BPF)",
        );
        return;
    }
    let pins = PinDir::new("cli");
    let dir = pins.path();
    let mut server = ServerBuilder::new(BIN)
        .section(&xdp_section(
            &pins,
            "enforce = true\nprefixes = [\"198.51.100.0/24\"]",
        ))
        .start();
    let (code, out, err) = prefixes(BIN, dir, &["add", "2001:db8::/32", "203.0.113.0/25"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "added 2001:db8::/32\nadded 203.0.113.0/25\n");
    let (_, out, _) = prefixes(BIN, dir, &["add", "2001:db8::/32"]);
    assert_eq!(out, "2001:db8::/32 already served\n");
    let (code, out, _) = prefixes(BIN, dir, &["list"]);
    assert_eq!(code, 0);
    assert_eq!(out, "198.51.100.0/24\n203.0.113.0/25\n2001:db8::/32\n");

    let (code, out, err) = prefixes(BIN, dir, &["drain", "203.0.113.0/25"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "drain on for 203.0.113.0/25\n"),
        "{err}"
    );
    let (code, _, _) = prefixes(BIN, dir, &["drain", "all"]);
    assert_eq!(code, 0);
    let m = server.metrics();
    assert_eq!(m.sum("edgeplane_xdp_up", &[]), 1.0);
    assert_eq!(m.sum("edgeplane_xdp_enforce", &[]), 1.0);
    assert_eq!(m.sum("edgeplane_xdp_drain", &[]), 1.0);
    assert_eq!(m.sum("edgeplane_xdp_prefixes", &[]), 3.0);
    for p in ["198.51.100.0/24", "203.0.113.0/25", "2001:db8::/32"] {
        for name in [
            "edgeplane_xdp_prefix_packets_total",
            "edgeplane_xdp_prefix_bytes_total",
            "edgeplane_xdp_prefix_drops_total",
        ] {
            assert_eq!(
                m.matching(name, &[("prefix", p)]).count(),
                1,
                "{name}{{prefix={p}}}\n{}",
                m.text
            );
        }
    }
    assert_eq!(
        m.sum(
            "edgeplane_xdp_prefix_draining",
            &[("prefix", "203.0.113.0/25")]
        ),
        1.0
    );
    assert_eq!(
        m.matching("edgeplane_xdp_packets_total", &[]).count(),
        9,
        "{}",
        m.text
    );
    prefixes(BIN, dir, &["drain", "all", "--off"]);

    let (code, out, _) = prefixes(BIN, dir, &["remove", "203.0.113.0/25"]);
    assert_eq!((code, out.as_str()), (0, "removed 203.0.113.0/25\n"));
    let (code, _, err) = prefixes(BIN, dir, &["remove", "203.0.113.0/25"]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("203.0.113.0/25: not served"), "{err}");
    let (code, out, _) = prefixes(BIN, dir, &["stats"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("prefix "), "{out}");
    assert!(out.contains("filter: enforce mode\n"), "{out}");
    assert_eq!(server.metrics().sum("edgeplane_xdp_prefixes", &[]), 2.0);

    // The maps outlive the process: a restart keeps the prefixes.
    server.signal("TERM");
    assert!(server.wait_exit(Duration::from_secs(20)).is_some());
    assert!(
        server.output().contains("XDP filter running"),
        "{}",
        server.output()
    );
    let (_, out, _) = prefixes(BIN, dir, &["list"]);
    assert_eq!(out, "198.51.100.0/24\n2001:db8::/32\n");
    let server = ServerBuilder::new(BIN)
        .section(&xdp_section(&pins, "enforce = false"))
        .start();
    assert_eq!(server.metrics().sum("edgeplane_xdp_prefixes", &[]), 2.0);
    assert_eq!(server.metrics().sum("edgeplane_xdp_enforce", &[]), 0.0);
}

#[test]
fn prefixes_without_a_data_plane_is_one_line() {
    let pins = PinDir::new("absent");
    let (code, out, err) = prefixes(BIN, pins.path(), &["list"]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("edgeplane: "), "{err}");
    let (code, _, err) = prefixes(BIN, pins.path(), &["add", "10.0.0.1/8"]);
    assert_eq!(code, 2, "usage error");
    assert!(err.contains("did you mean 10.0.0.0/8"), "{err}");
}
