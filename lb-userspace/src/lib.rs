//! The xlb controller: the maps API, the balancer model that keeps the maps in step with
//! services and backends, pinned state, config, control API, daemon and CLI.
pub mod api;
pub mod balancer;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod display;
pub mod health;
pub mod metrics;
pub mod model;
pub mod neigh;
pub mod state;
