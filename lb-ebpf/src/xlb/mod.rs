//! The xlb program's modules, one per concern, in the order a packet meets them (the
//! path itself is `try_xlb` in main.rs): [`parse`] → [`service`] → [`balance`] →
//! [`forward`], with [`stats`] counting every verdict, [`maps`] declaring every map and
//! [`log`] reporting rare events (never on a hit or a pass-through); [`icmp`] takes ICMP
//! to a VIP off that path (errors join it again at `forward`), with [`csum`] for the
//! checksums it updates; [`frag`] gives a later fragment the ports (and service) it
//! lacks, and remembers a first fragment's. In tunnel mode `forward` writes the outer
//! header with [`encap`] (which the health-probe TC program shares) and answers a packet
//! too big for the egress MTU through [`toobig`]. [`probe`] is the health-probe TC
//! program's, beside the path: it shares `encap` and the maps, nothing else.
//!
//! Dependencies point one way: `parse` and `service` know nothing of balancing or
//! forwarding, `balance` nothing of packets, `forward` nothing of pins (of a service only its mode and tunnel source); only
//! `maps` and `stats` are shared. [`natsrc`] tells `balance` whether a client is in
//! its service's `nat_sources`; [`sample`] watches a forwarded packet and changes
//! nothing.

pub mod balance;
pub mod bound;
pub mod csum;
pub mod encap;
pub mod forward;
pub mod frag;
pub mod icmp;
pub mod log;
pub mod maps;
pub mod natsrc;
pub mod parse;
pub mod probe;
pub mod sample;
pub mod service;
pub mod stats;
pub mod toobig;
