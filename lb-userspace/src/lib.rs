//! The xlb controller library: the maps API, the balancer model that keeps the maps in
//! step with services and backends, and (in later modules) daemon, config and CLI.
pub mod balancer;
pub mod loader;
pub mod maps;
pub mod model;
