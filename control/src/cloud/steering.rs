//! Steering: for (client, title), where the player should fetch from, best first, with one
//! per-title token. Pure apart from its cache ([`SteerCache`]): the fleet, catalog, keys and
//! time come in.
//!
//! The ranking:
//! 1. **Embedded** appliances whose served prefixes contain the client, longest matching prefix
//!    first.
//! 2. **IX** appliances, nearest to the client's site first (the site of the embedded
//!    appliances covering the client, else the `[[site]]` whose `prefixes` hold it; distance by
//!    shortest path in the `[[site]]` graph). When the client's site is known, IX appliances at
//!    sites the graph does not connect to it are left out; when it is not, every IX appliance
//!    is equally near.
//! 3. The **origin**, always, last.
//!
//! An appliance is **eligible** when it is in steering (registered, reported within the silence
//! limit, healthy), not draining, holds every object of the title (per its last health report),
//! has a base URL, and has room for one more viewer: `max_bps − serving_bps − added ≥
//! viewer_bps`, where `added` is the load steering sent it since its last report (first-choice
//! answers since that report × `viewer_bps`), so 5-second-old load figures do not let a
//! premiere pile onto one box.
//!
//! Equally good appliances (same prefix length, same site distance) are ordered by weighted
//! rendezvous hashing: appliance *a* scores `free(a) / −ln(h(title, client prefix, a))` with `h`
//! uniform in (0, 1), highest first. One (title, client network) keeps its appliance while
//! loads are steady (a title's viewers stay on few caches), different networks spread in
//! proportion to free capacity. The answer holds at most `max_locations` locations, the origin
//! included.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use edgeplane_signing::{client_prefix, sign_title, valid_id_prefix, KeySet};
use ipnet::IpNet;

use crate::cloud::config::{HealthConfig, SigningConfig, SiteConfig};
use crate::cloud::fleet::ApplianceRecord;
use edgeplane_api::{
    Catalog, Location, LocationKind, Role, SteeredRendition, Steering, NUMBER_PLACEHOLDER,
};

/// The knobs steering needs.
#[derive(Clone, Debug)]
pub struct SteerParams<'a> {
    /// Health rules (silence limit).
    pub health: &'a HealthConfig,
    /// Token lifetime and client prefix lengths.
    pub signing: &'a SigningConfig,
    /// Most locations, origin included (at least 1).
    pub max_locations: usize,
    /// Expected bits per second of one viewer; 0: the title's highest rendition bitrate.
    pub viewer_bps: u64,
    /// The origin location's URL prefix, e.g. `http://control:8700/v1/origin` (the answer's
    /// origin `base_url` is this + `/tok/<token>/`).
    pub origin_base: &'a str,
    /// Whether the answer starts a viewer, whose load is counted against the first location
    /// until that appliance's next report. False when a playing viewer asks again (content
    /// steering reloads): the appliance reports that viewer's load already.
    pub new_viewer: bool,
}

/// Why steering could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SteerError {
    /// The catalog has no such title.
    #[error("unknown title {0:?}")]
    UnknownTitle(String),
    /// No signing key is valid now (cannot happen with rotation running).
    #[error("no valid signing key")]
    NoKey,
    /// The title's object ids share no prefix a token can name.
    #[error(
        "title {0:?}: its object ids share no common prefix, so no per-title token covers them"
    )]
    NoIdPrefix(String),
}

/// Unmaps `::ffff:a.b.c.d` so IPv4 clients on dual-stack sockets match IPv4 prefixes.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Longest-prefix lookups over a set of prefixes: one hash map per family keyed by (length,
/// network bits), probed at each length present, longest first.
#[derive(Clone, Debug)]
pub struct PrefixTable<T> {
    map: HashMap<(bool, u8, u128), T>,
    v4_lens: Vec<u8>,
    v6_lens: Vec<u8>,
}

impl<T> Default for PrefixTable<T> {
    fn default() -> Self {
        PrefixTable {
            map: HashMap::new(),
            v4_lens: Vec::new(),
            v6_lens: Vec::new(),
        }
    }
}

fn key_of(net: &IpNet) -> (bool, u8, u128) {
    match net.trunc() {
        IpNet::V4(n) => (false, n.prefix_len(), u128::from(u32::from(n.network()))),
        IpNet::V6(n) => (true, n.prefix_len(), u128::from(n.network())),
    }
}

fn masked(addr: IpAddr, len: u8) -> (bool, u8, u128) {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a) & u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            (false, len, u128::from(bits))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a) & u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            (true, len, bits)
        }
    }
}

impl<T> PrefixTable<T> {
    /// The entry of `net`, made with `T::default()` when new.
    pub fn entry(&mut self, net: &IpNet) -> &mut T
    where
        T: Default,
    {
        let key = key_of(net);
        let lens = if key.0 {
            &mut self.v6_lens
        } else {
            &mut self.v4_lens
        };
        if let Err(i) = lens.binary_search_by(|l| key.1.cmp(l)) {
            lens.insert(i, key.1);
        }
        self.map.entry(key).or_default()
    }

    /// The entry of `net`, if any.
    pub fn get_mut(&mut self, net: &IpNet) -> Option<&mut T> {
        self.map.get_mut(&key_of(net))
    }

    /// Every entry whose prefix holds `addr`, longest prefix first, with its length.
    pub fn matches(&self, addr: IpAddr) -> impl Iterator<Item = (u8, &T)> {
        let addr = canonical(addr);
        let lens = match addr {
            IpAddr::V4(_) => &self.v4_lens,
            IpAddr::V6(_) => &self.v6_lens,
        };
        lens.iter()
            .filter_map(move |&len| self.map.get(&masked(addr, len)).map(|t| (len, t)))
    }
}

/// The `[[site]]` graph: shortest distances between sites, and where client prefixes are.
#[derive(Clone, Debug, Default)]
pub struct SiteGraph {
    index: HashMap<String, usize>,
    /// `dist[a][b]`, `None` when unconnected.
    dist: Vec<Vec<Option<u64>>>,
    prefixes: PrefixTable<usize>,
    names: Vec<String>,
}

impl SiteGraph {
    /// The graph of `sites` (validated: unique names, neighbours that exist). Edges are
    /// symmetric; distances are shortest paths (Dijkstra from every site).
    pub fn new(sites: &[SiteConfig]) -> SiteGraph {
        let index: HashMap<String, usize> = sites
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        let n = sites.len();
        let mut edges: Vec<Vec<(usize, u64)>> = vec![Vec::new(); n];
        for (i, s) in sites.iter().enumerate() {
            for (name, d) in &s.neighbours {
                if let Some(&j) = index.get(name) {
                    edges[i].push((j, *d));
                    edges[j].push((i, *d));
                }
            }
        }
        let dist = (0..n)
            .map(|src| {
                let mut d: Vec<Option<u64>> = vec![None; n];
                let mut heap = std::collections::BinaryHeap::new();
                d[src] = Some(0);
                heap.push(std::cmp::Reverse((0u64, src)));
                while let Some(std::cmp::Reverse((du, u))) = heap.pop() {
                    if d[u].is_some_and(|x| x < du) {
                        continue;
                    }
                    for &(v, w) in &edges[u] {
                        let nd = du.saturating_add(w);
                        if d[v].is_none_or(|x| nd < x) {
                            d[v] = Some(nd);
                            heap.push(std::cmp::Reverse((nd, v)));
                        }
                    }
                }
                d
            })
            .collect();
        let mut prefixes = PrefixTable::default();
        for (i, s) in sites.iter().enumerate() {
            for p in &s.prefixes {
                *prefixes.entry(p) = i;
            }
        }
        SiteGraph {
            index,
            dist,
            prefixes,
            names: sites.iter().map(|s| s.name.clone()).collect(),
        }
    }

    /// The distance between two sites: 0 for the same name, `None` when the graph does not
    /// connect them (or does not know one of them).
    pub fn distance(&self, a: &str, b: &str) -> Option<u64> {
        if a == b {
            return Some(0);
        }
        let (i, j) = (self.index.get(a)?, self.index.get(b)?);
        self.dist[*i][*j]
    }

    /// The index of a site in the graph.
    fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The site whose `prefixes` hold `addr` (longest match).
    pub fn site_of(&self, addr: IpAddr) -> Option<&str> {
        self.prefixes
            .matches(addr)
            .next()
            .map(|(_, &i)| self.names[i].as_str())
    }
}

/// What steering remembers of one title (per catalog version).
#[derive(Clone, Debug)]
struct TitleInfo {
    id: String,
    id_prefix: Option<String>,
    renditions: Vec<SteeredRendition>,
    objects: Vec<String>,
    top_bitrate: u64,
}

/// What steering remembers of one appliance.
#[derive(Clone, Debug, Default)]
struct ApplianceCache {
    /// Fingerprint of the registration and report this was computed from.
    fingerprint: u64,
    /// When the report it reflects arrived (the load estimate resets with each report).
    report_at: Option<u64>,
    /// Prefixes it is indexed under (embedded).
    indexed: Vec<IpNet>,
    /// Whether it is an IX appliance.
    is_ix: bool,
    /// Its site's index in the site graph.
    site: Option<usize>,
    /// The held-set version `holds` was computed from.
    held_version: u64,
    /// Whether it holds every object of a title, by title index: 0 not known yet, 1 yes,
    /// 2 no.
    holds: Vec<u8>,
    /// First-choice answers since its last report.
    decisions: u64,
    /// Load those answers add, bits per second.
    added_bps: u64,
    /// Hash of its id, for rendezvous scores.
    id_hash: u64,
}

/// Indexes steering keeps between requests: titles by id, embedded appliances by prefix, IX
/// appliances, per-appliance title holdings, and the load sent since each appliance's last
/// report. Brought up to date from the fleet and catalog at every call (a cheap comparison per
/// appliance; an appliance is re-indexed only when its registration or report changed).
#[derive(Debug, Default)]
pub struct SteerCache {
    sites: SiteGraph,
    catalog_version: Option<u64>,
    titles: HashMap<String, usize>,
    title_info: Vec<TitleInfo>,
    appliances: Vec<ApplianceCache>,
    embedded: PrefixTable<Vec<usize>>,
    ix: Vec<usize>,
    /// Per client site (graph index): the IX appliances at sites connected to it, as
    /// (distance, appliance), nearest first. Made on first use; dropped when an IX appliance
    /// comes, goes or moves.
    ix_near: Vec<Option<Vec<(u64, usize)>>>,
    /// The caller's fleet change stamp ([`SteerCache::set_fleet_stamp`]), and the one the
    /// per-appliance indexes were last compared at.
    fleet_stamp: Option<u64>,
    compared_stamp: Option<u64>,
}

/// SplitMix64's finalizer: a cheap, well-mixed 64-bit hash step.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn hash_of<T: Hash + ?Sized>(v: &T) -> u64 {
    // Deterministic across runs and processes (fixed keys), so rankings are reproducible.
    let mut h = std::hash::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// Fingerprint of what indexing depends on: the registration and the report (by identity:
/// each new registration or report is a new allocation) and the report's time.
fn fingerprint(a: &ApplianceRecord) -> u64 {
    let reg = a.registration.as_ref().map_or(0, |r| {
        (r.prefixes.as_ptr() as u64) ^ (r.urls.as_ptr() as u64).rotate_left(17)
    });
    let rep = a.health.as_ref().map_or(0, |(h, at)| {
        (h.prefixes.as_ptr() as u64) ^ (h.objects.as_ptr() as u64).rotate_left(29) ^ mix(*at)
    });
    mix(reg ^ mix(rep) ^ a.held.len() as u64)
}

/// The template of ids `t0007-720p-0000.m4s`, `…-0001.m4s`, …: the segment number is the run
/// of digits of the first id where it last differs from the last id; every id must follow it.
fn rendition_template(ids: &[String]) -> Option<(String, u64)> {
    let (first, last) = (ids.first()?, ids.last()?);
    let bytes = first.as_bytes();
    let common_suffix = bytes
        .iter()
        .rev()
        .zip(last.as_bytes().iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    // The last differing byte, then the digits around it.
    let pos = bytes.len().checked_sub(common_suffix + 1)?;
    if !bytes[pos].is_ascii_digit() {
        return None;
    }
    let end = bytes[pos..]
        .iter()
        .position(|b| !b.is_ascii_digit())
        .map_or(bytes.len(), |i| pos + i);
    let start = bytes[..pos]
        .iter()
        .rposition(|b| !b.is_ascii_digit())
        .map_or(0, |i| i + 1);
    let digits = &first[start..end];
    if digits.len() > 18 {
        return None;
    }
    let n0: u64 = digits.parse().ok()?;
    let (head, tail) = (&first[..start], &first[end..]);
    let width = digits.len();
    let ok = ids.iter().enumerate().all(|(i, id)| {
        id.len() >= head.len() + tail.len()
            && id.starts_with(head)
            && id.ends_with(tail)
            && id[head.len()..id.len() - tail.len()] == format!("{:0width$}", n0 + i as u64)
    });
    ok.then(|| {
        let format = if width > 1 && digits.starts_with('0') {
            format!("%0{width}d")
        } else {
            String::new()
        };
        (format!("{head}{NUMBER_PLACEHOLDER}{format}${tail}"), n0)
    })
}

fn title_info(title: &edgeplane_api::Title) -> TitleInfo {
    let objects: Vec<String> = title
        .renditions
        .iter()
        .flat_map(|r| r.objects.iter().map(|o| o.id.clone()))
        .collect();
    let dashed = format!("{}-", title.id);
    let id_prefix = if !objects.is_empty() && objects.iter().all(|o| o.starts_with(&dashed)) {
        Some(dashed)
    } else {
        // The longest common prefix of the ids.
        let mut lcp: &str = objects.first().map_or("", String::as_str);
        for o in &objects {
            let n = lcp
                .bytes()
                .zip(o.bytes())
                .take_while(|(a, b)| a == b)
                .count();
            lcp = &lcp[..n];
        }
        Some(lcp.to_owned())
    }
    .filter(|p| valid_id_prefix(p));
    let renditions = title
        .renditions
        .iter()
        .map(|r| {
            let ids: Vec<String> = r.objects.iter().map(|o| o.id.clone()).collect();
            let count = ids.len() as u64;
            match rendition_template(&ids) {
                Some((template, start_number)) if ids.len() > 1 => SteeredRendition {
                    name: r.name.clone(),
                    bitrate: r.bitrate,
                    template: Some(template),
                    start_number,
                    count,
                    objects: Vec::new(),
                },
                _ => SteeredRendition {
                    name: r.name.clone(),
                    bitrate: r.bitrate,
                    template: None,
                    start_number: 0,
                    count,
                    objects: ids,
                },
            }
        })
        .collect();
    TitleInfo {
        id: title.id.clone(),
        id_prefix,
        renditions,
        objects,
        top_bitrate: title
            .renditions
            .iter()
            .map(|r| r.bitrate)
            .max()
            .unwrap_or(0),
    }
}

impl SteerCache {
    /// An empty cache for the `[[site]]` graph `sites`.
    pub fn new(sites: &[SiteConfig]) -> SteerCache {
        SteerCache {
            sites: SiteGraph::new(sites),
            ..SteerCache::default()
        }
    }

    /// The site graph.
    pub fn sites(&self) -> &SiteGraph {
        &self.sites
    }

    /// Declares the fleet's change stamp: a number the caller changes whenever it changes any
    /// appliance record (registration, report, held set). While the stamp stays what it was
    /// at the last [`steer`], the fleet is taken as unchanged and the comparison of every
    /// appliance with its cached fingerprint is skipped (at 1,000 appliances that scan was a
    /// large part of an answer). Without a stamp every call compares every appliance.
    pub fn set_fleet_stamp(&mut self, stamp: u64) {
        self.fleet_stamp = Some(stamp);
    }

    /// Brings the indexes up to date with `fleet` and `catalog` (version `catalog_version`).
    fn sync(&mut self, fleet: &[ApplianceRecord], catalog: &Catalog, catalog_version: u64) {
        if self.catalog_version != Some(catalog_version) {
            self.title_info = catalog.titles.iter().map(title_info).collect();
            self.titles = self
                .title_info
                .iter()
                .enumerate()
                .map(|(i, t)| (t.id.clone(), i))
                .collect();
            for a in &mut self.appliances {
                a.holds.clear();
            }
            self.catalog_version = Some(catalog_version);
        }
        if self.fleet_stamp.is_some()
            && self.compared_stamp == self.fleet_stamp
            && self.appliances.len() == fleet.len()
        {
            return;
        }
        self.compared_stamp = self.fleet_stamp;
        if self.appliances.len() != fleet.len() {
            self.appliances = fleet
                .iter()
                .map(|a| ApplianceCache {
                    fingerprint: !fingerprint(a),
                    id_hash: hash_of(&a.id),
                    ..ApplianceCache::default()
                })
                .collect();
            self.embedded = PrefixTable::default();
            self.ix.clear();
            self.ix_near.clear();
        }
        let mut ix_changed = false;
        for (i, a) in fleet.iter().enumerate() {
            let fp = fingerprint(a);
            let c = &mut self.appliances[i];
            if c.fingerprint == fp {
                continue;
            }
            c.fingerprint = fp;
            if c.held_version != a.held_version {
                c.holds.clear();
                c.held_version = a.held_version;
            }
            let at = a.health.as_ref().map(|(_, at)| *at);
            if c.report_at != at {
                c.report_at = at;
                c.decisions = 0;
                c.added_bps = 0;
            }
            let role = a.registration.as_ref().map(|r| r.role);
            let site = a
                .registration
                .as_ref()
                .and_then(|r| self.sites.index_of(&r.site));
            let is_ix = role == Some(Role::Ix);
            if c.is_ix != is_ix || (is_ix && c.site != site) {
                ix_changed = true;
            }
            c.site = site;
            c.is_ix = is_ix;
            let prefixes: &[IpNet] = if role == Some(Role::Embedded) {
                a.prefixes()
            } else {
                &[]
            };
            if c.indexed.as_slice() != prefixes {
                for p in std::mem::take(&mut c.indexed) {
                    if let Some(list) = self.embedded.get_mut(&p) {
                        list.retain(|&x| x != i);
                    }
                }
                for p in prefixes {
                    self.embedded.entry(p).push(i);
                }
                self.appliances[i].indexed = prefixes.to_vec();
            }
        }
        if ix_changed {
            self.ix = (0..fleet.len())
                .filter(|&i| self.appliances[i].is_ix)
                .collect();
            self.ix_near.clear();
        }
    }

    /// Load steering sent appliance `i` since its last report, bits per second.
    pub fn added_bps(&self, i: usize) -> u64 {
        self.appliances.get(i).map_or(0, |a| a.added_bps)
    }

    /// First-choice answers naming appliance `i` since its last report.
    pub fn decisions(&self, i: usize) -> u64 {
        self.appliances.get(i).map_or(0, |a| a.decisions)
    }
}

/// Free capacity after the reported load and the load added since, bits per second (negative
/// when over).
fn free_bps(a: &ApplianceRecord, added: u64) -> i128 {
    let (serving, cap) = a.load();
    i128::from(cap) - i128::from(serving) - i128::from(added)
}

/// Weighted rendezvous score: `weight / −ln(u)` with `u` in (0, 1) from the hash.
fn hrw_score(hash: u64, weight: f64) -> f64 {
    // 53 bits, shifted off 0 so the logarithm is finite.
    let u = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    weight / -u.ln()
}

/// What deciding one appliance's eligibility needs.
struct Judge<'a> {
    fleet: &'a [ApplianceRecord],
    params: &'a SteerParams<'a>,
    objects: &'a [String],
    titles: usize,
    t: usize,
    now: u64,
    viewer_bps: u64,
    request_hash: u64,
}

impl Judge<'_> {
    /// Appliance `i`'s rendezvous score when it is eligible for this answer, else `None`.
    fn score(&self, apps: &mut [ApplianceCache], i: usize) -> Option<f64> {
        let a = &self.fleet[i];
        if !a.in_steering(self.now, self.params.health) || a.draining() || a.base_url().is_none() {
            return None;
        }
        let c = &mut apps[i];
        let free = free_bps(a, c.added_bps);
        if free < i128::from(self.viewer_bps.max(1)) {
            return None;
        }
        // Whether it holds every object of the title, cached per report.
        if c.holds.len() != self.titles {
            c.holds = vec![0; self.titles];
        }
        if c.holds[self.t] == 0 {
            let yes = a.holds(self.objects.iter().map(String::as_str));
            c.holds[self.t] = if yes { 1 } else { 2 };
        }
        if c.holds[self.t] != 1 {
            return None;
        }
        Some(hrw_score(mix(self.request_hash ^ c.id_hash), free as f64))
    }
}

/// The steering answer.
#[allow(clippy::too_many_arguments)]
pub fn steer(
    cache: &mut SteerCache,
    fleet: &[ApplianceRecord],
    catalog: &Catalog,
    catalog_version: u64,
    keys: &KeySet,
    params: &SteerParams<'_>,
    client: IpAddr,
    title_id: &str,
    now: u64,
) -> Result<Steering, SteerError> {
    cache.sync(fleet, catalog, catalog_version);
    let t = *cache
        .titles
        .get(title_id)
        .ok_or_else(|| SteerError::UnknownTitle(title_id.to_owned()))?;
    let key = keys.signing_key(now).ok_or(SteerError::NoKey)?;
    let SteerCache {
        sites,
        title_info,
        appliances,
        embedded: embedded_index,
        ix: ix_all,
        ix_near,
        ..
    } = cache;
    let info = &title_info[t];
    let id_prefix = info
        .id_prefix
        .as_deref()
        .ok_or_else(|| SteerError::NoIdPrefix(title_id.to_owned()))?;
    let viewer_bps = if params.viewer_bps > 0 {
        params.viewer_bps
    } else {
        info.top_bitrate
    };
    let client = canonical(client);
    let prefix = client_prefix(
        client,
        params.signing.v4_prefix_len,
        params.signing.v6_prefix_len,
    );
    let judge = Judge {
        fleet,
        params,
        objects: &info.objects,
        titles: title_info.len(),
        t,
        now,
        viewer_bps,
        request_hash: hash_of(&(title_id, prefix)),
    };

    // Embedded: every appliance whose prefixes hold the client, at its longest match. The
    // client's site is theirs (the longest-matching one's), eligible or not.
    let mut client_site: Option<&str> = None;
    let mut seen: Vec<usize> = Vec::new();
    let mut embedded: Vec<(u8, f64, usize)> = Vec::new();
    for (len, list) in embedded_index.matches(client) {
        for &i in list {
            if seen.contains(&i) {
                continue;
            }
            seen.push(i);
            if client_site.is_none() {
                client_site = fleet[i].registration.as_ref().map(|r| r.site.as_str());
            }
            if let Some(score) = judge.score(appliances, i) {
                embedded.push((len, score, i));
            }
        }
    }
    let by_score = |x: f64, y: f64| y.partial_cmp(&x).unwrap_or(std::cmp::Ordering::Equal);
    let wanted = params.max_locations.max(1) - 1;
    embedded.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| by_score(a.1, b.1)));
    // Only the first few IX appliances can be in the answer: none when the embedded ones fill
    // it; else those of the nearest distances that hold enough eligible ones.
    let ix_wanted = wanted.saturating_sub(embedded.len());
    let mut ix: Vec<(u64, f64, usize)> = Vec::new();
    if ix_wanted > 0 {
        let client_site = client_site.or_else(|| sites.site_of(client));
        let client_site_index = client_site.and_then(|c| sites.index_of(c));
        match (client_site, client_site_index) {
            // Every IX appliance is equally near.
            (None, _) => {
                for &i in ix_all.iter() {
                    if let Some(score) = judge.score(appliances, i) {
                        ix.push((0, score, i));
                    }
                }
            }
            // Those at sites the graph connects to the client's, nearest first: stop after
            // the distance that brings enough.
            (Some(_), Some(ci)) => {
                if ix_near.len() != sites.names.len() {
                    *ix_near = vec![None; sites.names.len()];
                }
                let near = ix_near[ci].get_or_insert_with(|| {
                    let mut near: Vec<(u64, usize)> = ix_all
                        .iter()
                        .filter_map(|&i| Some((sites.dist[ci][appliances[i].site?]?, i)))
                        .collect();
                    near.sort_unstable();
                    near
                });
                let mut k = 0;
                while k < near.len() && ix.len() < ix_wanted {
                    let distance = near[k].0;
                    while k < near.len() && near[k].0 == distance {
                        let i = near[k].1;
                        if let Some(score) = judge.score(appliances, i) {
                            ix.push((distance, score, i));
                        }
                        k += 1;
                    }
                }
            }
            // A site the graph does not know: only the same name is near.
            (Some(c), None) => {
                for &i in ix_all.iter() {
                    let site = fleet[i]
                        .registration
                        .as_ref()
                        .map_or("", |r| r.site.as_str());
                    if c != site {
                        continue;
                    }
                    if let Some(score) = judge.score(appliances, i) {
                        ix.push((0, score, i));
                    }
                }
            }
        }
    }
    let ix_order = |a: &(u64, f64, usize), b: &(u64, f64, usize)| {
        a.0.cmp(&b.0).then_with(|| by_score(a.1, b.1))
    };
    if ix.len() > ix_wanted && ix_wanted > 0 {
        ix.select_nth_unstable_by(ix_wanted - 1, ix_order);
        ix.truncate(ix_wanted);
    }
    ix.sort_by(ix_order);
    let ranked: Vec<(usize, LocationKind)> = embedded
        .iter()
        .map(|&(_, _, i)| (i, LocationKind::Embedded))
        .chain(ix.iter().map(|&(_, _, i)| (i, LocationKind::Ix)))
        .take(wanted)
        .collect();

    let expires = now + params.signing.url_ttl_secs;
    let token = sign_title(key, id_prefix, expires, prefix);
    let mut locations: Vec<Location> = Vec::with_capacity(ranked.len() + 1);
    for &(i, kind) in &ranked {
        let a = &fleet[i];
        locations.push(Location {
            kind,
            appliance: Some(a.id.clone()),
            site: a.registration.as_ref().map(|r| r.site.clone()),
            // Eligible appliances have a base URL.
            base_url: format!("{}/tok/{token}/", a.base_url().unwrap_or_default()),
        });
    }
    locations.push(Location {
        kind: LocationKind::Origin,
        appliance: None,
        site: None,
        base_url: format!("{}/tok/{token}/", params.origin_base.trim_end_matches('/')),
    });
    // The viewer goes to the first location: count the load it adds until the next report.
    if let Some(&(i, _)) = ranked.first().filter(|_| params.new_viewer) {
        let c = &mut appliances[i];
        c.decisions += 1;
        c.added_bps = c.added_bps.saturating_add(viewer_bps);
    }
    Ok(Steering {
        title: info.id.clone(),
        client,
        expires,
        id_prefix: id_prefix.to_owned(),
        token,
        locations,
        renditions: info.renditions.clone(),
    })
}

#[cfg(test)]
mod tests;
