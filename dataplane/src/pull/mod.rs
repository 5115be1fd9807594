//! Pull-through: a miss is fetched from `[upstream]` once, in slices, while every client that
//! asked is served from the partly written file (docs/design.md, *Pull-through*).
//!
//! Threads, not executors: the upstream requests (ureq, blocking) and the tier writes run on
//! `max_upstream_fetches` threads named `edgeplane-pull-N`. Executors only take short mutexes
//! ([`Puller::start_or_join`], [`Object::poll_head`], [`Object::poll_available`]) and are woken
//! through their `Waker`s (glommio wakes a task from a foreign thread through the executor's
//! own eventfd), so a serving core never waits on the upstream or on a write.
//!
//! An object being pulled is a [`Object`]: a sparse file `<tier>/.tmp-pull-<id>` the size of
//! the object, and the state of each slice (missing, queued, being fetched with the bytes
//! written so far, done). Each slice is requested upstream once (`Range: bytes=a-b`), however
//! many clients want it; a client is sent the bytes of its range as soon as they are written.
//! When every slice is done the file is fsynced and, if admission keeps it
//! ([`admission::Store`]), renamed to `<tier>/<id>` and put in the catalog; otherwise it is
//! unlinked (the clients still reading hold the descriptor).

pub mod admission;
mod metrics;

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

pub use metrics::PullMetrics;

use crate::catalog::SharedCatalog;
use crate::config::{TierConfig, UpstreamConfig};
use admission::{Admission, Sketch, Store};

/// Prefix of a pulled object's temporary file (`.`-prefixed: never in the catalog). Distinct
/// from fill's `.tmp-<id>`, so the clean-up at start cannot touch the agent's files.
pub const TMP_PREFIX: &str = ".tmp-pull-";

/// Extended attribute marking a file pull-through installed (value [`ORIGIN_PULL`]): the start
/// scan rebuilds pull-through's store from it, so after a restart only pulled objects are
/// eviction candidates (fill's files never carry it).
pub const ORIGIN_XATTR: &str = "user.edgeplane.origin";
/// [`ORIGIN_XATTR`]'s value on a pulled object.
pub const ORIGIN_PULL: &[u8] = b"pull";

/// How many slices ahead of its position a client asks for (the upstream fetches them in
/// parallel, up to `max_upstream_fetches`).
const READAHEAD: usize = 4;

/// A partial object (some slices fetched) nobody has asked for in this long is dropped.
const PARTIAL_TTL: Duration = Duration::from_secs(30);

/// Why a pull failed, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullError {
    /// The upstream says 404 (or 410): the client gets 404.
    NotFound,
    /// The upstream did not answer in time: 504.
    Timeout,
    /// The upstream failed or answered nonsense: 502.
    Upstream(String),
    /// Too many misses waiting, or the circuit breaker is open: 503 with `Retry-After`.
    Busy,
}

/// The object's representation, known once the upstream's first answer arrived.
#[derive(Debug)]
pub struct Head {
    /// Length of the whole object.
    pub size: u64,
    /// The temporary file, opened read-write; served with `sendfile` while it fills.
    pub file: Arc<File>,
    /// Strong validator: the same the hit will have after the rename (size, mtime, inode).
    pub etag: String,
    /// IMF-fixdate of the modification time the file gets.
    pub last_modified: String,
    /// Pre-rendered `Content-Type`, `ETag`, `Last-Modified`, `Accept-Ranges` lines.
    pub fixed_headers: Vec<u8>,
    /// When the upstream's answer arrived (for `Age`).
    pub fetched: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slice {
    Missing,
    Queued,
    /// Being fetched; bytes written from the slice's start.
    Fetching(u64),
    Done,
}

#[derive(Debug)]
struct State {
    head: Option<Arc<Head>>,
    slices: Vec<Slice>,
    failed: Option<PullError>,
    wakers: Vec<Waker>,
    waiters: usize,
    idle_since: Instant,
    /// Renamed into the tier (or discarded): no longer in the puller's map.
    finished: bool,
    /// The first request (which learns the size) is queued or running.
    probing: bool,
    /// The whole object's SHA-256 as the upstream gave it, checked before the rename.
    sha256: Option<[u8; 32]>,
    /// The digest matched: the object's last byte may go out (it is held back until then, so
    /// no client gets a complete-looking wrong object).
    verified: bool,
}

/// One object being pulled.
#[derive(Debug)]
pub struct Object {
    /// Content id.
    pub id: Box<str>,
    tmp: PathBuf,
    /// Admission's verdict when the fetch started (for `Cache-Status: stored`).
    pub likely_stored: bool,
    state: Mutex<State>,
}

impl Object {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ready when the size is known (or the pull failed).
    pub fn poll_head(&self, cx: &mut Context<'_>) -> Poll<Result<Arc<Head>, PullError>> {
        let mut st = self.lock();
        if let Some(e) = &st.failed {
            return Poll::Ready(Err(e.clone()));
        }
        if let Some(h) = &st.head {
            return Poll::Ready(Ok(h.clone()));
        }
        st.wakers.push(cx.waker().clone());
        Poll::Pending
    }

    /// Ready with the end of the bytes available at `off` (a position inside `off..end`) once at
    /// least one byte at `off` is written; asks for the slices from `off`'s on (up to
    /// [`READAHEAD`], not past `end`) that nobody asked for yet.
    pub fn poll_available(
        &self,
        puller: &Puller,
        off: u64,
        end: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Result<u64, PullError>> {
        let slice = puller.slice;
        let mut st = self.lock();
        if let Some(e) = &st.failed {
            return Poll::Ready(Err(e.clone()));
        }
        let Some(head) = st.head.clone() else {
            st.wakers.push(cx.waker().clone());
            return Poll::Pending;
        };
        let k = (off / slice) as usize;
        let last = ((end.saturating_sub(1)) / slice) as usize;
        let mut want = Vec::new();
        for j in k..=last
            .min(k + READAHEAD - 1)
            .min(st.slices.len().saturating_sub(1))
        {
            if st.slices[j] == Slice::Missing {
                want.push(j);
            }
        }
        if !want.is_empty() && !puller.enqueue_many(self, &mut st, &want) {
            return Poll::Ready(Err(PullError::Busy));
        }
        let avail = written_end(&st, head.size, slice, off);
        if avail > off {
            return Poll::Ready(Ok(avail.min(end)));
        }
        st.wakers.push(cx.waker().clone());
        Poll::Pending
    }

    /// Whether the byte at `off` is written and may go out now (what [`Object::poll_available`]
    /// would be ready with), without asking for any slice or registering a waker.
    pub fn available_now(&self, puller: &Puller, off: u64) -> bool {
        let st = self.lock();
        match (&st.failed, &st.head) {
            (None, Some(head)) => written_end(&st, head.size, puller.slice, off) > off,
            _ => false,
        }
    }

    /// Counts a client reading this object; [`Object::leave`] when it is done.
    pub fn join(&self) {
        self.lock().waiters += 1;
    }

    /// A client stopped reading (finished, failed or disconnected). The fetch goes on: slices
    /// already asked for are completed (see docs/design.md for why).
    pub fn leave(&self) {
        let mut st = self.lock();
        st.waiters -= 1;
        if st.waiters == 0 {
            st.idle_since = Instant::now();
        }
    }
}

/// The end of the bytes written from `off`'s slice start on (`off` is available when this is
/// past it); the object's last byte is held back until its SHA-256, when given, matched.
fn written_end(st: &State, size: u64, slice: u64, off: u64) -> u64 {
    let k = (off / slice) as usize;
    let start = k as u64 * slice;
    let avail = match st.slices.get(k) {
        Some(Slice::Done) => (start + slice).min(size),
        Some(Slice::Fetching(w)) => start + w,
        _ => start,
    };
    if st.sha256.is_some() && !st.verified {
        avail.min(size.saturating_sub(1))
    } else {
        avail
    }
}

struct Job {
    obj: Arc<Object>,
    slice: usize,
}

/// Consecutive failures and when the breaker opened.
#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

/// What [`Puller::start_or_join`] found.
pub enum Joined {
    /// The catalog has it after all (installed meanwhile): serve it as a hit.
    InCatalog,
    /// A pull of it; `true` when this request started it.
    Pull(Arc<Object>, bool),
}

/// Process-wide pull-through state.
pub struct Puller {
    cfg: UpstreamConfig,
    tier: usize,
    dir: PathBuf,
    slice: u64,
    objects: Mutex<HashMap<Box<str>, Arc<Object>>>,
    queue: Mutex<VecDeque<Job>>,
    work: Condvar,
    /// Counters (rendered on `/metrics`).
    pub metrics: PullMetrics,
    breaker: Mutex<Breaker>,
    catalog: Arc<SharedCatalog>,
    store: Mutex<Store>,
    sketch: Sketch,
    agent: ureq::Agent,
    stop: AtomicBool,
    busy_fetches: AtomicU64,
    /// When idle partial objects were last looked for (at most once a second, by any thread).
    janitor: Mutex<Instant>,
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller")
            .field("url", &self.cfg.url)
            .finish()
    }
}

impl Puller {
    /// Sets pull-through up: cleans the tier of `.tmp-pull-*` left by a previous run, sizes
    /// the store, starts the fetch threads.
    pub fn start(
        cfg: &UpstreamConfig,
        tiers: &[TierConfig],
        catalog: Arc<SharedCatalog>,
    ) -> io::Result<Arc<Puller>> {
        let tier = tiers
            .iter()
            .position(|t| t.name == cfg.tier)
            .ok_or_else(|| {
                io::Error::other(format!("upstream.tier {:?} is not a tier", cfg.tier))
            })?;
        let dir = tiers[tier].path.clone();
        let cleaned = clean_temporaries(&dir)?;
        if cleaned > 0 {
            tracing::info!(tier = %cfg.tier, "removed {cleaned} unfinished pull(s) left by a previous run");
        }
        let capacity = match cfg.capacity {
            Some(c) => c.0,
            None => default_capacity(&dir)?,
        };
        let mut store = Store::new(capacity);
        let pulled = scan_pulled(&dir)?;
        if !pulled.is_empty() {
            tracing::info!(tier = %cfg.tier, objects = pulled.len(), "pulled objects found from a previous run");
        }
        for (id, size) in &pulled {
            store.insert(id, *size);
        }
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeout)
            .timeout_read(timeout)
            // A fresh connection per slice request: ureq 2 does not re-apply `timeout_read`
            // to a pooled connection's response head, and a 2 MiB slice dwarfs a handshake.
            .max_idle_connections(0)
            .user_agent(concat!("edgeplane/", env!("CARGO_PKG_VERSION")))
            .build();
        let puller = Arc::new(Puller {
            slice: cfg.slice_size.0,
            cfg: cfg.clone(),
            tier,
            dir,
            objects: Mutex::default(),
            queue: Mutex::default(),
            work: Condvar::new(),
            metrics: PullMetrics::default(),
            breaker: Mutex::default(),
            catalog,
            store: Mutex::new(store),
            sketch: Sketch::new(((capacity / (4 << 20)) as usize).clamp(1024, 1 << 22)),
            agent,
            stop: AtomicBool::new(false),
            busy_fetches: AtomicU64::new(0),
            janitor: Mutex::new(Instant::now()),
        });
        puller.metrics.capacity.store(capacity, Relaxed);
        {
            let store = puller.store.lock().unwrap_or_else(|p| p.into_inner());
            puller.metrics.used_bytes.store(store.used(), Relaxed);
        }
        for n in 0..cfg.max_upstream_fetches {
            let p = puller.clone();
            std::thread::Builder::new()
                .name(format!("edgeplane-pull-{n}"))
                .spawn(move || p.worker())?;
        }
        tracing::info!(url = %cfg.url, tier = %cfg.tier, capacity, slice = cfg.slice_size.0, "pull-through on");
        Ok(puller)
    }

    /// The tier pulled objects go to (index in config order).
    pub fn tier(&self) -> usize {
        self.tier
    }

    /// Stops the fetch threads (at exit).
    pub fn stop(&self) {
        self.stop.store(true, Relaxed);
        self.work.notify_all();
    }

    /// Records a request for `id` (hit or miss) in the admission sketch. Lock-free.
    pub fn record(&self, id: &str) {
        self.sketch.record(admission::hash_id(id));
    }

    /// A hit on one of pull-through's objects gets its second chance in the store.
    pub fn touch(&self, id: &str) {
        if let Ok(mut s) = self.store.try_lock() {
            s.touch(id);
        }
    }

    /// The pull of `id`, started if there is none. `first_byte`: where the client's range
    /// starts, when that is known without the size (the first upstream request fetches that
    /// slice, so a seek does not wait for slice 0).
    pub fn start_or_join(&self, id: &str, first_byte: Option<u64>) -> Result<Joined, PullError> {
        let mut objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(obj) = objects.get(id) {
            self.metrics.coalesced.fetch_add(1, Relaxed);
            return Ok(Joined::Pull(obj.clone(), false));
        }
        if self.catalog.load().get(id).is_some() {
            return Ok(Joined::InCatalog);
        }
        if !self.breaker_allows() {
            self.metrics.rejected_busy.fetch_add(1, Relaxed);
            return Err(PullError::Busy);
        }
        let queued = self.queue.lock().unwrap_or_else(|p| p.into_inner()).len();
        if queued >= self.cfg.max_queued_fetches {
            self.metrics.rejected_busy.fetch_add(1, Relaxed);
            return Err(PullError::Busy);
        }
        self.metrics.misses.fetch_add(1, Relaxed);
        let likely_stored = {
            let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
            store.used() < store.capacity() || self.sketch.estimate(admission::hash_id(id)) > 1
        };
        let obj = Arc::new(Object {
            id: id.into(),
            tmp: self.dir.join(format!("{TMP_PREFIX}{id}")),
            likely_stored,
            state: Mutex::new(State {
                head: None,
                slices: Vec::new(),
                failed: None,
                wakers: Vec::new(),
                waiters: 0,
                idle_since: Instant::now(),
                finished: false,
                probing: true,
                sha256: None,
                verified: false,
            }),
        });
        objects.insert(id.into(), obj.clone());
        drop(objects);
        let slice = first_byte.map_or(0, |b| (b / self.slice) as usize);
        self.push(Job {
            obj: obj.clone(),
            slice,
        });
        Ok(Joined::Pull(obj, true))
    }

    fn push(&self, job: Job) {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(job);
        self.work.notify_one();
    }

    /// Queues `slices` of `obj` (state locked by the caller); false when the queue is full.
    fn enqueue_many(&self, obj: &Object, st: &mut State, slices: &[usize]) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() + slices.len() > self.cfg.max_queued_fetches {
            return false;
        }
        let objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        let Some(arc) = objects
            .get(&*obj.id)
            .filter(|a| std::ptr::eq(&***a, obj))
            .cloned()
        else {
            // Finished or dropped under us: the caller finds the bytes done or the failure.
            return true;
        };
        drop(objects);
        for &s in slices {
            st.slices[s] = Slice::Queued;
            q.push_back(Job {
                obj: arc.clone(),
                slice: s,
            });
        }
        drop(q);
        for _ in slices {
            self.work.notify_one();
        }
        true
    }

    fn breaker_allows(&self) -> bool {
        let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        match b.open_until {
            Some(t) if Instant::now() < t => false,
            Some(_) => {
                // Half open: one trial; a failure opens it again.
                b.open_until = None;
                b.failures = self.cfg.breaker_failures.saturating_sub(1);
                true
            }
            None => true,
        }
    }

    fn breaker_result(&self, ok: bool) {
        let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            b.failures = 0;
            return;
        }
        b.failures += 1;
        if b.failures >= self.cfg.breaker_failures && b.open_until.is_none() {
            b.open_until =
                Some(Instant::now() + Duration::from_millis(self.cfg.breaker_cooldown_ms));
            self.metrics.breaker_opened.fetch_add(1, Relaxed);
            tracing::warn!(url = %self.cfg.url, failures = b.failures, "upstream circuit breaker open");
        }
    }

    /// A fetch thread: takes slice jobs until the process stops; between jobs, drops partial
    /// objects nobody wants any more.
    fn worker(self: Arc<Self>) {
        // A fetch thread that shares a CPU with an executor must not preempt it each time
        // upstream bytes arrive (hits would wait behind a miss storm); not nice 19 as the
        // cold-read threads, though: it shares the objects' locks with the executors.
        crate::runtime::sys::batch_thread_policy();
        loop {
            let job = {
                let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    if self.stop.load(Relaxed) {
                        return;
                    }
                    if let Some(j) = q.pop_front() {
                        break Some(j);
                    }
                    let (g, timeout) = self
                        .work
                        .wait_timeout(q, Duration::from_secs(1))
                        .unwrap_or_else(|p| p.into_inner());
                    q = g;
                    if timeout.timed_out() {
                        break None;
                    }
                }
            };
            if let Some(job) = job {
                self.busy_fetches.fetch_add(1, Relaxed);
                self.run(job);
                self.busy_fetches.fetch_sub(1, Relaxed);
            }
            // Busy or idle, some thread looks for abandoned partial objects once a second.
            let due = self.janitor.try_lock().is_ok_and(|mut last| {
                let due = last.elapsed() >= Duration::from_secs(1);
                if due {
                    *last = Instant::now();
                }
                due
            });
            if due {
                self.drop_idle_partials();
            }
        }
    }

    fn drop_idle_partials(&self) {
        let mut victims = Vec::new();
        {
            let objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
            for obj in objects.values() {
                let st = obj.lock();
                let active = st.probing
                    || st
                        .slices
                        .iter()
                        .any(|s| matches!(s, Slice::Queued | Slice::Fetching(_)));
                if st.waiters == 0 && !active && st.idle_since.elapsed() > PARTIAL_TTL {
                    victims.push(obj.clone());
                }
            }
        }
        for obj in victims {
            self.fail(
                &obj,
                PullError::Upstream("partial object dropped".into()),
                false,
            );
        }
    }

    /// Fetches one slice of `job.obj` (the first fetch also learns the size).
    fn run(&self, job: Job) {
        let obj = &job.obj;
        let (probe, range) = {
            let mut st = obj.lock();
            if st.failed.is_some() || st.finished {
                return;
            }
            match st.head.as_ref().map(|h| h.size) {
                None => (true, None),
                Some(size) => match st.slices.get(job.slice) {
                    Some(Slice::Queued) => {
                        st.slices[job.slice] = Slice::Fetching(0);
                        let a = job.slice as u64 * self.slice;
                        (false, Some((a, (a + self.slice).min(size))))
                    }
                    _ => return,
                },
            }
        };
        let a = job.slice as u64 * self.slice;
        let (from, to) = range.unwrap_or((a, a + self.slice));
        let url = format!("{}/{}", self.cfg.base(), obj.id);
        self.metrics.upstream_requests.fetch_add(1, Relaxed);
        let started = Instant::now();
        let resp = self
            .agent
            .get(&url)
            .set("Range", &format!("bytes={from}-{}", to - 1))
            .set("Accept-Encoding", "identity")
            .call();
        self.metrics.observe_latency(started.elapsed());
        let resp = match resp {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                if probe && code == 416 {
                    // Asked past the end: the total is in `Content-Range: bytes */N`.
                    if let Some(total) = r
                        .header("Content-Range")
                        .and_then(|v| v.strip_prefix("bytes */"))
                        .and_then(|n| n.trim().parse::<u64>().ok())
                    {
                        self.breaker_result(true);
                        if self.learn_head(obj, total, None, None).is_ok() {
                            self.maybe_complete(obj);
                        }
                        return;
                    }
                }
                let err = if code == 404 || code == 410 {
                    self.breaker_result(true);
                    PullError::NotFound
                } else {
                    self.breaker_result(false);
                    self.metrics.upstream_errors.fetch_add(1, Relaxed);
                    PullError::Upstream(format!("upstream answered {code}"))
                };
                self.fail(obj, err, false);
                return;
            }
            Err(ureq::Error::Transport(t)) => {
                self.breaker_result(false);
                self.metrics.upstream_errors.fetch_add(1, Relaxed);
                let err = if is_timeout(&t) {
                    PullError::Timeout
                } else {
                    PullError::Upstream(t.to_string())
                };
                tracing::warn!(id = %obj.id, "upstream request failed: {t}");
                self.fail(obj, err, false);
                return;
            }
        };
        // What this response carries: `first..last_excl` of an object of `total` bytes.
        let (first, end, total) = match resp.status() {
            206 => match resp.header("Content-Range").and_then(parse_content_range) {
                Some(r) => r,
                None => return self.bad(obj, "206 without a valid Content-Range"),
            },
            200 => match resp
                .header("Content-Length")
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                Some(n) => (0, n, n),
                None => return self.bad(obj, "200 without Content-Length"),
            },
            code => return self.bad(obj, &format!("unexpected status {code}")),
        };
        // A 206 must be exactly the slice asked for; a 200 is the whole object, and this fetch
        // takes every slice nobody is fetching.
        let whole = first == 0 && end == total && resp.status() == 200;
        let expect_first = job.slice as u64 * self.slice;
        if total > 0
            && !whole
            && (first != expect_first || end != (expect_first + self.slice).min(total))
        {
            return self.bad(obj, "Content-Range is not the slice asked for");
        }
        let claim = Claim {
            first,
            end,
            slice: job.slice,
            probe,
        };
        let (head, mine) =
            match self.learn_head(obj, total, resp.header("Last-Modified"), Some(claim)) {
                Ok(h) => h,
                Err(e) => return self.bad(obj, &e),
            };
        if let Some(d) = upstream_sha256(&resp) {
            let mut st = obj.lock();
            match st.sha256 {
                Some(prev) if prev != d => {
                    drop(st);
                    return self.bad(obj, "SHA-256 digest changed upstream");
                }
                _ => st.sha256 = Some(d),
            }
        }
        if total == 0 {
            self.breaker_result(true);
            self.maybe_complete(obj);
            return;
        }
        let mut reader = resp.into_reader();
        let mut buf = vec![0u8; 256 * 1024];
        let mut pos = first;
        while pos < end {
            let want = ((end - pos) as usize).min(buf.len());
            let n = match reader.read(&mut buf[..want]) {
                Ok(0) => {
                    self.breaker_result(false);
                    self.metrics.upstream_errors.fetch_add(1, Relaxed);
                    return self.fail(
                        obj,
                        PullError::Upstream("upstream closed mid-object".into()),
                        false,
                    );
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.breaker_result(false);
                    self.metrics.upstream_errors.fetch_add(1, Relaxed);
                    let err = if matches!(
                        e.kind(),
                        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                    ) {
                        PullError::Timeout
                    } else {
                        PullError::Upstream(format!("upstream body: {e}"))
                    };
                    return self.fail(obj, err, false);
                }
            };
            // The read may cross slices; slices another fetch owns are skipped (their bytes
            // are the same object's).
            let mut done = 0usize;
            while done < n {
                let s = (pos / self.slice) as usize;
                let slice_start = s as u64 * self.slice;
                let slice_end = (slice_start + self.slice).min(total);
                let seg = (n - done).min((slice_end - pos) as usize);
                let mine_s = mine.contains(&s);
                if mine_s {
                    if let Err(e) = head.file.write_all_at(&buf[done..done + seg], pos) {
                        tracing::error!(id = %obj.id, "cannot write the pulled object: {e}");
                        return self.fail(
                            obj,
                            PullError::Upstream(format!("tier write: {e}")),
                            false,
                        );
                    }
                }
                self.metrics.upstream_bytes.fetch_add(seg as u64, Relaxed);
                pos += seg as u64;
                done += seg;
                let wakers = {
                    let mut st = obj.lock();
                    if st.failed.is_some() {
                        return;
                    }
                    if mine_s {
                        let written = pos - slice_start;
                        st.slices[s] = if pos >= slice_end {
                            Slice::Done
                        } else {
                            Slice::Fetching(written)
                        };
                    }
                    std::mem::take(&mut st.wakers)
                };
                wakers.into_iter().for_each(Waker::wake);
            }
        }
        self.breaker_result(true);
        self.maybe_complete(obj);
    }

    fn bad(&self, obj: &Arc<Object>, why: &str) {
        self.breaker_result(false);
        self.metrics.upstream_errors.fetch_add(1, Relaxed);
        tracing::warn!(id = %obj.id, "bad upstream answer: {why}");
        self.fail(obj, PullError::Upstream(why.into()), false);
    }

    /// Creates the sparse temporary file and the slice table on the first answer; checks that
    /// later answers agree on the size.
    /// The slices of `first..end` this fetch writes are marked as being fetched under the
    /// same lock that publishes the head, so no client queues them again meanwhile.
    fn learn_head(
        &self,
        obj: &Object,
        total: u64,
        last_modified: Option<&str>,
        claim: Option<Claim>,
    ) -> Result<(Arc<Head>, Vec<usize>), String> {
        let mut st = obj.lock();
        if let Some(h) = st.head.clone() {
            if h.size != total {
                return Err(format!("size changed upstream ({} then {total})", h.size));
            }
            let mine = claim
                .map(|c| c.take(&mut st.slices, self.slice))
                .unwrap_or_default();
            return Ok((h, mine));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .mode(0o644)
            .open(&obj.tmp)
            .map_err(|e| format!("cannot create {}: {e}", obj.tmp.display()))?;
        file.set_len(total)
            .map_err(|e| format!("cannot size {}: {e}", obj.tmp.display()))?;
        // The modification time the file will keep: the upstream's, else now (whole seconds,
        // so the ETag computed now is the one the hit computes after the rename).
        let mtime = last_modified
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .unwrap_or_else(|| {
                let s = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                SystemTime::UNIX_EPOCH + Duration::from_secs(s)
            });
        file.set_modified(mtime)
            .map_err(|e| format!("cannot set mtime: {e}"))?;
        let ino = std::os::unix::fs::MetadataExt::ino(&file.metadata().map_err(|e| e.to_string())?);
        let etag = crate::catalog::etag_for(total, mtime, ino);
        let last_modified = httpdate::fmt_http_date(mtime);
        let fixed_headers = crate::http::response::render_fixed_headers(
            crate::http::mime::content_type(&obj.id),
            &etag,
            &last_modified,
        );
        let head = Arc::new(Head {
            size: total,
            file: Arc::new(file),
            etag,
            last_modified,
            fixed_headers,
            fetched: Instant::now(),
        });
        st.head = Some(head.clone());
        st.probing = false;
        st.slices = vec![Slice::Missing; total.div_ceil(self.slice) as usize];
        let mine = claim
            .map(|c| c.take(&mut st.slices, self.slice))
            .unwrap_or_default();
        let wakers = std::mem::take(&mut st.wakers);
        drop(st);
        wakers.into_iter().for_each(Waker::wake);
        Ok((head, mine))
    }

    /// When every slice is written: fsync, admission, rename into the tier, catalog.
    fn maybe_complete(&self, obj: &Arc<Object>) {
        let (head, sha256) = {
            let mut st = obj.lock();
            if st.finished || st.failed.is_some() || st.slices.iter().any(|s| *s != Slice::Done) {
                return;
            }
            st.finished = true;
            (st.head.clone(), st.sha256)
        };
        let Some(head) = head else { return };
        let done = (|| -> io::Result<()> {
            head.file.sync_all()?;
            // Writes moved the mtime; put back the one the ETag was made from.
            let mtime = httpdate::parse_http_date(&head.last_modified).map_err(io::Error::other)?;
            head.file.set_modified(mtime)?;
            // Marks the file as pull-through's, so the next start knows it may evict it
            // (without user xattrs on the tier's filesystem, it is kept like a filled object
            // after a restart).
            if let Err(e) = rustix::fs::fsetxattr(
                &*head.file,
                ORIGIN_XATTR,
                ORIGIN_PULL,
                rustix::fs::XattrFlags::empty(),
            ) {
                tracing::warn!(id = %obj.id, "cannot mark the pulled object ({ORIGIN_XATTR}): {e}");
            }
            let len = head.file.metadata()?.len();
            if len != head.size {
                return Err(io::Error::other(format!(
                    "length {len}, expected {}",
                    head.size
                )));
            }
            if let Some(want) = sha256 {
                let got = file_sha256(&head.file)?;
                if got != want {
                    self.metrics.verify_failures.fetch_add(1, Relaxed);
                    return Err(io::Error::other(format!(
                        "SHA-256 {} differs from the upstream's {}",
                        hex::encode(got),
                        hex::encode(want)
                    )));
                }
                let wakers = {
                    let mut st = obj.lock();
                    st.verified = true;
                    std::mem::take(&mut st.wakers)
                };
                wakers.into_iter().for_each(Waker::wake);
            }
            Ok(())
        })();
        if let Err(e) = done {
            tracing::error!(id = %obj.id, "pulled object not installed: {e}");
            return self.fail(obj, PullError::Upstream(e.to_string()), true);
        }
        let h = admission::hash_id(&obj.id);
        let freq = self.sketch.estimate(h);
        let verdict = {
            let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
            store.admit(&obj.id, head.size, freq, |v| {
                self.sketch.estimate(admission::hash_id(v))
            })
        };
        match verdict {
            Admission::Admit(victims) => {
                self.metrics.admitted.fetch_add(1, Relaxed);
                for (v, size) in &victims {
                    match std::fs::remove_file(self.dir.join(&**v)) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => tracing::warn!(id = %v, "cannot evict: {e}"),
                    }
                    self.metrics.evictions.fetch_add(1, Relaxed);
                    self.metrics.evicted_bytes.fetch_add(*size, Relaxed);
                }
                self.catalog.refresh(victims.iter().map(|(v, _)| &**v));
                match std::fs::rename(&obj.tmp, self.dir.join(&*obj.id)) {
                    Ok(()) => {
                        self.catalog.refresh([&*obj.id]);
                        self.metrics.stored_objects.fetch_add(1, Relaxed);
                        self.metrics.stored_bytes.fetch_add(head.size, Relaxed);
                    }
                    Err(e) => {
                        tracing::error!(id = %obj.id, "cannot install the pulled object: {e}");
                        self.store
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&obj.id);
                        let _ = std::fs::remove_file(&obj.tmp);
                    }
                }
            }
            Admission::Reject => {
                self.metrics.rejected.fetch_add(1, Relaxed);
                let _ = std::fs::remove_file(&obj.tmp);
            }
        }
        self.metrics.used_bytes.store(
            self.store.lock().unwrap_or_else(|p| p.into_inner()).used(),
            Relaxed,
        );
        self.forget(obj);
        let wakers = std::mem::take(&mut obj.lock().wakers);
        wakers.into_iter().for_each(Waker::wake);
    }

    fn forget(&self, obj: &Arc<Object>) {
        let mut objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        if objects.get(&*obj.id).is_some_and(|o| Arc::ptr_eq(o, obj)) {
            objects.remove(&*obj.id);
        }
    }

    /// Ends a pull: every client waiting gets `err`, the temporary file goes, the next request
    /// starts a new pull.
    fn fail(&self, obj: &Arc<Object>, err: PullError, after_finish: bool) {
        let wakers = {
            let mut st = obj.lock();
            if st.failed.is_some() || (st.finished && !after_finish) {
                return;
            }
            st.failed = Some(err);
            std::mem::take(&mut st.wakers)
        };
        self.forget(obj);
        let _ = std::fs::remove_file(&obj.tmp);
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Appends the `edgeplane_pull_*` families to a `/metrics` body.
    pub fn render_metrics(&self, out: &mut String) {
        let in_flight = self.busy_fetches.load(Relaxed);
        let queued = self.queue.lock().map_or(0, |q| q.len()) as u64;
        let pulling = self.objects.lock().map_or(0, |o| o.len()) as u64;
        self.metrics.render(out, in_flight, queued, pulling);
    }
}

/// The bytes one upstream response carries, and the job it answers.
#[derive(Clone, Copy)]
struct Claim {
    first: u64,
    end: u64,
    slice: usize,
    probe: bool,
}

impl Claim {
    /// Marks the slices this response will write as being fetched; returns them.
    fn take(self, slices: &mut [Slice], size: u64) -> Vec<usize> {
        if self.end <= self.first {
            return Vec::new();
        }
        let mut mine = Vec::new();
        for s in (self.first / size) as usize..=((self.end - 1) / size) as usize {
            match slices.get(s) {
                Some(Slice::Missing | Slice::Queued) => {
                    slices[s] = Slice::Fetching(0);
                    mine.push(s);
                }
                Some(Slice::Fetching(_)) if s == self.slice && !self.probe => mine.push(s),
                _ => {}
            }
        }
        mine
    }
}

fn is_timeout(t: &ureq::Transport) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(t);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return matches!(
                io.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            );
        }
        source = e.source();
    }
    t.to_string().contains("timed out")
}

/// The whole object's SHA-256 an upstream answer states: RFC 9530 `Repr-Digest: sha-256=:b64:`,
/// RFC 3230 `Digest: sha-256=b64` (the instance, i.e. the whole object, also on a 206), or S3's
/// user metadata `x-amz-meta-sha256: hex`.
fn upstream_sha256(resp: &ureq::Response) -> Option<[u8; 32]> {
    use base64::Engine as _;
    let b64 = |v: &str| -> Option<[u8; 32]> {
        base64::engine::general_purpose::STANDARD
            .decode(v.trim())
            .ok()?
            .try_into()
            .ok()
    };
    let member = |v: &str, strip: fn(&str) -> Option<&str>| {
        v.split(',').find_map(|m| {
            let (k, val) = m.split_once('=')?;
            if k.trim().eq_ignore_ascii_case("sha-256") {
                strip(val.trim()).and_then(b64)
            } else {
                None
            }
        })
    };
    if let Some(d) = resp
        .header("Repr-Digest")
        .and_then(|v| member(v, |x| x.strip_prefix(':')?.strip_suffix(':')))
    {
        return Some(d);
    }
    if let Some(d) = resp.header("Digest").and_then(|v| member(v, |x| Some(x))) {
        return Some(d);
    }
    let h = resp.header("x-amz-meta-sha256")?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(h.trim(), &mut out).ok()?;
    Some(out)
}

/// SHA-256 of a whole file (read with `pread`, the file's offset untouched).
fn file_sha256(file: &File) -> io::Result<[u8; 32]> {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let n = file.read_at(&mut buf, off)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(h.finalize().into())
}

/// `bytes a-b/total` → `(a, b + 1, total)`.
fn parse_content_range(v: &str) -> Option<(u64, u64, u64)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b, total): (u64, u64, u64) = (
        a.trim().parse().ok()?,
        b.trim().parse().ok()?,
        total.trim().parse().ok()?,
    );
    (a <= b && b < total).then_some((a, b + 1, total))
}

/// Removes `.tmp-pull-*` files in `dir` (pulls a previous run did not finish).
fn clean_temporaries(dir: &Path) -> io::Result<usize> {
    let mut n = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            std::fs::remove_file(entry.path())?;
            n += 1;
        }
    }
    Ok(n)
}

/// The objects in `dir` pull-through installed ([`ORIGIN_XATTR`]), with their sizes, oldest
/// installation (ctime: the rename) first, the order the CLOCK ring had them in.
fn scan_pulled(dir: &Path) -> io::Result<Vec<(String, u64)>> {
    use std::os::unix::fs::MetadataExt;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        let Ok(md) = entry.metadata() else { continue };
        if !md.is_file() {
            continue;
        }
        let mut buf = [0u8; 16];
        match rustix::fs::getxattr(entry.path(), ORIGIN_XATTR, &mut buf[..]) {
            Ok(n) if &buf[..n] == ORIGIN_PULL => {
                found.push(((md.ctime(), md.ctime_nsec()), name.to_owned(), md.len()))
            }
            _ => {}
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, id, size)| (id, size)).collect())
}

/// Free space on the tier's filesystem minus 5 % of its size (a reserve for fill).
fn default_capacity(dir: &Path) -> io::Result<u64> {
    let (free, total) = crate::runtime::fs_space(dir)?;
    Ok(free.saturating_sub(total / 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parsing() {
        assert_eq!(parse_content_range("bytes 0-99/1000"), Some((0, 100, 1000)));
        assert_eq!(
            parse_content_range("bytes 2097152-4194303/8388608"),
            Some((2097152, 4194304, 8388608))
        );
        assert_eq!(parse_content_range("bytes 5-4/10"), None);
        assert_eq!(parse_content_range("bytes 0-10/10"), None);
        assert_eq!(parse_content_range("bytes */10"), None);
    }
}
