//! `cargo xtask lab-ecmp`: several xlb nodes behind a router's ECMP, narrated with counts.
//! A router namespace runs BIRD with ECMP (`merge paths on`) and the hash settings of the
//! README's guide; three nodes each run the real `xlb` daemon and BIRD (BGP with BFD
//! 100 ms × 3 to the router); shared backends run real servers (DSR); a client namespace
//! has 300 IPv4 and 150 IPv6 source addresses. Everything it creates is removed at the
//! end, also when a step fails.

use std::time::{Duration, Instant};

use xlb_tests::lab_ecmp::{EcmpLab, EcmpOptions, scenarios};

fn main() {
    let started = Instant::now();
    xlb_tests::require_root();
    println!(
        "xlb ECMP lab: a router (BIRD, ECMP), 3 xlb nodes (xlb + BIRD, BGP + BFD), 8 backends, 300 IPv4 + 150 IPv6 clients"
    );
    let mut lab = EcmpLab::new(EcmpOptions {
        backends: 8,
        ..EcmpOptions::default()
    });
    lab.write_configs(&scenarios::services(&lab, &[0]));
    lab.start_all();
    let all: Vec<usize> = (0..lab.nodes.len()).collect();
    let t = lab.wait_next_hops(&lab.vips, &all, Duration::from_secs(10));
    println!(
        "  services web4 (TCP 80) + dns4 (UDP 53) on {}, web6 + dns6 on {}; every node announces both VIPs; the router has one ECMP route per VIP over n0 n1 n2 ({} ms after the sessions came up)\n",
        lab.vips[0],
        lab.vips[1],
        t.as_millis()
    );

    step(
        0,
        "the same config, backends added at run time in a different order on each node",
    );
    print!("{}", scenarios::determinism(&lab));

    step(
        1,
        "every client, several connections, whichever node carries it",
    );
    print!("{}", scenarios::steady(&lab, 4));

    step(2, "one node drained");
    print!("{}", scenarios::drain(&lab, 0));
    let ms = scenarios::undrain(&lab, 0);
    println!("  n0 undrained: announced again after {ms} ms");

    step(
        3,
        "a node's xlb daemon SIGKILLed and started again, then stopped (SIGTERM) and started again",
    );
    print!("{}", scenarios::daemon_kill(&mut lab, 1));

    step(4, "a whole node made silent (its link dropped)");
    print!("{}", scenarios::silent(&lab, 2));

    step(5, "a service's last backend goes unhealthy on every node");
    print!("{}", scenarios::last_backend(&mut lab));

    // Weights now: be0 1, be1 1, be2 2, be3 1 (from step 0).
    step(6, "a backend added on every node, then a node drained");
    print!("{}", scenarios::add_then_drain(&lab, 4, 0, 6));

    step(
        7,
        "a drained node undrained after a backend was added meanwhile",
    );
    print!("{}", scenarios::drain_add_return(&mut lab, 2, 5, false, 7));
    println!(
        "  the same, with a restart of the node that lost its pinned state (bpffs emptied, as after a reboot):"
    );
    print!("{}", scenarios::drain_add_return(&mut lab, 2, 6, true, 8));

    step(8, "what an operator sees on a drained node");
    lab.drain(1);
    println!("$ xlb node drain   (on n1)\n$ xlb status   (its announce part)");
    let status = lab.nodes[1].xlb(&["status"]);
    let part = status.split("\nannounce:").nth(1).unwrap_or_default();
    for l in format!("announce:{part}").lines() {
        println!("  {l}");
    }
    lab.undrain(1);

    drop(lab);
    println!(
        "\ndone in {:.1} s; the lab is gone (namespaces, processes, pinned maps).",
        started.elapsed().as_secs_f64()
    );
}

fn step(n: u32, what: &str) {
    println!("\n{n}. {what}");
}
