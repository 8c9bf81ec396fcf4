//! `xlb decap` (README, "Tunnel backends"): the decapsulation program attached through
//! the production path (`xlb::decap::attach`, pinned under a test root of bpffs)
//! on a veth of a private namespace, then run with BPF_PROG_TEST_RUN on the same pinned
//! maps: IPIP, IP6IP6 and 4in6 from an allowed source to a local address come out as the
//! exact inner frame; everything else passes byte for byte, each with its counter.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use lb_common::decap::DecapStat;
use xlb::decap::{self, Attached, Prefix};
use xlb_tests::{
    enter_private_netns,
    fixtures::{CLIENT4, CLIENT6, VIP4, VIP6},
    harness::{XdpAction, run_once},
    lab::Netns,
    packet::{ETH_IPV4, ETH_IPV6, V4Opts, eth, ip, raw, tcp, udp},
    require_root, sh,
};

/// The backend's own addresses (the outer destinations) and the balancer's (sources).
const HOST4: &str = "10.1.0.11";
const HOST6: &str = "fd00:1::11";
const LB4: &str = "10.1.0.2";
const LB6: &str = "fd00:1::2";

fn a(s: &str) -> IpAddr {
    s.parse().expect("address")
}

/// `inner` (an IP packet) in an outer IP header from `src` to `dst`.
fn tunneled(src: IpAddr, dst: IpAddr, inner: &(u16, Vec<u8>)) -> Vec<u8> {
    let proto = if inner.0 == ETH_IPV4 { 4 } else { 41 };
    let (et, p) = ip(src, dst, &raw(proto, &inner.1), &V4Opts::default());
    eth(et, &p, &[])
}

fn inner4() -> (u16, Vec<u8>) {
    ip(CLIENT4, VIP4, &tcp(40000, 80, b"GET /"), &V4Opts::default())
}

fn inner6() -> (u16, Vec<u8>) {
    ip(CLIENT6, VIP6, &udp(5353, 53, b"who"), &V4Opts::default())
}

/// (description, input frame, output frame when not the input, the counter that moves)
type Row = (&'static str, Vec<u8>, Option<Vec<u8>>, DecapStat);

struct Iface(PathBuf, String);

impl Drop for Iface {
    fn drop(&mut self) {
        let _ = decap::detach(&self.0, &self.1);
    }
}

fn counters(root: &Path, ifname: &str) -> Vec<u64> {
    decap::stats(root, ifname)
        .expect("stats")
        .into_iter()
        .map(|(_, n)| n)
        .collect()
}

#[test]
fn decap_strips_allowed_tunnels_and_passes_the_rest_untouched() {
    require_root();
    enter_private_netns();
    // Unique per process: the pin directory is on the host's bpffs.
    let name = "xdc0".to_string();
    let root = PathBuf::from(format!("/sys/fs/bpf/xlb-decap-test-{}", std::process::id()));
    sh(&format!("ip link add {name} type veth peer name {name}p"));
    sh(&format!("ip link set {name} up && ip link set {name}p up"));
    sh(&format!("ip addr add {HOST4}/24 dev {name}"));
    sh(&format!("ip addr add {HOST6}/64 dev {name} nodad"));
    let from: Vec<Prefix> = ["10.1.0.0/28", "fd00:1::/120"]
        .iter()
        .map(|p| p.parse().expect("prefix"))
        .collect();
    let done = decap::attach(&root, &name, &from, true).expect("attach");
    assert_eq!(done, Attached::New);
    let iface = Iface(root.clone(), name.clone());
    assert!(
        decap::dir_of(&root, &name).join("link").exists(),
        "link not pinned"
    );

    let mut ebpf = decap::load(&root, &name).expect("load on the pinned maps");
    let prog: &mut aya::programs::Xdp = ebpf
        .program_mut(lb_common::decap::PROG_DECAP)
        .expect("program")
        .try_into()
        .expect("xdp");
    let rows: Vec<Row> = vec![
        (
            "IPIP: the inner IPv4 packet",
            tunneled(a(LB4), a(HOST4), &inner4()),
            Some(eth(ETH_IPV4, &inner4().1, &[])),
            DecapStat::Ipip,
        ),
        (
            "IP6IP6: the inner IPv6 packet",
            tunneled(a(LB6), a(HOST6), &inner6()),
            Some(eth(ETH_IPV6, &inner6().1, &[])),
            DecapStat::Ip6ip6,
        ),
        (
            "4in6: the inner IPv4 packet",
            tunneled(a(LB6), a(HOST6), &inner4()),
            Some(eth(ETH_IPV4, &inner4().1, &[])),
            DecapStat::FourIn6,
        ),
        (
            "IPIP from outside the allowed prefixes",
            tunneled(a("10.1.0.99"), a(HOST4), &inner4()),
            None,
            DecapStat::PassSourceNotAllowed,
        ),
        (
            "IP6IP6 from outside the allowed prefixes",
            tunneled(a("fd00:1::1:2"), a(HOST6), &inner6()),
            None,
            DecapStat::PassSourceNotAllowed,
        ),
        (
            "IPIP to another host",
            tunneled(a(LB4), a("10.1.0.12"), &inner4()),
            None,
            DecapStat::PassNotLocal,
        ),
        (
            "plain TCP to the host",
            eth(
                ETH_IPV4,
                &ip(a(LB4), a(HOST4), &tcp(1, 80, b""), &V4Opts::default()).1,
                &[],
            ),
            None,
            DecapStat::PassNotTunnel,
        ),
        (
            "IPIP whose inner header is cut",
            {
                let mut f = tunneled(a(LB4), a(HOST4), &inner4());
                f.truncate(14 + 20 + 10);
                f
            },
            None,
            DecapStat::PassMalformed,
        ),
        (
            "IPIP fragment",
            {
                let opts = V4Opts {
                    frag: 0x2000,
                    ..Default::default()
                };
                let (et, p) = ip(a(LB4), a(HOST4), &raw(4, &inner4().1), &opts);
                eth(et, &p, &[])
            },
            None,
            DecapStat::PassMalformed,
        ),
    ];
    for (desc, input, want, stat) in rows {
        let before = counters(&root, &name);
        let r = run_once(prog, &input, 1);
        assert_eq!(r.action, XdpAction::Pass as u32, "[{desc}] verdict");
        let want = want.unwrap_or_else(|| input.clone());
        assert_eq!(
            xlb_tests::fuzz::hex(&r.output),
            xlb_tests::fuzz::hex(&want),
            "[{desc}] output bytes"
        );
        let after = counters(&root, &name);
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            let moved = u64::from(i == stat as usize);
            assert_eq!(
                a - b,
                moved,
                "[{desc}] counter {}",
                DecapStat::ALL[i].name()
            );
        }
    }

    // Again with other prefixes: updated in place, the old ones no longer allowed.
    let only: Vec<Prefix> = vec!["10.1.0.99/32".parse().expect("prefix")];
    assert_eq!(
        decap::attach(&root, &name, &only, true).expect("again"),
        Attached::Updated
    );
    let r = run_once(prog, &tunneled(a(LB4), a(HOST4), &inner4()), 1);
    assert_eq!(
        r.output,
        tunneled(a(LB4), a(HOST4), &inner4()),
        "old prefix still allowed"
    );
    let r = run_once(prog, &tunneled(a("10.1.0.99"), a(HOST4), &inner4()), 1);
    assert_eq!(
        r.output,
        eth(ETH_IPV4, &inner4().1, &[]),
        "new prefix not allowed"
    );

    drop(iface);
    assert!(!root.exists(), "detach left pinned state");
    assert!(
        decap::detach(&root, &name).is_err(),
        "detaching twice must say nothing is attached"
    );
}

/// Removes a test root of bpffs (and whatever a failed test left under it).
struct Root(PathBuf);

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One interface name in two network namespaces (containers, the lab's backends, which
/// all have an eth0): each attach is its own, pinned apart, and detaching one leaves the
/// other attached. The second attach used to find the first one's pinned link under
/// `ROOT/eth0`, "update" it and attach nothing.
#[test]
fn decap_of_one_interface_name_in_two_namespaces_keeps_both() {
    require_root();
    let pid = std::process::id();
    let root = Root(PathBuf::from(format!(
        "/sys/fs/bpf/xlb-decap-ns-test-{pid}"
    )));
    let from: Vec<Prefix> = vec!["10.1.0.0/28".parse().expect("prefix")];
    let spaces = [
        Netns::new(format!("xdna-{pid}")),
        Netns::new(format!("xdnb-{pid}")),
    ];
    for ns in &spaces {
        ns.ip("link add xdn0 type veth peer name xdn0p");
        ns.ip("link set xdn0 up");
        ns.ip("link set xdn0p up");
    }
    let attach = |ns: &Netns| ns.run(|| decap::attach(&root.0, "xdn0", &from, true));
    let dir = |ns: &Netns| ns.run(|| decap::dir_of(&root.0, "xdn0"));
    assert_eq!(attach(&spaces[0]).expect("attach"), Attached::New);
    assert_eq!(
        attach(&spaces[1]).expect("attach"),
        Attached::New,
        "the second namespace's xdn0 was taken for the first one's"
    );
    assert_ne!(dir(&spaces[0]), dir(&spaces[1]));
    for ns in &spaces {
        let link = ns.ip("-d link show xdn0");
        assert!(
            link.contains("prog/xdp"),
            "{}: no XDP program: {link}",
            ns.name
        );
    }
    spaces[0]
        .run(|| decap::detach(&root.0, "xdn0"))
        .expect("detach in the first namespace");
    let second = spaces[1].ip("-d link show xdn0");
    assert!(second.contains("prog/xdp"), "detached both: {second}");
    assert!(spaces[1].run(|| decap::stats(&root.0, "xdn0")).is_ok());
    spaces[1]
        .run(|| decap::detach(&root.0, "xdn0"))
        .expect("detach in the second namespace");
    assert!(!root.0.exists(), "the root outlived its last interface");
}
