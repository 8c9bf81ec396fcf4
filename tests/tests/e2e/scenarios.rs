//! The lab scenarios of the mission: weights, prefixes, flow hashing, adding backends,
//! a standard client tool.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use xlb_tests::lab::{HTTP_PORT, Lab, LabOptions, VIP4, VIP6, run, service_block};

const NO_HEALTH: &str = "health = { kind = \"none\" }\n";

fn per_backend(answers: &BTreeMap<IpAddr, String>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for b in answers.values() {
        *m.entry(b.clone()).or_default() += 1;
    }
    m
}

fn answers(lab: &Lab, clients: &[IpAddr], vip: IpAddr, udp: bool) -> BTreeMap<IpAddr, String> {
    lab.round(clients, vip, udp)
        .into_iter()
        .map(|(c, r)| (c, r.unwrap_or_else(|e| panic!("{c} → {vip}: {e}"))))
        .collect()
}

#[test]
fn balance_of_300_clients_over_3_equal_backends_v4_v6() {
    let mut lab = Lab::new(LabOptions {
        clients_v4: 300,
        clients_v6: 300,
        backends: 3,
    });
    lab.start_servers();
    lab.start_daemon();
    for (vip, clients) in [
        (IpAddr::V4(VIP4), lab.clients4.clone()),
        (IpAddr::V6(VIP6), lab.clients6.clone()),
    ] {
        let got = per_backend(&answers(&lab, &clients, vip, false));
        println!("{vip}: {got:?}");
        assert_eq!(got.len(), 3);
        for (b, n) in &got {
            let share = *n as f64 / clients.len() as f64;
            assert!(
                (share - 1.0 / 3.0).abs() <= 0.10,
                "{b}: {:.1}%",
                share * 100.0
            );
        }
    }
}

#[test]
fn weight_2_backend_gets_about_twice_the_clients() {
    let mut lab = Lab::new(LabOptions {
        clients_v4: 300,
        clients_v6: 1,
        backends: 3,
    });
    let backends: Vec<(IpAddr, u32)> = lab
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| (IpAddr::V4(b.addr4), if i == 0 { 2 } else { 1 }))
        .collect();
    lab.write_config(&service_block(
        "web",
        &VIP4.to_string(),
        HTTP_PORT,
        "tcp",
        NO_HEALTH,
        &backends,
    ));
    lab.start_servers();
    lab.start_daemon();
    let got = per_backend(&answers(
        &lab,
        &lab.clients4.clone(),
        IpAddr::V4(VIP4),
        false,
    ));
    println!("weights 2:1:1 → {got:?}");
    let heavy = got["be0"] as f64;
    let light = (got["be1"] + got["be2"]) as f64 / 2.0;
    let ratio = heavy / light;
    assert!(
        (1.6..=2.5).contains(&ratio),
        "weight 2 got {ratio:.2}× the clients of weight 1"
    );
    let share = lab.xlb_json(&["status"])["services"][0]["backends"][0]["table_share"]
        .as_f64()
        .expect("share");
    assert!(
        (share - 0.5).abs() < 0.01,
        "table share of the weight-2 backend: {share}"
    );
}

#[test]
fn prefix_24_keeps_a_whole_24_on_one_backend() {
    let mut lab = Lab::new(LabOptions {
        clients_v4: 500, // 10.100.1.0/24 and 10.100.2.0/24
        clients_v6: 1,
        backends: 3,
    });
    let extra = format!("prefix_v4 = 24\n{NO_HEALTH}");
    lab.write_config(&lab.service_toml("net24", &VIP4.to_string(), HTTP_PORT, "tcp", 4, &extra));
    lab.start_servers();
    lab.start_daemon();
    let got = answers(&lab, &lab.clients4.clone(), IpAddr::V4(VIP4), false);
    let mut per_net: BTreeMap<[u8; 3], BTreeSet<String>> = BTreeMap::new();
    for (c, b) in &got {
        let IpAddr::V4(a) = c else { unreachable!() };
        let o = a.octets();
        per_net
            .entry([o[0], o[1], o[2]])
            .or_default()
            .insert(b.clone());
    }
    println!("/24 → backends: {per_net:?}");
    assert_eq!(per_net.len(), 2);
    for (net, backends) in &per_net {
        assert_eq!(backends.len(), 1, "{net:?}/24 was spread over {backends:?}");
    }
    let pins = lab.xlb_json(&["affinity", "list", "net24"]);
    assert_eq!(pins["total"], 2, "one affinity entry per /24: {pins}");
}

#[test]
fn affinity_none_spreads_one_clients_connections() {
    let mut lab = Lab::new(LabOptions {
        clients_v4: 1,
        clients_v6: 1,
        backends: 3,
    });
    let extra = format!("affinity = \"none\"\n{NO_HEALTH}");
    lab.write_config(&lab.service_toml("flows", &VIP4.to_string(), HTTP_PORT, "tcp", 4, &extra));
    lab.start_servers();
    lab.start_daemon();
    let c = lab.clients4[0];
    let seen: BTreeSet<String> = (0..30)
        .map(|_| lab.http(c, IpAddr::V4(VIP4)).expect("answer"))
        .collect();
    println!("30 connections of one client reached {seen:?}");
    assert!(seen.len() >= 2, "affinity none kept one client on {seen:?}");
}

#[test]
fn adding_a_backend_keeps_every_pinned_client_and_new_clients_use_it() {
    let mut lab = Lab::new(LabOptions {
        clients_v4: 250,
        clients_v6: 250,
        backends: 4,
    });
    let mut services = String::new();
    for (name, vip, fam, proto, port) in [
        ("web4", VIP4.to_string(), 4, "tcp", HTTP_PORT),
        ("dns6", VIP6.to_string(), 6, "udp", 53),
    ] {
        let first3: Vec<(IpAddr, u32)> = lab.backends[..3]
            .iter()
            .map(|b| {
                (
                    if fam == 4 {
                        IpAddr::V4(b.addr4)
                    } else {
                        IpAddr::V6(b.addr6)
                    },
                    1,
                )
            })
            .collect();
        services.push_str(&service_block(name, &vip, port, proto, NO_HEALTH, &first3));
    }
    lab.write_config(&services);
    lab.start_servers();
    lab.start_daemon();
    for (service, vip, clients, udp, new_backend) in [
        (
            "web4",
            IpAddr::V4(VIP4),
            lab.clients4.clone(),
            false,
            lab.backends[3].addr4.to_string(),
        ),
        (
            "dns6",
            IpAddr::V6(VIP6),
            lab.clients6.clone(),
            true,
            lab.backends[3].addr6.to_string(),
        ),
    ] {
        let (old, fresh) = clients.split_at(150);
        let before = answers(&lab, old, vip, udp);
        lab.xlb(&["backend", "add", service, &new_backend]);
        let after = answers(&lab, old, vip, udp);
        assert_eq!(
            after, before,
            "{service}: adding a backend moved pinned clients"
        );
        let new = per_backend(&answers(&lab, fresh, vip, udp));
        println!("{service}: 100 new clients after the add: {new:?}");
        assert_eq!(
            new.len(),
            4,
            "{service}: new clients did not spread over 4 backends: {new:?}"
        );
        assert!(
            new["be3"] >= 10,
            "{service}: the new backend got {} of 100 new clients",
            new["be3"]
        );
    }
}

#[test]
fn curl_from_the_client_namespace_gets_the_same_backend_as_our_client() {
    let mut lab = Lab::new(LabOptions {
        clients_v4: 20,
        clients_v6: 20,
        backends: 3,
    });
    lab.start_servers();
    lab.start_daemon();
    for (src, url) in [
        (lab.clients4[7], format!("http://{VIP4}/")),
        (lab.clients6[7], format!("http://[{VIP6}]/")),
    ] {
        let ours = lab
            .http(
                src,
                if src.is_ipv4() {
                    IpAddr::V4(VIP4)
                } else {
                    IpAddr::V6(VIP6)
                },
            )
            .expect("our client");
        for _ in 0..3 {
            let out = run(lab.client.cmd("curl").args([
                "-sS",
                "--max-time",
                "3",
                "--interface",
                &src.to_string(),
                &url,
            ]));
            assert_eq!(out.trim(), ours, "curl from {src} reached another backend");
        }
    }
}
