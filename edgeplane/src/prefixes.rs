//! `edgeplane prefixes add|remove|list|stats|drain`: change and read the served prefixes of a
//! running data plane through its pinned maps, without reloading anything.

use std::fmt::Write as _;
use std::path::Path;

use clap::Subcommand;
use edgeplane_ebpf_types::{Counter, FilterConfig};

use edgeplane_xdp::{pins, Added, GlobalCounters, Prefix, PrefixTable, SettingsMap, XdpError};

/// What to do with the prefixes.
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum PrefixCommand {
    /// Serve these prefixes (already served ones keep their counters).
    Add {
        /// Prefixes, e.g. 203.0.113.0/24 2001:db8::/32.
        #[arg(required = true)]
        prefixes: Vec<Prefix>,
        /// Add them draining: no new connections until `drain --off`.
        #[arg(long)]
        drain: bool,
    },
    /// Stop serving these prefixes.
    Remove {
        /// Prefixes to remove.
        #[arg(required = true)]
        prefixes: Vec<Prefix>,
    },
    /// Print the served prefixes, one per line.
    List,
    /// Print packets, bytes and drops per prefix, then the filter's global counters.
    Stats,
    /// Drop new connections (SYN without ACK) from a prefix, or from everyone with `all`;
    /// established flows continue. `--off` ends it.
    Drain {
        /// A served prefix, or `all` for the global switch.
        target: String,
        /// End the drain.
        #[arg(long)]
        off: bool,
    },
}

/// Runs `cmd` against the maps pinned in `pin_dir`; returns what to print.
pub(crate) fn run(pin_dir: &Path, cmd: &PrefixCommand) -> Result<String, XdpError> {
    let mut out = String::new();
    match cmd {
        PrefixCommand::Add { prefixes, drain } => {
            let _lock = pins::Lock::take(pin_dir)?;
            let mut table = PrefixTable::open_pinned(pin_dir)?;
            for &p in prefixes {
                match table.add(p, *drain)? {
                    Added::New(_) => writeln!(out, "added {p}{}", draining(*drain)),
                    Added::Existing(_) => writeln!(out, "{p} already served{}", draining(*drain)),
                }
                .ok();
            }
        }
        PrefixCommand::Remove { prefixes } => {
            let _lock = pins::Lock::take(pin_dir)?;
            let mut table = PrefixTable::open_pinned(pin_dir)?;
            let mut missing = Vec::new();
            for &p in prefixes {
                if table.remove(p)? {
                    writeln!(out, "removed {p}").ok();
                } else {
                    missing.push(p.to_string());
                }
            }
            if !missing.is_empty() {
                return Err(XdpError::Map {
                    what: missing.join(", "),
                    detail: format!("not served{}", partial(&out)),
                });
            }
        }
        PrefixCommand::List => {
            let table = PrefixTable::open_pinned(pin_dir)?;
            for e in table.list()? {
                writeln!(
                    out,
                    "{}{}",
                    e.prefix,
                    if e.drain { " draining" } else { "" }
                )
                .ok();
            }
        }
        PrefixCommand::Stats => {
            let table = PrefixTable::open_pinned(pin_dir)?;
            let stats = table.stats()?;
            let width = stats
                .iter()
                .map(|s| s.entry.prefix.to_string().len())
                .max()
                .unwrap_or(0)
                .max("prefix".len());
            writeln!(
                out,
                "{:<width$}  {:>14}  {:>16}  {:>12}",
                "prefix", "packets", "bytes", "drops"
            )
            .ok();
            for s in &stats {
                writeln!(
                    out,
                    "{:<width$}  {:>14}  {:>16}  {:>12}{}",
                    s.entry.prefix.to_string(),
                    s.packets,
                    s.bytes,
                    s.drops,
                    if s.entry.drain { "  draining" } else { "" }
                )
                .ok();
            }
            let counters = GlobalCounters::open_pinned(pin_dir)?.read()?;
            let settings = SettingsMap::open_pinned(pin_dir)?.get()?;
            writeln!(
                out,
                "\nfilter: {} mode{}",
                if settings.flags & FilterConfig::ENFORCE != 0 {
                    "enforce"
                } else {
                    "monitor"
                },
                if settings.flags & FilterConfig::DRAIN != 0 {
                    ", draining all new connections"
                } else {
                    ""
                }
            )
            .ok();
            for c in Counter::ALL {
                writeln!(
                    out,
                    "  {:<8} {:<11} {:>14}",
                    c.verdict().as_str(),
                    c.reason(),
                    counters[c as usize]
                )
                .ok();
            }
        }
        PrefixCommand::Drain { target, off } => {
            let on = !off;
            if target == "all" {
                SettingsMap::open_pinned(pin_dir)?.set_drain(on)?;
                writeln!(
                    out,
                    "drain {} for all prefixes",
                    if on { "on" } else { "off" }
                )
                .ok();
            } else {
                let prefix: Prefix = target.parse().map_err(|e| XdpError::Map {
                    what: "drain".into(),
                    detail: format!("{e} (or `all`)"),
                })?;
                let _lock = pins::Lock::take(pin_dir)?;
                let mut table = PrefixTable::open_pinned(pin_dir)?;
                if table.set_drain(prefix, on)?.is_none() {
                    return Err(XdpError::Map {
                        what: prefix.to_string(),
                        detail: "not served".into(),
                    });
                }
                writeln!(out, "drain {} for {prefix}", if on { "on" } else { "off" }).ok();
            }
        }
    }
    Ok(out)
}

fn draining(drain: bool) -> &'static str {
    if drain {
        " (draining)"
    } else {
        ""
    }
}

fn partial(done: &str) -> String {
    if done.is_empty() {
        String::new()
    } else {
        format!(
            " (the others were removed: {})",
            done.trim().replace('\n', "; ")
        )
    }
}
