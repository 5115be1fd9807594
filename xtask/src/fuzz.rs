//! `cargo xtask fuzz [--target T] [--seconds N]`: the cargo-fuzz targets under `fuzz/`
//! (libFuzzer, built with the pinned nightly the eBPF programs use), one after the other.
//!
//! For each target: first every committed input is run once (`fuzz/seeds/<T>`, real clients'
//! bytes and hand-made seeds, and `fuzz/regressions/<T>`, every crash ever found), then the
//! fuzzer runs for `--seconds`, growing the working corpus `fuzz/corpus/<T>` (not committed;
//! kept between local runs). A crash fails the task with the input saved under
//! `fuzz/artifacts/<T>/`: add it to `fuzz/regressions/<T>/` with the fix. The table at the end
//! gives executions, executions per second and the coverage libFuzzer reached.
//!
//! `cargo xtask ci` runs every target for a short time; docs/fuzzing.md has the long run.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::util::{display_command, ebpf_toolchain, header, workspace_root};

/// Every target, in the order they run.
pub(crate) const TARGETS: &[&str] = &[
    "http_head",
    "range_header",
    "path_range",
    "connection",
    "signed_url",
    "bgp_message",
    "control_json",
    "config_toml",
    "xdp_differential",
];

/// `cargo xtask fuzz` options.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct FuzzArgs {
    /// One target (default: all of them).
    #[arg(long)]
    pub(crate) target: Option<String>,
    /// How long to fuzz each target, after its committed inputs.
    #[arg(long, default_value_t = 60)]
    pub(crate) seconds: u64,
    /// libFuzzer's sanitizer: `none` (fastest; the targets are safe Rust over safe parsers)
    /// or `address`.
    #[arg(long, default_value = "none")]
    pub(crate) sanitizer: String,
}

/// One target's run.
struct Outcome {
    target: &'static str,
    executions: u64,
    seconds: f64,
    coverage: Option<u64>,
    features: Option<u64>,
    corpus: usize,
}

pub(crate) fn run(args: &FuzzArgs) -> Result<()> {
    let targets: Vec<&'static str> = match &args.target {
        Some(t) => vec![*TARGETS
            .iter()
            .find(|name| *name == t)
            .with_context(|| format!("no fuzz target {t}; there are: {}", TARGETS.join(", ")))?],
        None => TARGETS.to_vec(),
    };
    let toolchain = ebpf_toolchain()?;
    let root = workspace_root();
    let fuzz = root.join("fuzz");
    header(&format!(
        "cargo +{toolchain} fuzz build -s {} ({} targets)",
        args.sanitizer,
        targets.len()
    ));
    let mut build = cargo_fuzz(&toolchain, &fuzz);
    build.args(["build", "-s", &args.sanitizer]);
    if let [one] = targets.as_slice() {
        build.arg(one);
    }
    let status = build
        .status()
        .with_context(|| format!("could not start `{}`", display_command(&build)))?;
    if !status.success() {
        bail!(
            "`{}` failed ({status}); is cargo-fuzz installed (scripts/setup.sh)?",
            display_command(&build)
        );
    }
    let mut outcomes = Vec::new();
    for target in targets {
        if target == "xdp_differential" && !is_root() {
            eprintln!(
                "SKIPPED fuzz target {target}: needs root (or CAP_BPF) to load the XDP program"
            );
            continue;
        }
        outcomes.push(run_target(&toolchain, &fuzz, target, args)?);
    }
    println!();
    println!("| target | seconds | executions | exec/s | coverage (edges) | features | corpus |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for o in &outcomes {
        println!(
            "| {} | {:.0} | {} | {:.0} | {} | {} | {} |",
            o.target,
            o.seconds,
            o.executions,
            o.executions as f64 / o.seconds.max(0.001),
            o.coverage.map_or("-".into(), |c| c.to_string()),
            o.features.map_or("-".into(), |c| c.to_string()),
            o.corpus
        );
    }
    println!("fuzz: {} passed, 0 failed", outcomes.len());
    Ok(())
}

fn cargo_fuzz(toolchain: &str, fuzz: &Path) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", toolchain, "cargo", "fuzz"])
        .current_dir(fuzz)
        // cargo-fuzz builds its own way; the workspace's settings must not leak in.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET");
    cmd
}

fn run_target(
    toolchain: &str,
    fuzz: &Path,
    target: &'static str,
    args: &FuzzArgs,
) -> Result<Outcome> {
    let corpus = fuzz.join("corpus").join(target);
    std::fs::create_dir_all(&corpus)
        .with_context(|| format!("cannot create {}", corpus.display()))?;
    let committed: Vec<_> = ["seeds", "regressions"]
        .iter()
        .map(|d| fuzz.join(d).join(target))
        .filter(|d| d.is_dir())
        .collect();
    // Every committed input once: a regression must stay fixed even when the fuzzer would
    // not wander back to it in the time given.
    if !committed.is_empty() {
        header(&format!("fuzz {target}: committed inputs"));
        let mut once = cargo_fuzz(toolchain, fuzz);
        once.args(["run", "-s", &args.sanitizer, target]);
        once.args(&committed);
        once.args(["--", "-runs=0"]);
        let out = once
            .output()
            .with_context(|| format!("could not start `{}`", display_command(&once)))?;
        if !out.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
            bail!("fuzz target {target} fails on a committed input (see above)");
        }
    }
    header(&format!("fuzz {target}: {} s", args.seconds));
    let mut cmd = cargo_fuzz(toolchain, fuzz);
    cmd.args(["run", "-s", &args.sanitizer, target])
        .arg(&corpus)
        .args(&committed)
        .arg("--")
        .arg(format!("-max_total_time={}", args.seconds))
        .arg("-print_final_stats=1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{}`", display_command(&cmd)))?;
    let seconds = started.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        eprintln!("{log}");
        bail!(
            "fuzz target {target} crashed; the input is under fuzz/artifacts/{target}/ \
             (reproduce: cargo +{toolchain} fuzz run {target} <file>; after the fix, commit it \
             to fuzz/regressions/{target}/)"
        );
    }
    let stat = |name: &str| -> Option<u64> {
        log.lines()
            .filter_map(|l| l.strip_prefix(name))
            .filter_map(|rest| rest.trim_start_matches(':').trim().parse().ok())
            .next_back()
    };
    // The last "#N DONE cov: X ft: Y corp: ..." (or status) line.
    let field = |name: &str| -> Option<u64> {
        log.lines()
            .filter(|l| l.starts_with('#') && l.contains(" cov: "))
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                words.find(|w| *w == name)?;
                words.next()?.parse().ok()
            })
            .next_back()
    };
    let outcome = Outcome {
        target,
        executions: stat("stat::number_of_executed_units").unwrap_or(0),
        seconds,
        coverage: field("cov:"),
        features: field("ft:"),
        corpus: std::fs::read_dir(&corpus).map_or(0, |d| d.count()),
    };
    eprintln!(
        "fuzz {target}: {} executions in {:.0} s, coverage {} edges",
        outcome.executions,
        seconds,
        outcome.coverage.unwrap_or(0)
    );
    Ok(outcome)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
