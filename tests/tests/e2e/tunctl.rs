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

fn rules(lab: &Lab) -> String {
    format!(
        "{}{}{}",
        lab.lb.ip("rule show"),
        lab.lb.ip("-6 rule show"),
        lab.lb.ip("route show table 22604")
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
    let shown = rules(&lab);
    assert!(
        shown.contains("fwmark 0x584c0000/0xffff0000 lookup 22604"),
        "{shown}"
    );
    assert!(shown.contains("default dev lo"), "{shown}");
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

    lab.stop_daemon();
    let shown = rules(&lab);
    assert!(!shown.contains("22604"), "left behind: {shown}");
}

/// The socket half of tunnel probes: a probe of each kind (tcp, http, udp; IPv4 and
/// IPv6) leaves with the backend's mark, from the egress address it was given, to the
/// VIP, routed into `lo` by the installed rule — counted by nftables on the output
/// path. Without the rule the same probes leave by the default route instead.
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
        "table inet xlbtest {\n chain out {\n  type filter hook output priority 0;\n\
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
