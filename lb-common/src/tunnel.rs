//! The boundary of `forwarding = "tunnel"`: what the controller tells the XDP program (and
//! the health-probe TC program) about tunnel sources and egress interfaces, and the pure
//! rules both sides (and `xlb explain`) share.
//!
//! Tunnel kinds (README, "Tunnel forwarding"): an IPv4 packet to an IPv4 backend is sent
//! in IPIP (RFC 2003, outer protocol 4); an IPv6 packet to an IPv6 backend in IP6IP6
//! (RFC 2473, next header 41); an IPv4 packet to an IPv6 backend in 4in6 (RFC 2473, next
//! header 4). IPv6 in IPv4 is not supported (the validator refuses an IPv6 VIP with an
//! IPv4 backend).
//!
//! Outer header rules: destination = the backend; source = [`outer_source`] of the
//! service's `tunnel_source` prefix for the client, or the egress interface's address of
//! the backend's family ([`Egress`]) without one; TTL / hop limit = the inner packet's;
//! DSCP and ECN = the inner packet's (RFC 6040 "normal mode" copies ECN); IPv4 outer DF =
//! the inner IPv4 packet's DF (set for an inner IPv6 packet: n/a, IPv6 outer has no DF);
//! IPv4 outer identification = the inner IPv4 packet's; IPv6 outer flow label = the low 20
//! bits of the client hash (so routers' and the backend's flow hashing spread clients).
//!
//! Pure data and arithmetic: must not touch the packet or a map.

use crate::{Addr, FAMILY_V6, hash};

/// ARRAY: service id → [`TunnelSource`] (read only when the service's flags have
/// [`crate::SVC_F_TUNNEL_SOURCE`]).
pub const MAP_TUN_SRC: &str = "XLB_TUN_SRC";
/// HASH: egress ifindex (`u32`, host order) → [`Egress`], for every interface a tunnel
/// backend is reached through; the controller keeps it current (MTU and address changes).
pub const MAP_EGRESS: &str = "XLB_EGRESS";
/// Entries of `XLB_EGRESS` (as many as redirect ports).
pub const MAX_EGRESS: u32 = crate::MAX_TX_PORTS;

/// Name of the TC (clsact egress) program that encapsulates the daemon's health probes
/// of tunnel backends, in the same object as the balancer (it shares its maps).
pub const PROG_PROBE: &str = "xlb_probe";

/// Bytes the outer header adds: IPv4 (IPIP) and IPv6 (IP6IP6, 4in6), no options or
/// extension headers.
pub const OUTER_V4_LEN: u32 = 20;
pub const OUTER_V6_LEN: u32 = 40;

/// IP protocol / next-header numbers of the inner packet (IANA): IPv4 in IP (4), IPv6 (41).
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_IPV6: u8 = 41;

/// `SO_MARK` of a health probe to a tunnel backend: [`PROBE_MARK_BASE`] | backend id.
/// The probe TC program encapsulates exactly the packets whose mark has this high half
/// (and passes every other packet untouched).
pub const PROBE_MARK_BASE: u32 = 0x584c_0000;
/// The part of a probe mark that must equal [`PROBE_MARK_BASE`].
pub const PROBE_MARK_MASK: u32 = 0xffff_0000;

/// The mark for a probe to backend `id` (`id < MAX_BACKENDS`, which fits 16 bits).
#[inline(always)]
pub const fn probe_mark(backend_id: u32) -> u32 {
    PROBE_MARK_BASE | (backend_id & !PROBE_MARK_MASK)
}

/// The backend id of a probe mark, `None` when the mark is no probe's.
#[inline(always)]
pub const fn probe_backend(mark: u32) -> Option<u32> {
    if mark & PROBE_MARK_MASK == PROBE_MARK_BASE {
        Some(mark & !PROBE_MARK_MASK)
    } else {
        None
    }
}

/// A service's `tunnel_source = "PREFIX"`: outer sources are `base` with the host bits
/// ([`TunnelSource::host_mask`]) taken from the client's hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TunnelSource {
    /// The prefix's network address (host bits zero), network order ([`Addr`]).
    pub base: Addr,
    /// The host bits of the prefix (all ones after the prefix length, within the family's
    /// width), in the layout of [`Addr`].
    pub host_mask: Addr,
    /// `FAMILY_V4` or `FAMILY_V6` (equal to the family of every backend of the service).
    pub family: u8,
    /// The prefix length (for display only).
    pub prefix_len: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<TunnelSource>() == 36);

/// [`Egress::flags`]: `v4` holds an address of the interface.
pub const EGRESS_F_V4: u32 = 1 << 0;
/// [`Egress::flags`]: `v6` holds an address of the interface.
pub const EGRESS_F_V6: u32 = 1 << 1;

/// An egress interface of tunnel backends (`XLB_EGRESS[ifindex]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Egress {
    /// The interface's MTU (bytes of IP packet, host order): an outer packet longer than
    /// this is not sent (the client is told the inner MTU: `mtu - OUTER_*_LEN`).
    pub mtu: u32,
    /// `EGRESS_F_*` bits.
    pub flags: u32,
    /// The interface's IPv4 address (the first one, scope global), network order, in the
    /// first word of an [`Addr`] layout: the default outer source of IPIP.
    pub v4: u32,
    /// The interface's IPv6 address (the first one, scope global), network order
    /// ([`Addr`]): the default outer source of IP6IP6 and 4in6.
    pub v6: Addr,
}
const _: () = assert!(core::mem::size_of::<Egress>() == 28);

/// The client's hash that picks its outer source and (IPv6) outer flow label: the flow
/// hash of its address (not masked, no port), so each client keeps one outer source and
/// the backend's RSS spreads clients over its queues.
#[inline(always)]
pub fn client_hash(client: &Addr) -> u32 {
    hash::hash_addr_words(client, 0x7475_6e6e, hash::FLOW_HASH_SEED) as u32
}

/// The outer source for a client of hash `h` ([`client_hash`]) under `src`: the prefix's
/// network bits, the host bits from `h` (in every word that has host bits).
#[inline(always)]
pub fn outer_source(src: &TunnelSource, h: u32) -> Addr {
    // Words in Addr layout hold network-order bytes; AND/OR are bytewise, so the same
    // `h` bits land in the host bits whatever the host's endianness.
    [
        src.base[0] | (h & src.host_mask[0]),
        src.base[1] | (h.rotate_left(8) & src.host_mask[1]),
        src.base[2] | (h.rotate_left(16) & src.host_mask[2]),
        src.base[3] | (h.rotate_left(24) & src.host_mask[3]),
    ]
}

/// The outer source of a tunnel packet to a backend of `family` (the outer family) for a
/// client of hash `h` ([`client_hash`]): from the service's `tunnel_source` (`src`; `None`
/// when it has none), else the egress interface's address of that family. `None`: the
/// interface has no such address (the packet is dropped as `DropNoEgress`).
#[inline(always)]
pub fn pick_outer_source(
    src: Option<&TunnelSource>,
    egress: &Egress,
    family: u8,
    h: u32,
) -> Option<Addr> {
    if let Some(src) = src {
        return Some(outer_source(src, h));
    }
    if family == FAMILY_V6 {
        (egress.flags & EGRESS_F_V6 != 0).then_some(egress.v6)
    } else {
        (egress.flags & EGRESS_F_V4 != 0).then_some([egress.v4, 0, 0, 0])
    }
}

/// The IPv6 outer flow label of a client of hash `h`: its low 20 bits (host order).
#[inline(always)]
pub const fn flow_label(h: u32) -> u32 {
    h & 0x000f_ffff
}

/// The inner MTU the client is told when an encapsulated packet would exceed `egress_mtu`
/// (`backend_family`: the outer header's family).
#[inline(always)]
pub const fn inner_mtu(egress_mtu: u32, backend_family: u8) -> u32 {
    let overhead = if backend_family == FAMILY_V6 {
        OUTER_V6_LEN
    } else {
        OUTER_V4_LEN
    };
    egress_mtu.saturating_sub(overhead)
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], integers and explicit padding only.
    unsafe impl aya::Pod for super::TunnelSource {}
    unsafe impl aya::Pod for super::Egress {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FAMILY_V4, addr_from_bytes, addr_to_bytes, prefix_mask};

    fn v4(a: [u8; 4]) -> Addr {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&a);
        addr_from_bytes(&b)
    }

    fn source(base: [u8; 4], len: u8) -> TunnelSource {
        let m = prefix_mask(len, FAMILY_V4);
        let full = prefix_mask(32, FAMILY_V4);
        TunnelSource {
            base: v4(base),
            host_mask: [!m[0] & full[0], 0, 0, 0],
            family: FAMILY_V4,
            prefix_len: len,
            _pad: [0; 2],
        }
    }

    #[test]
    fn outer_sources_stay_in_the_prefix_and_spread() {
        let src = source([10, 99, 0, 0], 24);
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000u32 {
            let c = v4([198, 18, (i >> 8) as u8, i as u8]);
            let o = addr_to_bytes(&outer_source(&src, client_hash(&c)));
            assert_eq!(&o[..3], &[10, 99, 0], "client {i} left the prefix");
            assert_eq!(&o[4..], &[0; 12]);
            seen.insert(o[3]);
        }
        // 1000 clients over 256 host values: nearly all used.
        assert!(seen.len() > 240, "only {} outer sources", seen.len());
    }

    #[test]
    fn a_host_prefix_is_one_source() {
        let src = source([10, 99, 0, 7], 32);
        let c = v4([198, 18, 0, 1]);
        assert_eq!(outer_source(&src, client_hash(&c)), v4([10, 99, 0, 7]));
    }

    #[test]
    fn the_outer_source_falls_back_to_the_egress_address() {
        let eg = Egress {
            mtu: 1500,
            flags: EGRESS_F_V4,
            v4: v4([10, 0, 0, 1])[0],
            v6: [0; 4],
        };
        let h = client_hash(&v4([198, 18, 0, 1]));
        assert_eq!(
            pick_outer_source(None, &eg, FAMILY_V4, h),
            Some(v4([10, 0, 0, 1]))
        );
        assert_eq!(pick_outer_source(None, &eg, FAMILY_V6, h), None);
        let src = source([10, 99, 0, 7], 32);
        assert_eq!(
            pick_outer_source(Some(&src), &eg, FAMILY_V4, h),
            Some(v4([10, 99, 0, 7]))
        );
        assert_eq!(flow_label(0xfff1_2345), 0x1_2345);
    }

    #[test]
    fn probe_marks_round_trip() {
        assert_eq!(probe_backend(probe_mark(4095)), Some(4095));
        assert_eq!(probe_backend(0), None);
        assert_eq!(probe_backend(0x584d_0001), None);
        assert_eq!(inner_mtu(1500, FAMILY_V4), 1480);
        assert_eq!(inner_mtu(1500, FAMILY_V6), 1460);
    }
}
