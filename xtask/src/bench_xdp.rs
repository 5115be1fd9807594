//! `cargo xtask bench-xdp`: the XDP filter benchmarks (`bench/xdp`, binary `xdpbench`): ns per
//! packet under `BPF_PROG_TEST_RUN` with 1k/100k/1M prefixes, and the veth drop rate against
//! nftables. Needs root; writes the markdown report to `target/bench/xdp-<time>.md` and prints
//! it. Arguments after `--` go to `xdpbench` (see `xdpbench --help`).

use std::fs;

use anyhow::{bail, Context, Result};

use crate::util::{cargo, header, run_checked, target_dir, utc_timestamp};

#[derive(clap::Args)]
pub(crate) struct BenchXdpArgs {
    /// Arguments for xdpbench, e.g. `-- --which lookup --prefixes 1000,100000`.
    #[arg(last = true)]
    pass: Vec<String>,
}

pub(crate) fn run(args: &BenchXdpArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the XDP benchmarks load eBPF programs and create network namespaces: run as root");
    }
    header("cargo build --release -p xdpbench");
    run_checked(cargo().args(["build", "--release", "-p", "xdpbench"]))?;
    let bin = target_dir().join("release/xdpbench");
    header(&format!("{} {}", bin.display(), args.pass.join(" ")));
    let out = std::process::Command::new(&bin)
        .args(&args.pass)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{report}");
    if !out.status.success() {
        bail!("xdpbench failed ({})", out.status);
    }
    let dir = target_dir().join("bench");
    fs::create_dir_all(&dir)?;
    let path = dir.join(format!("xdp-{}.md", utc_timestamp()));
    fs::write(&path, &report)?;
    eprintln!("\nreport: {}", path.display());
    Ok(())
}
