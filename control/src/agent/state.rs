//! What the agent's tasks share: the configuration and clients ([`Agent`]) and the state the
//! tasks update and the status listener reads ([`Shared`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use edgeplane_api::{FillManifest, FillStatus};
use edgeplane_signing::KeySet;
use ipnet::IpNet;
use tokio::sync::watch;

use super::config::AgentConfig;
use super::dataplane::{AdminClient, Dataplane};
use super::fill::pass::RateLimiter;
use super::origin::Origin;

/// Everything the tasks share; small, behind one mutex, never held across an await.
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) keys: KeySet,
    pub(crate) manifest: Option<FillManifest>,
    pub(crate) fill: FillStatus,
    pub(crate) window_open: bool,
    /// The origin breaker's state: `closed`, `open` or `half_open`.
    pub(crate) breaker: &'static str,
    /// By source (`origin`, `peer`).
    pub(crate) downloaded_bytes: BTreeMap<&'static str, u64>,
    /// By source (`origin`, `peer`).
    pub(crate) downloaded_objects: BTreeMap<&'static str, u64>,
    /// Failed downloads by source (`origin`, `peer`).
    pub(crate) failures: BTreeMap<&'static str, u64>,
    pub(crate) evicted: u64,
    /// Objects moved to the tier their manifest entry names.
    pub(crate) relocated: u64,
    /// Stored objects re-read and checked against their SHA-256.
    pub(crate) verified: u64,
    /// Of those, the ones whose bytes had changed on disk (removed and filled again).
    pub(crate) bit_rot: u64,
    /// Objects replaced because the manifest named new content under their id.
    pub(crate) content_replaced: u64,
    /// Manifests refused, by reason (`empty`, `evict_fraction`).
    pub(crate) manifests_refused: BTreeMap<&'static str, u64>,
    /// The last refused manifest's (epoch, generation): not fetched again.
    pub(crate) refused: Option<(String, u64)>,
    /// Download rate over the last second, bits per second.
    pub(crate) rate_bps: f64,
    /// Configured ∪ assigned ∪ BGP.
    pub(crate) served: BTreeSet<IpNet>,
    /// Prefixes the BGP speaker accepted.
    pub(crate) bgp: BTreeSet<IpNet>,
    /// Prefixes the control service assigns.
    pub(crate) assigned: BTreeSet<IpNet>,
    pub(crate) health_ok: u64,
    /// Health reports that carried the full held list (the control service asked for it).
    pub(crate) held_full_sent: u64,
    /// Full listings of the data plane's catalog (at start, and when its feed reset).
    pub(crate) catalog_listings: u64,
    /// Changes applied from the data plane's catalog feed.
    pub(crate) catalog_changes: u64,
    pub(crate) health_err: u64,
    /// The last failed call to the control service, for `/status`.
    pub(crate) last_error: Option<String>,
    /// The BGP speaker's sessions (or its start error), for `/status`.
    pub(crate) bgp_status: Option<serde_json::Value>,
}

/// The agent: its configuration, clients, and the shared state.
pub(crate) struct Agent {
    pub(crate) cfg: AgentConfig,
    pub(crate) secret: String,
    pub(crate) dp: Dataplane,
    /// For the control service and the data plane's admin listener (30 s per call).
    pub(crate) http: reqwest::Client,
    /// For peer fill: no total timeout (an object streams as long as it takes under the rate
    /// cap), but 30 s without a byte ends it.
    pub(crate) peer_http: reqwest::Client,
    pub(crate) admin: AdminClient,
    pub(crate) origin: Origin,
    pub(crate) shared: Mutex<Shared>,
    /// Wakes the prefix task.
    pub(crate) prefixes_changed: watch::Sender<()>,
    /// Wakes the fill task (new manifest).
    pub(crate) manifest_changed: watch::Sender<()>,
    /// The fill's download rate cap.
    pub(crate) rate: RateLimiter,
    /// Bytes the fill may use, by tier name.
    pub(crate) capacity: BTreeMap<String, u64>,
}

impl Agent {
    /// The shared state (a poisoned lock is taken anyway: the state stays usable).
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
