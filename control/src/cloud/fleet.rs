//! The fleet registry's records and the in-steering rule.

use std::collections::HashSet;

use ipnet::IpNet;

use crate::cloud::config::{ApplianceConfig, HealthConfig};
use edgeplane_api::{ApplianceView, HealthReport, Registration};

/// What the service knows about one provisioned appliance.
#[derive(Clone, Debug)]
pub struct ApplianceRecord {
    /// Id.
    pub id: String,
    /// Its bearer secret.
    pub secret: String,
    /// Id of its tiered-fill peer.
    pub peer: Option<String>,
    /// Its last registration.
    pub registration: Option<Registration>,
    /// Its last health report and when it arrived (unix seconds).
    pub health: Option<(HealthReport, u64)>,
    /// The object ids of the last health report, for lookups.
    pub held: HashSet<String>,
    /// Counts the changes of `held`: steering recomputes what it derived from the held set only
    /// when this moves ([`ApplianceRecord::held_changed`] after any change).
    pub held_version: u64,
}

impl ApplianceRecord {
    /// A provisioned appliance that has not registered yet.
    pub fn provisioned(cfg: &ApplianceConfig) -> ApplianceRecord {
        ApplianceRecord {
            id: cfg.id.clone(),
            secret: cfg.secret.clone(),
            peer: cfg.peer.clone(),
            registration: None,
            health: None,
            held: HashSet::new(),
            held_version: 0,
        }
    }

    /// Records a health report received at `now`. A report in the old form (`objects`, no
    /// `held`) replaces the held set (marked changed only when it is another set, so what
    /// steering derived from it stays); otherwise the held set is kept by `cloud::held`.
    pub fn set_health(&mut self, report: HealthReport, now: u64) {
        if report.held.is_none() {
            let held: HashSet<String> = report.objects.iter().cloned().collect();
            if held != self.held {
                self.held = held;
                self.held_changed();
            }
        }
        self.health = Some((report, now));
    }

    /// Marks `held` changed (see [`ApplianceRecord::held_version`]).
    pub fn held_changed(&mut self) {
        self.held_version = self.held_version.wrapping_add(1);
    }

    /// Why steering does not use this appliance at `now`, or `None` when it does: it must be
    /// registered, have reported within `missed_limit × interval_secs`, and have reported
    /// itself healthy and not draining.
    pub fn out_reason(&self, now: u64, health: &HealthConfig) -> Option<String> {
        if self.registration.is_none() {
            return Some("not registered".into());
        }
        let Some((report, at)) = &self.health else {
            return Some("no health report yet".into());
        };
        let silent = now.saturating_sub(*at);
        if silent > health.silence_limit() {
            return Some(format!(
                "silent for {silent} s (limit {} s: {} missed reports)",
                health.silence_limit(),
                health.missed_limit
            ));
        }
        if report.draining {
            return Some("draining".into());
        }
        if !report.healthy {
            return Some(match &report.reason {
                Some(r) => format!("reported unhealthy: {r}"),
                None => "reported unhealthy".into(),
            });
        }
        None
    }

    /// Whether its last health report says it is draining (`edgeplane drain`).
    pub fn draining(&self) -> bool {
        self.health.as_ref().is_some_and(|(h, _)| h.draining)
    }

    /// Whether steering may use it at `now`.
    pub fn in_steering(&self, now: u64, health: &HealthConfig) -> bool {
        self.out_reason(now, health).is_none()
    }

    /// The client prefixes it serves: those of its last health report, or when that lists none,
    /// those it registered.
    pub fn prefixes(&self) -> &[IpNet] {
        match (&self.health, &self.registration) {
            (Some((h, _)), _) if !h.prefixes.is_empty() => &h.prefixes,
            (_, Some(r)) => &r.prefixes,
            _ => &[],
        }
    }

    /// Whether its last health report lists every one of `objects`.
    pub fn holds<'a>(&self, mut objects: impl Iterator<Item = &'a str>) -> bool {
        objects.all(|o| self.held.contains(o))
    }

    /// Its current serving rate and load cap, bits per second.
    pub fn load(&self) -> (u64, u64) {
        let serving = self.health.as_ref().map_or(0, |(h, _)| h.serving_bps);
        let cap = self.registration.as_ref().map_or(0, |r| r.max_bps);
        (serving, cap)
    }

    /// Whether it is under its load cap.
    pub fn under_cap(&self) -> bool {
        let (serving, cap) = self.load();
        serving < cap
    }

    /// Its first (preferred) base URL.
    pub fn base_url(&self) -> Option<&str> {
        self.registration
            .as_ref()
            .and_then(|r| r.urls.first())
            .map(|u| u.trim_end_matches('/'))
    }

    /// The fleet view of it.
    pub fn view(&self, now: u64, health: &HealthConfig) -> ApplianceView {
        let out = self.out_reason(now, health);
        ApplianceView {
            id: self.id.clone(),
            registration: self.registration.clone(),
            last_health: self.health.as_ref().map(|(h, _)| h.clone()),
            silent_secs: self.health.as_ref().map(|(_, at)| now.saturating_sub(*at)),
            in_steering: out.is_none(),
            out_reason: out,
        }
    }
}
