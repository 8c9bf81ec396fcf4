//! The frames of the packet tier's fixtures (`tests/tests/packet.rs`), by name, in one
//! place: the fuzzer mutates every one of them, and the packet tier checks that each frame
//! it sends has its shape here (see [`shape`]), so a new fixture cannot escape the fuzzer.
//!
//! Owns frames only: no expectation lives here (the packet tier states those per row,
//! the fuzzer's oracle derives them from the README's rules).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::packet::{
    ETH_8021AD, ETH_8021Q, ETH_LLDP, Ext, IPPROTO_TCP, IPPROTO_UDP, L4, V4Opts, arp_request, eth,
    frame, icmp, icmp_echo, ip, layout, raw, tcp, tcp_frame, udp, udp_frame, v6_chain,
};

/// The VIP of the IPv4 services on ports 80 (TCP) and 53 (UDP).
pub const VIP4: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10));
/// The VIP of the IPv6 services on ports 80 (TCP) and 53 (UDP).
pub const VIP6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10));
/// A service with a /24 client prefix.
pub const VIP_NET24: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 20));
/// A service with `affinity = "none"`.
pub const VIP_FLOWS: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 30));
/// The packet tier's short-idle-timeout service; the fuzzer's service without a healthy
/// backend that drops.
pub const VIP_40: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 40));
/// A service without a healthy backend, `no_backend = "pass"`.
pub const VIP_PASSING: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 50));
/// A service whose backend sits behind another interface (XDP_REDIRECT).
pub const VIP_REMOTE: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 60));
/// A service whose backend's interface is missing from the redirect map.
pub const VIP_NOPORT: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 61));
/// A TCP service on every port (port 0).
pub const VIP_ANYPORT: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 70));
pub const CLIENT4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
pub const CLIENT6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 7));
/// A VIP with two TCP services (80, 443): later fragments need tracking.
pub const VIP_TWO: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 80));
/// A client no fixture pins: ICMP errors about it go where its Maglev slot says.
pub const HASHED4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 99));
pub const HASHED6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0x99));
/// The router on the way to the clients that sends ICMP errors to the VIPs.
pub const ROUTER4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 254));
pub const ROUTER6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1));
/// Addresses no service has.
pub const OTHER4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9));
pub const OTHER6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1));

/// Tunnel-mode services (README, "Tunnel forwarding"): IPIP, and 4in6 (an IPv4 VIP whose
/// backend is IPv6), IP6IP6; a backend behind another interface; one whose interface has
/// no `XLB_EGRESS` entry.
pub const VIP_IPIP: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 90));
pub const VIP_4IN6: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 92));
pub const VIP6_TUN: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x90));
pub const VIP_TUN_REMOTE: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 93));
pub const VIP_TUN_NOEGRESS: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 94));

/// `l4` from `src` to `dst` in a frame with these VLAN tags (outermost first).
pub fn tagged(src: IpAddr, dst: IpAddr, l4: &L4, tags: &[(u16, u16)]) -> Vec<u8> {
    let (et, p) = ip(src, dst, l4, &V4Opts::default());
    eth(et, &p, tags)
}

/// An IPv4 frame with these header option bytes (a multiple of 4, at most 40).
pub fn v4_with_options(src: IpAddr, dst: IpAddr, l4: &L4, options: &[u8]) -> Vec<u8> {
    let opts = V4Opts {
        options: options.to_vec(),
        ..Default::default()
    };
    let (et, p) = ip(src, dst, l4, &opts);
    eth(et, &p, &[])
}

/// A TCP segment with 16 bytes of payload in an IPv4 fragment: `frag` is the flags +
/// offset field (host order), e.g. 0x2000 = MF, 185 = offset 1480.
pub fn v4_fragment(dst: IpAddr, frag: u16) -> Vec<u8> {
    let opts = V4Opts {
        frag,
        ..Default::default()
    };
    let (et, p) = ip(CLIENT4, dst, &tcp(40012, 80, &[0u8; 16]), &opts);
    eth(et, &p, &[])
}

/// An IPv4 first fragment (MF, offset 0) of `l4` with identification `id`.
pub fn v4_first(src: IpAddr, dst: IpAddr, l4: &L4, id: u16) -> Vec<u8> {
    let opts = V4Opts {
        frag: 0x2000,
        id: Some(id),
        ..Default::default()
    };
    let (et, p) = ip(src, dst, l4, &opts);
    eth(et, &p, &[])
}

/// An IPv4 later fragment (offset 1480 bytes, last) of protocol `proto` with
/// identification `id`: payload bytes only, no ports.
pub fn v4_later(src: IpAddr, dst: IpAddr, proto: u8, id: u16) -> Vec<u8> {
    let opts = V4Opts {
        frag: 185,
        id: Some(id),
        ..Default::default()
    };
    let (et, p) = ip(src, dst, &raw(proto, &[0x5a; 64]), &opts);
    eth(et, &p, &[])
}

/// An IPv6 first fragment (offset 0, M) of `l4` with identification `id`.
pub fn v6_first(src: IpAddr, dst: IpAddr, l4: &L4, id: u32) -> Vec<u8> {
    let f = Ext::Frag {
        offset: 0,
        more: true,
        id,
    };
    v6_chain(src, dst, &[f], l4)
}

/// An IPv6 later fragment (offset 1448 bytes, last) of protocol `proto`.
pub fn v6_later(src: IpAddr, dst: IpAddr, proto: u8, id: u32) -> Vec<u8> {
    let f = Ext::Frag {
        offset: 181,
        more: false,
        id,
    };
    v6_chain(src, dst, &[f], &raw(proto, &[0x5a; 64]))
}

/// IPv6 with one 8-byte extension header `next` (TCP after it) and a TCP header to port 80.
pub fn v6_ext(next: u8, dst: IpAddr) -> Vec<u8> {
    let mut body = vec![IPPROTO_TCP, 0, 0, 0, 0, 0, 0, 0];
    body.extend_from_slice(&[0x9c, 0x40, 0, 80, 0, 0, 0, 0]);
    frame(CLIENT6, dst, &raw(next, &body))
}

/// An ICMP error from [`ROUTER4`]/[`ROUTER6`] to `vip` about a packet the service sent
/// from `vip`:`sport` to `client`:`cport` (TCP unless `udp`), quoting its IP header and
/// the first 8 bytes of its layer 4, as routers do at least. `rest`: the word after the
/// checksum (the next-hop MTU of fragmentation needed, the MTU of packet too big).
pub fn icmp_error(
    ty: u8,
    code: u8,
    mtu: u32,
    vip: IpAddr,
    client: IpAddr,
    ports: (u16, u16),
    udp: bool,
) -> Vec<u8> {
    icmp_error_to(vip, ty, code, mtu, vip, client, ports, udp)
}

/// [`icmp_error`] addressed to `to` rather than to the quoted packet's source.
#[allow(clippy::too_many_arguments)]
pub fn icmp_error_to(
    to: IpAddr,
    ty: u8,
    code: u8,
    mtu: u32,
    vip: IpAddr,
    client: IpAddr,
    ports: (u16, u16),
    udp: bool,
) -> Vec<u8> {
    let v6 = vip.is_ipv6();
    let inner_l4 = if udp {
        crate::packet::udp(ports.0, ports.1, b"a DNS answer")
    } else {
        tcp(ports.0, ports.1, b"HTTP/1.1 200 OK\r\n")
    };
    let (_, inner) = ip(vip, client, &inner_l4, &V4Opts::default());
    let quoted = &inner[..if v6 { 40 } else { 20 } + 8];
    let router = if v6 { ROUTER6 } else { ROUTER4 };
    frame(router, to, &icmp(v6, ty, code, mtu.to_be_bytes(), quoted))
}

/// ICMPv4 fragmentation needed (type 3, code 4) with next-hop MTU 1400 about TCP from
/// `vip`:80 to `client`:`cport`.
pub fn frag_needed(vip: IpAddr, client: IpAddr, cport: u16) -> Vec<u8> {
    icmp_error(3, 4, 1400, vip, client, (80, cport), false)
}

/// ICMPv6 packet too big (type 2) with MTU 1280 about TCP from `vip`:80 to
/// `client`:`cport`.
pub fn packet_too_big(vip: IpAddr, client: IpAddr, cport: u16) -> Vec<u8> {
    icmp_error(2, 0, 1280, vip, client, (80, cport), false)
}

/// `f` (IPv4 or IPv6, as the builders make it) with DSCP + ECN `tos` and TTL / hop limit
/// `ttl`, and for IPv4 DF when `df`; the IPv4 header checksum recomputed.
pub fn with_tos(f: &[u8], tos: u8, ttl: u8, df: bool) -> Vec<u8> {
    let mut f = f.to_vec();
    let l = layout(&f).expect("an IP frame");
    let ip = &mut f[l.l3..];
    if l.v6 {
        ip[0] = 0x60 | (tos >> 4);
        ip[1] = (tos << 4) | (ip[1] & 0x0f);
        ip[7] = ttl;
    } else {
        ip[1] = tos;
        ip[8] = ttl;
        if df {
            ip[6] |= 0x40;
        }
        ip[10..12].fill(0);
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let mut sum = 0u32;
        for c in ip[..ihl].chunks_exact(2) {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    }
    f
}

/// A TCP segment with `payload` bytes from `src`:40000 to `dst`:80, IPv4 with DF when `df`.
pub fn sized(src: IpAddr, dst: IpAddr, payload: usize, df: bool) -> Vec<u8> {
    let f = frame(src, dst, &tcp(40000, 80, &vec![0x42; payload]));
    if df { with_tos(&f, 0, 64, true) } else { f }
}

/// The frames of the tunnel-mode fixtures (`tests/tests/packet/tunnel.rs`), by name.
pub fn tunnel_frames() -> Vec<Named> {
    let mut v = Vec::new();
    let mut add = |name: &'static str, frame: Vec<u8>| v.push(Named { name, frame });
    let syn = |dst| tcp_frame(CLIENT4, dst, 40000, 80);
    add("IPIP SYN", syn(VIP_IPIP));
    add("IPIP UDP", udp_frame(CLIENT4, VIP_IPIP, 5353, 53));
    add(
        "IPIP DSCP ECN TTL DF",
        with_tos(&syn(VIP_IPIP), 0xb9, 17, true),
    );
    let seg = tcp(40000, 80, b"");
    add(
        "IPIP VLAN",
        tagged(CLIENT4, VIP_IPIP, &seg, &[(ETH_8021Q, 10)]),
    );
    add("IP6IP6 SYN", tcp_frame(CLIENT6, VIP6_TUN, 40000, 80));
    add(
        "IP6IP6 DSCP ECN hop limit",
        with_tos(&tcp_frame(CLIENT6, VIP6_TUN, 40000, 80), 0xb9, 17, false),
    );
    add(
        "IP6IP6 VLAN",
        tagged(CLIENT6, VIP6_TUN, &seg, &[(ETH_8021AD, 20)]),
    );
    add("4in6 SYN", syn(VIP_4IN6));
    add(
        "4in6 DSCP ECN TTL DF",
        with_tos(&syn(VIP_4IN6), 0x2a, 5, true),
    );
    add(
        "4in6 VLAN",
        tagged(CLIENT4, VIP_4IN6, &seg, &[(ETH_8021Q, 10)]),
    );
    add("tunnel redirect", syn(VIP_TUN_REMOTE));
    add("tunnel no egress", syn(VIP_TUN_NOEGRESS));
    // MTU 1500: IPv4 in IPIP fits up to 1480 bytes, in 4in6 and IPv6 in IP6IP6 1460.
    add("IPIP 1480 DF", sized(CLIENT4, VIP_IPIP, 1440, true));
    add("IPIP 1481 DF", sized(CLIENT4, VIP_IPIP, 1441, true));
    add("IPIP 1481", sized(CLIENT4, VIP_IPIP, 1441, false));
    add("IP6IP6 1460", sized(CLIENT6, VIP6_TUN, 1400, false));
    add("IP6IP6 1461", sized(CLIENT6, VIP6_TUN, 1401, false));
    add("4in6 1461 DF", sized(CLIENT4, VIP_4IN6, 1421, true));
    let big = tcp(40000, 80, &[0x42; 1441]);
    let tagged_big = tagged(CLIENT4, VIP_IPIP, &big, &[(ETH_8021Q, 10)]);
    add("IPIP 1481 DF VLAN", with_tos(&tagged_big, 0, 64, true));
    add("IPIP 100 DF", sized(CLIENT4, VIP_IPIP, 60, true));
    add("IPIP 63 DF", sized(CLIENT4, VIP_IPIP, 23, true));
    add(
        "IPIP fragmentation needed",
        icmp_error(3, 4, 1400, VIP_IPIP, CLIENT4, (80, 40000), false),
    );
    add(
        "IP6IP6 packet too big",
        icmp_error(2, 0, 1280, VIP6_TUN, CLIENT6, (80, 40000), false),
    );
    let first = tcp(40000, 80, &[0x42; 1400]);
    add(
        "IPIP first fragment",
        v4_first(CLIENT4, VIP_IPIP, &first, 0x7777),
    );
    add(
        "IPIP later fragment",
        v4_later(CLIENT4, VIP_IPIP, IPPROTO_TCP, 0x7777),
    );
    // 40 + 8 + 20 + 1200 bytes: under the 1460 IP6IP6 allows at MTU 1500.
    let first6 = tcp(40000, 80, &[0x42; 1200]);
    add(
        "IP6IP6 first fragment",
        v6_first(CLIENT6, VIP6_TUN, &first6, 0x7777),
    );
    add(
        "IP6IP6 later fragment",
        v6_later(CLIENT6, VIP6_TUN, IPPROTO_TCP, 0x7777),
    );
    v
}

/// The tunnel frame named `name` ([`tunnel_frames`]).
pub fn tunnel_frame(name: &str) -> Vec<u8> {
    tunnel_frames()
        .into_iter()
        .find(|n| n.name == name)
        .unwrap_or_else(|| panic!("no tunnel frame {name:?}"))
        .frame
}

/// A fixture's frame and the name of its row.
#[derive(Clone, Debug)]
pub struct Named {
    pub name: &'static str,
    pub frame: Vec<u8>,
}

/// Every frame shape the packet tier sends (its scenario rows reuse these shapes with other
/// clients and ports; [`shape`] ignores those).
pub fn all() -> Vec<Named> {
    let mut v: Vec<Named> = Vec::new();
    let mut add = |name: &'static str, frame: Vec<u8>| v.push(Named { name, frame });
    add("v4 TCP SYN to a VIP", tcp_frame(CLIENT4, VIP4, 40000, 80));
    add("v4 UDP to a VIP", udp_frame(CLIENT4, VIP4, 5353, 53));
    add("v6 TCP SYN to a VIP", tcp_frame(CLIENT6, VIP6, 40000, 80));
    add("v6 UDP to a VIP", udp_frame(CLIENT6, VIP6, 5353, 53));
    add(
        "v4 TCP with payload",
        frame(CLIENT4, VIP4, &tcp(40003, 80, b"GET / HTTP/1.1\r\n\r\n")),
    );
    add(
        "port-0 service, port 443",
        tcp_frame(CLIENT4, VIP_ANYPORT, 40000, 443),
    );
    for (name, vip) in [
        ("/24 service", VIP_NET24),
        ("affinity none service", VIP_FLOWS),
        ("VIP .40", VIP_40),
        ("no_backend pass service", VIP_PASSING),
        ("redirect service", VIP_REMOTE),
        ("service without tx port", VIP_NOPORT),
    ] {
        add(name, tcp_frame(CLIENT4, vip, 1000, 80));
    }
    add("v4 TCP to a non-VIP", tcp_frame(CLIENT4, OTHER4, 40000, 80));
    add("v6 TCP to a non-VIP", tcp_frame(CLIENT6, OTHER6, 40000, 80));
    add(
        "VIP, port without a service",
        tcp_frame(CLIENT4, VIP4, 40000, 8080),
    );
    add(
        "VIP, TCP to a UDP-only port",
        tcp_frame(CLIENT4, VIP4, 40000, 53),
    );
    add(
        "v6 VIP, port without a service",
        udp_frame(CLIENT6, VIP6, 40000, 9999),
    );
    add(
        "ARP request for the VIP",
        arp_request(
            Ipv4Addr::new(198, 51, 100, 1),
            Ipv4Addr::new(203, 0, 113, 10),
        ),
    );
    add(
        "ICMP echo to the VIP",
        frame(CLIENT4, VIP4, &icmp_echo(false)),
    );
    add(
        "ICMPv6 echo to the VIP",
        frame(CLIENT6, VIP6, &icmp_echo(true)),
    );
    add("LLDP", eth(ETH_LLDP, &[0u8; 46], &[]));
    add_icmp(&mut add);
    add_fragments(&mut add);
    add_ext_headers(&mut add);
    add_tags_and_options(&mut add);
    add_truncations(&mut add);
    for n in tunnel_frames() {
        add(n.name, n.frame);
    }
    add("IPv4 first fragment (MF)", v4_fragment(VIP4, 0x2000));
    add("IPv4 later fragment (offset 185)", v4_fragment(VIP4, 185));
    add("IPv4 fragment to a non-VIP", v4_fragment(OTHER4, 0x2000));
    add("IPv6 fragment header", v6_ext(44, VIP6));
    add("IPv6 hop-by-hop header", v6_ext(0, VIP6));
    add("IPv6 routing header", v6_ext(43, VIP6));
    add("IPv6 experimental extension header 253", v6_ext(253, VIP6));
    add("IPv6 experimental extension header 254", v6_ext(254, VIP6));
    add("IPv6 routing header to a non-VIP", v6_ext(43, OTHER6));
    v
}

fn add_icmp(add: &mut impl FnMut(&'static str, Vec<u8>)) {
    add(
        "ICMP echo to a non-VIP",
        frame(CLIENT4, OTHER4, &icmp_echo(false)),
    );
    add(
        "ICMP echo to the VIP (VLAN)",
        tagged(CLIENT4, VIP4, &icmp_echo(false), &[(ETH_8021Q, 10)]),
    );
    for client in [CLIENT4, HASHED4] {
        add("v4 fragmentation needed", frag_needed(VIP4, client, 40000));
        add(
            "v4 time exceeded",
            icmp_error(11, 0, 0, VIP4, client, (80, 40000), false),
        );
        add(
            "v4 port unreachable, UDP",
            icmp_error(3, 3, 0, VIP4, client, (53, 5353), true),
        );
    }
    add(
        "v4 fragmentation needed, redirect service",
        frag_needed(VIP_REMOTE, CLIENT4, 1000),
    );
    add(
        "v4 fragmentation needed, affinity none",
        frag_needed(VIP_FLOWS, CLIENT4, 1000),
    );
    add(
        "v4 fragmentation needed, no_backend pass",
        frag_needed(VIP_PASSING, CLIENT4, 1000),
    );
    add(
        "v4 fragmentation needed, inner port of no service",
        icmp_error(3, 4, 1400, VIP4, CLIENT4, (8080, 40000), false),
    );
    add(
        "v4 fragmentation needed, inner source another VIP",
        icmp_error_to(VIP4, 3, 4, 1400, VIP_NET24, CLIENT4, (80, 40000), false),
    );
    add(
        "v4 redirect (type 5) to the VIP",
        icmp_error(5, 1, 0, VIP4, CLIENT4, (80, 40000), false),
    );
    let mut cut = frag_needed(VIP4, CLIENT4, 40000);
    cut.truncate(cut.len() - 4);
    add(
        "v4 fragmentation needed, quote cut before 8 bytes of L4",
        cut,
    );
    for client in [CLIENT6, HASHED6] {
        add("v6 packet too big", packet_too_big(VIP6, client, 40000));
        add(
            "v6 time exceeded",
            icmp_error(3, 0, 0, VIP6, client, (80, 40000), false),
        );
        add(
            "v6 port unreachable, UDP",
            icmp_error(1, 4, 0, VIP6, client, (53, 5353), true),
        );
    }
    add(
        "v6 packet too big, inner port of no service",
        icmp_error(2, 0, 1280, VIP6, CLIENT6, (8080, 40000), false),
    );
    add(
        "v6 neighbour solicitation to the VIP",
        frame(CLIENT6, VIP6, &icmp(true, 135, 0, [0; 4], &[0; 16])),
    );
}

fn add_fragments(add: &mut impl FnMut(&'static str, Vec<u8>)) {
    let big = tcp(40000, 80, &[0x42; 1400]);
    let dgram = udp(5353, 53, &[0x44; 1400]);
    let to443 = tcp(40001, 443, &[0x42; 1400]);
    let flows = tcp(1000, 80, &[0x42; 1400]);
    let (t, u) = (IPPROTO_TCP, IPPROTO_UDP);
    add("v4 first fragment", v4_first(CLIENT4, VIP4, &big, 0x1111));
    add(
        "v4 UDP first fragment",
        v4_first(CLIENT4, VIP4, &dgram, 0x1113),
    );
    add(
        "v4 first fragment, two services",
        v4_first(CLIENT4, VIP_TWO, &to443, 0x2222),
    );
    add(
        "v4 first fragment, affinity none",
        v4_first(CLIENT4, VIP_FLOWS, &flows, 0x5555),
    );
    add(
        "v4 ICMP first fragment",
        v4_first(CLIENT4, VIP4, &icmp_echo(false), 0x6666),
    );
    for (vip, proto, id) in [
        (VIP4, t, 0x1111),
        (VIP4, t, 0x1112),
        (VIP4, u, 0x1113),
        (VIP_TWO, t, 0x2222),
        (VIP_TWO, t, 0x3333),
        (VIP_TWO, u, 0x2222),
        (VIP_FLOWS, t, 0x5555),
        (VIP_FLOWS, t, 0x5556),
        (OTHER4, t, 0x1111),
    ] {
        add("v4 later fragment", v4_later(CLIENT4, vip, proto, id));
    }
    add(
        "v6 first fragment",
        v6_first(CLIENT6, VIP6, &big, 0xabcd_0001),
    );
    add("v6 UDP first fragment", v6_first(CLIENT6, VIP6, &dgram, 7));
    for (dst, proto, id) in [
        (VIP6, t, 0xabcd_0001),
        (VIP6, t, 0xabcd_0002),
        (VIP6, u, 7),
        (OTHER6, t, 1),
    ] {
        add("v6 later fragment", v6_later(CLIENT6, dst, proto, id));
    }
    let f = Ext::Frag {
        offset: 0,
        more: true,
        id: 9,
    };
    add(
        "v6 ICMPv6 first fragment",
        v6_chain(CLIENT6, VIP6, &[f], &icmp_echo(true)),
    );
}

fn add_ext_headers(add: &mut impl FnMut(&'static str, Vec<u8>)) {
    let seg = tcp(40000, 80, b"");
    let frag = |id, more| Ext::Frag {
        offset: 0,
        more,
        id,
    };
    let o = Ext::Opt;
    let chains: Vec<Vec<Ext>> = vec![
        vec![o(0, 0)],
        vec![o(43, 0)],
        vec![o(60, 0)],
        vec![o(0, 2)],
        vec![o(60, 255)],
        vec![frag(3, false)],
        vec![o(0, 0), o(60, 0), o(43, 1), frag(4, true)],
        vec![o(0, 0), o(60, 0), o(43, 0), o(60, 0), o(60, 0), o(60, 0)],
        vec![o(60, 0); 7],
        vec![o(0, 0), o(51, 0)],
    ];
    for exts in chains {
        add("v6 extension headers", v6_chain(CLIENT6, VIP6, &exts, &seg));
    }
    for kind in [51, 50, 135, 139, 140, 253, 254] {
        add(
            "v6 dropped extension header",
            v6_chain(CLIENT6, VIP6, &[o(kind, 0)], &seg),
        );
    }
    let mut cut = v6_chain(CLIENT6, VIP6, &[o(0, 0), o(60, 4)], &seg);
    cut.truncate(14 + 40 + 8 + 16);
    add("v6 extension header cut short", cut);
    let mut cut = v6_chain(CLIENT6, VIP6, &[o(0, 0)], &seg);
    cut.truncate(14 + 40 + 8 + 10);
    add("v6 TCP cut short after hop-by-hop", cut);
    add(
        "v6 routing header to a non-VIP",
        v6_chain(CLIENT6, OTHER6, &[o(43, 0)], &seg),
    );
    add(
        "v6 AH to a non-VIP",
        v6_chain(CLIENT6, OTHER6, &[o(51, 0)], &seg),
    );
}

fn add_tags_and_options(add: &mut impl FnMut(&'static str, Vec<u8>)) {
    let t4 = tcp(40004, 80, b"");
    let t6 = tcp(40005, 80, b"");
    add(
        "802.1Q v4 TCP",
        tagged(CLIENT4, VIP4, &t4, &[(ETH_8021Q, 10)]),
    );
    add(
        "802.1ad v6 TCP",
        tagged(CLIENT6, VIP6, &t6, &[(ETH_8021AD, 20)]),
    );
    add(
        "QinQ v6 TCP",
        tagged(CLIENT6, VIP6, &t6, &[(ETH_8021AD, 20), (ETH_8021Q, 10)]),
    );
    add(
        "v4 IHL 6",
        v4_with_options(CLIENT4, VIP4, &t4, &[1, 1, 1, 0]),
    );
    add("v4 IHL 15", v4_with_options(CLIENT4, VIP4, &t4, &[1; 40]));
    let mut bad = tcp_frame(CLIENT4, VIP4, 40008, 80);
    bad[14] = 0x44;
    add("v4 IHL 4", bad.clone());
    bad[14] = 0x65;
    add("EtherType IPv4 carrying version 6", bad);
}

fn add_truncations(add: &mut impl FnMut(&'static str, Vec<u8>)) {
    let t4 = tcp_frame(CLIENT4, VIP4, 40009, 80);
    let t6 = tcp_frame(CLIENT6, VIP6, 40009, 80);
    let u4 = udp_frame(CLIENT4, VIP4, 40009, 53);
    let u6 = udp_frame(CLIENT6, VIP6, 40009, 53);
    let vlan = tagged(CLIENT4, VIP4, &tcp(40010, 80, b""), &[(ETH_8021Q, 10)]);
    add("Ethernet header only", t4[..14].to_vec());
    add("802.1Q tag cut in half", vlan[..16].to_vec());
    add("802.1Q tag, no IP header", vlan[..18].to_vec());
    add("IPv4 header cut at 19 bytes", t4[..14 + 19].to_vec());
    add("IPv4, TCP header missing", t4[..14 + 20].to_vec());
    add("IPv4, TCP header cut at 19", t4[..14 + 20 + 19].to_vec());
    add("IPv4, UDP header cut at 7", u4[..14 + 20 + 7].to_vec());
    let opts = v4_with_options(CLIENT4, VIP4, &tcp(40011, 80, b""), &[1; 8]);
    add("IPv4 IHL 7 cut before TCP", opts[..14 + 24].to_vec());
    add("IPv6 header cut at 39 bytes", t6[..14 + 39].to_vec());
    add("IPv6, TCP header missing", t6[..14 + 40].to_vec());
    add("IPv6, UDP header cut at 7", u6[..14 + 40 + 7].to_vec());
    let other = tcp_frame(CLIENT4, OTHER4, 40009, 80);
    add("truncated TCP to a non-VIP", other[..14 + 20 + 3].to_vec());
}

/// A frame with what differs between rows of one kind zeroed: the IP source address, the
/// layer-4 source port and the checksums. Two frames of one shape test the same thing.
pub fn shape(f: &[u8]) -> Vec<u8> {
    let mut s = f.to_vec();
    let Some(l) = layout(f) else { return s };
    let mut zero = |from: usize, len: usize| {
        let end = (from + len).min(s.len());
        if from < end {
            s[from..end].fill(0);
        }
    };
    if l.v6 {
        zero(l.l3 + 8, 16);
    } else {
        zero(l.l3 + 10, 2);
        zero(l.l3 + 12, 4);
    }
    if let Some(l4) = l.l4 {
        match l.proto {
            Some(6) => zero(l4 + 16, 2),
            Some(17) => zero(l4 + 6, 2),
            Some(1 | 58) => zero(l4 + 2, 2),
            _ => {}
        }
        // An ICMP message's type and code are its shape.
        if !matches!(l.proto, Some(1 | 58)) {
            zero(l4, 2);
        }
    }
    s
}
