//! The host's NUMA topology, read from sysfs under a root directory (`/` on a real host, a fake
//! tree in tests): which CPUs each node has, and which node a NIC or a tier's disk hangs off.
//!
//! Pure file reading, no syscalls: `edgeplane check --root DIR` and the unit tests read fake
//! trees with the same code `edgeplane serve` reads `/` with. Files read:
//! - `/sys/devices/system/node/node<N>/cpulist` (no node directory: one node with every CPU of
//!   `/sys/devices/system/cpu/online`, as on a kernel without NUMA);
//! - `/sys/class/net/<if>/device/numa_node` (`-1` or absent: unknown, e.g. a virtual NIC);
//! - a directory's disk: `/proc/self/mountinfo` (the mount holding it, its `MAJ:MIN`), then the
//!   first `numa_node` file found walking up from `/sys/dev/block/MAJ:MIN` (a partition's disk,
//!   an NVMe namespace's controller, its PCI function).

use std::path::{Path, PathBuf};

/// One NUMA node and its online CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The node number (`node<N>`).
    pub id: usize,
    /// Its CPUs, ascending.
    pub cpus: Vec<usize>,
}

/// The host's nodes, by ascending id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Nodes with at least one CPU (memory-only nodes are left out: nothing can run there).
    pub nodes: Vec<Node>,
}

impl Topology {
    /// Reads the topology under `root`. Without `/sys/devices/system/node`, one node 0 with the
    /// online CPUs; with neither, `None`.
    pub fn read(root: &Path) -> Option<Topology> {
        let dir = root.join("sys/devices/system/node");
        let mut nodes = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(id) = name
                    .to_str()
                    .and_then(|n| n.strip_prefix("node"))
                    .and_then(|n| n.parse::<usize>().ok())
                else {
                    continue;
                };
                let Some(cpus) = std::fs::read_to_string(entry.path().join("cpulist"))
                    .ok()
                    .and_then(|t| parse_cpu_list(&t))
                else {
                    continue;
                };
                if !cpus.is_empty() {
                    nodes.push(Node { id, cpus });
                }
            }
        }
        if nodes.is_empty() {
            let cpus = std::fs::read_to_string(root.join("sys/devices/system/cpu/online"))
                .ok()
                .and_then(|t| parse_cpu_list(&t))?;
            nodes.push(Node { id: 0, cpus });
        }
        nodes.sort_by_key(|n| n.id);
        Some(Topology { nodes })
    }

    /// One node with CPUs `0..cpus` (what a host without NUMA looks like).
    pub fn single(cpus: usize) -> Topology {
        Topology {
            nodes: vec![Node {
                id: 0,
                cpus: (0..cpus).collect(),
            }],
        }
    }

    /// The node with id `id`.
    pub fn node(&self, id: usize) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The node CPU `cpu` belongs to.
    pub fn node_of_cpu(&self, cpu: usize) -> Option<usize> {
        self.nodes
            .iter()
            .find(|n| n.cpus.contains(&cpu))
            .map(|n| n.id)
    }

    /// `node0 cpus 0-15, node1 cpus 16-31`: one line for logs and `edgeplane check`.
    pub fn describe(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("node{} cpus {}", n.id, format_cpu_list(&n.cpus)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Parses a kernel CPU list like `0-3,8-11` (`None` if malformed).
pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?);
                if b < a {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Some(cpus)
}

/// Formats CPUs as a kernel CPU list (`0-3,8`).
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

/// Reads a `numa_node` file: `-1`, absent or malformed mean unknown.
fn read_node(path: &Path) -> Option<usize> {
    std::fs::read_to_string(path)
        .ok()?
        .trim()
        .parse::<i64>()
        .ok()
        .and_then(|n| usize::try_from(n).ok())
}

/// The node of network interface `ifname` (`None`: unknown or not a PCI device).
pub fn nic_node(root: &Path, ifname: &str) -> Option<usize> {
    read_node(
        &root
            .join("sys/class/net")
            .join(ifname)
            .join("device/numa_node"),
    )
}

/// The `MAJ:MIN` of the device holding `path`, from `/proc/self/mountinfo` under `root` (the
/// mount point that is the longest prefix of `path`).
pub fn device_of_path(root: &Path, path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(root.join("proc/self/mountinfo")).ok()?;
    text.lines()
        .filter_map(|l| {
            // id parent MAJ:MIN root mount-point ...
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 5).then(|| (f[2], unescape_mount(f[4])))
        })
        .filter(|(_, mp)| path.starts_with(mp))
        .max_by_key(|(_, mp)| mp.as_os_str().len())
        .map(|(dev, _)| dev.to_string())
}

/// Mount points in mountinfo escape space, tab, newline and backslash as `\ooo`.
fn unescape_mount(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(String::from_utf8_lossy(&out).into_owned())
}

/// The node of block device `MAJ:MIN`: the first `numa_node` file walking up from
/// `/sys/dev/block/MAJ:MIN` (resolved, as the kernel's links are) towards `/sys`.
pub fn block_node(root: &Path, majmin: &str) -> Option<usize> {
    let sys = root.join("sys").canonicalize().ok()?;
    let mut dir = root
        .join("sys/dev/block")
        .join(majmin)
        .canonicalize()
        .ok()?;
    while dir.starts_with(&sys) && dir != sys {
        for candidate in [dir.join("numa_node"), dir.join("device/numa_node")] {
            if candidate.exists() {
                // -1 on a device means unknown: keep walking, the PCI function may know.
                if let Some(n) = read_node(&candidate) {
                    return Some(n);
                }
            }
        }
        if !dir.pop() {
            break;
        }
    }
    None
}

/// The node of the disk holding directory `path` (a tier), if sysfs says.
pub fn path_node(root: &Path, path: &Path) -> Option<usize> {
    block_node(root, &device_of_path(root, path)?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs;

    /// Builds a fake sysfs tree: `nodes[i]` = node i's CPU list; NICs and disks by
    /// `(name, node)`; each disk `nvmeK` is mounted at `/srv/<name>` (partition 1, whose
    /// node is only known through its PCI function two levels up).
    pub(crate) fn fake_host(
        root: &Path,
        nodes: &[&str],
        nics: &[(&str, i64)],
        disks: &[(&str, i64)],
    ) {
        let w = |p: &str, t: &str| {
            let p = root.join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, t).unwrap();
        };
        let all: Vec<String> = nodes.iter().map(|s| s.to_string()).collect();
        w("sys/devices/system/cpu/online", &all.join(","));
        for (i, cpus) in nodes.iter().enumerate() {
            w(&format!("sys/devices/system/node/node{i}/cpulist"), cpus);
        }
        for (i, (nic, node)) in nics.iter().enumerate() {
            let dev = format!("sys/devices/pci0000:00/0000:00:1{i}.0");
            w(&format!("{dev}/numa_node"), &format!("{node}\n"));
            fs::create_dir_all(root.join("sys/class/net").join(nic)).unwrap();
            std::os::unix::fs::symlink(
                root.join(&dev),
                root.join("sys/class/net").join(nic).join("device"),
            )
            .unwrap();
        }
        let mut mountinfo = String::from("22 1 252:1 / / rw,relatime - ext4 /dev/vda1 rw\n");
        fs::create_dir_all(root.join("sys/dev/block")).unwrap();
        for (i, (name, node)) in disks.iter().enumerate() {
            let pci = format!("sys/devices/pci0000:00/0000:00:0{i}.0");
            w(&format!("{pci}/numa_node"), &format!("{node}\n"));
            // The controller and namespace know nothing themselves here (-1 / absent).
            w(&format!("{pci}/nvme/nvme{i}/numa_node"), "-1\n");
            let part = root.join(format!("{pci}/nvme/nvme{i}/nvme{i}n1/nvme{i}n1p1"));
            fs::create_dir_all(&part).unwrap();
            std::os::unix::fs::symlink(&part, root.join(format!("sys/dev/block/259:{i}"))).unwrap();
            mountinfo.push_str(&format!(
                "{} 22 259:{i} / /srv/{name} rw,noatime - xfs /dev/nvme{i}n1p1 rw\n",
                30 + i
            ));
        }
        w("proc/self/mountinfo", &mountinfo);
    }

    #[test]
    fn cpu_lists_parse_and_format() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11\n"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(format_cpu_list(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(format_cpu_list(&[]), "");
    }

    #[test]
    fn one_two_and_four_nodes() {
        for (nodes, want) in [
            (&["0-1"][..], "node0 cpus 0-1"),
            (
                &["0-7,16-23", "8-15,24-31"][..],
                "node0 cpus 0-7,16-23, node1 cpus 8-15,24-31",
            ),
            (
                &["0-3", "4-7", "8-11", "12-15"][..],
                "node0 cpus 0-3, node1 cpus 4-7, node2 cpus 8-11, node3 cpus 12-15",
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            fake_host(dir.path(), nodes, &[], &[]);
            let t = Topology::read(dir.path()).unwrap();
            assert_eq!(t.nodes.len(), nodes.len());
            assert_eq!(t.describe(), want);
        }
    }

    #[test]
    fn no_node_directory_is_one_node_of_the_online_cpus() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sys/devices/system/cpu");
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("online"), "0-5\n").unwrap();
        assert_eq!(Topology::read(dir.path()).unwrap(), Topology::single(6));
        assert_eq!(Topology::read(&dir.path().join("nothing")), None);
    }

    #[test]
    fn nic_and_disk_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fake_host(
            root,
            &["0-3", "4-7"],
            &[("ens1f0", 1), ("veth0", -1)],
            &[("flash", 1), ("hdd", 0)],
        );
        assert_eq!(nic_node(root, "ens1f0"), Some(1));
        assert_eq!(nic_node(root, "veth0"), None, "-1 is unknown");
        assert_eq!(nic_node(root, "lo"), None, "no device link");
        assert_eq!(
            device_of_path(root, Path::new("/srv/flash/x")).as_deref(),
            Some("259:0")
        );
        assert_eq!(path_node(root, Path::new("/srv/flash")), Some(1));
        assert_eq!(path_node(root, Path::new("/srv/hdd/titles")), Some(0));
        assert_eq!(
            path_node(root, Path::new("/var/lib")),
            None,
            "252:1 has no sysfs entry"
        );
    }

    #[test]
    fn mount_points_with_escapes() {
        assert_eq!(
            unescape_mount("/srv/my\\040disk"),
            Path::new("/srv/my disk")
        );
        assert_eq!(unescape_mount("/plain"), Path::new("/plain"));
    }
}
