//! edgeplane's data plane: a thread-per-core HTTP/1.1 range server for video segments.
//!
//! Layers, from pure to syscall:
//! - [`config`], [`content_id`], [`http`]: pure logic, unit and property tested, no I/O.
//! - [`tls`]: certificates (PEM, SNI, reload) and the rustls server configuration.
//! - [`host`]: the config checked against this host (CPUs, tier directories, certificate
//!   files), and `Config::load` = read + parse + that check.
//! - [`access`]: who may be served (signed URLs, served prefixes without XDP).
//! - [`topology`], [`placement`]: the NUMA nodes (read from sysfs under a root) and where
//!   executors and cold reads run on them (pure).
//! - [`catalog`]: what exists on which tier (filesystem scans, atomic swaps).
//! - [`pull`]: pull-through on a miss (upstream fetch threads, slices, coalescing, admission).
//! - [`metrics`]: per-core counters and latency histograms, Prometheus rendering.
//! - [`runtime`]: glommio executors, connections, `sendfile`, the admin listener.
//!
//! The XDP userspace (`edgeplane-xdp`) is a crate of its own; the CLI, the host preflight and the
//! terminal view live in the `edgeplane` binary. This library links no control crate.
#![warn(missing_docs)]

pub mod access;
pub mod catalog;
pub mod config;
pub mod content_id;
pub mod demand;
pub mod host;
pub mod http;
pub mod metrics;
pub mod placement;
pub mod pull;
pub mod runtime;
pub mod tls;
pub mod topology;
