//! The video player model's pure parts: the bitrate ladder, ABR decisions from measured
//! throughput and the buffer, the playback buffer (startup, stalls), and where a segment's bytes
//! lie in a title's object.

/// Default ladder in kbit/s: a typical per-title encoding ladder from 235 kbps to 16 Mbps (4K).
pub const DEFAULT_LADDER_KBPS: [u32; 12] = [
    235, 375, 560, 750, 1050, 1750, 2350, 3000, 4300, 5800, 8000, 16000,
];

/// Throughput-based ABR with buffer guards:
///
/// - the throughput estimate is the harmonic mean of the last `window` segment downloads
///   (harmonic: one fast outlier does not lift it much);
/// - the chosen rung is the highest whose bitrate ≤ `safety` × estimate;
/// - with less than `panic_buffer_s` buffered, the budget is halved (drop fast, avoid a stall);
/// - an up-switch needs at least `upswitch_buffer_s` buffered (then it goes straight to the
///   rung that fits; down-switches never wait);
/// - before the first measurement, the lowest rung (fast startup).
#[derive(Clone, Debug)]
pub struct Abr {
    pub ladder_kbps: Vec<u32>,
    pub safety: f64,
    pub window: usize,
    pub panic_buffer_s: f64,
    pub upswitch_buffer_s: f64,
    samples_bps: Vec<f64>,
}

impl Abr {
    pub fn new(ladder_kbps: Vec<u32>, segment_s: f64) -> Abr {
        assert!(!ladder_kbps.is_empty(), "empty ladder");
        Abr {
            ladder_kbps,
            safety: 0.8,
            window: 4,
            panic_buffer_s: segment_s,
            upswitch_buffer_s: 2.0 * segment_s,
            samples_bps: Vec::new(),
        }
    }

    /// Records one download: `bytes` in `secs`.
    pub fn observe(&mut self, bytes: u64, secs: f64) {
        let bps = bytes as f64 * 8.0 / secs.max(1e-6);
        self.samples_bps.push(bps);
        if self.samples_bps.len() > self.window {
            self.samples_bps.remove(0);
        }
    }

    /// Harmonic mean of the recent downloads' throughput, bit/s.
    pub fn estimate_bps(&self) -> Option<f64> {
        if self.samples_bps.is_empty() {
            return None;
        }
        let inv: f64 = self.samples_bps.iter().map(|b| 1.0 / b).sum();
        Some(self.samples_bps.len() as f64 / inv)
    }

    /// The rung for the next segment, given `buffer_s` seconds buffered and the `current` rung.
    pub fn choose(&self, buffer_s: f64, current: usize) -> usize {
        let Some(estimate) = self.estimate_bps() else {
            return 0;
        };
        let mut budget = estimate * self.safety;
        if buffer_s < self.panic_buffer_s {
            budget *= 0.5;
        }
        let fits = self
            .ladder_kbps
            .iter()
            .rposition(|&kbps| f64::from(kbps) * 1000.0 <= budget)
            .unwrap_or(0);
        let current = current.min(self.ladder_kbps.len() - 1);
        if fits > current {
            if buffer_s < self.upswitch_buffer_s {
                current
            } else {
                fits
            }
        } else {
            fits
        }
    }
}

/// The playback buffer on a simulated playback clock.
#[derive(Clone, Debug, Default)]
pub struct Playback {
    /// Seconds of media buffered.
    pub buffer_s: f64,
    /// Buffered seconds needed to start playing (and to resume after a stall).
    pub startup_threshold_s: f64,
    pub playing: bool,
    /// Wall seconds from the session's start to the first frame; None until playback starts.
    pub startup_s: Option<f64>,
    /// Seconds since the session started.
    pub clock_s: f64,
    /// Seconds stalled after playback started (rebuffering).
    pub stall_s: f64,
    /// Number of stalls after playback started.
    pub stalls: u32,
    /// Seconds of media played.
    pub played_s: f64,
    /// Σ bitrate × duration of the segments received, kbit.
    media_kbit: f64,
    /// Σ duration of the segments received.
    media_s: f64,
    /// Rung changes.
    pub switches: u32,
    last_rung: Option<usize>,
}

impl Playback {
    pub fn new(startup_threshold_s: f64) -> Playback {
        Playback {
            startup_threshold_s,
            ..Playback::default()
        }
    }

    /// Lets `dt` seconds of wall time pass: playback drains the buffer; an empty buffer while
    /// playing is a stall that lasts until `startup_threshold_s` is buffered again.
    pub fn advance(&mut self, dt: f64) {
        let dt = dt.max(0.0);
        self.clock_s += dt;
        if !self.playing {
            if self.startup_s.is_some() {
                self.stall_s += dt;
            }
            return;
        }
        if self.buffer_s >= dt {
            self.buffer_s -= dt;
            self.played_s += dt;
        } else {
            self.played_s += self.buffer_s;
            self.stall_s += dt - self.buffer_s;
            self.buffer_s = 0.0;
            self.playing = false;
            self.stalls += 1;
        }
    }

    /// A segment of `duration_s` at `kbps` (rung `rung`) arrived.
    pub fn push_segment(&mut self, duration_s: f64, kbps: u32, rung: usize) {
        self.buffer_s += duration_s;
        self.media_kbit += f64::from(kbps) * duration_s;
        self.media_s += duration_s;
        if self.last_rung.is_some_and(|r| r != rung) {
            self.switches += 1;
        }
        self.last_rung = Some(rung);
        if !self.playing && self.buffer_s >= self.startup_threshold_s {
            self.playing = true;
            if self.startup_s.is_none() {
                self.startup_s = Some(self.clock_s);
            }
        }
    }

    /// Stalled share of the time since playback started: stall / (played + stall).
    pub fn rebuffer_ratio(&self) -> f64 {
        rebuffer_ratio(self.played_s, self.stall_s)
    }

    /// Mean bitrate of the media received, weighted by duration, kbit/s.
    pub fn delivered_kbps(&self) -> f64 {
        if self.media_s > 0.0 {
            self.media_kbit / self.media_s
        } else {
            0.0
        }
    }

    pub fn media_s(&self) -> f64 {
        self.media_s
    }
}

/// Bytes of one segment of `duration_s` at `kbps`.
pub fn segment_bytes(kbps: u32, duration_s: f64) -> u64 {
    ((f64::from(kbps) * 1000.0 / 8.0 * duration_s) as u64).max(1)
}

/// Where segment `index` of a rendition lies in a title object of `object_len` bytes: segments
/// are laid end to end from offset 0 and wrap around (the object stands for every rendition of
/// the title). Returns (offset, length); the length is capped at the object length.
pub fn segment_range(object_len: u64, index: u64, seg_bytes: u64) -> (u64, u64) {
    let len = seg_bytes.min(object_len).max(1);
    let slots = (object_len / len).max(1);
    ((index % slots) * len, len)
}

/// Stalled share of the time since playback started: `stall / (played + stall)`, 0 before any.
pub fn rebuffer_ratio(played_s: f64, stall_s: f64) -> f64 {
    let watched = played_s + stall_s;
    if watched > 0.0 {
        stall_s / watched
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn abr() -> Abr {
        Abr::new(DEFAULT_LADDER_KBPS.to_vec(), 4.0)
    }

    #[test]
    fn abr_starts_low_and_respects_the_safety_margin() {
        let mut a = abr();
        assert_eq!(a.choose(0.0, 5), 0, "no estimate: lowest rung");
        // 10 Mbit/s measured: budget 8 Mbit/s → the 8000 kbps rung fits, 16000 does not.
        a.observe(5_000_000, 4.0);
        assert!((a.estimate_bps().unwrap() - 10e6).abs() < 1.0);
        assert_eq!(a.ladder_kbps[a.choose(30.0, 10)], 8000);
        // Up-switches only with enough buffer.
        assert_eq!(a.choose(30.0, 3), 10);
        assert_eq!(a.choose(5.0, 3), 3, "buffer below 2 segments: hold");
        // Less than one segment buffered: half the budget (4 Mbit/s → 3000 kbps).
        assert_eq!(a.ladder_kbps[a.choose(2.0, 10)], 3000);
    }

    #[test]
    fn abr_drops_at_once_when_throughput_falls() {
        let mut a = abr();
        for _ in 0..4 {
            a.observe(10_000_000, 4.0); // 20 Mbit/s
        }
        assert_eq!(a.ladder_kbps[a.choose(30.0, 11)], 16000);
        a.observe(250_000, 4.0); // 0.5 Mbit/s: the harmonic mean falls hard
        let est = a.estimate_bps().unwrap();
        assert!(est < 2.5e6, "{est}");
        assert!(a.ladder_kbps[a.choose(30.0, 11)] <= 1750);
        // Below the lowest rung: still the lowest.
        let mut slow = abr();
        slow.observe(1000, 4.0);
        assert_eq!(slow.choose(30.0, 0), 0);
    }

    #[test]
    fn buffer_startup_stalls_and_ratio() {
        let mut p = Playback::new(4.0);
        p.advance(0.5);
        assert_eq!(p.stall_s, 0.0, "waiting for startup is not rebuffering");
        p.push_segment(2.0, 1000, 0);
        assert!(!p.playing);
        p.advance(0.5);
        p.push_segment(2.0, 3000, 2);
        assert!(p.playing);
        assert_eq!(p.startup_s, Some(1.0));
        assert_eq!(p.switches, 1);
        // Play 3 s of the 4 buffered, then 2 s with 1 left: 1 s played, 1 s stalled.
        p.advance(3.0);
        assert!((p.buffer_s - 1.0).abs() < 1e-9);
        p.advance(2.0);
        assert!(!p.playing);
        assert_eq!(p.stalls, 1);
        assert!((p.played_s - 4.0).abs() < 1e-9);
        assert!((p.stall_s - 1.0).abs() < 1e-9);
        // Still stalled until the threshold is buffered again.
        p.advance(1.0);
        p.push_segment(4.0, 3000, 2);
        assert!(p.playing);
        assert_eq!(p.startup_s, Some(1.0), "startup is counted once");
        assert!((p.rebuffer_ratio() - 2.0 / 6.0).abs() < 1e-9);
        // (1000×2 + 3000×2 + 3000×4) / 8 = 2500 kbps.
        assert!((p.delivered_kbps() - 2500.0).abs() < 1e-9);
    }

    #[test]
    fn segments_wrap_inside_the_object() {
        assert_eq!(segment_bytes(8000, 4.0), 4_000_000);
        assert_eq!(segment_range(10_000_000, 0, 4_000_000), (0, 4_000_000));
        assert_eq!(
            segment_range(10_000_000, 1, 4_000_000),
            (4_000_000, 4_000_000)
        );
        assert_eq!(segment_range(10_000_000, 2, 4_000_000), (0, 4_000_000));
        assert_eq!(segment_range(1000, 5, 4_000_000), (0, 1000));
    }
}
