//! Signing keys for the data plane: the keys in each registration and health answer go to
//! `signing.keys_file` (atomic write), then `POST /reload`.

use std::path::Path;

use edgeplane_signing::KeySet;

use super::dataplane::write_atomic;
use super::state::Agent;

/// The keys in the data plane's keys file, if it parses (what the data plane serves with now).
pub(crate) fn load_saved(keys_file: &Path) -> Option<KeySet> {
    serde_json::from_slice(&std::fs::read(keys_file).ok()?).ok()
}

impl Agent {
    /// Installs new signing keys: keys file, then a data plane reload.
    pub(crate) async fn set_keys(&self, keys: KeySet) {
        if self.lock().keys == keys {
            return;
        }
        if let Some(path) = &self.dp.keys_file {
            let json = serde_json::to_vec_pretty(&keys).expect("keys serialize");
            if let Err(e) = write_atomic(path, &json) {
                tracing::error!("agent: writing signing keys to {}: {e}", path.display());
                return;
            }
            if let Err(e) = self.admin.reload().await {
                tracing::warn!("agent: {e}");
            }
        }
        let ids: Vec<String> = keys.keys.iter().map(|k| k.id.clone()).collect();
        tracing::info!("agent: signing keys now {ids:?}");
        self.lock().keys = keys;
    }
}
