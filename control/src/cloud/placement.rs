//! Placement: which objects an appliance should hold, and on which tier.
//!
//! The tiers are ordered flash first, then storage (each kind in registration order). Placement
//! walks the objects by rank with a cursor on that order: an object goes on the current tier if
//! it fits in what is left there; otherwise the cursor moves on to the next tier (the current one
//! is then closed, even if a smaller object would still fit) and tries again. When no tier is
//! left, the walk stops. So the manifest is always a prefix of the ranking, and a more popular
//! object is never on a slower tier than a less popular one.

use crate::cloud::popularity::RankedObject;
use edgeplane_api::{ManifestEntry, TierCapacity};

/// The tiers in fill order: flash, then storage, each kind in the order given.
pub fn fill_order(tiers: &[TierCapacity]) -> Vec<&TierCapacity> {
    let mut order: Vec<&TierCapacity> = tiers.iter().collect();
    // Stable: registration order within a kind.
    order.sort_by_key(|t| t.kind);
    order
}

/// The manifest entries for an appliance with `tiers`, given the ranking; `peer` is the base URL
/// to fill from first, if any.
pub fn place(
    ranked: &[RankedObject],
    tiers: &[TierCapacity],
    peer: Option<&str>,
) -> Vec<ManifestEntry> {
    let order = fill_order(tiers);
    let mut left: Vec<u64> = order.iter().map(|t| t.capacity_bytes).collect();
    let mut cursor = 0;
    let mut out = Vec::new();
    for (rank, r) in ranked.iter().enumerate() {
        while cursor < order.len() && r.object.size > left[cursor] {
            cursor += 1;
        }
        if cursor == order.len() {
            break;
        }
        left[cursor] -= r.object.size;
        out.push(ManifestEntry {
            object: r.object.clone(),
            tier: order[cursor].name.clone(),
            rank: rank as u64,
            peer: peer.map(str::to_owned),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeplane_api::{ObjectInfo, TierKind};

    fn ranked(sizes: &[u64]) -> Vec<RankedObject> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| RankedObject {
                object: ObjectInfo {
                    id: format!("o{i}"),
                    size,
                    sha256: "0".repeat(64),
                },
                title: "t".into(),
                demand: 1.0 / (i + 1) as f64,
            })
            .collect()
    }

    fn tier(name: &str, kind: TierKind, cap: u64) -> TierCapacity {
        TierCapacity {
            name: name.into(),
            kind,
            capacity_bytes: cap,
        }
    }

    fn summary(m: &[ManifestEntry]) -> Vec<(String, String)> {
        m.iter()
            .map(|e| (e.object.id.clone(), e.tier.clone()))
            .collect()
    }

    #[test]
    fn flash_first_then_storage_then_stop() {
        // Storage registered before flash: flash still fills first.
        let tiers = [
            tier("hdd", TierKind::Storage, 250),
            tier("nvme", TierKind::Flash, 200),
        ];
        let m = place(&ranked(&[100, 100, 100, 100, 100, 100]), &tiers, None);
        let s = summary(&m);
        assert_eq!(
            s,
            [("o0", "nvme"), ("o1", "nvme"), ("o2", "hdd"), ("o3", "hdd"),]
                .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        assert_eq!(m.iter().map(|e| e.rank).collect::<Vec<_>>(), [0, 1, 2, 3]);
    }

    #[test]
    fn manifest_is_a_rank_prefix_and_within_capacity() {
        let tiers = [
            tier("f1", TierKind::Flash, 300),
            tier("f2", TierKind::Flash, 150),
            tier("s1", TierKind::Storage, 1000),
        ];
        let sizes = [120, 90, 200, 50, 400, 10, 700, 30, 30];
        let m = place(&ranked(&sizes), &tiers, Some("http://peer"));
        // Ranks are 0..len: a prefix of the ranking.
        for (i, e) in m.iter().enumerate() {
            assert_eq!(e.rank, i as u64);
            assert_eq!(e.peer.as_deref(), Some("http://peer"));
        }
        for t in &tiers {
            let used: u64 = m
                .iter()
                .filter(|e| e.tier == t.name)
                .map(|e| e.object.size)
                .sum();
            assert!(used <= t.capacity_bytes, "{}: {used}", t.name);
        }
        // Tier assignment never goes back to a faster tier.
        let pos = |n: &str| ["f1", "f2", "s1"].iter().position(|x| *x == n).unwrap();
        assert!(m.windows(2).all(|w| pos(&w[0].tier) <= pos(&w[1].tier)));
        // o0 120 + o1 90 fit f1 (300); o2 200 does not (90 left) → f2 closes f1; 200 > 150 → s1.
        assert_eq!(
            summary(&m)[..3],
            [("o0", "f1"), ("o1", "f1"), ("o2", "s1")].map(|(a, b)| (a.into(), b.into()))
        );
    }

    #[test]
    fn no_tiers_or_zero_capacity_means_empty() {
        assert!(place(&ranked(&[1, 2]), &[], None).is_empty());
        assert!(place(&ranked(&[1]), &[tier("f", TierKind::Flash, 0)], None).is_empty());
        // Zero-sized objects always fit.
        let m = place(&ranked(&[0, 0]), &[tier("f", TierKind::Flash, 0)], None);
        assert_eq!(m.len(), 2);
    }
}
