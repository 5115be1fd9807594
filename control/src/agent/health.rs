//! The health report: serving throughput and connections from the data plane's `/metrics`,
//! tiers and held objects from its catalog (one full `/catalog` listing, then its change feed:
//! `follow`; sent as a digest and changes: `held`), requests per object from its `/demand`,
//! host CPU, fill status and served prefixes.

use std::collections::BTreeMap;
use std::time::Instant;

use edgeplane_api::{HealthReport, TierHealth};

use super::dataplane::{CatalogView, Scrape, TierSpec};
use super::demand::{DemandTracker, DEMAND_TOP};
use super::follow::CatalogFollower;
use super::held::HeldTracker;
use super::state::Agent;

/// What the health cycle keeps between reports.
#[derive(Default)]
pub(crate) struct ReportState {
    pub(crate) last_bytes: Option<(f64, Instant)>,
    pub(crate) cpu: CpuSampler,
    pub(crate) held: HeldTracker,
    pub(crate) follow: CatalogFollower,
    pub(crate) demand: DemandTracker,
}

/// Scrapes the data plane and builds the report.
pub(crate) async fn health_report(agent: &Agent, st: &mut ReportState) -> HealthReport {
    let scrape = agent.admin.scrape().await.map_err(|e| e.to_string());
    let catalog = st
        .follow
        .sync(&agent.admin, &agent.dp.tiers, &mut st.held)
        .await
        .map_err(|e| e.to_string());
    let (last_bytes, cpu) = (&mut st.last_bytes, &mut st.cpu);
    let mut report = build_report(
        &agent.dp.tiers,
        &agent.capacity,
        scrape.as_ref(),
        catalog.as_ref(),
        last_bytes,
        Instant::now(),
    );
    report.cpu = cpu.sample();
    // The held set: a digest and the changes (the list itself only when asked). Without the
    // data plane's catalog there is nothing to say: no `held` (the control service then asks
    // for the full list once the catalog is back).
    if catalog.is_ok() {
        report.held = Some(st.held.report());
    }
    match agent.admin.demand(DEMAND_TOP).await {
        Ok(view) => report.demand = st.demand.interval(&view),
        Err(e) => tracing::debug!("agent: {e}"),
    }
    let s = agent.lock();
    report.fill = s.fill.clone();
    report.prefixes = s.served.iter().copied().collect();
    report
}

/// The report from what the data plane answered (or why it did not): the serving rate is the
/// change in response bytes since `last_bytes` (which this updates); unhealthy, with the first
/// reason, when a call failed or no tier is up.
fn build_report(
    tiers: &[TierSpec],
    capacity: &BTreeMap<String, u64>,
    scrape: Result<&Scrape, &String>,
    catalog: Result<&CatalogView, &String>,
    last_bytes: &mut Option<(f64, Instant)>,
    now: Instant,
) -> HealthReport {
    let mut report = HealthReport {
        healthy: true,
        version: env!("CARGO_PKG_VERSION").to_string(),
        ..HealthReport::default()
    };
    match scrape {
        Ok(s) => {
            if let Some((b, t)) = *last_bytes {
                let secs = now.duration_since(t).as_secs_f64().max(0.001);
                report.serving_bps = ((s.response_bytes - b).max(0.0) * 8.0 / secs) as u64;
            }
            *last_bytes = Some((s.response_bytes, now));
            report.connections = s.connections.max(0.0) as u64;
            report.draining = s.draining;
            report.tls_mode = s.tls_mode.clone().unwrap_or_else(|| "off".into());
        }
        Err(e) => {
            report.healthy = false;
            report.reason = Some(e.clone());
        }
    }
    match catalog {
        Ok(c) => {
            for spec in tiers {
                let t = c.tiers.iter().find(|t| t.name == spec.name);
                let up = t.is_some_and(|t| t.up);
                report.tiers.push(TierHealth {
                    name: spec.name.clone(),
                    up,
                    capacity_bytes: capacity[&spec.name],
                    used_bytes: t.map_or(0, |t| t.bytes),
                    objects: t.map_or(0, |t| t.objects),
                    disk_errors: scrape
                        .ok()
                        .and_then(|s| s.disk_errors.get(&spec.name))
                        .copied()
                        .unwrap_or(0.0) as u64,
                });
            }
            if !report.tiers.iter().any(|t| t.up) {
                report.healthy = false;
                report.reason = Some("no tier is up".into());
            }
        }
        Err(e) => {
            report.healthy = false;
            report.reason.get_or_insert_with(|| e.clone());
        }
    }
    report
}

/// Host CPU use from /proc/stat between samples, in cores.
#[derive(Default)]
pub(crate) struct CpuSampler {
    last: Option<(u64, u64)>,
}

impl CpuSampler {
    /// Cores busy since the last sample (0 the first time).
    pub(crate) fn sample(&mut self) -> f64 {
        let Some((busy, total)) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| parse_proc_stat(&t))
        else {
            return 0.0;
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let out = match self.last {
            Some((b, t)) if total > t => (busy - b.min(busy)) as f64 / (total - t) as f64 * cores,
            _ => 0.0,
        };
        self.last = Some((busy, total));
        out
    }
}

/// `(busy, total)` jiffies from the `cpu` line of /proc/stat (idle and iowait are not busy).
fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0);
    Some((total - idle, total))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::agent::dataplane::CatalogTier;
    use edgeplane_api::TierKind;

    fn tiers() -> Vec<TierSpec> {
        ["flash", "hdd"]
            .into_iter()
            .map(|n| TierSpec {
                name: n.into(),
                kind: TierKind::Flash,
                path: format!("/srv/{n}").into(),
            })
            .collect()
    }

    fn capacity() -> BTreeMap<String, u64> {
        BTreeMap::from([("flash".into(), 1000), ("hdd".into(), 5000)])
    }

    fn catalog(flash_up: bool, hdd_up: bool) -> CatalogView {
        let tier = |name: &str, up, ids: &[&str]| CatalogTier {
            name: name.into(),
            up,
            objects: ids.len() as u64,
            bytes: 10 * ids.len() as u64,
            ids: ids.iter().map(|s| s.to_string()).collect(),
        };
        CatalogView {
            generation: 1,
            tiers: vec![
                tier("flash", flash_up, &["a", "b"]),
                tier("hdd", hdd_up, &["c"]),
            ],
            next: None,
            epoch: None,
            seq: 0,
        }
    }

    #[test]
    fn a_report_carries_rate_and_tiers() {
        let t0 = Instant::now();
        let mut last = None;
        let mut scrape = Scrape {
            response_bytes: 1000.0,
            connections: 3.0,
            tls_mode: Some("ktls".into()),
            disk_errors: BTreeMap::from([("hdd".into(), 2.0)]),
            draining: false,
        };
        let cat = catalog(true, false);
        let r = build_report(&tiers(), &capacity(), Ok(&scrape), Ok(&cat), &mut last, t0);
        assert!(r.healthy, "{r:?}");
        assert!(!r.draining);
        scrape.draining = true;
        let d = build_report(&tiers(), &capacity(), Ok(&scrape), Ok(&cat), &mut None, t0);
        assert!(d.draining, "draining is reported: {d:?}");
        scrape.draining = false;
        assert_eq!(r.serving_bps, 0, "no rate from the first scrape");
        assert_eq!((r.connections, r.tls_mode.as_str()), (3, "ktls"));
        assert_eq!(r.tiers.len(), 2);
        assert_eq!(
            (r.tiers[0].capacity_bytes, r.tiers[0].used_bytes),
            (1000, 20)
        );
        assert!(!r.tiers[1].up);
        assert_eq!(r.tiers[1].disk_errors, 2);

        // 2000 more bytes in 2 s: 8000 bit/s.
        scrape.response_bytes = 3000.0;
        let t1 = t0 + Duration::from_secs(2);
        let r = build_report(&tiers(), &capacity(), Ok(&scrape), Ok(&cat), &mut last, t1);
        assert_eq!(r.serving_bps, 8000);
        assert_eq!(last, Some((3000.0, t1)));
    }

    #[test]
    fn unhealthy_with_the_first_reason() {
        let mut last = None;
        let now = Instant::now();
        let scrape = Scrape::default();
        let down = catalog(false, false);
        let r = build_report(
            &tiers(),
            &capacity(),
            Ok(&scrape),
            Ok(&down),
            &mut last,
            now,
        );
        assert!(!r.healthy);
        assert_eq!(r.reason.as_deref(), Some("no tier is up"));
        assert_eq!(r.tls_mode, "off");

        let scrape_err = "data plane metrics: connection refused".to_string();
        let catalog_err = "data plane catalog: connection refused".to_string();
        let r = build_report(
            &tiers(),
            &capacity(),
            Err(&scrape_err),
            Err(&catalog_err),
            &mut last,
            now,
        );
        assert!(!r.healthy);
        assert_eq!(r.reason.as_ref(), Some(&scrape_err));
        assert!(r.tiers.is_empty());
        let r = build_report(
            &tiers(),
            &capacity(),
            Ok(&scrape),
            Err(&catalog_err),
            &mut last,
            now,
        );
        assert_eq!(r.reason.as_ref(), Some(&catalog_err));
    }

    #[test]
    fn proc_stat_busy_and_total() {
        let text = "cpu  100 5 50 800 40 3 2 0 0 0\ncpu0 1 2 3 4 5 6 7 8\n";
        assert_eq!(parse_proc_stat(text), Some((160, 1000)));
        assert_eq!(parse_proc_stat("intr 1 2 3\n"), None);
        assert_eq!(parse_proc_stat("cpu  1 2 3\n"), None);
    }
}
