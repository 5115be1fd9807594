//! Developer tasks for edgeplane: `cargo xtask ci | demo | deb | bench | bench-catalog | bench-intake | bench-steering | bench-tls | bench-xdp | flamegraph | vmtest | testssl | fuzz | plan | hwtest`.

mod bench;
mod bench_catalog;
mod bench_failover;
mod bench_intake;
mod bench_pull;
mod bench_steering;
mod bench_tls;
mod bench_xdp;
mod callgrind;
mod catalog;
mod ci;
mod deb;
mod demo;
mod flamegraph;
mod fuzz;
mod hwtest;
mod plan;
mod player_test;
mod server;
mod svg;
mod testbed;
mod testssl;
mod util;
mod vmtest;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Developer tasks for edgeplane")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// fmt --check, clippy -D warnings, the workspace tests, vmtest and testssl, in that order.
    Ci,
    /// Build edgeplane, serve a small demo catalog and fetch from it with curl.
    Demo,
    /// Compare edgeplane with nginx under edgeplane-load: throughput, latency, server CPU per
    /// GiB; or drive a remote appliance (--target); or count instructions (--callgrind).
    Bench(bench::BenchArgs),
    /// Profile edgeplane (or nginx) under the bench's load with perf; writes a flame graph SVG.
    Flamegraph(flamegraph::FlamegraphArgs),
    /// The catalog at scale: ready time, RSS per object, rescans, objects renamed in and
    /// deleted without a reload, hit latency, at 1 k / 1 M (/ 10 M) empty files.
    BenchCatalog(bench_catalog::BenchCatalogArgs),
    /// Health intake: 10,000 simulated appliances reporting at their interval to a real
    /// `edgeplane cloud serve` pinned to one core; CPU and bytes per report.
    BenchIntake(bench_intake::BenchIntakeArgs),
    /// Steering at fleet scale: answers/s and latency for 1,000 appliances on 50 sites and
    /// 1 M client prefixes (in process and over HTTP), and how a premiere spreads.
    BenchSteering(bench_steering::BenchSteeringArgs),
    /// Build the Debian package (release build, cargo-deb) into target/debian/.
    Deb,
    /// XDP filter: ns per packet by prefix count, veth drop rate against nftables (root).
    BenchXdp(bench_xdp::BenchXdpArgs),
    /// HTTPS over kernel TLS in a qemu VM (Debian kernel with the tls module): real clients,
    /// byte-exact ranges, resumption, KeyUpdate, and /metrics proving kTLS was used.
    Vmtest(vmtest::VmtestArgs),
    /// HTTPS bench: edgeplane vs nginx + OpenSSL here, or (--vm) kernel TLS vs user space.
    BenchTls(bench_tls::BenchTlsArgs),
    /// testssl.sh scan of the HTTPS listener on loopback: fails on findings of MEDIUM or above.
    Testssl,
    /// The cargo-fuzz targets (fuzz/): committed inputs, then N seconds of fuzzing each.
    Fuzz(fuzz::FuzzArgs),
    /// Sizing model: an appliance's throughput ceiling and what limits it (CPU, memory
    /// bandwidth, NIC, PCIe, disks) by TLS mode; `--write` updates docs/benchmarking.md.
    Plan(plan::PlanArgs),
    /// The real-hardware tests (hwtests/): XDP native, flow locality, kTLS offload, soak.
    /// Skipped, one line each, without EDGEPLANE_HW_* naming the hardware.
    Hwtest(hwtest::HwtestArgs),
    /// dash.js and hls.js in headless Chromium play encoded titles through steering, an
    /// appliance death (SIGKILL) and a drain (issue #15).
    PlayerTest,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Ci => ci::run(),
        Task::Demo => demo::run(),
        Task::Deb => deb::run(),
        Task::Bench(args) => bench::run(&args),
        Task::Flamegraph(args) => flamegraph::run(&args),
        Task::BenchXdp(args) => bench_xdp::run(&args),
        Task::BenchCatalog(args) => bench_catalog::run(&args),
        Task::BenchIntake(args) => bench_intake::run(&args),
        Task::BenchSteering(args) => bench_steering::run(&args),
        Task::Vmtest(args) => vmtest::run(&args),
        Task::Testssl => testssl::run(None),
        Task::BenchTls(args) => bench_tls::run(&args),
        Task::Fuzz(args) => fuzz::run(&args),
        Task::Plan(args) => plan::run(&args),
        Task::Hwtest(args) => hwtest::run(&args),
        Task::PlayerTest => player_test::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
