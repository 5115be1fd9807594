//! Counters and latency histograms, kept per core and summed only when scraped.
//!
//! Each executor writes only its own [`CoreMetrics`] (relaxed atomics on a cache line no other
//! core writes), and records latencies into a thread-local histogram that a once-a-second task
//! folds into the published copy ([`LocalLatency::flush`]); the request path never takes a lock.
//! [`render`] turns everything into Prometheus text; the names are a documented contract
//! (`docs/metrics.md`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

use edgeplane_signing::Reject;

use crate::catalog::Catalog;
use crate::http::Status;

/// Why a connection was refused with 503.
#[derive(Debug, Clone, Copy)]
pub enum Rejection {
    /// `limits.max_connections`
    MaxConnections,
    /// `limits.max_connections_per_client`
    PerClient,
    /// From outside every prefix in `access.prefixes_file` (closed without a response).
    Prefix,
}

impl Rejection {
    const ALL: [Rejection; 3] = [
        Rejection::MaxConnections,
        Rejection::PerClient,
        Rejection::Prefix,
    ];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::MaxConnections => "max_connections",
            Rejection::PerClient => "max_connections_per_client",
            Rejection::Prefix => "prefix",
        }
    }
}

/// What kind of I/O error a tier gave while serving (`edgeplane_tier_io_errors_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierIoError {
    /// `EIO`: the device failed.
    Eio,
    /// `ENXIO` / `ENODEV`: the device is gone.
    Enxio,
    /// `ENOENT`: a cataloged file (or the tier directory) disappeared.
    Enoent,
    /// Anything else (a file that shrank, `ESTALE`, ...).
    Other,
}

impl TierIoError {
    /// Every kind, in the order counters are kept.
    pub const ALL: [TierIoError; 4] = [
        TierIoError::Eio,
        TierIoError::Enxio,
        TierIoError::Enoent,
        TierIoError::Other,
    ];

    /// Classifies an error.
    pub fn of(e: &std::io::Error) -> TierIoError {
        match e.raw_os_error() {
            Some(libc::EIO) => TierIoError::Eio,
            Some(libc::ENXIO | libc::ENODEV) => TierIoError::Enxio,
            Some(libc::ENOENT) => TierIoError::Enoent,
            None if e.kind() == std::io::ErrorKind::NotFound => TierIoError::Enoent,
            _ => TierIoError::Other,
        }
    }

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            TierIoError::Eio => "eio",
            TierIoError::Enxio => "enxio",
            TierIoError::Enoent => "enoent",
            TierIoError::Other => "other",
        }
    }
}

/// Which timer closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// The head did not arrive in `header_read_timeout_ms`.
    Header,
    /// Nothing arrived in `idle_timeout_ms`.
    Idle,
    /// The client did not take body bytes for `send_timeout_ms`.
    Send,
}

/// How HTTPS bodies are encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// rustls encrypts in the executor; bodies are read with `pread` and written encrypted.
    Userspace = 0,
    /// The kernel encrypts (`TCP_ULP "tls"`); bodies go out with `sendfile`.
    Kernel = 1,
}

impl TlsMode {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Userspace => "userspace",
            TlsMode::Kernel => "ktls",
        }
    }
}

/// Why a connection stayed in user space although kernel TLS is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KtlsFallback {
    /// After the handshake the client had already sent part of a record (or something rustls
    /// had to answer): the kernel cannot take over mid-record, so rustls keeps the connection.
    PendingData,
    /// `setsockopt(TCP_ULP, "tls")` failed on this connection (nothing was installed).
    Ulp,
}

impl KtlsFallback {
    const ALL: [KtlsFallback; 2] = [KtlsFallback::PendingData, KtlsFallback::Ulp];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            KtlsFallback::PendingData => "pending_data",
            KtlsFallback::Ulp => "ulp_failed",
        }
    }
}

/// How a connection served with kernel TLS ended, when the kernel's record layer ended it (a
/// connection that just closes, or times out, is not counted here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KtlsClose {
    /// The client sent close_notify.
    CloseNotify,
    /// The client sent another alert.
    Alert,
    /// The client sent a TLS 1.3 KeyUpdate: the kernel cannot take new keys, so the connection
    /// is closed (cleanly: close_notify, FIN).
    KeyUpdate,
    /// The client sent another post-handshake message.
    Handshake,
    /// A record the kernel could not decrypt or parse (`EBADMSG`, `EMSGSIZE`, `EIO`).
    BadRecord,
    /// Installing the keys failed after the switch began (`TLS_TX` or `TLS_RX` refused): the
    /// connection can go back neither to rustls nor on, so it is closed.
    InstallFailed,
}

impl KtlsClose {
    const ALL: [KtlsClose; 6] = [
        KtlsClose::CloseNotify,
        KtlsClose::Alert,
        KtlsClose::KeyUpdate,
        KtlsClose::Handshake,
        KtlsClose::BadRecord,
        KtlsClose::InstallFailed,
    ];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            KtlsClose::CloseNotify => "close_notify",
            KtlsClose::Alert => "alert",
            KtlsClose::KeyUpdate => "key_update",
            KtlsClose::Handshake => "handshake_message",
            KtlsClose::BadRecord => "bad_record",
            KtlsClose::InstallFailed => "install_failed",
        }
    }
}

/// Why a TLS handshake did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Not finished within `header_read_timeout_ms` of the accept.
    Timeout,
    /// The client closed or reset the connection mid-handshake.
    Closed,
    /// The client sent something that is not acceptable TLS (garbage, a malformed or truncated
    /// message, no common cipher suite or protocol version, an alert).
    Protocol,
    /// The client spoke plain HTTP to the HTTPS port (answered with a 400).
    PlainHttp,
}

impl HandshakeFailure {
    const ALL: [HandshakeFailure; 4] = [
        HandshakeFailure::Timeout,
        HandshakeFailure::Closed,
        HandshakeFailure::Protocol,
        HandshakeFailure::PlainHttp,
    ];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Closed => "closed",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::PlainHttp => "plain_http",
        }
    }
}

/// One executor's counters.
#[derive(Debug)]
#[repr(align(128))]
pub struct CoreMetrics {
    requests: [AtomicU64; Status::ALL.len()],
    body_bytes: Box<[AtomicU64]>,
    cold_reads: Box<[AtomicU64]>,
    cold_read_bytes: Box<[AtomicU64]>,
    open_connections: AtomicI64,
    connections: AtomicU64,
    parked_connections: AtomicI64,
    parks: AtomicU64,
    rejected: [AtomicU64; Rejection::ALL.len()],
    signed_url_rejects: [AtomicU64; Reject::ALL.len()],
    /// Per tier, per [`TierIoError`] kind.
    tier_io_errors: Box<[AtomicU64]>,
    timeouts: [AtomicU64; 3],
    client_aborts: AtomicU64,
    io_errors: AtomicU64,
    would_block: AtomicU64,
    tls_connections: [AtomicU64; 2],
    tls_handshake_failures: [AtomicU64; HandshakeFailure::ALL.len()],
    ktls_fallbacks: [AtomicU64; KtlsFallback::ALL.len()],
    ktls_closed: [AtomicU64; KtlsClose::ALL.len()],
    latency: Mutex<Latency>,
}

#[derive(Debug)]
struct Latency {
    ttfb: Histogram<u64>,
    total: Histogram<u64>,
}

impl Latency {
    fn new() -> Latency {
        Latency {
            ttfb: new_histogram(),
            total: new_histogram(),
        }
    }
}

/// Microseconds from 1 µs to one hour, three significant figures.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

impl CoreMetrics {
    fn new(tiers: usize) -> CoreMetrics {
        let zeros = || (0..tiers).map(|_| AtomicU64::new(0)).collect::<Box<[_]>>();
        CoreMetrics {
            requests: Default::default(),
            body_bytes: zeros(),
            cold_reads: zeros(),
            cold_read_bytes: zeros(),
            open_connections: AtomicI64::new(0),
            connections: AtomicU64::new(0),
            parked_connections: AtomicI64::new(0),
            parks: AtomicU64::new(0),
            rejected: Default::default(),
            signed_url_rejects: Default::default(),
            tier_io_errors: (0..tiers * TierIoError::ALL.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            timeouts: Default::default(),
            client_aborts: AtomicU64::new(0),
            io_errors: AtomicU64::new(0),
            would_block: AtomicU64::new(0),
            tls_connections: Default::default(),
            tls_handshake_failures: Default::default(),
            ktls_fallbacks: Default::default(),
            ktls_closed: Default::default(),
            latency: Mutex::new(Latency::new()),
        }
    }

    /// A response with `status` was sent.
    pub fn response(&self, status: Status) {
        self.requests[status.index()].fetch_add(1, Relaxed);
    }
    /// Body bytes sent from `tier`.
    pub fn body_bytes(&self, tier: usize, n: u64) {
        if let Some(c) = self.body_bytes.get(tier) {
            c.fetch_add(n, Relaxed);
        }
    }
    /// A cold range of `n` bytes was read into the page cache before sending.
    pub fn cold_read(&self, tier: usize, n: u64) {
        if let (Some(c), Some(b)) = (self.cold_reads.get(tier), self.cold_read_bytes.get(tier)) {
            c.fetch_add(1, Relaxed);
            b.fetch_add(n, Relaxed);
        }
    }
    /// A connection was accepted (`+1`) or closed (`-1`).
    pub fn connection(&self, delta: i64) {
        if delta > 0 {
            self.connections.fetch_add(1, Relaxed);
        }
        self.open_connections.fetch_add(delta, Relaxed);
    }
    /// An idle connection was parked (`+1`), or left the parked set (`-1`: woken or closed).
    pub fn parked(&self, delta: i64) {
        if delta > 0 {
            self.parks.fetch_add(1, Relaxed);
        }
        self.parked_connections.fetch_add(delta, Relaxed);
    }
    /// A connection was refused over a cap.
    pub fn rejected(&self, why: Rejection) {
        self.rejected[why as usize].fetch_add(1, Relaxed);
    }
    /// A request was refused with 403 for its signature.
    pub fn signed_url_reject(&self, why: Reject) {
        if let Some(i) = Reject::ALL.iter().position(|r| *r == why) {
            self.signed_url_rejects[i].fetch_add(1, Relaxed);
        }
    }
    /// Serving an object from `tier` failed with an I/O error of `kind`.
    pub fn tier_io_error(&self, tier: usize, kind: TierIoError) {
        let i = tier * TierIoError::ALL.len() + kind as usize;
        if let Some(c) = self.tier_io_errors.get(i) {
            c.fetch_add(1, Relaxed);
        }
    }
    /// A connection was closed by a timer.
    pub fn timeout(&self, which: Timeout) {
        self.timeouts[which as usize].fetch_add(1, Relaxed);
    }
    /// The client went away mid-response.
    pub fn client_abort(&self) {
        self.client_aborts.fetch_add(1, Relaxed);
    }
    /// Reading an object failed.
    pub fn io_error(&self) {
        self.io_errors.fetch_add(1, Relaxed);
    }
    /// `sendfile` found the socket buffer full and had to wait.
    pub fn would_block(&self) {
        self.would_block.fetch_add(1, Relaxed);
    }
    /// A TLS handshake completed and the connection is served in `mode`.
    pub fn tls_connection(&self, mode: TlsMode) {
        self.tls_connections[mode as usize].fetch_add(1, Relaxed);
    }
    /// A TLS handshake failed.
    pub fn tls_handshake_failure(&self, why: HandshakeFailure) {
        self.tls_handshake_failures[why as usize].fetch_add(1, Relaxed);
    }
    /// A connection stayed in user space although kernel TLS is in use.
    pub fn ktls_fallback(&self, why: KtlsFallback) {
        self.ktls_fallbacks[why as usize].fetch_add(1, Relaxed);
    }
    /// The kernel's record layer ended a kernel-TLS connection.
    pub fn ktls_closed(&self, why: KtlsClose) {
        self.ktls_closed[why as usize].fetch_add(1, Relaxed);
    }
    /// Requests answered by this core (all statuses).
    pub fn total_requests(&self) -> u64 {
        self.requests.iter().map(|c| c.load(Relaxed)).sum()
    }
}

/// A thread-local latency recorder, flushed into its core's published histograms.
#[derive(Debug)]
pub struct LocalLatency {
    ttfb: Histogram<u64>,
    total: Histogram<u64>,
}

impl Default for LocalLatency {
    fn default() -> Self {
        LocalLatency {
            ttfb: new_histogram(),
            total: new_histogram(),
        }
    }
}

impl LocalLatency {
    /// Records one request's time to first byte and total time.
    pub fn record(&mut self, ttfb: Duration, total: Duration) {
        self.ttfb.saturating_record(micros(ttfb));
        self.total.saturating_record(micros(total));
    }

    /// Adds what was recorded since the last flush to `core`'s published histograms.
    pub fn flush(&mut self, core: &CoreMetrics) {
        if self.total.is_empty() {
            return;
        }
        if let Ok(mut published) = core.latency.lock() {
            let _ = published.ttfb.add(&self.ttfb);
            let _ = published.total.add(&self.total);
        }
        self.ttfb.reset();
        self.total.reset();
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// All cores' metrics.
#[derive(Debug)]
pub struct Metrics {
    cores: Vec<CoreMetrics>,
    /// Requests per object (per core, merged on read: `GET /demand`).
    demand: crate::demand::Demand,
    started: std::time::SystemTime,
    /// 0: no HTTPS listener; otherwise 1 + the [`TlsMode`] new HTTPS connections get.
    tls_mode: AtomicU8,
    /// Certificate reloads: `[ok, failed]` (process-wide: reloads are rare and off the cores).
    cert_reloads: [AtomicU64; 2],
    config_reloads: [AtomicU64; 2],
    draining: std::sync::atomic::AtomicBool,
    /// Tier-directory watch events read (process-wide: one watcher thread).
    watch_events: AtomicU64,
    /// Catalog entries the watch changed.
    watch_changes: AtomicU64,
    /// Full rescans the watch fell back to, by [`Rescan`].
    watch_rescans: [AtomicU64; 3],
}

/// Why the tier watch fell back to a full rescan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rescan {
    /// The kernel's event queue overflowed: changes were lost.
    Overflow,
    /// A tier directory was replaced, moved, deleted or unmounted under its watch (or mounted
    /// over): it is watched again at its path.
    Replaced,
    /// A tier directory could not be watched; it is rescanned until it can.
    WatchFailed,
}

impl Rescan {
    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Rescan::Overflow => "overflow",
            Rescan::Replaced => "replaced",
            Rescan::WatchFailed => "watch_failed",
        }
    }
}

impl Metrics {
    /// Counters for `cores` executors and `tiers` tiers.
    pub fn new(cores: usize, tiers: usize) -> Metrics {
        Metrics {
            cores: (0..cores).map(|_| CoreMetrics::new(tiers)).collect(),
            demand: crate::demand::Demand::new(cores),
            started: std::time::SystemTime::now(),
            tls_mode: AtomicU8::new(0),
            cert_reloads: Default::default(),
            config_reloads: Default::default(),
            draining: Default::default(),
            watch_events: Default::default(),
            watch_changes: Default::default(),
            watch_rescans: Default::default(),
        }
    }

    /// The tier watch read `events` events that changed `changes` catalog entries.
    pub fn watch_events(&self, events: u64, changes: u64) {
        self.watch_events.fetch_add(events, Relaxed);
        self.watch_changes.fetch_add(changes, Relaxed);
    }

    /// The tier watch fell back to a full rescan.
    pub fn watch_rescan(&self, why: Rescan) {
        self.watch_rescans[why as usize].fetch_add(1, Relaxed);
    }

    /// Records how HTTPS is served (set once at start when there is an HTTPS listener).
    pub fn set_tls_mode(&self, mode: TlsMode) {
        self.tls_mode.store(1 + mode as u8, Relaxed);
    }

    /// A certificate reload succeeded (`true`) or kept the previous certificates (`false`).
    pub fn cert_reload(&self, ok: bool) {
        self.cert_reloads[usize::from(!ok)].fetch_add(1, Relaxed);
    }

    /// A config file reload was applied (`true`) or refused, keeping the running config.
    pub fn config_reload(&self, ok: bool) {
        self.config_reloads[usize::from(!ok)].fetch_add(1, Relaxed);
    }

    /// The process stopped accepting and is finishing in-flight responses before it exits.
    pub fn set_draining(&self) {
        self.draining.store(true, Relaxed);
    }

    /// The counters of executor `i`.
    pub fn core(&self, i: usize) -> &CoreMetrics {
        &self.cores[i]
    }

    /// Requests per object.
    pub fn demand(&self) -> &crate::demand::Demand {
        &self.demand
    }

    /// Number of executors.
    pub fn cores(&self) -> usize {
        self.cores.len()
    }

    /// Open connections over all cores.
    pub fn open_connections(&self) -> i64 {
        self.cores
            .iter()
            .map(|c| c.open_connections.load(Relaxed))
            .sum()
    }
}

/// Renders every metric in the Prometheus text exposition format.
pub fn render(metrics: &Metrics, catalog: &Catalog) -> String {
    let mut out = String::with_capacity(8192);
    let sum = |f: &dyn Fn(&CoreMetrics) -> u64| metrics.cores.iter().map(f).sum::<u64>();

    labeled(
        &mut out,
        "edgeplane_requests_total",
        "counter",
        "Responses sent, by HTTP status.",
        "status",
        Status::ALL
            .iter()
            .enumerate()
            .map(|(i, status)| (status.code(), sum(&|c| c.requests[i].load(Relaxed)))),
    );
    labeled(
        &mut out,
        "edgeplane_core_requests_total",
        "counter",
        "Responses sent, by serving executor.",
        "core",
        metrics
            .cores
            .iter()
            .enumerate()
            .map(|(i, c)| (i, c.total_requests())),
    );
    let per_tier =
        |out: &mut String, name: &str, kind: &str, help: &str, value: &dyn Fn(usize) -> u64| {
            header(out, name, kind, help);
            for (t, tier) in catalog.tiers.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}{{tier=\"{}\",kind=\"{}\"}} {}",
                    tier.name,
                    tier.kind.as_str(),
                    value(t)
                );
            }
        };
    per_tier(
        &mut out,
        "edgeplane_response_bytes_total",
        "counter",
        "Body bytes sent, by tier.",
        &|t| sum(&|c| c.body_bytes[t].load(Relaxed)),
    );
    per_tier(
        &mut out,
        "edgeplane_cold_reads_total",
        "counter",
        "Ranges that were not in the page cache and were read in off the executor first.",
        &|t| sum(&|c| c.cold_reads[t].load(Relaxed)),
    );
    per_tier(
        &mut out,
        "edgeplane_cold_read_bytes_total",
        "counter",
        "Bytes read in by cold reads.",
        &|t| sum(&|c| c.cold_read_bytes[t].load(Relaxed)),
    );

    header(
        &mut out,
        "edgeplane_open_connections",
        "gauge",
        "Client connections open now.",
    );
    let _ = writeln!(
        out,
        "edgeplane_open_connections {}",
        metrics.open_connections()
    );
    header(
        &mut out,
        "edgeplane_parked_connections",
        "gauge",
        "Idle keep-alive connections parked now (no task, no buffers; waiting in the epoll set).",
    );
    let _ = writeln!(
        out,
        "edgeplane_parked_connections {}",
        metrics
            .cores
            .iter()
            .map(|c| c.parked_connections.load(Relaxed))
            .sum::<i64>()
    );
    header(
        &mut out,
        "edgeplane_connections_parked_total",
        "counter",
        "Times an idle keep-alive connection was parked.",
    );
    let _ = writeln!(
        out,
        "edgeplane_connections_parked_total {}",
        sum(&|c| c.parks.load(Relaxed))
    );
    header(
        &mut out,
        "edgeplane_connections_total",
        "counter",
        "Client connections accepted.",
    );
    let _ = writeln!(
        out,
        "edgeplane_connections_total {}",
        sum(&|c| c.connections.load(Relaxed))
    );
    labeled(
        &mut out,
        "edgeplane_connections_rejected_total",
        "counter",
        "Connections refused: with 503 over a cap, or closed unanswered from outside the served prefixes.",
        "reason",
        Rejection::ALL.iter().enumerate().map(|(i, reason)| (reason.as_str(), sum(&|c| c.rejected[i].load(Relaxed)))),
    );
    labeled(
        &mut out,
        "edgeplane_signed_url_rejects_total",
        "counter",
        "Object requests refused with 403 because of their signed URL, by reason.",
        "reason",
        Reject::ALL.iter().enumerate().map(|(i, reason)| {
            (
                reason.label(),
                sum(&|c| c.signed_url_rejects[i].load(Relaxed)),
            )
        }),
    );
    labeled(
        &mut out,
        "edgeplane_timeouts_total",
        "counter",
        "Connections closed by a timer.",
        "kind",
        ["header", "idle", "send"]
            .iter()
            .enumerate()
            .map(|(i, kind)| (kind, sum(&|c| c.timeouts[i].load(Relaxed)))),
    );
    for (name, help, f) in [
        (
            "edgeplane_client_aborts_total",
            "Responses cut short because the client went away.",
            &(|c: &CoreMetrics| c.client_aborts.load(Relaxed)) as &dyn Fn(&CoreMetrics) -> u64,
        ),
        (
            "edgeplane_io_errors_total",
            "Errors reading objects from a tier.",
            &|c: &CoreMetrics| c.io_errors.load(Relaxed),
        ),
        (
            "edgeplane_sendfile_would_block_total",
            "Times sendfile found the socket buffer full and waited for the client.",
            &|c: &CoreMetrics| c.would_block.load(Relaxed),
        ),
    ] {
        header(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", sum(f));
    }

    header(
        &mut out,
        "edgeplane_tier_io_errors_total",
        "counter",
        "I/O errors serving objects, by tier and kind; each one triggers a check of the tier.",
    );
    for (t, tier) in catalog.tiers.iter().enumerate() {
        for kind in TierIoError::ALL {
            let i = t * TierIoError::ALL.len() + kind as usize;
            let _ = writeln!(
                out,
                "edgeplane_tier_io_errors_total{{tier=\"{}\",kind=\"{}\"}} {}",
                tier.name,
                kind.as_str(),
                sum(&|c| c.tier_io_errors.get(i).map_or(0, |n| n.load(Relaxed)))
            );
        }
    }

    render_tls(&mut out, metrics);

    let mut ttfb = new_histogram();
    let mut total = new_histogram();
    for c in &metrics.cores {
        if let Ok(l) = c.latency.lock() {
            let _ = ttfb.add(&l.ttfb);
            let _ = total.add(&l.total);
        }
    }
    summary(
        &mut out,
        "edgeplane_ttfb_seconds",
        "Time from a complete request head to the response head being sent.",
        &ttfb,
    );
    summary(
        &mut out,
        "edgeplane_request_duration_seconds",
        "Time from a complete request head to the last body byte handed to the kernel.",
        &total,
    );

    let states = &catalog.tier_states;
    per_tier(
        &mut out,
        "edgeplane_catalog_objects",
        "gauge",
        "Objects in the catalog, by tier.",
        &|t| states[t].objects,
    );
    per_tier(
        &mut out,
        "edgeplane_catalog_bytes",
        "gauge",
        "Bytes of objects in the catalog, by tier (0 until counted: edgeplane_catalog_bytes_counted).",
        &|t| states[t].bytes,
    );
    header(
        &mut out,
        "edgeplane_catalog_bytes_counted",
        "gauge",
        "1 when edgeplane_catalog_bytes is counted; 0 while a low-priority thread learns the sizes after a scan.",
    );
    let _ = writeln!(
        out,
        "edgeplane_catalog_bytes_counted {}",
        u8::from(catalog.bytes_counted())
    );
    per_tier(
        &mut out,
        "edgeplane_tier_up",
        "gauge",
        "1 when the tier could be scanned, 0 when it is out of service.",
        &|t| u64::from(states[t].error.is_none()),
    );
    header(
        &mut out,
        "edgeplane_catalog_generation",
        "gauge",
        "Increases with every catalog reload.",
    );
    let _ = writeln!(out, "edgeplane_catalog_generation {}", catalog.generation);
    header(
        &mut out,
        "edgeplane_catalog_watch_events_total",
        "counter",
        "Tier-directory change events read from the watch (inotify).",
    );
    let _ = writeln!(
        out,
        "edgeplane_catalog_watch_events_total {}",
        metrics.watch_events.load(Relaxed)
    );
    header(
        &mut out,
        "edgeplane_catalog_watch_changes_total",
        "counter",
        "Catalog entries added, replaced or removed by watch events (no rescan).",
    );
    let _ = writeln!(
        out,
        "edgeplane_catalog_watch_changes_total {}",
        metrics.watch_changes.load(Relaxed)
    );
    header(
        &mut out,
        "edgeplane_catalog_watch_rescans_total",
        "counter",
        "Full catalog rescans the watch fell back to, by reason (overflow, replaced, watch_failed).",
    );
    for why in [Rescan::Overflow, Rescan::Replaced, Rescan::WatchFailed] {
        let _ = writeln!(
            out,
            "edgeplane_catalog_watch_rescans_total{{reason=\"{}\"}} {}",
            why.label(),
            metrics.watch_rescans[why as usize].load(Relaxed)
        );
    }
    header(
        &mut out,
        "edgeplane_executors",
        "gauge",
        "Serving executors (one per pinned core).",
    );
    let _ = writeln!(out, "edgeplane_executors {}", metrics.cores.len());
    header(
        &mut out,
        "edgeplane_start_time_seconds",
        "gauge",
        "Unix time the process started.",
    );
    let started = metrics
        .started
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let _ = writeln!(out, "edgeplane_start_time_seconds {}", started.as_secs());
    out
}

fn render_tls(out: &mut String, metrics: &Metrics) {
    let sum = |f: &dyn Fn(&CoreMetrics) -> u64| metrics.cores.iter().map(f).sum::<u64>();
    header(
        out,
        "edgeplane_tls_mode",
        "gauge",
        "1 for the way HTTPS is served (ktls: kernel TLS and sendfile; userspace: rustls); \
         all 0 without an HTTPS listener.",
    );
    let mode = metrics.tls_mode.load(Relaxed);
    for m in [TlsMode::Userspace, TlsMode::Kernel] {
        let on = u8::from(mode == 1 + m as u8);
        let _ = writeln!(out, "edgeplane_tls_mode{{mode=\"{}\"}} {on}", m.as_str());
    }
    labeled(
        out,
        "edgeplane_tls_connections_total",
        "counter",
        "TLS handshakes completed, by how the connection is then served.",
        "mode",
        [TlsMode::Userspace, TlsMode::Kernel].into_iter().map(|m| {
            (
                m.as_str(),
                sum(&|c| c.tls_connections[m as usize].load(Relaxed)),
            )
        }),
    );
    labeled(
        out,
        "edgeplane_tls_handshake_failures_total",
        "counter",
        "TLS handshakes that did not complete, by reason.",
        "reason",
        HandshakeFailure::ALL.into_iter().map(|why| {
            (
                why.as_str(),
                sum(&|c| c.tls_handshake_failures[why as usize].load(Relaxed)),
            )
        }),
    );
    labeled(
        out,
        "edgeplane_tls_ktls_fallbacks_total",
        "counter",
        "Connections kept in user space although kernel TLS is in use, by reason.",
        "reason",
        KtlsFallback::ALL.into_iter().map(|why| {
            (
                why.as_str(),
                sum(&|c| c.ktls_fallbacks[why as usize].load(Relaxed)),
            )
        }),
    );
    labeled(
        out,
        "edgeplane_tls_ktls_closed_total",
        "counter",
        "Kernel-TLS connections ended by a non-data record or a failed key installation, by reason.",
        "reason",
        KtlsClose::ALL.into_iter().map(|why| (why.as_str(), sum(&|c| c.ktls_closed[why as usize].load(Relaxed)))),
    );
    labeled(
        out,
        "edgeplane_tls_cert_reloads_total",
        "counter",
        "Certificate reloads (SIGHUP, POST /reload); failed ones keep the previous certificates.",
        "result",
        ["ok", "failed"]
            .iter()
            .enumerate()
            .map(|(i, result)| (result, metrics.cert_reloads[i].load(Relaxed))),
    );
}

/// Appends the process's life-cycle state (config reloads, drain) to `out`.
pub fn render_lifecycle(out: &mut String, metrics: &Metrics) {
    labeled(
        out,
        "edgeplane_config_reloads_total",
        "counter",
        "Config file reloads (SIGHUP, POST /reload); failed ones keep the running config.",
        "result",
        ["ok", "failed"]
            .iter()
            .enumerate()
            .map(|(i, result)| (result, metrics.config_reloads[i].load(Relaxed))),
    );
    header(
        out,
        "edgeplane_draining",
        "gauge",
        "1 while the process drains (SIGTERM, edgeplane drain): no new connections, in-flight responses finishing.",
    );
    let _ = writeln!(
        out,
        "edgeplane_draining {}",
        u8::from(metrics.draining.load(Relaxed))
    );
}

/// Appends the signing and served-prefix state to `out`.
pub fn render_access(out: &mut String, access: &crate::access::Access) {
    header(
        out,
        "edgeplane_signing_enabled",
        "gauge",
        "1 when object requests must carry a valid signed URL.",
    );
    let _ = writeln!(
        out,
        "edgeplane_signing_enabled {}",
        u8::from(access.signing())
    );
    header(
        out,
        "edgeplane_signing_keys",
        "gauge",
        "Signing keys loaded from signing.keys_file (0 with signing on: every object request is refused).",
    );
    let _ = writeln!(out, "edgeplane_signing_keys {}", access.keys_loaded());
    if let Some(n) = access.prefixes_loaded() {
        header(
            out,
            "edgeplane_access_prefixes",
            "gauge",
            "Prefixes loaded from access.prefixes_file (0: no client may connect).",
        );
        let _ = writeln!(out, "edgeplane_access_prefixes {n}");
    }
}

/// Appends the XDP filter's state and counters (global and per prefix) to `out`.
pub fn render_xdp(out: &mut String, x: &edgeplane_xdp::XdpSnapshot) {
    header(
        out,
        "edgeplane_xdp_up",
        "gauge",
        "1 when the XDP filter is loaded and attached as configured, 0 when it failed and the data plane serves without it.",
    );
    let _ = writeln!(out, "edgeplane_xdp_up {}", u8::from(x.up));
    if !x.up {
        return;
    }
    for (name, help, v) in [
        (
            "edgeplane_xdp_enforce",
            "1 in enforce mode (unserved sources dropped), 0 in monitor mode.",
            x.enforce,
        ),
        (
            "edgeplane_xdp_drain",
            "1 while the global drain drops new connections to the serving ports.",
            x.drain,
        ),
    ] {
        header(out, name, "gauge", help);
        let _ = writeln!(out, "{name} {}", u8::from(v));
    }
    header(
        out,
        "edgeplane_xdp_attached",
        "gauge",
        "Interfaces the XDP filter is attached to, with the mode in effect.",
    );
    for (iface, mode) in &x.attached {
        let _ = writeln!(
            out,
            "edgeplane_xdp_attached{{interface=\"{iface}\",mode=\"{}\"}} 1",
            mode.as_str()
        );
    }
    if let Some(mode) = x.steering {
        header(
            out,
            "edgeplane_xdp_steering",
            "gauge",
            "Flow steering in effect (mode label); 1 once the SK_REUSEPORT program is attached to the executors' listeners, 0 before or without it.",
        );
        let _ = writeln!(
            out,
            "edgeplane_xdp_steering{{mode=\"{}\"}} {}",
            mode.as_str(),
            u8::from(x.reuseport_attached)
        );
    }
    header(
        out,
        "edgeplane_xdp_packets_total",
        "counter",
        "Frames seen by the XDP filter, by verdict and reason.",
    );
    for c in edgeplane_xdp::Counter::ALL {
        let _ = writeln!(
            out,
            "edgeplane_xdp_packets_total{{verdict=\"{}\",reason=\"{}\"}} {}",
            c.verdict().as_str(),
            c.reason(),
            x.counters[c as usize]
        );
    }
    header(out, "edgeplane_xdp_prefixes", "gauge", "Served prefixes.");
    let _ = writeln!(out, "edgeplane_xdp_prefixes {}", x.prefixes.len());
    type Field = fn(&edgeplane_xdp::PrefixStats) -> u64;
    let fields: [(&str, &str, &str, Field); 4] = [
        (
            "edgeplane_xdp_prefix_packets_total",
            "counter",
            "Packets to the serving ports from the prefix, passed or steered.",
            |s| s.packets,
        ),
        (
            "edgeplane_xdp_prefix_bytes_total",
            "counter",
            "Bytes (whole frames) of those packets.",
            |s| s.bytes,
        ),
        (
            "edgeplane_xdp_prefix_drops_total",
            "counter",
            "Packets to the serving ports from the prefix that were dropped (new connections under drain).",
            |s| s.drops,
        ),
        (
            "edgeplane_xdp_prefix_draining",
            "gauge",
            "1 while new connections from the prefix are dropped.",
            |s| u64::from(s.entry.drain),
        ),
    ];
    for (name, kind, help, field) in fields {
        header(out, name, kind, help);
        for s in &x.prefixes {
            let _ = writeln!(out, "{name}{{prefix=\"{}\"}} {}", s.entry.prefix, field(s));
        }
    }
}

/// A metric with one label: its header, then `name{label="value"} n` per row.
fn labeled<V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    label: &str,
    rows: impl Iterator<Item = (V, u64)>,
) {
    header(out, name, kind, help);
    for (value, n) in rows {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn summary(out: &mut String, name: &str, help: &str, h: &Histogram<u64>) {
    header(out, name, "summary", help);
    for q in [0.5, 0.9, 0.99, 0.999] {
        let v = if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(q) as f64 / 1e6
        };
        let _ = writeln!(out, "{name}{{quantile=\"{q}\"}} {v}");
    }
    let sum_us: f64 = h
        .iter_recorded()
        .map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64)
        .sum();
    let _ = writeln!(out, "{name}_sum {}", sum_us / 1e6);
    let _ = writeln!(out, "{name}_count {}", h.len());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{TierConfig, TierKind};

    #[test]
    fn render_sums_cores_and_names_tiers() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::scan(
            &[TierConfig {
                name: "nvme0".into(),
                kind: TierKind::Flash,
                path: dir.path().into(),
                numa_node: None,
            }],
            3,
        );
        let m = Metrics::new(2, 1);
        m.core(0).response(Status::PartialContent);
        m.core(1).response(Status::PartialContent);
        m.core(1).response(Status::NotFound);
        m.core(0).body_bytes(0, 100);
        m.core(1).body_bytes(0, 23);
        m.core(0).connection(1);
        m.core(1).connection(1);
        m.core(1).connection(-1);
        let mut local = LocalLatency::default();
        local.record(Duration::from_micros(100), Duration::from_millis(2));
        local.record(Duration::from_micros(300), Duration::from_millis(4));
        local.flush(m.core(0));
        m.set_tls_mode(TlsMode::Userspace);
        m.core(1).tls_connection(TlsMode::Userspace);
        m.core(0).tls_handshake_failure(HandshakeFailure::PlainHttp);
        m.core(0).ktls_closed(KtlsClose::KeyUpdate);
        m.core(1).ktls_fallback(KtlsFallback::PendingData);
        m.cert_reload(false);
        let text = render(&m, &cat);
        for line in [
            "edgeplane_tls_mode{mode=\"userspace\"} 1\n",
            "edgeplane_tls_mode{mode=\"ktls\"} 0\n",
            "edgeplane_tls_connections_total{mode=\"userspace\"} 1\n",
            "edgeplane_tls_connections_total{mode=\"ktls\"} 0\n",
            "edgeplane_tls_handshake_failures_total{reason=\"plain_http\"} 1\n",
            "edgeplane_tls_handshake_failures_total{reason=\"timeout\"} 0\n",
            "edgeplane_tls_cert_reloads_total{result=\"failed\"} 1\n",
            "edgeplane_tls_ktls_closed_total{reason=\"key_update\"} 1\n",
            "edgeplane_tls_ktls_closed_total{reason=\"install_failed\"} 0\n",
            "edgeplane_tls_ktls_fallbacks_total{reason=\"pending_data\"} 1\n",
            "edgeplane_tls_ktls_fallbacks_total{reason=\"ulp_failed\"} 0\n",
            "edgeplane_requests_total{status=\"206\"} 2\n",
            "edgeplane_requests_total{status=\"404\"} 1\n",
            "edgeplane_core_requests_total{core=\"1\"} 2\n",
            "edgeplane_response_bytes_total{tier=\"nvme0\",kind=\"flash\"} 123\n",
            "edgeplane_open_connections 1\n",
            "edgeplane_connections_total 2\n",
            "edgeplane_request_duration_seconds_count 2\n",
            "edgeplane_ttfb_seconds_sum 0.0004",
            "edgeplane_catalog_generation 3\n",
            "edgeplane_tier_up{tier=\"nvme0\",kind=\"flash\"} 1\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        let p99 = text
            .lines()
            .find(|l| l.starts_with("edgeplane_request_duration_seconds{quantile=\"0.99\"}"))
            .unwrap();
        let v: f64 = p99.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((0.0039..0.0041).contains(&v), "{p99}");
    }

    #[test]
    fn render_xdp_lists_counters_and_prefixes() {
        use edgeplane_xdp::{Counter, Mode, PrefixEntry, PrefixStats, XdpSnapshot};
        let mut down = String::new();
        render_xdp(&mut down, &XdpSnapshot::default());
        assert!(down.contains("edgeplane_xdp_up 0\n"), "{down}");
        assert!(!down.contains("edgeplane_xdp_packets_total"), "{down}");

        let mut snap = XdpSnapshot {
            up: true,
            enforce: true,
            attached: vec![("eth0".into(), Mode::Driver)],
            steering: Some(crate::config::XdpSteering::Cpumap),
            reuseport_attached: true,
            ..XdpSnapshot::default()
        };
        snap.counters[Counter::NotServedDropped as usize] = 7;
        snap.prefixes.push(PrefixStats {
            entry: PrefixEntry {
                prefix: "2001:db8::/32".parse().unwrap(),
                id: 0,
                drain: true,
            },
            packets: 3,
            bytes: 300,
            drops: 1,
        });
        let mut text = String::new();
        render_xdp(&mut text, &snap);
        for line in [
            "edgeplane_xdp_up 1\n",
            "edgeplane_xdp_enforce 1\n",
            "edgeplane_xdp_drain 0\n",
            "edgeplane_xdp_attached{interface=\"eth0\",mode=\"driver\"} 1\n",
            "edgeplane_xdp_packets_total{verdict=\"drop\",reason=\"not_served\"} 7\n",
            "edgeplane_xdp_packets_total{verdict=\"pass\",reason=\"not_served\"} 0\n",
            "edgeplane_xdp_packets_total{verdict=\"redirect\",reason=\"served\"} 0\n",
            "edgeplane_xdp_prefixes 1\n",
            "edgeplane_xdp_steering{mode=\"cpumap\"} 1\n",
            "edgeplane_xdp_prefix_packets_total{prefix=\"2001:db8::/32\"} 3\n",
            "edgeplane_xdp_prefix_bytes_total{prefix=\"2001:db8::/32\"} 300\n",
            "edgeplane_xdp_prefix_drops_total{prefix=\"2001:db8::/32\"} 1\n",
            "edgeplane_xdp_prefix_draining{prefix=\"2001:db8::/32\"} 1\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
