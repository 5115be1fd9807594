//! The I/O side: one pinned glommio executor per core, each with its own `SO_REUSEPORT`
//! listener, serving connections with `sendfile`; a plain thread for the admin listener.
//!
//! Nothing on the request path takes a lock or blocks on a disk (see `docs/design.md`).

mod admin;
mod conn;
mod core;
mod server;
mod sys;

pub use server::{io_memory_per_core, serve, ServeError};
