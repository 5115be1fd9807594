//! Process-wide state: what every executor shares with the others, the admin thread and the
//! tier watcher ([`Shared`]: the config in effect, the catalog, the counters, the connection
//! caps, the stop flag), and the reload that swaps its live parts.
//!
//! The bottom of the runtime: it imports no other runtime file but the pure reload plan.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;

use super::reload;
use crate::catalog::{Catalog, SharedCatalog};
use crate::config::{Config, ConfigError};
use crate::metrics::{Metrics, Rejection};

/// What every executor shares with the others and with the admin thread.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The config in effect; SIGHUP and `POST /reload` swap in the live part of a new file.
    pub(crate) config: arc_swap::ArcSwap<Config>,
    /// The file it came from (`None`: nothing to re-read).
    pub(crate) config_path: Option<std::path::PathBuf>,
    /// Per-tier counters have room for this many tiers (tiers added by a reload must fit).
    pub(crate) tier_capacity: usize,
    pub(crate) catalog: Arc<SharedCatalog>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) limits: Arc<ConnLimits>,
    /// Set once on SIGTERM/SIGINT (and `POST /drain`): stop accepting, finish in-flight
    /// responses, exit.
    pub(crate) stop: AtomicBool,
    /// The HTTPS listener's TLS setup, when `[https]` is configured.
    pub(crate) https: Option<Https>,
    /// The XDP filter, when `[xdp]` is configured (running, or why not).
    pub(crate) xdp: Option<Arc<edgeplane_xdp::XdpService>>,
    /// Signing keys and served prefixes, swapped on reload.
    pub(crate) access: Arc<crate::access::Access>,
    /// Wakes the tier watcher when serving hits an I/O error.
    pub(crate) tier_watch: TierWatch,
    /// SIGHUP and `POST /reload` may race; reloads run one at a time.
    pub(crate) reload_lock: Mutex<()>,
    /// Where executors and each tier's cold reads run (decided once at start; a tier a reload
    /// adds reads unbound).
    pub(crate) placement: crate::placement::Plan,
    /// Pull-through, when `[upstream]` is configured.
    pub(crate) pull: Option<Arc<crate::pull::Puller>>,
}

/// What every executor's HTTPS listener hands its handshakes.
#[derive(Debug)]
pub(crate) struct Https {
    /// One rustls configuration for the life of the process (session cache, ticket keys).
    pub(crate) config: Arc<rustls::ServerConfig>,
    /// Its certificates, swapped on reload.
    pub(crate) resolver: Arc<crate::tls::CertResolver>,
    /// Hand connections to kernel TLS after the handshake (decided once at start).
    pub(crate) kernel: bool,
}

/// What a reload did.
pub(crate) struct Reloaded {
    /// `None` without a config file; else the keys waiting for a restart, or why the new file
    /// was not applied (the running config stays).
    pub(crate) config: Option<Result<Vec<String>, ConfigError>>,
    /// `Ok`: the rescanned catalog; `Err`: the current one, kept (no rescan was needed).
    pub(crate) catalog: Result<Arc<Catalog>, Arc<Catalog>>,
    /// Signing keys and served prefixes.
    pub(crate) access: crate::access::AccessReload,
    /// `None` without HTTPS; `Some(Err)` when the certificates could not be read (the previous
    /// ones stay in use).
    pub(crate) certificates: Option<Result<(), ConfigError>>,
}

/// Whether a reload rescans the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rescan {
    /// SIGHUP and `POST /reload`: an operator's reload also rebuilds the catalog from the tiers.
    Always,
    /// `POST /reload?rescan=0` (the agent's, for new signing keys or prefixes): only when the
    /// reloaded config changed the tiers. The tier watch keeps the catalog current otherwise, and
    /// a rescan costs seconds of CPU at millions of objects and resets the change feed.
    IfTiersChanged,
}

impl Shared {
    /// SIGHUP and `POST /reload`: re-read the config file (applying what can change live),
    /// the signing keys and prefixes files, rescan the tiers and re-read the TLS certificates.
    /// New handshakes use the new certificates; open connections keep what they negotiated.
    pub(crate) fn reload(&self, rescan: Rescan) -> Reloaded {
        let _one_at_a_time = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let tiers_before = self.catalog.tier_configs();
        let config = self
            .config_path
            .as_ref()
            .map(|path| self.reload_config(path));
        let access = self.access.reload();
        let catalog = if rescan == Rescan::Always || self.catalog.tier_configs() != tiers_before {
            Ok(self.catalog.reload())
        } else {
            Err(self.catalog.snapshot())
        };
        let certificates = self.https.as_ref().map(|https| {
            let result = https.resolver.reload();
            match &result {
                Ok(()) => tracing::info!("TLS certificates reloaded"),
                Err(e) => tracing::error!(
                    "TLS certificates not reloaded, the previous ones stay in use: {e}"
                ),
            }
            self.metrics.cert_reload(result.is_ok());
            result
        });
        Reloaded {
            config,
            catalog,
            access,
            certificates,
        }
    }

    /// Loads the config file and swaps in its live part; the caller rescans and re-reads the
    /// files it names.
    fn reload_config(&self, path: &std::path::Path) -> Result<Vec<String>, ConfigError> {
        let new = match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("config not reloaded, the running config stays in effect: {e}");
                self.metrics.config_reload(false);
                return Err(e);
            }
        };
        let old = self.config.load_full();
        let plan = reload::plan(&old, new, self.tier_capacity);
        for line in &plan.restart {
            tracing::warn!("{line}");
        }
        let new = plan.config;
        if let (Some(https), Some(h)) = (&self.https, &new.https) {
            https.resolver.reconfigure(h.clone());
        }
        self.access.reconfigure(&new);
        self.catalog.set_tiers(new.tiers.clone());
        self.config.store(Arc::new(new));
        self.metrics.config_reload(true);
        tracing::info!(path = %path.display(), "config reloaded");
        Ok(plan.restart)
    }
}

/// Process-wide connection caps. Taken once per accepted connection, never per request.
#[derive(Debug)]
pub(crate) struct ConnLimits {
    max_total: usize,
    max_per_client: usize,
    total: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

impl ConnLimits {
    pub(crate) fn new(max_total: usize, max_per_client: usize) -> ConnLimits {
        ConnLimits {
            max_total,
            max_per_client,
            total: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a new connection from `ip`, or says which cap it is over.
    pub(crate) fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnGuard, Rejection> {
        if self.total.fetch_add(1, Ordering::Relaxed) >= self.max_total {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Rejection::MaxConnections);
        }
        let mut per = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let n = per.entry(ip).or_insert(0);
        if *n >= self.max_per_client {
            drop(per);
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Rejection::PerClient);
        }
        *n += 1;
        Ok(ConnGuard {
            limits: self.clone(),
            ip,
        })
    }
}

/// Releases a connection's place in [`ConnLimits`] when dropped.
#[derive(Debug)]
pub(crate) struct ConnGuard {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.limits.total.fetch_sub(1, Ordering::Relaxed);
        let mut per = self
            .limits
            .per_client
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.ip);
            }
        }
    }
}

/// An open client connection: its place under the connection caps ([`ConnGuard`]) and in its
/// core's `edgeplane_open_connections` gauge, both given back when it is dropped — whichever
/// task or parked entry holds it last (`runtime::conn`, `runtime::tls`, `runtime::park`).
#[derive(Debug)]
pub(crate) struct Admitted {
    _guard: ConnGuard,
    metrics: Arc<Metrics>,
    core: usize,
}

impl Admitted {
    /// Counts `guard`'s connection as open on `core`.
    pub(crate) fn new(guard: ConnGuard, metrics: Arc<Metrics>, core: usize) -> Admitted {
        metrics.core(core).connection(1);
        Admitted {
            _guard: guard,
            metrics,
            core,
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.metrics.core(self.core).connection(-1);
    }
}

/// The handle executors use to wake the watcher.
#[derive(Debug, Default)]
pub(crate) struct TierWatch {
    thread: OnceLock<Thread>,
    /// A check was asked for and has not started: further pokes cost one atomic swap.
    pending: AtomicBool,
}

impl TierWatch {
    /// Called once by the watcher thread: pokes wake it from now on.
    pub(crate) fn attach(&self) {
        let _ = self.thread.set(std::thread::current());
    }

    /// Called by the watcher as a check starts: pokes from now on ask for the next one.
    pub(crate) fn checking(&self) {
        self.pending.store(false, Ordering::Release);
    }

    /// Asks for a check now (cheap; repeated pokes before the check coalesce).
    pub(crate) fn poke(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn connection_caps_are_taken_at_accept_and_given_back_on_drop() {
        let limits = Arc::new(ConnLimits::new(3, 2));
        let a1 = limits.acquire(ip(1)).unwrap();
        let a2 = limits.acquire(ip(1)).unwrap();
        assert!(matches!(limits.acquire(ip(1)), Err(Rejection::PerClient)));
        let b1 = limits.acquire(ip(2)).unwrap();
        // Over the total: refused whoever asks, and the refusal takes no place.
        assert!(matches!(
            limits.acquire(ip(3)),
            Err(Rejection::MaxConnections)
        ));
        assert_eq!(limits.total.load(Ordering::Relaxed), 3);
        drop(a1);
        let a3 = limits.acquire(ip(1)).unwrap();
        drop((a2, a3, b1));
        assert_eq!(limits.total.load(Ordering::Relaxed), 0);
        // Clients with no connection left are forgotten.
        assert!(limits.per_client.lock().unwrap().is_empty());
    }

    #[test]
    fn tier_watch_pokes_coalesce_until_a_check_starts() {
        let watch = TierWatch::default();
        // Before the watcher thread is there, pokes are only remembered.
        watch.poke();
        assert!(watch.pending.load(Ordering::Acquire));
        watch.attach();
        watch.checking();
        assert!(!watch.pending.load(Ordering::Acquire));
        // A poke unparks the watcher (this thread): park_timeout returns at once.
        watch.poke();
        let start = std::time::Instant::now();
        std::thread::park_timeout(std::time::Duration::from_secs(10));
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        assert!(watch.pending.load(Ordering::Acquire));
    }
}
