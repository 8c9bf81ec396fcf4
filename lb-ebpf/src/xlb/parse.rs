//! Headers to a [`Flow`]: Ethernet, at most one VLAN tag, IPv4 or IPv6 (its extension
//! headers walked, at most `MAX_IPV6_EXT_HEADERS`), TCP or UDP ports. ICMP and ICMPv6 to a
//! possible VIP are handed to `icmp` ([`Parsed::Icmp`]); a later fragment (no ports) to
//! `frag` ([`Parsed::Fragment`]); a first fragment is a [`Flow`] that says so.
//!
//! Rules for bad input: a frame whose Ethernet, VLAN or IP header is truncated or invalid
//! is [`Parsed::Pass`]ed as `PassMalformed`, because before the destination address is
//! known it is not ours to judge; after it, a packet xlb cannot balance (a fragment of
//! neither TCP nor UDP, an IPv6 extension header it does not walk or one too many, a
//! truncated extension or TCP/UDP header) is [`Parsed::Unbalanceable`] and the caller
//! asks whether its destination is a VIP.
//!
//! Reads the packet only; must not write it, count verdicts or look up services. The one
//! map it consults is the VIP pre-filter (through `service`), as soon as the destination
//! is known, so that traffic for no service pays one lookup and nothing more.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    Addr, FAMILY_V4, FAMILY_V6, MAX_IPV6_EXT_HEADERS, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP,
    PROTO_UDP, Stat,
};
use lb_ebpf::{ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, load_u32, ptr_at};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

use super::{frag::Later, icmp::IcmpAt, service::vip_filter_hit};

/// IPv4 flags/fragment-offset bits that mark a fragment: MF and the 13-bit offset.
const IPV4_FRAG_MASK: u16 = 0x3fff;
/// The IPv4 fragment offset.
const IPV4_OFFSET_MASK: u16 = 0x1fff;
/// IPv6 extension headers walked (RFC 8200 §4): hop-by-hop, routing, destination
/// options (length in 8-byte units after the first 8), and the fragment header (8 bytes).
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_DEST_OPTS: u8 = 60;
const IPV6_FRAGMENT: u8 = 44;
/// IPv6 extension headers not walked (AH, ESP, mobility, HIP, shim6, the experimental
/// 253 and 254 of RFC 4727: found missing by the fuzzer): dropped when to a VIP.
const IPV6_DROPPED_HEADERS: [u8; 7] = [51, 50, 135, 139, 140, 253, 254];
/// The IPv6 fragment header's offset bits (the low three are reserved and M).
const IPV6_OFFSET_MASK: u16 = 0xfff8;

/// A TCP or UDP packet whose destination passed the VIP pre-filter. Addresses and ports
/// in network byte order, as the packet carries them.
pub struct Flow {
    pub daddr: Addr,
    pub saddr: Addr,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// The identification (host order) when this packet is the first fragment of a
    /// fragmented one: its ports are remembered for the later fragments.
    pub first_fragment: Option<u32>,
}

/// What parsing found.
pub enum Parsed {
    /// A packet to balance, if a service owns it.
    Flow(Flow),
    /// Not xlb's: passed untouched and counted as the given reason.
    Pass(Stat),
    /// ICMP (IPv4) or ICMPv6 to an address that passed the VIP pre-filter: for
    /// `icmp::handle`.
    Icmp(IcmpAt),
    /// A later TCP or UDP fragment (no ports) to an address that passed the pre-filter:
    /// for `frag::later`.
    Fragment(Later),
    /// Cannot be balanced: dropped as `reason` if `daddr` is a VIP, else passed.
    Unbalanceable {
        daddr: Addr,
        family: u8,
        reason: Stat,
    },
}

/// Ethernet header, at most one VLAN tag (802.1Q or 802.1ad), then the IP layer.
#[inline(always)]
pub fn packet(ctx: &XdpContext) -> Parsed {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Parsed::Pass(Stat::PassMalformed);
    };
    // SAFETY: ptr_at checked the bounds.
    let mut ether_type = unsafe { (*eth).ether_type };
    let mut l3 = EthHdr::LEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let Some(vlan) = ptr_at::<VlanHdr>(ctx, l3) else {
            return Parsed::Pass(Stat::PassMalformed);
        };
        // SAFETY: ptr_at checked the bounds.
        ether_type = unsafe { (*vlan).ether_type };
        l3 += VlanHdr::LEN;
    }
    if ether_type == ETH_P_IP {
        ipv4(ctx, l3)
    } else if ether_type == ETH_P_IPV6 {
        ipv6(ctx, l3)
    } else {
        Parsed::Pass(Stat::PassNonIp)
    }
}

/// The IPv4 header at `l3`: version, IHL, the pre-filter, fragments.
#[inline(always)]
fn ipv4(ctx: &XdpContext, l3: usize) -> Parsed {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, l3) else {
        return Parsed::Pass(Stat::PassMalformed);
    };
    // SAFETY: ptr_at checked the bounds for the whole fixed header.
    let ip = unsafe { &*ip };
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return Parsed::Pass(Stat::PassMalformed);
    }
    let base = ip as *const Ipv4Hdr as *const u8;
    // SAFETY (all loads below): within the 20-byte header ptr_at checked.
    let d = unsafe { load_u32(base, 16) };
    if !vip_filter_hit(d) {
        return Parsed::Pass(Stat::PassNotService);
    }
    let daddr = [d, 0, 0, 0];
    let saddr = [unsafe { load_u32(base, 12) }, 0, 0, 0];
    let frags = u16::from_be_bytes(ip.frags);
    if frags & IPV4_FRAG_MASK != 0 {
        if ip.proto != PROTO_TCP && ip.proto != PROTO_UDP {
            return unbalanceable(daddr, FAMILY_V4, Stat::DropFragment);
        }
        let id = u16::from_be_bytes(ip.id) as u32;
        if frags & IPV4_OFFSET_MASK != 0 {
            return later(daddr, saddr, FAMILY_V4, ip.proto, id);
        }
        return l4(ctx, l3 + ihl, daddr, saddr, FAMILY_V4, ip.proto, Some(id));
    }
    if ip.proto == PROTO_ICMP {
        return icmp(l3, l3 + ihl, daddr, FAMILY_V4);
    }
    l4(ctx, l3 + ihl, daddr, saddr, FAMILY_V4, ip.proto, None)
}

/// The IPv6 header at `l3`: version, the pre-filter, fragments and extension headers.
#[inline(always)]
fn ipv6(ctx: &XdpContext, l3: usize) -> Parsed {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, l3) else {
        return Parsed::Pass(Stat::PassMalformed);
    };
    // SAFETY: ptr_at checked the bounds for the whole fixed header.
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return Parsed::Pass(Stat::PassMalformed);
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
        return Parsed::Pass(Stat::PassNotService);
    }
    let saddr = unsafe {
        [
            load_u32(base, 8),
            load_u32(base, 12),
            load_u32(base, 16),
            load_u32(base, 20),
        ]
    };
    let mut at = Ext {
        proto: ip.next_hdr,
        off: l3 + Ipv6Hdr::LEN,
        first_fragment: None,
    };
    let mut i = 0;
    // Bounded: the verifier sees at most MAX_IPV6_EXT_HEADERS steps.
    while i < MAX_IPV6_EXT_HEADERS {
        match ext_header(ctx, &mut at) {
            Step::Next => i += 1,
            Step::Done => break,
            Step::Later(id) => return later(d, saddr, FAMILY_V6, at.proto, id),
            Step::Unbalanceable(reason) => return unbalanceable(d, FAMILY_V6, reason),
        }
    }
    let proto = at.proto;
    if is_walked(proto) || IPV6_DROPPED_HEADERS.contains(&proto) {
        return unbalanceable(d, FAMILY_V6, Stat::DropIpv6ExtHeader);
    }
    if proto == PROTO_ICMPV6 {
        return icmp(l3, at.off, d, FAMILY_V6);
    }
    l4(ctx, at.off, d, saddr, FAMILY_V6, proto, at.first_fragment)
}

/// Where the walk of IPv6 extension headers is.
struct Ext {
    /// The next header value in hand.
    proto: u8,
    /// Offset of the header it names.
    off: usize,
    /// The fragment header's identification, when it said "first fragment".
    first_fragment: Option<u32>,
}

/// What one step of the walk found.
enum Step {
    /// Went past one extension header.
    Next,
    /// `proto` is no extension header xlb walks.
    Done,
    /// A later fragment with this identification (`proto`: its upper layer).
    Later(u32),
    Unbalanceable(Stat),
}

#[inline(always)]
fn is_walked(proto: u8) -> bool {
    proto == IPV6_HOP_BY_HOP
        || proto == IPV6_ROUTING
        || proto == IPV6_DEST_OPTS
        || proto == IPV6_FRAGMENT
}

/// One extension header at `at.off`: step over it. A fragment header must name TCP or
/// UDP right after it.
#[inline(always)]
fn ext_header(ctx: &XdpContext, at: &mut Ext) -> Step {
    if at.proto == IPV6_FRAGMENT {
        let Some(h) = ptr_at::<[u8; 8]>(ctx, at.off) else {
            return Step::Unbalanceable(Stat::DropMalformed);
        };
        // SAFETY: ptr_at checked the 8 bytes.
        let h = unsafe { &*h };
        at.proto = h[0];
        at.off += 8;
        if at.proto != PROTO_TCP && at.proto != PROTO_UDP {
            return Step::Unbalanceable(Stat::DropFragment);
        }
        let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        if u16::from_be_bytes([h[2], h[3]]) & IPV6_OFFSET_MASK != 0 {
            return Step::Later(id);
        }
        at.first_fragment = Some(id);
        return Step::Next;
    }
    if !is_walked(at.proto) {
        return Step::Done;
    }
    let Some(h) = ptr_at::<[u8; 2]>(ctx, at.off) else {
        return Step::Unbalanceable(Stat::DropMalformed);
    };
    // SAFETY: ptr_at checked the 2 bytes.
    let h = unsafe { &*h };
    at.proto = h[0];
    at.off += (h[1] as usize + 1) * 8;
    Step::Next
}

#[inline(always)]
fn later(daddr: Addr, saddr: Addr, family: u8, proto: u8, id: u32) -> Parsed {
    Parsed::Fragment(Later {
        daddr,
        saddr,
        family,
        proto,
        id,
    })
}

#[inline(always)]
fn icmp(l3: usize, l4: usize, daddr: Addr, family: u8) -> Parsed {
    Parsed::Icmp(IcmpAt {
        l3,
        l4,
        family,
        daddr,
    })
}

#[inline(always)]
fn unbalanceable(daddr: Addr, family: u8, reason: Stat) -> Parsed {
    Parsed::Unbalanceable {
        daddr,
        family,
        reason,
    }
}

/// The TCP or UDP header at `l4`: the ports. Any other protocol is not a service's.
#[inline(always)]
fn l4(
    ctx: &XdpContext,
    l4: usize,
    daddr: Addr,
    saddr: Addr,
    family: u8,
    proto: u8,
    first_fragment: Option<u32>,
) -> Parsed {
    let len = if proto == PROTO_TCP {
        TcpHdr::LEN
    } else if proto == PROTO_UDP {
        UdpHdr::LEN
    } else {
        return Parsed::Pass(Stat::PassNotService);
    };
    // Ports are the first four bytes of both headers; the whole fixed header must be
    // present, or the backend would only drop the packet later.
    let start = ctx.data() + l4;
    if start + len > ctx.data_end() {
        return unbalanceable(daddr, family, Stat::DropMalformed);
    }
    // SAFETY: bounds checked just above.
    let ports = unsafe { load_u32(start as *const u8, 0) }.to_ne_bytes();
    Parsed::Flow(Flow {
        daddr,
        saddr,
        family,
        proto,
        sport: u16::from_ne_bytes([ports[0], ports[1]]),
        dport: u16::from_ne_bytes([ports[2], ports[3]]),
        first_fragment,
    })
}
