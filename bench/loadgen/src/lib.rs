//! `edgeplane-load`: an HTTP/1.1 and HTTPS load generator for video edge servers.
//!
//! - closed loop (N connections, back-to-back requests) and open loop at a target rate, with
//!   latency measured from each request's intended start (coordinated-omission corrected);
//! - a video player model: viewers pick titles by Zipf popularity, fetch segments as byte
//!   ranges, switch bitrate from measured throughput and their buffer; or (`--steering`) ask the
//!   control service where to play from and walk the answer's locations on failures, as real
//!   players walk content-steering pathways ([`steer`]);
//! - every response checked: status, Content-Length, Content-Range and every body byte against
//!   the catalog's content, a function of (object name, offset) ([`pattern`]).
//!
//! The pure parts (sampling, ABR, buffer, latency math, report math) are in their own modules
//! with unit tests; [`run`] drives the sockets, one pinned thread per core; [`remote`] spreads
//! one scenario over several generator machines and merges their results exactly.

pub mod http;
pub mod pattern;
pub mod player;
pub mod remote;
pub mod run;
pub mod stats;
pub mod steer;
mod steered;
pub mod zipf;

pub use remote::{run_distributed, Distributed};
pub use run::{
    generator_cpus, run, run_part, Config, Live, Object, Part, PlayerConfig, RangeClass,
    SteeringConfig, Target, Validation, Workload,
};
pub use stats::Report;
