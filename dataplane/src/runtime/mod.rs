//! The I/O side: one pinned glommio executor per core, each with its own `SO_REUSEPORT`
//! listeners (HTTP, and HTTPS when configured), serving connections with `sendfile` (HTTPS:
//! rustls in user space); a plain thread for the admin listener.
//!
//! Nothing on the request path takes a lock or blocks on a disk (see `docs/design.md`).

mod admin;
mod conn;
mod core;
// Only the start-up probe is used so far: handing connections to the kernel needs a kernel
// with the `tls` module to be tested on (see the module docs).
#[allow(dead_code)]
mod ktls;
mod privileges;
mod reload;
mod server;
mod sys;
mod tiers;
mod tls;

pub use server::{io_memory_per_core, serve, ServeError};
