//! `edgeplane check`: a preflight of the host, one line per item, each failing item with what
//! to do. The exit code says whether serving can start.
//!
//! Facts come from files under a root directory (`/` on a real host; a fake tree in tests):
//! `/proc/sys/kernel/osrelease`, `/proc/self/limits`, `/proc/mounts`, `/sys/...`. The few facts
//! only a syscall can give (binding a port, free space, clock discipline) are asked of the real
//! host only when the root is `/`, and skipped otherwise. This module never changes the host.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use edgeplane_dataplane::config::{Config, ConfigError};

/// How an item came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Fine.
    Ok,
    /// Serving works, but something is degraded or not recommended.
    Warn,
    /// Serving cannot start (or must not) until this is fixed.
    Fail,
}

/// One checked item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Item {
    /// Short name, e.g. `kernel`.
    pub(crate) name: &'static str,
    /// The verdict.
    pub(crate) verdict: Verdict,
    /// What was found and, unless fine, what to do.
    pub(crate) detail: String,
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = match self.verdict {
            Verdict::Ok => "✓",
            Verdict::Warn => "!",
            Verdict::Fail => "✗",
        };
        write!(f, "{mark} {:<14} {}", self.name, self.detail)
    }
}

fn item(name: &'static str, verdict: Verdict, detail: impl Into<String>) -> Item {
    Item {
        name,
        verdict,
        detail: detail.into(),
    }
}

/// Where host facts are read from.
#[derive(Debug, Clone)]
pub(crate) struct Host {
    root: PathBuf,
}

impl Host {
    /// The real host.
    pub(crate) fn real() -> Host {
        Host { root: "/".into() }
    }

    /// A fake tree (tests): syscall-only checks are skipped.
    pub(crate) fn at(root: impl Into<PathBuf>) -> Host {
        Host { root: root.into() }
    }

    fn is_real(&self) -> bool {
        self.root == Path::new("/")
    }

    fn read(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(self.root.join(path.trim_start_matches('/'))).ok()
    }

    fn exists(&self, path: &str) -> bool {
        self.root.join(path.trim_start_matches('/')).exists()
    }
}

/// Runs every check for `config` on `host`.
pub(crate) fn run(config: &Config, host: &Host) -> Vec<Item> {
    vec![kernel(host), io_uring(host), kernel_tls(host), bpf_fs(host)]
        .into_iter()
        .chain(xdp(config, host))
        .chain([memlock(config, host), cpus(config, host)])
        .chain(numa(config, host))
        .chain(tiers(config, host))
        .chain(ports(config, host))
        .chain([clock(host), signing(config, host)])
        .chain(access(config, host))
        .collect()
}

/// Loads the config for a check: like [`Config::load`], except that of the host step only
/// what no item reports is done here. The text is parsed and validated (pure), the certificate
/// and key files must load, and, on the real host, `cores`/`cpus` must fit the CPUs this process
/// may run on; the tier directories are left to the tier items, and the CPUs of a fake root to
/// the cpus item (with the other items still checked).
pub(crate) fn load_config(path: &Path, host: &Host) -> Result<Config, ConfigError> {
    let text = crate::appliance::read(path)?;
    let origin = path.display().to_string();
    crate::appliance::agent_section(&text, &origin)?;
    let config = Config::parse(&text, &origin)?;
    if host.is_real() {
        config.check_cpus()?;
    }
    config.check_certificates()?;
    Ok(config)
}

/// Whether serving can start: no item failed.
pub(crate) fn can_serve(items: &[Item]) -> bool {
    items.iter().all(|i| i.verdict != Verdict::Fail)
}

/// `(major, minor)` of a kernel release string like `6.1.0-26-amd64`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn kernel(host: &Host) -> Item {
    let Some(release) = host.read("/proc/sys/kernel/osrelease") else {
        return item(
            "kernel",
            Verdict::Fail,
            "cannot read /proc/sys/kernel/osrelease: is /proc mounted?",
        );
    };
    let release = release.trim();
    match kernel_version(release) {
        Some(v) if v >= (5, 15) => item("kernel", Verdict::Ok, format!("Linux {release}")),
        Some(v) if v >= (5, 8) => item(
            "kernel",
            Verdict::Warn,
            format!("Linux {release}: io_uring works, but 5.15+ is tested; upgrade when you can"),
        ),
        _ => item(
            "kernel",
            Verdict::Fail,
            format!("Linux {release}: the data plane needs 5.8+ (io_uring); upgrade the kernel"),
        ),
    }
}

fn io_uring(host: &Host) -> Item {
    // Linux 6.6+: 0 = enabled, 1 = only for the io_uring_group, 2 = disabled.
    match host.read("/proc/sys/kernel/io_uring_disabled").map(|s| s.trim().to_owned()).as_deref() {
        Some("2") => {
            return item(
                "io_uring",
                Verdict::Fail,
                "disabled (kernel.io_uring_disabled = 2): set it to 0 with sysctl",
            )
        }
        Some("1") => {
            return item(
                "io_uring",
                Verdict::Warn,
                "restricted (kernel.io_uring_disabled = 1): run edgeplane as root or in kernel.io_uring_group",
            )
        }
        _ => {}
    }
    if host.is_real() {
        match probe_io_uring() {
            Ok(()) => item("io_uring", Verdict::Ok, "available"),
            Err(e) => item(
                "io_uring",
                Verdict::Fail,
                format!("io_uring_setup failed: {e} (seccomp or container policy?)"),
            ),
        }
    } else {
        item("io_uring", Verdict::Ok, "not disabled by sysctl")
    }
}

/// Creates and closes a tiny ring.
fn probe_io_uring() -> std::io::Result<()> {
    let mut params = [0u8; 120]; // struct io_uring_params
    const SYS_IO_URING_SETUP: libc::c_long = 425;
    // SAFETY: io_uring_setup(entries, params) writes into the zeroed 120-byte
    // struct io_uring_params we own; the returned fd is closed right away.
    let fd = unsafe { libc::syscall(SYS_IO_URING_SETUP, 2u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: closing the descriptor io_uring_setup just returned to us.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

fn kernel_tls(host: &Host) -> Item {
    let ulps = host
        .read("/proc/sys/net/ipv4/tcp_available_ulp")
        .unwrap_or_default();
    if ulps.split_whitespace().any(|u| u == "tls") {
        return item(
            "kernel TLS",
            Verdict::Ok,
            "tls ULP loaded: HTTPS bodies go out with sendfile",
        );
    }
    let release = host.read("/proc/sys/kernel/osrelease").unwrap_or_default();
    let dir = format!("/lib/modules/{}/kernel/net/tls", release.trim());
    let module = ["tls.ko", "tls.ko.xz", "tls.ko.zst", "tls.ko.gz"]
        .iter()
        .any(|m| host.exists(&format!("{dir}/{m}")));
    if module {
        item(
            "kernel TLS",
            Verdict::Warn,
            "tls module not loaded: `modprobe tls` (and add `tls` to /etc/modules-load.d/) so HTTPS can use kTLS",
        )
    } else {
        item(
            "kernel TLS",
            Verdict::Warn,
            "no tls module in this kernel (CONFIG_TLS off): HTTPS falls back to userspace rustls, costing CPU per byte",
        )
    }
}

fn bpf_fs(host: &Host) -> Item {
    let mounts = host.read("/proc/mounts").unwrap_or_default();
    if mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        f.nth(1) == Some("/sys/fs/bpf") && f.next() == Some("bpf")
    }) {
        item("bpf fs", Verdict::Ok, "mounted at /sys/fs/bpf")
    } else {
        item(
            "bpf fs",
            Verdict::Warn,
            "/sys/fs/bpf is not a bpf filesystem: `mount -t bpf bpf /sys/fs/bpf` (needed to pin XDP maps)",
        )
    }
}

/// Drivers with native (driver-mode) XDP in mainline Linux 6.x. An interface on another driver
/// only takes generic (skb) XDP, which works everywhere but runs after the kernel has built an
/// skb for every packet.
const NATIVE_XDP_DRIVERS: &[&str] = &[
    "mlx5_core",
    "mlx4_en",
    "mlx4_core",
    "i40e",
    "ice",
    "idpf",
    "ixgbe",
    "ixgbevf",
    "igb",
    "igc",
    "bnxt_en",
    "nfp",
    "qede",
    "sfc",
    "sfc_siena",
    "ena",
    "gve",
    "ionic",
    "mana",
    "funeth",
    "hv_netvsc",
    "virtio_net",
    "veth",
    "tun",
    "bonding",
    "netdevsim",
    "nicvf",
    "mvneta",
    "mvpp2",
    "stmmaceth",
    "fsl_enetc",
    "fsl_dpaa2_eth",
    "fsl_dpaa_eth",
    "fec",
    "tsnep",
    "cpsw",
    "am65-cpsw-nuss",
    "mtk_soc_eth",
    "rvu_nicpf",
    "lan966x-switch",
    "atlantic",
    "ixgbe_vf",
];

/// The driver of a network interface: the `device/driver` link in sysfs; for virtual devices
/// (veth, tun, bonds), which have no `device`, the ethtool driver-info ioctl (real host only).
fn interface_driver(host: &Host, ifname: &str) -> Option<String> {
    let link = host
        .root
        .join(format!("sys/class/net/{ifname}/device/driver"));
    if let Ok(target) = std::fs::read_link(&link) {
        return target.file_name().map(|n| n.to_string_lossy().into_owned());
    }
    if host.is_real() {
        return ethtool_driver(ifname);
    }
    None
}

/// `ETHTOOL_GDRVINFO`: the driver name, as `ethtool -i` prints it.
fn ethtool_driver(ifname: &str) -> Option<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    // struct ethtool_drvinfo: cmd, driver[32], version[32], fw_version[32], bus_info[32],
    // erom_version[32], reserved2[12], then five u32 counts: 196 bytes.
    let mut info = [0u8; 196];
    info[..4].copy_from_slice(&ETHTOOL_GDRVINFO.to_ne_bytes());
    let name = ifname.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: an all-zero ifreq is valid; we fill the name and point ifru_data at `info`,
    // which outlives the ioctl.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = info.as_mut_ptr().cast();
    // SAFETY: a datagram socket for the ioctl, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: SIOCETHTOOL with an ifreq whose data points at a buffer large enough for
    // ETHTOOL_GDRVINFO's struct ethtool_drvinfo.
    let r = unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &mut ifr) };
    // SAFETY: closing the socket we opened.
    unsafe { libc::close(fd) };
    if r != 0 {
        return None;
    }
    let driver = &info[4..36];
    let len = driver.iter().position(|&b| b == 0).unwrap_or(driver.len());
    Some(String::from_utf8_lossy(&driver[..len]).into_owned())
}

/// `[xdp]`: each configured interface exists and its driver can run the program in the
/// configured mode.
fn xdp(config: &Config, host: &Host) -> Vec<Item> {
    use edgeplane_dataplane::config::XdpMode;
    let Some(xdp) = &config.xdp else {
        return Vec::new();
    };
    if xdp.interfaces.is_empty() {
        return vec![item(
            "xdp",
            Verdict::Ok,
            "no xdp.interfaces: maps, accounting and steering only, no filter at a NIC",
        )];
    }
    xdp.interfaces
        .iter()
        .map(|ifname| {
            if !host.exists(&format!("/sys/class/net/{ifname}")) {
                return item(
                    "xdp",
                    Verdict::Fail,
                    format!("{ifname}: no such interface (xdp.interfaces); `ip link` lists them"),
                );
            }
            let driver = interface_driver(host, ifname);
            let native = driver
                .as_deref()
                .is_some_and(|d| NATIVE_XDP_DRIVERS.contains(&d));
            let named = driver.as_deref().unwrap_or("unknown driver");
            match (native, xdp.mode) {
                (true, XdpMode::Skb) => item(
                    "xdp",
                    Verdict::Warn,
                    format!("{ifname}: {named} has native XDP, but xdp.mode = \"skb\" runs the slower generic hook: use \"driver\""),
                ),
                (true, _) => item(
                    "xdp",
                    Verdict::Ok,
                    format!("{ifname}: {named}, native (driver-mode) XDP"),
                ),
                (false, XdpMode::Driver) => item(
                    "xdp",
                    Verdict::Fail,
                    format!("{ifname}: {named} has no native XDP: xdp.mode = \"driver\" cannot attach; use \"auto\" or \"skb\" (generic XDP, slower)"),
                ),
                (false, _) => item(
                    "xdp",
                    Verdict::Warn,
                    format!("{ifname}: {named} has no native XDP: generic (skb) XDP, which works but costs more per packet"),
                ),
            }
        })
        .collect()
}

/// Parses the soft "Max locked memory" of `/proc/self/limits` (`None` = unlimited).
fn memlock_from_limits(limits: &str) -> Option<Option<u64>> {
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max locked memory"))?;
    let soft = line["Max locked memory".len()..]
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        Some(None)
    } else {
        soft.parse().ok().map(Some)
    }
}

fn memlock(config: &Config, host: &Host) -> Item {
    let Some(limits) = host.read("/proc/self/limits") else {
        return item("memlock", Verdict::Warn, "cannot read /proc/self/limits");
    };
    let Some(limit) = memlock_from_limits(&limits) else {
        return item(
            "memlock",
            Verdict::Warn,
            "no \"Max locked memory\" in /proc/self/limits",
        );
    };
    let bytes = limit.unwrap_or(u64::MAX);
    match edgeplane_dataplane::runtime::io_memory_per_core(config, bytes) {
        Ok(io) => item(
            "memlock",
            Verdict::Ok,
            match limit {
                None => format!("unlimited; {} KiB of io_uring buffers per core", io / 1024),
                Some(b) => format!(
                    "{} KiB; {} KiB of io_uring buffers per core",
                    b / 1024,
                    io / 1024
                ),
            },
        ),
        Err(e) => item("memlock", Verdict::Fail, e.to_string()),
    }
}

/// CPUs listed in a `/sys/devices/system/cpu/online` range list like `0-3,8-11`.
fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().ok()?..=b.parse::<usize>().ok()?),
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

fn cpus(config: &Config, host: &Host) -> Item {
    let Some(online) = host
        .read("/sys/devices/system/cpu/online")
        .as_deref()
        .and_then(parse_cpu_list)
    else {
        return item(
            "cpus",
            Verdict::Warn,
            "cannot read /sys/devices/system/cpu/online",
        );
    };
    let wanted = executor_cpus(config, host);
    if let Some(missing) = wanted.iter().find(|c| !online.contains(c)) {
        return item(
            "cpus",
            Verdict::Fail,
            format!(
                "config pins an executor to CPU {missing}, which is not online ({} online): lower `cores` or fix `cpus`",
                online.len()
            ),
        );
    }
    if wanted.len() == online.len() && online.len() > 1 {
        return item(
            "cpus",
            Verdict::Warn,
            format!(
                "all {} CPUs serve: leave one or more for NIC interrupts and the agent (`cpus`)",
                online.len()
            ),
        );
    }
    item(
        "cpus",
        Verdict::Ok,
        format!(
            "{} executors on CPUs {:?} of {} online",
            wanted.len(),
            wanted,
            online.len()
        ),
    )
}

/// The CPUs `serve` will pin the executors to on this host: the NUMA placement's (the same
/// `placement::plan`), else the configured list.
fn executor_cpus(config: &Config, host: &Host) -> Vec<usize> {
    use edgeplane_dataplane::{placement, topology::Topology};
    Topology::read(&host.root)
        .and_then(|topo| {
            let (nics, tiers) = placement::locate(config, &host.root);
            placement::plan(config, &topo, &nics, &tiers).ok()
        })
        .map_or_else(|| config.cpu_list(), |p| p.executor_cpus)
}

/// The NUMA topology (`numa`), where executors and cold reads will run (`placement`), and one
/// warning per NIC or tier on a node where no executor serves (`crossing`): the same
/// `placement::plan` that `edgeplane serve` follows, over the same sysfs files.
fn numa(config: &Config, host: &Host) -> Vec<Item> {
    use edgeplane_dataplane::{placement, topology::Topology};
    let Some(topo) = Topology::read(&host.root) else {
        return vec![item(
            "numa",
            Verdict::Warn,
            "cannot read /sys/devices/system/node or /sys/devices/system/cpu/online",
        )];
    };
    let nodes = topo.nodes.len();
    let mut items = vec![item(
        "numa",
        Verdict::Ok,
        format!(
            "{nodes} node{}: {}",
            if nodes == 1 { "" } else { "s" },
            topo.describe()
        ),
    )];
    let (nics, tiers) = placement::locate(config, &host.root);
    match placement::plan(config, &topo, &nics, &tiers) {
        Ok(plan) => {
            let mut lines = plan.describe(&topo);
            for nic in &nics {
                let node = nic
                    .node
                    .map_or("node unknown".to_string(), |n| format!("node{n}"));
                lines.push(format!("NIC {}: {node}", nic.name));
            }
            items.push(item("placement", Verdict::Ok, lines.join("; ")));
            items.extend(plan.crossings.iter().map(|c| {
                item(
                    "crossing",
                    Verdict::Warn,
                    format!(
                        "{c}: every byte crosses the interconnect; serve from that node \
                         (`numa.cores_per_node`, `cpus`) or move the device"
                    ),
                )
            }));
        }
        Err(e) => items.push(item(
            "placement",
            Verdict::Fail,
            format!("{e}: fix the config"),
        )),
    }
    items
}

/// The `/proc/mounts` entry whose mount point holds `path` (longest prefix).
fn mount_of<'a>(mounts: &'a str, path: &Path) -> Option<(&'a str, &'a str, &'a str)> {
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4).then(|| (f[1], f[2], f[3]))
        })
        .filter(|(mp, _, _)| path.starts_with(mp))
        .max_by_key(|(mp, _, _)| mp.len())
}

fn tiers(config: &Config, host: &Host) -> Vec<Item> {
    let mounts = host.read("/proc/mounts").unwrap_or_default();
    config
        .tiers
        .iter()
        .map(|tier| {
            let path = host
                .root
                .join(tier.path.strip_prefix("/").unwrap_or(&tier.path));
            if let Err(problem) = edgeplane_dataplane::host::check_tier_path(&path) {
                return item(
                    "tier",
                    Verdict::Fail,
                    format!(
                        "{} ({}): {problem}: create it or fix `tier.path`",
                        tier.name,
                        tier.kind.as_str()
                    ),
                );
            }
            let mut notes = Vec::new();
            let mut verdict = Verdict::Ok;
            match mount_of(&mounts, &tier.path) {
                Some((mp, fstype, opts)) => {
                    notes.push(format!("{fstype} at {mp}"));
                    let opts: Vec<&str> = opts.split(',').collect();
                    if !opts.iter().any(|o| *o == "noatime" || *o == "relatime") {
                        verdict = Verdict::Warn;
                        notes.push("mount with noatime: every read updates access times".into());
                    }
                    if matches!(fstype, "tmpfs" | "ramfs") {
                        verdict = Verdict::Warn;
                        notes.push(format!(
                            "{fstype} is memory, not a {} tier",
                            tier.kind.as_str()
                        ));
                    }
                }
                None => notes.push("mount unknown".into()),
            }
            if host.is_real() {
                if let Some((free, total)) = free_space(&path) {
                    notes.push(format!("{} GiB free of {} GiB", free >> 30, total >> 30));
                    if total > 0 && free * 20 < total {
                        verdict = Verdict::Warn;
                        notes.push("under 5% free: fill will stall".into());
                    }
                }
            }
            item(
                "tier",
                verdict,
                format!(
                    "{} ({}): {}",
                    tier.name,
                    tier.kind.as_str(),
                    notes.join("; ")
                ),
            )
        })
        .collect()
}

/// `[signing]`: with signing on, a keys file that loads and holds a key still valid; without
/// one every object request will be refused (403), which serving survives, hence a warning.
fn signing(config: &Config, host: &Host) -> Item {
    if !config.signing.enabled {
        return item(
            "signing",
            Verdict::Warn,
            "off (signing.enabled = false): URLs are not checked, any client that can connect \
             may fetch any object",
        );
    }
    let path = host.root.join(
        config
            .signing
            .keys_file
            .strip_prefix("/")
            .unwrap_or(&config.signing.keys_file),
    );
    let shown = config.signing.keys_file.display();
    let keys = match edgeplane_dataplane::access::load_keys_file(&path) {
        Ok(keys) => keys,
        Err(e) => {
            let e = e.replace(&path.display().to_string(), &shown.to_string());
            return item(
                "signing",
                Verdict::Warn,
                format!("{e}: every object request will get 403 until the agent writes it"),
            );
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let valid = keys.keys.iter().filter(|k| k.not_after > now).count();
    if valid == 0 {
        return item(
            "signing",
            Verdict::Warn,
            format!(
                "{shown}: {} keys, none still valid: every object request will get 403",
                keys.keys.len()
            ),
        );
    }
    item(
        "signing",
        Verdict::Ok,
        format!("{shown}: {valid} valid keys of {}", keys.keys.len()),
    )
}

/// `[access] prefixes_file`: when set, it must load, or no client may connect.
fn access(config: &Config, host: &Host) -> Option<Item> {
    let file = config.access.prefixes_file.as_ref()?;
    let path = host.root.join(file.strip_prefix("/").unwrap_or(file));
    Some(
        match edgeplane_dataplane::access::load_prefixes_file(&path) {
            Ok(list) if list.is_empty() => item(
                "access",
                Verdict::Warn,
                format!("{}: no prefixes: no client may connect", file.display()),
            ),
            Ok(list) => item(
                "access",
                Verdict::Ok,
                format!("{}: {} served prefixes", file.display(), list.len()),
            ),
            Err(e) => item(
                "access",
                Verdict::Warn,
                format!(
                    "{}: no client may connect until the agent writes it",
                    e.replace(&path.display().to_string(), &file.display().to_string())
                ),
            ),
        },
    )
}

fn free_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we own; `c` is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    Some((st.f_bavail as u64 * frsize, st.f_blocks as u64 * frsize))
}

fn ports(config: &Config, host: &Host) -> Vec<Item> {
    if !host.is_real() {
        return Vec::new();
    }
    [
        ("http.listen", config.http.listen),
        ("admin.listen", config.admin.listen),
    ]
    .into_iter()
    .map(|(key, addr)| port_free(key, addr))
    .collect()
}

fn port_free(key: &str, addr: SocketAddr) -> Item {
    if addr.port() == 0 {
        return item(
            "port",
            Verdict::Ok,
            format!("{key} = {addr}: any free port"),
        );
    }
    match std::net::TcpListener::bind(addr) {
        Ok(_) => item("port", Verdict::Ok, format!("{key} = {addr} is free")),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => item(
            "port",
            Verdict::Fail,
            format!(
                "{key} = {addr} is in use: stop what holds it (`ss -ltnp 'sport = :{}'`)",
                addr.port()
            ),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => item(
            "port",
            Verdict::Fail,
            format!("{key} = {addr}: {e}: ports below 1024 need CAP_NET_BIND_SERVICE"),
        ),
        Err(e) => item("port", Verdict::Fail, format!("{key} = {addr}: {e}")),
    }
}

fn clock(host: &Host) -> Item {
    if !host.is_real() {
        return if host.exists("/run/systemd/timesync/synchronized") {
            item("clock", Verdict::Ok, "synchronized (systemd-timesyncd)")
        } else {
            item("clock", Verdict::Warn, "no sign of clock synchronization")
        };
    }
    // SAFETY: adjtimex with modes = 0 only reads the kernel's clock state into our struct.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state == libc::TIME_ERROR || tx.status & libc::STA_UNSYNC != 0 {
        item(
            "clock",
            Verdict::Warn,
            "not synchronized: run chrony or systemd-timesyncd (signed URLs and Date headers need the right time)",
        )
    } else {
        item(
            "clock",
            Verdict::Ok,
            format!("synchronized (max error {} µs)", tx.maxerror),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdp_driver_support_per_interface() {
        let root = tempfile::tempdir().unwrap();
        let net = root.path().join("sys/class/net");
        let drivers = root.path().join("sys/bus/pci/drivers");
        for (ifname, driver) in [
            ("eth0", Some("mlx5_core")),
            ("eth1", Some("r8169")),
            ("veth0", None),
        ] {
            std::fs::create_dir_all(net.join(ifname)).unwrap();
            if let Some(d) = driver {
                std::fs::create_dir_all(drivers.join(d)).unwrap();
                std::fs::create_dir_all(net.join(ifname).join("device")).unwrap();
                std::os::unix::fs::symlink(drivers.join(d), net.join(ifname).join("device/driver"))
                    .unwrap();
            }
        }
        let host = Host::at(root.path());
        let check = |ifs: &str, mode: &str| {
            let text = format!(
                "[[tier]]\nname = \"t\"\nkind = \"flash\"\npath = \"/\"\n[xdp]\ninterfaces = [{ifs}]\nmode = \"{mode}\"\n"
            );
            let config = Config::parse(&text, "t.toml").unwrap();
            xdp(&config, &host)
                .into_iter()
                .map(|i| (i.verdict, i.detail))
                .collect::<Vec<_>>()
        };
        let r = check("\"eth0\", \"eth1\", \"nosuch9\"", "driver");
        assert_eq!(r[0].0, Verdict::Ok, "{r:?}");
        assert!(r[0].1.contains("mlx5_core"), "{r:?}");
        assert_eq!(r[1].0, Verdict::Fail, "{r:?}");
        assert!(r[1].1.contains("r8169 has no native XDP"), "{r:?}");
        assert_eq!(r[2].0, Verdict::Fail, "{r:?}");
        assert!(r[2].1.contains("no such interface"), "{r:?}");
        let r = check("\"eth1\", \"veth0\"", "auto");
        assert_eq!((r[0].0, r[1].0), (Verdict::Warn, Verdict::Warn), "{r:?}");
        assert!(r[1].1.contains("unknown driver"), "{r:?}");
        let r = check("\"eth0\"", "skb");
        assert_eq!(r[0].0, Verdict::Warn, "{r:?}");
        assert!(check("", "auto")[0].1.contains("no xdp.interfaces"));
    }

    /// The config for a check: host problems the items report (tier directories; the CPUs of
    /// a fake root) do not stop it; the certificate files and, on the real host, the CPUs do.
    #[test]
    fn load_config_leaves_to_the_items_what_they_report() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edgeplane.toml");
        let fake = Host::at(dir.path());
        let tier = "[[tier]]\nname = \"t\"\nkind = \"flash\"\npath = \"/nonexistent/edgeplane\"\n";
        std::fs::write(&path, format!("cores = 4096\n{tier}")).unwrap();
        let config = load_config(&path, &fake).expect("tiers and CPUs are items");
        assert_eq!(config.cores, 4096);
        let e = load_config(&path, &Host::real()).unwrap_err();
        assert_eq!(e.key, "cores");
        assert!(
            e.problem.starts_with("is 4096 but this host has only "),
            "{e}"
        );

        let cert = dir.path().join("c.pem");
        std::fs::write(
            &path,
            format!(
                "[https]\ncert = {:?}\nkey = \"/nonexistent/k.pem\"\n{tier}",
                cert.display().to_string()
            ),
        )
        .unwrap();
        let e = load_config(&path, &fake).unwrap_err();
        assert_eq!(e.key, "https.cert");
        assert_eq!(e.problem, format!("{}: does not exist", cert.display()));

        std::fs::write(&path, format!("cores = 0\n{tier}")).unwrap();
        assert_eq!(load_config(&path, &fake).unwrap_err().key, "cores");
    }

    #[test]
    fn parses_host_facts() {
        assert_eq!(kernel_version("6.1.0-26-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("5.4.0"), Some((5, 4)));
        assert_eq!(kernel_version("x"), None);
        assert_eq!(
            parse_cpu_list("0-3,8,10-11\n"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpu_list("0\n"), Some(vec![0]));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max locked memory         8388608              8388608              bytes\n";
        assert_eq!(memlock_from_limits(limits), Some(Some(8_388_608)));
        let unlimited =
            "Max locked memory         unlimited            unlimited            bytes\n";
        assert_eq!(memlock_from_limits(unlimited), Some(None));
        let mounts =
            "/dev/vda / ext4 rw,relatime 0 0\n/dev/nvme0n1 /srv/flash xfs rw,noatime 0 0\n";
        assert_eq!(
            mount_of(mounts, Path::new("/srv/flash/titles")),
            Some(("/srv/flash", "xfs", "rw,noatime"))
        );
        assert_eq!(
            mount_of(mounts, Path::new("/srv/hdd")).map(|m| m.0),
            Some("/")
        );
    }
}
