//! For the XDP tests: loading the filter, or skipping with the reason printed when this
//! machine cannot (no root / CAP_BPF, or a binary built without the eBPF toolchain); pin
//! directories; `edgeplane prefixes`; a veth pair between two network namespaces.

use edgeplane_xdp::{Filter, LoadOptions, XdpError};

/// Whether this process runs as root (the namespace tests need it for `ip netns`).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Prints why `test` is skipped.
pub fn skip(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
}

/// Loads the filter, or prints why `test` is skipped and returns `None`. Only a missing
/// privilege as non-root skips (as root it is a failure), and a binary without the eBPF object
/// only skips when the build was allowed to leave it out (`EDGEPLANE_REQUIRE_EBPF` unset); any
/// other failure — a verifier rejection above all — fails the test.
pub fn load(test: &str, opts: &LoadOptions) -> Option<Filter> {
    match Filter::load(opts) {
        Ok(f) => Some(f),
        Err(e @ XdpError::Permission { .. }) if !is_root() => {
            skip(test, &format!("{e}"));
            None
        }
        Err(e @ XdpError::ObjectMissing(_))
            if std::env::var("EDGEPLANE_REQUIRE_EBPF").as_deref() != Ok("1") =>
        {
            skip(test, &format!("{e}"));
            None
        }
        Err(e) => panic!("{test}: loading the XDP filter: {e}"),
    }
}

/// A pin directory for one test, removed (with every pin in it) on drop.
///
/// [`PinDir::new`] lives under `/sys/fs/bpf`. [`PinDir::own_bpffs`] mounts a BPF filesystem of
/// its own under `/run` first: `ip netns exec` remounts `/sys` in a private mount namespace, so
/// pins a server makes under `/sys/fs/bpf` there are invisible outside, while a mount under
/// `/run` made beforehand is shared with it.
pub struct PinDir {
    path: std::path::PathBuf,
    mount: Option<std::path::PathBuf>,
}

impl PinDir {
    /// `/sys/fs/bpf/edgeplane-test-PID-TEST` (not created here).
    pub fn new(test: &str) -> PinDir {
        PinDir {
            path: std::path::PathBuf::from(format!(
                "/sys/fs/bpf/edgeplane-test-{}-{test}",
                std::process::id()
            )),
            mount: None,
        }
    }

    /// A BPF filesystem mounted at `/run/edgeplane-test-bpf-PID-TEST`, pins in `pins/` below.
    pub fn own_bpffs(test: &str) -> Result<PinDir, String> {
        let mount = std::path::PathBuf::from(format!(
            "/run/edgeplane-test-bpf-{}-{test}",
            std::process::id()
        ));
        std::fs::create_dir_all(&mount).map_err(|e| format!("{}: {e}", mount.display()))?;
        let out = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&mount)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir(&mount);
            return Err(format!(
                "mount -t bpf: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(PinDir {
            path: mount.join("pins"),
            mount: Some(mount),
        })
    }

    /// The pin directory.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
        if let Some(mount) = &self.mount {
            let _ = std::process::Command::new("umount").arg(mount).status();
            let _ = std::fs::remove_dir(mount);
        }
    }
}

/// Runs `BIN prefixes --pin-dir DIR ARGS…` (`bin`: the `edgeplane` binary); returns (exit
/// code, stdout, stderr).
pub fn prefixes(
    bin: impl AsRef<std::path::Path>,
    pin_dir: &std::path::Path,
    args: &[&str],
) -> (i32, String, String) {
    let out = std::process::Command::new(bin.as_ref())
        .arg("prefixes")
        .arg("--pin-dir")
        .arg(pin_dir)
        .args(args)
        .output()
        .expect("run edgeplane prefixes");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Two network namespaces joined by a veth pair: `server` holds `server_if` with 10.201.0.1/24
/// and fd00:201::1/64; `client` holds `client_if` with 10.201.0.2, .3, .4 and fd00:201::2, ::3.
/// Everything is deleted on drop (deleting a namespace deletes its end of the veth, and the
/// pair goes with it).
pub struct VethPair {
    /// The server's namespace.
    pub server: String,
    /// The client's namespace.
    pub client: String,
    /// The server's end of the veth.
    pub server_if: String,
    /// The client's end of the veth.
    pub client_if: String,
}

/// The server's IPv4 address in a [`VethPair`].
pub const SERVER_V4: &str = "10.201.0.1";
/// The server's IPv6 address in a [`VethPair`].
pub const SERVER_V6: &str = "fd00:201::1";
/// The client's IPv4 addresses in a [`VethPair`].
pub const CLIENT_V4: [&str; 3] = ["10.201.0.2", "10.201.0.3", "10.201.0.4"];
/// The client's IPv6 addresses in a [`VethPair`].
pub const CLIENT_V6: [&str; 2] = ["fd00:201::2", "fd00:201::3"];

fn ip_cmd(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

impl VethPair {
    /// Creates the pair; `tag` (≤ 3 characters) keeps names of concurrent tests apart.
    pub fn create(tag: &str) -> Result<VethPair, String> {
        let pid = std::process::id();
        let pair = VethPair {
            server: format!("ep-{tag}-srv-{pid}"),
            client: format!("ep-{tag}-cli-{pid}"),
            server_if: format!("xp{tag}s{pid}"),
            client_if: format!("xp{tag}c{pid}"),
        };
        let (s, c) = (pair.server.as_str(), pair.client.as_str());
        let (si, ci) = (pair.server_if.as_str(), pair.client_if.as_str());
        ip_cmd(&["netns", "add", s])?;
        ip_cmd(&["netns", "add", c])?;
        ip_cmd(&[
            "link", "add", si, "netns", s, "type", "veth", "peer", "name", ci, "netns", c,
        ])?;
        for (ns, dev) in [(s, si), (c, ci)] {
            ip_cmd(&["-n", ns, "link", "set", "lo", "up"])?;
            ip_cmd(&["-n", ns, "link", "set", dev, "up"])?;
        }
        ip_cmd(&[
            "-n",
            s,
            "addr",
            "add",
            &format!("{SERVER_V4}/24"),
            "dev",
            si,
        ])?;
        ip_cmd(&[
            "-n",
            s,
            "-6",
            "addr",
            "add",
            &format!("{SERVER_V6}/64"),
            "dev",
            si,
            "nodad",
        ])?;
        for a in CLIENT_V4 {
            ip_cmd(&["-n", c, "addr", "add", &format!("{a}/24"), "dev", ci])?;
        }
        for a in CLIENT_V6 {
            ip_cmd(&[
                "-n",
                c,
                "-6",
                "addr",
                "add",
                &format!("{a}/64"),
                "dev",
                ci,
                "nodad",
            ])?;
        }
        Ok(pair)
    }

    /// `ip netns exec NS` as a wrapper for a command.
    pub fn wrapper<'a>(&'a self, ns: &'a str) -> [&'a str; 4] {
        ["ip", "netns", "exec", ns]
    }

    /// Runs `args` in namespace `ns`; returns (exit code, stdout, stderr).
    pub fn exec(&self, ns: &str, args: &[&str]) -> (i32, Vec<u8>, String) {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .output()
            .expect("run ip netns exec");
        (
            out.status.code().unwrap_or(-1),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        for ns in [&self.server, &self.client] {
            let _ = ip_cmd(&["netns", "del", ns]);
        }
    }
}
