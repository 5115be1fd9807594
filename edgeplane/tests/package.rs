//! The .deb: built with cargo-deb from the binary under test (the same assets `cargo xtask deb`
//! packages from the release build), installed with `dpkg --root` into a scratch root with its
//! maintainer scripts, checked file by file; the packaged config passes `check-config`; the
//! systemd units pass `systemd-analyze verify`; purge removes config and state.
//!
//! Needs `cargo deb` (cargo-deb), `dpkg`, `useradd` and `systemd-analyze`; scripts/setup.sh
//! installs them. A missing tool fails the test, it does not skip it.

use std::path::{Path, PathBuf};
use std::process::Command;

use edgeplane_test_support::prelude::*;

/// The binary under test (Cargo builds it for these tests).
const BIN: &str = env!("CARGO_BIN_EXE_edgeplane");

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e} (run scripts/setup.sh)"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}: {cmd:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Builds the .deb around the test binary: cargo-deb packages `target/release/edgeplane`, so
/// a scratch target directory gets the binary under test at that place.
fn build_deb(dir: &Path) -> PathBuf {
    let target = dir.join("target");
    std::fs::create_dir_all(target.join("release")).unwrap();
    let bin = target.join("release/edgeplane");
    if std::fs::hard_link(BIN, &bin).is_err() {
        std::fs::copy(BIN, &bin).unwrap();
    }
    let deb = dir.join("edgeplane.deb");
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    run(
        Command::new(env!("CARGO"))
            .args([
                "deb",
                "--no-build",
                "--fast",
                "--manifest-path",
                manifest,
                "-o",
            ])
            .arg(&deb)
            .env("CARGO_TARGET_DIR", &target),
        "cargo deb (cargo install cargo-deb --locked)",
    );
    deb
}

/// An empty root dpkg can install into: its database and passwd files (root only).
fn scratch_root(root: &Path) {
    for d in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
        "etc",
        "bin",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for (f, text) in [
        ("var/lib/dpkg/status", ""),
        ("var/lib/dpkg/available", ""),
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", "root:x:0:\n"),
        ("etc/shadow", "root:*:19000:0:99999:7:::\n"),
        ("etc/gshadow", "root:*::\n"),
    ] {
        std::fs::write(root.join(f), text).unwrap();
    }
}

fn dpkg(root: &Path, args: &[&str], what: &str) -> String {
    run(
        Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .args([
                "--force-script-chrootless",
                "--force-depends",
                "--log=/dev/null",
            ])
            .args(args),
        what,
    )
}

#[test]
fn deb_installs_into_a_scratch_root_with_user_units_and_config() {
    let dir = temp_dir();
    let deb = build_deb(dir.path());

    // The package itself.
    let fields = run(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&deb)
            .args(["Package", "Depends"]),
        "dpkg-deb -f",
    );
    assert!(fields.contains("Package: edgeplane"), "{fields}");
    assert!(fields.contains("adduser"), "{fields}");
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb), "dpkg-deb -c");
    for path in [
        "./usr/bin/edgeplane",
        "./etc/edgeplane/edgeplane.toml",
        "./usr/lib/systemd/system/edgeplane.service",
        "./usr/lib/systemd/system/edgeplane-agent.service",
        "./usr/share/doc/edgeplane/operator-guide.md",
        "./usr/share/doc/edgeplane/config.md",
        "./usr/share/doc/edgeplane/grafana/edgeplane.json",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(path)),
            "{path} not in the package:\n{listing}"
        );
    }

    // Installed with its maintainer scripts, twice (the postinst is idempotent).
    let root = dir.path().join("root");
    scratch_root(&root);
    dpkg(&root, &["-i", deb.to_str().unwrap()], "dpkg -i");
    dpkg(&root, &["-i", deb.to_str().unwrap()], "dpkg -i again");
    let admin = root.join("var/lib/dpkg");
    let query = run(
        Command::new("dpkg-query")
            .arg(format!("--admindir={}", admin.display()))
            .args(["-W", "-f=${Status}\n${Conffiles}\n", "edgeplane"]),
        "dpkg-query",
    );
    assert!(query.starts_with("install ok installed"), "{query}");
    assert!(
        query.contains(" /etc/edgeplane/edgeplane.toml "),
        "conffile: {query}"
    );

    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let user = passwd
        .lines()
        .find(|l| l.starts_with("edgeplane:"))
        .unwrap_or_else(|| panic!("no edgeplane user:\n{passwd}"));
    let fields: Vec<&str> = user.split(':').collect();
    assert_eq!(fields[5], "/var/lib/edgeplane");
    assert_eq!(fields[6], "/usr/sbin/nologin");
    assert_eq!(
        passwd
            .lines()
            .filter(|l| l.starts_with("edgeplane:"))
            .count(),
        1,
        "{passwd}"
    );
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "a system user: uid {uid}");
    use std::os::unix::fs::MetadataExt;
    for d in [
        "var/lib/edgeplane",
        "var/lib/edgeplane/agent",
        "srv/edgeplane/flash",
        "srv/edgeplane/storage",
    ] {
        let m = std::fs::metadata(root.join(d)).unwrap_or_else(|e| panic!("{d}: {e}"));
        assert!(m.is_dir());
        assert_eq!(m.uid(), uid, "{d} owner");
    }
    let bin = root.join("usr/bin/edgeplane");
    let version = run(Command::new(&bin).arg("--version"), "edgeplane --version");
    assert!(version.starts_with("edgeplane "), "{version}");

    // The packaged config is valid (its paths moved into the scratch root).
    let config = std::fs::read_to_string(root.join("etc/edgeplane/edgeplane.toml")).unwrap();
    assert!(
        config.contains("\n#[agent]\n"),
        "the [agent] example, commented out"
    );
    let moved = config
        .replace("\"/srv/", &format!("\"{}/srv/", root.display()))
        .replace("\"/var/lib/", &format!("\"{}/var/lib/", root.display()));
    let moved_path = dir.path().join("edgeplane.toml");
    std::fs::write(&moved_path, moved).unwrap();
    let ok = run(
        Command::new(&bin)
            .args(["check-config", "--config"])
            .arg(&moved_path),
        "check-config on the packaged config",
    );
    assert!(ok.contains("is valid"), "{ok}");
    let parsed = edgeplane_dataplane::config::Config::load(&moved_path).unwrap();
    assert!(parsed.signing.enabled, "signing on by default");
    assert_eq!(parsed.admin.listen.to_string(), "127.0.0.1:9090");
    assert_eq!(parsed.process.user.as_deref(), Some("edgeplane"));
    let table: toml::Table = std::fs::read_to_string(&moved_path)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        !table.contains_key("agent"),
        "no [agent] in the packaged config"
    );
    let tiers: Vec<(String, &str)> = parsed
        .tiers
        .iter()
        .map(|t| (t.path.display().to_string(), t.kind.as_str()))
        .collect();
    assert_eq!(
        tiers,
        [
            (format!("{}/srv/edgeplane/flash", root.display()), "flash"),
            (
                format!("{}/srv/edgeplane/storage", root.display()),
                "storage"
            ),
        ]
    );
    // The units: systemd-analyze verify against the scratch root (its targets from the host,
    // /bin/kill for ExecReload), with nothing printed at all: unknown keys are only warnings.
    let units = root.join("usr/lib/systemd/system");
    for entry in std::fs::read_dir("/usr/lib/systemd/system").expect("systemd unit directory") {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "target") {
            let _ = std::fs::copy(&p, units.join(p.file_name().unwrap()));
        }
    }
    std::fs::copy("/bin/kill", root.join("bin/kill")).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg(units.join("edgeplane.service"))
        .arg(units.join("edgeplane-agent.service"))
        .output()
        .expect("systemd-analyze (package systemd; run scripts/setup.sh)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {}\n{said}",
        out.status
    );
    let serve = std::fs::read_to_string(units.join("edgeplane.service")).unwrap();
    for want in [
        "ExecStart=/usr/bin/edgeplane serve --config /etc/edgeplane/edgeplane.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillSignal=SIGTERM",
        "LimitMEMLOCK=infinity",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_BPF CAP_NET_BIND_SERVICE",
    ] {
        assert!(serve.contains(want), "edgeplane.service lacks {want}");
    }
    let agent_unit = std::fs::read_to_string(units.join("edgeplane-agent.service")).unwrap();
    for want in [
        "User=edgeplane",
        "After=network-online.target edgeplane.service",
        "ExecStart=/usr/bin/edgeplane agent --config /etc/edgeplane/edgeplane.toml",
    ] {
        assert!(
            agent_unit.contains(want),
            "edgeplane-agent.service lacks {want}"
        );
    }
    // TimeoutStopSec must outlast the packaged shutdown grace.
    let grace_ms: u64 = config
        .lines()
        .find_map(|l| l.strip_prefix("shutdown_grace_ms = "))
        .and_then(|v| v.trim().parse().ok())
        .expect("shutdown_grace_ms in the packaged config");
    let stop_secs: u64 = serve
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim().parse().ok())
        .expect("TimeoutStopSec");
    assert!(stop_secs * 1000 > grace_ms + 5000);

    // An edited conffile survives an upgrade (reinstall of the same version keeps it).
    let conf = root.join("etc/edgeplane/edgeplane.toml");
    std::fs::write(&conf, config.replace("cores = 1", "cores = 1 # edited")).unwrap();
    dpkg(
        &root,
        &["--force-confold", "-i", deb.to_str().unwrap()],
        "dpkg -i over an edited config",
    );
    assert!(std::fs::read_to_string(&conf).unwrap().contains("# edited"));

    // Purge: config and state go; the tiers and the user stay.
    dpkg(&root, &["--purge", "edgeplane"], "dpkg --purge");
    assert!(!root.join("usr/bin/edgeplane").exists());
    assert!(!root.join("etc/edgeplane").exists());
    assert!(!root.join("var/lib/edgeplane").exists());
    assert!(root.join("srv/edgeplane/flash").is_dir());
}
