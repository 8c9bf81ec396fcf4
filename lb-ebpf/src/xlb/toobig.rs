//! Tunnel mode's answer to a packet that would exceed the egress MTU once encapsulated
//! (README, "Tunnel forwarding"): XDP cannot fragment, so
//! - an IPv6 packet, or an IPv4 packet with DF, is answered in place with ICMPv6 packet
//!   too big (type 2, RFC 4443 §3.2) / ICMP fragmentation needed (type 3 code 4, RFC 1191
//!   §4) carrying the inner MTU, XDP_TX back out of the ingress interface: MACs swapped
//!   (the VLAN tag kept), source = the VIP (the packet's destination), destination = the
//!   client, TTL / hop limit 64, TOS / traffic class 0, identification 0, no DF;
//! - an IPv4 packet without DF, and an ICMP error (never answered with another, RFC 1122
//!   §3.2.2, RFC 4443 §2.4 (e)), are dropped as `DropTooBig`.
//!
//! The reply quotes the first [`QUOTE`] bytes of the packet (IP header included; RFC 792
//! asks for the header and 8 bytes, RFC 1812 §4.3.2.3 allows up to 576 bytes in all,
//! RFC 4443 up to 1280): one `bpf_csum_diff` covers them (it takes at most 512 bytes, a
//! multiple of 4). Only an egress MTU under `QUOTE` + the outer header makes a packet
//! shorter than that too big; it quotes [`QUOTE_MIN`] bytes (still the largest IPv4
//! header and 8 bytes of L4), and one shorter still is dropped as `DropTooBig`.
//!
//! Writes the packet (the frame becomes the reply); must not look at any map but the
//! verdict counters.

use aya_ebpf::{
    bindings::xdp_action::XDP_TX,
    helpers::{bpf_csum_diff, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{PROTO_ICMP, PROTO_ICMPV6, Stat};
use lb_ebpf::{load_u32, ptr_at, store_u32};

use super::{csum, encap::Inner, log, stats};

/// Bytes of the packet quoted in the reply (see the module's doc).
pub const QUOTE: usize = 512;
/// Bytes quoted when the packet is shorter than [`QUOTE`]: the longest IPv4 header (60)
/// and 4 bytes, rounded to a multiple of 4 for `bpf_csum_diff`.
pub const QUOTE_MIN: usize = 64;
/// TTL / hop limit of the reply (Linux's default).
const REPLY_TTL: u8 = 64;
/// ICMPv4 destination unreachable, code fragmentation needed; ICMPv6 packet too big.
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;

/// The packet at `l2` (`inner`: its header's facts) does not fit `mtu` (the inner MTU,
/// bytes) once encapsulated: the client is told, or it is dropped (module doc).
#[inline(always)]
pub fn answer(
    ctx: &XdpContext,
    l2: usize,
    inner: &Inner,
    mtu: u32,
    error: bool,
) -> Result<u32, ()> {
    if error || !inner.df {
        log::tunnel_drop(Stat::DropTooBig);
        return stats::drop(Stat::DropTooBig);
    }
    let done = if inner.len >= QUOTE as u32 {
        reply::<QUOTE>(ctx, l2, inner.v6, mtu)?
    } else if inner.len >= QUOTE_MIN as u32 {
        reply::<QUOTE_MIN>(ctx, l2, inner.v6, mtu)?
    } else {
        false
    };
    if done {
        stats::verdict(Stat::IcmpTooBig, XDP_TX)
    } else {
        log::tunnel_drop(Stat::DropTooBig);
        stats::drop(Stat::DropTooBig)
    }
}

/// The old frame's L2 facts and addresses, read before the new headers overwrite them.
struct Old {
    /// Destination then source MAC, as six 16-bit words (wire bytes).
    macs: [u16; 6],
    /// Bytes 12..16 of the L2 header: the VLAN tag, or the EtherType and two bytes of IP.
    tag: u32,
    /// EtherType of the IP layer (network order as read).
    ether_type: u16,
    /// The packet's source (the client) and destination (the VIP), network order.
    client: [u32; 4],
    vip: [u32; 4],
}

/// Makes the frame the reply quoting `Q` bytes. `Ok(false)`: the frame holds fewer than
/// `Q` bytes after `l2` (its IP length lied), nothing changed; `Err`: the head or tail
/// could not move (no headroom), which XDP's 256 bytes of headroom rule out.
#[inline(always)]
fn reply<const Q: usize>(ctx: &XdpContext, l2: usize, v6: bool, mtu: u32) -> Result<bool, ()> {
    if ptr_at::<[u8; Q]>(ctx, l2).is_none() {
        return Ok(false);
    }
    let hdr = if v6 { 40 } else { 20 };
    let grow = hdr + 8;
    // SAFETY: a helper on this program's own context; it checks the headroom.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(grow as i32)) } != 0 {
        return Err(());
    }
    let want = l2 + grow + Q;
    let len = ctx.data_end() - ctx.data();
    // SAFETY: as above; the frame is at least `want` long (checked before the move).
    if len > want && unsafe { bpf_xdp_adjust_tail(ctx.ctx, -((len - want) as i32)) } != 0 {
        return Err(());
    }
    let old = read_old(ctx, grow, l2, v6).ok_or(())?;
    let front = ptr_at::<[u8; 18]>(ctx, 0).ok_or(())? as *mut u8;
    // SAFETY: within the 18 bytes ptr_at checked; MACs swapped, the tag kept (for an
    // untagged frame bytes 14..18 are rewritten with the IP header below).
    unsafe {
        let w = front as *mut u16;
        for i in 0..3 {
            w.add(i).write_unaligned(old.macs[i + 3]);
            w.add(i + 3).write_unaligned(old.macs[i]);
        }
        store_u32(front, 12, old.tag);
        front
            .add(l2 - 2)
            .cast::<u16>()
            .write_unaligned(old.ether_type);
    }
    let quote = ptr_at::<[u8; Q]>(ctx, l2 + grow).ok_or(())? as *mut u32;
    // SAFETY: a helper reading the Q bytes ptr_at checked (Q ≤ 512, a multiple of 4).
    let partial = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, quote, Q as u32, 0) };
    if partial < 0 {
        return Err(());
    }
    let partial = partial as u32 as u64;
    let out = ptr_at::<[u8; 48]>(ctx, l2).ok_or(())? as *mut u8;
    // SAFETY: the 48 bytes ptr_at checked (the v4 headers take 28 of them).
    unsafe {
        if v6 {
            write_v6(out, &old, mtu, Q, partial);
        } else {
            write_v4(out, &old, mtu, Q, partial);
        }
    }
    Ok(true)
}

/// Reads [`Old`] from the frame whose head moved by `grow` (the old L2 header at `grow`,
/// its IP header at `grow + l2`).
#[inline(always)]
fn read_old(ctx: &XdpContext, grow: usize, l2: usize, v6: bool) -> Option<Old> {
    let eth = ptr_at::<[u8; 18]>(ctx, grow)? as *const u8;
    let ip = ptr_at::<[u8; 40]>(ctx, grow + l2)? as *const u8;
    let (s, d) = if v6 { (8, 24) } else { (12, 16) };
    // SAFETY (all reads): within the 18 and 40 bytes ptr_at checked.
    unsafe {
        let w = eth as *const u16;
        let mut macs = [0u16; 6];
        for (i, m) in macs.iter_mut().enumerate() {
            *m = w.add(i).read_unaligned();
        }
        let word = |at: usize, i: usize| {
            if v6 || i == 0 {
                load_u32(ip, at + 4 * i)
            } else {
                0
            }
        };
        Some(Old {
            macs,
            tag: load_u32(eth, 12),
            ether_type: eth.add(l2 - 2).cast::<u16>().read_unaligned(),
            client: [word(s, 0), word(s, 1), word(s, 2), word(s, 3)],
            vip: [word(d, 0), word(d, 1), word(d, 2), word(d, 3)],
        })
    }
}

/// The IPv4 and ICMP headers of fragmentation needed at `out` (28 bytes), quoting `q`
/// bytes whose sum is `partial`.
///
/// # Safety
/// `out .. out + 28` is writable, bounds-checked packet data.
#[inline(always)]
unsafe fn write_v4(out: *mut u8, old: &Old, mtu: u32, q: usize, partial: u64) {
    let m = (mtu.min(0xffff) as u16).to_be_bytes();
    let i0 = u32::from_ne_bytes([ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 0, 0]);
    let i1 = u32::from_ne_bytes([0, 0, m[0], m[1]]);
    let c = csum::finish(partial + i0 as u64 + i1 as u64).to_ne_bytes();
    let i0 = u32::from_ne_bytes([ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, c[0], c[1]]);
    let tl = ((20 + 8 + q) as u16).to_be_bytes();
    let w0 = u32::from_ne_bytes([0x45, 0, tl[0], tl[1]]);
    let w2 = u32::from_ne_bytes([REPLY_TTL, PROTO_ICMP, 0, 0]);
    let (src, dst) = (old.vip[0], old.client[0]);
    let c = csum::finish(w0 as u64 + w2 as u64 + src as u64 + dst as u64).to_ne_bytes();
    let w2 = u32::from_ne_bytes([REPLY_TTL, PROTO_ICMP, c[0], c[1]]);
    // SAFETY: the caller's 28 bytes.
    unsafe {
        store_u32(out, 0, w0);
        store_u32(out, 4, 0);
        store_u32(out, 8, w2);
        store_u32(out, 12, src);
        store_u32(out, 16, dst);
        store_u32(out, 20, i0);
        store_u32(out, 24, i1);
    }
}

/// The IPv6 and ICMPv6 headers of packet too big at `out` (48 bytes), quoting `q` bytes
/// whose sum is `partial`; the checksum covers the pseudo-header (RFC 4443 §2.3).
///
/// # Safety
/// `out .. out + 48` is writable, bounds-checked packet data.
#[inline(always)]
unsafe fn write_v6(out: *mut u8, old: &Old, mtu: u32, q: usize, partial: u64) {
    let plen = (8 + q) as u32;
    let i0 = u32::from_ne_bytes([ICMPV6_PACKET_TOO_BIG, 0, 0, 0]);
    let i1 = mtu.to_be();
    let mut sum = partial + i0 as u64 + i1 as u64;
    sum += plen.to_be() as u64 + (PROTO_ICMPV6 as u32).to_be() as u64;
    for i in 0..4 {
        sum += old.vip[i] as u64 + old.client[i] as u64;
    }
    let c = csum::finish(sum).to_ne_bytes();
    let i0 = u32::from_ne_bytes([ICMPV6_PACKET_TOO_BIG, 0, c[0], c[1]]);
    let pl = (plen as u16).to_be_bytes();
    // SAFETY: the caller's 48 bytes.
    unsafe {
        store_u32(out, 0, u32::from_ne_bytes([0x60, 0, 0, 0]));
        store_u32(
            out,
            4,
            u32::from_ne_bytes([pl[0], pl[1], PROTO_ICMPV6, REPLY_TTL]),
        );
        for i in 0..4 {
            store_u32(out, 8 + 4 * i, old.vip[i]);
            store_u32(out, 24 + 4 * i, old.client[i]);
        }
        store_u32(out, 40, i0);
        store_u32(out, 44, i1);
    }
}
