//! Which service owns a packet: the VIP pre-filter, the VIP marker keys, and the service
//! lookup (the direct-mapped copy `XLB_SVC_FAST` first, then the services hash).
//!
//! Reads `XLB_VIP_FILTER`, `XLB_SVC_FAST` and `XLB_SERVICES` only; must not touch the
//! packet, the affinity table or the backends.

use lb_common::{
    Addr, PROTO_VIP_MARKER, ServiceKey, ServiceValue, Stat, fast_slot, vip_filter_bit_folded,
};

use super::{
    log,
    maps::{SERVICES, SVC_FAST, VIP_FILTER},
    parse::Flow,
    stats,
};

/// The VIP pre-filter for a destination folded to one word (IPv4: the address; IPv6:
/// the XOR of its four words): false means no service has this destination address.
#[inline(always)]
pub fn vip_filter_hit(folded: u32) -> bool {
    let (word, bit) = vip_filter_bit_folded(folded);
    match VIP_FILTER.get(word) {
        Some(w) => *w & bit != 0,
        None => false,
    }
}

/// Is `addr` a configured VIP? The pre-filter bit must already be known set.
#[inline(always)]
fn is_vip(addr: &Addr, family: u8) -> bool {
    vip_flags(addr, family).is_some()
}

/// The flags of `addr`'s VIP marker (`SVC_F_VIP_MARKER` and the per-VIP bits such as
/// `SVC_F_ECHO_REPLY`); `None` when `addr` is no VIP.
#[inline(always)]
pub fn vip_flags(addr: &Addr, family: u8) -> Option<u32> {
    vip_marker(addr, family).map(|v| v.flags)
}

/// `addr`'s VIP marker (its flags and `lb_common::MARKER_SOLE` ports); `None` when
/// `addr` is no VIP.
#[inline(always)]
pub fn vip_marker(addr: &Addr, family: u8) -> Option<ServiceValue> {
    let key = ServiceKey {
        addr: *addr,
        port_be: 0,
        proto: PROTO_VIP_MARKER,
        family,
    };
    // SAFETY: hash map values are replaced whole (RCU), never written in place.
    unsafe { SERVICES.get(key) }.copied()
}

/// A packet xlb cannot balance: dropped (and counted as `reason`) when it is addressed
/// to a VIP, otherwise passed untouched.
#[inline(always)]
pub fn not_balanceable(daddr: &Addr, family: u8, reason: Stat) -> Result<u32, ()> {
    if is_vip(daddr, family) {
        log::unbalanceable(reason);
        stats::drop(reason)
    } else {
        stats::pass(Stat::PassNotService)
    }
}

/// The service of `flow`: the one of its exact port, else the one of every port (port 0).
#[inline(always)]
pub fn of(flow: &Flow) -> Option<ServiceValue> {
    let mut key = ServiceKey {
        addr: flow.daddr,
        port_be: flow.dport,
        proto: flow.proto,
        family: flow.family,
    };
    match lookup(&key) {
        Some(s) => Some(s),
        None => {
            key.port_be = 0;
            lookup(&key)
        }
    }
}

/// The service of `key`: from `XLB_SVC_FAST` when its slot holds the key and was not
/// being written, else from the services hash.
#[inline(always)]
fn lookup(key: &ServiceKey) -> Option<ServiceValue> {
    if let Some(e) = SVC_FAST.get_ptr(fast_slot(key)) {
        // SAFETY: a live slot; the sequence word tells a torn copy (FastService docs).
        let (s1, k, v, s2) = unsafe {
            let seq = core::ptr::addr_of!((*e).seq);
            let s1 = core::ptr::read_volatile(seq);
            let k = core::ptr::read_volatile(core::ptr::addr_of!((*e).key));
            let v = core::ptr::read_volatile(core::ptr::addr_of!((*e).value));
            (s1, k, v, core::ptr::read_volatile(seq))
        };
        if s1 & 1 == 0 && s1 == s2 && k == *key {
            return Some(v);
        }
    }
    // SAFETY: hash map values are replaced whole (RCU), never written in place.
    unsafe { SERVICES.get(*key) }.copied()
}
