//! `edgeplane-load`: drive any HTTP/1.1 or HTTPS range server with the bench catalog's objects
//! and print a JSON report (stdout or `--json FILE`) and a summary line (stderr).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use edgeplane_load::pattern::ensure_object;
use edgeplane_load::player::DEFAULT_LADDER_KBPS;
use edgeplane_load::remote::{serve, WorkerOptions};
use edgeplane_load::{
    generator_cpus, run, run_distributed, Config, Distributed, Live, Object, PlayerConfig,
    RangeClass, SteeringConfig, Target, Validation, Workload,
};

#[derive(Parser)]
#[command(
    name = "edgeplane-load",
    about = "Load generator for video edge servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send load to a server and report (with --workers: have the workers send it).
    Run(Box<RunArgs>),
    /// Wait for a coordinator (`run --workers`) and send the share of the load it assigns.
    Worker {
        /// Address to listen on for coordinators, e.g. 0.0.0.0:7070.
        #[arg(long)]
        listen: String,
        /// Threads (default: one per CPU in --cpus; a coordinator's --threads overrides).
        #[arg(long)]
        threads: Option<usize>,
        /// Pin threads to these CPUs (default: the CPUs this process may use, minus
        /// --server-cpus).
        #[arg(long, value_delimiter = ',')]
        cpus: Vec<usize>,
        /// CPUs left to a server on the same machine.
        #[arg(long, value_delimiter = ',')]
        server_cpus: Vec<usize>,
        /// Exit after one coordinator's job.
        #[arg(long)]
        once: bool,
    },
    /// Measure body validation on one core: GB/s of `Pattern::check` over a buffer the size of
    /// a connection's read buffer (the bytes are in cache, as right after a socket read).
    BenchValidate {
        /// Seconds to measure.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Buffer size, bytes.
        #[arg(long, default_value_t = 256 << 10)]
        buffer: usize,
        /// Offset of the buffer in the object (not a multiple of 8: the unaligned path too).
        #[arg(long, default_value_t = 3)]
        offset: u64,
    },
    /// Write the deterministic bench objects (whose content `run` validates) into a directory.
    Catalog {
        /// Directory to write into (created).
        dir: PathBuf,
        /// Objects named `<prefix>NN.bin`.
        #[arg(long, default_value = "bench-")]
        prefix: String,
        #[arg(long, default_value_t = 4)]
        count: u32,
        /// Bytes per object.
        #[arg(long, default_value_t = 64 << 20)]
        size: u64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ValidateArg {
    Full,
    Length,
}

#[derive(clap::Args)]
struct RunArgs {
    /// http://host:port[/prefix] or https://… (not with --steering).
    #[arg(required_unless_present = "steering", conflicts_with = "steering")]
    url: Option<String>,
    /// Objects: a catalog directory (every regular file in it; the files must be the ones
    /// `edgeplane-load catalog` writes).
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// Objects as NAME:BYTES (repeatable), instead of --catalog.
    #[arg(long = "object")]
    objects: Vec<String>,
    /// Cold objects (a second request class, e.g. on the storage tier), NAME:BYTES.
    #[arg(long = "cold-object")]
    cold_objects: Vec<String>,
    /// Share of requests that go to the cold objects.
    #[arg(long, default_value_t = 0.1)]
    cold_fraction: f64,
    /// Threads, each its own event loop, pinned (default: one per CPU in --cpus). With
    /// --workers: threads per worker (default: each worker's own CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Pin threads to these CPUs, e.g. 1,2,3 (thread i to the (i mod n)-th). Default: the CPUs
    /// this process may use (its affinity mask), minus --server-cpus.
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
    /// CPUs a server on the same machine runs on: no generator thread goes there.
    #[arg(long, value_delimiter = ',')]
    server_cpus: Vec<usize>,
    /// Coordinate these workers (`edgeplane-load worker --listen …`) instead of sending load
    /// from here: HOST:PORT,...
    #[arg(long, value_delimiter = ',')]
    workers: Vec<String>,
    #[arg(long, default_value_t = 64)]
    connections: u64,
    /// Seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Open loop: requests per second in total (latency corrected for coordinated omission).
    /// Without it: closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Range length in bytes (shortest, with --range-max for a spread).
    #[arg(long, default_value_t = 65_536)]
    range: u64,
    #[arg(long)]
    range_max: Option<u64>,
    /// Offsets are multiples of this (default: --range).
    #[arg(long)]
    align: Option<u64>,
    /// Zipf exponent of object popularity (0: uniform).
    #[arg(long, default_value_t = 0.0)]
    zipf: f64,
    /// Player model with this many viewers (one connection each) instead of range requests.
    #[arg(long)]
    viewers: Option<u64>,
    /// Player: bitrate ladder, kbit/s.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_LADDER_KBPS.to_vec())]
    ladder: Vec<u32>,
    #[arg(long, default_value_t = 4.0)]
    segment_s: f64,
    #[arg(long, default_value_t = 12.0)]
    buffer_target_s: f64,
    #[arg(long, default_value_t = 4.0)]
    startup_s: f64,
    /// Viewers join spread over this many seconds.
    #[arg(long, default_value_t = 1.0)]
    ramp_s: f64,
    /// Steered player (with --viewers): the control service's steering endpoint,
    /// http://host:port/v1/steering. Each viewer asks it where to play a --title from, fetches
    /// whole segments from the answer's first location, walks to the next location on an
    /// error or a timeout, and reloads the answer every --steering-reload seconds.
    #[arg(long, requires_all = ["viewers", "title"])]
    steering: Option<String>,
    /// Steered player: title ids (Zipf by --zipf in this order), comma-separated or repeated.
    #[arg(long, value_delimiter = ',')]
    title: Vec<String>,
    /// Steered player: the client address to ask steering for (default: the connection's).
    #[arg(long)]
    client: Option<String>,
    /// Steered player: seconds between steering reloads (the control service's
    /// `steering.reload_secs` is 10 by default).
    #[arg(long, default_value_t = 10.0)]
    steering_reload: f64,
    /// Steered player: seconds before a segment request counts as failed (then the next
    /// location).
    #[arg(long, default_value_t = 4.0)]
    segment_timeout: f64,
    /// Steered player: the catalog JSON (`edgeplane cloud gen-catalog --out`): every segment's
    /// length and SHA-256 are checked against it.
    #[arg(long)]
    expect_catalog: Option<PathBuf>,
    /// Steered player: each viewer connects from its own loopback address (127.0.1.0 + its
    /// number) when the servers are on 127.0.0.0/8, so per-client caps and per-prefix tokens
    /// see one client per viewer, as on a network.
    #[arg(long)]
    loopback_sources: bool,
    #[arg(long, value_enum, default_value_t = ValidateArg::Full)]
    validate: ValidateArg,
    /// Seconds before a request counts as a timeout.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// HTTPS: PEM certificate(s) to trust.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// HTTPS: server name to send and verify (default: the URL's host).
    #[arg(long)]
    sni: Option<String>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop after this many requests (range workloads; --duration still bounds the run).
    #[arg(long)]
    requests: Option<u64>,
    /// Write the JSON report here instead of stdout.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn parse_objects(specs: &[String]) -> Result<Vec<Object>> {
    specs
        .iter()
        .map(|s| {
            let (name, size) = s
                .rsplit_once(':')
                .with_context(|| format!("object {s:?}: want NAME:BYTES"))?;
            Ok(Object {
                name: name.to_owned(),
                size: size
                    .parse()
                    .with_context(|| format!("object {s:?}: size"))?,
            })
        })
        .collect()
}

fn catalog_objects(dir: &Path) -> Result<Vec<Object>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = entry.metadata()?;
        if meta.is_file() && !name.starts_with('.') && meta.len() > 0 {
            out.push(Object {
                name,
                size: meta.len(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Object id → (size, SHA-256) of a catalog JSON file.
fn expected_objects(path: &Path) -> Result<BTreeMap<String, (u64, String)>> {
    let text = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let catalog: edgeplane_api::Catalog =
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    Ok(edgeplane_load::steer::expected_objects(&catalog))
}

fn run_load(a: RunArgs) -> Result<bool> {
    if let Some(url) = &a.steering {
        let expect = match &a.expect_catalog {
            Some(path) => expected_objects(path)?,
            None => BTreeMap::new(),
        };
        let steering = SteeringConfig {
            url: url.clone(),
            client: a.client.clone(),
            reload_s: a.steering_reload,
            segment_timeout_s: a.segment_timeout,
            expect,
            loopback_sources: a.loopback_sources,
        };
        let titles = a
            .title
            .iter()
            .map(|t| Object {
                name: t.clone(),
                size: 0,
            })
            .collect();
        return run_player(&a, url, titles, Some(steering));
    }
    let mut objects = parse_objects(&a.objects)?;
    if let Some(dir) = &a.catalog {
        objects.extend(catalog_objects(dir)?);
    }
    if objects.is_empty() {
        bail!("no objects: give --catalog DIR or --object NAME:BYTES");
    }
    let url = a.url.clone().unwrap_or_default();
    let workload = match a.viewers {
        Some(_) => return run_player(&a, &url, objects, None),
        None => {
            let class = |name: &str, weight, objects| RangeClass {
                name: name.to_owned(),
                weight,
                objects,
                zipf_s: a.zipf,
                min_len: a.range,
                max_len: a.range_max.unwrap_or(a.range).max(a.range),
                align: a.align.unwrap_or(a.range).max(1),
            };
            let cold = parse_objects(&a.cold_objects)?;
            let mut classes = vec![class(
                "hot",
                if cold.is_empty() {
                    1.0
                } else {
                    1.0 - a.cold_fraction
                },
                objects,
            )];
            if !cold.is_empty() {
                classes.push(class("cold", a.cold_fraction, cold));
            }
            Workload::Ranges(classes)
        }
    };
    execute(&a, &url, workload)
}

fn run_player(
    a: &RunArgs,
    url: &str,
    titles: Vec<Object>,
    steering: Option<SteeringConfig>,
) -> Result<bool> {
    let workload = Workload::Player(PlayerConfig {
        viewers: a.viewers.unwrap_or(1),
        titles,
        zipf_s: a.zipf,
        ladder_kbps: a.ladder.clone(),
        segment_s: a.segment_s,
        buffer_target_s: a.buffer_target_s,
        startup_s: a.startup_s,
        ramp_s: a.ramp_s,
        steering,
    });
    execute(a, url, workload)
}

fn execute(a: &RunArgs, url: &str, workload: Workload) -> Result<bool> {
    let cpus = if a.cpus.is_empty() {
        generator_cpus(&a.server_cpus)
    } else {
        a.cpus.clone()
    };
    let cfg = Config {
        target: Target::parse(url)?,
        threads: a.threads.unwrap_or(cpus.len()).max(1),
        cpus,
        connections: a.connections,
        duration: Duration::from_secs_f64(a.duration),
        rate: a.rate,
        request_timeout: Duration::from_secs_f64(a.timeout),
        workload,
        validation: match a.validate {
            ValidateArg::Full => Validation::Full,
            ValidateArg::Length => Validation::Length,
        },
        ca: a.ca.clone(),
        sni: a.sni.clone(),
        seed: a.seed,
        max_requests: a.requests,
    };
    let report = if a.workers.is_empty() {
        run(&cfg, Arc::new(Live::default()))?
    } else {
        let dist = Distributed {
            workers: a.workers.clone(),
            threads_per_worker: a.threads,
            start_delay: None,
        };
        run_distributed(&cfg, &dist, Arc::new(Live::default()), |line| {
            eprintln!("edgeplane-load: {line}");
        })?
    };
    let json = serde_json::to_string_pretty(&report)? + "\n";
    match &a.json {
        Some(path) => fs::write(path, json).with_context(|| format!("write {}", path.display()))?,
        None => print!("{json}"),
    }
    eprintln!("edgeplane-load: {}", report.summary());
    Ok(report.succeeded())
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Run(args) => run_load(*args),
        Command::BenchValidate {
            seconds,
            buffer,
            offset,
        } => (|| {
            for (simd, what) in [(true, "SIMD: AVX-512, else AVX2"), (false, "portable")] {
                let gbs = edgeplane_load::pattern::bench_check(buffer, offset, seconds, simd)?;
                println!(
                    "body validation ({what}): {gbs:.2} GB/s on one core ({buffer}-byte \
                     buffer at offset {offset}, {seconds} s)"
                );
            }
            Ok(true)
        })(),
        Command::Worker {
            listen,
            threads,
            cpus,
            server_cpus,
            once,
        } => (|| {
            let listener = std::net::TcpListener::bind(&listen)
                .with_context(|| format!("listen on {listen}"))?;
            let cpus = if cpus.is_empty() {
                generator_cpus(&server_cpus)
            } else {
                cpus
            };
            // The first line on stdout says where (tests and scripts read the port from it).
            println!(
                "edgeplane-load worker: listening on {} (control protocol {}, {} CPU(s): {:?})",
                listener.local_addr()?,
                edgeplane_load::remote::PROTOCOL_VERSION,
                cpus.len(),
                cpus
            );
            use std::io::Write as _;
            std::io::stdout().flush()?;
            serve(listener, &WorkerOptions { threads, cpus }, once)?;
            Ok(true)
        })(),
        Command::Catalog {
            dir,
            prefix,
            count,
            size,
        } => (|| {
            fs::create_dir_all(&dir)?;
            for i in 0..count {
                let name = format!("{prefix}{i:02}.bin");
                if ensure_object(&dir, &name, size)? {
                    eprintln!("wrote {}", dir.join(&name).display());
                }
            }
            Ok(true)
        })(),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        // The report is written; errors or no successful request: exit 1.
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("edgeplane-load: error: {err:#}");
            ExitCode::from(2)
        }
    }
}
