//! The admin listener: `GET /metrics`, `GET /healthz`, `GET /catalog`, `POST /reload`,
//! `POST /drain`.
//!
//! One plain thread, off the serving cores, one request per connection. It reads the per-core
//! counters (summing on scrape) and may swap the catalog; it never touches a client connection.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::shared::Shared;
use crate::metrics;

/// Starts the admin thread on an already bound listener.
pub(crate) fn start(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("edgeplane-admin".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = handle(stream, &shared);
            }
        })?;
    Ok(())
}

fn handle(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    let (method, path) = loop {
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                break (
                    req.method.unwrap_or("").to_string(),
                    req.path.unwrap_or("").to_string(),
                )
            }
            Ok(httparse::Status::Partial) if len < buf.len() => continue,
            _ => {
                return respond(
                    &mut stream,
                    "400 Bad Request",
                    "text/plain",
                    "bad request\n",
                )
            }
        }
    };
    let path = path.split('?').next().unwrap_or("");
    match (method.as_str(), path) {
        ("GET", "/metrics") => {
            let mut body = metrics::render(&shared.metrics, &shared.catalog.load());
            metrics::render_access(&mut body, &shared.access);
            metrics::render_lifecycle(&mut body, &shared.metrics);
            if let Some(pull) = &shared.pull {
                pull.render_metrics(&mut body);
            }
            if let Some(xdp) = &shared.xdp {
                metrics::render_xdp(&mut body, &xdp.snapshot());
            }
            respond(&mut stream, "200 OK", "text/plain; version=0.0.4", &body)
        }
        ("GET", "/healthz") => {
            let catalog = shared.catalog.load();
            let down: Vec<&str> = catalog
                .tiers
                .iter()
                .zip(&catalog.tier_states)
                .filter(|(_, s)| s.error.is_some())
                .map(|(t, _)| t.name.as_str())
                .collect();
            if shared.stop.load(Ordering::Relaxed) {
                respond(
                    &mut stream,
                    "503 Service Unavailable",
                    "text/plain",
                    "draining\n",
                )
            } else if down.len() == catalog.tiers.len() {
                respond(
                    &mut stream,
                    "503 Service Unavailable",
                    "text/plain",
                    "all tiers down\n",
                )
            } else if !down.is_empty() {
                let body = format!("ok (degraded: tier {} down)\n", down.join(", "));
                respond(&mut stream, "200 OK", "text/plain", &body)
            } else {
                respond(&mut stream, "200 OK", "text/plain", "ok\n")
            }
        }
        ("GET", "/catalog") => {
            let body = catalog_json(&shared.catalog.load());
            respond(&mut stream, "200 OK", "application/json", &body)
        }
        ("POST", "/reload") => {
            let reloaded = shared.reload();
            let mut body = String::new();
            let mut ok = reloaded.access.ok();
            match &reloaded.config {
                None => {}
                Some(Ok(restart)) => {
                    body.push_str("config: reloaded\n");
                    for line in restart {
                        body.push_str(&format!("config: {line}\n"));
                    }
                }
                Some(Err(e)) => {
                    ok = false;
                    body.push_str(&format!(
                        "config: NOT reloaded, the running config stays in effect: {e}\n"
                    ));
                }
            }
            body.push_str(&format!(
                "reloaded: generation {} with {} objects\n",
                reloaded.catalog.generation,
                reloaded.catalog.len()
            ));
            match &reloaded.access.keys {
                None => {}
                Some(Ok(n)) => body.push_str(&format!("signing keys: {n} loaded\n")),
                Some(Err(e)) => body.push_str(&format!(
                    "signing keys: NOT loaded, every object request is refused: {e}\n"
                )),
            }
            match &reloaded.access.prefixes {
                None => {}
                Some(Ok(n)) => body.push_str(&format!("prefixes: {n} loaded\n")),
                Some(Err(e)) => body.push_str(&format!(
                    "prefixes: NOT loaded, no client may connect: {e}\n"
                )),
            }
            match reloaded.certificates {
                None => {}
                Some(Ok(())) => body.push_str("certificates: reloaded\n"),
                Some(Err(e)) => {
                    ok = false;
                    body.push_str(&format!(
                        "certificates: NOT reloaded, the previous ones stay in use: {e}\n"
                    ));
                }
            }
            let status = if ok {
                "200 OK"
            } else {
                "500 Internal Server Error"
            };
            respond(&mut stream, status, "text/plain", &body)
        }
        ("POST", "/drain") => {
            let grace = shared.config.load().limits.shutdown_grace_ms;
            let body = format!(
                "draining: no new connections; in-flight responses have up to {grace} ms \
                 (limits.shutdown_grace_ms), then the process exits\n"
            );
            let sent = respond(&mut stream, "202 Accepted", "text/plain", &body);
            tracing::info!("drain asked for on the admin listener");
            // The same path as SIGTERM: the main thread drains and exits 0.
            // SAFETY: kill(2) on our own pid with a signal the process handles.
            unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
            sent
        }
        (_, "/metrics" | "/healthz" | "/reload" | "/catalog" | "/drain") => respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n",
        ),
        _ => respond(&mut stream, "404 Not Found", "text/plain", "not found\n"),
    }
}

/// `GET /catalog`: what each tier serves, for the agent.
fn catalog_json(catalog: &crate::catalog::Catalog) -> String {
    #[derive(serde::Serialize)]
    struct Tier<'a> {
        name: &'a str,
        kind: &'a str,
        up: bool,
        objects: u64,
        bytes: u64,
        ids: Vec<&'a str>,
    }
    #[derive(serde::Serialize)]
    struct Body<'a> {
        generation: u64,
        tiers: Vec<Tier<'a>>,
    }
    let body = Body {
        generation: catalog.generation,
        tiers: catalog
            .tiers
            .iter()
            .zip(&catalog.tier_states)
            .enumerate()
            .map(|(i, (t, s))| Tier {
                name: &t.name,
                kind: t.kind.as_str(),
                up: s.error.is_none(),
                objects: s.objects,
                bytes: s.bytes,
                ids: catalog.ids(i),
            })
            .collect(),
    };
    let mut text = serde_json::to_string(&body).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    text
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}
