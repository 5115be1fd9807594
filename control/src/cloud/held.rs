//! What each appliance holds, as the control service believes it: kept from the digest and
//! changes of the health reports (docs/control-api.md, "The held set").
//!
//! Per appliance the service keeps the set (in the fleet record, where steering reads it), its
//! [`HeldDigest`], and whether the set is confirmed (`known`). A report's `added` and `removed`
//! are applied to a known set and the result must have the report's digest and count; when it
//! does, the report's sequence number is acknowledged, and when it does not (a lost change, a
//! restart of either side) the answer asks for the full list, which replaces the set.

use std::collections::{HashMap, HashSet};

use edgeplane_api::{valid_content_id, HeldDigest, HeldReport, HeldView};

/// One appliance's side of the protocol.
#[derive(Debug, Default, Clone)]
struct Sync {
    seq: u64,
    digest: HeldDigest,
    known: bool,
}

/// What the answer to a report says about its held set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldAnswer {
    /// The sequence number accepted, if the set was.
    pub seq: Option<u64>,
    /// Send the full list next report.
    pub send_full: bool,
}

/// Counters for `GET /metrics`.
#[derive(Debug, Default, Clone)]
pub struct HeldCounters {
    /// Full lists received.
    pub full_lists: u64,
    /// Answers that asked for the full list.
    pub full_requests: u64,
    /// Reports whose changes were applied and matched the digest.
    pub deltas: u64,
}

/// The held sets' bookkeeping for every appliance.
#[derive(Debug, Default)]
pub struct HeldBook {
    sync: HashMap<String, Sync>,
    /// Counters.
    pub counters: HeldCounters,
}

/// Checks the ids a report adds; the first bad one is the error (answered with 400).
pub fn validate(report: &HeldReport) -> Result<(), String> {
    let ids = report.added.iter().chain(report.full.iter().flatten());
    for id in ids.chain(&report.removed) {
        if !valid_content_id(id) {
            return Err(format!(
                "held: object id {id:?} must match [A-Za-z0-9._-]{{1,200}} and not start with '.'"
            ));
        }
    }
    Ok(())
}

impl HeldBook {
    /// Applies `report` (validated) to `set`, appliance `id`'s held set.
    pub fn apply(&mut self, id: &str, set: &mut HashSet<String>, report: HeldReport) -> HeldAnswer {
        let sync = self.sync.entry(id.to_owned()).or_default();
        if let Some(full) = report.full {
            set.clear();
            set.reserve(full.len());
            let mut digest = HeldDigest::default();
            for o in full {
                if !set.contains(&o) {
                    digest.add(&o);
                    set.insert(o);
                }
            }
            if digest.hex() != report.digest || digest.count() != report.count {
                tracing::warn!(
                    "appliance {id}: its full held list ({} objects) does not match its digest; \
                     taking the list",
                    digest.count()
                );
            }
            *sync = Sync {
                seq: report.seq,
                digest,
                known: true,
            };
            self.counters.full_lists += 1;
            return HeldAnswer {
                seq: Some(report.seq),
                send_full: false,
            };
        }
        if sync.known {
            for o in &report.removed {
                if set.remove(o) {
                    sync.digest.remove(o);
                }
            }
            for o in report.added {
                if !set.contains(&o) {
                    sync.digest.add(&o);
                    set.insert(o);
                }
            }
            if sync.digest.hex() == report.digest && sync.digest.count() == report.count {
                sync.seq = report.seq;
                self.counters.deltas += 1;
                return HeldAnswer {
                    seq: Some(report.seq),
                    send_full: false,
                };
            }
            tracing::info!(
                "appliance {id}: held set digest differs after its changes (seq {}); asking for \
                 the full list",
                report.seq
            );
            sync.known = false;
        }
        self.counters.full_requests += 1;
        HeldAnswer {
            seq: None,
            send_full: true,
        }
    }

    /// Appliance `id`'s acknowledged sequence number and digest, if its set is confirmed.
    pub fn confirmed(&self, id: &str) -> Option<(u64, &HeldDigest)> {
        self.sync
            .get(id)
            .filter(|s| s.known)
            .map(|s| (s.seq, &s.digest))
    }

    /// Takes `set`, read from the store, as appliance `id`'s set acknowledged at `seq`: confirmed
    /// when it has the stored digest (`digest`, hex), so the next report needs no full list.
    /// Whether it was confirmed.
    pub fn load(&mut self, id: &str, seq: u64, digest: &str, set: &HashSet<String>) -> bool {
        let d = HeldDigest::of(set.iter().map(String::as_str));
        let known = d.hex() == digest;
        if !known {
            tracing::warn!(
                "appliance {id}: its stored held set ({} objects) does not match its stored \
                 digest; asking for the full list",
                d.count()
            );
        }
        self.sync.insert(
            id.to_owned(),
            Sync {
                seq,
                digest: d,
                known,
            },
        );
        known
    }

    /// A report in the old form (`objects`, no `held`): the set is whatever it listed, and the
    /// next digest report is checked against it.
    pub fn legacy(&mut self, id: &str, set: &HashSet<String>) {
        self.sync.insert(
            id.to_owned(),
            Sync {
                seq: 0,
                digest: HeldDigest::of(set.iter().map(String::as_str)),
                known: true,
            },
        );
    }

    /// The view of appliance `id`'s held set.
    pub fn view(&self, id: &str, set: &HashSet<String>) -> HeldView {
        let sync = self.sync.get(id).cloned().unwrap_or_default();
        let mut objects: Vec<String> = set.iter().cloned().collect();
        objects.sort_unstable();
        HeldView {
            id: id.to_owned(),
            seq: sync.seq,
            count: objects.len() as u64,
            digest: HeldDigest::of(objects.iter().map(String::as_str)).hex(),
            in_sync: sync.known,
            objects,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(seq: u64, now: &[&str], added: &[&str], removed: &[&str]) -> HeldReport {
        let d = HeldDigest::of(now.iter().copied());
        HeldReport {
            seq,
            count: d.count(),
            digest: d.hex(),
            added: added.iter().map(|s| s.to_string()).collect(),
            removed: removed.iter().map(|s| s.to_string()).collect(),
            full: None,
        }
    }

    fn sorted(set: &HashSet<String>) -> Vec<&str> {
        let mut v: Vec<&str> = set.iter().map(String::as_str).collect();
        v.sort();
        v
    }

    #[test]
    fn unknown_asks_for_the_list_then_follows_changes_and_resyncs_on_a_mismatch() {
        let mut book = HeldBook::default();
        let mut set = HashSet::new();
        // A fresh service (or a restart) knows nothing: the list, please.
        let a = book.apply("x", &mut set, report(1, &["a", "b"], &["a", "b"], &[]));
        assert_eq!(
            a,
            HeldAnswer {
                seq: None,
                send_full: true
            }
        );
        assert!(set.is_empty(), "changes to an unknown set are not applied");
        let mut full = report(2, &["a", "b"], &[], &[]);
        full.full = Some(vec!["b".into(), "a".into()]);
        let a = book.apply("x", &mut set, full);
        assert_eq!((a.seq, a.send_full), (Some(2), false));
        assert_eq!(sorted(&set), ["a", "b"]);
        // Steady state: the digest alone.
        let a = book.apply("x", &mut set, report(3, &["a", "b"], &[], &[]));
        assert_eq!(a.seq, Some(3));
        // Changes.
        let a = book.apply("x", &mut set, report(4, &["a", "c"], &["c"], &["b"]));
        assert_eq!(a.seq, Some(4));
        assert_eq!(sorted(&set), ["a", "c"]);
        // The same changes again (the answer was lost): idempotent.
        let a = book.apply("x", &mut set, report(5, &["a", "c"], &["c"], &["b"]));
        assert_eq!(a.seq, Some(5));
        // A change the service never saw: the digest differs, the list is asked for.
        let a = book.apply("x", &mut set, report(6, &["a", "c", "z"], &[], &[]));
        assert!(a.send_full && a.seq.is_none());
        let v = book.view("x", &set);
        assert!(!v.in_sync);
        assert_eq!(v.seq, 5);
        assert_eq!(book.counters.full_requests, 2);
        assert_eq!(book.counters.full_lists, 1);
        // An appliance whose digest matches what a legacy report listed is in sync at once.
        let mut other: HashSet<String> = ["p".to_string()].into();
        book.legacy("y", &other);
        let a = book.apply("y", &mut other, report(1, &["p"], &[], &[]));
        assert_eq!(a.seq, Some(1));
        // Bad ids are refused before anything is applied.
        let mut bad = report(7, &[], &["../etc"], &[]);
        assert!(validate(&bad).unwrap_err().contains("../etc"));
        bad.added.clear();
        bad.full = Some(vec![".x".into()]);
        assert!(validate(&bad).is_err());
    }
}
