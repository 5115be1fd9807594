//! `edgeplane top`: a live terminal view of this appliance for an operator on the box.
//!
//! Once a second it scrapes the data plane's admin `/metrics` (and the agent's, when the config
//! has an `[agent]` section) and shows rates derived from counter deltas: Gbps, requests/s,
//! connections, per tier, per served prefix (XDP), errors, and fill progress. `q` quits.
//!
//! The model ([`Scrape`], [`Snapshot`], [`View`]) is pure and unit-tested; only [`run`] touches
//! the terminal and the network.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `edgeplane top` options.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct TopArgs {
    /// The config file (for `admin.listen` and `agent.listen`).
    #[arg(long, short, default_value = "/etc/edgeplane/edgeplane.toml")]
    pub(crate) config: PathBuf,
    /// The data plane's admin address (HOST:PORT), instead of `admin.listen` from the config.
    #[arg(long)]
    pub(crate) admin: Option<String>,
    /// The agent's address (HOST:PORT), instead of `agent.listen` from the config.
    #[arg(long)]
    pub(crate) agent: Option<String>,
    /// Milliseconds between scrapes.
    #[arg(long, default_value_t = 1000)]
    pub(crate) interval_ms: u64,
}

/// One sample of a Prometheus text scrape.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    /// Metric name.
    pub(crate) name: String,
    /// Labels, sorted.
    pub(crate) labels: BTreeMap<String, String>,
    /// Value.
    pub(crate) value: f64,
}

/// A parsed `/metrics` body.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scrape {
    /// Every sample, in order.
    pub(crate) samples: Vec<Sample>,
}

impl Scrape {
    /// Parses Prometheus text format (comments skipped; malformed lines ignored).
    pub(crate) fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(parse_line)
            .collect();
        Scrape { samples }
    }

    /// Sum of the samples named `name` whose labels include `labels`.
    pub(crate) fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// The samples named `name` whose labels include `labels`.
    pub(crate) fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        })
    }

    /// Whether any sample is named `name`.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match head.split_once('{') {
        None => (head.to_string(), BTreeMap::new()),
        Some((name, rest)) => {
            let body = rest.strip_suffix('}')?;
            let mut labels = BTreeMap::new();
            let mut rest = body;
            while !rest.is_empty() {
                let (k, after) = rest.split_once("=\"")?;
                let end = after.find('"')?;
                labels.insert(
                    k.trim_start_matches(',').to_string(),
                    after[..end].to_string(),
                );
                rest = after[end + 1..].trim_start_matches(',');
            }
            (name.to_string(), labels)
        }
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// A tier's line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TierRow {
    /// `tier` label.
    pub(crate) name: String,
    /// `kind` label.
    pub(crate) kind: String,
    /// `edgeplane_tier_up`.
    pub(crate) up: bool,
    /// Gbps sent from it.
    pub(crate) gbps: f64,
    /// Objects in the catalog.
    pub(crate) objects: f64,
    /// Bytes in the catalog.
    pub(crate) bytes: f64,
    /// Cold reads per second.
    pub(crate) cold_reads: f64,
    /// I/O errors per second.
    pub(crate) io_errors: f64,
}

/// A served prefix's line (XDP).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PrefixRow {
    /// The prefix.
    pub(crate) prefix: String,
    /// Gbps of whole frames from it.
    pub(crate) gbps: f64,
    /// Packets per second.
    pub(crate) pps: f64,
    /// Drops per second.
    pub(crate) drops: f64,
    /// New connections from it dropped.
    pub(crate) draining: bool,
}

/// Fill progress, from the agent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Fill {
    /// Manifest objects present.
    pub(crate) present: f64,
    /// Manifest objects wanted.
    pub(crate) wanted: f64,
    /// Bytes still to download.
    pub(crate) bytes_missing: f64,
    /// Download rate, bits per second.
    pub(crate) rate_bps: f64,
    /// Inside the fill window.
    pub(crate) window_open: bool,
    /// Failed downloads per second.
    pub(crate) failures: f64,
}

/// What the screen shows: rates over the last interval and current gauges.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct View {
    /// Gbps of response bodies.
    pub(crate) gbps: f64,
    /// Responses per second.
    pub(crate) req_s: f64,
    /// Connections open now.
    pub(crate) connections: f64,
    /// New connections per second.
    pub(crate) conn_s: f64,
    /// 2xx/3xx, 4xx, 5xx responses per second.
    pub(crate) status_s: [f64; 3],
    /// Timeouts per second (header, idle, send).
    pub(crate) timeouts_s: f64,
    /// I/O errors per second.
    pub(crate) io_errors_s: f64,
    /// Signed-URL refusals per second.
    pub(crate) signed_rejects_s: f64,
    /// Refused connections per second (caps, prefixes).
    pub(crate) conn_rejects_s: f64,
    /// Client aborts per second.
    pub(crate) aborts_s: f64,
    /// Totals since start: 4xx, 5xx, timeouts, I/O errors, signed-URL refusals.
    pub(crate) totals: [f64; 5],
    /// Per tier.
    pub(crate) tiers: Vec<TierRow>,
    /// Per served prefix, busiest first (empty without XDP).
    pub(crate) prefixes: Vec<PrefixRow>,
    /// XDP: up, enforce, drain.
    pub(crate) xdp: Option<(bool, bool, bool)>,
    /// The process is draining.
    pub(crate) draining: bool,
    /// Signing on, keys loaded.
    pub(crate) signing: (bool, f64),
    /// Seconds since the data plane started.
    pub(crate) uptime_s: f64,
    /// Fill progress, when an agent answered.
    pub(crate) fill: Option<Fill>,
}

/// Per-second rate of a counter between two scrapes `dt` seconds apart; a counter that went
/// down (a restart) counts from zero.
pub(crate) fn rate(prev: f64, cur: f64, dt: f64) -> f64 {
    if dt <= 0.0 {
        return 0.0;
    }
    let delta = if cur >= prev { cur - prev } else { cur };
    delta / dt
}

/// Builds the view from the current scrape, the previous one (`None`: rates are 0) and the
/// seconds between them. `now_unix` is for the uptime.
pub(crate) fn view(
    cur: &Scrape,
    prev: Option<&Scrape>,
    dt: f64,
    agent: Option<(&Scrape, Option<&Scrape>)>,
    now_unix: f64,
) -> View {
    let r = |name: &str, labels: &[(&str, &str)]| match prev {
        Some(p) => rate(p.sum(name, labels), cur.sum(name, labels), dt),
        None => 0.0,
    };
    let mut status_s = [0.0; 3];
    let mut totals = [0.0; 5];
    for s in cur.matching("edgeplane_requests_total", &[]) {
        let Some(code) = s.labels.get("status") else {
            continue;
        };
        let per_s = r("edgeplane_requests_total", &[("status", code)]);
        match code.as_bytes().first() {
            Some(b'4') => {
                status_s[1] += per_s;
                totals[0] += s.value;
            }
            Some(b'5') => {
                status_s[2] += per_s;
                totals[1] += s.value;
            }
            _ => status_s[0] += per_s,
        }
    }
    totals[2] = cur.sum("edgeplane_timeouts_total", &[]);
    totals[3] = cur.sum("edgeplane_io_errors_total", &[]);
    totals[4] = cur.sum("edgeplane_signed_url_rejects_total", &[]);
    let tiers = cur
        .matching("edgeplane_tier_up", &[])
        .map(|s| {
            let name = s.labels.get("tier").cloned().unwrap_or_default();
            let t = [("tier", name.as_str())];
            TierRow {
                kind: s.labels.get("kind").cloned().unwrap_or_default(),
                up: s.value == 1.0,
                gbps: r("edgeplane_response_bytes_total", &t) * 8.0 / 1e9,
                objects: cur.sum("edgeplane_catalog_objects", &t),
                bytes: cur.sum("edgeplane_catalog_bytes", &t),
                cold_reads: r("edgeplane_cold_reads_total", &t),
                io_errors: r("edgeplane_tier_io_errors_total", &t),
                name,
            }
        })
        .collect();
    let mut prefixes: Vec<PrefixRow> = cur
        .matching("edgeplane_xdp_prefix_bytes_total", &[])
        .filter_map(|s| s.labels.get("prefix"))
        .map(|p| {
            let l = [("prefix", p.as_str())];
            PrefixRow {
                prefix: p.clone(),
                gbps: r("edgeplane_xdp_prefix_bytes_total", &l) * 8.0 / 1e9,
                pps: r("edgeplane_xdp_prefix_packets_total", &l),
                drops: r("edgeplane_xdp_prefix_drops_total", &l),
                draining: cur.sum("edgeplane_xdp_prefix_draining", &l) == 1.0,
            }
        })
        .collect();
    prefixes.sort_by(|a, b| b.gbps.total_cmp(&a.gbps).then(a.prefix.cmp(&b.prefix)));
    let xdp = cur.has("edgeplane_xdp_up").then(|| {
        (
            cur.sum("edgeplane_xdp_up", &[]) == 1.0,
            cur.sum("edgeplane_xdp_enforce", &[]) == 1.0,
            cur.sum("edgeplane_xdp_drain", &[]) == 1.0,
        )
    });
    let fill = agent.map(|(a, ap)| Fill {
        present: a.sum("edgeplane_agent_fill_objects_present", &[]),
        wanted: a.sum("edgeplane_agent_fill_objects_wanted", &[]),
        bytes_missing: a.sum("edgeplane_agent_fill_bytes_missing", &[]),
        rate_bps: a.sum("edgeplane_agent_fill_rate_bits_per_second", &[]),
        window_open: a.sum("edgeplane_agent_fill_window_open", &[]) == 1.0,
        failures: match ap {
            Some(p) => rate(
                p.sum("edgeplane_agent_fill_failures_total", &[]),
                a.sum("edgeplane_agent_fill_failures_total", &[]),
                dt,
            ),
            None => 0.0,
        },
    });
    let started = cur.sum("edgeplane_start_time_seconds", &[]);
    View {
        gbps: r("edgeplane_response_bytes_total", &[]) * 8.0 / 1e9,
        req_s: r("edgeplane_requests_total", &[]),
        connections: cur.sum("edgeplane_open_connections", &[]),
        conn_s: r("edgeplane_connections_total", &[]),
        status_s,
        timeouts_s: r("edgeplane_timeouts_total", &[]),
        io_errors_s: r("edgeplane_io_errors_total", &[]),
        signed_rejects_s: r("edgeplane_signed_url_rejects_total", &[]),
        conn_rejects_s: r("edgeplane_connections_rejected_total", &[]),
        aborts_s: r("edgeplane_client_aborts_total", &[]),
        totals,
        tiers,
        prefixes,
        xdp,
        draining: cur.sum("edgeplane_draining", &[]) == 1.0,
        signing: (
            cur.sum("edgeplane_signing_enabled", &[]) == 1.0,
            cur.sum("edgeplane_signing_keys", &[]),
        ),
        uptime_s: if started > 0.0 {
            (now_unix - started).max(0.0)
        } else {
            0.0
        },
        fill,
    }
}

/// `1.5 GB`-style byte counts.
pub(crate) fn human_bytes(n: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KB", "MB", "GB", "TB", "PB"];
    let mut v = n;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {}", UNITS[i])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

fn uptime(s: f64) -> String {
    let s = s as u64;
    format!(
        "{}d {:02}:{:02}:{:02}",
        s / 86400,
        s / 3600 % 24,
        s / 60 % 60,
        s % 60
    )
}

/// The screen as lines of text (what [`run`] draws; also what the tests read).
pub(crate) fn render_lines(v: &View, admin: &str, error: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    let state = match (error, v.draining) {
        (Some(_), _) => "UNREACHABLE",
        (None, true) => "DRAINING",
        (None, false) => "serving",
    };
    out.push(format!(
        "edgeplane top  admin {admin}  {state}  up {}  (q quits)",
        uptime(v.uptime_s)
    ));
    if let Some(e) = error {
        out.push(format!("error: {e}"));
    }
    out.push(String::new());
    out.push(format!(
        "Traffic   {:8.3} Gbps  {:9.1} req/s  {:7.0} connections  {:7.1} conn/s",
        v.gbps, v.req_s, v.connections, v.conn_s
    ));
    out.push(format!(
        "Status    2xx/3xx {:8.1}/s  4xx {:8.1}/s  5xx {:8.1}/s",
        v.status_s[0], v.status_s[1], v.status_s[2]
    ));
    out.push(format!(
        "Errors    timeouts {:6.1}/s  io {:6.1}/s  signed-url rejects {:6.1}/s  conn rejects {:6.1}/s  aborts {:6.1}/s",
        v.timeouts_s, v.io_errors_s, v.signed_rejects_s, v.conn_rejects_s, v.aborts_s
    ));
    out.push(format!(
        "Totals    4xx {:.0}  5xx {:.0}  timeouts {:.0}  io errors {:.0}  signed-url rejects {:.0}",
        v.totals[0], v.totals[1], v.totals[2], v.totals[3], v.totals[4]
    ));
    out.push(format!(
        "Signing   {}  keys {:.0}",
        if v.signing.0 { "on" } else { "OFF" },
        v.signing.1
    ));
    out.push(String::new());
    out.push(format!(
        "{:<16} {:<8} {:<5} {:>10} {:>10} {:>12} {:>10} {:>9}",
        "TIER", "KIND", "UP", "Gbps", "objects", "bytes", "cold rd/s", "io err/s"
    ));
    for t in &v.tiers {
        out.push(format!(
            "{:<16} {:<8} {:<5} {:>10.3} {:>10.0} {:>12} {:>10.1} {:>9.1}",
            t.name,
            t.kind,
            if t.up { "up" } else { "DOWN" },
            t.gbps,
            t.objects,
            human_bytes(t.bytes),
            t.cold_reads,
            t.io_errors
        ));
    }
    out.push(String::new());
    match v.xdp {
        None => out.push("XDP       not configured".to_string()),
        Some((up, enforce, drain)) => {
            out.push(format!(
                "XDP       {}  {}{}  {} prefixes",
                if up { "up" } else { "DOWN" },
                if enforce { "enforce" } else { "monitor" },
                if drain { "  DRAIN" } else { "" },
                v.prefixes.len()
            ));
            out.push(format!(
                "{:<20} {:>10} {:>12} {:>10}",
                "PREFIX", "Gbps", "pkt/s", "drops/s"
            ));
            for p in v.prefixes.iter().take(10) {
                out.push(format!(
                    "{:<20} {:>10.3} {:>12.0} {:>10.0}{}",
                    p.prefix,
                    p.gbps,
                    p.pps,
                    p.drops,
                    if p.draining { "  draining" } else { "" }
                ));
            }
        }
    }
    out.push(String::new());
    match &v.fill {
        None => out.push("Fill      no agent".to_string()),
        Some(f) => {
            let pct = if f.wanted > 0.0 {
                100.0 * f.present / f.wanted
            } else {
                100.0
            };
            out.push(format!(
                "Fill      {:.0}/{:.0} objects ({pct:.1}%)  {} missing  {:.3} Gbps  window {}  failures {:.1}/s",
                f.present,
                f.wanted,
                human_bytes(f.bytes_missing),
                f.rate_bps / 1e9,
                if f.window_open { "open" } else { "closed" },
                f.failures
            ));
        }
    }
    out
}

fn fetch(addr: &str) -> Result<Scrape, String> {
    let url = format!("http://{addr}/metrics");
    let text = ureq::get(&url)
        .timeout(Duration::from_secs(2))
        .call()
        .map_err(|e| format!("{url}: {e}"))?
        .into_string()
        .map_err(|e| format!("{url}: {e}"))?;
    Ok(Scrape::parse(&text))
}

/// Runs the live view until `q` (or Esc, or Ctrl-C).
pub(crate) fn run(args: &TopArgs) -> Result<(), String> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyModifiers};
    let (admin, agent) = match &args.admin {
        Some(a) => (a.clone(), args.agent.clone()),
        None => {
            let c =
                crate::appliance::ApplianceConfig::load(&args.config).map_err(|e| e.to_string())?;
            (
                c.dataplane.admin.listen.to_string(),
                args.agent
                    .clone()
                    .or_else(|| c.agent.map(|a| a.listen.to_string())),
            )
        }
    };
    let interval = Duration::from_millis(args.interval_ms.max(100));
    let mut terminal = ratatui::try_init().map_err(|e| format!("terminal: {e}"))?;
    let result = (|| -> Result<(), String> {
        let mut prev: Option<(Scrape, Instant)> = None;
        let mut prev_agent: Option<Scrape> = None;
        loop {
            let now = Instant::now();
            let (scrape, error) = match fetch(&admin) {
                Ok(s) => (s, None),
                Err(e) => (Scrape::default(), Some(e)),
            };
            let agent_scrape = agent.as_deref().and_then(|a| fetch(a).ok());
            let dt = prev
                .as_ref()
                .map_or(0.0, |(_, at)| now.duration_since(*at).as_secs_f64());
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            let v = view(
                &scrape,
                prev.as_ref().map(|(s, _)| s).filter(|_| error.is_none()),
                dt,
                agent_scrape.as_ref().map(|a| (a, prev_agent.as_ref())),
                unix,
            );
            let lines = render_lines(&v, &admin, error.as_deref());
            terminal
                .draw(|f| {
                    let text: Vec<ratatui::text::Line> = lines
                        .iter()
                        .map(|l| ratatui::text::Line::raw(l.as_str()))
                        .collect();
                    f.render_widget(ratatui::widgets::Paragraph::new(text), f.area());
                })
                .map_err(|e| format!("terminal: {e}"))?;
            if error.is_none() {
                prev = Some((scrape, now));
            }
            prev_agent = agent_scrape;
            let deadline = now + interval;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                if event::poll(left).map_err(|e| format!("terminal: {e}"))? {
                    if let Event::Key(k) = event::read().map_err(|e| format!("terminal: {e}"))? {
                        let ctrl_c = k.code == KeyCode::Char('c')
                            && k.modifiers.contains(KeyModifiers::CONTROL);
                        if matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                            return Ok(());
                        }
                    }
                }
            }
        }
    })();
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = r#"# HELP x
edgeplane_requests_total{status="200"} 100
edgeplane_requests_total{status="206"} 50
edgeplane_requests_total{status="404"} 10
edgeplane_requests_total{status="503"} 1
edgeplane_response_bytes_total{tier="nvme0",kind="flash"} 1000000000
edgeplane_tier_up{tier="nvme0",kind="flash"} 1
edgeplane_catalog_objects{tier="nvme0",kind="flash"} 7
edgeplane_catalog_bytes{tier="nvme0",kind="flash"} 2500000
edgeplane_open_connections 3
edgeplane_connections_total 10
edgeplane_timeouts_total{kind="idle"} 2
edgeplane_start_time_seconds 1000
"#;
    const B: &str = r#"edgeplane_requests_total{status="200"} 300
edgeplane_requests_total{status="206"} 50
edgeplane_requests_total{status="404"} 30
edgeplane_requests_total{status="503"} 1
edgeplane_response_bytes_total{tier="nvme0",kind="flash"} 3500000000
edgeplane_tier_up{tier="nvme0",kind="flash"} 0
edgeplane_catalog_objects{tier="nvme0",kind="flash"} 7
edgeplane_catalog_bytes{tier="nvme0",kind="flash"} 2500000
edgeplane_open_connections 4
edgeplane_connections_total 30
edgeplane_timeouts_total{kind="idle"} 2
edgeplane_start_time_seconds 1000
edgeplane_draining 1
"#;

    #[test]
    fn parses_labels_and_values() {
        let s = Scrape::parse("a{x=\"1\",y=\"b,c\"} 2.5\nb 3\n# c 4\nbad\n");
        assert_eq!(s.samples.len(), 2);
        assert_eq!(s.samples[0].labels["y"], "b,c");
        assert_eq!(s.sum("a", &[("x", "1")]), 2.5);
        assert_eq!(s.sum("b", &[]), 3.0);
    }

    #[test]
    fn rates_come_from_counter_deltas() {
        assert_eq!(rate(10.0, 30.0, 2.0), 10.0);
        assert_eq!(rate(50.0, 5.0, 1.0), 5.0, "a reset counts from zero");
        assert_eq!(rate(1.0, 2.0, 0.0), 0.0);
        let (a, b) = (Scrape::parse(A), Scrape::parse(B));
        let v = view(&b, Some(&a), 2.0, None, 1061.0);
        assert_eq!(v.req_s, 110.0);
        assert_eq!(v.status_s, [100.0, 10.0, 0.0]);
        assert_eq!(v.gbps, 10.0);
        assert_eq!(v.conn_s, 10.0);
        assert_eq!(v.connections, 4.0);
        assert_eq!(v.totals[0], 30.0);
        assert_eq!(v.totals[1], 1.0);
        assert_eq!(v.tiers[0].name, "nvme0");
        assert!(!v.tiers[0].up);
        assert_eq!(v.tiers[0].gbps, 10.0);
        assert!(v.draining);
        assert_eq!(v.uptime_s, 61.0);
        let first = view(&a, None, 0.0, None, 1000.0);
        assert_eq!(first.req_s, 0.0);
    }

    #[test]
    fn screen_names_everything() {
        let (a, b) = (Scrape::parse(A), Scrape::parse(B));
        let agent = Scrape::parse(
            "edgeplane_agent_fill_objects_wanted 10\nedgeplane_agent_fill_objects_present 4\nedgeplane_agent_fill_bytes_missing 6000000\n",
        );
        let v = view(&b, Some(&a), 2.0, Some((&agent, None)), 1061.0);
        let text = render_lines(&v, "127.0.0.1:9090", None).join("\n");
        for want in [
            "DRAINING",
            "10.000 Gbps",
            "110.0 req/s",
            "nvme0",
            "DOWN",
            "2.5 MB",
            "4/10 objects (40.0%)",
            "6.0 MB missing",
            "XDP       not configured",
            "0d 00:01:01",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
    }

    #[test]
    fn human_bytes_scales() {
        assert_eq!(human_bytes(999.0), "999 B");
        assert_eq!(human_bytes(1_500_000_000.0), "1.5 GB");
    }
}
