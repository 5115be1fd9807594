//! The agent and the control service: the API client ([`Agent::call`]), the registration, and
//! the register → health cycle that also carries keys, assigned prefixes and new manifests.

use std::sync::Arc;
use std::time::Duration;

use edgeplane_api::{HealthAck, Registration, RegistrationAck, TierCapacity};
use edgeplane_signing::KeySet;

use super::fill::Backoff;
use super::health::{health_report, ReportState};
use super::state::Agent;

/// Why a call to the control service failed; `what` names the call (`register`, `health`,
/// `manifest`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ControlError {
    /// No answer (connection, timeout).
    #[error("{what}: {source}")]
    Request {
        what: &'static str,
        #[source]
        source: reqwest::Error,
    },
    /// An error status; the body is the service's `{"error": …}`.
    #[error("{what}: HTTP {status}: {body}")]
    Status {
        what: &'static str,
        status: reqwest::StatusCode,
        body: String,
    },
    /// An answer that is not the JSON expected.
    #[error("{what}: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: reqwest::Error,
    },
    /// The fetched manifest could not be saved in `state_dir`.
    #[error("saving manifest: {0}")]
    SaveManifest(#[source] std::io::Error),
}

impl Agent {
    /// `<control_url>/v1/appliances/<id>/<path>`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!(
            "{}/v1/appliances/{}/{path}",
            self.cfg.control_url.trim_end_matches('/'),
            self.cfg.id
        )
    }

    /// Sends `req` with our secret and decodes the JSON answer.
    pub(crate) async fn call<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        what: &'static str,
    ) -> Result<T, ControlError> {
        let r = req
            .bearer_auth(&self.secret)
            .send()
            .await
            .map_err(|source| ControlError::Request { what, source })?;
        let status = r.status();
        if !status.is_success() {
            let body = r.text().await.unwrap_or_default().trim().to_string();
            return Err(ControlError::Status { what, status, body });
        }
        r.json()
            .await
            .map_err(|source| ControlError::Decode { what, source })
    }

    /// What we register: role, site, URLs, served prefixes, tier capacities, load cap.
    fn registration(&self) -> Registration {
        Registration {
            role: self.cfg.role,
            site: self.cfg.site.clone(),
            urls: self.cfg.urls.clone(),
            prefixes: self.lock().served.iter().copied().collect(),
            tiers: self
                .dp
                .tiers
                .iter()
                .map(|t| TierCapacity {
                    name: t.name.clone(),
                    kind: t.kind,
                    capacity_bytes: self.capacity[&t.name],
                })
                .collect(),
            max_bps: self.cfg.max_bps,
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// Whether a health answer offering manifest `offered` (epoch, generation) is worth fetching:
/// none held yet; a higher generation of the same epoch; or any generation of another epoch (a
/// new control store: its generations are not comparable with ours, and the eviction guard
/// decides). A lower or equal generation of our epoch (a stale instance) and the manifest
/// refused last are not fetched.
pub(crate) fn should_fetch(
    have: Option<&(String, u64)>,
    offered: &(String, u64),
    refused: Option<&(String, u64)>,
) -> bool {
    if refused == Some(offered) {
        return false;
    }
    match have {
        None => true,
        Some((epoch, generation)) => *epoch != offered.0 || offered.1 > *generation,
    }
}

/// Registers (again after any failed health report: the control service may have restarted,
/// and whenever the served prefixes change), then reports health every interval; each answer
/// brings the signing keys, the assigned prefixes and the manifest generation.
pub(crate) async fn control_loop(agent: Arc<Agent>) {
    let backoff = Backoff {
        base: Duration::from_millis(500),
        max: Duration::from_secs(30),
    };
    let mut interval = Duration::from_secs(agent.cfg.health_interval_secs.unwrap_or(5));
    let mut failures = 0;
    let mut registered = false;
    let mut report_state = ReportState::default();
    let mut last_prefixes = agent.lock().served.clone();
    let mut prefixes_rx = agent.prefixes_changed.subscribe();
    loop {
        if !registered {
            let reg = agent.registration();
            let r: Result<RegistrationAck, ControlError> = agent
                .call(
                    agent.http.post(agent.url("register")).json(&reg),
                    "register",
                )
                .await;
            match r {
                Ok(ack) => {
                    registered = true;
                    failures = 0;
                    if agent.cfg.health_interval_secs.is_none() {
                        interval = Duration::from_secs(ack.health_interval_secs.max(1));
                    }
                    tracing::info!("agent: registered as {}", agent.cfg.id);
                    agent.set_prefix_sources(Some(ack.prefixes.into_iter().collect()), None);
                    agent
                        .set_keys(KeySet {
                            keys: ack.signing_keys,
                        })
                        .await;
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!("agent: {e}");
                    agent.lock().last_error = Some(e.to_string());
                    tokio::time::sleep(backoff.delay(failures)).await;
                    continue;
                }
            }
        }
        let report = health_report(&agent, &mut report_state).await;
        {
            let mut s = agent.lock();
            s.catalog_listings = report_state.follow.listings;
            s.catalog_changes = report_state.follow.changes;
        }
        let r: Result<HealthAck, ControlError> = agent
            .call(agent.http.post(agent.url("health")).json(&report), "health")
            .await;
        match r {
            Ok(ack) => {
                report_state.held.answered(&ack);
                {
                    let mut s = agent.lock();
                    s.health_ok += 1;
                    s.held_full_sent = report_state.held.full_sent;
                }
                agent.set_prefix_sources(Some(ack.prefixes.into_iter().collect()), None);
                agent
                    .set_keys(KeySet {
                        keys: ack.signing_keys,
                    })
                    .await;
                let (have, refused) = {
                    let s = agent.lock();
                    let have = s.manifest.as_ref().map(|m| (m.epoch.clone(), m.generation));
                    (have, s.refused.clone())
                };
                let offered = (ack.epoch.clone(), ack.manifest_generation);
                if should_fetch(have.as_ref(), &offered, refused.as_ref()) {
                    if let Some((epoch, _)) = have.as_ref().filter(|(e, _)| *e != ack.epoch) {
                        tracing::info!(
                            "agent: control epoch changed ({epoch:?} -> {:?}); fetching its manifest generation {} (the eviction guard applies)",
                            ack.epoch,
                            ack.manifest_generation
                        );
                    }
                    if let Err(e) = agent.fetch_manifest().await {
                        tracing::warn!("agent: {e}");
                    }
                }
            }
            Err(e) => {
                tracing::warn!("agent: {e}");
                report_state.held.unanswered();
                let mut s = agent.lock();
                s.health_err += 1;
                s.last_error = Some(e.to_string());
                registered = false;
            }
        }
        // Sleep an interval, or less when the served prefixes change (re-register them).
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = prefixes_rx.changed() => {}
        }
        let now = agent.lock().served.clone();
        if now != last_prefixes {
            last_prefixes = now;
            registered = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::should_fetch;

    #[test]
    fn only_a_higher_generation_of_the_same_epoch_or_a_new_epoch_is_fetched() {
        let e = |s: &str, g: u64| (s.to_string(), g);
        assert!(should_fetch(None, &e("a", 1), None));
        assert!(should_fetch(Some(&e("a", 3)), &e("a", 4), None));
        // A restarted control service that lost its state would offer a low generation: never
        // fetched within the epoch.
        assert!(!should_fetch(Some(&e("a", 3)), &e("a", 3), None));
        assert!(!should_fetch(Some(&e("a", 3)), &e("a", 1), None));
        // Another store: fetched (and judged by the eviction guard).
        assert!(should_fetch(Some(&e("a", 3)), &e("b", 1), None));
        // The one refused last is not fetched again; the next one is.
        assert!(!should_fetch(
            Some(&e("a", 3)),
            &e("b", 1),
            Some(&e("b", 1))
        ));
        assert!(should_fetch(Some(&e("a", 3)), &e("b", 2), Some(&e("b", 1))));
    }
}
