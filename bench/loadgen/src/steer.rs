//! The steered player's pure parts: which location (pathway) a viewer fetches from, and how it
//! walks the steering answer's list on failures and follows a changed answer; the segment ids
//! of a steered title.
//!
//! A real player (dash.js, hls.js) behaves the same way: it plays from the first pathway of the
//! steering answer, skips to the next one when a request fails or times out, and reloads the
//! steering answer periodically, moving to the answer's first pathway when the ranking changed.

use std::collections::BTreeMap;

use edgeplane_api::{Catalog, LocationKind, SteeredRendition, Steering};

/// A location's identity across steering answers: the appliance id, or `origin`. (Base URLs
/// carry a token that changes with every answer, so they do not identify a location.)
pub fn location_key(kind: LocationKind, appliance: Option<&str>) -> String {
    match (kind, appliance) {
        (LocationKind::Origin, _) | (_, None) => "origin".to_owned(),
        (_, Some(id)) => id.to_owned(),
    }
}

/// The keys of an answer's locations, best first.
pub fn answer_keys(answer: &Steering) -> Vec<String> {
    answer
        .locations
        .iter()
        .map(|l| location_key(l.kind, l.appliance.as_deref()))
        .collect()
}

/// What a viewer did after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Move {
    /// Stays where it is.
    Stay,
    /// Moved to the location at this index of the current list.
    To(usize),
    /// Every location failed since the last answer: back to the first, after a pause and a
    /// steering reload.
    Exhausted,
}

/// The pathway walk over one steering answer's locations.
///
/// - Start at the first location.
/// - A failure (error status, connection error, timeout) marks the current location failed and
///   moves to the next location not failed since the last answer (wrapping round the list);
///   when every location has failed, all are cleared and the walk restarts at the first
///   ([`Move::Exhausted`]: the caller pauses and reloads steering first).
/// - A reloaded answer with the same locations in the same order keeps the viewer where it is
///   (failed marks too: a dead appliance the control side has not noticed yet is not retried
///   every reload). A changed answer resets the walk to its first location: that is how
///   viewers move back when a recovered appliance is ranked first again, or move on when the
///   control side drains one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pathways {
    keys: Vec<String>,
    failed: Vec<bool>,
    current: usize,
}

impl Pathways {
    pub fn new(keys: Vec<String>) -> Pathways {
        Pathways {
            failed: vec![false; keys.len()],
            keys,
            current: 0,
        }
    }

    /// Index of the current location in the answer's list (None: the answer had none).
    pub fn current(&self) -> Option<usize> {
        (self.current < self.keys.len()).then_some(self.current)
    }

    pub fn current_key(&self) -> Option<&str> {
        self.keys.get(self.current).map(String::as_str)
    }

    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// The current location failed a request.
    pub fn on_failure(&mut self) -> Move {
        let n = self.keys.len();
        if n == 0 {
            return Move::Exhausted;
        }
        self.failed[self.current] = true;
        for step in 1..n {
            let i = (self.current + step) % n;
            if !self.failed[i] {
                self.current = i;
                return Move::To(i);
            }
        }
        self.failed.iter_mut().for_each(|f| *f = false);
        self.current = 0;
        Move::Exhausted
    }

    /// A reloaded answer with these location keys.
    pub fn on_answer(&mut self, keys: Vec<String>) -> Move {
        if keys == self.keys {
            return Move::Stay;
        }
        let was = self.current_key().map(str::to_owned);
        *self = Pathways::new(keys);
        if self.current_key().map(str::to_owned) == was {
            Move::Stay
        } else {
            Move::To(0)
        }
    }
}

/// The id of segment `index` of a rendition, wrapping round its `count` segments (a viewer
/// that plays longer than the title loops it).
pub fn segment_id(r: &SteeredRendition, index: u64) -> Option<String> {
    if r.count == 0 {
        return None;
    }
    let i = index % r.count;
    match &r.template {
        // The template's expansion is edgeplane-api's: expand just the one number.
        Some(_) => SteeredRendition {
            start_number: r.start_number + i,
            count: 1,
            ..r.clone()
        }
        .object_ids()
        .pop(),
        None => r.objects.get(i as usize).cloned(),
    }
}

/// The title's renditions as an ABR ladder: (index into `renditions`, kbit/s), lowest first.
pub fn ladder(renditions: &[SteeredRendition]) -> Vec<(usize, u32)> {
    let mut out: Vec<(usize, u32)> = renditions
        .iter()
        .enumerate()
        .filter(|(_, r)| r.count > 0)
        .map(|(i, r)| (i, (r.bitrate / 1000).clamp(1, u64::from(u32::MAX)) as u32))
        .collect();
    out.sort_by_key(|&(i, kbps)| (kbps, i));
    out
}

/// Object id → (size, SHA-256) of every object of `catalog`: what the steered player checks
/// each segment against.
pub fn expected_objects(catalog: &Catalog) -> BTreeMap<String, (u64, String)> {
    catalog
        .titles
        .iter()
        .flat_map(|t| &t.renditions)
        .flat_map(|r| &r.objects)
        .map(|o| (o.id.clone(), (o.size, o.sha256.clone())))
        .collect()
}

/// Percentile `q` (0..=1) of `values` by nearest rank on the sorted values; 0 when empty.
pub fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn failures_walk_down_the_list_and_wrap_when_all_failed() {
        let mut p = Pathways::new(keys(&["emb", "ix", "origin"]));
        assert_eq!(p.current_key(), Some("emb"));
        assert_eq!(p.on_failure(), Move::To(1));
        assert_eq!(p.current_key(), Some("ix"));
        assert_eq!(p.on_failure(), Move::To(2));
        assert_eq!(p.current_key(), Some("origin"));
        assert_eq!(p.on_failure(), Move::Exhausted, "every location failed");
        assert_eq!(p.current_key(), Some("emb"), "the walk restarts at the top");
        // The marks were cleared: the next failure moves one step again.
        assert_eq!(p.on_failure(), Move::To(1));
    }

    #[test]
    fn failed_locations_are_skipped_until_the_answer_changes() {
        let mut p = Pathways::new(keys(&["emb", "ix", "origin"]));
        assert_eq!(p.on_failure(), Move::To(1)); // emb died
                                                 // The same ranking reloaded (the control side has not noticed yet): stay on ix.
        assert_eq!(p.on_answer(keys(&["emb", "ix", "origin"])), Move::Stay);
        assert_eq!(p.current_key(), Some("ix"));
        // ix fails too: emb is still marked, so the origin, not back to emb.
        assert_eq!(p.on_failure(), Move::To(2));
        assert_eq!(p.current_key(), Some("origin"));
        // The control side dropped emb: a new list; its first is ix, where the viewer moves.
        assert_eq!(p.on_answer(keys(&["ix", "origin"])), Move::To(0));
        assert_eq!(p.current_key(), Some("ix"));
    }

    #[test]
    fn a_changed_answer_moves_back_to_its_first_location() {
        let mut p = Pathways::new(keys(&["emb", "ix", "origin"]));
        assert_eq!(p.on_failure(), Move::To(1));
        // emb dropped while the viewer is already on ix: no move.
        assert_eq!(p.on_answer(keys(&["ix", "origin"])), Move::Stay);
        assert_eq!(p.current_key(), Some("ix"));
        // emb recovered and is ranked first again: back to it.
        assert_eq!(p.on_answer(keys(&["emb", "ix", "origin"])), Move::To(0));
        assert_eq!(p.current_key(), Some("emb"));
        // A drain of emb sends the viewer to the new first location.
        assert_eq!(p.on_answer(keys(&["ix", "origin"])), Move::To(0));
        assert_eq!(p.current_key(), Some("ix"));
    }

    #[test]
    fn an_empty_answer_is_exhausted_at_once() {
        let mut p = Pathways::new(Vec::new());
        assert_eq!(p.current(), None);
        assert_eq!(p.on_failure(), Move::Exhausted);
        assert_eq!(p.on_answer(keys(&["origin"])), Move::To(0));
        assert_eq!(p.current(), Some(0));
    }

    fn rendition(name: &str, bitrate: u64, template: Option<&str>, count: u64) -> SteeredRendition {
        SteeredRendition {
            name: name.into(),
            bitrate,
            template: template.map(str::to_owned),
            start_number: 0,
            count,
            objects: Vec::new(),
        }
    }

    #[test]
    fn segment_ids_expand_one_number_and_wrap() {
        let r = rendition("720p", 3_000_000, Some("t0007-720p-$Number%04d$.m4s"), 3);
        assert_eq!(segment_id(&r, 0).unwrap(), "t0007-720p-0000.m4s");
        assert_eq!(segment_id(&r, 2).unwrap(), "t0007-720p-0002.m4s");
        assert_eq!(segment_id(&r, 4).unwrap(), "t0007-720p-0001.m4s", "wraps");
        let ids: Vec<String> = (0..3).map(|i| segment_id(&r, i).unwrap()).collect();
        assert_eq!(ids, r.object_ids(), "the same ids as the whole expansion");
        let mut listed = rendition("x", 1000, None, 2);
        listed.objects = vec!["a.m4s".into(), "b.m4s".into()];
        assert_eq!(segment_id(&listed, 3).unwrap(), "b.m4s");
        assert_eq!(segment_id(&rendition("e", 1000, None, 0), 0), None);
    }

    #[test]
    fn the_ladder_is_sorted_by_bitrate() {
        let rs = [
            rendition("720p", 3_000_000, Some("a"), 1),
            rendition("240p", 400_000, Some("b"), 1),
            rendition("none", 100_000, Some("c"), 0),
        ];
        assert_eq!(ladder(&rs), [(1, 400), (0, 3000)]);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
