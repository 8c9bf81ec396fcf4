//! The xlb program's modules, one per concern, in the order a packet meets them (the
//! path itself is `try_xlb` in main.rs): [`parse`] → [`service`] → [`balance`] →
//! [`forward`], with [`stats`] counting every verdict and [`maps`] declaring every map.
//!
//! Dependencies point one way: `parse` and `service` know nothing of balancing or
//! forwarding, `balance` nothing of packets, `forward` nothing of services or pins; only
//! `maps` and `stats` are shared. [`natsrc`] tells `balance` whether a client is in
//! its service's `nat_sources`; [`sample`] watches a forwarded packet and changes
//! nothing.

pub mod balance;
pub mod bound;
pub mod forward;
pub mod maps;
pub mod natsrc;
pub mod parse;
pub mod sample;
pub mod service;
pub mod stats;
