//! The xlb program's modules, one per concern, in the order a packet meets them (the
//! path itself is `try_xlb` in main.rs): [`parse`] → [`service`] → [`balance`] →
//! [`forward`], with [`stats`] counting every verdict, [`maps`] declaring every map and
//! [`log`] reporting rare events (never on a hit or a pass-through).
//!
//! Dependencies point one way: `parse` and `service` know nothing of balancing or
//! forwarding, `balance` nothing of packets, `forward` nothing of services or pins; only
//! `maps` and `stats` are shared.

pub mod balance;
pub mod forward;
pub mod log;
pub mod maps;
pub mod parse;
pub mod service;
pub mod stats;
