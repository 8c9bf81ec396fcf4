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
