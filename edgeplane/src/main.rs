//! The `edgeplane` command.

mod appliance;
mod check;
mod prefixes;
mod top;

use appliance::ApplianceConfig;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "edgeplane",
    version,
    about = "Video edge appliance: serves byte ranges of video segments from flash and storage tiers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the tiers named in the config until SIGTERM.
    Serve {
        /// The config file (TOML; see docs/config.md).
        #[arg(long, short, default_value = "/etc/edgeplane/edgeplane.toml")]
        config: PathBuf,
    },
    /// Preflight the host for this config: one line per item, exit 0 when serving can start.
    Check {
        /// The config file.
        #[arg(long, short, default_value = "/etc/edgeplane/edgeplane.toml")]
        config: PathBuf,
        /// Read /proc and /sys under this directory instead of / (for testing).
        #[arg(long, default_value = "/", hide = true)]
        root: PathBuf,
    },
    /// Change or show the served prefixes of a running data plane (its pinned XDP maps):
    /// add, remove, list, stats, drain.
    Prefixes {
        /// Where the data plane pinned its maps (xdp.pin_dir).
        #[arg(long, default_value = edgeplane_xdp::pins::DEFAULT_PIN_DIR, global = true)]
        pin_dir: PathBuf,
        #[command(subcommand)]
        command: prefixes::PrefixCommand,
    },
    /// Run the agent beside the data plane (the config's `[agent]`): fill, health reports,
    /// served prefixes and signing keys, until SIGTERM.
    Agent {
        /// The config file (the same one `serve` reads).
        #[arg(long, short, default_value = "/etc/edgeplane/edgeplane.toml")]
        config: PathBuf,
    },
    /// The simulated AWS side: the control service (fleet, manifests, steering, signed URLs)
    /// and the catalog generator. See docs/control-api.md.
    Cloud(edgeplane_control::cloud::cli::CloudArgs),
    /// BGP sessions of the running agent.
    Bgp {
        #[command(subcommand)]
        command: BgpCommand,
    },
    /// Drain a running data plane for maintenance: it stops accepting, finishes in-flight
    /// responses within limits.shutdown_grace_ms and exits 0. Waits until it has exited.
    Drain {
        /// The config file (its `admin.listen` is where the data plane answers).
        #[arg(long, short, default_value = "/etc/edgeplane/edgeplane.toml")]
        config: PathBuf,
        /// The admin address (HOST:PORT), instead of `admin.listen` from the config.
        #[arg(long)]
        admin: Option<String>,
        /// Return once the drain has started instead of waiting for the exit.
        #[arg(long)]
        no_wait: bool,
    },
    /// A live view of this appliance for an operator on the box: traffic, connections, tiers,
    /// prefixes, errors, fill. `q` quits.
    Top(top::TopArgs),
    /// Check a config file and exit (0 when valid).
    CheckConfig {
        /// The config file.
        #[arg(long, short, default_value = "/etc/edgeplane/edgeplane.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum BgpCommand {
    /// Sessions, state, uptime, prefixes received and accepted (asks the agent's `/status`).
    Status {
        /// The config file (its `agent.listen` is where the agent answers).
        #[arg(long, short, default_value = "/etc/edgeplane/edgeplane.toml")]
        config: PathBuf,
        /// The agent's status URL, instead of `agent.listen` from the config.
        #[arg(long)]
        agent: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Serve { config: path } => {
            let config = match ApplianceConfig::load(&path) {
                Ok(c) => c.dataplane,
                Err(e) => return fail(2, &e),
            };
            let path = std::path::absolute(&path).unwrap_or(path);
            match edgeplane_dataplane::runtime::serve(config, Some(path)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(1, &e),
            }
        }
        Command::Check { config, root } => {
            let host = if root == std::path::Path::new("/") {
                check::Host::real()
            } else {
                check::Host::at(root)
            };
            let config = match check::load_config(&config, &host) {
                Ok(c) => c,
                Err(e) => {
                    println!("✗ config         {e}");
                    return ExitCode::from(1);
                }
            };
            let items = check::run(&config, &host);
            for item in &items {
                println!("{item}");
            }
            if check::can_serve(&items) {
                println!("edgeplane: serving can start");
                ExitCode::SUCCESS
            } else {
                println!("edgeplane: fix the ✗ items before serving");
                ExitCode::from(1)
            }
        }
        Command::Prefixes { pin_dir, command } => match prefixes::run(&pin_dir, &command) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(1, &e),
        },
        Command::Agent { config } => {
            let config = match ApplianceConfig::load(&config) {
                Ok(c) => c,
                Err(e) => return fail(2, &e),
            };
            match run_agent(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(1, &e),
            }
        }
        Command::Cloud(args) => edgeplane_control::cloud::cli::main(args),
        Command::Bgp {
            command: BgpCommand::Status { config, agent },
        } => match bgp_status(&config, agent) {
            Ok(table) => {
                print!("{table}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(1, &e),
        },
        Command::Drain {
            config,
            admin,
            no_wait,
        } => match drain(&config, admin, no_wait) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(1, &e),
        },
        Command::Top(args) => match top::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(1, &e),
        },
        Command::CheckConfig { config } => match ApplianceConfig::load(&config) {
            Ok(_) => {
                println!("edgeplane: {} is valid", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(2, &e),
        },
    }
}

/// `edgeplane agent`: the data plane's side of the config, handed to the agent.
fn run_agent(config: ApplianceConfig) -> Result<(), String> {
    use edgeplane_api::TierKind;
    use edgeplane_control::agent::{Dataplane, TierSpec};
    let Some(agent) = config.agent else {
        return Err("the config has no [agent] section".into());
    };
    let config = config.dataplane;
    let tiers = config
        .tiers
        .iter()
        .map(|t| TierSpec {
            name: t.name.clone(),
            kind: match t.kind {
                edgeplane_dataplane::config::TierKind::Flash => TierKind::Flash,
                edgeplane_dataplane::config::TierKind::Storage => TierKind::Storage,
            },
            path: t.path.clone(),
        })
        .collect();
    // With XDP configured, the agent makes the pinned maps serve exactly its prefixes.
    let xdp: Option<edgeplane_control::agent::PrefixSink> = config.xdp.as_ref().map(|x| {
        let pin_dir = x.pin_dir.clone();
        Box::new(move |set: &[ipnet::IpNet]| {
            let mut want = Vec::with_capacity(set.len());
            for p in set {
                want.push(
                    p.to_string()
                        .parse::<edgeplane_xdp::Prefix>()
                        .map_err(|e| e.to_string())?,
                );
            }
            let r = edgeplane_xdp::sync_prefixes(&pin_dir, &want).map_err(|e| e.to_string())?;
            Ok((!r.added.is_empty() || !r.removed.is_empty()).then(|| {
                format!(
                    "{} served, {} added, {} removed",
                    want.len(),
                    r.added.len(),
                    r.removed.len()
                )
            }))
        }) as edgeplane_control::agent::PrefixSink
    });
    let dp = Dataplane {
        admin: config.admin.listen,
        tiers,
        keys_file: config
            .signing
            .enabled
            .then(|| config.signing.keys_file.clone()),
        prefixes_file: config.access.prefixes_file.clone(),
        xdp,
    };
    edgeplane_control::agent::run(agent, dp).map_err(|e| e.to_string())
}

/// `edgeplane bgp status`: the agent's BGP sessions as a table.
fn bgp_status(config: &std::path::Path, agent: Option<String>) -> Result<String, String> {
    let base = match agent {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => {
            let config = ApplianceConfig::load(config).map_err(|e| e.to_string())?;
            let agent = config
                .agent
                .ok_or("the config has no [agent] section (BGP runs in the agent)")?;
            format!("http://{}", agent.listen)
        }
    };
    let url = format!("{base}/status");
    let status: serde_json::Value = ureq::get(&url)
        .timeout(std::time::Duration::from_secs(5))
        .call()
        .map_err(|e| format!("asking the agent at {url}: {e} (is `edgeplane agent` running?)"))?
        .into_json()
        .map_err(|e| format!("{url}: {e}"))?;
    match status.get("bgp") {
        None | Some(serde_json::Value::Null) => {
            Ok("BGP is not configured in this agent ([agent.bgp]).\n".to_string())
        }
        Some(v) if v.get("error").is_some() => Err(format!("agent.bgp: {}", v["error"])),
        Some(v) => {
            let peers: Vec<edgeplane_bgp::PeerStatus> =
                serde_json::from_value(v.clone()).map_err(|e| format!("{url}: {e}"))?;
            Ok(edgeplane_bgp::render_status(&peers))
        }
    }
}

/// `edgeplane drain`: `POST /drain` on the admin listener, then wait for the process to go.
fn drain(config: &std::path::Path, admin: Option<String>, no_wait: bool) -> Result<(), String> {
    let (admin, grace_ms) = match admin {
        Some(a) => (a, None),
        None => {
            let c = ApplianceConfig::load(config)
                .map_err(|e| e.to_string())?
                .dataplane;
            (c.admin.listen.to_string(), Some(c.limits.shutdown_grace_ms))
        }
    };
    let url = format!("http://{admin}/drain");
    let answer = ureq::post(&url)
        .timeout(std::time::Duration::from_secs(5))
        .call()
        .map_err(|e| {
            format!("asking the data plane at {url}: {e} (is `edgeplane serve` running?)")
        })?
        .into_string()
        .map_err(|e| format!("{url}: {e}"))?;
    print!("{answer}");
    if no_wait {
        return Ok(());
    }
    // The admin listener answers until the process exits.
    let limit = std::time::Duration::from_millis(grace_ms.unwrap_or(10_000) + 30_000);
    let start = std::time::Instant::now();
    let addr: std::net::SocketAddr = admin
        .parse()
        .map_err(|e| format!("{admin}: not an address: {e}"))?;
    while start.elapsed() < limit {
        if std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(500))
            .is_err()
        {
            println!(
                "edgeplane: drained: the data plane at {admin} has exited ({:.1} s)",
                start.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Err(format!(
        "the data plane at {admin} is still running {} s after the drain began",
        limit.as_secs()
    ))
}

/// One line on stderr, no backtrace, and a non-zero exit code.
fn fail(code: u8, err: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("edgeplane: {err}");
    ExitCode::from(code)
}

fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("EDGEPLANE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
