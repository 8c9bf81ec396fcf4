//! Sending a packet to its backend by the service's forwarding mode ([`to_backend`]):
//! - DSR ([`dsr`]): the frame leaves unchanged but for its MACs (destination := the
//!   backend's, source := the egress interface's);
//! - tunnel ([`tunnel`]): the frame's head grows by an outer IPv4 (IPIP) or IPv6 (IP6IP6,
//!   4in6) header to the backend (`encap`), the L2 header moves to the new front with the
//!   outer EtherType and the backend's MACs; a packet that would exceed the egress MTU is
//!   answered instead (`toobig`).
//!
//! Both leave by XDP_TX (the backend sits behind the ingress interface) or XDP_REDIRECT
//! through `XLB_TX_PORTS` (dropped as `DropNoTxPort`, unmodified, when its interface is not
//! there), and count the frame as sent on the service and the backend.
//!
//! Writes the packet and the service's and backend's packet/byte counters; reads
//! `XLB_EGRESS` and `XLB_TUN_SRC` (tunnel mode). Must not look at services' keys, the
//! affinity table or Maglev: the backend is already chosen.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_TX},
    helpers::bpf_xdp_adjust_head,
    programs::XdpContext,
};
use lb_common::{
    Addr, Backend, FAMILY_V6, MODE_TUNNEL, SVC_F_TUNNEL_SOURCE, ServiceStats, ServiceValue, Stat,
    tunnel,
};
use lb_ebpf::{ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, load_u32, ptr_at, store_u32};
use network_types::eth::EthHdr;

use super::{
    balance::Target,
    encap::{self, Inner},
    log,
    maps::{EGRESS, TUN_SRC, TX_PORTS},
    stats, toobig,
};

const BACKEND_MACS_OFFSET: usize = core::mem::offset_of!(Backend, mac);
const _: () = assert!(core::mem::offset_of!(Backend, src_mac) == BACKEND_MACS_OFFSET + 6);

/// `to` receives the packet of `client` (its address, network order) by `svc`'s mode.
/// `error`: the packet is an ICMP error about the client's connection, which is never
/// answered with another ICMP error (RFC 1122 §3.2.2, RFC 4443 §2.4 (e)).
#[inline(always)]
pub fn to_backend(
    ctx: &XdpContext,
    svc: &ServiceValue,
    ss: &mut ServiceStats,
    client: &Addr,
    to: Target,
    error: bool,
) -> Result<u32, ()> {
    if svc.mode == MODE_TUNNEL {
        tunnel(ctx, svc, ss, client, to, error)
    } else {
        dsr(ctx, ss, to)
    }
}

/// DSR to `to`: both MACs rewritten; counted.
#[inline(always)]
pub fn dsr(ctx: &XdpContext, ss: &mut ServiceStats, to: Target) -> Result<u32, ()> {
    // Decide the exit first: a frame dropped for a missing port leaves unmodified.
    let Some((action, stat)) = exit(ctx, &to) else {
        return stats::drop(Stat::DropNoTxPort);
    };
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Err(());
    };
    rewrite_macs(eth as *mut u8, to.be);
    sent(ctx, ss, &to, stat, action)
}

/// Where a frame to `to` leaves: XDP_TX when the backend sits behind the ingress
/// interface, else a redirect through `XLB_TX_PORTS`; `None` (logged) when its interface
/// is not there.
#[inline(always)]
fn exit(ctx: &XdpContext, to: &Target) -> Option<(u32, Stat)> {
    if to.be.ifindex as usize == ctx.ingress_ifindex() {
        return Some((XDP_TX, Stat::Tx));
    }
    match TX_PORTS.redirect(to.be.ifindex, XDP_DROP as u64) {
        Ok(action) => Some((action, Stat::Redirect)),
        Err(_) => {
            log::no_tx_port(to.id, to.be.ifindex);
            None
        }
    }
}

/// Counts the frame as it leaves (its length now) and returns the verdict.
#[inline(always)]
fn sent(
    ctx: &XdpContext,
    ss: &mut ServiceStats,
    to: &Target,
    stat: Stat,
    action: u32,
) -> Result<u32, ()> {
    let len = (ctx.data_end() - ctx.data()) as u64;
    ss.packets += 1;
    ss.bytes += len;
    stats::backend_sent(to.id, len);
    stats::verdict(stat, action)
}

/// Tunnel to `to` (README, "Tunnel forwarding"): the outer source from the service's
/// `tunnel_source` or the egress interface's address (`DropNoEgress` without either, or
/// without the interface's `XLB_EGRESS` entry), the MTU check, then the outer header.
/// Every drop leaves the frame unmodified.
#[inline(always)]
fn tunnel(
    ctx: &XdpContext,
    svc: &ServiceValue,
    ss: &mut ServiceStats,
    client: &Addr,
    to: Target,
    error: bool,
) -> Result<u32, ()> {
    let Some((l2, inner)) = inner_at(ctx) else {
        return Err(());
    };
    // SAFETY: hash map values are replaced whole by the controller, never in place.
    let Some(eg) = (unsafe { EGRESS.get(to.be.ifindex) }) else {
        return no_egress();
    };
    let h = tunnel::client_hash(client);
    let own = if svc.flags & SVC_F_TUNNEL_SOURCE != 0 {
        TUN_SRC.get(svc.id)
    } else {
        None
    };
    let Some(src) = tunnel::pick_outer_source(own, eg, to.be.family, h) else {
        return no_egress();
    };
    let v6 = to.be.family == FAMILY_V6;
    if inner.len + encap::outer_len(v6) > eg.mtu {
        let mtu = tunnel::inner_mtu(eg.mtu, to.be.family);
        return toobig::answer(ctx, l2, &inner, mtu, error);
    }
    let Some((action, stat)) = exit(ctx, &to) else {
        return stats::drop(Stat::DropNoTxPort);
    };
    encapsulate(ctx, l2, &inner, &src, &to, h)?;
    sent(ctx, ss, &to, stat, action)
}

#[inline(always)]
fn no_egress() -> Result<u32, ()> {
    log::tunnel_drop(Stat::DropNoEgress);
    stats::drop(Stat::DropNoEgress)
}

/// The L2 header's length (14, or 18 with the one VLAN tag `parse` accepts) and what the
/// outer header copies from the IP header after it (`parse` has checked it is whole).
#[inline(always)]
fn inner_at(ctx: &XdpContext) -> Option<(usize, Inner)> {
    let eth = ptr_at::<[u8; 18]>(ctx, 0)? as *const u8;
    // SAFETY (both reads): within the 18 bytes ptr_at checked.
    let mut et = unsafe { eth.add(12).cast::<u16>().read_unaligned() };
    let mut l2 = EthHdr::LEN;
    if et == ETH_P_8021Q || et == ETH_P_8021AD {
        et = unsafe { eth.add(16).cast::<u16>().read_unaligned() };
        l2 += 4;
    }
    if et == ETH_P_IPV6 {
        let ip = ptr_at::<[u8; 40]>(ctx, l2)? as *const u8;
        // SAFETY: the 40 bytes ptr_at checked.
        Some((l2, unsafe { encap::inner_v6(ip) }))
    } else {
        let ip = ptr_at::<[u8; 20]>(ctx, l2)? as *const u8;
        // SAFETY: the 20 bytes ptr_at checked.
        Some((l2, unsafe { encap::inner_v4(ip) }))
    }
}

/// Grows the head by the outer header, moves the L2 header (the backend's MACs, the VLAN
/// tag, the outer EtherType) to the new front and writes the outer header after it.
/// `Err` only when the head cannot move (no headroom: XDP guarantees 256 bytes).
#[inline(always)]
fn encapsulate(
    ctx: &XdpContext,
    l2: usize,
    inner: &Inner,
    src: &Addr,
    to: &Target,
    h: u32,
) -> Result<(), ()> {
    let v6 = to.be.family == FAMILY_V6;
    let grow = encap::outer_len(v6) as usize;
    // SAFETY: a helper on this program's own context; it checks the headroom.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(grow as i32)) } != 0 {
        return Err(());
    }
    // The old L2 header now starts at `grow` (≥ 20 > 18: the copies never overlap).
    let old = ptr_at::<[u8; 18]>(ctx, grow).ok_or(())? as *const u8;
    let front = ptr_at::<[u8; 18]>(ctx, 0).ok_or(())? as *mut u8;
    let et = if v6 { ETH_P_IPV6 } else { ETH_P_IP };
    rewrite_macs(front, to.be);
    // SAFETY: within the two 18-byte ranges ptr_at checked.
    unsafe {
        if l2 > EthHdr::LEN {
            store_u32(front, 12, load_u32(old, 12));
        }
        front.add(l2 - 2).cast::<u16>().write_unaligned(et);
    }
    if v6 {
        let out = ptr_at::<[u8; 40]>(ctx, l2).ok_or(())? as *mut u8;
        let label = tunnel::flow_label(h);
        // SAFETY: the 40 bytes ptr_at checked.
        unsafe { encap::write_v6(out, inner, src, &to.be.addr, label) };
    } else {
        let out = ptr_at::<[u8; 20]>(ctx, l2).ok_or(())? as *mut u8;
        // SAFETY: the 20 bytes ptr_at checked.
        unsafe { encap::write_v4(out, inner, src[0], to.be.addr[0]) };
    }
    Ok(())
}

/// Both MACs in three word stores: `mac` and `src_mac` are adjacent in `Backend`, as
/// dst and src are in the Ethernet header (a 6-byte array copy would be a call to a
/// byte-wise memcpy).
#[inline(always)]
pub fn rewrite_macs(eth: *mut u8, be: &Backend) {
    let macs = (be as *const Backend as *const u8).wrapping_add(BACKEND_MACS_OFFSET);
    // SAFETY: 12 bytes of the Ethernet header (the caller's ptr_at checked 14) and of
    // the backend's `mac` + `src_mac` fields.
    unsafe {
        store_u32(eth, 0, load_u32(macs, 0));
        store_u32(eth, 4, load_u32(macs, 4));
        store_u32(eth, 8, load_u32(macs, 8));
    }
}
