//! Packet-access helpers shared by the XDP programs of this crate.
#![no_std]
