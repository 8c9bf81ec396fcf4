//! `cargo xtask demo`: xlb working in a network-namespace lab, narrated in seven steps.
//! Everything it creates (namespaces, processes, pinned maps) is removed at the end, also
//! when a step fails.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use xlb_tests::lab::{HTTP_PORT, Lab, LabOptions, VIP4, service_block};

const SERVICE: &str = "web";

fn main() {
    let started = Instant::now();
    xlb_tests::require_root();
    println!("xlb demo: building a lab of network namespaces (client, balancer, 4 backends)...");
    let mut lab = Lab::new(LabOptions {
        backends: 4,
        clients_v4: 200,
        clients_v6: 1,
    });
    let vip = IpAddr::V4(VIP4);
    let initial: Vec<(IpAddr, u32)> = lab.backends[..3]
        .iter()
        .map(|b| (IpAddr::V4(b.addr4), 1))
        .collect();
    let health = format!(
        "health = {{ kind = \"http\", port = {HTTP_PORT}, path = \"/\", interval = \"200ms\", timeout = \"100ms\", rise = 2, fall = 2 }}\n"
    );
    lab.write_config(&service_block(
        SERVICE,
        &VIP4.to_string(),
        HTTP_PORT,
        "tcp",
        &health,
        &initial,
    ));
    lab.start_servers();
    lab.start_daemon();
    println!(
        "  service {SERVICE}: VIP {VIP4}:{HTTP_PORT}/tcp, DSR, 3 backends (be0 be1 be2) running HTTP servers that answer their name"
    );
    println!(
        "  the xlb daemon runs in the balancer namespace; its XDP program is attached to eth0\n"
    );

    // Clients 0..150 take part from the start, 150..180 arrive in step 3, 180..200 in step 4.
    let all = lab.clients4.clone();
    let (early, rest) = all.split_at(150);
    let (late, fresh) = rest.split_at(30);

    step(1, "150 clients make 3 HTTP requests each");
    let mut seen: BTreeMap<IpAddr, BTreeSet<String>> = BTreeMap::new();
    for _ in 0..3 {
        for (c, r) in lab.round(early, vip, false) {
            seen.entry(c)
                .or_default()
                .insert(r.unwrap_or_else(|e| fail(&lab, &e)));
        }
    }
    let consistent = seen.values().filter(|s| s.len() == 1).count();
    let now: BTreeMap<IpAddr, String> = seen
        .iter()
        .map(|(c, s)| (*c, s.iter().next().cloned().unwrap_or_default()))
        .collect();
    table(&now);
    println!(
        "  {consistent} of {} clients reached the same backend on every request\n",
        seen.len()
    );

    step(2, "be1's server is killed");
    let victims: Vec<IpAddr> = now
        .iter()
        .filter(|(_, b)| *b == "be1")
        .map(|(c, _)| *c)
        .collect();
    let t0 = Instant::now();
    lab.stop_server(1);
    loop {
        let done = lab
            .round(&victims, vip, false)
            .iter()
            .all(|(_, r)| r.as_ref().is_ok_and(|b| b != "be1"));
        if done {
            break;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            fail(&lab, "be1's clients were not moved within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let failover = t0.elapsed();
    let after = answers(&lab, early);
    let moved_others = now
        .iter()
        .filter(|(c, b)| *b != "be1" && after.get(*c) != Some(*b))
        .count();
    println!(
        "  health checks (every 200 ms, 2 failures) took be1 out: its {} clients were served elsewhere after {} ms",
        victims.len(),
        failover.as_millis()
    );
    println!("  clients of the other backends that moved: {moved_others}");
    table(&after);
    println!();

    step(
        3,
        "a new backend, be3, is added with `xlb backend add web 10.100.0.14`",
    );
    lab.xlb(&["backend", "add", SERVICE, "10.100.0.14"]);
    let pinned_after_add = answers(&lab, early);
    let moved = after
        .iter()
        .filter(|(c, b)| pinned_after_add.get(*c) != Some(*b))
        .count();
    let newcomers = answers(&lab, late);
    println!(
        "  pinned clients that moved: {moved} (their affinity entries keep them where they are)"
    );
    println!("  30 new clients spread over all healthy backends:");
    table(&newcomers);
    println!();

    step(4, "be0 is drained with `xlb backend drain web 10.100.0.11`");
    lab.xlb(&["backend", "drain", SERVICE, "10.100.0.11"]);
    let on_be0 = pinned_after_add.values().filter(|b| *b == "be0").count();
    let still = answers(&lab, early);
    let kept = still
        .iter()
        .filter(|(c, b)| *b == "be0" && pinned_after_add.get(*c).is_some_and(|x| x == "be0"))
        .count();
    println!("  be0's {on_be0} pinned clients still reach it: {kept} of {on_be0}");
    let newcomers = answers(&lab, fresh);
    println!(
        "  20 new clients: {} reached be0 (a drained backend takes no new client)",
        newcomers.values().filter(|b| *b == "be0").count()
    );
    let status = lab.xlb_json(&["status"]);
    let be0 = &status["services"][0]["backends"][0];
    println!(
        "  status: be0 holds {:.1}% of the Maglev table and {} pinned clients; remove it when that reaches 0",
        be0["table_share"].as_f64().unwrap_or(0.0) * 100.0,
        be0["pinned_clients"]
    );
    lab.xlb(&["backend", "undrain", SERVICE, "10.100.0.11"]);
    println!();

    step(5, "the daemon is killed with SIGKILL, then started again");
    let before = answers(&lab, early);
    let prog = lab.attached_prog_id();
    lab.kill_daemon();
    let during = answers(&lab, early);
    let moved_dead = before
        .iter()
        .filter(|(c, b)| during.get(*c) != Some(*b))
        .count();
    println!(
        "  with no daemon: XDP program {} still attached, {} clients answered, {moved_dead} moved",
        prog.map_or_else(|| "?".into(), |p| p.to_string()),
        during.len()
    );
    let t = Instant::now();
    lab.start_daemon();
    let after_restart = answers(&lab, early);
    let moved_restart = before
        .iter()
        .filter(|(c, b)| after_restart.get(*c) != Some(*b))
        .count();
    println!(
        "  restarted in {} ms: it adopted the pinned maps and replaced the program (now {}) through its pinned link; clients moved: {moved_restart}",
        t.elapsed().as_millis(),
        lab.attached_prog_id()
            .map_or_else(|| "?".into(), |p| p.to_string())
    );
    println!();

    step(6, "what an operator sees");
    // Let the restarted daemon's health checks report once (they start as "unknown").
    let deadline = Instant::now() + Duration::from_secs(3);
    while lab.xlb(&["status"]).contains("unknown") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("$ xlb status");
    print!("{}", indent(&lab.xlb(&["status"])));
    println!("$ curl -s http://127.0.0.1:9310/metrics | grep web");
    let metrics = lab
        .lb
        .run(|| {
            xlb_tests::lab::http_get_path("127.0.0.1".parse().expect("ip"), lab.metrics, "/metrics")
        })
        .unwrap_or_else(|e| fail(&lab, &e));
    for l in metrics.lines().filter(|l| {
        (l.starts_with("xlb_service_")
            || l.starts_with("xlb_backend_healthy")
            || l.starts_with("xlb_backend_pinned"))
            && l.contains(SERVICE)
    }) {
        println!("  {l}");
    }
    println!();

    office_step(&mut lab, early);
    drop(lab);
    println!(
        "done in {:.1} s; the lab is gone (namespaces, processes, pinned maps).",
        started.elapsed().as_secs_f64()
    );
    println!(
        "Next: README.md — running xlb on a real host, config and CLI reference, how decisions are made."
    );
}

/// Step 7 (issue 12): 40 office hosts behind one NAT address skew the service; `xlb top`
/// shows it, status warns, and `nat_sources` spreads the office per connection.
fn office_step(lab: &mut Lab, direct: &[IpAddr]) {
    step(
        7,
        "an office of 40 hosts behind one NAT router (nftables masquerade) joins 150 direct clients",
    );
    lab.add_office(40);
    let office = lab.office.as_ref().expect("office");
    let hosts = office.clients.clone();
    let office_round = |lab: &Lab| -> Vec<String> {
        let of = lab.office.as_ref().expect("office");
        of.ns.run(|| {
            hosts
                .iter()
                .map(|h| {
                    xlb_tests::lab::http_get(
                        *h,
                        std::net::SocketAddr::new(IpAddr::V4(VIP4), HTTP_PORT),
                    )
                    .unwrap_or_else(|e| format!("error: {e}"))
                })
                .collect()
        })
    };
    // Three seconds of traffic: the office four times as busy as each direct client.
    let until = Instant::now() + Duration::from_secs(3);
    let mut office_on = BTreeMap::new();
    while Instant::now() < until {
        for _ in 0..4 {
            for b in office_round(lab) {
                *office_on.entry(b).or_insert(0usize) += 1;
            }
        }
        let _ = lab.round(direct, IpAddr::V4(VIP4), false);
    }
    println!("  office connections per backend: {office_on:?} (one address: one pin, one backend)");
    println!("$ xlb top {SERVICE} --limit 5");
    print!("{}", indent(&lab.xlb(&["top", SERVICE, "--limit", "5"])));
    let status = lab.xlb(&["status"]);
    for l in status
        .lines()
        .filter(|l| l.contains("WARNING") || l.contains("imbalance"))
    {
        println!("  {}", l.trim());
    }
    println!("$ xlb service set {SERVICE} --nat-sources 10.100.9.0/24");
    print!(
        "{}",
        indent(&lab.xlb(&["service", "set", SERVICE, "--nat-sources", "10.100.9.0/24"]))
    );
    let mut spread = BTreeMap::new();
    for _ in 0..5 {
        for b in office_round(lab) {
            *spread.entry(b).or_insert(0usize) += 1;
        }
    }
    println!(
        "  office connections per backend now: {spread:?} (each connection balanced alone, and kept)"
    );
    println!("$ xlb explain {SERVICE} 10.100.9.1 --port 40000");
    print!(
        "{}",
        indent(&lab.xlb(&["explain", SERVICE, "10.100.9.1", "--port", "40000"]))
    );
    println!();
}

fn step(n: u32, what: &str) {
    println!("{n}. {what}");
}

fn answers(lab: &Lab, clients: &[IpAddr]) -> BTreeMap<IpAddr, String> {
    lab.round(clients, IpAddr::V4(VIP4), false)
        .into_iter()
        .map(|(c, r)| (c, r.unwrap_or_else(|e| fail(lab, &e))))
        .collect()
}

/// Clients per backend.
fn table(answers: &BTreeMap<IpAddr, String>) {
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for b in answers.values() {
        *per.entry(b.as_str()).or_default() += 1;
    }
    println!("  {:<8} {:>7}", "backend", "clients");
    for (b, n) in per {
        println!("  {b:<8} {n:>7}");
    }
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

fn fail(lab: &Lab, what: &str) -> ! {
    eprintln!(
        "demo failed: {what}\n--- daemon log ---\n{}",
        lab.daemon_log()
    );
    std::process::exit(1);
}
