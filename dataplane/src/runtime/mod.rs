//! The I/O side: one pinned glommio executor per core, each with its own `SO_REUSEPORT`
//! listeners (HTTP, and HTTPS when configured), serving connections with `sendfile` (HTTPS:
//! kernel TLS where the kernel can take it, else rustls in user space); a plain thread for the
//! admin listener and one for the tier watcher.
//!
//! Dependencies go one way, from the top down; no file imports a file above it:
//!
//! - `server`: the process: starts the executors, the admin listener, the tier watcher, turns
//!   signals into reloads and shutdown.
//! - `admin`, `tiers`, `watch`: the admin listener, the tier watcher and the catalog watch
//!   (inotify: objects added and removed without rescans) threads (over `shared`).
//! - `executor`: one executor's life: listeners, per-core timers, the accept loop; it spawns
//!   each connection into `tls` (HTTPS) or `conn` (plain HTTP).
//! - `tls`: the rustls handshake and the hand-over to kernel TLS (decided in
//!   `http::connection::handover`), then the userspace `Tls` transport; it hands the connection
//!   to `conn`'s request loop with a `Tls` or a `ktls::KernelTls` transport.
//! - `pull`: answering a miss from a pull under way (`crate::pull`): waiting for the size and
//!   for each range's bytes without blocking, then `sendfile` from the partly written file.
//! - `conn`: the request loop: drives an `http::connection::Connection` (bytes and `now` in,
//!   actions out) over any transport, answering with the catalog and the response heads.
//! - `park`: idle plain connections parked out of their tasks in a per-core epoll set, and
//!   handed back to a new `conn` task (named by the executor) when they turn readable.
//! - `ktls`: kernel TLS: the syscalls, the crypto state, the `KernelTls` transport.
//! - `transport`: the `Transport` trait, the plain transport, the `sendfile` body path,
//!   `send_all` and the bounded drain.
//! - `core`: one executor's state (`Core`: file cache, date, deadline sweeper, residency).
//! - `shared`: process-wide state (`Shared`: config, catalog, counters, connection caps, stop
//!   flag) and the reload; `reload` (the pure reload plan), `sys` (syscalls) and `privileges`
//!   are leaves.
//!
//! A plain request goes executor → conn (the `Connection` decides, `transport::Plain` reads and
//! sends); an HTTPS one goes executor → tls (handshake, hand-over) → conn (over `Tls` or
//! `KernelTls`).
//!
//! Nothing on the request path takes a lock or blocks on a disk (see `docs/design.md`).

mod admin;
mod conn;
mod core;
mod executor;
mod ktls;
mod park;
mod privileges;
mod pull;
mod reload;
mod server;
mod shared;
pub(crate) mod sys;
mod tiers;
mod tls;
mod transport;
mod watch;

pub use server::{io_memory_per_core, serve, ServeError};

/// Free and total bytes of the filesystem holding `path` (`statvfs`).
pub fn fs_space(path: &std::path::Path) -> std::io::Result<(u64, u64)> {
    sys::fs_space(path)
}

#[cfg(test)]
mod layering {
    //! The rule in the module docs, checked on the sources: no file in `runtime/` imports
    //! (`use super::x`, `super::x::…`, `crate::runtime::x`) a file that imports it back,
    //! directly or through a cycle.

    use std::collections::{BTreeMap, BTreeSet};

    /// The runtime files each runtime file names, by module name.
    fn imports() -> BTreeMap<String, BTreeSet<String>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/runtime");
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "rs") {
                let name = path.file_stem().unwrap().to_string_lossy().into_owned();
                files.insert(name, std::fs::read_to_string(&path).unwrap());
            }
        }
        let modules: BTreeSet<String> = files.keys().filter(|m| *m != "mod").cloned().collect();
        let mut graph = BTreeMap::new();
        for (name, text) in &files {
            if name == "mod" {
                continue;
            }
            let mut deps = BTreeSet::new();
            for prefix in ["super::", "crate::runtime::"] {
                for (at, _) in text.match_indices(prefix) {
                    let mut rest = &text[at + prefix.len()..];
                    while let Some(r) = rest.strip_prefix("super::") {
                        rest = r;
                    }
                    let names: Vec<&str> = match rest.strip_prefix('{') {
                        Some(group) => group[..group.find('}').unwrap_or(group.len())]
                            .split(',')
                            .map(|item| item.trim().split("::").next().unwrap_or(""))
                            .collect(),
                        None => vec![rest
                            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                            .next()
                            .unwrap_or("")],
                    };
                    for n in names {
                        if modules.contains(n) && n != name {
                            deps.insert(n.to_owned());
                        }
                    }
                }
            }
            graph.insert(name.clone(), deps);
        }
        graph
    }

    #[test]
    fn the_runtime_has_no_import_cycle() {
        let graph = imports();
        assert!(graph["conn"].contains("transport") && graph["tls"].contains("conn"));
        // Depth-first search for a back edge; the path is printed when one is found.
        fn visit(
            m: &str,
            graph: &BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<String>,
            done: &mut BTreeSet<String>,
        ) {
            if let Some(i) = path.iter().position(|p| p == m) {
                panic!("import cycle: {} -> {m}", path[i..].join(" -> "));
            }
            if done.contains(m) {
                return;
            }
            path.push(m.to_owned());
            for d in &graph[m] {
                visit(d, graph, path, done);
            }
            path.pop();
            done.insert(m.to_owned());
        }
        let mut done = BTreeSet::new();
        for m in graph.keys() {
            visit(m, &graph, &mut Vec::new(), &mut done);
        }
    }
}
