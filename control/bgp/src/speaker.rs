//! The thin tokio layer: one task per peer (dial with backoff, or take connections from the
//! listener), one listener task for passive peers, one grace-expiry task. All decisions are made
//! by [`crate::fsm::Session`] and [`crate::rib::PeerRib`].

use std::collections::{BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{ConfigError, Mode, PeerConfig, SpeakerConfig};
use crate::fsm::{Action, CloseReason, Session, SessionState};
use crate::rib::{self, PeerRib};
use crate::status::PeerStatus;
use crate::wire::{self, code, subcode, LocalOpen, NotifyError};

/// How often grace deadlines are checked.
const GRACE_TICK: Duration = Duration::from_millis(200);
/// Upper bound of the reconnect backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// Why [`spawn`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The configuration is invalid.
    #[error("invalid BGP configuration: {0}")]
    Config(#[from] ConfigError),
    /// The listen socket could not be set up.
    #[error("cannot listen for BGP on {addr}: {source}")]
    Listen {
        /// The configured address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

struct PeerEntry {
    rib: PeerRib,
    state: SessionState,
    since: (Instant, SystemTime),
    last_error: Option<String>,
}

struct Shared {
    cfg: SpeakerConfig,
    peers: Mutex<Vec<PeerEntry>>,
    served: watch::Sender<BTreeSet<IpNet>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Vec<PeerEntry>> {
        // A panic while holding the lock cannot leave the bookkeeping half-done in a way that
        // matters more than losing the whole speaker; keep going.
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, peers: &[PeerEntry]) {
        let set = rib::union(peers.iter().map(|p| &p.rib));
        self.served.send_if_modified(|cur| {
            if *cur == set {
                false
            } else {
                *cur = set;
                true
            }
        });
    }

    fn set_state(&self, idx: usize, state: SessionState) {
        let mut peers = self.lock();
        if peers[idx].state != state {
            peers[idx].state = state;
            peers[idx].since = (Instant::now(), SystemTime::now());
        }
    }

    fn set_error(&self, idx: usize, err: String) {
        self.lock()[idx].last_error = Some(err);
    }

    /// Applies an UPDATE; returns the NOTIFICATION to send when the max-prefix limit is hit.
    fn apply(&self, idx: usize, update: &wire::Update) -> Option<NotifyError> {
        let policy = &self.cfg.peers[idx].policy;
        let mut peers = self.lock();
        let r = peers[idx].rib.apply(update, policy);
        self.publish(&peers);
        r.err().map(|e| {
            // RFC 4486: data is AFI, SAFI and the limit. The limit is over both families here;
            // report the family of the first announced prefix.
            let afi: u16 = match update.announced.first() {
                Some(IpNet::V6(_)) => 2,
                _ => 1,
            };
            let mut data = afi.to_be_bytes().to_vec();
            data.push(1);
            data.extend_from_slice(&e.limit.to_be_bytes());
            NotifyError::new(
                code::CEASE,
                subcode::MAX_PREFIXES,
                format!("more than {} prefixes accepted", e.limit),
            )
            .with_data(data)
        })
    }

    fn session_down(&self, idx: usize, reason: &CloseReason) {
        let now = Instant::now();
        let mut peers = self.lock();
        let p = &mut peers[idx];
        p.rib.session_down(now.checked_add(self.cfg.grace()), now);
        p.last_error = Some(reason.to_string());
        self.publish(&peers);
    }

    fn end_of_rib(&self, idx: usize) {
        let mut peers = self.lock();
        peers[idx].rib.end_of_rib();
        self.publish(&peers);
    }

    fn expire(&self) {
        let now = Instant::now();
        let mut peers = self.lock();
        let mut changed = false;
        for p in peers.iter_mut() {
            changed |= p.rib.expire(now);
        }
        if changed {
            self.publish(&peers);
        }
    }

    fn status(&self) -> Vec<PeerStatus> {
        let now = Instant::now();
        let peers = self.lock();
        self.cfg
            .peers
            .iter()
            .zip(peers.iter())
            .map(|(c, p)| PeerStatus {
                name: c.name.clone(),
                address: c.address,
                peer_as: c.peer_as,
                mode: c.mode,
                state: p.state,
                state_secs: now.duration_since(p.since.0).as_secs(),
                since_unix: p
                    .since
                    .1
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                received: p.rib.received(),
                accepted: p.rib.accepted(),
                in_grace: p.rib.in_grace(),
                grace_remaining_secs: p
                    .rib
                    .grace_until()
                    .map(|t| t.saturating_duration_since(now).as_secs()),
                last_error: p.last_error.clone(),
            })
            .collect()
    }
}

/// A running speaker. Dropping it without [`Speaker::shutdown`] aborts its tasks.
pub struct Speaker {
    shared: Arc<Shared>,
    served: watch::Receiver<BTreeSet<IpNet>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    listen_addr: Option<SocketAddr>,
}

impl std::fmt::Debug for Speaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Speaker")
            .field("listen_addr", &self.listen_addr)
            .finish_non_exhaustive()
    }
}

/// Validates the configuration and starts the speaker's tasks on the current tokio runtime
/// (must be called from within one). Binds the listen socket, if any, before returning.
pub fn spawn(cfg: SpeakerConfig) -> Result<Speaker, SpawnError> {
    cfg.validate()?;
    let listener = match cfg.listen {
        Some(addr) if cfg.peers.iter().any(|p| p.mode == Mode::Passive) => {
            let l = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(TcpListener::from_std)
                .map_err(|source| SpawnError::Listen { addr, source })?;
            Some(l)
        }
        _ => None,
    };
    let listen_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
    let now = (Instant::now(), SystemTime::now());
    let peers = cfg
        .peers
        .iter()
        .map(|p| PeerEntry {
            rib: PeerRib::default(),
            state: if p.mode == Mode::Passive {
                SessionState::Active
            } else {
                SessionState::Idle
            },
            since: now,
            last_error: None,
        })
        .collect();
    let (served_tx, served) = watch::channel(BTreeSet::new());
    let shared = Arc::new(Shared {
        cfg,
        peers: Mutex::new(peers),
        served: served_tx,
    });
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut inboxes = Vec::new();
    for (idx, p) in shared.cfg.peers.iter().enumerate() {
        let rx = if p.mode == Mode::Passive {
            let (tx, rx) = mpsc::channel(4);
            inboxes.push((p.address, tx));
            Some(rx)
        } else {
            None
        };
        tasks.push(tokio::spawn(peer_task(
            idx,
            shared.clone(),
            rx,
            shutdown_rx.clone(),
        )));
    }
    if let Some(l) = listener {
        tasks.push(tokio::spawn(listen_task(l, inboxes, shutdown_rx.clone())));
    }
    let (s, mut stop) = (shared.clone(), shutdown_rx);
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(GRACE_TICK);
        loop {
            tokio::select! {
                _ = tick.tick() => s.expire(),
                _ = stop.changed() => return,
            }
        }
    }));
    Ok(Speaker {
        shared,
        served,
        shutdown,
        tasks,
        listen_addr,
    })
}

impl Speaker {
    /// The served set: the union over peers of accepted prefixes, including those in grace.
    /// Changes are published as they happen (only real changes wake receivers).
    pub fn served(&self) -> watch::Receiver<BTreeSet<IpNet>> {
        self.served.clone()
    }

    /// Status of every configured peer, in configuration order.
    pub fn status(&self) -> Vec<PeerStatus> {
        self.shared.status()
    }

    /// The bound listen address (useful when configured with port 0), if passive peers exist.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen_addr
    }

    /// Sends Cease / Administrative Shutdown on live sessions and stops all tasks.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

async fn listen_task(
    listener: TcpListener,
    inboxes: Vec<(IpAddr, mpsc::Sender<TcpStream>)>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, from) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("bgp: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let from_ip = canonical(from.ip());
        match inboxes.iter().find(|(a, _)| canonical(*a) == from_ip) {
            Some((_, tx)) => {
                if tx.try_send(stream).is_err() {
                    tracing::warn!("bgp: dropping connection from {from}: peer busy");
                }
            }
            None => tracing::info!("bgp: closing connection from unconfigured address {from}"),
        }
    }
}

fn backoff(base: Duration, failures: u32) -> Duration {
    (base * 2u32.pow(failures.min(5))).min(MAX_BACKOFF)
}

/// Sleeps unless shutdown is asked for first; returns false on shutdown.
async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.changed() => false,
    }
}

async fn reject(mut stream: TcpStream, sub: u8) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream
            .write_all(&wire::encode_notification(code::CEASE, sub, &[]))
            .await;
        let _ = stream.shutdown().await;
    })
    .await;
}

async fn peer_task(
    idx: usize,
    shared: Arc<Shared>,
    mut inbox: Option<mpsc::Receiver<TcpStream>>,
    mut stop: watch::Receiver<bool>,
) {
    let cfg = shared.cfg.peers[idx].clone();
    let base = shared.cfg.connect_retry();
    let mut failures = 0u32;
    let mut hold_down_until: Option<Instant> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let stream = match &mut inbox {
            None => {
                shared.set_state(idx, SessionState::Connect);
                let target = SocketAddr::new(cfg.address, cfg.port);
                let timeout = base.max(Duration::from_secs(5));
                let r = tokio::select! {
                    r = tokio::time::timeout(timeout, TcpStream::connect(target)) => r,
                    _ = stop.changed() => return,
                };
                match r {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        shared.set_error(idx, format!("connect to {target}: {e}"));
                        shared.set_state(idx, SessionState::Idle);
                        if !pause(backoff(base, failures), &mut stop).await {
                            return;
                        }
                        failures += 1;
                        continue;
                    }
                    Err(_) => {
                        shared.set_error(idx, format!("connect to {target}: timed out"));
                        failures += 1;
                        continue;
                    }
                }
            }
            Some(rx) => {
                shared.set_state(idx, SessionState::Active);
                let s = tokio::select! {
                    s = rx.recv() => match s { Some(s) => s, None => return },
                    _ = stop.changed() => return,
                };
                if hold_down_until.is_some_and(|t| Instant::now() < t) {
                    reject(s, subcode::CONNECTION_REJECTED).await;
                    continue;
                }
                s
            }
        };
        let _ = stream.set_nodelay(true);
        let end = run_session(idx, &shared, &cfg, stream, &mut inbox, &mut stop).await;
        match end {
            SessionEnd::Shutdown => return,
            SessionEnd::Closed {
                established,
                max_prefix,
            } => {
                shared.set_state(idx, SessionState::Idle);
                if established {
                    failures = 0;
                }
                let delay = if max_prefix {
                    cfg.policy.max_prefix_restart()
                } else if inbox.is_some() {
                    Duration::ZERO
                } else {
                    let d = backoff(base, failures);
                    failures += 1;
                    d
                };
                if max_prefix && inbox.is_some() {
                    hold_down_until = Some(Instant::now() + delay);
                } else if !pause(delay, &mut stop).await {
                    return;
                }
            }
        }
    }
}

enum SessionEnd {
    Shutdown,
    Closed { established: bool, max_prefix: bool },
}

async fn run_session(
    idx: usize,
    shared: &Shared,
    cfg: &PeerConfig,
    stream: TcpStream,
    inbox: &mut Option<mpsc::Receiver<TcpStream>>,
    stop: &mut watch::Receiver<bool>,
) -> SessionEnd {
    let (mut rd, mut wr) = stream.into_split();
    let local = LocalOpen {
        asn: cfg.local_as,
        hold_time: cfg.hold_time,
        router_id: cfg.router_id,
    };
    let (mut session, first) = Session::start(local, cfg.peer_as, Instant::now());
    let mut pending: VecDeque<Action> = first.into();
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let (mut established, mut max_prefix, mut shutting_down) = (false, false, false);
    loop {
        while let Some(action) = pending.pop_front() {
            match action {
                Action::Send(bytes) => {
                    let w = tokio::time::timeout(Duration::from_secs(10), wr.write_all(&bytes));
                    match w.await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            pending.extend(session.connection_lost(format!("write: {e}")))
                        }
                        Err(_) => pending.extend(session.connection_lost("write timed out")),
                    }
                }
                Action::Established => {
                    established = true;
                    tracing::info!(
                        "bgp: session with {} ({}) established",
                        cfg.name,
                        cfg.address
                    );
                }
                Action::Update(u) => {
                    if let Some(err) = shared.apply(idx, &u) {
                        tracing::warn!("bgp: {}: {err}", cfg.name);
                        max_prefix = true;
                        // Messages decoded after the one that hit the limit are not applied.
                        pending.clear();
                        pending.extend(session.notify(err));
                    }
                }
                Action::EndOfRib => shared.end_of_rib(idx),
                Action::Close(reason) => {
                    tracing::warn!(
                        "bgp: session with {} ({}) down: {reason}",
                        cfg.name,
                        cfg.address
                    );
                    shared.session_down(idx, &reason);
                    let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
                    return if shutting_down {
                        SessionEnd::Shutdown
                    } else {
                        SessionEnd::Closed {
                            established,
                            max_prefix,
                        }
                    };
                }
            }
        }
        shared.set_state(idx, session.state());
        let deadline = session.next_deadline();
        let sleep_until = deadline.map(tokio::time::Instant::from_std);
        tokio::select! {
            r = rd.read_buf(&mut buf) => {
                match r {
                    Ok(0) => pending.extend(session.connection_lost("closed by peer")),
                    Err(e) => pending.extend(session.connection_lost(format!("read: {e}"))),
                    Ok(_) => loop {
                        match wire::frame_len(&buf) {
                            Ok(Some(n)) => {
                                let msg: Vec<u8> = buf.drain(..n).collect();
                                pending.extend(session.on_message(&msg, Instant::now()));
                                if session.state() == SessionState::Idle {
                                    break;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                pending.extend(session.notify(e));
                                break;
                            }
                        }
                    },
                }
            }
            _ = async { tokio::time::sleep_until(sleep_until.unwrap_or_else(tokio::time::Instant::now)).await }, if sleep_until.is_some() => {
                pending.extend(session.on_timer(Instant::now()));
            }
            _ = stop.changed() => {
                shutting_down = true;
                pending.extend(session.notify(NotifyError::new(
                    code::CEASE,
                    subcode::ADMIN_SHUTDOWN,
                    "speaker shutting down",
                )));
            }
            Some(other) = async {
                match inbox.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                // Collision handling, simplified: a session in progress wins; the new
                // connection is closed with Cease / Connection Collision Resolution.
                reject(other, subcode::CONNECTION_COLLISION).await;
            }
        }
    }
}
