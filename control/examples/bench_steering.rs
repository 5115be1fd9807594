//! The steering bench (run by `cargo xtask bench-steering`, in a release build): a simulated
//! fleet of 1,000 appliances on 50 sites (16 embedded + 4 IX each) and 1 M client /24s, the real
//! steering function ([`steer`]) answering in process on one thread.
//!
//! 1. **Throughput**: `--requests` answers for random (client /24, title), one health report
//!    arriving every 100 answers (an appliance re-indexed; the fleet's change stamp bumped, as
//!    the service's state does at every change), each answer serialized to JSON as the server
//!    does; answers/s and latency percentiles.
//! 2. **Premiere**: one title, 100,000 viewers over one simulated minute, every appliance
//!    reporting every 5 s (its load then is what it had been sent up to the report); checks
//!    that no appliance goes over its cap while the fleet has room, and reports the max/mean
//!    load ratio.
//!
//! 3. **Over HTTP** (`--http-secs N`, with `wrk` on the PATH): the real service
//!    (`server::start`, axum) on a current-thread runtime (one core), the same fleet brought in
//!    through its registration and health intake, and `wrk` asking `GET /v1/steering` for
//!    random (client, title) over keep-alive connections.
//!
//! Prints a markdown section to stdout.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use edgeplane_api::{Catalog, HealthReport, ObjectInfo, Registration, Rendition, Role, Title};
use edgeplane_control::cloud::config::{HealthConfig, SigningConfig, SiteConfig};
use edgeplane_control::cloud::fleet::ApplianceRecord;
use edgeplane_control::cloud::steering::{steer, SteerCache, SteerParams};
use edgeplane_signing::{KeySet, SigningKey};

const SITES: usize = 50;
const EMBEDDED_PER_SITE: usize = 16;
const IX_PER_SITE: usize = 4;
/// /14 aggregates per site: 20 × 1,024 /24s × 50 sites ≈ 1 M client /24s.
const AGGREGATES_PER_SITE: u32 = 20;
const NOW: u64 = 1_800_000_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn catalog(titles: usize) -> Catalog {
    let renditions = [
        ("240p", 400_000u64),
        ("480p", 1_200_000),
        ("720p", 3_000_000),
        ("1080p", 6_000_000),
    ];
    Catalog {
        titles: (0..titles)
            .map(|t| Title {
                id: format!("t{t:04}"),
                renditions: renditions
                    .iter()
                    .map(|(name, bitrate)| Rendition {
                        name: name.to_string(),
                        bitrate: *bitrate,
                        objects: (0..30)
                            .map(|s| ObjectInfo {
                                id: format!("t{t:04}-{name}-{s:04}.m4s"),
                                size: 1,
                                sha256: "0".repeat(64),
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The /14 aggregate `k` of site `s`.
fn aggregate(s: usize, k: u32) -> u32 {
    ((s as u32 * AGGREGATES_PER_SITE + k) + 16) << 18
}

/// A client /24 (as its first address + 7): 90 % inside a site's embedded aggregates, 10 % in
/// the site's /16 known only to the `[[site]]` map.
fn client(rng: &mut Rng) -> (IpAddr, usize) {
    let s = rng.below(SITES as u64) as usize;
    let addr = if rng.below(10) == 0 {
        site_range(s) | ((rng.below(256) as u32) << 8) | 7
    } else {
        aggregate(s, rng.below(u64::from(AGGREGATES_PER_SITE)) as u32)
            | ((rng.below(1024) as u32) << 8)
            | 7
    };
    (IpAddr::V4(Ipv4Addr::from(addr)), s)
}

/// The /16 of site `s` that no embedded appliance covers (100.64.0.0/10 space).
fn site_range(s: usize) -> u32 {
    (100 << 24) | ((64 + s as u32) << 16)
}

fn sites() -> Vec<SiteConfig> {
    (0..SITES)
        .map(|s| SiteConfig {
            name: format!("site{s:02}"),
            prefixes: vec![format!("{}/16", Ipv4Addr::from(site_range(s)))
                .parse()
                .unwrap()],
            // A ring, with chords.
            neighbours: [
                (format!("site{:02}", (s + 1) % SITES), 10),
                (format!("site{:02}", (s + 7) % SITES), 25),
            ]
            .into(),
        })
        .collect()
}

fn make_fleet(
    cat: &Catalog,
    emb_cap: u64,
    ix_cap: u64,
    rng: &mut Rng,
    base_load: bool,
) -> Vec<ApplianceRecord> {
    let objects: Vec<String> = cat
        .titles
        .iter()
        .flat_map(|t| t.renditions.iter().flat_map(|r| r.objects.iter()))
        .map(|o| o.id.clone())
        .collect();
    let mut out = Vec::new();
    for s in 0..SITES {
        for n in 0..EMBEDDED_PER_SITE + IX_PER_SITE {
            let embedded = n < EMBEDDED_PER_SITE;
            let id = format!("s{s:02}-{}{n:02}", if embedded { "emb" } else { "ix" });
            let cap = if embedded { emb_cap } else { ix_cap };
            let mut a = ApplianceRecord {
                id: id.clone(),
                secret: "s".into(),
                peer: None,
                registration: Some(Registration {
                    role: if embedded { Role::Embedded } else { Role::Ix },
                    site: format!("site{s:02}"),
                    urls: vec![format!("http://{id}.example:8080")],
                    prefixes: if embedded {
                        (0..AGGREGATES_PER_SITE)
                            .map(|k| {
                                format!("{}/14", Ipv4Addr::from(aggregate(s, k)))
                                    .parse()
                                    .unwrap()
                            })
                            .collect()
                    } else {
                        Vec::new()
                    },
                    tiers: vec![],
                    max_bps: cap,
                    version: "bench".into(),
                }),
                health: None,
                held: Default::default(),
                held_version: 0,
            };
            let serving = if base_load { rng.below(cap / 2) } else { 0 };
            a.set_health(
                HealthReport {
                    healthy: true,
                    serving_bps: serving,
                    objects: objects.clone(),
                    ..Default::default()
                },
                NOW,
            );
            out.push(a);
        }
    }
    out
}

fn keys() -> KeySet {
    KeySet {
        keys: vec![SigningKey {
            id: "k1".into(),
            secret: [7; 32],
            not_after: u64::MAX,
        }],
    }
}

/// CPU time of the calling thread, nanoseconds (immune to the machine's other load).
fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time of the whole process (user + system), nanoseconds.
fn process_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The cloud config of the simulated fleet: its appliances and the site graph.
fn cloud_toml(fleet: &[ApplianceRecord], sites: &[SiteConfig]) -> String {
    let mut t = String::from(concat!(
        "listen = \"127.0.0.1:0\"\nadmin_token = \"bench\"\n\n",
        "[origin]\nendpoint = \"http://127.0.0.1:9\"\nbucket = \"media\"\n",
        "access_key_id = \"x\"\nsecret_access_key = \"x\"\nallow_http = true\n\n",
    ));
    for a in fleet {
        t.push_str(&format!(
            "[[appliance]]\nid = \"{}\"\nsecret = \"s\"\n\n",
            a.id
        ));
    }
    for s in sites {
        let neighbours: Vec<String> = s
            .neighbours
            .iter()
            .map(|(n, d)| format!("{n} = {d}"))
            .collect();
        t.push_str(&format!(
            "[[site]]\nname = \"{}\"\nprefixes = [\"{}\"]\nneighbours = {{ {} }}\n\n",
            s.name,
            s.prefixes[0],
            neighbours.join(", ")
        ));
    }
    t
}

/// wrk's Lua script: random clients of the address model, random titles.
fn wrk_script(titles: usize) -> String {
    format!(
        r#"math.randomseed(7)
request = function()
  local s = math.random(0, {sites} - 1)
  local a
  if math.random(0, 9) == 0 then
    a = string.format("100.%d.%d.7", 64 + s, math.random(0, 255))
  else
    local v = (s * {aggs} + math.random(0, {aggs} - 1) + 16) * 262144 + math.random(0, 1023) * 256 + 7
    a = string.format("%d.%d.%d.%d", math.floor(v / 16777216), math.floor(v / 65536) % 256, math.floor(v / 256) % 256, v % 256)
  end
  local t = string.format("t%04d", math.random(0, {titles} - 1))
  return wrk.format("GET", "/v1/steering?client=" .. a .. "&title=" .. t)
end
"#,
        sites = SITES,
        aggs = AGGREGATES_PER_SITE,
    )
}

/// Steering answers the service has given (its `edgeplane_cloud_steering_requests_total`).
fn steered(app: &edgeplane_control::cloud::server::App) -> f64 {
    app.state()
        .metrics_text()
        .lines()
        .filter(|l| {
            l.starts_with("edgeplane_cloud_steering_requests_total")
                && ["embedded", "ix", "origin"]
                    .iter()
                    .any(|k| l.contains(&format!("\"{k}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn http_bench(secs: u64, connections: u32) {
    use edgeplane_control::cloud::clock::SystemClock;
    use edgeplane_control::cloud::config::CloudConfig;
    use edgeplane_control::cloud::server;
    let cat = catalog(200);
    let mut rng = Rng(0x5151_7a7a_1234_9876);
    let fleet = make_fleet(&cat, 10_000_000_000, 40_000_000_000, &mut rng, true);
    let cfg = CloudConfig::from_toml(&cloud_toml(&fleet, &sites())).expect("bench config");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let running = server::start(cfg, std::sync::Arc::new(SystemClock))
                .await
                .expect("start the control service");
            tx.send((running.addr, running.app.clone())).unwrap();
            std::future::pending::<()>().await;
        });
    });
    let (addr, app) = rx.recv().unwrap();
    {
        let mut st = app.state();
        st.set_catalog(cat).expect("catalog");
        for a in &fleet {
            st.register(&a.id, a.registration.clone().unwrap())
                .expect("register");
            st.health(&a.id, a.health.clone().unwrap().0)
                .expect("health");
        }
        // Read the store once, as a running service has: its own writes do not advance the
        // change number it has read up to, so the first read after them fetches every row.
        st.sync().expect("sync");
        // Warm steering's caches as in the in-process part.
        for t in 0..200 {
            for s in 0..SITES {
                let c = IpAddr::V4(Ipv4Addr::from(aggregate(s, 0) | 7));
                st.steer(c, &format!("t{t:04}"), "http://bench/v1/origin")
                    .expect("warm-up");
            }
        }
    }
    let answered_before = steered(&app);
    let cpu_before = process_cpu_ns();
    let script = std::env::temp_dir().join(format!("bench-steering-{}.lua", std::process::id()));
    std::fs::write(&script, wrk_script(200)).unwrap();
    let out = std::process::Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{secs}s"),
            "--latency",
            "-s",
        ])
        .arg(&script)
        .arg(format!("http://{addr}"))
        .output()
        .expect("run wrk");
    let server_cpu = (process_cpu_ns() - cpu_before) as f64 / 1e9;
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_owned()))
            .unwrap_or_else(|| "?".into())
    };
    let errors = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ");
    let answered = steered(&app) - answered_before;
    println!("### Over HTTP (the service on one current-thread runtime, wrk)\n");
    println!(
        "`wrk -t1 -c{connections} -d{secs}s --latency` against `GET /v1/steering?client=…&title=…` (random client /24 and title), the same fleet model brought in through `register` + `health`.\n"
    );
    println!("| requests/s (wall) | p50 | p90 | p99 | answered by steering | server CPU | answers per server CPU-second | errors |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {answered:.0} | {server_cpu:.2} s | {:.0} | {} |\n",
        field("Requests/sec:"),
        field("50%"),
        field("90%"),
        field("99%"),
        answered / server_cpu.max(1e-9),
        if errors.is_empty() {
            "none".to_owned()
        } else {
            errors
        }
    );
    println!(
        "The service's CPU is the bench process's CPU time while wrk ran (the main thread only waits for wrk): the server thread's steering, HTTP and JSON. wrk runs on the other core; on a loaded machine its wall-clock numbers mostly measure waiting for a CPU.\n"
    );
}

fn main() {
    let mut requests: usize = 200_000;
    let mut http_secs: u64 = 0;
    let mut connections: u64 = 16;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v: Option<u64> = args.next().and_then(|v| v.parse().ok());
        match a.as_str() {
            "--requests" => requests = v.expect("--requests N") as usize,
            "--http-secs" => http_secs = v.expect("--http-secs N"),
            "--connections" => connections = v.expect("--connections N"),
            _ => panic!("unknown argument {a}"),
        }
    }
    let health = HealthConfig {
        interval_secs: 5,
        missed_limit: 3,
    };
    let signing = SigningConfig::default();
    let params = SteerParams {
        health: &health,
        signing: &signing,
        max_locations: 3,
        viewer_bps: 0,
        origin_base: "http://control.example:8700/v1/origin",
        new_viewer: true,
    };
    let keys = keys();
    let site_cfg = sites();

    // 1. Throughput.
    let cat = catalog(200);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut fleet = make_fleet(&cat, 10_000_000_000, 40_000_000_000, &mut rng, true);
    let mut cache = SteerCache::new(&site_cfg);
    // The fleet's change stamp, bumped with every change as the service's state does.
    let mut stamp = 0u64;
    cache.set_fleet_stamp(stamp);
    let titles: Vec<String> = cat.titles.iter().map(|t| t.id.clone()).collect();
    // Warm the caches (which titles each appliance holds) as a running service has them: one
    // answer per (title, site) evaluates every IX appliance and the site's embedded ones.
    for t in &titles {
        for s in 0..SITES {
            let c = IpAddr::V4(Ipv4Addr::from(aggregate(s, 0) | 7));
            steer(&mut cache, &fleet, &cat, 1, &keys, &params, c, t, NOW).unwrap();
        }
    }
    let mut lat = Vec::with_capacity(requests);
    let mut cpu = Vec::with_capacity(requests);
    let mut bytes = 0usize;
    let mut kinds = [0u64; 3];
    let started = Instant::now();
    for i in 0..requests {
        if i.is_multiple_of(100) {
            // A health report arrives: new load, a new report (new allocations, as from JSON).
            let n = rng.below(fleet.len() as u64) as usize;
            let (mut h, _) = fleet[n].health.clone().unwrap();
            h.serving_bps = rng.below(fleet[n].load().1 / 2);
            fleet[n].set_health(h, NOW + (i / 20_000) as u64);
            stamp += 1;
            cache.set_fleet_stamp(stamp);
        }
        let (c, _) = client(&mut rng);
        let t = &titles[rng.below(titles.len() as u64) as usize];
        let t0 = Instant::now();
        let c0 = thread_cpu_ns();
        let s = steer(
            &mut cache,
            &fleet,
            &cat,
            1,
            &keys,
            &params,
            c,
            t,
            NOW + (i / 20_000) as u64,
        )
        .unwrap();
        let body = serde_json::to_vec(&s).unwrap();
        cpu.push(thread_cpu_ns() - c0);
        lat.push(t0.elapsed().as_nanos() as u64);
        bytes += body.len();
        kinds[match s.locations[0].kind {
            edgeplane_api::LocationKind::Embedded => 0,
            edgeplane_api::LocationKind::Ix => 1,
            edgeplane_api::LocationKind::Origin => 2,
        }] += 1;
    }
    let wall = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let cpu_total: u64 = cpu.iter().sum();
    cpu.sort_unstable();
    println!("### Throughput (in process, one thread)\n");
    println!(
        "{} appliances on {SITES} sites, {} client /24s, {} titles; {requests} answers (steering + JSON serialization) for random (client /24, title), a health report arriving every 100 answers (its intake not timed). \
         **Per CPU**: the thread's own CPU time per answer (`CLOCK_THREAD_CPUTIME_ID`), which the machine's other load does not inflate; answers per CPU-second is what one dedicated core sustains. **Wall**: elapsed time, including time the thread waited for a CPU.\n",
        fleet.len(),
        SITES as u32 * AGGREGATES_PER_SITE * 1024,
        titles.len()
    );
    println!("| | answers/s | p50 | p99 | p99.9 | max |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| per CPU | {:.0} | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs |",
        requests as f64 / (cpu_total as f64 / 1e9),
        percentile(&cpu, 0.5) as f64 / 1e3,
        percentile(&cpu, 0.99) as f64 / 1e3,
        percentile(&cpu, 0.999) as f64 / 1e3,
        *cpu.last().unwrap() as f64 / 1e3,
    );
    println!(
        "| wall | {:.0} | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs |\n",
        requests as f64 / wall,
        percentile(&lat, 0.5) as f64 / 1e3,
        percentile(&lat, 0.99) as f64 / 1e3,
        percentile(&lat, 0.999) as f64 / 1e3,
        *lat.last().unwrap() as f64 / 1e3,
    );
    println!(
        "Mean answer {} B; first location embedded / IX / origin: {} / {} / {}.\n",
        bytes / requests,
        kinds[0],
        kinds[1],
        kinds[2]
    );

    // 2. Premiere.
    let cat = catalog(1);
    let viewer_bps = 6_000_000u64;
    let (emb_cap, ix_cap) = (600_000_000u64, 1_200_000_000u64);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut fleet = make_fleet(&cat, emb_cap, ix_cap, &mut rng, false);
    let mut cache = SteerCache::new(&site_cfg);
    let mut stamp = 0u64;
    let caps: Vec<u64> = fleet.iter().map(|a| a.load().1).collect();
    let total_room: u64 = caps.iter().map(|c| c / viewer_bps).sum();
    let mut viewers = vec![0u64; fleet.len()];
    let index: std::collections::HashMap<String, usize> = fleet
        .iter()
        .enumerate()
        .map(|(i, a)| (a.id.clone(), i))
        .collect();
    let total = 100_000u64;
    let mut over_cap = 0u64;
    let mut origin_with_room = 0u64;
    let mut origin = 0u64;
    let mut last_second = u64::MAX;
    for v in 0..total {
        // 100,000 viewers over 60 s.
        let second = v * 60 / total;
        if second != last_second {
            last_second = second;
            for (i, a) in fleet.iter_mut().enumerate() {
                if (second + i as u64).is_multiple_of(5) {
                    let (mut h, _) = a.health.clone().unwrap();
                    h.serving_bps = viewers[i] * viewer_bps;
                    h.objects = h.objects.clone();
                    a.set_health(h, NOW + second);
                }
            }
            stamp += 1;
            cache.set_fleet_stamp(stamp);
        }
        let (c, _) = client(&mut rng);
        let s = steer(
            &mut cache,
            &fleet,
            &cat,
            1,
            &keys,
            &params,
            c,
            "t0000",
            NOW + second,
        )
        .unwrap();
        match s.locations[0].appliance.as_deref() {
            Some(id) => {
                let i = index[id];
                viewers[i] += 1;
                if viewers[i] * viewer_bps > caps[i] {
                    over_cap += 1;
                }
            }
            None => {
                origin += 1;
                if viewers.iter().sum::<u64>() < total_room {
                    origin_with_room += 1;
                }
            }
        }
    }
    let loads: Vec<f64> = viewers
        .iter()
        .zip(&caps)
        .map(|(v, c)| (v * viewer_bps) as f64 / *c as f64)
        .collect();
    let mean = loads.iter().sum::<f64>() / loads.len() as f64;
    let max = loads.iter().cloned().fold(0.0, f64::max);
    let used = viewers.iter().filter(|&&v| v > 0).count();
    let max_viewers = viewers.iter().max().unwrap();
    println!("### Premiere (simulated clock)\n");
    println!(
        "One title, {total} viewers over 60 s at {} Mb/s each; caps {} Mb/s (embedded) and {} Mb/s (IX), fleet room {} viewers; every appliance reports every 5 s.\n",
        viewer_bps / 1_000_000,
        emb_cap / 1_000_000,
        ix_cap / 1_000_000,
        total_room
    );
    println!("| appliances used | max viewers on one | max load/cap | mean load/cap | max/mean load ratio | answers over a cap | to the origin (with room left) |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {used} of {} | {max_viewers} | {max:.3} | {mean:.3} | {:.2} | {over_cap} | {origin} ({origin_with_room}) |",
        fleet.len(),
        max / mean
    );
    println!();
    if http_secs > 0 {
        http_bench(http_secs, connections as u32);
    }
    if over_cap > 0 || origin_with_room > 0 {
        eprintln!(
            "bench-steering: {over_cap} answers put an appliance over its cap, {origin_with_room} went to the origin with room left"
        );
        std::process::exit(1);
    }
}
