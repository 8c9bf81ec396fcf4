//! The xlb controller library: loader, maps API and (later) daemon, config, CLI.
pub mod loader;
