//! `cargo xtask vmtest`: HTTPS over kernel TLS, end to end, on a kernel that has the `tls`
//! module (the development machine's does not).
//!
//! Boots a distribution kernel (default: the newest `/boot/vmlinuz-*`, Debian's
//! `linux-image-amd64`, with its modules from `/lib/modules/<version>`) under qemu with TCG
//! (`-accel tcg -cpu max`: no KVM needed), from an initramfs built here: busybox, kmod's
//! `modprobe` at `/sbin/modprobe` (the kernel calls it to load `gcm(aes)` and friends), the
//! `tls`, virtio-net and crypto modules with their dependencies (from the kernel's
//! `modules.dep`), the `edgeplane` binary with the shared libraries `ldd` names, a
//! certificate, test files and an init script. qemu's user-mode network forwards host ports to
//! the guest's HTTPS and admin listeners, and real clients on the host (curl over TLS 1.2 and
//! 1.3 with every suite the server offers, `openssl s_client`) check byte-exact ranges, 1000
//! keep-alive requests on one connection, session resumption, that a client KeyUpdate
//! closes the connection cleanly and is counted, and (with a rustls client) that a request
//! record cut in two around the end of the handshake keeps the connection in user space. The guest's `/metrics` must show
//! `edgeplane_tls_mode{mode="ktls"} 1` and every connection counted as `ktls`, and
//! `/proc/net/tls_stat` must show the kernel's TLS sessions: proof kernel TLS was used.
//!
//! Exit code 0 only when everything passed. The guest's console goes to
//! `<target>/vmtest/console.log`. Another kernel: `--kernel PATH --modules DIR` (DIR is that
//! kernel's `/lib/modules/<version>`).

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::util::{cargo, display_command, find_program, header, run_checked, target_dir};

/// The guest's ports (forwarded from free host ports).
const GUEST_HTTPS: u16 = 8443;
const GUEST_ADMIN: u16 = 9090;
const GUEST_CONTROL: u16 = 7000;
/// Test object sizes.
const BIG_LEN: usize = (24 << 20) + 12_345;
const SMALL_LEN: usize = 256 << 10;
/// Modules loaded in the guest (their dependencies come along).
const MODULES: &[&str] = &["tls", "virtio_pci", "virtio_net"];
/// Module directories copied whole: the crypto algorithms the kernel may ask for by name.
const MODULE_DIRS: &[&str] = &[
    "kernel/crypto",
    "kernel/arch/x86/crypto",
    "kernel/lib/crypto",
];
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(clap::Args, Default)]
pub(crate) struct VmtestArgs {
    /// Kernel image to boot (default: the newest /boot/vmlinuz-*).
    #[arg(long)]
    pub(crate) kernel: Option<PathBuf>,
    /// That kernel's module directory (default: /lib/modules/<version from the image name>).
    #[arg(long)]
    pub(crate) modules: Option<PathBuf>,
    /// The edgeplane binary to run in the guest (default: `cargo build -p edgeplane`, debug).
    #[arg(long)]
    pub(crate) binary: Option<PathBuf>,
}

pub(crate) fn run(args: &VmtestArgs) -> Result<()> {
    let started = Instant::now();
    let (kernel, modules) = kernel_and_modules(args)?;
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => {
            header("cargo build -p edgeplane");
            run_checked(cargo().args(["build", "-p", "edgeplane"]))?;
            target_dir().join("debug/edgeplane")
        }
    };
    let dir = target_dir().join("vmtest");
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    fs::create_dir_all(&dir)?;
    header(&format!(
        "vmtest: initramfs for {} ({})",
        kernel.display(),
        modules.display()
    ));
    let guest = Guest::build(&dir, &binary, &modules, GuestKind::Test, &[])?;
    let ports = Ports::pick()?;
    let console = dir.join("console.log");
    let vm = start_vm(&kernel, &guest.initrd, &ports, &console)?;
    let result = checks(&guest, &ports, &console, Instant::now());
    let stopped = stop_guest(vm, &ports, &console);
    eprintln!("vmtest: guest console: {}", console.display());
    result?;
    stopped?;
    header(&format!(
        "vmtest: all checks passed in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Boots `kernel` with `initrd` under qemu (TCG), the guest's ports forwarded to `ports` on the
/// host's loopback, the serial console written to `console`.
pub(crate) fn start_vm(kernel: &Path, initrd: &Path, ports: &Ports, console: &Path) -> Result<Vm> {
    let qemu = find_program("qemu-system-x86_64")?;
    let mut cmd = Command::new(&qemu);
    cmd.args(["-accel", "tcg", "-cpu", "max", "-m", "1024M", "-smp", "2"])
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyS0 quiet panic=-1 net.ifnames=0",
            "-netdev",
        ])
        .arg(format!(
            "user,id=n0,hostfwd=tcp:127.0.0.1:{}-:{GUEST_HTTPS},hostfwd=tcp:127.0.0.1:{}-:{GUEST_ADMIN},\
             hostfwd=tcp:127.0.0.1:{}-:{GUEST_CONTROL}",
            ports.https, ports.admin, ports.control
        ))
        .args(["-device", "virtio-net-pci,netdev=n0"])
        .stdin(Stdio::null());
    header(&format!("vmtest: {}", display_command(&cmd)));
    Ok(Vm {
        child: cmd.spawn().context("start qemu")?,
    })
}

/// Waits until the guest's admin listener answers `/healthz`.
pub(crate) fn wait_for_guest(ports: &Ports, console: &Path) -> Result<()> {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while http_get_timeout(ports.admin, "/healthz", 2).is_err() {
        if Instant::now() > deadline {
            bail!(
                "the guest's edgeplane did not answer /healthz within {} s; console:\n{}",
                BOOT_TIMEOUT.as_secs(),
                fs::read_to_string(console).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

/// The kernel image and its module directory.
pub(crate) fn kernel_and_modules(args: &VmtestArgs) -> Result<(PathBuf, PathBuf)> {
    let kernel = match &args.kernel {
        Some(k) => k.clone(),
        None => {
            let mut images: Vec<PathBuf> = fs::read_dir("/boot")
                .context("read /boot")?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
                })
                .collect();
            images.sort_by_key(|p| version_key(&p.to_string_lossy()));
            images.pop().context(
                "no /boot/vmlinuz-*: install linux-image-amd64 (scripts/setup.sh), or pass --kernel",
            )?
        }
    };
    let modules = match &args.modules {
        Some(m) => m.clone(),
        None => {
            let name = kernel.file_name().unwrap_or_default().to_string_lossy();
            let version = name.strip_prefix("vmlinuz-").with_context(|| {
                format!(
                    "{}: cannot tell the kernel version from the name; pass --modules",
                    kernel.display()
                )
            })?;
            PathBuf::from("/lib/modules").join(version)
        }
    };
    ensure!(
        kernel.is_file(),
        "{}: no such kernel image",
        kernel.display()
    );
    ensure!(
        modules.join("modules.dep").is_file(),
        "{}: no modules.dep (not a kernel module directory)",
        modules.display()
    );
    Ok((kernel, modules))
}

/// Sort key for version-like names: runs of digits compare as numbers.
fn version_key(s: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits > 0 {
            out.push((rest[..digits].parse().unwrap_or(u64::MAX), String::new()));
            rest = &rest[digits..];
        } else {
            let other = rest.chars().take_while(|c| !c.is_ascii_digit()).count();
            let end = rest
                .char_indices()
                .nth(other)
                .map_or(rest.len(), |(i, _)| i);
            out.push((0, rest[..end].to_string()));
            rest = &rest[end..];
        }
    }
    out
}

pub(crate) struct Ports {
    pub(crate) https: u16,
    pub(crate) admin: u16,
    pub(crate) control: u16,
}

impl Ports {
    pub(crate) fn pick() -> Result<Ports> {
        // Bound together so they differ; released just before qemu binds them.
        let l: Vec<TcpListener> = (0..3)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<std::io::Result<_>>()?;
        let p = |i: usize| l[i].local_addr().map(|a| a.port());
        Ok(Ports {
            https: p(0)?,
            admin: p(1)?,
            control: p(2)?,
        })
    }
}

/// Which guest to build.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum GuestKind {
    /// `cargo xtask vmtest`: edgeplane (`ktls = "auto"`) and the test files.
    Test,
    /// `cargo xtask bench-tls --vm`: bench files made in the guest; edgeplane started and
    /// stopped through the control port (`/cgi-bin/start_auto`, `start_off`, `stop`, `cpu`).
    Bench,
}

/// What the host knows about the guest it built.
pub(crate) struct Guest {
    pub(crate) initrd: PathBuf,
    /// The CA (self-signed certificate) clients trust.
    cert: PathBuf,
    big: Vec<u8>,
    small: Vec<u8>,
    dir: PathBuf,
}

impl Guest {
    /// `extra`: more files for the guest, as (path under the root, contents).
    pub(crate) fn build(
        dir: &Path,
        binary: &Path,
        modules: &Path,
        kind: GuestKind,
        extra: &[(String, String)],
    ) -> Result<Guest> {
        let root = dir.join("root");
        for d in [
            "bin",
            "sbin",
            "dev",
            "proc",
            "sys",
            "tmp",
            "etc/edgeplane",
            "srv/flash",
            "www/cgi-bin",
        ] {
            fs::create_dir_all(root.join(d))?;
        }
        // busybox and its applets.
        let busybox = find_program("busybox")?;
        fs::copy(&busybox, root.join("bin/busybox"))?;
        for applet in [
            "sh", "mount", "ip", "cat", "echo", "ls", "sleep", "uname", "cut", "kill", "httpd",
            "poweroff", "lsmod", "dmesg", "grep", "mkdir", "date",
        ] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
        }
        // kmod's modprobe, with its libraries.
        let kmod = find_program("kmod")?;
        copy_with_libraries(&kmod, &root, "bin/kmod")?;
        std::os::unix::fs::symlink("/bin/kmod", root.join("sbin/modprobe"))?;
        // edgeplane, without debug info (a 40 MB initramfs instead of 230 MB).
        let edgeplane = root.join("bin/edgeplane");
        run_checked(
            Command::new("objcopy")
                .arg("--strip-debug")
                .arg(binary)
                .arg(&edgeplane),
        )?;
        copy_with_libraries(binary, &root, "")?;
        copy_modules(modules, &root)?;

        // Certificate, files, config, init.
        let cert = dir.join("cert.pem");
        run_checked(
            Command::new("openssl")
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
                .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
                .args(["-subj", "/CN=edgeplane.test"])
                .args(["-addext", "subjectAltName=DNS:edgeplane.test"])
                .arg("-keyout")
                .arg(root.join("etc/edgeplane/key.pem"))
                .arg("-out")
                .arg(&cert)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        fs::copy(&cert, root.join("etc/edgeplane/cert.pem"))?;
        write_exec(&root.join("www/cgi-bin/tls_stat"), CGI_TLS_STAT)?;
        let (big, small) = match kind {
            GuestKind::Test => {
                let big = pattern(BIG_LEN, 0x9e37_79b9_7f4a_7c15);
                let small = pattern(SMALL_LEN, 0x2545_f491_4f6c_dd1d);
                fs::write(root.join("srv/flash/big.bin"), &big)?;
                fs::write(root.join("srv/flash/small.bin"), &small)?;
                fs::write(
                    root.join("etc/edgeplane/edgeplane.toml"),
                    guest_config("auto"),
                )?;
                write_exec(&root.join("init"), INIT)?;
                write_exec(&root.join("www/cgi-bin/stop"), CGI_STOP)?;
                (big, small)
            }
            GuestKind::Bench => {
                for mode in ["auto", "off"] {
                    fs::write(
                        root.join(format!("etc/edgeplane/bench-{mode}.toml")),
                        guest_config(mode).replace("cores = 2", "cores = 1"),
                    )?;
                }
                copy_with_libraries(&find_program("wrk")?, &root, "bin/wrk")?;
                for applet in ["taskset", "wget", "tr", "dd"] {
                    std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
                }
                write_exec(&root.join("init"), INIT_BENCH)?;
                write_exec(&root.join("www/cgi-bin/bench"), CGI_BENCH)?;
                (Vec::new(), Vec::new())
            }
        };

        for (path, text) in extra {
            let to = root.join(path);
            fs::create_dir_all(to.parent().unwrap_or(&root))?;
            fs::write(to, text)?;
        }
        let initrd = dir.join("initrd.cpio");
        let out = fs::File::create(&initrd)?;
        run_checked(
            Command::new("sh")
                .args(["-c", "find . | LC_ALL=C sort | cpio -o -H newc --quiet"])
                .current_dir(&root)
                .stdout(out),
        )?;
        Ok(Guest {
            initrd,
            cert,
            big,
            small,
            dir: dir.to_path_buf(),
        })
    }
}

/// The guest's edgeplane config; `ktls`: `auto` or `off`.
pub(crate) fn guest_config(ktls: &str) -> String {
    format!(
        "# Written by `cargo xtask vmtest`.\n\
         cores = 2\n\n\
         [http]\nlisten = \"0.0.0.0:8080\"\n\n\
         [https]\nlisten = \"0.0.0.0:{GUEST_HTTPS}\"\ncert = \"/etc/edgeplane/cert.pem\"\n\
         key = \"/etc/edgeplane/key.pem\"\nktls = \"{ktls}\"\n\n\
         [admin]\nlisten = \"0.0.0.0:{GUEST_ADMIN}\"\n\n\
         [signing]\nenabled = false\n\n\
         [[tier]]\nname = \"flash\"\nkind = \"flash\"\npath = \"/srv/flash\"\n"
    )
}

const INIT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin NO_COLOR=1
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs tmp /tmp
echo "== vmtest: kernel $(uname -r), init at $(cut -d' ' -f1 /proc/uptime) s"
# The accelerated crypto drivers first, as udev would load them on a real host (by CPU
# feature): otherwise gcm(aes) is built from the generic C AES already in the kernel.
for m in aesni_intel ghash_clmulni_intel chacha_x86_64 poly1305_x86_64 tls virtio_pci virtio_net; do modprobe $m || echo "== vmtest: modprobe $m failed"; done
ip link set lo up
ip addr add 10.0.2.15/24 dev eth0; ip link set eth0 up; ip route add default via 10.0.2.2
httpd -p 7000 -h /www
/bin/edgeplane serve --config /etc/edgeplane/edgeplane.toml &
pid=$!
echo $pid > /tmp/edgeplane.pid
wait $pid
echo "== vmtest: edgeplane exited rc=$? at $(cut -d' ' -f1 /proc/uptime) s"
echo "== vmtest: /proc/net/tls_stat"; cat /proc/net/tls_stat
poweroff -f
"#;

/// Bench guest: bench files (2 x 64 MiB, the names `cargo xtask bench-tls --vm` asks for), then
/// only the control port, where `/cgi-bin/bench?MODE-SCENARIO-SECONDS` runs one measurement.
const INIT_BENCH: &str = r#"#!/bin/sh
export PATH=/bin:/sbin NO_COLOR=1
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs tmp /tmp
# The accelerated crypto drivers first, as udev would load them on a real host (by CPU
# feature): otherwise gcm(aes) is built from the generic C AES already in the kernel.
for m in aesni_intel ghash_clmulni_intel chacha_x86_64 poly1305_x86_64 tls virtio_pci virtio_net; do modprobe $m || echo "== vmtest: modprobe $m failed"; done
ip link set lo up
ip addr add 10.0.2.15/24 dev eth0; ip link set eth0 up; ip route add default via 10.0.2.2
for i in 0 1; do dd if=/dev/urandom of=/srv/flash/bench-$i.bin bs=1M count=64 2>/dev/null; done
echo "== vmtest: bench guest up at $(cut -d' ' -f1 /proc/uptime) s"
httpd -f -p 7000 -h /www
"#;

/// One measurement in the guest: edgeplane (`cores = 1`, CPU 0) with `https.ktls = MODE`,
/// 2 s of wrk warm-up, then wrk (CPU 1) for SECONDS on loopback; prints wrk's result, the
/// server's utime + stime in clock ticks (USER_HZ = 100) over the measured run, and its TLS
/// connection counters.
const CGI_BENCH: &str = r#"#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
set -- $(echo "$QUERY_STRING" | tr '-' ' ')
mode=$1 scen=$2 secs=$3
ticks() { cut -d')' -f2 /proc/$1/stat | { read -r _ _ _ _ _ _ _ _ _ _ _ u s _; echo $((u + s)); }; }
/bin/edgeplane serve --config /etc/edgeplane/bench-$mode.toml </dev/null >/tmp/ep.log 2>&1 &
pid=$!
i=0
until grep -q 'ready http=' /tmp/ep.log; do
  sleep 0.2; i=$((i + 1))
  if [ $i -gt 300 ]; then echo "edgeplane did not start"; cat /tmp/ep.log; kill $pid; exit 0; fi
done
grep -o 'kernel TLS [a-z]*' /tmp/ep.log
wrk="taskset -c 1 /bin/wrk -t1 -c16 --timeout 20s -s /etc/bench/wrk-$scen.lua https://127.0.0.1:8443/"
$wrk -d2s >/dev/null 2>&1
t0=$(ticks $pid)
$wrk -d${secs}s 2>&1
t1=$(ticks $pid)
echo "XTASK_CPU_TICKS $((t1 - t0))"
wget -q -O - http://127.0.0.1:9090/metrics | grep '^edgeplane_tls_connections_total'
kill -TERM $pid; wait $pid
echo "XTASK_EXIT $?"
echo "kernel AEAD drivers: $(grep -A2 -E '^name +: (gcm|rfc7539)' /proc/crypto | grep driver | tr -s ' ' | tr '\n' ';')"
echo "guest CPU flags: $(grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E '^(aes|pclmulqdq|avx|avx2|vaes|vpclmulqdq|avx512f)$' | tr '\n' ' ')"
"#;

const CGI_TLS_STAT: &str =
    "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\ncat /proc/net/tls_stat\n";
const CGI_STOP: &str =
    "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\nkill -TERM $(cat /tmp/edgeplane.pid) && echo stopping\n";

fn write_exec(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Deterministic, incompressible test data (xorshift64*).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Copies `program` to `root/as_path` (unless `as_path` is empty) and every library `ldd`
/// names, the dynamic loader included, to the same paths under `root`.
fn copy_with_libraries(program: &Path, root: &Path, as_path: &str) -> Result<()> {
    if !as_path.is_empty() {
        fs::copy(program, root.join(as_path))
            .with_context(|| format!("copy {}", program.display()))?;
    }
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .context("run ldd")?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        let Some(path) = path else { continue };
        let dest = root.join(path.strip_prefix("/")?);
        if dest.exists() {
            continue;
        }
        fs::create_dir_all(dest.parent().unwrap_or(root))?;
        fs::copy(&path, &dest).with_context(|| format!("copy {}", path.display()))?;
    }
    Ok(())
}

/// Copies [`MODULES`] with their dependencies (from `modules.dep`) and the [`MODULE_DIRS`]
/// into `root/lib/modules/<version>`, then runs `depmod` there.
fn copy_modules(modules: &Path, root: &Path) -> Result<()> {
    let version = modules
        .file_name()
        .context("module directory has no name")?
        .to_string_lossy()
        .into_owned();
    let dest = root.join("lib/modules").join(&version);
    fs::create_dir_all(&dest)?;
    let dep = fs::read_to_string(modules.join("modules.dep"))?;
    let deps: Vec<(&str, Vec<&str>)> = dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| (m, d.split_whitespace().collect()))
        .collect();
    let name_of = |path: &str| {
        let base = path.rsplit('/').next().unwrap_or(path);
        base.split(".ko").next().unwrap_or(base).replace('-', "_")
    };
    let mut wanted: Vec<String> = Vec::new();
    for m in MODULES {
        let Some((path, d)) = deps.iter().find(|(p, _)| name_of(p) == *m) else {
            // Built in: nothing to copy (modprobe finds it in modules.builtin).
            continue;
        };
        wanted.push(path.to_string());
        wanted.extend(d.iter().map(|s| s.to_string()));
    }
    for (path, d) in &deps {
        if MODULE_DIRS.iter().any(|dir| path.starts_with(dir)) {
            wanted.push(path.to_string());
            wanted.extend(d.iter().map(|s| s.to_string()));
        }
    }
    wanted.sort();
    wanted.dedup();
    for rel in &wanted {
        let to = dest.join(rel);
        fs::create_dir_all(to.parent().unwrap_or(&dest))?;
        fs::copy(modules.join(rel), &to).with_context(|| format!("copy module {rel}"))?;
    }
    for f in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        if modules.join(f).exists() {
            fs::copy(modules.join(f), dest.join(f))?;
        }
    }
    run_checked(
        Command::new(find_program("depmod")?)
            .arg("-b")
            .arg(root)
            .arg(&version),
    )?;
    eprintln!("vmtest: {} modules copied", wanted.len());
    Ok(())
}

pub(crate) struct Vm {
    child: Child,
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// SIGTERM to edgeplane through the guest's control port, then wait for the guest to power
/// off; edgeplane must have exited 0.
pub(crate) fn stop_guest(mut vm: Vm, ports: &Ports, console: &Path) -> Result<()> {
    let _ = http_get(ports.control, "/cgi-bin/stop");
    let deadline = Instant::now() + Duration::from_secs(60);
    while vm.child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            bail!("the guest did not power off within 60 s of the stop request");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = fs::read_to_string(console).unwrap_or_default();
    ensure!(
        log.contains("== vmtest: edgeplane exited rc=0"),
        "edgeplane in the guest did not exit 0 on SIGTERM (see {})",
        console.display()
    );
    Ok(())
}

/// A plain HTTP GET to a forwarded port on the host's loopback; the body.
pub(crate) fn http_get(port: u16, path: &str) -> Result<String> {
    http_get_timeout(port, path, 20)
}

fn http_get_timeout(port: u16, path: &str, seconds: u32) -> Result<String> {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", &seconds.to_string()])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .context("run curl")?;
    ensure!(
        out.status.success(),
        "GET {path}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The value of one metrics line (`name{labels}`).
pub(crate) fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        rest.starts_with([' ', '\t'])
            .then(|| rest.trim().parse().ok())?
    })
}

fn checks(guest: &Guest, ports: &Ports, console: &Path, started: Instant) -> Result<()> {
    wait_for_guest(ports, console)?;
    eprintln!(
        "vmtest: guest serving {:.1} s after qemu started",
        started.elapsed().as_secs_f64()
    );
    let m = http_get(ports.admin, "/metrics")?;
    ensure!(
        metric(&m, "edgeplane_tls_mode{mode=\"ktls\"}") == Some(1.0),
        "the guest's edgeplane does not serve with kernel TLS:\n{}",
        tls_lines(&m)
    );
    let log = fs::read_to_string(console).unwrap_or_default();
    ensure!(
        log.contains("kernel TLS available (TCP_ULP tls)"),
        "no 'kernel TLS available' line on the guest console"
    );
    let mut connections = 0u64;
    let c = Clients { guest, ports };

    // Every suite, a large range each: byte-exact.
    let suites: [(&str, &[&str], &str); 6] = [
        (
            "TLS 1.3 AES-128-GCM",
            &["--tlsv1.3", "--tls13-ciphers", "TLS_AES_128_GCM_SHA256"],
            "TLSv1.3 / TLS_AES_128_GCM_SHA256",
        ),
        (
            "TLS 1.3 AES-256-GCM",
            &["--tlsv1.3", "--tls13-ciphers", "TLS_AES_256_GCM_SHA384"],
            "TLSv1.3 / TLS_AES_256_GCM_SHA384",
        ),
        (
            "TLS 1.3 ChaCha20",
            &[
                "--tlsv1.3",
                "--tls13-ciphers",
                "TLS_CHACHA20_POLY1305_SHA256",
            ],
            "TLSv1.3 / TLS_CHACHA20_POLY1305_SHA256",
        ),
        (
            "TLS 1.2 AES-128-GCM",
            &[
                "--tlsv1.2",
                "--tls-max",
                "1.2",
                "--ciphers",
                "ECDHE-ECDSA-AES128-GCM-SHA256",
            ],
            "TLSv1.2 / ECDHE-ECDSA-AES128-GCM-SHA256",
        ),
        (
            "TLS 1.2 AES-256-GCM",
            &[
                "--tlsv1.2",
                "--tls-max",
                "1.2",
                "--ciphers",
                "ECDHE-ECDSA-AES256-GCM-SHA384",
            ],
            "TLSv1.2 / ECDHE-ECDSA-AES256-GCM-SHA384",
        ),
        (
            "TLS 1.2 ChaCha20",
            &[
                "--tlsv1.2",
                "--tls-max",
                "1.2",
                "--ciphers",
                "ECDHE-ECDSA-CHACHA20-POLY1305",
            ],
            "TLSv1.2 / ECDHE-ECDSA-CHACHA20-POLY1305",
        ),
    ];
    for (i, (what, args, negotiated)) in suites.iter().enumerate() {
        let t = Instant::now();
        let first = 1_000_003 + i * 77_777;
        let last = first + (6 << 20) + i * 1_001;
        let path = format!("/big.bin/range/{first}-{last}");
        let (body, stderr) = c.curl(args, &[path])?;
        connections += 1;
        ensure!(
            stderr.contains(negotiated),
            "{what}: curl did not negotiate {negotiated}:\n{stderr}"
        );
        ensure!(
            body == guest.big[first..=last],
            "{what}: range {first}-{last} is not byte-exact ({} bytes received)",
            body.len()
        );
        eprintln!(
            "vmtest: ✓ {what}: {} bytes byte-exact ({:.1} s)",
            body.len(),
            t.elapsed().as_secs_f64()
        );
    }
    // The whole big object with a Range header, TLS 1.3.
    let (body, _) = c.curl(
        &["--tlsv1.3", "-H", "Range: bytes=0-"],
        &["/big.bin".into()],
    )?;
    connections += 1;
    ensure!(
        body == guest.big,
        "whole object over TLS 1.3 is not byte-exact"
    );
    eprintln!("vmtest: ✓ whole {} byte object, TLS 1.3", body.len());

    // 1000 keep-alive requests on one connection (TLS 1.2 and 1.3).
    for version in [&["--tlsv1.3"][..], &["--tlsv1.2", "--tls-max", "1.2"][..]] {
        let t = Instant::now();
        let mut paths = Vec::new();
        let mut expect = Vec::new();
        for i in 0..1000usize {
            let first = (i * 7919) % (SMALL_LEN - 9000);
            let last = first + 1000 + (i % 7) * 1111;
            paths.push(format!("/small.bin/range/{first}-{last}"));
            expect.extend_from_slice(&guest.small[first..=last]);
        }
        let (body, stderr) = c.curl(version, &paths)?;
        connections += 1;
        let connects = stderr.matches("* Connected to").count();
        ensure!(
            connects == 1,
            "{version:?}: 1000 requests took {connects} connections"
        );
        ensure!(
            body == expect,
            "{version:?}: 1000 keep-alive ranges are not byte-exact"
        );
        eprintln!(
            "vmtest: ✓ 1000 keep-alive ranges on one connection {version:?} ({:.1} s)",
            t.elapsed().as_secs_f64()
        );
    }

    // Session resumption: tickets (TLS 1.3, sent before the hand-over) and TLS 1.2.
    for version in ["-tls1_3", "-tls1_2"] {
        let sess = guest.dir.join(format!("session{version}.pem"));
        let first = c.s_client(&[version, "-sess_out", &sess.to_string_lossy()], None)?;
        ensure!(
            first.contains("HTTP/1.1 206"),
            "{version}: no response:\n{first}"
        );
        let second = c.s_client(&[version, "-sess_in", &sess.to_string_lossy()], None)?;
        connections += 2;
        ensure!(
            second.contains("Reused, TLSv1."),
            "{version}: the session was not resumed:\n{second}"
        );
        ensure!(
            second.contains("HTTP/1.1 206"),
            "{version}: no response after resuming"
        );
        eprintln!("vmtest: ✓ session resumed ({version})");
    }

    // A request whose first record is cut in two around the end of the handshake: the server
    // cannot hand a half-received record to the kernel, so the connection stays in user space
    // (counted) and is served there.
    let before = http_get(ports.admin, "/metrics")?;
    let pending = |m: &str| {
        metric(
            m,
            "edgeplane_tls_ktls_fallbacks_total{reason=\"pending_data\"}",
        )
        .unwrap_or(-1.0)
    };
    let body = split_first_record(ports.https, "/small.bin/range/100-4195", true)?;
    connections += 1;
    ensure!(
        body == guest.small[100..=4195],
        "split first record: the response is not byte-exact"
    );
    let after = http_get(ports.admin, "/metrics")?;
    ensure!(
        pending(&after) == pending(&before) + 1.0,
        "split first record: not counted as a pending_data fallback:\n{}",
        tls_lines(&after)
    );
    eprintln!("vmtest: ✓ a record split across the hand-over: served in user space, counted");
    // The same without the split: the request record leaves in the same write as the Finished
    // (and normally arrives with it: rustls decrypts it and its plaintext is carried over);
    // either way the connection must go to the kernel and the response be exact.
    let ktls_count = |m: &str| metric(m, "edgeplane_tls_connections_total{mode=\"ktls\"}");
    let body = split_first_record(ports.https, "/small.bin/range/5000-9095", false)?;
    connections += 1;
    ensure!(
        body == guest.small[5000..=9095],
        "request with the Finished: the response is not byte-exact"
    );
    let again = http_get(ports.admin, "/metrics")?;
    ensure!(
        ktls_count(&again) == ktls_count(&after).map(|n| n + 1.0)
            && pending(&again) == pending(&after),
        "request with the Finished: not served with kernel TLS:\n{}",
        tls_lines(&again)
    );
    eprintln!("vmtest: ✓ a request sent with the Finished: served with kernel TLS");

    // A client KeyUpdate: the kernel cannot rekey, so the server closes cleanly and counts it.
    let before = http_get(ports.admin, "/metrics")?;
    let key_updates = |m: &str| {
        metric(m, "edgeplane_tls_ktls_closed_total{reason=\"key_update\"}").unwrap_or(-1.0)
    };
    let out = c.s_client(&["-tls1_3"], Some("K\n"))?;
    connections += 1;
    ensure!(
        out.contains("HTTP/1.1 206"),
        "KeyUpdate: no response before the update:\n{out}"
    );
    ensure!(
        out.contains("KEYUPDATE"),
        "s_client did not send a KeyUpdate:\n{out}"
    );
    ensure!(
        out.contains("closed"),
        "the server did not close with close_notify:\n{out}"
    );
    let after = http_get(ports.admin, "/metrics")?;
    ensure!(
        key_updates(&after) == key_updates(&before) + 1.0,
        "KeyUpdate not counted:\n{}",
        tls_lines(&after)
    );
    eprintln!("vmtest: ✓ client KeyUpdate: connection closed by the server, counted");

    // The proof: every connection went to the kernel, and the kernel saw them.
    let m = http_get(ports.admin, "/metrics")?;
    eprintln!("vmtest: guest metrics:\n{}", tls_lines(&m));
    let ktls = metric(&m, "edgeplane_tls_connections_total{mode=\"ktls\"}").unwrap_or(0.0);
    let user = metric(&m, "edgeplane_tls_connections_total{mode=\"userspace\"}").unwrap_or(-1.0);
    let fallbacks: f64 = ["pending_data", "ulp_failed"]
        .iter()
        .filter_map(|r| {
            metric(
                &m,
                &format!("edgeplane_tls_ktls_fallbacks_total{{reason=\"{r}\"}}"),
            )
        })
        .sum();
    ensure!(
        ktls + user == connections as f64 && user == fallbacks,
        "expected {connections} TLS connections, ktls + userspace = {ktls} + {user}, fallbacks {fallbacks}"
    );
    ensure!(
        ktls >= connections as f64 - 1.0,
        "only {ktls} of {connections} connections used kernel TLS"
    );
    ensure!(
        metric(
            &m,
            "edgeplane_tls_ktls_closed_total{reason=\"install_failed\"}"
        ) == Some(0.0),
        "key installation failed for some connection"
    );
    let stat = http_get(ports.control, "/cgi-bin/tls_stat")?;
    eprintln!("vmtest: guest /proc/net/tls_stat:\n{}", stat.trim_end());
    let tx_sw = metric(&stat, "TlsTxSw").unwrap_or(0.0);
    let rx_sw = metric(&stat, "TlsRxSw").unwrap_or(0.0);
    ensure!(
        tx_sw >= ktls && rx_sw >= ktls,
        "the kernel counted {tx_sw} TX / {rx_sw} RX TLS sessions for {ktls} ktls connections"
    );
    Ok(())
}

/// A rustls client (TLS 1.3) that queues a GET before the handshake, so its Finished and the
/// request's record leave together, in one write; with `split`, all but the last 10 bytes,
/// then, 300 ms later, the rest. Returns the response body.
fn split_first_record(port: u16, path: &str, split: bool) -> Result<Vec<u8>> {
    use std::net::TcpStream;
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .dangerous()
    .with_custom_certificate_verifier(std::sync::Arc::new(
        edgeplane_test_support::tls::TrustAnyCert::without_signature_checks(),
    ))
    .with_no_client_auth();
    let mut tls =
        rustls::ClientConnection::new(std::sync::Arc::new(config), "edgeplane.test".try_into()?)?;
    let mut sock = TcpStream::connect(("127.0.0.1", port))?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))?;
    tls.writer().write_all(
        format!("GET {path} HTTP/1.1\r\nHost: edgeplane.test\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )?;
    while tls.is_handshaking() {
        let mut out = Vec::new();
        while tls.wants_write() {
            tls.write_tls(&mut out)?;
        }
        sock.write_all(&out)?;
        if tls.is_handshaking() {
            tls.read_tls(&mut sock)?;
            tls.process_new_packets()?;
        }
    }
    // Handshake done on our side: Finished + the request are queued.
    let mut out = Vec::new();
    while tls.wants_write() {
        tls.write_tls(&mut out)?;
    }
    ensure!(out.len() > 40, "nothing queued after the handshake");
    let cut = if split { out.len() - 10 } else { out.len() };
    sock.write_all(&out[..cut])?;
    if split {
        std::thread::sleep(Duration::from_millis(300));
        sock.write_all(&out[cut..])?;
    }
    let mut response = Vec::new();
    let mut stream = rustls::Stream::new(&mut tls, &mut sock);
    match stream.read_to_end(&mut response) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(e) => return Err(e.into()),
    }
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no response head")?;
    let head = String::from_utf8_lossy(&response[..head_end]);
    ensure!(
        head.starts_with("HTTP/1.1 206"),
        "split first record: {head}"
    );
    Ok(response[head_end + 4..].to_vec())
}

/// Accepts the test certificate (and anything else): this client checks the server's record
/// handling, not its identity.
fn tls_lines(metrics: &str) -> String {
    metrics
        .lines()
        .filter(|l| l.starts_with("edgeplane_tls"))
        .collect::<Vec<_>>()
        .join("\n")
}

struct Clients<'a> {
    guest: &'a Guest,
    ports: &'a Ports,
}

impl Clients<'_> {
    /// curl over HTTPS, one connection, the given paths in order; (bodies, stderr).
    fn curl(&self, args: &[&str], paths: &[String]) -> Result<(Vec<u8>, String)> {
        let config = self.guest.dir.join("curl-urls.txt");
        let mut text = String::new();
        for p in paths {
            text.push_str(&format!(
                "url = \"https://edgeplane.test:{}{p}\"\n",
                self.ports.https
            ));
        }
        fs::write(&config, text)?;
        let out = Command::new("curl")
            .args(["-sS", "-v", "--fail", "--max-time", "300"])
            .arg("--cacert")
            .arg(&self.guest.cert)
            .arg("--resolve")
            .arg(format!("edgeplane.test:{}:127.0.0.1", self.ports.https))
            .args(args)
            .arg("-K")
            .arg(&config)
            .output()
            .context("run curl")?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        ensure!(
            out.status.success(),
            "curl {args:?} failed ({}):\n{}",
            out.status,
            tail(&stderr)
        );
        Ok((out.stdout, stderr))
    }

    /// `openssl s_client`: one GET of the small object, then `extra` on stdin (interactive
    /// commands), until the server closes the connection.
    fn s_client(&self, args: &[&str], extra: Option<&str>) -> Result<String> {
        let mut child = Command::new("openssl")
            .arg("s_client")
            .arg("-connect")
            .arg(format!("127.0.0.1:{}", self.ports.https))
            .args(["-servername", "edgeplane.test", "-alpn", "http/1.1"])
            // -ign_eof: stdin's end does not end the session (the server closes it); but it
            // also turns off interactive commands, which the KeyUpdate (`K`) needs.
            .args(if extra.is_some() {
                &[][..]
            } else {
                &["-ign_eof"][..]
            })
            .arg("-CAfile")
            .arg(&self.guest.cert)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("run openssl s_client")?;
        let mut stdin = child.stdin.take().context("stdin")?;
        // With a KeyUpdate to follow, keep the connection open after the response.
        let connection = if extra.is_some() {
            "keep-alive"
        } else {
            "close"
        };
        stdin.write_all(
            format!("GET /small.bin/range/0-99 HTTP/1.1\r\nHost: edgeplane.test\r\nConnection: {connection}\r\n\r\n")
                .as_bytes(),
        )?;
        if let Some(extra) = extra {
            std::thread::sleep(Duration::from_secs(2));
            stdin.write_all(extra.as_bytes())?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("openssl s_client {args:?} did not finish: the server did not close");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(stdin);
        let mut out = Vec::new();
        child
            .stdout
            .take()
            .context("stdout")?
            .read_to_end(&mut out)?;
        child
            .stderr
            .take()
            .context("stderr")?
            .read_to_end(&mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_kernel_sorts_last() {
        let mut v = [
            "vmlinuz-6.10.0-1-amd64",
            "vmlinuz-6.1.0-56-amd64",
            "vmlinuz-6.9.2-amd64",
        ];
        v.sort_by_key(|s| version_key(s));
        assert_eq!(v[2], "vmlinuz-6.10.0-1-amd64");
        assert_eq!(v[0], "vmlinuz-6.1.0-56-amd64");
    }

    #[test]
    fn metric_lines() {
        let text = "# HELP x\nedgeplane_tls_mode{mode=\"ktls\"} 1\nTlsTxSw                  \t3\n";
        assert_eq!(metric(text, "edgeplane_tls_mode{mode=\"ktls\"}"), Some(1.0));
        assert_eq!(metric(text, "edgeplane_tls_mode{mode=\"user\"}"), None);
    }
}
