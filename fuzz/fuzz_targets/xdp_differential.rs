//! The XDP program against its userspace model (`edgeplane_xdp::model`), with libFuzzer
//! choosing the frames: the input's first byte picks either the raw bytes as the frame or a
//! structured frame (VLANs, IPv4 options and fragments, IPv6 extension chains, TCP options,
//! then truncations and overwritten bytes) whose every choice comes from the input. Program
//! and model must agree on the action, the global counter and the prefix counters.
//!
//! Needs root (or CAP_BPF) and a build with the eBPF programs; the program is loaded once.
#![no_main]

use std::cell::RefCell;

use edgeplane_xdp::model::{self, Model};
use edgeplane_xdp::{Filter, LoadOptions};
use libfuzzer_sys::fuzz_target;

fn model() -> Model {
    let p = |s: &str| s.parse().unwrap();
    Model {
        enforce: true,
        drain: false,
        serving_ports: vec![80, 443],
        prefixes: vec![
            (p("198.51.100.0/24"), false),
            (p("198.51.100.128/25"), true),
            (p("2001:db8:100::/48"), false),
            (p("2001:db8:100:8000::/49"), true),
        ],
    }
}

thread_local! {
    static RIG: RefCell<(Filter, Model)> = RefCell::new({
        let model = model();
        let mut filter = Filter::load(&LoadOptions::default())
            .unwrap_or_else(|e| panic!("xdp_differential needs root and the eBPF object: {e}"));
        model.apply(&mut filter).unwrap();
        (filter, model)
    });
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    RIG.with(|rig| {
        let (filter, model) = &mut *rig.borrow_mut();
        let frame = if mode & 1 == 0 {
            rest.to_vec()
        } else {
            let mut bytes = rest.iter().copied();
            model::frame(model, &mut |n| {
                let v = u32::from(bytes.next().unwrap_or(0)) << 8
                    | u32::from(bytes.next().unwrap_or(0));
                if n == 0 {
                    0
                } else {
                    v % n
                }
            })
        };
        if let Err(e) = model::check(filter, model, &frame) {
            panic!("{e}");
        }
    });
});
