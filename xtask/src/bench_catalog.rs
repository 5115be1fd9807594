//! `cargo xtask bench-catalog`: the catalog at appliance scale. For each catalog size it serves
//! one flash tier of that many empty files (made once under `target/bench-catalog/` and reused)
//! with a release build, and reports:
//!
//! - ready time (spawn to the ready line: the first scan) and RSS, and RSS per object against the
//!   smallest size measured in the same run;
//! - the mean time of a full rescan (`POST /reload`) and the RSS after 10 of them;
//! - a renamed-in object: time until it is served and the server's CPU per change, and the same
//!   for a deleted object until it answers 404 (each over `--changes` objects, one at a time);
//! - the p50/p99 of hits (GET of a random existing object, one keep-alive connection).
//!
//! Writes the markdown report to `target/bench/catalog-<time>.md` and prints it. The machine's
//! load is printed with it: on a shared machine the times are noisy.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::server::{start_edgeplane, Server};
use crate::util::{build_edgeplane, git_revision, header, kernel, target_dir, utc_timestamp};

#[derive(clap::Args)]
pub(crate) struct BenchCatalogArgs {
    /// Catalog sizes (objects), comma-separated; the smallest is the RSS baseline. 10 M needs
    /// 10 M free inodes (checked before any file is made).
    #[arg(long, value_delimiter = ',', default_values_t = [1_000u64, 1_000_000])]
    objects: Vec<u64>,
    /// Objects renamed in (then deleted), one at a time, per size.
    #[arg(long, default_value_t = 50)]
    changes: u32,
    /// Hits measured per size.
    #[arg(long, default_value_t = 20_000)]
    hits: u32,
    /// Full rescans per size (`POST /reload`).
    #[arg(long, default_value_t = 10)]
    reloads: u32,
}

struct Row {
    objects: u64,
    ready_s: f64,
    rss_mib: f64,
    reload_s: f64,
    rss_after_reloads_mib: f64,
    rss_after_changes_mib: f64,
    add_ms: f64,
    add_cpu_us: f64,
    del_ms: f64,
    del_cpu_us: f64,
    hit_p50_us: f64,
    hit_p99_us: f64,
}

pub(crate) fn run(args: &BenchCatalogArgs) -> Result<()> {
    let mut sizes = args.objects.clone();
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.is_empty() {
        bail!("--objects: give at least one size");
    }
    let bin = build_edgeplane("release")?;
    let root = target_dir().join("bench-catalog");
    fs::create_dir_all(&root)?;
    let mut rows = Vec::new();
    for &n in &sizes {
        let tier = ensure_tier(&root, n)?;
        header(&format!("catalog of {n} objects"));
        rows.push(measure(&bin, &root, &tier, n, args)?);
    }
    let report = render(&rows, args);
    print!("{report}");
    let dir = target_dir().join("bench");
    fs::create_dir_all(&dir)?;
    let path = dir.join(format!("catalog-{}.md", utc_timestamp()));
    fs::write(&path, &report)?;
    eprintln!("\nreport: {}", path.display());
    Ok(())
}

/// The tier directory for `n` objects, made once (`.complete` marks a finished one; it is hidden
/// from the catalog like every `.` name).
fn ensure_tier(root: &Path, n: u64) -> Result<PathBuf> {
    let dir = root.join(format!("tier-{n}"));
    if dir.join(".complete").exists() {
        return Ok(dir);
    }
    let (free_inodes, free_bytes) = free_space(root)?;
    // Leave room for everyone else on the machine.
    let reserve = 2_000_000;
    if free_inodes < n + reserve {
        bail!(
            "{n} files need {n} inodes and {} are free (keeping {reserve} for others): \
             choose fewer --objects",
            free_inodes
        );
    }
    // An empty file still costs its directory entry: ~64 bytes a name, counted generously.
    if free_bytes < n * 256 + (4 << 30) {
        bail!("{n} files need about {} MiB of free disk", (n * 256) >> 20);
    }
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir)?;
    eprintln!("making {n} empty files in {} (once)", dir.display());
    let started = Instant::now();
    for i in 0..n {
        fs::File::create(dir.join(object_name(i)))
            .with_context(|| format!("creating object {i} in {}", dir.display()))?;
    }
    fs::write(dir.join(".complete"), n.to_string())?;
    eprintln!("made in {:.1} s", started.elapsed().as_secs_f64());
    Ok(dir)
}

fn object_name(i: u64) -> String {
    format!("obj-{i:08}.ts")
}

fn free_space(path: &Path) -> Result<(u64, u64)> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: statvfs is plain old data; zeroed is a valid value that the call overwrites.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a pointer to a statvfs we own, for the call's duration.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error()).context("statvfs");
    }
    Ok((s.f_favail as u64, s.f_bavail as u64 * s.f_frsize as u64))
}

fn measure(bin: &Path, root: &Path, tier: &Path, n: u64, args: &BenchCatalogArgs) -> Result<Row> {
    let config = root.join(format!("edgeplane-{n}.toml"));
    fs::write(
        &config,
        format!(
            "# Written by `cargo xtask bench-catalog`.\ncores = 1\n\n\
             [http]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [signing]\nenabled = false\n\n\
             [[tier]]\nname = \"flash\"\nkind = \"flash\"\npath = \"{}\"\n",
            tier.display()
        ),
    )?;
    let log = root.join(format!("edgeplane-{n}.log"));
    let spawned = Instant::now();
    let (mut server, ready) = start_edgeplane(bin, &config, &log, None, Duration::from_secs(600))?;
    let ready_s = spawned.elapsed().as_secs_f64();
    let pid = server.pid();
    let rss_mib = rss_kib(pid)? as f64 / 1024.0;
    eprintln!("ready in {ready_s:.2} s, RSS {rss_mib:.1} MiB");

    // Hits first, on the freshly scanned catalog.
    let mut conn = Client::connect(ready.http)?;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut lat = Vec::with_capacity(args.hits as usize);
    for _ in 0..args.hits {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let path = format!("/{}", object_name(rng % n));
        let t = Instant::now();
        let status = conn.get(&path)?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        if status != 200 {
            bail!("GET {path}: {status}");
        }
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let (hit_p50_us, hit_p99_us) = (pct(0.50), pct(0.99));
    eprintln!("hits: p50 {hit_p50_us:.0} µs, p99 {hit_p99_us:.0} µs");

    // Changes one at a time: rename in, wait until served; then delete, wait for 404.
    let mut add = (Duration::ZERO, 0u64);
    let mut del = (Duration::ZERO, 0u64);
    for i in 0..args.changes {
        let id = format!("new-{i:06}.ts");
        let tmp = tier.join(format!(".tmp-{id}"));
        fs::write(&tmp, b"")?;
        let cpu = cpu_ticks(pid)?;
        let t = Instant::now();
        fs::rename(&tmp, tier.join(&id))?;
        wait_status(&mut conn, &format!("/{id}"), 200)?;
        add.0 += t.elapsed();
        add.1 += cpu_ticks(pid)? - cpu;
    }
    let rss_after_changes_mib = rss_kib(pid)? as f64 / 1024.0;
    for i in 0..args.changes {
        let id = format!("new-{i:06}.ts");
        let cpu = cpu_ticks(pid)?;
        let t = Instant::now();
        fs::remove_file(tier.join(&id))?;
        wait_status(&mut conn, &format!("/{id}"), 404)?;
        del.0 += t.elapsed();
        del.1 += cpu_ticks(pid)? - cpu;
    }
    let tick_us = 1e6 / clock_ticks() as f64;
    let per = f64::from(args.changes.max(1));
    let add_ms = add.0.as_secs_f64() * 1e3 / per;
    let del_ms = del.0.as_secs_f64() * 1e3 / per;
    let add_cpu_us = add.1 as f64 * tick_us / per;
    let del_cpu_us = del.1 as f64 * tick_us / per;
    eprintln!("rename in: {add_ms:.1} ms until served; delete: {del_ms:.1} ms until 404");

    let t = Instant::now();
    for _ in 0..args.reloads {
        admin_post(ready.admin, "/reload")?;
    }
    let reload_s = t.elapsed().as_secs_f64() / f64::from(args.reloads.max(1));
    let rss_after_reloads_mib = rss_kib(pid)? as f64 / 1024.0;
    eprintln!(
        "rescan: {reload_s:.2} s each; RSS after {} of them: {rss_after_reloads_mib:.1} MiB",
        args.reloads
    );
    stop(&mut server)?;
    Ok(Row {
        objects: n,
        ready_s,
        rss_mib,
        reload_s,
        rss_after_reloads_mib,
        rss_after_changes_mib,
        add_ms,
        add_cpu_us,
        del_ms,
        del_cpu_us,
        hit_p50_us,
        hit_p99_us,
    })
}

fn stop(server: &mut Server) -> Result<()> {
    server.stop_expect_success()
}

/// Polls `path` on the keep-alive connection until it answers `status`.
fn wait_status(conn: &mut Client, path: &str, status: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if conn.get(path)? == status {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{path} did not answer {status} within 30 s");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

pub(crate) fn rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}

/// utime + stime of the whole process, in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = &stat[stat.rfind(')').context("bad /proc/<pid>/stat")? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted from the state (field 3) here.
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

pub(crate) fn clock_ticks() -> u64 {
    // SAFETY: sysconf takes an integer and touches no memory of ours.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

fn admin_post(addr: SocketAddr, path: &str) -> Result<()> {
    let mut s = TcpStream::connect(addr)?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    if !out.starts_with("HTTP/1.1 200") {
        bail!("POST {path}: {}", out.lines().next().unwrap_or(""));
    }
    Ok(())
}

/// A keep-alive HTTP/1.1 client for small responses.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Result<Client> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Client {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// GET `path`; returns the status (the body is read and dropped).
    fn get(&mut self, path: &str) -> Result<u16> {
        write!(self.stream, "GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n")?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let k = self.stream.read(&mut chunk)?;
            if k == 0 {
                bail!("connection closed mid-response");
            }
            self.buf.extend_from_slice(&chunk[..k]);
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no status line")?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let mut have = self.buf.len() - head_end;
        while have < len {
            let k = self.stream.read(&mut chunk)?;
            if k == 0 {
                bail!("connection closed mid-body");
            }
            have += k;
        }
        Ok(status)
    }
}

fn render(rows: &[Row], args: &BenchCatalogArgs) -> String {
    let mut out = String::new();
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let _ = writeln!(out, "# cargo xtask bench-catalog\n");
    let _ = writeln!(
        out,
        "revision {}, kernel {}, {} CPUs, load average at the end: {}one flash tier of empty \
         files, 1 executor, release build. Changes: {} objects renamed in one at a time, then \
         deleted; hits: {} GETs of random objects on one keep-alive connection; {} rescans.\n",
        git_revision(),
        kernel(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
            + " (1/5/15 min); ",
        args.changes,
        args.hits,
        args.reloads
    );
    let base = rows.first();
    let _ = writeln!(
        out,
        "| objects | ready (s) | RSS (MiB) | RSS / object (B) | rescan (s) | RSS after rescans (MiB) | RSS after changes (MiB) | renamed in → served (ms) | CPU / add (µs) | deleted → 404 (ms) | CPU / delete (µs) | hit p50 (µs) | hit p99 (µs) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let per_object = match base {
            Some(b) if r.objects > b.objects => format!(
                "{:.0}",
                (r.rss_mib - b.rss_mib) * 1024.0 * 1024.0 / (r.objects - b.objects) as f64
            ),
            _ => "(baseline)".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {:.2} | {:.1} | {per_object} | {:.2} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} |",
            r.objects,
            r.ready_s,
            r.rss_mib,
            r.reload_s,
            r.rss_after_reloads_mib,
            r.rss_after_changes_mib,
            r.add_ms,
            r.add_cpu_us,
            r.del_ms,
            r.del_cpu_us,
            r.hit_p50_us,
            r.hit_p99_us
        );
    }
    let _ = writeln!(
        out,
        "\nCPU per change is the server's utime+stime over the change (clock ticks of {} µs, \
         averaged over the changes), including answering the polling GETs.",
        1_000_000 / clock_ticks()
    );
    out
}
