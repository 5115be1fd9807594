//! What the agent shows: its listener (`/metrics`, `/status`, `/healthz` on `agent.listen`)
//! and the fill progress line.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::state::{Agent, Shared};

/// Serves `/metrics`, `/status` and `/healthz` on `listener` until the task is stopped.
pub(crate) async fn serve_status(agent: Arc<Agent>, listener: tokio::net::TcpListener) {
    use axum::routing::get;
    let a1 = agent.clone();
    let a2 = agent.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || async move { render_metrics(&a1.lock()) }),
        )
        .route(
            "/status",
            get(move || async move { axum::Json(status_json(&a2.cfg.id, &a2.lock())) }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("agent: status listener: {e}");
    }
}

/// The agent's `/status`: fill, window, breaker, key ids, prefixes, BGP sessions, last error.
pub(crate) fn status_json(id: &str, s: &Shared) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "fill": s.fill,
        "window_open": s.window_open,
        "breaker": s.breaker,
        "signing_keys": s.keys.keys.iter().map(|k| &k.id).collect::<Vec<_>>(),
        "served_prefixes": s.served,
        "bgp_prefixes": s.bgp,
        "assigned_prefixes": s.assigned,
        "bgp": s.bgp_status,
        "last_error": s.last_error,
    })
}

/// A progress line on a terminal (`\r`-updated), a log line every 10 s otherwise; also the
/// fill rate for metrics.
pub(crate) async fn progress_loop(agent: Arc<Agent>) {
    let tty = std::io::stderr().is_terminal();
    let mut last_bytes = 0u64;
    let mut last_log = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let (line, filling) = {
            let mut s = agent.lock();
            let total: u64 = s.downloaded_bytes.values().sum();
            let rate = (total - last_bytes.min(total)) as f64;
            last_bytes = total;
            s.rate_bps = rate * 8.0;
            (progress_line(&s, rate), s.fill.state == "filling")
        };
        if tty && filling {
            eprint!("\r{line}   ");
        } else if filling && last_log.elapsed() >= Duration::from_secs(10) {
            tracing::info!("agent: {line}");
            last_log = Instant::now();
        }
    }
}

/// `fill:  42.0% 10/24 objects, 0.1 MB/s, 0.5 MB left, breaker closed` at `bytes_per_sec`.
fn progress_line(s: &Shared, bytes_per_sec: f64) -> String {
    let f = &s.fill;
    let pct = if f.objects_wanted == 0 {
        100.0
    } else {
        f.objects_present as f64 * 100.0 / f.objects_wanted as f64
    };
    format!(
        "fill: {pct:5.1}% {}/{} objects, {:.1} MB/s, {:.1} MB left, breaker {}",
        f.objects_present,
        f.objects_wanted,
        bytes_per_sec / 1e6,
        f.bytes_missing as f64 / 1e6,
        s.breaker
    )
}

/// The agent's `/metrics` (Prometheus text). Every agent metric name is a literal here
/// (edgeplane/tests/grafana.rs reads this file for them).
pub(crate) fn render_metrics(s: &Shared) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let mut gauge = |name: &str, help: &str, v: f64| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    gauge(
        "edgeplane_agent_fill_objects_wanted",
        "Objects in the fill manifest.",
        s.fill.objects_wanted as f64,
    );
    gauge(
        "edgeplane_agent_fill_objects_present",
        "Manifest objects held and verified.",
        s.fill.objects_present as f64,
    );
    gauge(
        "edgeplane_agent_fill_bytes_missing",
        "Bytes still to download.",
        s.fill.bytes_missing as f64,
    );
    gauge(
        "edgeplane_agent_fill_manifest_generation",
        "Generation of the manifest being filled.",
        s.fill.generation as f64,
    );
    gauge(
        "edgeplane_agent_fill_window_open",
        "1 inside the fill window.",
        u8::from(s.window_open) as f64,
    );
    gauge(
        "edgeplane_agent_fill_rate_bits_per_second",
        "Download rate over the last second.",
        s.rate_bps,
    );
    gauge(
        "edgeplane_agent_served_prefixes",
        "Client prefixes served (configured and BGP).",
        s.served.len() as f64,
    );
    gauge(
        "edgeplane_agent_signing_keys",
        "Signing keys handed to the data plane.",
        s.keys.keys.len() as f64,
    );
    let _ = writeln!(o, "# HELP edgeplane_agent_origin_breaker 1 for the origin circuit breaker's current state.\n# TYPE edgeplane_agent_origin_breaker gauge");
    for st in ["closed", "open", "half_open"] {
        let _ = writeln!(
            o,
            "edgeplane_agent_origin_breaker{{state=\"{st}\"}} {}",
            u8::from(s.breaker == st)
        );
    }
    for (name, help, by_source) in [
        (
            "edgeplane_agent_fill_bytes_total",
            "Bytes downloaded by source.",
            &s.downloaded_bytes,
        ),
        (
            "edgeplane_agent_fill_objects_total",
            "Objects installed by source.",
            &s.downloaded_objects,
        ),
        (
            "edgeplane_agent_fill_failures_total",
            "Failed downloads by source.",
            &s.failures,
        ),
    ] {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
        for src in ["origin", "peer"] {
            let v = by_source.get(src).unwrap_or(&0);
            let _ = writeln!(o, "{name}{{source=\"{src}\"}} {v}");
        }
    }
    let _ = writeln!(o, "# HELP edgeplane_agent_fill_checksum_failures_total Downloads rejected on size or sha256.\n# TYPE edgeplane_agent_fill_checksum_failures_total counter\nedgeplane_agent_fill_checksum_failures_total {}", s.fill.checksum_failures);
    let _ = writeln!(o, "# HELP edgeplane_agent_fill_evicted_total Objects removed because they left the manifest.\n# TYPE edgeplane_agent_fill_evicted_total counter\nedgeplane_agent_fill_evicted_total {}", s.evicted);
    let _ = writeln!(o, "# HELP edgeplane_agent_fill_relocated_total Objects moved to the tier their manifest entry names (popularity moved them between flash and storage): copied, verified, then removed from the old tier.\n# TYPE edgeplane_agent_fill_relocated_total counter\nedgeplane_agent_fill_relocated_total {}", s.relocated);
    let _ = writeln!(o, "# HELP edgeplane_agent_fill_verified_total Stored objects re-read in idle time and checked against their SHA-256.\n# TYPE edgeplane_agent_fill_verified_total counter\nedgeplane_agent_fill_verified_total {}", s.verified);
    let _ = writeln!(o, "# HELP edgeplane_agent_fill_bit_rot_total Stored objects whose bytes no longer matched their SHA-256 (removed and filled again).\n# TYPE edgeplane_agent_fill_bit_rot_total counter\nedgeplane_agent_fill_bit_rot_total {}", s.bit_rot);
    let _ = writeln!(o, "# HELP edgeplane_agent_fill_content_replaced_total Objects replaced (verified, swapped atomically) because the manifest named new content under their id.\n# TYPE edgeplane_agent_fill_content_replaced_total counter\nedgeplane_agent_fill_content_replaced_total {}", s.content_replaced);
    let _ = writeln!(o, "# HELP edgeplane_agent_manifest_refused_total Manifests refused by reason: empty (while objects are held) or evict_fraction (would evict more than fill.max_evict_fraction of the held objects).\n# TYPE edgeplane_agent_manifest_refused_total counter");
    for reason in ["empty", "evict_fraction"] {
        let n = s.manifests_refused.get(reason).copied().unwrap_or(0);
        let _ = writeln!(
            o,
            "edgeplane_agent_manifest_refused_total{{reason=\"{reason}\"}} {n}"
        );
    }
    let _ = writeln!(o, "# HELP edgeplane_agent_health_reports_total Health reports by result.\n# TYPE edgeplane_agent_health_reports_total counter");
    let _ = writeln!(
        o,
        "edgeplane_agent_health_reports_total{{result=\"ok\"}} {}",
        s.health_ok
    );
    let _ = writeln!(
        o,
        "edgeplane_agent_health_reports_total{{result=\"error\"}} {}",
        s.health_err
    );
    let _ = writeln!(o, "# HELP edgeplane_agent_held_full_reports_total Health reports that carried the full list of held objects (the control service asked for it).\n# TYPE edgeplane_agent_held_full_reports_total counter\nedgeplane_agent_held_full_reports_total {}", s.held_full_sent);
    let _ = writeln!(o, "# HELP edgeplane_agent_catalog_listings_total Full listings of the data plane's catalog (at start, and when its change feed reset: a rescan or a restart).\n# TYPE edgeplane_agent_catalog_listings_total counter\nedgeplane_agent_catalog_listings_total {}", s.catalog_listings);
    let _ = writeln!(o, "# HELP edgeplane_agent_catalog_changes_total Catalog changes read from the data plane's change feed.\n# TYPE edgeplane_agent_catalog_changes_total counter\nedgeplane_agent_catalog_changes_total {}", s.catalog_changes);
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeplane_signing::{KeySet, SigningKey};

    fn shared() -> Shared {
        let mut s = Shared {
            breaker: "half_open",
            window_open: true,
            evicted: 4,
            relocated: 3,
            manifests_refused: [("evict_fraction", 2)].into_iter().collect(),
            verified: 30,
            bit_rot: 1,
            content_replaced: 2,
            rate_bps: 8e6,
            health_ok: 10,
            health_err: 2,
            held_full_sent: 1,
            catalog_listings: 2,
            catalog_changes: 7,
            last_error: Some("health: HTTP 503 Service Unavailable: down".into()),
            served: ["198.51.100.0/24", "2001:db8::/32"]
                .iter()
                .map(|p| p.parse().unwrap())
                .collect(),
            keys: KeySet {
                keys: vec![SigningKey {
                    id: "k1".into(),
                    secret: [7; 32],
                    not_after: u64::MAX,
                }],
            },
            ..Shared::default()
        };
        s.fill.objects_wanted = 24;
        s.fill.objects_present = 10;
        s.fill.bytes_missing = 500_000;
        s.fill.generation = 3;
        s.fill.checksum_failures = 1;
        s.fill.state = "filling".into();
        s.downloaded_bytes.insert("origin", 1234);
        s.downloaded_objects.insert("peer", 5);
        s.failures.insert("origin", 6);
        s
    }

    /// The value of the sample `series` (name and labels exactly as written).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn metrics_render_every_series_with_help_and_type() {
        let text = render_metrics(&shared());
        for (series, want) in [
            ("edgeplane_agent_fill_objects_wanted", 24.0),
            ("edgeplane_agent_held_full_reports_total", 1.0),
            ("edgeplane_agent_catalog_listings_total", 2.0),
            ("edgeplane_agent_catalog_changes_total", 7.0),
            ("edgeplane_agent_fill_objects_present", 10.0),
            ("edgeplane_agent_fill_bytes_missing", 500_000.0),
            ("edgeplane_agent_fill_manifest_generation", 3.0),
            ("edgeplane_agent_fill_window_open", 1.0),
            ("edgeplane_agent_fill_rate_bits_per_second", 8e6),
            ("edgeplane_agent_served_prefixes", 2.0),
            ("edgeplane_agent_signing_keys", 1.0),
            ("edgeplane_agent_origin_breaker{state=\"closed\"}", 0.0),
            ("edgeplane_agent_origin_breaker{state=\"open\"}", 0.0),
            ("edgeplane_agent_origin_breaker{state=\"half_open\"}", 1.0),
            (
                "edgeplane_agent_fill_bytes_total{source=\"origin\"}",
                1234.0,
            ),
            ("edgeplane_agent_fill_bytes_total{source=\"peer\"}", 0.0),
            ("edgeplane_agent_fill_objects_total{source=\"peer\"}", 5.0),
            ("edgeplane_agent_fill_objects_total{source=\"origin\"}", 0.0),
            (
                "edgeplane_agent_fill_failures_total{source=\"origin\"}",
                6.0,
            ),
            ("edgeplane_agent_fill_checksum_failures_total", 1.0),
            ("edgeplane_agent_fill_evicted_total", 4.0),
            ("edgeplane_agent_fill_relocated_total", 3.0),
            (
                "edgeplane_agent_manifest_refused_total{reason=\"evict_fraction\"}",
                2.0,
            ),
            (
                "edgeplane_agent_manifest_refused_total{reason=\"empty\"}",
                0.0,
            ),
            ("edgeplane_agent_fill_verified_total", 30.0),
            ("edgeplane_agent_fill_bit_rot_total", 1.0),
            ("edgeplane_agent_fill_content_replaced_total", 2.0),
            ("edgeplane_agent_health_reports_total{result=\"ok\"}", 10.0),
            (
                "edgeplane_agent_health_reports_total{result=\"error\"}",
                2.0,
            ),
        ] {
            assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
        }
        // Every sample's family has one HELP and one TYPE line.
        let families: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(['{', ' ']).next().unwrap())
            .collect();
        assert_eq!(families.len(), 23, "{families:?}");
        for f in families {
            for kind in ["HELP", "TYPE"] {
                let n = text
                    .lines()
                    .filter(|l| l.starts_with(&format!("# {kind} {f} ")))
                    .count();
                assert_eq!(n, 1, "# {kind} {f}");
            }
        }
    }

    #[test]
    fn status_has_what_bgp_status_and_operators_read() {
        let v = status_json("emb-1", &shared());
        assert_eq!(v["id"], "emb-1");
        assert_eq!(v["breaker"], "half_open");
        assert_eq!(v["window_open"], true);
        assert_eq!(v["fill"]["objects_present"], 10);
        assert_eq!(v["fill"]["state"], "filling");
        assert_eq!(v["signing_keys"], serde_json::json!(["k1"]));
        assert_eq!(
            v["served_prefixes"],
            serde_json::json!(["198.51.100.0/24", "2001:db8::/32"])
        );
        assert_eq!(v["bgp_prefixes"], serde_json::json!([]));
        assert_eq!(v["bgp"], serde_json::Value::Null);
        assert_eq!(
            v["last_error"],
            "health: HTTP 503 Service Unavailable: down"
        );
    }

    #[test]
    fn progress_line_reads_as_documented() {
        assert_eq!(
            progress_line(&shared(), 100_000.0),
            "fill:  41.7% 10/24 objects, 0.1 MB/s, 0.5 MB left, breaker half_open"
        );
        // An empty manifest is complete.
        assert!(progress_line(&Shared::default(), 0.0).starts_with("fill: 100.0% 0/0 objects"));
    }
}
