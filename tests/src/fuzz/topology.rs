//! The fuzzer's configuration: which services exist (a table of plain data) and the ONE
//! function, [`setup`], that loads the real XDP object and programs it through the
//! controller's API. Everything else in the fuzzer reads the resulting [`Topology`] and
//! the program's maps by id, so a change of the controller's API is a change here only.
//!
//! Owns the private network namespace's interfaces; must not touch anything outside it.

use std::{net::IpAddr, time::Duration};

use lb_common::{
    PROTO_TCP, PROTO_UDP, Stat,
    tunnel::{EGRESS_F_V4, EGRESS_F_V6, Egress},
};
use xlb::{
    dataplane::loader::LoadOptions,
    model::{self, Affinity, Forwarding, HealthCheck, HealthKind, Link, NoBackend, Protocol},
};

use super::oracle::{Backend, Service, Topology, Tunnel};
use crate::{enter_private_netns, fixtures as fx, harness::XlbHarness, ifindex, sh};

/// Entries of the affinity table (about 100 MB of kernel memory); the checker predicts
/// hit/miss exactly while the run has seen at most a quarter of this many keys (no
/// eviction can have happened): 10 million frames make about 100,000.
pub const AFFINITY_CAPACITY: u32 = 1 << 20;
const LO: u32 = 1;

/// Which interface a service's backends sit behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// The ingress the fuzzer mostly uses: XDP_TX.
    Lo,
    /// A veth in the redirect map: XDP_REDIRECT (XDP_TX when the frame came in on it).
    Redirect,
    /// A veth missing from the redirect map: drop_no_tx_port (XDP_TX when it came in on it).
    NoTxPort,
}

/// A service of the run, as plain data.
struct Def {
    name: &'static str,
    vip: IpAddr,
    port: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    proto: u8,
    /// 0: the whole address (the default).
    prefix: u8,
    per_flow: bool,
    /// `nat_sources`.
    nat: &'static [&'static str],
    /// `None`: backends healthy. Otherwise every backend is unhealthy and this is the
    /// counter the service's `no_backend` setting moves (drop or pass).
    unhealthy: Option<Stat>,
    backends: &'static [(&'static str, Via)],
    /// `forwarding = "tunnel"`.
    tunnel: bool,
}

/// The egress MTU of tunnel backends' interfaces.
const TUNNEL_MTU: u32 = 1500;

/// The address of an interface of the namespace (the default outer source): per
/// interface and family.
fn egress_addr(via: Via, v6_outer: bool) -> IpAddr {
    let n = match via {
        Via::Lo => 1,
        Via::Redirect => 2,
        Via::NoTxPort => 3,
    };
    if v6_outer {
        v6(&format!("fd00:{n}::1"))
    } else {
        IpAddr::from([10, 0, n, 1])
    }
}

const fn def(name: &'static str, vip: IpAddr, port: u16, proto: u8) -> Def {
    Def {
        name,
        vip,
        port,
        proto,
        prefix: 0,
        per_flow: false,
        nat: &[],
        unhealthy: None,
        backends: &[],
        tunnel: false,
    }
}

fn v6(s: &str) -> IpAddr {
    s.parse().expect("IPv6 literal")
}

/// IPv4 and IPv6, TCP and UDP, an exact port beside port 0 on one VIP, port 0, a /24
/// (with nat_sources) and a /64 prefix, affinity none, no healthy backend (drop; pass), a backend reached by
/// redirect, one behind an interface missing from the redirect map, and one service whose
/// backends sit behind all three interfaces; tunnel mode (IPIP, IP6IP6, 4in6). VIPs are the
/// packet tier's, so every fixture frame reaches the service it was written for.
fn services() -> Vec<Def> {
    const TCP: u8 = PROTO_TCP;
    const UDP: u8 = PROTO_UDP;
    use Via::{Lo, NoTxPort, Redirect};
    let with = |d: Def, backends: &'static [(&'static str, Via)]| Def { backends, ..d };
    vec![
        with(
            def("web4", fx::VIP4, 80, TCP),
            &[("192.0.2.11", Lo), ("192.0.2.12", Lo), ("192.0.2.13", Lo)],
        ),
        with(
            def("dns4", fx::VIP4, 53, UDP),
            &[("192.0.2.21", Lo), ("192.0.2.22", Lo)],
        ),
        with(
            def("udp-any4", fx::VIP4, 0, UDP),
            &[("192.0.2.31", Lo), ("192.0.2.32", Lo)],
        ),
        with(
            def("web6", fx::VIP6, 80, TCP),
            &[
                ("2001:db8:1::11", Lo),
                ("2001:db8:1::12", Lo),
                ("2001:db8:1::13", Lo),
            ],
        ),
        with(
            def("dns6", fx::VIP6, 53, UDP),
            &[("2001:db8:1::21", Lo), ("2001:db8:1::22", Lo)],
        ),
        // Half of the fixtures' client /24 in nat_sources: listed clients (the
        // fixtures' own client among them), and clients the pre-filter sends to the
        // trie that are not listed.
        Def {
            prefix: 24,
            nat: &["198.51.100.0/25"],
            ..with(
                def("net24", fx::VIP_NET24, 80, TCP),
                &[("192.0.2.41", Lo), ("192.0.2.42", Lo), ("192.0.2.43", Lo)],
            )
        },
        Def {
            prefix: 64,
            ..with(
                def("net64", v6("2001:db8::20"), 80, TCP),
                &[("2001:db8:1::41", Lo), ("2001:db8:1::42", Lo)],
            )
        },
        Def {
            per_flow: true,
            ..with(
                def("flows", fx::VIP_FLOWS, 80, TCP),
                &[("192.0.2.51", Lo), ("192.0.2.52", Lo), ("192.0.2.53", Lo)],
            )
        },
        Def {
            per_flow: true,
            ..with(
                def("flows6", v6("2001:db8::30"), 53, UDP),
                &[("2001:db8:1::51", Lo), ("2001:db8:1::52", Lo)],
            )
        },
        Def {
            unhealthy: Some(Stat::DropNoBackend),
            ..with(
                def("down", fx::VIP_40, 80, TCP),
                &[("192.0.2.61", Lo), ("192.0.2.62", Lo)],
            )
        },
        Def {
            unhealthy: Some(Stat::PassNoBackend),
            ..with(
                def("passing", fx::VIP_PASSING, 80, TCP),
                &[("192.0.2.71", Lo)],
            )
        },
        Def {
            unhealthy: Some(Stat::PassNoBackend),
            ..with(
                def("passing6", v6("2001:db8::50"), 0, UDP),
                &[("2001:db8:1::71", Lo)],
            )
        },
        with(
            def("remote", fx::VIP_REMOTE, 80, TCP),
            &[("192.0.2.81", Redirect)],
        ),
        with(
            def("noport", fx::VIP_NOPORT, 80, TCP),
            &[("192.0.2.91", NoTxPort)],
        ),
        with(
            def("anyport", fx::VIP_ANYPORT, 0, TCP),
            &[
                ("192.0.2.101", Lo),
                ("192.0.2.102", Lo),
                ("192.0.2.103", Lo),
            ],
        ),
        // Tunnel mode: IPIP (TCP and UDP, lo and redirect), IP6IP6, 4in6 on the packet
        // tier's tunnel VIPs.
        Def {
            tunnel: true,
            ..with(
                def("ipip", fx::VIP_IPIP, 80, TCP),
                &[("192.0.2.111", Lo), ("192.0.2.112", Redirect)],
            )
        },
        Def {
            tunnel: true,
            ..with(
                def("ipipdns", fx::VIP_IPIP, 53, UDP),
                &[("192.0.2.113", Lo)],
            )
        },
        Def {
            tunnel: true,
            ..with(
                def("ip6ip6", fx::VIP6_TUN, 80, TCP),
                &[("2001:db8:1::111", Lo), ("2001:db8:1::112", Lo)],
            )
        },
        Def {
            tunnel: true,
            ..with(
                def("tun4in6", fx::VIP_4IN6, 80, TCP),
                &[("2001:db8:2::114", Lo), ("2001:db8:2::115", Redirect)],
            )
        },
        // Its interface has no XLB_EGRESS entry: drop_no_egress.
        Def {
            tunnel: true,
            ..with(
                def("tunnoegress", fx::VIP_TUN_NOEGRESS, 80, TCP),
                &[("192.0.2.116", NoTxPort)],
            )
        },
        with(
            def("split6", v6("2001:db8::80"), 443, TCP),
            &[
                ("2001:db8:1::81", Lo),
                ("2001:db8:1::82", Redirect),
                ("2001:db8:1::83", NoTxPort),
            ],
        ),
    ]
}

/// A backend's MAC: derived from its address, so the checker knows who got a frame.
fn mac_of(addr: IpAddr) -> [u8; 6] {
    let o = match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let n = o.len();
    [0x02, 0xbe, o[n - 4], o[n - 3], o[n - 2], o[n - 1]]
}

/// The egress interface's own MAC, per interface, so a wrong source MAC shows.
fn src_mac_of(via: Via) -> [u8; 6] {
    let last = match via {
        Via::Lo => 0x01,
        Via::Redirect => 0x0a,
        Via::NoTxPort => 0x0b,
    };
    [0x02, 0x1b, 0, 0, 0, last]
}

/// Enters a private network namespace on the calling thread, makes the two veths, loads
/// the program and configures every service of [`services`]. The only place that uses the
/// controller's API.
pub fn setup() -> (XlbHarness, Topology) {
    enter_private_netns();
    sh("ip link add xlbf0 type veth peer name xlbf1");
    sh("ip link add xlbf2 type veth peer name xlbf3");
    let (redirect, no_tx_port) = (ifindex("xlbf0"), ifindex("xlbf2"));
    let mut h = XlbHarness::load(&LoadOptions {
        affinity_capacity: AFFINITY_CAPACITY,
        maglev_slots: 1 << 16,
    });
    h.dp_mut().add_tx_port(redirect).expect("tx port");
    // The egress interfaces as the daemon reads them (tunnel backends need them).
    for (via, i) in [
        (Via::Lo, LO),
        (Via::Redirect, redirect),
        (Via::NoTxPort, no_tx_port),
    ] {
        h.observe_egress(i, Some(egress(via)));
    }
    let mut top = Topology {
        services: Vec::new(),
        backends: Vec::new(),
        tx_ports: vec![redirect],
        ingresses: vec![(LO, "lo"), (redirect, "xlbf0"), (no_tx_port, "xlbf2")],
        // The data plane's default, as the config's.
        echo_reply: true,
    };
    for d in services() {
        let mut spec = model::Service::new(d.name, d.vip, d.port, protocol(d.proto));
        spec.table_size = 1021;
        // Health is observed by the harness (no probes here).
        spec.health = HealthCheck::new(HealthKind::None);
        spec.idle_timeout = Duration::from_secs(3600);
        match d.vip {
            IpAddr::V4(_) => spec.prefix_v4 = prefix(&d),
            IpAddr::V6(_) => spec.prefix_v6 = prefix(&d),
        }
        if d.per_flow {
            spec.affinity = Affinity::None;
        }
        if d.tunnel {
            spec.forwarding = Forwarding::Tunnel;
        }
        spec.nat_sources = d.nat.iter().map(|p| p.parse().expect("prefix")).collect();
        if d.unhealthy == Some(Stat::PassNoBackend) {
            spec.no_backend = NoBackend::Pass;
        }
        let backends: Vec<(IpAddr, Option<Link>)> = d
            .backends
            .iter()
            .map(|(a, via)| {
                let address: IpAddr = a.parse().expect("backend address");
                let link = Link {
                    mac: mac_of(address),
                    src_mac: src_mac_of(*via),
                    ifindex: top.ifindex_of(*via),
                };
                (address, Some(link))
            })
            .collect();
        h.add_service(spec, &backends)
            .unwrap_or_else(|e| panic!("service {}: {e}", d.name));
        for (b, _) in backends.iter().filter(|_| d.unhealthy.is_some()) {
            h.set_healthy(d.name, *b, false).expect("unhealthy");
        }
        let state = h.ctl.service(d.name).expect("service just added");
        let ids = backends
            .iter()
            .map(|(b, _)| state.backend(*b).expect("backend").id);
        top.add(&d, state.id, ids.collect());
    }
    // The interface missing from the redirect map lost its egress entry before the
    // daemon noticed (its tunnel backend was usable when programmed): drop_no_egress.
    h.set_egress(top.ifindex_of(Via::NoTxPort), None);
    (h, top)
}

/// The daemon's reading of an interface tunnel backends sit behind: [`TUNNEL_MTU`] and both
/// families' addresses ([`egress_addr`]).
fn egress(via: Via) -> Egress {
    let word = |a: IpAddr| match a {
        IpAddr::V4(v) => [u32::from_ne_bytes(v.octets()), 0, 0, 0],
        IpAddr::V6(v) => lb_common::addr_from_bytes(&v.octets()),
    };
    Egress {
        mtu: TUNNEL_MTU,
        flags: EGRESS_F_V4 | EGRESS_F_V6,
        v4: word(egress_addr(via, false))[0],
        v6: word(egress_addr(via, true)),
    }
}

fn protocol(proto: u8) -> Protocol {
    match proto {
        PROTO_TCP => Protocol::Tcp,
        _ => Protocol::Udp,
    }
}

impl Topology {
    /// Records a configured service and its backends (ids in `d.backends` order).
    fn add(&mut self, d: &Def, id: u32, backend_ids: Vec<u32>) {
        let service = self.services.len();
        for ((a, via), id) in d.backends.iter().zip(backend_ids) {
            let address: IpAddr = a.parse().expect("backend address");
            self.backends.push(Backend {
                address,
                service,
                id,
                mac: mac_of(address),
                src_mac: src_mac_of(*via),
                ifindex: self.ifindex_of(*via),
                outer: address,
                outer_src: egress_addr(*via, address.is_ipv6()),
            });
        }
        self.services.push(Service {
            name: d.name,
            id,
            vip: d.vip,
            port: d.port,
            proto: d.proto,
            prefix: prefix(d),
            per_flow: d.per_flow,
            nat: d.nat.iter().map(|p| p.parse().expect("prefix")).collect(),
            no_backend: d.unhealthy,
            tunnel: d.tunnel.then(|| Tunnel {
                mtu: TUNNEL_MTU,
                v6_outer: d.backends.iter().any(|(a, _)| a.contains(':')),
                no_egress: d.backends.iter().all(|(_, via)| *via == Via::NoTxPort),
            }),
        });
    }

    fn ifindex_of(&self, via: Via) -> u32 {
        // ingresses: lo, the redirect veth, the veth without tx port (see `setup`).
        match via {
            Via::Lo => self.ingresses[0].0,
            Via::Redirect => self.ingresses[1].0,
            Via::NoTxPort => self.ingresses[2].0,
        }
    }
}

/// The prefix that applies to the service's clients (the default: the whole address).
fn prefix(d: &Def) -> u8 {
    match (d.prefix, d.vip) {
        (0, IpAddr::V4(_)) => 32,
        (0, IpAddr::V6(_)) => 128,
        (p, _) => p,
    }
}
