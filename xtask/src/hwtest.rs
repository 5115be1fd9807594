//! `cargo xtask hwtest`: runs the real-hardware tests (hwtests/, crate `edgeplane-hwtests`)
//! one at a time with their output shown, so each test's measured figures (or its one SKIPPED
//! line naming what is missing) reach the terminal. The hardware is named by environment
//! variables (hwtests/README.md); this task passes them through unchanged.

use crate::util;

#[derive(clap::Args)]
pub(crate) struct HwtestArgs {
    /// Only the tests whose names contain this (e.g. `soak`).
    filter: Option<String>,
    /// Build in release (the soak and line-rate tests want the load generator optimized).
    #[arg(long)]
    release: bool,
}

pub(crate) fn run(args: &HwtestArgs) -> anyhow::Result<()> {
    util::header("hwtests (real hardware; see hwtests/README.md)");
    let mut cmd = util::cargo();
    // The tests start `edgeplane serve`; without hardware named they skip before needing it.
    if std::env::var_os("EDGEPLANE_HW_ADDR").is_some()
        && std::env::var_os("EDGEPLANE_BIN").is_none()
    {
        let profile = if args.release { "release" } else { "dev" };
        let bin = util::build_edgeplane(profile)?;
        cmd.env("EDGEPLANE_BIN", &bin);
        util::run_checked(util::cargo().args([
            "build",
            "--profile",
            profile,
            "-p",
            "edgeplane-load",
        ]))?;
        cmd.env("EDGEPLANE_LOAD_BIN", bin.with_file_name("edgeplane-load"));
    }
    cmd.args(["test", "-p", "edgeplane-hwtests"]);
    if args.release {
        cmd.arg("--release");
    }
    cmd.args(["--", "--nocapture", "--test-threads=1"]);
    if let Some(f) = &args.filter {
        cmd.arg(f);
    }
    util::run_checked(&mut cmd)
}
