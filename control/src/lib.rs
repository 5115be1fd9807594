//! edgeplane control: the agent that runs beside the data plane (fill, health, prefixes, signing
//! keys; `edgeplane agent`) and the simulated AWS side that drives a fleet of appliances (fleet
//! registry, catalog and fill manifests, steering with signed URLs; `edgeplane cloud`).
//!
//! The two talk JSON over HTTP; `edgeplane_api` has every type on the wire.

pub mod agent;
pub mod cloud;
pub mod s3;
