//! Tunnel mode (README, "Tunnel forwarding"): IPIP, IP6IP6 and 4in6 output with exact
//! bytes (with and without `tunnel_source`, with VLAN tags; TTL, DSCP, ECN, DF and the
//! flow label copied or derived as documented; the outer checksum checked on its own),
//! the MTU answers (exact ICMP fragmentation-needed / packet-too-big bytes, drops without
//! DF and of ICMP errors), the missing egress entry or address, and the paths that join
//! forwarding late (ICMP errors, later fragments).
//!
//! The services are programmed by the controller (`forwarding = "tunnel"`, `tunnel_source`
//! changed by remove + add as the CLI does) with the egress interfaces observed as the
//! daemon reads them; only the drops for a missing egress entry or address remove it
//! behind the controller's back (`set_egress`), as an interface changing before the
//! daemon notices does.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::{
    Stat,
    tunnel::{EGRESS_F_V4, EGRESS_F_V6, Egress, client_hash, flow_label, outer_source},
};
use xlb::model::{Forwarding, Protocol, Service};
use xlb_tests::{
    fixtures::{
        CLIENT4, CLIENT6, VIP_4IN6, VIP_IPIP, VIP_TUN_NOEGRESS, VIP_TUN_REMOTE, VIP6_TUN,
        tunnel_frame, tunnel_frames,
    },
    harness::{XdpAction, tunnel_source},
    packet::{Outer, encapsulate, ipv4_header_checksum_ok, too_big_reply, v4, v6},
};

use super::{Fx, LB_SRC_MAC, LO, Lab, Out, Svc, backends, every_frame_is_a_fuzz_seed, mac_of};

const BE_IPIP: &str = "192.0.2.91";
const BE_6IN6: &str = "2001:db8:1::91";
/// The 4in6 service's backend (IPv6, of an IPv4 VIP).
const BE_4IN6: &str = "2001:db8:2::93";
const BE_REMOTE: &str = "192.0.2.94";
const BE_NOEGRESS: &str = "192.0.2.95";
/// The egress interfaces' addresses (default outer sources).
const LO_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const LO_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const VETH_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);

fn words4(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

fn words6(a: Ipv6Addr) -> [u32; 4] {
    lb_common::addr_from_bytes(&a.octets())
}

fn egress(mtu: u32, v6: bool) -> Egress {
    Egress {
        mtu,
        flags: EGRESS_F_V4 | if v6 { EGRESS_F_V6 } else { 0 },
        v4: words4(LO_V4),
        v6: words6(LO_V6),
    }
}

/// The lab of every packet test plus the tunnel services, each with one backend (so the
/// expected backend is known), programmed by the controller (`forwarding = "tunnel"`)
/// with the egress interfaces as the daemon reads them.
fn tunnel_lab() -> Lab {
    let mut lab = Lab::new();
    let (veth_a, veth_b) = (lab.veth_a, xlb_tests::ifindex("xlbt2"));
    let h = &mut lab.h;
    h.observe_egress(LO, Some(egress(1500, true)));
    let veth = Egress {
        v4: words4(VETH_V4),
        ..egress(1500, false)
    };
    h.observe_egress(veth_a, Some(veth));
    h.observe_egress(veth_b, Some(veth));
    for (name, vip, port, proto, be, ifindex) in [
        ("ipip", VIP_IPIP, 80, Protocol::Tcp, BE_IPIP, LO),
        ("ipipdns", VIP_IPIP, 53, Protocol::Udp, BE_IPIP, LO),
        ("ip6ip6", VIP6_TUN, 80, Protocol::Tcp, BE_6IN6, LO),
        ("tun4in6", VIP_4IN6, 80, Protocol::Tcp, BE_4IN6, LO),
        (
            "tunremote",
            VIP_TUN_REMOTE,
            80,
            Protocol::Tcp,
            BE_REMOTE,
            veth_a,
        ),
        (
            "noegress",
            VIP_TUN_NOEGRESS,
            80,
            Protocol::Tcp,
            BE_NOEGRESS,
            veth_b,
        ),
    ] {
        let mut s = Service::new(name, vip, port, proto);
        s.table_size = 1021;
        s.forwarding = Forwarding::Tunnel;
        h.add_service(s, &backends(&[be], ifindex)).expect(name);
    }
    // The interface of "noegress" lost its entry before the daemon noticed.
    h.set_egress(veth_b, None);
    lab
}

/// `frame` encapsulated from `src` to backend `be` (its MAC), the flow label of `client`.
fn encap(frame: &[u8], src: IpAddr, be: IpAddr, client: IpAddr) -> Vec<u8> {
    let outer = Outer {
        src,
        dst: be,
        flow_label: flow_label(client_hash(&addr(client))),
    };
    encapsulate(frame, mac_of(be), LB_SRC_MAC, &outer)
}

fn addr(a: IpAddr) -> lb_common::Addr {
    match a {
        IpAddr::V4(a) => [words4(a), 0, 0, 0],
        IpAddr::V6(a) => words6(a),
    }
}

fn from_addr(a: lb_common::Addr, v6: bool) -> IpAddr {
    let b = lb_common::addr_to_bytes(&a);
    if v6 {
        Ipv6Addr::from(b).into()
    } else {
        Ipv4Addr::new(b[0], b[1], b[2], b[3]).into()
    }
}

/// A fixture sent with XDP_TX as exactly `want`.
fn tx(desc: &'static str, name: &str, want: Vec<u8>) -> Fx {
    Fx::new(desc, tunnel_frame(name), XdpAction::Tx, Stat::Tx).out(Out::Exact(want))
}

#[test]
fn fixtures_tunnel_output() {
    let mut lab = tunnel_lab();
    let (lo4, lo6): (IpAddr, IpAddr) = (LO_V4.into(), LO_V6.into());
    let (ipip, be6, be46) = (v4(BE_IPIP), v6(BE_6IN6), v6(BE_4IN6));
    for (desc, name, src, be, client) in [
        (
            "IPIP: TCP, the egress address as the source",
            "IPIP SYN",
            lo4,
            ipip,
            CLIENT4,
        ),
        ("IPIP: UDP", "IPIP UDP", lo4, ipip, CLIENT4),
        (
            "IPIP: DSCP, ECN, TTL and DF copied",
            "IPIP DSCP ECN TTL DF",
            lo4,
            ipip,
            CLIENT4,
        ),
        ("IPIP: the VLAN tag kept", "IPIP VLAN", lo4, ipip, CLIENT4),
        (
            "IP6IP6: TCP, flow label from the client",
            "IP6IP6 SYN",
            lo6,
            be6,
            CLIENT6,
        ),
        (
            "IP6IP6: traffic class and hop limit copied",
            "IP6IP6 DSCP ECN hop limit",
            lo6,
            be6,
            CLIENT6,
        ),
        (
            "IP6IP6: an 802.1ad tag kept",
            "IP6IP6 VLAN",
            lo6,
            be6,
            CLIENT6,
        ),
        ("4in6: IPv4 in IPv6", "4in6 SYN", lo6, be46, CLIENT4),
        (
            "4in6: DSCP, ECN and TTL copied",
            "4in6 DSCP ECN TTL DF",
            lo6,
            be46,
            CLIENT4,
        ),
        ("4in6: the VLAN tag kept", "4in6 VLAN", lo6, be46, CLIENT4),
        (
            "IPIP: 1480 bytes with DF fit MTU 1500",
            "IPIP 1480 DF",
            lo4,
            ipip,
            CLIENT4,
        ),
        (
            "IP6IP6: 1460 bytes fit MTU 1500",
            "IP6IP6 1460",
            lo6,
            be6,
            CLIENT6,
        ),
    ] {
        let want = encap(&tunnel_frame(name), src, be, client);
        lab.check(tx(desc, name, want));
    }

    // The outer IPv4 header's checksum, verified on the output alone.
    let r = lab.h.run(&tunnel_frame("IPIP DSCP ECN TTL DF"), LO);
    let outer = &r.output[14..34];
    assert!(
        ipv4_header_checksum_ok(outer),
        "outer checksum: {outer:02x?}"
    );
    assert_eq!((outer[1], outer[8], outer[6] & 0x40), (0xb9, 17, 0x40));
    let r = lab.h.run(&tunnel_frame("IP6IP6 DSCP ECN hop limit"), LO);
    let o = &r.output[14..54];
    let label = u32::from_be_bytes([0, o[1] & 0x0f, o[2], o[3]]);
    assert_eq!(
        ((o[0] << 4) | (o[1] >> 4), o[7]),
        (0xb9, 17),
        "traffic class, hop limit"
    );
    assert_eq!(label, client_hash(&addr(CLIENT6)) & 0xf_ffff, "flow label");

    // Counted as sent: the encapsulated frame's bytes.
    let id = lab.h.service_id("ipip");
    let before = lab.h.dp().service_stats(id).expect("stats");
    let r = lab.h.run(&tunnel_frame("IPIP SYN"), LO);
    let after = lab.h.dp().service_stats(id).expect("stats");
    assert_eq!(after.packets - before.packets, 1);
    assert_eq!(after.bytes - before.bytes, r.output.len() as u64);

    // A backend behind another interface: redirected, that interface's address.
    lab.check(
        Fx::new(
            "IPIP redirected to another interface, its address as the source",
            tunnel_frame("tunnel redirect"),
            XdpAction::Redirect,
            Stat::Redirect,
        )
        .out(Out::Exact(encap(
            &tunnel_frame("tunnel redirect"),
            VETH_V4.into(),
            v4(BE_REMOTE),
            CLIENT4,
        ))),
    );

    // tunnel_source: the outer source from the prefix, per client.
    for (name, prefix) in [
        ("ipip", "10.99.0.0/24"),
        ("ip6ip6", "2001:db8:99::/64"),
        ("tun4in6", "2001:db8:98::/120"),
    ] {
        lab.h.set_tunnel_source(name, Some(prefix));
    }
    for (desc, name, prefix, len, be, client) in [
        (
            "IPIP with tunnel_source",
            "IPIP SYN",
            v4("10.99.0.0"),
            24,
            ipip,
            CLIENT4,
        ),
        (
            "IP6IP6 with tunnel_source",
            "IP6IP6 SYN",
            v6("2001:db8:99::"),
            64,
            be6,
            CLIENT6,
        ),
        (
            "4in6 with tunnel_source",
            "4in6 VLAN",
            v6("2001:db8:98::"),
            120,
            be46,
            CLIENT4,
        ),
    ] {
        let ts = tunnel_source(prefix, len);
        let src = from_addr(
            outer_source(&ts, client_hash(&addr(client))),
            prefix.is_ipv6(),
        );
        assert_ne!(
            src, prefix,
            "the client's host bits are all zero: pick another"
        );
        let want = encap(&tunnel_frame(name), src, be, client);
        lab.check(tx(desc, name, want));
    }
    every_frame_is_a_fuzz_seed(&lab.sent);
}

#[test]
fn fixtures_tunnel_mtu() {
    let mut lab = tunnel_lab();
    for (desc, name, mtu) in [
        (
            "IPIP: 1481 bytes with DF → fragmentation needed, MTU 1480",
            "IPIP 1481 DF",
            1480,
        ),
        (
            "IPIP: the answer keeps the VLAN tag",
            "IPIP 1481 DF VLAN",
            1480,
        ),
        (
            "IP6IP6: 1461 bytes → packet too big, MTU 1460",
            "IP6IP6 1461",
            1460,
        ),
        (
            "4in6: 1461 bytes with DF → fragmentation needed, MTU 1460",
            "4in6 1461 DF",
            1460,
        ),
    ] {
        let want = too_big_reply(&tunnel_frame(name), mtu);
        lab.check(
            Fx::new(desc, tunnel_frame(name), XdpAction::Tx, Stat::IcmpTooBig)
                .out(Out::Exact(want)),
        );
    }
    lab.check(Fx::drop(
        "IPIP: 1481 bytes without DF → dropped (XDP cannot fragment)",
        tunnel_frame("IPIP 1481"),
        Stat::DropTooBig,
    ));

    // A small egress MTU: a packet shorter than 512 bytes quotes 64; one shorter than
    // 64 bytes cannot be quoted and is dropped; an ICMP error is never answered.
    lab.h.set_egress(LO, Some(egress(100, true)));
    lab.check(
        Fx::new(
            "IPIP: 100 bytes over MTU 100 → fragmentation needed quoting 64 bytes",
            tunnel_frame("IPIP 100 DF"),
            XdpAction::Tx,
            Stat::IcmpTooBig,
        )
        .out(Out::Exact(too_big_reply(&tunnel_frame("IPIP 100 DF"), 80))),
    );
    lab.h.set_egress(LO, Some(egress(60, true)));
    lab.check(Fx::drop(
        "IPIP: 63 bytes over MTU 60: too short to quote → dropped",
        tunnel_frame("IPIP 63 DF"),
        Stat::DropTooBig,
    ));
    lab.check(Fx::drop(
        "IPIP: an ICMP error too big for the tunnel → dropped, never answered",
        tunnel_frame("IPIP fragmentation needed"),
        Stat::DropTooBig,
    ));
    every_frame_is_a_fuzz_seed(&lab.sent);
}

#[test]
fn fixtures_tunnel_needs_an_egress_entry_and_address() {
    let mut lab = tunnel_lab();
    lab.check(Fx::drop(
        "no XLB_EGRESS entry for the backend's interface → dropped unmodified",
        tunnel_frame("tunnel no egress"),
        Stat::DropNoEgress,
    ));
    lab.h.set_egress(LO, Some(egress(1500, false)));
    lab.check(Fx::drop(
        "4in6: the interface has no IPv6 address → dropped unmodified",
        tunnel_frame("4in6 SYN"),
        Stat::DropNoEgress,
    ));
    lab.check(Fx::drop(
        "IP6IP6: the interface has no IPv6 address → dropped unmodified",
        tunnel_frame("IP6IP6 SYN"),
        Stat::DropNoEgress,
    ));
    // With a tunnel_source the interface's address is not needed.
    lab.h
        .set_tunnel_source("tun4in6", Some("2001:db8:98::7/128"));
    // The controller rewrote the entry from its own reading: take the address away again.
    lab.h.set_egress(LO, Some(egress(1500, false)));
    let want = encap(
        &tunnel_frame("4in6 SYN"),
        v6("2001:db8:98::7"),
        v6(BE_4IN6),
        CLIENT4,
    );
    lab.check(tx("4in6 with a /128 tunnel_source", "4in6 SYN", want));
    every_frame_is_a_fuzz_seed(&lab.sent);
}

#[test]
fn fixtures_tunnel_icmp_errors_and_fragments_are_encapsulated() {
    let mut lab = tunnel_lab();
    let (lo4, lo6): (IpAddr, IpAddr) = (LO_V4.into(), LO_V6.into());
    let (ipip, be6) = (v4(BE_IPIP), v6(BE_6IN6));
    for (desc, name, src, be, client, svc) in [
        (
            "IPIP: fragmentation needed about a client's connection",
            "IPIP fragmentation needed",
            lo4,
            ipip,
            CLIENT4,
            "ipip",
        ),
        (
            "IP6IP6: packet too big about a client's connection",
            "IP6IP6 packet too big",
            lo6,
            be6,
            CLIENT6,
            "ip6ip6",
        ),
    ] {
        let want = encap(&tunnel_frame(name), src, be, client);
        lab.check(tx(desc, name, want).svc(svc, Svc::IcmpError));
    }
    for (desc, name, src, be, client) in [
        (
            "IPIP: a first fragment",
            "IPIP first fragment",
            lo4,
            ipip,
            CLIENT4,
        ),
        (
            "IPIP: its later fragment",
            "IPIP later fragment",
            lo4,
            ipip,
            CLIENT4,
        ),
        (
            "IP6IP6: a first fragment",
            "IP6IP6 first fragment",
            lo6,
            be6,
            CLIENT6,
        ),
        (
            "IP6IP6: its later fragment",
            "IP6IP6 later fragment",
            lo6,
            be6,
            CLIENT6,
        ),
    ] {
        let want = encap(&tunnel_frame(name), src, be, client);
        lab.check(tx(desc, name, want));
    }
    every_frame_is_a_fuzz_seed(&lab.sent);
    assert!(tunnel_frames().len() > 20);
}

/// TC verdicts (`TC_ACT_*` of the kernel UAPI).
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

/// A health probe as it leaves through `lo`: zero MACs, from `src` to the VIP.
fn probe_frame(src: IpAddr, vip: IpAddr) -> Vec<u8> {
    let mut f = xlb_tests::packet::tcp_frame(src, vip, 41000, 80);
    f[..12].fill(0);
    f
}

/// The health-probe TC program (README, "Tunnel forwarding"): a packet marked for a
/// backend leaves encapsulated exactly as the XDP program would send the backend's
/// traffic, redirected to its interface; anything else passes untouched; a mark naming
/// no backend drops the probe, counted.
#[test]
fn the_probe_program_encapsulates_marked_packets_only() {
    use lb_common::tunnel::probe_mark;
    let mut lab = tunnel_lab();
    let id_of = |lab: &Lab, svc: &str, be: &str| {
        lab.h
            .ctl
            .service(svc)
            .expect("service")
            .backend(be.parse().expect("backend address"))
            .expect("backend")
            .id
    };
    let (lo4, lo6): (IpAddr, IpAddr) = (LO_V4.into(), LO_V6.into());
    let ipip = id_of(&lab, "ipip", BE_IPIP);
    let in6 = id_of(&lab, "tun4in6", BE_4IN6);
    let remote = id_of(&lab, "tunremote", BE_REMOTE);
    let cases = [
        ("IPIP probe", VIP_IPIP, ipip, lo4, v4(BE_IPIP)),
        ("4in6 probe", VIP_4IN6, in6, lo6, v6(BE_4IN6)),
        (
            "probe to a backend behind another interface",
            VIP_TUN_REMOTE,
            remote,
            VETH_V4.into(),
            v4(BE_REMOTE),
        ),
    ];
    for (desc, vip, id, src, be) in cases {
        let f = probe_frame(lo4, vip);
        let r = lab.h.run_probe(&f, probe_mark(id));
        assert_eq!(r.action, TC_ACT_REDIRECT, "[{desc}] verdict");
        assert_eq!(
            xlb_tests::fuzz::hex(&r.output),
            xlb_tests::fuzz::hex(&encap(&f, src, be, lo4)),
            "[{desc}] not encapsulated as the XDP program would"
        );
    }
    // With a tunnel_source: from the prefix, for the probe's source address.
    let ts = tunnel_source(v6("2001:db8:98::"), 120);
    lab.h
        .set_tunnel_source("tun4in6", Some("2001:db8:98::/120"));
    let in6 = id_of(&lab, "tun4in6", BE_4IN6);
    let f = probe_frame(lo4, VIP_4IN6);
    let r = lab.h.run_probe(&f, probe_mark(in6));
    let src = from_addr(outer_source(&ts, client_hash(&addr(lo4))), true);
    assert_eq!(r.action, TC_ACT_REDIRECT);
    assert_eq!(
        xlb_tests::fuzz::hex(&r.output),
        xlb_tests::fuzz::hex(&encap(&f, src, v6(BE_4IN6), lo4)),
        "4in6 probe with a tunnel_source"
    );

    // Not a probe: untouched, whatever else marks it.
    for mark in [0, 0x1234, 0x584d_0000 | ipip] {
        let f = probe_frame(lo4, VIP_IPIP);
        let r = lab.h.run_probe(&f, mark);
        assert_eq!((r.action, &r.output), (TC_ACT_OK, &f), "mark {mark:#x}");
    }
    // A mark naming no backend: dropped and counted.
    let before = lab.h.dp().stats().expect("stats");
    let r = lab
        .h
        .run_probe(&probe_frame(lo4, VIP_IPIP), probe_mark(4000));
    let after = lab.h.dp().stats().expect("stats");
    assert_eq!(r.action, TC_ACT_SHOT);
    let d = Stat::DropProbe as usize;
    assert_eq!(after[d] - before[d], 1, "drop_probe not counted");
    // No egress entry for the backend's interface: dropped and counted.
    let noegress = id_of(&lab, "noegress", BE_NOEGRESS);
    let r = lab
        .h
        .run_probe(&probe_frame(lo4, VIP_TUN_NOEGRESS), probe_mark(noegress));
    assert_eq!(r.action, TC_ACT_SHOT);
    assert_eq!(lab.h.dp().stats().expect("stats")[d] - after[d], 1);
}
