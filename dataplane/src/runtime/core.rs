//! One executor's state ([`Core`]): the open-file cache, the date cache, the latency recorder,
//! the read-deadline sweeper and the residency rule. Nothing in it is shared with another
//! thread except through the process-wide [`Shared`] (atomic counters, the connection caps
//! taken at accept, the stop flag). Connections get an `Rc<Core>`; the executor that owns it
//! (`runtime::executor`) is above it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::shared::Shared;
use super::sys;
use crate::catalog::OpenObject;
use crate::config::{Config, TierKind};
use crate::http::request;
use crate::metrics::{CoreMetrics, LocalLatency, Timeout};

/// One executor's state.
pub(crate) struct Core {
    pub(crate) index: usize,
    pub(crate) shared: Arc<Shared>,
    pub(crate) latency: RefCell<LocalLatency>,
    /// Responses in flight on this core.
    pub(crate) busy: Cell<usize>,
    /// Set when the process is shutting down: responses say `Connection: close`.
    pub(crate) stopping: Cell<bool>,
    files: RefCell<FileCache>,
    date: Cell<(u64, [u8; 29])>,
    epoch: Instant,
    deadlines: RefCell<slab::Slab<Rc<Deadline>>>,
}

/// A connection's read deadline, in core-local milliseconds (0 = not reading).
pub(crate) struct Deadline {
    fd: std::os::fd::RawFd,
    at_ms: Cell<u64>,
    kind: Cell<Timeout>,
    fired: Cell<Option<Timeout>>,
    /// When the idle read in progress should give its connection up for parking (core-local
    /// ms; 0 = not parkable), and whether the sweeper asked for it.
    park_at_ms: Cell<u64>,
    park: Cell<bool>,
    /// The reading task, woken when the sweeper asks it to park.
    park_waker: Cell<Option<std::task::Waker>>,
}

/// A connection's registration with the sweeper; unregisters on drop.
pub(crate) struct DeadlineGuard {
    deadline: Rc<Deadline>,
    key: usize,
    core: std::rc::Weak<Core>,
}

impl DeadlineGuard {
    /// Expect the read in progress to finish by `at_ms`, or be ended as `kind`.
    pub(crate) fn arm(&self, at_ms: u64, kind: Timeout) {
        self.deadline.kind.set(kind);
        self.deadline.at_ms.set(at_ms.max(1));
    }

    /// No read in progress.
    pub(crate) fn disarm(&self) {
        self.deadline.at_ms.set(0);
        self.deadline.park_at_ms.set(0);
    }

    /// The idle read in progress may be given up at `at_ms` so the connection can be parked
    /// (call after [`Self::arm`]).
    pub(crate) fn arm_park(&self, at_ms: u64) {
        self.deadline.park.set(false);
        self.deadline.park_at_ms.set(at_ms.max(1));
    }

    /// The idle read's deadline (core-local ms), for a connection being parked.
    pub(crate) fn at_ms(&self) -> u64 {
        self.deadline.at_ms.get()
    }

    /// Resolves when the sweeper asks this connection's idle read to give up for parking.
    pub(crate) fn parked(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.deadline.park.get() {
                return std::task::Poll::Ready(());
            }
            let waker = match self.deadline.park_waker.take() {
                Some(w) if w.will_wake(cx.waker()) => w,
                _ => cx.waker().clone(),
            };
            self.deadline.park_waker.set(Some(waker));
            std::task::Poll::Pending
        })
    }

    /// Which timeout the sweeper enforced, if it did.
    pub(crate) fn fired(&self) -> Option<Timeout> {
        self.deadline.fired.get()
    }
}

impl Drop for DeadlineGuard {
    fn drop(&mut self) {
        if let Some(core) = self.core.upgrade() {
            core.deadlines.borrow_mut().try_remove(self.key);
        }
    }
}

/// Granularity of the per-core "recently confirmed resident" marks.
pub(crate) const RESIDENT_BLOCK: u64 = 64 * 1024;
/// How long a residency confirmation is trusted. A page evicted inside this window costs one
/// blocking `sendfile` on its core; under memory pressure the kernel evicts the least recently
/// used pages, and these were just confirmed and are about to be sent.
pub(crate) const RESIDENT_TTL: Duration = Duration::from_millis(500);

struct FileCache {
    generation: u64,
    capacity: usize,
    map: HashMap<Box<str>, Rc<OpenObject>>,
}

impl Core {
    pub(crate) fn new(index: usize, shared: Arc<Shared>) -> Core {
        let config = shared.config.load_full();
        Core {
            index,
            latency: RefCell::default(),
            busy: Cell::new(0),
            stopping: Cell::new(false),
            files: RefCell::new(FileCache {
                generation: 0,
                capacity: config.io.open_file_cache,
                map: HashMap::new(),
            }),
            date: Cell::new((0, [b' '; 29])),
            epoch: Instant::now(),
            deadlines: RefCell::new(slab::Slab::new()),
            shared,
        }
    }

    /// The config in effect (a reload may swap it between two calls).
    pub(crate) fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.shared.config.load()
    }

    /// Request-head limits from the config in effect.
    pub(crate) fn request_limits(&self) -> request::Limits {
        let l = &self.config().limits;
        request::Limits {
            max_header_bytes: l.max_header_bytes,
            max_headers: l.max_headers,
            max_uri_bytes: l.max_uri_bytes,
        }
    }

    /// This core's counters.
    pub(crate) fn metrics(&self) -> &CoreMetrics {
        self.shared.metrics.core(self.index)
    }

    /// `Date` value, formatted once per second.
    pub(crate) fn date(&self) -> [u8; 29] {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let (cached_secs, cached) = self.date.get();
        if cached_secs == secs {
            return cached;
        }
        let mut text = [b' '; 29];
        let formatted = httpdate::fmt_http_date(now);
        let n = formatted.len().min(29);
        text[..n].copy_from_slice(&formatted.as_bytes()[..n]);
        self.date.set((secs, text));
        text
    }

    /// Unix seconds as of the last [`Core::date`] (called once per request before it is
    /// answered), so signature expiry is checked without another clock read.
    pub(crate) fn unix_now(&self) -> u64 {
        match self.date.get().0 {
            0 => {
                self.date();
                self.date.get().0
            }
            secs => secs,
        }
    }

    /// Counts an I/O error serving from `tier` and asks the tier watcher to check the tiers now.
    pub(crate) fn tier_io_error(&self, tier: usize, e: &io::Error) {
        self.metrics()
            .tier_io_error(tier, crate::metrics::TierIoError::of(e));
        self.shared.tier_watch.poke();
    }

    /// The open object for `id`, from this core's cache or freshly opened. `Ok(None)` when the
    /// catalog has no such id. Storage-tier opens (a directory lookup may seek) run on the
    /// blocking pool.
    pub(crate) async fn open(&self, id: &str) -> io::Result<Option<Rc<OpenObject>>> {
        let (entry, path, generation, kind, tier) = {
            let catalog = self.shared.catalog.load();
            let mut files = self.files.borrow_mut();
            if files.generation != catalog.generation {
                files.map.clear();
                files.generation = catalog.generation;
            }
            // The catalog is asked on every request, cache hit or not: a cached file is served
            // only while its entry is the one it was opened for (same stamp and tier), so a
            // deleted or replaced object stops being served as soon as the watcher publishes
            // the change.
            let Some(entry) = catalog.get(id) else {
                files.map.remove(id);
                return Ok(None);
            };
            if let Some(obj) = files.map.get(id) {
                if obj.stamp == entry.stamp && obj.tier == usize::from(entry.tier) {
                    return Ok(Some(obj.clone()));
                }
                files.map.remove(id);
            }
            (
                entry,
                catalog.path(id, &entry),
                catalog.generation,
                catalog.tiers[usize::from(entry.tier)].kind,
                usize::from(entry.tier),
            )
        };
        let opened = if kind == TierKind::Storage && self.config().io.residency_check {
            let id = id.to_owned();
            glommio::executor()
                .spawn_blocking(move || OpenObject::open(&id, &path, &entry, generation))
                .await
        } else {
            OpenObject::open(id, &path, &entry, generation)
        };
        let obj = match opened {
            Ok(obj) => Rc::new(obj),
            // A symlink swapped in after the scan: not an object, not a disk problem.
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Gone since the scan: evicted (the watcher drops it) or the tier vanished.
                self.tier_io_error(tier, &e);
                return Ok(None);
            }
            Err(e) => {
                self.tier_io_error(tier, &e);
                return Err(e);
            }
        };
        let mut files = self.files.borrow_mut();
        if files.generation == generation {
            if files.map.len() >= files.capacity {
                // Cheap bounded eviction: drop an arbitrary eighth.
                let victims: Vec<Box<str>> = files
                    .map
                    .keys()
                    .take(files.capacity / 8 + 1)
                    .cloned()
                    .collect();
                for v in victims {
                    files.map.remove(&v);
                }
            }
            files.map.insert(id.into(), obj.clone());
        }
        Ok(Some(obj))
    }

    /// Whether `obj[start..start+len]` is in the page cache. Asks the kernel (`cachestat`) only
    /// for 64 KiB blocks not confirmed resident in the last [`RESIDENT_TTL`]; a confirmation
    /// covers whole blocks, so the next requests for the same hot segment skip the syscall.
    pub(crate) fn known_resident(&self, obj: &OpenObject, start: u64, len: u64) -> bool {
        let now = self.clock_ms();
        let first = start / RESIDENT_BLOCK;
        let last = (start + len - 1) / RESIDENT_BLOCK;
        let blocks = obj.resident_until.get(first as usize..=last as usize);
        if let Some(blocks) = blocks {
            if blocks.iter().all(|b| b.get() > now) {
                return true;
            }
            let span_start = first * RESIDENT_BLOCK;
            let span_end = ((last + 1) * RESIDENT_BLOCK).min(obj.size);
            let map = obj.map.as_deref().unwrap_or(&[]);
            if sys::resident(&*obj.file, map, span_start, span_end - span_start).unwrap_or(false) {
                let until = now + RESIDENT_TTL.as_millis() as u32;
                blocks.iter().for_each(|b| b.set(until));
                return true;
            }
        }
        let map = obj.map.as_deref().unwrap_or(&[]);
        sys::resident(&*obj.file, map, start, len).unwrap_or(false)
    }

    /// Registers a connection with this core's deadline sweeper.
    pub(crate) fn register_deadline(self: &Rc<Self>, fd: std::os::fd::RawFd) -> DeadlineGuard {
        let deadline = Rc::new(Deadline {
            fd,
            at_ms: Cell::new(0),
            kind: Cell::new(Timeout::Idle),
            fired: Cell::new(None),
            park_at_ms: Cell::new(0),
            park: Cell::new(false),
            park_waker: Cell::new(None),
        });
        let key = self.deadlines.borrow_mut().insert(deadline.clone());
        DeadlineGuard {
            deadline,
            key,
            core: Rc::downgrade(self),
        }
    }

    /// `at` as core-local milliseconds for [`DeadlineGuard::arm`].
    pub(crate) fn deadline_ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64 + 1
    }

    /// Ends every read whose deadline has passed: marks it and shuts the socket's read side,
    /// so the pending read completes with EOF and the connection answers 408 or closes. This
    /// replaces a timer per read (measured: ~5% of CPU at 64 KiB ranges) with one task per core.
    /// It also asks idle reads past `io.park_idle_after_ms` to give their connections up for
    /// parking (`runtime::park`). Returns the time it swept at (core-local ms).
    pub(crate) fn sweep_deadlines(&self) -> u64 {
        let now = self.deadline_ms(Instant::now());
        for (_, d) in self.deadlines.borrow().iter() {
            let at = d.at_ms.get();
            if at != 0 && at <= now && d.fired.get().is_none() {
                d.fired.set(Some(d.kind.get()));
                // SAFETY: shutdown(2) on a descriptor owned by a live connection (it
                // unregisters before closing); integer arguments only.
                unsafe { libc::shutdown(d.fd, libc::SHUT_RD) };
                continue;
            }
            // A timeout due at the same sweep wins over parking (above).
            let park_at = d.park_at_ms.get();
            if park_at != 0 && park_at <= now && !d.park.get() && d.fired.get().is_none() {
                d.park.set(true);
                if let Some(w) = d.park_waker.take() {
                    w.wake();
                }
            }
        }
        now
    }

    /// How often the sweeper runs: a quarter of the shortest read timeout (half the park
    /// delay, if shorter), 10 ms to 1 s.
    pub(crate) fn sweep_interval(&self) -> Duration {
        let config = self.config();
        let l = &config.limits;
        let mut every = l.header_read_timeout().min(l.idle_timeout()) / 4;
        if let Some(park) = config.io.park_idle_after() {
            every = every.min(park / 2);
        }
        every.clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// Milliseconds since this core started (wraps after 49 days; only compared over a TTL).
    fn clock_ms(&self) -> u32 {
        // Never 0, so a zeroed entry always reads as "not confirmed".
        (self.epoch.elapsed().as_millis() as u32)
            .wrapping_add(1)
            .max(1)
    }

    /// The residency rule every transport applies before touching a body chunk: unless
    /// `io.residency_check` is off, a range not known to be in the page cache is read in on the
    /// blocking pool first, so the executor never waits on a disk.
    pub(crate) async fn ensure_resident(
        &self,
        obj: &OpenObject,
        start: u64,
        len: u64,
    ) -> io::Result<()> {
        if self.config().io.residency_check && !self.known_resident(obj, start, len) {
            self.read_in(obj, start, len).await?;
        }
        Ok(())
    }

    /// Reads `obj[start..start+len]` into the page cache on the blocking pool.
    pub(crate) async fn read_in(&self, obj: &OpenObject, start: u64, len: u64) -> io::Result<()> {
        let file = obj.file.clone();
        self.metrics().cold_read(obj.tier, len);
        // The tier's disk node (crate::placement): the blocking thread moves there first.
        let cpus: Arc<[usize]> = {
            let catalog = self.shared.catalog.load();
            let name = catalog.tiers.get(obj.tier).map_or("", |t| t.name.as_str());
            self.shared.placement.cold_cpus(name).into()
        };
        glommio::executor()
            .spawn_blocking(move || {
                sys::bind_thread_to(&cpus);
                sys::lower_thread_priority();
                sys::read_into_cache(&file, start, len)
            })
            .await
    }
}
