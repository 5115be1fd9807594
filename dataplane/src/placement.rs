//! Where things run on a NUMA host: the executors' CPUs (and with them their io_uring memory
//! and the XDP CPUMAP targets), and the CPUs each tier's cold reads run on. Pure: config +
//! [`Topology`] + the nodes of the NICs and tier disks in, a [`Plan`] out.
//!
//! The rule (`numa.placement = "auto"`, the default): keep a connection's NIC queue, CPU,
//! memory and disk on one node. Executors go to the nodes of the serving NICs (split evenly,
//! lowest CPUs of each node first, so SMT siblings listed after the physical cores are taken
//! last); with no NIC node known, to the nodes of the tiers' disks. A tier's cold reads run on
//! its disk's node (`[[tier]] numa_node` overrides what sysfs says), on CPUs no executor uses
//! where the node has some. An explicit `cpus` list always wins; so does `numa.cores_per_node`.
//! On a host with one node, or with `placement = "off"`, executors take CPUs `0..cores` as
//! they always did and cold reads are not bound.

use crate::config::{Config, NumaPlacement};
use crate::topology::{format_cpu_list, Topology};

/// A device (NIC or tier) and the node it is on, if known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// Interface or tier name.
    pub name: String,
    /// Its node; `None`: unknown (virtual device, no sysfs entry).
    pub node: Option<usize>,
}

impl Located {
    /// `name` on `node`.
    pub fn new(name: impl Into<String>, node: Option<usize>) -> Self {
        Located {
            name: name.into(),
            node,
        }
    }
}

/// Where one tier's cold reads run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierPlacement {
    /// The tier's name.
    pub name: String,
    /// Its disk's node (configured or detected).
    pub node: Option<usize>,
    /// CPUs its cold-read threads are bound to; empty: not bound.
    pub cold_cpus: Vec<usize>,
}

/// The outcome of [`plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The CPU of each executor, in executor order. The XDP CPUMAP targets are these CPUs.
    pub executor_cpus: Vec<usize>,
    /// Per tier, in config order.
    pub tiers: Vec<TierPlacement>,
    /// How the executor CPUs were chosen, in a few words (for logs and `edgeplane check`).
    pub how: String,
    /// NICs and tiers on a node where no executor serves: each costs an interconnect crossing
    /// per byte.
    pub crossings: Vec<String>,
}

/// Placement is impossible as configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct PlacementError {
    /// The config key at fault.
    pub key: String,
    /// What is wrong.
    pub problem: String,
}

fn err(key: impl Into<String>, problem: impl Into<String>) -> PlacementError {
    PlacementError {
        key: key.into(),
        problem: problem.into(),
    }
}

/// Places the executors and the tiers' cold reads. `nics`: the serving interfaces and their
/// nodes; `tiers`: each configured tier's detected disk node, in config order (a configured
/// `numa_node` overrides it).
pub fn plan(
    config: &Config,
    topo: &Topology,
    nics: &[Located],
    tiers: &[Located],
) -> Result<Plan, PlacementError> {
    let numa_on = config.numa.placement == NumaPlacement::Auto;
    let multi = topo.nodes.len() > 1;
    // Tier nodes: configured beats detected; a configured node must exist.
    let mut tier_nodes = Vec::with_capacity(config.tiers.len());
    for (i, tier) in config.tiers.iter().enumerate() {
        let detected = tiers
            .iter()
            .find(|t| t.name == tier.name)
            .and_then(|t| t.node);
        let node = match tier.numa_node {
            Some(n) if topo.node(n).is_none() => {
                return Err(err(
                    format!("tier[{i}].numa_node"),
                    format!("node {n} does not exist here ({})", topo.describe()),
                ))
            }
            Some(n) => Some(n),
            None => detected,
        };
        tier_nodes.push(Located::new(tier.name.clone(), node));
    }

    let (executor_cpus, how) = if let Some(cpus) = &config.cpus {
        (cpus.clone(), "explicit `cpus`".to_string())
    } else if let Some(per_node) = &config.numa.cores_per_node {
        let mut cpus = Vec::new();
        for (node, &n) in per_node.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let Some(have) = topo.node(node) else {
                return Err(err(
                    "numa.cores_per_node",
                    format!(
                        "asks for {n} cores on node {node}, which does not exist here ({})",
                        topo.describe()
                    ),
                ));
            };
            if have.cpus.len() < n {
                return Err(err(
                    "numa.cores_per_node",
                    format!(
                        "asks for {n} cores on node {node}, which has {}",
                        have.cpus.len()
                    ),
                ));
            }
            cpus.extend_from_slice(&have.cpus[..n]);
        }
        (cpus, "numa.cores_per_node".to_string())
    } else if !numa_on || !multi {
        let why = if numa_on {
            "one NUMA node"
        } else {
            "numa.placement = \"off\""
        };
        (
            (0..config.cores).collect(),
            format!("CPUs 0..{} ({why})", config.cores),
        )
    } else {
        let mut home: Vec<usize> = nics.iter().filter_map(|n| n.node).collect();
        let mut from = "the NICs' nodes";
        if home.is_empty() {
            home = tier_nodes.iter().filter_map(|t| t.node).collect();
            from = "the tiers' disk nodes";
        }
        home.sort_unstable();
        home.dedup();
        home.retain(|&n| topo.node(n).is_some());
        if home.is_empty() {
            (
                (0..config.cores).collect(),
                format!("CPUs 0..{} (no NIC or disk node known)", config.cores),
            )
        } else {
            (spread(topo, &home, config.cores), format!("on {from}"))
        }
    };

    let mut crossings = Vec::new();
    let serving_nodes: Vec<usize> = executor_cpus
        .iter()
        .filter_map(|&c| topo.node_of_cpu(c))
        .collect();
    if multi {
        for nic in nics {
            if let Some(n) = nic.node.filter(|n| !serving_nodes.contains(n)) {
                crossings.push(format!(
                    "NIC {} is on node{n}, where no executor serves",
                    nic.name
                ));
            }
        }
        for tier in &tier_nodes {
            if let Some(n) = tier.node.filter(|n| !serving_nodes.contains(n)) {
                crossings.push(format!(
                    "tier {} is on node{n}, where no executor serves",
                    tier.name
                ));
            }
        }
    }

    let tiers = tier_nodes
        .into_iter()
        .map(|t| {
            let cold_cpus = match (numa_on && multi, t.node.and_then(|n| topo.node(n))) {
                (true, Some(node)) => {
                    let free: Vec<usize> = node
                        .cpus
                        .iter()
                        .copied()
                        .filter(|c| !executor_cpus.contains(c))
                        .collect();
                    if free.is_empty() {
                        node.cpus.clone()
                    } else {
                        free
                    }
                }
                _ => Vec::new(),
            };
            TierPlacement {
                name: t.name,
                node: t.node,
                cold_cpus,
            }
        })
        .collect();
    Ok(Plan {
        executor_cpus,
        tiers,
        how,
        crossings,
    })
}

/// `cores` CPUs split evenly over the `home` nodes (the first nodes take the remainder), the
/// lowest CPUs of each first; what a home node cannot hold goes to the other home nodes, then
/// to the remaining nodes in order.
fn spread(topo: &Topology, home: &[usize], cores: usize) -> Vec<usize> {
    let mut taken: Vec<usize> = vec![0; topo.nodes.len()];
    let idx = |id: usize| topo.nodes.iter().position(|n| n.id == id).unwrap_or(0);
    let mut cpus = Vec::with_capacity(cores);
    let share = cores / home.len();
    let extra = cores % home.len();
    for (k, &node) in home.iter().enumerate() {
        let want = share + usize::from(k < extra);
        let i = idx(node);
        let n = want.min(topo.nodes[i].cpus.len());
        cpus.extend_from_slice(&topo.nodes[i].cpus[..n]);
        taken[i] = n;
    }
    let order: Vec<usize> = home
        .iter()
        .map(|&n| idx(n))
        .chain((0..topo.nodes.len()).filter(|i| !home.contains(&topo.nodes[*i].id)))
        .collect();
    for i in order {
        while cpus.len() < cores && taken[i] < topo.nodes[i].cpus.len() {
            cpus.push(topo.nodes[i].cpus[taken[i]]);
            taken[i] += 1;
        }
    }
    cpus
}

/// The serving NICs ([`Config::numa_interfaces`]) and the tiers, each with the node sysfs
/// under `root` puts it on (`/` when serving; a fake tree in `edgeplane check --root` and tests).
pub fn locate(config: &Config, root: &std::path::Path) -> (Vec<Located>, Vec<Located>) {
    use crate::topology::{nic_node, path_node};
    let nics = config
        .numa_interfaces()
        .into_iter()
        .map(|n| {
            let node = nic_node(root, &n);
            Located::new(n, node)
        })
        .collect();
    let real_root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let tiers = config
        .tiers
        .iter()
        .map(|t| {
            // Resolve symlinks inside the root, so the mount table's view applies.
            let inside = root.join(t.path.strip_prefix("/").unwrap_or(&t.path));
            let path = inside
                .canonicalize()
                .ok()
                .and_then(|p| {
                    p.strip_prefix(&real_root)
                        .ok()
                        .map(|p| std::path::Path::new("/").join(p))
                })
                .unwrap_or_else(|| t.path.clone());
            Located::new(t.name.clone(), path_node(root, &path))
        })
        .collect();
    (nics, tiers)
}

impl Plan {
    /// The CPUs tier `name`'s cold reads are bound to (empty: unbound).
    pub fn cold_cpus(&self, name: &str) -> &[usize] {
        self.tiers
            .iter()
            .find(|t| t.name == name)
            .map_or(&[], |t| &t.cold_cpus)
    }

    /// One line per fact, for logs and `edgeplane check`: the executors, then each tier
    /// (`tiers: NAME on nodeN, cold reads on CPUs ...`).
    pub fn describe(&self, topo: &Topology) -> Vec<String> {
        let mut nodes: Vec<String> = Vec::new();
        for node in &topo.nodes {
            let n = self
                .executor_cpus
                .iter()
                .filter(|c| node.cpus.contains(c))
                .count();
            if n > 0 {
                nodes.push(format!("{n} on node{}", node.id));
            }
        }
        let mut lines = vec![format!(
            "executors on CPUs {} ({}; {})",
            format_cpu_list(&self.executor_cpus),
            nodes.join(", "),
            self.how
        )];
        for t in &self.tiers {
            let node = t
                .node
                .map_or("node unknown".to_string(), |n| format!("node{n}"));
            let cold = if t.cold_cpus.is_empty() {
                "cold reads unbound".to_string()
            } else {
                format!("cold reads on CPUs {}", format_cpu_list(&t.cold_cpus))
            };
            lines.push(format!("tiers: {} on {node}, {cold}", t.name));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::tests::fake_host;
    use crate::topology::{nic_node, path_node};
    use std::path::Path;

    fn config(extra: &str, tiers: &[(&str, Option<usize>)]) -> Config {
        let dir = std::env::temp_dir().display().to_string();
        let mut text = format!("{extra}\n");
        for (name, node) in tiers {
            text.push_str(&format!(
                "[[tier]]\nname = \"{name}\"\nkind = \"flash\"\npath = {dir:?}\n"
            ));
            if let Some(n) = node {
                text.push_str(&format!("numa_node = {n}\n"));
            }
        }
        // Parsed without validation: the test host has 2 CPUs, the fake ones up to 32.
        let c: Config = toml::from_str(&text).unwrap();
        c
    }

    /// Reads the nodes of `nics` and of tiers mounted at `/srv/<name>` from a fake tree, as
    /// `serve` does from `/`.
    fn located(root: &Path, nics: &[&str], tiers: &[&str]) -> (Vec<Located>, Vec<Located>) {
        (
            nics.iter()
                .map(|n| Located::new(*n, nic_node(root, n)))
                .collect(),
            tiers
                .iter()
                .map(|t| Located::new(*t, path_node(root, &Path::new("/srv").join(t))))
                .collect(),
        )
    }

    #[test]
    fn one_node_keeps_the_old_cpus_and_binds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        fake_host(dir.path(), &["0-1"], &[("eth0", 0)], &[("flash", 0)]);
        let topo = Topology::read(dir.path()).unwrap();
        let (nics, tiers) = located(dir.path(), &["eth0"], &["flash"]);
        let p = plan(
            &config("cores = 2", &[("flash", None)]),
            &topo,
            &nics,
            &tiers,
        )
        .unwrap();
        assert_eq!(p.executor_cpus, [0, 1]);
        assert!(p.tiers[0].cold_cpus.is_empty());
        assert!(p.crossings.is_empty());
        assert_eq!(p.tiers[0].node, Some(0));
    }

    #[test]
    fn two_nodes_follow_the_nic_and_flag_the_far_disk() {
        let dir = tempfile::tempdir().unwrap();
        fake_host(
            dir.path(),
            &["0-7,16-23", "8-15,24-31"],
            &[("ens1f0", 1)],
            &[("flash", 1), ("hdd", 0)],
        );
        let topo = Topology::read(dir.path()).unwrap();
        let (nics, tiers) = located(dir.path(), &["ens1f0"], &["flash", "hdd"]);
        let c = config("cores = 6", &[("flash", None), ("hdd", None)]);
        let p = plan(&c, &topo, &nics, &tiers).unwrap();
        assert_eq!(
            p.executor_cpus,
            [8, 9, 10, 11, 12, 13],
            "node 1's physical cores first"
        );
        // flash: node 1's CPUs the executors leave free; hdd: node 0 (no executor there).
        assert_eq!(
            p.tiers[0].cold_cpus,
            [14, 15, 24, 25, 26, 27, 28, 29, 30, 31]
        );
        assert_eq!(p.tiers[1].cold_cpus, topo.node(0).unwrap().cpus);
        assert_eq!(
            p.crossings,
            ["tier hdd is on node0, where no executor serves"]
        );
        let lines = p.describe(&topo);
        assert_eq!(
            lines[0],
            "executors on CPUs 8-13 (6 on node1; on the NICs' nodes)"
        );
        assert_eq!(
            lines[2],
            "tiers: hdd on node0, cold reads on CPUs 0-7,16-23"
        );

        // The operator moves the tier by config: configured beats detected.
        let c = config("cores = 6", &[("flash", None), ("hdd", Some(1))]);
        let p = plan(&c, &topo, &nics, &tiers).unwrap();
        assert!(p.crossings.is_empty(), "{:?}", p.crossings);
        // No NIC known: the disks decide, split over both nodes.
        let p = plan(
            &config("cores = 3", &[("flash", None), ("hdd", None)]),
            &topo,
            &[],
            &tiers,
        )
        .unwrap();
        assert_eq!(p.executor_cpus, [0, 1, 8]);
        // placement off: the old CPUs, a crossing still reported, nothing bound.
        let c = config("cores = 2\n[numa]\nplacement = \"off\"", &[("flash", None)]);
        let p = plan(&c, &topo, &nics, &tiers).unwrap();
        assert_eq!(p.executor_cpus, [0, 1]);
        assert!(p.tiers[0].cold_cpus.is_empty());
        assert_eq!(
            p.crossings,
            [
                "NIC ens1f0 is on node1, where no executor serves",
                "tier flash is on node1, where no executor serves"
            ]
        );
    }

    #[test]
    fn four_nodes_two_nics_and_cores_per_node() {
        let dir = tempfile::tempdir().unwrap();
        fake_host(
            dir.path(),
            &["0-3", "4-7", "8-11", "12-15"],
            &[("a", 3), ("b", 1), ("virt", -1)],
            &[("flash", 2)],
        );
        let topo = Topology::read(dir.path()).unwrap();
        let (nics, tiers) = located(dir.path(), &["a", "b", "virt"], &["flash"]);
        // 5 cores over nodes 1 and 3: node 1 takes the odd one.
        let p = plan(
            &config("cores = 5", &[("flash", None)]),
            &topo,
            &nics,
            &tiers,
        )
        .unwrap();
        assert_eq!(p.executor_cpus, [4, 5, 6, 12, 13]);
        assert_eq!(
            p.crossings,
            ["tier flash is on node2, where no executor serves"]
        );
        assert_eq!(p.tiers[0].cold_cpus, [8, 9, 10, 11]);
        // More cores than the NIC nodes hold: the rest spill to the other nodes, in order.
        let p = plan(
            &config("cores = 10", &[("flash", None)]),
            &topo,
            &nics,
            &tiers,
        )
        .unwrap();
        assert_eq!(p.executor_cpus, [4, 5, 6, 7, 12, 13, 14, 15, 0, 1]);
        // Explicit per node.
        let c = config(
            "cores = 4\n[numa]\ncores_per_node = [0, 0, 2, 2]",
            &[("flash", None)],
        );
        let p = plan(&c, &topo, &nics, &tiers).unwrap();
        assert_eq!(p.executor_cpus, [8, 9, 12, 13]);
        assert_eq!(p.crossings, ["NIC b is on node1, where no executor serves"]);
        let c = config(
            "cores = 5\n[numa]\ncores_per_node = [0, 5]",
            &[("flash", None)],
        );
        let e = plan(&c, &topo, &nics, &tiers).unwrap_err();
        assert_eq!(e.key, "numa.cores_per_node");
        assert!(e.problem.contains("node 1, which has 4"), "{e}");
        let c = config("cores = 1", &[("flash", Some(7))]);
        let e = plan(&c, &topo, &nics, &tiers).unwrap_err();
        assert_eq!(e.key, "tier[0].numa_node");
        // Explicit cpus win over everything.
        let c = config("cores = 2\ncpus = [0, 15]", &[("flash", None)]);
        assert_eq!(
            plan(&c, &topo, &nics, &tiers).unwrap().executor_cpus,
            [0, 15]
        );
    }
}
