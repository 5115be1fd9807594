//! `edgeplane-load`: drive any HTTP/1.1 or HTTPS range server with the bench catalog's objects
//! and print a JSON report (stdout or `--json FILE`) and a summary line (stderr).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use edgeplane_load::pattern::ensure_object;
use edgeplane_load::player::DEFAULT_LADDER_KBPS;
use edgeplane_load::{
    run, Config, Live, Object, PlayerConfig, RangeClass, Target, Validation, Workload,
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
    /// Send load to a server and report.
    Run(Box<RunArgs>),
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
    /// http://host:port[/prefix] or https://…
    url: String,
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
    /// Threads (each its own event loop).
    #[arg(long, default_value_t = std::thread::available_parallelism().map_or(1, |n| n.get()))]
    threads: usize,
    /// Pin threads to these CPUs, e.g. 1,2,3 (thread i to the (i mod n)-th).
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
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

fn run_load(a: RunArgs) -> Result<bool> {
    let mut objects = parse_objects(&a.objects)?;
    if let Some(dir) = &a.catalog {
        objects.extend(catalog_objects(dir)?);
    }
    if objects.is_empty() {
        bail!("no objects: give --catalog DIR or --object NAME:BYTES");
    }
    let workload = match a.viewers {
        Some(viewers) => Workload::Player(PlayerConfig {
            viewers,
            titles: objects,
            zipf_s: a.zipf,
            ladder_kbps: a.ladder.clone(),
            segment_s: a.segment_s,
            buffer_target_s: a.buffer_target_s,
            startup_s: a.startup_s,
            ramp_s: a.ramp_s,
        }),
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
    let cfg = Config {
        target: Target::parse(&a.url)?,
        threads: a.threads,
        cpus: a.cpus,
        connections: a.connections,
        duration: Duration::from_secs_f64(a.duration),
        rate: a.rate,
        request_timeout: Duration::from_secs_f64(a.timeout),
        workload,
        validation: match a.validate {
            ValidateArg::Full => Validation::Full,
            ValidateArg::Length => Validation::Length,
        },
        ca: a.ca,
        sni: a.sni,
        seed: a.seed,
        max_requests: a.requests,
    };
    let report = run(&cfg, Arc::new(Live::default()))?;
    let json = serde_json::to_string_pretty(&report)? + "\n";
    match &a.json {
        Some(path) => fs::write(path, json).with_context(|| format!("write {}", path.display()))?,
        None => print!("{json}"),
    }
    eprintln!("edgeplane-load: {}", report.summary());
    Ok(report.errors_total == 0 && report.requests > 0)
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Run(args) => run_load(*args),
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
