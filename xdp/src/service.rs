//! The XDP filter as `edgeplane serve` runs it: loaded and attached from `[xdp]` before the
//! executors start, read by the admin thread for `/metrics`, detached at shutdown.
//!
//! When it cannot start and `xdp.required = false`, the data plane serves without it and the
//! reason stays visible (`edgeplane_xdp_up 0`); it never retries behind the operator's back.

use std::sync::{Arc, Mutex};

use edgeplane_ebpf_types::{FilterConfig, COUNTERS};

use super::{pins, Filter, FilterSettings, LoadOptions, Mode, PrefixStats, Steering, XdpError};
use crate::config::{XdpConfig, XdpSteering};

/// The running filter, or why there is none.
#[derive(Debug)]
pub struct XdpService {
    filter: Mutex<Option<Filter>>,
    steering: Option<Arc<Steering>>,
    mode: XdpSteering,
    enforce: bool,
    error: Option<String>,
}

/// What `/metrics` shows of XDP.
#[derive(Debug, Clone, Default)]
pub struct XdpSnapshot {
    /// The filter is loaded (and attached where configured).
    pub up: bool,
    /// Enforce mode (else monitor).
    pub enforce: bool,
    /// The global drain switch.
    pub drain: bool,
    /// Interfaces and the mode in effect on each.
    pub attached: Vec<(String, Mode)>,
    /// Global counters, indexed by [`super::Counter`].
    pub counters: [u64; COUNTERS as usize],
    /// Every served prefix with its counters.
    pub prefixes: Vec<PrefixStats>,
    /// `xdp.steering`.
    pub steering: Option<XdpSteering>,
    /// The `SK_REUSEPORT` program is attached to the executors' listeners.
    pub reuseport_attached: bool,
}

impl XdpService {
    /// Loads the filter with its maps pinned under `xdp.pin_dir`, configures it, adds
    /// `xdp.prefixes`, and attaches it to `xdp.interfaces`. On any error nothing stays attached.
    pub fn start(
        config: &XdpConfig,
        http_port: u16,
        executor_cpus: &[usize],
    ) -> Result<XdpService, XdpError> {
        let mut filter = Filter::load(&LoadOptions {
            max_prefixes: config.max_prefixes,
            pin_dir: Some(config.pin_dir.clone()),
        })?;
        filter.configure(&FilterSettings {
            enforce: config.enforce,
            serving_ports: config.serving_ports_for(http_port),
            steer_cpumap: config.steering == XdpSteering::Cpumap,
            executor_cpus: executor_cpus.iter().map(|&c| c as u32).collect(),
            no_source_cache: !config.source_cache,
        })?;
        let steering = match config.steering {
            XdpSteering::None => None,
            XdpSteering::Reuseport | XdpSteering::Cpumap => Some(Arc::new(filter.steering()?)),
        };
        if !config.prefixes.is_empty() {
            let _lock = pins::Lock::take(&config.pin_dir)?;
            let added = filter.prefixes().add_many(&config.prefixes)?;
            tracing::info!(
                added,
                configured = config.prefixes.len(),
                "xdp.prefixes loaded"
            );
        }
        for iface in &config.interfaces {
            let mode = filter.attach(iface, config.mode)?;
            tracing::info!(interface = %iface, mode = mode.as_str(), "XDP attached");
        }
        let served = filter.prefixes().list().map(|l| l.len()).unwrap_or(0);
        tracing::info!(
            enforce = config.enforce,
            steering = config.steering.as_str(),
            prefixes = served,
            pin_dir = %config.pin_dir.display(),
            "XDP filter running"
        );
        Ok(XdpService {
            filter: Mutex::new(Some(filter)),
            steering,
            mode: config.steering,
            enforce: config.enforce,
            error: None,
        })
    }

    /// A service that did not start, for `/metrics` to say so.
    pub fn unavailable(err: &XdpError) -> XdpService {
        XdpService {
            filter: Mutex::new(None),
            steering: None,
            mode: XdpSteering::None,
            enforce: false,
            error: Some(err.to_string()),
        }
    }

    /// Where executors register their listeners, when `xdp.steering` is not `none`.
    pub fn steering(&self) -> Option<&Steering> {
        self.steering.as_deref()
    }

    /// Why the filter is not running, if it is not.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Counters and state for `/metrics`. Reads every map; takes milliseconds for thousands of
    /// prefixes, so only the admin thread calls it.
    pub fn snapshot(&self) -> XdpSnapshot {
        let mut guard = self.filter.lock().unwrap_or_else(|p| p.into_inner());
        let Some(filter) = guard.as_mut() else {
            return XdpSnapshot::default();
        };
        let mut snap = XdpSnapshot {
            up: true,
            enforce: self.enforce,
            attached: filter.attached().map(|(i, m)| (i.to_string(), m)).collect(),
            steering: Some(self.mode),
            reuseport_attached: self.steering.as_ref().is_some_and(|s| s.attached()),
            ..XdpSnapshot::default()
        };
        match filter.counters().read() {
            Ok(c) => snap.counters = c,
            Err(e) => tracing::warn!("reading XDP counters: {e}"),
        }
        match filter.settings().get() {
            Ok(s) => snap.drain = s.flags & FilterConfig::DRAIN != 0,
            Err(e) => tracing::warn!("reading XDP settings: {e}"),
        }
        match filter.prefixes().stats() {
            Ok(p) => snap.prefixes = p,
            Err(e) => tracing::warn!("reading XDP prefix counters: {e}"),
        }
        snap
    }

    /// Turns the global drain switch on or off (new connections dropped at the NIC); returns
    /// whether it was on. Without a running filter: `Ok(false)`, nothing to do.
    pub fn set_drain(&self, on: bool) -> Result<bool, XdpError> {
        let mut guard = self.filter.lock().unwrap_or_else(|p| p.into_inner());
        let Some(filter) = guard.as_mut() else {
            return Ok(false);
        };
        let was = filter.settings().get()?.flags & FilterConfig::DRAIN != 0;
        filter.settings().set_drain(on)?;
        Ok(was)
    }

    /// Detaches from every interface and unloads. The pinned maps (prefixes, counters) stay.
    pub fn shutdown(&self) {
        let filter = self.filter.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(filter);
    }
}
