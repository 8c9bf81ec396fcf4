//! Fragments and IPv6 extension headers (README, "Fragments and IPv6 extension
//! headers"): a first fragment is balanced like any packet and its ports remembered; a
//! later fragment follows them, or the VIP's only source-address service of its
//! protocol, or is dropped; IPv6 extension headers are walked up to the bound, AH, ESP
//! and the rest dropped.

use std::net::IpAddr;

use lb_common::{MAX_IPV6_EXT_HEADERS, Stat};
use xlb::model::{Protocol, Service};
use xlb_tests::{
    fixtures::{
        CLIENT4, CLIENT6, OTHER4, OTHER6, VIP_FLOWS, VIP_TWO, VIP4, VIP6, v4_first, v4_later,
        v6_first, v6_later,
    },
    harness::XdpAction,
    packet::{Ext, IPPROTO_TCP, IPPROTO_UDP, icmp_echo, tcp, udp, v6_chain},
};

use super::{Fx, LO, Lab, Out, Svc, backends, every_frame_is_a_fuzz_seed};

fn two_services(lab: &mut Lab) {
    let web = ["192.0.2.11", "192.0.2.12", "192.0.2.13"];
    for (name, port) in [("two80", 80), ("two443", 443)] {
        let mut s = Service::new(name, VIP_TWO, port, Protocol::Tcp);
        s.table_size = 1021;
        lab.h.add_service(s, &backends(&web, LO)).expect(name);
    }
}

/// Forwarded with XDP_TX to `to`, only the MACs changed, `svc` counting `c`.
fn to(desc: &'static str, input: Vec<u8>, svc: &'static str, c: Svc, to: IpAddr) -> Fx {
    Fx::new(desc, input, XdpAction::Tx, Stat::Tx)
        .out(Out::To(to))
        .svc(svc, c)
}

#[test]
fn fixtures_fragments_follow_their_first_fragment_or_the_only_service() {
    let mut lab = Lab::new();
    two_services(&mut lab);
    let big = tcp(40000, 80, &[0x42; 1400]);

    // IPv4 to a VIP with one TCP service (web4).
    let a = lab.slot_backend("web4", CLIENT4);
    lab.check(to(
        "v4 first fragment: balanced by its ports, pinned",
        v4_first(CLIENT4, VIP4, &big, 0x1111),
        "web4",
        Svc::Miss,
        a,
    ));
    lab.check(to(
        "v4 later fragment, tracked: the same backend",
        v4_later(CLIENT4, VIP4, IPPROTO_TCP, 0x1111),
        "web4",
        Svc::Hit,
        a,
    ));
    lab.check(to(
        "v4 later fragment, untracked: the VIP's only TCP service",
        v4_later(CLIENT4, VIP4, IPPROTO_TCP, 0x1112),
        "web4",
        Svc::Hit,
        a,
    ));
    let d = lab.slot_backend("dns4", CLIENT4);
    let dgram = udp(5353, 53, &[0x44; 1400]);
    lab.check(to(
        "v4 UDP first fragment",
        v4_first(CLIENT4, VIP4, &dgram, 0x1113),
        "dns4",
        Svc::Miss,
        d,
    ));
    lab.check(to(
        "v4 UDP later fragment",
        v4_later(CLIENT4, VIP4, IPPROTO_UDP, 0x1113),
        "dns4",
        Svc::Hit,
        d,
    ));

    // Two TCP services on the VIP: only tracking tells them apart.
    let vip2 = VIP_TWO;
    let b = lab.slot_backend("two443", CLIENT4);
    let to443 = tcp(40001, 443, &[0x42; 1400]);
    lab.check(to(
        "two services: first fragment to port 443",
        v4_first(CLIENT4, vip2, &to443, 0x2222),
        "two443",
        Svc::Miss,
        b,
    ));
    lab.check(to(
        "two services: tracked later fragment to port 443's backend",
        v4_later(CLIENT4, vip2, IPPROTO_TCP, 0x2222),
        "two443",
        Svc::Hit,
        b,
    ));
    lab.check(Fx::drop(
        "two services: untracked later fragment dropped",
        v4_later(CLIENT4, vip2, IPPROTO_TCP, 0x3333),
        Stat::DropFragment,
    ));
    lab.check(Fx::drop(
        "tracking is per protocol: a UDP later fragment of a TCP packet's id",
        v4_later(CLIENT4, vip2, IPPROTO_UDP, 0x2222),
        Stat::DropFragment,
    ));
    lab.check(Fx::drop(
        "tracking is per source",
        v4_later(OTHER4, vip2, IPPROTO_TCP, 0x2222),
        Stat::DropFragment,
    ));

    // affinity = "none": the client's port is needed, so only tracking routes.
    let flows = tcp(1000, 80, &[0x42; 1400]);
    let f = lab
        .h
        .explain("flows", CLIENT4, 1000)
        .expect("explain")
        .slot_backend
        .expect("slot");
    lab.check(to(
        "affinity none: first fragment",
        v4_first(CLIENT4, VIP_FLOWS, &flows, 0x5555),
        "flows",
        Svc::Miss,
        f,
    ));
    lab.check(to(
        "affinity none: tracked later fragment",
        v4_later(CLIENT4, VIP_FLOWS, IPPROTO_TCP, 0x5555),
        "flows",
        Svc::Hit,
        f,
    ));
    lab.check(Fx::drop(
        "affinity none: untracked later fragment dropped",
        v4_later(CLIENT4, VIP_FLOWS, IPPROTO_TCP, 0x5556),
        Stat::DropFragment,
    ));

    // Neither TCP nor UDP, or not to a VIP.
    lab.check(Fx::drop(
        "v4 ICMP first fragment to a VIP",
        v4_first(CLIENT4, VIP4, &icmp_echo(false), 0x6666),
        Stat::DropFragment,
    ));
    lab.check(Fx::pass(
        "v4 later fragment to a non-VIP",
        v4_later(CLIENT4, OTHER4, IPPROTO_TCP, 0x1111),
        Stat::PassNotService,
    ));

    // IPv6: the fragment header.
    let c = lab.slot_backend("web6", CLIENT6);
    lab.check(to(
        "v6 first fragment",
        v6_first(CLIENT6, VIP6, &big, 0xabcd_0001),
        "web6",
        Svc::Miss,
        c,
    ));
    lab.check(to(
        "v6 later fragment, tracked",
        v6_later(CLIENT6, VIP6, IPPROTO_TCP, 0xabcd_0001),
        "web6",
        Svc::Hit,
        c,
    ));
    lab.check(to(
        "v6 later fragment, untracked: the only TCP service",
        v6_later(CLIENT6, VIP6, IPPROTO_TCP, 0xabcd_0002),
        "web6",
        Svc::Hit,
        c,
    ));
    let e = lab.slot_backend("dns6", CLIENT6);
    lab.check(to(
        "v6 UDP first fragment",
        v6_first(CLIENT6, VIP6, &dgram, 7),
        "dns6",
        Svc::Miss,
        e,
    ));
    lab.check(to(
        "v6 UDP later fragment",
        v6_later(CLIENT6, VIP6, IPPROTO_UDP, 7),
        "dns6",
        Svc::Hit,
        e,
    ));
    let ping = v6_chain(
        CLIENT6,
        VIP6,
        &[Ext::Frag {
            offset: 0,
            more: true,
            id: 9,
        }],
        &icmp_echo(true),
    );
    lab.check(Fx::drop(
        "v6 fragment of ICMPv6 to a VIP",
        ping,
        Stat::DropFragment,
    ));
    lab.check(Fx::pass(
        "v6 later fragment to a non-VIP",
        v6_later(CLIENT6, OTHER6, IPPROTO_TCP, 1),
        Stat::PassNotService,
    ));
    every_frame_is_a_fuzz_seed(&lab.sent);
}

#[test]
fn fixtures_ipv6_extension_headers_are_walked_to_the_bound() {
    let mut lab = Lab::new();
    let seg = tcp(40000, 80, b"");
    let c = lab.slot_backend("web6", CLIENT6);
    for (desc, exts) in [
        ("hop-by-hop", vec![Ext::Opt(0, 0)]),
        ("routing", vec![Ext::Opt(43, 0)]),
        ("destination options", vec![Ext::Opt(60, 0)]),
        ("hop-by-hop of 24 bytes", vec![Ext::Opt(0, 2)]),
        ("destination options of 2048 bytes", vec![Ext::Opt(60, 255)]),
        (
            "atomic fragment (offset 0, no M)",
            vec![Ext::Frag {
                offset: 0,
                more: false,
                id: 3,
            }],
        ),
        (
            "RFC 8200's order: hop-by-hop, dest opts, routing, fragment",
            vec![
                Ext::Opt(0, 0),
                Ext::Opt(60, 0),
                Ext::Opt(43, 1),
                Ext::Frag {
                    offset: 0,
                    more: true,
                    id: 4,
                },
            ],
        ),
        (
            "the bound: six headers",
            vec![
                Ext::Opt(0, 0),
                Ext::Opt(60, 0),
                Ext::Opt(43, 0),
                Ext::Opt(60, 0),
                Ext::Opt(60, 0),
                Ext::Opt(60, 0),
            ],
        ),
    ] {
        let f = v6_chain(CLIENT6, VIP6, &exts, &seg);
        let fx = Fx::new(desc, f, XdpAction::Tx, Stat::Tx)
            .out(Out::To(c))
            .svc("web6", Svc::Hit);
        // The first of them pins the client.
        let fx = if desc == "hop-by-hop" {
            fx.svc("web6", Svc::Miss)
        } else {
            fx
        };
        lab.check(fx);
    }
    assert_eq!(
        MAX_IPV6_EXT_HEADERS, 6,
        "the rows above and the README say six"
    );
    lab.check(Fx::drop(
        "beyond the bound: seven headers",
        v6_chain(CLIENT6, VIP6, &[Ext::Opt(60, 0); 7], &seg),
        Stat::DropIpv6ExtHeader,
    ));
    for (desc, kind) in [
        ("AH", 51),
        ("ESP", 50),
        ("mobility", 135),
        ("HIP", 139),
        ("shim6", 140),
        ("experimental 253", 253),
        ("experimental 254", 254),
    ] {
        lab.check(Fx::drop(
            desc,
            v6_chain(CLIENT6, VIP6, &[Ext::Opt(kind, 0)], &seg),
            Stat::DropIpv6ExtHeader,
        ));
    }
    lab.check(Fx::drop(
        "AH after a hop-by-hop header",
        v6_chain(CLIENT6, VIP6, &[Ext::Opt(0, 0), Ext::Opt(51, 0)], &seg),
        Stat::DropIpv6ExtHeader,
    ));
    let mut cut = v6_chain(CLIENT6, VIP6, &[Ext::Opt(0, 0), Ext::Opt(60, 4)], &seg);
    cut.truncate(14 + 40 + 8 + 16);
    lab.check(Fx::drop(
        "an extension header cut short",
        cut,
        Stat::DropMalformed,
    ));
    let mut cut = v6_chain(CLIENT6, VIP6, &[Ext::Opt(0, 0)], &seg);
    cut.truncate(14 + 40 + 8 + 10);
    lab.check(Fx::drop(
        "TCP cut short after a hop-by-hop header",
        cut,
        Stat::DropMalformed,
    ));
    lab.check(Fx::pass(
        "routing header to a non-VIP",
        v6_chain(CLIENT6, OTHER6, &[Ext::Opt(43, 0)], &seg),
        Stat::PassNotService,
    ));
    lab.check(Fx::pass(
        "AH to a non-VIP",
        v6_chain(CLIENT6, OTHER6, &[Ext::Opt(51, 0)], &seg),
        Stat::PassNotService,
    ));
    every_frame_is_a_fuzz_seed(&lab.sent);
}
