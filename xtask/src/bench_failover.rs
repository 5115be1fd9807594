//! `cargo xtask bench --scenario failover` (issue #15, part 4): the whole system on one machine
//! — a moto S3 origin, the control service, an embedded appliance (serving 127.0.0.0/8) and an
//! IX appliance, each a data plane and an agent — with a small synthetic catalog filled into
//! both; then `edgeplane-load`'s steered player (in process, one event loop) plays it with many
//! viewers, each asking steering where to play from, and halfway through the run the embedded
//! appliance (data plane and agent) is killed with SIGKILL. The viewers walk to the next
//! location of their steering answer on the first failed request, as real players do; steering
//! drops the dead appliance within `missed_limit × interval_secs` (3 s) and the viewers'
//! reloads follow.
//!
//! Reported: the per-viewer rebuffer ratio (stall / (played + stall)) across viewers (p50, p90,
//! p99, max), the time to recover from the failure (from the start of the first failed request
//! to the end of the next successful segment; p50, p99, max), failed viewers, bytes per
//! location and where the viewers ended, with the machine's load average. Every segment's
//! length and SHA-256 are checked against the catalog.
//!
//! Bitrates are low on purpose (64 and 128 kbit/s renditions, 2-second segments), so 1,000
//! viewers (about 500 segment requests/s and 16 MB/s at the top rung) fit a 2-core machine
//! beside the five services: the scenario measures the walk, not throughput.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use edgeplane_load::player::DEFAULT_LADDER_KBPS;
use edgeplane_load::stats::SteeringReport;
use edgeplane_load::{
    Config as LoadConfig, Live, Object, PlayerConfig, Report, SteeringConfig, Target as LoadTarget,
    Validation, Workload,
};
use serde_json::json;

use crate::bench::BenchArgs;
use crate::player_test::{get_json, poll, Appliance, Cloud, WAIT};
use crate::server::{send_signal, Server};
use crate::util::{edgeplane_bin_or_build, find_program, header, target_dir};

/// Titles of the synthetic catalog, and their ladder (name:bit/s).
const TITLES: usize = 4;
const RENDITIONS: &str = "64k:64000,128k:128000";
const SEGMENTS: usize = 15;
const SEGMENT_S: f64 = 2.0;
/// Seconds between the viewers' steering reloads.
const RELOAD_S: f64 = 5.0;
/// Seconds before a segment request counts as failed.
const SEGMENT_TIMEOUT_S: f64 = 2.0;

/// How the embedded appliance fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Failure {
    /// SIGKILL: its connections are reset and new ones refused at once.
    Kill,
    /// SIGSTOP: it hangs; requests time out (the viewers' segment timeout).
    Stop,
}

impl Failure {
    fn signal(self) -> (libc::c_int, &'static str) {
        match self {
            Failure::Kill => (libc::SIGKILL, "SIGKILLed"),
            Failure::Stop => (libc::SIGSTOP, "SIGSTOPped"),
        }
    }
}

/// What one failover run does.
pub(crate) struct Options {
    pub(crate) bin: PathBuf,
    pub(crate) dir: PathBuf,
    pub(crate) viewers: u64,
    /// Seconds of load; the embedded appliance is killed at half.
    pub(crate) seconds: u32,
    /// Viewers join spread over this many seconds.
    pub(crate) ramp_s: f64,
    pub(crate) failure: Failure,
}

/// What a run measured.
pub(crate) struct Outcome {
    pub(crate) report: Report,
    /// Seconds into the load when the embedded appliance was killed.
    pub(crate) killed_at_s: f64,
    /// /proc/loadavg before the load and at its end.
    pub(crate) load_before: String,
    pub(crate) load_after: String,
}

impl Outcome {
    pub(crate) fn steering(&self) -> Result<&SteeringReport> {
        self.report
            .player
            .as_ref()
            .and_then(|p| p.steering.as_ref())
            .ok_or_else(|| anyhow!("the load report has no steered-player section"))
    }
}

pub(crate) fn run(args: &BenchArgs) -> Result<()> {
    let bin = edgeplane_bin_or_build(args.edgeplane_bin.as_deref(), &args.profile)?;
    let dir = target_dir().join("bench-failover");
    let opts = Options {
        bin,
        dir: dir.clone(),
        viewers: args.failover_viewers,
        seconds: args.failover_seconds,
        ramp_s: 10.0_f64.min(f64::from(args.failover_seconds) / 4.0),
        failure: args.failover_signal,
    };
    let out = scenario(&opts)?;
    let st = out.steering()?;
    let p = out.report.player.as_ref().expect("player section");
    header("failover results");
    let errors: Vec<String> = out
        .report
        .errors
        .iter()
        .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!(
        "{} viewers ({} started) for {:.0} s, embedded appliance {} at {:.1} s",
        p.viewers,
        p.started,
        out.report.duration_s,
        opts.failure.signal().1,
        out.killed_at_s
    );
    println!(
        "rebuffer ratio per viewer: p50 {:.4} p90 {:.4} p99 {:.4} max {:.4} ({} viewers stalled); \
         all viewers together {:.4}",
        st.rebuffer_ratio_p50,
        st.rebuffer_ratio_p90,
        st.rebuffer_ratio_p99,
        st.rebuffer_ratio_max,
        st.viewers_stalled,
        p.rebuffer_ratio
    );
    println!(
        "time to recover: p50 {:.3} s p99 {:.3} s max {:.3} s ({} outages recovered, {} viewers \
         saw a failure, {} failovers, {} steering moves)",
        st.recover_p50_s,
        st.recover_p99_s,
        st.recover_max_s,
        st.recoveries,
        st.viewers_with_failures,
        st.failovers,
        st.steering_moves
    );
    println!(
        "failed viewers: {}; bytes per location: {:?}; viewers at the end: {:?}",
        st.failed_viewers, st.bytes_per_location, st.viewers_per_location
    );
    println!(
        "segments {} ({:.0} req/s), startup p50 {:.2} s, failed requests: {}; generator CPU \
         {:.1} s",
        out.report.requests,
        out.report.req_per_s,
        p.startup_p50_s,
        if errors.is_empty() {
            "none".to_owned()
        } else {
            errors.join(", ")
        },
        out.report.generator_cpu_s
    );
    println!(
        "load average (/proc/loadavg) before: {}; at the end: {}",
        out.load_before, out.load_after
    );
    let json = json!({
        "viewers": opts.viewers,
        "seconds": opts.seconds,
        "failure": opts.failure.signal().1,
        "killed_at_s": out.killed_at_s,
        "loadavg_before": out.load_before,
        "loadavg_after": out.load_after,
        "load": out.report,
    });
    let path = dir.join("report.json");
    fs::write(&path, serde_json::to_string_pretty(&json)? + "\n")?;
    println!("report: {}", path.display());
    ensure!(
        st.failed_viewers == 0,
        "{} viewers failed (never started, or still failing at the end)",
        st.failed_viewers
    );
    ensure!(
        out.report.succeeded(),
        "the load reported wrong responses: {errors:?}"
    );
    Ok(())
}

/// Waits until steering answers `emb` first for every title (the local client).
fn wait_embedded_first(ctl: &str) -> Result<()> {
    for t in 0..TITLES {
        let url = format!("{ctl}/v1/steering?title=t{t:04}");
        poll(&format!("steering to send t{t:04} to emb"), WAIT, || {
            let a = get_json(&url)?;
            Ok((a["locations"][0]["appliance"] == "emb").then_some(()))
        })?;
    }
    Ok(())
}

/// Sets up the system, runs the load, kills the embedded appliance halfway.
pub(crate) fn scenario(opts: &Options) -> Result<Outcome> {
    find_program("moto_server").context("moto_server is missing: run scripts/setup.sh")?;
    let dir = &opts.dir;
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir)?;
    let bin = &opts.bin;

    header("failover: origin (moto_server) and control service");
    let mut cloud = Cloud::start(dir, bin, "")?;
    let ctl = format!("http://{}", cloud.api);

    header(&format!(
        "failover: synthetic catalog ({TITLES} titles, {RENDITIONS}, {SEGMENTS} × {SEGMENT_S} s)"
    ));
    let catalog_path = dir.join("catalog.json");
    let status = Command::new(bin)
        .args(["cloud", "gen-catalog", "--config"])
        .arg(&cloud.config)
        .args(["--titles", &TITLES.to_string(), "--renditions", RENDITIONS])
        .args(["--segments", &SEGMENTS.to_string()])
        .args(["--segment-secs", &SEGMENT_S.to_string()])
        .args(["--upload", "--create-bucket", "--register", &ctl, "--out"])
        .arg(&catalog_path)
        .status()?;
    ensure!(status.success(), "gen-catalog failed");
    let catalog: edgeplane_api::Catalog = serde_json::from_str(&fs::read_to_string(&catalog_path)?)
        .with_context(|| format!("parse {}", catalog_path.display()))?;

    header("failover: appliances, embedded (127.0.0.0/8) and IX, filled");
    let mut emb = Appliance::new(
        dir,
        "emb",
        "embedded",
        "\"127.0.0.0/8\"",
        &ctl,
        &cloud.origin,
    )?;
    let mut ix = Appliance::new(dir, "ix", "ix", "", &ctl, &cloud.origin)?;
    emb.start_filled(bin)?;
    ix.start_filled(bin)?;
    wait_embedded_first(&ctl)?;

    let cfg = LoadConfig {
        target: LoadTarget::parse(&format!("{ctl}/v1/steering"))?,
        threads: 1,
        cpus: Vec::new(),
        connections: 0,
        duration: Duration::from_secs(u64::from(opts.seconds)),
        rate: None,
        request_timeout: Duration::from_secs(10),
        workload: Workload::Player(PlayerConfig {
            viewers: opts.viewers,
            titles: (0..TITLES)
                .map(|t| Object {
                    name: format!("t{t:04}"),
                    size: 0,
                })
                .collect(),
            zipf_s: 1.0,
            // Unused by the steered player (its ladder is the answer's renditions).
            ladder_kbps: DEFAULT_LADDER_KBPS.to_vec(),
            segment_s: SEGMENT_S,
            buffer_target_s: 4.0 * SEGMENT_S,
            startup_s: SEGMENT_S,
            ramp_s: opts.ramp_s,
            steering: Some(SteeringConfig {
                url: format!("{ctl}/v1/steering"),
                client: None,
                reload_s: RELOAD_S,
                segment_timeout_s: SEGMENT_TIMEOUT_S,
                expect: edgeplane_load::steer::expected_objects(&catalog),
                // One address per viewer, as on a network (the appliances cap connections per
                // client address at 256 by default).
                loopback_sources: true,
            }),
        }),
        validation: Validation::Full,
        ca: None,
        sni: None,
        seed: 1,
        max_requests: None,
    };
    header(&format!(
        "failover: {} steered viewers for {} s; the embedded appliance is {} at {} s",
        opts.viewers,
        opts.seconds,
        opts.failure.signal().1,
        f64::from(opts.seconds) / 2.0
    ));
    let load_before = crate::util::load_average();
    let live = Arc::new(Live::default());
    let started = Instant::now();
    let load = {
        let live = Arc::clone(&live);
        thread::spawn(move || edgeplane_load::run(&cfg, live))
    };
    // `run` starts the load 100 ms after it is called.
    let kill_at =
        Duration::from_millis(100) + Duration::from_secs_f64(f64::from(opts.seconds) / 2.0);
    thread::sleep(kill_at.saturating_sub(started.elapsed()));
    let killed_at_s = started.elapsed().as_secs_f64() - 0.1;
    let mut failed = fail(&mut emb, opts.failure)?;
    eprintln!(
        "failover: emb {} at {killed_at_s:.1} s ({} segments so far, {} failed requests)",
        opts.failure.signal().1,
        live.requests.load(std::sync::atomic::Ordering::Relaxed),
        live.errors.load(std::sync::atomic::Ordering::Relaxed)
    );
    let report = load
        .join()
        .map_err(|_| anyhow!("the load thread panicked"))??;
    let load_after = crate::util::load_average();
    eprintln!("edgeplane-load: {}", report.summary());

    for p in &mut failed {
        let _ = p.stop(libc::SIGKILL, Duration::from_secs(5));
    }
    for s in [ix.agent.take(), ix.dataplane.take()].into_iter().flatten() {
        let mut s = s;
        let _ = s.stop(libc::SIGTERM, Duration::from_secs(10));
    }
    let _ = cloud.cloud.stop(libc::SIGTERM, Duration::from_secs(10));
    let _ = cloud.moto.stop(libc::SIGKILL, Duration::from_secs(5));
    Ok(Outcome {
        report,
        killed_at_s,
        load_before,
        load_after,
    })
}

/// Signals the appliance's data plane and agent at the same moment; returns them (a stopped
/// process is killed after the load).
fn fail(a: &mut Appliance, failure: Failure) -> Result<Vec<Server>> {
    let procs: Vec<Server> = [a.dataplane.take(), a.agent.take()]
        .into_iter()
        .flatten()
        .collect();
    if procs.len() != 2 {
        bail!("{} is not running", a.id);
    }
    for p in &procs {
        send_signal(p.pid(), failure.signal().0)?;
    }
    Ok(procs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// 20 steered viewers; the embedded appliance is killed halfway: every viewer ends on the
    /// IX appliance, none failed, the walk recovered every outage, and every segment body was
    /// right. (No timing is asserted: the numbers are the bench's.)
    #[test]
    fn twenty_viewers_walk_to_ix_when_emb_dies() {
        if find_program("moto_server").is_err() {
            eprintln!("skipping: moto_server is not installed (scripts/setup.sh)");
            return;
        }
        let dir = std::env::temp_dir().join(format!("xtask-failover-{}", std::process::id()));
        let out = scenario(&Options {
            bin: crate::bench::tests::debug_edgeplane(),
            dir: dir.clone(),
            viewers: 20,
            seconds: 24,
            ramp_s: 2.0,
            failure: Failure::Kill,
        })
        .unwrap();
        let st = out.steering().unwrap();
        let summary = out.report.summary();
        assert_eq!(st.failed_viewers, 0, "{summary}");
        assert_eq!(
            st.viewers_per_location,
            BTreeMap::from([("ix".to_owned(), 20)]),
            "{summary}"
        );
        assert!(st.bytes_per_location["emb"] > 0, "{summary}");
        assert!(st.bytes_per_location["ix"] > 0, "{summary}");
        assert!(out.report.succeeded(), "{summary}");
        for kind in ["protocol", "length", "content"] {
            assert_eq!(out.report.errors[kind], 0, "{kind}: {summary}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
