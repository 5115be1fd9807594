//! The engine: one thread per core, each with its own single-threaded tokio runtime driving its
//! share of the connections (or viewers); statistics are per task and merged at the end.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, sleep_until, timeout, Instant};

use crate::http::{parse_head, range_request};
use crate::pattern::Pattern;
use crate::player::{segment_bytes, segment_range, Abr, Playback};
use crate::stats::{
    corrected_latency_ns, histogram, service_latency_ns, ErrorKind, Report, ReportInput, Schedule,
    Stats, ViewerStats,
};
use crate::zipf::{Rng, Zipf};

/// One object the server has (and whose content the pattern defines).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Object {
    pub name: String,
    pub size: u64,
}

/// A class of range requests: which objects, how popular, how long the ranges.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RangeClass {
    pub name: String,
    /// Share of requests in this class (relative to the other classes' weights).
    pub weight: f64,
    pub objects: Vec<Object>,
    /// Zipf exponent over the objects (0: uniform).
    pub zipf_s: f64,
    pub min_len: u64,
    pub max_len: u64,
    /// Offsets (and lengths) are multiples of this.
    pub align: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlayerConfig {
    pub viewers: u64,
    pub titles: Vec<Object>,
    pub zipf_s: f64,
    pub ladder_kbps: Vec<u32>,
    pub segment_s: f64,
    /// Request the next segment while less than this is buffered.
    pub buffer_target_s: f64,
    /// Buffered seconds needed to start (and to resume after a stall).
    pub startup_s: f64,
    /// Viewers join spread over this many seconds.
    pub ramp_s: f64,
    /// Steered viewers: each asks the control service where to play from and walks the
    /// answer's locations on failures ([`crate::steered`]); `titles` are then title ids (their
    /// sizes unused) and the ladder is the answer's renditions.
    #[serde(default)]
    pub steering: Option<SteeringConfig>,
}

/// The steered player's settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SteeringConfig {
    /// The steering endpoint, `http://host:port/v1/steering`; each viewer adds `?title=T`
    /// (and `&client=IP` with [`SteeringConfig::client`]).
    pub url: String,
    /// The client address to ask for (default: the connection's, as the control service sees
    /// it).
    pub client: Option<String>,
    /// Seconds between steering reloads.
    pub reload_s: f64,
    /// Seconds before a segment request counts as failed (then the next location).
    pub segment_timeout_s: f64,
    /// Expected objects, id → (size, SHA-256 lowercase hex), from the catalog: every body is
    /// checked against them (empty: status and length framing only).
    #[serde(default)]
    pub expect: BTreeMap<String, (u64, String)>,
    /// Each viewer connects from its own loopback address (127.0.1.0 + viewer number) when
    /// the server is on loopback: a bench on one machine then looks like viewers on a network
    /// (per-client connection caps and per-prefix tokens see one client per viewer).
    #[serde(default)]
    pub loopback_sources: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Workload {
    Ranges(Vec<RangeClass>),
    Player(PlayerConfig),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Validation {
    /// Length, Content-Range and every body byte.
    Full,
    /// Length and Content-Range only.
    Length,
}

/// Where to send the load.
#[derive(Clone, Debug)]
pub struct Target {
    pub tls: bool,
    /// Host header (and default SNI).
    pub host: String,
    pub addr: SocketAddr,
    /// URL path before `/<object>`, without a trailing slash.
    pub prefix: String,
}

impl Target {
    /// Parses `http://host:port/prefix` or `https://…`.
    pub fn parse(url: &str) -> Result<Target> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else {
            bail!("URL must start with http:// or https://: {url}");
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.ends_with(']') && p.parse::<u16>().is_ok() || h.ends_with(']'))
        {
            authority.to_owned()
        } else {
            format!("{authority}:{}", if tls { 443 } else { 80 })
        };
        let addr = with_port
            .to_socket_addrs()
            .with_context(|| format!("resolve {with_port}"))?
            .next()
            .ok_or_else(|| anyhow!("{with_port} resolves to nothing"))?;
        Ok(Target {
            tls,
            host: authority.to_owned(),
            addr,
            prefix: path.trim_end_matches('/').to_owned(),
        })
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub target: Target,
    pub threads: usize,
    /// Pin thread i to cpus[i % len]; empty: no pinning.
    pub cpus: Vec<usize>,
    /// Closed/open loop: connections. Player: ignored (one connection per viewer).
    pub connections: u64,
    pub duration: Duration,
    /// Open loop at this many requests per second (all connections together); None: closed.
    pub rate: Option<f64>,
    pub request_timeout: Duration,
    pub workload: Workload,
    pub validation: Validation,
    /// PEM file with the CA (or self-signed certificate) to trust for HTTPS.
    pub ca: Option<PathBuf>,
    /// TLS server name; default: the URL's host.
    pub sni: Option<String>,
    pub seed: u64,
    /// Range workloads: stop after this many requests in total (the duration still bounds the
    /// run). For repeatable instruction counts.
    pub max_requests: Option<u64>,
}

/// Counters the caller may watch while the load runs (for a progress bar).
#[derive(Debug)]
pub struct Live {
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
    /// Requests started (for [`Config::max_requests`]).
    pub issued: AtomicU64,
    /// Latency (µs) of the requests so far: each thread adds what it recorded about once a
    /// second (for a live p99; the report's histograms are kept apart and merged at the end).
    pub latency: Mutex<hdrhistogram::Histogram<u64>>,
}

impl Default for Live {
    fn default() -> Live {
        Live {
            requests: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            issued: AtomicU64::new(0),
            latency: Mutex::new(histogram()),
        }
    }
}

/// Which share of the units (connections or viewers) a process drives: the units `u` with
/// `u % count == index`. Each unit keeps its global number, so its random stream, its place in
/// the open-loop schedule and its join time are the same whichever process drives it: `count`
/// processes together send the same requests as one process alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub index: u64,
    pub count: u64,
}

impl Part {
    /// The whole load, in one process.
    pub const WHOLE: Part = Part { index: 0, count: 1 };

    /// How many of `units` this part drives.
    pub fn units(self, units: u64) -> u64 {
        if self.index >= units {
            0
        } else {
            (units - self.index).div_ceil(self.count)
        }
    }
}

/// What a configuration asks for, checked.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Connections (range workloads) or viewers (player).
    pub units: u64,
    pub class_names: Vec<String>,
    /// "closed", "open" or "player".
    pub mode: &'static str,
}

/// Checks `cfg` and says what it will run.
pub fn plan(cfg: &Config) -> Result<Plan> {
    if cfg.threads == 0 {
        bail!("threads must be at least 1");
    }
    let (units, class_names, mode) = match &cfg.workload {
        Workload::Ranges(classes) => {
            if classes.is_empty() || classes.iter().any(|c| c.objects.is_empty()) {
                bail!("every request class needs at least one object");
            }
            let mode = if cfg.rate.is_some() { "open" } else { "closed" };
            let names: Vec<String> = classes.iter().map(|c| c.name.clone()).collect();
            (cfg.connections, names, mode)
        }
        Workload::Player(p) => {
            if p.titles.is_empty() || p.ladder_kbps.is_empty() {
                bail!("the player needs titles and a ladder");
            }
            (p.viewers, vec!["segments".to_owned()], "player")
        }
    };
    if units == 0 {
        bail!("connections (or viewers) must be at least 1");
    }
    Ok(Plan {
        units,
        class_names,
        mode,
    })
}

/// What one process counted: the merged statistics of its threads.
pub struct PartOutcome {
    pub stats: Stats,
    /// Threads that ran.
    pub threads: usize,
    /// Connections (or viewers) this part drove.
    pub units: u64,
}

/// The CPUs a generator may use: this process's allowed CPUs (its affinity mask) without
/// `server_cpus`; all allowed CPUs if that would leave none.
pub fn generator_cpus(server_cpus: &[usize]) -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes at most the size
    // we pass into it, and CPU_ISSET only reads it.
    let allowed: Vec<usize> = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    };
    let free: Vec<usize> = allowed
        .iter()
        .copied()
        .filter(|c| !server_cpus.contains(c))
        .collect();
    if free.is_empty() {
        allowed
    } else {
        free
    }
}

/// CPU time (user + system) of the calling thread, seconds.
fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the one we pass.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc == 0 {
        ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
    } else {
        0.0
    }
}

type Tls = tokio_rustls::TlsConnector;

pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

/// Everything a task needs, shared on its thread.
pub(crate) struct Ctx {
    pub(crate) cfg: Config,
    tls: Option<(Tls, rustls::pki_types::ServerName<'static>)>,
    pub(crate) start: Instant,
    pub(crate) deadline: Instant,
    pub(crate) live: Arc<Live>,
    pub(crate) classes: usize,
    /// Latencies recorded on this thread since the last flush into `live.latency`.
    recent: RefCell<hdrhistogram::Histogram<u64>>,
}

impl Ctx {
    pub(crate) fn record_live(&self, latency_us: u64) {
        self.recent
            .borrow_mut()
            .saturating_record(latency_us.max(1));
    }

    fn flush_live(&self) {
        let mut recent = self.recent.borrow_mut();
        if let Ok(mut h) = self.live.latency.lock() {
            let _ = h.add(&*recent);
        }
        recent.reset();
    }
}

fn tls_connector(cfg: &Config) -> Result<(Tls, rustls::pki_types::ServerName<'static>)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    let ca = cfg
        .ca
        .as_ref()
        .ok_or_else(|| anyhow!("HTTPS needs --ca (the server's certificate or its CA, PEM)"))?;
    for cert in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("read {}", ca.display()))?
    {
        roots.add(cert.with_context(|| format!("parse {}", ca.display()))?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = cfg.sni.clone().unwrap_or_else(|| {
        let h = &cfg.target.host;
        match h.rsplit_once(':') {
            Some((host, port)) if port.parse::<u16>().is_ok() => host.to_owned(),
            _ => h.clone(),
        }
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned()
    });
    let server_name = ServerName::try_from(name.clone())
        .map_err(|_| anyhow!("invalid TLS server name {name:?}"))?;
    Ok((Tls::from(Arc::new(config)), server_name))
}

/// Runs the load and returns the report. `live` is updated as responses arrive.
pub fn run(cfg: &Config, live: Arc<Live>) -> Result<Report> {
    let plan = plan(cfg)?;
    // Threads start their runtimes first; the load starts for all at the same instant.
    let start = std::time::Instant::now() + Duration::from_millis(100);
    let out = run_part(cfg, Part::WHOLE, start, live)?;
    let elapsed = start.elapsed().as_secs_f64();
    Ok(report(cfg, &plan, out.threads, elapsed, &out.stats))
}

/// The report for `stats` counted under `cfg` (by one process or several).
pub fn report(cfg: &Config, plan: &Plan, threads: usize, duration_s: f64, stats: &Stats) -> Report {
    let url = format!(
        "{}://{}{}",
        if cfg.target.tls { "https" } else { "http" },
        cfg.target.host,
        cfg.target.prefix
    );
    Report::build(
        &ReportInput {
            target: &url,
            mode: plan.mode,
            threads,
            connections: plan.units,
            target_rate_per_s: cfg.rate,
            duration_s,
            class_names: &plan.class_names,
            player: plan.mode == "player",
            validation: match cfg.validation {
                Validation::Full => "full: status, Content-Length, Content-Range, every body byte",
                Validation::Length => "length: status, Content-Length, Content-Range",
            },
        },
        stats,
    )
}

/// Runs `part` of the load, starting at `start`, on up to `cfg.threads` threads (thread `i`
/// pinned to `cfg.cpus[i % len]`), each its own single-threaded runtime with its own
/// connections and statistics; the threads' statistics are merged (histograms added).
pub fn run_part(
    cfg: &Config,
    part: Part,
    start: std::time::Instant,
    live: Arc<Live>,
) -> Result<PartOutcome> {
    let plan = plan(cfg)?;
    if part.count == 0 || part.index >= part.count {
        bail!("part {} of {} does not exist", part.index, part.count);
    }
    let tls = if cfg.target.tls {
        Some(tls_connector(cfg)?)
    } else {
        None
    };
    let units = plan.units;
    let mine = part.units(units);
    let classes = plan.class_names.len();
    if mine == 0 {
        return Ok(PartOutcome {
            stats: Stats::new(classes),
            threads: 0,
            units: 0,
        });
    }
    let threads = cfg.threads.min(mine as usize);
    let mut handles = Vec::new();
    for t in 0..threads {
        let cfg = cfg.clone();
        let tls = tls.clone();
        let live = Arc::clone(&live);
        let cpu = (!cfg.cpus.is_empty()).then(|| cfg.cpus[t % cfg.cpus.len()]);
        handles.push(
            std::thread::Builder::new()
                .name(format!("load-{t}"))
                .spawn(move || -> Result<Stats> {
                    if let Some(cpu) = cpu {
                        pin_to(cpu)?;
                    }
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    let local = tokio::task::LocalSet::new();
                    let mut stats = local.block_on(&rt, async move {
                        let start = Instant::from_std(start);
                        let ctx = Rc::new(Ctx {
                            deadline: start + cfg.duration,
                            cfg,
                            tls,
                            start,
                            live,
                            classes,
                            recent: RefCell::new(histogram()),
                        });
                        let ticker = {
                            let ctx = Rc::clone(&ctx);
                            tokio::task::spawn_local(async move {
                                loop {
                                    sleep(Duration::from_secs(1)).await;
                                    ctx.flush_live();
                                }
                            })
                        };
                        let mut tasks = Vec::new();
                        // This thread's units: the part's j-th units with j = t mod threads.
                        let mut j = t as u64;
                        while j < mine {
                            let unit = part.index + part.count * j;
                            let ctx = Rc::clone(&ctx);
                            tasks.push(tokio::task::spawn_local(async move {
                                match &ctx.cfg.workload {
                                    Workload::Ranges(classes) => {
                                        range_task(&ctx, classes, unit, units).await
                                    }
                                    Workload::Player(p) => match &p.steering {
                                        Some(s) => {
                                            crate::steered::viewer_task(&ctx, p, s, unit).await
                                        }
                                        None => viewer_task(&ctx, p, unit).await,
                                    },
                                }
                            }));
                            j += threads as u64;
                        }
                        let mut total = Stats::new(ctx.classes);
                        for task in tasks {
                            total.merge(task.await.expect("load task panicked"));
                        }
                        ticker.abort();
                        ctx.flush_live();
                        total
                    });
                    stats.cpu_s = thread_cpu_s();
                    Ok(stats)
                })?,
        );
    }
    let mut total = Stats::new(classes);
    for h in handles {
        total.merge(h.join().map_err(|_| anyhow!("a load thread panicked"))??);
    }
    Ok(PartOutcome {
        stats: total,
        threads,
        units: mine,
    })
}

fn pin_to(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only read
    // and write the set we pass, of the size we pass.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("pin to CPU {cpu}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

async fn connect(ctx: &Ctx) -> Result<Box<dyn Io>, ErrorKind> {
    let tcp = timeout(
        ctx.cfg.request_timeout,
        TcpStream::connect(ctx.cfg.target.addr),
    )
    .await
    .map_err(|_| ErrorKind::Connect)?
    .map_err(|_| ErrorKind::Connect)?;
    let _ = tcp.set_nodelay(true);
    match &ctx.tls {
        None => Ok(Box::new(tcp)),
        Some((connector, name)) => {
            let tls = timeout(
                ctx.cfg.request_timeout,
                connector.connect(name.clone(), tcp),
            )
            .await
            .map_err(|_| ErrorKind::Tls)?
            .map_err(|_| ErrorKind::Tls)?;
            Ok(Box::new(tls))
        }
    }
}

/// One request on `io`: writes it, reads and checks the response. Ok(keep the connection).
async fn exchange(
    ctx: &Ctx,
    io: &mut Box<dyn Io>,
    buf: &mut [u8],
    stats: &mut Stats,
    object: &Object,
    first: u64,
    len: u64,
) -> Result<bool, ErrorKind> {
    let last = first + len - 1;
    let req = range_request(
        &ctx.cfg.target.host,
        &ctx.cfg.target.prefix,
        &object.name,
        first,
        last,
    );
    io.write_all(&req).await.map_err(|_| ErrorKind::Io)?;
    let (head, filled) = read_head(ctx, stats, io, buf, |b| parse_head(b, first, last)).await?;
    let pattern = Pattern::for_name(&object.name);
    let check = ctx.cfg.validation == Validation::Full;
    let mut got = (filled - head.len) as u64;
    if got > head.content_length {
        return Err(ErrorKind::Protocol);
    }
    if check && pattern.check(first, &buf[head.len..filled]).is_err() {
        return Err(ErrorKind::Content);
    }
    while got < head.content_length {
        let want = (head.content_length - got).min(buf.len() as u64) as usize;
        let n = io.read(&mut buf[..want]).await.map_err(|_| ErrorKind::Io)?;
        if n == 0 {
            return Err(ErrorKind::Io);
        }
        record_bytes(ctx, stats, n);
        if check && pattern.check(first + got, &buf[..n]).is_err() {
            return Err(ErrorKind::Content);
        }
        got += n as u64;
    }
    Ok(!head.close)
}

/// Reads from `io` into `buf` until `parse` finds a whole response head; returns it and how many
/// bytes of `buf` were read (the head and the first body bytes). A head that does not fit in
/// `buf` is a protocol error.
pub(crate) async fn read_head<H>(
    ctx: &Ctx,
    stats: &mut Stats,
    io: &mut Box<dyn Io>,
    buf: &mut [u8],
    parse: impl Fn(&[u8]) -> Result<Option<H>, ErrorKind>,
) -> Result<(H, usize), ErrorKind> {
    let mut filled = 0;
    loop {
        let n = io
            .read(&mut buf[filled..])
            .await
            .map_err(|_| ErrorKind::Io)?;
        if n == 0 {
            return Err(ErrorKind::Io);
        }
        record_bytes(ctx, stats, n);
        filled += n;
        if let Some(head) = parse(&buf[..filled])? {
            return Ok((head, filled));
        }
        if filled == buf.len() {
            return Err(ErrorKind::Protocol);
        }
    }
}

pub(crate) fn record_bytes(ctx: &Ctx, stats: &mut Stats, n: usize) {
    stats.add_bytes(ctx.start.elapsed().as_secs_f64(), n as u64);
    ctx.live.bytes.fetch_add(n as u64, Ordering::Relaxed);
}

pub(crate) fn fail(ctx: &Ctx, stats: &mut Stats, kind: ErrorKind) {
    stats.error(kind);
    ctx.live.errors.fetch_add(1, Ordering::Relaxed);
}

/// Connection (opened on demand), buffer and counters of one task.
struct Client {
    io: Option<Box<dyn Io>>,
    buf: Vec<u8>,
    stats: Stats,
}

impl Client {
    fn new(ctx: &Ctx) -> Client {
        Client {
            io: None,
            buf: vec![0; 256 << 10],
            stats: Stats::new(ctx.classes),
        }
    }

    /// Fetches `len` bytes at `first` of `object`; on success returns when it completed.
    /// Failures are counted (except a timeout after the run's end) and drop the connection.
    async fn fetch(&mut self, ctx: &Ctx, object: &Object, first: u64, len: u64) -> Option<Instant> {
        if self.io.is_none() {
            match connect(ctx).await {
                Ok(io) => self.io = Some(io),
                Err(kind) => {
                    fail(ctx, &mut self.stats, kind);
                    // Do not spin on a refusing server.
                    sleep(Duration::from_millis(20)).await;
                    return None;
                }
            }
        }
        let io = self.io.as_mut().expect("connected");
        let result = timeout(
            ctx.cfg.request_timeout,
            exchange(ctx, io, &mut self.buf, &mut self.stats, object, first, len),
        )
        .await;
        match result {
            Ok(Ok(keep)) => {
                if !keep {
                    self.io = None;
                }
                ctx.live.requests.fetch_add(1, Ordering::Relaxed);
                Some(Instant::now())
            }
            Ok(Err(kind)) => {
                self.io = None;
                fail(ctx, &mut self.stats, kind);
                None
            }
            Err(_) => {
                self.io = None;
                if Instant::now() < ctx.deadline {
                    fail(ctx, &mut self.stats, ErrorKind::Timeout);
                }
                None
            }
        }
    }
}

/// Picks a request from the classes: (class, object, first byte, length).
fn pick<'a>(
    rng: &mut Rng,
    classes: &'a [RangeClass],
    zipfs: &[Zipf],
    weights: f64,
) -> (usize, &'a Object, u64, u64) {
    let mut u = rng.next_f64() * weights;
    let mut ci = classes.len() - 1;
    for (i, c) in classes.iter().enumerate() {
        if u < c.weight {
            ci = i;
            break;
        }
        u -= c.weight;
    }
    let class = &classes[ci];
    let object = &class.objects[zipfs[ci].sample(rng)];
    let align = class.align.max(1);
    let span = class.max_len.saturating_sub(class.min_len) / align;
    let len = (class.min_len + rng.below(span + 1) * align)
        .min(object.size)
        .max(1);
    let slots = (object.size - len) / align + 1;
    let first = rng.below(slots) * align;
    (ci, object, first, len)
}

async fn range_task(ctx: &Ctx, classes: &[RangeClass], conn: u64, conns: u64) -> Stats {
    let zipfs: Vec<Zipf> = classes
        .iter()
        .map(|c| Zipf::new(c.objects.len(), c.zipf_s))
        .collect();
    let weights: f64 = classes.iter().map(|c| c.weight).sum();
    let mut rng = Rng::new(ctx.cfg.seed ^ conn.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let schedule = ctx.cfg.rate.map(|rate| Schedule {
        rate_per_s: rate,
        connections: conns,
    });
    let mut client = Client::new(ctx);
    sleep_until(ctx.start).await;
    for k in 0.. {
        let intended = match schedule {
            Some(s) => ctx.start + Duration::from_nanos(s.intended_ns(conn, k)),
            None => Instant::now(),
        };
        if intended >= ctx.deadline {
            break;
        }
        sleep_until(intended).await;
        if ctx
            .cfg
            .max_requests
            .is_some_and(|max| ctx.live.issued.fetch_add(1, Ordering::Relaxed) >= max)
        {
            break;
        }
        let (class, object, first, len) = pick(&mut rng, classes, &zipfs, weights);
        let sent = Instant::now();
        if let Some(done) = client.fetch(ctx, object, first, len).await {
            let ns = |t: Instant| t.duration_since(ctx.start).as_nanos() as u64;
            let (i, s, d) = (ns(intended), ns(sent), ns(done));
            let latency = if schedule.is_some() {
                client
                    .stats
                    .service
                    .saturating_record((service_latency_ns(i, s, d) / 1000).max(1));
                corrected_latency_ns(i, s, d)
            } else {
                service_latency_ns(i, s, d)
            };
            ctx.record_live(latency / 1000);
            client
                .stats
                .success(d as f64 / 1e9, class, latency / 1000, len);
        }
    }
    client.stats
}

async fn viewer_task(ctx: &Ctx, p: &PlayerConfig, viewer: u64) -> Stats {
    let mut rng = Rng::new(ctx.cfg.seed ^ viewer.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let title = &p.titles[Zipf::new(p.titles.len(), p.zipf_s).sample(&mut rng)];
    let mut abr = Abr::new(p.ladder_kbps.clone(), p.segment_s);
    let mut playback = Playback::new(p.startup_s);
    let mut client = Client::new(ctx);
    let join = ctx.start + Duration::from_secs_f64(p.ramp_s * viewer as f64 / p.viewers as f64);
    sleep_until(join).await;
    let (mut last, mut rung, mut index, mut segments) = (Instant::now(), 0usize, 0u64, 0u64);
    loop {
        let now = Instant::now().min(ctx.deadline);
        playback.advance(now.duration_since(last).as_secs_f64());
        last = now;
        if now >= ctx.deadline {
            break;
        }
        if playback.buffer_s >= p.buffer_target_s {
            let wait = Duration::from_secs_f64(playback.buffer_s - p.buffer_target_s + 1e-3);
            sleep_until((now + wait).min(ctx.deadline)).await;
            continue;
        }
        rung = abr.choose(playback.buffer_s, rung);
        let kbps = p.ladder_kbps[rung];
        let (first, len) = segment_range(title.size, index, segment_bytes(kbps, p.segment_s));
        let sent = Instant::now();
        match client.fetch(ctx, title, first, len).await {
            Some(done) => {
                let secs = done.duration_since(sent).as_secs_f64();
                abr.observe(len, secs);
                let at = done.min(ctx.deadline);
                playback.advance(at.duration_since(last).as_secs_f64());
                last = at;
                if done <= ctx.deadline {
                    playback.push_segment(p.segment_s, kbps, rung);
                    segments += 1;
                }
                index += 1;
                ctx.record_live((secs * 1e6) as u64);
                client.stats.success(
                    done.duration_since(ctx.start).as_secs_f64(),
                    0,
                    (secs * 1e6) as u64,
                    len,
                );
            }
            None => sleep(Duration::from_millis(100)).await,
        }
    }
    client.stats.viewers.push(ViewerStats {
        startup_s: playback.startup_s,
        stall_s: playback.stall_s,
        stalls: playback.stalls,
        played_s: playback.played_s,
        delivered_kbps: playback.delivered_kbps(),
        switches: playback.switches,
        segments,
        steered: None,
    });
    client.stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("http://127.0.0.1:8080").unwrap();
        assert!(!t.tls);
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.prefix, "");
        let t = Target::parse("https://127.0.0.1/vod/").unwrap();
        assert!(t.tls);
        assert_eq!(t.addr.port(), 443);
        assert_eq!(t.prefix, "/vod");
        assert_eq!(t.host, "127.0.0.1");
        let t = Target::parse("http://[::1]:81/").unwrap();
        assert_eq!(t.addr, "[::1]:81".parse().unwrap());
        assert!(Target::parse("ftp://x").is_err());
    }

    #[test]
    fn parts_cover_every_unit_once() {
        for units in [1u64, 2, 7, 64] {
            for count in 1..=5u64 {
                let mut seen = vec![0u32; units as usize];
                let mut total = 0;
                for index in 0..count {
                    let part = Part { index, count };
                    total += part.units(units);
                    for j in 0..part.units(units) {
                        seen[(index + count * j) as usize] += 1;
                    }
                }
                assert_eq!(total, units);
                assert!(seen.iter().all(|&n| n == 1), "{units} {count} {seen:?}");
            }
        }
    }

    #[test]
    fn generator_cpus_leave_the_server_its_cpus() {
        let all = generator_cpus(&[]);
        assert!(!all.is_empty());
        let without = generator_cpus(&all[..1]);
        if all.len() > 1 {
            assert_eq!(without, all[1..]);
        } else {
            assert_eq!(without, all, "never none");
        }
    }

    #[test]
    fn picks_stay_inside_objects_and_aligned() {
        let obj = |n: &str, size| Object {
            name: n.into(),
            size,
        };
        let classes = [
            RangeClass {
                name: "hot".into(),
                weight: 3.0,
                objects: vec![obj("a", 1 << 20), obj("b", 100_000)],
                zipf_s: 1.0,
                min_len: 65_536,
                max_len: 65_536,
                align: 65_536,
            },
            RangeClass {
                name: "cold".into(),
                weight: 1.0,
                objects: vec![obj("c", 10 << 20)],
                zipf_s: 0.0,
                min_len: 1 << 20,
                max_len: 4 << 20,
                align: 4096,
            },
        ];
        let zipfs: Vec<Zipf> = classes
            .iter()
            .map(|c| Zipf::new(c.objects.len(), c.zipf_s))
            .collect();
        let mut rng = Rng::new(1);
        let mut per_class = [0u32; 2];
        for _ in 0..10_000 {
            let (c, o, first, len) = pick(&mut rng, &classes, &zipfs, 4.0);
            per_class[c] += 1;
            assert!(first + len <= o.size, "{} {first} {len}", o.name);
            assert_eq!(first % classes[c].align, 0);
            if c == 1 {
                assert!((1 << 20..=4 << 20).contains(&len));
            }
        }
        // 3:1 weights.
        assert!((7000..8000).contains(&per_class[0]), "{per_class:?}");
    }
}
