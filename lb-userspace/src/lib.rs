//! The xlb controller: the domain model, config, state file, reconcile (intent → map
//! writes), the maps API and pinned state, the control API, daemon and CLI.
pub mod announce;
pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod decap;
pub mod display;
pub mod docs;
pub mod drain;
pub mod egress;
pub mod health;
pub mod load;
pub mod metrics;
pub mod model;
pub mod neigh;
pub mod reconcile;
pub mod state;
pub mod watch;
