//! Re-verification of stored objects: every `fill.verify_interval_secs`, while the fill is not
//! downloading, a random sample of `fill.verify_objects` held objects is read back and hashed
//! (at the agent's idle I/O priority, so serving reads go first). An object whose bytes no
//! longer match the SHA-256 it was verified against at install (the digest recorded on the
//! file, else the manifest's) has rotted: it is removed, counted, and the fill is woken to
//! fetch it again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::pass::scan_tiers;
use crate::agent::state::Agent;
use crate::agent::store;

/// Runs verification rounds forever (or never, when turned off).
pub(crate) async fn verify_loop(agent: Arc<Agent>) {
    let every = agent.cfg.fill.verify_interval_secs;
    if every == 0 || agent.cfg.fill.verify_objects == 0 {
        return std::future::pending().await;
    }
    loop {
        tokio::time::sleep(Duration::from_secs(every)).await;
        if agent.lock().fill.state == "filling" {
            continue;
        }
        verify_round(&agent).await;
    }
}

/// One round; the number of rotten objects found.
async fn verify_round(agent: &Arc<Agent>) -> usize {
    let held = scan_tiers(agent).await;
    let by_manifest: std::collections::HashMap<String, String> = agent
        .lock()
        .manifest
        .iter()
        .flat_map(|m| m.objects.iter())
        .map(|e| (e.object.id.clone(), e.object.sha256.to_ascii_lowercase()))
        .collect();
    let mut candidates: Vec<(String, PathBuf, String)> = Vec::new();
    for t in &agent.dp.tiers {
        for id in held.get(&t.name).into_iter().flat_map(|h| h.keys()) {
            candidates.push((t.name.clone(), t.path.clone(), id.clone()));
        }
    }
    // A random sample without replacement (partial Fisher-Yates).
    let n = agent.cfg.fill.verify_objects.min(candidates.len());
    for i in 0..n {
        let j = i + (rand::random::<u64>() % (candidates.len() - i) as u64) as usize;
        candidates.swap(i, j);
    }
    candidates.truncate(n);
    let mut rotten = 0;
    for (tier, dir, id) in candidates {
        let fallback = by_manifest.get(&id).cloned();
        let p = dir.join(&id);
        // The digest is read with the bytes: a new version swapped in meanwhile brings its own.
        let r = tokio::task::spawn_blocking(move || {
            let want = store::recorded_sha256(&p).or(fallback);
            let got = store::file_sha256(&p)?;
            let after = store::recorded_sha256(&p);
            Ok::<_, std::io::Error>((want, got, after))
        })
        .await;
        let (want, got, after) = match r {
            Ok(Ok(x)) => x,
            // Evicted or replaced meanwhile: nothing to judge.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Ok(Err(e)) => {
                tracing::warn!("agent: verifying {id} on {tier}: {e}");
                continue;
            }
            Err(e) => {
                tracing::error!("agent: verify task: {e}");
                continue;
            }
        };
        let Some(want) = want else { continue };
        agent.lock().verified += 1;
        if got == want || after.is_some_and(|a| a == got) {
            continue;
        }
        tracing::warn!(
            "agent: {id} on {tier} has rotted (sha256 {got}, verified as {want}); removing it to fill it again"
        );
        if let Err(e) = store::evict(&dir, &id) {
            tracing::warn!("agent: removing rotten {id} from {tier}: {e}");
            continue;
        }
        agent.lock().bit_rot += 1;
        rotten += 1;
    }
    if rotten > 0 {
        agent.manifest_changed.send_replace(());
    }
    rotten
}
