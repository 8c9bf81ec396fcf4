//! `nat_sources` through the real program (lb_common::natsrc, issue 12): clients inside
//! a listed prefix are keyed on their whole address and source port — each connection
//! balanced alone and kept — whatever the service's prefix; everyone else keeps
//! source-address affinity, including clients next to a listed prefix (the pre-filter
//! hits, the trie does not). `explain` names the prefix; `xlb service set` changes the
//! list at run time; a listed client's later fragments follow their first fragment.

use std::{collections::HashMap, net::IpAddr};

use xlb::{
    dataplane::loader::LoadOptions,
    model::{Edit, Prefix, Protocol, Service},
};
use xlb_tests::{
    enter_private_netns,
    harness::{XdpAction, XlbHarness},
    packet::{tcp_frame, v4, v6},
    require_root,
};

use super::{LO, backends, mac_of};

struct Lab {
    h: XlbHarness,
    vip: IpAddr,
    by_mac: HashMap<[u8; 6], IpAddr>,
}

impl Lab {
    fn new(vip: IpAddr, addrs: &[&str], nat: &[&str], prefix: u8) -> Self {
        require_root();
        enter_private_netns();
        let mut h = XlbHarness::load(&LoadOptions {
            affinity_capacity: 1 << 16,
            maglev_slots: 1 << 16,
        });
        let mut s = Service::new("web", vip, 80, Protocol::Tcp);
        s.table_size = 1021;
        if vip.is_ipv4() {
            s.prefix_v4 = prefix;
        } else {
            s.prefix_v6 = prefix;
        }
        s.nat_sources = nat.iter().map(|p| p.parse().expect("prefix")).collect();
        h.add_service(s, &backends(addrs, LO)).expect("service");
        let by_mac = addrs
            .iter()
            .map(|a| {
                let a: IpAddr = a.parse().expect("addr");
                (mac_of(a), a)
            })
            .collect();
        Self { h, vip, by_mac }
    }

    fn send(&self, src: IpAddr, sport: u16) -> IpAddr {
        let r = self.h.run(&tcp_frame(src, self.vip, sport, 80), LO);
        assert_eq!(
            r.action,
            XdpAction::Tx as u32,
            "{src}:{sport} not forwarded"
        );
        self.by_mac[&<[u8; 6]>::try_from(&r.output[..6]).expect("mac")]
    }

    /// Backend per source port for `n` connections of `src`; each connection sends
    /// three packets, which must all reach the same backend.
    fn connections(&self, src: IpAddr, n: u16) -> Vec<IpAddr> {
        (0..n)
            .map(|i| {
                let port = 20_000 + i;
                let first = self.send(src, port);
                for _ in 0..2 {
                    assert_eq!(self.send(src, port), first, "{src}:{port} moved");
                }
                first
            })
            .collect()
    }
}

fn shares(to: &[IpAddr]) -> HashMap<IpAddr, f64> {
    let mut m = HashMap::new();
    for b in to {
        *m.entry(*b).or_insert(0.0) += 1.0 / to.len() as f64;
    }
    m
}

const V4_BACKENDS: [&str; 3] = ["192.0.2.11", "192.0.2.12", "192.0.2.13"];

#[test]
fn listed_clients_spread_per_connection_and_keep_each_one() {
    let lab = Lab::new(
        v4("203.0.113.10"),
        &V4_BACKENDS,
        &["198.51.100.0/24", "192.0.2.77/32"],
        16,
    );
    // One NAT address, 300 connections: over all three backends, none above 45%.
    let to = lab.connections(v4("198.51.100.9"), 300);
    let s = shares(&to);
    assert_eq!(s.len(), 3, "{s:?}");
    for (b, share) in &s {
        assert!(
            (0.20..=0.45).contains(share),
            "{b}: {share:.2} of the connections"
        );
    }
    // Its pins are per connection: whole address and port.
    let e = lab
        .h
        .explain("web", v4("198.51.100.9"), 20_007)
        .expect("explain");
    assert_eq!(e.nat_source, Some(24));
    assert_eq!(e.key.addr, xlb::model::addr_words(v4("198.51.100.9")).0);
    assert_eq!(u16::from_be(e.key.port_be), 20_007);
    assert_eq!(e.backend, Some(to[7]), "explain agrees with the program");
    // A /32 entry lists that one address.
    assert_eq!(shares(&lab.connections(v4("192.0.2.77"), 60)).len(), 3);
}

/// An ICMP error about a listed client's connection (a router's fragmentation needed)
/// goes to the backend that connection is pinned to: the ICMP path keys the client as the
/// packet path does (address and port), not by address alone. Before the fix it looked
/// the address-only key up, missed, and sent the error to the address's Maglev slot.
#[test]
fn icmp_errors_about_a_listed_client_reach_its_connections_backend() {
    use xlb_tests::fixtures::frag_needed;
    let lab = Lab::new(v4("203.0.113.10"), &V4_BACKENDS, &["198.51.100.0/24"], 32);
    let client = v4("198.51.100.9");
    let to = lab.connections(client, 60);
    for (i, want) in to.iter().enumerate() {
        let port = 20_000 + i as u16;
        let r = lab.h.run(&frag_needed(lab.vip, client, port), LO);
        assert_eq!(r.action, XdpAction::Tx as u32, "error about port {port}");
        let got = lab.by_mac[&<[u8; 6]>::try_from(&r.output[..6]).expect("mac")];
        assert_eq!(got, *want, "error about {client}:{port}");
    }
}

#[test]
fn clients_outside_the_list_keep_address_affinity() {
    let lab = Lab::new(v4("203.0.113.10"), &V4_BACKENDS, &["198.51.100.0/24"], 16);
    // Same /16 as the list (the pre-filter hits), not in it (the trie misses); and a
    // client far away (the pre-filter misses). Both: one backend for every connection,
    // keyed on the service's /16.
    for c in [v4("198.51.101.5"), v4("10.1.2.3")] {
        let s = shares(&lab.connections(c, 40));
        assert_eq!(s.len(), 1, "{c}: {s:?}");
        let e = lab.h.explain("web", c, 20_001).expect("explain");
        assert_eq!(e.nat_source, None);
        assert_eq!(e.key.port_be, 0);
    }
}

#[test]
fn the_list_changes_at_run_time() {
    let mut lab = Lab::new(v4("203.0.113.10"), &V4_BACKENDS, &[], 32);
    let office = v4("198.51.100.9");
    assert_eq!(
        shares(&lab.connections(office, 60)).len(),
        1,
        "not listed yet"
    );
    lab.h
        .edit(Edit::ServiceSet {
            service: "web".into(),
            nat_sources: Some(vec!["198.51.100.0/24".parse::<Prefix>().expect("p")]),
            balance_factor: None,
            tunnel_source: None,
        })
        .expect("set");
    let before = lab
        .h
        .dp()
        .service_stats(lab.h.service_id("web"))
        .expect("s");
    let spread = shares(&lab.connections(office, 90));
    assert_eq!(spread.len(), 3, "listed: {spread:?}");
    let after = lab
        .h
        .dp()
        .service_stats(lab.h.service_id("web"))
        .expect("s");
    assert_eq!(
        after.misses - before.misses,
        90,
        "one new pin per connection"
    );
    lab.h
        .edit(Edit::ServiceSet {
            service: "web".into(),
            nat_sources: Some(vec![]),
            balance_factor: None,
            tunnel_source: None,
        })
        .expect("unset");
    // Keyed on the address again (its old pin is still live).
    assert_eq!(shares(&lab.connections(office, 60)).len(), 1);
}

/// A listed client's fragmented datagrams: each later fragment follows its first
/// fragment (the fragment-tracking map holds the first one's ports, so the later one is
/// keyed like it): never one datagram over two backends, while its datagrams of
/// different ports spread like its connections.
#[test]
fn fragments_of_listed_clients_follow_their_first_fragment() {
    use xlb_tests::fixtures::{v4_first, v4_later};
    let lab = Lab::new(v4("203.0.113.10"), &V4_BACKENDS, &["198.51.100.0/24"], 32);
    let client = v4("198.51.100.9");
    let mut seen = std::collections::BTreeSet::new();
    for n in 0..60u16 {
        let first = lab
            .h
            .run(&v4_first(client, lab.vip, &tcp_l4(20_000 + n), 100 + n), LO);
        let later = lab.h.run(&v4_later(client, lab.vip, 6, 100 + n), LO);
        assert_eq!(first.action, XdpAction::Tx as u32, "first fragment {n}");
        assert_eq!(later.action, XdpAction::Tx as u32, "later fragment {n}");
        let (a, b) = (&first.output[..6], &later.output[..6]);
        assert_eq!(a, b, "datagram {n} split over two backends");
        seen.insert(lab.by_mac[&<[u8; 6]>::try_from(a).expect("mac")]);
    }
    assert_eq!(seen.len(), 3, "datagrams of 60 ports on {seen:?}");
}

fn tcp_l4(sport: u16) -> xlb_tests::packet::L4 {
    xlb_tests::packet::tcp(sport, 80, &[0u8; 16])
}

#[test]
fn ipv6_prefixes_and_short_ones() {
    let b6 = ["2001:db8:f::11", "2001:db8:f::12", "2001:db8:f::13"];
    // A /48 (its /32 in the pre-filter) and a /20 (shorter than /32: every IPv6 source
    // of the service walks the trie).
    let lab = Lab::new(
        v6("2001:db8::10"),
        &b6,
        &["2001:db8:1::/48", "3ff0::/20"],
        64,
    );
    for c in [v6("2001:db8:1::9"), v6("3ff0:0fff::1")] {
        assert_eq!(shares(&lab.connections(c, 90)).len(), 3, "{c}");
    }
    for c in [v6("2001:db8:2::9"), v6("3ff0:1000::1")] {
        assert_eq!(shares(&lab.connections(c, 30)).len(), 1, "{c}");
    }
}
