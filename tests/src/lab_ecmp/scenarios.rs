//! The ECMP lab's scenarios, shared by `cargo xtask lab-ecmp` (which narrates their
//! reports) and the end-to-end test (which asserts on them). Each scenario runs its steps
//! on a started lab and returns what it counted; `Display` narrates it.
//!
//! Owns: the services the nodes run, each scenario's steps and counts. Must not touch:
//! the topology (mod.rs) and BIRD's configuration (bird.rs).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::lab::{HTTP_PORT, UDP_PORT, service_block};

use super::{EcmpLab, vip4, vip6};

/// HTTP checks every 200 ms, 2 failures to fall, 2 passes to rise.
pub const HTTP_HEALTH: &str = "health = { kind = \"http\", port = 80, path = \"/\", interval = \"200ms\", timeout = \"100ms\", rise = 2, fall = 2 }\n";
pub const UDP_HEALTH: &str = "health = { kind = \"udp\", port = 53, send = \"ping\", interval = \"200ms\", timeout = \"100ms\", rise = 2, fall = 2 }\n";

/// The main services: web4 and dns4 share VIP 1 (IPv4), web6 and dns6 VIP 1 (IPv6).
pub const MAIN: [(&str, bool, bool); 4] = [
    ("web4", true, false),
    ("dns4", true, true),
    ("web6", false, false),
    ("dns6", false, true),
];

/// Timeout of one client request in a round.
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);

/// The bound for a drained or silent node to leave the router's route.
pub const WITHDRAW_BOUND: Duration = Duration::from_secs(1);

/// How many times a withdrawal is timed at most while it exceeds [`WITHDRAW_BOUND`].
pub const TIMING_ATTEMPTS: usize = 3;

/// Every time measured for one event, in ms: `first`, then `again()` (which undoes the
/// event and times it anew) while the last time exceeds `bound`, up to
/// [`TIMING_ATTEMPTS`] in all. The lab shares two cores with builds: a busy machine delays
/// the route polling and BIRD's timers, so a slow time is measured again — the bound
/// stays the issue's, and every attempt is reported.
fn timed_until_within(
    first: Duration,
    bound: Duration,
    mut again: impl FnMut() -> Duration,
) -> Vec<u128> {
    let mut times = vec![first];
    while times.last().is_some_and(|t| *t > bound) && times.len() < TIMING_ATTEMPTS {
        times.push(again());
    }
    times.iter().map(|t| t.as_millis()).collect()
}

/// "12 ms", or with retries "12 ms (timed 3 times: 1210, 1030, 12 ms)".
fn fmt_times(times: &[u128]) -> String {
    match times {
        [one] => format!("{one} ms"),
        _ => {
            let all: Vec<String> = times.iter().map(u128::to_string).collect();
            format!(
                "{} ms (timed {} times on a busy machine: {} ms)",
                times.last().copied().unwrap_or_default(),
                times.len(),
                all.join(", ")
            )
        }
    }
}

/// The `[[service]]` blocks of the main services, with backends `be` (indices into the
/// lab's backends), and the app services on VIP 2 (IPv4) with the lab's last backend
/// alone: app-web (TCP 80) and app-dns (UDP 53).
pub fn services(lab: &EcmpLab, be: &[usize]) -> String {
    let mut s = app_services(lab);
    for (name, v4, udp) in MAIN {
        let backends: Vec<(IpAddr, u32)> =
            be.iter().map(|i| (backend_addr(lab, *i, v4), 1)).collect();
        let (vip, port, proto, health) = main_target(v4, udp);
        s.push_str(&service_block(
            name,
            &vip.to_string(),
            port,
            proto,
            health,
            &backends,
        ));
    }
    s
}

/// The services of VIP 2: one backend (the lab's last), two services sharing the VIP.
/// app-web passes its packets to the local stack when it has no backend: that does not
/// count as serving.
fn app_services(lab: &EcmpLab) -> String {
    let last = lab.backends.len() - 1;
    let be = [(backend_addr(lab, last, true), 1)];
    let vip = vip4(2).to_string();
    let web = format!("no_backend = \"pass\"\n{HTTP_HEALTH}");
    service_block("app-web", &vip, HTTP_PORT, "tcp", &web, &be)
        + &service_block("app-dns", &vip, UDP_PORT, "udp", UDP_HEALTH, &be)
}

fn main_target(v4: bool, udp: bool) -> (IpAddr, u16, &'static str, &'static str) {
    let vip = if v4 { vip4(1) } else { vip6(1) };
    if udp {
        (vip, UDP_PORT, "udp", UDP_HEALTH)
    } else {
        (vip, HTTP_PORT, "tcp", HTTP_HEALTH)
    }
}

/// Backend `i`'s address of one family.
pub fn backend_addr(lab: &EcmpLab, i: usize, v4: bool) -> IpAddr {
    let b = &lab.backends[i];
    if v4 {
        IpAddr::V4(b.addr4)
    } else {
        IpAddr::V6(b.addr6)
    }
}

/// Every client of the lab, IPv4 then IPv6.
pub fn all_clients(lab: &EcmpLab) -> Vec<IpAddr> {
    lab.clients4.iter().chain(&lab.clients6).copied().collect()
}

/// The web service and VIP a client uses (its family's).
fn web_of(c: IpAddr) -> (&'static str, IpAddr) {
    if c.is_ipv4() {
        ("web4", vip4(1))
    } else {
        ("web6", vip6(1))
    }
}

/// What one round of requests showed.
pub struct Round {
    /// Client → the backend name that answered.
    pub answers: BTreeMap<IpAddr, String>,
    /// Client → the node the router forwarded its packets to (clients whose packets
    /// went to several nodes during the round are left out and counted in `split`).
    pub carriers: BTreeMap<IpAddr, usize>,
    pub split: usize,
    pub failed: Vec<String>,
}

impl Round {
    /// The clients node `n` carried.
    pub fn carried_by(&self, n: usize) -> Vec<IpAddr> {
        self.carriers
            .iter()
            .filter(|(_, x)| **x == n)
            .map(|(c, _)| *c)
            .collect()
    }
}

/// One request from each of `clients` to its family's web (HTTP) or dns (UDP) service;
/// the router's record says which node carried it.
pub fn round(lab: &EcmpLab, clients: &[IpAddr], udp: bool) -> Round {
    lab.reset_carried();
    let mut answers = BTreeMap::new();
    let mut failed = Vec::new();
    let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = clients.iter().partition(|c| c.is_ipv4());
    for (group, vip) in [(v4, vip4(1)), (v6, vip6(1))] {
        if group.is_empty() {
            continue;
        }
        for (c, r) in lab.round(&group, vip, udp, REQUEST_TIMEOUT) {
            match r {
                Ok(b) => {
                    answers.insert(c, b);
                }
                Err(e) => failed.push(e),
            }
        }
    }
    let (carriers, split) = single_carriers(lab.carried());
    Round {
        answers,
        carriers,
        split,
        failed,
    }
}

fn single_carriers(m: BTreeMap<IpAddr, BTreeSet<usize>>) -> (BTreeMap<IpAddr, usize>, usize) {
    let split = m.values().filter(|s| s.len() > 1).count();
    let one = m
        .into_iter()
        .filter(|(_, s)| s.len() == 1)
        .filter_map(|(c, s)| Some((c, *s.iter().next()?)))
        .collect();
    (one, split)
}

/// Empties every node's affinity table (a fresh baseline for a scenario).
pub fn flush_all(lab: &EcmpLab) {
    for n in &lab.nodes {
        n.api(&xlb::api::Request::AffinityFlush { service: None });
    }
}

/// Waits until every node reports every backend of every service healthy (each has
/// passed its checks; a new one is in the table).
pub fn wait_all_healthy(lab: &EcmpLab, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for n in &lab.nodes {
        loop {
            let st = n.xlb_json(&["status"]);
            let all = st["services"].as_array().is_some_and(|s| {
                s.iter().all(|svc| {
                    svc["backends"]
                        .as_array()
                        .is_some_and(|b| b.iter().all(|b| b["health"] == "healthy"))
                })
            });
            if all {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: not every backend healthy within {timeout:?}:\n{}",
                n.name,
                n.xlb(&["status"])
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Backends of every service that node `i` does not count healthy now, and how many there
/// are.
fn unhealthy(lab: &EcmpLab, i: usize) -> (usize, usize) {
    let st = lab.nodes[i].xlb_json(&["status"]);
    let backends: Vec<&serde_json::Value> = st["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["backends"].as_array())
        .flatten()
        .collect();
    let down = backends.iter().filter(|b| b["health"] != "healthy").count();
    (down, backends.len())
}

/// Adds backend `i` to every main service on node `node` (`xlb backend add`).
pub fn add_backend(lab: &EcmpLab, node: usize, i: usize, weight: u32) {
    for (name, v4, _) in MAIN {
        let addr = backend_addr(lab, i, v4).to_string();
        lab.nodes[node].xlb(&[
            "backend",
            "add",
            name,
            &addr,
            "--weight",
            &weight.to_string(),
        ]);
    }
}

/// Removes backend `i` from every main service on node `node`.
pub fn remove_backend(lab: &EcmpLab, node: usize, i: usize) {
    for (name, v4, _) in MAIN {
        let addr = backend_addr(lab, i, v4).to_string();
        lab.nodes[node].xlb(&["backend", "remove", name, &addr]);
    }
}

/// Clients per value, e.g. per backend name or per node.
pub fn tally<V: Ord + Clone>(m: &BTreeMap<IpAddr, V>) -> BTreeMap<V, usize> {
    let mut t = BTreeMap::new();
    for v in m.values() {
        *t.entry(v.clone()).or_default() += 1;
    }
    t
}

fn fmt_tally<V: fmt::Display>(t: &BTreeMap<V, usize>) -> String {
    t.iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn node_names(lab: &EcmpLab, t: &BTreeMap<usize, usize>) -> BTreeMap<String, usize> {
    t.iter()
        .map(|(i, n)| (lab.nodes[*i].name.clone(), *n))
        .collect()
}

/// How many clients in `a` reach another backend in `b` (clients missing from `b` count
/// as changed).
pub fn changed(a: &BTreeMap<IpAddr, String>, b: &BTreeMap<IpAddr, String>) -> usize {
    a.iter().filter(|(c, x)| b.get(*c) != Some(*x)).count()
}

// ---- 1. steady state ------------------------------------------------------------------

/// Scenario 1: every client makes several connections (HTTP and UDP); each reaches one
/// backend on every one, whichever node carries it.
pub struct Steady {
    pub clients: usize,
    pub rounds: usize,
    /// Clients that reached one backend per service on every request.
    pub consistent: usize,
    /// Clients the router sent to one node on every request.
    pub one_node: usize,
    pub failed: usize,
    pub per_node: BTreeMap<String, usize>,
    pub per_backend: BTreeMap<String, usize>,
    /// Clients with a live web pin on exactly the node that carried them, and no other.
    pub pinned_where_carried: usize,
    /// Clients whose web backend is the one `xlb explain` names on every node.
    pub explain_agrees: usize,
    /// `ip route get VIP from CLIENT iif eth0` on the router named the carrying node:
    /// (IPv4 agreeing, IPv4 clients, IPv6 agreeing, IPv6 clients).
    pub predicted: (usize, usize, usize, usize),
}

pub fn steady(lab: &EcmpLab, rounds: usize) -> Steady {
    let clients = all_clients(lab);
    flush_all(lab);
    let mut seen: BTreeMap<(IpAddr, bool), BTreeSet<String>> = BTreeMap::new();
    let mut nodes: BTreeMap<IpAddr, BTreeSet<usize>> = BTreeMap::new();
    let mut failed = 0;
    for r in 0..rounds {
        let udp = r % 2 == 1;
        let got = round(lab, &clients, udp);
        failed += got.failed.len();
        for (c, b) in got.answers {
            seen.entry((c, udp)).or_default().insert(b);
        }
        for (c, set) in lab.carried() {
            nodes.entry(c).or_default().extend(set);
        }
    }
    let consistent = clients
        .iter()
        .filter(|c| {
            [false, true]
                .iter()
                .all(|udp| seen.get(&(**c, *udp)).is_some_and(|s| s.len() == 1))
        })
        .count();
    let web: BTreeMap<IpAddr, String> = seen
        .iter()
        .filter(|((_, udp), s)| !udp && s.len() == 1)
        .filter_map(|((c, _), s)| Some((*c, s.iter().next()?.clone())))
        .collect();
    let (carriers, _) = single_carriers(nodes);
    let pinned_on = pinned_nodes(lab);
    let pinned_where_carried = carriers
        .iter()
        .filter(|(c, n)| pinned_on.get(*c).is_some_and(|on| on == &vec![**n]))
        .count();
    let explain_agrees = clients
        .iter()
        .filter(|c| {
            let (svc, _) = web_of(**c);
            lab.nodes.iter().all(|n| {
                let named = n.explain(svc, &[**c]).get(*c).and_then(|x| x.1);
                named.map(|b| lab.backend_name(b)) == web.get(*c).cloned()
            })
        })
        .count();
    let agree = |group: &[IpAddr], vip| {
        lab.predicted_nodes(group, vip)
            .iter()
            .filter(|(c, n)| n.is_some() && carriers.get(*c) == n.as_ref())
            .count()
    };
    let predicted = (
        agree(&lab.clients4, vip4(1)),
        lab.clients4.len(),
        agree(&lab.clients6, vip6(1)),
        lab.clients6.len(),
    );
    Steady {
        clients: clients.len(),
        rounds,
        consistent,
        one_node: carriers.len(),
        failed,
        per_node: node_names(lab, &tally(&carriers)),
        per_backend: tally(&web),
        pinned_where_carried,
        explain_agrees,
        predicted,
    }
}

/// Client → the nodes holding a live web pin for it.
pub fn pinned_nodes(lab: &EcmpLab) -> BTreeMap<IpAddr, Vec<usize>> {
    let mut out: BTreeMap<IpAddr, Vec<usize>> = BTreeMap::new();
    for (i, n) in lab.nodes.iter().enumerate() {
        for svc in ["web4", "web6"] {
            for c in n.pins(svc).keys() {
                out.entry(*c).or_default().push(i);
            }
        }
    }
    out
}

impl fmt::Display for Steady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  {} clients × {} requests (HTTP and UDP alternating): {} reached one backend per service on every request; {} requests failed",
            self.clients, self.rounds, self.consistent, self.failed
        )?;
        writeln!(
            f,
            "  the router sent {} of {} clients to one node every time; clients per node: {}",
            self.one_node,
            self.clients,
            fmt_tally(&self.per_node)
        )?;
        writeln!(
            f,
            "  web clients per backend: {}",
            fmt_tally(&self.per_backend)
        )?;
        writeln!(
            f,
            "  pinned on the node that carried them and no other: {} of {}; the backend `xlb explain` names on every node: {} of {}",
            self.pinned_where_carried, self.clients, self.explain_agrees, self.clients
        )?;
        let (a4, n4, a6, n6) = self.predicted;
        writeln!(
            f,
            "  (`ip route get VIP from CLIENT iif eth0` on the router named the carrying node for {a4} of {n4} IPv4 and {a6} of {n6} IPv6 clients)"
        )
    }
}

// ---- determinism across nodes ---------------------------------------------------------

/// The property: with the same config, every node picks the same backend for a client
/// without a pin, whatever the order in which backends were added at run time.
pub struct Determinism {
    pub clients: usize,
    /// Per node, the runtime changes it got, in order.
    pub orders: Vec<(String, Vec<String>)>,
    /// Per service (VIP, port, protocol): slots of the Maglev table in which some node's
    /// backend differs from node 0's, and the table size.
    pub table_differences: Vec<(String, usize, usize)>,
    /// (node, client) explains that said "hashed" (no pin yet).
    pub explained_hashed: usize,
    pub explained: usize,
    /// Clients for which every node's `xlb explain` names the same backend.
    pub explain_agree: usize,
    /// Per node: clients whose traffic through that node alone reached the backend the
    /// explains named.
    pub traffic_agree: Vec<(String, usize)>,
    /// Clients whose traffic through every node reached one backend.
    pub traffic_same_everywhere: usize,
    pub failed: usize,
    pub mismatches: Vec<String>,
}

/// Runs on a lab whose nodes were started with backend 0 only in every main service:
/// adds backends 1..=3 (backend 2 with weight 2) in a different order on each node (node
/// 2 also removes backend 0 and adds it back, so its ids and generations differ), waits
/// until every node has seen each pass its checks, explains every client on every node,
/// then sends every client's traffic through each node alone in turn.
pub fn determinism(lab: &EcmpLab) -> Determinism {
    let orders: [&[(char, usize)]; 3] = [
        &[('+', 1), ('+', 2), ('+', 3)],
        &[('+', 3), ('+', 2), ('+', 1)],
        &[('+', 2), ('-', 0), ('+', 3), ('+', 0), ('+', 1)],
    ];
    let mut told = Vec::new();
    for (node, order) in orders.iter().enumerate().take(lab.nodes.len()) {
        let mut names = Vec::new();
        for (op, i) in order.iter() {
            if *op == '+' {
                add_backend(lab, node, *i, if *i == 2 { 2 } else { 1 });
            } else {
                remove_backend(lab, node, *i);
            }
            names.push(format!("{op}{}", lab.backends[*i].name));
        }
        told.push((lab.nodes[node].name.clone(), names));
    }
    wait_all_healthy(lab, Duration::from_secs(10));
    flush_all(lab);
    let clients = all_clients(lab);
    let mut mismatches = Vec::new();
    let table_differences = compare_tables(lab);

    // Explain on every node.
    let mut explained: Vec<BTreeMap<IpAddr, (String, Option<IpAddr>)>> = Vec::new();
    for n in &lab.nodes {
        let mut m = n.explain("web4", &lab.clients4);
        m.extend(n.explain("web6", &lab.clients6));
        explained.push(m);
    }
    let explained_hashed = explained
        .iter()
        .flat_map(|m| m.values())
        .filter(|(d, _)| d == "hashed")
        .count();
    let expected: BTreeMap<IpAddr, String> = clients
        .iter()
        .filter_map(|c| {
            let first = explained[0].get(c)?.1?;
            Some((*c, lab.backend_name(first)))
        })
        .collect();
    let explain_agree = clients
        .iter()
        .filter(|c| {
            let all: BTreeSet<Option<IpAddr>> = explained
                .iter()
                .map(|m| m.get(*c).and_then(|x| x.1))
                .collect();
            let agree = all.len() == 1 && !all.contains(&None);
            if !agree && mismatches.len() < 5 {
                mismatches.push(format!("explain {c}: {all:?}"));
            }
            agree
        })
        .count();

    // Real traffic through each node alone.
    let mut traffic_agree = Vec::new();
    let mut through: Vec<BTreeMap<IpAddr, String>> = Vec::new();
    let mut failed = 0;
    let all: Vec<usize> = (0..lab.nodes.len()).collect();
    for k in 0..lab.nodes.len() {
        for i in (0..lab.nodes.len()).filter(|i| *i != k) {
            lab.drain(i);
        }
        lab.wait_next_hops(&lab.vips, &[k], Duration::from_secs(5));
        let got = round(lab, &clients, false);
        failed += got.failed.len();
        let agree = got
            .answers
            .iter()
            .filter(|(c, b)| expected.get(*c) == Some(*b) && got.carriers.get(*c) == Some(&k))
            .count();
        traffic_agree.push((lab.nodes[k].name.clone(), agree));
        through.push(got.answers);
        for i in (0..lab.nodes.len()).filter(|i| *i != k) {
            lab.undrain(i);
        }
        lab.wait_next_hops(&lab.vips, &all, Duration::from_secs(5));
    }
    let traffic_same_everywhere = clients
        .iter()
        .filter(|c| {
            let set: BTreeSet<Option<&String>> = through.iter().map(|m| m.get(*c)).collect();
            set.len() == 1 && !set.contains(&None)
        })
        .count();
    Determinism {
        clients: clients.len(),
        orders: told,
        table_differences,
        explained_hashed,
        explained: explained.iter().map(|m| m.len()).sum(),
        explain_agree,
        traffic_agree,
        traffic_same_everywhere,
        failed,
        mismatches,
    }
}

/// Every node's Maglev tables compared slot by slot with node 0's.
fn compare_tables(lab: &EcmpLab) -> Vec<(String, usize, usize)> {
    let tables: Vec<_> = lab.nodes.iter().map(|n| n.maglev_tables()).collect();
    tables[0]
        .iter()
        .map(|((vip, port, proto), slots)| {
            let differing = (0..slots.len())
                .filter(|i| {
                    tables[1..].iter().any(|t| {
                        t.get(&(*vip, *port, *proto)).and_then(|s| s.get(*i)) != Some(&slots[*i])
                    })
                })
                .count();
            (format!("{vip}:{port}/{proto}"), differing, slots.len())
        })
        .collect()
}

impl fmt::Display for Determinism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, o) in &self.orders {
            writeln!(f, "  {n}: started with be0, then {}", o.join(" "))?;
        }
        let differing: usize = self.table_differences.iter().map(|t| t.1).sum();
        let slots: usize = self.table_differences.iter().map(|t| t.2).sum();
        writeln!(
            f,
            "  Maglev tables of {} services compared slot by slot across the nodes: {differing} of {slots} slots differ",
            self.table_differences.len()
        )?;
        writeln!(
            f,
            "  `xlb explain` for {} clients on every node ({} explains, {} of them \"hashed\": no pin): the same backend on every node for {} of {}",
            self.clients, self.explained, self.explained_hashed, self.explain_agree, self.clients
        )?;
        for (n, agree) in &self.traffic_agree {
            writeln!(
                f,
                "  all traffic through {n} alone (the others withdrawn): {agree} of {} clients reached the explained backend",
                self.clients
            )?;
        }
        writeln!(
            f,
            "  clients that reached one backend through every node: {} of {}; requests failed: {}",
            self.traffic_same_everywhere, self.clients, self.failed
        )?;
        for m in &self.mismatches {
            writeln!(f, "  mismatch: {m}")?;
        }
        Ok(())
    }
}

// ---- 3. daemon SIGKILL ----------------------------------------------------------------

/// Scenario 3: one node's daemon is SIGKILLed, then started again; then stopped as a
/// service manager does (SIGTERM) and started again. Neither withdraws anything.
pub struct DaemonKill {
    pub node: String,
    /// Next-hop sets the router had while the daemon was dead and restarting (one entry
    /// per change seen).
    pub routes_seen: Vec<Vec<usize>>,
    /// VIP protocols the node's BIRD disabled meanwhile (from its log: exact, where the
    /// route watch polls).
    pub vip_disables: usize,
    pub clients: usize,
    pub answered_dead: usize,
    pub moved_node_dead: usize,
    pub moved_backend_dead: usize,
    pub restart_ms: u128,
    pub answered_after: usize,
    pub moved_backend_after: usize,
    /// The SIGTERM restart: from the signal to the new daemon answering, and the round
    /// after it.
    pub term_restart_ms: u128,
    pub answered_term: usize,
    pub moved_node_term: usize,
    pub moved_backend_term: usize,
}

pub fn daemon_kill(lab: &mut EcmpLab, node: usize) -> DaemonKill {
    let clients = all_clients(lab);
    let before = round(lab, &clients, false);
    let watch = RouteWatch::start(lab);
    let (_, disables_before) = lab.nodes[node].bird_vip_changes();
    lab.nodes[node].kill_daemon();
    std::thread::sleep(Duration::from_millis(1500));
    let dead = round(lab, &clients, false);
    let t = Instant::now();
    lab.nodes[node].start_daemon();
    let restart_ms = t.elapsed().as_millis();
    lab.nodes[node].wait_announce_synced(Duration::from_secs(5));
    let after = round(lab, &clients, false);
    let t = Instant::now();
    lab.nodes[node].stop_daemon();
    lab.nodes[node].start_daemon();
    let term_restart_ms = t.elapsed().as_millis();
    lab.nodes[node].wait_announce_synced(Duration::from_secs(5));
    let term = round(lab, &clients, false);
    let routes_seen = watch.stop();
    let moved_node = |r: &Round| {
        before
            .carriers
            .iter()
            .filter(|(c, n)| r.carriers.get(*c) != Some(*n))
            .count()
    };
    DaemonKill {
        node: lab.nodes[node].name.clone(),
        routes_seen,
        vip_disables: lab.nodes[node].bird_vip_changes().1 - disables_before,
        clients: clients.len(),
        answered_dead: dead.answers.len(),
        moved_node_dead: moved_node(&dead),
        moved_backend_dead: changed(&before.answers, &dead.answers),
        restart_ms,
        answered_after: after.answers.len(),
        moved_backend_after: changed(&before.answers, &after.answers),
        term_restart_ms,
        answered_term: term.answers.len(),
        moved_node_term: moved_node(&term),
        moved_backend_term: changed(&before.answers, &term.answers),
    }
}

impl fmt::Display for DaemonKill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  {}'s xlb daemon SIGKILLed: for 1.5 s without it {} of {} clients answered, {} moved to another node, {} changed backend",
            self.node,
            self.answered_dead,
            self.clients,
            self.moved_node_dead,
            self.moved_backend_dead
        )?;
        writeln!(
            f,
            "  restarted (ready in {} ms): {} of {} answered, {} changed backend",
            self.restart_ms, self.answered_after, self.clients, self.moved_backend_after
        )?;
        writeln!(
            f,
            "  then stopped with SIGTERM and started again (ready {} ms after the signal): {} of {} answered, {} moved to another node, {} changed backend",
            self.term_restart_ms,
            self.answered_term,
            self.clients,
            self.moved_node_term,
            self.moved_backend_term
        )?;
        writeln!(
            f,
            "  the router's next hops for the VIPs throughout: {}; VIP protocols {}'s BIRD disabled: {}",
            fmt_routes(&self.routes_seen),
            self.node,
            self.vip_disables
        )
    }
}

fn fmt_routes(r: &[Vec<usize>]) -> String {
    r.iter()
        .map(|hops| {
            let names: Vec<String> = hops.iter().map(|i| format!("n{i}")).collect();
            format!("[{}]", names.join(" "))
        })
        .collect::<Vec<_>>()
        .join(" → ")
}

/// Polls the router's next hops for the IPv4 VIP every 5 ms on a thread and records
/// every distinct set it sees, in order.
struct RouteWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<Vec<Vec<usize>>>,
}

impl RouteWatch {
    fn start(lab: &EcmpLab) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ns = lab.router.name.clone();
        let gateways: Vec<String> = lab.nodes.iter().map(|n| n.addr4.to_string()).collect();
        let vip = vip4(1);
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut seen: Vec<Vec<usize>> = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let out = std::process::Command::new("ip")
                    .args(["-n", &ns, "-4", "route", "show", &vip.to_string()])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                let hops: Vec<usize> = gateways
                    .iter()
                    .enumerate()
                    .filter(|(_, g)| out.contains(&format!("via {g} ")))
                    .map(|(i, _)| i)
                    .collect();
                if seen.last() != Some(&hops) {
                    seen.push(hops);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            seen
        });
        Self { stop, handle }
    }

    fn stop(self) -> Vec<Vec<usize>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

// ---- 4. a silent node -----------------------------------------------------------------

/// Scenario 4: a whole node goes silent (its link drops); BFD withdraws it.
pub struct Silent {
    pub node: String,
    pub clients_of_node: usize,
    /// From the link drop to the router's route without the node, every attempt (see
    /// [`timed_until_within`]; the last one counts).
    pub withdrawn_ms: Vec<u128>,
    pub answered: usize,
    pub changed_backend: usize,
    pub others_changed_backend: usize,
    pub back_ms: u128,
    /// Backends (per service) the node did not yet count healthy when the router sent it
    /// traffic again, of how many: cut off from the backends too, it marked them down,
    /// and it announces as soon as one service can serve. The round after its return
    /// waits until they are all healthy (see the README's limits).
    pub unhealthy_on_return: (usize, usize),
    pub returned: usize,
    pub returned_changed_backend: usize,
}

pub fn silent(lab: &EcmpLab, node: usize) -> Silent {
    let clients = all_clients(lab);
    let before = round(lab, &clients, false);
    let theirs = before.carried_by(node);
    let others: Vec<usize> = (0..lab.nodes.len()).filter(|i| *i != node).collect();
    let all: Vec<usize> = (0..lab.nodes.len()).collect();
    let silence = || {
        lab.set_silent(node, true);
        lab.wait_next_hops(&lab.vips, &others, Duration::from_secs(5))
    };
    let first = silence();
    let withdrawn_ms = timed_until_within(first, WITHDRAW_BOUND, || {
        lab.set_silent(node, false);
        lab.wait_next_hops(&lab.vips, &all, Duration::from_secs(15));
        silence()
    });
    let during = round(lab, &clients, false);
    let answered = theirs
        .iter()
        .filter(|c| during.answers.contains_key(*c) && during.carriers.get(*c) != Some(&node))
        .count();
    let changed_backend = theirs
        .iter()
        .filter(|c| during.answers.get(*c) != before.answers.get(*c))
        .count();
    let others_changed_backend = changed(&before.answers, &during.answers) - changed_backend;
    lab.set_silent(node, false);
    let back = lab.wait_next_hops(&lab.vips, &all, Duration::from_secs(15));
    let unhealthy_on_return = unhealthy(lab, node);
    wait_all_healthy(lab, Duration::from_secs(10));
    let after = round(lab, &clients, false);
    let returned: Vec<IpAddr> = theirs
        .iter()
        .filter(|c| after.carriers.get(*c) == Some(&node))
        .copied()
        .collect();
    Silent {
        node: lab.nodes[node].name.clone(),
        clients_of_node: theirs.len(),
        withdrawn_ms,
        answered,
        changed_backend,
        others_changed_backend,
        back_ms: back.as_millis(),
        unhealthy_on_return,
        returned: returned.len(),
        returned_changed_backend: returned
            .iter()
            .filter(|c| after.answers.get(*c) != before.answers.get(*c))
            .count(),
    }
}

impl fmt::Display for Silent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  {}'s link dropped: BFD withdrew it from the router after {}",
            self.node,
            fmt_times(&self.withdrawn_ms)
        )?;
        writeln!(
            f,
            "  its {} clients, now through the other nodes: {} answered, {} changed backend (other clients that changed: {})",
            self.clients_of_node, self.answered, self.changed_backend, self.others_changed_backend
        )?;
        writeln!(
            f,
            "  link back: BGP re-established and {} announced again after {} ms ({} of {} backends not yet healthy there again); once all were, {} clients returned to it, {} changed backend",
            self.node,
            self.back_ms,
            self.unhealthy_on_return.0,
            self.unhealthy_on_return.1,
            self.returned,
            self.returned_changed_backend
        )
    }
}

// ---- 2. node drain --------------------------------------------------------------------

/// Scenario 2: one node drained; its clients move to the others and keep their backend.
pub struct Drain {
    pub node: String,
    pub clients_of_node: usize,
    /// From the drain command to the router's route without the node, every attempt
    /// (see [`timed_until_within`]; the last one counts).
    pub withdrawn_ms: Vec<u128>,
    pub moved: usize,
    pub changed_backend: usize,
    /// Clients of the other nodes that the router's hash-threshold moved between them
    /// (a next hop left the group), and how many of those changed backend.
    pub shuffled: usize,
    pub shuffled_changed: usize,
    pub failed: usize,
    /// Connections opened through the node before the drain and used after it: (still
    /// answered by the same backend, opened).
    pub held: (usize, usize),
}

pub fn drain(lab: &EcmpLab, node: usize) -> Drain {
    let clients = all_clients(lab);
    let before = round(lab, &clients, false);
    let theirs = before.carried_by(node);
    let held_clients: Vec<IpAddr> = theirs.iter().step_by(4).copied().collect();
    let conns = lab.open_connections(&held_clients);
    let others: Vec<usize> = (0..lab.nodes.len()).filter(|i| *i != node).collect();
    let drain = || {
        let t = Instant::now();
        lab.drain(node);
        lab.wait_next_hops(&lab.vips, &others, Duration::from_secs(5));
        t.elapsed()
    };
    let first = drain();
    let held = super::finish_requests(conns);
    let after = round(lab, &clients, false);
    let moves = Moves::between(&before, &after, node);
    let withdrawn_ms = timed_until_within(first, WITHDRAW_BOUND, || {
        undrain(lab, node);
        drain()
    });
    Drain {
        node: lab.nodes[node].name.clone(),
        clients_of_node: theirs.len(),
        withdrawn_ms,
        moved: moves.off.len(),
        changed_backend: moves.off_changed,
        shuffled: moves.shuffled.len(),
        shuffled_changed: moves.shuffled_changed,
        failed: after.failed.len(),
        held: (
            held.iter()
                .filter(|(c, r)| r.as_ref().ok() == before.answers.get(*c))
                .count(),
            held.len(),
        ),
    }
}

/// Who moved between two rounds around a change of node `node`.
struct Moves {
    /// Clients `node` carried before, carried by another node after.
    off: Vec<IpAddr>,
    off_changed: usize,
    /// Clients of the other nodes that changed node.
    shuffled: Vec<IpAddr>,
    shuffled_changed: usize,
    /// Clients that kept their node but changed backend.
    stayed_changed: usize,
}

impl Moves {
    fn between(before: &Round, after: &Round, node: usize) -> Self {
        let moved = |c: &IpAddr| after.carriers.get(c) != before.carriers.get(c);
        let changed = |c: &IpAddr| after.answers.get(c) != before.answers.get(c);
        let off: Vec<IpAddr> = before.carried_by(node).into_iter().filter(moved).collect();
        let shuffled: Vec<IpAddr> = before
            .carriers
            .iter()
            .filter(|(c, n)| **n != node && moved(c))
            .map(|(c, _)| *c)
            .collect();
        let stayed_changed = before
            .carriers
            .keys()
            .filter(|c| !moved(c) && changed(c))
            .count();
        Self {
            off_changed: off.iter().filter(|c| changed(c)).count(),
            shuffled_changed: shuffled.iter().filter(|c| changed(c)).count(),
            off,
            shuffled,
            stayed_changed,
        }
    }
}

fn pct(part: usize, whole: usize) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.0}%", 100.0 * part as f64 / whole as f64)
    }
}

impl fmt::Display for Drain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  {} drained: the router dropped it {} after the command",
            self.node,
            fmt_times(&self.withdrawn_ms)
        )?;
        writeln!(
            f,
            "  its {} clients: {} now through the other nodes, {} changed backend; requests failed: {}",
            self.clients_of_node, self.moved, self.changed_backend, self.failed
        )?;
        writeln!(
            f,
            "  clients of the other nodes moved between them by the router's hash-threshold ECMP: {}, of which {} changed backend",
            self.shuffled, self.shuffled_changed
        )?;
        writeln!(
            f,
            "  connections opened through {} before the drain and used after it: {} of {} answered by the same backend",
            self.node, self.held.0, self.held.1
        )
    }
}

/// Announces node `node` again and waits for the router to use every node.
pub fn undrain(lab: &EcmpLab, node: usize) -> u128 {
    let t = Instant::now();
    lab.undrain(node);
    let all: Vec<usize> = (0..lab.nodes.len()).collect();
    lab.wait_next_hops(&lab.vips, &all, Duration::from_secs(5));
    t.elapsed().as_millis()
}

// ---- 6. a backend added, then a node drained ------------------------------------------

/// Scenario 6: a backend added on every node moves no pinned client; a node drained
/// afterwards sends its clients to nodes where they have no pin, and the new table
/// decides them: ≈1/(N+1) change backend.
pub struct AddThenDrain {
    pub added: String,
    /// The services' total weight after the add (the new backend has weight 1, so it
    /// takes ≈1/total of the table).
    pub total_weight: usize,
    pub clients: usize,
    /// Clients that changed backend when the backend was added (on any node).
    pub changed_by_add: usize,
    pub node: String,
    pub moved_off: usize,
    pub moved_off_changed: usize,
    pub shuffled: usize,
    pub shuffled_changed: usize,
    pub stayed_changed: usize,
}

/// Starts from empty affinity tables (pins of earlier scenarios would otherwise decide
/// where clients land), adds backend `add` on every node, drains `node`, undrains it.
pub fn add_then_drain(lab: &EcmpLab, add: usize, node: usize, total_weight: usize) -> AddThenDrain {
    let clients = all_clients(lab);
    flush_all(lab);
    let base = round(lab, &clients, false);
    for n in 0..lab.nodes.len() {
        add_backend(lab, n, add, 1);
    }
    wait_all_healthy(lab, Duration::from_secs(10));
    let added = round(lab, &clients, false);
    lab.drain(node);
    let others: Vec<usize> = (0..lab.nodes.len()).filter(|i| *i != node).collect();
    lab.wait_next_hops(&lab.vips, &others, Duration::from_secs(5));
    let drained = round(lab, &clients, false);
    let moves = Moves::between(&added, &drained, node);
    undrain(lab, node);
    AddThenDrain {
        added: lab.backends[add].name.clone(),
        total_weight,
        clients: clients.len(),
        changed_by_add: changed(&base.answers, &added.answers),
        node: lab.nodes[node].name.clone(),
        moved_off: moves.off.len(),
        moved_off_changed: moves.off_changed,
        shuffled: moves.shuffled.len(),
        shuffled_changed: moves.shuffled_changed,
        stayed_changed: moves.stayed_changed,
    }
}

impl fmt::Display for AddThenDrain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  {} added on every node (weight 1 of {} in all): {} of {} pinned clients changed backend",
            self.added, self.total_weight, self.changed_by_add, self.clients
        )?;
        writeln!(
            f,
            "  then {} drained: {} of its clients moved to nodes where they had no pin; {} of them changed backend ({}; ≈1/{} = {} expected)",
            self.node,
            self.moved_off,
            self.moved_off_changed,
            pct(self.moved_off_changed, self.moved_off),
            self.total_weight,
            pct(1, self.total_weight)
        )?;
        writeln!(
            f,
            "  hash-threshold ECMP also moved {} clients between the other nodes: {} of them changed backend ({}); clients that kept their node and changed: {}",
            self.shuffled,
            self.shuffled_changed,
            pct(self.shuffled_changed, self.shuffled),
            self.stayed_changed
        )
    }
}

// ---- 7. a node returns after a backend was added --------------------------------------

/// Scenario 7: a drained node comes back after a backend was added meanwhile — with its
/// pinned state (its pins decide the returning clients), and after a restart that lost it
/// (the new table decides them).
pub struct Return {
    pub node: String,
    pub added: String,
    /// The services' total weight after the add.
    pub total_weight: usize,
    /// While drained: clients of the node that moved, and how many changed backend.
    pub moved_off: usize,
    pub moved_off_changed: usize,
    /// Clients that changed backend when the backend was added.
    pub changed_by_add: usize,
    /// Back: clients carried by the node again, and how many changed backend compared
    /// with where they were served while it was drained.
    pub returned: usize,
    pub returned_changed: usize,
    /// Other clients that changed backend when the node came back.
    pub others_changed: usize,
    /// After the restart that lost the pinned state (none without one): VIP protocols
    /// the node's BIRD enabled before the undrain (from its log; the drain was saved with
    /// the runtime changes, so none).
    pub enabled_while_drained: Option<usize>,
}

/// One return: flush every table, baseline, drain `node`, add backend `add` everywhere,
/// optionally restart the node losing its pinned state (as after a reboot; it stays
/// drained), undrain it.
pub fn drain_add_return(
    lab: &mut EcmpLab,
    node: usize,
    add: usize,
    lose_state: bool,
    total_weight: usize,
) -> Return {
    let clients = all_clients(lab);
    flush_all(lab);
    let base = round(lab, &clients, false);
    lab.drain(node);
    let others: Vec<usize> = (0..lab.nodes.len()).filter(|i| *i != node).collect();
    lab.wait_next_hops(&lab.vips, &others, Duration::from_secs(5));
    let drained = round(lab, &clients, false);
    let off = Moves::between(&base, &drained, node);
    for n in 0..lab.nodes.len() {
        add_backend(lab, n, add, 1);
    }
    wait_all_healthy(lab, Duration::from_secs(10));
    let added = round(lab, &clients, false);
    let mut enabled_while_drained = None;
    if lose_state {
        let (enables, _) = lab.nodes[node].bird_vip_changes();
        lab.nodes[node].reboot();
        wait_all_healthy(lab, Duration::from_secs(10));
        lab.nodes[node].wait_announce_synced(Duration::from_secs(5));
        enabled_while_drained = Some(lab.nodes[node].bird_vip_changes().0 - enables);
    }
    undrain(lab, node);
    let back = round(lab, &clients, false);
    let returned: Vec<IpAddr> = back
        .carried_by(node)
        .into_iter()
        .filter(|c| added.carriers.get(c) != Some(&node))
        .collect();
    let returned_changed = returned
        .iter()
        .filter(|c| back.answers.get(*c) != added.answers.get(*c))
        .count();
    Return {
        node: lab.nodes[node].name.clone(),
        added: lab.backends[add].name.clone(),
        total_weight,
        moved_off: off.off.len(),
        moved_off_changed: off.off_changed,
        changed_by_add: changed(&drained.answers, &added.answers),
        returned: returned.len(),
        returned_changed,
        others_changed: changed(&added.answers, &back.answers) - returned_changed,
        enabled_while_drained,
    }
}

impl fmt::Display for Return {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  {} drained: {} of its clients moved, {} changed backend; {} added on every node meanwhile (weight 1 of {}): {} pinned clients changed backend",
            self.node,
            self.moved_off,
            self.moved_off_changed,
            self.added,
            self.total_weight,
            self.changed_by_add
        )?;
        if let Some(n) = self.enabled_while_drained {
            writeln!(
                f,
                "  {} restarted while drained, its pinned state lost: still drained ({n} VIP protocols enabled by its BIRD before the undrain)",
                self.node
            )?;
        }
        writeln!(
            f,
            "  {} undrained: {} clients returned to it, {} of them changed backend ({}; ≈1/{} = {} if the new table decided them all); other clients that changed: {}",
            self.node,
            self.returned,
            self.returned_changed,
            pct(self.returned_changed, self.returned),
            self.total_weight,
            pct(1, self.total_weight),
            self.others_changed
        )
    }
}

// ---- 5. a service's last backend unhealthy on every node -------------------------------

/// Scenario 5: VIP 2 carries app-web (TCP, `no_backend = "pass"`) and app-dns (UDP), one
/// backend each, the same one. Its HTTP check failing alone leaves the VIP announced
/// (app-dns still serves); its server stopping withdraws the VIP on every node (app-web
/// passing to the local stack is not serving); its recovery announces it again.
pub struct LastBackend {
    pub vip: IpAddr,
    /// Nodes announcing the VIP after app-web lost its backend (app-dns still serving).
    pub nodes_one_service_down: Vec<usize>,
    /// What a node's `xlb status` said about the VIP then.
    pub why_one_service_down: String,
    /// From the server's stop to the router having no route for the VIP.
    pub withdrawn_ms: u128,
    pub why_withdrawn: String,
    /// Requests to the VIP while withdrawn that were answered (of `asked`).
    pub answered_withdrawn: usize,
    pub asked: usize,
    /// From the server's restart to the VIP announced by every node again (as soon as
    /// one of its services can serve).
    pub back_ms: u128,
    /// HTTP requests answered once app-web's check passed on every node too (of `asked`).
    pub answered_back: usize,
    /// The router's next hops for VIP 1 throughout.
    pub main_routes: Vec<Vec<usize>>,
}

pub fn last_backend(lab: &mut EcmpLab) -> LastBackend {
    let vip = vip4(2);
    let last = lab.backends.len() - 1;
    let all: Vec<usize> = (0..lab.nodes.len()).collect();
    let sample: Vec<IpAddr> = lab.clients4.iter().take(30).copied().collect();
    let watch = RouteWatch::start(lab);
    lab.wait_next_hops(&[vip], &all, Duration::from_secs(5));
    // The HTTP check fails: app-web has no healthy backend, app-dns has one.
    let ns = &lab.backends[last].ns;
    run_ok(
        ns.cmd("nft").args(["-f", "-"]),
        "table inet xlbblock {\n chain block {\n  type filter hook input priority 0;\n  tcp dport 80 drop\n }\n}\n",
    );
    wait_status(lab, "app-web", "unhealthy");
    let nodes_one_service_down = lab.next_hops(vip);
    let why_one_service_down = vip_why(lab, 0, vip);
    // The server stops: no service of the VIP can serve.
    let t = Instant::now();
    lab.stop_server(last);
    lab.wait_next_hops(&[vip], &[], Duration::from_secs(5));
    let withdrawn_ms = t.elapsed().as_millis();
    let why_withdrawn = vip_why(lab, 0, vip);
    let answered_withdrawn = lab
        .round(&sample, vip, true, Duration::from_millis(200))
        .iter()
        .filter(|(_, r)| r.is_ok())
        .count();
    // It recovers.
    let _ = lab.backends[last]
        .ns
        .cmd("nft")
        .args(["delete", "table", "inet", "xlbblock"])
        .status();
    let t = Instant::now();
    lab.start_server(last);
    lab.wait_next_hops(&[vip], &all, Duration::from_secs(10));
    let back_ms = t.elapsed().as_millis();
    wait_status(lab, "app-web", "healthy");
    let answered_back = lab
        .round(&sample, vip, false, REQUEST_TIMEOUT)
        .iter()
        .filter(|(_, r)| r.is_ok())
        .count();
    LastBackend {
        vip,
        nodes_one_service_down,
        why_one_service_down,
        withdrawn_ms,
        why_withdrawn,
        answered_withdrawn,
        asked: sample.len(),
        back_ms,
        answered_back,
        main_routes: watch.stop(),
    }
}

/// Runs `cmd` with `input` on its stdin; panics when it fails.
fn run_ok(cmd: &mut std::process::Command, input: &str) {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).expect("stdin");
    }
    let status = child.wait().expect("wait");
    assert!(status.success(), "{cmd:?} failed: {status}");
}

/// Waits until every node's `xlb status` shows every backend of `service` with `health`.
fn wait_status(lab: &EcmpLab, service: &str, health: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    for n in &lab.nodes {
        loop {
            let st = n.xlb_json(&["status"]);
            let done = st["services"].as_array().into_iter().flatten().any(|s| {
                s["name"] == service
                    && s["backends"]
                        .as_array()
                        .is_some_and(|b| b.iter().all(|b| b["health"] == health))
            });
            if done {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {service} not {health}",
                n.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `state: reason` of `vip` in node `i`'s `xlb status --json`.
pub fn vip_why(lab: &EcmpLab, i: usize, vip: IpAddr) -> String {
    let st = lab.nodes[i].xlb_json(&["status"]);
    st["announce"]["vips"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["vip"] == vip.to_string())
        .map(|v| {
            format!(
                "{}: {}",
                v["state"].as_str().unwrap_or("?"),
                v["reason"].as_str().unwrap_or("?")
            )
        })
        .unwrap_or_default()
}

impl fmt::Display for LastBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  {}: app-web's only backend fails its HTTP check on every node (app-web: no_backend = \"pass\"): still announced by {} nodes (n0 says \"{}\")",
            self.vip,
            self.nodes_one_service_down.len(),
            self.why_one_service_down
        )?;
        writeln!(
            f,
            "  its server stops (app-dns loses it too): withdrawn by every node after {} ms (n0 says \"{}\"); {} of {} requests answered meanwhile",
            self.withdrawn_ms, self.why_withdrawn, self.answered_withdrawn, self.asked
        )?;
        writeln!(
            f,
            "  server back: announced by every node again after {} ms; once app-web's check passed on every node too, {} of {} HTTP requests answered",
            self.back_ms, self.answered_back, self.asked
        )?;
        writeln!(
            f,
            "  the router's next hops for {} throughout: {}",
            vip4(1),
            fmt_routes(&self.main_routes)
        )
    }
}
