//! `bench micro`: ns per packet through BPF_PROG_TEST_RUN for xlb's paths against two
//! reference programs, all in one run.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use aya::{EbpfLoader, programs::Xdp};
use xlb::{
    dataplane::loader::{BENCH_OBJECT, LoadOptions},
    model::{BackendSpec, Link, Protocol, ServiceSpec},
};

use super::{Samples, pin_to_cpu};
use crate::{
    enter_private_netns,
    harness::{XlbHarness, run_once, run_repeat},
    packet::{tcp_frame, v4},
};

const ROUNDS: usize = 7;
const REPEAT: u32 = 2_000_000;
const MISS_CLIENTS: u32 = 200_000;
const LO: u32 = 1;

pub fn run() {
    enter_private_netns();
    pin_to_cpu(0);

    let mut h = XlbHarness::load(&LoadOptions {
        affinity_capacity: std::env::var("XLB_BENCH_LRU")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(65_536),
        maglev_slots: 1 << 20,
    });
    let backends: Vec<(BackendSpec, Option<Link>)> = (11..=13)
        .map(|i| {
            let address: IpAddr = v4(&format!("192.0.2.{i}"));
            let link = Link {
                mac: [0x02, 0xbe, 0, 0, 0, i],
                src_mac: [0x02, 0x1b, 0, 0, 0, 1],
                ifindex: LO,
            };
            (BackendSpec { address, weight: 1 }, Some(link))
        })
        .collect();
    let vip = v4("203.0.113.10");
    h.lb.add_service(ServiceSpec::new("web", vip, 80, Protocol::Tcp), &backends)
        .expect("service");

    let mut bench = EbpfLoader::new()
        .load(BENCH_OBJECT)
        .expect("load bench object");
    for name in ["xdp_pass", "reflector"] {
        let p: &mut Xdp = bench
            .program_mut(name)
            .expect("bench program")
            .try_into()
            .expect("XDP");
        p.load().expect("verifier");
    }
    let prog = |name| -> &Xdp {
        bench
            .program(name)
            .expect("program")
            .try_into()
            .expect("XDP")
    };

    let client = v4("198.51.100.7");
    let hit_pkt = tcp_frame(client, vip, 40000, 80);
    let other_pkt = tcp_frame(client, v4("10.9.9.9"), 40000, 80);
    // Pin the client once so every measured run is an affinity hit.
    assert_eq!(h.run(&hit_pkt, LO).action, 3, "hit packet not forwarded");
    assert_eq!(
        h.run(&other_pkt, LO).action,
        2,
        "non-service packet not passed"
    );
    assert_eq!(run_once(prog("reflector"), &hit_pkt, LO).action, 3);

    // Misses: one fresh client per run, so one run per BPF_PROG_TEST_RUN call. The
    // kernel's timer then also counts its own entry/exit once per call: measure that
    // overhead with the trivial program the same way and subtract it.
    // Distinct clients in every round (100.64.0.0/10 holds 4M).
    let miss_pkts = |round: usize| -> Vec<Vec<u8>> {
        (0..MISS_CLIENTS)
            .map(|i| {
                let i = i + round as u32 * MISS_CLIENTS;
                let c = IpAddr::from([100, 64 + (i >> 16) as u8, (i >> 8) as u8, i as u8]);
                tcp_frame(c, vip, 40000, 80)
            })
            .collect()
    };
    let per_call = |p: &Xdp, pkts: &[Vec<u8>]| -> f64 {
        let total: u128 = pkts.iter().map(|f| run_once(p, f, LO).duration_ns).sum();
        total as f64 / pkts.len() as f64
    };

    let mut s: BTreeMap<&str, Samples> = BTreeMap::new();
    let web_id = h.lb.service("web").expect("web").id;
    for round in 0..ROUNDS {
        // Interleaved, round by round.
        s.entry("hit_ns")
            .or_default()
            .0
            .push(run_repeat(h.prog(), &hit_pkt, LO, REPEAT));
        s.entry("pass_through_ns").or_default().0.push(run_repeat(
            h.prog(),
            &other_pkt,
            LO,
            REPEAT,
        ));
        s.entry("xdp_pass_ns").or_default().0.push(run_repeat(
            prog("xdp_pass"),
            &hit_pkt,
            LO,
            REPEAT,
        ));
        s.entry("reflector_ns").or_default().0.push(run_repeat(
            prog("reflector"),
            &hit_pkt,
            LO,
            REPEAT,
        ));
        let before = h.lb.dp.service_stats(web_id).expect("stats").misses;
        let pkts = miss_pkts(round);
        let miss_raw = per_call(h.prog(), &pkts);
        let misses = h.lb.dp.service_stats(web_id).expect("stats").misses - before;
        // Every run must have been a miss.
        assert_eq!(
            misses, MISS_CLIENTS as u64,
            "round {round}: not every run was a miss"
        );
        let call_overhead = per_call(prog("xdp_pass"), &pkts[..MISS_CLIENTS as usize / 4]);
        s.entry("miss_raw_ns").or_default().0.push(miss_raw);
        // The same per-call method on the hit path: validates the subtraction.
        let hits = vec![hit_pkt.clone(); MISS_CLIENTS as usize / 4];
        s.entry("hit_per_call_ns")
            .or_default()
            .0
            .push(per_call(h.prog(), &hits));
        s.entry("call_xdp_pass_ns")
            .or_default()
            .0
            .push(call_overhead);
        let pass_repeat = s["xdp_pass_ns"].0[round];
        s.entry("miss_ns")
            .or_default()
            .0
            .push(miss_raw - call_overhead + pass_repeat);
        std::thread::sleep(Duration::from_millis(50));
    }

    let m = |k: &str| s[k].median();
    println!("xlb micro benchmark: BPF_PROG_TEST_RUN, 64-byte TCP/IPv4 frames, one CPU");
    println!(
        "{} rounds, interleaved; median [min – max] ns per packet",
        ROUNDS
    );
    println!();
    println!("{:<26} {:>9} {:>21}", "case", "median", "min – max");
    for (k, label) in [
        ("xdp_pass_ns", "trivial XDP_PASS"),
        ("reflector_ns", "reflector (swap MACs, TX)"),
        ("pass_through_ns", "xlb, non-service packet"),
        ("hit_ns", "xlb, affinity hit"),
        ("miss_ns", "xlb, miss (new client)"),
    ] {
        let v = &s[k];
        println!(
            "{label:<26} {:>9.1} {:>9.1} – {:>9.1}",
            v.median(),
            v.min(),
            v.max()
        );
    }
    println!();
    let goals = [
        (
            "hit_ns - reflector_ns",
            m("hit_ns") - m("reflector_ns"),
            25.0,
        ),
        (
            "miss_ns - reflector_ns",
            m("miss_ns") - m("reflector_ns"),
            60.0,
        ),
        (
            "pass_through_ns - xdp_pass_ns",
            m("pass_through_ns") - m("xdp_pass_ns"),
            5.0,
        ),
    ];
    for (name, v, goal) in goals {
        let verdict = if v <= goal { "met" } else { "MISSED" };
        println!("{name:<32} {v:>7.1} ns   goal ≤ {goal:>4.0} ns   {verdict}");
    }
    println!(
        "miss: {MISS_CLIENTS} distinct clients per round, one run per call; the per-call timer \
         cost (XDP_PASS per call: {:.1} ns) is replaced by the repeat-mode XDP_PASS cost.",
        m("call_xdp_pass_ns")
    );
    println!(
        "method check: the hit path measured the same per-call way gives {:.1} ns against \
         {:.1} ns in repeat mode (colder caches between calls), so miss_ns overstates by about that.",
        m("hit_per_call_ns") - m("call_xdp_pass_ns") + m("xdp_pass_ns"),
        m("hit_ns")
    );

    let mut json = serde_json::Map::new();
    for (k, v) in &s {
        json.insert((*k).to_string(), serde_json::json!(v.median()));
        json.insert(format!("{k}_min"), serde_json::json!(v.min()));
        json.insert(format!("{k}_max"), serde_json::json!(v.max()));
    }
    json.insert("rounds".into(), serde_json::json!(ROUNDS));
    json.insert("repeat".into(), serde_json::json!(REPEAT));
    json.insert("miss_clients".into(), serde_json::json!(MISS_CLIENTS));
    super::write_json("micro", &serde_json::Value::Object(json));
}
