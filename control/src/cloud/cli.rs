//! `edgeplane cloud …`: the command line of the simulated AWS side.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use object_store::ObjectStore;

use crate::cloud::clock::SystemClock;
use crate::cloud::config::{CloudConfig, ConfigError};
use crate::cloud::encode::{encode_title, EncodeError, EncodeSpec};
use crate::cloud::generate::{
    catalog_of, parse_rendition, upload, upload_catalog, CatalogSpec, SpecError,
};
use crate::cloud::server::StartError;
use crate::cloud::{origin, server};

/// Why an `edgeplane cloud` command failed; [`main`] prints it after `edgeplane-cloud: error: `.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The configuration file.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A signal handler could not be installed.
    #[error("{signal} handler: {source}")]
    Signal {
        /// `SIGTERM` or `SIGINT`.
        signal: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The service did not start.
    #[error("{0}")]
    Start(#[from] StartError),
    /// The service ended with an error.
    #[error("server: {0}")]
    Server(#[source] std::io::Error),
    /// The catalog spec on the command line.
    #[error("{0}")]
    Spec(#[from] SpecError),
    /// `--encode` failed.
    #[error("{0}")]
    Encode(#[from] EncodeError),
    /// `--upload`, `--create-bucket` or `--register` without `--config`.
    #[error("--upload, --create-bucket and --register need --config")]
    NeedsConfig,
    /// The catalog did not serialize.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// `--out` could not be written.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The `--out` file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `--create-bucket` failed.
    #[error("{0}")]
    Bucket(#[from] origin::S3Error),
    /// The origin's S3 client could not be built.
    #[error("origin: {0}")]
    Origin(#[source] object_store::Error),
    /// An upload failed.
    #[error("uploading to the origin: {0}")]
    Upload(#[source] object_store::Error),
    /// `PUT /v1/catalog` did not get an answer.
    #[error("PUT {url}: {source}")]
    Register {
        /// The catalog URL.
        url: String,
        /// What the HTTP client saw.
        #[source]
        source: reqwest::Error,
    },
    /// `PUT /v1/catalog` was refused.
    #[error("PUT {url}: {status}: {body}")]
    RegisterRefused {
        /// The catalog URL.
        url: String,
        /// The answer's status.
        status: reqwest::StatusCode,
        /// The answer's body (the service's `{"error": …}`).
        body: String,
    },
}

/// `edgeplane cloud`.
#[derive(clap::Args, Debug)]
pub struct CloudArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: CloudCommand,
}

/// The subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum CloudCommand {
    /// Run the control service (fleet, manifests, steering) until SIGTERM or SIGINT.
    Serve(ServeArgs),
    /// Generate a synthetic catalog; optionally upload it to the origin and register it.
    GenCatalog(GenCatalogArgs),
}

/// `edgeplane cloud serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The configuration file (TOML; docs/control-api.md).
    #[arg(long)]
    pub config: PathBuf,
}

/// `edgeplane cloud gen-catalog`.
#[derive(clap::Args, Debug)]
pub struct GenCatalogArgs {
    /// The configuration file: the origin to upload to and the admin token to register with.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Number of titles.
    #[arg(long, default_value_t = 20)]
    pub titles: usize,
    /// The bitrate ladder: `name[:bits_per_second]`, comma-separated (a bare name must be one
    /// of 240p, 480p, 720p, 1080p).
    #[arg(long, value_delimiter = ',', default_value = "240p,480p,720p,1080p")]
    pub renditions: Vec<String>,
    /// Segments per rendition.
    #[arg(long, default_value_t = 10)]
    pub segments: usize,
    /// Seconds per segment.
    #[arg(long, default_value_t = 4.0)]
    pub segment_secs: f64,
    /// Multiplies every object size (0.001 makes a tiny catalog).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Content seed (same seed, same bytes and SHA-256s).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Upload the objects to the origin of --config.
    #[arg(long)]
    pub upload: bool,
    /// Create the origin bucket first (local S3-compatible servers only).
    #[arg(long)]
    pub create_bucket: bool,
    /// Parallel uploads.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Write the catalog JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Base URL of a running control service to `PUT /v1/catalog` to (with the admin token of
    /// --config), e.g. `http://127.0.0.1:8700`.
    #[arg(long)]
    pub register: Option<String>,
    /// Make playable titles with ffmpeg instead of synthetic bytes: an H.264 ladder (180p,
    /// 360p, 540p) and AAC audio in 2-second CMAF segments, HLS playlists and a DASH MPD
    /// (--renditions, --segments, --segment-secs, --scale and --seed do not apply).
    #[arg(long)]
    pub encode: bool,
    /// With --encode: seconds per title (a multiple of 2).
    #[arg(long, default_value_t = 30)]
    pub encode_seconds: u32,
    /// With --encode: the ffmpeg to run.
    #[arg(long, default_value = "ffmpeg")]
    pub ffmpeg: PathBuf,
}

/// Runs `edgeplane cloud …` on its own tokio runtime.
pub fn main(args: CloudArgs) -> ExitCode {
    origin::install_crypto_provider();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edgeplane-cloud: error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match args.command {
            CloudCommand::Serve(a) => serve(a).await,
            CloudCommand::GenCatalog(a) => gen_catalog(a).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgeplane-cloud: error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), CliError> {
    use tokio::signal::unix::{signal, SignalKind};
    let cfg = CloudConfig::load(&args.config)?;
    // Handlers first, so a signal right after the ready line is not missed.
    let handler = |name: &'static str, kind| {
        signal(kind).map_err(|source| CliError::Signal {
            signal: name,
            source,
        })
    };
    let mut term = handler("SIGTERM", SignalKind::terminate())?;
    let mut int = handler("SIGINT", SignalKind::interrupt())?;
    let running = server::start(cfg, Arc::new(SystemClock)).await?;
    eprintln!("edgeplane-cloud: ready api={}", running.addr);
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!("edgeplane-cloud: shutting down");
    running.shutdown().await.map_err(CliError::Server)
}

/// The spec from the command line.
pub fn spec_of(args: &GenCatalogArgs) -> Result<CatalogSpec, SpecError> {
    let renditions = args
        .renditions
        .iter()
        .map(|r| parse_rendition(r.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    let spec = CatalogSpec {
        titles: args.titles,
        renditions,
        segments: args.segments,
        segment_secs: args.segment_secs,
        scale: args.scale,
        seed: args.seed,
    };
    spec.validate()?;
    Ok(spec)
}

async fn gen_catalog(args: GenCatalogArgs) -> Result<(), CliError> {
    let spec = spec_of(&args)?;
    let cfg = match &args.config {
        Some(p) => Some(CloudConfig::load(p)?),
        None => None,
    };
    if (args.upload || args.register.is_some() || args.create_bucket) && cfg.is_none() {
        return Err(CliError::NeedsConfig);
    }
    let (catalog, encoded) = if args.encode {
        let (c, o) = encode_catalog(&args).await?;
        (c, Some(o))
    } else {
        (catalog_of(&spec), None)
    };
    let objects: usize = catalog
        .titles
        .iter()
        .flat_map(|t| t.renditions.iter())
        .map(|r| r.objects.len())
        .sum();
    let bytes: u64 = catalog
        .titles
        .iter()
        .flat_map(|t| t.renditions.iter().flat_map(|r| r.objects.iter()))
        .map(|o| o.size)
        .sum();
    eprintln!(
        "edgeplane-cloud: catalog: {} titles, {objects} objects, {bytes} bytes",
        catalog.titles.len()
    );
    if let Some(out) = &args.out {
        let json = serde_json::to_vec_pretty(&catalog)?;
        std::fs::write(out, json).map_err(|source| CliError::Write {
            path: out.clone(),
            source,
        })?;
    }
    if let Some(cfg) = &cfg {
        if args.create_bucket {
            origin::create_bucket(&cfg.origin).await?;
        }
        if args.upload {
            let store: Arc<dyn ObjectStore> =
                Arc::new(origin::build_store(&cfg.origin).map_err(CliError::Origin)?);
            let n = match encoded {
                Some(objects) => {
                    let n = objects.len() as u64;
                    upload(store, objects, args.concurrency)
                        .await
                        .map_err(CliError::Upload)?;
                    n
                }
                None => upload_catalog(store, &catalog, spec.seed, args.concurrency)
                    .await
                    .map_err(CliError::Upload)?,
            };
            eprintln!(
                "edgeplane-cloud: uploaded {n} objects to bucket {}",
                cfg.origin.bucket
            );
        }
        if let Some(base) = &args.register {
            register_catalog(base, &cfg.admin_token, &catalog).await?;
            eprintln!("edgeplane-cloud: catalog registered at {base}");
        }
    }
    Ok(())
}

/// Encodes `--titles` titles with ffmpeg (one at a time, off the runtime's threads).
async fn encode_catalog(
    args: &GenCatalogArgs,
) -> Result<(edgeplane_api::Catalog, Vec<(String, bytes::Bytes)>), CliError> {
    let spec = EncodeSpec::small(args.titles, args.encode_seconds);
    spec.validate()?;
    let ffmpeg = args.ffmpeg.clone();
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || {
        let scratch = std::env::temp_dir().join(format!("edgeplane-encode-{}", std::process::id()));
        let mut titles = Vec::new();
        let mut objects = Vec::new();
        for i in 0..spec.titles {
            let (t, o) = encode_title(&ffmpeg, &scratch, i, &spec)?;
            titles.push(t);
            objects.extend(o);
        }
        Ok::<_, EncodeError>((edgeplane_api::Catalog { titles }, objects))
    })
    .await
    .map_err(|e| CliError::Encode(EncodeError::Spec(format!("encoder thread: {e}"))))??;
    eprintln!(
        "edgeplane-cloud: encoded {} titles × {} s in {:.1} s",
        args.titles,
        args.encode_seconds,
        started.elapsed().as_secs_f64()
    );
    Ok(result)
}

/// `PUT <base>/v1/catalog` with the admin token.
pub async fn register_catalog(
    base: &str,
    admin_token: &str,
    catalog: &edgeplane_api::Catalog,
) -> Result<(), CliError> {
    origin::install_crypto_provider();
    let url = format!("{}/v1/catalog", base.trim_end_matches('/'));
    let sent = reqwest::Client::new()
        .put(&url)
        .bearer_auth(admin_token)
        .json(catalog)
        .send()
        .await;
    let resp = match sent {
        Ok(r) => r,
        Err(source) => return Err(CliError::Register { url, source }),
    };
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else {
        let body = resp.text().await.unwrap_or_default();
        Err(CliError::RegisterRefused { url, status, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        cloud: CloudArgs,
    }

    #[test]
    fn parses() {
        let c = Cli::try_parse_from(["x", "serve", "--config", "c.toml"]).unwrap();
        assert!(
            matches!(c.cloud.command, CloudCommand::Serve(ref s) if s.config.as_os_str() == "c.toml")
        );
        let c = Cli::try_parse_from([
            "x",
            "gen-catalog",
            "--titles",
            "3",
            "--renditions",
            "240p,4k:16000000",
            "--segments",
            "2",
            "--scale",
            "0.01",
            "--seed",
            "9",
            "--upload",
            "--out",
            "cat.json",
        ])
        .unwrap();
        let CloudCommand::GenCatalog(g) = c.cloud.command else {
            panic!()
        };
        let spec = spec_of(&g).unwrap();
        assert_eq!(spec.titles, 3);
        assert_eq!(spec.renditions.len(), 2);
        assert_eq!(spec.renditions[1].bitrate, 16_000_000);
        assert!(g.upload);
        assert!(Cli::try_parse_from(["x", "serve"]).is_err());
    }

    #[test]
    fn spec_errors_keep_their_text() {
        let c = Cli::try_parse_from(["x", "gen-catalog", "--renditions", "240p,4k"]).unwrap();
        let CloudCommand::GenCatalog(g) = c.cloud.command else {
            panic!()
        };
        let e = spec_of(&g).unwrap_err();
        assert_eq!(e, SpecError::NoBitrate("4k".into()));
        let e = CliError::from(e);
        assert_eq!(
            e.to_string(),
            "rendition \"4k\": give a bitrate as 4k:BITS_PER_SECOND"
        );
        assert_eq!(
            CliError::NeedsConfig.to_string(),
            "--upload, --create-bucket and --register need --config"
        );
    }

    #[test]
    fn gen_catalog_writes_json_and_needs_config_for_upload() {
        let dir = std::env::temp_dir().join(format!("edgeplane-cloud-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("catalog.json");
        let parse = |extra: &[&str]| {
            let mut argv = vec![
                "x",
                "gen-catalog",
                "--titles",
                "2",
                "--segments",
                "1",
                "--scale",
                "0.0001",
            ];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).unwrap().cloud
        };
        let out_s = out.to_str().unwrap().to_owned();
        assert_eq!(main(parse(&["--out", &out_s])), ExitCode::SUCCESS);
        let cat: edgeplane_api::Catalog =
            serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(cat.titles.len(), 2);
        assert_eq!(main(parse(&["--upload"])), ExitCode::FAILURE);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
