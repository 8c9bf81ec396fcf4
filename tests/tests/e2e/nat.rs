//! Issue 12 in the lab: an office of 100 hosts behind a router that masquerades them to
//! one address (nftables, real conntrack), 100 direct clients, a TCP and a UDP service
//! on three equal backends with real servers, the real daemon.
//!
//! 1. Without settings: `xlb top` lists the office address first with its true share,
//!    the heavy-source warning fires (log, status, metric), status shows the imbalance.
//! 2. The office prefix in `nat_sources`: its connections spread over all three backends
//!    (20–45% each), each connection stays on one backend, every direct client keeps one
//!    backend on every connection.
//! 3. `balance_factor = 1.25` with the office pinned to one backend: new direct clients
//!    avoid it while it is over the bound, no pinned client moves, and once the office is
//!    idle new clients reach it again.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use xlb_tests::lab::{
    HTTP_PORT, Lab, LabOptions, OFFICE_PUBLIC, UDP_PORT, VIP4, enter, http_request, udp_request,
};

const TIMEOUT: Duration = Duration::from_millis(1500);

fn lab() -> Lab {
    let mut lab = Lab::new(LabOptions {
        backends: 3,
        clients_v4: 300,
        clients_v6: 1,
    });
    lab.add_office(100);
    let http = format!(
        "health = {{ kind = \"http\", port = {HTTP_PORT}, path = \"/\", interval = \"200ms\", timeout = \"100ms\" }}\n"
    );
    let udp = format!(
        "health = {{ kind = \"udp\", port = {UDP_PORT}, send = \"ping\", interval = \"200ms\", timeout = \"100ms\" }}\n"
    );
    let services = lab.service_toml("web4", &VIP4.to_string(), HTTP_PORT, "tcp", 4, &http)
        + &lab.service_toml("dns4", &VIP4.to_string(), UDP_PORT, "udp", 4, &udp);
    lab.write_config(&services);
    lab.start_servers();
    lab.start_daemon();
    lab
}

fn office(lab: &Lab) -> &xlb_tests::lab::Office {
    lab.office.as_ref().expect("the office")
}

/// Connected UDP sockets to dns4, one per source, made in `ns`'s namespace.
fn sockets(ns: &std::path::Path, sources: &[IpAddr]) -> Vec<UdpSocket> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns);
            sources
                .iter()
                .map(|a| {
                    let u = UdpSocket::bind(SocketAddr::new(*a, 0)).expect("bind");
                    u.connect(SocketAddr::new(VIP4.into(), UDP_PORT))
                        .expect("connect");
                    u.set_nonblocking(true).expect("nonblocking");
                    u
                })
                .collect()
        })
        .join()
        .expect("sockets")
    })
}

/// Sends one datagram from each socket of each group in turn (interleaved, so any
/// window holds the groups in the same ratio), about `pps` packets/s, until `stop`.
fn flood(groups: &[&[UdpSocket]], pps: u64, stop: &AtomicBool) -> u64 {
    let mut sent = 0u64;
    let start = Instant::now();
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        let n = groups.iter().map(|g| g.len()).max().unwrap_or(0);
        for i in 0..n {
            for g in groups {
                if let Some(s) = g.get(i) {
                    let _ = s.send(b"who");
                    sent += 1;
                    while s.recv(&mut buf).is_ok() {}
                }
            }
        }
        let due = Duration::from_secs_f64(sent as f64 / pps as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    sent
}

fn dns4(status: &serde_json::Value) -> &serde_json::Value {
    status["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["name"] == "dns4")
        .expect("dns4")
}

/// Backend name per request; every request must be answered.
fn http_from(
    ns: &xlb_tests::lab::Netns,
    sources: &[IpAddr],
    times: usize,
) -> Vec<(IpAddr, String)> {
    ns.run(|| {
        let mut out = Vec::new();
        for _ in 0..times {
            for c in sources {
                let dst = SocketAddr::new(VIP4.into(), HTTP_PORT);
                let b = http_request(*c, dst, "/", TIMEOUT).unwrap_or_else(|e| {
                    panic!("a connection from {c} failed (split over backends?): {e}")
                });
                out.push((*c, b));
            }
        }
        out
    })
}

fn shares(answers: &[(IpAddr, String)]) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for (_, b) in answers {
        *m.entry(b.clone()).or_insert(0.0) += 1.0 / answers.len() as f64;
    }
    m
}

/// Every client's answers came from one backend.
fn one_backend_each(answers: &[(IpAddr, String)]) -> BTreeMap<IpAddr, String> {
    let mut m: BTreeMap<IpAddr, String> = BTreeMap::new();
    for (c, b) in answers {
        let first = m.entry(*c).or_insert_with(|| b.clone());
        assert_eq!(first, b, "client {c} reached two backends");
    }
    m
}

#[test]
fn office_behind_nat_skew_seen_and_spread() {
    let mut lab = lab();
    let office_ns = office(&lab).ns.path();
    let office_clients = office(&lab).clients.clone();
    let direct: Vec<IpAddr> = lab.clients4[..100].to_vec();

    // 1. The skew, seen: office and direct clients interleaved one for one → 50%.
    let stop = AtomicBool::new(false);
    let (top, status) = std::thread::scope(|s| {
        let osocks = sockets(&office_ns, &office_clients);
        let dsocks = sockets(&lab.client.path(), &direct);
        let stop = &stop;
        let sender = s.spawn(move || flood(&[&osocks, &dsocks], 10_000, stop));
        std::thread::sleep(Duration::from_millis(3500));
        let top = lab.xlb_json(&["top", "dns4"]);
        let status = lab.xlb_json(&["status"]);
        stop.store(true, Ordering::Relaxed);
        println!("sent {} datagrams", sender.join().expect("sender"));
        (top, status)
    });
    println!("{top:#}");
    let svc = &top["services"][0];
    let first = &svc["sources"][0];
    assert_eq!(first["source"], OFFICE_PUBLIC.to_string(), "{top:#}");
    let share = first["share"].as_f64().expect("share");
    assert!(
        (share - 0.5).abs() <= 0.01,
        "office share {share:.4}, truth 0.5"
    );
    let d = dns4(&status);
    assert_eq!(
        d["heavy_source"]["source"],
        OFFICE_PUBLIC.to_string(),
        "{d:#}"
    );
    assert!(
        d["heavy_source"]["note"]
            .as_str()
            .expect("note")
            .contains("nat_sources"),
        "{d:#}"
    );
    let imbalance = d["load_imbalance"].as_f64().expect("imbalance");
    assert!(imbalance >= 1.4, "imbalance {imbalance}");
    assert!(
        lab.daemon_log()
            .contains(&format!("service dns4: {OFFICE_PUBLIC} carries")),
        "no warning in the log"
    );
    let metrics = reqwest_metrics(&lab);
    assert!(
        metrics.contains("xlb_service_heavy_source{service=\"dns4\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("xlb_service_load_imbalance{service=\"dns4\"}"));

    // 2. The office's prefix in nat_sources: its connections spread, each kept.
    for svc in ["web4", "dns4"] {
        lab.xlb(&["service", "set", svc, "--nat-sources", "10.100.9.0/24"]);
    }
    let office_http = http_from(&office(&lab).ns, &office_clients, 3);
    let s = shares(&office_http);
    println!("office connections per backend: {s:?}");
    assert_eq!(s.len(), 3, "{s:?}");
    for (b, share) in &s {
        assert!((0.20..=0.45).contains(share), "{b}: {share:.2}");
    }
    // UDP: each office socket (one source port behind the NAT) keeps its backend.
    office(&lab).ns.run(|| {
        for c in &office_clients[..30] {
            let u = UdpSocket::bind(SocketAddr::new(*c, 0)).expect("bind");
            u.connect(SocketAddr::new(VIP4.into(), UDP_PORT))
                .expect("connect");
            u.set_read_timeout(Some(TIMEOUT)).expect("timeout");
            let mut first = None;
            for _ in 0..5 {
                u.send(b"who").expect("send");
                let mut buf = [0u8; 64];
                let n = u.recv(&mut buf).expect("reply");
                let b = String::from_utf8_lossy(&buf[..n]).to_string();
                assert_eq!(
                    first.get_or_insert_with(|| b.clone()),
                    &b,
                    "{c}: one socket, two backends"
                );
            }
        }
    });
    one_backend_each(&http_from(&lab.client, &direct, 3));
    let e = lab.xlb_json(&[
        "explain",
        "web4",
        &OFFICE_PUBLIC.to_string(),
        "--port",
        "40000",
    ]);
    assert_eq!(e["nat_source"], "10.100.9.0/24", "{e:#}");

    // 3. The office pinned to one backend again, and a balance factor.
    lab.xlb(&[
        "service",
        "set",
        "dns4",
        "--nat-sources",
        "none",
        "--balance-factor",
        "1.25",
    ]);
    let office_on = udp_from(&office_ns, office_clients[0]);
    let before = lab.answers(&direct[..50], VIP4.into(), true);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let osocks = sockets(&office_ns, &office_clients);
        let stop = &stop;
        let sender = s.spawn(move || flood(&[&osocks], 8_000, stop));
        std::thread::sleep(Duration::from_millis(2500));
        let st = lab.xlb_json(&["status"]);
        let over: Vec<String> = dns4(&st)["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .filter(|b| b["over_bound"] == true)
            .map(|b| b["address"].as_str().expect("address").to_string())
            .collect();
        println!("over the bound: {over:?}; the office is on {office_on}");
        assert_eq!(over.len(), 1, "{st:#}");
        // New direct clients avoid it; pinned ones (office, earlier clients) stay.
        let fresh = lab.round(&lab.clients4[100..200], VIP4.into(), true);
        for (c, r) in &fresh {
            assert_ne!(
                r.as_ref().expect("answer"),
                &office_on,
                "new client {c} reached the backend over the bound"
            );
        }
        for (c, r) in lab.round(&direct[..50], VIP4.into(), true) {
            assert_eq!(r.expect("answer"), before[&c], "pinned client {c} moved");
        }
        assert_eq!(
            udp_from(&office_ns, office_clients[0]),
            office_on,
            "the office moved"
        );
        // The daemon dies while the flag is set (it stays in the pinned map); the next
        // one must not leave it there for good.
        lab.kill_daemon();
        stop.store(true, Ordering::Relaxed);
        sender.join().expect("sender");
    });
    lab.start_daemon();
    // The office idle: the flag clears, new clients reach its backend again.
    std::thread::sleep(Duration::from_millis(2500));
    let st = lab.xlb_json(&["status"]);
    assert!(
        dns4(&st)["backends"]
            .as_array()
            .expect("b")
            .iter()
            .all(|b| b["over_bound"] == false),
        "{st:#}"
    );
    let later = lab.round(&lab.clients4[200..300], VIP4.into(), true);
    let reached = later
        .iter()
        .filter(|(_, r)| r.as_deref() == Ok(office_on.as_str()))
        .count();
    assert!(
        reached >= 10,
        "{reached} of 100 new clients on {office_on} once the office is idle"
    );
    lab.stop_daemon();
}

/// The backend that answers one datagram from office host `src`.
fn udp_from(ns: &std::path::Path, src: IpAddr) -> String {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns);
            udp_request(src, SocketAddr::new(VIP4.into(), UDP_PORT), TIMEOUT)
                .expect("office answer")
        })
        .join()
        .expect("udp")
    })
}

/// The metrics page, from the balancer's namespace (where the daemon serves it).
fn reqwest_metrics(lab: &Lab) -> String {
    lab.lb
        .run(|| {
            xlb_tests::lab::http_get_path(
                IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                lab.metrics,
                "/metrics",
            )
        })
        .expect("metrics")
}
