//! The fill manifest: fetched from the control service when a health answer announces a new
//! generation, saved as `state_dir/manifest.json`, and read back at start so a restarted agent
//! goes on filling while the control service is unreachable.

use std::path::Path;

use edgeplane_api::FillManifest;

use super::dataplane::write_atomic;
use super::fill::judge;
use super::fill::pass::scan_tiers;
use super::register::ControlError;
use super::state::Agent;

/// The manifest's file in `state_dir`.
const FILE: &str = "manifest.json";

/// The manifest saved in `state_dir`, if there is one that parses.
pub(crate) fn load_saved(state_dir: &Path) -> Option<FillManifest> {
    let text = std::fs::read(state_dir.join(FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

impl Agent {
    /// Fetches the manifest, judges it against what the tiers hold (an empty one, or one that
    /// would evict more than `fill.max_evict_fraction`, is refused: one log line, a metric, and
    /// the current manifest stays), saves it, and wakes the fill.
    pub(crate) async fn fetch_manifest(&self) -> Result<(), ControlError> {
        let m: FillManifest = self
            .call(self.http.get(self.url("manifest")), "manifest")
            .await?;
        let held = scan_tiers(self).await;
        let fill = &self.cfg.fill;
        if let Err(r) = judge(
            &m,
            &held,
            &self.capacity,
            fill.evict,
            fill.max_evict_fraction,
        ) {
            tracing::warn!(
                "agent: refused manifest generation {} (epoch {:?}): {r}; keeping generation {} and serving what is held",
                m.generation,
                m.epoch,
                self.lock().fill.generation
            );
            let mut s = self.lock();
            *s.manifests_refused.entry(r.reason()).or_default() += 1;
            s.refused = Some((m.epoch, m.generation));
            return Ok(());
        }
        let json = serde_json::to_vec(&m).expect("manifest serialize");
        write_atomic(&self.cfg.state_dir.join(FILE), &json).map_err(ControlError::SaveManifest)?;
        tracing::info!(
            "agent: manifest generation {} with {} objects",
            m.generation,
            m.objects.len()
        );
        {
            let mut s = self.lock();
            s.fill.generation = m.generation;
            s.manifest = Some(m);
        }
        self.manifest_changed.send_replace(());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_manifest_is_read_back_and_garbage_is_not() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_saved(dir.path()).is_none());
        let m = FillManifest {
            generation: 7,
            objects: Vec::new(),
            ..Default::default()
        };
        write_atomic(&dir.path().join(FILE), &serde_json::to_vec(&m).unwrap()).unwrap();
        assert_eq!(load_saved(dir.path()).map(|m| m.generation), Some(7));
        std::fs::write(dir.path().join(FILE), b"{\"generation\":").unwrap();
        assert!(load_saved(dir.path()).is_none());
    }
}
