//! The tier watcher: a disk that fails takes its tier out of service, and a tier that comes
//! back returns, without a restart or an operator.
//!
//! One plain thread, off the serving cores. Every `io.tier_check_interval_ms`, and at once when
//! an executor reports an I/O error serving from a tier (`TierWatch::poke`), it checks each
//! tier directory: it still exists, is a directory, and can be opened and read. When a tier's
//! verdict differs from the current catalog's, the catalog is rescanned: a tier that fails is
//! left out (its objects are served from another tier that holds them, else 404), and
//! `edgeplane_tier_up{tier}` reads 0 until it passes again.
//!
//! The checks may block on a dying disk; only this thread waits.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::shared::Shared;

/// Least time between two checks, so a burst of errors (a 404 storm for evicted objects)
/// costs a few checks a second, not one per request.
const MIN_GAP: Duration = Duration::from_millis(20);

/// Why a tier directory cannot serve, if it cannot: exists, is a directory, can be opened and
/// its first entry read.
pub(crate) fn check_tier(path: &Path) -> Result<(), String> {
    crate::host::check_tier_path(path)?;
    let mut dir =
        std::fs::read_dir(path).map_err(|e| format!("{}: cannot list: {e}", path.display()))?;
    match dir.next() {
        Some(Err(e)) => Err(format!("{}: cannot list: {e}", path.display())),
        _ => Ok(()),
    }
}

/// Starts the watcher thread.
pub(crate) fn start(shared: Arc<Shared>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("edgeplane-tiers".into())
        .spawn(move || {
            shared.tier_watch.attach();
            while !shared.stop.load(Ordering::Relaxed) {
                shared.tier_watch.checking();
                check_all(&shared);
                let interval = shared.config.load().io.tier_check_interval();
                std::thread::park_timeout(interval);
                std::thread::sleep(MIN_GAP.min(interval));
            }
        })?;
    Ok(())
}

/// Checks every tier; rescans the catalog when one changed state.
fn check_all(shared: &Shared) {
    // The tiers and their verdicts only, not the snapshot: the checks may block on a dying
    // disk, and holding the snapshot would keep a catalog a rescan replaced alive meanwhile.
    let (tiers, out_of_service): (_, Vec<bool>) = {
        let catalog = shared.catalog.load();
        (
            catalog.tiers.clone(),
            catalog
                .tier_states
                .iter()
                .map(|s| s.error.is_some())
                .collect(),
        )
    };
    let mut changed = false;
    for (tier, &down) in tiers.iter().zip(&out_of_service) {
        let verdict = check_tier(&tier.path);
        match (&verdict, down) {
            (Err(why), false) => {
                tracing::error!(tier = %tier.name, "tier out of service: {why}");
                changed = true;
            }
            (Ok(()), true) => {
                tracing::info!(tier = %tier.name, path = %tier.path.display(), "tier back in service");
                changed = true;
            }
            _ => {}
        }
    }
    if changed {
        shared.catalog.reload();
    }
}
