//! The fill's I/O: the loop that runs passes inside the window, and a pass — scan the tiers,
//! [`plan`](super::plan), evict, download (peer first, then the origin behind the breaker)
//! under the rate cap, install verified objects. The data plane watches its tier directories
//! (inotify): an object renamed in is served and an evicted one dropped without a reload call,
//! so a pass never asks for one.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgeplane_api::{FillManifest, ManifestEntry};
use edgeplane_signing::{client_prefix, sign};
use futures::StreamExt;

use super::{Backoff, Breaker, BreakerState, Window};
use crate::agent::origin::{local_addr_towards, peer_get, ByteStream, OriginError};
use crate::agent::state::{now_unix, Agent};
use crate::agent::store::{self, Incoming, InstallError};

/// Why one object was not filled. Logged (`agent: fill <id>: …`); the object is retried with
/// backoff.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FillError {
    /// The manifest's tier is not one of the data plane's.
    #[error("manifest names unknown tier {0:?}")]
    UnknownTier(String),
    /// The manifest's id is not a valid content id.
    #[error("manifest names an invalid id {0:?}")]
    InvalidId(String),
    /// The source could not be reached or refused the object.
    #[error("{0}")]
    Source(#[source] OriginError),
    /// The source's body broke off.
    #[error("{from} stream: {source}")]
    Stream {
        from: &'static str,
        #[source]
        source: OriginError,
    },
    /// The source sent more bytes than the manifest's size.
    #[error("{from} sent more than the manifest's {size} bytes")]
    TooLong { from: &'static str, size: u64 },
    /// A peer's bytes fail the manifest's size or sha256 (the origin is tried next).
    #[error("peer sent bytes that fail the checksum")]
    PeerChecksum(#[source] InstallError),
    /// The origin's bytes fail the manifest's size or sha256.
    #[error("{0}")]
    Checksum(#[source] InstallError),
    /// Writing the temporary into the tier failed.
    #[error("{}: {source}", dir.display())]
    Local {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Syncing or renaming the verified object into place failed.
    #[error("{0}")]
    Install(#[source] std::io::Error),
}

/// Whose fault a failed download is: it decides what the breaker counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blame {
    /// The source failed (connection, HTTP status, stream error): counts against the origin.
    Source,
    /// The bytes arrived but are not the object the manifest names: the origin is up.
    Checksum,
    /// Our own disk or manifest.
    Local,
}

impl FillError {
    fn blame(&self) -> Blame {
        match self {
            FillError::Source(_) | FillError::Stream { .. } | FillError::PeerChecksum(_) => {
                Blame::Source
            }
            FillError::TooLong { .. } | FillError::Checksum(_) => Blame::Checksum,
            FillError::UnknownTier(_)
            | FillError::InvalidId(_)
            | FillError::Local { .. }
            | FillError::Install(_) => Blame::Local,
        }
    }
}

/// Per-object retry bookkeeping.
#[derive(Default, Clone, Copy)]
struct Retry {
    failures: u32,
    next: Option<Instant>,
}

/// Runs fill passes while the window is open and there is a manifest.
pub(crate) async fn fill_loop(agent: Arc<Agent>) {
    let window = Window::parse(&agent.cfg.fill.window).expect("validated");
    let mut manifest_rx = agent.manifest_changed.subscribe();
    let breaker = Arc::new(Mutex::new(Breaker::new(
        agent.cfg.fill.breaker_failures,
        Duration::from_secs(agent.cfg.fill.breaker_open_secs),
    )));
    let retries: Arc<Mutex<HashMap<String, Retry>>> = Arc::default();
    for t in &agent.dp.tiers {
        let path = t.path.clone();
        match tokio::task::spawn_blocking(move || store::sweep_temporaries(&path)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!("agent: tier {}: removed {n} unfinished downloads", t.name),
            Ok(Err(e)) => tracing::warn!("agent: tier {} ({}): {e}", t.name, t.path.display()),
            Err(e) => tracing::error!("agent: sweep task: {e}"),
        }
    }
    loop {
        let open = window.is_open(super::local_minute_now());
        agent.lock().window_open = open;
        let manifest = agent.lock().manifest.clone();
        let (Some(manifest), true) = (manifest, open) else {
            agent.lock().fill.state = "idle".into();
            tokio::select! {
                _ = manifest_rx.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            continue;
        };
        let pass = fill_pass(&agent, &manifest, &breaker, &retries, window).await;
        let wait = match pass {
            PassResult::Complete => Duration::from_secs(5),
            PassResult::Progress => Duration::ZERO,
            PassResult::Waiting(d) => d,
        };
        if !wait.is_zero() {
            tokio::select! {
                _ = manifest_rx.changed() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

enum PassResult {
    /// Everything wanted that fits is present.
    Complete,
    /// Something was installed or evicted: plan again at once.
    Progress,
    /// Nothing could be done now (breaker open, retries pending): try again after this.
    Waiting(Duration),
}

/// What the tiers hold, by tier name. A tier that cannot be read is left out (nothing is filled
/// onto it this pass).
pub(crate) async fn scan_tiers(agent: &Agent) -> BTreeMap<String, HashMap<String, super::Held>> {
    let mut held = BTreeMap::new();
    for t in &agent.dp.tiers {
        let path = t.path.clone();
        match tokio::task::spawn_blocking(move || store::scan(&path)).await {
            Ok(Ok(h)) => {
                held.insert(t.name.clone(), h);
            }
            Ok(Err(e)) => {
                tracing::warn!("agent: tier {} ({}): {e}", t.name, t.path.display());
            }
            Err(e) => tracing::error!("agent: scan task: {e}"),
        }
    }
    held
}

async fn fill_pass(
    agent: &Arc<Agent>,
    manifest: &FillManifest,
    breaker: &Arc<Mutex<Breaker>>,
    retries: &Arc<Mutex<HashMap<String, Retry>>>,
    window: Window,
) -> PassResult {
    let held = scan_tiers(agent).await;
    let plan = super::plan(manifest, &held, &agent.capacity, agent.cfg.fill.evict);
    {
        let mut s = agent.lock();
        s.fill.objects_wanted = manifest.objects.len() as u64;
        s.fill.objects_present = plan.present;
        s.fill.bytes_missing = plan.bytes_missing;
        s.fill.state = if plan.download.is_empty() && plan.relocate.is_empty() {
            "idle".into()
        } else {
            "filling".into()
        };
    }
    let mut changed = false;
    for (tier, id) in &plan.evict {
        let Ok(dir) = tier_dir(agent, tier) else {
            continue;
        };
        match store::evict(dir, id) {
            Ok(()) => {
                tracing::info!("agent: evicted {id} from {tier}");
                agent.lock().evicted += 1;
                changed = true;
            }
            Err(e) => tracing::warn!("agent: evicting {id} from {tier}: {e}"),
        }
    }
    if plan.download.is_empty() && plan.relocate.is_empty() {
        return if changed {
            PassResult::Progress
        } else {
            PassResult::Complete
        };
    }
    let now = Instant::now();
    // Relocations first: local copies, and a demotion frees room on the faster tier.
    let work = plan
        .relocate
        .into_iter()
        .map(|(from, entry)| Work::Relocate { from, entry })
        .chain(plan.download.into_iter().map(Work::Download));
    let due: Vec<Work> = {
        let r = retries.lock().unwrap_or_else(|e| e.into_inner());
        work.filter(|w| {
            r.get(&w.entry().object.id)
                .and_then(|x| x.next)
                .is_none_or(|t| t <= now)
        })
        .collect()
    };
    let installed = Arc::new(AtomicU64::new(0));
    let window_closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let replace: Arc<std::collections::HashSet<String>> =
        Arc::new(plan.replace.iter().cloned().collect());
    futures::stream::iter(due)
        .for_each_concurrent(agent.cfg.fill.concurrency, |work| {
            let agent = agent.clone();
            let breaker = breaker.clone();
            let retries = retries.clone();
            let installed = installed.clone();
            let window_closed = window_closed.clone();
            let replace = replace.clone();
            async move {
                let id = work.entry().object.id.clone();
                // The window is checked before each object, not only at the pass's start: at
                // its end the objects in flight finish and no new one starts.
                if window_closed.load(Ordering::Relaxed)
                    || !window.is_open(super::local_minute_now())
                {
                    window_closed.store(true, Ordering::Relaxed);
                    return;
                }
                let result = match work {
                    Work::Relocate { from, entry } => {
                        let moved = relocate(&agent, &from, &entry).await;
                        moved.map_err(Skip::Failed).map(|()| {
                            tracing::info!("agent: {id} moved from {from} to {}", entry.tier);
                            agent.lock().relocated += 1;
                        })
                    }
                    Work::Download(entry) => {
                        download(&agent, &entry, &breaker).await.map(|source| {
                            let mut s = agent.lock();
                            if replace.contains(&id) {
                                tracing::info!(
                                    "agent: {id}: new content (sha256 {}) swapped in",
                                    entry.object.sha256
                                );
                                s.content_replaced += 1;
                            }
                            *s.downloaded_objects.entry(source).or_default() += 1;
                            s.fill.objects_present += 1;
                            s.fill.bytes_missing =
                                s.fill.bytes_missing.saturating_sub(entry.object.size);
                            // The data plane's tier watch serves it from here on: no reload.
                        })
                    }
                };
                match result {
                    Ok(()) => {
                        retries
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&id);
                        installed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(Skip::BreakerOpen) => {}
                    Err(Skip::Failed(e)) => {
                        tracing::warn!("agent: fill {id}: {e}");
                        let backoff = Backoff {
                            base: Duration::from_millis(agent.cfg.fill.retry_base_ms),
                            max: Duration::from_millis(agent.cfg.fill.retry_max_ms),
                        };
                        let mut r = retries.lock().unwrap_or_else(|e| e.into_inner());
                        let x = r.entry(id).or_default();
                        x.failures += 1;
                        x.next = Some(Instant::now() + backoff.delay(x.failures));
                    }
                }
            }
        })
        .await;
    if window_closed.load(Ordering::Relaxed) {
        tracing::info!("agent: fill window closed during the pass; resuming when it opens");
        agent.lock().window_open = false;
        return PassResult::Waiting(Duration::from_secs(5));
    }
    let n = installed.load(Ordering::Relaxed);
    if n > 0 {
        return PassResult::Progress;
    }
    // Nothing installed: wait for the earliest retry or the breaker's probe.
    let now = Instant::now();
    let next_retry = retries
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .filter_map(|r| r.next)
        .min();
    let b = breaker.lock().unwrap_or_else(|e| e.into_inner());
    let mut wait = Duration::from_secs(1);
    for t in [next_retry, b.open_until()].into_iter().flatten() {
        if t > now {
            wait = wait.max(Duration::from_millis(100)).min(t - now);
        }
    }
    if b.state(now) == BreakerState::Open {
        agent.lock().fill.state = "blocked".into();
    }
    PassResult::Waiting(wait.max(Duration::from_millis(200)))
}

enum Skip {
    BreakerOpen,
    Failed(FillError),
}

/// One item of a pass.
enum Work {
    /// Fetch a missing (or changed) object.
    Download(ManifestEntry),
    /// Move a held object from tier `from` to `entry.tier`.
    Relocate { from: String, entry: ManifestEntry },
}

impl Work {
    fn entry(&self) -> &ManifestEntry {
        match self {
            Work::Download(e) | Work::Relocate { entry: e, .. } => e,
        }
    }
}

/// Moves a held object to the manifest's tier: copied into `<to>/.tmp-<id>` and verified
/// against the manifest like a download, renamed into place, then removed from `from` (the
/// data plane serves the copy it finds first meanwhile, so the object never stops serving).
/// A source copy whose bytes fail the manifest's digest has rotted: it is removed (the next
/// pass fetches the object again) and counted as a checksum failure.
async fn relocate(agent: &Agent, from: &str, entry: &ManifestEntry) -> Result<(), FillError> {
    use tokio::io::AsyncReadExt;
    let (src, dst) = (tier_dir(agent, from)?, tier_dir(agent, &entry.tier)?);
    let id = &entry.object.id;
    if !store::valid_id(id) {
        return Err(FillError::InvalidId(id.clone()));
    }
    let local = |dir: &Path| {
        let dir = dir.to_path_buf();
        move |source| FillError::Local { dir, source }
    };
    let mut file = tokio::fs::File::open(src.join(id))
        .await
        .map_err(local(src))?;
    let mut w = Incoming::create(dst, id).await.map_err(local(dst))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match file.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                w.abandon().await;
                return Err(local(src)(e));
            }
        };
        if let Err(e) = w.write(&buf[..n]).await {
            w.abandon().await;
            return Err(local(dst)(e));
        }
    }
    match w.install(&entry.object.sha256, entry.object.size).await {
        Ok(()) => {}
        Err(e @ InstallError::Mismatch { .. }) => {
            tracing::error!("agent: {id} on {from} fails its digest: removed, to be fetched again");
            agent.lock().fill.checksum_failures += 1;
            store::evict(src, id).map_err(local(src))?;
            return Err(FillError::Checksum(e));
        }
        Err(InstallError::Io(e)) => return Err(FillError::Install(e)),
    }
    store::evict(src, id).map_err(local(src))
}

/// The directory of the data plane's tier `name`.
fn tier_dir<'a>(agent: &'a Agent, name: &str) -> Result<&'a Path, FillError> {
    agent
        .dp
        .tiers
        .iter()
        .find(|t| t.name == name)
        .map(|t| t.path.as_path())
        .ok_or_else(|| FillError::UnknownTier(name.to_string()))
}

/// Downloads one object: from the manifest's peer first, then the origin (behind the breaker).
async fn download(
    agent: &Agent,
    entry: &ManifestEntry,
    breaker: &Mutex<Breaker>,
) -> Result<&'static str, Skip> {
    let id = &entry.object.id;
    let dir = tier_dir(agent, &entry.tier).map_err(Skip::Failed)?;
    if !store::valid_id(id) {
        return Err(Skip::Failed(FillError::InvalidId(id.clone())));
    }
    if let Some(peer) = &entry.peer {
        match peer_url(agent, peer, id) {
            Some(url) => match peer_get(&agent.peer_http, &url).await {
                Ok(stream) => match receive(agent, dir, entry, stream, "peer").await {
                    Ok(()) => return Ok("peer"),
                    Err(e) => {
                        tracing::info!("agent: fill {id} from peer {peer}: {e}; trying the origin")
                    }
                },
                Err(e) => tracing::info!("agent: fill {id}: {e}; trying the origin"),
            },
            None => tracing::debug!("agent: no key to sign a peer URL; using the origin"),
        }
        *agent.lock().failures.entry("peer").or_default() += 1;
    }
    let set_state = |b: &Breaker| {
        agent.lock().breaker = match b.state(Instant::now()) {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        };
    };
    {
        let mut b = breaker.lock().unwrap_or_else(|e| e.into_inner());
        let ok = b.allow(Instant::now());
        set_state(&b);
        if !ok {
            return Err(Skip::BreakerOpen);
        }
    }
    let result = match agent.origin.get(id).await {
        Ok(stream) => receive(agent, dir, entry, stream, "origin").await,
        Err(e) => Err(FillError::Source(e)),
    };
    let mut b = breaker.lock().unwrap_or_else(|e| e.into_inner());
    let out = match result {
        Ok(()) => {
            b.success();
            Ok("origin")
        }
        Err(e) => match e.blame() {
            // The origin answered, with the wrong bytes: not an origin outage.
            Blame::Checksum => {
                b.success();
                agent.lock().fill.checksum_failures += 1;
                tracing::error!("agent: fill {id}: rejected: {e}");
                Err(Skip::Failed(e))
            }
            Blame::Local => Err(Skip::Failed(e)),
            Blame::Source => {
                let was = b.state(Instant::now());
                b.failure(Instant::now());
                if was == BreakerState::Closed && b.state(Instant::now()) == BreakerState::Open {
                    tracing::error!("agent: origin breaker open after repeated failures: {e}");
                }
                *agent.lock().failures.entry("origin").or_default() += 1;
                Err(Skip::Failed(e))
            }
        },
    };
    set_state(&b);
    out
}

/// A URL for `id` at a peer appliance, signed with our own key for our own address.
fn peer_url(agent: &Agent, peer: &str, id: &str) -> Option<String> {
    let s = agent.lock();
    let key = s.keys.signing_key(now_unix())?;
    let me = local_addr_towards(peer)?;
    let pfx = client_prefix(me, 32, 128);
    Some(format!(
        "{}/{id}?{}",
        peer.trim_end_matches('/'),
        sign(key, id, now_unix() + 300, pfx)
    ))
}

/// Streams `stream` into `<dir>/.tmp-<id>` under the rate cap, then verifies and installs it.
async fn receive(
    agent: &Agent,
    dir: &Path,
    entry: &ManifestEntry,
    mut stream: ByteStream,
    from: &'static str,
) -> Result<(), FillError> {
    let id = &entry.object.id;
    let local = |source| FillError::Local {
        dir: dir.to_path_buf(),
        source,
    };
    let mut w = Incoming::create(dir, id).await.map_err(local)?;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(source) => {
                w.abandon().await;
                return Err(FillError::Stream { from, source });
            }
        };
        if w.len() + chunk.len() as u64 > entry.object.size {
            w.abandon().await;
            return Err(FillError::TooLong {
                from,
                size: entry.object.size,
            });
        }
        agent.rate.take(chunk.len() as u64).await;
        if let Err(e) = w.write(&chunk).await {
            w.abandon().await;
            return Err(local(e));
        }
        *agent.lock().downloaded_bytes.entry(from).or_default() += chunk.len() as u64;
    }
    match w.install(&entry.object.sha256, entry.object.size).await {
        Ok(()) => Ok(()),
        Err(e @ InstallError::Mismatch { .. }) if from == "peer" => Err(FillError::PeerChecksum(e)),
        Err(e @ InstallError::Mismatch { .. }) => Err(FillError::Checksum(e)),
        Err(InstallError::Io(e)) => Err(FillError::Install(e)),
    }
}

/// A shared download rate cap: each chunk reserves its share of time.
pub(crate) struct RateLimiter {
    bytes_per_sec: u64,
    next: Mutex<Instant>,
}

impl RateLimiter {
    /// A cap of `bytes_per_sec` (0: no cap).
    pub(crate) fn new(bytes_per_sec: u64) -> RateLimiter {
        RateLimiter {
            bytes_per_sec,
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits until `bytes` may go.
    async fn take(&self, bytes: u64) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let start = self.reserve(bytes, Instant::now());
        tokio::time::sleep_until(start.into()).await;
    }

    /// Reserves the time `bytes` take at the cap, after what was reserved before; returns when
    /// they may start.
    fn reserve(&self, bytes: u64, now: Instant) -> Instant {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        // Unused time does not accumulate beyond a quarter second of burst.
        let start = (*next).max(now.checked_sub(Duration::from_millis(250)).unwrap_or(now));
        *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_cap_spaces_chunks_by_their_size() {
        let r = RateLimiter::new(1_000_000);
        let t0 = Instant::now();
        // Back to back: each 100 kB waits for the 100 ms the one before takes.
        let starts: Vec<Instant> = (0..4).map(|_| r.reserve(100_000, t0)).collect();
        assert_eq!(starts[1] - starts[0], Duration::from_millis(100));
        assert_eq!(starts[3] - starts[0], Duration::from_millis(300));
        // After a long idle time the next chunks go at once, up to a quarter second's worth
        // (250 kB): idle time is not saved up beyond that.
        let later = t0 + Duration::from_secs(10);
        let burst: Vec<Instant> = (0..4).map(|_| r.reserve(100_000, later)).collect();
        assert_eq!(burst[0], later - Duration::from_millis(250));
        assert!(burst[2] <= later && burst[3] > later, "{burst:?}");
        assert_eq!(burst[3] - later, Duration::from_millis(50));
    }

    #[test]
    fn blame_decides_what_the_breaker_counts() {
        let mismatch = || InstallError::Mismatch {
            got: "00".into(),
            got_len: 1,
            want: "11".into(),
            want_len: 2,
        };
        let io = || std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let too_long = FillError::TooLong {
            from: "origin",
            size: 10,
        };
        assert_eq!(too_long.blame(), Blame::Checksum);
        assert_eq!(
            too_long.to_string(),
            "origin sent more than the manifest's 10 bytes"
        );
        assert_eq!(FillError::Checksum(mismatch()).blame(), Blame::Checksum);
        // A peer's wrong bytes are the peer's fault; the origin is tried next.
        let peer = FillError::PeerChecksum(mismatch());
        assert_eq!(peer.blame(), Blame::Source);
        assert_eq!(peer.to_string(), "peer sent bytes that fail the checksum");
        assert!(std::error::Error::source(&peer).is_some());
        let local = FillError::Local {
            dir: "/srv/flash".into(),
            source: io(),
        };
        assert_eq!(local.blame(), Blame::Local);
        assert_eq!(local.to_string(), "/srv/flash: permission denied");
        assert_eq!(FillError::Install(io()).blame(), Blame::Local);
        assert_eq!(
            FillError::UnknownTier("ssd".into()).to_string(),
            "manifest names unknown tier \"ssd\""
        );
    }
}
