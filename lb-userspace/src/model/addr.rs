//! Addresses as the maps hold them, and how a backend is reached on the wire.
//!
//! Owns: conversions between `IpAddr` and the map layouts of lb-common, and [`Link`].
//! Must not touch: the maps themselves.

use std::net::IpAddr;

use lb_common::{FAMILY_V4, FAMILY_V6};

/// How to reach a backend on the wire: link addresses and egress interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Link {
    /// The backend's MAC (or its next hop's).
    pub mac: [u8; 6],
    /// The egress interface's own MAC.
    pub src_mac: [u8; 6],
    pub ifindex: u32,
}

/// Address as map bytes (network order, IPv4 in bytes 0..4) and family.
pub fn addr_bytes(addr: IpAddr) -> ([u8; 16], u8) {
    let mut out = [0u8; 16];
    match addr {
        IpAddr::V4(a) => {
            out[..4].copy_from_slice(&a.octets());
            (out, FAMILY_V4)
        }
        IpAddr::V6(a) => (a.octets(), FAMILY_V6),
    }
}

/// Address as a map [`lb_common::Addr`] and family.
pub fn addr_words(addr: IpAddr) -> (lb_common::Addr, u8) {
    let (b, f) = addr_bytes(addr);
    (lb_common::addr_from_bytes(&b), f)
}

/// The inverse of [`addr_words`].
pub fn addr_from_words(words: &lb_common::Addr, family: u8) -> IpAddr {
    addr_from_bytes(&lb_common::addr_to_bytes(words), family)
}

/// The inverse of [`addr_bytes`].
pub fn addr_from_bytes(bytes: &[u8; 16], family: u8) -> IpAddr {
    if family == FAMILY_V6 {
        IpAddr::from(*bytes)
    } else {
        IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    }
}

/// An IPv6 link-local address (fe80::/10): usable only together with a zone (an
/// interface), which neither the neighbour lookup nor the health checks carry.
pub fn is_ipv6_link_local(addr: IpAddr) -> bool {
    matches!(addr, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80)
}
