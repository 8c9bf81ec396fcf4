//! Real networks (issue 13) with the real daemon: clients behind a router whose link to
//! them has MTU 1400 (`Lab::with_router`), backends answering them through it in DSR.
//! Path-MTU discovery works through the balancer (the router's "fragmentation needed" /
//! "packet too big", addressed to the VIP, reach the backend that sent the reply), and
//! datagrams larger than the path, fragmented by the client, reach one backend per client.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use xlb_tests::lab::{
    HTTP_PORT, Lab, LabOptions, UDP_PORT, VIP4, VIP6, http_request, udp_request_sized,
};

const MTU: u32 = 1400;
/// A download far larger than one segment: it stalls on the first full-size reply unless
/// the backend learns the path MTU.
const DOWNLOAD: usize = 1 << 20;
/// A datagram the client must cut into three fragments.
const DATAGRAM: usize = 4000;

fn routed_lab(clients: usize) -> Lab {
    let mut lab = Lab::with_router(
        LabOptions {
            backends: 3,
            clients_v4: clients,
            clients_v6: clients,
        },
        MTU,
    );
    lab.start_servers();
    lab.start_daemon();
    lab
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
    let lab = routed_lab(2);
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
    let lab = routed_lab(24);
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
