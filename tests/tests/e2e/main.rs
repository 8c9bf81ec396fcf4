//! Tier 3: the real `xlb` daemon in a network-namespace lab, real servers on the
//! backends, real TCP and UDP clients from hundreds of source addresses.
//!
//! Run one test alone: `cargo xtask test --tier e2e -- NAME` (e.g. `failover`).

mod control;
mod daemon;
mod dataplane;
mod ecmp;
mod events;
mod health;
mod maintenance;
mod nat;
mod realnet;
mod scenarios;
mod transients;
mod tunctl;
mod tunnel;
mod watch;
