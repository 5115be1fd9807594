//! The fleet's real demand per site, beside the synthetic Zipf prior.
//!
//! Every health report carries the appliance's most requested objects over its last interval
//! ([`DemandEntry`]). Per site the service keeps a score per object: the requests reported,
//! decaying with a half-life (`popularity.demand_half_life_secs`), at most [`MAX_PER_SITE`]
//! objects (the lowest scores are dropped). A site's ranking blends the two as shares:
//!
//! `blended(o) = (1 − w) × prior(o) / Σ prior + w × score(o) / Σ score`
//!
//! with `w = popularity.demand_weight`; objects are ranked by it, ties in prior order. A site
//! without reported demand uses the prior ranking as it is. A site's blended ranking is
//! recomputed at most once per health interval, so placement follows demand in the next
//! manifest without re-sorting the catalog on every report.

use std::collections::HashMap;
use std::sync::Arc;

use crate::cloud::popularity::RankedObject;
use edgeplane_api::{valid_content_id, DemandEntry, MAX_DEMAND_ENTRIES};

/// Most objects with a score per site.
pub const MAX_PER_SITE: usize = 20_000;

/// Scores under this are forgotten.
const FORGET: f64 = 1e-3;

#[derive(Debug, Default)]
struct SiteDemand {
    scores: HashMap<String, f64>,
    /// Unix seconds the scores were last decayed to.
    at: u64,
    /// Changes on every report that added demand.
    version: u64,
}

#[derive(Debug)]
struct SiteRanking {
    prior_key: (u64, u64),
    version: u64,
    at: u64,
    ranking: Arc<Vec<RankedObject>>,
}

/// The fleet's demand, per site.
#[derive(Debug)]
pub struct FleetDemand {
    weight: f64,
    half_life_secs: u64,
    sites: HashMap<String, SiteDemand>,
    rankings: HashMap<String, SiteRanking>,
    /// Demand entries taken from health reports.
    pub entries: u64,
}

impl FleetDemand {
    /// Blending with weight `weight` (0–1), scores halving every `half_life_secs`.
    pub fn new(weight: f64, half_life_secs: u64) -> FleetDemand {
        FleetDemand {
            weight,
            half_life_secs: half_life_secs.max(1),
            sites: HashMap::new(),
            rankings: HashMap::new(),
            entries: 0,
        }
    }

    /// Adds a report's demand from an appliance at `site`, at `now`. Entries past
    /// [`MAX_DEMAND_ENTRIES`] and invalid ids are ignored.
    pub fn record(&mut self, site: &str, demand: &[DemandEntry], now: u64) {
        if demand.is_empty() {
            return;
        }
        let s = self.sites.entry(site.to_owned()).or_default();
        if now > s.at {
            let factor = 0.5f64.powf((now - s.at) as f64 / self.half_life_secs as f64);
            s.scores.retain(|_, v| {
                *v *= factor;
                *v >= FORGET
            });
            s.at = now;
        }
        for e in demand.iter().take(MAX_DEMAND_ENTRIES) {
            if e.requests == 0 || !valid_content_id(&e.id) {
                continue;
            }
            match s.scores.get_mut(e.id.as_str()) {
                Some(v) => *v += e.requests as f64,
                None => {
                    s.scores.insert(e.id.clone(), e.requests as f64);
                }
            }
            self.entries += 1;
        }
        if s.scores.len() > MAX_PER_SITE {
            // Down to 90% at once, so the pruning is rare.
            let mut v: Vec<(String, f64)> = s.scores.drain().collect();
            v.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
            v.truncate(MAX_PER_SITE / 10 * 9);
            s.scores.extend(v);
        }
        s.version += 1;
    }

    /// Objects with a score at `site`, highest first (for inspection and tests).
    pub fn scores(&self, site: &str) -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> = self
            .sites
            .get(site)
            .map(|s| s.scores.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }

    /// Sites with reported demand.
    pub fn sites(&self) -> usize {
        self.sites.len()
    }

    /// The ranking placement walks for an appliance at `site`: `prior` (identified by
    /// `prior_key`) blended with the site's demand, recomputed at most every `refresh_secs`.
    pub fn ranking(
        &mut self,
        site: &str,
        prior: &Arc<Vec<RankedObject>>,
        prior_key: (u64, u64),
        now: u64,
        refresh_secs: u64,
    ) -> Arc<Vec<RankedObject>> {
        let Some(s) = self.sites.get(site).filter(|_| self.weight > 0.0) else {
            return prior.clone();
        };
        if let Some(r) = self.rankings.get(site) {
            let fresh = r.version == s.version || now < r.at + refresh_secs;
            if r.prior_key == prior_key && fresh {
                return r.ranking.clone();
            }
        }
        let ranking = Arc::new(blend(prior, &s.scores, self.weight));
        self.rankings.insert(
            site.to_owned(),
            SiteRanking {
                prior_key,
                version: s.version,
                at: now,
                ranking: ranking.clone(),
            },
        );
        ranking
    }
}

/// `prior` re-ranked by the blend of its demand shares and `scores`' shares with weight
/// `weight` on the scores (see the module doc). Stable: ties keep the prior order.
pub fn blend(
    prior: &[RankedObject],
    scores: &HashMap<String, f64>,
    weight: f64,
) -> Vec<RankedObject> {
    let prior_total: f64 = prior.iter().map(|r| r.demand).sum();
    let seen_total: f64 = prior.iter().filter_map(|r| scores.get(&r.object.id)).sum();
    let mut out: Vec<RankedObject> = prior
        .iter()
        .map(|r| {
            let p = if prior_total > 0.0 {
                r.demand / prior_total
            } else {
                0.0
            };
            let q = match scores.get(&r.object.id) {
                Some(s) if seen_total > 0.0 => s / seen_total,
                _ => 0.0,
            };
            RankedObject {
                demand: (1.0 - weight) * p + weight * q,
                ..r.clone()
            }
        })
        .collect();
    // sort_by is stable: equal blends keep the prior order.
    out.sort_by(|a, b| b.demand.total_cmp(&a.demand));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeplane_api::ObjectInfo;

    fn prior(n: usize) -> Arc<Vec<RankedObject>> {
        let w = crate::cloud::popularity::zipf_weights(n, 1.0);
        Arc::new(
            (0..n)
                .map(|i| RankedObject {
                    object: ObjectInfo {
                        id: format!("o{i}"),
                        size: 1,
                        sha256: "0".repeat(64),
                    },
                    title: format!("t{i}"),
                    demand: w[i],
                })
                .collect(),
        )
    }

    fn ids(r: &[RankedObject]) -> Vec<&str> {
        r.iter().map(|r| r.object.id.as_str()).collect()
    }

    fn entry(id: &str, n: u64) -> DemandEntry {
        DemandEntry {
            id: id.into(),
            requests: n,
        }
    }

    #[test]
    fn demand_lifts_an_object_at_its_site_only() {
        let p = prior(10);
        let mut d = FleetDemand::new(0.5, 3600);
        // No demand: the prior as it is (the same Arc).
        let r = d.ranking("fra", &p, (1, 0), 100, 5);
        assert!(Arc::ptr_eq(&r, &p));
        d.record(
            "fra",
            &[entry("o9", 20), entry("o5", 5), entry("../x", 99)],
            100,
        );
        let r = d.ranking("fra", &p, (1, 0), 100, 5);
        // o9: 0.5 × 20/25 = 0.4; o0: 0.5 × 1/H(10) ≈ 0.17; o5: 0.5 × 5/25 + 0.5 × (1/6)/H(10) ≈ 0.13.
        assert_eq!(ids(&r)[..3], ["o9", "o0", "o5"]);
        assert_eq!(r.len(), 10);
        let total: f64 = r.iter().map(|r| r.demand).sum();
        assert!((total - 1.0).abs() < 1e-9, "shares sum to 1: {total}");
        // Another site keeps the prior.
        assert_eq!(ids(&d.ranking("ams", &p, (1, 0), 100, 5)), ids(&p));
        // Within the refresh time the ranking is cached even when demand moves on ...
        d.record("fra", &[entry("o7", 1000)], 101);
        assert_eq!(ids(&d.ranking("fra", &p, (1, 0), 102, 5))[0], "o9");
        // ... and follows it after.
        assert_eq!(ids(&d.ranking("fra", &p, (1, 0), 105, 5))[0], "o7");
        // A new prior (catalog or day changed) is followed at once.
        let p2 = prior(3);
        assert_eq!(d.ranking("fra", &p2, (2, 0), 105, 5).len(), 3);
        assert_eq!(d.entries, 3);
    }

    #[test]
    fn scores_decay_with_the_half_life_and_stay_bounded() {
        let mut d = FleetDemand::new(1.0, 10);
        d.record("s", &[entry("a", 100)], 0);
        d.record("s", &[entry("b", 60)], 10);
        let s = d.scores("s");
        assert_eq!(s[0].0, "b");
        assert!((s[1].1 - 50.0).abs() < 1e-9, "{s:?}");
        // Weight 1: demand alone orders the objects it knows; the rest keep the prior order.
        let p = prior(4);
        d.record("s", &[entry("o3", 1)], 10);
        assert_eq!(ids(&d.ranking("s", &p, (0, 0), 10, 0))[..2], ["o3", "o0"]);
        // Bounded per site.
        let many: Vec<DemandEntry> = (0..MAX_DEMAND_ENTRIES as u64)
            .map(|i| entry(&format!("m{i}"), i + 1))
            .collect();
        let mut d = FleetDemand::new(0.5, 1_000_000);
        for round in 0..(MAX_PER_SITE / MAX_DEMAND_ENTRIES + 10) {
            let batch: Vec<DemandEntry> = many
                .iter()
                .map(|e| entry(&format!("{}-{round}", e.id), e.requests))
                .collect();
            d.record("s", &batch, 0);
        }
        assert!(d.scores("s").len() <= MAX_PER_SITE);
    }
}
