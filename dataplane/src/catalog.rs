//! The catalog: which content ids exist, on which tier.
//!
//! The filesystem is the truth. A scan lists each tier directory (regular files with valid ids
//! only: no symlinks, no subdirectories, no hidden temporaries); tiers are listed in parallel,
//! one thread each. After the first scan the catalog follows the tiers by *changes*: the
//! watcher (`runtime::watch`) reads inotify events for the tier directories and hands the names
//! that changed to [`SharedCatalog::refresh`], which re-checks just those names (one `lstat`
//! per tier per name) and publishes a new snapshot. `POST /reload`, SIGHUP, a lost or
//! overflowed watch and a tier going in or out of service still rescan everything
//! ([`SharedCatalog::reload`]).
//!
//! Snapshots are persistent maps (`imbl::HashMap`, a hash array mapped trie): a new snapshot
//! shares every node but the few on the changed key's path with the previous one, so a change
//! costs O(log₃₂ n) (4 to 5 node copies at 1 M to 10 M objects), never a copy of the map.
//! Readers load the current snapshot from an [`ArcSwap`] and never wait on a lock; writers (the
//! watcher, a reload) take turns on a mutex off the serving cores.
//!
//! An entry is 16 bytes beside its id (size, a change stamp, the tier index): the path is the
//! tier directory joined with the id, and everything served to clients (size, validators) comes
//! from `fstat` of the file actually opened, so a file replaced between scan and open is still
//! described right.
//!
//! The scan only reads directories (`getdents64` in 1 MiB batches, the entry's type from
//! `d_type`): it `stat`s nothing, so the catalog is ready after one pass over the names. The
//! sizes, needed only for the per-tier byte counts, are learnt afterwards by a low-priority
//! thread ([`SharedCatalog::count_sizes_in_background`]); until it is done a snapshot says so
//! ([`Catalog::bytes_counted`]) and its byte counts are 0.
//!
//! Every change a refresh publishes is numbered and kept in a bounded ring, the change feed
//! ([`SharedCatalog::changes`], `GET /catalog/changes`): a client lists the catalog once and
//! then follows the feed from the listing's [`Catalog::seq`]; a rescan, a number older than
//! the ring or another process's epoch answers `reset` (list again).
//!
//! When the same id exists on several tiers, the first tier in config order wins (list flash
//! first).

use std::hash::BuildHasher;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::config::{TierConfig, TierKind};

/// A tier as the catalog knows it.
#[derive(Debug, Clone)]
pub struct Tier {
    /// Name from the config (used in metrics).
    pub name: String,
    /// Flash or storage.
    pub kind: TierKind,
    /// Directory.
    pub path: PathBuf,
}

/// Scan result for one tier, kept current by changes.
#[derive(Debug, Clone, Default)]
pub struct TierState {
    /// Objects served from it.
    pub objects: u64,
    /// Their total size in bytes (as counted after the scan, or by the change that added
    /// each); 0 until [`Catalog::bytes_counted`].
    pub bytes: u64,
    /// Why the tier is out of service, if it is.
    pub error: Option<String>,
}

/// [`Entry::size`] of an object the scan found and the size count has not reached yet.
pub const SIZE_UNKNOWN: u64 = u64::MAX;

/// One object (16 bytes; its id is the map key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Size when counted or changed, or [`SIZE_UNKNOWN`] (for the per-tier byte counts only;
    /// clients get `fstat`'s of the file opened).
    pub size: u64,
    /// 0 after a scan; a fresh value each time a change re-installs the id, so an open-file
    /// cache can tell that the file it holds was replaced or removed.
    pub stamp: u32,
    /// Index into [`Catalog::tiers`].
    pub tier: u16,
}

/// A snapshot of every tier's contents. Cheap to clone (the map is shared).
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Increases with every full rescan; per-core open-file caches compare it to drop stale
    /// files (a change keeps the generation and gives the changed id a new [`Entry::stamp`]).
    pub generation: u64,
    /// The configured tiers, in config order.
    pub tiers: Arc<[Tier]>,
    /// Per tier: counts and health, same order as `tiers`.
    pub tier_states: Vec<TierState>,
    /// What the last scan (or merge) found, packed; shared by every snapshot since.
    base: Arc<Base>,
    /// Changes since `base`: an entry, or `None` for an id removed from it. Persistent, so a
    /// new snapshot shares it with the previous one; merged into a new base when it grows past
    /// 1/32 of the base (see [`Catalog::merge_due`]).
    overlay: imbl::HashMap<Box<str>, Option<Entry>>,
    /// Objects in all tiers.
    len: usize,
    /// Whether [`TierState::bytes`] are counted (the size count after a scan is done).
    bytes_counted: bool,
    /// The change feed's sequence number of the last change this snapshot holds
    /// ([`SharedCatalog::changes`]): a listing of this snapshot followed by the feed from this
    /// number on misses nothing.
    pub seq: u64,
}

/// The packed bulk of a catalog: ids back to back in one buffer (each followed by a NUL), an
/// open-addressing table of 12-byte slots pointing into it, and the sizes by ordinal (the id's
/// place in the buffer). About 12 / load + 8 + id length + 1 bytes per object
/// (the load is 0.45 to 0.87, by where the count falls between two powers of two), plus 4 once
/// something has listed the ids in order ([`Base::sorted`]).
struct Base {
    names: Vec<u8>,
    table: hashbrown::HashTable<Slot>,
    hasher: hashbrown::DefaultHashBuilder,
    /// Per ordinal: [`SIZE_UNKNOWN`] until the size count reaches the object (the base is
    /// shared and immutable otherwise; the count stores each size once). Apart from the rest
    /// so that the size count holds only this (8 bytes an object), never the whole base, while
    /// it waits for the disk or, at nice 19 on a loaded machine, for a CPU: a rescan frees the
    /// base it replaces at once.
    /// (A `Vec` inside the `Arc`, so that a weak reference keeps none of it; grown only while
    /// the base is built, when nothing else holds it.)
    sizes: Arc<Vec<AtomicU64>>,
    /// Offsets of the ids in [`Base::names`], in id order; made at the first paged listing
    /// (`GET /catalog`), kept for the base's life.
    sorted: OnceLock<Box<[u32]>>,
}

/// One object in a [`Base`].
struct Slot {
    /// Offset of the id in [`Base::names`].
    at: u32,
    /// Its place among the ids in [`Base::names`]: index into [`Base::sizes`].
    ordinal: u32,
    len: u16,
    tier: u16,
}

impl std::fmt::Debug for Base {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Base({} objects)", self.table.len())
    }
}

impl Base {
    fn with_capacity(objects: usize, name_bytes: usize) -> Base {
        Base {
            names: Vec::with_capacity(name_bytes),
            table: hashbrown::HashTable::with_capacity(objects),
            hasher: hashbrown::DefaultHashBuilder::default(),
            sizes: Arc::new(Vec::with_capacity(objects)),
            sorted: OnceLock::new(),
        }
    }

    fn name(&self, slot: &Slot) -> &str {
        let bytes = &self.names[slot.at as usize..slot.at as usize + usize::from(slot.len)];
        // Only valid ids (ASCII) are ever pushed.
        std::str::from_utf8(bytes).unwrap_or("")
    }

    /// The id stored at `at` in [`Base::names`] (up to its NUL).
    fn name_at(&self, at: u32) -> &str {
        let rest = &self.names[at as usize..];
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn entry(&self, slot: &Slot) -> Entry {
        Entry {
            size: self.sizes[slot.ordinal as usize].load(Ordering::Relaxed),
            stamp: 0,
            tier: slot.tier,
        }
    }

    fn get(&self, id: &str) -> Option<Entry> {
        let hash = self.hasher.hash_one(id);
        self.table
            .find(hash, |s| self.name(s) == id)
            .map(|s| self.entry(s))
    }

    /// Every id's offset, in id order (sorted once, on first use: O(n log n), then shared).
    fn sorted(&self) -> &[u32] {
        self.sorted.get_or_init(|| {
            let mut at: Vec<u32> = self.table.iter().map(|s| s.at).collect();
            at.sort_unstable_by(|a, b| self.name_at(*a).cmp(self.name_at(*b)));
            at.into_boxed_slice()
        })
    }

    /// Adds `id` unless it is there already (an earlier tier holds it). Returns whether added.
    fn insert(&mut self, id: &str, size: u64, tier: u16) -> bool {
        let hash = self.hasher.hash_one(id);
        let names = &self.names;
        let name = |s: &Slot| &names[s.at as usize..s.at as usize + usize::from(s.len)];
        if self
            .table
            .find(hash, |s| name(s) == id.as_bytes())
            .is_some()
        {
            return false;
        }
        self.push(hash, id, size, tier)
    }

    /// Adds `id` found on `tier` during a scan, where tiers arrive in any order and the first
    /// tier in config order wins: an id already there from a later tier moves to `tier`.
    fn insert_ranked(&mut self, id: &str, tier: u16) -> Ranked {
        let hash = self.hasher.hash_one(id);
        let names = &self.names;
        let name = |s: &Slot| &names[s.at as usize..s.at as usize + usize::from(s.len)];
        if let Some(slot) = self.table.find_mut(hash, |s| name(s) == id.as_bytes()) {
            if slot.tier <= tier {
                return Ranked::Kept;
            }
            let from = std::mem::replace(&mut slot.tier, tier);
            return Ranked::Moved(from);
        }
        if self.push(hash, id, SIZE_UNKNOWN, tier) {
            Ranked::Added
        } else {
            Ranked::Kept
        }
    }

    /// Appends `id` (not in the table) to the names and the table.
    fn push(&mut self, hash: u64, id: &str, size: u64, tier: u16) -> bool {
        let ordinal = self.table.len();
        let Base {
            names,
            table,
            hasher,
            sizes,
            ..
        } = self;
        let Ok(at) = u32::try_from(names.len()) else {
            tracing::error!("catalog: more than 4 GiB of ids; {id} and later ids left out");
            return false;
        };
        let Some(sizes) = Arc::get_mut(sizes) else {
            tracing::error!("catalog: a base shared before it was built; {id} left out");
            return false;
        };
        sizes.push(AtomicU64::new(size));
        names.extend_from_slice(id.as_bytes());
        names.push(0);
        let slot = Slot {
            at,
            ordinal: ordinal as u32,
            len: id.len() as u16,
            tier,
        };
        let names = &*names;
        table.insert_unique(hash, slot, |s| {
            hasher.hash_one(
                std::str::from_utf8(&names[s.at as usize..s.at as usize + usize::from(s.len)])
                    .unwrap_or(""),
            )
        });
        true
    }

    /// Gives back what a generous capacity hint reserved beyond the ids found.
    fn shrink(&mut self) {
        let Base {
            names,
            table,
            hasher,
            sizes,
            ..
        } = self;
        names.shrink_to_fit();
        if let Some(sizes) = Arc::get_mut(sizes) {
            sizes.shrink_to_fit();
        }
        let names = &*names;
        table.shrink_to_fit(|s| {
            hasher.hash_one(
                std::str::from_utf8(&names[s.at as usize..s.at as usize + usize::from(s.len)])
                    .unwrap_or(""),
            )
        });
    }

    fn iter(&self) -> impl Iterator<Item = (&str, Entry)> + '_ {
        self.table.iter().map(|s| (self.name(s), self.entry(s)))
    }
}

/// What [`Base::insert_ranked`] did.
enum Ranked {
    Added,
    /// The id was there from this later tier; it is now served from the new one.
    Moved(u16),
    Kept,
}

/// A lister's message to the scan's builder.
enum Listed {
    /// Ids of tier `.0`, each followed by a NUL (about [`NAMES_PER_BATCH`] bytes).
    Names(usize, Vec<u8>),
    /// Tier `.0` is listed to its end, or failed.
    Done(usize, std::io::Result<()>),
}

/// Bytes of ids a lister hands over at a time: the builder inserts one batch while the lister
/// reads the next ones from the kernel.
const NAMES_PER_BATCH: usize = 256 << 10;

/// Batches in flight between the listers and the builder (bounds the memory between them).
const BATCHES_IN_FLIGHT: usize = 16;

/// Bytes of directory per object assumed for the table's first capacity (an ext4 entry of a
/// 15-byte id takes ~35); an over-estimate is given back by [`Base::shrink`].
const DIR_BYTES_PER_OBJECT: u64 = 32;

impl Catalog {
    /// Lists every tier directory, one thread per tier, while the calling thread builds the
    /// base from the batches of ids they hand over (listing, mostly the kernel's `getdents64`
    /// and waits for the disk, and building overlap). A tier that cannot be listed to its end
    /// is out of service: the base is built again without it.
    pub fn scan(tiers: &[TierConfig], generation: u64) -> Catalog {
        let tiers: Arc<[Tier]> = tiers
            .iter()
            .map(|t| Tier {
                name: t.name.clone(),
                kind: t.kind,
                path: t.path.clone(),
            })
            .collect();
        let started = std::time::Instant::now();
        let mut errors: Vec<Option<String>> = vec![None; tiers.len()];
        loop {
            let pass = scan_pass(&tiers, &errors);
            if pass.failed.is_empty() {
                let mut tier_states: Vec<TierState> = errors
                    .into_iter()
                    .zip(&pass.objects)
                    .map(|(error, &objects)| TierState {
                        objects,
                        bytes: 0,
                        error,
                    })
                    .collect();
                tier_states.shrink_to_fit();
                tracing::info!(
                    generation,
                    objects = pass.base.table.len(),
                    listing_ms = pass.listing.as_millis() as u64,
                    building_ms = pass.building.as_millis() as u64,
                    total_ms = started.elapsed().as_millis() as u64,
                    "catalog scanned"
                );
                return Catalog {
                    generation,
                    tiers,
                    tier_states,
                    len: pass.base.table.len(),
                    base: Arc::new(pass.base),
                    overlay: imbl::HashMap::new(),
                    bytes_counted: false,
                    seq: 0,
                };
            }
            for (index, e) in pass.failed {
                let tier = &tiers[index];
                tracing::error!(tier = %tier.name, path = %tier.path.display(), "tier out of service: {e}");
                errors[index] = Some(format!("{}: {e}", tier.path.display()));
            }
        }
    }

    /// Whether the per-tier byte counts are known: false after a scan until the size count
    /// (a low-priority thread, [`SharedCatalog::count_sizes_in_background`]) is done.
    pub fn bytes_counted(&self) -> bool {
        self.bytes_counted
    }

    /// Recomputes every tier's byte count from the sizes the count stored in the base and the
    /// overlay's entries. O(n), once per scan.
    fn count_bytes(&mut self) {
        let mut bytes = vec![0u64; self.tiers.len()];
        let known = |size: u64| if size == SIZE_UNKNOWN { 0 } else { size };
        for slot in self.base.table.iter() {
            bytes[usize::from(slot.tier)] +=
                known(self.base.sizes[slot.ordinal as usize].load(Ordering::Relaxed));
        }
        for (id, entry) in self.overlay.iter() {
            if let Some(old) = self.base.get(id) {
                let b = &mut bytes[usize::from(old.tier)];
                *b = b.saturating_sub(known(old.size));
            }
            if let Some(e) = entry {
                bytes[usize::from(e.tier)] += known(e.size);
            }
        }
        for (state, b) in self.tier_states.iter_mut().zip(bytes) {
            state.bytes = b;
        }
        self.bytes_counted = true;
    }

    /// Up to `limit` objects with ids after `after` (all when `None`), in id order, and whether
    /// more follow. O(log n + limit + changes since the last merge) once [`Base::sorted`] is
    /// made (O(n log n), the first time this base is listed).
    pub fn page(&self, after: Option<&str>, limit: usize) -> (Vec<(&str, Entry)>, bool) {
        let sorted = self.base.sorted();
        let start = after.map_or(0, |a| {
            sorted.partition_point(|&at| self.base.name_at(at) <= a)
        });
        let mut changed: Vec<(&str, Entry)> = self
            .overlay
            .iter()
            .filter_map(|(id, e)| e.map(|e| (&**id, e)))
            .filter(|(id, _)| after.is_none_or(|a| *id > a))
            .collect();
        changed.sort_unstable_by_key(|(id, _)| *id);
        let mut changed = changed.into_iter().peekable();
        let check_overlay = !self.overlay.is_empty();
        let mut base = sorted[start..]
            .iter()
            .map(|&at| self.base.name_at(at))
            .filter(|id| !check_overlay || !self.overlay.contains_key(*id))
            .peekable();
        let mut out = Vec::with_capacity(limit.min(self.len).min(1 << 20));
        while out.len() < limit {
            let next = match (base.peek(), changed.peek()) {
                (Some(b), Some((c, _))) if b < c => base.next().map(|id| (id, None)),
                (_, Some(_)) => changed.next().map(|(id, e)| (id, Some(e))),
                (Some(_), None) => base.next().map(|id| (id, None)),
                (None, None) => break,
            };
            let Some((id, entry)) = next else { break };
            if let Some(entry) = entry.or_else(|| self.base.get(id)) {
                out.push((id, entry));
            }
        }
        let more = base.peek().is_some() || changed.peek().is_some();
        (out, more)
    }

    /// Looks up an id.
    pub fn get(&self, id: &str) -> Option<Entry> {
        if !self.overlay.is_empty() {
            if let Some(changed) = self.overlay.get(id) {
                return *changed;
            }
        }
        self.base.get(id)
    }

    /// Where `id`'s file is, per `entry` (from [`Catalog::get`]).
    pub fn path(&self, id: &str, entry: &Entry) -> PathBuf {
        self.tiers[usize::from(entry.tier)].path.join(id)
    }

    /// The ids served from tier `tier` (index into [`Catalog::tiers`]), sorted. An id held by
    /// several tiers is listed under the one it is served from (the first in config order).
    pub fn ids(&self, tier: usize) -> Vec<&str> {
        let (all, _) = self.page(None, usize::MAX);
        all.into_iter()
            .filter(|(_, e)| usize::from(e.tier) == tier)
            .map(|(id, _)| id)
            .collect()
    }

    /// Number of objects in all tiers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no tier holds anything.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the changes since the base are worth packing into a new one: more than 1/32 of
    /// it (at least 4096). A merge is O(n) and happens once per n/32 changes: O(1) per change,
    /// and the overlay (a few hundred bytes per change) stays a few percent of the memory.
    fn merge_due(&self) -> bool {
        self.overlay.len() > (self.base.table.len() / 32).max(4096)
    }

    /// Packs the base and the changes into a new base (same objects, same generation).
    fn merge(&mut self) {
        let mut base = Base::with_capacity(self.len, self.base.names.len());
        for (id, entry) in self.base.iter() {
            if !self.overlay.contains_key(id) {
                base.insert(id, entry.size, entry.tier);
            }
        }
        for (id, entry) in self.overlay.iter() {
            if let Some(e) = entry {
                base.insert(id, e.size, e.tier);
            }
        }
        self.base = Arc::new(base);
        self.overlay = imbl::HashMap::new();
    }

    /// Re-checks `id` on the tiers (first in service holding it as a regular file wins) and
    /// updates this snapshot to match. Returns the change for the feed when the entry changed
    /// (added, replaced, moved to another tier, or removed). O(tiers) `lstat`s and one
    /// persistent-map update, whatever the catalog's size.
    fn refresh_one(&mut self, id: &str, stamp: u32) -> Option<FeedEntry> {
        if !crate::content_id::is_valid(id) {
            return None;
        }
        let found = self
            .tiers
            .iter()
            .zip(&self.tier_states)
            .enumerate()
            .filter(|(_, (_, state))| state.error.is_none())
            .find_map(|(index, (tier, _))| {
                let meta = std::fs::symlink_metadata(tier.path.join(id)).ok()?;
                meta.file_type().is_file().then_some(Entry {
                    size: meta.len(),
                    stamp,
                    tier: index as u16,
                })
            });
        let old = self.get(id);
        match (found, self.base.get(id).is_some()) {
            (Some(entry), _) => {
                self.overlay.insert(id.into(), Some(entry));
            }
            (None, true) => {
                if old.is_some() {
                    self.overlay.insert(id.into(), None);
                }
            }
            (None, false) => {
                self.overlay.remove(id);
            }
        }
        self.len = self.len + usize::from(found.is_some()) - usize::from(old.is_some());
        // Before the size count is done the byte counts stay 0: the count adds the overlay.
        let counted = self.bytes_counted;
        if let Some(old) = old {
            let state = &mut self.tier_states[usize::from(old.tier)];
            state.objects -= 1;
            if counted && old.size != SIZE_UNKNOWN {
                state.bytes -= old.size.min(state.bytes);
            }
        }
        if let Some(new) = found {
            let state = &mut self.tier_states[usize::from(new.tier)];
            state.objects += 1;
            if counted {
                state.bytes += new.size;
            }
        }
        match (old, found) {
            (_, Some(new)) => Some(FeedEntry {
                id: id.into(),
                tier: new.tier,
                removed: false,
            }),
            (Some(old), None) => Some(FeedEntry {
                id: id.into(),
                tier: old.tier,
                removed: true,
            }),
            (None, None) => None,
        }
    }
}

/// Bytes of directory entries read per `getdents64` call: about 30 000 entries of short ids.
const LIST_BATCH: usize = 1 << 20;

/// One pass of [`Catalog::scan`] over the tiers without an error.
struct Pass {
    base: Base,
    /// Objects served from each tier.
    objects: Vec<u64>,
    /// Tiers whose listing failed (their ids may be in `base`: the scan makes another pass).
    failed: Vec<(usize, std::io::Error)>,
    /// Until the last lister finished.
    listing: std::time::Duration,
    /// Spent inserting (overlapping the listing).
    building: std::time::Duration,
}

fn scan_pass(tiers: &[Tier], errors: &[Option<String>]) -> Pass {
    let started = std::time::Instant::now();
    let live: Vec<usize> = (0..tiers.len()).filter(|&i| errors[i].is_none()).collect();
    let hint: u64 = live
        .iter()
        .filter_map(|&i| std::fs::metadata(&tiers[i].path).ok())
        .map(|m| m.len() / DIR_BYTES_PER_OBJECT)
        .sum();
    let mut pass = Pass {
        base: Base::with_capacity(
            usize::try_from(hint).unwrap_or(0).min(1 << 30),
            usize::try_from(hint * 16)
                .unwrap_or(0)
                .min(u32::MAX as usize),
        ),
        objects: vec![0; tiers.len()],
        failed: Vec::new(),
        listing: std::time::Duration::ZERO,
        building: std::time::Duration::ZERO,
    };
    let (tx, rx) = std::sync::mpsc::sync_channel::<Listed>(BATCHES_IN_FLIGHT);
    std::thread::scope(|s| {
        let mut listing = 0usize;
        for &index in &live {
            let path = &tiers[index].path;
            for range in hash_ranges(path) {
                let tx = tx.clone();
                let spawned = std::thread::Builder::new()
                    .name("edgeplane-scan".into())
                    .spawn_scoped(s, move || {
                        let r = list_tier(path, range, |names| {
                            tx.send(Listed::Names(index, names)).is_ok()
                        });
                        let _ = tx.send(Listed::Done(index, r));
                    });
                match spawned {
                    Ok(_) => listing += 1,
                    Err(e) => pass.failed.push((index, e)),
                }
            }
        }
        drop(tx);
        for msg in rx {
            match msg {
                Listed::Names(index, names) => {
                    let t = std::time::Instant::now();
                    for id in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
                        let id = std::str::from_utf8(id).unwrap_or("");
                        match pass.base.insert_ranked(id, index as u16) {
                            Ranked::Added => pass.objects[index] += 1,
                            Ranked::Moved(from) => {
                                pass.objects[usize::from(from)] -= 1;
                                pass.objects[index] += 1;
                            }
                            Ranked::Kept => {}
                        }
                    }
                    pass.building += t.elapsed();
                }
                Listed::Done(index, r) => {
                    listing -= 1;
                    if listing == 0 {
                        pass.listing = started.elapsed();
                    }
                    if let Err(e) = r {
                        if pass.failed.iter().all(|(i, _)| *i != index) {
                            pass.failed.push((index, e));
                        }
                    }
                }
            }
        }
    });
    let t = std::time::Instant::now();
    pass.base.shrink();
    pass.building += t.elapsed();
    pass
}

/// Listers per hash-indexed directory (see [`hash_ranges`]): reads of a cold directory's blocks
/// wait for the disk one at a time per reader, so several readers keep several reads in flight.
const HASH_LISTERS: u64 = 4;

/// Below this many bytes of directory (~256 k objects) one lister is enough.
const HASH_LISTING_MIN_BYTES: u64 = 8 << 20;

/// How to split the listing of the directory at `path` between threads: parts of its position
/// space, `[start, end)`. A hash-indexed ext4 directory (`FS_INDEX_FL`) returns its entries in
/// hash order, and a position (`lseek`, `d_off`) is a hash: readers that each seek to their part
/// of the space read disjoint sets of entries in parallel. Anything else (other file systems,
/// small or linear directories) is read by one lister from the start: `[(0, u64::MAX)]`.
fn hash_ranges(path: &Path) -> Vec<(u64, u64)> {
    hash_ranges_from(path, HASH_LISTING_MIN_BYTES)
}

/// [`hash_ranges`] for directories of at least `min_bytes`.
fn hash_ranges_from(path: &Path, min_bytes: u64) -> Vec<(u64, u64)> {
    use rustix::fs::{Mode, OFlags, SeekFrom};
    const EXT4_SUPER_MAGIC: i64 = 0xEF53;
    const FS_INDEX_FL: u32 = 0x1000;
    let whole = vec![(0, u64::MAX)];
    let Ok(dir) = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return whole;
    };
    // `f_type`'s integer type differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    let indexed = rustix::fs::fstatfs(&dir).is_ok_and(|st| st.f_type as i64 == EXT4_SUPER_MAGIC)
        && rustix::fs::fstat(&dir).is_ok_and(|st| st.st_size as u64 >= min_bytes)
        && rustix::fs::ioctl_getflags(&dir).is_ok_and(|f| f.bits() & FS_INDEX_FL != 0);
    if !indexed {
        return whole;
    }
    // The end of a hash-indexed directory is the top of its position space (2^63 - 1 for a
    // 64-bit reader, 2^31 - 1 for a 32-bit one).
    let Ok(eof) = rustix::fs::seek(&dir, SeekFrom::End(0)) else {
        return whole;
    };
    if eof < HASH_LISTERS {
        return whole;
    }
    let step = eof / HASH_LISTERS;
    (0..HASH_LISTERS)
        .map(|i| {
            let end = if i + 1 == HASH_LISTERS {
                u64::MAX
            } else {
                (i + 1) * step
            };
            (i * step, end)
        })
        .collect()
}

/// Lists one tier directory: regular files with valid ids, handed to `emit` in batches of
/// about [`NAMES_PER_BATCH`] bytes, each id followed by a NUL (no allocation per object). Reads
/// the directory in [`LIST_BATCH`] batches and takes each entry's type from `d_type`, so it
/// `stat`s nothing (only an entry whose file system leaves `d_type` unknown is `lstat`ed).
/// Stops early, without error, when `emit` returns false (nobody is listening any more).
/// `range` is the part of the directory's position space to read ([`hash_ranges`]): from its
/// start, the entries before the first whose position is at or past its end.
fn list_tier(
    path: &Path,
    (start, end): (u64, u64),
    mut emit: impl FnMut(Vec<u8>) -> bool,
) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags, RawDir, SeekFrom};
    let dir = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    if start > 0 {
        rustix::fs::seek(&dir, SeekFrom::Start(start))?;
    }
    // The position of the next entry: the previous entry's `d_off` (the first one read is at
    // or after `start`).
    let mut at = start;
    let mut names: Vec<u8> = Vec::with_capacity(NAMES_PER_BATCH + 256);
    let mut total = 0usize;
    let mut buf: Vec<u8> = Vec::with_capacity(LIST_BATCH);
    let mut entries = RawDir::new(&dir, buf.spare_capacity_mut());
    while let Some(entry) = entries.next() {
        let entry = entry?;
        if at >= end {
            break;
        }
        at = entry.next_entry_cookie();
        let Ok(name) = entry.file_name().to_str() else {
            continue;
        };
        if !crate::content_id::is_valid(name) {
            continue;
        }
        // Symlinks are skipped (never followed out of the tier), as are directories.
        let regular = match entry.file_type() {
            FileType::RegularFile => true,
            FileType::Unknown => {
                rustix::fs::statat(&dir, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile)
            }
            _ => false,
        };
        if !regular {
            continue;
        }
        total += name.len() + 1;
        if total >= u32::MAX as usize {
            return Err(std::io::Error::other("more than 4 GiB of ids in one tier"));
        }
        names.extend_from_slice(name.as_bytes());
        names.push(0);
        if names.len() >= NAMES_PER_BATCH
            && !emit(std::mem::replace(
                &mut names,
                Vec::with_capacity(NAMES_PER_BATCH + 256),
            ))
        {
            return Ok(());
        }
    }
    if !names.is_empty() {
        emit(names);
    }
    Ok(())
}

/// Changes the feed keeps ([`SharedCatalog::changes`]): the ring's capacity. A change is the
/// id, its tier and a flag: 24 bytes in the ring and the id on the heap, about 56 in all, so at
/// most ~4 MiB; the ring grows as changes come and is emptied by a rescan. A client that falls
/// further behind lists the catalog again.
pub const FEED_CAPACITY: usize = 65_536;

/// One change in the feed, as the ring stores it (its sequence number is its place).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FeedEntry {
    id: Box<str>,
    /// The tier serving the id after the change, or (removed) the one it was served from.
    tier: u16,
    removed: bool,
}

/// A change as [`SharedCatalog::changes`] answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Its sequence number (increasing by one per change within an epoch).
    pub seq: u64,
    /// The content id.
    pub id: String,
    /// Index into [`Catalog::tiers`]: the tier serving the id since this change, or, when
    /// `removed`, the one it was served from.
    pub tier: u16,
    /// The id left the catalog (else it was added, replaced, or moved to `tier`).
    pub removed: bool,
}

/// What the feed answers for `since` ([`SharedCatalog::changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// This process's feed: sequence numbers from another epoch mean nothing here.
    pub epoch: String,
    /// `since` cannot be followed (older than the ring, before a rescan, from the future or
    /// from another epoch): list the catalog in full, then follow from `latest` (or from the
    /// listing's own [`Catalog::seq`]).
    pub reset: bool,
    /// The changes after `since`, in order (empty on reset).
    pub changes: Vec<Change>,
    /// The number to ask from next: the last change answered, else `since` (on reset:
    /// `latest`).
    pub seq: u64,
    /// The newest change's number.
    pub latest: u64,
}

/// The change feed: a bounded ring of the latest changes, numbered within the process's epoch.
#[derive(Debug)]
struct Feed {
    epoch: String,
    /// Number of the newest change (0: none since start).
    latest: u64,
    /// Number of `ring[0]`.
    first: u64,
    /// Number of the last rescan: changes before it cannot be followed past it.
    rescanned_at: u64,
    ring: std::collections::VecDeque<FeedEntry>,
    capacity: usize,
}

impl Feed {
    fn new(capacity: usize) -> Feed {
        Feed {
            epoch: new_epoch(),
            latest: 0,
            first: 1,
            rescanned_at: 0,
            ring: std::collections::VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    fn push(&mut self, entry: FeedEntry) {
        if self.ring.len() == self.capacity {
            self.ring.pop_front();
            self.first += 1;
        }
        self.ring.push_back(entry);
        self.latest += 1;
    }

    /// A rescan: the catalog may differ from the last listing in any way, so every earlier
    /// number resets.
    fn rescanned(&mut self) {
        self.latest += 1;
        self.rescanned_at = self.latest;
        self.ring = std::collections::VecDeque::new();
        self.first = self.latest + 1;
    }

    fn after(&self, since: u64, epoch: Option<&str>, limit: usize) -> Changes {
        let reset = epoch.is_some_and(|e| e != self.epoch)
            || since < self.rescanned_at
            || since > self.latest
            || since + 1 < self.first;
        let mut out = Changes {
            epoch: self.epoch.clone(),
            reset,
            changes: Vec::new(),
            seq: if reset { self.latest } else { since },
            latest: self.latest,
        };
        if !reset {
            let skip = (since + 1 - self.first) as usize;
            out.changes = self
                .ring
                .iter()
                .skip(skip)
                .take(limit)
                .zip(since + 1..)
                .map(|(e, seq)| Change {
                    seq,
                    id: e.id.to_string(),
                    tier: e.tier,
                    removed: e.removed,
                })
                .collect();
            out.seq = out.changes.last().map_or(since, |c| c.seq);
        }
        out
    }
}

/// A fresh epoch for the change feed: 16 hex digits from the kernel's random source (the
/// clock and pid if that cannot be read), so a restarted data plane never continues an old
/// sequence.
fn new_epoch() -> String {
    let mut bytes = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_ok();
    let n = if random {
        u64::from_le_bytes(bytes)
    } else {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        nanos ^ (u64::from(std::process::id()) << 32)
    };
    format!("{n:016x}")
}

/// The catalog shared by every executor: rescanned whole on reload, changed name by name by the
/// watcher.
#[derive(Debug)]
pub struct SharedCatalog {
    current: ArcSwap<Catalog>,
    tiers: ArcSwap<Vec<TierConfig>>,
    next_generation: AtomicU64,
    next_stamp: AtomicU32,
    /// Reloads and changes take turns (readers never take it).
    writer: Mutex<()>,
    /// The size-count thread, woken after each rescan.
    sizer: OnceLock<std::thread::Thread>,
    /// Held by the size count while it holds a base (a few microseconds at a time), and by a
    /// writer while it replaces and drops a base: so the writer, not the low-priority count,
    /// frees the base it replaces, at once.
    sizer_window: Mutex<()>,
    /// The change feed (`GET /catalog/changes`); written under `writer`, read by the admin
    /// thread.
    feed: Mutex<Feed>,
}

impl SharedCatalog {
    /// Scans the tiers for the first time.
    pub fn new(tiers: Vec<TierConfig>) -> SharedCatalog {
        let first = Catalog::scan(&tiers, 1);
        SharedCatalog {
            current: ArcSwap::from_pointee(first),
            tiers: ArcSwap::from_pointee(tiers),
            next_generation: AtomicU64::new(2),
            next_stamp: AtomicU32::new(1),
            writer: Mutex::new(()),
            sizer: OnceLock::new(),
            sizer_window: Mutex::new(()),
            feed: Mutex::new(Feed::new(FEED_CAPACITY)),
        }
    }

    /// The changes after `since` (at most `limit`), or a reset: see [`Changes`]. `epoch`, when
    /// given, must be this process's ([`SharedCatalog::epoch`]). Cost: O(limit), whatever the
    /// catalog's size.
    pub fn changes(&self, since: u64, epoch: Option<&str>, limit: usize) -> Changes {
        self.feed().after(since, epoch, limit)
    }

    /// The change feed's epoch (fixed for the life of the process).
    pub fn epoch(&self) -> String {
        self.feed().epoch.clone()
    }

    fn feed(&self) -> std::sync::MutexGuard<'_, Feed> {
        self.feed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the thread that counts the sizes of what each scan found (thread
    /// `edgeplane-sizes`, at the lowest CPU and I/O priority): after the first scan now, and
    /// after every rescan. Serving does not wait for it; see [`SharedCatalog::count_sizes`].
    pub fn count_sizes_in_background(self: &Arc<Self>) -> std::io::Result<()> {
        let shared: Weak<SharedCatalog> = Arc::downgrade(self);
        let handle = std::thread::Builder::new()
            .name("edgeplane-sizes".into())
            .spawn(move || {
                lower_priority();
                loop {
                    match shared.upgrade() {
                        Some(catalog) => catalog.count_sizes(),
                        None => return,
                    }
                    std::thread::park_timeout(Duration::from_secs(60));
                }
            })?;
        let _ = self.sizer.set(handle.thread().clone());
        Ok(())
    }

    /// Learns the size of every object the last scan found (one `fstatat` each, relative to
    /// the tier directory) and publishes the per-tier byte counts
    /// ([`Catalog::bytes_counted`]). Changes go on meanwhile (the writer lock is taken only to
    /// publish); a rescan makes this give up (the rescan's own count follows). Returns at once
    /// when the current snapshot is counted.
    pub fn count_sizes(&self) {
        self.count_sizes_of_current();
        // This thread may have held the last reference to a base a rescan replaced.
        give_back_freed_memory();
    }

    fn count_sizes_of_current(&self) {
        loop {
            let snapshot = self.snapshot();
            if snapshot.bytes_counted {
                return;
            }
            let generation = snapshot.generation;
            // The base is held only by a weak reference: upgraded for the moment it takes to
            // copy the next batch of ids out of it (with their tiers), and its size array (apart from the
            // rest) for the few it takes to store their sizes; never across the `stat`s. So a
            // rescan frees the base it replaces at once, even while this low-priority thread
            // waits for a CPU or the disk.
            let weak = Arc::downgrade(&snapshot.base);
            let weak_sizes = Arc::downgrade(&snapshot.base.sizes);
            let dirs: Vec<Option<rustix::fd::OwnedFd>> = snapshot
                .tiers
                .iter()
                .map(|t| {
                    rustix::fs::open(
                        &t.path,
                        rustix::fs::OFlags::PATH
                            | rustix::fs::OFlags::DIRECTORY
                            | rustix::fs::OFlags::CLOEXEC,
                        rustix::fs::Mode::empty(),
                    )
                    .ok()
                })
                .collect();
            drop(snapshot);
            // Through the id buffer in order, 1024 ids a batch; an id's ordinal is its place.
            let mut at = 0usize;
            let mut ordinal = 0u32;
            let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
            let mut found: Vec<(u32, u64)> = Vec::with_capacity(1024);
            // Per id of the batch: its tier, when its size is still unknown.
            let mut todo: Vec<Option<u16>> = Vec::with_capacity(1024);
            loop {
                if self.current.load().generation != generation {
                    return;
                }
                batch.clear();
                found.clear();
                {
                    let _window = self.sizer_window.lock().unwrap_or_else(|p| p.into_inner());
                    let Some(base) = weak.upgrade() else { return };
                    let rest = &base.names[at.min(base.names.len())..];
                    if rest.is_empty() {
                        break;
                    }
                    let end = rest
                        .iter()
                        .enumerate()
                        .filter(|(_, &b)| b == 0)
                        .nth(1023)
                        .map_or(rest.len(), |(i, _)| i + 1);
                    batch.extend_from_slice(&rest[..end]);
                    // Which of them still need a size (a merge carries the sizes learnt), and
                    // where to look.
                    todo.clear();
                    todo.extend(batch.split_inclusive(|&b| b == 0).map(|name| {
                        let id = std::str::from_utf8(&name[..name.len() - 1]).unwrap_or("");
                        let hash = base.hasher.hash_one(id);
                        let slot = base.table.find(hash, |s| base.name(s) == id)?;
                        let size = base.sizes.get(slot.ordinal as usize)?;
                        (size.load(Ordering::Relaxed) == SIZE_UNKNOWN).then_some(slot.tier)
                    }));
                }
                at += batch.len();
                for (name, &tier) in batch.split_inclusive(|&b| b == 0).zip(&todo) {
                    let this = ordinal;
                    ordinal += 1;
                    let Some(tier) = tier else { continue };
                    let Ok(name) = std::ffi::CStr::from_bytes_with_nul(name) else {
                        continue;
                    };
                    // Gone since the scan (a change removes it) or not a file any more: 0.
                    let size =
                        dirs.get(usize::from(tier))
                            .and_then(Option::as_ref)
                            .map_or(0, |dir| {
                                rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                                    .map_or(0, |st| st.st_size as u64)
                            });
                    found.push((this, size));
                }
                let _window = self.sizer_window.lock().unwrap_or_else(|p| p.into_inner());
                let Some(sizes) = weak_sizes.upgrade() else {
                    return;
                };
                // A size a change stored meanwhile (a merge carries the sizes learnt) stays.
                for &(this, size) in &found {
                    if let Some(slot) = sizes.get(this as usize) {
                        let _ = slot.compare_exchange(
                            SIZE_UNKNOWN,
                            size,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        );
                    }
                }
            }
            let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            let current = self.current.load_full();
            if current.generation != generation {
                return;
            }
            let Some(base) = weak.upgrade() else { return };
            if !Arc::ptr_eq(&current.base, &base) {
                // Changes were merged into a new base meanwhile (it kept the sizes learnt):
                // count what it added.
                continue;
            }
            let mut next = Catalog::clone(&current);
            next.count_bytes();
            self.current.store(Arc::new(next));
            tracing::info!(generation, "catalog sizes counted");
            return;
        }
    }

    /// Publishes `next`, which has a new base, and drops the previous snapshot while the size
    /// count is outside its window: unless an in-flight lookup still holds it, the base it
    /// replaces is freed here and now. (The wait is for the count's few microseconds with a
    /// base, should the scheduler have stopped it there.)
    fn replace(&self, next: Arc<Catalog>) {
        let _window = self.sizer_window.lock().unwrap_or_else(|p| p.into_inner());
        drop(self.current.swap(next));
    }

    /// The current snapshot (cheap; no lock).
    pub fn load(&self) -> arc_swap::Guard<Arc<Catalog>> {
        self.current.load()
    }

    /// A clone of the current snapshot's `Arc`.
    pub fn snapshot(&self) -> Arc<Catalog> {
        self.current.load_full()
    }

    /// The tier list the next [`SharedCatalog::reload`] scans.
    pub fn tier_configs(&self) -> Arc<Vec<TierConfig>> {
        self.tiers.load_full()
    }

    /// Replaces the tier list (a reloaded config); the next [`SharedCatalog::reload`] scans it.
    pub fn set_tiers(&self, tiers: Vec<TierConfig>) {
        self.tiers.store(Arc::new(tiers));
    }

    /// Rescans every tier and swaps the result in. In-flight responses keep their open files.
    pub fn reload(&self) -> Arc<Catalog> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let mut next = Catalog::scan(&self.tiers.load(), generation);
        let next = {
            let mut feed = self.feed();
            feed.rescanned();
            next.seq = feed.latest;
            let next = Arc::new(next);
            self.replace(next.clone());
            next
        };
        give_back_freed_memory();
        if let Some(sizer) = self.sizer.get() {
            sizer.unpark();
        }
        tracing::info!(generation, objects = next.len(), "catalog rescanned");
        next
    }

    /// Re-checks the ids `names` (the names a tier directory's watch reported; invalid ids are
    /// ignored) and publishes one new snapshot holding the result. Returns how many entries
    /// changed. Each name costs an `lstat` per tier and a persistent-map update: the work does
    /// not grow with the catalog.
    pub fn refresh<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> usize {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = Catalog::clone(&self.current.load());
        let mut changes = Vec::new();
        for name in names {
            let stamp = self.next_stamp.fetch_add(1, Ordering::Relaxed).max(1);
            changes.extend(next.refresh_one(name, stamp));
        }
        let changed = changes.len();
        if changed > 0 {
            let merged = next.merge_due();
            if merged {
                next.merge();
            }
            {
                // Numbered and published together: a snapshot's `seq` covers its changes.
                let mut feed = self.feed();
                for change in changes {
                    feed.push(change);
                }
                next.seq = feed.latest;
                if merged {
                    self.replace(Arc::new(next));
                } else {
                    self.current.store(Arc::new(next));
                }
            }
            if merged {
                give_back_freed_memory();
            }
        }
        changed
    }
}

/// Puts the calling thread at the lowest CPU priority (nice 19) and in the idle I/O class, so
/// counting sizes never competes with serving. Best effort.
fn lower_priority() {
    // SAFETY: setpriority and ioprio_set take integers; with `who` 0 they apply to the calling
    // thread (Linux: per-thread nice and I/O priority).
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
        const IOPRIO_WHO_PROCESS: libc::c_long = 1;
        const IOPRIO_CLASS_IDLE: libc::c_long = 3;
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0,
            IOPRIO_CLASS_IDLE << 13,
        );
    }
}

/// Allocations of at least this size get their own mapping ([`map_big_allocations`]).
pub const MMAP_THRESHOLD: usize = 1 << 20;

/// Makes glibc give every allocation of [`MMAP_THRESHOLD`] or more its own mapping, for the
/// life of the process, so that freeing it returns it to the kernel at once.
///
/// By default glibc raises its mmap threshold (up to 32 MiB) each time a mapped chunk is freed,
/// and its trim threshold to twice that, so after the first rescan a catalog's id buffer and
/// listing buffers (16 MiB each at 1 M objects) come from a thread's arena instead; freed,
/// they stay resident at the top of that arena, which `malloc_trim` does not release outside
/// the main arena (measured: RSS right after a rescan of 1 M objects alternated between 1.0×,
/// 1.3× and 1.85× the steady state). A fixed threshold turns that adjustment off. Only big,
/// rare allocations are affected (a scan's buffers, a listing page's body): the serving path
/// allocates nothing that large.
pub fn map_big_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers and only changes glibc's allocation parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
    }
}

/// Returns the memory of the catalog just replaced to the kernel. The scan's buffers (tens of
/// MB at a million objects) are freed on the thread that ran it; glibc raises its mmap
/// threshold after such a free and keeps the next ones in its arenas, so without this the RSS
/// climbed by about the catalog's size with every rescan (measured: 58 → 149 MiB after 10
/// rescans of 1 M objects).
pub(crate) fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and releases free memory in glibc's own arenas; it takes
    // an integer and touches no memory of ours.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// An object opened for serving: the file, its mapping (for residency checks) and the
/// metadata clients see, all from the same `fstat`.
#[derive(Debug)]
pub struct OpenObject {
    /// The open file (shared with the cold-read pool).
    pub file: Arc<std::fs::File>,
    /// Read-only mapping of the whole file, used only for `mincore`; `None` when empty.
    pub map: Option<memmap2::Mmap>,
    /// Tier index.
    pub tier: usize,
    /// Size from `fstat`.
    pub size: u64,
    /// Strong entity tag (quoted).
    pub etag: String,
    /// IMF-fixdate of the modification time.
    pub last_modified: String,
    /// Pre-rendered constant header lines.
    pub fixed_headers: Vec<u8>,
    /// Catalog generation it was opened under.
    pub generation: u64,
    /// The catalog entry's [`Entry::stamp`] when it was opened: a cache holding it serves it
    /// only while the catalog's entry still has this stamp and tier.
    pub stamp: u32,
    /// Per 64 KiB block, until when (core-local milliseconds) the block is known to be in the
    /// page cache. Owned by one core's open-file cache; empty for files over 4 GiB, whose
    /// blocks are checked on every request.
    pub resident_until: Box<[std::cell::Cell<u32>]>,
}

impl OpenObject {
    /// Opens `path`, the file of `entry` (never following a symlink), and describes it. May
    /// block on the disk.
    pub fn open(
        id: &str,
        path: &Path,
        entry: &Entry,
        generation: u64,
    ) -> std::io::Result<OpenObject> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        let meta = file.metadata()?;
        if !meta.file_type().is_file() {
            return Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        }
        let size = meta.len();
        let mtime =
            UNIX_EPOCH + Duration::new(meta.mtime().max(0) as u64, meta.mtime_nsec() as u32);
        let etag = etag_for(size, mtime, meta.ino());
        let last_modified = httpdate::fmt_http_date(mtime);
        let fixed_headers = crate::http::response::render_fixed_headers(
            crate::http::mime::content_type(id),
            &etag,
            &last_modified,
        );
        let map = if size > 0 {
            // SAFETY: the mapping is read-only and this process never reads its bytes: it only
            // hands its address range to mincore(2) (the fallback when cachestat(2) is missing),
            // and bodies go out with sendfile/pread from the file descriptor. So a concurrent
            // truncation cannot fault in user space (no SIGBUS); mincore reports the lost pages
            // as not resident and the read goes to the cold pool, which sees the short file.
            Some(unsafe { memmap2::Mmap::map(&file)? })
        } else {
            None
        };
        let blocks = size.div_ceil(64 * 1024);
        let resident_until = if blocks <= 65536 {
            (0..blocks).map(|_| std::cell::Cell::new(0)).collect()
        } else {
            Box::default()
        };
        Ok(OpenObject {
            resident_until,
            file: Arc::new(file),
            map,
            tier: usize::from(entry.tier),
            size,
            etag,
            last_modified,
            fixed_headers,
            generation,
            stamp: entry.stamp,
        })
    }

    /// The planner's view of this object.
    pub fn meta(&self) -> crate::http::response::ObjectMeta<'_> {
        crate::http::response::ObjectMeta {
            size: self.size,
            etag: &self.etag,
            last_modified: &self.last_modified,
            fixed_headers: &self.fixed_headers,
        }
    }
}

/// A strong validator from size, modification time and inode: fill replaces objects by
/// rename, which changes the inode, so a replaced object never keeps its tag.
pub fn etag_for(size: u64, mtime: SystemTime, ino: u64) -> String {
    let nanos = mtime
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("\"{size:x}-{nanos:x}-{ino:x}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flash tier `nvme` and a storage tier `hdd`, in that order, in fresh directories.
    fn two_tiers() -> (tempfile::TempDir, tempfile::TempDir, Vec<TierConfig>) {
        let flash = tempfile::tempdir().unwrap();
        let hdd = tempfile::tempdir().unwrap();
        let tiers = vec![
            tier("nvme", TierKind::Flash, flash.path()),
            tier("hdd", TierKind::Storage, hdd.path()),
        ];
        (flash, hdd, tiers)
    }

    fn tier(name: &str, kind: TierKind, path: &Path) -> TierConfig {
        TierConfig {
            name: name.into(),
            kind,
            path: path.to_path_buf(),
            numa_node: None,
        }
    }

    /// Listers hand ids over in batches while the base is built, in whatever order the tiers'
    /// batches arrive: the first tier in config order still wins every duplicate, the counts
    /// add up, and a tier that cannot be listed is out of service without losing the others.
    #[test]
    fn a_scan_over_many_batches_keeps_tier_order_and_counts() {
        let flash = tempfile::tempdir().unwrap();
        let hdd = tempfile::tempdir().unwrap();
        // 40,000 ids of ~20 bytes: several NAMES_PER_BATCH batches per tier.
        let n = 40_000usize;
        assert!(n * 20 > 2 * NAMES_PER_BATCH);
        for i in 0..n {
            let id = format!("title-{i:08}.m4s");
            // Flash holds the even ids, storage every id: the even ones twice.
            if i % 2 == 0 {
                std::fs::File::create(flash.path().join(&id)).unwrap();
            }
            std::fs::File::create(hdd.path().join(&id)).unwrap();
        }
        let gone = flash.path().join("no-such-tier");
        for _ in 0..3 {
            let cat = Catalog::scan(
                &[
                    tier("lost", TierKind::Flash, &gone),
                    tier("nvme", TierKind::Flash, flash.path()),
                    tier("hdd", TierKind::Storage, hdd.path()),
                ],
                2,
            );
            assert_eq!(cat.len(), n);
            assert!(cat.tier_states[0].error.is_some(), "{:?}", cat.tier_states);
            assert_eq!(cat.tier_states[0].objects, 0);
            assert_eq!(cat.tier_states[1].objects, (n / 2) as u64);
            assert_eq!(cat.tier_states[2].objects, (n / 2) as u64);
            for i in [0, 1, 2, 3, n - 2, n - 1, n / 2, n / 2 + 1] {
                let e = cat.get(&format!("title-{i:08}.m4s")).unwrap();
                assert_eq!(usize::from(e.tier), if i % 2 == 0 { 1 } else { 2 }, "{i}");
            }
            assert_eq!(cat.ids(1).len(), n / 2);
            assert_eq!(cat.ids(2).len(), n / 2);
        }
    }

    /// A hash-indexed ext4 directory read by several listers, each from its part of the hash
    /// space, gives exactly what one lister reading from the start gives.
    #[test]
    fn listing_an_ext4_directory_in_hash_ranges_finds_every_id_once() {
        // On the repository's file system (the tests' temporary directories may be tmpfs).
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmp");
        std::fs::create_dir_all(&root).unwrap();
        let dir = tempfile::tempdir_in(&root).unwrap();
        let n = 30_000usize;
        for i in 0..n {
            std::fs::File::create(dir.path().join(format!("seg-{i:06}.m4s"))).unwrap();
        }
        let ranges = hash_ranges_from(dir.path(), 0);
        #[allow(clippy::unnecessary_cast)]
        let is_ext4 = rustix::fs::statfs(dir.path()).is_ok_and(|st| st.f_type as i64 == 0xEF53);
        assert_eq!(
            ranges.len() > 1,
            is_ext4,
            "split only an indexed ext4 directory: {ranges:?}"
        );
        let list = |range| {
            let mut ids = Vec::new();
            list_tier(dir.path(), range, |names| {
                ids.extend(
                    names
                        .split(|&b| b == 0)
                        .filter(|n| !n.is_empty())
                        .map(|n| String::from_utf8(n.to_vec()).unwrap()),
                );
                true
            })
            .unwrap();
            ids
        };
        let mut whole = list((0, u64::MAX));
        whole.sort();
        assert_eq!(whole.len(), n);
        let mut parts: Vec<String> = Vec::new();
        for &range in &ranges {
            let part = list(range);
            if ranges.len() > 1 {
                assert!(
                    part.len() > n / 10 && part.len() < n / 2,
                    "{range:?}: {} ids",
                    part.len()
                );
            }
            parts.extend(part);
        }
        parts.sort();
        assert_eq!(parts, whole);
    }

    #[test]
    fn scans_regular_files_with_valid_ids_only() {
        let flash = tempfile::tempdir().unwrap();
        let hdd = tempfile::tempdir().unwrap();
        std::fs::write(flash.path().join("a.m4s"), b"flash").unwrap();
        std::fs::write(hdd.path().join("a.m4s"), b"storage copy").unwrap();
        std::fs::write(hdd.path().join("b.mp4"), b"bb").unwrap();
        std::fs::write(hdd.path().join(".tmp-c"), b"partial").unwrap();
        std::fs::write(hdd.path().join("bad name"), b"x").unwrap();
        std::fs::create_dir(hdd.path().join("dir")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", hdd.path().join("escape")).unwrap();

        let cat = Catalog::scan(
            &[
                tier("nvme", TierKind::Flash, flash.path()),
                tier("hdd", TierKind::Storage, hdd.path()),
            ],
            7,
        );
        assert_eq!(cat.generation, 7);
        assert_eq!(cat.len(), 2);
        assert_eq!(cat.get("a.m4s").unwrap().tier, 0, "first tier wins");
        assert_eq!(
            cat.get("b.mp4").unwrap().size,
            SIZE_UNKNOWN,
            "the scan stats nothing"
        );
        assert!(!cat.bytes_counted());
        for missing in [".tmp-c", "bad name", "dir", "escape"] {
            assert!(cat.get(missing).is_none(), "{missing}");
        }
        assert_eq!(cat.tier_states[1].objects, 1);
    }

    #[test]
    fn a_broken_tier_is_reported_and_the_other_serves() {
        let good = tempfile::tempdir().unwrap();
        std::fs::write(good.path().join("x"), b"1").unwrap();
        let gone = good.path().join("gone");
        let cat = Catalog::scan(
            &[
                tier("a", TierKind::Flash, &gone),
                tier("b", TierKind::Storage, good.path()),
            ],
            1,
        );
        assert!(cat.tier_states[0].error.is_some());
        assert!(cat.get("x").is_some());
    }

    #[test]
    fn reload_swaps_and_open_describes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let shared = SharedCatalog::new(vec![tier("f", TierKind::Flash, dir.path())]);
        assert!(shared.load().get("new.ts").is_none());
        std::fs::write(dir.path().join("new.ts"), b"0123456789").unwrap();
        let cat = shared.reload();
        assert_eq!(cat.generation, 2);
        let entry = cat.get("new.ts").unwrap();
        let path = cat.path("new.ts", &entry);
        assert_eq!(path, dir.path().join("new.ts"));
        assert_eq!(entry.size, SIZE_UNKNOWN, "not counted yet");
        let obj = OpenObject::open("new.ts", &path, &entry, cat.generation).unwrap();
        assert_eq!(
            obj.size, 10,
            "the size clients see comes from fstat at open"
        );
        assert!(obj.etag.starts_with("\"a-") && obj.etag.ends_with('"'));
        let fixed = String::from_utf8(obj.fixed_headers.clone()).unwrap();
        assert!(fixed.contains("Content-Type: video/mp2t\r\n"));

        // A symlink swapped in after the scan is refused at open.
        std::fs::remove_file(dir.path().join("new.ts")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("new.ts")).unwrap();
        assert!(OpenObject::open("new.ts", &path, &entry, cat.generation).is_err());
    }

    /// Per-tier counts, to compare with what a full scan finds.
    fn counts(cat: &Catalog) -> Vec<(u64, u64)> {
        assert!(cat.bytes_counted());
        cat.tier_states
            .iter()
            .map(|s| (s.objects, s.bytes))
            .collect()
    }

    /// A full scan of `tiers`, its sizes counted.
    fn scanned(tiers: &[TierConfig]) -> Arc<Catalog> {
        let shared = SharedCatalog::new(tiers.to_vec());
        shared.count_sizes();
        shared.snapshot()
    }

    #[test]
    fn sizes_are_counted_after_the_scan_and_changes_meanwhile_are_kept() {
        let (flash, hdd, tiers) = two_tiers();
        std::fs::write(flash.path().join("a.ts"), b"aaaa").unwrap();
        std::fs::write(flash.path().join("gone.ts"), b"gone").unwrap();
        std::fs::write(hdd.path().join("a.ts"), b"storage copy").unwrap();
        std::fs::write(hdd.path().join("b.ts"), b"bbbbbbb").unwrap();
        let shared = SharedCatalog::new(tiers.clone());
        let first = shared.snapshot();
        assert!(!first.bytes_counted());
        assert_eq!(counts_unchecked(&first), vec![(2, 0), (1, 0)]);

        // Changes before the count: objects follow at once, bytes wait for the count.
        std::fs::remove_file(flash.path().join("gone.ts")).unwrap();
        std::fs::write(hdd.path().join("c.ts"), b"cc").unwrap();
        assert_eq!(shared.refresh(["gone.ts", "c.ts"]), 2);
        assert_eq!(counts_unchecked(&shared.snapshot()), vec![(1, 0), (2, 0)]);

        shared.count_sizes();
        let cat = shared.snapshot();
        assert_eq!(counts(&cat), vec![(1, 4), (2, 9)]);
        assert_eq!(cat.get("a.ts").unwrap().size, 4);
        assert_eq!(counts(&cat), counts(&scanned(&tiers)));
        // Counted: changes now keep the bytes.
        std::fs::remove_file(hdd.path().join("b.ts")).unwrap();
        shared.refresh(["b.ts"]);
        assert_eq!(counts(&shared.snapshot()), vec![(1, 4), (1, 2)]);
        // A rescan starts uncounted again; the count is idempotent.
        let rescanned = shared.reload();
        assert!(!rescanned.bytes_counted());
        shared.count_sizes();
        shared.count_sizes();
        assert_eq!(counts(&shared.snapshot()), vec![(1, 4), (1, 2)]);
    }

    fn counts_unchecked(cat: &Catalog) -> Vec<(u64, u64)> {
        cat.tier_states
            .iter()
            .map(|s| (s.objects, s.bytes))
            .collect()
    }

    #[test]
    fn pages_list_every_id_once_in_order_across_base_and_changes() {
        let (flash, hdd, tiers) = two_tiers();
        for i in 0..50 {
            let dir = if i % 3 == 0 { &hdd } else { &flash };
            std::fs::write(dir.path().join(format!("id-{i:03}.ts")), b"x").unwrap();
        }
        let shared = SharedCatalog::new(tiers);
        // Changes in the overlay: one removed, one added between base ids, one moved tier.
        std::fs::remove_file(flash.path().join("id-010.ts")).unwrap();
        std::fs::write(flash.path().join("id-010a.ts"), b"new").unwrap();
        std::fs::write(flash.path().join("id-003.ts"), b"flash now").unwrap();
        shared.refresh(["id-010.ts", "id-010a.ts", "id-003.ts"]);
        let cat = shared.snapshot();
        let mut want: Vec<String> = (0..50)
            .filter(|&i| i != 10)
            .map(|i| format!("id-{i:03}.ts"))
            .chain(["id-010a.ts".to_string()])
            .collect();
        want.sort();
        for limit in [1, 7, 50, 1000] {
            let mut got = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let (page, more) = cat.page(after.as_deref(), limit);
                assert!(page.len() <= limit);
                got.extend(page.iter().map(|(id, _)| id.to_string()));
                after = page.last().map(|(id, _)| id.to_string());
                if !more {
                    break;
                }
            }
            assert_eq!(got, want, "limit {limit}");
        }
        let (page, more) = cat.page(Some("id-002.ts"), 1);
        assert!(more);
        assert_eq!(page[0].0, "id-003.ts");
        assert_eq!(page[0].1.tier, 0, "served from flash since the change");
        assert_eq!(cat.page(Some("id-049.ts"), 10), (vec![], false));
        // ids() is the whole listing split by tier.
        assert_eq!(cat.ids(0).len() + cat.ids(1).len(), want.len());
        assert!(cat.ids(1).iter().all(|id| !["id-003.ts"].contains(id)));
    }

    #[test]
    fn refresh_follows_changes_name_by_name_and_matches_a_rescan() {
        let (flash, hdd, tiers) = two_tiers();
        std::fs::write(hdd.path().join("a.ts"), b"storage").unwrap();
        let shared = SharedCatalog::new(tiers.clone());
        shared.count_sizes();
        let before = shared.snapshot();
        assert_eq!(before.get("a.ts").unwrap().tier, 1);

        // Installed the way fill does it: a hidden temporary renamed in.
        std::fs::write(flash.path().join(".tmp-a.ts"), b"flash!!!!").unwrap();
        std::fs::rename(flash.path().join(".tmp-a.ts"), flash.path().join("a.ts")).unwrap();
        std::fs::write(flash.path().join("b.ts"), b"bb").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", flash.path().join("c.ts")).unwrap();
        let changed = shared.refresh([".tmp-a.ts", "a.ts", "b.ts", "c.ts", "../x"]);
        assert_eq!(changed, 2);
        let cat = shared.snapshot();
        let a = cat.get("a.ts").unwrap();
        assert_eq!((a.tier, a.size), (0, 9), "the flash copy wins");
        assert_ne!(a.stamp, 0, "a change gets a fresh stamp");
        assert!(cat.get("b.ts").is_some());
        assert!(cat.get("c.ts").is_none(), "a symlink is not an object");
        assert_eq!(
            cat.generation, before.generation,
            "a change is not a rescan"
        );
        // The old snapshot is untouched: readers holding it see a consistent catalog.
        assert_eq!(before.len(), 1);
        assert_eq!(before.get("a.ts").unwrap().tier, 1);
        assert_eq!(counts(&cat), counts(&scanned(&tiers)));

        // Deleted from flash: served from storage again; deleted everywhere: gone.
        std::fs::remove_file(flash.path().join("a.ts")).unwrap();
        std::fs::remove_file(flash.path().join("b.ts")).unwrap();
        assert_eq!(shared.refresh(["a.ts", "b.ts"]), 2);
        let cat = shared.snapshot();
        assert_eq!(cat.get("a.ts").unwrap().tier, 1);
        assert!(cat.get("b.ts").is_none());
        assert_eq!(counts(&cat), counts(&scanned(&tiers)));

        // A name that changed nothing publishes nothing.
        assert_eq!(shared.refresh(["nothing.ts"]), 0);

        // A replaced file gets a new stamp (an open-file cache drops its old descriptor).
        let stamp = shared.load().get("a.ts").unwrap().stamp;
        std::fs::write(hdd.path().join(".tmp"), b"new").unwrap();
        std::fs::rename(hdd.path().join(".tmp"), hdd.path().join("a.ts")).unwrap();
        shared.refresh(["a.ts"]);
        let entry = shared.load().get("a.ts").unwrap();
        assert_ne!(entry.stamp, stamp);
        assert_eq!(entry.size, 3);
    }

    #[test]
    fn refresh_skips_tiers_out_of_service() {
        let good = tempfile::tempdir().unwrap();
        let gone = good.path().join("gone");
        let shared = SharedCatalog::new(vec![
            tier("a", TierKind::Flash, &gone),
            tier("b", TierKind::Storage, good.path()),
        ]);
        std::fs::write(good.path().join("x.ts"), b"1").unwrap();
        assert_eq!(shared.refresh(["x.ts"]), 1);
        let cat = shared.load();
        assert_eq!(cat.get("x.ts").unwrap().tier, 1);
        assert_eq!(cat.tier_states[0].objects, 0);
    }

    #[test]
    fn changes_past_the_merge_threshold_are_packed_into_a_new_base() {
        let dir = tempfile::tempdir().unwrap();
        let tiers = vec![tier("f", TierKind::Flash, dir.path())];
        for i in 0..10 {
            std::fs::write(dir.path().join(format!("old-{i}.ts")), b"o").unwrap();
        }
        let shared = SharedCatalog::new(tiers.clone());
        shared.count_sizes();
        let names: Vec<String> = (0..5000).map(|i| format!("new-{i}.ts")).collect();
        for n in &names {
            std::fs::write(dir.path().join(n), b"nn").unwrap();
        }
        std::fs::remove_file(dir.path().join("old-3.ts")).unwrap();
        let first = shared.snapshot();
        // In two batches: the first stays in the overlay, the second crosses the threshold.
        shared.refresh(names[..100].iter().map(String::as_str).chain(["old-3.ts"]));
        let mid = shared.snapshot();
        assert_eq!(mid.overlay.len(), 101);
        assert!(mid.get("old-3.ts").is_none());
        assert_eq!(mid.ids(0).len(), 109);
        shared.refresh(names[100..].iter().map(String::as_str));
        let cat = shared.snapshot();
        assert!(cat.overlay.is_empty(), "merged");
        assert_eq!(cat.len(), 5009);
        assert_eq!(cat.ids(0).len(), 5009);
        assert!(cat.get("old-3.ts").is_none());
        assert_eq!(cat.get("new-4999.ts").unwrap().size, 2);
        assert_eq!(counts(&cat), counts(&scanned(&tiers)));
        // Older snapshots are untouched.
        assert_eq!(first.len(), 10);
        assert!(first.get("old-3.ts").is_some());
        assert_eq!(mid.len(), 109);
    }

    #[test]
    fn the_feed_numbers_changes_and_resets_after_a_rescan_or_when_too_old() {
        let flash = tempfile::tempdir().unwrap();
        let hdd = tempfile::tempdir().unwrap();
        std::fs::write(hdd.path().join("old.ts"), b"o").unwrap();
        let shared = SharedCatalog::new(vec![
            tier("nvme", TierKind::Flash, flash.path()),
            tier("hdd", TierKind::Storage, hdd.path()),
        ]);
        let epoch = shared.epoch();
        assert_eq!(epoch.len(), 16);
        let start = shared.snapshot().seq;
        let nothing = shared.changes(start, Some(&epoch), 100);
        assert!(!nothing.reset && nothing.changes.is_empty());
        assert_eq!((nothing.seq, nothing.latest), (start, start));

        // Added on flash, moved (a flash copy of a storage object), removed; a name that
        // changes nothing is not a change.
        std::fs::write(flash.path().join("a.ts"), b"a").unwrap();
        std::fs::write(flash.path().join("old.ts"), b"flash").unwrap();
        shared.refresh(["a.ts", "old.ts", "none.ts"]);
        std::fs::remove_file(flash.path().join("a.ts")).unwrap();
        shared.refresh(["a.ts"]);
        let got = shared.changes(start, Some(&epoch), 100);
        assert!(!got.reset);
        let seen: Vec<(u64, &str, u16, bool)> = got
            .changes
            .iter()
            .map(|c| (c.seq, c.id.as_str(), c.tier, c.removed))
            .collect();
        assert_eq!(
            seen,
            [
                (start + 1, "a.ts", 0, false),
                (start + 2, "old.ts", 0, false),
                (start + 3, "a.ts", 0, true)
            ]
        );
        assert_eq!((got.seq, got.latest), (start + 3, start + 3));
        assert_eq!(
            shared.snapshot().seq,
            start + 3,
            "the snapshot covers its changes"
        );
        // Paged by limit, from any point.
        let page = shared.changes(start + 1, None, 1);
        assert_eq!(page.changes.len(), 1);
        assert_eq!((page.changes[0].seq, page.seq), (start + 2, start + 2));
        // Another epoch, or a number from the future: reset.
        assert!(shared.changes(start, Some("0123456789abcdef"), 100).reset);
        assert!(shared.changes(start + 4, Some(&epoch), 100).reset);

        // A rescan resets every earlier number; after it, changes follow again.
        let rescanned = shared.reload();
        let r = shared.changes(start + 3, Some(&epoch), 100);
        assert!(r.reset && r.changes.is_empty());
        assert_eq!(r.seq, rescanned.seq);
        assert_eq!(r.latest, rescanned.seq);
        std::fs::write(flash.path().join("b.ts"), b"b").unwrap();
        shared.refresh(["b.ts"]);
        let after = shared.changes(rescanned.seq, Some(&epoch), 100);
        assert!(!after.reset);
        assert_eq!(after.changes.len(), 1);
        assert_eq!(after.changes[0].id, "b.ts");

        // Further behind than the ring holds: reset.
        let mut feed = Feed::new(2);
        for id in ["x", "y", "z"] {
            feed.push(FeedEntry {
                id: id.into(),
                tier: 0,
                removed: false,
            });
        }
        assert!(feed.after(0, None, 10).reset, "x fell out of the ring");
        let tail = feed.after(1, None, 10);
        assert!(!tail.reset);
        assert_eq!(
            tail.changes
                .iter()
                .map(|c| c.id.as_str())
                .collect::<Vec<_>>(),
            ["y", "z"]
        );
        assert_ne!(Feed::new(2).epoch, feed.epoch, "each process its own epoch");
    }

    #[test]
    fn sizes_are_counted_by_tier_on_a_merged_base_too() {
        let (flash, hdd, tiers) = two_tiers();
        for i in 0..20 {
            std::fs::write(hdd.path().join(format!("h{i}.ts")), vec![0; i]).unwrap();
            std::fs::write(flash.path().join(format!("f{i}.ts")), vec![0; 2 * i]).unwrap();
        }
        std::fs::write(hdd.path().join("f3.ts"), b"shadowed by flash").unwrap();
        let shared = SharedCatalog::new(tiers.clone());
        // Changes on both tiers, then packed into a new base.
        std::fs::write(hdd.path().join("late.ts"), b"late").unwrap();
        std::fs::remove_file(flash.path().join("f3.ts")).unwrap();
        shared.refresh(["late.ts", "f3.ts"]);
        let mut merged = Catalog::clone(&shared.snapshot());
        merged.merge();
        shared.current.store(Arc::new(merged));
        shared.count_sizes();
        let cat = shared.snapshot();
        assert_eq!(counts(&cat), counts(&scanned(&tiers)));
        assert_eq!(cat.get("f3.ts").unwrap().size, 17, "storage's copy");
        assert_eq!(cat.get("f19.ts").unwrap().size, 38);
    }
}
