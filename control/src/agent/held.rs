//! The held set in health reports: a digest and a count every report, plus the ids added and
//! removed since the set the control service last acknowledged; the full list only when the
//! control service asks for it (docs/control-api.md, "The held set").
//!
//! The changes are always relative to the last *acknowledged* set, so a lost report or a lost
//! answer costs nothing: the next report carries the same changes again. A fresh agent (after a
//! restart) knows no acknowledged set and sends the digest alone; the control service accepts it
//! when its own view has that digest, or asks for the full list.

use std::collections::{BTreeMap, BTreeSet};

use edgeplane_api::{HealthAck, HeldDigest, HeldReport};

/// The agent's side of the protocol.
///
/// It keeps one copy of the held set (`now`, fed by one full listing of the data plane's
/// catalog and then by its change feed: [`HeldTracker::replace`], [`HeldTracker::apply`]) and,
/// for the ids changed since the *base* (the last acknowledged set; before any acknowledgment,
/// the first listing), whether each was in the base. A report is the base's digest plus those
/// changes: O(changes), never a walk over the whole set.
#[derive(Debug, Default)]
pub(crate) struct HeldTracker {
    /// The ids held now (on tiers in service).
    now: BTreeSet<String>,
    /// `now` was set by a first listing.
    known: bool,
    /// The base's digest.
    base_digest: HeldDigest,
    /// The control service acknowledged the base (else it is only the first listing).
    acked: bool,
    /// Ids changed since the base: whether each was in it.
    diff: BTreeMap<String, bool>,
    /// The last report until answered: its sequence number, its digest, and for each id of
    /// `diff` then, whether it was held then.
    sent: Option<(u64, HeldDigest, BTreeMap<String, bool>)>,
    seq: u64,
    /// The control service asked for the full list.
    full_wanted: bool,
    /// Full lists sent since start.
    pub(crate) full_sent: u64,
}

impl HeldTracker {
    /// The held set from a full listing (at start, and when the data plane's feed cannot be
    /// followed: a rescan, a restart). O(n) once; the ids that differ from the set held before
    /// become changes like any other.
    pub(crate) fn replace(&mut self, new: BTreeSet<String>) {
        if !self.known {
            self.base_digest = HeldDigest::of(new.iter().map(String::as_str));
            self.now = new;
            self.known = true;
            return;
        }
        for id in self.now.difference(&new) {
            self.diff.entry(id.clone()).or_insert(true);
        }
        for id in new.difference(&self.now) {
            self.diff.entry(id.clone()).or_insert(false);
        }
        self.now = new;
    }

    /// One change from the data plane's feed: `id` is held (`present`) or not any more.
    pub(crate) fn apply(&mut self, id: &str, present: bool) {
        if self.now.contains(id) == present {
            return;
        }
        // First change since the base: it was in the base as it was held until now.
        self.diff.entry(id.to_string()).or_insert(!present);
        if present {
            self.now.insert(id.to_string());
        } else {
            self.now.remove(id);
        }
    }

    /// The held part of the next report.
    pub(crate) fn report(&mut self) -> HeldReport {
        self.seq += 1;
        let mut report = HeldReport {
            seq: self.seq,
            ..HeldReport::default()
        };
        // The control service knows the base only once it acknowledged it: before that the
        // digest goes alone (or the full list, when asked).
        let deltas = self.acked && !self.full_wanted;
        let mut digest = self.base_digest;
        let mut at_send = BTreeMap::new();
        for (id, &was) in &self.diff {
            let is = self.now.contains(id);
            at_send.insert(id.clone(), is);
            if was && !is {
                digest.remove(id);
                if deltas {
                    report.removed.push(id.clone());
                }
            } else if is && !was {
                digest.add(id);
                if deltas {
                    report.added.push(id.clone());
                }
            }
        }
        if self.full_wanted {
            report.full = Some(self.now.iter().cloned().collect());
            self.full_sent += 1;
        }
        report.count = digest.count();
        report.digest = digest.hex();
        self.sent = Some((self.seq, digest, at_send));
        report
    }

    /// Takes the control service's answer to the last report.
    pub(crate) fn answered(&mut self, ack: &HealthAck) {
        let sent = self.sent.take();
        if let (Some(seq), Some((sent_seq, digest, at_send))) = (ack.held_seq, sent) {
            if seq == sent_seq {
                // The set sent is the new base: an id changed before the report was held then
                // as `at_send` says, one changed only since as it was in the old base.
                self.base_digest = digest;
                self.acked = true;
                self.full_wanted = false;
                let now = &self.now;
                self.diff.retain(|id, was| {
                    if let Some(&then) = at_send.get(id) {
                        *was = then;
                    }
                    *was != now.contains(id)
                });
            }
        }
        if ack.send_full {
            self.full_wanted = true;
        }
    }

    /// The last report got no answer: its changes go again in the next one.
    pub(crate) fn unanswered(&mut self) {
        self.sent = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    /// A report for the set `now`, as a full listing gives it.
    fn report(t: &mut HeldTracker, now: BTreeSet<String>) -> HeldReport {
        t.replace(now);
        t.report()
    }

    fn ack(held_seq: Option<u64>, send_full: bool) -> HealthAck {
        HealthAck {
            signing_keys: vec![],
            manifest_generation: 1,
            prefixes: vec![],
            held_seq,
            send_full,
            epoch: String::new(),
        }
    }

    #[test]
    fn digest_then_full_then_deltas_relative_to_the_acknowledged_set() {
        let mut t = HeldTracker::default();
        // Fresh: the digest alone.
        let r = report(&mut t, set(&["a", "b"]));
        assert_eq!((r.seq, r.count), (1, 2));
        assert_eq!(r.digest, HeldDigest::of(["b", "a"]).hex());
        assert!(r.added.is_empty() && r.removed.is_empty() && r.full.is_none());
        // The control service does not know it: the full list next.
        t.answered(&ack(None, true));
        let r = report(&mut t, set(&["a", "b"]));
        assert_eq!(
            r.full.as_deref(),
            Some(&["a".to_string(), "b".to_string()][..])
        );
        assert!(r.added.is_empty());
        t.answered(&ack(Some(2), false));
        // Steady state: nothing but the digest.
        let r = report(&mut t, set(&["a", "b"]));
        assert!(r.full.is_none() && r.added.is_empty() && r.removed.is_empty());
        t.answered(&ack(Some(3), false));
        // A change; the report is lost: the next carries the same change again.
        let r = report(&mut t, set(&["a", "c"]));
        assert_eq!(
            (r.added.clone(), r.removed.clone()),
            (vec!["c".into()], vec!["b".into()])
        );
        t.unanswered();
        let r = report(&mut t, set(&["a", "c", "d"]));
        assert_eq!(r.added, ["c", "d"]);
        assert_eq!(r.removed, ["b"]);
        assert_eq!(r.digest, HeldDigest::of(["a", "c", "d"]).hex());
        assert_eq!(r.count, 3);
        // An answer for another seq does not move the acknowledged set.
        t.answered(&ack(Some(1), false));
        let r = report(&mut t, set(&["a", "c", "d"]));
        assert_eq!(r.added, ["c", "d"]);
        t.answered(&ack(Some(r.seq), false));
        let r = report(&mut t, set(&["a", "c", "d"]));
        assert!(r.added.is_empty() && r.removed.is_empty());
        assert_eq!(t.full_sent, 1);
    }

    #[test]
    fn changes_from_the_feed_make_the_same_reports_as_listings() {
        // One tracker fed by a listing then changes, one by a listing every time: the same
        // reports, acknowledged or not, across a reset's fresh listing.
        let mut fed = HeldTracker::default();
        let mut listed = HeldTracker::default();
        fed.replace(set(&["a", "b", "c"]));
        let (f, l) = (fed.report(), report(&mut listed, set(&["a", "b", "c"])));
        assert_eq!(f, l);
        fed.answered(&ack(Some(f.seq), false));
        listed.answered(&ack(Some(l.seq), false));
        // Added, removed, added and removed again (no net change), re-added after removal.
        fed.apply("d", true);
        fed.apply("b", false);
        fed.apply("x", true);
        fed.apply("x", false);
        fed.apply("c", false);
        fed.apply("c", true);
        fed.apply("d", true); // applied twice: harmless
        let now = set(&["a", "c", "d"]);
        let (f, l) = (fed.report(), report(&mut listed, now.clone()));
        assert_eq!(f, l);
        assert_eq!(
            (f.added.clone(), f.removed.clone()),
            (vec!["d".into()], vec!["b".into()])
        );
        assert_eq!(f.digest, HeldDigest::of(["a", "c", "d"]).hex());
        // A change after the report was sent, then the answer: it stays a change.
        fed.apply("e", true);
        fed.answered(&ack(Some(f.seq), false));
        listed.answered(&ack(Some(l.seq), false));
        let (f, l) = (
            fed.report(),
            report(&mut listed, set(&["a", "c", "d", "e"])),
        );
        assert_eq!(f, l);
        assert_eq!(f.added, ["e"]);
        assert!(f.removed.is_empty());
        fed.answered(&ack(Some(f.seq), false));
        listed.answered(&ack(Some(l.seq), false));
        // The feed reset (a restarted data plane): a fresh listing, its differences are changes.
        fed.replace(set(&["a", "e", "f"]));
        let (f, l) = (fed.report(), report(&mut listed, set(&["a", "e", "f"])));
        assert_eq!(f, l);
        assert_eq!(
            (f.added.clone(), f.removed.clone()),
            (vec!["f".into()], vec!["c".into(), "d".into()])
        );
        assert_eq!(f.count, 3);
    }

    /// A 10-million-object appliance's steady-state report (nothing changed) stays under 16 KiB.
    #[test]
    fn a_ten_million_object_steady_state_report_is_under_16_kib() {
        const N: usize = 10_000_000;
        let ids = || (0..N).map(|i| format!("t{:05}-1080p-{:04}.m4s", i / 2000, i % 2000));
        let mut t = HeldTracker::default();
        let held: BTreeSet<String> = ids().collect();
        assert_eq!(held.len(), N);
        let r = report(&mut t, held.clone());
        t.answered(&ack(Some(r.seq), false));
        let r = report(&mut t, held);
        assert_eq!(r.count, N as u64);
        assert!(r.added.is_empty() && r.removed.is_empty() && r.full.is_none());
        let report = edgeplane_api::HealthReport {
            healthy: true,
            tiers: vec![edgeplane_api::TierHealth::default(); 4],
            held: Some(r),
            demand: (0..edgeplane_api::MAX_DEMAND_ENTRIES)
                .map(|i| edgeplane_api::DemandEntry {
                    id: format!("t{i:05}-1080p-0000.m4s"),
                    requests: 1_000_000,
                })
                .collect(),
            prefixes: (0..64)
                .map(|i| format!("10.{i}.0.0/16").parse().unwrap())
                .collect(),
            ..edgeplane_api::HealthReport::default()
        };
        let bytes = serde_json::to_vec(&report).unwrap().len();
        assert!(bytes < 16 * 1024, "{bytes} bytes");
    }
}
