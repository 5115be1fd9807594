//! The cloud service's configuration file (TOML). docs/control-api.md has the reference.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use edgeplane_signing::{valid_key_id, SigningKey};
use serde::Deserialize;

pub use crate::s3::OriginConfig;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, a wrong type (toml's message names the key and line).
    #[error("{}{source}", file_prefix(.path))]
    Parse {
        /// The file, when the text came from one.
        path: Option<String>,
        /// toml's error.
        #[source]
        source: toml::de::Error,
    },
    /// Parsed, but a value is out of range or inconsistent; the message names the key.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// `"<path>: "`, or nothing for text that came from no file.
fn file_prefix(path: &Option<String>) -> String {
    path.as_ref().map(|p| format!("{p}: ")).unwrap_or_default()
}

/// The whole `edgeplane cloud` configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    /// Address the HTTP API listens on, e.g. `127.0.0.1:8700` (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Bearer token for the admin endpoints (fleet, catalog upload, key rotation).
    pub admin_token: String,
    /// The S3 origin.
    pub origin: OriginConfig,
    /// Provisioned appliances (`[[appliance]]` tables).
    #[serde(default, rename = "appliance")]
    pub appliances: Vec<ApplianceConfig>,
    /// Health intake.
    #[serde(default)]
    pub health: HealthConfig,
    /// Popularity model.
    #[serde(default)]
    pub popularity: PopularityConfig,
    /// URL signing and key rotation.
    #[serde(default)]
    pub signing: SigningConfig,
    /// Steering answers.
    #[serde(default)]
    pub steering: SteeringConfig,
    /// The service's own files: the default SQLite store (`control.db`) lives here
    /// (default `/var/lib/edgeplane/cloud`).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Where the durable state lives.
    #[serde(default)]
    pub store: StoreConfig,
    /// The site graph (`[[site]]` tables): where clients are and which sites are near each
    /// other, for choosing IX fallbacks.
    #[serde(default, rename = "site")]
    pub sites: Vec<SiteConfig>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/edgeplane/cloud")
}

/// `[store]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite:///path/to/file.db` or `postgres://user:password@host:port/db`; default: the
    /// SQLite file `state_dir/control.db`.
    #[serde(default)]
    pub url: Option<String>,
    /// Read-only requests (steering, content steering, play manifests) read the store at most
    /// once per this many milliseconds; between reads they answer from memory, which this
    /// instance's own writes update at once. Other instances' writes are seen within this
    /// bound. 0: every request reads the store first (default 250).
    #[serde(default = "default_sync_interval_ms")]
    pub sync_interval_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            url: None,
            sync_interval_ms: default_sync_interval_ms(),
        }
    }
}

fn default_sync_interval_ms() -> u64 {
    250
}

/// One `[[site]]`: a place appliances stand (their registration's `site`), the client prefixes
/// located there, and the distances to neighbouring sites.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// Site name, as appliances register it.
    pub name: String,
    /// Client prefixes at this site (for clients no embedded appliance covers).
    #[serde(default)]
    pub prefixes: Vec<ipnet::IpNet>,
    /// Neighbouring sites and the distance to each (any unit: km, ms; edges are symmetric).
    #[serde(default)]
    pub neighbours: std::collections::BTreeMap<String, u64>,
}

/// One `[[appliance]]`: an appliance the service will accept.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplianceConfig {
    /// Appliance id (`[A-Za-z0-9._-]{1,64}`), the `{id}` in the API paths.
    pub id: String,
    /// Its bearer secret.
    pub secret: String,
    /// Id of the appliance it fills from before the origin (tiered fill).
    #[serde(default)]
    pub peer: Option<String>,
    /// Client prefixes assigned to it from here (it serves them besides its own and BGP's).
    #[serde(default)]
    pub prefixes: Vec<ipnet::IpNet>,
}

/// `[health]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// How often appliances report, seconds (default 5).
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
    /// Intervals without a report after which an appliance leaves steering (default 3).
    #[serde(default = "default_missed")]
    pub missed_limit: u64,
}

fn default_interval() -> u64 {
    5
}
fn default_missed() -> u64 {
    3
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_secs: default_interval(),
            missed_limit: default_missed(),
        }
    }
}

impl HealthConfig {
    /// Seconds of silence after which an appliance is out of steering.
    pub fn silence_limit(&self) -> u64 {
        self.interval_secs.saturating_mul(self.missed_limit)
    }
}

/// `[popularity]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PopularityConfig {
    /// Zipf exponent s: weight of rank r (0-based) ∝ 1/(r+1)^s (default 1.0; 0 = uniform).
    #[serde(default = "default_skew")]
    pub skew: f64,
    /// Titles the ranking rotates by per day (default 0: the same ranking every day).
    #[serde(default)]
    pub daily_shift: u64,
    /// Seed of the base ranking (default 0).
    #[serde(default)]
    pub seed: u64,
    /// Weight of the fleet's reported demand beside the Zipf prior in a site's ranking, 0–1
    /// (default 0.5; 0 = the prior alone).
    #[serde(default = "default_demand_weight")]
    pub demand_weight: f64,
    /// Reported demand halves in this many seconds (default 3600).
    #[serde(default = "default_demand_half_life")]
    pub demand_half_life_secs: u64,
}

fn default_demand_weight() -> f64 {
    0.5
}

fn default_demand_half_life() -> u64 {
    3600
}

fn default_skew() -> f64 {
    1.0
}

impl Default for PopularityConfig {
    fn default() -> Self {
        PopularityConfig {
            skew: default_skew(),
            daily_shift: 0,
            seed: 0,
            demand_weight: default_demand_weight(),
            demand_half_life_secs: default_demand_half_life(),
        }
    }
}

/// `[signing]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningConfig {
    /// Lifetime of a steering answer's URLs, seconds (default 3600).
    #[serde(default = "default_ttl")]
    pub url_ttl_secs: u64,
    /// A new signing key every this many seconds (default 86400).
    #[serde(default = "default_rotate")]
    pub rotate_secs: u64,
    /// IPv4 client prefix length URLs are bound to (default 24).
    #[serde(default = "default_v4")]
    pub v4_prefix_len: u8,
    /// IPv6 client prefix length URLs are bound to (default 48).
    #[serde(default = "default_v6")]
    pub v6_prefix_len: u8,
    /// Keys to start with (otherwise one random key is made at start).
    #[serde(default)]
    pub keys: Vec<SigningKey>,
}

fn default_ttl() -> u64 {
    3600
}
fn default_rotate() -> u64 {
    86400
}
fn default_v4() -> u8 {
    24
}
fn default_v6() -> u8 {
    48
}

impl Default for SigningConfig {
    fn default() -> Self {
        SigningConfig {
            url_ttl_secs: default_ttl(),
            rotate_secs: default_rotate(),
            v4_prefix_len: default_v4(),
            v6_prefix_len: default_v6(),
            keys: Vec::new(),
        }
    }
}

/// `[steering]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SteeringConfig {
    /// Most locations in an answer, the origin included (it is always the last one); default 3.
    #[serde(default = "default_max_locations")]
    pub max_locations: usize,
    /// Expected bits per second of one viewer, for the load steering adds between two health
    /// reports; default (0): the title's highest rendition bitrate.
    #[serde(default)]
    pub viewer_bps: u64,
    /// The control service's URL as players reach it (for the origin location's
    /// `/v1/origin/tok/…` redirects); default: `http://` + the steering request's `Host`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// The `TTL` of content steering answers (`/v1/content-steering`): how often players ask
    /// again, in seconds; default 10.
    #[serde(default = "default_reload_secs")]
    pub reload_secs: u64,
    /// Where the player page's scripts are (`/player/assets/…`): the `node_modules` directory
    /// scripts/setup.sh installs dashjs and hls.js into.
    #[serde(default = "default_player_assets")]
    pub player_assets: std::path::PathBuf,
}

fn default_reload_secs() -> u64 {
    10
}

fn default_player_assets() -> std::path::PathBuf {
    "/var/cache/edgeplane/npm/node_modules".into()
}

fn default_max_locations() -> usize {
    3
}

impl Default for SteeringConfig {
    fn default() -> Self {
        SteeringConfig {
            max_locations: default_max_locations(),
            viewer_bps: 0,
            public_url: None,
            reload_secs: default_reload_secs(),
            player_assets: default_player_assets(),
        }
    }
}

impl CloudConfig {
    /// Parses and validates a configuration.
    pub fn from_toml(text: &str) -> Result<CloudConfig, ConfigError> {
        let cfg: CloudConfig =
            toml::from_str(text).map_err(|source| ConfigError::Parse { path: None, source })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<CloudConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        CloudConfig::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: Some(path.display().to_string()),
                source,
            },
            ConfigError::Invalid(m) => ConfigError::Invalid(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Checks values serde cannot: ranges, uniqueness, references.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.admin_token.is_empty() {
            return bad("admin_token must not be empty".into());
        }
        if self.origin.bucket.is_empty() {
            return bad("origin.bucket must not be empty".into());
        }
        if let Some(ep) = &self.origin.endpoint {
            if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                return bad(format!(
                    "origin.endpoint {ep:?} must start with http:// or https://"
                ));
            }
            if ep.starts_with("http://") && !self.origin.allow_http {
                return bad(format!(
                    "origin.endpoint {ep:?} is plain http: set origin.allow_http = true"
                ));
            }
        }
        if self.origin.access_key_id.is_some() != self.origin.secret_access_key.is_some() {
            return bad(
                "origin.access_key_id and origin.secret_access_key go together (set both or neither)"
                    .into(),
            );
        }
        let mut ids = HashSet::new();
        for (i, a) in self.appliances.iter().enumerate() {
            if !valid_key_id(&a.id) {
                return bad(format!(
                    "appliance[{i}].id {:?} must match [A-Za-z0-9._-]{{1,64}}",
                    a.id
                ));
            }
            if !ids.insert(a.id.as_str()) {
                return bad(format!("appliance[{i}].id {:?} is a duplicate", a.id));
            }
            if a.secret.is_empty() {
                return bad(format!("appliance[{i}].secret must not be empty"));
            }
        }
        for (i, a) in self.appliances.iter().enumerate() {
            if let Some(p) = &a.peer {
                if p == &a.id {
                    return bad(format!(
                        "appliance[{i}].peer must not be the appliance itself"
                    ));
                }
                if !ids.contains(p.as_str()) {
                    return bad(format!(
                        "appliance[{i}].peer {p:?} is not a provisioned appliance id"
                    ));
                }
            }
        }
        if self.health.interval_secs == 0 {
            return bad("health.interval_secs must be at least 1".into());
        }
        if self.health.missed_limit == 0 {
            return bad("health.missed_limit must be at least 1".into());
        }
        let skew = self.popularity.skew;
        if !skew.is_finite() || !(0.0..=10.0).contains(&skew) {
            return bad(format!("popularity.skew {skew} must be within 0..=10"));
        }
        let w = self.popularity.demand_weight;
        if !w.is_finite() || !(0.0..=1.0).contains(&w) {
            return bad(format!("popularity.demand_weight {w} must be within 0..=1"));
        }
        if self.popularity.demand_half_life_secs == 0 {
            return bad("popularity.demand_half_life_secs must be at least 1".into());
        }
        let s = &self.signing;
        if s.url_ttl_secs == 0 {
            return bad("signing.url_ttl_secs must be at least 1".into());
        }
        if s.url_ttl_secs > 7 * 86400 {
            return bad("signing.url_ttl_secs must be at most 604800 (S3 presigned URLs last at most 7 days)".into());
        }
        if s.rotate_secs == 0 {
            return bad("signing.rotate_secs must be at least 1".into());
        }
        if s.v4_prefix_len > 32 {
            return bad(format!(
                "signing.v4_prefix_len {} must be at most 32",
                s.v4_prefix_len
            ));
        }
        if s.v6_prefix_len > 128 {
            return bad(format!(
                "signing.v6_prefix_len {} must be at most 128",
                s.v6_prefix_len
            ));
        }
        let mut kids = HashSet::new();
        for (i, k) in s.keys.iter().enumerate() {
            if !valid_key_id(&k.id) {
                return bad(format!(
                    "signing.keys[{i}].id {:?} must match [A-Za-z0-9._-]{{1,64}}",
                    k.id
                ));
            }
            if !kids.insert(k.id.as_str()) {
                return bad(format!("signing.keys[{i}].id {:?} is a duplicate", k.id));
            }
        }
        if let Some(url) = &self.store.url {
            let ok = url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || (url.starts_with("sqlite://") && url.len() > "sqlite://".len())
                || url == "sqlite::memory:";
            if !ok {
                return bad(format!(
                    "store.url {url:?} must be sqlite:///path/to/file.db or postgres://user@host/db"
                ));
            }
        }
        if self.store.sync_interval_ms > 60_000 {
            return bad(format!(
                "store.sync_interval_ms = {} must be at most 60000 (a minute)",
                self.store.sync_interval_ms
            ));
        }
        if self.steering.max_locations == 0 {
            return bad("steering.max_locations must be at least 1 (the origin)".into());
        }
        if let Some(u) = &self.steering.public_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return bad(format!(
                    "steering.public_url {u:?} must start with http:// or https://"
                ));
            }
        }
        let mut names = HashSet::new();
        for (i, site) in self.sites.iter().enumerate() {
            if site.name.is_empty() {
                return bad(format!("site[{i}].name must not be empty"));
            }
            if !names.insert(site.name.as_str()) {
                return bad(format!("site[{i}].name {:?} is a duplicate", site.name));
            }
        }
        for (i, site) in self.sites.iter().enumerate() {
            for n in site.neighbours.keys() {
                if n == &site.name {
                    return bad(format!(
                        "site[{i}].neighbours must not name the site itself"
                    ));
                }
                if !names.contains(n.as_str()) {
                    return bad(format!(
                        "site[{i}].neighbours: {n:?} is not a [[site]] name"
                    ));
                }
            }
            for p in &site.prefixes {
                if p.trunc() != *p {
                    return bad(format!("site[{i}].prefixes: {p} has host bits set"));
                }
            }
        }
        Ok(())
    }

    /// The provisioned appliance with this id.
    pub fn appliance(&self, id: &str) -> Option<&ApplianceConfig> {
        self.appliances.iter().find(|a| a.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen = "127.0.0.1:0"
admin_token = "adm"

[origin]
endpoint = "http://127.0.0.1:5000"
bucket = "media"
access_key_id = "test"
secret_access_key = "test"
allow_http = true

[[appliance]]
id = "isp1-a"
secret = "s1"
peer = "ix-1"

[[appliance]]
id = "ix-1"
secret = "s2"
"#;

    fn err(text: &str) -> String {
        CloudConfig::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults() {
        let c = CloudConfig::from_toml(GOOD).unwrap();
        assert_eq!(c.appliances.len(), 2);
        assert_eq!(c.appliances[0].peer.as_deref(), Some("ix-1"));
        assert_eq!(c.health.interval_secs, 5);
        assert_eq!(c.health.missed_limit, 3);
        assert_eq!(c.health.silence_limit(), 15);
        assert_eq!(c.popularity.skew, 1.0);
        assert_eq!(c.signing.url_ttl_secs, 3600);
        assert_eq!(c.signing.rotate_secs, 86400);
        assert_eq!(c.signing.v4_prefix_len, 24);
        assert_eq!(c.signing.v6_prefix_len, 48);
        assert_eq!(c.steering.max_locations, 3);
        assert_eq!(c.origin.region, "us-east-1");
        assert_eq!(c.store.sync_interval_ms, 250);
        let c =
            CloudConfig::from_toml(&format!("{GOOD}\n[store]\nsync_interval_ms = 0\n")).unwrap();
        assert_eq!(c.store.sync_interval_ms, 0);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err(&GOOD.replace("[health]", "").replace(
            "allow_http = true",
            "allow_http = true\nbucket_name = \"x\"",
        ));
        assert!(e.contains("bucket_name"), "{e}");
        let e = err(&format!("{GOOD}\n[health]\ninterval = 3\n"));
        assert!(e.contains("interval"), "{e}");
    }

    #[test]
    fn a_file_is_named_and_toml_is_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cloud.toml");
        let e = CloudConfig::load(&path).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
        std::fs::write(
            &path,
            format!(
                "{GOOD}
admin_tokn = 1
"
            ),
        )
        .unwrap();
        let e = CloudConfig::load(&path).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with(&format!("{}: ", path.display())), "{text}");
        assert!(text.contains("admin_tokn"), "{text}");
        let source = std::error::Error::source(&e).expect("toml's error");
        assert!(text.ends_with(&source.to_string()), "{text}");
        // Text that came from no file is not prefixed.
        assert_eq!(
            err(&format!(
                "{GOOD}
admin_tokn = 1
"
            )),
            source.to_string()
        );
    }

    #[test]
    fn wrong_type_and_missing_key_are_named() {
        let e = err(&format!("{GOOD}\n[health]\ninterval_secs = \"5\"\n"));
        assert!(e.contains("interval_secs"), "{e}");
        let e = err(&GOOD.replace("admin_token = \"adm\"", ""));
        assert!(e.contains("admin_token"), "{e}");
    }

    #[test]
    fn invalid_values_are_named() {
        let cases = [
            (
                GOOD.replace("peer = \"ix-1\"", "peer = \"nope\""),
                "appliance[0].peer",
            ),
            (
                GOOD.replace("id = \"ix-1\"", "id = \"isp1-a\"")
                    .replace("peer = \"ix-1\"", ""),
                "duplicate",
            ),
            (
                GOOD.replace("secret = \"s2\"", "secret = \"\""),
                "appliance[1].secret",
            ),
            (GOOD.replace("allow_http = true", ""), "allow_http"),
            (
                GOOD.replace("secret_access_key = \"test\"", ""),
                "secret_access_key",
            ),
            (
                format!("{GOOD}\n[signing]\nv4_prefix_len = 33\n"),
                "signing.v4_prefix_len",
            ),
            (
                format!("{GOOD}\n[steering]\nmax_locations = 0\n"),
                "steering.max_locations",
            ),
            (
                format!("{GOOD}\n[store]\nsync_interval_ms = 60001\n"),
                "store.sync_interval_ms",
            ),
            (
                format!("{GOOD}\n[health]\ninterval_secs = 0\n"),
                "health.interval_secs",
            ),
            (
                format!("{GOOD}\n[popularity]\nskew = -1.0\n"),
                "popularity.skew",
            ),
            (
                GOOD.replace("id = \"ix-1\"", "id = \"ix 1\""),
                "appliance[1].id",
            ),
        ];
        for (text, want) in cases {
            let e = err(&text);
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn initial_keys() {
        let text = format!(
            "{GOOD}\n[signing]\nurl_ttl_secs = 60\n[[signing.keys]]\nid = \"k1\"\nsecret = \"{}\"\nnot_after = 99\n",
            "A".repeat(43)
        );
        let c = CloudConfig::from_toml(&text).unwrap();
        assert_eq!(c.signing.keys.len(), 1);
        assert_eq!(c.signing.keys[0].id, "k1");
        assert_eq!(c.signing.url_ttl_secs, 60);
    }
}
