//! The simulated AWS side (`edgeplane cloud`): fleet registry with health intake, catalog and
//! fill manifests from a popularity model, steering with signed URLs, and an S3 origin.
//! docs/control-api.md describes the HTTP API and the configuration.
//!
//! The logic lives in pure modules ([`popularity`], [`placement`], [`steering`], [`state`]);
//! [`server`] is a thin axum layer over [`state::CloudState`] behind a mutex; [`store`] keeps
//! the state durable (SQLite by default, PostgreSQL for several instances); [`origin`] talks
//! to S3 through `object_store`; [`generate`] makes and uploads a synthetic catalog; [`cli`] is
//! the `edgeplane cloud` command.

pub mod cli;
pub mod clock;
pub mod config;
pub mod content_steering;
pub mod demand;
pub mod encode;
pub mod fleet;
pub mod generate;
pub mod held;
pub mod media;
pub mod origin;
pub mod placement;
pub mod player;
pub mod popularity;
pub mod server;
pub mod state;
pub mod steering;
pub mod store;
