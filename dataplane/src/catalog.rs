//! The catalog: which content ids exist, on which tier, at which path.
//!
//! The filesystem is the truth. A scan lists each tier directory (regular files with valid ids
//! only: no symlinks, no subdirectories, no hidden temporaries) and builds an immutable
//! [`Catalog`]; a reload builds a new one and swaps it in atomically ([`SharedCatalog`]), so
//! executors never wait on a lock and connections are never dropped. A tier that cannot be
//! listed is reported and left out; the other tiers keep serving.
//!
//! When the same id exists on several tiers, the first tier in config order wins (list flash
//! first). Metadata served to clients (size, validators) comes from `fstat` of the file actually
//! opened, not from the scan, so a file replaced between scan and open is still described right.

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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

/// Scan result for one tier.
#[derive(Debug, Clone, Default)]
pub struct TierState {
    /// Objects found.
    pub objects: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Why the tier is out of service, if it is.
    pub error: Option<String>,
}

/// One object.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Index into [`Catalog::tiers`].
    pub tier: usize,
    /// Full path of the file.
    pub path: PathBuf,
    /// Size at scan time.
    pub size: u64,
}

/// An immutable snapshot of every tier's contents.
#[derive(Debug)]
pub struct Catalog {
    /// Increases with every reload; per-core open-file caches compare it to drop stale files.
    pub generation: u64,
    /// The configured tiers, in config order.
    pub tiers: Vec<Tier>,
    /// Per tier: counts and health, same order as `tiers`.
    pub tier_states: Vec<TierState>,
    objects: HashMap<Box<str>, Entry>,
}

impl Catalog {
    /// Lists every tier directory.
    pub fn scan(tiers: &[TierConfig], generation: u64) -> Catalog {
        let tiers: Vec<Tier> = tiers
            .iter()
            .map(|t| Tier {
                name: t.name.clone(),
                kind: t.kind,
                path: t.path.clone(),
            })
            .collect();
        let mut objects = HashMap::new();
        let mut tier_states = Vec::with_capacity(tiers.len());
        for (index, tier) in tiers.iter().enumerate() {
            let mut state = TierState::default();
            if let Err(e) = scan_tier(index, tier, &mut objects, &mut state) {
                tracing::error!(tier = %tier.name, path = %tier.path.display(), "tier out of service: {e}");
                state.error = Some(format!("{}: {e}", tier.path.display()));
            }
            tier_states.push(state);
        }
        Catalog {
            generation,
            tiers,
            tier_states,
            objects,
        }
    }

    /// Looks up an id.
    pub fn get(&self, id: &str) -> Option<&Entry> {
        self.objects.get(id)
    }

    /// The ids served from tier `tier` (index into [`Catalog::tiers`]), sorted. An id held by
    /// several tiers is listed under the one it is served from (the first in config order).
    pub fn ids(&self, tier: usize) -> Vec<&str> {
        let mut ids: Vec<&str> = self
            .objects
            .iter()
            .filter(|(_, e)| e.tier == tier)
            .map(|(id, _)| &**id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Number of objects in all tiers.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether no tier holds anything.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

fn scan_tier(
    index: usize,
    tier: &Tier,
    objects: &mut HashMap<Box<str>, Entry>,
    state: &mut TierState,
) -> std::io::Result<()> {
    for dirent in std::fs::read_dir(&tier.path)? {
        let dirent = dirent?;
        let Ok(name) = dirent.file_name().into_string() else {
            continue;
        };
        if !crate::content_id::is_valid(&name) {
            continue;
        }
        // DirEntry::metadata does not follow symlinks, so a link out of the tier is skipped.
        let Ok(meta) = dirent.metadata() else {
            continue;
        };
        if !meta.file_type().is_file() {
            continue;
        }
        if objects.contains_key(name.as_str()) {
            continue;
        }
        state.objects += 1;
        state.bytes += meta.len();
        objects.insert(
            name.into_boxed_str(),
            Entry {
                tier: index,
                path: dirent.path(),
                size: meta.len(),
            },
        );
    }
    Ok(())
}

/// The catalog shared by every executor and swapped whole on reload.
#[derive(Debug)]
pub struct SharedCatalog {
    current: ArcSwap<Catalog>,
    tiers: ArcSwap<Vec<TierConfig>>,
    next_generation: AtomicU64,
}

impl SharedCatalog {
    /// Scans the tiers for the first time.
    pub fn new(tiers: Vec<TierConfig>) -> SharedCatalog {
        let first = Catalog::scan(&tiers, 1);
        SharedCatalog {
            current: ArcSwap::from_pointee(first),
            tiers: ArcSwap::from_pointee(tiers),
            next_generation: AtomicU64::new(2),
        }
    }

    /// The current snapshot (cheap; no lock).
    pub fn load(&self) -> arc_swap::Guard<Arc<Catalog>> {
        self.current.load()
    }

    /// A clone of the current snapshot's `Arc`.
    pub fn snapshot(&self) -> Arc<Catalog> {
        self.current.load_full()
    }

    /// Replaces the tier list (a reloaded config); the next [`SharedCatalog::reload`] scans it.
    pub fn set_tiers(&self, tiers: Vec<TierConfig>) {
        self.tiers.store(Arc::new(tiers));
    }

    /// Rescans every tier and swaps the result in. In-flight responses keep their open files.
    pub fn reload(&self) -> Arc<Catalog> {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let next = Arc::new(Catalog::scan(&self.tiers.load(), generation));
        self.current.store(next.clone());
        tracing::info!(generation, objects = next.len(), "catalog reloaded");
        next
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
    /// Per 64 KiB block, until when (core-local milliseconds) the block is known to be in the
    /// page cache. Owned by one core's open-file cache; empty for files over 4 GiB, whose
    /// blocks are checked on every request.
    pub resident_until: Box<[std::cell::Cell<u32>]>,
}

impl OpenObject {
    /// Opens `entry` (never following a symlink) and describes it. May block on the disk.
    pub fn open(id: &str, entry: &Entry, generation: u64) -> std::io::Result<OpenObject> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&entry.path)?;
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
            tier: entry.tier,
            size,
            etag,
            last_modified,
            fixed_headers,
            generation,
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
    use std::path::Path;

    fn tier(name: &str, kind: TierKind, path: &Path) -> TierConfig {
        TierConfig {
            name: name.into(),
            kind,
            path: path.to_path_buf(),
            numa_node: None,
        }
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
        assert_eq!(cat.get("b.mp4").unwrap().size, 2);
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
        let obj = OpenObject::open("new.ts", entry, cat.generation).unwrap();
        assert_eq!(obj.size, 10);
        assert!(obj.etag.starts_with("\"a-") && obj.etag.ends_with('"'));
        let fixed = String::from_utf8(obj.fixed_headers.clone()).unwrap();
        assert!(fixed.contains("Content-Type: video/mp2t\r\n"));

        // A symlink swapped in after the scan is refused at open.
        std::fs::remove_file(dir.path().join("new.ts")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("new.ts")).unwrap();
        assert!(OpenObject::open("new.ts", entry, cat.generation).is_err());
    }
}
