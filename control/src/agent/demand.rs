//! Per-object demand for the health report: the data plane's `GET /demand` gives cumulative
//! request counts of its most requested objects (summed over its cores); the agent turns them
//! into requests over the last interval and reports the top [`MAX_DEMAND_ENTRIES`].

use std::collections::HashMap;

use edgeplane_api::{DemandEntry, MAX_DEMAND_ENTRIES};
use serde::Deserialize;

/// How many objects the agent asks the data plane for.
pub(crate) const DEMAND_TOP: usize = 256;

/// Counts the agent remembers between reads (the ids of the last reads).
const REMEMBERED: usize = 4 * DEMAND_TOP;

/// One object in the data plane's `GET /demand`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DemandObject {
    /// The object id.
    pub id: String,
    /// Requests since the data plane started (an estimate, never below the true count).
    pub requests: u64,
}

/// The data plane's `GET /demand`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DemandView {
    /// Unix seconds the counts start at (the data plane's start).
    pub since: u64,
    /// Object requests counted since then.
    pub requests: u64,
    /// The most requested objects, most first.
    pub objects: Vec<DemandObject>,
}

/// Turns cumulative counts into counts per interval.
#[derive(Debug, Default)]
pub(crate) struct DemandTracker {
    since: Option<u64>,
    last: HashMap<String, u64>,
}

impl DemandTracker {
    /// Requests per object since the previous read, most first, at most
    /// [`MAX_DEMAND_ENTRIES`]. An id not seen in the previous reads counts in full (the first
    /// read after the agent starts reports everything since the data plane started); a data
    /// plane restart (`since` changed) starts over.
    pub(crate) fn interval(&mut self, view: &DemandView) -> Vec<DemandEntry> {
        if self.since != Some(view.since) {
            self.since = Some(view.since);
            self.last.clear();
        }
        let mut out: Vec<DemandEntry> = view
            .objects
            .iter()
            .filter_map(|o| {
                let before = self.last.get(&o.id).copied().unwrap_or(0);
                let n = o.requests.saturating_sub(before);
                (n > 0).then(|| DemandEntry {
                    id: o.id.clone(),
                    requests: n,
                })
            })
            .collect();
        for o in &view.objects {
            self.last.insert(o.id.clone(), o.requests);
        }
        if self.last.len() > REMEMBERED {
            let now: std::collections::HashSet<&str> =
                view.objects.iter().map(|o| o.id.as_str()).collect();
            self.last.retain(|id, _| now.contains(id.as_str()));
        }
        out.sort_by(|a, b| b.requests.cmp(&a.requests).then_with(|| a.id.cmp(&b.id)));
        out.truncate(MAX_DEMAND_ENTRIES);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(since: u64, objects: &[(&str, u64)]) -> DemandView {
        DemandView {
            since,
            requests: objects.iter().map(|o| o.1).sum(),
            objects: objects
                .iter()
                .map(|(id, n)| DemandObject {
                    id: id.to_string(),
                    requests: *n,
                })
                .collect(),
        }
    }

    fn pairs(v: &[DemandEntry]) -> Vec<(&str, u64)> {
        v.iter().map(|e| (e.id.as_str(), e.requests)).collect()
    }

    #[test]
    fn cumulative_counts_become_counts_per_interval() {
        let mut t = DemandTracker::default();
        assert_eq!(
            pairs(&t.interval(&view(10, &[("a", 5), ("b", 2)]))),
            [("a", 5), ("b", 2)]
        );
        // b got 8 more, a none: a is left out.
        assert_eq!(
            pairs(&t.interval(&view(10, &[("b", 10), ("a", 5)]))),
            [("b", 8)]
        );
        // The data plane restarted: its counts start over.
        assert_eq!(pairs(&t.interval(&view(20, &[("a", 1)]))), [("a", 1)]);
        // Bounded: the top MAX_DEMAND_ENTRIES only.
        let many: Vec<(String, u64)> = (0..300).map(|i| (format!("o{i:03}"), 1000 - i)).collect();
        let refs: Vec<(&str, u64)> = many.iter().map(|(s, n)| (s.as_str(), *n)).collect();
        let r = t.interval(&view(30, &refs));
        assert_eq!(r.len(), MAX_DEMAND_ENTRIES);
        assert_eq!(r[0].id, "o000");
        assert!(t.last.len() <= REMEMBERED);
    }
}
