//! `cargo xtask bench-catalog`: the catalog at appliance scale. For each catalog size it serves
//! one flash tier of that many empty files (made once under `target/bench-catalog/` and reused)
//! with a release build, and reports:
//!
//! - ready time (spawn to the ready line: the first scan) and the CPU used by then, the time
//!   until the low-priority size count is done (`edgeplane_catalog_bytes_counted` 1), RSS at
//!   ready, and RSS per object against the smallest size measured in the same run;
//! - the time to list every id through the paged `GET /catalog` (pages of 1 000 000) and the
//!   RSS after it (the listing keeps a sorted index, 4 bytes per object);
//! - the cost of following the change feed instead: `--feed-changes` objects renamed in, then
//!   the time and bytes of one `GET /catalog/changes` answering all of them (median of 5),
//!   next to the full listing's;
//! - the mean time of a full rescan (`POST /reload`) and the RSS right after each of them (the
//!   largest, and the ratio to the RSS at ready);
//! - a renamed-in object: time until it is served and the server's CPU per change, and the same
//!   for a deleted object until it answers 404 (each over `--changes` objects, one at a time);
//! - the p50/p99 of hits (GET of a random existing object, one keep-alive connection).
//!
//! With `--repeat N` every size is measured N times (a fresh server each time) and the table
//! gives the median of each column, with the range of the noisiest ones. Writes the markdown
//! report to `target/bench/catalog-<time>.md` and prints it. The machine's load is printed
//! with it: on a shared machine the times are noisy.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::server::{start_edgeplane, Server};
use crate::util::{
    edgeplane_bin_or_build, git_revision, header, kernel, run_checked, target_dir, utc_timestamp,
};

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
    /// Changes read through the change feed per size (renamed in, then read in one answer).
    #[arg(long, default_value_t = 1000)]
    feed_changes: u32,
    /// Where the tiers of empty files are made (once) and kept; default
    /// `target/bench-catalog`. Use a directory outside the build tree to keep them across
    /// `cargo clean`.
    #[arg(long)]
    fixtures: Option<PathBuf>,
    /// Only make the tiers (the slow part, once), measure nothing.
    #[arg(long)]
    prepare_only: bool,
    /// Skip the full paged listing (it sorts the ids once: tens of seconds at 10 M).
    #[arg(long)]
    skip_listing: bool,
    /// Start each size with the caches as the scan left them. By default (as root) the page,
    /// dentry and inode caches are dropped before each start, so "ready" is a cold start, as
    /// after a boot; rescans then show the warm case.
    #[arg(long)]
    warm: bool,
    /// Measure this edgeplane binary instead of building one (`--release`).
    #[arg(long)]
    edgeplane_bin: Option<PathBuf>,
    /// How long to wait, from ready, for the size count before going on without it.
    #[arg(long, default_value_t = 300)]
    count_wait_s: u64,
    /// Measurements per size (medians reported).
    #[arg(long, default_value_t = 1)]
    repeat: u32,
}

struct Row {
    objects: u64,
    ready_s: f64,
    ready_cpu_s: f64,
    sized_s: f64,
    list_s: f64,
    list_mib: f64,
    rss_after_list_mib: f64,
    feed_ms: f64,
    feed_kib: f64,
    rss_mib: f64,
    reload_s: f64,
    rss_after_reloads_mib: f64,
    rss_max_after_reload_mib: f64,
    rss_after_changes_mib: f64,
    add_ms: f64,
    add_cpu_us: f64,
    del_ms: f64,
    del_cpu_us: f64,
    hit_p50_us: f64,
    hit_p99_us: f64,
    /// The same objects asked again: the kernel's dentries and inodes are cached, so what is
    /// left is the catalog's lookup and the serving path.
    again_p50_us: f64,
    again_p99_us: f64,
}

pub(crate) fn run(args: &BenchCatalogArgs) -> Result<()> {
    let mut sizes = args.objects.clone();
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.is_empty() {
        bail!("--objects: give at least one size");
    }
    let root = args
        .fixtures
        .clone()
        .unwrap_or_else(|| target_dir().join("bench-catalog"));
    fs::create_dir_all(&root)?;
    let tiers = sizes
        .iter()
        .map(|&n| ensure_tier(&root, n))
        .collect::<Result<Vec<_>>>()?;
    if args.prepare_only {
        return Ok(());
    }
    let bin = edgeplane_bin_or_build(args.edgeplane_bin.as_deref(), "release")?;
    let mut rows = Vec::new();
    for (&n, tier) in sizes.iter().zip(&tiers) {
        let mut runs = Vec::new();
        for run in 1..=args.repeat.max(1) {
            header(&format!(
                "catalog of {n} objects, run {run} of {}",
                args.repeat
            ));
            runs.push(measure(&bin, &root, tier, n, args)?);
        }
        rows.push(runs);
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
    // Interrupted before: keep what was made (`mknodat` skips the names that exist).
    fs::create_dir_all(&dir)?;
    eprintln!("making {n} empty files in {} (once)", dir.display());
    let started = Instant::now();
    make_empty_files(&dir, n)?;
    fs::write(dir.join(".complete"), n.to_string())?;
    eprintln!("made in {:.1} s", started.elapsed().as_secs_f64());
    Ok(dir)
}

/// Makes `obj-<i>` for `i` in `0..n` in `dir` with one `mknodat` each (no open, no close), on
/// two threads: the directory's lock serialises the inserts, the rest overlaps.
fn make_empty_files(dir: &Path, n: u64) -> Result<()> {
    let dirfd = fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    let threads = 2u64;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let dirfd = &dirfd;
                s.spawn(move || -> Result<()> {
                    use std::os::fd::AsRawFd;
                    let mut i = t;
                    while i < n {
                        let name = std::ffi::CString::new(object_name(i))?;
                        // SAFETY: a NUL-terminated name and an open directory descriptor, for
                        // the call's duration.
                        let rc = unsafe {
                            libc::mknodat(
                                dirfd.as_raw_fd(),
                                name.as_ptr(),
                                libc::S_IFREG | 0o644,
                                0,
                            )
                        };
                        if rc != 0 {
                            let e = std::io::Error::last_os_error();
                            if e.kind() != std::io::ErrorKind::AlreadyExists {
                                return Err(e).with_context(|| format!("creating object {i}"));
                            }
                        }
                        if i % 1_000_000 == 0 && i > 0 {
                            eprintln!("  {i} files");
                        }
                        i += threads;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("file maker panicked"))??;
        }
        Ok(())
    })
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

/// The median of `field` over `runs`, and its range.
fn median(runs: &[Row], field: impl Fn(&Row) -> f64) -> (f64, f64, f64) {
    let mut v: Vec<f64> = runs.iter().map(field).collect();
    v.sort_by(f64::total_cmp);
    let mid = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    (mid, v[0], v[v.len() - 1])
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
    if !args.warm {
        drop_caches()?;
    }
    let spawned = Instant::now();
    let (mut server, ready) = start_edgeplane(bin, &config, &log, None, Duration::from_secs(600))?;
    let ready_s = spawned.elapsed().as_secs_f64();
    let pid = server.pid();
    let ready_cpu_s = cpu_ticks(pid)? as f64 / clock_ticks() as f64;
    let ready_at = Instant::now();
    let rss_mib = rss_kib(pid)? as f64 / 1024.0;
    eprintln!("ready in {ready_s:.2} s ({ready_cpu_s:.2} s of CPU), RSS {rss_mib:.1} MiB");

    // Hits first, on the freshly scanned catalog (each object's first open: the kernel looks
    // the name up in the directory and reads its inode), then the same objects again.
    let mut conn = Client::connect(ready.http)?;
    let hits = |conn: &mut Client| -> Result<(f64, f64)> {
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
        Ok((pct(0.50), pct(0.99)))
    };
    let (hit_p50_us, hit_p99_us) = hits(&mut conn)?;
    let (again_p50_us, again_p99_us) = hits(&mut conn)?;
    eprintln!(
        "hits: p50 {hit_p50_us:.0} µs, p99 {hit_p99_us:.0} µs; again: p50 {again_p50_us:.0} µs, p99 {again_p99_us:.0} µs"
    );

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

    // Every id through the paged listing (the first page sorts the ids once).
    let t = Instant::now();
    let mut listed = 0u64;
    let mut list_bytes = 0usize;
    let mut after: Option<String> = None;
    let mut more = !args.skip_listing;
    while more {
        let query = match &after {
            Some(a) => format!("/catalog?limit=1000000&after={a}"),
            None => "/catalog?limit=1000000".to_string(),
        };
        let text = admin_get(ready.admin, &query)?;
        list_bytes += text.len();
        let page: serde_json::Value = serde_json::from_str(&text)?;
        for tier in page["tiers"].as_array().context("no tiers")? {
            listed += tier["ids"].as_array().map_or(0, |ids| ids.len() as u64);
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => more = false,
        }
    }
    let list_s = if args.skip_listing {
        f64::NAN
    } else {
        t.elapsed().as_secs_f64()
    };
    if listed != n && !args.skip_listing {
        bail!("GET /catalog listed {listed} ids, not {n}");
    }
    let rss_after_list_mib = rss_kib(pid)? as f64 / 1024.0;
    let list_mib = if args.skip_listing {
        f64::NAN
    } else {
        list_bytes as f64 / (1 << 20) as f64
    };
    eprintln!(
        "listed {listed} ids in {list_s:.2} s ({list_mib:.1} MiB); RSS {rss_after_list_mib:.1} MiB"
    );

    // The change feed: what a client following it pays for `feed_changes` changes.
    let (feed_ms, feed_kib) = feed_cost(ready.admin, tier, args.feed_changes)?;
    eprintln!(
        "{} changes through the feed: {feed_ms:.2} ms, {feed_kib:.1} KiB",
        args.feed_changes
    );

    // The size count (nice 19, idle I/O class) runs from ready on; under load it waits.
    let sized_s = loop {
        let metrics = admin_get(ready.admin, "/metrics")?;
        if metrics
            .lines()
            .any(|l| l == "edgeplane_catalog_bytes_counted 1")
        {
            break ready_at.elapsed().as_secs_f64();
        }
        if ready_at.elapsed() > Duration::from_secs(args.count_wait_s) {
            eprintln!("sizes not counted {} s after ready", args.count_wait_s);
            break f64::NAN;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("sizes counted {sized_s:.1} s after ready");

    // RSS is read right after each rescan answers (the rescan is done, the old catalog
    // replaced), not after a pause: what a reload costs at its worst moment.
    let mut reload_time = Duration::ZERO;
    let mut rss_max_after_reload_mib = 0f64;
    for i in 0..args.reloads {
        let t = Instant::now();
        admin_post(ready.admin, "/reload")?;
        reload_time += t.elapsed();
        let rss = rss_kib(pid)? as f64 / 1024.0;
        eprintln!("  rescan {}: RSS {rss:.1} MiB right after", i + 1);
        rss_max_after_reload_mib = rss_max_after_reload_mib.max(rss);
    }
    let reload_s = reload_time.as_secs_f64() / f64::from(args.reloads.max(1));
    let rss_after_reloads_mib = rss_kib(pid)? as f64 / 1024.0;
    eprintln!(
        "rescan: {reload_s:.2} s each; RSS after {} of them: {rss_after_reloads_mib:.1} MiB \
         (largest right after one: {rss_max_after_reload_mib:.1} MiB, {:.2}× ready)",
        args.reloads,
        rss_max_after_reload_mib / rss_mib
    );
    stop(&mut server)?;
    Ok(Row {
        objects: n,
        ready_s,
        ready_cpu_s,
        sized_s,
        list_s,
        list_mib,
        rss_after_list_mib,
        feed_ms,
        feed_kib,
        rss_mib,
        reload_s,
        rss_after_reloads_mib,
        rss_max_after_reload_mib,
        rss_after_changes_mib,
        add_ms,
        add_cpu_us,
        del_ms,
        del_cpu_us,
        hit_p50_us,
        hit_p99_us,
        again_p50_us,
        again_p99_us,
    })
}

/// Renames `n` new objects into `tier`, waits until the change feed has them all, and then
/// times `GET /catalog/changes` answering all `n` from the number before them (median of 5):
/// `(ms, KiB)`. The objects are deleted again.
fn feed_cost(admin: SocketAddr, tier: &Path, n: u32) -> Result<(f64, f64)> {
    if n == 0 {
        return Ok((f64::NAN, f64::NAN));
    }
    let head = |since: u64| -> Result<serde_json::Value> {
        Ok(serde_json::from_str(&admin_get(
            admin,
            &format!("/catalog/changes?since={since}&limit=1"),
        )?)?)
    };
    let start = head(0)?;
    let epoch = start["epoch"].as_str().context("no epoch")?.to_string();
    let since = start["latest"].as_u64().context("no latest")?;
    let ids: Vec<String> = (0..n).map(|i| format!("feed-{i:06}.ts")).collect();
    for id in &ids {
        let tmp = tier.join(format!(".tmp-{id}"));
        fs::write(&tmp, b"")?;
        fs::rename(&tmp, tier.join(id))?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while head(since)?["latest"].as_u64().unwrap_or(0) < since + u64::from(n) {
        if Instant::now() > deadline {
            bail!("the feed did not show {n} changes within 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let query = format!("/catalog/changes?since={since}&epoch={epoch}&limit={n}");
    let mut runs = Vec::new();
    let mut bytes = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let body = admin_get(admin, &query)?;
        runs.push(t.elapsed().as_secs_f64() * 1e3);
        let v: serde_json::Value = serde_json::from_str(&body)?;
        let got = v["changes"].as_array().map_or(0, Vec::len);
        if v["reset"] != false || got != n as usize {
            bail!(
                "the feed answered {got} changes (reset {}), not {n}",
                v["reset"]
            );
        }
        bytes = body.len();
    }
    runs.sort_by(f64::total_cmp);
    for id in &ids {
        fs::remove_file(tier.join(id))?;
    }
    Ok((runs[runs.len() / 2], bytes as f64 / 1024.0))
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

/// `GET path` on the admin listener; the body.
pub(crate) fn admin_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    if !out.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", out.lines().next().unwrap_or(""));
    }
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok(body.to_string())
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

/// Writes dirty pages out, then drops the page, dentry and inode caches (root only).
fn drop_caches() -> Result<()> {
    run_checked(&mut std::process::Command::new("sync"))?;
    fs::write("/proc/sys/vm/drop_caches", "3\n")
        .context("dropping the caches needs root (or pass --warm)")
}

fn render(rows: &[Vec<Row>], args: &BenchCatalogArgs) -> String {
    let mut out = String::new();
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let _ = writeln!(out, "# cargo xtask bench-catalog\n");
    let _ = writeln!(
        out,
        "revision {}, kernel {}, {} CPUs, load average at the end: {}one flash tier of empty \
         files, 1 executor, release build. {} Changes: {} objects renamed in one at a time, then \
         deleted; hits: {} GETs of random objects on one keep-alive connection; {} rescans; \
         {} run(s) per size, medians (range in brackets).\n",
        git_revision(),
        kernel(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
            + " (1/5/15 min); ",
        if args.warm {
            "Started with warm caches."
        } else {
            "Each size started with cold caches (`drop_caches`), as after a boot; rescans are warm."
        },
        args.changes,
        args.hits,
        args.reloads,
        args.repeat.max(1)
    );
    let _ = writeln!(
        out,
        "| objects | ready (s) | CPU to ready (s) | sizes counted after (s) | RSS (MiB) | RSS / object (B) | full listing (s) | full listing (MiB) | {} changes by the feed (ms) | {} changes by the feed (KiB) | RSS after listing (MiB) | rescan (s) | RSS right after a rescan, largest (MiB) | × RSS at ready | RSS after rescans (MiB) | RSS after changes (MiB) | renamed in → served (ms) | CPU / add (µs) | deleted → 404 (ms) | CPU / delete (µs) | hit p50 (µs) | hit p99 (µs) | same objects again, p50 (µs) | again, p99 (µs) |",
        args.feed_changes, args.feed_changes
    );
    let _ = writeln!(
        out,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let base = rows.first().map(|runs| median(runs, |r| r.rss_mib).0);
    let base_n = rows
        .first()
        .and_then(|runs| runs.first())
        .map_or(0, |r| r.objects);
    for runs in rows {
        let Some(first) = runs.first() else { continue };
        let m = |f: fn(&Row) -> f64| median(runs, f);
        let ranged = |f: fn(&Row) -> f64, digits: usize| {
            let (mid, lo, hi) = m(f);
            if runs.len() > 1 {
                format!("{mid:.digits$} [{lo:.digits$}–{hi:.digits$}]")
            } else {
                format!("{mid:.digits$}")
            }
        };
        let per_object = match base {
            Some(b) if first.objects > base_n => format!(
                "{:.0}",
                (m(|r| r.rss_mib).0 - b) * 1024.0 * 1024.0 / (first.objects - base_n) as f64
            ),
            _ => "(baseline)".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.1} | {per_object} | {} | {:.1} | {} | {:.1} | {:.1} | {} | {:.1} | {:.2} | {:.1} | {:.1} | {} | {:.0} | {} | {:.0} | {} | {} | {} | {} |",
            first.objects,
            ranged(|r| r.ready_s, 2),
            ranged(|r| r.ready_cpu_s, 2),
            ranged(|r| r.sized_s, 1),
            m(|r| r.rss_mib).0,
            ranged(|r| r.list_s, 2),
            m(|r| r.list_mib).0,
            ranged(|r| r.feed_ms, 2),
            m(|r| r.feed_kib).0,
            m(|r| r.rss_after_list_mib).0,
            ranged(|r| r.reload_s, 2),
            m(|r| r.rss_max_after_reload_mib).0,
            m(|r| r.rss_max_after_reload_mib / r.rss_mib).0,
            m(|r| r.rss_after_reloads_mib).0,
            m(|r| r.rss_after_changes_mib).0,
            ranged(|r| r.add_ms, 1),
            m(|r| r.add_cpu_us).0,
            ranged(|r| r.del_ms, 1),
            m(|r| r.del_cpu_us).0,
            ranged(|r| r.hit_p50_us, 0),
            ranged(|r| r.hit_p99_us, 0),
            ranged(|r| r.again_p50_us, 0),
            ranged(|r| r.again_p99_us, 0),
        );
    }
    let _ = writeln!(
        out,
        "\nCPU per change is the server's utime+stime over the change (clock ticks of {} µs, \
         averaged over the changes), including answering the polling GETs. RSS is measured \
         at ready, before any listing; the size count (low priority) adds nothing to it. \
         Sizes counted: from ready until `edgeplane_catalog_bytes_counted` is 1 (NaN: not \
         within --count-wait-s). The feed columns: one `GET /catalog/changes` answering \
         --feed-changes renamed-in objects (median of 5), what a client following the feed \
         pays instead of the full listing. RSS right after a rescan: read as each \
         `POST /reload` answers; the largest of them, and its ratio to the RSS at ready.",
        1_000_000 / clock_ticks()
    );
    out
}
