//! ICMP to a VIP (README, "ICMP"): errors about a service's packets go to the backend
//! the client is pinned to, or would be hashed to, and pin nobody; echo requests are
//! answered with exact bytes (`icmp_echo = "reply"`) or passed (`"pass"`); everything
//! else passes untouched.

use std::net::IpAddr;

use lb_common::Stat;
use xlb::reconcile::inspect::Decision;
use xlb_tests::{
    fixtures::{
        CLIENT4, CLIENT6, HASHED4, HASHED6, OTHER4, VIP_FLOWS, VIP_NET24, VIP_PASSING, VIP_REMOTE,
        VIP4, VIP6, frag_needed, icmp_error, icmp_error_to, packet_too_big, tagged,
    },
    harness::XdpAction,
    packet::{
        CLIENT_MAC, ETH_8021Q, LB_MAC, V4Opts, eth, frame, icmp, icmp_echo, icmp_echo_reply, ip,
        tcp_frame,
    },
};

use super::{Fx, Lab, Out, Svc, every_frame_is_a_fuzz_seed};

/// The reply the program must write: MACs swapped, addresses swapped, TTL / hop limit
/// 64, type echo reply, every checksum as a host computing it from scratch would.
fn echo_reply(client: IpAddr, vip: IpAddr, tags: &[(u16, u16)]) -> Vec<u8> {
    let (et, p) = ip(
        vip,
        client,
        &icmp_echo_reply(vip.is_ipv6()),
        &V4Opts::default(),
    );
    let mut f = eth(et, &p, tags);
    f[..6].copy_from_slice(&CLIENT_MAC);
    f[6..12].copy_from_slice(&LB_MAC);
    f
}

/// An ICMP error sent on: XDP_TX to `to`, only the MACs changed, the service's
/// `icmp_errors` moved.
fn error_to(desc: &'static str, input: Vec<u8>, svc: &'static str, to: IpAddr) -> Fx {
    Fx::new(desc, input, XdpAction::Tx, Stat::Tx)
        .out(Out::To(to))
        .svc(svc, Svc::IcmpError)
}

fn assert_not_pinned(lab: &Lab, svc: &str, client: IpAddr, port: u16) {
    let e = lab.h.explain(svc, client, port).expect("explain");
    assert!(
        !matches!(e.decision, Decision::Pinned { .. }),
        "an ICMP error pinned {client} in {svc}: {:?}",
        e.decision
    );
}

#[test]
fn fixtures_icmp_errors_reach_the_clients_backend() {
    let mut lab = Lab::new();
    // Pin CLIENT4 and CLIENT6 by a packet of their own.
    let a = lab
        .check(Fx::tx(
            "v4 SYN pins the client",
            tcp_frame(CLIENT4, VIP4, 40000, 80),
            "web4",
            CLIENT4,
        ))
        .expect("forwarded");
    let d = lab
        .check(Fx::tx(
            "v4 UDP pins the client",
            xlb_tests::packet::udp_frame(CLIENT4, VIP4, 5353, 53),
            "dns4",
            CLIENT4,
        ))
        .expect("forwarded");
    let b6 = lab
        .check(Fx::tx(
            "v6 SYN pins the client",
            tcp_frame(CLIENT6, VIP6, 40000, 80),
            "web6",
            CLIENT6,
        ))
        .expect("forwarded");

    // IPv4: to the pinned client's backend.
    lab.check(error_to(
        "v4 fragmentation needed, pinned client",
        frag_needed(VIP4, CLIENT4, 40000),
        "web4",
        a,
    ));
    lab.check(error_to(
        "v4 time exceeded, pinned client",
        icmp_error(11, 0, 0, VIP4, CLIENT4, (80, 40000), false),
        "web4",
        a,
    ));
    lab.check(error_to(
        "v4 port unreachable about UDP, pinned client",
        icmp_error(3, 3, 0, VIP4, CLIENT4, (53, 5353), true),
        "dns4",
        d,
    ));
    // IPv4: a client without a pin goes where its Maglev slot says, and stays unpinned.
    for (desc, f, svc) in [
        (
            "v4 fragmentation needed, hashed client",
            frag_needed(VIP4, HASHED4, 40000),
            "web4",
        ),
        (
            "v4 time exceeded, hashed client",
            icmp_error(11, 0, 0, VIP4, HASHED4, (80, 40000), false),
            "web4",
        ),
        (
            "v4 port unreachable, hashed client",
            icmp_error(3, 3, 0, VIP4, HASHED4, (53, 5353), true),
            "dns4",
        ),
    ] {
        let to = lab.slot_backend(svc, HASHED4);
        lab.check(error_to(desc, f, svc, to));
        assert_not_pinned(&lab, svc, HASHED4, 0);
    }

    // IPv6.
    lab.check(error_to(
        "v6 packet too big, pinned client",
        packet_too_big(VIP6, CLIENT6, 40000),
        "web6",
        b6,
    ));
    lab.check(error_to(
        "v6 time exceeded, pinned client",
        icmp_error(3, 0, 0, VIP6, CLIENT6, (80, 40000), false),
        "web6",
        b6,
    ));
    for (desc, f, svc) in [
        (
            "v6 packet too big, hashed client",
            packet_too_big(VIP6, HASHED6, 40000),
            "web6",
        ),
        (
            "v6 time exceeded, hashed client",
            icmp_error(3, 0, 0, VIP6, HASHED6, (80, 40000), false),
            "web6",
        ),
        (
            "v6 port unreachable, hashed client",
            icmp_error(1, 4, 0, VIP6, HASHED6, (53, 5353), true),
            "dns6",
        ),
    ] {
        let to = lab.slot_backend(svc, HASHED6);
        lab.check(error_to(desc, f, svc, to));
        assert_not_pinned(&lab, svc, HASHED6, 0);
    }
    lab.check(
        Fx::new(
            "v6 port unreachable about UDP, pinned client's service has its own pin",
            icmp_error(1, 4, 0, VIP6, CLIENT6, (53, 5353), true),
            XdpAction::Tx,
            Stat::Tx,
        )
        .out(Out::To(lab.slot_backend("dns6", CLIENT6)))
        .svc("dns6", Svc::IcmpError),
    );

    // By the service's forwarding: a backend behind another interface is redirected to.
    let r = lab.slot_backend("remote", CLIENT4);
    lab.check(
        Fx::new(
            "v4 fragmentation needed, backend behind another interface",
            frag_needed(VIP_REMOTE, CLIENT4, 1000),
            XdpAction::Redirect,
            Stat::Redirect,
        )
        .out(Out::To(r))
        .svc("remote", Svc::IcmpError),
    );
    // affinity = "none": the client's port is part of the key.
    let flows = lab.h.explain("flows", CLIENT4, 1000).expect("explain");
    lab.check(error_to(
        "v4 fragmentation needed, affinity none: by address and port",
        frag_needed(VIP_FLOWS, CLIENT4, 1000),
        "flows",
        flows.slot_backend.expect("slot"),
    ));

    // Not about a service's packet: passed untouched.
    for (desc, f) in [
        (
            "inner source port of no service",
            icmp_error(3, 4, 1400, VIP4, CLIENT4, (8080, 40000), false),
        ),
        (
            "inner source another VIP than the destination",
            icmp_error_to(VIP4, 3, 4, 1400, VIP_NET24, CLIENT4, (80, 40000), false),
        ),
        (
            "ICMP redirect (type 5) to the VIP",
            icmp_error(5, 1, 0, VIP4, CLIENT4, (80, 40000), false),
        ),
        (
            "v6 inner source port of no service",
            icmp_error(2, 0, 1280, VIP6, CLIENT6, (8080, 40000), false),
        ),
        (
            "v6 neighbour solicitation to the VIP",
            frame(CLIENT6, VIP6, &icmp(true, 135, 0, [0; 4], &[0; 16])),
        ),
    ] {
        lab.check(Fx::pass(desc, f, Stat::PassNotService));
    }
    let mut cut = frag_needed(VIP4, CLIENT4, 40000);
    cut.truncate(cut.len() - 4);
    lab.check(Fx::pass(
        "quote cut before 8 bytes of layer 4",
        cut,
        Stat::PassNotService,
    ));

    // Rule 5 for a service without a usable backend: its no_backend setting.
    lab.h
        .set_healthy("passing", "192.0.2.11".parse().expect("v4"), false)
        .expect("unhealthy");
    lab.check(
        Fx::pass(
            "v4 fragmentation needed, no backend, no_backend = pass",
            frag_needed(VIP_PASSING, CLIENT4, 1000),
            Stat::PassNoBackend,
        )
        .svc("passing", Svc::NoBackend),
    );
    every_frame_is_a_fuzz_seed(&lab.sent);
}

#[test]
fn fixtures_icmp_echo_to_a_vip_is_answered_or_passed() {
    let mut lab = Lab::new();
    lab.check(
        Fx::new(
            "v4 echo request to the VIP: the reply's exact bytes",
            frame(CLIENT4, VIP4, &icmp_echo(false)),
            XdpAction::Tx,
            Stat::IcmpEchoReply,
        )
        .out(Out::Exact(echo_reply(CLIENT4, VIP4, &[]))),
    );
    lab.check(
        Fx::new(
            "v6 echo request to the VIP: the reply's exact bytes",
            frame(CLIENT6, VIP6, &icmp_echo(true)),
            XdpAction::Tx,
            Stat::IcmpEchoReply,
        )
        .out(Out::Exact(echo_reply(CLIENT6, VIP6, &[]))),
    );
    let tags = [(ETH_8021Q, 10)];
    lab.check(
        Fx::new(
            "v4 echo request in a VLAN: the reply keeps the tag",
            tagged(CLIENT4, VIP4, &icmp_echo(false), &tags),
            XdpAction::Tx,
            Stat::IcmpEchoReply,
        )
        .out(Out::Exact(echo_reply(CLIENT4, VIP4, &tags))),
    );
    lab.check(Fx::pass(
        "echo request to a non-VIP: passed",
        frame(CLIENT4, OTHER4, &icmp_echo(false)),
        Stat::PassNotService,
    ));
    lab.h
        .dp_mut()
        .set_icmp_echo(false)
        .expect("icmp_echo = pass");
    lab.check(Fx::pass(
        "icmp_echo = pass: v4 echo request passed",
        frame(CLIENT4, VIP4, &icmp_echo(false)),
        Stat::PassNotService,
    ));
    lab.check(Fx::pass(
        "icmp_echo = pass: v6 echo request passed",
        frame(CLIENT6, VIP6, &icmp_echo(true)),
        Stat::PassNotService,
    ));
    lab.h
        .dp_mut()
        .set_icmp_echo(true)
        .expect("icmp_echo = reply");
    lab.check(
        Fx::new(
            "icmp_echo = reply again",
            frame(CLIENT4, VIP4, &icmp_echo(false)),
            XdpAction::Tx,
            Stat::IcmpEchoReply,
        )
        .out(Out::Exact(echo_reply(CLIENT4, VIP4, &[]))),
    );
    every_frame_is_a_fuzz_seed(&lab.sent);
}
