//! The agent's start and orchestration: check the config, build the clients, resume the saved
//! manifest and keys, bind the status listener, then run the tasks (control, fill, prefixes,
//! progress, status, BGP) until SIGTERM or SIGINT.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::config::{AgentConfig, ConfigError, SecretError};
use super::dataplane::{AdminClient, Dataplane, TierSpec};
use super::fill::pass::{fill_loop, RateLimiter};
use super::fill::verify::verify_loop;
use super::origin::{Origin, OriginError};
use super::prefixes::{bgp_loop, prefix_loop};
use super::register::control_loop;
use super::state::{Agent, Shared};
use super::status::{progress_loop, serve_status};
use super::{keys, manifest, store};

/// Why the agent could not start, or stopped. Printed as one line for the operator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// `[agent]` has a value the agent cannot use.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The secret could not be read.
    #[error("{0}")]
    Secret(#[from] SecretError),
    /// The tokio runtime could not be built.
    #[error("agent: tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// `agent.state_dir` could not be created.
    #[error("agent.state_dir {}: {source}", path.display())]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP client could not be built.
    #[error("agent: HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    /// The origin's S3 client could not be built.
    #[error("{0}")]
    Origin(#[from] OriginError),
    /// A tier without `agent.tier_capacity` whose filesystem size could not be read.
    #[error("tier {tier} ({}): {source}", path.display())]
    TierSize {
        /// The tier's name.
        tier: String,
        /// Its directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `agent.tier_capacity` names a tier the data plane does not have.
    #[error("agent.tier_capacity.{0}: no tier of that name")]
    UnknownTier(String),
    /// `agent.listen` could not be bound.
    #[error("agent.listen {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The SIGTERM handler could not be installed.
    #[error("agent: SIGTERM handler: {0}")]
    Signal(#[source] std::io::Error),
    /// One of the agent's tasks returned, which none should.
    #[error("agent: a task ended")]
    TaskEnded,
    /// One of the agent's tasks panicked.
    #[error("agent: a task ended: {0}")]
    TaskFailed(#[source] tokio::task::JoinError),
}

/// Sets this thread's (and so every thread it starts later) I/O priority class to idle.
fn set_idle_io_priority() -> std::io::Result<()> {
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_IDLE: libc::c_long = 3;
    const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
    // SAFETY: ioprio_set takes three integers and touches no memory of ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0 as libc::c_long,
            IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Runs the agent until SIGTERM or SIGINT. Builds its own tokio runtime. Errors are one line
/// for the operator (the caller prints them and exits non-zero).
pub fn run(cfg: AgentConfig, dp: Dataplane) -> Result<(), AgentError> {
    cfg.validate()?;
    let secret = cfg.load_secret()?;
    if cfg.fill.idle_io {
        if let Err(e) = set_idle_io_priority() {
            tracing::warn!(
                "agent.fill.idle_io: ioprio_set failed ({e}); fill I/O runs at normal priority"
            );
        }
    }
    crate::s3::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("edgeplane-agent")
        .build()
        .map_err(AgentError::Runtime)?;
    rt.block_on(async move { run_async(cfg, secret, dp).await })
}

/// Bytes the fill may use per tier: `agent.tier_capacity`, else 95% of the filesystem
/// (`filesystem_bytes`); `agent.tier_capacity` may name only tiers the data plane has.
fn tier_capacities(
    tiers: &[TierSpec],
    configured: &BTreeMap<String, u64>,
    filesystem_bytes: impl Fn(&std::path::Path) -> std::io::Result<u64>,
) -> Result<BTreeMap<String, u64>, AgentError> {
    let mut capacity = BTreeMap::new();
    for t in tiers {
        let cap = match configured.get(&t.name) {
            Some(c) => *c,
            None => filesystem_bytes(&t.path)
                .map(|b| b / 100 * 95)
                .map_err(|source| AgentError::TierSize {
                    tier: t.name.clone(),
                    path: t.path.clone(),
                    source,
                })?,
        };
        capacity.insert(t.name.clone(), cap);
    }
    if let Some(name) = configured
        .keys()
        .find(|name| !tiers.iter().any(|t| &t.name == *name))
    {
        return Err(AgentError::UnknownTier(name.clone()));
    }
    Ok(capacity)
}

async fn run_async(cfg: AgentConfig, secret: String, dp: Dataplane) -> Result<(), AgentError> {
    std::fs::create_dir_all(&cfg.state_dir).map_err(|source| AgentError::StateDir {
        path: cfg.state_dir.clone(),
        source,
    })?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(AgentError::HttpClient)?;
    // Streams from peers can be long; they get their own client without a total timeout.
    let peer_http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(Duration::from_secs(30))
        .build()
        .map_err(AgentError::HttpClient)?;
    let origin = Origin::new(&cfg.origin)?;
    let capacity = tier_capacities(&dp.tiers, &cfg.tier_capacity, store::filesystem_bytes)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| AgentError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let status_addr = listener.local_addr().map_err(|source| AgentError::Listen {
        addr: cfg.listen,
        source,
    })?;

    let mut shared = Shared {
        breaker: "closed",
        served: cfg.prefixes.iter().map(|p| p.trunc()).collect(),
        ..Shared::default()
    };
    // Resume: the last manifest and keys survive restarts.
    if let Some(m) = manifest::load_saved(&cfg.state_dir) {
        shared.fill.generation = m.generation;
        shared.manifest = Some(m);
    }
    if let Some(k) = dp.keys_file.as_deref().and_then(keys::load_saved) {
        shared.keys = k;
    }
    let rate = RateLimiter::new(cfg.fill.rate_mbps * 1_000_000 / 8);
    let agent = Arc::new(Agent {
        admin: AdminClient::new(http.clone(), dp.admin),
        secret,
        http,
        peer_http,
        origin,
        shared: Mutex::new(shared),
        prefixes_changed: watch::channel(()).0,
        manifest_changed: watch::channel(()).0,
        rate,
        capacity,
        cfg,
        dp,
    });
    eprintln!(
        "edgeplane-agent: ready status={status_addr} id={}",
        agent.cfg.id
    );

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(serve_status(agent.clone(), listener));
    tasks.spawn(control_loop(agent.clone()));
    tasks.spawn(fill_loop(agent.clone()));
    tasks.spawn(verify_loop(agent.clone()));
    tasks.spawn(prefix_loop(agent.clone()));
    tasks.spawn(progress_loop(agent.clone()));
    if let Some(bgp) = agent.cfg.bgp.clone() {
        tasks.spawn(bgp_loop(agent.clone(), bgp));
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(AgentError::Signal)?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        Some(r) = tasks.join_next() => {
            return Err(match r {
                Ok(()) => AgentError::TaskEnded,
                Err(e) => AgentError::TaskFailed(e),
            });
        }
    }
    tracing::info!("agent: stopping");
    tasks.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeplane_api::TierKind;

    #[test]
    fn capacities_default_to_95_percent_and_name_only_real_tiers() {
        let tiers: Vec<TierSpec> = ["flash", "hdd"]
            .into_iter()
            .map(|n| TierSpec {
                name: n.into(),
                kind: TierKind::Storage,
                path: format!("/srv/{n}").into(),
            })
            .collect();
        let fs = |p: &std::path::Path| {
            if p.ends_with("hdd") {
                Ok(2000)
            } else {
                Err(std::io::Error::from(std::io::ErrorKind::NotFound))
            }
        };
        let configured = BTreeMap::from([("flash".to_string(), 500)]);
        let c = tier_capacities(&tiers, &configured, fs).unwrap();
        assert_eq!(
            c,
            BTreeMap::from([("flash".into(), 500), ("hdd".into(), 1900)])
        );

        let e = tier_capacities(&tiers, &BTreeMap::new(), fs).unwrap_err();
        assert_eq!(e.to_string(), "tier flash (/srv/flash): entity not found");
        assert!(std::error::Error::source(&e).is_some());

        let configured = BTreeMap::from([
            ("flash".to_string(), 1),
            ("hdd".to_string(), 1),
            ("ssd".to_string(), 1),
        ]);
        let e = tier_capacities(&tiers, &configured, fs).unwrap_err();
        assert_eq!(
            e.to_string(),
            "agent.tier_capacity.ssd: no tier of that name"
        );
    }
}
