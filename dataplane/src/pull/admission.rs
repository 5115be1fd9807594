//! What pull-through keeps (pure: no I/O, no clocks).
//!
//! * [`Sketch`]: TinyLFU's frequency estimate — a 4-row count-min sketch of 4-bit counters
//!   (stored as bytes, saturating at 15), halved every `sample` recorded requests (aging), in
//!   front of a doorkeeper bit set that absorbs each id's first request (one-hit wonders never
//!   reach the counters). Lock-free: executors record every request with relaxed atomics.
//! * [`Store`]: the objects pull-through stored in its tier, with their sizes, in a CLOCK
//!   ring (second chance: a request since the hand last passed sets an object's bit). A
//!   candidate is admitted when it fits, or when it is estimated more popular than every
//!   victim it would push out; objects the agent's fill placed are not in the store, so they
//!   are never victims.
//! * [`simulate`]: replays a request trace against a byte capacity with this policy and with
//!   plain LRU (the `trace` bench scenario and a unit test).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};

/// A 64-bit hash of an id (fixed keys: the sketch is process-local).
pub fn hash_id(id: &str) -> u64 {
    let mut h =
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .build_hasher();
    h.write(id.as_bytes());
    h.finish()
}

/// TinyLFU's frequency sketch with a doorkeeper.
#[derive(Debug)]
pub struct Sketch {
    counters: Box<[AtomicU8]>,
    width_mask: u64,
    door: Box<[AtomicU64]>,
    door_mask: u64,
    recorded: AtomicU64,
    sample: u64,
}

const ROWS: u64 = 4;
const SEEDS: [u64; 4] = [
    0x9E37_79B9_7F4A_7C15,
    0xC2B2_AE3D_27D4_EB4F,
    0x1656_67B1_9E37_79F9,
    0x27D4_EB2F_1656_67C5,
];

impl Sketch {
    /// A sketch for about `items` distinct objects in the tier.
    pub fn new(items: usize) -> Sketch {
        let width = (items.max(64) * 2).next_power_of_two() as u64;
        let door_bits = (items.max(64) * 8).next_power_of_two() as u64;
        Sketch {
            counters: (0..width * ROWS).map(|_| AtomicU8::new(0)).collect(),
            width_mask: width - 1,
            door: (0..door_bits / 64).map(|_| AtomicU64::new(0)).collect(),
            door_mask: door_bits - 1,
            recorded: AtomicU64::new(0),
            sample: width * 5,
        }
    }

    fn slot(&self, row: u64, hash: u64) -> usize {
        let h = (hash ^ SEEDS[row as usize]).wrapping_mul(0x2545_F491_4F6C_DD1D);
        (row * (self.width_mask + 1) + ((h >> 17) & self.width_mask)) as usize
    }

    fn door_bit(&self, hash: u64) -> (usize, u64) {
        let b = (hash.rotate_left(29) ^ hash) & self.door_mask;
        ((b / 64) as usize, 1 << (b % 64))
    }

    /// Records one request for the id with this hash.
    pub fn record(&self, hash: u64) {
        let (word, bit) = self.door_bit(hash);
        let before = self.door[word].fetch_or(bit, Relaxed);
        if before & bit != 0 {
            for row in 0..ROWS {
                let c = &self.counters[self.slot(row, hash)];
                let _ = c.fetch_update(Relaxed, Relaxed, |v| (v < 15).then_some(v + 1));
            }
        }
        if self.recorded.fetch_add(1, Relaxed) + 1 >= self.sample {
            self.age();
        }
    }

    /// Estimated requests for the id (the doorkeeper counts as one).
    pub fn estimate(&self, hash: u64) -> u32 {
        let (word, bit) = self.door_bit(hash);
        let door = u32::from(self.door[word].load(Relaxed) & bit != 0);
        let min = (0..ROWS)
            .map(|row| u32::from(self.counters[self.slot(row, hash)].load(Relaxed)))
            .min()
            .unwrap_or(0);
        min + door
    }

    /// Halves every counter and clears the doorkeeper (old popularity fades).
    fn age(&self) {
        self.recorded.store(0, Relaxed);
        for c in self.counters.iter() {
            let _ = c.fetch_update(Relaxed, Relaxed, |v| Some(v / 2));
        }
        for d in self.door.iter() {
            d.store(0, Relaxed);
        }
    }
}

/// An object in the store.
#[derive(Debug)]
struct Stored {
    size: u64,
    referenced: bool,
}

/// What [`Store::admit`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Keep it; first remove these (id, size) from the tier.
    Admit(Vec<(Box<str>, u64)>),
    /// Do not store it (it is still served to the clients that asked).
    Reject,
}

/// The objects pull-through stored, in a CLOCK ring, with the byte capacity it may use.
#[derive(Debug)]
pub struct Store {
    capacity: u64,
    used: u64,
    ring: VecDeque<Box<str>>,
    objects: HashMap<Box<str>, Stored>,
}

impl Store {
    /// An empty store that may hold `capacity` bytes.
    pub fn new(capacity: u64) -> Store {
        Store {
            capacity,
            used: 0,
            ring: VecDeque::new(),
            objects: HashMap::new(),
        }
    }

    /// Bytes stored.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Objects stored.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// The byte capacity.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether `id` is one of pull-through's objects.
    pub fn contains(&self, id: &str) -> bool {
        self.objects.contains_key(id)
    }

    /// A request for a stored object: it gets its second chance.
    pub fn touch(&mut self, id: &str) {
        if let Some(o) = self.objects.get_mut(id) {
            o.referenced = true;
        }
    }

    /// Forgets `id` (deleted from the tier by someone else).
    pub fn remove(&mut self, id: &str) {
        if let Some(o) = self.objects.remove(id) {
            self.used -= o.size;
            self.ring.retain(|r| &**r != id);
        }
    }

    /// Decides whether a new object of `size` bytes, estimated `freq`, is kept; on
    /// [`Admission::Admit`] the victims are already removed from the store and the object is in.
    /// `freq_of` estimates a victim's popularity.
    pub fn admit(
        &mut self,
        id: &str,
        size: u64,
        freq: u32,
        freq_of: impl Fn(&str) -> u32,
    ) -> Admission {
        if size > self.capacity {
            return Admission::Reject;
        }
        if self.objects.contains_key(id) {
            return Admission::Admit(Vec::new());
        }
        // Walk the CLOCK ring for victims until the candidate fits: a referenced object gets
        // its bit cleared and another round; an unreferenced one is a victim, unless it is at
        // least as popular as the candidate (then the candidate is rejected, nothing changes).
        use std::collections::HashSet;
        let mut victims: Vec<Box<str>> = Vec::new();
        let mut victim_set: HashSet<Box<str>> = HashSet::new();
        // Referenced objects the hand passed (their bit is cleared on commit, and they go to
        // the back of the ring), in ring order.
        let mut passed: Vec<Box<str>> = Vec::new();
        let mut passed_set: HashSet<Box<str>> = HashSet::new();
        let mut freed = 0u64;
        let mut i = 0usize;
        let mut lap = 0;
        while self.used - freed + size > self.capacity {
            let Some(vid) = self.ring.get(i) else {
                // A full lap: the passed objects lose their chance and are judged on the next.
                lap += 1;
                if lap > 1 || passed.is_empty() {
                    return Admission::Reject;
                }
                i = 0;
                continue;
            };
            i += 1;
            if victim_set.contains(vid) {
                continue;
            }
            let v = self.objects.get(vid).expect("ring and map agree");
            if lap == 0 && v.referenced {
                passed_set.insert(vid.clone());
                passed.push(vid.clone());
                continue;
            }
            if freq_of(vid) >= freq {
                // The victim is at least as popular as the candidate: the candidate goes,
                // nothing changes.
                return Admission::Reject;
            }
            freed += v.size;
            victim_set.insert(vid.clone());
            victims.push(vid.clone());
        }
        // Commit: the victims leave; the passed objects lose their bit and go to the back of
        // the ring (second chance); the candidate joins at the back.
        let mut out = Vec::with_capacity(victims.len());
        for v in &victims {
            let size = self.objects.remove(v).map_or(0, |o| o.size);
            self.used -= size;
            out.push((v.clone(), size));
        }
        self.ring
            .retain(|r| !victim_set.contains(r) && !passed_set.contains(r));
        for p in passed {
            if let Some(o) = self.objects.get_mut(&p) {
                o.referenced = false;
                self.ring.push_back(p);
            }
        }
        self.insert(id, size);
        Admission::Admit(out)
    }

    /// Adds an object without asking (found on disk at start, or admitted).
    pub fn insert(&mut self, id: &str, size: u64) {
        if self.objects.contains_key(id) {
            return;
        }
        self.used += size;
        self.ring.push_back(id.into());
        self.objects.insert(
            id.into(),
            Stored {
                size,
                referenced: false,
            },
        );
    }
}

/// Byte hit ratios of one trace replay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimResult {
    /// Bytes served from the tier / bytes requested, TinyLFU admission + CLOCK.
    pub tinylfu: f64,
    /// The same for plain LRU (admit everything, evict the least recently used).
    pub lru: f64,
}

/// Replays `trace` (object index per request) with object sizes `sizes` against a tier of
/// `capacity` bytes, with TinyLFU admission and with plain LRU.
pub fn simulate(trace: &[u32], sizes: &[u64], capacity: u64) -> SimResult {
    let name = |i: u32| i.to_string();
    let total: u64 = trace.iter().map(|&i| sizes[i as usize]).sum();
    // TinyLFU.
    let sketch = Sketch::new((sizes.len() / 10).max(64));
    let mut store = Store::new(capacity);
    let mut hit_bytes = 0u64;
    for &i in trace {
        let id = name(i);
        let h = hash_id(&id);
        sketch.record(h);
        if store.contains(&id) {
            store.touch(&id);
            hit_bytes += sizes[i as usize];
        } else {
            let freq = sketch.estimate(h);
            let _ = store.admit(&id, sizes[i as usize], freq, |v| {
                sketch.estimate(hash_id(v))
            });
        }
    }
    let tinylfu = hit_bytes as f64 / total.max(1) as f64;
    // LRU: a recency-ordered map (generation counter → id).
    let mut last: HashMap<u32, u64> = HashMap::new();
    let mut order: std::collections::BTreeMap<u64, u32> = std::collections::BTreeMap::new();
    let mut used = 0u64;
    let mut hit_bytes = 0u64;
    for (t, &i) in trace.iter().enumerate() {
        let t = t as u64;
        let size = sizes[i as usize];
        if let Some(prev) = last.insert(i, t) {
            order.remove(&prev);
            order.insert(t, i);
            hit_bytes += size;
            continue;
        }
        if size > capacity {
            last.remove(&i);
            continue;
        }
        order.insert(t, i);
        used += size;
        while used > capacity {
            let (_, v) = order.pop_first().expect("over capacity means not empty");
            last.remove(&v);
            used -= sizes[v as usize];
        }
    }
    SimResult {
        tinylfu,
        lru: hit_bytes as f64 / total.max(1) as f64,
    }
}

/// A deterministic Zipf + scan trace: `requests` requests over `objects` objects whose
/// popularity follows Zipf(`s`); a fraction `scan` of the requests is a sequential scan over
/// ids never seen before (one-hit wonders). Sizes: 1–8 MiB, fixed by the id. Returns the trace
/// and the sizes (scan ids come after the Zipf ids).
pub fn zipf_scan_trace(
    objects: usize,
    requests: usize,
    s: f64,
    scan: f64,
    seed: u64,
) -> (Vec<u32>, Vec<u64>) {
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let weights: Vec<f64> = (1..=objects).map(|k| 1.0 / (k as f64).powf(s)).collect();
    let sum: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(objects);
    let mut acc = 0.0;
    for w in &weights {
        acc += w / sum;
        cdf.push(acc);
    }
    let mut sizes: Vec<u64> = (0..objects)
        .map(|i| (1 + (i as u64 * 7919) % 8) << 20)
        .collect();
    let mut trace = Vec::with_capacity(requests);
    let mut scan_id = objects as u32;
    let mut in_scan = 0usize;
    while trace.len() < requests {
        let u = (next() >> 11) as f64 / (1u64 << 53) as f64;
        if in_scan > 0 || u < scan / 64.0 {
            // Scans come in runs of 64 new ids.
            if in_scan == 0 {
                in_scan = 64;
            }
            in_scan -= 1;
            trace.push(scan_id);
            sizes.push((1 + (u64::from(scan_id) * 7919) % 8) << 20);
            scan_id += 1;
            continue;
        }
        let u = (next() >> 11) as f64 / (1u64 << 53) as f64;
        let k = cdf.partition_point(|&c| c < u).min(objects - 1);
        trace.push(k as u32);
    }
    (trace, sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doorkeeper_absorbs_the_first_request_and_counters_count_the_rest() {
        let s = Sketch::new(1000);
        let h = hash_id("a");
        assert_eq!(s.estimate(h), 0);
        s.record(h);
        assert_eq!(s.estimate(h), 1);
        for _ in 0..5 {
            s.record(h);
        }
        assert!(s.estimate(h) >= 6, "{}", s.estimate(h));
        assert!(s.estimate(hash_id("b")) <= 1);
    }

    #[test]
    fn aging_halves_counts() {
        let s = Sketch::new(64);
        let h = hash_id("hot");
        for _ in 0..14 {
            s.record(h);
        }
        let before = s.estimate(h);
        s.age();
        assert!(s.estimate(h) <= before / 2 + 1);
    }

    #[test]
    fn a_less_popular_candidate_is_rejected_and_a_more_popular_one_evicts() {
        let mut store = Store::new(10);
        assert_eq!(store.admit("a", 6, 1, |_| 0), Admission::Admit(vec![]));
        // b does not fit beside a; a (freq 5) is more popular than b (freq 1).
        assert_eq!(store.admit("b", 6, 1, |_| 5), Admission::Reject);
        assert!(store.contains("a") && !store.contains("b"));
        // c (freq 9) beats a (freq 5).
        assert_eq!(
            store.admit("c", 6, 9, |_| 5),
            Admission::Admit(vec![("a".into(), 6)])
        );
        assert_eq!(store.used(), 6);
        assert!(store.contains("c") && !store.contains("a"));
        // Too big for the tier at all.
        assert_eq!(store.admit("huge", 11, 100, |_| 0), Admission::Reject);
    }

    #[test]
    fn a_referenced_object_gets_a_second_chance() {
        let mut store = Store::new(10);
        store.insert("a", 5);
        store.insert("b", 5);
        store.touch("a");
        // a is older but was requested since: b goes.
        assert_eq!(
            store.admit("c", 5, 3, |_| 1),
            Admission::Admit(vec![("b".into(), 5)])
        );
        // a lost its bit when the hand passed it: next time it is the victim.
        assert_eq!(
            store.admit("d", 5, 3, |_| 1),
            Admission::Admit(vec![("a".into(), 5)])
        );
        assert!(store.contains("c") && store.contains("d"));
    }

    #[test]
    fn tinylfu_beats_lru_on_a_zipf_and_scan_mix() {
        let (trace, sizes) = zipf_scan_trace(2_000, 60_000, 0.9, 0.3, 7);
        let catalog: u64 = sizes[..2_000].iter().sum();
        let r = simulate(&trace, &sizes, catalog / 10);
        eprintln!(
            "byte hit ratio, tier = 10% of the catalog: TinyLFU {:.3}, LRU {:.3}",
            r.tinylfu, r.lru
        );
        assert!(r.tinylfu > r.lru, "{r:?}");
    }
}
