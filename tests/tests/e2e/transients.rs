//! Transients never move a pinned client, and status tells the truth about them
//! (issue 10): a neighbour entry that disappears (fault 5), an interface deleted and
//! re-created while the daemon runs (fault 6), an unusable backend's stale entries
//! (fault 11).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use xlb_tests::lab::{
    LB4, Lab, LabOptions, UDP_PORT, VIP4, VIP6, enter, http_get_path, run, udp_request,
};

/// Clients sending UDP requests to a VIP in a loop until stopped, recording every backend
/// that answered each of them.
struct Traffic {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<BTreeMap<IpAddr, BTreeSet<String>>>,
}

impl Traffic {
    fn start(lab: &Lab, clients: Vec<IpAddr>, vip: IpAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ns = lab.client.path();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            enter(&ns);
            let mut seen: BTreeMap<IpAddr, BTreeSet<String>> = BTreeMap::new();
            let dst = SocketAddr::new(vip, UDP_PORT);
            while !flag.load(Ordering::Relaxed) {
                for c in &clients {
                    if let Ok(b) = udp_request(*c, dst, Duration::from_millis(200)) {
                        seen.entry(*c).or_default().insert(b);
                    }
                }
            }
            seen
        });
        Self { stop, thread }
    }

    /// Stops; the clients that reached more than one backend.
    fn moved(self) -> Vec<(IpAddr, BTreeSet<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        let seen = self.thread.join().expect("traffic thread");
        assert!(!seen.is_empty(), "no answers at all");
        seen.into_iter().filter(|(_, b)| b.len() > 1).collect()
    }
}

fn service<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("service {name} not in status"))
}

fn backend<'a>(svc: &'a serde_json::Value, addr: &str) -> &'a serde_json::Value {
    svc["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["address"] == addr)
        .unwrap_or_else(|| panic!("backend {addr} not in {svc}"))
}

fn counter(lab: &Lab, service: &str, name: &str) -> u64 {
    let s = lab.xlb_json(&["stats"]);
    s["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|x| x["name"] == service)
        .and_then(|x| x[name].as_u64())
        .expect("counter")
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// Backend `i` neither answers nor sends ARP to the balancer (`on`), or does again. (Both
/// ways: the balancer also learns a MAC from the backend's own requests.)
fn block_arp(lab: &Lab, i: usize, on: bool) {
    let ns = &lab.backends[i].ns;
    if on {
        run(ns.cmd("nft").arg(format!(
            "add table arp xlbt; \
             add chain arp xlbt input {{ type filter hook input priority 0; }}; \
             add rule arp xlbt input arp saddr ip {LB4} drop; \
             add chain arp xlbt output {{ type filter hook output priority 0; }}; \
             add rule arp xlbt output arp daddr ip {LB4} drop"
        )));
    } else {
        run(ns.cmd("nft").args(["delete", "table", "arp", "xlbt"]));
    }
}

/// Fault 5: a backend's neighbour entry deleted on the balancer under traffic (the
/// kernel re-resolves it within milliseconds, or after its next ARP a second later)
/// moves no pinned client: the last known MAC is kept meanwhile. Resolution that really
/// fails takes the backend out, after the grace, with the reason in status.
#[test]
fn a_neighbour_transient_moves_no_pinned_client() {
    let mut lab = Lab::new(LabOptions {
        clients_v4: 60,
        clients_v6: 1,
        ..LabOptions::default()
    });
    // No health check: only the neighbour can take a backend out.
    let none = "health = { kind = \"none\" }\n";
    lab.write_config(&lab.service_toml("dns", &VIP4.to_string(), UDP_PORT, "udp", 4, none));
    lab.start_servers();
    lab.start_daemon();
    let vip = IpAddr::V4(VIP4);
    let clients = lab.clients4.clone();
    for (c, r) in lab.round(&clients, vip, true) {
        r.unwrap_or_else(|e| panic!("{c}: {e}"));
    }
    let repins = counter(&lab, "dns", "repins");
    let be0 = lab.backends[0].addr4.to_string();
    let traffic = Traffic::start(&lab, clients.clone(), vip);
    std::thread::sleep(Duration::from_millis(300));
    // Re-resolved at once, twenty times.
    for _ in 0..20 {
        lab.lb.ip(&format!("neigh del {be0} dev eth0"));
        std::thread::sleep(Duration::from_millis(100));
    }
    // Re-resolved by the kernel's next ARP, a second later.
    block_arp(&lab, 0, true);
    lab.lb.ip(&format!("neigh del {be0} dev eth0"));
    std::thread::sleep(Duration::from_millis(600));
    block_arp(&lab, 0, false);
    std::thread::sleep(Duration::from_millis(1500));
    let moved = traffic.moved();
    let log = lab.daemon_log();
    assert!(
        moved.is_empty(),
        "{} clients moved: {moved:?}\n{log}",
        moved.len()
    );
    assert_eq!(
        counter(&lab, "dns", "repins"),
        repins,
        "re-pins counted\n{log}"
    );
    assert!(
        !log.contains("lost"),
        "a transient was taken for a loss:\n{log}"
    );

    // Really failed: the backend answers no ARP at all.
    block_arp(&lab, 0, true);
    lab.lb.ip(&format!("neigh del {be0} dev eth0"));
    let resolved = |lab: &Lab| backend(service(&lab.xlb_json(&["status"]), "dns"), &be0).clone();
    let took = wait_for(
        "backend out after failed resolution",
        Duration::from_secs(8),
        || resolved(&lab)["resolved"] == false,
    );
    println!("resolution failed for good: out after {took:?}");
    assert!(
        took >= Duration::from_millis(1500),
        "out too early: {took:?}"
    );
    let note = resolved(&lab)["note"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(note.contains(&be0) || note.contains("ARP"), "{note}");
    block_arp(&lab, 0, false);
    wait_for("resolved again", Duration::from_secs(5), || {
        resolved(&lab)["resolved"] == true
    });
}

/// The `xlb_interface_attached` sample of `name`.
fn attached_metric(lab: &Lab, name: &str) -> Option<String> {
    let body = lab
        .lb
        .run(|| http_get_path(IpAddr::V4(Ipv4Addr::LOCALHOST), lab.metrics, "/metrics"))
        .expect("metrics");
    let prefix = format!("xlb_interface_attached{{interface=\"{name}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
}

fn eth0(lab: &Lab) -> serde_json::Value {
    let s = lab.xlb_json(&["status"]);
    s["attachments"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == "eth0").cloned())
        .unwrap_or(serde_json::Value::Null)
}

/// Fault 6, while running: the attached interface deleted shows as detached (and why) in
/// status and metrics; re-created with the same name it is attached anew (maps kept), its
/// backends re-resolved to the new interface, and no pinned client moves.
#[test]
fn an_interface_deleted_and_recreated_while_running_is_followed() {
    let mut lab = Lab::new(LabOptions {
        clients_v4: 60,
        clients_v6: 1,
        ..LabOptions::default()
    });
    lab.start_servers();
    lab.start_daemon();
    let vip = IpAddr::V4(VIP4);
    let clients = lab.clients4.clone();
    let first = lab.answers(&clients, vip, false);
    let pins = lab.pinned_affinity();

    // Deleted and re-created at once: attached again, traffic flows, nobody moves.
    lab.recreate_lb_interface();
    let index = lab.lb_ifindex();
    wait_for(
        "attached to the new interface",
        Duration::from_secs(5),
        || lab.attached_prog_id().is_some(),
    );
    wait_for("backends re-resolved", Duration::from_secs(5), || {
        lab.pinned_backends()
            .iter()
            .all(|(_, b)| b.ifindex == index)
    });
    assert_nobody_moved(&lab, &pins, &first);

    // Deleted for a while (longer than the health checks' fall × interval, shorter than
    // the neighbour grace): status and metrics say so, and why; nobody moves.
    assert_eq!(attached_metric(&lab, "eth0").as_deref(), Some("1"));
    lab.delete_lb_interface();
    let deleted = Instant::now();
    wait_for("status says detached", Duration::from_secs(3), || {
        eth0(&lab)["attached"] == false
    });
    let e = eth0(&lab);
    assert!(
        e["note"].as_str().unwrap_or_default().contains("deleted"),
        "{e}"
    );
    assert!(lab.xlb(&["status"]).contains("DETACHED"));
    assert_eq!(attached_metric(&lab, "eth0").as_deref(), Some("0"));
    std::thread::sleep(Duration::from_millis(800).saturating_sub(deleted.elapsed()));
    lab.create_lb_interface();
    let index = lab.lb_ifindex();
    wait_for("status says attached", Duration::from_secs(5), || {
        let e = eth0(&lab);
        e["attached"] == true && e["ifindex"] == index
    });
    assert_eq!(attached_metric(&lab, "eth0").as_deref(), Some("1"));
    wait_for("backends re-resolved", Duration::from_secs(5), || {
        lab.pinned_backends()
            .iter()
            .all(|(_, b)| b.ifindex == index)
    });
    let status = lab.xlb(&["status"]);
    assert!(!status.contains("not in daemon.interfaces"), "{status}");
    assert_nobody_moved(&lab, &pins, &first);
}

/// Every pin of `pins` still holds (same backend id and generation), and every client of
/// `first` still reaches its backend.
fn assert_nobody_moved(
    lab: &Lab,
    pins: &[(lb_common::AffinityKey, lb_common::AffinityValue)],
    first: &BTreeMap<IpAddr, String>,
) {
    let after = lab.pinned_affinity();
    let moved = pins
        .iter()
        .filter(|(k, v)| {
            !after.iter().any(|(ak, av)| {
                ak == k && (av.backend_id, av.backend_gen) == (v.backend_id, v.backend_gen)
            })
        })
        .count();
    assert_eq!(moved, 0, "pins moved\n{}", lab.daemon_log());
    for (c, b) in first {
        let now = lab
            .http(*c, IpAddr::V4(VIP4))
            .unwrap_or_else(|e| panic!("{c}: {e}\n{}", lab.daemon_log()));
        assert_eq!(&now, b, "client {c} moved\n{}", lab.daemon_log());
    }
}

/// Fault 11: once a backend is unhealthy its entries are stale (each client moves on
/// its next packet): status never counts them as pinned clients, not even right after
/// the transition; they are still listed by `xlb affinity list`.
#[test]
fn status_never_counts_an_unusable_backends_stale_entries() {
    let mut lab = Lab::new(LabOptions {
        clients_v4: 90,
        clients_v6: 90,
        ..LabOptions::default()
    });
    lab.start_servers();
    lab.start_daemon();
    for (vip, clients) in [
        (IpAddr::V4(VIP4), lab.clients4.clone()),
        (IpAddr::V6(VIP6), lab.clients6.clone()),
    ] {
        for udp in [false, true] {
            for (c, r) in lab.round(&clients, vip, udp) {
                r.unwrap_or_else(|e| panic!("{c}: {e}"));
            }
        }
    }
    let be0 = [
        ("web4", lab.backends[0].addr4.to_string()),
        ("dns4", lab.backends[0].addr4.to_string()),
        ("web6", lab.backends[0].addr6.to_string()),
        ("dns6", lab.backends[0].addr6.to_string()),
    ];
    // Counts are at most 200 ms old, and every backend is checked once.
    wait_for(
        "be0 pinned and checked everywhere",
        Duration::from_secs(5),
        || {
            let status = lab.xlb_json(&["status"]);
            be0.iter().all(|(svc, addr)| {
                let b = backend(service(&status, svc), addr);
                b["pinned_clients"].as_u64().unwrap_or(0) > 0 && b["health"] == "healthy"
            })
        },
    );
    lab.stop_server(0);
    // The first status that shows each service's be0 unhealthy.
    let mut seen: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
    let start = Instant::now();
    while seen.len() < be0.len() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "not all unhealthy: {seen:?}"
        );
        let status = lab.xlb_json(&["status"]);
        for (svc, addr) in &be0 {
            let s = service(&status, svc);
            let b = backend(s, addr);
            if b["healthy"] == false && !seen.contains_key(svc) {
                let sum: u64 = s["backends"]
                    .as_array()
                    .expect("backends")
                    .iter()
                    .map(|x| x["pinned_clients"].as_u64().unwrap_or(0))
                    .sum();
                let own = b["pinned_clients"].as_u64().unwrap_or(u64::MAX);
                seen.insert(svc, (own, s["pinned_clients"].as_u64().unwrap_or(0), sum));
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    for (svc, (own, total, sum)) in &seen {
        assert_eq!(
            *own, 0,
            "{svc}: an unhealthy backend shown with pinned clients"
        );
        assert_eq!(
            total, sum,
            "{svc}: the service count is not its backends' sum"
        );
    }
    // Left out of the counts, still listed: they move on their next packet.
    let list = lab.xlb_json(&["affinity", "list", "web4", "--limit", "1000"]);
    let stale = list["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["backend"] == be0[0].1.as_str())
        .count();
    assert!(stale > 0, "the stale entries vanished: {list}");
}
