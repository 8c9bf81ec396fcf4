//! `bench flood`: established clients against a flood of spoofed sources.
//!
//! 50,000 clients are pinned and established (their packets seen in two distinct
//! seconds); then 10 million packets from random source addresses reach the same VIP —
//! UDP (to its UDP service), TCP SYNs and bare TCP ACKs (to the clients' TCP service) —
//! with one packet in 16 from the established clients mixed in during the TCP phases;
//! then one backend is added. Reported: the fraction of established clients that kept
//! their backend (goal ≥ 99%), the flood's delivered rate and the established clients'
//! delivered rate during it. For comparison, the fraction that would have kept it
//! without any pin (their Maglev slot unchanged): what an affinity table that lost
//! every pin to the flood leaves.
//!
//! ```text
//!   lb-ns                                          sink-ns
//!   lb0 (the runs' ingress)         lb1 ── veth ──  sink0 [class_sink]
//!   src_rotator ─tail call→ xlb ─redirect→ lb1
//! ```
//! The rotator (lb-ebpf/src/bin/bench.rs) gives every live frame a new source and hands
//! it to the real xlb program, which forwards it (XDP_REDIRECT) to the sink; the sink
//! counts by source class. One CPU, one long live-frames call per phase.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use aya::{
    EbpfLoader,
    maps::{Array, MapData, PerCpuArray, ProgramArray},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, xdp::XdpMode},
};
use xlb::{
    dataplane::loader::{BENCH_OBJECT, LoadOptions},
    model::{Link, Protocol, Service},
    reconcile::inspect::Decision,
};

use super::{RotateConfig, load_average, pin_to_cpu};
use crate::{
    harness::XlbHarness,
    ifindex,
    lab::{Netns, enter},
    packet::{tcp_frame, udp_frame},
};

/// Established clients: 100.64.0.0 + i (the sink's class 1).
const ESTABLISHED: u32 = 50_000;
const EST_BASE: u32 = 0x6440_0000;
/// Flood sources: 128.0.0.0/2, spread by a hash.
const FLOOD_BASE: u32 = 0x8000_0000;
const FLOOD_MASK: u32 = 0x3fff_ffff;
/// Flood packets in all (spoofed sources only).
const FLOOD_PACKETS: u64 = 10_000_000;
/// One packet in 1 << EST_SHIFT from the established clients during the TCP phases.
const EST_SHIFT: u32 = 4;
const BATCH: u32 = 64;
const BACKENDS: u8 = 4;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
const LB_OUT_MAC: [u8; 6] = [0x02, 0xf1, 0, 0, 0x01, 0x01];
const SINK_MAC: [u8; 6] = [0x02, 0xf1, 0, 0, 0x02, 0x00];

fn backend(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 98, 0, 1 + i))
}

fn established(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(EST_BASE + i))
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `struct xdp_md` for `ctx_in`.
fn xdp_md(len: usize, ingress_ifindex: u32) -> [u8; 24] {
    let mut md = [0u8; 24];
    md[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    md[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    md
}

/// One phase's delivered frames and time.
#[derive(Clone, Copy, Debug, Default)]
struct Phase {
    sent: u64,
    /// Of `sent`, the established clients' (runs k with `k & (2^EST_SHIFT - 1) == 0`).
    est_sent: u64,
    flood: u64,
    est: u64,
    secs: f64,
}

/// How many k in `from..to` are multiples of `m`.
fn multiples(from: u64, to: u64, m: u64) -> u64 {
    to.div_ceil(m) - from.div_ceil(m)
}

pub fn run() {
    crate::require_root();
    let cpu: usize = std::env::var("XLB_BENCH_CPU")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pin_to_cpu(cpu);
    let load_start = load_average();
    let started = Instant::now();
    let id = format!("xf{}", std::process::id() % 0xffff);
    let lb = Netns::new(format!("{id}-lb"));
    let sink = Netns::new(format!("{id}-sink"));
    // The runs' ingress: one end of a veth pair (no dummy devices on this kernel).
    lb.ip("link add lb0 type veth peer name lbx");
    lb.ip("link set lbx up");
    lb.ip(&format!(
        "link add lb1 address {} type veth peer name sink0 address {} netns {}",
        mac_str(LB_OUT_MAC),
        mac_str(SINK_MAC),
        sink.name
    ));
    lb.ip("link set lb0 up");
    lb.ip("link set lb1 up");
    sink.ip("link set sink0 up");
    sink.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
    // Map updates naming interfaces and the runs' ingress resolve in this namespace.
    enter(&lb.path());
    let (lb0, lb1) = (ifindex("lb0"), ifindex("lb1"));

    let mut h = XlbHarness::load(&LoadOptions::default());
    h.dp_mut().add_tx_port(lb1).expect("tx port");
    let link = Some(Link {
        mac: SINK_MAC,
        src_mac: LB_OUT_MAC,
        ifindex: lb1,
    });
    let backends: Vec<(IpAddr, Option<Link>)> = (0..BACKENDS).map(|i| (backend(i), link)).collect();
    for (name, port, proto) in [("web", 80, Protocol::Tcp), ("dns", 53, Protocol::Udp)] {
        h.add_service(Service::new(name, VIP.into(), port, proto), &backends)
            .expect("service");
    }

    let mut bench = EbpfLoader::new().load(BENCH_OBJECT).expect("bench object");
    for name in ["src_rotator", "class_sink"] {
        let p: &mut Xdp = bench
            .program_mut(name)
            .expect("bench program")
            .try_into()
            .expect("XDP");
        p.load()
            .unwrap_or_else(|e| panic!("verifier rejected {name}: {e:#?}"));
    }
    let mut next =
        ProgramArray::try_from(bench.take_map("ROTATE_NEXT").expect("next")).expect("prog array");
    next.set(0, h.prog().fd().expect("xlb fd"), 0)
        .expect("tail call slot");
    let mut cfg: Array<MapData, RotateConfig> =
        Array::try_from(bench.take_map("ROTATE_CFG").expect("cfg")).expect("array");
    let classes: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(bench.take_map("CLASS_COUNT").expect("counts")).expect("per-CPU");
    let runs: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(bench.take_map("ROTATE_COUNT").expect("runs")).expect("per-CPU");
    sink.run(|| {
        let p: &mut Xdp = bench
            .program_mut("class_sink")
            .expect("class_sink")
            .try_into()
            .expect("XDP");
        p.attach_to_if_index(ifindex("sink0"), XdpMode::Driver)
            .expect("attach class_sink");
    });
    let rotator: &Xdp = bench
        .program("src_rotator")
        .expect("src_rotator")
        .try_into()
        .expect("XDP");

    let src0 = IpAddr::V4(Ipv4Addr::from(EST_BASE));
    let syn = tcp_frame(src0, VIP.into(), 40_000, 80);
    let mut ack = syn.clone();
    ack[14 + 20 + 13] = 0x10;
    let udp = udp_frame(src0, VIP.into(), 40_000, 53);
    let counts = || -> [u64; 2] {
        let v0 = classes.get(&0, 0).expect("class 0");
        let v1 = classes.get(&1, 0).expect("class 1");
        [v0.iter().sum(), v1.iter().sum()]
    };
    let k = || -> u64 { runs.get(&0, 0).expect("runs")[cpu] };
    let mut live = |c: RotateConfig, frame: &[u8], packets: u64| -> Phase {
        cfg.set(0, c, 0).expect("rotate cfg");
        let before = counts();
        let k0 = k();
        let t = Instant::now();
        rotator
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&xdp_md(frame.len(), lb0)),
                repeat: packets as u32,
                attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("live-frames run failed: {e:#?}"));
        let secs = t.elapsed().as_secs_f64();
        let after = counts();
        let k1 = k();
        Phase {
            sent: packets,
            est_sent: if c.est_count == 0 {
                0
            } else {
                multiples(k0, k1, 1 << c.est_shift)
            },
            flood: after[0] - before[0],
            est: after[1] - before[1],
            secs,
        }
    };

    // 1. Pin the clients, then again in another second: established.
    let est_only = RotateConfig {
        est_base: EST_BASE,
        est_count: ESTABLISHED,
        ..RotateConfig::default()
    };
    let p1 = live(est_only, &syn, 4 * 65_536);
    std::thread::sleep(Duration::from_millis(1200));
    let p2 = live(est_only, &ack, 4 * 65_536);
    let web = h.service_id("web");
    let st = h.dp().service_stats(web).expect("stats");
    println!(
        "establishing: two rounds of {} and {} packets a second apart; web: {} hits, {} misses",
        p1.sent, p2.sent, st.hits, st.misses
    );
    let judged = h
        .dp()
        .judged_entries(Some(web), xlb::dataplane::maps::ktime_coarse_ns())
        .expect("entries");
    let est_pinned = judged
        .iter()
        .filter(|p| p.established && p.key.addr[0].to_be() >> 16 == EST_BASE >> 16)
        .count();
    let before: Vec<(Option<IpAddr>, Option<IpAddr>)> = (0..ESTABLISHED)
        .map(|i| {
            let e = h.explain("web", established(i), 0).expect("explain");
            (e.backend, e.slot_backend)
        })
        .collect();
    println!("{est_pinned} of {ESTABLISHED} clients pinned and established");
    assert!(
        est_pinned as f64 >= 0.95 * ESTABLISHED as f64,
        "only {est_pinned} established clients"
    );

    // 2. The flood: UDP, SYN and bare ACK thirds.
    let s0 = h.dp().service_stats(web).expect("stats");
    let per_phase = FLOOD_PACKETS / 3;
    let mut phases = BTreeMap::new();
    for (name, frame, mixed) in [
        ("udp", &udp, false),
        ("syn", &syn, true),
        ("ack", &ack, true),
    ] {
        let c = RotateConfig {
            base: FLOOD_BASE,
            mask: FLOOD_MASK,
            random: 1,
            est_base: EST_BASE,
            est_count: if mixed { ESTABLISHED } else { 0 },
            est_shift: EST_SHIFT,
            ..RotateConfig::default()
        };
        let packets = if mixed {
            per_phase * (1 << EST_SHIFT) / ((1 << EST_SHIFT) - 1)
        } else {
            per_phase
        };
        phases.insert(name, live(c, frame, packets));
    }
    let s1 = h.dp().service_stats(web).expect("stats");

    // 3. One backend more; who kept their backend?
    let added = backend(BACKENDS);
    h.add_backend("web", added, 1, link).expect("add backend");
    let mut kept = 0u32;
    let mut hashed_kept = 0u32;
    let mut still_pinned = 0u32;
    for i in 0..ESTABLISHED {
        let e = h.explain("web", established(i), 0).expect("explain");
        kept += (e.backend == before[i as usize].0) as u32;
        hashed_kept += (e.slot_backend == before[i as usize].1) as u32;
        still_pinned += matches!(e.decision, Decision::Pinned { .. }) as u32;
    }
    let load_end = load_average();

    let flood: u64 = phases.values().map(|p| p.flood).sum();
    let flood_secs: f64 = phases.values().map(|p| p.secs).sum();
    let mixed_secs: f64 = phases.values().filter(|p| p.est > 0).map(|p| p.secs).sum();
    let est: u64 = phases.values().map(|p| p.est).sum();
    let est_sent: u64 = phases.values().map(|p| p.est_sent).sum();
    let kept_fraction = kept as f64 / ESTABLISHED as f64;
    let flood_mpps = flood as f64 / flood_secs / 1e6;
    let est_mpps = est as f64 / mixed_secs / 1e6;
    println!();
    println!(
        "xlb flood benchmark: {ESTABLISHED} established clients, {FLOOD_PACKETS} spoofed packets, one CPU"
    );
    println!(
        "CPU: {}; load average {load_start:.2} at the start, {load_end:.2} at the end",
        super::cpu_model()
    );
    println!(
        "{:<6} {:>10} {:>10} {:>10} {:>8} {:>10} {:>10}",
        "phase", "sent", "flood", "est.", "secs", "flood Mpps", "est. Mpps"
    );
    for (name, p) in &phases {
        println!(
            "{name:<6} {:>10} {:>10} {:>10} {:>8.2} {:>10.3} {:>10.3}",
            p.sent,
            p.flood,
            p.est,
            p.secs,
            p.flood as f64 / p.secs / 1e6,
            p.est as f64 / p.secs / 1e6
        );
    }
    println!();
    println!(
        "kept their backend after one was added: {kept} of {ESTABLISHED} ({:.2}%), goal ≥ 99%: {}",
        100.0 * kept_fraction,
        if kept_fraction >= 0.99 {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "still pinned: {still_pinned}; without pins (Maglev alone) {:.2}% would have kept it",
        100.0 * hashed_kept as f64 / ESTABLISHED as f64
    );
    println!(
        "established clients: {est} of {est_sent} packets delivered during the flood ({:.2}%)",
        100.0 * est as f64 / est_sent.max(1) as f64
    );
    println!(
        "flood delivered {flood_mpps:.3} Mpps; established clients {est_mpps:.3} Mpps during it; \
         service counters: {} misses, {} hits in the flood",
        s1.misses - s0.misses,
        s1.hits - s0.hits
    );
    println!("done in {:.1} s", started.elapsed().as_secs_f64());
    let json = serde_json::json!({
        "kept_fraction": kept_fraction,
        "flood_mpps": flood_mpps,
        "established_mpps": est_mpps,
        "established_delivered_fraction": est as f64 / est_sent.max(1) as f64,
        "established_clients": ESTABLISHED,
        "established_pinned_before": est_pinned,
        "still_pinned_after": still_pinned,
        "kept_without_pins_fraction": hashed_kept as f64 / ESTABLISHED as f64,
        "flood_packets": flood,
        "phases": phases.iter().map(|(k, p)| (k.to_string(), serde_json::json!({
            "sent": p.sent, "flood_delivered": p.flood, "established_delivered": p.est, "secs": p.secs,
        }))).collect::<serde_json::Map<_, _>>(),
        "cpu": super::cpu_model(),
        "load_start": load_start,
        "load_end": load_end,
    });
    super::write_json("flood", &json);
}
