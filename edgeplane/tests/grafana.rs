//! docs/grafana/edgeplane.json may use only metric names that exist: every `edgeplane_*` name
//! in a PromQL `expr` (and in the template queries) must appear in a live `/metrics` scrape of
//! a data plane with HTTPS and XDP (prefixes loaded), or be one the agent renders.

use std::collections::BTreeSet;

use edgeplane_test_support::prelude::*;
use edgeplane_test_support::xdp::{is_root, PinDir};

/// The binary under test (Cargo builds it for these tests).
const BIN: &str = env!("CARGO_BIN_EXE_edgeplane");

const DASHBOARD: &str = include_str!("../../docs/grafana/edgeplane.json");
/// The agent's `/metrics` is rendered here; its names are string literals.
const AGENT_METRICS: &str = include_str!("../../control/src/agent/status.rs");

/// Every `edgeplane_*` identifier in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("edgeplane_") {
        let start = i + at;
        let before_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if before_ok {
            names.insert(text[start..end].to_string());
        }
        i = end;
    }
    names
}

/// The PromQL of every panel target and template variable.
fn queries(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    if k == "expr" || (k == "query" && v.is_string()) {
                        out.push(v.as_str().unwrap_or_default().to_string());
                    }
                    walk(v, out);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    out
}

#[test]
fn dashboard_uses_only_real_metric_names() {
    let dashboard: serde_json::Value =
        serde_json::from_str(DASHBOARD).expect("docs/grafana/edgeplane.json is JSON");
    assert_eq!(dashboard["uid"], "edgeplane");
    let exprs = queries(&dashboard);
    assert!(exprs.len() > 20, "only {} queries found", exprs.len());
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();

    let pins = PinDir::new("grafana");
    let mut builder = ServerBuilder::new(BIN).https();
    let with_xdp = is_root();
    if with_xdp {
        builder = builder.section(&format!(
            "[xdp]\npin_dir = \"{}\"\nprefixes = [\"203.0.113.0/24\"]\nrequired = true\n",
            pins.path().display()
        ));
    } else {
        eprintln!(
            "grafana: not root, so no XDP: edgeplane_xdp_* names are checked against the source"
        );
    }
    let server = builder.start();
    let _ = server.get(&format!("/{CANARY}"), &[]);
    let scrape = server.metrics();
    let live: BTreeSet<String> = scrape
        .samples
        .iter()
        .map(|s| {
            // Summaries: `x_sum`/`x_count` besides the quantiles of `x`.
            s.name.clone()
        })
        .collect();
    let agent = metric_names(AGENT_METRICS);
    let source = metric_names(include_str!("../../dataplane/src/metrics.rs"));

    let mut missing = Vec::new();
    for name in &used {
        let found = live.contains(name)
            || (name.starts_with("edgeplane_agent_") && agent.contains(name))
            || (!with_xdp && name.starts_with("edgeplane_xdp_") && source.contains(name));
        if !found {
            missing.push(name.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard uses metrics no edgeplane process exports: {missing:?}\nlive scrape:\n{}",
        scrape.text
    );
    // And it covers the essentials an operator looks at first.
    for essential in [
        "edgeplane_response_bytes_total",
        "edgeplane_requests_total",
        "edgeplane_open_connections",
        "edgeplane_tier_up",
        "edgeplane_signed_url_rejects_total",
        "edgeplane_draining",
        "edgeplane_xdp_prefix_bytes_total",
        "edgeplane_agent_fill_objects_present",
    ] {
        assert!(used.contains(essential), "dashboard lacks {essential}");
    }
}
