//! Reference XDP programs for `cargo xtask bench`: they bound what xlb's numbers mean.
//!
//! - `xdp_pass`: the cost of running any XDP program at all.
//! - `reflector`: parse Ethernet and IP, swap MACs, XDP_TX: a plain hairpin, the floor
//!   any balancer that forwards with XDP_TX stands on (Katran's ≈130 ns is quoted over it).
//!
//! For `bench e2e` (packet rate through network namespaces):
//! - `trafficgen`: the traffic generator, run with BPF_PROG_TEST_RUN in live-frames mode.
//! - `mac_fwd`: the baseline forwarder: parse like `reflector`, rewrite both MACs,
//!   redirect through a DEVMAP: the forwarding limit of the setup.
//! - `count_sink`: counts every frame in a per-CPU counter and drops it.
//!
//! For the affinity table's two-CPU test (tests/tests/packet/table.rs):
//! - `table_hammer`: gives each run another client's IPv4 source address and tail-calls
//!   the real xlb program, so a `repeat` run feeds xlb a new client per packet at full
//!   speed (one BPF_PROG_TEST_RUN call per packet would leave the CPUs mostly in the
//!   syscall, rarely inside the table's write window together).
//!
//! For `bench micro` (the table's cost without a syscall per packet):
//! - `src_rotator`: gives run k of a `repeat` call the IPv4 source `base + ((k & mask) <<
//!   shift)` and tail-calls slot `slot` of `ROTATE_NEXT` (xlb, or `xdp_pass` to measure
//!   the rotation itself).
//!
//! For `bench flood` (live frames through xlb to a sink):
//! - `src_rotator` with `random` set: sources spread by a hash of k (a spoofed flood),
//!   with one run in `1 << est_shift` from the established clients instead.
//! - `class_sink`: counts frames per class (established client or not) and drops them.
//!
//! For `bench micro`'s layout experiment (`XLB_BENCH_LAYOUT=1`, tests/src/bench/layout.rs):
//! does the memory a 32 MiB table lives in decide what a random bucket costs? Run k reads the 64-byte line of client
//! `k & 65535` (a fixed hash of it picks the line), as a lookup would (all 8 words);
//! each also as `*_dep`, where the next run waits for the line (latency, not overlap):
//! - `probe_none`: the same hash and index arithmetic, no memory read (subtracted).
//! - `probe_big`: one ARRAY of `PROBE_BIG_BUCKETS` buckets, `BPF_F_MMAPABLE` like the
//!   affinity table (vmalloc'd, 4 KiB pages).
//! - `probe_big_plain`: the same without `BPF_F_MMAPABLE` (still vmalloc'd: too large).
//! - `probe_{packed,spread,mim_spread}_dep` (and `probe_none_spread_dep`): exactly 65,536
//!   distinct lines (4 MiB of lines whatever the table), packed into the first 4 MiB of
//!   `PROBE_BIG` (1,024 pages), one per 512 bytes of it (8,192 pages), and the latter
//!   through the inner arrays: the pages' share of the cost, apart from the caches'.
//! - `probe_mim_wide{,_spread}_dep`: as `probe_mim{,_spread}_dep` through
//!   `PROBE_OUTER_WIDE`, whose inner arrays hold one 32,448-byte value each with 505
//!   line-aligned buckets in it (a 64-byte value after the kernel's header straddles two
//!   lines).
//! - `probe_mim`: an ARRAY_OF_MAPS of `PROBE_INNER_MAPS` plain arrays of
//!   `PROBE_INNER_BUCKETS` buckets each — small enough (≤ 32 KiB with the kernel's
//!   header) that the kernel kmallocs them, in its huge-page-mapped direct map.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX},
    btf_maps,
    helpers::bpf_get_smp_processor_id,
    macros::{btf_map, map, xdp},
    maps::{Array, DevMap, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use lb_ebpf::{ETH_P_IP, ETH_P_IPV6, load_u32, ptr_at, store_u32};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[xdp]
pub fn reflector(ctx: XdpContext) -> u32 {
    let Some(eth) = ptr_at::<EthHdr>(&ctx, 0) else {
        return XDP_PASS;
    };
    // SAFETY: ptr_at checked the bounds.
    let eth = unsafe { &mut *eth };
    let ip_ok = if eth.ether_type == ETH_P_IP {
        ptr_at::<Ipv4Hdr>(&ctx, EthHdr::LEN).is_some_and(|ip| unsafe { (*ip).vihl >> 4 == 4 })
    } else if eth.ether_type == ETH_P_IPV6 {
        ptr_at::<Ipv6Hdr>(&ctx, EthHdr::LEN).is_some_and(|ip| unsafe { (*ip).vcf[0] >> 4 == 6 })
    } else {
        false
    };
    if !ip_ok {
        return XDP_PASS;
    }
    core::mem::swap(&mut eth.dst_addr, &mut eth.src_addr);
    XDP_TX
}

/// What `trafficgen` sends. Mirrored by `GenConfig` in tests/src/bench/e2e.rs (same
/// layout, 120 bytes).
#[repr(C, align(8))]
pub struct GenConfig {
    /// The whole frame (Ethernet to payload), checksums valid for client index 0.
    pub frame: [u8; GEN_FRAME_MAX],
    /// One's complement sums (unfolded) of what each checksum covers, with the checksum
    /// field and the varying source word taken as zero.
    pub ip_csum_partial: u32,
    pub l4_csum_partial: u32,
    /// Host-order value of the varying 32-bit source word for client index 0 (the IPv4
    /// source address, or the last word of the IPv6 one).
    pub src_base: u32,
    /// Client index = per-CPU packet counter & `mask`.
    pub mask: u32,
    /// 0: IPv4, 1: IPv6.
    pub v6: u32,
    /// 0: TCP, 1: UDP.
    pub udp: u32,
    /// Which `GEN_COUNT` slot numbers the clients: each client pattern keeps its own
    /// sequence, so runs of one pattern never replay sources of another's.
    pub counter: u32,
    pub _pad: [u32; 3],
}

const GEN_FRAME_MAX: usize = 80;
const ETH_LEN: usize = 14;

#[map(name = "GEN_CONFIG")]
static GEN_CONFIG: Array<GenConfig> = Array::with_max_entries(1, 0);

#[map(name = "GEN_COUNT")]
static GEN_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(GEN_COUNTERS, 0);

const GEN_COUNTERS: u32 = 4;

/// Live-frames pages are recycled with whatever the receivers wrote into them (MACs,
/// TTL, NATed addresses), so every frame is rewritten whole from the template: all of
/// the Ethernet, IP and L4 headers and the payload, then the source address (a new
/// client per frame from a per-CPU counter) and both checksums. XDP_TX in a live-frames
/// test run transmits out of the run's ingress interface (`ctx_in.ingress_ifindex`).
#[xdp]
pub fn trafficgen(ctx: XdpContext) -> u32 {
    let Some(cfg) = GEN_CONFIG.get(0) else {
        return XDP_ABORTED;
    };
    let Some(count) = GEN_COUNT.get_ptr_mut(cfg.counter) else {
        return XDP_ABORTED;
    };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU.
    let n = unsafe {
        let n = *count;
        *count = n + 1;
        n
    };
    let Some(head) = ptr_at::<[u8; 64]>(&ctx, 0) else {
        return XDP_ABORTED;
    };
    let pkt = head as *mut u8;
    // The template is 8-aligned (offset 0 of an align(8) value); packet data starts
    // 8-aligned after the headroom. Plain word copies, no byte-wise memcpy.
    let tmpl = cfg.frame.as_ptr() as *const u64;
    // SAFETY: 64 bytes of packet were bounds-checked; the template has 80.
    unsafe {
        let out = pkt as *mut u64;
        for i in 0..8 {
            out.add(i).write(tmpl.add(i).read());
        }
    }
    if let Some(tail) = ptr_at::<[u8; 16]>(&ctx, 64) {
        // SAFETY: bytes 64..80 were bounds-checked.
        unsafe {
            let out = tail as *mut u64;
            out.write(tmpl.add(8).read());
            out.add(1).write(tmpl.add(9).read());
        }
    }

    let src = cfg.src_base.wrapping_add(n as u32 & cfg.mask);
    let words = (src >> 16) + (src & 0xffff);
    let v6 = cfg.v6 != 0;
    let udp = cfg.udp != 0;
    // SAFETY (stores below): within the 64 bytes checked above, except the IPv6 TCP
    // checksum (70..72), checked on its own.
    if v6 {
        // Source address: bytes 22..38; its last word is 34..38.
        unsafe { store_u32(pkt, ETH_LEN + 20, src.to_be()) };
    } else {
        unsafe { store_u32(pkt, ETH_LEN + 12, src.to_be()) };
        let c = fold(cfg.ip_csum_partial + words);
        unsafe { (pkt.add(ETH_LEN + 10) as *mut u16).write(c.to_be()) };
    }
    let mut c = fold(cfg.l4_csum_partial + words);
    if udp && c == 0 {
        c = 0xffff;
    }
    let l4 = if v6 { ETH_LEN + 40 } else { ETH_LEN + 20 };
    let at = l4 + if udp { 6 } else { 16 };
    let Some(csum) = ptr_at::<u16>(&ctx, at) else {
        return XDP_ABORTED;
    };
    unsafe { csum.write(c.to_be()) };
    XDP_TX
}

/// Folds a one's complement sum and complements it.
#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Destination and source MAC (12 bytes, as in the Ethernet header).
#[map(name = "FWD_MACS")]
static FWD_MACS: Array<[u32; 3]> = Array::with_max_entries(1, 0);

#[map(name = "FWD_PORTS")]
static FWD_PORTS: DevMap = DevMap::with_max_entries(1, 0);

/// The baseline forwarder: the same checks as `reflector`, then both MACs rewritten
/// and a redirect through a DEVMAP.
#[xdp]
pub fn mac_fwd(ctx: XdpContext) -> u32 {
    let Some(eth) = ptr_at::<EthHdr>(&ctx, 0) else {
        return XDP_PASS;
    };
    // SAFETY: ptr_at checked the bounds.
    let ether_type = unsafe { (*eth).ether_type };
    let ip_ok = if ether_type == ETH_P_IP {
        ptr_at::<Ipv4Hdr>(&ctx, EthHdr::LEN).is_some_and(|ip| unsafe { (*ip).vihl >> 4 == 4 })
    } else if ether_type == ETH_P_IPV6 {
        ptr_at::<Ipv6Hdr>(&ctx, EthHdr::LEN).is_some_and(|ip| unsafe { (*ip).vcf[0] >> 4 == 6 })
    } else {
        false
    };
    if !ip_ok {
        return XDP_PASS;
    }
    let Some(macs) = FWD_MACS.get(0) else {
        return XDP_ABORTED;
    };
    let eth = eth as *mut u8;
    // SAFETY: 12 bytes of the 14-byte Ethernet header checked above.
    unsafe {
        store_u32(eth, 0, macs[0]);
        store_u32(eth, 4, macs[1]);
        store_u32(eth, 8, macs[2]);
    }
    FWD_PORTS.redirect(0, 0).unwrap_or(XDP_DROP)
}

#[map(name = "SINK_COUNT")]
static SINK_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The receiver: counts every frame (per CPU) and drops it.
#[xdp]
pub fn count_sink(_ctx: XdpContext) -> u32 {
    if let Some(c) = SINK_COUNT.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
    }
    XDP_DROP
}

/// What `table_hammer` sends. Mirrored by `HammerConfig` in tests/tests/packet/table.rs.
#[repr(C)]
pub struct HammerConfig {
    /// IPv4 source addresses (network-order bytes as a native word).
    pub clients: [u32; HAMMER_CLIENTS],
    /// Clients in use: a power of two, 1..=16.
    pub n: u32,
    /// CPU c starts its rotation `c * stride` clients on.
    pub stride: u32,
}

const HAMMER_CLIENTS: usize = 16;

#[map(name = "HAMMER_CFG")]
static HAMMER_CFG: Array<HammerConfig> = Array::with_max_entries(1, 0);

/// Runs per CPU: run k of CPU c is client `(k + c * stride) & (n - 1)`.
#[map(name = "HAMMER_COUNT")]
static HAMMER_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Slot 0: the xlb program.
#[map(name = "HAMMER_NEXT")]
static HAMMER_NEXT: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[xdp]
pub fn table_hammer(ctx: XdpContext) -> u32 {
    let Some(cfg) = HAMMER_CFG.get(0) else {
        return XDP_ABORTED;
    };
    let Some(count) = HAMMER_COUNT.get_ptr_mut(0) else {
        return XDP_ABORTED;
    };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU.
    let k = unsafe {
        let k = *count;
        *count = k + 1;
        k
    };
    // SAFETY: a helper without side effects.
    let cpu = unsafe { bpf_get_smp_processor_id() } as u64;
    // A mask, not `%`: a division could panic (and the verifier refuses the handler).
    let mask = (cfg.n as u64).wrapping_sub(1) & (HAMMER_CLIENTS as u64 - 1);
    let i = ((k + cpu * cfg.stride as u64) & mask) as usize;
    let Some(src) = cfg.clients.get(i & (HAMMER_CLIENTS - 1)) else {
        return XDP_ABORTED;
    };
    let Some(ip) = ptr_at::<Ipv4Hdr>(&ctx, ETH_LEN) else {
        return XDP_ABORTED;
    };
    // SAFETY: the source address lies in the IPv4 header checked above (xlb does not
    // verify checksums).
    unsafe { store_u32(ip as *mut u8, 12, *src) };
    // SAFETY: tail call into xlb; on failure the run is aborted (and counted so).
    unsafe { HAMMER_NEXT.tail_call(&ctx, 0) };
    XDP_ABORTED
}

/// What `src_rotator` sends. Mirrored by `RotateConfig` in tests/src/bench/mod.rs.
#[repr(C)]
pub struct RotateConfig {
    /// First source address, host order.
    pub base: u32,
    pub mask: u32,
    pub shift: u32,
    /// Slot of `ROTATE_NEXT` to tail-call.
    pub slot: u32,
    /// Non-zero: source `base + (hash(k) & mask)` (a flood of spoofed sources).
    pub random: u32,
    /// Clients `est_base + i`, `i < est_count`, send run k when `k & ((1 << est_shift)
    /// - 1) == 0` (0 clients: never).
    pub est_base: u32,
    pub est_count: u32,
    pub est_shift: u32,
}

#[map(name = "ROTATE_CFG")]
static ROTATE_CFG: Array<RotateConfig> = Array::with_max_entries(1, 0);

#[map(name = "ROTATE_COUNT")]
static ROTATE_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "ROTATE_NEXT")]
static ROTATE_NEXT: ProgramArray = ProgramArray::with_max_entries(2, 0);

#[xdp]
pub fn src_rotator(ctx: XdpContext) -> u32 {
    let Some(cfg) = ROTATE_CFG.get(0) else {
        return XDP_ABORTED;
    };
    let Some(count) = ROTATE_COUNT.get_ptr_mut(0) else {
        return XDP_ABORTED;
    };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU.
    let k = unsafe {
        let k = *count;
        *count = k + 1;
        k
    };
    let est_mask = (1u64 << (cfg.est_shift & 31)) - 1;
    let src = if cfg.est_count != 0 && k & est_mask == 0 {
        // The established clients in turn (no division: a wrap of at most one count).
        let mut i = ((k >> (cfg.est_shift & 31)) as u32) & 0xffff;
        if i >= cfg.est_count {
            i -= cfg.est_count;
        }
        cfg.est_base.wrapping_add(i)
    } else if cfg.random != 0 {
        cfg.base
            .wrapping_add(lb_common::hash::fmix64(k) as u32 & cfg.mask)
    } else {
        cfg.base
            .wrapping_add(((k as u32) & cfg.mask) << (cfg.shift & 31))
    };
    let Some(ip) = ptr_at::<Ipv4Hdr>(&ctx, ETH_LEN) else {
        return XDP_ABORTED;
    };
    // SAFETY: the source address lies in the IPv4 header checked above.
    unsafe { store_u32(ip as *mut u8, 12, src.to_be()) };
    // SAFETY: tail call; on failure the run is aborted.
    unsafe { ROTATE_NEXT.tail_call(&ctx, cfg.slot) };
    XDP_ABORTED
}

/// Per class (0: other sources, 1: `CLASS_BASE`/16), per CPU: frames that reached the sink.
#[map(name = "CLASS_COUNT")]
static CLASS_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// `bench flood`'s established clients: 100.64.0.0/16 (the flood avoids it).
const CLASS_BASE: u32 = 0x6440_0000;

/// The flood's receiver: counts every IPv4 frame by the class of its source, drops it.
#[xdp]
pub fn class_sink(ctx: XdpContext) -> u32 {
    let class = match ptr_at::<Ipv4Hdr>(&ctx, ETH_LEN) {
        // SAFETY: the source address lies in the header checked.
        Some(ip) => {
            (u32::from_be(unsafe { load_u32(ip as *const u8, 12) }) >> 16 == CLASS_BASE >> 16)
                as u32
        }
        None => 0,
    };
    if let Some(c) = CLASS_COUNT.get_ptr_mut(class) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
    }
    XDP_DROP
}

/// Buckets of `PROBE_BIG` (declared with 1: the experiment sets the size at load, so
/// other users of this object do not allocate 32 MiB). 524,288 × 64 B = 32 MiB, the
/// default capacity's table.
const PROBE_BIG_BUCKETS: u64 = 524_288;
/// Buckets per inner map: 507 × 64 B + the kernel's 312-byte `struct bpf_array` = 32,760
/// B, the largest array the kernel still kmallocs (`bpf_map_area_alloc`: ≤ 32 KiB).
const PROBE_INNER_BUCKETS: u64 = 507;
/// Inner maps: ⌈524,288 / 507⌉, the same 32 MiB.
const PROBE_INNER_MAPS: u64 = 1035;
/// Clients round robin (`hit_many`'s 65,536).
const PROBE_CLIENTS: u64 = 65_536;

#[map(name = "PROBE_BIG")]
static PROBE_BIG: Array<[u64; 8]> = Array::with_max_entries(1, lb_common::maps::BPF_F_MMAPABLE);

#[map(name = "PROBE_PLAIN")]
static PROBE_PLAIN: Array<[u64; 8]> = Array::with_max_entries(1, 0);

#[btf_map]
static PROBE_OUTER: btf_maps::ArrayOfMaps<
    btf_maps::Array<[u64; 8], { PROBE_INNER_BUCKETS as usize }, 0>,
    { PROBE_INNER_MAPS as usize },
> = btf_maps::ArrayOfMaps::new();

/// Words of a wide inner array's one value: 507 × 64 bytes, in which 506 whole cache lines
/// start at byte 8 — the kernel's 312-byte header puts the value at 56 bytes past a line
/// (checked by the experiment), so the 64-byte values of `PROBE_OUTER`'s arrays each
/// straddle two lines.
const PROBE_WIDE_WORDS: usize = 4056;
/// Aligned buckets used per wide inner array (506 fit; the verifier's bounds want one spare).
const PROBE_WIDE_BUCKETS: u64 = 505;
/// Wide inner arrays: ⌈524,288 / 505⌉.
const PROBE_WIDE_MAPS: u64 = 1039;

#[btf_map]
static PROBE_OUTER_WIDE: btf_maps::ArrayOfMaps<
    btf_maps::Array<[u64; PROBE_WIDE_WORDS], 1, 0>,
    { PROBE_WIDE_MAPS as usize },
> = btf_maps::ArrayOfMaps::new();

#[map(name = "PROBE_COUNT")]
static PROBE_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Which line run k reads: client `k & (PROBE_CLIENTS - 1)` of a per-CPU counter, through
/// `read` (`None` aborts). With `CHAIN` the counter's next value waits for the line (the
/// words XOR to 0 in every line the experiment writes, so the sequence is the same): one
/// access at a time, its full latency. Without, the CPU may overlap the misses of
/// consecutive runs.
#[inline(always)]
fn probe<const CHAIN: bool>(read: impl FnOnce(u64, u64) -> Option<u64>) -> u32 {
    let Some(count) = PROBE_COUNT.get_ptr_mut(0) else {
        return XDP_ABORTED;
    };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU.
    let k = unsafe { *count };
    let j = k & (PROBE_CLIENTS - 1);
    let h = lb_common::hash::fmix64(j ^ 0x9e37_79b9_7f4a_7c15);
    let Some(x) = read(j, h) else {
        return XDP_ABORTED;
    };
    let next = if CHAIN { k + 1 + x } else { k + 1 };
    // SAFETY: as above.
    unsafe { *count = next };
    if x == 0x5a5a_5a5a_5a5a_5a5a {
        XDP_DROP
    } else {
        XDP_PASS
    }
}

/// `h`'s 32 bits at `shift` scaled onto `0..n` (the affinity table's own split).
#[inline(always)]
fn scale(h: u64, shift: u32, n: u64) -> u32 {
    ((((h >> shift) & 0xffff_ffff) * n) >> 32) as u32
}

/// The 8 words of a bucket XORed, read as a lookup reads them.
#[inline(always)]
fn touch(b: *const [u64; 8]) -> u64 {
    let mut x = 0u64;
    for i in 0..8 {
        // SAFETY: a map value of 8 words; volatile so every load is kept.
        x ^= unsafe { core::ptr::read_volatile((b as *const u64).add(i)) };
    }
    x
}

#[inline(always)]
fn none(_j: u64, h: u64) -> Option<u64> {
    // The index arithmetic of both layouts, without a read.
    let i = scale(h, 32, PROBE_BIG_BUCKETS) ^ scale(h, 0, PROBE_INNER_BUCKETS);
    Some((i >> 31) as u64)
}

#[inline(always)]
fn big(_j: u64, h: u64) -> Option<u64> {
    PROBE_BIG
        .get_ptr(scale(h, 32, PROBE_BIG_BUCKETS))
        .map(touch)
}

/// A bijection of 0..65,536 without stride (xorshifts and odd multipliers mod 2^16):
/// distinct lines in an order no prefetcher follows.
#[inline(always)]
fn perm16(j: u64) -> u64 {
    let mut x = j & 0xffff;
    x ^= x >> 8;
    x = (x * 0x6b4b) & 0xffff;
    x ^= x >> 7;
    x = (x * 0x2c1b) & 0xffff;
    x ^ (x >> 8)
}

/// Client j's line when every client has its own: one per 512 bytes of the 32 MiB, so
/// 65,536 distinct lines (4 MiB) on all 8,192 pages.
#[inline(always)]
fn spread_line(j: u64, h: u64) -> u32 {
    (perm16(j) * 8 + (h & 7)) as u32
}

/// The index arithmetic of the `spread` probes, without a read.
#[inline(always)]
fn none_spread(j: u64, h: u64) -> Option<u64> {
    let b = spread_line(j, h);
    Some(((b / PROBE_INNER_BUCKETS as u32) ^ (b % PROBE_INNER_BUCKETS as u32)) as u64 >> 31)
}

/// The same 65,536 distinct lines packed into the first 4 MiB (1,024 pages).
#[inline(always)]
fn packed(j: u64, _h: u64) -> Option<u64> {
    PROBE_BIG.get_ptr(perm16(j) as u32).map(touch)
}

#[inline(always)]
fn spread(j: u64, h: u64) -> Option<u64> {
    PROBE_BIG.get_ptr(spread_line(j, h)).map(touch)
}

/// `spread`'s lines through the inner arrays (bucket b: array b / 507, index b % 507).
#[inline(always)]
fn mim_spread(j: u64, h: u64) -> Option<u64> {
    let b = spread_line(j, h);
    let n = PROBE_INNER_BUCKETS as u32;
    PROBE_OUTER
        .get_value_ptr_mut(b / n, &(b % n))
        .map(|b| touch(b))
}

#[inline(always)]
fn plain(_j: u64, h: u64) -> Option<u64> {
    PROBE_PLAIN
        .get_ptr(scale(h, 32, PROBE_BIG_BUCKETS))
        .map(touch)
}

#[inline(always)]
fn mim(_j: u64, h: u64) -> Option<u64> {
    let outer = scale(h, 32, PROBE_INNER_MAPS);
    let inner = scale(h, 0, PROBE_INNER_BUCKETS);
    PROBE_OUTER
        .get_value_ptr_mut(outer, &inner)
        .map(|b| touch(b))
}

/// Bucket `i` (< 505) of wide inner array `m`: the line at byte `8 + 64 i` of its value.
#[inline(always)]
fn wide(m: u32, i: u32) -> Option<u64> {
    // Opaque to LLVM, so the check stays for the verifier (LLVM would drop it after a `%`,
    // which the verifier cannot bound).
    let i = core::hint::black_box(i);
    if i as u64 >= PROBE_WIDE_BUCKETS {
        return None;
    }
    let v = PROBE_OUTER_WIDE.get_value_ptr_mut(m, &0)?;
    // SAFETY: words 1 + 8 i .. 9 + 8 i < 4,056 lie inside the value.
    Some(touch(
        unsafe { (v as *const u64).add(1 + 8 * i as usize) } as *const [u64; 8]
    ))
}

#[inline(always)]
fn mim_wide(_j: u64, h: u64) -> Option<u64> {
    wide(
        scale(h, 32, PROBE_WIDE_MAPS - 1),
        scale(h, 0, PROBE_WIDE_BUCKETS),
    )
}

#[inline(always)]
fn mim_wide_spread(j: u64, h: u64) -> Option<u64> {
    let b = spread_line(j, h);
    let n = PROBE_WIDE_BUCKETS as u32;
    wide(b / n, b % n)
}

#[xdp]
pub fn probe_mim_wide_dep(_ctx: XdpContext) -> u32 {
    probe::<true>(mim_wide)
}

#[xdp]
pub fn probe_mim_wide_spread_dep(_ctx: XdpContext) -> u32 {
    probe::<true>(mim_wide_spread)
}

#[xdp]
pub fn probe_none(_ctx: XdpContext) -> u32 {
    probe::<false>(none)
}

#[xdp]
pub fn probe_big(_ctx: XdpContext) -> u32 {
    probe::<false>(big)
}

#[xdp]
pub fn probe_big_plain(_ctx: XdpContext) -> u32 {
    probe::<false>(plain)
}

#[xdp]
pub fn probe_mim(_ctx: XdpContext) -> u32 {
    probe::<false>(mim)
}

#[xdp]
pub fn probe_none_dep(_ctx: XdpContext) -> u32 {
    probe::<true>(none)
}

#[xdp]
pub fn probe_big_dep(_ctx: XdpContext) -> u32 {
    probe::<true>(big)
}

#[xdp]
pub fn probe_big_plain_dep(_ctx: XdpContext) -> u32 {
    probe::<true>(plain)
}

#[xdp]
pub fn probe_none_spread_dep(_ctx: XdpContext) -> u32 {
    probe::<true>(none_spread)
}

#[xdp]
pub fn probe_packed_dep(_ctx: XdpContext) -> u32 {
    probe::<true>(packed)
}

#[xdp]
pub fn probe_spread_dep(_ctx: XdpContext) -> u32 {
    probe::<true>(spread)
}

#[xdp]
pub fn probe_mim_spread_dep(_ctx: XdpContext) -> u32 {
    probe::<true>(mim_spread)
}

#[xdp]
pub fn probe_mim_dep(_ctx: XdpContext) -> u32 {
    probe::<true>(mim)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
