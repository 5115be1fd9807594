//! `edgeplane agent`: the process beside the data plane. It registers with the control service,
//! reports health, fills the tiers from the manifest (peer first, then the S3 origin), hands the
//! data plane its signing keys and served prefixes (files it rereads on `POST /reload`, and the
//! pinned XDP maps when present), and serves its own `/metrics` and `/status`.
//!
//! A separate process on purpose: an agent bug or a stuck origin cannot stop serving; the data
//! plane keeps the last keys, prefixes and objects it was given.
//!
//! [`run`] starts it; each task lives in the module named for what it does: the control
//! service (`register`: registration and the health cycle; `health`: the report, `follow`: the data
//! plane's catalog, one listing then its change feed; `manifest`),
//! the fill ([`fill`]: the pure plan, and its I/O in `fill/pass.rs`), what is handed to the data
//! plane (`keys`, `prefixes`), and what the agent shows (`status`: `/metrics`, `/status`, the
//! progress line). They share an `Agent` (`state`).

pub mod config;
pub mod dataplane;
pub mod demand;
pub mod fill;
mod follow;
mod health;
mod held;
mod keys;
mod manifest;
pub mod origin;
mod prefixes;
mod register;
pub mod run;
mod state;
mod status;
pub mod store;

pub use config::{AgentConfig, ConfigError, SecretError};
pub use dataplane::{AdminError, Dataplane, PrefixSink, SinkError, TierSpec};
pub use origin::OriginError;
pub use run::{run, AgentError};
