//! Differential check of the XDP program: random and mutated frames through
//! `BPF_PROG_TEST_RUN` against the userspace model (`edgeplane_xdp::model`), in enforce and
//! monitor mode, with a global drain and a draining prefix, IPv4 and IPv6, VLAN tags, IPv4
//! options and fragments, IPv6 extension-header chains past the walk limit, truncations and
//! overwritten bytes. Any disagreement fails with the frame in hex.
//!
//! The generator is seeded, so a run is repeatable; `EDGEPLANE_XDP_DIFF_FRAMES` sets how many
//! frames per setup (default 3,000). The fuzz target `xdp_differential` drives the same check
//! from libFuzzer's bytes (`cargo xtask fuzz --target xdp_differential`).
//!
//! Needs root (or CAP_BPF): skips with the reason printed otherwise.

use edgeplane_test_support::xdp;
use edgeplane_xdp::model::{self, Model};
use edgeplane_xdp::{LoadOptions, Prefix};

/// xorshift64*: small, seeded, good enough to pick frame shapes.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u32) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        if n == 0 {
            0
        } else {
            ((r >> 32) % u64::from(n)) as u32
        }
    }
}

fn prefix(s: &str) -> Prefix {
    s.parse().unwrap()
}

fn frames_per_setup() -> usize {
    std::env::var("EDGEPLANE_XDP_DIFF_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

fn run(test: &'static str, model: &Model, seed: u64) {
    let Some(mut filter) = xdp::load(test, &LoadOptions::default()) else {
        return;
    };
    model.apply(&mut filter).unwrap();
    let mut rng = Rng(seed);
    let frames = frames_per_setup();
    let mut kinds = std::collections::BTreeMap::new();
    for _ in 0..frames {
        let frame = model::frame(model, &mut |n| rng.below(n));
        if let Err(e) = model::check(&mut filter, model, &frame) {
            panic!("{test}: {e}");
        }
        if frame.len() >= 14 {
            *kinds
                .entry(format!("{:?}", model.judge(&frame).counter))
                .or_insert(0u32) += 1;
        }
    }
    eprintln!("{test}: {frames} frames agree; by outcome: {kinds:?}");
    // The generator must reach every outcome the setup allows, or the check proves little.
    let want: &[&str] = if model.enforce {
        &[
            "Allowed",
            "NotServedDropped",
            "MalformedDropped",
            "NotTcp",
            "Fragment",
            "DrainDropped",
        ]
    } else {
        &[
            "Allowed",
            "NotServedPassed",
            "MalformedPassed",
            "NotTcp",
            "Fragment",
            "DrainDropped",
        ]
    };
    for k in want {
        assert!(
            kinds.contains_key(*k),
            "{test}: no frame came out {k}: {kinds:?}"
        );
    }
}

fn served() -> Vec<(Prefix, bool)> {
    vec![
        (prefix("198.51.100.0/24"), false),
        (prefix("198.51.100.128/25"), true),
        (prefix("10.0.0.0/8"), false),
        (prefix("2001:db8:100::/48"), false),
        (prefix("2001:db8:100:8000::/49"), true),
    ]
}

#[test]
fn enforce_mode_agrees_with_the_model() {
    let model = Model {
        enforce: true,
        drain: false,
        serving_ports: vec![80, 443],
        prefixes: served(),
    };
    run("enforce_mode_agrees_with_the_model", &model, 0x5eed_0001);
}

#[test]
fn monitor_mode_with_global_drain_agrees_with_the_model() {
    let model = Model {
        enforce: false,
        drain: true,
        serving_ports: vec![80],
        prefixes: served(),
    };
    run(
        "monitor_mode_with_global_drain_agrees_with_the_model",
        &model,
        0x5eed_0002,
    );
}
