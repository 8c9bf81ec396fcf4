//! The frames of the packet tier's fixtures (`tests/tests/packet.rs`), by name, in one
//! place: the fuzzer mutates every one of them, and the packet tier checks that each frame
//! it sends has its shape here (see [`shape`]), so a new fixture cannot escape the fuzzer.
//!
//! Owns frames only: no expectation lives here (the packet tier states those per row,
//! the fuzzer's oracle derives them from the README's rules).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::packet::{
    ETH_8021AD, ETH_8021Q, ETH_LLDP, IPPROTO_TCP, L4, V4Opts, arp_request, eth, frame, icmp_echo,
    ip, layout, raw, tcp, tcp_frame, udp_frame,
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
/// Addresses no service has.
pub const OTHER4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9));
pub const OTHER6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1));

/// `l4` from `src` to `dst` in a frame with these VLAN tags (outermost first).
pub fn tagged(src: IpAddr, dst: IpAddr, l4: &L4, tags: &[(u16, u16)]) -> Vec<u8> {
    let (et, p) = ip(src, dst, l4, &V4Opts::default());
    eth(et, &p, tags)
}

/// An IPv4 frame with these header option bytes (a multiple of 4, at most 40).
pub fn v4_with_options(src: IpAddr, dst: IpAddr, l4: &L4, options: &[u8]) -> Vec<u8> {
    let opts = V4Opts {
        options: options.to_vec(),
        frag: 0,
    };
    let (et, p) = ip(src, dst, l4, &opts);
    eth(et, &p, &[])
}

/// A TCP segment with 16 bytes of payload in an IPv4 fragment: `frag` is the flags +
/// offset field (host order), e.g. 0x2000 = MF, 185 = offset 1480.
pub fn v4_fragment(dst: IpAddr, frag: u16) -> Vec<u8> {
    let opts = V4Opts {
        options: vec![],
        frag,
    };
    let (et, p) = ip(CLIENT4, dst, &tcp(40012, 80, &[0u8; 16]), &opts);
    eth(et, &p, &[])
}

/// IPv6 with one 8-byte extension header `next` (TCP after it) and a TCP header to port 80.
pub fn v6_ext(next: u8, dst: IpAddr) -> Vec<u8> {
    let mut body = vec![IPPROTO_TCP, 0, 0, 0, 0, 0, 0, 0];
    body.extend_from_slice(&[0x9c, 0x40, 0, 80, 0, 0, 0, 0]);
    frame(CLIENT6, dst, &raw(next, &body))
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
    add_tags_and_options(&mut add);
    add_truncations(&mut add);
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
        zero(l4, 2);
        match l.proto {
            Some(6) => zero(l4 + 16, 2),
            Some(17) => zero(l4 + 6, 2),
            _ => {}
        }
    }
    s
}
