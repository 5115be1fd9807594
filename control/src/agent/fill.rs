//! Fill planning, pure: the window, what to download and evict, backoff and the origin's
//! circuit breaker. The I/O that carries a plan out (the fill loop, downloads, installs,
//! eviction) is in `fill/pass.rs`, on top of [`super::store`].

pub(crate) mod pass;
pub(crate) mod verify;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use edgeplane_api::{FillManifest, ManifestEntry};

/// The fill window in local time: always open, or `[start, end)` minutes after midnight
/// (wrapping past midnight when `end <= start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Fill at any time.
    Always,
    /// Fill from `start` to `end`, minutes after local midnight.
    Daily {
        /// Opens, minutes after midnight.
        start: u16,
        /// Closes, minutes after midnight.
        end: u16,
    },
}

/// Why a `fill.window` value is refused; the text is quoted in the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WindowError {
    /// Neither `always` nor `HH:MM-HH:MM`.
    #[error("{0:?}: want \"always\" or \"HH:MM-HH:MM\" (local time), e.g. \"02:00-06:00\"")]
    Malformed(String),
    /// Start and end are the same minute.
    #[error("{0:?}: an empty window; use \"always\" for no limit")]
    Empty(String),
}

impl Window {
    /// Parses `always` or `HH:MM-HH:MM`.
    pub fn parse(text: &str) -> Result<Window, WindowError> {
        if text == "always" {
            return Ok(Window::Always);
        }
        let hhmm = |s: &str| -> Option<u16> {
            let (h, m) = s.split_once(':')?;
            if h.len() != 2 || m.len() != 2 {
                return None;
            }
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        let err = || WindowError::Malformed(text.to_string());
        let (a, b) = text.split_once('-').ok_or_else(err)?;
        let (start, end) = (hhmm(a).ok_or_else(err)?, hhmm(b).ok_or_else(err)?);
        if start == end {
            return Err(WindowError::Empty(text.to_string()));
        }
        Ok(Window::Daily { start, end })
    }

    /// Whether the window is open at `minute` minutes after local midnight.
    pub fn is_open(self, minute: u16) -> bool {
        match self {
            Window::Always => true,
            Window::Daily { start, end } if start < end => minute >= start && minute < end,
            Window::Daily { start, end } => minute >= start || minute < end,
        }
    }
}

/// Minutes after local midnight now (localtime_r: honours TZ and /etc/localtime).
pub fn local_minute_now() -> u16 {
    let now = unsafe_free_localtime();
    now.0 * 60 + now.1
}

fn unsafe_free_localtime() -> (u16, u16) {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as libc::time_t);
    let mut tm = std::mem::MaybeUninit::<libc::tm>::zeroed();
    // SAFETY: `t` and `tm` are valid for the call; localtime_r is the thread-safe variant and
    // writes `tm` fully when it returns non-null, which we check before reading.
    let ok = unsafe { !libc::localtime_r(&t, tm.as_mut_ptr()).is_null() };
    if !ok {
        return (0, 0);
    }
    // SAFETY: initialised by the successful localtime_r above (and zeroed before anyway).
    let tm = unsafe { tm.assume_init() };
    (tm.tm_hour as u16, tm.tm_min as u16)
}

/// An object a tier holds: its size and the SHA-256 it was verified against when installed
/// (files are only ever renamed into place after their checksum was verified; the digest rides
/// along on the file as an extended attribute, absent on objects installed before it did or on
/// filesystems without user xattrs).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Held {
    /// Bytes.
    pub size: u64,
    /// Its verified SHA-256 (lowercase hex), when known.
    pub sha256: Option<String>,
}

impl Held {
    /// A held object of `size` bytes, digest unknown.
    pub fn sized(size: u64) -> Held {
        Held { size, sha256: None }
    }
}

/// What to do in one fill pass.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `(tier, id)` to remove: held but not in the manifest, or the wrong size.
    pub evict: Vec<(String, String)>,
    /// Entries to download, in rank order, each onto `entry.tier` (replacements first).
    pub download: Vec<ManifestEntry>,
    /// Ids held whose content changed under the same id (the manifest names another SHA-256):
    /// downloaded onto the tier that holds them and swapped in atomically (also in `download`).
    pub replace: Vec<String>,
    /// Entries that do not fit in their tier's capacity even after eviction.
    pub no_room: Vec<String>,
    /// `(from tier, entry)`: objects held (and served) from another tier than the manifest's,
    /// in rank order, that fit on theirs now: copied there, verified, then removed from `from`.
    pub relocate: Vec<(String, ManifestEntry)>,
    /// Objects of the manifest already held.
    pub present: u64,
    /// Bytes the downloads add.
    pub bytes_missing: u64,
}

/// Plans a pass: `held` maps tier name → id → held object; `capacity` tier name → bytes.
///
/// An object held on any tier counts as present (it is served from there). The manifest's tier
/// decides where a missing one goes, and where a held one should move: popularity changes move
/// objects between flash and storage, so a copy on the other tier is relocated when its own
/// tier has room (in rank order, competing with missing objects). A copy is only removed once
/// its relocation is installed, so the room it frees counts from the next pass; two tiers full of
/// each other's objects stay as they are (still served) until something else makes room.
/// When an id is held twice, the copy on the manifest's tier is kept and the other evicted.
pub fn plan(
    manifest: &FillManifest,
    held: &BTreeMap<String, HashMap<String, Held>>,
    capacity: &BTreeMap<String, u64>,
    evict: bool,
) -> Plan {
    let mut out = Plan::default();
    let wanted: HashMap<&str, &ManifestEntry> = manifest
        .objects
        .iter()
        .map(|e| (e.object.id.as_str(), e))
        .collect();
    let same = |e: &ManifestEntry, h: &Held| {
        e.object.size == h.size
            && h.sha256
                .as_deref()
                .is_none_or(|s| s.eq_ignore_ascii_case(&e.object.sha256))
    };
    // The copy kept of each wanted id held with the manifest's content: on the manifest's tier
    // if there is one there, else on the first tier holding it.
    let mut kept: HashMap<&str, &str> = HashMap::new();
    for (tier, objects) in held {
        for (id, h) in objects {
            let Some(e) = wanted.get(id.as_str()) else {
                continue;
            };
            if same(e, h) && (*tier == e.tier || !kept.contains_key(id.as_str())) {
                kept.insert(id.as_str(), tier.as_str());
            }
        }
    }
    let mut used: BTreeMap<&str, u64> = BTreeMap::new();
    // Ids held only with other content: swapped in place on the first tier holding them.
    let mut replaced: HashSet<&str> = HashSet::new();
    for (tier, objects) in held {
        let mut tier_used = 0;
        let mut ids: Vec<(&String, &Held)> = objects.iter().collect();
        ids.sort_by(|a, b| a.0.cmp(b.0));
        for (id, h) in ids {
            let changed = |e: &ManifestEntry| {
                h.sha256
                    .as_deref()
                    .is_some_and(|s| !s.eq_ignore_ascii_case(&e.object.sha256))
            };
            match wanted.get(id.as_str()) {
                Some(_) if kept.get(id.as_str()) == Some(&tier.as_str()) => tier_used += h.size,
                // New content under the same id: replaced in place (it serves until then).
                Some(e)
                    if changed(e)
                        && !kept.contains_key(id.as_str())
                        && !replaced.contains(id.as_str()) =>
                {
                    replaced.insert(id.as_str());
                    tier_used += h.size.max(e.object.size);
                    out.replace.push(id.clone());
                    out.bytes_missing += e.object.size;
                    out.download.push(ManifestEntry {
                        tier: tier.clone(),
                        ..(*e).clone()
                    });
                }
                // Unwanted, a wrong size (cannot be what the manifest means), or a second copy.
                _ if evict || wanted.contains_key(id.as_str()) => {
                    out.evict.push((tier.clone(), id.clone()));
                }
                _ => tier_used += h.size,
            }
        }
        used.insert(tier.as_str(), tier_used);
    }
    out.present = kept.len() as u64;
    let mut entries: Vec<&ManifestEntry> = manifest.objects.iter().collect();
    entries.sort_by_key(|e| e.rank);
    for e in entries {
        let id = e.object.id.as_str();
        // Where a held copy would move from; nothing to do for one in place or being replaced.
        let from = match kept.get(id) {
            Some(&t) if t == e.tier => continue,
            Some(&t) => Some(t),
            None if replaced.contains(id) => continue,
            None => None,
        };
        let cap = capacity.get(&e.tier).copied().unwrap_or(0);
        let u = used.entry(e.tier.as_str()).or_insert(0);
        if *u + e.object.size > cap {
            if from.is_none() {
                out.no_room.push(e.object.id.clone());
            }
            continue;
        }
        *u += e.object.size;
        match from {
            Some(from) => out.relocate.push((from.to_string(), e.clone())),
            None => {
                out.bytes_missing += e.object.size;
                out.download.push(e.clone());
            }
        }
    }
    out
}

/// Why a fetched manifest is refused (the appliance keeps its current one and serves on).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// No objects, while the appliance holds some: a control side that lost its catalog.
    #[error("it is empty while {held} objects are held")]
    Empty {
        /// Objects held.
        held: usize,
    },
    /// It would evict more than `fill.max_evict_fraction` of what is held in one pass.
    #[error("it would evict {evict} of {held} held objects, more than fill.max_evict_fraction {fraction}")]
    EvictFraction {
        /// Objects the pass would evict.
        evict: usize,
        /// Objects held.
        held: usize,
        /// The limit.
        fraction: f64,
    },
}

impl Refusal {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Empty { .. } => "empty",
            Refusal::EvictFraction { .. } => "evict_fraction",
        }
    }
}

/// Judges a fetched manifest against what the tiers hold: refused when it is empty while
/// objects are held, or when its first pass would evict more than `max_fraction` of them.
pub fn judge(
    manifest: &FillManifest,
    held: &BTreeMap<String, HashMap<String, Held>>,
    capacity: &BTreeMap<String, u64>,
    evict: bool,
    max_fraction: f64,
) -> Result<(), Refusal> {
    let n: usize = held.values().map(HashMap::len).sum();
    if n == 0 {
        return Ok(());
    }
    if manifest.objects.is_empty() {
        return Err(Refusal::Empty { held: n });
    }
    let p = plan(manifest, held, capacity, evict);
    if p.evict.len() as f64 > max_fraction * n as f64 {
        return Err(Refusal::EvictFraction {
            evict: p.evict.len(),
            held: n,
            fraction: max_fraction,
        });
    }
    Ok(())
}

/// Exponential backoff: `base`, `2·base`, … up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay.
    pub base: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Backoff {
    /// The delay after `failures` consecutive failures (≥ 1).
    pub fn delay(self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(20);
        self.base.saturating_mul(1 << shift).min(self.max)
    }
}

/// The origin's circuit breaker: `threshold` consecutive failures open it for `open_for`
/// (doubling while probes keep failing, up to 16×); when that has passed one probe may go
/// (half open); a success closes it.
#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    open_for: Duration,
    failures: u32,
    trips: u32,
    open_until: Option<Instant>,
    probing: bool,
}

/// The breaker's state, for metrics and health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// Requests are refused until the deadline.
    Open,
    /// One probe is allowed.
    HalfOpen,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(threshold: u32, open_for: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            open_for,
            failures: 0,
            trips: 0,
            open_until: None,
            probing: false,
        }
    }

    /// The state at `now`.
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.open_until {
            None => BreakerState::Closed,
            Some(t) if now < t => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// Whether a request may go now; in half-open, only the first caller gets to probe.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state(now) {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen if self.probing => false,
            BreakerState::HalfOpen => {
                self.probing = true;
                true
            }
        }
    }

    /// When an open breaker lets the next probe through.
    pub fn open_until(&self) -> Option<Instant> {
        self.open_until
    }

    /// Records a success: closes.
    pub fn success(&mut self) {
        self.failures = 0;
        self.trips = 0;
        self.open_until = None;
        self.probing = false;
    }

    /// Records a failure at `now`: may open (or re-open, longer).
    pub fn failure(&mut self, now: Instant) {
        self.failures += 1;
        let was_probe = self.probing;
        self.probing = false;
        if was_probe || self.failures >= self.threshold {
            self.trips = (self.trips + 1).min(5);
            self.open_until = Some(now + self.open_for * (1 << (self.trips - 1)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeplane_api::ObjectInfo;

    #[test]
    fn windows() {
        assert_eq!(Window::parse("always"), Ok(Window::Always));
        let w = Window::parse("02:00-06:30").unwrap();
        assert!(!w.is_open(119) && w.is_open(120) && w.is_open(389) && !w.is_open(390));
        let wrap = Window::parse("22:00-06:00").unwrap();
        assert!(wrap.is_open(23 * 60) && wrap.is_open(0) && wrap.is_open(359));
        assert!(!wrap.is_open(360) && !wrap.is_open(12 * 60));
        for bad in [
            "",
            "2:00-06:00",
            "02:00",
            "25:00-01:00",
            "02:00-02:00",
            "02:60-03:00",
        ] {
            assert!(Window::parse(bad).is_err(), "{bad}");
        }
    }

    fn manifest(generation: u64, objects: Vec<ManifestEntry>) -> FillManifest {
        FillManifest {
            generation,
            objects,
            ..Default::default()
        }
    }

    fn entry(id: &str, size: u64, tier: &str, rank: u64) -> ManifestEntry {
        ManifestEntry {
            object: ObjectInfo {
                id: id.into(),
                size,
                sha256: "00".repeat(32),
            },
            tier: tier.into(),
            rank,
            peer: None,
        }
    }

    #[test]
    fn plan_downloads_missing_in_rank_order_and_evicts_the_rest() {
        let m = manifest(
            1,
            vec![
                entry("c", 30, "flash", 2),
                entry("a", 10, "flash", 0),
                entry("b", 20, "hdd", 1),
                entry("d", 40, "hdd", 3),
            ],
        );
        let mut held = BTreeMap::new();
        held.insert(
            "flash".to_string(),
            HashMap::from([
                ("a".to_string(), Held::sized(10)),
                ("old".to_string(), Held::sized(5)),
            ]),
        );
        held.insert(
            "hdd".to_string(),
            // Wrong size: evicted and fetched again.
            HashMap::from([("d".to_string(), Held::sized(39))]),
        );
        let cap = BTreeMap::from([("flash".to_string(), 40), ("hdd".to_string(), 60)]);
        let p = plan(&m, &held, &cap, true);
        let ids: Vec<&str> = p.download.iter().map(|e| e.object.id.as_str()).collect();
        assert_eq!(ids, ["b", "c", "d"]);
        assert_eq!(p.present, 1);
        assert_eq!(p.bytes_missing, 90);
        let mut ev = p.evict.clone();
        ev.sort();
        assert_eq!(
            ev,
            [("flash".into(), "old".into()), ("hdd".into(), "d".into())]
        );
        assert!(p.no_room.is_empty());
    }

    #[test]
    fn plan_respects_capacity_and_keeps_unwanted_without_evict() {
        let m = manifest(
            1,
            vec![entry("a", 10, "flash", 0), entry("b", 10, "flash", 1)],
        );
        let held = BTreeMap::from([(
            "flash".to_string(),
            HashMap::from([("x".to_string(), Held::sized(5))]),
        )]);
        let cap = BTreeMap::from([("flash".to_string(), 14)]);
        let p = plan(&m, &held, &cap, false);
        assert!(p.evict.is_empty());
        assert!(p.download.is_empty(), "x keeps 5 of 14 bytes: {p:?}");
        assert_eq!(p.no_room, ["a", "b"]);
        let p = plan(&m, &held, &cap, true);
        assert_eq!(p.download.len(), 1);
        assert_eq!(p.no_room, ["b"]);
    }

    #[test]
    fn an_object_held_on_another_tier_is_present() {
        let m = manifest(1, vec![entry("a", 10, "flash", 0)]);
        let held = BTreeMap::from([(
            "hdd".to_string(),
            HashMap::from([("a".to_string(), Held::sized(10))]),
        )]);
        let p = plan(&m, &held, &BTreeMap::new(), true);
        assert_eq!((p.present, p.download.len(), p.evict.len()), (1, 0, 0));
    }

    #[test]
    fn objects_follow_their_tier_when_popularity_moves_them() {
        // Generation 1 put a and j on flash (full: 20 bytes); generation 2 demotes j to hdd
        // and promotes k, held on hdd, to flash; m is missing and wanted on flash too.
        let m = manifest(
            2,
            vec![
                entry("a", 10, "flash", 0),
                entry("k", 10, "flash", 1),
                entry("m", 10, "flash", 2),
                entry("j", 10, "hdd", 3),
            ],
        );
        let mut held = BTreeMap::from([
            (
                "flash".to_string(),
                HashMap::from([
                    ("a".to_string(), Held::sized(10)),
                    ("j".to_string(), Held::sized(10)),
                ]),
            ),
            (
                "hdd".to_string(),
                HashMap::from([("k".to_string(), Held::sized(10))]),
            ),
        ]);
        let cap = BTreeMap::from([("flash".to_string(), 30), ("hdd".to_string(), 100)]);
        let moves = |p: &Plan| -> Vec<(String, String, String)> {
            p.relocate
                .iter()
                .map(|(f, e)| (e.object.id.clone(), f.clone(), e.tier.clone()))
                .collect()
        };
        let mv = |id: &str, from: &str, to: &str| (id.into(), from.into(), to.into());
        // Pass 1: flash has room for one more; rank order gives it to k's move, not to m's
        // download; j goes down to hdd. Everything held counts as present.
        let p = plan(&m, &held, &cap, true);
        assert_eq!(
            moves(&p),
            [mv("k", "hdd", "flash"), mv("j", "flash", "hdd")]
        );
        assert!(p.download.is_empty() && p.evict.is_empty(), "{p:?}");
        assert_eq!(p.no_room, ["m"]);
        assert_eq!((p.present, p.bytes_missing), (3, 0));
        // The moves done (copy installed, old copy removed): m now fits.
        held.get_mut("flash").unwrap().remove("j");
        held.get_mut("flash")
            .unwrap()
            .insert("k".into(), Held::sized(10));
        held.get_mut("hdd").unwrap().remove("k");
        held.get_mut("hdd")
            .unwrap()
            .insert("j".into(), Held::sized(10));
        let p = plan(&m, &held, &cap, true);
        assert!(p.relocate.is_empty(), "{p:?}");
        let ids: Vec<&str> = p.download.iter().map(|e| e.object.id.as_str()).collect();
        assert_eq!((ids, p.present), (vec!["m"], 3));
        // Held twice (a move interrupted between install and removal): the copy on the
        // manifest's tier stays, the other is evicted, whatever the tiers' order.
        held.get_mut("flash")
            .unwrap()
            .insert("j".into(), Held::sized(10));
        let p = plan(&m, &held, &cap, false);
        assert_eq!(p.evict, [("flash".to_string(), "j".to_string())]);
        assert!(p.relocate.is_empty() && p.present == 3, "{p:?}");
    }

    #[test]
    fn a_move_waits_while_its_tier_is_full_and_the_object_serves_where_it_is() {
        // Two full tiers holding each other's objects: nothing can move (nothing is evicted to
        // make room, the objects are wanted), both count as present.
        let m = manifest(
            1,
            vec![entry("a", 10, "flash", 0), entry("b", 10, "hdd", 1)],
        );
        let held = BTreeMap::from([
            (
                "flash".to_string(),
                HashMap::from([("b".to_string(), Held::sized(10))]),
            ),
            (
                "hdd".to_string(),
                HashMap::from([("a".to_string(), Held::sized(10))]),
            ),
        ]);
        let cap = BTreeMap::from([("flash".to_string(), 10), ("hdd".to_string(), 10)]);
        let p = plan(&m, &held, &cap, true);
        assert!(p.relocate.is_empty() && p.download.is_empty() && p.evict.is_empty());
        assert!(
            p.no_room.is_empty(),
            "held objects are not 'no room': {p:?}"
        );
        assert_eq!(p.present, 2);
        // With room on flash, a goes up; b then has room on hdd only once a has left.
        let cap = BTreeMap::from([("flash".to_string(), 20), ("hdd".to_string(), 10)]);
        let p = plan(&m, &held, &cap, true);
        let moved: Vec<&str> = p
            .relocate
            .iter()
            .map(|(_, e)| e.object.id.as_str())
            .collect();
        assert_eq!(moved, ["a"]);
    }

    #[test]
    fn changed_content_is_replaced_in_place_not_evicted() {
        let mut m = manifest(
            1,
            vec![entry("a", 10, "flash", 0), entry("b", 10, "flash", 1)],
        );
        m.objects[1].object.sha256 = "11".repeat(32);
        let sha = |s: &str| Held {
            size: 10,
            sha256: Some(s.repeat(32)),
        };
        // a: same digest; b: held on hdd with the old digest; c: digest unknown.
        let held = BTreeMap::from([
            (
                "flash".to_string(),
                HashMap::from([("a".to_string(), sha("00"))]),
            ),
            (
                "hdd".to_string(),
                HashMap::from([("b".to_string(), sha("00"))]),
            ),
        ]);
        let cap = BTreeMap::from([("flash".to_string(), 100), ("hdd".to_string(), 100)]);
        let p = plan(&m, &held, &cap, true);
        assert!(p.evict.is_empty(), "{p:?}");
        assert_eq!(p.replace, ["b"]);
        assert_eq!(p.download.len(), 1);
        assert_eq!(p.download[0].tier, "hdd", "swapped where it is held");
        assert_eq!(p.download[0].object.sha256, "11".repeat(32));
        assert_eq!(p.present, 1);
        // An unknown digest is trusted (installed verified, by an older agent).
        let held = BTreeMap::from([(
            "flash".to_string(),
            HashMap::from([
                ("a".to_string(), Held::sized(10)),
                ("b".to_string(), Held::sized(10)),
            ]),
        )]);
        let p = plan(&m, &held, &cap, true);
        assert!(p.download.is_empty() && p.replace.is_empty());
        assert_eq!(p.present, 2);
    }

    #[test]
    fn judge_refuses_empty_and_mass_eviction_manifests() {
        let held = |n: usize| {
            BTreeMap::from([(
                "flash".to_string(),
                (0..n)
                    .map(|i| (format!("o{i}"), Held::sized(10)))
                    .collect::<HashMap<_, _>>(),
            )])
        };
        let cap = BTreeMap::from([("flash".to_string(), 1_000)]);
        let keep = |n: usize| {
            manifest(
                2,
                (0..n)
                    .map(|i| entry(&format!("o{i}"), 10, "flash", i as u64))
                    .collect(),
            )
        };
        // Nothing held: anything goes, even an empty manifest.
        assert_eq!(judge(&keep(0), &held(0), &cap, true, 0.1), Ok(()));
        assert_eq!(
            judge(&keep(0), &held(20), &cap, true, 0.1),
            Err(Refusal::Empty { held: 20 })
        );
        // 2 of 20 evicted is 10%: allowed; 3 of 20 is not.
        assert_eq!(judge(&keep(18), &held(20), &cap, true, 0.1), Ok(()));
        let r = judge(&keep(17), &held(20), &cap, true, 0.1).unwrap_err();
        assert_eq!(r.reason(), "evict_fraction");
        assert_eq!(
            r.to_string(),
            "it would evict 3 of 20 held objects, more than fill.max_evict_fraction 0.1"
        );
        // Without fill.evict nothing is evicted; with a fraction of 1 everything may be.
        assert_eq!(judge(&keep(1), &held(20), &cap, false, 0.1), Ok(()));
        assert_eq!(judge(&keep(1), &held(20), &cap, true, 1.0), Ok(()));
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let d: Vec<u128> = (1..=6).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(d, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(1000).as_millis(), 1000);
    }

    #[test]
    fn breaker_opens_probes_and_closes() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut b = Breaker::new(3, s);
        for _ in 0..2 {
            assert!(b.allow(t0));
            b.failure(t0);
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
        b.failure(t0);
        assert_eq!(b.state(t0), BreakerState::Open);
        assert!(!b.allow(t0 + s / 2));
        // Half open: one probe only.
        assert!(b.allow(t0 + s));
        assert!(!b.allow(t0 + s));
        // The probe fails: open again, twice as long.
        b.failure(t0 + s);
        assert_eq!(b.state(t0 + s + s), BreakerState::Open);
        assert_eq!(b.state(t0 + s * 3), BreakerState::HalfOpen);
        assert!(b.allow(t0 + s * 3));
        b.success();
        assert_eq!(b.state(t0 + s * 3), BreakerState::Closed);
        assert!(b.allow(t0 + s * 3));
    }
}
