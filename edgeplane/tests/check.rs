//! `edgeplane check` against fake /proc and /sys trees: a healthy host passes, and each broken
//! fact fails (exit 1) on its own line, naming what to do.

use std::fs;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_edgeplane");

/// A healthy fake host under `root`, and a config whose tiers live inside it.
fn healthy_host(root: &Path) {
    let files = [
        ("proc/sys/kernel/osrelease", "6.1.0-26-amd64\n"),
        ("proc/sys/kernel/io_uring_disabled", "0\n"),
        (
            "proc/self/limits",
            "Limit                     Soft Limit           Hard Limit           Units\n\
             Max locked memory         8388608              8388608              bytes\n",
        ),
        (
            "proc/mounts",
            "/dev/vda1 / ext4 rw,relatime 0 0\n\
             /dev/nvme0n1 /srv/flash xfs rw,noatime 0 0\n\
             /dev/sda1 /srv/hdd xfs rw,noatime 0 0\n\
             bpf /sys/fs/bpf bpf rw,nosuid,nodev,noexec,relatime 0 0\n",
        ),
        (
            "proc/sys/net/ipv4/tcp_available_ulp",
            "espintcp mptcp tls\n",
        ),
        ("sys/devices/system/cpu/online", "0-3\n"),
        ("run/systemd/timesync/synchronized", ""),
    ];
    for (path, text) in files {
        let p = root.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
    fs::create_dir_all(root.join("srv/flash")).unwrap();
    fs::create_dir_all(root.join("srv/hdd")).unwrap();
    fs::write(
        root.join("edgeplane.toml"),
        "cores = 2\n[[tier]]\nname = \"nvme\"\nkind = \"flash\"\npath = \"/srv/flash\"\n\
         [[tier]]\nname = \"hdd\"\nkind = \"storage\"\npath = \"/srv/hdd\"\n",
    )
    .unwrap();
}

fn check(root: &Path) -> (i32, String) {
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(root.join("edgeplane.toml"))
        .arg("--root")
        .arg(root)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{out:?}"
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The one line for `name`.
fn line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l[l.char_indices().nth(2).map_or(0, |(i, _)| i)..].starts_with(name))
        .unwrap_or_else(|| panic!("no {name:?} line in:\n{out}"))
}

#[test]
fn a_healthy_host_passes() {
    let dir = tempfile::tempdir().unwrap();
    healthy_host(dir.path());
    let (code, out) = check(dir.path());
    assert_eq!(code, 0, "{out}");
    for name in [
        "kernel",
        "io_uring",
        "kernel TLS",
        "bpf fs",
        "memlock",
        "cpus",
        "clock",
    ] {
        assert!(line(&out, name).starts_with('✓'), "{name}:\n{out}");
    }
    let tiers: Vec<&str> = out.lines().filter(|l| l.contains(" tier ")).collect();
    assert_eq!(tiers.len(), 2, "{out}");
    assert!(
        tiers
            .iter()
            .all(|l| l.starts_with('✓') && l.contains("xfs")),
        "{out}"
    );
    assert!(out.contains("serving can start"), "{out}");
}

/// Each case breaks one fact; the named item must fail with its advice, and the exit code say
/// serving cannot start.
#[test]
fn each_broken_fact_fails_its_item() {
    type Break = fn(&Path);
    let cases: [(&str, Break, &str); 5] = [
        (
            "kernel",
            |r| fs::write(r.join("proc/sys/kernel/osrelease"), "4.19.0-20-amd64\n").unwrap(),
            "needs 5.8+",
        ),
        (
            "io_uring",
            |r| fs::write(r.join("proc/sys/kernel/io_uring_disabled"), "2\n").unwrap(),
            "sysctl",
        ),
        (
            "memlock",
            |r| {
                fs::write(
                    r.join("proc/self/limits"),
                    "Max locked memory         65536                65536                bytes\n",
                )
                .unwrap()
            },
            "LimitMEMLOCK=",
        ),
        (
            "cpus",
            |r| fs::write(r.join("sys/devices/system/cpu/online"), "0\n").unwrap(),
            "not online",
        ),
        (
            "tier",
            |r| fs::remove_dir(r.join("srv/hdd")).unwrap(),
            "does not exist",
        ),
    ];
    for (name, break_it, advice) in cases {
        let dir = tempfile::tempdir().unwrap();
        healthy_host(dir.path());
        break_it(dir.path());
        let (code, out) = check(dir.path());
        assert_eq!(code, 1, "{name}: want exit 1:\n{out}");
        let failed: Vec<&str> = out.lines().filter(|l| l.starts_with('✗')).collect();
        assert_eq!(failed.len(), 1, "{name}: exactly one ✗ line:\n{out}");
        assert!(
            failed[0][4..].trim_start().starts_with(name),
            "{name}:\n{out}"
        );
        assert!(
            failed[0].contains(advice),
            "{name}: want {advice:?} in {:?}",
            failed[0]
        );
    }
}

/// `[signing]`: a keys file with a valid key is ✓; missing, expired or signing off is a
/// warning (serving starts, and refuses or does not check); `[access] prefixes_file` likewise.
#[test]
fn signing_and_access_items() {
    let dir = tempfile::tempdir().unwrap();
    healthy_host(dir.path());
    let r = dir.path();
    let config = r.join("edgeplane.toml");
    let base = fs::read_to_string(&config).unwrap();
    // Default: signing on, keys at /var/lib/edgeplane/signing-keys.json (under the fake root).
    let (code, out) = check(r);
    assert_eq!(code, 0, "{out}");
    let l = line(&out, "signing");
    assert!(
        l.starts_with('!')
            && l.contains("/var/lib/edgeplane/signing-keys.json")
            && l.contains("403"),
        "{out}"
    );
    let keys = r.join("var/lib/edgeplane/signing-keys.json");
    fs::create_dir_all(keys.parent().unwrap()).unwrap();
    let secret = "A".repeat(43);
    fs::write(
        &keys,
        format!(r#"{{"keys": [{{"id": "k1", "secret": "{secret}", "not_after": 4102444800}}]}}"#),
    )
    .unwrap();
    let (_, out) = check(r);
    assert!(line(&out, "signing").starts_with('✓'), "{out}");
    fs::write(
        &keys,
        format!(r#"{{"keys": [{{"id": "k1", "secret": "{secret}", "not_after": 1000}}]}}"#),
    )
    .unwrap();
    let (code, out) = check(r);
    assert_eq!(code, 0, "{out}");
    assert!(
        line(&out, "signing").starts_with('!') && out.contains("none still valid"),
        "{out}"
    );
    fs::write(
        &config,
        format!("{base}\n[signing]\nenabled = false\n[access]\nprefixes_file = \"/etc/p.json\"\n"),
    )
    .unwrap();
    let (code, out) = check(r);
    assert_eq!(code, 0, "{out}");
    assert!(
        line(&out, "signing").starts_with('!') && out.contains("URLs are not checked"),
        "{out}"
    );
    assert!(
        line(&out, "access").starts_with('!') && out.contains("no client may connect"),
        "{out}"
    );
    fs::create_dir_all(r.join("etc")).unwrap();
    fs::write(r.join("etc/p.json"), r#"{"prefixes": ["203.0.113.0/24"]}"#).unwrap();
    let (_, out) = check(r);
    assert!(
        line(&out, "access").starts_with('✓') && out.contains("1 served prefixes"),
        "{out}"
    );
}

/// Degraded but servable: warnings, exit 0.
#[test]
fn warnings_do_not_stop_serving() {
    let dir = tempfile::tempdir().unwrap();
    healthy_host(dir.path());
    let r = dir.path();
    fs::write(r.join("proc/sys/net/ipv4/tcp_available_ulp"), "mptcp\n").unwrap();
    fs::write(
        r.join("proc/mounts"),
        "/dev/vda1 / ext4 rw 0 0\ntmpfs /srv/flash tmpfs rw 0 0\n",
    )
    .unwrap();
    fs::remove_file(r.join("run/systemd/timesync/synchronized")).unwrap();
    let (code, out) = check(r);
    assert_eq!(code, 0, "{out}");
    assert!(
        line(&out, "kernel TLS").starts_with('!') && out.contains("userspace rustls"),
        "{out}"
    );
    assert!(line(&out, "bpf fs").starts_with('!'), "{out}");
    assert!(line(&out, "clock").starts_with('!'), "{out}");
    let flash = out.lines().find(|l| l.contains("nvme (flash)")).unwrap();
    assert!(
        flash.starts_with('!') && flash.contains("tmpfs is memory"),
        "{out}"
    );
    let hdd = out.lines().find(|l| l.contains("hdd (storage)")).unwrap();
    assert!(hdd.starts_with('!') && hdd.contains("noatime"), "{out}");

    // A tls module on disk but not loaded: say how to load it.
    let module = r.join("lib/modules/6.1.0-26-amd64/kernel/net/tls");
    fs::create_dir_all(&module).unwrap();
    fs::write(module.join("tls.ko.xz"), b"").unwrap();
    let (_, out) = check(r);
    assert!(line(&out, "kernel TLS").contains("modprobe tls"), "{out}");
}

/// Turns the healthy host into a NUMA one: `nodes[i]` is node i's CPU list; each NIC (and each
/// tier disk, mounted at `/srv/<tier>`) hangs off a PCI function whose `numa_node` says where,
/// linked the way sysfs links them (the disk through its partition and namespace).
fn numa_host(root: &Path, nodes: &[&str], nics: &[(&str, i64)], disks: &[(&str, i64)]) {
    let w = |p: &str, t: &str| {
        let p = root.join(p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, t).unwrap();
    };
    w("sys/devices/system/cpu/online", &nodes.join(","));
    for (i, cpus) in nodes.iter().enumerate() {
        w(&format!("sys/devices/system/node/node{i}/cpulist"), cpus);
    }
    for (i, (nic, node)) in nics.iter().enumerate() {
        let dev = format!("sys/devices/pci0000:00/0000:00:1{i}.0");
        w(&format!("{dev}/numa_node"), &format!("{node}\n"));
        let net = root.join("sys/class/net").join(nic);
        fs::create_dir_all(&net).unwrap();
        std::os::unix::fs::symlink(root.join(&dev), net.join("device")).unwrap();
    }
    let mut mountinfo = String::from("22 1 252:1 / / rw,relatime - ext4 /dev/vda1 rw\n");
    fs::create_dir_all(root.join("sys/dev/block")).unwrap();
    for (i, (tier, node)) in disks.iter().enumerate() {
        let pci = format!("sys/devices/pci0000:00/0000:00:0{i}.0");
        w(&format!("{pci}/numa_node"), &format!("{node}\n"));
        let part = root.join(format!("{pci}/nvme/nvme{i}/nvme{i}n1/nvme{i}n1p1"));
        fs::create_dir_all(&part).unwrap();
        std::os::unix::fs::symlink(&part, root.join(format!("sys/dev/block/259:{i}"))).unwrap();
        mountinfo.push_str(&format!(
            "{} 22 259:{i} / /srv/{tier} rw,noatime - xfs /dev/nvme{i}n1p1 rw\n",
            30 + i
        ));
    }
    w("proc/self/mountinfo", &mountinfo);
}

fn numa_config(root: &Path, extra: &str, hdd_extra: &str) {
    fs::write(
        root.join("edgeplane.toml"),
        format!(
            "cores = 2\n{extra}\n[[tier]]\nname = \"nvme\"\nkind = \"flash\"\npath = \"/srv/flash\"\n\
             [[tier]]\nname = \"hdd\"\nkind = \"storage\"\npath = \"/srv/hdd\"\n{hdd_extra}\n"
        ),
    )
    .unwrap();
}

/// One node (the healthy host has no node directory; then one with it): the topology line,
/// executors where they always were, no crossing.
#[test]
fn numa_one_node() {
    let dir = tempfile::tempdir().unwrap();
    healthy_host(dir.path());
    let (code, out) = check(dir.path());
    assert_eq!(code, 0, "{out}");
    let n = line(&out, "numa");
    assert!(
        n.starts_with('✓') && n.ends_with("1 node: node0 cpus 0-3"),
        "{out}"
    );
    let p = line(&out, "placement");
    assert!(
        p.starts_with('✓')
            && p.contains("executors on CPUs 0-1 (2 on node0; CPUs 0..2 (one NUMA node))"),
        "{out}"
    );
    assert!(!out.contains("crossing"), "{out}");

    numa_host(
        dir.path(),
        &["0-3"],
        &[("eth0", 0)],
        &[("flash", 0), ("hdd", 0)],
    );
    numa_config(dir.path(), "[numa]\ninterfaces = [\"eth0\"]", "");
    let (code, out) = check(dir.path());
    assert_eq!(code, 0, "{out}");
    let p = line(&out, "placement");
    assert!(
        p.contains("tiers: nvme on node0, cold reads unbound") && p.contains("NIC eth0: node0"),
        "{out}"
    );
    assert!(!out.contains("crossing"), "{out}");
}

/// Two nodes, the NIC and the flash disk on node 1, the HDD on node 0: executors go to node 1,
/// the HDD is flagged; a tier configured onto a node that does not exist fails.
#[test]
fn numa_two_nodes_flags_the_far_tier() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    healthy_host(r);
    numa_host(
        r,
        &["0-3", "4-7"],
        &[("ens1f0", 1)],
        &[("flash", 1), ("hdd", 0)],
    );
    numa_config(r, "[numa]\ninterfaces = [\"ens1f0\"]", "");
    let (code, out) = check(r);
    assert_eq!(code, 0, "warnings only:\n{out}");
    assert!(
        line(&out, "numa").contains("2 nodes: node0 cpus 0-3, node1 cpus 4-7"),
        "{out}"
    );
    assert!(
        line(&out, "cpus").contains("2 executors on CPUs [4, 5] of 8 online"),
        "{out}"
    );
    let p = line(&out, "placement");
    assert!(
        p.contains("executors on CPUs 4-5 (2 on node1; on the NICs' nodes)")
            && p.contains("tiers: nvme on node1, cold reads on CPUs 6-7")
            && p.contains("tiers: hdd on node0, cold reads on CPUs 0-3")
            && p.contains("NIC ens1f0: node1"),
        "{out}"
    );
    let crossings: Vec<&str> = out.lines().filter(|l| l.contains("crossing")).collect();
    assert_eq!(crossings.len(), 1, "{out}");
    assert!(
        crossings[0].starts_with('!')
            && crossings[0].contains("tier hdd is on node0, where no executor serves"),
        "{out}"
    );

    // One executor per node: no crossing left.
    numa_config(
        r,
        "[numa]\ninterfaces = [\"ens1f0\"]\ncores_per_node = [1, 1]",
        "",
    );
    let (code, out) = check(r);
    assert_eq!(code, 0, "{out}");
    assert!(
        line(&out, "placement")
            .contains("executors on CPUs 0,4 (1 on node0, 1 on node1; numa.cores_per_node)"),
        "{out}"
    );
    assert!(!out.contains("crossing"), "{out}");

    // A tier said to be on node 3 of a 2-node host.
    numa_config(r, "", "numa_node = 3");
    let (code, out) = check(r);
    assert_eq!(code, 1, "{out}");
    let p = line(&out, "placement");
    assert!(
        p.starts_with('✗') && p.contains("tier[1].numa_node: node 3 does not exist here"),
        "{out}"
    );
}

/// Four nodes, NICs on nodes 1 and 3, disks on 2 and 3: one executor on each NIC node, the
/// node-2 disk flagged; with `placement = "off"` the executors sit on node 0 and both NICs and
/// the node-2 tier are flagged.
#[test]
fn numa_four_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    healthy_host(r);
    numa_host(
        r,
        &["0-1", "2-3", "4-5", "6-7"],
        &[("a", 3), ("b", 1)],
        &[("flash", 2), ("hdd", 3)],
    );
    numa_config(r, "[numa]\ninterfaces = [\"a\", \"b\"]", "");
    let (code, out) = check(r);
    assert_eq!(code, 0, "{out}");
    assert!(line(&out, "numa").contains("4 nodes"), "{out}");
    assert!(
        line(&out, "placement").contains("executors on CPUs 2,6 (1 on node1, 1 on node3;"),
        "{out}"
    );
    let crossings: Vec<&str> = out.lines().filter(|l| l.contains("crossing")).collect();
    assert_eq!(crossings.len(), 1, "{out}");
    assert!(crossings[0].contains("tier nvme is on node2"), "{out}");

    numa_config(
        r,
        "[numa]\nplacement = \"off\"\ninterfaces = [\"a\", \"b\"]",
        "",
    );
    let (_, out) = check(r);
    assert!(
        line(&out, "placement").contains("executors on CPUs 0-1 (2 on node0;"),
        "{out}"
    );
    let crossings: Vec<&str> = out.lines().filter(|l| l.contains("crossing")).collect();
    assert_eq!(crossings.len(), 4, "{out}");
}
