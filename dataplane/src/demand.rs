//! Requests per object, counted per core in a bounded structure and merged when read
//! (`GET /demand` on the admin listener; docs/http.md).
//!
//! Each executor owns a [`CoreDemand`]: a count-min sketch (`DEPTH` rows of `WIDTH` counters)
//! that estimates any object's count, and `TOP` slots holding the objects with the highest
//! estimates (a space-saving top-k: an object not in a slot replaces the slot with the lowest
//! count when its estimate is higher, and starts from that estimate). Everything is allocated
//! when the data plane starts; recording a request hashes the id once, updates `DEPTH`
//! counters and scans the slots — no allocation, no lock: only the owning core writes (relaxed
//! atomics), and the admin thread reads a slot's id under its sequence number (a seqlock), so
//! it never sees a torn id.
//!
//! The counts are cumulative since the data plane started and never below the true count; an
//! object's merged count is the sum over cores of its slot count, or that core's sketch
//! estimate where it has no slot.

use std::collections::HashMap;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use edgeplane_api::MAX_CONTENT_ID_LEN;

const DEPTH: usize = 4;
const WIDTH: usize = 4096;
/// Objects tracked per core.
pub const TOP: usize = 64;
const ID_WORDS: usize = MAX_CONTENT_ID_LEN.div_ceil(8);

/// One top-k slot.
struct Slot {
    /// Odd while the owning core rewrites the slot.
    seq: AtomicU64,
    /// Hash of the id (0: empty).
    hash: AtomicU64,
    len: AtomicU64,
    count: AtomicU64,
    id: [AtomicU64; ID_WORDS],
}

impl Slot {
    fn new() -> Slot {
        Slot {
            seq: AtomicU64::new(0),
            hash: AtomicU64::new(0),
            len: AtomicU64::new(0),
            count: AtomicU64::new(0),
            id: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// One executor's counts. Only that executor calls [`CoreDemand::record`].
pub struct CoreDemand {
    sketch: Box<[AtomicU32]>,
    slots: Box<[Slot]>,
    requests: AtomicU64,
}

impl std::fmt::Debug for CoreDemand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreDemand")
            .field("requests", &self.requests.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// FNV-1a, then a 64-bit finalizer (never 0: 0 marks an empty slot).
fn hash(id: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in id {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h.max(1)
}

/// The sketch column of `h` in row `row`.
fn column(h: u64, row: usize) -> usize {
    let x = h.rotate_left(16 * row as u32) ^ (row as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 52) as usize % WIDTH
}

impl CoreDemand {
    fn new() -> CoreDemand {
        CoreDemand {
            sketch: (0..DEPTH * WIDTH).map(|_| AtomicU32::new(0)).collect(),
            slots: (0..TOP).map(|_| Slot::new()).collect(),
            requests: AtomicU64::new(0),
        }
    }

    /// Counts one request for `id` (a valid content id: at most 200 bytes). Owning core only.
    pub fn record(&self, id: &str) {
        let id = id.as_bytes();
        if id.is_empty() || id.len() > MAX_CONTENT_ID_LEN {
            return;
        }
        let relaxed = Ordering::Relaxed;
        self.requests
            .store(self.requests.load(relaxed) + 1, relaxed);
        let h = hash(id);
        let mut estimate = u32::MAX;
        for row in 0..DEPTH {
            let c = &self.sketch[row * WIDTH + column(h, row)];
            let v = c.load(relaxed).saturating_add(1);
            c.store(v, relaxed);
            estimate = estimate.min(v);
        }
        let (mut low, mut low_count) = (0, u64::MAX);
        for (i, s) in self.slots.iter().enumerate() {
            let count = s.count.load(relaxed);
            if s.hash.load(relaxed) == h && s.len.load(relaxed) == id.len() as u64 {
                s.count.store(count + 1, relaxed);
                return;
            }
            if count < low_count {
                (low, low_count) = (i, count);
            }
        }
        if u64::from(estimate) <= low_count {
            return;
        }
        // Take over the lowest slot, under its sequence number.
        let s = &self.slots[low];
        let seq = s.seq.load(relaxed);
        s.seq.store(seq + 1, relaxed);
        fence(Ordering::Release);
        for (w, chunk) in s.id.iter().zip(id.chunks(8)) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            w.store(u64::from_le_bytes(word), relaxed);
        }
        s.len.store(id.len() as u64, relaxed);
        s.hash.store(h, relaxed);
        s.count.store(u64::from(estimate), relaxed);
        s.seq.store(seq + 2, Ordering::Release);
    }

    /// The sketch's estimate for `h`.
    fn estimate(&self, h: u64) -> u64 {
        (0..DEPTH)
            .map(|row| self.sketch[row * WIDTH + column(h, row)].load(Ordering::Relaxed))
            .min()
            .map_or(0, u64::from)
    }

    /// The slots' ids, hashes and counts (a slot being rewritten is read again).
    fn slots(&self) -> Vec<(String, u64, u64)> {
        let mut out = Vec::with_capacity(TOP);
        for s in self.slots.iter() {
            for _attempt in 0..100 {
                let before = s.seq.load(Ordering::Acquire);
                if before % 2 == 1 {
                    std::hint::spin_loop();
                    continue;
                }
                let h = s.hash.load(Ordering::Relaxed);
                let len = s.len.load(Ordering::Relaxed) as usize;
                let count = s.count.load(Ordering::Relaxed);
                let mut bytes = [0u8; ID_WORDS * 8];
                for (w, chunk) in s.id.iter().zip(bytes.chunks_mut(8)) {
                    chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
                }
                fence(Ordering::Acquire);
                if s.seq.load(Ordering::Relaxed) != before {
                    continue;
                }
                if h != 0 && (1..=MAX_CONTENT_ID_LEN).contains(&len) {
                    if let Ok(id) = std::str::from_utf8(&bytes[..len]) {
                        out.push((id.to_owned(), h, count));
                    }
                }
                break;
            }
        }
        out
    }
}

/// Every core's counts.
#[derive(Debug)]
pub struct Demand {
    cores: Vec<CoreDemand>,
    since: u64,
}

/// One object of a [`DemandSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ObjectDemand {
    /// The object id.
    pub id: String,
    /// Requests since the data plane started (an estimate, never below the true count).
    pub requests: u64,
}

/// What `GET /demand` answers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DemandSnapshot {
    /// Unix seconds the counts start at.
    pub since: u64,
    /// Object requests counted since then, over all cores.
    pub requests: u64,
    /// The most requested objects, most first.
    pub objects: Vec<ObjectDemand>,
}

impl Demand {
    /// Counts for `cores` executors, starting now.
    pub fn new(cores: usize) -> Demand {
        Demand {
            cores: (0..cores).map(|_| CoreDemand::new()).collect(),
            since: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// Executor `i`'s counts.
    pub fn core(&self, i: usize) -> &CoreDemand {
        &self.cores[i]
    }

    /// The `n` most requested objects over every core (merged on read).
    pub fn top(&self, n: usize) -> DemandSnapshot {
        let per_core: Vec<Vec<(String, u64, u64)>> = self.cores.iter().map(|c| c.slots()).collect();
        let mut ids: HashMap<u64, String> = HashMap::new();
        for (id, h, _) in per_core.iter().flatten() {
            ids.entry(*h).or_insert_with(|| id.clone());
        }
        let mut objects: Vec<ObjectDemand> = ids
            .into_iter()
            .map(|(h, id)| {
                let requests = self
                    .cores
                    .iter()
                    .zip(&per_core)
                    .map(|(core, slots)| {
                        slots
                            .iter()
                            .find(|s| s.1 == h)
                            .map_or_else(|| core.estimate(h), |s| s.2)
                    })
                    .sum();
                ObjectDemand { id, requests }
            })
            .collect();
        objects.sort_by(|a, b| b.requests.cmp(&a.requests).then_with(|| a.id.cmp(&b.id)));
        objects.truncate(n);
        DemandSnapshot {
            since: self.since,
            requests: self
                .cores
                .iter()
                .map(|c| c.requests.load(Ordering::Relaxed))
                .sum(),
            objects,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(s: &DemandSnapshot) -> Vec<(&str, u64)> {
        s.objects
            .iter()
            .map(|o| (o.id.as_str(), o.requests))
            .collect()
    }

    #[test]
    fn the_most_requested_objects_over_cores_never_under_counted() {
        let d = Demand::new(2);
        for _ in 0..50 {
            d.core(0).record("hot");
        }
        for _ in 0..30 {
            d.core(1).record("hot");
        }
        for _ in 0..20 {
            d.core(1).record("warm");
        }
        d.core(0).record("cold");
        let s = d.top(2);
        assert_eq!(counts(&s), [("hot", 80), ("warm", 20)]);
        assert_eq!(s.requests, 101);
        // Bad ids are not counted.
        d.core(0).record("");
        d.core(0).record(&"x".repeat(201));
        assert_eq!(d.top(10).requests, 101);
    }

    #[test]
    fn a_heavy_hitter_surfaces_through_a_long_tail() {
        let d = Demand::new(1);
        let c = d.core(0);
        // 10,000 distinct objects once each, interleaved with one object every 10 requests.
        for i in 0..10_000 {
            c.record(&format!("tail-{i:05}"));
            if i % 10 == 0 {
                c.record("t0042-1080p-0001.m4s");
            }
        }
        let s = d.top(5);
        assert_eq!(s.objects[0].id, "t0042-1080p-0001.m4s");
        assert!(s.objects[0].requests >= 1000, "{:?}", s.objects[0]);
        assert!(s.objects.len() <= 5);
        // A 200-byte id round-trips through a slot.
        let long = "a".repeat(200);
        for _ in 0..5000 {
            c.record(&long);
        }
        assert_eq!(d.top(1).objects[0].id, long);
    }

    #[test]
    fn reads_race_writes_without_torn_ids() {
        let d = std::sync::Arc::new(Demand::new(1));
        let ids: Vec<String> = (0..500)
            .map(|i| format!("obj-{i:03}-{}", "z".repeat(i % 150)))
            .collect();
        let writer = {
            let d = d.clone();
            let ids = ids.clone();
            std::thread::spawn(move || {
                for round in 0..200 {
                    for (i, id) in ids.iter().enumerate() {
                        if (i + round) % 7 != 0 {
                            d.core(0).record(id);
                        }
                    }
                }
            })
        };
        let known: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        while !writer.is_finished() {
            for o in d.top(TOP).objects {
                assert!(known.contains(o.id.as_str()), "torn id {:?}", o.id);
            }
        }
        writer.join().unwrap();
    }
}
