//! `xlb decap`: tunnel decapsulation for backends (README, "Tunnel backends"). An IPIP,
//! IP6IP6 or 4in6 packet addressed to one of the host's addresses (`XLB_DC_LOCAL`) from
//! an allowed source (`XLB_DC_FROM4`/`XLB_DC_FROM6`, the balancers) loses its outer IP
//! header here and goes to the stack as the inner packet, as if it had arrived bare: no
//! tunnel device or kernel module is needed. Anything else passes untouched, so nobody
//! outside the allowed prefixes can inject packets through it. Every packet moves exactly
//! one counter of `XLB_DC_STATS` (`lb_common::decap::DecapStat`).
//!
//! Owns its own maps (lb_common::decap); shares nothing with the balancer's program.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action::XDP_PASS,
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use lb_common::{
    Addr, FAMILY_V4, FAMILY_V6,
    decap::{DecapStat, LocalKey, MAX_DECAP_LOCAL, MAX_DECAP_PREFIXES},
};
use lb_ebpf::{ETH_P_IP, ETH_P_IPV6, load_u32, ptr_at, store_u32};

#[map(name = "XLB_DC_FROM4")]
static FROM4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(MAX_DECAP_PREFIXES, 1);

#[map(name = "XLB_DC_FROM6")]
static FROM6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(MAX_DECAP_PREFIXES, 1);

#[map(name = "XLB_DC_LOCAL")]
static LOCAL: HashMap<LocalKey, u32> = HashMap::with_max_entries(MAX_DECAP_LOCAL, 0);

#[map(name = "XLB_DC_STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DecapStat::COUNT, 0);

/// IP protocol numbers of the tunnels (IANA): IPv4 (IPIP, 4in6) and IPv6 (IP6IP6).
const PROTO_IPIP: u8 = 4;
const PROTO_IPV6: u8 = 41;
const ETH_HLEN: usize = 14;

#[xdp]
pub fn xlb_decap(ctx: XdpContext) -> u32 {
    let stat = match tunnel(&ctx) {
        Ok(t) => match strip(&ctx, &t) {
            Some(()) => t.stat,
            // The head could not move: the frame is as it came.
            None => DecapStat::PassMalformed,
        },
        Err(stat) => stat,
    };
    if let Some(c) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
    XDP_PASS
}

/// A tunnel packet to decapsulate.
struct Tunnel {
    /// Bytes of the outer IP header.
    outer: usize,
    /// EtherType of the inner packet (as the frame carries it).
    inner_et: u16,
    stat: DecapStat,
}

/// What the frame is: a tunnel packet to strip, or the counter of why not.
#[inline(always)]
fn tunnel(ctx: &XdpContext) -> Result<Tunnel, DecapStat> {
    let eth = ptr_at::<[u8; ETH_HLEN]>(ctx, 0).ok_or(DecapStat::PassNotTunnel)?;
    // SAFETY: ptr_at checked the 14 bytes.
    let et = u16::from_ne_bytes(unsafe { [(*eth)[12], (*eth)[13]] });
    if et == ETH_P_IP {
        ipv4(ctx)
    } else if et == ETH_P_IPV6 {
        ipv6(ctx)
    } else {
        Err(DecapStat::PassNotTunnel)
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext) -> Result<Tunnel, DecapStat> {
    let ip = ptr_at::<[u8; 20]>(ctx, ETH_HLEN).ok_or(DecapStat::PassNotTunnel)? as *const u8;
    // SAFETY (all reads of `ip`): within the 20 bytes ptr_at checked.
    let (vihl, frags, proto) = unsafe { (*ip, [*ip.add(6), *ip.add(7)], *ip.add(9)) };
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < 20 || proto != PROTO_IPIP {
        return Err(DecapStat::PassNotTunnel);
    }
    let dst = [unsafe { load_u32(ip, 16) }, 0, 0, 0];
    if !local(&dst, FAMILY_V4) {
        return Err(DecapStat::PassNotLocal);
    }
    let src = unsafe { [*ip.add(12), *ip.add(13), *ip.add(14), *ip.add(15)] };
    if FROM4.get(Key::new(32, src)).is_none() {
        return Err(DecapStat::PassSourceNotAllowed);
    }
    if u16::from_be_bytes(frags) & 0x3fff != 0 || !inner_is(ctx, ETH_HLEN + ihl, 4) {
        return Err(DecapStat::PassMalformed);
    }
    Ok(Tunnel {
        outer: ihl,
        inner_et: ETH_P_IP,
        stat: DecapStat::Ipip,
    })
}

#[inline(always)]
fn ipv6(ctx: &XdpContext) -> Result<Tunnel, DecapStat> {
    let ip = ptr_at::<[u8; 40]>(ctx, ETH_HLEN).ok_or(DecapStat::PassNotTunnel)? as *const u8;
    // SAFETY (all reads of `ip`): within the 40 bytes ptr_at checked.
    let (v, next) = unsafe { (*ip, *ip.add(6)) };
    let (inner_version, inner_et, stat) = match next {
        PROTO_IPV6 => (6, ETH_P_IPV6, DecapStat::Ip6ip6),
        PROTO_IPIP => (4, ETH_P_IP, DecapStat::FourIn6),
        _ => return Err(DecapStat::PassNotTunnel),
    };
    if v >> 4 != 6 {
        return Err(DecapStat::PassNotTunnel);
    }
    let word = |i: usize| unsafe { load_u32(ip, i) };
    let dst = [word(24), word(28), word(32), word(36)];
    if !local(&dst, FAMILY_V6) {
        return Err(DecapStat::PassNotLocal);
    }
    let mut src = [0u8; 16];
    for (i, b) in src.iter_mut().enumerate() {
        *b = unsafe { *ip.add(8 + i) };
    }
    if FROM6.get(Key::new(128, src)).is_none() {
        return Err(DecapStat::PassSourceNotAllowed);
    }
    if !inner_is(ctx, ETH_HLEN + 40, inner_version) {
        return Err(DecapStat::PassMalformed);
    }
    Ok(Tunnel {
        outer: 40,
        inner_et,
        stat,
    })
}

/// Is `addr` one of the host's addresses?
#[inline(always)]
fn local(addr: &Addr, family: u8) -> bool {
    let k = LocalKey {
        addr: *addr,
        family: family as u32,
    };
    // SAFETY: the value is only tested for presence.
    unsafe { LOCAL.get(k).is_some() }
}

/// The inner IP header at `at` is there (its fixed part) and of `version`.
#[inline(always)]
fn inner_is(ctx: &XdpContext, at: usize, version: u8) -> bool {
    let len = if version == 4 { 20 } else { 40 };
    let start = ctx.data() + at;
    if start + len > ctx.data_end() {
        return false;
    }
    // SAFETY: bounds checked just above.
    unsafe { *(start as *const u8) >> 4 == version }
}

/// Drops the outer header: the Ethernet addresses move up by `t.outer` bytes and the
/// EtherType becomes the inner packet's.
#[inline(always)]
fn strip(ctx: &XdpContext, t: &Tunnel) -> Option<()> {
    let eth = ptr_at::<[u8; ETH_HLEN]>(ctx, 0)? as *const u8;
    // SAFETY: the 14 bytes ptr_at checked.
    let macs = unsafe { [load_u32(eth, 0), load_u32(eth, 4), load_u32(eth, 8)] };
    // SAFETY: a helper on this program's own context; it re-checks the bounds.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, t.outer as i32) } != 0 {
        return None;
    }
    let eth = ptr_at::<[u8; ETH_HLEN]>(ctx, 0)? as *mut u8;
    // SAFETY: the 14 bytes ptr_at checked after the move.
    unsafe {
        store_u32(eth, 0, macs[0]);
        store_u32(eth, 4, macs[1]);
        store_u32(eth, 8, macs[2]);
        (eth.add(12) as *mut u16).write_unaligned(t.inner_et);
    }
    Some(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
