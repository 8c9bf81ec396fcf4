//! Tier 3: the real `xlb` daemon in a network-namespace lab, real servers on the
//! backends, real TCP and UDP clients from hundreds of source addresses.

use std::{collections::BTreeMap, net::IpAddr};

use xlb_tests::lab::{Lab, LabOptions, VIP4, VIP6};

/// Per client: the set of backends that answered it over `rounds` rounds.
fn affinity_rounds(
    lab: &Lab,
    clients: &[IpAddr],
    vip: IpAddr,
    udp: bool,
    rounds: usize,
) -> BTreeMap<IpAddr, Vec<String>> {
    let mut seen: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
    for _ in 0..rounds {
        for (c, r) in lab.round(clients, vip, udp) {
            let b = r.unwrap_or_else(|e| panic!("client {c} → {vip}: {e}\n{}", lab.daemon_log()));
            seen.entry(c).or_default().push(b);
        }
    }
    seen
}

#[test]
fn affinity_and_balance_v4_v6_tcp_udp() {
    let mut lab = Lab::new(LabOptions::default());
    lab.start_servers();
    lab.start_daemon();
    for (vip, clients, udp) in [
        (IpAddr::V4(VIP4), lab.clients4.clone(), false),
        (IpAddr::V4(VIP4), lab.clients4.clone(), true),
        (IpAddr::V6(VIP6), lab.clients6.clone(), false),
        (IpAddr::V6(VIP6), lab.clients6.clone(), true),
    ] {
        let seen = affinity_rounds(&lab, &clients, vip, udp, 3);
        let mut per_backend: BTreeMap<String, usize> = BTreeMap::new();
        for (c, answers) in &seen {
            assert!(
                answers.iter().all(|a| *a == answers[0]),
                "client {c} reached several backends: {answers:?}"
            );
            *per_backend.entry(answers[0].clone()).or_default() += 1;
        }
        let n = clients.len() as f64;
        println!("{vip} {}: {per_backend:?}", if udp { "udp" } else { "tcp" });
        assert_eq!(
            per_backend.len(),
            3,
            "not every backend got clients: {per_backend:?}"
        );
        for (b, k) in &per_backend {
            let share = *k as f64 / n;
            assert!(
                (share - 1.0 / 3.0).abs() <= 0.10,
                "backend {b} got {:.1}% of the clients, not 33% ± 10",
                share * 100.0
            );
        }
    }
}
