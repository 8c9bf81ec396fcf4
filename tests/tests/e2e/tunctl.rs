//! Tunnel mode, the controller's side (issue 13), with the real daemon: `XLB_EGRESS`
//! follows the egress interface (MTU and addresses), the tunnel probes' policy rule
//! lives as long as the daemon, status and explain say what tunnel mode does.
//! (Traffic through the tunnel, decapsulation and the probe program are the tunnel
//! lab's: tests/tests/e2e/ tunnel tests.)

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use lb_common::tunnel::{EGRESS_F_V4, EGRESS_F_V6, Egress, MAP_EGRESS};
use xlb_tests::lab::{LB4, LB6, Lab, LabOptions, UDP_PORT, VIP4, service_block};

/// The pinned `XLB_EGRESS` entries: (ifindex, entry).
fn egress_entries(lab: &Lab) -> Vec<(u32, Egress)> {
    let path = lab.pin_dir.join("maps").join(MAP_EGRESS);
    let map = aya::maps::MapData::from_pin(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let map: aya::maps::HashMap<_, u32, Egress> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(map)).expect("hash map");
    map.iter().filter_map(Result::ok).collect()
}

/// Waits up to 5 s for the egress entry of the balancer's eth0 to satisfy `ok`.
fn wait_egress(lab: &Lab, what: &str, ok: impl Fn(&Egress) -> bool) -> Egress {
    let ifindex = lab.lb_ifindex();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let entries = egress_entries(lab);
        if let Some((_, e)) = entries.iter().find(|(i, e)| *i == ifindex && ok(e)) {
            return *e;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: XLB_EGRESS is {entries:?} (eth0 is {ifindex})\n{}",
            lab.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn v4_of(e: &Egress) -> Option<IpAddr> {
    (e.flags & EGRESS_F_V4 != 0).then(|| IpAddr::from(e.v4.to_ne_bytes()))
}

/// The probes' rules (both families), then the routes of table 22604 (both families).
fn rules(lab: &Lab) -> (String, String) {
    (
        format!("{}{}", lab.lb.ip("rule show"), lab.lb.ip("-6 rule show")),
        format!(
            "{}{}",
            lab.lb.ip("route show table 22604"),
            lab.lb.ip("-6 route show table 22604")
        ),
    )
}

#[test]
fn tunnel_egress_follows_the_interface_and_the_probe_rule_lives_with_the_daemon() {
    let mut lab = Lab::new(LabOptions {
        backends: 2,
        clients_v4: 1,
        clients_v6: 1,
    });
    let backends4: Vec<(IpAddr, u32)> = lab.backends.iter().map(|b| (b.addr4.into(), 1)).collect();
    let backends6: Vec<(IpAddr, u32)> = lab.backends.iter().map(|b| (b.addr6.into(), 1)).collect();
    // Checks of kind none: the probe program is not what this test is about.
    let tunnel = "forwarding = \"tunnel\"\nhealth = { kind = \"none\" }\n";
    let services = format!(
        "{}{}",
        service_block("t4", &VIP4.to_string(), UDP_PORT, "udp", tunnel, &backends4),
        service_block(
            "t46",
            &Lab::vip4(2).to_string(),
            UDP_PORT,
            "udp",
            &format!("{tunnel}tunnel_source = \"2001:db8:99::/120\"\n"),
            &backends6
        ),
    );
    lab.write_config(&services);
    lab.start_daemon();

    // The entry of eth0: its MTU and both addresses.
    let e = wait_egress(&lab, "eth0 at start", |e| e.mtu == 1500);
    assert_eq!(v4_of(&e), Some(IpAddr::V4(LB4)));
    assert_eq!(
        IpAddr::from(lb_common::addr_to_bytes(&e.v6)),
        IpAddr::V6(LB6)
    );
    let status = lab.xlb_json(&["status"]);
    let t46 = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "t46")
        .expect("t46");
    assert_eq!(t46["forwarding"], "tunnel");
    assert_eq!(t46["tunnel_source"], "2001:db8:99::/120");
    // explain: the client's outer source is in the tunnel_source prefix (4in6).
    let ex = lab.xlb_json(&["explain", "t46", "10.100.1.1"]);
    let outer: IpAddr = ex["outer_source"]
        .as_str()
        .expect("outer_source")
        .parse()
        .unwrap();
    assert!(
        outer.to_string().starts_with("2001:db8:99::"),
        "outer source {outer}"
    );
    let ex = lab.xlb_json(&["explain", "t4", "10.100.1.1"]);
    assert_eq!(ex["outer_source"], LB4.to_string());

    // An MTU change reaches the map (the data plane answers too-big with it).
    lab.lb.ip("link set eth0 mtu 1400");
    wait_egress(&lab, "after mtu 1400", |e| e.mtu == 1400);
    // An address removed and added again: the default outer source follows.
    lab.lb.ip(&format!("addr del {LB4}/16 dev eth0"));
    wait_egress(&lab, "without the IPv4 address", |e| {
        e.flags & EGRESS_F_V4 == 0
    });
    lab.lb.ip(&format!("addr add {LB4}/16 dev eth0"));
    let e = wait_egress(&lab, "with it again", |e| e.flags & EGRESS_F_V4 != 0);
    assert_eq!(v4_of(&e), Some(IpAddr::V4(LB4)));
    assert_ne!(e.flags & EGRESS_F_V6, 0);

    // The probes' policy routing while the daemon runs, gone when it stops.
    let (rules_shown, routes) = rules(&lab);
    assert_eq!(
        rules_shown
            .matches("fwmark 0x584c0000/0xffff0000 lookup 22604")
            .count(),
        2,
        "{rules_shown}"
    );
    assert!(routes.contains("default dev lo"), "{routes}");
    assert!(routes.contains("local default dev lo"), "{routes}");
    let marked = lab.lb.ip(&format!("route get {VIP4} mark 0x584c0001"));
    assert!(
        marked.contains("dev lo"),
        "a marked probe is routed {marked}"
    );

    // A service that goes takes its egress entry with it (when no other tunnel
    // service uses the interface).
    lab.xlb(&["service", "remove", "t4"]);
    wait_egress(&lab, "t46 still uses eth0", |_| true);
    lab.xlb(&["service", "remove", "t46"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !egress_entries(&lab).is_empty() {
        assert!(Instant::now() < deadline, "{:?}", egress_entries(&lab));
        std::thread::sleep(Duration::from_millis(50));
    }

    // Removed behind the daemon's back (another deployment's `xlb down`): back within
    // a couple of seconds.
    lab.lb
        .ip("rule del fwmark 0x584c0000/0xffff0000 lookup 22604");
    lab.lb
        .ip("-6 rule del fwmark 0x584c0000/0xffff0000 lookup 22604");
    lab.lb.ip("route flush table 22604");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (rules_shown, routes) = rules(&lab);
        if rules_shown.matches("lookup 22604").count() == 2 && routes.contains("default dev lo") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not reinstalled: {rules_shown} {routes}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Another xlb daemon of this namespace probes through the rule (its xlb_probe on
    // lo, attached here as that daemon would): this one's stop and `xlb down` keep it.
    let mut other = Some(lab.lb.run(|| {
        let mut e = xlb::dataplane::loader::load_xlb(&Default::default()).expect("load");
        assert!(xlb::dataplane::probe::attach(&mut e).expect("attach xlb_probe"));
        e
    }));
    lab.stop_daemon();
    let (rules_shown, _) = rules(&lab);
    assert_eq!(
        rules_shown.matches("lookup 22604").count(),
        2,
        "{rules_shown}"
    );
    let pin_dir = lab.pin_dir.display().to_string();
    let down = lab.xlb(&["down", "--pin-dir", &pin_dir]);
    assert!(
        down.contains("kept the tunnel probes' policy rule"),
        "{down}"
    );
    assert_eq!(rules(&lab).0.matches("lookup 22604").count(), 2);
    // The last one gone, `xlb down` removes it and says so.
    other.take();
    let down = lab.xlb(&["down", "--pin-dir", &pin_dir]);
    assert!(
        down.contains("removed the tunnel probes' policy rule"),
        "{down}"
    );
    let (rules_shown, routes) = rules(&lab);
    assert!(!rules_shown.contains("22604"), "left behind: {rules_shown}");
    assert!(routes.trim().is_empty(), "left behind: {routes}");
}

/// The socket half of tunnel probes: a probe of each kind (tcp, http, udp; IPv4 and
/// IPv6) leaves with the backend's mark, from the egress address it was given, to the
/// VIP, routed into `lo` by the installed rule — counted by nftables at postrouting
/// (after a reject route would have discarded them: IPv6 makes a unicast route through
/// `lo` one). Without the rule the same probes leave by the default route instead.
#[test]
fn tunnel_probes_are_marked_bound_and_routed_into_lo() {
    use xlb::{
        dataplane::probe::{install_rule_blocking, remove_rule_blocking},
        health::{Target, probe_to},
        model::HealthKind,
    };
    xlb_tests::require_root();
    let ns = xlb_tests::lab::Netns::new(format!("xtp{:x}", std::process::id() % 0xffff));
    // (No dummy module here: a veth pair inside the namespace.)
    ns.ip("link add eth0 type veth peer name eth1");
    ns.ip("link set eth0 up");
    ns.ip("link set eth1 up");
    ns.ip("addr add 10.9.0.1/24 dev eth0");
    ns.ip("addr add fd00:9::1/64 dev eth0 nodad");
    ns.ip("route add default via 10.9.0.254 dev eth0 onlink");
    ns.ip("-6 route add default via fd00:9::fe dev eth0 onlink");
    let dir = std::env::temp_dir().join(format!("xlb-tunctl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = dir.join("count.nft");
    // One counter per (family, protocol) of marked packets into lo from the egress
    // addresses to the VIPs, and one for any marked packet elsewhere.
    std::fs::write(
        &rules,
        "table inet xlbtest {\n chain out {\n  type filter hook postrouting priority 0;\n\
         meta mark 0x584c0007 oifname \"lo\" ip saddr 10.9.0.1 ip daddr 10.200.0.1 tcp dport 80 counter\n\
         meta mark 0x584c0007 oifname \"lo\" ip saddr 10.9.0.1 ip daddr 10.200.0.1 udp dport 53 counter\n\
         meta mark 0x584c0007 oifname \"lo\" ip6 saddr fd00:9::1 ip6 daddr fd00:200::1 tcp dport 80 counter\n\
         meta mark 0x584c0007 oifname \"lo\" ip6 saddr fd00:9::1 ip6 daddr fd00:200::1 udp dport 53 counter\n\
         meta mark 0x584c0007 oifname \"eth0\" counter\n }\n}\n",
    )
    .unwrap();
    xlb_tests::lab::run(ns.cmd("nft").arg("-f").arg(&rules));
    let counters = || -> Vec<u64> {
        let out = xlb_tests::lab::run(ns.cmd("nft").args(["list", "table", "inet", "xlbtest"]));
        out.split("packets ")
            .skip(1)
            .map(|s| s.split_whitespace().next().unwrap().parse().unwrap())
            .collect()
    };
    let probes = |vip: IpAddr, source: IpAddr| {
        let target = Target::Tunnel {
            vip,
            source: Some(source),
            mark: lb_common::tunnel::probe_mark(7),
        };
        let kinds = [
            HealthKind::Tcp { port: 80 },
            HealthKind::default_for(xlb::model::CheckKind::Http, 80),
            HealthKind::Udp {
                port: 53,
                send: "ping".into(),
                expect: None,
            },
        ];
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for k in &kinds {
            let p = rt.block_on(probe_to(k, &target, Duration::from_millis(300)));
            // Nothing encapsulates here (no xlb_probe): the probe fails.
            assert!(!p.ok, "{k:?}: {p:?}");
        }
    };
    ns.run(|| {
        install_rule_blocking().expect("install");
        install_rule_blocking().expect("install again (idempotent)");
        probes("10.200.0.1".parse().unwrap(), "10.9.0.1".parse().unwrap());
        probes("fd00:200::1".parse().unwrap(), "fd00:9::1".parse().unwrap());
    });
    let c = counters();
    assert_eq!(c.len(), 5, "{c:?}");
    for (i, what) in [
        "tcp v4 (tcp, http)",
        "udp v4",
        "tcp v6 (tcp, http)",
        "udp v6",
    ]
    .iter()
    .enumerate()
    {
        assert!(c[i] > 0, "no marked {what} probe into lo: {c:?}");
    }
    assert_eq!(c[4], 0, "marked probes left by eth0: {c:?}");
    let shown = ns.ip("rule show");
    assert_eq!(shown.matches("lookup 22604").count(), 1, "{shown}");

    // Without the rule the marked probes follow the main table (out of eth0): the rule
    // is what routes them.
    ns.run(|| remove_rule_blocking().expect("remove"));
    ns.run(|| remove_rule_blocking().expect("remove again"));
    assert!(!ns.ip("rule show").contains("22604"));
    ns.run(|| probes("10.200.0.1".parse().unwrap(), "10.9.0.1".parse().unwrap()));
    let after = counters();
    assert!(after[4] > 0, "{after:?}");
    assert_eq!(after[..4], c[..4], "{after:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The decapsulation state of a test, removed from bpffs however the test ends.
struct DecapRoot(String);

impl Drop for DecapRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Health of every backend of `service` as status shows it: (address, health, note).
fn healths(lab: &Lab, service: &str) -> Vec<(String, String, String)> {
    let s = lab.xlb_json(&["status"]);
    let svc = s["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == service)
        .unwrap_or_else(|| panic!("{service} not in {s}"))
        .clone();
    svc["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap().to_string(),
                b["health"].as_str().unwrap().to_string(),
                b["note"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Waits up to 5 s until `ok` holds for (address, health) of every backend of each
/// service.
fn wait_health(lab: &Lab, services: &[&str], what: &str, ok: impl Fn(&str, &str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let all: Vec<_> = services.iter().map(|s| (*s, healths(lab, s))).collect();
        if all
            .iter()
            .all(|(_, bs)| bs.iter().all(|(a, h, _)| ok(a, h)))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {all:#?}\n{}",
            lab.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Health checks of tunnel services travel the tunnel (issue 13): HTTP, TCP and UDP
/// checks of IPIP, IP6IP6 and 4in6 backends pass through `xlb_probe` and the backends'
/// `xlb decap`, traffic is served the same way, and a backend whose decapsulation is
/// taken away fails its checks (status says why) while the other stays healthy — and
/// passes again when it is back.
#[test]
fn tunnel_health_checks_travel_the_tunnel_and_a_broken_decap_fails_them() {
    use xlb_tests::lab::{HTTP_PORT, VIP6, run, xlb_bin};
    let mut lab = Lab::new(LabOptions {
        backends: 2,
        clients_v4: 6,
        clients_v6: 6,
    });
    lab.start_servers();
    let root = DecapRoot(format!("/sys/fs/bpf/xlb-decap-{}", lab.id));
    // The backends' namespace paths, so the helpers do not borrow the lab.
    let names: Vec<String> = lab.backends.iter().map(|b| b.ns.name.clone()).collect();
    // One pin root per backend namespace (each has its own eth0).
    let decap = |i: usize, args: &[&str]| {
        let dir = format!("{}/be{i}", root.0);
        let mut all = args.to_vec();
        all.extend_from_slice(&["--pin-dir", &dir]);
        run(std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", names[i]))
            .arg("--")
            .arg(xlb_bin())
            .arg("decap")
            .args(&all))
    };
    let attach = |i: usize| {
        decap(
            i,
            &[
                "attach",
                "eth0",
                "--from",
                &format!("{LB4}/32"),
                "--from",
                &format!("{LB6}/128"),
            ],
        )
    };
    attach(0);
    attach(1);
    let b4: Vec<(IpAddr, u32)> = lab.backends.iter().map(|b| (b.addr4.into(), 1)).collect();
    let b6: Vec<(IpAddr, u32)> = lab.backends.iter().map(|b| (b.addr6.into(), 1)).collect();
    let timing = "interval = \"200ms\", timeout = \"150ms\", rise = 2, fall = 2";
    let http = format!(
        "forwarding = \"tunnel\"\nhealth = {{ kind = \"http\", port = {HTTP_PORT}, path = \"/\", {timing} }}\n"
    );
    let udp = format!(
        "forwarding = \"tunnel\"\nhealth = {{ kind = \"udp\", port = {UDP_PORT}, send = \"ping\", {timing} }}\n"
    );
    let tcp = format!(
        "forwarding = \"tunnel\"\nhealth = {{ kind = \"tcp\", port = {HTTP_PORT}, {timing} }}\n"
    );
    let vip46 = Lab::vip4(2);
    lab.write_config(&format!(
        "{}{}{}",
        service_block("ipip", &VIP4.to_string(), HTTP_PORT, "tcp", &http, &b4),
        service_block("ip6ip6", &VIP6.to_string(), UDP_PORT, "udp", &udp, &b6),
        service_block("in6", &vip46.to_string(), HTTP_PORT, "tcp", &tcp, &b6),
    ));
    lab.start_daemon();
    let services = ["ipip", "ip6ip6", "in6"];
    wait_health(&lab, &services, "every check through the tunnel", |_, h| {
        h == "healthy"
    });
    // Traffic takes the same path.
    let c4 = lab.clients4.clone();
    let c6 = lab.clients6.clone();
    assert_eq!(lab.answers(&c4, IpAddr::V4(VIP4), false).len(), c4.len());
    assert_eq!(lab.answers(&c6, IpAddr::V6(VIP6), true).len(), c6.len());
    assert_eq!(lab.answers(&c4, vip46, false).len(), c4.len());

    // Backend 0 loses its decapsulation: its checks fail, backend 1's pass.
    decap(0, &["detach", "eth0"]);
    let (a0, a0v6) = (
        lab.backends[0].addr4.to_string(),
        lab.backends[0].addr6.to_string(),
    );
    let broken = |a: &str| a == a0 || a == a0v6;
    wait_health(&lab, &services, "backend 0 without decap", |a, h| {
        (h == "unhealthy") == broken(a)
    });
    let notes = healths(&lab, "ipip");
    assert!(
        notes.iter().any(|(a, _, n)| *a == a0 && !n.is_empty()),
        "no reason shown: {notes:?}"
    );
    // Every client is served by backend 1 now.
    let name1 = lab.backends[1].name.clone();
    for (c, b) in lab.answers(&c4, IpAddr::V4(VIP4), false) {
        assert_eq!(b, name1, "{c}");
    }
    attach(0);
    wait_health(&lab, &services, "backend 0 decapsulating again", |_, h| {
        h == "healthy"
    });

    // Finding 1 of the tunnel trial: the 4in6 service's probes (IPv4, VIP's family)
    // came only from eth0's IPv4 address. Moved to lo, it is still their source: a
    // broken backend is found; with no IPv4 address at all, every check fails, saying why
    // (before: no probe was sent and the backends stayed "healthy").
    lab.lb.ip(&format!("addr del {LB4}/16 dev eth0"));
    lab.lb.ip(&format!("addr add {LB4}/32 dev lo"));
    decap(0, &["detach", "eth0"]);
    wait_health(
        &lab,
        &["in6"],
        "backend 0 without decap, probed from lo",
        |a, h| (h == "unhealthy") == broken(a),
    );
    lab.lb.ip(&format!("addr del {LB4}/32 dev lo"));
    // (A probe sent before the daemon read the addresses again fails otherwise.)
    let why = "cannot probe through the tunnel: no IPv4 address on this host";
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let notes = healths(&lab, "in6");
        if notes.iter().all(|(_, h, n)| h == "unhealthy" && n == why) {
            break;
        }
        assert!(Instant::now() < deadline, "{notes:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(lab.xlb(&["status"]).contains(why));
}

/// Finding 4 of the tunnel trial: a DSR backend whose route has a gateway looped its
/// frames balancer <-> router. Now it is not used (no table share), and the text status
/// says why, naming the interface; the on-link backend takes the whole table.
#[test]
fn a_dsr_backend_behind_a_gateway_is_not_used_and_status_says_why() {
    let mut lab = Lab::new(LabOptions {
        backends: 1,
        clients_v4: 1,
        clients_v6: 1,
    });
    let gw = lab.backends[0].addr4;
    lab.lb
        .ip(&format!("route add 10.222.0.0/24 via {gw} dev eth0"));
    let routed: IpAddr = "10.222.0.5".parse().unwrap();
    let backends = [(IpAddr::V4(gw), 1), (routed, 1)];
    let none = "health = { kind = \"none\" }\n";
    lab.write_config(&service_block(
        "d",
        &VIP4.to_string(),
        UDP_PORT,
        "udp",
        none,
        &backends,
    ));
    lab.start_daemon();
    let why = format!(
        "DSR needs the backend on a directly connected network (route via {gw} on eth0); \
         use forwarding = \"tunnel\""
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = lab.xlb(&["status"]);
        if text.contains(&why) {
            break text;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let line = text.lines().find(|l| l.contains(&why)).unwrap();
    assert!(line.trim_start().starts_with("10.222.0.5"), "{text}");
    let s = lab.xlb_json(&["status"]);
    let b = &s["services"][0]["backends"];
    let share = |a: &str| {
        b.as_array()
            .unwrap()
            .iter()
            .find(|x| x["address"] == a)
            .map(|x| x["table_share"].as_f64().unwrap())
    };
    assert_eq!(share("10.222.0.5"), Some(0.0), "{b}");
    assert_eq!(share(&gw.to_string()), Some(1.0), "{b}");
}
