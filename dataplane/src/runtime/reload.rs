//! Re-reading the config file on SIGHUP and `POST /reload`: which keys take effect at once and
//! which need a restart.
//!
//! Live: the tiers (paths and kinds; tiers added or removed at the end of the list), the
//! request limits and timeouts, `limits.shutdown_grace_ms`, `http.cors`, `io.residency_check`,
//! `io.tier_check_interval_ms`, the `[https]` certificates and `[[https.sni]]` entries, the
//! `[signing]` switch and keys file, and `access.prefixes_file`. Everything else (listeners,
//! executors and their memory, the connection caps, `[xdp]`, `[process]`) is fixed at start: a
//! change keeps the running value and logs one line naming the key, ending "restart to apply".

use crate::config::Config;

/// What applying a new config file means.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The config to run with: the new file's values for live keys, the running values for the
    /// others.
    pub(crate) config: Config,
    /// Keys whose new value waits for a restart, one line each ("http.listen changed: restart
    /// to apply").
    pub(crate) restart: Vec<String>,
}

/// Compares the running config with a freshly loaded (and validated) one. `tier_capacity` is
/// how many tiers the per-core counters have room for.
pub(crate) fn plan(old: &Config, mut new: Config, tier_capacity: usize) -> Plan {
    let mut restart = Vec::new();
    let mut fixed = |key: &str, changed: bool| {
        if changed {
            restart.push(format!("{key} changed: restart to apply"));
        }
        changed
    };
    macro_rules! keep {
        ($key:literal, $($field:tt)+) => {
            if fixed($key, format!("{:?}", old.$($field)+) != format!("{:?}", new.$($field)+)) {
                new.$($field)+ = old.$($field)+.clone();
            }
        };
    }
    keep!("cores", cores);
    keep!("cpus", cpus);
    keep!("http.listen", http.listen);
    keep!("admin.listen", admin.listen);
    keep!("io.io_memory_kib", io.io_memory_kib);
    keep!("io.cold_read_threads", io.cold_read_threads);
    keep!("io.open_file_cache", io.open_file_cache);
    keep!("io.readiness", io.readiness);
    keep!("limits.max_connections", limits.max_connections);
    keep!(
        "limits.max_connections_per_client",
        limits.max_connections_per_client
    );
    keep!("process", process);
    keep!("numa", numa);
    keep!("upstream", upstream);
    match (&old.https, &mut new.https) {
        (Some(o), Some(n)) => {
            if fixed("https.listen", o.listen != n.listen) {
                n.listen = o.listen;
            }
        }
        (None, None) => {}
        (o, n) => {
            fixed(
                if o.is_some() {
                    "https (removed)"
                } else {
                    "https (added)"
                },
                true,
            );
            *n = o.clone();
        }
    }
    match (&old.xdp, &new.xdp) {
        (Some(o), Some(n)) => {
            for (key, a, b) in [
                (
                    "xdp.interfaces",
                    format!("{:?}", o.interfaces),
                    format!("{:?}", n.interfaces),
                ),
                ("xdp.mode", format!("{:?}", o.mode), format!("{:?}", n.mode)),
                ("xdp.enforce", o.enforce.to_string(), n.enforce.to_string()),
                (
                    "xdp.required",
                    o.required.to_string(),
                    n.required.to_string(),
                ),
                (
                    "xdp.serving_ports",
                    format!("{:?}", o.serving_ports),
                    format!("{:?}", n.serving_ports),
                ),
                (
                    "xdp.never_touch_ports",
                    format!("{:?}", o.never_touch_ports),
                    format!("{:?}", n.never_touch_ports),
                ),
                (
                    "xdp.max_prefixes",
                    o.max_prefixes.to_string(),
                    n.max_prefixes.to_string(),
                ),
                (
                    "xdp.pin_dir",
                    format!("{:?}", o.pin_dir),
                    format!("{:?}", n.pin_dir),
                ),
                (
                    "xdp.prefixes",
                    format!("{:?}", o.prefixes),
                    format!("{:?}", n.prefixes),
                ),
                (
                    "xdp.steering",
                    format!("{:?}", o.steering),
                    format!("{:?}", n.steering),
                ),
                (
                    "xdp.source_cache",
                    o.source_cache.to_string(),
                    n.source_cache.to_string(),
                ),
            ] {
                fixed(key, a != b);
            }
        }
        (None, None) => {}
        (o, _) => {
            fixed(
                if o.is_some() {
                    "xdp (removed)"
                } else {
                    "xdp (added)"
                },
                true,
            );
        }
    }
    new.xdp = old.xdp.clone();
    // Tiers: per-tier counters are indexed by position, so a tier keeps its place. Paths and
    // kinds may change; tiers may be added or removed at the end.
    let renamed = old
        .tiers
        .iter()
        .zip(&new.tiers)
        .position(|(o, n)| o.name != n.name);
    if let Some(i) = renamed {
        fixed(&format!("tier[{i}].name"), true);
        new.tiers = old.tiers.clone();
    } else if new.tiers.len() > tier_capacity {
        fixed(&format!("tier (more than {tier_capacity} tiers)"), true);
        new.tiers = old.tiers.clone();
    }
    Plan {
        config: new,
        restart,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str, tiers: &[(&str, &std::path::Path)]) -> Config {
        let mut text = format!("{extra}\n[signing]\nenabled = false\n");
        for (name, path) in tiers {
            text.push_str(&format!(
                "[[tier]]\nname = \"{name}\"\nkind = \"flash\"\npath = \"{}\"\n",
                path.display()
            ));
        }
        Config::parse(&text, "test").unwrap()
    }

    #[test]
    fn live_keys_apply_and_fixed_keys_wait_for_a_restart() {
        let dir = std::env::temp_dir();
        let old = config("[http]\nlisten = \"127.0.0.1:8080\"\n", &[("a", &dir)]);
        let new = config(
            "[http]\nlisten = \"127.0.0.1:8081\"\ncors = false\n[limits]\nidle_timeout_ms = 5\nmax_connections = 7\n",
            &[("a", &dir), ("b", &dir)],
        );
        let plan = plan(&old, new, 16);
        assert_eq!(
            plan.restart,
            [
                "http.listen changed: restart to apply",
                "limits.max_connections changed: restart to apply"
            ]
        );
        assert_eq!(plan.config.http.listen, old.http.listen);
        assert!(!plan.config.http.cors);
        assert_eq!(plan.config.limits.idle_timeout_ms, 5);
        assert_eq!(
            plan.config.limits.max_connections,
            old.limits.max_connections
        );
        assert_eq!(plan.config.tiers.len(), 2);
    }

    #[test]
    fn renaming_a_tier_keeps_the_running_tiers() {
        let dir = std::env::temp_dir();
        let old = config("", &[("a", &dir)]);
        let new = config("", &[("b", &dir)]);
        let plan = plan(&old, new, 16);
        assert_eq!(plan.restart, ["tier[0].name changed: restart to apply"]);
        assert_eq!(plan.config.tiers[0].name, "a");
    }

    #[test]
    fn an_unchanged_file_changes_nothing() {
        let dir = std::env::temp_dir();
        let old = config("cores = 1\n", &[("a", &dir)]);
        let plan = plan(&old, old.clone(), 16);
        assert!(plan.restart.is_empty(), "{:?}", plan.restart);
    }
}
