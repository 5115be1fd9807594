//! Loading the eBPF object, configuring the filter, attaching it to interfaces, and running it
//! under `BPF_PROG_TEST_RUN`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::{Array, CpuMap, MapData, MapType, ReusePortSockArray};
use aya::programs::{SkReuseport, TestRun as _, TestRunOptions, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use edgeplane_ebpf_types::{
    map, port_bit, program, FilterConfig, PrefixCounters, PrefixValue, COUNTERS, MAX_EXECUTORS,
    PORT_WORDS,
};

use crate::config::XdpMode as Mode;

use super::tables::{nr_cpus, GlobalCounters, PrefixTable, SettingsMap};
use super::{describe, kernel_error, object, pins, XdpError};

/// How to load the object.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Capacity of the prefix maps (both families share the per-prefix counter slots).
    pub max_prefixes: u32,
    /// Pin the shared maps (prefixes, counters, settings) here and reuse them if already
    /// pinned; `None`: private maps that die with the process (tests, the bench).
    pub pin_dir: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            max_prefixes: 16384,
            pin_dir: None,
        }
    }
}

/// The filter's settings from the config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterSettings {
    /// Drop what is not served (else monitor: count and pass).
    pub enforce: bool,
    /// TCP destination ports the filter judges; all other traffic is never touched.
    pub serving_ports: Vec<u16>,
    /// Redirect allowed packets to their executor's CPU through the CPUMAP.
    pub steer_cpumap: bool,
    /// CPUs of the serving executors, in executor order (for steering).
    pub executor_cpus: Vec<u32>,
    /// Walk the LPM trie for every packet instead of answering repeated sources from the
    /// per-CPU source cache (`xdp.source_cache = false`; the bench measures both).
    pub no_source_cache: bool,
}

/// One `BPF_PROG_TEST_RUN` of the XDP program.
#[derive(Debug, Clone, Copy)]
pub struct TestRun {
    /// The XDP action the program returned (`XDP_DROP` = 1, `XDP_PASS` = 2, `XDP_REDIRECT` = 4).
    pub action: u32,
    /// Average time per run, as the kernel measured it.
    pub per_run: Duration,
}

/// The maps pinned under the pin directory, with what a compatible pin must look like:
/// (name, type, key size, value size, max entries — 0 = `max_prefixes`).
const PINNED: [(&str, MapType, u32, u32, u32); 6] = [
    (map::PREFIXES_V4, MapType::LpmTrie, 8, VALUE, 0),
    (map::PREFIXES_V6, MapType::LpmTrie, 20, VALUE, 0),
    (
        map::PREFIX_COUNTERS,
        MapType::PerCpuArray,
        4,
        COUNTER_SIZE,
        0,
    ),
    (map::COUNTERS, MapType::PerCpuArray, 4, 8, COUNTERS),
    (map::CONFIG, MapType::Array, 4, 8, 1),
    (map::GENERATION, MapType::Array, 4, 4, 1),
];
const VALUE: u32 = size_of::<PrefixValue>() as u32;
const COUNTER_SIZE: u32 = size_of::<PrefixCounters>() as u32;

/// The loaded programs and handles on their maps.
pub struct Filter {
    ebpf: Ebpf,
    prefixes: PrefixTable,
    counters: GlobalCounters,
    settings: SettingsMap,
    ports: Array<MapData, u64>,
    executor_cpus: Array<MapData, u32>,
    cpus: CpuMap<MapData>,
    listeners: Option<ReusePortSockArray<MapData>>,
    attached: Vec<(String, Mode, aya::programs::xdp::XdpLinkId)>,
    _log: Option<super::log::LogPump>,
}

impl Filter {
    /// Loads the object and the XDP program (not attached). With a pin directory, the shared
    /// maps are created there or, when already pinned by an earlier run, reused: prefixes and
    /// counters survive a restart.
    pub fn load(opts: &LoadOptions) -> Result<Filter, XdpError> {
        let object = object()?;
        if opts.max_prefixes == 0 {
            return Err(XdpError::Full { capacity: 0 });
        }
        let cpus = u32::try_from(nr_cpus()?).unwrap_or(u32::MAX);
        let level = super::log::ebpf_level();
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(map::PREFIXES_V4, opts.max_prefixes)
            .map_max_entries(map::PREFIXES_V6, opts.max_prefixes)
            .map_max_entries(map::PREFIX_COUNTERS, opts.max_prefixes)
            .map_max_entries(map::CPUS, cpus)
            .override_global(super::log::LEVEL_GLOBAL, &level, true);
        let pin_paths: Vec<(&str, PathBuf)> = match &opts.pin_dir {
            Some(dir) => {
                pins::ensure_dir(dir)?;
                check_pins(dir, opts.max_prefixes)?;
                PINNED
                    .iter()
                    .map(|(name, ..)| (*name, pins::pin_path(dir, name)))
                    .collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load(object)
            .map_err(|e| kernel_error("loading the eBPF object", &e))?;
        let xdp = xdp_mut(&mut ebpf)?;
        xdp.load()
            .map_err(|e| kernel_error("loading the XDP program", &e))?;
        let select: &mut SkReuseport = ebpf
            .program_mut(program::SELECT_LISTENER)
            .ok_or_else(|| missing_program(program::SELECT_LISTENER))?
            .try_into()
            .map_err(|e| kernel_error("the SK_REUSEPORT program", &e))?;
        select
            .load()
            .map_err(|e| kernel_error("loading the SK_REUSEPORT program", &e))?;
        let log = if level > 0 {
            super::log::LogPump::start(&mut ebpf)
        } else {
            None
        };
        let mut take = |name: &str| {
            ebpf.take_map(name).ok_or_else(|| XdpError::Map {
                what: name.to_string(),
                detail: "not in the eBPF object".into(),
            })
        };
        let mut prefixes = PrefixTable::from_maps(
            take(map::PREFIXES_V4)?,
            take(map::PREFIXES_V6)?,
            take(map::PREFIX_COUNTERS)?,
            take(map::GENERATION)?,
        )?;
        // A fresh (or reused) table: make sure no cache answer from before counts.
        prefixes.bump_generation()?;
        let counters = GlobalCounters::from_map(take(map::COUNTERS)?)?;
        let settings = SettingsMap::from_map(take(map::CONFIG)?)?;
        let typed = |e: aya::maps::MapError| XdpError::Map {
            what: "maps".into(),
            detail: describe(&e),
        };
        let ports = Array::try_from(take(map::PORTS)?).map_err(typed)?;
        let executor_cpus = Array::try_from(take(map::EXECUTOR_CPUS)?).map_err(typed)?;
        let cpus = CpuMap::try_from(take(map::CPUS)?).map_err(typed)?;
        let listeners = ReusePortSockArray::try_from(take(map::LISTENERS)?).map_err(typed)?;
        Ok(Filter {
            ebpf,
            prefixes,
            counters,
            settings,
            ports,
            executor_cpus,
            cpus,
            listeners: Some(listeners),
            attached: Vec::new(),
            _log: log,
        })
    }

    /// Applies the config's settings; the global drain switch is kept as it is.
    pub fn configure(&mut self, s: &FilterSettings) -> Result<(), XdpError> {
        let mut words = vec![0u64; PORT_WORDS as usize];
        for &port in &s.serving_ports {
            let (word, mask) = port_bit(port);
            words[word as usize] |= mask;
        }
        for (i, w) in words.iter().enumerate() {
            self.ports.set(i as u32, *w, 0).map_err(|e| XdpError::Map {
                what: map::PORTS.into(),
                detail: describe(&e),
            })?;
        }
        let executors = u32::try_from(s.executor_cpus.len())
            .unwrap_or(MAX_EXECUTORS)
            .min(MAX_EXECUTORS);
        for (i, &cpu) in s
            .executor_cpus
            .iter()
            .take(MAX_EXECUTORS as usize)
            .enumerate()
        {
            self.executor_cpus
                .set(i as u32, cpu, 0)
                .map_err(|e| XdpError::Map {
                    what: map::EXECUTOR_CPUS.into(),
                    detail: describe(&e),
                })?;
            if s.steer_cpumap {
                // 2048 frames of queue per CPU: enough to absorb a NAPI budget from each of
                // several RX queues.
                self.cpus
                    .set(cpu, 2048, None, 0)
                    .map_err(|e| kernel_error(format!("adding CPU {cpu} to the CPUMAP"), &e))?;
            }
        }
        let current = self.settings.get()?;
        let mut flags = current.flags & FilterConfig::DRAIN;
        if s.enforce {
            flags |= FilterConfig::ENFORCE;
        }
        if s.steer_cpumap {
            flags |= FilterConfig::STEER_CPUMAP;
        }
        if s.no_source_cache {
            flags |= FilterConfig::NO_SOURCE_CACHE;
        }
        self.settings.set(FilterConfig { flags, executors })
    }

    /// The served prefixes.
    pub fn prefixes(&mut self) -> &mut PrefixTable {
        &mut self.prefixes
    }

    /// The global counters.
    pub fn counters(&self) -> &GlobalCounters {
        &self.counters
    }

    /// The global settings (drain switch).
    pub fn settings(&mut self) -> &mut SettingsMap {
        &mut self.settings
    }

    /// Runs the XDP program on `packet` `repeat` times (`BPF_PROG_TEST_RUN`); maps and counters
    /// change exactly as for a received frame. Frames shorter than 14 bytes are refused by the
    /// kernel (`EINVAL`), as drivers never deliver them.
    pub fn test_run(&self, packet: &[u8], repeat: u32) -> Result<TestRun, XdpError> {
        let prog = self
            .ebpf
            .program(program::FILTER)
            .ok_or_else(|| missing_program(program::FILTER))?;
        let xdp: &Xdp = prog
            .try_into()
            .map_err(|e| kernel_error("the XDP program", &e))?;
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.repeat = repeat.max(1);
        let result = xdp
            .test_run(opts)
            .map_err(|e| kernel_error("BPF_PROG_TEST_RUN", &e))?;
        Ok(TestRun {
            action: result.return_value,
            per_run: result.duration,
        })
    }

    /// Attaches the XDP program to `iface`. `Auto` tries driver mode, then skb mode with a log
    /// line. Returns the mode in effect.
    pub fn attach(&mut self, iface: &str, mode: Mode) -> Result<Mode, XdpError> {
        let xdp = xdp_mut(&mut self.ebpf)?;
        let attempt = |xdp: &mut Xdp, m: XdpMode| {
            xdp.attach(iface, m).map_err(|e| {
                if matches!(e, aya::programs::ProgramError::UnknownInterface { .. }) {
                    XdpError::Interface {
                        name: iface.to_string(),
                        detail: "no such interface".into(),
                    }
                } else {
                    kernel_error(format!("attaching XDP to {iface}"), &e)
                }
            })
        };
        let (id, used) = match mode {
            Mode::Driver => (attempt(xdp, XdpMode::Driver)?, Mode::Driver),
            Mode::Skb => (attempt(xdp, XdpMode::Skb)?, Mode::Skb),
            Mode::Auto => match attempt(xdp, XdpMode::Driver) {
                Ok(id) => (id, Mode::Driver),
                Err(e @ (XdpError::Interface { .. } | XdpError::Permission { .. })) => {
                    return Err(e)
                }
                Err(e) => {
                    tracing::warn!(
                        interface = iface,
                        "XDP driver mode unavailable ({e}); using skb mode"
                    );
                    (attempt(xdp, XdpMode::Skb)?, Mode::Skb)
                }
            },
        };
        self.attached.push((iface.to_string(), used, id));
        Ok(used)
    }

    /// The handle executors register their listeners with (once: it takes the map).
    pub fn steering(&mut self) -> Result<super::Steering, XdpError> {
        let listeners = self.listeners.take().ok_or_else(|| XdpError::Map {
            what: map::LISTENERS.into(),
            detail: "already handed out".into(),
        })?;
        let program = self
            .ebpf
            .program(program::SELECT_LISTENER)
            .ok_or_else(|| missing_program(program::SELECT_LISTENER))?
            .fd()
            .map_err(|e| kernel_error("the SK_REUSEPORT program", &e))?
            .try_clone()
            .map_err(|e| kernel_error("the SK_REUSEPORT program", &e))?;
        Ok(super::Steering::new(listeners, program))
    }

    /// Interfaces the program is attached to, with the mode in effect.
    pub fn attached(&self) -> impl Iterator<Item = (&str, Mode)> {
        self.attached.iter().map(|(i, m, _)| (i.as_str(), *m))
    }

    /// Detaches from every interface (also done on drop).
    pub fn detach_all(&mut self) {
        let attached = std::mem::take(&mut self.attached);
        let Ok(xdp) = xdp_mut(&mut self.ebpf) else {
            return;
        };
        for (iface, _, id) in attached {
            match xdp.detach(id) {
                Ok(()) => tracing::info!(interface = %iface, "XDP detached"),
                Err(e) => tracing::warn!(interface = %iface, "XDP detach failed: {}", describe(&e)),
            }
        }
    }
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

impl Drop for Filter {
    fn drop(&mut self) {
        self.detach_all();
    }
}

fn missing_program(name: &str) -> XdpError {
    XdpError::Kernel {
        action: format!("program {name}"),
        detail: "not in the eBPF object".into(),
    }
}

fn xdp_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, XdpError> {
    let prog = ebpf
        .program_mut(program::FILTER)
        .ok_or_else(|| missing_program(program::FILTER))?;
    prog.try_into()
        .map_err(|e| kernel_error("the XDP program", &e))
}

/// Refuses pins left by a build or config whose map layout differs: reusing them would make
/// the program read the wrong sizes.
fn check_pins(dir: &Path, max_prefixes: u32) -> Result<(), XdpError> {
    for (name, ty, key, value, max) in PINNED {
        let path = pins::pin_path(dir, name);
        if !path.exists() {
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&path).map_err(|e| XdpError::Pins {
            path: path.clone(),
            detail: describe(&e),
        })?;
        let max = if max == 0 { max_prefixes } else { max };
        let found = (
            info.map_type().ok(),
            info.key_size(),
            info.value_size(),
            info.max_entries(),
        );
        if found != (Some(ty), key, value, max) {
            return Err(XdpError::Pins {
                path,
                detail: format!(
                    "pinned by an earlier edgeplane with a different layout (key {} B, value {} B, \
                     {} entries; this one needs {key} B, {value} B, {max}): if xdp.max_prefixes \
                     changed, set it back, or remove {} to start with no prefixes",
                    found.1,
                    found.2,
                    found.3,
                    dir.display()
                ),
            });
        }
    }
    Ok(())
}
