//! `[agent]`: the agent's part of the appliance's one config file (`edgeplane.toml`).
//!
//! The data plane's own sections (tiers, admin listener, signing keys file, access prefixes
//! file, XDP pin directory) are read from the same file by the `edgeplane` binary and handed to
//! the agent as a [`super::Dataplane`]; this section holds only what the agent adds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;

pub use crate::s3::OriginConfig;
use edgeplane_api::Role;

/// `[agent]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This appliance's id at the control service.
    pub id: String,
    /// The per-appliance secret (or `secret_file`).
    #[serde(default)]
    pub secret: Option<String>,
    /// A file holding the secret (first line), readable by the agent only.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Base URL of the control service, e.g. `https://control.example.net`.
    pub control_url: String,
    /// `embedded` or `ix`.
    #[serde(default = "default_role")]
    pub role: Role,
    /// Site name.
    #[serde(default = "default_site")]
    pub site: String,
    /// Base URLs players reach this appliance at (first preferred).
    pub urls: Vec<String>,
    /// Client prefixes served regardless of BGP (the union with BGP's is served).
    #[serde(default)]
    pub prefixes: Vec<IpNet>,
    /// The agent's own state (manifest cache).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The agent's `/metrics` and `/status` listener.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Load cap registered with steering, bits per second.
    #[serde(default = "default_max_bps")]
    pub max_bps: u64,
    /// Bytes the fill may use per tier name (default: 95% of the tier's filesystem).
    #[serde(default)]
    pub tier_capacity: BTreeMap<String, u64>,
    /// Health report interval, overriding the control service's (seconds).
    #[serde(default)]
    pub health_interval_secs: Option<u64>,
    /// Fill behaviour.
    #[serde(default)]
    pub fill: FillConfig,
    /// The S3 origin (the same table as the control service's `[origin]`).
    pub origin: OriginConfig,
    /// BGP sessions with the ISP's routers (receive-only).
    #[serde(default)]
    pub bgp: Option<edgeplane_bgp::SpeakerConfig>,
}

/// `[agent.fill]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FillConfig {
    /// `"always"`, or `"HH:MM-HH:MM"` in local time (may wrap midnight: `"22:00-06:00"`).
    #[serde(default = "default_window")]
    pub window: String,
    /// Download rate cap in megabits per second for the whole fill (0: no cap).
    #[serde(default = "default_rate_mbps")]
    pub rate_mbps: u64,
    /// Objects downloaded at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Run the agent's I/O at idle priority (`ioprio` class idle), so fill writes never compete
    /// with serving reads.
    #[serde(default = "default_true")]
    pub idle_io: bool,
    /// First retry delay after a failed download, milliseconds (doubles up to `retry_max_ms`).
    #[serde(default = "default_retry_base_ms")]
    pub retry_base_ms: u64,
    /// Longest retry delay, milliseconds.
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// Consecutive origin failures that open the circuit breaker.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long the breaker stays open before one probe, seconds (doubles while failing, up to 16×).
    #[serde(default = "default_breaker_open_secs")]
    pub breaker_open_secs: u64,
    /// Remove objects that left the manifest.
    #[serde(default = "default_true")]
    pub evict: bool,
    /// A manifest that would evict more than this fraction of the objects the appliance holds
    /// (in one pass) is refused, as is an empty one while objects are held: a control service
    /// that lost its catalog cannot wipe the appliance. 0.0–1.0; default 0.1.
    #[serde(default = "default_max_evict_fraction")]
    pub max_evict_fraction: f64,
    /// Every this many seconds, re-read a sample of stored objects and compare them with their
    /// verified SHA-256 (bit rot: removed and filled again); 0 turns it off. Default 60.
    #[serde(default = "default_verify_interval_secs")]
    pub verify_interval_secs: u64,
    /// Objects re-read per round (default 8).
    #[serde(default = "default_verify_objects")]
    pub verify_objects: usize,
}

impl Default for FillConfig {
    fn default() -> Self {
        // The serde defaults, in one place.
        toml::from_str("").expect("defaults")
    }
}

fn default_role() -> Role {
    Role::Embedded
}
fn default_site() -> String {
    "default".into()
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/edgeplane/agent")
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9091))
}
fn default_max_bps() -> u64 {
    100_000_000_000
}
fn default_window() -> String {
    "always".into()
}
fn default_rate_mbps() -> u64 {
    1000
}
fn default_concurrency() -> usize {
    4
}
fn default_true() -> bool {
    true
}
fn default_retry_base_ms() -> u64 {
    500
}
fn default_retry_max_ms() -> u64 {
    60_000
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_verify_interval_secs() -> u64 {
    60
}
fn default_verify_objects() -> usize {
    8
}
fn default_max_evict_fraction() -> f64 {
    0.1
}
fn default_breaker_open_secs() -> u64 {
    10
}

/// A value in `[agent]` that serde accepted but the agent cannot use: `key` is the full dotted
/// key (`agent.fill.window`), `problem` what is wrong with its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
#[non_exhaustive]
pub struct ConfigError {
    /// The key, from `agent.` on.
    pub key: String,
    /// What is wrong, for the operator.
    pub problem: String,
}

/// Why the agent's secret could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// Neither `secret` nor `secret_file` (which [`AgentConfig::validate`] refuses).
    #[error("no secret configured")]
    Missing,
    /// `secret_file` could not be read.
    #[error("agent.secret_file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `secret_file`'s first line is empty.
    #[error("agent.secret_file {} is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

impl AgentConfig {
    /// Checks what serde cannot; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |k: &str, p: String| {
            Err(ConfigError {
                key: format!("agent.{k}"),
                problem: p,
            })
        };
        if self.id.is_empty()
            || !self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return bad("id", "must be [A-Za-z0-9._-]+".into());
        }
        if self.secret.is_none() == self.secret_file.is_none() {
            return bad(
                "secret",
                "set exactly one of `secret` and `secret_file`".into(),
            );
        }
        if !(self.control_url.starts_with("http://") || self.control_url.starts_with("https://")) {
            return bad(
                "control_url",
                format!("{:?} is not an http(s) URL", self.control_url),
            );
        }
        if self.urls.is_empty() {
            return bad("urls", "at least one base URL players can reach".into());
        }
        for u in &self.urls {
            if !(u.starts_with("http://") || u.starts_with("https://")) || u.ends_with('/') {
                return bad(
                    "urls",
                    format!("{u:?}: want http(s)://host:port without a trailing slash"),
                );
            }
        }
        if let Err(e) = super::fill::Window::parse(&self.fill.window) {
            return bad("fill.window", e.to_string());
        }
        if self.fill.concurrency == 0 || self.fill.concurrency > 256 {
            return bad("fill.concurrency", "must be 1-256".into());
        }
        let f = self.fill.max_evict_fraction;
        if !f.is_finite() || !(0.0..=1.0).contains(&f) {
            return bad(
                "fill.max_evict_fraction",
                format!("{f} must be within 0.0..=1.0"),
            );
        }
        if self.fill.breaker_failures == 0 {
            return bad("fill.breaker_failures", "must be at least 1".into());
        }
        if self.origin.bucket.is_empty() {
            return bad("origin.bucket", "must not be empty".into());
        }
        if let Some(bgp) = &self.bgp {
            if let Err(e) = bgp.validate() {
                return bad(&format!("bgp.{}", e.field), e.message.clone());
            }
        }
        if self.health_interval_secs == Some(0) {
            return bad("health_interval_secs", "must be at least 1".into());
        }
        Ok(())
    }

    /// The secret, from `secret` or the first line of `secret_file`.
    pub fn load_secret(&self) -> Result<String, SecretError> {
        if let Some(s) = &self.secret {
            return Ok(s.clone());
        }
        let path = self.secret_file.as_ref().ok_or(SecretError::Missing)?;
        let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
            path: path.clone(),
            source,
        })?;
        let line = text.lines().next().unwrap_or("").trim().to_string();
        if line.is_empty() {
            return Err(SecretError::Empty { path: path.clone() });
        }
        Ok(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> AgentConfig {
        toml::from_str(&format!(
            "id = \"emb-1\"\ncontrol_url = \"http://127.0.0.1:8700\"\nurls = [\"http://192.0.2.1:8080\"]\n{extra}\n[origin]\nbucket = \"b\"\n"
        ))
        .unwrap()
    }

    #[test]
    fn validate_names_the_key() {
        config("secret = \"s\"").validate().unwrap();
        let e = config("").validate().unwrap_err();
        assert_eq!(e.key, "agent.secret");
        let e = config("secret = \"s\"\n[fill]\nwindow = \"02:00-02:00\"")
            .validate()
            .unwrap_err();
        assert_eq!(e.key, "agent.fill.window");
        assert_eq!(
            e.to_string(),
            "agent.fill.window: \"02:00-02:00\": an empty window; use \"always\" for no limit"
        );
        let e = config("secret = \"s\"\nhealth_interval_secs = 0")
            .validate()
            .unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.problem.as_str()),
            ("agent.health_interval_secs", "must be at least 1")
        );
    }

    #[test]
    fn the_secret_comes_from_the_config_or_the_first_line_of_its_file() {
        assert_eq!(config("secret = \"s\"").load_secret().unwrap(), "s");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let cfg = config(&format!("secret_file = {:?}", path.to_str().unwrap()));
        let e = cfg.load_secret().unwrap_err();
        assert!(matches!(e, SecretError::Read { .. }), "{e}");
        assert!(std::error::Error::source(&e).is_some());
        assert!(e.to_string().starts_with("agent.secret_file "), "{e}");
        std::fs::write(&path, "\n").unwrap();
        let e = cfg.load_secret().unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("agent.secret_file {} is empty", path.display())
        );
        std::fs::write(&path, "  hunter2 \nignored\n").unwrap();
        assert_eq!(cfg.load_secret().unwrap(), "hunter2");
    }
}
