//! The held set in health reports: a digest and a count every report, plus the ids added and
//! removed since the set the control service last acknowledged; the full list only when the
//! control service asks for it (docs/control-api.md, "The held set").
//!
//! The changes are always relative to the last *acknowledged* set, so a lost report or a lost
//! answer costs nothing: the next report carries the same changes again. A fresh agent (after a
//! restart) knows no acknowledged set and sends the digest alone; the control service accepts it
//! when its own view has that digest, or asks for the full list.

use std::collections::BTreeSet;

use edgeplane_api::{HealthAck, HeldDigest, HeldReport};

/// The agent's side of the protocol.
#[derive(Debug, Default)]
pub(crate) struct HeldTracker {
    /// The set the control service acknowledged, and its digest (`None`: none yet).
    acked: Option<(BTreeSet<String>, HeldDigest)>,
    /// The set sent in the last report, with its sequence number and digest, until answered.
    sent: Option<(u64, BTreeSet<String>, HeldDigest)>,
    seq: u64,
    /// The control service asked for the full list.
    full_wanted: bool,
    /// Full lists sent since start.
    pub(crate) full_sent: u64,
}

impl HeldTracker {
    /// The held part of the next report for the set `now`.
    pub(crate) fn report(&mut self, now: BTreeSet<String>) -> HeldReport {
        self.seq += 1;
        let mut report = HeldReport {
            seq: self.seq,
            ..HeldReport::default()
        };
        let digest = match &self.acked {
            // Incremental: hash only what changed.
            Some((acked, d)) => {
                let mut d = *d;
                for id in now.difference(acked) {
                    d.add(id);
                    if !self.full_wanted {
                        report.added.push(id.clone());
                    }
                }
                for id in acked.difference(&now) {
                    d.remove(id);
                    if !self.full_wanted {
                        report.removed.push(id.clone());
                    }
                }
                d
            }
            None => HeldDigest::of(now.iter().map(String::as_str)),
        };
        if self.full_wanted {
            report.full = Some(now.iter().cloned().collect());
            self.full_sent += 1;
        }
        report.count = digest.count();
        report.digest = digest.hex();
        self.sent = Some((self.seq, now, digest));
        report
    }

    /// Takes the control service's answer to the last report.
    pub(crate) fn answered(&mut self, ack: &HealthAck) {
        let sent = self.sent.take();
        if let (Some(seq), Some((sent_seq, set, digest))) = (ack.held_seq, sent) {
            if seq == sent_seq {
                self.acked = Some((set, digest));
                self.full_wanted = false;
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
        let r = t.report(set(&["a", "b"]));
        assert_eq!((r.seq, r.count), (1, 2));
        assert_eq!(r.digest, HeldDigest::of(["b", "a"]).hex());
        assert!(r.added.is_empty() && r.removed.is_empty() && r.full.is_none());
        // The control service does not know it: the full list next.
        t.answered(&ack(None, true));
        let r = t.report(set(&["a", "b"]));
        assert_eq!(
            r.full.as_deref(),
            Some(&["a".to_string(), "b".to_string()][..])
        );
        assert!(r.added.is_empty());
        t.answered(&ack(Some(2), false));
        // Steady state: nothing but the digest.
        let r = t.report(set(&["a", "b"]));
        assert!(r.full.is_none() && r.added.is_empty() && r.removed.is_empty());
        t.answered(&ack(Some(3), false));
        // A change; the report is lost: the next carries the same change again.
        let r = t.report(set(&["a", "c"]));
        assert_eq!(
            (r.added.clone(), r.removed.clone()),
            (vec!["c".into()], vec!["b".into()])
        );
        t.unanswered();
        let r = t.report(set(&["a", "c", "d"]));
        assert_eq!(r.added, ["c", "d"]);
        assert_eq!(r.removed, ["b"]);
        assert_eq!(r.digest, HeldDigest::of(["a", "c", "d"]).hex());
        assert_eq!(r.count, 3);
        // An answer for another seq does not move the acknowledged set.
        t.answered(&ack(Some(1), false));
        let r = t.report(set(&["a", "c", "d"]));
        assert_eq!(r.added, ["c", "d"]);
        t.answered(&ack(Some(r.seq), false));
        let r = t.report(set(&["a", "c", "d"]));
        assert!(r.added.is_empty() && r.removed.is_empty());
        assert_eq!(t.full_sent, 1);
    }

    /// A 10-million-object appliance's steady-state report (nothing changed) stays under 16 KiB.
    #[test]
    fn a_ten_million_object_steady_state_report_is_under_16_kib() {
        const N: usize = 10_000_000;
        let ids = || (0..N).map(|i| format!("t{:05}-1080p-{:04}.m4s", i / 2000, i % 2000));
        let mut t = HeldTracker::default();
        let held: BTreeSet<String> = ids().collect();
        assert_eq!(held.len(), N);
        let r = t.report(held.clone());
        t.answered(&ack(Some(r.seq), false));
        let r = t.report(held);
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
