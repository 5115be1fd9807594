//! The life of one executor: bind its `SO_REUSEPORT` listeners, report ready, run the per-core
//! timers (latency flush, deadline sweeper), accept until told to stop (caps and served
//! prefixes checked at accept), then wait for in-flight responses.
//!
//! The top of the per-core runtime: it spawns each accepted connection into `conn` (plain HTTP)
//! or `tls` (HTTPS); nothing below imports it.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::net::TcpListener;

use super::core::Core;
use super::shared::{Admitted, Shared};
use super::{conn, park, sys, tls};
use crate::metrics::Rejection;

/// Messages to the main thread.
#[derive(Debug)]
pub(crate) enum Event {
    Ready,
    Failed(usize, String),
    Exited(usize, Result<(), String>),
    Signal(i32),
}

/// The life of one executor: bind, report ready, accept until told to stop, drain.
pub(crate) async fn run(
    index: usize,
    shared: Arc<Shared>,
    addr: SocketAddr,
    https_addr: Option<SocketAddr>,
    ready: std::sync::mpsc::Sender<Event>,
) -> Result<(), String> {
    let bind = |addr: SocketAddr, key: &str| {
        sys::reuseport_listener(addr).map_err(|e| {
            let msg = format!("{key}: cannot listen on {addr}: {e}");
            let _ = ready.send(Event::Failed(index, msg.clone()));
            msg
        })
    };
    let socket = bind(addr, "http.listen")?;
    let tls_socket = match https_addr {
        Some(a) => Some(bind(a, "https.listen")?),
        None => None,
    };
    // Flow steering covers the HTTP listeners; HTTPS connections use the kernel's hash.
    if let Some(steering) = shared.xdp.as_ref().and_then(|x| x.steering()) {
        use std::os::fd::AsFd;
        // Never fatal: without it the kernel's reuseport hash still spreads connections.
        if let Err(e) = steering.register(index, socket.as_fd()) {
            tracing::warn!(core = index, "flow steering unavailable: {e}");
        }
    }
    let listener: TcpListener = sys::into_listener(socket);
    let tls_listener: Option<TcpListener> = tls_socket.map(sys::into_listener);
    let _ = ready.send(Event::Ready);
    let core = Rc::new(Core::new(index, shared.clone()));

    park::start(&core, resume_parked);

    let flusher = core.clone();
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(Duration::from_secs(1)).await;
            flusher.latency.borrow_mut().flush(flusher.metrics());
        }
    })
    .detach();
    let sweeper = Rc::downgrade(&core);
    let interval = core.sweep_interval();
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(interval).await;
            match sweeper.upgrade() {
                Some(core) => {
                    let now = core.sweep_deadlines();
                    park::expire(&core, now);
                    park::release_memory();
                }
                None => break,
            }
        }
    })
    .detach();

    let http = accept_loop(&core, &listener, None);
    let https = async {
        match (&tls_listener, &shared.https) {
            (Some(l), Some(https)) => accept_loop(&core, l, Some(https.config.clone())).await,
            _ => std::future::pending().await,
        }
    };
    let stop = async {
        while !shared.stop.load(Ordering::Relaxed) {
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
    };
    futures_lite::future::or(stop, futures_lite::future::or(http, https)).await;
    core.stopping.set(true);
    drop(listener);
    drop(tls_listener);
    let deadline = Instant::now() + shared.config.load().limits.shutdown_grace();
    while core.busy.get() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    if core.busy.get() > 0 {
        tracing::warn!(
            core = index,
            in_flight = core.busy.get(),
            "shutdown grace ran out"
        );
    }
    core.latency.borrow_mut().flush(core.metrics());
    Ok(())
}

/// Serves a parked connection that turned readable (`runtime::park`).
fn resume_parked(
    core: Rc<Core>,
    stream: glommio::net::TcpStream,
    peer: IpAddr,
    admitted: Admitted,
    served: u64,
) {
    glommio::spawn_local(conn::serve(core, stream, peer, admitted, served)).detach();
}

/// Accepts connections until dropped. `tls`: this is the HTTPS listener.
async fn accept_loop(
    core: &Rc<Core>,
    listener: &TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(core = core.index, "accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let peer = match stream.peer_addr() {
            Ok(a) => a.ip(),
            Err(_) => continue,
        };
        if !core.shared.access.allows(peer) {
            // Outside the served prefixes: closed before anything is read or sent.
            core.metrics().rejected(Rejection::Prefix);
            drop(stream);
            continue;
        }
        // Responses end with a partial segment (a head, then a body that is rarely a multiple of
        // the MSS): with Nagle's algorithm that last segment would wait for the client to
        // acknowledge the rest first. Heads go out with MSG_MORE, so nothing is sent early.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(core = core.index, "TCP_NODELAY: {e}");
        }
        let c = core.clone();
        match core.shared.limits.acquire(peer) {
            Ok(guard) => {
                let admitted = Admitted::new(guard, c.shared.metrics.clone(), c.index);
                match tls.clone() {
                    // Boxed: a TLS session's state (rustls, the handshake) is far larger than a
                    // plain connection's, and an unboxed branch would make every plain
                    // connection's task as large as a TLS one (issue #17, idle connections).
                    Some(config) => glommio::spawn_local(async move {
                        Box::pin(tls::serve(c, stream, config, peer)).await;
                        drop(admitted);
                    })
                    .detach(),
                    // A plain connection's task may end before the connection does, when it is
                    // parked (`runtime::park`): it carries `admitted` on.
                    None => {
                        glommio::spawn_local(conn::serve(c, stream, peer, admitted, 0)).detach()
                    }
                };
            }
            Err(why) => {
                c.metrics().rejected(why);
                if tls.is_some() {
                    glommio::spawn_local(tls::refuse(stream)).detach();
                } else {
                    glommio::spawn_local(conn::refuse(c, stream)).detach();
                }
            }
        }
    }
}
