//! Many generator machines as one: `edgeplane-load worker --listen ADDR` on each generator host,
//! `edgeplane-load run --workers HOST:PORT,... <scenario>` as the coordinator.
//!
//! The control protocol is JSON lines over TCP ([`Msg`], one object per line), versioned by
//! [`PROTOCOL_VERSION`]:
//!
//! 1. coordinator → worker `{"hello":{"protocol":1,"software":"0.1.0"}}`; the worker answers
//!    with its own `hello`, or with one `{"refused":{"reason":"…"}}` line and closes (another
//!    protocol version, or not a hello at all);
//! 2. coordinator → worker `{"job":{…}}`: the scenario, which part of the connections (or
//!    viewers) this worker drives ([`Part`]: units `u` with `u % count == index`, so every
//!    connection keeps its global number, random stream and open-loop schedule slot), and the
//!    start instant as Unix time (the same for all workers: their clocks must agree, e.g. NTP);
//! 3. worker → coordinator `{"started":{…}}`, then once a second `{"progress":{…}}` (its
//!    counters so far and its latency histogram so far), and finally `{"done":{…}}` with its
//!    merged statistics (histograms as their non-empty buckets: exact) or `{"failed":{…}}`.
//!
//! The coordinator prints one progress line a second for all workers together and merges the
//! final statistics into one [`Report`], as if one generator had run. A worker that goes silent
//! or closes its connection before `done` is lost: the report says so and is marked invalid.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::run::{generator_cpus, plan, report, run_part, Config, Live, Part, Target, Validation};
use crate::stats::{histogram_from_wire, histogram_to_wire, HistogramWire, Report, Stats};
use crate::stats::{StatsWire, WorkerReport};
use crate::Workload;

/// Version of the control protocol; a worker and a coordinator of different versions refuse
/// each other.
pub const PROTOCOL_VERSION: u32 = 1;

/// One line of the control protocol.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Msg {
    Hello {
        protocol: u32,
        software: String,
    },
    Refused {
        reason: String,
    },
    Job(Box<Job>),
    Started {
        threads: usize,
        connections: u64,
    },
    Progress {
        requests: u64,
        bytes: u64,
        errors: u64,
        latency: HistogramWire,
    },
    Done {
        stats: StatsWire,
        elapsed_s: f64,
    },
    Failed {
        reason: String,
    },
}

/// A worker's share of the scenario.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    pub url: String,
    /// None: the worker's default (its CPUs not given to a server).
    pub threads: Option<usize>,
    pub connections: u64,
    pub duration_s: f64,
    pub rate: Option<f64>,
    pub timeout_s: f64,
    pub workload: Workload,
    pub validation: Validation,
    /// The CA certificate(s) to trust for HTTPS, PEM text.
    pub ca_pem: Option<String>,
    pub sni: Option<String>,
    pub seed: u64,
    /// This worker's share of the request limit.
    pub max_requests: Option<u64>,
    pub part: Part,
    /// When the load starts, ns since the Unix epoch.
    pub start_unix_ns: u64,
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn send(w: &mut impl Write, msg: &Msg) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)?;
    w.flush()
}

/// Reads one message; `Ok(None)` at end of stream.
fn recv(r: &mut impl BufRead) -> Result<Option<Msg>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let msg = serde_json::from_str(line.trim_end())
        .with_context(|| format!("not a control message: {:?}", truncate(&line, 120)))?;
    Ok(Some(msg))
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// How a worker runs the jobs it is sent.
#[derive(Clone, Debug, Default)]
pub struct WorkerOptions {
    /// Threads when the job does not say; None: one per CPU in `cpus`.
    pub threads: Option<usize>,
    /// CPUs to pin to; empty: [`generator_cpus`] with no server CPUs.
    pub cpus: Vec<usize>,
}

/// Serves coordinators one after another (each gets one job). With `once`, returns after the
/// first one.
pub fn serve(listener: TcpListener, opts: &WorkerOptions, once: bool) -> Result<()> {
    for stream in listener.incoming() {
        let stream = stream?;
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "?".to_owned(), |a| a.to_string());
        match serve_one(stream, opts) {
            Ok(summary) => eprintln!("edgeplane-load worker: job from {peer}: {summary}"),
            Err(err) => eprintln!("edgeplane-load worker: coordinator {peer}: {err:#}"),
        }
        if once {
            break;
        }
    }
    Ok(())
}

/// One coordinator: handshake, job, progress, result.
fn serve_one(stream: TcpStream, opts: &WorkerOptions) -> Result<String> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    match recv(&mut reader) {
        Ok(Some(Msg::Hello { protocol, .. })) if protocol == PROTOCOL_VERSION => {}
        Ok(Some(Msg::Hello { protocol, software })) => {
            let reason = format!(
                "version mismatch: this worker (edgeplane-load {}) speaks control protocol \
                 {PROTOCOL_VERSION}, the coordinator (edgeplane-load {software}) {protocol}; run \
                 the same edgeplane-load everywhere",
                env!("CARGO_PKG_VERSION")
            );
            let _ = send(
                &mut out,
                &Msg::Refused {
                    reason: reason.clone(),
                },
            );
            bail!("{reason}");
        }
        other => {
            let reason = "expected a hello from an edgeplane-load coordinator".to_owned();
            let _ = send(
                &mut out,
                &Msg::Refused {
                    reason: reason.clone(),
                },
            );
            bail!("{reason}, got {other:?}");
        }
    }
    send(
        &mut out,
        &Msg::Hello {
            protocol: PROTOCOL_VERSION,
            software: env!("CARGO_PKG_VERSION").to_owned(),
        },
    )?;
    let job = match recv(&mut reader)? {
        Some(Msg::Job(job)) => job,
        other => bail!("expected a job, got {other:?}"),
    };
    let result = run_job(&job, opts, &mut out);
    match result {
        Ok(summary) => Ok(summary),
        Err(err) => {
            let _ = send(
                &mut out,
                &Msg::Failed {
                    reason: format!("{err:#}"),
                },
            );
            Err(err)
        }
    }
}

fn run_job(job: &Job, opts: &WorkerOptions, out: &mut TcpStream) -> Result<String> {
    let cpus = if opts.cpus.is_empty() {
        generator_cpus(&[])
    } else {
        opts.cpus.clone()
    };
    let threads = job.threads.or(opts.threads).unwrap_or(cpus.len()).max(1);
    let ca = match &job.ca_pem {
        Some(pem) => {
            let path = std::env::temp_dir().join(format!(
                "edgeplane-load-ca-{}-{}.pem",
                std::process::id(),
                job.part.index
            ));
            std::fs::write(&path, pem).with_context(|| format!("write {}", path.display()))?;
            Some(path)
        }
        None => None,
    };
    let cfg = Config {
        target: Target::parse(&job.url)?,
        threads,
        cpus,
        connections: job.connections,
        duration: Duration::from_secs_f64(job.duration_s),
        rate: job.rate,
        request_timeout: Duration::from_secs_f64(job.timeout_s),
        workload: job.workload.clone(),
        validation: job.validation,
        ca: ca.clone(),
        sni: job.sni.clone(),
        seed: job.seed,
        max_requests: job.max_requests,
    };
    let units = plan(&cfg)?.units;
    let now = unix_ns();
    let start = Instant::now() + Duration::from_nanos(job.start_unix_ns.saturating_sub(now));
    send(
        out,
        &Msg::Started {
            threads: threads.min(job.part.units(units) as usize),
            connections: job.part.units(units),
        },
    )?;
    let live = Arc::new(Live::default());
    let outcome = std::thread::scope(|scope| {
        let handle = scope.spawn(|| run_part(&cfg, job.part, start, Arc::clone(&live)));
        // Progress a second after the start and every second after that, so the coordinator's
        // per-second line sees whole seconds of every worker.
        let mut next = start.max(Instant::now()) + Duration::from_secs(1);
        while !handle.is_finished() {
            std::thread::sleep(Duration::from_millis(50));
            if Instant::now() >= next {
                next += Duration::from_secs(1);
                let latency = live
                    .latency
                    .lock()
                    .map(|h| histogram_to_wire(&h))
                    .unwrap_or_default();
                // A coordinator that went away does not stop the run (it is bounded anyway).
                let _ = send(
                    out,
                    &Msg::Progress {
                        requests: live.requests.load(Ordering::Relaxed),
                        bytes: live.bytes.load(Ordering::Relaxed),
                        errors: live.errors.load(Ordering::Relaxed),
                        latency,
                    },
                );
            }
        }
        handle
            .join()
            .map_err(|_| anyhow!("the load generator panicked"))?
    });
    if let Some(path) = ca {
        let _ = std::fs::remove_file(path);
    }
    let outcome = outcome?;
    let elapsed_s = Instant::now()
        .saturating_duration_since(start)
        .as_secs_f64();
    send(
        out,
        &Msg::Done {
            stats: outcome.stats.to_wire(),
            elapsed_s,
        },
    )?;
    Ok(format!(
        "part {} of {}: {} requests, {} errors, {} threads",
        job.part.index + 1,
        job.part.count,
        outcome.stats.ok,
        outcome.stats.errors_total(),
        outcome.threads
    ))
}

/// How the coordinator runs.
#[derive(Clone, Debug, Default)]
pub struct Distributed {
    /// HOST:PORT of each worker.
    pub workers: Vec<String>,
    /// Threads per worker; None: each worker's default.
    pub threads_per_worker: Option<usize>,
    /// Seconds between sending the jobs and the common start.
    pub start_delay: Option<Duration>,
}

enum Event {
    Msg(Msg),
    Lost(String),
}

struct WorkerState {
    report: WorkerReport,
    latency: hdrhistogram::Histogram<u64>,
    stats: Option<Stats>,
    elapsed_s: f64,
    over: bool,
}

/// Connects and shakes hands; errors name the worker.
fn handshake(addr: &str, timeout: Duration) -> Result<(TcpStream, BufReader<TcpStream>)> {
    let sock = addr
        .to_socket_addrs()
        .with_context(|| format!("worker {addr}: resolve"))?
        .next()
        .ok_or_else(|| anyhow!("worker {addr}: resolves to nothing"))?;
    let stream = TcpStream::connect_timeout(&sock, timeout)
        .with_context(|| format!("worker {addr}: connect"))?;
    stream.set_read_timeout(Some(timeout))?;
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    send(
        &mut out,
        &Msg::Hello {
            protocol: PROTOCOL_VERSION,
            software: env!("CARGO_PKG_VERSION").to_owned(),
        },
    )
    .with_context(|| format!("worker {addr}: send hello"))?;
    match recv(&mut reader).with_context(|| format!("worker {addr}: hello"))? {
        Some(Msg::Hello { protocol, .. }) if protocol == PROTOCOL_VERSION => Ok((out, reader)),
        Some(Msg::Hello { protocol, software }) => bail!(
            "worker {addr} refused: version mismatch: it (edgeplane-load {software}) speaks \
             control protocol {protocol}, this coordinator {PROTOCOL_VERSION}"
        ),
        Some(Msg::Refused { reason }) => bail!("worker {addr} refused: {reason}"),
        Some(other) => bail!("worker {addr}: expected hello, got {other:?}"),
        None => bail!("worker {addr}: closed the connection during the hello"),
    }
}

/// Runs `cfg` on the workers (the coordinator sends no load itself) and merges their results.
/// `on_progress` gets one line a second; `live` holds the totals so far.
pub fn run_distributed(
    cfg: &Config,
    dist: &Distributed,
    live: Arc<Live>,
    mut on_progress: impl FnMut(&str),
) -> Result<Report> {
    let plan = plan(cfg)?;
    let n = dist.workers.len() as u64;
    if n == 0 {
        bail!("no workers");
    }
    let timeout = Duration::from_secs(10);
    let mut conns = Vec::new();
    for addr in &dist.workers {
        conns.push(handshake(addr, timeout)?);
    }
    let ca_pem = match &cfg.ca {
        Some(path) => Some(
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?,
        ),
        None => None,
    };
    let delay = dist
        .start_delay
        .unwrap_or(Duration::from_millis(500 + 100 * n));
    let start = Instant::now() + delay;
    let start_unix_ns = unix_ns() + delay.as_nanos() as u64;
    // A worker silent for this long is lost: it sends progress every second while it runs,
    // and the run ends at most one request timeout after the duration.
    let silence = cfg.request_timeout + Duration::from_secs(10);
    let (tx, rx) = mpsc::channel::<(usize, Event)>();
    let mut states = Vec::new();
    for (i, (mut out, mut reader)) in conns.into_iter().enumerate() {
        let part = Part {
            index: i as u64,
            count: n,
        };
        let job = Job {
            url: format!(
                "{}://{}{}",
                if cfg.target.tls { "https" } else { "http" },
                cfg.target.host,
                cfg.target.prefix
            ),
            threads: dist.threads_per_worker,
            connections: cfg.connections,
            duration_s: cfg.duration.as_secs_f64(),
            rate: cfg.rate,
            timeout_s: cfg.request_timeout.as_secs_f64(),
            workload: cfg.workload.clone(),
            validation: cfg.validation,
            ca_pem: ca_pem.clone(),
            sni: cfg.sni.clone(),
            seed: cfg.seed,
            max_requests: cfg
                .max_requests
                .map(|m| m / n + u64::from((i as u64) < m % n)),
            part,
            start_unix_ns,
        };
        let addr = dist.workers[i].clone();
        send(&mut out, &Msg::Job(Box::new(job)))
            .with_context(|| format!("worker {addr}: send the job"))?;
        reader.get_ref().set_read_timeout(Some(silence))?;
        states.push(WorkerState {
            report: WorkerReport {
                addr: addr.clone(),
                ..WorkerReport::default()
            },
            latency: crate::stats::histogram(),
            stats: None,
            elapsed_s: 0.0,
            over: false,
        });
        let tx = tx.clone();
        std::thread::Builder::new()
            .name(format!("worker-{i}"))
            .spawn(move || {
                // Keep the write half open until the worker is done.
                let _out = out;
                loop {
                    let event = match recv(&mut reader) {
                        Ok(Some(msg)) => Event::Msg(msg),
                        Ok(None) => Event::Lost("closed the connection before its result".into()),
                        Err(err) => Event::Lost(format!("{err:#}")),
                    };
                    let last = !matches!(
                        event,
                        Event::Msg(Msg::Progress { .. } | Msg::Started { .. })
                    );
                    if tx.send((i, event)).is_err() || last {
                        break;
                    }
                }
            })?;
    }
    drop(tx);
    let mut invalid = Vec::new();
    // One line a second, a little after the workers' progress for that second arrives.
    let mut last_line = (start, 0u64, 0u64);
    let mut next_line = start + Duration::from_millis(1100);
    while states.iter().any(|s| !s.over) {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok((i, event)) => {
                let s = &mut states[i];
                match event {
                    Event::Msg(Msg::Started {
                        threads,
                        connections,
                    }) => {
                        s.report.threads = threads;
                        s.report.connections = connections;
                    }
                    Event::Msg(Msg::Progress {
                        requests,
                        bytes,
                        errors,
                        latency,
                    }) => {
                        s.report.requests = requests;
                        s.report.bytes = bytes;
                        s.report.errors = errors;
                        s.latency = histogram_from_wire(&latency);
                    }
                    Event::Msg(Msg::Done { stats, elapsed_s }) => {
                        match Stats::from_wire(&stats) {
                            Some(stats) => {
                                s.report.requests = stats.ok;
                                s.report.bytes = stats.bytes;
                                s.report.errors = stats.errors_total();
                                s.report.cpu_s = stats.cpu_s;
                                s.report.finished = true;
                                s.latency = stats.latency.clone();
                                s.stats = Some(stats);
                                s.elapsed_s = elapsed_s;
                            }
                            None => {
                                s.report.note = "sent statistics of another layout".into();
                                invalid
                                    .push(format!("worker {}: {}", s.report.addr, s.report.note));
                            }
                        }
                        s.over = true;
                    }
                    Event::Msg(Msg::Failed { reason }) => {
                        s.report.note = format!("failed: {reason}");
                        invalid.push(format!("worker {} failed: {reason}", s.report.addr));
                        s.over = true;
                    }
                    Event::Msg(other) => {
                        s.report.note = format!("unexpected message {other:?}");
                        invalid.push(format!("worker {}: {}", s.report.addr, s.report.note));
                        s.over = true;
                    }
                    Event::Lost(why) => {
                        let at = Instant::now()
                            .saturating_duration_since(start)
                            .as_secs_f64();
                        s.report.note = format!("lost {at:.1} s into the run: {why}");
                        invalid.push(format!(
                            "worker {} lost {at:.1} s into the run ({why}); its counts are \
                             missing from the totals",
                            s.report.addr
                        ));
                        s.over = true;
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                for s in states.iter_mut().filter(|s| !s.over) {
                    s.report.note = "reader stopped".into();
                    invalid.push(format!("worker {}: reader stopped", s.report.addr));
                    s.over = true;
                }
            }
        }
        let requests: u64 = states.iter().map(|s| s.report.requests).sum();
        let bytes: u64 = states.iter().map(|s| s.report.bytes).sum();
        let errors: u64 = states.iter().map(|s| s.report.errors).sum();
        live.requests.store(requests, Ordering::Relaxed);
        live.bytes.store(bytes, Ordering::Relaxed);
        live.errors.store(errors, Ordering::Relaxed);
        if Instant::now() >= next_line {
            next_line += Duration::from_secs(1);
            let mut h = crate::stats::histogram();
            for s in &states {
                let _ = h.add(&s.latency);
            }
            if let Ok(mut l) = live.latency.lock() {
                *l = h.clone();
            }
            let dt = last_line.0.elapsed().as_secs_f64().max(1e-3);
            let alive = states
                .iter()
                .filter(|s| !s.over || s.report.finished)
                .count();
            on_progress(&format!(
                "{:>4.0} s: {:.2} Gbps, {:.0} req/s, {errors} errors, p99 so far {:.2} ms \
                 ({alive}/{n} workers)",
                Instant::now()
                    .saturating_duration_since(start)
                    .as_secs_f64(),
                (bytes - last_line.2.min(bytes)) as f64 * 8.0 / dt / 1e9,
                (requests - last_line.1.min(requests)) as f64 / dt,
                if h.is_empty() {
                    0.0
                } else {
                    h.value_at_quantile(0.99) as f64 / 1000.0
                },
            ));
            last_line = (Instant::now(), requests, bytes);
        }
    }
    let mut total = Stats::new(plan.class_names.len());
    let mut elapsed = 0f64;
    let mut threads = 0;
    for s in &mut states {
        threads += s.report.threads;
        if let Some(stats) = s.stats.take() {
            elapsed = elapsed.max(s.elapsed_s);
            total.merge(stats);
        }
    }
    if elapsed == 0.0 {
        elapsed = start.elapsed().as_secs_f64();
    }
    let mut report = report(cfg, &plan, threads, elapsed, &total);
    report.valid = invalid.is_empty();
    report.invalid_reasons = invalid;
    report.workers = states.into_iter().map(|s| s.report).collect();
    Ok(report)
}
