//! Headers to a [`Flow`]: Ethernet, at most one VLAN tag, IPv4 or IPv6, TCP or UDP ports;
//! ICMP and ICMPv6 to a possible VIP are handed to `icmp` ([`Parsed::Icmp`]). The place
//! where fragments and IPv6 extension headers are told apart.
//!
//! Rules for bad input: a frame whose Ethernet, VLAN or IP header is truncated or invalid
//! is [`Parsed::Pass`]ed as `PassMalformed`, because before the destination address is
//! known it is not ours to judge; after it, a packet xlb cannot balance (a fragment, an
//! IPv6 extension header, a truncated TCP/UDP header) is [`Parsed::Unbalanceable`] and
//! the caller asks whether its destination is a VIP.
//!
//! Reads the packet only; must not write it, count verdicts or look up services. The one
//! map it consults is the VIP pre-filter (through `service`), as soon as the destination
//! is known, so that traffic for no service pays one lookup and nothing more.

use aya_ebpf::programs::XdpContext;
use lb_common::{Addr, FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Stat};
use lb_ebpf::{ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, load_u32, ptr_at};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

use super::{icmp::IcmpAt, service::vip_filter_hit};

/// IPv4 flags/fragment-offset bits that mark a fragment: MF and the 13-bit offset.
const IPV4_FRAG_MASK: u16 = 0x3fff;
/// IPv6 next-header values that are extension headers (RFC 8200 §4, RFC 7045; 253 and
/// 254 are the experimental ones of RFC 4727, found missing by the fuzzer).
const IPV6_FRAGMENT: u8 = 44;
const IPV6_EXT_HEADERS: [u8; 9] = [0, 43, 60, 51, 135, 139, 140, 253, 254];

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
    if u16::from_be_bytes(ip.frags) & IPV4_FRAG_MASK != 0 {
        return unbalanceable(daddr, FAMILY_V4, Stat::DropFragment);
    }
    let saddr = [unsafe { load_u32(base, 12) }, 0, 0, 0];
    if ip.proto == PROTO_ICMP {
        return icmp(l3, l3 + ihl, daddr, FAMILY_V4);
    }
    l4(ctx, l3 + ihl, daddr, saddr, FAMILY_V4, ip.proto)
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
    let proto = ip.next_hdr;
    if proto == IPV6_FRAGMENT {
        return unbalanceable(d, FAMILY_V6, Stat::DropFragment);
    }
    if IPV6_EXT_HEADERS.contains(&proto) {
        return unbalanceable(d, FAMILY_V6, Stat::DropIpv6ExtHeader);
    }
    let saddr = unsafe {
        [
            load_u32(base, 8),
            load_u32(base, 12),
            load_u32(base, 16),
            load_u32(base, 20),
        ]
    };
    if proto == PROTO_ICMPV6 {
        return icmp(l3, l3 + Ipv6Hdr::LEN, d, FAMILY_V6);
    }
    l4(ctx, l3 + Ipv6Hdr::LEN, d, saddr, FAMILY_V6, proto)
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
fn l4(ctx: &XdpContext, l4: usize, daddr: Addr, saddr: Addr, family: u8, proto: u8) -> Parsed {
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
    })
}
