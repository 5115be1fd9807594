//! The agent's tasks: control (register, health, keys, manifest), fill, prefixes, status.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edgeplane_signing::{client_prefix, sign, KeySet};
use futures::StreamExt;
use ipnet::IpNet;
use tokio::sync::watch;

use super::config::AgentConfig;
use super::dataplane::{write_atomic, AdminClient, Dataplane};
use super::fill::{self, Backoff, Breaker, BreakerState, Window};
use super::origin::{local_addr_towards, peer_get, ByteStream, Origin};
use super::store::{self, Incoming, InstallError};
use edgeplane_api::{
    FillManifest, FillStatus, HealthAck, HealthReport, ManifestEntry, Registration,
    RegistrationAck, TierCapacity, TierHealth,
};

/// Everything the tasks share; small, behind one mutex, never held across an await.
#[derive(Default)]
struct Shared {
    keys: KeySet,
    manifest: Option<FillManifest>,
    /// Newest generation the control service announced.
    announced_generation: u64,
    fill: FillStatus,
    window_open: bool,
    breaker: &'static str,
    downloaded_bytes: BTreeMap<&'static str, u64>,
    downloaded_objects: BTreeMap<&'static str, u64>,
    failures: BTreeMap<&'static str, u64>,
    evicted: u64,
    rate_bps: f64,
    served: BTreeSet<IpNet>,
    bgp: BTreeSet<IpNet>,
    /// Prefixes the control service assigns.
    assigned: BTreeSet<IpNet>,
    health_ok: u64,
    health_err: u64,
    last_error: Option<String>,
    bgp_status: Option<serde_json::Value>,
}

struct Agent {
    cfg: AgentConfig,
    secret: String,
    dp: Dataplane,
    http: reqwest::Client,
    admin: AdminClient,
    origin: Origin,
    shared: Mutex<Shared>,
    /// Wakes the prefix task.
    prefixes_changed: watch::Sender<()>,
    /// Wakes the fill task (new manifest).
    manifest_changed: watch::Sender<()>,
    rate: RateLimiter,
    capacity: BTreeMap<String, u64>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
pub fn run(cfg: AgentConfig, dp: Dataplane) -> Result<(), String> {
    cfg.validate().map_err(|(k, p)| format!("{k}: {p}"))?;
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
        .map_err(|e| format!("agent: tokio runtime: {e}"))?;
    rt.block_on(async move { run_async(cfg, secret, dp).await })
}

async fn run_async(cfg: AgentConfig, secret: String, dp: Dataplane) -> Result<(), String> {
    std::fs::create_dir_all(&cfg.state_dir)
        .map_err(|e| format!("agent.state_dir {}: {e}", cfg.state_dir.display()))?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| format!("agent: HTTP client: {e}"))?;
    // Streams from peers can be long; they get their own client without a total timeout.
    let origin = Origin::new(&cfg.origin)?;
    let mut capacity = BTreeMap::new();
    for t in &dp.tiers {
        let cap = match cfg.tier_capacity.get(&t.name) {
            Some(c) => *c,
            None => store::filesystem_bytes(&t.path)
                .map(|b| b / 100 * 95)
                .map_err(|e| format!("tier {} ({}): {e}", t.name, t.path.display()))?,
        };
        capacity.insert(t.name.clone(), cap);
    }
    for name in cfg.tier_capacity.keys() {
        if !dp.tiers.iter().any(|t| &t.name == name) {
            return Err(format!("agent.tier_capacity.{name}: no tier of that name"));
        }
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("agent.listen {}: {e}", cfg.listen))?;
    let status_addr = listener.local_addr().map_err(|e| e.to_string())?;

    let mut shared = Shared {
        breaker: "closed",
        served: cfg.prefixes.iter().map(|p| p.trunc()).collect(),
        ..Shared::default()
    };
    // Resume: the last manifest and keys survive restarts.
    if let Ok(text) = std::fs::read(cfg.state_dir.join("manifest.json")) {
        if let Ok(m) = serde_json::from_slice::<FillManifest>(&text) {
            shared.fill.generation = m.generation;
            shared.manifest = Some(m);
        }
    }
    if let Some(kf) = &dp.keys_file {
        if let Ok(text) = std::fs::read(kf) {
            if let Ok(k) = serde_json::from_slice::<KeySet>(&text) {
                shared.keys = k;
            }
        }
    }
    let rate = RateLimiter::new(cfg.fill.rate_mbps * 1_000_000 / 8);
    let agent = Arc::new(Agent {
        admin: AdminClient::new(http.clone(), dp.admin),
        secret,
        http,
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
    tasks.spawn(prefix_loop(agent.clone()));
    tasks.spawn(progress_loop(agent.clone()));
    if let Some(bgp) = agent.cfg.bgp.clone() {
        tasks.spawn(bgp_loop(agent.clone(), bgp));
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        Some(r) = tasks.join_next() => {
            return Err(format!("agent: a task ended: {r:?}"));
        }
    }
    tracing::info!("agent: stopping");
    tasks.shutdown().await;
    Ok(())
}

impl Agent {
    /// Served = configured ∪ assigned by the control service ∪ BGP; wakes the prefix task
    /// when that changes.
    fn set_prefix_sources(&self, assigned: Option<BTreeSet<IpNet>>, bgp: Option<BTreeSet<IpNet>>) {
        let changed = {
            let mut s = self.lock();
            if let Some(a) = assigned {
                s.assigned = a;
            }
            if let Some(b) = bgp {
                s.bgp = b;
            }
            let mut all: BTreeSet<IpNet> = self.cfg.prefixes.iter().map(|p| p.trunc()).collect();
            all.extend(s.assigned.iter().copied());
            all.extend(s.bgp.iter().copied());
            let changed = all != s.served;
            s.served = all;
            changed
        };
        if changed {
            self.prefixes_changed.send_replace(());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}/v1/appliances/{}/{path}",
            self.cfg.control_url.trim_end_matches('/'),
            self.cfg.id
        )
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<T, String> {
        let r = req
            .bearer_auth(&self.secret)
            .send()
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        let status = r.status();
        if !status.is_success() {
            let body = r.text().await.unwrap_or_default();
            return Err(format!("{what}: HTTP {status}: {}", body.trim()));
        }
        r.json().await.map_err(|e| format!("{what}: {e}"))
    }

    fn registration(&self) -> Registration {
        Registration {
            role: self.cfg.role,
            site: self.cfg.site.clone(),
            urls: self.cfg.urls.clone(),
            prefixes: self.lock().served.iter().copied().collect(),
            tiers: self
                .dp
                .tiers
                .iter()
                .map(|t| TierCapacity {
                    name: t.name.clone(),
                    kind: t.kind,
                    capacity_bytes: self.capacity[&t.name],
                })
                .collect(),
            max_bps: self.cfg.max_bps,
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// Installs new signing keys: keys file, then a data plane reload.
    async fn set_keys(&self, keys: KeySet) {
        if self.lock().keys == keys {
            return;
        }
        if let Some(path) = &self.dp.keys_file {
            let json = serde_json::to_vec_pretty(&keys).expect("keys serialize");
            if let Err(e) = write_atomic(path, &json) {
                tracing::error!("agent: writing signing keys to {}: {e}", path.display());
                return;
            }
            if let Err(e) = self.admin.reload().await {
                tracing::warn!("agent: {e}");
            }
        }
        let ids: Vec<String> = keys.keys.iter().map(|k| k.id.clone()).collect();
        tracing::info!("agent: signing keys now {ids:?}");
        self.lock().keys = keys;
    }

    async fn fetch_manifest(&self) -> Result<(), String> {
        let m: FillManifest = self
            .call(self.http.get(self.url("manifest")), "manifest")
            .await?;
        let json = serde_json::to_vec(&m).expect("manifest serialize");
        write_atomic(&self.cfg.state_dir.join("manifest.json"), &json)
            .map_err(|e| format!("saving manifest: {e}"))?;
        tracing::info!(
            "agent: manifest generation {} with {} objects",
            m.generation,
            m.objects.len()
        );
        {
            let mut s = self.lock();
            s.fill.generation = m.generation;
            s.manifest = Some(m);
        }
        self.manifest_changed.send_replace(());
        Ok(())
    }
}

async fn control_loop(agent: Arc<Agent>) {
    let backoff = Backoff {
        base: Duration::from_millis(500),
        max: Duration::from_secs(30),
    };
    let mut interval = Duration::from_secs(agent.cfg.health_interval_secs.unwrap_or(5));
    let mut failures = 0;
    // Register (again after any failure: the control service may have restarted).
    let mut registered = false;
    let mut last_bytes: Option<(f64, Instant)> = None;
    let mut cpu = CpuSampler::default();
    let mut last_prefixes = agent.lock().served.clone();
    let mut prefixes_rx = agent.prefixes_changed.subscribe();
    loop {
        if !registered {
            let reg = agent.registration();
            let r: Result<RegistrationAck, String> = agent
                .call(
                    agent.http.post(agent.url("register")).json(&reg),
                    "register",
                )
                .await;
            match r {
                Ok(ack) => {
                    registered = true;
                    failures = 0;
                    if agent.cfg.health_interval_secs.is_none() {
                        interval = Duration::from_secs(ack.health_interval_secs.max(1));
                    }
                    tracing::info!("agent: registered as {}", agent.cfg.id);
                    agent.set_prefix_sources(Some(ack.prefixes.into_iter().collect()), None);
                    agent
                        .set_keys(KeySet {
                            keys: ack.signing_keys,
                        })
                        .await;
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!("agent: {e}");
                    agent.lock().last_error = Some(e);
                    tokio::time::sleep(backoff.delay(failures)).await;
                    continue;
                }
            }
        }
        let report = health_report(&agent, &mut last_bytes, &mut cpu).await;
        let r: Result<HealthAck, String> = agent
            .call(agent.http.post(agent.url("health")).json(&report), "health")
            .await;
        match r {
            Ok(ack) => {
                agent.lock().health_ok += 1;
                agent.set_prefix_sources(Some(ack.prefixes.into_iter().collect()), None);
                agent
                    .set_keys(KeySet {
                        keys: ack.signing_keys,
                    })
                    .await;
                let have = agent.lock().manifest.as_ref().map(|m| m.generation);
                agent.lock().announced_generation = ack.manifest_generation;
                if have != Some(ack.manifest_generation) {
                    if let Err(e) = agent.fetch_manifest().await {
                        tracing::warn!("agent: {e}");
                    }
                }
            }
            Err(e) => {
                tracing::warn!("agent: {e}");
                let mut s = agent.lock();
                s.health_err += 1;
                s.last_error = Some(e);
                registered = false;
            }
        }
        // Sleep an interval, or less when the served prefixes change (re-register them).
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = prefixes_rx.changed() => {}
        }
        let now = agent.lock().served.clone();
        if now != last_prefixes {
            last_prefixes = now;
            registered = false;
        }
    }
}

async fn health_report(
    agent: &Agent,
    last_bytes: &mut Option<(f64, Instant)>,
    cpu: &mut CpuSampler,
) -> HealthReport {
    let scrape = agent.admin.scrape().await;
    let catalog = agent.admin.catalog().await;
    let mut report = HealthReport {
        healthy: true,
        version: env!("CARGO_PKG_VERSION").to_string(),
        cpu: cpu.sample(),
        ..HealthReport::default()
    };
    match &scrape {
        Ok(s) => {
            let now = Instant::now();
            if let Some((b, t)) = *last_bytes {
                let secs = now.duration_since(t).as_secs_f64().max(0.001);
                report.serving_bps = ((s.response_bytes - b).max(0.0) * 8.0 / secs) as u64;
            }
            *last_bytes = Some((s.response_bytes, now));
            report.connections = s.connections.max(0.0) as u64;
            report.tls_mode = s.tls_mode.clone().unwrap_or_else(|| "off".into());
        }
        Err(e) => {
            report.healthy = false;
            report.reason = Some(e.clone());
        }
    }
    match &catalog {
        Ok(c) => {
            let mut ids = BTreeSet::new();
            for spec in &agent.dp.tiers {
                let t = c.tiers.iter().find(|t| t.name == spec.name);
                let up = t.is_some_and(|t| t.up);
                if up {
                    ids.extend(t.into_iter().flat_map(|t| t.ids.iter().cloned()));
                }
                report.tiers.push(TierHealth {
                    name: spec.name.clone(),
                    up,
                    capacity_bytes: agent.capacity[&spec.name],
                    used_bytes: t.map_or(0, |t| t.bytes),
                    objects: t.map_or(0, |t| t.objects),
                    disk_errors: scrape
                        .as_ref()
                        .ok()
                        .and_then(|s| s.disk_errors.get(&spec.name))
                        .copied()
                        .unwrap_or(0.0) as u64,
                });
            }
            if !report.tiers.iter().any(|t| t.up) {
                report.healthy = false;
                report.reason = Some("no tier is up".into());
            }
            report.objects = ids.into_iter().collect();
        }
        Err(e) => {
            report.healthy = false;
            report.reason.get_or_insert_with(|| e.clone());
        }
    }
    let s = agent.lock();
    report.fill = s.fill.clone();
    report.prefixes = s.served.iter().copied().collect();
    report
}

/// Host CPU use from /proc/stat between samples, in cores.
#[derive(Default)]
struct CpuSampler {
    last: Option<(u64, u64)>,
}

impl CpuSampler {
    fn sample(&mut self) -> f64 {
        let Some((busy, total)) = read_proc_stat() else {
            return 0.0;
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let out = match self.last {
            Some((b, t)) if total > t => (busy - b.min(busy)) as f64 / (total - t) as f64 * cores,
            _ => 0.0,
        };
        self.last = Some((busy, total));
        out
    }
}

fn read_proc_stat() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0);
    Some((total - idle, total))
}

/// Served prefixes → the data plane's prefixes file (its own check) and XDP maps.
async fn prefix_loop(agent: Arc<Agent>) {
    let mut rx = agent.prefixes_changed.subscribe();
    // What the prefixes file holds, as far as we know, so a failing XDP sync does not rewrite
    // the file and rescan the catalog on every retry. The XDP sync is a diff: always run.
    let mut in_file: Option<BTreeSet<IpNet>> = None;
    let mut last_error: Option<String> = None;
    let mut failures = 0u32;
    let retry = Backoff {
        base: Duration::from_secs(2),
        max: Duration::from_secs(60),
    };
    loop {
        let want = agent.lock().served.clone();
        let list: Vec<IpNet> = want.iter().copied().collect();
        let mut error = None;
        // Check the targets again rather than trust memory: a restarted data plane may have
        // recreated its maps, or someone may have edited the file. Both checks are cheap (a
        // diff of the maps; a read of the file); only a difference writes anything.
        if in_file.as_ref() == Some(&want) {
            if let Some(path) = &agent.dp.prefixes_file {
                if prefixes_in_file(path).as_ref() != Some(&want) {
                    in_file = None;
                }
            }
        }
        if let Some(path) = &agent.dp.prefixes_file {
            if in_file.as_ref() != Some(&want) {
                let json = serde_json::json!({ "prefixes": list });
                match write_atomic(path, json.to_string().as_bytes()) {
                    Ok(()) => match agent.admin.reload().await {
                        Ok(()) => in_file = Some(want.clone()),
                        Err(e) => error = Some(e),
                    },
                    Err(e) => error = Some(format!("writing {}: {e}", path.display())),
                }
            }
        }
        if let Some(sink) = &agent.dp.xdp {
            match sink(&list) {
                Ok(Some(summary)) => tracing::info!("agent: XDP prefixes: {summary}"),
                Ok(None) => {}
                Err(e) => error = Some(format!("XDP prefixes: {e}")),
            }
        }
        let wait = match error {
            None => {
                if failures > 0 || last_error.is_some() {
                    tracing::info!("agent: served prefixes applied again");
                }
                failures = 0;
                last_error = None;
                tracing::debug!("agent: serving {} prefixes", list.len());
                Duration::from_secs(30)
            }
            Some(e) => {
                failures += 1;
                // One line per distinct problem, not one per retry.
                if last_error.as_ref() != Some(&e) {
                    tracing::warn!("agent: {e} (retrying)");
                    last_error = Some(e);
                }
                retry.delay(failures)
            }
        };
        tokio::select! {
            _ = rx.changed() => {}
            // Retry a failed apply (the data plane may have been restarting).
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// The prefixes in a data plane prefixes file, if it parses.
fn prefixes_in_file(path: &std::path::Path) -> Option<BTreeSet<IpNet>> {
    #[derive(serde::Deserialize)]
    struct File {
        prefixes: Vec<IpNet>,
    }
    let f: File = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    Some(f.prefixes.into_iter().collect())
}

/// The BGP speaker: its served set joins the configured prefixes; its status is published for
/// `edgeplane bgp status` (through `/status`).
async fn bgp_loop(agent: Arc<Agent>, cfg: edgeplane_bgp::SpeakerConfig) {
    let speaker = match edgeplane_bgp::spawn(cfg) {
        Ok(s) => s,
        Err(e) => {
            // Serving continues on the configured prefixes; the operator sees why in the log
            // and in `edgeplane bgp status`.
            tracing::error!("agent.bgp: {e}");
            agent.lock().bgp_status = Some(serde_json::json!({ "error": e.to_string() }));
            return std::future::pending().await;
        }
    };
    let mut served = speaker.served();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let set = served.borrow_and_update().clone();
        agent.set_prefix_sources(None, Some(set));
        agent.lock().bgp_status = serde_json::to_value(speaker.status()).ok();
        tokio::select! {
            r = served.changed() => {
                if r.is_err() {
                    tracing::error!("agent.bgp: the speaker stopped");
                    return std::future::pending().await;
                }
            }
            _ = tick.tick() => {}
        }
    }
}

/// Per-object retry bookkeeping.
#[derive(Default, Clone, Copy)]
struct Retry {
    failures: u32,
    next: Option<Instant>,
}

async fn fill_loop(agent: Arc<Agent>) {
    let window = Window::parse(&agent.cfg.fill.window).expect("validated");
    let mut manifest_rx = agent.manifest_changed.subscribe();
    let breaker = Arc::new(Mutex::new(Breaker::new(
        agent.cfg.fill.breaker_failures,
        Duration::from_secs(agent.cfg.fill.breaker_open_secs),
    )));
    let retries: Arc<Mutex<HashMap<String, Retry>>> = Arc::default();
    loop {
        let open = window.is_open(fill::local_minute_now());
        agent.lock().window_open = open;
        let manifest = agent.lock().manifest.clone();
        let (Some(manifest), true) = (manifest, open) else {
            agent.lock().fill.state = "idle".into();
            tokio::select! {
                _ = manifest_rx.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            continue;
        };
        let pass = fill_pass(&agent, &manifest, &breaker, &retries).await;
        let wait = match pass {
            PassResult::Complete => Duration::from_secs(5),
            PassResult::Progress => Duration::ZERO,
            PassResult::Waiting(d) => d,
        };
        if !wait.is_zero() {
            tokio::select! {
                _ = manifest_rx.changed() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

enum PassResult {
    /// Everything wanted that fits is present.
    Complete,
    /// Something was installed or evicted: plan again at once.
    Progress,
    /// Nothing could be done now (breaker open, retries pending): try again after this.
    Waiting(Duration),
}

async fn fill_pass(
    agent: &Arc<Agent>,
    manifest: &FillManifest,
    breaker: &Arc<Mutex<Breaker>>,
    retries: &Arc<Mutex<HashMap<String, Retry>>>,
) -> PassResult {
    // What the tiers hold (a scan also removes temporaries of a crashed run).
    let mut held = BTreeMap::new();
    for t in &agent.dp.tiers {
        let path = t.path.clone();
        match tokio::task::spawn_blocking(move || store::scan(&path)).await {
            Ok(Ok(h)) => {
                held.insert(t.name.clone(), h);
            }
            Ok(Err(e)) => {
                // A failed tier: fill nothing onto it this pass.
                tracing::warn!("agent: tier {} ({}): {e}", t.name, t.path.display());
            }
            Err(e) => tracing::error!("agent: scan task: {e}"),
        }
    }
    let plan = fill::plan(manifest, &held, &agent.capacity, agent.cfg.fill.evict);
    {
        let mut s = agent.lock();
        s.fill.objects_wanted = manifest.objects.len() as u64;
        s.fill.objects_present = plan.present;
        s.fill.bytes_missing = plan.bytes_missing;
        s.fill.state = if plan.download.is_empty() {
            "idle".into()
        } else {
            "filling".into()
        };
    }
    let mut changed = false;
    for (tier, id) in &plan.evict {
        let Some(spec) = agent.dp.tiers.iter().find(|t| &t.name == tier) else {
            continue;
        };
        match store::evict(&spec.path, id) {
            Ok(()) => {
                tracing::info!("agent: evicted {id} from {tier}");
                agent.lock().evicted += 1;
                changed = true;
            }
            Err(e) => tracing::warn!("agent: evicting {id} from {tier}: {e}"),
        }
    }
    if changed {
        // Removed files must leave the catalog before new ones arrive.
        if let Err(e) = agent.admin.reload().await {
            tracing::warn!("agent: {e}");
        }
    }
    if plan.download.is_empty() {
        return if changed {
            PassResult::Progress
        } else {
            PassResult::Complete
        };
    }
    let now = Instant::now();
    let due: Vec<ManifestEntry> = {
        let r = retries.lock().unwrap_or_else(|e| e.into_inner());
        plan.download
            .into_iter()
            .filter(|e| {
                r.get(&e.object.id)
                    .and_then(|x| x.next)
                    .is_none_or(|t| t <= now)
            })
            .collect()
    };
    let installed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let last_reload = Arc::new(tokio::sync::Mutex::new(Instant::now()));
    futures::stream::iter(due)
        .for_each_concurrent(agent.cfg.fill.concurrency, |entry| {
            let agent = agent.clone();
            let breaker = breaker.clone();
            let retries = retries.clone();
            let installed = installed.clone();
            let last_reload = last_reload.clone();
            async move {
                let id = entry.object.id.clone();
                match download(&agent, &entry, &breaker).await {
                    Ok(source) => {
                        retries
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&id);
                        installed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        {
                            let mut s = agent.lock();
                            *s.downloaded_objects.entry(source).or_default() += 1;
                            s.fill.objects_present += 1;
                            s.fill.bytes_missing =
                                s.fill.bytes_missing.saturating_sub(entry.object.size);
                        }
                        // Serve new objects soon, without a rescan per object.
                        let mut last = last_reload.lock().await;
                        if last.elapsed() >= Duration::from_secs(1) {
                            if let Err(e) = agent.admin.reload().await {
                                tracing::warn!("agent: {e}");
                            }
                            *last = Instant::now();
                        }
                    }
                    Err(Skip::BreakerOpen) => {}
                    Err(Skip::Failed(e)) => {
                        tracing::warn!("agent: fill {id}: {e}");
                        let backoff = Backoff {
                            base: Duration::from_millis(agent.cfg.fill.retry_base_ms),
                            max: Duration::from_millis(agent.cfg.fill.retry_max_ms),
                        };
                        let mut r = retries.lock().unwrap_or_else(|e| e.into_inner());
                        let x = r.entry(id).or_default();
                        x.failures += 1;
                        x.next = Some(Instant::now() + backoff.delay(x.failures));
                    }
                }
            }
        })
        .await;
    let n = installed.load(std::sync::atomic::Ordering::Relaxed);
    if n > 0 {
        if let Err(e) = agent.admin.reload().await {
            tracing::warn!("agent: {e}");
        }
        return PassResult::Progress;
    }
    // Nothing installed: wait for the earliest retry or the breaker's probe.
    let now = Instant::now();
    let next_retry = retries
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .filter_map(|r| r.next)
        .min();
    let b = breaker.lock().unwrap_or_else(|e| e.into_inner());
    let mut wait = Duration::from_secs(1);
    for t in [next_retry, b.open_until()].into_iter().flatten() {
        if t > now {
            wait = wait.max(Duration::from_millis(100)).min(t - now);
        }
    }
    if b.state(now) == BreakerState::Open {
        agent.lock().fill.state = "blocked".into();
    }
    PassResult::Waiting(wait.max(Duration::from_millis(200)))
}

enum Skip {
    BreakerOpen,
    Failed(String),
}

/// Downloads one object: from the manifest's peer first, then the origin (behind the breaker).
async fn download(
    agent: &Agent,
    entry: &ManifestEntry,
    breaker: &Mutex<Breaker>,
) -> Result<&'static str, Skip> {
    let id = &entry.object.id;
    let Some(spec) = agent.dp.tiers.iter().find(|t| t.name == entry.tier) else {
        return Err(Skip::Failed(format!(
            "manifest names unknown tier {:?}",
            entry.tier
        )));
    };
    if !store::valid_id(id) {
        return Err(Skip::Failed(format!("manifest names an invalid id {id:?}")));
    }
    if let Some(peer) = &entry.peer {
        match peer_url(agent, peer, id) {
            Some(url) => match peer_get(&agent.http, &url).await {
                Ok(stream) => match receive(agent, &spec.path, entry, stream, "peer").await {
                    Ok(()) => return Ok("peer"),
                    Err(e) => {
                        tracing::info!("agent: fill {id} from peer {peer}: {e}; trying the origin")
                    }
                },
                Err(e) => tracing::info!("agent: fill {id}: {e}; trying the origin"),
            },
            None => tracing::debug!("agent: no key to sign a peer URL; using the origin"),
        }
        *agent.lock().failures.entry("peer").or_default() += 1;
    }
    let set_state = |b: &Breaker| {
        agent.lock().breaker = match b.state(Instant::now()) {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        };
    };
    {
        let mut b = breaker.lock().unwrap_or_else(|e| e.into_inner());
        let ok = b.allow(Instant::now());
        set_state(&b);
        if !ok {
            return Err(Skip::BreakerOpen);
        }
    }
    let result = match agent.origin.get(id).await {
        Ok(stream) => receive(agent, &spec.path, entry, stream, "origin").await,
        Err(e) => Err(ReceiveError::Source(e)),
    };
    let mut b = breaker.lock().unwrap_or_else(|e| e.into_inner());
    let out = match result {
        Ok(()) => {
            b.success();
            Ok("origin")
        }
        // The origin answered, with the wrong bytes: not an origin outage.
        Err(ReceiveError::Checksum(e)) => {
            b.success();
            agent.lock().fill.checksum_failures += 1;
            tracing::error!("agent: fill {id}: rejected: {e}");
            Err(Skip::Failed(e))
        }
        Err(ReceiveError::Local(e)) => Err(Skip::Failed(e)),
        Err(ReceiveError::Source(e)) => {
            let was = b.state(Instant::now());
            b.failure(Instant::now());
            if was == BreakerState::Closed && b.state(Instant::now()) == BreakerState::Open {
                tracing::error!("agent: origin breaker open after repeated failures: {e}");
            }
            *agent.lock().failures.entry("origin").or_default() += 1;
            Err(Skip::Failed(e))
        }
    };
    set_state(&b);
    out
}

/// A URL for `id` at a peer appliance, signed with our own key for our own address.
fn peer_url(agent: &Agent, peer: &str, id: &str) -> Option<String> {
    let s = agent.lock();
    let key = s.keys.signing_key(now_unix())?;
    let me = local_addr_towards(peer)?;
    let pfx = client_prefix(me, 32, 128);
    Some(format!(
        "{}/{id}?{}",
        peer.trim_end_matches('/'),
        sign(key, id, now_unix() + 300, pfx)
    ))
}

#[derive(Debug)]
enum ReceiveError {
    /// The source failed (connection, HTTP status, stream error).
    Source(String),
    /// The bytes arrived but are not the object the manifest names.
    Checksum(String),
    /// Our own disk failed.
    Local(String),
}

impl std::fmt::Display for ReceiveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReceiveError::Source(e) | ReceiveError::Checksum(e) | ReceiveError::Local(e) => {
                f.write_str(e)
            }
        }
    }
}

async fn receive(
    agent: &Agent,
    dir: &std::path::Path,
    entry: &ManifestEntry,
    mut stream: ByteStream,
    source: &'static str,
) -> Result<(), ReceiveError> {
    let id = &entry.object.id;
    let mut w = Incoming::create(dir, id)
        .await
        .map_err(|e| ReceiveError::Local(format!("{}: {e}", dir.display())))?;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                w.abandon().await;
                return Err(ReceiveError::Source(format!("{source} stream: {e}")));
            }
        };
        if w.len() + chunk.len() as u64 > entry.object.size {
            w.abandon().await;
            return Err(ReceiveError::Checksum(format!(
                "{source} sent more than the manifest's {} bytes",
                entry.object.size
            )));
        }
        agent.rate.take(chunk.len() as u64).await;
        if let Err(e) = w.write(&chunk).await {
            w.abandon().await;
            return Err(ReceiveError::Local(format!("{}: {e}", dir.display())));
        }
        *agent.lock().downloaded_bytes.entry(source).or_default() += chunk.len() as u64;
    }
    match w.install(&entry.object.sha256, entry.object.size).await {
        Ok(()) => Ok(()),
        Err(InstallError::Mismatch { .. }) if source == "peer" => Err(ReceiveError::Source(
            "peer sent bytes that fail the checksum".into(),
        )),
        Err(e @ InstallError::Mismatch { .. }) => Err(ReceiveError::Checksum(e.to_string())),
        Err(InstallError::Io(e)) => Err(ReceiveError::Local(e.to_string())),
    }
}

/// A shared download rate cap: each chunk reserves its share of time.
struct RateLimiter {
    bytes_per_sec: u64,
    next: Mutex<Instant>,
}

impl RateLimiter {
    fn new(bytes_per_sec: u64) -> RateLimiter {
        RateLimiter {
            bytes_per_sec,
            next: Mutex::new(Instant::now()),
        }
    }

    async fn take(&self, bytes: u64) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let start = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            // Unused time does not accumulate beyond a quarter second of burst.
            let start = (*next).max(now - Duration::from_millis(250).min(now.elapsed()));
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
            start
        };
        tokio::time::sleep_until(start.into()).await;
    }
}

/// A progress line on a terminal (`\r`-updated), a log line every 10 s otherwise; also the
/// fill rate for metrics.
async fn progress_loop(agent: Arc<Agent>) {
    let tty = std::io::stderr().is_terminal();
    let mut last_bytes = 0u64;
    let mut last_log = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let (line, filling) = {
            let mut s = agent.lock();
            let total: u64 = s.downloaded_bytes.values().sum();
            let rate = (total - last_bytes.min(total)) as f64;
            last_bytes = total;
            s.rate_bps = rate * 8.0;
            let f = &s.fill;
            let pct = if f.objects_wanted == 0 {
                100.0
            } else {
                f.objects_present as f64 * 100.0 / f.objects_wanted as f64
            };
            (
                format!(
                    "fill: {pct:5.1}% {}/{} objects, {:.1} MB/s, {:.1} MB left, breaker {}",
                    f.objects_present,
                    f.objects_wanted,
                    rate / 1e6,
                    f.bytes_missing as f64 / 1e6,
                    s.breaker
                ),
                f.state == "filling",
            )
        };
        if tty && filling {
            eprint!("\r{line}   ");
        } else if filling && last_log.elapsed() >= Duration::from_secs(10) {
            tracing::info!("agent: {line}");
            last_log = Instant::now();
        }
    }
}

async fn serve_status(agent: Arc<Agent>, listener: tokio::net::TcpListener) {
    use axum::routing::get;
    let a1 = agent.clone();
    let a2 = agent.clone();
    let app = axum::Router::new()
        .route("/metrics", get(move || async move { render_metrics(&a1) }))
        .route(
            "/status",
            get(move || async move { axum::Json(status_json(&a2)) }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("agent: status listener: {e}");
    }
}

fn status_json(agent: &Agent) -> serde_json::Value {
    let s = agent.lock();
    serde_json::json!({
        "id": agent.cfg.id,
        "fill": s.fill,
        "window_open": s.window_open,
        "breaker": s.breaker,
        "signing_keys": s.keys.keys.iter().map(|k| &k.id).collect::<Vec<_>>(),
        "served_prefixes": s.served,
        "bgp_prefixes": s.bgp,
        "assigned_prefixes": s.assigned,
        "bgp": s.bgp_status,
        "last_error": s.last_error,
    })
}

fn render_metrics(agent: &Agent) -> String {
    use std::fmt::Write;
    let s = agent.lock();
    let mut o = String::new();
    let mut gauge = |name: &str, help: &str, v: f64| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    gauge(
        "edgeplane_agent_fill_objects_wanted",
        "Objects in the fill manifest.",
        s.fill.objects_wanted as f64,
    );
    gauge(
        "edgeplane_agent_fill_objects_present",
        "Manifest objects held and verified.",
        s.fill.objects_present as f64,
    );
    gauge(
        "edgeplane_agent_fill_bytes_missing",
        "Bytes still to download.",
        s.fill.bytes_missing as f64,
    );
    gauge(
        "edgeplane_agent_fill_manifest_generation",
        "Generation of the manifest being filled.",
        s.fill.generation as f64,
    );
    gauge(
        "edgeplane_agent_fill_window_open",
        "1 inside the fill window.",
        u8::from(s.window_open) as f64,
    );
    gauge(
        "edgeplane_agent_fill_rate_bits_per_second",
        "Download rate over the last second.",
        s.rate_bps,
    );
    gauge(
        "edgeplane_agent_served_prefixes",
        "Client prefixes served (configured and BGP).",
        s.served.len() as f64,
    );
    gauge(
        "edgeplane_agent_signing_keys",
        "Signing keys handed to the data plane.",
        s.keys.keys.len() as f64,
    );
    let _ = writeln!(o, "# HELP edgeplane_agent_origin_breaker 1 for the origin circuit breaker's current state.\n# TYPE edgeplane_agent_origin_breaker gauge");
    for st in ["closed", "open", "half_open"] {
        let _ = writeln!(
            o,
            "edgeplane_agent_origin_breaker{{state=\"{st}\"}} {}",
            u8::from(s.breaker == st)
        );
    }
    for (name, help, by_source) in [
        (
            "edgeplane_agent_fill_bytes_total",
            "Bytes downloaded by source.",
            &s.downloaded_bytes,
        ),
        (
            "edgeplane_agent_fill_objects_total",
            "Objects installed by source.",
            &s.downloaded_objects,
        ),
        (
            "edgeplane_agent_fill_failures_total",
            "Failed downloads by source.",
            &s.failures,
        ),
    ] {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
        for src in ["origin", "peer"] {
            let v = by_source.get(src).unwrap_or(&0);
            let _ = writeln!(o, "{name}{{source=\"{src}\"}} {v}");
        }
    }
    let _ = writeln!(o, "# HELP edgeplane_agent_fill_checksum_failures_total Downloads rejected on size or sha256.\n# TYPE edgeplane_agent_fill_checksum_failures_total counter\nedgeplane_agent_fill_checksum_failures_total {}", s.fill.checksum_failures);
    let _ = writeln!(o, "# HELP edgeplane_agent_fill_evicted_total Objects removed because they left the manifest.\n# TYPE edgeplane_agent_fill_evicted_total counter\nedgeplane_agent_fill_evicted_total {}", s.evicted);
    let _ = writeln!(o, "# HELP edgeplane_agent_health_reports_total Health reports by result.\n# TYPE edgeplane_agent_health_reports_total counter");
    let _ = writeln!(
        o,
        "edgeplane_agent_health_reports_total{{result=\"ok\"}} {}",
        s.health_ok
    );
    let _ = writeln!(
        o,
        "edgeplane_agent_health_reports_total{{result=\"error\"}} {}",
        s.health_err
    );
    o
}
