//! `cargo xtask ci`: the checks CI runs, in order; stops at the first failure: the setup of
//! what the tests need (`scripts/setup.sh`: idempotent, a quick no-op when everything is
//! present), fmt, clippy, the workspace tests, every fuzz target for 20 s (`cargo xtask fuzz`),
//! then `vmtest` (HTTPS over kernel TLS in a qemu VM), `testssl` and `player-test` (dash.js and
//! hls.js in headless Chromium). It is the README's test
//! command and all that `.ci/run` does, so it must pass on a fresh machine with nothing run
//! before it.
//!
//! Every cargo step runs with `EDGEPLANE_REQUIRE_EBPF=1`: `xdp/build.rs` then fails
//! instead of building without the eBPF programs, so the XDP tests can never pass by skipping
//! for want of a toolchain.

use anyhow::Result;

use crate::util::{cargo, ebpf_toolchain, header, run_checked, workspace_root};

/// The integration tests of the serving path (ranges, keep-alive and pipelining, timeouts,
/// errors, HTTPS, cold tier, drain, reload), run again on each readiness path.
const SERVING_TESTS: &[&str] = &[
    "http_ranges",
    "http_connections",
    "http_errors",
    "https",
    "cold_tier",
    "operations",
    "lifecycle",
    "admin",
];

pub(crate) fn run() -> Result<()> {
    header("scripts/setup.sh");
    let mut setup = std::process::Command::new("bash");
    setup.arg(workspace_root().join("scripts/setup.sh"));
    run_checked(&mut setup)?;
    let steps: [&[&str]; 3] = [
        &["fmt", "--all", "--", "--check"],
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &["test", "--workspace"],
    ];
    for (i, args) in steps.into_iter().enumerate() {
        header(&format!("cargo {}", args.join(" ")));
        run_checked(cargo().args(args).env("EDGEPLANE_REQUIRE_EBPF", "1"))?;
        if i == 1 {
            ebpf_checks()?;
        }
    }
    // The serving tests once more on the other readiness paths (issue #17): the default run
    // above takes `auto` (multishot poll on Linux 5.13+); `read-first` is what `auto` falls back
    // to on an older kernel, `legacy` is glommio's own path. Each keeps every guarantee.
    header("serving tests with io.readiness = \"legacy\", then \"read-first\"");
    for mode in ["legacy", "read-first"] {
        let mut cmd = cargo();
        cmd.args(["test", "-p", "edgeplane"]);
        for t in SERVING_TESTS {
            cmd.args(["--test", t]);
        }
        run_checked(
            cmd.env("EDGEPLANE_REQUIRE_EBPF", "1")
                .env("EDGEPLANE_TEST_READINESS", mode),
        )?;
    }
    // After the tests: HTTPS over kernel TLS in a VM (about a minute), and the testssl.sh scan
    // of the HTTPS listener (about a minute).
    // The binary the tests used (same profile and environment, so nothing is rebuilt).
    header("cargo build -p edgeplane");
    run_checked(
        cargo()
            .args(["build", "-p", "edgeplane"])
            .env("EDGEPLANE_REQUIRE_EBPF", "1"),
    )?;
    let bin = crate::util::target_dir().join("debug/edgeplane");
    header("cargo xtask fuzz --seconds 20");
    crate::fuzz::run(&crate::fuzz::FuzzArgs {
        target: None,
        seconds: 20,
        sanitizer: "none".into(),
    })?;
    header("cargo xtask vmtest");
    crate::vmtest::run(&crate::vmtest::VmtestArgs {
        binary: Some(bin.clone()),
        ..Default::default()
    })?;
    header("cargo xtask testssl");
    crate::testssl::run(Some(&bin))?;
    header("cargo xtask player-test");
    crate::player_test::run()?;
    header("ci: all steps passed");
    Ok(())
}

/// fmt and clippy for the eBPF programs crate, which is its own workspace (nightly, bpfel).
fn ebpf_checks() -> Result<()> {
    let root = workspace_root();
    let manifest = root.join("ebpf/edgeplane-ebpf/Cargo.toml");
    header("cargo fmt (eBPF programs) -- --check");
    run_checked(
        cargo()
            .args(["fmt", "--manifest-path"])
            .arg(&manifest)
            .args(["--", "--check"]),
    )?;
    header("cargo fmt (fuzz targets) -- --check");
    run_checked(
        cargo()
            .args(["fmt", "--manifest-path"])
            .arg(root.join("fuzz/Cargo.toml"))
            .args(["--", "--check"]),
    )?;
    let toolchain = ebpf_toolchain()?;
    header(&format!(
        "cargo +{toolchain} clippy (eBPF programs, bpfel-unknown-none)"
    ));
    let mut clippy = std::process::Command::new("rustup");
    clippy
        .args([
            "run",
            &toolchain,
            "cargo",
            "clippy",
            "--locked",
            "--release",
        ])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(crate::util::target_dir().join("ebpf-clippy"))
        .args(["--", "-D", "warnings"])
        .current_dir(root.join("ebpf/edgeplane-ebpf"))
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO");
    run_checked(&mut clippy)
}
