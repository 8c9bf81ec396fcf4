//! The xlb controller: the domain model, config, state file, reconcile (intent → map
//! writes), the maps API and pinned state, the control API, daemon and CLI.
pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod display;
pub mod health;
pub mod loader;
pub mod maps;
pub mod metrics;
pub mod model;
pub mod neigh;
pub mod pin;
pub mod reconcile;
pub mod state;
