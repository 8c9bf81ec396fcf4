//! Sending a packet to its backend. Today one mode, DSR: the frame leaves unchanged but
//! for its MACs (destination := the backend's, source := the egress interface's), by
//! XDP_TX or XDP_REDIRECT through `XLB_TX_PORTS`. Tunnel encapsulation goes here.
//!
//! Writes the packet and the service's and backend's packet/byte counters; must not
//! look at services' keys, the affinity table or Maglev: the backend is already chosen.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_TX},
    programs::XdpContext,
};
use lb_common::{Backend, ServiceStats, Stat};
use lb_ebpf::{load_u32, ptr_at, store_u32};
use network_types::eth::EthHdr;

use super::{balance::Target, log, maps::TX_PORTS, stats};

const BACKEND_MACS_OFFSET: usize = core::mem::offset_of!(Backend, mac);
const _: () = assert!(core::mem::offset_of!(Backend, src_mac) == BACKEND_MACS_OFFSET + 6);

/// DSR to `to`: XDP_TX when the backend sits behind the ingress interface, else
/// redirect through `XLB_TX_PORTS` (dropped as `DropNoTxPort`, unmodified, when its
/// interface is not there); both MACs rewritten; counted.
#[inline(always)]
pub fn dsr(ctx: &XdpContext, ss: &mut ServiceStats, to: Target) -> Result<u32, ()> {
    // Decide the exit first: a frame dropped for a missing port leaves unmodified.
    let (action, stat) = if to.be.ifindex as usize == ctx.ingress_ifindex() {
        (XDP_TX, Stat::Tx)
    } else {
        match TX_PORTS.redirect(to.be.ifindex, XDP_DROP as u64) {
            Ok(action) => (action, Stat::Redirect),
            Err(_) => {
                log::no_tx_port(to.id, to.be.ifindex);
                return stats::drop(Stat::DropNoTxPort);
            }
        }
    };
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Err(());
    };
    rewrite_macs(eth as *mut u8, to.be);
    let len = (ctx.data_end() - ctx.data()) as u64;
    ss.packets += 1;
    ss.bytes += len;
    stats::backend_sent(to.id, len);
    stats::verdict(stat, action)
}

/// Both MACs in three word stores: `mac` and `src_mac` are adjacent in `Backend`, as
/// dst and src are in the Ethernet header (a 6-byte array copy would be a call to a
/// byte-wise memcpy).
#[inline(always)]
fn rewrite_macs(eth: *mut u8, be: &Backend) {
    let macs = (be as *const Backend as *const u8).wrapping_add(BACKEND_MACS_OFFSET);
    // SAFETY: 12 bytes of the Ethernet header (the caller's ptr_at checked 14) and of
    // the backend's `mac` + `src_mac` fields.
    unsafe {
        store_u32(eth, 0, load_u32(macs, 0));
        store_u32(eth, 4, load_u32(macs, 4));
        store_u32(eth, 8, load_u32(macs, 8));
    }
}
