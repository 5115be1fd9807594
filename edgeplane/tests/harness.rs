//! Checks of the test harness itself (ready-line and metrics parsing).

mod support;

use support::{parse_ready, strip_ansi, Metrics};

#[test]
fn ready_line_variants() {
    let (h, a, c) =
        parse_ready("ready http=127.0.0.1:41234 admin=127.0.0.1:41235 cores=2").unwrap();
    assert_eq!(h.port(), 41234);
    assert_eq!(a.port(), 41235);
    assert_eq!(c, Some(2));
    let line = strip_ansi(
        "2026 \x1b[32mINFO\x1b[0m edgeplane: ready http=\"127.0.0.1:1\" admin=127.0.0.1:2",
    );
    assert_eq!(parse_ready(&line).unwrap().1.port(), 2);
    assert!(parse_ready("listening http=127.0.0.1:1 admin=127.0.0.1:2").is_none());
    assert!(parse_ready("ready http=127.0.0.1:1").is_none());
}

#[test]
fn metrics_parser() {
    let m = Metrics::parse(
        "# TYPE edgeplane_requests_total counter\n\
         edgeplane_requests_total{status=\"200\"} 3\n\
         edgeplane_requests_total{status=\"206\",tier=\"flash\"} 5\n\
         edgeplane_requests_total{status=\"206\",tier=\"storage\"} 2 1700000000\n\
         edgeplane_open_connections 1\n\
         edgeplane_ttfb_seconds{quantile=\"0.99\"} 1.5e-3\n",
    );
    assert_eq!(m.sum("edgeplane_requests_total", &[("status", "206")]), 7.0);
    assert_eq!(m.sum("edgeplane_requests_total", &[]), 10.0);
    assert_eq!(m.sum("edgeplane_open_connections", &[]), 1.0);
    assert!(m.has("edgeplane_ttfb_seconds"));
    assert_eq!(
        m.sum("edgeplane_ttfb_seconds", &[("quantile", "0.99")]),
        1.5e-3
    );
}
