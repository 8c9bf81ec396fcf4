//! The health-probe TC program `xlb_probe` (clsact / TCX egress on `lo`): a packet whose
//! `skb->mark` is a probe's (`lb_common::tunnel::probe_backend`) is encapsulated towards
//! `XLB_BACKENDS[id]` exactly as the XDP program encapsulates a client's packet (`encap`:
//! the same outer header; outer source = the service's `tunnel_source` for this probe's
//! source address when `XLB_TUN_SRC[service].family != 0`, else the egress interface's
//! address), given the backend's MACs and redirected to its interface, so a check travels
//! the path traffic does and a broken decapsulation fails it. Any other packet leaves
//! untouched (`TC_ACT_OK`) after one load and compare.
//!
//! A probe it cannot send (no backend under that id, no egress entry or address) is
//! dropped (`TC_ACT_SHOT`) and counted once in `XLB_STATS` as `DropProbe`: the check fails
//! as the traffic would. Probes are small: no MTU check (the kernel's own applies).
//!
//! Reads `XLB_BACKENDS`, `XLB_EGRESS`, `XLB_TUN_SRC`; writes the probe packet and
//! `XLB_STATS[DropProbe]`. Must not touch the affinity table, Maglev or the services.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6, TC_ACT_OK, TC_ACT_SHOT,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::bpf_redirect,
    programs::TcContext,
};
use lb_common::{
    Addr, Backend, FAMILY_V4, FAMILY_V6, Stat,
    tunnel::{self, probe_backend},
};
use lb_ebpf::{ETH_P_IP, ETH_P_IPV6};

use super::{
    encap::{self, Inner},
    forward::rewrite_macs,
    maps::{BACKENDS, EGRESS, TUN_SRC},
    stats,
};

/// The Ethernet header of a frame on `lo` (zero MACs, no VLAN tag).
const ETH_HLEN: usize = 14;

/// One probe packet: encapsulated and redirected, or passed, or dropped (module doc).
#[inline(always)]
pub fn handle(ctx: &TcContext) -> i32 {
    // SAFETY: a field of this program's own context.
    let mark = unsafe { (*ctx.skb.skb).mark };
    let Some(id) = probe_backend(mark) else {
        return TC_ACT_OK;
    };
    match send(ctx, id) {
        Some(verdict) => verdict,
        None => {
            let _ = stats::drop(Stat::DropProbe);
            TC_ACT_SHOT
        }
    }
}

/// A pointer to `N` bytes at `offset` of the skb's linear data, or `None`.
#[inline(always)]
fn at<const N: usize>(ctx: &TcContext, offset: usize) -> Option<*mut u8> {
    let start = ctx.data() + offset;
    (start + N <= ctx.data_end()).then_some(start as *mut u8)
}

/// The probe to backend `id`, encapsulated and redirected; `None`: dropped.
#[inline(always)]
fn send(ctx: &TcContext, id: u32) -> Option<i32> {
    let be = BACKENDS.get(id)?;
    if be.family != FAMILY_V4 && be.family != FAMILY_V6 {
        return None;
    }
    let (inner, client) = inner(ctx)?;
    // SAFETY: hash map values are replaced whole by the controller, never in place.
    let eg = unsafe { EGRESS.get(be.ifindex) }?;
    let own = TUN_SRC.get(be.service_id).filter(|t| t.family != 0);
    let h = tunnel::client_hash(&client);
    let src = tunnel::pick_outer_source(own, eg, be.family, h)?;
    let v6 = be.family == FAMILY_V6;
    let flags = if v6 {
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV6
    } else {
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
    };
    let grow = encap::outer_len(v6);
    ctx.skb
        .adjust_room(grow as i32, BPF_ADJ_ROOM_MAC, flags as u64)
        .ok()?;
    write(ctx, be, &inner, &src, h)?;
    // SAFETY: a helper; it only records where the packet goes.
    Some(unsafe { bpf_redirect(be.ifindex, 0) } as i32)
}

/// What the outer header copies from the probe's IP header, and its source address.
#[inline(always)]
fn inner(ctx: &TcContext) -> Option<(Inner, Addr)> {
    if at::<{ ETH_HLEN + 40 }>(ctx, 0).is_none() {
        // The headers are not all in the linear part: pull them (a probe is small).
        ctx.pull_data(0).ok()?;
    }
    let eth = at::<ETH_HLEN>(ctx, 0)?;
    // SAFETY: within the 14 bytes checked.
    let et = unsafe { eth.add(12).cast::<u16>().read_unaligned() };
    if et == ETH_P_IPV6 {
        let ip = at::<40>(ctx, ETH_HLEN)?;
        // SAFETY (both): within the 40 bytes checked.
        let src = unsafe { ip.add(8).cast::<Addr>().read_unaligned() };
        Some((unsafe { encap::inner_v6(ip) }, src))
    } else if et == ETH_P_IP {
        let ip = at::<20>(ctx, ETH_HLEN)?;
        // SAFETY (both): within the 20 bytes checked.
        let src = unsafe { ip.add(12).cast::<u32>().read_unaligned() };
        Some((unsafe { encap::inner_v4(ip) }, [src, 0, 0, 0]))
    } else {
        None
    }
}

/// The backend's MACs, the outer EtherType and the outer header in the room made after
/// the Ethernet header.
#[inline(always)]
fn write(ctx: &TcContext, be: &Backend, inner: &Inner, src: &Addr, h: u32) -> Option<()> {
    let eth = at::<ETH_HLEN>(ctx, 0)?;
    rewrite_macs(eth, be);
    let v6 = be.family == FAMILY_V6;
    let et = if v6 { ETH_P_IPV6 } else { ETH_P_IP };
    // SAFETY: within the 14 bytes checked.
    unsafe { eth.add(12).cast::<u16>().write_unaligned(et) };
    if v6 {
        let out = at::<40>(ctx, ETH_HLEN)?;
        // SAFETY: the 40 bytes checked.
        unsafe { encap::write_v6(out, inner, src, &be.addr, tunnel::flow_label(h)) };
    } else {
        let out = at::<20>(ctx, ETH_HLEN)?;
        // SAFETY: the 20 bytes checked.
        unsafe { encap::write_v4(out, inner, src[0], be.addr[0]) };
    }
    Some(())
}
