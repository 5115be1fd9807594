//! The served client prefixes: `agent.prefixes` ∪ those the control service assigns ∪ the BGP
//! speaker's, published to the data plane's prefixes file (its own accept-time check) and,
//! with XDP, the pinned maps.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::dataplane::write_atomic;
use super::fill::Backoff;
use super::state::Agent;

/// Served = configured ∪ assigned ∪ BGP (configured ones truncated to their network).
pub(crate) fn served_set(
    configured: &[IpNet],
    assigned: &BTreeSet<IpNet>,
    bgp: &BTreeSet<IpNet>,
) -> BTreeSet<IpNet> {
    let mut all: BTreeSet<IpNet> = configured.iter().map(|p| p.trunc()).collect();
    all.extend(assigned.iter().copied());
    all.extend(bgp.iter().copied());
    all
}

impl Agent {
    /// Replaces the assigned and/or BGP prefixes; wakes the prefix task when the served set
    /// changes.
    pub(crate) fn set_prefix_sources(
        &self,
        assigned: Option<BTreeSet<IpNet>>,
        bgp: Option<BTreeSet<IpNet>>,
    ) {
        let changed = {
            let mut s = self.lock();
            if let Some(a) = assigned {
                s.assigned = a;
            }
            if let Some(b) = bgp {
                s.bgp = b;
            }
            let all = served_set(&self.cfg.prefixes, &s.assigned, &s.bgp);
            let changed = all != s.served;
            s.served = all;
            changed
        };
        if changed {
            self.prefixes_changed.send_replace(());
        }
    }
}

/// Served prefixes → the data plane's prefixes file (its own check) and XDP maps.
pub(crate) async fn prefix_loop(agent: Arc<Agent>) {
    let mut rx = agent.prefixes_changed.subscribe();
    // What the prefixes file holds, as far as we know, so a failing XDP sync does not rewrite
    // the file and rescan the catalog on every retry. The XDP sync is a diff: always run.
    let mut in_file: Option<BTreeSet<IpNet>> = None;
    let mut last_error: Option<String> = None;
    let mut failures = 0u32;
    let retry = Backoff {
        base: Duration::from_secs(2),
        max: Duration::from_secs(60),
    };
    loop {
        let want = agent.lock().served.clone();
        let list: Vec<IpNet> = want.iter().copied().collect();
        let mut error = None;
        // Check the targets again rather than trust memory: a restarted data plane may have
        // recreated its maps, or someone may have edited the file. Both checks are cheap (a
        // diff of the maps; a read of the file); only a difference writes anything.
        if in_file.as_ref() == Some(&want) {
            if let Some(path) = &agent.dp.prefixes_file {
                if prefixes_in_file(path).as_ref() != Some(&want) {
                    in_file = None;
                }
            }
        }
        if let Some(path) = &agent.dp.prefixes_file {
            if in_file.as_ref() != Some(&want) {
                match write_atomic(path, prefixes_file_json(&list).as_bytes()) {
                    Ok(()) => match agent.admin.reload().await {
                        Ok(()) => in_file = Some(want.clone()),
                        Err(e) => error = Some(e.to_string()),
                    },
                    Err(e) => error = Some(format!("writing {}: {e}", path.display())),
                }
            }
        }
        if let Some(sink) = &agent.dp.xdp {
            match sink(&list) {
                Ok(Some(summary)) => tracing::info!("agent: XDP prefixes: {summary}"),
                Ok(None) => {}
                Err(e) => error = Some(format!("XDP prefixes: {e}")),
            }
        }
        let wait = match error {
            None => {
                if failures > 0 || last_error.is_some() {
                    tracing::info!("agent: served prefixes applied again");
                }
                failures = 0;
                last_error = None;
                tracing::debug!("agent: serving {} prefixes", list.len());
                Duration::from_secs(30)
            }
            Some(e) => {
                failures += 1;
                // One line per distinct problem, not one per retry.
                if last_error.as_ref() != Some(&e) {
                    tracing::warn!("agent: {e} (retrying)");
                    last_error = Some(e);
                }
                retry.delay(failures)
            }
        };
        tokio::select! {
            _ = rx.changed() => {}
            // Retry a failed apply (the data plane may have been restarting).
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// The data plane's prefixes file: `{"prefixes": [...]}`.
fn prefixes_file_json(list: &[IpNet]) -> String {
    serde_json::json!({ "prefixes": list }).to_string()
}

/// The prefixes in a data plane prefixes file, if it parses.
fn prefixes_in_file(path: &Path) -> Option<BTreeSet<IpNet>> {
    #[derive(serde::Deserialize)]
    struct File {
        prefixes: Vec<IpNet>,
    }
    let f: File = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some(f.prefixes.into_iter().collect())
}

/// The BGP speaker: its served set joins the configured prefixes; its status is published for
/// `edgeplane bgp status` (through `/status`).
pub(crate) async fn bgp_loop(agent: Arc<Agent>, cfg: edgeplane_bgp::SpeakerConfig) {
    let speaker = match edgeplane_bgp::spawn(cfg) {
        Ok(s) => s,
        Err(e) => {
            // Serving continues on the configured prefixes; the operator sees why in the log
            // and in `edgeplane bgp status`.
            tracing::error!("agent.bgp: {e}");
            agent.lock().bgp_status = Some(serde_json::json!({ "error": e.to_string() }));
            return std::future::pending().await;
        }
    };
    let mut served = speaker.served();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let set = served.borrow_and_update().clone();
        agent.set_prefix_sources(None, Some(set));
        agent.lock().bgp_status = serde_json::to_value(speaker.status()).ok();
        tokio::select! {
            r = served.changed() => {
                if r.is_err() {
                    tracing::error!("agent.bgp: the speaker stopped");
                    return std::future::pending().await;
                }
            }
            _ = tick.tick() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(p: &[&str]) -> BTreeSet<IpNet> {
        p.iter().map(|p| p.parse().unwrap()).collect()
    }

    #[test]
    fn served_is_the_union_of_the_three_sources() {
        let configured: Vec<IpNet> = vec!["198.51.100.7/24".parse().unwrap()];
        let s = served_set(
            &configured,
            &set(&["203.0.113.0/24", "2001:db8::/32"]),
            &set(&["203.0.113.0/24", "192.0.2.0/25"]),
        );
        assert_eq!(
            s,
            set(&[
                "198.51.100.0/24",
                "203.0.113.0/24",
                "192.0.2.0/25",
                "2001:db8::/32"
            ])
        );
        assert!(served_set(&[], &BTreeSet::new(), &BTreeSet::new()).is_empty());
    }

    #[test]
    fn the_prefixes_file_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prefixes.json");
        assert_eq!(prefixes_in_file(&path), None);
        let want = set(&["198.51.100.0/24", "2001:db8:100::/48"]);
        let list: Vec<IpNet> = want.iter().copied().collect();
        write_atomic(&path, prefixes_file_json(&list).as_bytes()).unwrap();
        assert_eq!(prefixes_in_file(&path), Some(want));
        std::fs::write(&path, b"{\"prefixes\": [\"not a prefix\"]}").unwrap();
        assert_eq!(prefixes_in_file(&path), None);
    }
}
