//! Health checking, failover, draining and failback with real servers.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use xlb_tests::lab::{HTTP_PORT, Lab, LabOptions, UDP_PORT, run};

use crate::daemon::backend_status;

/// Interval, timeout and fall of the lab's HTTP checks (see `Lab::default_services`).
const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(100);
const FALL: u32 = 2;

fn http_health(failback: &str, idle: &str) -> String {
    format!(
        "failback = \"{failback}\"\nidle_timeout = \"{idle}\"\nhealth = {{ kind = \"http\", port = {HTTP_PORT}, path = \"/\", interval = \"200ms\", timeout = \"100ms\", rise = 2, fall = 2 }}\n"
    )
}

/// A lab with one HTTP-checked service `web` on VIP 1, running.
fn web_lab(clients: usize, backends: usize) -> Lab {
    let mut lab = Lab::new(LabOptions {
        clients_v4: clients,
        clients_v6: 1,
        backends,
    });
    lab.write_config(&lab.service_toml(
        "web",
        &Lab::vip4(1).to_string(),
        HTTP_PORT,
        "tcp",
        4,
        &http_health("sticky", "10m"),
    ));
    lab.start_servers();
    lab.start_daemon();
    lab
}

fn udp_answers(lab: &Lab, clients: &[IpAddr], vip: IpAddr) -> BTreeMap<IpAddr, String> {
    lab.round(clients, vip, true)
        .into_iter()
        .map(|(c, r)| (c, r.unwrap_or_else(|e| panic!("{c} → {vip}: {e}"))))
        .collect()
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

fn health_of(lab: &Lab, service: &str, addr: &str) -> String {
    backend_status(lab, service, addr).expect("backend listed")["health"]
        .as_str()
        .expect("health")
        .to_string()
}

#[test]
fn failover_moves_only_the_dead_backends_clients_then_sticky_or_rebalance_failback() {
    let mut lab = Lab::new(LabOptions {
        clients_v6: 150,
        ..LabOptions::default()
    });
    let sticky = Lab::vip4(2);
    let rebalance = Lab::vip4(3);
    let dns6 = Lab::vip6(1);
    let udp_health = format!(
        "health = {{ kind = \"udp\", port = {UDP_PORT}, send = \"ping\", interval = \"200ms\", timeout = \"100ms\", rise = 2, fall = 2 }}\n"
    );
    let services = [
        lab.service_toml(
            "sticky",
            &sticky.to_string(),
            HTTP_PORT,
            "tcp",
            4,
            &http_health("sticky", "10m"),
        ),
        lab.service_toml(
            "rebalance",
            &rebalance.to_string(),
            HTTP_PORT,
            "tcp",
            4,
            &http_health("rebalance", "10m"),
        ),
        lab.service_toml("dns6", &dns6.to_string(), UDP_PORT, "udp", 6, &udp_health),
    ]
    .concat();
    lab.write_config(&services);
    lab.start_servers();
    lab.start_daemon();

    // 150 clients take part from the start; 50 stay fresh for after the recovery.
    let (old, fresh) = lab.clients4.split_at(150);
    let (old, fresh) = (old.to_vec(), fresh.to_vec());
    let before_s = lab.answers(&old, sticky, false);
    let before_r = lab.answers(&old, rebalance, false);
    let clients6 = lab.clients6.clone();
    let before_6 = udp_answers(&lab, &clients6, dns6);
    let victim = "be1";
    let victims_s: Vec<IpAddr> = before_s
        .iter()
        .filter(|(_, b)| *b == victim)
        .map(|(c, _)| *c)
        .collect();
    let victims_r: Vec<IpAddr> = before_r
        .iter()
        .filter(|(_, b)| *b == victim)
        .map(|(c, _)| *c)
        .collect();
    assert!(
        victims_s.len() > 20 && victims_r.len() > 20,
        "too few clients on {victim}"
    );

    // Kill the victim's server: time until every one of its clients is served elsewhere.
    let t0 = Instant::now();
    lab.stop_server(lab.backend_index(victim));
    let bound = INTERVAL * FALL + TIMEOUT + Duration::from_secs(1);
    let victims_6: Vec<IpAddr> = before_6
        .iter()
        .filter(|(_, b)| *b == victim)
        .map(|(c, _)| *c)
        .collect();
    // Poll with short request timeouts so a request still reaching the dead backend does
    // not hold up the measurement.
    let poll = Duration::from_millis(50);
    let mut moved_at: BTreeMap<&str, Duration> = BTreeMap::new();
    wait_for(
        "failover of all three services",
        Duration::from_secs(10),
        || {
            for (name, vip, victims, udp) in [
                ("sticky (IPv4/TCP)", sticky, &victims_s, false),
                ("rebalance (IPv4/TCP)", rebalance, &victims_r, false),
                ("dns6 (IPv6/UDP)", dns6, &victims_6, true),
            ] {
                if moved_at.contains_key(name) {
                    continue;
                }
                let all = lab
                    .round_timeout(victims, vip, udp, poll)
                    .iter()
                    .all(|(_, r)| r.as_ref().is_ok_and(|b| b != victim));
                if all {
                    moved_at.insert(name, t0.elapsed());
                }
            }
            moved_at.len() == 3
        },
    );
    for (name, took) in &moved_at {
        println!(
            "failover {name}: every client of {victim} served elsewhere {:.0} ms after its server died (bound {:.0} ms)",
            took.as_secs_f64() * 1e3,
            bound.as_secs_f64() * 1e3
        );
        assert!(
            *took <= bound,
            "{name}: failover took {took:?}, bound {bound:?}"
        );
    }
    assert_eq!(health_of(&lab, "sticky", "10.100.0.12"), "unhealthy");
    let during_6 = udp_answers(&lab, &clients6, dns6);
    for (c, b) in &before_6 {
        if b != victim {
            assert_eq!(
                &during_6[c], b,
                "IPv6/UDP client {c} of a healthy backend moved"
            );
        }
    }

    // Nobody else moved, in either service.
    let during_s = lab.answers(&old, sticky, false);
    let during_r = lab.answers(&old, rebalance, false);
    for (c, b) in &before_s {
        if b != victim {
            assert_eq!(&during_s[c], b, "client {c} of a healthy backend moved");
        }
    }
    for (c, b) in &before_r {
        if b != victim {
            assert_eq!(&during_r[c], b, "client {c} of a healthy backend moved");
        }
    }

    // Recovery.
    lab.start_server(lab.backend_index(victim));
    wait_for("recovery", Duration::from_secs(5), || {
        health_of(&lab, "sticky", "10.100.0.12") == "healthy"
            && health_of(&lab, "rebalance", "10.100.0.12") == "healthy"
    });
    // Sticky: nobody moves back; the recovered backend takes only new clients.
    let after_s = lab.answers(&old, sticky, false);
    assert_eq!(after_s, during_s, "sticky failback moved clients");
    let new_s = lab.answers(&fresh, sticky, false);
    let to_victim = new_s.values().filter(|b| *b == victim).count();
    assert!(
        to_victim > 0,
        "the recovered backend got none of 50 new clients: {new_s:?}"
    );
    // Rebalance: its former clients return to it, nobody else moves.
    let after_r = lab.answers(&old, rebalance, false);
    for (c, b) in &before_r {
        assert_eq!(
            &after_r[c], b,
            "client {c}: not back where it was before the failure"
        );
    }
    println!(
        "failback: sticky kept all {} moved clients, the recovered backend took {to_victim} of 50 new ones; rebalance returned {} clients",
        victims_s.len(),
        victims_r.len()
    );
}

#[test]
fn drain_keeps_pinned_clients_takes_no_new_ones_and_pinned_count_falls() {
    let mut lab = Lab::new(LabOptions {
        clients_v6: 1,
        ..LabOptions::default()
    });
    let vip = Lab::vip4(4);
    lab.write_config(&lab.service_toml(
        "short",
        &vip.to_string(),
        HTTP_PORT,
        "tcp",
        4,
        &http_health("sticky", "3s"),
    ));
    lab.start_servers();
    lab.start_daemon();
    let (old, fresh) = lab.clients4.split_at(120);
    let (old, fresh) = (old.to_vec(), fresh.to_vec());
    let first = lab.answers(&old, vip, false);
    let pinned: BTreeSet<IpAddr> = first
        .iter()
        .filter(|(_, b)| *b == "be0")
        .map(|(c, _)| *c)
        .collect();
    assert!(!pinned.is_empty());

    lab.xlb(&["backend", "drain", "short", "10.100.0.11"]);
    let again = lab.answers(&old, vip, false);
    assert_eq!(again, first, "draining moved pinned clients");
    let new = lab.answers(&fresh, vip, false);
    assert!(
        new.values().all(|b| b != "be0"),
        "a new client reached the drained backend: {new:?}"
    );
    let st = backend_status(&lab, "short", "10.100.0.11").expect("listed");
    assert_eq!(st["draining"], true);

    // Pinned count as status shows it: up while clients are active, zero once idle.
    let count = |lab: &Lab| {
        backend_status(lab, "short", "10.100.0.11").expect("listed")["pinned_clients"]
            .as_u64()
            .expect("count")
    };
    wait_for("pinned count reported", Duration::from_secs(6), || {
        count(&lab) == pinned.len() as u64
    });
    let idle = wait_for(
        "pinned count to fall to zero",
        Duration::from_secs(15),
        || count(&lab) == 0,
    );
    println!(
        "drain: {} pinned clients kept their backend; the pinned count fell to 0 {:.1} s after it was reported in full (idle_timeout 3 s)",
        pinned.len(),
        idle.as_secs_f64()
    );
    lab.xlb(&["backend", "undrain", "short", "10.100.0.11"]);
    let st = backend_status(&lab, "short", "10.100.0.11").expect("listed");
    assert_eq!(st["draining"], false);
    assert!(st["table_share"].as_f64().expect("share") > 0.3);
}

#[test]
fn hanging_backends_are_detected_by_timeout_without_slowing_the_others() {
    let lab = web_lab(30, 3);
    // be1 accepts connections but never answers (its server is stopped: the kernel still
    // completes handshakes); be2 drops SYNs to its own address.
    lab.backends[1]
        .server
        .as_ref()
        .expect("server")
        .signal(libc::SIGSTOP);
    let be2 = &lab.backends[2].ns;
    run(be2.cmd("nft").args(["add", "table", "inet", "xlbtest"]));
    run(be2.cmd("nft").args([
        "add",
        "chain",
        "inet",
        "xlbtest",
        "in",
        "{ type filter hook input priority 0; }",
    ]));
    run(be2.cmd("nft").args([
        "add",
        "rule",
        "inet",
        "xlbtest",
        "in",
        "ip",
        "daddr",
        "10.100.0.13",
        "tcp",
        "dport",
        "80",
        "drop",
    ]));
    wait_for(
        "both hanging backends marked unhealthy",
        Duration::from_secs(3),
        || {
            health_of(&lab, "web", "10.100.0.12") == "unhealthy"
                && health_of(&lab, "web", "10.100.0.13") == "unhealthy"
        },
    );
    for addr in ["10.100.0.12", "10.100.0.13"] {
        let st = backend_status(&lab, "web", addr).expect("listed");
        let note = st["note"].to_string();
        assert!(note.contains("timeout"), "{addr}: reason {note}");
        assert_eq!(st["health_transitions"], 1, "{addr}: {st}");
    }
    let st = backend_status(&lab, "web", "10.100.0.11").expect("listed");
    assert_eq!(st["health_transitions"], 0, "{st}");
    assert!(
        st["last_check_ms"].as_f64().expect("checked") < 50.0,
        "{st}"
    );
    // The healthy backend kept being checked on time and never flapped.
    let metrics = lab.lb.run(|| {
        xlb_tests::lab::http_get_path("127.0.0.1".parse().expect("ip"), lab.metrics, "/metrics")
    });
    let metrics = metrics.expect("metrics");
    let line = |name: &str, backend: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l.contains(&format!("backend=\"{backend}\"")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} for {backend} in:\n{metrics}"))
    };
    assert_eq!(
        line("xlb_backend_health_transitions_total", "10.100.0.11"),
        0.0
    );
    assert_eq!(line("xlb_backend_healthy", "10.100.0.11"), 1.0);
    let latency = line("xlb_backend_last_check_latency_seconds", "10.100.0.11");
    assert!(
        latency < 0.05,
        "the healthy backend's check took {latency} s"
    );
    assert!(line("xlb_backend_last_check_latency_seconds", "10.100.0.12") >= 0.09);
    // Every client is served by the healthy one.
    let got = lab.answers(&lab.clients4.clone(), Lab::vip4(1), false);
    assert!(got.values().all(|b| b == "be0"), "{got:?}");
    lab.backends[1]
        .server
        .as_ref()
        .expect("server")
        .signal(libc::SIGCONT);
}

#[test]
fn all_backends_down_drops_and_counts_then_recovers_by_itself() {
    let mut lab = web_lab(20, 2);
    let clients = lab.clients4.clone();
    lab.answers(&clients, Lab::vip4(1), false);
    lab.stop_server(0);
    lab.stop_server(1);
    wait_for("all backends unhealthy", Duration::from_secs(3), || {
        health_of(&lab, "web", "10.100.0.11") == "unhealthy"
            && health_of(&lab, "web", "10.100.0.12") == "unhealthy"
    });
    let drops = |lab: &Lab| -> u64 {
        let s = lab.xlb_json(&["stats"]);
        s["packets"]
            .as_array()
            .expect("packets")
            .iter()
            .find(|p| p[0] == "drop_no_backend")
            .and_then(|p| p[1].as_u64())
            .expect("drop_no_backend")
    };
    let before = drops(&lab);
    for (c, r) in lab.round(&clients[..5], Lab::vip4(1), false) {
        assert!(
            r.is_err(),
            "{c} was answered with no healthy backend: {r:?}"
        );
    }
    let after = drops(&lab);
    assert!(after >= before + 5, "drops not counted: {before} → {after}");
    let explain = lab.xlb_json(&["explain", "web", &clients[0].to_string()]);
    assert_eq!(explain["decision"], "no_backend");

    lab.start_server(1);
    wait_for("service restored", Duration::from_secs(5), || {
        lab.round(&clients, Lab::vip4(1), false)
            .iter()
            .all(|(_, r)| r.as_ref().is_ok_and(|b| b == "be1"))
    });
}

/// Issue 10, fault 4: a backend added to a health-checked service takes no client before
/// its first passed check (nothing listens on it: every new client goes elsewhere, and
/// every one is answered); once its server runs, one passed check brings it in.
#[test]
fn a_new_backend_takes_clients_only_after_its_first_passed_check() {
    let mut lab = Lab::new(LabOptions {
        clients_v4: 120,
        clients_v6: 1,
        backends: 4,
    });
    let first3: Vec<(IpAddr, u32)> = lab.backends[..3]
        .iter()
        .map(|b| (IpAddr::V4(b.addr4), 1))
        .collect();
    lab.write_config(&xlb_tests::lab::service_block(
        "web",
        &Lab::vip4(1).to_string(),
        HTTP_PORT,
        "tcp",
        &http_health("sticky", "10m"),
        &first3,
    ));
    for i in 0..3 {
        lab.start_server(i);
    }
    lab.start_daemon();
    let vip = Lab::vip4(1);
    let new_backend = lab.backends[3].addr4.to_string();
    lab.xlb(&["backend", "add", "web", &new_backend]);
    let clients = lab.clients4.clone();
    let (early, late) = clients.split_at(60);
    let got = lab.answers(early, vip, false);
    let on_new = got.values().filter(|b| *b == "be3").count();
    assert_eq!(
        on_new, 0,
        "{on_new} new clients went to a backend never checked"
    );
    assert_ne!(health_of(&lab, "web", &new_backend), "healthy");

    lab.start_server(3);
    wait_for(
        "the new backend's first passed check",
        Duration::from_secs(3),
        || health_of(&lab, "web", &new_backend) == "healthy",
    );
    let got = lab.answers(late, vip, false);
    assert!(
        got.values().any(|b| b == "be3"),
        "no new client reached the checked backend: {got:?}"
    );
}
