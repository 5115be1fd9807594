//! `cargo xtask bench-steering`: the steering function at fleet scale. Builds and runs the
//! release example `control/examples/bench_steering.rs` (a simulated fleet of 1,000 appliances
//! on 50 sites and 1 M client /24s): answers per second and latency of the steering function
//! in process on one thread, a premiere (one title, 100,000 viewers in a simulated minute) and
//! its spread, and (with wrk on the PATH) the real service over HTTP on one current-thread
//! runtime. Writes the markdown report to `target/bench/steering-<time>.md` and prints it. The
//! run fails when the premiere put an appliance over its cap or sent a viewer to the origin
//! while the fleet had room.

use std::fmt::Write as _;
use std::fs;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::{
    cargo, find_program, git_revision, header, kernel, run_checked, target_dir, utc_timestamp,
};

#[derive(clap::Args)]
pub(crate) struct BenchSteeringArgs {
    /// Answers measured in process.
    #[arg(long, default_value_t = 200_000)]
    requests: u64,
    /// Seconds of wrk against the service over HTTP (0: skip).
    #[arg(long, default_value_t = 10)]
    http_secs: u64,
    /// wrk connections.
    #[arg(long, default_value_t = 16)]
    connections: u64,
}

pub(crate) fn run(args: &BenchSteeringArgs) -> Result<()> {
    header("building the steering bench (release)");
    run_checked(cargo().args([
        "build",
        "--release",
        "-p",
        "edgeplane-control",
        "--example",
        "bench_steering",
    ]))?;
    let bin = target_dir().join("release/examples/bench_steering");
    let http_secs = if args.http_secs > 0 && find_program("wrk").is_err() {
        eprintln!("bench-steering: wrk is not installed: the HTTP part is skipped");
        0
    } else {
        args.http_secs
    };
    header("running");
    let out = Command::new(&bin)
        .args(["--requests", &args.requests.to_string()])
        .args(["--http-secs", &http_secs.to_string()])
        .args(["--connections", &args.connections.to_string()])
        .output()
        .with_context(|| format!("run {}", bin.display()))?;
    let body = String::from_utf8_lossy(&out.stdout);
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut report = String::new();
    let _ = writeln!(report, "# cargo xtask bench-steering\n");
    let _ = writeln!(
        report,
        "revision {}, kernel {}, {} CPUs, load average at the end: {} (1/5/15 min); release build; \
         command `cargo xtask bench-steering --requests {} --http-secs {http_secs} --connections {}`.\n",
        git_revision(),
        kernel(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        args.requests,
        args.connections,
    );
    report.push_str(&body);
    print!("{report}");
    let dir = target_dir().join("bench");
    fs::create_dir_all(&dir)?;
    let path = dir.join(format!("steering-{}.md", utc_timestamp()));
    fs::write(&path, &report)?;
    eprintln!("\nreport: {}", path.display());
    if !out.status.success() {
        bail!(
            "the steering bench failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
