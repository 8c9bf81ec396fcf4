//! What a service and a backend are, independent of where they come from (config file,
//! CLI, tests).

use std::{net::IpAddr, time::Duration};

use lb_common::{FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        }
    }
}

/// What the affinity key is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Affinity {
    /// Client source address masked to the service prefix.
    SourceIp,
    /// Source address and port: plain flow hashing, each connection decided alone.
    None,
}

/// What a recovered backend gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failback {
    /// Only new clients; clients re-pinned away from it stay where they are.
    Sticky,
    /// Its former slots return to it, and their clients move back.
    Rebalance,
}

/// What happens to packets of a service without a healthy backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoBackend {
    Drop,
    Pass,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub vip: IpAddr,
    /// 0 = every port.
    pub port: u16,
    pub protocol: Protocol,
    pub affinity: Affinity,
    pub prefix_v4: u8,
    pub prefix_v6: u8,
    pub idle_timeout: Duration,
    pub failback: Failback,
    /// Maglev table size M (prime).
    pub table_size: u32,
    pub no_backend: NoBackend,
}

impl ServiceSpec {
    /// A service with the defaults of DESIGN.md.
    pub fn new(name: &str, vip: IpAddr, port: u16, protocol: Protocol) -> Self {
        Self {
            name: name.to_string(),
            vip,
            port,
            protocol,
            affinity: Affinity::SourceIp,
            prefix_v4: 32,
            prefix_v6: 128,
            idle_timeout: Duration::from_secs(600),
            failback: Failback::Sticky,
            table_size: 65537,
            no_backend: NoBackend::Drop,
        }
    }

    /// The prefix length that applies to this service's clients (its VIP's family).
    pub fn prefix_len(&self) -> u8 {
        match self.vip {
            IpAddr::V4(_) => self.prefix_v4,
            IpAddr::V6(_) => self.prefix_v6,
        }
    }
}

/// How to reach a backend on the wire: link addresses and egress interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    /// The backend's MAC (or its next hop's).
    pub mac: [u8; 6],
    /// The egress interface's own MAC.
    pub src_mac: [u8; 6],
    pub ifindex: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    pub address: IpAddr,
    pub weight: u32,
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
