//! Typed handles on the filter's maps, whether just created by a load (the data plane, tests,
//! the bench) or opened from their pins under `/sys/fs/bpf/edgeplane` (`edgeplane prefixes`).
//!
//! Prefix ids: every served prefix owns a slot in `PREFIX_COUNTERS`, named by its LPM value. A
//! new prefix takes the lowest free slot, zeroed first, so a removed prefix's counts never
//! reappear under another one. Callers that share pinned maps serialize writes with
//! [`super::pins::Lock`].

use std::collections::HashSet;
use std::path::Path;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, Map, MapData, PerCpuArray, PerCpuValues};
use edgeplane_ebpf_types::{map, Counter, FilterConfig, PrefixCounters, PrefixValue, COUNTERS};

use super::prefix::Prefix;
use super::{describe, XdpError};

/// One served prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixEntry {
    /// The prefix.
    pub prefix: Prefix,
    /// Its slot in the per-prefix counters.
    pub id: u32,
    /// New connections from it are dropped.
    pub drain: bool,
}

/// One served prefix and its counters, summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixStats {
    /// The prefix and its state.
    pub entry: PrefixEntry,
    /// Packets to the serving ports passed (or steered).
    pub packets: u64,
    /// Their bytes (whole frames).
    pub bytes: u64,
    /// Packets to the serving ports dropped (new connections under drain).
    pub drops: u64,
}

/// What [`PrefixTable::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// The prefix is new.
    New(PrefixEntry),
    /// The prefix was already served; its drain flag is now as asked.
    Existing(PrefixEntry),
}

/// The two LPM tries and the per-prefix counters.
pub struct PrefixTable {
    v4: LpmTrie<MapData, [u8; 4], PrefixValue>,
    v6: LpmTrie<MapData, [u8; 16], PrefixValue>,
    counters: PerCpuArray<MapData, PrefixCounters>,
    generation: Array<MapData, u32>,
    cpus: usize,
}

fn map_err(what: String) -> impl FnOnce(aya::maps::MapError) -> XdpError {
    move |e| XdpError::Map {
        what,
        detail: describe(&e),
    }
}

fn open_pin(dir: &Path, name: &str) -> Result<Map, XdpError> {
    let path = dir.join(name);
    if !path.exists() {
        return Err(XdpError::Pins {
            path: dir.to_path_buf(),
            detail: format!(
                "no pinned {name} map: has a data plane with [xdp] (and this xdp.pin_dir) run on \
                 this host since boot?"
            ),
        });
    }
    let data = MapData::from_pin(&path).map_err(|e| XdpError::Pins {
        path: path.clone(),
        detail: describe(&e),
    })?;
    Map::from_map_data(data).map_err(map_err(format!("{}", path.display())))
}

pub(crate) fn nr_cpus() -> Result<usize, XdpError> {
    aya::util::nr_cpus().map_err(|(what, e)| XdpError::Kernel {
        action: "counting possible CPUs".into(),
        detail: format!("{what}: {e}"),
    })
}

impl PrefixTable {
    /// From maps taken out of a freshly loaded object.
    pub(crate) fn from_maps(
        v4: Map,
        v6: Map,
        counters: Map,
        generation: Map,
    ) -> Result<PrefixTable, XdpError> {
        Ok(PrefixTable {
            v4: LpmTrie::try_from(v4).map_err(map_err(map::PREFIXES_V4.into()))?,
            v6: LpmTrie::try_from(v6).map_err(map_err(map::PREFIXES_V6.into()))?,
            counters: PerCpuArray::try_from(counters)
                .map_err(map_err(map::PREFIX_COUNTERS.into()))?,
            generation: Array::try_from(generation).map_err(map_err(map::GENERATION.into()))?,
            cpus: nr_cpus()?,
        })
    }

    /// From the pins in `dir` (written by a running data plane).
    pub fn open_pinned(dir: &Path) -> Result<PrefixTable, XdpError> {
        PrefixTable::from_maps(
            open_pin(dir, map::PREFIXES_V4)?,
            open_pin(dir, map::PREFIXES_V6)?,
            open_pin(dir, map::PREFIX_COUNTERS)?,
            open_pin(dir, map::GENERATION)?,
        )
    }

    /// Invalidates every CPU's source cache: the next packet from each source walks the trie
    /// again. Called after every change to the tries.
    pub(crate) fn bump_generation(&mut self) -> Result<(), XdpError> {
        let current = self
            .generation
            .get(&0, 0)
            .map_err(map_err(map::GENERATION.into()))?;
        // Never 0: the program reads generation 0 as "no cache".
        let next = current.wrapping_add(1).max(1);
        self.generation
            .set(0, next, 0)
            .map_err(map_err(map::GENERATION.into()))
    }

    /// Most prefixes (both families together).
    pub fn capacity(&self) -> u32 {
        self.counters.len()
    }

    /// Every served prefix, IPv4 first, each family in address order.
    pub fn list(&self) -> Result<Vec<PrefixEntry>, XdpError> {
        let mut out = Vec::new();
        for item in self.v4.iter() {
            let (key, value) = item.map_err(map_err(map::PREFIXES_V4.into()))?;
            let addr = std::net::Ipv4Addr::from(key.data());
            out.push(entry(addr.into(), key.prefix_len(), value)?);
        }
        for item in self.v6.iter() {
            let (key, value) = item.map_err(map_err(map::PREFIXES_V6.into()))?;
            let addr = std::net::Ipv6Addr::from(key.data());
            out.push(entry(addr.into(), key.prefix_len(), value)?);
        }
        out.sort_by_key(|e| e.prefix);
        Ok(out)
    }

    /// Serves `prefix` (idempotent: an existing prefix keeps its id and counters and only takes
    /// the drain flag given).
    pub fn add(&mut self, prefix: Prefix, drain: bool) -> Result<Added, XdpError> {
        let existing = self.list()?;
        if let Some(found) = existing.iter().find(|e| e.prefix == prefix) {
            let entry = PrefixEntry { drain, ..*found };
            self.write(entry, 0)?;
            self.bump_generation()?;
            return Ok(Added::Existing(entry));
        }
        let used: HashSet<u32> = existing.iter().map(|e| e.id).collect();
        let id = (0..self.capacity())
            .find(|id| !used.contains(id))
            .ok_or(XdpError::Full {
                capacity: self.capacity(),
            })?;
        let entry = PrefixEntry { prefix, id, drain };
        self.reset_counters(id)?;
        self.write(entry, 0)?;
        self.bump_generation()?;
        Ok(Added::New(entry))
    }

    /// Serves many new prefixes at once (ids allocated in one pass); prefixes already served are
    /// left as they are. For loading large tables (the bench, a full BGP table).
    pub fn add_many(&mut self, prefixes: &[Prefix]) -> Result<usize, XdpError> {
        let existing = self.list()?;
        let served: HashSet<Prefix> = existing.iter().map(|e| e.prefix).collect();
        let used: HashSet<u32> = existing.iter().map(|e| e.id).collect();
        let mut free = (0..self.capacity()).filter(|id| !used.contains(id));
        let mut added = 0;
        for &prefix in prefixes {
            if served.contains(&prefix) {
                continue;
            }
            let id = free.next().ok_or(XdpError::Full {
                capacity: self.capacity(),
            })?;
            self.reset_counters(id)?;
            self.write(
                PrefixEntry {
                    prefix,
                    id,
                    drain: false,
                },
                0,
            )?;
            added += 1;
        }
        Ok(added)
    }

    /// Stops serving `prefix`. `Ok(false)` when it was not served.
    pub fn remove(&mut self, prefix: Prefix) -> Result<bool, XdpError> {
        let result = match prefix.addr() {
            std::net::IpAddr::V4(a) => self
                .v4
                .remove(&Key::new(u32::from(prefix.prefix_len()), a.octets())),
            std::net::IpAddr::V6(a) => self
                .v6
                .remove(&Key::new(u32::from(prefix.prefix_len()), a.octets())),
        };
        match result {
            Ok(()) => {
                self.bump_generation()?;
                Ok(true)
            }
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(false)
            }
            Err(e) => Err(map_err(format!("removing {prefix}"))(e)),
        }
    }

    /// Sets the drain flag of a served prefix. `Ok(None)` when it is not served.
    pub fn set_drain(
        &mut self,
        prefix: Prefix,
        drain: bool,
    ) -> Result<Option<PrefixEntry>, XdpError> {
        let Some(found) = self.list()?.into_iter().find(|e| e.prefix == prefix) else {
            return Ok(None);
        };
        let entry = PrefixEntry { drain, ..found };
        self.write(entry, 0)?;
        self.bump_generation()?;
        Ok(Some(entry))
    }

    /// Every served prefix with its counters.
    pub fn stats(&self) -> Result<Vec<PrefixStats>, XdpError> {
        self.list()?
            .into_iter()
            .map(|entry| {
                let values = self
                    .counters
                    .get(&entry.id, 0)
                    .map_err(map_err(map::PREFIX_COUNTERS.into()))?;
                let mut s = PrefixStats {
                    entry,
                    packets: 0,
                    bytes: 0,
                    drops: 0,
                };
                for c in values.iter() {
                    s.packets += c.packets;
                    s.bytes += c.bytes;
                    s.drops += c.drops;
                }
                Ok(s)
            })
            .collect()
    }

    fn write(&mut self, entry: PrefixEntry, flags: u64) -> Result<(), XdpError> {
        let value = PrefixValue {
            id: entry.id,
            flags: if entry.drain { PrefixValue::DRAIN } else { 0 },
        };
        let len = u32::from(entry.prefix.prefix_len());
        let result = match entry.prefix.addr() {
            std::net::IpAddr::V4(a) => self.v4.insert(&Key::new(len, a.octets()), value, flags),
            std::net::IpAddr::V6(a) => self.v6.insert(&Key::new(len, a.octets()), value, flags),
        };
        result.map_err(|e| match &e {
            aya::maps::MapError::SyscallError(s)
                if s.io_error.raw_os_error() == Some(libc::ENOSPC) =>
            {
                XdpError::Full {
                    capacity: self.capacity(),
                }
            }
            _ => map_err(format!("adding {}", entry.prefix))(e),
        })
    }

    fn reset_counters(&mut self, id: u32) -> Result<(), XdpError> {
        let zeros =
            PerCpuValues::try_from(vec![PrefixCounters::default(); self.cpus]).map_err(|e| {
                XdpError::Kernel {
                    action: "zeroing prefix counters".into(),
                    detail: e.to_string(),
                }
            })?;
        self.counters
            .set(id, zeros, 0)
            .map_err(map_err(map::PREFIX_COUNTERS.into()))
    }
}

fn entry(addr: std::net::IpAddr, len: u32, value: PrefixValue) -> Result<PrefixEntry, XdpError> {
    let len = u8::try_from(len).unwrap_or(u8::MAX);
    let prefix = Prefix::new(addr, len).map_err(|e| XdpError::Map {
        what: "reading the prefix tries".into(),
        detail: e.to_string(),
    })?;
    Ok(PrefixEntry {
        prefix,
        id: value.id,
        drain: value.flags & PrefixValue::DRAIN != 0,
    })
}

/// The global counters, one per [`Counter`], summed over CPUs.
pub struct GlobalCounters {
    map: PerCpuArray<MapData, u64>,
}

impl GlobalCounters {
    pub(crate) fn from_map(m: Map) -> Result<GlobalCounters, XdpError> {
        Ok(GlobalCounters {
            map: PerCpuArray::try_from(m).map_err(map_err(map::COUNTERS.into()))?,
        })
    }

    /// From the pin in `dir`.
    pub fn open_pinned(dir: &Path) -> Result<GlobalCounters, XdpError> {
        GlobalCounters::from_map(open_pin(dir, map::COUNTERS)?)
    }

    /// Every counter, indexed by [`Counter`].
    pub fn read(&self) -> Result<[u64; COUNTERS as usize], XdpError> {
        let mut out = [0u64; COUNTERS as usize];
        for c in Counter::ALL {
            let values = self
                .map
                .get(&(c as u32), 0)
                .map_err(map_err(map::COUNTERS.into()))?;
            out[c as usize] = values.iter().sum();
        }
        Ok(out)
    }
}

/// The filter's global settings ([`FilterConfig`] at index 0 of `CONFIG`).
pub struct SettingsMap {
    map: Array<MapData, FilterConfig>,
}

impl SettingsMap {
    pub(crate) fn from_map(m: Map) -> Result<SettingsMap, XdpError> {
        Ok(SettingsMap {
            map: Array::try_from(m).map_err(map_err(map::CONFIG.into()))?,
        })
    }

    /// From the pin in `dir`.
    pub fn open_pinned(dir: &Path) -> Result<SettingsMap, XdpError> {
        SettingsMap::from_map(open_pin(dir, map::CONFIG)?)
    }

    /// The current settings.
    pub fn get(&self) -> Result<FilterConfig, XdpError> {
        self.map.get(&0, 0).map_err(map_err(map::CONFIG.into()))
    }

    /// Replaces the settings.
    pub fn set(&mut self, config: FilterConfig) -> Result<(), XdpError> {
        self.map
            .set(0, config, 0)
            .map_err(map_err(map::CONFIG.into()))
    }

    /// Turns the global drain on or off, keeping everything else.
    pub fn set_drain(&mut self, on: bool) -> Result<(), XdpError> {
        let mut c = self.get()?;
        if on {
            c.flags |= FilterConfig::DRAIN;
        } else {
            c.flags &= !FilterConfig::DRAIN;
        }
        self.set(c)
    }
}

impl std::fmt::Debug for PrefixTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixTable").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for GlobalCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalCounters").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SettingsMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SettingsMap").finish_non_exhaustive()
    }
}
