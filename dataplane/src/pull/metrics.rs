//! The `edgeplane_pull_*` metric families (docs/metrics.md). Process-wide relaxed atomics:
//! the fetch threads and the executors count, the admin thread renders.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (seconds) of the upstream latency histogram's buckets.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Pull-through's counters.
#[derive(Debug, Default)]
pub struct PullMetrics {
    /// Requests for objects the catalog has, while pull-through is on.
    pub hits: AtomicU64,
    /// Misses that started a pull.
    pub misses: AtomicU64,
    /// Misses that joined a pull already under way.
    pub coalesced: AtomicU64,
    /// Misses answered 503 (queue full or breaker open).
    pub rejected_busy: AtomicU64,
    /// Upstream requests sent.
    pub upstream_requests: AtomicU64,
    /// Body bytes received from the upstream.
    pub upstream_bytes: AtomicU64,
    /// Upstream requests that failed (transport, timeout, 5xx, bad answer).
    pub upstream_errors: AtomicU64,
    latency: [AtomicU64; BUCKETS.len() + 1],
    latency_sum_us: AtomicU64,
    /// Completed objects admission kept.
    pub admitted: AtomicU64,
    /// Completed objects admission did not keep (streamed, not stored).
    pub rejected: AtomicU64,
    /// Objects pull-through removed to make room.
    pub evictions: AtomicU64,
    /// Their bytes.
    pub evicted_bytes: AtomicU64,
    /// Objects stored (renamed into the tier).
    pub stored_objects: AtomicU64,
    /// Their bytes.
    pub stored_bytes: AtomicU64,
    /// Bytes of pull-through's objects in the tier now.
    pub used_bytes: AtomicU64,
    /// Pull-through's byte capacity.
    pub capacity: AtomicU64,
    /// Times the circuit breaker opened.
    pub breaker_opened: AtomicU64,
    /// Pulled objects whose SHA-256 differed from the upstream's digest (not installed).
    pub verify_failures: AtomicU64,
}

impl PullMetrics {
    /// Records the time to the upstream's response head.
    pub fn observe_latency(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(BUCKETS.len());
        self.latency[i].fetch_add(1, Relaxed);
        self.latency_sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }

    /// Renders every family; the gauges are passed in.
    pub fn render(&self, out: &mut String, in_flight: u64, queued: u64, pulling: u64) {
        let mut one = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        one(
            "edgeplane_pull_hits_total",
            "counter",
            "Object requests the catalog answered while pull-through is on.",
            self.hits.load(Relaxed),
        );
        one(
            "edgeplane_pull_misses_total",
            "counter",
            "Misses that started an upstream pull.",
            self.misses.load(Relaxed),
        );
        one(
            "edgeplane_pull_coalesced_total",
            "counter",
            "Misses that joined a pull already under way (no upstream request of their own).",
            self.coalesced.load(Relaxed),
        );
        one(
            "edgeplane_pull_rejected_busy_total",
            "counter",
            "Misses answered 503 + Retry-After (fetch queue full or circuit breaker open).",
            self.rejected_busy.load(Relaxed),
        );
        one(
            "edgeplane_pull_upstream_requests_total",
            "counter",
            "Requests sent to the upstream (one per slice).",
            self.upstream_requests.load(Relaxed),
        );
        one(
            "edgeplane_pull_upstream_bytes_total",
            "counter",
            "Body bytes received from the upstream.",
            self.upstream_bytes.load(Relaxed),
        );
        one(
            "edgeplane_pull_upstream_errors_total",
            "counter",
            "Upstream requests that failed (transport error, timeout, 5xx, bad answer).",
            self.upstream_errors.load(Relaxed),
        );
        one(
            "edgeplane_pull_verify_failures_total",
            "counter",
            "Pulled objects not installed because their SHA-256 differed from the upstream's digest.",
            self.verify_failures.load(Relaxed),
        );
        one(
            "edgeplane_pull_admitted_total",
            "counter",
            "Pulled objects admission kept in the tier.",
            self.admitted.load(Relaxed),
        );
        one(
            "edgeplane_pull_admission_rejected_total",
            "counter",
            "Pulled objects admission did not keep (streamed, not stored).",
            self.rejected.load(Relaxed),
        );
        one(
            "edgeplane_pull_evictions_total",
            "counter",
            "Pulled objects removed to make room for more popular ones.",
            self.evictions.load(Relaxed),
        );
        one(
            "edgeplane_pull_evicted_bytes_total",
            "counter",
            "Bytes of the evicted objects.",
            self.evicted_bytes.load(Relaxed),
        );
        one(
            "edgeplane_pull_stored_objects_total",
            "counter",
            "Objects pull-through installed in its tier.",
            self.stored_objects.load(Relaxed),
        );
        one(
            "edgeplane_pull_stored_bytes_total",
            "counter",
            "Bytes pull-through installed in its tier.",
            self.stored_bytes.load(Relaxed),
        );
        one(
            "edgeplane_pull_used_bytes",
            "gauge",
            "Bytes of pull-through's objects in its tier now.",
            self.used_bytes.load(Relaxed),
        );
        one(
            "edgeplane_pull_capacity_bytes",
            "gauge",
            "Bytes pull-through may keep in its tier.",
            self.capacity.load(Relaxed),
        );
        one(
            "edgeplane_pull_breaker_opened_total",
            "counter",
            "Times the upstream circuit breaker opened.",
            self.breaker_opened.load(Relaxed),
        );
        one(
            "edgeplane_pull_upstream_in_flight",
            "gauge",
            "Upstream requests in flight.",
            in_flight,
        );
        one(
            "edgeplane_pull_queued_fetches",
            "gauge",
            "Slice fetches waiting for a free upstream slot.",
            queued,
        );
        one(
            "edgeplane_pull_objects_pulling",
            "gauge",
            "Objects being pulled (or partly present, not yet complete).",
            pulling,
        );
        let name = "edgeplane_pull_upstream_latency_seconds";
        let _ = writeln!(out, "# HELP {name} Time from sending an upstream request to its response head.\n# TYPE {name} histogram");
        let mut acc = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            acc += self.latency[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {acc}");
        }
        acc += self.latency[BUCKETS.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {acc}");
        let _ = writeln!(
            out,
            "{name}_sum {}\n{name}_count {acc}",
            self.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
    }
}
