//! Per-peer Adj-RIB-In (prefixes only), import policy, max-prefix accounting, grace bookkeeping
//! and the served set (the union over peers). Pure: time comes in as arguments.

use std::collections::BTreeSet;
use std::time::Instant;

use ipnet::IpNet;

use crate::config::ImportPolicy;
use crate::wire::Update;

/// One peer's prefixes.
#[derive(Debug, Clone, Default)]
pub struct PeerRib {
    /// Every prefix the live session currently announces (before policy).
    received: BTreeSet<IpNet>,
    /// The subset accepted by the import policy.
    accepted: BTreeSet<IpNet>,
    /// Accepted prefixes of a lost session, served until `grace_until`.
    grace: BTreeSet<IpNet>,
    /// When the grace prefixes are withdrawn.
    grace_until: Option<Instant>,
}

/// The max-prefix limit was exceeded by an UPDATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPrefixExceeded {
    /// The configured limit.
    pub limit: u32,
    /// Accepted prefixes the UPDATE would have led to.
    pub count: usize,
}

impl PeerRib {
    /// Prefixes received from the live session.
    pub fn received(&self) -> usize {
        self.received.len()
    }

    /// Prefixes accepted from the live session.
    pub fn accepted(&self) -> usize {
        self.accepted.len()
    }

    /// Prefixes held in grace.
    pub fn in_grace(&self) -> usize {
        self.grace.len()
    }

    /// When the grace prefixes expire, if any are held.
    pub fn grace_until(&self) -> Option<Instant> {
        self.grace_until
    }

    /// Applies an UPDATE: withdrawals first, then announcements (a re-announcement replaces the
    /// route, so it is re-checked against the policy with its new communities). Announcements
    /// that would take the accepted count past the policy's limit are not accepted and the
    /// error is returned: the caller ends the session, and at most `limit` prefixes go into
    /// grace.
    pub fn apply(
        &mut self,
        update: &Update,
        policy: &ImportPolicy,
    ) -> Result<(), MaxPrefixExceeded> {
        for p in &update.withdrawn {
            let p = p.trunc();
            self.received.remove(&p);
            self.accepted.remove(&p);
        }
        let limit = policy.max_prefixes.map_or(usize::MAX, |l| l as usize);
        let mut over = 0;
        for p in &update.announced {
            let p = p.trunc();
            self.received.insert(p);
            if !policy.accepts(&p, &update.communities) {
                self.accepted.remove(&p);
            } else if self.accepted.contains(&p) || self.accepted.len() < limit {
                self.accepted.insert(p);
            } else {
                over += 1;
            }
        }
        match policy.max_prefixes {
            Some(limit) if over > 0 => Err(MaxPrefixExceeded {
                limit,
                count: self.accepted.len() + over,
            }),
            _ => Ok(()),
        }
    }

    /// The session went down: its accepted prefixes are kept until `until` (added to any still
    /// in grace from an earlier loss, whose deadline moves to `until`). With `until` in the
    /// past or `None` they are dropped at once.
    pub fn session_down(&mut self, until: Option<Instant>, now: Instant) {
        self.received.clear();
        let accepted = std::mem::take(&mut self.accepted);
        match until {
            Some(t) if t > now => {
                // A session that ends before announcing anything must not extend the grace of
                // an earlier loss (a peer failing in OpenSent over and over would keep stale
                // prefixes forever).
                if !accepted.is_empty() {
                    self.grace.extend(accepted);
                    self.grace_until = Some(t);
                }
            }
            _ => {
                self.grace.clear();
                self.grace_until = None;
            }
        }
    }

    /// The re-established session has sent End-of-RIB for all its families: what it did not
    /// re-announce is gone now, no need to wait for the grace deadline.
    pub fn end_of_rib(&mut self) {
        self.grace.clear();
        self.grace_until = None;
    }

    /// Drops the grace set once its deadline has passed. Returns whether anything was dropped.
    pub fn expire(&mut self, now: Instant) -> bool {
        match self.grace_until {
            Some(t) if t <= now => {
                self.grace.clear();
                self.grace_until = None;
                true
            }
            _ => false,
        }
    }

    /// Prefixes this peer contributes to the served set: accepted plus grace.
    pub fn served(&self) -> impl Iterator<Item = &IpNet> {
        self.accepted.iter().chain(self.grace.iter())
    }
}

/// The served set: the union over peers of [`PeerRib::served`].
pub fn union<'a>(peers: impl IntoIterator<Item = &'a PeerRib>) -> BTreeSet<IpNet> {
    peers
        .into_iter()
        .flat_map(PeerRib::served)
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ann(ps: &[&str]) -> Update {
        Update {
            announced: ps.iter().map(|s| n(s)).collect(),
            ..Default::default()
        }
    }

    fn wd(ps: &[&str]) -> Update {
        Update {
            withdrawn: ps.iter().map(|s| n(s)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn announce_withdraw_policy() {
        let pol = ImportPolicy {
            v4_len: 8..=24,
            ..Default::default()
        };
        let mut r = PeerRib::default();
        r.apply(
            &ann(&["198.51.100.0/24", "203.0.113.0/25", "2001:db8::/32"]),
            &pol,
        )
        .unwrap();
        assert_eq!((r.received(), r.accepted()), (3, 2));
        r.apply(&wd(&["198.51.100.0/24", "203.0.113.0/25"]), &pol)
            .unwrap();
        assert_eq!((r.received(), r.accepted()), (1, 1));
        assert_eq!(union([&r]), [n("2001:db8::/32")].into());
        // Re-announcement without the required community drops it from accepted.
        let pol = ImportPolicy {
            communities: Some(vec![(1, 1)]),
            ..Default::default()
        };
        let mut u = ann(&["192.0.2.0/24"]);
        u.communities = vec![(1, 1)];
        r.apply(&u, &pol).unwrap();
        assert!(union([&r]).contains(&n("192.0.2.0/24")));
        r.apply(&ann(&["192.0.2.0/24"]), &pol).unwrap();
        assert!(!union([&r]).contains(&n("192.0.2.0/24")));
    }

    #[test]
    fn host_bits_are_cleared() {
        let mut r = PeerRib::default();
        r.apply(&ann(&["192.0.2.77/24"]), &ImportPolicy::default())
            .unwrap();
        assert_eq!(union([&r]), [n("192.0.2.0/24")].into());
    }

    #[test]
    fn max_prefix() {
        let pol = ImportPolicy {
            max_prefixes: Some(2),
            v4_len: 0..=24,
            ..Default::default()
        };
        let mut r = PeerRib::default();
        // Rejected prefixes do not count.
        r.apply(&ann(&["10.0.0.0/8", "10.1.0.0/16", "10.1.1.128/25"]), &pol)
            .unwrap();
        // Re-announcing an accepted prefix is fine at the limit.
        r.apply(&ann(&["10.0.0.0/8"]), &pol).unwrap();
        let e = r
            .apply(&ann(&["10.2.0.0/16", "10.3.0.0/16"]), &pol)
            .unwrap_err();
        assert_eq!(e, MaxPrefixExceeded { limit: 2, count: 4 });
        assert_eq!(r.accepted(), 2);
    }

    #[test]
    fn grace_keeps_then_expires_and_union() {
        let t0 = Instant::now();
        let pol = ImportPolicy::default();
        let (mut a, mut b) = (PeerRib::default(), PeerRib::default());
        a.apply(&ann(&["10.0.0.0/8", "10.1.0.0/16"]), &pol).unwrap();
        b.apply(&ann(&["10.0.0.0/8", "192.0.2.0/24"]), &pol)
            .unwrap();
        assert_eq!(union([&a, &b]).len(), 3);
        a.session_down(Some(t0 + Duration::from_secs(5)), t0);
        assert_eq!((a.received(), a.accepted(), a.in_grace()), (0, 0, 2));
        assert_eq!(union([&a, &b]).len(), 3);
        assert!(!a.expire(t0 + Duration::from_secs(4)));
        b.session_down(None, t0);
        assert_eq!(union([&a, &b]).len(), 2);
        assert!(a.expire(t0 + Duration::from_secs(5)));
        assert!(union([&a, &b]).is_empty());
        assert_eq!(a.grace_until(), None);
    }

    #[test]
    fn empty_sessions_do_not_extend_grace() {
        let t0 = Instant::now();
        let mut a = PeerRib::default();
        a.apply(&ann(&["10.0.0.0/8"]), &ImportPolicy::default())
            .unwrap();
        let until = t0 + Duration::from_secs(5);
        a.session_down(Some(until), t0);
        a.session_down(
            Some(until + Duration::from_secs(3)),
            t0 + Duration::from_secs(3),
        );
        assert_eq!(a.grace_until(), Some(until));
        assert!(a.expire(until));
    }

    #[test]
    fn reconnect_then_end_of_rib_clears_grace() {
        let t0 = Instant::now();
        let pol = ImportPolicy::default();
        let mut a = PeerRib::default();
        a.apply(&ann(&["10.0.0.0/8", "10.1.0.0/16"]), &pol).unwrap();
        a.session_down(Some(t0 + Duration::from_secs(60)), t0);
        a.apply(&ann(&["10.0.0.0/8"]), &pol).unwrap();
        assert_eq!(union([&a]).len(), 2);
        a.end_of_rib();
        assert_eq!(union([&a]), [n("10.0.0.0/8")].into());
    }
}
