//! `edgeplane agent`: the process beside the data plane. It registers with the control service,
//! reports health, fills the tiers from the manifest (peer first, then the S3 origin), hands the
//! data plane its signing keys and served prefixes (files it rereads on `POST /reload`, and the
//! pinned XDP maps when present), and serves its own `/metrics` and `/status`.
//!
//! A separate process on purpose: an agent bug or a stuck origin cannot stop serving; the data
//! plane keeps the last keys, prefixes and objects it was given.

pub mod config;
pub mod dataplane;
pub mod fill;
pub mod origin;
pub mod run;
pub mod store;

pub use config::AgentConfig;
pub use dataplane::{Dataplane, PrefixSink, TierSpec};
pub use run::run;
