//! Real networks (issue 13) with the real daemon: clients behind a router whose link to
//! them has MTU 1400 (`Lab::with_router`), backends answering them through it in DSR.
//! Path-MTU discovery works through the balancer (the router's "fragmentation needed" /
//! "packet too big", addressed to the VIP, reach the backend that sent the reply), and
//! datagrams larger than the path, fragmented by the client, reach one backend per client
//! (with a second UDP service on each VIP, so the later fragments follow their first
//! one's tracking).
//! And `xlb decap` on a backend: tunnel packets from the allowed sources reach its
//! server as the inner packets, those from anyone else do not.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use xlb_tests::lab::{
    HTTP_PORT, LB4, LB6, Lab, LabOptions, UDP_PORT, VIP4, VIP6, http_request, run, service_block,
    udp_request_sized, xlb_bin,
};

const MTU: u32 = 1400;
/// A download far larger than one segment: it stalls on the first full-size reply unless
/// the backend learns the path MTU.
const DOWNLOAD: usize = 1 << 20;
/// A datagram the client must cut into three fragments.
const DATAGRAM: usize = 4000;

fn routed_lab(clients: usize, extra_services: &str) -> Lab {
    let mut lab = Lab::with_router(
        LabOptions {
            backends: 3,
            clients_v4: clients,
            clients_v6: clients,
        },
        MTU,
    );
    lab.write_config(&format!("{}{extra_services}", lab.default_services()));
    lab.start_servers();
    lab.start_daemon();
    lab
}

/// A second UDP service on each VIP (port 54, not served, health none): later fragments
/// to port 53 can no longer go to the VIP's only UDP service and need the tracking of
/// their first fragment.
fn second_udp_services(lab_backends: &[IpAddr]) -> String {
    [("dns4b", IpAddr::V4(VIP4)), ("dns6b", IpAddr::V6(VIP6))]
        .iter()
        .map(|(name, vip)| {
            let backends: Vec<(IpAddr, u32)> = lab_backends
                .iter()
                .filter(|a| a.is_ipv4() == vip.is_ipv4())
                .map(|a| (*a, 1))
                .collect();
            service_block(
                name,
                &vip.to_string(),
                54,
                "udp",
                "health = { kind = \"none\" }",
                &backends,
            )
        })
        .collect()
}

/// The service counter `name` of every service, by service name.
fn service_counter(lab: &Lab, name: &str) -> BTreeMap<String, u64> {
    let v = lab.xlb_json(&["stats"]);
    v["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().expect("name").to_string(),
                s[name].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn path_mtu_discovery_works_through_the_balancer_in_dsr() {
    let lab = routed_lab(2, "");
    for (client, vip) in [
        (lab.clients4[0], IpAddr::V4(VIP4)),
        (lab.clients6[0], IpAddr::V6(VIP6)),
    ] {
        let name = lab
            .http(client, vip)
            .unwrap_or_else(|e| panic!("a small request from {client}: {e}"));
        let path = format!("/bytes/{DOWNLOAD}");
        let dst = SocketAddr::new(vip, HTTP_PORT);
        let body = lab
            .client
            .run(|| http_request(client, dst, &path, Duration::from_secs(10)))
            .unwrap_or_else(|e| {
                panic!(
                    "1 MB from {vip} to {client} through a {MTU}-byte link did not complete \
                     (a PMTU black hole: the router's ICMP error did not reach {name}): {e}\n{}",
                    lab.daemon_log()
                )
            });
        assert_eq!(body.len(), DOWNLOAD + name.len(), "download from {vip}");
        assert!(
            body.ends_with(&name),
            "the download came from another backend"
        );
    }
    let errors = service_counter(&lab, "icmp_errors");
    for svc in ["web4", "web6"] {
        assert!(
            errors.get(svc).copied().unwrap_or(0) > 0,
            "{svc}: no ICMP error counted as sent on: {errors:?}"
        );
    }
}

#[test]
fn fragmented_udp_reaches_one_backend_per_client_in_dsr() {
    // The backends' addresses are the lab's fixed ones (10.100.0.11.., fd00:100::11..).
    let backends: Vec<IpAddr> = (0..3u8)
        .flat_map(|i| {
            [
                IpAddr::V4(std::net::Ipv4Addr::new(10, 100, 0, 11 + i)),
                IpAddr::V6(std::net::Ipv6Addr::new(
                    0xfd00,
                    0x100,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0x11 + u16::from(i),
                )),
            ]
        })
        .collect();
    let extra = second_udp_services(&backends);
    let lab = routed_lab(24, &extra);
    let mut seen = BTreeSet::new();
    for (clients, vip) in [
        (&lab.clients4, IpAddr::V4(VIP4)),
        (&lab.clients6, IpAddr::V6(VIP6)),
    ] {
        let dst = SocketAddr::new(vip, UDP_PORT);
        let answers: Vec<(IpAddr, Vec<String>)> = lab.client.run(|| {
            clients
                .iter()
                .map(|c| {
                    let got = (0..3)
                        .map(|_| {
                            udp_request_sized(*c, dst, DATAGRAM, Duration::from_millis(1500))
                                .unwrap_or_else(|e| panic!("{DATAGRAM}-byte datagram: {e}"))
                        })
                        .collect();
                    (*c, got)
                })
                .collect()
        });
        for (c, got) in &answers {
            assert!(
                got.iter().all(|b| *b == got[0]),
                "{c}'s fragmented datagrams reached several backends: {got:?}"
            );
            let small = lab.udp(*c, vip).expect("a small datagram");
            assert_eq!(
                small, got[0],
                "{c}: fragmented and whole datagrams disagree"
            );
            seen.insert(got[0].clone());
        }
    }
    assert!(
        seen.len() > 1,
        "every client reached one backend ({seen:?}): not balanced"
    );
    let v = lab.xlb_json(&["stats"]);
    let drops = v["packets"]
        .as_array()
        .expect("packets")
        .iter()
        .find(|p| p[0] == "drop_fragment")
        .and_then(|p| p[1].as_u64())
        .expect("drop_fragment counted");
    assert_eq!(drops, 0, "fragments were dropped: {v}");
}

/// The decapsulation state of a test, removed from bpffs however the test ends.
struct DecapRoot(String);

impl Drop for DecapRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn decap_on_a_backend_delivers_tunnels_from_the_balancers_only() {
    let mut lab = Lab::new(LabOptions {
        backends: 1,
        clients_v4: 1,
        clients_v6: 1,
    });
    lab.start_servers();
    let root = DecapRoot(format!("/sys/fs/bpf/xlb-decap-{}", lab.id));
    let be = &lab.backends[0];
    let xlb = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--pin-dir", &root.0]);
        run(be.ns.cmd(xlb_bin()).arg("decap").args(&all))
    };
    xlb(&[
        "attach",
        "eth0",
        "--from",
        &format!("{LB4}/32"),
        "--from",
        &format!("{LB6}/128"),
    ]);
    let (c4, c6) = (lab.clients4[0], lab.clients6[0]);
    let cases = [
        (
            "IPIP",
            false,
            IpAddr::V4(be.addr4),
            4,
            c4,
            IpAddr::V4(VIP4),
            true,
        ),
        (
            "IP6IP6",
            false,
            IpAddr::V6(be.addr6),
            41,
            c6,
            IpAddr::V6(VIP6),
            true,
        ),
        (
            "4in6",
            false,
            IpAddr::V6(be.addr6),
            4,
            c4,
            IpAddr::V4(VIP4),
            true,
        ),
        (
            "IPIP from a client",
            true,
            IpAddr::V4(be.addr4),
            4,
            c4,
            IpAddr::V4(VIP4),
            false,
        ),
    ];
    for (what, from_client, to, proto, client, vip, delivered) in cases {
        let sender = if from_client { &lab.client } else { &lab.lb };
        let got = lab.tunneled_datagram(
            sender,
            (client, vip),
            (to, proto),
            Duration::from_millis(800),
        );
        if delivered {
            assert_eq!(
                got.as_deref(),
                Some(be.name.as_str()),
                "{what}: not delivered"
            );
        } else {
            assert_eq!(got, None, "{what}: a source outside --from got through");
        }
    }
    let stats: serde_json::Value =
        serde_json::from_str(&xlb(&["stats", "eth0", "--json"])).expect("stats json");
    for key in [
        "decap_ipip",
        "decap_ip6ip6",
        "decap_4in6",
        "pass_source_not_allowed",
    ] {
        assert!(
            stats[key].as_u64().unwrap_or(0) >= 1,
            "{key} did not count: {stats}"
        );
    }
    xlb(&["detach", "eth0"]);
    assert!(
        !std::path::Path::new(&root.0).exists(),
        "detach left pinned state"
    );
}
