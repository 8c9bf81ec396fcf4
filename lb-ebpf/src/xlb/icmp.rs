//! ICMP and ICMPv6 addressed to a VIP (README, "ICMP"):
//! - an error (ICMPv4 destination unreachable of any code — fragmentation needed among
//!   them — and time exceeded; ICMPv6 destination unreachable, packet too big and time
//!   exceeded) whose inner packet was sent from a service (inner source = this VIP, inner
//!   source port = the service's port, inner destination = a client) goes on to the
//!   backend that client is pinned to, or would be hashed to, by the service's forwarding
//!   mode (DSR: unchanged but for the MACs; tunnel: encapsulated, never answered when too
//!   big): the backend, which sent the inner packet, learns the path MTU. It is looked up with the affinity rules of `lb_common`, never
//!   pinned: an ICMP error must not choose a client's backend;
//! - an echo request is answered here (XDP_TX) when the VIP's marker says so
//!   (`daemon.icmp_echo = "reply"`), else passed to the local stack;
//! - anything else (other types, an inner packet of no service, a cut header) passes
//!   untouched, as before xlb knew ICMP.
//!
//! Reads the services (through `service`), the affinity table and the Maglev and
//! backends arrays; writes the packet only to turn an echo request into its reply. Must
//! not write affinity entries.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_TX},
    helpers::bpf_ktime_get_coarse_ns,
    programs::XdpContext,
};
use lb_common::{
    Addr, FAMILY_V4, NO_BACKEND, PROTO_TCP, PROTO_UDP, SVC_F_ECHO_REPLY, ServiceValue, Stat,
    affinity::{
        self, Verdict,
        table::{self, Found},
    },
};
use lb_ebpf::{load_u32, ptr_at, store_u32};

use super::{
    balance::{self, Target},
    csum, forward,
    maps::{AFFINITY, AFFINITY_BUCKETS, AFFINITY_SEED, BACKENDS, MAGLEV},
    parse::Flow,
    service, stats,
};

/// ICMPv4 types (RFC 792).
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
/// ICMPv6 types (RFC 4443).
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMPV6_TIME_EXCEEDED: u8 = 3;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// TTL / hop limit of an echo reply (Linux's default).
const REPLY_TTL: u8 = 64;
/// The ICMP header before an error's inner packet (type, code, checksum, 4 bytes).
const ICMP_HLEN: usize = 8;

/// Where an ICMP message to a VIP-filter address sits.
pub struct IcmpAt {
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the ICMP header.
    pub l4: usize,
    pub family: u8,
    /// Destination, network order (passed the VIP pre-filter).
    pub daddr: Addr,
}

/// An ICMP message to a possible VIP: error → backend, echo → reply or pass, else pass.
#[inline(always)]
pub fn handle(ctx: &XdpContext, at: &IcmpAt) -> Result<u32, ()> {
    let Some(h) = ptr_at::<[u8; ICMP_HLEN]>(ctx, at.l4) else {
        return stats::pass(Stat::PassNotService);
    };
    // SAFETY: ptr_at checked the bounds.
    let ty = unsafe { (*h)[0] };
    let v4 = at.family == FAMILY_V4;
    if (v4 && ty == ICMP_ECHO) || (!v4 && ty == ICMPV6_ECHO_REQUEST) {
        return echo(ctx, at);
    }
    let error = if v4 {
        ty == ICMP_DEST_UNREACH || ty == ICMP_TIME_EXCEEDED
    } else {
        ty == ICMPV6_DEST_UNREACH || ty == ICMPV6_PACKET_TOO_BIG || ty == ICMPV6_TIME_EXCEEDED
    };
    let flow = if !error {
        None
    } else if v4 {
        inner_v4(ctx, at)
    } else {
        inner_v6(ctx, at)
    };
    match flow {
        Some(flow) => error_to_backend(ctx, &flow),
        None => stats::pass(Stat::PassNotService),
    }
}

/// An error about `flow` (the client's view of the inner packet): to the client's
/// backend when a service owns it, by rule 5 when it has no backend, else passed.
#[inline(always)]
fn error_to_backend(ctx: &XdpContext, flow: &Flow) -> Result<u32, ()> {
    let Some(svc) = service::of(flow) else {
        return stats::pass(Stat::PassNotService);
    };
    let ss = stats::service(svc.id)?;
    let Some(to) = lookup(&svc, flow) else {
        return balance::no_backend(&svc, ss);
    };
    let action = forward::to_backend(ctx, &svc, ss, &flow.saddr, to, true)?;
    if action != XDP_DROP {
        ss.icmp_errors += 1;
    }
    Ok(action)
}

/// The inner packet of an ICMPv4 error as the flow of the client it was sent to:
/// `daddr`/`dport` the VIP and service port (its source), `saddr`/`sport` the client.
#[inline(always)]
fn inner_v4(ctx: &XdpContext, at: &IcmpAt) -> Option<Flow> {
    let l3 = at.l4 + ICMP_HLEN;
    let ip = ptr_at::<[u8; 20]>(ctx, l3)? as *const u8;
    // SAFETY (all reads of `ip`): within the 20 bytes ptr_at checked.
    let (vihl, proto) = unsafe { (*ip, *ip.add(9)) };
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < 20 || (proto != PROTO_TCP && proto != PROTO_UDP) {
        return None;
    }
    let (src, dst) = unsafe { (load_u32(ip, 12), load_u32(ip, 16)) };
    if src != at.daddr[0] {
        return None;
    }
    let (sport, dport) = ports(ctx, l3 + ihl)?;
    Some(Flow {
        daddr: [src, 0, 0, 0],
        saddr: [dst, 0, 0, 0],
        family: at.family,
        proto,
        sport: dport,
        dport: sport,
        first_fragment: None,
    })
}

/// [`inner_v4`] for an ICMPv6 error (the inner header without extension headers).
#[inline(always)]
fn inner_v6(ctx: &XdpContext, at: &IcmpAt) -> Option<Flow> {
    let l3 = at.l4 + ICMP_HLEN;
    let ip = ptr_at::<[u8; 40]>(ctx, l3)? as *const u8;
    // SAFETY (all reads of `ip`): within the 40 bytes ptr_at checked.
    let (v, proto) = unsafe { (*ip, *ip.add(6)) };
    if v >> 4 != 6 || (proto != PROTO_TCP && proto != PROTO_UDP) {
        return None;
    }
    let word = |i: usize| unsafe { load_u32(ip, i) };
    let src = [word(8), word(12), word(16), word(20)];
    if src != at.daddr {
        return None;
    }
    let dst = [word(24), word(28), word(32), word(36)];
    let (sport, dport) = ports(ctx, l3 + 40)?;
    Some(Flow {
        daddr: src,
        saddr: dst,
        family: at.family,
        proto,
        sport: dport,
        dport: sport,
        first_fragment: None,
    })
}

/// The inner packet's ports (network order), when its first 8 L4 bytes are there.
#[inline(always)]
fn ports(ctx: &XdpContext, l4: usize) -> Option<(u16, u16)> {
    let p = ptr_at::<[u8; 8]>(ctx, l4)? as *const u8;
    // SAFETY: within the 8 bytes ptr_at checked.
    let w = unsafe { load_u32(p, 0) }.to_ne_bytes();
    Some((
        u16::from_ne_bytes([w[0], w[1]]),
        u16::from_ne_bytes([w[2], w[3]]),
    ))
}

/// The backend `flow`'s client is pinned to (a live pin, as the data path judges it),
/// else the one its Maglev slot holds if it takes new clients. Writes nothing.
#[inline(always)]
fn lookup(svc: &ServiceValue, flow: &Flow) -> Option<Target> {
    // The key the data path pinned the client under (nat_sources clients by port).
    let key = balance::client_key(svc, flow);
    // SAFETY: a helper without side effects.
    let now = table::units(unsafe { bpf_ktime_get_coarse_ns() });
    let place = table::place(&key, AFFINITY_SEED.load(), AFFINITY_BUCKETS.load());
    let bucket = AFFINITY.get_ptr_mut(place.bucket)?;
    // SAFETY: a live bucket of the table, only read.
    if let Found::Hit { val, .. } = unsafe { table::find(bucket, place.tag) } {
        let id = table::backend_of(val);
        let be = BACKENDS.get(id);
        if let (Verdict::Live { .. }, Some(be)) =
            (affinity::judge_word(svc, key.service_id, val, be, now), be)
        {
            return Some(Target { be, id });
        }
    }
    let slot = svc.table_offset + affinity::slot(&key, svc.table_size);
    let id = *MAGLEV.get(slot)?;
    if id == NO_BACKEND {
        return None;
    }
    let be = BACKENDS.get(id)?;
    affinity::takes_new_clients(be).then_some(Target { be, id })
}

/// An echo request to a VIP: answered (XDP_TX, MACs and addresses swapped, TTL / hop
/// limit [`REPLY_TTL`], type echo reply, checksums updated) when the VIP's marker has
/// `SVC_F_ECHO_REPLY`; passed otherwise (also when the address is no VIP).
#[inline(always)]
fn echo(ctx: &XdpContext, at: &IcmpAt) -> Result<u32, ()> {
    match service::vip_flags(&at.daddr, at.family) {
        Some(f) if f & SVC_F_ECHO_REPLY != 0 => {}
        _ => return stats::pass(Stat::PassNotService),
    }
    let Some(eth) = ptr_at::<[u8; 14]>(ctx, 0) else {
        return Err(());
    };
    swap_macs(eth as *mut u8);
    let done = if at.family == FAMILY_V4 {
        reply_v4(ctx, at)
    } else {
        reply_v6(ctx, at)
    };
    match done {
        Some(()) => stats::verdict(Stat::IcmpEchoReply, XDP_TX),
        None => Err(()),
    }
}

/// Swaps the Ethernet destination and source (three 16-bit words each).
#[inline(always)]
fn swap_macs(eth: *mut u8) {
    let w = eth as *mut u16;
    // SAFETY: 12 bytes of a 14-byte header the caller bounds-checked; 2-byte aligned
    // offsets of the frame (see lb_ebpf::load_u32 on alignment).
    unsafe {
        for i in 0..3 {
            let d = w.add(i).read();
            w.add(i).write(w.add(i + 3).read());
            w.add(i + 3).write(d);
        }
    }
}

/// IPv4 header and ICMP header of an echo request made its reply.
#[inline(always)]
fn reply_v4(ctx: &XdpContext, at: &IcmpAt) -> Option<()> {
    let ip = ptr_at::<[u8; 20]>(ctx, at.l3)? as *mut u8;
    let icmp = ptr_at::<[u8; ICMP_HLEN]>(ctx, at.l4)? as *mut u8;
    // SAFETY (all accesses): within the 20 and 8 bytes ptr_at checked.
    unsafe {
        let (s, d) = (load_u32(ip, 12), load_u32(ip, 16));
        store_u32(ip, 12, d);
        store_u32(ip, 16, s);
        let old = u16::from_be_bytes([*ip.add(8), *ip.add(9)]);
        let new = u16::from_be_bytes([REPLY_TTL, *ip.add(9)]);
        *ip.add(8) = REPLY_TTL;
        patch(ip.add(10), old, new);
        set_type(icmp, ICMP_ECHO_REPLY);
    }
    Some(())
}

/// IPv6 header and ICMPv6 header of an echo request made its reply (swapping the
/// addresses leaves the pseudo-header's sum as it was).
#[inline(always)]
fn reply_v6(ctx: &XdpContext, at: &IcmpAt) -> Option<()> {
    let ip = ptr_at::<[u8; 40]>(ctx, at.l3)? as *mut u8;
    let icmp = ptr_at::<[u8; ICMP_HLEN]>(ctx, at.l4)? as *mut u8;
    // SAFETY (all accesses): within the 40 and 8 bytes ptr_at checked.
    unsafe {
        for i in 0..4 {
            let (s, d) = (load_u32(ip, 8 + 4 * i), load_u32(ip, 24 + 4 * i));
            store_u32(ip, 8 + 4 * i, d);
            store_u32(ip, 24 + 4 * i, s);
        }
        *ip.add(7) = REPLY_TTL;
        set_type(icmp, ICMPV6_ECHO_REPLY);
    }
    Some(())
}

/// Sets the ICMP type, updating the checksum.
///
/// # Safety
/// `icmp` points at a bounds-checked, writable 8-byte ICMP header.
#[inline(always)]
unsafe fn set_type(icmp: *mut u8, ty: u8) {
    // SAFETY: the caller's header.
    unsafe {
        let old = u16::from_be_bytes([*icmp, *icmp.add(1)]);
        let new = u16::from_be_bytes([ty, *icmp.add(1)]);
        *icmp = ty;
        patch(icmp.add(2), old, new);
    }
}

/// Updates the checksum at `at` (wire order) for one covered word `old` → `new`.
///
/// # Safety
/// `at` points at two bounds-checked, writable bytes.
#[inline(always)]
unsafe fn patch(at: *mut u8, old: u16, new: u16) {
    // SAFETY: the caller's two bytes.
    unsafe {
        let c = u16::from_be_bytes([*at, *at.add(1)]);
        let [a, b] = csum::replace16(c, old, new).to_be_bytes();
        *at = a;
        *at.add(1) = b;
    }
}
