//! The ECMP lab's scenarios, shared by `cargo xtask lab-ecmp` (which narrates their
//! reports) and the end-to-end test (which asserts on them).
//!
//! Owns: the services the nodes run and each scenario's steps and counts. Must not
//! touch: the topology (mod.rs) and BIRD's configuration (bird.rs).

use std::net::IpAddr;

use crate::lab::{HTTP_PORT, UDP_PORT, service_block};

use super::{EcmpLab, vip4, vip6};

/// HTTP checks every 200 ms, 2 failures to fall, 2 passes to rise.
pub const HTTP_HEALTH: &str = "health = { kind = \"http\", port = 80, path = \"/\", interval = \"200ms\", timeout = \"100ms\", rise = 2, fall = 2 }\n";
pub const UDP_HEALTH: &str = "health = { kind = \"udp\", port = 53, send = \"ping\", interval = \"200ms\", timeout = \"100ms\", rise = 2, fall = 2 }\n";

/// The services every node runs, with backends `be` (indices): web4 and dns4 share VIP 1
/// (IPv4), web6 and dns6 VIP 1 (IPv6).
pub fn services(lab: &EcmpLab, be: &[usize]) -> String {
    let v4: Vec<(IpAddr, u32)> = be
        .iter()
        .map(|i| (IpAddr::V4(lab.backends[*i].addr4), 1))
        .collect();
    let v6: Vec<(IpAddr, u32)> = be
        .iter()
        .map(|i| (IpAddr::V6(lab.backends[*i].addr6), 1))
        .collect();
    let mut s = String::new();
    s.push_str(&service_block(
        "web4",
        &vip4(1).to_string(),
        HTTP_PORT,
        "tcp",
        HTTP_HEALTH,
        &v4,
    ));
    s.push_str(&service_block(
        "dns4",
        &vip4(1).to_string(),
        UDP_PORT,
        "udp",
        UDP_HEALTH,
        &v4,
    ));
    s.push_str(&service_block(
        "web6",
        &vip6(1).to_string(),
        HTTP_PORT,
        "tcp",
        HTTP_HEALTH,
        &v6,
    ));
    s.push_str(&service_block(
        "dns6",
        &vip6(1).to_string(),
        UDP_PORT,
        "udp",
        UDP_HEALTH,
        &v6,
    ));
    s
}
