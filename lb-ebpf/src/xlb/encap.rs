//! Outer headers of tunnel mode (README, "Tunnel forwarding"; the rules are
//! `lb_common::tunnel`'s): what an outer IPv4 (IPIP, RFC 2003) or IPv6 (IP6IP6 / 4in6,
//! RFC 2473) header copies from the inner packet ([`Inner`]), and the writers of both
//! headers over raw pointers, so the XDP program (`forward::tunnel`) and the health-probe
//! TC program (`probe`) write the very same bytes.
//!
//! Writes only the bytes it is handed (the caller bounds-checks them and moves the frame's
//! head); must not look at maps, services or the Ethernet header.

use lb_common::{
    Addr,
    tunnel::{IPPROTO_IPIP, IPPROTO_IPV6, OUTER_V4_LEN, OUTER_V6_LEN},
};
use lb_ebpf::{load_u32, store_u32};

use super::csum;

/// The IPv4 DF flag in the flags/fragment-offset field (network order, first byte).
const DF_BYTE: u8 = 0x40;

/// What the outer header takes from the inner packet.
#[derive(Clone, Copy)]
pub struct Inner {
    /// The inner IP packet's length (IPv4 total length, IPv6 40 + payload length), bytes.
    pub len: u32,
    /// DSCP and ECN (IPv4 TOS, IPv6 traffic class).
    pub tos: u8,
    /// TTL / hop limit.
    pub ttl: u8,
    /// IPv4 DF (true for an IPv6 inner packet, which routers never fragment).
    pub df: bool,
    /// The inner packet is IPv6.
    pub v6: bool,
    /// The IPv4 identification as the wire holds it (native load of its two bytes; 0 for
    /// IPv6).
    pub id: u16,
}

/// Reads what the outer header copies from the IPv4 header at `ip`.
///
/// # Safety
/// `ip .. ip + 20` is readable, bounds-checked packet data.
#[inline(always)]
pub unsafe fn inner_v4(ip: *const u8) -> Inner {
    // SAFETY: the caller's 20 bytes.
    let (w0, w1, w2) = unsafe { (load_u32(ip, 0), load_u32(ip, 4), load_u32(ip, 8)) };
    let (b0, b1) = (w0.to_ne_bytes(), w1.to_ne_bytes());
    Inner {
        len: u16::from_be_bytes([b0[2], b0[3]]) as u32,
        tos: b0[1],
        ttl: w2.to_ne_bytes()[0],
        df: b1[2] & DF_BYTE != 0,
        v6: false,
        id: u16::from_ne_bytes([b1[0], b1[1]]),
    }
}

/// Reads what the outer header copies from the IPv6 header at `ip`.
///
/// # Safety
/// `ip .. ip + 40` is readable, bounds-checked packet data.
#[inline(always)]
pub unsafe fn inner_v6(ip: *const u8) -> Inner {
    // SAFETY: the caller's first 8 of 40 bytes.
    let (w0, w1) = unsafe { (load_u32(ip, 0), load_u32(ip, 4)) };
    let (b0, b1) = (w0.to_ne_bytes(), w1.to_ne_bytes());
    Inner {
        len: 40 + u16::from_be_bytes([b1[0], b1[1]]) as u32,
        tos: (b0[0] << 4) | (b0[1] >> 4),
        ttl: b1[3],
        df: true,
        v6: true,
        id: 0,
    }
}

/// The inner protocol number the outer header names.
#[inline(always)]
fn proto_of(inner: &Inner) -> u8 {
    if inner.v6 { IPPROTO_IPV6 } else { IPPROTO_IPIP }
}

/// Writes an outer IPv4 header (IPIP) at `out`: TOS, TTL, DF and identification copied
/// from `inner`, no options, the header checksum computed. `src`, `dst`: network order.
///
/// # Safety
/// `out .. out + 20` is writable, bounds-checked packet data.
#[inline(always)]
pub unsafe fn write_v4(out: *mut u8, inner: &Inner, src: u32, dst: u32) {
    let len = ((inner.len + OUTER_V4_LEN) as u16).to_be_bytes();
    let id = inner.id.to_ne_bytes();
    let w0 = u32::from_ne_bytes([0x45, inner.tos, len[0], len[1]]);
    let df = if inner.df { DF_BYTE } else { 0 };
    let w1 = u32::from_ne_bytes([id[0], id[1], df, 0]);
    let w2 = u32::from_ne_bytes([inner.ttl, proto_of(inner), 0, 0]);
    let sum = w0 as u64 + w1 as u64 + w2 as u64 + src as u64 + dst as u64;
    let c = csum::finish(sum).to_ne_bytes();
    let w2 = u32::from_ne_bytes([inner.ttl, proto_of(inner), c[0], c[1]]);
    // SAFETY: the caller's 20 bytes.
    unsafe {
        store_u32(out, 0, w0);
        store_u32(out, 4, w1);
        store_u32(out, 8, w2);
        store_u32(out, 12, src);
        store_u32(out, 16, dst);
    }
}

/// Writes an outer IPv6 header (IP6IP6, 4in6) at `out`: traffic class and hop limit copied
/// from `inner`, flow label `label` (20 bits, host order). `src`, `dst`: network order.
///
/// # Safety
/// `out .. out + 40` is writable, bounds-checked packet data.
#[inline(always)]
pub unsafe fn write_v6(out: *mut u8, inner: &Inner, src: &Addr, dst: &Addr, label: u32) {
    let l = label.to_be_bytes();
    let w0 = u32::from_ne_bytes([
        0x60 | (inner.tos >> 4),
        (inner.tos << 4) | (l[1] & 0x0f),
        l[2],
        l[3],
    ]);
    let plen = (inner.len as u16).to_be_bytes();
    let w1 = u32::from_ne_bytes([plen[0], plen[1], proto_of(inner), inner.ttl]);
    // SAFETY: the caller's 40 bytes.
    unsafe {
        store_u32(out, 0, w0);
        store_u32(out, 4, w1);
        for i in 0..4 {
            store_u32(out, 8 + 4 * i, src[i]);
            store_u32(out, 24 + 4 * i, dst[i]);
        }
    }
}

/// Bytes of the outer header for a backend of the IPv6 family (`v6`) or IPv4.
#[inline(always)]
pub const fn outer_len(v6: bool) -> u32 {
    if v6 { OUTER_V6_LEN } else { OUTER_V4_LEN }
}
