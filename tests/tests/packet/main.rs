//! Tier 2: the real xlb XDP object in the kernel, maps filled through the controller's
//! own map API (edits and observations → reconcile → apply, as the daemon does), and a
//! table of fixtures run with BPF_PROG_TEST_RUN.
//!
//! Each fixture: description, input frame, expected verdict, expected output frame
//! (unchanged, or exactly the input with the MACs of the expected backend), the one
//! global counter that must move, the service counter that must move, and the expected
//! affinity entry. Steps between fixtures change the configuration the way the daemon
//! would (add/remove/drain backends, health), so multi-step scenarios read top to bottom.
//!
//! Every bug fixed in the data plane adds a row here. A frame of a new shape also goes into
//! `xlb_tests::fixtures::all()`, which the fuzzer mutates; `fixtures` checks that it did.

use std::{net::IpAddr, time::Duration};

use lb_common::{AffinityKey, AffinityValue, ServiceStats, Stat, affinity::table::units};
use xlb::{
    dataplane::{loader::LoadOptions, maps::ktime_coarse_ns},
    model::{Affinity, Desired, HealthCheck, Link, NoBackend, Protocol, Service},
    reconcile::inspect::{Decision, HashReason, affinity_key},
};
use xlb_tests::{
    enter_private_netns, fixtures,
    fixtures::{tagged, v4_with_options},
    fuzz::hex,
    harness::{XdpAction, XlbHarness},
    ifindex,
    packet::{
        ETH_8021AD, ETH_8021Q, ETH_IPV4, ETH_IPV6, ETH_LLDP, arp_request, eth, frame, tcp,
        tcp_frame, udp_frame, v4, v6,
    },
    require_root, sh,
};

mod adoption;
mod bound;
mod decap;
mod events;
mod frag;
mod icmp;
mod natsrc;
mod sources;
mod table;
mod tunnel;

const LO: u32 = 1;
const LB_SRC_MAC: [u8; 6] = [0x02, 0x1b, 0, 0, 0, 0x01];

/// A backend's MAC: derived from its address so every expected frame is checkable.
fn mac_of(addr: IpAddr) -> [u8; 6] {
    let o = match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let n = o.len();
    [0x02, 0xbe, o[n - 4], o[n - 3], o[n - 2], o[n - 1]]
}

fn link(addr: IpAddr, ifindex: u32) -> Option<Link> {
    Some(Link {
        mac: mac_of(addr),
        src_mac: LB_SRC_MAC,
        ifindex,
    })
}

fn backends(addrs: &[&str], ifindex: u32) -> Vec<(IpAddr, Option<Link>)> {
    addrs
        .iter()
        .map(|a| {
            let address: IpAddr = a.parse().expect("backend address");
            (address, link(address, ifindex))
        })
        .collect()
}

/// Which service counter a fixture must move by one.
#[derive(Clone, Copy, Debug)]
enum Svc {
    Hit,
    Miss,
    Repin,
    Expiry,
    NoBackend,
    IcmpError,
}

impl Svc {
    fn get(self, s: &ServiceStats) -> u64 {
        match self {
            Svc::Hit => s.hits,
            Svc::Miss => s.misses,
            Svc::Repin => s.repins,
            Svc::Expiry => s.expiries,
            Svc::NoBackend => s.no_backend,
            Svc::IcmpError => s.icmp_errors,
        }
    }
}

/// What must come out.
#[derive(Clone, Debug)]
enum Out {
    /// The input, untouched.
    Unchanged,
    /// The input with dst MAC := this backend's, src MAC := the egress interface's.
    To(IpAddr),
    /// Exactly these bytes (an answer the program wrote itself).
    Exact(Vec<u8>),
    /// Forwarded to whatever `xlb explain` predicted before the packet was sent, which
    /// must not be this address (used after a backend went away).
    PredictedNot(Option<IpAddr>),
}

struct Fx {
    desc: &'static str,
    input: Vec<u8>,
    ingress: u32,
    verdict: XdpAction,
    out: Out,
    stat: Stat,
    /// (service, counter): moves by exactly one.
    svc: Option<(&'static str, Svc)>,
    /// (service, client, source port): after the packet the client is pinned to the
    /// backend the packet went to.
    pin: Option<(&'static str, IpAddr, u16)>,
}

impl Fx {
    fn new(desc: &'static str, input: Vec<u8>, verdict: XdpAction, stat: Stat) -> Self {
        Self {
            desc,
            input,
            ingress: LO,
            verdict,
            out: Out::Unchanged,
            stat,
            svc: None,
            pin: None,
        }
    }
    fn pass(desc: &'static str, input: Vec<u8>, stat: Stat) -> Self {
        Self::new(desc, input, XdpAction::Pass, stat)
    }
    fn drop(desc: &'static str, input: Vec<u8>, stat: Stat) -> Self {
        Self::new(desc, input, XdpAction::Drop, stat)
    }
    /// A packet from `client` to service `svc` forwarded with XDP_TX.
    fn tx(desc: &'static str, input: Vec<u8>, svc: &'static str, client: IpAddr) -> Self {
        let sport = sport_of(&input);
        Self {
            out: Out::PredictedNot(None),
            svc: None,
            pin: Some((svc, client, sport)),
            ..Self::new(desc, input, XdpAction::Tx, Stat::Tx)
        }
    }
    fn out(mut self, out: Out) -> Self {
        self.out = out;
        self
    }
    fn svc(mut self, svc: &'static str, c: Svc) -> Self {
        self.svc = Some((svc, c));
        self
    }
    fn ingress(mut self, i: u32) -> Self {
        self.ingress = i;
        self
    }
    fn verdict(mut self, v: XdpAction, stat: Stat) -> Self {
        self.verdict = v;
        self.stat = stat;
        self
    }
}

/// Source port of a frame built by our builders (no VLAN) — for affinity = "none".
fn sport_of(f: &[u8]) -> u16 {
    let et = u16::from_be_bytes([f[12], f[13]]);
    let l4 = match et {
        ETH_IPV4 => 14 + ((f[14] & 0x0f) as usize) * 4,
        ETH_IPV6 => 14 + 40,
        _ => return 0,
    };
    if f.len() < l4 + 2 {
        return 0;
    }
    u16::from_be_bytes([f[l4], f[l4 + 1]])
}

fn with_macs(input: &[u8], backend: IpAddr) -> Vec<u8> {
    let mut o = input.to_vec();
    o[..6].copy_from_slice(&mac_of(backend));
    o[6..12].copy_from_slice(&LB_SRC_MAC);
    o
}

struct Lab {
    h: XlbHarness,
    /// Interfaces of the private namespace for the redirect fixtures.
    veth_a: u32,
    count: usize,
    /// Every input frame checked, for the fuzzer's seed list (see the end of `fixtures`).
    sent: Vec<Vec<u8>>,
}

impl Lab {
    fn new() -> Self {
        require_root();
        enter_private_netns();
        sh("ip link add xlbt0 type veth peer name xlbt1");
        sh("ip link add xlbt2 type veth peer name xlbt3");
        let (veth_a, veth_b) = (ifindex("xlbt0"), ifindex("xlbt2"));
        let mut h = XlbHarness::load(&LoadOptions {
            affinity_capacity: 65536,
            maglev_slots: 1 << 20,
        });
        h.dp_mut().add_tx_port(veth_a).expect("tx port");
        let svc = |name: &str, vip: &str, port: u16, p: Protocol| {
            let mut s = Service::new(name, vip.parse().expect("vip"), port, p);
            s.table_size = 1021;
            s
        };
        let lb = &mut h;
        let web4 = ["192.0.2.11", "192.0.2.12", "192.0.2.13"];
        let web6 = ["2001:db8:1::11", "2001:db8:1::12", "2001:db8:1::13"];
        lb.add_service(
            svc("web4", "203.0.113.10", 80, Protocol::Tcp),
            &backends(&web4, LO),
        )
        .expect("web4");
        lb.add_service(
            svc("dns4", "203.0.113.10", 53, Protocol::Udp),
            &backends(&web4, LO),
        )
        .expect("dns4");
        lb.add_service(
            svc("web6", "2001:db8::10", 80, Protocol::Tcp),
            &backends(&web6, LO),
        )
        .expect("web6");
        lb.add_service(
            svc("dns6", "2001:db8::10", 53, Protocol::Udp),
            &backends(&web6, LO),
        )
        .expect("dns6");
        let mut s = svc("net24", "203.0.113.20", 80, Protocol::Tcp);
        s.prefix_v4 = 24;
        lb.add_service(s, &backends(&web4, LO)).expect("net24");
        let mut s = svc("flows", "203.0.113.30", 80, Protocol::Tcp);
        s.affinity = Affinity::None;
        lb.add_service(s, &backends(&web4, LO)).expect("flows");
        let mut s = svc("short", "203.0.113.40", 80, Protocol::Tcp);
        s.idle_timeout = Duration::from_millis(200);
        lb.add_service(s, &backends(&web4, LO)).expect("short");
        let mut s = svc("passing", "203.0.113.50", 80, Protocol::Tcp);
        s.no_backend = NoBackend::Pass;
        lb.add_service(s, &backends(&web4[..1], LO))
            .expect("passing");
        lb.add_service(
            svc("remote", "203.0.113.60", 80, Protocol::Tcp),
            &backends(&["192.0.2.61"], veth_a),
        )
        .expect("remote");
        lb.add_service(
            svc("noport", "203.0.113.61", 80, Protocol::Tcp),
            &backends(&["192.0.2.62"], veth_b),
        )
        .expect("noport");
        // Every port: the check needs a port of its own (the validator says so).
        let mut s = svc("anyport", "203.0.113.70", 0, Protocol::Tcp);
        s.health = HealthCheck::tcp(80);
        lb.add_service(s, &backends(&web4, LO)).expect("anyport");
        Self {
            h,
            veth_a,
            count: 0,
            sent: Vec::new(),
        }
    }

    fn svc_stats(&self, name: &str) -> ServiceStats {
        let id = self.h.service_id(name);
        self.h.dp().service_stats(id).expect("service stats")
    }

    /// Runs one fixture and checks everything it states.
    fn check(&mut self, fx: Fx) -> Option<IpAddr> {
        self.count += 1;
        self.sent.push(fx.input.clone());
        let d = fx.desc;
        let stats_before = self.h.dp().stats().expect("stats");
        let svc_before = fx.svc.map(|(s, _)| self.svc_stats(s));
        // What the controller predicts for this client (same code as the data plane).
        let predicted = fx
            .pin
            .map(|(s, c, p)| self.h.explain(s, c, p).expect("explain"));

        let r = self.h.run(&fx.input, fx.ingress);

        assert_eq!(
            r.action, fx.verdict as u32,
            "[{d}] verdict: got {}, want {:?}",
            r.action, fx.verdict
        );
        let stats_after = self.h.dp().stats().expect("stats");
        for s in Stat::ALL {
            let delta = stats_after[s as usize] - stats_before[s as usize];
            let want = u64::from(s == fx.stat);
            assert_eq!(
                delta,
                want,
                "[{d}] counter {}: moved by {delta}, want {want}",
                s.name()
            );
        }
        if let (Some((name, c)), Some(before)) = (fx.svc, svc_before) {
            let after = self.svc_stats(name);
            assert_eq!(
                c.get(&after),
                c.get(&before) + 1,
                "[{d}] service {name} counter {c:?} did not move by one"
            );
        }
        let went_to = match &fx.out {
            Out::Unchanged => {
                assert_eq!(r.output, fx.input, "[{d}] frame was modified");
                None
            }
            Out::To(b) => {
                assert_eq!(
                    r.output,
                    with_macs(&fx.input, *b),
                    "[{d}] frame not sent to {b}"
                );
                Some(*b)
            }
            Out::Exact(want) => {
                assert_eq!(
                    hex(&r.output),
                    hex(want),
                    "[{d}] output bytes differ from the expected answer"
                );
                None
            }
            Out::PredictedNot(not) => {
                let p = predicted.as_ref().expect("fixture with an expected pin");
                let b = p
                    .backend
                    .unwrap_or_else(|| panic!("[{d}] explain predicts no backend"));
                assert_ne!(Some(b), *not, "[{d}] prediction is the excluded backend");
                assert_eq!(
                    r.output,
                    with_macs(&fx.input, b),
                    "[{d}] frame not sent to the predicted backend {b} ({:?})",
                    p.decision
                );
                Some(b)
            }
        };
        if let (Some((svc, client, port)), Some(b)) = (fx.pin, went_to) {
            let e = self.h.explain(svc, client, port).expect("explain");
            assert!(
                matches!(e.decision, Decision::Pinned { .. }),
                "[{d}] {client} not pinned after the packet: {:?}",
                e.decision
            );
            assert_eq!(
                e.backend,
                Some(b),
                "[{d}] {client} pinned to the wrong backend"
            );
        }
        went_to
    }

    /// Predicted backend of a client (by its Maglev slot: what a new client gets).
    fn slot_backend(&self, svc: &str, client: IpAddr) -> IpAddr {
        self.h
            .explain(svc, client, 0)
            .expect("explain")
            .slot_backend
            .expect("slot has a backend")
    }

    /// The first client of `candidates` whose slot holds `backend`.
    fn client_on(
        &self,
        svc: &str,
        backend: IpAddr,
        candidates: impl Iterator<Item = IpAddr>,
    ) -> IpAddr {
        candidates
            .into_iter()
            .find(|c| self.slot_backend(svc, *c) == backend)
            .unwrap_or_else(|| panic!("no candidate client hashes to {backend} in {svc}"))
    }
}

fn clients4(net: &str) -> impl Iterator<Item = IpAddr> + '_ {
    (1..=250).map(move |i| v4(&format!("{net}.{i}")))
}

#[test]
fn fixtures() {
    let mut lab = Lab::new();
    let vip4 = v4("203.0.113.10");
    let vip6 = v6("2001:db8::10");
    let c4 = v4("198.51.100.7");
    let c6 = v6("2001:db8:c::7");
    let other4 = v4("10.9.9.9");
    let other6 = v6("2001:db8:ffff::1");

    // --- IPv4 and IPv6, TCP and UDP to a VIP: exact output bytes -----------------------
    let a = lab
        .check(
            Fx::tx(
                "v4 TCP SYN, new client: Maglev decides, entry written",
                tcp_frame(c4, vip4, 40000, 80),
                "web4",
                c4,
            )
            .svc("web4", Svc::Miss),
        )
        .expect("forwarded");
    lab.check(
        Fx::tx(
            "v4 TCP, same client, other port: affinity hit",
            tcp_frame(c4, vip4, 40001, 80),
            "web4",
            c4,
        )
        .out(Out::To(a))
        .svc("web4", Svc::Hit),
    );
    lab.check(
        Fx::tx(
            "v4 UDP to the VIP's UDP service",
            udp_frame(c4, vip4, 5353, 53),
            "dns4",
            c4,
        )
        .svc("dns4", Svc::Miss),
    );
    let b6 = lab
        .check(
            Fx::tx(
                "v6 TCP SYN, new client",
                tcp_frame(c6, vip6, 40000, 80),
                "web6",
                c6,
            )
            .svc("web6", Svc::Miss),
        )
        .expect("forwarded");
    lab.check(
        Fx::tx(
            "v6 TCP, same client again: hit",
            tcp_frame(c6, vip6, 40002, 80),
            "web6",
            c6,
        )
        .out(Out::To(b6))
        .svc("web6", Svc::Hit),
    );
    lab.check(
        Fx::tx(
            "v6 UDP to the VIP's UDP service",
            udp_frame(c6, vip6, 5353, 53),
            "dns6",
            c6,
        )
        .svc("dns6", Svc::Miss),
    );
    lab.check(
        Fx::tx(
            "v4 TCP with payload",
            frame(c4, vip4, &tcp(40003, 80, b"GET / HTTP/1.1\r\n\r\n")),
            "web4",
            c4,
        )
        .out(Out::To(a))
        .svc("web4", Svc::Hit),
    );
    lab.check(
        Fx::tx(
            "service on every port (port 0) takes port 443",
            tcp_frame(c4, v4("203.0.113.70"), 40000, 443),
            "anyport",
            c4,
        )
        .svc("anyport", Svc::Miss),
    );

    // --- not ours: passes unchanged -----------------------------------------------------
    lab.check(Fx::pass(
        "v4 TCP to a non-VIP address",
        tcp_frame(c4, other4, 40000, 80),
        Stat::PassNotService,
    ));
    lab.check(Fx::pass(
        "v6 TCP to a non-VIP address",
        tcp_frame(c6, other6, 40000, 80),
        Stat::PassNotService,
    ));
    lab.check(Fx::pass(
        "VIP, port without a service",
        tcp_frame(c4, vip4, 40000, 8080),
        Stat::PassNotService,
    ));
    lab.check(Fx::pass(
        "VIP, TCP to a UDP-only port",
        tcp_frame(c4, vip4, 40000, 53),
        Stat::PassNotService,
    ));
    lab.check(Fx::pass(
        "v6 VIP, port without a service",
        udp_frame(c6, vip6, 40000, 9999),
        Stat::PassNotService,
    ));
    lab.check(Fx::pass(
        "ARP request for the VIP",
        arp_request(
            "198.51.100.1".parse().expect("v4"),
            "203.0.113.10".parse().expect("v4"),
        ),
        Stat::PassNonIp,
    ));
    // ICMP to a VIP (echo, errors): icmp.rs.
    lab.check(Fx::pass(
        "LLDP frame",
        eth(ETH_LLDP, &[0u8; 46], &[]),
        Stat::PassNonIp,
    ));

    // --- VLAN and IPv4 options ----------------------------------------------------------
    lab.check(
        Fx::tx(
            "802.1Q-tagged v4 TCP: forwarded, tag kept",
            tagged(c4, vip4, &tcp(40004, 80, b""), &[(ETH_8021Q, 10)]),
            "web4",
            c4,
        )
        .out(Out::To(a))
        .svc("web4", Svc::Hit),
    );
    let t6 = tcp(40005, 80, b"");
    lab.check(
        Fx::tx(
            "802.1ad-tagged v6 TCP: forwarded",
            tagged(c6, vip6, &t6, &[(ETH_8021AD, 20)]),
            "web6",
            c6,
        )
        .out(Out::To(b6))
        .svc("web6", Svc::Hit),
    );
    lab.check(Fx::pass(
        "two VLAN tags (QinQ): not parsed, passed",
        tagged(c6, vip6, &t6, &[(ETH_8021AD, 20), (ETH_8021Q, 10)]),
        Stat::PassNonIp,
    ));
    lab.check(
        Fx::tx(
            "v4 with 4 bytes of options (IHL 6)",
            v4_with_options(c4, vip4, &tcp(40006, 80, b""), &[1, 1, 1, 0]),
            "web4",
            c4,
        )
        .out(Out::To(a))
        .svc("web4", Svc::Hit),
    );
    lab.check(
        Fx::tx(
            "v4 with 40 bytes of options (IHL 15)",
            v4_with_options(c4, vip4, &tcp(40007, 80, b""), &[1; 40]),
            "web4",
            c4,
        )
        .out(Out::To(a))
        .svc("web4", Svc::Hit),
    );
    let mut bad = tcp_frame(c4, vip4, 40008, 80);
    bad[14] = 0x44;
    lab.check(Fx::pass("v4 IHL 4 (invalid)", bad, Stat::PassMalformed));
    let mut bad = tcp_frame(c4, vip4, 40008, 80);
    bad[14] = 0x65;
    lab.check(Fx::pass(
        "EtherType IPv4 carrying version 6",
        bad,
        Stat::PassMalformed,
    ));

    // --- truncation at every header boundary --------------------------------------------
    let t4 = tcp_frame(c4, vip4, 40009, 80);
    let t6 = tcp_frame(c6, vip6, 40009, 80);
    let u4 = udp_frame(c4, vip4, 40009, 53);
    let u6 = udp_frame(c6, vip6, 40009, 53);
    let vlan = tagged(c4, vip4, &tcp(40010, 80, b""), &[(ETH_8021Q, 10)]);
    lab.check(Fx::pass(
        "Ethernet header only (EtherType IPv4, no IP)",
        t4[..14].to_vec(),
        Stat::PassMalformed,
    ));
    lab.check(Fx::pass(
        "802.1Q tag cut in half",
        vlan[..16].to_vec(),
        Stat::PassMalformed,
    ));
    lab.check(Fx::pass(
        "802.1Q tag, no IP header",
        vlan[..18].to_vec(),
        Stat::PassMalformed,
    ));
    lab.check(Fx::pass(
        "IPv4 header cut at 19 bytes",
        t4[..14 + 19].to_vec(),
        Stat::PassMalformed,
    ));
    lab.check(Fx::drop(
        "IPv4 to VIP, TCP header missing",
        t4[..14 + 20].to_vec(),
        Stat::DropMalformed,
    ));
    lab.check(Fx::drop(
        "IPv4 to VIP, TCP header cut at 19 bytes",
        t4[..14 + 20 + 19].to_vec(),
        Stat::DropMalformed,
    ));
    lab.check(Fx::drop(
        "IPv4 to VIP, UDP header cut at 7 bytes",
        u4[..14 + 20 + 7].to_vec(),
        Stat::DropMalformed,
    ));
    let opts = v4_with_options(c4, vip4, &tcp(40011, 80, b""), &[1; 8]);
    lab.check(Fx::drop(
        "IPv4 options (IHL 7) cut: TCP beyond the end",
        opts[..14 + 24].to_vec(),
        Stat::DropMalformed,
    ));
    lab.check(Fx::pass(
        "IPv6 header cut at 39 bytes",
        t6[..14 + 39].to_vec(),
        Stat::PassMalformed,
    ));
    lab.check(Fx::drop(
        "IPv6 to VIP, TCP header missing",
        t6[..14 + 40].to_vec(),
        Stat::DropMalformed,
    ));
    lab.check(Fx::drop(
        "IPv6 to VIP, UDP header cut at 7 bytes",
        u6[..14 + 40 + 7].to_vec(),
        Stat::DropMalformed,
    ));
    let t_other = tcp_frame(c4, other4, 40009, 80);
    lab.check(Fx::pass(
        "truncated TCP to a non-VIP: not ours",
        t_other[..14 + 20 + 3].to_vec(),
        Stat::PassNotService,
    ));

    // --- fragments and IPv6 extension headers: frag.rs ----------------------------------

    // --- affinity across backend changes ---------------------------------------------------
    // A pinned client keeps its backend when a backend is added, even if its slot moved.
    let d = v4("192.0.2.14");
    lab.h
        .add_backend("web4", d, 1, link(d, LO))
        .expect("add backend");
    // Pin a client to A first whose slot will move to D: find it after the add, then
    // check it stays where its entry says.
    let moved = lab.client_on("web4", d, clients4("198.51.101"));
    lab.h.remove_backend("web4", d).expect("remove d again");
    let before = lab
        .check(
            Fx::tx(
                "client pinned before a backend is added",
                tcp_frame(moved, vip4, 1000, 80),
                "web4",
                moved,
            )
            .svc("web4", Svc::Miss),
        )
        .expect("forwarded");
    assert_ne!(before, d);
    lab.h
        .add_backend("web4", d, 1, link(d, LO))
        .expect("add backend");
    assert_eq!(
        lab.slot_backend("web4", moved),
        d,
        "its slot now belongs to the new backend"
    );
    lab.check(
        Fx::tx(
            "after the add, the pinned client keeps its backend",
            tcp_frame(moved, vip4, 1001, 80),
            "web4",
            moved,
        )
        .out(Out::To(before))
        .svc("web4", Svc::Hit),
    );
    let newcomer = lab.client_on("web4", d, clients4("198.51.102"));
    lab.check(
        Fx::tx(
            "a new client whose slot is the new backend's goes there",
            tcp_frame(newcomer, vip4, 1000, 80),
            "web4",
            newcomer,
        )
        .out(Out::To(d))
        .svc("web4", Svc::Miss),
    );

    // An unhealthy backend's client is re-pinned on its next packet.
    lab.h.set_healthy("web4", before, false).expect("unhealthy");
    let repinned = lab
        .check(
            Fx::tx(
                "backend unhealthy: its client is re-pinned",
                tcp_frame(moved, vip4, 1002, 80),
                "web4",
                moved,
            )
            .out(Out::PredictedNot(Some(before)))
            .svc("web4", Svc::Repin),
        )
        .expect("forwarded");
    lab.check(
        Fx::tx(
            "re-pinned client: hit on the new backend",
            tcp_frame(moved, vip4, 1003, 80),
            "web4",
            moved,
        )
        .out(Out::To(repinned))
        .svc("web4", Svc::Hit),
    );
    // Sticky failback: the recovered backend does not get its old client back.
    lab.h
        .set_healthy("web4", before, true)
        .expect("healthy again");
    lab.check(
        Fx::tx(
            "backend healthy again: the re-pinned client stays (sticky)",
            tcp_frame(moved, vip4, 1004, 80),
            "web4",
            moved,
        )
        .out(Out::To(repinned))
        .svc("web4", Svc::Hit),
    );

    // A removed backend's client is re-pinned (its generation is gone).
    let on_d = newcomer;
    lab.h.remove_backend("web4", d).expect("remove");
    lab.check(
        Fx::tx(
            "backend removed: its client is re-pinned",
            tcp_frame(on_d, vip4, 1005, 80),
            "web4",
            on_d,
        )
        .out(Out::PredictedNot(Some(d)))
        .svc("web4", Svc::Repin),
    );

    // Draining keeps pinned clients, takes no new ones.
    let drained = v4("192.0.2.12");
    let pinned = lab.client_on("web4", drained, clients4("198.51.103"));
    lab.check(
        Fx::tx(
            "client pinned to the backend about to drain",
            tcp_frame(pinned, vip4, 1000, 80),
            "web4",
            pinned,
        )
        .out(Out::To(drained))
        .svc("web4", Svc::Miss),
    );
    let would_go = lab.client_on("web4", drained, clients4("198.51.104"));
    lab.h.set_draining("web4", drained, true).expect("drain");
    lab.check(
        Fx::tx(
            "draining backend keeps its pinned client",
            tcp_frame(pinned, vip4, 1001, 80),
            "web4",
            pinned,
        )
        .out(Out::To(drained))
        .svc("web4", Svc::Hit),
    );
    lab.check(
        Fx::tx(
            "draining backend gets no new client",
            tcp_frame(would_go, vip4, 1000, 80),
            "web4",
            would_go,
        )
        .out(Out::PredictedNot(Some(drained)))
        .svc("web4", Svc::Miss),
    );
    lab.h.set_draining("web4", drained, false).expect("undrain");

    // No healthy backend: drop and count, or pass when configured.
    for b in ["192.0.2.11", "192.0.2.12", "192.0.2.13"] {
        lab.h
            .set_healthy("dns4", b.parse().expect("addr"), false)
            .expect("down");
    }
    lab.check(
        Fx::drop(
            "no healthy backend: dropped",
            udp_frame(v4("198.51.100.99"), vip4, 5000, 53),
            Stat::DropNoBackend,
        )
        .svc("dns4", Svc::NoBackend),
    );
    lab.check(
        Fx::drop(
            "no healthy backend: a pinned client is dropped too",
            udp_frame(c4, vip4, 5000, 53),
            Stat::DropNoBackend,
        )
        .svc("dns4", Svc::Repin),
    );
    lab.h
        .set_healthy("dns4", "192.0.2.13".parse().expect("addr"), true)
        .expect("up");
    let fresh = v4("198.51.100.98");
    lab.check(
        Fx::tx(
            "one backend back: service restored",
            udp_frame(fresh, vip4, 5001, 53),
            "dns4",
            fresh,
        )
        .out(Out::To(v4("192.0.2.13")))
        .svc("dns4", Svc::Miss),
    );
    lab.h
        .set_healthy("passing", v4("192.0.2.11"), false)
        .expect("down");
    lab.check(
        Fx::pass(
            "no healthy backend, service set to pass",
            tcp_frame(c4, v4("203.0.113.50"), 1000, 80),
            Stat::PassNoBackend,
        )
        .svc("passing", Svc::NoBackend),
    );

    // --- /24 prefix groups clients ---------------------------------------------------------
    let vip24 = v4("203.0.113.20");
    let p = lab
        .check(
            Fx::tx(
                "/24 service: first client of 198.51.100.0/24",
                tcp_frame(v4("198.51.100.7"), vip24, 1000, 80),
                "net24",
                v4("198.51.100.7"),
            )
            .svc("net24", Svc::Miss),
        )
        .expect("forwarded");
    lab.check(
        Fx::tx(
            "/24 service: another client of the same /24 hits the same entry",
            tcp_frame(v4("198.51.100.200"), vip24, 1000, 80),
            "net24",
            v4("198.51.100.200"),
        )
        .out(Out::To(p))
        .svc("net24", Svc::Hit),
    );
    lab.check(
        Fx::tx(
            "/24 service: a client of another /24 is a miss",
            tcp_frame(v4("198.51.99.7"), vip24, 1000, 80),
            "net24",
            v4("198.51.99.7"),
        )
        .svc("net24", Svc::Miss),
    );

    // --- affinity = "none" spreads one client's connections ----------------------------
    let vipf = v4("203.0.113.30");
    let mut seen = std::collections::BTreeSet::new();
    for port in 2000..2010u16 {
        let b = lab
            .check(
                Fx::tx(
                    "affinity none: each source port decided alone",
                    tcp_frame(c4, vipf, port, 80),
                    "flows",
                    c4,
                )
                .svc("flows", Svc::Miss),
            )
            .expect("forwarded");
        seen.insert(b);
    }
    assert!(
        seen.len() >= 2,
        "affinity none: 10 ports of one client all went to {seen:?}"
    );
    lab.check(
        Fx::tx(
            "affinity none: the same connection stays",
            tcp_frame(c4, vipf, 2000, 80),
            "flows",
            c4,
        )
        .svc("flows", Svc::Hit),
    );

    // --- idle expiry -----------------------------------------------------------------------
    let vips = v4("203.0.113.40");
    lab.check(
        Fx::tx(
            "short idle timeout: client pinned",
            tcp_frame(c4, vips, 1000, 80),
            "short",
            c4,
        )
        .svc("short", Svc::Miss),
    );
    lab.check(
        Fx::tx(
            "within the idle timeout: hit",
            tcp_frame(c4, vips, 1001, 80),
            "short",
            c4,
        )
        .svc("short", Svc::Hit),
    );
    std::thread::sleep(Duration::from_millis(400));
    let e = lab.h.explain("short", c4, 0).expect("explain");
    assert_eq!(
        e.decision,
        Decision::Hashed {
            reason: HashReason::Expired
        },
        "explain sees the expiry"
    );
    lab.check(
        Fx::tx(
            "idle longer than idle_timeout: re-decided",
            tcp_frame(c4, vips, 1002, 80),
            "short",
            c4,
        )
        .svc("short", Svc::Expiry),
    );

    // --- redirect to another interface -------------------------------------------------------
    let r = v4("192.0.2.61");
    lab.check(
        Fx::tx(
            "backend behind another interface: XDP_REDIRECT",
            tcp_frame(c4, v4("203.0.113.60"), 1000, 80),
            "remote",
            c4,
        )
        .out(Out::To(r))
        .verdict(XdpAction::Redirect, Stat::Redirect)
        .svc("remote", Svc::Miss),
    );
    lab.check(
        Fx::tx(
            "same backend, packet arriving on its interface: XDP_TX",
            tcp_frame(c4, v4("203.0.113.60"), 1001, 80),
            "remote",
            c4,
        )
        .out(Out::To(r))
        .ingress(lab.veth_a)
        .svc("remote", Svc::Hit),
    );
    let mut fx = Fx::drop(
        "egress interface missing from the redirect map",
        tcp_frame(c4, v4("203.0.113.61"), 1000, 80),
        Stat::DropNoTxPort,
    );
    fx.svc = Some(("noport", Svc::Miss));
    lab.check(fx);

    println!("{} fixtures passed", lab.count);
    assert!(lab.count >= 40, "only {} fixtures ran", lab.count);
    every_frame_is_a_fuzz_seed(&lab.sent);
}

/// The fuzzer mutates `xlb_tests::fixtures::all()`: every frame shape sent here must be
/// there, or the fuzzer would not explore around it.
fn every_frame_is_a_fuzz_seed(sent: &[Vec<u8>]) {
    let seeds: std::collections::HashSet<Vec<u8>> = fixtures::all()
        .iter()
        .map(|n| fixtures::shape(&n.frame))
        .collect();
    for f in sent {
        assert!(
            seeds.contains(&fixtures::shape(f)),
            "fixture frame {} has no shape in xlb_tests::fixtures::all() (the fuzzer's seeds): add it there",
            hex(f)
        );
    }
}

/// Fill levels of the capacity test and the most clients each may leave unpinned: the
/// README's figures (a bucket of 4 slots, 2 slots per configured client, clients spread
/// by a hash: Poisson overflow 0.43%, 1.96%, 3.25%, 3.75%) plus room for the sampling
/// noise of 16,384 clients.
const CAPACITY_LOSS: [(f64, f64); 4] = [(0.5, 0.009), (0.8, 0.025), (0.95, 0.038), (1.0, 0.043)];

/// `affinity_capacity` clients, fed from one CPU, stay pinned but for the documented share
/// lost to full buckets — at 50%, 80%, 95% and 100% of capacity. (The regression it
/// replaces: per-CPU LRU lists kept only capacity / CPUs clients when traffic came on one
/// queue; the bucketed table is shared by all CPUs by construction.)
#[test]
fn affinity_capacity_keeps_all_but_the_documented_share_of_clients() {
    require_root();
    enter_private_netns();
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
    let capacity = 16_384u32;
    let mut h = XlbHarness::load(&LoadOptions {
        affinity_capacity: capacity,
        maglev_slots: 1 << 16,
    });
    let mut s = Service::new("web", v4("203.0.113.10"), 80, Protocol::Tcp);
    s.table_size = 1021;
    h.add_service(s, &backends(&["192.0.2.11", "192.0.2.12"], LO))
        .expect("service");
    let id = h.service_id("web");
    let frame_of = |i: u32| {
        tcp_frame(
            IpAddr::from([10, 50 + (i >> 16) as u8, (i >> 8) as u8, i as u8]),
            v4("203.0.113.10"),
            1000,
            80,
        )
    };
    for (fill, most) in CAPACITY_LOSS {
        h.dp_mut().affinity_flush(None).expect("flush");
        let clients = (capacity as f64 * fill) as u32;
        for i in 0..clients {
            assert_eq!(h.run(&frame_of(i), LO).action, XdpAction::Tx as u32);
        }
        let pinned = h.dp().affinity_entries(Some(id)).expect("entries").len() as u32;
        let lost = 1.0 - pinned as f64 / clients as f64;
        println!(
            "{:.0}% of capacity: {pinned} of {clients} clients pinned, {:.2}% lost to full buckets",
            fill * 100.0,
            lost * 100.0
        );
        assert!(
            lost <= most,
            "{:.0}% of capacity: {:.2}% of the clients lost their pin, documented ≤ {:.1}%",
            fill * 100.0,
            lost * 100.0,
            most * 100.0
        );
    }
}

/// The batched Maglev reads and writes (raw BPF_MAP_*_BATCH syscalls) agree with
/// element-by-element access, at offset 0, in the middle and at the end of the array.
#[test]
fn batched_maglev_reads_and_writes_match_single_slot_access() {
    require_root();
    enter_private_netns();
    let slots = 1 << 16;
    let mut h = XlbHarness::load(&LoadOptions {
        affinity_capacity: 1024,
        maglev_slots: slots,
    });
    let table: Vec<u32> = (0..20_011u32)
        .map(|i| i.wrapping_mul(2_654_435_761) % 4096)
        .collect();
    for offset in [0, 12_345, slots - table.len() as u32] {
        let written = h
            .dp_mut()
            .write_maglev(offset, &table, None)
            .expect("write");
        assert_eq!(written, table.len());
        assert_eq!(
            h.dp()
                .read_maglev(offset, table.len() as u32)
                .expect("read"),
            table
        );
        for i in [0usize, 1, 8191, 8192, 8193, table.len() - 1] {
            assert_eq!(
                h.dp().maglev_slot(offset + i as u32).expect("slot"),
                table[i],
                "slot {i} at {offset}"
            );
        }
        // Only changed slots are written.
        let mut changed = table.clone();
        changed[7] ^= 1;
        changed[9000] ^= 1;
        assert_eq!(
            h.dp_mut()
                .write_maglev(offset, &changed, Some(&table))
                .expect("write"),
            2
        );
        assert_eq!(
            h.dp()
                .read_maglev(offset, table.len() as u32)
                .expect("read"),
            changed
        );
    }
    assert!(
        h.dp().read_maglev(slots - 10, 11).is_err(),
        "a range past the end must fail"
    );
}

// ---------------------------------------------------------------------------------------
// Rows of the second design: refresh period, pins that never cross services, generations
// that are never reused. Each topic is its own test, so its name says what broke.
// ---------------------------------------------------------------------------------------

/// One step of `CLOCK_MONOTONIC_COARSE` (`bpf_ktime_get_coarse_ns`): a scheduler tick.
fn coarse_tick_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64).max(1)
}

impl Lab {
    /// Ages `client`'s entry in `svc` as if its last packet was `idle_ns` ago; its value
    /// as the table now holds it.
    fn age_entry(&mut self, svc: &str, client: IpAddr, idle_ns: u64) -> AffinityValue {
        let key = self.key(svc, client);
        assert!(
            self.h
                .dp_mut()
                .affinity_restamp(&key, ktime_coarse_ns() - idle_ns)
                .expect("restamp"),
            "client has an entry"
        );
        self.entry(svc, client)
    }

    /// Marks `client`'s entry in `svc` established (as if seen in two distinct seconds).
    fn establish(&mut self, svc: &str, client: IpAddr) {
        let key = self.key(svc, client);
        let v = self.entry(svc, client);
        self.h
            .dp_mut()
            .affinity_set(&key, &v, true)
            .expect("write entry");
        let value = self.h.ctl.service(svc).expect("svc").value;
        let judged = self
            .h
            .dp()
            .judge(&value, &key, ktime_coarse_ns())
            .expect("judge")
            .expect("entry");
        assert!(judged.established);
    }

    fn key(&self, svc: &str, client: IpAddr) -> AffinityKey {
        affinity_key(self.h.ctl.service(svc).expect("service"), client, 0).expect("key")
    }

    fn entry(&self, svc: &str, client: IpAddr) -> AffinityValue {
        let key = self.key(svc, client);
        self.h
            .dp()
            .affinity_get(&key)
            .expect("lookup")
            .expect("entry")
    }
}

/// Fault 3 (issue 10): a short `idle_timeout` gets a refresh period of a quarter of it, so
/// `last_seen` is refreshed one tick after that period and not one tick before; expiry
/// happens one tick after `idle_timeout` and not one tick before.
#[test]
fn fixtures_refresh_and_expiry_follow_a_short_idle_timeout() {
    let mut lab = Lab::new();
    let tick = coarse_tick_ns();
    let svc = lab.h.ctl.service("short").expect("short").value;
    let (timeout, refresh) = (svc.idle_timeout_ns, svc.refresh_ns as u64);
    assert_eq!(timeout, 200_000_000, "the fixture service's idle_timeout");
    assert_eq!(
        refresh,
        timeout / 4,
        "refresh period of a 200 ms idle_timeout"
    );
    let vip = v4("203.0.113.40");
    let c = v4("198.51.100.77");
    let first = lab
        .check(
            Fx::tx(
                "short idle_timeout: new client",
                tcp_frame(c, vip, 1000, 80),
                "short",
                c,
            )
            .svc("short", Svc::Miss),
        )
        .expect("forwarded");
    // Established already, so no hit below writes for the admission rule (a packet in a
    // new second establishes a client), only for the refresh period.
    lab.establish("short", c);
    // The program's clock reads at most one tick after ours: 2 ticks of margin before.
    short_of(&mut lab, tick, |lab| {
        let before = lab.age_entry("short", c, refresh - 2 * tick);
        lab.check(
            Fx::tx(
                "idle one tick short of the refresh period: hit, last_seen not written",
                tcp_frame(c, vip, 1001, 80),
                "short",
                c,
            )
            .out(Out::To(first))
            .svc("short", Svc::Hit),
        );
        assert_eq!(
            lab.entry("short", c).last_seen_ns,
            before.last_seen_ns,
            "refreshed before the refresh period"
        );
    });
    let before = lab.age_entry("short", c, refresh + tick);
    let asked = ktime_coarse_ns();
    lab.check(
        Fx::tx(
            "idle one tick past the refresh period: hit, last_seen refreshed",
            tcp_frame(c, vip, 1002, 80),
            "short",
            c,
        )
        .out(Out::To(first))
        .svc("short", Svc::Hit),
    );
    // The table keeps time in units of 2^20 ns: compare at that resolution.
    let after = units(lab.entry("short", c).last_seen_ns);
    assert!(
        after > units(before.last_seen_ns) && after >= units(asked),
        "last_seen not refreshed past the refresh period ({} → {after}, now {}, in units)",
        units(before.last_seen_ns),
        units(asked)
    );
    short_of(&mut lab, tick, |lab| {
        lab.age_entry("short", c, timeout - 2 * tick);
        lab.check(
            Fx::tx(
                "idle one tick short of idle_timeout: still a hit",
                tcp_frame(c, vip, 1003, 80),
                "short",
                c,
            )
            .out(Out::To(first))
            .svc("short", Svc::Hit),
        );
    });
    lab.age_entry("short", c, timeout + tick);
    lab.check(
        Fx::tx(
            "idle one tick past idle_timeout: expired, re-decided",
            tcp_frame(c, vip, 1004, 80),
            "short",
            c,
        )
        .svc("short", Svc::Expiry),
    );
}

/// Runs a step that ages an entry to a tick short of a limit and checks the packet after
/// it. The margin holds only if the step runs within about a tick: on a loaded machine the
/// thread can be preempted between the ageing and the packet, which makes the entry older
/// than the step meant. Such a stalled attempt is repeated (up to 20 times); a failure of
/// an attempt that ran within the margin is a real failure.
fn short_of(lab: &mut Lab, tick: u64, mut step: impl FnMut(&mut Lab)) {
    within_a_tick(tick, || step(lab));
}

/// [`short_of`] for any step: repeats an attempt that failed after running longer than
/// `tick` (preempted), up to 20 times; an attempt that failed within the tick fails.
fn within_a_tick(tick: u64, mut step: impl FnMut()) {
    for attempt in 1..=20 {
        let start = ktime_coarse_ns();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut step));
        let took = ktime_coarse_ns() - start;
        match r {
            Ok(()) => return,
            Err(e) if took <= tick || attempt == 20 => std::panic::resume_unwind(e),
            Err(_) => eprintln!("step stalled for {took} ns (> one tick): repeated"),
        }
    }
}

/// Fault 1 (issue 10), data-plane half: an entry whose backend id holds another
/// service's backend — with the entry's generation, forced — is re-pinned within its own
/// service, counted as a re-pin; `explain` agrees before and after.
#[test]
fn fixtures_a_pin_never_crosses_services() {
    let mut lab = Lab::new();
    let vip4 = v4("203.0.113.10");
    let c = v4("198.51.100.88");
    lab.check(
        Fx::tx(
            "client pinned in web4",
            tcp_frame(c, vip4, 1000, 80),
            "web4",
            c,
        )
        .svc("web4", Svc::Miss),
    );
    // Point the entry at the backend of service "remote" (192.0.2.61, behind another
    // interface), with that backend's generation: only the service check can catch it.
    let remote = lab.h.ctl.service("remote").expect("remote").backends[0].clone();
    let key = lab.key("web4", c);
    let mut v = lab.entry("web4", c);
    v.backend_id = remote.id;
    v.backend_gen = remote.generation;
    lab.h
        .dp_mut()
        .affinity_set(&key, &v, false)
        .expect("forge entry");
    let e = lab.h.explain("web4", c, 0).expect("explain");
    assert_eq!(
        e.decision,
        Decision::Hashed {
            reason: HashReason::BackendUnusable
        },
        "explain must not follow a pin into another service"
    );
    let slot = lab.slot_backend("web4", c);
    lab.check(
        Fx::tx(
            "entry pointing to another service's backend (same generation): re-pinned within web4",
            tcp_frame(c, vip4, 1001, 80),
            "web4",
            c,
        )
        .out(Out::To(slot))
        .svc("web4", Svc::Repin),
    );
    let pins = lab
        .h
        .dp()
        .judged_entries(Some(lab.h.service_id("web4")), ktime_coarse_ns())
        .expect("judged");
    let mine = pins.iter().find(|p| p.key == key).expect("entry");
    assert_eq!(
        mine.backend
            .map(|b| xlb::model::addr_from_words(&b.addr, b.family)),
        Some(slot),
        "affinity list view disagrees with the packet"
    );
}

/// Generations are never issued twice: a backend id reused by a new backend of the same
/// service, and (fault 1 of issue 10) an id reused by another service after the
/// controller restarted on the same maps, never inherit the old pins.
#[test]
fn fixtures_a_reused_backend_id_never_inherits_pins() {
    require_root();
    enter_private_netns();
    let mut h = XlbHarness::load(&LoadOptions {
        affinity_capacity: 4096,
        maglev_slots: 1 << 16,
    });
    let svc = |name: &str, vip: &str| {
        let mut s = Service::new(name, vip.parse().expect("vip"), 80, Protocol::Tcp);
        s.table_size = 1021;
        s
    };
    let web = svc("web", "203.0.113.10");
    let api = svc("api", "203.0.113.11");
    h.add_service(web.clone(), &backends(&["10.77.0.11", "10.77.0.12"], LO))
        .expect("web");
    h.add_service(api.clone(), &backends(&["10.77.0.13"], LO))
        .expect("api");
    let b14 = v4("10.77.0.14");
    h.add_backend("web", b14, 1, link(b14, LO))
        .expect("add .14");
    let vip = v4("203.0.113.10");
    let client = clients4("198.51.105")
        .find(|c| h.explain("web", *c, 0).expect("explain").slot_backend == Some(b14))
        .expect("a client whose slot is .14");
    let run = |h: &XlbHarness, port: u16| {
        let r = h.run(&tcp_frame(client, vip, port, 80), LO);
        assert_eq!(r.action, XdpAction::Tx as u32);
        r.output[..6].to_vec()
    };
    assert_eq!(run(&h, 1000), mac_of(b14), "pinned to .14");
    let old = h
        .ctl
        .service("web")
        .expect("web")
        .backend(b14)
        .expect(".14")
        .clone();

    // 1. Same service: .14 removed, .16 added takes its id with a new generation.
    h.remove_backend("web", b14).expect("remove .14");
    let b16 = v4("10.77.0.16");
    h.add_backend("web", b16, 1, link(b16, LO))
        .expect("add .16");
    let new = h
        .ctl
        .service("web")
        .expect("web")
        .backend(b16)
        .expect(".16")
        .clone();
    assert_eq!(new.id, old.id, "the test needs the id reused");
    assert_ne!(
        new.generation, old.generation,
        "a generation was issued twice"
    );
    let slot = h.explain("web", client, 0).expect("explain").slot_backend;
    let id = h.service_id("web");
    let repins = h.dp().service_stats(id).expect("stats").repins;
    let got = run(&h, 1001);
    assert_eq!(
        Some(got.as_slice()),
        slot.map(mac_of).as_ref().map(|m| &m[..])
    );
    assert_eq!(h.dp().service_stats(id).expect("stats").repins, repins + 1);

    // 2. Pin the client to .16, remove .16, restart the controller on the same maps,
    //    then add a backend to another service: it takes .16's id, never its generation.
    let client = clients4("198.51.106")
        .find(|c| h.explain("web", *c, 0).expect("explain").slot_backend == Some(b16))
        .expect("a client whose slot is .16");
    let r = h.run(&tcp_frame(client, vip, 2000, 80), LO);
    assert_eq!(r.output[..6], mac_of(b16));
    h.remove_backend("web", b16).expect("remove .16");
    let mut desired = Desired::default();
    for (s, addrs) in [
        (&web, &["10.77.0.11", "10.77.0.12"][..]),
        (&api, &["10.77.0.13"]),
    ] {
        let mut s = s.clone();
        s.backends = addrs
            .iter()
            .map(|a| xlb::model::Backend::new(a.parse().expect("addr")))
            .collect();
        desired
            .apply(&xlb::model::Edit::ServiceAdd {
                service: Box::new(s),
            })
            .expect("desired");
    }
    let links: Vec<(IpAddr, Option<Link>)> = ["10.77.0.11", "10.77.0.12", "10.77.0.13"]
        .iter()
        .map(|a| (v4(a), link(v4(a), LO)))
        .collect();
    h.restart(desired, &links);
    let b15 = v4("10.77.0.15");
    h.add_backend("api", b15, 1, link(b15, LO))
        .expect("add .15 to api");
    let reused = h
        .ctl
        .service("api")
        .expect("api")
        .backend(b15)
        .expect(".15")
        .clone();
    assert_eq!(reused.id, new.id, "the test needs .16's id reused by api");
    assert!(
        reused.generation > new.generation,
        "generation {} issued again after a restart",
        reused.generation
    );
    let e = h.explain("web", client, 0).expect("explain");
    assert!(
        matches!(e.decision, Decision::Hashed { .. }),
        "explain follows the pin to api's backend: {e:?}"
    );
    let repins = h.dp().service_stats(id).expect("stats").repins;
    let r = h.run(&tcp_frame(client, vip, 2001, 80), LO);
    assert_eq!(r.action, XdpAction::Tx as u32);
    assert_ne!(
        r.output[..6],
        mac_of(b15),
        "web's client went to api's backend"
    );
    assert_eq!(
        Some(r.output[..6].to_vec()),
        e.slot_backend.map(|b| mac_of(b).to_vec()),
        "not web's slot backend"
    );
    assert_eq!(h.dp().service_stats(id).expect("stats").repins, repins + 1);
}

/// A removed backend forgets its health: added again without a check, it is new (issue
/// 10, fault 4: out of the table until its first passed check), not healthy as before.
#[test]
fn a_backend_added_again_is_new_until_checked() {
    require_root();
    enter_private_netns();
    let mut h = XlbHarness::load(&LoadOptions {
        affinity_capacity: 1024,
        maglev_slots: 1 << 16,
    });
    let mut s = Service::new("web", v4("203.0.113.10"), 80, Protocol::Tcp);
    s.table_size = 1021;
    h.add_service(s, &backends(&["192.0.2.11", "192.0.2.12"], LO))
        .expect("service");
    let b = v4("192.0.2.12");
    h.remove_backend("web", b).expect("remove");
    h.edit(xlb::model::Edit::BackendAdd {
        service: "web".into(),
        address: b,
        weight: 1,
    })
    .expect("add again");
    let ps = h.ctl.service("web").expect("web");
    let pb = ps.backend(b).expect("listed");
    assert!(!pb.usable(), "a never-checked backend keeps no pins");
    assert_eq!(ps.table_share(pb.id), 0.0, "and takes no new client");
    let c = lab_client_on(&h, b);
    assert!(
        c.is_none(),
        "a client hashes to the unchecked backend: {c:?}"
    );
}

/// Some client whose Maglev slot holds `backend` (none when it holds no slot).
fn lab_client_on(h: &XlbHarness, backend: IpAddr) -> Option<IpAddr> {
    clients4("198.51.100")
        .find(|c| h.explain("web", *c, 0).expect("explain").slot_backend == Some(backend))
}
