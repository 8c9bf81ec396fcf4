//! The xlb XDP balancer: IP affinity with a bucketed affinity table in front of Maglev.
//!
//! Per packet: parse → VIP pre-filter → service lookup → affinity lookup (one 64-byte
//! bucket) → (miss) Maglev slot → backend → pin written → rewrite MACs (DSR) → XDP_TX or
//! XDP_REDIRECT. Everything not owned by
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
    Global,
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX},
    helpers::bpf_ktime_get_coarse_ns,
    macros::{map, xdp},
    maps::{Array, DevMapHash, HashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    Addr, AffinityKey, Backend, BackendStats, DEFAULT_AFFINITY_CAPACITY, DEFAULT_MAGLEV_SLOTS,
    FAMILY_V4, FAMILY_V6, FAST_SERVICE_SLOTS, FastService, MAX_BACKENDS, MAX_SERVICE_KEYS,
    MAX_SERVICES, MAX_TX_PORTS, NO_BACKEND, PROTO_TCP, PROTO_UDP, PROTO_VIP_MARKER,
    SVC_F_PASS_NO_BACKEND, ServiceKey, ServiceStats, ServiceValue, Stat, VIP_FILTER_WORDS,
    affinity::{
        self, Verdict,
        table::{self, Bucket, ColdBucket, Found, Place, Written, table_entries},
    },
    fast_slot,
    maps::{BPF_F_MMAPABLE, Meta},
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

/// The services map's direct-mapped copy, looked at first (lb_common::FastService).
#[map(name = "XLB_SVC_FAST")]
static SVC_FAST: Array<FastService> = Array::with_max_entries(FAST_SERVICE_SLOTS, BPF_F_MMAPABLE);

#[map(name = "XLB_MAGLEV")]
static MAGLEV: Array<u32> = Array::with_max_entries(DEFAULT_MAGLEV_SLOTS, 0);

#[map(name = "XLB_BACKENDS")]
static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// The affinity table, shared by all CPUs (a client's connections arrive on several RX
/// queues and must all see the same pin): one 64-byte bucket per lookup, expiry by
/// timestamp, no lists and no locks on the read path (lb_common::affinity::table).
#[map(name = "XLB_AFFINITY")]
static AFFINITY: Array<Bucket> =
    Array::with_max_entries(table_entries(DEFAULT_AFFINITY_CAPACITY), BPF_F_MMAPABLE);

/// The whole key and creation time of every pin, indexed like `XLB_AFFINITY`.
#[map(name = "XLB_AFF_KEYS")]
static AFF_KEYS: Array<ColdBucket> =
    Array::with_max_entries(table_entries(DEFAULT_AFFINITY_CAPACITY), BPF_F_MMAPABLE);

/// Each service's `idle_timeout` in table units: whether another service's entry in a
/// full bucket is free space.
#[map(name = "XLB_SVC_IDLE")]
static SVC_IDLE: Array<u32> = Array::with_max_entries(MAX_SERVICES, 0);

/// The affinity table's hash seed and data bucket count, from its header: set by the
/// loader (read-only data, so the verifier folds them into constants).
#[unsafe(no_mangle)]
static AFFINITY_SEED: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static AFFINITY_BUCKETS: Global<u32> = Global::new(1);

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
    // The exact port first, then a service of every port (port 0).
    let svc = match service(&key) {
        Some(s) => s,
        None => {
            key.port_be = 0;
            match service(&key) {
                Some(s) => s,
                None => return pass(Stat::PassNotService),
            }
        }
    };
    balance(ctx, &svc, flow, sport)
}

/// The service of `key`: from `XLB_SVC_FAST` when its slot holds the key and was not
/// being written, else from the services hash.
#[inline(always)]
fn service(key: &ServiceKey) -> Option<ServiceValue> {
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

#[inline(always)]
fn balance(ctx: &XdpContext, svc: &ServiceValue, flow: &Flow, sport: u16) -> Result<u32, ()> {
    let Some(ss) = SVC_STATS.get_ptr_mut(svc.id) else {
        return Err(());
    };
    // SAFETY: per-CPU slot.
    let ss = unsafe { &mut *ss };
    let key = affinity::key(svc, &flow.saddr, sport, flow.family);
    // SAFETY: a helper without side effects.
    let now_ns = unsafe { bpf_ktime_get_coarse_ns() };
    let now = table::units(now_ns);
    let place = table::place(&key, AFFINITY_SEED.load(), AFFINITY_BUCKETS.load());
    let Some(bucket) = AFFINITY.get_ptr_mut(place.bucket) else {
        return Err(());
    };

    // The rules live in lb_common::affinity (shared with explain, affinity list, counts).
    // SAFETY: a live bucket of the table.
    let write = match unsafe { table::find(bucket, place.tag) } {
        Found::Hit { slot, val } => {
            let backend_id = table::backend_of(val);
            let be = BACKENDS.get(backend_id);
            match (affinity::judge_word(svc, key.service_id, val, be, now), be) {
                (Verdict::Live { refresh }, Some(be)) => {
                    if refresh {
                        refresh_pin(&key, bucket, &place, slot, val, now_ns);
                    }
                    ss.hits += 1;
                    return forward(ctx, ss, be, backend_id);
                }
                (Verdict::Expired, _) => ss.expiries += 1,
                _ => ss.repins += 1,
            }
            true
        }
        Found::None => {
            ss.misses += 1;
            true
        }
        // Another CPU is writing the client's slot: Maglev decides this packet alone.
        Found::Busy => {
            ss.misses += 1;
            false
        }
    };
    hashed(
        ctx,
        svc,
        ss,
        &key,
        Pin {
            place,
            bucket,
            now,
            now_ns,
            write,
        },
    )
}

/// Refreshes a live pin; when this hit establishes an IPv4 client, its cold key (whole
/// key and creation second) is written now, its first second later than its pin.
#[inline(always)]
fn refresh_pin(
    key: &AffinityKey,
    bucket: *mut Bucket,
    place: &Place,
    slot: usize,
    val: u64,
    now_ns: u64,
) {
    let now = table::units(now_ns);
    if key.family == FAMILY_V4
        && table::becomes_established(val, now)
        && let Some(cold) = AFF_KEYS.get_ptr_mut(place.bucket)
    {
        let c = table::ColdKey {
            pinned_s: table::first_second(val, now_ns),
            ..table::cold_of(key, now_ns)
        };
        // SAFETY: the same live bucket of the table and of its keys; a lost race only
        // skips this write (the next hit tries again).
        unsafe { table::establish(bucket, cold, slot, val, now, &c) };
    } else {
        // SAFETY: a live bucket of the table; a lost race only skips this refresh.
        unsafe { table::refresh(bucket, slot, val, now) };
    }
}

/// Where and when [`hashed`] writes the pin.
struct Pin {
    place: Place,
    bucket: *mut Bucket,
    now: u32,
    now_ns: u64,
    /// False when the slot was busy: decide without writing.
    write: bool,
}

/// The Maglev slot decides; the entry is (re)written.
#[inline(always)]
fn hashed(
    ctx: &XdpContext,
    svc: &ServiceValue,
    ss: &mut ServiceStats,
    key: &AffinityKey,
    pin: Pin,
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
    if pin.write
        && let Some(cold) = AFF_KEYS.get_ptr_mut(pin.place.bucket)
    {
        let idle_of = |service: u32| SVC_IDLE.get(service).copied().unwrap_or(0);
        // IPv6 tags are fingerprints: the whole key goes into the cold keys at once.
        // IPv4 tags are the whole key: nothing more until the client is established.
        let c = table::cold_of(key, pin.now_ns);
        let c = (key.family == FAMILY_V6).then_some(&c);
        // SAFETY: the same live bucket of the table and of its keys. A busy bucket only
        // costs the next packet a miss.
        let w = unsafe {
            table::write(
                pin.bucket,
                cold,
                pin.place.tag,
                c,
                table::pack(backend_id, be.generation, false, pin.now),
                pin.now,
                idle_of,
            )
        };
        if matches!(w, Written::Pinned { .. })
            && let Some(bs) = BE_STATS.get_ptr_mut(backend_id)
        {
            // SAFETY: per-CPU slot.
            unsafe { (*bs).pins += 1 };
        }
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
