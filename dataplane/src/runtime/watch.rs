//! The catalog watch: objects renamed into a tier directory are served, and deleted ones stop
//! being served, without a reload call and without a rescan.
//!
//! One plain thread, off the serving cores. It holds an inotify instance with a watch on each
//! tier directory (names moved in or out, files closed after writing, deleted), set up *before*
//! the first scan so nothing that changes during it is missed (applying a change twice is
//! harmless: each name is re-checked on the disk). Each batch of events becomes one
//! [`SharedCatalog::refresh`](crate::catalog::SharedCatalog::refresh): a few `lstat`s per name
//! and one persistent-map update, whatever the catalog's size.
//!
//! It falls back to a full rescan, logged and counted in
//! `edgeplane_catalog_watch_rescans_total{reason}`, when changes may have been lost: the
//! kernel's event queue overflowed (`overflow`); a tier directory was moved, deleted, replaced,
//! unmounted or mounted over (`replaced`: it is watched again at its path, checked every
//! [`CHECK_EVERY`] by device and inode); a directory cannot be watched (`watch_failed`: rescanned
//! again every [`FAILED_RESCAN_EVERY`] until it can). A tier path that does not exist is the
//! tier watcher's business (`runtime::tiers`); it is watched again when it comes back.

use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

use super::shared::Shared;
use crate::config::TierConfig;
use crate::metrics::Rescan;

/// How often each tier directory's identity (device, inode) is compared with the watched one.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(1);
/// While a tier directory cannot be watched, how often the catalog is rescanned instead.
pub(crate) const FAILED_RESCAN_EVERY: Duration = Duration::from_secs(60);
/// Longest wait for events; also bounds how late the stop flag is seen.
const POLL_MS: i32 = 200;

/// What each tier directory's watch reports.
fn mask() -> WatchMask {
    // CREATE: hard links (`ln`) raise nothing else, so a created name is taken when it is a
    // second link; a file created in place waits for its CLOSE_WRITE (fill never writes in
    // place: it renames a finished temporary in), so a half-written file is never served.
    WatchMask::MOVED_TO
        | WatchMask::CREATE
        | WatchMask::MOVED_FROM
        | WatchMask::CLOSE_WRITE
        | WatchMask::DELETE
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
}

/// Whether `name`, just created in the directory watched as `wd`, is another link to an
/// existing file (whole the moment it appears) rather than a file still being written.
fn created_as_link(watched: &[Watched], wd: &WatchDescriptor, name: &str) -> bool {
    watched
        .iter()
        .filter(|w| w.wd.as_ref() == Some(wd))
        .any(|w| {
            std::fs::symlink_metadata(w.path.join(name))
                .is_ok_and(|m| m.file_type().is_file() && m.nlink() > 1)
        })
}

/// One tier directory's watch.
#[derive(Debug)]
struct Watched {
    path: PathBuf,
    /// Device and inode of the directory watched; `None`: not watched.
    identity: Option<(u64, u64)>,
    wd: Option<WatchDescriptor>,
    /// It exists but could not be watched (logged once per failure).
    failed: bool,
}

/// The inotify instance and its watches, made before the first scan.
#[derive(Debug)]
pub(crate) struct Watcher {
    inotify: Inotify,
    watched: Vec<Watched>,
    /// Last fallback rescan for a directory that cannot be watched.
    last_failed_rescan: Option<Instant>,
}

impl Watcher {
    /// Watches every tier directory. Fails only when inotify itself is unavailable; a directory
    /// that cannot be watched is logged and handled by the loop.
    pub(crate) fn new(tiers: &[TierConfig]) -> std::io::Result<Watcher> {
        let mut watcher = Watcher {
            inotify: Inotify::init()?,
            watched: Vec::new(),
            last_failed_rescan: None,
        };
        if watcher.set_tiers(tiers) {
            // The first scan, about to run, covers it.
            watcher.last_failed_rescan = Some(Instant::now());
        }
        Ok(watcher)
    }

    /// Replaces the watched directories with `tiers`' (in order). Returns whether one exists
    /// but cannot be watched.
    fn set_tiers(&mut self, tiers: &[TierConfig]) -> bool {
        for w in self.watched.drain(..) {
            if let Some(wd) = w.wd {
                let _ = self.inotify.watches().remove(wd);
            }
        }
        self.watched = tiers
            .iter()
            .map(|t| Watched {
                path: t.path.clone(),
                identity: None,
                wd: None,
                failed: false,
            })
            .collect();
        self.check().1
    }

    /// Watches again each directory whose identity changed (or that was not watched). Returns
    /// whether one was (re)watched, i.e. whether changes may have been missed, and whether one
    /// exists but cannot be watched.
    fn check(&mut self) -> (bool, bool) {
        let mut rewatched = false;
        let mut failing = false;
        for w in &mut self.watched {
            let now = std::fs::metadata(&w.path)
                .ok()
                .filter(|m| m.is_dir())
                .map(|m| (m.dev(), m.ino()));
            if now.is_some() && now == w.identity && w.wd.is_some() {
                continue;
            }
            if let Some(wd) = w.wd.take() {
                // The old watch may be gone already (IN_IGNORED); either way it is not wanted.
                let _ = self.inotify.watches().remove(wd);
                rewatched = true;
            }
            w.identity = None;
            if now.is_none() {
                continue;
            }
            match self.inotify.watches().add(&w.path, mask()) {
                Ok(wd) => {
                    if w.failed {
                        tracing::info!(path = %w.path.display(), "tier directory watched again");
                    }
                    w.wd = Some(wd);
                    w.identity = now;
                    w.failed = false;
                    rewatched = true;
                }
                Err(e) => {
                    if !w.failed {
                        tracing::error!(
                            path = %w.path.display(),
                            "cannot watch the tier directory ({e}): its changes are seen only \
                             by rescans, every {}s, until it can be watched",
                            FAILED_RESCAN_EVERY.as_secs()
                        );
                    }
                    w.failed = true;
                    failing = true;
                }
            }
        }
        (rewatched, failing)
    }
}

/// Starts the watch thread with the watches made before the first scan.
pub(crate) fn start(shared: Arc<Shared>, mut watcher: Watcher) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("edgeplane-watch".into())
        .spawn(move || {
            let mut buffer = vec![0u8; 64 * 1024];
            let mut names: HashSet<String> = HashSet::new();
            let mut tiers = shared.catalog.tier_configs();
            let mut last_check = Instant::now();
            while !shared.stop.load(Ordering::Relaxed) {
                let mut pollfd = libc::pollfd {
                    fd: watcher.inotify.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd on the stack for the duration of the call; the
                // descriptor is the inotify instance this thread owns.
                unsafe { libc::poll(&mut pollfd, 1, POLL_MS) };
                let mut overflow = false;
                let mut self_event = false;
                let mut events = 0u64;
                loop {
                    match watcher.inotify.read_events(&mut buffer) {
                        Ok(batch) => {
                            let mut any = false;
                            for event in batch {
                                any = true;
                                events += 1;
                                if event.mask.contains(EventMask::Q_OVERFLOW) {
                                    overflow = true;
                                } else if event.mask.intersects(
                                    EventMask::IGNORED
                                        | EventMask::DELETE_SELF
                                        | EventMask::MOVE_SELF
                                        | EventMask::UNMOUNT,
                                ) {
                                    self_event = true;
                                } else if let Some(name) = event.name.and_then(|n| n.to_str()) {
                                    // A file created in place is half-written until its
                                    // CLOSE_WRITE, which brings it in; only a hard link (`ln`),
                                    // whole the moment it appears, is taken at CREATE.
                                    let half_written = event.mask == EventMask::CREATE
                                        && !created_as_link(&watcher.watched, &event.wd, name);
                                    if !overflow && !half_written {
                                        names.insert(name.to_owned());
                                    }
                                }
                            }
                            if !any {
                                break;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            tracing::error!("reading tier watch events: {e}");
                            overflow = true;
                            break;
                        }
                    }
                }
                if overflow {
                    tracing::warn!(
                        "tier watch queue overflowed (fs.inotify.max_queued_events): \
                         changes were lost, rescanning the catalog"
                    );
                    names.clear();
                    shared.metrics.watch_rescan(Rescan::Overflow);
                    shared.metrics.watch_events(events, 0);
                    shared.catalog.reload();
                } else if !names.is_empty() || events > 0 {
                    let changed = shared.catalog.refresh(names.iter().map(String::as_str));
                    shared.metrics.watch_events(events, changed as u64);
                    names.clear();
                }

                // A reloaded config may name other tier directories.
                let current = shared.catalog.tier_configs();
                if !Arc::ptr_eq(&current, &tiers) {
                    let moved = current.len() != tiers.len()
                        || current
                            .iter()
                            .zip(tiers.iter())
                            .any(|(a, b)| a.path != b.path);
                    tiers = current;
                    if moved {
                        // The reload that changed them rescanned before they were watched.
                        watcher.set_tiers(&tiers);
                        shared.metrics.watch_rescan(Rescan::Replaced);
                        shared.catalog.reload();
                    }
                }
                if self_event || last_check.elapsed() >= CHECK_EVERY {
                    last_check = Instant::now();
                    let (rewatched, failing) = watcher.check();
                    if rewatched {
                        tracing::warn!(
                            "a tier directory was replaced, moved or mounted over: watching it \
                             again and rescanning the catalog"
                        );
                        shared.metrics.watch_rescan(Rescan::Replaced);
                        shared.catalog.reload();
                    }
                    if failing
                        && watcher
                            .last_failed_rescan
                            .is_none_or(|t| t.elapsed() >= FAILED_RESCAN_EVERY)
                    {
                        watcher.last_failed_rescan = Some(Instant::now());
                        shared.metrics.watch_rescan(Rescan::WatchFailed);
                        shared.catalog.reload();
                    }
                }
            }
        })?;
    Ok(())
}
