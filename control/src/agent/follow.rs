//! Following the data plane's catalog: one full listing (`GET /catalog`, paged), then its change
//! feed (`GET /catalog/changes`) from the listing's number on, so a health report costs the
//! changes since the last one, not a listing of every object. The feed says `reset` when it
//! cannot be followed from the number asked (a rescan, changes older than its ring, a restarted
//! data plane: a new epoch); then the agent lists in full once more and follows again.

use std::collections::BTreeSet;

use super::dataplane::{AdminClient, AdminError, CatalogView, TierSpec};
use super::held::HeldTracker;

/// Where the agent is in the data plane's feed, and what following it cost.
#[derive(Debug, Default)]
pub(crate) struct CatalogFollower {
    /// The feed's epoch and the number to follow from; `None`: list in full next (at start,
    /// after a reset or a failed listing, or when the data plane has no feed).
    at: Option<(String, u64)>,
    /// Full listings since start.
    pub(crate) listings: u64,
    /// Changes applied from the feed since start.
    pub(crate) changes: u64,
}

impl CatalogFollower {
    /// Brings `held` up to date with the data plane's catalog: the feed's changes since the
    /// last call, or a full listing when the feed cannot be followed. Returns the tiers'
    /// counts (without ids).
    pub(crate) async fn sync(
        &mut self,
        admin: &AdminClient,
        specs: &[TierSpec],
        held: &mut HeldTracker,
    ) -> Result<CatalogView, AdminError> {
        if let Some((epoch, since)) = self.at.clone() {
            if let Some(view) = self.follow(admin, specs, held, &epoch, since).await? {
                return Ok(view);
            }
            tracing::info!(
                "agent: the data plane's catalog feed cannot be followed from {since} (a rescan, a restart, or too far behind): listing it in full"
            );
            self.at = None;
        }
        let mut view = admin.catalog().await?;
        self.listings += 1;
        held.replace(held_ids(&view, specs));
        self.at = view.epoch.clone().map(|epoch| (epoch, view.seq));
        for tier in &mut view.tiers {
            tier.ids = Vec::new();
        }
        Ok(view)
    }

    /// The feed from `since`, applied to `held`; `None` when it says to list in full.
    async fn follow(
        &mut self,
        admin: &AdminClient,
        specs: &[TierSpec],
        held: &mut HeldTracker,
        epoch: &str,
        mut since: u64,
    ) -> Result<Option<CatalogView>, AdminError> {
        loop {
            let Some(page) = admin.changes(since, epoch).await? else {
                return Ok(None);
            };
            if page.reset || page.epoch != epoch {
                return Ok(None);
            }
            let up = up_tiers(&page.tiers, specs);
            for change in &page.changes {
                held.apply(
                    &change.id,
                    change.op == "add" && up.contains(change.tier.as_str()),
                );
            }
            self.changes += page.changes.len() as u64;
            since = page.seq;
            self.at = Some((epoch.to_string(), since));
            if !page.more {
                return Ok(Some(CatalogView {
                    generation: page.generation,
                    tiers: page.tiers,
                    next: None,
                    epoch: Some(epoch.to_string()),
                    seq: since,
                }));
            }
        }
    }
}

/// The agent's tiers (by name) that the data plane serves from.
fn up_tiers<'a>(
    tiers: &'a [super::dataplane::CatalogTier],
    specs: &[TierSpec],
) -> BTreeSet<&'a str> {
    tiers
        .iter()
        .filter(|t| t.up && specs.iter().any(|s| s.name == t.name))
        .map(|t| t.name.as_str())
        .collect()
}

/// The held set of a full listing: the ids of the agent's tiers that are up (a tier out of
/// service offers nothing).
fn held_ids(view: &CatalogView, specs: &[TierSpec]) -> BTreeSet<String> {
    let up = up_tiers(&view.tiers, specs);
    view.tiers
        .iter()
        .filter(|t| up.contains(t.name.as_str()))
        .flat_map(|t| t.ids.iter().cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::dataplane::CatalogTier;
    use edgeplane_api::TierKind;

    #[test]
    fn a_listing_holds_the_ids_of_the_agents_tiers_that_are_up() {
        let specs: Vec<TierSpec> = ["flash", "hdd"]
            .into_iter()
            .map(|n| TierSpec {
                name: n.into(),
                kind: TierKind::Flash,
                path: format!("/srv/{n}").into(),
            })
            .collect();
        let tier = |name: &str, up, ids: &[&str]| CatalogTier {
            name: name.into(),
            up,
            objects: ids.len() as u64,
            bytes: 0,
            ids: ids.iter().map(|s| s.to_string()).collect(),
        };
        let view = CatalogView {
            generation: 1,
            tiers: vec![
                tier("flash", true, &["a", "b"]),
                tier("hdd", false, &["c"]),
                tier("other", true, &["d"]),
            ],
            next: None,
            epoch: Some("e".into()),
            seq: 0,
        };
        assert_eq!(
            held_ids(&view, &specs).into_iter().collect::<Vec<_>>(),
            ["a", "b"],
            "hdd is down and `other` is not the agent's: their objects are not offered"
        );
    }
}
