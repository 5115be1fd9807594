//! Process orchestration for `edgeplane serve`: start one pinned glommio executor per core,
//! wait until every one is listening, start the admin listener, then turn signals into actions
//! (SIGHUP: reload; SIGTERM/SIGINT: drain and exit 0) until every executor has finished.
//!
//! Any executor that fails to start or dies makes the process exit non-zero: a half-started
//! appliance must never look healthy.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement, PoolPlacement};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use super::executor::{self, Event};
use super::shared::{ConnLimits, Https, Rescan, Shared};
use super::{ktls, sys};
use crate::catalog::SharedCatalog;
use crate::config::Config;
use crate::metrics::{Metrics, TlsMode};

/// Why the server could not start, or stopped abnormally. Each renders as one line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// A listener could not be opened.
    #[error("{key}: cannot listen on {addr}: {source}")]
    Listen {
        /// Config key of the address.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not enough lockable memory for the executors' io_uring buffers.
    #[error(
        "RLIMIT_MEMLOCK is {limit_kib} KiB but {cores} executors need at least {need_kib} KiB \
         ({per_core_kib} KiB each): raise it (systemd: LimitMEMLOCK=) or lower `cores`"
    )]
    Memlock {
        /// Current soft limit.
        limit_kib: u64,
        /// Configured executors.
        cores: usize,
        /// Needed in total.
        need_kib: u64,
        /// Needed per executor.
        per_core_kib: u64,
    },
    /// An executor could not be created or could not listen.
    #[error("executor {core} (cpu {cpu}) failed to start: {reason}")]
    ExecutorStart {
        /// Executor index.
        core: usize,
        /// CPU it was to be pinned to.
        cpu: usize,
        /// What went wrong.
        reason: String,
    },
    /// An executor stopped while serving.
    #[error("executor {core} stopped unexpectedly: {reason}")]
    ExecutorDied {
        /// Executor index.
        core: usize,
        /// What went wrong.
        reason: String,
    },
    /// Pull-through could not start (`[upstream]`: its tier, its threads).
    #[error("upstream: cannot start pull-through: {0}")]
    Pull(String),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// A helper thread could not be started.
    #[error("cannot start thread {0}: {1}")]
    Thread(&'static str, std::io::Error),
    /// The tier directories cannot be watched for changes (no inotify instance: see
    /// `fs.inotify.max_user_instances`), or the watch thread could not start.
    #[error("cannot watch the tier directories for changes (inotify; see the sysctl fs.inotify.max_user_instances): {0}")]
    Watch(std::io::Error),
    /// The HTTPS certificates could not be loaded (they changed since the config was checked).
    #[error("{0}")]
    Certificates(crate::config::ConfigError),
    /// rustls refused the TLS configuration.
    #[error("cannot set up TLS: {0}")]
    Tls(rustls::Error),
    /// `[process] user`/`group` could not be resolved or switched to.
    #[error("{0}")]
    Process(String),
    /// NUMA placement is impossible as configured (a node that does not exist, too few CPUs).
    #[error("config error: {0}")]
    Placement(crate::placement::PlacementError),
    /// The XDP filter could not start and `xdp.required = true`.
    #[error("xdp: {0} (xdp.required = true)")]
    Xdp(edgeplane_xdp::XdpError),
}

/// Locked memory each executor needs besides its io_uring buffer (rings, bookkeeping).
const MEMLOCK_OVERHEAD: u64 = 256 * 1024;
/// Smallest io_uring buffer glommio accepts.
const MIN_IO_MEMORY: u64 = 64 * 1024;
/// Largest io_uring buffer we ask for: the data plane does no O_DIRECT I/O.
const MAX_IO_MEMORY: u64 = 2 * 1024 * 1024;

/// How much io_uring memory each executor registers, given the lockable-memory limit.
pub fn io_memory_per_core(config: &Config, memlock: u64) -> Result<usize, ServeError> {
    let cores = config.cores as u64;
    let per_core_min = MIN_IO_MEMORY + MEMLOCK_OVERHEAD;
    let wanted = if config.io.io_memory_kib > 0 {
        (config.io.io_memory_kib as u64 * 1024).max(MIN_IO_MEMORY)
    } else {
        let fit = (memlock / cores).saturating_sub(MEMLOCK_OVERHEAD);
        fit.clamp(MIN_IO_MEMORY, MAX_IO_MEMORY)
    };
    let need = (wanted + MEMLOCK_OVERHEAD).max(per_core_min) * cores;
    if memlock < need {
        return Err(ServeError::Memlock {
            limit_kib: memlock / 1024,
            cores: config.cores,
            need_kib: need / 1024,
            per_core_kib: need / cores / 1024,
        });
    }
    Ok(wanted as usize)
}

/// Runs the data plane until SIGTERM/SIGINT (or `POST /drain`). Returns when every executor
/// has drained. `config_path`: the file SIGHUP and `POST /reload` re-read.
pub fn serve(config: Config, config_path: Option<std::path::PathBuf>) -> Result<(), ServeError> {
    let config = Arc::new(config);
    let drop_to = super::privileges::resolve(&config.process)
        .map_err(|e| ServeError::Process(e.to_string()))?;
    let io_memory = io_memory_per_core(&config, sys::memlock_limit())?;
    // Before the first big allocation: buffers of 1 MiB and more get their own mappings,
    // returned to the kernel when freed (a rescan's RSS: see the function).
    crate::catalog::map_big_allocations();
    // Watches first, then the scan: a change during the scan is in the watch's queue.
    let watcher = super::watch::Watcher::new(&config.tiers).map_err(ServeError::Watch)?;
    let catalog = Arc::new(SharedCatalog::new(config.tiers.clone()));
    {
        let cat = catalog.load();
        for (tier, state) in cat.tiers.iter().zip(&cat.tier_states) {
            tracing::info!(tier = %tier.name, kind = tier.kind.as_str(), objects = state.objects, "tier scanned");
        }
    }
    // The byte counts follow at low priority; serving needs no sizes (they come from `fstat`).
    catalog
        .count_sizes_in_background()
        .map_err(|e| ServeError::Thread("edgeplane-sizes", e))?;
    // Room for tiers a reload adds.
    let tier_capacity = config.tiers.len().max(16);
    let metrics = Arc::new(Metrics::new(config.cores, tier_capacity));
    let https = match &config.https {
        Some(https) => {
            let resolver = Arc::new(
                crate::tls::CertResolver::new(https.clone()).map_err(ServeError::Certificates)?,
            );
            let tls = crate::tls::server_config(resolver.clone()).map_err(ServeError::Tls)?;
            let mode = detect_tls_mode(https.ktls);
            metrics.set_tls_mode(mode);
            Some(Https {
                config: Arc::new(tls),
                resolver,
                kernel: mode == TlsMode::Kernel,
            })
        }
        None => None,
    };

    // Port 0: reserve a concrete port every executor can share through SO_REUSEPORT. The
    // reserving socket never listens, so it never receives connections.
    let (http_addr, reservation) = reserve_port(config.http.listen, "http.listen")?;
    let (https_addr, https_reservation) = match &config.https {
        Some(https) => {
            let (addr, r) = reserve_port(https.listen, "https.listen")?;
            (Some(addr), r)
        }
        None => (None, None),
    };
    set_readiness(config.io.readiness);
    let placement = place(&config)?;
    let cpus = placement.executor_cpus.clone();
    // XDP before the executors: the filter judges the port they are about to listen on.
    let xdp = match &config.xdp {
        None => None,
        Some(x) => Some(Arc::new(start_xdp(x, http_addr.port(), &cpus)?)),
    };
    // Detaches on every way out of this function, the error paths included.
    let _xdp_guard = XdpGuard(xdp.clone());
    let pull = match &config.upstream {
        None => None,
        Some(u) => Some(
            crate::pull::Puller::start(u, &config.tiers, catalog.clone())
                .map_err(|e| ServeError::Pull(e.to_string()))?,
        ),
    };
    let shared = Arc::new(Shared {
        config: arc_swap::ArcSwap::new(config.clone()),
        config_path,
        tier_capacity,
        catalog: catalog.clone(),
        metrics: metrics.clone(),
        limits: Arc::new(ConnLimits::new(
            config.limits.max_connections,
            config.limits.max_connections_per_client,
        )),
        stop: Default::default(),
        https,
        xdp,
        access: Arc::new(crate::access::Access::new(&config)),
        tier_watch: Default::default(),
        reload_lock: Default::default(),
        placement,
        pull,
    });
    super::tiers::start(shared.clone()).map_err(ServeError::Signals)?;
    super::watch::start(shared.clone(), watcher).map_err(ServeError::Watch)?;

    let admin =
        std::net::TcpListener::bind(config.admin.listen).map_err(|source| ServeError::Listen {
            key: "admin.listen",
            addr: config.admin.listen,
            source,
        })?;
    let admin_addr = admin.local_addr().unwrap_or(config.admin.listen);

    let (tx, rx) = mpsc::channel::<Event>();
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(ServeError::Signals)?;
    let signal_tx = tx.clone();
    std::thread::Builder::new()
        .name("edgeplane-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if signal_tx.send(Event::Signal(sig)).is_err() {
                    break;
                }
            }
        })
        .map_err(ServeError::Signals)?;

    for (index, &cpu) in cpus.iter().enumerate() {
        let shared = shared.clone();
        let ready = tx.clone();
        let builder = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("edgeplane-{index}"))
            .io_memory(io_memory)
            .preempt_timer(Duration::from_millis(10))
            .blocking_thread_pool_placement(PoolPlacement::Unbound(config.io.cold_read_threads));
        let handle = builder
            .spawn(move || executor::run(index, shared, http_addr, https_addr, ready))
            .map_err(|e| ServeError::ExecutorStart {
                core: index,
                cpu,
                reason: executor_error_hint(&e.to_string()),
            })?;
        let exit_tx = tx.clone();
        std::thread::Builder::new()
            .name(format!("edgeplane-join-{index}"))
            .spawn(move || {
                let result = match handle.join() {
                    Ok(r) => r,
                    Err(e) => Err(executor_error_hint(&e.to_string())),
                };
                let _ = exit_tx.send(Event::Exited(index, result));
            })
            .map_err(ServeError::Signals)?;
    }
    drop(tx);

    let mut ready = 0;
    let mut exited = 0;
    let mut stopping = false;
    let mut reservation = Some((reservation, https_reservation));
    // Set when this process turned the XDP drain switch on, so it turns it off at exit.
    let mut xdp_drain_set = false;
    while let Ok(event) = rx.recv() {
        match event {
            Event::Ready => {
                ready += 1;
                if ready == config.cores {
                    reservation.take();
                    super::admin::start(
                        admin.try_clone().map_err(|source| ServeError::Listen {
                            key: "admin.listen",
                            addr: admin_addr,
                            source,
                        })?,
                        shared.clone(),
                    )
                    .map_err(ServeError::Signals)?;
                    if let Some(target) = drop_to {
                        if let Err(e) = drop_privileges(&config, target, shared.xdp.is_some()) {
                            shared.stop.store(true, Ordering::Relaxed);
                            return Err(e);
                        }
                    }
                    let https = https_addr
                        .map(|a| format!(" https={a}"))
                        .unwrap_or_default();
                    eprintln!(
                        "edgeplane: ready http={http_addr} admin={admin_addr} cores={}{https}",
                        config.cores
                    );
                }
            }
            Event::Failed(core, reason) => {
                shared.stop.store(true, Ordering::Relaxed);
                return Err(ServeError::ExecutorStart {
                    core,
                    cpu: cpus[core],
                    reason,
                });
            }
            Event::Exited(core, result) => {
                if !stopping {
                    shared.stop.store(true, Ordering::Relaxed);
                    let reason = result
                        .err()
                        .unwrap_or_else(|| "exited without being asked to".into());
                    if ready < config.cores {
                        return Err(ServeError::ExecutorStart {
                            core,
                            cpu: cpus[core],
                            reason,
                        });
                    }
                    return Err(ServeError::ExecutorDied { core, reason });
                }
                exited += 1;
                if exited == config.cores {
                    break;
                }
            }
            Event::Signal(SIGHUP) => {
                shared.reload(Rescan::Always);
            }
            Event::Signal(_) => {
                if !stopping {
                    tracing::info!(
                        grace_ms = shared.config.load().limits.shutdown_grace_ms,
                        "shutting down: no new connections, finishing in-flight responses"
                    );
                    stopping = true;
                    shared.metrics.set_draining();
                    shared.stop.store(true, Ordering::Relaxed);
                    if let Some(x) = &shared.xdp {
                        match x.set_drain(true) {
                            Ok(was_on) => xdp_drain_set = !was_on,
                            Err(e) => tracing::warn!("xdp: cannot set the drain switch: {e}"),
                        }
                    }
                }
            }
        }
    }
    if xdp_drain_set {
        if let Some(x) = &shared.xdp {
            // The pinned switch outlives this process: leave it as it was found.
            if let Err(e) = x.set_drain(false) {
                tracing::warn!("xdp: cannot clear the drain switch: {e}");
            }
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Reads the NUMA topology and places the executors (their CPUs are also the XDP CPUMAP
/// targets) and each tier's cold reads; logs the outcome and any crossing. A host whose
/// sysfs cannot be read is treated as one node (the executors get CPUs `0..cores`).
///
/// Each executor's io_uring rings and registered buffer are allocated by its own thread after
/// glommio pins it, so the kernel's first-touch policy puts them on the executor's node.
fn place(config: &Config) -> Result<crate::placement::Plan, ServeError> {
    use crate::topology::Topology;
    let root = std::path::Path::new("/");
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let topo = Topology::read(root).unwrap_or_else(|| Topology::single(online));
    let (nics, tiers) = crate::placement::locate(config, root);
    let plan =
        crate::placement::plan(config, &topo, &nics, &tiers).map_err(ServeError::Placement)?;
    tracing::info!(topology = %topo.describe(), "numa");
    for line in plan.describe(&topo) {
        tracing::info!("numa: {line}");
    }
    for crossing in &plan.crossings {
        tracing::warn!(
            "numa: {crossing}: its bytes cross the interconnect (see `edgeplane check`)"
        );
    }
    Ok(plan)
}

/// `[process] user`: hand the XDP pins to the user, then switch to it.
fn drop_privileges(
    config: &Config,
    target: super::privileges::Target,
    xdp: bool,
) -> Result<(), ServeError> {
    if let Some(x) = &config.xdp {
        if x.pin_dir.is_dir() {
            super::privileges::chown_tree(&x.pin_dir, target).map_err(|e| {
                ServeError::Process(format!(
                    "xdp.pin_dir: cannot give {} to process.user: {e}",
                    x.pin_dir.display()
                ))
            })?;
        }
    }
    super::privileges::drop_to(target, xdp)
        .map_err(|e| ServeError::Process(format!("process.user: cannot switch user: {e}")))
}

/// Starts the XDP filter; without `xdp.required`, a failure is one error line and serving goes
/// on without it.
fn start_xdp(
    x: &crate::config::XdpConfig,
    http_port: u16,
    cpus: &[usize],
) -> Result<edgeplane_xdp::XdpService, ServeError> {
    match edgeplane_xdp::XdpService::start(x, http_port, cpus) {
        Ok(s) => Ok(s),
        Err(e) if x.required => Err(ServeError::Xdp(e)),
        Err(e) => {
            tracing::error!("xdp: {e}; serving without XDP (xdp.required = false)");
            Ok(edgeplane_xdp::XdpService::unavailable(&e))
        }
    }
}

/// Detaches the XDP filter when `serve` returns.
struct XdpGuard(Option<Arc<edgeplane_xdp::XdpService>>);

impl Drop for XdpGuard {
    fn drop(&mut self) {
        if let Some(x) = &self.0 {
            x.shutdown();
        }
    }
}

fn executor_error_hint(reason: &str) -> String {
    let lower = reason.to_ascii_lowercase();
    if lower.contains("memory") || lower.contains("enomem") || lower.contains("eperm") {
        format!(
            "{reason} (io_uring needs locked memory: check RLIMIT_MEMLOCK and io.io_memory_kib)"
        )
    } else {
        reason.to_string()
    }
}

/// How HTTPS will be served, decided once at start, and the one log line that says so.
///
/// Kernel TLS needs the `tls` module (`TCP_ULP "tls"`); where it is missing, or `https.ktls`
/// is `off`, rustls encrypts in user space.
fn detect_tls_mode(setting: crate::config::KtlsSetting) -> TlsMode {
    if setting == crate::config::KtlsSetting::Off {
        tracing::info!(
            "kernel TLS off (https.ktls = \"off\"): serving HTTPS with userspace rustls"
        );
        return TlsMode::Userspace;
    }
    match ktls::probe() {
        Ok(()) => {
            tracing::info!(
                "kernel TLS available (TCP_ULP tls): HTTPS connections are handed to the kernel \
                 after the handshake and served with sendfile"
            );
            TlsMode::Kernel
        }
        Err(e) => {
            tracing::info!(
                "kernel TLS unavailable (TCP_ULP tls: {e}): serving HTTPS with userspace rustls"
            );
            TlsMode::Userspace
        }
    }
}

/// How the serving sockets wait for request bytes (`io.readiness`), decided once at start
/// for every executor, and the one log line that says so.
fn set_readiness(setting: crate::config::ReadinessSetting) {
    use crate::config::ReadinessSetting as S;
    use glommio::net::Readiness;
    let multishot = glommio::net::multishot_poll_supported();
    let mode = match setting {
        S::Auto | S::Multishot if multishot => Readiness::Multishot,
        S::Auto => {
            tracing::info!(
                "socket readiness: this kernel has no multishot io_uring poll (Linux 5.13+):                  read first, then a one-shot poll per wait (io.readiness = \"auto\")"
            );
            Readiness::ReadFirst
        }
        S::Multishot => {
            tracing::warn!(
                "socket readiness: io.readiness = \"multishot\" but this kernel has no \
                 multishot io_uring poll (Linux 5.13+): read first, then a one-shot poll per wait"
            );
            Readiness::ReadFirst
        }
        S::ReadFirst => Readiness::ReadFirst,
        S::Legacy => Readiness::Eager,
    };
    let how = match mode {
        Readiness::Multishot => "read first, one multishot poll per connection",
        Readiness::ReadFirst => "read first, a one-shot poll per wait",
        Readiness::Eager => "a one-shot poll after every read (glommio's own path)",
    };
    tracing::info!(setting = setting.as_str(), "socket readiness: {how}");
    glommio::net::set_stream_readiness(mode);
}

fn reserve_port(
    addr: SocketAddr,
    key: &'static str,
) -> Result<(SocketAddr, Option<socket2::Socket>), ServeError> {
    let err = |source| ServeError::Listen { key, addr, source };
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None).map_err(err)?;
    sock.set_reuse_port(true).map_err(err)?;
    sock.bind(&addr.into()).map_err(err)?;
    if addr.port() != 0 {
        // A fixed port: the probe proved it is free; executors bind it themselves.
        return Ok((addr, None));
    }
    let bound = sock
        .local_addr()
        .map_err(err)?
        .as_socket()
        .ok_or_else(|| err(std::io::Error::other("not an inet address")))?;
    Ok((bound, Some(sock)))
}
