//! The service's state: fleet registry, catalog, fill manifests, signing keys, counters. Every
//! operation is synchronous and takes its time from the injected [`Clock`]; the server holds
//! the state behind a mutex and calls it on blocking threads.
//!
//! The [`Store`] is the truth; this is its cache. Every change is written to the store first;
//! [`CloudState::sync`] (called before each request) reads the store's change counters and
//! reloads what another instance (or an earlier run) changed, so a restarted service steers at
//! once and several instances on one PostgreSQL answer alike.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgeplane_signing::{valid_key_id, KeySet, SigningKey};
use serde::{Deserialize, Serialize};

use crate::cloud::clock::Clock;
use crate::cloud::config::CloudConfig;
use crate::cloud::demand::FleetDemand;
use crate::cloud::fleet::ApplianceRecord;
use crate::cloud::held::HeldBook;
use crate::cloud::placement::place;
use crate::cloud::popularity::{day_of, Popularity, RankedObject};
use crate::cloud::steering::{steer, SteerCache, SteerError, SteerParams};
use crate::cloud::store::{Store, StoreError};
use edgeplane_api::{
    Catalog, FillManifest, Fleet, HealthAck, HealthReport, HeldReport, HeldView, LocationKind,
    ManifestEntry, Registration, RegistrationAck, Role, Steering,
};

/// An API-level failure; the server maps each to a status code and answers with the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 401.
    #[error("{0}")]
    Unauthorized(String),
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 409.
    #[error("{0}")]
    Conflict(String),
    /// 500.
    #[error("{0}")]
    Internal(String),
    /// 503: the store cannot be reached now (the client may retry).
    #[error("{0}")]
    Unavailable(String),
}

/// A signing key without its secret: what `POST /v1/keys/rotate` answers with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    /// Key id.
    pub id: String,
    /// Unix seconds after which URLs under it are refused.
    pub not_after: u64,
}

/// The public part of the key set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeySet {
    /// Every key that may still verify; the signing key is the one with the greatest
    /// `not_after`.
    pub keys: Vec<PublicKey>,
}

/// Counters for `GET /metrics`.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// Accepted registrations.
    pub registrations: u64,
    /// Accepted health reports.
    pub health_reports: u64,
    /// Bytes of accepted health report bodies.
    pub health_report_bytes: u64,
    /// Requests refused for a wrong or missing secret or token.
    pub auth_failures: u64,
    /// Steering answers by their first location (`embedded`, `ix`, `origin`) or failure
    /// (`unknown_title`, `bad_request`, `error`).
    pub steering: HashMap<&'static str, u64>,
    /// Key rotations (scheduled and forced).
    pub rotations: u64,
    /// Manifests served.
    pub manifests: u64,
}

/// The ranking for (catalog version, day).
type CachedRanking = ((u64, u64), Arc<Vec<RankedObject>>);

/// A computed plan, shared by every appliance that gets the same one.
struct Plan {
    /// The ranking it was placed from (held so its address identifies it while cached).
    ranking: Arc<Vec<RankedObject>>,
    entries: Vec<ManifestEntry>,
    digest: String,
}

/// What a plan depends on: the ranking (by identity: a new catalog, day or site demand
/// blend is a new `Arc`), the tiers (as JSON) and the peer URL.
type PlanKey = (usize, String, Option<String>);

/// Plans cached by their inputs, and per appliance the plan its stored generation is for.
#[derive(Default)]
struct PlanCache {
    plans: HashMap<PlanKey, Arc<Plan>>,
    /// Per appliance: its last plan and that plan's generation in the store.
    generations: HashMap<String, (Arc<Plan>, u64)>,
}

impl From<StoreError> for StateError {
    fn from(e: StoreError) -> StateError {
        match e {
            StoreError::Unavailable { .. } => StateError::Unavailable(format!("store: {e}")),
            e => StateError::Internal(format!("store: {e}")),
        }
    }
}

/// The whole state.
pub struct CloudState {
    cfg: CloudConfig,
    clock: Arc<dyn Clock>,
    popularity: Popularity,
    fleet: Vec<ApplianceRecord>,
    /// `fleet`'s index by appliance id (the provisioned set is fixed at start).
    fleet_index: HashMap<String, usize>,
    catalog: Catalog,
    catalog_version: u64,
    /// The ranking for (catalog version, day), computed once.
    ranking: Option<CachedRanking>,
    keys: KeySet,
    next_rotation: u64,
    store: Arc<Store>,
    /// The store's `keys` counter the cached key set belongs to.
    keys_version: u64,
    /// The highest appliance change read from the store.
    fleet_seq: u64,
    /// Per appliance, the sequence number of the change the record reflects.
    applied: HashMap<String, u64>,
    /// Steering's indexes and the load it sent since each appliance's last report.
    steer_cache: SteerCache,
    /// The appliances' held sets: digests and the full-list protocol (`cloud::held`).
    held: HeldBook,
    /// Per appliance, the store change of the held set this instance has (`HeldMeta::changed`).
    held_loaded: HashMap<String, u64>,
    /// The fleet's reported demand per site (`cloud::demand`).
    demand: FleetDemand,
    /// Plans and generations, so a health report recomputes no placement (`manifest_inner`).
    plans: PlanCache,
    /// When [`CloudState::sync`] last read the store (monotonic; `None`: never).
    synced_at: Option<Instant>,
    /// Bumped at every mutable access to `fleet` (steering's cache skips its per-appliance
    /// comparison while it stays the same: `SteerCache::set_fleet_stamp`).
    fleet_stamp: u64,
    /// Counters.
    pub counters: Counters,
}

/// Why a catalog is refused (`PUT /v1/catalog` answers 400 with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// A title id that is empty or longer than 200 bytes.
    #[error("title id {0:?} must be 1 to 200 bytes")]
    TitleId(String),
    /// Two titles with one id.
    #[error("title {0:?} appears twice")]
    DuplicateTitle(String),
    /// A rendition with an empty name.
    #[error("title {0:?} has a rendition without a name")]
    UnnamedRendition(String),
    /// An object id outside the content-id rule.
    #[error("object id {id:?} (title {title:?}) must match [A-Za-z0-9._-]{{1,200}} and not start with '.'")]
    ObjectId {
        /// The object id.
        id: String,
        /// Its title.
        title: String,
    },
    /// A sha256 that is not 64 lowercase hex digits.
    #[error("object {0:?}: sha256 must be 64 lowercase hex digits")]
    Sha256(String),
    /// Two objects with one id.
    #[error("object id {0:?} appears twice")]
    DuplicateObject(String),
}

/// Checks a catalog before it replaces the current one.
pub fn validate_catalog(catalog: &Catalog) -> Result<(), CatalogError> {
    let mut titles = HashSet::new();
    let mut objects = HashSet::new();
    for t in &catalog.titles {
        if t.id.is_empty() || t.id.len() > 200 {
            return Err(CatalogError::TitleId(t.id.clone()));
        }
        if !titles.insert(t.id.as_str()) {
            return Err(CatalogError::DuplicateTitle(t.id.clone()));
        }
        for r in &t.renditions {
            if r.name.is_empty() {
                return Err(CatalogError::UnnamedRendition(t.id.clone()));
            }
            for o in &r.objects {
                if !valid_object_id(&o.id) {
                    return Err(CatalogError::ObjectId {
                        id: o.id.clone(),
                        title: t.id.clone(),
                    });
                }
                if o.sha256.len() != 64
                    || !o
                        .sha256
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                {
                    return Err(CatalogError::Sha256(o.id.clone()));
                }
                if !objects.insert(o.id.as_str()) {
                    return Err(CatalogError::DuplicateObject(o.id.clone()));
                }
            }
        }
    }
    Ok(())
}

pub use edgeplane_api::valid_content_id as valid_object_id;

/// Why a registration is refused (answered with 400 and this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistrationError {
    /// No base URL.
    #[error("urls must list at least one base URL")]
    NoUrls,
    /// A base URL that is not http(s).
    #[error("url {0:?} must start with http:// or https://")]
    Url(String),
    /// Two tiers with one name.
    #[error("tier {0:?} appears twice")]
    DuplicateTier(String),
}

fn validate_registration(r: &Registration) -> Result<(), RegistrationError> {
    if r.urls.is_empty() {
        return Err(RegistrationError::NoUrls);
    }
    for u in &r.urls {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(RegistrationError::Url(u.clone()));
        }
    }
    let mut names = HashSet::new();
    for t in &r.tiers {
        if !names.insert(t.name.as_str()) {
            return Err(RegistrationError::DuplicateTier(t.name.clone()));
        }
    }
    Ok(())
}

fn random_secret() -> [u8; 32] {
    let mut secret = [0u8; 32];
    rand::fill(&mut secret);
    secret
}

impl CloudState {
    /// A state for `cfg` on a private in-memory store (tests and benches; nothing survives).
    pub fn new(cfg: CloudConfig, clock: Arc<dyn Clock>) -> CloudState {
        CloudState::open(cfg, clock, Arc::new(Store::memory())).expect("a fresh in-memory store")
    }

    /// The state for `cfg` on `store`: provisioned appliances with what the store knows of
    /// them, the stored catalog, and the stored keys plus the configured ones (or one new key
    /// when none signs now).
    pub fn open(
        cfg: CloudConfig,
        clock: Arc<dyn Clock>,
        store: Arc<Store>,
    ) -> Result<CloudState, StateError> {
        let now = clock.now();
        let mut state = CloudState {
            popularity: Popularity::from(&cfg.popularity),
            fleet: cfg
                .appliances
                .iter()
                .map(ApplianceRecord::provisioned)
                .collect(),
            fleet_index: cfg
                .appliances
                .iter()
                .enumerate()
                .map(|(i, a)| (a.id.clone(), i))
                .collect(),
            catalog: Catalog::default(),
            catalog_version: 0,
            ranking: None,
            keys: KeySet::default(),
            next_rotation: now + cfg.signing.rotate_secs,
            store,
            keys_version: u64::MAX,
            fleet_seq: 0,
            applied: HashMap::new(),
            steer_cache: SteerCache::new(&cfg.sites),
            held: HeldBook::default(),
            held_loaded: HashMap::new(),
            demand: FleetDemand::new(
                cfg.popularity.demand_weight,
                cfg.popularity.demand_half_life_secs,
            ),
            plans: PlanCache::default(),
            synced_at: None,
            fleet_stamp: 0,
            counters: Counters::default(),
            cfg,
            clock,
        };
        state.sync()?;
        // Configured keys join the stored set; a key is made when none signs now.
        loop {
            let stored = state.store.keys()?;
            let mut keys = KeySet {
                keys: stored.keys.clone(),
            };
            for k in &state.cfg.signing.keys {
                if !keys.keys.iter().any(|s| s.id == k.id) {
                    keys.keys.push(k.clone());
                }
            }
            keys.prune(now);
            let mut next = stored
                .next_rotation
                .unwrap_or(now + state.cfg.signing.rotate_secs);
            if keys.signing_key(now).is_none() {
                state.new_key(&mut keys, now);
                next = now + state.cfg.signing.rotate_secs;
            }
            if keys.keys == stored.keys && stored.next_rotation == Some(next) {
                state.load_keys(stored.version, keys, next);
                break;
            }
            if let Some(v) = state.store.replace_keys(stored.version, &keys.keys, next)? {
                state.load_keys(v, keys, next);
                break;
            }
        }
        Ok(state)
    }

    /// The store's epoch (see [`Store::epoch`]).
    pub fn epoch(&self) -> &str {
        self.store.epoch()
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn load_keys(&mut self, version: u64, mut keys: KeySet, next_rotation: u64) {
        keys.prune(self.now());
        self.keys = keys;
        self.keys_version = version;
        self.next_rotation = next_rotation;
    }

    /// Reads what changed in the store since the last call: catalog, appliance registrations
    /// and health, keys. One small query when nothing changed.
    pub fn sync(&mut self) -> Result<(), StateError> {
        let started = Instant::now();
        let v = self.store.versions()?;
        if v.catalog != self.catalog_version {
            if let Some((version, catalog)) = self.store.catalog()? {
                self.catalog = catalog;
                self.catalog_version = version;
            }
        }
        if v.fleet > self.fleet_seq {
            for row in self.store.appliances_since(self.fleet_seq)? {
                self.fleet_seq = self.fleet_seq.max(row.seq);
                let applied = self.applied.get(&row.id).copied().unwrap_or(0);
                if row.seq <= applied {
                    continue;
                }
                let Some(&i) = self.fleet_index.get(&row.id) else {
                    // No longer provisioned here.
                    continue;
                };
                self.fleet_stamp += 1;
                let rec = &mut self.fleet[i];
                rec.registration = row.registration;
                match row.health {
                    Some((report, at)) => rec.set_health(report, at),
                    None => {
                        rec.health = None;
                        rec.held.clear();
                        rec.held_changed();
                    }
                }
                // Another instance (or this one before a restart) changed the held set: reload
                // that appliance's set only.
                if let Some(meta) = &row.held {
                    let loaded = self.held_loaded.get(&row.id).copied().unwrap_or(0);
                    if meta.changed > loaded {
                        if let Some((meta, objects)) = self.store.held_set(&row.id)? {
                            rec.held = objects.into_iter().collect();
                            rec.held_changed();
                            self.held.load(&row.id, meta.seq, &meta.digest, &rec.held);
                            self.held_loaded.insert(row.id.clone(), meta.changed);
                        }
                    }
                }
                self.applied.insert(row.id, row.seq);
            }
        }
        if v.keys != self.keys_version {
            let stored = self.store.keys()?;
            let next = stored.next_rotation.unwrap_or(self.next_rotation);
            self.load_keys(stored.version, KeySet { keys: stored.keys }, next);
        }
        self.synced_at = Some(started);
        Ok(())
    }

    /// Whether a read-only request (steering, content steering, a play manifest) must go
    /// through the store first: the last [`CloudState::sync`] began `[store] sync_interval_ms`
    /// ago or longer (or never ran), or a key rotation is due (it writes). When false the
    /// request may answer from memory: this instance's own writes are in it already, other
    /// instances' are at most the interval old.
    pub fn store_due(&self) -> bool {
        let interval = Duration::from_millis(self.cfg.store.sync_interval_ms);
        let stale = self
            .synced_at
            .is_none_or(|at| interval.is_zero() || at.elapsed() >= interval);
        stale || self.now() >= self.next_rotation
    }

    /// Adds a new signing key at `now` to `keys`, capping the others at `now + url_ttl`.
    fn new_key(&self, keys: &mut KeySet, now: u64) {
        let ttl = self.cfg.signing.url_ttl_secs;
        for k in &mut keys.keys {
            k.not_after = k.not_after.min(now + ttl);
        }
        let id = loop {
            let id = format!("k{now}-{:08x}", rand::random::<u32>());
            if !keys.keys.iter().any(|k| k.id == id) {
                break id;
            }
        };
        debug_assert!(valid_key_id(&id));
        keys.keys.push(SigningKey {
            id,
            secret: random_secret(),
            not_after: now + self.cfg.signing.rotate_secs + ttl,
        });
        keys.prune(now);
    }

    /// The configuration.
    pub fn config(&self) -> &CloudConfig {
        &self.cfg
    }

    /// Now, from the clock.
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Rotates the keys if a rotation is due (once across instances: the store decides).
    pub fn tick(&mut self) -> Result<(), StateError> {
        let now = self.now();
        if now >= self.next_rotation {
            self.rotate(false)?;
        }
        self.keys.prune(now);
        Ok(())
    }

    /// Starts a new signing key now. Older keys stay valid until `now + url_ttl` at most (URLs
    /// signed before the rotation stay valid until they expire); the new one signs for
    /// `rotate_secs` and verifies for `url_ttl` longer.
    pub fn rotate_keys(&mut self) -> Result<PublicKeySet, StateError> {
        self.rotate(true)?;
        Ok(self.public_keys())
    }

    /// Rotates against the stored key set (compare-and-set, retried); unless `forced`, not when
    /// another instance rotated already.
    fn rotate(&mut self, forced: bool) -> Result<(), StateError> {
        loop {
            let now = self.now();
            let stored = self.store.keys()?;
            let next = stored.next_rotation.unwrap_or(0);
            if !forced && now < next {
                self.load_keys(stored.version, KeySet { keys: stored.keys }, next);
                return Ok(());
            }
            let mut keys = KeySet { keys: stored.keys };
            self.new_key(&mut keys, now);
            let next = now + self.cfg.signing.rotate_secs;
            if let Some(v) = self.store.replace_keys(stored.version, &keys.keys, next)? {
                self.load_keys(v, keys, next);
                self.counters.rotations += 1;
                return Ok(());
            }
        }
    }

    /// Every key that may still verify, secrets included (for appliances).
    pub fn keys(&self) -> &KeySet {
        &self.keys
    }

    /// The key ids and expiries.
    pub fn public_keys(&self) -> PublicKeySet {
        PublicKeySet {
            keys: self
                .keys
                .keys
                .iter()
                .map(|k| PublicKey {
                    id: k.id.clone(),
                    not_after: k.not_after,
                })
                .collect(),
        }
    }

    /// Where appliance `id` is in `fleet`.
    fn index(&self, id: &str) -> Result<usize, StateError> {
        self.fleet_index
            .get(id)
            .copied()
            .ok_or_else(|| StateError::NotFound(format!("unknown appliance {id:?}")))
    }

    fn record(&self, id: &str) -> Result<&ApplianceRecord, StateError> {
        Ok(&self.fleet[self.index(id)?])
    }

    fn record_mut(&mut self, id: &str) -> Result<&mut ApplianceRecord, StateError> {
        let i = self.index(id)?;
        self.fleet_stamp += 1;
        Ok(&mut self.fleet[i])
    }

    /// Checks an appliance's bearer secret: 404 for an unknown id, 401 for a wrong or missing
    /// secret. Constant-time in the secret.
    pub fn authenticate(&mut self, id: &str, bearer: Option<&str>) -> Result<(), StateError> {
        let ok = {
            let rec = self.record(id)?;
            bearer.is_some_and(|b| ct_eq(b.as_bytes(), rec.secret.as_bytes()))
        };
        if ok {
            Ok(())
        } else {
            self.counters.auth_failures += 1;
            Err(StateError::Unauthorized(format!(
                "wrong or missing bearer secret for appliance {id:?}"
            )))
        }
    }

    /// Checks the admin token.
    pub fn authenticate_admin(&mut self, bearer: Option<&str>) -> Result<(), StateError> {
        if bearer.is_some_and(|b| ct_eq(b.as_bytes(), self.cfg.admin_token.as_bytes())) {
            Ok(())
        } else {
            self.counters.auth_failures += 1;
            Err(StateError::Unauthorized(
                "wrong or missing admin bearer token".into(),
            ))
        }
    }

    /// The prefixes `[[appliance]] prefixes` assigns to `id`.
    fn assigned_prefixes(&self, id: &str) -> Vec<ipnet::IpNet> {
        self.cfg
            .appliances
            .iter()
            .find(|a| a.id == id)
            .map(|a| a.prefixes.iter().map(|p| p.trunc()).collect())
            .unwrap_or_default()
    }

    /// Records a registration (authenticated already).
    pub fn register(&mut self, id: &str, reg: Registration) -> Result<RegistrationAck, StateError> {
        validate_registration(&reg).map_err(|e| StateError::BadRequest(e.to_string()))?;
        self.tick()?;
        self.record(id)?;
        let seq = self.store.put_registration(id, &reg)?;
        self.record_mut(id)?.registration = Some(reg);
        self.applied.insert(id.to_owned(), seq);
        self.counters.registrations += 1;
        Ok(RegistrationAck {
            health_interval_secs: self.cfg.health.interval_secs,
            signing_keys: self.keys.keys.clone(),
            prefixes: self.assigned_prefixes(id),
        })
    }

    /// Records a health report (authenticated already). The appliance must have registered.
    pub fn health(&mut self, id: &str, report: HealthReport) -> Result<HealthAck, StateError> {
        self.tick()?;
        let now = self.now();
        let mut report = report;
        if let Some(h) = &report.held {
            crate::cloud::held::validate(h).map_err(StateError::BadRequest)?;
        }
        let i = self.index(id)?;
        self.fleet_stamp += 1;
        let rec = &mut self.fleet[i];
        let Some(site) = rec.registration.as_ref().map(|r| r.site.clone()) else {
            return Err(StateError::Conflict(format!(
                "appliance {id:?} must register before reporting health"
            )));
        };
        // The held set: applied here; the stored report keeps only its digest and count.
        let held = match report.held.take() {
            Some(h) => {
                let summary = HeldReport {
                    seq: h.seq,
                    count: h.count,
                    digest: h.digest.clone(),
                    ..HeldReport::default()
                };
                let changed = h.full.is_some() || !h.added.is_empty() || !h.removed.is_empty();
                // What the store must write (cloned before `apply` consumes the report; as
                // large as the change, not the set).
                let change = changed.then(|| (h.full.clone(), h.added.clone(), h.removed.clone()));
                let answer = self.held.apply(id, &mut rec.held, h);
                if changed {
                    rec.held_changed();
                }
                report.held = Some(summary);
                Some((answer, change))
            }
            None => None,
        };
        // A change the service accepted (its digest matched) is stored with the report; a
        // rejected one is not (the stored set stays the last confirmed one).
        let write = match &held {
            Some((answer, Some(change))) if answer.seq.is_some() => self
                .held
                .confirmed(id)
                .map(|(seq, d)| (seq, d.count(), d.hex(), change)),
            _ => None,
        };
        let write = write
            .as_ref()
            .map(
                |(seq, count, digest, (full, added, removed))| crate::cloud::store::HeldWrite {
                    change: match full {
                        Some(full) => crate::cloud::store::HeldChange::Full(full),
                        None => crate::cloud::store::HeldChange::Delta { added, removed },
                    },
                    seq: *seq,
                    count: *count,
                    digest,
                },
            );
        let answer = held.as_ref().map(|(a, _)| *a);
        self.demand.record(&site, &report.demand, now);
        let seq = self
            .store
            .put_health_held(id, &report, now, write.as_ref())?;
        if write.is_some() {
            self.held_loaded.insert(id.to_owned(), seq);
        }
        self.fleet_stamp += 1;
        let rec = &mut self.fleet[i];
        rec.set_health(report, now);
        if answer.is_none() {
            self.held.legacy(id, &rec.held);
        }
        self.applied.insert(id.to_owned(), seq);
        // Nothing was written between the last change this instance has seen and its own
        // (sequence numbers come from one counter): the next sync need not read it back.
        if seq == self.fleet_seq + 1 {
            self.fleet_seq = seq;
        }
        self.counters.health_reports += 1;
        // The generation only: the plan's entries are cloned when the manifest is asked for.
        let (_, manifest_generation) = self.plan(id)?;
        Ok(HealthAck {
            signing_keys: self.keys.keys.clone(),
            manifest_generation,
            prefixes: self.assigned_prefixes(id),
            epoch: self.store.epoch().to_owned(),
            held_seq: answer.and_then(|h| h.seq),
            send_full: answer.is_some_and(|h| h.send_full),
        })
    }

    /// What the service believes appliance `id` holds (admin).
    pub fn held(&self, id: &str) -> Result<HeldView, StateError> {
        let rec = self.record(id)?;
        Ok(self.held.view(id, &rec.held))
    }

    /// The fleet's reported demand at `site`, highest score first.
    pub fn site_demand(&self, site: &str) -> Vec<(String, f64)> {
        self.demand.scores(site)
    }

    /// The fill manifest of an appliance (authenticated already). The appliance must have
    /// registered (its tiers size the plan).
    pub fn manifest(&mut self, id: &str) -> Result<FillManifest, StateError> {
        if self.record(id)?.registration.is_none() {
            return Err(StateError::Conflict(format!(
                "appliance {id:?} must register before asking for a manifest"
            )));
        }
        self.counters.manifests += 1;
        self.manifest_inner(id)
    }

    fn ranking(&mut self) -> Arc<Vec<RankedObject>> {
        let key = (self.catalog_version, day_of(self.now()));
        match &self.ranking {
            Some((k, r)) if *k == key => r.clone(),
            _ => {
                let r = Arc::new(self.popularity.rank_objects(&self.catalog, key.1));
                self.ranking = Some((key, r.clone()));
                r
            }
        }
    }

    /// The peer base URL for `id`'s tiered fill: its configured peer's first URL when that peer
    /// is registered and in steering.
    fn peer_url(&self, id: &str) -> Option<String> {
        let now = self.now();
        let rec = self.record(id).ok()?;
        let peer = self.record(rec.peer.as_deref()?).ok()?;
        if !peer.in_steering(now, &self.cfg.health) {
            return None;
        }
        peer.base_url().map(str::to_owned)
    }

    fn manifest_inner(&mut self, id: &str) -> Result<FillManifest, StateError> {
        let (plan, generation) = self.plan(id)?;
        Ok(FillManifest {
            generation,
            objects: plan.entries.clone(),
            epoch: self.store.epoch().to_owned(),
        })
    }

    /// The plan of `id` and its generation. Placement runs only when an input changed (the
    /// ranking, the tiers or the peer); appliances with equal inputs share one plan; the store
    /// is asked for the generation only when the appliance's plan is a different one.
    fn plan(&mut self, id: &str) -> Result<(Arc<Plan>, u64), StateError> {
        let prior = self.ranking();
        let peer = self.peer_url(id);
        let (tiers, site) = self
            .record(id)?
            .registration
            .as_ref()
            .map(|r| (r.tiers.clone(), r.site.clone()))
            .unwrap_or_default();
        // The site's real demand beside the prior (the prior itself when none was reported).
        let key = (self.catalog_version, day_of(self.now()));
        let now = self.now();
        let ranking = self
            .demand
            .ranking(&site, &prior, key, now, self.cfg.health.interval_secs);
        let tiers_key = serde_json::to_string(&tiers).expect("serializable");
        let plan_key = (Arc::as_ptr(&ranking) as usize, tiers_key, peer);
        let plan = match self.plans.plans.get(&plan_key) {
            Some(p) if Arc::ptr_eq(&p.ranking, &ranking) => p.clone(),
            _ => {
                let entries = place(&ranking, &tiers, plan_key.2.as_deref());
                let digest = plan_digest(&entries);
                let plan = Arc::new(Plan {
                    ranking,
                    entries,
                    digest,
                });
                // Forget plans of rankings nobody else holds any more (old catalog, day or
                // blend) before adding the new one.
                if self.plans.plans.len() >= 64 {
                    self.plans
                        .plans
                        .retain(|_, p| Arc::strong_count(&p.ranking) > 1);
                }
                self.plans.plans.insert(plan_key, plan.clone());
                plan
            }
        };
        if let Some((p, g)) = self.plans.generations.get(id) {
            if Arc::ptr_eq(p, &plan) || p.digest == plan.digest {
                let g = *g;
                self.plans
                    .generations
                    .insert(id.to_owned(), (plan.clone(), g));
                return Ok((plan, g));
            }
        }
        let generation = self.store.manifest_generation(id, &plan.digest)?;
        self.plans
            .generations
            .insert(id.to_owned(), (plan.clone(), generation));
        Ok((plan, generation))
    }

    /// Replaces the catalog (admin).
    pub fn set_catalog(&mut self, catalog: Catalog) -> Result<(), StateError> {
        validate_catalog(&catalog).map_err(|e| StateError::BadRequest(e.to_string()))?;
        self.catalog_version = self.store.put_catalog(&catalog)?;
        self.catalog = catalog;
        Ok(())
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The object ids of a title, or `None` when the catalog has no such title.
    pub fn title_objects(&self, title: &str) -> Option<Vec<String>> {
        self.catalog.titles.iter().find(|t| t.id == title).map(|t| {
            t.renditions
                .iter()
                .flat_map(|r| r.objects.iter().map(|o| o.id.clone()))
                .collect()
        })
    }

    /// The fleet view.
    pub fn fleet(&self) -> Fleet {
        let now = self.now();
        Fleet {
            appliances: self
                .fleet
                .iter()
                .map(|a| a.view(now, &self.cfg.health))
                .collect(),
        }
    }

    /// The appliance records, in config order.
    pub fn records(&self) -> &[ApplianceRecord] {
        &self.fleet
    }

    /// Appliances in steering now, by role.
    pub fn in_steering_by_role(&self) -> [(Role, usize); 2] {
        let now = self.now();
        let count = |role: Role| {
            self.fleet
                .iter()
                .filter(|a| {
                    a.registration.as_ref().is_some_and(|r| r.role == role)
                        && a.in_steering(now, &self.cfg.health)
                })
                .count()
        };
        [
            (Role::Embedded, count(Role::Embedded)),
            (Role::Ix, count(Role::Ix)),
        ]
    }

    /// Counts a steering outcome.
    pub fn count_steering(&mut self, outcome: &'static str) {
        *self.counters.steering.entry(outcome).or_default() += 1;
    }

    /// Steers a new viewer, `client`, to `title`; `origin_base` is the control service's
    /// `<public url>/v1/origin` (the origin location redirects through it).
    pub fn steer(
        &mut self,
        client: IpAddr,
        title: &str,
        origin_base: &str,
    ) -> Result<Steering, StateError> {
        self.steer_as(client, title, origin_base, true)
    }

    /// [`CloudState::steer`], for a viewer that is new (`new_viewer`: its load counts against
    /// the first location until that appliance reports) or already playing (a content steering
    /// reload: the appliance reports its load).
    pub fn steer_as(
        &mut self,
        client: IpAddr,
        title: &str,
        origin_base: &str,
        new_viewer: bool,
    ) -> Result<Steering, StateError> {
        self.tick()?;
        let now = self.now();
        let params = SteerParams {
            health: &self.cfg.health,
            signing: &self.cfg.signing,
            max_locations: self.cfg.steering.max_locations,
            viewer_bps: self.cfg.steering.viewer_bps,
            origin_base,
            new_viewer,
        };
        self.steer_cache.set_fleet_stamp(self.fleet_stamp);
        let result = steer(
            &mut self.steer_cache,
            &self.fleet,
            &self.catalog,
            self.catalog_version,
            &self.keys,
            &params,
            client,
            title,
            now,
        );
        match result {
            Ok(s) => {
                let outcome = match s.locations.first().map(|l| l.kind) {
                    Some(LocationKind::Embedded) => "embedded",
                    Some(LocationKind::Ix) => "ix",
                    _ => "origin",
                };
                self.count_steering(outcome);
                Ok(s)
            }
            Err(e @ SteerError::UnknownTitle(_)) => {
                self.count_steering("unknown_title");
                Err(StateError::NotFound(e.to_string()))
            }
            Err(e @ (SteerError::NoKey | SteerError::NoIdPrefix(_))) => {
                self.count_steering("error");
                Err(StateError::Internal(e.to_string()))
            }
        }
    }

    /// Prometheus text exposition of the counters and gauges.
    pub fn metrics_text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let c = &self.counters;
        let _ = writeln!(s, "# HELP edgeplane_cloud_appliances_provisioned Appliances in the config.\n# TYPE edgeplane_cloud_appliances_provisioned gauge\nedgeplane_cloud_appliances_provisioned {}", self.fleet.len());
        let registered = self
            .fleet
            .iter()
            .filter(|a| a.registration.is_some())
            .count();
        let _ = writeln!(s, "# HELP edgeplane_cloud_appliances_registered Appliances that registered.\n# TYPE edgeplane_cloud_appliances_registered gauge\nedgeplane_cloud_appliances_registered {registered}");
        let _ = writeln!(s, "# HELP edgeplane_cloud_appliances_in_steering Appliances steering uses now.\n# TYPE edgeplane_cloud_appliances_in_steering gauge");
        for (role, n) in self.in_steering_by_role() {
            let role = match role {
                Role::Embedded => "embedded",
                Role::Ix => "ix",
            };
            let _ = writeln!(
                s,
                "edgeplane_cloud_appliances_in_steering{{role=\"{role}\"}} {n}"
            );
        }
        let _ = writeln!(s, "# HELP edgeplane_cloud_registrations_total Accepted registrations.\n# TYPE edgeplane_cloud_registrations_total counter\nedgeplane_cloud_registrations_total {}", c.registrations);
        let _ = writeln!(s, "# HELP edgeplane_cloud_health_reports_total Accepted health reports.\n# TYPE edgeplane_cloud_health_reports_total counter\nedgeplane_cloud_health_reports_total {}", c.health_reports);
        let _ = writeln!(s, "# HELP edgeplane_cloud_auth_failures_total Requests refused for a wrong or missing secret.\n# TYPE edgeplane_cloud_auth_failures_total counter\nedgeplane_cloud_auth_failures_total {}", c.auth_failures);
        let _ = writeln!(s, "# HELP edgeplane_cloud_health_report_bytes_total Bytes of accepted health report bodies.\n# TYPE edgeplane_cloud_health_report_bytes_total counter\nedgeplane_cloud_health_report_bytes_total {}", c.health_report_bytes);
        let h = &self.held.counters;
        let _ = writeln!(s, "# HELP edgeplane_cloud_held_full_lists_total Health reports that carried an appliance's full held list.\n# TYPE edgeplane_cloud_held_full_lists_total counter\nedgeplane_cloud_held_full_lists_total {}", h.full_lists);
        let _ = writeln!(s, "# HELP edgeplane_cloud_held_full_requests_total Answers that asked an appliance for its full held list (its digest differed, or the service had no view).\n# TYPE edgeplane_cloud_held_full_requests_total counter\nedgeplane_cloud_held_full_requests_total {}", h.full_requests);
        let _ = writeln!(s, "# HELP edgeplane_cloud_held_deltas_total Health reports whose held-set changes were applied and matched the digest.\n# TYPE edgeplane_cloud_held_deltas_total counter\nedgeplane_cloud_held_deltas_total {}", h.deltas);
        let _ = writeln!(s, "# HELP edgeplane_cloud_demand_entries_total Per-object demand entries taken from health reports.\n# TYPE edgeplane_cloud_demand_entries_total counter\nedgeplane_cloud_demand_entries_total {}", self.demand.entries);
        let _ = writeln!(s, "# HELP edgeplane_cloud_demand_sites Sites with reported demand.\n# TYPE edgeplane_cloud_demand_sites gauge\nedgeplane_cloud_demand_sites {}", self.demand.sites());
        let _ = writeln!(s, "# HELP edgeplane_cloud_manifests_total Fill manifests served.\n# TYPE edgeplane_cloud_manifests_total counter\nedgeplane_cloud_manifests_total {}", c.manifests);
        let _ = writeln!(s, "# HELP edgeplane_cloud_key_rotations_total Signing key rotations.\n# TYPE edgeplane_cloud_key_rotations_total counter\nedgeplane_cloud_key_rotations_total {}", c.rotations);
        let _ = writeln!(s, "# HELP edgeplane_cloud_signing_keys Signing keys that still verify.\n# TYPE edgeplane_cloud_signing_keys gauge\nedgeplane_cloud_signing_keys {}", self.keys.keys.len());
        let titles = self.catalog.titles.len();
        let _ = writeln!(s, "# HELP edgeplane_cloud_catalog_titles Titles in the catalog.\n# TYPE edgeplane_cloud_catalog_titles gauge\nedgeplane_cloud_catalog_titles {titles}");
        let _ = writeln!(s, "# HELP edgeplane_cloud_steering_requests_total Steering requests by outcome (first location, or failure).\n# TYPE edgeplane_cloud_steering_requests_total counter");
        for outcome in [
            "embedded",
            "ix",
            "origin",
            "unknown_title",
            "bad_request",
            "error",
        ] {
            let n = c.steering.get(outcome).copied().unwrap_or(0);
            let _ = writeln!(
                s,
                "edgeplane_cloud_steering_requests_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
        s
    }
}

/// SHA-256 of a plan's JSON, hex: equal plans, equal digests.
fn plan_digest(entries: &[ManifestEntry]) -> String {
    use sha2::{Digest, Sha256};
    let json = serde_json::to_vec(entries).expect("serializable");
    hex::encode(Sha256::digest(&json))
}

/// Constant-time equality (the length is not secret).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::clock::ManualClock;
    use edgeplane_api::{ObjectInfo, Rendition, TierCapacity, TierKind, Title};
    use edgeplane_signing::{client_prefix, sign};

    const T0: u64 = 1_800_000_000;

    fn config() -> CloudConfig {
        CloudConfig::from_toml(
            r#"
listen = "127.0.0.1:0"
admin_token = "adm"
[origin]
bucket = "b"
[[appliance]]
id = "emb"
secret = "s-emb"
peer = "ix"
[[appliance]]
id = "ix"
secret = "s-ix"
[health]
interval_secs = 1
missed_limit = 3
[signing]
url_ttl_secs = 100
rotate_secs = 1000
"#,
        )
        .unwrap()
    }

    fn state() -> (CloudState, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(T0));
        (CloudState::new(config(), clock.clone()), clock)
    }

    fn reg(role: Role, flash: u64, storage: u64) -> Registration {
        Registration {
            role,
            site: "s".into(),
            urls: vec!["http://a:1".into()],
            prefixes: vec![],
            tiers: vec![
                TierCapacity {
                    name: "hdd".into(),
                    kind: TierKind::Storage,
                    capacity_bytes: storage,
                },
                TierCapacity {
                    name: "nvme".into(),
                    kind: TierKind::Flash,
                    capacity_bytes: flash,
                },
            ],
            max_bps: 1_000,
            version: "0".into(),
        }
    }

    fn catalog(titles: usize) -> Catalog {
        Catalog {
            titles: (0..titles)
                .map(|t| Title {
                    id: format!("t{t}"),
                    renditions: vec![Rendition {
                        name: "r".into(),
                        bitrate: 1,
                        objects: (0..2)
                            .map(|s| ObjectInfo {
                                id: format!("t{t}-{s}"),
                                size: 10,
                                sha256: "a".repeat(64),
                            })
                            .collect(),
                    }],
                })
                .collect(),
        }
    }

    #[test]
    fn auth() {
        let (mut s, _) = state();
        assert!(s.authenticate("emb", Some("s-emb")).is_ok());
        assert!(matches!(
            s.authenticate("emb", Some("s-ix")),
            Err(StateError::Unauthorized(_))
        ));
        assert!(matches!(
            s.authenticate("emb", None),
            Err(StateError::Unauthorized(_))
        ));
        assert!(matches!(
            s.authenticate("nope", Some("s-emb")),
            Err(StateError::NotFound(_))
        ));
        assert!(s.authenticate_admin(Some("adm")).is_ok());
        assert!(s.authenticate_admin(Some("ad")).is_err());
        assert_eq!(s.counters.auth_failures, 3);
    }

    #[test]
    fn rotation_keeps_old_urls_valid_for_their_lifetime() {
        let (mut s, clock) = state();
        assert_eq!(s.keys().keys.len(), 1);
        let k1 = s.keys().signing_key(T0).unwrap().clone();
        assert_eq!(k1.not_after, T0 + 1000 + 100);
        let pfx = client_prefix("10.0.0.1".parse().unwrap(), 24, 48);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        clock.set(T0 + 10);
        let url = sign(&k1, "o", T0 + 10 + 100, pfx);

        // Forced rotation: new key signs, the old one verifies until now + ttl.
        let public = s.rotate_keys().unwrap();
        assert_eq!(public.keys.len(), 2);
        let k2 = s.keys().signing_key(T0 + 10).unwrap().clone();
        assert_ne!(k2.id, k1.id);
        let old = s.keys().keys.iter().find(|k| k.id == k1.id).unwrap();
        assert_eq!(old.not_after, T0 + 10 + 100);
        assert_eq!(s.keys().verify("o", Some(&url), ip, T0 + 50), Ok(()));
        assert_eq!(s.keys().verify("o", Some(&url), ip, T0 + 110), Ok(()));

        // Scheduled rotation after rotate_secs, and the first key pruned once past not_after.
        clock.set(T0 + 10 + 1000);
        s.tick().unwrap();
        let k3 = s.keys().signing_key(T0 + 1010).unwrap().clone();
        assert_ne!(k3.id, k2.id);
        assert!(s.keys().keys.iter().all(|k| k.id != k1.id));
        assert_eq!(s.keys().keys.len(), 2);
        assert_eq!(s.counters.rotations, 2);
        // No rotation before it is due.
        clock.set(T0 + 1500);
        s.tick().unwrap();
        assert_eq!(s.keys().signing_key(T0 + 1500).unwrap().id, k3.id);
    }

    #[test]
    fn configured_keys_are_used() {
        let mut cfg = config();
        cfg.signing.keys = vec![SigningKey {
            id: "given".into(),
            secret: [1; 32],
            not_after: T0 + 50_000,
        }];
        let s = CloudState::new(cfg, Arc::new(ManualClock::new(T0)));
        assert_eq!(s.keys().signing_key(T0).unwrap().id, "given");
        assert_eq!(s.counters.rotations, 0);
    }

    #[test]
    fn health_reuses_plans_shared_across_appliances() {
        let (mut s, _clock) = state();
        s.register("emb", reg(Role::Embedded, 20, 20)).unwrap();
        s.register("ix", reg(Role::Ix, 20, 20)).unwrap();
        s.set_catalog(catalog(5)).unwrap();
        let down = || HealthReport {
            healthy: false,
            ..Default::default()
        };
        // The peer is not in steering: both appliances have the same inputs, so one plan.
        let g_ix = s.health("ix", down()).unwrap().manifest_generation;
        let g_emb = s.health("emb", down()).unwrap().manifest_generation;
        assert_eq!((g_ix, g_emb), (1, 1));
        assert_eq!(s.plans.plans.len(), 1);
        assert!(Arc::ptr_eq(
            &s.plans.generations["emb"].0,
            &s.plans.generations["ix"].0
        ));
        let plan = s.plans.generations["emb"].0.clone();
        // Further reports place nothing new and keep the generation.
        for _ in 0..5 {
            assert_eq!(s.health("emb", down()).unwrap().manifest_generation, 1);
        }
        assert!(Arc::ptr_eq(&s.plans.generations["emb"].0, &plan));
        assert_eq!(s.manifest("emb").unwrap().objects, plan.entries);
        // A new catalog is a new ranking: a new plan and the next generation.
        s.set_catalog(catalog(3)).unwrap();
        assert_eq!(s.health("emb", down()).unwrap().manifest_generation, 2);
        assert!(!Arc::ptr_eq(&s.plans.generations["emb"].0, &plan));
        assert_eq!(s.manifest("ix").unwrap().generation, 2);
    }

    #[test]
    fn register_health_manifest_generation_and_peer() {
        let (mut s, clock) = state();
        assert!(matches!(
            s.health("emb", HealthReport::default()),
            Err(StateError::Conflict(_))
        ));
        assert!(matches!(s.manifest("emb"), Err(StateError::Conflict(_))));
        let mut bad = reg(Role::Embedded, 0, 0);
        bad.urls.clear();
        assert!(matches!(
            s.register("emb", bad),
            Err(StateError::BadRequest(_))
        ));
        let ack = s.register("emb", reg(Role::Embedded, 20, 20)).unwrap();
        assert_eq!(ack.health_interval_secs, 1);
        assert_eq!(ack.signing_keys, s.keys().keys);
        // Empty catalog: empty plan, generation 1.
        let m = s.manifest("emb").unwrap();
        assert_eq!((m.generation, m.objects.len()), (1, 0));
        s.set_catalog(catalog(5)).unwrap();
        let m = s.manifest("emb").unwrap();
        assert_eq!(m.generation, 2);
        assert_eq!(m.objects.len(), 4);
        assert_eq!(
            m.objects
                .iter()
                .map(|e| e.tier.as_str())
                .collect::<Vec<_>>(),
            ["nvme", "nvme", "hdd", "hdd"]
        );
        assert!(m.objects.iter().all(|e| e.peer.is_none()));
        // Same plan, same generation.
        assert_eq!(s.manifest("emb").unwrap().generation, 2);
        // The peer comes into steering: entries name it, generation bumps.
        s.register("ix", reg(Role::Ix, 100, 0)).unwrap();
        let ack = s
            .health(
                "ix",
                HealthReport {
                    healthy: true,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(ack.manifest_generation, 1);
        let m = s.manifest("emb").unwrap();
        assert_eq!(m.generation, 3);
        assert!(m
            .objects
            .iter()
            .all(|e| e.peer.as_deref() == Some("http://a:1")));
        // The peer goes silent: the plan drops it again.
        clock.advance(4);
        let m = s.manifest("emb").unwrap();
        assert_eq!(m.generation, 4);
        assert!(m.objects.iter().all(|e| e.peer.is_none()));
        // Invalid catalogs are refused, naming the problem.
        let mut c = catalog(1);
        c.titles[0].renditions[0].objects[0].id = ".hidden".into();
        let e = s.set_catalog(c).unwrap_err().to_string();
        assert!(e.contains(".hidden"), "{e}");
        let mut c = catalog(2);
        c.titles[1].renditions[0].objects[0].id = "t0-0".into();
        assert!(s.set_catalog(c).unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn fleet_view_and_metrics() {
        let (mut s, clock) = state();
        s.register("emb", reg(Role::Embedded, 1, 1)).unwrap();
        s.health(
            "emb",
            HealthReport {
                healthy: true,
                ..Default::default()
            },
        )
        .unwrap();
        let f = s.fleet();
        assert!(f.appliances[0].in_steering);
        assert_eq!(f.appliances[0].silent_secs, Some(0));
        assert_eq!(
            f.appliances[1].out_reason.as_deref(),
            Some("not registered")
        );
        clock.advance(5);
        let f = s.fleet();
        assert!(!f.appliances[0].in_steering);
        assert!(f.appliances[0]
            .out_reason
            .as_deref()
            .unwrap()
            .starts_with("silent for 5 s"));
        let m = s.metrics_text();
        assert!(m.contains("edgeplane_cloud_registrations_total 1"), "{m}");
        assert!(m.contains("edgeplane_cloud_appliances_in_steering{role=\"embedded\"} 0"));
        assert!(m.contains("edgeplane_cloud_steering_requests_total{outcome=\"origin\"} 0"));
    }

    #[test]
    fn ct_eq_works() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(valid_object_id("t0007-720p-0003.m4s"));
        assert!(!valid_object_id(".x"));
        assert!(!valid_object_id("a/b"));
        assert!(!valid_object_id(""));
    }
}
