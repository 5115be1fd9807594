//! The popularity model: Zipf over titles with a daily shift, and the expected-demand ranking of
//! objects that placement walks.
//!
//! * A **base order** of the titles is fixed by the seed: titles sorted by
//!   `SHA-256(seed ‖ title id)`, so it does not depend on the catalog's order.
//! * On day `d` (unix seconds / 86400) the ranking is the base order rotated left by
//!   `d × daily_shift` titles: rank `r` is held by `base[(r + d × daily_shift) mod n]`.
//! * Rank `r` (0 = hottest) has weight `1 / (r + 1)^skew`, normalised to sum 1.
//! * An object's expected demand is its title's weight × its rendition's share; every rendition
//!   of a title gets an equal share (`1 / renditions`). Every segment of a rendition has the
//!   rendition's demand (a viewer fetches all of them).
//! * Objects are ranked by demand, highest first; ties go by title rank, then rendition order
//!   in the catalog, then segment order, so the ranking is total and deterministic.

use sha2::{Digest, Sha256};

use crate::cloud::config::PopularityConfig;
use edgeplane_api::{Catalog, ObjectInfo};

/// Seconds in a day: the unit of the daily shift.
pub const DAY_SECS: u64 = 86_400;

/// One object with its expected demand.
#[derive(Clone, Debug, PartialEq)]
pub struct RankedObject {
    /// The object.
    pub object: ObjectInfo,
    /// Its title's id.
    pub title: String,
    /// Expected share of all requests (sums to 1 over the ranking when every title has
    /// objects).
    pub demand: f64,
}

/// The popularity model.
#[derive(Clone, Debug)]
pub struct Popularity {
    /// Zipf exponent.
    pub skew: f64,
    /// Titles the ranking rotates by per day.
    pub daily_shift: u64,
    /// Seed of the base order.
    pub seed: u64,
}

impl From<&PopularityConfig> for Popularity {
    fn from(c: &PopularityConfig) -> Self {
        Popularity {
            skew: c.skew,
            daily_shift: c.daily_shift,
            seed: c.seed,
        }
    }
}

/// The day number of a unix time.
pub fn day_of(now: u64) -> u64 {
    now / DAY_SECS
}

/// Zipf weights for `n` ranks with exponent `skew`, normalised to sum 1.
pub fn zipf_weights(n: usize, skew: f64) -> Vec<f64> {
    let raw: Vec<f64> = (0..n).map(|r| 1.0 / ((r + 1) as f64).powf(skew)).collect();
    let total: f64 = raw.iter().sum();
    raw.into_iter().map(|w| w / total).collect()
}

impl Popularity {
    /// Title ids hottest first on `day`.
    pub fn title_ranking<'a>(&self, titles: &[&'a str], day: u64) -> Vec<&'a str> {
        let mut base: Vec<([u8; 32], &str)> = titles
            .iter()
            .map(|t| {
                let mut h = Sha256::new();
                h.update(self.seed.to_be_bytes());
                h.update(t.as_bytes());
                (h.finalize().into(), *t)
            })
            .collect();
        base.sort();
        let n = base.len();
        if n == 0 {
            return Vec::new();
        }
        let shift = ((day % n as u64) * (self.daily_shift % n as u64)) % n as u64;
        (0..n).map(|r| base[(r + shift as usize) % n].1).collect()
    }

    /// `(title id, weight)` hottest first on `day`; weights sum to 1.
    pub fn title_weights<'a>(&self, titles: &[&'a str], day: u64) -> Vec<(&'a str, f64)> {
        let ranking = self.title_ranking(titles, day);
        let weights = zipf_weights(ranking.len(), self.skew);
        ranking.into_iter().zip(weights).collect()
    }

    /// Every object of the catalog, highest expected demand first.
    pub fn rank_objects(&self, catalog: &Catalog, day: u64) -> Vec<RankedObject> {
        let ids: Vec<&str> = catalog.titles.iter().map(|t| t.id.as_str()).collect();
        let weights = self.title_weights(&ids, day);
        // (demand, title rank, rendition index, segment index) sorts the ranking.
        let mut out: Vec<(f64, usize, usize, usize, RankedObject)> = Vec::new();
        for (title_rank, (tid, w)) in weights.iter().enumerate() {
            let Some(title) = catalog.titles.iter().find(|t| t.id == *tid) else {
                continue;
            };
            let share = if title.renditions.is_empty() {
                0.0
            } else {
                1.0 / title.renditions.len() as f64
            };
            for (ri, rendition) in title.renditions.iter().enumerate() {
                for (si, obj) in rendition.objects.iter().enumerate() {
                    out.push((
                        w * share,
                        title_rank,
                        ri,
                        si,
                        RankedObject {
                            object: obj.clone(),
                            title: title.id.clone(),
                            demand: w * share,
                        },
                    ));
                }
            }
        }
        out.sort_by(|a, b| {
            b.0.total_cmp(&a.0)
                .then(a.1.cmp(&b.1))
                .then(a.2.cmp(&b.2))
                .then(a.3.cmp(&b.3))
        });
        out.into_iter().map(|e| e.4).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeplane_api::{Rendition, Title};

    fn pop(skew: f64, shift: u64) -> Popularity {
        Popularity {
            skew,
            daily_shift: shift,
            seed: 7,
        }
    }

    fn catalog(titles: usize, renditions: usize, segments: usize) -> Catalog {
        Catalog {
            titles: (0..titles)
                .map(|t| Title {
                    id: format!("t{t:04}"),
                    renditions: (0..renditions)
                        .map(|r| Rendition {
                            name: format!("r{r}"),
                            bitrate: 1000 * (r as u64 + 1),
                            objects: (0..segments)
                                .map(|s| ObjectInfo {
                                    id: format!("t{t:04}-r{r}-{s:04}.m4s"),
                                    size: 100,
                                    sha256: "0".repeat(64),
                                })
                                .collect(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn zipf_sums_to_one_and_decreases() {
        let w = zipf_weights(100, 1.0);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(w.windows(2).all(|p| p[0] > p[1]));
        // s = 1: rank 0 is twice rank 1, three times rank 2.
        assert!((w[0] / w[1] - 2.0).abs() < 1e-9);
        assert!((w[0] / w[2] - 3.0).abs() < 1e-9);
        // s = 0: uniform.
        let u = zipf_weights(4, 0.0);
        assert!(u.iter().all(|x| (x - 0.25).abs() < 1e-12));
        // Higher skew concentrates demand at the head.
        assert!(zipf_weights(100, 1.5)[0] > w[0]);
        assert!(zipf_weights(0, 1.0).is_empty());
    }

    #[test]
    fn base_order_is_independent_of_catalog_order_and_seeded() {
        let p = pop(1.0, 0);
        let a = p.title_ranking(&["a", "b", "c", "d", "e"], 0);
        let b = p.title_ranking(&["e", "d", "c", "b", "a"], 0);
        assert_eq!(a, b);
        let other = Popularity { seed: 8, ..p };
        let c = other.title_ranking(&["a", "b", "c", "d", "e"], 0);
        let mut sa = a.clone();
        sa.sort();
        let mut sc = c.clone();
        sc.sort();
        assert_eq!(sa, sc, "a permutation");
    }

    #[test]
    fn daily_shift_rotates_the_ranking() {
        let titles: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
        let refs: Vec<&str> = titles.iter().map(|s| s.as_str()).collect();
        let p = pop(1.0, 3);
        let d0 = p.title_ranking(&refs, 0);
        let d1 = p.title_ranking(&refs, 1);
        let d2 = p.title_ranking(&refs, 2);
        assert_eq!(d1[0], d0[3]);
        assert_eq!(d1[9], d0[2]);
        assert_eq!(d2[0], d0[6]);
        // Deterministic for a given day.
        assert_eq!(p.title_ranking(&refs, 1), d1);
        // No shift: the same every day.
        let still = pop(1.0, 0);
        assert_eq!(still.title_ranking(&refs, 0), still.title_ranking(&refs, 5));
        // Day of a time.
        assert_eq!(day_of(DAY_SECS * 3 + 5), 3);
    }

    #[test]
    fn objects_ranked_by_title_weight_times_rendition_share() {
        let cat = catalog(5, 2, 3);
        let p = pop(1.0, 0);
        let ranked = p.rank_objects(&cat, 0);
        assert_eq!(ranked.len(), 30);
        assert!((ranked.iter().map(|r| r.demand).sum::<f64>() / 3.0 - 1.0).abs() < 1e-9);
        assert!(ranked.windows(2).all(|w| w[0].demand >= w[1].demand));
        let ids: Vec<&str> = cat.titles.iter().map(|t| t.id.as_str()).collect();
        let top = p.title_ranking(&ids, 0)[0];
        // The hottest title's six objects come first, renditions in catalog order.
        assert!(ranked[..6].iter().all(|r| r.title == top));
        assert_eq!(ranked[0].object.id, format!("{top}-r0-0000.m4s"));
        assert_eq!(ranked[3].object.id, format!("{top}-r1-0000.m4s"));
        let w0 = zipf_weights(5, 1.0)[0];
        assert!((ranked[0].demand - w0 / 2.0).abs() < 1e-12);
        // A title with more renditions splits its demand more ways.
        let mut cat2 = cat.clone();
        let extra = cat2.titles[0].renditions[0].clone();
        cat2.titles[0].renditions.push(Rendition {
            name: "r9".into(),
            ..extra
        });
        let r2 = pop(0.0, 0).rank_objects(&cat2, 0);
        let t0 = r2.iter().find(|r| r.title == "t0000").unwrap();
        let t1 = r2.iter().find(|r| r.title == "t0001").unwrap();
        assert!(t0.demand < t1.demand);
    }
}
