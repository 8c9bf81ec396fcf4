//! Tunnel forwarding (issue 13) with the real daemon: backends two L3 hops away behind a
//! router, in a subnet of their own (`Lab::tunneled`), running `xlb decap`. Tunnel mode
//! serves TCP and UDP over IPIP, IP6IP6 and 4in6 with affinity (and `explain` agrees);
//! health checks travel through the tunnel (a backend whose decapsulation is detached
//! goes down, and up again when it is re-attached) and failover works as in DSR;
//! datagrams fragmented by the client reach one backend per client; a packet that no
//! longer fits after encapsulation is answered with "fragmentation needed" / "packet too
//! big" so a client's 1 MB upload completes; `tunnel_source` spreads the outer sources
//! within its prefix, exactly as `outer_source` predicts.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_common::tunnel::{TunnelSource, client_hash, outer_source};
use xlb_tests::{
    lab::{
        HTTP_PORT, LB4, LB6, Lab, LabOptions, UDP_PORT, VIP4, VIP6, http_upload, udp_request_sized,
    },
    lab_tunnel::{GW4, GW6, PATH_MTU, TUNNEL_SOURCE4, TUNNEL_SOURCE6, VIP46},
};

/// A tunnel service of the lab: name, VIP, UDP or not, backend family.
struct Svc {
    name: &'static str,
    vip: IpAddr,
    udp: bool,
    fam: u8,
}

/// Every service of `Lab::tunnel_services`.
fn services() -> [Svc; 6] {
    let s = |name, vip: IpAddr, udp, fam| Svc {
        name,
        vip,
        udp,
        fam,
    };
    [
        s("web4", VIP4.into(), false, 4),
        s("dns4", VIP4.into(), true, 4),
        s("web6", VIP6.into(), false, 6),
        s("dns6", VIP6.into(), true, 6),
        s("web46", VIP46.into(), false, 6),
        s("dns46", VIP46.into(), true, 6),
    ]
}

/// A running tunnel lab: 3 backends behind the router, every backend's `xlb decap`
/// accepting the balancer's addresses, servers and daemon started.
fn tunnel_lab(clients: usize, lb_mtu: u32) -> Lab {
    tunnel_lab_with(clients, lb_mtu, "/")
}

/// [`tunnel_lab`] whose HTTP checks ask for `path` (`/bytes/N`: a body of N bytes).
fn tunnel_lab_with(clients: usize, lb_mtu: u32, path: &str) -> Lab {
    let mut lab = Lab::tunneled(
        LabOptions {
            backends: 3,
            clients_v4: clients,
            clients_v6: clients,
        },
        lb_mtu,
    );
    let config = lab.tunnel_services("");
    lab.write_config(&config.replace("path = \"/\"", &format!("path = \"{path}\"")));
    lab.decap_attach_all();
    lab.start_servers();
    lab.start_daemon();
    wait_all_healthy(&lab);
    lab
}

/// The clients of a service's VIP family.
fn clients_of(lab: &Lab, svc: &Svc) -> Vec<IpAddr> {
    if svc.vip.is_ipv4() {
        lab.clients4.clone()
    } else {
        lab.clients6.clone()
    }
}

/// The health of backend `name` in every service, from one `xlb status`.
fn healths_of(lab: &Lab, name: &str) -> Vec<String> {
    let st = lab.xlb_json(&["status"]);
    services()
        .iter()
        .map(|svc| {
            let addr = lab.backend_addr(name, svc.fam).to_string();
            st["services"]
                .as_array()
                .expect("services")
                .iter()
                .find(|x| x["name"] == svc.name)
                .and_then(|x| {
                    x["backends"]
                        .as_array()?
                        .iter()
                        .find(|b| b["address"] == addr)
                })
                .and_then(|b| b["health"].as_str())
                .unwrap_or_else(|| panic!("{}: backend {addr} not listed: {st}", svc.name))
                .to_string()
        })
        .collect()
}

/// Waits until backend `name` has `health` in every service.
fn wait_health(lab: &Lab, name: &str, health: &str, limit: Duration) {
    let start = Instant::now();
    while !healths_of(lab, name).iter().all(|h| h == health) {
        if start.elapsed() > limit {
            panic!(
                "{name} not {health} in every service within {limit:?}: {:?}\n{}\n{}",
                healths_of(lab, name),
                lab.xlb(&["status"]),
                lab.daemon_log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every backend is healthy in every service (the first checks passed).
fn wait_all_healthy(lab: &Lab) {
    for b in &lab.backends {
        wait_health(lab, &b.name, "healthy", Duration::from_secs(3));
    }
}

/// The counter `name` of the balancer's packet verdicts (`xlb stats`).
fn verdict(lab: &Lab, name: &str) -> u64 {
    let v = lab.xlb_json(&["stats"]);
    v["packets"]
        .as_array()
        .expect("packets")
        .iter()
        .find(|p| p[0] == name)
        .and_then(|p| p[1].as_u64())
        .unwrap_or_else(|| panic!("no verdict {name} in {v}"))
}

/// The nftables table that counts, in the balancer's namespace, the packets the balancer
/// itself sends to a VIP without a probe mark (output hook, before routing into `lo`).
const LEAK_TABLE: &str = "xlb_test_probe_leak";

/// Starts counting the balancer's own unmarked packets to the VIPs: each one would
/// leave by the normal route, come back through the router and be balanced as a client.
/// Gives the balancer what the trial's had: a default route via the backends' router,
/// which routes the VIPs back to the balancer (else such packets have no route and are
/// dropped before they could be counted).
fn count_unmarked_to_vips(lab: &Lab) {
    lab.lb.ip(&format!("route add default via {GW4} dev eth0"));
    lab.lb
        .ip(&format!("-6 route add default via {GW6} dev eth0"));
    let rt = lab.router.as_ref().expect("the tunnel lab's router");
    rt.ip(&format!("route add {VIP4}/32 via {LB4} dev eth0"));
    rt.ip(&format!("route add {VIP46}/32 via {LB4} dev eth0"));
    rt.ip(&format!("-6 route add {VIP6}/128 via {LB6} dev eth0"));
    let v4 = format!("{{ {VIP4}, {VIP46} }}");
    let rules = format!(
        "table inet {LEAK_TABLE} {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n  \
         meta mark 0 ip daddr {v4} tcp flags & rst == rst counter comment \"rst4\"\n  \
         meta mark 0 ip daddr {v4} counter comment \"all4\"\n  \
         meta mark 0 ip6 daddr {VIP6} tcp flags & rst == rst counter comment \"rst6\"\n  \
         meta mark 0 ip6 daddr {VIP6} counter comment \"all6\"\n }}\n}}\n"
    );
    let path = lab.dir.join("leak.nft");
    std::fs::write(&path, rules).expect("write the nft rules");
    xlb_tests::lab::run(lab.lb.cmd("nft").arg("-f").arg(&path));
}

/// The unmarked packets counted since [`count_unmarked_to_vips`], and the table's text.
fn unmarked_to_vips(lab: &Lab) -> (u64, String) {
    let text = xlb_tests::lab::run(
        lab.lb
            .cmd("nft")
            .args(["list", "table", "inet", LEAK_TABLE]),
    );
    let total = text
        .lines()
        .filter(|l| l.contains("\"all4\"") || l.contains("\"all6\""))
        .filter_map(|l| {
            let rest = &l[l.find("packets ")? + "packets ".len()..];
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum();
    (total, text)
}

/// The balancer's own addresses pinned as clients of a service (they arrive when its
/// unmarked probe packets come back through the router).
fn balancer_pinned(lab: &Lab) -> Vec<IpAddr> {
    let own = |ip: IpAddr| match ip {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            lb_common::addr_from_bytes(&b)
        }
        IpAddr::V6(a) => lb_common::addr_from_bytes(&a.octets()),
    };
    let mine = [IpAddr::from(LB4), IpAddr::from(LB6)];
    lab.pinned_affinity()
        .iter()
        .filter_map(|(k, _)| mine.iter().find(|ip| own(**ip) == k.addr).copied())
        .collect()
}

#[test]
fn tunnel_serves_tcp_and_udp_over_ipip_ip6ip6_and_4in6_with_affinity() {
    // HTTP checks whose answer spans several segments, as real servers send: a probe that
    // has its verdict after the head leaves the rest in flight.
    let lab = tunnel_lab_with(30, PATH_MTU, "/bytes/16384");
    count_unmarked_to_vips(&lab);
    let probing = Instant::now();
    for svc in services() {
        let clients = clients_of(&lab, &svc);
        let first = lab.answers(&clients, svc.vip, svc.udp);
        for _ in 0..2 {
            assert_eq!(
                lab.answers(&clients, svc.vip, svc.udp),
                first,
                "{}: a client reached another backend on a later request",
                svc.name
            );
        }
        let used: BTreeSet<&String> = first.values().collect();
        assert!(
            used.len() > 1,
            "{}: one backend took every client",
            svc.name
        );
        for (c, b) in &first {
            let e = lab.xlb_json(&["explain", svc.name, &c.to_string()]);
            assert_eq!(e["decision"], "pinned", "{}: {c}: {e}", svc.name);
            assert_eq!(
                e["backend"],
                lab.backend_addr(b, svc.fam).to_string(),
                "{}: explain disagrees with where {c} went ({b}): {e}",
                svc.name
            );
        }
    }
    // Each kind of tunnel arrived at the backends, every one from an allowed source.
    let mut decapped: BTreeMap<&str, u64> = BTreeMap::new();
    for i in 0..lab.backends.len() {
        let st = lab.decap_stats(i);
        for key in ["decap_ipip", "decap_ip6ip6", "decap_4in6"] {
            *decapped.entry(key).or_default() += st[key].as_u64().unwrap_or(0);
        }
        assert_eq!(st["pass_source_not_allowed"], 0, "be{i}: {st}");
    }
    assert!(decapped.values().all(|n| *n > 0), "{decapped:?}");
    // Every health probe (5 per second per backend and service) left encapsulated: none of
    // its packets (kernel RSTs of closed probe sockets included) went to a VIP unmarked,
    // so the balancer never became a client of its own services.
    std::thread::sleep(Duration::from_secs(4).saturating_sub(probing.elapsed()));
    let (leaked, table) = unmarked_to_vips(&lab);
    assert_eq!(
        leaked, 0,
        "unmarked packets to a VIP left the balancer:\n{table}"
    );
    assert_eq!(
        balancer_pinned(&lab),
        Vec::<IpAddr>::new(),
        "the balancer is a client"
    );
}

/// Where the first two thirds of `svc`'s clients go (the last third stays fresh for
/// [`assert_takes_new_clients`]).
fn before(lab: &Lab, svc: &Svc) -> BTreeMap<IpAddr, String> {
    let clients = clients_of(lab, svc);
    lab.answers(&clients[..clients.len() * 2 / 3], svc.vip, svc.udp)
}

/// Every client of `before` answered again: the victim's clients elsewhere, every other
/// client where it was.
fn assert_moved_only_victims(
    lab: &Lab,
    svc: &Svc,
    before: &BTreeMap<IpAddr, String>,
    victim: &str,
) {
    let clients: Vec<IpAddr> = before.keys().copied().collect();
    let after = lab.answers(&clients, svc.vip, svc.udp);
    for (c, was) in before {
        let now = &after[c];
        if was == victim {
            assert_ne!(now, victim, "{}: {c} still reaches {victim}", svc.name);
        } else {
            assert_eq!(now, was, "{}: {c} moved from a healthy backend", svc.name);
        }
    }
    assert!(
        before.values().any(|b| b == victim),
        "{}: no client was on {victim}",
        svc.name
    );
}

/// Fresh clients (never seen) reach `name` again: it is back in the Maglev table.
fn assert_takes_new_clients(lab: &Lab, svc: &Svc, name: &str) {
    let clients = clients_of(lab, svc);
    let fresh = &clients[clients.len() * 2 / 3..];
    let got = lab.answers(fresh, svc.vip, svc.udp);
    assert!(
        got.values().any(|b| b == name),
        "{}: no fresh client reached {name}: {got:?}",
        svc.name
    );
}

#[test]
fn health_checks_travel_through_the_tunnel_detached_decap_marks_a_backend_down() {
    let lab = tunnel_lab(60, PATH_MTU);
    let victim = "be1";
    let i = lab.backend_index(victim);
    let svcs = services();
    let before: Vec<BTreeMap<IpAddr, String>> = svcs.iter().map(|s| before(&lab, s)).collect();
    // The server keeps listening on the VIPs: only the decapsulation goes.
    lab.decap(i, &["detach", "eth0"]);
    wait_health(&lab, victim, "unhealthy", Duration::from_secs(3));
    for (svc, b) in svcs.iter().zip(&before) {
        assert_moved_only_victims(&lab, svc, b, victim);
    }
    lab.decap_attach(i, &[&format!("{LB4}/32"), &format!("{LB6}/128")]);
    wait_health(&lab, victim, "healthy", Duration::from_secs(3));
    for svc in &svcs {
        assert_takes_new_clients(&lab, svc, victim);
    }
}

#[test]
fn tunnel_failover_when_a_backends_server_stops() {
    let mut lab = tunnel_lab(60, PATH_MTU);
    let victim = "be2";
    let svcs = services();
    let before: Vec<BTreeMap<IpAddr, String>> = svcs.iter().map(|s| before(&lab, s)).collect();
    lab.stop_server(lab.backend_index(victim));
    wait_health(&lab, victim, "unhealthy", Duration::from_secs(3));
    for (svc, b) in svcs.iter().zip(&before) {
        assert_moved_only_victims(&lab, svc, b, victim);
    }
    lab.start_server(lab.backend_index(victim));
    wait_health(&lab, victim, "healthy", Duration::from_secs(3));
    for svc in &svcs {
        assert_takes_new_clients(&lab, svc, victim);
    }
}

/// A datagram the client must cut into three fragments.
const DATAGRAM: usize = 4000;

#[test]
fn fragmented_udp_reaches_one_backend_per_client_in_tunnel_mode() {
    let lab = tunnel_lab(16, PATH_MTU);
    let mut seen = BTreeSet::new();
    for svc in services().into_iter().filter(|s| s.udp) {
        let dst = SocketAddr::new(svc.vip, UDP_PORT);
        let clients = clients_of(&lab, &svc);
        let answers: Vec<(IpAddr, Vec<String>)> = lab.client.run(|| {
            clients
                .iter()
                .map(|c| {
                    let got = (0..3)
                        .map(|_| {
                            udp_request_sized(*c, dst, DATAGRAM, Duration::from_millis(1500))
                                .unwrap_or_else(|e| {
                                    panic!("{}: {DATAGRAM}-byte datagram: {e}", svc.name)
                                })
                        })
                        .collect();
                    (*c, got)
                })
                .collect()
        });
        for (c, got) in &answers {
            assert!(
                got.iter().all(|b| *b == got[0]),
                "{}: {c}'s fragmented datagrams reached several backends: {got:?}",
                svc.name
            );
            let small = lab.udp(*c, svc.vip).expect("a small datagram");
            assert_eq!(
                small, got[0],
                "{}: {c}: fragmented and whole disagree",
                svc.name
            );
            seen.insert(got[0].clone());
        }
    }
    assert!(seen.len() > 1, "every client reached one backend: {seen:?}");
    assert_eq!(verdict(&lab, "drop_fragment"), 0, "fragments were dropped");
    assert_eq!(verdict(&lab, "drop_too_big"), 0, "fragments did not fit");
}

/// An upload far larger than one segment: it stalls on the first full-size segment unless
/// the client learns the smaller MTU.
const UPLOAD: usize = 1 << 20;

#[test]
fn mtu_exceeded_answers_too_big_and_a_1mb_upload_completes() {
    // The balancer's link has MTU 1500: a full-size client packet has no room for the
    // outer header. The HTTP checks fetch 16 KiB: their answers, sized by the MSS the
    // probe offered, must fit the balancer's link too (a probe offering lo's MSS was
    // answered with 1600-byte segments and failed its checks here).
    let lab = tunnel_lab_with(2, 1500, "/bytes/16384");
    for svc in services().into_iter().filter(|s| !s.udp) {
        let client = clients_of(&lab, &svc)[0];
        let name = lab
            .http(client, svc.vip)
            .unwrap_or_else(|e| panic!("{}: a small request from {client}: {e}", svc.name));
        let before = verdict(&lab, "icmp_too_big");
        let dst = SocketAddr::new(svc.vip, HTTP_PORT);
        let got = lab
            .client
            .run(|| http_upload(client, dst, UPLOAD, Duration::from_secs(10)))
            .unwrap_or_else(|e| {
                panic!(
                    "{}: 1 MB from {client} did not complete (no too-big answer reached the \
                     client?): {e}\n{}",
                    svc.name,
                    lab.daemon_log()
                )
            });
        assert_eq!(got, format!("{UPLOAD} {name}"), "{}: upload", svc.name);
        assert!(
            verdict(&lab, "icmp_too_big") > before,
            "{}: no too-big answer counted",
            svc.name
        );
    }
    assert_eq!(verdict(&lab, "drop_too_big"), 0, "DF packets dropped");
}

/// `prefix` as the data plane holds a `tunnel_source`, derived here from the contract
/// (lb_common::tunnel) rather than through the controller's own conversion, so that the
/// prediction does not share its faults.
fn tunnel_source(prefix: &str) -> TunnelSource {
    let (addr, len) = prefix.split_once('/').expect("prefix");
    let addr: IpAddr = addr.parse().expect("address");
    let len: u8 = len.parse().expect("length");
    let (base, family) = xlb::model::addr_words(addr);
    let width = if addr.is_ipv4() { 32 } else { 128 };
    let host: u128 = if len >= width {
        0
    } else {
        (1u128 << (width - len)) - 1
    };
    let host_addr: IpAddr = if addr.is_ipv4() {
        std::net::Ipv4Addr::from(host as u32).into()
    } else {
        std::net::Ipv6Addr::from(host).into()
    };
    TunnelSource {
        base,
        host_mask: xlb::model::addr_words(host_addr).0,
        family,
        prefix_len: len,
        _pad: [0; 2],
    }
}

/// The outer source the balancer uses for `client` under `prefix`.
fn predicted_source(prefix: &str, client: IpAddr) -> IpAddr {
    let ts = tunnel_source(prefix);
    let h = client_hash(&xlb::model::addr_words(client).0);
    xlb::model::addr_from_words(&outer_source(&ts, h), ts.family)
}

/// The lower or upper half of `prefix` as a prefix one bit longer.
fn half(prefix: &str, lower: bool) -> String {
    let (addr, len) = prefix.split_once('/').expect("prefix");
    let len: u32 = len.parse().expect("length");
    let a: IpAddr = addr.parse().expect("address");
    let a: IpAddr = match (a, lower) {
        (a, true) => a,
        (IpAddr::V4(a), false) => std::net::Ipv4Addr::from(u32::from(a) | 1 << (31 - len)).into(),
        (IpAddr::V6(a), false) => std::net::Ipv6Addr::from(u128::from(a) | 1 << (127 - len)).into(),
    };
    format!("{a}/{}", len + 1)
}

#[test]
fn tunnel_source_spreads_outer_sources_within_the_prefix() {
    let mut lab = Lab::tunneled(
        LabOptions {
            backends: 3,
            clients_v4: 24,
            clients_v6: 24,
        },
        PATH_MTU,
    );
    let prefix_of = |fam: u8| {
        if fam == 4 {
            TUNNEL_SOURCE4
        } else {
            TUNNEL_SOURCE6
        }
    };
    lab.write_config(&lab.tunnel_services_with("", &|fam| {
        format!("tunnel_source = \"{}\"\n", prefix_of(fam))
    }));
    // Only the prefixes are accepted, not the balancer's own address: every answer (and
    // every passed health check) came through an outer source within them.
    for i in 0..lab.backends.len() {
        lab.decap_attach(i, &[TUNNEL_SOURCE4, TUNNEL_SOURCE6]);
    }
    lab.start_servers();
    lab.start_daemon();
    wait_all_healthy(&lab);
    for svc in services() {
        let clients = clients_of(&lab, &svc);
        lab.answers(&clients, svc.vip, svc.udp);
    }
    // Now only the lower half of each prefix is accepted, and the health probes' own outer
    // sources (the balancer's address of the VIP's family hashed as a client, so the
    // backends stay up): a client is answered exactly when its predicted outer source is
    // accepted, and the clients' sources fall in both halves.
    let probe = |fam: u8, vip_fam: u8| {
        let src = if vip_fam == 4 {
            IpAddr::V4(LB4)
        } else {
            IpAddr::V6(LB6)
        };
        let width = if fam == 4 { 32 } else { 128 };
        format!("{}/{width}", predicted_source(prefix_of(fam), src))
    };
    let allowed = [
        half(TUNNEL_SOURCE4, true),
        half(TUNNEL_SOURCE6, true),
        probe(4, 4),
        probe(6, 6),
        probe(6, 4),
    ];
    for i in 0..lab.backends.len() {
        let from: Vec<&str> = allowed.iter().map(String::as_str).collect();
        lab.decap_attach(i, &from);
    }
    // The probes still pass (their outer sources are the predicted ones).
    std::thread::sleep(Duration::from_millis(800));
    for b in &lab.backends {
        let h = healths_of(&lab, &b.name);
        assert!(
            h.iter().all(|h| h == "healthy"),
            "{}: health probes were refused by decap accepting {allowed:?}: {h:?}",
            b.name
        );
    }
    let accepted = |a: IpAddr| allowed.iter().any(|p| contains(p, a));
    for svc in services().into_iter().filter(|s| s.udp) {
        let prefix = prefix_of(svc.fam);
        let clients = clients_of(&lab, &svc);
        let got = lab.round_timeout(&clients, svc.vip, true, Duration::from_millis(300));
        let mut halves = BTreeSet::new();
        for (c, r) in got {
            let src = predicted_source(prefix, c);
            assert!(contains(prefix, src), "{src} not in {prefix}");
            let e = lab.xlb_json(&["explain", svc.name, &c.to_string()]);
            assert_eq!(
                e["outer_source"],
                src.to_string(),
                "{}: explain's outer source for {c}: {e}",
                svc.name
            );
            halves.insert(contains(&half(prefix, true), src));
            assert_eq!(
                r.is_ok(),
                accepted(src),
                "{}: client {c}, predicted outer source {src}, accepted {allowed:?}: {r:?}",
                svc.name
            );
        }
        assert_eq!(
            halves.len(),
            2,
            "{}: every client hashed into one half",
            svc.name
        );
    }
    for (i, b) in lab.backends.iter().enumerate() {
        let st = lab.decap_stats(i);
        assert!(
            st["pass_source_not_allowed"].as_u64().unwrap_or(0) > 0,
            "{}: nothing from the upper halves arrived: {st}",
            b.name
        );
    }
}

/// Whether `prefix` holds `a`.
fn contains(prefix: &str, a: IpAddr) -> bool {
    let (p, len) = prefix.split_once('/').expect("prefix");
    let len: u32 = len.parse().expect("length");
    match (p.parse::<IpAddr>().expect("address"), a) {
        (IpAddr::V4(p), IpAddr::V4(a)) => {
            let m = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(p) & m == u32::from(a) & m
        }
        (IpAddr::V6(p), IpAddr::V6(a)) => {
            let m = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(p) & m == u128::from(a) & m
        }
        _ => false,
    }
}

/// The lab and `xlb decap` across a router, without the balancer's data plane: an IPIP,
/// an IP6IP6 and a 4in6 packet sent by the kernel of the balancer's host (raw sockets:
/// the kernel adds the outer header) cross the router, are stripped on the backend, and
/// the server's answer reaches the client directly through the router.
#[test]
fn tunnel_lab_carries_tunnels_from_the_balancer_host_to_routed_backends() {
    let mut lab = Lab::tunneled(
        LabOptions {
            backends: 1,
            clients_v4: 1,
            clients_v6: 1,
        },
        PATH_MTU,
    );
    lab.decap_attach_all();
    lab.start_servers();
    let be = &lab.backends[0];
    let (c4, c6) = (lab.clients4[0], lab.clients6[0]);
    for (what, to, proto, client, vip) in [
        ("IPIP", IpAddr::V4(be.addr4), 4, c4, IpAddr::V4(VIP4)),
        ("IP6IP6", IpAddr::V6(be.addr6), 41, c6, IpAddr::V6(VIP6)),
        ("4in6", IpAddr::V6(be.addr6), 4, c4, IpAddr::V4(VIP46)),
    ] {
        let got = lab.tunneled_datagram(
            &lab.lb,
            (client, vip),
            (to, proto),
            Duration::from_millis(1500),
        );
        let got = got.unwrap_or_else(|| panic!("{what}: no answer through the router"));
        assert_eq!(got, be.name, "{what}");
    }
}
