//! Fragments (README, "Fragments and IPv6 extension headers"). A first fragment carries
//! the ports and is balanced like any packet; its ports are remembered in `XLB_FRAGS`
//! under (source, destination, identification, protocol) for `FRAG_TIMEOUT_NS`. A later
//! fragment carries no ports: it takes its first fragment's when they are remembered,
//! else those of the VIP's only service of its protocol that routes by source address
//! alone (the VIP marker says which, `lb_common::MARKER_SOLE`); otherwise the caller
//! drops and counts it. Either way the packet then meets the affinity table as the
//! client's other packets do, so every fragment of a client reaches the same backend.
//!
//! Reads and writes `XLB_FRAGS`, reads the services (through `service`); must not touch
//! the packet, the affinity table or the backends.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use lb_common::{Addr, FRAG_TIMEOUT_NS, FragKey, FragValue, ServiceValue, marker_sole_port};

use super::{maps::FRAGS, parse::Flow, service};

/// A later fragment of TCP or UDP (no ports) to an address that passed the pre-filter.
/// Addresses network order, `id` host order.
pub struct Later {
    pub daddr: Addr,
    pub saddr: Addr,
    pub family: u8,
    pub proto: u8,
    pub id: u32,
}

#[inline(always)]
fn key(saddr: &Addr, daddr: &Addr, id: u32, proto: u8, family: u8) -> FragKey {
    FragKey {
        saddr: *saddr,
        daddr: *daddr,
        id,
        proto,
        family,
        _pad: [0; 2],
    }
}

/// Remembers the ports of `flow`, the first fragment `id` of its packet.
#[inline(always)]
pub fn track(flow: &Flow, id: u32) {
    let k = key(&flow.saddr, &flow.daddr, id, flow.proto, flow.family);
    let v = FragValue {
        sport_be: flow.sport,
        dport_be: flow.dport,
        _pad: 0,
        // SAFETY: a helper without side effects.
        seen_ns: unsafe { bpf_ktime_get_coarse_ns() },
    };
    // A full map evicts its least recently used entry; a failure only costs the later
    // fragments the fallback.
    let _ = FRAGS.insert(k, v, 0);
}

/// The flow (with its first fragment's ports, or the only service's) and the service of
/// a later fragment; `None`: neither is known, the caller drops it if it is to a VIP.
#[inline(always)]
pub fn later(f: &Later) -> Option<(Flow, ServiceValue)> {
    let k = key(&f.saddr, &f.daddr, f.id, f.proto, f.family);
    // SAFETY: the value is copied at once; a concurrent update only changes which
    // fragment's ports are read, both of the same packet.
    if let Some(v) = unsafe { FRAGS.get(k) }.copied() {
        // SAFETY: a helper without side effects.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        if now.wrapping_sub(v.seen_ns) <= FRAG_TIMEOUT_NS {
            let flow = flow_of(f, v.sport_be, v.dport_be);
            if let Some(svc) = service::of(&flow) {
                return Some((flow, svc));
            }
        }
    }
    let marker = service::vip_marker(&f.daddr, f.family)?;
    let port = marker_sole_port(&marker, f.proto)?;
    let flow = flow_of(f, 0, port);
    let svc = service::of(&flow)?;
    Some((flow, svc))
}

#[inline(always)]
fn flow_of(f: &Later, sport: u16, dport: u16) -> Flow {
    Flow {
        daddr: f.daddr,
        saddr: f.saddr,
        family: f.family,
        proto: f.proto,
        sport,
        dport,
        first_fragment: None,
    }
}
