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
