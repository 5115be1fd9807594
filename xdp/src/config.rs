//! The `[xdp]` section of the appliance config: how the filter is attached, which ports it
//! judges, where its maps are pinned, and how flows are steered. Parsed here (pure serde); the
//! data plane's config validates it against the listeners it knows.

use std::path::PathBuf;

use serde::Deserialize;

/// How the XDP program is attached (`xdp.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver, before the kernel allocates anything (needs driver support).
    Driver,
    /// Generic XDP, after the skb exists: any interface, slower.
    Skb,
    /// Driver mode, else skb mode with a log line.
    Auto,
}

impl XdpMode {
    /// The name used in config, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            XdpMode::Driver => "driver",
            XdpMode::Skb => "skb",
            XdpMode::Auto => "auto",
        }
    }
}

/// How flows are kept on one core (`xdp.steering`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpSteering {
    /// The kernel's reuseport hash picks the listener; packets land where RSS puts them.
    None,
    /// The `SK_REUSEPORT` program picks the listener of the executor the flow hash names.
    Reuseport,
    /// `reuseport`, and the XDP program redirects the flow's packets to that executor's CPU.
    Cpumap,
}

impl XdpSteering {
    /// The name used in config and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            XdpSteering::None => "none",
            XdpSteering::Reuseport => "reuseport",
            XdpSteering::Cpumap => "cpumap",
        }
    }
}

/// `[xdp]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdpConfig {
    /// Interfaces to attach the filter to (none: load it for steering and accounting only).
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// Attach mode.
    #[serde(default = "default_xdp_mode")]
    pub mode: XdpMode,
    /// Drop TCP to the serving ports from outside the served prefixes (else monitor: count, pass).
    #[serde(default)]
    pub enforce: bool,
    /// Refuse to serve without XDP (else one error line and serve without it).
    #[serde(default)]
    pub required: bool,
    /// TCP ports the filter judges; default: the port of `http.listen`.
    #[serde(default)]
    pub serving_ports: Option<Vec<u16>>,
    /// Ports that must never be filtered (checked against `serving_ports`); the admin port is
    /// always added.
    #[serde(default = "default_never_touch_ports")]
    pub never_touch_ports: Vec<u16>,
    /// Capacity of the prefix maps (IPv4 and IPv6 together).
    #[serde(default = "default_max_prefixes")]
    pub max_prefixes: u32,
    /// Where the prefix and counter maps are pinned, on a BPF filesystem.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// Prefixes to serve from the start (added if absent; never removed by a restart).
    #[serde(default)]
    pub prefixes: Vec<crate::Prefix>,
    /// Flow steering to the executor that owns a flow.
    #[serde(default = "default_xdp_steering")]
    pub steering: XdpSteering,
    /// Answer repeated sources from a per-CPU cache in front of the LPM tries.
    #[serde(default = "default_true")]
    pub source_cache: bool,
}

impl XdpConfig {
    /// The serving ports given the bound HTTP port.
    pub fn serving_ports_for(&self, http_port: u16) -> Vec<u16> {
        self.serving_ports
            .clone()
            .unwrap_or_else(|| vec![http_port])
    }
}

fn default_xdp_mode() -> XdpMode {
    XdpMode::Auto
}
fn default_xdp_steering() -> XdpSteering {
    XdpSteering::Reuseport
}
fn default_never_touch_ports() -> Vec<u16> {
    vec![22, 179]
}
fn default_max_prefixes() -> u32 {
    16384
}
fn default_pin_dir() -> PathBuf {
    PathBuf::from(crate::pins::DEFAULT_PIN_DIR)
}
fn default_true() -> bool {
    true
}

/// Most prefixes `xdp.max_prefixes` may ask for (the per-prefix counters are preallocated per CPU).
pub const MAX_PREFIXES_LIMIT: u32 = 1 << 24;
