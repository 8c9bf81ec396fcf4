//! `bench micro`: ns per packet through BPF_PROG_TEST_RUN for xlb's paths against two
//! reference programs, all in one run.
//!
//! Two tables: the miss of earlier releases (`miss_ns`: a fresh client per packet in a
//! table of 65,536) and, on the default capacity (1,048,576) filled with as many
//! clients, `hit_many_ns` (65,536 of them round robin) and `miss_full_ns` (a client the
//! table has never seen, per packet: each one evicts).
//!
//! The data plane's diagnostics (aya-log, lb-ebpf `xlb/log.rs`) are measured against the
//! object built without them (`XLB_NOLOG_OBJECT`), interleaved in the same rounds: the
//! hit and the pass-through (which never reach the reporting code) and a flood of one
//! drop reason (which passes the once-a-second gate on every packet).

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use aya::{
    EbpfLoader,
    maps::{Array, ProgramArray},
    programs::Xdp,
};
use lb_common::tunnel::{EGRESS_F_V4, Egress};
use xlb::{
    dataplane::loader::{BENCH_OBJECT, LoadOptions, XLB_NOLOG_OBJECT},
    model::{Forwarding, Link, Protocol, Service},
    reconcile::inspect::affinity_key,
};

use super::{Samples, pin_to_cpu};
use aya::maps::MapData;

/// The rotator and its maps.
struct Rotator<'a> {
    next: &'a mut ProgramArray<MapData>,
    cfg: &'a mut Array<MapData, RotateConfig>,
    prog: &'a Xdp,
    pass: &'a Xdp,
}
use crate::{
    enter_private_netns,
    fixtures::v4_later,
    harness::{XlbHarness, run_once, run_repeat},
    packet::{tcp_frame, v4},
};

const ROUNDS: usize = 7;
const REPEAT: u32 = 2_000_000;
const MISS_CLIENTS: u32 = 200_000;
const LO: u32 = 1;
/// The default `affinity_capacity`, filled for `hit_many_ns` and `miss_full_ns`.
const FULL_CAPACITY: u32 = lb_common::DEFAULT_AFFINITY_CAPACITY;
/// Clients of `hit_many_ns`, round robin.
const MANY: u32 = 65_536;
/// The sampling period of the measured service: what the daemon sets at ≈1.3 Mpps
/// (lb_common::sample::period_for with its 20,000 samples/s target).
const SAMPLE_PERIOD: u32 = 64;

use super::RotateConfig;

pub fn run() {
    enter_private_netns();
    pin_to_cpu(0);
    let load_start = super::load_average();

    let mut h = XlbHarness::load(&LoadOptions {
        affinity_capacity: std::env::var("XLB_BENCH_LRU")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(65_536),
        maglev_slots: 1 << 20,
    });
    let backends: Vec<(IpAddr, Option<Link>)> = (11..=13)
        .map(|i| {
            let address: IpAddr = v4(&format!("192.0.2.{i}"));
            let link = Link {
                mac: [0x02, 0xbe, 0, 0, 0, i],
                src_mac: [0x02, 0x1b, 0, 0, 0, 1],
                ifindex: LO,
            };
            (address, Some(link))
        })
        .collect();
    let vip = v4("203.0.113.10");
    h.add_service(Service::new("web", vip, 80, Protocol::Tcp), &backends)
        .expect("service");
    // The same, built without diagnostics.
    let mut nolog = XlbHarness::load_object(
        &LoadOptions {
            affinity_capacity: 65_536,
            maglev_slots: 1 << 20,
        },
        XLB_NOLOG_OBJECT,
    );
    nolog
        .add_service(Service::new("web", vip, 80, Protocol::Tcp), &backends)
        .expect("service");
    // Sampling: on at a high rate's period in `h`; compiled out in `unsampled` (the
    // verifier drops the code), on for every packet in `h` for one case.
    let web_id = h.service_id("web");
    let mut ring = h.dp_mut().take_samples().expect("the sample ring");
    h.dp_mut()
        .set_sample_period(web_id, SAMPLE_PERIOD)
        .expect("period");
    let mut unsampled = XlbHarness::load_sampling(
        &LoadOptions {
            affinity_capacity: 65_536,
            maglev_slots: 1 << 20,
        },
        false,
    );
    unsampled
        .add_service(Service::new("web", vip, 80, Protocol::Tcp), &backends)
        .expect("service");
    // nat_sources the measured client is not in: elsewhere (the pre-filter misses), and
    // in its /16 (the pre-filter hits, the trie misses).
    let with_nat = |list: &str| {
        let mut x = XlbHarness::load(&LoadOptions {
            affinity_capacity: 65_536,
            maglev_slots: 1 << 20,
        });
        let mut svc = Service::new("web", vip, 80, Protocol::Tcp);
        svc.nat_sources = vec![list.parse().expect("prefix")];
        x.add_service(svc, &backends).expect("service");
        x
    };
    // Tunnel mode (IPIP, the egress address as the outer source): the same service.
    let mut tun = XlbHarness::load(&LoadOptions {
        affinity_capacity: 65_536,
        maglev_slots: 1 << 20,
    });
    tun.observe_egress(
        LO,
        Some(Egress {
            mtu: 1500,
            flags: EGRESS_F_V4,
            v4: u32::from_ne_bytes([10, 0, 0, 1]),
            v6: [0; 4],
        }),
    );
    let mut tunnel = Service::new("web", vip, 80, Protocol::Tcp);
    tunnel.forwarding = Forwarding::Tunnel;
    tun.add_service(tunnel, &backends).expect("service");
    let nat_far = with_nat("192.0.2.0/24");
    let nat_near = with_nat("198.51.200.0/24");
    // The default capacity, filled: FULL_CAPACITY clients of 10.0.0.0/8 pinned.
    let mut full = XlbHarness::load(&LoadOptions {
        affinity_capacity: FULL_CAPACITY,
        maglev_slots: 1 << 20,
    });
    full.add_service(Service::new("web", vip, 80, Protocol::Tcp), &backends)
        .expect("service");
    let many_client = |i: u32| IpAddr::from((0x0a00_0000u32 + i).to_be_bytes());
    for i in 0..FULL_CAPACITY {
        assert_eq!(
            full.run(&tcp_frame(many_client(i), vip, 40000, 80), LO)
                .action,
            3
        );
    }
    let full_id = full.service_id("web");
    let pinned = full
        .dp()
        .affinity_entries(Some(full_id))
        .expect("entries")
        .len();
    println!(
        "default capacity filled: {pinned} of {FULL_CAPACITY} clients pinned ({:.2}% lost to full buckets)",
        100.0 * (1.0 - pinned as f64 / FULL_CAPACITY as f64)
    );
    // The round-robin clients: MANY pinned ones, spread over the filled table.
    let many: Vec<Vec<u8>> = (0..FULL_CAPACITY)
        .step_by((FULL_CAPACITY / MANY) as usize)
        .map(many_client)
        .filter(|c| {
            let key = affinity_key(full.ctl.service("web").expect("web"), *c, 0).expect("key");
            full.dp().affinity_get(&key).expect("lookup").is_some()
        })
        .map(|c| tcp_frame(c, vip, 40000, 80))
        .collect();

    let mut bench = EbpfLoader::new()
        .load(BENCH_OBJECT)
        .expect("load bench object");
    for name in ["xdp_pass", "reflector", "src_rotator"] {
        let p: &mut Xdp = bench
            .program_mut(name)
            .expect("bench program")
            .try_into()
            .expect("XDP");
        p.load().expect("verifier");
    }
    // The rotator's tail-call targets: the filled table's xlb, and XDP_PASS (what the
    // rotation and the tail call cost by themselves).
    let mut next = ProgramArray::try_from(bench.take_map("ROTATE_NEXT").expect("rotate next"))
        .expect("prog array");
    next.set(0, full.prog().fd().expect("xlb fd"), 0)
        .expect("slot 0");
    {
        let p: &Xdp = bench
            .program("xdp_pass")
            .expect("xdp_pass")
            .try_into()
            .expect("XDP");
        next.set(1, p.fd().expect("fd"), 0).expect("slot 1");
    }
    let mut rotate: Array<_, RotateConfig> =
        Array::try_from(bench.take_map("ROTATE_CFG").expect("rotate cfg")).expect("array");

    let prog = |name| -> &Xdp {
        bench
            .program(name)
            .expect("program")
            .try_into()
            .expect("XDP")
    };

    let client = v4("198.51.100.7");
    let hit_pkt = tcp_frame(client, vip, 40000, 80);
    // Opt-in experiment: where the table's buckets live (bench/layout.rs).
    if let Ok(mode) = std::env::var("XLB_BENCH_LAYOUT") {
        let rotated = super::layout::RotatedXlb {
            cfg: &mut rotate,
            rotator: prog("src_rotator"),
            clients: RotateConfig {
                base: 0x0a00_0000,
                mask: MANY - 1,
                shift: (FULL_CAPACITY / MANY).trailing_zeros(),
                ..RotateConfig::default()
            },
        };
        super::layout::run(rotated, prog("xdp_pass"), &hit_pkt, load_start);
        if mode == "only" {
            return;
        }
    }
    let other_pkt = tcp_frame(client, v4("10.9.9.9"), 40000, 80);
    // Pin the client once so every measured run is an affinity hit.
    assert_eq!(h.run(&hit_pkt, LO).action, 3, "hit packet not forwarded");
    assert_eq!(
        h.run(&other_pkt, LO).action,
        2,
        "non-service packet not passed"
    );
    assert_eq!(run_once(prog("reflector"), &hit_pkt, LO).action, 3);
    // A later UDP fragment to the (TCP) VIP: no first fragment seen, no UDP service on
    // the VIP, so dropped (a first fragment would be balanced).
    let drop_pkt = v4_later(client, vip, 17, 7);
    for x in [&h, &nolog] {
        assert_eq!(x.run(&hit_pkt, LO).action, 3, "hit packet not forwarded");
        assert_eq!(x.run(&other_pkt, LO).action, 2, "non-service not passed");
        assert_eq!(
            x.run(&drop_pkt, LO).action,
            1,
            "fragment to a VIP not dropped"
        );
    }

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

    for x in [&unsampled, &nat_far, &nat_near, &tun] {
        assert_eq!(x.run(&hit_pkt, LO).action, 3, "hit packet not forwarded");
    }
    assert_eq!(
        tun.run(&hit_pkt, LO).output.len(),
        hit_pkt.len() + 20,
        "tunnel hit not encapsulated"
    );
    let mut s: BTreeMap<&str, Samples> = BTreeMap::new();
    for round in 0..ROUNDS {
        for (k, x) in [
            ("hit_unsampled_ns", &unsampled),
            ("hit_nat_prefilter_ns", &nat_far),
            ("hit_nat_trie_ns", &nat_near),
        ] {
            s.entry(k)
                .or_default()
                .0
                .push(run_repeat(x.prog(), &hit_pkt, LO, REPEAT));
        }
        // Interleaved, round by round.
        s.entry("hit_ns")
            .or_default()
            .0
            .push(run_repeat(h.prog(), &hit_pkt, LO, REPEAT));
        let sampled = ring.drain(usize::MAX).len();
        assert!(
            sampled as f64 >= 0.9 * (REPEAT / SAMPLE_PERIOD) as f64,
            "round {round}: {sampled} samples of {REPEAT} hits at 1 in {SAMPLE_PERIOD}"
        );
        h.dp_mut().set_sample_period(web_id, 1).expect("period");
        s.entry("hit_sample_every_ns")
            .or_default()
            .0
            .push(run_repeat(h.prog(), &hit_pkt, LO, REPEAT / 40));
        h.dp_mut()
            .set_sample_period(web_id, SAMPLE_PERIOD)
            .expect("period");
        ring.drain(usize::MAX);
        s.entry("pass_through_ns").or_default().0.push(run_repeat(
            h.prog(),
            &other_pkt,
            LO,
            REPEAT,
        ));
        // Diagnostics against none; which goes first alternates with the round.
        for with_log in [round % 2 == 0, round % 2 != 0] {
            let (x, tag) = if with_log {
                (&h, "log")
            } else {
                (&nolog, "nolog")
            };
            for (case, pkt) in [
                ("hit", &hit_pkt),
                ("pass_through", &other_pkt),
                ("drop", &drop_pkt),
            ] {
                let ns = run_repeat(x.prog(), pkt, LO, REPEAT);
                s.entry(leak(format!("{case}_{tag}_ns")))
                    .or_default()
                    .0
                    .push(ns);
            }
        }
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
        let before = h.dp().service_stats(web_id).expect("stats").misses;
        let pkts = miss_pkts(round);
        let miss_raw = per_call(h.prog(), &pkts);
        let misses = h.dp().service_stats(web_id).expect("stats").misses - before;
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
        // Tunnel mode grows the frame's head on every run, so one run per call (repeat
        // mode would re-encapsulate its own output): compared with the DSR hit measured
        // the same way.
        s.entry("tunnel_hit_per_call_ns")
            .or_default()
            .0
            .push(per_call(tun.prog(), &hits));
        let pass_repeat = s["xdp_pass_ns"].0[round];
        s.entry("miss_ns")
            .or_default()
            .0
            .push(miss_raw - call_overhead + pass_repeat);
        // The filled default-capacity table: pinned clients round robin, then clients it
        // has never seen (11.0.0.0/8 onwards), one per call, each evicting one.
        let before = full.dp().service_stats(full_id).expect("stats");
        let many_raw = per_call(full.prog(), &many);
        let fresh: Vec<Vec<u8>> = (0..MISS_CLIENTS)
            .map(|i| {
                let c = 0x0b00_0000u32 + round as u32 * MISS_CLIENTS + i;
                tcp_frame(IpAddr::from(c.to_be_bytes()), vip, 40000, 80)
            })
            .collect();
        let full_raw = per_call(full.prog(), &fresh);
        let after = full.dp().service_stats(full_id).expect("stats");
        // The fresh clients of the rounds evict the least recently seen: a few of the
        // round-robin clients, in buckets the fresh ones filled, are re-pinned.
        assert!(
            (after.hits - before.hits) as f64 >= 0.99 * many.len() as f64,
            "round {round}: the round-robin clients were not hits: {} hits, {} misses, {} repins, {} expiries of {}",
            after.hits - before.hits,
            after.misses - before.misses,
            after.repins - before.repins,
            after.expiries - before.expiries,
            many.len()
        );
        assert!(
            after.misses - before.misses >= MISS_CLIENTS as u64,
            "round {round}: not every fresh client was a miss"
        );
        s.entry("hit_many_ns")
            .or_default()
            .0
            .push(many_raw - call_overhead + pass_repeat);
        // The same two cases without a syscall per packet: the rotator feeds the filled
        // table's xlb a new source on every run of one long call.
        let mut rotated = |cfg: RotateConfig| {
            rotate.set(0, cfg, 0).expect("rotate cfg");
            run_repeat(prog("src_rotator"), &hit_pkt, LO, REPEAT)
        };
        let many_cfg = RotateConfig {
            base: 0x0a00_0000,
            mask: MANY - 1,
            shift: (FULL_CAPACITY / MANY).trailing_zeros(),
            ..RotateConfig::default()
        };
        let rot_pass = rotated(RotateConfig {
            slot: 1,
            ..many_cfg
        });
        let rot_many = rotated(many_cfg);
        let rot_full = rotated(RotateConfig {
            base: 0x0c00_0000,
            mask: (1 << 24) - 1,
            ..RotateConfig::default()
        });
        s.entry("rotate_pass_ns").or_default().0.push(rot_pass);
        s.entry("hit_many_rotated_ns")
            .or_default()
            .0
            .push(rot_many - rot_pass + pass_repeat);
        s.entry("miss_full_rotated_ns")
            .or_default()
            .0
            .push(rot_full - rot_pass + pass_repeat);
        s.entry("miss_full_ns")
            .or_default()
            .0
            .push(full_raw - call_overhead + pass_repeat);
        std::thread::sleep(Duration::from_millis(50));
    }

    // Sampling's cost on the hit path: per-round differences (the rounds interleave).
    let diffs = Samples(
        s["hit_ns"]
            .0
            .iter()
            .zip(&s["hit_unsampled_ns"].0)
            .map(|(on, off)| on - off)
            .collect(),
    );
    s.insert("sampling_cost_ns", diffs);
    let m = |k: &str| s[k].median();
    let load_end = super::load_average();
    println!("xlb micro benchmark: BPF_PROG_TEST_RUN, 64-byte TCP/IPv4 frames, one CPU");
    println!(
        "CPU: {}; load average {load_start:.2} at the start, {load_end:.2} at the end",
        super::cpu_model()
    );
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
        ("hit_unsampled_ns", "  same, sampling left out"),
        ("hit_sample_every_ns", "  same, every packet sampled"),
        ("hit_nat_prefilter_ns", "  same, nat_sources elsewhere"),
        ("hit_nat_trie_ns", "  same, nat_sources in its /16"),
        ("miss_ns", "xlb, miss (new client)"),
        ("hit_many_ns", "xlb, 65,536 pinned, rr"),
        ("miss_full_ns", "xlb, new client, full"),
        ("hit_many_rotated_ns", "  same, rotated, repeat"),
        ("miss_full_rotated_ns", "  same, rotated, repeat"),
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
    println!("diagnostics (aya-log) against the object built without them (same rounds):");
    for case in ["hit", "pass_through", "drop"] {
        let (with, without) = (
            &s[format!("{case}_log_ns").as_str()],
            &s[format!("{case}_nolog_ns").as_str()],
        );
        let verdict = if with.median() > without.max() {
            "ABOVE the build without's min – max (slower)"
        } else if with.median() < without.min() {
            "below the build without's min – max (faster: code layout)"
        } else {
            "within the build without's min – max"
        };
        println!(
            "  {case:<13} {:>6.1} [{:.1} – {:.1}] ns, without {:>6.1} [{:.1} – {:.1}] ns: {}",
            with.median(),
            with.min(),
            with.max(),
            without.median(),
            without.min(),
            without.max(),
            verdict
        );
    }
    println!();
    let diffs = &s["sampling_cost_ns"];
    println!(
        "sampling at 1 in {SAMPLE_PERIOD}, hit path: {:+.1} ns (per-round differences {:+.1} – {:+.1}); goal ≤ 5 ns: {}",
        diffs.median(),
        diffs.min(),
        diffs.max(),
        if diffs.median() <= 5.0 {
            "met"
        } else {
            "MISSED"
        }
    );
    let net = |k: &str| m(k) - m("reflector_ns");
    let goals = [
        ("hit_ns - reflector_ns", net("hit_ns"), 25.0),
        ("miss_ns - reflector_ns", net("miss_ns"), 60.0),
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
    // Ratios of net costs (over the reflector), measured in this run.
    let ratios = [
        (
            "hit_many / hit (net)",
            net("hit_many_ns") / net("hit_ns"),
            1.5,
        ),
        (
            "miss_full / hit_many (net)",
            net("miss_full_ns") / net("hit_many_ns"),
            1.5,
        ),
        (
            "  rotated: hit_many / hit",
            net("hit_many_rotated_ns") / net("hit_ns"),
            1.5,
        ),
        (
            "  rotated: miss_full / hit_many",
            net("miss_full_rotated_ns") / net("hit_many_rotated_ns"),
            1.5,
        ),
    ];
    for (name, v, goal) in ratios {
        let verdict = if v <= goal { "met" } else { "MISSED" };
        println!("{name:<32} {v:>7.2}      goal ≤ {goal:>4.1}      {verdict}");
    }
    let per_call_net = |k: &str| m(k) - m("call_xdp_pass_ns");
    println!(
        "tunnel (IPIP) hit / DSR hit, one run per call, net of the call: {:.2} ({:.1} against {:.1} ns)",
        per_call_net("tunnel_hit_per_call_ns") / per_call_net("hit_per_call_ns"),
        per_call_net("tunnel_hit_per_call_ns"),
        per_call_net("hit_per_call_ns"),
    );
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

    let sweep = if std::env::var_os("XLB_BENCH_SWEEP").is_some() {
        table_size_sweep(
            Rotator {
                next: &mut next,
                cfg: &mut rotate,
                prog: prog("src_rotator"),
                pass: prog("xdp_pass"),
            },
            &backends,
            vip,
            &hit_pkt,
            m("xdp_pass_ns"),
        )
    } else {
        Vec::new()
    };

    let mut json = serde_json::Map::new();
    if !sweep.is_empty() {
        json.insert("table_size_sweep".into(), serde_json::json!(sweep));
    }
    for (k, v) in &s {
        json.insert((*k).to_string(), serde_json::json!(v.median()));
        json.insert(format!("{k}_min"), serde_json::json!(v.min()));
        json.insert(format!("{k}_max"), serde_json::json!(v.max()));
    }
    json.insert("rounds".into(), serde_json::json!(ROUNDS));
    json.insert("repeat".into(), serde_json::json!(REPEAT));
    json.insert("miss_clients".into(), serde_json::json!(MISS_CLIENTS));
    json.insert("full_capacity".into(), serde_json::json!(FULL_CAPACITY));
    json.insert("load_start".into(), serde_json::json!(load_start));
    json.insert("load_end".into(), serde_json::json!(load_end));
    json.insert("full_pinned".into(), serde_json::json!(pinned));
    json.insert("many_clients".into(), serde_json::json!(many.len()));
    json.insert("cpu".into(), serde_json::json!(super::cpu_model()));
    super::write_json("micro", &serde_json::Value::Object(json));
}

/// Diagnostic (`XLB_BENCH_SWEEP=1`): the same 65,536 clients round robin (rotated, repeat
/// mode) in tables of growing size. The lines they touch stay 65,536; the pages those lines
/// sit on grow with the table (the kernel maps BPF arrays with 4 KiB pages): when the cost
/// grows with the table, page walks, not the one cache line, are what a lookup pays.
fn table_size_sweep(
    r: Rotator<'_>,
    backends: &[(IpAddr, Option<Link>)],
    vip: IpAddr,
    frame: &[u8],
    xdp_pass_ns: f64,
) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    println!();
    println!("table-size sweep: 65,536 clients round robin, rotated (repeat mode)");
    println!(
        "{:>12} {:>10} {:>8} {:>10}",
        "capacity", "hot MiB", "pages", "ns/packet"
    );
    for capacity in [131_072u32, 262_144, 1 << 20, 1 << 22] {
        let mut h = XlbHarness::load(&LoadOptions {
            affinity_capacity: capacity,
            maglev_slots: 1 << 20,
        });
        h.add_service(Service::new("web", vip, 80, Protocol::Tcp), backends)
            .expect("service");
        r.next
            .set(0, h.prog().fd().expect("fd"), 0)
            .expect("slot 0");
        r.next.set(1, r.pass.fd().expect("fd"), 0).expect("slot 1");
        let cfg = RotateConfig {
            base: 0x0d00_0000,
            mask: MANY - 1,
            ..RotateConfig::default()
        };
        let mut run = |cfg: RotateConfig| {
            r.cfg.set(0, cfg, 0).expect("cfg");
            run_repeat(r.prog, frame, LO, REPEAT)
        };
        run(cfg); // pins the clients
        let mut v: Vec<f64> = (0..5)
            .map(|_| run(cfg) - run(RotateConfig { slot: 1, ..cfg }) + xdp_pass_ns)
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        let bytes = lb_common::affinity::table::table_entries(capacity) as u64 * 64;
        println!(
            "{capacity:>12} {:>10.1} {:>8} {:>10.1}",
            bytes as f64 / (1 << 20) as f64,
            bytes / 4096,
            v[2]
        );
        out.push(serde_json::json!({"capacity": capacity, "hot_bytes": bytes, "ns": v[2]}));
    }
    out
}

/// A sample name made at run time, for the map of samples (a handful per run).
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}
