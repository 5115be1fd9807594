//! The admin listener: `GET /metrics`, `GET /healthz`, `GET /catalog`,
//! `GET /catalog/changes`, `GET /demand`, `POST /reload`, `POST /drain`.
//!
//! One plain thread, off the serving cores, one request per connection. It reads the per-core
//! counters (summing on scrape) and may swap the catalog; it never touches a client connection.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::shared::{Rescan, Shared};
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
    let (path, query) = path.split_once('?').unwrap_or((&path, ""));
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
        ("GET", "/catalog") => match CatalogQuery::parse(query) {
            Ok(q) => {
                let body = catalog_json(&shared.catalog.load(), &shared.catalog.epoch(), &q);
                let sent = respond(&mut stream, "200 OK", "application/json", &body);
                // A page of a million ids is tens of MB, freed here: give it back.
                drop(body);
                crate::catalog::give_back_freed_memory();
                sent
            }
            Err(e) => respond(
                &mut stream,
                "400 Bad Request",
                "text/plain",
                &format!("{e}\n"),
            ),
        },
        ("GET", "/catalog/changes") => match ChangesQuery::parse(query) {
            Ok(q) => {
                let changes = shared.catalog.changes(q.since, q.epoch.as_deref(), q.limit);
                let body = changes_json(&shared.catalog.load(), &changes);
                respond(&mut stream, "200 OK", "application/json", &body)
            }
            Err(e) => respond(
                &mut stream,
                "400 Bad Request",
                "text/plain",
                &format!("{e}\n"),
            ),
        },
        ("GET", "/demand") => match demand_top(query) {
            Ok(n) => {
                let snapshot = shared.metrics.demand().top(n);
                let mut body = serde_json::to_string(&snapshot).unwrap_or_else(|_| "{}".into());
                body.push('\n');
                respond(&mut stream, "200 OK", "application/json", &body)
            }
            Err(e) => respond(&mut stream, "400 Bad Request", "text/plain", &e),
        },
        ("POST", "/reload") => {
            let rescan = match reload_rescan(query) {
                Ok(r) => r,
                Err(e) => return respond(&mut stream, "400 Bad Request", "text/plain", &e),
            };
            let reloaded = shared.reload(rescan);
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
            body.push_str(&match &reloaded.catalog {
                Ok(c) => format!(
                    "reloaded: generation {} with {} objects\n",
                    c.generation,
                    c.len()
                ),
                Err(c) => format!(
                    "catalog: not rescanned (tiers unchanged), generation {} with {} objects\n",
                    c.generation,
                    c.len()
                ),
            });
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
        (
            _,
            "/metrics" | "/healthz" | "/reload" | "/catalog" | "/catalog/changes" | "/demand"
            | "/drain",
        ) => respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n",
        ),
        _ => respond(&mut stream, "404 Not Found", "text/plain", "not found\n"),
    }
}

/// Default and largest `top` of `GET /demand`.
const DEMAND_TOP_DEFAULT: usize = 100;
const DEMAND_TOP_MAX: usize = 10_000;

/// `top=N` from the query of `GET /demand` (default 100, at most 10,000).
fn demand_top(query: &str) -> Result<usize, String> {
    let mut top = DEMAND_TOP_DEFAULT;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("top", v)) => {
                top = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=DEMAND_TOP_MAX).contains(n))
                    .ok_or_else(|| {
                        format!("top={v:?}: must be a number from 1 to {DEMAND_TOP_MAX}\n")
                    })?
            }
            _ => return Err(format!("unknown query parameter {pair:?} (only top=N)\n")),
        }
    }
    Ok(top)
}

/// `POST /reload?rescan=0|1`: 1 (the default) rescans the catalog; 0 only when the reloaded
/// config changed the tiers.
fn reload_rescan(query: &str) -> Result<Rescan, String> {
    let mut rescan = Rescan::Always;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        rescan = match pair.split_once('=') {
            Some(("rescan", "1")) => Rescan::Always,
            Some(("rescan", "0")) => Rescan::IfTiersChanged,
            Some(("rescan", v)) => return Err(format!("rescan={v:?}: must be 0 or 1\n")),
            _ => {
                return Err(format!(
                    "unknown query parameter {pair:?} (only rescan=0 or rescan=1)\n"
                ))
            }
        };
    }
    Ok(rescan)
}

/// Ids per `GET /catalog` page unless `limit` says otherwise.
const CATALOG_PAGE_DEFAULT: usize = 100_000;
/// Most ids one `GET /catalog` page may ask for.
const CATALOG_PAGE_MAX: usize = 1_000_000;

/// `GET /catalog?after=ID&limit=N`.
#[derive(Debug, PartialEq)]
struct CatalogQuery {
    after: Option<String>,
    limit: usize,
}

impl CatalogQuery {
    fn parse(query: &str) -> Result<CatalogQuery, String> {
        let mut q = CatalogQuery {
            after: None,
            limit: CATALOG_PAGE_DEFAULT,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                // Ids need no percent-decoding: they are [A-Za-z0-9._-] only.
                "after" if crate::content_id::is_valid(value) => q.after = Some(value.into()),
                "after" => return Err(format!("after: not a content id: {value:?}")),
                "limit" => {
                    q.limit = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=CATALOG_PAGE_MAX).contains(n))
                        .ok_or_else(|| {
                            format!("limit: a number from 1 to {CATALOG_PAGE_MAX}: {value:?}")
                        })?
                }
                _ => return Err(format!("unknown parameter {key:?} (after, limit)")),
            }
        }
        Ok(q)
    }
}

/// Changes per `GET /catalog/changes` answer unless `limit` says otherwise.
const CHANGES_DEFAULT: usize = 10_000;
/// Most changes one answer may carry.
const CHANGES_MAX: usize = 100_000;

/// `GET /catalog/changes?since=SEQ&epoch=E&limit=N`.
#[derive(Debug, PartialEq)]
struct ChangesQuery {
    since: u64,
    epoch: Option<String>,
    limit: usize,
}

impl ChangesQuery {
    fn parse(query: &str) -> Result<ChangesQuery, String> {
        let mut since = None;
        let mut q = ChangesQuery {
            since: 0,
            epoch: None,
            limit: CHANGES_DEFAULT,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "since" => {
                    since =
                        Some(value.parse().map_err(|_| {
                            format!("since: a change number (0 or more): {value:?}")
                        })?)
                }
                "epoch" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    q.epoch = Some(value.into())
                }
                "epoch" => return Err(format!("epoch: hex digits, as answered: {value:?}")),
                "limit" => {
                    q.limit = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=CHANGES_MAX).contains(n))
                        .ok_or_else(|| {
                            format!("limit: a number from 1 to {CHANGES_MAX}: {value:?}")
                        })?
                }
                _ => return Err(format!("unknown parameter {key:?} (since, epoch, limit)")),
            }
        }
        q.since = since.ok_or("since: required (the `seq` of the last answer or listing)")?;
        Ok(q)
    }
}

/// A tier's summary, as `GET /catalog` and `GET /catalog/changes` give it.
#[derive(serde::Serialize)]
struct TierJson<'a> {
    name: &'a str,
    kind: &'a str,
    up: bool,
    objects: u64,
    bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ids: Option<Vec<&'a str>>,
}

fn tiers_json<'a>(
    catalog: &'a crate::catalog::Catalog,
    mut ids: Option<Vec<Vec<&'a str>>>,
) -> Vec<TierJson<'a>> {
    catalog
        .tiers
        .iter()
        .zip(&catalog.tier_states)
        .enumerate()
        .map(|(i, (t, s))| TierJson {
            name: &t.name,
            kind: t.kind.as_str(),
            up: s.error.is_none(),
            objects: s.objects,
            bytes: s.bytes,
            ids: ids.as_mut().map(|ids| std::mem::take(&mut ids[i])),
        })
        .collect()
}

/// `GET /catalog/changes`: the changes after `since` (ids added or removed, with their tier),
/// or `reset`, with the tiers' counts from the current snapshot.
fn changes_json(catalog: &crate::catalog::Catalog, changes: &crate::catalog::Changes) -> String {
    #[derive(serde::Serialize)]
    struct Change<'a> {
        seq: u64,
        op: &'a str,
        id: &'a str,
        tier: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Body<'a> {
        epoch: &'a str,
        reset: bool,
        seq: u64,
        latest: u64,
        more: bool,
        generation: u64,
        bytes_counted: bool,
        tiers: Vec<TierJson<'a>>,
        changes: Vec<Change<'a>>,
    }
    let body = Body {
        epoch: &changes.epoch,
        reset: changes.reset,
        seq: changes.seq,
        latest: changes.latest,
        more: changes.seq < changes.latest,
        generation: catalog.generation,
        bytes_counted: catalog.bytes_counted(),
        tiers: tiers_json(catalog, None),
        changes: changes
            .changes
            .iter()
            .map(|c| Change {
                seq: c.seq,
                op: if c.removed { "remove" } else { "add" },
                id: &c.id,
                tier: catalog
                    .tiers
                    .get(usize::from(c.tier))
                    .map_or("", |t| t.name.as_str()),
            })
            .collect(),
    };
    let mut text = serde_json::to_string(&body).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    text
}

/// `GET /catalog`: what each tier serves, for the agent; one page of ids (in id order, after
/// `after`), with the id to continue after in `next` (null on the last page), and the change
/// feed's `epoch` and `seq` of the snapshot listed (follow `GET /catalog/changes` from there).
fn catalog_json(catalog: &crate::catalog::Catalog, epoch: &str, query: &CatalogQuery) -> String {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        generation: u64,
        epoch: &'a str,
        seq: u64,
        bytes_counted: bool,
        tiers: Vec<TierJson<'a>>,
        next: Option<&'a str>,
    }
    let (page, more) = catalog.page(query.after.as_deref(), query.limit);
    let mut ids: Vec<Vec<&str>> = vec![Vec::new(); catalog.tiers.len()];
    for (id, entry) in &page {
        ids[usize::from(entry.tier)].push(id);
    }
    let body = Body {
        generation: catalog.generation,
        epoch,
        seq: catalog.seq,
        bytes_counted: catalog.bytes_counted(),
        next: if more {
            page.last().map(|(id, _)| *id)
        } else {
            None
        },
        tiers: tiers_json(catalog, Some(ids)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_query_needs_since_and_checks_epoch_and_limit() {
        assert_eq!(
            ChangesQuery::parse("since=42&epoch=00ff&limit=5").unwrap(),
            ChangesQuery {
                since: 42,
                epoch: Some("00ff".into()),
                limit: 5
            }
        );
        assert_eq!(
            ChangesQuery::parse("since=0").unwrap().limit,
            CHANGES_DEFAULT
        );
        for bad in [
            "",
            "limit=5",
            "since=-1",
            "since=x",
            "since=1&limit=0",
            "since=1&limit=100001",
            "since=1&epoch=",
            "since=1&epoch=zz",
            "since=1&after=a",
        ] {
            assert!(ChangesQuery::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn catalog_query_takes_after_and_limit_and_refuses_the_rest() {
        assert_eq!(
            CatalogQuery::parse("").unwrap(),
            CatalogQuery {
                after: None,
                limit: CATALOG_PAGE_DEFAULT
            }
        );
        assert_eq!(
            CatalogQuery::parse("after=a-1.ts&limit=10").unwrap(),
            CatalogQuery {
                after: Some("a-1.ts".into()),
                limit: 10
            }
        );
        for bad in [
            "limit=0",
            "limit=x",
            "limit=1000001",
            "after=..%2f",
            "after=.tmp",
            "sort=desc",
        ] {
            assert!(CatalogQuery::parse(bad).is_err(), "{bad}");
        }
    }
}
