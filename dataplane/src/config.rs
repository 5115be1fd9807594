//! The appliance's one config file (TOML), its defaults and its validation.
//!
//! Every key and its default is documented in `docs/config.md`; keep the two in step. Validation
//! turns every user mistake into one [`ConfigError`] that names the key, so `edgeplane serve`
//! can exit with one line an operator can act on.
//!
//! Pure: [`Config::parse`] judges the text alone (types, ranges, names, duplicates, listener
//! and port conflicts, SNI name syntax) and touches neither the filesystem nor the host. What
//! only the host can answer (the CPUs, the tier directories, the certificate and key files) is
//! the second step, [`crate::host`]: [`Config::check_host`], and [`Config::load`] = read the
//! file + [`Config::parse`] + [`Config::check_host`].

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// `[xdp]` is the XDP crate's section; the data plane validates it against its listeners.
pub use edgeplane_xdp::config::{XdpConfig, XdpMode, XdpSteering, MAX_PREFIXES_LIMIT};

/// A config problem, naming the key (or file position) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key (`tier[1].path`) or `FILE:LINE` for syntax errors.
    pub key: String,
    /// What is wrong, in words an operator can act on.
    pub problem: String,
}

impl ConfigError {
    /// A problem with `key`.
    pub fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

impl ConfigError {
    /// A TOML syntax or type error in `text` (from the file `origin`), naming the dotted key
    /// and the line it is on. Other sections of the same file (the agent's) use it too.
    pub fn from_toml(e: &toml::de::Error, text: &str, origin: &str) -> ConfigError {
        let msg = e.message().replace('\n', " ");
        let key = match e.span() {
            Some(span) => {
                let line = text.as_bytes()[..span.start.min(text.len())]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
                    + 1;
                match key_at(text, span.start) {
                    Some(key) => format!("{key} ({origin} line {line})"),
                    None => format!("{origin}:{line}"),
                }
            }
            None => origin.to_string(),
        };
        ConfigError::new(key, msg)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config error: {}: {}", self.key, self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Serving executors, one pinned per CPU (`cpus` picks which; default `0..cores`).
    #[serde(default = "default_cores")]
    pub cores: usize,
    /// CPUs to pin the executors to; must have `cores` entries when set.
    #[serde(default)]
    pub cpus: Option<Vec<usize>>,
    /// The client-facing HTTP listener.
    #[serde(default)]
    pub http: HttpConfig,
    /// The client-facing HTTPS listener; absent = no HTTPS.
    #[serde(default)]
    pub https: Option<HttpsConfig>,
    /// The operator-facing admin listener (`/metrics`, `/healthz`, `POST /reload`).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Request and connection limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Disk I/O behaviour.
    #[serde(default)]
    pub io: IoConfig,
    /// Content tiers, searched in the order given.
    #[serde(default, rename = "tier")]
    pub tiers: Vec<TierConfig>,
    /// The XDP served-prefix filter and flow steering; absent: no eBPF at all.
    #[serde(default)]
    pub xdp: Option<XdpConfig>,
    /// Signed URLs (on by default: unsigned requests are refused).
    #[serde(default)]
    pub signing: SigningConfig,
    /// Which clients may connect at all, without XDP.
    #[serde(default)]
    pub access: AccessConfig,
    /// `[agent]`: the agent's section of the same file (`edgeplane agent`: fill, health,
    /// prefixes, keys; docs/agent.md). The agent parses and validates it; the data plane only
    /// lets it stand.
    #[serde(default, rename = "agent")]
    _agent: Option<serde::de::IgnoredAny>,
    /// Who `edgeplane serve` runs as once it has bound its sockets and loaded its programs.
    #[serde(default)]
    pub process: ProcessConfig,
    /// `[numa]`: where executors and cold reads run on a NUMA host (`crate::placement`).
    #[serde(default)]
    pub numa: NumaConfig,
    /// `[upstream]`: pull-through on a miss (`crate::pull`); absent: a miss is a 404.
    #[serde(default)]
    pub upstream: Option<UpstreamConfig>,
}

/// `[upstream]`: where misses are fetched from and how (docs/config.md#upstream).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `http://host[:port][/prefix]`: a miss for `id` is `GET {url}/{id}`.
    pub url: String,
    /// Name of the `[[tier]]` pulled objects are stored in.
    pub tier: String,
    /// Bytes pull-through may keep in the tier (an integer, or a string with a K/M/G/T
    /// suffix, powers of 1024); absent: the tier filesystem's free space at start minus 5 %
    /// of its size (a reserve for fill).
    #[serde(default)]
    pub capacity: Option<ByteSize>,
    /// Upstream requests in flight at once, process-wide (there is one upstream host).
    #[serde(default = "default_max_upstream_fetches")]
    pub max_upstream_fetches: usize,
    /// Slice size for upstream range requests (bytes or a K/M/G suffix, default 2 MiB).
    #[serde(default = "default_slice_size")]
    pub slice_size: ByteSize,
    /// Upstream slice requests that may wait for a free fetch slot; past it a new miss
    /// gets 503 with `Retry-After`.
    #[serde(default = "default_max_queued_fetches")]
    pub max_queued_fetches: usize,
    /// Connect and per-read timeout (ms) on the upstream; past it the client gets 504.
    #[serde(default = "default_upstream_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive upstream failures that open the circuit breaker (misses then get 503
    /// until `breaker_cooldown_ms` has passed and a trial request succeeds).
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long (ms) the breaker stays open before one trial request.
    #[serde(default = "default_breaker_cooldown_ms")]
    pub breaker_cooldown_ms: u64,
}

/// A byte count: an integer, or a string such as `"2M"` or `"500G"` (powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"123"`, `"64K"`, `"2m"`, `"1.5G"` is not accepted (integers only).
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let t = text.trim();
        let (digits, mult) = match t.as_bytes().last().map(u8::to_ascii_uppercase) {
            Some(b'K') => (&t[..t.len() - 1], 1u64 << 10),
            Some(b'M') => (&t[..t.len() - 1], 1 << 20),
            Some(b'G') => (&t[..t.len() - 1], 1 << 30),
            Some(b'T') => (&t[..t.len() - 1], 1 << 40),
            _ => (t, 1),
        };
        let n: u64 = digits.trim().parse().map_err(|_| {
            format!("{text:?} is not a byte count (e.g. 2097152, \"2M\", \"500G\")")
        })?;
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("{text:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

fn default_max_upstream_fetches() -> usize {
    16
}
fn default_slice_size() -> ByteSize {
    ByteSize(2 << 20)
}
fn default_max_queued_fetches() -> usize {
    1024
}
fn default_upstream_timeout_ms() -> u64 {
    10_000
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_cooldown_ms() -> u64 {
    5_000
}

impl UpstreamConfig {
    /// The upstream URL without a trailing slash.
    pub fn base(&self) -> &str {
        self.url.trim_end_matches('/')
    }

    fn validate(&self, tiers: &[TierConfig]) -> Result<(), ConfigError> {
        let rest = self
            .url
            .strip_prefix("http://")
            .or_else(|| self.url.strip_prefix("https://"));
        match rest {
            Some(r) if !r.is_empty() && !r.starts_with('/') => {}
            _ => {
                return Err(ConfigError::new(
                    "upstream.url",
                    format!(
                        "{:?} must be http://host[:port][/prefix] (or https://)",
                        self.url
                    ),
                ))
            }
        }
        if !tiers.iter().any(|t| t.name == self.tier) {
            return Err(ConfigError::new(
                "upstream.tier",
                format!("{:?} is not the name of a [[tier]]", self.tier),
            ));
        }
        if self.max_upstream_fetches == 0 || self.max_upstream_fetches > 1024 {
            return Err(ConfigError::new(
                "upstream.max_upstream_fetches",
                "must be 1 to 1024",
            ));
        }
        if self.slice_size.0 < 64 * 1024 || self.slice_size.0 > 1 << 30 {
            return Err(ConfigError::new("upstream.slice_size", "must be 64K to 1G"));
        }
        if self.timeout_ms == 0 {
            return Err(ConfigError::new("upstream.timeout_ms", "must be above 0"));
        }
        if self.breaker_failures == 0 {
            return Err(ConfigError::new(
                "upstream.breaker_failures",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// `[numa]`
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumaConfig {
    /// `auto`: executors on the serving NICs' nodes, cold reads on each tier's disk node;
    /// `off`: executors on CPUs `0..cores`, cold reads unbound (as on a one-node host).
    #[serde(default)]
    pub placement: NumaPlacement,
    /// Executors per node, by node number (`[0, 8]`: 8 on node 1); must add up to `cores`.
    #[serde(default)]
    pub cores_per_node: Option<Vec<usize>>,
    /// The NICs whose nodes executors follow; absent: `xdp.interfaces`.
    #[serde(default)]
    pub interfaces: Option<Vec<String>>,
}

/// `numa.placement`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NumaPlacement {
    /// Follow the NICs' and disks' nodes.
    #[default]
    Auto,
    /// Ignore the topology.
    Off,
}

impl Config {
    /// The NICs whose nodes the executors follow: `numa.interfaces`, else `xdp.interfaces`.
    pub fn numa_interfaces(&self) -> Vec<String> {
        match (&self.numa.interfaces, &self.xdp) {
            (Some(i), _) => i.clone(),
            (None, Some(x)) => x.interfaces.clone(),
            (None, None) => Vec::new(),
        }
    }

    /// `[numa]` and `tier.numa_node`: what can be judged without looking at the host (the
    /// nodes' existence is judged by `crate::placement::plan` at start and by `check`).
    pub fn validate_numa(&self) -> Result<(), ConfigError> {
        /// Linux's largest MAX_NUMNODES (CONFIG_NODES_SHIFT = 10).
        const MAX_NODES: usize = 1024;
        if let Some(per_node) = &self.numa.cores_per_node {
            if self.cpus.is_some() {
                return Err(ConfigError::new(
                    "numa.cores_per_node",
                    "cannot be combined with `cpus` (which already names every CPU)",
                ));
            }
            if self.numa.placement == NumaPlacement::Off {
                return Err(ConfigError::new(
                    "numa.cores_per_node",
                    "needs numa.placement = \"auto\"",
                ));
            }
            if per_node.len() > MAX_NODES {
                return Err(ConfigError::new(
                    "numa.cores_per_node",
                    "lists more than 1024 nodes",
                ));
            }
            let sum: usize = per_node.iter().sum();
            if sum != self.cores {
                return Err(ConfigError::new(
                    "numa.cores_per_node",
                    format!("adds up to {sum} but cores = {}", self.cores),
                ));
            }
        }
        if let Some(ifaces) = &self.numa.interfaces {
            for (i, name) in ifaces.iter().enumerate() {
                if name.is_empty()
                    || name.len() > 15
                    || name.contains(['/', ':'])
                    || name.chars().any(char::is_whitespace)
                {
                    return Err(ConfigError::new(
                        format!("numa.interfaces[{i}]"),
                        format!("{name:?} is not an interface name (1-15 characters, no '/', ':' or spaces)"),
                    ));
                }
            }
        }
        for (i, tier) in self.tiers.iter().enumerate() {
            if tier.numa_node.is_some_and(|n| n >= MAX_NODES) {
                return Err(ConfigError::new(
                    format!("tier[{i}].numa_node"),
                    "must be a node number below 1024",
                ));
            }
        }
        Ok(())
    }
}

/// `[process]`
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    /// User to switch to after start-up (when started as root); absent: stay as started.
    #[serde(default)]
    pub user: Option<String>,
    /// Group to switch to; absent: the user's primary group.
    #[serde(default)]
    pub group: Option<String>,
}

/// `[signing]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningConfig {
    /// Check the signature of every object request (GET, HEAD) and answer 403 without a valid
    /// one. On by default: an appliance must not serve to whoever finds it.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// JSON keys file (`{"keys": [{"id", "secret", "not_after"}]}`), written by the agent and
    /// re-read on reload. Missing or invalid with signing on: every object request gets 403.
    #[serde(default = "default_keys_file")]
    pub keys_file: PathBuf,
}

impl Default for SigningConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            keys_file: default_keys_file(),
        }
    }
}

/// `[access]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// JSON file (`{"prefixes": ["203.0.113.0/24", ...]}`) of the client networks that may
    /// connect; connections from elsewhere are closed right after accept. Absent: everyone may
    /// connect. Set but missing or invalid: no one may (fail closed).
    #[serde(default)]
    pub prefixes_file: Option<PathBuf>,
}

/// `[http]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address the serving executors listen on (each with its own `SO_REUSEPORT` socket).
    #[serde(default = "default_http_listen")]
    pub listen: SocketAddr,
    /// Send CORS headers (`Access-Control-Allow-Origin: *`) so browser players can fetch ranges.
    #[serde(default = "default_true")]
    pub cors: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_http_listen(),
            cors: true,
        }
    }
}

/// `[https]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpsConfig {
    /// Address the serving executors listen on for TLS (each with its own `SO_REUSEPORT` socket).
    #[serde(default = "default_https_listen")]
    pub listen: SocketAddr,
    /// PEM file with the default certificate chain (leaf first), used when the client sends no
    /// SNI name or one no `[[https.sni]]` entry matches.
    pub cert: PathBuf,
    /// PEM file with the private key (RSA or ECDSA; PKCS#8, PKCS#1 or SEC1) of `cert`.
    pub key: PathBuf,
    /// Further certificates, chosen by the SNI name the client asks for.
    #[serde(default)]
    pub sni: Vec<SniConfig>,
    /// Whether connections are handed to kernel TLS after the handshake.
    #[serde(default)]
    pub ktls: KtlsSetting,
}

/// `https.ktls`: hand connections to kernel TLS where the kernel can take them (`auto`), or
/// always encrypt in user space (`off`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KtlsSetting {
    /// Kernel TLS when the `tls` module is there, else user space.
    #[default]
    Auto,
    /// Always user space (rustls).
    Off,
}

/// `[[https.sni]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniConfig {
    /// Host name this certificate answers for: exact (`cdn.example.net`) or one leading
    /// wildcard label (`*.example.net`, which matches `a.example.net` but not `example.net`).
    pub name: String,
    /// PEM file with the certificate chain (leaf first).
    pub cert: PathBuf,
    /// PEM file with its private key.
    pub key: PathBuf,
}

/// An `[[https.sni]]` name: a host name, or `*.` and a host name (one wildcard label).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniName {
    wildcard: bool,
    /// Lower case, without the `*.`.
    base: String,
}

impl SniName {
    /// Parses a configured name; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<SniName, String> {
        let (wildcard, base) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let labels_ok = !base.is_empty()
            && base.len() <= 253
            && base.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !labels_ok {
            return Err(format!(
                "{text:?} is not a host name (letters, digits and '-' in dot-separated labels, \
                 optionally starting with \"*.\")"
            ));
        }
        if wildcard && !base.contains('.') {
            return Err(format!(
                "{text:?}: a wildcard needs at least two labels after \"*.\""
            ));
        }
        Ok(SniName {
            wildcard,
            base: base.to_ascii_lowercase(),
        })
    }

    /// Whether this is a `*.` name (one wildcard label).
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// Whether `host` (as sent in SNI) is covered by this name.
    pub fn matches(&self, host: &str) -> bool {
        if !self.wildcard {
            return host.eq_ignore_ascii_case(&self.base);
        }
        match host.split_once('.') {
            Some((first, rest)) => !first.is_empty() && rest.eq_ignore_ascii_case(&self.base),
            None => false,
        }
    }
}

impl fmt::Display for SniName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "\"*.{}\"", self.base)
        } else {
            write!(f, "\"{}\"", self.base)
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener; loopback by default because it can trigger reloads.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request head (request line + headers) in bytes; larger → 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most header lines in a request; more → 431.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Longest request target in bytes; longer → 414.
    #[serde(default = "default_max_uri_bytes")]
    pub max_uri_bytes: usize,
    /// Time allowed to receive a whole request head once its first byte arrived (slowloris).
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// Time a keep-alive connection may sit idle between requests.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Time allowed for the client to accept more body bytes before the connection is dropped.
    #[serde(default = "default_send_timeout_ms")]
    pub send_timeout_ms: u64,
    /// Open client connections for the whole process; over it → 503 and close.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open connections from one client IP address; over it → 503 and close.
    #[serde(default = "default_max_connections_per_client")]
    pub max_connections_per_client: usize,
    /// Requests served on one connection before it is closed (0 = unlimited).
    #[serde(default)]
    pub max_requests_per_connection: u64,
    /// On SIGTERM, time allowed for in-flight responses to finish.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            max_uri_bytes: default_max_uri_bytes(),
            header_read_timeout_ms: default_header_read_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            send_timeout_ms: default_send_timeout_ms(),
            max_connections: default_max_connections(),
            max_connections_per_client: default_max_connections_per_client(),
            max_requests_per_connection: 0,
            shutdown_grace_ms: default_shutdown_grace_ms(),
        }
    }
}

impl LimitsConfig {
    /// [`Self::header_read_timeout_ms`] as a duration.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }
    /// [`Self::idle_timeout_ms`] as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    /// [`Self::send_timeout_ms`] as a duration.
    pub fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.send_timeout_ms)
    }
    /// [`Self::shutdown_grace_ms`] as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

/// `[io]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoConfig {
    /// Check page-cache residency (`mincore`) before `sendfile`, and read cold ranges on the
    /// blocking pool first, so a cold disk never stalls an executor. Turn off only to measure.
    #[serde(default = "default_true")]
    pub residency_check: bool,
    /// Threads per executor that read cold ranges into the page cache.
    #[serde(default = "default_cold_read_threads")]
    pub cold_read_threads: usize,
    /// Locked memory (KiB) each executor registers with io_uring. `0` = fit the process's
    /// RLIMIT_MEMLOCK (the data plane does no O_DIRECT I/O, so little is needed).
    #[serde(default)]
    pub io_memory_kib: usize,
    /// Most open files (and their mappings) cached per executor.
    #[serde(default = "default_open_file_cache")]
    pub open_file_cache: usize,
    /// How often (ms) each tier directory is checked (exists, is a directory, can be listed);
    /// an I/O error while serving triggers a check at once. A tier that fails is taken out of
    /// the catalog until it passes again.
    #[serde(default = "default_tier_check_interval_ms")]
    pub tier_check_interval_ms: u64,
    /// How the serving sockets wait until a request arrives (read at start).
    #[serde(default)]
    pub readiness: ReadinessSetting,
    /// A plain-HTTP keep-alive connection idle this long (ms) is parked: its task, buffers and
    /// io_uring poll are freed and its socket waits in the core's epoll set until the client
    /// sends again (docs/design.md, "Idle connections stay cheap"). `0`: never park.
    #[serde(default = "default_park_idle_after_ms")]
    pub park_idle_after_ms: u64,
}

/// `io.readiness`: how a connection waits for its next request bytes (see docs/design.md,
/// "Socket readiness").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadinessSetting {
    /// `multishot` where the kernel has multishot poll (Linux 5.13+), else `read-first`.
    #[default]
    Auto,
    /// Read first; on `EAGAIN` wait on one multishot io_uring poll armed for the socket's life.
    Multishot,
    /// Read first; on `EAGAIN` arm a one-shot io_uring poll.
    ReadFirst,
    /// glommio 0.9's own path: a one-shot poll armed after every read, waited on before the
    /// next `recv`.
    Legacy,
}

impl ReadinessSetting {
    /// The config value, as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadinessSetting::Auto => "auto",
            ReadinessSetting::Multishot => "multishot",
            ReadinessSetting::ReadFirst => "read-first",
            ReadinessSetting::Legacy => "legacy",
        }
    }
}

impl IoConfig {
    /// [`Self::tier_check_interval_ms`] as a duration.
    pub fn tier_check_interval(&self) -> Duration {
        Duration::from_millis(self.tier_check_interval_ms)
    }
    /// [`Self::park_idle_after_ms`] as a duration; `None` when parking is off.
    pub fn park_idle_after(&self) -> Option<Duration> {
        (self.park_idle_after_ms > 0).then(|| Duration::from_millis(self.park_idle_after_ms))
    }
}

impl Default for IoConfig {
    fn default() -> Self {
        Self {
            residency_check: true,
            cold_read_threads: default_cold_read_threads(),
            io_memory_kib: 0,
            open_file_cache: default_open_file_cache(),
            tier_check_interval_ms: default_tier_check_interval_ms(),
            readiness: ReadinessSetting::default(),
            park_idle_after_ms: default_park_idle_after_ms(),
        }
    }
}

/// The two kinds of content tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TierKind {
    /// NVMe: the hot titles.
    Flash,
    /// HDD: the long tail.
    Storage,
}

impl TierKind {
    /// The name used in config and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TierKind::Flash => "flash",
            TierKind::Storage => "storage",
        }
    }
}

/// `[[tier]]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// Name used in metrics and logs (`[A-Za-z0-9_-]`, unique).
    pub name: String,
    /// `flash` or `storage`.
    pub kind: TierKind,
    /// Directory holding one file per object, named by content id.
    pub path: PathBuf,
    /// The NUMA node of the tier's disk; absent: what sysfs says (`crate::topology`).
    #[serde(default)]
    pub numa_node: Option<usize>,
}

fn default_cores() -> usize {
    1
}
fn default_true() -> bool {
    true
}
fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_https_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
fn default_max_header_bytes() -> usize {
    8192
}
fn default_max_headers() -> usize {
    64
}
fn default_max_uri_bytes() -> usize {
    2048
}
fn default_header_read_timeout_ms() -> u64 {
    10_000
}
fn default_idle_timeout_ms() -> u64 {
    60_000
}
fn default_send_timeout_ms() -> u64 {
    60_000
}
fn default_max_connections() -> usize {
    100_000
}
fn default_max_connections_per_client() -> usize {
    256
}
fn default_shutdown_grace_ms() -> u64 {
    10_000
}
fn default_cold_read_threads() -> usize {
    4
}
fn default_open_file_cache() -> usize {
    4096
}
fn default_park_idle_after_ms() -> u64 {
    1000
}
fn default_tier_check_interval_ms() -> u64 {
    1000
}
fn default_keys_file() -> PathBuf {
    PathBuf::from("/var/lib/edgeplane/signing-keys.json")
}

impl Config {
    /// Parses and validates config text; `origin` names the file in errors. Pure: nothing is
    /// read from the host ([`Config::check_host`] is that step).
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config =
            toml::from_str(text).map_err(|e| ConfigError::from_toml(&e, text, origin))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every constraint the types alone do not express and the text alone can judge
    /// (pure: whether the host has those CPUs, directories and files is
    /// [`Config::check_host`]'s question).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cores == 0 {
            return Err(ConfigError::new("cores", "must be at least 1"));
        }
        if let Some(cpus) = &self.cpus {
            if cpus.len() != self.cores {
                return Err(ConfigError::new(
                    "cpus",
                    format!("has {} entries but cores = {}", cpus.len(), self.cores),
                ));
            }
        }
        let l = &self.limits;
        if l.max_header_bytes < 256 {
            return Err(ConfigError::new(
                "limits.max_header_bytes",
                "must be at least 256",
            ));
        }
        if l.max_headers == 0 {
            return Err(ConfigError::new("limits.max_headers", "must be at least 1"));
        }
        if l.max_uri_bytes < 16 || l.max_uri_bytes >= l.max_header_bytes {
            return Err(ConfigError::new(
                "limits.max_uri_bytes",
                "must be at least 16 and below limits.max_header_bytes",
            ));
        }
        for (key, v) in [
            ("limits.header_read_timeout_ms", l.header_read_timeout_ms),
            ("limits.idle_timeout_ms", l.idle_timeout_ms),
            ("limits.send_timeout_ms", l.send_timeout_ms),
        ] {
            if v == 0 {
                return Err(ConfigError::new(key, "must be above 0"));
            }
        }
        if l.max_connections == 0 || l.max_connections_per_client == 0 {
            return Err(ConfigError::new(
                "limits.max_connections",
                "limits must be at least 1",
            ));
        }
        if self.io.cold_read_threads == 0 {
            return Err(ConfigError::new(
                "io.cold_read_threads",
                "must be at least 1",
            ));
        }
        if self.io.open_file_cache == 0 {
            return Err(ConfigError::new("io.open_file_cache", "must be at least 1"));
        }
        if self.io.tier_check_interval_ms == 0 {
            return Err(ConfigError::new(
                "io.tier_check_interval_ms",
                "must be above 0",
            ));
        }
        if self.signing.enabled && self.signing.keys_file.as_os_str().is_empty() {
            return Err(ConfigError::new(
                "signing.keys_file",
                "must name a file (or set signing.enabled = false)",
            ));
        }
        if let Some(p) = &self.access.prefixes_file {
            if p.as_os_str().is_empty() {
                return Err(ConfigError::new(
                    "access.prefixes_file",
                    "must name a file (leave it out to let every client connect)",
                ));
            }
        }
        for (key, name) in [
            ("process.user", &self.process.user),
            ("process.group", &self.process.group),
        ] {
            if let Some(name) = name {
                let valid = !name.is_empty()
                    && name.len() <= 32
                    && !name.starts_with('-')
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
                if !valid {
                    return Err(ConfigError::new(
                        key,
                        format!("{name:?} is not a user or group name"),
                    ));
                }
            }
        }
        if self.process.group.is_some() && self.process.user.is_none() {
            return Err(ConfigError::new(
                "process.group",
                "needs process.user (the process switches user and group together)",
            ));
        }
        if self.tiers.is_empty() {
            return Err(ConfigError::new(
                "tier",
                "no [[tier]] configured: add at least one with name, kind and path",
            ));
        }
        for (i, tier) in self.tiers.iter().enumerate() {
            let valid_name = !tier.name.is_empty()
                && tier.name.len() <= 64
                && tier
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid_name {
                return Err(ConfigError::new(
                    format!("tier[{i}].name"),
                    format!("{:?} must be 1-64 characters of [A-Za-z0-9_-]", tier.name),
                ));
            }
            if self.tiers[..i].iter().any(|t| t.name == tier.name) {
                return Err(ConfigError::new(
                    format!("tier[{i}].name"),
                    format!("{:?} is used by another tier", tier.name),
                ));
            }
        }
        if let Some(u) = &self.upstream {
            u.validate(&self.tiers)?;
        }
        if self.http.listen == self.admin.listen && self.http.listen.port() != 0 {
            return Err(ConfigError::new(
                "admin.listen",
                "must differ from http.listen",
            ));
        }
        if let Some(https) = &self.https {
            self.validate_https(https)?;
        }
        if let Some(xdp) = &self.xdp {
            self.validate_xdp(xdp)?;
        }
        self.validate_numa()?;
        Ok(())
    }

    fn validate_xdp(&self, xdp: &XdpConfig) -> Result<(), ConfigError> {
        for (i, name) in xdp.interfaces.iter().enumerate() {
            let valid = !name.is_empty()
                && name.len() < 16
                && !name.contains(['/', ':'])
                && !name.chars().any(char::is_whitespace)
                && name != "."
                && name != "..";
            if !valid {
                return Err(ConfigError::new(
                    format!("xdp.interfaces[{i}]"),
                    format!("{name:?} is not an interface name (1-15 characters, no '/', ':' or spaces)"),
                ));
            }
            if xdp.interfaces[..i].contains(name) {
                return Err(ConfigError::new(
                    format!("xdp.interfaces[{i}]"),
                    format!("{name:?} is listed twice"),
                ));
            }
        }
        if xdp.max_prefixes == 0 || xdp.max_prefixes > MAX_PREFIXES_LIMIT {
            return Err(ConfigError::new(
                "xdp.max_prefixes",
                format!("must be 1-{MAX_PREFIXES_LIMIT}"),
            ));
        }
        if xdp.prefixes.len() > xdp.max_prefixes as usize {
            return Err(ConfigError::new(
                "xdp.prefixes",
                format!(
                    "{} prefixes but xdp.max_prefixes is {}",
                    xdp.prefixes.len(),
                    xdp.max_prefixes
                ),
            ));
        }
        if !xdp.pin_dir.is_absolute() || xdp.pin_dir.parent().is_none_or(|p| p == Path::new("/")) {
            return Err(ConfigError::new(
                "xdp.pin_dir",
                format!(
                    "{}: must be a directory inside a BPF filesystem, e.g. /sys/fs/bpf/edgeplane",
                    xdp.pin_dir.display()
                ),
            ));
        }
        if let Some(ports) = &xdp.serving_ports {
            if ports.is_empty() {
                return Err(ConfigError::new(
                    "xdp.serving_ports",
                    "must list at least one port (leave it out for the port of http.listen)",
                ));
            }
        }
        let serving = xdp.serving_ports_for(self.http.listen.port());
        let key = if xdp.serving_ports.is_some() {
            "xdp.serving_ports"
        } else {
            "http.listen"
        };
        if serving.contains(&0) {
            // Port 0 in http.listen: the real port is known only once bound, and that is what
            // the filter will judge; an explicit 0 is a mistake.
            if xdp.serving_ports.is_some() {
                return Err(ConfigError::new(key, "port 0 cannot be served"));
            }
        }
        let admin = self.admin.listen.port();
        for &port in &serving {
            if port != 0 && (xdp.never_touch_ports.contains(&port) || port == admin) {
                let why = if port == admin {
                    "the admin port"
                } else {
                    "in xdp.never_touch_ports"
                };
                return Err(ConfigError::new(
                    key,
                    format!("serving port {port} is {why}: the filter must never judge it"),
                ));
            }
        }
        Ok(())
    }

    /// `[https]`: a distinct listener and well-formed, distinct SNI names. Whether the
    /// certificates and keys load and match is [`Config::check_host`]'s question.
    fn validate_https(&self, https: &HttpsConfig) -> Result<(), ConfigError> {
        if https.listen.port() != 0 {
            for (other, key) in [
                (self.http.listen, "http.listen"),
                (self.admin.listen, "admin.listen"),
            ] {
                if https.listen == other {
                    return Err(ConfigError::new(
                        "https.listen",
                        format!("must differ from {key}"),
                    ));
                }
            }
        }
        for (i, sni) in https.sni.iter().enumerate() {
            let key = format!("https.sni[{i}].name");
            let name = SniName::parse(&sni.name)
                .map_err(|problem| ConfigError::new(key.clone(), problem))?;
            let earlier = https.sni[..i]
                .iter()
                .any(|s| s.name.eq_ignore_ascii_case(&sni.name));
            if earlier {
                return Err(ConfigError::new(key, format!("{name} is listed twice")));
            }
        }
        Ok(())
    }

    /// The CPU each executor is pinned to.
    pub fn cpu_list(&self) -> Vec<usize> {
        self.cpus
            .clone()
            .unwrap_or_else(|| (0..self.cores).collect())
    }
}

/// The dotted key (`tier[1].kind`, `http.listen`) whose line contains byte `pos` of `text`, for
/// naming the key in syntax and type errors.
fn key_at(text: &str, pos: usize) -> Option<String> {
    let pos = pos.min(text.len());
    let line_start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"'));
    let mut section = String::new();
    let mut counts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    // An error on a table header (a missing field) belongs to that table.
    let scan_to = if line.trim_start().starts_with('[') {
        line_start + line.len()
    } else {
        line_start
    };
    for l in text[..scan_to].lines() {
        let l = l.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
            let name = name.trim().to_string();
            let n = counts.entry(name.clone()).or_insert(0);
            section = format!("{name}[{n}]");
            *n += 1;
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            section = name.trim().to_string();
        }
    }
    match (section.is_empty(), key) {
        (_, None) if section.is_empty() => None,
        (true, Some(k)) => Some(k.to_string()),
        (false, Some(k)) if !k.is_empty() => Some(format!("{section}.{k}")),
        _ => Some(section),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_tier(extra: &str) -> String {
        let dir = std::env::temp_dir();
        format!(
            "{extra}\n[[tier]]\nname = \"flash\"\nkind = \"flash\"\npath = {:?}\n",
            dir.display().to_string()
        )
    }

    #[test]
    fn defaults_fill_every_section() {
        let c = Config::parse(&with_tier(""), "t").unwrap();
        assert_eq!(c.cores, 1);
        assert_eq!(c.http.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.admin.listen, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(c.limits.max_header_bytes, 8192);
        assert!(c.io.residency_check);
        assert_eq!(c.io.tier_check_interval_ms, 1000);
        assert_eq!(c.tiers[0].kind, TierKind::Flash);
        assert!(c.signing.enabled, "signed URLs are on unless turned off");
        assert_eq!(
            c.signing.keys_file,
            Path::new("/var/lib/edgeplane/signing-keys.json")
        );
        assert!(c.access.prefixes_file.is_none());
        let c = Config::parse(
            &with_tier("[signing]\nenabled = false\n[access]\nprefixes_file = \"/p.json\""),
            "t",
        )
        .unwrap();
        assert!(!c.signing.enabled);
        assert_eq!(
            c.access.prefixes_file.as_deref(),
            Some(Path::new("/p.json"))
        );
        let err = Config::parse(&with_tier("[io]\ntier_check_interval_ms = 0"), "t").unwrap_err();
        assert_eq!(err.key, "io.tier_check_interval_ms");
    }

    #[test]
    fn unknown_key_names_the_line() {
        let err = Config::parse(&with_tier("cores = 1\nbogus = 3"), "f.toml").unwrap_err();
        assert_eq!(err.key, "bogus (f.toml line 2)");
        assert!(err.problem.contains("bogus"), "{err}");
    }

    #[test]
    fn bad_kind_is_rejected() {
        let text = "[[tier]]\nname = \"x\"\nkind = \"tape\"\npath = \"/tmp\"\n";
        let err = Config::parse(text, "f").unwrap_err();
        assert!(err.problem.contains("tape"), "{err}");
        assert_eq!(err.key, "tier[0].kind (f line 3)");
        let text = "cores = 1\n[http]\nlisten = \"nowhere\"\n";
        let err = Config::parse(text, "f").unwrap_err();
        assert!(err.key.starts_with("http.listen"), "{err}");
        let err = Config::parse("[limits]\nmax_headers = -4\n", "f").unwrap_err();
        assert!(err.key.starts_with("limits.max_headers"), "{err}");
    }

    #[test]
    fn missing_field_names_its_table() {
        let err = Config::parse(&with_tier("[https]\ncert = \"/c.pem\"\n"), "f").unwrap_err();
        assert_eq!(err.key, "https (f line 1)");
        assert!(err.problem.contains("missing field `key`"), "{err}");
    }

    #[test]
    fn parse_looks_at_nothing_on_the_host() {
        // No such directory, no such files, more CPUs than any host: all for Config::check_host.
        let text = "cores = 4096\n\
                    [https]\ncert = \"/nonexistent/edgeplane/c.pem\"\nkey = \"/nonexistent/k.pem\"\n\
                    [[https.sni]]\nname = \"*.example.net\"\ncert = \"/nonexistent/s.pem\"\n\
                    key = \"/nonexistent/s.key\"\n\
                    [[tier]]\nname = \"x\"\nkind = \"storage\"\npath = \"/nonexistent/edgeplane\"\n";
        let c = Config::parse(text, "f").expect("parse judges the text alone");
        assert_eq!(c.cores, 4096);
        assert_eq!(c.tiers[0].path, Path::new("/nonexistent/edgeplane"));
        assert_eq!(c.https.unwrap().sni.len(), 1);
        let text =
            "cpus = [4096]\n[[tier]]\nname = \"x\"\nkind = \"flash\"\npath = \"/nonexistent\"\n";
        assert_eq!(Config::parse(text, "f").unwrap().cpu_list(), [4096]);
    }

    #[test]
    fn upstream_keys_defaults_and_errors() {
        let c = Config::parse(
            &with_tier("[upstream]\nurl = \"http://parent:8080/\"\ntier = \"flash\"\ncapacity = \"500G\"\n"),
            "f",
        )
        .unwrap();
        let u = c.upstream.unwrap();
        assert_eq!(u.base(), "http://parent:8080");
        assert_eq!(u.capacity, Some(ByteSize(500 << 30)));
        assert_eq!(u.slice_size, ByteSize(2 << 20));
        assert_eq!(u.max_upstream_fetches, 16);
        let c = Config::parse(
            &with_tier("[upstream]\nurl = \"http://p\"\ntier = \"flash\"\ncapacity = 1000\nslice_size = \"64k\"\n"),
            "f",
        )
        .unwrap();
        let u = c.upstream.unwrap();
        assert_eq!(
            (u.capacity, u.slice_size),
            (Some(ByteSize(1000)), ByteSize(64 << 10))
        );
        for (extra, key) in [
            ("url = \"ftp://x\"\ntier = \"flash\"", "upstream.url"),
            ("url = \"http://x\"\ntier = \"nope\"", "upstream.tier"),
            (
                "url = \"http://x\"\ntier = \"flash\"\nmax_upstream_fetches = 0",
                "upstream.max_upstream_fetches",
            ),
            (
                "url = \"http://x\"\ntier = \"flash\"\nslice_size = \"1K\"",
                "upstream.slice_size",
            ),
        ] {
            let err =
                Config::parse(&with_tier(&format!("[upstream]\n{extra}\n")), "f").unwrap_err();
            assert_eq!(err.key, key, "{extra}: {err}");
        }
        let err = Config::parse(
            &with_tier("[upstream]\nurl = \"http://x\"\ntier = \"flash\"\ncapacity = \"lots\"\n"),
            "f",
        )
        .unwrap_err();
        assert!(err.problem.contains("byte count"), "{err}");
        assert!(Config::parse(
            &with_tier("[upstream]\nurl = \"http://x\"\ntier = \"flash\"\nbogus = 1\n"),
            "f"
        )
        .is_err());
    }

    #[test]
    fn no_tiers_is_an_error() {
        let err = Config::parse("cores = 1\n", "f").unwrap_err();
        assert_eq!(err.key, "tier");
    }

    #[test]
    fn xdp_defaults_and_errors() {
        let c = Config::parse(&with_tier("[xdp]\ninterfaces = [\"eth0\"]"), "f").unwrap();
        let x = c.xdp.unwrap();
        assert_eq!(x.mode, XdpMode::Auto);
        assert!(!x.enforce && !x.required);
        assert_eq!(x.serving_ports_for(8080), [8080]);
        assert_eq!(x.never_touch_ports, [22, 179]);
        assert_eq!(x.pin_dir, Path::new("/sys/fs/bpf/edgeplane"));
        assert_eq!(x.steering, XdpSteering::Reuseport);
        assert!(Config::parse(&with_tier(""), "f").unwrap().xdp.is_none());

        let err = |extra: &str| Config::parse(&with_tier(extra), "f").unwrap_err();
        assert_eq!(err("[xdp]\nserving_ports = [22]").key, "xdp.serving_ports");
        assert_eq!(
            err("[xdp]\nserving_ports = [9090]").key,
            "xdp.serving_ports"
        );
        assert_eq!(err("[xdp]\nserving_ports = []").key, "xdp.serving_ports");
        assert_eq!(
            err("[http]\nlisten = \"0.0.0.0:179\"\n[xdp]").key,
            "http.listen"
        );
        assert_eq!(
            err("[xdp]\ninterfaces = [\"a/b\"]").key,
            "xdp.interfaces[0]"
        );
        assert_eq!(err("[xdp]\nmax_prefixes = 0").key, "xdp.max_prefixes");
        assert_eq!(err("[xdp]\npin_dir = \"relative\"").key, "xdp.pin_dir");
        let e = err("[xdp]\nprefixes = [\"10.0.0.1/8\"]");
        assert!(e.key.starts_with("xdp.prefixes"), "{e}");
        assert!(e.problem.contains("did you mean 10.0.0.0/8"), "{e}");
        let e = err("[xdp]\nmode = \"native\"");
        assert!(e.key.starts_with("xdp.mode"), "{e}");
    }

    #[test]
    fn sni_names_parse_and_match() {
        let exact = SniName::parse("CDN.Example.net").unwrap();
        assert!(exact.matches("cdn.example.net"));
        assert!(exact.matches("CDN.EXAMPLE.NET"));
        assert!(!exact.matches("a.cdn.example.net"));
        assert!(!exact.matches("example.net"));
        let wild = SniName::parse("*.example.net").unwrap();
        assert!(wild.matches("a.example.net"));
        assert!(!wild.matches("a.b.example.net"));
        assert!(!wild.matches("example.net"));
        assert!(!wild.matches(".example.net"));
        assert_eq!(wild.to_string(), "\"*.example.net\"");
        for bad in [
            "",
            "*.",
            "*.net",
            "a..b",
            "-a.b",
            "a-.b",
            "a_b.c",
            "*.*.a.b",
            "a.*.b",
            "a b",
            &"x".repeat(64),
        ] {
            assert!(SniName::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(SniName::parse("localhost").is_ok());
        assert!(SniName::parse("xn--bcher-kva.example").is_ok());
    }

    #[test]
    fn numa_keys() {
        let c = Config::parse(&with_tier(""), "f").unwrap();
        assert_eq!(c.numa, NumaConfig::default());
        assert_eq!(c.numa.placement, NumaPlacement::Auto);
        assert_eq!(c.tiers[0].numa_node, None);
        let c = Config::parse(&with_tier("[xdp]\ninterfaces = [\"eth1\"]"), "f").unwrap();
        assert_eq!(c.numa_interfaces(), ["eth1"]);
        let c = Config::parse(
            &with_tier("[numa]\ninterfaces = [\"ens1\"]\ncores_per_node = [1]"),
            "f",
        )
        .unwrap();
        assert_eq!(c.numa_interfaces(), ["ens1"]);
        assert_eq!(c.numa.cores_per_node.as_deref(), Some(&[1][..]));
        let c = Config::parse(&format!("{}numa_node = 0\n", with_tier("")), "f").unwrap();
        assert_eq!(c.tiers[0].numa_node, Some(0));

        let err = |extra: &str| Config::parse(&with_tier(extra), "f").unwrap_err();
        assert_eq!(
            err("[numa]\ncores_per_node = [2]").key,
            "numa.cores_per_node"
        );
        assert!(err("[numa]\ncores_per_node = [0, 2]")
            .problem
            .contains("adds up to 2 but cores = 1"));
        assert_eq!(
            err("cpus = [0]\n[numa]\ncores_per_node = [1]").key,
            "numa.cores_per_node"
        );
        assert_eq!(
            err("[numa]\nplacement = \"off\"\ncores_per_node = [1]").key,
            "numa.cores_per_node"
        );
        assert!(err("[numa]\nplacement = \"spread\"")
            .key
            .starts_with("numa.placement"));
        assert_eq!(
            err("[numa]\ninterfaces = [\"a/b\"]").key,
            "numa.interfaces[0]"
        );
        let e = Config::parse(&format!("{}numa_node = 5000\n", with_tier("")), "f").unwrap_err();
        assert_eq!(e.key, "tier[0].numa_node");
    }

    #[test]
    fn zero_cores_and_duplicate_names_are_errors() {
        assert_eq!(
            Config::parse(&with_tier("cores = 0"), "f").unwrap_err().key,
            "cores"
        );
        let dir = std::env::temp_dir().display().to_string();
        let text = format!(
            "[[tier]]\nname=\"a\"\nkind=\"flash\"\npath={dir:?}\n[[tier]]\nname=\"a\"\nkind=\"storage\"\npath={dir:?}\n"
        );
        assert_eq!(Config::parse(&text, "f").unwrap_err().key, "tier[1].name");
    }
}
