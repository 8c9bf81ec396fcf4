//! Reference XDP programs for `cargo xtask bench`: they bound what xlb's numbers mean.
//!
//! - `xdp_pass`: the cost of running any XDP program at all.
//! - `reflector`: parse Ethernet and IP, swap MACs, XDP_TX: a plain hairpin, the floor
//!   any balancer that forwards with XDP_TX stands on (Katran's ≈130 ns is quoted over it).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action::{XDP_PASS, XDP_TX},
    macros::xdp,
    programs::XdpContext,
};
use lb_ebpf::{ETH_P_IP, ETH_P_IPV6, ptr_at};
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
