//! Counting and report math: error kinds, latency histograms, the open-loop schedule and its
//! coordinated-omission correction, the per-second time series, and the JSON report.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Why a request did not count as a success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// TCP connect failed.
    Connect,
    /// TLS handshake failed.
    Tls,
    /// Read or write failed, or the server closed mid-response.
    Io,
    /// No complete response within the request timeout.
    Timeout,
    /// Status other than 206 (or 200 for a whole object).
    Status,
    /// Unparsable head, no Content-Length, wrong Content-Range, extra bytes.
    Protocol,
    /// Content-Length is not the requested range's length.
    Length,
    /// Body bytes differ from the object's content at that offset.
    Content,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::Connect,
        ErrorKind::Tls,
        ErrorKind::Io,
        ErrorKind::Timeout,
        ErrorKind::Status,
        ErrorKind::Protocol,
        ErrorKind::Length,
        ErrorKind::Content,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Tls => "tls",
            ErrorKind::Io => "io",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Status => "status",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Length => "length",
            ErrorKind::Content => "content",
        }
    }
}

/// New latency histogram: 1 µs to 100 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid bounds")
}

/// Open loop: the global schedule sends request `i` at `i / rate` seconds, request `i` on
/// connection `i mod connections`. A connection's `k`-th request is global request
/// `conn + k × connections`.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub rate_per_s: f64,
    pub connections: u64,
}

impl Schedule {
    /// Intended start of connection `conn`'s `k`-th request, ns after the run's start.
    pub fn intended_ns(&self, conn: u64, k: u64) -> u64 {
        let i = conn + k * self.connections;
        (i as f64 * 1e9 / self.rate_per_s) as u64
    }
}

/// Latency corrected for coordinated omission (as wrk2): measured from when the request should
/// have been sent by the schedule, not from when a backed-up connection got round to sending it.
/// A server that stalls for a second is charged that second for every request the schedule
/// wanted to send during it, not just for the one request that was waiting.
pub fn corrected_latency_ns(intended_ns: u64, _sent_ns: u64, done_ns: u64) -> u64 {
    done_ns.saturating_sub(intended_ns)
}

/// Latency from the moment the request was actually written (the service time).
pub fn service_latency_ns(_intended_ns: u64, sent_ns: u64, done_ns: u64) -> u64 {
    done_ns.saturating_sub(sent_ns)
}

/// A histogram as its non-empty buckets: (a value in the bucket, count). Rebuilding records each
/// count at its value, which lands in the same bucket, so the round trip (and a merge after it)
/// is exact.
pub type HistogramWire = Vec<(u64, u64)>;

/// The non-empty buckets of `h`.
pub fn histogram_to_wire(h: &Histogram<u64>) -> HistogramWire {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// A histogram (the bounds of [`histogram`]) from its buckets.
pub fn histogram_from_wire(w: &HistogramWire) -> Histogram<u64> {
    let mut h = histogram();
    for &(value, count) in w {
        h.saturating_record_n(value, count);
    }
    h
}

/// [`Stats`] as JSON (for a worker's final report to the coordinator).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatsWire {
    pub ok: u64,
    pub errors: Vec<u64>,
    pub bytes: u64,
    pub body_bytes: u64,
    pub latency: HistogramWire,
    pub service: HistogramWire,
    pub classes: Vec<(u64, HistogramWire)>,
    pub series: Vec<(u64, u64)>,
    pub viewers: Vec<ViewerStats>,
    pub cpu_s: f64,
}

/// What one connection or viewer counted; merged at the end.
pub struct Stats {
    pub ok: u64,
    pub errors: [u64; ErrorKind::ALL.len()],
    /// Everything received: heads and bodies.
    pub bytes: u64,
    pub body_bytes: u64,
    /// Per request, µs: CO-corrected in open loop, else from send to last byte.
    pub latency: Histogram<u64>,
    /// Open loop only: from actual send to last byte, µs.
    pub service: Histogram<u64>,
    /// Per request class (e.g. hot, cold): successful requests and their latency.
    pub classes: Vec<(u64, Histogram<u64>)>,
    /// Per second of the run: (successful responses, bytes received).
    pub series: Vec<(u64, u64)>,
    pub viewers: Vec<ViewerStats>,
    /// CPU seconds of the generator threads that counted this (user + system).
    pub cpu_s: f64,
}

impl Stats {
    pub fn new(classes: usize) -> Stats {
        Stats {
            ok: 0,
            errors: [0; ErrorKind::ALL.len()],
            bytes: 0,
            body_bytes: 0,
            latency: histogram(),
            service: histogram(),
            classes: (0..classes).map(|_| (0, histogram())).collect(),
            series: Vec::new(),
            viewers: Vec::new(),
            cpu_s: 0.0,
        }
    }

    pub fn to_wire(&self) -> StatsWire {
        StatsWire {
            ok: self.ok,
            errors: self.errors.to_vec(),
            bytes: self.bytes,
            body_bytes: self.body_bytes,
            latency: histogram_to_wire(&self.latency),
            service: histogram_to_wire(&self.service),
            classes: self
                .classes
                .iter()
                .map(|(n, h)| (*n, histogram_to_wire(h)))
                .collect(),
            series: self.series.clone(),
            viewers: self.viewers.clone(),
            cpu_s: self.cpu_s,
        }
    }

    /// Back from the wire; `None` if the error kinds do not match this build's.
    pub fn from_wire(w: &StatsWire) -> Option<Stats> {
        Some(Stats {
            ok: w.ok,
            errors: w.errors.clone().try_into().ok()?,
            bytes: w.bytes,
            body_bytes: w.body_bytes,
            latency: histogram_from_wire(&w.latency),
            service: histogram_from_wire(&w.service),
            classes: w
                .classes
                .iter()
                .map(|(n, h)| (*n, histogram_from_wire(h)))
                .collect(),
            series: w.series.clone(),
            viewers: w.viewers.clone(),
            cpu_s: w.cpu_s,
        })
    }

    pub fn error(&mut self, kind: ErrorKind) {
        self.errors[kind as usize] += 1;
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.iter().sum()
    }

    /// `bytes` arrived at `elapsed_s` into the run.
    pub fn add_bytes(&mut self, elapsed_s: f64, bytes: u64) {
        self.bytes += bytes;
        self.bucket(elapsed_s).1 += bytes;
    }

    /// A successful response completed at `elapsed_s`.
    pub fn success(&mut self, elapsed_s: f64, class: usize, latency_us: u64, body: u64) {
        self.ok += 1;
        self.body_bytes += body;
        self.bucket(elapsed_s).0 += 1;
        let v = latency_us.max(1);
        self.latency.saturating_record(v);
        if let Some((n, h)) = self.classes.get_mut(class) {
            *n += 1;
            h.saturating_record(v);
        }
    }

    fn bucket(&mut self, elapsed_s: f64) -> &mut (u64, u64) {
        let i = elapsed_s.max(0.0) as usize;
        if self.series.len() <= i {
            self.series.resize(i + 1, (0, 0));
        }
        &mut self.series[i]
    }

    pub fn merge(&mut self, other: Stats) {
        self.ok += other.ok;
        for (a, b) in self.errors.iter_mut().zip(other.errors) {
            *a += b;
        }
        self.bytes += other.bytes;
        self.body_bytes += other.body_bytes;
        self.latency.add(&other.latency).expect("same bounds");
        self.service.add(&other.service).expect("same bounds");
        for ((n, h), (on, oh)) in self.classes.iter_mut().zip(other.classes) {
            *n += on;
            h.add(&oh).expect("same bounds");
        }
        if self.series.len() < other.series.len() {
            self.series.resize(other.series.len(), (0, 0));
        }
        for (a, b) in self.series.iter_mut().zip(other.series) {
            a.0 += b.0;
            a.1 += b.1;
        }
        self.viewers.extend(other.viewers);
        self.cpu_s += other.cpu_s;
    }
}

/// One viewer's session.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ViewerStats {
    pub startup_s: Option<f64>,
    pub stall_s: f64,
    pub stalls: u32,
    pub played_s: f64,
    pub delivered_kbps: f64,
    pub switches: u32,
    pub segments: u64,
    /// The steered player's walk (None for the plain player).
    #[serde(default)]
    pub steered: Option<SteeredStats>,
}

impl ViewerStats {
    /// This viewer's stalled share of the time since its playback started.
    pub fn rebuffer_ratio(&self) -> f64 {
        crate::player::rebuffer_ratio(self.played_s, self.stall_s)
    }
}

/// What one steered viewer did with its steering answers.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SteeredStats {
    /// Moves to the next location after a failed request.
    pub failovers: u32,
    /// Times every location of the answer had failed (the walk restarted at the first).
    pub exhausted: u32,
    /// Moves because a reloaded answer ranked another location first.
    pub steering_moves: u32,
    /// Steering requests that failed.
    pub steering_errors: u32,
    /// Per outage: seconds from the start of the first failed request to the end of the next
    /// successful segment.
    pub recover_s: Vec<f64>,
    /// The last request failed and none succeeded after it before the run ended.
    pub unrecovered: bool,
    /// Where the viewer was at the end: an appliance id or `origin`.
    pub location: Option<String>,
    /// Body bytes of the segments received, per location.
    pub location_bytes: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

/// Points of the latency CDF for plotting: (ms, fraction of requests at or below).
pub fn cdf_points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    // Dense in the tail: quantiles 1 - 10^(-x/20) for x = 0..=80 (up to 0.9999), then max.
    for x in 0..=80 {
        let q = 1.0 - 10f64.powf(-f64::from(x) / 20.0);
        out.push((h.value_at_quantile(q) as f64 / 1000.0, q));
    }
    out.push((h.max() as f64 / 1000.0, 1.0));
    out
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SecondSample {
    pub t_s: u64,
    pub requests: u64,
    pub gbps: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClassReport {
    pub name: String,
    pub requests: u64,
    pub latency: Latency,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PlayerReport {
    pub viewers: u64,
    pub started: u64,
    pub startup_p50_s: f64,
    pub startup_p90_s: f64,
    pub startup_max_s: f64,
    /// Σ stall / Σ (played + stall) over all viewers.
    pub rebuffer_ratio: f64,
    pub stalls: u64,
    /// Mean of the viewers' delivered bitrates, kbit/s.
    pub delivered_kbps_mean: f64,
    pub switches: u64,
    pub segments: u64,
    /// Steered viewers only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steering: Option<SteeringReport>,
}

/// The steered player's results across viewers.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SteeringReport {
    /// Per-viewer rebuffer ratio (stall / (played + stall)): percentiles across viewers.
    pub rebuffer_ratio_p50: f64,
    pub rebuffer_ratio_p90: f64,
    pub rebuffer_ratio_p99: f64,
    pub rebuffer_ratio_max: f64,
    /// Viewers with any stall after their start.
    pub viewers_stalled: u64,
    /// Viewers that saw at least one failed segment request.
    pub viewers_with_failures: u64,
    /// Outages recovered from (a failed request, then a successful segment).
    pub recoveries: u64,
    /// Time to recover: from the start of an outage's first failed request to the end of the
    /// next successful segment.
    pub recover_p50_s: f64,
    pub recover_p99_s: f64,
    pub recover_max_s: f64,
    /// Viewers that never started playing or were still failing at the end.
    pub failed_viewers: u64,
    pub failovers: u64,
    pub exhausted: u64,
    pub steering_moves: u64,
    pub steering_errors: u64,
    /// Segment body bytes per location (appliance id or `origin`).
    pub bytes_per_location: BTreeMap<String, u64>,
    /// Where the viewers were at the end of the run.
    pub viewers_per_location: BTreeMap<String, u64>,
}

impl SteeringReport {
    /// None when no viewer was steered.
    pub fn of(viewers: &[ViewerStats]) -> Option<SteeringReport> {
        use crate::steer::percentile;
        let steered: Vec<(&ViewerStats, &SteeredStats)> = viewers
            .iter()
            .filter_map(|v| Some((v, v.steered.as_ref()?)))
            .collect();
        if steered.is_empty() {
            return None;
        }
        let ratios: Vec<f64> = steered.iter().map(|(v, _)| v.rebuffer_ratio()).collect();
        let recover: Vec<f64> = steered
            .iter()
            .flat_map(|(_, s)| s.recover_s.iter().copied())
            .collect();
        let mut r = SteeringReport {
            rebuffer_ratio_p50: percentile(&ratios, 0.5),
            rebuffer_ratio_p90: percentile(&ratios, 0.9),
            rebuffer_ratio_p99: percentile(&ratios, 0.99),
            rebuffer_ratio_max: percentile(&ratios, 1.0),
            viewers_stalled: steered.iter().filter(|(v, _)| v.stall_s > 0.0).count() as u64,
            viewers_with_failures: steered
                .iter()
                .filter(|(_, s)| s.failovers + s.exhausted > 0)
                .count() as u64,
            recoveries: recover.len() as u64,
            recover_p50_s: percentile(&recover, 0.5),
            recover_p99_s: percentile(&recover, 0.99),
            recover_max_s: percentile(&recover, 1.0),
            failed_viewers: steered
                .iter()
                .filter(|(v, s)| v.startup_s.is_none() || s.unrecovered)
                .count() as u64,
            ..SteeringReport::default()
        };
        for (_, s) in &steered {
            r.failovers += u64::from(s.failovers);
            r.exhausted += u64::from(s.exhausted);
            r.steering_moves += u64::from(s.steering_moves);
            r.steering_errors += u64::from(s.steering_errors);
            for (loc, bytes) in &s.location_bytes {
                *r.bytes_per_location.entry(loc.clone()).or_default() += bytes;
            }
            let at = s.location.clone().unwrap_or_else(|| "none".to_owned());
            *r.viewers_per_location.entry(at).or_default() += 1;
        }
        Some(r)
    }
}

impl PlayerReport {
    pub fn of(viewers: &[ViewerStats]) -> PlayerReport {
        if viewers.is_empty() {
            return PlayerReport::default();
        }
        let mut startups: Vec<f64> = viewers.iter().filter_map(|v| v.startup_s).collect();
        startups.sort_by(f64::total_cmp);
        let pick = |q: f64| {
            if startups.is_empty() {
                0.0
            } else {
                startups[((startups.len() - 1) as f64 * q).round() as usize]
            }
        };
        let stall: f64 = viewers.iter().map(|v| v.stall_s).sum();
        let played: f64 = viewers.iter().map(|v| v.played_s).sum();
        let with_media: Vec<f64> = viewers
            .iter()
            .filter(|v| v.segments > 0)
            .map(|v| v.delivered_kbps)
            .collect();
        PlayerReport {
            viewers: viewers.len() as u64,
            started: startups.len() as u64,
            startup_p50_s: pick(0.5),
            startup_p90_s: pick(0.9),
            startup_max_s: startups.last().copied().unwrap_or(0.0),
            rebuffer_ratio: if stall + played > 0.0 {
                stall / (stall + played)
            } else {
                0.0
            },
            stalls: viewers.iter().map(|v| u64::from(v.stalls)).sum(),
            delivered_kbps_mean: if with_media.is_empty() {
                0.0
            } else {
                with_media.iter().sum::<f64>() / with_media.len() as f64
            },
            switches: viewers.iter().map(|v| u64::from(v.switches)).sum(),
            segments: viewers.iter().map(|v| v.segments).sum(),
            steering: SteeringReport::of(viewers),
        }
    }
}

/// The generator's result, as written to JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub target: String,
    /// "closed", "open" or "player".
    pub mode: String,
    pub threads: usize,
    pub connections: u64,
    /// Open loop: requests per second asked for.
    pub target_rate_per_s: Option<f64>,
    pub duration_s: f64,
    /// Successful, validated responses.
    pub requests: u64,
    pub errors: serde_json::Map<String, serde_json::Value>,
    pub errors_total: u64,
    pub bytes: u64,
    pub body_bytes: u64,
    pub gbps: f64,
    pub req_per_s: f64,
    /// Open loop: corrected for coordinated omission (from each request's intended start).
    pub latency_co_corrected: bool,
    pub latency: Latency,
    /// Open loop: from actual send to last byte.
    pub service_latency: Option<Latency>,
    pub latency_cdf: Vec<(f64, f64)>,
    pub classes: Vec<ClassReport>,
    pub timeseries: Vec<SecondSample>,
    pub player: Option<PlayerReport>,
    pub validation: String,
    /// CPU seconds (user + system) of all generator threads, on all workers.
    #[serde(default)]
    pub generator_cpu_s: f64,
    /// Validated responses per generator CPU-second: the generator's own efficiency.
    #[serde(default)]
    pub req_per_generator_cpu_s: f64,
    /// False when the measurement cannot be trusted as a whole (a worker was lost mid-run);
    /// `invalid_reasons` says why.
    #[serde(default = "yes")]
    pub valid: bool,
    #[serde(default)]
    pub invalid_reasons: Vec<String>,
    /// Distributed runs: one entry per worker (empty for a local run).
    #[serde(default)]
    pub workers: Vec<WorkerReport>,
}

fn yes() -> bool {
    true
}

/// One worker's share of a distributed run.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct WorkerReport {
    /// HOST:PORT as given to `--workers`.
    pub addr: String,
    pub threads: usize,
    /// Connections (or viewers) it drove.
    pub connections: u64,
    pub requests: u64,
    pub bytes: u64,
    pub errors: u64,
    pub cpu_s: f64,
    /// It sent its final counts; false: lost mid-run (its counts are missing from the totals).
    pub finished: bool,
    pub note: String,
}

/// Gbit/s for `bytes` over `secs`.
pub fn gbps(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 * 8.0 / secs / 1e9
    } else {
        0.0
    }
}

pub struct ReportInput<'a> {
    pub target: &'a str,
    pub mode: &'a str,
    pub threads: usize,
    pub connections: u64,
    pub target_rate_per_s: Option<f64>,
    pub duration_s: f64,
    pub class_names: &'a [String],
    pub player: bool,
    pub validation: &'a str,
}

impl Report {
    pub fn build(input: &ReportInput<'_>, stats: &Stats) -> Report {
        let mut errors = serde_json::Map::new();
        for kind in ErrorKind::ALL {
            errors.insert(kind.name().into(), stats.errors[kind as usize].into());
        }
        let open = input.mode == "open";
        // Whole seconds only: a last partial bucket (requests finishing after the deadline)
        // would read as a dip.
        let full = input.duration_s.floor() as usize;
        Report {
            target: input.target.to_owned(),
            mode: input.mode.to_owned(),
            threads: input.threads,
            connections: input.connections,
            target_rate_per_s: input.target_rate_per_s,
            duration_s: input.duration_s,
            requests: stats.ok,
            errors,
            errors_total: stats.errors_total(),
            bytes: stats.bytes,
            body_bytes: stats.body_bytes,
            gbps: gbps(stats.bytes, input.duration_s),
            req_per_s: if input.duration_s > 0.0 {
                stats.ok as f64 / input.duration_s
            } else {
                0.0
            },
            latency_co_corrected: open,
            latency: Latency::of(&stats.latency),
            service_latency: open.then(|| Latency::of(&stats.service)),
            latency_cdf: cdf_points(&stats.latency),
            classes: input
                .class_names
                .iter()
                .zip(&stats.classes)
                .map(|(name, (n, h))| ClassReport {
                    name: name.clone(),
                    requests: *n,
                    latency: Latency::of(h),
                })
                .collect(),
            timeseries: stats
                .series
                .iter()
                .take(full.max(1))
                .enumerate()
                .map(|(t, &(requests, bytes))| SecondSample {
                    t_s: t as u64,
                    requests,
                    gbps: gbps(bytes, 1.0),
                })
                .collect(),
            player: input.player.then(|| PlayerReport::of(&stats.viewers)),
            validation: input.validation.to_owned(),
            generator_cpu_s: stats.cpu_s,
            req_per_generator_cpu_s: if stats.cpu_s > 0.0 {
                stats.ok as f64 / stats.cpu_s
            } else {
                0.0
            },
            valid: true,
            invalid_reasons: Vec::new(),
            workers: Vec::new(),
        }
    }

    /// Whether the run went as it should: every response valid and at least one. Steered
    /// viewers walk away from failing locations, so there connection errors, timeouts and
    /// error statuses are expected; the run succeeds when no viewer failed (never started, or
    /// still failing at the end) and no body was wrong.
    pub fn succeeded(&self) -> bool {
        if !self.valid || self.requests == 0 {
            return false;
        }
        match self.player.as_ref().and_then(|p| p.steering.as_ref()) {
            Some(st) => {
                let wrong = ["protocol", "length", "content"]
                    .iter()
                    .map(|k| self.errors.get(*k).and_then(|v| v.as_u64()).unwrap_or(0))
                    .sum::<u64>();
                st.failed_viewers == 0 && wrong == 0
            }
            None => self.errors_total == 0,
        }
    }

    /// One line for humans.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} {}: {} req in {:.1} s ({:.0} req/s), {:.2} Gbps, latency{} p50 {:.2} p99 {:.2} \
             p99.9 {:.2} max {:.2} ms, errors {}",
            self.target,
            self.mode,
            self.requests,
            self.duration_s,
            self.req_per_s,
            self.gbps,
            if self.latency_co_corrected {
                " (CO-corrected)"
            } else {
                ""
            },
            self.latency.p50_ms,
            self.latency.p99_ms,
            self.latency.p999_ms,
            self.latency.max_ms,
            self.errors_total
        );
        if self.errors_total > 0 {
            let kinds: Vec<String> = self
                .errors
                .iter()
                .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            s += &format!(" ({})", kinds.join(", "));
        }
        if !self.valid {
            s += &format!("; INVALID: {}", self.invalid_reasons.join("; "));
        }
        if let Some(p) = &self.player {
            s += &format!(
                "; player: {} viewers, startup p50 {:.3} s, rebuffer {:.2}%, {:.0} kbps delivered",
                p.viewers,
                p.startup_p50_s,
                p.rebuffer_ratio * 100.0,
                p.delivered_kbps_mean
            );
            if let Some(st) = &p.steering {
                s += &format!(
                    "; steered: rebuffer ratio p50 {:.4} p99 {:.4} max {:.4}, time to recover \
                     p50 {:.3} s p99 {:.3} s ({} outages), {} failed viewers, bytes per location \
                     {:?}, viewers at the end {:?}",
                    st.rebuffer_ratio_p50,
                    st.rebuffer_ratio_p99,
                    st.rebuffer_ratio_max,
                    st.recover_p50_s,
                    st.recover_p99_s,
                    st.recoveries,
                    st.failed_viewers,
                    st.bytes_per_location,
                    st.viewers_per_location
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_loop_schedule_interleaves_connections() {
        let s = Schedule {
            rate_per_s: 1000.0,
            connections: 4,
        };
        // Global request i at i ms; connection 1 sends requests 1, 5, 9, ...
        assert_eq!(s.intended_ns(0, 0), 0);
        assert_eq!(s.intended_ns(1, 0), 1_000_000);
        assert_eq!(s.intended_ns(1, 1), 5_000_000);
        assert_eq!(s.intended_ns(3, 2), 11_000_000);
    }

    #[test]
    fn coordinated_omission_correction() {
        // 1000 req/s on one connection; the server stalls 100 ms on request 0, then answers
        // in 1 ms. Requests 1..=99 are sent late, back to back, as soon as the connection is
        // free. Measured from the send they look fast; from the schedule they waited.
        let s = Schedule {
            rate_per_s: 1000.0,
            connections: 1,
        };
        let (mut corrected, mut service) = (histogram(), histogram());
        let mut free_at = 0u64;
        for k in 0..200u64 {
            let intended = s.intended_ns(0, k);
            let sent = intended.max(free_at);
            let took = if k == 0 { 100_000_000 } else { 1_000_000 };
            let done = sent + took;
            free_at = done;
            corrected
                .record(corrected_latency_ns(intended, sent, done) / 1000)
                .unwrap();
            service
                .record(service_latency_ns(intended, sent, done) / 1000)
                .unwrap();
        }
        // Service time: one slow request of 200, so its p90 is 1 ms.
        assert_eq!(Latency::of(&service).p90_ms.round(), 1.0);
        // Corrected: request k (k < 100) waited until 100 + k ms, then 1 ms: 101 ms - k.
        // Backlog drains at 1 per ms while the schedule adds 1 per ms, so every later request
        // is 100 ms late too: the stall is charged to all of them.
        let c = Latency::of(&corrected);
        assert!(c.p50_ms > 90.0, "{c:?}");
        assert_eq!(corrected_latency_ns(10, 50, 70), 60);
        assert_eq!(service_latency_ns(10, 50, 70), 20);
        assert_eq!(
            corrected_latency_ns(100, 100, 50),
            0,
            "clock never goes negative"
        );
    }

    #[test]
    fn report_math() {
        let mut a = Stats::new(2);
        a.add_bytes(0.5, 1_000_000_000);
        a.success(0.5, 0, 1000, 999_000_000);
        a.add_bytes(1.5, 250_000_000);
        a.success(1.5, 1, 3000, 249_000_000);
        let mut b = Stats::new(2);
        b.error(ErrorKind::Content);
        b.error(ErrorKind::Content);
        b.error(ErrorKind::Timeout);
        b.add_bytes(2.2, 10);
        a.merge(b);
        let names = ["hot".to_owned(), "cold".to_owned()];
        let r = Report::build(
            &ReportInput {
                target: "http://x",
                mode: "closed",
                threads: 1,
                connections: 2,
                target_rate_per_s: None,
                duration_s: 2.0,
                class_names: &names,
                player: false,
                validation: "full",
            },
            &a,
        );
        assert_eq!(r.requests, 2);
        assert_eq!(r.errors_total, 3);
        assert_eq!(r.errors["content"], 2);
        assert_eq!(r.errors["timeout"], 1);
        assert_eq!(r.bytes, 1_250_000_010);
        assert!((r.gbps - 5.00000004).abs() < 1e-6);
        assert_eq!(r.req_per_s, 1.0);
        assert_eq!(
            r.timeseries.len(),
            2,
            "the partial third second is left out"
        );
        assert_eq!(r.timeseries[0].gbps, 8.0);
        assert_eq!(r.timeseries[1].requests, 1);
        assert_eq!(r.classes[1].requests, 1);
        assert!((r.classes[1].latency.p50_ms - 3.0).abs() < 0.01);
        assert!((r.latency.max_ms - 3.0).abs() < 0.01);
        assert!(!r.latency_co_corrected && r.service_latency.is_none());
        let cdf = &r.latency_cdf;
        assert!(cdf.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(cdf.last().unwrap().1, 1.0);
        assert!(
            r.summary().contains("errors 3 (timeout 1, content 2)"),
            "{}",
            r.summary()
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["latency"]["p99_ms"], r.latency.p99_ms);
    }

    #[test]
    fn stats_cross_the_wire_exactly() {
        let mut a = Stats::new(2);
        for (i, us) in [1u64, 7, 999, 1_000, 1_234, 56_789, 3_000_000, 99_999_999]
            .into_iter()
            .enumerate()
        {
            a.add_bytes(i as f64 * 0.4, 1000 + i as u64);
            a.success(i as f64 * 0.4, i % 2, us, 900);
            a.service.saturating_record(us / 2 + 1);
        }
        a.error(ErrorKind::Io);
        a.viewers.push(ViewerStats {
            startup_s: Some(0.25),
            stall_s: 0.0,
            stalls: 0,
            played_s: 3.0,
            delivered_kbps: 750.0,
            switches: 1,
            segments: 2,
            steered: Some(SteeredStats {
                recover_s: vec![0.25],
                location: Some("ix".into()),
                location_bytes: BTreeMap::from([("emb".into(), 10), ("ix".into(), 20)]),
                ..SteeredStats::default()
            }),
        });
        a.cpu_s = 0.5;
        let json = serde_json::to_string(&a.to_wire()).unwrap();
        let b = Stats::from_wire(&serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(b.to_wire(), a.to_wire());
        // Merging the rebuilt histograms gives the same histogram as merging the originals.
        let (mut direct, mut via_wire) = (histogram(), histogram());
        direct.add(&a.latency).unwrap();
        direct.add(&a.latency).unwrap();
        via_wire.add(&b.latency).unwrap();
        via_wire.add(&b.latency).unwrap();
        assert_eq!(direct, via_wire);
        assert_eq!(b.latency.len(), 8);
        assert_eq!(b.latency.max(), a.latency.max());
        let mut bad = a.to_wire();
        bad.errors.pop();
        assert!(
            Stats::from_wire(&bad).is_none(),
            "another build's error kinds"
        );
    }

    #[test]
    fn player_report_aggregates_viewers() {
        let v = |startup: Option<f64>, stall: f64, played: f64, kbps: f64| ViewerStats {
            startup_s: startup,
            stall_s: stall,
            stalls: u32::from(stall > 0.0),
            played_s: played,
            delivered_kbps: kbps,
            switches: 1,
            segments: u64::from(kbps > 0.0) * 5,
            steered: None,
        };
        let p = PlayerReport::of(&[
            v(Some(0.5), 0.0, 10.0, 3000.0),
            v(Some(1.5), 2.0, 8.0, 1000.0),
            v(None, 0.0, 0.0, 0.0),
        ]);
        assert_eq!(p.viewers, 3);
        assert_eq!(p.started, 2);
        assert!((p.rebuffer_ratio - 0.1).abs() < 1e-9);
        assert_eq!(p.delivered_kbps_mean, 2000.0);
        assert_eq!(p.startup_max_s, 1.5);
        assert_eq!(p.stalls, 1);
        assert_eq!(p.steering, None, "no steered viewer");
    }

    #[test]
    fn steering_report_aggregates_the_walks() {
        let v = |stall: f64, steered: SteeredStats, started: bool| ViewerStats {
            startup_s: started.then_some(0.5),
            stall_s: stall,
            stalls: u32::from(stall > 0.0),
            played_s: 10.0 - stall,
            delivered_kbps: 100.0,
            switches: 0,
            segments: 5,
            steered: Some(steered),
        };
        let walked = |recover: &[f64], at: &str, emb: u64, ix: u64| SteeredStats {
            failovers: u32::from(!recover.is_empty()),
            recover_s: recover.to_vec(),
            location: Some(at.into()),
            location_bytes: BTreeMap::from([("emb".into(), emb), ("ix".into(), ix)]),
            ..SteeredStats::default()
        };
        let mut stuck = walked(&[], "ix", 0, 0);
        stuck.failovers = 1;
        stuck.unrecovered = true;
        let r = SteeringReport::of(&[
            v(0.0, walked(&[0.1], "ix", 100, 50), true),
            v(1.0, walked(&[0.3], "ix", 100, 50), true),
            v(0.0, walked(&[], "emb", 150, 0), true),
            v(0.0, stuck, true),
            v(0.0, walked(&[], "emb", 0, 0), false),
        ])
        .unwrap();
        assert_eq!(r.viewers_stalled, 1);
        assert_eq!(r.rebuffer_ratio_max, 0.1);
        assert_eq!(r.rebuffer_ratio_p50, 0.0);
        assert_eq!(r.recoveries, 2);
        assert_eq!((r.recover_p50_s, r.recover_max_s), (0.3, 0.3));
        assert_eq!(r.viewers_with_failures, 3);
        assert_eq!(r.failed_viewers, 2, "one never started, one still failing");
        assert_eq!(r.bytes_per_location["emb"], 350);
        assert_eq!(r.bytes_per_location["ix"], 100);
        assert_eq!(r.viewers_per_location["ix"], 3);
        assert_eq!(r.viewers_per_location["emb"], 2);
    }
}
