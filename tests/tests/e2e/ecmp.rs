//! Several xlb nodes behind a router's ECMP (tests/src/lab_ecmp): BIRD on the router and
//! on every node, BGP with BFD, the real daemon on each node.

use std::{net::IpAddr, time::Duration};

use xlb_tests::lab_ecmp::{EcmpLab, EcmpOptions, vip4, vip6};

#[test]
fn ecmp_smoke() {
    let mut lab = EcmpLab::new(EcmpOptions::default());
    let services = xlb_tests::lab_ecmp::scenarios::services(&lab, &[0, 1, 2]);
    lab.write_configs(&services);
    let t = std::time::Instant::now();
    lab.start_all();
    println!("started in {:?}", t.elapsed());
    lab.wait_next_hops(&[vip4(1), vip6(1)], &[0, 1, 2], Duration::from_secs(10));
    let pred = lab.predicted_nodes(&lab.clients6, vip6(1));
    println!("{:?}", pred.values().take(10).collect::<Vec<_>>());
    let t = std::time::Instant::now();
    let r = lab.round(&lab.clients4, vip4(1), false, Duration::from_secs(1));
    println!("round v4 in {:?}: {:?}", t.elapsed(), &r[..3]);
    let r = lab.round(&lab.clients6, vip6(1), false, Duration::from_secs(1));
    println!("round v6: {:?}", &r[..3]);
    for n in &lab.nodes {
        println!("{}: {} pins", n.name, n.pins("web4").len());
    }
    let _: IpAddr = vip4(1);
}
