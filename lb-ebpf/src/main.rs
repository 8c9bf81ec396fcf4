//! The xlb XDP balancer: IP affinity with an LRU affinity table in front of Maglev.
//!
//! Per packet: parse → VIP pre-filter → service lookup → affinity lookup → (miss) Maglev
//! slot → backend → rewrite MACs (DSR) → XDP_TX or XDP_REDIRECT. Everything not owned by
//! a service leaves with XDP_PASS, unchanged. Every packet increments exactly one counter
//! of `XLB_STATS` (its verdict and reason).
//!
//! Rules for bad input (see `Stat`): a frame whose Ethernet, VLAN or IP header is
//! truncated or invalid is passed untouched (`pass_malformed`), because before the
//! destination address is known it is not ours to judge; once the destination is a VIP,
//! a truncated TCP/UDP header, a fragment or an IPv6 extension header is dropped.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX},
    helpers::bpf_ktime_get_coarse_ns,
    macros::{map, xdp},
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    Addr, AffinityKey, AffinityValue, Backend, BackendStats, DEFAULT_AFFINITY_CAPACITY,
    DEFAULT_MAGLEV_SLOTS, FAMILY_V4, FAMILY_V6, MAX_BACKENDS, MAX_SERVICE_KEYS, MAX_SERVICES,
    MAX_TX_PORTS, NO_BACKEND, PROTO_TCP, PROTO_UDP, PROTO_VIP_MARKER, SVC_F_PASS_NO_BACKEND,
    ServiceKey, ServiceStats, ServiceValue, Stat, VIP_FILTER_WORDS,
    affinity::{self, Verdict},
    maps::Meta,
    vip_filter_bit_folded,
};
use lb_ebpf::{ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, load_u32, ptr_at, store_u32};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

// Every static below repeats a name and the sizes of lb_common::maps::MAPS (aya wants a
// literal); lb-userspace's `object_maps_equal_the_table` test fails when they drift.

#[map(name = "XLB_SERVICES")]
static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(MAX_SERVICE_KEYS, 0);

#[map(name = "XLB_MAGLEV")]
static MAGLEV: Array<u32> = Array::with_max_entries(DEFAULT_MAGLEV_SLOTS, 0);

#[map(name = "XLB_BACKENDS")]
static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// One hash table shared by all CPUs: a client's connections arrive on several RX queues
/// and must all see the same pin. Its LRU lists are common too. BPF_F_NO_COMMON_LRU
/// (per-CPU lists) makes a miss ~150 ns cheaper here, but splits the capacity per CPU:
/// with traffic on one queue only capacity / CPUs clients stay pinned, so an
/// `affinity_capacity` sized for the client count would silently evict pins.
#[map(name = "XLB_AFFINITY")]
static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(DEFAULT_AFFINITY_CAPACITY, 0);

#[map(name = "XLB_STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Stat::COUNT, 0);

#[map(name = "XLB_SVC_STATS")]
static SVC_STATS: PerCpuArray<ServiceStats> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map(name = "XLB_BE_STATS")]
static BE_STATS: PerCpuArray<BackendStats> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "XLB_TX_PORTS")]
static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_TX_PORTS, 0);

#[map(name = "XLB_VIP_FILTER")]
static VIP_FILTER: Array<u64> = Array::with_max_entries(VIP_FILTER_WORDS, 0);

/// Facts about the pinned state (format, the durable generation counter). Only the
/// controller uses it; it is declared here so it is created and pinned with the rest.
#[map(name = "XLB_META")]
static META: Array<Meta> = Array::with_max_entries(1, 0);

const BACKEND_MACS_OFFSET: usize = core::mem::offset_of!(Backend, mac);
const _: () = assert!(core::mem::offset_of!(Backend, src_mac) == BACKEND_MACS_OFFSET + 6);

/// IPv4 flags/fragment-offset bits that mark a fragment: MF and the 13-bit offset.
const IPV4_FRAG_MASK: u16 = 0x3fff;
/// IPv6 next-header values that are extension headers (RFC 8200 §4, RFC 7045; 253 and 254 are the experimental ones of RFC 4727, found missing by the fuzzer).
const IPV6_FRAGMENT: u8 = 44;
const IPV6_EXT_HEADERS: [u8; 9] = [0, 43, 60, 51, 135, 139, 140, 253, 254];

#[xdp]
pub fn xlb(ctx: XdpContext) -> u32 {
    match try_xlb(&ctx) {
        Ok(action) => action,
        Err(()) => XDP_ABORTED,
    }
}

/// Counts `stat` and returns `action`.
#[inline(always)]
fn verdict(stat: Stat, action: u32) -> Result<u32, ()> {
    if let Some(c) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
    Ok(action)
}

#[inline(always)]
fn pass(stat: Stat) -> Result<u32, ()> {
    verdict(stat, XDP_PASS)
}

#[inline(always)]
fn drop(stat: Stat) -> Result<u32, ()> {
    verdict(stat, XDP_DROP)
}

/// What the IP layer found: destination, source, protocol and where L4 starts.
struct Flow {
    daddr: Addr,
    saddr: Addr,
    family: u8,
    proto: u8,
    l4: usize,
}

fn try_xlb(ctx: &XdpContext) -> Result<u32, ()> {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return pass(Stat::PassMalformed);
    };
    // SAFETY: ptr_at checked the bounds.
    let mut ether_type = unsafe { (*eth).ether_type };
    let mut l3 = EthHdr::LEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let Some(vlan) = ptr_at::<VlanHdr>(ctx, l3) else {
            return pass(Stat::PassMalformed);
        };
        ether_type = unsafe { (*vlan).ether_type };
        l3 += VlanHdr::LEN;
    }
    if ether_type == ETH_P_IP {
        ipv4(ctx, l3)
    } else if ether_type == ETH_P_IPV6 {
        ipv6(ctx, l3)
    } else {
        pass(Stat::PassNonIp)
    }
}

/// Is `addr` a configured VIP? The pre-filter bit must already be known set.
#[inline(always)]
fn is_vip(addr: &Addr, family: u8) -> bool {
    let key = ServiceKey {
        addr: *addr,
        port_be: 0,
        proto: PROTO_VIP_MARKER,
        family,
    };
    // SAFETY: the value is only tested for presence.
    unsafe { SERVICES.get(key).is_some() }
}

/// The VIP pre-filter: false means no service has this destination address.
#[inline(always)]
fn vip_filter_hit(folded: u32) -> bool {
    let (word, bit) = vip_filter_bit_folded(folded);
    match VIP_FILTER.get(word) {
        Some(w) => *w & bit != 0,
        None => false,
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, l3: usize) -> Result<u32, ()> {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, l3) else {
        return pass(Stat::PassMalformed);
    };
    // SAFETY: ptr_at checked the bounds for the whole fixed header.
    let ip = unsafe { &*ip };
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return pass(Stat::PassMalformed);
    }
    let base = ip as *const Ipv4Hdr as *const u8;
    // SAFETY (all loads below): within the 20-byte header ptr_at checked.
    let d = unsafe { load_u32(base, 16) };
    if !vip_filter_hit(d) {
        return pass(Stat::PassNotService);
    }
    let flow = Flow {
        daddr: [d, 0, 0, 0],
        saddr: [unsafe { load_u32(base, 12) }, 0, 0, 0],
        family: FAMILY_V4,
        proto: ip.proto,
        l4: l3 + ihl,
    };
    if u16::from_be_bytes(ip.frags) & IPV4_FRAG_MASK != 0 {
        return not_balanceable(&flow, Stat::DropFragment);
    }
    l4(ctx, &flow)
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, l3: usize) -> Result<u32, ()> {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, l3) else {
        return pass(Stat::PassMalformed);
    };
    // SAFETY: ptr_at checked the bounds for the whole fixed header.
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return pass(Stat::PassMalformed);
    }
    let base = ip as *const Ipv6Hdr as *const u8;
    // SAFETY (all loads below): within the 40-byte header ptr_at checked.
    let d = unsafe {
        [
            load_u32(base, 24),
            load_u32(base, 28),
            load_u32(base, 32),
            load_u32(base, 36),
        ]
    };
    if !vip_filter_hit(d[0] ^ d[1] ^ d[2] ^ d[3]) {
        return pass(Stat::PassNotService);
    }
    let flow = Flow {
        daddr: d,
        saddr: unsafe {
            [
                load_u32(base, 8),
                load_u32(base, 12),
                load_u32(base, 16),
                load_u32(base, 20),
            ]
        },
        family: FAMILY_V6,
        proto: ip.next_hdr,
        l4: l3 + Ipv6Hdr::LEN,
    };
    if flow.proto == IPV6_FRAGMENT {
        return not_balanceable(&flow, Stat::DropFragment);
    }
    if IPV6_EXT_HEADERS.contains(&flow.proto) {
        return not_balanceable(&flow, Stat::DropIpv6ExtHeader);
    }
    l4(ctx, &flow)
}

/// A packet xlb cannot balance: dropped (and counted as `reason`) when it is addressed
/// to a VIP, otherwise passed untouched.
#[inline(always)]
fn not_balanceable(flow: &Flow, reason: Stat) -> Result<u32, ()> {
    if is_vip(&flow.daddr, flow.family) {
        drop(reason)
    } else {
        pass(Stat::PassNotService)
    }
}

#[inline(always)]
fn l4(ctx: &XdpContext, flow: &Flow) -> Result<u32, ()> {
    // Ports are the first four bytes of both headers; the whole fixed header must be
    // present, or the backend would only drop the packet later.
    let len = if flow.proto == PROTO_TCP {
        TcpHdr::LEN
    } else if flow.proto == PROTO_UDP {
        UdpHdr::LEN
    } else {
        return pass(Stat::PassNotService);
    };
    // Ports are the first four bytes of both headers; the whole fixed header must be
    // present, or the backend would only drop the packet later.
    let start = ctx.data() + flow.l4;
    if start + len > ctx.data_end() {
        return not_balanceable(flow, Stat::DropMalformed);
    }
    // SAFETY: bounds checked just above.
    let ports = unsafe { load_u32(start as *const u8, 0) }.to_ne_bytes();
    let sport = u16::from_ne_bytes([ports[0], ports[1]]);
    let dport = u16::from_ne_bytes([ports[2], ports[3]]);

    let mut key = ServiceKey {
        addr: flow.daddr,
        port_be: dport,
        proto: flow.proto,
        family: flow.family,
    };
    // SAFETY: hash map values are replaced whole (RCU), never written in place, so the
    // reference stays consistent for this run of the program.
    let svc: &ServiceValue = match unsafe { SERVICES.get(key) } {
        Some(s) => s,
        None => {
            key.port_be = 0;
            match unsafe { SERVICES.get(key) } {
                Some(s) => s,
                None => return pass(Stat::PassNotService),
            }
        }
    };
    balance(ctx, svc, flow, sport)
}

#[inline(always)]
fn balance(ctx: &XdpContext, svc: &ServiceValue, flow: &Flow, sport: u16) -> Result<u32, ()> {
    let Some(ss) = SVC_STATS.get_ptr_mut(svc.id) else {
        return Err(());
    };
    // SAFETY: per-CPU slot.
    let ss = unsafe { &mut *ss };
    let key = affinity::key(svc, &flow.saddr, sport, flow.family);
    // SAFETY: a helper without side effects.
    let now = unsafe { bpf_ktime_get_coarse_ns() };

    // The rules live in lb_common::affinity (shared with explain, affinity list, counts).
    if let Some(entry) = AFFINITY.get_ptr_mut(key) {
        // SAFETY: a pointer into the map value; concurrent writers only store whole
        // aligned u64/u32 fields, and a torn `last_seen` read is harmless.
        let entry = unsafe { &mut *entry };
        let backend_id = entry.backend_id;
        let be = BACKENDS.get(backend_id);
        match (affinity::judge(svc, &key, entry, be, now), be) {
            (Verdict::Live { refresh }, Some(be)) => {
                if refresh {
                    entry.last_seen_ns = now;
                }
                ss.hits += 1;
                return forward(ctx, ss, be, backend_id);
            }
            (Verdict::Expired, _) => ss.expiries += 1,
            _ => ss.repins += 1,
        }
    } else {
        ss.misses += 1;
    }
    hashed(ctx, svc, ss, &key, now)
}

/// The Maglev slot decides; the entry is (re)written.
#[inline(always)]
fn hashed(
    ctx: &XdpContext,
    svc: &ServiceValue,
    ss: &mut ServiceStats,
    key: &AffinityKey,
    now: u64,
) -> Result<u32, ()> {
    let slot = svc.table_offset + affinity::slot(key, svc.table_size);
    let backend_id = match MAGLEV.get(slot) {
        Some(id) if *id != NO_BACKEND => *id,
        _ => return no_backend(svc, ss),
    };
    let be = match BACKENDS.get(backend_id) {
        Some(be) if affinity::takes_new_clients(be) => be,
        // The controller removes a backend from the table before clearing its healthy
        // bit, so this is only a transient of a concurrent update.
        _ => return no_backend(svc, ss),
    };
    // A failed insert (never expected for an LRU) only costs the next packet a miss.
    let _ = AFFINITY.insert(key, affinity::pin(backend_id, be, now), 0);
    if let Some(bs) = BE_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot.
        unsafe { (*bs).pins += 1 };
    }
    forward(ctx, ss, be, backend_id)
}

/// Rule 5: no healthy backend: drop (default) or pass to the local stack.
#[inline(always)]
fn no_backend(svc: &ServiceValue, ss: &mut ServiceStats) -> Result<u32, ()> {
    ss.no_backend += 1;
    if svc.flags & SVC_F_PASS_NO_BACKEND != 0 {
        pass(Stat::PassNoBackend)
    } else {
        drop(Stat::DropNoBackend)
    }
}

/// DSR: destination MAC := backend's, source MAC := egress interface's; XDP_TX when the
/// backend sits behind the ingress interface, else redirect through `XLB_TX_PORTS`.
#[inline(always)]
fn forward(
    ctx: &XdpContext,
    ss: &mut ServiceStats,
    be: &Backend,
    backend_id: u32,
) -> Result<u32, ()> {
    // Decide the exit first: a frame dropped for a missing port leaves unmodified.
    let (action, stat) = if be.ifindex as usize == ctx.ingress_ifindex() {
        (XDP_TX, Stat::Tx)
    } else {
        match TX_PORTS.redirect(be.ifindex, XDP_DROP as u64) {
            Ok(action) => (action, Stat::Redirect),
            Err(_) => return drop(Stat::DropNoTxPort),
        }
    };
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Err(());
    };
    // Both MACs in three word stores: `mac` and `src_mac` are adjacent in `Backend`,
    // as dst and src are in the Ethernet header (a 6-byte array copy would be a call to
    // a byte-wise memcpy).
    let macs = (be as *const Backend as *const u8).wrapping_add(BACKEND_MACS_OFFSET);
    let eth = eth as *mut u8;
    // SAFETY: 12 bytes of the Ethernet header (ptr_at checked 14) and of the backend's
    // `mac` + `src_mac` fields.
    unsafe {
        store_u32(eth, 0, load_u32(macs, 0));
        store_u32(eth, 4, load_u32(macs, 4));
        store_u32(eth, 8, load_u32(macs, 8));
    }
    let len = (ctx.data_end() - ctx.data()) as u64;
    ss.packets += 1;
    ss.bytes += len;
    if let Some(bs) = BE_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot.
        let bs = unsafe { &mut *bs };
        bs.packets += 1;
        bs.bytes += len;
    }
    verdict(stat, action)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
