//! `balance_factor` through the real program (lb_common::bound, issue 12): with a
//! backend flagged over the load bound, new clients whose Maglev slot holds it go to
//! the next backend of their slots that is not; pinned clients never move; a cleared
//! flag lets new clients reach it again; a service without a factor ignores flags; and
//! `explain` says when the bound decided.

use std::{collections::HashMap, net::IpAddr};

use xlb::{
    dataplane::loader::LoadOptions,
    model::{Millionths, Protocol, Service},
};
use xlb_tests::{
    enter_private_netns,
    harness::{XdpAction, XlbHarness},
    packet::{tcp_frame, v4},
    require_root,
};

use super::{LO, backends, mac_of};

const ADDRS: [&str; 3] = ["192.0.2.11", "192.0.2.12", "192.0.2.13"];

struct Lab {
    h: XlbHarness,
    vip: IpAddr,
    by_mac: HashMap<[u8; 6], IpAddr>,
}

impl Lab {
    fn new(factor: Option<f64>) -> Self {
        require_root();
        enter_private_netns();
        let mut h = XlbHarness::load(&LoadOptions {
            affinity_capacity: 1 << 16,
            maglev_slots: 1 << 16,
        });
        let vip = v4("203.0.113.10");
        let mut s = Service::new("web", vip, 80, Protocol::Tcp);
        s.table_size = 1021;
        s.balance_factor = factor.and_then(Millionths::from_f64);
        h.add_service(s, &backends(&ADDRS, LO)).expect("service");
        let by_mac = ADDRS
            .iter()
            .map(|a| {
                let a: IpAddr = a.parse().expect("addr");
                (mac_of(a), a)
            })
            .collect();
        Self { h, vip, by_mac }
    }

    fn send(&self, src: IpAddr) -> IpAddr {
        let r = self.h.run(&tcp_frame(src, self.vip, 40_000, 80), LO);
        assert_eq!(r.action, XdpAction::Tx as u32, "{src} not forwarded");
        self.by_mac[&<[u8; 6]>::try_from(&r.output[..6]).expect("mac")]
    }

    fn flag(&mut self, addr: &str, over: bool) {
        let ps = self.h.ctl.service("web").expect("web");
        let id = ps.backend(addr.parse().expect("addr")).expect("backend").id;
        self.h.dp_mut().set_over_bound(id, over).expect("flag");
    }
}

fn client(i: u32) -> IpAddr {
    IpAddr::from([10, 7, (i >> 8) as u8, i as u8])
}

#[test]
fn new_clients_avoid_a_backend_over_the_bound_and_pins_stay() {
    let mut lab = Lab::new(Some(1.25));
    let hot: IpAddr = ADDRS[0].parse().expect("addr");
    // 300 clients pinned before the flag; those on the hot backend must stay there.
    let pinned: Vec<(IpAddr, IpAddr)> =
        (0..300).map(|i| (client(i), lab.send(client(i)))).collect();
    let on_hot = pinned.iter().filter(|(_, b)| *b == hot).count();
    assert!(on_hot > 50, "{on_hot} of 300 on {hot}");
    lab.flag(ADDRS[0], true);
    for (c, b) in &pinned {
        assert_eq!(lab.send(*c), *b, "pinned client {c} moved");
    }
    // New clients: none reaches the hot backend; those whose slot holds it are placed
    // on the others, and explain says the bound decided.
    let mut bounded = 0;
    for i in 1000..1600 {
        let c = client(i);
        let e = lab.h.explain("web", c, 0).expect("explain");
        let to = lab.send(c);
        assert_ne!(to, hot, "new client {c} reached the backend over the bound");
        assert_eq!(
            e.backend,
            Some(to),
            "explain agrees with the program for {c}"
        );
        if e.slot_backend == Some(hot) {
            assert_eq!(e.bound.map(|(b, _)| b), Some(hot), "{c}");
            bounded += 1;
        } else {
            assert_eq!(e.bound, None, "{c}");
        }
    }
    assert!(
        bounded > 100,
        "{bounded} of 600 new clients had the hot backend's slot"
    );
    // The flag cleared: new clients reach it again.
    lab.flag(ADDRS[0], false);
    let back = (2000..2300).filter(|i| lab.send(client(*i)) == hot).count();
    assert!(
        back > 50,
        "{back} of 300 new clients on {hot} after the flag cleared"
    );
}

#[test]
fn without_a_factor_flags_change_nothing() {
    let mut lab = Lab::new(None);
    let hot: IpAddr = ADDRS[0].parse().expect("addr");
    lab.flag(ADDRS[0], true);
    let on_hot = (0..300).filter(|i| lab.send(client(*i)) == hot).count();
    assert!(on_hot > 50, "{on_hot} of 300 new clients on {hot}");
}

#[test]
fn every_backend_over_the_bound_keeps_maglev() {
    let mut lab = Lab::new(Some(1.25));
    for a in ADDRS {
        lab.flag(a, true);
    }
    for i in 0..200 {
        let c = client(i);
        let e = lab.h.explain("web", c, 0).expect("explain");
        assert_eq!(Some(lab.send(c)), e.slot_backend, "{c}");
    }
}
